//! Types the engine's parts share and that import none of them: what the engine publishes to
//! the proxy and the broker side besides the views' snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::radio::{NodeSeen, PublicKey, Source, valid_key};
use crate::store::NodeRecord;

/// A node whose key the operator trusts, with what a peer needs to learn it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedNode {
    pub key: PublicKey,
    pub long_name: String,
    pub short_name: String,
    pub hw_model: i32,
    pub role: i32,
    /// Where keysync first learned it.
    pub source: Option<Source>,
    pub first_seen: SystemTime,
}

impl TrustedNode {
    /// The stored node, when it has a trusted key.
    pub fn of_record(record: &NodeRecord) -> Option<Self> {
        Some(Self {
            key: record.trusted?,
            long_name: record.long_name.clone(),
            short_name: record.short_name.clone(),
            hw_model: record.hw_model,
            role: record.role,
            source: record.source,
            first_seen: record.first_seen,
        })
    }

    /// A node just trusted on first use, as it was seen at `now`.
    pub fn of_seen(seen: &NodeSeen, now: SystemTime) -> Option<Self> {
        Some(Self {
            key: valid_key(&seen.public_key)?,
            long_name: seen.long_name.clone(),
            short_name: seen.short_name.clone(),
            hw_model: seen.hw_model,
            role: seen.role,
            source: Some(seen.source),
            first_seen: now,
        })
    }
}

/// The keys the operator trusts, by node number. The engine publishes it through a `watch`
/// as soon as the store learns, accepts or moves a key; the proxy (a client may not replace a
/// trusted key) and the broker side (what the fleet shares) read it, never the views'
/// snapshot, which follows a tick later.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys(Arc<BTreeMap<u32, TrustedNode>>);

impl TrustedKeys {
    pub fn new(nodes: BTreeMap<u32, TrustedNode>) -> Self {
        Self(Arc::new(nodes))
    }

    /// The key trusted for `num`.
    pub fn key(&self, num: u32) -> Option<PublicKey> {
        self.0.get(&num).map(|n| n.key)
    }

    pub fn contains(&self, num: u32) -> bool {
        self.0.contains_key(&num)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every trusted node, by number.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &TrustedNode)> {
        self.0.iter().map(|(n, t)| (*n, t))
    }

    /// `num` is trusted as `node` now (first use, an accepted key); false when that changes
    /// nothing.
    pub fn trust(&mut self, num: u32, node: TrustedNode) -> bool {
        if self.0.get(&num) == Some(&node) {
            return false;
        }
        Arc::make_mut(&mut self.0).insert(num, node);
        true
    }

    /// The operator accepted `key` for `num`: it replaces the trusted one (a node not listed
    /// yet is listed at the next reload); false when that changes nothing.
    pub fn rekey(&mut self, num: u32, key: PublicKey) -> bool {
        match self.0.get(&num) {
            Some(node) if node.key != key => {
                Arc::make_mut(&mut self.0)
                    .entry(num)
                    .and_modify(|n| n.key = key);
                true
            }
            _ => false,
        }
    }

    /// `num` is trusted no more (renumbered under the number its key derives); false when it
    /// was not.
    pub fn forget(&mut self, num: u32) -> bool {
        if !self.0.contains_key(&num) {
            return false;
        }
        Arc::make_mut(&mut self.0).remove(&num).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(key: u8) -> TrustedNode {
        TrustedNode {
            key: [key; 32],
            long_name: "n".into(),
            short_name: "n".into(),
            hw_model: 0,
            role: 0,
            source: Some(Source::Mesh),
            first_seen: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn trusting_and_forgetting_say_whether_anything_changed() {
        let mut keys = TrustedKeys::default();
        assert!(keys.trust(7, node(1)));
        assert!(
            !keys.trust(7, node(1)),
            "the same key again changes nothing"
        );
        assert!(keys.trust(7, node(2)), "an accepted key replaces it");
        assert_eq!(keys.key(7), Some([2; 32]));
        assert!(keys.forget(7));
        assert!(!keys.forget(7));
        assert!(keys.is_empty());
    }

    #[test]
    fn a_clone_is_a_snapshot_that_later_changes_do_not_reach() {
        let mut keys = TrustedKeys::default();
        keys.trust(1, node(1));
        let before = keys.clone();
        keys.trust(2, node(2));
        assert_eq!((before.len(), keys.len()), (1, 2));
    }
}
