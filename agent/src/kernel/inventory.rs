//! The inventory in user space: runs the kernel walk of `net_namespace_list` (kernel side:
//! `ebpf/src/inventory.rs`), seeds the alive set at start-up and reconciles it periodically.

use std::collections::HashSet;

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
    programs::{RawTracePoint, RawTracePointRunOptions, TestRun as _},
};
use netns_agent_common::{
    inventory::{InventoryEntry, InventoryStatus},
    lifecycle::NetnsRecord,
};

use super::attach::describe;
use crate::errors::error_chain;

const WALK: &str = "inventory_walk";
/// The walk without `bpf_loop`, for 5.10-5.16: it stops after `BOUNDED_WALK` namespaces.
const WALK_BOUNDED: &str = "inventory_walk_bounded";
const FORGET: &str = "inventory_forget";

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("inventory program {0} missing or not a raw tracepoint")]
    Program(&'static str),
    #[error("inventory program {program} could not load: {reason}")]
    Load { program: &'static str, reason: String },
    #[error("inventory run failed: {0}")]
    Run(String),
    #[error("inventory map {0}: {1}")]
    Map(&'static str, String),
}

/// The result of one walk.
#[derive(Debug)]
pub struct Walk {
    pub status: InventoryStatus,
    pub entries: Vec<InventoryEntry>,
}

/// The kernel's view of which namespaces are alive.
pub struct Inventory {
    /// The walk program that loaded.
    walk: &'static str,
    entries: Array<MapData, InventoryEntry>,
    status: Array<MapData, InventoryStatus>,
    live: HashMap<MapData, u64, NetnsRecord>,
}

fn program<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a RawTracePoint, InventoryError> {
    ebpf.program(name).and_then(|p| p.try_into().ok()).ok_or(InventoryError::Program(name))
}

fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), InventoryError> {
    let p: &mut RawTracePoint =
        ebpf.program_mut(name).and_then(|p| p.try_into().ok()).ok_or(InventoryError::Program(name))?;
    p.load().map_err(|err| InventoryError::Load { program: name, reason: describe(&err) })
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, InventoryError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    super::maps::take(ebpf, name).map_err(|err| InventoryError::Map(name, error_chain(&err)))
}

impl Inventory {
    /// Loads the walk programs (never attached: user space runs them) and takes the maps.
    /// The `bpf_loop` walk where the kernel has it (5.17+), else the bounded one. Fails on
    /// kernels without `BPF_PROG_TEST_RUN` for raw tracepoints (before 5.10).
    pub fn load(ebpf: &mut Ebpf) -> Result<Self, InventoryError> {
        let walk = match load_program(ebpf, WALK) {
            Ok(()) => WALK,
            Err(full) => {
                // Both reasons: the bounded walk's is the one that matters on this kernel.
                load_program(ebpf, WALK_BOUNDED).map_err(|bounded| match (bounded, full) {
                    (
                        InventoryError::Load { program, reason },
                        InventoryError::Load { reason: first, .. },
                    ) => InventoryError::Load { program, reason: format!("{reason}; {WALK}: {first}") },
                    (bounded, _) => bounded,
                })?;
                log::info!(
                    "inventory: this kernel has no bpf_loop (5.17+); the walk stops after {} \
                     namespaces and says INCOMPLETE beyond",
                    netns_agent_common::inventory::BOUNDED_WALK
                );
                WALK_BOUNDED
            }
        };
        load_program(ebpf, FORGET)?;
        Ok(Self {
            walk,
            entries: take_map(ebpf, "INVENTORY")?,
            status: take_map(ebpf, "INVENTORY_STATUS")?,
            live: take_map(ebpf, "LIVE")?,
        })
    }

    /// Walks the kernel's namespace list; every namespace found joins the alive set.
    pub fn walk(&self, ebpf: &Ebpf) -> Result<Walk, InventoryError> {
        let result = program(ebpf, self.walk)?
            .test_run(RawTracePointRunOptions::new())
            .map_err(|err| InventoryError::Run(error_chain(&err)))?;
        if result.return_value != 0 {
            return Err(InventoryError::Run("reading a namespace failed mid-walk".into()));
        }
        let status =
            self.status.get(&0, 0).map_err(|err| InventoryError::Map("INVENTORY_STATUS", err.to_string()))?;
        let entries = (0..status.count).filter_map(|i| self.entries.get(&i, 0).ok()).collect();
        Ok(Walk { status, entries })
    }

    /// Namespaces in the alive set now.
    pub fn live(&self) -> Vec<(u64, NetnsRecord)> {
        self.live.iter().filter_map(Result::ok).collect()
    }

    /// Removes namespaces the walk proved gone although no teardown probe saw them
    /// (for instance when the teardown probe could not attach). Returns how many.
    pub fn reconcile(&self, ebpf: &Ebpf, walk: &Walk) -> Result<usize, InventoryError> {
        if walk.status.complete == 0 {
            // An incomplete walk proves nothing about what it did not reach.
            return Ok(0);
        }
        let gone = stale(&self.live(), walk);
        let forget = program(ebpf, FORGET)?;
        for cookie in &gone {
            let mut opts = RawTracePointRunOptions::new();
            opts.args[0] = *cookie;
            forget.test_run(opts).map_err(|err| InventoryError::Run(error_chain(&err)))?;
        }
        Ok(gone.len())
    }
}

/// Alive-set entries that a complete walk did not find although they were known before it
/// started: their teardown began without the agent seeing it.
pub fn stale(live: &[(u64, NetnsRecord)], walk: &Walk) -> Vec<u64> {
    let found: HashSet<u64> = walk.entries.iter().map(|e| e.cookie).collect();
    live.iter()
        .filter(|(cookie, record)| !found.contains(cookie) && record.seen_ns < walk.status.started_ns)
        .map(|(cookie, _)| *cookie)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seen_ns: u64) -> NetnsRecord {
        NetnsRecord { inum: 1, creator_pid: 0, seen_ns, prot_inuse: 0, net: 0 }
    }

    #[test]
    fn only_entries_older_than_the_walk_and_not_found_are_stale() {
        let walk = Walk {
            status: InventoryStatus { count: 1, complete: 1, started_ns: 100, ..Default::default() },
            entries: vec![InventoryEntry::new(1, 11)],
        };
        let live = vec![
            (1, record(10)),  // found by the walk
            (2, record(50)),  // known before the walk, not found: gone
            (3, record(150)), // created after the walk started: not proven gone
        ];
        assert_eq!(stale(&live, &walk), vec![2]);
    }
}
