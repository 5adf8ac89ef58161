//! The engine: the radio link, the key store and the sync runner, on background tasks. It
//! knows nothing of terminals; it publishes an owned [`Snapshot`] through a `watch` and takes
//! [`Command`]s on one `mpsc`.

mod codec;
mod config;
mod duration;
mod event_loop;
mod files;
mod import;
mod lenient;
mod link;
mod model;
mod mqtt;
mod plan;
mod proxy;
mod radio;
mod repeat;
mod snapshot;
mod stats;
mod store;
mod sync;
mod transfer;
mod transport;

// The surface: what the binary, the simulator, the tests and the benches use. Everything else
// stays inside the engine.
pub use codec::{
    ClientCodec, MAX_PAYLOAD, RadioCodec, RadioFrame, RelayCodec, encode_raw, frame_bytes,
};
pub use config::EngineConfig;
pub use duration::{
    DurationError, MAX as MAX_DURATION, compact as compact_duration,
    deserialize as deserialize_duration, deserialize_opt as deserialize_duration_opt,
    parse as parse_duration,
};
pub use event_loop::EngineHandle;
pub use files::{read_small, read_text};
pub use import::{IMPORT_MAX, ImportReport, import_meshbot};
pub use lenient::length_delimited;
pub use link::{
    BackoffPolicy, CloseCause, Link, LinkConfig, LinkEvent, LinkNotice, LinkState, LinkStatus,
    RadioInfo,
};
pub use model::{Command, KeyNeed, TrustedKeys, TrustedNode};
pub use mqtt::broker::{BrokerUrl, BrokerUrlError};
pub use mqtt::crypto::{ChannelKey, DEFAULT_PSK};
pub use mqtt::fleet::{FleetNameError, read as read_fleet_record, valid_name};
pub use mqtt::uplink::{Keyring, envelope, read_uplink};
pub use mqtt::{MqttConfig, MqttCounts, MqttState, MqttStatus, TlsError, ca_roots};
pub use proxy::{AdminDenial, ClientView, DestructiveAdmin, ProxyConfig, UnknownAdminKind};
pub use radio::{
    BROADCAST, CONFIG_ONLY_NONCE, Contact, LONG_NAME_MAX, NODES_ONLY_NONCE, NodeSeen,
    SHORT_NAME_MAX, Source, UserFlags, add_contact, admin_of, heartbeat, is_node_num, node_id,
    num_of_key, pki_send_failed, printable, queue_status, to_radio_kind, truncate_utf8, valid_key,
    want_config,
};
#[doc(hidden)]
pub use repeat::{Held as __Held, admit as __admit};
pub use snapshot::{HISTORY_LEN, NodeView, RadioKey, Running, Snapshot, SyncStatus, Traffic};
pub use stats::{DURATION_BOUNDS, Histogram, SyncTotals};
pub use store::{
    APPLICATION_ID, AmbiguousNode, KeyEvent, KeyState, Learned, NodeArg, NodeArgError, NodeRecord,
    Store, StoreError, SyncCache, TrustedKey, key_base64, parse_key, parse_node,
};
pub use sync::{
    Outcome, StoreCallError, SyncReport, SyncSettings, Trigger, fingerprint, key_fingerprint,
    short_hex,
};
pub use transfer::{
    CONTACT_URL_PREFIX, ExportError, TransferReport, contact_of, contact_url, import_json,
    import_urls, looks_like_contact_url, parse_contact_url, read_url_file, write_json, write_urls,
};
pub use transport::{DEFAULT_BAUD, Endpoint, WAKE_UP};

/// Starts the engine; fails when the proxy's listen address cannot be bound.
pub fn try_start(config: EngineConfig, store: store::Store) -> std::io::Result<EngineHandle> {
    event_loop::start(config, store)
}
