//! The sync rule and the sync runner.
//!
//! Pure parts first — [`fingerprint`], [`decide`], and the plan in `plan.rs` — tested with
//! plain values. Then [`run`], which only moves data: it gets the radio's node list (from the
//! handshake it just did, a nodes-only download, or the engine's live picture for a lazy push),
//! plans with the slot and flash budgets, carries the plan out one write at a time paced by
//! QueueStatus and a gap, and reports.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshtastic::protobufs::{FromRadio, NodeInfo, from_radio};
use rand::RngExt;
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, timeout_at};

pub mod needs;
pub mod schedule;

use super::codec::RadioFrame;
use super::link::{LinkNotice, LinkSender, Session};
use super::plan::{self, Mirror, Op, PlanInput, RadioNode, RadioTraits};
use super::radio::{self, NODES_ONLY_NONCE, NodeSeen, PublicKey, Source, node_id, valid_key};
use super::store::{FlashWrite, Learned, RunRecord, Store, StoreError, SyncCache, TrustedKey};
use crate::duration::compact;
pub use crate::model::{
    Fingerprint, Outcome, Trigger, fingerprint_sorted, key_fingerprint, short_hex,
};

/// Fingerprint of trusted keys (in any order).
pub fn fingerprint(keys: &[TrustedKey]) -> Fingerprint {
    let mut pairs: Vec<(u32, &PublicKey)> = keys.iter().map(|k| (k.num, &k.key)).collect();
    pairs.sort_unstable_by_key(|(num, _)| *num);
    fingerprint_sorted(pairs.into_iter().map(|(num, key)| (num, *key)))
}

/// Skip or sync, and why in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Skip { reason: String },
    Sync { forced: bool, reason: String },
}

/// The sync rule: skip when the stored keys are unchanged and the last full sync is younger
/// than the TTL; forced triggers ignore the cache.
pub fn decide(
    cache: Option<&SyncCache>,
    fingerprint: &Fingerprint,
    now: SystemTime,
    ttl: Duration,
    trigger: Trigger,
) -> Decision {
    if trigger.is_forced() {
        return Decision::Sync {
            forced: true,
            reason: format!("forced: {}", trigger.label()),
        };
    }
    let Some(cache) = cache else {
        return Decision::Sync {
            forced: false,
            reason: "no full sync on record (cache empty or cleared)".into(),
        };
    };
    let age = now.duration_since(cache.synced_at).unwrap_or_default();
    if cache.fingerprint != *fingerprint {
        return Decision::Sync {
            forced: false,
            reason: format!(
                "stored keys changed since the last full sync {} ago (fingerprint {} → {})",
                compact(age),
                short_hex(&cache.fingerprint),
                short_hex(fingerprint)
            ),
        };
    }
    if age >= ttl {
        return Decision::Sync {
            forced: false,
            reason: format!("last full sync {} ago ≥ TTL {}", compact(age), compact(ttl)),
        };
    }
    Decision::Skip {
        reason: format!(
            "fingerprint unchanged, last full sync {} ago < TTL {}",
            compact(age),
            compact(ttl)
        ),
    }
}

/// The radio's NodeDB as node records, from `node_info`s.
pub fn mirror_of<'a>(nodes: impl IntoIterator<Item = &'a NodeInfo>) -> Mirror {
    nodes
        .into_iter()
        .map(|n| {
            let key = n.user.as_ref().and_then(|u| valid_key(&u.public_key));
            (
                n.num,
                RadioNode {
                    key,
                    favourite: n.is_favorite,
                    ignored: n.is_ignored,
                    verified: n.is_key_manually_verified,
                    user: n.user.clone(),
                },
            )
        })
        .collect()
}

/// Why a run failed: a typed value inside the engine, words only in the report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreCallError),
    #[error("the node list download timed out after {after} ({received} nodes received)")]
    DownloadTimeout { after: String, received: usize },
    #[error("fell {0} frames behind the link during the download")]
    Lagged(u64),
    #[error("the link stopped")]
    LinkStopped,
    #[error("link lost {during}: {cause}")]
    LinkLost { during: &'static str, cause: String },
    #[error("the link reconnected {during}")]
    Reconnected { during: &'static str },
    #[error("{cause} after {done} of {total} writes")]
    Send {
        cause: String,
        done: usize,
        total: usize,
    },
}

/// One sync run, as reported to the views and recorded in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub started_at: SystemTime,
    pub trigger: Trigger,
    pub outcome: Outcome,
    pub reason: String,
    pub fingerprint: Fingerprint,
    /// Trusted keys in the store.
    pub known: u32,
    /// Trusted keys the radio held when the run looked.
    pub in_radio: u32,
    pub pushed: u32,
    /// Slots given back (remove_favorite_node).
    pub released: u32,
    /// Nodes whose key waits for the operator.
    pub conflicts: u32,
    /// Pushes the working set needs that wait for the flash budget, `max_pushes` or a slot.
    pub deferred: u32,
    /// Of those, the ones only `max_pushes` held back: the next check takes them, so the cache
    /// stays cold. (A spent flash budget or a full slot budget is not helped by syncing sooner.)
    pub deferred_max: u32,
    /// Nodes whose slot was given back in this run.
    pub released_nums: Vec<u32>,
    /// Trusted keys outside the working set that the radio does not hold: a normal state.
    pub stored_only: u32,
    /// Keys pushed by an earlier run that the radio still lacks (managed radio, verified
    /// conflict, or refused).
    pub still_missing: u32,
    /// Nodes whose push was lost by the radio: they back off.
    pub lost: Vec<u32>,
    /// Pushes of the previous run checked against this run's node list.
    pub verified_pushes: usize,
    /// Frames this run put on the wire.
    pub frames_sent: u32,
    pub duration: Duration,
    pub error: Option<String>,
    /// Nodes pushed in this run.
    pub pushed_keys: Vec<(u32, PublicKey)>,
    /// The radio's node list this run looked at (empty when skipped or failed early).
    pub mirror: Option<Arc<Mirror>>,
    /// The slot budget and working set in words, when the run planned.
    pub plan: Option<String>,
    /// Why nothing can be pushed to this radio, if so.
    pub blocked: Option<String>,
    /// Slots keysync may fill, and protected entries on the radio after the run.
    pub slots: u32,
    pub protected_after: u32,
    /// Entries the radio held after the run, as far as keysync can tell: the invariant keeps
    /// `protected_after` at most half of it.
    pub held_after: u32,
    /// The gateway has a router role: slots for pinned nodes, needs and DM partners only.
    pub router_role: bool,
    /// Slots given back in this run that restarted the radio's LoRa chip (2.6.8 – 2.7.x).
    pub lora_restarts: u32,
}

impl SyncReport {
    /// A report that has not run yet: failed until the run says otherwise.
    pub fn new(trigger: Trigger, started_at: SystemTime) -> Self {
        Self {
            started_at,
            trigger,
            outcome: Outcome::Failed,
            reason: String::new(),
            fingerprint: [0; 32],
            known: 0,
            in_radio: 0,
            pushed: 0,
            released: 0,
            conflicts: 0,
            deferred: 0,
            deferred_max: 0,
            released_nums: Vec::new(),
            stored_only: 0,
            still_missing: 0,
            lost: Vec::new(),
            verified_pushes: 0,
            frames_sent: 0,
            duration: Duration::ZERO,
            error: None,
            pushed_keys: Vec::new(),
            mirror: None,
            plan: None,
            blocked: None,
            slots: 0,
            protected_after: 0,
            held_after: 0,
            router_role: false,
            lora_restarts: 0,
        }
    }

    pub fn record(&self) -> RunRecord {
        RunRecord {
            started_at: self.started_at,
            outcome: self.outcome.label().into(),
            reason: self.reason.clone(),
            fingerprint: Some(self.fingerprint),
            known: self.known,
            in_radio: self.in_radio,
            pushed: self.pushed,
            conflicts: self.conflicts,
            deferred: self.deferred,
            duration: self.duration,
            error: self.error.clone(),
        }
    }

    /// One line for the log and `sync --once`.
    pub fn summary(&self) -> String {
        if self.outcome == Outcome::Skipped {
            return format!(
                "sync skipped — {}; known {}, nothing sent",
                self.reason, self.known
            );
        }
        let mut line = format!("sync {}", self.outcome);
        if let Some(err) = &self.error {
            let _ = write!(line, ": {err}");
        }
        let _ = write!(
            line,
            " — {}; known {}, in radio {}, pushed {}, conflicts {}, deferred {}",
            self.reason, self.known, self.in_radio, self.pushed, self.conflicts, self.deferred
        );
        if self.released > 0 {
            let _ = write!(line, ", slots given back {}", self.released);
        }
        if self.stored_only > 0 {
            let _ = write!(line, ", stored only {}", self.stored_only);
        }
        if self.still_missing > 0 {
            let _ = write!(line, ", still missing after a push {}", self.still_missing);
        }
        if let Some(blocked) = &self.blocked {
            let _ = write!(line, "; {blocked}");
        }
        let _ = write!(
            line,
            ", {} frames, {}",
            self.frames_sent,
            compact(self.duration)
        );
        line
    }
}

/// Tunables of the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncSettings {
    pub cache_ttl: Duration,
    /// At least this long between two flash writes: the QueueStatus comes before the radio's
    /// write is done.
    pub push_gap: Duration,
    pub max_pushes: u32,
    /// How long a nodes-only download may take.
    pub download_timeout: Duration,
    /// How long to wait for the QueueStatus that answers one add_contact.
    pub queue_timeout: Duration,
    /// Flash writes (pushes and slots given back) keysync may cause per hour.
    pub max_flash_writes: u32,
    /// `--key-slots`: protected entries keysync may hold; `None` for half the capacity.
    pub key_slots: Option<u32>,
    /// `--radio-capacity`: the radio's NodeDB size when the hardware does not tell.
    pub radio_capacity: Option<u32>,
    /// `--max-releases`: slots given back per hour where each restarts the LoRa chip (2.6.8 –
    /// 2.7.x).
    pub max_releases: u32,
    /// `--dm-window`: a node that exchanged a DM with the gateway within it is a DM partner
    /// (its key goes to the radio at once when it is heard without one).
    pub dm_window: Duration,
    /// 2.8: how long a favourite keysync made is kept before it goes back (a DM waiting for
    /// the key goes within seconds; the warm tier keeps the key after).
    pub release_hold: Duration,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(30 * 60),
            push_gap: Duration::from_secs(1),
            max_pushes: 32,
            download_timeout: Duration::from_secs(30),
            queue_timeout: Duration::from_secs(3),
            max_flash_writes: 60,
            key_slots: None,
            radio_capacity: None,
            max_releases: 4,
            dm_window: Duration::from_secs(7 * 24 * 3600),
            release_hold: Duration::from_secs(10 * 60),
        }
    }
}

/// The store shared between the engine's tasks; calls run on the blocking pool so a locked
/// database never stalls the link.
#[derive(Debug, Clone)]
pub struct StoreHandle(Arc<Mutex<Store>>);

impl StoreHandle {
    pub fn new(store: Store) -> Self {
        Self(Arc::new(Mutex::new(store)))
    }

    /// Runs `f` with the store on the blocking pool.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreCallError> {
        let inner = self.0.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut store = inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut store)
        })
        .await?;
        Ok(done?)
    }

    /// [`call`](Self::call) for the sync runner: a store failure as a [`SyncError`].
    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, SyncError> {
        Ok(self.call(f).await?)
    }
}

/// A store call that failed: the store said why, or the task that ran it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreCallError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking task panicked or was cancelled (its message: a `JoinError` is not `Clone`).
    #[error("the store's task failed: {0}")]
    Join(String),
}

impl From<tokio::task::JoinError> for StoreCallError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Join(e.to_string())
    }
}

/// Where a run gets the radio's node list.
#[derive(Debug, Clone)]
pub enum NodeSource {
    /// The handshake the link just did (no second download).
    Handshake,
    /// A nodes-only download (69421), or a full one on firmware before 2.6.8.
    Download,
    /// The engine's current picture of the radio, kept by live packets: a lazy push.
    Current(Arc<Mirror>),
}

/// Everything one run needs, owned, so that it can run on its own task.
#[derive(Debug)]
pub struct SyncJob {
    pub trigger: Trigger,
    pub session: Arc<Session>,
    /// Subscribed before the job was created, so no answer is missed.
    pub notices: broadcast::Receiver<LinkNotice>,
    pub sender: LinkSender,
    pub store: StoreHandle,
    pub settings: SyncSettings,
    pub nodes: NodeSource,
    pub traits: RadioTraits,
    /// Keys pushed by the previous run, to verify they arrived.
    pub pushed_before: Vec<(u32, PublicKey)>,
    /// Nodes backing off after the radio lost their push.
    pub backing_off: BTreeSet<u32>,
    /// Nodes that need a key now; more may arrive on `urgent_rx` while the run pushes, and go
    /// ahead of the rest.
    pub urgent: Vec<u32>,
    pub urgent_rx: Option<mpsc::Receiver<u32>>,
    /// Pushing stopped because earlier pushes never landed.
    pub pushes_ignored: Option<usize>,
    /// Told each node whose key was pushed, as soon as the radio took it.
    pub pushed_tx: Option<mpsc::UnboundedSender<u32>>,
    /// Counts every flash write as it goes on the wire.
    pub writes: Arc<super::stats::WriteCounters>,
}

struct RunState {
    started_at: SystemTime,
    started: Instant,
    frames_sent: u32,
}

/// Runs one sync decision and, if it says so, the sync.
pub async fn run(mut job: SyncJob) -> SyncReport {
    let state = RunState {
        started_at: SystemTime::now(),
        started: Instant::now(),
        frames_sent: 0,
    };
    let mut report = SyncReport::new(job.trigger, state.started_at);
    let result = execute(&mut job, &mut report, state).await;
    if let Err(error) = result {
        report.outcome = Outcome::Failed;
        report.error = Some(error.to_string());
    }
    report
}

/// What a run reads from the store once it has the radio's node list.
struct StoreView {
    pending: BTreeSet<u32>,
    ours: BTreeSet<u32>,
    removed: BTreeSet<u32>,
    /// Flash writes and releases in the last hour.
    writes: usize,
    releases: usize,
    /// 2.8: when the radio's NodeDB was last found reset.
    warm_since: Option<SystemTime>,
}

/// What the radio holds feeds the store first: new keys are trusted on first use, and a
/// different key becomes pending before the plan is made, so it is never overwritten. Then
/// what the plan needs is read in the same call.
async fn learn_and_read(
    job: &SyncJob,
    fresh: Option<&[NodeInfo]>,
    held: usize,
    now: SystemTime,
    report: &mut SyncReport,
) -> Result<StoreView, SyncError> {
    let own = job.session.my_node_num;
    let seen: Vec<NodeSeen> = fresh
        .into_iter()
        .flatten()
        .filter(|n| n.num != own)
        .filter_map(|n| {
            radio::node_seen(&FromRadio {
                id: 0,
                payload_variant: Some(from_radio::PayloadVariant::NodeInfo(n.clone())),
            })
        })
        .collect();
    let hour_ago = now.checked_sub(Duration::from_secs(3600)).unwrap_or(now);
    // 2.8: a node list of a handful is a NodeDB reset (or a new radio): its warm tier is empty.
    let warm = job.traits.warm_tier;
    let reset = warm && held <= (job.traits.capacity / 10).max(2);
    let (learned, (fp, known), view) = job
        .store
        .run(move |s| {
            let learned = s.learn_all(&seen, now)?;
            if reset {
                s.note_radio_reset(now)?;
            }
            let warm_since = if warm {
                Some(s.radio_reset_at()?.unwrap_or(SystemTime::UNIX_EPOCH))
            } else {
                None
            };
            let view = StoreView {
                pending: s.pending_nodes()?.into_iter().collect(),
                ours: s.our_favourites()?,
                removed: s.removed()?,
                writes: s.flash_writes_since(hour_ago)?,
                releases: s.releases_since(hour_ago)?,
                warm_since,
            };
            Ok((
                seen.into_iter().zip(learned).collect::<Vec<_>>(),
                s.trusted_fingerprint()?,
                view,
            ))
        })
        .await?;
    log_learned_in_bulk(&learned);
    report.fingerprint = fp;
    report.known = count(known);
    Ok(view)
}

/// Nodes this run does not push: backing off, removed by the radio's operator (before, or
/// found removed by this very run) unless urgent, and pushes lost this run.
fn held_back(
    job: &SyncJob,
    removed: &BTreeSet<u32>,
    removed_now: &[u32],
    report: &SyncReport,
) -> BTreeSet<u32> {
    let mut held_back: BTreeSet<u32> = job.backing_off.iter().copied().collect();
    held_back.extend(
        removed
            .iter()
            .chain(removed_now)
            .filter(|n| !job.urgent.contains(n)),
    );
    held_back.extend(report.lost.iter().copied());
    held_back
}

/// What the radio holds after the run, as the report tells it; the picture goes with it.
fn report_after(own: u32, mirror: Mirror, report: &mut SyncReport) {
    report.protected_after = count(
        mirror
            .iter()
            .filter(|(n, r)| **n != own && r.is_protected())
            .count(),
    );
    report.held_after = count(mirror.len());
    report.mirror = Some(Arc::new(mirror));
}

async fn execute(
    job: &mut SyncJob,
    report: &mut SyncReport,
    mut state: RunState,
) -> Result<(), SyncError> {
    let trigger = job.trigger;
    // Only the fingerprint and the count leave the store's thread: most checks stop here.
    let (fp, known, cache) = job
        .store
        .run(|s| {
            let (fp, known) = s.trusted_fingerprint()?;
            Ok((fp, known, s.cache()?))
        })
        .await?;
    report.fingerprint = fp;
    report.known = count(known);
    if !settle(job, report, cache.as_ref(), &fp) {
        report.duration = state.started.elapsed();
        return Ok(());
    }

    let own = job.session.my_node_num;
    let (mut mirror, fresh) = node_list(job, &mut state, report).await?;

    let now = SystemTime::now();
    let view = learn_and_read(job, fresh.as_deref(), mirror.len(), now, report).await?;
    let (pending, ours, removed) = (view.pending, view.ours, view.removed);

    let (mut ours, removed_now) = if fresh.is_some() {
        reconcile_favourites(job, &mirror, ours, now, report).await?
    } else {
        (ours, Vec::new())
    };
    let held_back = held_back(job, &removed, &removed_now, report);
    let inputs = Inputs {
        urgent: job.urgent.clone(),
        trusted: Vec::new(),
        pending,
        held_back,
        writes: view.writes,
        pushes: 0,
        releases: view.releases,
        warm_since: view.warm_since,
        held: mirror.len(),
    };
    let (inputs, first) = first_plan(job, inputs, &mirror, &ours).await?;
    report_start(job, &first, inputs.writes, report);
    let applied = apply(
        job,
        inputs,
        first,
        &mut mirror,
        &mut ours,
        &mut state,
        report,
    )
    .await;
    report.frames_sent = state.frames_sent;
    report_after(own, mirror, report);
    applied?;
    if !trigger.is_lazy() {
        // A lazy push answers one need; the cache belongs to the full picture.
        settle_cache(job, report.fingerprint, report).await?;
    }
    report.duration = state.started.elapsed();
    Ok(())
}

/// The radio's node list for this run: the handshake's, a download, or the engine's live
/// picture (a lazy push). The list itself only when it is fresh from the radio.
async fn node_list(
    job: &mut SyncJob,
    state: &mut RunState,
    report: &mut SyncReport,
) -> Result<(Mirror, Option<Vec<NodeInfo>>), SyncError> {
    Ok(match job.nodes.clone() {
        NodeSource::Handshake => {
            report.reason.push_str("; node list from the handshake");
            (
                mirror_of(&job.session.nodes),
                Some(job.session.nodes.clone()),
            )
        }
        NodeSource::Download => {
            let nodes = download(job, state).await;
            report.frames_sent = state.frames_sent;
            report.duration = state.started.elapsed();
            let nodes = nodes?;
            (mirror_of(&nodes), Some(nodes))
        }
        NodeSource::Current(mirror) => (Mirror::clone(&mirror), None),
    })
}

/// A run that left nothing of the working set waiting makes the cache fresh; otherwise the
/// reason says what waits, and the next check syncs.
async fn settle_cache(
    job: &SyncJob,
    fp: Fingerprint,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    if report.deferred_max == 0 {
        let cache = SyncCache {
            fingerprint: fp,
            synced_at: SystemTime::now(),
        };
        job.store.run(move |s| s.set_cache(cache)).await
    } else {
        let _ = write!(
            report.reason,
            "; {} pushes of the working set wait for the next run",
            report.deferred_max
        );
        Ok(())
    }
}

/// Decides whether the run syncs, and says why in the report; false when it is skipped.
fn settle(
    job: &SyncJob,
    report: &mut SyncReport,
    cache: Option<&SyncCache>,
    fp: &Fingerprint,
) -> bool {
    let trigger = job.trigger;
    let decision = if trigger.is_lazy() {
        Decision::Sync {
            forced: false,
            reason: format!(
                "key needed now: {} ({})",
                plan::ids(&job.urgent),
                trigger.label()
            ),
        }
    } else {
        decide(
            cache,
            fp,
            SystemTime::now(),
            job.settings.cache_ttl,
            trigger,
        )
    };
    match decision {
        Decision::Skip { reason } => {
            report.outcome = Outcome::Skipped;
            report.reason = reason;
            false
        }
        Decision::Sync { forced, reason } => {
            report.outcome = if forced {
                Outcome::Forced
            } else {
                Outcome::Synced
            };
            report.reason = reason;
            true
        }
    }
}

/// What a run plans from, kept current as it writes.
struct Inputs {
    trusted: Vec<TrustedKey>,
    pending: BTreeSet<u32>,
    held_back: BTreeSet<u32>,
    /// Nodes that need their key now, first.
    urgent: Vec<u32>,
    /// Flash writes in the last hour, this run's included.
    writes: usize,
    /// Pushes this run made.
    pushes: usize,
    /// Slots given back in the last hour, this run's included.
    releases: usize,
    /// 2.8: when the radio's NodeDB was last found reset (keys pushed since are warm).
    warm_since: Option<SystemTime>,
    /// Entries the radio surely holds: the node list's, plus the new nodes pushed while it
    /// surely had room (beyond that a new node evicts another).
    held: usize,
}

/// What a run plans with besides the keys: owned, so a plan can be made on the store's thread.
#[derive(Debug, Clone)]
struct PlanParams {
    own: u32,
    traits: RadioTraits,
    key_slots: Option<usize>,
    max_writes: usize,
    max_pushes: usize,
    pushes_ignored: Option<usize>,
    partner_since: SystemTime,
    /// Releases allowed per hour where each restarts the LoRa chip.
    max_releases: Option<usize>,
    hold_since: SystemTime,
}

impl PlanParams {
    fn of(job: &SyncJob) -> Self {
        let now = SystemTime::now();
        let ago = |d: Duration| now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH);
        Self {
            partner_since: ago(job.settings.dm_window),
            max_releases: job
                .traits
                .release_restarts_lora
                .then_some(job.settings.max_releases as usize),
            // No push and release within the hour below 2.8 (a release restarts the LoRa chip);
            // on 2.8 a push serves a DM within seconds, so a short hold.
            hold_since: ago(if job.traits.release_restarts_lora {
                Duration::from_secs(3600)
            } else {
                job.settings.release_hold
            }),

            own: job.session.my_node_num,
            traits: job.traits.clone(),
            key_slots: job.settings.key_slots.map(|n| n as usize),
            max_writes: usize::try_from(job.settings.max_flash_writes).unwrap_or(usize::MAX),
            max_pushes: usize::try_from(job.settings.max_pushes).unwrap_or(usize::MAX),
            pushes_ignored: job.pushes_ignored,
        }
    }
}

/// Plans from where things stand now.
fn plan_step(
    params: &PlanParams,
    inputs: &Inputs,
    mirror: &Mirror,
    ours: &BTreeSet<u32>,
) -> plan::Plan {
    plan::plan(&PlanInput {
        trusted: &inputs.trusted,
        pending: &inputs.pending,
        mirror,
        own: params.own,
        traits: &params.traits,
        key_slots: params.key_slots,
        ours,
        held_back: &inputs.held_back,
        urgent: &inputs.urgent,
        flash_left: params.max_writes.saturating_sub(inputs.writes),
        max_pushes: params.max_pushes.saturating_sub(inputs.pushes),
        pushes_ignored: params.pushes_ignored,
        partner_since: params.partner_since,
        releases_left: params
            .max_releases
            .map(|max| max.saturating_sub(inputs.releases)),
        hold_since: params.hold_since,
        warm_since: inputs.warm_since,
        held: Some(inputs.held),
    })
}

/// The first plan of a run, made on the store's thread with every trusted key; only the keys
/// later steps can choose among (the working set and keysync's favourites) come back.
async fn first_plan(
    job: &SyncJob,
    mut inputs: Inputs,
    mirror: &Mirror,
    ours: &BTreeSet<u32>,
) -> Result<(Inputs, plan::Plan), SyncError> {
    let params = PlanParams::of(job);
    let mirror = mirror.clone();
    let ours = ours.clone();
    job.store
        .run(move |s| {
            inputs.trusted = s.trusted()?;
            let first = plan_step(&params, &inputs, &mirror, &ours);
            let keep: BTreeSet<u32> = first.working.iter().chain(ours.iter()).copied().collect();
            inputs.trusted.retain(|k| keep.contains(&k.num));
            inputs.trusted.shrink_to_fit();
            Ok((inputs, first))
        })
        .await
}

/// What the radio held when the run planned: the report's picture and the warnings.
fn report_start(job: &SyncJob, first: &plan::Plan, writes: usize, report: &mut SyncReport) {
    report.in_radio = count(first.present);
    report.stored_only = count(first.stored_only);
    report.conflicts = count(first.conflicts.len());
    report.slots = count(first.budget.slots);
    report.router_role = first.router_role;
    report.blocked = first.blocked.as_ref().map(ToString::to_string);
    report.plan = Some(plan::describe(first));
    if let Some(clamped) = &first.budget.clamped {
        log::warn!(target: "keysync::sync", "{clamped}");
    }
    if first.deferred_flash > 0 {
        log::warn!(target: "keysync::sync",
            "flash budget spent ({writes} writes in the last hour, at most {}): {} pushes wait",
            job.settings.max_flash_writes, first.deferred_flash);
    }
}

/// What the run left: what waits, and what stays stored only.
fn report_end(last: &plan::Plan, report: &mut SyncReport) {
    report.deferred = count(last.deferred());
    report.deferred_max = count(last.deferred_max);
}

/// keysync's favourites against a fresh node list: one that vanished was removed by someone
/// (a favourite is never evicted), one that lost its favourite was released by someone. Also
/// finds the last run's pushes that the radio did not keep. Returns the favourites it holds.
async fn reconcile_favourites(
    job: &SyncJob,
    mirror: &Mirror,
    ours: BTreeSet<u32>,
    now: SystemTime,
    report: &mut SyncReport,
) -> Result<(BTreeSet<u32>, Vec<u32>), SyncError> {
    let r = plan::reconcile(&ours, mirror, job.traits.capacity);
    let removed_now = if r.reset {
        Vec::new()
    } else {
        r.removed.clone()
    };
    if r.reset {
        log::warn!(target: "keysync::sync",
            "the radio's NodeDB was reset ({} nodes left): restoring the working set", mirror.len());
    } else if !r.removed.is_empty() {
        log::warn!(target: "keysync::sync",
            "{} removed from the radio by someone (keysync's favourites are never evicted): not pushed again until heard",
            plan::ids(&r.removed));
    }
    let gone: Vec<u32> = r
        .removed
        .iter()
        .chain(&r.released_by_others)
        .copied()
        .collect();
    if !gone.is_empty() {
        let removed_now = removed_now.clone();
        job.store
            .run(move |s| {
                for num in gone {
                    let at = removed_now.contains(&num).then_some(now);
                    s.drop_favourite(num, at)?;
                }
                Ok(())
            })
            .await?;
    }
    report.verified_pushes = job.pushed_before.len();
    // A push that vanished with its node was removed by someone, not lost by the radio.
    report.lost = lost_pushes(&job.pushed_before, mirror)
        .into_iter()
        .filter(|n| !r.removed.contains(n))
        .collect();
    report.still_missing = count(report.lost.len());
    if !report.lost.is_empty() {
        log::warn!(target: "keysync::sync",
            "{} pushed last run still not in the radio: it cannot keep them (managed, verified conflict or refused); they back off",
            plan::ids(&report.lost));
    }
    Ok((r.held, removed_now))
}

/// Keys pushed by the last run that the node list still lacks.
fn lost_pushes(pushed: &[(u32, PublicKey)], mirror: &Mirror) -> Vec<u32> {
    pushed
        .iter()
        .filter(|(num, key)| mirror.get(num).and_then(|n| n.key) != Some(*key))
        .map(|(num, _)| *num)
        .collect()
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The node list: a nodes-only download (own node_info, the others, `config_complete_id =
/// 69421`), or on firmware without it a full download with a fresh nonce.
async fn download(job: &mut SyncJob, state: &mut RunState) -> Result<Vec<NodeInfo>, SyncError> {
    let nonce = if job.traits.can_take_contacts {
        NODES_ONLY_NONCE
    } else {
        radio::config_nonce(|| rand::rng().random())
    };
    job.sender
        .send(job.session.id, radio::want_config(nonce))
        .await
        .map_err(|e| SyncError::Send {
            cause: e.to_string(),
            done: 0,
            total: 1,
        })?;
    state.frames_sent += 1;
    let deadline = Instant::now() + job.settings.download_timeout;
    let mut nodes = Vec::new();
    // Until the link says the request went out, frames belong to another download (the
    // proxy's config-only refresh, which the link lets finish first) or are live updates.
    let mut asked = false;
    loop {
        let Some(notice) = next_notice(job, deadline, "during the download").await? else {
            return Err(SyncError::DownloadTimeout {
                after: compact(job.settings.download_timeout),
                received: nodes.len(),
            });
        };
        match notice {
            Heard::Download(n) => asked |= n == nonce,
            Heard::Frame(frame) if asked => match &frame.payload_variant {
                Some(from_radio::PayloadVariant::NodeInfo(node)) => nodes.push(node.clone()),
                Some(from_radio::PayloadVariant::ConfigCompleteId(n)) if *n == nonce => {
                    return Ok(nodes);
                }
                _ => {}
            },
            Heard::Frame(_) | Heard::Contact => {}
            Heard::Lagged(n) => return Err(SyncError::Lagged(n)),
        }
    }
}

/// Carries out the plan one write at a time, paced by the radio's QueueStatus and the push gap
/// (at least one gap between two flash writes). Before each write the plan is made again from
/// where things stand, so a node that needs its key now (`urgent_rx`) goes ahead of the rest and
/// every write counts against the same budgets.
async fn apply(
    job: &mut SyncJob,
    mut inputs: Inputs,
    first: plan::Plan,
    mirror: &mut Mirror,
    ours: &mut BTreeSet<u32>,
    state: &mut RunState,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    let params = PlanParams::of(job);
    let mut recent_ids: Vec<u32> = Vec::new();
    let mut done = 0;
    let mut first = Some(first);
    loop {
        let step = if let Some(plan) = first.take() {
            plan
        } else {
            take_urgent(job, &mut inputs).await?;
            plan_step(&params, &inputs, mirror, ours)
        };
        report_end(&step, report);
        let Some(op) = step.ops.into_iter().next() else {
            return Ok(());
        };
        if done > 0 {
            tokio::time::sleep(job.settings.push_gap).await;
        }
        let id = send_op(job, &op, &mut recent_ids, done).await?;
        state.frames_sent += 1;
        done += 1;
        account(job, &op, &params, &mut inputs, mirror, ours, report).await?;
        wait_for_queue(job, id).await?;
        if let (Op::Push(_), Some(tx)) = (&op, &job.pushed_tx) {
            let _ = tx.send(op.num());
        }
    }
}

/// Sends `op` to the radio under a packet id not used in this run; the id. `done` ops went
/// before it.
async fn send_op(
    job: &SyncJob,
    op: &Op,
    recent_ids: &mut Vec<u32>,
    done: usize,
) -> Result<u32, SyncError> {
    let own = job.session.my_node_num;
    let id = loop {
        let id = rand::rng().random_range(1..u32::MAX);
        if !recent_ids.contains(&id) {
            break id;
        }
    };
    recent_ids.push(id);
    let msg = match op {
        Op::Push(contact) => radio::add_contact(own, id, contact),
        Op::Release(num) => radio::remove_favorite(own, id, *num),
    };
    job.sender
        .send(job.session.id, msg)
        .await
        .map_err(|e| SyncError::Send {
            cause: e.to_string(),
            done,
            total: done + 1,
        })?;
    Ok(id)
}

/// What a sent `op` changes: the run's inputs and picture of the radio, the report, the
/// store's flash-write record and the counters (counted once the store holds the write, or
/// failed to, so that a reader who sees the count finds the write in the store's last hour).
async fn account(
    job: &SyncJob,
    op: &Op,
    params: &PlanParams,
    inputs: &mut Inputs,
    mirror: &mut Mirror,
    ours: &mut BTreeSet<u32>,
    report: &mut SyncReport,
) -> Result<(), SyncError> {
    inputs.writes += 1;
    let num = op.num();
    let grows = matches!(op, Op::Push(_))
        && !mirror.contains_key(&num)
        && params.traits.capacity_sure
        && inputs.held < params.traits.capacity;
    inputs.held += usize::from(grows);
    let write = record_op(job, op, mirror, ours, report);
    let now = SystemTime::now();
    if matches!(op, Op::Push(_)) {
        inputs.pushes += 1;
        inputs.urgent.retain(|n| *n != num);
        // The run's later steps see the push as the store will: just made, held.
        if let Some(key) = inputs.trusted.iter_mut().find(|k| k.num == num) {
            key.last_pushed = Some(now);
        }
    } else {
        inputs.releases += 1;
    }
    let recorded = job
        .store
        .run(move |s| s.note_flash_write(num, write, now))
        .await;
    let written = match op {
        Op::Push(_) => &job.writes.pushes,
        Op::Release(_) => &job.writes.unfavourites,
    };
    written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if matches!(op, Op::Release(_)) && job.traits.release_restarts_lora {
        job.writes
            .lora_restarts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    recorded
}

/// Nodes that became urgent while the run went on go first; their keys are read from the store
/// when the run's list does not hold them.
async fn take_urgent(job: &mut SyncJob, inputs: &mut Inputs) -> Result<(), SyncError> {
    let Some(rx) = job.urgent_rx.as_mut() else {
        return Ok(());
    };
    let mut fresh = Vec::new();
    while let Ok(num) = rx.try_recv() {
        if !inputs.urgent.contains(&num) && !fresh.contains(&num) {
            crate::log_limited!(info, "urgent", burst 10, target: "keysync::sync", "{} needs its key now: ahead of the rest", radio::node_id(num));
            fresh.push(num);
        }
    }
    let missing: Vec<u32> = fresh
        .iter()
        .copied()
        .filter(|n| !inputs.trusted.iter().any(|k| k.num == *n))
        .collect();
    if !missing.is_empty() {
        let keys = job.store.run(move |s| s.trusted_of(&missing)).await?;
        inputs.trusted.extend(keys);
    }
    for num in fresh {
        inputs.urgent.insert(0, num);
    }
    Ok(())
}

/// What a write did to the radio, as keysync keeps track of it.
fn record_op(
    job: &SyncJob,
    op: &Op,
    mirror: &mut Mirror,
    ours: &mut BTreeSet<u32>,
    report: &mut SyncReport,
) -> FlashWrite {
    let num = op.num();
    let favourite = job.traits.favourites;
    match op {
        Op::Push(contact) => {
            report.pushed += 1;
            report.pushed_keys.push((num, contact.key));
            let node = mirror.entry(num).or_default();
            // Only a node nobody protected becomes keysync's: a favourite, ignore or verified
            // key the operator set stays theirs, never released by keysync.
            let made = favourite && !node.is_protected();
            node.key = Some(contact.key);
            node.favourite |= favourite;
            node.verified |= job.traits.marks_verified;
            if made {
                ours.insert(num);
            }
            log::info!(target: "keysync::sync", "add_contact {} sent", radio::node_label(num, &contact.long_name));
            FlashWrite::Push { favourite: made }
        }
        Op::Release(_) => {
            report.released += 1;
            report.released_nums.push(num);
            if let Some(node) = mirror.get_mut(&num) {
                node.favourite = false;
            }
            ours.remove(&num);
            if job.traits.release_restarts_lora {
                report.lora_restarts += 1;
                log::warn!(target: "keysync::sync",
                    "remove_favorite_node {} sent: slot given back; firmware {} restarts its LoRa chip for it (packets in flight are lost)",
                    radio::node_id(num), job.traits.firmware);
            } else {
                log::info!(target: "keysync::sync", "remove_favorite_node {} sent: slot given back", radio::node_id(num));
            }
            FlashWrite::Unfavourite
        }
    }
}

/// What the link said while a run waits on it, within the session the run started in.
enum Heard {
    Download(u32),
    Frame(Arc<RadioFrame>),
    /// The run fell this many notices behind the link.
    Lagged(u64),
    /// A contact went to the radio (this run's own push, or a proxy client's).
    Contact,
}

/// The link's next notice before `deadline` (`None` once it passes). The session ending or a
/// new one starting ends the run, as an error saying what it was `doing`.
async fn next_notice(
    job: &mut SyncJob,
    deadline: Instant,
    doing: &'static str,
) -> Result<Option<Heard>, SyncError> {
    let Ok(received) = timeout_at(deadline, job.notices.recv()).await else {
        return Ok(None);
    };
    match received {
        Err(broadcast::error::RecvError::Lagged(n)) => Ok(Some(Heard::Lagged(n))),
        Err(broadcast::error::RecvError::Closed) => Err(SyncError::LinkStopped),
        Ok(LinkNotice::Down(cause)) => Err(SyncError::LinkLost {
            during: doing,
            cause: cause.to_string(),
        }),
        Ok(LinkNotice::Up(_)) => Err(SyncError::Reconnected { during: doing }),
        Ok(LinkNotice::Download(n)) => Ok(Some(Heard::Download(n))),
        Ok(LinkNotice::Frame(frame)) => Ok(Some(Heard::Frame(frame))),
        Ok(LinkNotice::Contact(_)) => Ok(Some(Heard::Contact)),
    }
}

/// Waits for the QueueStatus answering packet `id`, and while the radio's queue is full, for
/// one with room. Neither is guaranteed to come: each wait ends after `queue_timeout`.
async fn wait_for_queue(job: &mut SyncJob, id: u32) -> Result<(), SyncError> {
    let deadline = Instant::now() + job.settings.queue_timeout;
    let mut answered = false;
    loop {
        let Some(notice) = next_notice(job, deadline, "while pushing").await? else {
            log::debug!(target: "keysync::sync",
                "no QueueStatus {} for packet {id:08x} within {}; going on",
                if answered { "with room" } else { "answer" },
                compact(job.settings.queue_timeout));
            return Ok(());
        };
        match notice {
            Heard::Download(_) | Heard::Lagged(_) | Heard::Contact => {}
            Heard::Frame(frame) => {
                let Some(from_radio::PayloadVariant::QueueStatus(q)) = &frame.payload_variant
                else {
                    continue;
                };
                if q.mesh_packet_id == id {
                    answered = true;
                }
                if answered && q.free > 0 {
                    return Ok(());
                }
                if answered {
                    log::debug!(target: "keysync::sync", "radio queue full ({} of {}); waiting", q.free, q.maxlen);
                }
            }
        }
    }
}

/// A sighting on the mesh (a NODEINFO_APP announcement) that the engine learns as it comes.
/// The radio's `node_info`s are not: they only arrive in downloads, and the sync run that asked
/// for a download (or took the handshake's list) learns them all in one transaction.
pub fn learnable(frame: &FromRadio) -> Option<NodeSeen> {
    radio::node_seen(frame).filter(|s| s.source == Source::Mesh)
}

/// Logs what learning a sighting did, when it is news. A key trusted on first use is logged at
/// `first_use` level: info for one heard on the mesh, debug inside a bulk learn that logs its own
/// summary.
pub fn log_learned(seen: &NodeSeen, learned: Learned, first_use: log::Level) {
    let who = radio::node_label(seen.num, &seen.long_name);
    let from = match seen.source {
        radio::Source::NodeDb => "the radio's NodeDB".to_string(),
        radio::Source::Mesh => "the mesh".to_string(),
        radio::Source::Import => "an import".to_string(),
        radio::Source::Downstream => "a downstream client".to_string(),
        radio::Source::Mqtt { gateway } => format!("the MQTT uplink of {}", node_id(gateway)),
        radio::Source::Fleet { gateway } => format!("the fleet ({})", node_id(gateway)),
    };
    match learned {
        Learned::FirstUse if first_use >= log::Level::Debug => {
            log::log!(target: "keysync::store", first_use, "learned the key of {who} from {from} (trusted on first use)");
        }
        Learned::FirstUse => {
            crate::log_limited!(info, "learned", burst 20, target: "keysync::store", "learned the key of {who} from {from} (trusted on first use)");
        }
        Learned::Pending { old, new } => {
            crate::log_limited!(warn, "pending", burst 20, target: "keysync::store",
            "{who} presents a different key via {from}: trusted {} vs new {} — pending your decision (a: accept, r: reject); nothing is pushed for it meanwhile",
            key_fingerprint(&old), key_fingerprint(&new));
        }
        Learned::Renumbered { from } => log::info!(target: "keysync::store",
            "{who} is {} under the number firmware 2.8 derives from its key: trust, pin and DM history carried over; the old number is retired",
            node_id(from)),
        Learned::Claimed { owner } => {
            crate::log_limited!(warn, "claimed", burst 20, target: "keysync::store",
            "{who} presents via {from} the key {} holds trusted — pending your decision (a: accept, r: reject); nothing is pushed for it meanwhile",
            node_id(owner));
        }
        Learned::Same
        | Learned::KnownOther(_)
        | Learned::NamesOnly
        | Learned::NotANode
        | Learned::NoRoom => {}
    }
}

/// Logs a bulk learn (the radio's node list): each node at debug, one summary at info.
pub fn log_learned_in_bulk(learned: &[(NodeSeen, Learned)]) {
    for (seen, outcome) in learned {
        log_learned(seen, *outcome, log::Level::Debug);
    }
    let first_use = learned
        .iter()
        .filter(|(_, l)| *l == Learned::FirstUse)
        .count();
    if first_use > 0 {
        log::info!(target: "keysync::store",
            "learned {first_use} {} from the radio's NodeDB (trusted on first use)",
            if first_use == 1 { "key" } else { "keys" });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(num: u32, k: u8) -> TrustedKey {
        TrustedKey {
            num,
            key: [k; 32],
            long_name: format!("n{num}"),
            short_name: String::new(),
            hw_model: 0,
            role: 0,
            last_seen: SystemTime::UNIX_EPOCH,
            pinned: false,
            last_dm: None,
            last_pushed: None,
            flags: crate::radio::UserFlags::default(),
        }
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn the_streamed_fingerprint_equals_the_one_of_the_list() {
        let keys = [key(9, 9), key(1, 1), key(5, 5)];
        let mut sorted: Vec<(u32, PublicKey)> = keys.iter().map(|k| (k.num, k.key)).collect();
        sorted.sort_unstable_by_key(|(n, _)| *n);
        assert_eq!(fingerprint(&keys), fingerprint_sorted(sorted));
    }

    #[test]
    fn fingerprint_covers_the_whole_key_and_ignores_order() {
        let a = fingerprint(&[key(1, 1), key(2, 2)]);
        assert_eq!(a, fingerprint(&[key(2, 2), key(1, 1)]));
        // Same length, one byte different: the old bot's `id:len(key)` missed this.
        let mut changed = key(2, 2);
        changed.key[31] = 3;
        assert_ne!(a, fingerprint(&[key(1, 1), changed]));
        assert_ne!(a, fingerprint(&[key(1, 1)]));
    }

    /// A cache from a full sync of keys with fingerprint `[7; 32]`, `secs` after the epoch.
    fn full_sync_at(secs: u64) -> ([u8; 32], SystemTime, SyncCache) {
        let fp = [7; 32];
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let cache = SyncCache {
            fingerprint: fp,
            synced_at: t0,
        };
        (fp, t0, cache)
    }

    #[test]
    fn skips_when_fingerprint_unchanged_and_cache_fresh() {
        let (fp, t0, cache) = full_sync_at(1_000_000);
        let d = decide(Some(&cache), &fp, t0 + 12 * MIN, 30 * MIN, Trigger::Check);
        assert_eq!(
            d,
            Decision::Skip {
                reason: "fingerprint unchanged, last full sync 12m00s ago < TTL 30m00s".into()
            }
        );
    }

    #[test]
    fn syncs_when_the_ttl_expired_or_keys_changed_or_no_cache() {
        let (fp, t0, cache) = full_sync_at(1_000_000);
        let expired = decide(Some(&cache), &fp, t0 + 30 * MIN, 30 * MIN, Trigger::Check);
        assert!(
            matches!(&expired, Decision::Sync { forced: false, reason } if reason.contains("≥ TTL"))
        );
        let changed = decide(Some(&cache), &[8; 32], t0 + MIN, 30 * MIN, Trigger::Check);
        assert!(
            matches!(&changed, Decision::Sync { forced: false, reason } if reason.contains("changed"))
        );
        let empty = decide(None, &fp, t0, 30 * MIN, Trigger::Check);
        assert!(matches!(empty, Decision::Sync { forced: false, .. }));
    }

    #[test]
    fn the_old_bot_s_240s_ttl_with_300s_checks_never_skips() {
        let (fp, t0, cache) = full_sync_at(1_000_000);
        let d = decide(
            Some(&cache),
            &fp,
            t0 + Duration::from_secs(300),
            Duration::from_secs(240),
            Trigger::Check,
        );
        assert!(
            matches!(d, Decision::Sync { .. }),
            "which is why the TTL is validated"
        );
    }

    #[test]
    fn forced_triggers_ignore_a_fresh_cache() {
        let (fp, t0, cache) = full_sync_at(0);
        for trigger in [Trigger::Startup, Trigger::Reconnect, Trigger::Operator] {
            let d = decide(Some(&cache), &fp, t0, 30 * MIN, trigger);
            assert!(
                matches!(d, Decision::Sync { forced: true, .. }),
                "{trigger:?}"
            );
        }
    }
}
