//! keysync against the real firmware: meshtasticd 2.7.26 (and develop, 2.8, where its binary
//! is there) from ../shared/firmware, the radio's own NodeDB, PhoneAPI, AdminModule and Router
//! code with simulated LoRa. Each scenario starts its own instance (own filesystem, port and node
//! number) and asserts what the firmware did: its frames, its own log lines, its exit status, a
//! nodes-only download after the fact.
//!
//! A custom harness (libtest-mimic), so that a suite that cannot run here is reported *ignored,
//! with the reason* (no binary, missing libraries, no private network namespace) instead of
//! passing unrun; CI sets `KEYSYNC_FIRMWARE_REQUIRED` so that there it fails instead. The binary
//! enters a private network namespace itself (../shared/firmware/in-private-net): meshtasticd
//! binds 0.0.0.0 and multicasts its mesh.

mod common;

use std::future::Future;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::pin::Pin;
use std::process::Command;
use std::time::Duration;

use common::firmware::{Firmware, Radio, Setup, Suite};
use common::raw::{RawClient, my_node_num, node_infos, routing_error};
use common::{fast_engine_to, population, seeded_store};
use keysync::engine::{self, Command as EngineCommand, EngineConfig, EngineHandle};
use keysync::engine::{NODES_ONLY_NONCE, heartbeat};
use keysync::engine::{Outcome, SyncReport, Trigger};
use libtest_mimic::{Arguments, Failed, Trial};
use meshtastic::protobufs::{
    FromRadio, MeshPacket, NodeInfo, PortNum, SharedContact, ToRadio, User,
    admin_message::PayloadVariant as Admin, from_radio, routing, to_radio,
};

type Scenario = fn(Firmware) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Scenarios by name; each runs against every firmware build found.
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|fw| Box::pin($name(fw))) as Scenario)),*]
    };
}

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    // The proxy scenario's Python client is installed outside, where the registry is reached.
    let suite = Suite::detect(|| {
        if let Err(why) = common::python::MESHTASTIC.provision() {
            eprintln!("{why}");
        }
    });
    let list = scenarios![
        handshake_nodes_only_skip_force_and_reconnect_after_a_restart,
        a_push_lands_with_its_key_names_and_favourite,
        a_nodedb_with_nothing_evictable_crashes_at_the_next_new_node,
        an_ignored_node_is_never_pushed,
        clients_share_the_firmware_through_the_proxy_on_one_connection,
        heartbeats_queue_status_and_the_text_limit_as_the_firmware_does_them,
        the_simulator_answers_a_scripted_session_as_the_firmware_does,
        a_small_radio_never_crashes_whatever_the_store_holds,
        a_radio_of_60_with_300_trusted_keys_never_crashes,
        a_node_number_is_the_crc32_of_its_key_from_2_8,
        encrypted_admin_through_keysync_changes_nothing,
        the_firmwares_contact_url_imports_with_its_key,
        a_contact_url_keysync_exports_lands_in_the_nodedb_through_the_python_cli,
    ];
    // What only develop (2.8) does, and what only firmware before it does.
    let develop = scenarios![keysync_gives_its_slots_back_and_an_evicted_node_still_gets_pki];
    let before_develop = scenarios![a_release_restarts_the_lora_chip_and_releases_are_rationed];
    let trials = match &suite.builds {
        Ok(builds) => builds
            .iter()
            .flat_map(|fw| {
                let extra = if fw.is_develop() {
                    &develop[..]
                } else {
                    &before_develop[..]
                };
                list.iter().chain(extra).map(move |(name, scenario)| {
                    let fw = fw.clone();
                    let scenario = *scenario;
                    Trial::test(format!("{}::{name}", fw.version), move || run(scenario, fw))
                })
            })
            .collect(),
        Err(why) => list
            .iter()
            .map(|(name, _)| {
                Trial::test(format!("2.7.26::{name}"), || Ok(()))
                    .with_ignored_flag(true)
                    .with_kind(why.clone())
            })
            .collect(),
    };
    libtest_mimic::run(&args, trials).exit_code()
}

fn run(scenario: Scenario, fw: Firmware) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("no tokio runtime: {e}")))?;
    runtime.block_on(scenario(fw));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Set-up shared by the scenarios

/// The engine against `radio`, its store seeded with `known` as if heard on the mesh.
struct Keysync {
    _dir: tempfile::TempDir,
    engine: EngineHandle,
}

impl Keysync {
    fn config(radio: &Radio, db: &Path, edit: impl FnOnce(&mut EngineConfig)) -> EngineConfig {
        let mut config = fast_engine_to(
            &radio.host(),
            db.to_path_buf(),
            Duration::from_secs(60),
            Duration::from_secs(600),
        );
        // The firmware writes its whole NodeDB to flash on every add_contact.
        config.sync.push_gap = Duration::from_millis(100);
        config.link.heartbeat = Duration::from_secs(1);
        edit(&mut config);
        config
    }

    fn start(radio: &Radio, known: &[NodeInfo], edit: impl FnOnce(&mut EngineConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, store) = seeded_store(&dir, known);
        let config = Self::config(radio, &db, edit);
        let engine = engine::try_start(config, store).expect("the engine starts");
        Self { _dir: dir, engine }
    }

    /// The `n`-th sync report (1-based).
    async fn report(&mut self, n: usize) -> SyncReport {
        common::nth_report(&mut self.engine.snapshot, n).await
    }

    async fn command(&self, command: EngineCommand) {
        self.engine
            .commands
            .send(command)
            .await
            .expect("engine runs");
    }

    async fn quit(self) {
        self.engine.quit().await;
    }
}

/// `n` nodes of a generated mesh (seeded, so a scenario sees the same ones every run).
fn mesh(seed: u64, n: usize) -> Vec<NodeInfo> {
    population(seed, n)
}

/// A bare client after a full handshake: the client and the radio's node number.
async fn client(radio: &Radio) -> (RawClient, u32) {
    let mut client = RawClient::connect(radio.addr()).await;
    let frames = client.download(7).await;
    (client, my_node_num(&frames))
}

/// The radio's node list now, by a nodes-only download on a connection of its own (which
/// closes the previous client: only between keysync's runs).
async fn node_list(radio: &Radio) -> Vec<NodeInfo> {
    let mut client = RawClient::connect(radio.addr()).await;
    node_infos(&client.download(NODES_ONLY_NONCE).await)
}

fn find(nodes: &[NodeInfo], num: u32) -> Option<&NodeInfo> {
    nodes.iter().find(|n| n.num == num)
}

fn key_of(node: &NodeInfo) -> &[u8] {
    node.user.as_ref().map_or(&[], |u| u.public_key.as_slice())
}

/// A node with its own key and user record, for add_contact from a bare client.
fn contact_node(num: u32) -> NodeInfo {
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::try_from((num as usize * 31 + i * 7) % 251).unwrap_or(1) + 1;
    }
    NodeInfo {
        num,
        user: Some(User {
            id: keysync::engine::node_id(num),
            long_name: format!("Contact {num:x}"),
            short_name: "CT".into(),
            hw_model: 9,
            public_key: key.to_vec(),
            ..User::default()
        }),
        ..NodeInfo::default()
    }
}

/// A broadcast text from the radio's own node number `my` with packet id `id`; the id.
async fn text_from(client: &mut RawClient, my: u32, id: u32, body: &str) -> u32 {
    let packet = MeshPacket {
        from: my,
        ..common::proto::text_packet(u32::MAX, id, body)
    };
    client
        .send(ToRadio {
            payload_variant: Some(to_radio::PayloadVariant::Packet(packet)),
        })
        .await;
    id
}

/// Gives the radio `n` entries it holds unprotected, as nodes it heard: contacts pushed and
/// given back (the suite has one instance per mesh node, too few to be heard from). keysync
/// protects at most half of what a radio holds, so a scenario that pushes gives it a mesh.
async fn heard_nodes(radio: &Radio, n: u32) {
    let (mut client, my) = client(radio).await;
    for num in 0x7000..0x7000 + n {
        assert_eq!(push(&mut client, my, &contact_node(num)).await, 0);
        let id = client.admin(my, Admin::RemoveFavoriteNode(num)).await;
        let _ = client.queue_status(id).await;
    }
}

/// Pushes `node` from a bare client; the QueueStatus `res`.
async fn push(client: &mut RawClient, my: u32, node: &NodeInfo) -> i32 {
    let id = client.contact(my, node).await;
    client.queue_status(id).await.res
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn handshake_nodes_only_skip_force_and_reconnect_after_a_restart(fw: Firmware) {
    let mut radio = Radio::start(&fw, Setup::nodes(40)).await;
    heard_nodes(&radio, 14).await;
    let mark = radio.mark();
    let known = mesh(11, 6);
    let mut ks = Keysync::start(&radio, &known, |c| {
        c.sync_interval = Duration::from_secs(2);
        c.sync.cache_ttl = Duration::from_secs(120);
    });

    let first = ks.report(1).await;
    assert_eq!(first.trigger, Trigger::Startup);
    assert_eq!(first.outcome, Outcome::Forced, "{}", first.summary());
    assert_eq!(first.pushed, 6, "{}", first.summary());
    radio
        .wait_log(mark, "Client received add_contact command", 6)
        .await;
    assert!(
        radio.count_since(mark, "Save /prefs/nodes.proto") >= 6,
        "a flash write each"
    );

    // The next check: fingerprint unchanged, cache fresh — nothing on the wire.
    let wants_before = radio.count("want_config");
    let second = ks.report(2).await;
    assert_eq!(second.trigger, Trigger::Check);
    assert_eq!(second.outcome, Outcome::Skipped, "{}", second.summary());
    assert_eq!(second.frames_sent, 0);
    assert_eq!(radio.count("want_config"), wants_before);

    // The operator forces one: a nodes-only download, every key present, nothing pushed.
    let mark = radio.mark();
    ks.command(EngineCommand::ForceSync).await;
    let forced = ks.report(3).await;
    assert_eq!(
        (forced.trigger, forced.outcome),
        (Trigger::Operator, Outcome::Forced)
    );
    // The nodes the radio heard are trusted too (first use, from the handshake).
    assert_eq!(
        (forced.known, forced.in_radio, forced.pushed),
        (20, 20, 0),
        "{}",
        forced.summary()
    );
    assert_eq!(radio.count_since(mark, "Client received add_contact"), 0);

    // Killed (a power cut) and back on the same flash: keysync reconnects, syncs, and finds
    // every key still there.
    radio.restart().await;
    let after = loop {
        let n = ks.engine.snapshot.borrow().sync.history.len() + 1;
        let r = ks.report(n).await;
        if r.trigger == Trigger::Reconnect {
            break r;
        }
    };
    assert_eq!(after.outcome, Outcome::Forced, "{}", after.summary());
    assert_eq!(
        (after.in_radio, after.pushed),
        (20, 0),
        "{}",
        after.summary()
    );
    ks.quit().await;
    let nodes = node_list(&radio).await;
    for k in &known {
        let held = find(&nodes, k.num).expect("kept across the restart");
        assert_eq!(key_of(held), key_of(k));
    }
}

async fn a_push_lands_with_its_key_names_and_favourite(fw: Firmware) {
    let radio = Radio::start(&fw, Setup::nodes(40)).await;
    heard_nodes(&radio, 12).await;
    let mark = radio.mark();
    let known = mesh(12, 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, store) = seeded_store(&dir, &known);
    drop(store);
    // The binary, as an operator runs it once.
    sync_once(&radio, &db);
    radio
        .wait_log(mark, "Client received add_contact command", 5)
        .await;

    let nodes = node_list(&radio).await;
    for k in &known {
        let held = find(&nodes, k.num).unwrap_or_else(|| panic!("{:x} landed", k.num));
        let (sent, got) = (
            k.user.as_ref().expect("user"),
            held.user.as_ref().expect("the radio keeps the user"),
        );
        assert_eq!(got.public_key, sent.public_key, "the key");
        assert_eq!(
            (&got.long_name, &got.short_name, got.hw_model, got.role),
            (&sent.long_name, &sent.short_name, sent.hw_model, sent.role),
            "the user fields"
        );
        assert!(held.is_favorite, "add_contact makes a favourite");
    }
}

async fn a_nodedb_with_nothing_evictable_crashes_at_the_next_new_node(fw: Firmware) {
    // The hazard, shown on the binary so that the suite is known to see a crash: MaxNodes 20,
    // the own node and 19 favourites, then one more new node.
    let mut radio = Radio::start(&fw, Setup::nodes(20)).await;
    let (mut client, my) = client(&radio).await;
    for num in 0x100..0x100 + 19 {
        assert_eq!(push(&mut client, my, &contact_node(num)).await, 0);
    }
    radio
        .wait_log(0, "Client received add_contact command", 19)
        .await;
    let _ = client.contact(my, &contact_node(0x200)).await;
    if fw.is_develop() {
        // develop caps protected entries at MAX−2 and refuses instead (NodeDB.cpp, #10705).
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(radio.is_running(), "2.8 stays up:\n{}", radio.tail(20));
        let nodes = node_list(&radio).await;
        assert!(nodes.len() <= 20);
        let protected = nodes.iter().skip(1).filter(|n| n.is_favorite).count();
        assert!(protected <= 18, "protected capped at MAX−2: {protected}");
    } else {
        let status = radio.exit_status().await;
        assert_eq!(status.signal(), Some(6), "abort(): {status}");
        assert!(radio.count("std::out_of_range") >= 1, "{}", radio.tail(20));
        assert!(radio.count("Node database full") >= 1);
    }
}

async fn an_ignored_node_is_never_pushed(fw: Firmware) {
    let radio = Radio::start(&fw, Setup::nodes(40)).await;
    heard_nodes(&radio, 12).await;
    let mark = radio.mark();
    let known = mesh(13, 4);
    let ignored = known[0].num;
    {
        let (mut client, my) = client(&radio).await;
        assert_eq!(push(&mut client, my, &known[0]).await, 0);
        let id = client.admin(my, Admin::SetIgnoredNode(ignored)).await;
        let _ = client.queue_status(id).await;
    }
    radio.wait_log(mark, "Client received add_contact", 1).await;

    let mut ks = Keysync::start(&radio, &known, |_| {});
    let first = ks.report(1).await;
    assert_eq!(first.pushed, 3, "{}", first.summary());
    ks.quit().await;
    let nodes = node_list(&radio).await;
    let held = find(&nodes, ignored).expect("the ignored node stays listed");
    assert!(held.is_ignored);
    if !fw.is_develop() {
        assert!(key_of(held).is_empty(), "set_ignored_node erases the key");
    }
    assert_eq!(
        radio.count_since(mark, "Client received add_contact"),
        4,
        "one by the operator's client, three by keysync"
    );
}

async fn clients_share_the_firmware_through_the_proxy_on_one_connection(fw: Firmware) {
    let radio = Radio::start(&fw, Setup::nodes(40)).await;
    heard_nodes(&radio, 8).await;
    let setup = radio.mark();
    let cli = common::python::required_cli();
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, store) = seeded_store(&dir, &mesh(14, 3));
    drop(store);
    let (mut keysync, listen, _log) = common::python::spawn_logged(
        Command::new(env!("CARGO_BIN_EXE_keysync"))
            .args([
                "--headless",
                "--host",
                &radio.host(),
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--db")
            .arg(&db)
            .args(["--push-gap", "100ms"]),
        "serving downstream clients on ",
    );
    radio
        .wait_log(setup, "Client received add_contact", 3)
        .await;
    let mark = radio.mark();

    let script = "import sys, time, meshtastic.tcp_interface\n\
        i = meshtastic.tcp_interface.TCPInterface(hostname=sys.argv[1], portNumber=int(sys.argv[2]))\n\
        print('nodes', len(i.nodes or {}), flush=True)\n\
        i.sendText('hello from the bot')\n\
        time.sleep(4)\n\
        print('connected', i.isConnected.is_set(), flush=True)\n\
        i.close()\n";
    let (host, port) = listen.split_once(':').expect("host:port");
    let bot = Command::new(common::python::python())
        .args(["-c", script, host, port])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the bot starts");
    let nodes = common::python::run_client(&cli, &listen, "--nodes");
    let info = common::python::run_client(&cli, &listen, "--info");
    let sent = common::python::run_client_args(&cli, &listen, &["--sendtext", "hi from the cli"]);
    let bot = bot.wait_with_output().expect("the bot ends");
    let said = String::from_utf8_lossy(&bot.stdout);
    let _ = keysync.kill();
    let _ = keysync.wait();

    assert!(
        said.contains("connected True"),
        "the bot kept its link: {said}"
    );
    assert!(
        nodes.contains(&keysync::engine::node_id(mesh(14, 1)[0].num)),
        "{nodes}"
    );
    assert!(info.contains("2.7.26") || fw.is_develop(), "{info}");
    assert!(sent.contains("Sending text message"), "{sent}");
    assert_eq!(
        radio.count_since(mark, "Force close previous TCP connection"),
        0,
        "one TCP connection on the firmware's side:\n{}",
        radio.tail(30)
    );
}

/// An address on the namespace's loopback device that is not 127/8: a client connecting to it
/// comes from it, so keysync sees a remote client.
fn remote_address() -> std::net::Ipv4Addr {
    let addr = std::net::Ipv4Addr::new(10, 77, 0, 1);
    let out = Command::new("ip")
        .args(["addr", "add", "10.77.0.1/32", "dev", "lo"])
        .output()
        .expect("ip runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || said.contains("File exists") || said.contains("already assigned"),
        "cannot add {addr} to lo: {said}"
    );
    addr
}

async fn encrypted_admin_through_keysync_changes_nothing(fw: Firmware) {
    use keysync::engine::ChannelKey;
    let radio = Radio::start(&fw, Setup::nodes(20)).await;
    let long_fast = ChannelKey::default_channel();
    let owner = |name: &str| {
        Admin::SetOwner(User {
            long_name: name.into(),
            short_name: "PW".into(),
            ..User::default()
        })
    };
    // Straight to the firmware, the encrypted set_owner is run as local admin: the attack is
    // real on this binary.
    let mark = radio.mark();
    let (mut direct, my) = client(&radio).await;
    let id = direct
        .sealed_admin(my, owner("DIRECT-ENC"), &long_fast)
        .await;
    let _ = direct.queue_status(id).await;
    radio.wait_log(mark, "DIRECT-ENC", 1).await;
    drop(direct);

    let dir = tempfile::tempdir().expect("tempdir");
    let (db, store) = seeded_store(&dir, &[]);
    drop(store);
    let (mut keysync, listen, log) = common::python::spawn_logged(
        Command::new(env!("CARGO_BIN_EXE_keysync"))
            .args(["--headless", "--host", &radio.host()])
            .args(["--listen", "0.0.0.0:0", "--deny-admin", "reboot"])
            .arg("--db")
            .arg(&db),
        "serving downstream clients on ",
    );
    let port: u16 = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port");
    let mark = radio.mark();
    // A remote client: set_owner is admin, allowed from loopback only; the reboot is denied.
    let remote = std::net::SocketAddr::from((remote_address(), port));
    let mut attacker = RawClient::connect(remote).await;
    let my = my_node_num(&attacker.download(7).await);
    attacker.number_from(0x5100);
    attacker
        .sealed_admin(my, owner("PWNED-ENC"), &long_fast)
        .await;
    attacker
        .sealed_admin(my, Admin::RebootSeconds(60), &long_fast)
        .await;
    // A loopback client: its encrypted reboot is denied as a clear one would be.
    let mut local = RawClient::connect(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await;
    local.download(8).await;
    local.number_from(0x5200);
    local
        .sealed_admin(my, Admin::RebootSeconds(60), &long_fast)
        .await;
    // Each client's packets reach the radio in order: once its text is answered, what it sent
    // before has reached the radio or never will.
    for client in [&mut attacker, &mut local] {
        let text = client
            .packet(u32::MAX, PortNum::TextMessageApp, b"after".to_vec())
            .await;
        assert_eq!(client.queue_status(text).await.res, 0);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = keysync.kill();
    let _ = keysync.wait();
    let log = log.lock().expect("log").join("\n");
    assert_eq!(
        (
            radio.count_since(mark, "PWNED-ENC"),
            radio.count_since(mark, "Reboot in")
        ),
        (0, 0),
        "the firmware ran none of it:\n{}",
        radio.tail(40)
    );
    let owner = node_list(&radio)
        .await
        .into_iter()
        .find(|n| n.num == my)
        .and_then(|n| n.user)
        .map(|u| u.long_name);
    assert_eq!(owner.as_deref(), Some("DIRECT-ENC"));
    assert!(log.contains("(encrypted with a channel key)"), "{log}");
    assert!(log.contains("dropped (--deny-admin)"), "{log}");
    assert!(
        log.contains("admin is allowed from loopback clients only"),
        "{log}"
    );
}

async fn heartbeats_queue_status_and_the_text_limit_as_the_firmware_does_them(fw: Firmware) {
    let radio = Radio::start(&fw, Setup::nodes(40)).await;
    let (mut client, my) = client(&radio).await;

    // ≥ 2.7.6 answers every heartbeat with a QueueStatus (PhoneAPI.cpp).
    client.send(heartbeat(7)).await;
    let answer = client
        .recv_until("the heartbeat's answer", |f| {
            matches!(
                f.payload_variant,
                Some(from_radio::PayloadVariant::QueueStatus(_))
            )
        })
        .await;
    let Some(from_radio::PayloadVariant::QueueStatus(q)) = answer.payload_variant else {
        unreachable!()
    };
    assert_eq!((q.res, q.mesh_packet_id), (0, 0));

    // A packet gets its QueueStatus, by id.
    let first = client
        .packet(u32::MAX, PortNum::TextMessageApp, b"one".to_vec())
        .await;
    let q = client.queue_status(first).await;
    assert_eq!(q.res, 0);
    assert!(q.maxlen > 0);

    // A second text on the same connection within 2 s is over the limit (PhoneAPI.cpp). The
    // routing error RATE_LIMIT_EXCEEDED reaches the client only when the packet names the
    // radio as its sender: from 0 (as most clients send) it goes to node 0 over the mesh, and
    // the client sees nothing but its QueueStatus `res = 0`.
    let mark = radio.mark();
    let silent = client
        .packet(u32::MAX, PortNum::TextMessageApp, b"two".to_vec())
        .await;
    assert_eq!(client.queue_status(silent).await.res, 0);
    radio.wait_log(mark, "Rate limit portnum 1", 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let first = text_from(&mut client, my, 0x7100, "three").await;
    assert_eq!(client.queue_status(first).await.res, 0);
    let named = text_from(&mut client, my, 0x7101, "four").await;
    let refused = client
        .recv_until("the rate limit's routing error", |f| {
            routing_error(f).is_some()
        })
        .await;
    assert_eq!(
        routing_error(&refused),
        Some((routing::Error::RateLimitExceeded, named))
    );
    assert!(
        client
            .seen
            .iter()
            .all(|f| routing_error(f).is_none_or(|(_, id)| id != silent)),
        "no routing error for the text from 0"
    );

    // add_contact to the own node: res 0 (Router.cpp ERRNO_OK).
    assert_eq!(push(&mut client, my, &contact_node(0x300)).await, 0);
}

async fn a_node_number_is_the_crc32_of_its_key_from_2_8(fw: Firmware) {
    // NodeDB.cpp (develop): my_node_num = crc32(public key); keysync takes a trusted key seen
    // under that number as the same node, renumbered (store.rs `claimed`).
    let setup = Setup::nodes(20);
    let hwid = setup.hwid;
    let radio = Radio::start(&fw, setup).await;
    let mut client = RawClient::connect(radio.addr()).await;
    let frames = client.download(7).await;
    let my = my_node_num(&frames);
    let own = find(&node_infos(&frames), my)
        .cloned()
        .expect("own node_info");
    if fw.is_develop() {
        let key = keysync::engine::valid_key(key_of(&own)).expect("2.8 makes a key at boot");
        assert_eq!(my, keysync::engine::num_of_key(&key));
        assert_ne!(my, hwid, "-h sets the MAC only");
    } else {
        assert_eq!(my, hwid, "2.7: the number -h gives");
    }
}

async fn a_release_restarts_the_lora_chip_and_releases_are_rationed(fw: Firmware) {
    // Below 2.8 remove_favorite_node goes through saveChanges → reloadConfig → the radio
    // reconfigures its LoRa chip ("[Router] Set radio:"): keysync gives slots back rarely.
    let mut radio = Radio::start(&fw, Setup::nodes(20)).await;
    heard_nodes(&radio, 9).await;
    let known = mesh(17, 12);
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, store) = seeded_store(&dir, &known);
    drop(store);
    // Slots for the nine heard nodes and five of the twelve keys.
    let slots = ["--key-slots", "14"];
    sync_once_with(&radio, &db, &slots);
    let ours = node_list(&radio)
        .await
        .iter()
        .filter(|n| n.is_favorite && known.iter().any(|k| k.num == n.num))
        .count();
    assert_eq!(ours, 5, "half of the 10 entries the radio held");
    // Two hours later (the store's clock set back): the seven keys left out are pinned now.
    // The radio holds 15 entries: two fit beside keysync's five, each further one needs a slot
    // given back first — two at most this hour.
    {
        let conn = rusqlite::Connection::open(&db).expect("opens the store");
        conn.execute_batch(
            "UPDATE nodes SET last_pushed = last_pushed - 7200000 WHERE last_pushed IS NOT NULL;
             UPDATE flash_writes SET at = at - 7200000;",
        )
        .expect("sets the clock back");
        let mut store = keysync::engine::Store::open(&db).expect("store opens");
        let on_radio: Vec<u32> = node_list(&radio).await.iter().map(|n| n.num).collect();
        for k in known.iter().filter(|k| !on_radio.contains(&k.num)) {
            store.set_pinned(k.num, true).expect("pins");
        }
    }
    let mark = radio.mark();
    sync_once_with(
        &radio,
        &db,
        &[&slots[..], &["--max-releases", "2"]].concat(),
    );
    let released = radio.count_since(mark, "Client received remove_favorite_node");
    assert_eq!(released, 2, "--max-releases 2");
    assert_eq!(
        radio.count_since(mark, "[Router] Set radio:"),
        2,
        "each release restarted the LoRa chip:\n{}",
        radio.tail(40)
    );
    assert!(radio.is_running());
    let nodes = node_list(&radio).await;
    let (protected, held) = protected_of(&nodes, nodes.first().map_or(0, |n| n.num));
    assert!(2 * protected <= held, "{protected} protected of {held}");
}

async fn keysync_gives_its_slots_back_and_an_evicted_node_still_gets_pki(fw: Firmware) {
    // develop: push, then give the favourite back once it has served; the warm tier keeps an
    // evicted node's key, so a DM to it is still encrypted ("Use PKI!").
    let radio = Radio::start(&fw, Setup::nodes(20)).await;
    heard_nodes(&radio, 12).await;
    let known = mesh(16, 3);
    let mut ks = Keysync::start(&radio, &known, |c| {
        c.sync.release_hold = Duration::from_millis(500);
    });
    let first = ks.report(1).await;
    assert_eq!(first.pushed, 3, "{}", first.summary());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mark = radio.mark();
    ks.command(EngineCommand::ForceSync).await;
    let second = ks.report(2).await;
    assert_eq!(second.released, 3, "{}", second.summary());
    ks.quit().await;
    assert_eq!(
        radio.count_since(mark, "Client received remove_favorite_node"),
        3
    );
    assert_eq!(
        radio.count_since(mark, "Set radio:"),
        0,
        "no LoRa restart on 2.8"
    );
    let nodes = node_list(&radio).await;
    for k in &known {
        let held = find(&nodes, k.num).expect("still listed");
        assert!(!held.is_favorite, "given back");
        assert_eq!(key_of(held), key_of(k), "key kept");
    }

    // Newcomers push the three out of the NodeDB (into the warm tier)…
    let (mut client, my) = client(&radio).await;
    for num in 0x7100..0x7100 + 24 {
        assert_eq!(push(&mut client, my, &contact_node(num)).await, 0);
        let id = client.admin(my, Admin::RemoveFavoriteNode(num)).await;
        let _ = client.queue_status(id).await;
    }
    let nodes = node_infos(&client.download(NODES_ONLY_NONCE).await);
    let evicted = known[0].num;
    assert!(find(&nodes, evicted).is_none(), "evicted from the NodeDB");
    // …and a DM to one of them still goes out encrypted with its key.
    let mark = radio.mark();
    let dm = MeshPacket {
        from: my,
        ..common::proto::text_packet(evicted, 0x7300, "still encrypted")
    };
    client
        .send(ToRadio {
            payload_variant: Some(to_radio::PayloadVariant::Packet(dm)),
        })
        .await;
    radio.wait_log(mark, "Use PKI!", 1).await;
}

/// Protected entries (own node aside) and entries in all, in a node list.
fn protected_of(nodes: &[NodeInfo], my: u32) -> (usize, usize) {
    let protected = nodes
        .iter()
        .filter(|n| n.num != my && (n.is_favorite || n.is_ignored || n.is_key_manually_verified))
        .count();
    (protected, nodes.len())
}

/// `keysync sync --once` against `radio` with the store at `db`; its stdout, after asserting
/// that it succeeded.
fn sync_once(radio: &Radio, db: &Path) -> String {
    sync_once_with(radio, db, &[])
}

/// [`sync_once`] with more options.
fn sync_once_with(radio: &Radio, db: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_keysync"))
        .args(["sync", "--once", "--host", &radio.host()])
        .arg("--db")
        .arg(db)
        .args(["--push-gap", "100ms"])
        .args(args)
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .output()
        .expect("keysync runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sync --once failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn a_small_radio_never_crashes_whatever_the_store_holds(fw: Firmware) {
    // MaxNodes 20 (not told over the API) and 60 trusted keys: keysync at 46f6436 pushed 20
    // and crashed this radio.
    radio_full_of_heard_nodes(fw, 20, 60).await;
}

async fn a_radio_of_60_with_300_trusted_keys_never_crashes(fw: Firmware) {
    radio_full_of_heard_nodes(fw, 60, 300).await;
}

/// A radio of `max_nodes` full of nodes it heard (here: contacts given back, so neither
/// favourite nor verified), one of them the operator's favourite, and a store of `keys` other
/// trusted keys: sync, an unknown node speaking, a restart, sync again — no crash, at most half
/// protected, the operator's favourite kept.
async fn radio_full_of_heard_nodes(fw: Firmware, max_nodes: usize, keys: usize) {
    let cli = common::python::required_cli();
    let _mesh = common::firmware::mesh_lock().await;
    let mut radio = Radio::start(&fw, Setup::nodes(max_nodes)).await;
    let mesh_node = Radio::start(&fw, Setup::nodes(40)).await;
    tokio::join!(radio.join_mesh(&cli), mesh_node.join_mesh(&cli));
    let operators = contact_node(0x6000);
    {
        let (mut client, my) = client(&radio).await;
        let heard = u32::try_from(max_nodes - 1).expect("a small NodeDB");
        for num in 0x6000..0x6000 + heard {
            assert_eq!(push(&mut client, my, &contact_node(num)).await, 0);
            let id = client.admin(my, Admin::RemoveFavoriteNode(num)).await;
            let _ = client.queue_status(id).await;
        }
        let id = client
            .admin(my, Admin::SetFavoriteNode(operators.num))
            .await;
        let _ = client.queue_status(id).await;
        let nodes = node_infos(&client.download(NODES_ONLY_NONCE).await);
        assert_eq!(nodes.len(), max_nodes, "full");
        assert_eq!(
            protected_of(&nodes, my).0,
            1,
            "the operator's favourite only"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, store) = seeded_store(&dir, &mesh(21, keys));
    drop(store);

    let mark = radio.mark();
    sync_once(&radio, &db);
    assert!(radio.is_running(), "{}", radio.tail(20));
    let pushed = radio.count_since(mark, "Client received add_contact");
    assert!(pushed > 0, "keysync pushed nothing");
    let nodes = node_list(&radio).await;
    let (protected, held) = protected_of(&nodes, nodes.first().map_or(0, |n| n.num));
    assert!(
        2 * protected <= held,
        "{protected} protected of {held} after {pushed} pushes"
    );

    // A node the gateway never heard speaks: the radio evicts, it does not crash.
    let (mut other, _) = client(&mesh_node).await;
    let mark = radio.mark();
    let _ = other
        .packet(u32::MAX, PortNum::TextMessageApp, b"hello gateway".to_vec())
        .await;
    radio.wait_log(mark, "Received text msg", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(radio.is_running(), "{}", radio.tail(20));

    // Killed and back on its flash; a forced sync again pushes nothing past the invariant.
    radio.restart().await;
    sync_once(&radio, &db);
    assert!(radio.is_running(), "{}", radio.tail(20));
    let nodes = node_list(&radio).await;
    let my = nodes.first().map_or(0, |n| n.num);
    let (protected, held) = protected_of(&nodes, my);
    assert!(
        2 * protected <= held,
        "{protected} of {held} after the restart"
    );
    let kept = find(&nodes, operators.num).expect("the operator's node stays");
    assert!(kept.is_favorite, "the operator's favourite stays theirs");
    assert_eq!(radio.count("std::out_of_range"), 0);
}

// ---------------------------------------------------------------------------------------------
// The simulator held to the firmware

/// One scripted client session, as plain lines: what the radio answered at each step. Run
/// against the firmware and against `keysync sim` with the same version and capacity, the two
/// transcripts must agree but for the differences listed in [`ACCEPTED`].
#[derive(Debug, Default)]
struct Transcript {
    steps: Vec<(&'static str, String)>,
}

impl Transcript {
    fn note(&mut self, step: &'static str, what: impl Into<String>) {
        self.steps.push((step, what.into()));
    }
}

/// Differences between the simulator and the firmware that stay, each with the reason.
const ACCEPTED: &[(&str, &str)] = &[];

/// The NodeDB's size in the session: small, so that overfilling takes a few pushes.
const DIFF_CAPACITY: usize = 12;

/// A node list as the transcript shows it: every node but the radio's own, by number.
fn listing(nodes: &[NodeInfo], my: u32) -> String {
    let mut rows: Vec<String> = nodes
        .iter()
        .filter(|n| n.num != my)
        .map(|n| {
            let user = n.user.clone().unwrap_or_default();
            let key = if user.public_key.is_empty() {
                "-".to_owned()
            } else {
                format!("{:02x}{:02x}", user.public_key[0], user.public_key[1])
            };
            format!(
                "{:x} key={key} name={:?} fav={} ign={} ver={}",
                n.num,
                user.long_name,
                u8::from(n.is_favorite),
                u8::from(n.is_ignored),
                u8::from(n.is_key_manually_verified)
            )
        })
        .collect();
    rows.sort();
    format!("{} nodes: {}", rows.len(), rows.join("; "))
}

/// Reads whatever the radio sends for `wait` (into `client.seen`).
async fn drain(client: &mut RawClient, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, client.recv()).await {}
}

/// Whether the radio closed the connection within a short while (it crashed or hung up).
async fn closed_soon(client: &mut RawClient) -> bool {
    client.send(heartbeat(9)).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), client.recv()).await {
            Ok(None) => return true,
            Ok(Some(f)) if matches!(f.payload_variant, Some(from_radio::PayloadVariant::QueueStatus(ref q)) if q.mesh_packet_id == 0) =>
            {
                return false;
            }
            Ok(Some(_)) => {}
            Err(_) => return false,
        }
    }
}

/// Runs the scripted session against the radio at `addr` (a fresh one, `DIFF_CAPACITY` nodes,
/// nothing but its own node in its NodeDB).
async fn scripted_session(addr: std::net::SocketAddr, mesh: Speaker<'_>) -> Transcript {
    let mut t = Transcript::default();
    let mut client = RawClient::connect(addr).await;
    let frames = client.download(7).await;
    let my = my_node_num(&frames);
    handshake_steps(&mut client, &frames, &mut t).await;
    contact_steps(&mut client, my, &mut t).await;
    limit_steps(&mut client, my, &mut t).await;
    heard_steps(&mut client, my, mesh, &mut t).await;
    overfill_steps(&mut client, my, &mut t).await;
    t
}

/// A node on the mesh that the radio under test never heard.
enum Speaker<'a> {
    /// A second meshtasticd on the firmware's UDP mesh.
    Firmware(&'a Radio),
    /// The simulated mesh.
    Sim(&'a keysync::sim::SimHandle),
}

impl Speaker<'_> {
    /// Sends a text to everyone; the speaker's node number.
    async fn speak(&self) -> u32 {
        match self {
            Self::Firmware(radio) => {
                let (mut client, num) = client(radio).await;
                let _ = client
                    .packet(u32::MAX, PortNum::TextMessageApp, b"hello mesh".to_vec())
                    .await;
                num
            }
            Self::Sim(sim) => {
                let num = sim
                    .mesh()
                    .first()
                    .expect("a node on the simulated mesh")
                    .num;
                sim.hear_from(num, PortNum::TextMessageApp);
                num
            }
        }
    }
}

/// A node the radio never heard speaks: what the radio's node list says of it after.
async fn heard_steps(client: &mut RawClient, my: u32, mesh: Speaker<'_>, t: &mut Transcript) {
    let speaker = mesh.speak().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut seen = None;
    while seen.is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let list = node_infos(&client.download(NODES_ONLY_NONCE).await);
        seen = find(&list, speaker).cloned();
    }
    let what = seen.map_or("not listed".to_owned(), |n| {
        let user = n.user.unwrap_or_default();
        format!(
            "listed, key={} named={} fav={}",
            !user.public_key.is_empty(),
            !user.long_name.is_empty(),
            n.is_favorite
        )
    });
    let _ = my;
    t.note("a node the radio never heard speaks", what);
}

/// The handshake's order and count, a heartbeat's answer, a nodes-only download.
async fn handshake_steps(client: &mut RawClient, frames: &[FromRadio], t: &mut Transcript) {
    use meshtastic::protobufs::from_radio::PayloadVariant as V;
    let my = my_node_num(frames);
    let kinds: Vec<&str> = frames
        .iter()
        .map(|f| match f.payload_variant {
            Some(V::MyInfo(_)) => "my_info",
            Some(V::NodeInfo(_)) => "node_info",
            Some(V::Metadata(_)) => "metadata",
            Some(V::Channel(_)) => "channel",
            Some(V::ConfigCompleteId(_)) => "complete",
            _ => "other",
        })
        .filter(|k| *k != "other")
        .collect();
    t.note("handshake order", kinds.join(" "));
    t.note(
        "handshake nodedb_count",
        common::raw::nodedb_count(frames).to_string(),
    );

    client.send(heartbeat(7)).await;
    let answer = client
        .recv_until("a heartbeat answer", |f| {
            matches!(f.payload_variant, Some(V::QueueStatus(_)))
        })
        .await;
    if let Some(V::QueueStatus(q)) = answer.payload_variant {
        t.note(
            "heartbeat answer",
            format!("res={} id={}", q.res, q.mesh_packet_id),
        );
    }

    let nodes_only = client.download(NODES_ONLY_NONCE).await;
    let first = node_infos(&nodes_only)
        .first()
        .map(|n| (n.num == my, n.is_favorite));
    t.note(
        "69421 on a fresh radio",
        format!(
            "my_info={} own first={first:?} {}",
            nodes_only
                .iter()
                .any(|f| matches!(f.payload_variant, Some(V::MyInfo(_)))),
            listing(&node_infos(&nodes_only), my)
        ),
    );
}

/// add_contact, the operator's favourite, ignore and remove, should_ignore, a new key.
async fn contact_steps(client: &mut RawClient, my: u32, t: &mut Transcript) {
    // add_contacts: each a favourite with its key.
    let contacts: Vec<NodeInfo> = (0..6).map(|i| contact_node(0x5000 + i)).collect();
    let mut answers = Vec::new();
    for c in &contacts {
        answers.push(push(client, my, c).await);
    }
    t.note("add_contact answers", format!("{answers:?}"));
    let list = node_infos(&client.download(NODES_ONLY_NONCE).await);
    t.note("after 6 add_contacts", listing(&list, my));

    // The operator's admin: favourite off and on, ignore, remove.
    let ops = [
        Admin::RemoveFavoriteNode(contacts[0].num),
        Admin::RemoveFavoriteNode(contacts[1].num),
        Admin::SetFavoriteNode(contacts[1].num),
        Admin::SetIgnoredNode(contacts[2].num),
        Admin::RemoveByNodenum(contacts[3].num),
    ];
    for op in ops {
        let id = client.admin(my, op).await;
        let _ = client.queue_status(id).await;
    }
    let list = node_infos(&client.download(NODES_ONLY_NONCE).await);
    t.note("after favourite, ignore, remove", listing(&list, my));

    // A contact that asks to be ignored; one that brings another key for a node held.
    let id = client
        .admin(my, Admin::AddContact(ignoring(&contact_node(0x5100))))
        .await;
    let _ = client.queue_status(id).await;
    let mut rekeyed = contact_node(contacts[4].num);
    if let Some(u) = rekeyed.user.as_mut() {
        u.public_key = contact_node(0x6000).user.unwrap_or_default().public_key;
        u.long_name = "Rekeyed".into();
    }
    t.note(
        "add_contact with another key",
        format!("res={}", push(client, my, &rekeyed).await),
    );
    let list = node_infos(&client.download(NODES_ONLY_NONCE).await);
    t.note("after should_ignore and a new key", listing(&list, my));
}

/// A repeated packet id; texts over the per-connection limit.
async fn limit_steps(client: &mut RawClient, my: u32, t: &mut Transcript) {
    use meshtastic::protobufs::from_radio::PayloadVariant as V;
    // A packet id repeated within the last 20 is dropped without an answer.
    let id = client
        .packet(u32::MAX, PortNum::PrivateApp, b"once".to_vec())
        .await;
    let _ = client.queue_status(id).await;
    client
        .send(ToRadio {
            payload_variant: Some(to_radio::PayloadVariant::Packet(common::proto::packet(
                u32::MAX,
                id,
                PortNum::PrivateApp,
                b"again".to_vec(),
            ))),
        })
        .await;
    let repeated_answered = !closed_soon(client).await
        && client.seen.iter().rev().take(4).any(
            |f| matches!(&f.payload_variant, Some(V::QueueStatus(q)) if q.mesh_packet_id == id),
        );
    t.note(
        "a repeated packet id",
        format!("answered={repeated_answered}"),
    );

    // Texts over the per-connection limit, from 0 and from the radio's own number.
    let a = text_from(client, 0, 0x7200, "a").await;
    let _ = client.queue_status(a).await;
    let b = text_from(client, 0, 0x7201, "b").await;
    let b_res = client.queue_status(b).await.res;
    let c = text_from(client, my, 0x7202, "c").await;
    let c_res = client.queue_status(c).await.res;
    // The routing error may come after the QueueStatus: read what comes for a while.
    drain(client, Duration::from_millis(1500)).await;
    let errors: Vec<String> = client
        .seen
        .iter()
        .filter_map(routing_error)
        .filter(|(_, id)| *id == b || *id == c)
        .map(|(e, id)| {
            format!(
                "{:?} for {}",
                e,
                if id == b { "from 0" } else { "from own" }
            )
        })
        .collect();
    t.note(
        "texts over the limit",
        format!("res from 0={b_res} from own={c_res} errors={errors:?}"),
    );
}

/// New contacts until nothing is evictable, then one more: a crash, or what the NodeDB holds.
async fn overfill_steps(client: &mut RawClient, my: u32, t: &mut Transcript) {
    let held = node_infos(&client.download(NODES_ONLY_NONCE).await);
    let mut crashed = false;
    for next in (0x5200..).take(DIFF_CAPACITY + 1 - held.len()) {
        let id = client.contact(my, &contact_node(next)).await;
        if tokio::time::timeout(Duration::from_secs(3), client.queue_status(id))
            .await
            .is_err()
            || closed_soon(client).await
        {
            crashed = true;
            break;
        }
    }
    t.note("overfilled with favourites", format!("closed={crashed}"));
    if !crashed {
        let list = node_infos(&client.download(NODES_ONLY_NONCE).await);
        let protected = list
            .iter()
            .filter(|n| {
                n.num != my && (n.is_favorite || n.is_ignored || n.is_key_manually_verified)
            })
            .count();
        t.note(
            "overfilled NodeDB",
            format!("{} nodes, {protected} protected", list.len()),
        );
    }
}

/// add_contact's contact for `node`, asking the radio to ignore it.
fn ignoring(node: &NodeInfo) -> SharedContact {
    SharedContact {
        node_num: node.num,
        user: node.user.clone(),
        should_ignore: true,
        ..SharedContact::default()
    }
}

async fn the_simulator_answers_a_scripted_session_as_the_firmware_does(fw: Firmware) {
    let cli = common::python::required_cli();
    let _mesh = common::firmware::mesh_lock().await;
    let radio = Radio::start(&fw, Setup::nodes(DIFF_CAPACITY)).await;
    let speaker = Radio::start(&fw, Setup::nodes(20)).await;
    tokio::join!(radio.join_mesh(&cli), speaker.join_mesh(&cli));
    let real = scripted_session(radio.addr(), Speaker::Firmware(&speaker)).await;
    // One node on the simulated mesh, not in the radio, that just booted (as the firmware's
    // speaker did): the speaker.
    let sim = keysync::sim::SimHandle::start(keysync::sim::SimConfig {
        nodes: 1,
        in_radio: Some(0),
        nodeinfo_sent_at_start: false,
        capacity: Some(DIFF_CAPACITY),
        profile: keysync::sim::Profile::new(
            fw.version,
            keysync::sim::Hw::Linux,
            keysync::sim::SimRole::Client,
        )
        .expect("a profile"),
        reboot_time: Duration::from_secs(1),
        ..common::sim_config(0)
    })
    .expect("the sim starts");
    let simulated = scripted_session(sim.addr(), Speaker::Sim(&sim)).await;

    let mut differences = Vec::new();
    for ((step, want), (_, got)) in real.steps.iter().zip(&simulated.steps) {
        if want != got && !ACCEPTED.iter().any(|(s, _)| s == step) {
            differences.push(format!("{step}:\n  firmware: {want}\n  sim:      {got}"));
        }
    }
    assert_eq!(
        real.steps.len(),
        simulated.steps.len(),
        "the sessions took different paths:\nfirmware {:#?}\nsim {:#?}",
        real.steps,
        simulated.steps
    );
    assert!(
        differences.is_empty(),
        "the simulator differs from meshtasticd {}:\n{}",
        fw.version,
        differences.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Contact URLs between keysync, the Python CLI and the firmware

/// `keysync` with a store of its own and no config file.
fn keysync_cmd(db: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keysync"));
    cmd.env("XDG_CONFIG_HOME", "/nonexistent")
        .arg("--db")
        .arg(db);
    cmd
}

fn keysync_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("keysync runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "keysync failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn the_firmwares_contact_url_imports_with_its_key(fw: Firmware) {
    let radio = Radio::start(&fw, Setup::nodes(40)).await;
    // A node the radio holds with its key (2.7.26's own node has none here; 2.8's has one).
    let other = contact_node(0x7abc);
    {
        let (mut client, my) = client(&radio).await;
        assert_eq!(push(&mut client, my, &other).await, 0);
    }
    radio
        .wait_log(0, "Client received add_contact command", 1)
        .await;
    let nodes = node_list(&radio).await;
    let own = nodes.first().expect("the radio's own node first");
    let mut expected = vec![find(&nodes, other.num).expect("held").clone()];
    if key_of(own).len() == 32 {
        expected.push(own.clone());
    }

    let cli = common::python::required_cli();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("k.db");
    for node in &expected {
        let id = keysync::engine::node_id(node.num);
        let said = common::python::run_client_args(&cli, &radio.host(), &["--contact-qr", &id]);
        let url = said
            .lines()
            .find_map(|l| l.strip_prefix("Contact URL: "))
            .unwrap_or_else(|| panic!("the CLI prints the URL:\n{said}"))
            .trim()
            .to_owned();
        let summary = keysync_ok(keysync_cmd(&db).args(["import", "url", &url]));
        assert!(summary.starts_with("imported 1,"), "{url}: {summary}");
    }

    let json = keysync_ok(keysync_cmd(&db).args(["keys", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&json).expect("keys --json");
    let rows = rows.as_array().expect("a list");
    assert_eq!(rows.len(), expected.len(), "{json}");
    for node in &expected {
        let id = keysync::engine::node_id(node.num);
        let row = rows
            .iter()
            .find(|r| r["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} imported: {json}"));
        let user = node.user.as_ref().expect("a user");
        assert_eq!(
            (&row["state"], &row["source"]),
            (&"trusted".into(), &"import".into())
        );
        assert_eq!(row["long_name"], user.long_name.as_str());
        let key = row["key"].as_str().and_then(keysync::engine::parse_key);
        assert_eq!(
            key.map(|k| k.to_vec()),
            Some(user.public_key.clone()),
            "{id}: the same key"
        );
    }
}

async fn a_contact_url_keysync_exports_lands_in_the_nodedb_through_the_python_cli(fw: Firmware) {
    let radio = Radio::start(&fw, Setup::nodes(40)).await;
    heard_nodes(&radio, 6).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = mesh(25, 1).remove(0);
    let (db, store) = seeded_store(&dir, std::slice::from_ref(&node));
    drop(store);
    let url = keysync_ok(keysync_cmd(&db).args(["keys", "export", "--format", "urls"]));
    let url = url.trim();
    assert!(url.starts_with("https://meshtastic.org/v/#"), "{url}");

    let mark = radio.mark();
    let cli = common::python::required_cli();
    common::python::run_client_args(&cli, &radio.host(), &["--add-contact", url]);
    radio
        .wait_log(mark, "Client received add_contact command", 1)
        .await;
    let nodes = node_list(&radio).await;
    let held = find(&nodes, node.num).expect("the contact is in the radio's NodeDB");
    let (sent, got) = (
        node.user.as_ref().expect("user"),
        held.user.as_ref().expect("the radio keeps the user"),
    );
    assert_eq!(got.public_key, sent.public_key, "the key");
    assert_eq!(
        (&got.long_name, &got.short_name, got.hw_model),
        (&sent.long_name, &sent.short_name, sent.hw_model)
    );
}
