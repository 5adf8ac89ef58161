//! The set-up most integration tests share: a simulated radio, a store file seeded with known
//! nodes in a temporary directory, and the engine (or a bare link) on short timings.

use std::path::PathBuf;
use std::time::Duration;

use keysync::engine::Store;
use keysync::engine::SyncReport;
use keysync::engine::{self, Command, EngineConfig, EngineHandle, Snapshot};
use keysync::engine::{Link, LinkConfig, LinkNotice, LinkState};
use keysync::sim::{SimConfig, SimHandle};
use meshtastic::protobufs::NodeInfo;
use tokio::sync::{broadcast, watch};

use super::{StateWatch, fast_engine, fast_link, nth_report, seeded_store, start_sim};

/// A simulated radio and a store at `db` that knows some nodes; no engine yet. The store is
/// closed again, so the binary, or [`Rig::start`], can open it.
pub struct Rig {
    /// Holds the store file; dropped last.
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub sim: SimHandle,
}

impl Rig {
    /// A radio set up as `sim` says and a store that has heard `known` on the mesh.
    pub fn new(sim: SimConfig, known: &[NodeInfo]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let sim = start_sim(sim);
        Self::with(dir, sim, known)
    }

    /// [`Rig::new`] with the radio on a serial port: a pty linked from the temporary
    /// directory's `radio`.
    pub fn new_serial(sim: SimConfig, known: &[NodeInfo]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let sim =
            SimHandle::start_serial(sim, dir.path().join("radio")).expect("the sim opens a pty");
        Self::with(dir, sim, known)
    }

    fn with(dir: tempfile::TempDir, sim: SimHandle, known: &[NodeInfo]) -> Self {
        let (db, store) = seeded_store(&dir, known);
        drop(store);
        Self { dir, db, sim }
    }

    /// Records a DM exchanged with each of `nums` now: they are DM partners, whose keys go to
    /// the radio at once when they are heard without one.
    pub fn partners(&self, nums: impl IntoIterator<Item = u32>) {
        let mut store = Store::open(&self.db).expect("store opens");
        let now = std::time::SystemTime::now();
        for num in nums {
            store.note_dm(num, now).expect("notes the DM");
        }
    }

    /// The nodes of the mesh the radio does not hold.
    pub fn outside_the_radio(&self) -> Vec<u32> {
        let held: Vec<u32> = self.sim.nodedb().iter().map(|n| n.num).collect();
        self.sim
            .mesh()
            .iter()
            .map(|n| n.num)
            .filter(|n| !held.contains(n))
            .collect()
    }

    /// The engine on this rig's radio and store: sync checks every minute, a cache TTL of ten
    /// minutes, the rest of [`fast_engine`], then whatever `edit` changes.
    pub fn start(self, edit: impl FnOnce(&mut EngineConfig)) -> Harness {
        let mut config = fast_engine(
            &self.sim,
            self.db.clone(),
            Duration::from_secs(60),
            Duration::from_secs(600),
        );
        edit(&mut config);
        let engine = start_engine(&config);
        let snap = engine.snapshot.clone();
        Harness {
            dir: self.dir,
            db: self.db,
            sim: self.sim,
            engine,
            snap,
            config,
        }
    }
}

fn start_engine(config: &EngineConfig) -> EngineHandle {
    let store = Store::open(&config.db_path).expect("store opens");
    engine::try_start(config.clone(), store).expect("the engine starts")
}

/// The engine running against a simulated radio, with its store in a temporary directory.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub sim: SimHandle,
    pub engine: EngineHandle,
    /// The engine's snapshot, followed by [`Harness::report`].
    pub snap: watch::Receiver<Snapshot>,
    /// What the engine was started with, and is restarted with.
    pub config: EngineConfig,
}

impl Harness {
    /// [`Rig::new_serial`] then [`Rig::start`].
    pub fn start_serial(
        sim: SimConfig,
        known: &[NodeInfo],
        edit: impl FnOnce(&mut EngineConfig),
    ) -> Self {
        Rig::new_serial(sim, known).start(edit)
    }

    /// [`Rig::new`] then [`Rig::start`].
    pub fn start(sim: SimConfig, known: &[NodeInfo], edit: impl FnOnce(&mut EngineConfig)) -> Self {
        Rig::new(sim, known).start(edit)
    }

    /// The `n`-th sync report (1-based), once the engine has made it.
    pub async fn report(&mut self, n: usize) -> SyncReport {
        nth_report(&mut self.snap, n).await
    }

    /// The report of the run after those the snapshot holds now.
    pub async fn next_report(&mut self) -> SyncReport {
        let n = self.runs() + 1;
        self.report(n).await
    }

    /// The first of reports `from`, `from + 1`, … that satisfies `pred`, looking at `limit` of
    /// them at most.
    pub async fn report_where(
        &mut self,
        from: usize,
        limit: usize,
        pred: impl Fn(&SyncReport) -> bool,
    ) -> SyncReport {
        for n in from..from + limit {
            let r = self.report(n).await;
            if pred(&r) {
                return r;
            }
        }
        panic!("no such report in {limit} runs");
    }

    /// How many sync runs the snapshot holds.
    pub fn runs(&self) -> usize {
        self.snap.borrow().sync.history.len()
    }

    /// Sends an operator's command to the engine.
    pub async fn command(&self, command: Command) {
        self.engine
            .commands
            .send(command)
            .await
            .expect("engine runs");
    }

    /// Quits the engine and starts it again over the same store with the same settings, as a
    /// restarted keysync; the snapshot is the new engine's.
    pub async fn restart(self) -> Self {
        self.engine.quit().await;
        let engine = start_engine(&self.config);
        Self {
            snap: engine.snapshot.clone(),
            engine,
            ..self
        }
    }

    pub async fn quit(self) {
        self.engine.quit().await;
    }
}

/// A bare link (no engine) to a simulated radio, its notices subscribed from the start.
pub struct Linked {
    pub sim: SimHandle,
    pub link: Link,
    pub notices: broadcast::Receiver<LinkNotice>,
    pub status: StateWatch,
    /// What the link was started with.
    pub config: LinkConfig,
}

impl Linked {
    /// A radio set up as `sim` says and a link to it with [`fast_link`] timings changed by
    /// `edit`, once the link is up.
    pub async fn up(sim: SimConfig, edit: impl FnOnce(&mut LinkConfig)) -> Self {
        Self::to(start_sim(sim), edit).await
    }

    /// [`Linked::up`] to a radio already started.
    pub async fn to(sim: SimHandle, edit: impl FnOnce(&mut LinkConfig)) -> Self {
        let mut config = fast_link(&sim);
        edit(&mut config);
        let link = Link::spawn(config.clone());
        let notices = link.subscribe();
        let mut status = StateWatch::new(link.status());
        status.next("up", LinkState::is_up).await;
        Self {
            sim,
            link,
            notices,
            status,
            config,
        }
    }
}
