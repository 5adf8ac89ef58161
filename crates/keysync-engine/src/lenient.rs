//! Lenient decoding of names that are not valid UTF-8.
//!
//! Firmware before 2.7.23 stored and sent names as they came (firmware #7260, python #808), and
//! prost refuses a whole message with one bad `string` field: the node, its key and the frame
//! would be lost. Here the protobuf wire format is walked along the paths where names live,
//! each name is replaced by its lossy UTF-8 form, and the message is decoded again.

use meshtastic::Message;
use meshtastic::protobufs::{FromRadio, ToRadio, User};

/// Where strings sit in a message: their field numbers, and the sub-messages to walk.
struct Spec {
    strings: &'static [u32],
    messages: &'static [(u32, &'static Spec)],
}

/// `User`: id (1), long_name (2), short_name (3).
const USER: Spec = Spec {
    strings: &[1, 2, 3],
    messages: &[],
};
/// `NodeInfo.user` (2).
const NODE_INFO: Spec = Spec {
    strings: &[],
    messages: &[(2, &USER)],
};
/// `FromRadio.node_info` (4).
const FROM_RADIO: Spec = Spec {
    strings: &[],
    messages: &[(4, &NODE_INFO)],
};

/// A message that can be decoded again after its names were repaired.
pub trait Lenient: Message + Default + Sized {
    /// The message with every invalid name made lossy UTF-8, if there is a way.
    fn repaired(_bytes: &[u8]) -> Option<Self> {
        None
    }
}

impl Lenient for FromRadio {
    fn repaired(bytes: &[u8]) -> Option<Self> {
        Self::decode(repair(bytes, &FROM_RADIO)?.as_slice()).ok()
    }
}

impl Lenient for ToRadio {}

/// A `User` (a NODEINFO_APP payload), leniently.
pub fn decode_user(bytes: &[u8]) -> Option<User> {
    User::decode(bytes)
        .ok()
        .or_else(|| User::decode(repair(bytes, &USER)?.as_slice()).ok())
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Appends one length-delimited protobuf field (a string, bytes or sub-message).
pub fn length_delimited(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    write_varint(out, u64::from(field << 3 | 2));
    write_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let low = u8::try_from(v & 0x7F).unwrap_or_default();
        v >>= 7;
        if v == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// The message re-encoded with its names (per `spec`) made valid; `None` on malformed input.
fn repair(buf: &[u8], spec: &Spec) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(buf.len() + 8);
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let key = read_varint(buf, &mut pos)?;
        let field = u32::try_from(key >> 3).ok()?;
        match key & 7 {
            0 => {
                read_varint(buf, &mut pos)?;
                out.extend_from_slice(buf.get(start..pos)?);
            }
            1 => {
                pos += 8;
                out.extend_from_slice(buf.get(start..pos)?);
            }
            5 => {
                pos += 4;
                out.extend_from_slice(buf.get(start..pos)?);
            }
            2 => {
                let len = usize::try_from(read_varint(buf, &mut pos)?).ok()?;
                let body = buf.get(pos..pos.checked_add(len)?)?;
                pos += len;
                let replaced = if spec.strings.contains(&field) {
                    Some(String::from_utf8_lossy(body).into_owned().into_bytes())
                } else if let Some((_, inner)) = spec.messages.iter().find(|(f, _)| *f == field) {
                    Some(repair(body, inner)?)
                } else {
                    None
                };
                match replaced {
                    Some(bytes) => length_delimited(&mut out, field, &bytes),
                    None => out.extend_from_slice(buf.get(start..pos)?),
                }
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use meshtastic::protobufs::{NodeInfo, from_radio};

    use super::*;

    fn with_raw_long_name(user: &User, raw: &[u8]) -> Vec<u8> {
        let mut bytes = user.encode_to_vec();
        length_delimited(&mut bytes, 2, raw);
        bytes
    }

    #[test]
    fn a_user_with_an_invalid_name_keeps_its_key() {
        let user = User {
            id: "!00000001".into(),
            public_key: vec![7; 32],
            ..User::default()
        };
        let bytes = with_raw_long_name(&user, b"Bad \xff\xfe name");
        assert!(
            User::decode(bytes.as_slice()).is_err(),
            "prost refuses it whole"
        );
        let decoded = decode_user(&bytes).expect("decoded leniently");
        assert_eq!(decoded.public_key, vec![7; 32]);
        assert_eq!(decoded.long_name, "Bad \u{FFFD}\u{FFFD} name");
    }

    #[test]
    fn a_node_info_frame_with_an_invalid_name_is_repaired() {
        let user = User {
            public_key: vec![9; 32],
            ..User::default()
        };
        let mut node = NodeInfo {
            num: 42,
            is_favorite: true,
            ..NodeInfo::default()
        }
        .encode_to_vec();
        length_delimited(&mut node, 2, &with_raw_long_name(&user, b"\xc3\x28"));
        let mut frame = Vec::new();
        length_delimited(&mut frame, 4, &node);
        assert!(FromRadio::decode(frame.as_slice()).is_err());
        let repaired = FromRadio::repaired(&frame).expect("repaired");
        let Some(from_radio::PayloadVariant::NodeInfo(n)) = repaired.payload_variant else {
            panic!("node_info");
        };
        assert_eq!((n.num, n.is_favorite), (42, true));
        assert_eq!(n.user.map(|u| u.public_key), Some(vec![9; 32]));
    }

    #[test]
    fn malformed_bytes_are_not_repaired() {
        assert!(FromRadio::repaired(&[0x22, 0x05, 0x01]).is_none());
        assert!(
            FromRadio::repaired(&[0x23]).is_none(),
            "groups are not walked"
        );
    }
}
