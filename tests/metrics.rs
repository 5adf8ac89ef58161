//! `--metrics`: the engine against the simulated radio over real TCP, scraped over real HTTP;
//! what `/metrics` and `/status` say is checked against what the sim counted.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use keysync::engine::link::CloseCause;
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

    let (code, content_type, body) = http_get(metrics.addr(), "/status").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(content_type, "application/json");
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status["link"]["state"], "up");
    assert_eq!(
        status["link"]["radio"]["node_id"],
        keysync::engine::radio::node_id(h.sim.my_node_num())
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
        let key = keysync::engine::radio::valid_key(key).expect("valid");
        assert_eq!(shown["key"], keysync::engine::store::key_base64(&key));
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
