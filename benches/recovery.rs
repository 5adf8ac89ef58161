//! Against the simulated radio over real TCP, in one run:
//! - a 1000-node download: keysync's nodes-only download and its whole `sync --once` (full
//!   handshake + forced sync + exit), next to the Python client's `meshtastic --host … --nodes`;
//! - a radio back from a reboot → forced sync complete, measured from the TCP connect (so
//!   without the backoff before it).
//!
//! Prints a table; run with `cargo bench --bench recovery`. The Python client is taken from
//! `target/pyenv/bin/meshtastic` (what `.ci/run` installs) or `PATH`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use keysync::engine::Store;
use keysync::engine::{self, EngineConfig};
use keysync::engine::{LinkConfig, LinkState};
use keysync::engine::{SyncSettings, Trigger};
use keysync::sim::{Fault, Forget, SimConfig, SimHandle};

fn python_client() -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/meshtastic");
    if venv.exists() {
        return Some(venv);
    }
    Command::new("meshtastic")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("meshtastic"))
}

fn sim(nodes: usize) -> anyhow::Result<SimHandle> {
    Ok(SimHandle::start(SimConfig {
        listen: "127.0.0.1:0".parse()?,
        nodes,
        capacity: Some(nodes + 1),
        announce_every: None,
        ..SimConfig::default()
    })?)
}

fn engine_config(sim: &SimHandle, db: PathBuf) -> EngineConfig {
    EngineConfig {
        link: LinkConfig {
            heartbeat: Duration::from_secs(30),
            ..LinkConfig::new(sim.addr().to_string())
        },
        sync_interval: Duration::from_secs(3600),
        sync: SyncSettings {
            cache_ttl: Duration::from_secs(3600),
            ..SyncSettings::default()
        },
        db_path: db,
        proxy: None,
        mqtt: None,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Reboot → forced sync complete, from the TCP connect.
async fn reboot_recovery(dir: &std::path::Path) -> anyhow::Result<()> {
    println!("radio back from a reboot → forced sync done, from TCP connect (100 known keys)");
    for (label, forget) in [
        ("keys kept", Forget::Nothing),
        ("keys forgotten", Forget::Keys),
    ] {
        let radio = sim(100)?;
        let db = dir.join(format!("reboot-{label}.db"));
        let mut config = engine_config(&radio, db.clone());
        config.sync.push_gap = Duration::from_millis(200);
        config.sync.max_pushes = 100;
        let engine = engine::try_start(config, Store::open(&db)?).expect("the engine starts");
        let mut snap = engine.snapshot.clone();
        snap.wait_for(|s| !s.sync.history.is_empty()).await?;
        let mut samples = Vec::new();
        for round in 0..5 {
            radio
                .inject(Fault::Reboot {
                    down: Duration::from_millis(300),
                    forget,
                })
                .await;
            let done = snap
                .wait_for(|s| s.sync.history.len() >= round + 2)
                .await?
                .sync
                .history[round + 1]
                .clone();
            let status = snap.borrow().link.clone();
            // The last Connecting before the forced run began is the TCP connect.
            let connect = status
                .timeline
                .iter()
                .rev()
                .filter(|e| e.at <= done.started_at)
                .find(|e| matches!(e.state, LinkState::Connecting { .. }))
                .map_or(done.started_at, |e| e.at);
            let finished = done.started_at + done.duration;
            samples.push(finished.duration_since(connect).unwrap_or_default());
        }
        println!(
            "  {label:<15} pushes per run {:>3}: median {:>10.1?}",
            100 * usize::from(forget == Forget::Keys),
            median(samples)
        );
        engine.quit().await;
        radio.shutdown().await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/keysync");
    let dir = tempfile::tempdir()?;
    let sim1000 = sim(1000)?;
    let host = sim1000.addr().to_string();

    // keysync: nodes-only download inside the engine (operator force, nothing to push).
    let db = dir.path().join("download.db");
    let engine = engine::try_start(engine_config(&sim1000, db.clone()), Store::open(&db)?)
        .expect("the engine starts");
    let mut snap = engine.snapshot.clone();
    snap.wait_for(|s| !s.sync.history.is_empty()).await?;
    let mut nodes_only = Vec::new();
    for i in 0..5 {
        engine.commands.send(engine::Command::ForceSync).await?;
        snap.wait_for(|s| s.sync.history.len() >= i + 2).await?;
        let r = snap.borrow().sync.history[i + 1].clone();
        assert_eq!(r.trigger, Trigger::Operator);
        nodes_only.push(r.duration);
    }
    engine.quit().await;

    // keysync: the whole `sync --once` process, full handshake included.
    let mut once = Vec::new();
    if bin.exists() {
        for _ in 0..5 {
            let db = dir.path().join(format!("once-{}.db", once.len()));
            let start = Instant::now();
            let status = Command::new(&bin)
                .args(["sync", "--once", "--host", &host, "--db"])
                .arg(&db)
                .env("XDG_CONFIG_HOME", "/nonexistent")
                .output()?;
            anyhow::ensure!(status.status.success(), "keysync sync --once failed");
            once.push(start.elapsed());
        }
    }

    // The Python client on the same radio, same run.
    let mut python = Vec::new();
    if let Some(cli) = python_client() {
        for _ in 0..3 {
            let start = Instant::now();
            let out = Command::new(&cli)
                .args(["--host", &host, "--nodes"])
                .output()?;
            anyhow::ensure!(out.status.success(), "meshtastic --nodes failed");
            python.push(start.elapsed());
        }
    }
    println!("1000-node download from keysync sim (medians)");
    println!(
        "  keysync nodes-only download (engine):     {:>10.1?}",
        median(nodes_only)
    );
    let once_m = (!once.is_empty()).then(|| median(once));
    let py_m = (!python.is_empty()).then(|| median(python));
    if let Some(o) = once_m {
        println!("  keysync sync --once (process, full):      {o:>10.1?}");
    }
    match py_m {
        Some(p) => println!("  meshtastic --host … --nodes (Python):     {p:>10.1?}"),
        None => println!("  meshtastic Python client not installed: no comparison"),
    }
    if let (Some(o), Some(p)) = (once_m, py_m) {
        println!(
            "  ratio Python / keysync sync --once:       {:>10.1}×",
            p.as_secs_f64() / o.as_secs_f64()
        );
    }
    sim1000.shutdown().await;

    reboot_recovery(dir.path()).await?;
    Ok(())
}
