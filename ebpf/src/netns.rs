//! The namespaces the kernel programs know: the `LIVE` set (by `net_cookie`), the
//! teardown markers of tracepoint mode, and which namespace owns each IPv4 `fib_table`.
//! Every family asks here; the families never import each other.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{HashMap, LruHashMap},
};
use netns_agent_common::{
    lifecycle::NetnsRecord,
    limits::KERNEL_NAMESPACES,
    routes::{TableOwner, UNKNOWN_NETNS},
};

use crate::kernel::{Mem, offset, read};

/// Namespaces alive in the kernel, by `net_cookie` (never reused, unlike the inode number).
/// Sized by the agent (`limits.kernel_namespaces`).
#[map]
static LIVE: HashMap<u64, NetnsRecord> = HashMap::with_max_entries(KERNEL_NAMESPACES, 0);

/// `net->core.prot_inuse` -> `net_cookie`, for the tracepoint-mode teardown probe.
#[map]
static TEARDOWN_MARKERS: HashMap<u64, u64> = HashMap::with_max_entries(KERNEL_NAMESPACES, 0);

/// `struct fib_table *` -> its namespace (IPv4 misses). LRU: entries of dead namespaces age
/// out (and are never trusted: the owner must be alive).
#[map]
static TABLE_OWNER: LruHashMap<u64, TableOwner> = LruHashMap::with_max_entries(KERNEL_NAMESPACES, 0);

const EEXIST: i32 = -17;

/// What [`track`] did.
pub enum Tracked {
    /// Newly added to `LIVE`.
    New,
    /// Already there.
    Known,
    /// `LIVE` is full: not tracked.
    Full,
}

/// Starts tracking `net` in `LIVE` unless it is there already.
#[inline(always)]
pub fn track(net: u64, cookie: u64, creator_pid: u32, now: u64) -> Result<Tracked, i64> {
    let inum: u32 = read(net, offset!(net_inum))?;
    let prot_inuse: u64 = read(net, offset!(net_prot_inuse)).unwrap_or(0);
    let record = NetnsRecord { inum, creator_pid, seen_ns: now, prot_inuse, net };
    match LIVE.insert(cookie, record, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            if prot_inuse != 0 {
                let _ = TEARDOWN_MARKERS.insert(prot_inuse, cookie, 0);
            }
            own_tables(net, cookie);
            Ok(Tracked::New)
        }
        Err(EEXIST) => Ok(Tracked::Known),
        Err(_) => Ok(Tracked::Full),
    }
}

/// Stops tracking the namespace with `cookie`; its record if this call removed it (only one
/// caller ever gets it, so a teardown is counted once whoever sees it first).
#[inline(always)]
pub fn untrack(cookie: u64) -> Option<NetnsRecord> {
    // SAFETY: the record is copied out before the remove below can recycle its slot.
    let record = (unsafe { LIVE.get(cookie) }).copied()?;
    if LIVE.remove(cookie).is_err() {
        return None;
    }
    if record.prot_inuse != 0 {
        let _ = TEARDOWN_MARKERS.remove(record.prot_inuse);
    }
    disown_tables(record.net);
    Some(record)
}

/// True if the namespace with `cookie` is in `LIVE`.
#[inline(always)]
pub fn is_alive(cookie: u64) -> bool {
    LIVE.get_ptr(cookie).is_some()
}

/// The namespace whose `core.prot_inuse` per-CPU block is at `ptr` (tracepoint teardown).
#[inline(always)]
pub fn by_teardown_marker(ptr: u64) -> Option<u64> {
    // SAFETY: plain copy of the cookie.
    unsafe { TEARDOWN_MARKERS.get(ptr) }.copied()
}

/// `net->net_cookie`, or the unknown marker.
#[inline(always)]
pub fn net_cookie<M: Mem>(net: u64) -> u64 {
    M::get(net, offset!(net_cookie)).unwrap_or(UNKNOWN_NETNS)
}

/// The `struct net *` of a `struct net_device *`, or 0.
#[inline(always)]
pub fn dev_net<M: Mem>(dev: u64) -> u64 {
    M::get::<u64>(dev, offset!(netdev_nd_net)).unwrap_or(0)
}

/// The recorded owner of an IPv4 table, or a zeroed owner (unknown). A plain value, not an
/// Option: LLVM leaves the payload of a `None` undefined and the verifier refuses to read
/// such a register.
#[inline(always)]
pub fn table_owner(tb: u64) -> TableOwner {
    // SAFETY: plain copy of the owner.
    unsafe { TABLE_OWNER.get(tb) }.copied().unwrap_or_default()
}

/// Records the namespace `net` (with `cookie`) as the owner of table `tb`.
#[inline(always)]
pub fn set_table_owner(tb: u64, cookie: u64, net: u64) {
    let _ = TABLE_OWNER.insert(tb, TableOwner { cookie, net }, 0);
}

/// Records the main and default IPv4 tables of a namespace as its own.
#[inline(always)]
fn own_tables(net: u64, cookie: u64) {
    for off in [offset!(net_fib_main), offset!(net_fib_default)] {
        if let Ok(tb) = read::<u64>(net, off)
            && tb != 0
        {
            set_table_owner(tb, cookie, net);
        }
    }
}

/// Forgets the main and default tables of a namespace being torn down.
#[inline(always)]
fn disown_tables(net: u64) {
    for off in [offset!(net_fib_main), offset!(net_fib_default)] {
        if let Ok(tb) = read::<u64>(net, off)
            && tb != 0
        {
            let _ = TABLE_OWNER.remove(tb);
        }
    }
}
