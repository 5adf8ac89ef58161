//! Firmware profiles: which behaviour the simulated radio shows for a firmware version, a
//! hardware family and a device role. Every rule names the firmware source file it comes from
//! (github.com/meshtastic/firmware, `src/`), so a reader can check it against the tag.

use std::fmt;
use std::str::FromStr;

use meshtastic::protobufs::HardwareModel;
use meshtastic::protobufs::config::device_config::Role;

/// `major.minor.patch`, ordered.
pub type Version = (u32, u32, u32);

/// A firmware behaviour that exists only in some versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// AdminMessage.add_contact (field 66) is handled; before, the field is unknown and the
    /// message is ignored.
    AddContact,
    /// want_config_id 69421 returns the node list only; before, it is an ordinary nonce.
    NodesOnlyDownload,
    /// add_contact sets "key manually verified" whatever the contact says (from 2.6.9: 2.6.8
    /// does not set it at all).
    ContactAlwaysVerified,
    /// add_contact with `should_ignore` ignores the node and erases its key.
    ContactShouldIgnore,
    /// add_contact refreshes `last_heard` on every role (from 2.7.14 only on CLIENT_BASE).
    ContactRefreshesLastHeard,
    /// add_contact honours `manually_verified`; an unverified contact with a different key for
    /// a verified node is dropped whole.
    VerifiedKeepsItsKey,
    /// `my_info.nodedb_count` carries the NodeDB's total, also in a config-only download.
    NodedbCount,
    /// Every heartbeat is answered with a QueueStatus (2.7.4 – 2.7.5 only when something else
    /// is queued, which the simulator treats as never).
    HeartbeatAnswered,
    /// A NodeInfo heard on the mesh never replaces a stored key: the stored key is copied into
    /// the incoming User, whose names are still taken.
    NodeInfoKeepsKey,
    /// A NodeInfo without a key keeps the stored key (before, it erased it: the User is stored
    /// as received).
    KeylessNodeInfoKeepsKey,
    /// A NodeInfo whose key differs from the stored one, or that has none, is dropped whole:
    /// names are not updated either.
    KeyMismatchDropped,
    /// Position, telemetry, waypoint and alert from one connection: one per 10 s per port, else
    /// dropped with a QueueStatus `res = 0` (the limiter of 2.6.7 – 2.7.0.195b7cc tested a
    /// constant and never fired; 2.5.x limited positions to one per 5 s).
    PositionRateLimit,
    /// Texts from one connection: one per 2 s; the excess is dropped with QueueStatus `res = 0`.
    TextRateLimit,
    /// A text over the limit is also answered with a ClientNotification "Text messages can only
    /// be sent once every 2 seconds" (replaced by the routing error in 2.7.4).
    TextRateLimitNotice,
    /// A text over the limit is also answered with a routing error RATE_LIMIT_EXCEEDED.
    TextRateLimitError,
    /// set_favorite_node, remove_favorite_node and set_ignored_node restart the LoRa chip: they
    /// save through saveChanges → MeshService::reloadConfig, which reconfigures the radio;
    /// packets in flight are lost. remove_by_nodenum saves the NodeDB only.
    FavouriteRestartsLora,
    /// A favourite makes a CLIENT_BASE rebroadcast like a router for packets from or to it.
    ClientBaseFavouriteRoutes,
    /// A gateway with role ROUTER, ROUTER_LATE or CLIENT_BASE keeps `hop_limit` when it
    /// rebroadcasts a packet relayed by a favourite with one of those roles.
    FavouriteRelayKeepsHops,
    /// That relay is matched by the last byte of its node number alone, the first favourite
    /// router in NodeDB order winning: unrelated relays sharing the byte keep their hops too.
    FavouriteRelayFirstMatch,
    /// add_contact on a CLIENT_BASE does not favourite; it only refreshes `last_heard`.
    ClientBaseNoFavourite,
    /// A DM to a node without a key is refused with PKI_SEND_FAIL_PUBLIC_KEY.
    PkiSendFail,
    /// A client that sent no complete frame for 15 minutes is closed.
    IdleClose,
    /// A heartbeat with nonce 1 makes the radio broadcast its own NodeInfo (at most once per
    /// 60 s) and is not answered with a QueueStatus.
    HeartbeatNodeInfoPing,
    /// A packet from a node without a user record makes the radio send it its own NodeInfo
    /// asking for one back; the node answers unless it sent a NodeInfo in the last 10 minutes.
    AsksNewNodeForNodeInfo,
    /// Names with invalid UTF-8 are sanitized: each invalid byte becomes `?`.
    Utf8Validated,
    /// set_ignored_node keeps the key (2.8; before, it erases it).
    IgnoreKeepsKey,
    /// A full NodeDB with nothing evictable refuses the new node (before: writes past the end
    /// of the node array and the radio crashes).
    RefuseWhenFull,
    /// An evicted node's {num, last_heard, key} is kept in a warm tier the clients do not see: a
    /// node that comes back gets its key back, and DMs to it are still encrypted.
    WarmTier,
    /// When the NodeDB is full, a new node from a packet other than a NodeInfo is admitted at
    /// most once per 2 s (the others are not stored; their packets still reach the client).
    FullAdmissionThrottle,
    /// Favourite, ignored and verified entries (own node aside) are capped at MAX − 2: past it
    /// add_contact stores the node unprotected, set_favorite and set_ignored are refused with a
    /// ClientNotification, and set_ignored creates an unknown node first.
    ProtectedCap,
}

/// Where a rule holds: the versions that have it, and where it is written.
struct Row {
    since: Version,
    /// Last version that has it, inclusive.
    until: Option<Version>,
    source: &'static str,
}

const fn row(since: Version, until: Option<Version>, source: &'static str) -> Row {
    Row {
        since,
        until,
        source,
    }
}

impl Rule {
    /// The one table that maps a firmware version to its behaviour: a match, so a rule cannot
    /// be added without its versions and source.
    #[expect(
        clippy::too_many_lines,
        reason = "the version table: one arm per rule, nothing else"
    )]
    const fn row(self) -> Row {
        match self {
            Self::AddContact => row(
                (2, 6, 8),
                None,
                "modules/AdminModule.cpp handleReceivedProtobuf: add_contact_tag",
            ),
            Self::NodesOnlyDownload => row(
                (2, 6, 8),
                None,
                "mesh/PhoneAPI.cpp handleStartConfig: SPECIAL_NONCE_ONLY_NODES",
            ),
            Self::ContactAlwaysVerified => row(
                (2, 6, 9),
                Some((2, 7, 11)),
                "mesh/NodeDB.cpp addFromContact: verified bit set unconditionally (#6858)",
            ),
            Self::ContactShouldIgnore => row(
                (2, 6, 12),
                None,
                "mesh/NodeDB.cpp addFromContact: should_ignore → is_ignored, key zeroed (#7044)",
            ),
            Self::ContactRefreshesLastHeard => row(
                (2, 6, 8),
                Some((2, 7, 13)),
                "mesh/NodeDB.cpp addFromContact: last_heard = getValidTime (from 2.7.14 CLIENT_BASE only, #8495)",
            ),
            Self::VerifiedKeepsItsKey => row(
                (2, 7, 12),
                None,
                "mesh/NodeDB.cpp addFromContact: manually_verified honoured, key conflict dropped (#8180)",
            ),
            Self::NodedbCount => row(
                (2, 7, 4),
                None,
                "mesh/PhoneAPI.cpp getFromRadio STATE_SEND_MY_INFO: myNodeInfo.nodedb_count",
            ),
            Self::HeartbeatAnswered => row(
                (2, 7, 6),
                None,
                "mesh/PhoneAPI.cpp getFromRadio: heartbeatReceived checked first → QueueStatus (#7506)",
            ),
            Self::NodeInfoKeepsKey => row(
                (2, 5, 0),
                None,
                "mesh/NodeDB.cpp updateUser: stored key copied into the incoming User (\"Public Key set for node, not updating!\")",
            ),
            Self::KeylessNodeInfoKeepsKey => row(
                (2, 6, 3),
                None,
                "mesh/NodeDB.cpp updateUser: stored key copied whatever the NodeInfo carries (#6372)",
            ),
            Self::KeyMismatchDropped => row(
                (2, 7, 6),
                None,
                "mesh/NodeDB.cpp updateUser: \"Public Key mismatch, dropping NodeInfo\" (#7652)",
            ),
            // Both limits came with #7139 in the 2.7.0.705515a build; the earlier 2.7.0.195b7cc
            // build has neither, but a version number cannot tell the two apart.
            Self::PositionRateLimit => row(
                (2, 7, 0),
                None,
                "mesh/PhoneAPI.cpp handleToRadioPacket: lastPortNumToRadio, TEN_SECONDS_MS (#7139, 2.7.0.705515a)",
            ),
            Self::TextRateLimit => row(
                (2, 7, 0),
                None,
                "mesh/PhoneAPI.cpp handleToRadioPacket: TEXT_MESSAGE_APP, TWO_SECONDS_MS (#7139, 2.7.0.705515a)",
            ),
            Self::TextRateLimitNotice => row(
                (2, 7, 0),
                Some((2, 7, 3)),
                "mesh/PhoneAPI.cpp handleToRadioPacket: sendNotification(\"Text messages can only be sent once every 2 seconds\")",
            ),
            Self::TextRateLimitError => row(
                (2, 7, 4),
                None,
                "mesh/PhoneAPI.cpp handleToRadioPacket: sendRoutingErrorResponse(RATE_LIMIT_EXCEEDED)",
            ),
            Self::FavouriteRestartsLora => row(
                // Older than any release the simulator models (set_ignored_node: 2.5.13).
                (2, 0, 0),
                Some((2, 7, 26)),
                "modules/AdminModule.cpp saveChanges → mesh/MeshService.cpp reloadConfig → RadioInterface::reconfigure (develop skips it for NodeDB saves, #11146); seen on meshtasticd 2.7.26: \"Set radio: region=…\"",
            ),
            Self::ClientBaseFavouriteRoutes => row(
                (2, 7, 10),
                None,
                "mesh/FloodingRouter.cpp roleAllowsCancelingDupe, perhapsCancelDupe: CLIENT_BASE and isFromOrToFavoritedNode (#7873)",
            ),
            Self::FavouriteRelayKeepsHops => row(
                (2, 7, 11),
                None,
                "mesh/Router.cpp shouldDecrementHopLimit, mesh/NextHopRouter.cpp perhapsRebroadcast: \"preserving hop_limit\" (#7992)",
            ),
            Self::FavouriteRelayFirstMatch => row(
                (2, 7, 11),
                Some((2, 7, 26)),
                "mesh/Router.cpp shouldDecrementHopLimit: getLastByteOfNodeNum == relay_node, first match (develop: resolveUniqueLastByte, #10745)",
            ),
            Self::ClientBaseNoFavourite => row(
                (2, 7, 14),
                None,
                "mesh/NodeDB.cpp addFromContact: CLIENT_BASE keeps is_favorite, refreshes last_heard",
            ),
            Self::PkiSendFail => row(
                (2, 7, 19),
                None,
                "mesh/Router.cpp perhapsEncode: no key for a DM → PKI_SEND_FAIL_PUBLIC_KEY (#9485)",
            ),
            Self::IdleClose => row(
                (2, 7, 21),
                None,
                "mesh/api/ServerAPI.cpp / PhoneAPI.cpp checkConnectionTimeout: 15 min",
            ),
            Self::AsksNewNodeForNodeInfo => row(
                (2, 5, 0),
                None,
                "mesh/MeshService.cpp handleFromRadio: \"Heard new node on ch. N, send NodeInfo and ask for response\"; the answer is limited to one NodeInfo per 10 min (modules/NodeInfoModule.cpp); seen on meshtasticd 2.7.26 and 2.8",
            ),
            Self::HeartbeatNodeInfoPing => row(
                (2, 7, 23),
                None,
                "mesh/PhoneAPI.cpp handleToRadio: heartbeat nonce 1 → modules/NodeInfoModule.cpp sendOurNodeInfo(shorterTimeout), 60 s; seen on meshtasticd 2.7.26: \"Broadcasting nodeinfo ping\"",
            ),
            Self::Utf8Validated => row(
                (2, 7, 23),
                None,
                "mesh/TypeConversions.cpp ConvertToUserLite → meshUtils.cpp sanitizeUtf8",
            ),
            Self::IgnoreKeepsKey => row(
                (2, 8, 0),
                None,
                "modules/AdminModule.cpp set_ignored_node (develop): key kept, satellite stores erased",
            ),
            Self::RefuseWhenFull => row(
                (2, 8, 0),
                None,
                "mesh/NodeDB.cpp getOrCreateMeshNode: returns NULL when nothing is evictable (PR #10705)",
            ),
            Self::WarmTier => row(
                (2, 8, 0),
                None,
                "mesh/WarmNodeStore.cpp; mesh/NodeDB.cpp getOrCreateMeshNode (absorb, take), copyPublicKey, removeNodeByNum, resetNodes (PR #10705)",
            ),
            Self::FullAdmissionThrottle => row(
                (2, 8, 0),
                None,
                "mesh/NodeDB.cpp updateFrom: NODEDB_FULL_EVICTION_INTERVAL_MS, \"Node database full, defer admitting\" (#11102)",
            ),
            Self::ProtectedCap => row(
                (2, 8, 0),
                None,
                "mesh/NodeDB.cpp setProtectedFlag: protected entries capped at MAX_NUM_NODES − 2 (PR #10705); seen on meshtasticd 2.8.0.7754068",
            ),
        }
    }
}

/// The hardware family: it sets the NodeDB capacity and the queue towards the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hw {
    Nrf52,
    Esp32,
    Esp32s3,
    #[default]
    Linux,
}

impl Hw {
    pub const ALL: [Hw; 4] = [Hw::Nrf52, Hw::Esp32, Hw::Esp32s3, Hw::Linux];

    pub fn name(self) -> &'static str {
        match self {
            Hw::Nrf52 => "nrf52",
            Hw::Esp32 => "esp32",
            Hw::Esp32s3 => "esp32s3",
            Hw::Linux => "linux",
        }
    }

    /// `MAX_NUM_NODES` (mesh/mesh-pb-constants.h; ESP32-S3 with 16 MB flash; Linux:
    /// `MaxNodes` in config.yaml, variants/native/portduino/variant.h).
    pub fn capacity(self, version: Version) -> usize {
        let develop = version >= (2, 8, 0);
        match self {
            Hw::Nrf52 | Hw::Esp32 if develop => 120,
            Hw::Nrf52 => 80,
            Hw::Esp32 => 100,
            Hw::Esp32s3 => 250,
            Hw::Linux => 200,
        }
    }

    /// `WARM_NODE_COUNT` (mesh/mesh-pb-constants.h, develop): the warm tier's slots. An
    /// ESP32-S3 here is a Heltec V3, without PSRAM; with PSRAM it would be 2000.
    pub fn warm_capacity(self) -> usize {
        match self {
            Hw::Nrf52 | Hw::Esp32 => 100,
            Hw::Esp32s3 => 150,
            Hw::Linux => 2000,
        }
    }

    /// `MAX_RX_TOPHONE` (mesh/mesh-pb-constants.h): frames waiting for the client. Portduino
    /// uses `maxtophone`.
    pub fn client_queue(self, version: Version) -> usize {
        let develop = version >= (2, 8, 0);
        match self {
            Hw::Esp32 => 8,
            Hw::Linux => 100,
            Hw::Nrf52 if develop => 16,
            Hw::Nrf52 | Hw::Esp32s3 => 32,
        }
    }

    /// What the radio reports as its hardware (`User.hw_model`, `metadata.hw_model`).
    pub fn hw_model(self) -> HardwareModel {
        match self {
            Hw::Nrf52 => HardwareModel::Rak4631,
            Hw::Esp32 => HardwareModel::Tbeam,
            Hw::Esp32s3 => HardwareModel::HeltecV3,
            Hw::Linux => HardwareModel::Portduino,
        }
    }

    /// `my_info.pio_env`: the build environment.
    pub fn pio_env(self) -> &'static str {
        match self {
            Hw::Nrf52 => "rak4631",
            Hw::Esp32 => "tbeam",
            Hw::Esp32s3 => "heltec-v3",
            Hw::Linux => "native",
        }
    }
}

/// A word for a profile (firmware, hardware, role) the simulated radio does not know; each
/// quotes it and says what would do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("{0:?} is not a hardware family (nrf52, esp32, esp32s3, linux)")]
    Hw(String),
    #[error("{0:?} is not a role (client, client_base, router)")]
    Role(String),
    #[error("{0:?} is not a firmware version (like 2.7.26 or 2.8)")]
    Firmware(String),
}

impl FromStr for Hw {
    type Err = ProfileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Hw::ALL
            .into_iter()
            .find(|h| h.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| ProfileError::Hw(s.to_owned()))
    }
}

impl fmt::Display for Hw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The radio's own device role, as far as it changes the client API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SimRole {
    #[default]
    Client,
    ClientBase,
    Router,
}

impl SimRole {
    pub fn role(self) -> Role {
        match self {
            SimRole::Client => Role::Client,
            SimRole::ClientBase => Role::ClientBase,
            SimRole::Router => Role::Router,
        }
    }
}

impl FromStr for SimRole {
    type Err = ProfileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "client" => Ok(SimRole::Client),
            "client_base" => Ok(SimRole::ClientBase),
            "router" => Ok(SimRole::Router),
            _ => Err(ProfileError::Role(s.to_owned())),
        }
    }
}

/// A firmware version as given on the command line: `2.7.26`, `2.8`, `2.7.15.567b8ea`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    pub version: Version,
    /// What `metadata.firmware_version` says.
    pub reported: String,
}

impl FromStr for Firmware {
    type Err = ProfileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ProfileError::Firmware(s.to_owned());
        let mut parts = s.trim().split('.');
        let mut number = || -> Result<Option<u32>, ProfileError> {
            match parts.next() {
                None => Ok(None),
                Some(p) => p.parse().map(Some).map_err(|_| bad()),
            }
        };
        let major = number()?.ok_or_else(bad)?;
        let minor = number()?.ok_or_else(bad)?;
        // A build suffix (`.567b8ea`, `.sim`) may follow the patch number.
        let patch = s
            .trim()
            .split('.')
            .nth(2)
            .map_or(Ok(0), |p| p.parse::<u32>().map_err(|_| bad()))?;
        let version = (major, minor, patch);
        let reported = if s.trim().split('.').count() >= 4 {
            s.trim().to_owned()
        } else {
            format!("{major}.{minor}.{patch}.sim")
        };
        Ok(Firmware { version, reported })
    }
}

/// Everything the simulated radio needs to know to behave like one firmware on one board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub firmware: Firmware,
    pub hw: Hw,
    pub role: SimRole,
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            firmware: Firmware {
                version: (2, 7, 26),
                reported: "2.7.26.sim".into(),
            },
            hw: Hw::default(),
            role: SimRole::default(),
        }
    }
}

impl Profile {
    pub fn new(firmware: &str, hw: Hw, role: SimRole) -> Result<Self, ProfileError> {
        Ok(Self {
            firmware: firmware.parse()?,
            hw,
            role,
        })
    }

    /// Whether this firmware has `rule`.
    pub fn has(&self, rule: Rule) -> bool {
        let Row { since, until, .. } = rule.row();
        self.firmware.version >= since && until.is_none_or(|until| self.firmware.version <= until)
    }

    /// The firmware file a rule comes from, for log lines.
    pub fn source(rule: Rule) -> &'static str {
        rule.row().source
    }

    pub fn capacity(&self) -> usize {
        self.hw.capacity(self.firmware.version)
    }

    pub fn client_queue(&self) -> usize {
        self.hw.client_queue(self.firmware.version)
    }

    pub fn is_client_base(&self) -> bool {
        self.role == SimRole::ClientBase
    }

    /// How the NodeDB treats its nodes on this profile: add_contact, NodeInfo heard, operator
    /// decisions.
    pub fn nodedb_rules(&self) -> NodeDbRules {
        NodeDbRules {
            stored_key: self.stored_key(),
            always_verified: self.has(Rule::ContactAlwaysVerified),
            verified_keeps_key: self.has(Rule::VerifiedKeepsItsKey),
            favourite: !(self.is_client_base() && self.has(Rule::ClientBaseNoFavourite)),
            should_ignore: self.has(Rule::ContactShouldIgnore),
            refresh_last_heard: self.has(Rule::ContactRefreshesLastHeard)
                || (self.is_client_base() && self.has(Rule::ClientBaseNoFavourite)),
            ignore_unfavourites: self.has(Rule::ClientBaseNoFavourite),
            ignore_erases_key: !self.has(Rule::IgnoreKeepsKey),
            protected_cap: self.has(Rule::ProtectedCap),
            sanitize_utf8: self.has(Rule::Utf8Validated),
            warm_capacity: self.warm_capacity(),
            admission_throttle: self.has(Rule::FullAdmissionThrottle),
        }
    }

    /// The warm tier's slots: none before 2.8.
    pub fn warm_capacity(&self) -> usize {
        if self.has(Rule::WarmTier) {
            self.hw.warm_capacity()
        } else {
            0
        }
    }

    /// Whether this gateway keeps `hop_limit` for packets relayed by a favourite router
    /// (Router.cpp shouldDecrementHopLimit): only on a router role. The simulator relays
    /// nothing; the rule is here so that the hazard has its row.
    pub fn favourite_relays_keep_hops(&self) -> bool {
        matches!(self.role, SimRole::Router | SimRole::ClientBase)
            && self.has(Rule::FavouriteRelayKeepsHops)
    }

    /// What a NodeInfo heard on the mesh does to a stored key (NodeDB.cpp updateUser).
    pub fn stored_key(&self) -> StoredKey {
        if self.has(Rule::KeyMismatchDropped) {
            StoredKey::MismatchDropped
        } else if self.has(Rule::KeylessNodeInfoKeepsKey) {
            StoredKey::Copied
        } else if self.has(Rule::NodeInfoKeepsKey) {
            StoredKey::KeylessErases
        } else {
            StoredKey::Replaced
        }
    }

    /// What the radio does when a new node arrives and nothing can be evicted.
    pub fn when_full(&self) -> WhenFull {
        if self.has(Rule::RefuseWhenFull) {
            WhenFull::Refuse
        } else {
            WhenFull::Crash
        }
    }

    /// A line for logs: `firmware 2.7.26.sim on nrf52 (capacity 80, client queue 32)`.
    pub fn describe(&self, capacity: usize) -> String {
        format!(
            "firmware {} on {} as {:?} (NodeDB capacity {capacity}, client queue {})",
            self.firmware.reported,
            self.hw,
            self.role,
            self.client_queue()
        )
    }
}

/// How the NodeDB treats the nodes it stores (NodeDB.cpp addFromContact and updateUser,
/// AdminModule.cpp).
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent firmware switches, each a row of the version table"
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeDbRules {
    /// What a NodeInfo heard on the mesh does to a stored key.
    pub stored_key: StoredKey,
    pub always_verified: bool,
    pub verified_keeps_key: bool,
    pub favourite: bool,
    /// `should_ignore` ignores the node (2.6.12+); before, the flag is not read.
    pub should_ignore: bool,
    pub refresh_last_heard: bool,
    /// `should_ignore` also unfavourites (2.7.14+).
    pub ignore_unfavourites: bool,
    /// set_ignored_node and `should_ignore` zero the key (until 2.7.x).
    pub ignore_erases_key: bool,
    /// Protected entries capped at MAX − 2 (2.8).
    pub protected_cap: bool,
    /// Names go through sanitizeUtf8 (2.7.23+).
    pub sanitize_utf8: bool,
    /// Slots of the warm tier for evicted nodes (2.8; 0 before).
    pub warm_capacity: usize,
    /// A full NodeDB admits a new node from a packet at most once per 2 s (2.8).
    pub admission_throttle: bool,
}

impl Default for NodeDbRules {
    fn default() -> Self {
        Profile::default().nodedb_rules()
    }
}

/// What a NodeInfo heard on the mesh does to the key stored for its node (NodeDB.cpp
/// updateUser). Whatever the version, a node without a stored key learns the NodeInfo's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredKey {
    /// Before 2.5.0 (no PKI): the User is stored as received.
    Replaced,
    /// 2.5.0 – 2.6.2: a different key is overwritten with the stored one, but a NodeInfo
    /// without a key is stored as received and erases the stored key.
    KeylessErases,
    /// 2.6.3 – 2.7.5: the stored key is copied into the incoming User, keyed or not; the names
    /// are taken.
    Copied,
    /// 2.7.6+: a NodeInfo with a different key, or none, is dropped whole.
    MismatchDropped,
}

/// What a full NodeDB with nothing evictable does (NodeDB.cpp getOrCreateMeshNode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// 2.7.x: `meshNodes->at(numMeshNodes++)` past the end; the radio aborts and reboots.
    Crash,
    /// 2.8: the new node is refused.
    Refuse,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(v: &str) -> Profile {
        Profile::new(v, Hw::Nrf52, SimRole::Client).expect("valid version")
    }

    #[test]
    fn add_contact_and_nodes_only_exist_from_2_6_8() {
        // AdminModule.cpp / PhoneAPI.cpp: neither exists in 2.6.7.
        assert!(!profile("2.6.7").has(Rule::AddContact));
        assert!(!profile("2.6.7").has(Rule::NodesOnlyDownload));
        assert!(profile("2.6.8").has(Rule::AddContact));
        assert!(profile("2.6.8").has(Rule::NodesOnlyDownload));
        assert!(!profile("2.5.6").has(Rule::AddContact));
    }

    #[test]
    fn contacts_are_always_verified_from_2_6_8_to_2_7_11_only() {
        // NodeDB.cpp addFromContact.
        // 2.6.8 itself does not set the bit; 2.6.9 (#6858) does.
        assert!(!profile("2.6.8").nodedb_rules().always_verified);
        assert!(profile("2.6.9").nodedb_rules().always_verified);
        assert!(profile("2.7.11").nodedb_rules().always_verified);
        assert!(!profile("2.7.12").nodedb_rules().always_verified);
        assert!(profile("2.7.12").nodedb_rules().verified_keeps_key);
        assert!(!profile("2.7.11").nodedb_rules().verified_keeps_key);
    }

    #[test]
    fn should_ignore_is_read_from_2_6_12_only() {
        // NodeDB.cpp addFromContact (#7044).
        assert!(!profile("2.6.8").nodedb_rules().should_ignore);
        assert!(!profile("2.6.11").nodedb_rules().should_ignore);
        assert!(profile("2.6.12").nodedb_rules().should_ignore);
    }

    #[test]
    fn client_base_favourites_route_from_2_7_10_on_and_are_not_made_from_2_7_14() {
        let base = |v| Profile::new(v, Hw::Esp32, SimRole::ClientBase).expect("valid");
        assert!(base("2.7.10").has(Rule::ClientBaseFavouriteRoutes));
        // FloodingRouter.cpp still has it on 2.7.26 and develop: favourites made by hand
        // (set_favorite_node) route.
        assert!(base("2.7.26").has(Rule::ClientBaseFavouriteRoutes));
        assert!(base("2.8").has(Rule::ClientBaseFavouriteRoutes));
        assert!(base("2.7.13").nodedb_rules().favourite);
        assert!(!base("2.7.14").nodedb_rules().favourite);
        assert!(!base("2.7.9").has(Rule::ClientBaseFavouriteRoutes));
        // A plain client favourites on every version with add_contact.
        assert!(profile("2.7.26").nodedb_rules().favourite);
    }

    #[test]
    fn favourite_routers_keep_the_hop_limit_on_router_roles_from_2_7_11() {
        // Router.cpp shouldDecrementHopLimit: the gateway's own role must be a router one.
        let as_role = |v, role| Profile::new(v, Hw::Esp32, role).expect("valid");
        assert!(as_role("2.7.11", SimRole::Router).favourite_relays_keep_hops());
        assert!(as_role("2.7.26", SimRole::ClientBase).favourite_relays_keep_hops());
        assert!(as_role("2.8", SimRole::Router).favourite_relays_keep_hops());
        assert!(!as_role("2.7.10", SimRole::Router).favourite_relays_keep_hops());
        assert!(!as_role("2.7.26", SimRole::Client).favourite_relays_keep_hops());
        // First match by last byte up to 2.7.26; develop wants the byte unambiguous.
        assert!(profile("2.7.26").has(Rule::FavouriteRelayFirstMatch));
        assert!(!profile("2.8").has(Rule::FavouriteRelayFirstMatch));
    }

    #[test]
    fn the_text_limit_exists_from_2_7_0_with_a_notification_until_2_7_3_then_a_routing_error() {
        // PhoneAPI.cpp handleToRadioPacket (#7139, 2.7.0.705515a).
        for (firmware, limited, notice, error) in [
            ("2.6.13", false, false, false),
            ("2.7.0.705515a", true, true, false),
            ("2.7.3", true, true, false),
            ("2.7.4", true, false, true),
            ("2.8", true, false, true),
        ] {
            let p = profile(firmware);
            assert_eq!(p.has(Rule::TextRateLimit), limited, "{firmware}");
            assert_eq!(p.has(Rule::PositionRateLimit), limited, "{firmware}");
            assert_eq!(p.has(Rule::TextRateLimitNotice), notice, "{firmware}");
            assert_eq!(p.has(Rule::TextRateLimitError), error, "{firmware}");
        }
    }

    #[test]
    fn heartbeat_nonce_1_broadcasts_the_own_nodeinfo_from_2_7_23() {
        assert!(!profile("2.7.22").has(Rule::HeartbeatNodeInfoPing));
        assert!(profile("2.7.23").has(Rule::HeartbeatNodeInfoPing));
        assert!(profile("2.8").has(Rule::HeartbeatNodeInfoPing));
    }

    #[test]
    fn a_nodeinfo_keeps_the_stored_key_from_2_5_0_and_is_dropped_on_mismatch_from_2_7_6() {
        // NodeDB.cpp updateUser: the copy of the stored key (2.5.0), the keyless fix (#6372,
        // 2.6.3), the mismatch drop (#7652, 2.7.6).
        assert_eq!(profile("2.4.3").stored_key(), StoredKey::Replaced);
        assert_eq!(profile("2.5.0").stored_key(), StoredKey::KeylessErases);
        assert_eq!(profile("2.6.2").stored_key(), StoredKey::KeylessErases);
        assert_eq!(profile("2.6.3").stored_key(), StoredKey::Copied);
        assert_eq!(profile("2.7.5").stored_key(), StoredKey::Copied);
        assert_eq!(profile("2.7.6").stored_key(), StoredKey::MismatchDropped);
        assert_eq!(profile("2.8").stored_key(), StoredKey::MismatchDropped);
    }

    #[test]
    fn favourite_and_ignore_decisions_restart_the_lora_chip_up_to_2_7_26_only() {
        // MeshService.cpp reloadConfig: develop reconfigures the radio only for LoRa config
        // and channel saves (#11146).
        assert!(profile("2.5.0").has(Rule::FavouriteRestartsLora));
        assert!(profile("2.7.26").has(Rule::FavouriteRestartsLora));
        assert!(!profile("2.8").has(Rule::FavouriteRestartsLora));
    }

    #[test]
    fn a_full_nodedb_crashes_2_7_and_refuses_on_2_8() {
        assert_eq!(profile("2.7.26").when_full(), WhenFull::Crash);
        assert_eq!(profile("2.7.4").when_full(), WhenFull::Crash);
        assert_eq!(profile("2.8").when_full(), WhenFull::Refuse);
    }

    #[test]
    fn capacity_and_client_queue_follow_the_hardware() {
        // mesh-pb-constants.h MAX_NUM_NODES and MAX_RX_TOPHONE.
        assert_eq!(profile("2.7.26").capacity(), 80);
        assert_eq!(profile("2.8").capacity(), 120);
        let esp32 = Profile::new("2.7.4", Hw::Esp32, SimRole::Client).expect("valid");
        assert_eq!((esp32.capacity(), esp32.client_queue()), (100, 8));
        assert_eq!(profile("2.7.26").client_queue(), 32);
        let linux = Profile::new("2.7.26", Hw::Linux, SimRole::Client).expect("valid");
        assert_eq!((linux.capacity(), linux.client_queue()), (200, 100));
        let s3 = Profile::new("2.7.26", Hw::Esp32s3, SimRole::Client).expect("valid");
        assert_eq!((s3.capacity(), s3.client_queue()), (250, 32));
    }

    #[test]
    fn the_warm_tier_exists_on_2_8_with_slots_by_hardware() {
        // mesh-pb-constants.h WARM_NODE_COUNT (develop).
        assert_eq!(profile("2.7.26").warm_capacity(), 0);
        assert_eq!(profile("2.8").warm_capacity(), 100);
        let on = |hw| Profile::new("2.8", hw, SimRole::Client).expect("valid");
        assert_eq!(on(Hw::Esp32).warm_capacity(), 100);
        assert_eq!(on(Hw::Esp32s3).warm_capacity(), 150);
        assert_eq!(on(Hw::Linux).warm_capacity(), 2000);
        assert!(profile("2.8").nodedb_rules().admission_throttle);
        assert!(!profile("2.7.26").nodedb_rules().admission_throttle);
    }

    #[test]
    fn versions_parse_with_or_without_patch_and_suffix() {
        let f: Firmware = "2.8".parse().expect("valid");
        assert_eq!((f.version, f.reported.as_str()), ((2, 8, 0), "2.8.0.sim"));
        let f: Firmware = "2.7.15.567b8ea".parse().expect("valid");
        assert_eq!(
            (f.version, f.reported.as_str()),
            ((2, 7, 15), "2.7.15.567b8ea")
        );
        assert!("two".parse::<Firmware>().is_err());
        assert!("2".parse::<Firmware>().is_err());
        assert!("2.x.1".parse::<Firmware>().is_err());
    }
}
