//! The one writer towards the radio: the clients' packets held in bounded queues per client
//! ([`Queues`]), taken in turn when keysync's connection may send them (the firmware's limits,
//! `fair`), one at a time, paced by the radio's QueueStatus; a DM waits in its queue for its
//! destination's key to be pushed first.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshtastic::protobufs::{ToRadio, from_radio, to_radio};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::time::{Instant, sleep};

use super::answers::FirstTry;
use super::{Shared, ToClient, fair, lock, queue_status};
use crate::link::{LinkNotice, LinkSender};

/// Packets one client may have waiting for the radio: the radio's own queue (`maxlen`).
const HELD_PER_CLIENT: usize = 16;
/// Packets all clients together may have waiting, clients that left included.
const HELD_TOTAL: usize = 256;
/// How long the upstream writer waits for the QueueStatus that answers a packet; the radio
/// does not always send one.
const ANSWER_WAIT: Duration = Duration::from_secs(1);
/// How long it waits for room while the radio says its queue is full (`free == 0`).
const ROOM_WAIT: Duration = Duration::from_secs(3);
/// How often the upstream writer looks for the radio while it is away.
const AWAY_POLL: Duration = Duration::from_millis(200);
/// `res` of a QueueStatus for a packet the radio's full queue refused (ERRNO_UNKNOWN).
const RES_QUEUE_FULL: i32 = 32;
/// How long a client's DM waits for its destination's key to be pushed.
const KEY_WAIT: Duration = Duration::from_secs(5);

/// What clients may send, waiting for the radio, and the room in the radio's queue.
#[derive(Debug)]
pub(super) struct Queues {
    held: Mutex<Held>,
    /// Told when something was held, or a DM's key wait ended.
    more: Notify,
    /// The radio's queue as its last QueueStatus told.
    radio: Mutex<QueueRoom>,
}

/// The clients' packets waiting for the radio.
#[derive(Debug)]
struct Held {
    queues: fair::HeldQueues<Upward>,
    overflow: OverflowLog,
}

impl Queues {
    pub(super) fn new() -> Self {
        Self {
            held: Mutex::new(Held {
                queues: fair::HeldQueues::new(HELD_PER_CLIENT, HELD_TOTAL),
                overflow: OverflowLog::default(),
            }),
            more: Notify::new(),
            radio: Mutex::new(QueueRoom::default()),
        }
    }

    /// Holds `up` in `client`'s queue for the upstream writer; when that queue (or all of them)
    /// is full, the packet is refused as the radio's full queue refuses one (`away` says why in
    /// the log). True when held.
    pub(super) fn hold(&self, client: u64, peer: SocketAddr, away: bool, up: Upward) -> bool {
        let mut held = lock(&self.held);
        let (full, up) = match held.queues.push(client, up) {
            Ok(()) => {
                drop(held);
                self.more.notify_one();
                return true;
            }
            Err(refused) => refused,
        };
        let waiting = held.queues.len();
        let line = held.overflow.on_refused(away, waiting, peer, &full);
        drop(held);
        if let Some(line) = line {
            log::warn!(target: "keysync::engine::proxy", "{line}");
        }
        if up.id != 0 {
            let maxlen = lock(&self.radio).maxlen;
            let _ = up.reply.try_send(ToClient::Frame(queue_status(
                RES_QUEUE_FULL,
                0,
                maxlen,
                up.id,
            )));
        }
        false
    }

    /// Puts `up` back first in `client`'s queue, for the writer to take next.
    pub(super) fn requeue(&self, client: u64, up: Upward) {
        self.put_back(client, up);
        self.more.notify_one();
    }

    fn put_back(&self, client: u64, up: Upward) {
        lock(&self.held).queues.put_back(client, up);
    }

    /// The room a client sees in "its radio's" queue: the radio's, and no more than is left in
    /// its own queue at keysync.
    pub(super) fn room_for(&self, client: u64) -> QueueRoom {
        let radio = *lock(&self.radio);
        let own = lock(&self.held).queues.room(client);
        QueueRoom {
            free: radio.free.min(u32::try_from(own).unwrap_or(u32::MAX)),
            maxlen: radio.maxlen,
        }
    }

    /// The next packet that may go (`ready_at` says when one may); `None` after waiting for
    /// something to change.
    async fn take(&self, ready_at: impl Fn(&Upward) -> Option<Instant>) -> Option<(u64, Upward)> {
        let next = lock(&self.held).queues.next(Instant::now(), ready_at);
        match next {
            fair::Next::Take(client, up) => return Some((client, up)),
            fair::Next::WaitUntil(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = self.more.notified() => {}
                }
            }
            fair::Next::Empty => self.more.notified().await,
        }
        None
    }

    /// A packet reached the radio.
    fn sent(&self) {
        let mut held = lock(&self.held);
        let drained = held.queues.is_empty();
        held.overflow.on_sent(drained);
    }

    /// Waits for the QueueStatus that answers packet `id` and, while the radio's queue is full,
    /// for one with room; neither is guaranteed to come, so each wait is bounded. Returns when
    /// the radio had taken the packet, as far as keysync can tell: its limits count from no
    /// later.
    async fn wait_for_room(
        &self,
        answers: &mut broadcast::Receiver<LinkNotice>,
        id: u32,
    ) -> Instant {
        let mut deadline = Instant::now() + ANSWER_WAIT;
        let mut answered = None;
        loop {
            let notice = match tokio::time::timeout_at(deadline, answers.recv()).await {
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Ok(notice)) => notice,
                Err(_) | Ok(Err(broadcast::error::RecvError::Closed)) => break,
            };
            let frame = match notice {
                LinkNotice::Frame(frame) => frame,
                LinkNotice::Contact(_) => continue,
                LinkNotice::Up(_) | LinkNotice::Down(_) | LinkNotice::Download(_) => break,
            };
            let Some(from_radio::PayloadVariant::QueueStatus(q)) = &frame.payload_variant else {
                continue;
            };
            *lock(&self.radio) = QueueRoom {
                free: q.free,
                maxlen: q.maxlen,
            };
            if q.mesh_packet_id == id && answered.is_none() {
                let now = Instant::now();
                answered = Some(now);
                deadline = now + ROOM_WAIT;
            }
            if answered.is_some() {
                if q.free > 0 {
                    break;
                }
                log::debug!(target: "keysync::engine::proxy", "radio queue full ({} of {}); waiting", q.free, q.maxlen);
            }
        }
        answered.unwrap_or_else(Instant::now)
    }
}

/// A client's frame on its way to the radio.
#[derive(Debug)]
pub(super) struct Upward {
    msg: ToRadio,
    /// The packet's id (0 for frames other than packets, which get no QueueStatus).
    id: u32,
    /// The port of a packet that is not encrypted: what the firmware's limits go by.
    portnum: Option<i32>,
    /// Where the radio's answer goes.
    reply: mpsc::Sender<ToClient>,
    /// A DM whose destination's key the engine was asked to push first.
    key: Option<KeyWait>,
}

impl Upward {
    pub(super) fn new(
        msg: ToRadio,
        id: u32,
        portnum: Option<i32>,
        reply: mpsc::Sender<ToClient>,
    ) -> Self {
        Self {
            msg,
            id,
            portnum,
            reply,
            key: None,
        }
    }

    /// Until when the packet waits for its destination's key, if it still does.
    fn key_wait(&self) -> Option<Instant> {
        self.key
            .as_ref()
            .filter(|k| !k.done.load(Ordering::Acquire))
            .map(|k| k.until)
    }
}

/// A DM waiting for its destination's key to be pushed: until the engine says it is done, or
/// [`KEY_WAIT`] passes. Other clients' packets go meanwhile.
#[derive(Debug)]
struct KeyWait {
    until: Instant,
    done: Arc<AtomicBool>,
}

/// Room in the radio's queue for packets from its client.
#[derive(Debug, Clone, Copy)]
pub(super) struct QueueRoom {
    pub(super) free: u32,
    pub(super) maxlen: u32,
}

impl Default for QueueRoom {
    fn default() -> Self {
        Self {
            free: 16,
            maxlen: 16,
        }
    }
}

/// The one writer towards the radio: the clients' held packets in turn, each when keysync's
/// connection may send it (the firmware's limits for that connection), one at a time, paced by
/// the radio's QueueStatus. Packets wait (bounded, per client) while the radio is away.
pub(super) async fn write_upstream(
    shared: Arc<Shared>,
    answers: broadcast::Receiver<LinkNotice>,
    sender: LinkSender,
    needs: mpsc::Sender<crate::model::KeyNeed>,
) {
    // keysync's connection as the radio judges it; a new connection starts afresh.
    let mut radio = fair::Connection::default();
    let mut radio_session = 0;
    loop {
        let Some(session) = sender.session() else {
            sleep(AWAY_POLL).await;
            continue;
        };
        if session != radio_session {
            radio = fair::Connection::default();
            radio_session = session;
        }
        let version = shared.cache.firmware();
        let ready_at = |up: &Upward| up.key_wait().max(radio.ready_at(version, up.portnum));
        let Some((client, mut up)) = shared.queues.take(ready_at).await else {
            continue;
        };
        let dm = dm_to(&up.msg, shared.cache.own().unwrap_or(0));
        if up.key.is_none()
            && let Some(to) = dm
        {
            up.key = Some(ask_for_key(&shared, &needs, to, up.id).await);
            shared.queues.put_back(client, up);
            continue;
        }
        if up.id != 0 {
            if dm.is_some() {
                shared.answers.first_try(FirstTry {
                    id: up.id,
                    client,
                    msg: up.msg.clone(),
                    portnum: up.portnum,
                    reply: up.reply.clone(),
                });
            }
            shared.answers.expect(up.id, up.reply.clone());
        }
        // Only answers that come after this send count.
        let mut answers = answers.resubscribe();
        if sender.send(session, up.msg.clone()).await.is_err() {
            shared.queues.put_back(client, up);
            continue;
        }
        shared.queues.sent();
        if up.id != 0 {
            let taken = shared.queues.wait_for_room(&mut answers, up.id).await;
            radio.note_sent(version, up.portnum, taken);
        }
    }
}

/// Says once per episode why clients' packets are refused: once per outage while the radio is
/// away, once per backlog while it is there but a client sends faster than it takes.
#[derive(Debug, Default)]
struct OverflowLog {
    away_said: bool,
    backlog_said: bool,
}

impl OverflowLog {
    /// The line for a packet from `peer` refused because `full`, with `waiting` held, unless it
    /// was said this episode.
    fn on_refused(
        &mut self,
        away: bool,
        waiting: usize,
        peer: SocketAddr,
        full: &fair::Full,
    ) -> Option<String> {
        let said = if away {
            &mut self.away_said
        } else {
            &mut self.backlog_said
        };
        if std::mem::replace(said, true) {
            return None;
        }
        let why = match full {
            fair::Full::Client => format!("its queue of {HELD_PER_CLIENT} is full"),
            fair::Full::All => format!("keysync holds at most {HELD_TOTAL} for all clients"),
        };
        Some(if away {
            format!(
                "the radio is away and {waiting} downstream packets are waiting: newer ones from {peer} are refused ({why})"
            )
        } else {
            format!(
                "{peer} sends faster than the radio takes: {why}; newer packets are refused as by a full radio queue"
            )
        })
    }

    /// A packet reached the radio (the outage is over); `drained` when none is waiting.
    fn on_sent(&mut self, drained: bool) {
        self.away_said = false;
        if drained {
            self.backlog_said = false;
        }
    }
}

/// The destination of a DM that the radio must encrypt with the destination's key.
fn dm_to(msg: &ToRadio, own: u32) -> Option<u32> {
    let Some(to_radio::PayloadVariant::Packet(packet)) = &msg.payload_variant else {
        return None;
    };
    crate::radio::is_pki_dm(packet, own).then_some(packet.to)
}

/// A DM to a node whose key the radio lacks goes out encrypted the first time: the engine
/// pushes the key first. The DM waits for that (at most [`KEY_WAIT`]) in its client's queue,
/// and the client's later packets behind it; other clients' packets go meanwhile.
async fn ask_for_key(
    shared: &Arc<Shared>,
    needs: &mpsc::Sender<crate::model::KeyNeed>,
    to: u32,
    packet_id: u32,
) -> KeyWait {
    let done = Arc::new(AtomicBool::new(false));
    let wait = KeyWait {
        until: Instant::now() + KEY_WAIT,
        done: Arc::clone(&done),
    };
    let (answer, answered) = tokio::sync::oneshot::channel();
    let need = crate::model::KeyNeed {
        num: to,
        packet_id,
        done: answer,
    };
    if needs.send(need).await.is_err() {
        done.store(true, Ordering::Release);
        return wait;
    }
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        if tokio::time::timeout(KEY_WAIT, answered).await.is_err() {
            crate::log_limited!(warn, "key-wait", burst 10, target: "keysync::engine::proxy",
                "the key of {} was not pushed within {}: the DM goes as it is",
                crate::radio::node_id(to), humantime::format_duration(KEY_WAIT));
        }
        done.store(true, Ordering::Release);
        shared.queues.more.notify_one();
    });
    wait
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_radio_is_away_is_said_once_per_outage_and_a_backlog_once_per_backlog() {
        let peer: SocketAddr = "127.0.0.1:4403".parse().expect("addr");
        let full = fair::Full::Client;
        let mut log = OverflowLog::default();
        let first = log.on_refused(true, 40, peer, &full);
        assert!(
            first
                .as_deref()
                .is_some_and(|l| l.contains("the radio is away and 40") && l.contains("4403")),
            "{first:?}"
        );
        assert_eq!(log.on_refused(true, 41, peer, &full), None);
        assert_eq!(log.on_refused(true, 42, peer, &full), None);
        log.on_sent(false);
        assert!(
            log.on_refused(true, 3, peer, &full).is_some(),
            "a new outage is said again"
        );
        assert!(
            log.on_refused(false, 16, peer, &full)
                .is_some_and(|l| l.contains("faster") && !l.contains("away"))
        );
        log.on_sent(false);
        assert_eq!(
            log.on_refused(false, 16, peer, &full),
            None,
            "the same backlog"
        );
        log.on_sent(true);
        assert!(log.on_refused(false, 16, peer, &full).is_some());
    }
}
