//! Kernel structure layout, read from the running kernel's BTF at start-up.
//!
//! Rust eBPF gets no CO-RE relocations, so every field the programs read is an offset that
//! user space resolves from `/sys/kernel/btf/vmlinux` and hands over as the `OFFSETS` global.
//! A field the running kernel does not have is [`UNKNOWN`]; the attach engine never loads a
//! program that needs an unknown field.

/// Marks an offset this kernel's BTF does not provide.
pub const UNKNOWN: u32 = u32::MAX;

/// Byte offsets of the fields the programs read (nested paths are summed).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.nsproxy`
    pub task_nsproxy: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.comm`
    pub task_comm: u32,
    /// `nsproxy.net_ns`
    pub nsproxy_net_ns: u32,
    /// `net.ns.inum`: moved from 16 to 24 within `ns_common` in 6.18.
    pub net_inum: u32,
    /// `net.ns.count` (6.17 and older) or `net.ns.__ns_ref` (6.18+): the active reference count.
    pub net_refcount: u32,
    /// `net.ns.ops`: identical (`&netns_operations`) for every network namespace.
    pub net_ns_ops: u32,
    /// `net.net_cookie`: a 64-bit id the kernel never reuses (5.14+).
    pub net_cookie: u32,
    /// `net.list`: the node in `net_namespace_list`.
    pub net_list: u32,
    /// `net.core.prot_inuse`: per-CPU counters allocated at setup and freed by the
    /// namespace's exit handlers, which makes their free a teardown marker.
    pub net_prot_inuse: u32,
    /// `net_device.nd_net` (device moves, route lookups).
    pub netdev_nd_net: u32,
    /// `net_device.ifindex`
    pub netdev_ifindex: u32,
    /// `net_device.name`
    pub netdev_name: u32,
    _reserved: u32,
}

impl KernelOffsets {
    /// Every offset unknown; user space fills in what the BTF provides.
    pub const UNSET: Self = Self {
        task_nsproxy: UNKNOWN,
        task_tgid: UNKNOWN,
        task_comm: UNKNOWN,
        nsproxy_net_ns: UNKNOWN,
        net_inum: UNKNOWN,
        net_refcount: UNKNOWN,
        net_ns_ops: UNKNOWN,
        net_cookie: UNKNOWN,
        net_list: UNKNOWN,
        net_prot_inuse: UNKNOWN,
        netdev_nd_net: UNKNOWN,
        netdev_ifindex: UNKNOWN,
        netdev_name: UNKNOWN,
        _reserved: 0,
    };
}

const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 56);

crate::user_pod!(KernelOffsets);
