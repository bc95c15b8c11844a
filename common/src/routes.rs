//! Route lookups (`fib_table_lookup`, `fib6_table_lookup`): the per-packet hot path, counted
//! in per-CPU maps in the kernel and folded by user space at scrape time.
//!
//! Kernel side: `ebpf/src/routes.rs`. User side: `agent/src/routes.rs`.

/// Address families of a lookup.
pub mod family {
    pub const IPV4: u32 = 4;
    pub const IPV6: u32 = 6;
}

/// What a lookup in one table returned; the index into [`RouteCounts::by_result`].
pub mod result {
    /// A route matched (any type that forwards or delivers).
    pub const HIT: usize = 0;
    /// No route in this table (-EAGAIN, or IPv6's null entry); the caller may try the next
    /// table, so a packet with no route anywhere counts once per table consulted.
    pub const NO_ROUTE: usize = 1;
    /// An `unreachable` route matched (-EHOSTUNREACH).
    pub const UNREACHABLE: usize = 2;
    /// A `prohibit` route matched (-EACCES).
    pub const PROHIBIT: usize = 3;
    /// A `blackhole` route matched (-EINVAL).
    pub const BLACKHOLE: usize = 4;
    /// Any other error.
    pub const ERROR: usize = 5;
    /// Number of results.
    pub const COUNT: usize = 6;
    /// Label values, by index.
    pub const NAMES: [&str; COUNT] = ["hit", "no_route", "unreachable", "prohibit", "blackhole", "error"];
}

/// `net_cookie` of lookups that could not be attributed to a namespace.
pub const UNKNOWN_NETNS: u64 = 0;

/// Key of the `ROUTE_LOOKUPS` per-CPU hash: one namespace, family and table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    /// `net_cookie` of the namespace, or [`UNKNOWN_NETNS`].
    pub cookie: u64,
    /// The routing table id (255 local, 254 main, 253 default, or another number).
    pub table: u32,
    /// One of [`family`].
    pub family: u32,
}

const _: () = assert!(core::mem::size_of::<RouteKey>() == 16);

/// Per-CPU value of `ROUTE_LOOKUPS`: one counter per result, so one map lookup per event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteCounts {
    pub by_result: [u64; result::COUNT],
}

/// What the receive path last handed to this CPU (`RX_SLOT`, per-CPU): lets tracepoint mode
/// attribute lookups made in softirq, where `current` is whatever task was interrupted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxSlot {
    /// `skb->dev` of the packet being received; 0 outside NET_RX softirq.
    pub dev: u64,
    /// The task that was current when it was set (the slot is only trusted for it).
    pub task: u64,
}

/// Lookups in flight for kprobe mode (key: thread id): the arguments the return probe needs,
/// as a small stack because a softirq can nest a lookup inside a task's lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupFrames {
    pub depth: u32,
    _pad: u32,
    /// (table or net, result, table6) per nesting level.
    pub frames: [[u64; 3]; 4],
}

crate::user_pod!(RouteKey, RouteCounts, RxSlot, LookupFrames);
