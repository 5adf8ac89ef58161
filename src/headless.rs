//! The modes without a terminal UI: `--headless` for systemd, and `sync --once`. Everything
//! goes to the log on stderr; SIGINT and SIGTERM close the radio link cleanly.

use std::time::Duration;

use crate::cli::Settings;
use crate::engine::Outcome;
use crate::engine::Store;
use crate::engine::{self, EngineConfig};
use crate::sim;

/// Runs until SIGINT or SIGTERM, then closes the link and returns.
pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    // Bound before anything starts: a taken port must not cost the radio's one TCP slot.
    let metrics = settings.metrics.map(crate::metrics::bind).transpose()?;
    let store = settings.open_store()?;
    log::info!(target: "keysync",
        "keysync {} headless: radio {}, key store {}, check every {}, cache TTL {}",
        env!("CARGO_PKG_VERSION"), settings.host(), settings.db().display(),
        humantime::format_duration(settings.engine.sync_interval), humantime::format_duration(settings.engine.sync.cache_ttl));
    let engine = start_engine(settings.engine.clone(), store)?;
    if let Some(addr) = engine.snapshot.borrow().proxy_addr {
        log::info!(target: "keysync", "point the gateway's bot at {addr} (TCPInterface(hostname=\"{}\", portNumber={}))", addr.ip(), addr.port());
    }
    let metrics = metrics
        .map(|m| m.serve(engine.snapshot.clone()))
        .transpose()?;
    shutdown_signal().await?;
    log::info!(target: "keysync", "shutting down: closing the radio link");
    engine.quit().await;
    drop(metrics);
    Ok(())
}

/// Starts the engine; the error names the address when the proxy's port cannot be bound.
pub fn start_engine(config: EngineConfig, store: Store) -> anyhow::Result<engine::EngineHandle> {
    let listen = config.proxy.as_ref().map(|p| p.listen);
    engine::try_start(config, store).map_err(|e| match listen {
        Some(addr) => anyhow::anyhow!("cannot listen for downstream clients on {addr}: {e}"),
        None => anyhow::anyhow!("cannot start the engine: {e}"),
    })
}

/// `keysync sync --once`: connect, run one forced sync, print its outcome. Fails when the
/// radio cannot be reached within `wait` or the sync fails.
pub async fn sync_once(settings: &Settings, wait: Duration) -> anyhow::Result<()> {
    let store = settings.open_store()?;
    // One sync with the radio: the broker is for the modes that keep running.
    let config = EngineConfig {
        mqtt: None,
        ..settings.engine.clone()
    };
    let engine = start_engine(config, store)?;
    let mut snapshot = engine.snapshot.clone();
    let finished = tokio::time::timeout(wait, snapshot.wait_for(|s| s.sync.last.is_some()))
        .await
        .map(|r| r.map(|s| s.sync.last.clone()));
    let outcome = match finished {
        Ok(Ok(report)) => report,
        _ => None,
    };
    let link = snapshot.borrow().link.clone();
    engine.quit().await;
    let Some(report) = outcome else {
        let cause = link
            .last_cause
            .map_or_else(|| link.state.to_string(), |c| c.to_string());
        anyhow::bail!(
            "could not reach the radio at {} within {}: {cause}",
            settings.host(),
            humantime::format_duration(wait)
        );
    };
    println!("{}", report.summary());
    if report.outcome == Outcome::Failed {
        anyhow::bail!("sync failed");
    }
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

/// `keysync sim`: serves until SIGINT or SIGTERM, then prints what it counted.
pub async fn run_sim(args: &crate::cli::SimArgs) -> anyhow::Result<()> {
    let scenario = match &args.scenario {
        Some(path) => sim::Scenario::load(path)?,
        None => sim::Scenario::default(),
    };
    let profile = sim::Profile::new(&args.firmware, args.hw, args.role)?;
    let config = sim::SimConfig {
        listen: args.listen,
        nodes: args.nodes,
        seed: args.seed,
        capacity: args.capacity.map(usize::from),
        idle_timeout: args.idle_timeout,
        announce_every: (!args.announce_every.is_zero()).then_some(args.announce_every),
        profile,
        scenario,
        reboot_time: args.reboot_time,
        managed: args.managed,
        ..sim::SimConfig::default()
    };
    let radio = match &args.serial_pty {
        Some(link) => {
            let radio = sim::SimHandle::start_serial(config, link.clone()).map_err(|e| {
                anyhow::anyhow!("cannot make a serial port at {}: {e}", link.display())
            })?;
            // The path is the sim's output: a script reads it to point keysync at the radio.
            let tty = std::fs::read_link(link).unwrap_or_default();
            println!("serial port {} -> {}", link.display(), tty.display());
            radio
        }
        None => sim::SimHandle::start(config)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?,
    };
    shutdown_signal().await?;
    let counters = radio.counters();
    let protected = radio.protected();
    log::info!(target: "keysync::sim",
        "stopping; counters: {:?}; NodeDB {} of {} entries, {} protected ({} favourite, {} ignored, {} verified), {} evictions",
        sim::snapshot(&counters), radio.nodedb().len(), radio.capacity(), protected.total,
        protected.favourite, protected.ignored, protected.verified, radio.evictions());
    radio.shutdown().await;
    Ok(())
}
