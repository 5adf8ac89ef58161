//! Keys from the MQTT broker, against a real mosquitto (started per test on a free loopback
//! port) and the simulated radio over real TCP. Without mosquitto (build.rs sets
//! `cfg(no_mosquitto)`) these tests are reported as ignored, with the reason.

mod common;

use std::time::Duration;

use common::broker::{Broker, Pki};
use common::{WAIT, fast_engine, population, seeded_store, sim_config, start_sim, wait_until};
use keysync::engine::BrokerUrl;
use keysync::engine::ChannelKey;
use keysync::engine::Source;
use keysync::engine::envelope;
use keysync::engine::{self, EngineHandle, Snapshot};
use keysync::engine::{MqttConfig, MqttStatus};
use keysync::engine::{NodeRecord, Store};
use keysync::sim::SimHandle;
use meshtastic::protobufs::User;
use tokio::sync::watch;

const TOPIC: &str = "msh/EU_868/2/e/LongFast/!0000beef";
const GATEWAY: u32 = 0xbeef;
/// A node no simulated radio has: it can only come from the broker.
const FAR_NODE: u32 = 0x7a11_0001;

fn far_user(key: u8) -> User {
    User {
        id: "!7a110001".into(),
        long_name: "Far\u{1b}[2J Hill".into(),
        short_name: "FH".into(),
        public_key: vec![key; 32],
        ..User::default()
    }
}

fn mqtt_config(broker: &Broker, fleet: Option<&str>) -> MqttConfig {
    let mut config = MqttConfig::new(BrokerUrl::parse(&broker.url()).expect("url"));
    config.fleet = fleet.map(str::to_owned);
    config.backoff.base = Duration::from_millis(50);
    config.backoff.cap = Duration::from_millis(400);
    config
}

struct Gateway {
    sim: SimHandle,
    engine: EngineHandle,
    db: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// A simulated radio with `nodes` nodes and a keysync on it that uses the broker, connected to
/// both and synced once.
async fn gateway(seed: u64, nodes: usize, mqtt: MqttConfig) -> Gateway {
    let gw = start_gateway(seed, nodes, mqtt);
    let mut snap = gw.engine.snapshot.clone();
    connected(&mut snap).await;
    gw
}

/// The same, started only.
fn start_gateway(seed: u64, nodes: usize, mqtt: MqttConfig) -> Gateway {
    let sim = start_sim(keysync::sim::SimConfig {
        seed,
        ..sim_config(nodes)
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let (db, store) = seeded_store(&dir, &[]);
    let mut config = fast_engine(
        &sim,
        db.clone(),
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    config.mqtt = Some(mqtt);
    let engine = engine::try_start(config, store).expect("engine starts");
    Gateway {
        sim,
        engine,
        db,
        _dir: dir,
    }
}

async fn connected(snap: &mut watch::Receiver<Snapshot>) {
    let up = tokio::time::timeout(
        WAIT,
        snap.wait_for(|s| {
            s.mqtt
                .as_ref()
                .is_some_and(|m| m.state == keysync::engine::MqttState::Connected)
                && !s.sync.history.is_empty()
        }),
    )
    .await;
    assert!(
        matches!(up, Ok(Ok(_))),
        "keysync did not connect to the broker and the radio"
    );
}

/// The store's record of `num`, read as `keysync keys` reads it, beside the running engine.
fn node(db: &std::path::Path, num: u32) -> Option<NodeRecord> {
    let store = Store::open_existing(db).expect("store opens");
    store
        .nodes()
        .expect("nodes")
        .into_iter()
        .find(|n| n.num == num)
}

/// The store's trusted key of `num` and where it came from.
fn stored(db: &std::path::Path, num: u32) -> Option<([u8; 32], Option<Source>)> {
    let node = node(db, num)?;
    Some((node.trusted?, node.source))
}

/// A LongFast uplink of `num`'s NodeInfo with key `[key; 32]`, as gateway [`GATEWAY`] sends it.
fn long_fast(num: u32, id: u32, key: u8) -> Vec<u8> {
    let channel = ChannelKey::default_channel();
    envelope(num, id, &far_user(key), Some(&channel), GATEWAY)
}

/// Publishes `payload` on [`TOPIC`] every 100 ms (as a gateway repeats NodeInfo) until `done`.
async fn publish_until(
    publisher: &common::broker::Publisher,
    payload: &[u8],
    what: &str,
    mut done: impl FnMut() -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        publisher.publish(TOPIC, payload.to_vec()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A gateway on the broker as `mqtt` says that learned [`FAR_NODE`]'s key `[7; 32]` from the
/// LongFast uplink, and the uplink's connection.
async fn gateway_that_learned_far_node(
    broker: &Broker,
    mqtt: MqttConfig,
) -> (Gateway, common::broker::Publisher) {
    let gw = gateway(1, 5, mqtt).await;
    let uplink = broker.client("gateway").await;
    publish_until(
        &uplink,
        &long_fast(FAR_NODE, 42, 7),
        "the key learned",
        || stored(&gw.db, FAR_NODE).is_some(),
    )
    .await;
    (gw, uplink)
}

fn mqtt_status(engine: &EngineHandle) -> Option<MqttStatus> {
    engine.snapshot.borrow().mqtt.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    no_mosquitto,
    ignore = "mosquitto is not installed (apt-get install mosquitto)"
)]
async fn an_encrypted_uplink_nodeinfo_is_learned_with_its_gateway_as_source() {
    let broker = Broker::start();
    let (gw, uplink) = gateway_that_learned_far_node(&broker, mqtt_config(&broker, None)).await;
    let far = node(&gw.db, FAR_NODE).expect("stored");
    assert_eq!(far.trusted, Some([7; 32]));
    assert_eq!(far.source, Some(Source::Mqtt { gateway: GATEWAY }));
    assert_eq!(far.long_name, "Far[2J Hill", "the escape sequence is gone");

    // The same node later with another key: pending, the first one stays trusted.
    publish_until(
        &uplink,
        &long_fast(FAR_NODE, 43, 8),
        "the changed key pending",
        || node(&gw.db, FAR_NODE).and_then(|n| n.pending) == Some([8; 32]),
    )
    .await;
    assert_eq!(
        stored(&gw.db, FAR_NODE).map(|s| s.0),
        Some([7; 32]),
        "the trusted key is kept"
    );

    let out = assert_cmd::Command::cargo_bin("keysync")
        .expect("binary")
        .args(["keys", "--db"])
        .arg(&gw.db)
        .output()
        .expect("keys runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("!7a110001"))
        .expect("listed");
    assert!(line.ends_with("MQTT via !0000beef"), "{line}");

    // The broker's state and what it taught, as a dashboard scrapes them (the snapshot takes
    // the broker's counts at the engine's next refresh).
    let mut snap = gw.engine.snapshot.clone();
    common::settled(&mut snap, "the broker's counts in the snapshot", |s| {
        s.mqtt.as_ref().is_some_and(|m| m.counts.uplink_keys >= 2)
    })
    .await;
    let metrics = keysync::metrics::serve(
        "127.0.0.1:0".parse().expect("addr"),
        gw.engine.snapshot.clone(),
    )
    .expect("the metrics port binds");
    let m = common::scrape(metrics.addr()).await;
    let counts = mqtt_status(&gw.engine).expect("mqtt status").counts;
    assert_eq!(
        common::sample(&m, "keysync_mqtt_state", &[("state", "connected")]),
        1
    );
    assert_eq!(
        common::sample(&m, "keysync_mqtt_state", &[("state", "backoff")]),
        0
    );
    let uplink_keys = common::sample(&m, "keysync_mqtt_keys_total", &[("from", "uplink")]);
    assert!(uplink_keys >= 2, "both NodeInfos read: {uplink_keys}");
    assert!(
        uplink_keys <= counts.uplink_keys,
        "scraped from the snapshot"
    );
    assert!(common::sample(&m, "keysync_mqtt_messages_total", &[]) >= uplink_keys);
    // Every broker series the Grafana dashboard queries is served.
    let served: std::collections::BTreeSet<&str> =
        m.samples.iter().map(|s| s.metric.as_str()).collect();
    let queried: Vec<String> = common::dashboard_metrics()
        .into_iter()
        .filter(|n| n.starts_with("keysync_mqtt_"))
        .collect();
    assert!(queried.len() >= 4, "{queried:?}");
    for name in &queried {
        assert!(
            served.contains(name.as_str()),
            "the dashboard queries {name}, not served"
        );
    }
    drop(metrics);
    gw.engine.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    no_mosquitto,
    ignore = "mosquitto is not installed (apt-get install mosquitto)"
)]
async fn a_key_from_the_broker_stays_in_the_store_until_the_radio_hears_its_node() {
    let broker = Broker::start();
    let (gw, _uplink) = gateway_that_learned_far_node(&broker, mqtt_config(&broker, None)).await;
    let mut snap = gw.engine.snapshot.clone();
    let runs = snap.borrow().sync.history.len();
    gw.engine
        .commands
        .send(engine::Command::ForceSync)
        .await
        .expect("engine runs");
    let report = common::nth_report(&mut snap, runs + 1).await;
    assert!(report.error.is_none(), "{}", report.summary());
    let pushed = |sim: &SimHandle| sim.contacts().iter().any(|c| c.node_num == FAR_NODE);
    assert!(!pushed(&gw.sim), "the radio has room, but no need of it");
    // A packet from it reaches the radio, which has no key for it: heard here, it has a claim
    // on a slot, and the next sync pushes it (at once only for a pinned node or a DM partner).
    gw.sim
        .hear_from(FAR_NODE, meshtastic::protobufs::PortNum::TextMessageApp);
    wait_until("the node heard", || {
        snap.borrow().nodes.iter().any(|n| {
            n.record.num == FAR_NODE && n.record.last_seen > std::time::SystemTime::UNIX_EPOCH
        })
    })
    .await;
    gw.engine
        .commands
        .send(engine::Command::ForceSync)
        .await
        .expect("engine runs");
    wait_until("the key pushed once the node is heard", || pushed(&gw.sim)).await;
    assert_eq!(gw.sim.key_of(FAR_NODE), Some([7; 32]));
    gw.engine.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    no_mosquitto,
    ignore = "mosquitto is not installed (apt-get install mosquitto)"
)]
async fn a_key_from_radio_a_reaches_the_store_of_b_through_the_fleet_and_no_further() {
    let broker = Broker::start();
    let a = gateway(11, 4, mqtt_config(&broker, Some("north"))).await;
    let b = gateway(22, 4, mqtt_config(&broker, Some("north"))).await;
    let a_nodes = population(11, 4);
    let b_nodes = population(22, 4);
    let from_a = &a_nodes[0];
    let a_key: [u8; 32] = from_a
        .user
        .as_ref()
        .expect("user")
        .public_key
        .clone()
        .try_into()
        .expect("32");
    let a_radio = a.sim.my_node_num();
    wait_until("B has a key of A's radio", || {
        stored(&b.db, from_a.num).is_some()
    })
    .await;
    assert_eq!(
        stored(&b.db, from_a.num),
        Some((a_key, Some(Source::Fleet { gateway: a_radio })))
    );
    // And the other way round.
    let from_b = &b_nodes[0];
    wait_until("A has a key of B's radio", || {
        stored(&a.db, from_b.num).is_some()
    })
    .await;
    assert_eq!(
        stored(&a.db, from_b.num).and_then(|s| s.1),
        Some(Source::Fleet {
            gateway: b.sim.my_node_num()
        })
    );
    // Each published only what its own radio told it: a key never travels back.
    let published = |e: &EngineHandle| mqtt_status(e).map(|m| m.counts.fleet_out);
    wait_until("both published their radio's nodes", || {
        published(&a.engine) == Some(4) && published(&b.engine) == Some(4)
    })
    .await;
    assert_eq!(
        stored(&a.db, from_a.num).and_then(|s| s.1),
        Some(Source::NodeDb)
    );

    // A keysync that starts later has the fleet's keys from the retained records at once.
    let c = gateway(33, 1, mqtt_config(&broker, Some("north"))).await;
    wait_until("C has A's and B's keys", || {
        a_nodes
            .iter()
            .chain(&b_nodes)
            .all(|n| stored(&c.db, n.num).is_some())
    })
    .await;
    wait_until("C shared its own radio's node", || {
        published(&c.engine) == Some(1)
    })
    .await;
    for g in [a, b, c] {
        g.engine.quit().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    no_mosquitto,
    ignore = "mosquitto is not installed (apt-get install mosquitto)"
)]
async fn hostile_traffic_teaches_nothing_new_nodes_stop_at_the_bound_and_the_link_stays_up() {
    let broker = Broker::start();
    let mut config = mqtt_config(&broker, Some("north"));
    // Room for three nodes known only from the broker.
    config.max_unheard = 3;
    let gw = gateway(1, 5, config).await;
    let count = || {
        Store::open_existing(&gw.db)
            .expect("store")
            .nodes()
            .expect("nodes")
            .len()
    };
    let before = count();
    let sessions = gw.engine.snapshot.borrow().link.sessions;
    let hostile = broker.client("hostile").await;
    // Another key with LongFast's hash: the packet claims the channel, the key does not fit.
    let mut other = keysync::engine::DEFAULT_PSK;
    other[0] ^= 0x55;
    other[1] ^= 0x55;
    let secret = ChannelKey::new("LongFast", &other).expect("key");
    assert_eq!(secret.hash(), ChannelKey::default_channel().hash());
    let wrong_key = envelope(FAR_NODE, 1, &far_user(7), Some(&secret), GATEWAY);
    let oversized = {
        let mut user = far_user(7);
        user.long_name = "x".repeat(4 * 1024);
        envelope(FAR_NODE, 2, &user, None, GATEWAY)
    };
    let forged_fleet =
        br#"{"node":"!7a110001","key":"not a key","gateway":"!1","origin":"!00000001"}"#;
    let flood = 2000;
    for i in 0..flood {
        let (topic, payload) = match i % 5 {
            0 => (TOPIC, b"\x08\x96\x01 garbage".to_vec()),
            1 => (TOPIC, wrong_key.clone()),
            2 => (TOPIC, oversized.clone()),
            3 => ("keysync/north/!7a110001", forged_fleet.to_vec()),
            _ => (
                "msh/EU_868/2/json/LongFast/!0000beef",
                b"{\"from\":".to_vec(),
            ),
        };
        hostile.publish(topic, payload).await;
    }
    wait_until("the snapshot counts the flood", || {
        mqtt_status(&gw.engine).is_some_and(|m| m.counts.ignored >= flood)
    })
    .await;
    // Far larger than any message keysync reads: dropped unread, the connection stays.
    hostile.publish(TOPIC, vec![0x42; 100 * 1024]).await;
    // A last good message proves the flood was read through, and the side still learns.
    let good = long_fast(FAR_NODE + 1, 9, 5);
    publish_until(
        &hostile,
        &good,
        "the good message after the flood learned",
        || stored(&gw.db, FAR_NODE + 1).is_some(),
    )
    .await;
    assert_eq!(
        stored(&gw.db, FAR_NODE),
        None,
        "nothing learned from the hostile traffic"
    );
    assert_eq!(count(), before + 1, "the good node only");
    // Nodes with good keys, more than the store may hold: two fit, the rest find no room.
    let flood_of_nodes: Vec<Vec<u8>> = (2..40)
        .map(|i| long_fast(FAR_NODE + i, i, u8::try_from(i).expect("small")))
        .collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    while mqtt_status(&gw.engine).map_or(0, |m| m.counts.no_room) < 36 {
        assert!(tokio::time::Instant::now() < deadline, "timed out: no room");
        for payload in &flood_of_nodes {
            hostile.publish(TOPIC, payload.clone()).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(), before + 3, "the store grows only to its bound");
    let snap = gw.engine.snapshot.borrow().clone();
    let counts = snap.mqtt.as_ref().expect("mqtt").counts;
    assert_eq!(counts.connects, 1, "the broker connection never dropped");
    assert!(counts.ignored >= flood, "{counts:?}");
    assert!(
        counts.oversized >= flood / 5 && counts.undecryptable >= flood / 5,
        "{counts:?}"
    );
    assert_eq!(snap.link.sessions, sessions, "the radio link never dropped");
    assert_eq!(snap.link.state, keysync::engine::LinkState::Up);
    gw.engine.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    no_mosquitto,
    ignore = "mosquitto is not installed (apt-get install mosquitto)"
)]
async fn huge_retained_and_uplink_messages_are_dropped_unread_without_a_reconnect_loop() {
    let broker = Broker::start();
    let hostile = broker.client("hostile").await;
    // Retained: every connection that subscribes to the fleet gets it first.
    let record = format!(
        r#"{{"node":"!7a110009","key":"{}","gateway":"!1","origin":"!00000001"}}"#,
        "A".repeat(300 * 1024)
    );
    hostile
        .client
        .publish(
            "keysync/north/!7a110009",
            rumqttc::QoS::AtLeastOnce,
            true,
            record.into_bytes(),
        )
        .await
        .expect("publish queued");
    let gw = gateway(1, 5, mqtt_config(&broker, Some("north"))).await;
    hostile.publish(TOPIC, vec![0x42; 270 * 1024]).await;
    let good = long_fast(FAR_NODE, 9, 5);
    let learned_by = tokio::time::Instant::now() + Duration::from_secs(5);
    while stored(&gw.db, FAR_NODE).is_none() {
        assert!(
            tokio::time::Instant::now() < learned_by,
            "no key learned within 5 s: {:?}",
            mqtt_status(&gw.engine)
        );
        hostile.publish(TOPIC, good.clone()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until("both huge messages counted", || {
        mqtt_status(&gw.engine).is_some_and(|m| m.counts.oversized >= 2)
    })
    .await;
    let status = mqtt_status(&gw.engine).expect("mqtt");
    assert_eq!(status.counts.oversized, 2, "{status:?}");
    assert_eq!(status.counts.connects, 1, "no reconnect: {status:?}");
    assert_eq!(status.state, keysync::engine::MqttState::Connected);
    assert_eq!(status.last_error, None, "{status:?}");
    let scrape = keysync::metrics::exposition::render(&keysync::metrics::exposition::registry(
        gw.engine.snapshot.clone(),
    ))
    .expect("renders");
    assert!(
        scrape.contains("keysync_mqtt_messages_refused_total{why=\"oversized\"} 2"),
        "{scrape}"
    );
    gw.engine.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    no_mosquitto,
    ignore = "mosquitto is not installed (apt-get install mosquitto)"
)]
async fn a_broker_that_fails_the_tls_handshake_shows_as_backoff_with_the_reason() {
    let broker = Broker::start();
    // mqtts:// to a listener that speaks plain MQTT: the handshake fails, every time.
    let url = format!("mqtts://127.0.0.1:{}", broker.addr.port());
    let mut config = mqtt_config(&broker, None);
    config.broker = BrokerUrl::parse(&url).expect("url");
    let gw = start_gateway(1, 3, config);
    wait_until("the broker in backoff with the TLS error", || {
        mqtt_status(&gw.engine).is_some_and(|m| {
            matches!(m.state, keysync::engine::MqttState::Backoff { .. })
                && m.last_error.is_some_and(|e| e.starts_with("TLS"))
        })
    })
    .await;
    let snap = gw.engine.snapshot.borrow().clone();
    assert_eq!(
        snap.link.state,
        keysync::engine::LinkState::Up,
        "the radio link is up"
    );
    assert_eq!(snap.mqtt.expect("mqtt").broker, url);
    gw.engine.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    no_mosquitto,
    ignore = "mosquitto is not installed (apt-get install mosquitto)"
)]
async fn a_tls_broker_is_trusted_through_the_authority_given_and_no_other() {
    let pki = Pki::new("keysync test CA");
    let broker = Broker::start_tls(&pki);
    let tls_port = broker.tls_addr.expect("a TLS listener").port();
    let over_tls = |ca: &str| {
        let mut config = mqtt_config(&broker, None);
        config.broker = BrokerUrl::parse(&format!("mqtts://localhost:{tls_port}")).expect("url");
        config.ca = Some(ca.as_bytes().to_vec());
        config
    };
    // Another authority's word for the broker is not enough: the handshake fails.
    let stranger = start_gateway(2, 3, over_tls(&Pki::new("another CA").ca));
    wait_until("the broker refused for its certificate", || {
        mqtt_status(&stranger.engine).is_some_and(|m| {
            matches!(m.state, keysync::engine::MqttState::Backoff { .. })
                && m.last_error.is_some_and(|e| e.contains("certificate"))
        })
    })
    .await;
    stranger.engine.quit().await;
    // With the broker's own authority: connected, and keys arrive over TLS.
    let (gw, _uplink) = gateway_that_learned_far_node(&broker, over_tls(&pki.ca)).await;
    let status = mqtt_status(&gw.engine).expect("mqtt");
    assert_eq!(status.state, keysync::engine::MqttState::Connected);
    assert!(
        status.broker.starts_with("mqtts://localhost:"),
        "{}",
        status.broker
    );
    gw.engine.quit().await;
}

/// A child process killed when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    no_mosquitto,
    ignore = "mosquitto is not installed (apt-get install mosquitto)"
)]
async fn ten_seconds_of_refused_messages_and_reconnects_write_a_few_log_lines() {
    use std::io::{BufRead as _, BufReader};
    let broker = Broker::start();
    let hostile = broker.client("hostile").await;
    // Above even keysync's packet bound, retained: every connection fails on it.
    let mut options = rumqttc::MqttOptions::new("huge", "127.0.0.1", broker.addr.port());
    options.set_max_packet_size(4 << 20, 4 << 20);
    let (huge, mut events) = rumqttc::AsyncClient::new(options, 4);
    huge.publish(
        "keysync/north/!7a110009",
        rumqttc::QoS::AtLeastOnce,
        true,
        vec![b'{'; 2 << 20],
    )
    .await
    .expect("publish queued");
    let stored_by = tokio::time::Instant::now() + WAIT;
    loop {
        let polled = tokio::time::timeout_at(stored_by, events.poll()).await;
        match polled.expect("the broker took the huge record") {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("huge publisher: {e}"),
        }
    }
    let sim = start_sim(sim_config(3));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keysync"))
        .args([
            "--headless",
            "--fleet",
            "north",
            "--mqtt",
            &broker.url(),
            "--host",
        ])
        .arg(sim.addr().to_string())
        .arg("--db")
        .arg(dir.path().join("k.db"))
        .env("XDG_CONFIG_HOME", "/nonexistent-keysync-test")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("keysync starts");
    let stderr = child.stderr.take().expect("piped");
    // Killed however the test ends, so a failed assertion leaves no keysync behind.
    let mut child = Reaped(child);
    let reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut other = keysync::engine::DEFAULT_PSK;
    other[0] ^= 0x55;
    let secret = ChannelKey::new("LongFast", &other).expect("key");
    let flood: [Vec<u8>; 4] = [
        b"\x08\x96\x01 garbage".to_vec(),
        envelope(FAR_NODE, 1, &far_user(7), Some(&secret), GATEWAY),
        vec![0x42; 4096],
        envelope(0, 1, &far_user(7), None, GATEWAY),
    ];
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut sent = 0u32;
    while tokio::time::Instant::now() < until {
        for payload in &flood {
            hostile.publish(TOPIC, payload.clone()).await;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let _ = child.0.wait();
    let log = reader.join().expect("log read");
    let mqtt: Vec<&String> = log.iter().filter(|l| l.contains("keysync::mqtt")).collect();
    assert!(sent > 1000, "the flood was {sent} messages");
    assert!(
        mqtt.iter().any(|l| l.contains("attempt")),
        "the failing connection is logged: {log:#?}"
    );
    assert!(
        mqtt.iter().any(|l| l.contains("ignored a")),
        "a refused message is logged: {log:#?}"
    );
    // A line per kind (connected, down, and four kinds refused), a few connects in a burst.
    assert!(mqtt.len() <= 12, "{} lines: {mqtt:#?}", mqtt.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    no_mosquitto,
    ignore = "mosquitto is not installed (apt-get install mosquitto)"
)]
async fn an_uplink_from_this_gateway_is_not_learned_as_mqtt_via_itself() {
    let broker = Broker::start();
    let gw = gateway(1, 5, mqtt_config(&broker, None)).await;
    let own = gw.sim.my_node_num();
    let uplink = broker.client("gateway").await;
    let channel = ChannelKey::default_channel();
    let own_topic = format!("msh/EU_868/2/e/LongFast/{}", keysync::engine::node_id(own));
    let from_us = envelope(FAR_NODE, 41, &far_user(7), Some(&channel), own);
    uplink.publish(&own_topic, from_us).await;
    // In order after it: once this one is learned, ours was read.
    publish_until(
        &uplink,
        &long_fast(FAR_NODE + 1, 42, 8),
        "the other learned",
        || stored(&gw.db, FAR_NODE + 1).is_some(),
    )
    .await;
    assert_eq!(node(&gw.db, FAR_NODE).map(|n| n.source), None);
    gw.engine.quit().await;
}

/// An MQTT 3.1.1 broker that accepts one client and its subscriptions, acknowledges only its
/// first publish and counts those that arrive.
async fn broker_that_acks_one_publish(
    listener: tokio::net::TcpListener,
    published: std::sync::Arc<std::sync::atomic::AtomicU32>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok((mut stream, _)) = listener.accept().await else {
        return;
    };
    loop {
        let mut kind = [0u8; 1];
        if stream.read_exact(&mut kind).await.is_err() {
            return;
        }
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let mut b = [0u8; 1];
            if stream.read_exact(&mut b).await.is_err() {
                return;
            }
            len |= usize::from(b[0] & 0x7f) << shift;
            shift += 7;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let reply = match kind[0] >> 4 {
            1 => vec![0x20, 2, 0, 0],
            8 => {
                // The packet id, then (filter, QoS) pairs: one granted QoS 1 each.
                let (mut at, mut granted) = (2, 0u8);
                while at + 2 <= body.len() {
                    at += 2 + usize::from(u16::from_be_bytes([body[at], body[at + 1]])) + 1;
                    granted += 1;
                }
                let mut r = vec![0x90, 2 + granted, body[0], body[1]];
                r.extend(std::iter::repeat_n(1, usize::from(granted)));
                r
            }
            3 => {
                let n = published.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let id = &body[2 + topic_len..4 + topic_len];
                if n == 0 {
                    vec![0x40, 2, id[0], id[1]]
                } else {
                    Vec::new()
                }
            }
            12 => vec![0xd0, 0],
            _ => Vec::new(),
        };
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_published_counts_the_records_the_broker_acknowledged() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let url = format!("mqtt://{}", listener.local_addr().expect("addr"));
    let published = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let broker = tokio::spawn(broker_that_acks_one_publish(listener, published.clone()));
    let mut config = MqttConfig::new(BrokerUrl::parse(&url).expect("url"));
    config.fleet = Some("north".into());
    let gw = gateway(1, 5, config).await;
    wait_until("the broker received records", || {
        published.load(std::sync::atomic::Ordering::SeqCst) >= 3
    })
    .await;
    wait_until("the acknowledged one counted", || {
        mqtt_status(&gw.engine).is_some_and(|m| m.counts.fleet_out >= 1)
    })
    .await;
    let status = mqtt_status(&gw.engine).expect("mqtt");
    assert_eq!(status.counts.fleet_out, 1, "{status:?}");
    gw.engine.quit().await;
    broker.abort();
}
