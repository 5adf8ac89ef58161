//! Keys that travel: keysync's JSON export and Meshtastic contact URLs, written from the store
//! row by row and read back through the same trust rules as every other source. Nothing
//! private leaves: a node's public key, names, role, trust state, source and dates.

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use base64::Engine as _;
use meshtastic::Message as _;
use meshtastic::protobufs::SharedContact;
use serde::{Deserialize, Serialize};

use super::import::{ImportError, ImportReport, tally};
use super::radio::{Contact, NodeSeen, PublicKey, Source, UserFlags, is_node_num, node_id};
use super::store::{KeyState, NodeRecord, Store, StoreError, key_base64, parse_key};

/// What the export's `format` field says: a JSON file without it is not ours.
pub const EXPORT_FORMAT: &str = "keysync-keys";
/// The export's layout; a file of a later version is refused rather than half read.
pub const EXPORT_VERSION: u32 = 1;
/// The largest file an import reads: 10 000 nodes export to about 4 MiB.
pub const MAX_IMPORT_BYTES: u64 = 16 * 1024 * 1024;
/// The longest contact URL read: a SharedContact is well under 200 bytes.
pub const MAX_URL_LEN: usize = 1024;
/// How many invalid entries an import names; the rest are only counted.
pub const NAMED_INVALID: usize = 20;
/// What every contact URL begins with, as the apps and `meshtastic --contact-qr` write it.
pub const CONTACT_URL_PREFIX: &str = "https://meshtastic.org/v/#";

/// One node of the JSON export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedNode {
    pub num: u32,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub long_name: String,
    #[serde(default)]
    pub short_name: String,
    #[serde(default)]
    pub hw_model: i32,
    #[serde(default)]
    pub role: i32,
    /// `trusted` or `pending`: the node's state as `keysync keys` shows it.
    #[serde(default)]
    pub state: String,
    /// The trusted key, base64.
    #[serde(default)]
    pub key: Option<String>,
    /// A key offered in its place, waiting for the operator, base64.
    #[serde(default)]
    pub pending_key: Option<String>,
    /// Where the key came from here (mesh, radio, import, client, MQTT via !gw, fleet !gw).
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub first_seen: String,
    #[serde(default)]
    pub last_seen: String,
    #[serde(default)]
    pub is_unmessagable: Option<bool>,
    #[serde(default)]
    pub is_licensed: bool,
}

impl ExportedNode {
    /// The node as exported, or `None` for a node with no key worth carrying.
    pub fn of(record: &NodeRecord, trusted_only: bool) -> Option<Self> {
        let pending = record.pending.filter(|_| !trusted_only);
        if record.trusted.is_none() && pending.is_none() {
            return None;
        }
        let state = if pending.is_some() {
            KeyState::Pending
        } else {
            KeyState::Trusted
        };
        Some(Self {
            num: record.num,
            id: record.id(),
            long_name: record.long_name.clone(),
            short_name: record.short_name.clone(),
            hw_model: record.hw_model,
            role: record.role,
            state: state.as_str().into(),
            key: record.trusted.as_ref().map(key_base64),
            pending_key: pending.as_ref().map(key_base64),
            source: record.source.map(Source::label),
            first_seen: humantime::format_rfc3339_seconds(record.first_seen).to_string(),
            last_seen: humantime::format_rfc3339_seconds(record.last_seen).to_string(),
            is_unmessagable: record.flags.is_unmessagable,
            is_licensed: record.flags.is_licensed,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes the JSON export to `out`, one node a line, straight from the store; the count.
pub fn write_json(
    store: &Store,
    out: &mut dyn Write,
    trusted_only: bool,
    now: SystemTime,
) -> Result<usize, ExportError> {
    writeln!(
        out,
        "{{\n  \"format\": \"{EXPORT_FORMAT}\",\n  \"version\": {EXPORT_VERSION},\n  \"exported_at\": \"{}\",\n  \"nodes\": [",
        humantime::format_rfc3339_seconds(now)
    )?;
    let mut count = 0;
    store.each_node(|record| {
        let Some(node) = ExportedNode::of(&record, trusted_only) else {
            return Ok::<_, ExportError>(());
        };
        out.write_all(if count == 0 { b"    " } else { b",\n    " })?;
        serde_json::to_writer(&mut *out, &node).map_err(std::io::Error::from)?;
        count += 1;
        Ok(())
    })?;
    out.write_all(if count == 0 {
        b"  ]\n}\n"
    } else {
        b"\n  ]\n}\n"
    })?;
    Ok(count)
}

/// Writes one contact URL a line for every trusted key; the count. A URL carries no trust
/// state, so pending keys are never written as contacts.
pub fn write_urls(store: &Store, out: &mut dyn Write) -> Result<usize, ExportError> {
    let mut count = 0;
    store.each_node(|record| {
        if let Some(contact) = contact_of(&record) {
            writeln!(out, "{}", contact_url(&contact))?;
            count += 1;
        }
        Ok::<_, ExportError>(())
    })?;
    Ok(count)
}

/// The contact a stored node's trusted key makes, if it has one.
pub fn contact_of(record: &NodeRecord) -> Option<Contact> {
    Some(Contact {
        num: record.num,
        long_name: record.long_name.clone(),
        short_name: record.short_name.clone(),
        hw_model: record.hw_model,
        role: record.role,
        key: record.trusted?,
        is_unmessagable: record.flags.is_unmessagable,
        is_licensed: record.flags.is_licensed,
        macaddr: Vec::new(),
    })
}

/// `https://meshtastic.org/v/#` and the SharedContact in unpadded base64url, as the Python
/// client's `getContactURL` writes it (which adds the radio's `macaddr`, unknown to the store).
pub fn contact_url(contact: &Contact) -> String {
    let shared = SharedContact {
        node_num: contact.num,
        user: Some(super::radio::contact_user(contact)),
        should_ignore: false,
        manually_verified: false,
    };
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(shared.encode_to_vec());
    format!("{CONTACT_URL_PREFIX}{encoded}")
}

/// Why a contact URL gives no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("not a Meshtastic contact URL (https://meshtastic.org/v/#…)")]
    NotAContactUrl,
    #[error("longer than {MAX_URL_LEN} characters")]
    TooLong,
    #[error("not base64url after '#'")]
    NotBase64,
    #[error("not a SharedContact")]
    NotAContact,
    #[error("{0}")]
    Invalid(&'static str),
}

/// The node and key a contact URL carries. Padding and either base64 alphabet are accepted, as
/// the Python client accepts them.
pub fn parse_contact_url(url: &str) -> Result<NodeSeen, UrlError> {
    let url = url.trim();
    if url.len() > MAX_URL_LEN {
        return Err(UrlError::TooLong);
    }
    let payload = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .and_then(|rest| rest.strip_prefix("meshtastic.org/v/#"))
        .ok_or(UrlError::NotAContactUrl)?;
    let normalised: String = payload
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(normalised)
        .map_err(|_| UrlError::NotBase64)?;
    let contact = SharedContact::decode(bytes.as_slice()).map_err(|_| UrlError::NotAContact)?;
    contact_sighting(&contact)
}

/// A decoded contact as a sighting of its node, checked the way the radio would check it.
fn contact_sighting(contact: &SharedContact) -> Result<NodeSeen, UrlError> {
    if !is_node_num(contact.node_num) {
        return Err(UrlError::Invalid("node number 0 or broadcast"));
    }
    if contact.should_ignore {
        return Err(UrlError::Invalid(
            "a contact to ignore (it erases the key on a radio)",
        ));
    }
    let user = contact
        .user
        .as_ref()
        .ok_or(UrlError::Invalid("no user record"))?;
    if !user.id.is_empty() && user.id != node_id(contact.node_num) {
        return Err(UrlError::Invalid("its id does not match its node number"));
    }
    let key = super::radio::valid_key(&user.public_key)
        .ok_or(UrlError::Invalid("no valid 32-byte public key"))?;
    Ok(sighting(
        contact.node_num,
        user.long_name.clone(),
        user.short_name.clone(),
        (user.hw_model, user.role),
        key,
        UserFlags::of(user),
    ))
}

fn sighting(
    num: u32,
    long_name: String,
    short_name: String,
    (hw_model, role): (i32, i32),
    key: PublicKey,
    flags: UserFlags,
) -> NodeSeen {
    NodeSeen {
        num,
        long_name,
        short_name,
        hw_model,
        role,
        public_key: key.to_vec(),
        source: Source::Import,
        is_favorite: false,
        flags,
    }
}

/// What a JSON or URL import did, with the invalid entries it skipped, named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferReport {
    pub counts: ImportReport,
    /// The first `NAMED_INVALID` invalid entries: where, and why.
    pub invalid: Vec<String>,
}

impl TransferReport {
    fn skip(&mut self, place: &str, why: &dyn std::fmt::Display) {
        self.counts.skipped_invalid += 1;
        if self.invalid.len() < NAMED_INVALID {
            self.invalid.push(format!("{place}: {why}"));
        }
    }
}

/// Why a file is not a keysync export: nothing is learned from it.
#[derive(Debug, thiserror::Error)]
enum NotAnExport {
    #[error("not JSON: {0}")]
    Json(serde_json::Error),
    #[error("not a keysync key export (no \"format\": \"{}\")", EXPORT_FORMAT)]
    Format,
    #[error("export version {0} is newer than this keysync reads ({ours})", ours = EXPORT_VERSION)]
    Newer(u64),
    #[error("no valid \"version\"")]
    NoVersion,
    #[error("no \"nodes\" list")]
    NoNodes,
}

/// The sightings an export file's entries make, trusted key before pending key, and the
/// entries skipped; `Err` when the file is not a keysync export (nothing is learned then).
fn json_sightings(text: &str) -> Result<(Vec<NodeSeen>, TransferReport), NotAnExport> {
    /// Entries are read one at a time into what they will become, not into a tree of the
    /// whole file: a 16 MiB export costs about twice its size, not ten times.
    #[derive(Deserialize)]
    struct Document {
        format: Option<String>,
        version: Option<u64>,
        nodes: Option<Vec<Entry>>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Node(ExportedNode),
        Invalid(serde_json::Value),
    }
    // An array would fill the struct's fields by position: only an object can be ours.
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => NotAnExport::Format,
            Err(e) => NotAnExport::Json(e),
        });
    }
    let doc: Document = serde_json::from_str(text).map_err(NotAnExport::Json)?;
    if doc.format.as_deref() != Some(EXPORT_FORMAT) {
        return Err(NotAnExport::Format);
    }
    match doc.version {
        Some(v) if v > u64::from(EXPORT_VERSION) => return Err(NotAnExport::Newer(v)),
        Some(1..) => {}
        _ => return Err(NotAnExport::NoVersion),
    }
    let nodes = doc.nodes.ok_or(NotAnExport::NoNodes)?;
    let mut report = TransferReport::default();
    let mut seen = Vec::with_capacity(nodes.len());
    for (i, entry) in nodes.into_iter().enumerate() {
        let place = format!("node {}", i + 1);
        match entry {
            Entry::Node(node) => match entry_sightings(&node) {
                Ok(more) => seen.extend(more),
                Err(why) => report.skip(&format!("{place} ({})", node_id(node.num)), &why),
            },
            Entry::Invalid(value) => match serde_json::from_value::<ExportedNode>(value) {
                Err(e) => report.skip(&place, &e),
                Ok(_) => report.skip(&place, &"not a node"),
            },
        }
    }
    Ok((seen, report))
}

fn entry_sightings(node: &ExportedNode) -> Result<Vec<NodeSeen>, &'static str> {
    if !is_node_num(node.num) {
        return Err("node number 0 or broadcast");
    }
    if !node.id.is_empty() && node.id != node_id(node.num) {
        return Err("its id does not match its number");
    }
    let parse = |k: &Option<String>| match k {
        None => Ok(None),
        Some(k) => parse_key(k)
            .map(Some)
            .ok_or("a key that is not 32 bytes of base64 or hex"),
    };
    let (trusted, pending) = (parse(&node.key)?, parse(&node.pending_key)?);
    if trusted.is_none() && pending.is_none() {
        return Err("no key");
    }
    let flags = UserFlags {
        is_unmessagable: node.is_unmessagable,
        is_licensed: node.is_licensed,
    };
    let seen = |key| {
        let names = (node.long_name.clone(), node.short_name.clone());
        sighting(
            node.num,
            names.0,
            names.1,
            (node.hw_model, node.role),
            key,
            flags,
        )
    };
    Ok(trusted.into_iter().chain(pending).map(seen).collect())
}

/// `import json FILE`: a keysync export, learned in one transaction; a file that is not one is
/// refused whole.
pub fn import_json(store: &mut Store, path: &Path) -> Result<TransferReport, ImportError> {
    let fail = |detail: String| ImportError::Source {
        path: path.display().to_string(),
        detail,
    };
    let text = crate::files::read_text(path, MAX_IMPORT_BYTES).map_err(|e| fail(e.to_string()))?;
    let (seen, mut report) = json_sightings(&text).map_err(|e| fail(e.to_string()))?;
    report.counts = learn(store, &seen, report.counts.skipped_invalid)?;
    Ok(report)
}

/// The contact URLs of a file, one a line (blank lines and `#` comments skipped), each with
/// where it was; a line that is not a contact URL at all refuses the file whole.
pub fn read_url_file(path: &Path) -> Result<Vec<(String, String)>, ImportError> {
    let fail = |detail: String| ImportError::Source {
        path: path.display().to_string(),
        detail,
    };
    let text = crate::files::read_text(path, MAX_IMPORT_BYTES).map_err(|e| fail(e.to_string()))?;
    let mut urls = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !looks_like_contact_url(line) {
            return Err(fail(format!(
                "line {} is not a Meshtastic contact URL (https://meshtastic.org/v/#…)",
                i + 1
            )));
        }
        urls.push((format!("line {}", i + 1), line.to_owned()));
    }
    if urls.is_empty() {
        return Err(fail("no contact URL in it".into()));
    }
    Ok(urls)
}

/// Whether `s` is meant as a contact URL, whatever its payload holds.
pub fn looks_like_contact_url(s: &str) -> bool {
    matches!(
        parse_contact_url(s),
        Ok(_) | Err(UrlError::NotBase64 | UrlError::NotAContact | UrlError::Invalid(_))
    )
}

/// `import url URL…`: every contact learned in one transaction; `urls` are (where, URL).
pub fn import_urls(
    store: &mut Store,
    urls: &[(String, String)],
) -> Result<TransferReport, ImportError> {
    let mut report = TransferReport::default();
    let mut seen = Vec::with_capacity(urls.len());
    for (place, url) in urls {
        match parse_contact_url(url) {
            Ok(s) => seen.push(s),
            Err(why) => report.skip(place, &why),
        }
    }
    report.counts = learn(store, &seen, report.counts.skipped_invalid)?;
    Ok(report)
}

fn learn(store: &mut Store, seen: &[NodeSeen], invalid: u32) -> Result<ImportReport, StoreError> {
    let learned = store.learn_all(seen, SystemTime::now())?;
    let mut counts = tally(&learned);
    counts.skipped_invalid += invalid;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(num: u32, key: u8) -> Contact {
        Contact {
            num,
            long_name: "Ridge Relay".into(),
            short_name: "RR".into(),
            hw_model: 9,
            role: 2,
            key: [key; 32],
            is_unmessagable: Some(false),
            is_licensed: false,
            macaddr: Vec::new(),
        }
    }

    #[test]
    fn a_contact_url_reads_back_to_the_same_node_and_key() {
        let url = contact_url(&contact(0x1234_abcd, 7));
        assert!(url.starts_with(CONTACT_URL_PREFIX), "{url}");
        assert!(
            !url.contains('='),
            "unpadded, as the Python client writes it"
        );
        let seen = parse_contact_url(&url).expect("ours reads back");
        assert_eq!(seen.num, 0x1234_abcd);
        assert_eq!(seen.public_key, vec![7; 32]);
        assert_eq!((seen.long_name.as_str(), seen.role), ("Ridge Relay", 2));
        assert_eq!(seen.source, Source::Import);
    }

    #[test]
    fn a_contact_url_is_read_with_padding_and_the_standard_alphabet_too() {
        let url = contact_url(&contact(0x0bad_cafe, 0xfb));
        let payload = &url[CONTACT_URL_PREFIX.len()..];
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url");
        let standard = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert!(standard.contains(['+', '/', '=']), "{standard}");
        let seen = parse_contact_url(&format!("{CONTACT_URL_PREFIX}{standard}")).expect("reads");
        assert_eq!(seen.public_key, vec![0xfb; 32]);
    }

    #[test]
    fn a_contact_url_without_a_valid_key_or_not_a_contact_is_refused_with_why() {
        let mut keyless = contact(0x55, 1);
        keyless.key = [0; 32];
        assert_eq!(
            parse_contact_url(&contact_url(&keyless)),
            Err(UrlError::Invalid("no valid 32-byte public key"))
        );
        assert_eq!(
            parse_contact_url("https://meshtastic.org/e/#CgMSAQ"),
            Err(UrlError::NotAContactUrl),
            "a channel URL is not a contact"
        );
        assert_eq!(
            parse_contact_url("https://meshtastic.org/v/#!!!"),
            Err(UrlError::NotBase64)
        );
        let long = format!("{CONTACT_URL_PREFIX}{}", "A".repeat(MAX_URL_LEN));
        assert_eq!(parse_contact_url(&long), Err(UrlError::TooLong));
    }

    #[test]
    fn an_export_entry_makes_its_trusted_key_then_its_pending_one() {
        let node: ExportedNode = serde_json::from_value(serde_json::json!({
            "num": 42, "id": "!0000002a", "key": key_base64(&[1; 32]),
            "pending_key": key_base64(&[2; 32]), "state": "pending"
        }))
        .expect("an entry");
        let seen = entry_sightings(&node).expect("valid");
        let keys: Vec<_> = seen.iter().map(|s| s.public_key[0]).collect();
        assert_eq!(keys, [1, 2]);
    }

    #[test]
    fn a_json_file_that_is_not_an_export_is_refused_whole() {
        for (text, why) in [
            ("[]", "not a keysync key export"),
            ("{\"nodes\": []}", "not a keysync key export"),
            ("not json", "not JSON"),
            (
                "{\"format\": \"keysync-keys\", \"version\": 9, \"nodes\": []}",
                "export version 9 is newer",
            ),
            (
                "{\"format\": \"keysync-keys\", \"version\": 1}",
                "no \"nodes\" list",
            ),
        ] {
            let err = json_sightings(text).expect_err(text).to_string();
            assert!(err.starts_with(why), "{text}: {err}");
        }
    }

    #[test]
    fn invalid_entries_are_counted_and_the_first_ones_named() {
        let mut nodes = vec![serde_json::json!({"num": 7, "key": key_base64(&[3; 32])})];
        nodes.extend((0..30).map(|i| serde_json::json!({"num": 100 + i, "key": "short"})));
        nodes.push(serde_json::json!({"id": "!00000001"}));
        let text = serde_json::json!({"format": EXPORT_FORMAT, "version": 1, "nodes": nodes});
        let (seen, report) = json_sightings(&text.to_string()).expect("ours");
        assert_eq!(seen.len(), 1);
        assert_eq!(report.counts.skipped_invalid, 31);
        assert_eq!(report.invalid.len(), NAMED_INVALID);
        assert_eq!(
            report.invalid[0],
            "node 2 (!00000064): a key that is not 32 bytes of base64 or hex"
        );
    }
}
