//! What a client is replayed: the radio's configuration and node list as of the latest
//! downloads, kept in step with what passes ([`Cache`]), and the config download a client's
//! `want_config_id` is answered with, built from it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshtastic::protobufs::{
    AdminMessage, FromRadio, NodeInfo, SharedContact, User, admin_message, config, from_radio,
};
use tokio::sync::watch;
use tokio::time::timeout;

use super::admin::{self, AdminRead, Carried};
use super::{fair, lock};
use crate::codec::RadioFrame;
use crate::link::Session;
use crate::mqtt::crypto::RadioChannel;
use crate::radio::{CONFIG_ONLY_NONCE, NODES_ONLY_NONCE, NodeSeen, firmware_version, valid_key};

/// How long a client's config request waits for the first upstream handshake.
const CONFIG_WAIT: Duration = Duration::from_secs(30);
/// How long a replay waits for a config-only refresh under way: the Python client gives up on
/// a download after 30 s.
const REFRESH_WAIT: Duration = Duration::from_secs(10);
/// Nodes the replay's list holds at most (radios hold 10 to 250; Linux native is configurable):
/// a radio that sends more is not followed into unbounded memory.
pub(super) const MAX_NODES: usize = 4096;
/// Configuration frames a download may carry (about 40 on firmware 2.7).
pub(super) const MAX_CONFIG_FRAMES: usize = 256;

/// What the proxy knows of the radio: the handshake, the configuration and node list as of the
/// latest downloads, and the config-only refreshes a replay waits for.
#[derive(Debug)]
pub(super) struct Cache {
    radio: Mutex<Radio>,
    /// Config-only refreshes asked for and not completed; a replay waits for none.
    refreshes: watch::Sender<u32>,
    session_ready: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct Radio {
    session: Option<Arc<Session>>,
    /// The configuration frames (my_info, own node_info, metadata, channels, configs, module
    /// configs, files) of the handshake, then of each config-only refresh, as the radio sent
    /// them.
    config: Vec<RadioFrame>,
    /// Node number → latest node_info, in first-seen order.
    nodes: Vec<NodeInfo>,
    up: bool,
}

impl Radio {
    fn own(&self) -> u32 {
        self.session.as_ref().map_or(0, |s| s.my_node_num)
    }

    fn node(&mut self, num: u32) -> Option<&mut NodeInfo> {
        self.nodes.iter_mut().find(|n| n.num == num)
    }
}

impl Cache {
    pub(super) fn new() -> Self {
        Self {
            radio: Mutex::new(Radio::default()),
            refreshes: watch::channel(0).0,
            session_ready: watch::channel(false).0,
        }
    }

    /// The radio is up with a new session: its handshake is what it holds.
    pub(super) fn session_up(&self, session: Arc<Session>) {
        let mut radio = lock(&self.radio);
        radio.nodes.clone_from(&session.nodes);
        radio.nodes.truncate(MAX_NODES);
        radio.config.clone_from(&session.config);
        radio.config.truncate(MAX_CONFIG_FRAMES);
        radio.session = Some(session);
        radio.up = true;
        drop(radio);
        self.session_ready.send_replace(true);
    }

    pub(super) fn session_down(&self) {
        lock(&self.radio).up = false;
    }

    pub(super) fn is_up(&self) -> bool {
        lock(&self.radio).up
    }

    /// The radio's node number, once a handshake told it.
    pub(super) fn own(&self) -> Option<u32> {
        lock(&self.radio).session.as_ref().map(|s| s.my_node_num)
    }

    /// The radio's firmware version, as far as the handshake told.
    pub(super) fn firmware(&self) -> fair::Version {
        lock(&self.radio)
            .session
            .as_ref()
            .and_then(|s| firmware_version(&s.firmware))
    }

    /// The radio's channels, with the keys that open what clients encrypt for it.
    pub(super) fn channels(&self) -> Vec<RadioChannel> {
        let radio = lock(&self.radio);
        crate::mqtt::crypto::radio_channel_table(radio.config.iter().map(|f| &f.msg))
    }

    /// `compare(own node number, configuration)` while the radio is up; false while it is away.
    pub(super) fn differs_while_up(
        &self,
        compare: impl FnOnce(u32, &[RadioFrame]) -> bool,
    ) -> bool {
        let radio = lock(&self.radio);
        radio.up && compare(radio.own(), &radio.config)
    }

    /// The radio sent `node`: it replaces the cached one, or joins the list.
    pub(super) fn upsert(&self, node: NodeInfo) {
        upsert(&mut lock(&self.radio).nodes, node);
    }

    /// A node announced itself: the names follow the announcement, a stored key stays (as in
    /// the firmware).
    pub(super) fn heard(&self, seen: &NodeSeen, rx_time: u32) {
        let mut radio = lock(&self.radio);
        if let Some(node) = radio.node(seen.num) {
            if let Some(user) = node.user.as_mut() {
                user.long_name.clone_from(&seen.long_name);
                user.short_name.clone_from(&seen.short_name);
                if valid_key(&user.public_key).is_none() {
                    user.public_key.clone_from(&seen.public_key);
                }
            }
            node.last_heard = rx_time;
        }
    }

    /// An add_contact the radio took: it replaced the node's user (or created the node) and
    /// made it a favourite (NodeDB.cpp addFromContact).
    pub(super) fn contact(&self, contact: &SharedContact, user: &User) {
        let mut radio = lock(&self.radio);
        if let Some(node) = radio.node(contact.node_num) {
            node.user = Some(user.clone());
            node.is_favorite = true;
        } else if radio.nodes.len() < MAX_NODES {
            radio.nodes.push(NodeInfo {
                num: contact.node_num,
                user: Some(user.clone()),
                is_favorite: true,
                ..NodeInfo::default()
            });
        }
    }

    /// A nodes download is complete: the node list is exactly what it carried (a node the
    /// radio evicted or lost is gone).
    pub(super) fn nodes_downloaded(&self, downloaded: Vec<NodeInfo>) {
        let mut nodes: Vec<NodeInfo> = Vec::with_capacity(downloaded.len());
        for node in downloaded {
            upsert(&mut nodes, node);
        }
        let mut radio = lock(&self.radio);
        let before = radio.nodes.len();
        let gone = radio
            .nodes
            .iter()
            .filter(|old| !nodes.iter().any(|n| n.num == old.num))
            .count();
        if gone > 0 {
            log::info!(target: "keysync::engine::proxy",
                "the radio no longer lists {gone} of {before} nodes: replays leave them out");
        }
        radio.nodes = nodes;
    }

    /// A config download is complete: the configuration is the one it carried, own node
    /// included.
    pub(super) fn config_downloaded(&self, config: Vec<RadioFrame>) {
        let mut radio = lock(&self.radio);
        let own = radio.own();
        for f in &config {
            if let Some(from_radio::PayloadVariant::NodeInfo(node)) = &f.payload_variant
                && node.num == own
            {
                upsert(&mut radio.nodes, node.clone());
            }
        }
        radio.config = config;
        log::info!(target: "keysync::engine::proxy",
            "configuration refreshed from the radio ({} frames)", radio.config.len());
    }

    /// Counts a config-only refresh the proxy asks for itself; false when one is under way.
    pub(super) fn refresh_asked(&self) -> bool {
        if *self.refreshes.borrow() > 0 {
            return false;
        }
        self.refreshes.send_modify(|n| *n += 1);
        true
    }

    /// A refresh counted will not come (it could not be sent).
    pub(super) fn refresh_dropped(&self) {
        self.refreshes.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// A config download keysync asked for completed.
    pub(super) fn refresh_done(&self) {
        self.refreshes.send_if_modified(|n| {
            let pending = *n > 0;
            *n = n.saturating_sub(1);
            pending
        });
    }

    /// Applies `effect` of a packet now held for the radio: the node list at once; a
    /// configuration change counts a refresh that replays wait for.
    pub(super) fn apply(&self, effect: ReplayEffect) {
        let mut radio = lock(&self.radio);
        let own = radio.own();
        match effect {
            ReplayEffect::Removed(num) if num != own => radio.nodes.retain(|n| n.num != num),
            ReplayEffect::Favourite(num, on) => {
                if let Some(n) = radio.node(num) {
                    n.is_favorite = on;
                }
            }
            ReplayEffect::Ignored(num, on) => {
                if let Some(n) = radio.node(num) {
                    n.is_ignored = on;
                }
            }
            ReplayEffect::Config => {
                self.refreshes.send_modify(|n| *n = n.saturating_add(1));
            }
            ReplayEffect::Removed(_) | ReplayEffect::None => {}
        }
    }

    /// The frames of a config download for `nonce`, from the radio's latest configuration and
    /// the current node list; waits (bounded) for the first handshake, and for a configuration
    /// refresh under way.
    pub(super) async fn replay(&self, nonce: u32) -> Option<Vec<RadioFrame>> {
        let mut ready = self.session_ready.subscribe();
        timeout(CONFIG_WAIT, ready.wait_for(|r| *r))
            .await
            .ok()?
            .ok()?;
        if nonce != NODES_ONLY_NONCE {
            let mut refreshes = self.refreshes.subscribe();
            if timeout(REFRESH_WAIT, refreshes.wait_for(|n| *n == 0))
                .await
                .is_err()
            {
                log::warn!(target: "keysync::engine::proxy",
                    "the radio's configuration was not refreshed within {}: replaying the last one known",
                    humantime::format_duration(REFRESH_WAIT));
                self.refreshes.send_replace(0);
            }
        }
        let radio = lock(&self.radio);
        let own = radio.session.as_ref()?.my_node_num;
        let others: Vec<NodeInfo> = radio
            .nodes
            .iter()
            .filter(|n| n.num != own)
            .cloned()
            .collect();
        let own_node = radio.nodes.iter().find(|n| n.num == own).cloned();
        let config = radio.config.clone();
        drop(radio);
        Some(download(nonce, config, own_node, others))
    }
}

fn upsert(nodes: &mut Vec<NodeInfo>, node: NodeInfo) {
    if let Some(slot) = nodes.iter_mut().find(|n| n.num == node.num) {
        *slot = node;
    } else if nodes.len() < MAX_NODES {
        nodes.push(node);
    }
}

fn frame(v: from_radio::PayloadVariant) -> RadioFrame {
    RadioFrame::composed(FromRadio {
        id: 0,
        payload_variant: Some(v),
    })
}

/// A config download for `nonce` in firmware order: the configuration (my_info with the node
/// count, own node as it is now), the other nodes unless config-only, the files, then the
/// complete id; a nodes-only download carries the nodes alone.
fn download(
    nonce: u32,
    config: Vec<RadioFrame>,
    own_node: Option<NodeInfo>,
    others: Vec<NodeInfo>,
) -> Vec<RadioFrame> {
    let mut out = Vec::new();
    if nonce == NODES_ONLY_NONCE {
        out.extend(own_node.map(|n| frame(from_radio::PayloadVariant::NodeInfo(n))));
        out.extend(
            others
                .into_iter()
                .map(|n| frame(from_radio::PayloadVariant::NodeInfo(n))),
        );
        out.push(frame(from_radio::PayloadVariant::ConfigCompleteId(nonce)));
        return out;
    }
    let with_nodes = nonce != CONFIG_ONLY_NONCE;
    // The NodeDB's total, own node included, in a config-only download too (PhoneAPI.cpp:
    // `nodedb_count = getNumMeshNodes()` whatever the nonce).
    let count = 1 + others.len();
    let mut files = Vec::new();
    for f in config {
        match &f.payload_variant {
            Some(from_radio::PayloadVariant::MyInfo(info)) => {
                let mut info = info.clone();
                info.nodedb_count = u32::try_from(count).unwrap_or(u32::MAX);
                out.push(frame(from_radio::PayloadVariant::MyInfo(info)));
            }
            Some(from_radio::PayloadVariant::NodeInfo(_)) => {
                if let Some(n) = &own_node {
                    out.push(frame(from_radio::PayloadVariant::NodeInfo(n.clone())));
                }
            }
            Some(from_radio::PayloadVariant::FileInfo(_)) => files.push(f),
            _ => out.push(f),
        }
    }
    if with_nodes {
        out.extend(
            others
                .into_iter()
                .map(|n| frame(from_radio::PayloadVariant::NodeInfo(n))),
        );
    }
    out.extend(files);
    out.push(frame(from_radio::PayloadVariant::ConfigCompleteId(nonce)));
    out
}

/// A replay as `client` may see it: the radio's private key (in `Config.security`) goes only to
/// clients that may administer the radio; for the others it is blanked, as the firmware does
/// for a client without admin rights.
pub(super) fn replay_for(
    mut frames: Vec<RadioFrame>,
    loopback: bool,
    allow_remote_admin: bool,
) -> Vec<RadioFrame> {
    if loopback || allow_remote_admin {
        return frames;
    }
    for frame in &mut frames {
        let mut msg = frame.msg.clone();
        if let Some(from_radio::PayloadVariant::Config(c)) = msg.payload_variant.as_mut()
            && let Some(config::PayloadVariant::Security(security)) = c.payload_variant.as_mut()
        {
            security.private_key.clear();
            *frame = RadioFrame::composed(msg);
        }
    }
    frames
}

/// What a client's admin message to the radio changes in what a replay shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReplayEffect {
    None,
    /// Channels, config, module config, owner or position: a config-only refresh follows it.
    Config,
    Removed(u32),
    Favourite(u32, bool),
    Ignored(u32, bool),
}

impl ReplayEffect {
    /// What a client's admitted packet to `to`, carrying `carried` for the radio `own`, changes
    /// in the replay, applied by [`Cache::apply`] once the packet is held for the radio: the
    /// node list at once (as the firmware does it on receipt, AdminModule.cpp), the
    /// configuration through a config-only refresh queued behind the packet, so the radio has
    /// applied it first.
    pub(super) fn of_packet(to: u32, own: Option<u32>, carried: Carried) -> Self {
        let Carried::Admin { payload, .. } = carried else {
            return Self::None;
        };
        let AdminRead::Known(admin) = admin::read_admin(&payload) else {
            return Self::None;
        };
        // Admin for another node goes over the mesh and changes nothing here.
        if to != own.unwrap_or(0) && to != 0 {
            return Self::None;
        }
        Self::of(&admin)
    }

    fn of(admin: &AdminMessage) -> Self {
        use admin_message::PayloadVariant as A;
        match admin.payload_variant {
            Some(
                A::SetOwner(_)
                | A::SetChannel(_)
                | A::SetConfig(_)
                | A::SetModuleConfig(_)
                | A::SetHamMode(_)
                | A::SetFixedPosition(_)
                | A::RemoveFixedPosition(_)
                | A::StoreUiConfig(_)
                | A::CommitEditSettings(_)
                | A::RestorePreferences(_)
                | A::FactoryResetConfig(_),
            ) => Self::Config,
            Some(A::RemoveByNodenum(n)) => Self::Removed(n),
            Some(A::SetFavoriteNode(n)) => Self::Favourite(n, true),
            Some(A::RemoveFavoriteNode(n)) => Self::Favourite(n, false),
            Some(A::SetIgnoredNode(n)) => Self::Ignored(n, true),
            Some(A::RemoveIgnoredNode(n)) => Self::Ignored(n, false),
            _ => Self::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtastic::Message;
    use meshtastic::protobufs::Config;

    fn security_replay() -> Vec<RadioFrame> {
        let security = config::SecurityConfig {
            public_key: vec![1; 32],
            private_key: vec![2; 32],
            ..config::SecurityConfig::default()
        };
        vec![
            FromRadio {
                id: 0,
                payload_variant: Some(from_radio::PayloadVariant::Config(Config {
                    payload_variant: Some(config::PayloadVariant::Security(security)),
                })),
            },
            FromRadio {
                id: 0,
                payload_variant: Some(from_radio::PayloadVariant::ConfigCompleteId(7)),
            },
        ]
        .into_iter()
        .map(RadioFrame::composed)
        .collect()
    }

    fn private_key(frames: &[RadioFrame]) -> Option<Vec<u8>> {
        frames.iter().find_map(|f| {
            match &FromRadio::decode(f.payload.as_ref()).ok()?.payload_variant {
                Some(from_radio::PayloadVariant::Config(Config {
                    payload_variant: Some(config::PayloadVariant::Security(s)),
                })) => Some(s.private_key.clone()),
                _ => None,
            }
        })
    }

    #[test]
    fn a_remote_client_gets_the_replay_without_the_private_key() {
        let frames = replay_for(security_replay(), false, false);
        assert_eq!(private_key(&frames), Some(Vec::new()));
        assert_eq!(frames.len(), 2, "only the key is taken out");
    }

    #[test]
    fn a_loopback_client_or_allowed_remote_admin_gets_the_private_key() {
        assert_eq!(
            private_key(&replay_for(security_replay(), true, false)),
            Some(vec![2; 32])
        );
        assert_eq!(
            private_key(&replay_for(security_replay(), false, true)),
            Some(vec![2; 32])
        );
    }
}
