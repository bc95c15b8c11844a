//! Route lookups, counted per namespace and family by outcome: the hot path.
//!
//! One per-CPU hash update per lookup, no events, no locks. The kernel hooks see each table
//! a lookup consults (`fib_table_lookup`, `fib6_table_lookup`); a lookup's outcome is the
//! answer of the last table its walk consults, and which table that is follows from the
//! namespace's walk (`fib_lookup` in include/net/ip_fib.h, `fib6_rule_lookup`):
//! - IPv4 without policy rules: `main`, then `default` if `main` did not match and the
//!   namespace has a `default` table. Lookups in other tables (the local table's address-type
//!   checks, for one) are not route lookups of a walk: table detail only.
//! - IPv6 without policy rules: `local`, then `main` if `local` had no route.
//! - With policy rules (either family), kprobe and fentry: `fib_rules_lookup` walks the
//!   rules and its return is the lookup's outcome (rule actions included); the table
//!   lookups inside it are detail only.
//! - With policy rules, tracepoint (no tracepoint in `fib_rules_lookup`): a table that answers
//!   (a route, or an unreachable, prohibit or blackhole route) ends the walk; a table without
//!   a route may or may not be the last the rules reach, so it is counted as `unresolved`,
//!   not guessed.
//!
//! Per-table counts are kept as well when the agent asks (`ROUTE_TABLE_DETAIL`).
//!
//! Attribution (the namespace the lookup really happens in):
//! - a hit: the namespace of the result's nexthop device (`nhc->nhc_dev->nd_net`), exact in
//!   every mode (routes only point at devices of their own namespace);
//! - IPv6: the lookup's `struct net` is an argument in every mode: exact;
//! - an IPv4 miss, fentry/kprobe: the owner of the `fib_table` searched (recorded when a
//!   namespace appears, learned from the table's hits, forgotten at teardown); for a table
//!   that never hit, an output lookup belongs to the caller's namespace and an input lookup
//!   is unknown;
//! - an IPv4 miss, tracepoint (no table pointer there): an input lookup (`flowi4_iif` not
//!   loopback) belongs to the device of the packet this CPU is receiving (`RX_SLOT`: the skb,
//!   set by `netif_receive_skb`, cleared when that receive returns (`netif_receive_skb_exit`,
//!   which ends receive in process context: tun/tap writes) or the NET_RX softirq ends) if
//!   that device's ifindex matches, else unknown. The device is `skb->dev` read at the lookup,
//!   not at `netif_receive_skb`: a device stacked on another (macvlan, ipvlan, vlan,
//!   `bpf_redirect_peer`) takes the packet over after that tracepoint, in another namespace
//!   possibly, whose ifindex numbers are its own. An output lookup inside a receive (ICMP
//!   errors, TCP resets) belongs to the receiving device's namespace too; outside, to the
//!   current task's namespace;
//! - an IPv4 output miss where the table's owner is not known, inside a device's transmit
//!   (`XMIT_SLOT`, set by `net_dev_start_xmit`, cleared by `net_dev_xmit`) or a softirq
//!   (`SOFTIRQ_SLOT`, `softirq_entry` to `softirq_exit`) other than inside a receive the
//!   tracepoint mode follows: unknown. A tunnel (vxlan, geneve, GRE, IPIP) looks up its
//!   underlay's route in a transmit, in the namespace the tunnel was made in, from whatever
//!   task is sending; a softirq (a TCP retransmit timer) serves a socket of any namespace
//!   while an unrelated task is current.
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
    offsets::UNKNOWN,
    routes::{
        LookupFrames, NestSlot, ROUTE_LINES, RouteCounts, RouteKey, RouteLine, RxSlot, TableOwner,
        UNKNOWN_NETNS, family, kind, result, route_line, table,
    },
};

use crate::{
    kernel::{Btf, Mem, Probe, atomic_add, current_net, offset, read},
    netns::{self, dev_net},
};

/// Non-zero: also count per table (`routes.table_detail`). Written by the loader; read-only,
/// so the verifier prunes the branch it does not take.
#[unsafe(no_mangle)]
static ROUTE_TABLE_DETAIL: u8 = 0;

/// Lookups by (namespace, family, kind, table), one counter per result. Sized by the agent; not
/// preallocated, so memory follows the keys in use rather than max_entries x CPUs.
#[map]
static ROUTE_LOOKUPS: PerCpuHashMap<RouteKey, RouteCounts> =
    PerCpuHashMap::with_max_entries(ROUTE_KEYS, BPF_F_NO_PREALLOC);

/// Whole lookups of the namespaces user space gave a line, per CPU: the hot path's first stop
/// (an array slot needs no hashing, and the verifier inlines its lookup). User space writes
/// a line's cookie, on every CPU at once, only while no namespace holds it (it gives lines to
/// namespaces it tracks and takes them back when it forgets them); the programs never write
/// a cookie, so a line changes hands without racing a count.
#[map]
static ROUTE_LINES_MAP: PerCpuArray<RouteLine> = PerCpuArray::with_max_entries(ROUTE_LINES, 0);

/// Lookups not counted because `ROUTE_LOOKUPS` was full (slot 0).
#[map]
static ROUTE_KEYS_FULL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The device whose packet this CPU is receiving (tracepoint mode).
#[map]
static RX_SLOT: PerCpuArray<RxSlot> = PerCpuArray::with_max_entries(1, 0);

/// The device transmits this CPU is inside (every mode): an output miss there is a device's
/// (a tunnel's underlay), not the task's.
#[map]
static XMIT_SLOT: PerCpuArray<NestSlot> = PerCpuArray::with_max_entries(1, 0);

/// The softirq this CPU is running (every mode): an output miss there (a TCP retransmit
/// timer's, an ICMP error's) is a socket's or a packet's, not the interrupted task's.
#[map]
static SOFTIRQ_SLOT: PerCpuArray<NestSlot> = PerCpuArray::with_max_entries(1, 0);

/// The table whose owner this CPU last confirmed from a hit (fentry/kprobe): hits in the same
/// table skip the owner hash, whose lookup would otherwise cost every hit.
#[map]
static LAST_OWNED: PerCpuArray<TableOwner> = PerCpuArray::with_max_entries(1, 0);

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

/// Adds one lookup with `result` to `key`'s counters on this CPU: in the namespace's line if
/// it holds one, else in the hash. User space sums both, so a namespace's first lookups,
/// counted in the hash before it got its line, stay counted.
#[inline(always)]
pub(crate) fn count(key: RouteKey, result: usize) {
    if result >= result::COUNT {
        return;
    }
    if key.kind == kind::LOOKUP
        && key.cookie != UNKNOWN_NETNS
        && let Some(line) = ROUTE_LINES_MAP.get_ptr_mut(route_line(key.cookie))
    {
        // SAFETY: this CPU's value; BPF programs do not migrate while they run.
        let line = unsafe { &mut *line };
        if line.cookie == key.cookie {
            // Atomic: see below.
            atomic_add(&raw mut line.by_family[RouteLine::family_index(key.family) & 1].by_result[result], 1);
            return;
        }
    }
    if let Some(counts) = ROUTE_LOOKUPS.get_ptr_mut(key) {
        // An atomic add although the value is this CPU's: fentry/fexit programs run with
        // migration disabled but preemptible (PREEMPT_RT, preempt=full), so another task's
        // program on this CPU can update the same counter between a load and a store.
        // SAFETY: this CPU's value, inside the map value.
        atomic_add(unsafe { &raw mut (*counts).by_result[result] }, 1);
        return;
    }
    let mut fresh = RouteCounts::default();
    fresh.by_result[result] = 1;
    match ROUTE_LOOKUPS.insert(key, fresh, u64::from(BPF_NOEXIST)) {
        Ok(()) => {}
        Err(EEXIST) => {
            if let Some(counts) = ROUTE_LOOKUPS.get_ptr_mut(key) {
                // SAFETY: as above.
                atomic_add(unsafe { &raw mut (*counts).by_result[result] }, 1);
            }
        }
        Err(_) => {
            if let Some(full) = ROUTE_KEYS_FULL.get_ptr_mut(0) {
                atomic_add(full, 1);
            }
        }
    }
}

/// Where one table lookup stands in its walk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// The walk's last table: its answer is the lookup's outcome.
    Ends,
    /// The walk goes on to another table, whose answer is counted.
    GoesOn,
    /// A miss under policy rules: the walk's end is not visible.
    Unresolved,
    /// Not part of a route lookup's walk (address-type checks, direct table lookups).
    Outside,
}

/// A `bool` of `struct net`, or `None` when this kernel has no such field or it cannot be read.
#[inline(always)]
fn net_flag<M: Mem>(net: u64, off: u64) -> Option<bool> {
    if net == 0 || off == u64::from(UNKNOWN) {
        return None;
    }
    M::get::<u8>(net, off).ok().map(|v| v != 0)
}

/// The walk of an IPv4 lookup in `table` of `net` that returned `result`; `rules_hooked`:
/// the program's mode also sees `fib_rules_lookup` return, which counts policy-rule walks.
#[inline(always)]
fn v4_walk<M: Mem>(net: u64, tb_id: u32, result: usize, rules_hooked: bool) -> Walk {
    match net_flag::<M>(net, offset!(net_fib_has_custom_rules)) {
        Some(false) => match tb_id {
            // fib_lookup: `main`, then `default` unless `main` matched or there is none.
            table::MAIN if result == result::HIT => Walk::Ends,
            table::MAIN => match M::get::<u64>(net, offset!(net_fib_default)) {
                Ok(0) => Walk::Ends,
                _ => Walk::GoesOn,
            },
            table::DEFAULT => Walk::Ends,
            _ => Walk::Outside,
        },
        // Policy rules: `fib_rules_lookup`'s return is the outcome, where it is hooked.
        Some(true) if rules_hooked => Walk::Outside,
        // Policy rules unhooked, or a namespace not known: a table that answers ends the walk.
        _ if result == result::NO_ROUTE => Walk::Unresolved,
        _ => Walk::Ends,
    }
}

/// The walk of an IPv6 lookup in table `tb_id` of `net` that returned `result`.
#[inline(always)]
fn v6_walk<M: Mem>(net: u64, tb_id: u32, result: usize, rules_hooked: bool) -> Walk {
    match net_flag::<M>(net, offset!(net_fib6_has_custom_rules)) {
        Some(false) => match tb_id {
            // fib6_rule_lookup: `local`, then `main` unless `local` had a route.
            table::LOCAL if result == result::NO_ROUTE => Walk::GoesOn,
            table::LOCAL | table::MAIN => Walk::Ends,
            _ => Walk::Outside,
        },
        Some(true) if rules_hooked => Walk::Outside,
        _ if result == result::NO_ROUTE => Walk::Unresolved,
        _ => Walk::Ends,
    }
}

/// Counts one table lookup of the namespace `net` (0: unknown), read through `M`.
#[inline(always)]
fn record<M: Mem>(net: u64, tb_id: u32, family: u16, result: usize, walk: Walk) {
    let cookie = netns::key::<M>(net);
    // The whole lookup first: on PREEMPT_RT a program run can get only one new hash key (see
    // `RouteMaps::seed` in the agent), and this is the count that must not be lost.
    let key = RouteKey { cookie, table: 0, family, kind: kind::LOOKUP };
    match walk {
        Walk::Ends => count(key, result),
        Walk::Unresolved => count(key, result::UNRESOLVED),
        Walk::GoesOn | Walk::Outside => {}
    }
    // SAFETY: a read-only global the loader wrote.
    if unsafe { core::ptr::read_volatile(&raw const ROUTE_TABLE_DETAIL) } != 0 {
        count(RouteKey { cookie, table: tb_id, family, kind: kind::TABLE }, result);
    }
}

/// Namespace (`struct net *`) of a hit, from its nexthop device; 0 if unknown.
#[inline(always)]
fn nhc_net<M: Mem>(nhc: u64) -> u64 {
    match M::get::<u64>(nhc, offset!(nhc_dev)) {
        Ok(dev) if dev != 0 => dev_net::<M>(dev),
        _ => 0,
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
fn v6_result<M: Mem>(net: u64, res: u64) -> usize {
    let kind: u8 = M::get(res, offset!(fib6_result_type)).unwrap_or(0);
    match kind {
        RTN_BLACKHOLE => result::BLACKHOLE,
        RTN_PROHIBIT => result::PROHIBIT,
        RTN_THROW => result::NO_ROUTE,
        RTN_UNREACHABLE => {
            // The namespace's null entry (what a miss returns) is an unreachable route too.
            let f6i: u64 = M::get(res, offset!(fib6_result_f6i)).unwrap_or(0);
            let null: u64 = M::get(net, offset!(net_fib6_null_entry)).unwrap_or(0);
            if f6i == 0 || f6i == null { result::NO_ROUTE } else { result::UNREACHABLE }
        }
        _ => result::HIT,
    }
}

// ---- IPv4, tracepoint --------------------------------------------------------------------

/// The namespace of an IPv4 miss in tracepoint mode (`flp`: the tracepoint's argument); a
/// pointer read from a map, so the caller reads it through `Probe`.
#[inline(always)]
fn tracepoint_miss_net(flp: u64) -> u64 {
    // SAFETY: bpf_get_current_task only returns a pointer value.
    let task = unsafe { bpf_get_current_task() };
    let rx_dev = match RX_SLOT.get(0) {
        // The device the packet is on now: the upper one once a stacked device took it.
        Some(slot) if slot.skb != 0 && slot.task == task => {
            read::<u64>(slot.skb, offset!(skb_dev)).unwrap_or(0)
        }
        _ => 0,
    };
    let iif: i32 = Btf::get(flp, offset!(flowi4_iif)).unwrap_or(0);
    if iif != 0 && iif != LOOPBACK_IFINDEX {
        // An input lookup: only trusted for the packet this CPU is receiving.
        if rx_dev != 0 && read::<i32>(rx_dev, offset!(netdev_ifindex)) == Ok(iif) {
            return dev_net::<Probe>(rx_dev);
        }
        return 0;
    }
    if in_nest(&XMIT_SLOT) {
        // A device's own lookup (a tunnel's underlay route): neither the receiving device's
        // namespace nor the task's.
        return 0;
    }
    if rx_dev != 0 {
        return dev_net::<Probe>(rx_dev);
    }
    if in_nest(&SOFTIRQ_SLOT) {
        // A softirq outside a receive (a retransmit timer): not the interrupted task's.
        return 0;
    }
    current_net().unwrap_or(0)
}

/// Whether the current task is inside a section `slot` notes on this CPU.
#[inline(always)]
fn in_nest(slot: &PerCpuArray<NestSlot>) -> bool {
    // SAFETY: bpf_get_current_task only returns a pointer value.
    let task = unsafe { bpf_get_current_task() };
    matches!(slot.get(0), Some(s) if s.depth != 0 && s.task == task)
}

/// Whether a lookup now is made for something other than the current task: inside a
/// device's transmit or a softirq.
#[inline(always)]
fn on_behalf_of_another() -> bool {
    in_nest(&XMIT_SLOT) || in_nest(&SOFTIRQ_SLOT)
}

/// A device's transmit begins (`xmit_one`, before `ndo_start_xmit`). Transmits run with
/// bottom halves off, so one task at a time is inside them on a CPU (on PREEMPT_RT too: there
/// disabling bottom halves takes a per-CPU lock and pins the task); nested ones (a tunnel
/// sending on its underlay device) stack.
#[inline(always)]
fn xmit_begin() {
    if let Some(slot) = XMIT_SLOT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; the helper only returns a pointer value.
        unsafe {
            let task = bpf_get_current_task();
            if (*slot).depth == 0 || (*slot).task != task {
                // Another task's transmit cannot still be running on this CPU: a stale depth
                // (a return this program missed) starts over.
                *slot = NestSlot { depth: 1, task };
            } else if (*slot).depth < 16 {
                (*slot).depth += 1;
            }
        }
    }
}

/// That transmit returned (`net_dev_xmit`, right after `ndo_start_xmit`).
#[inline(always)]
fn xmit_end() {
    if let Some(slot) = XMIT_SLOT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe {
            if (*slot).depth != 0 {
                (*slot).depth -= 1;
            }
        }
    }
}

// One pair per mode: a program belongs to one variant of the probe registry.
#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn routes_xmit_begin(_ctx: BtfTracePointContext) -> u32 {
    xmit_begin();
    0
}

#[btf_tracepoint(function = "net_dev_xmit")]
pub fn routes_xmit_end(_ctx: BtfTracePointContext) -> u32 {
    xmit_end();
    0
}

#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn routes_xmit_begin_fentry(_ctx: BtfTracePointContext) -> u32 {
    xmit_begin();
    0
}

#[btf_tracepoint(function = "net_dev_xmit")]
pub fn routes_xmit_end_fentry(_ctx: BtfTracePointContext) -> u32 {
    xmit_end();
    0
}

#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn routes_xmit_begin_kprobe(_ctx: BtfTracePointContext) -> u32 {
    xmit_begin();
    0
}

#[btf_tracepoint(function = "net_dev_xmit")]
pub fn routes_xmit_end_kprobe(_ctx: BtfTracePointContext) -> u32 {
    xmit_end();
    0
}

/// Counts an IPv4 table lookup of `net`, read through `M`.
#[inline(always)]
fn v4_lookup<M: Mem>(net: u64, tb_id: u32, err: i32, rules_hooked: bool) {
    let result = v4_result(err);
    record::<M>(net, tb_id, family::IPV4, result, v4_walk::<M>(net, tb_id, result, rules_hooked));
}

#[btf_tracepoint(function = "fib_table_lookup")]
pub fn routes_v4_tracepoint(ctx: BtfTracePointContext) -> u32 {
    let table: u32 = ctx.arg(0);
    let flp: u64 = ctx.arg(1);
    let nhc: u64 = ctx.arg(2);
    let err: i32 = ctx.arg(3);
    // A hit's namespace comes through BTF-typed pointers (direct loads); a miss's from a map.
    if nhc != 0 {
        v4_lookup::<Btf>(nhc_net::<Btf>(nhc), table, err, false);
    } else {
        v4_lookup::<Probe>(tracepoint_miss_net(flp), table, err, false);
    }
    0
}

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn routes_rx_begin(ctx: BtfTracePointContext) -> u32 {
    let skb: u64 = ctx.arg(0);
    if let Some(slot) = RX_SLOT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; the helper only returns a pointer value.
        unsafe {
            (*slot).skb = skb;
            (*slot).task = bpf_get_current_task();
        }
    }
    0
}

/// The receive `netif_receive_skb` started is over (every device's, nested or not): in
/// process context (a tun/tap write) no softirq ends it, and the writer's own lookups after
/// it are its namespace's.
#[btf_tracepoint(function = "netif_receive_skb_exit")]
pub fn routes_rx_done(_ctx: BtfTracePointContext) -> u32 {
    if let Some(slot) = RX_SLOT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { (*slot).skb = 0 };
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
        unsafe { (*slot).skb = 0 };
    }
    softirq_end();
    0
}

/// A softirq handler begins on this CPU. Softirqs do not nest on a CPU; on PREEMPT_RT they
/// run in threads, one at a time per CPU (a per-CPU lock), which the task check follows.
#[inline(always)]
fn softirq_begin() {
    if let Some(slot) = SOFTIRQ_SLOT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; the helper only returns a pointer value.
        unsafe { *slot = NestSlot { depth: 1, task: bpf_get_current_task() } };
    }
}

/// That handler returned.
#[inline(always)]
fn softirq_end() {
    if let Some(slot) = SOFTIRQ_SLOT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { (*slot).depth = 0 };
    }
}

#[btf_tracepoint(function = "softirq_entry")]
pub fn routes_softirq_begin(_ctx: BtfTracePointContext) -> u32 {
    softirq_begin();
    0
}

#[btf_tracepoint(function = "softirq_entry")]
pub fn routes_softirq_begin_fentry(_ctx: BtfTracePointContext) -> u32 {
    softirq_begin();
    0
}

#[btf_tracepoint(function = "softirq_exit")]
pub fn routes_softirq_end_fentry(_ctx: BtfTracePointContext) -> u32 {
    softirq_end();
    0
}

#[btf_tracepoint(function = "softirq_entry")]
pub fn routes_softirq_begin_kprobe(_ctx: BtfTracePointContext) -> u32 {
    softirq_begin();
    0
}

#[btf_tracepoint(function = "softirq_exit")]
pub fn routes_softirq_end_kprobe(_ctx: BtfTracePointContext) -> u32 {
    softirq_end();
    0
}

// ---- IPv4, fentry / kprobe ---------------------------------------------------------------

/// `fib_table_lookup(tb, flp, res)` returned `err`; the arguments are read through `M`.
#[inline(always)]
fn v4_returned<M: Mem>(tb: u64, flp: u64, res: u64, err: i32) {
    let tb_id: u32 = M::get(tb, offset!(fib_table_id)).unwrap_or(0);
    if err == 0 {
        let net = M::get::<u64>(res, offset!(fib_result_nhc)).map(nhc_net::<M>).unwrap_or(0);
        // Tables appear lazily (a new namespace has none until its first route) and rules
        // split local from main: learn each table's owner from its hits. `cookie` holds the
        // table pointer in this per-CPU note.
        if let Some(last) = LAST_OWNED.get_ptr_mut(0) {
            // SAFETY: this CPU's value; a nested run at worst redoes the check below.
            let last = unsafe { &mut *last };
            if net != 0 && (last.cookie != tb || last.net != net) {
                if netns::table_owner(tb).net != net {
                    netns::set_table_owner(tb, netns::key::<M>(net), net);
                }
                *last = TableOwner { cookie: tb, net };
            }
        }
        v4_lookup::<M>(net, tb_id, err, true);
        return;
    }
    let owner = netns::table_owner(tb);
    // The pointers below come from a map or the task: read through `Probe`.
    let net = if owner.cookie != UNKNOWN_NETNS && netns::is_alive(owner.cookie) {
        // The owner is checked alive: a table of a dead namespace may have been freed and
        // its memory reused for another namespace's table.
        owner.net
    } else {
        // A table that never hit: an output lookup (iif loopback) runs for the caller's own
        // socket in process context, unless a device's transmit (a tunnel's underlay) or a
        // softirq (a retransmit timer) makes it; an input lookup cannot be placed.
        let iif: i32 = M::get(flp, offset!(flowi4_iif)).unwrap_or(0);
        if (iif == 0 || iif == LOOPBACK_IFINDEX) && !on_behalf_of_another() {
            current_net().unwrap_or(0)
        } else {
            0
        }
    };
    v4_lookup::<Probe>(net, tb_id, err, true);
}

#[fexit(function = "fib_table_lookup")]
pub fn routes_v4_fexit(ctx: FExitContext) -> u32 {
    // fexit context: the four arguments, then the int return value.
    v4_returned::<Btf>(ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(4));
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
        frames.frames[frames.depth as usize & 7] = frame;
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
    Some(frames.frames[frames.depth as usize & 7])
}

#[kprobe]
pub fn routes_v4_kprobe(ctx: ProbeContext) -> u32 {
    push_frame([ctx.arg(0).unwrap_or(0), ctx.arg(2).unwrap_or(0), ctx.arg(1).unwrap_or(0)]);
    0
}

#[kretprobe]
pub fn routes_v4_kretprobe(ctx: RetProbeContext) -> u32 {
    if let Some([tb, res, flp]) = pop_frame() {
        v4_returned::<Probe>(tb, flp, res, ctx.ret());
    }
    0
}

// ---- IPv6 -------------------------------------------------------------------------------

/// An IPv6 table lookup; the arguments are read through `M`.
#[inline(always)]
fn v6_lookup<M: Mem>(net: u64, table: u64, res: u64, rules_hooked: bool) {
    let tb_id: u32 = if table != 0 { M::get(table, offset!(fib6_table_id)).unwrap_or(0) } else { 0 };
    let result = v6_result::<M>(net, res);
    record::<M>(net, tb_id, family::IPV6, result, v6_walk::<M>(net, tb_id, result, rules_hooked));
}

#[btf_tracepoint(function = "fib6_table_lookup")]
pub fn routes_v6_tracepoint(ctx: BtfTracePointContext) -> u32 {
    v6_lookup::<Btf>(ctx.arg(0), ctx.arg(2), ctx.arg(1), false);
    0
}

/// fentry and kprobe modes: the same tracepoint as tracepoint mode, so that every mode counts
/// the same lookups (it also fires in `ip6_pol_route_lookup`, which a probe on
/// `fib6_table_lookup` misses); lookups under policy rules are counted where
/// `fib_rules_lookup` returns. One program per mode: a program belongs to one variant.
#[btf_tracepoint(function = "fib6_table_lookup")]
pub fn routes_v6_tp_fentry(ctx: BtfTracePointContext) -> u32 {
    v6_lookup::<Btf>(ctx.arg(0), ctx.arg(2), ctx.arg(1), true);
    0
}

#[btf_tracepoint(function = "fib6_table_lookup")]
pub fn routes_v6_tp_kprobe(ctx: BtfTracePointContext) -> u32 {
    v6_lookup::<Btf>(ctx.arg(0), ctx.arg(2), ctx.arg(1), true);
    0
}

// ---- Policy rules (fentry / kprobe) -----------------------------------------------------

const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;

/// `fib_rules_lookup(struct fib_rules_ops *, struct flowi *, int flags, struct
/// fib_lookup_arg *)` returned `err`: one whole lookup of a namespace with policy rules,
/// counted for `family` only (each family's probe has its own program on this function;
/// multicast routing uses it too, under families of its own).
#[inline(always)]
fn rules_returned<M: Mem>(ops: u64, err: i32, family: u16) {
    let ops_family: i32 = M::get(ops, offset!(fib_rules_ops_family)).unwrap_or(0);
    let wanted = if family == family::IPV4 { AF_INET } else { AF_INET6 };
    if ops_family != wanted {
        return;
    }
    let net: u64 = M::get(ops, offset!(fib_rules_ops_fro_net)).unwrap_or(0);
    let result = match err {
        // No rule gave an answer (-ESRCH): no route.
        -3 | -11 => result::NO_ROUTE,
        // An `unreachable` rule action (-ENETUNREACH) or route (-EHOSTUNREACH).
        -101 => result::UNREACHABLE,
        other => v4_result(other),
    };
    let cookie = netns::key::<M>(net);
    count(RouteKey { cookie, table: 0, family, kind: kind::LOOKUP }, result);
}

#[fexit(function = "fib_rules_lookup")]
pub fn routes_v4_rules_fexit(ctx: FExitContext) -> u32 {
    rules_returned::<Btf>(ctx.arg(0), ctx.arg(4), family::IPV4);
    0
}

#[fexit(function = "fib_rules_lookup")]
pub fn routes_v6_rules_fexit(ctx: FExitContext) -> u32 {
    rules_returned::<Btf>(ctx.arg(0), ctx.arg(4), family::IPV6);
    0
}

/// Both families' entry programs push the same frame; each return program pops one, so the
/// stack stays balanced whichever of the two probes attached.
#[kprobe]
pub fn routes_v4_rules_kprobe(ctx: ProbeContext) -> u32 {
    push_frame([ctx.arg(0).unwrap_or(0), 0, 0]);
    0
}

#[kretprobe]
pub fn routes_v4_rules_kretprobe(ctx: RetProbeContext) -> u32 {
    if let Some([ops, _, _]) = pop_frame() {
        rules_returned::<Probe>(ops, ctx.ret(), family::IPV4);
    }
    0
}

#[kprobe]
pub fn routes_v6_rules_kprobe(ctx: ProbeContext) -> u32 {
    push_frame([ctx.arg(0).unwrap_or(0), 0, 0]);
    0
}

#[kretprobe]
pub fn routes_v6_rules_kretprobe(ctx: RetProbeContext) -> u32 {
    if let Some([ops, _, _]) = pop_frame() {
        rules_returned::<Probe>(ops, ctx.ret(), family::IPV6);
    }
    0
}
