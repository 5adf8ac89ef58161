//! A flapping radio: hundreds of reboots and reconnects. In its own test binary so that the
//! process's file descriptors and RSS measure this test alone.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use keysync::engine::valid_key;
use keysync::engine::{Outcome, Trigger};
use keysync::sim::{Fault, Forget};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn flap(cycles: usize) {
    let known = population(1, 30);
    let rig = Rig::new(sim_config(30), &known);
    heard_keyless(&rig.sim, 30).await;
    let mut h = rig.start(|c| {
        // A flapping radio looks like a takeover to the three-early-closes rule; keep its
        // pause short here so the cycles keep coming.
        c.link.takeover_backoff = Duration::from_millis(50);
        c.link.backoff.cap = Duration::from_millis(100);
    });
    h.report(1).await;
    let (fds, rss) = (open_fds(), rss_kib());
    let mut reconnect_syncs = 0;
    for cycle in 0..cycles {
        let last = h.snap.borrow().sync.last.as_ref().map(|r| r.started_at);
        let forget = if cycle % 10 == 0 {
            Forget::Keys
        } else {
            Forget::Nothing
        };
        h.sim
            .inject(Fault::Reboot {
                down: Duration::from_millis(1),
                forget,
            })
            .await;
        let found = tokio::time::timeout(
            WAIT,
            h.snap.wait_for(|s| {
                s.sync.last.as_ref().is_some_and(|r| {
                    Some(r.started_at) != last
                        && r.trigger == Trigger::Reconnect
                        && r.outcome == Outcome::Forced
                })
            }),
        )
        .await;
        assert!(
            matches!(found, Ok(Ok(_))),
            "cycle {cycle}: no forced sync after the reconnect"
        );
        reconnect_syncs += 1;
        if cycle % 20 == 0 {
            eprintln!("cycle {cycle}: fds {}, RSS {} KiB", open_fds(), rss_kib());
        }
    }
    assert_eq!(reconnect_syncs, cycles);
    // Every key is in the store and back in the radio.
    let store = keysync::engine::Store::open(&h.db).expect("opens");
    assert_eq!(store.trusted().expect("reads").len(), 30);
    for n in &known {
        let key = valid_key(&n.user.as_ref().expect("user").public_key);
        assert_eq!(h.sim.key_of(n.num), key, "key of {} in the radio", n.num);
    }
    let (fds_after, rss_after) = (open_fds(), rss_kib());
    assert!(
        fds_after <= fds + 4,
        "file descriptors grew: {fds} → {fds_after}"
    );
    assert!(
        rss_after < rss + 32 * 1024,
        "RSS grew: {rss} KiB → {rss_after} KiB"
    );
    eprintln!("{cycles} cycles: fds {fds} → {fds_after}, RSS {rss} → {rss_after} KiB");
    assert_eq!(h.sim.counters().invalid_contacts.load(Ordering::Relaxed), 0);
    h.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_radio_gets_a_forced_sync_per_reconnect_and_loses_nothing() {
    flap(60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 500 cycles, about two minutes"]
async fn a_flapping_radio_500_cycles() {
    flap(500).await;
}
