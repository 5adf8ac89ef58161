//! The need-driven sync plan: which keys deserve a slot on the radio, which of keysync's own
//! favourites to give back, and in what order — all pure, on plain values.
//!
//! The radio is a small cache and the store is the truth (PROTOCOL.md § When the NodeDB is
//! full): every add_contact makes the node a favourite that is never evicted (on 2.6.9 – 2.7.11
//! also "manually verified"), and a 2.7.x radio whose NodeDB is all protected crashes at the
//! next unknown node. So keysync keeps its own protected entries within a **slot budget** that
//! always leaves evictable room, fills the slots with a **working set** (pinned nodes, nodes
//! that need a key now, direct-message partners, then the most recently heard), and spends at
//! most a **flash budget** of writes per hour.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::SystemTime;

use meshtastic::protobufs::{HardwareModel, User};

use super::radio::{Contact, PublicKey, firmware_version, node_id};
use super::store::TrustedKey;

/// A node as the radio's NodeDB holds it (from a node list, kept current by live packets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RadioNode {
    pub key: Option<PublicKey>,
    pub favourite: bool,
    pub ignored: bool,
    pub verified: bool,
    /// The radio's own user record of the node, when it has one: what a push must keep.
    pub user: Option<User>,
}

impl RadioNode {
    /// Eviction may not take it (NodeDB.cpp getOrCreateMeshNode).
    pub fn is_protected(&self) -> bool {
        self.favourite || self.ignored || self.verified
    }
}

/// The radio's NodeDB as last seen: node number → what it holds.
pub type Mirror = HashMap<u32, RadioNode>;

/// Always leave at least this share of the NodeDB evictable (and at least [`MIN_HEADROOM`]).
const HEADROOM_SHARE: usize = 5;
const MIN_HEADROOM: usize = 4;

/// How many protected entries keysync may hold on the radio, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub capacity: usize,
    /// Entries that must stay evictable: the protected count never goes above
    /// `capacity − headroom`.
    pub headroom: usize,
    /// Protected entries keysync did not make (the operator's favourites, ignored nodes,
    /// verified keys).
    pub others_protected: usize,
    /// Slots keysync may fill with its own favourites.
    pub slots: usize,
    /// Set when a requested `--key-slots` was clamped: says why.
    pub clamped: Option<String>,
}

impl Budget {
    /// Default: at most half the capacity minus what others protect; `key_slots` overrides,
    /// clamped so that `capacity − headroom` is never passed.
    pub fn new(capacity: usize, others_protected: usize, key_slots: Option<usize>) -> Self {
        let headroom = (capacity / HEADROOM_SHARE).max(MIN_HEADROOM).min(capacity);
        let ceiling = capacity
            .saturating_sub(headroom)
            .saturating_sub(others_protected);
        let default = (capacity / 2).saturating_sub(others_protected).min(ceiling);
        let (slots, clamped) = match key_slots {
            Some(asked) if asked > ceiling => (
                ceiling,
                Some(format!(
                    "--key-slots {asked} clamped to {ceiling}: capacity {capacity} − headroom {headroom} − {others_protected} protected by others"
                )),
            ),
            Some(asked) => (asked, None),
            None => (default, None),
        };
        Self {
            capacity,
            headroom,
            others_protected,
            slots,
            clamped,
        }
    }

    /// The most protected entries the radio may hold.
    pub fn protected_ceiling(&self) -> usize {
        self.capacity.saturating_sub(self.headroom)
    }
}

/// Why keysync pushes nothing to this radio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// Firmware before 2.6.8 has no add_contact.
    OldFirmware(String),
    /// `security.is_managed`: admin messages from the client are ignored.
    Managed,
    /// Pushes were sent and never landed: the radio ignores them.
    PushesIgnored(usize),
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OldFirmware(v) => write!(
                f,
                "firmware {v} cannot take keys from a client (needs 2.6.8): watching only"
            ),
            Self::Managed => f.write_str(
                "the radio is managed (security.is_managed): it ignores add_contact, so nothing is pushed",
            ),
            Self::PushesIgnored(n) => write!(
                f,
                "the radio ignored the last {n} pushes (managed, or refusing contacts): pushing stopped until a forced sync"
            ),
        }
    }
}

/// What the radio's firmware and hardware mean for pushes.
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent facts about one radio, each from its own source"
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RadioTraits {
    pub firmware: String,
    /// NodeDB capacity, and where the figure comes from.
    pub capacity: usize,
    pub capacity_source: String,
    /// Whether the radio surely holds at least `capacity` entries. Not so on Linux native,
    /// whose `MaxNodes` the API does not tell: there a new node may evict instead of adding an
    /// entry, so the invariant counts no growth.
    pub capacity_sure: bool,
    /// add_contact and nodes-only downloads exist (≥ 2.6.8).
    pub can_take_contacts: bool,
    /// add_contact also marks the key manually verified (2.6.9 – 2.7.11).
    pub marks_verified: bool,
    /// add_contact makes the node favourite (not on a CLIENT_BASE from 2.7.14).
    pub favourites: bool,
    pub managed: bool,
    /// remove_favorite_node restarts the LoRa chip (every release 2.6.8 – 2.7.x: saveChanges →
    /// reloadConfig → RadioInterface::reconfigure; not on 2.8): releases are rationed.
    pub release_restarts_lora: bool,
    /// A ROUTER, ROUTER_LATE or CLIENT_BASE gateway on 2.7.11+ keeps hop_limit for packets
    /// relayed by a favourite router matched by the last byte of its number: favourites touch
    /// routing there, so only pinned nodes and DM partners get slots.
    pub router_role: bool,
    /// develop (2.8): an evicted node's key stays in the warm tier, protected entries are
    /// capped at MAX − 2 and a release costs only a flash write. keysync pushes, then gives
    /// the favourite back once the push has served (push and release).
    pub warm_tier: bool,
}

impl RadioTraits {
    /// From the handshake: firmware version, hardware model, build environment, role and
    /// `security.is_managed`; `capacity_override` is `--radio-capacity`.
    pub fn new(
        firmware: &str,
        hw_model: i32,
        pio_env: &str,
        client_base: bool,
        managed: bool,
        capacity_override: Option<usize>,
    ) -> Self {
        let version = firmware_version(firmware);
        let at_least = |v: (u32, u32, u32)| version.is_some_and(|have| have >= v);
        let develop = at_least((2, 8, 0));
        let (capacity, capacity_source) = match capacity_override {
            Some(n) => (n, "--radio-capacity".to_owned()),
            None => capacity_of(hw_model, pio_env, develop),
        };
        let capacity_sure = capacity_override.is_some() || !is_linux_native(hw_model, pio_env);
        Self {
            firmware: firmware.to_owned(),
            capacity,
            capacity_source,
            capacity_sure,
            can_take_contacts: at_least((2, 6, 8)),
            marks_verified: at_least((2, 6, 9)) && !at_least((2, 7, 12)),
            favourites: !(client_base && at_least((2, 7, 14))),
            managed,
            release_restarts_lora: at_least((2, 6, 8)) && !develop,
            router_role: false,
            warm_tier: develop,
        }
    }

    /// With the gateway's own role (ROUTER, ROUTER_LATE or CLIENT_BASE is a router role from
    /// 2.7.10 on CLIENT_BASE, 2.7.11 on the others; NextHopRouter.cpp, FloodingRouter.cpp).
    #[must_use]
    pub fn with_router_role(self, router_role: bool) -> Self {
        let version = firmware_version(&self.firmware);
        let since = (2, 7, 10);
        Self {
            router_role: router_role && version.is_some_and(|v| v >= since),
            ..self
        }
    }

    /// Why nothing may be pushed, if so.
    pub fn blocked(&self) -> Option<Blocked> {
        if !self.can_take_contacts {
            let shown = if self.firmware.is_empty() {
                "unknown".to_owned()
            } else {
                self.firmware.clone()
            };
            return Some(Blocked::OldFirmware(shown));
        }
        self.managed.then_some(Blocked::Managed)
    }
}

/// meshtasticd: its NodeDB size is config.yaml's `General.MaxNodes`.
fn is_linux_native(hw_model: i32, pio_env: &str) -> bool {
    hw_model == HardwareModel::Portduino as i32 || pio_env == "native"
}

/// MAX_NUM_NODES by board family (firmware mesh/mesh-pb-constants.h). ESP32-S3 boards hold
/// 100, 200 or 250 by flash size, which the client API does not tell: assume the smallest.
fn capacity_of(hw_model: i32, pio_env: &str, develop: bool) -> (usize, String) {
    use HardwareModel as H;
    let model = HardwareModel::try_from(hw_model).unwrap_or(H::Unset);
    let name = model.as_str_name();
    let nrf52 = [
        H::Rak4631,
        H::TEcho,
        H::TEchoPlus,
        H::TEchoLite,
        H::NanoG2Ultra,
        H::WioWm1110,
        H::Rak2560,
        H::Nrf52Unknown,
        H::Nrf52840Pca10059,
        H::Nrf52PromicroDiy,
        H::HeltecMeshNodeT114,
        H::TrackerT1000E,
        H::WismeshTap,
        H::WismeshTapV2,
        H::WismeshTag,
        H::XiaoNrf52Kit,
        H::ThinknodeM1,
        H::ThinknodeM3,
        H::SeeedSolarNode,
        H::SeeedWioTrackerL1,
        H::SeeedWioTrackerL1Eink,
        H::HeltecMeshPocket,
        H::HeltecMeshSolar,
        H::Canaryone,
        H::Rak3401,
        // src/platform/nrf52/architecture.h names these too.
        H::Ppr,
        H::TwcMeshV4,
        H::Me25ls014y10td,
        H::Ms24sf1,
        H::Meshlink,
        H::MuziBase,
        H::MuziR1Neo,
        H::ThinknodeM4,
        H::ThinknodeM6,
    ];
    let esp32s3 = [
        H::HeltecWslV3,
        H::HeltecV4,
        H::TloraT3S3,
        H::LilygoTbeamS3Core,
        H::StationG2,
        H::HeltecWirelessTracker,
        H::HeltecWirelessTrackerV10,
        H::HeltecWirelessTrackerV2,
        H::HeltecWirelessPaper,
        H::HeltecWirelessPaperV10,
        H::TDeck,
        H::TDeckPro,
        H::TWatchS3,
        H::SensecapIndicator,
        H::SeeedXiaoS3,
        H::HeltecVisionMasterT190,
        H::HeltecVisionMasterE213,
        H::HeltecVisionMasterE290,
        H::Esp32S3Pico,
        H::TLoraPager,
        H::ThinknodeM2,
        H::ThinknodeM5,
        H::Rak3312,
    ];
    if is_linux_native(hw_model, pio_env) {
        return (
            200,
            "Linux native: MaxNodes is not told over the API (200 by default; --radio-capacity sets it)".into(),
        );
    }
    if nrf52.contains(&model) || pio_env.starts_with("rak4631") || pio_env.contains("nrf52") {
        let n = if develop { 120 } else { 80 };
        return (n, format!("{name}: nRF52"));
    }
    // STM32WL (mesh-pb-constants.h): 10.
    if [H::Rak3172, H::WioE5].contains(&model) {
        return (10, format!("{name}: STM32WL"));
    }
    // An ESP32-S3 with 8 MB of flash: 200 (≥ 7 MB).
    if model == H::HeltecV3 {
        return (200, format!("{name}: ESP32-S3 with 8 MB of flash"));
    }
    if esp32s3.contains(&model) {
        return (
            100,
            format!("{name}: ESP32-S3, flash size unknown, assuming the smallest"),
        );
    }
    if model == H::Unset {
        return (
            80,
            "unknown hardware: assuming 80 (set --radio-capacity)".into(),
        );
    }
    let n = if develop { 120 } else { 100 };
    (n, format!("{name}: ESP32 or other"))
}

/// Where keysync's own favourites stand on the radio now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Still protected on the radio because of keysync.
    pub held: BTreeSet<u32>,
    /// Gone from the node list although a favourite cannot be evicted: someone removed them.
    pub removed: Vec<u32>,
    /// Still listed but no longer protected: someone unfavourited them.
    pub released_by_others: Vec<u32>,
    /// Every one of them vanished together with nearly the whole NodeDB: a reset, not removals.
    pub reset: bool,
}

/// Compares keysync's favourites with the node list.
pub fn reconcile(ours: &BTreeSet<u32>, mirror: &Mirror, capacity: usize) -> Reconciled {
    let mut r = Reconciled::default();
    for num in ours {
        match mirror.get(num) {
            Some(node) if node.favourite || node.verified => {
                r.held.insert(*num);
            }
            Some(_) => r.released_by_others.push(*num),
            None => r.removed.push(*num),
        }
    }
    let nearly_empty = mirror.len() <= (capacity / 10).max(2);
    if !r.removed.is_empty() && r.held.is_empty() && nearly_empty {
        r.reset = true;
    }
    r
}

/// One step the sync takes, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `remove_favorite_node`: give one of keysync's slots back.
    Release(u32),
    /// `add_contact` with the trusted key.
    Push(Contact),
}

impl Op {
    pub fn num(&self) -> u32 {
        match self {
            Self::Release(n) => *n,
            Self::Push(c) => c.num,
        }
    }
}

/// Everything the planner looks at.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub trusted: &'a [TrustedKey],
    /// Nodes with a key waiting for the operator.
    pub pending: &'a BTreeSet<u32>,
    pub mirror: &'a Mirror,
    pub own: u32,
    pub traits: &'a RadioTraits,
    pub key_slots: Option<usize>,
    /// Keysync's favourites that the radio still protects (see [`reconcile`]).
    pub ours: &'a BTreeSet<u32>,
    /// Nodes not to push now: removed by someone and not heard since, or backing off after
    /// the radio lost a push.
    pub held_back: &'a BTreeSet<u32>,
    /// Nodes that need their key now (heard without one, a failed DM, a client's DM): first.
    pub urgent: &'a [u32],
    /// Flash writes left in this hour.
    pub flash_left: usize,
    pub max_pushes: usize,
    /// Pushing stopped because earlier pushes never landed.
    pub pushes_ignored: Option<usize>,
    /// A DM partner exchanged a direct message with the gateway since then (`--dm-window`).
    pub partner_since: SystemTime,
    /// Slots that may still be given back this hour (`--max-releases` where a release
    /// restarts the LoRa chip); `None`: no such limit.
    pub releases_left: Option<usize>,
    /// A node keysync pushed since then keeps its slot: no push and release within the hour
    /// (below 2.8), within a short hold on 2.8.
    pub hold_since: SystemTime,
    /// 2.8: keys pushed since the radio's NodeDB was last reset are in its warm tier even when
    /// evicted: not pushed again but for a need. `None` below 2.8.
    pub warm_since: Option<SystemTime>,
    /// Entries the radio surely holds now (own node included), when known better than the
    /// mirror's length: a run's pushes add new nodes to its mirror even where the radio made
    /// room for them by evicting another.
    pub held: Option<usize>,
}

/// What a sync will do and what it leaves, with the reasons counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub budget: Budget,
    pub ops: Vec<Op>,
    /// The nodes that deserve a slot, best first.
    pub working: Vec<u32>,
    /// Trusted keys the radio holds.
    pub present: usize,
    /// Trusted keys outside the working set that the radio lacks: a normal state.
    pub stored_only: usize,
    /// Nodes whose key waits for the operator (nothing new is pushed for them; the trusted key
    /// goes back only where the radio holds none).
    pub conflicts: Vec<u32>,
    /// Nodes the radio's operator ignored: never pushed.
    pub ignored: usize,
    /// 2.8: keys in the radio's warm tier (pushed since its last reset, evicted since): not
    /// pushed again but for a need.
    pub warm: usize,
    pub held_back: usize,
    /// Pushes the working set needs that wait: no flash budget left, over `max_pushes`, or no
    /// slot to free.
    pub deferred_flash: usize,
    pub deferred_max: usize,
    pub deferred_slots: usize,
    pub blocked: Option<Blocked>,
    /// Protected entries on the radio after the plan, as far as keysync can tell.
    pub protected_after: usize,
    /// Entries the radio surely holds after the plan: the invariant keeps `protected_after`
    /// at most half of it.
    pub held_after: usize,
    /// A router-role gateway: slots for pinned nodes, needs and DM partners only.
    pub router_role: bool,
}

impl Plan {
    #[cfg(test)]
    pub fn pushes(&self) -> usize {
        self.ops.iter().filter(|o| matches!(o, Op::Push(_))).count()
    }

    #[cfg(test)]
    pub fn releases(&self) -> usize {
        self.ops.len() - self.pushes()
    }

    pub fn deferred(&self) -> usize {
        self.deferred_flash + self.deferred_max + self.deferred_slots
    }
}

/// How a trusted key stands against the radio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Present,
    Missing,
    /// The radio holds another key.
    Differs,
    Ignored,
}

fn standing(key: &TrustedKey, mirror: &Mirror) -> Standing {
    match mirror.get(&key.num) {
        Some(n) if n.ignored => Standing::Ignored,
        Some(RadioNode {
            key: Some(held), ..
        }) if *held == key.key => Standing::Present,
        Some(RadioNode { key: Some(_), .. }) => Standing::Differs,
        _ => Standing::Missing,
    }
}

/// Whether a key may have a slot at all: pinned, needed now, a direct-message partner, or at
/// least heard here once. A key keysync only knows from the MQTT broker or its fleet (never
/// heard by this radio) stays in the store until one of those holds. On a router-role gateway
/// only pinned nodes, needs and DM partners within the window get slots.
fn has_claim(key: &TrustedKey, input: &PlanInput<'_>) -> bool {
    let partner = key.last_dm.is_some_and(|dm| dm >= input.partner_since);
    key.pinned
        || input.urgent.contains(&key.num)
        || partner
        || (!input.traits.router_role
            && (key.last_dm.is_some() || key.last_seen > SystemTime::UNIX_EPOCH))
}

/// The order of need: pinned, urgent, direct-message partners, then the most recently heard.
fn rank(key: &TrustedKey, urgent: &[u32]) -> (u8, std::cmp::Reverse<std::time::SystemTime>, u32) {
    let class = if key.pinned {
        0
    } else if urgent.contains(&key.num) {
        1
    } else if key.last_dm.is_some() {
        2
    } else {
        3
    };
    let recency = key
        .last_dm
        .map_or(key.last_seen, |dm| dm.max(key.last_seen));
    (class, std::cmp::Reverse(recency), key.num)
}

/// The contact to push: the radio's own user record of the node where it has one (so
/// `is_unmessagable`, `macaddr`, `is_licensed` and the names survive; add_contact replaces the
/// whole user), else the store's, always with the trusted key.
pub fn contact_for(key: &TrustedKey, radio: Option<&RadioNode>) -> Contact {
    let mut contact = key.contact();
    if let Some(user) = radio.and_then(|n| n.user.as_ref()) {
        if !user.long_name.is_empty() {
            contact.long_name.clone_from(&user.long_name);
        }
        if !user.short_name.is_empty() {
            contact.short_name.clone_from(&user.short_name);
        }
        if user.hw_model != 0 {
            contact.hw_model = user.hw_model;
        }
        contact.role = user.role;
        contact.is_unmessagable = user.is_unmessagable;
        contact.is_licensed = user.is_licensed;
        #[expect(
            deprecated,
            reason = "the firmware still stores it; a push must keep it"
        )]
        contact.macaddr.clone_from(&user.macaddr);
    }
    contact
}

/// Plans one sync: the working set, the slot budget, what to give back and what to push.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let protected_now = input
        .mirror
        .iter()
        .filter(|(num, n)| **num != input.own && n.is_protected())
        .count();
    let mut plan = Plan::start(input, protected_now);
    let mut candidates = classify(input, &mut plan);
    let ranked = working_set(input, &mut plan);
    let working: BTreeSet<u32> = plan.working.iter().copied().collect();
    candidates.sort_by_key(|k| rank(k, input.urgent));
    let (wanted, outside): (Vec<&TrustedKey>, Vec<&TrustedKey>) = candidates
        .into_iter()
        .partition(|k| working.contains(&k.num));
    plan.stored_only = outside.len();
    if plan.blocked.is_some() {
        plan.stored_only += wanted.len();
        return plan;
    }

    let releasable = releasable(input, &ranked, &working);
    let mut budget = Schedule::new(input, &plan.budget, releasable, protected_now);
    // Over budget already (the operator protected more since): give back down to it.
    while budget.over(0) && budget.flash > 0 && budget.release_one() {}
    if input.traits.warm_tier {
        budget.give_back_served(input);
    }
    fill(input, wanted, &mut budget, &mut plan);
    plan.protected_after = budget.protected;
    plan.held_after = budget.held;
    plan.ops = budget.ops;
    plan
}

impl Plan {
    /// A plan with nothing in it yet: the budget, and what blocks pushing, if anything.
    fn start(input: &PlanInput<'_>, protected_now: usize) -> Self {
        let traits = input.traits;
        let others_protected = protected_now.saturating_sub(input.ours.len());
        Self {
            budget: Budget::new(traits.capacity, others_protected, input.key_slots),
            ops: Vec::new(),
            working: Vec::new(),
            present: 0,
            stored_only: 0,
            conflicts: Vec::new(),
            ignored: 0,
            warm: 0,
            held_back: 0,
            deferred_flash: 0,
            deferred_max: 0,
            deferred_slots: 0,
            blocked: traits
                .blocked()
                .or_else(|| input.pushes_ignored.map(Blocked::PushesIgnored)),
            protected_after: protected_now,
            held_after: input.mirror.len(),
            router_role: traits.router_role,
        }
    }
}

/// The working set: every trusted key ranked, present ones included (a present key of a
/// needed node holds its place without costing a write), the best `slots` of them in
/// `plan.working`; the ranking.
fn working_set<'a>(input: &PlanInput<'a>, plan: &mut Plan) -> Vec<&'a TrustedKey> {
    let mut ranked: Vec<&TrustedKey> = input
        .trusted
        .iter()
        .filter(|k| k.num != input.own && standing(k, input.mirror) != Standing::Ignored)
        .filter(|k| has_claim(k, input))
        .collect();
    ranked.sort_by_key(|k| rank(k, input.urgent));
    plan.working = ranked
        .iter()
        .take(plan.budget.slots)
        .map(|k| k.num)
        .collect();
    ranked
}

/// Pushes the `wanted` keys the budget has room for, in rank order; what it cannot take is
/// counted as deferred (flash budget, pushes per run, slots).
fn fill(input: &PlanInput<'_>, wanted: Vec<&TrustedKey>, budget: &mut Schedule, plan: &mut Plan) {
    let traits = input.traits;
    let mirror = input.mirror;
    let protects = traits.favourites || traits.marks_verified;
    let mut pushes = 0;
    for key in wanted {
        if budget.flash == 0 {
            plan.deferred_flash += 1;
        } else if pushes == input.max_pushes {
            plan.deferred_max += 1;
        } else {
            // A node given back earlier in this plan is protected again by its push.
            let given_back = budget.ops.contains(&Op::Release(key.num));
            let adds = protects
                && (given_back || !mirror.get(&key.num).is_some_and(RadioNode::is_protected));
            let new = !mirror.contains_key(&key.num);
            if budget.make_room(adds, new) {
                budget.push(contact_for(key, mirror.get(&key.num)), adds, new);
                pushes += 1;
            } else {
                plan.deferred_slots += 1;
            }
        }
    }
}

/// Keysync's favourites outside the working set, least needed first: what can be given back.
/// On 2.6.9 – 2.7.11 the push also made them "verified", which no admin message undoes; and a
/// node the radio shows verified or ignored stays protected when its favourite goes: giving
/// those back frees nothing (PROTOCOL.md § add_contact, "Giving a slot back").
fn releasable(input: &PlanInput<'_>, ranked: &[&TrustedKey], working: &BTreeSet<u32>) -> Vec<u32> {
    if input.traits.marks_verified {
        return Vec::new();
    }
    let ranked_nums: BTreeSet<u32> = ranked.iter().map(|k| k.num).collect();
    // No push and release within the hour: a slot just filled is not the one given back.
    let pushed_since: BTreeSet<u32> = input
        .trusted
        .iter()
        .filter(|k| k.last_pushed.is_some_and(|t| t >= input.hold_since))
        .map(|k| k.num)
        .collect();
    let unranked = input
        .ours
        .iter()
        .copied()
        .filter(|n| !ranked_nums.contains(n));
    ranked
        .iter()
        .rev()
        .map(|k| k.num)
        .filter(|n| input.ours.contains(n))
        .chain(unranked)
        .filter(|n| !working.contains(n))
        // Only a favourite that nothing else protects frees an entry when given back.
        .filter(|n| {
            input
                .mirror
                .get(n)
                .is_some_and(|m| m.favourite && !m.verified && !m.ignored)
        })
        .filter(|n| !pushed_since.contains(n))
        .collect()
}

/// 2.8: a key pushed since the last NodeDB reset that the node list no longer shows (evicted)
/// is in the radio's warm tier; it goes again only for a need.
fn is_warm(key: &TrustedKey, input: &PlanInput<'_>) -> bool {
    let Some(since) = input.warm_since else {
        return false;
    };
    !input.mirror.contains_key(&key.num)
        && !input.urgent.contains(&key.num)
        && key.last_pushed.is_some_and(|t| t >= since)
}

/// 2.8: keysync's favourites to give back after their push has served: past the hold, not
/// pinned, and a favourite nothing else protects.
fn served(input: &PlanInput<'_>) -> Vec<u32> {
    let keys: HashMap<u32, &TrustedKey> = input.trusted.iter().map(|k| (k.num, k)).collect();
    input
        .ours
        .iter()
        .copied()
        .filter(|n| {
            keys.get(n)
                .is_none_or(|k| !k.pinned && k.last_pushed.is_none_or(|t| t < input.hold_since))
                && !input.urgent.contains(n)
        })
        .filter(|n| {
            input
                .mirror
                .get(n)
                .is_some_and(|m| m.favourite && !m.verified && !m.ignored)
        })
        .collect()
}

/// Counts where the trusted keys stand and returns those the radio lacks (or holds
/// differently) that may be pushed.
fn classify<'a>(input: &PlanInput<'a>, plan: &mut Plan) -> Vec<&'a TrustedKey> {
    let mut candidates = Vec::new();
    for key in input.trusted.iter().filter(|k| k.num != input.own) {
        let pending = input.pending.contains(&key.num);
        if pending {
            plan.conflicts.push(key.num);
        }
        match standing(key, input.mirror) {
            Standing::Present => plan.present += 1,
            Standing::Ignored => plan.ignored += 1,
            // The radio holds the key that waits for the operator: leave it to them.
            Standing::Differs if pending => {}
            Standing::Missing | Standing::Differs => {
                if input.held_back.contains(&key.num) {
                    plan.held_back += 1;
                } else if is_warm(key, input) {
                    plan.warm += 1;
                } else {
                    candidates.push(key);
                }
            }
        }
    }
    candidates
}

/// The writes of a plan as they are scheduled, with the counts they move.
struct Schedule {
    ops: Vec<Op>,
    /// keysync's favourites that may be given back, least needed first.
    releasable: std::collections::VecDeque<u32>,
    ours: usize,
    /// Protected entries on the radio (own node aside), anyone's.
    protected: usize,
    /// Entries the radio holds (own node included).
    held: usize,
    /// New entries the radio surely has room for: a new node pushed beyond them evicts one
    /// (an unprotected one, as the invariant keeps some) instead of adding to `held`.
    room: usize,
    flash: usize,
    /// Releases still allowed this hour (`None`: no limit).
    releases: Option<usize>,
    slots: usize,
    ceiling: usize,
}

/// The invariant that keeps any radio, whatever its size, from crashing at the next unknown
/// node: protected entries (own node aside) at most half of the entries it holds. A radio
/// whose capacity keysync does not know is safe by it alone; a full one always keeps
/// evictable entries.
pub fn within_invariant(protected: usize, held: usize) -> bool {
    2 * protected <= held
}

impl Schedule {
    /// Nothing scheduled yet: the counts as the radio holds them now.
    fn new(input: &PlanInput<'_>, budget: &Budget, releasable: Vec<u32>, protected: usize) -> Self {
        let mirror = input.mirror;
        let held = input.held.unwrap_or(mirror.len()).max(1);
        Self {
            ops: Vec::new(),
            releasable: releasable.into(),
            // keysync's favourites that the radio shows protected now (the list may be older).
            ours: input
                .ours
                .iter()
                .filter(|n| mirror.get(n).is_some_and(RadioNode::is_protected))
                .count(),
            protected,
            held,
            room: if input.traits.capacity_sure {
                input.traits.capacity.saturating_sub(held)
            } else {
                0
            },
            flash: input.flash_left,
            releases: input.releases_left,
            slots: budget.slots,
            ceiling: budget.protected_ceiling(),
        }
    }

    /// Whether `adding` more protected entries would pass a budget.
    fn over(&self, adding: usize) -> bool {
        self.ours + adding > self.slots || self.protected + adding > self.ceiling
    }

    /// Whether a push that protects one more node (a new one when `new`) keeps the invariant.
    fn safe(&self, new: bool) -> bool {
        within_invariant(self.protected + 1, self.held + usize::from(self.grows(new)))
    }

    /// Whether pushing a node makes the radio hold one more entry.
    fn grows(&self, new: bool) -> bool {
        new && self.room > 0
    }

    /// Gives one slot back; false when there is none to give.
    fn release_one(&mut self) -> bool {
        if self.releases == Some(0) {
            return false;
        }
        let Some(num) = self.releasable.pop_front() else {
            return false;
        };
        self.releases = self.releases.map(|n| n.saturating_sub(1));
        self.ops.push(Op::Release(num));
        self.flash -= 1;
        self.ours -= 1;
        self.protected -= 1;
        true
    }

    /// 2.8: a release costs one flash write and the warm tier keeps an evicted node's key:
    /// every favourite of keysync's that has served (past the hold), pinned nodes aside, goes
    /// back, so keysync holds almost no slots.
    fn give_back_served(&mut self, input: &PlanInput<'_>) {
        let released: BTreeSet<u32> = self.ops.iter().map(Op::num).collect();
        self.releasable = served(input)
            .into_iter()
            .filter(|n| !released.contains(n))
            .collect();
        while self.flash > 0 && self.release_one() {}
    }

    /// Frees a slot for a push that protects its node (keeping a write for the push itself):
    /// within the budget, and within the invariant on what the radio holds.
    fn make_room(&mut self, adds: bool, new: bool) -> bool {
        if !adds {
            return true;
        }
        while (self.over(1) || !self.safe(new)) && self.flash > 1 && self.release_one() {}
        !self.over(1) && self.safe(new)
    }

    fn push(&mut self, contact: Contact, adds: bool, new: bool) {
        self.ops.push(Op::Push(contact));
        self.flash -= 1;
        if self.grows(new) {
            self.held += 1;
            self.room -= 1;
        }
        if adds {
            self.ours += 1;
            self.protected += 1;
        }
    }
}

/// A line for logs and the Sync pane.
pub fn describe(plan: &Plan) -> String {
    let b = &plan.budget;
    let mut s = format!(
        "slots {} of capacity {} ({} protected by others, headroom {}); protected {} of {} held (at most half); working set {}, in radio {}, stored only {}",
        b.slots,
        b.capacity,
        b.others_protected,
        b.headroom,
        plan.protected_after,
        plan.held_after,
        plan.working.len(),
        plan.present,
        plan.stored_only
    );
    if plan.router_role {
        s.push_str("; router role: slots for pinned nodes and DM partners only");
    }
    if plan.warm > 0 {
        use fmt::Write as _;
        let _ = write!(s, "; in the radio's warm tier {}", plan.warm);
    }
    if plan.deferred() > 0 {
        use fmt::Write as _;
        let _ = write!(
            s,
            "; waiting: {} (flash budget {}, max pushes {}, no slot or over half protected {})",
            plan.deferred(),
            plan.deferred_flash,
            plan.deferred_max,
            plan.deferred_slots
        );
    }
    s
}

/// Names of nodes, for log lines.
pub fn ids(nums: &[u32]) -> String {
    nums.iter()
        .map(|n| node_id(*n))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    pub(super) fn key(num: u32, heard: u64) -> TrustedKey {
        TrustedKey {
            num,
            key: [u8::try_from(num % 250).unwrap_or(1) + 1; 32],
            long_name: format!("n{num}"),
            short_name: String::new(),
            hw_model: 0,
            role: 0,
            last_seen: SystemTime::UNIX_EPOCH + Duration::from_secs(heard),
            pinned: false,
            last_dm: None,
            last_pushed: None,
            flags: crate::radio::UserFlags::default(),
        }
    }

    fn traits(firmware: &str, capacity: usize) -> RadioTraits {
        RadioTraits::new(firmware, 0, "", false, false, Some(capacity))
    }

    fn held(key: &TrustedKey, favourite: bool) -> RadioNode {
        RadioNode {
            key: Some(key.key),
            favourite,
            ..RadioNode::default()
        }
    }

    struct Case {
        trusted: Vec<TrustedKey>,
        mirror: Mirror,
        traits: RadioTraits,
        ours: BTreeSet<u32>,
        held_back: BTreeSet<u32>,
        pending: BTreeSet<u32>,
        urgent: Vec<u32>,
        flash_left: usize,
        key_slots: Option<usize>,
    }

    /// The plan's input with the tests' defaults: no pending, held-back or ignored nodes, a
    /// flash budget of 60, DM partners since 100 s, a hold since 3600 s (Unix time).
    pub(super) fn input<'a>(
        trusted: &'a [TrustedKey],
        mirror: &'a Mirror,
        traits: &'a RadioTraits,
        ours: &'a BTreeSet<u32>,
        urgent: &'a [u32],
    ) -> PlanInput<'a> {
        PlanInput {
            trusted,
            pending: &EMPTY,
            mirror,
            own: 0,
            traits,
            key_slots: None,
            ours,
            held_back: &EMPTY,
            urgent,
            flash_left: 60,
            max_pushes: 1000,
            pushes_ignored: None,
            partner_since: SystemTime::UNIX_EPOCH + Duration::from_secs(100),
            releases_left: None,
            hold_since: SystemTime::UNIX_EPOCH + Duration::from_secs(3600),
            warm_since: None,
            held: None,
        }
    }

    static EMPTY: BTreeSet<u32> = BTreeSet::new();

    /// Puts `keys` on the radio as favourites keysync made; their numbers.
    pub(super) fn ours_on_radio(mirror: &mut Mirror, keys: &[TrustedKey]) -> BTreeSet<u32> {
        for k in keys {
            mirror.insert(
                k.num,
                RadioNode {
                    key: Some(k.key),
                    favourite: true,
                    ..RadioNode::default()
                },
            );
        }
        keys.iter().map(|k| k.num).collect()
    }

    /// A full radio's node list: its own node (0) and `capacity − 1` nodes it heard, none
    /// protected, none of them trusted keys.
    pub(super) fn full_radio(capacity: usize) -> Mirror {
        let mut mirror = Mirror::new();
        mirror.insert(
            0,
            RadioNode {
                favourite: true,
                ..RadioNode::default()
            },
        );
        for i in 1..capacity {
            let num = 1_000_000 + u32::try_from(i).unwrap_or(0);
            mirror.insert(num, RadioNode::default());
        }
        mirror
    }

    impl Case {
        fn new(n: u32, capacity: usize) -> Self {
            Self {
                trusted: (1..=n).map(|i| key(i, u64::from(i))).collect(),
                mirror: full_radio(capacity),
                traits: traits("2.7.26", capacity),
                ours: BTreeSet::new(),
                held_back: BTreeSet::new(),
                pending: BTreeSet::new(),
                urgent: Vec::new(),
                flash_left: 60,
                key_slots: None,
            }
        }

        fn plan(&self) -> Plan {
            plan(&PlanInput {
                pending: &self.pending,
                key_slots: self.key_slots,
                held_back: &self.held_back,
                flash_left: self.flash_left,
                ..input(
                    &self.trusted,
                    &self.mirror,
                    &self.traits,
                    &self.ours,
                    &self.urgent,
                )
            })
        }
    }

    fn pushed(plan: &Plan) -> Vec<u32> {
        plan.ops
            .iter()
            .filter_map(|o| match o {
                Op::Push(c) => Some(c.num),
                Op::Release(_) => None,
            })
            .collect()
    }

    #[test]
    fn the_default_budget_is_half_the_capacity_minus_what_others_protect() {
        let b = Budget::new(100, 10, None);
        assert_eq!((b.slots, b.headroom, b.protected_ceiling()), (40, 20, 80));
        let b = Budget::new(80, 0, Some(500));
        assert_eq!(b.slots, 64);
        assert!(
            b.clamped
                .as_deref()
                .is_some_and(|w| w.contains("clamped to 64"))
        );
        assert_eq!(Budget::new(80, 70, None).slots, 0, "nothing left to take");
    }

    #[test]
    fn more_keys_than_the_radio_holds_fill_only_the_budget_with_the_most_recently_heard() {
        let case = Case::new(300, 100);
        let plan = case.plan();
        assert_eq!(plan.pushes(), 50);
        assert_eq!(pushed(&plan)[0], 300, "most recently heard first");
        assert_eq!(
            plan.stored_only, 250,
            "stored, not on radio: a normal state"
        );
        assert!(plan.protected_after <= plan.budget.protected_ceiling());
        assert_eq!(
            plan.deferred(),
            0,
            "the rest is outside the working set, not deferred"
        );
    }

    #[test]
    fn a_stocked_working_set_needs_no_op_however_many_keys_are_stored() {
        let mut case = Case::new(300, 100);
        for k in case.trusted.iter().rev().take(50) {
            case.mirror.insert(k.num, held(k, true));
            case.ours.insert(k.num);
        }
        let plan = case.plan();
        assert!(plan.ops.is_empty(), "{:?}", plan.ops);
        assert_eq!(plan.present, 50);
    }

    #[test]
    fn a_key_never_heard_here_takes_no_slot_until_it_is_needed() {
        let mut case = Case::new(3, 100);
        // Learned from the broker: known, never heard by this radio.
        case.trusted.push(key(9, 0));
        let plan = case.plan();
        assert_eq!(pushed(&plan), [3, 2, 1], "free slots, still not pushed");
        assert_eq!(plan.stored_only, 1);
        case.urgent = vec![9];
        assert_eq!(
            pushed(&case.plan())[0],
            9,
            "a DM or a packet needs it: pushed first"
        );
        case.urgent.clear();
        case.trusted[3].pinned = true;
        assert!(pushed(&case.plan()).contains(&9), "the operator pinned it");
    }

    #[test]
    fn pinned_then_urgent_then_dm_partners_then_recent() {
        let mut case = Case::new(10, 8);
        case.key_slots = Some(3);
        case.trusted[0].pinned = true; // node 1, heard longest ago
        case.trusted[1].last_dm = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(5));
        case.urgent = vec![3];
        let plan = case.plan();
        assert_eq!(plan.working, vec![1, 3, 2]);
        assert_eq!(pushed(&plan), vec![1, 3, 2]);
    }

    #[test]
    fn a_full_budget_gives_back_the_least_needed_of_its_own_favourites_first() {
        let mut case = Case::new(10, 20);
        case.key_slots = Some(3);
        for num in [1, 2, 3] {
            let k = case.trusted[num as usize - 1].clone();
            case.mirror.insert(num, held(&k, true));
            case.ours.insert(num);
        }
        case.urgent = vec![9];
        let plan = case.plan();
        assert_eq!(
            plan.ops[0],
            Op::Release(1),
            "oldest heard of ours goes first"
        );
        assert_eq!(pushed(&plan), vec![9, 10, 8]);
        assert_eq!(plan.releases(), 3);
        assert!(plan.protected_after <= 3);
    }

    #[test]
    fn operator_favourites_are_never_given_back_and_shrink_the_budget() {
        let mut case = Case::new(10, 20);
        for num in [1, 2] {
            let k = case.trusted[num as usize - 1].clone();
            case.mirror.insert(num, held(&k, true));
        }
        let plan = case.plan();
        assert!(plan.ops.iter().all(|o| !matches!(o, Op::Release(_))));
        assert_eq!(plan.budget.others_protected, 2);
        assert_eq!(plan.budget.slots, 8);
    }

    #[test]
    fn ignored_nodes_are_never_pushed() {
        let mut case = Case::new(3, 20);
        case.mirror.insert(
            3,
            RadioNode {
                ignored: true,
                ..RadioNode::default()
            },
        );
        case.urgent = vec![3];
        let plan = case.plan();
        assert_eq!(pushed(&plan), vec![2, 1]);
        assert_eq!(plan.ignored, 1);
    }

    #[test]
    fn held_back_nodes_wait_and_the_flash_budget_caps_the_writes() {
        let mut case = Case::new(10, 100);
        case.held_back = [10].into_iter().collect();
        case.flash_left = 3;
        let plan = case.plan();
        assert_eq!(pushed(&plan), vec![9, 8, 7]);
        assert_eq!((plan.held_back, plan.deferred_flash), (1, 6));
    }

    #[test]
    fn a_pending_key_keeps_the_trusted_one_on_the_radio() {
        let mut case = Case::new(2, 20);
        case.pending = [1, 2].into_iter().collect();
        // Node 1: the radio holds the new (pending) key — the operator decides. Node 2: the
        // radio forgot it after a reboot — the trusted key goes back.
        case.mirror.insert(
            1,
            RadioNode {
                key: Some([0xEE; 32]),
                ..RadioNode::default()
            },
        );
        let plan = case.plan();
        assert_eq!(plan.conflicts, vec![1, 2]);
        assert_eq!(pushed(&plan), vec![2]);
    }

    #[test]
    fn firmware_gates_block_every_push() {
        let mut case = Case::new(5, 20);
        case.traits = traits("2.6.7", 100);
        let plan = case.plan();
        assert!(plan.ops.is_empty());
        assert!(matches!(plan.blocked, Some(Blocked::OldFirmware(_))));
        assert!(
            plan.blocked
                .as_ref()
                .is_some_and(|b| b.to_string().contains("needs 2.6.8"))
        );
        case.traits = RadioTraits::new("2.7.26", 0, "", false, true, Some(100));
        assert_eq!(case.plan().blocked, Some(Blocked::Managed));
    }

    #[test]
    fn on_2_7_11_pushes_are_verified_for_good_so_nothing_is_given_back() {
        let mut case = Case::new(10, 20);
        case.traits = traits("2.7.11", 20);
        assert!(case.traits.marks_verified);
        case.key_slots = Some(2);
        for num in [1, 2] {
            let k = case.trusted[num as usize - 1].clone();
            let mut node = held(&k, true);
            node.verified = true;
            case.mirror.insert(num, node);
            case.ours.insert(num);
        }
        let plan = case.plan();
        assert_eq!(plan.releases(), 0);
        assert_eq!(plan.pushes(), 0);
        assert!(plan.deferred_slots > 0);
    }

    #[test]
    fn a_client_base_on_2_7_14_does_not_protect_pushed_nodes() {
        let t = RadioTraits::new("2.7.14", 0, "", true, false, Some(20));
        assert!(!t.favourites);
        let mut case = Case::new(30, 20);
        case.traits = t;
        let plan = case.plan();
        assert_eq!(plan.protected_after, 0);
    }

    #[test]
    fn capacity_comes_from_the_hardware() {
        let cases = [
            ("2.7.26", HardwareModel::Rak4631, "", 80),
            ("2.8.0", HardwareModel::Rak4631, "", 120),
            ("2.7.4", HardwareModel::Tbeam, "tbeam", 100),
            ("2.7.26", HardwareModel::Portduino, "native", 200),
            ("2.7.26", HardwareModel::HeltecV3, "", 200),
            ("2.7.26", HardwareModel::HeltecV4, "", 100),
            ("2.7.26", HardwareModel::ThinknodeM6, "", 80),
            ("2.7.26", HardwareModel::Rak3172, "", 10),
        ];
        for (firmware, hw, pio_env, capacity) in cases {
            let t = RadioTraits::new(firmware, hw as i32, pio_env, false, false, None);
            assert_eq!(t.capacity, capacity, "{firmware} on {hw:?}");
        }
        let t = RadioTraits::new("2.7.26", 0, "", false, false, None);
        assert!(t.capacity_source.contains("--radio-capacity"));
    }

    #[test]
    fn reconcile_tells_removal_from_release_and_reset() {
        let ours: BTreeSet<u32> = [1, 2, 3].into_iter().collect();
        let mut mirror = Mirror::new();
        mirror.insert(
            1,
            RadioNode {
                favourite: true,
                ..RadioNode::default()
            },
        );
        mirror.insert(2, RadioNode::default());
        for n in 10..40 {
            mirror.insert(n, RadioNode::default());
        }
        let r = reconcile(&ours, &mirror, 100);
        assert_eq!(r.held, [1].into_iter().collect());
        assert_eq!(r.released_by_others, vec![2]);
        assert_eq!(r.removed, vec![3]);
        assert!(!r.reset);
        let r = reconcile(&ours, &Mirror::new(), 100);
        assert!(r.reset, "all gone with the whole NodeDB: a reset");
    }

    #[test]
    fn a_push_keeps_the_radio_s_own_user_fields() {
        let k = key(5, 1);
        let radio = RadioNode {
            key: None,
            user: Some(User {
                long_name: "Radio Name".into(),
                is_unmessagable: Some(true),
                is_licensed: true,
                role: 2,
                ..User::default()
            }),
            ..RadioNode::default()
        };
        let c = contact_for(&k, Some(&radio));
        assert_eq!(c.long_name, "Radio Name");
        assert_eq!(
            (c.is_unmessagable, c.is_licensed, c.role),
            (Some(true), true, 2)
        );
        assert_eq!(c.key, k.key, "always the trusted key");
    }
}
#[cfg(test)]
mod invariant_tests {
    use std::collections::BTreeSet;
    use std::time::{Duration, SystemTime};

    use proptest::prelude::*;

    use super::*;

    fn trusted(num: u32, heard: u64, pinned: bool) -> TrustedKey {
        TrustedKey {
            pinned,
            ..tests::key(num, heard)
        }
    }

    /// What a plan does to the radio's counts, op by op: each protecting op must leave the
    /// protected entries (own node aside) at most half of the entries the radio surely holds.
    fn check(input: &PlanInput<'_>, plan: &Plan) -> Result<(), TestCaseError> {
        let mirror = input.mirror;
        let own = input.own;
        let mut protected: BTreeSet<u32> = mirror
            .iter()
            .filter(|(n, node)| **n != own && node.is_protected())
            .map(|(n, _)| *n)
            .collect();
        let mut known: BTreeSet<u32> = mirror.keys().copied().collect();
        let mut held = mirror.len().max(1);
        let capacity = input.traits.capacity;
        for op in &plan.ops {
            match op {
                Op::Release(n) => {
                    prop_assert!(input.ours.contains(n), "released {n}, not keysync's");
                    prop_assert!(
                        !mirror.get(n).is_some_and(|m| m.verified || m.ignored),
                        "released {n}, which stays protected"
                    );
                    protected.remove(n);
                }
                Op::Push(c) => {
                    let new = known.insert(c.num);
                    if new && input.traits.capacity_sure && held < capacity {
                        held += 1;
                    }
                    let protects = input.traits.favourites || input.traits.marks_verified;
                    if protects && protected.insert(c.num) {
                        prop_assert!(
                            within_invariant(protected.len(), held),
                            "push of {} leaves {} protected of {held} held",
                            c.num,
                            protected.len()
                        );
                    }
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn no_plan_breaks_the_invariant_whatever_the_radio_and_the_store(
            capacity in 4usize..120,
            sure in any::<bool>(),
            firmware in prop::sample::select(vec!["2.6.10", "2.7.11", "2.7.26", "2.8.0"]),
            // The radio's node list: (number, has key, favourite, ignored, verified, ours).
            radio in prop::collection::vec(
                (1u32..400, any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
                0..150,
            ),
            store in prop::collection::vec((1u32..400, 0u64..1000, any::<bool>()), 0..300),
            urgent in prop::collection::vec(1u32..400, 0..5),
            key_slots in prop::option::of(0usize..200),
            flash_left in 0usize..80,
        ) {
            let traits = RadioTraits::new(firmware, 0, "", false, false, sure.then_some(capacity));
            let traits = RadioTraits { capacity, capacity_sure: sure, ..traits };
            // The store holds one trusted key per node.
            let mut trusted: Vec<TrustedKey> = store
                .iter()
                .map(|(n, heard, pinned)| trusted(*n, *heard, *pinned))
                .collect();
            trusted.sort_by_key(|k| k.num);
            trusted.dedup_by_key(|k| k.num);
            let mut mirror = Mirror::new();
            mirror.insert(0, RadioNode { favourite: true, ..RadioNode::default() });
            let mut ours = BTreeSet::new();
            for (num, keyed, favourite, ignored, verified, mine) in radio {
                let key = keyed.then_some([u8::try_from(num % 7).unwrap_or(0) + 1; 32]);
                mirror.insert(num, RadioNode { key, favourite, ignored, verified, user: None });
                if favourite && mine {
                    ours.insert(num);
                }
            }
            let input = PlanInput {
                key_slots,
                flash_left,
                ..tests::input(&trusted, &mirror, &traits, &ours, &urgent)
            };
            let plan = plan(&input);
            check(&input, &plan)?;
        }
    }

    #[test]
    fn a_radio_that_forgot_everything_gets_few_pushes() {
        // A NodeDB reset: the radio holds its own node only. Half of what it holds may be
        // protected, growth included where its capacity is sure.
        let trusted: Vec<TrustedKey> = (1..=60).map(|n| trusted(n, u64::from(n), false)).collect();
        let mut mirror = Mirror::new();
        mirror.insert(
            0,
            RadioNode {
                favourite: true,
                ..RadioNode::default()
            },
        );
        let sure = RadioTraits::new("2.7.26", 0, "", false, false, Some(20));
        let unsure = RadioTraits::new("2.7.26", 0, "native", false, false, None);
        assert!(!unsure.capacity_sure, "Linux MaxNodes is not told");
        for (traits, pushes) in [(&sure, 1), (&unsure, 0)] {
            let none = BTreeSet::new();
            let input = tests::input(&trusted, &mirror, traits, &none, &[]);
            assert_eq!(plan(&input).pushes(), pushes, "{}", traits.capacity_source);
        }
    }

    #[test]
    fn on_a_router_role_gateway_only_pinned_nodes_needs_and_dm_partners_get_slots() {
        let mut trusted: Vec<TrustedKey> =
            (1..=6).map(|n| trusted(n, u64::from(n), false)).collect();
        trusted[0].pinned = true;
        trusted[1].last_dm = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(500));
        // A DM long before the window: not a partner any more.
        trusted[2].last_dm = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(50));
        let mirror = tests::full_radio(40);
        let ours = BTreeSet::new();
        let client = RadioTraits::new("2.7.26", 0, "", false, false, Some(40));
        let router = client.clone().with_router_role(true);
        assert!(router.router_role);
        assert!(
            !RadioTraits::new("2.7.9", 0, "", false, false, Some(40))
                .with_router_role(true)
                .router_role
        );
        let pushed = |traits: &RadioTraits, urgent: &[u32]| {
            let mut p: Vec<u32> = plan(&tests::input(&trusted, &mirror, traits, &ours, urgent))
                .ops
                .iter()
                .map(Op::num)
                .collect();
            p.sort_unstable();
            p
        };
        assert_eq!(pushed(&client, &[]), [1, 2, 3, 4, 5, 6]);
        assert_eq!(pushed(&router, &[]), [1, 2], "pinned and the DM partner");
        assert_eq!(pushed(&router, &[5]), [1, 2, 5], "and what a DM needs now");
    }

    #[test]
    fn releases_are_rationed_and_never_of_a_node_pushed_within_the_hour() {
        // A full budget of keysync's favourites and two nodes that need a slot now.
        let trusted: Vec<TrustedKey> = (1..=8).map(|n| trusted(n, u64::from(n), false)).collect();
        let mut mirror = tests::full_radio(12);
        let ours = tests::ours_on_radio(&mut mirror, &trusted[..6]);
        let traits = RadioTraits::new("2.7.26", 0, "", false, false, Some(12));
        assert!(traits.release_restarts_lora);
        assert!(!RadioTraits::new("2.8.0", 0, "", false, false, Some(12)).release_restarts_lora);
        let urgent = [7, 8];
        let mut i = tests::input(&trusted, &mirror, &traits, &ours, &urgent);
        let released = |i: &PlanInput<'_>| plan(i).releases();
        assert_eq!(released(&i), 2, "two slots given back for two needs");
        i.releases_left = Some(1);
        assert_eq!(released(&i), 1, "--max-releases: one left this hour");
        i.releases_left = Some(0);
        let p = plan(&i);
        assert_eq!((p.releases(), p.pushes(), p.deferred_slots), (0, 0, 2));
        // Pushed within the hour: kept, whatever needs a slot.
        let mut recent = trusted.clone();
        for k in &mut recent[..6] {
            k.last_pushed = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(4000));
        }
        let i = tests::input(&recent, &mirror, &traits, &ours, &urgent);
        assert_eq!(released(&i), 0);
    }

    #[test]
    fn on_2_8_served_favourites_go_back_and_warm_keys_are_not_pushed_again() {
        let at = |s: u64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        let mut trusted: Vec<TrustedKey> =
            (1..=5).map(|n| trusted(n, u64::from(n), false)).collect();
        trusted[2].pinned = true;
        for k in &mut trusted[..3] {
            k.last_pushed = at(1000);
        }
        // Pushed after the last NodeDB reset, evicted since: in the warm tier.
        trusted[3].last_pushed = at(5000);
        let mut mirror = tests::full_radio(40);
        let ours = tests::ours_on_radio(&mut mirror, &trusted[..3]);
        let traits = RadioTraits::new("2.8.0", 0, "", false, false, Some(40));
        assert!(traits.warm_tier);
        let mut i = tests::input(&trusted, &mirror, &traits, &ours, &[]);
        i.hold_since = SystemTime::UNIX_EPOCH + Duration::from_secs(2000);
        i.warm_since = at(4000);
        let p = plan(&i);
        let released: Vec<u32> = p
            .ops
            .iter()
            .filter(|o| matches!(o, Op::Release(_)))
            .map(Op::num)
            .collect();
        assert_eq!(released, [1, 2], "served, not pinned: given back");
        assert_eq!(p.warm, 1);
        assert!(
            !p.ops.iter().any(|o| o.num() == 4),
            "warm: not pushed again"
        );
        // A need pushes it at once.
        let urgent = [4];
        let mut i = tests::input(&trusted, &mirror, &traits, &ours, &urgent);
        i.warm_since = at(4000);
        assert!(
            plan(&i)
                .ops
                .iter()
                .any(|o| matches!(o, Op::Push(c) if c.num == 4))
        );
        // Within the hold, nothing goes back.
        let mut i = tests::input(&trusted, &mirror, &traits, &ours, &[]);
        i.hold_since = SystemTime::UNIX_EPOCH + Duration::from_secs(500);
        assert_eq!(plan(&i).releases(), 0);
    }

    #[test]
    fn a_node_the_radio_shows_verified_is_never_given_back() {
        let trusted: Vec<TrustedKey> = (1..=3).map(|n| trusted(n, u64::from(n), false)).collect();
        let mut mirror = tests::full_radio(10);
        for k in &trusted[..2] {
            mirror.insert(
                k.num,
                RadioNode {
                    key: Some(k.key),
                    favourite: true,
                    verified: true,
                    user: None,
                    ..RadioNode::default()
                },
            );
        }
        let ours: BTreeSet<u32> = [1, 2].into();
        let traits = RadioTraits::new("2.7.26", 0, "", false, false, Some(10));
        let input = PlanInput {
            key_slots: Some(2),
            ..tests::input(&trusted, &mirror, &traits, &ours, &[3])
        };
        let plan = plan(&input);
        assert_eq!(plan.releases(), 0, "{:?}", plan.ops);
        assert_eq!(plan.pushes(), 0);
        assert_eq!(plan.deferred_slots, 1);
    }
}

#[cfg(test)]
mod urgent_tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn an_urgent_node_with_every_slot_taken_frees_the_least_needed_first() {
        let mk = |num: u32| TrustedKey {
            num,
            key: [u8::try_from(num % 200).unwrap_or(1) + 1; 32],
            long_name: String::new(),
            short_name: String::new(),
            hw_model: 0,
            role: 0,
            last_seen: SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(num)),
            pinned: false,
            last_dm: None,
            last_pushed: None,
            flags: crate::radio::UserFlags::default(),
        };
        let trusted: Vec<TrustedKey> = (1..=41).map(mk).collect();
        let mut mirror = tests::full_radio(40);
        let ours = tests::ours_on_radio(&mut mirror, &trusted[..40]);
        let traits = RadioTraits::new("2.7.26", 0, "", false, false, Some(80));
        let p = plan(&PlanInput {
            flash_left: 10,
            max_pushes: 1,
            ..tests::input(&trusted, &mirror, &traits, &ours, &[41])
        });
        assert_eq!(
            p.ops,
            vec![Op::Release(1), Op::Push(contact_for(&trusted[40], None))]
        );
    }
}
