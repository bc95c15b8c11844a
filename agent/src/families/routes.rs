//! Route lookups (kernel side: `ebpf/src/routes.rs`): the per-CPU counters summed over CPUs
//! into the model's plain data at snapshot time. No events: the hot path only counts.
//!
//! Whole lookups of a namespace count in its line of `ROUTE_LINES_MAP` when it has one, in
//! the `ROUTE_LOOKUPS` hash otherwise; this side hands out the lines and sums both.

use std::collections::{BTreeMap, HashSet};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    util::nr_cpus,
};
use netns_agent_common::routes::{
    ROUTE_LINES, RouteCounts, RouteKey, RouteLine, UNKNOWN_NETNS, family, kind, result, route_line,
};

use crate::{
    kernel::maps::{MapError, take},
    model::counters::RouteCount,
};

pub struct RouteMaps {
    lookups: PerCpuHashMap<MapData, RouteKey, RouteCounts>,
    lines: PerCpuArray<MapData, RouteLine>,
    /// The cookie each line was given (0: free), as written to the kernel.
    holders: Vec<u64>,
    /// The kernel is PREEMPT_RT: whole-lookup keys are made from user space (`seed`).
    preempt_rt: bool,
    keys_full: PerCpuArray<MapData, u64>,
}

/// Adds `counts` to the totals of `key`.
fn add(totals: &mut BTreeMap<RouteKey, [u64; result::COUNT]>, key: RouteKey, counts: &RouteCounts) {
    let total = totals.entry(key).or_insert([0; result::COUNT]);
    for (total, n) in total.iter_mut().zip(counts.by_result) {
        *total += n;
    }
}

impl RouteMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        Ok(Self {
            lookups: take(ebpf, "ROUTE_LOOKUPS")?,
            lines: take(ebpf, "ROUTE_LINES_MAP")?,
            holders: vec![0; ROUTE_LINES as usize],
            // `uname -v` names the preemption model: "#1 SMP PREEMPT_RT ...".
            preempt_rt: std::fs::read_to_string("/proc/sys/kernel/version")
                .is_ok_and(|v| v.split_whitespace().any(|w| w == "PREEMPT_RT")),
            keys_full: take(ebpf, "ROUTE_KEYS_FULL")?,
        })
    }

    /// Every (namespace, family, kind, table) key with its counts summed over CPUs, and over
    /// the hash and the namespace's line.
    pub fn read(&self) -> Vec<RouteCount> {
        let mut totals = BTreeMap::new();
        for (key, per_cpu) in self.lookups.iter().filter_map(Result::ok) {
            for counts in per_cpu.iter() {
                add(&mut totals, key, counts);
            }
        }
        for (line, &cookie) in self.holders.iter().enumerate() {
            if cookie == 0 {
                continue;
            }
            let Ok(per_cpu) = self.lines.get(&(line as u32), 0) else { continue };
            for value in per_cpu.iter().filter(|v| v.cookie == cookie) {
                for (family, counts) in [family::IPV4, family::IPV6].into_iter().zip(&value.by_family) {
                    add(&mut totals, RouteKey { cookie, table: 0, family, kind: kind::LOOKUP }, counts);
                }
            }
        }
        totals
            .into_iter()
            .filter(|(_, by_result)| by_result.iter().any(|&n| n > 0))
            .map(|(key, by_result)| RouteCount {
                cookie: key.cookie,
                family: key.family,
                kind: key.kind,
                table: key.table,
                by_result,
            })
            .collect()
    }

    /// Gives each namespace in `cookies` (alive, tracked) its line if the line is free. The
    /// kernel never writes a line's cookie, and a free line is counted in by no one, so
    /// writing every CPU's value at once races with nothing.
    pub fn give_lines(&mut self, cookies: impl IntoIterator<Item = u64>) {
        for cookie in cookies {
            let line = route_line(cookie);
            if cookie == 0 || self.holders[line as usize] != 0 {
                continue;
            }
            if self.write_line(line, cookie) {
                self.holders[line as usize] = cookie;
            }
        }
    }

    /// Writes `cookie` with zero counts to every CPU's value of `line`.
    fn write_line(&mut self, line: u32, cookie: u64) -> bool {
        let Ok(cpus) = nr_cpus() else { return false };
        let value = RouteLine { cookie, ..RouteLine::default() };
        PerCpuValues::try_from(vec![value; cpus]).is_ok_and(|values| self.lines.set(line, values, 0).is_ok())
    }

    /// Lookups not counted because the key table was full.
    pub fn keys_full(&self) -> u64 {
        self.keys_full.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// Creates the whole-lookup keys in the hash (both families, zero counts: no series until
    /// a lookup) of namespaces the agent just learned of, and of `unknown`: a namespace counts
    /// there until it gets its line (at the next expiry tick, if the line is free), and for
    /// good when another namespace holds its line. Why from user space: the
    /// kernel's per-CPU hash takes each new key's per-CPU value from a per-CPU cache of
    /// about one element, refilled by irq_work; on PREEMPT_RT irq_work runs in a thread,
    /// which cannot run inside a tracepoint or kprobe program (preemption off), so a program
    /// run that inserts two new keys (a table's and the lookup's, with the table detail)
    /// fails the second with ENOMEM. User space inserts them in a preemptible system call.
    /// Only on PREEMPT_RT: elsewhere the kernel makes keys as lookups need them, and a zero
    /// key per namespace would be read at every scrape (at 10,000 namespaces a scrape took
    /// 200 ms instead of 34, and event handling, waiting on the same lock, lost events).
    pub fn seed(&mut self, cookies: impl IntoIterator<Item = u64>) {
        if !self.preempt_rt {
            return;
        }
        /// `BPF_NOEXIST` (include/uapi/linux/bpf.h): a key the kernel already made keeps
        /// its counts (the insert fails with EEXIST).
        const BPF_NOEXIST: u64 = 1;
        let cpus = crate::kernel::host::possible_cpus() as usize;
        for cookie in cookies.into_iter().chain([UNKNOWN_NETNS]) {
            for family in [family::IPV4, family::IPV6] {
                let key = RouteKey { cookie, table: 0, family, kind: kind::LOOKUP };
                if let Ok(zeros) = PerCpuValues::try_from(vec![RouteCounts::default(); cpus]) {
                    let _ = self.lookups.insert(key, zeros, BPF_NOEXIST);
                }
            }
        }
    }

    /// Deletes the counters of namespaces whose series expired, and frees their lines: they
    /// are gone, so no lookup counts in them any more.
    pub fn forget(&mut self, cookies: &HashSet<u64>) {
        let keys: Vec<RouteKey> =
            self.lookups.keys().filter_map(Result::ok).filter(|k| cookies.contains(&k.cookie)).collect();
        for key in keys {
            let _ = self.lookups.remove(&key);
        }
        for line in 0..ROUTE_LINES {
            let cookie = self.holders[line as usize];
            if cookie != 0 && cookies.contains(&cookie) && self.write_line(line, 0) {
                self.holders[line as usize] = 0;
            }
        }
    }
}
