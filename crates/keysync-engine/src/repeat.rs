//! Log lines that an input can repeat: a radio, a client or a broker can send the same thing
//! thousands of times a second, and under systemd every line lands in the journal. Each kind
//! of such a line is written at most once a [`WINDOW`]; the next one that goes out says how
//! many were held back since. Use [`crate::log_limited!`] where the line is written.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How often one kind of repeatable line is written at most.
pub const WINDOW: Duration = Duration::from_secs(60);

/// When each kind of line last went out, and how many were held back since: a pure value,
/// given the time by its caller.
#[derive(Debug, Default)]
pub struct Gate {
    kinds: BTreeMap<&'static str, Slot>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// When the window of the lines written last began.
    since: Instant,
    written: u32,
    held: u64,
}

impl Gate {
    pub const fn new() -> Self {
        Self {
            kinds: BTreeMap::new(),
        }
    }

    /// A line of `kind` wants out at `now`, `burst` of them allowed a window: `Some(held)` lets
    /// it go, with the count of lines of that kind held back since the last one went; `None`
    /// holds it back.
    pub fn admit(&mut self, kind: &'static str, burst: u32, now: Instant) -> Option<u64> {
        let slot = self.kinds.entry(kind).or_insert(Slot {
            since: now,
            written: 0,
            held: 0,
        });
        if now.saturating_duration_since(slot.since) >= WINDOW {
            slot.since = now;
            slot.written = 0;
        }
        if slot.written >= burst.max(1) {
            slot.held = slot.held.saturating_add(1);
            return None;
        }
        slot.written += 1;
        Some(std::mem::take(&mut slot.held))
    }
}

static GATE: Mutex<Gate> = Mutex::new(Gate::new());

/// The process's gate, on tokio's clock (paused in tests).
pub fn admit(kind: &'static str, burst: u32) -> Option<u64> {
    let mut gate = GATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    gate.admit(kind, burst, Instant::now())
}

/// The tail a line carries when others of its kind were held back: nothing when none were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held(pub u64);

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            1 => f.write_str(" (1 more like this in the last minute, not logged)"),
            n => write!(f, " ({n} more like this in the last minute, not logged)"),
        }
    }
}

/// `log_limited!(warn, "kind", target: "keysync::…", "format", args…)`: the line goes out at
/// most once a minute per kind, carrying the count of those held back;
/// `log_limited!(info, "kind", burst 10, target: …)` lets ten a minute go.
#[macro_export]
macro_rules! log_limited {
    ($level:ident, $kind:expr, burst $burst:expr, target: $target:expr, $($arg:tt)+) => {
        if let Some(held) = $crate::__admit($kind, $burst) {
            log::$level!(target: $target, "{}{}", format_args!($($arg)+), $crate::__Held(held));
        }
    };
    ($level:ident, $kind:expr, target: $target:expr, $($arg:tt)+) => {
        if let Some(held) = $crate::__admit($kind, 1) {
            log::$level!(target: $target, "{}{}", format_args!($($arg)+), $crate::__Held(held));
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_of_a_kind_goes_and_repeats_wait_a_minute() {
        let mut gate = Gate::new();
        let t0 = Instant::now();
        assert_eq!(gate.admit("behind", 1, t0), Some(0));
        for s in 1..60 {
            assert_eq!(gate.admit("behind", 1, t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(gate.admit("behind", 1, t0 + WINDOW), Some(59));
        assert_eq!(gate.admit("behind", 1, t0 + WINDOW), None);
        assert_eq!(gate.admit("behind", 1, t0 + WINDOW * 3), Some(1));
    }

    #[test]
    fn kinds_are_counted_apart() {
        let mut gate = Gate::new();
        let t0 = Instant::now();
        assert_eq!(gate.admit("behind", 1, t0), Some(0));
        assert_eq!(gate.admit("rate", 1, t0), Some(0));
        assert_eq!(gate.admit("behind", 1, t0), None);
        assert_eq!(gate.admit("rate", 1, t0 + WINDOW), Some(0));
    }

    #[test]
    fn a_burst_kind_lets_that_many_go_a_minute() {
        let mut gate = Gate::new();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(gate.admit("client", 10, t0), Some(0));
        }
        assert_eq!(gate.admit("client", 10, t0), None);
        assert_eq!(gate.admit("client", 10, t0), None);
        assert_eq!(gate.admit("client", 10, t0 + WINDOW), Some(2));
        assert_eq!(gate.admit("client", 10, t0 + WINDOW), Some(0));
    }

    #[test]
    fn a_line_says_how_many_were_held_back() {
        assert_eq!(Held(0).to_string(), "");
        assert_eq!(
            Held(1).to_string(),
            " (1 more like this in the last minute, not logged)"
        );
        assert_eq!(
            Held(919_703).to_string(),
            " (919703 more like this in the last minute, not logged)"
        );
    }
}
