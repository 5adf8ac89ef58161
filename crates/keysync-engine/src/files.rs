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
}
