//! A fixed engine snapshot for UI tests: a pending key, every sync outcome, a link timeline
//! with drops, at a fixed `now`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keysync::engine::{CloseCause, LinkEvent, LinkState, LinkStatus, RadioInfo};
use keysync::engine::{NodeRecord, SyncCache};
use keysync::engine::{NodeView, RadioKey, Running, Snapshot, SyncStatus, Traffic};
use keysync::engine::{Outcome, SyncReport, Trigger};

/// 2027-01-15T08:00:00Z.
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

pub fn ago(secs: u64) -> SystemTime {
    now() - Duration::from_secs(secs)
}

fn node(
    num: u32,
    name: &str,
    key: u8,
    pending: Option<u8>,
    radio: RadioKey,
    seen: u64,
    pushes: u32,
) -> NodeView {
    NodeView {
        record: NodeRecord {
            num,
            long_name: name.into(),
            short_name: name.chars().take(4).collect(),
            hw_model: 9,
            role: 0,
            first_seen: ago(86_400),
            last_seen: ago(seen),
            pushes,
            last_pushed: None,
            trusted: Some([key; 32]),
            pending: pending.map(|p| [p; 32]),
            rejected: 0,
            pinned: false,
            our_favourite: false,
            removed: false,
            source: Some(keysync::engine::Source::Mesh),
            last_dm: None,
            flags: keysync::engine::UserFlags::default(),
            pending_since: pending.map(|_| ago(26 * 3600)),
        },
        radio,
    }
}

pub fn report(
    outcome: Outcome,
    trigger: Trigger,
    secs_ago: u64,
    pushed: u32,
    frames: u32,
    reason: &str,
) -> SyncReport {
    SyncReport {
        reason: reason.into(),
        fingerprint: [0x1f; 32],
        known: 48,
        in_radio: 48 - pushed,
        pushed,
        conflicts: 1,
        stored_only: 3,
        slots: 40,
        protected_after: 12,
        held_after: 60,
        plan: Some("slots 40 of capacity 100".into()),
        frames_sent: frames,
        duration: Duration::from_millis(740),
        error: (outcome == Outcome::Failed)
            .then(|| "link lost while pushing: closed by radio".to_string()),
        outcome,
        ..SyncReport::new(trigger, ago(secs_ago))
    }
}

fn event(secs_ago: u64, state: LinkState) -> LinkEvent {
    LinkEvent {
        at: ago(secs_ago),
        state,
    }
}

/// Waiting 800 ms before attempt `attempt`, under a ceiling of `ceiling` seconds.
fn backoff(secs_ago: u64, attempt: u32, ceiling: u64) -> LinkEvent {
    event(
        secs_ago,
        LinkState::Backoff {
            attempt,
            ceiling: Duration::from_secs(ceiling),
            delay: Duration::from_millis(800),
        },
    )
}

/// The link's history: up, a drop 25 s after a pushing sync, a stall, up again.
pub fn timeline() -> VecDeque<LinkEvent> {
    [
        event(1500, LinkState::Connecting { attempt: 1 }),
        event(1499, LinkState::Configuring),
        event(1499, LinkState::Up),
        event(1000, LinkState::Closed(CloseCause::ClosedByRadio)),
        backoff(1000, 1, 1),
        event(999, LinkState::Connecting { attempt: 2 }),
        event(990, LinkState::Closed(CloseCause::Refused)),
        backoff(990, 2, 2),
        event(960, LinkState::Connecting { attempt: 3 }),
        event(959, LinkState::Configuring),
        event(959, LinkState::Up),
        event(400, LinkState::Stalled),
        event(400, LinkState::Closed(CloseCause::Stalled)),
        backoff(400, 1, 1),
        event(399, LinkState::Connecting { attempt: 2 }),
        event(398, LinkState::Configuring),
        event(398, LinkState::Up),
    ]
    .into_iter()
    .collect()
}

/// Every outcome, oldest first; the last run a skipped check.
pub fn history() -> VecDeque<SyncReport> {
    [
        report(Outcome::Forced, Trigger::Startup, 1490, 8, 8, "forced: startup; node list from the handshake"),
        report(Outcome::Synced, Trigger::Check, 1025, 3, 4, "stored keys changed since the last full sync 5m00s ago (fingerprint 0a40692b → 1f1f1f1f)"),
        report(Outcome::Failed, Trigger::Check, 1002, 1, 2, "last full sync 30m00s ago ≥ TTL 30m00s"),
        report(Outcome::Forced, Trigger::Reconnect, 955, 40, 40, "forced: reconnect; node list from the handshake"),
        report(Outcome::Skipped, Trigger::Check, 655, 0, 0, "fingerprint unchanged, last full sync 5m00s ago < TTL 30m00s"),
        report(Outcome::Forced, Trigger::Reconnect, 396, 0, 0, "forced: reconnect; node list from the handshake"),
        report(Outcome::Skipped, Trigger::Check, 96, 0, 0, "fingerprint unchanged, last full sync 5m00s ago < TTL 30m00s"),
    ]
    .into_iter()
    .collect()
}

pub fn snapshot() -> Snapshot {
    let history = history();
    let nodes = vec![
        node(
            0x0bbd_bba9,
            "🦊 Fox Den 3",
            3,
            Some(4),
            RadioKey::InRadio,
            4,
            0,
        ),
        node(
            0x6b30_d848,
            "Mill Relay 44",
            5,
            None,
            RadioKey::Missing,
            120,
            2,
        ),
        node(
            0x7e3b_f686,
            "Cedar Base 41",
            6,
            None,
            RadioKey::Pushed,
            8,
            1,
        ),
        node(
            0xcd64_fdf0,
            "ÔÉ Hilltop 10",
            7,
            None,
            RadioKey::InRadio,
            3600,
            0,
        ),
        node(
            0x1ff2_471e,
            "Harbor Camp 06",
            8,
            None,
            RadioKey::Differs,
            86_000,
            3,
        ),
        node(
            0x0000_00a1,
            "Beacon Node 05",
            9,
            None,
            RadioKey::InRadio,
            30,
            0,
        ),
    ];
    Snapshot {
        link: LinkStatus {
            host: "192.168.1.40:4403".into(),
            state: LinkState::Up,
            since: ago(398),
            timeline: timeline(),
            changes: 17,
            sessions: 3,
            last_cause: Some(CloseCause::Stalled),
            radio: Some(RadioInfo {
                my_node_num: 0xd35c_e848,
                firmware: "2.7.15.567b8ea".into(),
                long_name: "Gateway".into(),
                nodes_in_db: 47,
            }),
        },
        traffic: Traffic::default(),
        sync: SyncStatus {
            last: history.back().cloned(),
            history,
            running: None,
            next_check: Some(now() + Duration::from_secs(204)),
            cache: Some(SyncCache {
                fingerprint: [0x1f; 32],
                synced_at: ago(396),
            }),
            interval: Duration::from_secs(300),
            ttl: Duration::from_secs(1800),
            totals: keysync::engine::SyncTotals::default(),
            flash_writes_last_hour: Some(3),
            flash_budget: 60,
            release_budget: 4,
            capacity: Some(80),
        },
        nodes: Arc::new(nodes),
        store_error: None,
        db_path: PathBuf::from("/home/pi/.local/share/keysync/keysync.db"),
        notice: None,
        proxy_addr: None,
        clients: Vec::new(),
        mqtt: None,
    }
}

/// The same snapshot with a sync in progress.
pub fn running() -> Snapshot {
    let mut s = snapshot();
    s.sync.running = Some(Running {
        trigger: Trigger::Operator,
        since: ago(2),
    });
    s
}
