//! A 250-node config download: straight from the simulated radio, then replayed by keysync's
//! proxy to a downstream client, on the same radio in the same run. Prints medians and what the
//! radio received during the replays. Run with `cargo bench --bench proxy_replay`.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use keysync::engine::codec::ClientCodec;
use keysync::engine::link::LinkConfig;
use keysync::engine::proxy::ProxyConfig;
use keysync::engine::radio;
use keysync::engine::store::Store;
use keysync::engine::sync::SyncSettings;
use keysync::engine::{self, EngineConfig};
use keysync::sim::{SimConfig, SimHandle};
use meshtastic::protobufs::from_radio;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const NODES: usize = 250;

/// One full download over a fresh connection; returns its time and frame count.
async fn download(addr: std::net::SocketAddr, nonce: u32) -> anyhow::Result<(Duration, usize)> {
    let mut conn = Framed::new(TcpStream::connect(addr).await?, ClientCodec::new());
    let start = Instant::now();
    conn.send(radio::want_config(nonce)).await?;
    let mut frames = 0;
    while let Some(frame) = conn.next().await {
        frames += 1;
        if matches!(frame?.payload_variant, Some(from_radio::PayloadVariant::ConfigCompleteId(n)) if n == nonce)
        {
            return Ok((start.elapsed(), frames));
        }
    }
    anyhow::bail!("the download ended early")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sim = SimHandle::start(SimConfig {
        listen: "127.0.0.1:0".parse()?,
        nodes: NODES,
        capacity: Some(NODES + 1),
        announce_every: None,
        ..SimConfig::default()
    })?;
    let mut direct = Vec::new();
    let mut frames_direct = 0;
    for i in 0..7 {
        let (d, n) = download(sim.addr(), 1000 + i).await?;
        direct.push(d);
        frames_direct = n;
    }
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("k.db");
    let config = EngineConfig {
        link: LinkConfig {
            heartbeat: Duration::from_secs(30),
            ..LinkConfig::new(sim.addr().to_string())
        },
        sync_interval: Duration::from_secs(3600),
        sync: SyncSettings {
            cache_ttl: Duration::from_secs(3600),
            ..SyncSettings::default()
        },
        db_path: db.clone(),
        proxy: Some(ProxyConfig {
            listen: "127.0.0.1:0".parse()?,
            max_clients: 8,
            downstream_grace: Duration::from_secs(30),
            allow_remote_admin: false,
            deny_admin: Vec::new(),
            idle_close: ProxyConfig::IDLE_CLOSE,
            partial_frame: ProxyConfig::PARTIAL_FRAME,
        }),
        mqtt: None,
    };
    let engine = engine::try_start(config, Store::open(&db)?)?;
    let mut snap = engine.snapshot.clone();
    snap.wait_for(|s| !s.sync.history.is_empty()).await?;
    let proxy = snap
        .borrow()
        .proxy_addr
        .ok_or_else(|| anyhow::anyhow!("no proxy"))?;
    let before = sim.counters().received_besides_heartbeats();
    let mut replay = Vec::new();
    let mut frames_replay = 0;
    for i in 0..7 {
        let (d, n) = download(proxy, 2000 + i).await?;
        replay.push(d);
        frames_replay = n;
    }
    let upstream = sim.counters().received_besides_heartbeats() - before;
    println!("{NODES}-node full config download (median of 7)");
    println!(
        "  straight from the radio (sim):   {:>9.2?}  {frames_direct} frames",
        median(direct)
    );
    println!(
        "  replayed by keysync's proxy:     {:>9.2?}  {frames_replay} frames",
        median(replay)
    );
    println!("  frames the radio received during the replays (heartbeats excluded): {upstream}");
    engine.quit().await;
    Ok(())
}
