//! 2.8's warm tier (firmware `src/mesh/WarmNodeStore.cpp`, PR #10705): what the radio keeps of a
//! node evicted from its NodeDB, so that a node that comes back gets its key back and DMs to it
//! stay encrypted meanwhile. Clients never see it.

/// The low bits of `last_heard` that the firmware reuses for metadata (WARM_META_BITS): a warm
/// entry's time is kept to 128 s.
const TIME_MASK: u32 = !0x7F;

/// What the warm tier keeps of one node: {num, last_heard, key}, 40 bytes in the firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmEntry {
    pub num: u32,
    pub last_heard: u32,
    pub key: Option<[u8; 32]>,
}

/// What [`WarmTier::absorb`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absorbed {
    /// Kept in a free slot, or over the node's own older copy.
    Kept,
    /// Kept in place of another node's entry, which is gone.
    Displaced(WarmEntry),
    /// Not kept: the tier is full of keyed entries and this one has no key (or the tier has
    /// no slots at all).
    NotKept,
}

/// A fixed array of slots, scanned in order as the firmware does (ties go to the first slot).
#[derive(Debug, Clone, Default)]
pub struct WarmTier {
    slots: Vec<Option<WarmEntry>>,
}

impl WarmTier {
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: vec![None; capacity],
        }
    }

    pub fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// WarmNodeStore::absorb / place: the node's own slot, else a free one, else the oldest
    /// keyless entry, else (for a keyed entry only) the oldest keyed one. A keyless refresh of
    /// a node already here keeps the key it had.
    pub fn absorb(&mut self, entry: WarmEntry) -> Absorbed {
        if let Some(mine) = self.slots.iter_mut().flatten().find(|e| e.num == entry.num) {
            mine.last_heard = entry.last_heard;
            if entry.key.is_some() {
                mine.key = entry.key;
            }
            return Absorbed::Kept;
        }
        if let Some(free) = self.slots.iter_mut().find(|s| s.is_none()) {
            *free = Some(entry);
            return Absorbed::Kept;
        }
        // Compared on the time bits only, first slot on a tie (the firmware's strict `<`).
        let oldest = |keyed: bool| {
            self.slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.map(|e| (i, e)))
                .filter(|(_, e)| e.key.is_some() == keyed)
                .min_by_key(|(_, e)| e.last_heard & TIME_MASK)
                .map(|(i, _)| i)
        };
        let victim = oldest(false).or_else(|| entry.key.and_then(|_| oldest(true)));
        let Some(slot) = victim.and_then(|i| self.slots.get_mut(i)) else {
            return Absorbed::NotKept;
        };
        match slot.replace(entry) {
            Some(gone) => Absorbed::Displaced(gone),
            None => Absorbed::Kept,
        }
    }

    /// WarmNodeStore::take: the node's entry, removed (it is re-admitted to the NodeDB), its
    /// time cut to what the firmware keeps.
    pub fn take(&mut self, num: u32) -> Option<WarmEntry> {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.is_some_and(|e| e.num == num))?;
        slot.take().map(|e| WarmEntry {
            last_heard: e.last_heard & TIME_MASK,
            ..e
        })
    }

    /// The key kept for `num` (copyPublicKey's fallback).
    pub fn key(&self, num: u32) -> Option<[u8; 32]> {
        self.slots
            .iter()
            .flatten()
            .find(|e| e.num == num)
            .and_then(|e| e.key)
    }

    /// Erases the node's entry (remove_by_nodenum); the entry it had, if any.
    pub fn remove(&mut self, num: u32) -> Option<WarmEntry> {
        self.take(num)
    }

    /// Erases everything (NodeDB reset); the entries there were.
    pub fn clear(&mut self) -> Vec<WarmEntry> {
        self.slots.iter_mut().filter_map(Option::take).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(num: u32, last_heard: u32, key: u8) -> WarmEntry {
        WarmEntry {
            num,
            last_heard,
            key: (key != 0).then_some([key; 32]),
        }
    }

    #[test]
    fn a_full_tier_gives_up_the_oldest_keyless_entry_then_the_oldest_keyed_one() {
        let mut warm = WarmTier::new(3);
        warm.absorb(entry(1, 1000, 1));
        warm.absorb(entry(2, 5000, 0));
        warm.absorb(entry(3, 300, 3));
        assert_eq!(
            warm.absorb(entry(4, 9000, 4)),
            Absorbed::Displaced(entry(2, 5000, 0)),
            "keyless first, however recent"
        );
        assert_eq!(
            warm.absorb(entry(5, 9000, 5)),
            Absorbed::Displaced(entry(3, 300, 3))
        );
        assert_eq!(
            warm.absorb(entry(6, 9999, 0)),
            Absorbed::NotKept,
            "a keyless entry never displaces a keyed one"
        );
        assert_eq!(warm.len(), 3);
    }

    #[test]
    fn age_is_compared_to_128_s_and_a_tie_goes_to_the_first_slot() {
        let mut warm = WarmTier::new(2);
        warm.absorb(entry(1, 1000, 1));
        warm.absorb(entry(2, 900, 2));
        // 900 and 1000 are one 128 s step apart after masking (896, 896): a tie.
        assert_eq!(
            warm.absorb(entry(3, 5000, 3)),
            Absorbed::Displaced(entry(1, 1000, 1))
        );
    }

    #[test]
    fn a_node_taken_back_leaves_the_tier_with_its_key_and_coarse_time() {
        let mut warm = WarmTier::new(2);
        warm.absorb(entry(1, 1000, 1));
        // A keyless refresh keeps the key already there.
        assert_eq!(warm.absorb(entry(1, 2000, 0)), Absorbed::Kept);
        assert_eq!(warm.key(1), Some([1; 32]));
        assert_eq!(warm.take(1), Some(entry(1, 1920, 1)));
        assert!(warm.take(1).is_none() && warm.is_empty());
    }

    #[test]
    fn a_tier_without_slots_keeps_nothing() {
        let mut warm = WarmTier::new(0);
        assert_eq!(warm.absorb(entry(1, 1000, 1)), Absorbed::NotKept);
        assert!(warm.key(1).is_none());
    }
}
