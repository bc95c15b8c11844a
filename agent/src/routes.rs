//! Route lookups in user space: folds the kernel's per-CPU counters into
//! `netns_route_lookups_total` at scrape time (kernel side: `ebpf/src/routes.rs`).

use std::collections::HashSet;

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
};
use netns_agent_common::routes::{RouteCounts, RouteKey, family, result};
use prometheus::proto::MetricFamily;

use crate::{
    maps::{MapError, take},
    metrics,
    namespaces::NamespaceTable,
};

/// The `table` label: the names `ip route` uses for the reserved tables, else the number.
pub fn table_label(table: u32) -> String {
    match table {
        255 => "local".to_owned(),
        254 => "main".to_owned(),
        253 => "default".to_owned(),
        n => n.to_string(),
    }
}

pub fn family_label(family: u32) -> &'static str {
    match family {
        family::IPV4 => "ipv4",
        family::IPV6 => "ipv6",
        _ => "other",
    }
}

pub struct RouteMaps {
    lookups: PerCpuHashMap<MapData, RouteKey, RouteCounts>,
    keys_full: PerCpuArray<MapData, u64>,
}

impl RouteMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        Ok(Self { lookups: take(ebpf, "ROUTE_LOOKUPS")?, keys_full: take(ebpf, "ROUTE_KEYS_FULL")? })
    }

    pub fn collect(&self, namespaces: &NamespaceTable, out: &mut Vec<MetricFamily>) {
        let mut lookups = metrics::Family::new(&metrics::ROUTE_LOOKUPS);
        for (key, per_cpu) in self.lookups.iter().filter_map(Result::ok) {
            // A namespace not known yet (its creation event is still in flight) shows up on
            // the next scrape; one whose series expired is about to be deleted.
            let Some(netns) = namespaces.label(key.cookie) else {
                continue;
            };
            let mut totals = [0u64; result::COUNT];
            for counts in per_cpu.iter() {
                for (total, n) in totals.iter_mut().zip(counts.by_result) {
                    *total += n;
                }
            }
            let table = table_label(key.table);
            for (name, total) in result::NAMES.iter().zip(totals) {
                if total > 0 {
                    lookups.add(&[&netns, family_label(key.family), &table, name], total as f64);
                }
            }
        }
        out.extend(lookups.finish());
        let full: u64 = self.keys_full.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0);
        let mut f = metrics::Family::new(&metrics::ROUTE_KEYS_FULL);
        f.add(&[], full as f64);
        out.extend(f.finish());
    }

    /// Per namespace (cookie): all lookups and the failed ones, over families and tables.
    pub fn totals(&self) -> crate::api::Totals<(u64, u64)> {
        let mut totals = crate::api::Totals::new();
        for (key, per_cpu) in self.lookups.iter().filter_map(Result::ok) {
            let entry: &mut (u64, u64) = totals.entry(key.cookie).or_default();
            for counts in per_cpu.iter() {
                entry.0 += counts.by_result.iter().sum::<u64>();
                entry.1 += counts.by_result.iter().skip(result::HIT + 1).sum::<u64>();
            }
        }
        totals
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_tables_have_names() {
        assert_eq!(table_label(255), "local");
        assert_eq!(table_label(254), "main");
        assert_eq!(table_label(253), "default");
        assert_eq!(table_label(100), "100");
        assert_eq!(family_label(family::IPV6), "ipv6");
    }
}
