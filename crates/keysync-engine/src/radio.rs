//! What keysync says to a radio and what it understands of the answers.
//!
//! Builders for every `ToRadio` we send (want_config, heartbeat, add_contact, disconnect) and
//! the readings we take from `FromRadio` (a node and its key seen in a download or on the mesh).

use meshtastic::Message;

pub use super::lenient::decode_user;
use meshtastic::protobufs::{
    AdminMessage, Data, FromRadio, Heartbeat, MeshPacket, NodeInfo, PortNum, SharedContact,
    ToRadio, User, admin_message, from_radio, mesh_packet, to_radio,
};

/// `want_config_id` that asks for the configuration without other nodes.
pub const CONFIG_ONLY_NONCE: u32 = 69_420;
/// `want_config_id` that asks for the node list only (firmware ≥ 2.6.8).
pub const NODES_ONLY_NONCE: u32 = 69_421;
/// Length of a Curve25519 public key.
pub const KEY_LEN: usize = 32;
/// The broadcast node number.
pub const BROADCAST: u32 = 0xFFFF_FFFF;

/// A valid public key: 32 bytes, not all zero.
pub type PublicKey = [u8; KEY_LEN];

/// The key if `bytes` is one the firmware would accept, otherwise `None`.
pub fn valid_key(bytes: &[u8]) -> Option<PublicKey> {
    let key: PublicKey = bytes.try_into().ok()?;
    (key != [0; KEY_LEN]).then_some(key)
}

/// Whether `num` can be a node: 0 is nobody and [`BROADCAST`] is everybody; keys for either
/// are never stored nor pushed.
pub fn is_node_num(num: u32) -> bool {
    num != 0 && num != BROADCAST
}

/// The `!hex` form of a node number that Meshtastic shows to people.
pub fn node_id(num: u32) -> String {
    format!("!{num:08x}")
}

/// Text from outside (a node's name, a radio's firmware string) as it may reach a terminal or
/// a log line: control characters — C0 (ESC, BEL, CR, LF, …), DEL, C1 —, the bidirectional
/// controls that reorder what follows and the zero-width characters that hide between letters
/// are dropped. A name is data; it must not retitle or clear a terminal, start a forged log
/// line, show `abexe.png` for `ab\u{202e}gnp.exe` nor shift the columns after it. The one
/// function for a screen (the TUI, `keys`), a log line and `/status`.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(is_hostile) {
        s.chars()
            .filter(|c| !is_hostile(*c))
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

fn is_hostile(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Bidi embeddings, overrides and isolates; the marks LRM, RLM and ALM.
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
            // Zero width space, non-joiner, joiner; word joiner; the byte order mark.
            | '\u{200b}'..='\u{200d}' | '\u{2060}' | '\u{feff}'
        )
}

/// A node as a log line names it: `!1a2b3c4d (Ridge Relay)`, its name made [`printable`].
pub fn node_label(num: u32, long_name: &str) -> String {
    let name = printable(long_name);
    if name.trim().is_empty() {
        node_id(num)
    } else {
        format!("{} ({name})", node_id(num))
    }
}

/// A nonce for a full config download: random, never one of the special nonces.
pub fn config_nonce(mut random: impl FnMut() -> u32) -> u32 {
    loop {
        let n = random();
        if n != 0 && n != CONFIG_ONLY_NONCE && n != NODES_ONLY_NONCE {
            return n;
        }
    }
}

/// A heartbeat nonce: never 1 (since 2.7.23 that makes the radio broadcast its NodeInfo).
pub fn heartbeat_nonce(mut random: impl FnMut() -> u32) -> u32 {
    loop {
        let n = random();
        if n != 1 {
            return n;
        }
    }
}

pub fn want_config(nonce: u32) -> ToRadio {
    ToRadio {
        payload_variant: Some(to_radio::PayloadVariant::WantConfigId(nonce)),
    }
}

pub fn heartbeat(nonce: u32) -> ToRadio {
    ToRadio {
        payload_variant: Some(to_radio::PayloadVariant::Heartbeat(Heartbeat { nonce })),
    }
}

pub fn disconnect() -> ToRadio {
    ToRadio {
        payload_variant: Some(to_radio::PayloadVariant::Disconnect(true)),
    }
}

/// A contact to hand to the radio: never without a valid key, because an empty key erases the
/// one the radio holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contact {
    pub num: u32,
    pub long_name: String,
    pub short_name: String,
    pub hw_model: i32,
    pub role: i32,
    pub key: PublicKey,
    /// Fields the radio's own record of the node may carry: add_contact replaces the whole
    /// user, so a push sends them back as they were.
    pub is_unmessagable: Option<bool>,
    pub is_licensed: bool,
    pub macaddr: Vec<u8>,
}

/// The firmware's field limits (mesh.options): longer names are cut where keysync composes.
pub const LONG_NAME_MAX: usize = 39;
pub const SHORT_NAME_MAX: usize = 4;

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `ToRadio{packet}` carrying `AdminMessage{add_contact}` to our own node (PROTOCOL.md
/// § add_contact).
pub fn add_contact(my_node_num: u32, packet_id: u32, contact: &Contact) -> ToRadio {
    admin_packet(
        my_node_num,
        packet_id,
        admin_message::PayloadVariant::AddContact(SharedContact {
            node_num: contact.num,
            user: Some(contact_user(contact)),
            should_ignore: false,
            manually_verified: false,
        }),
    )
}

#[expect(
    deprecated,
    reason = "macaddr is still stored by the firmware; a push keeps it"
)]
pub fn contact_user(contact: &Contact) -> User {
    User {
        id: node_id(contact.num),
        long_name: truncate_utf8(&contact.long_name, LONG_NAME_MAX).to_owned(),
        short_name: truncate_utf8(&contact.short_name, SHORT_NAME_MAX).to_owned(),
        macaddr: contact.macaddr.iter().copied().take(6).collect(),
        hw_model: contact.hw_model,
        is_licensed: contact.is_licensed,
        role: contact.role,
        public_key: contact.key.to_vec(),
        is_unmessagable: contact.is_unmessagable,
    }
}

/// `ToRadio{packet}` carrying `AdminMessage{remove_favorite_node}`: gives a slot back.
pub fn remove_favorite(my_node_num: u32, packet_id: u32, num: u32) -> ToRadio {
    admin_packet(
        my_node_num,
        packet_id,
        admin_message::PayloadVariant::RemoveFavoriteNode(num),
    )
}

fn admin_packet(my_node_num: u32, packet_id: u32, admin: admin_message::PayloadVariant) -> ToRadio {
    let admin = AdminMessage {
        session_passkey: Vec::new(),
        payload_variant: Some(admin),
    };
    ToRadio {
        payload_variant: Some(to_radio::PayloadVariant::Packet(MeshPacket {
            from: 0,
            to: my_node_num,
            channel: 0,
            id: packet_id,
            want_ack: false,
            payload_variant: Some(mesh_packet::PayloadVariant::Decoded(Data {
                portnum: PortNum::AdminApp as i32,
                payload: admin.encode_to_vec(),
                ..Data::default()
            })),
            ..MeshPacket::default()
        })),
    }
}

/// The admin message inside a decoded packet, if it is one.
pub fn admin_of(packet: &MeshPacket) -> Option<AdminMessage> {
    let Some(mesh_packet::PayloadVariant::Decoded(data)) = &packet.payload_variant else {
        return None;
    };
    if data.portnum != PortNum::AdminApp as i32 {
        return None;
    }
    AdminMessage::decode(data.payload.as_slice()).ok()
}

/// The contact of an add_contact to the radio's own node `own`, if `msg` is one.
pub fn contact_of(msg: &ToRadio, own: u32) -> Option<SharedContact> {
    let Some(to_radio::PayloadVariant::Packet(packet)) = &msg.payload_variant else {
        return None;
    };
    if packet.to != own {
        return None;
    }
    match admin_of(packet)?.payload_variant? {
        admin_message::PayloadVariant::AddContact(contact) => Some(contact),
        _ => None,
    }
}

/// The node number develop (2.8) gives itself: CRC-32 (IEEE) of its public key (NodeDB.cpp;
/// checked against meshtasticd 2.8's own number and key).
pub fn num_of_key(key: &PublicKey) -> u32 {
    let mut crc = !0u32;
    for byte in key {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Where a node sighting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A `node_info` in a config download: what the radio's NodeDB holds.
    NodeDb,
    /// A NODEINFO_APP packet heard on the mesh.
    Mesh,
    /// Imported from another tool's database.
    Import,
    /// Sent by a downstream client through the proxy.
    Downstream,
    /// A NodeInfo that gateway `gateway` uploaded to the MQTT broker.
    Mqtt { gateway: u32 },
    /// Shared by the keysync of gateway `gateway` in the same fleet.
    Fleet { gateway: u32 },
}

impl Source {
    /// Whether this sighting means the gateway's radio (or its client) heard the node. Keys
    /// from the broker do not: they make a node known, not recently heard, so they do not
    /// crowd the working set of the radio.
    pub fn heard_here(self) -> bool {
        !matches!(self, Self::Mqtt { .. } | Self::Fleet { .. })
    }

    /// Whether the key came from the fleet: such keys are never shared back to it.
    pub fn is_fleet(self) -> bool {
        matches!(self, Self::Fleet { .. })
    }

    /// The source as the store records it, the inverse of [`Source::parse`].
    pub fn label(self) -> String {
        match self {
            Self::NodeDb => "radio".into(),
            Self::Mesh => "mesh".into(),
            Self::Import => "import".into(),
            Self::Downstream => "client".into(),
            Self::Mqtt { gateway } => format!("MQTT via {}", node_id(gateway)),
            Self::Fleet { gateway } => format!("fleet {}", node_id(gateway)),
        }
    }

    /// A recorded source; `None` for text no keysync wrote.
    pub fn parse(s: &str) -> Option<Self> {
        let gateway = |id: &str| {
            id.strip_prefix('!')
                .filter(|h| h.len() == 8)
                .and_then(|h| u32::from_str_radix(h, 16).ok())
        };
        match s {
            "radio" => Some(Self::NodeDb),
            "mesh" => Some(Self::Mesh),
            "import" => Some(Self::Import),
            "client" => Some(Self::Downstream),
            _ => {
                if let Some(id) = s.strip_prefix("MQTT via ") {
                    gateway(id).map(|gateway| Self::Mqtt { gateway })
                } else {
                    gateway(s.strip_prefix("fleet ")?).map(|gateway| Self::Fleet { gateway })
                }
            }
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

/// A node and what it says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSeen {
    pub num: u32,
    pub long_name: String,
    pub short_name: String,
    pub hw_model: i32,
    pub role: i32,
    /// Raw key bytes as received; may be empty or invalid.
    pub public_key: Vec<u8>,
    pub source: Source,
    pub is_favorite: bool,
    /// The user record's flags the firmware stores with it: a push from the store sends them
    /// back (add_contact replaces the whole user).
    pub flags: UserFlags,
}

/// The flags of a node's user record besides its names, hardware, role and key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserFlags {
    /// `None`: the node never said (before 2.6.x, or a keyless update).
    pub is_unmessagable: Option<bool>,
    pub is_licensed: bool,
}

impl UserFlags {
    pub fn of(user: &User) -> Self {
        Self {
            is_unmessagable: user.is_unmessagable,
            is_licensed: user.is_licensed,
        }
    }
}

impl NodeSeen {
    pub fn key(&self) -> Option<PublicKey> {
        valid_key(&self.public_key)
    }

    /// What a `node_info` says about its node, as if it came from `source`.
    pub fn from_node_info(node: &NodeInfo, source: Source) -> Self {
        Self::from_user(
            node.num,
            &node.user.clone().unwrap_or_default(),
            source,
            node.is_favorite,
        )
    }

    /// What a `User` says about node `num`, as if it came from `source`.
    pub fn from_user(num: u32, user: &User, source: Source, is_favorite: bool) -> Self {
        Self {
            num,
            long_name: user.long_name.clone(),
            short_name: user.short_name.clone(),
            hw_model: user.hw_model,
            role: user.role,
            public_key: user.public_key.clone(),
            source,
            is_favorite,
            flags: UserFlags::of(user),
        }
    }
}

/// The node a frame tells us about: a `node_info`, or a NODEINFO_APP packet with a `User`.
pub fn node_seen(frame: &FromRadio) -> Option<NodeSeen> {
    node_seen_any(frame).filter(|s| is_node_num(s.num))
}

fn node_seen_any(frame: &FromRadio) -> Option<NodeSeen> {
    match frame.payload_variant.as_ref()? {
        from_radio::PayloadVariant::NodeInfo(NodeInfo {
            num,
            user: Some(user),
            is_favorite,
            ..
        }) => Some(NodeSeen::from_user(
            *num,
            user,
            Source::NodeDb,
            *is_favorite,
        )),
        from_radio::PayloadVariant::Packet(packet) => {
            let Some(mesh_packet::PayloadVariant::Decoded(data)) = &packet.payload_variant else {
                return None;
            };
            if data.portnum != PortNum::NodeinfoApp as i32 || packet.from == 0 {
                return None;
            }
            let user = decode_user(&data.payload)?;
            Some(NodeSeen::from_user(packet.from, &user, Source::Mesh, false))
        }
        _ => None,
    }
}

/// A short name for a `ToRadio`'s kind, for logs and the simulator's counters.
pub fn to_radio_kind(msg: &ToRadio) -> &'static str {
    use to_radio::PayloadVariant as V;
    match &msg.payload_variant {
        None => "empty",
        Some(V::Packet(p)) if admin_of(p).is_some() => "admin",
        Some(V::Packet(_)) => "packet",
        Some(V::WantConfigId(NODES_ONLY_NONCE)) => "want_config_nodes_only",
        Some(V::WantConfigId(CONFIG_ONLY_NONCE)) => "want_config_config_only",
        Some(V::WantConfigId(_)) => "want_config",
        Some(V::Disconnect(_)) => "disconnect",
        Some(V::XmodemPacket(_)) => "xmodem",
        Some(V::MqttClientProxyMessage(_)) => "mqtt_proxy",
        Some(V::Heartbeat(_)) => "heartbeat",
    }
}

/// `major.minor.patch` of a firmware version string such as `2.7.15.567b8ea`.
pub fn firmware_version(s: &str) -> Option<(u32, u32, u32)> {
    let mut parts = s.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Firmware that answers every heartbeat (≥ 2.7.6): silence from it means a dead link.
pub fn answers_heartbeats(version: &str) -> bool {
    firmware_version(version).is_some_and(|v| v >= (2, 7, 6))
}

/// `FromRadio{queueStatus}`: the radio's queue after packet `mesh_packet_id` (0: none), with
/// `res` 0 for taken.
pub fn queue_status(res: i32, free: u32, maxlen: u32, mesh_packet_id: u32) -> FromRadio {
    FromRadio {
        id: 0,
        payload_variant: Some(from_radio::PayloadVariant::QueueStatus(
            meshtastic::protobufs::QueueStatus {
                res,
                free,
                maxlen,
                mesh_packet_id,
            },
        )),
    }
}

/// The radio's answer to a heartbeat: a QueueStatus for no packet (`mesh_packet_id == 0`).
pub fn answers_heartbeat(frame: &FromRadio) -> bool {
    matches!(&frame.payload_variant,
        Some(from_radio::PayloadVariant::QueueStatus(q)) if q.mesh_packet_id == 0)
}

/// What the handshake's configuration frames say about the radio, beyond its version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandshakeFacts {
    pub hw_model: i32,
    pub pio_env: String,
    pub client_base: bool,
    /// ROUTER, ROUTER_LATE or CLIENT_BASE: favourites change its hop counting (2.7.11+).
    pub router_role: bool,
    /// `security.is_managed`: the radio ignores admin messages from clients.
    pub managed: bool,
}

impl HandshakeFacts {
    pub fn of<'a>(frames: impl IntoIterator<Item = &'a FromRadio>) -> Self {
        use meshtastic::protobufs::config::PayloadVariant as C;
        let mut facts = Self::default();
        for frame in frames {
            match &frame.payload_variant {
                Some(from_radio::PayloadVariant::Metadata(m)) => {
                    facts.hw_model = m.hw_model;
                    facts.note_role(m.role);
                }
                Some(from_radio::PayloadVariant::MyInfo(m)) => {
                    facts.pio_env.clone_from(&m.pio_env);
                }
                Some(from_radio::PayloadVariant::Config(c)) => match &c.payload_variant {
                    Some(C::Security(sec)) => facts.managed = sec.is_managed,
                    Some(C::Device(dev)) => facts.note_role(dev.role),
                    _ => {}
                },
                _ => {}
            }
        }
        facts
    }

    fn note_role(&mut self, role: i32) {
        use meshtastic::protobufs::config::device_config::Role;
        self.client_base |= role == Role::ClientBase as i32;
        self.router_role |= [Role::Router, Role::RouterLate, Role::ClientBase]
            .iter()
            .any(|r| *r as i32 == role);
    }
}

/// The request id of a routing error PKI_SEND_FAIL_PUBLIC_KEY: the radio could not encrypt a
/// DM for lack of the peer's key (firmware ≥ 2.7.19, Router.cpp).
pub fn pki_send_failed(packet: &MeshPacket) -> Option<u32> {
    use meshtastic::protobufs::{Routing, routing};
    let Some(mesh_packet::PayloadVariant::Decoded(data)) = &packet.payload_variant else {
        return None;
    };
    if data.portnum != PortNum::RoutingApp as i32 {
        return None;
    }
    let routing = Routing::decode(data.payload.as_slice()).ok()?;
    matches!(
        routing.variant,
        Some(routing::Variant::ErrorReason(e)) if e == routing::Error::PkiSendFailPublicKey as i32
    )
    .then_some(data.request_id)
}

/// The key a NODEINFO_APP packet announces, if it carries a valid one.
pub fn heard_key(packet: &MeshPacket) -> Option<PublicKey> {
    let Some(mesh_packet::PayloadVariant::Decoded(data)) = &packet.payload_variant else {
        return None;
    };
    if data.portnum != PortNum::NodeinfoApp as i32 {
        return None;
    }
    let user = decode_user(&data.payload)?;
    valid_key(&user.public_key)
}

/// A direct message on a port the firmware encrypts with PKI (Router.cpp perhapsEncode): to one
/// node, not the radio itself, and not traceroute, NodeInfo, routing or position.
pub fn is_pki_dm(packet: &MeshPacket, own: u32) -> bool {
    let Some(mesh_packet::PayloadVariant::Decoded(data)) = &packet.payload_variant else {
        return false;
    };
    let exempt = [
        PortNum::TracerouteApp,
        PortNum::NodeinfoApp,
        PortNum::RoutingApp,
        PortNum::PositionApp,
        PortNum::AdminApp,
    ];
    packet.to != BROADCAST
        && packet.to != 0
        && packet.to != own
        && !exempt.iter().any(|p| *p as i32 == data.portnum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_controls_and_zero_width_characters_are_dropped_from_names() {
        assert_eq!(printable("ab\u{202e}gnp.exe"), "abgnp.exe");
        assert_eq!(
            printable(
                "a\u{200b}b\u{200c}c\u{200d}d\u{2060}e\u{feff}f\u{200e}g\u{200f}h\u{61c}i\u{2067}j"
            ),
            "abcdefghij"
        );
        assert_eq!(printable("🦊 Fox Den"), "🦊 Fox Den");
    }

    #[test]
    fn rejects_keys_of_wrong_length_or_all_zero() {
        assert!(valid_key(&[1; 32]).is_some());
        assert!(valid_key(&[0; 32]).is_none());
        assert!(valid_key(&[1; 31]).is_none());
        assert!(valid_key(&[]).is_none());
    }

    #[test]
    fn nonces_avoid_the_special_values() {
        let mut seq = [69_420, 69_421, 0, 7].into_iter();
        assert_eq!(config_nonce(|| seq.next().unwrap_or(9)), 7);
        let mut seq = [1, 1, 2].into_iter();
        assert_eq!(heartbeat_nonce(|| seq.next().unwrap_or(9)), 2);
    }

    #[test]
    fn add_contact_round_trips_through_admin_of() {
        let contact = Contact {
            num: 0x1234_5678,
            long_name: "Hill top".into(),
            short_name: "HT".into(),
            hw_model: 9,
            role: 0,
            key: [7; 32],
            is_unmessagable: None,
            is_licensed: false,
            macaddr: Vec::new(),
        };
        let msg = add_contact(42, 1000, &contact);
        let Some(to_radio::PayloadVariant::Packet(p)) = msg.payload_variant else {
            panic!("not a packet");
        };
        assert_eq!((p.to, p.from, p.id, p.want_ack), (42, 0, 1000, false));
        let Some(admin_message::PayloadVariant::AddContact(c)) =
            admin_of(&p).and_then(|a| a.payload_variant)
        else {
            panic!("not add_contact");
        };
        let user = c.user.unwrap_or_default();
        assert_eq!(user.id, "!12345678");
        assert_eq!(user.public_key, vec![7; 32]);
        assert!(!c.manually_verified && !c.should_ignore);
    }

    #[test]
    fn a_contact_with_huge_names_still_fits_the_radio_s_frame() {
        let contact = Contact {
            num: 1,
            long_name: "é".repeat(300),
            short_name: "🦊🦊🦊".into(),
            hw_model: 9,
            role: 0,
            key: [7; 32],
            is_unmessagable: Some(true),
            is_licensed: true,
            macaddr: vec![1; 64],
        };
        let msg = add_contact(42, 1000, &contact);
        assert!(msg.encoded_len() + 4 <= 512);
        let Some(to_radio::PayloadVariant::Packet(p)) = msg.payload_variant else {
            panic!("not a packet");
        };
        let Some(admin_message::PayloadVariant::AddContact(c)) =
            admin_of(&p).and_then(|a| a.payload_variant)
        else {
            panic!("not add_contact");
        };
        let user = c.user.unwrap_or_default();
        assert_eq!(
            user.long_name.len(),
            38,
            "39 bytes cut at a character boundary"
        );
        assert_eq!(user.short_name, "🦊");
        assert_eq!(user.is_unmessagable, Some(true));
    }

    #[test]
    fn names_lose_escape_sequences_bells_newlines_and_bidi_overrides() {
        assert_eq!(
            printable("a\x1b]0;TITLE\x07b\x1b[2J\n2026 ERROR keysync forged\r\u{9b}\u{202e}z"),
            "a]0;TITLEb[2J2026 ERROR keysync forgedz"
        );
        assert!(matches!(
            printable("Ridge Relay ⛰"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(node_label(0x1234_abcd, "\x07"), "!1234abcd");
        assert_eq!(node_label(0x1234_abcd, "Hut\n"), "!1234abcd (Hut)");
    }

    #[test]
    fn node_zero_and_broadcast_in_a_node_list_are_not_sightings() {
        let frame = |num| FromRadio {
            id: 0,
            payload_variant: Some(from_radio::PayloadVariant::NodeInfo(NodeInfo {
                num,
                user: Some(User {
                    public_key: vec![7; 32],
                    ..User::default()
                }),
                ..NodeInfo::default()
            })),
        };
        assert!(node_seen(&frame(0)).is_none());
        assert!(node_seen(&frame(BROADCAST)).is_none());
        assert_eq!(node_seen(&frame(5)).map(|s| s.num), Some(5));
    }

    #[test]
    fn parses_firmware_versions() {
        assert_eq!(firmware_version("2.7.15.567b8ea"), Some((2, 7, 15)));
        assert!(answers_heartbeats("2.7.6"));
        assert!(!answers_heartbeats("2.7.5.abc"));
        assert!(!answers_heartbeats("garbage"));
    }
}
