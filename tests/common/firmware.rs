//! The real firmware as a test peer: meshtasticd (../shared/firmware, the Linux build of the
//! radio's own NodeDB, PhoneAPI, AdminModule and Router code with simulated LoRa), one instance
//! per scenario with its own filesystem, port and node number, its log read as it comes.
//!
//! meshtasticd binds its API on 0.0.0.0 and multicasts its UDP mesh, so it only ever runs inside
//! a private network namespace (`in-private-net`): the suite's binary enters one itself (see
//! [`Suite::detect`]); where it cannot, or the binary or its libraries are missing, every
//! scenario is reported ignored with the reason.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::WAIT;

/// The builds the suite knows, oldest first: the version it calls them by and their file name.
/// 2.7.26 is required (CI fails without it); develop (2.8) runs where its binary is there.
pub const BUILDS: [(&str, &str); 2] = [
    ("2.7.26", "meshtasticd-2.7.26"),
    ("2.8", "meshtasticd-2.8.0-dev"),
];

/// Where the firmware lives: `KEYSYNC_FIRMWARE_DIR`, else `../shared/firmware` beside the
/// project.
pub fn dir() -> PathBuf {
    std::env::var_os("KEYSYNC_FIRMWARE_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/firmware"),
        PathBuf::from,
    )
}

/// One firmware build.
#[derive(Debug, Clone)]
pub struct Firmware {
    /// `2.7.26` or `2.8`: what the sim's profile calls it too.
    pub version: &'static str,
    pub path: PathBuf,
}

impl Firmware {
    /// Develop (2.8): warm tier, the MAX−2 cap, refusal instead of the crash, crc32 numbering.
    pub fn is_develop(&self) -> bool {
        self.version.starts_with("2.8")
    }
}

/// What the suite can run against here, or why it cannot.
pub struct Suite {
    pub builds: Result<Vec<Firmware>, String>,
}

impl Suite {
    /// Finds the builds, checks that they start (their libraries are installed), and makes sure
    /// this process runs in a private network namespace: outside one, it runs itself again
    /// through `in-private-net` and exits with that run's status (so this returns only inside
    /// one, or when none can be had). `provision` runs first, outside: the namespace has no
    /// network, so whatever the scenarios install must be there before.
    pub fn detect(provision: impl FnOnce()) -> Self {
        let builds = find_builds().and_then(|builds| {
            if !in_private_net() {
                provision();
            }
            enter_private_net()?;
            Ok(builds)
        });
        if builds.is_err() && std::env::var_os("KEYSYNC_FIRMWARE_REQUIRED").is_some() {
            // CI sets this: there, a suite that cannot run is a failure, not a skip.
            let why = builds.as_ref().err().cloned().unwrap_or_default();
            eprintln!("KEYSYNC_FIRMWARE_REQUIRED is set but the firmware suite cannot run: {why}");
            std::process::exit(101);
        }
        Self { builds }
    }
}

fn find_builds() -> Result<Vec<Firmware>, String> {
    let dir = dir();
    let mut found = Vec::new();
    for (version, file) in BUILDS {
        let path = dir.join(file);
        if !path.is_file() {
            if found.is_empty() {
                return Err(format!("no firmware at {}", path.display()));
            }
            continue;
        }
        let out = Command::new(&path)
            .arg("--version")
            .output()
            .map_err(|e| format!("{file} does not start: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{file} --version failed (runtime libraries missing? see {}/README.md): {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        found.push(Firmware { version, path });
    }
    Ok(found)
}

/// Set by in-private-net.
fn in_private_net() -> bool {
    std::env::var_os("IN_PRIVATE_NET").is_some_and(|v| v == "1")
}

/// Ok inside a private network namespace; otherwise re-runs this test binary in one and exits.
fn enter_private_net() -> Result<(), String> {
    if in_private_net() {
        return Ok(());
    }
    let script = dir().join("in-private-net");
    if !script.is_file() {
        return Err(format!("no {}", script.display()));
    }
    let probe = Command::new("bash")
        .arg(&script)
        .arg("true")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("bash does not start: {e}"))?;
    if !probe.status.success() {
        return Err(format!(
            "no private network namespace to be had here (in-private-net: {})",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    let me = std::env::current_exe().map_err(|e| format!("own path unknown: {e}"))?;
    let status = Command::new("bash")
        .arg(&script)
        .arg(me)
        .args(std::env::args_os().skip(1))
        .status()
        .map_err(|e| format!("in-private-net does not start: {e}"))?;
    std::process::exit(status.code().unwrap_or(101));
}

/// How an instance is set up.
#[derive(Debug, Clone)]
pub struct Setup {
    /// `General.MaxNodes`: the NodeDB's size, own node included.
    pub max_nodes: usize,
    /// `-h`: the node number (on 2.8 only the MAC and a number used at boot: read
    /// `my_node_num` from the handshake).
    pub hwid: u32,
}

impl Setup {
    /// `max_nodes` and a node number no other instance of this run has.
    pub fn nodes(max_nodes: usize) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0x1001);
        Self {
            max_nodes,
            hwid: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    pub fn hwid(self, hwid: u32) -> Self {
        Self { hwid, ..self }
    }
}

/// A running meshtasticd with its filesystem in a temporary directory; killed when dropped.
pub struct Radio {
    pub firmware: Firmware,
    pub setup: Setup,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Every line it printed, across restarts.
    log: Arc<Mutex<Vec<String>>>,
    /// How it ended, once it has.
    exited: Option<ExitStatus>,
}

impl Radio {
    /// Starts an instance and waits until its API accepts connections.
    pub async fn start(firmware: &Firmware, setup: Setup) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            "Lora:\n  Module: sim\nGeneral:\n  MaxNodes: {}\n",
            setup.max_nodes
        );
        std::fs::write(dir.path().join("config.yaml"), config).expect("writes config.yaml");
        let mut radio = Self {
            firmware: firmware.clone(),
            setup,
            port: free_port(),
            dir,
            child: None,
            log: Arc::default(),
            exited: None,
        };
        radio.spawn().await;
        radio
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `host:port`, as keysync's `--host` takes it.
    pub fn host(&self) -> String {
        self.addr().to_string()
    }

    /// Its filesystem (`prefs/*.proto` persist there across restarts).
    pub fn fs(&self) -> PathBuf {
        self.dir.path().join("fs")
    }

    async fn spawn(&mut self) {
        let mut child = Command::new(&self.firmware.path)
            .arg("-c")
            .arg(self.dir.path().join("config.yaml"))
            .arg("-d")
            .arg(self.fs())
            .args(["-h", &self.setup.hwid.to_string()])
            .args(["-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("meshtasticd starts");
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = self.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    log.lock().expect("log").push(line);
                }
            });
        }
        self.child = Some(child);
        self.exited = None;
        self.wait_accepting().await;
    }

    /// Waits until its API listens, read from /proc/net/tcp: a probing connection would be a
    /// client too, one the firmware notices only when the next client connects.
    async fn wait_accepting(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !listening(self.port) {
            if let Some(status) = self.try_exit() {
                panic!(
                    "meshtasticd {} exited before listening ({status}); log:\n{}",
                    self.firmware.version,
                    self.tail(40)
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "meshtasticd {} does not listen on {} after {WAIT:?}; log:\n{}",
                self.firmware.version,
                self.addr(),
                self.tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How it exited, if it has.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none()
            && let Some(child) = self.child.as_mut()
        {
            self.exited = child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits until it exits on its own (a crash); its status.
    pub async fn exit_status(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "meshtasticd still runs after {WAIT:?}; log:\n{}",
                self.tail(30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// SIGKILL, as a power cut: what it wrote to flash is what it comes back with.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            self.exited = child.wait().ok();
        }
    }

    /// Starts it again on the same filesystem and port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Puts it on the firmware's UDP mesh (`network.enabled_protocols = 1`) with a LoRa region
    /// (US: 2.7.26 makes its key pair only once a region is set) through the Python client, as
    /// an operator does; the node reboots in-process (same PID) about 7 s later, and this
    /// returns once its API listens again.
    pub async fn join_mesh(&self, cli: &Path) {
        let mark = self.mark();
        let out = Command::new(cli)
            .args(["--host", &self.host()])
            .args([
                "--set",
                "lora.region",
                "US",
                "--set",
                "network.enabled_protocols",
                "1",
            ])
            .output()
            .expect("the meshtastic client runs");
        // The client may print a BrokenPipe trace as the node closes it for the reboot.
        assert!(
            out.status.success(),
            "meshtastic --set failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_log(mark, "Rebooting", 1).await;
        self.wait_log(mark, "API server listen on TCP port", 1)
            .await;
    }

    /// Every log line so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    /// How many log lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Log lines so far: a mark to count from with [`Radio::count_since`].
    pub fn mark(&self) -> usize {
        self.log.lock().expect("log").len()
    }

    /// How many log lines after `mark` contain `needle`.
    pub fn count_since(&self, mark: usize, needle: &str) -> usize {
        self.log
            .lock()
            .expect("log")
            .iter()
            .skip(mark)
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until `n` log lines after `mark` contain `needle`.
    pub async fn wait_log(&self, mark: usize, needle: &str, n: usize) {
        // A mesh reboot alone takes 7 s.
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        while self.count_since(mark, needle) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "meshtasticd never logged {needle:?} {n} times; log:\n{}",
                self.tail(40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last `n` log lines, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.log.lock().expect("log");
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Radio {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Held by a scenario whose instances are on the UDP mesh: every instance on it hears every
/// other in the namespace, so two such scenarios at once would hear each other's nodes.
pub async fn mesh_lock() -> tokio::sync::OwnedMutexGuard<()> {
    static MESH: std::sync::OnceLock<Arc<tokio::sync::Mutex<()>>> = std::sync::OnceLock::new();
    MESH.get_or_init(Arc::default).clone().lock_owned().await
}

/// A port nobody listens on now (the namespace holds only this suite's processes).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds loopback");
    listener.local_addr().expect("bound").port()
}

/// Whether a socket of this network namespace listens on TCP `port` (/proc/net/tcp: state
/// `0A` is LISTEN, the local address is `HEXIP:HEXPORT`).
fn listening(port: u16) -> bool {
    let want = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|table| {
        table.lines().skip(1).any(|row| {
            let cols: Vec<&str> = row.split_whitespace().collect();
            cols.len() > 3 && cols[1].ends_with(&want) && cols[3] == "0A"
        })
    })
}

/// The firmware's own files, for a check that it wrote them.
pub fn prefs(fs: &Path, name: &str) -> PathBuf {
    fs.join("prefs").join(name)
}
