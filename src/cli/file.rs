//! The config file: TOML whose keys are the long options without their dashes. The engine's
//! options are read by the same type the command line fills ([`EngineArgs`]), so an option has
//! one definition; a bad value or an unknown key is reported with its line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Visitor};

use super::EngineArgs;

/// The config file's contents; every key optional.
#[derive(Debug, Default, Deserialize, PartialEq)]
pub struct FileConfig {
    #[serde(flatten)]
    pub common: FileCommon,
    #[serde(flatten)]
    pub engine: EngineArgs,
    /// Keys no option has: refused, so a misspelt one is not silently ignored.
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

/// The keys of the file that are not the engine's.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "kebab-case")]
pub struct FileCommon {
    pub db: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_file: Option<PathBuf>,
}

impl FileConfig {
    /// Reads a config file's `text`; a bad value or an unknown key is an error naming its line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: Self = match toml::from_str(text) {
            Ok(file) => file,
            Err(e) => return Err(locate(text, &e)),
        };
        match file.unknown.keys().next() {
            Some(key) => Err(unknown_key(text, key)),
            None => Ok(file),
        }
    }

    /// Every key the file may have.
    pub fn keys() -> impl Iterator<Item = &'static str> {
        keys_of::<FileCommon>()
            .iter()
            .chain(keys_of::<EngineArgs>())
            .copied()
    }
}

/// The error of a file that did not read, with the line and key of the value at fault: the
/// options are read through `serde(flatten)`, whose errors say neither, so each key is read
/// again alone to find the one that fails.
fn locate(text: &str, e: &toml::de::Error) -> String {
    // A syntax error comes before any option is read: toml's own message has the place.
    let Ok(table) = text.parse::<toml::Table>() else {
        return e.to_string();
    };
    for (key, value) in table {
        let one = toml::Table::from_iter([(key.clone(), value)]);
        if let Err(e) = toml::Value::Table(one).try_into::<FileConfig>() {
            return format!("{}{key}: {}", at_line(text, &key), e.message());
        }
    }
    e.to_string()
}

fn unknown_key(text: &str, key: &str) -> String {
    let hint = match closest(key, FileConfig::keys()) {
        Some(known) => format!("did you mean {known}?"),
        None => {
            "the keys are the long options without their dashes, e.g. cache-ttl = \"1h\"".to_owned()
        }
    };
    format!("{}unknown key {key:?}: {hint}", at_line(text, key))
}

/// `line N: ` where the top-level `key` is set in `text`, or nothing if it cannot be told.
fn at_line(text: &str, key: &str) -> String {
    let quoted = format!("\"{key}\"");
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            [key, quoted.as_str()].into_iter().any(|k| {
                line.strip_prefix(k)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
        })
        .map_or_else(String::new, |i| format!("line {}: ", i + 1))
}

/// The known key nearest to a misspelt one, if one is near enough to be meant.
fn closest(key: &str, known: impl Iterator<Item = &'static str>) -> Option<&'static str> {
    let key = key.replace('_', "-");
    known
        .map(|k| (edit_distance(&key, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// The keys serde reads for `T`, a struct with no flattened fields, as its derive lists them.
fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    match T::deserialize(FieldProbe) {
        Err(Fields(fields)) => fields,
        Ok(_) => &[],
    }
}

/// A deserializer that reads nothing: it only catches the field list a struct asks for.
struct FieldProbe;

#[derive(Debug)]
struct Fields(&'static [&'static str]);

impl fmt::Display for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fields {:?}", self.0)
    }
}

impl std::error::Error for Fields {}

impl de::Error for Fields {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Self(&[])
    }
}

impl<'de> de::Deserializer<'de> for FieldProbe {
    type Error = Fields;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Fields> {
        Err(Fields(&[]))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Fields> {
        Err(Fields(fields))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bad_value_is_reported_with_its_line_and_key() {
        let text = "# keysync\nhost = \"a\"\ndb = \"x\"\ncache-ttl = 5\n";
        let err = FileConfig::parse(text).unwrap_err();
        assert!(err.starts_with("line 4: cache-ttl: "), "{err}");
        for (text, says) in [
            ("max-pushes = -1", "line 1: max-pushes: "),
            ("\n\nlisten = \"nowhere\"", "line 3: listen: "),
            ("deny-admin = [\"reboot\", \"everything\"]", "everything"),
            (
                "allow-remote-admin = \"yes\"",
                "line 1: allow-remote-admin: ",
            ),
            ("log-file = 3", "line 1: log-file: "),
            // A syntax error keeps toml's own place.
            ("host = \"a", "line 1"),
        ] {
            let err = FileConfig::parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line_and_the_key_meant() {
        for (text, says) in [
            (
                "# c\nhots = \"x\"",
                "line 2: unknown key \"hots\": did you mean host?",
            ),
            (
                "channel-key = [\"ops=AQ==\"]",
                ": did you mean channel-keys?",
            ),
            ("cache_ttl = \"1h\"", ": did you mean cache-ttl?"),
            // The broker's password is not a file key.
            ("mqtt-password = \"x\"", "unknown key \"mqtt-password\""),
            (
                "colour = \"blue\"",
                "the keys are the long options without their dashes",
            ),
        ] {
            let err = FileConfig::parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn every_engine_option_but_the_password_is_a_key() {
        let keys: Vec<&str> = FileConfig::keys().collect();
        for key in [
            "db",
            "log-level",
            "host",
            "cache-ttl",
            "deny-admin",
            "channel-keys",
        ] {
            assert!(keys.contains(&key), "{key} in {keys:?}");
        }
        assert!(!keys.contains(&"mqtt-password"));
        let ok =
            FileConfig::parse("cache-ttl = \"1h\"\nmax-pushes = 4\ndb = \"k.db\"").expect("valid");
        assert_eq!(ok.engine.cache_ttl, Some(Duration::from_secs(3600)));
        assert_eq!(ok.engine.max_pushes, Some(4));
        assert_eq!(ok.common.db, Some(PathBuf::from("k.db")));
    }
}
