//! The simulated mesh's nodes: generated from a seed, so every run with the same seed meets the
//! same nodes, names and keys.

use meshtastic::protobufs::{HardwareModel, NodeInfo, User, config::device_config::Role};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use keysync_engine::{BROADCAST, node_id};

const PLACES: &[&str] = &[
    "Ridge", "Harbor", "Mill", "Quarry", "Beacon", "Orchard", "Summit", "Meadow", "Ferry", "Cedar",
    "Granite", "Willow", "Lantern", "Falcon", "Copper", "Tide",
];
const KINDS: &[&str] = &[
    "Relay", "Base", "Rover", "Camp", "Tower", "Hut", "Node", "Mobile",
];
/// Names that exercise the codec: emoji, and `Ôé` whose UTF-8 is `C3 94 C3 A9`, so the frame
/// magic appears inside the payload.
const SPECIAL: &[&str] = &["🦊 Fox Den", "ÔÉ Hilltop", "Bäckerei 📡", "Ôslo Ëast"];
const MODELS: &[HardwareModel] = &[
    HardwareModel::Rak4631,
    HardwareModel::HeltecV3,
    HardwareModel::Tbeam,
    HardwareModel::TEcho,
    HardwareModel::StationG2,
    HardwareModel::TloraT3S3,
    HardwareModel::HeltecWirelessTracker,
];

/// Deterministic nodes for a seed.
#[derive(Debug)]
pub struct Population {
    rng: StdRng,
    made: usize,
    used: std::collections::HashSet<u32>,
}

impl Population {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            made: 0,
            used: std::collections::HashSet::new(),
        }
    }

    /// The radio's own node.
    pub fn own_node(&mut self) -> NodeInfo {
        let num = self.fresh_num();
        let key = self.key(false);
        NodeInfo {
            num,
            user: Some(User {
                id: node_id(num),
                long_name: "keysync sim".into(),
                short_name: "SIM".into(),
                hw_model: HardwareModel::Portduino as i32,
                role: Role::ClientMute as i32,
                public_key: key.to_vec(),
                ..User::default()
            }),
            is_favorite: true,
            last_heard: now_secs(),
            ..NodeInfo::default()
        }
    }

    /// The next generated node. Every fifth node's key holds the frame magic `94 C3`.
    pub fn next_node(&mut self) -> NodeInfo {
        let i = self.made;
        self.made += 1;
        let num = self.fresh_num();
        let long_name = if i % 7 == 3 {
            format!("{} {}", SPECIAL[(i / 7) % SPECIAL.len()], i)
        } else {
            let place = PLACES[self.rng.random_range(0..PLACES.len())];
            let kind = KINDS[self.rng.random_range(0..KINDS.len())];
            format!("{place} {kind} {i:02}")
        };
        let short_name = format!("{:04x}", num & 0xFFFF);
        let key = self.key(i.is_multiple_of(5));
        let model = MODELS[self.rng.random_range(0..MODELS.len())];
        let role = if i.is_multiple_of(11) {
            Role::Router
        } else {
            Role::Client
        };
        NodeInfo {
            num,
            user: Some(User {
                id: node_id(num),
                long_name,
                short_name,
                hw_model: model as i32,
                role: role as i32,
                public_key: key.to_vec(),
                ..User::default()
            }),
            snr: self.rng.random_range(-15.0..10.0),
            last_heard: now_secs().saturating_sub(self.rng.random_range(0..3600)),
            hops_away: Some(self.rng.random_range(0..4)),
            ..NodeInfo::default()
        }
    }

    /// A fresh key for a node that changes its key.
    pub fn new_key(&mut self) -> [u8; 32] {
        self.key(false)
    }

    /// A packet id: non-zero, random.
    pub fn packet_id(&mut self) -> u32 {
        self.rng.random_range(1..u32::MAX)
    }

    /// Random bytes for the garbage fault.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.rng.random()).collect()
    }

    fn key(&mut self, with_magic: bool) -> [u8; 32] {
        let mut key: [u8; 32] = self.rng.random();
        if key == [0; 32] {
            key[0] = 1;
        }
        if with_magic {
            let at = self.rng.random_range(0..31);
            key[at] = 0x94;
            key[at + 1] = 0xC3;
        }
        key
    }

    fn fresh_num(&mut self) -> u32 {
        loop {
            let n = self.rng.random_range(0x0100_0000..BROADCAST);
            if self.used.insert(n) {
                return n;
            }
        }
    }
}

/// Seconds since the epoch, as the firmware's `last_heard`.
pub fn now_secs() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_nodes() {
        let (mut a, mut b) = (Population::new(7), Population::new(7));
        for _ in 0..20 {
            let (x, y) = (a.next_node(), b.next_node());
            assert_eq!((x.num, x.user), (y.num, y.user));
        }
    }

    #[test]
    fn some_keys_and_names_carry_the_frame_magic() {
        let mut p = Population::new(1);
        let nodes: Vec<_> = (0..20).map(|_| p.next_node()).collect();
        let has_magic = |b: &[u8]| b.windows(2).any(|w| w == [0x94, 0xC3]);
        let keys = nodes
            .iter()
            .filter(|n| has_magic(&n.user.as_ref().unwrap().public_key))
            .count();
        assert!(keys >= 4, "{keys} keys with 94 C3");
        assert!(
            nodes
                .iter()
                .any(|n| has_magic(n.user.as_ref().unwrap().long_name.as_bytes()))
        );
        let nums: std::collections::HashSet<_> = nodes.iter().map(|n| n.num).collect();
        assert_eq!(nums.len(), 20);
    }
}
