//! Reading kernel memory with offsets the agent resolved from this kernel's BTF.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use netns_agent_common::offsets::KernelOffsets;

/// Field offsets for the running kernel, written by the loader (`EbpfLoader::override_global`).
/// A read-only static: the verifier sees its values as constants.
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: KernelOffsets = KernelOffsets::UNSET;

/// The offset of one field; the volatile read keeps the compiler from folding in `UNSET`.
macro_rules! offset {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::kernel::OFFSETS.$field) } as u64
    };
}
pub(crate) use offset;

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
pub fn read<T>(base: u64, off: u64) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-safe path; a bad
    // address yields an error, never a fault.
    unsafe { bpf_probe_read_kernel((base + off) as *const T).map_err(i64::from) }
}

/// How a program reads kernel memory behind a pointer. Code shared by several programs is
/// generic over it, so each program uses the cheapest way its pointers allow.
pub trait Mem {
    fn get<T: Copy>(base: u64, off: u64) -> Result<T, i64>;
}

/// Any address (a pointer from a map, a kprobe's registers): `bpf_probe_read_kernel`, a
/// helper call per read.
pub struct Probe;

impl Mem for Probe {
    #[inline(always)]
    fn get<T: Copy>(base: u64, off: u64) -> Result<T, i64> {
        read(base, off)
    }
}

/// Pointers whose BTF type the verifier knows: arguments of `tp_btf` and fentry/fexit
/// programs, and pointer fields loaded through them. A plain load, no helper call: the
/// verifier checks `off` (a constant: `OFFSETS` is frozen read-only data) against the
/// type's fields and makes the load fault-safe, so a NULL or stale pointer reads 0.
/// Costs a third of the helper on the route-lookup path (BENCHMARKS.md). Use it only on such
/// pointers: the verifier refuses the program otherwise.
pub struct Btf;

impl Mem for Btf {
    #[inline(always)]
    fn get<T: Copy>(base: u64, off: u64) -> Result<T, i64> {
        // SAFETY: see the type's doc: the verifier admits this load only through a BTF-typed
        // pointer at a field of that type, and turns it into an exception-handled load.
        Ok(unsafe { core::ptr::read_volatile((base + off) as *const T) })
    }
}

/// The `struct net *` of the current task, or an error for a task that has no nsproxy
/// (exiting) or when reading fails.
#[inline(always)]
pub fn current_net() -> Result<u64, i64> {
    // SAFETY: the helper only returns the current task pointer.
    let task = unsafe { bpf_get_current_task() };
    task_net(task)
}

/// The `struct net *` of `task`.
#[inline(always)]
pub fn task_net(task: u64) -> Result<u64, i64> {
    let nsproxy: u64 = read(task, offset!(task_nsproxy))?;
    if nsproxy == 0 {
        return Err(-1);
    }
    read(nsproxy, offset!(nsproxy_net_ns))
}

/// True for a pointer-sized return value that encodes an errno (`IS_ERR_VALUE`).
#[inline(always)]
pub fn is_err_ptr(value: u64) -> bool {
    value >= (-4095i64) as u64
}

/// Adds to a u64 slot that other CPUs, or other (preempted) programs on this CPU, update too.
#[inline(always)]
pub fn atomic_add(slot: *mut u64, delta: u64) {
    // The BPF target has no `AtomicU64`; the intrinsic lowers to BPF's atomic add.
    // SAFETY: `slot` points into a map value, which lives as long as the map.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(slot, delta);
    }
}

/// `bpf_ktime_get_boot_ns()`: monotonic, counts suspend, comparable with CLOCK_BOOTTIME.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() }
}
