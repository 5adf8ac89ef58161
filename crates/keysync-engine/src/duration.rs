//! Durations as people write them (`90s`, `5m`, `1h 30m`), in flags, config files and scenarios.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The longest duration any setting takes. Nothing keysync waits for is longer, and timers
/// far beyond it overflow when added to the clock.
pub const MAX: Duration = Duration::from_secs(30 * 86_400);

/// Why a text is not a duration keysync takes. Each quotes the text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurationError {
    /// `why` is humantime's words once: as the error's source it would be said twice.
    #[error("{text:?} is not a duration ({why}); try 90s, 5m or 1h")]
    NotADuration {
        text: String,
        why: humantime::DurationError,
    },
    #[error(
        "{text:?} is too long: at most {} (30 days)",
        humantime::format_duration(MAX)
    )]
    TooLong { text: String },
}

/// Parses a humantime duration such as `5m` or `250ms`, at most [`MAX`].
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let d = humantime::parse_duration(s.trim()).map_err(|why| DurationError::NotADuration {
        text: s.to_owned(),
        why,
    })?;
    if d > MAX {
        return Err(DurationError::TooLong { text: s.to_owned() });
    }
    Ok(d)
}

/// `serde(deserialize_with)` for a humantime duration string.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

/// `serde(deserialize_with)` for an optional humantime duration string.
pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// A compact form for narrow panes: `850ms`, `42s`, `12m`, `3h05m`, `2d04h`.
pub fn compact(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.as_millis()),
        1..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_durations_and_explains_bad_ones() {
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse(" 250ms "), Ok(Duration::from_millis(250)));
        let err = parse("five minutes").unwrap_err().to_string();
        assert!(err.contains("try 90s"), "{err}");
    }

    #[test]
    fn durations_longer_than_thirty_days_are_refused_not_overflowed() {
        assert_eq!(parse("30days"), Ok(MAX));
        for huge in ["31d", "500000000000y", "18446744073709551615s"] {
            let err = parse(huge).unwrap_err().to_string();
            assert!(
                err.contains("at most 30days") || err.contains("not a duration"),
                "{huge}: {err}"
            );
        }
    }

    #[test]
    fn compact_fits_narrow_columns() {
        assert_eq!(compact(Duration::from_millis(850)), "850ms");
        assert_eq!(compact(Duration::from_secs(42)), "42s");
        assert_eq!(compact(Duration::from_secs(725)), "12m05s");
        assert_eq!(compact(Duration::from_secs(3 * 3600 + 300)), "3h05m");
        assert_eq!(compact(Duration::from_secs(2 * 86_400 + 4 * 3600)), "2d04h");
    }
}
