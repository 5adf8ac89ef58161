//! Files named on the command line: read only so far, since a path can name a device that
//! never ends (`/dev/zero`) or a file far larger than any real one.

use std::io::{self, Read as _};
use std::path::Path;

/// The file's bytes, or an error if it holds more than `max`.
pub fn read_small(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::other(format!("larger than {} KiB", max / 1024)));
    }
    Ok(bytes)
}

/// The bytes of a regular file, or an error if it is anything else or holds more than `max`.
///
/// Opened without blocking: opening a FIFO for reading waits for a writer, so a plain `open`
/// of `mkfifo x` would hang the command before it could say what is wrong.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, device or directory)",
        ));
    }
    if meta.len() > max {
        return Err(io::Error::other(format!("larger than {} KiB", max / 1024)));
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    // The file may have grown since it was measured.
    if bytes.len() as u64 > max {
        return Err(io::Error::other(format!("larger than {} KiB", max / 1024)));
    }
    Ok(bytes)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_regular_text(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_regular(path, max)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not UTF-8 text: {e}")))
}

/// The file as text, or an error if it holds more than `max` bytes or is not UTF-8.
pub fn read_text(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_small(path, max)?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not UTF-8 text: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_up_to_its_bound_and_no_further() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, "x".repeat(2048)).expect("written");
        assert_eq!(read_text(&path, 2048).expect("fits").len(), 2048);
        let err = read_text(&path, 2047).unwrap_err().to_string();
        assert_eq!(err, "larger than 1 KiB");
        std::fs::write(&path, [0xff, 0xfe]).expect("written");
        let err = read_text(&path, 2048).unwrap_err().to_string();
        assert!(err.starts_with("not UTF-8 text"), "{err}");
    }

    #[test]
    fn a_regular_file_is_read_and_a_fifo_or_directory_refused_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, "keys").expect("written");
        assert_eq!(read_regular_text(&path, 16).expect("read"), "keys");
        let err = read_regular_text(&path, 3).unwrap_err().to_string();
        assert_eq!(err, "larger than 0 KiB");
        // No writer ever opens this FIFO: a blocking open would never return.
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let err = read_regular(&fifo, 16).unwrap_err().to_string();
        assert!(err.starts_with("not a regular file"), "{err}");
        let err = read_regular(dir.path(), 16).unwrap_err().to_string();
        assert!(err.starts_with("not a regular file"), "{err}");
    }
}
