//! Hostile conditions: a radio whose queue is full or silent, an impostor key across
//! reconnects and restarts, a flapping radio, a flood of traffic. Longer variants are
//! `#[ignore]`d; docs/PERFORMANCE.md has the commands.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use common::*;
use keysync::engine::Command;
use keysync::engine::valid_key;
use keysync::engine::{Outcome, Trigger};
use keysync::sim::{Fault, Forget};

const SEC: Duration = Duration::from_secs(1);

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test]
async fn pushes_wait_while_the_radio_queue_is_full_then_resume_without_a_burst() {
    let rig = Rig::new(sim_config(0), &population(1, 12));
    heard_keyless(&rig.sim, 30).await;
    let full_for = Duration::from_millis(1200);
    rig.sim
        .inject(Fault::QueueFull { duration: full_for })
        .await;
    let full_until = Instant::now() + full_for;
    let mut h = rig.start(|c| {
        c.sync.push_gap = Duration::from_millis(20);
        c.sync.queue_timeout = Duration::from_secs(10);
    });
    let report = h.report(1).await;
    assert_eq!((report.outcome, report.pushed), (Outcome::Forced, 12));
    let times = h.sim.contact_times();
    assert_eq!(times.len(), 12);
    let during = times.iter().filter(|t| **t < full_until).count();
    assert_eq!(
        during, 1,
        "one add_contact learned the queue was full; the rest waited"
    );
    assert!(
        gaps(&times).iter().all(|g| *g >= Duration::from_millis(19)),
        "no burst after the queue freed up: {:?}",
        gaps(&times)
    );
    assert_no_invalid_contacts(&h.sim);
    h.quit().await;
}

#[tokio::test]
async fn pushes_pace_on_a_timeout_when_the_radio_never_answers() {
    let rig = Rig::new(sim_config(0), &population(1, 5));
    heard_keyless(&rig.sim, 12).await;
    rig.sim
        .inject(Fault::SilentQueue {
            duration: Duration::from_secs(600),
        })
        .await;
    let mut h = rig.start(|c| {
        c.sync.push_gap = Duration::from_millis(10);
        c.sync.queue_timeout = Duration::from_millis(300);
    });
    let report = h.report(1).await;
    assert_eq!((report.outcome, report.pushed), (Outcome::Forced, 5));
    let times = h.sim.contact_times();
    assert!(
        gaps(&times)
            .iter()
            .all(|g| *g >= Duration::from_millis(300)),
        "each push waited out the missing QueueStatus: {:?}",
        gaps(&times)
    );
    h.quit().await;
}

/// The keys pushed for `num` so far.
fn pushed_keys_for(sim: &keysync::sim::SimHandle, num: u32) -> Vec<[u8; 32]> {
    sim.contacts()
        .into_iter()
        .filter(|c| c.node_num == num)
        .filter_map(|c| c.user.and_then(|u| valid_key(&u.public_key)))
        .collect()
}

#[tokio::test]
async fn an_impostor_key_is_never_pushed_across_reconnects_and_restarts() {
    let rig = Rig::new(sim_config(6), &[]);
    heard_keyless(&rig.sim, 12).await;
    let mut h = rig.start(|c| c.sync_interval = SEC);
    h.report(1).await;
    let victim = h.sim.mesh()[2].clone();
    let genuine = valid_key(&victim.user.as_ref().expect("user").public_key).expect("key");
    h.sim.inject(Fault::KeyChange { node: 2 }).await;
    let impostor =
        valid_key(&h.sim.mesh()[2].user.as_ref().expect("user").public_key).expect("key");
    wait_until("the impostor key pending", || {
        h.snap
            .borrow()
            .nodes
            .iter()
            .any(|n| n.record.num == victim.num && n.record.pending == Some(impostor))
    })
    .await;
    // Reboots that forget keys, a forced sync, a cache reset, then a restart of keysync.
    for _ in 0..2 {
        let seen = h.runs();
        h.sim
            .inject(Fault::Reboot {
                down: Duration::from_millis(100),
                forget: Forget::Keys,
            })
            .await;
        wait_for_run(&mut h, seen, Trigger::Reconnect).await;
    }
    h.command(Command::ForceSync).await;
    h.command(Command::ResetCache).await;
    let seen = h.runs();
    wait_for_run(&mut h, seen, Trigger::Operator).await;
    let mut h = h.restart().await;
    let restart = h.report(1).await;
    assert_eq!(restart.trigger, Trigger::Startup);
    assert!(restart.conflicts >= 1, "{}", restart.summary());
    assert!(
        !pushed_keys_for(&h.sim, victim.num).contains(&impostor),
        "the impostor key went to the radio"
    );
    // Only the operator's rejection sends the genuine key back over it.
    h.command(Command::RejectKey(victim.num)).await;
    wait_until("the genuine key pushed back", || {
        pushed_keys_for(&h.sim, victim.num).contains(&genuine)
    })
    .await;
    assert!(!pushed_keys_for(&h.sim, victim.num).contains(&impostor));
    assert_no_invalid_contacts(&h.sim);
    h.quit().await;
}

/// Waits for a run with `trigger` after the first `seen` runs.
async fn wait_for_run(h: &mut Harness, seen: usize, trigger: Trigger) {
    let mut n = seen;
    loop {
        n += 1;
        if h.report(n).await.trigger == trigger {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_the_radio_never_blocks_the_engine_or_drops_the_link() {
    let mut h = Harness::start(sim_config(40), &[], |_| {});
    h.report(1).await;
    for i in 0..5000 {
        h.sim.inject(Fault::Announce { node: i % 40 }).await;
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // The engine still answers: an operator sync completes while the link stays up.
    h.command(Command::ForceSync).await;
    let seen = h.runs();
    wait_for_run(&mut h, seen, Trigger::Operator).await;
    let s = h.snap.borrow().clone();
    assert_eq!(s.link.sessions, 1, "the link survived the flood");
    assert!(s.link.state.is_up());
    // Every announcement either reached keysync or was dropped by the radio's own 32-frame
    // queue towards a slow client; nothing waited on keysync.
    wait_until(
        "every announcement delivered or dropped by the radio",
        || {
            let dropped = h.sim.counters().dropped_to_client.load(Ordering::Relaxed);
            h.snap.borrow().traffic.frames_in + dropped >= 5000
        },
    )
    .await;
    h.quit().await;
}
