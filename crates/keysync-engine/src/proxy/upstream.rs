//! Following the radio link: the session, the configuration and node list downloads keysync
//! asked for, live frames fanned out to clients, QueueStatus routed back, a configuration
//! refresh when the radio shows a change, a client's DM sent again after the radio lacked its
//! destination's key, and clients closed after a long outage.

use std::sync::Arc;

use meshtastic::protobufs::{
    AdminMessage, MeshPacket, NodeInfo, SharedContact, ToRadio, admin_message, from_radio,
    mesh_packet, to_radio,
};
use rand::RngExt;
use tokio::sync::broadcast;
use tokio::time::{Instant, timeout};

use super::replay::{MAX_CONFIG_FRAMES, MAX_NODES};
use super::writer::Upward;
use super::{Shared, ToClient, composed};
use crate::codec::RadioFrame;
use crate::link::{LinkNotice, LinkSender, is_config_part};
use crate::radio::{CONFIG_ONLY_NONCE, NODES_ONLY_NONCE, admin_of};

/// The task that follows the radio, and the one thing only it knows: the download keysync
/// asked for that is under way.
struct Follower {
    shared: Arc<Shared>,
    sender: LinkSender,
    download: Option<Collecting>,
}

/// What a download keysync asked for (a nodes-only refresh of the sync engine, a config-only
/// refresh of the proxy) has delivered so far.
#[derive(Debug)]
struct Collecting {
    nonce: u32,
    nodes: Vec<NodeInfo>,
    config: Vec<RadioFrame>,
}

impl Collecting {
    fn new(nonce: u32) -> Self {
        Self {
            nonce,
            nodes: Vec::new(),
            config: Vec::new(),
        }
    }

    fn has_nodes(&self) -> bool {
        self.nonce != CONFIG_ONLY_NONCE
    }

    fn has_config(&self) -> bool {
        self.nonce != NODES_ONLY_NONCE
    }
}

/// Tracks the upstream session, configuration and node list, routes QueueStatus, fans out live
/// frames, refreshes the configuration when the radio shows it changed, and closes clients
/// after a long outage.
pub(super) async fn follow_upstream(
    shared: Arc<Shared>,
    mut notices: broadcast::Receiver<LinkNotice>,
    sender: LinkSender,
) {
    let grace = shared.config.downstream_grace;
    let mut follower = Follower {
        shared,
        sender,
        download: None,
    };
    let mut down_since: Option<Instant> = None;
    loop {
        let grace_left = down_since.map(|t| (t + grace).saturating_duration_since(Instant::now()));
        let notice = match grace_left {
            Some(left) => timeout(left, notices.recv()).await,
            None => Ok(notices.recv().await),
        };
        let Ok(notice) = notice else {
            log::warn!(target: "keysync::engine::proxy",
                "the radio has been away longer than {}: closing downstream clients so they reconnect and see the truth",
                humantime::format_duration(grace));
            follower.shared.clients.close_all();
            down_since = None;
            continue;
        };
        match notice {
            Err(broadcast::error::RecvError::Lagged(n)) => {
                crate::log_limited!(warn, "proxy-behind", target: "keysync::engine::proxy", "fell {n} frames behind the radio");
            }
            Err(broadcast::error::RecvError::Closed) => return,
            Ok(notice) => {
                match notice {
                    LinkNotice::Up(_) => down_since = None,
                    LinkNotice::Down(_) => down_since = Some(Instant::now()),
                    _ => {}
                }
                follower.on_notice(notice).await;
            }
        }
    }
}

impl Follower {
    async fn on_notice(&mut self, notice: LinkNotice) {
        match notice {
            LinkNotice::Up(session) => {
                self.shared.cache.session_up(session);
                self.download = None;
            }
            LinkNotice::Down(_) => {
                self.shared.cache.session_down();
                self.download = None;
            }
            LinkNotice::Download(nonce) => self.download = Some(Collecting::new(nonce)),
            LinkNotice::Frame(frame) => {
                if self.on_frame(frame) {
                    self.refresh_config().await;
                }
            }
            LinkNotice::Contact(contact) => self.on_contact(&contact),
        }
    }

    /// Follows one frame from the radio; true when it shows the cached configuration is stale.
    fn on_frame(&mut self, frame: Arc<RadioFrame>) -> bool {
        use from_radio::PayloadVariant as V;
        if self.collect(&frame) {
            return false;
        }
        let shared = &self.shared;
        match &frame.payload_variant {
            Some(V::NodeInfo(node)) => shared.cache.upsert(node.clone()),
            Some(V::Channel(_) | V::Config(_) | V::ModuleConfig(_)) => {
                // Not part of a download keysync asked for: the radio says what it holds now.
                if let Some(part) = frame
                    .payload_variant
                    .as_ref()
                    .and_then(ConfigPart::of_frame)
                {
                    return shared
                        .cache
                        .differs_while_up(|_, config| part.differs_from(config));
                }
            }
            Some(V::QueueStatus(q)) => shared.answers.queue_status(*q, &frame.payload),
            Some(V::ConfigCompleteId(_)) => {}
            Some(V::Packet(packet)) => {
                if self.retry_dm(packet) {
                    return false;
                }
                let stale = self.admin_answer_differs(packet);
                if let Some(seen) = crate::radio::node_seen(&frame) {
                    shared.cache.heard(&seen, packet.rx_time);
                }
                self.relay(frame);
                return stale;
            }
            // Including what this crate cannot name (newer firmware's variants): relayed as is.
            Some(_) | None => self.relay(frame),
        }
        false
    }

    /// A live frame goes to every configured client while the radio is up.
    fn relay(&self, frame: Arc<RadioFrame>) {
        if self.shared.cache.is_up() {
            let _ = self.shared.live.send(frame);
        }
    }

    /// An add_contact the radio took: it replaced the node's user (or created the node) and made
    /// it a favourite (NodeDB.cpp addFromContact); the next nodes-only refresh corrects what
    /// differs. One with `should_ignore` or without a valid key is never written (the proxy
    /// drops it, the engine never composes it), so it is not applied either.
    fn on_contact(&self, contact: &SharedContact) {
        let Some(user) = contact.user.as_ref() else {
            return;
        };
        if contact.should_ignore || crate::radio::valid_key(&user.public_key).is_none() {
            return;
        }
        self.shared.cache.contact(contact, user);
    }

    /// Follows the radio's answers to clients' DMs: a first try that failed for lack of the key
    /// goes back into its client's queue under a new id (the writer asks the engine for the key
    /// first, as for any DM); an answer to a second try goes to its client alone, under the
    /// client's id. True when the frame was handled here and goes to no other client.
    fn retry_dm(&self, packet: &MeshPacket) -> bool {
        let Some(mesh_packet::PayloadVariant::Decoded(data)) = &packet.payload_variant else {
            return false;
        };
        if data.request_id == 0 {
            return false;
        }
        let answers = &self.shared.answers;
        if let Some((id, reply)) = answers.again_of(data.request_id) {
            let mut answer = packet.clone();
            if let Some(mesh_packet::PayloadVariant::Decoded(d)) = answer.payload_variant.as_mut() {
                d.request_id = id;
            }
            let _ = reply.try_send(ToClient::Frame(composed(
                from_radio::PayloadVariant::Packet(answer),
            )));
            return true;
        }
        if crate::radio::pki_send_failed(packet).is_none() {
            return false;
        }
        let Some(first) = answers.take_first(data.request_id) else {
            return false;
        };
        let Some(to_radio::PayloadVariant::Packet(mut dm)) = first.msg.payload_variant else {
            return false;
        };
        let new_id = loop {
            let id = rand::rng().random_range(1..u32::MAX);
            if id != first.id {
                break id;
            }
        };
        log::info!(target: "keysync::engine::proxy",
            "the radio lacked the key for a client's DM to {}: sending it again once its key is pushed",
            crate::radio::node_id(dm.to));
        dm.id = new_id;
        let msg = ToRadio {
            payload_variant: Some(to_radio::PayloadVariant::Packet(dm)),
        };
        answers.sent_again(new_id, first.id, first.reply.clone());
        self.shared.queues.requeue(
            first.client,
            Upward::new(msg, new_id, first.portnum, first.reply),
        );
        true
    }

    /// Takes a frame of the download keysync asked for; true when the frame was part of it and
    /// needs nothing more. The download's `config_complete_id` replaces the node list with
    /// exactly the nodes it carried (a node the radio evicted or lost is gone) and the
    /// configuration with the one it carried.
    fn collect(&mut self, frame: &RadioFrame) -> bool {
        use from_radio::PayloadVariant as V;
        let cache = &self.shared.cache;
        let own = cache.own().unwrap_or(0);
        let Some(download) = self.download.as_mut() else {
            return false;
        };
        match &frame.payload_variant {
            Some(V::ConfigCompleteId(n)) if *n == download.nonce => {
                let Some(done) = self.download.take() else {
                    return false;
                };
                self.finish(done);
                if *n != NODES_ONLY_NONCE {
                    self.shared.cache.refresh_done();
                }
                true
            }
            Some(V::NodeInfo(node)) if download.has_nodes() || node.num == own => {
                if download.has_nodes() && download.nodes.len() < MAX_NODES {
                    download.nodes.push(node.clone());
                }
                if download.has_config()
                    && node.num == own
                    && download.config.len() < MAX_CONFIG_FRAMES
                {
                    download.config.push(frame.clone());
                }
                // Live updates meanwhile, and replays before the end, see it too.
                cache.upsert(node.clone());
                true
            }
            Some(v) if download.has_config() && is_config_part(v, own) => {
                if download.config.len() < MAX_CONFIG_FRAMES {
                    download.config.push(frame.clone());
                }
                true
            }
            _ => false,
        }
    }

    /// A download keysync asked for is complete: what it carried is what the radio holds.
    fn finish(&self, done: Collecting) {
        let (has_nodes, has_config) = (done.has_nodes(), done.has_config());
        if has_nodes && !done.nodes.is_empty() {
            self.shared.cache.nodes_downloaded(done.nodes);
        }
        let carries_config = done.config.iter().any(|f| {
            matches!(
                f.payload_variant,
                Some(from_radio::PayloadVariant::MyInfo(_))
            )
        });
        if has_config && carries_config {
            self.shared.cache.config_downloaded(done.config);
        }
    }

    /// Asks the radio for a config-only download now (the radio's own frames showed a change);
    /// one at a time.
    async fn refresh_config(&self) {
        let Some(session) = self.sender.session() else {
            return;
        };
        if !self.shared.cache.refresh_asked() {
            return;
        }
        log::info!(target: "keysync::engine::proxy",
            "the radio's configuration changed: refreshing it before the next replay");
        if self
            .sender
            .send(session, crate::radio::want_config(CONFIG_ONLY_NONCE))
            .await
            .is_err()
        {
            self.shared.cache.refresh_dropped();
        }
    }

    /// Whether `packet` is the radio's answer to an admin get (a client asked) showing a channel
    /// or config other than the cached one: changed by another client of the radio (BLE,
    /// serial).
    fn admin_answer_differs(&self, packet: &MeshPacket) -> bool {
        self.shared.cache.differs_while_up(|own, config| {
            packet.from == own
                && admin_of(packet)
                    .as_ref()
                    .and_then(ConfigPart::of_admin)
                    .is_some_and(|part| part.differs_from(config))
        })
    }
}

/// A part of the radio's configuration, as a download frame or an admin answer carries it.
#[derive(Debug, Clone, PartialEq)]
enum ConfigPart {
    Channel(meshtastic::protobufs::Channel),
    Config(meshtastic::protobufs::Config),
    Module(meshtastic::protobufs::ModuleConfig),
}

impl ConfigPart {
    fn of_frame(v: &from_radio::PayloadVariant) -> Option<Self> {
        use from_radio::PayloadVariant as V;
        match v {
            V::Channel(c) => Some(Self::Channel(c.clone())),
            V::Config(c) => Some(Self::Config(c.clone())),
            V::ModuleConfig(m) => Some(Self::Module(m.clone())),
            _ => None,
        }
    }

    fn of_admin(admin: &AdminMessage) -> Option<Self> {
        use admin_message::PayloadVariant as A;
        match admin.payload_variant.as_ref()? {
            A::GetChannelResponse(c) => Some(Self::Channel(c.clone())),
            A::GetConfigResponse(c) => Some(Self::Config(c.clone())),
            A::GetModuleConfigResponse(m) => Some(Self::Module(m.clone())),
            _ => None,
        }
    }

    /// Whether the same slot (channel index, config or module section) holds something else
    /// in `config`, or nothing.
    fn differs_from(&self, config: &[RadioFrame]) -> bool {
        use std::mem::discriminant;
        let same_slot = |cached: &Self| match (self, cached) {
            (Self::Channel(a), Self::Channel(b)) => a.index == b.index,
            (Self::Config(a), Self::Config(b)) => a
                .payload_variant
                .as_ref()
                .zip(b.payload_variant.as_ref())
                .is_some_and(|(a, b)| discriminant(a) == discriminant(b)),
            (Self::Module(a), Self::Module(b)) => a
                .payload_variant
                .as_ref()
                .zip(b.payload_variant.as_ref())
                .is_some_and(|(a, b)| discriminant(a) == discriminant(b)),
            _ => false,
        };
        !config
            .iter()
            .filter_map(|f| f.payload_variant.as_ref().and_then(Self::of_frame))
            .any(|cached| same_slot(&cached) && cached == *self)
    }
}
