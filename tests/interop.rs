//! The real Python `meshtastic` client against `keysync sim`: if the reference client reads our
//! simulated radio as it reads a real one, the simulator is faithful where it matters.
//!
//! The client is found through `KEYSYNC_MESHTASTIC`, then `target/pyenv/bin/meshtastic` (where
//! `.ci/run` installs it), then `PATH`; when none is there, the test installs it into
//! `target/pyenv` itself (`python3 -m venv`, `pip install meshtastic`) and fails, saying why, if
//! it cannot. The `contact` curses client is found the same way (`KEYSYNC_CONTACT`, then
//! `target/contact-env`, installed there from PyPI when missing) and driven in tmux; a bot on
//! the Python library (tests/python/bot.py) runs with target/pyenv's Python.
//! A test that did not run never passes: without `python3` at build time (build.rs
//! sets `cfg(no_python)`) the tests are reported as ignored, with the reason.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use keysync::sim::population::Population;

mod common;

use common::python::{
    CONTACT, python, required_cli, run_client, run_client_args, spawn_logged, start_bot,
};
use common::tmux::{self, Tmux};

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

    // Both clients at once: the CLI listing nodes, the bot exchanging a message.
    let bot = start_bot(&proxy_addr, 0);
    let table = run_client(&cli, &proxy_addr, "--nodes");
    let bot_out = bot.finish();
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
    let (runtime, sim) = sim_in(keysync::sim::SimConfig {
        nodes: 40,
        capacity: Some(20),
        ..quiet_sim()
    });
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

/// The simulated radio in this process (so its state can be read), with the runtime it runs on.
fn sim_in(config: keysync::sim::SimConfig) -> (tokio::runtime::Runtime, keysync::sim::SimHandle) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let sim = runtime
        .block_on(async { keysync::sim::SimHandle::start(config) })
        .expect("the sim binds");
    (runtime, sim)
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
    let (runtime, sim) = sim_in(keysync::sim::SimConfig {
        nodes: 10,
        profile: keysync::sim::Profile::new(
            "2.7.26",
            keysync::sim::Hw::default(),
            keysync::sim::SimRole::default(),
        )
        .expect("profile"),
        ..quiet_sim()
    });
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
    let texts: Vec<String> = sent_texts(&sim)
        .into_iter()
        .map(|(_, text)| text)
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

/// The destination and text of each text message the radio sent on to the mesh, oldest first.
fn sent_texts(sim: &keysync::sim::SimHandle) -> Vec<(u32, String)> {
    use meshtastic::protobufs::{PortNum, mesh_packet::PayloadVariant};
    sim.sent()
        .iter()
        .filter_map(|p| match &p.payload_variant {
            Some(PayloadVariant::Decoded(d)) if d.portnum == PortNum::TextMessageApp as i32 => {
                Some((p.to, String::from_utf8_lossy(&d.payload).into_owned()))
            }
            _ => None,
        })
        .collect()
}

/// The `contact` curses client (PyPI) in a terminal at 80×24 and a bot on the Python library
/// (`TCPInterface` and pubsub), both through the proxy at once, as operators run them: contact
/// shows the radio's node list, sends a text typed into its message box, sees it acknowledged
/// and shows the mesh's texts; the bot answers a text from a node on the mesh with a direct message to it. The radio
/// gets every text over keysync's one connection, which holds throughout.
#[test]
#[cfg_attr(
    no_python,
    ignore = "python3 is missing: the contact client and the Python library cannot be installed"
)]
fn contact_and_a_python_library_bot_work_through_the_proxy_together() {
    use std::time::Instant;
    if !tmux::available() {
        eprintln!("skipping: tmux is not installed");
        return;
    }
    let contact = CONTACT.required();
    let _library = required_cli();
    let (runtime, sim) = sim_in(keysync::sim::SimConfig {
        nodes: 20,
        ..quiet_sim()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (keysync, keysync_log) =
        start_proxy(&sim.addr().to_string(), &dir.path().join("k.db"), &[]);

    let (term, exit_file) = start_contact(&contact, &keysync.addr, dir.path());

    let bot = start_bot(&keysync.addr, 1);
    wait_for("the bot connected", || bot.said("ready").is_some());

    let typed = Instant::now();
    term.type_text("hello from contact");
    term.keys("Enter");
    wait_for("contact's text at the radio", || {
        sent_texts(&sim)
            .iter()
            .any(|(to, t)| *to == u32::MAX && t == "hello from contact")
    });
    let contact_text_after = typed.elapsed();
    // contact asks for an ack: its message turns from pending ([…]) to implicitly acked ([◌])
    // when the radio's routing answer, carrying contact's packet id, comes back to it.
    term.wait_for("the ack and the mesh's echo on contact's screen", |s| {
        let messages = messages_on(s);
        messages.contains("Sent[◌]: hello from contact")
            && messages.contains("echo: hello from contact")
    });
    let acked_after = typed.elapsed();

    let speaker = sim.mesh()[3].num;
    let spoke = Instant::now();
    sim.hear_from(speaker, meshtastic::protobufs::PortNum::TextMessageApp);
    let screen = term.wait_for("the mesh's text on contact's screen", |s| {
        messages_on(s).contains("hello from the mesh")
    });
    let shown_after = spoke.elapsed();
    wait_for("the bot's answer at the radio", || {
        sent_texts(&sim)
            .iter()
            .any(|(to, t)| *to == speaker && t == "bot got: hello from the mesh")
    });
    let answered_after = spoke.elapsed();
    let bot_out = bot.finish();
    assert!(bot_out.contains("ready nodes=21"), "{bot_out}");
    assert!(bot_out.contains("answered=1"), "{bot_out}");

    term.keys("Escape");
    assert_eq!(term.exit_code(&exit_file), "0", "contact quits cleanly");
    eprintln!(
        "contact: its text at the radio {contact_text_after:.1?} \
         after Enter, acked on its screen {acked_after:.1?} after Enter, the mesh's text on screen {shown_after:.1?} after it was heard:\n{screen}\n\
         the bot: answered the mesh at the radio {answered_after:.1?} after it was heard:\n{bot_out}"
    );

    let connections = sim
        .counters()
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        connections, 1,
        "the radio saw one TCP client the whole time"
    );
    let log = keysync_log.lock().expect("log").clone();
    assert!(
        !log.iter().any(|l| l.contains("link closed")),
        "the radio link held: {log:#?}"
    );
    let clients = log
        .iter()
        .filter(|l| l.contains("keysync::engine::proxy") && l.contains(" connected"))
        .count();
    assert_eq!(
        clients, 2,
        "contact and the bot were the proxy's clients: {log:#?}"
    );
    drop(runtime);
}

/// `contact` at 80×24 in tmux, connected to `addr`, its files under `dir`; returns once its
/// node list shows the simulated radio's 21 nodes (seed 1), with the file its exit code goes to.
fn start_contact(contact: &std::path::Path, addr: &str, dir: &std::path::Path) -> (Tmux, PathBuf) {
    // contact keeps its settings, log and message database under CONTACT_CONFIG_ROOT.
    let config_root = dir.join("contact");
    std::fs::create_dir(&config_root).expect("contact's config root");
    let exit_file = dir.join("exit");
    let command = format!(
        "env CONTACT_CONFIG_ROOT={} TERM=xterm-256color {} --host {addr}; echo $? > {}; sleep 30",
        config_root.display(),
        contact.display(),
        exit_file.display()
    );
    let started = std::time::Instant::now();
    let term = Tmux::start("contact", 80, 24, &command);
    let screen = term.wait_for("contact's node list", |s| {
        s.contains("Nodes: 21") && s.contains("keysync sim")
    });
    let listed_after = started.elapsed();
    let mut population = Population::new(1);
    let _own = population.own_node();
    let names: Vec<String> = (0..20)
        .map(|_| population.next_node().user.expect("user").long_name)
        .collect();
    let listed = names.iter().filter(|n| screen.contains(n.as_str())).count();
    // 19 rows: the radio's own node and 18 of the 20 others.
    assert!(
        listed >= 15,
        "contact lists the simulated nodes by name ({listed} of 20 seen):\n{screen}"
    );
    eprintln!("contact's node list {listed_after:.1?} after it started:\n{screen}");
    (term, exit_file)
}

/// The text of contact's message pane (the middle one of its three boxes), its wrapped lines
/// joined and its spaces collapsed.
fn messages_on(screen: &str) -> String {
    let pane: Vec<&str> = screen.lines().filter_map(|l| l.split('│').nth(3)).collect();
    pane.join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Trusts every node of `mesh` in a store at `db`, as if heard on the mesh.
fn trust_all(db: &std::path::Path, mesh: &[meshtastic::protobufs::NodeInfo]) {
    let mut store = keysync::engine::Store::open(db).expect("store");
    for n in mesh {
        let seen = keysync::engine::NodeSeen::from_node_info(n, keysync::engine::Source::Mesh);
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
