//! The binary as an operator meets it: flags, config files, exit codes, the headless link.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use assert_cmd::Command as Cmd;
use common::{sim_config, start_sim, wait_until};

fn keysync() -> Cmd {
    let mut cmd = Cmd::new(env!("CARGO_BIN_EXE_keysync"));
    // Keep the operator's real config and environment out of the tests.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KEYSYNC_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("XDG_CONFIG_HOME", "/nonexistent-keysync-test")
        .env("HOME", "/nonexistent-keysync-test");
    cmd
}

fn stderr_of(cmd: &mut Cmd) -> (i32, String) {
    let out = cmd.output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_option() {
    let out = keysync().arg("--help").output().expect("runs");
    assert!(out.status.success());
    insta::assert_snapshot!("help", String::from_utf8_lossy(&out.stdout));
    let out = keysync().args(["sim", "--help"]).output().expect("runs");
    assert!(out.status.success());
    insta::assert_snapshot!("sim_help", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let (code, err) = stderr_of(keysync().arg("--bogus"));
    assert_eq!(code, 2);
    assert!(err.contains("--bogus"), "{err}");
}

#[test]
fn bad_duration_says_how_to_write_one() {
    let (code, err) = stderr_of(keysync().args(["--headless", "--heartbeat", "soon"]));
    assert_eq!(code, 2);
    assert!(err.contains("try 90s"), "{err}");
}

#[test]
fn every_duration_above_thirty_days_is_a_usage_error_not_a_panic() {
    let huge = "500000000000y";
    let global = [
        "--sync-interval",
        "--cache-ttl",
        "--heartbeat",
        "--push-gap",
        "--downstream-grace",
    ];
    let mut cases: Vec<Vec<&str>> = global.iter().map(|f| vec!["--headless", f, huge]).collect();
    cases.push(vec!["sync", "--once", "--wait", huge]);
    cases.push(vec!["sim", "--idle-timeout", huge]);
    cases.push(vec!["sim", "--announce-every", huge]);
    for args in cases {
        let (code, err) = stderr_of(keysync().args(&args));
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("too long: at most 30days"), "{args:?}: {err}");
    }
    let (code, err) = stderr_of(
        keysync()
            .env("KEYSYNC_DOWNSTREAM_GRACE", "40d")
            .arg("--headless"),
    );
    assert_eq!((code, err.contains("at most 30days")), (2, true), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "sync-interval = \"500000000000y\"\n").expect("write");
    let (code, err) = stderr_of(keysync().arg("--headless").arg("--config").arg(&config));
    assert_eq!((code, err.contains("at most 30days")), (2, true), "{err}");
}

#[test]
fn a_radio_host_with_port_zero_is_a_usage_error() {
    for host in ["h:0", "127.0.0.1:0", "[::1]:0"] {
        let (code, err) = stderr_of(keysync().args(["sync", "--once", "--host", host]));
        assert_eq!(code, 2, "{host}: {err}");
        assert!(err.contains("not a TCP port"), "{host}: {err}");
    }
}

#[test]
fn cache_ttl_shorter_than_the_interval_is_refused_with_the_reason() {
    let (code, err) =
        stderr_of(keysync().args(["--headless", "--sync-interval", "5m", "--cache-ttl", "4m"]));
    assert_eq!(code, 2);
    assert!(err.contains("shorter than --sync-interval"), "{err}");
}

#[test]
fn env_values_are_validated_like_flags() {
    let (code, err) = stderr_of(
        keysync()
            .arg("--headless")
            .env("KEYSYNC_HOST", "radio:http"),
    );
    assert_eq!(code, 2);
    assert!(err.contains("not a TCP port"), "{err}");
}

#[test]
fn missing_or_invalid_config_file_is_a_usage_error_naming_the_file() {
    let (code, err) =
        stderr_of(keysync().args(["--headless", "--config", "/nonexistent/keysync.toml"]));
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/keysync.toml"), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "host = \"radio\"\nheartbaet = \"30s\"\n").expect("write");
    let (code, err) = stderr_of(keysync().arg("--headless").arg("--config").arg(&path));
    assert_eq!(code, 2);
    assert!(err.contains("heartbaet"), "{err}");
    // A path that never ends is read only so far.
    let (code, err) = stderr_of(keysync().args(["--headless", "--config", "/dev/zero"]));
    assert_eq!(code, 2);
    assert!(err.contains("not a regular file (it is a device)"), "{err}");
}

#[test]
fn a_fifo_named_on_the_command_line_is_refused_at_once_instead_of_blocking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", fifo.display());
    let db = dir.path().join("keys.db");
    let runs: [&[&std::ffi::OsStr]; 3] = [
        &["--headless".as_ref(), "--config".as_ref(), fifo.as_os_str()],
        &["keys".as_ref(), "--db".as_ref(), fifo.as_os_str()],
        &[
            "import".as_ref(),
            "meshbot".as_ref(),
            fifo.as_os_str(),
            "--db".as_ref(),
            db.as_os_str(),
        ],
    ];
    for args in runs {
        // Nobody writes to the FIFO: a keysync that waited on it is killed and fails the test.
        let (code, err) = stderr_of(
            keysync()
                .args(args)
                .timeout(std::time::Duration::from_secs(20)),
        );
        assert!(code == 1 || code == 2, "{args:?}: exit {code}: {err}");
        assert!(
            err.contains("not a regular file (it is a FIFO)"),
            "{args:?}: {err}"
        );
        assert!(err.contains(&*fifo.to_string_lossy()), "{args:?}: {err}");
    }
}

#[test]
fn bad_scenario_file_fails_with_its_name_and_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.toml");
    std::fs::write(&path, "[[event]]\nat = \"1s\"\nkind = \"stall\"\n").expect("write");
    let (code, err) = stderr_of(
        keysync()
            .args(["sim", "--listen", "127.0.0.1:0", "--scenario"])
            .arg(&path),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("s.toml") && err.contains("stall needs `for`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_logs_link_changes_and_closes_cleanly_on_sigterm() {
    let sim = start_sim(sim_config(10));
    // A store of its own: the user's default one may belong to another keysync.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keysync"))
        .args(["--headless", "--heartbeat", "1s", "--host"])
        .arg(sim.addr().to_string())
        .arg("--db")
        .arg(dir.path().join("k.db"))
        .env("XDG_CONFIG_HOME", "/nonexistent-keysync-test")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keysync starts");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    while !log.iter().any(|l: &String| l.contains("link up")) {
        let line = rx
            .recv_timeout(common::WAIT)
            .unwrap_or_else(|_| panic!("no 'link up' in {log:#?}"));
        log.push(line);
    }
    assert!(
        log.iter().any(|l| l.contains("connecting (attempt 1)")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("10 nodes") || l.contains("11 nodes")),
        "{log:#?}"
    );

    sim.inject(keysync::sim::Fault::Drop).await;
    wait_until("a reconnect", || {
        sim.counters().connections.load(Ordering::Relaxed) == 2
    })
    .await;

    common::sigterm(&child);
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("joins")
        .expect("waits");
    assert_eq!(status.status.code(), Some(0));
    assert!(
        status.stdout.is_empty(),
        "nothing on stdout in headless mode"
    );
    for line in rx.try_iter() {
        log.push(line);
    }
    assert!(
        log.iter().any(|l| l.contains("closed: closed by radio")),
        "{log:#?}"
    );
    assert!(log.iter().any(|l| l.contains("link stopped")), "{log:#?}");
    wait_until("the sim to see the disconnect", || {
        sim.counters().received().get("disconnect") == Some(&1)
    })
    .await;
}

#[test]
fn a_listen_or_metrics_address_in_use_is_refused_before_the_radio_is_dialled() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let addr = taken.local_addr().expect("addr").to_string();
    // A radio that would notice a connection: keysync must not take its one TCP slot (and evict
    // its current client) only to fail on the proxy's or the metrics' port.
    let radio = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    radio.set_nonblocking(true).expect("nonblocking");
    let host = radio.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    for (flag, says) in [
        ("--listen", "cannot listen for downstream clients"),
        ("--metrics", "cannot serve metrics on"),
    ] {
        for _ in 0..3 {
            let (code, err) = stderr_of(
                keysync()
                    .args(["--headless", "--host", &host, flag, &addr, "--db"])
                    .arg(dir.path().join("k.db")),
            );
            assert_eq!(code, 1, "{err}");
            assert!(err.contains(says) && err.contains(&addr), "{err}");
        }
    }
    match radio.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("keysync dialled the radio before binding its ports: {other:?}"),
    }
}

#[test]
fn a_listen_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, err) = stderr_of(
        keysync()
            .args([
                "--headless",
                "--host",
                "127.0.0.1:9",
                "--listen",
                &addr,
                "--db",
            ])
            .arg(dir.path().join("k.db")),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot listen for downstream clients") && err.contains(&addr),
        "{err}"
    );
    let (code, err) = stderr_of(keysync().args(["--headless", "--listen", "localhost"]));
    assert_eq!(code, 2, "{err}");
}
