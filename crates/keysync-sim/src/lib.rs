//! The simulated radio: a TCP server that behaves like Meshtastic firmware on its client API
//! (PROTOCOL.md), version by version (`profile.rs`), with a NodeDB of fixed capacity that
//! crashes or refuses when overfilled, nodes that announce themselves, operators who ignore and
//! remove nodes, and scripted faults. `keysync sim` runs it standalone; `--demo` and the tests
//! run it in-process.

pub mod nodedb;
pub mod population;
pub mod profile;
pub mod scenario;
mod serial;
mod session;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use meshtastic::Message;
use meshtastic::protobufs::{
    Channel, Data, FromRadio, MeshPacket, NodeInfo, PortNum, Routing, SharedContact, User,
    from_radio, mesh_packet, routing,
};
use routing::Error as RoutingError;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use keysync_engine::length_delimited;
use keysync_engine::{BROADCAST, node_id, valid_key};
pub use nodedb::Protected;
use nodedb::{Flagged, Heard, NodeDb, RawNames};
use population::{Population, now_secs};
pub use profile::{Hw, Profile, ProfileError, Rule, SimRole, WhenFull};
pub use scenario::{
    Fault, Forget, InvalidScenario, OperatorAction, Scenario, ScenarioError, ScenarioEvent,
};

/// How the simulated radio is set up.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    /// Generated nodes on the simulated mesh.
    pub nodes: usize,
    /// How many of them the NodeDB holds at start (the first ones); `None`: as many as fit.
    pub in_radio: Option<usize>,
    pub seed: u64,
    /// NodeDB capacity, own node included; `None` takes the hardware's (`Profile::capacity`).
    pub capacity: Option<usize>,
    /// Close a client that sent no complete frame for this long (firmware ≥ 2.7.21: 15 min;
    /// older firmware never closes an idle client).
    pub idle_timeout: Duration,
    /// A random known node announces itself this often; `None` for a quiet mesh.
    pub announce_every: Option<Duration>,
    /// Firmware version, hardware family and role: which rules the radio follows.
    pub profile: Profile,
    pub scenario: Scenario,
    /// The radio's queue for packets from the client (`maxlen`).
    pub queue_len: u32,
    /// How long a crashed radio stays away before it accepts clients again.
    pub reboot_time: Duration,
    /// `security.is_managed`: admin messages from the client are ignored (AdminModule.cpp).
    pub managed: bool,
    /// Every node of the mesh sent its NodeInfo just before the start (as nodes do every few
    /// hours), so for 10 minutes none answers the radio's request for it: a node heard by a
    /// plain packet stays keyless. Off: the first request is answered, as a node that just
    /// booted answers it.
    pub nodeinfo_sent_at_start: bool,
}

impl SimConfig {
    pub fn capacity(&self) -> usize {
        self.capacity.unwrap_or_else(|| self.profile.capacity())
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4403)),
            nodes: 40,
            in_radio: None,
            seed: 1,
            capacity: None,
            idle_timeout: Duration::from_secs(15 * 60),
            announce_every: Some(Duration::from_secs(45)),
            profile: Profile::default(),
            scenario: Scenario::default(),
            queue_len: 16,
            reboot_time: Duration::from_secs(8),
            managed: false,
            nodeinfo_sent_at_start: true,
        }
    }
}

/// What the simulated radio has seen and done; the evidence tests assert on.
#[derive(Debug, Default)]
pub struct SimCounters {
    received: Mutex<BTreeMap<&'static str, u64>>,
    /// The ids of the last packets received from clients, whatever became of them.
    packet_ids: Mutex<std::collections::VecDeque<u32>>,
    pub connections: AtomicU64,
    /// Bytes of complete frames received from clients (header included).
    pub bytes_received: AtomicU64,
    /// Bytes received other than in heartbeats.
    pub bytes_besides_heartbeats: AtomicU64,
    pub add_contacts: AtomicU64,
    /// add_contact messages whose key was empty or invalid (each one erases a key on a radio).
    pub invalid_contacts: AtomicU64,
    pub flash_writes: AtomicU64,
    pub idle_closes: AtomicU64,
    pub garbage_bytes_sent: AtomicU64,
    /// Live frames a slow client lost from its 32-frame queue.
    pub dropped_to_client: AtomicU64,
    pub announcements: AtomicU64,
    /// Times the radio crashed on a full NodeDB with nothing evictable (2.7.x).
    pub crashes: AtomicU64,
    /// New nodes a full NodeDB refused (2.8).
    pub refused_nodes: AtomicU64,
    /// Client packets the radio sent on to the mesh.
    pub mesh_sent: AtomicU64,
    /// Client packets over a per-connection rate limit (PhoneAPI.cpp).
    pub rate_limited: AtomicU64,
    /// DMs refused with PKI_SEND_FAIL_PUBLIC_KEY.
    pub pki_send_fails: AtomicU64,
    /// Admin messages the radio did not act on (unknown to its firmware, or a managed radio).
    pub ignored_admin: AtomicU64,
    /// Operator decisions applied (ignore, remove, favourite, unfavourite).
    pub operator_actions: AtomicU64,
    /// Times a favourite or ignore decision restarted the LoRa chip (up to 2.7.26).
    pub lora_restarts: AtomicU64,
    /// The radio's own NodeInfo broadcast on a heartbeat with nonce 1 (2.7.23+).
    pub nodeinfo_broadcasts: AtomicU64,
    /// New nodes a full NodeDB did not admit, within 2 s of the last one admitted (2.8).
    pub deferred_nodes: AtomicU64,
}

impl SimCounters {
    /// Frames received from clients, by kind (`heartbeat`, `want_config`, `admin`, ...).
    pub fn received(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.received).clone()
    }

    /// Frames received other than heartbeats.
    pub fn received_besides_heartbeats(&self) -> u64 {
        lock(&self.received)
            .iter()
            .filter(|(k, _)| **k != "heartbeat")
            .map(|(_, v)| v)
            .sum()
    }

    fn count(&self, kind: &'static str) {
        *lock(&self.received).entry(kind).or_default() += 1;
    }

    /// The ids of the last 1024 packets received from clients, oldest first.
    pub fn packet_ids(&self) -> Vec<u32> {
        lock(&self.packet_ids).iter().copied().collect()
    }

    fn note_packet(&self, id: u32) {
        let mut ids = lock(&self.packet_ids);
        if ids.len() == 1024 {
            ids.pop_front();
        }
        ids.push_back(id);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The radio's state shared by the listener, the client session and the mesh.
#[derive(Debug)]
struct Radio {
    db: NodeDb,
    population: Population,
    /// Every generated node, as the mesh knows it (keys may differ from the NodeDB's).
    mesh: Vec<NodeInfo>,
    /// Every add_contact received, in order, with when.
    contacts: Vec<(Instant, SharedContact)>,
    /// The last packets sent on to the mesh (bounded), oldest first, with when.
    sent: VecDeque<(Instant, MeshPacket)>,
    /// Until when every QueueStatus says the queue is full.
    queue_full_until: Option<Instant>,
    /// Until when packets get no QueueStatus.
    silent_until: Option<Instant>,
    /// Rebooting (after a crash or a reboot fault): the radio hears nothing.
    down: bool,
    /// The eight channel slots (the firmware's ChannelFile, kept in flash across reboots).
    channels: Vec<Channel>,
    /// When the radio last sent its own NodeInfo to the mesh (NodeInfoModule.cpp).
    last_nodeinfo: Option<Instant>,
    /// When each node of the mesh last sent its NodeInfo: each node answers a request for it
    /// at most once per [`NODEINFO_GAP`].
    nodeinfo_sent: std::collections::HashMap<u32, Instant>,
}

/// A node sends its NodeInfo at most this often (NodeInfoModule.cpp; seen on meshtasticd:
/// "Skip send NodeInfo since we sent it <600s ago").
const NODEINFO_GAP: Duration = Duration::from_secs(600);

impl Radio {
    /// Keeps `packet` among the last ones sent on to the mesh.
    fn record_sent(&mut self, packet: MeshPacket) {
        if self.sent.len() == SENT_KEPT {
            self.sent.pop_front();
        }
        self.sent.push_back((Instant::now(), packet));
    }
}

/// NodeInfoModule.cpp allocReply: on its short path (a nodeinfo ping) the own NodeInfo goes out
/// unless one went out less than 60 s ago.
const NODEINFO_PING_GAP: Duration = Duration::from_secs(60);

fn nodeinfo_due(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= NODEINFO_PING_GAP)
}

/// The firmware's channel slots (MAX_NUM_CHANNELS).
const CHANNEL_SLOTS: usize = 8;

/// How many sent packets the radio remembers for tests.
const SENT_KEPT: usize = 1000;

#[derive(Debug)]
struct Shared {
    config: SimConfig,
    radio: Mutex<Radio>,
    counters: Arc<SimCounters>,
    /// Live traffic towards the client: the firmware's client queue, oldest dropped.
    live: broadcast::Sender<FromRadio>,
    /// The radio crashed: the listener drops the client and stays away for the reboot.
    crashed: Notify,
}

/// How a node heard on the mesh presents itself.
enum Sighting {
    /// A NODEINFO_APP packet carrying its `User`.
    NodeInfo,
    /// A NODEINFO_APP packet whose names are not valid UTF-8.
    BadUtf8,
    /// Any other packet (position, telemetry, text…): no user, no key.
    Packet(PortNum),
}

impl Shared {
    /// The radio reboots (or its USB device goes away): down, forgetting what `forget` says.
    fn go_down(&self, forget: Forget) {
        let mut radio = self.radio();
        radio.down = true;
        match forget {
            Forget::Nothing => {}
            Forget::Keys => radio.db.forget_keys(),
            Forget::Nodes => radio.db.forget_nodes(),
        }
    }

    fn radio(&self) -> MutexGuard<'_, Radio> {
        lock(&self.radio)
    }

    fn profile(&self) -> &Profile {
        &self.config.profile
    }

    /// Generated node `index` sends a packet that this radio hears. The radio updates its
    /// NodeDB under the firmware's rules (which may evict, refuse or crash) and forwards the
    /// packet to the client.
    fn hear(&self, index: usize, how: &Sighting) {
        let mut radio = self.radio();
        if radio.down {
            return;
        }
        let Some(node) = radio.mesh.get(index).cloned() else {
            log::warn!(target: "keysync::sim", "no generated node #{index} to hear from");
            return;
        };
        let num = node.num;
        if radio.db.get(num).is_some_and(|n| n.is_ignored) {
            // Router.cpp: packets from an ignored node are dropped before anything else.
            log::debug!(target: "keysync::sim", "ignoring a packet from ignored node {}", node_id(num));
            return;
        }
        let user = node.user.clone().unwrap_or_default();
        let utf8_validated = self.profile().has(Rule::Utf8Validated);
        let (portnum, payload, outcome) = sighted(&mut radio, num, &user, how, utf8_validated);
        if outcome == Heard::NoRoom && self.no_room(&mut radio, num) == WhenFull::Crash {
            return;
        }
        if outcome == Heard::Deferred {
            self.counters.deferred_nodes.fetch_add(1, Ordering::Relaxed);
            log::debug!(target: "keysync::sim", "Node database full, defer admitting {}", node_id(num));
        }
        let id = radio.population.packet_id();
        // A node the radio holds no user of is asked for its NodeInfo, and answers unless it
        // sent one lately or has nothing to tell.
        let asked = matches!(how, Sighting::Packet(_))
            && self.profile().has(Rule::AsksNewNodeForNodeInfo)
            && radio.db.get(num).is_some_and(|n| n.user.is_none())
            && valid_key(&user.public_key).is_some()
            && radio
                .nodeinfo_sent
                .get(&num)
                .is_none_or(|t| t.elapsed() >= NODEINFO_GAP);
        drop(radio);
        log::info!(target: "keysync::sim", "{} ({}) heard on {}: {outcome:?}",
            node_id(num), sanitize(&user.long_name), portnum.as_str_name());
        self.counters.announcements.fetch_add(1, Ordering::Relaxed);
        self.to_client(mesh_packet(num, BROADCAST, id, portnum, payload));
        if asked {
            log::info!(target: "keysync::sim", "Heard new node {}, send NodeInfo and ask for response", node_id(num));
            self.hear(index, &Sighting::NodeInfo);
        }
        log_key_outcome(num, outcome);
    }

    /// A new node arrived and nothing can be evicted (NodeDB.cpp getOrCreateMeshNode): 2.7.x
    /// writes past the end of its node array and the radio reboots; 2.8 refuses the node.
    fn no_room(&self, radio: &mut Radio, num: u32) -> WhenFull {
        let protected = radio.db.protected();
        let when = self.profile().when_full();
        match when {
            WhenFull::Refuse => {
                self.counters.refused_nodes.fetch_add(1, Ordering::Relaxed);
                log::warn!(target: "keysync::sim",
                    "NodeDB full ({} entries, {} protected: {} favourite, {} ignored, {} verified): refusing new node {}",
                    radio.db.len(), protected.total, protected.favourite, protected.ignored,
                    protected.verified, node_id(num));
            }
            WhenFull::Crash => {
                self.counters.crashes.fetch_add(1, Ordering::Relaxed);
                log::error!(target: "keysync::sim",
                    "CRASH: node {} does not fit a NodeDB of {} entries with {} protected ({} favourite, {} ignored, {} verified); meshNodes->at({}) is out of range, firmware {} aborts and reboots with the NodeDB last written to flash",
                    node_id(num), radio.db.len(), protected.total, protected.favourite,
                    protected.ignored, protected.verified, radio.db.len(),
                    self.profile().firmware.reported);
                radio.down = true;
                radio.db.restore_from_flash();
                self.crashed.notify_one();
            }
        }
        when
    }

    /// saveNodeDatabaseToDisk: every add_contact and every operator decision writes the whole
    /// NodeDB, unthrottled (NodeDB.cpp).
    fn write_flash(&self, radio: &mut Radio) {
        radio.db.save_to_flash();
        self.counters.flash_writes.fetch_add(1, Ordering::Relaxed);
    }

    /// What the radio's operator decides (phone app or CLI; AdminModule.cpp).
    fn operator(&self, action: OperatorAction, num: u32) -> bool {
        let mut radio = self.radio();
        let flagged = match action {
            OperatorAction::Ignore => radio.db.ignore(num),
            OperatorAction::Remove => {
                if radio.db.remove(num) {
                    Flagged::Done
                } else {
                    Flagged::Unknown
                }
            }
            OperatorAction::Favorite => radio.db.set_favourite(num, true),
            OperatorAction::Unfavorite => radio.db.set_favourite(num, false),
        };
        if let Flagged::Refused { limit } = flagged {
            // AdminModule.cpp (develop): refused with a ClientNotification, nothing saved.
            drop(radio);
            let verb = if action == OperatorAction::Ignore {
                "ignore"
            } else {
                "favorite"
            };
            let message =
                format!("Can't {verb} 0x{num:08x}: protected-node limit ({limit}) reached");
            log::info!(target: "keysync::sim", "operator: {} {}: {message}", action.name(), node_id(num));
            self.notify(message, None);
            return false;
        }
        let done = flagged == Flagged::Done;
        if done {
            self.write_flash(&mut radio);
            self.counters
                .operator_actions
                .fetch_add(1, Ordering::Relaxed);
            log::info!(target: "keysync::sim", "operator: {} {}; NodeDB written to flash", action.name(), node_id(num));
            if action != OperatorAction::Remove && self.profile().has(Rule::FavouriteRestartsLora) {
                self.restart_lora(action);
            }
        } else {
            log::info!(target: "keysync::sim", "operator: {} {}: no such node", action.name(), node_id(num));
        }
        done
    }

    /// AdminModule.cpp saveChanges → MeshService::reloadConfig → RadioInterface::reconfigure:
    /// the chip goes to standby and is programmed again, as for a change of LoRa settings. The
    /// simulator sends each client packet at once, so it has no transmit queue to lose; the
    /// restart is counted and logged as the firmware logs it.
    fn restart_lora(&self, action: OperatorAction) {
        self.counters.lora_restarts.fetch_add(1, Ordering::Relaxed);
        log::info!(target: "keysync::sim",
            "[Router] Set radio: region=EU_868, name=LongFast, config=0 (LoRa chip restarted by {}: saveChanges → reloadConfig → RadioInterface::reconfigure; packets in flight are lost)",
            action.admin_field());
    }

    /// A heartbeat with nonce 1 (PhoneAPI.cpp, 2.7.23+): the own NodeInfo is broadcast with
    /// want_response so that peers re-learn the radio's key, unless it went out less than 60 s
    /// ago.
    fn nodeinfo_ping(&self) {
        let now = Instant::now();
        let mut radio = self.radio();
        if !nodeinfo_due(radio.last_nodeinfo, now) {
            log::debug!(target: "keysync::sim", "Skip send NodeInfo since we sent it <60s ago");
            return;
        }
        radio.last_nodeinfo = Some(now);
        let own = radio.db.own().clone();
        let user = own.user.unwrap_or_default();
        let id = radio.population.packet_id();
        let mut packet = mesh_packet(
            own.num,
            BROADCAST,
            id,
            PortNum::NodeinfoApp,
            user.encode_to_vec(),
        );
        if let Some(mesh_packet::PayloadVariant::Decoded(data)) = packet.payload_variant.as_mut() {
            data.want_response = true;
        }
        radio.record_sent(packet);
        drop(radio);
        self.counters
            .nodeinfo_broadcasts
            .fetch_add(1, Ordering::Relaxed);
        log::info!(target: "keysync::sim", "Broadcasting nodeinfo ping (serial); Send owner {}/{}/{}",
            user.id, sanitize(&user.long_name), sanitize(&user.short_name));
    }

    /// set_channel (AdminModule.cpp handleSetChannel, Channels.cpp setChannel): the slot takes
    /// the channel whole, and a new primary demotes the old one to secondary. False when the
    /// index is outside the slots.
    fn set_channel(&self, channel: Channel) -> bool {
        let Some(slot) = usize::try_from(channel.index)
            .ok()
            .filter(|i| *i < CHANNEL_SLOTS)
        else {
            return false;
        };
        let primary = meshtastic::protobufs::channel::Role::Primary as i32;
        let secondary = meshtastic::protobufs::channel::Role::Secondary as i32;
        let mut radio = self.radio();
        if channel.role == primary {
            for c in radio.channels.iter_mut().filter(|c| c.role == primary) {
                c.role = secondary;
            }
        }
        log::info!(target: "keysync::sim", "channel {slot} is now {:?}",
            sanitize(&channel.settings.as_ref().map(|s| s.name.clone()).unwrap_or_default()));
        radio.channels[slot] = channel;
        true
    }

    fn key_change(&self, index: usize) {
        {
            let mut radio = self.radio();
            let key = radio.population.new_key();
            let Some(user) = radio.mesh.get_mut(index).and_then(|n| n.user.as_mut()) else {
                log::warn!(target: "keysync::sim", "no generated node #{index} to change its key");
                return;
            };
            user.public_key = key.to_vec();
        }
        self.hear(index, &Sighting::NodeInfo);
    }

    fn new_nodes(&self, count: usize, portnum: Option<PortNum>) {
        let first = {
            let mut radio = self.radio();
            let first = radio.mesh.len();
            // Strangers arriving on the mesh: they announced themselves elsewhere just now, so
            // heard by a plain packet here they stay keyless (they do not answer the request).
            let now = Instant::now();
            for _ in 0..count {
                let node = radio.population.next_node();
                radio.nodeinfo_sent.insert(node.num, now);
                radio.mesh.push(node);
            }
            first
        };
        let how = portnum.map_or(Sighting::NodeInfo, Sighting::Packet);
        for index in first..first + count {
            self.hear(index, &how);
        }
    }

    /// The firmware's answer to a DM it could not encrypt (Router.cpp, ≥ 2.7.19).
    fn dm_fail(&self, to: u32, request_id: u32) {
        self.counters.pki_send_fails.fetch_add(1, Ordering::Relaxed);
        log::info!(target: "keysync::sim", "DM to {} refused: PKI_SEND_FAIL_PUBLIC_KEY", node_id(to));
        self.to_client(self.routing_error(RoutingError::PkiSendFailPublicKey, request_id));
    }

    /// A routing error for a client packet, as the radio reports it to the client.
    fn routing_error(&self, error: RoutingError, request_id: u32) -> MeshPacket {
        let routing = Routing {
            variant: Some(routing::Variant::ErrorReason(error as i32)),
        };
        self.reply(PortNum::RoutingApp, routing.encode_to_vec(), request_id)
    }

    /// The radio's answer to the client's packet `request_id`, from and to its own node.
    fn reply(&self, portnum: PortNum, payload: Vec<u8>, request_id: u32) -> MeshPacket {
        let (my, id) = {
            let mut radio = self.radio();
            (radio.db.my_node_num(), radio.population.packet_id())
        };
        let mut packet = mesh_packet(my, my, id, portnum, payload);
        if let Some(mesh_packet::PayloadVariant::Decoded(data)) = packet.payload_variant.as_mut() {
            data.request_id = request_id;
        }
        packet
    }

    /// A ClientNotification at WARNING level to every client, answering the client's packet
    /// `reply_id` if given.
    fn notify(&self, message: String, reply_id: Option<u32>) {
        let _ = self.live.send(FromRadio {
            id: 0,
            payload_variant: Some(from_radio::PayloadVariant::ClientNotification(
                meshtastic::protobufs::ClientNotification {
                    level: meshtastic::protobufs::log_record::Level::Warning as i32,
                    message,
                    reply_id,
                    ..Default::default()
                },
            )),
        });
    }

    fn to_client(&self, packet: MeshPacket) {
        let _ = self.live.send(FromRadio {
            id: 0,
            payload_variant: Some(from_radio::PayloadVariant::Packet(packet)),
        });
    }
}

/// A name for logs: no control characters from the mesh reach a terminal.
fn sanitize(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).collect()
}

/// meshUtils.cpp sanitizeUtf8: every byte that is not part of valid UTF-8 becomes `?`.
pub fn sanitize_utf8(mut bytes: &[u8]) -> String {
    let mut out = String::new();
    loop {
        match std::str::from_utf8(bytes) {
            Ok(valid) => {
                out.push_str(valid);
                return out;
            }
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                let bad = e.error_len().unwrap_or(rest.len());
                out.extend(std::iter::repeat_n('?', bad));
                bytes = rest.get(bad..).unwrap_or_default();
            }
        }
    }
}

/// Names that are not UTF-8, as broken firmware and apps have sent them (firmware #7260).
fn bad_utf8_names(user: &User) -> RawNames {
    let mut long_name = user.long_name.as_bytes().to_vec();
    long_name.truncate(30);
    long_name.extend_from_slice(&[0xFF, 0xFE, b'!']);
    RawNames {
        long_name,
        short_name: vec![0xC3, 0x28, b'x'],
    }
}

/// A `User` encoded with raw name bytes (protobuf fields 2 and 3 appended; the last value of a
/// field wins, so the encoded names are the raw ones).
pub(crate) fn user_with_raw_names(user: &User, raw: &RawNames) -> Vec<u8> {
    let plain = User {
        long_name: String::new(),
        short_name: String::new(),
        ..user.clone()
    };
    let mut out = plain.encode_to_vec();
    length_delimited(&mut out, 2, &raw.long_name);
    length_delimited(&mut out, 3, &raw.short_name);
    out
}

/// A plausible payload for a packet on `portnum`; its content does not matter to keysync.
fn portnum_payload(portnum: PortNum) -> Vec<u8> {
    match portnum {
        PortNum::TextMessageApp => b"hello from the mesh".to_vec(),
        _ => Vec::new(),
    }
}

/// A packet heard on the mesh, as the radio hands it to its client.
fn mesh_packet(from: u32, to: u32, id: u32, portnum: PortNum, payload: Vec<u8>) -> MeshPacket {
    MeshPacket {
        from,
        to,
        id,
        rx_time: now_secs(),
        hop_limit: 3,
        hop_start: 3,
        payload_variant: Some(mesh_packet::PayloadVariant::Decoded(Data {
            portnum: portnum as i32,
            payload,
            ..Data::default()
        })),
        ..MeshPacket::default()
    }
}

/// Commands for the listener task.
#[derive(Debug)]
enum ListenerCmd {
    /// A fault, and who to tell once it took effect.
    Fault(Fault, tokio::sync::oneshot::Sender<()>),
    Shutdown,
}

/// Commands for the connected client's session.
#[derive(Debug)]
enum ClientCmd {
    Stall(Duration),
    Garbage(Vec<u8>),
}

/// A running simulated radio.
#[derive(Debug)]
pub struct SimHandle {
    /// The TCP listener's address; unspecified for a radio on a serial port.
    addr: SocketAddr,
    /// The link to the pseudo-terminal of a radio on a serial port.
    serial: Option<PathBuf>,
    shared: Arc<Shared>,
    control: mpsc::Sender<ListenerCmd>,
    tasks: Vec<JoinHandle<()>>,
}

impl SimHandle {
    /// Binds the listener and starts serving, the mesh and the scenario (on the current
    /// tokio runtime).
    pub fn start(config: SimConfig) -> io::Result<Self> {
        let listener = bind(config.listen)?;
        let addr = listener.local_addr()?;
        let shared = Shared::start(config);
        log::info!(target: "keysync::sim",
            "simulated radio {} listening on {addr}: {} nodes on the mesh, {}",
            node_id(shared.radio().db.my_node_num()), shared.config.nodes,
            shared.config.profile.describe(shared.config.capacity()));
        let (control, control_rx) = mpsc::channel(16);
        let device = tokio::spawn(listen(listener, shared.clone(), control_rx));
        Ok(Self::run(addr, None, shared, control, device))
    }

    /// Starts the radio behind a pseudo-terminal, as a radio on USB, reachable at `link` (a
    /// symlink to the pty, made anew at each plug-in; the TCP listen address is not used).
    pub fn start_serial(config: SimConfig, link: PathBuf) -> io::Result<Self> {
        let device = serial::Device::plug(&link)?;
        let shared = Shared::start(config);
        log::info!(target: "keysync::sim",
            "simulated radio {} on serial port {} ({}): {} nodes on the mesh, {}",
            node_id(shared.radio().db.my_node_num()), link.display(), device.tty,
            shared.config.nodes, shared.config.profile.describe(shared.config.capacity()));
        let (control, control_rx) = mpsc::channel(16);
        let task = tokio::spawn(serial::run(
            device,
            link.clone(),
            shared.clone(),
            control_rx,
        ));
        let addr = SocketAddr::from(([0, 0, 0, 0], 0));
        Ok(Self::run(addr, Some(link), shared, control, task))
    }

    /// Starts the mesh and the scenario beside the task that serves the radio's port.
    fn run(
        addr: SocketAddr,
        serial: Option<PathBuf>,
        shared: Arc<Shared>,
        control: mpsc::Sender<ListenerCmd>,
        device: JoinHandle<()>,
    ) -> Self {
        let mut tasks = vec![device];
        if let Some(every) = shared.config.announce_every {
            tasks.push(tokio::spawn(announce_loop(shared.clone(), every)));
        }
        let scenario = shared.config.scenario.clone();
        if !scenario.events.is_empty() {
            tasks.push(tokio::spawn(run_scenario(
                scenario,
                shared.clone(),
                control.clone(),
            )));
        }
        Self {
            addr,
            serial,
            shared,
            control,
            tasks,
        }
    }

    /// The serial port's path (the link given to [`Self::start_serial`]), if the radio is on one.
    pub fn serial_path(&self) -> Option<&Path> {
        self.serial.as_deref()
    }
}

impl Shared {
    /// The radio's state at power-on, from its configuration.
    fn start(config: SimConfig) -> Arc<Self> {
        let profile = config.profile.clone();
        let capacity = config.capacity();
        let mut population = Population::new(config.seed);
        let mut own = population.own_node();
        if let Some(user) = own.user.as_mut() {
            user.hw_model = profile.hw.hw_model() as i32;
            user.role = profile.role.role() as i32;
        }
        let mut db = NodeDb::new(own, capacity, profile.nodedb_rules());
        let mesh: Vec<NodeInfo> = (0..config.nodes).map(|_| population.next_node()).collect();
        let in_radio = config
            .in_radio
            .unwrap_or(usize::MAX)
            .min(capacity.saturating_sub(1));
        for node in mesh.iter().take(in_radio) {
            db.insert(node.clone());
        }
        db.save_to_flash();
        let (live, _) = broadcast::channel(profile.client_queue());
        let nodeinfo_sent = if config.nodeinfo_sent_at_start {
            let now = Instant::now();
            mesh.iter().map(|n| (n.num, now)).collect()
        } else {
            std::collections::HashMap::new()
        };
        Arc::new(Self {
            config,
            radio: Mutex::new(Radio {
                db,
                population,
                mesh,
                contacts: Vec::new(),
                sent: VecDeque::new(),
                queue_full_until: None,
                silent_until: None,
                down: false,
                channels: session::channels(),
                last_nodeinfo: None,
                nodeinfo_sent,
            }),
            counters: Arc::new(SimCounters::default()),
            live,
            crashed: Notify::new(),
        })
    }
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn counters(&self) -> Arc<SimCounters> {
        self.shared.counters.clone()
    }

    pub fn my_node_num(&self) -> u32 {
        self.shared.radio().db.my_node_num()
    }

    /// The radio's NodeDB now, own node first.
    pub fn nodedb(&self) -> Vec<NodeInfo> {
        self.shared.radio().db.nodes().cloned().collect()
    }

    /// The key the radio holds for `num`, if any.
    pub fn key_of(&self, num: u32) -> Option<[u8; 32]> {
        let radio = self.shared.radio();
        radio
            .db
            .get(num)
            .and_then(|n| n.user.as_ref())
            .and_then(|u| valid_key(&u.public_key))
    }

    /// The key 2.8's warm tier keeps for `num`, evicted from the NodeDB: clients cannot see it.
    pub fn warm_key_of(&self, num: u32) -> Option<[u8; 32]> {
        self.shared.radio().db.warm_key(num)
    }

    /// How many evicted nodes 2.8's warm tier keeps.
    pub fn warm_len(&self) -> usize {
        self.shared.radio().db.warm_len()
    }

    /// Every generated node as the mesh knows it (current keys).
    pub fn mesh(&self) -> Vec<NodeInfo> {
        self.shared.radio().mesh.clone()
    }

    /// Every add_contact the radio received, in order.
    pub fn contacts(&self) -> Vec<SharedContact> {
        self.shared
            .radio()
            .contacts
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// When each add_contact arrived, in order.
    pub fn contact_times(&self) -> Vec<Instant> {
        self.shared
            .radio()
            .contacts
            .iter()
            .map(|(t, _)| *t)
            .collect()
    }

    pub fn evictions(&self) -> u64 {
        self.shared.radio().db.evictions()
    }

    /// Entries the radio's eviction may not take, by reason.
    pub fn protected(&self) -> Protected {
        self.shared.radio().db.protected()
    }

    /// The NodeDB's capacity, own node included.
    pub fn capacity(&self) -> usize {
        self.shared.radio().db.capacity()
    }

    pub fn profile(&self) -> &Profile {
        &self.shared.config.profile
    }

    /// The last packets the radio sent on to the mesh, oldest first.
    pub fn sent(&self) -> Vec<MeshPacket> {
        self.shared
            .radio()
            .sent
            .iter()
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// When each of [`sent`](Self::sent) went out.
    pub fn sent_times(&self) -> Vec<Instant> {
        self.shared.radio().sent.iter().map(|(t, _)| *t).collect()
    }

    /// How often node `num` lost a key the radio held for it (eviction, ignore, removal,
    /// reboot): a second push of the same key is only warranted after a loss.
    pub fn key_losses(&self, num: u32) -> u32 {
        self.shared.radio().db.key_losses(num)
    }

    /// The radio's eight channel slots as they are now.
    pub fn channels(&self) -> Vec<Channel> {
        self.shared.radio().channels.clone()
    }

    /// Another client of the radio (the phone app over BLE) sets a channel; false when its
    /// index is outside the slots.
    pub fn set_channel(&self, channel: Channel) -> bool {
        self.shared.set_channel(channel)
    }

    /// Whether the radio is rebooting (after a crash or a reboot fault).
    pub fn is_down(&self) -> bool {
        self.shared.radio().down
    }

    /// The operator decides on node `num` (as the phone app or CLI would); false when the
    /// radio does not know the node.
    pub fn operator(&self, action: OperatorAction, num: u32) -> bool {
        self.shared.operator(action, num)
    }

    /// A packet from node `num` on `portnum` reaches the radio; a node it does not know is
    /// created (keyless), which may evict, refuse or crash. For nodes outside the generated
    /// mesh, the node is added to it first.
    pub fn hear_from(&self, num: u32, portnum: PortNum) {
        let index = {
            let mut radio = self.shared.radio();
            if let Some(i) = radio.mesh.iter().position(|n| n.num == num) {
                i
            } else {
                radio.mesh.push(NodeInfo {
                    num,
                    user: Some(User {
                        id: node_id(num),
                        ..User::default()
                    }),
                    ..NodeInfo::default()
                });
                radio.mesh.len() - 1
            }
        };
        let how = if portnum == PortNum::NodeinfoApp {
            Sighting::NodeInfo
        } else {
            Sighting::Packet(portnum)
        };
        self.shared.hear(index, &how);
    }

    /// Applies a fault or mesh event now.
    pub async fn inject(&self, fault: Fault) {
        apply(fault, &self.shared, &self.control).await;
    }

    /// Stops listening and closes the client.
    pub async fn shutdown(mut self) {
        let _ = self.control.send(ListenerCmd::Shutdown).await;
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn apply(fault: Fault, shared: &Arc<Shared>, control: &mpsc::Sender<ListenerCmd>) {
    if fault.is_mesh_event() {
        apply_mesh(shared, fault);
    } else {
        let (done, applied) = tokio::sync::oneshot::channel();
        if control.send(ListenerCmd::Fault(fault, done)).await.is_ok() {
            let _ = applied.await;
        }
    }
}

/// Events on the mesh side need no listener: the radio state changes and the packet goes out.
fn apply_mesh(shared: &Shared, fault: Fault) {
    match fault {
        Fault::KeyChange { node } => shared.key_change(node),
        Fault::NewNodes { count, portnum } => shared.new_nodes(count, portnum),
        Fault::Announce { node } => shared.hear(node, &Sighting::NodeInfo),
        Fault::Heard { node, portnum } => shared.hear(node, &Sighting::Packet(portnum)),
        Fault::BadUtf8Name { node } => shared.hear(node, &Sighting::BadUtf8),
        Fault::DmFail { node } => {
            let (to, id) = {
                let mut radio = shared.radio();
                let to = radio.mesh.get(node).map(|n| n.num);
                (to, radio.population.packet_id())
            };
            match to {
                Some(to) => shared.dm_fail(to, id),
                None => log::warn!(target: "keysync::sim", "no generated node #{node} for dm-fail"),
            }
        }
        Fault::Operator { action, node } => {
            let num = shared.radio().mesh.get(node).map(|n| n.num);
            match num {
                Some(num) => {
                    shared.operator(action, num);
                }
                None => {
                    log::warn!(target: "keysync::sim", "no generated node #{node} to {}", action.name());
                }
            }
        }
        Fault::QueueFull { duration } => {
            log::info!(target: "keysync::sim", "fault: packet queue full for {}", humantime::format_duration(duration));
            shared.radio().queue_full_until = Some(Instant::now() + duration);
        }
        Fault::SilentQueue { duration } => {
            log::info!(target: "keysync::sim", "fault: no QueueStatus for packets for {}", humantime::format_duration(duration));
            shared.radio().silent_until = Some(Instant::now() + duration);
        }
        other => log::warn!(target: "keysync::sim", "{other:?} is not a mesh event"),
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(64)
}

/// The connected client, as the listener sees it.
struct Current {
    kick: CancellationToken,
    cmds: mpsc::Sender<ClientCmd>,
    task: JoinHandle<()>,
}

/// Accepts clients one at a time (a new one closes the old one) and applies listener faults.
async fn listen(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut control: mpsc::Receiver<ListenerCmd>,
) {
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    let mut listener = Some(listener);
    let mut back_at: Option<Instant> = None;
    let mut current: Option<Current> = None;
    loop {
        let step = tokio::select! {
            accepted = accept_on(listener.as_ref()) => Step::Accepted(accepted),
            () = rebind_at(back_at) => Step::Rebind,
            () = shared.crashed.notified() => Step::Crashed,
            cmd = control.recv() => Step::Command(cmd),
        };
        match step {
            Step::Accepted(Err(e)) => {
                log::warn!(target: "keysync::sim", "accept failed: {e}");
            }
            Step::Accepted(Ok((stream, peer))) => {
                if let Some(old) = current.take().filter(|c| !c.task.is_finished()) {
                    log::info!(target: "keysync::sim", "Force close previous TCP connection");
                    old.kick.cancel();
                }
                shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                log::info!(target: "keysync::sim", "client {peer} connected");
                let kick = CancellationToken::new();
                let (cmds, cmd_rx) = mpsc::channel(8);
                let _ = stream.set_nodelay(true);
                let task = tokio::spawn(session::serve(
                    Box::new(stream),
                    peer.to_string(),
                    session::Port::Tcp,
                    shared.clone(),
                    kick.clone(),
                    cmd_rx,
                ));
                current = Some(Current { kick, cmds, task });
            }
            Step::Crashed => {
                if let Some(old) = current.take() {
                    old.kick.cancel();
                }
                listener = None;
                back_at = Some(Instant::now() + shared.config.reboot_time);
            }
            Step::Rebind => {
                back_at = None;
                match bind(addr) {
                    Ok(l) => {
                        log::info!(target: "keysync::sim", "accepting connections again on {addr}");
                        shared.radio().down = false;
                        listener = Some(l);
                    }
                    Err(e) => {
                        log::error!(target: "keysync::sim", "cannot listen on {addr} again: {e}; retrying");
                        back_at = Some(Instant::now() + Duration::from_millis(200));
                    }
                }
            }
            Step::Command(None | Some(ListenerCmd::Shutdown)) => {
                if let Some(old) = current.take() {
                    old.kick.cancel();
                }
                return;
            }
            Step::Command(Some(ListenerCmd::Fault(fault, done))) => {
                apply_to_listener(fault, &shared, &mut current, &mut listener, &mut back_at).await;
                let _ = done.send(());
            }
        }
    }
}

/// Applies a fault that concerns the listener or the connected client.
async fn apply_to_listener(
    fault: Fault,
    shared: &Arc<Shared>,
    current: &mut Option<Current>,
    listener: &mut Option<TcpListener>,
    back_at: &mut Option<Instant>,
) {
    match fault {
        Fault::Drop => {
            log::info!(target: "keysync::sim", "fault: dropping the client");
            if let Some(old) = current.take() {
                old.kick.cancel();
            }
        }
        Fault::Stall { duration } => {
            log::info!(target: "keysync::sim", "fault: stalling for {}", humantime::format_duration(duration));
            if let Some(c) = current.as_ref() {
                let _ = c.cmds.send(ClientCmd::Stall(duration)).await;
            }
        }
        Fault::Frame { payload } => {
            let mut framed = bytes::BytesMut::new();
            if keysync_engine::encode_raw(&payload, &mut framed).is_ok()
                && let Some(c) = current.as_ref()
            {
                let _ = c.cmds.send(ClientCmd::Garbage(framed.to_vec())).await;
            }
        }
        Fault::Garbage { bytes } => {
            let noise = garbage(shared, bytes);
            log::info!(target: "keysync::sim", "fault: sending {} bytes of garbage", noise.len());
            if let Some(c) = current.as_ref() {
                let _ = c.cmds.send(ClientCmd::Garbage(noise)).await;
            }
        }
        Fault::Refuse { duration } => {
            log::info!(target: "keysync::sim", "fault: refusing connections for {}", humantime::format_duration(duration));
            *listener = None;
            *back_at = Some(Instant::now() + duration);
        }
        Fault::Reboot { down, .. } | Fault::Unplug { down } => {
            let forget = match fault {
                Fault::Reboot { forget, .. } => forget,
                _ => Forget::Nothing,
            };
            log::info!(target: "keysync::sim", "fault: rebooting (down {}, forgetting {forget:?})", humantime::format_duration(down));
            if let Some(old) = current.take() {
                old.kick.cancel();
            }
            shared.go_down(forget);
            *listener = None;
            *back_at = Some(Instant::now() + down);
        }
        mesh_event => apply_mesh(shared, mesh_event),
    }
}

enum Step {
    Accepted(io::Result<(tokio::net::TcpStream, SocketAddr)>),
    Rebind,
    Crashed,
    Command(Option<ListenerCmd>),
}

async fn accept_on(
    listener: Option<&TcpListener>,
) -> io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn rebind_at(at: Option<Instant>) {
    match at {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Noise with a bogus oversize header and stray magic bytes in it.
fn garbage(shared: &Shared, n: usize) -> Vec<u8> {
    let mut noise = shared.radio().population.bytes(n);
    for (i, b) in [0x94, 0xC3, 0x02, 0x58].into_iter().enumerate() {
        if let Some(slot) = noise.get_mut(i) {
            *slot = b;
        }
    }
    if let Some(slot) = noise.get_mut(n / 2) {
        *slot = 0x94;
    }
    shared
        .counters
        .garbage_bytes_sent
        .fetch_add(noise.len() as u64, Ordering::Relaxed);
    noise
}

async fn announce_loop(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    let mut next = 0usize;
    loop {
        tick.tick().await;
        let count = shared.radio().mesh.len();
        if count == 0 {
            continue;
        }
        // Walk the mesh in a stride so successive announcements come from different nodes.
        next = (next + 7) % count;
        shared.hear(next, &Sighting::NodeInfo);
    }
}

async fn run_scenario(scenario: Scenario, shared: Arc<Shared>, control: mpsc::Sender<ListenerCmd>) {
    let mut start = Instant::now();
    loop {
        for event in &scenario.events {
            sleep_until(start + event.at).await;
            apply(event.fault.clone(), &shared, &control).await;
        }
        let Some(repeat) = scenario.repeat else {
            return;
        };
        start += repeat;
        sleep_until(start).await;
    }
}

/// Convenience for tests and tools: the counter values now, each under its field's name, with
/// the frames received by kind.
pub fn snapshot(c: &SimCounters) -> BTreeMap<&'static str, u64> {
    // Each field is named once: its key is `stringify!` of the field, so the two cannot drift.
    macro_rules! by_name {
        ($($field:ident),+ $(,)?) => {
            [$((stringify!($field), SimCounters::get(&c.$field))),+]
        };
    }
    let mut m = c.received();
    m.extend(by_name![
        connections,
        add_contacts,
        invalid_contacts,
        flash_writes,
        idle_closes,
        crashes,
        refused_nodes,
        mesh_sent,
        rate_limited,
        pki_send_fails,
        ignored_admin,
        operator_actions,
        lora_restarts,
        nodeinfo_broadcasts,
        deferred_nodes,
    ]);
    m
}

/// What the radio does with `num` heard `how`: the packet it passes on (port and payload) and
/// what its NodeDB made of it.
fn sighted(
    radio: &mut Radio,
    num: u32,
    user: &User,
    how: &Sighting,
    utf8_validated: bool,
) -> (PortNum, Vec<u8>, Heard) {
    match how {
        Sighting::NodeInfo => {
            radio.nodeinfo_sent.insert(num, Instant::now());
            let outcome = radio.db.heard(num, user, None, now_secs());
            (PortNum::NodeinfoApp, user.encode_to_vec(), outcome)
        }
        Sighting::BadUtf8 => {
            let raw = bad_utf8_names(user);
            let payload = user_with_raw_names(user, &raw);
            // Stored with each invalid byte as `?`: sanitized for good from 2.7.23
            // (meshUtils.cpp sanitizeUtf8); before that the raw bytes are kept and sent.
            let sanitized = User {
                long_name: sanitize_utf8(&raw.long_name),
                short_name: sanitize_utf8(&raw.short_name),
                ..user.clone()
            };
            let keep_raw = (!utf8_validated).then_some(raw);
            let outcome = radio.db.heard(num, &sanitized, keep_raw, now_secs());
            (PortNum::NodeinfoApp, payload, outcome)
        }
        Sighting::Packet(portnum) => {
            let outcome = radio.db.heard_packet(num, now_secs(), Instant::now());
            (*portnum, portnum_payload(*portnum), outcome)
        }
    }
}

/// The firmware's log line for what a NodeInfo did to a stored key.
fn log_key_outcome(num: u32, outcome: Heard) {
    match outcome {
        Heard::KeyMismatch | Heard::KeylessDropped => {
            log::info!(target: "keysync::sim", "Public Key mismatch, dropping NodeInfo of {}", node_id(num));
        }
        Heard::KeyKept => {
            log::info!(target: "keysync::sim", "Public Key set for node {}, not updating!", node_id(num));
        }
        Heard::KeyErased => {
            log::info!(target: "keysync::sim", "keyless NodeInfo of {} erased its stored key (updateUser before #6372)", node_id(num));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodeinfo_ping_goes_out_at_most_once_per_60_s() {
        // NodeInfoModule.cpp allocReply: Throttle::isWithinTimespanMs(lastNodeInfo, 60 * 1000).
        let t0 = Instant::now();
        assert!(nodeinfo_due(None, t0));
        assert!(!nodeinfo_due(Some(t0), t0 + Duration::from_secs(59)));
        assert!(nodeinfo_due(Some(t0), t0 + Duration::from_secs(60)));
    }

    #[test]
    fn snapshot_keys_each_reported_counter_by_its_field_beside_the_frames_received() {
        let c = SimCounters::default();
        c.add_contacts.store(3, Ordering::Relaxed);
        c.operator_actions.store(1, Ordering::Relaxed);
        c.bytes_received.store(99, Ordering::Relaxed);
        c.count("heartbeat");
        let snap = snapshot(&c);
        assert_eq!(snap.get("add_contacts"), Some(&3));
        assert_eq!(snap.get("operator_actions"), Some(&1));
        assert_eq!(snap.get("connections"), Some(&0));
        assert_eq!(snap.get("heartbeat"), Some(&1));
        // Fifteen counters and the one kind of frame received; byte counts are not reported.
        assert_eq!(snap.len(), 16);
        assert!(!snap.contains_key("bytes_received"));
    }
}
