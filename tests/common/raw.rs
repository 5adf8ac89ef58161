//! A bare client of the radio's TCP API: our codec on a real socket and nothing of keysync's
//! engine, so tests can drive the simulated radio exactly as any client could.

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use keysync::engine::ClientCodec;
use keysync::engine::{admin_of, want_config};
use meshtastic::Message;
use meshtastic::protobufs::{
    AdminMessage, FromRadio, NodeInfo, PortNum, QueueStatus, Routing, SharedContact, ToRadio,
    admin_message, from_radio, mesh_packet, routing, to_radio,
};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::WAIT;

pub struct RawClient {
    conn: Framed<TcpStream, ClientCodec>,
    next_id: u32,
    /// Every frame received so far, in order.
    pub seen: Vec<FromRadio>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("radio accepts");
        Self {
            conn: Framed::new(stream, ClientCodec::new()),
            // The radio ignores a packet whose id repeats one of its last 20, across
            // connections too (seen on meshtasticd): each client numbers from its own base.
            next_id: {
                static BASE: std::sync::atomic::AtomicU32 =
                    std::sync::atomic::AtomicU32::new(0x1000);
                BASE.fetch_add(0x1_0000, std::sync::atomic::Ordering::Relaxed)
            },
            seen: Vec::new(),
        }
    }

    /// Frames the codec could not decode so far.
    pub fn undecodable(&self) -> u64 {
        self.conn.codec().stats().undecodable
    }

    /// Frames decoded only leniently (names that are not UTF-8).
    pub fn repaired(&self) -> u64 {
        self.conn.codec().stats().repaired
    }

    pub async fn send(&mut self, msg: ToRadio) {
        self.conn.send(msg).await.expect("radio takes the frame");
    }

    /// The next frame, or `None` when the radio closed the connection.
    pub async fn recv(&mut self) -> Option<FromRadio> {
        match tokio::time::timeout(WAIT, self.conn.next()).await {
            Ok(Some(Ok(frame))) => {
                self.seen.push(frame.clone());
                Some(frame)
            }
            Ok(Some(Err(_)) | None) => None,
            Err(elapsed) => panic!("the radio sent nothing for {WAIT:?} ({elapsed})"),
        }
    }

    /// The next frame that `pred` picks, skipping others; panics if the radio closes first.
    pub async fn recv_until(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&FromRadio) -> bool,
    ) -> FromRadio {
        loop {
            let frame = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("closed while waiting for {what}"));
            if pred(&frame) {
                return frame;
            }
        }
    }

    /// A whole config download for `nonce`: every frame up to its `config_complete_id`.
    pub async fn download(&mut self, nonce: u32) -> Vec<FromRadio> {
        self.send(want_config(nonce)).await;
        let mut frames = Vec::new();
        loop {
            let frame = self.recv().await.expect("the radio finishes the download");
            let done = matches!(frame.payload_variant, Some(from_radio::PayloadVariant::ConfigCompleteId(n)) if n == nonce);
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    /// Waits until the radio closes the connection; the frames that came before.
    pub async fn closed(&mut self) -> Vec<FromRadio> {
        let mut frames = Vec::new();
        while let Some(frame) = self.recv().await {
            frames.push(frame);
        }
        frames
    }

    /// Numbers this client's next packets after `start`: two clients of one radio connection
    /// must not reuse ids, the radio ignores a repeated one.
    pub fn number_from(&mut self, start: u32) {
        self.next_id = start;
    }

    /// Sends a packet; returns its id.
    pub async fn packet(&mut self, to: u32, portnum: PortNum, payload: Vec<u8>) -> u32 {
        self.packet_with(to, portnum, payload, false).await
    }

    /// Sends a packet, asking the mesh for an acknowledgement when `want_ack`; returns its id.
    pub async fn packet_with(
        &mut self,
        to: u32,
        portnum: PortNum,
        payload: Vec<u8>,
        want_ack: bool,
    ) -> u32 {
        self.next_id += 1;
        let id = self.next_id;
        self.send(ToRadio {
            payload_variant: Some(to_radio::PayloadVariant::Packet(
                meshtastic::protobufs::MeshPacket {
                    want_ack,
                    ..super::proto::packet(to, id, portnum, payload)
                },
            )),
        })
        .await;
        id
    }

    /// Sends an admin message to the radio's own node `my`; returns the packet id.
    pub async fn admin(&mut self, my: u32, admin: admin_message::PayloadVariant) -> u32 {
        let payload = AdminMessage {
            payload_variant: Some(admin),
            ..AdminMessage::default()
        }
        .encode_to_vec();
        self.packet(my, PortNum::AdminApp, payload).await
    }

    /// Sends `admin` to `to` as an attacker would slip it past a filter that reads only clear
    /// packets: a Data encrypted with the channel `key` (from 0, as clients send), `channel`
    /// naming the key's hash; returns the packet id.
    pub async fn sealed_admin(
        &mut self,
        to: u32,
        admin: admin_message::PayloadVariant,
        key: &keysync::engine::ChannelKey,
    ) -> u32 {
        let payload = AdminMessage {
            payload_variant: Some(admin),
            ..AdminMessage::default()
        }
        .encode_to_vec();
        self.sealed(to, PortNum::AdminApp, payload, key).await
    }

    /// Sends `payload` on `portnum` to `to`, encrypted with the channel `key`; the packet id.
    pub async fn sealed(
        &mut self,
        to: u32,
        portnum: PortNum,
        payload: Vec<u8>,
        key: &keysync::engine::ChannelKey,
    ) -> u32 {
        self.next_id += 1;
        let id = self.next_id;
        let mut bytes = meshtastic::protobufs::Data {
            portnum: portnum as i32,
            payload,
            ..meshtastic::protobufs::Data::default()
        }
        .encode_to_vec();
        key.apply(id, 0, &mut bytes);
        self.send(ToRadio {
            payload_variant: Some(to_radio::PayloadVariant::Packet(
                meshtastic::protobufs::MeshPacket {
                    to,
                    id,
                    channel: u32::from(key.hash()),
                    payload_variant: Some(
                        meshtastic::protobufs::mesh_packet::PayloadVariant::Encrypted(bytes),
                    ),
                    ..meshtastic::protobufs::MeshPacket::default()
                },
            )),
        })
        .await;
        id
    }

    /// add_contact with the node's own user record, as a careless client pushes; the packet id.
    pub async fn contact(&mut self, my: u32, node: &NodeInfo) -> u32 {
        let contact = SharedContact {
            node_num: node.num,
            user: node.user.clone(),
            ..SharedContact::default()
        };
        self.admin(my, admin_message::PayloadVariant::AddContact(contact))
            .await
    }

    /// The QueueStatus for packet `id`.
    pub async fn queue_status(&mut self, id: u32) -> QueueStatus {
        match self
            .recv_until("a QueueStatus", |f| {
                matches!(&f.payload_variant, Some(from_radio::PayloadVariant::QueueStatus(q)) if q.mesh_packet_id == id)
            })
            .await
            .payload_variant
        {
            Some(from_radio::PayloadVariant::QueueStatus(q)) => q,
            _ => unreachable!("picked a QueueStatus"),
        }
    }
}

/// The node_infos of a download, in order.
pub fn node_infos(frames: &[FromRadio]) -> Vec<NodeInfo> {
    frames
        .iter()
        .filter_map(|f| match &f.payload_variant {
            Some(from_radio::PayloadVariant::NodeInfo(n)) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

/// `my_node_num` from a full download.
pub fn my_node_num(frames: &[FromRadio]) -> u32 {
    frames
        .iter()
        .find_map(|f| match &f.payload_variant {
            Some(from_radio::PayloadVariant::MyInfo(m)) => Some(m.my_node_num),
            _ => None,
        })
        .expect("a full download starts with my_info")
}

/// `nodedb_count` from a full or config-only download's `my_info`.
pub fn nodedb_count(frames: &[FromRadio]) -> u32 {
    frames
        .iter()
        .find_map(|f| match &f.payload_variant {
            Some(from_radio::PayloadVariant::MyInfo(m)) => Some(m.nodedb_count),
            _ => None,
        })
        .expect("the download starts with my_info")
}

/// The routing error and request id a frame carries, if it is a routing packet.
pub fn routing_error(frame: &FromRadio) -> Option<(routing::Error, u32)> {
    let Some(from_radio::PayloadVariant::Packet(p)) = &frame.payload_variant else {
        return None;
    };
    let Some(mesh_packet::PayloadVariant::Decoded(data)) = &p.payload_variant else {
        return None;
    };
    if data.portnum != PortNum::RoutingApp as i32 {
        return None;
    }
    let routing = Routing::decode(data.payload.as_slice()).ok()?;
    match routing.variant? {
        routing::Variant::ErrorReason(e) => {
            Some((routing::Error::try_from(e).ok()?, data.request_id))
        }
        _ => None,
    }
}

/// Whether a frame is a packet whose admin payload is there (for filtering).
pub fn is_admin(frame: &ToRadio) -> bool {
    matches!(&frame.payload_variant, Some(to_radio::PayloadVariant::Packet(p)) if admin_of(p).is_some())
}

/// What a radio that knows nothing but its number answers a `want_config_id` of `nonce` with,
/// framed: its my_info, its firmware (2.7.15) and the complete id — enough for keysync to
/// judge a handshake.
pub fn handshake_reply(my_node_num: u32, nonce: u32) -> Vec<u8> {
    use meshtastic::protobufs::{DeviceMetadata, MyNodeInfo, from_radio};
    [
        from_radio::PayloadVariant::MyInfo(MyNodeInfo {
            my_node_num,
            ..MyNodeInfo::default()
        }),
        from_radio::PayloadVariant::Metadata(DeviceMetadata {
            firmware_version: "2.7.15".into(),
            ..DeviceMetadata::default()
        }),
        from_radio::PayloadVariant::ConfigCompleteId(nonce),
    ]
    .into_iter()
    .flat_map(|answer| {
        let frame = FromRadio {
            id: 1,
            payload_variant: Some(answer),
        };
        keysync::engine::frame_bytes(&frame).expect("encodes")
    })
    .collect()
}
