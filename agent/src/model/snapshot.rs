//! The one join: namespaces x owners x the kernel's counters, at one moment. `/metrics`, the
//! JSON API and the CLI (through the API) all read this, so they cannot disagree.

use std::{
    collections::{BTreeMap, HashMap},
    time::SystemTime,
};

use netns_agent_common::{
    moves::MoveCounts,
    routes::{kind, result},
};

use super::{
    Model,
    counters::{Counters, RouteCount},
    journal,
    owners::Owner,
    states::{self, State},
    view::{CreatorView, HolderView, LastKnownView, NamespaceView, ProcessView},
};

/// One probe and how it attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeStatus {
    pub name: &'static str,
    /// The mode it attached in, if any.
    pub attached: Option<&'static str>,
    /// Every mode it has.
    pub modes: Vec<&'static str>,
}

/// Facts fixed at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentFacts {
    pub version: &'static str,
    pub kernel: String,
    pub probes: Vec<ProbeStatus>,
}

/// A supervised task's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskHealth {
    pub name: &'static str,
    pub restarts: u64,
}

/// Route counts of one (namespace, family, kind, table), with the `netns` label resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSeries {
    pub netns: String,
    pub family: u16,
    /// `kind::LOOKUP` (whole lookups by outcome) or `kind::TABLE` (per table).
    pub kind: u16,
    pub table: u32,
    pub by_result: [u64; result::COUNT],
}

/// Everything the agent shows, at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub facts: AgentFacts,
    pub tasks: Vec<TaskHealth>,
    pub counters: Counters,
    /// Every namespace tracked one by one (alive, or gone within the grace period).
    pub namespaces: Vec<NamespaceView>,
    /// Namespaces the kernel holds, by state (every held state present, 0 included).
    pub states: Vec<(State, u64)>,
    /// Namespaces folded into `overflow` since start.
    pub dropped: u64,
    pub routes: Vec<RouteSeries>,
    /// Device moves by `netns` label.
    pub moves: Vec<(String, MoveCounts)>,
    /// The last config reload (SIGHUP) was refused.
    pub config_reload_failed: bool,
    /// Journal lines the events file could not take since start.
    pub journal_write_errors: u64,
    /// The events file takes lines now (true without one).
    pub journal_writable: bool,
    /// The kernel side's own cost and memory (filled by the daemon, which holds the programs).
    pub kernel: crate::kernel::health::KernelHealth,
}

impl Model {
    /// Joins the model with the kernel's counters.
    pub fn snapshot(&self, facts: AgentFacts, tasks: Vec<TaskHealth>, counters: Counters) -> Snapshot {
        // Per namespace: whole lookups and those that failed, by outcome. Unresolved table
        // misses (policy rules) are neither: their walk's end is not known.
        let mut route_totals: HashMap<u64, (u64, u64)> = HashMap::new();
        for r in counters.routes.iter().filter(|r| r.kind == kind::LOOKUP) {
            let total = route_totals.entry(r.cookie).or_default();
            let failed: u64 = r.by_result[result::HIT + 1..result::UNRESOLVED].iter().sum();
            total.0 += r.by_result[result::HIT] + failed;
            total.1 += failed;
        }
        let move_totals: HashMap<u64, MoveCounts> = counters.moves.iter().copied().collect();
        let now = SystemTime::now();
        let none = Owner::default();
        self.with(|state| {
            let ownership = &state.ownership;
            let ctx = self.state_context(ownership.scanned, counters.cleanup_end_ns);
            let mut by_state: BTreeMap<State, u64> = State::HELD.iter().map(|s| (*s, 0)).collect();
            let mut namespaces: Vec<NamespaceView> = state
                .namespaces
                .iter()
                .map(|(cookie, ns)| {
                    // A destroyed namespace shows its last known owner (no process is in it now).
                    let owner = match ns.destroyed_at {
                        None => ownership.owners.get(&ns.inum).unwrap_or(&none),
                        Some(_) => ns.last_owner.as_ref().unwrap_or(&none),
                    };
                    let s = states::classify(ns, Some(owner), &ctx);
                    if let Some(n) = by_state.get_mut(&s) {
                        *n += 1;
                    }
                    let (lookups, failures) = route_totals.get(&cookie).copied().unwrap_or_default();
                    let moves = move_totals.get(&cookie).copied().unwrap_or_default();
                    NamespaceView {
                        netns: ns.inum,
                        cookie,
                        state: s.as_str().to_owned(),
                        names: owner.names.iter().cloned().collect(),
                        // A torn-down namespace stops ageing at its teardown.
                        age_seconds: ns
                            .destroyed_boot_ns
                            .map_or(now, crate::kernel::clock::wall)
                            .duration_since(ns.first_seen)
                            .unwrap_or_default()
                            .as_secs_f64(),
                        created_unix_seconds: ns
                            .first_seen
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_secs_f64(),
                        created: ns.created.as_ref().map(|_| journal::format_time(ns.first_seen)),
                        creator: ns.created.as_ref().map(|c| CreatorView {
                            pid: c.pid,
                            comm: c.comm.clone(),
                            container_id: c.container_id.clone(),
                            setup_ms: c.setup_ms,
                        }),
                        main_process: owner
                            .main
                            .as_ref()
                            .map(|m| ProcessView { pid: m.pid, comm: m.comm.clone() }),
                        processes: if ns.destroyed_at.is_some() { 0 } else { owner.processes },
                        container_id: owner.container_id.clone(),
                        pod: owner.pod.clone(),
                        pod_namespace: owner.pod_namespace.clone(),
                        devices_moved_in: moves.moved_in,
                        devices_moved_out: moves.moved_out,
                        device_move_failures: moves.failed,
                        route_lookups: lookups,
                        route_failures: failures,
                        holders: ownership
                            .holders
                            .get(&ns.inum)
                            .map(|h| {
                                h.iter()
                                    .map(|h| HolderView {
                                        pid: h.pid,
                                        comm: h.comm.clone(),
                                        fd: h.fd,
                                        kind: h.kind.to_owned(),
                                        container_id: h.container_id.clone(),
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                        holders_unchecked_processes: if s == State::Orphaned
                            && ownership.holders_searched.contains(&ns.inum)
                        {
                            ownership.holders_unchecked
                        } else {
                            0
                        },
                        last_known: ns.last_owner.as_ref().filter(|_| s.is_leak()).map(|o| LastKnownView {
                            names: o.names.iter().cloned().collect(),
                            main_process: o
                                .main
                                .as_ref()
                                .map(|m| ProcessView { pid: m.pid, comm: m.comm.clone() }),
                            container_id: o.container_id.clone(),
                            pod: o.pod.clone(),
                            pod_namespace: o.pod_namespace.clone(),
                        }),
                    }
                })
                .collect();
            namespaces.sort_by_key(|v| (v.netns, v.cookie));
            // A namespace not known yet (its creation event is still in flight) shows up on
            // the next snapshot; one whose series expired is about to be deleted.
            let routes = counters
                .routes
                .iter()
                .filter_map(|r: &RouteCount| {
                    Some(RouteSeries {
                        netns: state.namespaces.label(r.cookie)?,
                        family: r.family,
                        kind: r.kind,
                        table: r.table,
                        by_result: r.by_result,
                    })
                })
                .collect();
            let moves = counters
                .moves
                .iter()
                .filter_map(|(cookie, counts)| Some((state.namespaces.label(*cookie)?, *counts)))
                .collect();
            Snapshot {
                facts,
                tasks,
                namespaces,
                states: by_state.into_iter().collect(),
                dropped: state.namespaces.dropped,
                routes,
                moves,
                counters,
                config_reload_failed: false,
                journal_write_errors: state.journal.file_health().0,
                journal_writable: state.journal.file_health().1,
                kernel: Default::default(),
            }
        })
    }

    /// `/api/v1/events?netns=&cookie=&since=&limit=`.
    pub fn events(&self, filter: &journal::Filter, since: u64, limit: usize) -> super::view::EventsView {
        self.with(|state| super::view::EventsView {
            events: state.journal.query(filter, since, limit),
            last_seq: state.journal.last_seq(),
        })
    }
}
