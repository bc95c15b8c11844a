//! The ways out: the Prometheus exposition (`metrics`) and the HTTP server with the JSON
//! API (`http`). Both render from a [`crate::model::snapshot::Snapshot`]; nothing here
//! reads the kernel or /proc itself, it asks a [`Source`].

pub mod http;
pub mod metrics;
pub mod web;

use crate::model::{
    journal::Filter,
    snapshot::Snapshot,
    view::{EventsView, NamespaceView},
};

/// What the server serves from. The daemon implements it; tests can fake it.
pub trait Source: Send + Sync + 'static {
    /// A fresh snapshot. Blocking (reads kernel maps): the server calls it on a blocking thread.
    fn snapshot(&self) -> Snapshot;
    /// Journal entries after `since` that pass `filter`, at most `limit`.
    fn events(&self, filter: &Filter, since: u64, limit: usize) -> EventsView;
    /// The namespace inode of a process, or `None` if there is no such process. Blocking.
    fn netns_of_pid(&self, pid: i32) -> Option<u32>;
    /// True once the numbers mean something: probes attached (before the server starts)
    /// and the first scan of processes and mounts done, so owners are known.
    fn ready(&self) -> bool;
}

/// The namespaces of a snapshot, for `/api/v1/namespaces`.
pub fn namespaces(snapshot: Snapshot) -> Vec<NamespaceView> {
    snapshot.namespaces
}
