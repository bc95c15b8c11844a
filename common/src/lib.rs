//! Types and constants shared by the kernel programs (`ebpf/`) and user space (`agent/`).
//!
//! Everything here is `#[repr(C)]` plain data: it crosses the kernel/user boundary through
//! maps, the ring buffer and load-time globals, so both sides must agree on the layout byte
//! for byte. Sizes are asserted at compile time.
#![no_std]

pub mod events;
pub mod inventory;
pub mod lifecycle;
pub mod limits;
pub mod moves;
pub mod offsets;
pub mod routes;

/// `CLONE_NEWNET` from `include/uapi/linux/sched.h`.
pub const CLONE_NEWNET: u64 = 0x4000_0000;

/// The other `CLONE_NEW*` flags (mount, cgroup, uts, ipc, user, pid, time): namespaces a
/// `clone` or `unshare` creates next to a network namespace, whose own limits and
/// allocations can fail the call with the errors a network namespace's setup returns.
pub const CLONE_NEW_OTHERS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x80;

/// `TASK_COMM_LEN`: a task's comm is at most 15 bytes plus NUL.
pub const COMM_LEN: usize = 16;

/// Implements `aya::Pod` for the listed types when building user space.
#[macro_export]
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is #[repr(C)], has no padding holes left uninitialised by
            // construction (explicit padding fields) and every bit pattern is valid.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
