//! Network device moves between namespaces (`__dev_change_net_namespace`).
//!
//! Kernel side: `ebpf/src/moves.rs`. User side: `agent/src/moves.rs`.

use crate::COMM_LEN;

/// `IFNAMSIZ`
pub const IFNAME_LEN: usize = 16;

/// Per-namespace move counters (`DEVICE_MOVES`, key: `net_cookie`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MoveCounts {
    /// Devices that arrived in this namespace.
    pub moved_in: u64,
    /// Devices that left it.
    pub moved_out: u64,
    /// Moves out of this namespace that failed.
    pub failed: u64,
}

/// A move in flight (key: thread id), recorded where it starts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingMove {
    /// The `struct net_device *`.
    pub dev: u64,
    pub from_cookie: u64,
    pub from_inum: u32,
    pub ifindex: u32,
    pub start_ns: u64,
    pub name: [u8; IFNAME_LEN],
}

/// One move (or failed move), for user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MoveEvent {
    /// `events::kind::DEVICE_MOVED` or `events::kind::DEVICE_MOVE_FAILED`.
    pub kind: u32,
    /// The kernel's error for failures (0 when the mode cannot see it).
    pub error: i32,
    pub from_cookie: u64,
    pub to_cookie: u64,
    pub from_inum: u32,
    pub to_inum: u32,
    /// Index before the move and after it (the destination may renumber it).
    pub ifindex: u32,
    pub new_ifindex: u32,
    /// Tgid of the process that asked.
    pub pid: u32,
    _pad: u32,
    pub ts_ns: u64,
    /// Device name (after the move, which may rename it).
    pub name: [u8; IFNAME_LEN],
    pub comm: [u8; COMM_LEN],
}

impl MoveEvent {
    pub const fn new(kind: u32) -> Self {
        Self {
            kind,
            error: 0,
            from_cookie: 0,
            to_cookie: 0,
            from_inum: 0,
            to_inum: 0,
            ifindex: 0,
            new_ifindex: 0,
            pid: 0,
            _pad: 0,
            ts_ns: 0,
            name: [0; IFNAME_LEN],
            comm: [0; COMM_LEN],
        }
    }
}

const _: () = assert!(core::mem::size_of::<MoveEvent>() == 88);

/// rtnetlink constants the tracepoint mode parses requests with.
pub mod rtnetlink {
    pub const RTM_NEWLINK: u16 = 16;
    pub const RTM_SETLINK: u16 = 19;
    pub const IFLA_IFNAME: u16 = 3;
    pub const IFLA_NET_NS_PID: u16 = 19;
    pub const IFLA_NET_NS_FD: u16 = 28;
    pub const IFLA_TARGET_NETNSID: u16 = 46;
    pub const NETLINK_ROUTE: u16 = 0;
    pub const AF_NETLINK: u16 = 16;
}

crate::user_pod!(MoveCounts, PendingMove, MoveEvent);
