//! The sync engine against the simulated radio over real TCP; the sim's counters are the
//! evidence of what went on the wire.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use keysync::engine::Command;
use keysync::engine::Store;
use keysync::engine::valid_key;
use keysync::engine::{Outcome, Trigger};
use keysync::sim::{Fault, Forget, OperatorAction};

const SEC: Duration = Duration::from_secs(1);

fn key_of(node: &meshtastic::protobufs::NodeInfo) -> [u8; 32] {
    valid_key(&node.user.as_ref().expect("user").public_key).expect("valid key")
}

#[tokio::test]
async fn startup_forces_a_sync_that_pushes_exactly_what_the_radio_lacks() {
    let known = population(1, 35);
    // The radio holds the first 30.
    let mut h = Harness::start(sim_config(30), &known, |_| {});
    let report = h.report(1).await;
    assert_eq!(report.trigger, Trigger::Startup);
    assert_eq!(report.outcome, Outcome::Forced);
    assert_eq!(
        (
            report.known,
            report.in_radio,
            report.pushed,
            report.deferred
        ),
        (35, 30, 5, 0)
    );
    let pushed: BTreeSet<u32> = h.sim.contacts().iter().map(|c| c.node_num).collect();
    let lacking: BTreeSet<u32> = known[30..].iter().map(|n| n.num).collect();
    assert_eq!(pushed, lacking);
    let flash = h.sim.counters().flash_writes.load(Ordering::Relaxed);
    assert_eq!(flash, 5, "one flash write per push, none more");
    for n in &known {
        assert_eq!(h.sim.key_of(n.num), Some(key_of(n)));
    }
    // The handshake's node list served as the mirror: no second download.
    assert_eq!(
        h.sim.counters().received().get("want_config_nodes_only"),
        None
    );
    assert_no_invalid_contacts(&h.sim);
    h.quit().await;
}

#[tokio::test]
async fn a_check_inside_the_ttl_is_skipped_and_sends_nothing_but_heartbeats() {
    let mut h = Harness::start(sim_config(20), &[], |c| {
        c.sync_interval = SEC;
        c.sync.cache_ttl = 30 * SEC;
    });
    let first = h.report(1).await;
    assert_eq!(first.outcome, Outcome::Forced);
    let before = h.sim.counters().received_besides_heartbeats();
    let second = h.report(2).await;
    assert_eq!(second.trigger, Trigger::Check);
    assert_eq!(second.outcome, Outcome::Skipped, "{}", second.summary());
    assert!(
        second.reason.contains("fingerprint unchanged"),
        "{}",
        second.reason
    );
    assert_eq!(second.frames_sent, 0);
    assert_eq!(
        h.sim.counters().received_besides_heartbeats(),
        before,
        "only heartbeats during a skipped check: {:?}",
        h.sim.counters().received()
    );
    h.quit().await;
}

#[tokio::test]
async fn after_the_ttl_a_nodes_only_download_syncs_with_zero_pushes() {
    let mut h = Harness::start(sim_config(20), &[], |c| {
        c.sync_interval = SEC;
        c.sync.cache_ttl = 2 * SEC;
    });
    let synced = loop {
        let n = h.runs() + 1;
        let r = h.report(n).await;
        if r.outcome == Outcome::Synced {
            break r;
        }
        assert!(n < 6, "no synced run after the TTL");
    };
    assert!(synced.reason.contains("≥ TTL"), "{}", synced.reason);
    assert_eq!((synced.pushed, synced.in_radio, synced.known), (0, 20, 20));
    assert_eq!(synced.frames_sent, 1, "one want_config, nothing else");
    assert_eq!(
        h.sim.counters().received().get("want_config_nodes_only"),
        Some(&1)
    );
    assert_eq!(h.sim.counters().add_contacts.load(Ordering::Relaxed), 0);
    h.quit().await;
}

#[tokio::test]
async fn a_reboot_that_forgets_keys_is_repaired_by_the_reconnect_sync() {
    let rig = Rig::new(sim_config(12), &[]);
    heard_keyless(&rig.sim, 12).await;
    let mut h = rig.start(|_| {});
    let first = h.report(1).await;
    assert_eq!(
        (first.known, first.pushed),
        (12, 0),
        "learned on first use from the handshake"
    );
    let flash_before = h.sim.counters().flash_writes.load(Ordering::Relaxed);
    h.sim
        .inject(Fault::Reboot {
            down: Duration::from_millis(300),
            forget: Forget::Keys,
        })
        .await;
    let second = h.report(2).await;
    assert_eq!(second.trigger, Trigger::Reconnect);
    assert_eq!(second.outcome, Outcome::Forced);
    assert_eq!((second.in_radio, second.pushed), (0, 12));
    // The nodes keysync learned (the keyless ones heard later taught it nothing).
    let mesh: Vec<_> = h.sim.mesh().into_iter().take(12).collect();
    let forgotten: BTreeSet<u32> = mesh.iter().map(|n| n.num).collect();
    let pushed: BTreeSet<u32> = second.pushed_keys.iter().map(|(n, _)| *n).collect();
    assert_eq!(pushed, forgotten);
    for n in &mesh {
        assert_eq!(h.sim.key_of(n.num), Some(key_of(n)), "key restored");
    }
    assert_eq!(
        h.sim.counters().flash_writes.load(Ordering::Relaxed) - flash_before,
        12
    );
    assert_no_invalid_contacts(&h.sim);
    h.quit().await;
}

#[tokio::test]
async fn a_changed_key_waits_for_the_operator_then_accept_or_reject_applies() {
    let mut h = Harness::start(sim_config(6), &[], |c| c.sync_interval = SEC);
    let first = h.report(1).await;
    let mesh = h.sim.mesh();
    let (x, y) = (mesh[1].num, mesh[2].num);
    let (x_old, y_old) = (key_of(&mesh[1]), key_of(&mesh[2]));

    // While keysync is away (refused, dropped), the radio's operator removes X and Y, and they
    // re-key and announce, so the radio holds their new keys. keysync must not follow on its
    // own.
    h.sim
        .inject(Fault::Refuse {
            duration: Duration::from_millis(800),
        })
        .await;
    h.sim.inject(Fault::Drop).await;
    assert!(h.sim.operator(OperatorAction::Remove, x));
    assert!(h.sim.operator(OperatorAction::Remove, y));
    h.sim.inject(Fault::KeyChange { node: 1 }).await;
    h.sim.inject(Fault::KeyChange { node: 2 }).await;
    let mesh = h.sim.mesh();
    let x_new = key_of(&mesh[1]);
    let conflicted = h.report(2).await;
    assert_eq!(conflicted.trigger, Trigger::Reconnect);
    assert_eq!(conflicted.conflicts, 2, "{}", conflicted.summary());
    assert_eq!(
        conflicted.fingerprint, first.fingerprint,
        "pending keys do not change the fingerprint"
    );
    assert!(
        !conflicted
            .pushed_keys
            .iter()
            .any(|(n, _)| *n == x || *n == y)
    );
    assert_eq!(
        h.sim.key_of(x),
        Some(x_new),
        "new key left alone, not overwritten"
    );
    wait_until("both pending keys shown", || {
        let pending = h
            .snap
            .borrow()
            .nodes
            .iter()
            .filter(|n| n.record.pending.is_some())
            .count();
        pending == 2
    })
    .await;

    // Accept X: trusted now, and the radio already holds it, so nothing is pushed.
    h.command(Command::AcceptKey(x)).await;
    // Reject Y: the old key goes back.
    h.command(Command::RejectKey(y)).await;
    let after = loop {
        let r = h.next_report().await;
        if r.outcome == Outcome::Synced && r.conflicts == 0 {
            break r;
        }
    };
    assert_eq!(after.pushed_keys, vec![(y, y_old)], "{}", after.summary());
    assert_eq!(h.sim.key_of(x), Some(x_new));
    assert_eq!(h.sim.key_of(y), Some(y_old));
    assert_ne!(x_old, x_new);
    let store = Store::open(&h.db).expect("reopens");
    let trusted: Vec<_> = store
        .trusted()
        .expect("reads")
        .into_iter()
        .map(|k| (k.num, k.key))
        .collect();
    assert!(trusted.contains(&(x, x_new)) && trusted.contains(&(y, y_old)));
    assert_no_invalid_contacts(&h.sim);
    h.quit().await;
}

#[tokio::test]
async fn a_radio_too_small_for_every_key_fills_only_its_slot_budget_then_skips() {
    let known = population(1, 30);
    let mut config = sim_config(30);
    config.capacity = Some(20);
    let mut h = Harness::start(config, &known, |c| {
        c.sync_interval = SEC;
        c.sync.max_pushes = 5;
        // A Linux radio's MaxNodes is its own setting: the hardware model cannot tell it.
        c.sync.radio_capacity = Some(20);
    });
    let first = h.report(1).await;
    assert_eq!(first.in_radio, 19, "capacity 20 minus the own node");
    assert_eq!(first.slots, 10, "half the capacity");
    assert!(first.pushed <= 5, "{}", first.summary());
    assert_eq!(
        first.in_radio + first.stored_only + first.pushed + first.deferred,
        30,
        "{}",
        first.summary()
    );
    // Once the working set is stocked, checks are skipped again: zero frames, however many
    // keys the store holds beyond the radio.
    let mut n = 2;
    loop {
        let report = h.report(n).await;
        if report.outcome == Outcome::Skipped {
            break;
        }
        assert!(n < 12, "never skipped: {}", report.summary());
        n += 1;
    }
    let protected = h.sim.protected();
    assert!(protected.total <= 10, "{protected:?}");
    let contacts = h.sim.contacts();
    assert!(contacts.len() <= 20, "{} pushes", contacts.len());
    assert_no_invalid_contacts(&h.sim);
    h.quit().await;
}

#[tokio::test]
async fn operator_force_sync_downloads_and_reset_cache_makes_the_next_check_sync() {
    let mut h = Harness::start(sim_config(8), &[], |c| c.sync_interval = SEC);
    h.report(1).await;
    h.command(Command::ForceSync).await;
    let forced = loop {
        let r = h.next_report().await;
        if r.trigger == Trigger::Operator {
            break r;
        }
    };
    assert_eq!(forced.outcome, Outcome::Forced);
    assert_eq!(
        h.sim.counters().received().get("want_config_nodes_only"),
        Some(&1)
    );
    h.command(Command::ResetCache).await;
    let notice = tokio::time::timeout(WAIT, h.snap.wait_for(|s| s.notice.is_some()))
        .await
        .map(|r| r.map(|s| s.notice.clone()));
    let Ok(Ok(Some((_, text)))) = notice else {
        panic!("no notice for the cache reset");
    };
    assert!(
        text.contains("force sync") || text.contains("cache cleared"),
        "{text}"
    );
    let next = loop {
        let r = h.next_report().await;
        if r.trigger == Trigger::Check {
            break r;
        }
    };
    assert_eq!(next.outcome, Outcome::Synced, "{}", next.summary());
    h.quit().await;
}

#[tokio::test]
async fn nodes_heard_between_syncs_appear_in_the_snapshot_with_their_keys() {
    let mut h = Harness::start(sim_config(6), &[], |c| c.sync_interval = 600 * SEC);
    h.report(1).await;
    wait_until("the radio's nodes listed", || {
        h.snap.borrow().nodes.len() == 6
    })
    .await;
    // No sync runs meanwhile: these reach the list from the mesh alone.
    h.sim
        .inject(Fault::NewNodes {
            count: 3,
            portnum: None,
        })
        .await;
    h.sim.inject(Fault::KeyChange { node: 1 }).await;
    let mesh = h.sim.mesh();
    wait_until("three new nodes and one pending key", || {
        let s = h.snap.borrow();
        let pending: Vec<u32> = s
            .nodes
            .iter()
            .filter(|n| n.record.pending.is_some())
            .map(|n| n.record.num)
            .collect();
        s.nodes.len() == 9 && pending == [mesh[1].num]
    })
    .await;
    let s = h.snap.borrow().clone();
    assert!(
        s.nodes
            .windows(2)
            .all(|w| w[0].record.num < w[1].record.num),
        "kept in order"
    );
    assert_eq!(s.sync.history.len(), 1, "no sync ran");
    for n in &mesh[6..9] {
        let view = s
            .nodes
            .iter()
            .find(|v| v.record.num == n.num)
            .expect("listed");
        assert_eq!(
            view.record.long_name,
            n.user.as_ref().expect("user").long_name
        );
        assert!(view.record.trusted.is_some());
    }
    drop(s);
    h.quit().await;
}
