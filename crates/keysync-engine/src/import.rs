//! Importing keys from other tools' databases (keysync's own export and contact URLs are in
//! `transfer`). The source is opened read-only and never
//! changed; every key goes through the same trust rules as a key heard on the mesh.

use std::path::Path;
use std::time::SystemTime;

use rusqlite::{Connection, OpenFlags, types::ValueRef};

use super::radio::{NodeSeen, PublicKey, Source, is_node_num};
use super::store::{Learned, NodeArg, Store, StoreError, parse_key, parse_node};

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Keys new to the store, now trusted.
    pub imported: u32,
    /// Keys the store already trusted.
    pub unchanged: u32,
    /// Keys that differ from the trusted one: pending the operator's decision.
    pub conflicting: u32,
    /// Rows without a usable node id or key.
    pub skipped_invalid: u32,
}

/// Rows one import reads at most: they are learned in one transaction (all or nothing), so
/// they are held at once. A gateway's bot knows thousands of nodes; a million is not a mesh.
pub const IMPORT_MAX: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {detail}")]
    Source { path: String, detail: String },
    #[error(
        "{path} holds {rows} nodes, more than the {max} one import takes: nothing was imported"
    )]
    TooLarge { path: String, rows: u64, max: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A key column's value: 32 raw bytes, base64 text or hex text.
fn key_of(value: ValueRef<'_>) -> Option<PublicKey> {
    match value {
        ValueRef::Blob(b) if b.len() == 32 => super::radio::valid_key(b),
        ValueRef::Blob(b) => std::str::from_utf8(b).ok().and_then(parse_key),
        ValueRef::Text(t) => std::str::from_utf8(t).ok().and_then(parse_key),
        _ => None,
    }
}

fn text_of(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Integer(i) => i.to_string(),
        _ => String::new(),
    }
}

/// Imports meshbot's `meshtastic_nodes(node_id, name, shortName, hwModel, publicKey, ...)`,
/// at most [`IMPORT_MAX`] rows.
pub fn import_meshbot(store: &mut Store, source: &Path) -> Result<ImportReport, ImportError> {
    import_meshbot_at_most(store, source, IMPORT_MAX)
}

/// [`import_meshbot`] of a source with at most `max` rows; a larger one is refused before
/// anything is read.
pub fn import_meshbot_at_most(
    store: &mut Store,
    source: &Path,
    max: u64,
) -> Result<ImportReport, ImportError> {
    let fail = |detail: String| ImportError::Source {
        path: source.display().to_string(),
        detail,
    };
    if !source.exists() {
        return Err(fail("no such file".into()));
    }
    // SQLite would open a FIFO and wait on it forever.
    super::files::regular_or_absent(source).map_err(|e| fail(e.to_string()))?;
    let conn = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| fail(e.to_string()))?;
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM meshtastic_nodes", [], |r| r.get(0))
        .map_err(|e| fail(format!("{e} (expected meshbot's meshtastic_nodes table)")))?;
    let rows = u64::try_from(rows).unwrap_or(0);
    if rows > max {
        return Err(ImportError::TooLarge {
            path: source.display().to_string(),
            rows,
            max,
        });
    }
    let mut stmt = conn
        .prepare("SELECT node_id, name, shortName, hwModel, publicKey FROM meshtastic_nodes")
        .map_err(|e| fail(format!("{e} (expected meshbot's meshtastic_nodes table)")))?;
    let mut rows = stmt.query([]).map_err(|e| fail(e.to_string()))?;
    let mut sightings = Vec::new();
    let mut report = ImportReport::default();
    while let Some(row) = rows.next().map_err(|e| fail(e.to_string()))? {
        let num = match row.get_ref(0).map_err(|e| fail(e.to_string()))? {
            ValueRef::Integer(i) => u32::try_from(i).ok().filter(|n| is_node_num(*n)),
            // An id that reads as hex and as decimal is skipped rather than guessed.
            other => match parse_node(&text_of(other)) {
                Ok(NodeArg::One(num)) => Some(num),
                _ => None,
            },
        };
        let key = row.get_ref(4).ok().and_then(key_of);
        let (Some(num), Some(key)) = (num, key) else {
            report.skipped_invalid += 1;
            continue;
        };
        let hw_model = match row.get_ref(3) {
            Ok(ValueRef::Integer(i)) => i32::try_from(i).unwrap_or(0),
            _ => 0,
        };
        sightings.push(NodeSeen {
            num,
            long_name: row.get_ref(1).map(text_of).unwrap_or_default(),
            short_name: row.get_ref(2).map(text_of).unwrap_or_default(),
            hw_model,
            role: 0,
            public_key: key.to_vec(),
            source: Source::Import,
            is_favorite: false,
            flags: crate::radio::UserFlags::default(),
        });
    }
    // One transaction: an import that cannot finish (a full disk) leaves the store as it was.
    let learned = store.learn_all(&sightings, SystemTime::now())?;
    let counts = tally(&learned);
    report.imported = counts.imported;
    report.unchanged = counts.unchanged;
    report.conflicting = counts.conflicting;
    report.skipped_invalid += counts.skipped_invalid;
    Ok(report)
}

/// What learning an import's sightings did, counted.
pub fn tally(learned: &[Learned]) -> ImportReport {
    let mut report = ImportReport::default();
    for learned in learned {
        match learned {
            Learned::FirstUse | Learned::Renumbered { .. } => report.imported += 1,
            Learned::Same => report.unchanged += 1,
            Learned::Pending { .. } | Learned::KnownOther(_) | Learned::Claimed { .. } => {
                report.conflicting += 1;
            }
            // An import is not bounded: no NoRoom.
            Learned::NamesOnly | Learned::NotANode | Learned::NoRoom => report.skipped_invalid += 1,
        }
    }
    report
}
