//! The API's objects: what `/api/v1/namespaces` and `/api/v1/events` serve and what the
//! command-line client reads back. Built by the snapshot's join (`snapshot.rs`); the server
//! (`expose`) and the client (`cli`) share them through here.

use serde::{Deserialize, Serialize};

use super::journal::Entry;

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
    /// The holding process's container (from its cgroup), or empty.
    #[serde(default)]
    pub container_id: String,
}

/// What a namespace in a leak state (`orphaned`, `dying`) was last seen as, while a process
/// lived in it or a mount named it: its own labels are empty by then (nothing is in it).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LastKnownView {
    pub names: Vec<String>,
    pub main_process: Option<ProcessView>,
    pub container_id: String,
    pub pod: String,
    pub pod_namespace: String,
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
    /// Since creation (if seen) or first sight; a torn-down namespace stops at its teardown.
    pub age_seconds: f64,
    /// Creation (or first sight) as Unix time, seconds.
    #[serde(default)]
    pub created_unix_seconds: f64,
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
    /// For an orphaned namespace: processes on the host whose file descriptors the agent was
    /// not permitted to check (a missing capability; `check` says which). Holders beyond `holders` may hide
    /// there: with none found, the holder is unknown rather than absent.
    #[serde(default)]
    pub holders_unchecked_processes: u32,
    /// For a namespace in a leak state: what it was last seen as (None: another state, or
    /// never seen with a process or a name).
    #[serde(default)]
    pub last_known: Option<LastKnownView>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EventsView {
    pub events: Vec<Entry>,
    /// Pass as `since` to get only newer events.
    pub last_seq: u64,
}
