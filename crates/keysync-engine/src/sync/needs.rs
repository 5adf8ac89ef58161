//! Push-on-need: which nodes need their key on the radio now, outside the budgeted fill. A
//! node needs it when a DM partner is heard without one, when the radio could not encrypt a
//! DM for lack of it, or when a proxy client is about to DM it. A need is asked for at most
//! once every [`ASK_AGAIN_AFTER`]; a push the radio lost backs off (doubling up to a day);
//! a client's DM waits until its key was pushed or no push is coming. Time is given by the
//! caller: this is state and decisions, no I/O.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

/// A node that asked for a push does not ask for another for this long.
pub const ASK_AGAIN_AFTER: Duration = Duration::from_secs(10 * 60);
/// How long a lost push backs off, the first time; it doubles up to [`BACKOFF_CAP`].
pub const BACKOFF_BASE: Duration = Duration::from_secs(30 * 60);
pub const BACKOFF_CAP: Duration = Duration::from_secs(24 * 3600);
/// DMs through the proxy remembered to map a PKI_SEND_FAIL_PUBLIC_KEY back to its node.
pub const DM_IDS_KEPT: usize = 64;

/// A node whose push the radio lost: it is not pushed again until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backoff {
    until: SystemTime,
    times: u32,
}

/// The nodes that need a key now and the DMs waiting for one.
#[derive(Debug, Default)]
pub struct Needs {
    /// When each node last asked for a push.
    asked: HashMap<u32, SystemTime>,
    backoff: HashMap<u32, Backoff>,
    /// Trusted nodes that are pinned or exchanged a DM with the gateway within `--dm-window`:
    /// heard without a key, theirs goes to the radio at once. Others wait for a need (a DM to
    /// the gateway heals itself: the firmware's PKI_UNKNOWN_PUBKEY NAK makes the sender send
    /// its NodeInfo).
    partners: HashSet<u32>,
    /// Recent DMs from proxy clients: packet id → destination.
    dm_ids: VecDeque<(u32, u32)>,
    /// Proxy DMs waiting for their key to be pushed.
    waiters: Vec<(u32, oneshot::Sender<()>)>,
}

impl Needs {
    /// Whether `num` may ask for a push at `now` (not backing off, not asked lately); when it
    /// may, the ask is recorded.
    pub fn ask(&mut self, num: u32, now: SystemTime) -> bool {
        if self.backoff.get(&num).is_some_and(|b| b.until > now) {
            return false;
        }
        if self
            .asked
            .get(&num)
            .is_some_and(|at| now.duration_since(*at).unwrap_or_default() < ASK_AGAIN_AFTER)
        {
            return false;
        }
        self.asked.insert(num, now);
        true
    }

    /// `num`'s key is on the radio: its need is met, a later loss is a new need, and the DMs
    /// waiting for it may go.
    pub fn met(&mut self, num: u32) {
        self.asked.remove(&num);
        self.answer(|n| n == num);
    }

    /// `num` may ask again at once: the radio lost its key (a DM failed), or a client's DM
    /// waits for it.
    pub fn ask_again(&mut self, num: u32) {
        self.asked.remove(&num);
    }

    /// The partners as the store lists them now.
    pub fn set_partners(&mut self, partners: HashSet<u32>) {
        self.partners = partners;
    }

    /// A DM was exchanged with `num`: a partner from now on.
    pub fn partner(&mut self, num: u32) {
        self.partners.insert(num);
    }

    pub fn is_partner(&self, num: u32) -> bool {
        self.partners.contains(&num)
    }

    /// A proxy client's DM `packet_id` to `to`, remembered for a PKI_SEND_FAIL naming it.
    pub fn client_dm(&mut self, packet_id: u32, to: u32) {
        if self.dm_ids.len() == DM_IDS_KEPT {
            self.dm_ids.pop_front();
        }
        self.dm_ids.push_back((packet_id, to));
        self.partner(to);
    }

    /// To whom the client's DM `packet_id` went, if it is among the recent ones.
    pub fn dm_to(&self, packet_id: u32) -> Option<u32> {
        self.dm_ids
            .iter()
            .find(|(id, _)| *id == packet_id)
            .map(|(_, to)| *to)
    }

    /// A client's DM to `num` waits on `done` for its key.
    pub fn wait(&mut self, num: u32, done: oneshot::Sender<()>) {
        self.waiters.push((num, done));
    }

    /// Lets the DMs waiting for nodes that `pick` selects go.
    pub fn answer(&mut self, pick: impl Fn(u32) -> bool) {
        let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(n, _)| pick(*n));
        self.waiters = wait;
        for (_, done) in ready {
            let _ = done.send(());
        }
    }

    /// Nodes whose push the radio lost, still backing off at `now`.
    pub fn backing_off(&self, now: SystemTime) -> BTreeSet<u32> {
        self.backoff
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(n, _)| *n)
            .collect()
    }

    /// The radio lost the pushes of `lost` at `now`: each backs off, twice as long as the last
    /// time; the wait of each, for the log.
    pub fn pushes_lost(&mut self, lost: &[u32], now: SystemTime) -> Vec<(u32, Duration)> {
        lost.iter()
            .map(|num| {
                let times = self.backoff.get(num).map_or(0, |b| b.times);
                let wait = BACKOFF_BASE
                    .saturating_mul(1 << times.min(6))
                    .min(BACKOFF_CAP);
                self.backoff.insert(
                    *num,
                    Backoff {
                        until: now + wait,
                        times: times + 1,
                    },
                );
                (*num, wait)
            })
            .collect()
    }

    /// Forgets the back-offs that ended by `now`.
    pub fn forget_ended(&mut self, now: SystemTime) {
        self.backoff.retain(|_, b| b.until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    #[test]
    fn a_node_asks_once_then_again_only_after_ten_minutes_or_a_loss() {
        let mut needs = Needs::default();
        assert!(needs.ask(7, t(0)));
        assert!(!needs.ask(7, t(60)));
        assert!(needs.ask(7, t(600)));
        needs.ask_again(7);
        assert!(needs.ask(7, t(601)), "a failed DM asks again at once");
        needs.met(7);
        assert!(needs.ask(7, t(602)), "a met need is forgotten");
    }

    #[test]
    fn a_lost_push_backs_off_doubling_up_to_a_day() {
        let mut needs = Needs::default();
        let waits: Vec<Duration> = (0..8).map(|_| needs.pushes_lost(&[9], t(0))[0].1).collect();
        assert_eq!(waits[0], BACKOFF_BASE);
        assert_eq!(waits[1], BACKOFF_BASE * 2);
        assert_eq!(waits[5], BACKOFF_BASE * 32);
        assert_eq!(waits[6], BACKOFF_CAP, "64 × 30 min is over a day");
        assert_eq!(waits[7], BACKOFF_CAP);
        assert!(!needs.ask(9, t(60)), "backing off");
        assert_eq!(needs.backing_off(t(60)), BTreeSet::from([9]));
        needs.forget_ended(t(BACKOFF_CAP.as_secs()));
        assert!(needs.backing_off(t(BACKOFF_CAP.as_secs())).is_empty());
        assert!(needs.ask(9, t(BACKOFF_CAP.as_secs())));
    }

    #[test]
    fn a_client_dm_makes_a_partner_and_is_found_by_its_packet_id_among_the_recent_ones() {
        let mut needs = Needs::default();
        needs.client_dm(100, 5);
        assert!(needs.is_partner(5));
        assert_eq!(needs.dm_to(100), Some(5));
        for id in 0..u32::try_from(DM_IDS_KEPT).expect("small") {
            needs.client_dm(1000 + id, 6);
        }
        assert_eq!(
            needs.dm_to(100),
            None,
            "only the last {DM_IDS_KEPT} are kept"
        );
        assert_eq!(needs.dm_to(1000), Some(6));
    }

    #[test]
    fn waiting_dms_go_when_their_key_is_pushed_or_all_at_once() {
        let mut needs = Needs::default();
        let (a, mut a_rx) = oneshot::channel();
        let (b, mut b_rx) = oneshot::channel();
        needs.wait(1, a);
        needs.wait(2, b);
        needs.met(1);
        assert!(a_rx.try_recv().is_ok());
        assert!(b_rx.try_recv().is_err(), "2 still waits");
        needs.answer(|_| true);
        assert!(b_rx.try_recv().is_ok());
    }
}
