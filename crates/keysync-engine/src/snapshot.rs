//! What the views see: the owned snapshot the engine publishes through a `watch` on every
//! change, and the in-place patches that keep a large node list cheap to refresh.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crate::config::EngineConfig;
use crate::link::{self, LinkCounters, LinkStatus};
use crate::plan::Mirror;
use crate::radio::{NodeSeen, PublicKey};
use crate::stats::{Histogram, SyncTotals};
use crate::store::{NodeRecord, SyncCache};
use crate::sync::{self, SyncReport, Trigger};
use crate::{mqtt, radio};

/// How many sync reports the snapshot keeps.
pub const HISTORY_LEN: usize = 100;

/// Frame counts since start, and how the link's connections ended and how fast it answered.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    pub frames_in: u64,
    pub frames_out: u64,
    pub heartbeats_out: u64,
    pub garbage_bytes: u64,
    pub undecodable: u64,
    /// Connections that ended, by [`link::CloseCause::index`].
    pub closes: [u64; link::CloseCause::IDS.len()],
    pub heartbeat_rtt: Histogram,
    pub config_download: Histogram,
}

impl Traffic {
    pub(crate) fn read(c: &LinkCounters) -> Self {
        Self {
            frames_in: c.frames_in.load(Ordering::Relaxed),
            frames_out: c.frames_out.load(Ordering::Relaxed),
            heartbeats_out: c.heartbeats_out.load(Ordering::Relaxed),
            garbage_bytes: c.garbage_bytes.load(Ordering::Relaxed),
            undecodable: c.undecodable.load(Ordering::Relaxed),
            closes: std::array::from_fn(|i| c.closes[i].load(Ordering::Relaxed)),
            heartbeat_rtt: c.heartbeat_rtt.read(),
            config_download: c.config_download.read(),
        }
    }
}

/// Where a stored key stands on the radio, as of the last node list keysync saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RadioKey {
    /// No node list seen yet.
    Unknown,
    InRadio,
    /// Stored, not on the radio: a normal state for keys outside the working set.
    Missing,
    /// The radio holds another key for the node.
    Differs,
    /// Pushed by the last run; confirmed by the next node list.
    Pushed,
    /// The radio's operator ignored the node: never pushed.
    Ignored,
    /// Someone removed it from the radio: not pushed until heard again.
    Removed,
    /// The radio lost its push: backing off.
    CannotKeep,
}

impl RadioKey {
    pub const ALL: [Self; 8] = [
        Self::Unknown,
        Self::InRadio,
        Self::Missing,
        Self::Differs,
        Self::Pushed,
        Self::Ignored,
        Self::Removed,
        Self::CannotKeep,
    ];

    /// One snake_case word, for machines (metrics labels, JSON).
    pub fn id(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::InRadio => "in_radio",
            Self::Missing => "missing",
            Self::Differs => "differs",
            Self::Pushed => "pushed",
            Self::Ignored => "ignored",
            Self::Removed => "removed",
            Self::CannotKeep => "cannot_keep",
        }
    }
}

/// A stored node with its standing on the radio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub record: NodeRecord,
    pub radio: RadioKey,
}

/// A sync in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    pub trigger: Trigger,
    pub since: SystemTime,
}

/// The sync side of the snapshot.
#[derive(Debug, Clone)]
pub struct SyncStatus {
    pub last: Option<SyncReport>,
    /// Oldest first, at most [`HISTORY_LEN`].
    pub history: VecDeque<SyncReport>,
    pub running: Option<Running>,
    pub next_check: Option<SystemTime>,
    pub cache: Option<SyncCache>,
    pub interval: Duration,
    pub ttl: Duration,
    /// Runs, durations and flash writes since start.
    pub totals: SyncTotals,
    /// Flash writes keysync caused in the last hour (the store's record, so across restarts),
    /// once counted.
    pub flash_writes_last_hour: Option<u64>,
    /// `--max-flash-writes`: the hourly budget.
    pub flash_budget: u32,
    /// `--max-releases`: slots given back per hour, on firmware where each restarts the LoRa
    /// chip.
    pub release_budget: u32,
    /// The radio's NodeDB capacity, as of the last handshake.
    pub capacity: Option<u32>,
}

/// Everything a view needs, owned, published on every change.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub link: LinkStatus,
    pub traffic: Traffic,
    pub sync: SyncStatus,
    pub nodes: Arc<Vec<NodeView>>,
    /// Why the last store call failed (locked, disk full...), until one succeeds again.
    pub store_error: Option<sync::StoreCallError>,
    pub db_path: PathBuf,
    /// The answer to the operator's last command, with when.
    pub notice: Option<(SystemTime, String)>,
    /// Where downstream clients connect, in proxy mode.
    pub proxy_addr: Option<std::net::SocketAddr>,
    /// Downstream clients connected through the proxy.
    pub clients: Vec<crate::proxy::ClientView>,
    /// The MQTT broker connection, with `--mqtt`.
    pub mqtt: Option<mqtt::MqttStatus>,
}

impl Snapshot {
    /// What the views see before anything happened: the link as it starts, no run yet, the
    /// first check an interval away.
    pub(crate) fn initial(
        config: &EngineConfig,
        link: LinkStatus,
        counters: &LinkCounters,
        proxy_addr: Option<std::net::SocketAddr>,
    ) -> Self {
        Self {
            link,
            traffic: Traffic::read(counters),
            sync: SyncStatus {
                last: None,
                history: VecDeque::new(),
                running: None,
                next_check: Some(SystemTime::now() + config.sync_interval),
                cache: None,
                interval: config.sync_interval,
                ttl: config.sync.cache_ttl,
                totals: SyncTotals::default(),
                flash_writes_last_hour: None,
                flash_budget: config.sync.max_flash_writes,
                release_budget: config.sync.max_releases,
                capacity: None,
            },
            nodes: Arc::new(Vec::new()),
            store_error: None,
            db_path: config.db_path.clone(),
            notice: None,
            proxy_addr,
            clients: Vec::new(),
            mqtt: None,
        }
    }
}

/// What hearing a stored node changes in its row, as the store applied it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ViewPatch {
    last_seen: Option<SystemTime>,
    /// A packet from the node clears "removed from the radio" ([`Store::note_heard`]).
    unremoved: bool,
    long_name: Option<String>,
    short_name: Option<String>,
    hw_model: Option<i32>,
    role: Option<i32>,
}

impl ViewPatch {
    /// A packet from the node: last seen, and no longer removed.
    pub(crate) fn heard(at: SystemTime) -> Self {
        Self {
            last_seen: Some(at),
            unremoved: true,
            ..Self::default()
        }
    }

    /// A NodeInfo with the trusted key, a known other key or none: names only where the
    /// message carries them (as [`Store::learn`] keeps them).
    pub(crate) fn seen(seen: &NodeSeen, at: SystemTime) -> Self {
        let some = |s: &str, max| (!s.is_empty()).then(|| radio::truncate_utf8(s, max).to_string());
        Self {
            // A node only the broker told of was not heard here.
            last_seen: seen.source.heard_here().then_some(at),
            unremoved: false,
            role: Some(seen.role),
            long_name: some(&seen.long_name, radio::LONG_NAME_MAX),
            short_name: some(&seen.short_name, radio::SHORT_NAME_MAX),
            hw_model: (seen.hw_model != 0).then_some(seen.hw_model),
        }
    }

    pub(crate) fn merge(&mut self, later: Self) {
        self.last_seen = self.last_seen.max(later.last_seen);
        self.unremoved |= later.unremoved;
        self.long_name = later.long_name.or(self.long_name.take());
        self.short_name = later.short_name.or(self.short_name.take());
        self.hw_model = later.hw_model.or(self.hw_model);
        self.role = later.role.or(self.role);
    }

    pub(crate) fn apply(self, record: &mut NodeRecord) {
        if let Some(at) = self.last_seen {
            record.last_seen = record.last_seen.max(at);
        }
        if self.unremoved {
            record.removed = false;
        }
        if let Some(name) = self.long_name {
            record.long_name = name;
        }
        if let Some(name) = self.short_name {
            record.short_name = name;
        }
        if let Some(hw) = self.hw_model {
            record.hw_model = hw;
        }
        if let Some(role) = self.role {
            record.role = role;
        }
    }
}

pub(crate) fn radio_key(
    record: &NodeRecord,
    mirror: Option<&Mirror>,
    pushed: &[(u32, PublicKey)],
    backing_off: bool,
) -> RadioKey {
    let on_radio = mirror.and_then(|m| m.get(&record.num));
    if on_radio.is_some_and(|n| n.ignored) {
        return RadioKey::Ignored;
    }
    if record.removed {
        return RadioKey::Removed;
    }
    if backing_off {
        return RadioKey::CannotKeep;
    }
    if pushed.iter().any(|(num, _)| *num == record.num) {
        return RadioKey::Pushed;
    }
    let Some(mirror) = mirror else {
        return RadioKey::Unknown;
    };
    match (mirror.get(&record.num).and_then(|n| n.key), record.trusted) {
        (Some(held), Some(trusted)) if held == trusted => RadioKey::InRadio,
        (Some(_), _) => RadioKey::Differs,
        _ => RadioKey::Missing,
    }
}
