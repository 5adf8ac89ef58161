//! What a client's admin message would do on the radio, judged before it gets there.
//!
//! By allowlist: the getters and the kinds the ecosystem's apps send (owner, channels,
//! config, favourites, fixed position, time, edit sessions, contacts) are admin as usual;
//! everything else — reboots, resets, file deletion, DFU, the simulator's exit, and any field
//! this build cannot name — is *destructive*: logged at WARN with the client's address, and
//! dropped by `--deny-admin destructive` (or by its kind's name).
//!
//! And by what the radio will run, not what it shows in clear: a packet the radio delivers to
//! itself (to its own number, to 0 or to everyone) may come encrypted with a channel key; the
//! firmware decrypts it with the channel whose hash it names (Router.cpp `perhapsDecode`) and
//! runs the admin message inside as if it had come in clear. The proxy opens it the same way
//! with every key the radio holds; one it cannot open is dropped, since it cannot be judged.

use meshtastic::Message as _;
use meshtastic::protobufs::{AdminMessage, Data, MeshPacket, PortNum, admin_message, mesh_packet};

use crate::mqtt::crypto::RadioChannel;
use crate::radio::BROADCAST;

/// Admin messages that destroy state on the radio (or that keysync cannot name): always
/// logged at WARN with the sender, and blocked when named in `--deny-admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestructiveAdmin {
    /// reboot_seconds, reboot_ota_seconds, shutdown_seconds.
    Reboot,
    /// factory_reset_device, factory_reset_config.
    FactoryReset,
    NodedbReset,
    /// remove_by_nodenum.
    RemoveNode,
    /// set_ignored_node, add_contact with should_ignore.
    IgnoreNode,
    /// enter_dfu_mode_request, ota_request: the radio leaves for its boot loader.
    Firmware,
    /// delete_file_request (`/prefs/db.proto` is the NodeDB), restore_preferences,
    /// remove_backup_preferences.
    Files,
    /// exit_simulator: meshtasticd exits.
    ExitSimulator,
    /// Not on the allowlist: set_scale, send_input_event, sensor_config, a field this build
    /// of keysync cannot name, two payloads at once, or none.
    Unknown,
}

impl DestructiveAdmin {
    pub const ALL: [Self; 9] = [
        Self::Reboot,
        Self::FactoryReset,
        Self::NodedbReset,
        Self::RemoveNode,
        Self::IgnoreNode,
        Self::Firmware,
        Self::Files,
        Self::ExitSimulator,
        Self::Unknown,
    ];

    /// The name `--deny-admin` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reboot => "reboot",
            Self::FactoryReset => "factory-reset",
            Self::NodedbReset => "nodedb-reset",
            Self::RemoveNode => "remove-node",
            Self::IgnoreNode => "ignore-node",
            Self::Firmware => "firmware",
            Self::Files => "files",
            Self::ExitSimulator => "exit-simulator",
            Self::Unknown => "unknown",
        }
    }

    /// The kind of `admin`, when it is destructive. An admin message whose payload keysync
    /// cannot name decodes with none, and is [`Self::Unknown`].
    #[expect(
        deprecated,
        reason = "old clients still send reboot_ota_seconds; it reboots"
    )]
    pub fn of(admin: &AdminMessage) -> Option<Self> {
        use admin_message::PayloadVariant as A;
        let Some(payload) = admin.payload_variant.as_ref() else {
            return Some(Self::Unknown);
        };
        match payload {
            A::RebootSeconds(_) | A::RebootOtaSeconds(_) | A::ShutdownSeconds(_) => {
                Some(Self::Reboot)
            }
            A::FactoryResetDevice(_) | A::FactoryResetConfig(_) => Some(Self::FactoryReset),
            A::NodedbReset(_) => Some(Self::NodedbReset),
            A::RemoveByNodenum(_) => Some(Self::RemoveNode),
            A::SetIgnoredNode(_) => Some(Self::IgnoreNode),
            A::AddContact(c) if c.should_ignore => Some(Self::IgnoreNode),
            A::EnterDfuModeRequest(_) | A::OtaRequest(_) => Some(Self::Firmware),
            A::DeleteFileRequest(_) | A::RestorePreferences(_) | A::RemoveBackupPreferences(_) => {
                Some(Self::Files)
            }
            A::ExitSimulator(_) => Some(Self::ExitSimulator),
            A::SetScale(_) | A::SendInputEvent(_) | A::SensorConfig(_) => Some(Self::Unknown),
            // The allowlist: what the apps, the CLI and the bots send.
            A::GetChannelRequest(_)
            | A::GetChannelResponse(_)
            | A::GetOwnerRequest(_)
            | A::GetOwnerResponse(_)
            | A::GetConfigRequest(_)
            | A::GetConfigResponse(_)
            | A::GetModuleConfigRequest(_)
            | A::GetModuleConfigResponse(_)
            | A::GetCannedMessageModuleMessagesRequest(_)
            | A::GetCannedMessageModuleMessagesResponse(_)
            | A::GetDeviceMetadataRequest(_)
            | A::GetDeviceMetadataResponse(_)
            | A::GetRingtoneRequest(_)
            | A::GetRingtoneResponse(_)
            | A::GetDeviceConnectionStatusRequest(_)
            | A::GetDeviceConnectionStatusResponse(_)
            | A::GetNodeRemoteHardwarePinsRequest(_)
            | A::GetNodeRemoteHardwarePinsResponse(_)
            | A::GetUiConfigRequest(_)
            | A::GetUiConfigResponse(_)
            | A::SetHamMode(_)
            | A::BackupPreferences(_)
            | A::SetOwner(_)
            | A::SetChannel(_)
            | A::SetConfig(_)
            | A::SetModuleConfig(_)
            | A::SetCannedMessageModuleMessages(_)
            | A::SetRingtoneMessage(_)
            | A::SetFavoriteNode(_)
            | A::RemoveFavoriteNode(_)
            | A::SetFixedPosition(_)
            | A::RemoveFixedPosition(_)
            | A::SetTimeOnly(_)
            | A::StoreUiConfig(_)
            | A::RemoveIgnoredNode(_)
            | A::ToggleMutedNode(_)
            | A::BeginEditSettings(_)
            | A::CommitEditSettings(_)
            | A::AddContact(_)
            | A::KeyVerification(_) => None,
        }
    }
}

impl std::fmt::Display for DestructiveAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A `--deny-admin` entry that names no kind; the message lists the ones there are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown admin kind {0:?}: one of {names}", names = denial_names())]
pub struct UnknownAdminKind(pub String);

impl std::str::FromStr for DestructiveAdmin {
    type Err = UnknownAdminKind;

    fn from_str(s: &str) -> Result<Self, UnknownAdminKind> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownAdminKind(s.to_owned()))
    }
}

/// One entry of `--deny-admin`: a kind, or `destructive` for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminDenial {
    Destructive,
    Kind(DestructiveAdmin),
}

impl AdminDenial {
    /// The kinds this entry denies.
    pub fn kinds(self) -> Vec<DestructiveAdmin> {
        match self {
            Self::Destructive => DestructiveAdmin::ALL.to_vec(),
            Self::Kind(kind) => vec![kind],
        }
    }
}

impl std::str::FromStr for AdminDenial {
    type Err = UnknownAdminKind;

    fn from_str(s: &str) -> Result<Self, UnknownAdminKind> {
        if s == "destructive" {
            return Ok(Self::Destructive);
        }
        s.parse().map(Self::Kind)
    }
}

fn denial_names() -> String {
    let mut names = vec!["destructive"];
    names.extend(DestructiveAdmin::ALL.iter().map(|k| k.name()));
    names.join(", ")
}

/// An admin payload as the firmware would read it.
#[derive(Debug)]
pub enum AdminRead {
    /// The message, every field of it known to keysync.
    Known(Box<AdminMessage>),
    /// Fields keysync cannot name, or more than one payload: nanopb would take the last one,
    /// which may be anything. Judged as [`DestructiveAdmin::Unknown`].
    Unnamed,
    /// Not a protobuf message at all.
    Undecodable,
}

/// Reads `bytes` as an AdminMessage, field by field: prost skips a field it does not know and
/// keeps the last of several payloads, so what it decodes may not be what the radio runs.
pub fn read_admin(bytes: &[u8]) -> AdminRead {
    let Ok(admin) = AdminMessage::decode(bytes) else {
        return AdminRead::Undecodable;
    };
    let mut payloads = 0;
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some((field, after)) = next_field(rest) else {
            return AdminRead::Undecodable;
        };
        let alone = &rest[..rest.len() - after.len()];
        rest = after;
        match AdminMessage::decode(alone) {
            Ok(one) if one.payload_variant.is_some() => payloads += 1,
            Ok(one) if !one.session_passkey.is_empty() || field == SESSION_PASSKEY => {}
            _ => return AdminRead::Unnamed,
        }
    }
    if payloads > 1 {
        return AdminRead::Unnamed;
    }
    AdminRead::Known(Box::new(admin))
}

/// AdminMessage.session_passkey, the one field outside the payload.
const SESSION_PASSKEY: u64 = 101;

/// The field number of the first field in `bytes`, and what follows the field.
fn next_field(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (key, rest) = varint(bytes)?;
    let rest = match key & 7 {
        0 => varint(rest)?.1,
        1 => rest.get(8..)?,
        2 => {
            let (len, rest) = varint(rest)?;
            rest.get(usize::try_from(len).ok()?..)?
        }
        5 => rest.get(4..)?,
        // Groups are not in any Meshtastic message.
        _ => return None,
    };
    Some((key >> 3, rest))
}

fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// What a client's packet carries to the radio's admin module.
#[derive(Debug)]
pub enum Carried {
    /// Nothing the radio runs as admin.
    Nothing,
    /// An admin payload, opened from an encrypted packet when it came so.
    Admin { payload: Vec<u8>, sealed: bool },
    /// Encrypted for the radio itself, but with no key the radio holds that opens it here:
    /// keysync cannot tell what it would run.
    Unjudgeable,
}

/// What `packet` carries to the admin module of the radio numbered `own`, whose channels are
/// `channels`.
pub fn carried(packet: &MeshPacket, own: Option<u32>, channels: &[RadioChannel]) -> Carried {
    match &packet.payload_variant {
        Some(mesh_packet::PayloadVariant::Decoded(data)) => {
            if data.portnum == PortNum::AdminApp as i32 {
                Carried::Admin {
                    payload: data.payload.clone(),
                    sealed: false,
                }
            } else {
                Carried::Nothing
            }
        }
        Some(mesh_packet::PayloadVariant::Encrypted(bytes)) if for_the_radio(packet, own) => {
            open(packet, bytes, own, channels)
        }
        _ => Carried::Nothing,
    }
}

/// Whether the radio delivers `packet` to itself (Router.cpp `sendLocal`): to its own number,
/// to everyone, or to 0 — and, before the first handshake, whatever it is addressed to.
fn for_the_radio(packet: &MeshPacket, own: Option<u32>) -> bool {
    own.is_none_or(|own| packet.to == own) || packet.to == BROADCAST || packet.to == 0
}

/// Opens an encrypted packet with every channel whose hash it names, under every sender the
/// firmware could take for it (0 as a client sends, the number it names, the radio's own):
/// any reading that is admin is what counts; a PKI packet, or one no key opens, cannot be
/// judged.
fn open(packet: &MeshPacket, bytes: &[u8], own: Option<u32>, channels: &[RadioChannel]) -> Carried {
    if packet.pki_encrypted {
        return Carried::Unjudgeable;
    }
    let mut senders = vec![0, packet.from];
    senders.extend(own);
    senders.dedup();
    let mut opened = false;
    for channel in channels
        .iter()
        .filter(|c| u32::from(c.hash) == packet.channel)
    {
        for &from in &senders {
            let mut plain = bytes.to_vec();
            if let Some(key) = &channel.key {
                key.apply(packet.id, from, &mut plain);
            }
            // The firmware takes a reading only when it decodes to a known port.
            let Ok(data) = Data::decode(plain.as_slice()) else {
                continue;
            };
            if data.portnum == PortNum::UnknownApp as i32 {
                continue;
            }
            if data.portnum == PortNum::AdminApp as i32 {
                return Carried::Admin {
                    payload: data.payload,
                    sealed: true,
                };
            }
            opened = true;
        }
    }
    if opened {
        Carried::Nothing
    } else {
        Carried::Unjudgeable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::crypto::ChannelKey;
    use meshtastic::protobufs::User;

    fn admin_bytes(payload: admin_message::PayloadVariant) -> Vec<u8> {
        AdminMessage {
            payload_variant: Some(payload),
            ..AdminMessage::default()
        }
        .encode_to_vec()
    }

    fn sealed(key: &ChannelKey, id: u32, from: u32, to: u32, data: &Data) -> MeshPacket {
        let mut bytes = data.encode_to_vec();
        key.apply(id, from, &mut bytes);
        MeshPacket {
            id,
            from,
            to,
            channel: u32::from(key.hash()),
            payload_variant: Some(mesh_packet::PayloadVariant::Encrypted(bytes)),
            ..MeshPacket::default()
        }
    }

    fn admin_data(payload: admin_message::PayloadVariant) -> Data {
        Data {
            portnum: PortNum::AdminApp as i32,
            payload: admin_bytes(payload),
            ..Data::default()
        }
    }

    fn long_fast() -> Vec<RadioChannel> {
        vec![RadioChannel {
            hash: ChannelKey::default_channel().hash(),
            key: Some(ChannelKey::default_channel()),
        }]
    }

    #[test]
    fn an_encrypted_reboot_to_the_radio_is_opened_and_judged_as_in_clear() {
        let key = ChannelKey::default_channel();
        let packet = sealed(
            &key,
            0x1234,
            0,
            0x0a0b_0c0d,
            &admin_data(admin_message::PayloadVariant::RebootSeconds(60)),
        );
        let Carried::Admin { payload, sealed } = carried(&packet, Some(0x0a0b_0c0d), &long_fast())
        else {
            panic!("opened");
        };
        assert!(sealed);
        let AdminRead::Known(admin) = read_admin(&payload) else {
            panic!("reads");
        };
        assert_eq!(DestructiveAdmin::of(&admin), Some(DestructiveAdmin::Reboot));
    }

    #[test]
    fn an_encrypted_text_passes_and_an_encrypted_dm_to_another_node_is_not_opened() {
        let key = ChannelKey::default_channel();
        let text = Data {
            portnum: PortNum::TextMessageApp as i32,
            payload: b"hello".to_vec(),
            ..Data::default()
        };
        let broadcast = sealed(&key, 7, 0, BROADCAST, &text);
        assert!(matches!(
            carried(&broadcast, Some(5), &long_fast()),
            Carried::Nothing
        ));
        // The radio forwards a packet for another node as it is, without opening it.
        let mut elsewhere = sealed(
            &key,
            8,
            0,
            0x99,
            &admin_data(admin_message::PayloadVariant::RebootSeconds(1)),
        );
        assert!(matches!(
            carried(&elsewhere, Some(5), &long_fast()),
            Carried::Nothing
        ));
        elsewhere.to = 5;
        assert!(matches!(
            carried(&elsewhere, Some(5), &long_fast()),
            Carried::Admin { sealed: true, .. }
        ));
    }

    #[test]
    fn a_packet_for_the_radio_no_held_key_opens_cannot_be_judged() {
        let theirs = ChannelKey::new("secret", &[9; 32]).expect("key");
        let packet = sealed(
            &theirs,
            9,
            0,
            5,
            &admin_data(admin_message::PayloadVariant::RebootSeconds(1)),
        );
        assert!(matches!(
            carried(&packet, Some(5), &long_fast()),
            Carried::Unjudgeable
        ));
        let mut pki = packet.clone();
        pki.pki_encrypted = true;
        pki.channel = u32::from(ChannelKey::default_channel().hash());
        assert!(matches!(
            carried(&pki, Some(5), &long_fast()),
            Carried::Unjudgeable
        ));
    }

    #[test]
    fn a_channel_without_a_key_carries_its_payload_in_clear() {
        let clear = RadioChannel {
            hash: 0x42,
            key: None,
        };
        let data = admin_data(admin_message::PayloadVariant::FactoryResetDevice(1));
        let packet = MeshPacket {
            id: 3,
            to: 5,
            channel: 0x42,
            payload_variant: Some(mesh_packet::PayloadVariant::Encrypted(data.encode_to_vec())),
            ..MeshPacket::default()
        };
        assert!(matches!(
            carried(&packet, Some(5), &[clear]),
            Carried::Admin { sealed: true, .. }
        ));
    }

    #[test]
    fn the_allowlist_lets_the_apps_kinds_through_and_names_the_rest_destructive() {
        use admin_message::PayloadVariant as A;
        let allowed = [
            A::GetOwnerRequest(true),
            A::SetOwner(User::default()),
            A::SetFavoriteNode(1),
            A::BeginEditSettings(true),
            A::SetTimeOnly(1),
        ];
        for payload in allowed {
            let admin = AdminMessage {
                payload_variant: Some(payload),
                ..AdminMessage::default()
            };
            assert_eq!(DestructiveAdmin::of(&admin), None, "{admin:?}");
        }
        let destructive = [
            (A::DeleteFileRequest("/prefs/db.proto".into()), "files"),
            (A::EnterDfuModeRequest(true), "firmware"),
            (A::ExitSimulator(true), "exit-simulator"),
            (A::SetScale(1), "unknown"),
            (A::RebootSeconds(5), "reboot"),
        ];
        for (payload, name) in destructive {
            let admin = AdminMessage {
                payload_variant: Some(payload),
                ..AdminMessage::default()
            };
            assert_eq!(
                DestructiveAdmin::of(&admin).map(DestructiveAdmin::name),
                Some(name)
            );
        }
        assert_eq!(
            DestructiveAdmin::of(&AdminMessage::default()),
            Some(DestructiveAdmin::Unknown)
        );
    }

    #[test]
    fn an_unknown_field_or_two_payloads_are_read_as_unnamed() {
        let mut bytes = admin_bytes(admin_message::PayloadVariant::SetTimeOnly(5));
        assert!(matches!(read_admin(&bytes), AdminRead::Known(_)));
        // Field 200 (a payload a later firmware may run), length-delimited, 1 byte.
        let mut unknown = bytes.clone();
        unknown.extend([0xc2, 0x0c, 1, 0]);
        assert!(matches!(read_admin(&unknown), AdminRead::Unnamed));
        // set_time_only, then reboot_seconds: prost keeps the reboot, but two is ambiguous.
        bytes.extend(admin_bytes(admin_message::PayloadVariant::RebootSeconds(1)));
        assert!(matches!(read_admin(&bytes), AdminRead::Unnamed));
        let with_passkey = AdminMessage {
            session_passkey: vec![1, 2, 3],
            payload_variant: Some(admin_message::PayloadVariant::SetTimeOnly(5)),
        }
        .encode_to_vec();
        assert!(matches!(read_admin(&with_passkey), AdminRead::Known(_)));
        assert!(matches!(read_admin(&[0xff]), AdminRead::Undecodable));
    }

    #[test]
    fn deny_admin_destructive_names_every_kind() {
        assert_eq!(
            "destructive".parse::<AdminDenial>().map(AdminDenial::kinds),
            Ok(DestructiveAdmin::ALL.to_vec())
        );
        assert_eq!(
            "files".parse::<AdminDenial>(),
            Ok(AdminDenial::Kind(DestructiveAdmin::Files))
        );
        let err = "everything".parse::<AdminDenial>().unwrap_err().to_string();
        assert!(err.contains("destructive, reboot"), "{err}");
    }

    #[test]
    fn destructive_admin_kinds_are_named_as_deny_admin_takes_them() {
        use admin_message::PayloadVariant as A;
        let admin = |v: A| AdminMessage {
            payload_variant: Some(v),
            ..AdminMessage::default()
        };
        assert_eq!(
            DestructiveAdmin::of(&admin(A::RebootSeconds(5))),
            Some(DestructiveAdmin::Reboot)
        );
        assert_eq!(
            DestructiveAdmin::of(&admin(A::FactoryResetConfig(1))),
            Some(DestructiveAdmin::FactoryReset)
        );
        assert_eq!(
            DestructiveAdmin::of(&admin(A::RemoveByNodenum(7))),
            Some(DestructiveAdmin::RemoveNode)
        );
        assert_eq!(DestructiveAdmin::of(&admin(A::GetOwnerRequest(true))), None);
        for kind in DestructiveAdmin::ALL {
            assert_eq!(kind.name().parse(), Ok(kind));
        }
        assert!("erase".parse::<DestructiveAdmin>().is_err());
    }

    #[test]
    fn an_admin_payload_that_does_not_decode_is_told_apart_from_no_admin() {
        let packet = |portnum: PortNum, payload: Vec<u8>| MeshPacket {
            payload_variant: Some(mesh_packet::PayloadVariant::Decoded(Data {
                portnum: portnum as i32,
                payload,
                ..Data::default()
            })),
            ..MeshPacket::default()
        };
        // add_contact (field 66) whose user (2) has a long_name (2) that is not UTF-8.
        let bad = vec![0x92, 0x04, 6, 0x12, 4, 0x12, 2, 0xff, 0xfe];
        let Carried::Admin { payload, sealed } =
            carried(&packet(PortNum::AdminApp, bad.clone()), Some(1), &[])
        else {
            panic!("an admin packet");
        };
        assert!(!sealed);
        assert!(matches!(read_admin(&payload), AdminRead::Undecodable));
        assert!(matches!(
            carried(&packet(PortNum::TextMessageApp, bad), Some(1), &[]),
            Carried::Nothing
        ));
    }
}
