//! The real Python `meshtastic` client against `keysync sim`: if the reference client reads our
//! simulated radio as it reads a real one, the simulator is faithful where it matters.
//!
//! The client is found through `KEYSYNC_MESHTASTIC`, then `target/pyenv/bin/meshtastic` (where
//! `.ci/run` installs it), then `PATH`. Under `CI=true` a missing client fails the test.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use keysync::sim::population::Population;

fn meshtastic_cli() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KEYSYNC_MESHTASTIC") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/meshtastic");
    if venv.exists() {
        return Some(venv);
    }
    let on_path = Command::new("meshtastic")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    on_path.then(|| PathBuf::from("meshtastic"))
}

struct Sim {
    child: Child,
    addr: String,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `keysync sim` on a port the OS picks and reads the address from its log.
fn start_sim(nodes: usize) -> Sim {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keysync"))
        .args([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--announce-every",
            "off",
            "--seed",
            "1",
        ])
        .args(["--nodes", &nodes.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keysync sim starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("sim logs its address before exiting")
            .expect("utf-8 log");
        if let Some(rest) = line.split(" listening on ").nth(1) {
            break rest.split(':').take(2).collect::<Vec<_>>().join(":");
        }
    };
    // Keep draining the log so the sim never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Sim { child, addr }
}

fn run_client(cli: &PathBuf, host: &str, arg: &str) -> String {
    let out = Command::new("timeout")
        .arg("120")
        .arg(cli)
        .args(["--host", host, arg])
        .output()
        .expect("the meshtastic client runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "meshtastic {arg} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn python_client_lists_every_simulated_node_and_the_owner() {
    let Some(cli) = meshtastic_cli() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the Python meshtastic client is missing under CI: .ci/run must install it"
        );
        eprintln!(
            "skipping: the Python meshtastic client is not installed (pip install meshtastic)"
        );
        return;
    };
    let sim = start_sim(40);
    let host = sim.addr.clone();

    let mut population = Population::new(1);
    let own = population.own_node();
    let nodes: Vec<_> = (0..40).map(|_| population.next_node()).collect();

    let table = run_client(&cli, &host, "--nodes");
    for node in std::iter::once(&own).chain(&nodes) {
        let user = node.user.as_ref().expect("generated nodes have users");
        assert!(
            table.contains(&user.id),
            "--nodes lacks {}:\n{table}",
            user.id
        );
        assert!(
            table.contains(&user.long_name),
            "--nodes lacks {:?}:\n{table}",
            user.long_name
        );
    }

    let info = run_client(&cli, &host, "--info");
    assert!(info.contains("Owner: keysync sim (SIM)"), "{info}");
    assert!(info.contains("2.7.15"), "--info shows the firmware: {info}");
}
