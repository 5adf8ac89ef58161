//! A radio on USB: the simulated radio behind a real pseudo-terminal (`SimHandle::start_serial`,
//! what `keysync sim --serial-pty` runs), with the serial console's quirks — a frame parser
//! that may hold a stale half-frame until the wake-up bytes flush it, debug log text until the
//! API is active, `LogRecord` frames after — and unplugging that closes the pty and removes its
//! link. keysync opens the link's path as it would open `/dev/serial/by-id/…`.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::python::{required_cli, run_client, run_client_args, spawn_logged};
use common::raw::{RawClient, node_infos};
use common::*;
use keysync::engine::ProxyConfig;
use keysync::engine::{CloseCause, LinkNotice, LinkState};
use keysync::engine::{Outcome, Trigger};
use keysync::sim::{Fault, SimHandle};
use meshtastic::protobufs::{PortNum, from_radio};

/// A radio on a pty linked from `dir/radio`.
fn serial_sim(dir: &tempfile::TempDir, nodes: usize) -> SimHandle {
    SimHandle::start_serial(sim_config(nodes), dir.path().join("radio")).expect("a pty")
}

#[tokio::test]
async fn the_handshake_over_a_pty_wakes_the_radio_and_needs_no_second_try() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = serial_sim(&dir, 12);
    let link_path = sim.serial_path().expect("on a serial port").to_owned();
    assert!(
        std::fs::read_link(&link_path).is_ok(),
        "the path is a link to the pty"
    );
    let mut linked = Linked::to(sim, |_| {}).await;
    let status = linked.status.now();
    assert_eq!(status.host, link_path.display().to_string());
    assert_eq!(status.radio.as_ref().map(|r| r.nodes_in_db), Some(13));
    // The radio's parser held a stale half-frame; without the wake-up bytes the first
    // want_config would have gone into it and the download timed out.
    assert!(
        !states(&linked.status.status)
            .iter()
            .any(|s| matches!(s, LinkState::Closed(_))),
        "up on the first try: {:?}",
        states(&linked.status.status)
    );
    assert_eq!(linked.sim.counters().connections.load(Ordering::Relaxed), 1);
    // Once the API is active the radio sends its log as frames, not text.
    let mut log_records = 0;
    while let Ok(notice) = linked.notices.try_recv() {
        if let LinkNotice::Frame(f) = notice
            && matches!(
                f.payload_variant,
                Some(from_radio::PayloadVariant::LogRecord(_))
            )
        {
            log_records += 1;
        }
    }
    assert!(log_records >= 1, "the radio's LogRecord reached the link");
    linked.link.shutdown().await;
}

#[tokio::test]
async fn debug_text_and_garbage_between_frames_are_skipped_and_counted_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = serial_sim(&dir, 5);
    // The radio prints its debug log while nobody talks to it; the port buffers it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut linked = Linked::to(sim, |_| {}).await;
    let counters = linked.link.counters();
    let text = counters.garbage_bytes.load(Ordering::Relaxed);
    assert!(
        text > 0,
        "the debug text before the API was active was skipped"
    );
    linked.sim.inject(Fault::Garbage { bytes: 700 }).await;
    wait_until("the garbage to be counted", || {
        counters.garbage_bytes.load(Ordering::Relaxed) >= text + 600
    })
    .await;
    let beats = counters.heartbeat_rtt.read().count;
    wait_until("a heartbeat answered after the garbage", || {
        counters.heartbeat_rtt.read().count > beats
    })
    .await;
    assert!(
        linked.status.now().state.is_up()
            && !states(&linked.status.status)
                .iter()
                .any(|s| matches!(s, LinkState::Closed(_))),
        "noise never ends the session: {:?}",
        states(&linked.status.status)
    );
    linked.link.shutdown().await;
}

#[tokio::test]
async fn a_serial_radio_is_synced_then_skipped_while_nothing_changed() {
    let known = population(1, 15);
    let mut h = Harness::start_serial(sim_config(12), &known, |c| {
        c.sync_interval = Duration::from_secs(1);
        c.sync.cache_ttl = Duration::from_secs(30);
    });
    let first = h.report(1).await;
    assert_eq!(
        (first.trigger, first.outcome),
        (Trigger::Startup, Outcome::Forced)
    );
    assert_eq!(
        (first.in_radio, first.pushed),
        (12, 3),
        "{}",
        first.summary()
    );
    let pushed: BTreeSet<u32> = h.sim.contacts().iter().map(|c| c.node_num).collect();
    let lacking: BTreeSet<u32> = known[12..].iter().map(|n| n.num).collect();
    assert_eq!(pushed, lacking);
    let second = h.report(2).await;
    assert_eq!(second.outcome, Outcome::Skipped, "{}", second.summary());
    assert_eq!(second.frames_sent, 0);
    h.quit().await;
}

#[tokio::test]
async fn an_unplug_is_device_gone_and_the_replug_reconnects_with_a_forced_sync() {
    let mut h = Harness::start_serial(sim_config(8), &population(1, 8), |_| {});
    let first = h.report(1).await;
    assert_eq!(first.trigger, Trigger::Startup);
    h.sim
        .inject(Fault::Unplug {
            down: Duration::from_millis(500),
        })
        .await;
    let link_path = h.sim.serial_path().expect("serial").to_owned();
    assert!(!link_path.exists(), "unplugged: the name is gone");
    settled(&mut h.snap, "device gone, then up again", |s| {
        let states: Vec<&LinkState> = s.link.timeline.iter().map(|e| &e.state).collect();
        states
            .iter()
            .position(|st| **st == LinkState::Closed(CloseCause::DeviceGone))
            .is_some_and(|gone| states[gone..].iter().any(|st| st.is_up()))
    })
    .await;
    let second = h.report(2).await;
    assert_eq!(
        (second.trigger, second.outcome),
        (Trigger::Reconnect, Outcome::Forced)
    );
    let now = h.snap.borrow().link.clone();
    assert_eq!(now.last_cause, Some(CloseCause::DeviceGone));
    assert!(h.snap.borrow().traffic.closes[CloseCause::DeviceGone.index()] >= 1);
    assert_eq!(h.sim.counters().connections.load(Ordering::Relaxed), 2);
    h.quit().await;
}

#[tokio::test]
async fn proxy_clients_share_a_serial_radio() {
    let mut h = Harness::start_serial(sim_config(10), &[], |c| {
        c.proxy = Some(ProxyConfig::new("127.0.0.1:0".parse().expect("addr")));
    });
    h.report(1).await;
    let addr = h.snap.borrow().proxy_addr.expect("the proxy listens");
    let mut a = RawClient::connect(addr).await;
    let mut b = RawClient::connect(addr).await;
    let nodes_a = node_infos(&a.download(7).await);
    let nodes_b = node_infos(&b.download(8).await);
    assert_eq!(nodes_a.len(), 11, "own node + 10");
    assert_eq!(nodes_b.len(), 11);
    let to = nodes_a[1].num;
    let id = a
        .packet(to, PortNum::TextMessageApp, b"over usb".to_vec())
        .await;
    let status = a.queue_status(id).await;
    assert_eq!(status.res, 0, "the radio took the text");
    wait_until("the text on the mesh", || {
        h.sim.sent().iter().any(|p| p.to == to)
    })
    .await;
    assert_eq!(
        h.sim.counters().connections.load(Ordering::Relaxed),
        1,
        "one opening of the port for keysync and both clients"
    );
    h.quit().await;
}

/// The real Python CLI through `keysync --headless --serial … --listen` (the binary), in front
/// of the simulated radio on a pty: `--nodes` lists the radio's nodes, `--sendtext` reaches it.
#[test]
#[cfg_attr(
    no_python,
    ignore = "python3 is missing: the Python meshtastic client cannot be installed"
)]
fn the_python_cli_lists_nodes_and_sends_a_text_through_keysync_on_a_serial_radio() {
    let cli = required_cli();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = rt.block_on(async { serial_sim(&dir, 6) });
    let link = sim.serial_path().expect("serial").to_owned();
    let (child, proxy, log) = spawn_logged(
        Command::new(env!("CARGO_BIN_EXE_keysync"))
            .args(["--headless", "--listen", "127.0.0.1:0", "--heartbeat", "2s"])
            .arg("--serial")
            .arg(&link)
            .arg("--db")
            .arg(dir.path().join("k.db")),
        "point the gateway's bot at ",
    );
    let _keysync = KillOnDrop(child);
    let table = run_client(&cli, &proxy, "--nodes");
    for node in sim.nodedb() {
        let id = node.user.expect("user").id;
        assert!(table.contains(&id), "--nodes lacks {id}:\n{table}");
    }
    let out = run_client_args(&cli, &proxy, &["--sendtext", "hello from usb"]);
    assert!(out.contains("Sending text message"), "{out}");
    rt.block_on(wait_until("the text on the mesh", || {
        sim.sent().iter().any(|p| {
            p.payload_variant.as_ref().is_some_and(|v| match v {
                meshtastic::protobufs::mesh_packet::PayloadVariant::Decoded(d) => {
                    d.payload == b"hello from usb"
                }
                meshtastic::protobufs::mesh_packet::PayloadVariant::Encrypted(_) => false,
            })
        })
    }));
    assert_eq!(sim.counters().connections.load(Ordering::Relaxed), 1);
    let log = log.lock().expect("log").clone();
    assert!(
        !log.iter().any(|l| l.contains("link closed")),
        "the serial link held: {log:#?}"
    );
    drop(rt);
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
