//! The inventory walk over `net_namespace_list` (see `netns_agent_common::inventory`).
//!
//! Run by user space through `BPF_PROG_TEST_RUN`, so `current` is the agent's own thread and
//! the program runs inside an RCU read-side section: `cleanup_net` unlinks a namespace with
//! `list_del_rcu` and waits for readers before tearing it down, so every node the walk
//! reaches stays readable. The list head `net_namespace_list` is a bare `list_head` (no
//! `struct net` around it); the walk recognises it because the memory where its
//! `ns.ops` would be does not hold `&netns_operations`, which every namespace shares.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::bpf_loop,
    macros::{map, raw_tracepoint},
    maps::{Array, PerCpuArray},
    programs::RawTracePointContext,
};
use netns_agent_common::{
    inventory::{BOUNDED_WALK, InventoryEntry, InventoryStatus, MAX_WALK},
    routes::UNKNOWN_NETNS,
};

use crate::{
    kernel::{Probe, current_net, now_ns, offset, read},
    lifecycle::{destroyed, seen},
    netns,
};

/// Namespaces found by the last walk, `INVENTORY_STATUS[0].count` of them.
#[map]
static INVENTORY: Array<InventoryEntry> = Array::with_max_entries(MAX_WALK, 0);

#[map]
static INVENTORY_STATUS: Array<InventoryStatus> = Array::with_max_entries(1, 0);

#[repr(C)]
struct Walk {
    head: u64,
    node: u64,
    ops: u64,
    status: InventoryStatus,
}

#[inline(always)]
fn visit(walk: &mut Walk, net: u64) -> Result<(), i64> {
    let refs: u32 = read(net, offset!(net_refcount))?;
    if refs == 0 {
        // Teardown began (`__put_net` ran, `cleanup_net` has not taken it off this list yet).
        // Left out of the entries: the reconciliation after a complete walk ends it (once)
        // if no teardown probe did, which is what tracepoint mode needs for a teardown
        // queued behind a stuck one (it sees a teardown only when its `cleanup_net` runs).
        walk.status.dying += 1;
        return Ok(());
    }
    let cookie = netns::key::<Probe>(net);
    if cookie == UNKNOWN_NETNS {
        return Err(-1);
    }
    let inum: u32 = read(net, offset!(net_inum))?;
    if let Some(slot) = INVENTORY.get_ptr_mut(walk.status.count) {
        // SAFETY: `slot` points into the array's value memory.
        unsafe { *slot = InventoryEntry::new(cookie, inum) };
        walk.status.count += 1;
    }
    if seen(net, cookie, 0, walk.status.started_ns)? {
        walk.status.added += 1;
    }
    Ok(())
}

/// One node of the list: 0 to go on, 1 to stop (the end, or a failed read).
#[inline(always)]
fn step(walk: &mut Walk) -> i64 {
    if walk.node == walk.head {
        walk.status.complete = 1;
        return 1;
    }
    let net = walk.node - offset!(net_list);
    match read::<u64>(net, offset!(net_ns_ops)) {
        Ok(ops) if ops == walk.ops => {
            if visit(walk, net).is_err() {
                return 1;
            }
        }
        Ok(_) => {} // the list head
        Err(_) => return 1,
    }
    match read::<u64>(walk.node, 0) {
        Ok(next) => {
            walk.node = next;
            0
        }
        Err(_) => 1,
    }
}

extern "C" fn walk_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer to the `Walk` on the caller's stack.
    step(unsafe { &mut *(ctx as *mut Walk) })
}

/// The walk with `bpf_loop` (5.17+): up to [`MAX_WALK`] namespaces.
#[raw_tracepoint(tracepoint = "netns_agent_inventory")]
pub fn inventory_walk(_ctx: RawTracePointContext) -> i32 {
    let mut walk = Walk { head: 0, node: 0, ops: 0, status: InventoryStatus::default() };
    let walked = start_walk(&mut walk).and_then(|()| {
        // SAFETY: the callback and its context follow bpf_loop's contract.
        unsafe {
            bpf_loop(MAX_WALK, walk_step as *mut c_void, (&raw mut walk).cast(), 0);
        }
        finish_walk(&walk)
    });
    i32::from(walked.is_err())
}

/// The walk for kernels without `bpf_loop` (5.10-5.16): a bounded loop, which their verifier
/// follows iteration by iteration, so it stops after [`BOUNDED_WALK`] namespaces. A longer
/// list leaves the walk incomplete (`complete` 0), and the agent says so; nothing is guessed.
#[raw_tracepoint(tracepoint = "netns_agent_inventory")]
pub fn inventory_walk_bounded(_ctx: RawTracePointContext) -> i32 {
    // The walk's state lives in a map value, not on the stack: 5.10's verifier tracks stack
    // slots by the bytes written and refuses the loop's reloads of the struct's fields.
    let Some(walk) = WALK_STATE.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's value of the map; the test run holds the CPU (preemption off) for
    // the whole program, so no other walk uses it meanwhile.
    let walk = unsafe { &mut *walk };
    let walked = start_walk(walk).and_then(|()| {
        for _ in 0..BOUNDED_WALK {
            if step(walk) != 0 {
                break;
            }
        }
        finish_walk(walk)
    });
    i32::from(walked.is_err())
}

/// The bounded walk's state (one per CPU: each run holds its CPU).
#[map]
static WALK_STATE: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn start_walk(walk: &mut Walk) -> Result<(), i64> {
    let start = current_net()?;
    walk.head = start + offset!(net_list);
    walk.node = 0;
    walk.ops = read(start, offset!(net_ns_ops))?;
    walk.status = InventoryStatus { started_ns: now_ns(), ..Default::default() };
    visit(walk, start)?;
    walk.node = read(walk.head, 0)?;
    Ok(())
}

#[inline(always)]
fn finish_walk(walk: &Walk) -> Result<(), i64> {
    INVENTORY_STATUS.set(0, walk.status, 0).map_err(i64::from)
}

/// Forgets a namespace the walk no longer finds although no teardown probe reported it
/// (argument 0: its cookie). Counted as destroyed, once, like any teardown.
#[raw_tracepoint(tracepoint = "netns_agent_forget")]
pub fn inventory_forget(ctx: RawTracePointContext) -> i32 {
    let cookie: u64 = ctx.arg(0);
    destroyed(cookie, true);
    0
}
