//! A 250-node config download: straight from the simulated radio, then replayed by keysync's
//! proxy to a downstream client, on the same radio in the same run. Prints medians and what the
//! radio received during the replays. Then the latency keysync adds to each frame it relays,
//! client → radio and radio → client, against a client of the radio itself (median and p99 of
//! [`RELAYED`] frames each way, on loopback). Run with `cargo bench --bench proxy_replay`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use keysync::engine::ClientCodec;
use keysync::engine::LinkConfig;
use keysync::engine::ProxyConfig;
use keysync::engine::Store;
use keysync::engine::SyncSettings;
use keysync::engine::{self, EngineConfig};
use keysync::sim::{SimConfig, SimHandle};
use meshtastic::protobufs::{
    Data, FromRadio, MeshPacket, PortNum, ToRadio, from_radio, mesh_packet, to_radio,
};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const NODES: usize = 250;

/// One full download over a fresh connection; returns its time and frame count.
async fn download(addr: std::net::SocketAddr, nonce: u32) -> anyhow::Result<(Duration, usize)> {
    let mut conn = Framed::new(TcpStream::connect(addr).await?, ClientCodec::new());
    let start = Instant::now();
    conn.send(engine::want_config(nonce)).await?;
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

/// Frames timed each way.
const RELAYED: usize = 1000;
/// Packets sent before the radio's record of them is read (it keeps the last 1000).
const BATCH: usize = 200;

/// Per-frame latencies on one connection.
#[derive(Debug, Default)]
struct Latency {
    /// From a client's write of a packet to the radio taking it.
    up: Vec<Duration>,
    /// From the radio taking a packet to the client reading its QueueStatus.
    answer: Vec<Duration>,
    /// From the radio hearing a packet on the mesh to the client reading it.
    live: Vec<Duration>,
}

type Conn = Framed<TcpStream, ClientCodec>;

async fn next_frame(conn: &mut Conn) -> anyhow::Result<FromRadio> {
    match tokio::time::timeout(Duration::from_secs(10), conn.next()).await {
        Ok(Some(frame)) => Ok(frame?),
        Ok(None) => anyhow::bail!("the connection closed"),
        Err(_) => anyhow::bail!("nothing for 10 s"),
    }
}

fn private_packet(id: u32) -> ToRadio {
    ToRadio {
        payload_variant: Some(to_radio::PayloadVariant::Packet(MeshPacket {
            to: engine::BROADCAST,
            id,
            payload_variant: Some(mesh_packet::PayloadVariant::Decoded(Data {
                // A port without a firmware rate limit.
                portnum: PortNum::PrivateApp as i32,
                payload: b"latency".to_vec(),
                ..Data::default()
            })),
            ..MeshPacket::default()
        })),
    }
}

/// Times [`RELAYED`] packets a client at `addr` sends the radio `sim` (one at a time, each
/// after the answer to the last) and [`RELAYED`] packets the radio hears and the client reads.
async fn relay_latency(addr: std::net::SocketAddr, sim: &SimHandle) -> anyhow::Result<Latency> {
    let mut conn = Framed::new(TcpStream::connect(addr).await?, ClientCodec::new());
    conn.send(engine::want_config(77)).await?;
    while !matches!(
        next_frame(&mut conn).await?.payload_variant,
        Some(from_radio::PayloadVariant::ConfigCompleteId(77))
    ) {}
    let mut lat = Latency::default();
    let mut id = rand_base();
    for _ in 0..RELAYED / BATCH {
        let mut sent = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            id += 1;
            let written = Instant::now();
            conn.send(private_packet(id)).await?;
            loop {
                let frame = next_frame(&mut conn).await?;
                if matches!(&frame.payload_variant, Some(from_radio::PayloadVariant::QueueStatus(q)) if q.mesh_packet_id == id)
                {
                    break;
                }
            }
            sent.push((id, written, Instant::now()));
        }
        let taken: HashMap<u32, Instant> = sim
            .sent()
            .iter()
            .zip(sim.sent_times())
            .map(|(p, t)| (p.id, t.into_std()))
            .collect();
        for (id, written, answered) in sent {
            let at = *taken
                .get(&id)
                .ok_or_else(|| anyhow::anyhow!("packet {id:08x} never reached the radio"))?;
            lat.up.push(at.saturating_duration_since(written));
            lat.answer.push(answered.saturating_duration_since(at));
        }
    }
    let own = sim.my_node_num();
    let node = sim
        .nodedb()
        .iter()
        .map(|n| n.num)
        .find(|n| *n != own)
        .ok_or_else(|| anyhow::anyhow!("no other node"))?;
    for _ in 0..RELAYED {
        let heard = Instant::now();
        sim.hear_from(node, PortNum::PrivateApp);
        loop {
            let frame = next_frame(&mut conn).await?;
            if matches!(&frame.payload_variant, Some(from_radio::PayloadVariant::Packet(p)) if p.from == node)
            {
                lat.live.push(heard.elapsed());
                break;
            }
        }
    }
    Ok(lat)
}

/// A base for packet ids that no earlier run used.
fn rand_base() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    0x4000_0000 | (nanos & 0x0fff_0000)
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short list"
    )]
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn latency_row(what: &str, direct: &[Duration], proxied: &[Duration]) {
    let (d50, d99) = (percentile(direct, 0.5), percentile(direct, 0.99));
    let (p50, p99) = (percentile(proxied, 0.5), percentile(proxied, 0.99));
    println!(
        "  {what:<34} {d50:>9.1?} {d99:>9.1?}   {p50:>9.1?} {p99:>9.1?}   {:>9.1?}",
        p50.saturating_sub(d50)
    );
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
    let direct_relay = relay_latency(sim.addr(), &sim).await?;
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
    let proxied_relay = relay_latency(proxy, &sim).await?;
    println!();
    println!("relay latency per frame, {RELAYED} frames each way (loopback)");
    println!(
        "  {:<34} {:>19}   {:>19}   {:>9}",
        "", "direct: median  p99", "keysync: median  p99", "added"
    );
    latency_row(
        "client -> radio (packet taken)",
        &direct_relay.up,
        &proxied_relay.up,
    );
    latency_row(
        "radio -> client (its QueueStatus)",
        &direct_relay.answer,
        &proxied_relay.answer,
    );
    latency_row(
        "radio -> client (a live packet)",
        &direct_relay.live,
        &proxied_relay.live,
    );
    engine.quit().await;
    Ok(())
}
