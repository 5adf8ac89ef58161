//! keysync: a terminal monitor for Meshtastic gateways that keeps the radio's NodeDB stocked
//! with the public keys PKI direct messages need, while sending as little as possible over the
//! radio's one TCP link.
//!
//! - [`engine`]: the link supervisor, frame codec and what we say to a radio; no terminal code.
//! - [`sim`]: a simulated radio that follows firmware 2.7's TCP API, for demos and tests.
//! - [`cli`]: flags, environment and config file resolved into [`cli::Settings`].
//! - [`headless`]: the engine under systemd, logging to stderr.
//! - [`metrics`]: `--metrics ADDR`, Prometheus metrics and JSON status over HTTP.

pub use keysync_engine as engine;
/// Durations as people write them (`90s`, `5m`, `1h 30m`), in flags, config files and scenarios.
pub mod duration {
    pub use keysync_engine::{
        DurationError, MAX_DURATION as MAX, compact_duration as compact,
        deserialize_duration as deserialize, deserialize_duration_opt as deserialize_opt,
        parse_duration as parse,
    };
}
pub use keysync_sim as sim;

#[cfg(feature = "tui")]
pub mod app;
pub mod cli;
pub mod commands;
#[cfg(feature = "tui")]
pub mod demo;
pub mod headless;
pub mod logging;
pub mod metrics;
pub mod qr;
#[cfg(feature = "tui")]
pub mod tui;
#[cfg(feature = "tui")]
pub mod ui;
