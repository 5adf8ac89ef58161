//! The stream framing of the radio's TCP API (PROTOCOL.md § Framing).
//!
//! A frame is `0x94 0xC3`, a big-endian `u16` length and that many bytes of one protobuf. The
//! decoder hunts for the magic, rejects lengths above 512 by resuming the hunt one byte after
//! the rejected magic, and once a header is accepted reads exactly `len` bytes without looking
//! inside them: public keys and UTF-8 text carry `94 C3` often, and a reader that scans
//! payloads for the magic (as the `meshtastic` crate's does) drops or stalls on such frames.

use std::io;
use std::marker::PhantomData;

use super::lenient::Lenient;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use meshtastic::Message;
use meshtastic::protobufs::{FromRadio, ToRadio};
use tokio_util::codec::{Decoder, Encoder};

/// First byte of the frame magic.
pub const MAGIC_1: u8 = 0x94;
/// Second byte of the frame magic.
pub const MAGIC_2: u8 = 0xC3;
/// Magic plus the big-endian length.
pub const HEADER_LEN: usize = 4;
/// The firmware's `MAX_TO_FROM_RADIO_SIZE`: a header announcing more is not a header.
pub const MAX_PAYLOAD: usize = 512;

/// What the decoder threw away, for the UI's counters and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CodecStats {
    /// Frames whose payload decoded.
    pub frames: u64,
    /// Bytes skipped while hunting for the magic (debug text, line noise, rejected headers).
    pub garbage_bytes: u64,
    /// Headers whose length exceeded [`MAX_PAYLOAD`].
    pub oversize_headers: u64,
    /// Well-framed payloads that were not a valid protobuf of the expected type.
    pub undecodable: u64,
    /// Frames decoded only after names that are not UTF-8 were made lossy.
    pub repaired: u64,
    /// Bytes of an unfinished frame left when the stream ended.
    pub truncated_at_eof: u64,
}

/// Encoding failed before anything was written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {0} bytes exceeds the radio's limit of {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Framing codec, generic over the direction: `In` is decoded, `Out` is encoded.
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    stats: CodecStats,
    _direction: PhantomData<fn(Out) -> In>,
}

/// The client's side of the link: reads `FromRadio`, writes `ToRadio`.
pub type ClientCodec = FrameCodec<FromRadio, ToRadio>;
/// The radio's side of the link (the simulator, the proxy's downstream ports).
pub type RadioCodec = FrameCodec<ToRadio, FromRadio>;

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        Self {
            stats: CodecStats::default(),
            _direction: PhantomData,
        }
    }
}

impl<In, Out> FrameCodec<In, Out> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> CodecStats {
        self.stats
    }
}

/// Where the next frame header starts, after discarding what cannot be one.
///
/// Returns `Some(len)` with the buffer positioned at an accepted header, or `None` when more
/// bytes are needed. Every discarded byte is counted as garbage.
fn hunt_header(src: &mut BytesMut, stats: &mut CodecStats) -> Option<usize> {
    loop {
        let Some(start) = src.iter().position(|&b| b == MAGIC_1) else {
            stats.garbage_bytes += src.len() as u64;
            src.clear();
            return None;
        };
        if start > 0 {
            stats.garbage_bytes += start as u64;
            src.advance(start);
        }
        if src.len() < 2 {
            return None;
        }
        if src[1] != MAGIC_2 {
            stats.garbage_bytes += 1;
            src.advance(1);
            continue;
        }
        if src.len() < HEADER_LEN {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([src[2], src[3]]));
        if len > MAX_PAYLOAD {
            // Not a header: resume one byte after its first magic byte, so a real header that
            // starts inside the bogus length field is still found.
            stats.oversize_headers += 1;
            stats.garbage_bytes += 1;
            src.advance(1);
            continue;
        }
        return Some(len);
    }
}

impl<In: Lenient, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, io::Error> {
        Ok(self.next_frame(src).map(|(msg, _)| msg))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, io::Error> {
        Ok(self.next_frame_eof(src).map(|(msg, _)| msg))
    }
}

impl<In: Lenient, Out> FrameCodec<In, Out> {
    /// The next frame that decodes, with its payload bytes as they came.
    fn next_frame(&mut self, src: &mut BytesMut) -> Option<(In, Bytes)> {
        loop {
            let len = hunt_header(src, &mut self.stats)?;
            if src.len() < HEADER_LEN + len {
                src.reserve(HEADER_LEN + len - src.len());
                return None;
            }
            src.advance(HEADER_LEN);
            let payload = src.split_to(len).freeze();
            match In::decode(payload.as_ref()) {
                Ok(msg) => {
                    self.stats.frames += 1;
                    return Some((msg, payload));
                }
                Err(err) => {
                    if let Some(msg) = In::repaired(&payload) {
                        self.stats.frames += 1;
                        self.stats.repaired += 1;
                        log::debug!(target: "keysync::codec", "decoded a {len}-byte frame with names that are not UTF-8 leniently");
                        return Some((msg, payload));
                    }
                    self.stats.undecodable += 1;
                    log::debug!(target: "keysync::codec", "skipped undecodable {len}-byte frame: {err}");
                }
            }
        }
    }

    fn next_frame_eof(&mut self, src: &mut BytesMut) -> Option<(In, Bytes)> {
        if let Some(frame) = self.next_frame(src) {
            return Some(frame);
        }
        if !src.is_empty() {
            self.stats.truncated_at_eof += src.len() as u64;
            log::debug!(target: "keysync::codec", "stream ended inside a frame ({} bytes dropped)", src.len());
            src.clear();
        }
        None
    }
}

/// A frame from the radio: decoded, to look at, and its payload as the radio sent it, to relay
/// byte for byte (fields this crate does not know survive).
#[derive(Debug, Clone, PartialEq)]
pub struct RadioFrame {
    pub msg: FromRadio,
    pub payload: Bytes,
}

impl RadioFrame {
    /// A frame keysync composed: its payload is its encoding.
    pub fn composed(msg: FromRadio) -> Self {
        let payload = Bytes::from(msg.encode_to_vec());
        Self { msg, payload }
    }
}

impl std::ops::Deref for RadioFrame {
    type Target = FromRadio;

    fn deref(&self) -> &FromRadio {
        &self.msg
    }
}

/// The link's codec: [`ClientCodec`] that keeps each frame's bytes ([`RadioFrame`]).
#[derive(Debug, Default)]
pub struct RelayCodec(ClientCodec);

impl RelayCodec {
    pub fn stats(&self) -> CodecStats {
        self.0.stats()
    }
}

impl Decoder for RelayCodec {
    type Item = RadioFrame;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<RadioFrame>, io::Error> {
        Ok(self
            .0
            .next_frame(src)
            .map(|(msg, payload)| RadioFrame { msg, payload }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<RadioFrame>, io::Error> {
        Ok(self
            .0
            .next_frame_eof(src)
            .map(|(msg, payload)| RadioFrame { msg, payload }))
    }
}

impl Encoder<ToRadio> for RelayCodec {
    type Error = CodecError;

    fn encode(&mut self, item: ToRadio, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(&item, dst)
    }
}

/// Appends one frame whose payload is `payload` as it is (a frame relayed byte for byte).
pub fn encode_raw(payload: &[u8], dst: &mut BytesMut) -> Result<(), CodecError> {
    let len = payload.len();
    let header_len = u16::try_from(len)
        .ok()
        .filter(|_| len <= MAX_PAYLOAD)
        .ok_or(CodecError::TooLarge(len))?;
    dst.reserve(HEADER_LEN + len);
    dst.put_u8(MAGIC_1);
    dst.put_u8(MAGIC_2);
    dst.put_u16(header_len);
    dst.put_slice(payload);
    Ok(())
}

impl<In, Out: Message> Encoder<Out> for FrameCodec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(&item, dst)
    }
}

/// Appends one frame holding `msg` to `dst`.
pub fn encode_frame(msg: &impl Message, dst: &mut BytesMut) -> Result<(), CodecError> {
    let len = msg.encoded_len();
    let Ok(header_len) = u16::try_from(len) else {
        return Err(CodecError::TooLarge(len));
    };
    if len > MAX_PAYLOAD {
        return Err(CodecError::TooLarge(len));
    }
    dst.reserve(HEADER_LEN + len);
    dst.put_u8(MAGIC_1);
    dst.put_u8(MAGIC_2);
    dst.put_u16(header_len);
    msg.encode(dst)
        .map_err(|e| CodecError::Io(io::Error::other(e)))?;
    Ok(())
}

/// One frame as bytes, for tests, benches and the simulator's fault injection.
pub fn frame_bytes(msg: &impl Message) -> Result<Vec<u8>, CodecError> {
    let mut buf = BytesMut::new();
    encode_frame(msg, &mut buf)?;
    Ok(buf.to_vec())
}
