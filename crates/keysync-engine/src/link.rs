//! The link supervisor: one connection to the radio (TCP or serial, see [`super::transport`]),
//! kept alive and honest.
//!
//! It connects with a timeout (and TCP keepalive), downloads the configuration with a random
//! nonce, then heartbeats and watches for silence. When the link dies it names the cause, backs
//! off with full jitter, and reconnects. Every state change is stamped with the wall clock and
//! kept in a bounded timeline. Decoded frames, session starts and ends go out on one ordered
//! broadcast so that consumers (sync engine, proxy, counters) see them in the order they
//! happened; writes come in on one queue and are tagged with the session they were meant for,
//! so nothing meant for a dead connection reaches a new one.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures::{SinkExt, StreamExt};
use meshtastic::protobufs::{NodeInfo, SharedContact, ToRadio, from_radio, to_radio};
use rand::RngExt;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::codec::Framed;

use super::codec::{CodecError, RadioFrame, RelayCodec};
use super::radio;
use super::stats::AtomicHistogram;
pub use super::transport::CloseCause;
use super::transport::{self, Endpoint, RadioStream};

/// How many state changes the timeline keeps.
pub const TIMELINE_LEN: usize = 256;
/// Closes by the radio within this long of connecting count towards the takeover rule.
const EARLY_CLOSE: Duration = Duration::from_secs(60);
/// This many early closes in a row mean another client is using the radio.
const EARLY_CLOSES_FOR_TAKEOVER: u32 = 3;

/// Reconnect pacing: exponential with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// A session up this long resets the attempt count.
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            reset_after: Duration::from_secs(60),
        }
    }
}

impl BackoffPolicy {
    /// The ceiling for the `attempt`-th consecutive failure (1-based): base doubled, capped.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.base
            .checked_mul(1 << doublings)
            .map_or(self.cap, |d| d.min(self.cap))
    }
}

#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Where the radio is.
    pub endpoint: Endpoint,
    pub connect_timeout: Duration,
    pub heartbeat: Duration,
    pub config_timeout: Duration,
    pub backoff: BackoffPolicy,
    /// How long to stay away once another client is seen to hold the radio.
    pub takeover_backoff: Duration,
}

impl LinkConfig {
    /// The radio at `endpoint` (a `host:port` string is a TCP endpoint).
    pub fn new(endpoint: impl Into<Endpoint>) -> Self {
        Self {
            endpoint: endpoint.into(),
            connect_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(60),
            config_timeout: Duration::from_secs(30),
            backoff: BackoffPolicy::default(),
            takeover_backoff: Duration::from_secs(300),
        }
    }
}

/// Where the link is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Connecting {
        attempt: u32,
    },
    Configuring,
    Up,
    Stalled,
    Closed(CloseCause),
    Backoff {
        attempt: u32,
        ceiling: Duration,
        delay: Duration,
    },
    /// The radio keeps closing us right after we connect: another client holds it.
    Contended {
        delay: Duration,
    },
    Stopped,
}

impl LinkState {
    pub fn is_up(&self) -> bool {
        matches!(self, Self::Up)
    }

    /// Every [`Self::label`], in the order of the states' life.
    pub const LABELS: [&'static str; 8] = [
        "connecting",
        "configuring",
        "up",
        "stalled",
        "closed",
        "backoff",
        "contended",
        "stopped",
    ];

    /// One word for status bars and timelines.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Connecting { .. } => "connecting",
            Self::Configuring => "configuring",
            Self::Up => "up",
            Self::Stalled => "stalled",
            Self::Closed(_) => "closed",
            Self::Backoff { .. } => "backoff",
            Self::Contended { .. } => "contended",
            Self::Stopped => "stopped",
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connecting { attempt } => write!(f, "connecting (attempt {attempt})"),
            Self::Closed(cause) => write!(f, "closed: {cause}"),
            Self::Backoff { delay, ceiling, .. } => write!(
                f,
                "backoff {} (ceiling {})",
                humantime::format_duration(round_ms(*delay)),
                humantime::format_duration(*ceiling)
            ),
            Self::Contended { delay } => write!(
                f,
                "another client is using the radio; retrying in {}",
                humantime::format_duration(*delay)
            ),
            other => f.write_str(other.label()),
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One state change, stamped with the wall clock for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEvent {
    pub at: SystemTime,
    pub state: LinkState,
}

/// What the link looks like now; published through a `watch`.
#[derive(Debug, Clone)]
pub struct LinkStatus {
    pub host: String,
    pub state: LinkState,
    pub since: SystemTime,
    /// The latest state changes, oldest first, at most `TIMELINE_LEN`.
    pub timeline: VecDeque<LinkEvent>,
    /// State changes since start; the last timeline entry is change number `changes`.
    pub changes: u64,
    /// Sessions that reached `Up`.
    pub sessions: u64,
    pub last_cause: Option<CloseCause>,
    /// The radio as of the last handshake.
    pub radio: Option<RadioInfo>,
}

/// What the handshake told us about the radio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RadioInfo {
    pub my_node_num: u32,
    pub firmware: String,
    pub long_name: String,
    pub nodes_in_db: usize,
}

/// Frame counts since start, readable at any time without waiting on the link task.
#[derive(Debug, Default)]
pub struct LinkCounters {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub heartbeats_out: AtomicU64,
    pub garbage_bytes: AtomicU64,
    pub undecodable: AtomicU64,
    /// Connections (or attempts) that ended, by [`CloseCause::index`]; each is followed by a
    /// reconnect unless it is the shutdown.
    pub closes: [AtomicU64; CloseCause::IDS.len()],
    /// From a heartbeat to the radio's QueueStatus answer (firmware >= 2.7.6).
    pub heartbeat_rtt: AtomicHistogram,
    /// From `want_config_id` to its `config_complete_id`.
    pub config_download: AtomicHistogram,
}

/// One connection that completed its handshake.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub my_node_num: u32,
    pub firmware: String,
    /// The handshake's frames other than other nodes' `node_info`s, in arrival order, for
    /// replay to downstream clients (as the radio sent them).
    pub config: Vec<RadioFrame>,
    /// Every `node_info` of the handshake, own node included: the radio's NodeDB.
    pub nodes: Vec<NodeInfo>,
}

impl Session {
    /// Keeps what a handshake frame tells: the radio's number, its firmware, its configuration
    /// and its node list.
    fn collect(&mut self, frame: &RadioFrame) {
        use from_radio::PayloadVariant as V;
        match &frame.payload_variant {
            Some(V::MyInfo(info)) => {
                self.my_node_num = info.my_node_num;
                self.config.push(frame.clone());
            }
            Some(V::Metadata(meta)) => {
                self.firmware.clone_from(&meta.firmware_version);
                self.config.push(frame.clone());
            }
            Some(V::NodeInfo(node)) => {
                if node.num == self.my_node_num {
                    self.config.push(frame.clone());
                }
                self.nodes.push(node.clone());
            }
            Some(v) if is_config_part(v, self.my_node_num) => self.config.push(frame.clone()),
            _ => {}
        }
    }

    /// The radio as the handshake showed it; an error when it named no node to be.
    fn radio_info(&self) -> Result<RadioInfo, CloseCause> {
        if self.my_node_num == 0 {
            return Err(CloseCause::Protocol(
                "config download carried no my_info".into(),
            ));
        }
        // Every key the store holds would be judged against a node that cannot exist.
        if !radio::is_node_num(self.my_node_num) {
            return Err(CloseCause::Protocol(format!(
                "the radio calls itself {}, the broadcast address, not a node",
                radio::node_id(self.my_node_num)
            )));
        }
        let long_name = self
            .nodes
            .iter()
            .find(|n| n.num == self.my_node_num)
            .and_then(|n| n.user.as_ref())
            .map(|u| u.long_name.clone())
            .unwrap_or_default();
        Ok(RadioInfo {
            my_node_num: self.my_node_num,
            firmware: self.firmware.clone(),
            long_name,
            nodes_in_db: self.nodes.len(),
        })
    }
}

/// What the link tells its consumers, in order.
#[derive(Debug, Clone)]
pub enum LinkNotice {
    /// The handshake completed.
    Up(Arc<Session>),
    /// A `want_config_id` with this nonce went to the radio within the session that is up:
    /// the frames of its download follow, then its `config_complete_id`. Downloads never
    /// overlap (see `DownloadGate`), so every `node_info` up to that complete id belongs to
    /// this download or is a live update.
    Download(u32),
    /// A frame, decoded and as the radio sent it (including those of the handshake).
    Frame(Arc<RadioFrame>),
    /// The session ended.
    Down(CloseCause),
    /// An add_contact was written to the radio (keysync's push, or a client's through the
    /// proxy). The firmware stores it and tells no client (AdminModule.cpp answers nothing but
    /// the QueueStatus), so whoever mirrors the node list applies it from here.
    Contact(Arc<SharedContact>),
}

#[derive(Debug)]
struct Outbound {
    session: u64,
    msg: ToRadio,
}

#[derive(Debug, Clone, Copy)]
enum Control {
    Reconnect,
    Shutdown,
}

/// The link is not up (or went down since the session was taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the radio link is not up")]
pub struct LinkDown;

/// Writes frames to the radio within one session.
#[derive(Debug, Clone)]
pub struct LinkSender {
    tx: mpsc::Sender<Outbound>,
    current: Arc<AtomicU64>,
}

impl LinkSender {
    /// Queues `msg` for session `session`; fails at once if that session is no longer up.
    pub async fn send(&self, session: u64, msg: ToRadio) -> Result<(), LinkDown> {
        if self.current.load(Ordering::Acquire) != session {
            return Err(LinkDown);
        }
        self.tx
            .send(Outbound { session, msg })
            .await
            .map_err(|_| LinkDown)
    }

    /// The session that is up now, if any.
    pub fn session(&self) -> Option<u64> {
        match self.current.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        }
    }
}

/// The running supervisor.
#[derive(Debug)]
pub struct Link {
    status: watch::Receiver<LinkStatus>,
    notices: broadcast::Sender<LinkNotice>,
    sender: LinkSender,
    control: mpsc::Sender<Control>,
    counters: Arc<LinkCounters>,
    task: JoinHandle<()>,
}

impl Link {
    /// Starts supervising a connection to `config.host`.
    pub fn spawn(config: LinkConfig) -> Self {
        let (link, []) = Self::spawn_subscribed::<0>(config);
        link
    }

    /// Starts supervising, with `N` subscriptions taken before the supervisor runs, so that
    /// none of them can miss the first handshake (on a multi-threaded runtime the link can be
    /// up before a later `subscribe` call).
    pub fn spawn_subscribed<const N: usize>(
        config: LinkConfig,
    ) -> (Self, [broadcast::Receiver<LinkNotice>; N]) {
        let (status_tx, status) = watch::channel(LinkStatus {
            host: config.endpoint.to_string(),
            state: LinkState::Connecting { attempt: 1 },
            since: SystemTime::now(),
            timeline: VecDeque::new(),
            changes: 0,
            sessions: 0,
            last_cause: None,
            radio: None,
        });
        let (notices, _) = broadcast::channel(4096);
        let receivers = std::array::from_fn(|_| notices.subscribe());
        let (out_tx, out_rx) = mpsc::channel(64);
        let (control, control_rx) = mpsc::channel(8);
        let current = Arc::new(AtomicU64::new(0));
        let counters = Arc::new(LinkCounters::default());
        let supervisor = Supervisor {
            config,
            status: status_tx,
            notices: notices.clone(),
            outbound: out_rx,
            control: control_rx,
            current: current.clone(),
            counters: counters.clone(),
            next_session: 0,
        };
        let task = tokio::spawn(supervisor.run());
        let link = Self {
            status,
            notices,
            sender: LinkSender {
                tx: out_tx,
                current,
            },
            control,
            counters,
            task,
        };
        (link, receivers)
    }

    pub fn status(&self) -> watch::Receiver<LinkStatus> {
        self.status.clone()
    }

    /// Frames and session changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LinkNotice> {
        self.notices.subscribe()
    }

    pub fn sender(&self) -> LinkSender {
        self.sender.clone()
    }

    pub fn counters(&self) -> Arc<LinkCounters> {
        self.counters.clone()
    }

    /// Drops the current connection (if any) and connects again without waiting out a backoff.
    pub async fn reconnect(&self) {
        let _ = self.control.send(Control::Reconnect).await;
    }

    /// Says goodbye to the radio, closes the socket and waits for the supervisor to end.
    pub async fn shutdown(&mut self) {
        let _ = self.control.send(Control::Shutdown).await;
        let _ = (&mut self.task).await;
    }
}

/// How one connection attempt ended.
struct SessionEnd {
    cause: CloseCause,
    /// Time from TCP connect to close; `None` if the connect failed.
    connected_for: Option<Duration>,
    /// Time spent `Up`.
    up_for: Duration,
}

struct Supervisor {
    config: LinkConfig,
    status: watch::Sender<LinkStatus>,
    notices: broadcast::Sender<LinkNotice>,
    outbound: mpsc::Receiver<Outbound>,
    control: mpsc::Receiver<Control>,
    current: Arc<AtomicU64>,
    counters: Arc<LinkCounters>,
    next_session: u64,
}

/// The takeover rule: consecutive closes by the radio shortly after connecting.
#[derive(Debug, Default)]
pub struct TakeoverWatch {
    early_closes: u32,
}

impl TakeoverWatch {
    /// Records how a connection ended; true when another client evidently holds the radio.
    pub fn record(&mut self, cause: &CloseCause, connected_for: Option<Duration>) -> bool {
        let early = matches!(cause, CloseCause::ClosedByRadio)
            && connected_for.is_some_and(|d| d < EARLY_CLOSE);
        if !early {
            // A refused connect (radio rebooting) or a missing device says nothing about other
            // clients either way.
            if !matches!(
                cause,
                CloseCause::Refused | CloseCause::ConnectTimeout | CloseCause::DeviceGone
            ) {
                self.early_closes = 0;
            }
            return false;
        }
        self.early_closes += 1;
        if self.early_closes >= EARLY_CLOSES_FOR_TAKEOVER {
            self.early_closes = 0;
            return true;
        }
        false
    }
}

enum Wait {
    Elapsed,
    Reconnect,
    Shutdown,
}

impl Supervisor {
    async fn run(mut self) {
        let mut attempt: u32 = 0;
        let mut takeover = TakeoverWatch::default();
        loop {
            self.set_state(LinkState::Connecting {
                attempt: attempt + 1,
            });
            let end = match self.connect().await {
                Ok(stream) => self.session(stream).await,
                Err(cause) => SessionEnd {
                    cause,
                    connected_for: None,
                    up_for: Duration::ZERO,
                },
            };
            self.current.store(0, Ordering::Release);
            if end.cause == CloseCause::Shutdown {
                self.set_state(LinkState::Stopped);
                return;
            }
            if end.connected_for.is_some() {
                let _ = self.notices.send(LinkNotice::Down(end.cause.clone()));
            }
            self.counters.closes[end.cause.index()].fetch_add(1, Ordering::Relaxed);
            self.status
                .send_modify(|s| s.last_cause = Some(end.cause.clone()));
            self.set_state(LinkState::Closed(end.cause.clone()));
            if end.cause == CloseCause::Requested {
                attempt = 0;
                continue;
            }
            if end.up_for >= self.config.backoff.reset_after {
                attempt = 0;
            }
            let delay = if takeover.record(&end.cause, end.connected_for) {
                let delay = self.config.takeover_backoff;
                log::warn!(target: "keysync::link",
                    "the radio closed us {EARLY_CLOSES_FOR_TAKEOVER} times right after connecting: another client is using the radio; waiting {}",
                    humantime::format_duration(delay));
                self.set_state(LinkState::Contended { delay });
                delay
            } else {
                attempt = attempt.saturating_add(1);
                let ceiling = self.config.backoff.ceiling(attempt);
                let delay = jittered(ceiling);
                self.set_state(LinkState::Backoff {
                    attempt,
                    ceiling,
                    delay,
                });
                delay
            };
            match self.wait(delay).await {
                Wait::Elapsed => {}
                Wait::Reconnect => attempt = 0,
                Wait::Shutdown => {
                    self.set_state(LinkState::Stopped);
                    return;
                }
            }
        }
    }

    /// Waits out a backoff, discarding writes meant for sessions that are gone.
    async fn wait(&mut self, delay: Duration) -> Wait {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                () = sleep_until(until) => return Wait::Elapsed,
                c = self.control.recv() => match c {
                    Some(Control::Reconnect) => return Wait::Reconnect,
                    Some(Control::Shutdown) | None => return Wait::Shutdown,
                },
                Some(stale) = self.outbound.recv() => drop_stale(&stale),
            }
        }
    }

    async fn connect(&mut self) -> Result<RadioStream, CloseCause> {
        let connect = timeout(
            self.config.connect_timeout,
            transport::open(&self.config.endpoint),
        );
        tokio::select! {
            r = connect => r.unwrap_or(Err(CloseCause::ConnectTimeout)),
            c = self.control.recv() => Err(match c {
                Some(Control::Reconnect) => CloseCause::Requested,
                Some(Control::Shutdown) | None => CloseCause::Shutdown,
            }),
        }
    }

    async fn session(&mut self, stream: RadioStream) -> SessionEnd {
        let connected = Instant::now();
        self.next_session += 1;
        let id = self.next_session;
        let mut framed = Framed::new(stream, RelayCodec::default());
        let mut seen = (0, 0);
        let (cause, up_since) = match self.handshake(&mut framed, id, &mut seen).await {
            Err(cause) => (cause, None),
            Ok(session) => {
                let up_since = Instant::now();
                (
                    self.serve(&mut framed, session, &mut seen).await,
                    Some(up_since),
                )
            }
        };
        self.current.store(0, Ordering::Release);
        if matches!(cause, CloseCause::Shutdown) {
            let _ = framed.send(radio::disconnect()).await;
        }
        let _ = framed.close().await;
        framed.get_mut().release();
        SessionEnd {
            cause,
            connected_for: Some(connected.elapsed()),
            up_for: up_since.map_or(Duration::ZERO, |t| t.elapsed()),
        }
    }

    /// Sends `want_config_id` and collects the download until its `config_complete_id`.
    async fn handshake(
        &mut self,
        framed: &mut Framed<RadioStream, RelayCodec>,
        id: u64,
        seen: &mut (u64, u64),
    ) -> Result<Arc<Session>, CloseCause> {
        use from_radio::PayloadVariant as V;
        self.set_state(LinkState::Configuring);
        if let Err(e) = framed.get_mut().wake().await {
            return Err(framed.get_ref().cause_of(&e));
        }
        let nonce = radio::config_nonce(|| rand::rng().random());
        self.write(framed, radio::want_config(nonce)).await?;
        let asked = Instant::now();
        let deadline = asked + self.config.config_timeout;
        let mut session = Session {
            id,
            my_node_num: 0,
            firmware: String::new(),
            config: Vec::new(),
            nodes: Vec::new(),
        };
        loop {
            let frame = tokio::select! {
                () = sleep_until(deadline) => return Err(CloseCause::ConfigTimeout),
                f = framed.next() => self.received(f, framed, seen)?,
                c = self.control.recv() => return Err(control_cause(c)),
                Some(stale) = self.outbound.recv() => { drop_stale(&stale); continue; }
            };
            if matches!(&frame.payload_variant, Some(V::ConfigCompleteId(n)) if *n == nonce) {
                break;
            }
            session.collect(&frame);
            let _ = self.notices.send(LinkNotice::Frame(Arc::new(frame)));
        }
        self.counters.config_download.observe(asked.elapsed());
        let info = session.radio_info()?;
        log::info!(target: "keysync::link",
            "connected to {} ({}, firmware {}, {} nodes in its NodeDB)",
            radio::node_id(info.my_node_num),
            if info.long_name.is_empty() { "unnamed".into() } else { radio::printable(&info.long_name) },
            if info.firmware.is_empty() { "unknown".into() } else { radio::printable(&info.firmware) },
            info.nodes_in_db);
        let session = Arc::new(session);
        self.current.store(id, Ordering::Release);
        self.status.send_modify(|s| {
            s.sessions += 1;
            s.radio = Some(info);
        });
        self.set_state(LinkState::Up);
        let _ = self.notices.send(LinkNotice::Up(session.clone()));
        Ok(session)
    }

    /// The up phase: forward frames, heartbeat, watch for silence, write what consumers send.
    async fn serve(
        &mut self,
        framed: &mut Framed<RadioStream, RelayCodec>,
        session: Arc<Session>,
        seen: &mut (u64, u64),
    ) -> CloseCause {
        let every = self.config.heartbeat;
        let watchdog = radio::answers_heartbeats(&session.firmware);
        if !watchdog {
            log::info!(target: "keysync::link",
                "firmware {:?} does not answer heartbeats: silence is not taken as a dead link",
                session.firmware);
        }
        let mut heartbeat = tokio::time::interval_at(Instant::now() + every, every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rx = Instant::now();
        let mut downloads = DownloadGate::default();
        // The last heartbeat not answered yet; a newer one replaces it, so an answer is never
        // matched to a heartbeat older than one interval.
        let mut heartbeat_sent: Option<Instant> = None;
        loop {
            let stall_at = last_rx + every * 3;
            let download_due = downloads.deadline(self.config.config_timeout);
            tokio::select! {
                f = framed.next() => {
                    let frame = match self.received(f, framed, seen) {
                        Ok(frame) => frame,
                        Err(cause) => return cause,
                    };
                    last_rx = Instant::now();
                    let on = self.on_frame(frame, framed, &mut downloads, &mut heartbeat_sent);
                    if let Err(cause) = on.await {
                        return cause;
                    }
                }
                () = sleep_until(download_due.unwrap_or(stall_at)), if download_due.is_some() => {
                    log::warn!(target: "keysync::link",
                        "the radio did not complete a config download within {}; asking for the next one",
                        humantime::format_duration(self.config.config_timeout));
                    let next = downloads.expired(Instant::now());
                    if let Err(cause) = self.ask_download(framed, next).await {
                        return cause;
                    }
                }
                _ = heartbeat.tick() => {
                    let nonce = radio::heartbeat_nonce(|| rand::rng().random());
                    if let Err(cause) = self.write(framed, radio::heartbeat(nonce)).await {
                        return cause;
                    }
                    heartbeat_sent = Some(Instant::now());
                    self.counters.heartbeats_out.fetch_add(1, Ordering::Relaxed);
                }
                () = sleep_until(stall_at), if watchdog => {
                    log::warn!(target: "keysync::link",
                        "no frame from the radio for {}: the link is stalled",
                        humantime::format_duration(every * 3));
                    self.set_state(LinkState::Stalled);
                    return CloseCause::Stalled;
                }
                Some(out) = self.outbound.recv() => {
                    if let Err(cause) = self.on_outbound(out, framed, &session, &mut downloads).await {
                        return cause;
                    }
                }
                c = self.control.recv() => return control_cause(c),
            }
        }
    }

    /// A frame from the radio: a reboot ends the session, a heartbeat's answer is timed, the
    /// consumers are told, and a completed download lets the next one go.
    async fn on_frame(
        &mut self,
        frame: RadioFrame,
        framed: &mut Framed<RadioStream, RelayCodec>,
        downloads: &mut DownloadGate,
        heartbeat_sent: &mut Option<Instant>,
    ) -> Result<(), CloseCause> {
        let complete = match &frame.payload_variant {
            Some(from_radio::PayloadVariant::ConfigCompleteId(n)) => Some(*n),
            _ => None,
        };
        if matches!(
            frame.payload_variant,
            Some(from_radio::PayloadVariant::Rebooted(true))
        ) {
            // On serial the port outlives a reboot: the radio forgot this session and sends
            // nothing until asked for a download again.
            log::warn!(target: "keysync::link", "the radio says it rebooted");
            return Err(CloseCause::ClosedByRadio);
        }
        if radio::answers_heartbeat(&frame)
            && let Some(sent) = heartbeat_sent.take()
        {
            self.counters.heartbeat_rtt.observe(sent.elapsed());
        }
        let _ = self.notices.send(LinkNotice::Frame(Arc::new(frame)));
        let next = complete.and_then(|n| downloads.completed(n, Instant::now()));
        self.ask_download(framed, next).await
    }

    /// A frame a consumer sends: a stale session's is dropped, a download request waits at
    /// the gate, a contact written is announced.
    async fn on_outbound(
        &mut self,
        out: Outbound,
        framed: &mut Framed<RadioStream, RelayCodec>,
        session: &Session,
        downloads: &mut DownloadGate,
    ) -> Result<(), CloseCause> {
        if out.session != session.id {
            drop_stale(&out);
            return Ok(());
        }
        if let Some(nonce) = want_config_of(&out.msg) {
            let now = downloads.ask(nonce, Instant::now());
            return self.ask_download(framed, now).await;
        }
        let contact = radio::contact_of(&out.msg, session.my_node_num);
        self.write(framed, out.msg).await?;
        if let Some(contact) = contact {
            let _ = self.notices.send(LinkNotice::Contact(Arc::new(contact)));
        }
        Ok(())
    }

    /// Sends the `want_config_id` the gate let through, if any, and tells the consumers.
    async fn ask_download(
        &self,
        framed: &mut Framed<RadioStream, RelayCodec>,
        nonce: Option<u32>,
    ) -> Result<(), CloseCause> {
        let Some(nonce) = nonce else {
            return Ok(());
        };
        self.write(framed, radio::want_config(nonce)).await?;
        let _ = self.notices.send(LinkNotice::Download(nonce));
        Ok(())
    }

    /// Turns the next item of the frame stream into a frame or the reason the link ended, and
    /// folds the codec's discard counts into the counters.
    fn received(
        &self,
        item: Option<Result<RadioFrame, io::Error>>,
        framed: &Framed<RadioStream, RelayCodec>,
        seen: &mut (u64, u64),
    ) -> Result<RadioFrame, CloseCause> {
        let stats = framed.codec().stats();
        let (garbage, undecodable) = (stats.garbage_bytes, stats.undecodable);
        if garbage > seen.0 {
            log::debug!(target: "keysync::link", "skipped {} bytes of noise from the radio", garbage - seen.0);
        }
        self.counters
            .garbage_bytes
            .fetch_add(garbage - seen.0, Ordering::Relaxed);
        self.counters
            .undecodable
            .fetch_add(undecodable - seen.1, Ordering::Relaxed);
        *seen = (garbage, undecodable);
        match item {
            None => Err(framed.get_ref().eof_cause()),
            Some(Err(e)) => Err(framed.get_ref().cause_of(&e)),
            Some(Ok(frame)) => {
                self.counters.frames_in.fetch_add(1, Ordering::Relaxed);
                if let Some(from_radio::PayloadVariant::LogRecord(record)) = &frame.payload_variant
                {
                    log_record(record);
                }
                Ok(frame)
            }
        }
    }

    async fn write(
        &self,
        framed: &mut Framed<RadioStream, RelayCodec>,
        msg: ToRadio,
    ) -> Result<(), CloseCause> {
        framed
            .send(msg)
            .await
            .map_err(|e| cause_of_codec(&e, framed.get_ref()))?;
        self.counters.frames_out.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn set_state(&self, state: LinkState) {
        match &state {
            LinkState::Closed(CloseCause::Shutdown) | LinkState::Stopped => {
                log::info!(target: "keysync::link", "link {state}");
            }
            LinkState::Closed(_) => log::warn!(target: "keysync::link", "link {state}"),
            _ => log::info!(target: "keysync::link", "link {state}"),
        }
        let now = SystemTime::now();
        self.status.send_modify(|s| {
            s.state = state.clone();
            s.since = now;
            if s.timeline.len() == TIMELINE_LEN {
                s.timeline.pop_front();
            }
            s.timeline.push_back(LinkEvent { at: now, state });
            s.changes += 1;
        });
    }
}

/// Whether a download frame is part of the radio's configuration as a client keeps it for a
/// replay: everything but other nodes' `node_info`s, the complete id and live traffic.
pub fn is_config_part(v: &from_radio::PayloadVariant, my_node_num: u32) -> bool {
    use from_radio::PayloadVariant as V;
    match v {
        V::NodeInfo(node) => node.num == my_node_num,
        V::MyInfo(_)
        | V::Metadata(_)
        | V::Config(_)
        | V::ModuleConfig(_)
        | V::Channel(_)
        | V::DeviceuiConfig(_)
        | V::FileInfo(_) => true,
        _ => false,
    }
}

fn want_config_of(msg: &ToRadio) -> Option<u32> {
    match msg.payload_variant {
        Some(to_radio::PayloadVariant::WantConfigId(nonce)) => Some(nonce),
        _ => None,
    }
}

/// Config downloads one at a time. The firmware restarts its download on every
/// `want_config_id` (PhoneAPI.cpp handleStartConfig), so a second request while one runs
/// would leave the first requester (the sync engine's nodes-only refresh, the proxy's
/// config-only refresh) waiting for a complete id that never comes. A request that finds a
/// download under way waits for its complete id, or for the config timeout.
#[derive(Debug, Default)]
pub struct DownloadGate {
    /// The download under way: its nonce and when it was asked for.
    running: Option<(u32, Instant)>,
    /// Requests waiting their turn, oldest first, at most [`DownloadGate::WAITING`].
    waiting: VecDeque<u32>,
}

impl DownloadGate {
    /// Requests that may wait; past this the oldest is dropped (its requester times out).
    pub const WAITING: usize = 16;

    /// A request for `nonce` at `now`: the nonce to send now, or `None` while it waits.
    pub fn ask(&mut self, nonce: u32, now: Instant) -> Option<u32> {
        if self.running.is_none() {
            self.running = Some((nonce, now));
            return Some(nonce);
        }
        if self.waiting.len() == Self::WAITING
            && let Some(dropped) = self.waiting.pop_front()
        {
            crate::log_limited!(warn, "downloads-waiting", target: "keysync::link",
                "{} config downloads waiting: dropped the request {dropped}", Self::WAITING);
        }
        self.waiting.push_back(nonce);
        None
    }

    /// `config_complete_id = nonce` arrived at `now`: the next request to send, if one waits.
    pub fn completed(&mut self, nonce: u32, now: Instant) -> Option<u32> {
        match self.running {
            Some((running, _)) if running == nonce => self.expired(now),
            _ => None,
        }
    }

    /// The running download is over without its complete id: the next request, if any.
    pub fn expired(&mut self, now: Instant) -> Option<u32> {
        self.running = None;
        let next = self.waiting.pop_front()?;
        self.running = Some((next, now));
        Some(next)
    }

    /// When the running download is given up, `timeout` after it was asked for.
    pub fn deadline(&self, timeout: Duration) -> Option<Instant> {
        self.running.map(|(_, at)| at + timeout)
    }
}

/// The radio's own log line (a serial radio sends its log as `LogRecord` frames once a client
/// talks to it, with `security.debug_log_api_enabled`), into keysync's log under its own target.
fn log_record(record: &meshtastic::protobufs::LogRecord) {
    use meshtastic::protobufs::log_record::Level;
    let level = match Level::try_from(record.level) {
        Ok(Level::Critical | Level::Error) => log::Level::Error,
        Ok(Level::Warning) => log::Level::Warn,
        Ok(Level::Debug) => log::Level::Debug,
        Ok(Level::Trace) => log::Level::Trace,
        Ok(Level::Info | Level::Unset) | Err(_) => log::Level::Info,
    };
    let message: String = radio::printable(&record.message)
        .chars()
        .take(240)
        .collect();
    let source = radio::printable(&record.source);
    if source.is_empty() {
        log::log!(target: "keysync::radio", level, "{message}");
    } else {
        log::log!(target: "keysync::radio", level, "[{source}] {message}");
    }
}

fn control_cause(c: Option<Control>) -> CloseCause {
    match c {
        Some(Control::Reconnect) => CloseCause::Requested,
        Some(Control::Shutdown) | None => CloseCause::Shutdown,
    }
}

fn drop_stale(out: &Outbound) {
    log::debug!(target: "keysync::link",
        "dropped a {} meant for session {}, which is gone",
        radio::to_radio_kind(&out.msg), out.session);
}

/// A delay drawn uniformly from `[0, ceiling]` ("full jitter"), so that many gateways that
/// lost the same radio do not come back in step.
pub(crate) fn jittered(ceiling: Duration) -> Duration {
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

impl LinkStatus {
    /// The state changes after change number `after`, with their numbers, oldest first (as
    /// far as the bounded timeline still holds them).
    pub fn changes_since(&self, after: u64) -> impl Iterator<Item = (u64, &LinkEvent)> {
        let first = self.changes - self.timeline.len() as u64 + 1;
        self.timeline
            .iter()
            .enumerate()
            .map(move |(i, e)| (first + i as u64, e))
            .filter(move |(n, _)| *n > after)
    }
}

/// Why a connection ended, from the codec's error on `stream`.
fn cause_of_codec(err: &CodecError, stream: &RadioStream) -> CloseCause {
    match err {
        CodecError::Io(e) => stream.cause_of(e),
        CodecError::TooLarge(_) => CloseCause::Protocol(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_ceiling_doubles_from_one_second_to_a_minute() {
        let p = BackoffPolicy::default();
        let ceilings: Vec<u64> = (1..=9).map(|a| p.ceiling(a).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(p.ceiling(1000), p.cap);
    }

    #[test]
    fn jitter_stays_within_the_ceiling() {
        let ceiling = Duration::from_millis(500);
        assert!((0..200).all(|_| jittered(ceiling) <= ceiling));
    }

    #[test]
    fn a_download_asked_for_while_another_runs_waits_for_its_complete_id() {
        let mut gate = DownloadGate::default();
        let t0 = Instant::now();
        assert_eq!(gate.ask(69_421, t0), Some(69_421));
        assert_eq!(gate.ask(69_420, t0), None, "waits: the radio would restart");
        assert_eq!(gate.ask(69_420, t0), None);
        assert_eq!(gate.completed(7, t0), None, "another nonce ends nothing");
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(gate.completed(69_421, t1), Some(69_420));
        assert_eq!(
            gate.deadline(Duration::from_secs(30)),
            Some(t1 + Duration::from_secs(30))
        );
        assert_eq!(
            gate.expired(t1),
            Some(69_420),
            "a timed-out download lets the next go"
        );
        assert_eq!(gate.completed(69_420, t1), None);
        assert_eq!(gate.deadline(Duration::from_secs(30)), None, "nothing runs");
        assert_eq!(gate.ask(5, t1), Some(5));
    }

    #[test]
    fn waiting_downloads_are_bounded() {
        let mut gate = DownloadGate::default();
        let t0 = Instant::now();
        gate.ask(1, t0);
        for n in 0..100 {
            gate.ask(100 + n, t0);
        }
        assert_eq!(gate.waiting.len(), DownloadGate::WAITING);
        assert_eq!(gate.completed(1, t0), Some(184), "the oldest were dropped");
    }

    #[test]
    fn three_early_closes_by_the_radio_mean_another_client() {
        let mut t = TakeoverWatch::default();
        let early = Some(Duration::from_secs(2));
        assert!(!t.record(&CloseCause::ClosedByRadio, early));
        assert!(!t.record(&CloseCause::Refused, None));
        assert!(!t.record(&CloseCause::ClosedByRadio, early));
        assert!(t.record(&CloseCause::ClosedByRadio, early));
        // The streak starts over after the rule fired.
        assert!(!t.record(&CloseCause::ClosedByRadio, early));
    }

    #[test]
    fn a_long_session_or_another_cause_breaks_the_streak() {
        let mut t = TakeoverWatch::default();
        let early = Some(Duration::from_secs(2));
        t.record(&CloseCause::ClosedByRadio, early);
        t.record(&CloseCause::ClosedByRadio, early);
        assert!(!t.record(&CloseCause::ClosedByRadio, Some(Duration::from_secs(600))));
        t.record(&CloseCause::ClosedByRadio, early);
        t.record(&CloseCause::Stalled, early);
        assert!(!t.record(&CloseCause::ClosedByRadio, early));
    }
}
