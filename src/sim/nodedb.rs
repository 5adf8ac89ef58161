//! The simulated radio's NodeDB, with the firmware's capacity, eviction and key rules
//! (PROTOCOL.md § Nodes and keys, § add_contact).

use meshtastic::protobufs::{NodeInfo, SharedContact, User};

use crate::engine::radio::valid_key;

/// What happened to a NodeInfo heard on the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    Added,
    Updated,
    /// "Public Key mismatch, dropping NodeInfo".
    KeyMismatch,
    /// A keyless NodeInfo for a node with a stored key.
    KeylessDropped,
}

/// What an add_contact did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactResult {
    /// Stored (and written to flash).
    Stored,
    /// The stored node is manually verified and the contact is not: dropped whole.
    DroppedVerified,
}

#[derive(Debug, Clone)]
struct Entry {
    info: NodeInfo,
    /// Order of last hearing, for eviction (the firmware uses `last_heard`).
    heard: u64,
}

/// A NodeDB of fixed capacity; the own node counts towards it and is never evicted.
#[derive(Debug)]
pub struct NodeDb {
    own: NodeInfo,
    others: Vec<Entry>,
    capacity: usize,
    clock: u64,
    evictions: u64,
}

impl NodeDb {
    pub fn new(own: NodeInfo, capacity: usize) -> Self {
        Self {
            own,
            others: Vec::new(),
            capacity: capacity.max(2),
            clock: 0,
            evictions: 0,
        }
    }

    pub fn own(&self) -> &NodeInfo {
        &self.own
    }

    pub fn my_node_num(&self) -> u32 {
        self.own.num
    }

    /// Every node, own node first.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        std::iter::once(&self.own).chain(self.others.iter().map(|e| &e.info))
    }

    /// Nodes other than our own, in storage order.
    pub fn others(&self) -> impl Iterator<Item = &NodeInfo> {
        self.others.iter().map(|e| &e.info)
    }

    pub fn get(&self, num: u32) -> Option<&NodeInfo> {
        self.nodes().find(|n| n.num == num)
    }

    pub fn len(&self) -> usize {
        1 + self.others.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Puts a node straight in (initial population); evicts if full.
    pub fn insert(&mut self, info: NodeInfo) {
        if info.num == self.own.num {
            return;
        }
        self.clock += 1;
        if let Some(e) = self.others.iter_mut().find(|e| e.info.num == info.num) {
            e.info = info;
            e.heard = self.clock;
            return;
        }
        self.make_room();
        self.others.push(Entry {
            info,
            heard: self.clock,
        });
    }

    /// A NodeInfo heard on the mesh, under the firmware's key rules.
    pub fn heard(&mut self, num: u32, user: &User, last_heard: u32) -> Heard {
        if num == self.own.num {
            return Heard::Updated;
        }
        self.clock += 1;
        let clock = self.clock;
        if let Some(e) = self.others.iter_mut().find(|e| e.info.num == num) {
            let stored = e.info.user.as_ref().and_then(|u| valid_key(&u.public_key));
            match (stored, valid_key(&user.public_key)) {
                (Some(old), Some(new)) if old != new => return Heard::KeyMismatch,
                (Some(_), None) => return Heard::KeylessDropped,
                _ => {}
            }
            e.info.user = Some(user.clone());
            e.info.last_heard = last_heard;
            e.heard = clock;
            return Heard::Updated;
        }
        self.make_room();
        self.others.push(Entry {
            info: NodeInfo {
                num,
                user: Some(user.clone()),
                last_heard,
                ..NodeInfo::default()
            },
            heard: clock,
        });
        Heard::Added
    }

    /// add_contact: replace the whole user, mark favourite. An empty key erases the stored one.
    pub fn add_contact(&mut self, contact: &SharedContact, last_heard: u32) -> ContactResult {
        let user = contact.user.clone().unwrap_or_default();
        self.clock += 1;
        let clock = self.clock;
        if let Some(e) = self
            .others
            .iter_mut()
            .find(|e| e.info.num == contact.node_num)
        {
            if e.info.is_key_manually_verified && !contact.manually_verified {
                return ContactResult::DroppedVerified;
            }
            e.info.user = Some(user);
            e.info.is_favorite = true;
            e.info.is_key_manually_verified = contact.manually_verified;
            e.heard = clock;
            return ContactResult::Stored;
        }
        self.make_room();
        self.others.push(Entry {
            info: NodeInfo {
                num: contact.node_num,
                user: Some(user),
                last_heard,
                is_favorite: true,
                is_key_manually_verified: contact.manually_verified,
                ..NodeInfo::default()
            },
            heard: clock,
        });
        ContactResult::Stored
    }

    /// Reboot without keys: every other node's key is gone.
    pub fn forget_keys(&mut self) {
        for e in &mut self.others {
            if let Some(u) = e.info.user.as_mut() {
                u.public_key.clear();
            }
        }
    }

    /// NodeDB reset: only the own node is left.
    pub fn forget_nodes(&mut self) {
        self.others.clear();
    }

    /// Evicts until one more node fits: first the oldest non-favourite node without a key, then
    /// the oldest node that is not favourite, ignored or manually verified.
    fn make_room(&mut self) {
        while self.len() >= self.capacity {
            let keyless = |e: &&Entry| {
                !e.info.is_favorite
                    && e.info
                        .user
                        .as_ref()
                        .is_none_or(|u| valid_key(&u.public_key).is_none())
            };
            let evictable = |e: &&Entry| {
                !e.info.is_favorite && !e.info.is_ignored && !e.info.is_key_manually_verified
            };
            let victim = self
                .others
                .iter()
                .filter(keyless)
                .min_by_key(|e| e.heard)
                .or_else(|| self.others.iter().filter(evictable).min_by_key(|e| e.heard))
                .map(|e| e.info.num);
            let Some(num) = victim else {
                // Everything is protected: the firmware then refuses new nodes; we overwrite the
                // oldest to keep going, as the firmware's fallback does.
                if let Some(pos) = (0..self.others.len()).min_by_key(|&i| self.others[i].heard) {
                    self.others.remove(pos);
                    self.evictions += 1;
                }
                continue;
            };
            self.others.retain(|e| e.info.num != num);
            self.evictions += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(key: u8) -> User {
        User {
            long_name: format!("n{key}"),
            public_key: if key == 0 { vec![] } else { vec![key; 32] },
            ..User::default()
        }
    }

    fn own() -> NodeInfo {
        NodeInfo {
            num: 1,
            ..NodeInfo::default()
        }
    }

    #[test]
    fn evicts_keyless_nodes_before_keyed_ones_and_never_favourites() {
        let mut db = NodeDb::new(own(), 4);
        db.heard(10, &user(1), 0);
        db.heard(11, &user(0), 0);
        db.heard(12, &user(2), 0);
        assert_eq!(db.len(), 4);
        db.heard(13, &user(3), 0);
        assert!(db.get(11).is_none(), "keyless node goes first");
        db.add_contact(
            &SharedContact {
                node_num: 10,
                user: Some(user(1)),
                ..SharedContact::default()
            },
            0,
        );
        db.heard(14, &user(4), 0);
        assert!(db.get(10).is_some(), "favourite stays");
        assert!(db.get(12).is_none(), "oldest keyed non-favourite goes");
        assert_eq!(db.evictions(), 2);
    }

    #[test]
    fn drops_mismatched_and_keyless_nodeinfo_for_a_keyed_node() {
        let mut db = NodeDb::new(own(), 10);
        db.heard(10, &user(1), 0);
        assert_eq!(db.heard(10, &user(2), 0), Heard::KeyMismatch);
        assert_eq!(db.heard(10, &user(0), 0), Heard::KeylessDropped);
        assert_eq!(
            db.get(10).unwrap().user.as_ref().unwrap().public_key,
            vec![1; 32]
        );
    }

    #[test]
    fn add_contact_with_empty_key_erases_and_verified_nodes_refuse_unverified() {
        let mut db = NodeDb::new(own(), 10);
        db.heard(10, &user(1), 0);
        let empty = SharedContact {
            node_num: 10,
            user: Some(user(0)),
            ..SharedContact::default()
        };
        assert_eq!(db.add_contact(&empty, 0), ContactResult::Stored);
        assert!(
            db.get(10)
                .unwrap()
                .user
                .as_ref()
                .unwrap()
                .public_key
                .is_empty()
        );
        let verified = SharedContact {
            node_num: 10,
            user: Some(user(3)),
            manually_verified: true,
            ..SharedContact::default()
        };
        db.add_contact(&verified, 0);
        let unverified = SharedContact {
            node_num: 10,
            user: Some(user(4)),
            ..SharedContact::default()
        };
        assert_eq!(
            db.add_contact(&unverified, 0),
            ContactResult::DroppedVerified
        );
    }
}
