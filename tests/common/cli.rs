//! The `keysync` binary run as a one-shot command against a store file, as an operator runs it.

use std::path::Path;

use assert_cmd::Command as Cmd;

/// `keysync --db DB` with none of the caller's `KEYSYNC_*` settings and no config file.
pub fn keysync(db: &Path) -> Cmd {
    let mut cmd = Cmd::new(env!("CARGO_BIN_EXE_keysync"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KEYSYNC_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("XDG_CONFIG_HOME", "/nonexistent-keysync-test")
        .arg("--db")
        .arg(db);
    cmd
}

/// Runs `cmd`: its exit code, stdout and stderr.
pub fn run(cmd: &mut Cmd) -> (i32, String, String) {
    let out = cmd.output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
