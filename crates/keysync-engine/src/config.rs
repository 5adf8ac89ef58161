//! What the engine is started with.

use std::path::PathBuf;
use std::time::Duration;

use crate::link::LinkConfig;
use crate::sync::SyncSettings;
use crate::{mqtt, transport};

/// What the engine needs to run.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub link: LinkConfig,
    pub sync_interval: Duration,
    pub sync: SyncSettings,
    pub db_path: PathBuf,
    /// Serve downstream clients (`--listen`).
    pub proxy: Option<crate::proxy::ProxyConfig>,
    /// Learn keys from an MQTT broker, and share them with a fleet (`--mqtt`).
    pub mqtt: Option<mqtt::MqttConfig>,
}

impl EngineConfig {
    pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(5 * 60);

    /// The radio at `radio` (`host:port` or a serial port), the store at `db_path`; a check
    /// every five minutes, the link's and the sync's defaults, no proxy, no broker.
    pub fn new(radio: impl Into<transport::Endpoint>, db_path: PathBuf) -> Self {
        Self {
            link: LinkConfig::new(radio),
            sync_interval: Self::DEFAULT_SYNC_INTERVAL,
            sync: SyncSettings::default(),
            db_path,
            proxy: None,
            mqtt: None,
        }
    }
}
