//! Network namespace lifecycle in the kernel: creation (with setup time and failures),
//! teardown, and the `LIVE` set the `netns_alive` gauge counts.
//!
//! Every attach mode feeds the same three functions, [`created`], [`failed`] and
//! [`destroyed`], so the counting rules live in one place:
//! - fentry/fexit and kprobe/kretprobe on `copy_net_ns` (5.4-6.17 `(unsigned long flags,
//!   struct user_namespace *, struct net *old)`, 6.18+ `flags` is u64: the same register);
//!   it runs for every namespace copy, so only `CLONE_NEWNET` calls count;
//! - tracepoint mode (no kprobes, no fentry): `task:task_newtask` (clone with
//!   `CLONE_NEWNET`, fired after the last failure point of `copy_process`) and
//!   `syscalls:sys_{enter,exit}_unshare`, with `sys_{enter,exit}_clone{,3}` for timing and
//!   failures;
//! - teardown: fentry/kprobe on `__put_net(struct net *)` (the last active reference is gone;
//!   runs once per namespace), or in tracepoint mode `percpu:percpu_free_percpu` for the
//!   namespace's `core.prot_inuse` counters, which its exit handler frees in `cleanup_net`.

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        bpf_probe_read_user,
    },
    macros::{btf_tracepoint, fentry, fexit, kprobe, kretprobe, map, tracepoint},
    maps::{Array, HashMap, LruHashMap},
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext,
    },
};
use netns_agent_common::{
    CLONE_NEW_OTHERS, CLONE_NEWNET, COMM_LEN,
    events::kind,
    lifecycle::{LifecycleEvent, PendingCreate, SETUP_BUCKETS_NS, SETUP_HISTOGRAM_SLOTS, counter},
    limits::{CREATOR_COMMS, IN_FLIGHT},
    routes::UNKNOWN_NETNS,
};

use crate::{
    events::emit,
    kernel::{Probe, atomic_add, current_net, is_err_ptr, now_ns, offset, read},
    netns::{self, Tracked},
};

/// Creations by the creating task's comm.
#[map]
static CREATED_BY_COMM: HashMap<[u8; COMM_LEN], u64> = HashMap::with_max_entries(CREATOR_COMMS, 0);

/// Failed creations by the failing task's comm.
#[map]
static FAILED_BY_COMM: HashMap<[u8; COMM_LEN], u64> = HashMap::with_max_entries(CREATOR_COMMS, 0);

/// See `netns_agent_common::lifecycle::counter`.
#[map]
static LIFECYCLE_COUNTERS: Array<u64> = Array::with_max_entries(counter::COUNT, 0);

/// Setup-duration histogram, one slot per bucket (not cumulative).
#[map]
static SETUP_HISTOGRAM: Array<u64> = Array::with_max_entries(SETUP_HISTOGRAM_SLOTS, 0);

/// Creations in flight, by thread id. LRU, so a start whose end was never seen cannot leak.
#[map]
static PENDING_CREATES: LruHashMap<u32, PendingCreate> = LruHashMap::with_max_entries(IN_FLIGHT, 0);

const ENOMEM: i64 = -12;
const ENOSPC: i64 = -28;

#[inline(always)]
pub fn add(slot: u32, delta: u64) {
    if let Some(ptr) = LIFECYCLE_COUNTERS.get_ptr_mut(slot) {
        atomic_add(ptr, delta);
    }
}

#[inline(always)]
fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

#[inline(always)]
fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(always)]
fn observe_setup(duration_ns: u64) {
    let mut slot = SETUP_BUCKETS_NS.len() as u32;
    for (i, bound) in SETUP_BUCKETS_NS.iter().enumerate() {
        if duration_ns <= *bound {
            slot = i as u32;
            break;
        }
    }
    if let Some(ptr) = SETUP_HISTOGRAM.get_ptr_mut(slot) {
        atomic_add(ptr, 1);
    }
    add(counter::SETUP_SUM_NS, duration_ns);
}

#[inline(always)]
fn count_comm(by_comm: &HashMap<[u8; COMM_LEN], u64>, comm: &[u8; COMM_LEN], overflow: u32) {
    if let Some(ptr) = by_comm.get_ptr_mut(comm) {
        atomic_add(ptr, 1);
    } else if by_comm.insert(comm, 1u64, u64::from(BPF_NOEXIST)).is_err() {
        // Either another CPU inserted it first (count there) or the map is full.
        match by_comm.get_ptr_mut(comm) {
            Some(ptr) => atomic_add(ptr, 1),
            None => add(overflow, 1),
        }
    }
}

/// Starts tracking `net` unless it is known already, counting it alive; true if it was new.
#[inline(always)]
pub fn seen(net: u64, cookie: u64, creator_pid: u32, now: u64) -> Result<bool, i64> {
    match netns::track(net, cookie, creator_pid, now)? {
        Tracked::New => {
            add(counter::ALIVE, 1);
            Ok(true)
        }
        Tracked::Known => Ok(false),
        Tracked::Full => {
            add(counter::LIVE_FULL, 1);
            Ok(false)
        }
    }
}

/// A namespace was created: count it, track it, tell user space.
#[inline(always)]
fn created(net: u64, member_pid: u32, start_ns: u64) -> Result<(), i64> {
    let now = now_ns();
    let pid = current_tgid();
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    add(counter::CREATED, 1);
    count_comm(&CREATED_BY_COMM, &comm, counter::CREATED_COMM_OVERFLOW);
    let duration_ns = if start_ns != 0 && now > start_ns { now - start_ns } else { 0 };
    if duration_ns != 0 {
        observe_setup(duration_ns);
    }
    let cookie = netns::created_key(net);
    if cookie == UNKNOWN_NETNS {
        return Err(-1);
    }
    seen(net, cookie, pid, now)?;
    let mut event = LifecycleEvent::new(kind::NETNS_CREATED);
    event.cookie = cookie;
    event.inum = read(net, offset!(net_inum)).unwrap_or(0);
    event.pid = pid;
    event.member_pid = member_pid;
    event.ts_ns = now;
    event.duration_ns = duration_ns;
    event.comm = comm;
    // SAFETY: the helper only reads the current task's cgroup (4.18+).
    event.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    emit(&event);
    let _ = AWAIT_EXEC.insert(cookie, EXECS_REPORTED, 0);
    Ok(())
}

/// Execs reported per new namespace. Not only the first: a runtime may run helpers in the
/// namespace before the container's entrypoint (dockerd runs iptables in it for the embedded
/// DNS of a user-defined network).
const EXECS_REPORTED: u8 = 16;

/// Namespaces created since the agent started, with how many more of their execs to report.
/// LRU: a namespace in which nothing execs ages out.
#[map]
static AWAIT_EXEC: LruHashMap<u64, u8> = LruHashMap::with_max_entries(IN_FLIGHT, 0);

/// An exec completed in the current task (its comm is the new program's). In a new namespace
/// it may be its real main process starting (a container's entrypoint after `runc:[2:INIT]`,
/// the command of `ip netns exec`): tell user space, for the first few execs of a namespace.
#[inline(always)]
fn exec_done() {
    let Ok(net) = current_net() else { return };
    let cookie = netns::key::<Probe>(net);
    let Some(left) = AWAIT_EXEC.get_ptr_mut(cookie) else { return };
    // SAFETY: a value of this map, alive while the program runs; racing execs on other CPUs
    // at worst report one exec more or fewer.
    unsafe {
        if *left <= 1 {
            let _ = AWAIT_EXEC.remove(cookie);
        } else {
            *left -= 1;
        }
    }
    let mut event = LifecycleEvent::new(kind::NETNS_FIRST_EXEC);
    event.cookie = cookie;
    event.inum = read(net, offset!(net_inum)).unwrap_or(0);
    event.pid = current_tgid();
    event.ts_ns = now_ns();
    event.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    // SAFETY: the helper only reads the current task's cgroup (4.18+).
    event.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    emit(&event);
}

/// `sched:sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *)`.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn lifecycle_exec_tracepoint(_ctx: BtfTracePointContext) -> u32 {
    exec_done();
    0
}

/// `begin_new_exec(struct linux_binprm *)` (5.7+) has set the new comm when it returns.
#[fexit(function = "begin_new_exec")]
pub fn lifecycle_exec_fexit(_ctx: FExitContext) -> u32 {
    exec_done();
    0
}

#[kretprobe]
pub fn lifecycle_exec_kretprobe(_ctx: RetProbeContext) -> u32 {
    exec_done();
    0
}

/// Creating a namespace failed with `error` (a negative errno).
#[inline(always)]
fn failed(error: i64) {
    add(counter::SETUP_FAILURES, 1);
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    count_comm(&FAILED_BY_COMM, &comm, counter::FAILED_COMM_OVERFLOW);
    let mut event = LifecycleEvent::new(kind::NETNS_SETUP_FAILED);
    event.error = error as i32;
    event.pid = current_tgid();
    event.ts_ns = now_ns();
    event.comm = comm;
    emit(&event);
}

/// The namespace with `cookie` is being torn down. Counted once: only the call that removes
/// it from `LIVE` counts, whichever probe (or the inventory's reconciliation) gets there first.
#[inline(always)]
pub fn destroyed(cookie: u64, reconciled: bool) {
    let Some(record) = netns::untrack(cookie) else {
        return;
    };
    add(counter::DESTROYED, 1);
    add(counter::ALIVE, u64::MAX);
    if reconciled {
        add(counter::RECONCILED, 1);
    }
    let mut event = LifecycleEvent::new(kind::NETNS_DESTROYED);
    event.cookie = cookie;
    event.inum = record.inum;
    event.pid = current_tgid();
    event.ts_ns = now_ns();
    event.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    emit(&event);
}

#[inline(always)]
fn start_pending(flags: u64) {
    let pending = PendingCreate { start_ns: now_ns(), flags };
    let _ = PENDING_CREATES.insert(current_tid(), pending, 0);
}

/// Takes the pending start of this thread's creation, if one was recorded.
#[inline(always)]
fn take_pending() -> Option<u64> {
    take_pending_call().map(|p| p.start_ns)
}

/// Takes this thread's pending creation (start and flags), if one was recorded.
#[inline(always)]
fn take_pending_call() -> Option<PendingCreate> {
    let tid = current_tid();
    // SAFETY: copied out before the remove.
    let pending = unsafe { PENDING_CREATES.get(tid) }.copied()?;
    let _ = PENDING_CREATES.remove(tid);
    Some(pending)
}

/// The end of `copy_net_ns`: `ret` is the new `struct net *` or an ERR_PTR.
#[inline(always)]
fn copy_net_ns_returned(ret: u64) {
    let Some(start) = take_pending() else {
        return;
    };
    if is_err_ptr(ret) {
        failed(ret as i64);
    } else {
        let _ = created(ret, 0, start);
    }
}

// ---- fentry / fexit ------------------------------------------------------------------

#[fentry(function = "copy_net_ns")]
pub fn lifecycle_create_fentry(ctx: FEntryContext) -> u32 {
    let flags: u64 = ctx.arg(0);
    if flags & CLONE_NEWNET != 0 {
        start_pending(flags);
    }
    0
}

/// Arguments of `copy_net_ns`: fexit's context holds the return value in the slot after them.
const COPY_NET_NS_ARGS: usize = 3;

#[fexit(function = "copy_net_ns")]
pub fn lifecycle_create_fexit(ctx: FExitContext) -> u32 {
    let flags: u64 = ctx.arg(0);
    if flags & CLONE_NEWNET != 0 {
        // Copied out of the context slot with a helper, not loaded from it: the verifier
        // types that slot as a `struct net *` and refuses to store an ERR_PTR of it as an
        // integer, and bpf_get_func_ret only came in 5.17. The copy is a plain integer on
        // every kernel.
        let slot = (ctx.as_ptr() as *const u64).wrapping_add(COPY_NET_NS_ARGS);
        // SAFETY: the slot is inside the trampoline's context, alive while the program runs;
        // the helper copies through the kernel's fault-safe path.
        if let Ok(ret) = unsafe { bpf_probe_read_kernel(slot) } {
            copy_net_ns_returned(ret);
        }
    }
    0
}

#[fentry(function = "__put_net")]
pub fn lifecycle_destroy_fentry(ctx: FEntryContext) -> u32 {
    put_net(ctx.arg(0));
    0
}

/// `__put_net(net)`: the last active reference is gone.
#[inline(always)]
fn put_net(net: u64) {
    let cookie = netns::dying_key(net);
    if cookie != UNKNOWN_NETNS {
        destroyed(cookie, false);
        // Also when `LIVE` did not hold it (full): the key must not outlive the namespace.
        netns::forget_key(net, cookie);
    }
}

// ---- kprobe / kretprobe --------------------------------------------------------------

#[kprobe]
pub fn lifecycle_create_kprobe(ctx: ProbeContext) -> u32 {
    let flags: u64 = ctx.arg(0).unwrap_or(0);
    if flags & CLONE_NEWNET != 0 {
        start_pending(flags);
    }
    0
}

#[kretprobe]
pub fn lifecycle_create_kretprobe(ctx: RetProbeContext) -> u32 {
    copy_net_ns_returned(ctx.ret());
    0
}

#[kprobe]
pub fn lifecycle_destroy_kprobe(ctx: ProbeContext) -> u32 {
    put_net(ctx.arg(0).unwrap_or(0));
    0
}

// ---- tracepoints -----------------------------------------------------------------------

// Classic syscall tracepoints: 8 bytes of common fields, `int __syscall_nr`, then the
// arguments (sys_enter_*) or `long ret` (sys_exit_*) as 8-byte slots from offset 16.
const SYSCALL_ARG0: usize = 16;
const SYSCALL_RET: usize = 16;

/// A `clone`/`unshare` that asked for a network namespace returned `ret`, an error: what
/// tracepoint mode can tell of it without a probe in `copy_net_ns`.
/// - ENOSPC when the network namespace is the only one asked for: only the
///   `max_net_namespaces` limit returns it in such a call, so the setup failed.
/// - ENOSPC with other namespaces asked for too: each has its own limit; ENOMEM: any
///   allocation of the call (the task, the nsproxy, another namespace) returns it. The
///   network namespace may not even have been started: counted apart, as unattributed,
///   never as a setup failure (kprobe and fentry modes see `copy_net_ns` fail, exactly).
/// - Anything else (permissions, arguments, process limits) is returned before or beside
///   namespace work and is not a setup failure.
#[inline(always)]
fn call_failed(ret: i64, flags: u64) {
    if ret == ENOSPC && flags & CLONE_NEW_OTHERS == 0 {
        failed(ret);
    } else if ret == ENOSPC || ret == ENOMEM {
        add(counter::SETUP_FAILURES_UNATTRIBUTED, 1);
    }
}

#[inline(always)]
fn syscall_returned(ctx: &TracePointContext) {
    let Some(pending) = take_pending_call() else {
        return;
    };
    // SAFETY: offset inside the tracepoint record.
    let ret: i64 = unsafe { ctx.read_at(SYSCALL_RET) }.unwrap_or(0);
    if ret < 0 {
        call_failed(ret, pending.flags);
    }
}

#[btf_tracepoint(function = "task_newtask")]
pub fn lifecycle_create_newtask(ctx: BtfTracePointContext) -> u32 {
    // task_newtask(struct task_struct *task, unsigned long/u64 clone_flags), in the parent.
    let flags: u64 = ctx.arg(1);
    if flags & CLONE_NEWNET == 0 {
        return 0;
    }
    let task: u64 = ctx.arg(0);
    let tid = current_tid();
    // SAFETY: plain copy of the start time; sys_exit_clone* removes the entry.
    let start = unsafe { PENDING_CREATES.get(tid) }.map(|p| p.start_ns).unwrap_or(0);
    let member: u32 = read(task, offset!(task_tgid)).unwrap_or(0);
    if let Ok(net) = crate::kernel::task_net(task) {
        let _ = created(net, member, start);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_unshare")]
pub fn lifecycle_unshare_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: offset inside the tracepoint record.
    let flags: u64 = unsafe { ctx.read_at(SYSCALL_ARG0) }.unwrap_or(0);
    if flags & CLONE_NEWNET != 0 {
        start_pending(flags);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_unshare")]
pub fn lifecycle_unshare_exit(ctx: TracePointContext) -> u32 {
    let Some(pending) = take_pending_call() else {
        return 0;
    };
    // SAFETY: offset inside the tracepoint record.
    let ret: i64 = unsafe { ctx.read_at(SYSCALL_RET) }.unwrap_or(0);
    if ret == 0 {
        if let Ok(net) = current_net() {
            let _ = created(net, current_tgid(), pending.start_ns);
        }
    } else if ret < 0 {
        call_failed(ret, pending.flags);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_clone")]
pub fn lifecycle_clone_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: offset inside the tracepoint record.
    let flags: u64 = unsafe { ctx.read_at(SYSCALL_ARG0) }.unwrap_or(0);
    if flags & CLONE_NEWNET != 0 {
        start_pending(flags);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_clone3")]
pub fn lifecycle_clone3_enter(ctx: TracePointContext) -> u32 {
    // clone3(struct clone_args __user *uargs, size_t size): flags is the first u64.
    // SAFETY: offset inside the tracepoint record; the user read is fault-safe.
    let uargs: u64 = unsafe { ctx.read_at(SYSCALL_ARG0) }.unwrap_or(0);
    let flags: u64 = unsafe { bpf_probe_read_user(uargs as *const u64) }.unwrap_or(0);
    if flags & CLONE_NEWNET != 0 {
        start_pending(flags);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_clone")]
pub fn lifecycle_clone_exit(ctx: TracePointContext) -> u32 {
    syscall_returned(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_clone3")]
pub fn lifecycle_clone3_exit(ctx: TracePointContext) -> u32 {
    syscall_returned(&ctx);
    0
}

#[btf_tracepoint(function = "percpu_free_percpu")]
pub fn lifecycle_destroy_percpu(ctx: BtfTracePointContext) -> u32 {
    // percpu_free_percpu(void *base_addr, int off, void __percpu *ptr)
    let ptr: u64 = ctx.arg(2);
    if let Some(cookie) = netns::by_teardown_marker(ptr) {
        destroyed(cookie, false);
    }
    0
}

// ---- teardown batches (cleanup_net) ----------------------------------------------------

/// Completed `cleanup_net` runs: slot 0 the count, slot 1 when the last one ended (boot ns).
/// A namespace whose teardown began before a batch ended has been torn down; one still
/// waiting long after is stuck ("waiting for lo to become free").
#[map]
static CLEANUP_BATCHES: Array<u64> = Array::with_max_entries(2, 0);

/// Address of `cleanup_net` (from /proc/kallsyms), for the workqueue tracepoint's filter.
#[unsafe(no_mangle)]
static CLEANUP_NET_ADDR: u64 = 0;

#[inline(always)]
fn cleanup_batch_done() {
    if let Some(count) = CLEANUP_BATCHES.get_ptr_mut(0) {
        atomic_add(count, 1);
    }
    let _ = CLEANUP_BATCHES.set(1, now_ns(), 0);
}

#[fexit(function = "cleanup_net")]
pub fn lifecycle_cleanup_fexit(_ctx: FExitContext) -> u32 {
    cleanup_batch_done();
    0
}

#[kretprobe]
pub fn lifecycle_cleanup_kretprobe(_ctx: RetProbeContext) -> u32 {
    cleanup_batch_done();
    0
}

/// `workqueue:workqueue_execute_end`'s `function` field: after the 8 bytes of common
/// fields and `void *work` (the format has carried `function` since 5.6).
const WORKQUEUE_FUNCTION: usize = 16;

#[tracepoint]
pub fn lifecycle_cleanup_workqueue(ctx: TracePointContext) -> u32 {
    // Every work item of the system passes here; one compare keeps the others cheap. A
    // classic tracepoint, not tp_btf: the verifier refuses typed access to the
    // `work_func_t` argument (a function pointer is not a struct).
    // SAFETY: the offset is inside this tracepoint's record (see its format file).
    let function: u64 = unsafe { ctx.read_at(WORKQUEUE_FUNCTION) }.unwrap_or(0);
    // SAFETY: volatile read of a read-only global set by the loader.
    let cleanup_net = unsafe { core::ptr::read_volatile(&raw const CLEANUP_NET_ADDR) };
    if cleanup_net != 0 && function == cleanup_net {
        cleanup_batch_done();
    }
    0
}
