//! `--metrics`: the engine against the simulated radio over real TCP, scraped over real HTTP;
//! what `/metrics` and `/status` say is checked against what the sim counted.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use keysync::engine::CloseCause;
use keysync::sim::Fault;

/// Nodes keysync knows; the radio holds the first [`IN_RADIO`] of them.
const KNOWN: usize = 35;
const IN_RADIO: usize = 30;
const DROPS: u64 = 2;

/// The sim holding the first [`IN_RADIO`] of [`KNOWN`] stored nodes, the engine after its first
/// sync, and the metrics server on a free port.
async fn started() -> (Harness, keysync::metrics::MetricsServer) {
    let mut h = Harness::start(sim_config(IN_RADIO), &population(1, KNOWN), |_| {});
    let metrics = keysync::metrics::serve(
        "127.0.0.1:0".parse().expect("addr"),
        h.engine.snapshot.clone(),
    )
    .expect("the metrics port binds");
    h.report(1).await;
    (h, metrics)
}

#[tokio::test]
async fn scraped_counters_match_what_the_sim_counted_across_scripted_drops() {
    let (mut h, metrics) = started().await;
    for n in 1..=DROPS {
        h.sim.inject(Fault::Drop).await;
        // Each drop is followed by a reconnect and its forced sync.
        h.report(1 + usize::try_from(n).expect("small")).await;
    }
    let closed_by_radio = CloseCause::ClosedByRadio.index();
    settled(&mut h.snap, "the counters to reach the snapshot", |s| {
        s.sync.totals.pushes > 0
            && s.traffic.closes[closed_by_radio] >= DROPS
            && s.traffic.heartbeat_rtt.count > 0
            && s.sync.flash_writes_last_hour.is_some_and(|n| n > 0)
    })
    .await;

    let m = scrape(metrics.addr()).await;
    let add_contacts = h.sim.counters().add_contacts.load(Ordering::Relaxed);
    let flash_writes = h.sim.counters().flash_writes.load(Ordering::Relaxed);
    let missing = (KNOWN - IN_RADIO) as u64;
    assert_eq!(add_contacts, flash_writes);
    assert_eq!(sample(&m, "keysync_pushes_total", &[]), missing);
    assert_eq!(sample(&m, "keysync_pushes_total", &[]), add_contacts);
    assert_eq!(sample(&m, "keysync_flash_writes_total", &[]), flash_writes);
    assert_eq!(
        sample(&m, "keysync_flash_writes_last_hour", &[]),
        flash_writes
    );
    let reconnects = |cause| sample(&m, "keysync_link_reconnects_total", &[("cause", cause)]);
    assert_eq!(reconnects("closed_by_radio"), DROPS);
    assert_eq!(reconnects("stalled"), 0);
    let connections = h.sim.counters().connections.load(Ordering::Relaxed);
    assert_eq!(connections, 1 + DROPS);
    assert_eq!(sample(&m, "keysync_link_sessions_total", &[]), connections);
    assert_eq!(sample(&m, "keysync_link_state", &[("state", "up")]), 1);
    assert_eq!(sample(&m, "keysync_link_state", &[("state", "backoff")]), 0);
    let runs = |trigger, outcome| {
        sample(
            &m,
            "keysync_sync_runs_total",
            &[("trigger", trigger), ("outcome", outcome)],
        )
    };
    assert_eq!(runs("startup", "forced"), 1);
    assert_eq!(runs("reconnect", "forced"), DROPS);
    assert_eq!(runs("check", "skipped"), 0);
    assert_eq!(
        sample(&m, "keysync_sync_run_duration_seconds_count", &[]),
        1 + DROPS
    );
    assert_eq!(
        sample(
            &m,
            "keysync_link_config_download_duration_seconds_count",
            &[]
        ),
        connections
    );
    let heartbeats_answered = sample(&m, "keysync_link_heartbeat_rtt_seconds_count", &[]);
    let heartbeats_sent = sample(&m, "keysync_link_heartbeats_sent_total", &[]);
    assert!(heartbeats_answered >= 1 && heartbeats_answered <= heartbeats_sent);
    assert_eq!(
        sample(&m, "keysync_keys", &[("state", "trusted")]),
        KNOWN as u64
    );
    assert_eq!(sample(&m, "keysync_keys", &[("state", "pending")]), 0);
    assert_eq!(sample(&m, "keysync_keys_in_radio", &[]), KNOWN as u64);
    assert_eq!(sample(&m, "keysync_keys_stored_only", &[]), 0);
    assert_eq!(
        sample(&m, "keysync_radio_capacity", &[]),
        h.sim.capacity() as u64
    );
    assert_eq!(
        sample(&m, "keysync_radio_protected_slots", &[]),
        h.sim.protected().total as u64
    );
    assert!(
        m.samples.iter().all(|s| s.metric.starts_with("keysync_")),
        "every name has the prefix"
    );
    assert!(
        m.samples
            .iter()
            .filter(|s| matches!(s.value, prometheus_parse::Value::Counter(_)))
            .all(|s| s.metric.ends_with("_total"))
    );
    assert!(
        m.samples
            .iter()
            .all(|s| !s.metric.starts_with("keysync_proxy_")),
        "no proxy series without --listen"
    );
    drop(metrics);
    h.quit().await;
}

#[tokio::test]
async fn status_is_the_snapshot_as_json_without_the_radio_s_secrets() {
    let (mut h, metrics) = started().await;
    let known = population(1, KNOWN);
    settled(&mut h.snap, "the pushes to be counted", |s| {
        s.sync.totals.pushes > 0
    })
    .await;

    let (code, content_type, body) = http_get(metrics.addr(), "/status?nodes=1000").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(content_type, "application/json");
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status["nodes_total"], KNOWN);
    assert!(status["next_after"].is_null(), "all on one page");
    assert_eq!(status["link"]["state"], "up");
    assert_eq!(
        status["link"]["radio"]["node_id"],
        keysync::engine::node_id(h.sim.my_node_num())
    );
    assert_eq!(status["link"]["radio"]["capacity"], h.sim.capacity());
    assert_eq!(status["sync"]["last"]["trigger"], "startup");
    assert_eq!(status["sync"]["last"]["outcome"], "forced");
    assert_eq!(status["sync"]["last"]["pushed"], KNOWN - IN_RADIO);
    assert_eq!(status["sync"]["runs"]["startup"]["forced"], 1);
    assert_eq!(
        status["sync"]["pushes"],
        h.sim.counters().add_contacts.load(Ordering::Relaxed)
    );
    assert_eq!(status["keys"]["by_state"]["trusted"], KNOWN);
    let nodes = status["nodes"].as_array().expect("a node list");
    assert_eq!(nodes.len(), KNOWN);
    for node in &known {
        let shown = nodes
            .iter()
            .find(|n| n["num"] == node.num)
            .expect("every stored node");
        let key = node.user.as_ref().expect("user").public_key.as_slice();
        let key = keysync::engine::valid_key(key).expect("valid");
        assert_eq!(shown["key"], keysync::engine::key_base64(&key));
        assert!(["in_radio", "pushed"].contains(&shown["radio"].as_str().expect("a standing")));
    }
    // The snapshot never holds the radio's configuration: no private key can leak.
    assert!(!body.contains("private"), "{body}");
    assert!(status["proxy"].is_null());

    let (code, _, _) = http_get(metrics.addr(), "/nothing-here").await;
    assert_eq!(code, 404);
    drop(metrics);
    h.quit().await;
}

/// `/status` as JSON, asserting it answered 200.
async fn status_json(addr: std::net::SocketAddr, path: &str) -> serde_json::Value {
    let (code, _, body) = http_get(addr, path).await;
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

#[tokio::test]
async fn status_is_summary_first_and_lists_nodes_only_a_page_at_a_time() {
    let (h, metrics) = started().await;
    let summary = status_json(metrics.addr(), "/status").await;
    assert_eq!(summary["nodes_total"], KNOWN);
    assert_eq!(summary["keys"]["by_state"]["trusted"], KNOWN);
    assert!(summary.get("nodes").is_none(), "no list without ?nodes");
    let mut listed = Vec::new();
    let mut path = "/status?nodes=10".to_string();
    loop {
        let page = status_json(metrics.addr(), &path).await;
        let nodes = page["nodes"].as_array().expect("a node list");
        assert!(nodes.len() <= 10, "{}", nodes.len());
        listed.extend(nodes.iter().map(|n| n["num"].as_u64().expect("num")));
        match page["next_after"].as_u64() {
            Some(after) => path = format!("/status?nodes=10&after={after}"),
            None => break,
        }
    }
    let mut expected: Vec<u64> = population(1, KNOWN)
        .iter()
        .map(|n| u64::from(n.num))
        .collect();
    expected.sort_unstable();
    assert_eq!(
        listed, expected,
        "every node once, in number order, over four pages"
    );
    let empty = status_json(metrics.addr(), "/status?nodes=0").await;
    assert_eq!(empty["nodes"], serde_json::json!([]));
    for bad in [
        "/status?nodes=many",
        "/status?after=5",
        "/status?nodes=1&after=x",
        "/status?all",
    ] {
        let (code, _, body) = http_get(metrics.addr(), bad).await;
        assert_eq!(code, 400, "{bad}: {body}");
    }
    drop(metrics);
    h.quit().await;
}

#[tokio::test]
async fn scrapes_are_served_beside_64_idle_connections() {
    let (h, metrics) = started().await;
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(
            tokio::net::TcpStream::connect(metrics.addr())
                .await
                .expect("connects"),
        );
    }
    for _ in 0..10 {
        let m = scrape(metrics.addr()).await;
        assert_eq!(
            sample(
                &m,
                "keysync_link_reconnects_total",
                &[("cause", "closed_by_radio")]
            ),
            0
        );
        // Another idle one between scrapes, as an attacker reopens them.
        idle.push(
            tokio::net::TcpStream::connect(metrics.addr())
                .await
                .expect("connects"),
        );
    }
    drop(idle);
    drop(metrics);
    h.quit().await;
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_no_request_is_closed_after_five_seconds() {
    use tokio::io::AsyncReadExt as _;
    let (_keep, snapshot) = tokio::sync::watch::channel(fixture::snapshot());
    let metrics =
        keysync::metrics::serve("127.0.0.1:0".parse().expect("addr"), snapshot).expect("binds");
    let mut idle = tokio::net::TcpStream::connect(metrics.addr())
        .await
        .expect("connects");
    let start = tokio::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(60), idle.read(&mut buf))
        .await
        .expect("closed by the server before a minute");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = start.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(5) && waited < std::time::Duration::from_secs(11),
        "{waited:?}"
    );
}
