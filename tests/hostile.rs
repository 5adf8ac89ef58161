//! Hostile conditions: a radio whose queue is full or silent, an impostor key across
//! reconnects and restarts, a flapping radio, a flood of traffic. Longer variants are
//! `#[ignore]`d; docs/PERFORMANCE.md has the commands.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use common::*;
use keysync::engine::radio::valid_key;
use keysync::engine::sync::{Outcome, Trigger};
use keysync::engine::{self, Command, Snapshot};
use keysync::sim::{Fault, Forget};
use tokio::sync::watch;

const SEC: Duration = Duration::from_secs(1);

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test]
async fn pushes_wait_while_the_radio_queue_is_full_then_resume_without_a_burst() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim(sim_config(0));
    let (db, store) = seeded_store(&dir, &population(1, 12));
    let full_for = Duration::from_millis(1200);
    sim.inject(Fault::QueueFull { duration: full_for }).await;
    let full_until = Instant::now() + full_for;
    let mut config = fast_engine(&sim, db, 60 * SEC, 600 * SEC);
    config.sync.push_gap = Duration::from_millis(20);
    config.sync.queue_timeout = Duration::from_secs(10);
    let engine = engine::try_start(config, store).expect("the engine starts");
    let mut snap = engine.snapshot.clone();
    let report = nth_report(&mut snap, 1).await;
    assert_eq!((report.outcome, report.pushed), (Outcome::Forced, 12));
    let times = sim.contact_times();
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
    assert_no_invalid_contacts(&sim);
    engine.quit().await;
}

#[tokio::test]
async fn pushes_pace_on_a_timeout_when_the_radio_never_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim(sim_config(0));
    let (db, store) = seeded_store(&dir, &population(1, 5));
    sim.inject(Fault::SilentQueue {
        duration: Duration::from_secs(600),
    })
    .await;
    let mut config = fast_engine(&sim, db, 60 * SEC, 600 * SEC);
    config.sync.push_gap = Duration::from_millis(10);
    config.sync.queue_timeout = Duration::from_millis(300);
    let engine = engine::try_start(config, store).expect("the engine starts");
    let mut snap = engine.snapshot.clone();
    let report = nth_report(&mut snap, 1).await;
    assert_eq!((report.outcome, report.pushed), (Outcome::Forced, 5));
    let times = sim.contact_times();
    assert!(
        gaps(&times)
            .iter()
            .all(|g| *g >= Duration::from_millis(300)),
        "each push waited out the missing QueueStatus: {:?}",
        gaps(&times)
    );
    engine.quit().await;
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
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim(sim_config(6));
    let (db, store) = seeded_store(&dir, &[]);
    let config = fast_engine(&sim, db.clone(), SEC, 600 * SEC);
    let engine = engine::try_start(config.clone(), store).expect("the engine starts");
    let mut snap = engine.snapshot.clone();
    nth_report(&mut snap, 1).await;
    let victim = sim.mesh()[2].clone();
    let genuine = valid_key(&victim.user.as_ref().expect("user").public_key).expect("key");
    sim.inject(Fault::KeyChange { node: 2 }).await;
    let impostor = valid_key(&sim.mesh()[2].user.as_ref().expect("user").public_key).expect("key");
    wait_until("the impostor key pending", || {
        snap.borrow()
            .nodes
            .iter()
            .any(|n| n.record.num == victim.num && n.record.pending == Some(impostor))
    })
    .await;
    // Reboots that forget keys, a forced sync, a cache reset, then a restart of keysync.
    for _ in 0..2 {
        let seen = snap.borrow().sync.history.len();
        sim.inject(Fault::Reboot {
            down: Duration::from_millis(100),
            forget: Forget::Keys,
        })
        .await;
        wait_for_run(&mut snap, seen, Trigger::Reconnect).await;
    }
    engine
        .commands
        .send(Command::ForceSync)
        .await
        .expect("engine runs");
    engine
        .commands
        .send(Command::ResetCache)
        .await
        .expect("engine runs");
    let seen = snap.borrow().sync.history.len();
    wait_for_run(&mut snap, seen, Trigger::Operator).await;
    engine.quit().await;
    let store = keysync::engine::store::Store::open(&db).expect("reopens");
    let engine = engine::try_start(config, store).expect("the engine starts");
    let mut snap = engine.snapshot.clone();
    let restart = nth_report(&mut snap, 1).await;
    assert_eq!(restart.trigger, Trigger::Startup);
    assert!(restart.conflicts >= 1, "{}", restart.summary());
    assert!(
        !pushed_keys_for(&sim, victim.num).contains(&impostor),
        "the impostor key went to the radio"
    );
    // Only the operator's rejection sends the genuine key back over it.
    engine
        .commands
        .send(Command::RejectKey(victim.num))
        .await
        .expect("engine runs");
    wait_until("the genuine key pushed back", || {
        pushed_keys_for(&sim, victim.num).contains(&genuine)
    })
    .await;
    assert!(!pushed_keys_for(&sim, victim.num).contains(&impostor));
    assert_no_invalid_contacts(&sim);
    engine.quit().await;
}

/// Waits for a run with `trigger` after the first `seen` runs.
async fn wait_for_run(snap: &mut watch::Receiver<Snapshot>, seen: usize, trigger: Trigger) {
    let mut n = seen;
    loop {
        n += 1;
        if nth_report(snap, n).await.trigger == trigger {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_the_radio_never_blocks_the_engine_or_drops_the_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim(sim_config(40));
    let (db, store) = seeded_store(&dir, &[]);
    let engine = engine::try_start(fast_engine(&sim, db, 60 * SEC, 600 * SEC), store)
        .expect("the engine starts");
    let mut snap = engine.snapshot.clone();
    nth_report(&mut snap, 1).await;
    for i in 0..5000 {
        sim.inject(Fault::Announce { node: i % 40 }).await;
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // The engine still answers: an operator sync completes while the link stays up.
    engine
        .commands
        .send(Command::ForceSync)
        .await
        .expect("engine runs");
    let seen = snap.borrow().sync.history.len();
    wait_for_run(&mut snap, seen, Trigger::Operator).await;
    let s = snap.borrow().clone();
    assert_eq!(s.link.sessions, 1, "the link survived the flood");
    assert!(s.link.state.is_up());
    // Every announcement either reached keysync or was dropped by the radio's own 32-frame
    // queue towards a slow client; nothing waited on keysync.
    wait_until(
        "every announcement delivered or dropped by the radio",
        || {
            let dropped = sim.counters().dropped_to_client.load(Ordering::Relaxed);
            snap.borrow().traffic.frames_in + dropped >= 5000
        },
    )
    .await;
    engine.quit().await;
}
