//! The simulated radio behaves like the firmware version it claims, hazards included
//! (PROTOCOL.md; each test names the firmware rule). Driven over real TCP by a bare client, not
//! through keysync, so what is asserted is the radio's behaviour alone.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::raw::{RawClient, my_node_num, node_infos, nodedb_count, routing_error};
use common::{sim_config, start_sim, wait_until};
use keysync::engine::{CONFIG_ONLY_NONCE, NODES_ONLY_NONCE, heartbeat};
use keysync::sim::{Fault, Hw, OperatorAction, Profile, SimConfig, SimHandle, SimRole};
use meshtastic::protobufs::{
    FromRadio, MeshPacket, PortNum, SharedContact, ToRadio, admin_message::PayloadVariant as Admin,
    from_radio, mesh_packet, routing, to_radio,
};

fn profile(firmware: &str, hw: Hw) -> Profile {
    Profile::new(firmware, hw, SimRole::Client).expect("valid profile")
}

fn firmware_sim(firmware: &str, hw: Hw, nodes: usize) -> SimConfig {
    SimConfig {
        profile: profile(firmware, hw),
        reboot_time: Duration::from_secs(2),
        ..sim_config(nodes)
    }
}

/// Connects and runs a full download; returns the client and the radio's node number.
async fn connected(sim: &SimHandle) -> (RawClient, u32) {
    let mut client = RawClient::connect(sim.addr()).await;
    let frames = client.download(7).await;
    (client, my_node_num(&frames))
}

/// Pushes every node the radio holds back to it with add_contact, as a careless client would.
async fn favourite_everything(sim: &SimHandle, client: &mut RawClient, my: u32) {
    for node in sim.nodedb().into_iter().skip(1) {
        let id = client.contact(my, &node).await;
        let status = client.queue_status(id).await;
        assert_eq!(
            status.res, 0,
            "Router.cpp: ERRNO_OK for packets to the own node"
        );
    }
}

/// A node of the generated mesh that the radio does not hold.
fn unknown_node(sim: &SimHandle) -> u32 {
    let held: Vec<u32> = sim.nodedb().iter().map(|n| n.num).collect();
    sim.mesh()
        .iter()
        .map(|n| n.num)
        .find(|n| !held.contains(n))
        .expect("the mesh is larger than the NodeDB")
}

fn counter(
    sim: &SimHandle,
    pick: impl Fn(&keysync::sim::SimCounters) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    pick(&sim.counters()).load(Ordering::Relaxed)
}

#[tokio::test]
async fn a_2_7_26_nrf52_full_of_favourites_crashes_at_the_next_unknown_node_and_again_after_reboot()
{
    // NodeDB.cpp getOrCreateMeshNode (2.7.x): nothing evictable → meshNodes->at() past the end.
    let sim = start_sim(firmware_sim("2.7.26", Hw::Nrf52, 100));
    assert_eq!(sim.capacity(), 80, "MAX_NUM_NODES on nRF52");
    let (mut client, my) = connected(&sim).await;
    favourite_everything(&sim, &mut client, my).await;
    let protected = sim.protected();
    assert_eq!((protected.favourite, protected.total), (79, 79));
    assert_eq!(
        counter(&sim, |c| &c.flash_writes),
        79,
        "one flash write per add_contact"
    );

    sim.hear_from(unknown_node(&sim), PortNum::PositionApp);
    client.closed().await;
    assert_eq!(counter(&sim, |c| &c.crashes), 1);
    assert!(sim.is_down());
    assert!(
        tokio::net::TcpStream::connect(sim.addr()).await.is_err(),
        "a rebooting radio refuses connections"
    );

    wait_until("the radio is back", || !sim.is_down()).await;
    let mut client = RawClient::connect(sim.addr()).await;
    let nodes = node_infos(&client.download(NODES_ONLY_NONCE).await);
    assert_eq!(
        nodes.len(),
        80,
        "back with the NodeDB as last written to flash"
    );
    assert!(nodes.iter().skip(1).all(|n| n.is_favorite));
    sim.hear_from(unknown_node(&sim), PortNum::TelemetryApp);
    client.closed().await;
    assert_eq!(
        counter(&sim, |c| &c.crashes),
        2,
        "and again at the next unknown node"
    );
    assert_eq!(sim.evictions(), 0);
}

#[tokio::test]
async fn a_2_8_radio_caps_favourites_so_the_next_unknown_node_evicts_instead_of_crashing() {
    // NodeDB.cpp setProtectedFlag (PR #10705): favourites stop at MAX − 2, so a careless client
    // cannot fill the NodeDB with protected nodes; the one stored past the cap is evicted for
    // the stranger, into the warm tier.
    let sim = start_sim(firmware_sim("2.8", Hw::Nrf52, 130));
    assert_eq!(sim.capacity(), 120);
    let (mut client, my) = connected(&sim).await;
    favourite_everything(&sim, &mut client, my).await;
    assert_eq!(sim.protected().total, 118);
    let unprotected = sim
        .nodedb()
        .into_iter()
        .skip(1)
        .find(|n| !n.is_favorite)
        .expect("the node past the cap");
    let stranger = unknown_node(&sim);
    sim.hear_from(stranger, PortNum::PositionApp);
    client
        .recv_until("the stranger's packet", |f| {
            matches!(&f.payload_variant, Some(from_radio::PayloadVariant::Packet(p)) if p.from == stranger)
        })
        .await;
    assert_eq!(counter(&sim, |c| &c.crashes), 0);
    assert_eq!(counter(&sim, |c| &c.refused_nodes), 0);
    assert!(sim.nodedb().iter().any(|n| n.num == stranger));
    assert!(sim.nodedb().iter().all(|n| n.num != unprotected.num));
    assert!(sim.warm_key_of(unprotected.num).is_some());
    // The link is still up.
    let nodes = node_infos(&client.download(NODES_ONLY_NONCE).await);
    assert_eq!(nodes.len(), 120);
}

#[tokio::test]
async fn on_2_8_an_evicted_node_stays_encrypted_to_from_a_warm_tier_no_client_sees() {
    // WarmNodeStore.cpp (PR #10705): eviction keeps {num, last_heard, key}; copyPublicKey falls
    // back to it, so a DM still goes out (2.7.26 refuses it with PKI_SEND_FAIL_PUBLIC_KEY); the
    // node list and nodedb_count cover the NodeDB alone; remove_by_nodenum erases the copy.
    // When full, a second new node from a packet within 2 s is not admitted (#11102).
    for (firmware, warm) in [("2.8", true), ("2.7.26", false)] {
        let sim = start_sim(SimConfig {
            capacity: Some(6),
            ..firmware_sim(firmware, Hw::Linux, 10)
        });
        let (mut client, my) = connected(&sim).await;
        let held_before: Vec<u32> = sim.nodedb().iter().map(|n| n.num).collect();
        let first = unknown_node(&sim);
        sim.hear_from(first, PortNum::TextMessageApp);
        // Another stranger right away: deferred on 2.8, admitted on 2.7 (evicting the first
        // one, keyless).
        let second = sim
            .mesh()
            .iter()
            .map(|n| n.num)
            .find(|n| !held_before.contains(n) && *n != first)
            .expect("a second stranger");
        sim.hear_from(second, PortNum::TelemetryApp);
        let admitted = sim.nodedb().iter().any(|n| n.num == second);
        assert_eq!(admitted, !warm, "{firmware}");
        assert_eq!(
            counter(&sim, |c| &c.deferred_nodes),
            u64::from(warm),
            "{firmware}"
        );
        let evicted = held_before
            .into_iter()
            .find(|num| sim.nodedb().iter().all(|n| n.num != *num))
            .expect("a node made room");
        let key = sim
            .mesh()
            .into_iter()
            .find(|n| n.num == evicted)
            .and_then(|n| n.user)
            .map(|u| u.public_key);
        assert_eq!(
            sim.warm_key_of(evicted).map(|k| k.to_vec()),
            key.filter(|_| warm),
            "{firmware}"
        );

        let frames = client.download(7).await;
        assert_eq!(nodedb_count(&frames), 6, "{firmware}");
        assert!(
            node_infos(&frames).iter().all(|n| n.num != evicted),
            "{firmware}"
        );

        let dm = client
            .packet(evicted, PortNum::PrivateApp, b"still there?".to_vec())
            .await;
        if warm {
            client.queue_status(dm).await;
            assert!(sim.sent().iter().any(|p| p.id == dm), "{firmware}");
        } else {
            let frame = client
                .recv_until("a routing error", |f| routing_error(f).is_some())
                .await;
            assert_eq!(
                routing_error(&frame),
                Some((routing::Error::PkiSendFailPublicKey, dm))
            );
        }

        let id = client.admin(my, Admin::RemoveByNodenum(evicted)).await;
        client.queue_status(id).await;
        assert!(sim.warm_key_of(evicted).is_none(), "{firmware}");
        let dm = client
            .packet(evicted, PortNum::PrivateApp, b"gone".to_vec())
            .await;
        let frame = client
            .recv_until("a routing error", |f| {
                routing_error(f).is_some_and(|(_, id)| id == dm)
            })
            .await;
        assert_eq!(
            routing_error(&frame),
            Some((routing::Error::PkiSendFailPublicKey, dm))
        );
    }
}

#[tokio::test]
async fn before_2_6_8_add_contact_is_ignored_and_69421_is_a_full_download() {
    // AdminModule.cpp has no add_contact before 2.6.8; PhoneAPI.cpp no SPECIAL_NONCE_ONLY_NODES.
    let sim = start_sim(firmware_sim("2.6.7", Hw::Esp32, 10));
    let (mut client, my) = connected(&sim).await;
    let frames = client.download(NODES_ONLY_NONCE).await;
    assert!(
        frames.iter().any(|f| matches!(
            f.payload_variant,
            Some(from_radio::PayloadVariant::MyInfo(_))
        )),
        "69421 is an ordinary nonce: my_info, config and all"
    );
    assert!(frames.iter().any(|f| matches!(
        f.payload_variant,
        Some(from_radio::PayloadVariant::Channel(_))
    )));
    let target = sim.nodedb()[1].clone();
    let before = sim.key_of(target.num);
    let mut user = target.user.clone().unwrap_or_default();
    user.public_key = vec![9; 32];
    let id = client
        .admin(
            my,
            Admin::AddContact(SharedContact {
                node_num: target.num,
                user: Some(user),
                ..SharedContact::default()
            }),
        )
        .await;
    assert_eq!(client.queue_status(id).await.res, 0);
    assert_eq!(
        sim.key_of(target.num),
        before,
        "field 66 is unknown: nothing changes"
    );
    assert_eq!(counter(&sim, |c| &c.flash_writes), 0);
    assert_eq!(counter(&sim, |c| &c.ignored_admin), 1);
}

#[tokio::test]
async fn from_2_6_8_69421_sends_the_node_list_only() {
    let sim = start_sim(firmware_sim("2.6.8", Hw::Esp32, 10));
    let mut client = RawClient::connect(sim.addr()).await;
    let frames = client.download(NODES_ONLY_NONCE).await;
    assert_eq!(
        frames.len(),
        1 + 10 + 1,
        "own node, ten others, config_complete_id"
    );
    let first = node_infos(&frames)[0].clone();
    assert!(first.is_favorite && first.num == sim.my_node_num());
}

/// Sends heartbeats with `nonces`, then a broadcast packet: the first frame the radio answers
/// with, which must be a QueueStatus, and the packet's id.
async fn first_queue_status_after(
    client: &mut RawClient,
    nonces: &[u32],
    firmware: &str,
) -> (meshtastic::protobufs::QueueStatus, u32) {
    for nonce in nonces {
        client.send(heartbeat(*nonce)).await;
    }
    let id = client
        .packet(0xFFFF_FFFF, PortNum::RangeTestApp, b"x".to_vec())
        .await;
    let first = client.recv().await.expect("an answer");
    let Some(from_radio::PayloadVariant::QueueStatus(q)) = first.payload_variant else {
        panic!("{firmware}: expected a QueueStatus, got {first:?}");
    };
    (q, id)
}

#[tokio::test]
async fn heartbeats_are_answered_from_2_7_6_and_not_by_2_7_4() {
    // PhoneAPI.cpp getFromRadio: heartbeatReceived checked first from 2.7.6 (#7506).
    for (firmware, answered) in [("2.7.4", false), ("2.7.6", true)] {
        let sim = start_sim(firmware_sim(firmware, Hw::Esp32, 3));
        let (mut client, _) = connected(&sim).await;
        let (q, id) = first_queue_status_after(&mut client, &[42], firmware).await;
        let for_heartbeat = q.mesh_packet_id == 0;
        assert_eq!(for_heartbeat, answered, "{firmware}");
        assert!(for_heartbeat || q.mesh_packet_id == id);
    }
}

#[tokio::test]
async fn heartbeat_nonce_1_broadcasts_the_own_nodeinfo_from_2_7_23_once_per_minute_unanswered() {
    // PhoneAPI.cpp handleToRadio: nonce 1 → NodeInfoModule::sendOurNodeInfo on its 60 s path,
    // and heartbeatReceived is not set, so no QueueStatus. Before 2.7.23 it is a heartbeat.
    for (firmware, pings) in [("2.7.26", true), ("2.7.22", false)] {
        let sim = start_sim(firmware_sim(firmware, Hw::Linux, 3));
        let (mut client, my) = connected(&sim).await;
        let (q, id) = first_queue_status_after(&mut client, &[1, 1], firmware).await;
        assert_eq!(q.mesh_packet_id == id, pings, "{firmware}");
        let own_nodeinfos = sim
            .sent()
            .iter()
            .filter(|p| {
                p.from == my
                    && matches!(&p.payload_variant, Some(mesh_packet::PayloadVariant::Decoded(d))
                        if d.portnum == PortNum::NodeinfoApp as i32 && d.want_response)
            })
            .count();
        let expected = u64::from(pings);
        assert_eq!(own_nodeinfos as u64, expected, "{firmware}: one per 60 s");
        assert_eq!(
            counter(&sim, |c| &c.nodeinfo_broadcasts),
            expected,
            "{firmware}"
        );
    }
}

#[tokio::test]
async fn nodedb_count_is_the_total_also_in_a_config_only_download_from_2_7_4() {
    for (firmware, expect_total) in [("2.7.26", true), ("2.7.3", false)] {
        let sim = start_sim(firmware_sim(firmware, Hw::Linux, 12));
        let mut client = RawClient::connect(sim.addr()).await;
        let frames = client.download(CONFIG_ONLY_NONCE).await;
        let count = nodedb_count(&frames);
        let expected = if expect_total { 13 } else { 0 };
        assert_eq!(count, expected, "{firmware}");
        assert!(
            node_infos(&frames).len() == 1,
            "config only: own node alone"
        );
    }
}

#[tokio::test]
async fn a_changed_key_heard_on_the_mesh_never_replaces_the_stored_one() {
    // NodeDB.cpp updateUser: 2.5.0 – 2.7.5 copy the stored key into the incoming User; 2.7.6+
    // drop the NodeInfo. Either way the client sees the NODEINFO_APP packet with the new key.
    for firmware in ["2.5.6", "2.7.5", "2.7.26"] {
        let sim = start_sim(firmware_sim(firmware, Hw::Linux, 3));
        let (mut client, _) = connected(&sim).await;
        let num = sim.mesh()[0].num;
        let stored = sim.key_of(num);
        assert!(stored.is_some(), "{firmware}");
        sim.inject(Fault::KeyChange { node: 0 }).await;
        client
            .recv_until("the announcement", |f| {
                matches!(&f.payload_variant, Some(from_radio::PayloadVariant::Packet(p)) if p.from == num)
            })
            .await;
        let announced = sim.mesh()[0].user.clone().map(|u| u.public_key);
        assert_ne!(
            announced.as_deref(),
            stored.as_ref().map(<[u8; 32]>::as_slice)
        );
        assert_eq!(sim.key_of(num), stored, "{firmware}");
    }
}

#[tokio::test]
async fn add_contact_marks_the_node_verified_on_2_7_11_and_a_managed_radio_ignores_it() {
    // NodeDB.cpp addFromContact (2.6.9 – 2.7.11); AdminModule.cpp is_managed.
    let sim = start_sim(firmware_sim("2.7.11", Hw::Esp32, 5));
    let (mut client, my) = connected(&sim).await;
    let target = sim.nodedb()[1].clone();
    let id = client
        .admin(
            my,
            Admin::AddContact(SharedContact {
                node_num: target.num,
                user: target.user.clone(),
                manually_verified: false,
                ..SharedContact::default()
            }),
        )
        .await;
    client.queue_status(id).await;
    let stored = sim
        .nodedb()
        .into_iter()
        .find(|n| n.num == target.num)
        .expect("kept");
    assert!(stored.is_favorite && stored.is_key_manually_verified);
    assert_eq!(sim.protected().verified, 1);

    let managed = start_sim(SimConfig {
        managed: true,
        ..firmware_sim("2.7.26", Hw::Esp32, 5)
    });
    let (mut client, my) = connected(&managed).await;
    let target = managed.nodedb()[1].clone();
    let id = client.contact(my, &target).await;
    client.queue_status(id).await;
    assert_eq!(
        managed.protected().favourite,
        0,
        "a managed radio ignores client admin"
    );
    assert_eq!(counter(&managed, |c| &c.flash_writes), 0);
}

#[tokio::test]
async fn operator_decisions_ignore_remove_and_favourite_as_the_admin_module_does() {
    let sim = start_sim(firmware_sim("2.7.26", Hw::Linux, 6));
    let (mut client, my) = connected(&sim).await;
    let nodes = sim.nodedb();
    let (a, b, c) = (nodes[1].num, nodes[2].num, nodes[3].num);
    for admin in [
        Admin::SetIgnoredNode(a),
        Admin::RemoveByNodenum(b),
        Admin::SetFavoriteNode(c),
    ] {
        let id = client.admin(my, admin).await;
        client.queue_status(id).await;
    }
    let list = node_infos(&client.download(NODES_ONLY_NONCE).await);
    let ignored = list
        .iter()
        .find(|n| n.num == a)
        .expect("ignored, not removed");
    assert!(ignored.is_ignored);
    assert!(
        ignored
            .user
            .as_ref()
            .is_some_and(|u| u.public_key.is_empty()),
        "key erased"
    );
    assert!(list.iter().all(|n| n.num != b), "removed");
    assert!(list.iter().any(|n| n.num == c && n.is_favorite));
    assert!(sim.operator(OperatorAction::Unfavorite, c));
    assert_eq!(
        counter(&sim, |c| &c.flash_writes),
        4,
        "each decision writes flash"
    );

    // Router.cpp: a packet from an ignored node is dropped, not forwarded.
    let forwarded = counter(&sim, |c| &c.announcements);
    sim.hear_from(a, PortNum::NodeinfoApp);
    assert_eq!(counter(&sim, |c| &c.announcements), forwarded);
    assert!(
        sim.key_of(a).is_none(),
        "hearing it again does not bring the key back"
    );
}

#[tokio::test]
async fn favourite_and_ignore_decisions_restart_the_lora_chip_up_to_2_7_26() {
    // AdminModule.cpp saveChanges → MeshService::reloadConfig → RadioInterface::reconfigure
    // for a node the radio knows; remove_by_nodenum saves the NodeDB only. Develop (2.8)
    // reconfigures only for LoRa config and channel saves (#11146).
    for (firmware, restarts) in [("2.7.26", 3), ("2.8", 0)] {
        let sim = start_sim(firmware_sim(firmware, Hw::Linux, 6));
        let (mut client, my) = connected(&sim).await;
        let nodes = sim.nodedb();
        let (a, b, c) = (nodes[1].num, nodes[2].num, nodes[3].num);
        for admin in [
            Admin::SetFavoriteNode(a),
            Admin::RemoveFavoriteNode(a),
            Admin::SetIgnoredNode(b),
            Admin::RemoveByNodenum(c),
            Admin::SetFavoriteNode(0x0bad_cafe),
        ] {
            let id = client.admin(my, admin).await;
            client.queue_status(id).await;
        }
        assert_eq!(counter(&sim, |c| &c.operator_actions), 4, "{firmware}");
        assert_eq!(counter(&sim, |c| &c.lora_restarts), restarts, "{firmware}");
    }
}

#[tokio::test]
async fn any_packet_from_an_unknown_node_creates_a_keyless_entry_that_evicts() {
    // NodeDB.cpp updateFrom → getOrCreateMeshNode, for every packet, not only NodeInfo.
    let sim = start_sim(SimConfig {
        capacity: Some(6),
        ..firmware_sim("2.7.26", Hw::Linux, 8)
    });
    let (mut client, _) = connected(&sim).await;
    let stranger = unknown_node(&sim);
    sim.hear_from(stranger, PortNum::TelemetryApp);
    client
        .recv_until("the telemetry packet", |f| {
            matches!(&f.payload_variant, Some(from_radio::PayloadVariant::Packet(p)) if p.from == stranger)
        })
        .await;
    let list = node_infos(&client.download(NODES_ONLY_NONCE).await);
    let created = list.iter().find(|n| n.num == stranger).expect("created");
    assert!(
        created.user.is_none(),
        "no user and no key from a telemetry packet"
    );
    assert_eq!(sim.evictions(), 1, "a keyed node made room");
}

#[tokio::test]
async fn a_node_pushed_and_given_back_is_evicted_first_from_2_7_14() {
    // NodeDB.cpp: addFromContact leaves last_heard at 0 for a node it creates (2.7.14+; before,
    // the time of the push), and getOrCreateMeshNode evicts the lowest last_heard.
    for (firmware, pushed_evicted) in [("2.7.26", true), ("2.7.13", false)] {
        let sim = start_sim(SimConfig {
            capacity: Some(6),
            ..firmware_sim(firmware, Hw::Linux, 10)
        });
        let (mut client, my) = connected(&sim).await;
        let pushed = sim
            .mesh()
            .into_iter()
            .find(|n| sim.nodedb().iter().all(|held| held.num != n.num))
            .expect("a node the radio lacks");
        let id = client.contact(my, &pushed).await;
        client.queue_status(id).await;
        let id = client
            .admin(my, Admin::RemoveFavoriteNode(pushed.num))
            .await;
        client.queue_status(id).await;
        let held_before: Vec<u32> = sim.nodedb().iter().map(|n| n.num).collect();
        sim.hear_from(unknown_node(&sim), PortNum::TextMessageApp);
        let gone: Vec<u32> = held_before
            .into_iter()
            .filter(|num| sim.nodedb().iter().all(|n| n.num != *num))
            .collect();
        assert_eq!(gone.len(), 1, "{firmware}");
        assert_eq!(gone[0] == pushed.num, pushed_evicted, "{firmware}");
    }
}

/// A text that names `from` as its sender (clients send from 0; the radio's own number makes
/// the firmware's routing error come back to the client).
async fn text_from(client: &mut RawClient, from: u32, id: u32, body: &str) -> u32 {
    client
        .send(ToRadio {
            payload_variant: Some(to_radio::PayloadVariant::Packet(MeshPacket {
                from,
                ..common::proto::text_packet(0xFFFF_FFFF, id, body)
            })),
        })
        .await;
    id
}

fn notification(frame: &FromRadio) -> Option<(Option<u32>, String)> {
    match &frame.payload_variant {
        Some(from_radio::PayloadVariant::ClientNotification(n)) => {
            Some((n.reply_id, n.message.clone()))
        }
        _ => None,
    }
}

#[tokio::test]
async fn per_connection_rate_limits_follow_phoneapi() {
    // PhoneAPI.cpp handleToRadioPacket: text 2 s, position and telemetry 10 s per port, dropped
    // with res = 0. The RATE_LIMIT_EXCEEDED error (2.7.4+) goes to the packet's sender: to the
    // client only when that names the radio (seen so on meshtasticd 2.7.26).
    let sim = start_sim(firmware_sim("2.7.26", Hw::Linux, 3));
    let (mut client, my) = connected(&sim).await;
    let all = 0xFFFF_FFFF;
    let t1 = client
        .packet(all, PortNum::TextMessageApp, b"one".to_vec())
        .await;
    assert_eq!(client.queue_status(t1).await.res, 0);
    let t2 = client
        .packet(all, PortNum::TextMessageApp, b"two".to_vec())
        .await;
    assert_eq!(client.queue_status(t2).await.res, 0);
    let p1 = client.packet(all, PortNum::PositionApp, vec![]).await;
    client.queue_status(p1).await;
    let p2 = client.packet(all, PortNum::PositionApp, vec![]).await;
    assert_eq!(
        client.queue_status(p2).await.res,
        0,
        "the sender believes it went out"
    );
    let tel = client.packet(all, PortNum::TelemetryApp, vec![]).await;
    client.queue_status(tel).await;
    assert_eq!(counter(&sim, |c| &c.rate_limited), 2);
    assert_eq!(
        counter(&sim, |c| &c.mesh_sent),
        3,
        "text, position, telemetry (another port)"
    );

    // The limits belong to the connection: a new one starts afresh. Texts naming the radio as
    // sender get the routing error back.
    drop(client);
    let (mut again, _) = connected(&sim).await;
    let t3 = text_from(&mut again, my, 0x9001, "three").await;
    again.queue_status(t3).await;
    assert_eq!(counter(&sim, |c| &c.mesh_sent), 4);
    let t4 = text_from(&mut again, my, 0x9002, "four").await;
    let frame = again
        .recv_until("the routing error", |f| {
            routing_error(f).is_some_and(|(e, _)| e != routing::Error::None)
        })
        .await;
    assert_eq!(
        routing_error(&frame),
        Some((routing::Error::RateLimitExceeded, t4))
    );
    assert!(
        !again.seen.iter().any(|f| notification(f).is_some()),
        "2.7.4+ sends no notification for texts"
    );
    assert_eq!(counter(&sim, |c| &c.mesh_sent), 4);
}

#[tokio::test]
async fn the_text_limit_exists_from_2_7_0_and_is_told_by_a_notification_until_2_7_3() {
    // PhoneAPI.cpp handleToRadioPacket (#7139, 2.7.0.705515a): 2.7.0 – 2.7.3 answer a text over
    // the limit with a ClientNotification (whoever the sender), 2.7.4+ with a routing error;
    // 2.6.x has no text limit.
    for (firmware, limited) in [("2.6.13", false), ("2.7.0.705515a", true), ("2.7.3", true)] {
        let sim = start_sim(firmware_sim(firmware, Hw::Linux, 3));
        let (mut client, _) = connected(&sim).await;
        let t1 = client
            .packet(0xFFFF_FFFF, PortNum::TextMessageApp, b"one".to_vec())
            .await;
        client.queue_status(t1).await;
        let t2 = client
            .packet(0xFFFF_FFFF, PortNum::TextMessageApp, b"two".to_vec())
            .await;
        assert_eq!(client.queue_status(t2).await.res, 0, "{firmware}");
        if limited {
            let frame = client
                .recv_until("the notification", |f| notification(f).is_some())
                .await;
            assert_eq!(
                notification(&frame),
                Some((
                    Some(t2),
                    "Text messages can only be sent once every 2 seconds".into()
                )),
                "{firmware}"
            );
        }
        let sent = if limited { 1 } else { 2 };
        assert_eq!(counter(&sim, |c| &c.mesh_sent), sent, "{firmware}");
        assert!(!client.seen.iter().any(|f| {
            routing_error(f).is_some_and(|(e, _)| e == routing::Error::RateLimitExceeded)
        }));
    }
}

#[tokio::test]
async fn a_dm_to_a_node_without_a_key_fails_with_pki_send_fail_from_2_7_19() {
    // Router.cpp perhapsEncode (#9485); before, the DM goes out without PKI.
    for (firmware, refused) in [("2.7.26", true), ("2.7.15", false)] {
        let sim = start_sim(SimConfig {
            capacity: Some(4),
            ..firmware_sim(firmware, Hw::Linux, 8)
        });
        let (mut client, _) = connected(&sim).await;
        let keyless = unknown_node(&sim);
        let id = client
            .packet(keyless, PortNum::TextMessageApp, b"hi".to_vec())
            .await;
        if refused {
            let frame = client
                .recv_until("a routing error", |f| routing_error(f).is_some())
                .await;
            assert_eq!(
                routing_error(&frame),
                Some((routing::Error::PkiSendFailPublicKey, id))
            );
            assert_eq!(counter(&sim, |c| &c.mesh_sent), 0, "{firmware}");
        } else {
            client.queue_status(id).await;
            assert_eq!(counter(&sim, |c| &c.mesh_sent), 1, "{firmware}");
        }
        // A DM to a node whose key the radio holds goes out on every version.
        let keyed = sim.nodedb()[1].num;
        let id = client
            .packet(keyed, PortNum::PrivateApp, b"hi".to_vec())
            .await;
        client.queue_status(id).await;
        assert!(sim.sent().iter().any(|p| p.id == id), "{firmware}");
    }
    // The scenario action reports it for a DM a client sent.
    let sim = start_sim(firmware_sim("2.7.26", Hw::Linux, 3));
    let (mut client, _) = connected(&sim).await;
    sim.inject(Fault::DmFail { node: 1 }).await;
    let frame = client
        .recv_until("a routing error", |f| routing_error(f).is_some())
        .await;
    assert!(matches!(
        routing_error(&frame),
        Some((routing::Error::PkiSendFailPublicKey, _))
    ));
}

#[tokio::test]
async fn names_that_are_not_utf8_are_sent_raw_before_2_7_23_and_sanitized_after() {
    // Before 2.7.23 the firmware stores and sends the bytes (firmware #7260); from 2.7.23
    // sanitizeUtf8 turns each invalid byte into '?'.
    let sim = start_sim(firmware_sim("2.7.15", Hw::Linux, 3));
    let (mut client, _) = connected(&sim).await;
    sim.inject(Fault::BadUtf8Name { node: 0 }).await;
    let frame = client
        .recv_until("the announcement", |f| {
            matches!(
                f.payload_variant,
                Some(from_radio::PayloadVariant::Packet(_))
            )
        })
        .await;
    let Some(from_radio::PayloadVariant::Packet(p)) = frame.payload_variant else {
        unreachable!()
    };
    let Some(mesh_packet::PayloadVariant::Decoded(data)) = p.payload_variant else {
        panic!("decoded packet");
    };
    assert!(
        data.payload.windows(2).any(|w| w == [0xFF, 0xFE]),
        "raw bytes on the air"
    );
    assert!(
        <meshtastic::protobufs::User as meshtastic::Message>::decode(data.payload.as_slice())
            .is_err(),
        "prost refuses the whole User: the hazard"
    );
    let list = node_infos(&client.download(NODES_ONLY_NONCE).await);
    assert_eq!(
        client.repaired(),
        1,
        "our codec decodes the node_info leniently"
    );
    assert_eq!(list.len(), 4, "no node lost");
    let first = sim.mesh()[0].clone();
    let kept = list.iter().find(|n| n.num == first.num).expect("kept");
    let user = kept.user.clone().expect("user");
    assert_eq!(
        Some(user.public_key),
        first.user.map(|u| u.public_key),
        "its key too"
    );
    assert!(user.long_name.contains('\u{FFFD}'), "{}", user.long_name);

    let sim = start_sim(firmware_sim("2.7.23", Hw::Linux, 3));
    let (mut client, _) = connected(&sim).await;
    sim.inject(Fault::BadUtf8Name { node: 0 }).await;
    let list = node_infos(&client.download(NODES_ONLY_NONCE).await);
    assert_eq!(client.undecodable(), 0);
    let first = sim.mesh()[0].num;
    let name = list
        .iter()
        .find(|n| n.num == first)
        .and_then(|n| n.user.as_ref())
        .map(|u| u.long_name.clone())
        .expect("stored");
    assert!(name.ends_with("??!"), "{name}");
}

#[tokio::test]
async fn the_hardware_sets_capacity_and_the_client_queue() {
    for (hw, capacity) in [
        (Hw::Nrf52, 80),
        (Hw::Esp32, 100),
        (Hw::Esp32s3, 250),
        (Hw::Linux, 200),
    ] {
        let sim = start_sim(firmware_sim("2.7.26", hw, 1));
        assert_eq!(sim.capacity(), capacity, "{hw}");
        let frames = RawClient::connect(sim.addr()).await.download(9).await;
        let env = frames.iter().find_map(|f| match &f.payload_variant {
            Some(from_radio::PayloadVariant::MyInfo(m)) => Some(m.pio_env.clone()),
            _ => None,
        });
        assert_eq!(env.as_deref(), Some(hw_env(hw)));
    }
    assert_eq!(profile("2.7.26", Hw::Esp32).client_queue(), 8);
}

fn hw_env(hw: Hw) -> &'static str {
    match hw {
        Hw::Nrf52 => "rak4631",
        Hw::Esp32 => "tbeam",
        Hw::Esp32s3 => "heltec-v3",
        Hw::Linux => "native",
    }
}

#[tokio::test]
async fn a_packet_wanting_an_ack_is_acknowledged_implicitly_when_broadcast_and_by_its_destination_when_direct()
 {
    // ReliableRouter.cpp: the radio hearing a neighbour rebroadcast its broadcast acks it
    // itself (an implicit ack, from the own node); a DM is acked by the node it went to.
    let sim = start_sim(sim_config(5));
    let (mut client, my) = connected(&sim).await;
    let peer = sim.mesh()[2].num;
    // First a DM that asks for nothing: an ack for it would come before the others.
    let unasked = client
        .packet(peer, PortNum::PrivateApp, b"no ack".to_vec())
        .await;
    // Text and a port without a rate limit: neither is over the firmware's limits.
    let broadcast = client
        .packet_with(0xFFFF_FFFF, PortNum::TextMessageApp, b"all".to_vec(), true)
        .await;
    let direct = client
        .packet_with(peer, PortNum::PrivateApp, b"you".to_vec(), true)
        .await;
    let mut acks = Vec::new();
    while acks.len() < 2 {
        let frame = client
            .recv_until("an ack", |f| routing_error(f).is_some())
            .await;
        let Some(from_radio::PayloadVariant::Packet(p)) = &frame.payload_variant else {
            unreachable!("routing_error picks packets");
        };
        let (error, request) = routing_error(&frame).expect("a routing packet");
        assert_eq!(error, routing::Error::None);
        acks.push((request, p.from, p.to));
    }
    acks.sort_unstable();
    let mut expected = vec![(broadcast, my, my), (direct, peer, my)];
    expected.sort_unstable();
    assert_eq!(acks, expected);
    assert!(!acks.iter().any(|(r, _, _)| *r == unasked));
}

#[tokio::test]
async fn a_node_heard_without_its_user_is_asked_for_its_nodeinfo_and_answers_once_per_10_minutes() {
    // MeshService.cpp: "Heard new node on ch. N, send NodeInfo and ask for response"; the
    // answer is rate-limited (NodeInfoModule.cpp). Seen on meshtasticd 2.7.26 and 2.8: the key
    // of a node that just booted is on the gateway within milliseconds of its first text.
    let sim = start_sim(SimConfig {
        in_radio: Some(0),
        nodeinfo_sent_at_start: false,
        ..firmware_sim("2.7.26", Hw::Linux, 2)
    });
    let mesh = sim.mesh();
    let key = |num: u32| sim.key_of(num);
    let (mut client, _) = connected(&sim).await;
    sim.hear_from(mesh[0].num, PortNum::TextMessageApp);
    let answer = client
        .recv_until("the node's NodeInfo", |f| {
            matches!(&f.payload_variant, Some(from_radio::PayloadVariant::Packet(p))
                if p.from == mesh[0].num
                    && matches!(&p.payload_variant, Some(mesh_packet::PayloadVariant::Decoded(d)) if d.portnum == PortNum::NodeinfoApp as i32))
        })
        .await;
    assert!(answer.payload_variant.is_some());
    assert!(
        key(mesh[0].num).is_some(),
        "the radio learned the key itself"
    );
    // A node that sent its NodeInfo lately does not answer: it stays keyless.
    let quiet = start_sim(SimConfig {
        in_radio: Some(0),
        ..firmware_sim("2.7.26", Hw::Linux, 2)
    });
    let node = quiet.mesh()[1].num;
    quiet.hear_from(node, PortNum::TextMessageApp);
    wait_until("the node listed", || {
        quiet.nodedb().iter().any(|n| n.num == node)
    })
    .await;
    assert_eq!(quiet.key_of(node), None);
}
