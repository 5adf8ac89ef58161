//! The fleet: keysyncs on one broker share their trusted keys as retained messages, one per
//! node, under `keysync/<fleet>/<node id>`. A key learned from the fleet is never published
//! again (only its origin publishes it), and a keysync overwrites only what it published
//! itself, so no key travels in a loop and two keysyncs never fight over a topic.

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use super::uplink::{PAYLOAD_MAX, Reject, clean_name, parse_node_id};
use crate::model::{TrustedKeys, TrustedNode};
use crate::radio::{
    LONG_NAME_MAX, NodeSeen, PublicKey, SHORT_NAME_MAX, Source, is_node_num, node_id,
};
use crate::store::{key_base64, parse_key};

/// The topic prefix of every fleet.
pub const PREFIX: &str = "keysync";
/// Nodes whose fleet record keysync remembers; beyond this a hostile broker's flood of topics
/// is learned (the store decides) but not remembered here.
pub const BOOK_MAX: usize = 100_000;

/// Why a name cannot be a fleet's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetNameError {
    #[error("a fleet name has 1 to 64 characters")]
    Length,
    /// `name` is printable: control characters are what made it wrong.
    #[error("{name:?} cannot be a fleet name: no '/', '+', '#' or control characters")]
    Forbidden { name: String },
}

/// A fleet name: one topic level, no wildcards, printable, at most 64 bytes.
pub fn valid_name(name: &str) -> Result<(), FleetNameError> {
    if name.is_empty() || name.len() > 64 {
        return Err(FleetNameError::Length);
    }
    if name
        .chars()
        .any(|c| matches!(c, '/' | '+' | '#') || c.is_control())
    {
        return Err(FleetNameError::Forbidden {
            name: crate::radio::printable(name).into_owned(),
        });
    }
    Ok(())
}

/// The topic of node `num` in `fleet`, and the filter that subscribes to the whole fleet.
pub fn topic(fleet: &str, num: u32) -> String {
    format!("{PREFIX}/{fleet}/{}", node_id(num))
}

pub fn filter(fleet: &str) -> String {
    format!("{PREFIX}/{fleet}/+")
}

/// One node as the fleet shares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetRecord {
    pub node: String,
    /// base64, 44 characters.
    pub key: String,
    #[serde(default)]
    pub long_name: String,
    #[serde(default)]
    pub short_name: String,
    #[serde(default)]
    pub hw_model: i32,
    #[serde(default)]
    pub role: i32,
    /// When the origin first saw the node, in seconds since 1970.
    #[serde(default)]
    pub first_seen: u64,
    /// The gateway radio that heard the key: the origin's own, or an uplink's.
    pub gateway: String,
    /// How the origin learned it: "mesh", "radio", "MQTT via !gateway", …
    #[serde(default)]
    pub how: String,
    /// The radio of the keysync that published the record.
    pub origin: String,
}

impl FleetRecord {
    /// The record keysync publishes for trusted node `num`, as the keysync of radio `own`;
    /// `None` for nodes it must not share (learned from the fleet, its own radio).
    pub fn of(num: u32, node: &TrustedNode, own: u32) -> Option<Self> {
        let source = node.source?;
        if source.is_fleet() || num == own || !is_node_num(num) {
            return None;
        }
        let gateway = match source {
            Source::Mqtt { gateway } => gateway,
            _ => own,
        };
        Some(Self {
            node: node_id(num),
            key: key_base64(&node.key),
            long_name: node.long_name.clone(),
            short_name: node.short_name.clone(),
            hw_model: node.hw_model,
            role: node.role,
            first_seen: node
                .first_seen
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            gateway: node_id(gateway),
            how: source.label(),
            origin: node_id(own),
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    #[cfg(test)]
    pub fn first_seen(&self) -> std::time::SystemTime {
        UNIX_EPOCH + std::time::Duration::from_secs(self.first_seen)
    }
}

/// A fleet message read: the node it is about, its key, and who published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetKey {
    pub seen: NodeSeen,
    pub key: PublicKey,
    pub origin: u32,
}

/// Reads a fleet record published on `topic`; the record must name the node of its topic.
pub fn read(topic: &str, payload: &[u8]) -> Result<FleetKey, Reject> {
    if payload.len() > PAYLOAD_MAX {
        return Err(Reject::Oversized);
    }
    let record: FleetRecord = serde_json::from_slice(payload).map_err(|_| Reject::Garbage)?;
    let num = parse_node_id(&record.node).ok_or(Reject::Garbage)?;
    if topic.rsplit('/').next() != Some(record.node.as_str()) {
        return Err(Reject::Garbage);
    }
    if !is_node_num(num) {
        return Err(Reject::NotANode);
    }
    let origin = parse_node_id(&record.origin).ok_or(Reject::Garbage)?;
    let key = parse_key(&record.key).ok_or(Reject::NoKey)?;
    Ok(FleetKey {
        seen: NodeSeen {
            num,
            long_name: clean_name(&record.long_name, LONG_NAME_MAX),
            short_name: clean_name(&record.short_name, SHORT_NAME_MAX),
            hw_model: record.hw_model,
            role: record.role,
            public_key: key.to_vec(),
            source: Source::Fleet { gateway: origin },
            is_favorite: false,
            flags: crate::radio::UserFlags::default(),
        },
        key,
        origin,
    })
}

/// What the broker holds for each node of the fleet, as far as keysync has seen.
#[derive(Debug, Default)]
pub struct FleetBook {
    held: HashMap<u32, (PublicKey, u32)>,
}

impl FleetBook {
    /// The broker holds `key` for `num`, published by `origin`.
    pub fn note(&mut self, num: u32, key: PublicKey, origin: u32) {
        if self.held.len() < BOOK_MAX || self.held.contains_key(&num) {
            self.held.insert(num, (key, origin));
        }
    }

    /// A retained record was cleared (an empty message).
    pub fn forget(&mut self, num: u32) {
        self.held.remove(&num);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether keysync of radio `own` should publish `key` for `num`: nobody has, or keysync
    /// itself published another key (the operator accepted a new one). A record another
    /// keysync published is never overwritten: a disagreement shows as a pending key there.
    pub fn should_publish(&self, num: u32, key: &PublicKey, own: u32) -> bool {
        match self.held.get(&num) {
            None => true,
            Some((held, origin)) => *origin == own && held != key,
        }
    }
}

/// The records keysync of radio `own` should publish now, given what the broker holds.
pub fn to_publish(nodes: &TrustedKeys, own: u32, book: &FleetBook) -> Vec<(u32, FleetRecord)> {
    nodes
        .iter()
        .filter(|(num, node)| book.should_publish(*num, &node.key, own))
        .filter_map(|(num, node)| FleetRecord::of(num, node, own).map(|r| (num, r)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const OWN: u32 = 0xa;

    fn node(key: u8, source: Source) -> TrustedNode {
        TrustedNode {
            key: [key; 32],
            long_name: "Ridge".into(),
            short_name: "R".into(),
            hw_model: 9,
            role: 0,
            source: Some(source),
            first_seen: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    fn trusted(nodes: &[(u32, u8, Source)]) -> TrustedKeys {
        TrustedKeys::new(
            nodes
                .iter()
                .map(|(num, key, source)| (*num, node(*key, *source)))
                .collect(),
        )
    }

    #[test]
    fn shares_what_it_heard_but_never_what_the_fleet_told_it() {
        let nodes = trusted(&[
            (1, 1, Source::Mesh),
            (2, 2, Source::Fleet { gateway: 0xb }),
            (3, 3, Source::Mqtt { gateway: 0xc }),
            (OWN, 4, Source::NodeDb),
        ]);
        let out = to_publish(&nodes, OWN, &FleetBook::default());
        let nums: Vec<u32> = out.iter().map(|(n, _)| *n).collect();
        assert_eq!(nums, [1, 3]);
        assert_eq!(out[1].1.gateway, "!0000000c");
        assert_eq!(out[1].1.how, "MQTT via !0000000c");
        assert_eq!(out[0].1.gateway, node_id(OWN));
        assert_eq!(out[0].1.origin, node_id(OWN));
    }

    #[test]
    fn never_overwrites_another_keysyncs_record_but_updates_its_own() {
        let mut book = FleetBook::default();
        book.note(1, [9; 32], 0xb);
        book.note(3, [9; 32], OWN);
        book.note(4, [4; 32], OWN);
        let nodes = trusted(&[
            (1, 1, Source::Mesh),
            (3, 3, Source::Mesh),
            (4, 4, Source::Mesh),
        ]);
        let nums: Vec<u32> = to_publish(&nodes, OWN, &book)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(nums, [3], "only its own stale record is replaced");
    }

    #[test]
    fn a_record_round_trips_and_must_match_its_topic() {
        let record = FleetRecord::of(0x1234_5678, &node(7, Source::Mesh), OWN).expect("shared");
        let json = record.to_json();
        let back = read("keysync/f/!12345678", &json).expect("read");
        assert_eq!(back.key, [7; 32]);
        assert_eq!(back.origin, OWN);
        assert_eq!(back.seen.source, Source::Fleet { gateway: OWN });
        assert_eq!(
            record.first_seen(),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        assert_eq!(read("keysync/f/!87654321", &json), Err(Reject::Garbage));
        assert_eq!(read("keysync/f/x", b"{}"), Err(Reject::Garbage));
        assert_eq!(
            read("keysync/f/x", &[b' '; PAYLOAD_MAX + 1]),
            Err(Reject::Oversized)
        );
    }

    #[test]
    fn fleet_names_are_one_topic_level() {
        assert!(valid_name("north").is_ok());
        for bad in ["", "a/b", "a+", "#", "x\u{1b}", &"x".repeat(65)] {
            assert!(valid_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_book_stays_bounded() {
        let mut book = FleetBook::default();
        for n in 0..u32::try_from(BOOK_MAX).expect("fits") + 10 {
            book.note(n + 1, [1; 32], 2);
        }
        assert_eq!(book.len(), BOOK_MAX);
    }
}
