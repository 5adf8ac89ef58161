//! Set-up the benches share: a store that already trusts the sim's generated nodes.

use std::path::Path;
use std::time::SystemTime;

use keysync::engine::Store;
use keysync::engine::{NodeSeen, Source};
use keysync::sim::population::Population;

/// A store at `db` that trusts the first `n` nodes the sim generates for seed 1, as if heard on
/// the mesh.
pub fn trusting_store(db: &Path, n: usize) -> anyhow::Result<Store> {
    let mut store = Store::open(db)?;
    for node in population(n) {
        store.learn(
            &NodeSeen::from_node_info(&node, Source::Mesh),
            SystemTime::now(),
        )?;
    }
    Ok(store)
}

/// The first `n` nodes the sim generates for seed 1 (after its own node).
#[allow(dead_code, reason = "not every bench names the nodes")]
pub fn population(n: usize) -> Vec<meshtastic::protobufs::NodeInfo> {
    let mut population = Population::new(1);
    let _own = population.own_node();
    (0..n).map(|_| population.next_node()).collect()
}
