//! Arbitrary broker messages through the uplink and fleet readers: they must never panic, and
//! what they accept must be a node with a valid key and printable names of bounded length.
#![no_main]

use keysync::engine::ChannelKey;
use keysync::engine::{Keyring, read_fleet_record, read_uplink};
use keysync::engine::{LONG_NAME_MAX, SHORT_NAME_MAX, is_node_num};
use libfuzzer_sys::fuzz_target;

const TOPICS: [&str; 3] = [
    "msh/EU_868/2/e/LongFast/!0000beef",
    "msh/EU_868/2/json/LongFast/!0000beef",
    "keysync/north/!12345678",
];

fuzz_target!(|data: &[u8]| {
    let keys = Keyring::new([ChannelKey::default_channel()]);
    let topic = TOPICS[usize::from(data.first().copied().unwrap_or(0)) % TOPICS.len()];
    let payload = data.get(1..).unwrap_or_default();
    let seen = if topic.starts_with("keysync/") {
        read_fleet_record(topic, payload).ok().map(|k| k.seen)
    } else {
        read_uplink(topic, payload, &keys).ok()
    };
    if let Some(seen) = seen {
        assert!(is_node_num(seen.num));
        assert!(seen.key().is_some());
        assert!(seen.long_name.len() <= LONG_NAME_MAX && seen.short_name.len() <= SHORT_NAME_MAX);
        assert!(!seen.long_name.chars().chain(seen.short_name.chars()).any(char::is_control));
    }
});
