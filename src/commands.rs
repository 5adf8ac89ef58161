//! The one-shot subcommands that work on the key store: `keys`, `keys accept|reject`,
//! `import meshbot`.

use std::io::Write;
use std::time::SystemTime;

use serde::Serialize;

use crate::cli::{ImportSource, KeysAction, KeysArgs, Settings, UsageError};
use crate::engine::import::import_meshbot;
use crate::engine::radio::{Source, node_id, printable};
use crate::engine::store::{NodeArg, NodeRecord, Store, key_base64};

/// A stored node as `keys --json` and `/status` show it.
#[derive(Debug, Serialize)]
pub struct KeyRow {
    pub num: u32,
    pub id: String,
    pub long_name: String,
    pub short_name: String,
    pub state: &'static str,
    pub key: Option<String>,
    pub pending_key: Option<String>,
    /// Where the key came from: mesh, radio, import, client, "MQTT via !gateway", "fleet !gateway".
    pub source: Option<String>,
    pub first_seen: String,
    pub last_seen: String,
    pub pushes: u32,
    pub pinned: bool,
    pub keysync_favourite: bool,
    pub removed_from_radio: bool,
}

impl From<&NodeRecord> for KeyRow {
    fn from(n: &NodeRecord) -> Self {
        Self {
            num: n.num,
            id: n.id(),
            long_name: n.long_name.clone(),
            short_name: n.short_name.clone(),
            state: n.state().map_or("no key", |s| s.as_str()),
            key: n.trusted.as_ref().map(key_base64),
            pending_key: n.pending.as_ref().map(key_base64),
            source: n.source.map(Source::label),
            first_seen: humantime::format_rfc3339_seconds(n.first_seen).to_string(),
            last_seen: humantime::format_rfc3339_seconds(n.last_seen).to_string(),
            pushes: n.pushes,
            pinned: n.pinned,
            keysync_favourite: n.our_favourite,
            removed_from_radio: n.removed,
        }
    }
}

/// `keys [--json]` and `keys accept|reject NODE`, written to `out`. The list is written a
/// node at a time as the store reads it: a million stored nodes cost one row of memory.
pub fn keys(settings: &Settings, args: &KeysArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut store = Store::open_existing(settings.db())?;
    let text = match &args.action {
        None if args.json => return json_list(&store, out),
        None => return table(&store, out),
        Some(KeysAction::Pin { node } | KeysAction::Unpin { node }) => {
            let num = resolve_node(&store, *node)?;
            let id = node_id(num);
            let pin = matches!(args.action, Some(KeysAction::Pin { .. }));
            if !store.set_pinned(num, pin)? {
                anyhow::bail!("{id} is not a stored node");
            }
            if pin {
                format!("pinned {id}: it keeps a slot on the radio\n")
            } else {
                format!("unpinned {id}\n")
            }
        }
        Some(KeysAction::Accept { node } | KeysAction::Reject { node }) => {
            let num = resolve_node(&store, *node)?;
            let id = node_id(num);
            let accept = matches!(args.action, Some(KeysAction::Accept { .. }));
            let now = SystemTime::now();
            let result = if accept {
                store.accept(num, now)?
            } else {
                let r = store.reject(num, now)?;
                if r.is_ok() {
                    store.clear_cache()?;
                }
                r
            };
            let key = result?;
            if accept {
                format!(
                    "accepted {} for {id}: it is the trusted key now\n",
                    key_base64(&key)
                )
            } else {
                format!(
                    "rejected {} for {id}: the trusted key goes back to the radio at the next sync\n",
                    key_base64(&key)
                )
            }
        }
    };
    Ok(out.write_all(text.as_bytes())?)
}

/// The stored nodes as a JSON array, laid out as `serde_json`'s pretty printer would.
fn json_list(store: &Store, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut first = true;
    let mut buf = Vec::new();
    out.write_all(b"[")?;
    store.each_node(|n| {
        buf.clear();
        serde_json::to_writer_pretty(&mut buf, &KeyRow::from(&n))?;
        out.write_all(if first { b"\n  " } else { b",\n  " })?;
        first = false;
        for (i, line) in buf.split(|b| *b == b'\n').enumerate() {
            if i > 0 {
                out.write_all(b"\n  ")?;
            }
            out.write_all(line)?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    out.write_all(if first { b"]\n" } else { b"\n]\n" })?;
    Ok(())
}

/// The node an operator meant; an id that reads two ways is resolved by which node the store
/// knows.
fn resolve_node(store: &Store, node: NodeArg) -> anyhow::Result<u32> {
    let known = match node {
        NodeArg::One(_) => Vec::new(),
        NodeArg::Either { hex, decimal } => {
            let mut known = Vec::new();
            for num in [hex, decimal] {
                if store.knows(num)? {
                    known.push(num);
                }
            }
            known
        }
    };
    Ok(node.resolve(|n| known.contains(&n)).map_err(UsageError)?)
}

fn table(store: &Store, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<10} {:<24} {:<8} {:<44} {:<20} {:>6}  SOURCE",
        "ID", "NAME", "STATE", "KEY", "LAST SEEN", "PUSHES"
    )?;
    let mut count = 0u64;
    store.each_node(|n| {
        let r = KeyRow::from(&n);
        count += 1;
        let name: String = printable(&r.long_name).chars().take(24).collect();
        writeln!(
            out,
            "{:<10} {:<24} {:<8} {:<44} {:<20} {:>6}  {}",
            r.id,
            name,
            r.state,
            r.key.as_deref().unwrap_or("-"),
            r.last_seen,
            r.pushes,
            r.source.as_deref().unwrap_or("-")
        )?;
        if let Some(p) = &r.pending_key {
            writeln!(out, "{:<10} {:<24} {:<8} {p}", "", "  ↳ offered", "pending")?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    writeln!(out, "{count} nodes")?;
    Ok(())
}

/// `import meshbot PATH`.
pub fn import(settings: &Settings, from: &ImportSource) -> anyhow::Result<String> {
    let ImportSource::Meshbot { path } = from;
    let mut store = settings.open_store()?;
    let r = import_meshbot(&mut store, path)?;
    Ok(format!(
        "imported {}, unchanged {}, conflicting (pending your decision) {}, skipped-invalid {}\n",
        r.imported, r.unchanged, r.conflicting, r.skipped_invalid
    ))
}
