//! The frame codec against everything PROTOCOL.md § Framing says a stream can hold.

mod common;

use bytes::BytesMut;
use common::proto;
use keysync::engine::{self, Contact};
use keysync::engine::{ClientCodec, RadioCodec, frame_bytes};
use meshtastic::Message;
use meshtastic::protobufs::{FromRadio, MeshPacket, QueueStatus, from_radio};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

fn node_with_key(num: u32, key: Vec<u8>, name: &str) -> FromRadio {
    proto::node_frame(num, proto::node_info(num, name, "T", key))
}

fn text_packet(text: &str) -> FromRadio {
    let packet = MeshPacket {
        from: 0x94C3_94C3,
        ..proto::text_packet(engine::BROADCAST, 0xC394_C394, text)
    };
    proto::packet_frame(0, packet)
}

fn queue_status(free: u32) -> FromRadio {
    FromRadio {
        id: 0,
        payload_variant: Some(from_radio::PayloadVariant::QueueStatus(QueueStatus {
            res: 0,
            free,
            maxlen: 16,
            mesh_packet_id: 0,
        })),
    }
}

fn key_with_magic() -> Vec<u8> {
    let mut key: Vec<u8> = (1..=32).collect();
    key[10] = 0x94;
    key[11] = 0xC3;
    key[30] = 0x94;
    key[31] = 0xC3;
    key
}

fn decode_all(codec: &mut ClientCodec, bytes: &[u8]) -> Vec<FromRadio> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = codec.decode(&mut buf).expect("decoding never fails") {
        out.push(f);
    }
    while let Some(f) = codec.decode_eof(&mut buf).expect("decoding never fails") {
        out.push(f);
    }
    out
}

fn bytes_of(frame: &FromRadio) -> Vec<u8> {
    frame_bytes(frame).expect("fits")
}

#[test]
fn key_containing_the_magic_survives_whole() {
    let frame = node_with_key(7, key_with_magic(), "Ridge");
    let bytes = bytes_of(&frame);
    assert!(bytes[4..].windows(2).any(|w| w == [0x94, 0xC3]));
    let mut codec = ClientCodec::new();
    assert_eq!(decode_all(&mut codec, &bytes), vec![frame]);
    assert_eq!(codec.stats().garbage_bytes, 0);
}

#[test]
fn emoji_and_magic_in_text_and_ids_survive() {
    // "Ô" is C3 94: followed by another Latin-1 letter the payload holds 94 C3.
    let frames = vec![text_packet("🦊📡 ÔÉ ÔÔÔ héllo"), queue_status(3)];
    let bytes: Vec<u8> = frames.iter().flat_map(bytes_of).collect();
    let mut codec = ClientCodec::new();
    assert_eq!(decode_all(&mut codec, &bytes), frames);
}

#[test]
fn garbage_before_between_and_after_frames_is_skipped_and_counted() {
    let a = node_with_key(1, vec![5; 32], "a");
    let b = queue_status(9);
    let mut bytes = b"DEBUG | boot ok\r\n".to_vec();
    bytes.extend(bytes_of(&a));
    bytes.extend([0x00, 0x94, 0x00, 0xC3, 0xFF]);
    bytes.extend(bytes_of(&b));
    bytes.extend(b"trailing noise");
    let mut codec = ClientCodec::new();
    assert_eq!(decode_all(&mut codec, &bytes), vec![a, b]);
    let stats = codec.stats();
    assert_eq!(stats.garbage_bytes, 17 + 5 + 14);
    assert_eq!(stats.frames, 2);
}

#[test]
fn a_serial_console_s_coloured_log_text_with_stray_magic_is_skipped_between_frames() {
    let a = node_with_key(1, key_with_magic(), "a");
    let b = queue_status(3);
    // A debug line as the firmware prints it before the API is active: colour codes, and a
    // byte pair that looks like the magic followed by text (an oversize "length").
    let text = b"\x1b[34mDEBUG\x1b[0m | 00:00:01 7 [Power] \x94\xC3ok batMv=4190\r\n";
    let mut bytes = text.to_vec();
    bytes.extend(bytes_of(&a));
    bytes.extend(text);
    bytes.extend(text);
    bytes.extend(bytes_of(&b));
    let mut codec = ClientCodec::new();
    assert_eq!(decode_all(&mut codec, &bytes), vec![a, b]);
    let stats = codec.stats();
    assert_eq!(stats.garbage_bytes, 3 * text.len() as u64);
    assert_eq!(stats.oversize_headers, 3);
}

#[test]
fn the_wake_up_bytes_flush_a_stale_half_frame_so_the_first_want_config_is_read() {
    use keysync::engine::WAKE_UP;
    let want = bytes_of_to_radio(&engine::want_config(69_420));
    // The radio's parser still waits for 20 bytes of a frame its last client never finished.
    let stale = [0x94, 0xC3, 0x00, 0x14];
    let mut woken = stale.to_vec();
    woken.extend(WAKE_UP);
    woken.extend(&want);
    let mut codec = RadioCodec::new();
    let got = decode_to_radio(&mut codec, &woken);
    assert_eq!(got, vec![engine::want_config(69_420)]);
    assert_eq!(
        codec.stats().undecodable,
        1,
        "the stale frame, filled with wake-up bytes"
    );
    // Without the wake-up the want_config is eaten by the stale frame.
    let mut unwoken = stale.to_vec();
    unwoken.extend(&want);
    let mut codec = RadioCodec::new();
    assert_eq!(decode_to_radio(&mut codec, &unwoken), vec![]);
}

fn bytes_of_to_radio(msg: &meshtastic::protobufs::ToRadio) -> Vec<u8> {
    frame_bytes(msg).expect("fits")
}

fn decode_to_radio(codec: &mut RadioCodec, bytes: &[u8]) -> Vec<meshtastic::protobufs::ToRadio> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = codec.decode(&mut buf).expect("decoding never fails") {
        out.push(f);
    }
    out
}

#[test]
fn oversize_header_is_rejected_and_the_hunt_resumes_at_the_next_byte() {
    let frame = queue_status(4);
    // 94 C3 02 58 announces 600 bytes; a real frame starts right after the bogus header.
    let mut bytes = vec![0x94, 0xC3, 0x02, 0x58];
    bytes.extend(bytes_of(&frame));
    let mut codec = ClientCodec::new();
    assert_eq!(decode_all(&mut codec, &bytes), vec![frame.clone()]);
    assert_eq!(codec.stats().oversize_headers, 1);

    // A real header can start inside the bogus length field: 94 C3 94 C3 00 LEN ...
    let inner = bytes_of(&frame);
    let mut overlapped = vec![0x94, 0xC3];
    overlapped.extend(&inner);
    let mut codec = ClientCodec::new();
    assert_eq!(decode_all(&mut codec, &overlapped), vec![frame]);
}

#[test]
fn a_frame_split_at_every_byte_boundary_decodes_once() {
    let frames = vec![
        node_with_key(3, key_with_magic(), "ÔÉ split"),
        queue_status(1),
    ];
    let bytes: Vec<u8> = frames.iter().flat_map(bytes_of).collect();
    for cut in 0..=bytes.len() {
        let mut codec = ClientCodec::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for part in [&bytes[..cut], &bytes[cut..]] {
            buf.extend_from_slice(part);
            while let Some(f) = codec.decode(&mut buf).expect("never fails") {
                out.push(f);
            }
        }
        assert_eq!(out, frames, "split at {cut}");
    }
}

#[test]
fn byte_by_byte_feeding_decodes_everything() {
    let frames: Vec<FromRadio> = (0..5)
        .map(|i| node_with_key(i, key_with_magic(), "x"))
        .collect();
    let bytes: Vec<u8> = frames.iter().flat_map(bytes_of).collect();
    let mut codec = ClientCodec::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for b in bytes {
        buf.extend_from_slice(&[b]);
        while let Some(f) = codec.decode(&mut buf).expect("never fails") {
            out.push(f);
        }
    }
    assert_eq!(out, frames);
}

#[test]
fn truncated_frame_at_eof_is_dropped_and_counted() {
    let whole = queue_status(2);
    let cut = bytes_of(&node_with_key(9, vec![1; 32], "cut"));
    let mut bytes = bytes_of(&whole);
    bytes.extend(&cut[..cut.len() - 5]);
    let mut codec = ClientCodec::new();
    assert_eq!(decode_all(&mut codec, &bytes), vec![whole]);
    assert_eq!(codec.stats().truncated_at_eof, (cut.len() - 5) as u64);
}

#[test]
fn undecodable_payload_is_skipped_and_the_stream_continues() {
    let good = queue_status(5);
    // A well-framed payload that is not a protobuf: field 15 with wire type 7 (invalid).
    let mut bytes = vec![0x94, 0xC3, 0x00, 0x03, 0x7F, 0xFF, 0xFF];
    bytes.extend(bytes_of(&good));
    let mut codec = ClientCodec::new();
    assert_eq!(decode_all(&mut codec, &bytes), vec![good]);
    assert_eq!(codec.stats().undecodable, 1);
}

#[test]
fn radio_side_decodes_what_the_client_side_encodes() {
    let contact = Contact {
        num: 0x94C3_0001,
        long_name: "ÔÉ".into(),
        short_name: "OE".into(),
        hw_model: 9,
        role: 0,
        key: key_with_magic().try_into().expect("32 bytes"),
        is_unmessagable: None,
        is_licensed: false,
        macaddr: Vec::new(),
    };
    let msgs = vec![
        engine::want_config(12345),
        engine::heartbeat(7),
        engine::add_contact(0xC394_C394, 0x94C3, &contact),
    ];
    let mut bytes = vec![0xC3; 32]; // the Python client's wake-up bytes
    for m in &msgs {
        bytes.extend(frame_bytes(m).expect("fits"));
    }
    let mut codec = RadioCodec::new();
    let mut buf = BytesMut::from(&bytes[..]);
    let mut out = Vec::new();
    while let Some(m) = codec.decode(&mut buf).expect("never fails") {
        out.push(m);
    }
    assert_eq!(out, msgs);
    assert_eq!(codec.stats().garbage_bytes, 32);
}

#[test]
fn encoder_refuses_frames_over_512_bytes() {
    let big = text_packet(&"x".repeat(600));
    assert!(big.encoded_len() > 512);
    assert!(frame_bytes(&big).is_err());
}

fn arb_frame() -> impl Strategy<Value = FromRadio> {
    prop_oneof![
        (
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 32),
            "\\PC{0,30}"
        )
            .prop_map(|(n, k, name)| node_with_key(n, k, &name)),
        "\\PC{0,120}".prop_map(|t| text_packet(&t)),
        any::<u32>().prop_map(queue_status),
    ]
}

/// Noise that cannot contain a frame header: no 0x94 at all.
fn arb_noise() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>().prop_filter("no magic", |b| *b != 0x94), 0..40)
}

proptest! {
    #[test]
    fn random_frames_between_random_noise_come_out_whole_and_in_order(
        parts in proptest::collection::vec((arb_noise(), arb_frame()), 1..12),
        tail in arb_noise(),
        chunk in 1usize..64,
    ) {
        let mut bytes = Vec::new();
        for (noise, frame) in &parts {
            bytes.extend(noise);
            bytes.extend(bytes_of(frame));
        }
        bytes.extend(&tail);
        let mut codec = ClientCodec::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(f) = codec.decode(&mut buf).expect("never fails") {
                out.push(f);
            }
        }
        let expected: Vec<FromRadio> = parts.into_iter().map(|(_, f)| f).collect();
        prop_assert_eq!(out, expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_real_frames_follow(
        junk in proptest::collection::vec(any::<u8>(), 0..600),
        frame in arb_frame(),
    ) {
        let mut codec = ClientCodec::new();
        let mut buf = BytesMut::from(&junk[..]);
        while codec.decode(&mut buf).expect("never fails").is_some() {}
        // Whatever the junk left half-parsed, a run of real frames gets through: at most the
        // junk's unfinished "frame" (≤ 512 bytes) swallows the first of them.
        let one = bytes_of(&frame);
        let copies = 520 / one.len() + 2;
        for _ in 0..copies {
            buf.extend_from_slice(&one);
        }
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf).expect("never fails") {
            out.push(f);
        }
        prop_assert!(out.iter().filter(|f| **f == frame).count() >= 1);
    }
}
