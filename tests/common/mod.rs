//! Shared set-up for integration tests: a simulated radio on a free loopback port and a link
//! with short timings, plus bounded waits on observable state.

#![allow(dead_code)]

use std::time::Duration;

use keysync::engine::{BackoffPolicy, LinkConfig, LinkState, LinkStatus};
use keysync::sim::{SimConfig, SimHandle};
use tokio::sync::watch;

/// Upper bound for any wait on an event; generous for a loaded 2-core CI machine.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn sim_config(nodes: usize) -> SimConfig {
    SimConfig {
        listen: "127.0.0.1:0".parse().expect("loopback"),
        nodes,
        announce_every: None,
        ..SimConfig::default()
    }
}

pub fn start_sim(config: SimConfig) -> SimHandle {
    SimHandle::start(config).expect("sim binds a loopback port")
}

/// Short timings so that faults play out in a second or two.
pub fn fast_link(sim: &SimHandle) -> LinkConfig {
    fast_link_at(endpoint_of(sim))
}

/// Where `sim` is: its serial port when it is on one, else its TCP address.
pub fn endpoint_of(sim: &SimHandle) -> keysync::engine::Endpoint {
    match sim.serial_path() {
        Some(path) => keysync::engine::Endpoint::Serial {
            path: path.to_owned(),
            baud: keysync::engine::DEFAULT_BAUD,
        },
        None => sim.addr().to_string().into(),
    }
}

/// [`fast_link`] to a radio at `host`.
pub fn fast_link_to(host: &str) -> LinkConfig {
    fast_link_at(host.into())
}

/// [`fast_link`] to a radio at `endpoint` (TCP or serial).
pub fn fast_link_at(endpoint: keysync::engine::Endpoint) -> LinkConfig {
    LinkConfig {
        endpoint,
        connect_timeout: Duration::from_secs(2),
        heartbeat: Duration::from_millis(200),
        config_timeout: Duration::from_secs(5),
        backoff: BackoffPolicy {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(400),
            reset_after: Duration::from_secs(60),
        },
        takeover_backoff: Duration::from_secs(3),
    }
}

/// Follows the link's state changes in order, so that no transient state is missed.
pub struct StateWatch {
    pub status: watch::Receiver<LinkStatus>,
    seen: u64,
}

impl StateWatch {
    pub fn new(status: watch::Receiver<LinkStatus>) -> Self {
        Self { status, seen: 0 }
    }

    /// Waits for the next state change (after the last one matched) that satisfies `pred`;
    /// panics naming `what` after [`WAIT`].
    pub async fn next(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&LinkState) -> bool,
    ) -> LinkState {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let hit = {
                let s = self.status.borrow_and_update();
                s.changes_since(self.seen)
                    .find(|(_, e)| pred(&e.state))
                    .map(|(n, e)| (n, e.state.clone()))
            };
            if let Some((n, state)) = hit {
                self.seen = n;
                return state;
            }
            let changed = tokio::time::timeout_at(deadline, self.status.changed()).await;
            let Ok(changed) = changed else {
                let timeline: Vec<String> = states(&self.status)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                panic!("timed out waiting for {what}; timeline: {timeline:?}");
            };
            assert!(changed.is_ok(), "link ended while waiting for {what}");
        }
    }

    pub fn now(&self) -> LinkStatus {
        self.status.borrow().clone()
    }
}

/// Waits until `cond` holds, polling every few milliseconds; panics naming `what`.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn states(status: &watch::Receiver<LinkStatus>) -> Vec<LinkState> {
    status
        .borrow()
        .timeline
        .iter()
        .map(|e| e.state.clone())
        .collect()
}

/// The radio hears `n` new nodes without their NodeInfo (a position packet each): entries it
/// holds that are not protected and whose keys keysync does not know. A radio holds the mesh it
/// hears; the invariant lets keysync protect at most half of what it holds, so a test that
/// pushes many keys gives the radio a mesh first.
pub async fn heard_keyless(sim: &SimHandle, n: usize) {
    sim.inject(keysync::sim::Fault::NewNodes {
        count: n,
        portnum: Some(meshtastic::protobufs::PortNum::PositionApp),
    })
    .await;
}

/// A store in a temporary directory, optionally seeded with nodes as if heard on the mesh.
pub fn seeded_store(
    dir: &tempfile::TempDir,
    nodes: &[meshtastic::protobufs::NodeInfo],
) -> (std::path::PathBuf, keysync::engine::Store) {
    use keysync::engine::{NodeSeen, Source};
    let path = dir.path().join("keysync.db");
    let mut store = keysync::engine::Store::open(&path).expect("store opens");
    for n in nodes {
        let seen = NodeSeen::from_node_info(n, Source::Mesh);
        store
            .learn(&seen, std::time::SystemTime::now())
            .expect("learns");
    }
    (path, store)
}

/// The first `n` nodes the sim generates for `seed` (after its own node).
pub fn population(seed: u64, n: usize) -> Vec<meshtastic::protobufs::NodeInfo> {
    let mut p = keysync::sim::population::Population::new(seed);
    let _own = p.own_node();
    (0..n).map(|_| p.next_node()).collect()
}

/// Engine settings with short timings for tests.
pub fn fast_engine(
    sim: &SimHandle,
    db: std::path::PathBuf,
    interval: Duration,
    ttl: Duration,
) -> keysync::engine::EngineConfig {
    let mut config = fast_engine_to(&sim.addr().to_string(), db, interval, ttl);
    config.link = fast_link(sim);
    config
}

/// [`fast_engine`] against a radio at `host`.
pub fn fast_engine_to(
    host: &str,
    db: std::path::PathBuf,
    interval: Duration,
    ttl: Duration,
) -> keysync::engine::EngineConfig {
    keysync::engine::EngineConfig {
        link: fast_link_to(host),
        sync_interval: interval,
        sync: keysync::engine::SyncSettings {
            cache_ttl: ttl,
            push_gap: Duration::from_millis(10),
            max_pushes: 32,
            download_timeout: Duration::from_secs(10),
            queue_timeout: Duration::from_secs(2),
            // Tests of the flash budget set their own; the rest must not run into it.
            max_flash_writes: 10_000,
            ..keysync::engine::SyncSettings::default()
        },
        db_path: db,
        proxy: None,
        mqtt: None,
    }
}

/// Waits until the snapshot satisfies `pred`; panics naming `what`. The snapshot is not held
/// after: a read guard kept across an await would stop the engine.
pub async fn settled(
    snap: &mut watch::Receiver<keysync::engine::Snapshot>,
    what: &str,
    pred: impl Fn(&keysync::engine::Snapshot) -> bool,
) {
    let done = tokio::time::timeout(WAIT, snap.wait_for(|s| pred(s)))
        .await
        .map(|r| r.map(drop));
    assert!(matches!(done, Ok(Ok(()))), "timed out waiting for {what}");
}

/// Waits until the engine has reported `n` sync runs; returns the `n`-th (1-based).
pub async fn nth_report(
    snapshot: &mut watch::Receiver<keysync::engine::Snapshot>,
    n: usize,
) -> keysync::engine::SyncReport {
    let found = tokio::time::timeout(WAIT, snapshot.wait_for(|s| s.sync.history.len() >= n))
        .await
        .map(|r| r.map(|s| s.sync.history[n - 1].clone()));
    if let Ok(Ok(report)) = found {
        return report;
    }
    let have: Vec<String> = snapshot
        .borrow()
        .sync
        .history
        .iter()
        .map(keysync::engine::SyncReport::summary)
        .collect();
    let timeline: Vec<String> = snapshot
        .borrow()
        .link
        .timeline
        .iter()
        .map(|e| e.state.to_string())
        .collect();
    let running = snapshot.borrow().sync.running;
    panic!("no sync report #{n}; have {have:#?}; running {running:?}; link: {timeline:?}");
}

/// No add_contact with an empty or invalid key reached the radio.
pub fn assert_no_invalid_contacts(sim: &SimHandle) {
    let invalid = sim
        .counters()
        .invalid_contacts
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        invalid, 0,
        "add_contact with an empty or invalid key was sent"
    );
    for c in sim.contacts() {
        let key = c.user.map(|u| u.public_key).unwrap_or_default();
        assert!(keysync::engine::valid_key(&key).is_some());
    }
}
pub mod broker;
pub mod cli;
pub mod firmware;
pub mod fixture;
pub mod harness;
#[allow(unused_imports)]
pub use harness::{Harness, Linked, Rig};
pub mod proto;
pub mod python;
pub mod raw;
pub mod tmux;

/// GETs `path` from an HTTP server over a plain TCP connection: status code, content type,
/// body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("sends the request");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("answers in time")
        .expect("reads the response");
    let response = String::from_utf8(response).expect("UTF-8");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header block");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_string();
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (code, content_type, body)
}

/// An HTTP/1.1 chunked body as the bytes it carries.
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = after[size..]
            .strip_prefix("\r\n")
            .expect("CRLF after a chunk");
    }
}

/// Scrapes `/metrics` over HTTP and parses it with a Prometheus text-format parser.
pub async fn scrape(addr: std::net::SocketAddr) -> prometheus_parse::Scrape {
    let (code, content_type, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("the Prometheus text format")
}

/// The value of the counter or gauge `name` with exactly `labels`, a count; panics if it is
/// absent or not a whole number.
pub fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    let found = scrape.samples.iter().find(|s| {
        s.metric == name
            && s.labels.len() == labels.len()
            && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
    });
    let value = match found.map(|s| &s.value) {
        Some(
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v),
        ) => *v,
        other => panic!("no sample {name}{labels:?}: {other:?}"),
    };
    assert!(
        value >= 0.0 && value.fract() == 0.0 && value < 1e15,
        "{name}{labels:?} = {value} is not a count"
    );
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a whole number below 1e15, checked above"
    )]
    let count = value as u64;
    count
}

/// Sends SIGTERM to `child`, as systemd stops a service.
pub fn sigterm(child: &std::process::Child) {
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
}

/// Every `keysync_…` name in the Grafana dashboard's queries.
pub fn dashboard_metrics() -> std::collections::BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/grafana-keysync.json");
    let text = std::fs::read_to_string(path).expect("the dashboard is in assets/");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let mut names = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a query");
            for (at, _) in expr.match_indices("keysync_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    names
}
