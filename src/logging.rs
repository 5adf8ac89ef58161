//! Log output for the modes that own no terminal UI: one line per record on stderr (and
//! optionally a file), with a UTC timestamp, the level and the target.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use log::{LevelFilter, Log, Metadata, Record};

use crate::engine::printable;

struct LineLogger {
    level: LevelFilter,
    file: Option<Mutex<File>>,
}

impl Log for LineLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level && !noisy(metadata.target(), metadata.level())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = line(
            std::time::SystemTime::now(),
            record.level(),
            record.target(),
            &record.args().to_string(),
        );
        // A full disk or a closed stderr must not take the link down with it.
        let _ = std::io::stderr().write_all(line.as_bytes());
        if let Some(mut f) = self.file.as_ref().and_then(|f| f.lock().ok()) {
            let _ = f.write_all(line.as_bytes());
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// One log line. The message is made printable whatever it carries: a name that slipped
/// through unsanitized still cannot move the cursor, retitle the terminal or start a line of
/// its own.
fn line(at: std::time::SystemTime, level: log::Level, target: &str, message: &str) -> String {
    format!(
        "{} {level:<5} {target} {}\n",
        humantime::format_rfc3339_seconds(at),
        printable(message)
    )
}

/// Dependencies that chatter below warn are muted.
fn noisy(target: &str, level: log::Level) -> bool {
    level > log::Level::Warn && !target.starts_with("keysync")
}

/// Installs the stderr logger; `log_file` is appended to as well.
pub fn init_stderr(level: LevelFilter, log_file: Option<&Path>) -> std::io::Result<()> {
    let file = log_file
        .map(|p| File::options().create(true).append(true).open(p))
        .transpose()?
        .map(Mutex::new);
    let logger = LineLogger { level, file };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_with_escapes_and_newlines_stays_one_inert_line() {
        let at = std::time::UNIX_EPOCH;
        let out = line(
            at,
            log::Level::Info,
            "keysync::store",
            "learned \x1b]0;TITLE\x07\x1b[2J\n1970-01-01T00:00:00Z ERROR keysync forged",
        );
        assert_eq!(
            out,
            "1970-01-01T00:00:00Z INFO  keysync::store learned ]0;TITLE[2J1970-01-01T00:00:00Z ERROR keysync forged\n"
        );
    }
}
