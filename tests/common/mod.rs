//! Shared set-up for integration tests: a simulated radio on a free loopback port and a link
//! with short timings, plus bounded waits on observable state.

#![allow(dead_code)]

use std::time::Duration;

use keysync::engine::link::{BackoffPolicy, LinkConfig, LinkState, LinkStatus};
use keysync::sim::{SimConfig, SimHandle};
use tokio::sync::watch;

/// Upper bound for any wait on an event; generous for a loaded 2-core CI machine.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn sim_config(nodes: usize) -> SimConfig {
    SimConfig {
        listen: "127.0.0.1:0".parse().expect("loopback"),
        nodes,
        announce_every: None,
        ..SimConfig::default()
    }
}

pub fn start_sim(config: SimConfig) -> SimHandle {
    SimHandle::start(config).expect("sim binds a loopback port")
}

/// Short timings so that faults play out in a second or two.
pub fn fast_link(sim: &SimHandle) -> LinkConfig {
    LinkConfig {
        host: sim.addr().to_string(),
        connect_timeout: Duration::from_secs(2),
        heartbeat: Duration::from_millis(200),
        config_timeout: Duration::from_secs(5),
        backoff: BackoffPolicy {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(400),
            reset_after: Duration::from_secs(60),
        },
        takeover_backoff: Duration::from_secs(3),
    }
}

/// Follows the link's state changes in order, so that no transient state is missed.
pub struct StateWatch {
    pub status: watch::Receiver<LinkStatus>,
    seen: u64,
}

impl StateWatch {
    pub fn new(status: watch::Receiver<LinkStatus>) -> Self {
        Self { status, seen: 0 }
    }

    /// Waits for the next state change (after the last one matched) that satisfies `pred`;
    /// panics naming `what` after [`WAIT`].
    pub async fn next(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&LinkState) -> bool,
    ) -> LinkState {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let hit = {
                let s = self.status.borrow_and_update();
                s.changes_since(self.seen)
                    .find(|(_, e)| pred(&e.state))
                    .map(|(n, e)| (n, e.state.clone()))
            };
            if let Some((n, state)) = hit {
                self.seen = n;
                return state;
            }
            let changed = tokio::time::timeout_at(deadline, self.status.changed()).await;
            let Ok(changed) = changed else {
                let timeline: Vec<String> = states(&self.status)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                panic!("timed out waiting for {what}; timeline: {timeline:?}");
            };
            assert!(changed.is_ok(), "link ended while waiting for {what}");
        }
    }

    pub fn now(&self) -> LinkStatus {
        self.status.borrow().clone()
    }
}

/// Waits until `cond` holds, polling every few milliseconds; panics naming `what`.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn states(status: &watch::Receiver<LinkStatus>) -> Vec<LinkState> {
    status
        .borrow()
        .timeline
        .iter()
        .map(|e| e.state.clone())
        .collect()
}
