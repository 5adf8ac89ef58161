//! Keys from the wider network: the Meshtastic MQTT uplink that gateways publish, and a fleet
//! of keysyncs sharing their keys on the same broker.
//!
//! Runs on its own tasks: one drives the MQTT connection (rumqttc's event loop, with backoff),
//! one reads what arrives and hands learned keys to the engine over a bounded channel. The
//! radio link never waits on the broker: the engine only reads this side's status and the
//! keys it sends, and the MQTT side reads the trusted keys the engine publishes and the link's
//! status (the radio's number). A slow store slows the
//! reading of the broker (backpressure down to TCP), never the radio.

pub mod broker;
pub mod crypto;
pub mod fleet;
pub mod uplink;

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::link::{BackoffPolicy, jittered};
use super::radio::{NodeSeen, Source, printable, truncate_utf8};
use crate::link::LinkStatus;
use crate::model::TrustedKeys;
use broker::BrokerUrl;
use crypto::ChannelKey;
use fleet::{FleetBook, FleetRecord};
use uplink::{Keyring, Reject};

/// The topic root of the Meshtastic uplink by default: every region under `msh/`.
pub const DEFAULT_ROOT: &str = "msh/+";
/// The largest MQTT packet rumqttc accepts from the broker; a larger one fails the connection,
/// and a retained one would fail every connection after it. So the bound sits above what
/// brokers usually let through (1 MiB on most; mosquitto has none): such a message is read and
/// dropped unread ([`uplink::PAYLOAD_MAX`]), the connection stays. rumqttc holds at most ten
/// packets at once, so this bounds memory to about 10 MiB.
const PACKET_MAX: usize = 1024 * 1024;
/// The largest packet keysync sends: a fleet record with its topic is far smaller.
const PACKET_OUT_MAX: usize = 16 * 1024;
/// Messages between the connection task and the reader.
const DRIVEN_QUEUE: usize = 256;
/// Requests (subscribes, publishes) waiting for the connection task.
const REQUEST_QUEUE: usize = 64;
/// How long after subscribing to the fleet keysync waits for the retained records before it
/// publishes: what the fleet already holds is not published again.
const FLEET_SETTLE: Duration = Duration::from_secs(1);

/// What the MQTT side needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    pub broker: BrokerUrl,
    /// Topic root of the uplink, e.g. `msh/+` or `msh/EU_868`.
    pub root: String,
    /// Channels given on the command line, besides the default one and the radio's.
    pub channel_keys: Vec<ChannelKey>,
    /// Share keys with the keysyncs of this fleet.
    pub fleet: Option<String>,
    pub keep_alive: Duration,
    pub backoff: BackoffPolicy,
    /// Nodes known only from the broker (never heard here) the store may hold
    /// (`--mqtt-max-nodes`); a new one beyond is not stored.
    pub max_unheard: usize,
    /// PEM certificates of the authority that signed the broker's (`--mqtt-ca`): trusted
    /// instead of the system's roots.
    pub ca: Option<Vec<u8>>,
}

impl MqttConfig {
    pub const DEFAULT_MAX_UNHEARD: usize = 20_000;

    pub fn new(broker: BrokerUrl) -> Self {
        Self {
            broker,
            root: DEFAULT_ROOT.to_owned(),
            channel_keys: Vec::new(),
            fleet: None,
            keep_alive: Duration::from_secs(30),
            backoff: BackoffPolicy::default(),
            max_unheard: Self::DEFAULT_MAX_UNHEARD,
            ca: None,
        }
    }
}

/// Where the broker connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttState {
    Connecting,
    Connected,
    /// The connection failed `attempt` times in a row; the next try is at `retry_at`.
    Backoff {
        attempt: u32,
        retry_at: SystemTime,
    },
}

impl std::fmt::Display for MqttState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connecting => f.write_str("connecting"),
            Self::Connected => f.write_str("connected"),
            Self::Backoff { attempt, .. } => write!(f, "backoff (attempt {attempt})"),
        }
    }
}

/// What came over the broker since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MqttCounts {
    pub messages: u64,
    /// Connections the broker accepted since start: more than a few means a loop.
    pub connects: u64,
    /// Keys read from the uplink and handed to the store.
    pub uplink_keys: u64,
    /// Keys read from other keysyncs of the fleet.
    pub fleet_in: u64,
    /// Records this keysync published to the fleet that the broker acknowledged.
    pub fleet_out: u64,
    /// Messages that taught nothing (not a NodeInfo, no key, garbage, wrong key, …).
    pub ignored: u64,
    pub oversized: u64,
    pub undecryptable: u64,
    /// Nodes new to the store that it had no room for (`--mqtt-max-nodes`): counted by the
    /// engine, which stores what the broker teaches.
    pub no_room: u64,
}

/// The MQTT side as the views show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttStatus {
    /// The broker URL without its password.
    pub broker: String,
    pub state: MqttState,
    pub since: SystemTime,
    pub last_error: Option<String>,
    pub fleet: Option<String>,
    /// Channel keys keysync reads the uplink with.
    pub channels: usize,
    pub counts: MqttCounts,
}

/// The running MQTT side.
#[derive(Debug)]
pub struct MqttHandle {
    pub status: watch::Receiver<MqttStatus>,
    task: JoinHandle<()>,
}

impl MqttHandle {
    /// Stops both tasks; the broker sees the connection close.
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// What the engine hands the MQTT side.
#[derive(Debug)]
pub struct MqttLinks {
    /// Where learned keys go (the engine learns them under the trust rules).
    pub learned: mpsc::Sender<NodeSeen>,
    /// The radio's channels, from its last configuration download.
    pub channels: watch::Receiver<Vec<ChannelKey>>,
    /// The keys the operator trusts, as the engine publishes them the moment the store
    /// learns one: what the fleet is told.
    pub trusted: watch::Receiver<TrustedKeys>,
    /// The link's status: the radio's own node number.
    pub link: watch::Receiver<LinkStatus>,
}

/// Starts the MQTT side; it runs until [`MqttHandle::stop`] or until the engine goes away.
pub fn spawn(config: MqttConfig, links: MqttLinks) -> Result<MqttHandle, TlsError> {
    let client_id = format!("keysync-{:08x}", rand::random::<u32>());
    let mut options = MqttOptions::new(client_id, config.broker.host.clone(), config.broker.port);
    options
        .set_keep_alive(config.keep_alive)
        .set_clean_session(true)
        .set_max_packet_size(PACKET_MAX, PACKET_OUT_MAX)
        .set_request_channel_capacity(REQUEST_QUEUE);
    if let Some(user) = &config.broker.user {
        options.set_credentials(
            user.clone(),
            config.broker.password.clone().unwrap_or_default(),
        );
    }
    if config.broker.tls {
        let roots = match &config.ca {
            Some(pem) => ca_roots(pem)?,
            None => system_roots()?,
        };
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls_config(roots)?)));
    }
    let (client, eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
    let (status_tx, status) = watch::channel(MqttStatus {
        broker: config.broker.to_string(),
        state: MqttState::Connecting,
        since: SystemTime::now(),
        last_error: None,
        fleet: config.fleet.clone(),
        channels: 0,
        counts: MqttCounts::default(),
    });
    let (driven_tx, driven) = mpsc::channel(DRIVEN_QUEUE);
    let connection = tokio::spawn(drive(eventloop, driven_tx, config.backoff));
    let reader = Reader {
        keyring: Keyring::default(),
        book: FleetBook::default(),
        outbox: VecDeque::new(),
        queued: HashSet::new(),
        settle_at: None,
        shared_nodes: None,
        status: status_tx,
        client,
        config,
        links,
    };
    let task = tokio::spawn(async move {
        let _connection = AbortOnDrop(connection);
        reader.run(driven).await;
    });
    Ok(MqttHandle { status, task })
}

/// Why `mqtts://` cannot be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("not a PEM certificate: {0}")]
    NotPem(String),
    #[error("not a usable certificate: {0}")]
    Unusable(String),
    #[error("no PEM certificate in it")]
    Empty,
    #[error("mqtts: no root certificates found on this system (give --mqtt-ca)")]
    NoSystemRoots,
    #[error("mqtts: {0}")]
    Config(String),
}

/// The authorities in a PEM file (`--mqtt-ca`), or why they cannot be used.
pub fn ca_roots(pem: &[u8]) -> Result<rustls::RootCertStore, TlsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| TlsError::NotPem(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| TlsError::Unusable(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Empty);
    }
    Ok(roots)
}

fn system_roots() -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError::NoSystemRoots);
    }
    Ok(roots)
}

/// TLS trusting `roots`, with the ring provider.
fn tls_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Config(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the connection task tells the reader.
#[derive(Debug)]
enum Driven {
    Connected,
    Subscribed,
    /// A publish from the broker, at most [`uplink::PAYLOAD_MAX`] long.
    Message(String, bytes::Bytes),
    /// A longer one: only its size is kept, so the queue holds at most 256 small messages.
    Oversized(String, usize),
    /// The broker acknowledged one of our publishes: room for more.
    Acked,
    Down {
        error: String,
        attempt: u32,
        retry_at: SystemTime,
        /// The connection failed on a packet larger than [`PACKET_MAX`], of this size.
        oversized: Option<usize>,
    },
    Connecting,
}

/// Polls rumqttc's event loop (which reconnects when polled again) and backs off after
/// failures. The reader's queue is bounded: when it is full this task waits, and so does the
/// broker's TCP stream. A connection that failed on a packet too large to read is not counted
/// as a success when the next one is accepted: a retained one comes back each time, and the
/// backoff grows instead of a reconnect loop.
async fn drive(mut eventloop: EventLoop, tx: mpsc::Sender<Driven>, backoff: BackoffPolicy) {
    let mut attempt = 0u32;
    let mut failed_on_size = false;
    loop {
        let driven = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if !failed_on_size {
                    attempt = 0;
                }
                Driven::Connected
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => Driven::Subscribed,
            Ok(Event::Incoming(Packet::Publish(p))) if p.payload.len() > uplink::PAYLOAD_MAX => {
                Driven::Oversized(p.topic, p.payload.len())
            }
            Ok(Event::Incoming(Packet::Publish(p))) => Driven::Message(p.topic, p.payload),
            Ok(Event::Incoming(Packet::PubAck(_))) => Driven::Acked,
            Ok(_) => continue,
            Err(e) => {
                attempt = attempt.saturating_add(1);
                let oversized = too_large(&e);
                failed_on_size = oversized.is_some();
                let wait = jittered(backoff.ceiling(attempt)).max(Duration::from_millis(100));
                let down = Driven::Down {
                    error: e.to_string(),
                    attempt,
                    retry_at: SystemTime::now() + wait,
                    oversized,
                };
                if tx.send(down).await.is_err() {
                    return;
                }
                tokio::time::sleep(wait).await;
                Driven::Connecting
            }
        };
        if tx.send(driven).await.is_err() {
            return;
        }
    }
}

/// The size of the packet a connection failed on, when that is why it failed.
fn too_large(e: &rumqttc::ConnectionError) -> Option<usize> {
    match e {
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
        )) => Some(*n),
        _ => None,
    }
}

struct Reader {
    config: MqttConfig,
    links: MqttLinks,
    client: AsyncClient,
    status: watch::Sender<MqttStatus>,
    keyring: Keyring,
    book: FleetBook,
    /// Records waiting for room in the request queue.
    outbox: VecDeque<(u32, FleetRecord)>,
    queued: HashSet<u32>,
    /// When the fleet's retained records have had time to arrive.
    settle_at: Option<Instant>,
    /// The node list last looked at for sharing.
    shared_nodes: Option<TrustedKeys>,
}

impl Reader {
    async fn run(mut self, mut driven: mpsc::Receiver<Driven>) {
        self.rebuild_keyring();
        loop {
            let settle = self.settle_at;
            tokio::select! {
                d = driven.recv() => {
                    let Some(d) = d else { return };
                    if !self.on_driven(d).await {
                        return;
                    }
                }
                changed = self.links.channels.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.rebuild_keyring();
                }
                changed = self.links.trusted.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.share();
                }
                () = sleep_until(settle) => {
                    self.settle_at = None;
                    self.shared_nodes = None;
                    self.share();
                }
            }
            self.drain_outbox();
        }
    }

    fn rebuild_keyring(&mut self) {
        let radio = self.links.channels.borrow_and_update().clone();
        let keys = std::iter::once(ChannelKey::default_channel())
            .chain(self.config.channel_keys.iter().cloned())
            .chain(radio);
        self.keyring = Keyring::new(keys);
        let n = self.keyring.len();
        self.status.send_modify(|s| s.channels = n);
    }

    /// Returns false when the engine is gone.
    async fn on_driven(&mut self, d: Driven) -> bool {
        match d {
            Driven::Connected => {
                crate::log_limited!(info, "mqtt-connected", burst 5, target: "keysync::mqtt",
                    "connected to {}", self.config.broker);
                self.status.send_modify(|s| s.counts.connects += 1);
                self.set_state(MqttState::Connected, None);
                self.subscribe();
            }
            Driven::Subscribed => {
                if self.config.fleet.is_some() {
                    self.settle_at = Some(Instant::now() + FLEET_SETTLE);
                }
            }
            // Only fleet records are published with QoS 1: one acknowledged is one delivered.
            Driven::Acked => self.status.send_modify(|s| s.counts.fleet_out += 1),
            Driven::Connecting => self.set_state(MqttState::Connecting, None),
            Driven::Down {
                error,
                attempt,
                retry_at,
                oversized,
            } => {
                let error = printable(&error).into_owned();
                if let Some(len) = oversized {
                    self.status.send_modify(|s| s.counts.messages += 1);
                    self.rejected("(a packet too large to read)", len, Reject::Oversized);
                }
                crate::log_limited!(warn, "mqtt-down", target: "keysync::mqtt",
                    "{}: {error} (attempt {attempt})", self.config.broker);
                self.settle_at = None;
                self.set_state(MqttState::Backoff { attempt, retry_at }, Some(error));
            }
            Driven::Message(topic, payload) => return self.on_message(&topic, &payload).await,
            Driven::Oversized(topic, len) => {
                self.status.send_modify(|s| s.counts.messages += 1);
                self.rejected(&topic, len, Reject::Oversized);
            }
        }
        true
    }

    fn set_state(&self, state: MqttState, error: Option<String>) {
        let now = SystemTime::now();
        self.status.send_modify(|s| {
            s.state = state;
            s.since = now;
            if error.is_some() {
                s.last_error = error;
            }
        });
    }

    fn subscribe(&self) {
        let root = &self.config.root;
        let mut filters = vec![format!("{root}/2/e/#"), format!("{root}/2/json/#")];
        if let Some(name) = &self.config.fleet {
            filters.push(fleet::filter(name));
        }
        for (i, filter) in filters.into_iter().enumerate() {
            // The uplink repeats itself; the fleet's retained records must all arrive.
            let qos = if i < 2 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            if let Err(e) = self.client.try_subscribe(filter.clone(), qos) {
                crate::log_limited!(warn, "mqtt-subscribe", target: "keysync::mqtt",
                    "could not subscribe to {filter}: {e}");
            }
        }
    }

    fn fleet_prefix(&self) -> Option<String> {
        self.config
            .fleet
            .as_ref()
            .map(|f| format!("{}/{f}/", fleet::PREFIX))
    }

    async fn on_message(&mut self, topic: &str, payload: &[u8]) -> bool {
        self.status.send_modify(|s| s.counts.messages += 1);
        let is_fleet = self.fleet_prefix().is_some_and(|p| topic.starts_with(&p));
        let read = if is_fleet {
            if payload.is_empty() {
                // A cleared retained record.
                if let Some(num) = topic.rsplit('/').next().and_then(uplink::parse_node_id) {
                    self.book.forget(num);
                }
                return true;
            }
            fleet::read(topic, payload).map(|k| {
                self.book.note(k.seen.num, k.key, k.origin);
                (k.origin == self.own())
                    .then_some(())
                    .map_or(Some(k.seen), |()| None)
            })
        } else {
            let own = self.own();
            uplink::read_uplink(topic, payload, &self.keyring).and_then(|seen| match seen.source {
                Source::Mqtt { gateway } if gateway == own => Err(Reject::OwnGateway),
                _ => Ok(Some(seen)),
            })
        };
        match read {
            Ok(Some(seen)) => {
                self.status.send_modify(|s| {
                    if is_fleet {
                        s.counts.fleet_in += 1;
                    } else {
                        s.counts.uplink_keys += 1;
                    }
                });
                self.links.learned.send(seen).await.is_ok()
            }
            // Our own record coming back.
            Ok(None) => true,
            Err(why) => {
                self.rejected(topic, payload.len(), why);
                true
            }
        }
    }

    fn rejected(&self, topic: &str, len: usize, why: Reject) {
        self.status.send_modify(|s| {
            s.counts.ignored += 1;
            match why {
                Reject::Oversized => s.counts.oversized += 1,
                Reject::WrongKey => s.counts.undecryptable += 1,
                _ => {}
            }
        });
        Self::log_reject(topic, len, why);
    }

    fn log_reject(topic: &str, len: usize, why: Reject) {
        let kind = match why {
            // Most uplink traffic is not NodeInfo: that is no news; nor is our own radio's.
            Reject::NotNodeInfo | Reject::NoChannelKey | Reject::OwnGateway => return,
            Reject::Oversized => "mqtt-oversized",
            Reject::Garbage => "mqtt-garbage",
            Reject::WrongKey => "mqtt-wrong-key",
            Reject::NoKey => "mqtt-no-key",
            Reject::NotANode => "mqtt-not-a-node",
        };
        crate::log_limited!(warn, kind, target: "keysync::mqtt",
            "ignored a {len}-byte broker message on {}: {}",
            printable(truncate_utf8(topic, 120)), why.label());
    }

    fn own(&self) -> u32 {
        self.links
            .link
            .borrow()
            .radio
            .as_ref()
            .map_or(0, |r| r.my_node_num)
    }

    /// Queues the stored keys the fleet lacks, once the fleet's records have arrived.
    fn share(&mut self) {
        if self.config.fleet.is_none() || self.settle_at.is_some() {
            return;
        }
        let nodes = self.links.trusted.borrow_and_update().clone();
        let own = self.own();
        if own == 0 || self.shared_nodes.as_ref().is_some_and(|n| n.same(&nodes)) {
            return;
        }
        for (num, record) in fleet::to_publish(&nodes, own, &self.book) {
            if self.queued.insert(num) {
                self.outbox.push_back((num, record));
            }
        }
        self.shared_nodes = Some(nodes);
    }

    /// Hands queued records to the connection while its request queue has room.
    fn drain_outbox(&mut self) {
        let Some(name) = self.config.fleet.clone() else {
            return;
        };
        while let Some((num, record)) = self.outbox.front() {
            let topic = fleet::topic(&name, *num);
            match self
                .client
                .try_publish(topic, QoS::AtLeastOnce, true, record.to_json())
            {
                Ok(()) => {
                    let num = *num;
                    if let (Some(key), Some(origin)) = (
                        super::store::parse_key(&record.key),
                        uplink::parse_node_id(&record.origin),
                    ) {
                        self.book.note(num, key, origin);
                    }
                    self.queued.remove(&num);
                    self.outbox.pop_front();
                }
                Err(_) => break,
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
