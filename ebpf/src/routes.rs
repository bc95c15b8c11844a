//! Route lookups, counted per namespace, family, table and result: the hot path.
//!
//! One per-CPU hash update per lookup, no events, no locks. Attribution (the namespace the
//! lookup really happens in):
//! - a hit: the namespace of the result's nexthop device (`nhc->nhc_dev->nd_net`), exact in
//!   every mode (routes only point at devices of their own namespace);
//! - IPv6: the lookup's `struct net` is an argument in every mode: exact;
//! - an IPv4 miss, fentry/kprobe: the owner of the `fib_table` searched (recorded when a
//!   namespace appears, learned from the table's hits, forgotten at teardown); for a table
//!   that never hit, an output lookup belongs to the caller's namespace and an input lookup
//!   is unknown;

//! - an IPv4 miss, tracepoint (no table pointer there): an input lookup (`flowi4_iif` not
//!   loopback) belongs to the device whose packet this CPU is receiving (`RX_SLOT`, set by
//!   `netif_receive_skb`, cleared when the NET_RX softirq ends) if its ifindex matches, else
//!   unknown; an output lookup inside that softirq (ICMP errors, TCP resets) belongs to the
//!   receiving device's namespace too; outside it, to the current task's namespace.
//!
//! `fib_table_lookup(struct fib_table *, const struct flowi4 *, struct fib_result *, int)`
//! returns 0, -EAGAIN (no match in this table), or the error of the matched route type.
//! `fib6_table_lookup(struct net *, struct fib6_table *, int oif, struct flowi6 *,
//! struct fib6_result *, int strict)` leaves `res->f6i` at the namespace's null entry on a
//! miss. Tracepoints: `fib:fib_table_lookup(u32 tb_id, const struct flowi4 *,
//! const struct fib_nh_common *, int err)`, `fib6:fib6_table_lookup(const struct net *,
//! const struct fib6_result *, struct fib6_table *, const struct flowi6 *)`.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::{btf_tracepoint, fexit, kprobe, kretprobe, map},
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, FExitContext, ProbeContext, RetProbeContext},
};
use netns_agent_common::{
    limits::{IN_FLIGHT, ROUTE_KEYS},
    routes::{LookupFrames, RouteCounts, RouteKey, RxSlot, UNKNOWN_NETNS, family, result},
};

use crate::{
    kernel::{current_net, offset, read},
    netns::{self, dev_cookie, net_cookie},
};

/// Lookups by (namespace, table, family), one counter per result. Sized by the agent; not
/// preallocated, so memory follows the keys in use rather than max_entries x CPUs.
#[map]
static ROUTE_LOOKUPS: PerCpuHashMap<RouteKey, RouteCounts> =
    PerCpuHashMap::with_max_entries(ROUTE_KEYS, BPF_F_NO_PREALLOC);

/// Lookups not counted because `ROUTE_LOOKUPS` was full (slot 0).
#[map]
static ROUTE_KEYS_FULL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The device whose packet this CPU is receiving (tracepoint mode).
#[map]
static RX_SLOT: PerCpuArray<RxSlot> = PerCpuArray::with_max_entries(1, 0);

/// Arguments of lookups in flight, by thread (kprobe mode only).
#[map]
static LOOKUPS_IN_FLIGHT: LruHashMap<u32, LookupFrames> = LruHashMap::with_max_entries(IN_FLIGHT, 0);

const EEXIST: i32 = -17;
const LOOPBACK_IFINDEX: i32 = 1;
const NET_RX_SOFTIRQ: u32 = 3;
const RTN_BLACKHOLE: u8 = 6;
const RTN_UNREACHABLE: u8 = 7;
const RTN_PROHIBIT: u8 = 8;
const RTN_THROW: u8 = 9;

#[inline(always)]
fn count(cookie: u64, table: u32, family: u32, result: usize) {
    let key = RouteKey { cookie, table, family };
    if result >= result::COUNT {
        return;
    }
    if let Some(counts) = ROUTE_LOOKUPS.get_ptr_mut(key) {
        // SAFETY: this CPU's value; BPF programs do not migrate while they run.
        unsafe { (*counts).by_result[result] += 1 };
        return;
    }
    let mut fresh = RouteCounts::default();
    fresh.by_result[result] = 1;
    match ROUTE_LOOKUPS.insert(key, fresh, u64::from(BPF_NOEXIST)) {
        Ok(()) => {}
        Err(EEXIST) => {
            if let Some(counts) = ROUTE_LOOKUPS.get_ptr_mut(key) {
                // SAFETY: as above.
                unsafe { (*counts).by_result[result] += 1 };
            }
        }
        Err(_) => {
            if let Some(full) = ROUTE_KEYS_FULL.get_ptr_mut(0) {
                // SAFETY: this CPU's slot.
                unsafe { *full += 1 };
            }
        }
    }
}

/// Namespace of a hit, from its nexthop device.
#[inline(always)]
fn nhc_cookie(nhc: u64) -> u64 {
    match read::<u64>(nhc, offset!(nhc_dev)) {
        Ok(dev) if dev != 0 => dev_cookie(dev),
        _ => UNKNOWN_NETNS,
    }
}

#[inline(always)]
fn v4_result(err: i32) -> usize {
    match err {
        0 => result::HIT,
        -11 => result::NO_ROUTE,     // EAGAIN
        -113 => result::UNREACHABLE, // EHOSTUNREACH
        -13 => result::PROHIBIT,     // EACCES
        -22 => result::BLACKHOLE,    // EINVAL
        _ => result::ERROR,
    }
}

/// Result of an IPv6 lookup from its `fib6_result`.
#[inline(always)]
fn v6_result(net: u64, res: u64) -> usize {
    let kind: u8 = read(res, offset!(fib6_result_type)).unwrap_or(0);
    match kind {
        RTN_BLACKHOLE => result::BLACKHOLE,
        RTN_PROHIBIT => result::PROHIBIT,
        RTN_THROW => result::NO_ROUTE,
        RTN_UNREACHABLE => {
            // The namespace's null entry (what a miss returns) is an unreachable route too.
            let f6i: u64 = read(res, offset!(fib6_result_f6i)).unwrap_or(0);
            let null: u64 = read(net, offset!(net_fib6_null_entry)).unwrap_or(0);
            if f6i == 0 || f6i == null { result::NO_ROUTE } else { result::UNREACHABLE }
        }
        _ => result::HIT,
    }
}

// ---- IPv4, tracepoint --------------------------------------------------------------------

#[inline(always)]
fn tracepoint_miss_cookie(flp: u64) -> u64 {
    // SAFETY: bpf_get_current_task only returns a pointer value.
    let task = unsafe { bpf_get_current_task() };
    let rx_dev = match RX_SLOT.get(0) {
        Some(slot) if slot.dev != 0 && slot.task == task => slot.dev,
        _ => 0,
    };
    let iif: i32 = read(flp, offset!(flowi4_iif)).unwrap_or(0);
    if iif != 0 && iif != LOOPBACK_IFINDEX {
        // An input lookup: only trusted for the packet this CPU is receiving.
        if rx_dev != 0 && read::<i32>(rx_dev, offset!(netdev_ifindex)) == Ok(iif) {
            return dev_cookie(rx_dev);
        }
        return UNKNOWN_NETNS;
    }
    if rx_dev != 0 {
        return dev_cookie(rx_dev);
    }
    current_net().map(net_cookie).unwrap_or(UNKNOWN_NETNS)
}

#[btf_tracepoint(function = "fib_table_lookup")]
pub fn routes_v4_tracepoint(ctx: BtfTracePointContext) -> u32 {
    let table: u32 = ctx.arg(0);
    let flp: u64 = ctx.arg(1);
    let nhc: u64 = ctx.arg(2);
    let err: i32 = ctx.arg(3);
    let cookie = if nhc != 0 { nhc_cookie(nhc) } else { tracepoint_miss_cookie(flp) };
    count(cookie, table, family::IPV4, v4_result(err));
    0
}

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn routes_rx_begin(ctx: BtfTracePointContext) -> u32 {
    let skb: u64 = ctx.arg(0);
    if let Some(slot) = RX_SLOT.get_ptr_mut(0) {
        let dev: u64 = read(skb, offset!(skb_dev)).unwrap_or(0);
        // SAFETY: this CPU's slot; the helper only returns a pointer value.
        unsafe {
            (*slot).dev = dev;
            (*slot).task = bpf_get_current_task();
        }
    }
    0
}

#[btf_tracepoint(function = "softirq_exit")]
pub fn routes_rx_end(ctx: BtfTracePointContext) -> u32 {
    let vec: u32 = ctx.arg(0);
    if vec == NET_RX_SOFTIRQ
        && let Some(slot) = RX_SLOT.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot.
        unsafe { (*slot).dev = 0 };
    }
    0
}

// ---- IPv4, fentry / kprobe ---------------------------------------------------------------

#[inline(always)]
fn v4_returned(tb: u64, flp: u64, res: u64, err: i32) {
    let table: u32 = read(tb, offset!(fib_table_id)).unwrap_or(0);
    let owner = netns::table_owner(tb);
    let cookie = if err == 0 {
        let cookie = read::<u64>(res, offset!(fib_result_nhc)).map(nhc_cookie).unwrap_or(UNKNOWN_NETNS);
        // Tables appear lazily (a new namespace has none until its first route) and rules
        // split local from main: learn each table's owner from its hits.
        if cookie != UNKNOWN_NETNS && owner != cookie {
            netns::set_table_owner(tb, cookie);
        }
        cookie
    } else if owner != UNKNOWN_NETNS && netns::is_alive(owner) {
        // The owner is checked alive: a table of a dead namespace may have been freed and
        // its memory reused for another namespace's table.
        owner
    } else {
        // A table that never hit: an output lookup (iif loopback) runs for the caller's own
        // socket in process context; an input lookup cannot be placed.
        let iif: i32 = read(flp, offset!(flowi4_iif)).unwrap_or(0);
        if iif == 0 || iif == LOOPBACK_IFINDEX {
            current_net().map(net_cookie).unwrap_or(UNKNOWN_NETNS)
        } else {
            UNKNOWN_NETNS
        }
    };
    count(cookie, table, family::IPV4, v4_result(err));
}

#[fexit(function = "fib_table_lookup")]
pub fn routes_v4_fexit(ctx: FExitContext) -> u32 {
    // fexit context: the four arguments, then the int return value.
    v4_returned(ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(4));
    0
}

#[inline(always)]
fn push_frame(frame: [u64; 3]) {
    let tid = bpf_get_current_pid_tgid() as u32;
    if LOOKUPS_IN_FLIGHT.get_ptr_mut(tid).is_none() {
        let _ = LOOKUPS_IN_FLIGHT.insert(tid, LookupFrames::default(), u64::from(BPF_NOEXIST));
    }
    if let Some(frames) = LOOKUPS_IN_FLIGHT.get_ptr_mut(tid) {
        // SAFETY: the entry belongs to this thread; only it pushes and pops.
        let frames = unsafe { &mut *frames };
        if frames.depth as usize >= frames.frames.len() {
            // Returns were missed (kretprobe maxactive): start over rather than drift.
            frames.depth = 0;
        }
        frames.frames[frames.depth as usize & 3] = frame;
        frames.depth += 1;
    }
}

#[inline(always)]
fn pop_frame() -> Option<[u64; 3]> {
    let tid = bpf_get_current_pid_tgid() as u32;
    let frames = LOOKUPS_IN_FLIGHT.get_ptr_mut(tid)?;
    // SAFETY: as in push_frame.
    let frames = unsafe { &mut *frames };
    if frames.depth == 0 {
        return None;
    }
    frames.depth -= 1;
    Some(frames.frames[frames.depth as usize & 3])
}

#[kprobe]
pub fn routes_v4_kprobe(ctx: ProbeContext) -> u32 {
    push_frame([ctx.arg(0).unwrap_or(0), ctx.arg(2).unwrap_or(0), ctx.arg(1).unwrap_or(0)]);
    0
}

#[kretprobe]
pub fn routes_v4_kretprobe(ctx: RetProbeContext) -> u32 {
    if let Some([tb, res, flp]) = pop_frame() {
        v4_returned(tb, flp, res, ctx.ret());
    }
    0
}

// ---- IPv6 -------------------------------------------------------------------------------

#[inline(always)]
fn v6_lookup(net: u64, table: u64, res: u64) {
    let table_id: u32 = if table != 0 { read(table, offset!(fib6_table_id)).unwrap_or(0) } else { 0 };
    count(net_cookie(net), table_id, family::IPV6, v6_result(net, res));
}

#[btf_tracepoint(function = "fib6_table_lookup")]
pub fn routes_v6_tracepoint(ctx: BtfTracePointContext) -> u32 {
    v6_lookup(ctx.arg(0), ctx.arg(2), ctx.arg(1));
    0
}

#[fexit(function = "fib6_table_lookup")]
pub fn routes_v6_fexit(ctx: FExitContext) -> u32 {
    v6_lookup(ctx.arg(0), ctx.arg(1), ctx.arg(4));
    0
}

#[kprobe]
pub fn routes_v6_kprobe(ctx: ProbeContext) -> u32 {
    push_frame([ctx.arg(0).unwrap_or(0), ctx.arg(4).unwrap_or(0), ctx.arg(1).unwrap_or(0)]);
    0
}

#[kretprobe]
pub fn routes_v6_kretprobe(_ctx: RetProbeContext) -> u32 {
    if let Some([net, res, table]) = pop_frame() {
        v6_lookup(net, table, res);
    }
    0
}
