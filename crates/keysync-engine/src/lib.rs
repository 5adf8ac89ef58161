//! The engine: the radio link, the key store and the sync runner, on background tasks. It
//! knows nothing of terminals; it publishes an owned [`Snapshot`] through a `watch` and takes
//! [`Command`]s on one `mpsc`.

pub mod codec;
mod config;
pub mod duration;
mod event_loop;
pub mod files;
pub mod import;
pub mod lenient;
pub mod link;
pub mod model;
pub mod mqtt;
pub mod plan;
pub mod proxy;
pub mod radio;
pub mod repeat;
mod snapshot;
pub mod stats;
pub mod store;
pub mod sync;
pub mod transfer;
pub mod transport;

pub use config::EngineConfig;
pub use event_loop::EngineHandle;
pub use model::{Command, KeyNeed, TrustedKeys, TrustedNode};
pub use snapshot::{HISTORY_LEN, NodeView, RadioKey, Running, Snapshot, SyncStatus, Traffic};

/// Starts the engine; fails when the proxy's listen address cannot be bound.
pub fn try_start(config: EngineConfig, store: store::Store) -> std::io::Result<EngineHandle> {
    event_loop::start(config, store)
}
