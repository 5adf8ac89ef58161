//! Keys that travel, through the binary: `keys export` (JSON, contact URLs), `import json`,
//! `import url`, `keys qr` — round trips into an empty store, the trust rules on import, and
//! files that are not ours refused whole with nothing learned.

mod common;

use std::path::Path;
use std::time::SystemTime;

use assert_cmd::Command as Cmd;
use common::cli::{keysync, run};
use common::proto::node_seen;
use keysync::engine::{CONTACT_URL_PREFIX, parse_contact_url};
use keysync::engine::{NodeSeen, Source, UserFlags};
use keysync::engine::{Store, key_base64};

fn ok(cmd: &mut Cmd) -> String {
    let (code, out, err) = run(cmd);
    assert_eq!(code, 0, "{out}\n{err}");
    out
}

/// A store with three nodes keyed and one keyless: 0x11 trusted, 0x22 trusted with a pending
/// key, 0x33 trusted and licensed, 0x44 names only.
fn varied_store(db: &Path) {
    let mut s = Store::open(db).expect("opens");
    let now = SystemTime::now();
    let mut licensed = node_seen(0x33, 3, "Licensed");
    licensed.flags = UserFlags {
        is_unmessagable: Some(true),
        is_licensed: true,
    };
    licensed.role = 2;
    let keyless = NodeSeen {
        public_key: Vec::new(),
        ..node_seen(0x44, 0, "No key")
    };
    for seen in [
        node_seen(0x11, 1, "Ridge"),
        node_seen(0x22, 2, "Valley"),
        node_seen(0x22, 9, "Valley"),
        licensed,
        keyless,
    ] {
        s.learn(&seen, now).expect("learns");
    }
}

/// What a store holds that must survive a round trip: per keyed node, its names, role, flags,
/// state and keys.
fn keyed(db: &Path) -> Vec<(u32, String, i32, UserFlags, &'static str, String, String)> {
    let s = Store::open_existing(db).expect("opens");
    s.nodes()
        .expect("lists")
        .into_iter()
        .filter(|n| n.trusted.is_some() || n.pending.is_some())
        .map(|n| {
            (
                n.num,
                n.long_name.clone(),
                n.role,
                n.flags,
                n.state().map_or("none", |st| st.as_str()),
                n.trusted.as_ref().map(key_base64).unwrap_or_default(),
                n.pending.as_ref().map(key_base64).unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn a_json_export_imported_into_an_empty_store_gives_the_same_keys_and_states() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, copy) = (dir.path().join("a.db"), dir.path().join("b.db"));
    varied_store(&db);
    let json = ok(keysync(&db).args(["keys", "export"]));
    let doc: serde_json::Value = serde_json::from_str(&json).expect("the export is JSON");
    assert_eq!(doc["format"], "keysync-keys");
    assert_eq!(doc["version"], 1);
    let nodes = doc["nodes"].as_array().expect("a list");
    assert_eq!(nodes.len(), 3, "the keyless node carries nothing: {json}");
    assert_eq!(nodes[1]["state"], "pending");
    assert_eq!(nodes[1]["pending_key"], key_base64(&[9; 32]));
    assert_eq!(nodes[0]["source"], "mesh");
    assert!(
        nodes[0]["first_seen"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let file = dir.path().join("keys.json");
    std::fs::write(&file, &json).expect("written");

    let summary = ok(keysync(&copy).args(["import", "json"]).arg(&file));
    assert_eq!(
        summary,
        "imported 3, unchanged 0, conflicting (pending your decision) 1, skipped-invalid 0\n"
    );
    assert_eq!(keyed(&copy), keyed(&db));
    // Again: nothing new.
    let again = ok(keysync(&copy).args(["import", "json"]).arg(&file));
    assert!(
        again.starts_with("imported 0, unchanged 3, conflicting (pending your decision) 1"),
        "{again}"
    );

    let trusted = ok(keysync(&db).args(["keys", "export", "--trusted-only"]));
    let doc: serde_json::Value = serde_json::from_str(&trusted).expect("JSON");
    assert!(
        doc["nodes"]
            .as_array()
            .expect("list")
            .iter()
            .all(|n| n["state"] == "trusted" && n["pending_key"].is_null())
    );
}

#[test]
fn contact_urls_exported_and_imported_give_the_same_trusted_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, copy) = (dir.path().join("a.db"), dir.path().join("b.db"));
    varied_store(&db);
    let urls = ok(keysync(&db).args(["keys", "export", "--format", "urls"]));
    let lines: Vec<&str> = urls.lines().collect();
    assert_eq!(lines.len(), 3, "{urls}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with(CONTACT_URL_PREFIX) && !l.contains('='))
    );
    let file = dir.path().join("contacts.txt");
    std::fs::write(&file, format!("# from the old gateway\n\n{urls}")).expect("written");

    let summary = ok(keysync(&copy).args(["import", "url", "--file"]).arg(&file));
    assert!(
        summary.starts_with(
            "imported 3, unchanged 0, conflicting (pending your decision) 0, skipped-invalid 0"
        ),
        "{summary}"
    );
    // A URL carries no pending key: every node is trusted with the key the source trusts.
    let trusted = |db: &Path| -> Vec<_> {
        keyed(db)
            .into_iter()
            .map(|(num, name, role, flags, _, key, _)| (num, name, role, flags, key))
            .collect()
    };
    assert_eq!(trusted(&copy), trusted(&db));

    // One on the command line, into a third store.
    let third = dir.path().join("c.db");
    let summary = ok(keysync(&third).args(["import", "url", lines[2]]));
    assert!(summary.starts_with("imported 1,"), "{summary}");
}

#[test]
fn an_imported_key_that_differs_from_the_trusted_one_waits_pending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, other) = (dir.path().join("a.db"), dir.path().join("b.db"));
    {
        let mut s = Store::open(&db).expect("opens");
        s.learn(&node_seen(0x11, 1, "Ridge"), SystemTime::now())
            .expect("learns");
        let mut s = Store::open(&other).expect("opens");
        s.learn(&node_seen(0x11, 5, "Ridge"), SystemTime::now())
            .expect("learns");
    }
    let url = ok(keysync(&other).args(["keys", "export", "--format", "urls"]));
    let summary = ok(keysync(&db).args(["import", "url", url.trim()]));
    assert!(
        summary.starts_with("imported 0, unchanged 0, conflicting (pending your decision) 1"),
        "{summary}"
    );
    let json = ok(keysync(&db).args(["keys", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(rows[0]["state"], "pending");
    assert_eq!(
        rows[0]["key"],
        key_base64(&[1; 32]),
        "the trusted key stays"
    );
    assert_eq!(rows[0]["pending_key"], key_base64(&[5; 32]));
    assert_eq!(rows[0]["source"], "mesh");
}

/// The store's trusted keys and node count, to show a refused import learned nothing.
fn contents(db: &Path) -> (usize, Vec<(u32, [u8; 32])>) {
    let s = Store::open_existing(db).expect("opens");
    let trusted = s.trusted().expect("trusted");
    (
        s.nodes().expect("nodes").len(),
        trusted.into_iter().map(|t| (t.num, t.key)).collect(),
    )
}

#[test]
fn files_that_are_not_ours_are_refused_whole_and_nothing_is_learned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("a.db");
    varied_store(&db);
    let before = contents(&db);
    let good_url = ok(keysync(&db).args(["keys", "export", "--format", "urls"]));
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("written");
        path
    };
    let new_node = r#"{"num": 99, "key": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}"#;
    let big = dir.path().join("big.json");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(17 * 1024 * 1024))
        .expect("a sparse 17 MiB file");
    let fifo = dir.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success()
    );
    let json_cases = [
        (
            write("list.json", &format!("[{new_node}]")),
            "not a keysync key export",
        ),
        (
            write(
                "other.json",
                &format!(r#"{{"format": "x", "version": 1, "nodes": [{new_node}]}}"#),
            ),
            "not a keysync key export",
        ),
        (
            write(
                "newer.json",
                &format!(r#"{{"format": "keysync-keys", "version": 2, "nodes": [{new_node}]}}"#),
            ),
            "export version 2 is newer",
        ),
        (write("text.json", "id,key\n99,AQEB\n"), "not JSON"),
        (big, "larger than 16384 KiB"),
        (fifo.clone(), "not a regular file"),
    ];
    for (path, why) in &json_cases {
        let (code, out, err) = run(keysync(&db).args(["import", "json"]).arg(path));
        assert_eq!(code, 1, "{}: {out}{err}", path.display());
        assert!(
            err.contains(why) && err.contains(&*path.to_string_lossy()),
            "{err}"
        );
        assert_eq!(contents(&db), before, "{} learned nothing", path.display());
    }
    // A file of URLs with one line that is not a contact URL: refused whole, the good ones too.
    let mixed = write(
        "mixed.txt",
        &format!("{good_url}https://meshtastic.org/e/#CgMSAQ\n"),
    );
    for file in [&mixed, &fifo] {
        let (code, _, err) = run(keysync(&db).args(["import", "url", "--file"]).arg(file));
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("line 4 is not a Meshtastic contact URL")
                || err.contains("not a regular file"),
            "{err}"
        );
    }
    let (code, _, err) = run(keysync(&db).args([
        "import",
        "url",
        good_url.lines().next().unwrap_or(""),
        "hello",
    ]));
    assert_eq!(code, 2, "a usage error: {err}");
    assert!(
        err.contains("argument 2 is not a Meshtastic contact URL"),
        "{err}"
    );
    assert_eq!(contents(&db), before);
}

#[test]
fn invalid_entries_are_counted_and_named_and_the_valid_ones_learned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("a.db");
    let file = dir.path().join("keys.json");
    let key = key_base64(&[4; 32]);
    std::fs::write(
        &file,
        format!(
            r#"{{"format": "keysync-keys", "version": 1, "nodes": [
                {{"num": 16, "id": "!00000010", "key": "{key}"}},
                {{"num": 17, "key": "dGVzdA=="}},
                {{"num": 0, "key": "{key}"}},
                {{"num": 18, "id": "!00000099", "key": "{key}"}},
                {{"name": "no number"}}
            ]}}"#
        ),
    )
    .expect("written");
    let out = ok(keysync(&db).args(["import", "json"]).arg(&file));
    assert_eq!(
        out,
        "imported 1, unchanged 0, conflicting (pending your decision) 0, skipped-invalid 4\n\
         \x20 skipped node 2 (!00000011): a key that is not 32 bytes of base64 or hex\n\
         \x20 skipped node 3 (!00000000): node number 0 or broadcast\n\
         \x20 skipped node 4 (!00000012): its id does not match its number\n\
         \x20 skipped node 5: missing field `num`\n"
    );
    let s = Store::open_existing(&db).expect("opens");
    let t = s.trusted().expect("trusted");
    assert_eq!((t.len(), t[0].num, t[0].key), (1, 16, [4; 32]));
    assert_eq!(s.nodes().expect("nodes")[0].source, Some(Source::Import));
}

#[test]
fn keys_qr_prints_the_nodes_contact_as_a_code_and_its_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("a.db");
    varied_store(&db);
    let out = ok(keysync(&db).args(["keys", "qr", "!00000011"]));
    let url = out.lines().last().expect("the URL last");
    let seen = parse_contact_url(url).expect("a contact URL");
    assert_eq!(
        (seen.num, seen.public_key.as_slice()),
        (0x11, &[1u8; 32][..])
    );
    let code: Vec<&str> = out.lines().filter(|l| l.starts_with('█')).collect();
    assert!(code.len() >= 12, "{out}");
    let width = code[0].chars().count();
    assert!(code.iter().all(|l| l.chars().count() == width));
    let (code, _, err) = run(keysync(&db).args(["keys", "qr", "!00000044"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("!00000044 has no trusted key to share"),
        "{err}"
    );
}
