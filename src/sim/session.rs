//! One client connection to the simulated radio: config downloads, heartbeats, packets and
//! add_contact, idle close, and the faults aimed at the client.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{SinkExt, StreamExt};
use meshtastic::Message;
use meshtastic::protobufs::{
    Channel, ChannelSettings, Config, DeviceMetadata, DeviceUiConfig, FileInfo, FromRadio,
    MeshPacket, ModuleConfig, MyNodeInfo, PortNum, QueueStatus, ToRadio, admin_message, channel,
    config, from_radio, mesh_packet, module_config, to_radio,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::nodedb::ContactResult;
use super::population::now_secs;
use super::{ClientCmd, Shared};
use crate::engine::codec::RadioCodec;
use crate::engine::radio::{
    CONFIG_ONLY_NONCE, NODES_ONLY_NONCE, admin_of, node_id, to_radio_kind, valid_key,
};

/// The firmware answers a packet addressed to itself with this `res` on 2.7.x.
const RES_TO_SELF: i32 = 35;
/// The firmware ignores a packet whose id repeats one of the last this many.
const RECENT_IDS: usize = 20;

type Conn = Framed<TcpStream, RadioCodec>;

struct Client {
    peer: SocketAddr,
    shared: Arc<Shared>,
    recent_ids: VecDeque<u32>,
    /// Live traffic flows only after a full or config-only download completed.
    configured: bool,
}

pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    kick: CancellationToken,
    mut cmds: mpsc::Receiver<ClientCmd>,
) {
    let _ = stream.set_nodelay(true);
    let mut conn = Framed::new(stream, RadioCodec::new());
    let mut live = shared.live.subscribe();
    let idle = shared.config.idle_timeout;
    let mut client = Client {
        peer,
        shared: shared.clone(),
        recent_ids: VecDeque::new(),
        configured: false,
    };
    let mut last_rx = Instant::now();
    let why = loop {
        tokio::select! {
            () = kick.cancelled() => break "replaced or dropped",
            item = conn.next() => match item {
                None => break "client closed",
                Some(Err(_)) => break "socket error",
                Some(Ok(msg)) => {
                    last_rx = Instant::now();
                    if !client.handle(msg, &mut conn).await {
                        break "client said disconnect or the write failed";
                    }
                }
            },
            () = sleep_until(last_rx + idle) => {
                log::info!(target: "keysync::sim", "TCP connection timeout, no data for {} from {peer}", humantime::format_duration(idle));
                shared.counters.idle_closes.fetch_add(1, Ordering::Relaxed);
                break "idle";
            }
            cmd = cmds.recv() => match cmd {
                Some(ClientCmd::Stall(d)) => {
                    tokio::select! {
                        () = sleep(d) => {}
                        () = kick.cancelled() => break "replaced or dropped",
                    }
                    // The stall swallowed nothing: the client's bytes wait in the socket.
                    last_rx = Instant::now();
                    live = live.resubscribe();
                }
                Some(ClientCmd::Garbage(noise)) if conn.flush().await.is_err()
                    || conn.get_mut().write_all(&noise).await.is_err() => break "write failed",
                Some(ClientCmd::Garbage(_)) | None => {}
            },
            frame = live.recv(), if client.configured => match frame {
                Ok(frame) => {
                    if conn.send(frame).await.is_err() {
                        break "write failed";
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    shared.counters.dropped_to_client.fetch_add(n, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => {}
            },
        }
    };
    let stats = conn.codec().stats();
    log::info!(target: "keysync::sim",
        "client {peer} gone ({why}); {} frames in, {} garbage bytes skipped",
        stats.frames, stats.garbage_bytes);
}

impl Client {
    /// Handles one frame; false when the connection should close.
    async fn handle(&mut self, msg: ToRadio, conn: &mut Conn) -> bool {
        let kind = to_radio_kind(&msg);
        self.shared.counters.count(kind);
        let bytes = msg.encoded_len() as u64 + 4;
        let counters = &self.shared.counters;
        counters.bytes_received.fetch_add(bytes, Ordering::Relaxed);
        if kind != "heartbeat" {
            counters
                .bytes_besides_heartbeats
                .fetch_add(bytes, Ordering::Relaxed);
        }
        match msg.payload_variant {
            Some(to_radio::PayloadVariant::WantConfigId(nonce)) => {
                let frames = self.download(nonce);
                log::debug!(target: "keysync::sim", "{}: config download {nonce} ({} frames)", self.peer, frames.len());
                for frame in frames {
                    if conn.feed(frame).await.is_err() {
                        return false;
                    }
                }
                if nonce != NODES_ONLY_NONCE {
                    self.configured = true;
                }
                conn.flush().await.is_ok()
            }
            Some(to_radio::PayloadVariant::Heartbeat(_)) => {
                let status = self.queue_status(0, 0);
                conn.send(status).await.is_ok()
            }
            Some(to_radio::PayloadVariant::Packet(packet)) => match self.packet(&packet) {
                Some(answer) => conn.send(answer).await.is_ok(),
                None => true,
            },
            Some(to_radio::PayloadVariant::Disconnect(_)) => false,
            _ => true,
        }
    }

    fn queue_status(&self, res: i32, mesh_packet_id: u32) -> FromRadio {
        let maxlen = self.shared.config.queue_len;
        let full = self
            .shared
            .radio()
            .queue_full_until
            .is_some_and(|t| Instant::now() < t);
        let free = if full { 0 } else { maxlen };
        FromRadio {
            id: 0,
            payload_variant: Some(from_radio::PayloadVariant::QueueStatus(QueueStatus {
                res,
                free,
                maxlen,
                mesh_packet_id,
            })),
        }
    }

    /// A packet from the client; returns the QueueStatus answer, if any.
    fn packet(&mut self, packet: &MeshPacket) -> Option<FromRadio> {
        if packet.id != 0 && self.recent_ids.contains(&packet.id) {
            log::debug!(target: "keysync::sim", "ignoring repeated packet id {:08x}", packet.id);
            return None;
        }
        if packet.id != 0 {
            if self.recent_ids.len() == RECENT_IDS {
                self.recent_ids.pop_front();
            }
            self.recent_ids.push_back(packet.id);
        }
        let my_num = self.shared.radio().db.my_node_num();
        let to_self = packet.to == my_num || packet.to == 0;
        if let Some(text) = text_of(packet) {
            echo(&self.shared, packet.from, &text);
        }
        if let Some(admin) = admin_of(packet).filter(|_| to_self) {
            self.admin(admin.payload_variant);
        }
        let silent = self
            .shared
            .radio()
            .silent_until
            .is_some_and(|t| Instant::now() < t);
        (!silent).then(|| self.queue_status(if to_self { RES_TO_SELF } else { 0 }, packet.id))
    }

    fn admin(&self, admin: Option<admin_message::PayloadVariant>) {
        let Some(admin_message::PayloadVariant::AddContact(contact)) = admin else {
            return;
        };
        let counters = &self.shared.counters;
        counters.add_contacts.fetch_add(1, Ordering::Relaxed);
        let key = contact
            .user
            .as_ref()
            .map(|u| u.public_key.as_slice())
            .unwrap_or_default();
        if valid_key(key).is_none() {
            counters.invalid_contacts.fetch_add(1, Ordering::Relaxed);
            log::warn!(target: "keysync::sim",
                "add_contact for {} with an invalid key ({} bytes): the stored key is erased",
                node_id(contact.node_num), key.len());
        }
        let mut radio = self.shared.radio();
        radio.contacts.push((Instant::now(), contact.clone()));
        match radio.db.add_contact(&contact, now_secs()) {
            ContactResult::Stored => {
                // The firmware saves the whole NodeDB on every add_contact, unthrottled.
                counters.flash_writes.fetch_add(1, Ordering::Relaxed);
                log::info!(target: "keysync::sim", "add_contact {}: stored, favourite, NodeDB written to flash", node_id(contact.node_num));
            }
            ContactResult::DroppedVerified => {
                log::info!(target: "keysync::sim", "add_contact {}: dropped (node is manually verified)", node_id(contact.node_num));
            }
        }
    }

    /// The frames of a config download for `nonce`, in firmware order.
    fn download(&self, nonce: u32) -> Vec<FromRadio> {
        use from_radio::PayloadVariant as V;
        let frame = |v: V| FromRadio {
            id: 0,
            payload_variant: Some(v),
        };
        let radio = self.shared.radio();
        let mut own = radio.db.own().clone();
        own.is_favorite = true;
        own.last_heard = now_secs();
        let others: Vec<_> = radio.db.others().cloned().collect();
        drop(radio);

        let mut out = Vec::new();
        if nonce == NODES_ONLY_NONCE {
            out.push(frame(V::NodeInfo(own)));
            out.extend(others.into_iter().map(|n| frame(V::NodeInfo(n))));
            out.push(frame(V::ConfigCompleteId(nonce)));
            return out;
        }
        let with_nodes = nonce != CONFIG_ONLY_NONCE;
        let nodedb_count = 1 + if with_nodes { others.len() } else { 0 };
        let own_key = own
            .user
            .as_ref()
            .map(|u| u.public_key.clone())
            .unwrap_or_default();
        out.push(frame(V::MyInfo(MyNodeInfo {
            my_node_num: own.num,
            reboot_count: 3,
            min_app_version: 30_200,
            pio_env: "native".into(),
            nodedb_count: u32::try_from(nodedb_count).unwrap_or(u32::MAX),
            ..MyNodeInfo::default()
        })));
        out.push(frame(V::DeviceuiConfig(DeviceUiConfig::default())));
        out.push(frame(V::NodeInfo(own.clone())));
        out.push(frame(V::Metadata(DeviceMetadata {
            firmware_version: self.shared.config.firmware.clone(),
            device_state_version: 24,
            has_wifi: true,
            has_pkc: true,
            hw_model: own.user.as_ref().map_or(0, |u| u.hw_model),
            role: own.user.as_ref().map_or(0, |u| u.role),
            ..DeviceMetadata::default()
        })));
        out.extend(channels().into_iter().map(|c| frame(V::Channel(c))));
        out.extend(configs(own_key).into_iter().map(|c| frame(V::Config(c))));
        out.extend(
            module_configs()
                .into_iter()
                .map(|m| frame(V::ModuleConfig(m))),
        );
        if with_nodes {
            out.extend(others.into_iter().map(|n| frame(V::NodeInfo(n))));
        }
        out.push(frame(V::FileInfo(FileInfo {
            file_name: "/prefs/nodes.proto".into(),
            size_bytes: u32::try_from(nodedb_count * 180).unwrap_or(u32::MAX),
        })));
        out.push(frame(V::ConfigCompleteId(nonce)));
        out
    }
}

/// The eight channel slots: a primary with the default key, the rest disabled.
fn channels() -> Vec<Channel> {
    (0..8)
        .map(|index| Channel {
            index,
            settings: Some(ChannelSettings {
                psk: if index == 0 { vec![1] } else { Vec::new() },
                ..ChannelSettings::default()
            }),
            role: if index == 0 {
                channel::Role::Primary as i32
            } else {
                channel::Role::Disabled as i32
            },
        })
        .collect()
}

fn configs(own_key: Vec<u8>) -> Vec<Config> {
    use config::PayloadVariant as C;
    [
        C::Device(config::DeviceConfig::default()),
        C::Position(config::PositionConfig::default()),
        C::Power(config::PowerConfig::default()),
        C::Network(config::NetworkConfig {
            wifi_enabled: true,
            ..config::NetworkConfig::default()
        }),
        C::Display(config::DisplayConfig::default()),
        C::Lora(config::LoRaConfig {
            use_preset: true,
            region: config::lo_ra_config::RegionCode::Eu868 as i32,
            hop_limit: 3,
            tx_enabled: true,
            ..config::LoRaConfig::default()
        }),
        C::Bluetooth(config::BluetoothConfig::default()),
        C::Security(config::SecurityConfig {
            public_key: own_key,
            ..config::SecurityConfig::default()
        }),
        C::Sessionkey(config::SessionkeyConfig::default()),
    ]
    .into_iter()
    .map(|c| Config {
        payload_variant: Some(c),
    })
    .collect()
}

fn module_configs() -> Vec<ModuleConfig> {
    use module_config::PayloadVariant as M;
    [
        M::Mqtt(module_config::MqttConfig::default()),
        M::Serial(module_config::SerialConfig::default()),
        M::ExternalNotification(module_config::ExternalNotificationConfig::default()),
        M::StoreForward(module_config::StoreForwardConfig::default()),
        M::RangeTest(module_config::RangeTestConfig::default()),
        M::Telemetry(module_config::TelemetryConfig::default()),
        M::CannedMessage(module_config::CannedMessageConfig::default()),
        M::Audio(module_config::AudioConfig::default()),
        M::RemoteHardware(module_config::RemoteHardwareConfig::default()),
        M::NeighborInfo(module_config::NeighborInfoConfig::default()),
        M::AmbientLighting(module_config::AmbientLightingConfig::default()),
        M::DetectionSensor(module_config::DetectionSensorConfig::default()),
        M::Paxcounter(module_config::PaxcounterConfig::default()),
    ]
    .into_iter()
    .map(|m| ModuleConfig {
        payload_variant: Some(m),
    })
    .collect()
}

/// The text of a TEXT_MESSAGE_APP packet.
fn text_of(packet: &MeshPacket) -> Option<String> {
    let Some(mesh_packet::PayloadVariant::Decoded(data)) = &packet.payload_variant else {
        return None;
    };
    (data.portnum == PortNum::TextMessageApp as i32)
        .then(|| String::from_utf8_lossy(&data.payload).into_owned())
}

/// A node on the mesh answers a text message shortly after, as a person (or a bot) would, so
/// clients see traffic coming back.
fn echo(shared: &Arc<Shared>, to: u32, text: &str) {
    let (from, id) = {
        let mut radio = shared.radio();
        let from = radio.mesh.first().map_or(0x1234_5678, |n| n.num);
        (from, radio.population.packet_id())
    };
    let reply = FromRadio {
        id: 0,
        payload_variant: Some(from_radio::PayloadVariant::Packet(super::mesh_packet(
            from,
            if to == 0 {
                crate::engine::radio::BROADCAST
            } else {
                to
            },
            id,
            PortNum::TextMessageApp,
            format!("echo: {text}").into_bytes(),
        ))),
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        sleep(std::time::Duration::from_millis(150)).await;
        let _ = shared.live.send(reply);
    });
}
