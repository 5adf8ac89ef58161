//! `/status`: the engine's snapshot as JSON for scripts. A dedicated shape, not the snapshot's
//! own types: what a script may rely on is written here once, times are RFC 3339, and nothing
//! of the radio's configuration (its private key among it) is in the snapshot or here. Names
//! that came from the radio are stripped of control characters.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use crate::commands::KeyRow;
use crate::engine::CloseCause;
use crate::engine::Histogram;
use crate::engine::{NodeView, RadioKey, Snapshot};
use crate::engine::{Outcome, SyncReport, Trigger};
use crate::engine::{node_id, printable};

#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub at: String,
    pub link: Link,
    pub sync: Sync,
    pub keys: Keys,
    /// Stored nodes; the list itself only with `?nodes=N` (see [`Page`]).
    pub nodes_total: usize,
    pub proxy: Option<Proxy>,
    pub store_error: Option<String>,
    pub notice: Option<Notice>,
    pub db_path: String,
}

#[derive(Debug, Serialize)]
pub struct Link {
    pub host: String,
    /// One word: connecting, configuring, up, stalled, closed, backoff, contended, stopped.
    pub state: &'static str,
    pub detail: String,
    pub since: String,
    pub up_seconds: f64,
    pub sessions: u64,
    pub last_cause: Option<&'static str>,
    pub radio: Option<Radio>,
    pub frames_in: u64,
    pub frames_out: u64,
    pub heartbeats_out: u64,
    pub garbage_bytes: u64,
    pub undecodable: u64,
    /// Connections that ended and were retried, by cause.
    pub reconnects: BTreeMap<&'static str, u64>,
    pub heartbeat_rtt: Durations,
    pub config_download: Durations,
}

#[derive(Debug, Serialize)]
pub struct Radio {
    pub node_id: String,
    pub long_name: String,
    pub firmware: String,
    pub nodes_in_db: usize,
    pub capacity: Option<u32>,
}

/// A histogram in brief.
#[derive(Debug, Serialize)]
pub struct Durations {
    pub count: u64,
    pub mean_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Sync {
    pub running: Option<Running>,
    pub next_check: Option<String>,
    pub interval_seconds: f64,
    pub cache_ttl_seconds: f64,
    pub last_full_sync: Option<String>,
    pub last: Option<Report>,
    /// Runs since start: trigger → outcome → count.
    pub runs: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    pub pushes: u64,
    pub flash_writes: u64,
    pub flash_writes_last_hour: Option<u64>,
    pub flash_budget_per_hour: u32,
}

#[derive(Debug, Serialize)]
pub struct Running {
    pub trigger: &'static str,
    pub since: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub started_at: String,
    pub trigger: &'static str,
    pub outcome: &'static str,
    pub summary: String,
    pub known: u32,
    pub in_radio: u32,
    pub pushed: u32,
    pub released: u32,
    pub conflicts: u32,
    pub deferred: u32,
    pub stored_only: u32,
    pub still_missing: u32,
    pub duration_seconds: f64,
    pub error: Option<String>,
    pub slots: u32,
    pub protected_after: u32,
}

#[derive(Debug, Serialize)]
pub struct Keys {
    /// Stored nodes by key state (trusted, pending, rejected, retired).
    pub by_state: BTreeMap<&'static str, u64>,
    /// Stored nodes by where their key stands on the radio.
    pub on_radio: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize)]
pub struct Node {
    #[serde(flatten)]
    pub row: KeyRow,
    pub radio: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Proxy {
    pub listen: String,
    pub clients: Vec<Client>,
}

#[derive(Debug, Serialize)]
pub struct Client {
    pub addr: String,
    pub since: String,
    pub frames_from_client: u64,
    pub frames_to_client: u64,
    pub dropped: u64,
    pub last_activity: String,
}

#[derive(Debug, Serialize)]
pub struct Notice {
    pub at: String,
    pub text: String,
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn durations(h: &Histogram) -> Durations {
    #[expect(
        clippy::cast_precision_loss,
        reason = "a mean for people; counts past 2^53 are out of reach"
    )]
    let mean_seconds = (h.count > 0).then(|| h.sum_seconds / h.count as f64);
    Durations {
        count: h.count,
        mean_seconds,
    }
}

impl Status {
    pub fn of(s: &Snapshot, now: SystemTime) -> Self {
        let link = Link::of(s, now);
        let totals = &s.sync.totals;
        let sync = Sync {
            running: s.sync.running.map(|r| Running {
                trigger: r.trigger.id(),
                since: time(r.since),
            }),
            next_check: s.sync.next_check.map(time),
            interval_seconds: s.sync.interval.as_secs_f64(),
            cache_ttl_seconds: s.sync.ttl.as_secs_f64(),
            last_full_sync: s.sync.cache.map(|c| time(c.synced_at)),
            last: s.sync.last.as_ref().map(report),
            runs: Trigger::ALL
                .iter()
                .map(|t| {
                    let by_outcome = Outcome::ALL
                        .iter()
                        .map(|o| (o.label(), totals.runs(*t, *o)))
                        .collect();
                    (t.id(), by_outcome)
                })
                .collect(),
            pushes: totals.pushes,
            flash_writes: totals.flash_writes(),
            flash_writes_last_hour: s.sync.flash_writes_last_hour,
            flash_budget_per_hour: s.sync.flash_budget,
        };
        let mut by_state = BTreeMap::new();
        let mut on_radio: BTreeMap<&'static str, u64> =
            RadioKey::ALL.iter().map(|k| (k.id(), 0)).collect();
        for n in s.nodes.iter() {
            if let Some(state) = n.record.state() {
                *by_state.entry(state.as_str()).or_default() += 1;
            }
            *on_radio.entry(n.radio.id()).or_default() += 1;
        }
        Self {
            version: env!("CARGO_PKG_VERSION"),
            at: time(now),
            link,
            sync,
            keys: Keys { by_state, on_radio },
            nodes_total: s.nodes.len(),
            proxy: s.proxy_addr.map(|addr| Proxy {
                listen: addr.to_string(),
                clients: s
                    .clients
                    .iter()
                    .map(|c| Client {
                        addr: c.addr.to_string(),
                        since: time(c.since),
                        frames_from_client: c.frames_in,
                        frames_to_client: c.frames_out,
                        dropped: c.dropped,
                        last_activity: time(c.last_activity),
                    })
                    .collect(),
            }),
            store_error: s.store_error.as_ref().map(ToString::to_string),
            notice: s.notice.as_ref().map(|(at, text)| Notice {
                at: time(*at),
                text: printable(text).into_owned(),
            }),
            db_path: s.db_path.display().to_string(),
        }
    }
}

impl Node {
    pub fn of(n: &NodeView) -> Self {
        let mut row = KeyRow::from(&n.record);
        row.long_name = printable(&row.long_name).into_owned();
        row.short_name = printable(&row.short_name).into_owned();
        Self {
            row,
            radio: n.radio.id(),
        }
    }
}

/// Which stored nodes a `/status?nodes=N&after=NUM` lists: at most `limit`, in node number
/// order, those numbered above `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: usize,
    pub after: Option<u32>,
}

impl Page {
    /// The page a query string asks for: `None` without `nodes=`, an error naming the bad
    /// parameter.
    pub fn of_query(query: Option<&str>) -> Result<Option<Self>, String> {
        let (mut limit, mut after) = (None, None);
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "nodes" => {
                    limit = Some(value.parse::<usize>().map_err(|_| {
                        format!(
                            "nodes={}: a count of nodes, e.g. nodes=100",
                            printable(value)
                        )
                    })?);
                }
                "after" => {
                    let num = match value
                        .strip_prefix('!')
                        .or_else(|| value.strip_prefix("%21"))
                    {
                        Some(hex) => u32::from_str_radix(hex, 16).ok(),
                        None => value.parse::<u32>().ok(),
                    };
                    after = Some(num.ok_or_else(|| {
                        format!("after={}: a node number or !hex id", printable(value))
                    })?);
                }
                other => return Err(format!("unknown parameter {}", printable(other))),
            }
        }
        match (limit, after) {
            (Some(limit), after) => Ok(Some(Self { limit, after })),
            (None, Some(_)) => Err("after= needs nodes=N".into()),
            (None, None) => Ok(None),
        }
    }

    /// The index range of `nodes` (sorted by number, as the store lists them) on this page,
    /// and the number to ask `after=` for the next page, when there is one.
    pub fn range(self, nodes: &[NodeView]) -> (std::ops::Range<usize>, Option<u32>) {
        let start = self
            .after
            .map_or(0, |a| nodes.partition_point(|n| n.record.num <= a));
        let end = start.saturating_add(self.limit).min(nodes.len());
        let next = (end < nodes.len() && end > start).then(|| nodes[end - 1].record.num);
        (start..end, next)
    }
}

impl Link {
    fn of(s: &Snapshot, now: SystemTime) -> Self {
        let t = &s.traffic;
        Self {
            host: s.link.host.clone(),
            state: s.link.state.label(),
            detail: printable(&s.link.state.to_string()).into_owned(),
            since: time(s.link.since),
            up_seconds: if s.link.state.is_up() {
                now.duration_since(s.link.since)
                    .unwrap_or_default()
                    .as_secs_f64()
            } else {
                0.0
            },
            sessions: s.link.sessions,
            last_cause: s.link.last_cause.as_ref().map(CloseCause::id),
            radio: s.link.radio.as_ref().map(|r| Radio {
                node_id: node_id(r.my_node_num),
                long_name: printable(&r.long_name).into_owned(),
                firmware: printable(&r.firmware).into_owned(),
                nodes_in_db: r.nodes_in_db,
                capacity: s.sync.capacity,
            }),
            frames_in: t.frames_in,
            frames_out: t.frames_out,
            heartbeats_out: t.heartbeats_out,
            garbage_bytes: t.garbage_bytes,
            undecodable: t.undecodable,
            reconnects: CloseCause::IDS
                .iter()
                .copied()
                .zip(t.closes)
                .filter(|(id, _)| *id != CloseCause::Shutdown.id())
                .collect(),
            heartbeat_rtt: durations(&t.heartbeat_rtt),
            config_download: durations(&t.config_download),
        }
    }
}

fn report(r: &SyncReport) -> Report {
    Report {
        started_at: time(r.started_at),
        trigger: r.trigger.id(),
        outcome: r.outcome.label(),
        summary: printable(&r.summary()).into_owned(),
        known: r.known,
        in_radio: r.in_radio,
        pushed: r.pushed,
        released: r.released,
        conflicts: r.conflicts,
        deferred: r.deferred,
        stored_only: r.stored_only,
        still_missing: r.still_missing,
        duration_seconds: r.duration.as_secs_f64(),
        error: r.error.as_deref().map(|e| printable(e).into_owned()),
        slots: r.slots,
        protected_after: r.protected_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(nums: &[u32]) -> Vec<NodeView> {
        nums.iter()
            .map(|&num| NodeView {
                record: crate::engine::NodeRecord {
                    num,
                    long_name: String::new(),
                    short_name: String::new(),
                    hw_model: 0,
                    role: 0,
                    first_seen: SystemTime::UNIX_EPOCH,
                    last_seen: SystemTime::UNIX_EPOCH,
                    pushes: 0,
                    last_pushed: None,
                    trusted: None,
                    pending: None,
                    rejected: 0,
                    pinned: false,
                    our_favourite: false,
                    removed: false,
                    source: None,
                    last_dm: None,
                    flags: crate::engine::UserFlags::default(),
                    pending_since: None,
                },
                radio: RadioKey::Unknown,
            })
            .collect()
    }

    #[test]
    fn a_page_is_read_from_the_query_and_bad_parameters_are_named() {
        assert_eq!(Page::of_query(None), Ok(None));
        assert_eq!(Page::of_query(Some("")), Ok(None));
        assert_eq!(
            Page::of_query(Some("nodes=50&after=!0000beef")),
            Ok(Some(Page {
                limit: 50,
                after: Some(0xbeef)
            }))
        );
        assert_eq!(
            Page::of_query(Some("after=48879&nodes=5")),
            Ok(Some(Page {
                limit: 5,
                after: Some(48879)
            }))
        );
        assert!(Page::of_query(Some("nodes=-1")).is_err());
        assert!(Page::of_query(Some("after=1")).is_err());
        let err = Page::of_query(Some("nodes=1&x\u{1b}[2J=1")).unwrap_err();
        assert_eq!(err, "unknown parameter x[2J");
    }

    #[test]
    fn pages_follow_node_numbers_and_say_where_the_next_one_starts() {
        let list = nodes(&[2, 5, 9, 12, 40]);
        let page = |limit, after| Page { limit, after }.range(&list);
        assert_eq!(page(2, None), (0..2, Some(5)));
        assert_eq!(page(2, Some(5)), (2..4, Some(12)));
        assert_eq!(page(2, Some(12)), (4..5, None));
        assert_eq!(
            page(2, Some(6)),
            (2..4, Some(12)),
            "after a number not stored"
        );
        assert_eq!(page(10, Some(40)), (5..5, None));
        assert_eq!(page(0, None), (0..0, None));
        assert_eq!(page(usize::MAX, None), (0..5, None));
    }
}
