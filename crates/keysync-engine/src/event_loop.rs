//! The engine's one loop: it routes the link's notices, the clock, the operator's commands,
//! keys learned by the proxy and the broker, and the running sync's pushes to the parts that
//! decide (`sync::schedule`, `sync::needs`), and publishes the snapshot and the trusted keys.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::EngineConfig;
use crate::link::{Link, LinkCounters, LinkNotice, LinkStatus, Session};
use crate::model::{Command, KeyNeed, TrustedKeys, TrustedNode};
use crate::mqtt;
use crate::plan::{self, Mirror, RadioTraits};
use crate::radio::{self, NodeSeen, PublicKey, node_id, valid_key};
use crate::snapshot::{HISTORY_LEN, NodeView, Running, Snapshot, Traffic, ViewPatch, radio_key};
use crate::stats::WriteCounters;
use crate::store::{Learned, Store};
use crate::sync::needs::Needs;
use crate::sync::schedule::{Asked, NeedRoute, Schedule, Start};
use crate::sync::{
    self, NodeSource, Outcome, StoreHandle, SyncJob, SyncReport, Trigger, log_learned,
};

/// The running engine.
#[derive(Debug)]
pub struct EngineHandle {
    pub snapshot: watch::Receiver<Snapshot>,
    /// The keys the operator trusts, published as soon as the store learns one (the views'
    /// snapshot follows at its next refresh).
    pub trusted: watch::Receiver<TrustedKeys>,
    pub commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

impl EngineHandle {
    /// Waits for the engine's task to end (after [`Command::Quit`]).
    pub async fn join(self) {
        let _ = self.task.await;
    }

    /// Asks the engine to stop and waits until the link is closed.
    pub async fn quit(self) {
        let _ = self.commands.send(Command::Quit).await;
        self.join().await;
    }
}

/// Starts the engine; fails when the proxy's listen address cannot be bound.
pub(crate) fn start(config: EngineConfig, store: Store) -> std::io::Result<EngineHandle> {
    // The proxy's port first: the radio is not dialled when it cannot be served.
    let bound = config.proxy.clone().map(crate::proxy::bind).transpose()?;
    let (link, [notices, proxy_notices]) = Link::spawn_subscribed(config.link.clone());
    let (learned_tx, learned) = mpsc::channel(256);
    let (needs_tx, needs) = mpsc::channel(64);
    let proxy_addr = bound.as_ref().map(crate::proxy::Bound::addr).transpose()?;
    let (pushed_tx, pushed) = mpsc::unbounded_channel();
    let status = link.status();
    let counters = link.counters();
    let store = StoreHandle::new(store);
    let (snapshot_tx, snapshot) = watch::channel(Snapshot::initial(
        &config,
        status.borrow().clone(),
        &counters,
        proxy_addr,
    ));
    // The proxy reads the trusted keys as the engine learns them (a client may not replace one).
    let (trusted, trusted_rx) = watch::channel(TrustedKeys::default());
    let trusted_out = trusted_rx.clone();
    let proxy = match bound {
        Some(bound) => Some(bound.serve(
            proxy_notices,
            link.sender(),
            learned_tx,
            needs_tx,
            trusted_rx,
        )?),
        None => None,
    };
    let (channels_tx, mqtt, mqtt_learned) =
        start_mqtt(config.mqtt.clone(), trusted_out.clone(), status.clone())?;
    let (commands, command_rx) = mpsc::channel(16);
    let engine = EngineLoop {
        config,
        link,
        status,
        notices,
        counters,
        store,
        snapshot: snapshot_tx,
        commands: command_rx,
        session: None,
        sessions_seen: 0,
        running: None,
        schedule: Schedule::default(),
        mirror: None,
        pushed_last: Vec::new(),
        nodes_dirty: true,
        patches: HashMap::new(),
        link_changes_recorded: 0,
        own_num: 0,
        learned,
        clients: proxy.as_ref().map(|p| p.clients.clone()),
        proxy,
        traits: None,
        urgent_tx: None,
        needs_state: Needs::default(),
        pushes_ignored: None,
        trusted,
        needs,
        pushed_tx,
        pushed,
        writes: Arc::new(WriteCounters::default()),
        flash_counted: None,
        mqtt_learned,
        mqtt,
        radio_channels: channels_tx,
        mqtt_log: MqttLearnLog::default(),
        mqtt_no_room: 0,
    };
    let task = tokio::spawn(engine.run());
    Ok(EngineHandle {
        snapshot,
        trusted: trusted_out,
        commands,
        task,
    })
}

/// Pushes in one run that all never landed: the radio ignores add_contact.
const IGNORED_AFTER: usize = 3;

/// Keys from the broker waiting for the store; learned in batches of up to this many.
const MQTT_BATCH: usize = 256;

/// At most one summary of keys learned over MQTT in this long.
const MQTT_LOG_EVERY: Duration = Duration::from_secs(10);

/// The MQTT side, when configured: the sender of the radio's channels it reads with, its
/// handle, and where the keys it reads arrive.
#[expect(
    clippy::type_complexity,
    reason = "three parts of one start, taken apart at once"
)]
fn start_mqtt(
    config: Option<mqtt::MqttConfig>,
    trusted: watch::Receiver<TrustedKeys>,
    link: watch::Receiver<LinkStatus>,
) -> std::io::Result<(
    watch::Sender<Vec<mqtt::crypto::ChannelKey>>,
    Option<mqtt::MqttHandle>,
    Option<mpsc::Receiver<NodeSeen>>,
)> {
    let (channels_tx, channels) = watch::channel(Vec::new());
    let Some(config) = config else {
        return Ok((channels_tx, None, None));
    };
    let (learned, learned_rx) = mpsc::channel(MQTT_BATCH * 4);
    let links = mqtt::MqttLinks {
        learned,
        channels,
        trusted,
        link,
    };
    let handle = mqtt::spawn(config, links).map_err(std::io::Error::other)?;
    Ok((channels_tx, Some(handle), Some(learned_rx)))
}

enum Step {
    Notice(Result<LinkNotice, broadcast::error::RecvError>),
    LinkChanged(bool),
    Check,
    Refresh,
    Finished(Box<Result<SyncReport, tokio::task::JoinError>>),
    Command(Option<Command>),
    Learned(NodeSeen),
    Need(KeyNeed),
    Pushed(u32),
    FromBroker(Vec<NodeSeen>),
}

/// Keys learned over MQTT since the last summary line.
#[derive(Debug, Default)]
struct MqttLearnLog {
    last_line: Option<Instant>,
    first_use: u64,
    pending: u64,
    /// New nodes the store had no room for.
    no_room: u64,
}

impl MqttLearnLog {
    /// Writes the summary if there is news and the last line is old enough.
    /// `max_unheard`: the bound on nodes known only from the broker, for the no-room line.
    fn flush(&mut self, max_unheard: usize) {
        let now = Instant::now();
        let due = self
            .last_line
            .is_none_or(|at| now.duration_since(at) >= MQTT_LOG_EVERY);
        if !due || self.first_use + self.pending + self.no_room == 0 {
            return;
        }
        if self.first_use + self.pending > 0 {
            log::info!(target: "keysync::mqtt",
                "learned {} new keys over MQTT (trusted on first use); {} different keys pending your decision",
                self.first_use, self.pending);
        }
        if self.no_room > 0 {
            log::warn!(target: "keysync::mqtt",
                "{} new nodes from the broker not stored: the store is at its bound of {} nodes known only from the broker (--mqtt-max-nodes)",
                self.no_room, max_unheard);
        }
        *self = Self {
            last_line: Some(now),
            ..Self::default()
        };
    }
}

struct EngineLoop {
    config: EngineConfig,
    link: Link,
    status: watch::Receiver<LinkStatus>,
    notices: broadcast::Receiver<LinkNotice>,
    counters: Arc<LinkCounters>,
    store: StoreHandle,
    snapshot: watch::Sender<Snapshot>,
    commands: mpsc::Receiver<Command>,
    session: Option<Arc<Session>>,
    sessions_seen: u64,
    running: Option<JoinHandle<SyncReport>>,
    /// Which run goes next.
    schedule: Schedule,
    /// What the radio's firmware and hardware allow, from the last handshake.
    traits: Option<RadioTraits>,
    /// Hands urgent nodes to the running job, so they go ahead of its bulk fill.
    urgent_tx: Option<mpsc::Sender<u32>>,
    /// Push-on-need: who needs a key now, back-offs, client DMs waiting.
    needs_state: Needs,
    /// Pushing stopped: the radio ignored this many pushes in a row.
    pushes_ignored: Option<usize>,
    /// The keys the operator trusts, published the moment the store learns one.
    trusted: watch::Sender<TrustedKeys>,
    needs: mpsc::Receiver<KeyNeed>,
    /// The running job says which keys it pushed, as it goes.
    pushed_tx: mpsc::UnboundedSender<u32>,
    pushed: mpsc::UnboundedReceiver<u32>,
    mirror: Option<Arc<Mirror>>,
    /// Flash writes the sync jobs sent.
    writes: Arc<WriteCounters>,
    /// When the store's hourly flash-write count was last read, and the writes sent by then.
    flash_counted: Option<(Instant, u64)>,
    pushed_last: Vec<(u32, PublicKey)>,
    nodes_dirty: bool,
    /// Nodes heard since the last refresh whose rows changed only in names and last seen:
    /// patched in place, so that a mesh of announcing nodes does not reload every row.
    patches: HashMap<u32, ViewPatch>,
    link_changes_recorded: u64,
    /// The radio's own node number, from the handshake's `my_info`.
    own_num: u32,
    /// Keys downstream clients handed to the radio.
    learned: mpsc::Receiver<NodeSeen>,
    clients: Option<watch::Receiver<Vec<crate::proxy::ClientView>>>,
    mqtt: Option<mqtt::MqttHandle>,
    /// The proxy's tasks, stopped when the engine stops (its port is free then).
    proxy: Option<crate::proxy::Proxy>,
    /// Keys the MQTT side read from the broker.
    mqtt_learned: Option<mpsc::Receiver<NodeSeen>>,
    /// The radio's channels, for reading the uplink.
    radio_channels: watch::Sender<Vec<mqtt::crypto::ChannelKey>>,
    mqtt_log: MqttLearnLog,
    /// New nodes from the broker the store had no room for, since start.
    mqtt_no_room: u64,
}

async fn recv_batch(rx: Option<&mut mpsc::Receiver<NodeSeen>>) -> Option<Vec<NodeSeen>> {
    let Some(rx) = rx else {
        return std::future::pending().await;
    };
    let mut batch = Vec::new();
    (rx.recv_many(&mut batch, MQTT_BATCH).await > 0).then_some(batch)
}

async fn join_running(
    running: Option<&mut JoinHandle<SyncReport>>,
) -> Result<SyncReport, tokio::task::JoinError> {
    match running {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

impl EngineLoop {
    async fn run(mut self) {
        let interval = self.config.sync_interval;
        let mut check = tokio::time::interval_at(Instant::now() + interval, interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refresh = tokio::time::interval(Duration::from_secs(1));
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        self.refresh_store_view().await;
        loop {
            let step = tokio::select! {
                n = self.notices.recv() => Step::Notice(n),
                c = self.status.changed() => Step::LinkChanged(c.is_ok()),
                _ = check.tick() => Step::Check,
                _ = refresh.tick() => Step::Refresh,
                r = join_running(self.running.as_mut()) => Step::Finished(Box::new(r)),
                c = self.commands.recv() => Step::Command(c),
                Some(seen) = self.learned.recv() => Step::Learned(seen),
                Some(need) = self.needs.recv() => Step::Need(need),
                Some(num) = self.pushed.recv() => Step::Pushed(num),
                Some(batch) = recv_batch(self.mqtt_learned.as_mut()) => Step::FromBroker(batch),
            };
            match step {
                Step::Notice(Ok(notice)) => self.on_notice(notice).await,
                Step::Notice(Err(broadcast::error::RecvError::Lagged(n))) => {
                    crate::log_limited!(warn, "engine-behind", target: "keysync::engine", "fell {n} frames behind the radio; some node announcements were not learned");
                }
                Step::Notice(Err(broadcast::error::RecvError::Closed))
                | Step::LinkChanged(false)
                | Step::Command(None | Some(Command::Quit)) => break,
                Step::LinkChanged(true) => self.on_link_change().await,
                Step::Check => self.on_check().await,
                Step::Refresh => self.refresh().await,
                Step::Finished(result) => {
                    if self.on_finished(*result).await {
                        // Count checks from the last full sync, so that a TTL of k intervals
                        // expires exactly at the k-th check after it.
                        check.reset();
                    }
                }
                Step::Command(Some(cmd)) => self.on_command(cmd).await,
                Step::Learned(seen) => self.learn(seen).await,
                Step::FromBroker(batch) => self.learn_from_broker(batch).await,
                Step::Need(need) => self.on_need(need).await,
                // Its need is met: a later loss of the key is a new need.
                Step::Pushed(num) => self.needs_state.met(num),
            }
        }
        self.stop().await;
    }

    /// The periodic check: a run, unless one runs or the link is down.
    async fn on_check(&mut self) {
        let next = SystemTime::now() + self.config.sync_interval;
        self.snapshot
            .send_modify(|s| s.sync.next_check = Some(next));
        if let Some(start) = self.schedule.check(self.session.is_some()) {
            self.start_run(start).await;
        } else {
            log::debug!(target: "keysync::engine", "check skipped: {}",
                if self.session.is_none() { "link down" } else { "a sync is running" });
        }
    }

    /// The running sync ended: its report recorded, the DMs waiting let go, the next run
    /// started. True when it was a full sync, from which the next check counts.
    async fn on_finished(&mut self, result: Result<SyncReport, tokio::task::JoinError>) -> bool {
        self.running = None;
        let mut full = false;
        match result {
            Ok(report) => {
                full = matches!(report.outcome, Outcome::Synced | Outcome::Forced);
                if full {
                    let next = SystemTime::now() + self.config.sync_interval;
                    self.snapshot
                        .send_modify(|s| s.sync.next_check = Some(next));
                }
                self.finish(report).await;
            }
            Err(e) => log::error!(target: "keysync::engine", "sync task failed: {e}"),
        }
        self.needs_state.answer(|_| true);
        if let Some(start) = self.schedule.finished() {
            self.start_run(start).await;
        }
        full
    }

    /// Stops the broker side, the proxy, a run under way (recorded as interrupted) and the
    /// link, and publishes the final state.
    async fn stop(&mut self) {
        if let Some(mqtt) = self.mqtt.take() {
            mqtt.stop();
        }
        if let Some(proxy) = self.proxy.take() {
            proxy.stop().await;
        }
        if let Some(running) = self.running.take() {
            running.abort();
            // The history says that a sync began and did not end, not nothing.
            let started = self.snapshot.borrow().sync.running;
            if let Some(Running { trigger, since }) = started {
                let report = interrupted_report(trigger, since, SystemTime::now());
                self.finish(report).await;
            }
        }
        let status = self.status.clone();
        self.link.shutdown().await;
        let final_status = status.borrow().clone();
        self.snapshot.send_modify(|s| s.link = final_status);
        self.on_link_change().await;
    }

    async fn on_notice(&mut self, notice: LinkNotice) {
        match notice {
            LinkNotice::Up(session) => {
                self.sessions_seen += 1;
                let trigger = if self.sessions_seen == 1 {
                    Trigger::Startup
                } else {
                    Trigger::Reconnect
                };
                self.traits = Some(self.radio_traits(&session));
                let channels = mqtt::crypto::radio_channels(session.config.iter().map(|f| &f.msg));
                self.radio_channels.send_if_modified(|c| {
                    let changed = *c != channels;
                    *c = channels;
                    changed
                });
                self.session = Some(session);
                if let Asked::Start(start) = self.schedule.ask(trigger, true, true) {
                    self.start_run(start).await;
                }
            }
            LinkNotice::Down(_) => {
                self.session = None;
                self.needs_state.answer(|_| true);
            }
            LinkNotice::Download(_) | LinkNotice::Contact(_) => {}
            LinkNotice::Frame(frame) => {
                use meshtastic::protobufs::from_radio::PayloadVariant as V;
                match &frame.payload_variant {
                    Some(V::MyInfo(info)) => self.own_num = info.my_node_num,
                    Some(V::Packet(packet)) if self.session.is_some() => {
                        self.on_packet(packet).await;
                    }
                    _ => {}
                }
                // The radio's own key is not a contact: it is never learned or pushed.
                if let Some(seen) = sync::learnable(&frame).filter(|s| s.num != self.own_num) {
                    self.learn(seen).await;
                }
            }
        }
    }

    /// What the handshake says the radio can take, said once per connection.
    fn radio_traits(&self, session: &Session) -> RadioTraits {
        let facts = radio::HandshakeFacts::of(session.config.iter().map(|f| &f.msg));
        let capacity = self.config.sync.radio_capacity.map(|n| n as usize);
        let traits = RadioTraits::new(
            &session.firmware,
            facts.hw_model,
            &facts.pio_env,
            facts.client_base,
            facts.managed,
            capacity,
        )
        .with_router_role(facts.router_role);
        log::info!(target: "keysync::sync",
            "radio NodeDB capacity {} ({})", traits.capacity, traits.capacity_source);
        let capacity = u32::try_from(traits.capacity).ok();
        self.snapshot
            .send_if_modified(|s| std::mem::replace(&mut s.sync.capacity, capacity) != capacity);
        if let Some(blocked) = traits.blocked() {
            log::warn!(target: "keysync::sync", "{blocked}");
        }
        if traits.marks_verified {
            log::warn!(target: "keysync::sync",
                "firmware {} marks every pushed key \"manually verified\" and protects it for good (2.6.9 – 2.7.11): keysync counts each push as a slot it cannot give back",
                session.firmware);
        }
        if traits.router_role {
            log::warn!(target: "keysync::sync",
                "the gateway's role is a router role (ROUTER, ROUTER_LATE or CLIENT_BASE) on firmware {}: favourites change its hop counting, so only pinned nodes and DM partners get slots",
                session.firmware);
        }
        if !traits.favourites {
            log::info!(target: "keysync::sync",
                "CLIENT_BASE on firmware {}: add_contact does not favourite, pushed nodes stay evictable", session.firmware);
        }
        traits
    }

    /// A packet the radio forwarded: it tells what the radio now holds, and may show a need.
    async fn on_packet(&mut self, packet: &meshtastic::protobufs::MeshPacket) {
        let from = packet.from;
        if from == 0 || from == self.own_num {
            if let Some(request) = radio::pki_send_failed(packet) {
                self.on_dm_failed(request).await;
            }
            return;
        }
        let now = SystemTime::now();
        if packet.to == self.own_num {
            // A DM to the gateway: the sender is a partner that deserves a slot.
            let _ = self.store.call(move |s| s.note_dm(from, now)).await;
            self.needs_state.partner(from);
        }
        let heard = radio::heard_key(packet);
        let Some(mirror) = self.mirror.as_mut() else {
            return;
        };
        let node = Arc::make_mut(mirror).entry(from).or_default();
        if node.ignored {
            return;
        }
        // The firmware keeps a stored key against a different one, and drops a keyless
        // NodeInfo for a keyed node; a packet from an unknown node creates it keyless.
        if node.key.is_none() {
            node.key = heard;
        }
        let lacks_key = node.key.is_none();
        match self.store.call(move |s| s.note_heard(from, now)).await {
            Ok(true) => self.patch(from, ViewPatch::heard(now)),
            // Not a stored node: no row changed.
            Ok(false) => {}
            Err(e) => self.store_failed(&e),
        }
        if lacks_key && self.trusted.borrow().contains(from) {
            if self.needs_state.is_partner(from) {
                self.need(from, Trigger::Heard).await;
            } else {
                log::debug!(target: "keysync::sync",
                    "{} heard without a key: not pinned nor a DM partner, it waits for a need", node_id(from));
            }
        }
    }

    async fn on_dm_failed(&mut self, request: u32) {
        match self.needs_state.dm_to(request) {
            Some(to) => {
                crate::log_limited!(warn, "dm-failed", burst 10, target: "keysync::sync", "the radio could not encrypt a DM to {}: it lacks the key", node_id(to));
                if let Some(m) = self.mirror.as_mut()
                    && let Some(node) = Arc::make_mut(m).get_mut(&to)
                {
                    node.key = None;
                }
                self.needs_state.ask_again(to);
                self.need(to, Trigger::DmFailed).await;
            }
            None => crate::log_limited!(warn, "dm-failed-unknown", target: "keysync::sync",
                "a DM sent by another client (packet {request:08x}) failed for lack of a key; keysync cannot tell to whom"),
        }
    }

    /// A proxy client's DM: push the destination's key first when the radio lacks it.
    async fn on_need(&mut self, need: KeyNeed) {
        self.needs_state.client_dm(need.packet_id, need.num);
        let now = SystemTime::now();
        let num = need.num;
        let _ = self.store.call(move |s| s.note_dm(num, now)).await;
        let lacks = match (&self.mirror, &self.session) {
            (Some(m), _) => m.get(&num).is_none_or(|n| n.key.is_none() && !n.ignored),
            // The first run has not pictured the radio yet: its handshake's node list says.
            (None, Some(session)) => !session.nodes.iter().any(|n| {
                n.num == num
                    && (n.is_ignored
                        || n.user
                            .as_ref()
                            .is_some_and(|u| valid_key(&u.public_key).is_some()))
            }),
            (None, None) => false,
        };
        if !(lacks && self.trusted.borrow().contains(num) && self.session.is_some()) {
            let _ = need.done.send(());
            return;
        }
        self.needs_state.wait(num, need.done);
        self.needs_state.ask_again(num);
        if !self.need(num, Trigger::ClientDm).await {
            // Backing off: no push is coming, so the DM need not wait for one.
            self.needs_state.answer(|n| n == num);
        }
    }

    /// A node needs its key on the radio now: ahead of any bulk fill in progress. Returns
    /// whether a push was asked for (not when the node backs off or was asked for lately).
    async fn need(&mut self, num: u32, trigger: Trigger) -> bool {
        if !self.needs_state.ask(num, SystemTime::now()) {
            return false;
        }
        match self.schedule.need(num, trigger, self.session.is_some()) {
            NeedRoute::Running => {
                let taken = self
                    .urgent_tx
                    .as_ref()
                    .is_some_and(|tx| tx.try_send(num).is_ok());
                if !taken {
                    self.schedule.defer(num, trigger);
                }
            }
            NeedRoute::Start(start) => self.start_run(start).await,
            NeedRoute::LinkDown => {}
        }
        true
    }

    async fn learn(&mut self, seen: NodeSeen) {
        let now = SystemTime::now();
        let node = seen.clone();
        match self.store.call(move |s| s.learn(&node, now)).await {
            Ok(learned) => {
                log_learned(&seen, learned, log::Level::Info);
                match learned {
                    Learned::Same | Learned::KnownOther(_) | Learned::NamesOnly => {
                        self.patch(seen.num, ViewPatch::seen(&seen, now));
                    }
                    _ => self.nodes_dirty = true,
                }
                self.publish_trust(&seen, learned, now);
                self.clear_store_error();
            }
            Err(e) => self.store_failed(&e),
        }
    }

    /// Keys from the broker, learned in one transaction under the same trust rules as the
    /// mesh's; what they did is summed up in one line every [`MQTT_LOG_EVERY`].
    /// `--mqtt-max-nodes`: nodes known only from the broker the store may hold.
    fn max_unheard(&self) -> usize {
        self.config
            .mqtt
            .as_ref()
            .map_or(usize::MAX, |m| m.max_unheard)
    }

    async fn learn_from_broker(&mut self, batch: Vec<NodeSeen>) {
        let own = self.own_num;
        let batch: Vec<NodeSeen> = batch.into_iter().filter(|s| s.num != own).collect();
        let now = SystemTime::now();
        let max_unheard = self.max_unheard();
        let result = self
            .store
            .call(move |s| {
                s.learn_from_broker(&batch, now, max_unheard)
                    .map(|l| (batch, l))
            })
            .await;
        let (batch, learned) = match result {
            Ok(v) => v,
            Err(e) => {
                self.store_failed(&e);
                return;
            }
        };
        self.clear_store_error();
        let log = &mut self.mqtt_log;
        for (seen, outcome) in batch.iter().zip(&learned) {
            match outcome {
                Learned::FirstUse => log.first_use += 1,
                // The first few in full: a changed key is news the operator acts on.
                Learned::Pending { .. } if log.pending < 3 => {
                    log.pending += 1;
                    log_learned(seen, *outcome, log::Level::Info);
                    continue;
                }
                Learned::Pending { .. } => log.pending += 1,
                Learned::NoRoom => {
                    log.no_room += 1;
                    self.mqtt_no_room += 1;
                }
                _ => {}
            }
            log_learned(seen, *outcome, log::Level::Debug);
        }
        for (seen, outcome) in batch.iter().zip(&learned) {
            self.publish_trust(seen, *outcome, now);
        }
        if learned
            .iter()
            .any(|l| matches!(l, Learned::FirstUse | Learned::Pending { .. }))
        {
            self.nodes_dirty = true;
        }
        self.mqtt_log.flush(self.max_unheard());
    }

    /// What `learned` changed in the trusted keys, published at once: a key trusted on first
    /// use, or moved to the number firmware 2.8 derives from it.
    fn publish_trust(&self, seen: &NodeSeen, learned: Learned, now: SystemTime) {
        let Some(node) = TrustedNode::of_seen(seen, now) else {
            return;
        };
        match learned {
            Learned::FirstUse => {
                self.trusted.send_if_modified(|t| t.trust(seen.num, node));
            }
            Learned::Renumbered { from } => {
                self.trusted
                    .send_if_modified(|t| t.forget(from) | t.trust(seen.num, node));
            }
            _ => {}
        }
    }

    async fn start_run(&mut self, start: Start) {
        let Start {
            trigger,
            use_handshake,
            urgent,
        } = start;
        let Some(session) = self.session.clone() else {
            self.schedule.not_started();
            if trigger == Trigger::Operator {
                let report = link_down_report(trigger, &self.status.borrow().state.to_string());
                self.finish(report).await;
            }
            return;
        };
        let nodes = match (&self.mirror, trigger.is_lazy()) {
            (Some(mirror), true) => NodeSource::Current(mirror.clone()),
            _ if use_handshake => NodeSource::Handshake,
            _ => NodeSource::Download,
        };
        if trigger == Trigger::Operator {
            self.pushes_ignored = None;
        }
        let backing_off = self.backing_off();
        let (urgent_tx, urgent_rx) = mpsc::channel(64);
        self.urgent_tx = Some(urgent_tx);
        let traits = self
            .traits
            .clone()
            .unwrap_or_else(|| self.radio_traits(&session));
        let job = SyncJob {
            trigger,
            session,
            notices: self.link.subscribe(),
            sender: self.link.sender(),
            store: self.store.clone(),
            settings: self.config.sync,
            nodes,
            traits,
            // A lazy run does not download, so it cannot verify the last run's pushes.
            pushed_before: if trigger.is_lazy() {
                Vec::new()
            } else {
                std::mem::take(&mut self.pushed_last)
            },
            backing_off,
            urgent,
            urgent_rx: Some(urgent_rx),
            pushes_ignored: self.pushes_ignored,
            pushed_tx: Some(self.pushed_tx.clone()),
            writes: self.writes.clone(),
        };
        let since = SystemTime::now();
        self.snapshot
            .send_modify(|s| s.sync.running = Some(Running { trigger, since }));
        self.running = Some(tokio::spawn(sync::run(job)));
    }

    async fn finish(&mut self, mut report: SyncReport) {
        if report.outcome == Outcome::Failed {
            log::warn!(target: "keysync::sync", "{}", report.summary());
        } else {
            log::info!(target: "keysync::sync", "{}", report.summary());
        }
        let record = report.record();
        let saved = self
            .store
            .call(move |s| {
                s.record_run(&record)?;
                s.cache()
            })
            .await;
        let cache = match saved {
            Ok(cache) => {
                self.clear_store_error();
                cache
            }
            Err(e) => {
                self.store_failed(&e);
                None
            }
        };
        self.urgent_tx = None;
        // The engine keeps the radio's picture; a hundred reports need not keep a copy each.
        if let Some(mirror) = report.mirror.take() {
            self.mirror = Some(mirror);
        }
        self.note_lost(&report);
        if report.trigger.is_lazy() {
            self.pushed_last.extend(report.pushed_keys.iter().copied());
        } else {
            self.pushed_last.clone_from(&report.pushed_keys);
        }
        // A slot given back may be evicted: its key missing later is no loss of a push.
        self.pushed_last
            .retain(|(num, _)| !report.released_nums.contains(num));
        self.nodes_dirty = true;
        self.snapshot.send_modify(|s| {
            s.sync
                .totals
                .record_run(report.trigger, report.outcome, report.duration);
            s.sync.running = None;
            s.sync.cache = cache;
            if s.sync.history.len() == HISTORY_LEN {
                s.sync.history.pop_front();
            }
            s.sync.history.push_back(report.clone());
            s.sync.last = Some(report);
        });
        self.refresh_store_view().await;
    }

    /// Nodes whose push the radio lost, still backing off.
    fn backing_off(&self) -> BTreeSet<u32> {
        self.needs_state.backing_off(SystemTime::now())
    }

    /// Pushes the radio lost back off; a run whose pushes all vanished stops pushing.
    fn note_lost(&mut self, report: &SyncReport) {
        let now = SystemTime::now();
        for (num, wait) in self.needs_state.pushes_lost(&report.lost, now) {
            log::warn!(target: "keysync::sync",
                "the radio cannot keep the key of {}: not pushed again for {}", node_id(num), humantime::format_duration(wait));
        }
        if pushes_never_land(report.verified_pushes, report.lost.len()) {
            self.pushes_ignored = Some(report.lost.len());
            log::error!(target: "keysync::sync", "{}", plan::Blocked::PushesIgnored(report.lost.len()));
        } else {
            self.needs_state.forget_ended(now);
        }
    }

    async fn on_command(&mut self, cmd: Command) {
        let message = match cmd {
            Command::ForceSync => {
                match self
                    .schedule
                    .ask(Trigger::Operator, false, self.session.is_some())
                {
                    Asked::Queued => "force sync queued behind the running sync".to_string(),
                    Asked::Start(start) => {
                        self.start_run(start).await;
                        "force sync requested".to_string()
                    }
                    Asked::LinkDown => {
                        let report = link_down_report(
                            Trigger::Operator,
                            &self.status.borrow().state.to_string(),
                        );
                        self.finish(report).await;
                        "force sync failed: the radio link is down".to_string()
                    }
                }
            }
            Command::ResetCache => match self.store.call(Store::clear_cache).await {
                Ok(()) => {
                    self.snapshot.send_modify(|s| s.sync.cache = None);
                    "cache cleared: next check will sync".to_string()
                }
                Err(e) => {
                    self.store_failed(&e);
                    format!("cache reset failed: {e}")
                }
            },
            Command::AcceptKey(num) | Command::RejectKey(num) => self.decide_key(cmd, num).await,
            Command::Pin(num, pin) => {
                let result = self.store.call(move |s| s.set_pinned(num, pin)).await;
                self.nodes_dirty = true;
                match result {
                    Ok(true) if pin => {
                        format!("{} pinned: it keeps a slot on the radio", node_id(num))
                    }
                    Ok(true) => format!("{} unpinned", node_id(num)),
                    Ok(false) => format!("{} is not a stored node", node_id(num)),
                    Err(e) => {
                        self.store_failed(&e);
                        format!("could not pin {}: {e}", node_id(num))
                    }
                }
            }
            Command::Reconnect => {
                self.link.reconnect().await;
                "reconnecting".to_string()
            }
            Command::Quit => return,
        };
        log::info!(target: "keysync::engine", "{message}");
        let now = SystemTime::now();
        self.snapshot
            .send_modify(|s| s.notice = Some((now, message)));
    }

    async fn decide_key(&mut self, cmd: Command, num: u32) -> String {
        let accept = matches!(cmd, Command::AcceptKey(_));
        let now = SystemTime::now();
        let result = self
            .store
            .call(move |s| {
                let r = if accept {
                    s.accept(num, now)?
                } else {
                    s.reject(num, now)?
                };
                if r.is_ok() && !accept {
                    // The trusted key is unchanged, so the fingerprint is too: clear the cache
                    // so the next check pushes it back over the rejected one.
                    s.clear_cache()?;
                }
                Ok(r)
            })
            .await;
        self.nodes_dirty = true;
        match result {
            Ok(Ok(key)) if accept => {
                self.trusted.send_if_modified(|t| t.rekey(num, key));
                format!(
                    "accepted the new key of {} ({}): it is trusted now",
                    node_id(num),
                    sync::key_fingerprint(&key)
                )
            }
            Ok(Ok(key)) => {
                self.snapshot.send_modify(|s| s.sync.cache = None);
                format!(
                    "rejected the new key of {} ({}): the trusted key goes back to the radio at the next check",
                    node_id(num),
                    sync::key_fingerprint(&key)
                )
            }
            Ok(Err(why)) => why.to_string(),
            Err(e) => {
                self.store_failed(&e);
                format!("could not record the decision: {e}")
            }
        }
    }

    async fn on_link_change(&mut self) {
        let status = self.status.borrow_and_update().clone();
        let fresh: Vec<(SystemTime, String, String)> = status
            .changes_since(self.link_changes_recorded)
            .map(|(_, e)| (e.at, e.state.label().to_string(), e.state.to_string()))
            .collect();
        self.link_changes_recorded = status.changes;
        let traffic = Traffic::read(&self.counters);
        self.snapshot.send_modify(|s| {
            s.link = status;
            s.traffic = traffic;
        });
        if fresh.is_empty() {
            return;
        }
        let saved = self
            .store
            .call(move |s| {
                for (at, state, detail) in &fresh {
                    s.record_link_event(*at, state, detail)?;
                }
                Ok(())
            })
            .await;
        if let Err(e) = saved {
            self.store_failed(&e);
        }
    }

    async fn refresh(&mut self) {
        let traffic = Traffic::read(&self.counters);
        let clients = self.clients.as_ref().map(|c| c.borrow().clone());
        let pushes = self.writes.pushes.load(Ordering::Relaxed);
        let unfavourites = self.writes.unfavourites.load(Ordering::Relaxed);
        let lora_restarts = self.writes.lora_restarts.load(Ordering::Relaxed);
        self.count_flash_writes(pushes + unfavourites).await;
        let mqtt = self.mqtt.as_ref().map(|m| {
            let mut status = m.status.borrow().clone();
            status.counts.no_room = self.mqtt_no_room;
            status
        });
        self.snapshot.send_if_modified(|s| {
            let totals = &mut s.sync.totals;
            let written = (pushes, unfavourites, lora_restarts);
            let mut changed = (totals.pushes, totals.unfavourites, totals.lora_restarts) != written;
            (totals.pushes, totals.unfavourites, totals.lora_restarts) = written;
            changed |= s.traffic != traffic || s.mqtt != mqtt;
            s.traffic = traffic;
            s.mqtt = mqtt;
            if let Some(clients) = clients {
                changed |= s.clients != clients;
                s.clients = clients;
            }
            changed
        });
        if !self.nodes_dirty && !self.patches.is_empty() {
            self.nodes_dirty = !self.apply_patches();
        }
        self.mqtt_log.flush(self.max_unheard());
        if self.nodes_dirty {
            self.refresh_store_view().await;
        }
    }

    fn patch(&mut self, num: u32, patch: ViewPatch) {
        self.patches.entry(num).or_default().merge(patch);
    }

    /// Applies the pending patches to the snapshot's rows in place; false when a patched node
    /// has no row yet (a full reload is needed).
    fn apply_patches(&mut self) -> bool {
        let patches = std::mem::take(&mut self.patches);
        let backing_off = self.backing_off();
        let mirror = self.mirror.as_deref();
        let pushed = &self.pushed_last;
        let mut all_found = true;
        self.snapshot.send_modify(|s| {
            let nodes = Arc::make_mut(&mut s.nodes);
            for (num, patch) in patches {
                let Ok(i) = nodes.binary_search_by_key(&num, |n| n.record.num) else {
                    all_found = false;
                    continue;
                };
                let node = &mut nodes[i];
                patch.apply(&mut node.record);
                node.radio = radio_key(&node.record, mirror, pushed, backing_off.contains(&num));
            }
        });
        all_found
    }

    /// Reads the store's count of the last hour's flash writes when keysync wrote since the last
    /// count, or once a minute (writes age out of the hour).
    async fn count_flash_writes(&mut self, written: u64) {
        const RECOUNT: Duration = Duration::from_secs(60);
        if self
            .flash_counted
            .is_some_and(|(at, then)| then == written && at.elapsed() < RECOUNT)
        {
            return;
        }
        self.flash_counted = Some((Instant::now(), written));
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        match self
            .store
            .call(move |s| s.flash_writes_since(hour_ago))
            .await
        {
            Ok(n) => {
                let n = n as u64;
                self.snapshot
                    .send_if_modified(|s| s.sync.flash_writes_last_hour.replace(n) != Some(n));
            }
            Err(e) => self.store_failed(&e),
        }
    }

    /// Reloads the node list (and the cache) from the store into the snapshot.
    async fn refresh_store_view(&mut self) {
        self.nodes_dirty = false;
        self.patches.clear();
        let mirror = self.mirror.clone();
        let pushed = self.pushed_last.clone();
        let backing_off = self.backing_off();
        let partner_since = SystemTime::now()
            .checked_sub(self.config.sync.dm_window)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let loaded = self
            .store
            .call(move |s| {
                let mut trusted = BTreeMap::new();
                let mut partners = HashSet::new();
                let nodes = s.nodes_as(|record| {
                    if let Some(node) = record.trusted_node() {
                        trusted.insert(record.num, node);
                        if record.pinned || record.last_dm.is_some_and(|t| t >= partner_since) {
                            partners.insert(record.num);
                        }
                    }
                    NodeView {
                        radio: radio_key(
                            &record,
                            mirror.as_deref(),
                            &pushed,
                            backing_off.contains(&record.num),
                        ),
                        record,
                    }
                })?;
                Ok((nodes, (trusted, partners), s.cache()?))
            })
            .await;
        let (nodes, (trusted, partners), cache) = match loaded {
            Ok(v) => v,
            Err(e) => {
                self.store_failed(&e);
                return;
            }
        };
        let trusted = TrustedKeys::new(trusted);
        self.trusted.send_if_modified(|t| {
            let changed = *t != trusted;
            *t = trusted;
            changed
        });
        self.needs_state.set_partners(partners);
        self.snapshot.send_modify(|s| {
            s.nodes = Arc::new(nodes);
            s.sync.cache = cache;
        });
    }

    fn store_failed(&self, e: &sync::StoreCallError) {
        log::error!(target: "keysync::store", "{e}");
        let fault = e.clone();
        self.snapshot.send_modify(|s| s.store_error = Some(fault));
    }

    fn clear_store_error(&self) {
        self.snapshot
            .send_if_modified(|s| s.store_error.take().is_some());
    }
}

/// Every one of at least [`IGNORED_AFTER`] pushes checked against a node list was missing: the
/// radio ignores add_contact (a managed radio that does not say so, or one refusing contacts).
fn pushes_never_land(checked: usize, lost: usize) -> bool {
    checked >= IGNORED_AFTER && lost == checked
}

/// The report of a sync cut short because keysync stopped (SIGTERM, quit).
fn interrupted_report(trigger: Trigger, since: SystemTime, now: SystemTime) -> SyncReport {
    SyncReport {
        reason: format!("{}; keysync stopped before it finished", trigger.label()),
        error: Some("interrupted: keysync was stopped during the sync".into()),
        duration: now.duration_since(since).unwrap_or_default(),
        ..SyncReport::new(trigger, since)
    }
}

fn link_down_report(trigger: Trigger, state: &str) -> SyncReport {
    SyncReport {
        reason: format!("forced: {}", trigger.label()),
        error: Some(format!("the radio link is down ({state})")),
        ..SyncReport::new(trigger, SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_that_all_vanish_stop_pushing_but_a_few_losses_back_off_only() {
        assert!(pushes_never_land(3, 3));
        assert!(pushes_never_land(10, 10));
        assert!(
            !pushes_never_land(10, 9),
            "one landed: the radio takes contacts"
        );
        assert!(!pushes_never_land(2, 2), "too few to tell");
        assert!(!pushes_never_land(0, 0));
    }

    #[test]
    fn a_patched_row_is_the_row_the_store_would_load() {
        use radio::Source;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("k.db")).expect("opens");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let seen = |long: &str, short: &str, hw: i32, key: u8| NodeSeen {
            num: 0x1234,
            long_name: long.into(),
            short_name: short.into(),
            hw_model: hw,
            role: 0,
            public_key: vec![key; 32],
            source: Source::Mesh,
            is_favorite: false,
            flags: crate::radio::UserFlags::default(),
        };
        let load = |store: &Store| {
            store
                .nodes_as(|r| r)
                .expect("loads")
                .into_iter()
                .find(|r| r.num == 0x1234)
                .expect("the node")
        };
        store
            .learn(&seen("Ridge", "RDG", 9, 1), t0)
            .expect("learns");
        store.drop_favourite(0x1234, Some(at(1))).expect("removed");
        let mut row = load(&store);
        assert!(row.removed);
        // The trusted key with new names, then a NodeInfo without names: what the engine
        // patches (a first or different key reloads the rows instead).
        let mut patch = ViewPatch::default();
        let long = "Ridge Relay on the far side of the valley, solar";
        for (s, t) in [
            (seen("Ridge Relay", "RR", 43, 1), at(5)),
            (seen("", "", 0, 1), at(9)),
            (seen(long, "RDGE5", 0, 1), at(10)),
        ] {
            assert_eq!(store.learn(&s, t).expect("learns"), Learned::Same);
            patch.merge(ViewPatch::seen(&s, t));
        }
        let mut unheard = row.clone();
        patch.clone().apply(&mut unheard);
        assert!(
            unheard.removed,
            "a NodeInfo alone does not clear removed, as in the store"
        );
        store.note_heard(0x1234, at(11)).expect("heard");
        patch.merge(ViewPatch::heard(at(11)));
        patch.apply(&mut row);
        let reloaded = load(&store);
        assert_eq!(row.long_name, reloaded.long_name);
        assert_eq!(
            reloaded.long_name.len(),
            radio::LONG_NAME_MAX,
            "cut where it is learned"
        );
        assert_eq!(reloaded.short_name, "RDGE");
        assert_eq!(row.short_name, reloaded.short_name);
        assert_eq!(row.hw_model, reloaded.hw_model);
        assert_eq!(row.role, reloaded.role);
        assert_eq!(row.last_seen, reloaded.last_seen);
        assert_eq!(row.removed, reloaded.removed);
    }
}
