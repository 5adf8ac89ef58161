//! The need-driven sync against firmware-exact simulated radios that are smaller than the store:
//! the slot budget, lazy pushes, the operator's decisions and the firmware gates (issue: never
//! overfill the radio, push a key when it is needed, respect the operator).

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use keysync::engine::Command;
use keysync::engine::Outcome;
use keysync::engine::valid_key;
use keysync::sim::{Fault, Hw, OperatorAction, Profile, SimConfig, SimHandle, SimRole};
use meshtastic::protobufs::{NodeInfo, PortNum};
use tokio::time::Instant;

const SEC: Duration = Duration::from_secs(1);

fn key_of(n: &NodeInfo) -> [u8; 32] {
    valid_key(&n.user.as_ref().expect("user").public_key).expect("generated keys are valid")
}

/// A radio on `firmware`/`hw` (capacity from the hardware unless given) with `mesh` nodes, and
/// keysync trusting every one of them, with the default flash budget; the nodes the radio does
/// not hold exchanged DMs with the gateway (partners: heard without a key, theirs goes at once).
fn setup(firmware: &str, hw: Hw, capacity: Option<usize>, mesh: usize) -> (Harness, Vec<NodeInfo>) {
    let known = population(1, mesh);
    let sim = SimConfig {
        profile: Profile::new(firmware, hw, SimRole::Client).expect("profile"),
        capacity,
        ..sim_config(mesh)
    };
    let rig = Rig::new(sim, &known);
    rig.partners(rig.outside_the_radio());
    let h = rig.start(|c| {
        c.sync_interval = SEC;
        c.sync.max_flash_writes = 60;
    });
    (h, known)
}

/// Each sync run so far with its plan, for failure messages.
fn runs(h: &Harness) -> Vec<String> {
    h.snap
        .borrow()
        .sync
        .history
        .iter()
        .map(|r| format!("{} {:?}", r.summary(), r.plan))
        .collect()
}

async fn a_busy_mesh_on_a_small_radio(firmware: &str, hw: Hw, capacity: Option<usize>) {
    let (mut h, known) = setup(firmware, hw, capacity, 300);
    let first = h.report(1).await;
    // The invariant: at most half of what the radio holds protected (the operator's ignore
    // below is one more, not keysync's).
    let ceiling = h.sim.capacity() / 2 + 1;
    assert!(
        (first.protected_after as usize) <= ceiling,
        "{}",
        first.summary()
    );
    assert!(first.stored_only > 0, "{}", first.summary());

    // A trusted node the radio does not hold is heard: its key goes to the radio at once.
    let held: Vec<u32> = h.sim.nodedb().iter().map(|n| n.num).collect();
    let target = known
        .iter()
        .rev()
        .find(|n| !held.contains(&n.num))
        .expect("a node outside the radio")
        .clone();
    let heard_at = Instant::now();
    h.sim.hear_from(target.num, PortNum::PositionApp);
    while h.sim.key_of(target.num) != Some(key_of(&target)) {
        assert!(
            heard_at.elapsed() < 3 * SEC,
            "the heard node's key was not pushed within 3 s: {:#?}",
            runs(&h)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The radio's operator ignores a node keysync pushed: it is never pushed again.
    let ignored = h.sim.contacts()[0].node_num;
    assert!(h.sim.operator(OperatorAction::Ignore, ignored));
    let contacts_before_ignore = h.sim.contacts().len();

    // 200 nodes heard as plain packets: 100 that keysync trusts and the radio lacks (each a
    // lazy push), 100 strangers (keyless entries that evict).
    let mut max_protected = 0;
    let lacking: Vec<u32> = known
        .iter()
        .map(|n| n.num)
        .filter(|n| !held.contains(n) && *n != target.num)
        .take(100)
        .collect();
    for batch in lacking.chunks(5) {
        for num in batch {
            h.sim.hear_from(*num, PortNum::PositionApp);
        }
        h.sim
            .inject(Fault::NewNodes {
                count: 5,
                portnum: Some(PortNum::TelemetryApp),
            })
            .await;
        h.sim.hear_from(ignored, PortNum::NodeinfoApp);
        max_protected = max_protected.max(h.sim.protected().total);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Once nothing more is needed, checks are skipped again: zero frames.
    let seen = h.runs();
    let skipped = h
        .report_where(seen + 1, 20, |r| r.outcome == Outcome::Skipped)
        .await;
    assert_eq!(skipped.frames_sent, 0);
    max_protected = max_protected.max(h.sim.protected().total);

    let counters = h.sim.counters();
    for r in &h.engine.snapshot.borrow().sync.history {
        eprintln!("{}", r.summary());
        eprintln!("   {:?}", r.plan);
    }
    eprintln!(
        "{firmware}: protected {:?} of {}; {} flash writes; {} pushes",
        h.sim.protected(),
        h.sim.capacity(),
        counters.flash_writes.load(Ordering::Relaxed),
        h.sim.contacts().len()
    );
    assert_eq!(
        counters.crashes.load(Ordering::Relaxed),
        0,
        "{firmware}: crashed"
    );
    assert!(
        max_protected <= ceiling,
        "{firmware}: {max_protected} protected entries of {}",
        h.sim.capacity()
    );
    let mut pushes: HashMap<u32, u32> = HashMap::new();
    for c in h.sim.contacts() {
        *pushes.entry(c.node_num).or_default() += 1;
    }
    for (num, times) in &pushes {
        assert!(
            *times <= 1 + h.sim.key_losses(*num),
            "{firmware}: {num:08x} pushed {times} times, its key lost {} times",
            h.sim.key_losses(*num)
        );
    }
    assert!(
        h.sim.contacts()[contacts_before_ignore..]
            .iter()
            .all(|c| c.node_num != ignored),
        "{firmware}: the ignored node was pushed"
    );
    // keysync's writes: within the hour's flash budget (the operator's ignore is one more).
    assert!(counters.flash_writes.load(Ordering::Relaxed) <= 61);
    assert_no_invalid_contacts(&h.sim);
    h.quit().await;
}

#[tokio::test]
async fn a_2_7_26_nrf52_radio_of_100_with_300_trusted_keys_never_overfills() {
    a_busy_mesh_on_a_small_radio("2.7.26", Hw::Nrf52, Some(100)).await;
}

#[tokio::test]
async fn a_2_7_4_esp32_radio_with_300_trusted_keys_never_overfills() {
    // 2.6.9 – 2.7.11: every push is "manually verified" for good; nothing can be given back.
    a_busy_mesh_on_a_small_radio("2.7.4", Hw::Esp32, None).await;
}

#[tokio::test]
async fn a_2_8_nrf52_radio_with_300_trusted_keys_never_overfills() {
    // develop: 120 nodes on nRF52, the MAX−2 cap, the warm tier, no LoRa restart on a release.
    a_busy_mesh_on_a_small_radio("2.8", Hw::Nrf52, None).await;
}

#[tokio::test]
async fn on_a_router_gateway_only_pinned_nodes_and_dm_partners_get_slots() {
    // 2.7.11+: a ROUTER keeps hop_limit for packets relayed by favourite routers matched by
    // the last byte of their number (NextHopRouter.cpp): favourites are kept few there.
    let known = population(1, 60);
    let sim = SimConfig {
        profile: Profile::new("2.7.26", Hw::Nrf52, SimRole::Router).expect("profile"),
        in_radio: Some(30),
        ..sim_config(60)
    };
    let rig = Rig::new(sim, &known);
    let outside = rig.outside_the_radio();
    let partners: Vec<u32> = outside.iter().copied().take(3).collect();
    rig.partners(partners.iter().copied());
    let mut h = rig.start(|c| c.sync_interval = SEC);
    let first = h.report(1).await;
    let pushed: Vec<u32> = h.sim.contacts().iter().map(|c| c.node_num).collect();
    assert_eq!(pushed.len(), 3, "{}", first.summary());
    assert!(pushed.iter().all(|n| partners.contains(n)), "{pushed:x?}");
    // A trusted node that is no partner, heard without its key: it waits.
    h.sim.hear_from(outside[10], PortNum::PositionApp);
    h.command(Command::ForceSync).await;
    h.report_where(2, 5, |r| r.trigger.label() == "operator request")
        .await;
    assert_eq!(
        h.sim.contacts().len(),
        3,
        "no slot for a node that is no partner"
    );
    h.quit().await;
}

#[tokio::test]
async fn before_2_6_8_keysync_watches_and_says_why() {
    let (mut h, _) = setup("2.6.7", Hw::Esp32, None, 30);
    let first = h.report_where(1, 1, |_| true).await;
    let blocked = first.blocked.clone().unwrap_or_default();
    assert!(
        blocked.contains("firmware 2.6.7") && blocked.contains("needs 2.6.8"),
        "{}",
        first.summary()
    );
    h.command(Command::ForceSync).await;
    h.report_where(2, 3, |r| r.trigger.label() == "operator request")
        .await;
    let received = h.sim.counters().received();
    assert_eq!(received.get("want_config_nodes_only"), None, "{received:?}");
    assert_eq!(h.sim.counters().add_contacts.load(Ordering::Relaxed), 0);
    assert!(
        received.get("want_config").copied().unwrap_or(0) >= 2,
        "refreshes by full download: {received:?}"
    );
    h.quit().await;
}

#[tokio::test]
async fn a_managed_radio_is_not_pushed_to() {
    let known = population(1, 20);
    let sim = SimConfig {
        managed: true,
        capacity: Some(10),
        ..sim_config(20)
    };
    let mut h = Harness::start(sim, &known, |c| c.sync_interval = SEC);
    let first = h.report_where(1, 1, |_| true).await;
    assert!(
        first
            .blocked
            .as_deref()
            .is_some_and(|b| b.contains("managed")),
        "{}",
        first.summary()
    );
    assert_eq!(h.sim.counters().add_contacts.load(Ordering::Relaxed), 0);
    h.quit().await;
}

#[tokio::test]
async fn a_node_removed_from_the_radio_is_not_brought_back_until_heard() {
    let known = population(1, 20);
    let sim = SimConfig {
        capacity: Some(10),
        ..sim_config(20)
    };
    let rig = Rig::new(sim, &known);
    // A DM partner the radio does not hold: the startup sync pushes it first.
    let victim = rig.outside_the_radio()[0];
    rig.partners([victim]);
    let mut h = rig.start(|c| {
        c.sync_interval = SEC;
        c.sync.radio_capacity = Some(10);
    });
    h.report_where(1, 1, |_| true).await;
    let pushes_of = |sim: &SimHandle| {
        sim.contacts()
            .iter()
            .filter(|c| c.node_num == victim)
            .count()
    };
    assert_eq!(pushes_of(&h.sim), 1);
    assert!(h.sim.operator(OperatorAction::Remove, victim));
    h.command(Command::ForceSync).await;
    h.report_where(2, 5, |r| r.trigger.label() == "operator request")
        .await;
    assert_eq!(
        pushes_of(&h.sim),
        1,
        "removed by the operator: not pushed back"
    );
    wait_until("the node shown as removed", || {
        h.snap
            .borrow()
            .nodes
            .iter()
            .any(|n| n.record.num == victim && n.radio == keysync::engine::RadioKey::Removed)
    })
    .await;
    // Heard again: it is wanted again, and its key goes back.
    h.sim.hear_from(victim, PortNum::TextMessageApp);
    wait_until("the heard node pushed again", || pushes_of(&h.sim) == 2).await;
    h.quit().await;
}

#[tokio::test]
async fn a_pending_key_keeps_the_trusted_one_on_the_radio_after_a_reboot() {
    let known = population(1, 6);
    let rig = Rig::new(sim_config(6), &known);
    heard_keyless(&rig.sim, 12).await;
    let mut h = rig.start(|c| c.sync_interval = SEC);
    h.report(1).await;
    let node = known[2].clone();
    h.sim.inject(Fault::KeyChange { node: 2 }).await;
    wait_until("the new key pending", || {
        h.snap
            .borrow()
            .nodes
            .iter()
            .any(|n| n.record.num == node.num && n.record.pending.is_some())
    })
    .await;
    let seen = h.runs();
    h.sim
        .inject(Fault::Reboot {
            down: Duration::from_millis(100),
            forget: keysync::sim::Forget::Keys,
        })
        .await;
    h.report_where(seen + 1, 5, |r| r.trigger.label() == "reconnect")
        .await;
    assert_eq!(
        h.sim.key_of(node.num),
        Some(key_of(&node)),
        "the trusted key went back, never the pending one"
    );
    h.quit().await;
}
