//! Route lookups (kernel side: `ebpf/src/routes.rs`): the per-CPU counters summed over CPUs
//! into the model's plain data at snapshot time. No events: the hot path only counts.

use std::collections::HashSet;

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
};
use netns_agent_common::routes::{RouteCounts, RouteKey, result};

use crate::{
    kernel::maps::{MapError, take},
    model::counters::RouteCount,
};

pub struct RouteMaps {
    lookups: PerCpuHashMap<MapData, RouteKey, RouteCounts>,
    keys_full: PerCpuArray<MapData, u64>,
}

impl RouteMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        Ok(Self { lookups: take(ebpf, "ROUTE_LOOKUPS")?, keys_full: take(ebpf, "ROUTE_KEYS_FULL")? })
    }

    /// Every (namespace, family, kind, table) key with its counts summed over CPUs.
    pub fn read(&self) -> Vec<RouteCount> {
        self.lookups
            .iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| {
                let mut by_result = [0u64; result::COUNT];
                for counts in per_cpu.iter() {
                    for (total, n) in by_result.iter_mut().zip(counts.by_result) {
                        *total += n;
                    }
                }
                RouteCount {
                    cookie: key.cookie,
                    family: key.family,
                    kind: key.kind,
                    table: key.table,
                    by_result,
                }
            })
            .collect()
    }

    /// Lookups not counted because the key table was full.
    pub fn keys_full(&self) -> u64 {
        self.keys_full.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// Deletes the counters of namespaces whose series expired.
    pub fn forget(&mut self, cookies: &HashSet<u64>) {
        let keys: Vec<RouteKey> =
            self.lookups.keys().filter_map(Result::ok).filter(|k| cookies.contains(&k.cookie)).collect();
        for key in keys {
            let _ = self.lookups.remove(&key);
        }
    }
}
