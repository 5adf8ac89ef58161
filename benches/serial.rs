//! A radio on USB, simulated behind a real pseudo-terminal, with keysync's link supervisor on
//! the other side (both in this process):
//! - frames per second of a config download over the pty (a 200-node radio),
//! - round-trip latency: heartbeat → the radio's QueueStatus answer,
//! - CPU at idle, connected: utime + stime from /proc/self/stat over 30 s (the simulated radio
//!   included, so an upper bound for keysync alone),
//! - reconnect after an unplug: from the device coming back under its name to the link up
//!   again, with the default backoff (1 s base, full jitter), over 5 unplugs of 1 s.
//!
//! Prints a table; run with `cargo bench --bench serial`.
#![expect(
    clippy::cast_precision_loss,
    reason = "counts of frames and ticks, far below 2^52"
)]

use std::time::{Duration, Instant};

use keysync::engine;
use keysync::engine::{DEFAULT_BAUD, Endpoint};
use keysync::engine::{Link, LinkConfig, LinkNotice};
use keysync::sim::{Fault, SimConfig, SimHandle};
use meshtastic::protobufs::from_radio;
use tokio::sync::broadcast;

const NODES: usize = 200;
const IDLE: Duration = Duration::from_secs(30);
const UNPLUGS: u32 = 5;

async fn up(link: &Link) -> anyhow::Result<u64> {
    let mut status = link.status();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !status.borrow_and_update().state.is_up() {
        tokio::time::timeout_at(deadline, status.changed()).await??;
    }
    link.sender()
        .session()
        .ok_or_else(|| anyhow::anyhow!("no session"))
}

/// Frames of one download of everything, and how long it took.
async fn download(
    link: &Link,
    notices: &mut broadcast::Receiver<LinkNotice>,
    nonce: u32,
) -> anyhow::Result<(u64, Duration)> {
    let session = up(link).await?;
    let start = Instant::now();
    link.sender()
        .send(session, engine::want_config(nonce))
        .await?;
    let mut frames = 0u64;
    loop {
        if let LinkNotice::Frame(f) = notices.recv().await? {
            frames += 1;
            if f.payload_variant == Some(from_radio::PayloadVariant::ConfigCompleteId(nonce)) {
                return Ok((frames, start.elapsed()));
            }
        }
    }
}

fn cpu_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) close with ')'.
    let rest = stat
        .rsplit_once(')')
        .ok_or_else(|| anyhow::anyhow!("odd stat"))?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

async fn reconnects(link: &Link, sim: &SimHandle) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::new();
    for _ in 0..UNPLUGS {
        up(link).await?;
        let mut status = link.status();
        let sessions = status.borrow().sessions;
        let down = Duration::from_secs(1);
        sim.inject(Fault::Unplug { down }).await;
        let back = Instant::now() + down;
        // The next session up (the states in between pass too fast to watch one by one).
        while status.borrow_and_update().sessions == sessions {
            status.changed().await?;
        }
        times.push(Instant::now().saturating_duration_since(back));
    }
    Ok(times)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("radio");
    let sim = SimHandle::start_serial(
        SimConfig {
            nodes: NODES,
            capacity: Some(NODES + 1),
            announce_every: None,
            ..SimConfig::default()
        },
        path.clone(),
    )?;
    let (link, [mut notices]) = Link::spawn_subscribed::<1>(LinkConfig {
        heartbeat: Duration::from_millis(100),
        ..LinkConfig::new(Endpoint::Serial {
            path,
            baud: DEFAULT_BAUD,
        })
    });
    up(&link).await?;
    eprintln!("up; downloading");
    let mut rates = Vec::new();
    for nonce in 1000..1005 {
        let (frames, took) = download(&link, &mut notices, nonce).await?;
        rates.push((frames, took));
    }
    // The first count also holds the handshake's frames, still queued for this receiver.
    let (frames, best) = rates[1..]
        .iter()
        .copied()
        .min_by_key(|(_, t)| *t)
        .unwrap_or_default();
    let fps = frames as f64 / best.as_secs_f64();
    eprintln!("downloads done; heartbeats");
    let before = link.counters().heartbeat_rtt.read();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = link.counters().heartbeat_rtt.read();
    let beats = after.count - before.count;
    let rtt = (after.sum_seconds - before.sum_seconds) / beats.max(1) as f64;

    // Idle: the default heartbeat, a quiet mesh.
    let mut link = link;
    link.shutdown().await;
    let mut idle_link = Link::spawn(LinkConfig::new(Endpoint::Serial {
        path: sim.serial_path().unwrap_or(dir.path()).to_owned(),
        baud: DEFAULT_BAUD,
    }));
    up(&idle_link).await?;
    eprintln!("idle for {} s", IDLE.as_secs());
    let t0 = cpu_ticks()?;
    tokio::time::sleep(IDLE).await;
    let idle_ticks = cpu_ticks()? - t0;
    eprintln!("unplugging");
    let times = reconnects(&idle_link, &sim).await?;
    idle_link.shutdown().await;

    println!("serial radio over a pty, {NODES} nodes, link and sim in one process");
    println!(
        "download: {frames} frames in {:.1} ms (best of 4) = {fps:.0} frames/s",
        best.as_secs_f64() * 1000.0
    );
    println!(
        "heartbeat round trip: {:.3} ms mean over {beats} heartbeats",
        rtt * 1000.0
    );
    println!(
        "idle CPU connected: {idle_ticks} ticks of 10 ms in {} s = {:.2} % of one core",
        IDLE.as_secs(),
        idle_ticks as f64 / IDLE.as_secs_f64()
    );
    let ms: Vec<String> = times
        .iter()
        .map(|t| format!("{:.0}", t.as_secs_f64() * 1000.0))
        .collect();
    println!(
        "reconnect after an unplug of 1 s (device back → link up, ms): {}",
        ms.join(", ")
    );
    Ok(())
}
