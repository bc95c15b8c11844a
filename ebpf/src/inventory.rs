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
    maps::Array,
    programs::RawTracePointContext,
};
use netns_agent_common::inventory::{InventoryEntry, InventoryStatus, MAX_WALK};

use crate::{
    kernel::{current_net, now_ns, offset, read},
    lifecycle::{destroyed, seen},
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
    let cookie: u64 = read(net, offset!(net_cookie))?;
    if refs == 0 {
        // Teardown began (`__put_net` ran, `cleanup_net` has not taken it off this list
        // yet). kprobe and fentry modes saw it begin; tracepoint mode sees it only once its
        // `cleanup_net` runs, which waits behind a stuck one: the walk tells it instead, so
        // that it shows as terminating, then dying, not as a live namespace. Counted once.
        walk.status.dying += 1;
        destroyed(cookie, true);
        return Ok(());
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

extern "C" fn walk_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer to the `Walk` on the caller's stack.
    let walk = unsafe { &mut *(ctx as *mut Walk) };
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

#[raw_tracepoint(tracepoint = "netns_agent_inventory")]
pub fn inventory_walk(_ctx: RawTracePointContext) -> i32 {
    match try_walk() {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn try_walk() -> Result<(), i64> {
    let start = current_net()?;
    let mut walk = Walk {
        head: start + offset!(net_list),
        node: 0,
        ops: read(start, offset!(net_ns_ops))?,
        status: InventoryStatus { started_ns: now_ns(), ..Default::default() },
    };
    visit(&mut walk, start)?;
    walk.node = read(walk.head, 0)?;
    // SAFETY: the callback and its context follow bpf_loop's contract.
    unsafe {
        bpf_loop(MAX_WALK, walk_step as *mut c_void, (&raw mut walk).cast(), 0);
    }
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
