//! The inventory: a walk of the kernel's `net_namespace_list`, run on demand by user space
//! (`BPF_PROG_TEST_RUN` on a raw tracepoint program, never attached).
//!
//! It finds every namespace alive in the kernel, including those no process, mount or file
//! descriptor reveals (held by a socket or a kernel reference), seeds `LIVE` at start-up and
//! lets user space reconcile what the teardown probes might have missed.

/// One namespace found by the walk.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InventoryEntry {
    /// `net->net_cookie`
    pub cookie: u64,
    /// `net->ns.inum`
    pub inum: u32,
    _pad: u32,
}

const _: () = assert!(core::mem::size_of::<InventoryEntry>() == 16);

/// Summary of one walk (slot 0 of the `INVENTORY_STATUS` array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InventoryStatus {
    /// Entries written to `INVENTORY` (at most its size).
    pub count: u32,
    /// 1 when the walk went round the whole list; 0 when it stopped early.
    pub complete: u32,
    /// Namespaces listed but skipped because their teardown already began.
    pub dying: u32,
    /// Namespaces the walk added to `LIVE` (not seen before).
    pub added: u32,
    /// `bpf_ktime_get_boot_ns()` when the walk started.
    pub started_ns: u64,
}

const _: () = assert!(core::mem::size_of::<InventoryStatus>() == 24);

/// Most namespaces one walk visits; more than any host runs (memory bounds it long before).
pub const MAX_WALK: u32 = 1 << 16;

/// Most namespaces the walk visits on kernels without `bpf_loop` (before 5.17), whose
/// verifier follows a bounded loop iteration by iteration within its budget of a million
/// instructions (measured on 5.10).
pub const BOUNDED_WALK: u32 = 1024;

crate::user_pod!(InventoryEntry, InventoryStatus);

impl InventoryEntry {
    /// An entry for one namespace.
    pub const fn new(cookie: u64, inum: u32) -> Self {
        Self { cookie, inum, _pad: 0 }
    }
}
