//! Network namespace lifecycle: creation, setup time and failures, teardown, the set alive.
//!
//! Kernel side: `ebpf/src/lifecycle.rs`. User side: `agent/src/lifecycle.rs`.

use crate::COMM_LEN;

/// Slots of the `LIFECYCLE_COUNTERS` array (plain u64 counters updated with atomic adds:
/// namespace churn is far too rare for per-CPU maps to pay off).
pub mod counter {
    /// Namespaces created (successful `copy_net_ns` with `CLONE_NEWNET`).
    pub const CREATED: u32 = 0;
    /// Namespaces whose teardown the agent observed (each counted once).
    pub const DESTROYED: u32 = 1;
    /// Namespaces alive now (two's complement; the walk at start-up seeds it).
    pub const ALIVE: u32 = 2;
    /// Creations that failed.
    pub const SETUP_FAILURES: u32 = 3;
    /// Sum of the observed setup durations, nanoseconds (the count is the buckets' sum).
    pub const SETUP_SUM_NS: u32 = 4;
    /// Creations whose comm did not fit in `CREATED_BY_COMM` (counted under one label).
    pub const CREATED_COMM_OVERFLOW: u32 = 5;
    /// Namespaces the `LIVE` map had no room for (raise `limits.kernel_namespaces`).
    pub const LIVE_FULL: u32 = 6;
    /// Namespaces the periodic inventory found gone without a teardown event.
    pub const RECONCILED: u32 = 7;
    /// Failed creations whose comm did not fit in `FAILED_BY_COMM`.
    pub const FAILED_COMM_OVERFLOW: u32 = 8;
    /// Tracepoint mode: calls asking for a network namespace that failed with an error some
    /// other step of the same call also returns, so no probe tells whether the namespace's
    /// setup failed (ENOMEM; ENOSPC when other namespaces were asked for too).
    pub const SETUP_FAILURES_UNATTRIBUTED: u32 = 9;
    /// Number of slots.
    pub const COUNT: u32 = 10;
}

/// Upper bounds of the setup-duration histogram buckets, nanoseconds. Shared by the kernel
/// (which counts into buckets) and user space (which renders `le` labels), so the two can
/// never disagree. A last, implicit bucket catches everything above.
pub const SETUP_BUCKETS_NS: [u64; 14] = [
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];

/// Slots in the `SETUP_HISTOGRAM` array: one per bound plus the overflow bucket.
pub const SETUP_HISTOGRAM_SLOTS: u32 = SETUP_BUCKETS_NS.len() as u32 + 1;

/// What the kernel knows about a namespace it tracks in the `LIVE` map (key: `net_cookie`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsRecord {
    /// `net->ns.inum`: the inode number users see; reused by later namespaces.
    pub inum: u32,
    /// Tgid of the creating process; 0 when the namespace predates the agent.
    pub creator_pid: u32,
    /// `bpf_ktime_get_boot_ns()` at creation, or at discovery for namespaces found by the walk.
    pub seen_ns: u64,
    /// `net->core.prot_inuse`: the key of this namespace in `TEARDOWN_MARKERS`.
    pub prot_inuse: u64,
    /// The `struct net *`, valid until teardown (the kernel frees it later).
    pub net: u64,
}

const _: () = assert!(core::mem::size_of::<NetnsRecord>() == 32);

/// One lifecycle event, sent to user space through the `LIFECYCLE_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// `NETNS_CREATED`, `NETNS_DESTROYED` or `NETNS_SETUP_FAILED` from `events::kind`.
    pub kind: u32,
    /// For failures: the negative errno.
    pub error: i32,
    /// `net->net_cookie` (0 for failures).
    pub cookie: u64,
    /// `net->ns.inum` (0 for failures).
    pub inum: u32,
    /// Tgid of the process that asked (creation, failure) or whose call dropped the last
    /// reference (teardown; often a kworker).
    pub pid: u32,
    /// Tgid of the task that entered the new namespace (the child of a clone, the caller of
    /// unshare); 0 when not known at this probe.
    pub member_pid: u32,
    _pad: u32,
    /// `bpf_ktime_get_boot_ns()` when it happened.
    pub ts_ns: u64,
    /// Setup time for creations, 0 when not measured.
    pub duration_ns: u64,
    /// Comm of `pid` (raw bytes from the kernel: untrusted, not necessarily UTF-8).
    pub comm: [u8; COMM_LEN],
    /// The cgroup (v2 id, the inode of its cgroupfs directory) of the task that asked: names
    /// a container runtime's container even after that task (`runc:[1:CHILD]`) has exited.
    pub cgroup_id: u64,
}

impl LifecycleEvent {
    /// An event with every field but the kind zeroed.
    pub const fn new(kind: u32) -> Self {
        Self {
            kind,
            error: 0,
            cookie: 0,
            inum: 0,
            pid: 0,
            member_pid: 0,
            _pad: 0,
            ts_ns: 0,
            duration_ns: 0,
            comm: [0; COMM_LEN],
            cgroup_id: 0,
        }
    }
}

const _: () = assert!(core::mem::size_of::<LifecycleEvent>() == 72);

/// A creation in flight: stored at the start of `copy_net_ns`/`unshare`/`clone`, consumed at
/// its end (key: the thread id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingCreate {
    /// `bpf_ktime_get_boot_ns()` at the start.
    pub start_ns: u64,
    /// The call's `CLONE_*` flags.
    pub flags: u64,
}

crate::user_pod!(NetnsRecord, LifecycleEvent, PendingCreate);
