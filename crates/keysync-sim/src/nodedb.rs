//! The simulated radio's NodeDB, with the firmware's capacity, eviction, key and operator rules
//! (PROTOCOL.md § Nodes and keys, § add_contact, § Operator decisions, § When the NodeDB is
//! full). Everything here is from firmware `src/mesh/NodeDB.cpp` unless a comment says otherwise.

mod warm;

use std::time::Duration;

use meshtastic::protobufs::{NodeInfo, SharedContact, User};
use tokio::time::Instant;

use super::profile::{NodeDbRules, StoredKey};
use keysync_engine::{node_id, valid_key};
pub use warm::{Absorbed, WarmEntry, WarmTier};

/// NodeDB.cpp NODEDB_FULL_EVICTION_INTERVAL_MS (2.8): a full NodeDB admits a new node from a
/// packet at most this often.
const ADMISSION_GAP: Duration = Duration::from_secs(2);

/// What happened to a node heard on the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    Added,
    Updated,
    /// The names were taken but not the NodeInfo's key, which differs from the stored one or is
    /// missing: "Public Key set for node, not updating!" (updateUser, 2.5.0 – 2.7.5).
    KeyKept,
    /// A keyless NodeInfo erased the stored key (updateUser, 2.5.0 – 2.6.2).
    KeyErased,
    /// "Public Key mismatch, dropping NodeInfo" (updateUser, ≥ 2.7.6).
    KeyMismatch,
    /// A keyless NodeInfo for a node with a stored key (updateUser, ≥ 2.7.6).
    KeylessDropped,
    /// The node is new and nothing in the NodeDB can be evicted (getOrCreateMeshNode).
    NoRoom,
    /// The node is new, the NodeDB full, and a new node was admitted less than 2 s ago: not
    /// stored ("Node database full, defer admitting", updateFrom, 2.8).
    Deferred,
}

/// What an add_contact did (addFromContact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactResult {
    /// Stored (and written to flash).
    Stored,
    /// The stored node is manually verified and the contact is not: dropped whole.
    DroppedVerified,
    /// The node is new and nothing in the NodeDB can be evicted.
    NoRoom,
}

/// What set_favorite_node or set_ignored_node did (AdminModule.cpp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flagged {
    Done,
    /// No such node.
    Unknown,
    /// 2.8: the protected-node limit is reached; the client gets a ClientNotification.
    Refused {
        limit: usize,
    },
}

/// Entries that eviction may not take (getOrCreateMeshNode): the hazard's measure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Protected {
    pub favourite: usize,
    pub ignored: usize,
    pub verified: usize,
    /// Entries with any of the three (own node excluded).
    pub total: usize,
}

/// Names exactly as a node sent them, when they are not valid UTF-8 (firmware before 2.7.23
/// stored them so; PROTOCOL.md § Names are not always valid UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawNames {
    pub long_name: Vec<u8>,
    pub short_name: Vec<u8>,
}

/// A stored node. Entries stay in the order they were added, as in the firmware's node array:
/// eviction breaks ties of `last_heard` by that order.
#[derive(Debug, Clone)]
struct Entry {
    info: NodeInfo,
    raw_names: Option<RawNames>,
    /// The user holds only a key the warm tier gave back (2.8): the firmware has the key but no
    /// User for the node, so clients get the node without one (ConvertToNodeInfo: has_user).
    user_hidden: bool,
}

impl Entry {
    fn new(info: NodeInfo, raw_names: Option<RawNames>) -> Self {
        Self {
            info,
            raw_names,
            user_hidden: false,
        }
    }

    /// The User as the node or a contact gave it: names and all, visible to clients.
    fn set_user(&mut self, user: User) {
        self.info.user = Some(user);
        self.user_hidden = false;
    }

    fn key(&self) -> Option<[u8; 32]> {
        self.info
            .user
            .as_ref()
            .and_then(|u| valid_key(&u.public_key))
    }
}

/// A NodeDB of fixed capacity; the own node counts towards it and is never evicted.
#[derive(Debug)]
pub struct NodeDb {
    own: NodeInfo,
    others: Vec<Entry>,
    capacity: usize,
    rules: NodeDbRules,
    /// The NodeDB as last saved (saveNodeDatabaseToDisk): what a crash comes back with.
    flash: Vec<Entry>,
    evictions: u64,
    /// How often each node lost a key it held (eviction, erasure, removal, forgetting).
    losses: std::collections::HashMap<u32, u32>,
    /// What eviction keeps of a node (2.8; no slots before).
    warm: WarmTier,
    /// When a full NodeDB last admitted a new node from a packet (2.8's throttle).
    last_full_admission: Option<Instant>,
}

impl NodeDb {
    pub fn new(own: NodeInfo, capacity: usize, rules: NodeDbRules) -> Self {
        Self {
            own,
            others: Vec::new(),
            capacity: capacity.max(2),
            rules,
            flash: Vec::new(),
            evictions: 0,
            losses: std::collections::HashMap::new(),
            warm: WarmTier::new(rules.warm_capacity),
            last_full_admission: None,
        }
    }

    pub fn own(&self) -> &NodeInfo {
        &self.own
    }

    pub fn my_node_num(&self) -> u32 {
        self.own.num
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Every node as the radio holds it, own node first (a node whose key came back from the
    /// warm tier has a User with that key only).
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        std::iter::once(&self.own).chain(self.others.iter().map(|e| &e.info))
    }

    /// Nodes other than our own as clients are given them, in storage order, with their raw
    /// names where those are not valid UTF-8.
    pub fn others(&self) -> impl Iterator<Item = (NodeInfo, Option<&RawNames>)> {
        self.others.iter().map(|e| {
            let mut info = e.info.clone();
            if e.user_hidden {
                info.user = None;
            }
            (info, e.raw_names.as_ref())
        })
    }

    /// The key a DM to `num` is encrypted with (copyPublicKey): the NodeDB's, else on 2.8 the
    /// warm tier's.
    pub fn dm_key(&self, num: u32) -> Option<[u8; 32]> {
        self.others
            .iter()
            .find(|e| e.info.num == num)
            .and_then(Entry::key)
            .or_else(|| self.warm.key(num))
    }

    /// The warm tier's key for `num`, if it holds one (2.8).
    pub fn warm_key(&self, num: u32) -> Option<[u8; 32]> {
        self.warm.key(num)
    }

    /// Entries in the warm tier (2.8).
    pub fn warm_len(&self) -> usize {
        self.warm.len()
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

    /// How often `num` lost a key the NodeDB held for it.
    pub fn key_losses(&self, num: u32) -> u32 {
        self.losses.get(&num).copied().unwrap_or(0)
    }

    fn lose_key(&mut self, num: u32, held: bool) {
        if held {
            *self.losses.entry(num).or_default() += 1;
        }
    }

    /// Entries eviction may not take.
    pub fn protected(&self) -> Protected {
        let mut p = Protected::default();
        for e in &self.others {
            let i = &e.info;
            p.favourite += usize::from(i.is_favorite);
            p.ignored += usize::from(i.is_ignored);
            p.verified += usize::from(i.is_key_manually_verified);
            p.total += usize::from(is_protected(i));
        }
        p
    }

    /// Puts a node straight in (initial population); false when there is no room.
    pub fn insert(&mut self, info: NodeInfo) -> bool {
        if info.num == self.own.num {
            return false;
        }
        if let Some(e) = self.entry_mut(info.num) {
            e.info = info;
            return true;
        }
        if self.make_room().is_err() {
            return false;
        }
        self.push(info, None);
        true
    }

    /// A NodeInfo heard on the mesh (updateUser), under the firmware's key rules
    /// ([`StoredKey`]). A new node is created first (getOrCreateMeshNode), and on 2.8 gets
    /// back what the warm tier kept, its key included, before the NodeInfo is checked against it.
    pub fn heard(
        &mut self,
        num: u32,
        user: &User,
        raw_names: Option<RawNames>,
        last_heard: u32,
    ) -> Heard {
        if num == self.own.num {
            return Heard::Updated;
        }
        let created = self.entry_mut(num).is_none();
        if created && self.admit(num).is_err() {
            return Heard::NoRoom;
        }
        let rules = self.rules;
        let Some(e) = self.entry_mut(num) else {
            return Heard::NoRoom;
        };
        let stored = e.key();
        let incoming = valid_key(&user.public_key);
        let mut user = user.clone();
        let mut outcome = if created {
            Heard::Added
        } else {
            Heard::Updated
        };
        match (rules.stored_key, stored) {
            (StoredKey::Replaced, _) | (_, None) => {}
            (StoredKey::MismatchDropped, Some(old)) => match incoming {
                Some(new) if new == old => {}
                Some(_) => return Heard::KeyMismatch,
                None => return Heard::KeylessDropped,
            },
            // Only a key the NodeInfo carries is overwritten with the stored one; without one,
            // the User as received (keyless) replaces the stored one (fixed by #6372).
            (StoredKey::KeylessErases, Some(_)) if incoming.is_none() => {
                outcome = Heard::KeyErased;
            }
            (StoredKey::KeylessErases | StoredKey::Copied, Some(old)) => {
                if incoming != Some(old) {
                    outcome = Heard::KeyKept;
                }
                user.public_key = old.to_vec();
            }
        }
        // An ignored node stays keyless where set_ignored_node erased its key.
        if e.info.is_ignored && rules.ignore_erases_key {
            user.public_key.clear();
        }
        e.set_user(user);
        e.info.last_heard = last_heard;
        e.raw_names = raw_names;
        self.lose_key(num, outcome == Heard::KeyErased);
        outcome
    }

    /// Any other packet from `num` (updateFrom via getOrCreateMeshNode): an unknown sender gets
    /// a new entry without a user or key (on 2.8 with what the warm tier kept), which may evict
    /// another node; on 2.8 a full NodeDB admits one such node per 2 s. `last_heard` is the
    /// packet's `rx_time`, 0 when it has none.
    pub fn heard_packet(&mut self, num: u32, last_heard: u32, now: Instant) -> Heard {
        if num == self.own.num {
            return Heard::Updated;
        }
        let mut outcome = Heard::Updated;
        if self.entry_mut(num).is_none() {
            if self.rules.admission_throttle && self.len() >= self.capacity {
                let recent = self
                    .last_full_admission
                    .is_some_and(|t| now.saturating_duration_since(t) < ADMISSION_GAP);
                if recent {
                    return Heard::Deferred;
                }
                self.last_full_admission = Some(now);
            }
            if self.admit(num).is_err() {
                return Heard::NoRoom;
            }
            outcome = Heard::Added;
        }
        if let Some(e) = self.entry_mut(num)
            && last_heard != 0
        {
            e.info.last_heard = last_heard;
        }
        outcome
    }

    /// getOrCreateMeshNode for a node the NodeDB lacks: room is made, an empty entry added,
    /// and on 2.8 the warm tier's copy taken back into it (last_heard, key).
    fn admit(&mut self, num: u32) -> Result<(), NoRoom> {
        self.make_room()?;
        self.push(
            NodeInfo {
                num,
                ..NodeInfo::default()
            },
            None,
        );
        let Some(kept) = self.warm.take(num) else {
            return Ok(());
        };
        if let Some(e) = self.entry_mut(num) {
            e.info.last_heard = kept.last_heard;
            if let Some(key) = kept.key {
                e.info.user = Some(User {
                    id: node_id(num),
                    public_key: key.to_vec(),
                    ..User::default()
                });
                e.user_hidden = true;
            }
        }
        Ok(())
    }

    /// add_contact (addFromContact): the whole user is replaced by the contact's
    /// (ConvertToUserLite: `is_unmessagable`, `macaddr`, `is_licensed` reset when omitted); the
    /// node becomes favourite (not on a CLIENT_BASE from 2.7.14) and, on 2.6.9 – 2.7.11,
    /// manually verified. An empty key erases the stored one. `last_heard` is the time of the
    /// push (seconds), which the firmware stamps only on some versions and roles.
    pub fn add_contact(&mut self, contact: &SharedContact, last_heard: u32) -> ContactResult {
        let rules = self.rules;
        if contact.node_num == self.own.num {
            return ContactResult::Stored;
        }
        let mut user = contact.user.clone().unwrap_or_default();
        user.id = node_id(contact.node_num);
        if contact.should_ignore && rules.should_ignore {
            return self.ignore_contact(contact.node_num, user);
        }
        // 2.8: past the protected-node limit the node is stored, neither favourite nor
        // verified ("Can't verify …" in the log only, no notification: seen on the binary).
        let may_protect = self.limit_for(contact.node_num).is_none();
        let favourite = rules.favourite && may_protect;
        let verified = (rules.always_verified || contact.manually_verified) && may_protect;
        // 2.6.8 – 2.7.13 stamp the push time on every contact; from 2.7.14 only a CLIENT_BASE
        // does, and 2.8 when its limit refuses the favourite. Otherwise `last_heard` stays as
        // it was: 0 for a node the contact creates, so once no longer favourite it is among
        // the first evicted.
        let stamp = rules.refresh_last_heard || (rules.favourite && !favourite);
        if self.entry_mut(contact.node_num).is_none() && self.admit(contact.node_num).is_err() {
            return ContactResult::NoRoom;
        }
        let Some(e) = self.entry_mut(contact.node_num) else {
            return ContactResult::NoRoom;
        };
        if rules.verified_keeps_key && e.info.is_key_manually_verified && !verified {
            let stored = e.info.user.as_ref().map(|u| u.public_key.as_slice());
            if stored != Some(user.public_key.as_slice()) {
                return ContactResult::DroppedVerified;
            }
        }
        e.set_user(user);
        if stamp {
            e.info.last_heard = last_heard;
        }
        e.raw_names = None;
        if favourite {
            e.info.is_favorite = true;
        }
        if verified {
            e.info.is_key_manually_verified = true;
        }
        ContactResult::Stored
    }

    /// set_ignored_node (AdminModule.cpp): the node is ignored and, until 2.7.x, its key is
    /// erased. An unknown node is left alone, except on 2.8, which creates it first (and may
    /// evict for it) even when the protected-node limit then refuses the flag.
    pub fn ignore(&mut self, num: u32) -> Flagged {
        let erase = self.rules.ignore_erases_key;
        if self.rules.protected_cap
            && num != self.own.num
            && self.entry_mut(num).is_none()
            && self.admit(num).is_err()
        {
            return Flagged::Unknown;
        }
        if let Some(limit) = self.limit_for(num) {
            return Flagged::Refused { limit };
        }
        let Some(e) = self.entry_mut(num) else {
            return Flagged::Unknown;
        };
        e.info.is_ignored = true;
        let mut lost = false;
        if erase && let Some(u) = e.info.user.as_mut() {
            lost = valid_key(&u.public_key).is_some();
            u.public_key.clear();
        }
        self.lose_key(num, lost);
        Flagged::Done
    }

    /// add_contact with `should_ignore` (addFromContact, 2.6.12+): the node is created if
    /// needed with the contact's user (names kept), ignored, its key zeroed until 2.7.x (2.8
    /// keeps it), and from 2.7.14 unfavourited. Seen so on meshtasticd 2.7.26 and 2.8.
    fn ignore_contact(&mut self, num: u32, user: User) -> ContactResult {
        if self.entry_mut(num).is_none() && self.admit(num).is_err() {
            return ContactResult::NoRoom;
        }
        let unfavourite = self.rules.ignore_unfavourites;
        let erase = self.rules.ignore_erases_key;
        let refused = self.limit_for(num).is_some();
        if let Some(e) = self.entry_mut(num) {
            e.set_user(user);
            e.raw_names = None;
            if !refused {
                e.info.is_ignored = true;
            }
            if unfavourite {
                e.info.is_favorite = false;
            }
            if erase && let Some(u) = e.info.user.as_mut() {
                u.public_key.clear();
            }
        }
        ContactResult::Stored
    }

    /// remove_by_nodenum (AdminModule.cpp → NodeDB::removeNodeByNum): the node is deleted, and
    /// on 2.8 its warm copy too, so that nothing brings it back. True when the NodeDB held it.
    pub fn remove(&mut self, num: u32) -> bool {
        let held = self.dm_key(num).is_some();
        let before = self.others.len();
        self.others.retain(|e| e.info.num != num);
        self.warm.remove(num);
        self.lose_key(num, held);
        before != self.others.len()
    }

    /// set_favorite_node / remove_favorite_node (AdminModule.cpp).
    pub fn set_favourite(&mut self, num: u32, favourite: bool) -> Flagged {
        if favourite && let Some(limit) = self.limit_for(num) {
            return Flagged::Refused { limit };
        }
        let Some(e) = self.entry_mut(num) else {
            return Flagged::Unknown;
        };
        e.info.is_favorite = favourite;
        Flagged::Done
    }

    /// saveNodeDatabaseToDisk: what a crash will come back with.
    pub fn save_to_flash(&mut self) {
        self.flash.clone_from(&self.others);
    }

    /// A crash: everything since the last flash write is gone.
    pub fn restore_from_flash(&mut self) {
        self.others.clone_from(&self.flash);
    }

    /// Reboot without keys: every other node's key is gone, the warm tier's too (it is saved
    /// beside the NodeDB, /prefs/warm.dat).
    pub fn forget_keys(&mut self) {
        let mut keyed: Vec<u32> = self
            .others
            .iter()
            .filter(|e| e.key().is_some())
            .map(|e| e.info.num)
            .collect();
        for e in &mut self.others {
            if let Some(u) = e.info.user.as_mut() {
                u.public_key.clear();
            }
        }
        keyed.extend(
            self.warm
                .clear()
                .into_iter()
                .filter(|w| w.key.is_some())
                .map(|w| w.num),
        );
        for num in keyed {
            self.lose_key(num, true);
        }
    }

    /// NodeDB reset (resetNodes): only the own node is left, and the warm tier is cleared.
    pub fn forget_nodes(&mut self) {
        self.forget_keys();
        self.others.clear();
    }

    /// 2.8's limit on protected entries (own node aside), when `num` would pass it: the node
    /// is not protected yet and MAX − 2 others are.
    fn limit_for(&self, num: u32) -> Option<usize> {
        if !self.rules.protected_cap {
            return None;
        }
        let limit = self.capacity.saturating_sub(2);
        let already = self.get(num).is_some_and(is_protected);
        (!already && self.protected().total >= limit).then_some(limit)
    }

    fn entry_mut(&mut self, num: u32) -> Option<&mut Entry> {
        self.others.iter_mut().find(|e| e.info.num == num)
    }

    fn push(&mut self, info: NodeInfo, raw_names: Option<RawNames>) {
        self.others.push(Entry::new(info, raw_names));
    }

    /// Evicts until one more node fits: first the oldest node without a key that is neither
    /// favourite nor ignored (this pass does not look at "verified"), then the oldest node that
    /// is not favourite, ignored or manually verified. There is no other fallback in the
    /// firmware: with nothing evictable, there is no room. "Oldest" is the firmware's
    /// `last_heard` (seconds, 0 for a node never heard), the first in storage order on a tie
    /// (the strict `<` of getOrCreateMeshNode's scan). The firmware also re-sorts its array
    /// by `last_heard` now and then (sortMeshDB, at most every 5 s); the simulator does not.
    /// On 2.8 the evicted node goes to the warm tier.
    fn make_room(&mut self) -> Result<(), NoRoom> {
        while self.len() >= self.capacity {
            let keyless =
                |e: &&Entry| !e.info.is_favorite && !e.info.is_ignored && e.key().is_none();
            let evictable = |e: &&Entry| !is_protected(&e.info);
            let victim = self
                .others
                .iter()
                .filter(keyless)
                .min_by_key(|e| e.info.last_heard)
                .or_else(|| {
                    self.others
                        .iter()
                        .filter(evictable)
                        .min_by_key(|e| e.info.last_heard)
                })
                .map(|e| e.info.num)
                .ok_or(NoRoom)?;
            let Some(at) = self.others.iter().position(|e| e.info.num == victim) else {
                return Err(NoRoom);
            };
            let evicted = self.others.remove(at);
            self.evictions += 1;
            let key = evicted.key();
            let kept = match self.warm.absorb(WarmEntry {
                num: victim,
                last_heard: evicted.info.last_heard,
                key,
            }) {
                Absorbed::Kept => true,
                Absorbed::Displaced(gone) => {
                    self.lose_key(gone.num, gone.key.is_some());
                    true
                }
                Absorbed::NotKept => false,
            };
            self.lose_key(victim, key.is_some() && !kept);
        }
        Ok(())
    }
}

/// Nothing in a full NodeDB can be evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoom;

fn is_protected(info: &NodeInfo) -> bool {
    info.is_favorite || info.is_ignored || info.is_key_manually_verified
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Hw, Profile, SimRole};

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

    fn rules(firmware: &str) -> NodeDbRules {
        Profile::new(firmware, Hw::Linux, SimRole::Client)
            .expect("valid")
            .nodedb_rules()
    }

    fn db(capacity: usize, firmware: &str) -> NodeDb {
        NodeDb::new(own(), capacity, rules(firmware))
    }

    fn contact(num: u32, key: u8) -> SharedContact {
        SharedContact {
            node_num: num,
            user: Some(user(key)),
            ..SharedContact::default()
        }
    }

    fn hear(db: &mut NodeDb, num: u32, key: u8) -> Heard {
        db.heard(num, &user(key), None, 0)
    }

    #[test]
    fn evicts_keyless_nodes_before_keyed_ones_and_never_favourites() {
        let mut db = db(4, "2.7.26");
        hear(&mut db, 10, 1);
        hear(&mut db, 11, 0);
        hear(&mut db, 12, 2);
        assert_eq!(db.len(), 4);
        hear(&mut db, 13, 3);
        assert!(db.get(11).is_none(), "keyless node goes first");
        db.add_contact(&contact(10, 1), 0);
        hear(&mut db, 14, 4);
        assert!(db.get(10).is_some(), "favourite stays");
        assert!(db.get(12).is_none(), "oldest keyed non-favourite goes");
        assert_eq!(db.evictions(), 2);
    }

    fn hear_at(db: &mut NodeDb, num: u32, key: u8, last_heard: u32) -> Heard {
        db.heard(num, &user(key), None, last_heard)
    }

    #[test]
    fn eviction_takes_the_lowest_last_heard_and_on_a_tie_the_first_stored() {
        // getOrCreateMeshNode scans for the smallest last_heard with a strict `<`.
        let mut db = db(4, "2.7.26");
        hear_at(&mut db, 10, 1, 300);
        hear_at(&mut db, 11, 2, 100);
        hear_at(&mut db, 12, 3, 100);
        hear_at(&mut db, 13, 4, 400);
        assert!(db.get(11).is_none(), "lowest last_heard, stored first");
        // Hearing a node again raises its last_heard but does not move it.
        hear_at(&mut db, 12, 3, 500);
        hear_at(&mut db, 14, 5, 600);
        assert!(db.get(10).is_none(), "300 is now the lowest");
        assert!(db.get(12).is_some() && db.get(13).is_some());
    }

    #[test]
    fn a_node_pushed_then_unfavourited_is_among_the_first_evicted_from_2_7_14() {
        // addFromContact leaves last_heard alone from 2.7.14 (#8495): 0 for a node it creates.
        // 2.6.8 – 2.7.13 stamp the time of the push.
        for (firmware, pushed_evicted) in [("2.7.14", true), ("2.7.26", true), ("2.7.13", false)] {
            let mut db = db(4, firmware);
            hear_at(&mut db, 10, 1, 100);
            hear_at(&mut db, 11, 2, 200);
            db.add_contact(&contact(12, 3), 900);
            let pushed = db.get(12).expect("stored");
            assert_eq!(pushed.last_heard, if pushed_evicted { 0 } else { 900 });
            db.set_favourite(12, false);
            hear_at(&mut db, 13, 4, 300);
            assert_eq!(db.get(12).is_none(), pushed_evicted, "{firmware}");
            assert_eq!(db.get(10).is_none(), !pushed_evicted, "{firmware}");
        }
        // A push for a node already heard leaves its last_heard as it was (2.7.14+).
        let mut db = db(4, "2.7.26");
        hear_at(&mut db, 10, 1, 100);
        db.add_contact(&contact(10, 1), 900);
        assert_eq!(db.get(10).expect("kept").last_heard, 100);
    }

    #[test]
    fn a_full_nodedb_of_protected_nodes_has_no_room_and_overwrites_nothing() {
        // getOrCreateMeshNode has no fallback: the caller crashes (2.7) or refuses (2.8).
        let mut db = db(3, "2.7.26");
        db.add_contact(&contact(10, 1), 0);
        db.add_contact(&contact(11, 2), 0);
        assert_eq!(db.protected().favourite, 2);
        assert_eq!(db.heard_packet(12, 0, Instant::now()), Heard::NoRoom);
        assert_eq!(hear(&mut db, 12, 3), Heard::NoRoom);
        assert_eq!(db.add_contact(&contact(12, 3), 0), ContactResult::NoRoom);
        assert!(db.get(10).is_some() && db.get(11).is_some());
        assert_eq!(db.evictions(), 0);
    }

    #[test]
    fn any_packet_from_an_unknown_node_creates_a_keyless_entry_that_may_evict() {
        // updateFrom → getOrCreateMeshNode for every received packet, not only NodeInfo.
        let mut db = db(3, "2.7.26");
        hear(&mut db, 10, 1);
        hear(&mut db, 11, 2);
        assert_eq!(db.heard_packet(20, 5, Instant::now()), Heard::Added);
        assert!(db.get(10).is_none(), "oldest keyed node evicted");
        let created = db.get(20).expect("created");
        assert!(created.user.is_none() && created.last_heard == 5);
    }

    /// The key and long name node 10 has in `db`.
    fn key_and_name(db: &NodeDb) -> (Option<Vec<u8>>, Option<String>) {
        let user = db.get(10).and_then(|n| n.user.clone());
        (
            user.as_ref().map(|u| u.public_key.clone()),
            user.map(|u| u.long_name),
        )
    }

    /// A NodeInfo for node 10 with key byte `key` (0: none) and long name `name`.
    fn hear_named(db: &mut NodeDb, key: u8, name: &str) -> Heard {
        let user = User {
            long_name: name.into(),
            ..user(key)
        };
        db.heard(10, &user, None, 0)
    }

    #[test]
    fn from_2_7_6_a_nodeinfo_with_another_key_or_none_is_dropped_names_and_all() {
        // updateUser: "Public Key mismatch, dropping NodeInfo" (#7652).
        let mut db = db(10, "2.7.6");
        hear_named(&mut db, 1, "first");
        assert_eq!(hear_named(&mut db, 2, "renamed"), Heard::KeyMismatch);
        assert_eq!(hear_named(&mut db, 0, "renamed"), Heard::KeylessDropped);
        assert_eq!(key_and_name(&db), (Some(vec![1; 32]), Some("first".into())));
        assert_eq!(hear_named(&mut db, 1, "renamed"), Heard::Updated);
        assert_eq!(key_and_name(&db).1.as_deref(), Some("renamed"));
    }

    #[test]
    fn from_2_5_0_to_2_7_5_a_nodeinfo_never_replaces_a_stored_key_but_its_names_are_taken() {
        // updateUser copies the stored key into the incoming User ("Public Key set for node,
        // not updating!"), then stores that User.
        for firmware in ["2.5.0", "2.6.2", "2.7.5"] {
            let mut db = db(10, firmware);
            hear_named(&mut db, 1, "first");
            assert_eq!(
                hear_named(&mut db, 2, "renamed"),
                Heard::KeyKept,
                "{firmware}"
            );
            assert_eq!(
                key_and_name(&db),
                (Some(vec![1; 32]), Some("renamed".into())),
                "{firmware}"
            );
            assert_eq!(db.key_losses(10), 0, "{firmware}");
        }
    }

    #[test]
    fn a_keyless_nodeinfo_erases_the_stored_key_before_2_6_3_and_keeps_it_from_2_6_3() {
        // updateUser before #6372 copied the stored key only into a NodeInfo that had one.
        let mut old = db(10, "2.6.2");
        hear_named(&mut old, 1, "first");
        assert_eq!(hear_named(&mut old, 0, "renamed"), Heard::KeyErased);
        assert_eq!(key_and_name(&old), (Some(vec![]), Some("renamed".into())));
        assert_eq!(old.key_losses(10), 1);
        // Once erased, the next NodeInfo's key is learned, whichever it is.
        assert_eq!(hear_named(&mut old, 2, "again"), Heard::Updated);
        assert_eq!(key_and_name(&old).0, Some(vec![2; 32]));

        let mut fixed = db(10, "2.6.3");
        hear_named(&mut fixed, 1, "first");
        assert_eq!(hear_named(&mut fixed, 0, "renamed"), Heard::KeyKept);
        assert_eq!(
            key_and_name(&fixed),
            (Some(vec![1; 32]), Some("renamed".into()))
        );
    }

    #[test]
    fn add_contact_replaces_the_whole_user_and_an_empty_key_erases() {
        let mut db = db(10, "2.7.26");
        let mut rich = user(1);
        rich.is_unmessagable = Some(true);
        rich.is_licensed = true;
        #[expect(deprecated, reason = "the firmware still resets it; the sim must too")]
        {
            rich.macaddr = vec![1, 2, 3, 4, 5, 6];
        }
        db.heard(10, &rich, None, 0);
        assert_eq!(db.add_contact(&contact(10, 1), 0), ContactResult::Stored);
        let stored = db.get(10).and_then(|n| n.user.clone()).expect("user");
        // ConvertToUserLite: fields the contact omits are reset, not kept.
        assert_eq!(stored.is_unmessagable, None);
        #[expect(deprecated, reason = "the firmware still resets it; the sim must too")]
        let macaddr_reset = stored.macaddr.is_empty();
        assert!(!stored.is_licensed && macaddr_reset);
        assert_eq!(stored.id, "!0000000a");
        db.add_contact(&contact(10, 0), 0);
        let stored = db.get(10).and_then(|n| n.user.clone()).expect("user");
        assert!(stored.public_key.is_empty(), "an empty key erases");
    }

    #[test]
    fn add_contact_marks_verified_on_2_6_9_to_2_7_11_whatever_the_contact_says() {
        let mut old = db(10, "2.7.11");
        old.add_contact(&contact(10, 1), 0);
        let n = old.get(10).expect("stored");
        assert!(n.is_favorite && n.is_key_manually_verified);
        // A later push with another key still replaces it: verification is not checked there.
        assert_eq!(old.add_contact(&contact(10, 2), 0), ContactResult::Stored);
        assert_eq!(old.protected().verified, 1);
    }

    #[test]
    fn from_2_7_12_an_unverified_contact_for_a_verified_node_is_dropped_only_if_the_key_differs() {
        let mut db = db(10, "2.7.12");
        db.add_contact(&contact(10, 1), 0);
        assert!(!db.get(10).expect("stored").is_key_manually_verified);
        let verified = SharedContact {
            manually_verified: true,
            ..contact(10, 1)
        };
        db.add_contact(&verified, 0);
        assert!(db.get(10).expect("stored").is_key_manually_verified);
        assert_eq!(db.add_contact(&contact(10, 1), 0), ContactResult::Stored);
        assert_eq!(
            db.add_contact(&contact(10, 2), 0),
            ContactResult::DroppedVerified
        );
        assert!(
            db.get(10).expect("kept").is_key_manually_verified,
            "an unverified push never clears verification"
        );
    }

    #[test]
    fn add_contact_on_a_client_base_from_2_7_14_does_not_favourite() {
        let rules = Profile::new("2.7.14", Hw::Esp32, SimRole::ClientBase)
            .expect("valid")
            .nodedb_rules();
        let mut db = NodeDb::new(own(), 10, rules);
        db.add_contact(&contact(10, 1), 77);
        let n = db.get(10).expect("stored");
        assert!(!n.is_favorite && n.last_heard == 77);
        assert_eq!(db.protected().total, 0);
    }

    #[test]
    fn ignoring_erases_the_key_and_removing_deletes_the_node() {
        let mut db = db(10, "2.7.26");
        hear(&mut db, 10, 1);
        hear(&mut db, 11, 2);
        db.add_contact(&contact(10, 1), 0);
        assert_eq!(db.ignore(10), Flagged::Done);
        let n = db.get(10).expect("kept");
        // set_ignored_node leaves the favourite bit alone.
        assert!(n.is_ignored && n.is_favorite);
        assert!(n.user.as_ref().is_some_and(|u| u.public_key.is_empty()));
        // A NodeInfo heard later does not bring the key back.
        hear(&mut db, 10, 1);
        assert!(
            db.get(10)
                .and_then(|n| n.user.clone())
                .is_some_and(|u| u.public_key.is_empty())
        );
        assert!(db.remove(11));
        assert!(db.get(11).is_none());
        assert!(!db.remove(11));
        assert_eq!(db.set_favourite(10, true), Flagged::Done);
        assert_eq!(db.set_favourite(99, true), Flagged::Unknown);
        assert_eq!(
            db.ignore(99),
            Flagged::Unknown,
            "2.7 leaves an unknown node alone"
        );
    }

    #[test]
    fn develop_caps_protected_entries_at_max_minus_two() {
        // setProtectedFlag (PR #10705); seen on meshtasticd 2.8 with MaxNodes 20: 18 favourites,
        // the 19th contact stored unprotected, set_favorite and set_ignored refused.
        let mut db = db(6, "2.8");
        for num in 10..14 {
            db.add_contact(&contact(num, 1), 0);
        }
        assert_eq!(db.protected().total, 4);
        assert_eq!(db.add_contact(&contact(14, 2), 0), ContactResult::Stored);
        let n = db.get(14).expect("stored");
        assert!(!n.is_favorite && n.user.as_ref().is_some_and(|u| u.public_key.len() == 32));
        assert_eq!(db.set_favourite(14, true), Flagged::Refused { limit: 4 });
        assert_eq!(
            db.set_favourite(10, true),
            Flagged::Done,
            "already protected"
        );
        // set_ignored on an unknown node creates it (evicting the unprotected one), then refuses.
        assert_eq!(db.ignore(99), Flagged::Refused { limit: 4 });
        assert!(db.get(99).is_some_and(|n| !n.is_ignored) && db.get(14).is_none());
        // A full NodeDB keeps an evictable entry: a new node never finds no room.
        assert_eq!(hear(&mut db, 20, 3), Heard::Added);
        // 2.7 has no such cap.
        let mut old = self::db(6, "2.7.26");
        for num in 10..15 {
            old.add_contact(&contact(num, 1), 0);
        }
        assert_eq!(old.protected().total, 5);
    }

    #[test]
    fn should_ignore_in_a_contact_ignores_and_erases_instead_of_storing_the_key() {
        let mut db = db(10, "2.7.26");
        hear(&mut db, 10, 1);
        db.add_contact(&contact(10, 1), 0);
        let ignore = SharedContact {
            should_ignore: true,
            ..contact(10, 1)
        };
        assert_eq!(db.add_contact(&ignore, 0), ContactResult::Stored);
        let n = db.get(10).expect("kept");
        assert!(n.is_ignored && !n.is_favorite, "2.7.14+ also unfavourites");
        let user = n.user.as_ref().expect("the contact's user is stored");
        assert!(user.public_key.is_empty());
        assert_eq!(
            user.long_name, "n1",
            "names kept (seen on meshtasticd 2.7.26)"
        );
        // 2.8 keeps the key of an ignored node.
        let mut develop = self::db(10, "2.8");
        hear(&mut develop, 10, 1);
        develop.ignore(10);
        assert!(
            develop
                .get(10)
                .and_then(|n| n.user.clone())
                .is_some_and(|u| u.public_key.len() == 32)
        );
    }

    #[test]
    fn should_ignore_is_not_read_before_2_6_12_the_contact_is_stored_as_any_other() {
        // addFromContact before #7044 has no should_ignore branch: the node is favourited,
        // verified from 2.6.9, and keeps the contact's key.
        let ignore = SharedContact {
            should_ignore: true,
            ..contact(10, 1)
        };
        for (firmware, verified) in [("2.6.8", false), ("2.6.10", true), ("2.6.11", true)] {
            let mut db = db(10, firmware);
            assert_eq!(db.add_contact(&ignore, 0), ContactResult::Stored);
            let n = db.get(10).expect("stored");
            assert!(!n.is_ignored && n.is_favorite, "{firmware}");
            assert_eq!(n.is_key_manually_verified, verified, "{firmware}");
            assert_eq!(key_and_name(&db).0, Some(vec![1; 32]), "{firmware}");
        }
        let mut read = db(10, "2.6.12");
        read.add_contact(&ignore, 0);
        let n = read.get(10).expect("stored");
        assert!(n.is_ignored && !n.is_favorite && !n.is_key_manually_verified);
        assert_eq!(key_and_name(&read).0, Some(vec![]));
    }

    #[test]
    fn the_keyless_pass_of_eviction_does_not_spare_verified_nodes() {
        // getOrCreateMeshNode's first pass checks favourite, ignored and key only.
        let mut db = db(3, "2.7.26");
        let verified_keyless = SharedContact {
            manually_verified: true,
            ..contact(10, 0)
        };
        db.add_contact(&verified_keyless, 0);
        db.set_favourite(10, false);
        hear(&mut db, 11, 2);
        assert_eq!(hear(&mut db, 12, 3), Heard::Added);
        assert!(db.get(10).is_none(), "verified but keyless: evicted first");
    }

    #[test]
    fn on_2_8_an_evicted_node_keeps_its_key_in_the_warm_tier_unseen_by_clients() {
        // getOrCreateMeshNode absorbs the evicted node (PR #10705); copyPublicKey falls back
        // to the warm tier, the node list and the count do not.
        let mut db = db(3, "2.8");
        hear_at(&mut db, 10, 1, 1000);
        hear_at(&mut db, 11, 2, 2000);
        hear_at(&mut db, 12, 3, 3000);
        assert!(db.get(10).is_none() && db.len() == 3);
        assert!(db.others().all(|(n, _)| n.num != 10));
        assert_eq!(
            db.dm_key(10),
            Some([1; 32]),
            "DMs to it are still encrypted"
        );
        assert_eq!((db.warm_len(), db.key_losses(10)), (1, 0));
        // 2.7 has no warm tier: the key is lost with the node.
        let mut old = self::db(3, "2.7.26");
        hear_at(&mut old, 10, 1, 1000);
        hear_at(&mut old, 11, 2, 2000);
        hear_at(&mut old, 12, 3, 3000);
        assert_eq!((old.dm_key(10), old.key_losses(10)), (None, 1));
    }

    #[test]
    fn on_2_8_a_node_heard_again_gets_its_key_back_from_the_warm_tier() {
        let mut db = db(3, "2.8");
        hear_at(&mut db, 10, 1, 1000);
        hear_at(&mut db, 11, 2, 2000);
        hear_at(&mut db, 12, 3, 3000);
        // A position from 10: re-admitted with its key and its last_heard (to 128 s) back.
        assert_eq!(db.heard_packet(10, 0, Instant::now()), Heard::Added);
        let back = db.get(10).expect("re-admitted");
        assert_eq!(back.last_heard, 896);
        assert_eq!(key_and_name(&db).0, Some(vec![1; 32]));
        assert!(db.warm_key(10).is_none(), "taken out of the warm tier");
        assert_eq!(db.warm_key(11), Some([2; 32]), "11 made room");
        // The firmware holds the key but no User: clients get the node without one.
        let listed = db.others().find(|(n, _)| n.num == 10).map(|(n, _)| n);
        assert!(listed.is_some_and(|n| n.user.is_none()));
        // Its next NodeInfo is checked against the key it got back.
        assert_eq!(hear_at(&mut db, 10, 9, 4000), Heard::KeyMismatch);
        assert_eq!(hear_at(&mut db, 10, 1, 4000), Heard::Updated);
        let listed = db.others().find(|(n, _)| n.num == 10).map(|(n, _)| n);
        assert!(listed.is_some_and(|n| n.user.is_some_and(|u| u.long_name == "n1")));
    }

    #[test]
    fn on_2_8_a_node_pushed_back_takes_the_warm_tiers_last_heard() {
        // addFromContact → getOrCreateMeshNode re-admits from the warm tier; the contact's
        // user then replaces the User, and last_heard is left alone (2.7.14+).
        let mut db = db(3, "2.8");
        hear_at(&mut db, 10, 1, 1000);
        hear_at(&mut db, 11, 2, 2000);
        hear_at(&mut db, 12, 3, 3000);
        assert_eq!(db.add_contact(&contact(10, 1), 9000), ContactResult::Stored);
        let back = db.get(10).expect("stored");
        assert!(back.is_favorite && back.last_heard == 896);
        assert!(db.warm_key(10).is_none());
    }

    #[test]
    fn on_2_8_removing_a_node_erases_its_warm_copy_and_a_reset_clears_the_tier() {
        let mut db = db(3, "2.8");
        for (num, key) in [(10, 1), (11, 2), (12, 3), (13, 4)] {
            hear_at(&mut db, num, key, u32::from(key) * 1000);
        }
        assert_eq!(db.warm_len(), 2);
        // removeNodeByNum: "don't let the warm tier resurrect the node".
        assert!(!db.remove(10), "not in the NodeDB");
        assert_eq!((db.dm_key(10), db.key_losses(10)), (None, 1));
        // resetNodes: warmStore.clear().
        db.forget_nodes();
        assert_eq!((db.warm_len(), db.dm_key(11)), (0, None));
    }

    #[test]
    fn a_full_2_8_nodedb_admits_one_new_node_from_packets_per_2_s_but_every_nodeinfo() {
        // updateFrom: NODEDB_FULL_EVICTION_INTERVAL_MS (#11102); updateUser is not throttled.
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut db = db(3, "2.8");
        hear_at(&mut db, 10, 1, 1000);
        hear_at(&mut db, 11, 2, 2000);
        assert_eq!(db.heard_packet(20, 3000, at(0)), Heard::Added);
        assert_eq!(db.heard_packet(21, 3000, at(1999)), Heard::Deferred);
        assert!(db.get(21).is_none());
        assert_eq!(hear_at(&mut db, 22, 5, 3000), Heard::Added);
        assert_eq!(db.heard_packet(21, 3000, at(2000)), Heard::Added);
        // A known node's packets are never deferred.
        assert_eq!(db.heard_packet(21, 3100, at(2001)), Heard::Updated);
        // 2.7 admits every one.
        let mut old = self::db(3, "2.7.26");
        hear_at(&mut old, 10, 1, 1000);
        hear_at(&mut old, 11, 2, 2000);
        assert_eq!(old.heard_packet(20, 3000, at(0)), Heard::Added);
        assert_eq!(old.heard_packet(21, 3000, at(1)), Heard::Added);
    }

    #[test]
    fn a_crash_comes_back_with_the_nodedb_as_last_written_to_flash() {
        let mut db = db(10, "2.7.26");
        db.add_contact(&contact(10, 1), 0);
        db.save_to_flash();
        hear(&mut db, 11, 2);
        db.restore_from_flash();
        assert!(db.get(10).is_some() && db.get(11).is_none());
    }
}
