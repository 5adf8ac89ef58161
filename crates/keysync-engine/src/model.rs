//! Types the engine's parts share, importing none of them but `radio`: what starts a run and
//! how it ends, the keys' fingerprint, a client's key need, and the trusted keys the engine
//! publishes to the proxy and the broker side besides the views' snapshot.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::radio::{NodeSeen, PublicKey, Source, valid_key};

/// SHA-256 over the trusted `(node number, key)` pairs, sorted by node number.
pub type Fingerprint = [u8; 32];

/// The fingerprint of `(node number, key)` pairs already sorted by node number, as the store streams them: no list
/// of keys is built.
pub fn fingerprint_sorted(pairs: impl IntoIterator<Item = (u32, PublicKey)>) -> Fingerprint {
    let mut hash = Sha256::new();
    for (num, key) in pairs {
        hash.update(num.to_be_bytes());
        hash.update(key);
    }
    hash.finalize().into()
}

/// The first bytes of a fingerprint or key hash, for people.
pub fn short_hex(bytes: &[u8]) -> String {
    bytes.iter().take(4).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SHA-256 of one key, shortened: how a key is named in warnings.
pub fn key_fingerprint(key: &PublicKey) -> String {
    short_hex(&Sha256::digest(key))
}

/// What started a sync decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The first connection after keysync started.
    Startup,
    /// A connection after the link was lost.
    Reconnect,
    /// The operator asked (`f`, `keysync sync --once`).
    Operator,
    /// The periodic check.
    Check,
    /// A packet from a node whose key the radio lacks (the firmware created it keyless).
    Heard,
    /// The radio refused a DM with PKI_SEND_FAIL_PUBLIC_KEY.
    DmFailed,
    /// A proxy client is about to send a DM to a node whose key the radio lacks.
    ClientDm,
}

impl Trigger {
    pub const ALL: [Self; 7] = [
        Self::Startup,
        Self::Reconnect,
        Self::Operator,
        Self::Check,
        Self::Heard,
        Self::DmFailed,
        Self::ClientDm,
    ];

    /// Ignores the cache: startup, reconnect, operator.
    pub fn is_forced(self) -> bool {
        matches!(self, Self::Startup | Self::Reconnect | Self::Operator)
    }

    /// A push for a need that showed now, ahead of any bulk fill.
    pub fn is_lazy(self) -> bool {
        matches!(self, Self::Heard | Self::DmFailed | Self::ClientDm)
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Reconnect => "reconnect",
            Self::Operator => "operator request",
            Self::Check => "periodic check",
            Self::Heard => "heard without its key",
            Self::DmFailed => "DM failed for lack of a key",
            Self::ClientDm => "a client's DM needs the key",
        }
    }

    /// One snake_case word, for machines (metrics labels, JSON).
    pub fn id(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Reconnect => "reconnect",
            Self::Operator => "operator",
            Self::Check => "check",
            Self::Heard => "heard",
            Self::DmFailed => "dm_failed",
            Self::ClientDm => "client_dm",
        }
    }

    /// One word, for narrow panes.
    pub fn short(self) -> &'static str {
        match self {
            Self::DmFailed => "dm-fail",
            Self::ClientDm => "client dm",
            other => other.id(),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Skipped,
    Synced,
    Forced,
    Failed,
}

impl Outcome {
    pub const ALL: [Self; 4] = [Self::Skipped, Self::Synced, Self::Forced, Self::Failed];

    pub fn label(self) -> &'static str {
        match self {
            Self::Skipped => "skipped",
            Self::Synced => "synced",
            Self::Forced => "forced",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What the operator (or a test) can ask of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Sync now, ignoring the cache.
    ForceSync,
    /// Forget the last full sync, so the next check syncs.
    ResetCache,
    /// Trust the pending key of a node.
    AcceptKey(u32),
    /// Refuse the pending key of a node; the trusted key is pushed back at the next sync.
    RejectKey(u32),
    /// Pin a node (it always has a slot on the radio), or unpin it.
    Pin(u32, bool),
    /// Drop the connection and connect again now.
    Reconnect,
    /// Close the link cleanly and stop.
    Quit,
}

/// A proxy client is about to send a DM to `num`: the engine pushes the key first if the radio
/// lacks it, and answers on `done` when the DM may go (at once when nothing is needed).
#[derive(Debug)]
pub struct KeyNeed {
    pub num: u32,
    pub packet_id: u32,
    pub done: oneshot::Sender<()>,
}

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

    /// Whether `other` is this very list, not a copy that changed since: nothing to look at.
    pub fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
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
