//! The real binary in a real terminal: `keysync --demo` inside tmux at 80×24, driven by key
//! presses and read back from the screen, as an operator would use it over SSH.

mod common;

use common::tmux::{self, Tmux};

#[test]
fn demo_in_a_terminal_forces_clears_and_quits_cleanly() {
    if !tmux::available() {
        eprintln!("skipping: tmux is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let exit_file = dir.path().join("exit");
    let command = format!(
        "env -u NO_COLOR XDG_CONFIG_HOME=/nonexistent {} --demo; echo $? > {}; sleep 30",
        env!("CARGO_BIN_EXE_keysync"),
        exit_file.display()
    );
    let tmux = Tmux::start("demo", 80, 24, &command);

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
    assert_eq!(tmux.exit_code(&exit_file), "0");
    // The terminal is restored: the alternate screen is gone, and no log line leaked onto it.
    let after = tmux.screen();
    assert!(!after.contains("Nodes"), "{after}");
    assert!(
        !after.contains("keysync::"),
        "log leaked to the terminal:\n{after}"
    );
}
