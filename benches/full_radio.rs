//! keysync against a radio that holds fewer nodes than keysync trusts, on a busy mesh, with a
//! compressed clock: each check interval stands for 5 minutes of a real gateway. Prints crashes,
//! flash writes and protected entries per simulated hour — the figure that says whether keysync
//! harms the radio (PROTOCOL.md § When the NodeDB is full).
//!
//! The flash budget counts real hours; the whole run fits in one, so the bench gives it what
//! the simulated hours would have allowed (60 per simulated hour).
//!
//! `cargo bench --bench full_radio` (env: `KEYS` trusted keys, default 300; `CAPACITY`, 100;
//! `FIRMWARE`, 2.7.26; `HW`, nrf52; `CHECKS`, 120 = 10 simulated hours; `NEW_PER_CHECK`,
//! unknown nodes heard per check as plain packets, 2; `HEARD_PER_CHECK`, nodes keysync trusts
//! heard per check as position packets — keyless on the radio if it evicted them, 4;
//! `PARTNERS`, of the trusted keys those that exchanged DMs with the gateway, 10). A partner's
//! lazy push within 3 s is asserted by tests/need_driven.rs.

use std::sync::atomic::Ordering;
use std::time::Duration;

mod common;

use keysync::engine::SyncSettings;
use keysync::engine::{self, EngineConfig};
use keysync::engine::{BackoffPolicy, LinkConfig};
use keysync::sim::{Fault, Profile, SimConfig, SimHandle, SimRole};
use meshtastic::protobufs::PortNum;

/// One check interval of the bench stands for this long on a real gateway.
const REAL_INTERVAL: Duration = Duration::from_secs(300);
const INTERVAL: Duration = Duration::from_secs(1);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let keys: usize = env_or("KEYS", 300);
    let capacity: usize = env_or("CAPACITY", 100);
    let firmware: String = env_or("FIRMWARE", "2.7.26".to_owned());
    let hw: keysync::sim::Hw = env_or("HW", keysync::sim::Hw::Nrf52);
    // Seconds of the run stand for 5-minute checks: 12 make a simulated hour.
    let checks: u32 = env_or("CHECKS", 120);
    let new_per_check: usize = env_or("NEW_PER_CHECK", 2);
    let heard_per_check: usize = env_or("HEARD_PER_CHECK", 4);
    let partners: usize = env_or("PARTNERS", 10);

    let dir = tempfile::tempdir()?;
    let db = dir.path().join("bench.db");
    let mut store = common::trusting_store(&db, keys)?;
    // DM partners: the last of the mesh (the radio holds the first nodes).
    let now = std::time::SystemTime::now();
    for node in common::population(keys).iter().rev().take(partners) {
        store.note_dm(node.num, now)?;
    }
    let sim = SimHandle::start(SimConfig {
        listen: "127.0.0.1:0".parse()?,
        nodes: keys,
        capacity: Some(capacity),
        announce_every: Some(INTERVAL / 4),
        profile: Profile::new(&firmware, hw, SimRole::Client).map_err(anyhow::Error::msg)?,
        // A real radio reboots in ~20 s: 1/15 of a check interval.
        reboot_time: INTERVAL / 15,
        ..SimConfig::default()
    })?;
    let config = EngineConfig {
        link: LinkConfig {
            heartbeat: INTERVAL,
            backoff: BackoffPolicy {
                base: Duration::from_millis(20),
                cap: Duration::from_millis(200),
                reset_after: Duration::from_secs(5),
            },
            ..LinkConfig::new(sim.addr().to_string())
        },
        sync_interval: INTERVAL,
        sync: SyncSettings {
            cache_ttl: INTERVAL * 6,
            push_gap: Duration::from_millis(2),
            // The budget counts real hours and the whole run fits in one: allow what the
            // simulated hours would have allowed at the default 60 per hour.
            max_flash_writes: 60 * checks.div_ceil(12),
            ..SyncSettings::default()
        },
        db_path: db.clone(),
        proxy: None,
        mqtt: None,
    };
    let engine = engine::try_start(config, store).expect("the engine starts");
    let counters = sim.counters();
    let mut max_protected = 0;
    let mesh: Vec<u32> = sim.mesh().iter().map(|n| n.num).collect();
    let mut next_heard = 0usize;
    for _ in 0..checks {
        tokio::time::sleep(INTERVAL).await;
        for _ in 0..heard_per_check {
            // Walk the mesh in a stride: every node is heard now and then.
            next_heard = (next_heard + 37) % mesh.len().max(1);
            if let Some(num) = mesh.get(next_heard) {
                sim.hear_from(*num, PortNum::PositionApp);
            }
        }
        sim.inject(Fault::NewNodes {
            count: new_per_check,
            portnum: Some(PortNum::PositionApp),
        })
        .await;
        max_protected = max_protected.max(sim.protected().total);
    }
    let history = engine.snapshot.borrow().sync.history.len();
    engine.quit().await;

    let hours = f64::from(checks) * REAL_INTERVAL.as_secs_f64() / 3600.0;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let per_hour = |n: u64| n as f64 / hours;
    let protected = sim.protected();
    println!(
        "{keys} trusted keys ({partners} DM partners), firmware {firmware} on {hw}, NodeDB capacity {capacity}; per check {heard_per_check} trusted nodes heard as position packets, {new_per_check} unknown nodes"
    );
    println!(
        "{checks} checks = {hours:.1} simulated hours at one check per {}",
        humantime::format_duration(REAL_INTERVAL)
    );
    println!("{:<34} {:>10} {:>12}", "", "total", "per hour");
    for (label, n) in [
        ("radio crashes", get(&counters.crashes)),
        ("flash writes", get(&counters.flash_writes)),
        ("add_contact received", get(&counters.add_contacts)),
        ("connections", get(&counters.connections)),
        ("new nodes refused (2.8)", get(&counters.refused_nodes)),
        (
            "LoRa restarts (releases < 2.8)",
            get(&counters.lora_restarts),
        ),
        ("evictions", sim.evictions()),
    ] {
        println!("{label:<34} {n:>10} {:>12.1}", per_hour(n));
    }
    println!(
        "protected entries: max {max_protected} of {capacity}, at the end {} ({} favourite, {} verified)",
        protected.total, protected.favourite, protected.verified
    );
    println!("sync runs reported: {history}");
    Ok(())
}
