//! One client connection to the simulated radio (firmware `src/mesh/PhoneAPI.cpp` unless a
//! comment says otherwise): config downloads, heartbeats, packets with the per-connection rate
//! limits, admin messages (add_contact and the operator's decisions), idle close, and the
//! faults aimed at the client. What each firmware version does comes from its [`Profile`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use meshtastic::Message;
use meshtastic::protobufs::{
    Channel, ChannelSettings, Config, DeviceMetadata, DeviceUiConfig, FileInfo, FromRadio,
    MeshPacket, ModuleConfig, MyNodeInfo, NodeInfo, PortNum, SharedContact, ToRadio, admin_message,
    channel, config, from_radio, mesh_packet, module_config, to_radio,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::nodedb::{ContactResult, RawNames};
use super::population::now_secs;
use super::profile::{Profile, Rule};
use super::{ClientCmd, OperatorAction, RoutingError, Shared};
use keysync_engine::RadioCodec;
use keysync_engine::length_delimited;
use keysync_engine::{
    BROADCAST, CONFIG_ONLY_NONCE, NODES_ONLY_NONCE, admin_of, node_id, to_radio_kind, valid_key,
};

/// The firmware ignores a packet whose id repeats one of the last this many.
const RECENT_IDS: usize = 20;
/// PhoneAPI.cpp: one text per connection every 2 s (from 2.7.0.705515a).
const TEXT_GAP: Duration = Duration::from_secs(2);
/// PhoneAPI.cpp: position, telemetry, waypoint and alert, one per 10 s per connection.
const POSITION_GAP: Duration = Duration::from_secs(10);
/// PhoneAPI.cpp: one traceroute per 30 s per connection.
const TRACEROUTE_GAP: Duration = Duration::from_secs(30);

/// A client's byte stream: a TCP connection, or the master side of the simulated USB port.
pub(super) trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}
pub(super) type SimStream = Box<dyn ByteStream>;

type Conn = Framed<SimStream, RadioCodec>;

/// What the radio does differently on its serial console (SerialConsole.cpp, StreamAPI.cpp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Port {
    Tcp,
    /// Debug log text until the first frame makes the API active, a frame parser that may
    /// hold a half-read header from before (which the client's wake-up bytes flush), the log
    /// as `LogRecord` frames once active, and no idle close: a serial port has no connection
    /// to time out, and a `disconnect` only ends the client's session, not the device.
    Serial,
}

/// StreamAPI.cpp keeps its parser state across clients: a radio whose last client went away
/// in the middle of a frame still waits for that frame's remaining bytes.
const STALE_HEADER: [u8; 4] = [0x94, 0xC3, 0x00, 0x14];
/// How often a serial radio prints a debug line while no client has talked to it.
const DEBUG_TEXT_EVERY: Duration = Duration::from_millis(500);

struct Client {
    peer: String,
    shared: Arc<Shared>,
    recent_ids: VecDeque<u32>,
    /// Live traffic flows only after a full or config-only download completed.
    configured: bool,
    /// When this connection last had a packet accepted on each rate-limited port
    /// (`lastPortNumToRadio`, per connection and per port).
    last_sent: HashMap<i32, Instant>,
    port: Port,
    /// A frame arrived: a serial radio stops printing its debug log as text.
    api_active: bool,
}

/// The per-connection rate limits of PhoneAPI.cpp handleToRadioPacket, by kind of packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limited {
    Text,
    Position,
    Traceroute,
}

impl Limited {
    /// The limit that applies to `portnum` on `profile`, if any.
    fn of(portnum: i32, profile: &Profile) -> Option<Self> {
        let p = PortNum::try_from(portnum).ok()?;
        match p {
            PortNum::TextMessageApp if profile.has(Rule::TextRateLimit) => Some(Self::Text),
            PortNum::PositionApp
            | PortNum::TelemetryApp
            | PortNum::WaypointApp
            | PortNum::AlertApp
                if profile.has(Rule::PositionRateLimit) =>
            {
                Some(Self::Position)
            }
            PortNum::TracerouteApp => Some(Self::Traceroute),
            _ => None,
        }
    }

    fn gap(self) -> Duration {
        match self {
            Self::Text => TEXT_GAP,
            Self::Position => POSITION_GAP,
            Self::Traceroute => TRACEROUTE_GAP,
        }
    }
}

/// What the radio does with a client packet.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Sent on to the mesh (or handled, when addressed to the radio): QueueStatus `res = 0`.
    Accepted,
    /// Over a limit and dropped: QueueStatus `res = 0`, so the sender believes it went; with a
    /// routing error or a ClientNotification too where the firmware sends one.
    OverLimit {
        error: Option<RoutingError>,
        notice: Option<&'static str>,
    },
    /// Refused with a routing error to the client (Router.cpp abortSendAndNak).
    Refused(RoutingError),
}

pub(super) async fn serve(
    stream: SimStream,
    peer: String,
    port: Port,
    shared: Arc<Shared>,
    kick: CancellationToken,
    mut cmds: mpsc::Receiver<ClientCmd>,
) {
    let mut conn = Framed::new(stream, RadioCodec::new());
    if port == Port::Serial {
        conn.read_buffer_mut().extend_from_slice(&STALE_HEADER);
    }
    let mut live = shared.live.subscribe();
    let idle = idle_close(port, &shared);
    let mut client = Client::new(peer, shared.clone(), port);
    let mut last_rx = Instant::now();
    let mut debug_text = tokio::time::interval(DEBUG_TEXT_EVERY);
    let mut lines = 0u64;
    let why = loop {
        tokio::select! {
            _ = debug_text.tick(), if port == Port::Serial && !client.api_active => {
                lines += 1;
                if conn.get_mut().write_all(debug_line(lines).as_bytes()).await.is_err() {
                    break "write failed";
                }
            }
            () = kick.cancelled() => break "replaced or dropped",
            item = conn.next() => match item {
                None => break "client closed",
                Some(Err(_)) => break "socket error",
                Some(Ok(msg)) => {
                    last_rx = Instant::now();
                    client.api_active = true;
                    if !client.handle(msg, &mut conn).await {
                        if port == Port::Serial {
                            // The device stays: the next client starts with a download.
                            client.configured = false;
                            continue;
                        }
                        break "client said disconnect or the write failed";
                    }
                }
            },
            () = sleep_until(last_rx + idle) => {
                log::info!(target: "keysync::sim", "TCP connection timeout, no data for {} from {}", humantime::format_duration(idle), client.peer);
                shared.counters.idle_closes.fetch_add(1, Ordering::Relaxed);
                break "idle";
            }
            cmd = cmds.recv() => match fault(cmd, &mut conn, &kick).await {
                Err(why) => break why,
                Ok(AfterFault::Stalled) => {
                    // The stall swallowed nothing: the client's bytes wait in the socket.
                    last_rx = Instant::now();
                    live = live.resubscribe();
                }
                Ok(AfterFault::Sent) => {}
            },
            frame = live.recv(), if client.configured => match frame {
                Ok(frame) => {
                    if conn.send(frame).await.is_err() {
                        break "write failed";
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    shared.counters.dropped_to_client.fetch_add(n, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => {}
            },
        }
    };
    let stats = conn.codec().stats();
    log::info!(target: "keysync::sim",
        "client {} gone ({why}); {} frames in, {} garbage bytes skipped", client.peer,
        stats.frames, stats.garbage_bytes);
}

/// How long a silent client stays: only firmware ≥ 2.7.21 closes an idle client, and only on
/// TCP.
fn idle_close(port: Port, shared: &Shared) -> Duration {
    if port == Port::Tcp && shared.config.profile.has(Rule::IdleClose) {
        shared.config.idle_timeout
    } else {
        Duration::MAX / 4
    }
}

/// What a fault did to a client that is still there.
enum AfterFault {
    Stalled,
    Sent,
}

/// A fault the test asked for on this client: a stall, or garbage on the wire. Why the client
/// is gone, when it is.
async fn fault(
    cmd: Option<ClientCmd>,
    conn: &mut Framed<SimStream, RadioCodec>,
    kick: &CancellationToken,
) -> Result<AfterFault, &'static str> {
    match cmd {
        Some(ClientCmd::Stall(d)) => tokio::select! {
            () = sleep(d) => Ok(AfterFault::Stalled),
            () = kick.cancelled() => Err("replaced or dropped"),
        },
        Some(ClientCmd::Garbage(noise)) => {
            if conn.flush().await.is_err() || conn.get_mut().write_all(&noise).await.is_err() {
                return Err("write failed");
            }
            Ok(AfterFault::Sent)
        }
        None => Ok(AfterFault::Sent),
    }
}

/// A line of the firmware's debug log as a serial console prints it before the API is active
/// (RedirectablePrint.cpp: level, uptime, thread, message; colour codes included).
fn debug_line(n: u64) -> String {
    format!(
        "\x1b[34mDEBUG\x1b[0m | ??:??:?? {n} [Power] Battery: usbPower=1, isCharging=0, batMv=4190, batPct=100\r\n"
    )
}

/// The radio's log line as a frame, once a client made the serial API active.
fn log_record(message: &str) -> FromRadio {
    FromRadio {
        payload_variant: Some(from_radio::PayloadVariant::LogRecord(
            meshtastic::protobufs::LogRecord {
                message: message.to_owned(),
                time: now_secs(),
                source: "PhoneAPI".into(),
                level: meshtastic::protobufs::log_record::Level::Info as i32,
            },
        )),
        ..FromRadio::default()
    }
}

impl Client {
    fn new(peer: String, shared: Arc<Shared>, port: Port) -> Self {
        Self {
            peer,
            shared,
            recent_ids: VecDeque::new(),
            configured: false,
            last_sent: HashMap::new(),
            port,
            api_active: false,
        }
    }

    /// Handles one frame; false when the connection should close.
    async fn handle(&mut self, msg: ToRadio, conn: &mut Conn) -> bool {
        let kind = to_radio_kind(&msg);
        self.shared.counters.count(kind);
        if let Some(to_radio::PayloadVariant::Packet(p)) = &msg.payload_variant {
            self.shared.counters.note_packet(p.id);
        }
        let bytes = msg.encoded_len() as u64 + 4;
        let counters = &self.shared.counters;
        counters.bytes_received.fetch_add(bytes, Ordering::Relaxed);
        if kind != "heartbeat" {
            counters
                .bytes_besides_heartbeats
                .fetch_add(bytes, Ordering::Relaxed);
        }
        match msg.payload_variant {
            Some(to_radio::PayloadVariant::WantConfigId(nonce)) => {
                if self.port == Port::Serial
                    && conn
                        .feed(log_record(&format!("Client wants config, nonce={nonce}")))
                        .await
                        .is_err()
                {
                    return false;
                }
                let frames = self.download(nonce);
                log::debug!(target: "keysync::sim", "{}: config download {nonce} ({} frames)", self.peer, frames.len());
                for frame in frames {
                    let sent = match frame {
                        Outgoing::Frame(f) => conn.feed(*f).await.is_ok(),
                        // A frame keysync's types cannot hold: written as bytes.
                        Outgoing::Raw(bytes) => {
                            conn.flush().await.is_ok()
                                && conn.get_mut().write_all(&bytes).await.is_ok()
                        }
                    };
                    if !sent {
                        return false;
                    }
                }
                if !self.is_nodes_only(nonce) {
                    self.configured = true;
                }
                conn.flush().await.is_ok()
            }
            // Nonce 1 is a nodeinfo ping (2.7.23+), answered by a broadcast and no QueueStatus.
            Some(to_radio::PayloadVariant::Heartbeat(h))
                if h.nonce == 1 && self.profile().has(Rule::HeartbeatNodeInfoPing) =>
            {
                self.shared.nodeinfo_ping();
                true
            }
            // 2.7.6+ answers every heartbeat; older firmware answers nothing.
            Some(to_radio::PayloadVariant::Heartbeat(_))
                if self.profile().has(Rule::HeartbeatAnswered) =>
            {
                let status = self.queue_status(0, 0);
                conn.send(status).await.is_ok()
            }
            Some(to_radio::PayloadVariant::Packet(packet)) => match self.packet(&packet) {
                Some(answer) => conn.send(answer).await.is_ok(),
                None => true,
            },
            Some(to_radio::PayloadVariant::Disconnect(_)) => false,
            _ => true,
        }
    }

    fn queue_status(&self, res: i32, mesh_packet_id: u32) -> FromRadio {
        let maxlen = self.shared.config.queue_len;
        let full = self
            .shared
            .radio()
            .queue_full_until
            .is_some_and(|t| Instant::now() < t);
        let free = if full { 0 } else { maxlen };
        keysync_engine::queue_status(res, free, maxlen, mesh_packet_id)
    }

    fn profile(&self) -> &Profile {
        &self.shared.config.profile
    }

    /// 69421 is a nodes-only download only where the firmware knows it (≥ 2.6.8).
    fn is_nodes_only(&self, nonce: u32) -> bool {
        nonce == NODES_ONLY_NONCE && self.profile().has(Rule::NodesOnlyDownload)
    }

    /// A packet from the client; returns the answer, if any.
    fn packet(&mut self, packet: &MeshPacket) -> Option<FromRadio> {
        if packet.id != 0 && self.recent_ids.contains(&packet.id) {
            log::debug!(target: "keysync::sim", "ignoring repeated packet id {:08x}", packet.id);
            return None;
        }
        if packet.id != 0 {
            if self.recent_ids.len() == RECENT_IDS {
                self.recent_ids.pop_front();
            }
            self.recent_ids.push_back(packet.id);
        }
        let my_num = self.shared.radio().db.my_node_num();
        let to_self = packet.to == my_num || packet.to == 0;
        let verdict = if to_self {
            if let Some(admin) = admin_of(packet) {
                self.admin(packet, admin.payload_variant);
            }
            Verdict::Accepted
        } else {
            self.send_on(packet)
        };
        let counters = &self.shared.counters;
        match verdict {
            Verdict::Refused(_) => {
                self.shared.dm_fail(packet.to, packet.id);
                return None;
            }
            Verdict::OverLimit { error, notice } => {
                counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                if let Some(error) = error {
                    self.shared
                        .to_client(self.shared.routing_error(error, packet.id));
                }
                if let Some(notice) = notice {
                    self.shared.notify(notice.to_owned(), Some(packet.id));
                }
            }
            Verdict::Accepted => {}
        }
        let silent = self
            .shared
            .radio()
            .silent_until
            .is_some_and(|t| Instant::now() < t);
        // Router.cpp returns ERRNO_OK for packets to the own node too: `res = 0` on every version.
        (!silent).then(|| self.queue_status(0, packet.id))
    }

    /// A client packet for the mesh: the per-connection limits, the PKI rule, then it goes out.
    fn send_on(&mut self, packet: &MeshPacket) -> Verdict {
        let now = Instant::now();
        let portnum = match &packet.payload_variant {
            Some(mesh_packet::PayloadVariant::Decoded(data)) => data.portnum,
            _ => 0,
        };
        if let Some(kind) = Limited::of(portnum, self.profile()) {
            let last = self.last_sent.get(&portnum);
            if last.is_some_and(|t| now < *t + kind.gap()) {
                log::info!(target: "keysync::sim", "{}: {kind:?} packet {:08x} over the per-connection limit", self.peer, packet.id);
                // The routing error is addressed to the packet's sender: it reaches the client
                // only when that names the radio itself; from 0 (as clients send) it goes to
                // node 0 over the mesh (PhoneAPI.cpp; seen so on meshtasticd 2.7.26 and 2.8).
                let mine = packet.from == self.shared.radio().db.my_node_num();
                let error =
                    (kind == Limited::Text && mine && self.profile().has(Rule::TextRateLimitError))
                        .then_some(RoutingError::RateLimitExceeded);
                // sendNotification goes to the client whoever the packet names as sender.
                let notice = match kind {
                    Limited::Traceroute => {
                        Some("TraceRoute can only be sent once every 30 seconds")
                    }
                    Limited::Text if self.profile().has(Rule::TextRateLimitNotice) => {
                        Some("Text messages can only be sent once every 2 seconds")
                    }
                    Limited::Text | Limited::Position => None,
                };
                return Verdict::OverLimit { error, notice };
            }
            // Only an accepted packet moves the limit on.
            self.last_sent.insert(portnum, now);
        }
        // Router.cpp perhapsEncode: a DM on a port that PKI covers needs the peer's key.
        let pki_port = ![
            PortNum::TracerouteApp,
            PortNum::NodeinfoApp,
            PortNum::RoutingApp,
            PortNum::PositionApp,
        ]
        .into_iter()
        .any(|p| p as i32 == portnum);
        let unicast = packet.to != BROADCAST;
        if unicast && pki_port && self.profile().has(Rule::PkiSendFail) {
            // On 2.8 a node evicted to the warm tier is still encrypted to.
            let keyed = self.shared.radio().db.dm_key(packet.to).is_some();
            if !keyed {
                return Verdict::Refused(RoutingError::PkiSendFailPublicKey);
            }
        }
        self.shared
            .counters
            .mesh_sent
            .fetch_add(1, Ordering::Relaxed);
        self.shared.radio().record_sent(packet.clone());
        if packet.want_ack {
            acknowledge(&self.shared, packet);
        }
        if let Some(text) = text_of(packet) {
            echo(&self.shared, packet.from, &text);
        }
        Verdict::Accepted
    }

    /// An admin message to the radio itself (AdminModule.cpp).
    fn admin(&self, packet: &MeshPacket, admin: Option<admin_message::PayloadVariant>) {
        use admin_message::PayloadVariant as A;
        let counters = &self.shared.counters;
        if let Some(A::AddContact(_)) = &admin {
            counters.add_contacts.fetch_add(1, Ordering::Relaxed);
        }
        let Some(admin) = admin else {
            return;
        };
        if self.shared.config.managed {
            counters.ignored_admin.fetch_add(1, Ordering::Relaxed);
            log::info!(target: "keysync::sim", "{}: admin message ignored: the radio is managed", self.peer);
            return;
        }
        match admin {
            A::AddContact(contact) if self.profile().has(Rule::AddContact) => {
                self.add_contact(&contact);
            }
            A::AddContact(_) => {
                // Field 66 is unknown before 2.6.8: nanopb skips it, the message does nothing.
                counters.ignored_admin.fetch_add(1, Ordering::Relaxed);
                log::info!(target: "keysync::sim", "{}: admin field add_contact unknown to firmware {}; ignored",
                    self.peer, self.profile().firmware.reported);
            }
            A::SetIgnoredNode(num) => {
                self.shared.operator(OperatorAction::Ignore, num);
            }
            A::RemoveByNodenum(num) => {
                self.shared.operator(OperatorAction::Remove, num);
            }
            A::SetFavoriteNode(num) => {
                self.shared.operator(OperatorAction::Favorite, num);
            }
            A::RemoveFavoriteNode(num) => {
                self.shared.operator(OperatorAction::Unfavorite, num);
            }
            A::SetChannel(channel) => self.set_channel(packet, channel),
            A::GetChannelRequest(slot) => self.get_channel(packet, slot),
            _ => {}
        }
    }

    /// set_channel from this client; an index outside the eight slots is a BAD_REQUEST (AdminModule.cpp). Asked for a response, the radio answers with an ACK.
    fn set_channel(&self, packet: &MeshPacket, channel: Channel) {
        let shared = &self.shared;
        let slot = channel.index;
        let error = if shared.set_channel(channel) {
            log::info!(target: "keysync::sim", "{}: set_channel {slot}", self.peer);
            wants_response(packet).then_some(RoutingError::None)
        } else {
            log::info!(target: "keysync::sim", "{}: set_channel for slot {slot}: no such slot", self.peer);
            Some(RoutingError::BadRequest)
        };
        if let Some(error) = error {
            shared.to_client(shared.routing_error(error, packet.id));
        }
    }

    /// get_channel_request (AdminModule.cpp handleGetChannel): slot `n` is channel `n - 1`,
    /// answered only when a response is asked for; outside the slots, BAD_REQUEST.
    fn get_channel(&self, packet: &MeshPacket, slot: u32) {
        let shared = &self.shared;
        let channel = slot
            .checked_sub(1)
            .and_then(|i| shared.radio().channels.get(i as usize).cloned());
        let Some(channel) = channel else {
            shared.to_client(shared.routing_error(RoutingError::BadRequest, packet.id));
            return;
        };
        if wants_response(packet) {
            let answer = meshtastic::protobufs::AdminMessage {
                payload_variant: Some(admin_message::PayloadVariant::GetChannelResponse(channel)),
                ..meshtastic::protobufs::AdminMessage::default()
            };
            shared.to_client(shared.reply(PortNum::AdminApp, answer.encode_to_vec(), packet.id));
        }
    }

    fn add_contact(&self, contact: &SharedContact) {
        let counters = &self.shared.counters;
        let key = contact
            .user
            .as_ref()
            .map(|u| u.public_key.as_slice())
            .unwrap_or_default();
        if valid_key(key).is_none() {
            counters.invalid_contacts.fetch_add(1, Ordering::Relaxed);
            log::warn!(target: "keysync::sim",
                "add_contact for {} with an invalid key ({} bytes): the stored key is erased",
                node_id(contact.node_num), key.len());
        }
        let mut radio = self.shared.radio();
        radio.contacts.push((Instant::now(), contact.clone()));
        match radio.db.add_contact(contact, now_secs()) {
            ContactResult::Stored => {
                self.shared.write_flash(&mut radio);
                // The node as stored, not as asked: the firmware may not read should_ignore, may
                // favourite or verify on its own, or refuse the flags past its limit.
                let stored = radio.db.get(contact.node_num).cloned().unwrap_or_default();
                log::info!(target: "keysync::sim", "add_contact {}: stored{}{}{}, NodeDB written to flash",
                    node_id(contact.node_num),
                    if stored.is_favorite { ", favourite" } else { ", not favourite" },
                    if stored.is_key_manually_verified { ", manually verified" } else { "" },
                    if stored.is_ignored { ", ignored" } else { "" });
            }
            ContactResult::DroppedVerified => {
                log::info!(target: "keysync::sim", "add_contact {}: dropped (node is manually verified, key differs)", node_id(contact.node_num));
            }
            ContactResult::NoRoom => {
                self.shared.no_room(&mut radio, contact.node_num);
            }
        }
    }

    /// The frames of a config download for `nonce`, in firmware order.
    fn download(&self, nonce: u32) -> Vec<Outgoing> {
        use from_radio::PayloadVariant as V;
        let frame = |v: V| {
            Outgoing::Frame(Box::new(FromRadio {
                id: 0,
                payload_variant: Some(v),
            }))
        };
        let radio = self.shared.radio();
        let mut own = radio.db.own().clone();
        own.is_favorite = true;
        own.last_heard = now_secs();
        let others: Vec<Outgoing> = radio
            .db
            .others()
            .map(|(n, raw)| match raw {
                Some(raw) => Outgoing::Raw(node_info_with_raw_names(&n, raw)),
                None => frame(V::NodeInfo(n)),
            })
            .collect();
        let total = radio.db.len();
        drop(radio);

        let profile = self.profile();
        let mut out = Vec::new();
        if self.is_nodes_only(nonce) {
            out.push(frame(V::NodeInfo(own)));
            out.extend(others);
            out.push(frame(V::ConfigCompleteId(nonce)));
            return out;
        }
        let with_nodes = nonce != CONFIG_ONLY_NONCE;
        // The NodeDB's total, also in a config-only download (≥ 2.7.4).
        let nodedb_count = if profile.has(Rule::NodedbCount) {
            u32::try_from(total).unwrap_or(u32::MAX)
        } else {
            0
        };
        out.extend(
            self.config_frames(&own, nodedb_count)
                .into_iter()
                .map(frame),
        );
        if with_nodes {
            out.extend(others);
        }
        out.push(frame(V::FileInfo(FileInfo {
            file_name: "/prefs/nodes.proto".into(),
            size_bytes: u32::try_from(total * 180).unwrap_or(u32::MAX),
        })));
        out.push(frame(V::ConfigCompleteId(nonce)));
        out
    }

    /// What a config download says before the node list: my_info, the UI config, the own
    /// node, the metadata, the channels, the configs and the module configs.
    fn config_frames(&self, own: &NodeInfo, nodedb_count: u32) -> Vec<from_radio::PayloadVariant> {
        use from_radio::PayloadVariant as V;
        let profile = self.profile();
        let own_key = own
            .user
            .as_ref()
            .map(|u| u.public_key.clone())
            .unwrap_or_default();
        let mut out = vec![
            V::MyInfo(MyNodeInfo {
                my_node_num: own.num,
                reboot_count: 3,
                min_app_version: 30_200,
                pio_env: profile.hw.pio_env().into(),
                nodedb_count,
                ..MyNodeInfo::default()
            }),
            V::DeviceuiConfig(DeviceUiConfig::default()),
            V::NodeInfo(own.clone()),
            V::Metadata(DeviceMetadata {
                firmware_version: profile.firmware.reported.clone(),
                device_state_version: 24,
                has_wifi: true,
                has_pkc: true,
                hw_model: profile.hw.hw_model() as i32,
                role: profile.role.role() as i32,
                ..DeviceMetadata::default()
            }),
        ];
        let channels = self.shared.radio().channels.clone();
        out.extend(channels.into_iter().map(V::Channel));
        // The firmware hands its private key to a connected client; a stand-in here (the sim
        // has no key pair), so that tests can see who gets it.
        let private_key = own_key.iter().map(|b| b ^ 0x5a).collect();
        let security = config::SecurityConfig {
            public_key: own_key,
            private_key,
            is_managed: self.shared.config.managed,
            ..config::SecurityConfig::default()
        };
        out.extend(configs(profile, security).into_iter().map(V::Config));
        out.extend(module_configs().into_iter().map(V::ModuleConfig));
        out
    }
}

/// A frame on its way to the client.
enum Outgoing {
    Frame(Box<FromRadio>),
    /// A whole frame, header included, that keysync's types cannot express (names that are not
    /// UTF-8).
    Raw(Vec<u8>),
}

/// `FromRadio{node_info}` whose user's names are the raw bytes the node sent.
fn node_info_with_raw_names(info: &NodeInfo, raw: &RawNames) -> Vec<u8> {
    let user = info.user.clone().unwrap_or_default();
    let without_user = NodeInfo {
        user: None,
        ..info.clone()
    };
    let mut node = without_user.encode_to_vec();
    length_delimited(&mut node, 2, &super::user_with_raw_names(&user, raw));
    let mut from_radio = Vec::new();
    length_delimited(&mut from_radio, 4, &node);
    let mut frame = bytes::BytesMut::new();
    frame.extend_from_slice(&[0x94, 0xC3]);
    frame.extend_from_slice(
        &u16::try_from(from_radio.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(&from_radio);
    frame.to_vec()
}

fn wants_response(packet: &MeshPacket) -> bool {
    matches!(&packet.payload_variant, Some(mesh_packet::PayloadVariant::Decoded(d)) if d.want_response)
}

/// The channel slots of a new radio: a primary with the default key, the rest disabled.
pub(super) fn channels() -> Vec<Channel> {
    (0_i32..)
        .take(super::CHANNEL_SLOTS)
        .map(|index| Channel {
            index,
            settings: Some(ChannelSettings {
                psk: if index == 0 { vec![1] } else { Vec::new() },
                ..ChannelSettings::default()
            }),
            role: if index == 0 {
                channel::Role::Primary as i32
            } else {
                channel::Role::Disabled as i32
            },
        })
        .collect()
}

fn configs(profile: &Profile, security: config::SecurityConfig) -> Vec<Config> {
    use config::PayloadVariant as C;
    [
        C::Device(config::DeviceConfig {
            role: profile.role.role() as i32,
            ..config::DeviceConfig::default()
        }),
        C::Position(config::PositionConfig::default()),
        C::Power(config::PowerConfig::default()),
        C::Network(config::NetworkConfig {
            wifi_enabled: true,
            ..config::NetworkConfig::default()
        }),
        C::Display(config::DisplayConfig::default()),
        C::Lora(config::LoRaConfig {
            use_preset: true,
            region: config::lo_ra_config::RegionCode::Eu868 as i32,
            hop_limit: 3,
            tx_enabled: true,
            ..config::LoRaConfig::default()
        }),
        C::Bluetooth(config::BluetoothConfig::default()),
        C::Security(security),
        C::Sessionkey(config::SessionkeyConfig::default()),
    ]
    .into_iter()
    .map(|c| Config {
        payload_variant: Some(c),
    })
    .collect()
}

fn module_configs() -> Vec<ModuleConfig> {
    use module_config::PayloadVariant as M;
    [
        M::Mqtt(module_config::MqttConfig::default()),
        M::Serial(module_config::SerialConfig::default()),
        M::ExternalNotification(module_config::ExternalNotificationConfig::default()),
        M::StoreForward(module_config::StoreForwardConfig::default()),
        M::RangeTest(module_config::RangeTestConfig::default()),
        M::Telemetry(module_config::TelemetryConfig::default()),
        M::CannedMessage(module_config::CannedMessageConfig::default()),
        M::Audio(module_config::AudioConfig::default()),
        M::RemoteHardware(module_config::RemoteHardwareConfig::default()),
        M::NeighborInfo(module_config::NeighborInfoConfig::default()),
        M::AmbientLighting(module_config::AmbientLightingConfig::default()),
        M::DetectionSensor(module_config::DetectionSensorConfig::default()),
        M::Paxcounter(module_config::PaxcounterConfig::default()),
    ]
    .into_iter()
    .map(|m| ModuleConfig {
        payload_variant: Some(m),
    })
    .collect()
}

/// The text of a TEXT_MESSAGE_APP packet.
fn text_of(packet: &MeshPacket) -> Option<String> {
    let Some(mesh_packet::PayloadVariant::Decoded(data)) = &packet.payload_variant else {
        return None;
    };
    (data.portnum == PortNum::TextMessageApp as i32)
        .then(|| String::from_utf8_lossy(&data.payload).into_owned())
}

/// A node on the mesh answers a text message shortly after, as a person (or a bot) would, so
/// clients see traffic coming back.
fn echo(shared: &Arc<Shared>, to: u32, text: &str) {
    let (from, id) = {
        let mut radio = shared.radio();
        let from = radio.mesh.first().map_or(0x1234_5678, |n| n.num);
        (from, radio.population.packet_id())
    };
    let reply = FromRadio {
        id: 0,
        payload_variant: Some(from_radio::PayloadVariant::Packet(super::mesh_packet(
            from,
            if to == 0 { BROADCAST } else { to },
            id,
            PortNum::TextMessageApp,
            format!("echo: {text}").into_bytes(),
        ))),
    };
    later(shared, reply, Duration::from_millis(150));
}

/// ReliableRouter.cpp: a packet sent with `want_ack` is acknowledged to the client with a
/// routing packet (error NONE, `request_id` its id): a broadcast implicitly, by the radio itself
/// once it hears a neighbour rebroadcast it, a DM by its destination. The simulated mesh always
/// answers; a DM to a node not on it gets nothing (the firmware would NAK after its retries).
fn acknowledge(shared: &Arc<Shared>, packet: &MeshPacket) {
    let from = if packet.to == BROADCAST {
        let radio = shared.radio();
        if radio.mesh.is_empty() {
            return;
        }
        radio.db.my_node_num()
    } else if shared.radio().mesh.iter().any(|n| n.num == packet.to) {
        packet.to
    } else {
        return;
    };
    let mut ack = shared.routing_error(RoutingError::None, packet.id);
    ack.from = from;
    let ack = FromRadio {
        id: 0,
        payload_variant: Some(from_radio::PayloadVariant::Packet(ack)),
    };
    later(shared, ack, Duration::from_millis(100));
}

/// Sends `frame` to the client after `delay`, as the mesh's answers come some time later.
fn later(shared: &Arc<Shared>, frame: FromRadio, delay: Duration) {
    let shared = shared.clone();
    tokio::spawn(async move {
        sleep(delay).await;
        let _ = shared.live.send(frame);
    });
}
