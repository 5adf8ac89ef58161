//! keysync's entry point: parse the command line, run the chosen mode, map errors to exit
//! codes (0 ok, 1 runtime failure, 2 usage error).

use std::process::ExitCode;

use keysync::cli::{self, Command, Settings, UsageError};
use keysync::{commands, headless, logging, sim, tui};

const USAGE: u8 = 2;
const FAILURE: u8 = 1;

fn main() -> ExitCode {
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
                sim::run_cli(&args).await
            }
            Some(Command::Sync(args)) => {
                init_logs(&settings)?;
                headless::sync_once(&settings, args.wait).await
            }
            Some(Command::Keys(args)) => {
                init_logs(&settings)?;
                emit(&commands::keys(&settings, &args)?)
            }
            Some(Command::Import { from, .. }) => {
                init_logs(&settings)?;
                emit(&commands::import(&settings, &from)?)
            }
            None if cli.headless => {
                init_logs(&settings)?;
                headless::run(&settings).await
            }
            None => tui::run(&settings, cli.demo).await,
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

/// Writes command output to stdout; a closed pipe (`keysync keys | head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
