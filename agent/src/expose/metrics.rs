//! Every metric the agent exports: names, help and label sets defined once, and the
//! rendering of a [`Snapshot`] into the Prometheus text exposition.
//!
//! Values live in kernel maps; nothing is cached in user space. Each scrape takes a fresh
//! snapshot (the families read the maps, the model joins) and renders it here.

use std::collections::BTreeMap;

use crate::model::{snapshot::Snapshot, states::State};
use netns_agent_common::{
    lifecycle::SETUP_BUCKETS_NS,
    routes::{family, kind, result},
};
use prometheus::{
    Encoder as _, TextEncoder,
    proto::{self, MetricFamily, MetricType},
};

/// A metric's identity.
#[derive(Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    pub labels: &'static [&'static str],
}

const fn def(
    name: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDef {
    MetricDef { name, help, kind, labels }
}

use MetricType::{COUNTER, GAUGE, HISTOGRAM};

pub const BUILD_INFO: MetricDef = def(
    "netns_agent_build_info",
    GAUGE,
    &["version", "revision", "rustc"],
    "netns-agent's build: version, git revision and compiler (always 1).",
);
pub const AGENT_INFO: MetricDef =
    def("netns_agent_info", GAUGE, &["version", "kernel"], "netns-agent build and the kernel it runs on.");
pub const PROBE_ATTACHED: MetricDef = def(
    "netns_agent_probe_attached",
    GAUGE,
    &["probe", "mode"],
    "1 if the probe is attached in this mode, 0 for the modes it has but did not use.",
);
pub const EVENTS_LOST: MetricDef = def(
    "netns_agent_events_lost_total",
    COUNTER,
    &[],
    "Kernel events dropped because the ring buffer was full (counts stay exact; the journal misses them).",
);
pub const LIVE_FULL: MetricDef = def(
    "netns_agent_untracked_namespaces_total",
    COUNTER,
    &[],
    "Namespaces the kernel-side table had no room for (raise limits.kernel_namespaces).",
);
pub const RECONCILED: MetricDef = def(
    "netns_agent_reconciled_total",
    COUNTER,
    &[],
    "Namespaces the periodic inventory found gone, or in teardown, although no teardown probe had reported them.",
);
pub const CREATED: MetricDef = def(
    "netns_created_total",
    COUNTER,
    &["comm"],
    "Network namespaces created, by the comm of the creating process.",
);
pub const SETUP_FAILURES: MetricDef = def(
    "netns_setup_failures_total",
    COUNTER,
    &["comm"],
    "Network namespace creations that failed, by the comm of the process that asked.",
);
pub const SETUP_FAILURES_UNATTRIBUTED: MetricDef = def(
    "netns_setup_failures_unattributed_total",
    COUNTER,
    &[],
    "Tracepoint mode only: calls asking for a network namespace that failed with ENOMEM, or ENOSPC beside other new namespaces, where no probe tells whether the network namespace's setup failed (never counted as setup failures).",
);
pub const SETUP_DURATION: MetricDef = def(
    "netns_setup_duration_seconds",
    HISTOGRAM,
    &[],
    "Time to create and set up a network namespace (what is timed depends on the attach mode; see README).",
);
pub const DESTROYED: MetricDef = def(
    "netns_destroyed_total",
    COUNTER,
    &[],
    "Network namespaces whose teardown began (each counted once).",
);
pub const ALIVE: MetricDef =
    def("netns_alive", GAUGE, &[], "Network namespaces alive in the kernel (teardown not yet begun).");

pub const ROUTE_LOOKUPS: MetricDef = def(
    "netns_route_lookups_total",
    COUNTER,
    &["netns", "family", "result"],
    "Route lookups by the namespace they happen in (netns inode, or unknown), family and outcome: the answer of the last table the lookup consulted (hit, no_route, unreachable, prohibit, blackhole, error).",
);
pub const ROUTE_UNRESOLVED: MetricDef = def(
    "netns_route_unresolved_misses_total",
    COUNTER,
    &["netns", "family"],
    "Tracepoint mode: tables without a route consulted by lookups in a namespace with policy rules; each is a step toward a later table (whose answer netns_route_lookups_total counts) or the end of a lookup that found no route, and no tracepoint shows which.",
);
pub const ROUTE_TABLE_LOOKUPS: MetricDef = def(
    "netns_route_table_lookups_total",
    COUNTER,
    &["netns", "family", "table", "result"],
    "Which tables route lookups consulted, and what each table answered (no_route: none in this table, the lookup went on); only with route_table_detail = true. Not failures: see netns_route_lookups_total.",
);
pub const ROUTE_KEYS_FULL: MetricDef = def(
    "netns_agent_route_keys_full_total",
    COUNTER,
    &[],
    "Route lookups not counted because the kernel table of (namespace, table) keys was full (raise limits.route_keys).",
);
pub const DEVICE_MOVES: MetricDef = def(
    "netns_device_moves_total",
    COUNTER,
    &["netns", "direction"],
    "Network devices moved into (in) or out of (out) a namespace.",
);
pub const DEVICE_MOVE_FAILURES: MetricDef = def(
    "netns_device_move_failures_total",
    COUNTER,
    &["netns"],
    "Device moves out of a namespace that failed.",
);

pub const NETNS_INFO: MetricDef = def(
    "netns_info",
    GAUGE,
    &["netns", "name", "comm", "pid", "container_id", "pod", "pod_namespace"],
    "One series per namespace (value 1): its names, main process (the oldest in it), container and pod. Join on netns.",
);
pub const NETNS_PROCESSES: MetricDef =
    def("netns_processes", GAUGE, &["netns"], "Processes (not threads) whose network namespace this is.");
pub const NETNS_NAMESPACES: MetricDef = def(
    "netns_namespaces",
    GAUGE,
    &["state"],
    "Namespaces held by the kernel by state: new, active, parked, orphaned (held only by an fd, a socket or the kernel), terminating, dying (teardown stuck).",
);
pub const NETNS_CREATED_TIME: MetricDef = def(
    "netns_created_timestamp_seconds",
    GAUGE,
    &["netns"],
    "When a live namespace was created (Unix time): its creation if the agent saw it, boot for the host's, else when the agent first saw it (an upper bound). Age: time() - this.",
);
pub const NETNS_LEAK_INFO: MetricDef = def(
    "netns_leak_info",
    GAUGE,
    &[
        "netns",
        "state",
        "name",
        "creator_comm",
        "creator_container_id",
        "container_id",
        "pod",
        "pod_namespace",
    ],
    "One series (value 1) per namespace in a leak state (orphaned, dying): who created it, and the names, container and pod it was last seen with (netns_info's are empty by then). Join on netns.",
);
pub const NETNS_HOLDER_FDS: MetricDef = def(
    "netns_holder_fds",
    GAUGE,
    &["netns", "kind", "pid", "comm", "container_id"],
    "File descriptors by which a process keeps an orphaned namespace alive: kind netns fd (an nsfs file) or socket (created in it). At most 16 processes per namespace; the rest are summed under pid=\"\", comm=\"(other)\".",
);
/// Holding processes exported one by one per namespace (`netns_holder_fds`): a leak can be
/// one process per pod, but a fork bomb holding a socket each must not flood the exposition.
pub const HOLDERS_PER_NETNS: usize = 16;
pub const NAMESPACES_DROPPED: MetricDef = def(
    "netns_agent_namespaces_dropped_total",
    COUNTER,
    &[],
    "Namespaces folded into netns=\"overflow\" because limits.tracked_namespaces was reached.",
);

pub const CONFIG_RELOAD: MetricDef = def(
    "netns_agent_config_last_reload_successful",
    GAUGE,
    &[],
    "1 if the last config reload (SIGHUP) loaded, or none was asked for; 0 if it was refused (the log says why).",
);
pub const JOURNAL_WRITE_ERRORS: MetricDef = def(
    "netns_agent_journal_write_errors_total",
    COUNTER,
    &[],
    "Journal lines the events file could not take (disk full, read-only, I/O error): missing from the file, still in memory and the API.",
);
pub const JOURNAL_WRITABLE: MetricDef = def(
    "netns_agent_journal_writable",
    GAUGE,
    &[],
    "0 while writes to the events file fail, else 1 (also 1 without an events file).",
);
pub const PROGRAM_RUN_TIME: MetricDef = def(
    "netns_agent_program_run_seconds_total",
    COUNTER,
    &["program"],
    "Time the kernel spent in each of the agent's programs, seconds; counted only while kernel.bpf_stats_enabled is 1.",
);
pub const PROGRAM_RUNS: MetricDef = def(
    "netns_agent_program_runs_total",
    COUNTER,
    &["program"],
    "Runs of each of the agent's programs; counted only while kernel.bpf_stats_enabled is 1.",
);
pub const PROGRAM_RECURSION_MISSES: MetricDef = def(
    "netns_agent_program_recursion_misses_total",
    COUNTER,
    &["program"],
    "Times the kernel skipped a program because it was already running on that CPU: events it could not count (0 before Linux 5.12).",
);
pub const KPROBE_MISSED: MetricDef = def(
    "netns_agent_kprobe_missed_total",
    COUNTER,
    &["program"],
    "Hits of the agent's kprobes and kretprobes the kprobe layer missed (another kprobe running on that CPU, or a kretprobe's return instances all in use): events not counted. Only for programs attached as kprobes on Linux 6.7 and later; absent where the kernel cannot tell.",
);
pub const BPF_STATS: MetricDef = def(
    "netns_agent_bpf_stats_enabled",
    GAUGE,
    &[],
    "1 while kernel.bpf_stats_enabled is 1 (programs' run time and runs are counted), else 0.",
);
pub const MAP_BYTES: MetricDef = def(
    "netns_agent_kernel_map_bytes",
    GAUGE,
    &[],
    "Memory the kernel charges for the agent's maps (their memlock), bytes.",
);
pub const TASK_RESTARTS: MetricDef = def(
    "netns_agent_task_restarts_total",
    COUNTER,
    &["task"],
    "Times a supervised task of the agent ended (error or panic) and was restarted.",
);

/// Every metric the agent defines: the README's table and the exposition are checked against
/// this list.
pub const ALL: &[&MetricDef] = &[
    &BUILD_INFO,
    &AGENT_INFO,
    &PROBE_ATTACHED,
    &TASK_RESTARTS,
    &CONFIG_RELOAD,
    &EVENTS_LOST,
    &JOURNAL_WRITE_ERRORS,
    &JOURNAL_WRITABLE,
    &PROGRAM_RUN_TIME,
    &PROGRAM_RUNS,
    &PROGRAM_RECURSION_MISSES,
    &KPROBE_MISSED,
    &BPF_STATS,
    &MAP_BYTES,
    &LIVE_FULL,
    &RECONCILED,
    &CREATED,
    &SETUP_FAILURES,
    &SETUP_FAILURES_UNATTRIBUTED,
    &SETUP_DURATION,
    &DESTROYED,
    &ALIVE,
    &ROUTE_LOOKUPS,
    &ROUTE_UNRESOLVED,
    &ROUTE_TABLE_LOOKUPS,
    &ROUTE_KEYS_FULL,
    &DEVICE_MOVES,
    &DEVICE_MOVE_FAILURES,
    &NETNS_INFO,
    &NETNS_PROCESSES,
    &NETNS_NAMESPACES,
    &NETNS_CREATED_TIME,
    &NETNS_LEAK_INFO,
    &NETNS_HOLDER_FDS,
    &NAMESPACES_DROPPED,
];

/// Comm label for creations the per-comm table had no room for.
pub const OTHER_COMM: &str = "(other)";

/// The `table` label: the names `ip route` uses for the reserved tables, else the number.
pub fn table_label(table: u32) -> String {
    match table {
        255 => "local".to_owned(),
        254 => "main".to_owned(),
        253 => "default".to_owned(),
        n => n.to_string(),
    }
}

pub fn family_label(family: u16) -> &'static str {
    match family {
        family::IPV4 => "ipv4",
        family::IPV6 => "ipv6",
        _ => "other",
    }
}

/// Every family of a snapshot.
pub fn gather(snap: &Snapshot) -> Vec<MetricFamily> {
    let single = |def: &'static MetricDef, value: f64| {
        let mut f = Family::new(def);
        f.add(&[], value);
        f.finish()
    };
    let mut out = Vec::new();
    let mut build = Family::new(&BUILD_INFO);
    build.add(&[snap.facts.version, env!("NETNS_AGENT_REVISION"), env!("NETNS_AGENT_RUSTC")], 1.0);
    out.push(build.finish());
    let mut info = Family::new(&AGENT_INFO);
    info.add(&[snap.facts.version, &snap.facts.kernel], 1.0);
    out.push(info.finish());
    let mut attached = Family::new(&PROBE_ATTACHED);
    for probe in &snap.facts.probes {
        for mode in &probe.modes {
            attached.add(&[probe.name, mode], if probe.attached == Some(*mode) { 1.0 } else { 0.0 });
        }
    }
    out.push(attached.finish());
    let mut restarts = Family::new(&TASK_RESTARTS);
    for task in &snap.tasks {
        restarts.add(&[task.name], task.restarts as f64);
    }
    out.push(restarts.finish());
    out.push(single(&CONFIG_RELOAD, if snap.config_reload_failed { 0.0 } else { 1.0 }));
    out.push(single(&EVENTS_LOST, snap.counters.events_lost as f64));
    out.push(single(&JOURNAL_WRITE_ERRORS, snap.journal_write_errors as f64));
    out.push(single(&JOURNAL_WRITABLE, if snap.journal_writable { 1.0 } else { 0.0 }));
    let (mut run_time, mut runs, mut misses) =
        (Family::new(&PROGRAM_RUN_TIME), Family::new(&PROGRAM_RUNS), Family::new(&PROGRAM_RECURSION_MISSES));
    for p in &snap.kernel.programs {
        run_time.add(&[&p.name], p.run_time_ns as f64 / 1e9);
        runs.add(&[&p.name], p.runs as f64);
        misses.add(&[&p.name], p.recursion_misses as f64);
    }
    out.extend([run_time.finish(), runs.finish(), misses.finish()]);
    // Only programs the kernel reports kprobe misses for: no sample, not 0, where it cannot.
    let mut kprobe_missed = Family::new(&KPROBE_MISSED);
    for p in &snap.kernel.programs {
        if let Some(missed) = p.kprobe_missed {
            kprobe_missed.add(&[&p.name], missed as f64);
        }
    }
    out.push(kprobe_missed.finish());
    out.push(single(&BPF_STATS, if snap.kernel.stats_enabled { 1.0 } else { 0.0 }));
    out.push(single(&MAP_BYTES, snap.kernel.map_bytes as f64));

    let lc = &snap.counters.lifecycle;
    let mut created = Family::new(&CREATED);
    for (comm, count) in &lc.created_by_comm {
        created.add(&[comm], *count as f64);
    }
    if lc.created_comm_overflow > 0 {
        created.add(&[OTHER_COMM], lc.created_comm_overflow as f64);
    }
    out.push(created.finish());
    // Every failure is counted under a comm (or "(other)"): the family always has a sample,
    // so a rate over it exists from the start.
    let mut failures = Family::new(&SETUP_FAILURES);
    failures.add(&[OTHER_COMM], lc.failed_comm_overflow as f64);
    for (comm, count) in &lc.failed_by_comm {
        failures.add(&[comm], *count as f64);
    }
    out.push(failures.finish());
    out.push(single(&SETUP_FAILURES_UNATTRIBUTED, lc.setup_failures_unattributed as f64));
    let bounds: Vec<f64> = SETUP_BUCKETS_NS.iter().map(|ns| *ns as f64 / 1e9).collect();
    let mut duration = Family::new(&SETUP_DURATION);
    duration.histogram(&bounds, &lc.setup_buckets, lc.setup_sum_ns as f64 / 1e9);
    out.push(duration.finish());
    out.push(single(&DESTROYED, lc.destroyed as f64));
    out.push(single(&ALIVE, lc.alive as f64));
    out.push(single(&LIVE_FULL, lc.live_full as f64));
    out.push(single(&RECONCILED, lc.reconciled as f64));

    let mut info = Family::new(&NETNS_INFO);
    let mut processes = Family::new(&NETNS_PROCESSES);
    let mut created_at = Family::new(&NETNS_CREATED_TIME);
    let mut leak = Family::new(&NETNS_LEAK_INFO);
    let mut holders = Family::new(&NETNS_HOLDER_FDS);
    for ns in &snap.namespaces {
        let netns = ns.netns.to_string();
        let (pid, comm) =
            ns.main_process.as_ref().map_or((String::new(), ""), |m| (m.pid.to_string(), m.comm.as_str()));
        info.add(
            &[&netns, &ns.names.join(","), comm, &pid, &ns.container_id, &ns.pod, &ns.pod_namespace],
            1.0,
        );
        processes.add(&[&netns], f64::from(ns.processes));
        if ns.state != "gone" && ns.state != "terminating" && ns.state != "dying" {
            created_at.add(&[&netns], ns.created_unix_seconds);
        }
        if ns.state == State::Orphaned.as_str() || ns.state == State::Dying.as_str() {
            let (creator_comm, creator_container) =
                ns.creator.as_ref().map_or(("", ""), |c| (c.comm.as_str(), c.container_id.as_str()));
            // Never seen with a process or a name: the creator is all there is.
            let last = ns.last_known.clone().unwrap_or_default();
            leak.add(
                &[
                    &netns,
                    &ns.state,
                    &last.names.join(","),
                    creator_comm,
                    creator_container,
                    &last.container_id,
                    &last.pod,
                    &last.pod_namespace,
                ],
                1.0,
            );
        }
        add_holders(&mut holders, &netns, &ns.holders);
    }
    let mut state = Family::new(&NETNS_NAMESPACES);
    for (s, n) in &snap.states {
        state.add(&[s.as_str()], *n as f64);
    }
    out.extend([
        info.finish(),
        processes.finish(),
        state.finish(),
        created_at.finish(),
        leak.finish(),
        holders.finish(),
    ]);
    out.push(single(&NAMESPACES_DROPPED, snap.dropped as f64));

    let mut moves = Family::new(&DEVICE_MOVES);
    let mut failures = Family::new(&DEVICE_MOVE_FAILURES);
    for (netns, counts) in &snap.moves {
        moves.add(&[netns, "in"], counts.moved_in as f64);
        moves.add(&[netns, "out"], counts.moved_out as f64);
        failures.add(&[netns], counts.failed as f64);
    }
    out.extend([moves.finish(), failures.finish()]);

    let mut lookups = Family::new(&ROUTE_LOOKUPS);
    let mut unresolved = Family::new(&ROUTE_UNRESOLVED);
    let mut tables = Family::new(&ROUTE_TABLE_LOOKUPS);
    for r in &snap.routes {
        let family = family_label(r.family);
        if r.kind == kind::TABLE {
            let table = table_label(r.table);
            for (name, total) in result::NAMES.iter().zip(r.by_result).take(result::UNRESOLVED) {
                if total > 0 {
                    tables.add(&[&r.netns, family, &table, name], total as f64);
                }
            }
            continue;
        }
        for (name, total) in result::NAMES.iter().zip(r.by_result).take(result::UNRESOLVED) {
            if total > 0 {
                lookups.add(&[&r.netns, family, name], total as f64);
            }
        }
        if r.by_result[result::UNRESOLVED] > 0 {
            unresolved.add(&[&r.netns, family], r.by_result[result::UNRESOLVED] as f64);
        }
    }
    out.extend([lookups.finish(), unresolved.finish(), tables.finish()]);
    out.push(single(&ROUTE_KEYS_FULL, snap.counters.route_keys_full as f64));
    let mut families: Vec<MetricFamily> = out.into_iter().flatten().collect();
    // The agent's own process (CPU, memory, fds, start time), as every exporter has it.
    families.extend(prometheus::core::Collector::collect(
        &prometheus::process_collector::ProcessCollector::for_self(),
    ));
    families
}

/// One namespace's holders as `netns_holder_fds`: descriptors counted per (process, kind),
/// the [`HOLDERS_PER_NETNS`] processes holding most one by one, the rest summed per kind.
fn add_holders(family: &mut Family, netns: &str, holders: &[crate::model::view::HolderView]) {
    let mut by_process: BTreeMap<(i32, &str), (&crate::model::view::HolderView, u64)> = BTreeMap::new();
    for h in holders {
        by_process.entry((h.pid, h.kind.as_str())).or_insert((h, 0)).1 += 1;
    }
    let mut ranked: Vec<_> = by_process.into_values().collect();
    ranked.sort_by_key(|(h, fds)| (std::cmp::Reverse(*fds), h.pid));
    let mut pids = std::collections::BTreeSet::new();
    for (h, fds) in ranked {
        if pids.len() < HOLDERS_PER_NETNS || pids.contains(&h.pid) {
            pids.insert(h.pid);
            family.add(&[netns, &h.kind, &h.pid.to_string(), &h.comm, &h.container_id], fds as f64);
        } else {
            family.add(&[netns, &h.kind, "", OTHER_COMM, ""], fds as f64);
        }
    }
}

/// Samples of one family, keyed by label values. Samples with equal label values are
/// summed: distinct raw values can render alike, and duplicates would break the exposition.
pub struct Family {
    def: &'static MetricDef,
    samples: BTreeMap<Vec<String>, f64>,
    histogram: Option<proto::Histogram>,
}

impl Family {
    pub fn new(def: &'static MetricDef) -> Self {
        Self { def, samples: BTreeMap::new(), histogram: None }
    }

    /// Adds a counter or gauge sample.
    pub fn add(&mut self, labels: &[&str], value: f64) -> &mut Self {
        assert_eq!(labels.len(), self.def.labels.len(), "{}: wrong label count", self.def.name);
        *self.samples.entry(labels.iter().map(|s| (*s).to_owned()).collect()).or_default() += value;
        self
    }

    /// Sets the (label-less) histogram from per-bucket counts (not cumulative) with upper
    /// bounds in seconds; the last count is the overflow bucket.
    pub fn histogram(&mut self, bounds: &[f64], counts: &[u64], sum: f64) -> &mut Self {
        assert_eq!(counts.len(), bounds.len() + 1, "{}: bucket count", self.def.name);
        let mut h = proto::Histogram::default();
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(bounds.len());
        for (bound, count) in bounds.iter().zip(counts) {
            cumulative += count;
            let mut b = proto::Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        cumulative += counts[bounds.len()];
        h.set_bucket(buckets);
        h.set_sample_count(cumulative);
        h.set_sample_sum(sum);
        self.histogram = Some(h);
        self
    }

    pub fn finish(self) -> Option<MetricFamily> {
        let mut family = MetricFamily::default();
        family.set_name(self.def.name.to_owned());
        family.set_help(self.def.help.to_owned());
        family.set_field_type(self.def.kind);
        let mut metrics = Vec::new();
        if let Some(h) = self.histogram {
            let mut m = proto::Metric::default();
            m.set_histogram(h);
            metrics.push(m);
        }
        for (values, value) in self.samples {
            let mut m = proto::Metric::default();
            let labels = self
                .def
                .labels
                .iter()
                .zip(values)
                .map(|(name, value)| {
                    let mut pair = proto::LabelPair::default();
                    pair.set_name((*name).to_owned());
                    pair.set_value(value);
                    pair
                })
                .collect();
            m.set_label(labels);
            match self.def.kind {
                COUNTER => {
                    let mut c = proto::Counter::default();
                    c.set_value(value);
                    m.set_counter(c);
                }
                _ => {
                    let mut g = proto::Gauge::default();
                    g.set_value(value);
                    m.set_gauge(g);
                }
            }
            metrics.push(m);
        }
        if metrics.is_empty() {
            return None;
        }
        family.set_metric(metrics);
        Some(family)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("rendering the exposition failed")]
pub struct RenderError(#[source] prometheus::Error);

/// Prometheus text exposition of `families`.
pub fn encode(families: &[MetricFamily]) -> Result<String, RenderError> {
    let mut out = Vec::new();
    TextEncoder::new().encode(families, &mut out).map_err(RenderError)?;
    String::from_utf8(out).map_err(|err| RenderError(prometheus::Error::Msg(err.to_string())))
}

/// Prometheus text exposition of a snapshot.
pub fn render(snap: &Snapshot) -> Result<String, RenderError> {
    encode(&gather(snap))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(families: Vec<Option<MetricFamily>>) -> String {
        encode(&families.into_iter().flatten().collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn every_metric_is_defined_once_rendered_and_documented() {
        let names: std::collections::HashSet<&str> = ALL.iter().map(|d| d.name).collect();
        assert_eq!(names.len(), ALL.len(), "a metric is listed twice");
        // Every family rendered comes from the list (process_* from the prometheus crate).
        for family in gather(&Snapshot::default()) {
            let name = family.name();
            assert!(names.contains(name) || name.starts_with("process_"), "{name} is not in metrics::ALL");
        }
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        for def in ALL {
            assert!(
                readme.contains(&format!("| `{}` |", def.name)),
                "README's metric table lacks {}",
                def.name
            );
        }
    }

    fn holder(pid: i32, kind: &str) -> crate::model::view::HolderView {
        crate::model::view::HolderView {
            pid,
            comm: format!("p{pid}"),
            fd: 3,
            kind: kind.into(),
            container_id: "c".into(),
        }
    }

    #[test]
    fn leaked_namespaces_name_their_creator_last_owner_and_holders() {
        use crate::model::view::{CreatorView, LastKnownView, NamespaceView};
        let orphan = NamespaceView {
            netns: 42,
            state: "orphaned".into(),
            creator: Some(CreatorView {
                pid: 9,
                comm: "runc:[1:CHILD]".into(),
                container_id: "sb".into(),
                setup_ms: 1.0,
            }),
            last_known: Some(LastKnownView {
                names: vec!["leaky".into()],
                container_id: "sb".into(),
                pod: "cart".into(),
                pod_namespace: "shop".into(),
                ..Default::default()
            }),
            // Two sockets and a netns fd of pid 7: two series, the sockets counted as 2.
            holders: vec![holder(7, "socket"), holder(7, "socket"), holder(7, "netns fd")],
            ..Default::default()
        };
        let dying = NamespaceView { netns: 43, state: "dying".into(), ..Default::default() };
        let active = NamespaceView { netns: 44, state: "active".into(), ..Default::default() };
        let snap = Snapshot { namespaces: vec![orphan, dying, active], ..Default::default() };
        let out = render(&snap).unwrap();
        for line in [
            r#"netns_leak_info{netns="42",state="orphaned",name="leaky",creator_comm="runc:[1:CHILD]",creator_container_id="sb",container_id="sb",pod="cart",pod_namespace="shop"} 1"#,
            r#"netns_leak_info{netns="43",state="dying",name="",creator_comm="",creator_container_id="",container_id="",pod="",pod_namespace=""} 1"#,
            r#"netns_holder_fds{netns="42",kind="socket",pid="7",comm="p7",container_id="c"} 2"#,
            r#"netns_holder_fds{netns="42",kind="netns fd",pid="7",comm="p7",container_id="c"} 1"#,
        ] {
            assert!(out.contains(&format!("\n{line}\n")), "{line}: {out}");
        }
        assert!(!out.contains(r#"netns_leak_info{netns="44""#), "an active namespace is no leak: {out}");
    }

    #[test]
    fn holders_past_the_cap_are_summed_as_other() {
        let mut f = Family::new(&NETNS_HOLDER_FDS);
        // pid 1 holds by 3 sockets (ranked first), then 20 processes by one socket each.
        let mut holders = vec![holder(1, "socket"), holder(1, "socket"), holder(1, "socket")];
        holders.extend((100..120).map(|pid| holder(pid, "socket")));
        add_holders(&mut f, "42", &holders);
        let out = text(vec![f.finish()]);
        let series: Vec<&str> = out.lines().filter(|l| l.starts_with("netns_holder_fds{")).collect();
        assert_eq!(series.len(), HOLDERS_PER_NETNS + 1, "{out}");
        assert!(
            out.contains(
                r#"netns_holder_fds{netns="42",kind="socket",pid="1",comm="p1",container_id="c"} 3"#
            ),
            "{out}"
        );
        // 15 of the 20 one-socket holders fit (lowest pids first), 5 are summed.
        assert!(
            out.contains(
                r#"netns_holder_fds{netns="42",kind="socket",pid="114",comm="p114",container_id="c"} 1"#
            ),
            "{out}"
        );
        assert!(
            out.contains(
                r#"netns_holder_fds{netns="42",kind="socket",pid="",comm="(other)",container_id=""} 5"#
            ),
            "{out}"
        );
    }

    #[test]
    fn reserved_tables_have_names() {
        assert_eq!(table_label(255), "local");
        assert_eq!(table_label(254), "main");
        assert_eq!(table_label(253), "default");
        assert_eq!(table_label(100), "100");
        assert_eq!(family_label(family::IPV6), "ipv6");
    }

    #[test]
    fn an_empty_snapshot_renders_every_always_present_family() {
        let out = render(&Snapshot::default()).unwrap();
        assert!(out.contains("\nnetns_setup_failures_total{comm=\"(other)\"} 0\n"), "{out}");
        for name in ["netns_destroyed_total", "netns_alive", "netns_agent_events_lost_total"] {
            assert!(out.contains(&format!("\n{name} 0\n")), "{name}: {out}");
        }
    }

    #[test]
    fn kprobe_misses_are_absent_where_the_kernel_cannot_tell() {
        use crate::kernel::health::ProgramCost;
        let program = |name: &str, kprobe_missed| ProgramCost {
            name: name.into(),
            run_time_ns: 0,
            runs: 0,
            recursion_misses: 0,
            kprobe_missed,
        };
        let mut snap = Snapshot::default();
        snap.kernel.programs =
            vec![program("routes_v4_tracepoint", None), program("moves_sendto_exit", None)];
        let out = render(&snap).unwrap();
        assert!(!out.contains("netns_agent_kprobe_missed_total"), "{out}");
        assert!(
            out.contains("netns_agent_program_recursion_misses_total{program=\"moves_sendto_exit\"} 0\n")
        );
        snap.kernel.programs = vec![
            program("routes_v4_kprobe", Some(0)),
            program("routes_v4_kretprobe", Some(7)),
            program("x", None),
        ];
        let out = render(&snap).unwrap();
        assert!(out.contains("netns_agent_kprobe_missed_total{program=\"routes_v4_kprobe\"} 0\n"), "{out}");
        assert!(
            out.contains("netns_agent_kprobe_missed_total{program=\"routes_v4_kretprobe\"} 7\n"),
            "{out}"
        );
        assert_eq!(out.lines().filter(|l| l.starts_with("netns_agent_kprobe_missed_total{")).count(), 2);
    }

    #[test]
    fn counters_render_with_help_type_and_labels() {
        let mut f = Family::new(&CREATED);
        f.add(&["ip"], 5.0).add(&["unshare"], 3.0);
        let out = text(vec![f.finish()]);
        assert!(out.contains("# TYPE netns_created_total counter"), "{out}");
        assert!(out.contains("netns_created_total{comm=\"ip\"} 5\n"), "{out}");
        assert!(out.contains("netns_created_total{comm=\"unshare\"} 3\n"), "{out}");
    }

    #[test]
    fn hostile_label_values_are_escaped() {
        let mut f = Family::new(&CREATED);
        f.add(&[&crate::parse::labels::from_kernel(b"a\"b\\c\nd\xff")], 1.0);
        let out = text(vec![f.finish()]);
        assert!(out.contains(r#"netns_created_total{comm="a\"b\\c\nd\\xff"} 1"#), "{out}");
        assert_eq!(out.lines().filter(|l| l.starts_with("netns_created_total")).count(), 1);
    }

    #[test]
    fn equal_label_values_are_merged() {
        let mut f = Family::new(&CREATED);
        f.add(&["x"], 1.0).add(&["x"], 2.0);
        let out = text(vec![f.finish()]);
        assert!(out.contains("netns_created_total{comm=\"x\"} 3\n"), "{out}");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        let mut f = Family::new(&SETUP_DURATION);
        f.histogram(&[0.001, 0.01], &[2, 3, 1], 0.05);
        let out = text(vec![f.finish()]);
        assert!(out.contains("netns_setup_duration_seconds_bucket{le=\"0.001\"} 2\n"), "{out}");
        assert!(out.contains("netns_setup_duration_seconds_bucket{le=\"0.01\"} 5\n"), "{out}");
        assert!(out.contains("netns_setup_duration_seconds_bucket{le=\"+Inf\"} 6\n"), "{out}");
        assert!(out.contains("netns_setup_duration_seconds_count 6\n"), "{out}");
        assert!(out.contains("netns_setup_duration_seconds_sum 0.05\n"), "{out}");
    }

    #[test]
    fn empty_families_are_left_out() {
        assert!(Family::new(&CREATED).finish().is_none());
    }

    #[test]
    #[should_panic(expected = "wrong label count")]
    fn label_count_is_checked() {
        Family::new(&CREATED).add(&[], 1.0);
    }
}
