//! Which of a client's packets may go to the radio ([`Filter`]): admin messages by the policy
//! (`admin` judges what the radio would run, opening an encrypted one first), add_contact by
//! the keys the operator trusts; what a valid add_contact names is learned either way.

use std::net::SocketAddr;

use meshtastic::protobufs::{MeshPacket, SharedContact, User, admin_message, mesh_packet};
use tokio::sync::{mpsc, watch};

use super::admin::{self, AdminRead, Carried, DestructiveAdmin};
use super::replay::Cache;
use crate::radio::{NodeSeen, PublicKey, Source, is_node_num, node_id, valid_key};

/// The packet filter: the admin policy, the keys the operator trusts, and where learned keys go.
#[derive(Debug)]
pub(super) struct Filter {
    allow_remote_admin: bool,
    /// Destructive admin messages dropped whoever sends them (`--deny-admin`).
    deny_admin: Vec<DestructiveAdmin>,
    learned: mpsc::Sender<NodeSeen>,
    /// The keys the operator trusts (add_contact may not replace one), as the engine
    /// publishes them the moment the store learns one.
    trusted: watch::Receiver<crate::TrustedKeys>,
}

/// What the packet filter decided for a client's packet.
#[derive(Debug)]
enum Verdict {
    Pass,
    Drop,
    /// A valid add_contact: its node is learned whatever happens to the packet.
    Contact {
        seen: Box<NodeSeen>,
        pass: bool,
    },
}

/// The radio's number, and what `packet` carries to its admin module.
pub(super) fn carried_by(cache: &Cache, packet: &MeshPacket) -> (Option<u32>, Carried) {
    let own = cache.own();
    let channels = if matches!(
        packet.payload_variant,
        Some(mesh_packet::PayloadVariant::Encrypted(_))
    ) {
        cache.channels()
    } else {
        Vec::new()
    };
    (own, admin::carried(packet, own, &channels))
}

impl Filter {
    pub(super) fn new(
        allow_remote_admin: bool,
        deny_admin: Vec<DestructiveAdmin>,
        learned: mpsc::Sender<NodeSeen>,
        trusted: watch::Receiver<crate::TrustedKeys>,
    ) -> Self {
        Self {
            allow_remote_admin,
            deny_admin,
            learned,
            trusted,
        }
    }

    /// Whether a packet from `peer` may go to the radio; learns what the filter found worth
    /// learning.
    pub(super) fn admits(
        &self,
        cache: &Cache,
        packet: &MeshPacket,
        loopback: bool,
        peer: SocketAddr,
    ) -> bool {
        match self.judge(cache, packet, loopback, peer) {
            Verdict::Pass => true,
            Verdict::Drop => false,
            Verdict::Contact { seen, pass } => {
                let _ = self.learned.try_send(*seen);
                pass
            }
        }
    }

    /// Whether a downstream packet may go to the radio; learns nothing itself. It judges what
    /// the radio will run: an encrypted packet for the radio is opened first
    /// ([`admin::carried`]).
    fn judge(
        &self,
        cache: &Cache,
        packet: &MeshPacket,
        loopback: bool,
        peer: SocketAddr,
    ) -> Verdict {
        let (own, carried) = carried_by(cache, packet);
        let (payload, sealed) = match carried {
            Carried::Nothing => return Verdict::Pass,
            Carried::Unjudgeable => {
                crate::log_limited!(warn, "unjudgeable", burst 10, target: "keysync::engine::proxy",
                    "dropped an encrypted packet from {peer} to {}: the radio would open it, and no channel key it holds opens it here (channel hash {}, {}), so keysync cannot judge it",
                    node_id(packet.to), packet.channel, if packet.pki_encrypted { "PKI" } else { "AES" });
                return Verdict::Drop;
            }
            Carried::Admin { payload, sealed } => (payload, sealed),
        };
        let how = if sealed {
            " (encrypted with a channel key)"
        } else {
            ""
        };
        let admin = match admin::read_admin(&payload) {
            // The firmware may decode what prost refuses (nanopb does not check UTF-8), and an
            // add_contact it decodes with an empty key erases a key: what cannot be read is not
            // passed on.
            AdminRead::Undecodable => {
                crate::log_limited!(warn, "admin-undecodable", burst 10, target: "keysync::engine::proxy",
                    "dropped an admin message{how} from {peer}: its payload does not decode");
                return Verdict::Drop;
            }
            AdminRead::Unnamed => None,
            AdminRead::Known(admin) => Some(admin),
        };
        if let Some(admin_message::PayloadVariant::AddContact(contact)) =
            admin.as_ref().and_then(|a| a.payload_variant.as_ref())
            && !contact.should_ignore
        {
            return self.judge_contact(contact, own, peer);
        }
        let kind = admin
            .as_deref()
            .map_or(Some(DestructiveAdmin::Unknown), DestructiveAdmin::of);
        let remote_denied = !loopback && !self.allow_remote_admin;
        if let Some(kind) = kind {
            let denied = self.deny_admin.contains(&kind);
            crate::log_limited!(warn, "admin-destructive", burst 10, target: "keysync::engine::proxy",
                "{peer} sends the radio a destructive admin message{how} ({kind}): {}",
                if denied { "dropped (--deny-admin)" } else if remote_denied { "dropped: admin is allowed from loopback clients only" } else { "forwarded" });
            if denied {
                return Verdict::Drop;
            }
        }
        if remote_denied {
            crate::log_limited!(warn, "admin-remote", burst 10, target: "keysync::engine::proxy",
                "dropped an admin message{how} from {peer}: admin is allowed from loopback clients only (--allow-remote-admin)");
            return Verdict::Drop;
        }
        Verdict::Pass
    }

    /// A client's add_contact (not one that ignores): dropped when it would erase a key, name
    /// the gateway itself or name two nodes; otherwise learned, and forwarded unless it
    /// replaces a trusted key.
    fn judge_contact(
        &self,
        contact: &SharedContact,
        own: Option<u32>,
        peer: SocketAddr,
    ) -> Verdict {
        let user = contact.user.clone().unwrap_or_default();
        let key = match contact_key(contact.node_num, &user, own) {
            Ok(key) => key,
            Err(why) => {
                crate::log_limited!(warn, "contact-refused", burst 10, target: "keysync::engine::proxy",
                    "dropped add_contact for {} from {peer}: {why}", node_id(contact.node_num));
                return Verdict::Drop;
            }
        };
        let trusted = self.trusted.borrow().key(contact.node_num);
        let forward = contact_may_pass(trusted, key);
        if !forward {
            crate::log_limited!(warn, "contact-held", burst 10, target: "keysync::engine::proxy",
                "held back add_contact for {} from {peer}: its key differs from the trusted one; learned as pending for the operator to decide",
                node_id(contact.node_num));
        }
        let seen = Box::new(NodeSeen {
            num: contact.node_num,
            long_name: user.long_name,
            short_name: user.short_name,
            hw_model: user.hw_model,
            role: user.role,
            public_key: user.public_key,
            source: Source::Downstream,
            is_favorite: true,
            flags: crate::radio::UserFlags::default(),
        });
        Verdict::Contact {
            seen,
            pass: forward,
        }
    }
}

/// The key a client's add_contact for `num` carries, or why it may not reach the radio: no
/// node, the gateway itself (radio `own`), a user naming another node, or a key that would
/// erase the one on the radio.
fn contact_key(num: u32, user: &User, own: Option<u32>) -> Result<PublicKey, String> {
    if !is_node_num(num) {
        return Err("that is no node (0 is nobody, !ffffffff is broadcast)".to_owned());
    }
    if own == Some(num) {
        return Err(
            "that is the gateway's own node, whose key only the radio itself sets".to_owned(),
        );
    }
    if !user.id.is_empty() && !user.id.eq_ignore_ascii_case(&node_id(num)) {
        return Err(format!(
            "its user names another node ({})",
            crate::radio::printable(&user.id)
        ));
    }
    valid_key(&user.public_key).ok_or_else(|| {
        format!(
            "its key is empty or invalid ({} bytes) and would erase the key on the radio",
            user.public_key.len()
        )
    })
}

/// Whether a client's add_contact carrying `key` may reach the radio: only with the trusted
/// key, or for a node keysync trusts no key for. A different key would put on the radio a key
/// the operator never accepted.
fn contact_may_pass(trusted: Option<PublicKey>, key: PublicKey) -> bool {
    trusted.is_none_or(|t| t == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_contact_passes_with_the_trusted_key_or_for_a_node_without_one() {
        assert!(contact_may_pass(None, [3; 32]));
        assert!(contact_may_pass(Some([3; 32]), [3; 32]));
        assert!(!contact_may_pass(Some([3; 32]), [4; 32]));
    }
}
