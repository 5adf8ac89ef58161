//! The link supervisor against the simulated radio over real TCP, one fault at a time.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use keysync::engine;
use keysync::engine::{ClientCodec, frame_bytes};
use keysync::engine::{CloseCause, LinkNotice, LinkState};
use keysync::sim::{Fault, Forget};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

#[tokio::test]
async fn handshake_brings_the_link_up_with_the_radio_s_node_list() {
    let mut linked = Linked::up(sim_config(12), |_| {}).await;
    let session = loop {
        match linked.notices.recv().await.expect("notices flow") {
            LinkNotice::Up(s) => break s,
            LinkNotice::Frame(_)
            | LinkNotice::Down(_)
            | LinkNotice::Download(_)
            | LinkNotice::Contact(_) => {}
        }
    };
    assert_eq!(session.my_node_num, linked.sim.my_node_num());
    assert_eq!(session.nodes.len(), 13, "own node + 12");
    assert!(session.firmware.starts_with("2.7."));
    // Some generated keys carry the frame magic; they must arrive intact.
    let with_magic = session
        .nodes
        .iter()
        .filter_map(|n| n.user.as_ref())
        .filter(|u| u.public_key.windows(2).any(|w| w == [0x94, 0xC3]))
        .count();
    assert!(with_magic >= 2, "{with_magic} keys with 94 C3");
    for node in &session.nodes {
        assert_eq!(
            linked.sim.key_of(node.num).map(|k| k.to_vec()),
            node.user.as_ref().map(|u| u.public_key.clone())
        );
    }
    let info = linked.status.now().radio.clone().expect("radio info");
    assert_eq!(info.nodes_in_db, 13);
    linked.link.shutdown().await;
    wait_until("the sim to see the disconnect", || {
        linked.sim.counters().received().get("disconnect") == Some(&1)
    })
    .await;
}

#[tokio::test]
async fn a_dropped_connection_is_named_and_reconnected() {
    let mut linked = Linked::up(sim_config(5), |_| {}).await;
    linked.sim.inject(Fault::Drop).await;
    linked
        .status
        .next("closed by radio", |s| {
            *s == LinkState::Closed(CloseCause::ClosedByRadio)
        })
        .await;
    linked.status.next("up again", LinkState::is_up).await;
    assert_eq!(linked.status.now().sessions, 2);
    assert_eq!(linked.sim.counters().connections.load(Ordering::Relaxed), 2);
    assert_eq!(
        linked.sim.counters().received().get("want_config"),
        Some(&2)
    );
    linked.link.shutdown().await;
}

#[tokio::test]
async fn a_stalled_radio_is_detected_within_three_heartbeats_and_reconnected() {
    let mut linked = Linked::up(sim_config(5), |_| {}).await;
    let heartbeat = linked.config.heartbeat;
    let stalled_at = tokio::time::Instant::now();
    linked
        .sim
        .inject(Fault::Stall {
            duration: Duration::from_secs(30),
        })
        .await;
    linked
        .status
        .next("stalled", |s| *s == LinkState::Stalled)
        .await;
    // The watchdog fires 3 heartbeats after the last frame, which came before the stall.
    let took = stalled_at.elapsed();
    assert!(
        took <= heartbeat * 3 + Duration::from_secs(2),
        "stall detected after {took:?}"
    );
    linked.status.next("up again", LinkState::is_up).await;
    assert_eq!(linked.status.now().last_cause, Some(CloseCause::Stalled));
    linked.link.shutdown().await;
}

#[tokio::test]
async fn refused_connections_back_off_with_growing_jittered_delays() {
    let mut linked = Linked::up(sim_config(5), |_| {}).await;
    linked
        .sim
        .inject(Fault::Refuse {
            duration: Duration::from_millis(2500),
        })
        .await;
    linked.sim.inject(Fault::Drop).await;
    linked
        .status
        .next("refused", |s| *s == LinkState::Closed(CloseCause::Refused))
        .await;
    linked
        .status
        .next("up after the refusals", LinkState::is_up)
        .await;
    let backoffs: Vec<(u32, Duration, Duration)> = states(&linked.status.status)
        .into_iter()
        .filter_map(|s| match s {
            LinkState::Backoff {
                attempt,
                ceiling,
                delay,
            } => Some((attempt, ceiling, delay)),
            _ => None,
        })
        .collect();
    assert!(backoffs.len() >= 4, "{backoffs:?}");
    let ceilings: Vec<u128> = backoffs.iter().map(|b| b.1.as_millis()).collect();
    assert_eq!(
        &ceilings[..4],
        &[50, 100, 200, 400],
        "doubling from the base"
    );
    assert!(ceilings.iter().all(|c| *c <= 400), "capped: {ceilings:?}");
    assert!(
        backoffs.iter().all(|(_, c, d)| d <= c),
        "delay within ceiling"
    );
    assert!(
        backoffs.iter().any(|(_, c, d)| d != c),
        "jittered: {backoffs:?}"
    );
    let attempts: Vec<u32> = backoffs.iter().map(|b| b.0).collect();
    assert!(
        attempts.windows(2).all(|w| w[1] == w[0] + 1),
        "{attempts:?}"
    );
    linked.link.shutdown().await;
}

#[tokio::test]
async fn a_rebooting_radio_is_reconnected_once_it_is_back() {
    let mut linked = Linked::up(sim_config(8), |_| {}).await;
    linked
        .sim
        .inject(Fault::Reboot {
            down: Duration::from_millis(1500),
            forget: Forget::Keys,
        })
        .await;
    linked
        .status
        .next("refused while down", |s| {
            *s == LinkState::Closed(CloseCause::Refused)
        })
        .await;
    linked
        .status
        .next("up after reboot", LinkState::is_up)
        .await;
    // The new session's NodeDB has lost every key but our own.
    let session = loop {
        match linked.notices.recv().await.expect("notices flow") {
            LinkNotice::Up(s) if s.id > 1 => break s,
            _ => {}
        }
    };
    let keyed = session
        .nodes
        .iter()
        .filter(|n| {
            n.user
                .as_ref()
                .is_some_and(|u| engine::valid_key(&u.public_key).is_some())
        })
        .count();
    assert_eq!(keyed, 1, "only the own node keeps its key");
    linked.link.shutdown().await;
}

/// A bot that reconnects the moment it is kicked, as the Python client's auto-reconnect does.
async fn rival_client(addr: std::net::SocketAddr, stop: tokio_util::sync::CancellationToken) {
    while !stop.is_cancelled() {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let hello = frame_bytes(&engine::want_config(4242)).expect("fits");
        if stream.write_all(&hello).await.is_err() {
            continue;
        }
        let mut frames = FramedRead::new(stream, ClientCodec::new());
        tokio::select! {
            () = async { while let Some(Ok(_)) = frames.next().await {} } => {}
            () = stop.cancelled() => return,
        }
    }
}

#[tokio::test]
async fn another_client_taking_the_radio_triggers_the_takeover_rule_instead_of_a_fight() {
    let mut linked = Linked::up(sim_config(5), |_| {}).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let rival = tokio::spawn(rival_client(linked.sim.addr(), stop.clone()));
    let contended = linked
        .status
        .next("contended", |s| matches!(s, LinkState::Contended { .. }))
        .await;
    assert_eq!(
        contended,
        LinkState::Contended {
            delay: linked.config.takeover_backoff
        }
    );
    assert!(
        contended
            .to_string()
            .contains("another client is using the radio")
    );
    // While contended keysync stays away: the rival keeps the radio.
    let connections = linked.sim.counters().connections.load(Ordering::Relaxed);
    let early_closes = states(&linked.status.status)
        .iter()
        .filter(|s| **s == LinkState::Closed(CloseCause::ClosedByRadio))
        .count();
    assert_eq!(early_closes, 3, "three early closes, then it backs off");
    stop.cancel();
    let _ = rival.await;
    linked
        .status
        .next("up after the rival left", LinkState::is_up)
        .await;
    assert!(linked.sim.counters().connections.load(Ordering::Relaxed) > connections);
    linked.link.shutdown().await;
}

#[tokio::test]
async fn heartbeats_keep_an_idle_closing_radio_open() {
    let mut radio = sim_config(5);
    radio.idle_timeout = Duration::from_secs(2);
    let mut linked = Linked::up(radio, |c| c.heartbeat = Duration::from_millis(500)).await;
    // Observe for three idle timeouts: the radio must not close us.
    wait_until("six heartbeats", || {
        linked
            .sim
            .counters()
            .received()
            .get("heartbeat")
            .copied()
            .unwrap_or(0)
            >= 12
    })
    .await;
    assert_eq!(linked.sim.counters().idle_closes.load(Ordering::Relaxed), 0);
    assert_eq!(linked.status.now().sessions, 1);
    assert!(linked.status.now().state.is_up());
    linked.link.shutdown().await;
}

#[tokio::test]
async fn without_heartbeats_the_same_radio_closes_the_idle_client() {
    // The control for the test above: it proves the sim's idle close is real.
    let mut radio = sim_config(5);
    radio.idle_timeout = Duration::from_secs(1);
    let mut linked = Linked::up(radio, |c| c.heartbeat = Duration::from_secs(60)).await;
    linked
        .status
        .next("closed by radio", |s| {
            *s == LinkState::Closed(CloseCause::ClosedByRadio)
        })
        .await;
    assert_eq!(linked.sim.counters().idle_closes.load(Ordering::Relaxed), 1);
    linked.link.shutdown().await;
}

#[tokio::test]
async fn garbage_on_the_wire_never_breaks_the_stream() {
    let mut linked = Linked::up(sim_config(10), |_| {}).await;
    let counters = linked.link.counters();
    for _ in 0..5 {
        linked.sim.inject(Fault::Garbage { bytes: 300 }).await;
        linked.sim.inject(Fault::Announce { node: 0 }).await;
    }
    wait_until("garbage counted", || {
        counters.garbage_bytes.load(Ordering::Relaxed) >= 1000
    })
    .await;
    let before = counters.frames_in.load(Ordering::Relaxed);
    wait_until("heartbeat answers after the garbage", || {
        counters.frames_in.load(Ordering::Relaxed) >= before + 3
    })
    .await;
    assert_eq!(
        linked.status.now().sessions,
        1,
        "{:?}",
        states(&linked.status.status)
    );
    assert!(linked.status.now().state.is_up());
    linked.link.shutdown().await;
}

/// A radio that answers each config request with `my_node_num` as its own number and
/// nothing else: enough for keysync to judge the handshake.
async fn radio_numbered(listener: tokio::net::TcpListener, my_node_num: u32) {
    use meshtastic::Message as _;
    use meshtastic::protobufs::{ToRadio, to_radio};
    use tokio::io::AsyncReadExt as _;
    while let Ok((mut stream, _)) = listener.accept().await {
        let mut header = [0u8; 4];
        while stream.read_exact(&mut header).await.is_ok() {
            let mut body = vec![0; usize::from(u16::from_be_bytes([header[2], header[3]]))];
            if stream.read_exact(&mut body).await.is_err() {
                break;
            }
            let Ok(ToRadio {
                payload_variant: Some(to_radio::PayloadVariant::WantConfigId(nonce)),
            }) = ToRadio::decode(body.as_slice())
            else {
                continue;
            };
            let reply = common::raw::handshake_reply(my_node_num, nonce);
            if stream.write_all(&reply).await.is_err() {
                break;
            }
        }
    }
}

#[tokio::test]
async fn a_radio_numbered_broadcast_or_zero_is_refused_with_the_reason() {
    for (num, id) in [(0xffff_ffff, "!ffffffff"), (0, "no my_info")] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("addr");
        let radio = tokio::spawn(radio_numbered(listener, num));
        let mut link = keysync::engine::Link::spawn(fast_link_to(&addr.to_string()));
        let mut status = StateWatch::new(link.status());
        status
            .next("closed after the handshake", |s| {
                matches!(s, LinkState::Backoff { .. } | LinkState::Closed(_))
            })
            .await;
        let now = status.now();
        assert_eq!(now.sessions, 0, "never up: {now:?}");
        assert!(now.radio.is_none(), "{now:?}");
        match &now.last_cause {
            Some(CloseCause::Protocol(why)) => assert!(why.contains(id), "{why}"),
            other => panic!("{other:?}"),
        }
        link.shutdown().await;
        radio.abort();
    }
}
