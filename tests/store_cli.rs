//! The key store through the binary: listings, decisions, imports, and every way a database
//! file can be wrong — each a clear error naming the file, with the file left as it was.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use assert_cmd::Command as Cmd;
use common::cli::{keysync, run};
use common::proto::node_seen;
use common::*;
use keysync::engine::{Store, key_base64};
use rusqlite::Connection;

/// A store at `db` where each of `nums` has a trusted key (1…) and a pending one (2…).
fn store_with_pending(db: &Path, nums: &[u32]) {
    let mut s = Store::open(db).expect("opens");
    for num in nums {
        for key in [1, 2] {
            s.learn(&node_seen(*num, key, "n"), SystemTime::now())
                .expect("learns");
        }
    }
}

#[test]
fn keys_lists_nodes_as_a_table_and_as_json_with_global_options_anywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("k.db");
    {
        let mut s = Store::open(&db).expect("opens");
        s.learn(&node_seen(0x1234_abcd, 7, "Ridge Relay"), SystemTime::now())
            .expect("learns");
        s.learn(&node_seen(0x1234_abcd, 8, "Ridge Relay"), SystemTime::now())
            .expect("learns");
    }
    let (code, out, err) = run(keysync(&db).arg("keys"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("!1234abcd") && out.contains("Ridge Relay") && out.contains("pending"));
    assert!(out.contains(&key_base64(&[7; 32])));
    // Global options after the subcommand work as well as before it.
    let out = Cmd::new(env!("CARGO_BIN_EXE_keysync"))
        .args(["keys", "--json", "--db"])
        .arg(&db)
        .output()
        .expect("runs");
    assert!(out.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(rows[0]["id"], "!1234abcd");
    assert_eq!(rows[0]["state"], "pending");
    assert_eq!(rows[0]["key"], key_base64(&[7; 32]));
    assert_eq!(rows[0]["pending_key"], key_base64(&[8; 32]));
}

#[test]
fn keys_accept_and_reject_take_every_node_form_and_explain_mistakes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("k.db");
    {
        let mut s = Store::open(&db).expect("opens");
        // Each node its own keys: a key another node holds trusted would be a claim.
        for (num, name, first) in [(0x0a0a_0a0a, "a", 1), (0x0b0b_0b0b, "b", 3)] {
            s.learn(&node_seen(num, first, name), SystemTime::now())
                .expect("learns");
            s.learn(&node_seen(num, first + 1, name), SystemTime::now())
                .expect("learns");
        }
    }
    let (code, out, err) = run(keysync(&db).args(["keys", "accept", "!0a0a0a0a"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("accepted"), "{out}");
    let (code, out, _) = run(keysync(&db).args(["keys", "reject", &0x0b0b_0b0bu32.to_string()]));
    assert_eq!(code, 0);
    assert!(out.contains("rejected"), "{out}");
    let (code, _, err) = run(keysync(&db).args(["keys", "accept", "0x0a0a0a0a"]));
    assert_eq!(code, 1);
    assert!(err.contains("no pending key"), "{err}");
    let (code, _, err) = run(keysync(&db).args(["keys", "accept", "!nothex"]));
    assert_eq!(code, 2, "a malformed NODE is a usage error");
    assert!(err.contains("is not a node"), "{err}");
    let (code, _, err) = run(keysync(&db).args(["keys", "reject", "!deadbeef"]));
    assert_eq!(code, 1);
    assert!(err.contains("no node !deadbeef"), "{err}");
    assert_eq!(trusted(&db), vec![(0x0a0a_0a0a, 2), (0x0b0b_0b0b, 3)]);
}

/// The trusted keys in `db`: node and the key's first byte.
fn trusted(db: &Path) -> Vec<(u32, u8)> {
    Store::open(db)
        .expect("opens")
        .trusted()
        .expect("reads")
        .iter()
        .map(|k| (k.num, k.key[0]))
        .collect()
}

/// `keysync keys` on `db` fails (exit 1) naming each of `why`, and the file is still `before`.
fn refused_untouched(db: &Path, why: &[&str], before: &[u8]) {
    let (code, _, err) = run(keysync(db).arg("keys"));
    assert_eq!(code, 1);
    assert!(why.iter().all(|w| err.contains(w)), "{err}");
    assert_eq!(std::fs::read(db).expect("read"), before);
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("notes.txt");
    let text = b"shopping list: antenna, coax, 18650 cells\n".repeat(200);
    std::fs::write(&db, &text).expect("write");
    refused_untouched(&db, &["notes.txt", "not a keysync database"], &text);
}

#[test]
fn a_corrupt_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("k.db");
    {
        let mut s = Store::open(&db).expect("opens");
        for i in 1..200u32 {
            s.learn(
                &node_seen(
                    i,
                    (i % 250) as u8 + 1,
                    "node with a long name to fill pages",
                ),
                SystemTime::now(),
            )
            .expect("learns");
        }
        s.integrity_check().expect("checks");
    }
    // Checkpoint the WAL into the main file, then scribble over the middle of it.
    Connection::open(&db)
        .and_then(|c| {
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode=DELETE;")
        })
        .expect("checkpoint");
    let mut bytes = std::fs::read(&db).expect("read");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 2048] {
        *b = 0x5A;
    }
    std::fs::write(&db, &bytes).expect("write");
    let (code, _, err) = run(keysync(&db).arg("keys"));
    assert_eq!(code, 1);
    assert!(
        err.contains("k.db") && (err.contains("corrupt") || err.contains("malformed")),
        "{err}"
    );
    assert_eq!(std::fs::read(&db).expect("read"), bytes);
}

#[test]
fn a_database_from_a_newer_keysync_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("k.db");
    drop(Store::open(&db).expect("opens"));
    Connection::open(&db)
        .and_then(|c| c.execute_batch("PRAGMA user_version = 99; PRAGMA wal_checkpoint(TRUNCATE);"))
        .expect("bump");
    let before = std::fs::read(&db).expect("read");
    refused_untouched(&db, &["newer keysync", "schema 99"], &before);
}

#[test]
fn a_database_path_that_is_a_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = run(keysync(dir.path()).arg("keys"));
    assert_eq!(code, 1);
    assert!(err.contains("is a directory"), "{err}");
}

/// A new, empty store in `dir`, and another connection to it (as another process) that has
/// run `sql`.
fn store_held_by_another(dir: &tempfile::TempDir, sql: &str) -> (std::path::PathBuf, Connection) {
    let db = dir.path().join("k.db");
    drop(Store::open(&db).expect("opens"));
    let holder = Connection::open(&db).expect("opens");
    holder.execute_batch(sql).expect("runs");
    (db, holder)
}

#[test]
fn a_locked_database_waits_then_names_who_holds_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, holder) = store_held_by_another(
        &dir,
        "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; CREATE TABLE hold(x);",
    );
    let (code, _, err) = run(keysync(&db).arg("keys"));
    assert_eq!(code, 1);
    assert!(err.contains("locked by another process"), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "names the holder: {err}"
    );
    holder.execute_batch("ROLLBACK").expect("unlocks");
}

#[test]
fn meshbot_import_reads_every_key_encoding_and_id_form_without_touching_the_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("meshbot.db");
    {
        let c = Connection::open(&src).expect("creates");
        c.execute_batch(
            "CREATE TABLE meshtastic_nodes (node_id TEXT PRIMARY KEY, name TEXT, shortName TEXT,
                hwModel INTEGER, publicKey BLOB, last_updated REAL, snr REAL)",
        )
        .expect("schema");
        let raw = vec![0x11u8; 32];
        let b64 = key_base64(&[0x22; 32]);
        let hex = "33".repeat(32);
        let rows: Vec<(String, rusqlite::types::Value)> = vec![
            ("!000000a1".into(), raw.into()),
            ("162".into(), b64.into()), // 0xa2 in decimal
            ("!000000a3".into(), hex.into()),
            ("!000000a4".into(), "not a key".to_string().into()), // invalid
            ("garbage".into(), vec![0x44u8; 32].into()),          // invalid id
            ("!000000a6".into(), rusqlite::types::Value::Null),   // no key
        ];
        for (id, key) in rows {
            c.execute(
                "INSERT INTO meshtastic_nodes (node_id, name, shortName, hwModel, publicKey, last_updated)
                 VALUES (?1, 'Imported ' || ?1, 'IM', 9, ?2, 1700000000.5)",
                rusqlite::params![id, key],
            )
            .expect("row");
        }
    }
    let before = std::fs::read(&src).expect("read");
    let db = dir.path().join("k.db");
    {
        // One node already trusted with a different key: the import must not override it.
        let mut s = Store::open(&db).expect("opens");
        s.learn(&node_seen(0xa3, 0x99, "already known"), SystemTime::now())
            .expect("learns");
    }
    let (code, out, err) = run(keysync(&db).args(["import", "meshbot"]).arg(&src));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("imported 2"), "{out}");
    assert!(
        out.contains("conflicting (pending your decision) 1"),
        "{out}"
    );
    assert!(out.contains("skipped-invalid 3"), "{out}");
    assert_eq!(
        std::fs::read(&src).expect("read"),
        before,
        "source untouched"
    );
    assert_eq!(trusted(&db), vec![(0xa1, 0x11), (0xa2, 0x22), (0xa3, 0x99)]);
    let s = Store::open(&db).expect("opens");
    assert_eq!(s.pending_nodes().expect("reads"), vec![0xa3]);

    let (code, _, err) = run(keysync(&db).args(["import", "meshbot", "/nonexistent/meshbot.db"]));
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/meshbot.db"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_prints_the_forced_outcome_and_fails_when_the_radio_is_unreachable() {
    let Rig { dir: _dir, db, sim } = Rig::new(sim_config(10), &population(1, 12));
    let host = sim.addr().to_string();
    let db2 = db.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run(keysync(&db2).args(["sync", "--once", "--host", &host]))
    })
    .await
    .expect("joins");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("sync forced"), "{out}");
    assert!(out.contains("pushed 2"), "{out}");
    assert_eq!(sim.counters().flash_writes.load(Ordering::Relaxed), 2);

    // A port nobody listens on: bound by us a moment ago, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        run(keysync(&db).args(["sync", "--once", "--wait", "2s", "--host", &closed]))
    })
    .await
    .expect("joins");
    assert_eq!(code, 1);
    assert!(
        err.contains("could not reach the radio") && err.contains("refused"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_syncs_never_loses_a_trusted_key_or_corrupts_the_store() {
    kill_during_syncs(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 50 kill -9 rounds"]
async fn kill_9_during_50_syncs() {
    kill_during_syncs(50).await;
}

/// `keysync --headless` against `sim` with the store `db`, stdout discarded.
fn headless(sim: &keysync::sim::SimHandle, db: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keysync"));
    cmd.arg("--headless")
        .args(args)
        .arg("--host")
        .arg(sim.addr().to_string())
        .arg("--db")
        .arg(db)
        .env("XDG_CONFIG_HOME", "/nonexistent-keysync-test")
        .stdout(Stdio::null());
    cmd
}

/// Starts `keysync --headless` `rounds` times and kills it with SIGKILL at a different point of
/// a sync each time; the store must stay sound with every trusted key.
async fn kill_during_syncs(rounds: u64) {
    let known = population(1, 60);
    let Rig { dir: _dir, db, sim } = Rig::new(sim_config(0), &known);
    heard_keyless(&sim, 120).await;
    for round in 0..rounds {
        let before = sim.counters().add_contacts.load(Ordering::Relaxed);
        // Robustness, not the flash budget, is under test: every round pushes.
        let mut child = headless(
            &sim,
            &db,
            &[
                "--push-gap",
                "20ms",
                "--max-pushes",
                "60",
                "--max-flash-writes",
                "100000",
            ],
        )
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
        // Kill it in the middle of pushing: a few add_contacts in, more to come.
        let target = before + 1 + (round * 7) % 50;
        wait_until("pushes under way", || {
            sim.counters().add_contacts.load(Ordering::Relaxed) >= target
        })
        .await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        sim.inject(keysync::sim::Fault::Reboot {
            down: Duration::from_millis(50),
            forget: keysync::sim::Forget::Keys,
        })
        .await;
        let store = Store::open(&db).expect("reopens after kill -9");
        assert_eq!(store.integrity_check().expect("checks"), "ok");
        let trusted = store.trusted().expect("reads");
        assert_eq!(
            trusted.len(),
            60,
            "round {round}: every trusted key survives"
        );
        for n in &known {
            let stored = trusted.iter().find(|k| k.num == n.num).expect("node kept");
            assert_eq!(
                stored.key.to_vec(),
                n.user.as_ref().expect("user").public_key
            );
        }
    }
    assert_no_invalid_contacts(&sim);
}

#[test]
fn importing_a_file_that_is_not_meshbot_s_database_explains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("notes.db");
    std::fs::write(&src, b"not a database at all").expect("write");
    let db = dir.path().join("k.db");
    let (code, _, err) = run(keysync(&db).args(["import", "meshbot"]).arg(&src));
    assert_eq!(code, 1);
    assert!(err.contains("notes.db"), "{err}");
    let empty = dir.path().join("empty.db");
    Connection::open(&empty)
        .and_then(|c| c.execute_batch("CREATE TABLE other(x);"))
        .expect("creates");
    let (code, _, err) = run(keysync(&db).args(["import", "meshbot"]).arg(&empty));
    assert_eq!(code, 1);
    assert!(err.contains("meshtastic_nodes"), "{err}");
}

/// A tiny tmpfs, unmounted on drop; `None` where mounting is not allowed.
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    fn mount(kib: u32) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self { dir })
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_loses_nothing() {
    let Some(disk) = TinyDisk::mount(160) else {
        eprintln!("skipping: cannot mount a tmpfs here (needs root); see docs/PERFORMANCE.md");
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let make_source = |name: &str, rows: u32| {
        let path = work.path().join(name);
        let c = Connection::open(&path).expect("creates");
        c.execute_batch(
            "CREATE TABLE meshtastic_nodes (node_id TEXT PRIMARY KEY, name TEXT, shortName TEXT,
                hwModel INTEGER, publicKey BLOB, last_updated REAL)",
        )
        .expect("schema");
        for i in 0..rows {
            let mut key = [0u8; 32];
            for (j, b) in key.iter_mut().enumerate() {
                *b = u8::try_from((i as usize * 131 + j * 17) % 251).unwrap_or(0) | 1;
            }
            c.execute(
                "INSERT INTO meshtastic_nodes VALUES (?1, ?2, 'N', 9, ?3, 0)",
                rusqlite::params![
                    format!("!{:08x}", 0x1000_0000 + i),
                    format!("Node with a long name {i}"),
                    key.to_vec()
                ],
            )
            .expect("row");
        }
        path
    };
    let small = make_source("small.db", 5);
    let big = make_source("big.db", 5000);
    let db = disk.dir.path().join("k.db");
    let (code, out, err) = run(keysync(&db).args(["import", "meshbot"]).arg(&small));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("imported 5"), "{out}");
    let (code, _, err) = run(keysync(&db).args(["import", "meshbot"]).arg(&big));
    assert_eq!(code, 1, "the big import cannot fit: {err}");
    assert!(err.contains("full") && err.contains("k.db"), "{err}");
    let (code, out, err) = run(keysync(&db).args(["keys", "--json"]));
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        rows.as_array().map(Vec::len),
        Some(5),
        "the five keys are still there"
    );
    let store = Store::open(&db).expect("opens");
    assert_eq!(store.integrity_check().expect("checks"), "ok");
}

const HOSTILE_NAME: &str = "Evil\x1b]0;TITLE\x07\x1b[2J\n2026-01-01T00:00:00Z ERROR keysync forged";

/// No byte that a terminal acts on (ESC, BEL, CR, C1 …), and no line that the name started.
fn assert_inert(text: &str) {
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "control characters reached the output: {text:?}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00Z ERROR")),
        "a name forged a line: {text}"
    );
}

#[test]
fn keys_prints_hostile_node_names_without_their_escape_sequences() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("k.db");
    Store::open(&db)
        .and_then(|mut s| s.learn(&node_seen(0x1234_abcd, 7, HOSTILE_NAME), SystemTime::now()))
        .expect("learns");
    let (code, out, err) = run(keysync(&db).arg("keys"));
    assert_eq!(code, 0, "{err}");
    assert_inert(&out);
    assert_eq!(out.lines().count(), 3, "header, one node, total: {out}");
    assert!(out.contains("Evil]0;TITLE[2J2026"), "{out}");
    // JSON escapes them instead, and keeps the name as stored: cut to the firmware's 39 bytes.
    let (code, out, _) = run(keysync(&db).args(["keys", "--json"]));
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&out).expect("json");
    let stored = keysync::engine::truncate_utf8(HOSTILE_NAME, keysync::engine::LONG_NAME_MAX);
    assert_eq!(rows[0]["long_name"], stored);
}

/// `keysync sync --once --log-level debug` against `sim`; exit code and stderr.
async fn sync_once_debug(db: &Path, sim: &keysync::sim::SimHandle) -> (i32, String) {
    let (db, host) = (db.to_path_buf(), sim.addr().to_string());
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        run(keysync(&db).args(["sync", "--once", "--log-level", "debug", "--host", &host]))
    })
    .await
    .expect("joins");
    (code, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_headless_log_prints_hostile_node_names_without_their_escape_sequences() {
    let Rig { dir: _dir, db, sim } = Rig::new(sim_config(0), &[]);
    heard_keyless(&sim, 2).await;
    Store::open(&db)
        .expect("opens")
        .learn(&node_seen(0x1234_abcd, 7, HOSTILE_NAME), SystemTime::now())
        .expect("learns");
    let (code, err) = sync_once_debug(&db, &sim).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("add_contact !1234abcd (Evil]0;TITLE[2J2026"),
        "the push of the hostile node is logged: {err}"
    );
    assert_inert(&err);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_learning_many_keys_logs_one_summary_at_info_and_each_node_at_debug() {
    let Rig { dir: _dir, db, sim } = Rig::new(sim_config(40), &[]);
    let (code, err) = sync_once_debug(&db, &sim).await;
    assert_eq!(code, 0, "{err}");
    let per_node: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("learned the key of"))
        .collect();
    let summary: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("learned 40 keys from the radio's NodeDB"))
        .collect();
    assert_eq!((per_node.len(), summary.len()), (40, 1), "{err}");
    assert!(per_node.iter().all(|l| l.contains(" DEBUG ")), "{err}");
    assert!(summary[0].contains(" INFO "), "{err}");
}

/// A meshbot database with `n` nodes (ids from `first`), every key valid.
fn meshbot_db(path: &Path, first: u32, n: u32) {
    let c = Connection::open(path).expect("creates");
    c.execute_batch(
        "CREATE TABLE meshtastic_nodes (node_id TEXT PRIMARY KEY, name TEXT, shortName TEXT,
            hwModel INTEGER, publicKey BLOB)",
    )
    .expect("schema");
    for num in first..first + n {
        c.execute(
            "INSERT INTO meshtastic_nodes VALUES (?1, 'Imported', 'IM', 9, ?2)",
            rusqlite::params![format!("!{num:08x}"), vec![0x5au8; 32]],
        )
        .expect("row");
    }
}

#[test]
fn two_processes_writing_at_once_wait_for_each_other_and_nothing_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("k.db");
    let pending: Vec<u32> = (0x0100..0x0140).collect();
    store_with_pending(&db, &pending);
    let src = dir.path().join("meshbot.db");
    meshbot_db(&src, 0x0200, 50);
    // The other writer, as headless would: a sighting learned after another, each in its own
    // transaction that reads before it writes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut s = Store::open(&db).expect("opens");
            let mut num = 0x1_0000;
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = s.learn(&node_seen(num, 3, "headless"), SystemTime::now()) {
                    failures.push(e.to_string());
                }
                num += 1;
            }
            (num - 0x1_0000, failures)
        })
    };
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let mut calls = 0;
    let mut accepted = 0;
    while std::time::Instant::now() < until {
        let (code, _, err) = if calls % 2 == 0 {
            run(keysync(&db).args(["import", "meshbot"]).arg(&src))
        } else {
            accepted += 1;
            run(keysync(&db).args([
                "keys",
                "accept",
                &format!("!{:08x}", pending[accepted % pending.len()]),
            ]))
        };
        assert!(
            code == 0 || err.contains("no pending key"),
            "CLI call {calls} failed: {err}"
        );
        calls += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let (learned, failures) = writer.join().expect("writer joins");
    assert!(
        failures.is_empty(),
        "{} writes failed: {failures:?}",
        failures.len()
    );
    let s = Store::open(&db).expect("opens");
    let stored = s
        .nodes()
        .expect("reads")
        .iter()
        .filter(|n| n.long_name == "headless")
        .count();
    assert_eq!(
        u32::try_from(stored).expect("fits"),
        learned,
        "every write kept"
    );
    assert!(
        calls > 10 && learned > 100,
        "both wrote: {calls} CLI calls, {learned} learns"
    );
}

#[test]
fn another_program_s_sqlite_database_is_refused_and_left_byte_identical() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("meshbot.db");
    meshbot_db(&db, 0x0200, 3);
    let before = std::fs::read(&db).expect("read");
    for args in [
        &["keys"][..],
        &["keys", "--json"],
        &["--headless"],
        &["sync", "--once"],
    ] {
        let (code, _, err) = run(keysync(&db).args(args));
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("meshbot.db is another program's SQLite database")
                && err.contains("meshtastic_nodes"),
            "{args:?}: {err}"
        );
        assert_eq!(std::fs::read(&db).expect("read"), before, "{args:?}");
        assert!(!dir.path().join("meshbot.db-wal").exists());
    }
}

#[test]
fn a_store_written_before_the_application_id_is_adopted_and_marked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("k.db");
    store_with_pending(&db, &[0x0a0a_0a0a]);
    Connection::open(&db)
        .and_then(|c| c.execute_batch("PRAGMA application_id = 0;"))
        .expect("unmark");
    let (code, out, err) = run(keysync(&db).arg("keys"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("!0a0a0a0a"), "{out}");
    assert!(err.contains("marked as a keysync store"), "{err}");
    let id: i32 = Connection::open(&db)
        .and_then(|c| c.pragma_query_value(None, "application_id", |r| r.get(0)))
        .expect("reads");
    assert_eq!(id, keysync::engine::APPLICATION_ID);
}

#[cfg(unix)]
#[test]
fn a_store_and_its_wal_files_readable_by_others_are_made_0600_with_a_log_line() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    // A connection held open keeps the -wal and -shm files in place.
    let (db, holder) = store_held_by_another(&dir, "SELECT count(*) FROM nodes;");
    let files: Vec<_> = ["k.db", "k.db-wal", "k.db-shm"]
        .iter()
        .map(|f| dir.path().join(f))
        .collect();
    for f in &files {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let (code, _, err) = run(keysync(&db).arg("keys"));
    assert_eq!(code, 0, "{err}");
    for f in &files {
        let mode = std::fs::metadata(f).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
        assert!(
            err.contains(&format!("{}: mode 0644 changed to 0600", f.display())),
            "{err}"
        );
    }
    drop(holder);
}

#[test]
fn a_mistyped_store_path_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let typo = dir.path().join("typo").join("path.db");
    let (code, _, err) = run(keysync(&typo).arg("keys"));
    assert_eq!(code, 1);
    assert!(err.contains("no such directory"), "{err}");
    assert!(!dir.path().join("typo").exists());
    // Nor does a mode that writes: only the default location's directory is created.
    for args in [
        &["sync", "--once", "--wait", "1s"][..],
        &["import", "meshbot", "m.db"],
    ] {
        let (code, _, err) = run(keysync(&typo).args(args));
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("no such directory"), "{args:?}: {err}");
        assert!(!dir.path().join("typo").exists(), "{args:?}");
    }
    let missing = dir.path().join("missing.db");
    let (code, _, err) = run(keysync(&missing).args(["keys", "accept", "!0a0a0a0a"]));
    assert_eq!(code, 1);
    assert!(err.contains("no key store at"), "{err}");
    assert!(!missing.exists());
}

#[test]
fn an_eight_digit_node_that_reads_as_hex_and_as_decimal_is_refused_naming_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("k.db");
    let (hex, decimal) = (0x1234_5678, 12_345_678);
    store_with_pending(&db, &[hex, decimal]);
    let (code, _, err) = run(keysync(&db).args(["keys", "accept", "12345678"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("!12345678") && err.contains("!00bc614e"),
        "{err}"
    );
    assert_eq!(
        Store::open(&db)
            .expect("opens")
            .pending_nodes()
            .expect("reads"),
        vec![decimal, hex]
    );
    // `!` always means hex.
    let (code, out, err) = run(keysync(&db).args(["keys", "accept", "!12345678"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("for !12345678"), "{out}");
    // With one of the two unknown, the known one is meant.
    let db2 = dir.path().join("k2.db");
    store_with_pending(&db2, &[decimal]);
    let (code, out, err) = run(keysync(&db2).args(["keys", "accept", "12345678"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("for !00bc614e"), "{out}");
}

#[test]
fn node_zero_and_the_broadcast_address_are_refused_by_the_cli_the_import_and_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("k.db");
    {
        let mut s = Store::open(&db).expect("opens");
        for num in [0, u32::MAX] {
            assert_eq!(
                s.learn(&node_seen(num, 1, "nobody"), SystemTime::now())
                    .expect("learns"),
                keysync::engine::Learned::NotANode
            );
        }
    }
    for node in ["0", "!00000000", "!ffffffff", "4294967295"] {
        let (code, _, err) = run(keysync(&db).args(["keys", "accept", node]));
        assert_eq!(code, 2, "{node}: {err}");
        assert!(
            err.contains("no node") || err.contains("is not a node"),
            "{node}: {err}"
        );
    }
    let src = dir.path().join("meshbot.db");
    meshbot_db(&src, 0xffff_fffe, 1);
    Connection::open(&src)
        .and_then(|c| {
            c.execute_batch(
                "INSERT INTO meshtastic_nodes SELECT '!ffffffff', name, shortName, hwModel, publicKey FROM meshtastic_nodes;
                 INSERT INTO meshtastic_nodes SELECT 4294967295, name, shortName, hwModel, publicKey FROM meshtastic_nodes LIMIT 1;
                 INSERT INTO meshtastic_nodes SELECT 0, name, shortName, hwModel, publicKey FROM meshtastic_nodes LIMIT 1;",
            )
        })
        .expect("rows");
    let (code, out, err) = run(keysync(&db).args(["import", "meshbot"]).arg(&src));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("imported 1,") && out.contains("skipped-invalid 3"),
        "{out}"
    );
    let nums: Vec<u32> = Store::open(&db)
        .expect("opens")
        .nodes()
        .expect("reads")
        .iter()
        .map(|n| n.num)
        .collect();
    assert_eq!(nums, vec![0xffff_fffe]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_interrupted_by_sigterm_is_recorded_in_the_history() {
    let Rig { dir: _dir, db, sim } = Rig::new(sim_config(0), &population(1, 30));
    heard_keyless(&sim, 60).await;
    let mut child = headless(&sim, &db, &["--push-gap", "200ms"])
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    wait_until("pushes under way", || {
        sim.counters().add_contacts.load(Ordering::Relaxed) >= 2
    })
    .await;
    sigterm(&child);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("joins")
        .expect("waits");
    assert_eq!(status.code(), Some(0));
    let runs = Store::open(&db)
        .expect("opens")
        .recent_runs(5)
        .expect("reads");
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].outcome, "failed");
    assert!(
        runs[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("interrupted")),
        "{runs:#?}"
    );
}

#[test]
fn keys_json_lists_every_node_as_one_json_array() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("k.db");
    drop(Store::open(&db).expect("opens"));
    let (code, out, err) = run(keysync(&db).args(["keys", "--json"]));
    assert_eq!((code, out.as_str()), (0, "[]\n"), "{err}");
    {
        let mut s = Store::open(&db).expect("opens");
        for num in 1..=300u32 {
            let key = u8::try_from(num % 250).expect("small") + 1;
            s.learn(
                &node_seen(num << 8, key, "Node \"quoted\"\n"),
                SystemTime::now(),
            )
            .expect("learns");
        }
    }
    let (code, out, err) = run(keysync(&db).args(["keys", "--json"]));
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("one JSON array");
    assert_eq!(rows.len(), 300);
    for (i, row) in (1u32..).zip(&rows) {
        assert_eq!(row["num"], i << 8, "in node number order");
        assert_eq!(row["long_name"], "Node \"quoted\"\n");
    }
    assert!(
        out.starts_with("[\n  {\n    \"num\": 256,"),
        "{}",
        &out[..40]
    );
    let (code, out, err) = run(keysync(&db).arg("keys"));
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("300 nodes\n"), "{out}");
}

#[test]
fn an_import_larger_than_one_run_takes_is_refused_whole_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("k.db");
    let src = dir.path().join("meshbot.db");
    let mut c = Connection::open(&src).expect("creates");
    c.execute_batch(
        "CREATE TABLE meshtastic_nodes (node_id TEXT PRIMARY KEY, name TEXT, shortName TEXT,
            hwModel INTEGER, publicKey BLOB)",
    )
    .expect("schema");
    let max = keysync::engine::IMPORT_MAX;
    let tx = c.transaction().expect("transaction");
    for num in 1..=max + 1 {
        tx.execute(
            "INSERT INTO meshtastic_nodes VALUES (?1, 'Imported', 'IM', 9, ?2)",
            rusqlite::params![format!("!{num:08x}"), vec![0x5au8; 32]],
        )
        .expect("row");
    }
    tx.commit().expect("committed");
    drop(c);
    let (code, _, err) = run(keysync(&db).args(["import", "meshbot"]).arg(&src));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "holds {} nodes, more than the {max} one import takes: nothing was imported",
            max + 1
        )),
        "{err}"
    );
    let stored = Store::open(&db).expect("opens").nodes().expect("nodes");
    assert!(stored.is_empty(), "{} imported", stored.len());
}
