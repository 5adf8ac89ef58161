//! Files named on the command line: read only so far, since a path can name a device that
//! never ends (`/dev/zero`), a FIFO that blocks the open and every read, or a file far larger
//! than any real one.

use std::fs::File;
use std::io::{self, Read as _};
use std::path::Path;

/// Opens `path` for reading if it is a regular file. The open does not wait (`O_NONBLOCK`:
/// opening a FIFO nobody writes to would block forever); a FIFO, a device, a socket or a
/// directory is refused, by what it is.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(not_regular(kind));
    }
    Ok(file)
}

/// `path` is absent or a regular file: anything else is refused before it is opened.
pub fn regular_or_absent(path: &Path) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Err(not_regular(meta.file_type())),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A path that names something other than a regular file, said by what it is.
fn not_regular(kind: std::fs::FileType) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a regular file (it is {})", kind_of(kind)),
    )
}

fn too_large(max: u64) -> io::Error {
    io::Error::other(format!("larger than {} KiB", max / 1024))
}

fn kind_of(kind: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// The file's bytes, or an error if it is not a regular file or holds more than `max`.
pub fn read_small(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    if file.metadata()?.len() > max {
        return Err(too_large(max));
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    // The file may have grown since it was measured.
    if bytes.len() as u64 > max {
        return Err(too_large(max));
    }
    Ok(bytes)
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

    #[cfg(unix)]
    #[test]
    fn a_fifo_or_a_device_is_refused_at_once_by_what_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success(), "mkfifo {}", fifo.display());
        // Nobody writes to the FIFO: an open that waited would hang this test, so it runs on
        // a thread and a bounded wait fails instead.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read_text(&fifo, 1024).map_err(|e| e.to_string()));
        });
        let read = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the read returned instead of blocking");
        assert_eq!(read, Err("not a regular file (it is a FIFO)".to_string()));
        let err = read_small(Path::new("/dev/zero"), 1024)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "not a regular file (it is a device)");
        let err = read_small(dir.path(), 1024).unwrap_err().to_string();
        assert_eq!(err, "not a regular file (it is a directory)");
    }
}
