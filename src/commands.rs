//! The one-shot subcommands that work on the key store: `keys`, `keys accept|reject|pin|unpin`,
//! `keys export|qr`, `import meshbot|json|url`.

use std::io::Write;
use std::time::SystemTime;

use serde::Serialize;

use crate::cli::{ExportFormat, ImportSource, KeysAction, KeysArgs, Settings, UsageError};
use crate::engine::{self, TransferReport};
use crate::engine::{ImportReport, import_meshbot};
use crate::engine::{NodeArg, NodeRecord, Store, StoreError, key_base64};
use crate::engine::{Source, node_id, printable};

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
        Some(KeysAction::Qr { node }) => qr(&store, *node)?,
        Some(KeysAction::Export { .. }) => {
            anyhow::bail!("keys export writes to a stream: call commands::export")
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
    Ok(node
        .resolve(|n| known.contains(&n))
        .map_err(|e| UsageError(e.to_string()))?)
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

/// `keys export`: the store written to `out` row by row, whatever it holds; the count.
pub fn export(
    settings: &Settings,
    format: ExportFormat,
    trusted_only: bool,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<usize> {
    let store = Store::open_existing(settings.db())?;
    let count = match format {
        ExportFormat::Json => engine::write_json(&store, out, trusted_only, SystemTime::now())?,
        ExportFormat::Urls => engine::write_urls(&store, out)?,
    };
    out.flush().map_err(engine::ExportError::Io)?;
    Ok(count)
}

/// `keys qr NODE`: the node's contact URL and its QR code.
fn qr(store: &Store, node: NodeArg) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let num = resolve_node(store, node)?;
    let id = node_id(num);
    let mut found = None;
    store.each_node(|record| {
        if record.num == num {
            found = Some(record);
        }
        Ok::<_, StoreError>(())
    })?;
    let record = found.ok_or_else(|| anyhow::anyhow!("{id} is not a stored node"))?;
    let contact = engine::contact_of(&record)
        .ok_or_else(|| anyhow::anyhow!("{id} has no trusted key to share"))?;
    let url = engine::contact_url(&contact);
    let code = crate::qr::qr_text(&url, 2)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{id} {}: scan with the Meshtastic app (light on dark)\n",
        printable(&record.long_name)
    );
    for line in &code.lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "\n{url}");
    Ok(out)
}

/// `import meshbot PATH`, `import json PATH`, `import url URL…|--file PATH`.
pub fn import(settings: &Settings, from: &ImportSource) -> anyhow::Result<String> {
    let report = match from {
        ImportSource::Meshbot { path } => {
            let mut store = settings.open_store()?;
            TransferReport {
                counts: import_meshbot(&mut store, path)?,
                invalid: Vec::new(),
            }
        }
        ImportSource::Json { path } => {
            let mut store = settings.open_store()?;
            engine::import_json(&mut store, path)?
        }
        ImportSource::Url { urls, file } => {
            let urls = match file {
                Some(path) => engine::read_url_file(path)?,
                None => url_args(urls)?,
            };
            let mut store = settings.open_store()?;
            engine::import_urls(&mut store, &urls)?
        }
    };
    Ok(summary(&report))
}

/// URLs given on the command line, each named by its place; an argument that is not a contact
/// URL at all is a usage error, and nothing is learned.
fn url_args(urls: &[String]) -> Result<Vec<(String, String)>, UsageError> {
    urls.iter()
        .enumerate()
        .map(|(i, url)| {
            if engine::looks_like_contact_url(url) {
                Ok((format!("URL {}", i + 1), url.clone()))
            } else {
                Err(UsageError(format!(
                    "argument {} is not a Meshtastic contact URL (https://meshtastic.org/v/#…); nothing imported",
                    i + 1
                )))
            }
        })
        .collect()
}

fn summary(report: &TransferReport) -> String {
    use std::fmt::Write as _;
    let ImportReport {
        imported,
        unchanged,
        conflicting,
        skipped_invalid,
    } = report.counts;
    let mut out = format!(
        "imported {imported}, unchanged {unchanged}, conflicting (pending your decision) {conflicting}, skipped-invalid {skipped_invalid}\n"
    );
    for why in &report.invalid {
        let _ = writeln!(out, "  skipped {}", printable(why));
    }
    let unnamed = skipped_invalid as usize - report.invalid.len().min(skipped_invalid as usize);
    if unnamed > 0 && !report.invalid.is_empty() {
        let _ = writeln!(out, "  and {unnamed} more");
    }
    out
}
