//! keysync's entry point: parse the command line, run the chosen mode, map errors to exit
//! codes (0 ok, 1 runtime failure, 2 usage error).

use std::process::ExitCode;

use keysync::cli::{self, Command, ExportFormat, KeysAction, Settings, UsageError};
#[cfg(feature = "tui")]
use keysync::tui;
use keysync::{commands, headless, logging};

const USAGE: u8 = 2;
const FAILURE: u8 = 1;

fn main() -> ExitCode {
    one_malloc_arena();
    let settings = cli::parse().and_then(|(cli, args)| Ok((cli, Settings::load(&args)?)));
    let (cli, settings) = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("keysync: {e}");
            return ExitCode::from(USAGE);
        }
    };
    // One blocking thread: the store's calls (serialised by its lock anyway) and name lookups.
    // Each thread that allocates gets its own malloc arena, which keeps the high-water mark of
    // the 10 000-node lists it built; fewer threads, fewer copies of that in RSS.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keysync: cannot start the async runtime: {e}");
            return ExitCode::from(FAILURE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Sim(args)) => {
                init_logs(&settings)?;
                headless::run_sim(&args).await
            }
            Some(Command::Sync(args)) => {
                init_logs(&settings)?;
                headless::sync_once(&settings, args.wait).await
            }
            Some(Command::Keys(args)) => {
                init_logs(&settings)?;
                if let Some(KeysAction::Export {
                    format,
                    trusted_only,
                }) = args.action
                {
                    export(&settings, format, trusted_only)
                } else {
                    let stdout = std::io::stdout();
                    let mut out = std::io::BufWriter::new(stdout.lock());
                    let written = commands::keys(&settings, &args, &mut out)
                        .and_then(|()| Ok(std::io::Write::flush(&mut out)?));
                    quiet_broken_pipe(written)
                }
            }
            Some(Command::Import { from, .. }) => {
                init_logs(&settings)?;
                emit(&commands::import(&settings, &from)?)
            }
            None if cli.headless => {
                init_logs(&settings)?;
                headless::run(&settings).await
            }
            #[cfg(feature = "tui")]
            None => tui::run(&settings, cli.demo).await,
            #[cfg(not(feature = "tui"))]
            None => Err(UsageError(
                "this keysync is built without the terminal monitor (--no-default-features): run it with --headless".into(),
            )
            .into()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keysync: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(USAGE)
            } else {
                ExitCode::from(FAILURE)
            }
        }
    }
}

fn init_logs(settings: &Settings) -> anyhow::Result<()> {
    logging::init_stderr(settings.log_level, settings.log_file.as_deref()).map_err(|e| {
        anyhow::anyhow!(
            "cannot open log file {}: {e}",
            settings
                .log_file
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )
    })
}

/// A closed pipe (`keysync keys | head`) is not an error.
fn quiet_broken_pipe(written: anyhow::Result<()>) -> anyhow::Result<()> {
    match written {
        Err(e) if broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// Writes command output to stdout; a closed pipe (`keysync keys | head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `keys export` to stdout as the store is read; a closed pipe ends it without an error.
fn export(settings: &Settings, format: ExportFormat, trusted_only: bool) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match commands::export(settings, format, trusted_only, &mut out) {
        Ok(count) => {
            eprintln!("keysync: exported {count} nodes");
            Ok(())
        }
        Err(e) if broken_pipe(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// glibc's malloc gives each thread that allocates an arena of its own, and each arena keeps
/// the high-water mark of what was built on it: with 10 000 keys the node lists built on the
/// store's thread and dropped on the others held about 3 MB of the monitor's RSS for good. One
/// arena serves keysync's few threads well. Set first thing, before any thread exists; a
/// `MALLOC_ARENA_MAX` the operator set is kept.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn one_malloc_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only sets one of malloc's tunables; no thread has allocated yet, and it
    // fails (returns 0) rather than misbehave on a value it does not take.
    #[expect(
        unsafe_code,
        reason = "glibc's one way to set M_ARENA_MAX from inside the process"
    )]
    let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}
