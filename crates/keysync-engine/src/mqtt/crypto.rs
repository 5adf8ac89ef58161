//! Channel keys as the firmware derives them (Channels.cpp) and the AES-CTR of channel traffic
//! (CryptoEngine.cpp): what it takes to read a packet a gateway uploaded encrypted.

use aes::{Aes128, Aes256};
use ctr::cipher::{KeyIvInit, StreamCipher};
use meshtastic::protobufs::{Channel, FromRadio, channel, config, from_radio};

/// The public key of the default channel, which a one-byte PSK `n` selects with its last byte
/// raised by `n - 1` (Channels.h `defaultpsk`, Channels.cpp `getKey`).
pub const DEFAULT_PSK: [u8; 16] = [
    0xd4, 0xf1, 0xbb, 0x3a, 0x20, 0x29, 0x07, 0x59, 0xf0, 0xbc, 0xff, 0xab, 0xcf, 0x4e, 0x69, 0x01,
];
/// The name the firmware gives a nameless primary channel on the default preset.
pub const DEFAULT_CHANNEL: &str = "LongFast";
/// Longest channel name a radio stores (ChannelSettings.name, 12 bytes with its NUL).
const NAME_MAX: usize = 11;

/// A channel keysync can read: its name and its AES key (16 or 32 bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelKey {
    pub name: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for ChannelKey {
    // A channel key is a secret: it stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelKey")
            .field("name", &self.name)
            .field("bits", &(self.key.len() * 8))
            .finish_non_exhaustive()
    }
}

impl ChannelKey {
    /// The channel `name` with the PSK as a radio stores it: 1 byte selects a default key,
    /// 16 or 32 bytes are the key, a shorter key is zero-padded to the next AES size. `None`
    /// for no encryption (empty or index 0) or a PSK longer than 32 bytes.
    pub fn new(name: &str, psk: &[u8]) -> Option<Self> {
        let key = match psk.len() {
            0 => return None,
            1 => {
                let index = psk[0];
                if index == 0 {
                    return None;
                }
                let mut key = DEFAULT_PSK.to_vec();
                key[15] = key[15].wrapping_add(index - 1);
                key
            }
            n if n <= 16 => pad(psk, 16),
            n if n <= 32 => pad(psk, 32),
            _ => return None,
        };
        let name = super::super::radio::truncate_utf8(name, NAME_MAX).to_owned();
        Some(Self { name, key })
    }

    /// The default channel every radio starts on, whose key is public.
    pub fn default_channel() -> Self {
        Self {
            name: DEFAULT_CHANNEL.to_owned(),
            key: DEFAULT_PSK.to_vec(),
        }
    }

    /// The hash a packet carries in its `channel` field: the xor of the name's bytes and the
    /// key's bytes (Channels.cpp `generateHash`).
    pub fn hash(&self) -> u8 {
        xor(self.name.as_bytes()) ^ xor(&self.key)
    }

    /// Decrypts (or encrypts: CTR is its own inverse) `bytes` of packet `id` from node `from`.
    /// The nonce is the packet id as a little-endian u64, the sender as a little-endian u32 and
    /// four zero bytes, of which the firmware counts in the last four (`setCounterSize(4)`).
    pub fn apply(&self, id: u32, from: u32, bytes: &mut [u8]) {
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&u64::from(id).to_le_bytes());
        nonce[8..12].copy_from_slice(&from.to_le_bytes());
        if self.key.len() == 16 {
            if let Ok(mut c) = ctr::Ctr32BE::<Aes128>::new_from_slices(&self.key, &nonce) {
                c.apply_keystream(bytes);
            }
        } else if let Ok(mut c) = ctr::Ctr32BE::<Aes256>::new_from_slices(&self.key, &nonce) {
            c.apply_keystream(bytes);
        }
    }
}

fn pad(psk: &[u8], len: usize) -> Vec<u8> {
    let mut key = psk.to_vec();
    key.resize(len, 0);
    key
}

fn xor(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |h, b| h ^ b)
}

/// The name the firmware shows for a modem preset (DisplayFormatters.cpp), which a nameless
/// channel takes for its hash.
#[expect(
    deprecated,
    reason = "radios configured before the slow presets were retired still use them"
)]
fn preset_name(preset: i32) -> &'static str {
    use config::lo_ra_config::ModemPreset as P;
    match P::try_from(preset) {
        Ok(P::LongFast) => "LongFast",
        Ok(P::LongSlow) => "LongSlow",
        Ok(P::VeryLongSlow) => "VLongSlow",
        Ok(P::MediumSlow) => "MediumSlow",
        Ok(P::MediumFast) => "MediumFast",
        Ok(P::ShortSlow) => "ShortSlow",
        Ok(P::ShortFast) => "ShortFast",
        Ok(P::LongModerate) => "LongMod",
        Ok(P::ShortTurbo) => "ShortTurbo",
        Ok(P::LongTurbo) => "LongTurbo",
        Err(_) => "Invalid",
    }
}

/// One channel of a radio as the firmware matches a packet to it: the hash a packet names it by,
/// and its key unless it sends in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RadioChannel {
    pub hash: u8,
    pub key: Option<ChannelKey>,
}

/// The channels a radio's configuration download describes, with their keys: the primary and
/// the secondaries that encrypt (a secondary without a PSK borrows the primary's key).
pub fn radio_channels<'a>(frames: impl IntoIterator<Item = &'a FromRadio>) -> Vec<ChannelKey> {
    radio_channel_table(frames)
        .into_iter()
        .filter_map(|c| c.key)
        .collect()
}

/// Every enabled channel of a radio's configuration download, those in clear included (their
/// hash is their name's alone, Channels.cpp `generateHash` over an empty key).
pub fn radio_channel_table<'a>(
    frames: impl IntoIterator<Item = &'a FromRadio>,
) -> Vec<RadioChannel> {
    let mut channels: Vec<&Channel> = Vec::new();
    let mut preset = None;
    for frame in frames {
        match &frame.payload_variant {
            Some(from_radio::PayloadVariant::Channel(c)) => channels.push(c),
            Some(from_radio::PayloadVariant::Config(c)) => {
                if let Some(config::PayloadVariant::Lora(lora)) = &c.payload_variant {
                    preset = Some(if lora.use_preset {
                        preset_name(lora.modem_preset)
                    } else {
                        "Custom"
                    });
                }
            }
            _ => {}
        }
    }
    let preset = preset.unwrap_or(DEFAULT_CHANNEL);
    let primary_psk = channels
        .iter()
        .find(|c| c.role == channel::Role::Primary as i32)
        .and_then(|c| c.settings.as_ref())
        .map(|s| s.psk.clone())
        .unwrap_or_default();
    channels
        .iter()
        .filter(|c| c.role != channel::Role::Disabled as i32)
        .filter_map(|c| {
            let settings = c.settings.as_ref()?;
            let name = if settings.name.is_empty() {
                preset
            } else {
                settings.name.as_str()
            };
            let psk = if settings.psk.is_empty() && c.role == channel::Role::Secondary as i32 {
                &primary_psk
            } else {
                &settings.psk
            };
            if psk.len() > 32 {
                return None;
            }
            Some(match ChannelKey::new(name, psk) {
                Some(key) => RadioChannel {
                    hash: key.hash(),
                    key: Some(key),
                },
                None => RadioChannel {
                    hash: xor(super::super::radio::truncate_utf8(name, NAME_MAX).as_bytes()),
                    key: None,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtastic::protobufs::{ChannelSettings, Config};

    #[test]
    fn the_default_long_fast_channel_hashes_to_8_as_on_every_radio() {
        assert_eq!(ChannelKey::default_channel().hash(), 8);
        assert_eq!(
            ChannelKey::new("LongFast", &[1]),
            Some(ChannelKey::default_channel())
        );
    }

    #[test]
    fn a_one_byte_psk_raises_the_last_byte_of_the_default_key_and_zero_means_clear() {
        let k = ChannelKey::new("x", &[3]).expect("index 3");
        assert_eq!(k.key[..15], DEFAULT_PSK[..15]);
        assert_eq!(k.key[15], DEFAULT_PSK[15] + 2);
        assert_eq!(ChannelKey::new("x", &[0]), None);
        assert_eq!(ChannelKey::new("x", &[]), None);
        assert_eq!(ChannelKey::new("x", &[7; 33]), None);
    }

    #[test]
    fn short_keys_are_zero_padded_to_the_next_aes_size() {
        assert_eq!(ChannelKey::new("x", &[9; 5]).expect("5").key.len(), 16);
        assert_eq!(ChannelKey::new("x", &[9; 20]).expect("20").key.len(), 32);
    }

    #[test]
    fn ctr_round_trips_and_depends_on_packet_id_and_sender() {
        for key in [
            ChannelKey::default_channel(),
            ChannelKey::new("p", &[5; 32]).expect("256"),
        ] {
            let plain = b"a NodeInfo longer than one AES block, to cross the counter".to_vec();
            let mut bytes = plain.clone();
            key.apply(0x1234_5678, 0xdead_beef, &mut bytes);
            assert_ne!(bytes, plain);
            let mut other = plain.clone();
            key.apply(0x1234_5679, 0xdead_beef, &mut other);
            assert_ne!(other, bytes);
            key.apply(0x1234_5678, 0xdead_beef, &mut bytes);
            assert_eq!(bytes, plain);
        }
    }

    #[test]
    fn the_keystream_starts_from_the_firmware_nonce() {
        // Counter block 0 is the nonce itself: AES(key, id LE ‖ from LE ‖ 0000).
        use aes::cipher::{BlockCipherEncrypt, KeyInit};
        let key = ChannelKey::default_channel();
        let mut block = [0u8; 16];
        block[..8].copy_from_slice(&7u64.to_le_bytes());
        block[8..12].copy_from_slice(&0x0a0b_0c0du32.to_le_bytes());
        let aes = Aes128::new_from_slice(&DEFAULT_PSK).expect("16 bytes");
        let mut expected = block.into();
        aes.encrypt_block(&mut expected);
        let mut zeros = [0u8; 16];
        key.apply(7, 0x0a0b_0c0d, &mut zeros);
        assert_eq!(zeros, <[u8; 16]>::from(expected));
    }

    fn channel(index: i32, role: channel::Role, name: &str, psk: &[u8]) -> FromRadio {
        FromRadio {
            payload_variant: Some(from_radio::PayloadVariant::Channel(Channel {
                index,
                role: role as i32,
                settings: Some(ChannelSettings {
                    name: name.into(),
                    psk: psk.to_vec(),
                    ..ChannelSettings::default()
                }),
            })),
            ..FromRadio::default()
        }
    }

    #[test]
    fn the_radio_channels_take_the_preset_name_and_secondaries_borrow_the_primary_key() {
        use config::LoRaConfig;
        use config::lo_ra_config::ModemPreset;
        let lora = FromRadio {
            payload_variant: Some(from_radio::PayloadVariant::Config(Config {
                payload_variant: Some(config::PayloadVariant::Lora(LoRaConfig {
                    use_preset: true,
                    modem_preset: ModemPreset::MediumFast as i32,
                    ..LoRaConfig::default()
                })),
            })),
            ..FromRadio::default()
        };
        let frames = [
            channel(0, channel::Role::Primary, "", &[1]),
            channel(1, channel::Role::Secondary, "ops", &[]),
            channel(2, channel::Role::Disabled, "off", &[4; 16]),
            channel(3, channel::Role::Secondary, "clear", &[0]),
            lora,
        ];
        let table = radio_channel_table(&frames);
        assert_eq!(table.len(), 3);
        assert_eq!(table[2].key, None);
        assert_eq!(table[2].hash, xor(b"clear"));
        let keys = radio_channels(&frames);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].name, "MediumFast");
        assert_eq!(keys[0].key, DEFAULT_PSK);
        assert_eq!(keys[1].name, "ops");
        assert_eq!(keys[1].key, DEFAULT_PSK);
    }
}
