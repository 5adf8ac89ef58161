//! Reading what gateways upload: a `ServiceEnvelope` on `…/2/e/<channel>/<gateway>` (the
//! packet encrypted with its channel's key) or the JSON form on `…/2/json/…`. Only NodeInfo
//! with a valid public key is kept; everything else is counted and dropped.

use std::collections::HashMap;

use meshtastic::Message;
use meshtastic::protobufs::{Data, PortNum, ServiceEnvelope, mesh_packet};
use serde::Deserialize;

use super::crypto::ChannelKey;
use crate::radio::{
    self, LONG_NAME_MAX, NodeSeen, SHORT_NAME_MAX, Source, decode_user, is_node_num,
};
use crate::store::parse_key;

/// The largest message read from the broker: an envelope holds one radio packet (≤ 256 bytes)
/// and two short ids, a fleet record a key and two names. Anything longer is not read.
pub const PAYLOAD_MAX: usize = 2048;
/// The largest encrypted payload a radio sends (MAX_BLOCKSIZE in the firmware).
const ENCRYPTED_MAX: usize = 256;

/// Why a broker message taught nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// Longer than [`PAYLOAD_MAX`].
    Oversized,
    /// Not an envelope, a JSON uplink or a fleet record; or one missing what it must carry.
    Garbage,
    /// Encrypted for a channel keysync has no key for (or PKI-encrypted).
    NoChannelKey,
    /// None of the keys for its channel hash decrypts it to a packet.
    WrongKey,
    /// A packet, but not a NodeInfo.
    NotNodeInfo,
    /// A NodeInfo without a valid public key.
    NoKey,
    /// From node 0 or the broadcast address.
    NotANode,
    /// Uploaded by this keysync's own radio: it heard the packet, and keysync with it.
    OwnGateway,
}

impl Reject {
    pub fn label(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::Garbage => "unreadable",
            Self::NoChannelKey => "for a channel without a known key",
            Self::WrongKey => "not decryptable with the channel's key",
            Self::NotNodeInfo => "not a NodeInfo",
            Self::NoKey => "a NodeInfo without a key",
            Self::NotANode => "not from a node",
            Self::OwnGateway => "uploaded by this gateway",
        }
    }
}

/// The channel keys keysync reads with, by the hash packets carry.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    by_hash: HashMap<u8, Vec<ChannelKey>>,
}

impl Keyring {
    pub fn new(keys: impl IntoIterator<Item = ChannelKey>) -> Self {
        let mut by_hash: HashMap<u8, Vec<ChannelKey>> = HashMap::new();
        for key in keys {
            let slot = by_hash.entry(key.hash()).or_default();
            if !slot.contains(&key) {
                slot.push(key);
            }
        }
        Self { by_hash }
    }

    pub fn len(&self) -> usize {
        self.by_hash.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn for_hash(&self, hash: u8) -> &[ChannelKey] {
        self.by_hash.get(&hash).map_or(&[], Vec::as_slice)
    }
}

/// The node number of a `!1a2b3c4d` id.
pub fn parse_node_id(id: &str) -> Option<u32> {
    let hex = id.strip_prefix('!')?;
    if hex.len() != 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// A name from the broker as keysync keeps it: control characters out, as long as a radio
/// would store it.
pub fn clean_name(s: &str, max: usize) -> String {
    radio::truncate_utf8(&radio::printable(s), max).to_owned()
}

/// The topic's form: `…/2/e/…` (protobuf envelope) or `…/2/json/…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Envelope,
    Json,
}

fn form_of(topic: &str) -> Option<(Form, &str)> {
    let segments: Vec<&str> = topic.split('/').collect();
    let at = segments
        .windows(2)
        .position(|w| w[0] == "2" && (w[1] == "e" || w[1] == "json"))?;
    let form = if segments[at + 1] == "e" {
        Form::Envelope
    } else {
        Form::Json
    };
    Some((form, segments.last().copied().unwrap_or_default()))
}

/// What an uplink message says about a node and its key.
pub fn read_uplink(topic: &str, payload: &[u8], keys: &Keyring) -> Result<NodeSeen, Reject> {
    if payload.len() > PAYLOAD_MAX {
        return Err(Reject::Oversized);
    }
    match form_of(topic) {
        Some((Form::Envelope, _)) => read_envelope(payload, keys),
        Some((Form::Json, last)) => read_json(payload, last),
        None => Err(Reject::Garbage),
    }
}

fn read_envelope(payload: &[u8], keys: &Keyring) -> Result<NodeSeen, Reject> {
    let envelope = ServiceEnvelope::decode(payload).map_err(|_| Reject::Garbage)?;
    let gateway = parse_node_id(&envelope.gateway_id).ok_or(Reject::Garbage)?;
    let packet = envelope.packet.ok_or(Reject::Garbage)?;
    if !is_node_num(packet.from) {
        return Err(Reject::NotANode);
    }
    let data = match packet.payload_variant.ok_or(Reject::Garbage)? {
        mesh_packet::PayloadVariant::Decoded(data) => data,
        mesh_packet::PayloadVariant::Encrypted(bytes) => {
            if bytes.len() > ENCRYPTED_MAX {
                return Err(Reject::Oversized);
            }
            let hash = u8::try_from(packet.channel).map_err(|_| Reject::Garbage)?;
            let candidates = keys.for_hash(hash);
            if candidates.is_empty() || packet.pki_encrypted {
                return Err(Reject::NoChannelKey);
            }
            decrypt(candidates, packet.id, packet.from, &bytes)?
        }
    };
    if data.portnum != PortNum::NodeinfoApp as i32 {
        return Err(Reject::NotNodeInfo);
    }
    let user = decode_user(&data.payload).ok_or(Reject::Garbage)?;
    let mut seen = NodeSeen::from_user(packet.from, &user, Source::Mqtt { gateway }, false);
    if seen.key().is_none() {
        return Err(Reject::NoKey);
    }
    seen.long_name = clean_name(&seen.long_name, LONG_NAME_MAX);
    seen.short_name = clean_name(&seen.short_name, SHORT_NAME_MAX);
    Ok(seen)
}

/// The packet under the first key that turns it into a `Data` that says it is one: a wrong key
/// gives random bytes, which rarely parse and almost never as a NodeInfo with a valid key.
fn decrypt(candidates: &[ChannelKey], id: u32, from: u32, bytes: &[u8]) -> Result<Data, Reject> {
    let mut other = None;
    for key in candidates {
        let mut plain = bytes.to_vec();
        key.apply(id, from, &mut plain);
        let Ok(data) = Data::decode(plain.as_slice()) else {
            continue;
        };
        if data.portnum == PortNum::NodeinfoApp as i32
            && decode_user(&data.payload).is_some_and(|u| radio::valid_key(&u.public_key).is_some())
        {
            return Ok(data);
        }
        if PortNum::try_from(data.portnum).is_ok_and(|p| p != PortNum::UnknownApp) {
            other.get_or_insert(data);
        }
    }
    other.ok_or(Reject::WrongKey)
}

#[derive(Deserialize)]
struct JsonUplink {
    from: u32,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    sender: Option<String>,
    #[serde(default)]
    payload: Option<JsonUser>,
}

#[derive(Deserialize)]
struct JsonUser {
    #[serde(default)]
    longname: String,
    #[serde(default)]
    shortname: String,
    #[serde(default)]
    hardware: i32,
    #[serde(default)]
    role: i32,
    #[serde(default, alias = "publicKey", alias = "public_key")]
    publickey: Option<String>,
}

/// The JSON uplink: the firmware's own does not carry keys, but some gateways add one.
fn read_json(payload: &[u8], topic_gateway: &str) -> Result<NodeSeen, Reject> {
    let msg: JsonUplink = serde_json::from_slice(payload).map_err(|_| Reject::Garbage)?;
    if msg.kind != "nodeinfo" {
        return Err(Reject::NotNodeInfo);
    }
    if !is_node_num(msg.from) {
        return Err(Reject::NotANode);
    }
    let gateway = msg
        .sender
        .as_deref()
        .and_then(parse_node_id)
        .or_else(|| parse_node_id(topic_gateway))
        .ok_or(Reject::Garbage)?;
    let user = msg.payload.ok_or(Reject::Garbage)?;
    let key = user
        .publickey
        .as_deref()
        .and_then(parse_key)
        .ok_or(Reject::NoKey)?;
    Ok(NodeSeen {
        num: msg.from,
        long_name: clean_name(&user.longname, LONG_NAME_MAX),
        short_name: clean_name(&user.shortname, SHORT_NAME_MAX),
        hw_model: user.hardware,
        role: user.role,
        public_key: key.to_vec(),
        source: Source::Mqtt { gateway },
        is_favorite: false,
        flags: crate::radio::UserFlags::default(),
    })
}

/// An uplink as a gateway publishes it: a NodeInfo packet of `user` from `from`, encrypted
/// with `channel` (or in the clear with `None`). For tests and the bench's replay.
pub fn envelope(
    from: u32,
    id: u32,
    user: &meshtastic::protobufs::User,
    channel: Option<&ChannelKey>,
    gateway: u32,
) -> Vec<u8> {
    use meshtastic::protobufs::MeshPacket;
    let data = Data {
        portnum: PortNum::NodeinfoApp as i32,
        payload: user.encode_to_vec(),
        ..Data::default()
    };
    let (payload_variant, hash) = match channel {
        Some(key) => {
            let mut bytes = data.encode_to_vec();
            key.apply(id, from, &mut bytes);
            (mesh_packet::PayloadVariant::Encrypted(bytes), key.hash())
        }
        None => (mesh_packet::PayloadVariant::Decoded(data), 0),
    };
    ServiceEnvelope {
        packet: Some(MeshPacket {
            from,
            to: radio::BROADCAST,
            id,
            channel: u32::from(hash),
            payload_variant: Some(payload_variant),
            ..MeshPacket::default()
        }),
        channel_id: channel.map_or_else(String::new, |k| k.name.clone()),
        gateway_id: radio::node_id(gateway),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtastic::protobufs::User;

    const TOPIC: &str = "msh/EU_868/2/e/LongFast/!0000beef";

    fn user(name: &str, key: &[u8]) -> User {
        User {
            id: "!12345678".into(),
            long_name: name.into(),
            short_name: "R1".into(),
            public_key: key.to_vec(),
            ..User::default()
        }
    }

    fn keyring() -> Keyring {
        Keyring::new([ChannelKey::default_channel()])
    }

    #[test]
    fn an_encrypted_long_fast_nodeinfo_gives_the_key_with_its_gateway() {
        let default = ChannelKey::default_channel();
        let bytes = envelope(
            0x1234_5678,
            99,
            &user("Ridge", &[7; 32]),
            Some(&default),
            0xbeef,
        );
        let seen = read_uplink(TOPIC, &bytes, &keyring()).expect("learned");
        assert_eq!(seen.num, 0x1234_5678);
        assert_eq!(seen.key(), Some([7; 32]));
        assert_eq!(seen.long_name, "Ridge");
        assert_eq!(seen.source, Source::Mqtt { gateway: 0xbeef });
    }

    #[test]
    fn a_channel_without_a_key_or_the_wrong_key_teaches_nothing() {
        let secret = ChannelKey::new("ops", &[3; 32]).expect("key");
        let bytes = envelope(0x1234_5678, 1, &user("R", &[7; 32]), Some(&secret), 0xbeef);
        assert_eq!(
            read_uplink(TOPIC, &bytes, &keyring()),
            Err(Reject::NoChannelKey)
        );
        // Same name and hash, other key: a forged channel that collides on the hash.
        let imposter = ChannelKey::new("ops", &[3; 32]).expect("key");
        let wrong = Keyring::new([ChannelKey::new("ops", &{
            let mut k = [3; 32];
            k[0] ^= 1;
            k[1] ^= 1;
            k
        })
        .expect("key")]);
        assert_eq!(
            imposter.hash(),
            wrong.by_hash.keys().copied().next().expect("one")
        );
        assert_eq!(read_uplink(TOPIC, &bytes, &wrong), Err(Reject::WrongKey));
    }

    #[test]
    fn garbage_oversized_and_keyless_are_told_apart() {
        assert_eq!(
            read_uplink(TOPIC, b"\xff\xfe garbage", &keyring()),
            Err(Reject::Garbage)
        );
        assert_eq!(
            read_uplink(TOPIC, &vec![0; PAYLOAD_MAX + 1], &keyring()),
            Err(Reject::Oversized)
        );
        let keyless = envelope(
            5,
            1,
            &user("R", &[]),
            Some(&ChannelKey::default_channel()),
            1,
        );
        assert_eq!(read_uplink(TOPIC, &keyless, &keyring()), Err(Reject::NoKey));
        let zero = envelope(5, 1, &user("R", &[0; 32]), None, 1);
        assert_eq!(read_uplink(TOPIC, &zero, &keyring()), Err(Reject::NoKey));
        let broadcast = envelope(radio::BROADCAST, 1, &user("R", &[7; 32]), None, 1);
        assert_eq!(
            read_uplink(TOPIC, &broadcast, &keyring()),
            Err(Reject::NotANode)
        );
        assert_eq!(
            read_uplink("msh/EU/2/map/x", &zero, &keyring()),
            Err(Reject::Garbage)
        );
    }

    #[test]
    fn names_from_the_broker_lose_control_characters_and_excess_length() {
        let bytes = envelope(
            9,
            1,
            &user(
                "\u{1b}]0;pwned\u{7}Ridge Relay with a far too long name for a radio",
                &[7; 32],
            ),
            None,
            1,
        );
        let seen = read_uplink(TOPIC, &bytes, &keyring()).expect("learned");
        assert!(!seen.long_name.chars().any(char::is_control));
        assert!(seen.long_name.len() <= LONG_NAME_MAX);
    }

    #[test]
    fn the_json_uplink_is_read_when_it_carries_a_key() {
        let key = crate::store::key_base64(&[7; 32]);
        let with = format!(
            r#"{{"from":305419896,"type":"nodeinfo","sender":"!0000beef","payload":{{"id":"!12345678","longname":"Ridge","shortname":"R1","hardware":9,"role":0,"public_key":"{key}"}}}}"#
        );
        let seen = read_uplink(
            "msh/EU/2/json/LongFast/!0000beef",
            with.as_bytes(),
            &keyring(),
        )
        .expect("learned");
        assert_eq!((seen.num, seen.key()), (0x1234_5678, Some([7; 32])));
        assert_eq!(seen.source, Source::Mqtt { gateway: 0xbeef });
        let without = r#"{"from":305419896,"type":"nodeinfo","sender":"!0000beef","payload":{"longname":"Ridge"}}"#;
        assert_eq!(
            read_uplink(
                "msh/EU/2/json/LongFast/!0000beef",
                without.as_bytes(),
                &keyring()
            ),
            Err(Reject::NoKey)
        );
        let text = r#"{"from":1,"type":"text","payload":{"text":"hi"}}"#;
        assert_eq!(
            read_uplink(
                "msh/EU/2/json/LongFast/!0000beef",
                text.as_bytes(),
                &keyring()
            ),
            Err(Reject::NotNodeInfo)
        );
    }
}
