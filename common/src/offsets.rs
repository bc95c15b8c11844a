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
    /// `task_struct.files`
    pub task_files: u32,
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
    /// `net.ipv4.fib_main`: the namespace's main IPv4 table.
    pub net_fib_main: u32,
    /// `net.ipv4.fib_default`
    pub net_fib_default: u32,
    /// `net.ipv4.fib_has_custom_rules` (bool): IPv4 lookups walk the policy rules.
    pub net_fib_has_custom_rules: u32,
    /// `net.ipv6.fib6_has_custom_rules` (bool): IPv6 lookups walk the policy rules.
    pub net_fib6_has_custom_rules: u32,
    /// `net.ipv6.fib6_null_entry`: what an IPv6 lookup without a route returns.
    pub net_fib6_null_entry: u32,
    /// `fib_rules_ops.family` (AF_INET, AF_INET6, or a multicast family).
    pub fib_rules_ops_family: u32,
    /// `fib_rules_ops.fro_net`: the namespace whose rules these are.
    pub fib_rules_ops_fro_net: u32,
    /// `net.dev_index_head`: the ifindex hash buckets.
    pub net_dev_index_head: u32,
    /// `net.dev_base_head`: the list of devices.
    pub net_dev_base_head: u32,
    /// `net_device.nd_net.net`
    pub netdev_nd_net: u32,
    /// `net_device.ifindex`
    pub netdev_ifindex: u32,
    /// `net_device.name`
    pub netdev_name: u32,
    /// `net_device.index_hlist`
    pub netdev_index_hlist: u32,
    /// `net_device.dev_list`
    pub netdev_dev_list: u32,
    /// `sk_buff.dev`
    pub skb_dev: u32,
    /// `flowi4.__fl_common.flowic_iif`: the input interface (1, loopback, for output lookups).
    pub flowi4_iif: u32,
    /// `fib_table.tb_id`
    pub fib_table_id: u32,
    /// `fib_result.nhc`
    pub fib_result_nhc: u32,
    /// `fib_nh_common.nhc_dev`
    pub nhc_dev: u32,
    /// `fib6_table.tb6_id`
    pub fib6_table_id: u32,
    /// `fib6_result.f6i`
    pub fib6_result_f6i: u32,
    /// `fib6_result.fib6_type`
    pub fib6_result_type: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.fd`
    pub fdtable_fd: u32,
    /// `file.private_data`
    pub file_private_data: u32,
    /// `socket.sk`
    pub socket_sk: u32,
    /// `sock.__sk_common.skc_net.net`
    pub sock_net: u32,
    /// `sock.__sk_common.skc_family`
    pub sock_family: u32,
    /// `sock.sk_protocol` (a u16 since 5.6; a bitfield before, which leaves it unknown).
    pub sock_protocol: u32,
    /// `fdtable.max_fds`: a file descriptor from a syscall is checked against it.
    pub fdtable_max_fds: u32,
    /// `file.f_inode`
    pub file_f_inode: u32,
    /// `inode.i_mode`: only a socket's inode has `S_IFSOCK`.
    pub inode_i_mode: u32,
}

impl KernelOffsets {
    /// Every offset unknown; user space fills in what the BTF provides.
    pub const UNSET: Self = Self {
        task_nsproxy: UNKNOWN,
        task_tgid: UNKNOWN,
        task_files: UNKNOWN,
        nsproxy_net_ns: UNKNOWN,
        net_inum: UNKNOWN,
        net_refcount: UNKNOWN,
        net_ns_ops: UNKNOWN,
        net_cookie: UNKNOWN,
        net_list: UNKNOWN,
        net_prot_inuse: UNKNOWN,
        net_fib_main: UNKNOWN,
        net_fib_default: UNKNOWN,
        net_fib_has_custom_rules: UNKNOWN,
        net_fib6_has_custom_rules: UNKNOWN,
        net_fib6_null_entry: UNKNOWN,
        fib_rules_ops_family: UNKNOWN,
        fib_rules_ops_fro_net: UNKNOWN,
        net_dev_index_head: UNKNOWN,
        net_dev_base_head: UNKNOWN,
        netdev_nd_net: UNKNOWN,
        netdev_ifindex: UNKNOWN,
        netdev_name: UNKNOWN,
        netdev_index_hlist: UNKNOWN,
        netdev_dev_list: UNKNOWN,
        skb_dev: UNKNOWN,
        flowi4_iif: UNKNOWN,
        fib_table_id: UNKNOWN,
        fib_result_nhc: UNKNOWN,
        nhc_dev: UNKNOWN,
        fib6_table_id: UNKNOWN,
        fib6_result_f6i: UNKNOWN,
        fib6_result_type: UNKNOWN,
        files_fdt: UNKNOWN,
        fdtable_fd: UNKNOWN,
        file_private_data: UNKNOWN,
        socket_sk: UNKNOWN,
        sock_net: UNKNOWN,
        sock_family: UNKNOWN,
        sock_protocol: UNKNOWN,
        fdtable_max_fds: UNKNOWN,
        file_f_inode: UNKNOWN,
        inode_i_mode: UNKNOWN,
    };
}

const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 168);

crate::user_pod!(KernelOffsets);
