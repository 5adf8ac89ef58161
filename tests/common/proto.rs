//! Builders for the protobuf messages and store records that tests otherwise write out field by
//! field.

use keysync::engine::{NodeSeen, Source};
use meshtastic::protobufs::{
    Data, FromRadio, MeshPacket, NodeInfo, PortNum, User, from_radio, mesh_packet,
};

/// A node with a user record: its id derived from `num`, names and key as given.
pub fn node_info(num: u32, long_name: &str, short_name: &str, public_key: Vec<u8>) -> NodeInfo {
    NodeInfo {
        num,
        user: Some(User {
            id: keysync::engine::node_id(num),
            long_name: long_name.into(),
            short_name: short_name.into(),
            public_key,
            ..User::default()
        }),
        ..NodeInfo::default()
    }
}

/// A decoded packet to `to` with id `id` on `portnum`.
pub fn packet(to: u32, id: u32, portnum: PortNum, payload: Vec<u8>) -> MeshPacket {
    MeshPacket {
        to,
        id,
        payload_variant: Some(mesh_packet::PayloadVariant::Decoded(Data {
            portnum: portnum as i32,
            payload,
            ..Data::default()
        })),
        ..MeshPacket::default()
    }
}

/// A text message packet.
pub fn text_packet(to: u32, id: u32, body: &str) -> MeshPacket {
    packet(to, id, PortNum::TextMessageApp, body.as_bytes().to_vec())
}

/// `node` as the radio sends it in a config download, frame `id`.
pub fn node_frame(id: u32, node: NodeInfo) -> FromRadio {
    FromRadio {
        id,
        payload_variant: Some(from_radio::PayloadVariant::NodeInfo(node)),
    }
}

/// `packet` as the radio passes it on, frame `id`.
pub fn packet_frame(id: u32, packet: MeshPacket) -> FromRadio {
    FromRadio {
        id,
        payload_variant: Some(from_radio::PayloadVariant::Packet(packet)),
    }
}

/// A node heard on the mesh with a key of 32 bytes `key`, as the store learns it.
pub fn node_seen(num: u32, key: u8, long_name: &str) -> NodeSeen {
    NodeSeen {
        num,
        long_name: long_name.into(),
        short_name: "X".into(),
        hw_model: 9,
        role: 0,
        public_key: vec![key; 32],
        source: Source::Mesh,
        is_favorite: false,
        flags: keysync::engine::UserFlags::default(),
    }
}
