//! The simulated radio: a TCP server that behaves like Meshtastic firmware 2.7 on its client
//! API (PROTOCOL.md), with a NodeDB of fixed capacity, nodes that announce themselves, and
//! scripted faults. `keysync sim` runs it standalone; `--demo` and the tests run it in-process.

pub mod nodedb;
pub mod population;
pub mod scenario;
mod session;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use meshtastic::Message;
use meshtastic::protobufs::{
    Data, FromRadio, MeshPacket, NodeInfo, PortNum, SharedContact, from_radio, mesh_packet,
};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::engine::radio::{BROADCAST, node_id, valid_key};
use nodedb::{Heard, NodeDb};
use population::{Population, now_secs};
pub use scenario::{Fault, Forget, Scenario, ScenarioEvent};

/// How the simulated radio is set up.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    /// Generated nodes on the simulated mesh.
    pub nodes: usize,
    pub seed: u64,
    /// NodeDB capacity, own node included.
    pub capacity: usize,
    /// Close a client that sent no complete frame for this long (firmware ≥ 2.7.21: 15 min).
    pub idle_timeout: Duration,
    /// A random known node announces itself this often; `None` for a quiet mesh.
    pub announce_every: Option<Duration>,
    /// Reported in `metadata.firmware_version`.
    pub firmware: String,
    pub scenario: Scenario,
    /// The radio's queue for packets from the client (`maxlen`).
    pub queue_len: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4403)),
            nodes: 40,
            seed: 1,
            capacity: 100,
            idle_timeout: Duration::from_secs(15 * 60),
            announce_every: Some(Duration::from_secs(45)),
            firmware: "2.7.15.sim".into(),
            scenario: Scenario::default(),
            queue_len: 16,
        }
    }
}

/// What the simulated radio has seen and done; the evidence tests assert on.
#[derive(Debug, Default)]
pub struct SimCounters {
    received: Mutex<BTreeMap<&'static str, u64>>,
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
    /// Until when every QueueStatus says the queue is full.
    queue_full_until: Option<Instant>,
    /// Until when packets get no QueueStatus.
    silent_until: Option<Instant>,
}

#[derive(Debug)]
struct Shared {
    config: SimConfig,
    radio: Mutex<Radio>,
    counters: Arc<SimCounters>,
    /// Live traffic towards the client: the firmware's 32-frame queue, oldest dropped.
    live: broadcast::Sender<FromRadio>,
}

impl Shared {
    fn radio(&self) -> MutexGuard<'_, Radio> {
        lock(&self.radio)
    }

    /// A node announces itself on NODEINFO_APP: the radio updates its NodeDB under the key
    /// rules and forwards the packet to the client either way.
    fn announce(&self, index: usize) {
        let mut radio = self.radio();
        let Some(node) = radio.mesh.get(index).cloned() else {
            log::warn!(target: "keysync::sim", "no generated node #{index} to announce");
            return;
        };
        let user = node.user.clone().unwrap_or_default();
        let outcome = radio.db.heard(node.num, &user, now_secs());
        let id = radio.population.packet_id();
        drop(radio);
        log::info!(target: "keysync::sim", "{} ({}) announces itself: {outcome:?}", node_id(node.num), user.long_name);
        self.counters.announcements.fetch_add(1, Ordering::Relaxed);
        let packet = mesh_packet(
            node.num,
            BROADCAST,
            id,
            PortNum::NodeinfoApp,
            user.encode_to_vec(),
        );
        let _ = self.live.send(FromRadio {
            id: 0,
            payload_variant: Some(from_radio::PayloadVariant::Packet(packet)),
        });
        if outcome == Heard::KeyMismatch {
            log::info!(target: "keysync::sim", "Public Key mismatch, dropping NodeInfo of {}", node_id(node.num));
        }
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
        self.announce(index);
    }

    fn new_nodes(&self, count: usize) {
        let first = {
            let mut radio = self.radio();
            let first = radio.mesh.len();
            for _ in 0..count {
                let node = radio.population.next_node();
                radio.mesh.push(node);
            }
            first
        };
        for index in first..first + count {
            self.announce(index);
        }
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
    addr: SocketAddr,
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
        let mut population = Population::new(config.seed);
        let own = population.own_node();
        let mut db = NodeDb::new(own, config.capacity);
        let mesh: Vec<NodeInfo> = (0..config.nodes).map(|_| population.next_node()).collect();
        for node in mesh.iter().take(config.capacity.saturating_sub(1)) {
            db.insert(node.clone());
        }
        let (live, _) = broadcast::channel(32);
        let announce_every = config.announce_every;
        let scenario = config.scenario.clone();
        let shared = Arc::new(Shared {
            config,
            radio: Mutex::new(Radio {
                db,
                population,
                mesh,
                contacts: Vec::new(),
                queue_full_until: None,
                silent_until: None,
            }),
            counters: Arc::new(SimCounters::default()),
            live,
        });
        log::info!(target: "keysync::sim",
            "simulated radio {} listening on {addr}: {} nodes on the mesh, NodeDB capacity {}, firmware {}",
            node_id(shared.radio().db.my_node_num()), shared.config.nodes, shared.config.capacity, shared.config.firmware);
        let (control, control_rx) = mpsc::channel(16);
        let mut tasks = vec![tokio::spawn(listen(listener, shared.clone(), control_rx))];
        if let Some(every) = announce_every {
            tasks.push(tokio::spawn(announce_loop(shared.clone(), every)));
        }
        if !scenario.events.is_empty() {
            tasks.push(tokio::spawn(run_scenario(
                scenario,
                shared.clone(),
                control.clone(),
            )));
        }
        Ok(Self {
            addr,
            shared,
            control,
            tasks,
        })
    }

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
        Fault::NewNodes { count } => shared.new_nodes(count),
        Fault::Announce { node } => shared.announce(node),
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
                let task = tokio::spawn(session::serve(
                    stream,
                    peer,
                    shared.clone(),
                    kick.clone(),
                    cmd_rx,
                ));
                current = Some(Current { kick, cmds, task });
            }
            Step::Rebind => {
                back_at = None;
                match bind(addr) {
                    Ok(l) => {
                        log::info!(target: "keysync::sim", "accepting connections again on {addr}");
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
        Fault::Reboot { down, forget } => {
            log::info!(target: "keysync::sim", "fault: rebooting (down {}, forgetting {forget:?})", humantime::format_duration(down));
            if let Some(old) = current.take() {
                old.kick.cancel();
            }
            match forget {
                Forget::Nothing => {}
                Forget::Keys => shared.radio().db.forget_keys(),
                Forget::Nodes => shared.radio().db.forget_nodes(),
            }
            *listener = None;
            *back_at = Some(Instant::now() + down);
        }
        mesh_event => apply_mesh(shared, mesh_event),
    }
}

enum Step {
    Accepted(io::Result<(tokio::net::TcpStream, SocketAddr)>),
    Rebind,
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
        shared.announce(next);
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

/// Convenience for tests and tools: the counter values now.
pub fn snapshot(c: &SimCounters) -> BTreeMap<&'static str, u64> {
    let mut m = c.received();
    m.insert("connections", SimCounters::get(&c.connections));
    m.insert("add_contacts", SimCounters::get(&c.add_contacts));
    m.insert("invalid_contacts", SimCounters::get(&c.invalid_contacts));
    m.insert("flash_writes", SimCounters::get(&c.flash_writes));
    m.insert("idle_closes", SimCounters::get(&c.idle_closes));
    m
}

/// `keysync sim`: serves until SIGINT or SIGTERM, then prints what it counted.
pub async fn run_cli(args: &crate::cli::SimArgs) -> anyhow::Result<()> {
    let scenario = match &args.scenario {
        Some(path) => Scenario::load(path)?,
        None => Scenario::default(),
    };
    let config = SimConfig {
        listen: args.listen,
        nodes: args.nodes,
        seed: args.seed,
        capacity: usize::from(args.capacity),
        idle_timeout: args.idle_timeout,
        announce_every: (!args.announce_every.is_zero()).then_some(args.announce_every),
        firmware: args.firmware.clone(),
        scenario,
        ..SimConfig::default()
    };
    let sim = SimHandle::start(config)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    crate::headless::shutdown_signal().await?;
    let counters = sim.counters();
    log::info!(target: "keysync::sim", "stopping; counters: {:?}", snapshot(&counters));
    sim.shutdown().await;
    Ok(())
}
