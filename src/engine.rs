//! The engine: the radio link and (from the sync issue on) the key store and sync runner, on
//! background tasks. It knows nothing of terminals; it publishes an owned [`Snapshot`] through a
//! `watch` and takes [`Command`]s on one `mpsc`.

pub mod codec;
pub mod link;
pub mod radio;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use link::{Link, LinkConfig, LinkCounters, LinkStatus};

/// What the engine needs to run.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub link: LinkConfig,
}

/// Frame counts since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub frames_in: u64,
    pub frames_out: u64,
    pub heartbeats_out: u64,
    pub garbage_bytes: u64,
    pub undecodable: u64,
}

impl Traffic {
    fn read(c: &LinkCounters) -> Self {
        Self {
            frames_in: c.frames_in.load(Ordering::Relaxed),
            frames_out: c.frames_out.load(Ordering::Relaxed),
            heartbeats_out: c.heartbeats_out.load(Ordering::Relaxed),
            garbage_bytes: c.garbage_bytes.load(Ordering::Relaxed),
            undecodable: c.undecodable.load(Ordering::Relaxed),
        }
    }
}

/// Everything a view needs, owned, published on every change.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub link: LinkStatus,
    pub traffic: Traffic,
}

/// What the operator (or a test) can ask of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Drop the connection and connect again now.
    Reconnect,
    /// Close the link cleanly and stop.
    Quit,
}

/// The running engine.
#[derive(Debug)]
pub struct EngineHandle {
    pub snapshot: watch::Receiver<Snapshot>,
    pub commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

impl EngineHandle {
    /// Waits for the engine's task to end (after [`Command::Quit`]).
    pub async fn join(self) {
        let _ = self.task.await;
    }

    /// Asks the engine to stop and waits until the link is closed.
    pub async fn quit(self) {
        let _ = self.commands.send(Command::Quit).await;
        self.join().await;
    }
}

/// Starts the engine on the current tokio runtime.
pub fn start(config: EngineConfig) -> EngineHandle {
    let link = Link::spawn(config.link);
    let status = link.status();
    let counters = link.counters();
    let (snapshot_tx, snapshot) = watch::channel(Snapshot {
        link: status.borrow().clone(),
        traffic: Traffic::read(&counters),
    });
    let (commands, command_rx) = mpsc::channel(16);
    let task = tokio::spawn(run(link, status, counters, snapshot_tx, command_rx));
    EngineHandle {
        snapshot,
        commands,
        task,
    }
}

async fn run(
    link: Link,
    mut status: watch::Receiver<LinkStatus>,
    counters: Arc<LinkCounters>,
    snapshot: watch::Sender<Snapshot>,
    mut commands: mpsc::Receiver<Command>,
) {
    let mut refresh = tokio::time::interval(std::time::Duration::from_secs(1));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                let link_status = status.borrow_and_update().clone();
                snapshot.send_modify(|s| {
                    s.link = link_status;
                    s.traffic = Traffic::read(&counters);
                });
            }
            _ = refresh.tick() => {
                let traffic = Traffic::read(&counters);
                snapshot.send_if_modified(|s| {
                    let changed = s.traffic != traffic;
                    s.traffic = traffic;
                    changed
                });
            }
            cmd = commands.recv() => match cmd {
                Some(Command::Reconnect) => link.reconnect().await,
                Some(Command::Quit) | None => break,
            },
        }
    }
    link.shutdown().await;
    let final_status = status.borrow().clone();
    snapshot.send_modify(|s| s.link = final_status);
}
