//! The command line, and the settings it resolves to: CLI > `KEYSYNC_*` environment > config
//! file > defaults, merged in one tested function.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use log::LevelFilter;
use serde::Deserialize;

use crate::duration;
use crate::engine::BrokerUrl;
use crate::engine::ChannelKey;
use crate::engine::EngineConfig;
use crate::engine::MqttConfig;
use crate::engine::{AdminDenial, ProxyConfig};
use crate::engine::{DEFAULT_BAUD, Endpoint};
use crate::engine::{NodeArg, Store, StoreError, parse_node};
use crate::engine::{read_small, read_text};

mod file;
pub use file::FileConfig;

/// The radio's TCP API port.
pub const DEFAULT_PORT: u16 = 4403;

#[derive(Debug, Parser)]
#[command(
    name = "keysync",
    version,
    about = "Keeps a Meshtastic radio's NodeDB stocked with the public keys PKI direct messages need, and shows what its TCP link is doing.",
    after_help = "Without a subcommand keysync opens the terminal monitor against --host."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub engine: EngineArgs,

    /// Run without the terminal UI; log to stderr (for systemd).
    #[arg(long)]
    pub headless: bool,

    /// Run against the built-in simulated radio with short demo timings.
    #[arg(long, conflicts_with = "headless")]
    pub demo: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options every command takes, the simulator included: the config file and the log.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// Config file (TOML). Default: config.toml in the user's config directory, if present.
    #[arg(long, global = true, env = "KEYSYNC_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// error, warn, info, debug or trace.
    #[arg(long, global = true, env = "KEYSYNC_LOG_LEVEL", value_parser = parse_level, value_name = "LEVEL")]
    pub log_level: Option<LevelFilter>,

    /// Also write the log to this file.
    #[arg(long, global = true, env = "KEYSYNC_LOG_FILE", value_name = "PATH")]
    pub log_file: Option<PathBuf>,
}

/// The key store: for the monitor and the commands that read or write keys.
#[derive(Debug, Clone, Default, Args)]
pub struct StoreArgs {
    /// Key store (SQLite). Default: keysync.db in the user's data directory.
    #[arg(long, env = "KEYSYNC_DB", value_name = "PATH")]
    pub db: Option<PathBuf>,
}

/// The radio link, the sync engine and the proxy: for the monitor, --headless and `sync`. The
/// config file takes the same options, as kebab-case keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct EngineArgs {
    /// Radio address, HOST[:PORT] (port 4403 when omitted).
    #[arg(long, env = "KEYSYNC_HOST", value_parser = normalize_host, value_name = "HOST[:PORT]")]
    pub host: Option<String>,

    /// A radio on USB instead: its serial port, e.g. /dev/ttyACM0 or a stable
    /// /dev/serial/by-id/… name.
    #[arg(long, env = "KEYSYNC_SERIAL", value_name = "PATH")]
    pub serial: Option<PathBuf>,

    /// The serial port's speed [default: 115200].
    #[arg(long, env = "KEYSYNC_BAUD", value_name = "BAUD")]
    pub baud: Option<u32>,

    /// How often to check whether a sync is needed.
    #[arg(long, env = "KEYSYNC_SYNC_INTERVAL", value_parser = duration::parse, value_name = "DURATION")]
    #[serde(deserialize_with = "duration::deserialize_opt")]
    pub sync_interval: Option<Duration>,

    /// How long a full sync stays good while the stored keys do not change.
    #[arg(long, env = "KEYSYNC_CACHE_TTL", value_parser = duration::parse, value_name = "DURATION")]
    #[serde(deserialize_with = "duration::deserialize_opt")]
    pub cache_ttl: Option<Duration>,

    /// Heartbeat period on the radio link; no frame for 3 periods means a stalled link.
    #[arg(long, env = "KEYSYNC_HEARTBEAT", value_parser = duration::parse, value_name = "DURATION")]
    #[serde(deserialize_with = "duration::deserialize_opt")]
    pub heartbeat: Option<Duration>,

    /// Pause between two flash writes on the radio (add_contact, unfavourite) [default: 1s].
    #[arg(long, env = "KEYSYNC_PUSH_GAP", value_parser = duration::parse, value_name = "DURATION")]
    #[serde(deserialize_with = "duration::deserialize_opt")]
    pub push_gap: Option<Duration>,

    /// At most this many add_contact pushes per sync run; the rest wait for the next run.
    #[arg(long, env = "KEYSYNC_MAX_PUSHES", value_name = "N")]
    pub max_pushes: Option<u32>,

    /// At most this many flash writes (pushes and slots given back) per hour [default: 60].
    #[arg(long, env = "KEYSYNC_MAX_FLASH_WRITES", value_name = "N")]
    pub max_flash_writes: Option<u32>,

    /// Favourites keysync may hold on the radio [default: half the capacity minus what others
    /// protect; clamped to always leave evictable room].
    #[arg(long, env = "KEYSYNC_KEY_SLOTS", value_name = "N")]
    pub key_slots: Option<u32>,

    /// The radio's NodeDB capacity, when its hardware does not tell (80 nRF52, 100 ESP32, …;
    /// a Linux meshtasticd's `MaxNodes`, which the API does not tell).
    #[arg(long, env = "KEYSYNC_RADIO_CAPACITY", value_name = "N")]
    pub radio_capacity: Option<u32>,

    /// At most this many slots given back per hour on firmware 2.6.8 – 2.7.x, where each one
    /// restarts the radio's LoRa chip [default: 4].
    #[arg(long, env = "KEYSYNC_MAX_RELEASES", value_name = "N")]
    pub max_releases: Option<u32>,

    /// A node that exchanged a direct message with the gateway within this window is a DM
    /// partner: heard without a key, its key goes to the radio at once [default: 7days].
    #[arg(long, env = "KEYSYNC_DM_WINDOW", value_parser = duration::parse, value_name = "DURATION")]
    #[serde(deserialize_with = "duration::deserialize_opt")]
    pub dm_window: Option<Duration>,

    /// Serve the gateway's bot and apps on this address, as a proxy for the radio's one TCP slot
    /// (e.g. 127.0.0.1:4404).
    #[arg(long, env = "KEYSYNC_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// At most this many downstream clients at once.
    #[arg(long, env = "KEYSYNC_MAX_CLIENTS", value_name = "N")]
    pub max_clients: Option<usize>,

    /// Keep downstream clients connected through a radio outage this long.
    #[arg(long, env = "KEYSYNC_DOWNSTREAM_GRACE", value_parser = duration::parse, value_name = "DURATION")]
    #[serde(deserialize_with = "duration::deserialize_opt")]
    pub downstream_grace: Option<Duration>,

    /// Forward admin messages from downstream clients that are not on loopback.
    #[arg(long, env = "KEYSYNC_ALLOW_REMOTE_ADMIN")]
    pub allow_remote_admin: bool,

    /// Drop these destructive admin messages from downstream clients, loopback ones included:
    /// `destructive` for every kind, or some of reboot, factory-reset, nodedb-reset,
    /// remove-node, ignore-node, firmware, files, exit-simulator, unknown (comma-separated).
    #[arg(
        long,
        env = "KEYSYNC_DENY_ADMIN",
        value_delimiter = ',',
        value_name = "KINDS"
    )]
    #[serde(deserialize_with = "from_strs")]
    pub deny_admin: Vec<AdminDenial>,

    /// Serve Prometheus metrics on http://ADDR/metrics and the status as JSON on /status
    /// (e.g. 127.0.0.1:9464).
    #[arg(long, env = "KEYSYNC_METRICS", value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Learn keys from the Meshtastic MQTT uplink on this broker: mqtt://[USER[:PASSWORD]@]HOST[:PORT],
    /// or mqtts:// for TLS.
    #[arg(long, env = "KEYSYNC_MQTT", value_name = "URL")]
    pub mqtt: Option<String>,

    /// The broker password, when the URL has none.
    #[arg(
        long,
        env = "KEYSYNC_MQTT_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    #[serde(skip)]
    pub mqtt_password: Option<String>,

    /// Topic root of the uplink, as the gateways' MQTT setting has it [default: msh/+].
    #[arg(long, env = "KEYSYNC_MQTT_ROOT", value_name = "ROOT")]
    pub mqtt_root: Option<String>,

    /// A channel to read the uplink with, besides LongFast and the radio's own: NAME=BASE64KEY
    /// (repeatable).
    #[arg(long, value_name = "NAME=KEY")]
    #[serde(rename = "channel-keys")]
    pub channel_key: Vec<String>,

    /// Share keys with the other keysyncs of this fleet on the broker (keysync/NAME/…).
    #[arg(long, env = "KEYSYNC_FLEET", value_name = "NAME")]
    pub fleet: Option<String>,

    /// At most this many nodes known only from the broker (never heard by the radio) in the
    /// store; new ones beyond are not stored (0: only nodes already known) [default: 20000].
    #[arg(long, env = "KEYSYNC_MQTT_MAX_NODES", value_name = "N")]
    pub mqtt_max_nodes: Option<usize>,

    /// Trust the authority in this PEM file for an mqtts:// broker, instead of the system's
    /// roots (a broker with a private CA).
    #[arg(long, env = "KEYSYNC_MQTT_CA", value_name = "PATH")]
    pub mqtt_ca: Option<PathBuf>,
}

impl StoreArgs {
    /// These options, given after the subcommand, over `before` it.
    fn over(self, before: Self) -> Self {
        Self {
            db: self.db.or(before.db),
        }
    }
}

impl EngineArgs {
    /// These options, given after the subcommand, over `before` it.
    fn over(self, before: Self) -> Self {
        // The radio is named once: a name given here replaces the other kind of name too.
        let (host, serial) = if self.host.is_some() || self.serial.is_some() {
            (self.host, self.serial)
        } else {
            (before.host, before.serial)
        };
        Self {
            host,
            serial,
            baud: self.baud.or(before.baud),
            sync_interval: self.sync_interval.or(before.sync_interval),
            cache_ttl: self.cache_ttl.or(before.cache_ttl),
            heartbeat: self.heartbeat.or(before.heartbeat),
            push_gap: self.push_gap.or(before.push_gap),
            max_pushes: self.max_pushes.or(before.max_pushes),
            max_flash_writes: self.max_flash_writes.or(before.max_flash_writes),
            key_slots: self.key_slots.or(before.key_slots),
            radio_capacity: self.radio_capacity.or(before.radio_capacity),
            max_releases: self.max_releases.or(before.max_releases),
            dm_window: self.dm_window.or(before.dm_window),
            listen: self.listen.or(before.listen),
            max_clients: self.max_clients.or(before.max_clients),
            downstream_grace: self.downstream_grace.or(before.downstream_grace),
            allow_remote_admin: self.allow_remote_admin || before.allow_remote_admin,
            deny_admin: if self.deny_admin.is_empty() {
                before.deny_admin
            } else {
                self.deny_admin
            },
            metrics: self.metrics.or(before.metrics),
            mqtt: self.mqtt.or(before.mqtt),
            mqtt_password: self.mqtt_password.or(before.mqtt_password),
            mqtt_root: self.mqtt_root.or(before.mqtt_root),
            channel_key: if self.channel_key.is_empty() {
                before.channel_key
            } else {
                self.channel_key
            },
            fleet: self.fleet.or(before.fleet),
            mqtt_max_nodes: self.mqtt_max_nodes.or(before.mqtt_max_nodes),
            mqtt_ca: self.mqtt_ca.or(before.mqtt_ca),
        }
    }
}

/// Every option that settings are resolved from, wherever it was written.
#[derive(Debug, Clone, Default)]
pub struct GlobalArgs {
    pub common: CommonArgs,
    pub store: StoreArgs,
    pub engine: EngineArgs,
}

/// The command line's definition. Options of the store and the engine are accepted before the
/// subcommands that use them (from the command line or `KEYSYNC_*`) and after them (from the
/// command line only, so that a flag before the subcommand beats the environment); `keys` and
/// `import` take `--db` after their own subcommands too.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let after_only = |a: clap::Arg| a.env(None);
    Cli::command()
        .mut_subcommand("sync", |c| c.mut_args(after_only))
        .mut_subcommand("keys", |c| c.mut_args(|a| after_only(a).global(true)))
        .mut_subcommand("import", |c| c.mut_args(|a| after_only(a).global(true)))
}

/// Parses the command line; clap's errors exit 2 with usage.
pub fn parse() -> Result<(Cli, GlobalArgs), SettingsError> {
    use clap::FromArgMatches;
    let matches = command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let given = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    let args = cli.global_args(given)?;
    Ok((cli, args))
}

impl Cli {
    /// The options that apply to the chosen command, merged from before and after it. An
    /// option written before a subcommand that has no use for it is a usage error rather than
    /// ignored (`given` says whether the command line, not the environment, set an option).
    pub fn global_args(&self, given: impl Fn(&str) -> bool) -> Result<GlobalArgs, SettingsError> {
        let unused = |args: clap::Command, command: &str| {
            args.get_arguments()
                .find(|a| given(a.get_id().as_str()))
                .map_or(Ok(()), |a| {
                    Err(SettingsError::Invalid(format!(
                        "--{} means nothing to `keysync {command}`",
                        a.get_long().unwrap_or_default()
                    )))
                })
        };
        let store_args = || StoreArgs::augment_args(clap::Command::new("store"));
        let engine_args = || EngineArgs::augment_args(clap::Command::new("engine"));
        let (store, engine) = match &self.command {
            None => (self.store.clone(), self.engine.clone()),
            Some(Command::Sync(sync)) => (
                sync.store.clone().over(self.store.clone()),
                sync.engine.clone().over(self.engine.clone()),
            ),
            Some(Command::Keys(KeysArgs { store, .. }) | Command::Import { store, .. }) => {
                let name = if matches!(self.command, Some(Command::Keys(_))) {
                    "keys"
                } else {
                    "import"
                };
                unused(engine_args(), name)?;
                (
                    store.clone().over(self.store.clone()),
                    EngineArgs::default(),
                )
            }
            Some(Command::Sim(_)) => {
                unused(store_args(), "sim")?;
                unused(engine_args(), "sim")?;
                (StoreArgs::default(), EngineArgs::default())
            }
        };
        Ok(GlobalArgs {
            common: self.common.clone(),
            store,
            engine,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the simulated radio on a TCP port, behaving like the firmware version and board given.
    Sim(SimArgs),
    /// Connect, run one forced sync, print its outcome and exit (1 if it failed).
    Sync(Box<SyncArgs>),
    /// List the stored nodes and keys, or decide on a pending key.
    Keys(KeysArgs),
    /// Import keys from another tool's database.
    Import {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        from: ImportSource,
    },
}

#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Run once and exit (the only mode of this subcommand; the monitor and --headless sync
    /// continuously).
    #[arg(long, required = true)]
    pub once: bool,
    /// Give up when the radio is not reached within this long.
    #[arg(long, default_value = "60s", value_parser = duration::parse)]
    pub wait: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub action: Option<KeysAction>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeysAction {
    /// Trust the pending key of NODE (!hex, hex or decimal).
    Accept {
        #[arg(value_parser = parse_node)]
        node: NodeArg,
    },
    /// Refuse the pending key of NODE; the trusted key is pushed back at the next sync.
    Reject {
        #[arg(value_parser = parse_node)]
        node: NodeArg,
    },
    /// Pin NODE: it always keeps a slot on the radio.
    Pin {
        #[arg(value_parser = parse_node)]
        node: NodeArg,
    },
    /// Unpin NODE: it competes for a slot like any other.
    Unpin {
        #[arg(value_parser = parse_node)]
        node: NodeArg,
    },
    /// Write every node's public key, names, role, trust state, source and dates to stdout
    /// (nothing private): keysync's JSON, or one Meshtastic contact URL a line.
    Export {
        #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
        format: ExportFormat,
        /// Only trusted keys (pending ones are left out; contact URLs never carry them).
        #[arg(long)]
        trusted_only: bool,
    },
    /// Show NODE's contact (its trusted key) as a QR code and URL, for a phone app to scan.
    Qr {
        #[arg(value_parser = parse_node)]
        node: NodeArg,
    },
}

/// What `keys export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// keysync's own format, read back by `import json`.
    Json,
    /// One https://meshtastic.org/v/#… contact URL a line, as the apps share contacts.
    Urls,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ImportSource {
    /// meshbot's SQLite database (table meshtastic_nodes); the file is only read.
    Meshbot { path: PathBuf },
    /// A file written by `keysync keys export` (format json).
    Json { path: PathBuf },
    /// Meshtastic contact URLs (https://meshtastic.org/v/#…), given here or one a line in a file.
    Url {
        #[arg(required_unless_present = "file")]
        urls: Vec<String>,
        /// A file of contact URLs, one a line (blank lines and # comments skipped).
        #[arg(long, conflicts_with = "urls")]
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4403")]
    pub listen: SocketAddr,
    /// Generated nodes on the simulated mesh.
    #[arg(long, default_value_t = 40)]
    pub nodes: usize,
    /// NodeDB capacity, own node included [default: the hardware's: nrf52 80 (120 from 2.8),
    /// esp32 100, esp32s3 250, linux 200]
    #[arg(long, value_parser = clap::value_parser!(u16).range(2..))]
    pub capacity: Option<u16>,
    /// Seed for node ids, names and keys.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Close a client that sent nothing for this long.
    #[arg(long, default_value = "15m", value_parser = duration::parse)]
    pub idle_timeout: Duration,
    /// A node announces itself this often ("off" for a quiet mesh).
    #[arg(long, default_value = "45s", value_parser = parse_optional_duration)]
    pub announce_every: Duration,
    /// Firmware version whose behaviour to follow and report (2.5.6 … 2.7.26, 2.8).
    #[arg(long, default_value = "2.7.26", value_parser = parse_firmware)]
    pub firmware: String,
    /// Hardware family: NodeDB capacity and queue towards the client (nrf52, esp32, esp32s3,
    /// linux).
    #[arg(long, default_value = "linux")]
    pub hw: crate::sim::Hw,
    /// The radio's device role (client, client_base, router).
    #[arg(long, default_value = "client")]
    pub role: crate::sim::SimRole,
    /// How long a crashed radio stays away before it accepts clients again.
    #[arg(long, default_value = "8s", value_parser = duration::parse)]
    pub reboot_time: Duration,
    /// A managed radio (`security.is_managed`): admin messages from clients are ignored.
    #[arg(long)]
    pub managed: bool,
    /// Faults and mesh events on a timeline (TOML).
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Be a radio on USB instead of on TCP: behind a pseudo-terminal, reached through a symlink
    /// made at PATH (for `keysync --serial PATH`); the `unplug` fault takes it away.
    #[arg(long, value_name = "PATH")]
    pub serial_pty: Option<PathBuf>,
}

fn parse_firmware(s: &str) -> Result<String, crate::sim::ProfileError> {
    s.parse::<crate::sim::profile::Firmware>()?;
    Ok(s.to_owned())
}

fn parse_level(s: &str) -> Result<LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a log level (error, warn, info, debug, trace)"))
}

/// A duration, or `off` (zero).
fn parse_optional_duration(s: &str) -> Result<Duration, duration::DurationError> {
    match s {
        "off" | "never" | "0" => Ok(Duration::ZERO),
        _ => duration::parse(s),
    }
}

/// `HOST[:PORT]` with the default port filled in; IPv6 literals may be bare or bracketed.
/// `--host` and `--serial` both name the radio: one place may give only one of them.
fn one_radio(e: &EngineArgs, place: &str) -> Result<(), SettingsError> {
    match (&e.host, &e.serial) {
        (Some(host), Some(serial)) => Err(SettingsError::Invalid(format!(
            "--host {host} and --serial {} both name the radio {place}: give one (a radio on \
             USB is --serial, one on the network --host)",
            serial.display()
        ))),
        _ => Ok(()),
    }
}

/// The radio's endpoint from the merged options: a serial port, or a host (localhost by
/// default).
fn endpoint(e: &EngineArgs) -> Result<Endpoint, String> {
    if let Some(path) = &e.serial {
        if path.as_os_str().is_empty() {
            return Err("the serial port path is empty".into());
        }
        let baud = e.baud.unwrap_or(DEFAULT_BAUD);
        if baud == 0 {
            return Err("--baud 0 is not a serial speed".into());
        }
        return Ok(Endpoint::Serial {
            path: path.clone(),
            baud,
        });
    }
    if e.baud.is_some() {
        return Err("--baud applies to a serial radio: give --serial too".into());
    }
    let host = e
        .host
        .clone()
        .unwrap_or_else(|| format!("localhost:{DEFAULT_PORT}"));
    normalize_host(&host).map(Endpoint::Tcp)
}

pub fn normalize_host(host: &str) -> Result<String, String> {
    let host = host.trim();
    if host.is_empty() {
        return Err("the radio host is empty".into());
    }
    if let Ok(addr) = host.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("{host:?}: port 0 is not a TCP port to connect to"));
        }
        return Ok(host.to_string());
    }
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok(format!("[{host}]:{DEFAULT_PORT}"));
    }
    if host.starts_with('[') && host.ends_with(']') {
        return Ok(format!("{host}:{DEFAULT_PORT}"));
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => match port.parse::<u16>() {
            Ok(p) if p > 0 && !name.is_empty() => Ok(host.to_string()),
            _ => Err(format!("{host:?}: {port:?} is not a TCP port")),
        },
        Some(_) => Err(format!("{host:?} is not HOST[:PORT]")),
        None => Ok(format!("{host}:{DEFAULT_PORT}")),
    }
}

/// `serde(deserialize_with)` for a list of values that parse from strings as their flag does.
fn from_strs<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// A command line that cannot be carried out as written, found after parsing (an ambiguous
/// node): exit 2 like every usage error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Settings that are wrong: a usage error (exit 2).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("cannot read config file {path}: {why}")]
    ConfigRead { path: String, why: String },
    #[error("config file {path} is not valid: {why}")]
    ConfigParse { path: String, why: String },
    #[error("{0}")]
    Invalid(String),
}

/// Everything resolved; what the modes run with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The radio link, the sync, the proxy and the broker, as the engine runs them.
    pub engine: EngineConfig,
    /// The store is where keysync puts it by default (its directory may be created), not a
    /// path someone wrote (a typo must not leave directories behind).
    pub db_is_default: bool,
    pub config_file: Option<PathBuf>,
    pub log_level: LevelFilter,
    pub log_file: Option<PathBuf>,
    /// Serve `/metrics` and `/status` here.
    pub metrics: Option<SocketAddr>,
}

impl Settings {
    /// Reads the config file (the one named, or the default one if it exists) and merges.
    pub fn load(args: &GlobalArgs) -> Result<Self, SettingsError> {
        let dirs = directories::ProjectDirs::from("org", "keysync", "keysync");
        let (path, required) = match &args.common.config {
            Some(p) => (Some(p.clone()), true),
            None => (
                dirs.as_ref().map(|d| d.config_dir().join("config.toml")),
                false,
            ),
        };
        let file = match &path {
            Some(p) if required || p.exists() => Some((p.clone(), read_config(p)?)),
            _ => None,
        };
        let default_db = dirs.map_or_else(
            || PathBuf::from("keysync.db"),
            |d| d.data_dir().join("keysync.db"),
        );
        Self::resolve(args, file, default_db)
    }

    /// CLI/env (already merged by clap) over the file over the defaults, then validated.
    pub fn resolve(
        args: &GlobalArgs,
        file: Option<(PathBuf, FileConfig)>,
        default_db: PathBuf,
    ) -> Result<Self, SettingsError> {
        let (config_file, file) = match file {
            Some((p, f)) => (Some(p), f),
            None => (None, FileConfig::default()),
        };
        one_radio(&args.engine, "on the command line")?;
        one_radio(&file.engine, "in the config file")?;
        let e = args.engine.clone().over(file.engine);
        let radio = endpoint(&e).map_err(SettingsError::Invalid)?;
        let log_level = match (args.common.log_level, file.common.log_level) {
            (Some(l), _) => l,
            (None, Some(s)) => parse_level(&s).map_err(SettingsError::Invalid)?,
            (None, None) => LevelFilter::Info,
        };
        if e.max_clients == Some(0) {
            return Err(SettingsError::Invalid(
                "--max-clients 0 would refuse every downstream client; leave out --listen instead"
                    .into(),
            ));
        }
        let db = args.store.db.clone().or(file.common.db);
        let mut engine = EngineConfig::new(radio, db.clone().unwrap_or(default_db));
        set(&mut engine.link.heartbeat, e.heartbeat);
        set(&mut engine.sync_interval, e.sync_interval);
        let sync = &mut engine.sync;
        set(&mut sync.cache_ttl, e.cache_ttl);
        set(&mut sync.push_gap, e.push_gap);
        set(&mut sync.max_pushes, e.max_pushes);
        set(&mut sync.max_flash_writes, e.max_flash_writes);
        sync.key_slots = e.key_slots;
        sync.radio_capacity = e.radio_capacity;
        set(&mut sync.max_releases, e.max_releases);
        set(&mut sync.dm_window, e.dm_window);
        engine.proxy = e.listen.map(|listen| {
            let mut proxy = ProxyConfig::new(listen);
            set(&mut proxy.max_clients, e.max_clients);
            set(&mut proxy.downstream_grace, e.downstream_grace);
            proxy.allow_remote_admin = e.allow_remote_admin;
            for kind in e.deny_admin.iter().flat_map(|d| d.kinds()) {
                if !proxy.deny_admin.contains(&kind) {
                    proxy.deny_admin.push(kind);
                }
            }
            proxy
        });
        engine.mqtt = mqtt_config(&e).map_err(SettingsError::Invalid)?;
        let settings = Self {
            engine,
            db_is_default: db.is_none(),
            config_file,
            log_level,
            log_file: args.common.log_file.clone().or(file.common.log_file),
            metrics: e.metrics,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Where the radio is: `host:port`, or its serial port.
    pub fn host(&self) -> String {
        self.engine.link.endpoint.to_string()
    }

    /// The key store's file.
    pub fn db(&self) -> &Path {
        &self.engine.db_path
    }

    /// Opens (creating if needed) the key store; only the default location's directory is
    /// created.
    pub fn open_store(&self) -> Result<Store, StoreError> {
        if self.db_is_default
            && let Some(dir) = self.db().parent().filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: self.db().to_path_buf(),
                detail: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        Store::open(self.db())
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        let (interval, sync) = (self.engine.sync_interval, &self.engine.sync);
        let heartbeat = self.engine.link.heartbeat;
        if interval < Duration::from_secs(1) {
            return Err(SettingsError::Invalid(format!(
                "--sync-interval {} is too short: at least 1s",
                fmt(interval)
            )));
        }
        if sync.cache_ttl < interval {
            return Err(SettingsError::Invalid(format!(
                "--cache-ttl {} is shorter than --sync-interval {}: every check would find the cache expired and sync, which is what keysync exists to avoid; use a TTL of at least {}",
                fmt(sync.cache_ttl),
                fmt(interval),
                fmt(interval)
            )));
        }
        if !sync
            .cache_ttl
            .as_millis()
            .is_multiple_of(interval.as_millis())
        {
            return Err(SettingsError::Invalid(format!(
                "--cache-ttl {} is not a multiple of --sync-interval {}: the cache would expire between checks and live longer than it says; try {}",
                fmt(sync.cache_ttl),
                fmt(interval),
                fmt(interval
                    * u32::try_from(sync.cache_ttl.as_millis() / interval.as_millis())
                        .unwrap_or(1))
            )));
        }
        if heartbeat < Duration::from_millis(100) || heartbeat > Duration::from_secs(5 * 60) {
            return Err(SettingsError::Invalid(format!(
                "--heartbeat {} is out of range: between 100ms and 5m (the radio closes idle clients after 15m, proxies after 5m)",
                fmt(heartbeat)
            )));
        }
        if sync.max_flash_writes == 0 {
            return Err(SettingsError::Invalid(
                "--max-flash-writes 0 would never restore a key; use at least 1".into(),
            ));
        }
        if sync
            .radio_capacity
            .is_some_and(|n| !(2..=10_000).contains(&n))
        {
            return Err(SettingsError::Invalid(
                "--radio-capacity must be between 2 and 10000 (80 on nRF52, 100 on ESP32)".into(),
            ));
        }
        if sync.max_pushes == 0 {
            return Err(SettingsError::Invalid(
                "--max-pushes 0 would never restore a key; use at least 1".into(),
            ));
        }
        Ok(())
    }
}

fn read_config(path: &Path) -> Result<FileConfig, SettingsError> {
    let text = read_text(path, CONFIG_FILE_MAX).map_err(|e| SettingsError::ConfigRead {
        path: path.display().to_string(),
        why: e.to_string(),
    })?;
    FileConfig::parse(&text).map_err(|why| SettingsError::ConfigParse {
        path: path.display().to_string(),
        why,
    })
}

/// The most a config file may hold: a real one is a few hundred bytes.
const CONFIG_FILE_MAX: u64 = 64 * 1024;

/// The most a certificate file may hold: a bundle of authorities is a few hundred KiB.
const CA_FILE_MAX: u64 = 1 << 20;

/// Overrides `slot` with an option that was given.
fn set<T>(slot: &mut T, given: Option<T>) {
    if let Some(value) = given {
        *slot = value;
    }
}

/// The MQTT side from `--mqtt` and its companions; those without a broker are a usage error.
fn mqtt_config(args: &EngineArgs) -> Result<Option<MqttConfig>, String> {
    let root = args.mqtt_root.as_ref();
    let fleet = args.fleet.as_ref();
    let channel_keys = &args.channel_key;
    let Some(url) = args.mqtt.as_ref() else {
        let stray = [
            (root.is_some(), "--mqtt-root"),
            (!channel_keys.is_empty(), "--channel-key"),
            (fleet.is_some(), "--fleet"),
            (args.mqtt_max_nodes.is_some(), "--mqtt-max-nodes"),
            (args.mqtt_ca.is_some(), "--mqtt-ca"),
        ];
        return match stray.iter().find(|(given, _)| *given) {
            Some((_, flag)) => Err(format!("{flag} needs --mqtt URL: the broker to use")),
            None => Ok(None),
        };
    };
    let mut broker = BrokerUrl::parse(url).map_err(|e| e.to_string())?;
    if broker.password.is_none() {
        broker.password.clone_from(&args.mqtt_password);
    }
    let mut config = MqttConfig::new(broker);
    if let Some(root) = root {
        let root = root.trim_end_matches('/');
        if root.is_empty() || root.contains('#') {
            return Err(format!(
                "--mqtt-root {root:?}: a topic root such as msh/EU_868 (no '#')"
            ));
        }
        root.clone_into(&mut config.root);
    }
    config.channel_keys = channel_keys
        .iter()
        .map(|s| parse_channel_key(s))
        .collect::<Result<_, _>>()?;
    if let Some(fleet) = fleet {
        crate::engine::valid_name(fleet).map_err(|e| format!("--fleet: {e}"))?;
    }
    config.fleet = fleet.cloned();
    if let Some(n) = args.mqtt_max_nodes {
        config.max_unheard = n;
    }
    if let Some(path) = &args.mqtt_ca {
        if !config.broker.tls {
            return Err(format!(
                "--mqtt-ca {}: the broker is not mqtts:// (TLS)",
                path.display()
            ));
        }
        let pem = read_small(path, CA_FILE_MAX)
            .map_err(|e| format!("cannot read --mqtt-ca {}: {e}", path.display()))?;
        crate::engine::ca_roots(&pem).map_err(|e| format!("--mqtt-ca {}: {e}", path.display()))?;
        config.ca = Some(pem);
    }
    Ok(Some(config))
}

/// `NAME=BASE64`: a channel name and its PSK as the apps show it (1, 16 or 32 bytes).
fn parse_channel_key(s: &str) -> Result<ChannelKey, String> {
    use base64::Engine as _;
    let (name, key) = s
        .split_once('=')
        .ok_or_else(|| format!("--channel-key {s:?}: write NAME=BASE64KEY"))?;
    let psk = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .map_err(|_| format!("--channel-key {name}: the key is not base64"))?;
    if ![1, 16, 32].contains(&psk.len()) {
        return Err(format!(
            "--channel-key {name}: a key has 1, 16 or 32 bytes, not {}",
            psk.len()
        ));
    }
    ChannelKey::new(name, &psk)
        .ok_or_else(|| format!("--channel-key {name}: that key means no encryption"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::DestructiveAdmin;

    fn resolve(args: &GlobalArgs, file: Option<FileConfig>) -> Result<Settings, SettingsError> {
        Settings::resolve(
            args,
            file.map(|f| (PathBuf::from("c.toml"), f)),
            PathBuf::from("default.db"),
        )
    }

    /// Settings from a config file's `text` under these `flags`.
    fn with_file(text: &str, flags: EngineArgs) -> Settings {
        let file = FileConfig::parse(text).expect("a valid file");
        let args = GlobalArgs {
            engine: flags,
            ..GlobalArgs::default()
        };
        resolve(&args, Some(file)).expect("valid settings")
    }

    #[test]
    fn cli_beats_file_beats_defaults() {
        let flags = EngineArgs {
            host: Some("10.0.0.5:4000".into()),
            ..EngineArgs::default()
        };
        let s = with_file(
            "host = \"radio.lan\"\nsync-interval = \"2m\"\ncache-ttl = \"10m\"\ndb = \"file.db\"",
            flags,
        );
        assert_eq!(s.host(), "10.0.0.5:4000");
        assert_eq!(s.db(), Path::new("file.db"));
        assert!(!s.db_is_default);
        assert_eq!(s.engine.sync_interval, Duration::from_secs(120));
        assert_eq!(s.engine.sync.cache_ttl, Duration::from_secs(600));
        assert_eq!(s.engine.link.heartbeat, Duration::from_secs(60));
        let s = resolve(&GlobalArgs::default(), None).expect("defaults are valid");
        assert_eq!(s.host(), "localhost:4403");
        assert_eq!(s.db(), Path::new("default.db"));
        assert!(s.db_is_default);
        assert_eq!(
            (s.engine.sync_interval, s.engine.sync.cache_ttl),
            (Duration::from_secs(300), Duration::from_secs(1800))
        );
        assert!(s.engine.proxy.is_none());
    }

    #[test]
    fn a_serial_radio_comes_from_the_flags_or_the_file_and_replaces_the_files_host() {
        let s = with_file(
            "serial = \"/dev/ttyACM0\"\nbaud = 9600",
            EngineArgs::default(),
        );
        assert_eq!(
            s.engine.link.endpoint,
            Endpoint::Serial {
                path: "/dev/ttyACM0".into(),
                baud: 9600
            }
        );
        assert_eq!(s.host(), "/dev/ttyACM0");
        let flags = EngineArgs {
            serial: Some("/dev/serial/by-id/usb-RAK4631".into()),
            ..EngineArgs::default()
        };
        let s = with_file("host = \"radio.lan\"", flags);
        assert_eq!(
            s.engine.link.endpoint,
            Endpoint::Serial {
                path: "/dev/serial/by-id/usb-RAK4631".into(),
                baud: DEFAULT_BAUD
            },
            "the command line names the radio; the file's host is not a conflict"
        );
        let flags = EngineArgs {
            host: Some("10.0.0.5:4403".into()),
            ..EngineArgs::default()
        };
        let s = with_file("serial = \"/dev/ttyACM0\"", flags);
        assert_eq!(s.host(), "10.0.0.5:4403");
    }

    #[test]
    fn host_and_serial_together_or_a_baud_without_serial_are_refused() {
        let both = EngineArgs {
            host: Some("radio.lan:4403".into()),
            serial: Some("/dev/ttyACM0".into()),
            ..EngineArgs::default()
        };
        let args = GlobalArgs {
            engine: both,
            ..GlobalArgs::default()
        };
        let err = resolve(&args, None).expect_err("two radios").to_string();
        assert!(
            err.contains("both name the radio on the command line"),
            "{err}"
        );
        let file = FileConfig::parse("host = \"a\"\nserial = \"/dev/ttyUSB0\"").expect("parses");
        let err = resolve(&GlobalArgs::default(), Some(file)).expect_err("two radios");
        assert!(err.to_string().contains("in the config file"), "{err}");
        let baud_only = GlobalArgs {
            engine: EngineArgs {
                baud: Some(9600),
                ..EngineArgs::default()
            },
            ..GlobalArgs::default()
        };
        let err = resolve(&baud_only, None).expect_err("baud without serial");
        assert!(err.to_string().contains("--serial"), "{err}");
    }

    #[test]
    fn the_proxy_comes_from_the_file_with_the_flags_over_it() {
        let flags = EngineArgs {
            max_clients: Some(5),
            ..EngineArgs::default()
        };
        let proxy = with_file("listen = \"127.0.0.1:4404\"\nmax-clients = 3\ndownstream-grace = \"1m\"\ndeny-admin = [\"reboot\", \"nodedb-reset\"]", flags)
            .engine
            .proxy
            .expect("--listen from the file");
        assert_eq!(proxy.listen.to_string(), "127.0.0.1:4404");
        assert_eq!(proxy.max_clients, 5);
        assert_eq!(proxy.downstream_grace, Duration::from_secs(60));
        assert_eq!(
            proxy.deny_admin,
            [DestructiveAdmin::Reboot, DestructiveAdmin::NodedbReset]
        );
        assert!(!proxy.allow_remote_admin);
        let err = FileConfig::parse("deny-admin = [\"reboot\", \"everything\"]").unwrap_err();
        assert!(err.contains("everything"), "{err}");
        let all = with_file(
            "listen = \"127.0.0.1:4404\"\ndeny-admin = [\"reboot\", \"destructive\"]",
            EngineArgs::default(),
        )
        .engine
        .proxy
        .expect("--listen from the file");
        assert_eq!(all.deny_admin, DestructiveAdmin::ALL);
    }

    #[test]
    fn the_broker_comes_from_the_flags_or_the_file_with_its_channels_and_fleet() {
        let flags = EngineArgs {
            mqtt_password: Some("from-env".into()),
            mqtt_root: Some("msh/EU_868/".into()),
            ..EngineArgs::default()
        };
        let s = with_file(
            "mqtt = \"mqtt://gw@broker.lan\"\nfleet = \"north\"\nchannel-keys = [\"ops=AQ==\"]\nmqtt-max-nodes = 500",
            flags,
        );
        let m = s.engine.mqtt.expect("mqtt");
        assert_eq!(m.broker.host, "broker.lan");
        assert_eq!(m.broker.password.as_deref(), Some("from-env"));
        assert_eq!(m.root, "msh/EU_868");
        assert_eq!(m.fleet.as_deref(), Some("north"));
        assert_eq!(m.channel_keys.len(), 1);
        assert_eq!(m.channel_keys[0].name, "ops");
        assert_eq!(m.max_unheard, 500);
        let s = resolve(&GlobalArgs::default(), None).expect("valid");
        assert_eq!(s.engine.mqtt, None);
    }

    #[test]
    fn mqtt_companions_without_a_broker_and_bad_keys_are_refused() {
        let with = |engine: EngineArgs| {
            resolve(
                &GlobalArgs {
                    engine,
                    ..GlobalArgs::default()
                },
                None,
            )
            .map_err(|e| e.to_string())
        };
        let err = with(EngineArgs {
            fleet: Some("north".into()),
            ..EngineArgs::default()
        })
        .unwrap_err();
        assert!(err.contains("--fleet needs --mqtt"), "{err}");
        let err = with(EngineArgs {
            mqtt_max_nodes: Some(5),
            ..EngineArgs::default()
        })
        .unwrap_err();
        assert!(err.contains("--mqtt-max-nodes needs --mqtt"), "{err}");
        for (broker, ca, says) in [
            ("mqtt://h", "/etc/hostname", "is not mqtts://"),
            ("mqtts://h", "/etc/hostname", "no PEM certificate"),
            ("mqtts://h", "/nonexistent/ca.pem", "cannot read --mqtt-ca"),
        ] {
            let err = with(EngineArgs {
                mqtt: Some(broker.into()),
                mqtt_ca: Some(ca.into()),
                ..EngineArgs::default()
            })
            .unwrap_err();
            assert!(err.contains(says), "{broker} {ca}: {err}");
        }
        let broker = || Some("mqtt://h".to_string());
        for (key, why) in [
            ("ops", "NAME=BASE64KEY"),
            ("ops=!!", "not base64"),
            ("ops=AAAA", "1, 16 or 32 bytes"),
            ("ops=AA==", "no encryption"),
        ] {
            let err = with(EngineArgs {
                mqtt: broker(),
                channel_key: vec![key.into()],
                ..EngineArgs::default()
            })
            .unwrap_err();
            assert!(err.contains(why), "{key}: {err}");
        }
        let err = with(EngineArgs {
            mqtt: broker(),
            fleet: Some("a/b".into()),
            ..EngineArgs::default()
        })
        .unwrap_err();
        assert!(err.contains("fleet"), "{err}");
        let err = with(EngineArgs {
            mqtt: Some("http://h".into()),
            ..EngineArgs::default()
        })
        .unwrap_err();
        assert!(err.contains("not a broker URL"), "{err}");
    }

    #[test]
    fn cache_ttl_shorter_than_interval_is_refused_with_the_reason() {
        let args = GlobalArgs {
            engine: EngineArgs {
                sync_interval: Some(Duration::from_secs(300)),
                cache_ttl: Some(Duration::from_secs(240)),
                ..EngineArgs::default()
            },
            ..GlobalArgs::default()
        };
        let err = resolve(&args, None).unwrap_err().to_string();
        assert!(err.contains("shorter than --sync-interval"), "{err}");
        let args = GlobalArgs {
            engine: EngineArgs {
                sync_interval: Some(Duration::from_secs(300)),
                cache_ttl: Some(Duration::from_secs(420)),
                ..EngineArgs::default()
            },
            ..GlobalArgs::default()
        };
        let err = resolve(&args, None).unwrap_err().to_string();
        assert!(err.contains("not a multiple"), "{err}");
    }

    #[test]
    fn command_line_definition_is_consistent() {
        command().debug_assert();
        let parse = |args: &[&str]| {
            let matches = command().try_get_matches_from(args).expect("parses");
            let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).expect("fits");
            let given =
                |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
            cli.global_args(given).map(|g| (cli.command, g))
        };
        let (chosen, _) = parse(&["keysync", "sim", "--announce-every", "off"]).expect("valid");
        let Some(Command::Sim(args)) = chosen else {
            panic!("not sim");
        };
        assert_eq!(args.announce_every, Duration::ZERO);
        assert!(
            command()
                .try_get_matches_from(["keysync", "sim", "--db", "k.db"])
                .is_err()
        );
        let err = parse(&["keysync", "--db", "k.db", "sim"]).unwrap_err();
        assert_eq!(err.to_string(), "--db means nothing to `keysync sim`");
        let err = parse(&["keysync", "--push-gap", "1s", "keys"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--push-gap means nothing to `keysync keys`"
        );
        // Before or after the subcommand; after wins.
        for args in [
            &["keysync", "--db", "k.db", "keys", "accept", "!0a0a0a0a"][..],
            &["keysync", "keys", "--db", "k.db", "accept", "!0a0a0a0a"],
            &["keysync", "keys", "accept", "!0a0a0a0a", "--db", "k.db"],
            &[
                "keysync", "--db", "other.db", "import", "meshbot", "m.db", "--db", "k.db",
            ],
        ] {
            let (_, g) = parse(args).expect("valid");
            assert_eq!(g.store.db, Some(PathBuf::from("k.db")), "{args:?}");
        }
        let (_, g) = parse(&[
            "keysync",
            "--host",
            "a",
            "sync",
            "--once",
            "--push-gap",
            "1s",
        ])
        .expect("valid");
        assert_eq!(g.engine.host.as_deref(), Some("a:4403"));
        assert_eq!(g.engine.push_gap, Some(Duration::from_secs(1)));
    }

    #[test]
    fn hosts_get_the_default_port() {
        assert_eq!(
            normalize_host("meshtastic.local").unwrap(),
            "meshtastic.local:4403"
        );
        assert_eq!(normalize_host("10.1.2.3:4000").unwrap(), "10.1.2.3:4000");
        assert_eq!(normalize_host("::1").unwrap(), "[::1]:4403");
        assert_eq!(normalize_host("[::1]:5").unwrap(), "[::1]:5");
        assert!(normalize_host("radio:http").is_err());
        for port_zero in ["h:0", "127.0.0.1:0", "[::1]:0"] {
            assert!(normalize_host(port_zero).is_err(), "{port_zero}");
        }
        assert!(normalize_host("").is_err());
    }

    #[test]
    fn the_example_config_file_resolves_with_every_key_it_shows() {
        let example = include_str!("../assets/config.example.toml");
        let every_key: String = example
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest
                        .split_once(" = ")
                        .is_some_and(|(k, _)| !k.contains(' ')) =>
                {
                    rest
                }
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        // The authority file the example names, made real.
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = dir.path().join("broker-ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["mqtt.example.net".to_string()])
            .expect("a certificate");
        std::fs::write(&ca, cert.cert.pem()).expect("written");
        let every_key = every_key.replace("/etc/keysync/broker-ca.pem", &ca.display().to_string());
        for text in [example, every_key.as_str()] {
            let file = FileConfig::parse(text).expect("the example parses");
            resolve(&GlobalArgs::default(), Some(file)).expect("the example resolves");
        }
        assert!(every_key.contains("\ndeny-admin = "), "{every_key}");
    }
}
