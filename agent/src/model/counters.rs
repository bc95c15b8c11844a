//! The kernel's counters as plain data, read from the maps by the families at snapshot time
//! (nothing is cached in user space: the maps are the truth).

use netns_agent_common::{lifecycle::SETUP_HISTOGRAM_SLOTS, moves::MoveCounts, routes::result};

/// Lifecycle counters (`ebpf/src/lifecycle.rs`).
#[derive(Clone, Debug, PartialEq)]
pub struct LifecycleCounters {
    /// Creations by the creator's comm (label-safe).
    pub created_by_comm: Vec<(String, u64)>,
    /// Creations whose comm the per-comm table had no room for.
    pub created_comm_overflow: u64,
    pub setup_failures: u64,
    /// Failed creations by the comm of the process that asked (label-safe).
    pub failed_by_comm: Vec<(String, u64)>,
    /// Failed creations whose comm the per-comm table had no room for.
    pub failed_comm_overflow: u64,
    /// Tracepoint mode: failed calls no probe can tell a setup failure from another's.
    pub setup_failures_unattributed: u64,
    /// Setup-time histogram: one count per bucket (not cumulative), the last one +Inf.
    pub setup_buckets: Vec<u64>,
    pub setup_sum_ns: u64,
    pub destroyed: u64,
    pub alive: u64,
    pub live_full: u64,
    pub reconciled: u64,
}

impl Default for LifecycleCounters {
    fn default() -> Self {
        Self {
            created_by_comm: Vec::new(),
            created_comm_overflow: 0,
            setup_failures: 0,
            failed_by_comm: Vec::new(),
            failed_comm_overflow: 0,
            setup_failures_unattributed: 0,
            setup_buckets: vec![0; SETUP_HISTOGRAM_SLOTS as usize],
            setup_sum_ns: 0,
            destroyed: 0,
            alive: 0,
            live_full: 0,
            reconciled: 0,
        }
    }
}

/// One route counter key and its counts by result (`ebpf/src/routes.rs`): whole lookups
/// by outcome (`kind::LOOKUP`), or lookups in one table (`kind::TABLE`, detail).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteCount {
    pub cookie: u64,
    pub family: u16,
    pub kind: u16,
    pub table: u32,
    pub by_result: [u64; result::COUNT],
}

/// Everything the kernel counts, at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    pub lifecycle: LifecycleCounters,
    pub events_lost: u64,
    /// When the last teardown batch ended (boot ns); `None` when the teardown-batch probe is
    /// not attached (then a teardown is taken as finished when it begins).
    pub cleanup_end_ns: Option<u64>,
    pub routes: Vec<RouteCount>,
    pub route_keys_full: u64,
    /// Device moves by namespace cookie.
    pub moves: Vec<(u64, MoveCounts)>,
}
