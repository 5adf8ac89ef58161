//! Frame decoding throughput on a realistic mix (node infos whose keys hold `94 C3`, emoji text,
//! queue statuses), for keysync's codec and, on the same bytes in the same run, for the
//! `meshtastic` crate's own stream reader through its public API. Prints a table; run with
//! `cargo bench --bench codec`.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use keysync::engine::{ClientCodec, frame_bytes};
use keysync::sim::population::Population;
use meshtastic::protobufs::{
    Data, FromRadio, MeshPacket, PortNum, QueueStatus, from_radio, mesh_packet,
};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Decoder;

const FRAMES: usize = 20_000;
const SEGMENT: usize = 1460;

fn frame_mix() -> Vec<FromRadio> {
    let mut population = Population::new(3);
    let texts = ["on my way 🚶", "ÔÉ check-in 📡", "battery 81% ⚡", "ack"];
    (0..FRAMES)
        .map(|i| {
            let payload_variant = match i % 4 {
                0 | 1 => from_radio::PayloadVariant::NodeInfo(population.next_node()),
                2 => from_radio::PayloadVariant::Packet(MeshPacket {
                    from: 0x94C3_0000 | u32::try_from(i).unwrap_or(0),
                    to: 0xFFFF_FFFF,
                    id: 0xC394_0000 | u32::try_from(i).unwrap_or(0),
                    payload_variant: Some(mesh_packet::PayloadVariant::Decoded(Data {
                        portnum: PortNum::TextMessageApp as i32,
                        payload: texts[i % texts.len()].as_bytes().to_vec(),
                        ..Data::default()
                    })),
                    ..MeshPacket::default()
                }),
                _ => from_radio::PayloadVariant::QueueStatus(QueueStatus {
                    res: 0,
                    free: 16,
                    maxlen: 16,
                    mesh_packet_id: 0,
                }),
            };
            FromRadio {
                id: u32::try_from(i).unwrap_or(0),
                payload_variant: Some(payload_variant),
            }
        })
        .collect()
}

fn keysync_decode(bytes: &[u8]) -> (usize, Duration) {
    let start = Instant::now();
    let mut codec = ClientCodec::new();
    let mut buf = BytesMut::with_capacity(4096);
    let mut frames = 0;
    for segment in bytes.chunks(SEGMENT) {
        buf.extend_from_slice(segment);
        while let Ok(Some(_)) = codec.decode(&mut buf) {
            frames += 1;
        }
    }
    (frames, start.elapsed())
}

async fn meshtastic_decode(bytes: Vec<u8>) -> (usize, Duration) {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let handle = meshtastic::api::StreamHandle::from_stream(theirs);
    let start = Instant::now();
    let (mut packets, api) = meshtastic::api::StreamApi::new().connect(handle).await;
    let writer = tokio::spawn(async move {
        let mut ours = ours;
        for segment in bytes.chunks(SEGMENT) {
            if ours.write_all(segment).await.is_err() {
                break;
            }
        }
        // Keep the stream open while the reader drains.
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(ours);
    });
    let mut frames = 0;
    let mut last = start.elapsed();
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(1500), packets.recv()).await
    {
        frames += 1;
        last = start.elapsed();
    }
    writer.abort();
    let _ = api.disconnect().await;
    (frames, last)
}

fn mb_per_s(bytes: usize, d: Duration) -> f64 {
    f64::from(u32::try_from(bytes).unwrap_or(u32::MAX)) / d.as_secs_f64() / 1e6
}

#[tokio::main]
async fn main() {
    let frames = frame_mix();
    let bytes: Vec<u8> = frames
        .iter()
        .flat_map(|f| frame_bytes(f).unwrap_or_default())
        .collect();
    let with_magic = frames
        .iter()
        .filter(|f| frame_bytes(*f).is_ok_and(|b| b[4..].windows(2).any(|w| w == [0x94, 0xC3])))
        .count();
    println!(
        "{} frames, {} bytes, {} frames with 94 C3 inside the payload; fed in {SEGMENT}-byte segments",
        frames.len(),
        bytes.len(),
        with_magic
    );
    println!(
        "{:<22} {:>8} {:>8} {:>10} {:>12}",
        "decoder", "frames", "lost", "MB/s", "frames/s"
    );
    let mut best = Duration::MAX;
    let mut decoded = 0;
    for _ in 0..5 {
        let (n, d) = keysync_decode(&bytes);
        decoded = n;
        best = best.min(d);
    }
    println!(
        "{:<22} {:>8} {:>8} {:>10.1} {:>12.0}",
        "keysync FrameCodec",
        decoded,
        frames.len() - decoded,
        mb_per_s(bytes.len(), best),
        f64::from(u32::try_from(decoded).unwrap_or(0)) / best.as_secs_f64()
    );
    let (n, d) = meshtastic_decode(bytes.clone()).await;
    println!(
        "{:<22} {:>8} {:>8} {:>10.1} {:>12.0}",
        "meshtastic 0.1.9",
        n,
        frames.len().saturating_sub(n),
        mb_per_s(bytes.len(), d),
        f64::from(u32::try_from(n).unwrap_or(0)) / d.as_secs_f64()
    );
}
