//! Proxy mode (`--listen`): keysync owns the radio's one TCP slot and serves the gateway's bot
//! and apps as if it were the radio.
//!
//! - A downstream `want_config_id` is answered from the radio's configuration plus the current
//!   node list, in firmware order — never forwarded (full downloads of a large NodeDB drop
//!   links). One replay per client at a time; the private key is left out for clients that may
//!   not administer the radio.
//! - The replay follows the radio: the node list becomes exactly what each nodes-only refresh
//!   of the sync engine delivered (evicted and removed nodes go), a client's remove, favourite
//!   and ignore are applied as they pass; an admin message that changes channels, config or
//!   owner (or a channel or config from the radio that differs from the cached one) makes
//!   keysync refresh the configuration with a config-only download (69420), and a replay asked
//!   for meanwhile waits for it (bounded).
//! - What the radio sent goes to clients as the radio's bytes (live frames, QueueStatus answers,
//!   the handshake's config frames): fields this crate does not know survive. Only frames
//!   keysync composes (my_info with the count, node_infos, the complete id, a blanked private
//!   key, heartbeat answers) are encoded here.
//! - Live frames from the radio fan out to every configured client (from the moment its replay
//!   is written, never before its `config_complete_id`) through a bounded queue per client (the
//!   oldest dropped and counted, like the radio's own 32-frame queue); keysync's own traffic
//!   (node lists it downloads, QueueStatus for its pushes and heartbeats) is not shown.
//! - Each client is held to the firmware's per-connection limits as if it were the radio's only
//!   client (`fair`): over a limit it is answered as the firmware answers; within them its
//!   packets wait in its own bounded queue until keysync's one connection may send them, so no
//!   client's packet is refused for another's traffic. One writer takes the queues in turn,
//!   paced by the radio's QueueStatus; the QueueStatus that answers a packet goes back to the
//!   client that sent it (a packet without an id gets one).
//! - Downstream heartbeats are answered by keysync only while the radio link is up. A client
//!   silent past the firmware's idle close, or stuck in a partial frame, is closed.
//! - Admin payloads that do not decode are dropped. add_contact with an empty or invalid key
//!   is dropped (it would erase the key on the radio); one with a valid key is learned under the
//!   usual trust rules and forwarded unless it replaces a trusted key. Destructive admin
//!   messages are logged and can be denied (`--deny-admin`); other admin messages pass from
//!   loopback clients only, unless `--allow-remote-admin`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use meshtastic::protobufs::{
    AdminMessage, ClientNotification, Data, FromRadio, MeshPacket, NodeInfo, PortNum, Routing,
    SharedContact, ToRadio, admin_message, config, from_radio, log_record, mesh_packet, routing,
    to_radio,
};
use rand::RngExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::{Instant, sleep, timeout};
use tokio_util::codec::{Decoder, Framed, FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

mod admin;

pub use admin::{AdminDenial, DestructiveAdmin};
use admin::{AdminRead, Carried};

use crate::codec::{CodecError, RadioCodec, RadioFrame, encode_raw};
use crate::link::{LinkNotice, LinkSender, Session, is_config_part};
use crate::radio::{
    CONFIG_ONLY_NONCE, NODES_ONLY_NONCE, NodeSeen, PublicKey, Source, admin_of, firmware_version,
    is_node_num, node_id, valid_key,
};

mod fair;

/// Frames a slow client may fall behind before the oldest are dropped (the radio's own queue).
pub const CLIENT_QUEUE: usize = 32;
/// Packets one client may have waiting for the radio: the radio's own queue (`maxlen`).
const HELD_PER_CLIENT: usize = 16;
/// Packets all clients together may have waiting, clients that left included.
const HELD_TOTAL: usize = 256;
/// How long a client's config request waits for the first upstream handshake.
const CONFIG_WAIT: Duration = Duration::from_secs(30);
/// How long the upstream writer waits for the QueueStatus that answers a packet; the radio
/// does not always send one.
const ANSWER_WAIT: Duration = Duration::from_secs(1);
/// How long it waits for room while the radio says its queue is full (`free == 0`).
const ROOM_WAIT: Duration = Duration::from_secs(3);
/// How often the upstream writer looks for the radio while it is away.
const AWAY_POLL: Duration = Duration::from_millis(200);
/// `res` of a QueueStatus for a packet the radio's full queue refused (ERRNO_UNKNOWN).
const RES_QUEUE_FULL: i32 = 32;
/// Packet ids awaiting their QueueStatus; past this the map is cleared (answers are not
/// guaranteed, so entries must not pile up).
const PENDING_IDS: usize = 512;
/// How long a replay waits for a config-only refresh under way: the Python client gives up on
/// a download after 30 s.
const REFRESH_WAIT: Duration = Duration::from_secs(10);
/// Nodes the replay's list holds at most (radios hold 10 to 250; Linux native is configurable):
/// a radio that sends more is not followed into unbounded memory.
const MAX_NODES: usize = 4096;
/// Configuration frames a download may carry (about 40 on firmware 2.7).
const MAX_CONFIG_FRAMES: usize = 256;

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub max_clients: usize,
    /// Keep clients connected through a radio outage this long; close them after.
    pub downstream_grace: Duration,
    pub allow_remote_admin: bool,
    /// Destructive admin messages dropped whoever sends them (`--deny-admin`).
    pub deny_admin: Vec<DestructiveAdmin>,
    /// A client that sends no frame this long is closed ([`ProxyConfig::IDLE_CLOSE`]).
    pub idle_close: Duration,
    /// A client whose frame stays incomplete this long is closed
    /// ([`ProxyConfig::PARTIAL_FRAME`]): it would hold a client slot for good.
    pub partial_frame: Duration,
}

impl ProxyConfig {
    /// The firmware closes a client silent for 15 minutes (PhoneAPI).
    pub const IDLE_CLOSE: Duration = Duration::from_secs(15 * 60);
    pub const PARTIAL_FRAME: Duration = Duration::from_secs(10);

    /// Clients served on `listen`: eight at most, kept through a 30 s radio outage, admin
    /// from loopback only, nothing denied.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            max_clients: 8,
            downstream_grace: Duration::from_secs(30),
            allow_remote_admin: false,
            deny_admin: Vec::new(),
            idle_close: Self::IDLE_CLOSE,
            partial_frame: Self::PARTIAL_FRAME,
        }
    }
}

/// Who may administer the radio through the proxy, in words for the start-up log.
fn admin_policy(config: &ProxyConfig) -> String {
    let who = if config.allow_remote_admin {
        "admin from any client"
    } else {
        "admin from loopback clients only"
    };
    let denied: Vec<&str> = config.deny_admin.iter().map(|k| k.name()).collect();
    if denied.is_empty() {
        format!("; {who}")
    } else {
        format!("; {who}, {} dropped from every client", denied.join(", "))
    }
}

/// One downstream client, for the monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientView {
    pub addr: SocketAddr,
    pub since: SystemTime,
    pub frames_in: u64,
    pub frames_out: u64,
    pub dropped: u64,
    pub last_activity: SystemTime,
}

#[derive(Debug)]
struct ClientStats {
    /// Which client, for its held queue.
    id: u64,
    addr: SocketAddr,
    since: SystemTime,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    dropped: AtomicU64,
    last_activity: Mutex<SystemTime>,
}

impl ClientStats {
    fn touch(&self) {
        *lock(&self.last_activity) = SystemTime::now();
    }

    fn view(&self) -> ClientView {
        ClientView {
            addr: self.addr,
            since: self.since,
            frames_in: self.frames_in.load(Ordering::Relaxed),
            frames_out: self.frames_out.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            last_activity: *lock(&self.last_activity),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the upstream side knows: the handshake, the radio's configuration and node list as
/// of the latest downloads.
#[derive(Debug, Default)]
struct Upstream {
    session: Option<Arc<Session>>,
    /// The configuration frames (my_info, own node_info, metadata, channels, configs, module
    /// configs, files) of the handshake, then of each config-only refresh, as the radio sent
    /// them.
    config: Vec<RadioFrame>,
    /// Node number → latest node_info, in first-seen order.
    nodes: Vec<NodeInfo>,
    up: bool,
    /// The download keysync asked for that is under way.
    download: Option<Collecting>,
}

/// What a download keysync asked for (a nodes-only refresh of the sync engine, a config-only
/// refresh of the proxy) has delivered so far.
#[derive(Debug)]
struct Collecting {
    nonce: u32,
    nodes: Vec<NodeInfo>,
    config: Vec<RadioFrame>,
}

impl Collecting {
    fn new(nonce: u32) -> Self {
        Self {
            nonce,
            nodes: Vec::new(),
            config: Vec::new(),
        }
    }

    fn has_nodes(&self) -> bool {
        self.nonce != CONFIG_ONLY_NONCE
    }

    fn has_config(&self) -> bool {
        self.nonce != NODES_ONLY_NONCE
    }
}

#[derive(Debug)]
struct Shared {
    config: ProxyConfig,
    upstream: Mutex<Upstream>,
    /// Config-only refreshes asked for and not completed; a replay waits for none.
    refreshes: watch::Sender<u32>,
    session_ready: watch::Sender<bool>,
    /// Live frames for configured clients.
    live: broadcast::Sender<Arc<RadioFrame>>,
    /// Packet id → the client that sent it, for routing QueueStatus.
    pending_ids: Mutex<HashMap<u32, mpsc::Sender<ToClient>>>,
    /// Clients' DMs sent once, and those sent again after the radio lacked the key.
    retries: Mutex<DmRetries>,
    clients: Mutex<Vec<Arc<ClientStats>>>,
    views: watch::Sender<Vec<ClientView>>,
    learned: mpsc::Sender<NodeSeen>,
    /// The engine's view, read for the keys the operator trusts (add_contact may not replace
    /// one). Read-only, and as fresh as the engine's last publish: a key learned a moment ago
    /// may not be there yet.
    engine: watch::Receiver<crate::Snapshot>,
    /// What clients may send, waiting for the radio.
    held: Mutex<Held>,
    /// Told when something was held.
    held_more: tokio::sync::Notify,
    /// The radio's queue as its last QueueStatus told.
    radio_queue: Mutex<QueueRoom>,
    next_client: AtomicU64,
    /// Cancelled to close every client (a long radio outage).
    close_all: Mutex<CancellationToken>,
    /// Cancelled when the proxy stops: every client closes.
    stop: CancellationToken,
}

/// The clients' packets waiting for the radio.
#[derive(Debug)]
struct Held {
    queues: fair::HeldQueues<Upward>,
    overflow: OverflowLog,
}

/// How many DMs are remembered for a second try, and how many second tries are followed.
const DM_RETRIES_KEPT: usize = 32;

/// A client's DM that failed for lack of its destination's key goes again, once: keysync
/// pushes the key (the engine answers the same failure), then sends the DM under a new id (the
/// radio ignores a repeated one) and maps the answers back to the client's id. The client
/// sees the routing error only when the second try fails too.
#[derive(Debug, Default)]
struct DmRetries {
    /// DMs sent once: their id, the client's queue, the frame and the port it was paced by.
    first: VecDeque<FirstTry>,
    /// DMs sent again: the new id → the client's id and where its answers go.
    again: VecDeque<(u32, u32, mpsc::Sender<ToClient>)>,
}

#[derive(Debug)]
struct FirstTry {
    id: u32,
    client: u64,
    msg: ToRadio,
    portnum: Option<i32>,
    reply: mpsc::Sender<ToClient>,
}

impl DmRetries {
    fn sent(&mut self, first: FirstTry) {
        if self.first.len() == DM_RETRIES_KEPT {
            self.first.pop_front();
        }
        self.first.push_back(first);
    }

    fn take_first(&mut self, id: u32) -> Option<FirstTry> {
        let i = self.first.iter().position(|f| f.id == id)?;
        self.first.remove(i)
    }

    fn sent_again(&mut self, new_id: u32, id: u32, reply: mpsc::Sender<ToClient>) {
        if self.again.len() == DM_RETRIES_KEPT {
            self.again.pop_front();
        }
        self.again.push_back((new_id, id, reply));
    }

    /// The client's id and channel for an answer to `new_id`, if it was a second try.
    fn again_of(&self, new_id: u32) -> Option<(u32, mpsc::Sender<ToClient>)> {
        self.again
            .iter()
            .find(|(n, _, _)| *n == new_id)
            .map(|(_, id, reply)| (*id, reply.clone()))
    }
}

/// A client's frame on its way to the radio.
#[derive(Debug)]
struct Upward {
    msg: ToRadio,
    /// The packet's id (0 for frames other than packets, which get no QueueStatus).
    id: u32,
    /// The port of a packet that is not encrypted: what the firmware's limits go by.
    portnum: Option<i32>,
    /// Where the radio's answer goes.
    reply: mpsc::Sender<ToClient>,
    /// A DM whose destination's key the engine was asked to push first.
    key: Option<KeyWait>,
}

impl Upward {
    fn new(msg: ToRadio, id: u32, portnum: Option<i32>, reply: mpsc::Sender<ToClient>) -> Self {
        Self {
            msg,
            id,
            portnum,
            reply,
            key: None,
        }
    }

    /// Until when the packet waits for its destination's key, if it still does.
    fn key_wait(&self) -> Option<Instant> {
        self.key
            .as_ref()
            .filter(|k| !k.done.load(Ordering::Acquire))
            .map(|k| k.until)
    }
}

/// A DM waiting for its destination's key to be pushed: until the engine says it is done, or
/// [`KEY_WAIT`] passes. Other clients' packets go meanwhile.
#[derive(Debug)]
struct KeyWait {
    until: Instant,
    done: Arc<AtomicBool>,
}

/// Room in the radio's queue for packets from its client.
#[derive(Debug, Clone, Copy)]
struct QueueRoom {
    free: u32,
    maxlen: u32,
}

impl Default for QueueRoom {
    fn default() -> Self {
        Self {
            free: 16,
            maxlen: 16,
        }
    }
}

/// What goes to one client's writer besides live frames.
#[derive(Debug)]
enum ToClient {
    /// A whole config download; `then_live` when live frames follow it (not after a
    /// nodes-only refresh).
    Replay {
        frames: Vec<RadioFrame>,
        then_live: bool,
    },
    /// One answer (a QueueStatus), as the bytes of its frame.
    Frame(Bytes),
}

impl Shared {
    fn publish_views(&self) {
        let views = lock(&self.clients).iter().map(|c| c.view()).collect();
        self.views.send_replace(views);
    }

    /// The radio's firmware version, as far as the handshake told.
    fn firmware(&self) -> fair::Version {
        lock(&self.upstream)
            .session
            .as_ref()
            .and_then(|s| firmware_version(&s.firmware))
    }
}

/// The running proxy: its tasks, and the token that stops them and its clients.
#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    pub clients: watch::Receiver<Vec<ClientView>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Closes every client and stops serving; when it returns the listening port is free.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

/// The proxy's address, bound but not serving yet: bound before the radio is dialled, so that
/// a taken port fails keysync before it takes the radio's one TCP slot from another client.
#[derive(Debug)]
pub struct Bound {
    config: ProxyConfig,
    listener: TcpListener,
}

/// Binds `config.listen`.
pub fn bind(config: ProxyConfig) -> std::io::Result<Bound> {
    let listener = std::net::TcpListener::bind(config.listen)?;
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    Ok(Bound { config, listener })
}

impl Bound {
    /// Where clients connect.
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves downstream clients from the link's notices and sender. Keys that clients hand
    /// to the radio with add_contact come out on `learned`.
    pub fn serve(
        self,
        notices: broadcast::Receiver<LinkNotice>,
        sender: LinkSender,
        learned: mpsc::Sender<NodeSeen>,
        needs: mpsc::Sender<crate::KeyNeed>,
        engine: watch::Receiver<crate::Snapshot>,
    ) -> std::io::Result<Proxy> {
        let Self { config, listener } = self;
        let addr = listener.local_addr()?;
        let (views, clients) = watch::channel(Vec::new());
        let shared = Arc::new(Shared {
            config,
            upstream: Mutex::new(Upstream::default()),
            refreshes: watch::channel(0).0,
            session_ready: watch::channel(false).0,
            live: broadcast::channel(CLIENT_QUEUE).0,
            pending_ids: Mutex::new(HashMap::new()),
            retries: Mutex::new(DmRetries::default()),
            clients: Mutex::new(Vec::new()),
            views,
            learned,
            engine,
            held: Mutex::new(Held {
                queues: fair::HeldQueues::new(HELD_PER_CLIENT, HELD_TOTAL),
                overflow: OverflowLog::default(),
            }),
            held_more: tokio::sync::Notify::new(),
            radio_queue: Mutex::new(QueueRoom::default()),
            next_client: AtomicU64::new(1),
            close_all: Mutex::new(CancellationToken::new()),
            stop: CancellationToken::new(),
        });
        log::info!(target: "keysync::engine::proxy", "serving downstream clients on {addr}{}", admin_policy(&shared.config));
        let answers = notices.resubscribe();
        let stop = shared.stop.clone();
        let tasks = vec![
            tokio::spawn(follow_upstream(shared.clone(), notices, sender.clone())),
            tokio::spawn(write_upstream(shared.clone(), answers, sender, needs)),
            tokio::spawn(accept(shared.clone(), listener)),
            tokio::spawn(refresh_views(shared)),
        ];
        Ok(Proxy {
            addr,
            clients,
            stop,
            tasks,
        })
    }
}

async fn refresh_views(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        shared.publish_views();
    }
}

/// Tracks the upstream session, configuration and node list, routes QueueStatus, fans out live
/// frames, refreshes the configuration when the radio shows it changed, and closes clients
/// after a long outage.
async fn follow_upstream(
    shared: Arc<Shared>,
    mut notices: broadcast::Receiver<LinkNotice>,
    sender: LinkSender,
) {
    let mut down_since: Option<Instant> = None;
    loop {
        let grace_left = down_since.map(|t| {
            (t + shared.config.downstream_grace).saturating_duration_since(Instant::now())
        });
        let notice = match grace_left {
            Some(left) => timeout(left, notices.recv()).await,
            None => Ok(notices.recv().await),
        };
        let Ok(notice) = notice else {
            log::warn!(target: "keysync::engine::proxy",
                "the radio has been away longer than {}: closing downstream clients so they reconnect and see the truth",
                humantime::format_duration(shared.config.downstream_grace));
            let token = std::mem::take(&mut *lock(&shared.close_all));
            token.cancel();
            down_since = None;
            continue;
        };
        match notice {
            Err(broadcast::error::RecvError::Lagged(n)) => {
                crate::log_limited!(warn, "proxy-behind", target: "keysync::engine::proxy", "fell {n} frames behind the radio");
            }
            Err(broadcast::error::RecvError::Closed) => return,
            Ok(LinkNotice::Up(session)) => {
                down_since = None;
                let mut up = lock(&shared.upstream);
                up.nodes.clone_from(&session.nodes);
                up.nodes.truncate(MAX_NODES);
                up.config.clone_from(&session.config);
                up.config.truncate(MAX_CONFIG_FRAMES);
                up.session = Some(session);
                up.up = true;
                up.download = None;
                drop(up);
                shared.session_ready.send_replace(true);
            }
            Ok(LinkNotice::Down(_)) => {
                let mut up = lock(&shared.upstream);
                up.up = false;
                up.download = None;
                drop(up);
                down_since = Some(Instant::now());
            }
            Ok(LinkNotice::Download(nonce)) => {
                lock(&shared.upstream).download = Some(Collecting::new(nonce));
            }
            Ok(LinkNotice::Frame(frame)) => {
                if on_frame(&shared, frame) {
                    refresh_config(&shared, &sender).await;
                }
            }
            Ok(LinkNotice::Contact(contact)) => on_contact(&shared, &contact),
        }
    }
}

/// Follows one frame from the radio; true when it shows the cached configuration is stale.
fn on_frame(shared: &Shared, frame: Arc<RadioFrame>) -> bool {
    use from_radio::PayloadVariant as V;
    if collect(shared, &frame) {
        return false;
    }
    match &frame.payload_variant {
        Some(V::NodeInfo(node)) => upsert(&mut lock(&shared.upstream).nodes, node.clone()),
        Some(V::Channel(_) | V::Config(_) | V::ModuleConfig(_)) => {
            // Not part of a download keysync asked for: the radio says what it holds now.
            let up = lock(&shared.upstream);
            if up.up
                && let Some(part) = frame
                    .payload_variant
                    .as_ref()
                    .and_then(ConfigPart::of_frame)
            {
                return part.differs_from(&up.config);
            }
        }
        Some(V::QueueStatus(q)) => {
            // Only answers to a client's packet go back, to that client alone.
            let client = lock(&shared.pending_ids).remove(&q.mesh_packet_id);
            if let Some(client) = client {
                let again = lock(&shared.retries).again_of(q.mesh_packet_id);
                let bytes = match again {
                    // A second try is answered under the client's own id.
                    Some((id, _)) => {
                        let mut q = *q;
                        q.mesh_packet_id = id;
                        composed(V::QueueStatus(q))
                    }
                    None => frame.payload.clone(),
                };
                let _ = client.try_send(ToClient::Frame(bytes));
            }
        }
        Some(V::ConfigCompleteId(_)) => {}
        Some(V::Packet(packet)) => {
            if retry_dm(shared, packet) {
                return false;
            }
            let stale = admin_answer_differs(shared, packet);
            if let Some(seen) = crate::radio::node_seen(&frame) {
                let mut up = lock(&shared.upstream);
                if let Some(node) = up.nodes.iter_mut().find(|n| n.num == seen.num) {
                    // Mirror the firmware: names follow the announcement, a stored key stays.
                    if let Some(user) = node.user.as_mut() {
                        user.long_name.clone_from(&seen.long_name);
                        user.short_name.clone_from(&seen.short_name);
                        if valid_key(&user.public_key).is_none() {
                            user.public_key.clone_from(&seen.public_key);
                        }
                    }
                    node.last_heard = packet.rx_time;
                }
            }
            if lock(&shared.upstream).up {
                let _ = shared.live.send(frame);
            }
            return stale;
        }
        // Including what this crate cannot name (newer firmware's variants): relayed as is.
        Some(_) | None => {
            if lock(&shared.upstream).up {
                let _ = shared.live.send(frame);
            }
        }
    }
    false
}

/// An add_contact the radio took: it replaced the node's user (or created the node) and made it
/// a favourite (NodeDB.cpp addFromContact); the next nodes-only refresh corrects what differs.
/// One with `should_ignore` or without a valid key is never written (the proxy drops it, the
/// engine never composes it), so it is not applied either.
fn on_contact(shared: &Shared, contact: &SharedContact) {
    let Some(user) = contact.user.as_ref() else {
        return;
    };
    if contact.should_ignore || valid_key(&user.public_key).is_none() {
        return;
    }
    let mut up = lock(&shared.upstream);
    if let Some(node) = up.nodes.iter_mut().find(|n| n.num == contact.node_num) {
        node.user = Some(user.clone());
        node.is_favorite = true;
    } else if up.nodes.len() < MAX_NODES {
        up.nodes.push(NodeInfo {
            num: contact.node_num,
            user: Some(user.clone()),
            is_favorite: true,
            ..NodeInfo::default()
        });
    }
}

/// The bytes of a frame keysync composes.
fn composed(variant: from_radio::PayloadVariant) -> Bytes {
    RadioFrame::composed(FromRadio {
        id: 0,
        payload_variant: Some(variant),
    })
    .payload
}

/// Follows the radio's answers to clients' DMs: a first try that failed for lack of the key
/// goes back into its client's queue under a new id (the writer asks the engine for the key
/// first, as for any DM); an answer to a second try goes to its client alone, under the
/// client's id. True when the frame was handled here and goes to no other client.
fn retry_dm(shared: &Shared, packet: &MeshPacket) -> bool {
    let Some(mesh_packet::PayloadVariant::Decoded(data)) = &packet.payload_variant else {
        return false;
    };
    if data.request_id == 0 {
        return false;
    }
    let again = lock(&shared.retries).again_of(data.request_id);
    if let Some((id, reply)) = again {
        let mut answer = packet.clone();
        if let Some(mesh_packet::PayloadVariant::Decoded(d)) = answer.payload_variant.as_mut() {
            d.request_id = id;
        }
        let _ = reply.try_send(ToClient::Frame(composed(
            from_radio::PayloadVariant::Packet(answer),
        )));
        return true;
    }
    if crate::radio::pki_send_failed(packet).is_none() {
        return false;
    }
    let Some(first) = lock(&shared.retries).take_first(data.request_id) else {
        return false;
    };
    let Some(to_radio::PayloadVariant::Packet(mut dm)) = first.msg.payload_variant else {
        return false;
    };
    let new_id = loop {
        let id = rand::rng().random_range(1..u32::MAX);
        if id != first.id {
            break id;
        }
    };
    log::info!(target: "keysync::engine::proxy",
        "the radio lacked the key for a client's DM to {}: sending it again once its key is pushed",
        crate::radio::node_id(dm.to));
    dm.id = new_id;
    let msg = ToRadio {
        payload_variant: Some(to_radio::PayloadVariant::Packet(dm)),
    };
    lock(&shared.retries).sent_again(new_id, first.id, first.reply.clone());
    lock(&shared.held).queues.put_back(
        first.client,
        Upward::new(msg, new_id, first.portnum, first.reply),
    );
    shared.held_more.notify_one();
    true
}

fn upsert(nodes: &mut Vec<NodeInfo>, node: NodeInfo) {
    if let Some(slot) = nodes.iter_mut().find(|n| n.num == node.num) {
        *slot = node;
    } else if nodes.len() < MAX_NODES {
        nodes.push(node);
    }
}

/// Takes a frame of the download keysync asked for; true when the frame was part of it and
/// needs nothing more. The download's `config_complete_id` replaces the node list with
/// exactly the nodes it carried (a node the radio evicted or lost is gone) and the
/// configuration with the one it carried.
fn collect(shared: &Shared, frame: &RadioFrame) -> bool {
    use from_radio::PayloadVariant as V;
    let mut up = lock(&shared.upstream);
    let own = up.session.as_ref().map_or(0, |s| s.my_node_num);
    let Some(download) = up.download.as_mut() else {
        return false;
    };
    match &frame.payload_variant {
        Some(V::ConfigCompleteId(n)) if *n == download.nonce => {
            let Some(done) = up.download.take() else {
                return false;
            };
            finish(&mut up, done, own);
            drop(up);
            if !matches!(
                frame.payload_variant,
                Some(V::ConfigCompleteId(NODES_ONLY_NONCE))
            ) {
                shared.refreshes.send_if_modified(|n| {
                    let pending = *n > 0;
                    *n = n.saturating_sub(1);
                    pending
                });
            }
            true
        }
        Some(V::NodeInfo(node)) if download.has_nodes() || node.num == own => {
            if download.has_nodes() && download.nodes.len() < MAX_NODES {
                download.nodes.push(node.clone());
            }
            if download.has_config() && node.num == own && download.config.len() < MAX_CONFIG_FRAMES
            {
                download.config.push(frame.clone());
            }
            // Live updates meanwhile, and replays before the end, see it too.
            upsert(&mut up.nodes, node.clone());
            true
        }
        Some(v) if download.has_config() && is_config_part(v, own) => {
            if download.config.len() < MAX_CONFIG_FRAMES {
                download.config.push(frame.clone());
            }
            true
        }
        _ => false,
    }
}

/// A download keysync asked for is complete: what it carried is what the radio holds.
fn finish(up: &mut Upstream, done: Collecting, own: u32) {
    let (has_nodes, has_config) = (done.has_nodes(), done.has_config());
    if has_nodes && !done.nodes.is_empty() {
        let before = up.nodes.len();
        let mut nodes: Vec<NodeInfo> = Vec::with_capacity(done.nodes.len());
        for node in done.nodes {
            upsert(&mut nodes, node);
        }
        let gone = up
            .nodes
            .iter()
            .filter(|old| !nodes.iter().any(|n| n.num == old.num))
            .count();
        if gone > 0 {
            log::info!(target: "keysync::engine::proxy",
                "the radio no longer lists {gone} of {before} nodes: replays leave them out");
        }
        up.nodes = nodes;
    }
    let carries_config = done.config.iter().any(|f| {
        matches!(
            f.payload_variant,
            Some(from_radio::PayloadVariant::MyInfo(_))
        )
    });
    if has_config && carries_config {
        for f in &done.config {
            if let Some(from_radio::PayloadVariant::NodeInfo(node)) = &f.payload_variant
                && node.num == own
            {
                upsert(&mut up.nodes, node.clone());
            }
        }
        up.config = done.config;
        log::info!(target: "keysync::engine::proxy",
            "configuration refreshed from the radio ({} frames)", up.config.len());
    }
}

/// Asks the radio for a config-only download now (the radio's own frames showed a change);
/// one at a time.
async fn refresh_config(shared: &Shared, sender: &LinkSender) {
    let Some(session) = sender.session() else {
        return;
    };
    if *shared.refreshes.borrow() > 0 {
        return;
    }
    shared.refreshes.send_modify(|n| *n += 1);
    log::info!(target: "keysync::engine::proxy",
        "the radio's configuration changed: refreshing it before the next replay");
    if sender
        .send(session, crate::radio::want_config(CONFIG_ONLY_NONCE))
        .await
        .is_err()
    {
        shared.refreshes.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A part of the radio's configuration, as a download frame or an admin answer carries it.
#[derive(Debug, Clone, PartialEq)]
enum ConfigPart {
    Channel(meshtastic::protobufs::Channel),
    Config(meshtastic::protobufs::Config),
    Module(meshtastic::protobufs::ModuleConfig),
}

impl ConfigPart {
    fn of_frame(v: &from_radio::PayloadVariant) -> Option<Self> {
        use from_radio::PayloadVariant as V;
        match v {
            V::Channel(c) => Some(Self::Channel(c.clone())),
            V::Config(c) => Some(Self::Config(c.clone())),
            V::ModuleConfig(m) => Some(Self::Module(m.clone())),
            _ => None,
        }
    }

    fn of_admin(admin: &AdminMessage) -> Option<Self> {
        use admin_message::PayloadVariant as A;
        match admin.payload_variant.as_ref()? {
            A::GetChannelResponse(c) => Some(Self::Channel(c.clone())),
            A::GetConfigResponse(c) => Some(Self::Config(c.clone())),
            A::GetModuleConfigResponse(m) => Some(Self::Module(m.clone())),
            _ => None,
        }
    }

    /// Whether the same slot (channel index, config or module section) holds something else
    /// in `config`, or nothing.
    fn differs_from(&self, config: &[RadioFrame]) -> bool {
        use std::mem::discriminant;
        let same_slot = |cached: &Self| match (self, cached) {
            (Self::Channel(a), Self::Channel(b)) => a.index == b.index,
            (Self::Config(a), Self::Config(b)) => a
                .payload_variant
                .as_ref()
                .zip(b.payload_variant.as_ref())
                .is_some_and(|(a, b)| discriminant(a) == discriminant(b)),
            (Self::Module(a), Self::Module(b)) => a
                .payload_variant
                .as_ref()
                .zip(b.payload_variant.as_ref())
                .is_some_and(|(a, b)| discriminant(a) == discriminant(b)),
            _ => false,
        };
        !config
            .iter()
            .filter_map(|f| f.payload_variant.as_ref().and_then(Self::of_frame))
            .any(|cached| same_slot(&cached) && cached == *self)
    }
}

/// Whether `packet` is the radio's answer to an admin get (a client asked) showing a channel or
/// config other than the cached one: changed by another client of the radio (BLE, serial).
fn admin_answer_differs(shared: &Shared, packet: &MeshPacket) -> bool {
    let up = lock(&shared.upstream);
    let own = up.session.as_ref().map_or(0, |s| s.my_node_num);
    if !up.up || packet.from != own {
        return false;
    }
    admin_of(packet)
        .as_ref()
        .and_then(ConfigPart::of_admin)
        .is_some_and(|part| part.differs_from(&up.config))
}

/// What a client's admin message to the radio changes in what a replay shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplayEffect {
    None,
    /// Channels, config, module config, owner or position: a config-only refresh follows it.
    Config,
    Removed(u32),
    Favourite(u32, bool),
    Ignored(u32, bool),
}

impl ReplayEffect {
    fn of(admin: &AdminMessage) -> Self {
        use admin_message::PayloadVariant as A;
        match admin.payload_variant {
            Some(
                A::SetOwner(_)
                | A::SetChannel(_)
                | A::SetConfig(_)
                | A::SetModuleConfig(_)
                | A::SetHamMode(_)
                | A::SetFixedPosition(_)
                | A::RemoveFixedPosition(_)
                | A::StoreUiConfig(_)
                | A::CommitEditSettings(_)
                | A::RestorePreferences(_)
                | A::FactoryResetConfig(_),
            ) => Self::Config,
            Some(A::RemoveByNodenum(n)) => Self::Removed(n),
            Some(A::SetFavoriteNode(n)) => Self::Favourite(n, true),
            Some(A::RemoveFavoriteNode(n)) => Self::Favourite(n, false),
            Some(A::SetIgnoredNode(n)) => Self::Ignored(n, true),
            Some(A::RemoveIgnoredNode(n)) => Self::Ignored(n, false),
            _ => Self::None,
        }
    }
}

/// What a client's admitted packet changes in the replay, applied by [`apply_to_replay`] once
/// the packet is held for the radio: the node list at once (as the firmware does it on receipt,
/// AdminModule.cpp), the configuration through a config-only refresh queued behind the packet,
/// so the radio has applied it first.
fn replay_effect(shared: &Shared, packet: &MeshPacket) -> ReplayEffect {
    let (own, carried) = carried_by(shared, packet);
    let Carried::Admin { payload, .. } = carried else {
        return ReplayEffect::None;
    };
    let AdminRead::Known(admin) = admin::read_admin(&payload) else {
        return ReplayEffect::None;
    };
    // Admin for another node goes over the mesh and changes nothing here.
    if packet.to != own.unwrap_or(0) && packet.to != 0 {
        return ReplayEffect::None;
    }
    ReplayEffect::of(&admin)
}

/// Applies `effect` of a packet now held for the radio: the node list at once; a configuration
/// change counts a refresh that replays wait for.
fn apply_to_replay(shared: &Shared, effect: ReplayEffect) {
    let mut up = lock(&shared.upstream);
    let own = up.session.as_ref().map_or(0, |s| s.my_node_num);
    match effect {
        ReplayEffect::Removed(num) if num != own => up.nodes.retain(|n| n.num != num),
        ReplayEffect::Favourite(num, on) => {
            if let Some(n) = up.nodes.iter_mut().find(|n| n.num == num) {
                n.is_favorite = on;
            }
        }
        ReplayEffect::Ignored(num, on) => {
            if let Some(n) = up.nodes.iter_mut().find(|n| n.num == num) {
                n.is_ignored = on;
            }
        }
        ReplayEffect::Config => {
            shared.refreshes.send_modify(|n| *n = n.saturating_add(1));
        }
        ReplayEffect::Removed(_) | ReplayEffect::None => {}
    }
}

/// The one writer towards the radio: the clients' held packets in turn, each when keysync's
/// connection may send it (the firmware's limits for that connection), one at a time, paced by
/// the radio's QueueStatus. Packets wait (bounded, per client) while the radio is away.
async fn write_upstream(
    shared: Arc<Shared>,
    answers: broadcast::Receiver<LinkNotice>,
    sender: LinkSender,
    needs: mpsc::Sender<crate::KeyNeed>,
) {
    // keysync's connection as the radio judges it; a new connection starts afresh.
    let mut radio = fair::Connection::default();
    let mut radio_session = 0;
    loop {
        let Some(session) = sender.session() else {
            sleep(AWAY_POLL).await;
            continue;
        };
        if session != radio_session {
            radio = fair::Connection::default();
            radio_session = session;
        }
        let version = shared.firmware();
        let next = lock(&shared.held).queues.next(Instant::now(), |up| {
            let radio_ready = radio.ready_at(version, up.portnum);
            up.key_wait().max(radio_ready)
        });
        let (client, mut up) = match next {
            fair::Next::Take(client, up) => (client, up),
            fair::Next::WaitUntil(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = shared.held_more.notified() => {}
                }
                continue;
            }
            fair::Next::Empty => {
                shared.held_more.notified().await;
                continue;
            }
        };
        let own = lock(&shared.upstream)
            .session
            .as_ref()
            .map_or(0, |s| s.my_node_num);
        let dm = dm_to(&up.msg, own).is_some();
        if up.key.is_none()
            && let Some(to) = dm_to(&up.msg, own)
        {
            up.key = Some(ask_for_key(&shared, &needs, to, up.id).await);
            lock(&shared.held).queues.put_back(client, up);
            continue;
        }
        if dm && up.id != 0 && lock(&shared.retries).again_of(up.id).is_none() {
            lock(&shared.retries).sent(FirstTry {
                id: up.id,
                client,
                msg: up.msg.clone(),
                portnum: up.portnum,
                reply: up.reply.clone(),
            });
        }
        if up.id != 0 {
            let mut pending = lock(&shared.pending_ids);
            if pending.len() >= PENDING_IDS {
                pending.clear();
            }
            pending.insert(up.id, up.reply.clone());
        }
        // Only answers that come after this send count.
        let mut answers = answers.resubscribe();
        if sender.send(session, up.msg.clone()).await.is_err() {
            lock(&shared.held).queues.put_back(client, up);
            continue;
        }
        {
            let mut held = lock(&shared.held);
            let drained = held.queues.is_empty();
            held.overflow.on_sent(drained);
        }
        if up.id != 0 {
            let taken = wait_for_room(&mut answers, up.id, &shared.radio_queue).await;
            radio.note_sent(version, up.portnum, taken);
        }
    }
}

/// Waits for the QueueStatus that answers packet `id` and, while the radio's queue is full, for
/// one with room; neither is guaranteed to come, so each wait is bounded. Returns when the
/// radio had taken the packet, as far as keysync can tell: its limits count from no later.
async fn wait_for_room(
    answers: &mut broadcast::Receiver<LinkNotice>,
    id: u32,
    room: &Mutex<QueueRoom>,
) -> Instant {
    let mut deadline = Instant::now() + ANSWER_WAIT;
    let mut answered = None;
    loop {
        let notice = match tokio::time::timeout_at(deadline, answers.recv()).await {
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Ok(notice)) => notice,
            Err(_) | Ok(Err(broadcast::error::RecvError::Closed)) => break,
        };
        let frame = match notice {
            LinkNotice::Frame(frame) => frame,
            LinkNotice::Contact(_) => continue,
            LinkNotice::Up(_) | LinkNotice::Down(_) | LinkNotice::Download(_) => break,
        };
        let Some(from_radio::PayloadVariant::QueueStatus(q)) = &frame.payload_variant else {
            continue;
        };
        *lock(room) = QueueRoom {
            free: q.free,
            maxlen: q.maxlen,
        };
        if q.mesh_packet_id == id && answered.is_none() {
            let now = Instant::now();
            answered = Some(now);
            deadline = now + ROOM_WAIT;
        }
        if answered.is_some() {
            if q.free > 0 {
                break;
            }
            log::debug!(target: "keysync::engine::proxy", "radio queue full ({} of {}); waiting", q.free, q.maxlen);
        }
    }
    answered.unwrap_or_else(Instant::now)
}

/// Says once per episode why clients' packets are refused: once per outage while the radio is
/// away, once per backlog while it is there but a client sends faster than it takes.
#[derive(Debug, Default)]
struct OverflowLog {
    away_said: bool,
    backlog_said: bool,
}

impl OverflowLog {
    /// The line for a packet from `peer` refused because `full`, with `waiting` held, unless it
    /// was said this episode.
    fn on_refused(
        &mut self,
        away: bool,
        waiting: usize,
        peer: SocketAddr,
        full: &fair::Full,
    ) -> Option<String> {
        let said = if away {
            &mut self.away_said
        } else {
            &mut self.backlog_said
        };
        if std::mem::replace(said, true) {
            return None;
        }
        let why = match full {
            fair::Full::Client => format!("its queue of {HELD_PER_CLIENT} is full"),
            fair::Full::All => format!("keysync holds at most {HELD_TOTAL} for all clients"),
        };
        Some(if away {
            format!(
                "the radio is away and {waiting} downstream packets are waiting: newer ones from {peer} are refused ({why})"
            )
        } else {
            format!(
                "{peer} sends faster than the radio takes: {why}; newer packets are refused as by a full radio queue"
            )
        })
    }

    /// A packet reached the radio (the outage is over); `drained` when none is waiting.
    fn on_sent(&mut self, drained: bool) {
        self.away_said = false;
        if drained {
            self.backlog_said = false;
        }
    }
}

/// How long a client's DM waits for its destination's key to be pushed.
const KEY_WAIT: Duration = Duration::from_secs(5);

/// The destination of a DM that the radio must encrypt with the destination's key.
fn dm_to(msg: &ToRadio, own: u32) -> Option<u32> {
    let Some(to_radio::PayloadVariant::Packet(packet)) = &msg.payload_variant else {
        return None;
    };
    crate::radio::is_pki_dm(packet, own).then_some(packet.to)
}

/// A DM to a node whose key the radio lacks goes out encrypted the first time: the engine
/// pushes the key first. The DM waits for that (at most [`KEY_WAIT`]) in its client's queue,
/// and the client's later packets behind it; other clients' packets go meanwhile.
async fn ask_for_key(
    shared: &Arc<Shared>,
    needs: &mpsc::Sender<crate::KeyNeed>,
    to: u32,
    packet_id: u32,
) -> KeyWait {
    let done = Arc::new(AtomicBool::new(false));
    let wait = KeyWait {
        until: Instant::now() + KEY_WAIT,
        done: Arc::clone(&done),
    };
    let (answer, answered) = tokio::sync::oneshot::channel();
    let need = crate::KeyNeed {
        num: to,
        packet_id,
        done: answer,
    };
    if needs.send(need).await.is_err() {
        done.store(true, Ordering::Release);
        return wait;
    }
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        if tokio::time::timeout(KEY_WAIT, answered).await.is_err() {
            crate::log_limited!(warn, "key-wait", burst 10, target: "keysync::engine::proxy",
                "the key of {} was not pushed within {}: the DM goes as it is",
                crate::radio::node_id(to), humantime::format_duration(KEY_WAIT));
        }
        done.store(true, Ordering::Release);
        shared.held_more.notify_one();
    });
    wait
}

async fn accept(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                crate::log_limited!(warn, "accept-failed", target: "keysync::engine::proxy", "accept failed: {e}");
                sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let count = lock(&shared.clients).len();
        if count >= shared.config.max_clients {
            crate::log_limited!(warn, "client-refused", target: "keysync::engine::proxy", "refused {peer}: already {count} clients (--max-clients)");
            tokio::spawn(refuse(stream, shared.config.max_clients));
            continue;
        }
        let stats = Arc::new(ClientStats {
            id: shared.next_client.fetch_add(1, Ordering::Relaxed),
            addr: peer,
            since: SystemTime::now(),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_activity: Mutex::new(SystemTime::now()),
        });
        lock(&shared.clients).push(stats.clone());
        shared.publish_views();
        crate::log_limited!(info, "client-connected", burst 20, target: "keysync::engine::proxy", "client {peer} connected");
        let shared = shared.clone();
        tokio::spawn(async move {
            let why = serve(&shared, stream, stats.clone()).await;
            lock(&shared.clients).retain(|c| !Arc::ptr_eq(c, &stats));
            shared.publish_views();
            let v = stats.view();
            crate::log_limited!(info, "client-left", burst 20, target: "keysync::engine::proxy",
                "client {peer} left ({why}); {} frames in, {} out, {} dropped", v.frames_in, v.frames_out, v.dropped);
        });
    }
}

/// Tells a client it was refused, then closes.
async fn refuse(stream: TcpStream, max: usize) {
    let mut conn = Framed::new(stream, RadioCodec::new());
    let note = FromRadio {
        id: 0,
        payload_variant: Some(from_radio::PayloadVariant::ClientNotification(
            ClientNotification {
                level: log_record::Level::Error as i32,
                message: format!("keysync: too many clients (at most {max}); try again later"),
                ..ClientNotification::default()
            },
        )),
    };
    let _ = timeout(Duration::from_secs(2), conn.send(note)).await;
}

/// A QueueStatus composed by keysync: answers to heartbeats, and to packets keysync refuses
/// as the radio would.
fn queue_status(res: i32, free: u32, maxlen: u32, mesh_packet_id: u32) -> Bytes {
    RadioFrame::composed(crate::radio::queue_status(
        res,
        free,
        maxlen,
        mesh_packet_id,
    ))
    .payload
}

/// One downstream client, until it leaves.
async fn serve(shared: &Arc<Shared>, stream: TcpStream, stats: Arc<ClientStats>) -> &'static str {
    let _ = stream.set_nodelay(true);
    // A kernel buffer of about the radio's own queue (32 frames of at most 516 bytes) keeps the
    // per-client backlog bounded: a client that stops reading stalls its own writer soon, and
    // then loses the oldest live frames, as on the radio.
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(CLIENT_QUEUE * 516);
    let loopback = stats.addr.ip().is_loopback();
    let (read, write) = stream.into_split();
    let sink = FramedWrite::new(write, RelayEncoder);
    let mut source = FramedRead::new(read, TimedDecoder::default());
    let mut last_frame = Instant::now();
    let mut tick = overdue_tick(&shared.config);
    // This client as the firmware would judge it were it the radio's only client.
    let mut judged = fair::Connection::default();
    // Everything for this client goes through one bounded writer task, so a client that does
    // not read only stalls itself.
    // A replay goes as one batch, written with a single flush.
    let (direct, direct_rx) = mpsc::channel::<ToClient>(CLIENT_QUEUE);
    // Set while a replay waits to be written: a client gets one replay at a time, so one that
    // asks again and again without reading costs one replay of memory, not one per request.
    let replaying = Arc::new(AtomicBool::new(false));
    let close = lock(&shared.close_all).clone();
    let writer = tokio::spawn(write_client(
        sink,
        direct_rx,
        shared.live.clone(),
        replaying.clone(),
        stats.clone(),
    ));
    let why = loop {
        let item = tokio::select! {
            () = close.cancelled() => break "the radio stayed away past the grace period",
            () = shared.stop.cancelled() => break "keysync is stopping",
            item = source.next() => item,
            _ = tick.tick() => {
                let partial = source.decoder().partial_since;
                match overdue(Instant::now(), last_frame, partial, &shared.config) {
                    Some(why) => break why,
                    None => continue,
                }
            }
        };
        let msg = match item {
            None => break "closed",
            Some(Err(_)) => break "socket error",
            Some(Ok(msg)) => msg,
        };
        stats.frames_in.fetch_add(1, Ordering::Relaxed);
        stats.touch();
        last_frame = Instant::now();
        match msg.payload_variant {
            Some(to_radio::PayloadVariant::WantConfigId(nonce)) => {
                if replaying.swap(true, Ordering::AcqRel) {
                    log::debug!(target: "keysync::engine::proxy",
                        "{}: ignored want_config {nonce}: its previous replay is not read yet", stats.addr);
                    continue;
                }
                let Some(frames) = replay(shared, nonce).await else {
                    break "the radio's configuration never arrived";
                };
                let frames = replay_for(frames, loopback, shared.config.allow_remote_admin);
                let then_live = nonce != NODES_ONLY_NONCE;
                if direct
                    .send(ToClient::Replay { frames, then_live })
                    .await
                    .is_err()
                {
                    break "the client's writer stopped";
                }
            }
            // Answered only while the radio is really there, so the client's own watchdog sees
            // the truth.
            Some(to_radio::PayloadVariant::Heartbeat(_)) if lock(&shared.upstream).up => {
                let room = room_for(shared, stats.id);
                let _ =
                    direct.try_send(ToClient::Frame(queue_status(0, room.free, room.maxlen, 0)));
            }
            Some(to_radio::PayloadVariant::Packet(packet))
                if admit(shared, filter(shared, &packet, loopback, stats.addr)) =>
            {
                take_packet(shared, &mut judged, &stats, &direct, packet);
            }
            Some(to_radio::PayloadVariant::Disconnect(_)) => break "said disconnect",
            // Nothing, a heartbeat while the radio is away, or a packet the filter dropped.
            None
            | Some(to_radio::PayloadVariant::Heartbeat(_) | to_radio::PayloadVariant::Packet(_)) => {
            }
            Some(other) => {
                let msg = ToRadio {
                    payload_variant: Some(other),
                };
                let up = Upward::new(msg, 0, None, direct.clone());
                hold(shared, &stats, up);
            }
        }
    };
    writer.abort();
    why
}

/// A client's packet, judged as the firmware judges one connection: a repeated id is ignored,
/// one over a limit is answered as the firmware answers it, and the rest waits in the client's
/// queue for the radio.
fn take_packet(
    shared: &Shared,
    judged: &mut fair::Connection,
    stats: &ClientStats,
    reply: &mpsc::Sender<ToClient>,
    mut packet: MeshPacket,
) {
    let portnum = match &packet.payload_variant {
        Some(mesh_packet::PayloadVariant::Decoded(data)) => Some(data.portnum),
        _ => None,
    };
    match judged.judge(shared.firmware(), packet.id, portnum, Instant::now()) {
        fair::Judgement::Accepted => {}
        fair::Judgement::Repeated => {
            log::debug!(target: "keysync::engine::proxy",
                "{}: ignored packet {:08x}: its id repeats a recent one", stats.addr, packet.id);
            return;
        }
        fair::Judgement::Over(limit) => {
            crate::log_limited!(info, "over-limit", target: "keysync::engine::proxy",
                "{}: packet {:08x} on port {} is over the firmware's limit of one per {} for a client: answered as the radio would",
                stats.addr, packet.id, portnum.unwrap_or_default(), humantime::format_duration(limit.gap));
            let room = room_for(shared, stats.id);
            for answer in over_limit_answers(shared, &packet, limit.answer, room) {
                let _ = reply.try_send(ToClient::Frame(answer));
            }
            return;
        }
    }
    // The firmware would give it an id the client never learns, and its QueueStatus could not
    // be routed back: keysync gives it one first.
    if packet.id == 0 {
        packet.id = rand::rng().random_range(1..=u32::MAX);
    }
    // What it changes in the replay once held: the node list at once, the configuration by a
    // config-only refresh queued right behind it.
    let effect = replay_effect(shared, &packet);
    let id = packet.id;
    let msg = ToRadio {
        payload_variant: Some(to_radio::PayloadVariant::Packet(packet)),
    };
    let up = Upward::new(msg, id, portnum, reply.clone());
    // A packet the full queue refused changes nothing on the radio, nor in the replay.
    if hold(shared, stats, up) {
        apply_to_replay(shared, effect);
        if effect == ReplayEffect::Config {
            queue_refresh(shared, stats, reply);
        }
    }
}

/// Holds `up` in its client's queue for the upstream writer; when that queue (or all of them)
/// is full, the packet is refused as the radio's full queue refuses one. True when held.
fn hold(shared: &Shared, stats: &ClientStats, up: Upward) -> bool {
    let away = !lock(&shared.upstream).up;
    let mut held = lock(&shared.held);
    let (full, up) = match held.queues.push(stats.id, up) {
        Ok(()) => {
            drop(held);
            shared.held_more.notify_one();
            return true;
        }
        Err(refused) => refused,
    };
    let waiting = held.queues.len();
    let line = held.overflow.on_refused(away, waiting, stats.addr, &full);
    drop(held);
    if let Some(line) = line {
        log::warn!(target: "keysync::engine::proxy", "{line}");
    }
    if up.id != 0 {
        let maxlen = lock(&shared.radio_queue).maxlen;
        let _ = up.reply.try_send(ToClient::Frame(queue_status(
            RES_QUEUE_FULL,
            0,
            maxlen,
            up.id,
        )));
    }
    false
}

/// The room a client sees in "its radio's" queue: the radio's, and no more than is left in its
/// own queue at keysync.
fn room_for(shared: &Shared, client: u64) -> QueueRoom {
    let radio = *lock(&shared.radio_queue);
    let own = lock(&shared.held).queues.room(client);
    QueueRoom {
        free: radio.free.min(u32::try_from(own).unwrap_or(u32::MAX)),
        maxlen: radio.maxlen,
    }
}

/// What the firmware sends a client whose packet is over a limit: a QueueStatus `res = 0`
/// (PhoneAPI.cpp sendQueueStatusToPhone), then a routing error or a notification where it sends
/// one.
fn over_limit_answers(
    shared: &Shared,
    packet: &MeshPacket,
    answer: fair::OverLimit,
    room: QueueRoom,
) -> Vec<Bytes> {
    let mut out = vec![queue_status(0, room.free, room.maxlen, packet.id)];
    let composed = |v: from_radio::PayloadVariant| {
        RadioFrame::composed(FromRadio {
            id: 0,
            payload_variant: Some(v),
        })
        .payload
    };
    match answer {
        fair::OverLimit::Silently => {}
        fair::OverLimit::RoutingError => {
            let own = lock(&shared.upstream)
                .session
                .as_ref()
                .map_or(0, |s| s.my_node_num);
            out.push(composed(from_radio::PayloadVariant::Packet(
                rate_limit_error(own, packet),
            )));
        }
        fair::OverLimit::Notification(message) => {
            out.push(composed(from_radio::PayloadVariant::ClientNotification(
                ClientNotification {
                    reply_id: Some(packet.id),
                    time: unix_now(),
                    level: log_record::Level::Warning as i32,
                    message: message.to_owned(),
                    ..ClientNotification::default()
                },
            )));
        }
    }
    out
}

/// The routing error RATE_LIMIT_EXCEEDED the radio `own` answers `packet` with
/// (MeshModule.cpp allocAckNak): from the radio, on the packet's channel, `request_id` the
/// packet's id.
fn rate_limit_error(own: u32, packet: &MeshPacket) -> MeshPacket {
    let routing = Routing {
        variant: Some(routing::Variant::ErrorReason(
            routing::Error::RateLimitExceeded as i32,
        )),
    };
    MeshPacket {
        from: own,
        to: own,
        id: rand::rng().random_range(1..=u32::MAX),
        channel: packet.channel,
        priority: mesh_packet::Priority::Ack as i32,
        payload_variant: Some(mesh_packet::PayloadVariant::Decoded(Data {
            portnum: PortNum::RoutingApp as i32,
            payload: meshtastic::Message::encode_to_vec(&routing),
            request_id: packet.id,
            ..Data::default()
        })),
        ..MeshPacket::default()
    }
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

/// The one writer towards a client: replies and replays, and live frames once the client is
/// configured — subscribed only when its replay is written, so that, as from the firmware, no
/// live packet comes before the client's `config_complete_id`. A replay goes first and whole (the client asked for all of it; at most one is
/// held, see `replaying`); other frames wait in a queue of [`CLIENT_QUEUE`] while the socket is
/// busy, and a client that does not read loses the oldest, counted — it never holds up the
/// radio or the others, and its memory stays bounded.
async fn write_client(
    mut sink: ClientSink,
    mut direct_rx: mpsc::Receiver<ToClient>,
    live_tx: broadcast::Sender<Arc<RadioFrame>>,
    replaying: Arc<AtomicBool>,
    stats: Arc<ClientStats>,
) {
    enum Event {
        Direct(Option<ToClient>),
        Live(Result<Arc<RadioFrame>, broadcast::error::RecvError>),
        Written(bool),
    }
    let mut out = Outgoing::default();
    // Whether live frames follow the replay being written.
    let mut then_live = false;
    let mut live: Option<broadcast::Receiver<Arc<RadioFrame>>> = None;
    loop {
        let configured = live.is_some();
        let event = tokio::select! {
            biased;
            d = direct_rx.recv() => Event::Direct(d),
            ok = out.write(&mut sink, &stats), if !out.is_empty() => Event::Written(ok),
            l = recv_live(&mut live), if configured => Event::Live(l),
        };
        match event {
            Event::Direct(None)
            | Event::Written(false)
            | Event::Live(Err(broadcast::error::RecvError::Closed)) => return,
            Event::Direct(Some(ToClient::Replay {
                frames,
                then_live: live_after,
            })) => {
                out.replay.extend(frames.into_iter().map(|f| f.payload));
                then_live |= live_after;
            }
            Event::Direct(Some(ToClient::Frame(frame))) => out.push(frame, &stats),
            Event::Live(Ok(frame)) => out.push(frame.payload.clone(), &stats),
            Event::Live(Err(broadcast::error::RecvError::Lagged(n))) => {
                stats.dropped.fetch_add(n, Ordering::Relaxed);
            }
            Event::Written(true) => {}
        }
        if out.replay.is_empty() && replaying.load(Ordering::Acquire) {
            // The replay is in the codec's buffer: the client may ask again.
            if std::mem::take(&mut then_live) && live.is_none() {
                live = Some(live_tx.subscribe());
            }
            replaying.store(false, Ordering::Release);
        }
    }
}

async fn recv_live(
    live: &mut Option<broadcast::Receiver<Arc<RadioFrame>>>,
) -> Result<Arc<RadioFrame>, broadcast::error::RecvError> {
    match live {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

type ClientSink = FramedWrite<tokio::net::tcp::OwnedWriteHalf, RelayEncoder>;

/// Writes frame payloads as they are: the radio's bytes, or the encoding of what keysync
/// composed.
#[derive(Debug, Default)]
struct RelayEncoder;

impl tokio_util::codec::Encoder<Bytes> for RelayEncoder {
    type Error = CodecError;

    fn encode(&mut self, payload: Bytes, dst: &mut bytes::BytesMut) -> Result<(), CodecError> {
        encode_raw(&payload, dst)
    }
}

/// The downstream decoder, noting since when an incomplete frame has been waiting.
#[derive(Debug, Default)]
struct TimedDecoder {
    inner: RadioCodec,
    partial_since: Option<Instant>,
}

impl Decoder for TimedDecoder {
    type Item = ToRadio;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut bytes::BytesMut) -> std::io::Result<Option<ToRadio>> {
        let frame = self.inner.decode(src)?;
        if frame.is_some() || src.is_empty() {
            self.partial_since = None;
        } else {
            self.partial_since.get_or_insert_with(Instant::now);
        }
        Ok(frame)
    }
}

/// How often a client is checked for being [`overdue`].
fn overdue_tick(config: &ProxyConfig) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(
        (config.idle_close.min(config.partial_frame) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Why a client is closed at `now`, if it is overdue: silent past the firmware's idle close,
/// or a frame left incomplete past its limit.
fn overdue(
    now: Instant,
    last_frame: Instant,
    partial_since: Option<Instant>,
    config: &ProxyConfig,
) -> Option<&'static str> {
    if now.saturating_duration_since(last_frame) >= config.idle_close {
        return Some("silent past the radio's idle close");
    }
    if partial_since.is_some_and(|t| now.saturating_duration_since(t) >= config.partial_frame) {
        return Some("an incomplete frame for too long");
    }
    None
}

/// What waits to be written to one client.
#[derive(Debug, Default)]
struct Outgoing {
    /// The one replay in flight, written before anything else.
    replay: VecDeque<Bytes>,
    /// Answers and live frames, at most [`CLIENT_QUEUE`].
    queue: VecDeque<Bytes>,
}

impl Outgoing {
    fn is_empty(&self) -> bool {
        self.replay.is_empty() && self.queue.is_empty()
    }

    /// Queues a frame, dropping (and counting) the oldest when the queue is full.
    fn push(&mut self, frame: Bytes, stats: &ClientStats) {
        if self.queue.len() >= CLIENT_QUEUE {
            self.queue.pop_front();
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.queue.push_back(frame);
    }

    /// Writes the replay, then the queue, and flushes; a frame leaves only once it is in the
    /// codec's buffer, so cancelling this loses nothing. False when the client is gone.
    async fn write(&mut self, sink: &mut ClientSink, stats: &ClientStats) -> bool {
        loop {
            let from = if self.replay.is_empty() {
                &mut self.queue
            } else {
                &mut self.replay
            };
            let Some(frame) = from.front().cloned() else {
                break;
            };
            if sink.feed(frame).await.is_err() {
                return false;
            }
            from.pop_front();
            stats.frames_out.fetch_add(1, Ordering::Relaxed);
        }
        sink.flush().await.is_ok()
    }
}

/// What the packet filter decided for a client's packet.
#[derive(Debug)]
enum Verdict {
    Pass,
    Drop,
    /// A valid add_contact: its node is learned whatever happens to the packet.
    Contact {
        seen: Box<NodeSeen>,
        pass: bool,
    },
}

/// Learns what the filter found worth learning; whether the packet may go to the radio.
fn admit(shared: &Shared, verdict: Verdict) -> bool {
    match verdict {
        Verdict::Pass => true,
        Verdict::Drop => false,
        Verdict::Contact { seen, pass } => {
            let _ = shared.learned.try_send(*seen);
            pass
        }
    }
}

/// Queues a config-only download behind what the client just sent, so that the next replay
/// shows the change; counted in [`Shared::refreshes`] already.
fn queue_refresh(shared: &Shared, stats: &ClientStats, reply: &mpsc::Sender<ToClient>) {
    crate::log_limited!(info, "config-refresh", burst 5, target: "keysync::engine::proxy",
        "{} changes the radio's configuration: refreshing it before the next replay", stats.addr);
    let want = Upward::new(
        crate::radio::want_config(CONFIG_ONLY_NONCE),
        0,
        None,
        reply.clone(),
    );
    if !hold(shared, stats, want) {
        shared.refreshes.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The radio's number, and what `packet` carries to its admin module.
fn carried_by(shared: &Shared, packet: &MeshPacket) -> (Option<u32>, Carried) {
    let up = lock(&shared.upstream);
    let own = up.session.as_ref().map(|s| s.my_node_num);
    let channels = if matches!(
        packet.payload_variant,
        Some(mesh_packet::PayloadVariant::Encrypted(_))
    ) {
        crate::mqtt::crypto::radio_channel_table(up.config.iter().map(|f| &f.msg))
    } else {
        Vec::new()
    };
    drop(up);
    (own, admin::carried(packet, own, &channels))
}

/// Whether a downstream packet may go to the radio; learns nothing itself. It judges what the
/// radio will run: an encrypted packet for the radio is opened first ([`admin::carried`]).
fn filter(shared: &Shared, packet: &MeshPacket, loopback: bool, peer: SocketAddr) -> Verdict {
    let (own, carried) = carried_by(shared, packet);
    let (payload, sealed) = match carried {
        Carried::Nothing => return Verdict::Pass,
        Carried::Unjudgeable => {
            crate::log_limited!(warn, "unjudgeable", burst 10, target: "keysync::engine::proxy",
                "dropped an encrypted packet from {peer} to {}: the radio would open it, and no channel key it holds opens it here (channel hash {}, {}), so keysync cannot judge it",
                node_id(packet.to), packet.channel, if packet.pki_encrypted { "PKI" } else { "AES" });
            return Verdict::Drop;
        }
        Carried::Admin { payload, sealed } => (payload, sealed),
    };
    let how = if sealed {
        " (encrypted with a channel key)"
    } else {
        ""
    };
    let admin = match admin::read_admin(&payload) {
        // The firmware may decode what prost refuses (nanopb does not check UTF-8), and an
        // add_contact it decodes with an empty key erases a key: what cannot be read is not
        // passed on.
        AdminRead::Undecodable => {
            crate::log_limited!(warn, "admin-undecodable", burst 10, target: "keysync::engine::proxy",
                "dropped an admin message{how} from {peer}: its payload does not decode");
            return Verdict::Drop;
        }
        AdminRead::Unnamed => None,
        AdminRead::Known(admin) => Some(admin),
    };
    if let Some(admin_message::PayloadVariant::AddContact(contact)) =
        admin.as_ref().and_then(|a| a.payload_variant.as_ref())
        && !contact.should_ignore
    {
        return judge_contact(shared, contact, own, peer);
    }
    let kind = admin
        .as_deref()
        .map_or(Some(DestructiveAdmin::Unknown), DestructiveAdmin::of);
    let remote_denied = !loopback && !shared.config.allow_remote_admin;
    if let Some(kind) = kind {
        let denied = shared.config.deny_admin.contains(&kind);
        crate::log_limited!(warn, "admin-destructive", burst 10, target: "keysync::engine::proxy",
            "{peer} sends the radio a destructive admin message{how} ({kind}): {}",
            if denied { "dropped (--deny-admin)" } else if remote_denied { "dropped: admin is allowed from loopback clients only" } else { "forwarded" });
        if denied {
            return Verdict::Drop;
        }
    }
    if remote_denied {
        crate::log_limited!(warn, "admin-remote", burst 10, target: "keysync::engine::proxy",
            "dropped an admin message{how} from {peer}: admin is allowed from loopback clients only (--allow-remote-admin)");
        return Verdict::Drop;
    }
    Verdict::Pass
}

/// A client's add_contact (not one that ignores): dropped when it would erase a key, name the
/// gateway itself or name two nodes; otherwise learned, and forwarded unless it replaces a
/// trusted key.
fn judge_contact(
    shared: &Shared,
    contact: &SharedContact,
    own: Option<u32>,
    peer: SocketAddr,
) -> Verdict {
    let user = contact.user.clone().unwrap_or_default();
    let refused = if !is_node_num(contact.node_num) {
        Some("that is no node (0 is nobody, !ffffffff is broadcast)".to_owned())
    } else if own == Some(contact.node_num) {
        Some("that is the gateway's own node, whose key only the radio itself sets".to_owned())
    } else if !user.id.is_empty() && !user.id.eq_ignore_ascii_case(&node_id(contact.node_num)) {
        Some(format!(
            "its user names another node ({})",
            crate::radio::printable(&user.id)
        ))
    } else if valid_key(&user.public_key).is_none() {
        Some(format!(
            "its key is empty or invalid ({} bytes) and would erase the key on the radio",
            user.public_key.len()
        ))
    } else {
        None
    };
    if let Some(why) = refused {
        crate::log_limited!(warn, "contact-refused", burst 10, target: "keysync::engine::proxy",
            "dropped add_contact for {} from {peer}: {why}", node_id(contact.node_num));
        return Verdict::Drop;
    }
    let Some(key) = valid_key(&user.public_key) else {
        return Verdict::Drop;
    };
    let trusted = trusted_key(&shared.engine.borrow(), contact.node_num);
    let forward = contact_may_pass(trusted, key);
    if !forward {
        crate::log_limited!(warn, "contact-held", burst 10, target: "keysync::engine::proxy",
            "held back add_contact for {} from {peer}: its key differs from the trusted one; learned as pending for the operator to decide",
            node_id(contact.node_num));
    }
    let seen = Box::new(NodeSeen {
        num: contact.node_num,
        long_name: user.long_name,
        short_name: user.short_name,
        hw_model: user.hw_model,
        role: user.role,
        public_key: user.public_key,
        source: Source::Downstream,
        is_favorite: true,
        flags: crate::radio::UserFlags::default(),
    });
    Verdict::Contact {
        seen,
        pass: forward,
    }
}

/// The key the operator trusts for `num`, from the engine's view.
fn trusted_key(view: &crate::Snapshot, num: u32) -> Option<PublicKey> {
    view.nodes
        .iter()
        .find(|n| n.record.num == num)
        .and_then(|n| n.record.trusted)
}

/// Whether a client's add_contact carrying `key` may reach the radio: only with the trusted
/// key, or for a node keysync trusts no key for. A different key would put on the radio a key
/// the operator never accepted.
fn contact_may_pass(trusted: Option<PublicKey>, key: PublicKey) -> bool {
    trusted.is_none_or(|t| t == key)
}

/// A replay as `client` may see it: the radio's private key (in `Config.security`) goes only to
/// clients that may administer the radio; for the others it is blanked, as the firmware does
/// for a client without admin rights.
fn replay_for(
    mut frames: Vec<RadioFrame>,
    loopback: bool,
    allow_remote_admin: bool,
) -> Vec<RadioFrame> {
    if loopback || allow_remote_admin {
        return frames;
    }
    for frame in &mut frames {
        let mut msg = frame.msg.clone();
        if let Some(from_radio::PayloadVariant::Config(c)) = msg.payload_variant.as_mut()
            && let Some(config::PayloadVariant::Security(security)) = c.payload_variant.as_mut()
        {
            security.private_key.clear();
            *frame = RadioFrame::composed(msg);
        }
    }
    frames
}

/// The frames of a config download for `nonce`, from the radio's latest configuration and the
/// current node list; waits (bounded) for the first handshake, and for a configuration refresh
/// under way.
async fn replay(shared: &Shared, nonce: u32) -> Option<Vec<RadioFrame>> {
    let mut ready = shared.session_ready.subscribe();
    timeout(CONFIG_WAIT, ready.wait_for(|r| *r))
        .await
        .ok()?
        .ok()?;
    if nonce != NODES_ONLY_NONCE {
        let mut refreshes = shared.refreshes.subscribe();
        if timeout(REFRESH_WAIT, refreshes.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            log::warn!(target: "keysync::engine::proxy",
                "the radio's configuration was not refreshed within {}: replaying the last one known",
                humantime::format_duration(REFRESH_WAIT));
            shared.refreshes.send_replace(0);
        }
    }
    let up = lock(&shared.upstream);
    let own = up.session.as_ref()?.my_node_num;
    let frame = |v: from_radio::PayloadVariant| {
        RadioFrame::composed(FromRadio {
            id: 0,
            payload_variant: Some(v),
        })
    };
    let others: Vec<NodeInfo> = up.nodes.iter().filter(|n| n.num != own).cloned().collect();
    let own_node = up.nodes.iter().find(|n| n.num == own).cloned();
    let config = up.config.clone();
    drop(up);
    let mut out = Vec::new();
    if nonce == NODES_ONLY_NONCE {
        out.extend(own_node.map(|n| frame(from_radio::PayloadVariant::NodeInfo(n))));
        out.extend(
            others
                .into_iter()
                .map(|n| frame(from_radio::PayloadVariant::NodeInfo(n))),
        );
        out.push(frame(from_radio::PayloadVariant::ConfigCompleteId(nonce)));
        return Some(out);
    }
    let with_nodes = nonce != CONFIG_ONLY_NONCE;
    // The NodeDB's total, own node included, in a config-only download too (PhoneAPI.cpp:
    // `nodedb_count = getNumMeshNodes()` whatever the nonce).
    let count = 1 + others.len();
    let mut files = Vec::new();
    for f in config {
        match &f.payload_variant {
            Some(from_radio::PayloadVariant::MyInfo(info)) => {
                let mut info = info.clone();
                info.nodedb_count = u32::try_from(count).unwrap_or(u32::MAX);
                out.push(frame(from_radio::PayloadVariant::MyInfo(info)));
            }
            Some(from_radio::PayloadVariant::NodeInfo(_)) => {
                if let Some(n) = &own_node {
                    out.push(frame(from_radio::PayloadVariant::NodeInfo(n.clone())));
                }
            }
            Some(from_radio::PayloadVariant::FileInfo(_)) => files.push(f),
            _ => out.push(f),
        }
    }
    if with_nodes {
        out.extend(
            others
                .into_iter()
                .map(|n| frame(from_radio::PayloadVariant::NodeInfo(n))),
        );
    }
    out.extend(files);
    out.push(frame(from_radio::PayloadVariant::ConfigCompleteId(nonce)));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtastic::Message;
    use meshtastic::protobufs::Config;

    fn security_replay() -> Vec<RadioFrame> {
        let security = config::SecurityConfig {
            public_key: vec![1; 32],
            private_key: vec![2; 32],
            ..config::SecurityConfig::default()
        };
        vec![
            FromRadio {
                id: 0,
                payload_variant: Some(from_radio::PayloadVariant::Config(Config {
                    payload_variant: Some(config::PayloadVariant::Security(security)),
                })),
            },
            FromRadio {
                id: 0,
                payload_variant: Some(from_radio::PayloadVariant::ConfigCompleteId(7)),
            },
        ]
        .into_iter()
        .map(RadioFrame::composed)
        .collect()
    }

    fn private_key(frames: &[RadioFrame]) -> Option<Vec<u8>> {
        frames.iter().find_map(|f| {
            match &FromRadio::decode(f.payload.as_ref()).ok()?.payload_variant {
                Some(from_radio::PayloadVariant::Config(Config {
                    payload_variant: Some(config::PayloadVariant::Security(s)),
                })) => Some(s.private_key.clone()),
                _ => None,
            }
        })
    }

    #[test]
    fn destructive_admin_kinds_are_named_as_deny_admin_takes_them() {
        use admin_message::PayloadVariant as A;
        let admin = |v: A| AdminMessage {
            payload_variant: Some(v),
            ..AdminMessage::default()
        };
        assert_eq!(
            DestructiveAdmin::of(&admin(A::RebootSeconds(5))),
            Some(DestructiveAdmin::Reboot)
        );
        assert_eq!(
            DestructiveAdmin::of(&admin(A::FactoryResetConfig(1))),
            Some(DestructiveAdmin::FactoryReset)
        );
        assert_eq!(
            DestructiveAdmin::of(&admin(A::RemoveByNodenum(7))),
            Some(DestructiveAdmin::RemoveNode)
        );
        assert_eq!(DestructiveAdmin::of(&admin(A::GetOwnerRequest(true))), None);
        for kind in DestructiveAdmin::ALL {
            assert_eq!(kind.name().parse(), Ok(kind));
        }
        assert!("erase".parse::<DestructiveAdmin>().is_err());
    }

    #[test]
    fn the_radio_is_away_is_said_once_per_outage_and_a_backlog_once_per_backlog() {
        let peer: SocketAddr = "127.0.0.1:4403".parse().expect("addr");
        let full = fair::Full::Client;
        let mut log = OverflowLog::default();
        let first = log.on_refused(true, 40, peer, &full);
        assert!(
            first
                .as_deref()
                .is_some_and(|l| l.contains("the radio is away and 40") && l.contains("4403")),
            "{first:?}"
        );
        assert_eq!(log.on_refused(true, 41, peer, &full), None);
        assert_eq!(log.on_refused(true, 42, peer, &full), None);
        log.on_sent(false);
        assert!(
            log.on_refused(true, 3, peer, &full).is_some(),
            "a new outage is said again"
        );
        assert!(
            log.on_refused(false, 16, peer, &full)
                .is_some_and(|l| l.contains("faster") && !l.contains("away"))
        );
        log.on_sent(false);
        assert_eq!(
            log.on_refused(false, 16, peer, &full),
            None,
            "the same backlog"
        );
        log.on_sent(true);
        assert!(log.on_refused(false, 16, peer, &full).is_some());
    }

    #[test]
    fn a_client_is_closed_when_silent_past_the_idle_close_or_stuck_in_a_partial_frame() {
        let config = ProxyConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            max_clients: 1,
            downstream_grace: Duration::from_secs(30),
            allow_remote_admin: false,
            deny_admin: Vec::new(),
            idle_close: ProxyConfig::IDLE_CLOSE,
            partial_frame: ProxyConfig::PARTIAL_FRAME,
        };
        let t0 = Instant::now();
        let later = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(overdue(later(899), t0, None, &config), None);
        assert!(overdue(later(900), t0, None, &config).is_some());
        assert_eq!(overdue(later(9), t0, Some(t0), &config), None);
        assert!(overdue(later(10), t0, Some(t0), &config).is_some());
        assert_eq!(
            overdue(later(20), later(5), Some(later(15)), &config),
            None,
            "a partial frame counts from its first byte"
        );
    }

    #[test]
    fn add_contact_passes_with_the_trusted_key_or_for_a_node_without_one() {
        assert!(contact_may_pass(None, [3; 32]));
        assert!(contact_may_pass(Some([3; 32]), [3; 32]));
        assert!(!contact_may_pass(Some([3; 32]), [4; 32]));
    }

    #[test]
    fn an_admin_payload_that_does_not_decode_is_told_apart_from_no_admin() {
        let packet = |portnum: PortNum, payload: Vec<u8>| MeshPacket {
            payload_variant: Some(mesh_packet::PayloadVariant::Decoded(
                meshtastic::protobufs::Data {
                    portnum: portnum as i32,
                    payload,
                    ..meshtastic::protobufs::Data::default()
                },
            )),
            ..MeshPacket::default()
        };
        // add_contact (field 66) whose user (2) has a long_name (2) that is not UTF-8.
        let bad = vec![0x92, 0x04, 6, 0x12, 4, 0x12, 2, 0xff, 0xfe];
        let Carried::Admin { payload, sealed } =
            admin::carried(&packet(PortNum::AdminApp, bad.clone()), Some(1), &[])
        else {
            panic!("an admin packet");
        };
        assert!(!sealed);
        assert!(matches!(
            admin::read_admin(&payload),
            AdminRead::Undecodable
        ));
        assert!(matches!(
            admin::carried(&packet(PortNum::TextMessageApp, bad), Some(1), &[]),
            Carried::Nothing
        ));
    }

    #[test]
    fn a_remote_client_gets_the_replay_without_the_private_key() {
        let frames = replay_for(security_replay(), false, false);
        assert_eq!(private_key(&frames), Some(Vec::new()));
        assert_eq!(frames.len(), 2, "only the key is taken out");
    }

    #[test]
    fn a_loopback_client_or_allowed_remote_admin_gets_the_private_key() {
        assert_eq!(
            private_key(&replay_for(security_replay(), true, false)),
            Some(vec![2; 32])
        );
        assert_eq!(
            private_key(&replay_for(security_replay(), false, true)),
            Some(vec![2; 32])
        );
    }
}
