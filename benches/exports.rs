//! What the exports cost with a million stored nodes: peak RSS of `keysync keys --json`, and of
//! a headless keysync serving `/status` to eight clients that send a request and never read.
//!
//! `cargo bench --bench exports [-- NODES]` (default 1 000 000); the keysync binary measured is
//! `target/release/keysync`, or each of `KEYSYNC_BIN=a:b` in turn on the same store (to set a
//! build before a change beside one after it). Needs `/usr/bin/time`. Prints its figures; they
//! are in docs/PERFORMANCE.md.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use keysync::engine::Store;

/// Clients that ask for `/status` and never read the answer.
const CLIENTS: usize = 8;

fn binaries() -> Vec<PathBuf> {
    std::env::var_os("KEYSYNC_BIN").map_or_else(
        || vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/keysync")],
        |list| std::env::split_paths(&list).collect(),
    )
}

/// A store at `db` trusting `n` imported nodes with distinct keys. Written straight into the
/// store's tables in one transaction (keysync creates them): learning a million keys one by
/// one checks each against every other and takes hours.
fn fill(db: &Path, n: u32) -> anyhow::Result<()> {
    drop(Store::open(db)?);
    let mut conn = rusqlite::Connection::open(db)?;
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let tx = conn.transaction()?;
    {
        let mut node = tx.prepare(
            "INSERT INTO nodes (num, id, long_name, short_name, hw_model, first_seen, last_seen)
             VALUES (?1, ?2, ?3, 'IM', 9, ?4, ?4)",
        )?;
        let mut key = tx.prepare(
            "INSERT INTO keys (node_num, key, state, first_seen, last_seen, source)
             VALUES (?1, ?2, 'trusted', ?3, ?3, 'import')",
        )?;
        for i in 1..=n {
            let num = 0x1000_0000 + i;
            let mut k = [0x5au8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            node.execute(rusqlite::params![
                num,
                keysync::engine::node_id(num),
                format!("Imported node {i}"),
                now
            ])?;
            key.execute(rusqlite::params![num, k.to_vec(), now])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Peak RSS in MB of `keysync keys --json` with its output thrown away, and its wall time.
fn keys_json(binary: &Path, db: &Path) -> anyhow::Result<(f64, Duration)> {
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(binary)
        .args(["keys", "--json", "--db"])
        .arg(db)
        .stdout(Stdio::null())
        .output()?;
    let took = start.elapsed();
    anyhow::ensure!(out.status.success(), "keys --json failed: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let kb: f64 = stderr
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no RSS from time: {stderr}"))?;
    Ok((kb / 1024.0, took))
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// VmRSS and VmHWM of `pid` in MB.
fn rss(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow::anyhow!("no {name}"))?;
        let kb: f64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad {line}"))?;
        Ok(kb / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// The first `limit` bytes of `GET path`, or what came before the server closed.
fn get_head(addr: SocketAddr, path: &str, limit: usize) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = vec![0; limit];
    let mut got = 0;
    while got < limit {
        match s.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(String::from_utf8_lossy(&buf[..got]).into_owned())
}

/// A headless keysync on `db` with `--metrics`, against `keysync sim`, once `/status` answers
/// with every stored node counted.
fn headless(binary: &Path, db: &Path, n: u32) -> anyhow::Result<(Killed, Killed, SocketAddr)> {
    let radio = free_addr()?;
    let sim = Killed(
        Command::new(binary)
            .args(["sim", "--nodes", "10", "--listen"])
            .arg(radio.to_string())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let metrics = free_addr()?;
    let keysync = Killed(
        Command::new(binary)
            .args(["--headless", "--host"])
            .arg(radio.to_string())
            .arg("--metrics")
            .arg(metrics.to_string())
            .arg("--db")
            .arg(db)
            .stderr(Stdio::null())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    // The store's nodes, and the radio's that keysync learned besides.
    let trusted = |head: &str| -> Option<u32> {
        let (_, after) = head.split_once("\"trusted\":")?;
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    loop {
        anyhow::ensure!(Instant::now() < deadline, "keysync did not load the store");
        // The summary comes first in both layouts of /status (the old one before its list).
        if let Ok(head) = get_head(metrics, "/status", 16 * 1024)
            && trusted(&head).is_some_and(|t| t >= n)
            && head.contains("\"nodes_in_db\"")
        {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Ok((sim, keysync, metrics))
}

/// Eight clients send `path` and never read; RSS after `settle`.
fn stalled_clients(
    pid: u32,
    metrics: SocketAddr,
    path: &str,
    settle: Duration,
) -> anyhow::Result<(f64, f64)> {
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut s = TcpStream::connect(metrics)?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
        clients.push(s);
    }
    std::thread::sleep(settle);
    let measured = rss(pid)?;
    drop(clients);
    Ok(measured)
}

fn main() -> anyhow::Result<()> {
    let n: u32 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map_or(Ok(1_000_000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("million.db");
    let start = Instant::now();
    fill(&db, n)?;
    let size = std::fs::metadata(&db)?.len();
    println!(
        "store: {n} nodes, {} MB, filled in {:.1} s",
        size / 1_000_000,
        start.elapsed().as_secs_f64()
    );
    for binary in binaries() {
        measure(&binary, &db, n)?;
    }
    Ok(())
}

fn measure(binary: &Path, db: &Path, n: u32) -> anyhow::Result<()> {
    println!("binary: {}", binary.display());
    let (peak, took) = keys_json(binary, db)?;
    println!(
        "keys --json > /dev/null: peak RSS {peak:.1} MB, {:.1} s",
        took.as_secs_f64()
    );
    let (_sim, keysync, metrics) = headless(binary, db, n)?;
    let pid = keysync.0.id();
    // The startup sync over a million keys builds its lists; measure after it.
    std::thread::sleep(Duration::from_secs(15));
    for path in ["/status", &format!("/status?nodes={n}")] {
        let (base, base_hwm) = rss(pid)?;
        println!("headless, settled: VmRSS {base:.0} MB, VmHWM {base_hwm:.0} MB");
        let (now, hwm) = stalled_clients(pid, metrics, path, Duration::from_secs(8))?;
        println!(
            "{CLIENTS} clients of {path} that do not read, after 8 s: VmRSS {now:.0} MB (+{:.0}), VmHWM {hwm:.0} MB",
            now - base
        );
    }
    Ok(())
}
