//! Device moves between namespaces: counted per namespace in the kernel, and sent to user
//! space one event per move.
//!
//! fentry/kprobe: `__dev_change_net_namespace(struct net_device *dev, struct net *net,
//! const char *pat, int new_ifindex)` (5.13+; 6.15 added `struct netlink_ext_ack *`), whose
//! entry records the device's namespace and whose return value says whether it moved; on
//! 5.12 and older the function is `dev_change_net_namespace`. Kernel-internal moves count
//! too (devices sent back to init_net when their namespace dies).
//!
//! tracepoint (no tracepoint exists inside a move): the rtnetlink request at the system call.
//! `sys_enter_sendmsg`/`sys_enter_sendto` on a NETLINK_ROUTE socket carrying RTM_NEWLINK or
//! RTM_SETLINK with IFLA_NET_NS_PID, IFLA_NET_NS_FD or IFLA_TARGET_NETNSID: the device is
//! found by ifindex (or IFLA_IFNAME) in the socket's namespace, and at `sys_exit_*` (rtnetlink
//! handles the request synchronously inside the call) its `nd_net` says whether it moved and
//! where. Only the first message of a buffer is parsed.

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_user,
        bpf_probe_read_user_buf,
    },
    macros::{fentry, fexit, kprobe, kretprobe, map, tracepoint},
    maps::{Array, HashMap, LruHashMap},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use netns_agent_common::{
    COMM_LEN,
    events::kind,
    limits::{IN_FLIGHT as MOVES_IN_FLIGHT, KERNEL_NAMESPACES},
    moves::{IFNAME_LEN, MoveCounts, MoveEvent, PendingMove, rtnetlink},
    routes::UNKNOWN_NETNS,
};

use crate::{
    events::emit,
    kernel::{Probe, atomic_add, now_ns, offset, read},
    netns,
};

/// Moves by namespace key (`netns::key`).
#[map]
static DEVICE_MOVES: HashMap<u64, MoveCounts> = HashMap::with_max_entries(KERNEL_NAMESPACES, 0);

/// Moves in flight, by thread.
#[map]
static PENDING_MOVES: LruHashMap<u32, PendingMove> = LruHashMap::with_max_entries(MOVES_IN_FLIGHT, 0);

/// How many moves are in flight (slot 0): lets the syscall-exit probe of tracepoint mode,
/// which runs for every sendmsg/sendto, skip the lookup when there are none.
#[map]
static IN_FLIGHT: Array<u64> = Array::with_max_entries(1, 0);

#[inline(always)]
fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

#[inline(always)]
fn counts(cookie: u64) -> Option<*mut MoveCounts> {
    if let Some(ptr) = DEVICE_MOVES.get_ptr_mut(cookie) {
        return Some(ptr);
    }
    let _ = DEVICE_MOVES.insert(cookie, MoveCounts::default(), u64::from(BPF_NOEXIST));
    DEVICE_MOVES.get_ptr_mut(cookie)
}

/// Records the start of a move of `dev`.
#[inline(always)]
fn begin(dev: u64) -> Result<(), i64> {
    let net: u64 = read(dev, offset!(netdev_nd_net))?;
    let from_cookie = netns::key::<Probe>(net);
    if from_cookie == UNKNOWN_NETNS {
        return Err(-1);
    }
    let mut pending = PendingMove {
        dev,
        from_cookie,
        from_inum: read(net, offset!(net_inum))?,
        ifindex: read(dev, offset!(netdev_ifindex))?,
        start_ns: now_ns(),
        name: [0; IFNAME_LEN],
    };
    pending.name = read(dev, offset!(netdev_name)).unwrap_or([0; IFNAME_LEN]);
    PENDING_MOVES.insert(tid(), pending, 0).map_err(i64::from)?;
    if let Some(n) = IN_FLIGHT.get_ptr_mut(0) {
        atomic_add(n, 1);
    }
    Ok(())
}

/// Ends this thread's move. `error` is the kernel's return value where the mode sees it
/// (`error_known`); the device's namespace afterwards says whether it moved.
#[inline(always)]
fn end(error: i32, error_known: bool) {
    // The fast path for every other sendmsg/sendto of the system: no move in flight anywhere.
    match IN_FLIGHT.get(0) {
        Some(0) | None => return,
        Some(_) => {}
    }
    let tid = tid();
    // SAFETY: copied out before the remove.
    let Some(pending) = (unsafe { PENDING_MOVES.get(tid) }).copied() else {
        return;
    };
    if PENDING_MOVES.remove(tid).is_ok()
        && let Some(n) = IN_FLIGHT.get_ptr_mut(0)
    {
        atomic_add(n, u64::MAX);
    }
    let to_net: u64 = read(pending.dev, offset!(netdev_nd_net)).unwrap_or(0);
    let to_cookie = netns::key::<Probe>(to_net);
    let moved = to_cookie != 0 && to_cookie != pending.from_cookie;
    if !moved && error_known && error == 0 {
        // Asked to move into the namespace it is already in: a no-op, neither move nor failure.
        return;
    }
    let mut event = MoveEvent::new(if moved { kind::DEVICE_MOVED } else { kind::DEVICE_MOVE_FAILED });
    event.error = error;
    event.from_cookie = pending.from_cookie;
    event.from_inum = pending.from_inum;
    event.ifindex = pending.ifindex;
    event.name = pending.name;
    event.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    event.ts_ns = now_ns();
    event.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    if moved {
        event.to_cookie = to_cookie;
        event.to_inum = read(to_net, offset!(net_inum)).unwrap_or(0);
        event.new_ifindex = read(pending.dev, offset!(netdev_ifindex)).unwrap_or(0);
        event.name = read(pending.dev, offset!(netdev_name)).unwrap_or(pending.name);
        if let Some(from) = counts(pending.from_cookie) {
            // SAFETY: map value memory; moves are rare, the atomic add keeps it exact.
            atomic_add(unsafe { &raw mut (*from).moved_out }, 1);
        }
        if let Some(to) = counts(to_cookie) {
            // SAFETY: as above.
            atomic_add(unsafe { &raw mut (*to).moved_in }, 1);
        }
    } else if let Some(from) = counts(pending.from_cookie) {
        // SAFETY: as above.
        atomic_add(unsafe { &raw mut (*from).failed }, 1);
    }
    emit(&event);
}

// ---- fentry / kprobe ------------------------------------------------------------------

#[fentry(function = "__dev_change_net_namespace")]
pub fn moves_begin_fentry(ctx: FEntryContext) -> u32 {
    let _ = begin(ctx.arg(0));
    0
}

/// How many arguments this kernel's move function takes: 3 (`dev_change_net_namespace`,
/// 5.12 and older), 4 (5.13+), 5 (6.15+). Written by the loader from the function's BTF,
/// the one fexit attaches to; read-only, so the verifier keeps only the matching branch.
#[unsafe(no_mangle)]
static MOVE_FN_ARGS: u32 = 0;

#[fexit(function = "__dev_change_net_namespace")]
pub fn moves_end_fexit(ctx: FExitContext) -> u32 {
    // fexit's context holds the return value in the slot after the arguments. Read from
    // there rather than with bpf_get_func_ret, which came in 5.17: one way on every kernel.
    // SAFETY: volatile read of a read-only global set by the loader.
    let ret = match unsafe { core::ptr::read_volatile(&raw const MOVE_FN_ARGS) } {
        3 => ret_slot::<3>(&ctx),
        4 => ret_slot::<4>(&ctx),
        5 => ret_slot::<5>(&ctx),
        6 => ret_slot::<6>(&ctx),
        // Unknown: the loader found no such function, and fexit cannot attach to it.
        _ => return 0,
    };
    // A failed copy (never seen) still ends the pending move: by where the device is now,
    // its error unknown, as tracepoint mode does.
    end(ret.map_or(0, |r| r as i32), ret.is_some());
    0
}

/// The fexit context's slot `N` (the return value after `N` arguments), copied with a
/// helper rather than loaded: the verifier types the slot by the function's return type
/// and, before 5.17, refuses a load past the arguments. The offset is a constant for each `N`.
#[inline(always)]
fn ret_slot<const N: usize>(ctx: &FExitContext) -> Option<u64> {
    let slot = (ctx.as_ptr() as *const u64).wrapping_add(N);
    // SAFETY: the slot is inside the trampoline's context, alive while the program runs;
    // the helper copies through the kernel's fault-safe path.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(slot) }.ok()
}

#[kprobe]
pub fn moves_begin_kprobe(ctx: ProbeContext) -> u32 {
    let _ = begin(ctx.arg(0).unwrap_or(0));
    0
}

#[kretprobe]
pub fn moves_end_kretprobe(ctx: RetProbeContext) -> u32 {
    end(ctx.ret(), true);
    0
}

// ---- tracepoint: the rtnetlink request ----------------------------------------------------

/// Offsets in `sys_enter_sendmsg(int fd, struct user_msghdr *msg, unsigned int flags)` and
/// `sys_enter_sendto(int fd, void *buff, size_t len, ...)` records.
const ARG0: usize = 16;
const ARG1: usize = 24;
/// `user_msghdr.msg_iov` (after msg_name and msg_namelen).
const MSGHDR_IOV: u64 = 16;
const NLMSG_HDRLEN: u64 = 16;
const IFINFOMSG_LEN: u64 = 16;
const MAX_ATTRS: usize = 24;
/// `addr_len`, the sixth argument of sendto, and `sizeof(struct sockaddr_nl)`.
const SENDTO_ADDR_LEN: usize = 56;
const SOCKADDR_NL_LEN: u64 = 12;
const NETDEV_HASH_MASK: u32 = 255;

/// `S_IFMT` and `S_IFSOCK` of `inode.i_mode`.
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
/// Error for a descriptor that is not an open socket (the syscall fails with EBADF or
/// ENOTSOCK; nothing is recorded).
const NOT_A_SOCKET: i64 = -88;

/// The `struct sock *` behind file descriptor `fd` of the current task. The descriptor comes
/// from the caller unchecked: one past the table, closed, or not a socket is refused here,
/// as the syscall will refuse it, rather than read through whatever memory lies there.
#[inline(always)]
fn socket_of(fd: u64) -> Result<u64, i64> {
    // SAFETY: the helper only returns a pointer value.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, offset!(task_files))?;
    let fdt: u64 = read(files, offset!(files_fdt))?;
    let max_fds: u32 = read(fdt, offset!(fdtable_max_fds))?;
    if fd >= u64::from(max_fds) {
        return Err(NOT_A_SOCKET);
    }
    let fds: u64 = read(fdt, offset!(fdtable_fd))?;
    let file: u64 = read(fds, fd * 8)?;
    if file == 0 {
        return Err(NOT_A_SOCKET);
    }
    let inode: u64 = read(file, offset!(file_f_inode))?;
    let mode: u16 = read(inode, offset!(inode_i_mode))?;
    if mode & S_IFMT != S_IFSOCK {
        return Err(NOT_A_SOCKET);
    }
    let socket: u64 = read(file, offset!(file_private_data))?;
    read(socket, offset!(socket_sk))
}

/// Finds the `struct net_device *` with `ifindex` in `net` (the ifindex hash bucket).
#[inline(always)]
fn device_by_index(net: u64, ifindex: u32) -> Option<u64> {
    let buckets: u64 = read(net, offset!(net_dev_index_head)).ok()?;
    let mut node: u64 = read(buckets, u64::from(ifindex & NETDEV_HASH_MASK) * 8).ok()?;
    for _ in 0..16 {
        if node == 0 {
            return None;
        }
        let dev = node - offset!(netdev_index_hlist);
        if read::<u32>(dev, offset!(netdev_ifindex)) == Ok(ifindex) {
            return Some(dev);
        }
        node = read(node, 0).ok()?;
    }
    None
}

/// Finds the device named `name` in `net` (walks the device list).
#[inline(always)]
fn device_by_name(net: u64, name: &[u8; IFNAME_LEN]) -> Option<u64> {
    let head = net + offset!(net_dev_base_head);
    let mut node: u64 = read(head, 0).ok()?;
    for _ in 0..64 {
        if node == head || node == 0 {
            return None;
        }
        let dev = node - offset!(netdev_dev_list);
        if read::<[u8; IFNAME_LEN]>(dev, offset!(netdev_name)).ok()? == *name {
            return Some(dev);
        }
        node = read(node, 0).ok()?;
    }
    None
}

/// Parses an rtnetlink request at user address `buf`; records a pending move if it asks a
/// device to change namespace.
#[inline(always)]
fn netlink_request(fd: u64, buf: u64, len: u64) -> Result<(), i64> {
    if len < NLMSG_HDRLEN + IFINFOMSG_LEN {
        return Ok(());
    }
    // nlmsghdr { u32 len; u16 type; u16 flags; u32 seq; u32 pid }
    // SAFETY: user memory read through the fault-safe helper.
    let header: [u32; 2] = unsafe { bpf_probe_read_user(buf as *const [u32; 2]) }.map_err(i64::from)?;
    let msg_type = (header[1] & 0xffff) as u16;
    if msg_type != rtnetlink::RTM_NEWLINK && msg_type != rtnetlink::RTM_SETLINK {
        return Ok(());
    }
    let msg_len = u64::from(header[0]).min(len);
    // ifinfomsg { u8 family; u8 pad; u16 type; i32 index; u32 flags; u32 change }
    // SAFETY: as above.
    let ifindex: u32 =
        unsafe { bpf_probe_read_user((buf + NLMSG_HDRLEN + 4) as *const u32) }.map_err(i64::from)?;
    let mut off = NLMSG_HDRLEN + IFINFOMSG_LEN;
    let mut moves = false;
    let mut name = [0u8; IFNAME_LEN];
    for _ in 0..MAX_ATTRS {
        if off + 4 > msg_len {
            break;
        }
        // nlattr { u16 len; u16 type }
        // SAFETY: as above.
        let attr: u32 = unsafe { bpf_probe_read_user((buf + off) as *const u32) }.map_err(i64::from)?;
        let attr_len = u64::from(attr & 0xffff);
        let attr_type = ((attr >> 16) & 0x3fff) as u16;
        if attr_len < 4 {
            break;
        }
        match attr_type {
            rtnetlink::IFLA_NET_NS_PID | rtnetlink::IFLA_NET_NS_FD | rtnetlink::IFLA_TARGET_NETNSID => {
                moves = true
            }
            rtnetlink::IFLA_IFNAME => {
                // SAFETY: as above; a short read leaves the name empty.
                let _ = unsafe { bpf_probe_read_user_buf((buf + off + 4) as *const u8, &mut name) };
            }
            _ => {}
        }
        off += (attr_len + 3) & !3;
    }
    if !moves {
        return Ok(());
    }
    let sk = socket_of(fd)?;
    let family: u16 = read(sk, offset!(sock_family))?;
    let protocol: u16 = read(sk, offset!(sock_protocol))?;
    if family != rtnetlink::AF_NETLINK || protocol != rtnetlink::NETLINK_ROUTE {
        return Ok(());
    }
    let net: u64 = read(sk, offset!(sock_net))?;
    let dev = if ifindex != 0 { device_by_index(net, ifindex) } else { device_by_name(net, &name) };
    match dev {
        Some(dev) => begin(dev),
        None => Ok(()), // no such device: the request fails without touching a namespace
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendmsg")]
pub fn moves_sendmsg_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets inside the tracepoint record; user reads are fault-safe.
    let (fd, msg): (u64, u64) = unsafe { (ctx.read_at(ARG0).unwrap_or(0), ctx.read_at(ARG1).unwrap_or(0)) };
    let Ok(iov) = (unsafe { bpf_probe_read_user((msg + MSGHDR_IOV) as *const u64) }) else {
        return 0;
    };
    // iovec { void *base; size_t len }
    if let Ok([base, len]) = unsafe { bpf_probe_read_user(iov as *const [u64; 2]) } {
        let _ = netlink_request(fd, base, len);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendto")]
pub fn moves_sendto_enter(ctx: TracePointContext) -> u32 {
    // sendto(fd, buff, len, flags, addr, addr_len): a request to the kernel over netlink
    // names no address or a `struct sockaddr_nl` (12 bytes); UDP and the like name an
    // address of another size, and are passed by without reading their data.
    // SAFETY: offsets inside the tracepoint record.
    let addr_len: u64 = unsafe { ctx.read_at(SENDTO_ADDR_LEN) }.unwrap_or(0);
    if addr_len != 0 && addr_len != SOCKADDR_NL_LEN {
        return 0;
    }
    // SAFETY: offsets inside the tracepoint record.
    let (fd, buf, len): (u64, u64, u64) = unsafe {
        (ctx.read_at(ARG0).unwrap_or(0), ctx.read_at(ARG1).unwrap_or(0), ctx.read_at(ARG1 + 8).unwrap_or(0))
    };
    let _ = netlink_request(fd, buf, len);
    0
}

/// The request was handled inside the call; its error reaches the caller later as a netlink
/// acknowledgement, so tracepoint mode reports failures without the reason.
#[tracepoint(category = "syscalls", name = "sys_exit_sendmsg")]
pub fn moves_sendmsg_exit(_ctx: TracePointContext) -> u32 {
    end(0, false);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendto")]
pub fn moves_sendto_exit(_ctx: TracePointContext) -> u32 {
    end(0, false);
    0
}
