//! `keysync --headless`: the engine without a terminal UI, for systemd. Everything it does goes
//! to the log on stderr; SIGINT and SIGTERM close the radio link cleanly.

use crate::cli::Settings;
use crate::engine::{self, Command, EngineConfig};

/// The engine's configuration from resolved settings.
pub fn engine_config(settings: &Settings) -> EngineConfig {
    let mut link = engine::link::LinkConfig::new(settings.host.clone());
    link.heartbeat = settings.heartbeat;
    EngineConfig { link }
}

/// Runs until SIGINT or SIGTERM, then closes the link and returns.
pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    log::info!(target: "keysync", "keysync {} headless, radio {}", env!("CARGO_PKG_VERSION"), settings.host);
    let engine = engine::start(engine_config(settings));
    shutdown_signal().await?;
    log::info!(target: "keysync", "shutting down: closing the radio link");
    let _ = engine.commands.send(Command::Quit).await;
    engine.join().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
