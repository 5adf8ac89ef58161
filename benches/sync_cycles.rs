//! Frames on the wire per sync cycle, against the simulated radio over real TCP: a forced run
//! that pushes, a skipped check, a synced run after the TTL, an operator's forced run.
//! Prints a table; run with `cargo bench --bench sync_cycles`.

use std::sync::atomic::Ordering;
use std::time::Duration;

mod common;

use keysync::engine::SyncSettings;
use keysync::engine::{self, Command, EngineConfig};
use keysync::engine::{BackoffPolicy, LinkConfig};
use keysync::sim::{SimConfig, SimCounters, SimHandle};

const KNOWN: usize = 100;
const IN_RADIO: usize = 90;

fn besides_heartbeats(c: &SimCounters) -> (u64, u64) {
    (
        c.received_besides_heartbeats(),
        c.bytes_besides_heartbeats.load(Ordering::Relaxed),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("bench.db");
    let store = common::trusting_store(&db, KNOWN)?;
    let sim = SimHandle::start(SimConfig {
        listen: "127.0.0.1:0".parse()?,
        nodes: IN_RADIO,
        capacity: Some(250),
        announce_every: None,
        ..SimConfig::default()
    })?;
    let config = EngineConfig {
        link: LinkConfig {
            heartbeat: Duration::from_secs(30),
            backoff: BackoffPolicy::default(),
            ..LinkConfig::new(sim.addr().to_string())
        },
        sync_interval: Duration::from_secs(1),
        sync: SyncSettings {
            cache_ttl: Duration::from_secs(2),
            push_gap: Duration::from_millis(5),
            max_pushes: 32,
            ..SyncSettings::default()
        },
        db_path: db.clone(),
        proxy: None,
        mqtt: None,
    };
    let engine = engine::try_start(config, store).expect("the engine starts");
    let mut snap = engine.snapshot.clone();
    let counters = sim.counters();
    println!(
        "{KNOWN} known keys, {IN_RADIO} in the radio; frames keysync sent per cycle (heartbeats excluded)"
    );
    println!(
        "{:<30} {:>7} {:>7} {:>7} {:>12} {:>10}",
        "cycle", "frames", "bytes", "pushes", "flash writes", "duration"
    );
    let mut seen = 0;
    let mut last = (
        besides_heartbeats(&counters),
        counters.flash_writes.load(Ordering::Relaxed),
    );
    let mut shown = Vec::new();
    while shown.len() < 4 {
        snap.wait_for(|s| s.sync.history.len() > seen).await?;
        let report = snap.borrow().sync.history[seen].clone();
        seen += 1;
        let now = (
            besides_heartbeats(&counters),
            counters.flash_writes.load(Ordering::Relaxed),
        );
        let label = format!("{} ({})", report.outcome, report.trigger.label());
        if !shown.contains(&label) {
            println!(
                "{:<30} {:>7} {:>7} {:>7} {:>12} {:>10.1?}",
                label,
                now.0.0 - last.0.0,
                now.0.1 - last.0.1,
                report.pushed,
                now.1 - last.1,
                report.duration
            );
            shown.push(label);
        }
        last = now;
        if shown.len() == 3 {
            engine.commands.send(Command::ForceSync).await?;
        }
    }
    engine.quit().await;
    Ok(())
}
