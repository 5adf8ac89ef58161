//! Keys over MQTT, against a real mosquitto on a loopback port:
//!
//! 1. a replayed uplink: `KEYS` (default 10 000) encrypted LongFast NodeInfos published to the
//!    broker while `keysync --headless --mqtt` (the release binary, its own process) runs
//!    against a simulated radio — keys learned per second, and the process's RSS before and
//!    after;
//! 2. a fleet of two keysyncs: a key only A can read (a channel only A has the key of) goes
//!    A → broker → B; the time from A having it in its store to B having it, over `ROUNDS`
//!    keys (default 20).
//!
//! `cargo bench --bench mqtt` (needs mosquitto: apt-get install mosquitto).

// The tests' broker; its TLS half is for the tests only.
#[path = "../tests/common/broker.rs"]
#[allow(dead_code)]
mod broker;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keysync::engine::BrokerUrl;
use keysync::engine::ChannelKey;
use keysync::engine::MqttConfig;
use keysync::engine::Store;
use keysync::engine::SyncSettings;
use keysync::engine::envelope;
use keysync::engine::{self, EngineConfig};
use keysync::sim::{SimConfig, SimHandle};
use meshtastic::protobufs::User;

const TOPIC: &str = "msh/EU_868/2/e/LongFast/!0000beef";
const FIRST: u32 = 0x5000_0000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn user(num: u32) -> User {
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&num.to_le_bytes());
    key[31] = 1;
    User {
        id: format!("!{num:08x}"),
        long_name: format!("Far node {num:08x}"),
        short_name: "FN".into(),
        public_key: key.to_vec(),
        ..User::default()
    }
}

/// Keys the store at `db` learned over MQTT (or from the fleet), read without the engine.
fn remote_keys(db: &Path) -> i64 {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    conn.query_row(
        "SELECT count(*) FROM keys WHERE source LIKE 'MQTT via %' OR source LIKE 'fleet %'",
        [],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn sim(seed: u64, nodes: usize) -> anyhow::Result<SimHandle> {
    Ok(SimHandle::start(SimConfig {
        listen: "127.0.0.1:0".parse()?,
        nodes,
        seed,
        announce_every: None,
        ..SimConfig::default()
    })?)
}

async fn replay(broker: &broker::Broker, keys: u32) -> anyhow::Result<()> {
    let radio = sim(1, 20)?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("replay.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keysync"))
        .args(["--headless", "--log-level", "warn", "--host"])
        .arg(radio.addr().to_string())
        .arg("--db")
        .arg(&db)
        .args(["--mqtt", &broker.url()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Connected and synced: the radio's nodes are in the store.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Store::open_existing(&db)
        .and_then(|s| s.nodes())
        .map_or(0, |n| n.len())
        < 20
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "keysync did not sync with the sim"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(child.id());
    let channel = ChannelKey::default_channel();
    let packets: Vec<Vec<u8>> = (0..keys)
        .map(|i| envelope(FIRST + i, i + 1, &user(FIRST + i), Some(&channel), 0xbeef))
        .collect();
    let gateway = broker.client("replay").await;
    let start = Instant::now();
    for p in packets {
        gateway.publish(TOPIC, p).await;
    }
    let published = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut learned = 0;
    while learned < i64::from(keys) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        learned = remote_keys(&db);
    }
    let took = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    #[expect(clippy::cast_precision_loss, reason = "a rate for people")]
    let rate = learned as f64 / took.as_secs_f64();
    println!(
        "replayed uplink: {keys} NodeInfos published in {published:.2?}; {learned} keys learned in {took:.2?} = {rate:.0} keys/s"
    );
    println!(
        "keysync --headless RSS: {} KiB before, {} KiB with {learned} keys learned over MQTT (peak {} KiB)",
        before.0, after.0, after.1
    );
    Ok(())
}

async fn fleet(broker: &broker::Broker, rounds: u32) -> anyhow::Result<()> {
    let secret = ChannelKey::new("ops", &[0x42; 32]).ok_or_else(|| anyhow::anyhow!("key"))?;
    let dir = tempfile::tempdir()?;
    let mut engines = Vec::new();
    let mut dbs = Vec::new();
    let mut sims = Vec::new();
    for (i, seed) in [(0, 11), (1, 22)] {
        let radio = sim(seed, 5)?;
        let db = dir.path().join(format!("fleet{i}.db"));
        let mut mqtt =
            MqttConfig::new(BrokerUrl::parse(&broker.url()).map_err(anyhow::Error::msg)?);
        mqtt.fleet = Some("bench".into());
        if i == 0 {
            mqtt.channel_keys.push(secret.clone());
        }
        let config = EngineConfig {
            link: keysync::engine::LinkConfig::new(radio.addr().to_string()),
            sync_interval: Duration::from_secs(3600),
            sync: SyncSettings {
                cache_ttl: Duration::from_secs(3600),
                ..SyncSettings::default()
            },
            db_path: db.clone(),
            proxy: None,
            mqtt: Some(mqtt),
        };
        engines.push(engine::try_start(config, Store::open(&db)?)?);
        dbs.push(db);
        sims.push(radio);
    }
    // Both shared their radios' nodes: the fleet is settled.
    let deadline = Instant::now() + Duration::from_secs(30);
    while remote_keys(&dbs[0]) < 5 || remote_keys(&dbs[1]) < 5 {
        anyhow::ensure!(Instant::now() < deadline, "the fleet did not settle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gateway = broker.client("fleet-uplink").await;
    let mut gaps = Vec::new();
    for r in 0..rounds {
        let num = 0x6000_0000 + r;
        let p = envelope(num, r + 1, &user(num), Some(&secret), 0xbeef);
        gateway.publish("msh/EU_868/2/e/ops/!0000beef", p).await;
        let has = |db: &Path| {
            Store::open_existing(db)
                .and_then(|s| s.knows(num))
                .unwrap_or(false)
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut at_a = None;
        let at_b = loop {
            anyhow::ensure!(
                Instant::now() < deadline,
                "round {r}: the key did not reach B"
            );
            if at_a.is_none() && has(&dbs[0]) {
                at_a = Some(Instant::now());
            }
            if has(&dbs[1]) {
                break Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        gaps.push(at_b.duration_since(at_a.unwrap_or(at_b)));
    }
    gaps.sort();
    println!(
        "fleet A → B: from A storing a key to B storing it, over {rounds} keys: median {:.0?}, min {:.0?}, max {:.0?}",
        gaps[gaps.len() / 2],
        gaps[0],
        gaps[gaps.len() - 1]
    );
    for e in engines {
        e.quit().await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // cargo bench passes --bench; `cargo test --benches` runs this too: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let keys: u32 = env_or("KEYS", if quick { 200 } else { 10_000 });
    let rounds: u32 = env_or("ROUNDS", if quick { 3 } else { 20 });
    let broker = broker::Broker::start();
    replay(&broker, keys).await?;
    fleet(&broker, rounds).await?;
    Ok(())
}
