//! Fair sharing of the firmware's per-connection limits among the proxy's clients.
//!
//! The firmware judges each client connection on its own (PhoneAPI.cpp handleToRadioPacket): a
//! packet whose id repeats one of the connection's last 20 is ignored, and a traceroute, a
//! position (telemetry, waypoint, alert) or a text too soon after the last one the connection
//! sent on that port is refused. Behind keysync every client shares keysync's one connection,
//! so keysync judges each client as the firmware judges a connection ([`Connection::judge`]),
//! and holds what a client may send in that client's own bounded queue until keysync's
//! connection may send it ([`HeldQueues::next`], round robin over the clients): no client's
//! packet is refused for another client's traffic. Pure: the caller brings the clock.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use meshtastic::protobufs::PortNum;
use tokio::time::Instant;

/// A firmware version, `None` when the radio did not say (taken as the newest).
pub type Version = Option<(u32, u32, u32)>;

/// The firmware ignores a packet whose id repeats one of the connection's last this many.
const RECENT_IDS: usize = 20;

/// How the firmware answers a packet over its limit; every answer starts with a QueueStatus
/// `res = 0` for the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    /// Nothing more: the sender believes it went (position, telemetry, waypoint, alert).
    Silently,
    /// A routing error RATE_LIMIT_EXCEEDED (text, from 2.7.4).
    RoutingError,
    /// A client notification with this text (traceroute; text before 2.7.4).
    Notification(&'static str),
}

/// One port's limit per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// At least this long between two packets on the port.
    pub gap: Duration,
    pub answer: OverLimit,
}

/// The limit firmware `version` puts on `portnum` per connection, if any.
pub fn limit(version: Version, portnum: i32) -> Option<Limit> {
    let v = version.unwrap_or((u32::MAX, 0, 0));
    let limit = |secs, answer| {
        Some(Limit {
            gap: Duration::from_secs(secs),
            answer,
        })
    };
    match PortNum::try_from(portnum).ok()? {
        PortNum::TracerouteApp => limit(
            30,
            OverLimit::Notification("TraceRoute can only be sent once every 30 seconds"),
        ),
        PortNum::TextMessageApp if v >= (2, 7, 4) => limit(2, OverLimit::RoutingError),
        PortNum::TextMessageApp if v >= (2, 7, 1) => limit(
            2,
            OverLimit::Notification("Text messages can only be sent once every 2 seconds"),
        ),
        PortNum::PositionApp | PortNum::TelemetryApp | PortNum::WaypointApp | PortNum::AlertApp
            if v >= (2, 7, 1) =>
        {
            limit(10, OverLimit::Silently)
        }
        // 2.6.7 – 2.7.0 tested a constant and never limited; before, positions one per 5 s.
        PortNum::PositionApp if v < (2, 6, 7) => limit(5, OverLimit::Silently),
        _ => None,
    }
}

/// What the firmware does with a packet from one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// It may go.
    Accepted,
    /// Its id repeats a recent one: ignored without an answer.
    Repeated,
    /// Too soon after the last one on its port: refused, answered as `Limit::answer` says.
    Over(Limit),
}

/// One connection as the firmware keeps it: when each limited port last had a packet accepted
/// (`lastPortNumToRadio`) and the last packet ids (`recentToRadioPacketIds`). Bounded: a few
/// ports and [`RECENT_IDS`] ids.
#[derive(Debug, Default)]
pub struct Connection {
    last: HashMap<i32, Instant>,
    recent_ids: VecDeque<u32>,
}

impl Connection {
    /// Judges a packet (`portnum` when it is not encrypted) at `now`, as the firmware does, and
    /// records what the firmware records: every id, and the time of an accepted packet.
    pub fn judge(
        &mut self,
        version: Version,
        id: u32,
        portnum: Option<i32>,
        now: Instant,
    ) -> Judgement {
        if id != 0 {
            if self.recent_ids.contains(&id) {
                return Judgement::Repeated;
            }
            if self.recent_ids.len() == RECENT_IDS {
                self.recent_ids.pop_front();
            }
            self.recent_ids.push_back(id);
        }
        if let Some(port) = portnum
            && let Some(limit) = limit(version, port)
        {
            if self.ready_at(version, portnum).is_some_and(|t| now < t) {
                return Judgement::Over(limit);
            }
            self.last.insert(port, now);
        }
        Judgement::Accepted
    }

    /// When a packet on `portnum` would be accepted, if not at once.
    pub fn ready_at(&self, version: Version, portnum: Option<i32>) -> Option<Instant> {
        let port = portnum?;
        let limit = limit(version, port)?;
        self.last.get(&port).map(|t| *t + limit.gap)
    }

    /// A packet on `portnum` was accepted at `at` (for a connection keysync does not judge
    /// itself: its own towards the radio).
    pub fn note_sent(&mut self, version: Version, portnum: Option<i32>, at: Instant) {
        if let Some(port) = portnum
            && limit(version, port).is_some()
        {
            self.last.insert(port, at);
        }
    }
}

/// What to send next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<T> {
    /// This client's oldest packet, now.
    Take(u64, T),
    /// Nothing may go before then.
    WaitUntil(Instant),
    /// Nothing is held.
    Empty,
}

/// Why a packet was not held.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    /// The client's own queue is full.
    Client,
    /// All queues together hold as much as keysync keeps.
    All,
}

/// Packets clients may send, each client's in its own queue (in the order it sent them), taken
/// round robin: a client that floods fills only its own queue and waits its turn.
#[derive(Debug)]
pub struct HeldQueues<T> {
    /// Client → its queue, in serving order: a client served goes to the back. A queue that
    /// empties leaves, so clients that left cost nothing once their packets went out.
    queues: VecDeque<(u64, VecDeque<T>)>,
    per_client: usize,
    total: usize,
    held: usize,
}

impl<T> HeldQueues<T> {
    /// At most `per_client` packets per client and `total` in all.
    pub fn new(per_client: usize, total: usize) -> Self {
        Self {
            queues: VecDeque::new(),
            per_client,
            total,
            held: 0,
        }
    }

    /// Packets held in all.
    pub fn len(&self) -> usize {
        self.held
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Room left in `client`'s queue.
    pub fn room(&self, client: u64) -> usize {
        self.per_client.saturating_sub(self.queue_len(client))
    }

    fn queue_len(&self, client: u64) -> usize {
        self.queues
            .iter()
            .find(|(c, _)| *c == client)
            .map_or(0, |(_, q)| q.len())
    }

    /// Holds `item` at the back of `client`'s queue, unless it is full.
    pub fn push(&mut self, client: u64, item: T) -> Result<(), (Full, T)> {
        if self.queue_len(client) >= self.per_client {
            return Err((Full::Client, item));
        }
        if self.held >= self.total {
            return Err((Full::All, item));
        }
        self.queue_mut(client).push_back(item);
        self.held += 1;
        Ok(())
    }

    /// Puts back at the front of `client`'s queue what was taken and could not be sent; it
    /// goes next, before that client's later packets.
    pub fn put_back(&mut self, client: u64, item: T) {
        // Served first again: its turn was not used.
        let mut queue = self
            .queues
            .iter()
            .position(|(c, _)| *c == client)
            .and_then(|i| self.queues.remove(i))
            .map_or_else(VecDeque::new, |(_, q)| q);
        queue.push_front(item);
        self.queues.push_front((client, queue));
        self.held += 1;
    }

    fn queue_mut(&mut self, client: u64) -> &mut VecDeque<T> {
        let at = self.queues.iter().position(|(c, _)| *c == client);
        let at = at.unwrap_or_else(|| {
            self.queues.push_back((client, VecDeque::new()));
            self.queues.len() - 1
        });
        &mut self.queues[at].1
    }

    /// The next packet that may go at `now`: the oldest of the first client in serving order
    /// whose oldest packet is ready (`ready_at` says when a packet may go, `None` for now).
    /// Otherwise when the first one will be.
    pub fn next(&mut self, now: Instant, ready_at: impl Fn(&T) -> Option<Instant>) -> Next<T> {
        let mut earliest: Option<Instant> = None;
        for i in 0..self.queues.len() {
            let Some(head) = self.queues[i].1.front() else {
                continue;
            };
            match ready_at(head) {
                Some(t) if t > now => earliest = Some(earliest.map_or(t, |e| e.min(t))),
                _ => {
                    let Some((client, mut queue)) = self.queues.remove(i) else {
                        break;
                    };
                    let Some(item) = queue.pop_front() else {
                        break;
                    };
                    self.held -= 1;
                    if !queue.is_empty() {
                        self.queues.push_back((client, queue));
                    }
                    return Next::Take(client, item);
                }
            }
        }
        earliest.map_or(Next::Empty, Next::WaitUntil)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: Option<i32> = Some(PortNum::TextMessageApp as i32);
    const POSITION: Option<i32> = Some(PortNum::PositionApp as i32);
    const TELEMETRY: Option<i32> = Some(PortNum::TelemetryApp as i32);
    const TRACEROUTE: Option<i32> = Some(PortNum::TracerouteApp as i32);
    const PRIVATE: Option<i32> = Some(PortNum::PrivateApp as i32);
    const V2_7_26: Version = Some((2, 7, 26));

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_connection_sends_one_text_per_two_seconds_and_is_answered_with_a_routing_error() {
        let t0 = Instant::now();
        let mut c = Connection::default();
        assert_eq!(c.judge(V2_7_26, 1, TEXT, t0), Judgement::Accepted);
        let Judgement::Over(limit) = c.judge(V2_7_26, 2, TEXT, t0 + secs(1.999)) else {
            panic!("a second text within 2 s is over the limit");
        };
        assert_eq!(limit.answer, OverLimit::RoutingError);
        assert_eq!(c.ready_at(V2_7_26, TEXT), Some(t0 + secs(2.0)));
        assert_eq!(
            c.judge(V2_7_26, 3, TEXT, t0 + secs(2.0)),
            Judgement::Accepted,
            "a refused text does not move the limit on"
        );
    }

    #[test]
    fn positions_telemetry_and_traceroutes_are_limited_per_port() {
        let t0 = Instant::now();
        let mut c = Connection::default();
        let over = |gap, answer| {
            Judgement::Over(Limit {
                gap: secs(gap),
                answer,
            })
        };
        let traceroute =
            OverLimit::Notification("TraceRoute can only be sent once every 30 seconds");
        let steps = [
            (1, POSITION, 0.0, Judgement::Accepted),
            (2, TELEMETRY, 0.0, Judgement::Accepted),
            (3, POSITION, 9.9, over(10.0, OverLimit::Silently)),
            (4, POSITION, 10.0, Judgement::Accepted),
            (5, TRACEROUTE, 0.0, Judgement::Accepted),
            (6, TRACEROUTE, 29.0, over(30.0, traceroute)),
        ];
        // Other ports are not limited.
        let private = (10..20).map(|id| (id, PRIVATE, 0.0, Judgement::Accepted));
        for (id, port, at, expected) in steps.into_iter().chain(private) {
            assert_eq!(
                c.judge(V2_7_26, id, port, t0 + secs(at)),
                expected,
                "packet {id}"
            );
        }
    }

    #[test]
    fn a_repeated_id_among_the_last_twenty_is_ignored_and_an_id_of_zero_never_is() {
        let t0 = Instant::now();
        let mut c = Connection::default();
        for id in 1..=20 {
            assert_eq!(c.judge(V2_7_26, id, PRIVATE, t0), Judgement::Accepted);
        }
        assert_eq!(c.judge(V2_7_26, 5, PRIVATE, t0), Judgement::Repeated);
        assert_eq!(c.judge(V2_7_26, 21, PRIVATE, t0), Judgement::Accepted);
        assert_eq!(
            c.judge(V2_7_26, 1, PRIVATE, t0),
            Judgement::Accepted,
            "id 1 fell out of the last 20"
        );
        assert_eq!(c.judge(V2_7_26, 0, PRIVATE, t0), Judgement::Accepted);
        assert_eq!(c.judge(V2_7_26, 0, PRIVATE, t0), Judgement::Accepted);
    }

    #[test]
    fn the_limits_follow_the_firmware_version() {
        let text = PortNum::TextMessageApp as i32;
        let position = PortNum::PositionApp as i32;
        let telemetry = PortNum::TelemetryApp as i32;
        let notification =
            OverLimit::Notification("Text messages can only be sent once every 2 seconds");
        let cases = [
            (Some((2, 6, 11)), text, None),
            (Some((2, 7, 3)), text, Some((2.0, notification))),
            (None, text, Some((2.0, OverLimit::RoutingError))),
            (Some((2, 6, 11)), position, None),
            (Some((2, 5, 20)), position, Some((5.0, OverLimit::Silently))),
            (Some((2, 5, 20)), telemetry, None),
            (
                Some((2, 7, 1)),
                telemetry,
                Some((10.0, OverLimit::Silently)),
            ),
        ];
        for (version, port, expected) in cases {
            let expected = expected.map(|(gap, answer)| Limit {
                gap: secs(gap),
                answer,
            });
            assert_eq!(limit(version, port), expected, "{version:?} port {port}");
        }
    }

    #[test]
    fn held_queues_serve_clients_in_turn_and_a_flood_fills_only_its_own_queue() {
        let t0 = Instant::now();
        let mut q = HeldQueues::new(3, 100);
        for i in 0..3 {
            assert_eq!(q.push(1, i), Ok(()));
        }
        assert_eq!(q.push(1, 3), Err((Full::Client, 3)));
        assert_eq!(q.room(1), 0);
        assert_eq!(q.push(2, 10), Ok(()));
        assert_eq!(q.push(2, 11), Ok(()));
        let mut order = Vec::new();
        while let Next::Take(client, item) = q.next(t0, |_| None) {
            order.push((client, item));
        }
        assert_eq!(order, [(1, 0), (2, 10), (1, 1), (2, 11), (1, 2)]);
        assert!(q.is_empty());
        assert_eq!(q.next(t0, |_| None), Next::Empty);
    }

    #[test]
    fn a_packet_that_must_wait_lets_other_clients_go_first_and_says_when_it_may_go() {
        let t0 = Instant::now();
        let later = t0 + secs(2.0);
        let mut q = HeldQueues::new(4, 100);
        // Client 1's text must wait for the radio's text gap; client 2's private packet need not.
        q.push(1, "text").expect("room");
        q.push(1, "after the text").expect("room");
        q.push(2, "private").expect("room");
        let ready = |item: &&str| (*item == "text").then_some(later);
        assert_eq!(q.next(t0, ready), Next::Take(2, "private"));
        assert_eq!(
            q.next(t0, ready),
            Next::WaitUntil(later),
            "a client's packets keep their order"
        );
        assert_eq!(q.next(later, ready), Next::Take(1, "text"));
        assert_eq!(q.next(later, ready), Next::Take(1, "after the text"));
    }

    #[test]
    fn a_packet_put_back_goes_next_and_the_total_is_bounded() {
        let t0 = Instant::now();
        let mut q = HeldQueues::new(2, 3);
        q.push(1, 1).expect("room");
        q.push(2, 2).expect("room");
        q.push(2, 3).expect("room");
        assert_eq!(q.push(3, 4), Err((Full::All, 4)));
        let Next::Take(client, item) = q.next(t0, |_| None) else {
            panic!("a packet is ready");
        };
        q.put_back(client, item);
        assert_eq!(q.len(), 3);
        assert_eq!(q.next(t0, |_| None), Next::Take(1, 1));
        assert_eq!(q.next(t0, |_| None), Next::Take(2, 2));
    }
}
