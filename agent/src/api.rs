//! The JSON API beside `/metrics`: `/api/v1/namespaces` and `/api/v1/events`. The same types
//! serve the command-line client, which reads them back.

use std::{collections::HashMap, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::{
    attribution::{Holder, Owner},
    journal::{self, Entry},
    state::{AgentState, lock},
    states,
};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessView {
    pub pid: i32,
    pub comm: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CreatorView {
    pub pid: u32,
    pub comm: String,
    pub container_id: String,
    pub setup_ms: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HolderView {
    pub pid: i32,
    pub comm: String,
    pub fd: i32,
    pub kind: String,
}

/// One namespace, everything the agent knows about it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NamespaceView {
    /// The inode number (the `netns` label).
    pub netns: u32,
    /// The kernel's never-reused id.
    pub cookie: u64,
    pub state: String,
    pub names: Vec<String>,
    /// Since creation (if seen) or first sight.
    pub age_seconds: f64,
    pub created: Option<String>,
    pub creator: Option<CreatorView>,
    pub main_process: Option<ProcessView>,
    pub processes: u32,
    pub container_id: String,
    pub pod: String,
    pub pod_namespace: String,
    pub devices_moved_in: u64,
    pub devices_moved_out: u64,
    pub device_move_failures: u64,
    pub route_lookups: u64,
    pub route_failures: u64,
    /// What holds an orphaned namespace, where found.
    pub holders: Vec<HolderView>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EventsView {
    pub events: Vec<Entry>,
    /// Pass as `since` to get only newer events.
    pub last_seq: u64,
}

/// `/api/v1/namespaces`.
pub fn namespaces(state: &AgentState) -> Vec<NamespaceView> {
    let route_totals = lock(&state.routes).totals();
    let move_totals = lock(&state.moves).totals();
    let namespaces = lock(&state.namespaces);
    let ownership = lock(&state.ownership);
    let ctx = state.state_context(ownership.scanned);
    let now = SystemTime::now();
    let none = Owner::default();
    let mut views: Vec<NamespaceView> = namespaces
        .iter()
        .map(|(cookie, ns)| {
            let owner = ownership.owners.get(&ns.inum).filter(|_| ns.destroyed_at.is_none()).unwrap_or(&none);
            let (lookups, failures) = route_totals.get(&cookie).copied().unwrap_or_default();
            let moves = move_totals.get(&cookie).copied().unwrap_or_default();
            NamespaceView {
                netns: ns.inum,
                cookie,
                state: states::classify(ns, Some(owner), &ctx).as_str().to_owned(),
                names: owner.names.iter().cloned().collect(),
                age_seconds: now.duration_since(ns.first_seen).unwrap_or_default().as_secs_f64(),
                created: ns.created.as_ref().map(|_| journal::format_time(ns.first_seen)),
                creator: ns.created.as_ref().map(|c| CreatorView {
                    pid: c.pid,
                    comm: c.comm.clone(),
                    container_id: c.container_id.clone(),
                    setup_ms: c.setup_ms,
                }),
                main_process: owner.main.as_ref().map(|m| ProcessView { pid: m.pid, comm: m.comm.clone() }),
                processes: owner.processes,
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
                    .map(|h| h.iter().map(holder_view).collect())
                    .unwrap_or_default(),
            }
        })
        .collect();
    views.sort_by_key(|v| v.netns);
    views
}

fn holder_view(h: &Holder) -> HolderView {
    HolderView { pid: h.pid, comm: h.comm.clone(), fd: h.fd, kind: h.kind.to_owned() }
}

/// `/api/v1/events?netns=&since=&limit=`.
pub fn events(state: &AgentState, netns: Option<u32>, since: u64, limit: usize) -> EventsView {
    let journal = lock(&state.journal);
    EventsView { events: journal.query(netns, since, limit), last_seq: journal.last_seq() }
}

/// Per-cookie totals, for the views.
pub type Totals<T> = HashMap<u64, T>;
