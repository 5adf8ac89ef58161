//! The downstream clients: accepted up to the limit ([`Registry`]), each read until it leaves
//! (its config requests answered with a replay, its heartbeats while the radio is there, its
//! packets judged as the firmware judges one connection and held for the radio), and written
//! to by one bounded writer of its own (replies, its replay, then live frames).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use meshtastic::protobufs::{
    ClientNotification, Data, FromRadio, MeshPacket, PortNum, Routing, ToRadio, from_radio,
    log_record, mesh_packet, routing, to_radio,
};
use rand::RngExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::{Instant, sleep, timeout};
use tokio_util::codec::{Decoder, Framed, FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::filter::carried_by;
use super::replay::{ReplayEffect, replay_for};
use super::writer::{QueueRoom, Upward};
use super::{CLIENT_QUEUE, ProxyConfig, Shared, ToClient, composed, fair, lock, queue_status};
use crate::codec::{CodecError, RadioCodec, RadioFrame, encode_raw};
use crate::radio::{CONFIG_ONLY_NONCE, NODES_ONLY_NONCE};

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
    fn new(id: u64, addr: SocketAddr) -> Self {
        Self {
            id,
            addr,
            since: SystemTime::now(),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_activity: Mutex::new(SystemTime::now()),
        }
    }

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

/// The clients connected, published for the monitor, and the token that closes them all.
#[derive(Debug)]
pub(super) struct Registry {
    max: usize,
    clients: Mutex<Vec<Arc<ClientStats>>>,
    views: watch::Sender<Vec<ClientView>>,
    next_id: AtomicU64,
    /// Cancelled to close every client (a long radio outage).
    close_all: Mutex<CancellationToken>,
}

impl Registry {
    /// At most `max` clients; the monitor watches the receiver.
    pub(super) fn new(max: usize) -> (Self, watch::Receiver<Vec<ClientView>>) {
        let (views, watched) = watch::channel(Vec::new());
        let registry = Self {
            max,
            clients: Mutex::new(Vec::new()),
            views,
            next_id: AtomicU64::new(1),
            close_all: Mutex::new(CancellationToken::new()),
        };
        (registry, watched)
    }

    /// A new client from `addr`, unless there are as many as allowed (how many, then).
    fn join(&self, addr: SocketAddr) -> Result<Arc<ClientStats>, usize> {
        let mut clients = lock(&self.clients);
        if clients.len() >= self.max {
            return Err(clients.len());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::new(ClientStats::new(id, addr));
        clients.push(Arc::clone(&stats));
        drop(clients);
        self.publish();
        Ok(stats)
    }

    fn leave(&self, stats: &Arc<ClientStats>) {
        lock(&self.clients).retain(|c| !Arc::ptr_eq(c, stats));
        self.publish();
    }

    /// Tells the monitor the clients as they are now.
    pub(super) fn publish(&self) {
        let views = lock(&self.clients).iter().map(|c| c.view()).collect();
        self.views.send_replace(views);
    }

    /// Closes every client connected now (a long radio outage).
    pub(super) fn close_all(&self) {
        std::mem::take(&mut *lock(&self.close_all)).cancel();
    }

    /// Cancelled when [`Registry::close_all`] closes the clients connected now.
    fn closer(&self) -> CancellationToken {
        lock(&self.close_all).clone()
    }
}

pub(super) async fn accept(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                crate::log_limited!(warn, "accept-failed", target: "keysync::engine::proxy", "accept failed: {e}");
                sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let stats = match shared.clients.join(peer) {
            Ok(stats) => stats,
            Err(count) => {
                crate::log_limited!(warn, "client-refused", target: "keysync::engine::proxy", "refused {peer}: already {count} clients (--max-clients)");
                tokio::spawn(refuse(stream, shared.config.max_clients));
                continue;
            }
        };
        crate::log_limited!(info, "client-connected", burst 20, target: "keysync::engine::proxy", "client {peer} connected");
        let shared = shared.clone();
        tokio::spawn(async move {
            let why = serve(&shared, stream, stats.clone()).await;
            shared.clients.leave(&stats);
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

/// One downstream client, until it leaves.
async fn serve(shared: &Shared, stream: TcpStream, stats: Arc<ClientStats>) -> &'static str {
    let _ = stream.set_nodelay(true);
    // A kernel buffer of about the radio's own queue (32 frames of at most 516 bytes) keeps the
    // per-client backlog bounded: a client that stops reading stalls its own writer soon, and
    // then loses the oldest live frames, as on the radio.
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(CLIENT_QUEUE * 516);
    let (read, write) = stream.into_split();
    let mut source = FramedRead::new(read, TimedDecoder::default());
    // Everything for this client goes through one bounded writer task, so a client that does
    // not read only stalls itself.
    // A replay goes as one batch, written with a single flush.
    let (direct, direct_rx) = mpsc::channel::<ToClient>(CLIENT_QUEUE);
    // Set while a replay waits to be written: a client gets one replay at a time, so one that
    // asks again and again without reading costs one replay of memory, not one per request.
    let replaying = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_client(
        FramedWrite::new(write, RelayEncoder),
        direct_rx,
        shared.live.clone(),
        replaying.clone(),
        stats.clone(),
    ));
    let mut client = Client {
        shared,
        loopback: stats.addr.ip().is_loopback(),
        stats,
        direct,
        replaying,
        judged: fair::Connection::default(),
    };
    let why = client.read(&mut source).await;
    writer.abort();
    why
}

type ClientSource = FramedRead<tokio::net::tcp::OwnedReadHalf, TimedDecoder>;

/// What reading one client needs.
struct Client<'a> {
    shared: &'a Shared,
    loopback: bool,
    stats: Arc<ClientStats>,
    /// To the client's writer.
    direct: mpsc::Sender<ToClient>,
    replaying: Arc<AtomicBool>,
    /// This client as the firmware would judge it were it the radio's only client.
    judged: fair::Connection,
}

impl Client<'_> {
    /// Reads the client's frames until it leaves or is closed; why it was.
    async fn read(&mut self, source: &mut ClientSource) -> &'static str {
        let close = self.shared.clients.closer();
        let config = &self.shared.config;
        let mut tick = overdue_tick(config);
        let mut last_frame = Instant::now();
        loop {
            let item = tokio::select! {
                () = close.cancelled() => return "the radio stayed away past the grace period",
                () = self.shared.stop.cancelled() => return "keysync is stopping",
                item = source.next() => item,
                _ = tick.tick() => {
                    let partial = source.decoder().partial_since;
                    match overdue(Instant::now(), last_frame, partial, config) {
                        Some(why) => return why,
                        None => continue,
                    }
                }
            };
            let msg = match item {
                None => return "closed",
                Some(Err(_)) => return "socket error",
                Some(Ok(msg)) => msg,
            };
            self.stats.frames_in.fetch_add(1, Ordering::Relaxed);
            self.stats.touch();
            last_frame = Instant::now();
            if let Err(why) = self.take(msg).await {
                return why;
            }
        }
    }

    /// Takes one frame from the client; why the client goes, if it does.
    async fn take(&mut self, msg: ToRadio) -> Result<(), &'static str> {
        let shared = self.shared;
        match msg.payload_variant {
            Some(to_radio::PayloadVariant::WantConfigId(nonce)) => return self.replay(nonce).await,
            // Answered only while the radio is really there, so the client's own watchdog sees
            // the truth.
            Some(to_radio::PayloadVariant::Heartbeat(_)) if shared.cache.is_up() => {
                let room = shared.queues.room_for(self.stats.id);
                let answer = queue_status(0, room.free, room.maxlen, 0);
                let _ = self.direct.try_send(ToClient::Frame(answer));
            }
            Some(to_radio::PayloadVariant::Packet(packet))
                if shared
                    .filter
                    .admits(&shared.cache, &packet, self.loopback, self.stats.addr) =>
            {
                self.take_packet(packet);
            }
            Some(to_radio::PayloadVariant::Disconnect(_)) => return Err("said disconnect"),
            // Nothing, a heartbeat while the radio is away, or a packet the filter dropped.
            None
            | Some(to_radio::PayloadVariant::Heartbeat(_) | to_radio::PayloadVariant::Packet(_)) => {
            }
            Some(other) => {
                let msg = ToRadio {
                    payload_variant: Some(other),
                };
                self.hold(Upward::new(msg, 0, None, self.direct.clone()));
            }
        }
        Ok(())
    }

    /// Answers a `want_config_id` with a replay, one at a time.
    async fn replay(&self, nonce: u32) -> Result<(), &'static str> {
        if self.replaying.swap(true, Ordering::AcqRel) {
            log::debug!(target: "keysync::engine::proxy",
                "{}: ignored want_config {nonce}: its previous replay is not read yet", self.stats.addr);
            return Ok(());
        }
        let Some(frames) = self.shared.cache.replay(nonce).await else {
            return Err("the radio's configuration never arrived");
        };
        let frames = replay_for(frames, self.loopback, self.shared.config.allow_remote_admin);
        let then_live = nonce != NODES_ONLY_NONCE;
        self.direct
            .send(ToClient::Replay { frames, then_live })
            .await
            .map_err(|_| "the client's writer stopped")
    }

    /// A client's packet, judged as the firmware judges one connection: a repeated id is
    /// ignored, one over a limit is answered as the firmware answers it, and the rest waits in
    /// the client's queue for the radio.
    fn take_packet(&mut self, mut packet: MeshPacket) {
        let shared = self.shared;
        let stats = &self.stats;
        let portnum = match &packet.payload_variant {
            Some(mesh_packet::PayloadVariant::Decoded(data)) => Some(data.portnum),
            _ => None,
        };
        let firmware = shared.cache.firmware();
        match self
            .judged
            .judge(firmware, packet.id, portnum, Instant::now())
        {
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
                let room = shared.queues.room_for(stats.id);
                let own = shared.cache.own().unwrap_or(0);
                for answer in over_limit_answers(own, &packet, limit.answer, room) {
                    let _ = self.direct.try_send(ToClient::Frame(answer));
                }
                return;
            }
        }
        // The firmware would give it an id the client never learns, and its QueueStatus could
        // not be routed back: keysync gives it one first.
        if packet.id == 0 {
            packet.id = rand::rng().random_range(1..=u32::MAX);
        }
        // What it changes in the replay once held: the node list at once, the configuration by
        // a config-only refresh queued right behind it.
        let (own, carried) = carried_by(&shared.cache, &packet);
        let effect = ReplayEffect::of_packet(packet.to, own, carried);
        let id = packet.id;
        let msg = ToRadio {
            payload_variant: Some(to_radio::PayloadVariant::Packet(packet)),
        };
        // A packet the full queue refused changes nothing on the radio, nor in the replay.
        if self.hold(Upward::new(msg, id, portnum, self.direct.clone())) {
            shared.cache.apply(effect);
            if effect == ReplayEffect::Config {
                self.queue_refresh();
            }
        }
    }

    /// Holds `up` in the client's queue for the upstream writer, or refuses it as the radio's
    /// full queue would. True when held.
    fn hold(&self, up: Upward) -> bool {
        let away = !self.shared.cache.is_up();
        self.shared
            .queues
            .hold(self.stats.id, self.stats.addr, away, up)
    }

    /// Queues a config-only download behind what the client just sent, so that the next replay
    /// shows the change; counted in the cache's refreshes already.
    fn queue_refresh(&self) {
        crate::log_limited!(info, "config-refresh", burst 5, target: "keysync::engine::proxy",
            "{} changes the radio's configuration: refreshing it before the next replay", self.stats.addr);
        let want = crate::radio::want_config(CONFIG_ONLY_NONCE);
        if !self.hold(Upward::new(want, 0, None, self.direct.clone())) {
            self.shared.cache.refresh_dropped();
        }
    }
}

/// What the firmware sends a client whose packet is over a limit: a QueueStatus `res = 0`
/// (PhoneAPI.cpp sendQueueStatusToPhone), then a routing error from the radio `own` or a
/// notification where it sends one.
fn over_limit_answers(
    own: u32,
    packet: &MeshPacket,
    answer: fair::OverLimit,
    room: QueueRoom,
) -> Vec<Bytes> {
    let mut out = vec![queue_status(0, room.free, room.maxlen, packet.id)];
    match answer {
        fair::OverLimit::Silently => {}
        fair::OverLimit::RoutingError => {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
