//! The durable key store: every node and public key keysync has learned, the operator's trust
//! decisions, every sync run and every link change, in one SQLite file (WAL, mode 0600).
//!
//! Trust on first use: a node's first valid key is trusted; a different key later is kept as
//! *pending* until the operator accepts or rejects it. A stored key is never replaced by an
//! empty or invalid one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::radio::{
    Contact, LONG_NAME_MAX, NodeSeen, PublicKey, SHORT_NAME_MAX, Source, is_node_num, node_id,
    truncate_utf8, valid_key,
};

/// The schema version this keysync writes; databases from newer versions are refused.
pub const SCHEMA_VERSION: i64 = 5;
/// `PRAGMA application_id` of a keysync store ("KSYN"), so that keysync recognises its own
/// files and leaves other programs' SQLite databases alone. (`file(1)` shows it too.)
pub const APPLICATION_ID: i32 = 0x4b53_594e;
/// The tables of schema version 1: a file without `application_id` that holds them is a store
/// from a keysync that did not mark its files yet, and is adopted.
const OWN_TABLES: &[&str] = &[
    "nodes",
    "keys",
    "key_history",
    "sync_runs",
    "link_events",
    "sync_cache",
];
/// SQLite's page cache per connection, in the negative-KiB form of `PRAGMA cache_size`.
const PAGE_CACHE_KIB: i64 = -256;
/// How long a write waits for another process's lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE nodes (
        num INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        long_name TEXT NOT NULL DEFAULT '',
        short_name TEXT NOT NULL DEFAULT '',
        hw_model INTEGER NOT NULL DEFAULT 0,
        role INTEGER NOT NULL DEFAULT 0,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        pushes INTEGER NOT NULL DEFAULT 0,
        last_pushed INTEGER
     );
     CREATE TABLE keys (
        node_num INTEGER NOT NULL REFERENCES nodes(num),
        key BLOB NOT NULL CHECK (length(key) = 32),
        state TEXT NOT NULL CHECK (state IN ('trusted', 'pending', 'rejected', 'retired')),
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        source TEXT NOT NULL,
        PRIMARY KEY (node_num, key)
     );
     CREATE UNIQUE INDEX one_trusted_key ON keys(node_num) WHERE state = 'trusted';
     CREATE TABLE key_history (
        id INTEGER PRIMARY KEY,
        node_num INTEGER NOT NULL,
        key BLOB NOT NULL,
        at INTEGER NOT NULL,
        source TEXT NOT NULL,
        event TEXT NOT NULL
     );
     CREATE INDEX key_history_node ON key_history(node_num, at);
     CREATE TABLE sync_runs (
        id INTEGER PRIMARY KEY,
        started_at INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL,
        fingerprint BLOB,
        known INTEGER NOT NULL,
        in_radio INTEGER NOT NULL,
        pushed INTEGER NOT NULL,
        conflicts INTEGER NOT NULL,
        deferred INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        error TEXT
     );
     CREATE TABLE link_events (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL
     );
     CREATE TABLE sync_cache (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        fingerprint BLOB NOT NULL,
        synced_at INTEGER NOT NULL
     );",
    // 2: the need-driven sync: pins, direct-message partners, the favourites keysync made on
    // the radio, nodes someone removed from it, and the flash writes keysync caused.
    "ALTER TABLE nodes ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE nodes ADD COLUMN last_dm INTEGER;
     ALTER TABLE nodes ADD COLUMN our_favourite INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE nodes ADD COLUMN removed_at INTEGER;
     CREATE TABLE flash_writes (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        node_num INTEGER NOT NULL,
        kind TEXT NOT NULL
     );
     CREATE INDEX flash_writes_at ON flash_writes(at);",
    // 3: the user record's flags the firmware keeps (add_contact replaces the whole user: a
    // push from the store sends them back). NULL: the node never said.
    "ALTER TABLE nodes ADD COLUMN is_unmessagable INTEGER;
     ALTER TABLE nodes ADD COLUMN is_licensed INTEGER NOT NULL DEFAULT 0;",
    // 4: when the radio's NodeDB was last found reset (or new): on 2.8 every key pushed since
    // is in its warm tier, evicted or not.
    "CREATE TABLE radio_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        reset_at INTEGER NOT NULL
     );",
    // 5: who holds a key already (a key claimed by a second node number is held back): an
    // import of 10 000 nodes scanned the whole table once per new key.
    "CREATE INDEX keys_by_key ON keys(key);",
];

/// A flash write keysync causes on the radio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashWrite {
    /// add_contact; `favourite` when it makes the node a favourite that is keysync's (the
    /// firmware favourites it, and nobody protected it before).
    Push { favourite: bool },
    /// remove_favorite_node: a slot given back.
    Unfavourite,
}

impl FlashWrite {
    fn as_str(self) -> &'static str {
        match self {
            Self::Push { .. } => "add_contact",
            Self::Unfavourite => "unfavourite",
        }
    }
}

/// Why the store cannot be used. Each names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{path} is not a keysync database (not SQLite); keysync left it untouched")]
    NotADatabase { path: PathBuf },
    #[error(
        "{path} is corrupt ({detail}); keysync left it untouched — restore a backup or move it away"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "{path} was written by a newer keysync (schema {found}, this one knows {supported}); keysync left it untouched"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "{path} is another program's SQLite database ({why}); keysync left it untouched — give keysync its own file with --db"
    )]
    Foreign { path: PathBuf, why: String },
    #[error("no key store at {path}: {why}")]
    Missing { path: PathBuf, why: String },
    #[error(
        "{path} is read-only for keysync; check the permissions of the file and of its directory"
    )]
    ReadOnly { path: PathBuf },
    #[error("{path} is locked by another process{holders} and stayed locked for {}s", BUSY_TIMEOUT.as_secs())]
    Locked { path: PathBuf, holders: String },
    #[error(
        "the disk holding {path} is full; the change was rolled back and nothing stored was lost — free some space and retry"
    )]
    DiskFull { path: PathBuf },
    #[error("cannot open {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    /// `detail` is SQLite's message once: the error's source would repeat it.
    #[error("key store {path}: {detail}")]
    Sqlite { path: PathBuf, detail: String },
}

/// A key's standing with the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyState {
    Trusted,
    Pending,
    Rejected,
    /// A trusted key replaced by an accepted new one.
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trusted => "trusted",
            Self::Pending => "pending",
            Self::Rejected => "rejected",
            Self::Retired => "retired",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "trusted" => Self::Trusted,
            "pending" => Self::Pending,
            "rejected" => Self::Rejected,
            _ => Self::Retired,
        }
    }
}

/// What learning a sighting did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A new node or a node's first key: trusted on first use.
    FirstUse,
    /// The trusted key again.
    Same,
    /// A key different from the trusted one, now pending the operator's decision.
    Pending { old: PublicKey, new: PublicKey },
    /// A different key that is already pending or was rejected.
    KnownOther(KeyState),
    /// No valid key in the message: names and last-seen only.
    NamesOnly,
    /// Node 0 or the broadcast address: nothing stored.
    NotANode,
    /// A node new to the store that only the broker told of, while the store already holds
    /// the most such nodes it may ([`Store::learn_from_broker`]): nothing stored.
    NoRoom,
    /// A trusted key seen under a new number that is the key's CRC-32: the node upgraded to
    /// 2.8's numbering. Trust, pin, DM history and names carried over; `from` is retired.
    Renumbered { from: u32 },
    /// A key another node holds trusted, claimed by a node that is not its renumbering:
    /// pending the operator's decision.
    Claimed { owner: u32 },
}

/// The trusted key of a node, with what add_contact needs to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub num: u32,
    pub key: PublicKey,
    pub long_name: String,
    pub short_name: String,
    pub hw_model: i32,
    pub role: i32,
    /// When the node was last heard: recently heard nodes are pushed first.
    pub last_seen: SystemTime,
    /// The operator pinned it: it always has a slot on the radio.
    pub pinned: bool,
    /// When it last exchanged a direct message with the gateway.
    pub last_dm: Option<SystemTime>,
    /// When keysync last pushed its key: a slot is not given back within the hour after.
    pub last_pushed: Option<SystemTime>,
    /// The user record's other flags, as the node last said them.
    pub flags: crate::radio::UserFlags,
}

impl TrustedKey {
    pub fn contact(&self) -> Contact {
        Contact {
            num: self.num,
            long_name: self.long_name.clone(),
            short_name: self.short_name.clone(),
            hw_model: self.hw_model,
            role: self.role,
            key: self.key,
            is_unmessagable: self.flags.is_unmessagable,
            is_licensed: self.flags.is_licensed,
            macaddr: Vec::new(),
        }
    }
}

/// A node as the views show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub num: u32,
    pub long_name: String,
    pub short_name: String,
    pub hw_model: i32,
    pub role: i32,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    pub pushes: u32,
    pub last_pushed: Option<SystemTime>,
    pub trusted: Option<PublicKey>,
    pub pending: Option<PublicKey>,
    pub rejected: u32,
    pub pinned: bool,
    /// keysync made it a favourite on the radio (and may give the slot back).
    pub our_favourite: bool,
    /// Someone removed it from the radio; it is not pushed again until heard.
    pub removed: bool,
    /// Where the trusted key (else the pending one) came from.
    pub source: Option<Source>,
    /// When it last exchanged a direct message with the gateway.
    pub last_dm: Option<SystemTime>,
    /// The user record's other flags, as the node last said them.
    pub flags: crate::radio::UserFlags,
    /// When the pending key was first offered.
    pub pending_since: Option<SystemTime>,
}

impl NodeRecord {
    /// This node as the trusted keys list it, when it has a trusted key.
    pub fn trusted_node(&self) -> Option<crate::model::TrustedNode> {
        Some(crate::model::TrustedNode {
            key: self.trusted?,
            long_name: self.long_name.clone(),
            short_name: self.short_name.clone(),
            hw_model: self.hw_model,
            role: self.role,
            source: self.source,
            first_seen: self.first_seen,
        })
    }

    pub fn id(&self) -> String {
        node_id(self.num)
    }

    /// The state an operator cares about: pending first, then trusted, then rejected.
    pub fn state(&self) -> Option<KeyState> {
        if self.pending.is_some() {
            Some(KeyState::Pending)
        } else if self.trusted.is_some() {
            Some(KeyState::Trusted)
        } else if self.rejected > 0 {
            Some(KeyState::Rejected)
        } else {
            None
        }
    }
}

/// One entry of a node's key history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEvent {
    pub key: PublicKey,
    pub at: SystemTime,
    pub source: String,
    pub event: String,
}

/// The last full sync, for the skip rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncCache {
    pub fingerprint: [u8; 32],
    pub synced_at: SystemTime,
}

/// One sync run as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub started_at: SystemTime,
    pub outcome: String,
    pub reason: String,
    pub fingerprint: Option<[u8; 32]>,
    pub known: u32,
    pub in_radio: u32,
    pub pushed: u32,
    pub conflicts: u32,
    pub deferred: u32,
    pub duration: Duration,
    pub error: Option<String>,
}

/// An operator decision that did not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    #[error("no node {0} in the key store")]
    UnknownNode(String),
    #[error("node {0} has no pending key to accept or reject")]
    NothingPending(String),
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl Store {
    /// Opens (creating the file if needed, mode 0600, but not its directory) and migrates the
    /// store at `path`. A file that is
    /// not SQLite, is corrupt, is from a newer keysync or belongs to another program is refused
    /// before anything is written.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_as(path, true)
    }

    /// Opens the store at `path` only if it exists: for commands that look at what keysync
    /// learned, where a mistyped path must not leave directories and an empty store behind.
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        Self::open_as(path, false)
    }

    fn open_as(path: &Path, create: bool) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        if path.is_dir() {
            return Err(StoreError::Open {
                path,
                detail: "it is a directory".into(),
            });
        }
        // SQLite would open a FIFO and wait on it forever.
        if let Err(e) = super::files::regular_or_absent(&path) {
            return Err(StoreError::Open {
                path,
                detail: e.to_string(),
            });
        }
        if !path.exists() {
            let why = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(dir) if !dir.is_dir() => Some(format!("no such directory {}", dir.display())),
                _ if !create => Some("no such file (nothing learned yet?)".into()),
                _ => None,
            };
            if let Some(why) = why {
                return Err(StoreError::Missing { path, why });
            }
            create_private(&path).map_err(|e| StoreError::Open {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(|e| StoreError::Open {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let store = Self { conn, path };
        store.sql(|c| c.busy_timeout(BUSY_TIMEOUT))?;
        let (version, ownership) = store.ownership()?;
        if let Ownership::Foreign(why) = ownership {
            return Err(StoreError::Foreign {
                path: store.path.clone(),
                why,
            });
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: store.path.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        let check: String = store.sql(|c| c.query_row("PRAGMA quick_check", [], |r| r.get(0)))?;
        if check != "ok" {
            return Err(StoreError::Corrupt {
                path: store.path.clone(),
                detail: check,
            });
        }
        store.sql(|c| {
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.pragma_update(None, "synchronous", "NORMAL")?;
            c.pragma_update(None, "foreign_keys", true)?;
            // The whole store of 10 000 nodes is a few MB that the OS caches anyway; SQLite's
            // own page cache (2 MB per connection by default) only doubles it in our RSS.
            c.pragma_update(None, "cache_size", PAGE_CACHE_KIB)
        })?;
        store.migrate(version)?;
        if ownership == Ownership::Adopt {
            store.sql(|c| c.pragma_update(None, "application_id", APPLICATION_ID))?;
            log::info!(target: "keysync::store", "{}: marked as a keysync store (application_id)", store.path.display());
        }
        make_private(&store.path);
        Ok(store)
    }

    /// Reads, without writing, whose file this is: its schema version and what to do with it.
    fn ownership(&self) -> Result<(i64, Ownership), StoreError> {
        let (app_id, version, tables): (i32, i64, Vec<String>) = self.sql(|c| {
            let app_id = c.pragma_query_value(None, "application_id", |r| r.get(0))?;
            let version = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
            let mut stmt = c.prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
            )?;
            let tables = stmt
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok((app_id, version, tables))
        })?;
        Ok((version, ownership(app_id, version, &tables)))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&self, from: i64) -> Result<(), StoreError> {
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let version = i64::try_from(i).unwrap_or(i64::MAX) + 1;
            if version <= from {
                continue;
            }
            self.write(|tx| {
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", version)?;
                tx.pragma_update(None, "application_id", APPLICATION_ID)
            })?;
            log::info!(target: "keysync::store", "{}: schema migrated to version {version}", self.path.display());
        }
        Ok(())
    }

    /// Runs `f` on the connection: the one place where SQLite's error becomes the store's
    /// (see [`Store::error`]), so that a method says only what it asks of SQLite.
    fn sql<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        f(&self.conn).map_err(|e| self.error(e))
    }

    /// Runs `f` in a transaction and commits it; if `f` fails, nothing it did is kept.
    ///
    /// The transaction takes the write lock at `BEGIN`, waiting up to [`BUSY_TIMEOUT`] for it.
    /// A deferred one would read first and then, upgrading to write while another process
    /// writes, fail at once with SQLITE_BUSY: SQLite cannot wait there without breaking the
    /// snapshot it read.
    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.sql(|conn| {
            let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// Maps a SQLite error to one that names the file and, for locks, who holds it.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "it is `sql`'s map_err(|e| self.error(e))"
    )]
    fn error(&self, e: rusqlite::Error) -> StoreError {
        let path = self.path.clone();
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => StoreError::NotADatabase { path },
            Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
                path,
                detail: e.to_string(),
            },
            Some(ErrorCode::DiskFull) => StoreError::DiskFull { path },
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                let holders = lock_holders(&self.path);
                StoreError::Locked { path, holders }
            }
            Some(ErrorCode::ReadOnly) => StoreError::ReadOnly { path },
            _ => StoreError::Sqlite {
                path,
                detail: e.to_string(),
            },
        }
    }

    /// Records what a sighting says about a node and its key, under trust on first use.
    pub fn learn(&mut self, seen: &NodeSeen, now: SystemTime) -> Result<Learned, StoreError> {
        self.write(|tx| learn_in(tx, seen, now, None))
    }

    /// Learns many sightings in one transaction: all of them or, on failure (a full disk),
    /// none.
    pub fn learn_all(
        &mut self,
        seen: &[NodeSeen],
        now: SystemTime,
    ) -> Result<Vec<Learned>, StoreError> {
        self.learn_batch(seen, now, None)
    }

    /// Learns what the broker told of, as [`Store::learn_all`] does, except that a node new to
    /// the store is stored only while fewer than `max_unheard` nodes are known from the broker
    /// alone (never heard here): anyone who may publish can name any number of nodes.
    pub fn learn_from_broker(
        &mut self,
        seen: &[NodeSeen],
        now: SystemTime,
        max_unheard: usize,
    ) -> Result<Vec<Learned>, StoreError> {
        self.learn_batch(seen, now, Some(max_unheard))
    }

    fn learn_batch(
        &mut self,
        seen: &[NodeSeen],
        now: SystemTime,
        max_unheard: Option<usize>,
    ) -> Result<Vec<Learned>, StoreError> {
        self.write(|tx| {
            let mut room = match max_unheard {
                Some(max) => {
                    let unheard: i64 =
                        tx.query_row("SELECT count(*) FROM nodes WHERE last_seen = 0", [], |r| {
                            r.get(0)
                        })?;
                    Some(max.saturating_sub(usize::try_from(unheard).unwrap_or(usize::MAX)))
                }
                None => None,
            };
            seen.iter()
                .map(|s| learn_in(tx, s, now, room.as_mut()))
                .collect()
        })
    }

    /// Every trusted key, by node number.
    pub fn trusted(&self) -> Result<Vec<TrustedKey>, StoreError> {
        self.trusted_where("1")
    }

    /// The fingerprint of the trusted keys and their count, streamed from SQLite in node order:
    /// no list of 10 000 keys is built for a check that only compares fingerprints.
    pub fn trusted_fingerprint(&self) -> Result<(crate::model::Fingerprint, usize), StoreError> {
        self.sql(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT n.num, k.key FROM keys k JOIN nodes n ON n.num = k.node_num
                 WHERE k.state = 'trusted' AND n.num NOT IN (0, 4294967295) ORDER BY n.num",
            )?;
            let mut rows = stmt.query([])?;
            let mut count = 0;
            let mut failed = None;
            let fp = crate::model::fingerprint_sorted(std::iter::from_fn(|| match rows.next() {
                Ok(Some(row)) => match (row.get::<_, u32>(0), row.get::<_, PublicKey>(1)) {
                    (Ok(num), Ok(key)) => {
                        count += 1;
                        Some((num, key))
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        failed = Some(e);
                        None
                    }
                },
                Ok(None) => None,
                Err(e) => {
                    failed = Some(e);
                    None
                }
            }));
            failed.map_or(Ok((fp, count)), Err)
        })
    }

    /// The trusted keys of `nums` (those that have one).
    pub fn trusted_of(&self, nums: &[u32]) -> Result<Vec<TrustedKey>, StoreError> {
        let list: Vec<String> = nums.iter().map(u32::to_string).collect();
        self.trusted_where(&format!("n.num IN ({})", list.join(",")))
    }

    /// Trusted keys whose node matches `filter` (SQL over `n`, built from numbers only).
    fn trusted_where(&self, filter: &str) -> Result<Vec<TrustedKey>, StoreError> {
        let sql = format!(
            "SELECT n.num, k.key, n.long_name, n.short_name, n.hw_model, n.role, n.last_seen,
                    n.pinned, n.last_dm, n.last_pushed, n.is_unmessagable, n.is_licensed
             FROM keys k JOIN nodes n ON n.num = k.node_num
             WHERE k.state = 'trusted' AND n.num NOT IN (0, 4294967295) AND ({filter})
             ORDER BY n.num"
        );
        self.sql(|c| {
            c.prepare(&sql)?
                .query_map([], |r| {
                    Ok(TrustedKey {
                        num: r.get(0)?,
                        key: r.get(1)?,
                        long_name: r.get(2)?,
                        short_name: r.get(3)?,
                        hw_model: r.get(4)?,
                        role: r.get(5)?,
                        last_seen: from_millis(r.get(6)?),
                        pinned: r.get(7)?,
                        last_dm: r.get::<_, Option<i64>>(8)?.map(from_millis),
                        last_pushed: r.get::<_, Option<i64>>(9)?.map(from_millis),
                        flags: crate::radio::UserFlags {
                            is_unmessagable: r.get(10)?,
                            is_licensed: r.get(11)?,
                        },
                    })
                })?
                .collect()
        })
    }

    /// Nodes with a pending key (their keys wait for the operator and are not pushed).
    pub fn pending_nodes(&self) -> Result<Vec<u32>, StoreError> {
        self.rows(
            "SELECT DISTINCT node_num FROM keys WHERE state = 'pending' ORDER BY node_num",
            [],
            |r| r.get(0),
        )
    }

    /// Whether the store has heard of node `num`.
    pub fn knows(&self, num: u32) -> Result<bool, StoreError> {
        self.sql(|c| {
            c.query_row("SELECT 1 FROM nodes WHERE num = ?1", [num], |_| Ok(()))
                .optional()
                .map(|found| found.is_some())
        })
    }

    /// Every node with its keys, for listings and the monitor.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.nodes_as(|record| record)
    }

    /// Every node, each turned into what the caller keeps, in one vector of the exact size:
    /// with 10 000 nodes the monitor would otherwise hold the records, their views and the
    /// growth slack of both at once.
    pub fn nodes_as<T>(&self, mut view: impl FnMut(NodeRecord) -> T) -> Result<Vec<T>, StoreError> {
        let count: i64 =
            self.sql(|c| c.query_row("SELECT count(*) FROM nodes", [], |r| r.get(0)))?;
        let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        self.each_node(|record| {
            out.push(view(record));
            Ok::<_, StoreError>(())
        })?;
        Ok(out)
    }

    /// Hands every node to `each`, one row at a time in node order, and stops at its first
    /// error: an export of 10 000 nodes holds one record, not a list of them.
    pub fn each_node<E: From<StoreError>>(
        &self,
        mut each: impl FnMut(NodeRecord) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut failed = None;
        self.sql(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT n.num, n.long_name, n.short_name, n.hw_model, n.first_seen, n.last_seen,
                        n.pushes, n.last_pushed,
                        (SELECT key FROM keys WHERE node_num = n.num AND state = 'trusted'),
                        (SELECT key FROM keys WHERE node_num = n.num AND state = 'pending'
                         ORDER BY last_seen DESC LIMIT 1),
                        (SELECT count(*) FROM keys WHERE node_num = n.num AND state = 'rejected'),
                        n.pinned, n.our_favourite, n.removed_at IS NOT NULL,
                        n.role,
                        (SELECT source FROM keys WHERE node_num = n.num
                            AND state IN ('trusted', 'pending')
                         ORDER BY state = 'trusted' DESC, last_seen DESC LIMIT 1),
                        n.last_dm, n.is_unmessagable, n.is_licensed,
                        (SELECT first_seen FROM keys WHERE node_num = n.num AND state = 'pending'
                         ORDER BY last_seen DESC LIMIT 1)
                 FROM nodes n ORDER BY n.num",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                if let Err(e) = each(node_record(row)?) {
                    failed = Some(e);
                    break;
                }
            }
            Ok(())
        })?;
        failed.map_or(Ok(()), Err)
    }

    /// Every key event of a node, oldest first.
    pub fn history(&self, num: u32) -> Result<Vec<KeyEvent>, StoreError> {
        self.rows(
            "SELECT key, at, source, event FROM key_history WHERE node_num = ?1 ORDER BY at, id",
            [num],
            |r| {
                Ok(KeyEvent {
                    key: r.get(0)?,
                    at: from_millis(r.get(1)?),
                    source: r.get(2)?,
                    event: r.get(3)?,
                })
            },
        )
    }

    /// The operator trusts the pending key: it replaces the trusted one (which is retired).
    pub fn accept(
        &mut self,
        num: u32,
        now: SystemTime,
    ) -> Result<Result<PublicKey, DecisionError>, StoreError> {
        self.decide_pending(num, now, true)
    }

    /// The operator refuses the pending key: the trusted key stays (and is pushed back).
    pub fn reject(
        &mut self,
        num: u32,
        now: SystemTime,
    ) -> Result<Result<PublicKey, DecisionError>, StoreError> {
        self.decide_pending(num, now, false)
    }

    fn decide_pending(
        &mut self,
        num: u32,
        now: SystemTime,
        accept: bool,
    ) -> Result<Result<PublicKey, DecisionError>, StoreError> {
        let now_ms = millis(now);
        // A decision that does not apply commits an empty transaction: nothing was written.
        self.write(|tx| {
            let exists = tx
                .query_row("SELECT 1 FROM nodes WHERE num = ?1", [num], |_| Ok(()))
                .optional()?
                .is_some();
            if !exists {
                return Ok(Err(DecisionError::UnknownNode(node_id(num))));
            }
            let pending: Option<PublicKey> = tx
                .query_row(
                    "SELECT key FROM keys WHERE node_num = ?1 AND state = 'pending' ORDER BY last_seen DESC LIMIT 1",
                    [num],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(key) = pending else {
                return Ok(Err(DecisionError::NothingPending(node_id(num))));
            };
            if accept {
                tx.execute(
                    "UPDATE keys SET state = 'retired' WHERE node_num = ?1 AND state = 'trusted'",
                    [num],
                )?;
                tx.execute(
                    "UPDATE keys SET state = 'trusted' WHERE node_num = ?1 AND key = ?2",
                    params![num, key],
                )?;
                // Other keys that were pending too are not what the operator chose.
                tx.execute(
                    "UPDATE keys SET state = 'rejected' WHERE node_num = ?1 AND state = 'pending'",
                    [num],
                )?;
            } else {
                tx.execute(
                    "UPDATE keys SET state = 'rejected' WHERE node_num = ?1 AND key = ?2",
                    params![num, key],
                )?;
            }
            tx.execute(
                "INSERT INTO key_history (node_num, key, at, source, event) VALUES (?1, ?2, ?3, 'operator', ?4)",
                params![num, key, now_ms, if accept { "accepted" } else { "rejected" }],
            )?;
            Ok(Ok(key))
        })
    }

    /// Pins or unpins a node (it always gets a slot on the radio); false when unknown.
    pub fn set_pinned(&mut self, num: u32, pinned: bool) -> Result<bool, StoreError> {
        let changed = self.sql(|c| {
            c.execute(
                "UPDATE nodes SET pinned = ?2 WHERE num = ?1",
                params![num, pinned],
            )
        })?;
        Ok(changed > 0)
    }

    /// A direct message went between the gateway and `num`.
    pub fn note_dm(&mut self, num: u32, now: SystemTime) -> Result<(), StoreError> {
        self.sql(|c| {
            c.execute(
                "UPDATE nodes SET last_dm = ?2 WHERE num = ?1",
                params![num, millis(now)],
            )
        })?;
        Ok(())
    }

    /// `num` was heard (any packet): it is recent again, and no longer held back as removed.
    /// False when the store does not know the node.
    pub fn note_heard(&mut self, num: u32, now: SystemTime) -> Result<bool, StoreError> {
        let changed = self.sql(|c| {
            c.execute(
                "UPDATE nodes SET last_seen = max(last_seen, ?2), removed_at = NULL WHERE num = ?1",
                params![num, millis(now)],
            )
        })?;
        Ok(changed > 0)
    }

    /// The nodes keysync made favourite on the radio.
    pub fn our_favourites(&self) -> Result<BTreeSet<u32>, StoreError> {
        self.nums("SELECT num FROM nodes WHERE our_favourite = 1")
    }

    /// Nodes someone removed from the radio, not heard since.
    pub fn removed(&self) -> Result<BTreeSet<u32>, StoreError> {
        self.nums("SELECT num FROM nodes WHERE removed_at IS NOT NULL")
    }

    fn nums(&self, sql: &str) -> Result<BTreeSet<u32>, StoreError> {
        self.rows(sql, [], |r| r.get(0))
    }

    /// Every row `sql` selects with `params`, each made by `row`; a failure is the store's
    /// error, naming the file.
    fn rows<T, C: FromIterator<T>>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<C, StoreError> {
        self.sql(|c| c.prepare_cached(sql)?.query_map(params, row)?.collect())
    }

    /// Records that keysync's favourite `num` is no longer one: given back, unfavourited by
    /// someone, or (`removed`) gone from the radio.
    pub fn drop_favourite(
        &mut self,
        num: u32,
        removed: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        self.sql(|c| c.execute(
                "UPDATE nodes SET our_favourite = 0, removed_at = coalesce(?2, removed_at) WHERE num = ?1",
                params![num, removed.map(millis)],
            ))?;
        Ok(())
    }

    /// A flash write keysync caused on the radio (`kind`: add_contact, unfavourite); a push
    /// that made the node favourite marks it as keysync's.
    pub fn note_flash_write(
        &mut self,
        num: u32,
        kind: FlashWrite,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO flash_writes (at, node_num, kind) VALUES (?1, ?2, ?3)",
                params![millis(now), num, kind.as_str()],
            )?;
            match kind {
                FlashWrite::Push { favourite } => tx.execute(
                    "UPDATE nodes SET pushes = pushes + 1, last_pushed = ?2,
                        our_favourite = (our_favourite OR ?3) WHERE num = ?1",
                    params![num, millis(now), favourite],
                ),
                FlashWrite::Unfavourite => tx.execute(
                    "UPDATE nodes SET our_favourite = 0 WHERE num = ?1",
                    params![num],
                ),
            }?;
            // A day of history is plenty for an hourly budget.
            tx.execute(
                "DELETE FROM flash_writes WHERE at < ?1",
                params![millis(now) - 86_400_000],
            )?;
            Ok(())
        })
    }

    /// The radio's NodeDB was found reset (or new) at `at`.
    pub fn note_radio_reset(&mut self, at: SystemTime) -> Result<(), StoreError> {
        self.sql(|c| {
            c.execute(
                "INSERT INTO radio_state (id, reset_at) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET reset_at = ?1",
                [millis(at)],
            )
            .map(drop)
        })
    }

    /// When the radio's NodeDB was last found reset, if ever.
    pub fn radio_reset_at(&self) -> Result<Option<SystemTime>, StoreError> {
        self.sql(|c| {
            c.query_row("SELECT reset_at FROM radio_state WHERE id = 1", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|at| at.map(from_millis))
        })
    }

    /// Slots given back (remove_favorite_node) since `since`: below 2.8 each one restarted the
    /// radio's LoRa chip.
    pub fn releases_since(&self, since: SystemTime) -> Result<usize, StoreError> {
        self.writes_since(since, Some(FlashWrite::Unfavourite))
    }

    pub fn flash_writes_since(&self, since: SystemTime) -> Result<usize, StoreError> {
        self.writes_since(since, None)
    }

    /// Flash writes since `since`, of one kind or all.
    fn writes_since(
        &self,
        since: SystemTime,
        kind: Option<FlashWrite>,
    ) -> Result<usize, StoreError> {
        let n: i64 = self.sql(|c| {
            c.query_row(
                "SELECT count(*) FROM flash_writes WHERE at >= ?1 AND (?2 IS NULL OR kind = ?2)",
                params![millis(since), kind.map(FlashWrite::as_str)],
                |r| r.get(0),
            )
        })?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    pub fn cache(&self) -> Result<Option<SyncCache>, StoreError> {
        self.sql(|c| {
            c.query_row(
                "SELECT fingerprint, synced_at FROM sync_cache WHERE id = 1",
                [],
                |r| {
                    Ok(SyncCache {
                        fingerprint: r.get(0)?,
                        synced_at: from_millis(r.get(1)?),
                    })
                },
            )
            .optional()
        })
    }

    pub fn set_cache(&mut self, cache: SyncCache) -> Result<(), StoreError> {
        self.sql(|c| {
            c.execute(
                "INSERT INTO sync_cache (id, fingerprint, synced_at) VALUES (1, ?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET fingerprint = ?1, synced_at = ?2",
                params![cache.fingerprint, millis(cache.synced_at)],
            )
        })?;
        Ok(())
    }

    pub fn clear_cache(&mut self) -> Result<(), StoreError> {
        self.sql(|c| c.execute("DELETE FROM sync_cache", []))?;
        Ok(())
    }

    pub fn record_run(&mut self, run: &RunRecord) -> Result<(), StoreError> {
        self.sql(|c| {
            c.execute(
                "INSERT INTO sync_runs (started_at, outcome, reason, fingerprint, known, in_radio,
                    pushed, conflicts, deferred, duration_ms, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    millis(run.started_at),
                    run.outcome,
                    run.reason,
                    run.fingerprint,
                    run.known,
                    run.in_radio,
                    run.pushed,
                    run.conflicts,
                    run.deferred,
                    i64::try_from(run.duration.as_millis()).unwrap_or(i64::MAX),
                    run.error
                ],
            )
        })?;
        Ok(())
    }

    /// The latest `limit` runs, newest first.
    pub fn recent_runs(&self, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
        let sql = "SELECT started_at, outcome, reason, fingerprint, known, in_radio, pushed,
                          conflicts, deferred, duration_ms, error
                   FROM sync_runs ORDER BY id DESC LIMIT ?1";
        self.rows(sql, [limit], |r| {
            Ok(RunRecord {
                started_at: from_millis(r.get(0)?),
                outcome: r.get(1)?,
                reason: r.get(2)?,
                fingerprint: r.get(3)?,
                known: r.get(4)?,
                in_radio: r.get(5)?,
                pushed: r.get(6)?,
                conflicts: r.get(7)?,
                deferred: r.get(8)?,
                duration: Duration::from_millis(u64::try_from(r.get::<_, i64>(9)?).unwrap_or(0)),
                error: r.get(10)?,
            })
        })
    }

    pub fn record_link_event(
        &mut self,
        at: SystemTime,
        state: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.sql(|c| {
            c.execute(
                "INSERT INTO link_events (at, state, detail) VALUES (?1, ?2, ?3)",
                params![millis(at), state, detail],
            )
        })?;
        Ok(())
    }

    /// `PRAGMA integrity_check`: "ok" for a sound file.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        self.sql(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get(0)))
    }
}

/// Learns one sighting. `room`: how many more nodes known only from the broker may be
/// stored, when that is bounded.
fn learn_in(
    tx: &rusqlite::Transaction<'_>,
    seen: &NodeSeen,
    now: SystemTime,
    room: Option<&mut usize>,
) -> rusqlite::Result<Learned> {
    if !is_node_num(seen.num) {
        return Ok(Learned::NotANode);
    }
    let now_ms = millis(now);
    if !learn_node(tx, seen, now_ms, room)? {
        return Ok(Learned::NoRoom);
    }
    let Some(key) = seen.key() else {
        return Ok(Learned::NamesOnly);
    };
    learn_key(tx, seen.num, &key, now_ms, &seen.source.label())
}

/// Stores or updates the node of a sighting; false when it is new and there is no `room`.
///
/// The user record's flags are taken only from a record that says who the node is (names):
/// a bare update carries none and must not reset them.
fn learn_node(
    tx: &rusqlite::Transaction<'_>,
    seen: &NodeSeen,
    now_ms: i64,
    room: Option<&mut usize>,
) -> rusqlite::Result<bool> {
    // Cut to the firmware's field limits where they are learned: what keysync stores is
    // what a push can carry.
    let long_name = truncate_utf8(&seen.long_name, LONG_NAME_MAX);
    let short_name = truncate_utf8(&seen.short_name, SHORT_NAME_MAX);
    let exists: bool = tx
        .query_row("SELECT 1 FROM nodes WHERE num = ?1", [seen.num], |_| Ok(()))
        .optional()?
        .is_some();
    if exists {
        note_flags(tx, seen)?;
        // Names only from messages that carry them: a bare update must not blank them.
        tx.execute(
            "UPDATE nodes SET
                long_name = CASE WHEN ?2 <> '' THEN ?2 ELSE long_name END,
                short_name = CASE WHEN ?3 <> '' THEN ?3 ELSE short_name END,
                hw_model = CASE WHEN ?4 <> 0 THEN ?4 ELSE hw_model END,
                role = ?5,
                last_seen = CASE WHEN ?7 THEN max(last_seen, ?6) ELSE last_seen END
             WHERE num = ?1",
            params![
                seen.num,
                long_name,
                short_name,
                seen.hw_model,
                seen.role,
                now_ms,
                seen.source.heard_here()
            ],
        )?;
    } else {
        if let Some(room) = room.filter(|_| !seen.source.heard_here()) {
            if *room == 0 {
                return Ok(false);
            }
            *room -= 1;
        }
        tx.execute(
            "INSERT INTO nodes (num, id, long_name, short_name, hw_model, role, first_seen, last_seen,
                                is_unmessagable, is_licensed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![seen.num, node_id(seen.num), long_name, short_name, seen.hw_model, seen.role, now_ms,
                // A node only the broker told of was never heard here.
                if seen.source.heard_here() { now_ms } else { 0 },
                seen.flags.is_unmessagable, seen.flags.is_licensed],
        )?;
    }
    Ok(true)
}

/// Learns node `num`'s `key` under trust on first use.
fn learn_key(
    tx: &rusqlite::Transaction<'_>,
    num: u32,
    key: &PublicKey,
    now_ms: i64,
    source: &str,
) -> rusqlite::Result<Learned> {
    let known: Option<String> = tx
        .query_row(
            "SELECT state FROM keys WHERE node_num = ?1 AND key = ?2",
            params![num, key],
            |r| r.get(0),
        )
        .optional()?;
    let trusted: Option<PublicKey> = tx
        .query_row(
            "SELECT key FROM keys WHERE node_num = ?1 AND state = 'trusted'",
            [num],
            |r| r.get(0),
        )
        .optional()?;
    let learned = match (known.as_deref().map(KeyState::parse), trusted) {
        (Some(state), _) => {
            tx.execute(
                "UPDATE keys SET last_seen = max(last_seen, ?3) WHERE node_num = ?1 AND key = ?2",
                params![num, key, now_ms],
            )?;
            if state == KeyState::Trusted {
                Learned::Same
            } else {
                Learned::KnownOther(state)
            }
        }
        (None, None) => {
            if let Some(owner) = owner_of(tx, num, key)? {
                claimed(tx, num, key, owner, now_ms, source)?
            } else {
                insert_key(tx, num, key, "trusted", now_ms, source, "first-use")?;
                Learned::FirstUse
            }
        }
        (None, Some(old)) => {
            insert_key(tx, num, key, "pending", now_ms, source, "changed")?;
            Learned::Pending { old, new: *key }
        }
    };
    Ok(learned)
}

/// Another node that holds `key` trusted.
fn owner_of(
    tx: &rusqlite::Transaction<'_>,
    num: u32,
    key: &PublicKey,
) -> rusqlite::Result<Option<u32>> {
    tx.query_row(
        "SELECT node_num FROM keys WHERE key = ?1 AND state = 'trusted' AND node_num <> ?2
         LIMIT 1",
        params![key, num],
        |r| r.get(0),
    )
    .optional()
}

/// Node `num` presents the key `owner` holds trusted. Under the number 2.8 derives from
/// that key it is the same node, upgraded: it takes over the trust, pin, DM history and
/// first sighting, and the old number is retired (kept in the history, never pushed
/// again). Any other number is a different node claiming the key: pending, for the
/// operator.
fn claimed(
    tx: &rusqlite::Transaction<'_>,
    num: u32,
    key: &PublicKey,
    owner: u32,
    now_ms: i64,
    source: &str,
) -> rusqlite::Result<Learned> {
    if num != crate::radio::num_of_key(key) {
        let event = format!("claims the trusted key of {}", node_id(owner));
        insert_key(tx, num, key, "pending", now_ms, source, &event)?;
        return Ok(Learned::Claimed { owner });
    }
    tx.execute(
        "UPDATE keys SET state = 'retired' WHERE node_num = ?1 AND key = ?2",
        params![owner, key],
    )?;
    tx.execute(
        "INSERT INTO key_history (node_num, key, at, source, event) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            owner,
            key,
            now_ms,
            source,
            format!("renumbered to {}", node_id(num))
        ],
    )?;
    insert_key(
        tx,
        num,
        key,
        "trusted",
        now_ms,
        source,
        &format!("renumbered from {}", node_id(owner)),
    )?;
    tx.execute(
        "UPDATE nodes SET
            pinned = (SELECT pinned FROM nodes WHERE num = ?2),
            last_dm = coalesce(last_dm, (SELECT last_dm FROM nodes WHERE num = ?2)),
            first_seen = min(first_seen, (SELECT first_seen FROM nodes WHERE num = ?2)),
            long_name = CASE WHEN long_name = '' THEN (SELECT long_name FROM nodes WHERE num = ?2) ELSE long_name END,
            short_name = CASE WHEN short_name = '' THEN (SELECT short_name FROM nodes WHERE num = ?2) ELSE short_name END
         WHERE num = ?1",
        params![num, owner],
    )?;
    tx.execute("UPDATE nodes SET pinned = 0 WHERE num = ?1", [owner])?;
    Ok(Learned::Renumbered { from: owner })
}

/// Stores the flags of a known node's user record, when `seen` is a whole record.
fn note_flags(tx: &rusqlite::Transaction<'_>, seen: &NodeSeen) -> rusqlite::Result<()> {
    if seen.long_name.is_empty() {
        return Ok(());
    }
    tx.execute(
        "UPDATE nodes SET is_unmessagable = ?2, is_licensed = ?3 WHERE num = ?1",
        params![seen.num, seen.flags.is_unmessagable, seen.flags.is_licensed],
    )
    .map(drop)
}

fn insert_key(
    tx: &rusqlite::Transaction<'_>,
    num: u32,
    key: &PublicKey,
    state: &str,
    now_ms: i64,
    source: &str,
    event: &str,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO keys (node_num, key, state, first_seen, last_seen, source) VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
        params![num, key, state, now_ms, source],
    )?;
    tx.execute(
        "INSERT INTO key_history (node_num, key, at, source, event) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![num, key, now_ms, source, event],
    )?;
    Ok(())
}

/// Whose SQLite file a store path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ownership {
    /// Marked with keysync's application_id.
    Ours,
    /// Empty: keysync creates its schema and marks it.
    New,
    /// keysync's tables and schema version without the mark (written before the mark existed).
    Adopt,
    /// Another program's, with why keysync thinks so.
    Foreign(String),
}

/// Decides from the header and the table names alone, so that a file keysync does not own is
/// refused before anything is written to it.
fn ownership(app_id: i32, version: i64, tables: &[String]) -> Ownership {
    if app_id == APPLICATION_ID {
        return Ownership::Ours;
    }
    if app_id != 0 {
        return Ownership::Foreign(format!("application_id {app_id:#010x}"));
    }
    if tables.is_empty() && version == 0 {
        return Ownership::New;
    }
    let ours = OWN_TABLES
        .iter()
        .all(|t| tables.iter().any(|have| have == t));
    if ours && version > 0 {
        return Ownership::Adopt;
    }
    let mut names = tables.join(", ");
    if names.len() > 80 {
        names = format!("{}…", names.chars().take(80).collect::<String>());
    }
    Ownership::Foreign(format!("tables {names}"))
}

/// Restricts the store and its WAL files to their owner, saying so when they were wider: a file
/// copied in, restored from a backup or created by an older keysync.
fn make_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut files = vec![path.to_path_buf()];
        for suffix in ["-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            files.push(PathBuf::from(name));
        }
        for file in files {
            let Ok(meta) = std::fs::metadata(&file) else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o777;
            let group_and_others = mode & 0o077;
            if group_and_others == 0 {
                continue;
            }
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                Ok(()) => log::info!(target: "keysync::store",
                    "{}: mode {mode:04o} changed to 0600 (the store says who talks to whom)", file.display()),
                Err(e) => log::warn!(target: "keysync::store",
                    "{}: mode {mode:04o} is readable by others and could not be changed to 0600: {e}", file.display()),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Creates an empty file readable by its owner only (keys are not secret, but the store says
/// who talks to whom).
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map(drop)
}

/// Processes that have `path` open, as " (held by pid 123 keysync, ...)", from /proc.
fn lock_holders(path: &Path) -> String {
    let Ok(target) = std::fs::canonicalize(path) else {
        return String::new();
    };
    let me = std::process::id();
    let mut holders = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return String::new();
    };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == target));
        if holds {
            let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            holders.push(format!("pid {pid} {}", name.trim()));
        }
    }
    if holders.is_empty() {
        String::new()
    } else {
        format!(" (held by {})", holders.join(", "))
    }
}

/// A node as an operator wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeArg {
    One(u32),
    /// Eight decimal digits are also eight hex digits: `12345678` is `!12345678` or
    /// `!00bc614e`.
    Either {
        hex: u32,
        decimal: u32,
    },
}

impl NodeArg {
    /// The node meant: the only candidate, or of two the only one `known`; both or neither
    /// known is ambiguous, and the message names both.
    pub fn resolve(self, known: impl Fn(u32) -> bool) -> Result<u32, AmbiguousNode> {
        match self {
            Self::One(num) => Ok(num),
            Self::Either { hex, decimal } => match (known(hex), known(decimal)) {
                (true, false) => Ok(hex),
                (false, true) => Ok(decimal),
                _ => Err(AmbiguousNode { hex, decimal }),
            },
        }
    }
}

/// Eight digits that name a node read as hex and as decimal, and the store cannot tell which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{decimal} is ambiguous: {} (hex) or {} (decimal); write it as {} or {}",
    node_id(*hex),
    node_id(*decimal),
    node_id(*hex),
    node_id(*decimal)
)]
pub struct AmbiguousNode {
    pub hex: u32,
    pub decimal: u32,
}

/// Why a text an operator wrote is not a node. Each quotes the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeArgError {
    #[error("{text:?} is not a node (use !1a2b3c4d, 0x1a2b3c4d or a decimal number)")]
    NotANode { text: String },
    #[error(
        "{text:?} is {}, which is no node (0 is nobody, !ffffffff is broadcast)",
        node_id(*num)
    )]
    Nobody { text: String, num: u32 },
}

/// Parses a node given by an operator: `!1a2b3c4d` and `0x1a2b3c4d` (always hex), eight hex
/// digits, or a decimal number. Node 0 and the broadcast address are nobody's.
pub fn parse_node(s: &str) -> Result<NodeArg, NodeArgError> {
    let t = s.trim();
    let hex = t
        .strip_prefix('!')
        .or_else(|| t.strip_prefix("0x"))
        .or_else(|| t.strip_prefix("0X"));
    let all_digits = !t.is_empty() && t.chars().all(|c| c.is_ascii_digit());
    let parsed = match hex {
        Some(h) => u32::from_str_radix(h, 16).ok().map(NodeArg::One),
        None if all_digits && t.len() == 8 => {
            match (u32::from_str_radix(t, 16).ok(), t.parse().ok()) {
                (Some(hex), Some(decimal)) if hex != decimal && is_node_num(decimal) => {
                    Some(NodeArg::Either { hex, decimal })
                }
                (Some(hex), _) => Some(NodeArg::One(hex)),
                _ => None,
            }
        }
        None if all_digits => t.parse().ok().map(NodeArg::One),
        None if t.len() == 8 => u32::from_str_radix(t, 16).ok().map(NodeArg::One),
        None => None,
    };
    match parsed {
        Some(NodeArg::One(num)) if !is_node_num(num) => Err(NodeArgError::Nobody {
            text: s.to_owned(),
            num,
        }),
        Some(arg) => Ok(arg),
        None => Err(NodeArgError::NotANode { text: s.to_owned() }),
    }
}

/// Parses a key given as base64 (44 characters) or hex (64 digits).
pub fn parse_key(s: &str) -> Option<PublicKey> {
    use base64::Engine as _;
    let t = s.trim();
    let bytes = if t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&t[i * 2..i * 2 + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?
    } else {
        base64::engine::general_purpose::STANDARD.decode(t).ok()?
    };
    valid_key(&bytes)
}

/// One row of [`Store::each_node`]'s query.
fn node_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<NodeRecord> {
    Ok(NodeRecord {
        num: r.get(0)?,
        long_name: r.get(1)?,
        short_name: r.get(2)?,
        hw_model: r.get(3)?,
        first_seen: from_millis(r.get(4)?),
        last_seen: from_millis(r.get(5)?),
        pushes: r.get(6)?,
        last_pushed: r.get::<_, Option<i64>>(7)?.map(from_millis),
        trusted: r.get(8)?,
        pending: r.get(9)?,
        rejected: r.get(10)?,
        pinned: r.get(11)?,
        our_favourite: r.get(12)?,
        removed: r.get(13)?,
        role: r.get(14)?,
        source: r
            .get::<_, Option<String>>(15)?
            .as_deref()
            .and_then(Source::parse),
        last_dm: r.get::<_, Option<i64>>(16)?.map(from_millis),
        flags: crate::radio::UserFlags {
            is_unmessagable: r.get(17)?,
            is_licensed: r.get(18)?,
        },
        pending_since: r.get::<_, Option<i64>>(19)?.map(from_millis),
    })
}

/// A key as people see it: base64.
pub fn key_base64(key: &PublicKey) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(num: u32, key: Option<u8>, name: &str) -> NodeSeen {
        NodeSeen {
            num,
            long_name: name.into(),
            short_name: String::new(),
            hw_model: 0,
            role: 0,
            public_key: key.map(|k| vec![k; 32]).unwrap_or_default(),
            source: Source::Mesh,
            is_favorite: false,
            flags: crate::radio::UserFlags::default(),
        }
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("k.db")).expect("opens");
        (dir, store)
    }

    #[test]
    fn a_pending_key_waits_since_it_was_first_offered_and_each_node_streams_in_order() {
        let (_dir, mut s) = open();
        let t = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        s.learn(&seen(9, Some(1), "a"), t(1_000)).expect("learns");
        s.learn(&seen(3, Some(5), "b"), t(1_000)).expect("learns");
        s.learn(&seen(9, Some(2), "a"), t(2_000)).expect("learns");
        s.learn(&seen(9, Some(2), "a"), t(3_000)).expect("learns");
        let mut streamed = Vec::new();
        s.each_node(|n| {
            streamed.push((n.num, n.pending_since));
            Ok::<_, StoreError>(())
        })
        .expect("streams");
        assert_eq!(streamed, [(3, None), (9, Some(t(2_000)))]);
    }

    #[test]
    fn a_node_renumbered_by_its_key_is_the_same_node_and_another_claiming_the_key_is_a_conflict() {
        // 2.8: my_node_num = crc32(public key) (NodeDB.cpp; checked on meshtasticd 2.8), so a
        // node that upgrades comes back under a new number with the same key.
        let (_d, mut s) = open();
        let t = SystemTime::now();
        let key = [7u8; 32];
        s.learn(&seen(5, Some(7), "Hilltop"), t).unwrap();
        s.set_pinned(5, true).unwrap();
        s.note_dm(5, t).unwrap();
        let upgraded = crate::radio::num_of_key(&key);
        assert_eq!(
            s.learn(&seen(upgraded, Some(7), ""), t).unwrap(),
            Learned::Renumbered { from: 5 }
        );
        let trusted = s.trusted().unwrap();
        assert_eq!(
            trusted.len(),
            1,
            "the old number is retired, never pushed again"
        );
        let node = &trusted[0];
        assert_eq!((node.num, node.key), (upgraded, key));
        assert!(
            node.pinned && node.last_dm.is_some(),
            "pin and DM history carried over"
        );
        assert_eq!(node.long_name, "Hilltop", "names carried over");
        assert!(s.pending_nodes().unwrap().is_empty(), "never pending");
        // A different node claiming the trusted key is the operator's to decide.
        assert_eq!(
            s.learn(&seen(6, Some(7), "Impostor"), t).unwrap(),
            Learned::Claimed { owner: upgraded }
        );
        assert_eq!(s.pending_nodes().unwrap(), [6]);
        assert_eq!(s.trusted().unwrap().len(), 1);
    }

    #[test]
    fn the_2_8_node_number_is_the_crc32_of_the_key() {
        // meshtasticd 2.8.0.7754068 in the firmware suite gave itself 0x60e2e74b for this key.
        let key: PublicKey = [
            0x49, 0x66, 0x79, 0x82, 0x89, 0x25, 0xdc, 0x6d, 0x8a, 0x6d, 0x6a, 0x75, 0xe3, 0x13,
            0x56, 0x2d, 0x9f, 0xc1, 0xb6, 0x86, 0x83, 0x32, 0xe5, 0xca, 0xc4, 0x8a, 0x88, 0xc6,
            0xe5, 0xd2, 0xe4, 0x36,
        ];
        assert_eq!(crate::radio::num_of_key(&key), 0x60e2_e74b);
    }

    #[test]
    fn the_user_record_s_flags_are_kept_and_a_push_from_the_store_sends_them() {
        // add_contact replaces the whole user: a node that set is_unmessagable must not be
        // reset by a push made from the store.
        let (_d, mut s) = open();
        let t = SystemTime::now();
        let flagged = NodeSeen {
            flags: crate::radio::UserFlags {
                is_unmessagable: Some(true),
                is_licensed: true,
            },
            ..seen(7, Some(7), "Ham")
        };
        s.learn(&flagged, t).unwrap();
        // A bare update (no names: a keyless NodeInfo, a radio's node list entry) says nothing
        // of the flags and changes none.
        s.learn(&seen(7, Some(7), ""), t).unwrap();
        let contact = s.trusted().unwrap()[0].contact();
        assert_eq!(
            (contact.is_unmessagable, contact.is_licensed),
            (Some(true), true)
        );
        // The node says otherwise later: that is kept.
        s.learn(&seen(7, Some(7), "Ham"), t).unwrap();
        let contact = s.trusted().unwrap()[0].contact();
        assert_eq!(
            (contact.is_unmessagable, contact.is_licensed),
            (None, false)
        );
    }

    #[test]
    fn the_broker_fills_the_store_only_up_to_its_bound_and_a_node_heard_here_frees_room() {
        let (_d, mut s) = open();
        let t = SystemTime::now();
        let broker = |num: u32, key: u8| NodeSeen {
            source: Source::Mqtt { gateway: 0xbeef },
            ..seen(num, Some(key), "far")
        };
        let learned = s
            .learn_from_broker(&[broker(1, 1), broker(2, 2), broker(3, 3)], t, 2)
            .unwrap();
        assert_eq!(
            learned,
            [Learned::FirstUse, Learned::FirstUse, Learned::NoRoom]
        );
        assert!(
            !s.knows(3).unwrap(),
            "nothing of a node without room is stored"
        );
        // Known nodes still learn at the bound: a changed key waits for the operator.
        let changed = s.learn_from_broker(&[broker(2, 9)], t, 2).unwrap();
        assert!(matches!(changed[0], Learned::Pending { .. }), "{changed:?}");
        // Heard by the radio, node 1 is no longer known from the broker alone: room for one.
        s.learn(&seen(1, Some(1), "near"), t).unwrap();
        let learned = s
            .learn_from_broker(&[broker(3, 3), broker(4, 4)], t, 2)
            .unwrap();
        assert_eq!(learned, [Learned::FirstUse, Learned::NoRoom]);
        // A bound below what is stored takes nothing new and removes nothing.
        assert_eq!(
            s.learn_from_broker(&[broker(5, 5)], t, 0).unwrap(),
            [Learned::NoRoom]
        );
        assert_eq!(s.nodes().unwrap().len(), 3);
    }

    #[test]
    fn a_key_from_the_broker_is_recorded_with_its_gateway_and_does_not_make_the_node_heard() {
        let (_d, mut s) = open();
        let t = SystemTime::now();
        let mut far = seen(7, Some(3), "far");
        far.source = Source::Mqtt { gateway: 0xbeef };
        assert_eq!(s.learn(&far, t).unwrap(), Learned::FirstUse);
        let node = &s.nodes().unwrap()[0];
        assert_eq!(node.source, Some(Source::Mqtt { gateway: 0xbeef }));
        assert_eq!(node.last_seen, UNIX_EPOCH, "never heard by this radio");
        assert_eq!(s.history(7).unwrap()[0].source, "MQTT via !0000beef");
        // Heard on the mesh later: now it is recent; the broker again does not change that.
        let heard = t + Duration::from_secs(5);
        s.learn(&seen(7, Some(3), ""), heard).unwrap();
        far.source = Source::Fleet { gateway: 0xa };
        s.learn(&far, heard + Duration::from_secs(60)).unwrap();
        let node = &s.nodes().unwrap()[0];
        assert_eq!(node.last_seen, from_millis(millis(heard)));
        assert_eq!(
            node.source,
            Some(Source::Mqtt { gateway: 0xbeef }),
            "the trusted key's source"
        );
    }

    #[test]
    fn every_source_reads_back_as_written() {
        for source in [
            Source::NodeDb,
            Source::Mesh,
            Source::Import,
            Source::Downstream,
            Source::Mqtt {
                gateway: 0x1234_abcd,
            },
            Source::Fleet { gateway: 1 },
        ] {
            assert_eq!(Source::parse(&source.label()), Some(source));
        }
        assert_eq!(Source::parse("MQTT via nobody"), None);
        assert_eq!(Source::parse("fleet !zz"), None);
    }

    #[test]
    fn first_key_is_trusted_a_different_one_waits_and_a_missing_one_changes_nothing() {
        let (_d, mut s) = open();
        let t = SystemTime::now();
        assert_eq!(
            s.learn(&seen(5, Some(1), "a"), t).unwrap(),
            Learned::FirstUse
        );
        assert_eq!(s.learn(&seen(5, Some(1), ""), t).unwrap(), Learned::Same);
        assert_eq!(
            s.learn(&seen(5, Some(2), "a"), t).unwrap(),
            Learned::Pending {
                old: [1; 32],
                new: [2; 32]
            }
        );
        assert_eq!(
            s.learn(&seen(5, Some(2), "a"), t).unwrap(),
            Learned::KnownOther(KeyState::Pending)
        );
        assert_eq!(
            s.learn(&seen(5, None, "renamed"), t).unwrap(),
            Learned::NamesOnly
        );
        let mut zeros = seen(5, None, "");
        zeros.public_key = vec![0; 32];
        assert_eq!(s.learn(&zeros, t).unwrap(), Learned::NamesOnly);
        let nodes = s.nodes().unwrap();
        assert_eq!(nodes[0].trusted, Some([1; 32]));
        assert_eq!(nodes[0].pending, Some([2; 32]));
        assert_eq!(nodes[0].long_name, "renamed");
        assert_eq!(s.trusted().unwrap().len(), 1);
        assert_eq!(s.pending_nodes().unwrap(), vec![5]);
    }

    #[test]
    fn accept_swaps_the_trusted_key_and_reject_keeps_it() {
        let (_d, mut s) = open();
        let t = SystemTime::now();
        s.learn(&seen(5, Some(1), "a"), t).unwrap();
        s.learn(&seen(5, Some(2), "a"), t).unwrap();
        s.learn(&seen(6, Some(3), "b"), t).unwrap();
        s.learn(&seen(6, Some(4), "b"), t).unwrap();
        assert_eq!(s.accept(5, t).unwrap(), Ok([2; 32]));
        assert_eq!(s.reject(6, t).unwrap(), Ok([4; 32]));
        let keys: Vec<_> = s
            .trusted()
            .unwrap()
            .iter()
            .map(|k| (k.num, k.key))
            .collect();
        assert_eq!(keys, vec![(5, [2; 32]), (6, [3; 32])]);
        assert!(s.pending_nodes().unwrap().is_empty());
        // A rejected key seen again stays rejected; it does not come back as pending.
        assert_eq!(
            s.learn(&seen(6, Some(4), "b"), t).unwrap(),
            Learned::KnownOther(KeyState::Rejected)
        );
        assert_eq!(
            s.accept(6, t).unwrap(),
            Err(DecisionError::NothingPending("!00000006".into()))
        );
        assert_eq!(
            s.accept(7, t).unwrap(),
            Err(DecisionError::UnknownNode("!00000007".into()))
        );
        let events: Vec<_> = s.history(5).unwrap().into_iter().map(|e| e.event).collect();
        assert_eq!(events, ["first-use", "changed", "accepted"]);
    }

    #[test]
    fn cache_and_runs_round_trip() {
        let (_d, mut s) = open();
        assert_eq!(s.cache().unwrap(), None);
        let cache = SyncCache {
            fingerprint: [9; 32],
            synced_at: UNIX_EPOCH + Duration::from_secs(1000),
        };
        s.set_cache(cache).unwrap();
        assert_eq!(s.cache().unwrap(), Some(cache));
        s.clear_cache().unwrap();
        assert_eq!(s.cache().unwrap(), None);
        let run = RunRecord {
            started_at: UNIX_EPOCH + Duration::from_secs(5),
            outcome: "synced".into(),
            reason: "r".into(),
            fingerprint: Some([1; 32]),
            known: 3,
            in_radio: 2,
            pushed: 1,
            conflicts: 0,
            deferred: 0,
            duration: Duration::from_millis(40),
            error: None,
        };
        s.record_run(&run).unwrap();
        assert_eq!(s.recent_runs(5).unwrap(), vec![run]);
    }

    #[test]
    fn only_empty_marked_or_unmarked_keysync_files_are_keysync_s() {
        let ours: Vec<String> = OWN_TABLES.iter().map(ToString::to_string).collect();
        assert_eq!(ownership(APPLICATION_ID, 1, &ours), Ownership::Ours);
        assert_eq!(ownership(0, 0, &[]), Ownership::New);
        assert_eq!(ownership(0, 1, &ours), Ownership::Adopt);
        let meshbot = vec!["meshtastic_nodes".to_string()];
        assert_eq!(
            ownership(0, 0, &meshbot),
            Ownership::Foreign("tables meshtastic_nodes".into())
        );
        assert!(matches!(ownership(0, 3, &ours[..2]), Ownership::Foreign(_)));
        assert!(matches!(
            ownership(0x0f00_ba11, 0, &[]),
            Ownership::Foreign(_)
        ));
    }

    #[test]
    fn a_read_only_store_says_so_once() {
        let (dir, _) = open();
        let path = dir.path().join("k.db");
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("opens read-only");
        let mut store = Store { conn, path };
        let err = store.clear_cache().expect_err("read-only");
        // The whole chain, as the binary prints it (anyhow's `{:#}`).
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            text = format!("{text}: {cause}");
            source = cause.source();
        }
        assert!(text.contains("is read-only"), "{text}");
        assert_eq!(text.matches("read-only").count(), 1, "{text}");
        assert!(!text.contains("readonly database"), "{text}");
    }

    #[test]
    fn node_ids_and_keys_parse_in_every_operator_form() {
        let one = |n| Ok(NodeArg::One(n));
        assert_eq!(parse_node("!1a2b3c4d"), one(0x1a2b_3c4d));
        assert_eq!(parse_node("0x1A2B3C4D"), one(0x1a2b_3c4d));
        assert_eq!(parse_node("1a2b3c4d"), one(0x1a2b_3c4d));
        assert_eq!(parse_node("439041101"), one(439_041_101));
        assert_eq!(parse_node("!12345678"), one(0x1234_5678));
        assert!(parse_node("!zz").is_err());
        assert!(parse_node("").is_err());
        for nobody in [
            "0",
            "!0",
            "00000000",
            "!ffffffff",
            "4294967295",
            "0xFFFFFFFF",
        ] {
            assert!(parse_node(nobody).is_err(), "{nobody}");
        }
    }

    #[test]
    fn eight_digits_name_two_nodes_and_resolve_only_when_one_is_known() {
        let arg = parse_node("12345678").expect("parses");
        assert_eq!(
            arg,
            NodeArg::Either {
                hex: 0x1234_5678,
                decimal: 0x00bc_614e
            }
        );
        assert_eq!(arg.resolve(|n| n == 0x00bc_614e), Ok(0x00bc_614e));
        assert_eq!(arg.resolve(|n| n == 0x1234_5678), Ok(0x1234_5678));
        for known in [|_| true, |_| false] as [fn(u32) -> bool; 2] {
            let err = arg.resolve(known).unwrap_err().to_string();
            assert!(
                err.contains("!12345678") && err.contains("!00bc614e"),
                "{err}"
            );
        }
        let key = [0xAB; 32];
        assert_eq!(parse_key(&key_base64(&key)), Some(key));
        assert_eq!(parse_key(&"ab".repeat(32)), Some(key));
        assert_eq!(parse_key("AAAA"), None);
    }
}
