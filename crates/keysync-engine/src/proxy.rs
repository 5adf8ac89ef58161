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
//!
//! The parts, each owning its state behind its methods: `upstream` follows the radio link (the
//! task that owns the download under way); `replay` keeps what the radio holds and builds a
//! client's replay from it (`replay::Cache`); `writer` holds the clients' packets and is the one
//! writer towards the radio (`writer::Queues`, limits in `fair`); `answers` routes the radio's
//! answers back to the client that asked (`answers::Routes`); `client` accepts, reads and writes
//! the downstream clients (`client::Registry`); `filter` decides which packets may pass
//! (`filter::Filter`, admin kinds and encrypted admin in `admin`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use meshtastic::protobufs::{FromRadio, from_radio};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

mod admin;
mod answers;
mod client;
mod fair;
mod filter;
mod replay;
mod upstream;
mod writer;

pub use admin::{AdminDenial, DestructiveAdmin, UnknownAdminKind};
pub use client::ClientView;

use crate::codec::RadioFrame;
use crate::link::{LinkNotice, LinkSender};
use crate::radio::NodeSeen;

/// Frames a slow client may fall behind before the oldest are dropped (the radio's own queue).
pub const CLIENT_QUEUE: usize = 32;

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
/// What the proxy's parts share, each part's state behind its own methods.
#[derive(Debug)]
struct Shared {
    config: ProxyConfig,
    /// What the radio holds, as replays show it.
    cache: replay::Cache,
    /// Live frames for configured clients.
    live: broadcast::Sender<Arc<RadioFrame>>,
    /// Clients' packets waiting for the radio.
    queues: writer::Queues,
    /// Where the radio's answers to clients' packets go.
    answers: answers::Routes,
    clients: client::Registry,
    filter: filter::Filter,
    /// Cancelled when the proxy stops: every client closes.
    stop: CancellationToken,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The bytes of a frame keysync composes.
fn composed(variant: from_radio::PayloadVariant) -> Bytes {
    RadioFrame::composed(FromRadio {
        id: 0,
        payload_variant: Some(variant),
    })
    .payload
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

/// The running proxy: its tasks, and the token that stops them and its clients.
#[derive(Debug)]
pub struct Proxy {
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
        needs: mpsc::Sender<crate::model::KeyNeed>,
        trusted: watch::Receiver<crate::TrustedKeys>,
    ) -> std::io::Result<Proxy> {
        let Self { config, listener } = self;
        let addr = listener.local_addr()?;
        let (clients, views) = client::Registry::new(config.max_clients);
        let filter = filter::Filter::new(
            config.allow_remote_admin,
            config.deny_admin.clone(),
            learned,
            trusted,
        );
        let shared = Arc::new(Shared {
            config,
            cache: replay::Cache::new(),
            live: broadcast::channel(CLIENT_QUEUE).0,
            queues: writer::Queues::new(),
            answers: answers::Routes::default(),
            clients,
            filter,
            stop: CancellationToken::new(),
        });
        log::info!(target: "keysync::engine::proxy", "serving downstream clients on {addr}{}", admin_policy(&shared.config));
        let answers = notices.resubscribe();
        let stop = shared.stop.clone();
        let tasks = vec![
            tokio::spawn(upstream::follow_upstream(
                shared.clone(),
                notices,
                sender.clone(),
            )),
            tokio::spawn(writer::write_upstream(
                shared.clone(),
                answers,
                sender,
                needs,
            )),
            tokio::spawn(client::accept(shared.clone(), listener)),
            tokio::spawn(refresh_views(shared)),
        ];
        Ok(Proxy {
            clients: views,
            stop,
            tasks,
        })
    }
}

async fn refresh_views(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        shared.clients.publish();
    }
}
