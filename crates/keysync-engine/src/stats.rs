//! Running totals the engine keeps for dashboards: plain counts and fixed-bucket duration
//! histograms, published in the snapshot. Exporting them (Prometheus, JSON) is the binary's
//! business; nothing here knows a wire format.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::model::{Outcome, Trigger};

/// Upper bounds (seconds) of the duration buckets, shared by every histogram: from a heartbeat's
/// round trip on a LAN (milliseconds) to a slow sync of a full radio (minutes).
pub const DURATION_BOUNDS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Observed durations: counts per bucket (not cumulative; the last one is `+Inf`), their sum
/// and their number.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Histogram {
    pub buckets: [u64; DURATION_BOUNDS.len() + 1],
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        self.buckets[bucket_of(d)] += 1;
        self.sum_seconds += d.as_secs_f64();
        self.count += 1;
    }
}

fn bucket_of(d: Duration) -> usize {
    let secs = d.as_secs_f64();
    DURATION_BOUNDS
        .iter()
        .position(|b| secs <= *b)
        .unwrap_or(DURATION_BOUNDS.len())
}

/// A [`Histogram`] that tasks update without a lock and anyone reads at any time.
#[derive(Debug, Default)]
pub struct AtomicHistogram {
    buckets: [AtomicU64; DURATION_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl AtomicHistogram {
    pub fn observe(&self, d: Duration) {
        self.buckets[bucket_of(d)].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self) -> Histogram {
        #[expect(
            clippy::cast_precision_loss,
            reason = "a sum of microseconds past 2^53 (285 years) may round"
        )]
        let sum_seconds = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        Histogram {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_seconds,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// Flash writes keysync caused on the radio, counted as each goes on the wire (the store
/// records the same ones, with when).
#[derive(Debug, Default)]
pub struct WriteCounters {
    /// add_contact messages sent.
    pub pushes: AtomicU64,
    /// remove_favorite_node messages sent (slots given back).
    pub unfavourites: AtomicU64,
    /// Of those, the ones that restarted the radio's LoRa chip (2.6.8 – 2.7.x).
    pub lora_restarts: AtomicU64,
}

/// Sync runs since start, by trigger and outcome, with their durations and what they wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SyncTotals {
    runs: [[u64; Outcome::ALL.len()]; Trigger::ALL.len()],
    pub duration: Histogram,
    pub pushes: u64,
    pub unfavourites: u64,
    pub lora_restarts: u64,
}

impl SyncTotals {
    pub fn record_run(&mut self, trigger: Trigger, outcome: Outcome, took: Duration) {
        self.runs[trigger as usize][outcome as usize] += 1;
        self.duration.observe(took);
    }

    pub fn runs(&self, trigger: Trigger, outcome: Outcome) -> u64 {
        self.runs[trigger as usize][outcome as usize]
    }

    /// Every flash write keysync caused.
    pub fn flash_writes(&self) -> u64 {
        self.pushes + self.unfavourites
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_lands_in_the_first_bucket_that_holds_it() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(7));
        h.observe(Duration::from_secs(3600));
        assert_eq!(h.count, 4);
        assert_eq!(h.buckets[0], 2, "0.5 ms and exactly 1 ms are <= 0.001");
        assert_eq!(h.buckets[3], 1, "7 ms is <= 0.01");
        assert_eq!(
            h.buckets[DURATION_BOUNDS.len()],
            1,
            "an hour is only in +Inf"
        );
        assert_eq!(h.buckets.iter().sum::<u64>(), 4);
        assert!((h.sum_seconds - 3600.0085).abs() < 1e-9);
    }

    #[test]
    fn the_atomic_histogram_reads_what_was_observed() {
        let a = AtomicHistogram::default();
        a.observe(Duration::from_millis(20));
        a.observe(Duration::from_secs(2));
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(2));
        assert_eq!(a.read(), h);
    }

    #[test]
    fn the_lists_of_triggers_and_outcomes_are_in_index_order() {
        for (i, t) in Trigger::ALL.iter().enumerate() {
            assert_eq!(*t as usize, i);
        }
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
    }

    #[test]
    fn runs_are_counted_by_trigger_and_outcome() {
        let mut t = SyncTotals::default();
        t.record_run(Trigger::Check, Outcome::Skipped, Duration::ZERO);
        t.record_run(Trigger::Check, Outcome::Skipped, Duration::ZERO);
        t.record_run(Trigger::Startup, Outcome::Forced, Duration::from_secs(1));
        assert_eq!(t.runs(Trigger::Check, Outcome::Skipped), 2);
        assert_eq!(t.runs(Trigger::Startup, Outcome::Forced), 1);
        assert_eq!(t.runs(Trigger::Startup, Outcome::Skipped), 0);
        assert_eq!(t.duration.count, 3);
    }
}
