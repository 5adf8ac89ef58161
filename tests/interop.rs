//! The real Python `meshtastic` client against `keysync sim`: if the reference client reads our
//! simulated radio as it reads a real one, the simulator is faithful where it matters.
//!
//! The client is found through `KEYSYNC_MESHTASTIC`, then `target/pyenv/bin/meshtastic` (where
//! `.ci/run` installs it), then `PATH`; when none is there, the test installs it into
//! `target/pyenv` itself (`python3 -m venv`, `pip install meshtastic`) and fails, saying why, if
//! it cannot. A test that did not run never passes: without `python3` at build time (build.rs
//! sets `cfg(no_python)`) the tests are reported as ignored, with the reason.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use keysync::sim::population::Population;

fn pyenv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyenv")
}

fn meshtastic_cli() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KEYSYNC_MESHTASTIC") {
        return Some(PathBuf::from(p));
    }
    let venv = pyenv().join("bin/meshtastic");
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

/// Runs one provisioning step; its output goes into the panic message if it fails.
fn step(what: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot provision the Python meshtastic client: {what} did not start: {e}")
    });
    assert!(
        out.status.success(),
        "cannot provision the Python meshtastic client: {what} failed ({}):\n{}{}\n\
         Install it yourself (.ci/run shows how) or point KEYSYNC_MESHTASTIC at it.",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The client, installed into `target/pyenv` first if it is nowhere; panics saying why when it
/// cannot be.
fn required_cli() -> PathBuf {
    // Both tests of this file may ask at once; one installs, the other waits for it.
    static PROVISION: Mutex<()> = Mutex::new(());
    let _one_at_a_time = PROVISION
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(cli) = meshtastic_cli() {
        return cli;
    }
    let env = pyenv();
    eprintln!(
        "installing the Python meshtastic client into {} (once)",
        env.display()
    );
    step(
        "python3 -m venv",
        Command::new("python3").args(["-m", "venv"]).arg(&env),
    );
    step(
        "pip install meshtastic",
        Command::new(env.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "meshtastic",
        ]),
    );
    let cli = env.join("bin/meshtastic");
    assert!(
        cli.exists(),
        "pip installed meshtastic but {} is missing",
        cli.display()
    );
    cli
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
    start_sim_as(nodes, "2.7.26", "linux")
}

/// `start_sim` with a firmware profile (`--firmware`, `--hw`).
fn start_sim_as(nodes: usize, firmware: &str, hw: &str) -> Sim {
    let (child, addr, _log) = spawn_logged(
        Command::new(env!("CARGO_BIN_EXE_keysync"))
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
            .args(["--firmware", firmware, "--hw", hw]),
        " listening on ",
    );
    Sim { child, addr }
}

/// Spawns `cmd`, reads its stderr until a line contains `marker`, and returns the address that
/// follows the marker; the rest of the log keeps being collected.
fn spawn_logged(cmd: &mut Command, marker: &str) -> (Child, String, Arc<Mutex<Vec<String>>>) {
    let mut child = cmd
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keysync starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let log = Arc::new(Mutex::new(Vec::new()));
    let addr = loop {
        let line = lines
            .next()
            .expect("keysync logs its address before exiting")
            .expect("utf-8 log");
        log.lock().expect("log").push(line.clone());
        if let Some(rest) = line.split(marker).nth(1) {
            let host: String = rest.chars().take_while(|c| *c != ':').collect();
            let port: String = rest[host.len() + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            break format!("{host}:{port}");
        }
    };
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().expect("log").push(line);
        }
    });
    (child, addr, log)
}

fn run_client(cli: &PathBuf, host: &str, arg: &str) -> String {
    run_client_args(cli, host, &[arg])
}

#[test]
#[cfg_attr(
    no_python,
    ignore = "python3 is missing: the Python meshtastic client cannot be installed"
)]
fn python_client_lists_every_simulated_node_and_the_owner() {
    let cli = required_cli();
    let sim = start_sim(40);
    lists_every_node_and_the_owner(&cli, &sim, "2.7.26");
}

#[test]
#[cfg_attr(
    no_python,
    ignore = "python3 is missing: the Python meshtastic client cannot be installed"
)]
fn python_client_reads_a_2_6_7_esp32_radio() {
    // Before 2.6.8: no nodedb_count, no nodes-only download, no heartbeat answers.
    let cli = required_cli();
    let sim = start_sim_as(40, "2.6.7", "esp32");
    lists_every_node_and_the_owner(&cli, &sim, "2.6.7");
}

fn lists_every_node_and_the_owner(cli: &PathBuf, sim: &Sim, firmware: &str) {
    let host = sim.addr.clone();

    let mut population = Population::new(1);
    let own = population.own_node();
    let nodes: Vec<_> = (0..40).map(|_| population.next_node()).collect();

    let table = run_client(cli, &host, "--nodes");
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

    let info = run_client(cli, &host, "--info");
    assert!(info.contains("Owner: keysync sim (SIM)"), "{info}");
    assert!(info.contains(firmware), "--info shows the firmware: {info}");
}

fn python() -> PathBuf {
    let venv = pyenv().join("bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

#[test]
#[cfg_attr(
    no_python,
    ignore = "python3 is missing: the Python meshtastic client cannot be installed"
)]
fn two_python_clients_share_the_radio_through_the_proxy() {
    let cli = required_cli();
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim_child, sim_addr, sim_log) = spawn_logged(
        Command::new(env!("CARGO_BIN_EXE_keysync")).args([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--announce-every",
            "2s",
            "--nodes",
            "20",
        ]),
        " listening on ",
    );
    let _sim = Sim {
        child: sim_child,
        addr: sim_addr.clone(),
    };
    let (keysync, keysync_log) = start_proxy(
        &sim_addr,
        &dir.path().join("k.db"),
        &["--sync-interval", "2s", "--cache-ttl", "4s"],
    );
    let proxy_addr = keysync.addr.clone();
    let (host, port) = proxy_addr.split_once(':').expect("host:port");

    // Both clients at once: the CLI listing nodes, the bot exchanging a message.
    let bot = Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/bot.py"))
        .args([host, port])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the bot starts");
    let table = run_client(&cli, &proxy_addr, "--nodes");
    let bot = bot.wait_with_output().expect("the bot ends");
    let bot_out = String::from_utf8_lossy(&bot.stdout).into_owned();
    assert!(
        bot.status.success(),
        "the bot failed: {bot_out}\n{}",
        String::from_utf8_lossy(&bot.stderr)
    );
    assert!(bot_out.contains("nodes=21"), "{bot_out}");
    assert_lists_generated_nodes(&table, 20);

    let connects = sim_log
        .lock()
        .expect("log")
        .iter()
        .filter(|l| l.contains("connected"))
        .count();
    assert_eq!(
        connects,
        1,
        "the radio saw one TCP client the whole time: {:#?}",
        sim_log.lock().expect("log")
    );
    let log = keysync_log.lock().expect("log").clone();
    assert!(log.iter().any(|l| l.contains("sync forced")), "{log:#?}");
    assert!(
        log.iter().filter(|l| l.contains("sync ")).count() >= 2,
        "syncs ran meanwhile: {log:#?}"
    );
    assert!(
        log.iter()
            .filter(|l| l.contains("keysync::engine::proxy") && l.contains("connected"))
            .count()
            >= 2,
        "{log:#?}"
    );
    assert!(
        !log.iter().any(|l| l.contains("link closed")),
        "the radio link held: {log:#?}"
    );
}

/// keysync headless with `--listen` on a port the OS picks, in front of the radio at
/// `radio`, with `extra` options; the process (its `addr` is the proxy's) and its log.
fn start_proxy(
    radio: &str,
    db: &std::path::Path,
    extra: &[&str],
) -> (Sim, Arc<Mutex<Vec<String>>>) {
    let (child, addr, log) = spawn_logged(
        Command::new(env!("CARGO_BIN_EXE_keysync"))
            .args(["--headless", "--listen", "127.0.0.1:0", "--heartbeat", "2s"])
            .args(extra)
            .args(["--host", radio])
            .arg("--db")
            .arg(db),
        "point the gateway's bot at ",
    );
    (Sim { child, addr }, log)
}

/// One Python client renames the primary channel through the proxy (`--ch-set`); a second
/// client connecting right after gets the new name in its replay (`--info`): keysync refreshed
/// its configuration with a config-only download, and did not hand out the channels of its
/// handshake.
#[test]
#[cfg_attr(
    no_python,
    ignore = "python3 is missing: the Python meshtastic client cannot be installed"
)]
fn a_channel_renamed_by_one_python_client_is_what_the_next_one_sees() {
    let cli = required_cli();
    let sim = start_sim(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let (keysync, log) = start_proxy(&sim.addr, &dir.path().join("k.db"), &[]);
    let before = run_client(&cli, &keysync.addr, "--info");
    assert!(!before.contains("NEWNAME"), "{before}");
    let set = run_client_args(
        &cli,
        &keysync.addr,
        &["--ch-set", "name", "NEWNAME", "--ch-index", "0"],
    );
    assert!(set.contains("Writing modified channels"), "{set}");
    let after = run_client(&cli, &keysync.addr, "--info");
    let channel = after
        .lines()
        .find(|l| l.contains("Index 0: PRIMARY"))
        .unwrap_or_else(|| panic!("--info lists the primary channel:\n{after}"));
    eprintln!("the second client's --info shows: {channel}");
    assert!(channel.contains(r#""name": "NEWNAME""#), "{after}");
    let log = log.lock().expect("log").clone();
    assert!(
        log.iter()
            .any(|l| l.contains("configuration refreshed from the radio")),
        "{log:#?}"
    );
}

/// `table` (the CLI's `--nodes`) lists the first `n` nodes the sim generates for seed 1.
fn assert_lists_generated_nodes(table: &str, n: usize) {
    let mut population = Population::new(1);
    let _own = population.own_node();
    for node in (0..n).map(|_| population.next_node()) {
        let id = node.user.expect("user").id;
        assert!(
            table.contains(&id),
            "--nodes through the proxy lacks {id}:\n{table}"
        );
    }
}

/// A real Python client sends a DM through the proxy to a node whose key the radio (2.7.26,
/// which refuses DMs without a key) lacks and keysync trusts: the key goes to the radio first,
/// then the DM, which goes out encrypted the first time.
#[test]
#[cfg_attr(
    no_python,
    ignore = "python3 is missing: the Python meshtastic client cannot be installed"
)]
fn a_python_client_s_dm_through_the_proxy_gets_its_key_pushed_first() {
    let cli = required_cli();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let sim = sim_in(
        &runtime,
        keysync::sim::SimConfig {
            nodes: 40,
            capacity: Some(20),
            ..quiet_sim()
        },
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("k.db");
    let mut population = Population::new(1);
    let _own = population.own_node();
    let mesh: Vec<_> = (0..40).map(|_| population.next_node()).collect();
    trust_all(&db, &mesh);
    // The node with the highest number outside the radio: last in keysync's working set order,
    // so the startup sync does not push it.
    let held: Vec<u32> = sim.nodedb().iter().map(|n| n.num).collect();
    let target = mesh
        .iter()
        .map(|n| n.num)
        .filter(|n| !held.contains(n))
        .max()
        .expect("a node outside the radio");
    let (keysync, keysync_log) = start_proxy(
        &sim.addr().to_string(),
        &db,
        &["--radio-capacity", "20", "--push-gap", "50ms"],
    );
    let proxy_addr = keysync.addr.clone();
    wait_for("the startup sync", || {
        keysync_log
            .lock()
            .expect("log")
            .iter()
            .any(|l| l.contains("sync forced"))
    });
    assert!(
        sim.key_of(target).is_none(),
        "the radio lacks the key before the DM"
    );
    let dest = format!("!{target:08x}");
    run_client_args(
        &cli,
        &proxy_addr,
        &["--sendtext", "hello over PKI", "--dest", &dest],
    );
    let dm_sent = || {
        sim.sent()
            .iter()
            .zip(sim.sent_times())
            .find(|(p, _)| p.to == target)
            .map(|(_, t)| t)
    };
    wait_for("the DM at the radio", || dm_sent().is_some());
    let pushed = sim
        .contacts()
        .iter()
        .zip(sim.contact_times())
        .find(|(c, _)| c.node_num == target)
        .map(|(_, t)| t)
        .expect("add_contact for the DM's destination");
    assert!(
        pushed < dm_sent().expect("sent"),
        "the key went to the radio before the DM"
    );
    let counters = sim.counters();
    assert_eq!(
        counters
            .pki_send_fails
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no DM refused for lack of a key"
    );
    drop(runtime);
}

/// A quiet simulated radio on a loopback port the OS picks.
fn quiet_sim() -> keysync::sim::SimConfig {
    keysync::sim::SimConfig {
        listen: "127.0.0.1:0".parse().expect("loopback"),
        announce_every: None,
        ..keysync::sim::SimConfig::default()
    }
}

/// The simulated radio in this process (so its state can be read), running on `runtime`.
fn sim_in(
    runtime: &tokio::runtime::Runtime,
    config: keysync::sim::SimConfig,
) -> keysync::sim::SimHandle {
    runtime
        .block_on(async { keysync::sim::SimHandle::start(config) })
        .expect("the sim binds")
}

/// Two Python clients through the proxy, each sending a text every 4 s for 40 s: each within
/// the firmware's one text per 2 s on its own, together at it. The radio (2.7.26, which
/// refuses a text within 2 s of the last one on a connection with RATE_LIMIT_EXCEEDED) gets all
/// 20 and refuses none: keysync spaces the clients' texts on its one connection.
#[test]
#[cfg_attr(
    no_python,
    ignore = "python3 is missing: the Python meshtastic client cannot be installed"
)]
fn two_python_clients_texting_together_at_the_firmware_limit_get_every_text_to_the_radio() {
    const TEXTS: usize = 10;
    let _cli = required_cli();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let sim = sim_in(
        &runtime,
        keysync::sim::SimConfig {
            nodes: 10,
            profile: keysync::sim::Profile::new(
                "2.7.26",
                keysync::sim::Hw::default(),
                keysync::sim::SimRole::default(),
            )
            .expect("profile"),
            ..quiet_sim()
        },
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (keysync, _log) = start_proxy(&sim.addr().to_string(), &dir.path().join("k.db"), &[]);
    let (host, port) = keysync.addr.split_once(':').expect("host:port");
    // Both connected and configured by then; the second client 2 s after the first.
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
        + 6.0;
    let texter = |label: &str, offset: f64| {
        Command::new(python())
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/texter.py"))
            .args([host, port, label, &TEXTS.to_string(), "4"])
            .arg(format!("{:.3}", start + offset))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the texter starts")
    };
    let clients = [texter("fair-A", 0.0), texter("fair-B", 2.0)];
    let mut errors = Vec::new();
    for client in clients {
        let out = client.wait_with_output().expect("the texter ends");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "a texter failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
        errors.extend(report["errors"].as_array().cloned().unwrap_or_default());
    }
    let texts: Vec<String> = sim
        .sent()
        .iter()
        .filter_map(|p| match &p.payload_variant {
            Some(meshtastic::protobufs::mesh_packet::PayloadVariant::Decoded(d)) => {
                Some(String::from_utf8_lossy(&d.payload).into_owned())
            }
            _ => None,
        })
        .filter(|t| t.starts_with("fair-"))
        .collect();
    let refused = sim
        .counters()
        .rate_limited
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "two clients texting: {} of {} texts reached the radio; the radio refused {refused}; \
         the clients saw routing errors {errors:?}",
        texts.len(),
        2 * TEXTS
    );
    for label in ["fair-A", "fair-B"] {
        for n in 0..TEXTS {
            let text = format!("{label} {n}");
            assert!(
                texts.contains(&text),
                "{text:?} never reached the radio: {texts:?}"
            );
        }
    }
    assert_eq!(texts.len(), 2 * TEXTS, "each text once: {texts:?}");
    assert_eq!(refused, 0, "the radio refused none as over its limit");
    assert!(
        errors.is_empty(),
        "no client was answered with an error: {errors:?}"
    );
    drop(runtime);
}

/// Trusts every node of `mesh` in a store at `db`, as if heard on the mesh.
fn trust_all(db: &std::path::Path, mesh: &[meshtastic::protobufs::NodeInfo]) {
    let mut store = keysync::engine::store::Store::open(db).expect("store");
    for n in mesh {
        let seen = keysync::engine::radio::NodeSeen::from_node_info(
            n,
            keysync::engine::radio::Source::Mesh,
        );
        store
            .learn(&seen, std::time::SystemTime::now())
            .expect("learns");
    }
}

/// Polls `cond` (another process is doing the work) for at most 30 s.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn run_client_args(cli: &PathBuf, host: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("120")
        .arg(cli)
        .args(["--host", host])
        .args(args)
        .output()
        .expect("the meshtastic client runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "meshtastic {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
