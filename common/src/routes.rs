//! Route lookups (`fib_table_lookup`, `fib6_table_lookup`): the per-packet hot path, counted
//! in per-CPU maps in the kernel and folded by user space at scrape time.
//!
//! Kernel side: `ebpf/src/routes.rs`. User side: `agent/src/families/routes.rs`.

/// Address families of a lookup.
pub mod family {
    pub const IPV4: u16 = 4;
    pub const IPV6: u16 = 6;
}

/// What a lookup returned; the index into [`RouteCounts::by_result`].
///
/// A route lookup walks tables in order (the policy rules; without rules IPv4 searches
/// `main` then `default`, IPv6 `local` then `main`) and the last table's answer is the
/// lookup's. Counted twice over: per lookup by its outcome (a lookup that found a route in
/// any table is a `hit`), and, as optional detail, per table consulted.
pub mod result {
    /// A route matched (any type that forwards or delivers).
    pub const HIT: usize = 0;
    /// No route: per lookup, none in any table (-ENETUNREACH); per table, none in this one
    /// (-EAGAIN, or IPv6's null entry), so the walk went on.
    pub const NO_ROUTE: usize = 1;
    /// An `unreachable` route matched (-EHOSTUNREACH).
    pub const UNREACHABLE: usize = 2;
    /// A `prohibit` route matched (-EACCES).
    pub const PROHIBIT: usize = 3;
    /// A `blackhole` route matched (-EINVAL).
    pub const BLACKHOLE: usize = 4;
    /// Any other error.
    pub const ERROR: usize = 5;
    /// Per lookup only, tracepoint mode: a table without a route in a namespace with policy
    /// rules. The walk went on to a later rule (whose answer is counted) or ended without a
    /// route: no tracepoint shows which, so it is counted as unresolved, not guessed.
    pub const UNRESOLVED: usize = 6;
    /// Number of results.
    pub const COUNT: usize = 7;
    /// Label values, by index.
    pub const NAMES: [&str; COUNT] =
        ["hit", "no_route", "unreachable", "prohibit", "blackhole", "error", "unresolved"];
}

/// What a [`RouteKey`] counts.
pub mod kind {
    /// Whole lookups, by outcome (`table` is 0).
    pub const LOOKUP: u16 = 0;
    /// Lookups in one table (detail, when the agent asks for it).
    pub const TABLE: u16 = 1;
}

/// Routing table ids the walks name.
pub mod table {
    pub const DEFAULT: u32 = 253;
    pub const MAIN: u32 = 254;
    pub const LOCAL: u32 = 255;
}

/// `net_cookie` of lookups that could not be attributed to a namespace.
pub const UNKNOWN_NETNS: u64 = 0;

/// Key of the `ROUTE_LOOKUPS` per-CPU hash: one namespace, family, kind and table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    /// `net_cookie` of the namespace, or [`UNKNOWN_NETNS`].
    pub cookie: u64,
    /// The routing table id (255 local, 254 main, 253 default, or another number); 0 for
    /// [`kind::LOOKUP`].
    pub table: u32,
    /// One of [`family`].
    pub family: u16,
    /// One of [`kind`].
    pub kind: u16,
}

const _: () = assert!(core::mem::size_of::<RouteKey>() == 16);

/// Per-CPU value of `ROUTE_LOOKUPS`: one counter per result, so one map lookup per event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteCounts {
    pub by_result: [u64; result::COUNT],
}

/// Lines of the per-CPU array `ROUTE_LINES` (a power of two): each counts the whole lookups
/// of one namespace, both families, at the index the low bits of its cookie pick. The hot
/// path then needs no hash lookup. User space gives a line to a namespace it tracks when the
/// line is free, and takes it back when it forgets the namespace; a namespace without a line
/// (before it got one, or while another holds it) counts in `ROUTE_LOOKUPS`. User space sums
/// both, so counts stay exact whichever path a lookup took.
pub const ROUTE_LINES: u32 = 256;

/// The line of a namespace cookie in `ROUTE_LINES`.
pub const fn route_line(cookie: u64) -> u32 {
    (cookie as u32) & (ROUTE_LINES - 1)
}

/// One CPU's value of a `ROUTE_LINES` entry: whole lookups (kind [`kind::LOOKUP`]) of the
/// namespace `cookie` (0: free; written by user space only), IPv4 at index 0, IPv6 at 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteLine {
    pub cookie: u64,
    pub by_family: [RouteCounts; 2],
}

impl RouteLine {
    /// The index of `family` in [`RouteLine::by_family`].
    pub const fn family_index(family: u16) -> usize {
        if family == family::IPV4 { 0 } else { 1 }
    }
}

/// The namespace that owns an IPv4 `fib_table` (`TABLE_OWNER`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableOwner {
    pub cookie: u64,
    /// Its `struct net *`, valid while `cookie` is alive.
    pub net: u64,
}

/// What the receive path last handed to this CPU (`RX_SLOT`, per-CPU): lets tracepoint mode
/// attribute lookups made in softirq, where `current` is whatever task was interrupted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxSlot {
    /// The `struct sk_buff *` being received; 0 once its receive or the NET_RX softirq ends.
    /// The packet, not its device: devices stacked on others (macvlan, ipvlan, vlan, a
    /// `bpf_redirect_peer`) change `skb->dev` after `netif_receive_skb` fired, so the device
    /// is read when a lookup asks.
    pub skb: u64,
    /// The task that was current when it was set (the slot is only trusted for it).
    pub task: u64,
}

/// A per-CPU note that task `task` is inside `depth` nested sections of one kind: a
/// device's transmit (`XMIT_SLOT`), or a softirq (`SOFTIRQ_SLOT`). Lookups made there are
/// not the task's own: a device's transmit (`ndo_start_xmit`) looks routes up for the
/// device (a tunnel, vxlan, geneve, GRE or IPIP, looks up its underlay's route, in the
/// namespace it was made in), and a softirq (a TCP retransmit timer, a packet's receive)
/// runs for whatever socket or packet it serves while an unrelated task is current. A miss
/// there has no device to place it, so it is unknown unless its table's owner is known.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NestSlot {
    /// Sections begun and not yet ended: transmits nest (a tunnel's transmit holds its
    /// underlay device's); softirqs do not (0 or 1).
    pub depth: u64,
    /// The task that was current when the outermost began (the note is only trusted for it).
    pub task: u64,
}

/// Lookups in flight for kprobe mode (key: thread id): the arguments the return probe needs,
/// as a small stack because a softirq can nest a lookup inside a task's lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupFrames {
    pub depth: u32,
    _pad: u32,
    /// (table or net or rules ops, result, table6) per nesting level: a rules walk, the table
    /// lookups inside it, and a softirq's lookup nested in a task's.
    pub frames: [[u64; 3]; 8],
}

crate::user_pod!(RouteKey, RouteCounts, RouteLine, RxSlot, NestSlot, LookupFrames, TableOwner);
