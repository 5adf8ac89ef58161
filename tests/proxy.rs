//! Proxy mode: keysync owns the radio's one TCP slot and serves downstream clients, against the
//! simulated radio over real TCP.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use keysync::engine::EngineHandle;
use keysync::engine::ProxyConfig;
use keysync::engine::{self, Contact};
use keysync::sim::{Fault, SimHandle};
use meshtastic::protobufs::{FromRadio, ToRadio, from_radio};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// The client side of a raw connection: writes ToRadio, reads FromRadio.
type Client = Framed<TcpStream, keysync::engine::ClientCodec>;

const SEC: Duration = Duration::from_secs(1);

/// A simulated radio with `nodes` nodes, and keysync proxying it after its first sync.
struct Proxied {
    _dir: tempfile::TempDir,
    sim: SimHandle,
    engine: EngineHandle,
    snap: tokio::sync::watch::Receiver<keysync::engine::Snapshot>,
    addr: std::net::SocketAddr,
}

/// The proxy tests' one set-up; `edit` changes the proxy settings from the tests' defaults.
async fn started(nodes: usize, edit: impl FnOnce(&mut ProxyConfig)) -> Proxied {
    started_on(sim_config(nodes), edit).await
}

/// [`started`] with a radio set up as `sim` says.
async fn started_on(sim: keysync::sim::SimConfig, edit: impl FnOnce(&mut ProxyConfig)) -> Proxied {
    started_engine(sim, |c| {
        if let Some(proxy) = c.proxy.as_mut() {
            edit(proxy);
        }
    })
    .await
}

/// [`started_on`], with `edit` changing the engine's settings (the proxy's among them).
async fn started_engine(
    sim: keysync::sim::SimConfig,
    edit: impl FnOnce(&mut keysync::engine::EngineConfig),
) -> Proxied {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim(sim);
    let engine = proxied_engine(&sim, &dir, edit);
    let mut snap = engine.snapshot.clone();
    nth_report(&mut snap, 1).await;
    let addr = snap.borrow().proxy_addr.expect("proxy address");
    Proxied {
        _dir: dir,
        sim,
        engine,
        snap,
        addr,
    }
}

/// A client that never reads, with a tiny receive window, that has sent `bytes`.
async fn never_reading(addr: std::net::SocketAddr, bytes: &[u8]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small window");
    let mut stuck = socket.connect(addr).await.expect("connects");
    tokio::io::AsyncWriteExt::write_all(&mut stuck, bytes)
        .await
        .expect("writes");
    stuck
}

async fn connect(engine: &EngineHandle) -> Client {
    let addr = engine.snapshot.borrow().proxy_addr.expect("proxy address");
    let stream = TcpStream::connect(addr)
        .await
        .expect("connects to the proxy");
    Framed::new(stream, keysync::engine::ClientCodec::new())
}

/// Changes the contact inside an encoded add_contact, as a client could send it.
fn edit_contact(msg: &mut ToRadio, edit: impl FnOnce(&mut meshtastic::protobufs::SharedContact)) {
    let Some(meshtastic::protobufs::to_radio::PayloadVariant::Packet(p)) =
        msg.payload_variant.as_mut()
    else {
        panic!("not a packet");
    };
    let mut admin = engine::admin_of(p).expect("admin");
    if let Some(meshtastic::protobufs::admin_message::PayloadVariant::AddContact(c)) =
        admin.payload_variant.as_mut()
    {
        edit(c);
    }
    if let Some(meshtastic::protobufs::mesh_packet::PayloadVariant::Decoded(d)) =
        p.payload_variant.as_mut()
    {
        d.payload = meshtastic::Message::encode_to_vec(&admin);
    }
}

/// Sends want_config and collects the download up to its config_complete_id.
async fn download(client: &mut Client, nonce: u32) -> Vec<FromRadio> {
    client
        .send(engine::want_config(nonce))
        .await
        .expect("sends");
    let mut frames = Vec::new();
    loop {
        let frame = tokio::time::timeout(WAIT, client.next())
            .await
            .expect("download in time")
            .expect("stream open")
            .expect("decodes");
        let done = matches!(frame.payload_variant, Some(from_radio::PayloadVariant::ConfigCompleteId(n)) if n == nonce);
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

#[tokio::test]
async fn config_replay_answers_downstream_without_asking_the_radio() {
    let p = started(25, |_| {}).await;
    let before = p.sim.counters().received_besides_heartbeats();
    let mut client = connect(&p.engine).await;
    let full = download(&mut client, 777).await;
    let nodes = raw::node_infos(&full).len();
    assert_eq!(nodes, 26, "own node + 25");
    assert!(
        matches!(full[0].payload_variant, Some(from_radio::PayloadVariant::MyInfo(ref m)) if m.nodedb_count == 26)
    );
    let config_only = download(&mut client, engine::CONFIG_ONLY_NONCE).await;
    let nodes = raw::node_infos(&config_only).len();
    assert_eq!(nodes, 1, "69420: own node only");
    assert!(
        matches!(config_only[0].payload_variant, Some(from_radio::PayloadVariant::MyInfo(ref m)) if m.nodedb_count == 26),
        "69420 reports the NodeDB's total, as PhoneAPI.cpp does: {:?}",
        config_only[0]
    );
    let nodes_only = download(&mut client, engine::NODES_ONLY_NONCE).await;
    assert_eq!(
        nodes_only.len(),
        27,
        "69421: node infos and the complete id, nothing else"
    );
    assert_eq!(
        p.sim.counters().received_besides_heartbeats(),
        before,
        "the replays sent nothing upstream: {:?}",
        p.sim.counters().received()
    );
    assert_eq!(p.sim.counters().connections.load(Ordering::Relaxed), 1);
    p.engine.quit().await;
}

#[tokio::test]
async fn an_add_contact_with_an_empty_key_never_reaches_the_radio_but_a_valid_one_does() {
    let p = started(5, |_| {}).await;
    let mut client = connect(&p.engine).await;
    download(&mut client, 99).await;
    let own = p.sim.my_node_num();
    let mut erase = engine::add_contact(
        own,
        4001,
        &Contact {
            num: 0x0bad_0001,
            long_name: "eraser".into(),
            short_name: "ER".into(),
            hw_model: 0,
            role: 0,
            key: [1; 32],
            ..Contact::default()
        },
    );
    // Blank the key in the encoded message, as a buggy bot would send it.
    edit_contact(&mut erase, |c| {
        if let Some(u) = c.user.as_mut() {
            u.public_key.clear();
        }
    });
    client.send(erase).await.expect("sends");
    let good = engine::add_contact(
        own,
        4002,
        &Contact {
            num: 0x0600_d001,
            long_name: "Good Node".into(),
            short_name: "GN".into(),
            hw_model: 9,
            role: 0,
            key: [0x77; 32],
            ..Contact::default()
        },
    );
    client.send(good).await.expect("sends");
    wait_until("the valid contact at the radio", || {
        p.sim.counters().add_contacts.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(p.sim.contacts()[0].node_num, 0x0600_d001);
    assert_no_invalid_contacts(&p.sim);
    wait_until("the valid key learned", || {
        p.snap
            .borrow()
            .nodes
            .iter()
            .any(|n| n.record.num == 0x0600_d001 && n.record.trusted == Some([0x77; 32]))
    })
    .await;
    // Its QueueStatus came back to this client.
    let answered = tokio::time::timeout(WAIT, async {
        while let Some(Ok(f)) = client.next().await {
            if matches!(f.payload_variant, Some(from_radio::PayloadVariant::QueueStatus(q)) if q.mesh_packet_id == 4002) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(answered.ok(), Some(true));
    p.engine.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_delay_the_others() {
    let mut p = started(40, |_| {}).await;
    // The stuck client asks for everything and never reads a byte (with a tiny receive window).
    let hello = keysync::engine::frame_bytes(&engine::want_config(5)).expect("fits");
    let _stuck = never_reading(p.addr, &hello).await;
    let mut live = connect(&p.engine).await;
    download(&mut live, 6).await;
    let reader = tokio::spawn(async move {
        let mut frames = 0u64;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(3), live.next()).await
        {
            frames += 1;
        }
        frames
    });
    // Announcements in bursts the radio's own queue can carry, until the stuck client loses some.
    let mut sent = 0u64;
    let mut rounds = 0;
    while rounds < 2000 && !p.snap.borrow().clients.iter().any(|c| c.dropped > 0) {
        for i in 0..25 {
            p.sim.inject(Fault::Announce { node: i }).await;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        rounds += 1;
    }
    let received = reader.await.expect("reader joins");
    let radio_dropped = p.sim.counters().dropped_to_client.load(Ordering::Relaxed);
    assert!(
        received + radio_dropped >= sent * 9 / 10,
        "the reading client got {received} of {sent} (the radio itself dropped {radio_dropped})"
    );
    let seen = tokio::time::timeout(
        WAIT,
        p.snap.wait_for(|s| s.clients.iter().any(|c| c.dropped > 0)),
    )
    .await
    .is_ok();
    assert!(seen, "clients: {:#?}", p.snap.borrow().clients);
    assert!(p.snap.borrow().link.state.is_up());
    p.engine.quit().await;
}

#[tokio::test]
async fn heartbeats_are_answered_only_while_the_radio_is_there() {
    let p = started(3, |_| {}).await;
    let mut client = connect(&p.engine).await;
    download(&mut client, 11).await;
    client.send(engine::heartbeat(5)).await.expect("sends");
    let answer = tokio::time::timeout(WAIT, client.next()).await;
    assert!(matches!(
        answer,
        Ok(Some(Ok(FromRadio {
            payload_variant: Some(from_radio::PayloadVariant::QueueStatus(_)),
            ..
        })))
    ));
    reboot(&p.sim, Duration::from_secs(3)).await;
    wait_until("the link down", || !p.snap.borrow().link.state.is_up()).await;
    client.send(engine::heartbeat(6)).await.expect("sends");
    let silence = tokio::time::timeout(Duration::from_millis(800), async {
        loop {
            match client.next().await {
                Some(Ok(FromRadio {
                    payload_variant: Some(from_radio::PayloadVariant::QueueStatus(_)),
                    ..
                })) => return true,
                Some(Ok(_)) => {}
                _ => return false,
            }
        }
    })
    .await;
    assert!(
        silence.is_err(),
        "no heartbeat answer while the radio is away"
    );
    // The client stays connected through the short outage.
    let _: ToRadio = engine::heartbeat(7);
    wait_until("the link back", || p.snap.borrow().link.state.is_up()).await;
    client
        .send(engine::heartbeat(8))
        .await
        .expect("still connected");
    p.engine.quit().await;
}

/// A proxied p.engine whose proxy settings `edit` changes from the tests' defaults.
/// The engine with the proxy on `sim`, a store in `dir`; `edit` changes the settings (the
/// proxy's among them) from the tests' defaults.
fn proxied_engine(
    sim: &SimHandle,
    dir: &tempfile::TempDir,
    edit: impl FnOnce(&mut keysync::engine::EngineConfig),
) -> EngineHandle {
    let (db, store) = seeded_store(dir, &[]);
    let mut config = fast_engine(sim, db, 60 * SEC, 600 * SEC);
    let proxy = ProxyConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        max_clients: 3,
        downstream_grace: Duration::from_secs(30),
        allow_remote_admin: false,
        // Every proxy test runs with reboots denied: the radio stays up unless a test says so.
        deny_admin: vec![keysync::engine::DestructiveAdmin::Reboot],
        idle_close: ProxyConfig::IDLE_CLOSE,
        partial_frame: ProxyConfig::PARTIAL_FRAME,
    };
    config.proxy = Some(proxy);
    edit(&mut config);
    engine::try_start(config, store).expect("proxy binds")
}

#[tokio::test]
async fn a_client_beyond_max_clients_is_told_why_and_closed() {
    let p = started(3, |p| p.max_clients = 1).await;
    let mut first = connect(&p.engine).await;
    download(&mut first, 1).await;
    let mut second = connect(&p.engine).await;
    let told = tokio::time::timeout(WAIT, second.next())
        .await
        .expect("an answer in time");
    let Some(Ok(FromRadio {
        payload_variant: Some(from_radio::PayloadVariant::ClientNotification(note)),
        ..
    })) = told
    else {
        panic!("expected a notification, got {told:?}");
    };
    assert!(
        note.message.contains("too many clients"),
        "{}",
        note.message
    );
    let closed = tokio::time::timeout(WAIT, second.next())
        .await
        .expect("closed in time");
    assert!(closed.is_none(), "the refused client is closed");
    // The first client is unaffected.
    first
        .send(engine::heartbeat(3))
        .await
        .expect("still connected");
    p.engine.quit().await;
}

#[tokio::test]
async fn packets_sent_during_a_short_outage_are_held_and_delivered_after_the_reconnect() {
    let p = started(3, |p| p.max_clients = 4).await;
    let mut client = connect(&p.engine).await;
    download(&mut client, 1).await;
    reboot(&p.sim, Duration::from_millis(800)).await;
    wait_until("the link down", || !p.snap.borrow().link.state.is_up()).await;
    let before = p
        .sim
        .counters()
        .received()
        .get("packet")
        .copied()
        .unwrap_or(0);
    let text = text_packet(engine::BROADCAST, 5151, "sent while the radio was away");
    client
        .send(ToRadio {
            payload_variant: Some(meshtastic::protobufs::to_radio::PayloadVariant::Packet(
                text,
            )),
        })
        .await
        .expect("the client stays connected through the outage");
    wait_until("the held packet delivered", || {
        p.sim
            .counters()
            .received()
            .get("packet")
            .copied()
            .unwrap_or(0)
            > before
    })
    .await;
    p.engine.quit().await;
}

#[tokio::test]
async fn clients_are_closed_when_the_radio_stays_away_past_the_grace_period() {
    let p = started(3, |p| {
        p.max_clients = 4;
        p.downstream_grace = Duration::from_millis(500);
    })
    .await;
    let mut client = connect(&p.engine).await;
    download(&mut client, 1).await;
    reboot(&p.sim, Duration::from_secs(5)).await;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match client.next().await {
                None | Some(Err(_)) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(
        closed.ok(),
        Some(true),
        "the client was closed after the grace period"
    );
    p.engine.quit().await;
}

#[tokio::test]
async fn an_add_contact_with_should_ignore_is_an_ignore_not_a_key_to_learn() {
    let p = started(5, |_| {}).await;
    let mut client = connect(&p.engine).await;
    download(&mut client, 99).await;
    let target = p.sim.nodedb()[2].clone();
    let stranger_key = [0x42; 32];
    let mut ignore = engine::add_contact(
        p.sim.my_node_num(),
        4100,
        &Contact {
            num: target.num,
            key: stranger_key,
            ..Contact::default()
        },
    );
    edit_contact(&mut ignore, |c| c.should_ignore = true);
    client.send(ignore).await.expect("sends");
    wait_until("the radio ignores the node", || {
        p.sim
            .nodedb()
            .iter()
            .any(|n| n.num == target.num && n.is_ignored)
    })
    .await;
    assert!(p.sim.key_of(target.num).is_none(), "the firmware erased it");
    let stored = p
        .snap
        .borrow()
        .nodes
        .iter()
        .find(|n| n.record.num == target.num)
        .map(|n| (n.record.trusted, n.record.pending));
    let original = engine::valid_key(&target.user.expect("user").public_key);
    assert_eq!(
        stored,
        Some((original, None)),
        "the key in the ignore message is not learned"
    );
    p.engine.quit().await;
}

#[tokio::test]
async fn a_loopback_client_gets_the_radios_private_key_in_the_replay() {
    let p = started(3, |_| {}).await;
    let mut client = connect(&p.engine).await;
    let full = download(&mut client, 42).await;
    let security = full.iter().find_map(|f| match &f.payload_variant {
        Some(from_radio::PayloadVariant::Config(meshtastic::protobufs::Config {
            payload_variant: Some(meshtastic::protobufs::config::PayloadVariant::Security(s)),
        })) => Some(s.clone()),
        _ => None,
    });
    let security = security.expect("the replay carries Config.security");
    assert_eq!(security.private_key.len(), 32, "loopback may administer");
    p.engine.quit().await;
}

/// A text message packet.
fn text_packet(to: u32, id: u32, body: &str) -> meshtastic::protobufs::MeshPacket {
    meshtastic::protobufs::MeshPacket {
        to,
        id,
        payload_variant: Some(meshtastic::protobufs::mesh_packet::PayloadVariant::Decoded(
            meshtastic::protobufs::Data {
                portnum: meshtastic::protobufs::PortNum::TextMessageApp as i32,
                payload: body.as_bytes().to_vec(),
                ..meshtastic::protobufs::Data::default()
            },
        )),
        ..meshtastic::protobufs::MeshPacket::default()
    }
}

/// The radio reboots and comes back after `down`, remembering everything.
async fn reboot(sim: &SimHandle, down: Duration) {
    sim.inject(Fault::Reboot {
        down,
        forget: keysync::sim::Forget::Nothing,
    })
    .await;
}

/// A loopback raw client of the proxy that has downloaded the config.
async fn configured_client(addr: std::net::SocketAddr) -> raw::RawClient {
    let mut client = raw::RawClient::connect(addr).await;
    client.download(31).await;
    client
}

/// Sends a text and waits until it is at the radio: upstream keeps the clients' order, so
/// whatever the client sent before it has reached the radio by then, or never will.
async fn text_through(client: &mut raw::RawClient, sim: &SimHandle) {
    let text = client
        .packet(
            engine::BROADCAST,
            meshtastic::protobufs::PortNum::TextMessageApp,
            b"after".to_vec(),
        )
        .await;
    wait_until("the text at the radio", || {
        sim.sent().iter().any(|p| p.id == text)
    })
    .await;
}

fn received(sim: &SimHandle, kind: &str) -> u64 {
    sim.counters().received().get(kind).copied().unwrap_or(0)
}

#[tokio::test]
async fn an_admin_payload_that_does_not_decode_is_dropped() {
    let p = started(3, |_| {}).await;
    let mut client = configured_client(p.addr).await;
    let before = received(&p.sim, "packet");
    // add_contact (field 66) for node 0x0bad0002 (1) with an empty key and a long_name (user 2,
    // long_name 2) that is not UTF-8: nanopb on the radio would decode it and erase the key.
    let bad = vec![
        0x92, 0x04, 11, 0x08, 0x82, 0x80, 0xb4, 0x5d, 0x12, 4, 0x12, 2, 0xff, 0xfe,
    ];
    client
        .packet(
            p.sim.my_node_num(),
            meshtastic::protobufs::PortNum::AdminApp,
            bad,
        )
        .await;
    text_through(&mut client, &p.sim).await;
    assert_eq!(
        received(&p.sim, "packet"),
        before + 1,
        "only the text reached the radio: {:?}",
        p.sim.counters().received()
    );
    p.engine.quit().await;
}

#[tokio::test]
async fn an_add_contact_replacing_a_trusted_key_is_learned_as_pending_and_not_forwarded() {
    let p = started(5, |_| {}).await;
    let mut client = configured_client(p.addr).await;
    let snap = p.engine.snapshot.clone();
    let target = p.sim.nodedb()[2].clone();
    let original = engine::valid_key(&target.user.clone().expect("user").public_key);
    wait_until("the target trusted", || {
        snap.borrow()
            .nodes
            .iter()
            .any(|n| n.record.num == target.num && n.record.trusted == original)
    })
    .await;
    let added = p.sim.counters().add_contacts.load(Ordering::Relaxed);
    let mut forged = target.clone();
    if let Some(u) = forged.user.as_mut() {
        u.public_key = vec![0x42; 32];
    }
    client.contact(p.sim.my_node_num(), &forged).await;
    let stranger = meshtastic::protobufs::NodeInfo {
        num: 0x0600_d001,
        user: Some(meshtastic::protobufs::User {
            long_name: "Good Node".into(),
            short_name: "GN".into(),
            public_key: vec![0x77; 32],
            ..meshtastic::protobufs::User::default()
        }),
        ..meshtastic::protobufs::NodeInfo::default()
    };
    client.contact(p.sim.my_node_num(), &stranger).await;
    wait_until("the stranger's contact at the radio", || {
        p.sim.contacts().iter().any(|c| c.node_num == stranger.num)
    })
    .await;
    assert_eq!(
        p.sim.counters().add_contacts.load(Ordering::Relaxed),
        added + 1,
        "only the stranger's contact went out"
    );
    assert_eq!(
        p.sim.key_of(target.num),
        original,
        "the radio keeps the trusted key"
    );
    wait_until("the forged key pending", || {
        snap.borrow()
            .nodes
            .iter()
            .any(|n| n.record.num == target.num && n.record.pending == Some([0x42; 32]))
    })
    .await;
    p.engine.quit().await;
}

/// This process's resident memory, in bytes (Linux).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn want_config_from_a_client_that_never_reads_keeps_one_replay_in_memory() {
    const REQUESTS: u64 = 20_000;
    let p = started(10, |_| {}).await;
    let one = keysync::engine::frame_bytes(&engine::want_config(5)).expect("fits");
    let flood: Vec<u8> = (0..REQUESTS).flat_map(|_| one.iter().copied()).collect();
    let before = rss();
    let stuck = never_reading(p.addr, &flood).await;
    wait_until("every request read", || {
        p.snap
            .borrow()
            .clients
            .iter()
            .any(|c| c.frames_in >= REQUESTS)
    })
    .await;
    let grown = rss().saturating_sub(before);
    eprintln!("RSS grew {} KiB over {REQUESTS} want_config", grown / 1024);
    assert!(
        grown < 32 << 20,
        "RSS grew {} MiB for one client's want_config flood",
        grown >> 20
    );
    // The proxy still serves.
    let mut other = connect(&p.engine).await;
    download(&mut other, 6).await;
    drop(stuck);
    p.engine.quit().await;
}

#[tokio::test]
async fn a_denied_destructive_admin_message_never_reaches_the_radio() {
    let p = started(3, |_| {}).await;
    let mut client = configured_client(p.addr).await;
    let admins = received(&p.sim, "admin");
    client
        .admin(
            p.sim.my_node_num(),
            meshtastic::protobufs::admin_message::PayloadVariant::RebootSeconds(1),
        )
        .await;
    text_through(&mut client, &p.sim).await;
    assert_eq!(
        received(&p.sim, "admin"),
        admins,
        "--deny-admin reboot held it"
    );
    assert!(p.engine.snapshot.borrow().link.state.is_up());
    p.engine.quit().await;
}

/// Waits until the proxy closes `stream`; false if it stays open past [`WAIT`].
async fn closed_by_proxy(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(WAIT, async {
        loop {
            match tokio::io::AsyncReadExt::read(stream, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_client_stuck_in_a_partial_frame_or_silent_past_the_idle_close_is_closed() {
    let p = started(3, |p| {
        p.idle_close = Duration::from_secs(3);
        p.partial_frame = Duration::from_millis(500);
    })
    .await;
    // A header announcing 512 bytes, and nothing after it.
    let mut partial = TcpStream::connect(p.addr).await.expect("connects");
    tokio::io::AsyncWriteExt::write_all(&mut partial, &[0x94, 0xc3, 0x02, 0x00])
        .await
        .expect("writes");
    let mut silent = TcpStream::connect(p.addr).await.expect("connects");
    let started = tokio::time::Instant::now();
    assert!(
        closed_by_proxy(&mut partial).await,
        "the partial frame's client is closed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "for its partial frame, before the idle close"
    );
    assert!(
        closed_by_proxy(&mut silent).await,
        "the silent client is closed"
    );
    wait_until("no client left", || p.snap.borrow().clients.is_empty()).await;
    p.engine.quit().await;
}

fn is_packet(frame: &FromRadio) -> bool {
    matches!(
        frame.payload_variant,
        Some(from_radio::PayloadVariant::Packet(_))
    )
}

#[tokio::test]
async fn live_packets_reach_a_client_only_after_its_config_complete_and_none_from_before() {
    let p = started(5, |_| {}).await;
    let mut watcher = configured_client(p.addr).await;
    let mut late = raw::RawClient::connect(p.addr).await;
    for node in 0..5 {
        p.sim.inject(Fault::Announce { node }).await;
    }
    // The proxy fanned them out: the configured client has them.
    for _ in 0..5 {
        watcher.recv_until("an announcement", is_packet).await;
    }
    let download = late.download(77).await;
    assert!(
        !download.iter().any(is_packet),
        "no packet before config_complete_id"
    );
    late.send(engine::heartbeat(1)).await;
    late.recv_until("the heartbeat's answer", |f| {
        matches!(
            f.payload_variant,
            Some(from_radio::PayloadVariant::QueueStatus(_))
        )
    })
    .await;
    let stale: Vec<_> = late.seen.iter().filter(|f| is_packet(f)).collect();
    assert!(
        stale.is_empty(),
        "packets from before the client asked: {stale:?}"
    );
    // Live packets flow once it is configured.
    p.sim.inject(Fault::Announce { node: 0 }).await;
    late.recv_until("a live announcement", is_packet).await;
    p.engine.quit().await;
}

#[tokio::test]
async fn a_client_packet_without_an_id_gets_one_and_its_queue_status_comes_back() {
    let p = started(3, |_| {}).await;
    let mut client = configured_client(p.addr).await;
    client
        .send(ToRadio {
            payload_variant: Some(meshtastic::protobufs::to_radio::PayloadVariant::Packet(
                text_packet(engine::BROADCAST, 0, "no id"),
            )),
        })
        .await;
    let answer = client
        .recv_until("the QueueStatus of the packet", |f| {
            matches!(&f.payload_variant, Some(from_radio::PayloadVariant::QueueStatus(q)) if q.mesh_packet_id != 0)
        })
        .await;
    let Some(from_radio::PayloadVariant::QueueStatus(q)) = answer.payload_variant else {
        unreachable!("picked a QueueStatus");
    };
    wait_until("the packet at the radio under that id", || {
        p.sim.sent().iter().any(|p| p.id == q.mesh_packet_id)
    })
    .await;
    p.engine.quit().await;
}

#[tokio::test]
async fn frames_from_the_radio_reach_the_client_byte_for_byte_with_fields_unknown_to_keysync() {
    use keysync::engine::{RadioFrame, RelayCodec};
    let p = started(3, |_| {}).await;
    let stream = TcpStream::connect(p.addr).await.expect("connects");
    let (read, mut write) = stream.into_split();
    let mut frames = tokio_util::codec::FramedRead::new(read, RelayCodec::default());
    let mut next = async || -> RadioFrame {
        tokio::time::timeout(WAIT, frames.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("decodes")
    };
    let hello = keysync::engine::frame_bytes(&engine::want_config(31)).expect("fits");
    tokio::io::AsyncWriteExt::write_all(&mut write, &hello)
        .await
        .expect("writes");
    while !matches!(
        next().await.msg.payload_variant,
        Some(from_radio::PayloadVariant::ConfigCompleteId(31))
    ) {}
    let text = FromRadio {
        id: 7,
        payload_variant: Some(from_radio::PayloadVariant::Packet(
            meshtastic::protobufs::MeshPacket {
                from: 0x0bad_cafe,
                ..text_packet(engine::BROADCAST, 0x5eed, "from a newer firmware")
            },
        )),
    };
    let mut payload = meshtastic::Message::encode_to_vec(&text);
    // Field 99 (varint 1): unknown to the crate, as newer firmware's fields are.
    payload.extend_from_slice(&[0x98, 0x06, 0x01]);
    p.sim
        .inject(Fault::Frame {
            payload: payload.clone(),
        })
        .await;
    let relayed = loop {
        let frame = next().await;
        if matches!(&frame.msg.payload_variant, Some(from_radio::PayloadVariant::Packet(m)) if m.id == 0x5eed)
        {
            break frame;
        }
    };
    assert_eq!(
        relayed.payload.as_ref(),
        payload.as_slice(),
        "the radio's {} bytes, unchanged",
        payload.len()
    );
    p.engine.quit().await;
}

#[tokio::test]
async fn metrics_show_each_client_s_relayed_frames_and_every_series_the_dashboard_queries() {
    let p = started(10, |_| {}).await;
    let metrics = keysync::metrics::serve("127.0.0.1:0".parse().expect("addr"), p.snap.clone())
        .expect("the metrics port binds");
    let mut clients = [connect(&p.engine).await, connect(&p.engine).await];
    let mut received = Vec::new();
    for client in &mut clients {
        received.push(download(client, 777).await.len() as u64);
    }
    let addrs: Vec<String> = clients
        .iter()
        .map(|c| c.get_ref().local_addr().expect("addr").to_string())
        .collect();
    let mut snap = p.snap.clone();
    settled(
        &mut snap,
        "the clients' counts to reach the snapshot",
        |s| s.clients.len() == 2 && s.clients.iter().all(|c| c.frames_out >= received[0]),
    )
    .await;

    let m = scrape(metrics.addr()).await;
    assert_eq!(sample(&m, "keysync_proxy_clients", &[]), 2);
    for (addr, got) in addrs.iter().zip(&received) {
        let frames = |direction| {
            sample(
                &m,
                "keysync_proxy_client_frames_total",
                &[("client", addr.as_str()), ("direction", direction)],
            )
        };
        assert_eq!(frames("to_client"), *got, "{addr}");
        assert_eq!(frames("from_client"), 1, "one want_config from {addr}");
        let dropped = sample(
            &m,
            "keysync_proxy_client_frames_dropped_total",
            &[("client", addr.as_str())],
        );
        assert_eq!(dropped, 0);
    }
    let mut served = BTreeSet::new();
    for s in &m.samples {
        if matches!(s.value, prometheus_parse::Value::Histogram(_)) {
            served.insert(format!("{}_bucket", s.metric));
        }
        served.insert(s.metric.clone());
    }
    // The broker's series come with --mqtt only: the MQTT test checks those.
    let queried: BTreeSet<String> = dashboard_metrics()
        .into_iter()
        .filter(|n| !n.starts_with("keysync_mqtt_"))
        .collect();
    assert!(queried.len() > 20, "{queried:?}");
    let missing: Vec<&String> = queried.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries series keysync does not serve: {missing:?}"
    );
    drop(metrics);
    p.engine.quit().await;
}

/// The node numbers of a fresh client's full replay, and the nodedb_count it says.
async fn replayed_nodes(addr: std::net::SocketAddr) -> (Vec<u32>, u32) {
    let mut client = raw::RawClient::connect(addr).await;
    let frames = client.download(4242).await;
    let count = raw::nodedb_count(&frames);
    let mut nums: Vec<u32> = raw::node_infos(&frames).iter().map(|n| n.num).collect();
    nums.sort_unstable();
    (nums, count)
}

/// Polls fresh clients' replays until `pred` holds of one (the proxy follows the link's notices
/// on its own task, a moment after the sync engine); panics naming `what`.
async fn replay_until(
    addr: std::net::SocketAddr,
    what: &str,
    mut pred: impl FnMut(&[u32], u32) -> bool,
) -> (Vec<u32>, u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (nums, count) = replayed_nodes(addr).await;
        if pred(&nums, count) {
            return (nums, count);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no replay {what}: the last had {nums:x?} (nodedb_count {count})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn nodes_the_radio_evicted_or_removed_leave_the_replay_after_the_next_nodes_only_refresh() {
    // Room for the own node, the 10 nodes and one more: with one node removed, the third and
    // fourth newcomers evict. keysync pushes nothing here: a push shows in the replay at once
    // (the radio holds it again), and this is about what the refresh takes away.
    let p = started_engine(
        keysync::sim::SimConfig {
            capacity: Some(12),
            ..sim_config(10)
        },
        |c| c.sync.max_pushes = 0,
    )
    .await;
    let (before, count) = replayed_nodes(p.addr).await;
    assert_eq!(before.len(), 11);
    assert_eq!(count, 11);
    let removed = before
        .iter()
        .copied()
        .find(|n| *n != p.sim.my_node_num())
        .expect("a node");
    assert!(
        p.sim
            .operator(keysync::sim::OperatorAction::Remove, removed)
    );
    p.sim
        .inject(Fault::NewNodes {
            count: 4,
            portnum: None,
        })
        .await;
    assert!(p.sim.evictions() >= 2, "the full NodeDB evicted");
    let mut radio: Vec<u32> = p.sim.nodedb().iter().map(|n| n.num).collect();
    radio.sort_unstable();
    let evicted: Vec<u32> = before
        .iter()
        .copied()
        .filter(|n| *n != removed && !radio.contains(n))
        .collect();
    assert!(!evicted.is_empty(), "{before:x?} → {radio:x?}");
    assert_eq!(
        replayed_nodes(p.addr).await.0,
        before,
        "nothing changes in the replay before keysync looks again"
    );

    p.engine
        .commands
        .send(engine::Command::ForceSync)
        .await
        .expect("engine runs");
    let mut snap = p.snap.clone();
    assert_eq!(nth_report(&mut snap, 2).await.pushed, 0);
    let (after, count) = replay_until(p.addr, "after the nodes-only refresh", |nums, _| {
        !nums.contains(&removed)
    })
    .await;
    for gone in &evicted {
        assert!(!after.contains(gone), "evicted {gone:x} still replayed");
    }
    assert_eq!(
        after, radio,
        "the replay lists exactly what the radio's nodes-only download listed"
    );
    assert_eq!(
        count as usize,
        radio.len(),
        "nodedb_count is the radio's total"
    );
    p.engine.quit().await;
}

#[tokio::test]
async fn a_node_a_client_removes_through_the_proxy_leaves_the_replay_at_once() {
    let p = started(6, |_| {}).await;
    let mut client = configured_client(p.addr).await;
    let own = p.sim.my_node_num();
    let (before, _) = replayed_nodes(p.addr).await;
    let gone = before.iter().copied().find(|n| *n != own).expect("a node");
    client
        .admin(
            own,
            meshtastic::protobufs::admin_message::PayloadVariant::RemoveByNodenum(gone),
        )
        .await;
    wait_until("the radio to remove the node", || {
        p.sim.nodedb().iter().all(|n| n.num != gone)
    })
    .await;
    let (after, count) = replayed_nodes(p.addr).await;
    assert!(!after.contains(&gone), "{after:x?}");
    assert_eq!(after.len(), before.len() - 1);
    assert_eq!(count as usize, after.len());
    assert_eq!(
        p.snap.borrow().sync.history.len(),
        1,
        "no nodes-only refresh ran meanwhile: the proxy applied the removal itself"
    );
    p.engine.quit().await;
}

/// The channel named `name` in slot `index`, as a client would set it.
fn named_channel(index: i32, name: &str) -> meshtastic::protobufs::Channel {
    meshtastic::protobufs::Channel {
        index,
        settings: Some(meshtastic::protobufs::ChannelSettings {
            name: name.into(),
            psk: vec![1],
            ..meshtastic::protobufs::ChannelSettings::default()
        }),
        role: meshtastic::protobufs::channel::Role::Secondary as i32,
    }
}

/// The channel names of a fresh client's full replay, by slot.
async fn replayed_channels(addr: std::net::SocketAddr) -> Vec<(i32, String)> {
    let mut client = raw::RawClient::connect(addr).await;
    client
        .download(4343)
        .await
        .iter()
        .filter_map(|f| match &f.payload_variant {
            Some(from_radio::PayloadVariant::Channel(c)) => Some((
                c.index,
                c.settings
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_channel_set_through_the_proxy_is_in_the_next_replay_after_a_config_only_refresh() {
    let p = started(3, |_| {}).await;
    let mut client = configured_client(p.addr).await;
    let own = p.sim.my_node_num();
    let before = received(&p.sim, "want_config_config_only");
    client
        .admin(
            own,
            meshtastic::protobufs::admin_message::PayloadVariant::SetChannel(named_channel(
                2, "ops",
            )),
        )
        .await;
    // The same client asks for its config next: the proxy reads the admin message first, so
    // this replay can only come after the refresh that follows it.
    let frames = client.download(4444).await;
    assert!(
        frames.iter().any(|f| matches!(&f.payload_variant,
            Some(from_radio::PayloadVariant::Channel(c)) if c.index == 2
                && c.settings.as_ref().is_some_and(|s| s.name == "ops"))),
        "the replay waited for the refresh"
    );
    let channels = replayed_channels(p.addr).await;
    assert!(
        channels.contains(&(2, "ops".into())),
        "a second client sees the new channel: {channels:?}"
    );
    assert_eq!(
        p.sim.channels()[2]
            .settings
            .as_ref()
            .map(|s| s.name.as_str()),
        Some("ops")
    );
    assert_eq!(
        received(&p.sim, "want_config_config_only"),
        before + 1,
        "one config-only download refreshed it"
    );
    assert_eq!(channels.len(), 8);
    p.engine.quit().await;
}

#[tokio::test]
async fn a_channel_changed_behind_keysync_is_refreshed_when_the_radio_answers_a_get_channel() {
    let p = started(3, |_| {}).await;
    let mut client = configured_client(p.addr).await;
    let own = p.sim.my_node_num();
    // The phone app over BLE renames slot 1: keysync's cache does not know.
    assert!(p.sim.set_channel(named_channel(1, "ble")));
    assert!(
        !replayed_channels(p.addr).await.contains(&(1, "ble".into())),
        "nothing told keysync yet"
    );
    let payload = meshtastic::Message::encode_to_vec(&meshtastic::protobufs::AdminMessage {
        payload_variant: Some(
            meshtastic::protobufs::admin_message::PayloadVariant::GetChannelRequest(2),
        ),
        ..meshtastic::protobufs::AdminMessage::default()
    });
    client
        .send(ToRadio {
            payload_variant: Some(meshtastic::protobufs::to_radio::PayloadVariant::Packet(
                meshtastic::protobufs::MeshPacket {
                    to: own,
                    id: 0x5151,
                    payload_variant: Some(
                        meshtastic::protobufs::mesh_packet::PayloadVariant::Decoded(
                            meshtastic::protobufs::Data {
                                portnum: meshtastic::protobufs::PortNum::AdminApp as i32,
                                payload,
                                want_response: true,
                                ..meshtastic::protobufs::Data::default()
                            },
                        ),
                    ),
                    ..meshtastic::protobufs::MeshPacket::default()
                },
            )),
        })
        .await;
    let answer = client
        .recv_until("the get_channel answer", |f| match &f.payload_variant {
            Some(from_radio::PayloadVariant::Packet(pk)) => engine::admin_of(pk).is_some(),
            _ => false,
        })
        .await;
    let Some(from_radio::PayloadVariant::Packet(pk)) = answer.payload_variant else {
        unreachable!("picked a packet");
    };
    assert!(matches!(
        engine::admin_of(&pk).and_then(|a| a.payload_variant),
        Some(meshtastic::protobufs::admin_message::PayloadVariant::GetChannelResponse(ref c)) if c.index == 1
    ));
    wait_until("the config-only refresh", || {
        received(&p.sim, "want_config_config_only") == 1
    })
    .await;
    let channels = replayed_channels(p.addr).await;
    assert!(channels.contains(&(1, "ble".into())), "{channels:?}");
    p.engine.quit().await;
}

/// Whether `frame` is a QueueStatus for packet `id` with this `res`.
fn is_queue_status(frame: &FromRadio, id: Option<u32>, res: i32) -> bool {
    matches!(&frame.payload_variant, Some(from_radio::PayloadVariant::QueueStatus(q))
        if q.res == res && id.is_none_or(|id| q.mesh_packet_id == id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_the_radio_fills_only_its_own_queue_and_anothers_ten_texts_all_arrive() {
    // Firmware without a text limit: the flood reaches keysync's queues whole.
    let mut sim = sim_config(3);
    sim.profile = keysync::sim::Profile::new(
        "2.6.11",
        keysync::sim::Hw::default(),
        keysync::sim::SimRole::default(),
    )
    .expect("profile");
    let p = started_on(sim, |_| {}).await;
    let mut flooder = configured_client(p.addr).await;
    let mut other = configured_client(p.addr).await;
    other.number_from(0x0020_0000);
    let (flooding, mut flood_started) = tokio::sync::watch::channel(0u32);
    let flood = tokio::spawn(async move {
        for i in 0..400 {
            flooder
                .packet(
                    engine::BROADCAST,
                    meshtastic::protobufs::PortNum::TextMessageApp,
                    b"flood".to_vec(),
                )
                .await;
            flooding.send_replace(i);
        }
        flooder
    });
    flood_started
        .wait_for(|n| *n >= 50)
        .await
        .expect("the flood runs");
    let mut ids = Vec::new();
    for n in 0..10 {
        let body = format!("text {n} from the other client");
        ids.push(
            other
                .packet(
                    engine::BROADCAST,
                    meshtastic::protobufs::PortNum::TextMessageApp,
                    body.into_bytes(),
                )
                .await,
        );
    }
    let mut flooder = flood.await.expect("the flood ends");
    wait_until("the other client's ten texts at the radio", || {
        let sent = p.sim.sent();
        ids.iter().all(|id| sent.iter().any(|s| s.id == *id))
    })
    .await;
    for id in ids {
        other
            .recv_until("the radio's QueueStatus for each text", |f| {
                is_queue_status(f, Some(id), 0)
            })
            .await;
    }
    flooder
        .recv_until("a full queue's answer to the flooder", |f| {
            is_queue_status(f, None, 32)
        })
        .await;
    let flood_at_radio = p.sim.sent().iter().filter(|s| s.id < 0x0020_0000).count();
    assert!(
        flood_at_radio < 400,
        "the flood was refused beyond its own queue: {flood_at_radio} of 400 reached the radio"
    );
    p.engine.quit().await;
}

#[tokio::test]
async fn a_client_over_the_text_limit_is_answered_by_keysync_and_anothers_text_waits_for_the_radio()
{
    let p = started(3, |_| {}).await;
    let mut first = configured_client(p.addr).await;
    let mut second = configured_client(p.addr).await;
    second.number_from(0x0020_0000);
    let text = meshtastic::protobufs::PortNum::TextMessageApp;
    let accepted = first.packet(engine::BROADCAST, text, b"one".to_vec()).await;
    let too_soon = first.packet(engine::BROADCAST, text, b"two".to_vec()).await;
    let waits = second
        .packet(engine::BROADCAST, text, b"three".to_vec())
        .await;
    // As the firmware answers: QueueStatus res = 0, then RATE_LIMIT_EXCEEDED for that packet.
    first
        .recv_until("the QueueStatus of the text over the limit", |f| {
            is_queue_status(f, Some(too_soon), 0)
        })
        .await;
    let error = first
        .recv_until("the routing error", |f| raw::routing_error(f).is_some())
        .await;
    assert_eq!(
        raw::routing_error(&error),
        Some((
            meshtastic::protobufs::routing::Error::RateLimitExceeded,
            too_soon
        ))
    );
    second
        .recv_until("the radio's QueueStatus for the held text", |f| {
            is_queue_status(f, Some(waits), 0)
        })
        .await;
    let sent = p.sim.sent();
    let at = |id: u32| {
        sent.iter()
            .zip(p.sim.sent_times())
            .find(|(s, _)| s.id == id)
            .map(|(_, t)| t)
    };
    let (Some(one), Some(three)) = (at(accepted), at(waits)) else {
        panic!("both texts within their own limits reached the radio: {sent:?}");
    };
    assert!(
        at(too_soon).is_none(),
        "the text over the limit was not sent"
    );
    assert!(
        three.duration_since(one) >= Duration::from_secs(2),
        "the second client's text waited for the radio's text gap"
    );
    assert_eq!(
        p.sim.counters().rate_limited.load(Ordering::Relaxed),
        0,
        "the radio refused nothing"
    );
    p.engine.quit().await;
}

/// A client's add_contact with a long name: keysync learns the name cut to the firmware's 39
/// bytes, so its own push of that node after the radio forgot its keys fits a frame, and the
/// link stays up (a 440-byte name once made every push a 522-byte frame the link refused).
#[tokio::test]
async fn a_long_name_a_client_sends_is_cut_where_keysync_learns_it_and_its_push_fits_a_frame() {
    let p = started(5, |_| {}).await;
    let mut client = configured_client(p.addr).await;
    let stranger = meshtastic::protobufs::NodeInfo {
        num: 0x0600_d002,
        user: Some(meshtastic::protobufs::User {
            long_name: "Very Long Name ".repeat(28),
            short_name: "LONGNAME".into(),
            public_key: vec![0x78; 32],
            ..meshtastic::protobufs::User::default()
        }),
        ..meshtastic::protobufs::NodeInfo::default()
    };
    client.contact(p.sim.my_node_num(), &stranger).await;
    let mut snap = p.engine.snapshot.clone();
    wait_until("the stranger learned", || {
        snap.borrow()
            .nodes
            .iter()
            .any(|n| n.record.num == stranger.num && n.record.trusted == Some([0x78; 32]))
    })
    .await;
    let learned = snap
        .borrow()
        .nodes
        .iter()
        .find(|n| n.record.num == stranger.num)
        .map(|n| (n.record.long_name.clone(), n.record.short_name.clone()))
        .expect("the stranger");
    assert_eq!(learned.0.len(), engine::LONG_NAME_MAX, "{learned:?}");
    assert_eq!(learned.1, "LONG");
    // The radio forgets its keys: keysync pushes what it needs, the stranger among them when
    // it is in the working set, and every push is a frame the radio takes.
    let sessions = snap.borrow().link.sessions;
    let seen = snap.borrow().sync.history.len();
    let before = p.sim.contacts().len();
    p.sim
        .inject(Fault::Reboot {
            down: Duration::from_millis(100),
            forget: keysync::sim::Forget::Keys,
        })
        .await;
    let report = nth_report(&mut snap, seen + 1).await;
    assert!(report.error.is_none(), "{}", report.summary());
    assert!(report.pushed > 0, "{}", report.summary());
    assert_eq!(
        snap.borrow().link.sessions,
        sessions + 1,
        "one reconnect (the reboot), no link torn down by a push"
    );
    for contact in p.sim.contacts().into_iter().skip(before) {
        let user = contact.user.expect("user");
        assert!(
            user.long_name.len() <= engine::LONG_NAME_MAX,
            "{}",
            user.long_name
        );
    }
    p.engine.quit().await;
}

#[tokio::test]
async fn a_dm_waiting_for_its_key_lets_other_clients_packets_go_first() {
    // A radio that holds 2 of the 12 nodes whose keys the store trusts: the startup sync fills
    // it one push a second, so a DM's key waits for the next write slot.
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim(keysync::sim::SimConfig {
        in_radio: Some(2),
        ..sim_config(12)
    });
    let (db, store) = seeded_store(&dir, &sim.mesh());
    heard_keyless(&sim, 30).await;
    let mut config = fast_engine(&sim, db.clone(), 60 * SEC, 600 * SEC);
    config.sync.push_gap = SEC;
    config.proxy = Some(ProxyConfig::new("127.0.0.1:0".parse().expect("addr")));
    let engine = engine::try_start(config, store).expect("proxy binds");
    wait_until("the fill under way", || !sim.contacts().is_empty()).await;
    let (mut a, mut b) = (connect(&engine).await, connect(&engine).await);
    download(&mut a, 1).await;
    download(&mut b, 2).await;
    let pushed: BTreeSet<u32> = sim.contacts().iter().map(|c| c.node_num).collect();
    let on_radio: BTreeSet<u32> = sim.nodedb().iter().map(|n| n.num).collect();
    let target = sim
        .mesh()
        .iter()
        .map(|n| n.num)
        .find(|n| !pushed.contains(n) && !on_radio.contains(n))
        .expect("a node whose key the radio still lacks");
    let send = |id, to, body| ToRadio {
        payload_variant: Some(meshtastic::protobufs::to_radio::PayloadVariant::Packet(
            text_packet(to, id, body),
        )),
    };
    a.send(send(7001, target, "a DM")).await.expect("sends");
    // The proxy asked for the key once it took the DM: the store notes the DM.
    let dm_noted = || {
        let store = keysync::engine::Store::open_existing(&db).expect("store opens");
        let key = store.trusted_of(&[target]).expect("reads");
        key.first().is_some_and(|k| k.last_dm.is_some())
    };
    wait_until("the DM taken and its key asked for", dm_noted).await;
    b.send(send(7002, engine::BROADCAST, "meanwhile"))
        .await
        .expect("sends");
    let position = |id: u32| sent_index(&sim, id);
    wait_until("both packets on the air", || {
        position(7001).is_some() && position(7002).is_some()
    })
    .await;
    assert!(
        position(7002) < position(7001),
        "the other client's text went while the DM waited for its key"
    );
    let contacts = sim.contacts();
    let key_at = contacts.iter().position(|c| c.node_num == target);
    let key_time = key_at
        .map(|i| sim.contact_times()[i])
        .expect("the key pushed");
    let dm_time = sim.sent_times()[position(7001).expect("sent")];
    assert!(key_time < dm_time, "the key went before the DM");
    engine.quit().await;
}

/// Where packet `id` stands among the packets the radio sent.
fn sent_index(sim: &SimHandle, id: u32) -> Option<usize> {
    sim.sent().iter().position(|p| p.id == id)
}

#[tokio::test]
async fn a_dm_the_radio_cannot_encrypt_is_sent_again_once_its_key_is_pushed() {
    // The radio removed a node keysync still pictures with its key (nothing tells a client):
    // the client's DM fails with PKI_SEND_FAIL_PUBLIC_KEY (Router.cpp, ≥ 2.7.19). keysync pushes
    // the key and sends the DM again under a new id; the client sees its own id answered and no
    // routing error.
    let p = started(6, |_| {}).await;
    let target = p.sim.mesh()[2].num;
    assert!(p.sim.operator(keysync::sim::OperatorAction::Remove, target));
    let mut client = connect(&p.engine).await;
    download(&mut client, 1).await;
    let dm = ToRadio {
        payload_variant: Some(meshtastic::protobufs::to_radio::PayloadVariant::Packet(
            meshtastic::protobufs::MeshPacket {
                want_ack: true,
                ..text_packet(target, 7101, "a DM")
            },
        )),
    };
    client.send(dm).await.expect("sends");
    wait_until("the DM sent again after the push", || {
        p.sim.sent().iter().any(|s| s.to == target && s.id != 7101)
    })
    .await;
    let pushed_at = p
        .sim
        .contacts()
        .iter()
        .position(|c| c.node_num == target)
        .map(|i| p.sim.contact_times()[i])
        .expect("the key pushed");
    let resent = p
        .sim
        .sent()
        .iter()
        .position(|s| s.to == target && s.id != 7101)
        .map(|i| p.sim.sent_times()[i])
        .expect("resent");
    assert!(pushed_at < resent, "the key went before the second try");
    // What the client saw for its id: QueueStatus answers, never the routing error.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut statuses = 0;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, client.next()).await {
        match frame.payload_variant {
            Some(meshtastic::protobufs::from_radio::PayloadVariant::QueueStatus(q)) => {
                assert_eq!(q.mesh_packet_id, 7101, "answers come under the client's id");
                statuses += 1;
            }
            Some(meshtastic::protobufs::from_radio::PayloadVariant::Packet(ref packet)) => {
                assert!(
                    keysync::engine::pki_send_failed(packet).is_none(),
                    "the client saw the routing error"
                );
            }
            _ => {}
        }
    }
    assert!(statuses >= 1, "the client's DM was answered");
    p.engine.quit().await;
}

/// Which of `ids` reached the radio.
fn at_radio(sim: &SimHandle, ids: &[u32]) -> Vec<u32> {
    let sent: BTreeSet<u32> = sim.counters().packet_ids().into_iter().collect();
    ids.iter().copied().filter(|id| sent.contains(id)).collect()
}

#[tokio::test]
async fn an_encrypted_admin_message_for_the_radio_is_opened_and_judged_as_the_clear_one() {
    use meshtastic::protobufs::admin_message::PayloadVariant as A;
    // Reboots are denied (the proxy tests' default); set_owner is an app's kind and passes.
    let p = started(3, |_| {}).await;
    let mut client = configured_client(p.addr).await;
    let my = p.sim.my_node_num();
    let long_fast = keysync::engine::ChannelKey::default_channel();
    let owner = meshtastic::protobufs::User {
        long_name: "PWNED-ENC".into(),
        ..meshtastic::protobufs::User::default()
    };
    let reboot = client
        .sealed_admin(my, A::RebootSeconds(60), &long_fast)
        .await;
    let to_zero = client
        .sealed_admin(0, A::RebootSeconds(60), &long_fast)
        .await;
    let to_all = client
        .sealed_admin(engine::BROADCAST, A::ShutdownSeconds(1), &long_fast)
        .await;
    let set_owner = client
        .sealed_admin(my, A::SetOwner(owner), &long_fast)
        .await;
    let text = client
        .sealed(
            engine::BROADCAST,
            meshtastic::protobufs::PortNum::TextMessageApp,
            b"sealed hello".to_vec(),
            &long_fast,
        )
        .await;
    text_through(&mut client, &p.sim).await;
    assert_eq!(
        at_radio(&p.sim, &[reboot, to_zero, to_all, set_owner, text]),
        [set_owner, text],
        "the encrypted reboots stay out, the owner and the text go"
    );
    p.engine.quit().await;
}

#[tokio::test]
async fn an_encrypted_packet_for_the_radio_that_no_held_key_opens_is_dropped() {
    use meshtastic::protobufs::admin_message::PayloadVariant as A;
    let p = started(3, |c| c.deny_admin.clear()).await;
    let mut client = configured_client(p.addr).await;
    let my = p.sim.my_node_num();
    let theirs = keysync::engine::ChannelKey::new("secret", &[9; 32]).expect("key");
    let unjudged = client.sealed_admin(my, A::RebootSeconds(60), &theirs).await;
    // For another node the radio passes it on unopened: nothing to judge.
    let elsewhere = client
        .sealed_admin(0x0bad_0003, A::RebootSeconds(60), &theirs)
        .await;
    text_through(&mut client, &p.sim).await;
    assert_eq!(at_radio(&p.sim, &[unjudged, elsewhere]), [elsewhere]);
    p.engine.quit().await;
}

#[tokio::test]
async fn deny_admin_destructive_drops_everything_off_the_allowlist_unknown_fields_included() {
    use meshtastic::Message as _;
    use meshtastic::protobufs::admin_message::PayloadVariant as A;
    let p = started(3, |c| {
        c.deny_admin = keysync::engine::DestructiveAdmin::ALL.to_vec();
    })
    .await;
    let mut client = configured_client(p.addr).await;
    let my = p.sim.my_node_num();
    let delete = client
        .admin(my, A::DeleteFileRequest("/prefs/db.proto".into()))
        .await;
    let dfu = client.admin(my, A::EnterDfuModeRequest(true)).await;
    let exit = client.admin(my, A::ExitSimulator(true)).await;
    // set_time_only, then a field (200) this build cannot name: a later firmware may run it.
    let mut unnamed = meshtastic::protobufs::AdminMessage {
        payload_variant: Some(A::SetTimeOnly(1_700_000_000)),
        ..Default::default()
    }
    .encode_to_vec();
    unnamed.extend([0xc2, 0x0c, 1, 0]);
    let unknown = client
        .packet(my, meshtastic::protobufs::PortNum::AdminApp, unnamed)
        .await;
    let favourite = client.admin(my, A::SetFavoriteNode(0x0bad_0002)).await;
    let getter = client.admin(my, A::GetOwnerRequest(true)).await;
    text_through(&mut client, &p.sim).await;
    assert_eq!(
        at_radio(&p.sim, &[delete, dfu, exit, unknown, favourite, getter]),
        [favourite, getter]
    );
    p.engine.quit().await;
}

#[tokio::test]
async fn add_contact_for_the_gateway_itself_or_naming_another_node_is_dropped_and_never_learned() {
    let p = started(3, |_| {}).await;
    let mut client = configured_client(p.addr).await;
    let my = p.sim.my_node_num();
    let snap = p.engine.snapshot.clone();
    let forged = [0x66; 32];
    let own = client
        .contact(
            my,
            &common::proto::node_info(my, "PWNED", "PW", forged.to_vec()),
        )
        .await;
    let mut other = common::proto::node_info(0x0bad_7001, "Other", "OT", forged.to_vec());
    if let Some(user) = other.user.as_mut() {
        user.id = engine::node_id(0x0bad_7002);
    }
    let misnamed = client.contact(my, &other).await;
    let fine = client
        .contact(
            my,
            &common::proto::node_info(0x0bad_7003, "Fine", "FI", [0x67; 32].to_vec()),
        )
        .await;
    text_through(&mut client, &p.sim).await;
    assert_eq!(at_radio(&p.sim, &[own, misnamed, fine]), [fine]);
    wait_until("the fine contact learned", || {
        snap.borrow()
            .nodes
            .iter()
            .any(|n| n.record.num == 0x0bad_7003)
    })
    .await;
    let view = snap.borrow().clone();
    assert!(
        view.nodes
            .iter()
            .all(|n| n.record.trusted != Some(forged) && n.record.num != 0x0bad_7001),
        "neither forged contact was learned"
    );
    p.engine.quit().await;
}

#[tokio::test]
async fn after_quit_the_clients_are_closed_and_the_listening_port_is_free() {
    let p = started(3, |_| {}).await;
    let mut client = configured_client(p.addr).await;
    let addr = p.addr;
    p.engine.quit().await;
    // Bound again at once, by another process's listener as much as by a restarted keysync.
    let again = std::net::TcpListener::bind(addr);
    assert!(again.is_ok(), "{addr} is still bound: {again:?}");
    // Returns once the proxy closed it; a client left open would fail the wait.
    client.closed().await;
}

#[tokio::test]
async fn a_key_trusted_a_moment_ago_already_holds_back_a_client_s_different_one() {
    let p = started(3, |_| {}).await;
    let mut client = configured_client(p.addr).await;
    let my = p.sim.my_node_num();
    let num = 0x0bad_7101;
    let first = client
        .contact(
            my,
            &common::proto::node_info(num, "New", "NW", [0x31; 32].to_vec()),
        )
        .await;
    // The engine publishes the trust the moment the store has it, not at the views' next
    // refresh: the proxy judges the next add_contact by it.
    let mut trusted = p.engine.trusted.clone();
    tokio::time::timeout(
        Duration::from_secs(5),
        trusted.wait_for(|t| t.key(num) == Some([0x31; 32])),
    )
    .await
    .expect("trusted within 5 s")
    .expect("the engine runs");
    let second = client
        .contact(
            my,
            &common::proto::node_info(num, "New", "NW", [0x32; 32].to_vec()),
        )
        .await;
    text_through(&mut client, &p.sim).await;
    assert_eq!(at_radio(&p.sim, &[first, second]), [first]);
    p.engine.quit().await;
}
