//! The sync rule and the sync runner.
//!
//! Pure parts first — [`fingerprint`], [`decide`], [`delta`] — tested with plain values. Then
//! [`run`], which only moves data: it gets the radio's node list (from the handshake it just
//! did, or a nodes-only download), pushes the trusted keys the radio lacks or holds differently
//! with `add_contact`, one at a time, paced by QueueStatus and a gap, and reports.

use std::collections::{BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshtastic::protobufs::{FromRadio, NodeInfo, from_radio};
use rand::RngExt;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio::time::{Instant, timeout_at};

use super::link::{LinkNotice, LinkSender, Session};
use super::radio::{self, NODES_ONLY_NONCE, NodeSeen, PublicKey, Source, valid_key};
use super::store::{RunRecord, Store, StoreError, SyncCache, TrustedKey};
use crate::duration::compact;

/// SHA-256 over the trusted `(node number, key)` pairs, sorted by node number.
pub type Fingerprint = [u8; 32];

/// Fingerprint of trusted keys (in any order).
pub fn fingerprint(keys: &[TrustedKey]) -> Fingerprint {
    let mut pairs: Vec<(u32, &PublicKey)> = keys.iter().map(|k| (k.num, &k.key)).collect();
    pairs.sort_unstable_by_key(|(num, _)| *num);
    let mut hash = Sha256::new();
    for (num, key) in pairs {
        hash.update(num.to_be_bytes());
        hash.update(key);
    }
    hash.finalize().into()
}

/// The first bytes of a fingerprint or key hash, for people.
pub fn short_hex(bytes: &[u8]) -> String {
    bytes.iter().take(4).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SHA-256 of one key, shortened: how a key is named in warnings.
pub fn key_fingerprint(key: &PublicKey) -> String {
    short_hex(&Sha256::digest(key))
}

/// What started a sync decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The first connection after keysync started.
    Startup,
    /// A connection after the link was lost.
    Reconnect,
    /// The operator asked (`f`, `keysync sync --once`).
    Operator,
    /// The periodic check.
    Check,
}

impl Trigger {
    pub fn is_forced(self) -> bool {
        !matches!(self, Self::Check)
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Reconnect => "reconnect",
            Self::Operator => "operator request",
            Self::Check => "periodic check",
        }
    }

    /// One word, for narrow panes.
    pub fn short(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Reconnect => "reconnect",
            Self::Operator => "operator",
            Self::Check => "check",
        }
    }
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

/// The radio's NodeDB as last seen: node number → its key, if it holds a valid one.
pub type Mirror = HashMap<u32, Option<PublicKey>>;

/// A mirror from `node_info`s.
pub fn mirror_of<'a>(nodes: impl IntoIterator<Item = &'a NodeInfo>) -> Mirror {
    nodes
        .into_iter()
        .map(|n| {
            let key = n.user.as_ref().and_then(|u| valid_key(&u.public_key));
            (n.num, key)
        })
        .collect()
}

/// What a sync must do to make the radio hold every trusted key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Missing keys first, then keys the radio holds differently; by node number within each.
    pub push: Vec<TrustedKey>,
    pub missing: usize,
    pub mismatched: usize,
    /// Trusted keys the radio already holds.
    pub present: usize,
    /// Nodes whose key waits for the operator: nothing is pushed for them.
    pub conflicts: Vec<u32>,
    /// Radio nodes with a valid key the store does not trust or hold as pending.
    pub unknown_to_store: Vec<u32>,
}

/// Compares the trusted keys with the radio's mirror. `own` (the radio's own node) is never
/// pushed. Missing keys come before mismatched ones, the most recently heard node first.
pub fn delta(trusted: &[TrustedKey], pending: &BTreeSet<u32>, mirror: &Mirror, own: u32) -> Delta {
    delta_upto(trusted, pending, mirror, own, usize::MAX)
}

/// [`delta`] with at most `max` keys to push (the first of them), so that a run that defers
/// most of 10 000 keys does not copy them all; the counts still cover every key.
pub fn delta_upto(
    trusted: &[TrustedKey],
    pending: &BTreeSet<u32>,
    mirror: &Mirror,
    own: u32,
    max: usize,
) -> Delta {
    let mut d = Delta::default();
    let mut missing: Vec<&TrustedKey> = Vec::new();
    let mut mismatched: Vec<&TrustedKey> = Vec::new();
    for key in trusted.iter().filter(|k| k.num != own) {
        if pending.contains(&key.num) {
            d.conflicts.push(key.num);
            continue;
        }
        match mirror.get(&key.num) {
            Some(Some(held)) if *held == key.key => d.present += 1,
            Some(Some(_)) => mismatched.push(key),
            Some(None) | None => missing.push(key),
        }
    }
    let trusted_nums: BTreeSet<u32> = trusted.iter().map(|k| k.num).collect();
    d.unknown_to_store = mirror
        .iter()
        .filter(|(num, key)| {
            key.is_some() && **num != own && !trusted_nums.contains(num) && !pending.contains(num)
        })
        .map(|(num, _)| *num)
        .collect();
    d.unknown_to_store.sort_unstable();
    // The most recently heard first: when `max_pushes` defers some, the nodes likeliest to
    // exchange direct messages get their keys back first.
    let order = |k: &&TrustedKey| (std::cmp::Reverse(k.last_seen), k.num);
    missing.sort_by_key(order);
    mismatched.sort_by_key(order);
    d.missing = missing.len();
    d.mismatched = mismatched.len();
    d.push = missing
        .into_iter()
        .chain(mismatched)
        .take(max)
        .cloned()
        .collect();
    d
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Skipped,
    Synced,
    Forced,
    Failed,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Skipped => "skipped",
            Self::Synced => "synced",
            Self::Forced => "forced",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
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
    /// Nodes whose key waits for the operator.
    pub conflicts: u32,
    /// Keys left for the next run by `max_pushes`.
    pub deferred: u32,
    /// Keys pushed by an earlier run that the radio still lacks (managed radio, verified
    /// conflict, or refused).
    pub still_missing: u32,
    /// Frames this run put on the wire.
    pub frames_sent: u32,
    pub duration: Duration,
    pub error: Option<String>,
    /// Nodes pushed in this run.
    pub pushed_keys: Vec<(u32, PublicKey)>,
    /// The radio's node list this run looked at (empty when skipped or failed early).
    pub mirror: Option<Arc<Mirror>>,
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
            conflicts: 0,
            deferred: 0,
            still_missing: 0,
            frames_sent: 0,
            duration: Duration::ZERO,
            error: None,
            pushed_keys: Vec::new(),
            mirror: None,
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
        if self.still_missing > 0 {
            let _ = write!(line, ", still missing after a push {}", self.still_missing);
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
    pub push_gap: Duration,
    pub max_pushes: u32,
    /// How long a nodes-only download may take.
    pub download_timeout: Duration,
    /// How long to wait for the QueueStatus that answers one add_contact.
    pub queue_timeout: Duration,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(30 * 60),
            push_gap: Duration::from_millis(200),
            max_pushes: 32,
            download_timeout: Duration::from_secs(30),
            queue_timeout: Duration::from_secs(3),
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
    ) -> Result<R, String> {
        let inner = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut store).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("store task failed: {e}"))?
    }
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
    /// Use the session's handshake node list instead of a fresh download.
    pub use_handshake: bool,
    /// Keys pushed by the previous run, to verify they arrived.
    pub pushed_before: Vec<(u32, PublicKey)>,
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
        report.error = Some(error);
    }
    report
}

async fn execute(
    job: &mut SyncJob,
    report: &mut SyncReport,
    mut state: RunState,
) -> Result<(), String> {
    let ttl = job.settings.cache_ttl;
    let trigger = job.trigger;
    // Only the fingerprint and the count outlive this: the list is read again after learning.
    let (fp, known, cache) = job
        .store
        .call(|s| {
            let trusted = s.trusted()?;
            Ok((fingerprint(&trusted), trusted.len(), s.cache()?))
        })
        .await?;
    report.fingerprint = fp;
    report.known = count(known);
    match decide(cache.as_ref(), &fp, SystemTime::now(), ttl, trigger) {
        Decision::Skip { reason } => {
            report.outcome = Outcome::Skipped;
            report.reason = reason;
            report.duration = state.started.elapsed();
            return Ok(());
        }
        Decision::Sync { forced, reason } => {
            report.outcome = if forced {
                Outcome::Forced
            } else {
                Outcome::Synced
            };
            report.reason = reason;
        }
    }

    let nodes = if job.use_handshake {
        report.reason.push_str("; node list from the handshake");
        job.session.nodes.clone()
    } else {
        let nodes = download(job, &mut state).await;
        report.frames_sent = state.frames_sent;
        report.duration = state.started.elapsed();
        nodes?
    };
    let mirror = mirror_of(&nodes);
    let own = job.session.my_node_num;

    // What the radio holds feeds the store first: new keys are trusted on first use, and a
    // different key becomes pending before the delta is taken, so it is never overwritten.
    let seen: Vec<NodeSeen> = nodes
        .iter()
        .filter(|n| n.num != own)
        .filter_map(|n| {
            radio::node_seen(&FromRadio {
                id: 0,
                payload_variant: Some(from_radio::PayloadVariant::NodeInfo(n.clone())),
            })
        })
        .collect();
    let now = SystemTime::now();
    let max = usize::try_from(job.settings.max_pushes).unwrap_or(usize::MAX);
    let mirror = Arc::new(mirror);
    let on_store = mirror.clone();
    let Plan {
        learned,
        fingerprint: fp,
        known,
        delta: d,
        deferred,
    } = job
        .store
        .call(move |s| plan(s, seen, now, &on_store, own, max))
        .await?;
    super::log_learned_in_bulk(&learned);
    report.fingerprint = fp;
    report.known = count(known);
    report.in_radio = count(d.present);
    report.conflicts = count(d.conflicts.len());
    report.still_missing = count(
        job.pushed_before
            .iter()
            .filter(|(num, key)| mirror.get(num).copied().flatten() != Some(*key))
            .count(),
    );
    if report.still_missing > 0 {
        log::warn!(target: "keysync::sync",
            "{} keys pushed last run are still not in the radio: is it managed (security.is_managed), are those nodes manually verified, or did it refuse?",
            report.still_missing);
    }
    report.deferred = count(deferred);
    report.mirror = Some(mirror);

    let pushed = push_all(job, &d.push, &mut state, report).await;
    report.frames_sent = state.frames_sent;
    pushed?;
    if report.deferred == 0 {
        let cache = SyncCache {
            fingerprint: fp,
            synced_at: SystemTime::now(),
        };
        job.store.call(move |s| s.set_cache(cache)).await?;
    } else {
        let _ = write!(
            report.reason,
            "; {} keys deferred to the next run",
            report.deferred
        );
    }
    report.duration = state.started.elapsed();
    Ok(())
}

/// What a run does, decided on the store's thread.
struct Plan {
    learned: Vec<(NodeSeen, super::store::Learned)>,
    fingerprint: Fingerprint,
    known: usize,
    /// With only this run's pushes: the deferred ones are read again by the next run.
    delta: Delta,
    deferred: usize,
}

/// Learns what the radio holds, then plans the pushes. The whole key list lives only here, on
/// the store's thread; what comes back is the plan.
fn plan(
    store: &mut Store,
    seen: Vec<NodeSeen>,
    now: SystemTime,
    mirror: &Mirror,
    own: u32,
    max: usize,
) -> Result<Plan, StoreError> {
    let learned = store.learn_all(&seen, now)?;
    let trusted = store.trusted()?;
    let pending: BTreeSet<u32> = store.pending_nodes()?.into_iter().collect();
    let delta = delta_upto(&trusted, &pending, mirror, own, max);
    let deferred = delta.missing + delta.mismatched - delta.push.len();
    Ok(Plan {
        learned: seen.into_iter().zip(learned).collect(),
        fingerprint: fingerprint(&trusted),
        known: trusted.len(),
        delta,
        deferred,
    })
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A nodes-only download: own node_info, the others, `config_complete_id = 69421`.
async fn download(job: &mut SyncJob, state: &mut RunState) -> Result<Vec<NodeInfo>, String> {
    job.sender
        .send(job.session.id, radio::want_config(NODES_ONLY_NONCE))
        .await
        .map_err(|e| e.to_string())?;
    state.frames_sent += 1;
    let deadline = Instant::now() + job.settings.download_timeout;
    let mut nodes = Vec::new();
    loop {
        let notice = match timeout_at(deadline, job.notices.recv()).await {
            Err(_) => {
                return Err(format!(
                    "nodes-only download timed out after {} ({} nodes received)",
                    compact(job.settings.download_timeout),
                    nodes.len()
                ));
            }
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                return Err(format!(
                    "fell {n} frames behind the link during the download"
                ));
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => return Err("the link stopped".into()),
            Ok(Ok(notice)) => notice,
        };
        match notice {
            LinkNotice::Down(cause) => {
                return Err(format!("link lost during the download: {cause}"));
            }
            LinkNotice::Up(_) => return Err("the link reconnected during the download".into()),
            LinkNotice::Frame(frame) => match &frame.payload_variant {
                Some(from_radio::PayloadVariant::NodeInfo(node)) => nodes.push(node.clone()),
                Some(from_radio::PayloadVariant::ConfigCompleteId(NODES_ONLY_NONCE)) => {
                    return Ok(nodes);
                }
                _ => {}
            },
        }
    }
}

/// Sends each add_contact, one at a time, paced by the radio's QueueStatus and the push gap.
async fn push_all(
    job: &mut SyncJob,
    keys: &[TrustedKey],
    state: &mut RunState,
    report: &mut SyncReport,
) -> Result<(), String> {
    let own = job.session.my_node_num;
    let mut recent_ids: Vec<u32> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(job.settings.push_gap).await;
        }
        let id = loop {
            let id = rand::rng().random_range(1..u32::MAX);
            if !recent_ids.contains(&id) {
                break id;
            }
        };
        recent_ids.push(id);
        let msg = radio::add_contact(own, id, &key.contact());
        job.sender
            .send(job.session.id, msg)
            .await
            .map_err(|e| format!("{e} after {} of {} pushes", report.pushed, keys.len()))?;
        state.frames_sent += 1;
        report.pushed += 1;
        report.pushed_keys.push((key.num, key.key));
        let num = key.num;
        let now = SystemTime::now();
        job.store.call(move |s| s.note_pushed(num, now)).await?;
        log::info!(target: "keysync::sync", "add_contact {} sent", radio::node_label(key.num, &key.long_name));
        wait_for_queue(job, id).await?;
    }
    Ok(())
}

/// Waits for the QueueStatus answering packet `id`, and while the radio's queue is full, for
/// one with room. Neither is guaranteed to come: each wait ends after `queue_timeout`.
async fn wait_for_queue(job: &mut SyncJob, id: u32) -> Result<(), String> {
    let deadline = Instant::now() + job.settings.queue_timeout;
    let mut answered = false;
    loop {
        let notice = match timeout_at(deadline, job.notices.recv()).await {
            Err(_) => {
                log::debug!(target: "keysync::sync",
                    "no QueueStatus {} for packet {id:08x} within {}; going on",
                    if answered { "with room" } else { "answer" },
                    compact(job.settings.queue_timeout));
                return Ok(());
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(broadcast::error::RecvError::Closed)) => return Err("the link stopped".into()),
            Ok(Ok(notice)) => notice,
        };
        match notice {
            LinkNotice::Down(cause) => return Err(format!("link lost while pushing: {cause}")),
            LinkNotice::Up(_) => return Err("the link reconnected while pushing".into()),
            LinkNotice::Frame(frame) => {
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
        }
    }

    const MIN: Duration = Duration::from_secs(60);

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

    #[test]
    fn skips_when_fingerprint_unchanged_and_cache_fresh() {
        let fp = [7; 32];
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let cache = SyncCache {
            fingerprint: fp,
            synced_at: t0,
        };
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
        let fp = [7; 32];
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let cache = SyncCache {
            fingerprint: fp,
            synced_at: t0,
        };
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
        let fp = [7; 32];
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let cache = SyncCache {
            fingerprint: fp,
            synced_at: t0,
        };
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
        let fp = [7; 32];
        let t0 = SystemTime::UNIX_EPOCH;
        let cache = SyncCache {
            fingerprint: fp,
            synced_at: t0,
        };
        for trigger in [Trigger::Startup, Trigger::Reconnect, Trigger::Operator] {
            let d = decide(Some(&cache), &fp, t0, 30 * MIN, trigger);
            assert!(
                matches!(d, Decision::Sync { forced: true, .. }),
                "{trigger:?}"
            );
        }
    }

    #[test]
    fn delta_pushes_missing_then_mismatched_and_holds_back_conflicts() {
        let trusted = [
            key(1, 1),
            key(2, 2),
            key(3, 3),
            key(4, 4),
            key(5, 5),
            key(99, 9),
        ];
        let mirror: Mirror = [
            (1, Some([1; 32])),     // present
            (2, None),              // node known to the radio, key lost (reboot)
            (3, Some([0xEE; 32])),  // radio holds another key
            (4, Some([0xDD; 32])),  // another key, but ours is pending a decision
            (7, Some([7; 32])),     // the radio knows a key the store does not
            (99, Some([0xAA; 32])), // own node: never pushed
        ]
        .into_iter()
        .collect();
        let pending: BTreeSet<u32> = [4].into_iter().collect();
        let d = delta(&trusted, &pending, &mirror, 99);
        let pushed: Vec<u32> = d.push.iter().map(|k| k.num).collect();
        assert_eq!(
            pushed,
            vec![2, 5, 3],
            "missing (2, 5) before mismatched (3)"
        );
        assert_eq!((d.missing, d.mismatched, d.present), (2, 1, 1));
        assert_eq!(d.conflicts, vec![4]);
        assert_eq!(d.unknown_to_store, vec![7]);
    }

    #[test]
    fn recently_heard_nodes_are_pushed_first() {
        let mut old = key(1, 1);
        old.last_seen = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let mut recent = key(2, 2);
        recent.last_seen = SystemTime::UNIX_EPOCH + Duration::from_secs(500);
        let d = delta(&[old, recent], &BTreeSet::new(), &Mirror::new(), 0);
        let order: Vec<u32> = d.push.iter().map(|k| k.num).collect();
        assert_eq!(order, vec![2, 1]);
    }

    #[test]
    fn a_limited_delta_copies_only_the_first_pushes_and_still_counts_every_key() {
        let trusted: Vec<TrustedKey> = (1..=50).map(|n| key(n, 1)).collect();
        let mirror: Mirror = [(7, Some([9; 32]))].into_iter().collect();
        let all = delta(&trusted, &BTreeSet::new(), &mirror, 0);
        let first = delta_upto(&trusted, &BTreeSet::new(), &mirror, 0, 5);
        assert_eq!((first.missing, first.mismatched), (49, 1));
        assert_eq!(first.push[..], all.push[..5]);
    }

    #[test]
    fn nothing_to_push_when_the_radio_holds_everything() {
        let trusted = [key(1, 1), key(2, 2)];
        let mirror: Mirror = [(1, Some([1; 32])), (2, Some([2; 32]))]
            .into_iter()
            .collect();
        let d = delta(&trusted, &BTreeSet::new(), &mirror, 0);
        assert!(d.push.is_empty());
        assert_eq!(d.present, 2);
    }
}
