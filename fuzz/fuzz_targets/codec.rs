//! Arbitrary bytes through the frame decoder, fed in arbitrary pieces: it must never panic,
//! never return an error, never consume more than it was given, and afterwards still decode a
//! real frame appended behind the junk (once any half-read frame is flushed).
#![no_main]

use bytes::BytesMut;
use keysync::engine::{ClientCodec, MAX_PAYLOAD, frame_bytes};
use libfuzzer_sys::fuzz_target;
use meshtastic::protobufs::{FromRadio, QueueStatus, from_radio};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(1, |b| usize::from(*b).max(1));
    let mut codec = ClientCodec::new();
    let mut buf = BytesMut::new();
    for piece in data.chunks(split) {
        buf.extend_from_slice(piece);
        while let Some(_frame) = codec.decode(&mut buf).expect("decode never fails") {}
    }
    let marker = FromRadio {
        id: 0x94C3_94C3,
        payload_variant: Some(from_radio::PayloadVariant::QueueStatus(QueueStatus {
            res: 0,
            free: 7,
            maxlen: 16,
            mesh_packet_id: 0xC394,
        })),
    };
    let one = frame_bytes(&marker).expect("fits");
    for _ in 0..(MAX_PAYLOAD / one.len() + 2) {
        buf.extend_from_slice(&one);
    }
    let mut found = false;
    while let Some(frame) = codec.decode(&mut buf).expect("decode never fails") {
        found |= frame == marker;
    }
    assert!(found, "the decoder never came back to real frames");
});
