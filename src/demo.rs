//! `keysync --demo`: the simulated radio in-process on a free loopback port, running
//! `assets/demo.toml`, and a temporary key store that already knows some keys the radio lacks —
//! with short timings, so that everything the monitor shows happens within two minutes.

use std::time::{Duration, SystemTime};

use crate::engine::EngineConfig;
use crate::engine::LinkConfig;
use crate::engine::Store;
use crate::engine::SyncSettings;
use crate::engine::{NodeSeen, Source};
use crate::sim::population::Population;
use crate::sim::{Scenario, SimConfig, SimHandle};

const SEED: u64 = 7;
/// Nodes on the simulated mesh (all in the radio's NodeDB at start).
const MESH_NODES: usize = 40;
/// Nodes keysync learned earlier that the radio does not hold: the startup sync pushes them.
const REMEMBERED: usize = 8;
/// Of those, pinned by the operator.
const PINNED: usize = 2;

/// A running demo: keep it alive as long as the monitor runs; dropping it removes the store.
#[derive(Debug)]
pub struct Demo {
    pub sim: SimHandle,
    pub config: EngineConfig,
    /// The timings, for the header.
    pub label: String,
    _dir: tempfile::TempDir,
}

impl Demo {
    /// Starts the simulated radio and prepares the store; returns the store to hand the engine.
    pub fn start() -> anyhow::Result<(Self, Store)> {
        let scenario = Scenario::parse(include_str!("../assets/demo.toml"))
            .map_err(|e| anyhow::anyhow!("the built-in demo scenario is invalid: {e}"))?;
        let sim = SimHandle::start(SimConfig {
            listen: "127.0.0.1:0".parse()?,
            seed: SEED,
            // A RAK4631 on 2.7.26: 80 nodes, the hardware tells keysync so.
            profile: crate::sim::Profile::new(
                "2.7.26",
                crate::sim::Hw::Nrf52,
                crate::sim::SimRole::Client,
            )?,
            // The last few nodes are on the mesh but not in the radio: keysync knows them.
            nodes: MESH_NODES + REMEMBERED,
            in_radio: Some(MESH_NODES),
            announce_every: Some(Duration::from_secs(20)),
            scenario,
            ..SimConfig::default()
        })?;
        let dir = tempfile::Builder::new().prefix("keysync-demo-").tempdir()?;
        let db = dir.path().join("keysync.db");
        let mut store = Store::open(&db)?;
        let mut population = Population::new(SEED);
        let _own = population.own_node();
        // The radio holds the mesh's first nodes; the last few it does not, but keysync
        // remembers them — two of them pinned and one a DM partner, so the startup sync pushes
        // those.
        let now = SystemTime::now();
        for _ in 0..MESH_NODES {
            population.next_node();
        }
        for i in 0..REMEMBERED {
            let node = population.next_node();
            store.learn(&NodeSeen::from_node_info(&node, Source::Mesh), now)?;
            if i < PINNED {
                store.set_pinned(node.num, true)?;
            } else if i == PINNED {
                // A DM partner: its key goes to the radio with the pinned ones.
                store.note_dm(node.num, now)?;
            }
        }
        let heartbeat = Duration::from_secs(2);
        let interval = Duration::from_secs(10);
        let ttl = Duration::from_secs(30);
        let config = EngineConfig {
            link: LinkConfig {
                heartbeat,
                ..LinkConfig::new(sim.addr().to_string())
            },
            sync_interval: interval,
            sync: SyncSettings {
                cache_ttl: ttl,
                push_gap: Duration::from_millis(100),
                max_pushes: 32,
                ..SyncSettings::default()
            },
            db_path: db,
            proxy: None,
            mqtt: None,
        };
        let label = "heartbeat 2s".to_string();
        Ok((
            Self {
                sim,
                config,
                label,
                _dir: dir,
            },
            store,
        ))
    }
}
