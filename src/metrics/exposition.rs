//! The engine's snapshot in the Prometheus text format: every figure is read from the latest
//! snapshot at scrape time (a collector, not a registry of live metric objects), so the engine
//! knows nothing of Prometheus and a scrape never waits on it.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, MetricEncoder,
    NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

use crate::engine::ClientView;
use crate::engine::KeyState;
use crate::engine::{CloseCause, LinkState};
use crate::engine::{DURATION_BOUNDS, Histogram};
use crate::engine::{Outcome, Trigger};
use crate::engine::{RadioKey, Snapshot};

/// Downstream clients that get series of their own; the rest are summed under `other`, so a
/// proxy with many clients (or one reconnecting from ever new ports) cannot grow the scrape.
pub const CLIENT_SERIES: usize = 16;

/// The label of the clients beyond [`CLIENT_SERIES`].
pub const OTHER_CLIENTS: &str = "other";

/// A registry whose one collector reads `snapshot` at each scrape; names get the `keysync_`
/// prefix.
pub fn registry(snapshot: watch::Receiver<Snapshot>) -> Registry {
    let mut registry = Registry::with_prefix("keysync");
    registry.register_collector(Box::new(SnapshotCollector { snapshot }));
    registry
}

/// Renders `registry` in the Prometheus text format (version 0.0.4).
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut text = String::with_capacity(16 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)?;
    Ok(text)
}

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug)]
struct SnapshotCollector {
    snapshot: watch::Receiver<Snapshot>,
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // Counted under the watch's read lock (a pass over the node list), encoded after it.
        let figures = Figures::of(&self.snapshot.borrow(), SystemTime::now());
        figures.encode(&mut Out(&mut encoder))
    }
}

/// Per-client proxy figures, already capped to [`CLIENT_SERIES`] series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSeries {
    pub client: String,
    pub from_client: u64,
    pub to_client: u64,
    pub dropped: u64,
}

/// The first [`CLIENT_SERIES`] clients by connection time, one series each; the others summed
/// into one `other` series.
pub fn client_series(clients: &[ClientView], cap: usize) -> Vec<ClientSeries> {
    let mut by_age: Vec<&ClientView> = clients.iter().collect();
    by_age.sort_by_key(|c| (c.since, c.addr));
    let mut series: Vec<ClientSeries> = by_age
        .iter()
        .take(cap)
        .map(|c| ClientSeries {
            client: c.addr.to_string(),
            from_client: c.frames_in,
            to_client: c.frames_out,
            dropped: c.dropped,
        })
        .collect();
    if by_age.len() > cap {
        let rest = &by_age[cap..];
        series.push(ClientSeries {
            client: OTHER_CLIENTS.into(),
            from_client: rest.iter().map(|c| c.frames_in).sum(),
            to_client: rest.iter().map(|c| c.frames_out).sum(),
            dropped: rest.iter().map(|c| c.dropped).sum(),
        });
    }
    series
}

/// The numbers of one scrape, taken from a snapshot.
struct Figures {
    link_state: &'static str,
    up_for: Duration,
    sessions: u64,
    radio_nodes: Option<usize>,
    traffic: crate::engine::Traffic,
    totals: crate::engine::SyncTotals,
    running: bool,
    last_run: Option<SystemTime>,
    last_full_sync: Option<SystemTime>,
    flash_last_hour: Option<u64>,
    flash_budget: u32,
    release_budget: u32,
    /// When the longest-waiting pending key was first offered.
    oldest_pending: Option<SystemTime>,
    capacity: Option<u32>,
    /// Slot budget and protected entries, from the last run that planned.
    slots: Option<(u32, u32)>,
    keys: [u64; 4],
    standing: [u64; RadioKey::ALL.len()],
    proxy: Option<(usize, Vec<ClientSeries>)>,
    mqtt: Option<crate::engine::MqttStatus>,
    store_error: bool,
}

const KEY_STATES: [KeyState; 4] = [
    KeyState::Trusted,
    KeyState::Pending,
    KeyState::Rejected,
    KeyState::Retired,
];

impl Figures {
    fn of(s: &Snapshot, now: SystemTime) -> Self {
        let mut keys = [0; KEY_STATES.len()];
        let mut standing = [0; RadioKey::ALL.len()];
        for node in s.nodes.iter() {
            if let Some(state) = node.record.state()
                && let Some(i) = KEY_STATES.iter().position(|k| *k == state)
            {
                keys[i] += 1;
            }
            if let Some(i) = RadioKey::ALL.iter().position(|k| *k == node.radio) {
                standing[i] += 1;
            }
        }
        let planned = s.sync.history.iter().rev().find(|r| r.plan.is_some());
        Self {
            link_state: s.link.state.label(),
            up_for: if s.link.state.is_up() {
                now.duration_since(s.link.since).unwrap_or_default()
            } else {
                Duration::ZERO
            },
            sessions: s.link.sessions,
            radio_nodes: s.link.radio.as_ref().map(|r| r.nodes_in_db),
            traffic: s.traffic,
            totals: s.sync.totals,
            running: s.sync.running.is_some(),
            last_run: s.sync.last.as_ref().map(|r| r.started_at + r.duration),
            last_full_sync: s.sync.cache.map(|c| c.synced_at),
            flash_last_hour: s.sync.flash_writes_last_hour,
            flash_budget: s.sync.flash_budget,
            release_budget: s.sync.release_budget,
            oldest_pending: s.nodes.iter().filter_map(|n| n.record.pending_since).min(),
            capacity: s.sync.capacity,
            slots: planned.map(|r| (r.slots, r.protected_after)),
            keys,
            standing,
            proxy: s
                .proxy_addr
                .map(|_| (s.clients.len(), client_series(&s.clients, CLIENT_SERIES))),
            mqtt: s.mqtt.clone(),
            store_error: s.store_error.is_some(),
        }
    }

    fn encode(&self, e: &mut Out) -> Result<(), fmt::Error> {
        e.family(
            MetricType::Gauge,
            "build_info",
            "keysync's version; always 1.",
            [([("version", env!("CARGO_PKG_VERSION"))], 1u64)],
        )?;
        self.encode_link(e)?;
        self.encode_sync(e)?;
        self.encode_keys(e)?;
        self.encode_radio(e)?;
        self.encode_proxy(e)?;
        self.encode_mqtt(e)?;
        e.gauge(
            "store_error",
            "1 while the last call to the key store failed (locked, disk full).",
            u64::from(self.store_error),
        )
    }

    fn encode_link(&self, e: &mut Out) -> Result<(), fmt::Error> {
        e.family(
            MetricType::Gauge,
            "link_state",
            "The radio link's state: 1 for the current one, 0 for the others.",
            LinkState::LABELS
                .iter()
                .map(|l| ([("state", *l)], u64::from(*l == self.link_state))),
        )?;
        e.seconds(
            "link_up",
            "How long the radio link has been up; 0 while it is down.",
            self.up_for.as_secs_f64(),
        )?;
        e.counter(
            "link_sessions",
            "Connections to the radio that completed their handshake.",
            self.sessions,
        )?;
        e.family(
            MetricType::Counter,
            "link_reconnects",
            "Connections (or connection attempts) to the radio that ended and were retried, by cause.",
            CloseCause::IDS
                .iter()
                .zip(self.traffic.closes)
                .filter(|(id, _)| **id != CloseCause::Shutdown.id())
                .map(|(id, n)| ([("cause", *id)], n)),
        )?;
        let t = &self.traffic;
        for (name, help, unit, value) in [
            (
                "link_frames_received",
                "Frames received from the radio.",
                None,
                t.frames_in,
            ),
            (
                "link_frames_sent",
                "Frames sent to the radio, heartbeats included.",
                None,
                t.frames_out,
            ),
            (
                "link_heartbeats_sent",
                "Heartbeats sent to the radio.",
                None,
                t.heartbeats_out,
            ),
            (
                "link_garbage",
                "Bytes from the radio outside any frame (skipped).",
                Some(&Unit::Bytes),
                t.garbage_bytes,
            ),
            (
                "link_undecodable_frames",
                "Frames from the radio whose payload did not decode (skipped).",
                None,
                t.undecodable,
            ),
        ] {
            e.one(MetricType::Counter, unit, name, help, value)?;
        }
        e.histogram(
            "link_heartbeat_rtt",
            "From a heartbeat to the radio's answer (firmware 2.7.6 and later answer).",
            &t.heartbeat_rtt,
        )?;
        e.histogram(
            "link_config_download_duration",
            "From want_config to config_complete: the handshake's download.",
            &t.config_download,
        )
    }

    fn encode_sync(&self, e: &mut Out) -> Result<(), fmt::Error> {
        let totals = &self.totals;
        e.family(
            MetricType::Counter,
            "sync_runs",
            "Sync runs by trigger and outcome (skipped: the cache was fresh and nothing was sent).",
            Trigger::ALL.iter().flat_map(|t| {
                Outcome::ALL.iter().map(move |o| {
                    (
                        [("trigger", t.id()), ("outcome", o.label())],
                        totals.runs(*t, *o),
                    )
                })
            }),
        )?;
        e.histogram(
            "sync_run_duration",
            "How long sync runs took, skipped ones included.",
            &totals.duration,
        )?;
        e.gauge(
            "sync_running",
            "1 while a sync run is in progress.",
            u64::from(self.running),
        )?;
        if let Some(at) = self.last_run {
            e.seconds(
                "sync_last_run_timestamp",
                "When the last sync run ended (Unix time).",
                unix(at),
            )?;
        }
        if let Some(at) = self.last_full_sync {
            e.seconds(
                "sync_last_full_sync_timestamp",
                "When the last full sync completed (Unix time); the cache's age starts there.",
                unix(at),
            )?;
        }
        e.counter(
            "pushes",
            "add_contact messages sent to the radio (each one a flash write).",
            totals.pushes,
        )?;
        e.counter(
            "flash_writes",
            "Flash writes keysync caused on the radio: add_contact and remove_favorite_node.",
            totals.flash_writes(),
        )?;
        e.counter(
            "lora_restarts",
            "Slots given back (remove_favorite_node) on firmware 2.6.8 – 2.7.x, where each one restarts the radio's LoRa chip and loses the packets in flight.",
            totals.lora_restarts,
        )?;
        if let Some(n) = self.flash_last_hour {
            e.gauge(
                "flash_writes_last_hour",
                "Flash writes keysync caused in the last hour (across restarts).",
                n,
            )?;
        }
        e.gauge(
            "flash_writes_budget_per_hour",
            "--max-flash-writes: at most this many flash writes per hour.",
            self.flash_budget,
        )?;
        e.gauge(
            "lora_restarts_budget_per_hour",
            "--max-releases: at most this many slots given back (LoRa restarts on 2.6.8 – 2.7.x) per hour.",
            self.release_budget,
        )
    }

    fn encode_keys(&self, e: &mut Out) -> Result<(), fmt::Error> {
        e.family(
            MetricType::Gauge,
            "keys",
            "Stored nodes by the state of their key (a node with a pending key counts as pending).",
            KEY_STATES
                .iter()
                .zip(self.keys)
                .map(|(k, n)| ([("state", k.as_str())], n)),
        )?;
        e.family(
            MetricType::Gauge,
            "keys_radio",
            "Stored nodes by where their key stands on the radio, as of the last node list.",
            RadioKey::ALL
                .iter()
                .zip(self.standing)
                .map(|(k, n)| ([("standing", k.id())], n)),
        )?;
        let count = |k: RadioKey| {
            RadioKey::ALL
                .iter()
                .position(|x| *x == k)
                .map_or(0, |i| self.standing[i])
        };
        e.gauge(
            "keys_in_radio",
            "Trusted keys the radio holds (pushed ones included).",
            count(RadioKey::InRadio) + count(RadioKey::Pushed),
        )?;
        e.gauge(
            "keys_stored_only",
            "Trusted keys stored but not on the radio: normal for nodes outside the working set.",
            count(RadioKey::Missing),
        )?;
        if let Some(at) = self.oldest_pending {
            e.seconds(
                "keys_pending_oldest_timestamp",
                "When the longest-waiting pending key was first offered (Unix time); absent when none waits.",
                unix(at),
            )?;
        }
        Ok(())
    }

    fn encode_radio(&self, e: &mut Out) -> Result<(), fmt::Error> {
        if let Some(n) = self.capacity {
            e.gauge(
                "radio_capacity",
                "How many nodes the radio's NodeDB holds.",
                n,
            )?;
        }
        if let Some(n) = self.radio_nodes {
            e.gauge(
                "radio_nodes",
                "Nodes in the radio's NodeDB at the last handshake.",
                n,
            )?;
        }
        if let Some((slots, protected)) = self.slots {
            e.gauge(
                "radio_key_slots",
                "Favourites keysync may hold on the radio (its slot budget).",
                slots,
            )?;
            e.gauge("radio_protected_slots", "Entries the radio can never evict (favourite, ignored or verified) after the last run; keep well below capacity.", protected)?;
        }
        Ok(())
    }

    fn encode_proxy(&self, e: &mut Out) -> Result<(), fmt::Error> {
        let Some((connected, series)) = &self.proxy else {
            return Ok(());
        };
        e.gauge(
            "proxy_clients",
            "Downstream clients connected through the proxy.",
            *connected,
        )?;
        e.family(
            MetricType::Counter,
            "proxy_client_frames",
            "Frames relayed for each connected downstream client, by direction.",
            series.iter().flat_map(|c| {
                [
                    (
                        [("client", c.client.as_str()), ("direction", "from_client")],
                        c.from_client,
                    ),
                    (
                        [("client", c.client.as_str()), ("direction", "to_client")],
                        c.to_client,
                    ),
                ]
            }),
        )?;
        e.family(
            MetricType::Counter,
            "proxy_client_frames_dropped",
            "Frames dropped for each connected downstream client (it read too slowly).",
            series
                .iter()
                .map(|c| ([("client", c.client.as_str())], c.dropped)),
        )
    }
}

impl Figures {
    /// The broker (`--mqtt`): its state and what it taught.
    fn encode_mqtt(&self, e: &mut Out) -> Result<(), fmt::Error> {
        use crate::engine::MqttState;
        let Some(mqtt) = &self.mqtt else {
            return Ok(());
        };
        let now = match mqtt.state {
            MqttState::Connecting => "connecting",
            MqttState::Connected => "connected",
            MqttState::Backoff { .. } => "backoff",
        };
        e.family(
            MetricType::Gauge,
            "mqtt_state",
            "The broker connection's state: 1 for the current one, 0 for the others.",
            ["connecting", "connected", "backoff"]
                .into_iter()
                .map(|state| ([("state", state)], u64::from(state == now))),
        )?;
        let c = &mqtt.counts;
        e.counter(
            "mqtt_messages",
            "Messages received from the broker.",
            c.messages,
        )?;
        e.family(
            MetricType::Counter,
            "mqtt_keys",
            "Keys read from the broker and handed to the store, by where they came from.",
            [
                ([("from", "uplink")], c.uplink_keys),
                ([("from", "fleet")], c.fleet_in),
            ],
        )?;
        e.counter(
            "mqtt_fleet_published",
            "Key records this keysync published to its fleet that the broker acknowledged.",
            c.fleet_out,
        )?;
        e.family(
            MetricType::Counter,
            "mqtt_messages_refused",
            "Messages from the broker that taught nothing, by why (no_room: a new node the store had no room for, --mqtt-max-nodes).",
            [
                ([("why", "ignored")], c.ignored),
                ([("why", "oversized")], c.oversized),
                ([("why", "undecryptable")], c.undecryptable),
                ([("why", "no_room")], c.no_room),
            ],
        )
    }
}

fn unix(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Writes metrics to a scrape: one line per metric where the pane of text allows.
struct Out<'a, 'b>(&'a mut DescriptorEncoder<'b>);

impl Out<'_, '_> {
    fn gauge<V: EncodeGaugeValue + EncodeCounterValue>(
        &mut self,
        name: &str,
        help: &str,
        value: V,
    ) -> Result<(), fmt::Error> {
        self.one(MetricType::Gauge, None, name, help, value)
    }

    /// A gauge in seconds: a duration or a Unix time.
    fn seconds(&mut self, name: &str, help: &str, value: f64) -> Result<(), fmt::Error> {
        self.one(MetricType::Gauge, Some(&Unit::Seconds), name, help, value)
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) -> Result<(), fmt::Error> {
        self.one(MetricType::Counter, None, name, help, value)
    }

    /// One metric without labels: a gauge or a counter.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "plain numbers read more easily by value"
    )]
    fn one<V: EncodeGaugeValue + EncodeCounterValue>(
        &mut self,
        kind: MetricType,
        unit: Option<&Unit>,
        name: &str,
        help: &str,
        value: V,
    ) -> Result<(), fmt::Error> {
        let mut metric = self.0.encode_descriptor(name, help, unit, kind)?;
        match kind {
            MetricType::Counter => metric.encode_counter::<NoLabelSet, _, u64>(&value, None),
            _ => metric.encode_gauge(&value),
        }
    }

    /// One metric with a series per label set: a gauge or a counter.
    fn family<L: EncodeLabelSet>(
        &mut self,
        kind: MetricType,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, u64)>,
    ) -> Result<(), fmt::Error> {
        let mut metric = self.0.encode_descriptor(name, help, None, kind)?;
        for (labels, value) in series {
            let mut one: MetricEncoder = metric.encode_family(&labels)?;
            match kind {
                MetricType::Counter => one.encode_counter::<NoLabelSet, _, u64>(&value, None)?,
                _ => one.encode_gauge(&value)?,
            }
        }
        Ok(())
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> Result<(), fmt::Error> {
        // Counts per bucket: the encoder accumulates them.
        let buckets: Vec<(f64, u64)> = DURATION_BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(h.buckets)
            .collect();
        self.0
            .encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?
            .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &buckets, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(port: u16, since_secs: u64, frames: u64) -> ClientView {
        let at = UNIX_EPOCH + Duration::from_secs(since_secs);
        ClientView {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            since: at,
            frames_in: frames,
            frames_out: frames * 10,
            dropped: 1,
            last_activity: at,
        }
    }

    #[test]
    fn clients_beyond_the_cap_are_summed_into_one_other_series() {
        let clients: Vec<ClientView> = (0..20u16)
            .map(|i| client(5000 + i, 100 - u64::from(i), u64::from(i)))
            .collect();
        let series = client_series(&clients, 16);
        assert_eq!(series.len(), 17, "16 clients and `other`");
        // The oldest connections keep their series: ports 5019 down to 5004.
        assert_eq!(series[0].client, "127.0.0.1:5019");
        assert_eq!(series[15].client, "127.0.0.1:5004");
        let other = &series[16];
        assert_eq!(other.client, OTHER_CLIENTS);
        assert_eq!(other.from_client, 3 + 2 + 1);
        assert_eq!(other.to_client, 60);
        assert_eq!(other.dropped, 4);
    }

    #[test]
    fn a_few_clients_get_a_series_each_and_no_other() {
        let series = client_series(&[client(1, 1, 5), client(2, 2, 7)], 16);
        assert_eq!(series.len(), 2);
        assert!(series.iter().all(|c| c.client != OTHER_CLIENTS));
    }

    #[test]
    fn the_histogram_ends_with_an_infinite_bucket_holding_every_observation() {
        #[derive(Debug)]
        struct One(Histogram);
        impl Collector for One {
            fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
                Out(&mut e).histogram("x", "help", &self.0)
            }
        }
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(1000));
        let mut reg = Registry::with_prefix("keysync");
        reg.register_collector(Box::new(One(h)));
        let text = render(&reg).expect("renders");
        assert!(
            text.contains("# TYPE keysync_x_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("keysync_x_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("keysync_x_seconds_bucket{le=\"300\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("keysync_x_seconds_bucket{le=\"+Inf\"} 2"),
            "{text}"
        );
        assert!(text.contains("keysync_x_seconds_count 2"), "{text}");
    }
}
