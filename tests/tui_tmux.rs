//! The real binary in a real terminal: `keysync --demo` inside tmux at 80×24, driven by key
//! presses and read back from the screen, as an operator would use it over SSH.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(
            &self
                .run(&["capture-pane", "-p", "-t", &self.session])
                .stdout,
        )
        .into_owned()
    }

    fn keys(&self, keys: &str) {
        self.run(&["send-keys", "-t", &self.session, keys]);
    }

    /// Waits until the screen satisfies `cond`; panics with the last screen after 60 s.
    fn wait_for(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
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
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

fn tmux_available() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn demo_in_a_terminal_forces_clears_and_quits_cleanly() {
    if !tmux_available() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "tmux is missing under CI: .ci/run must install it"
        );
        eprintln!("skipping: tmux is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let exit_file = dir.path().join("exit");
    let tmux = Tmux {
        socket: format!("keysync-test-{}", std::process::id()),
        session: "demo".into(),
    };
    let command = format!(
        "env -u NO_COLOR XDG_CONFIG_HOME=/nonexistent {} --demo; echo $? > {}; sleep 30",
        env!("CARGO_BIN_EXE_keysync"),
        exit_file.display()
    );
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "demo",
        "-x",
        "80",
        "-y",
        "24",
        &command,
    ]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );

    let screen = tmux.wait_for("the startup sync", |s| {
        s.contains(" FORCED ") && s.contains("startup")
    });
    assert!(
        screen.contains("Nodes")
            && screen.contains("Sync")
            && screen.contains("Link")
            && screen.contains("Log")
    );
    assert!(screen.contains("DEMO"), "{screen}");

    tmux.keys("f");
    tmux.wait_for("the operator's forced run", |s| {
        s.contains(" FORCED ") && s.contains("operator")
    });

    tmux.keys("c");
    tmux.wait_for("the cache cleared", |s| {
        s.contains("cache cleared") || s.contains("cache empty")
    });

    tmux.keys("?");
    tmux.wait_for("the help overlay", |s| {
        s.contains("Keys") && s.contains("force sync: now,")
    });
    tmux.keys("Escape");
    tmux.wait_for("the help closed", |s| !s.contains("force sync: now,"));

    tmux.keys("q");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Path::new(&exit_file).exists() {
        assert!(
            Instant::now() < deadline,
            "keysync did not exit after q; screen:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(100));
    let code = std::fs::read_to_string(&exit_file).expect("exit code");
    assert_eq!(code.trim(), "0");
    // The terminal is restored: the alternate screen is gone, and no log line leaked onto it.
    let after = tmux.screen();
    assert!(!after.contains("Nodes"), "{after}");
    assert!(
        !after.contains("keysync::"),
        "log leaked to the terminal:\n{after}"
    );
}
