//! A program in a real terminal: a detached tmux session on a server of its own (so tests never
//! touch the operator's tmux), driven by key presses and read back from the screen.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    /// Runs `command` (through the shell) in a new detached `cols`×`rows` session on a tmux
    /// server named after `name` and this process.
    pub fn start(name: &str, cols: u16, rows: u16, command: &str) -> Self {
        let tmux = Self {
            socket: format!("keysync-test-{name}-{}", std::process::id()),
            session: name.into(),
        };
        let started = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            command,
        ]);
        assert!(
            started.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        tmux
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs")
    }

    pub fn screen(&self) -> String {
        String::from_utf8_lossy(
            &self
                .run(&["capture-pane", "-p", "-t", &self.session])
                .stdout,
        )
        .into_owned()
    }

    /// Presses `keys` as tmux names them (`q`, `Escape`, `Enter`).
    pub fn keys(&self, keys: &str) {
        self.run(&["send-keys", "-t", &self.session, keys]);
    }

    /// Types `text` as it is, character by character.
    pub fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", &self.session, "-l", text]);
    }

    /// Waits until the screen satisfies `cond`; panics with the last screen after 60 s.
    pub fn wait_for(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if cond(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (20 s at most) for the program to write its exit code to `exit_file` (the
    /// session's command does `echo $? > FILE`) and returns it.
    pub fn exit_code(&self, exit_file: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(code) = std::fs::read_to_string(exit_file)
                && code.ends_with('\n')
            {
                return code.trim().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "the program did not exit; screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

/// Whether tmux is here; under CI its absence is a failure (`.ci/run` installs it).
pub fn available() -> bool {
    let here = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        here || std::env::var("CI").as_deref() != Ok("true"),
        "tmux is missing under CI: .ci/run must install it"
    );
    here
}
