//! Where the radio's answers to clients' packets go: a QueueStatus to the client that sent the
//! packet, and the answers to a DM sent again (after the radio lacked its destination's key) to
//! its client under the client's own id.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use meshtastic::protobufs::{QueueStatus, ToRadio, from_radio};
use tokio::sync::mpsc;

use super::{ToClient, composed, lock};

/// Packet ids awaiting their QueueStatus; past this the map is cleared (answers are not
/// guaranteed, so entries must not pile up).
const PENDING_IDS: usize = 512;
/// How many DMs are remembered for a second try, and how many second tries are followed.
const DM_RETRIES_KEPT: usize = 32;

/// The clients' packets sent upstream whose answers are still expected.
#[derive(Debug, Default)]
pub(super) struct Routes {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Packet id → the client that sent it, for routing QueueStatus.
    pending: HashMap<u32, mpsc::Sender<ToClient>>,
    retries: DmRetries,
}

/// A client's DM sent once, kept to go again should the radio lack its destination's key.
#[derive(Debug)]
pub(super) struct FirstTry {
    pub(super) id: u32,
    /// Which client's queue it goes back to.
    pub(super) client: u64,
    pub(super) msg: ToRadio,
    /// The port it was paced by.
    pub(super) portnum: Option<i32>,
    pub(super) reply: mpsc::Sender<ToClient>,
}

impl Routes {
    /// Packet `id` was sent for the client answered on `reply`.
    pub(super) fn expect(&self, id: u32, reply: mpsc::Sender<ToClient>) {
        let mut inner = lock(&self.inner);
        if inner.pending.len() >= PENDING_IDS {
            inner.pending.clear();
        }
        inner.pending.insert(id, reply);
    }

    /// A client's DM went to the radio for the first time (a second try is not kept again).
    pub(super) fn first_try(&self, first: FirstTry) {
        let mut inner = lock(&self.inner);
        if inner.retries.again_of(first.id).is_none() {
            inner.retries.sent(first);
        }
    }

    /// Sends the radio's QueueStatus `q` (whose frame is `raw`) to the client whose packet it
    /// answers, if any: only answers to a client's packet go back, to that client alone.
    pub(super) fn queue_status(&self, q: QueueStatus, raw: &Bytes) {
        let mut inner = lock(&self.inner);
        let Some(client) = inner.pending.remove(&q.mesh_packet_id) else {
            return;
        };
        let bytes = match inner.retries.again_of(q.mesh_packet_id) {
            // A second try is answered under the client's own id.
            Some((id, _)) => composed(from_radio::PayloadVariant::QueueStatus(QueueStatus {
                mesh_packet_id: id,
                ..q
            })),
            None => raw.clone(),
        };
        drop(inner);
        let _ = client.try_send(ToClient::Frame(bytes));
    }

    /// The client's id and channel for an answer to `new_id`, if that was a second try.
    pub(super) fn again_of(&self, new_id: u32) -> Option<(u32, mpsc::Sender<ToClient>)> {
        lock(&self.inner).retries.again_of(new_id)
    }

    /// The first try of DM `id`, which failed: it is not kept any longer.
    pub(super) fn take_first(&self, id: u32) -> Option<FirstTry> {
        lock(&self.inner).retries.take_first(id)
    }

    /// DM `id` goes again as `new_id`; its answers go to `reply` under `id`.
    pub(super) fn sent_again(&self, new_id: u32, id: u32, reply: mpsc::Sender<ToClient>) {
        lock(&self.inner).retries.sent_again(new_id, id, reply);
    }
}

/// A client's DM that failed for lack of its destination's key goes again, once: keysync
/// pushes the key (the engine answers the same failure), then sends the DM under a new id (the
/// radio ignores a repeated one) and maps the answers back to the client's id. The client
/// sees the routing error only when the second try fails too.
#[derive(Debug, Default)]
struct DmRetries {
    /// DMs sent once.
    first: VecDeque<FirstTry>,
    /// DMs sent again: the new id → the client's id and where its answers go.
    again: VecDeque<(u32, u32, mpsc::Sender<ToClient>)>,
}

impl DmRetries {
    fn sent(&mut self, first: FirstTry) {
        if self.first.len() == DM_RETRIES_KEPT {
            self.first.pop_front();
        }
        self.first.push_back(first);
    }

    fn take_first(&mut self, id: u32) -> Option<FirstTry> {
        let i = self.first.iter().position(|f| f.id == id)?;
        self.first.remove(i)
    }

    fn sent_again(&mut self, new_id: u32, id: u32, reply: mpsc::Sender<ToClient>) {
        if self.again.len() == DM_RETRIES_KEPT {
            self.again.pop_front();
        }
        self.again.push_back((new_id, id, reply));
    }

    fn again_of(&self, new_id: u32) -> Option<(u32, mpsc::Sender<ToClient>)> {
        self.again
            .iter()
            .find(|(n, _, _)| *n == new_id)
            .map(|(_, id, reply)| (*id, reply.clone()))
    }
}
