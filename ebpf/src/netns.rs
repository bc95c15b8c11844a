//! The namespaces the kernel programs know: their keys ([`key`]), the `LIVE` set (by key),
//! the teardown markers of tracepoint mode, and which namespace owns each IPv4 `fib_table`.
//! Every family asks here; the families never import each other.
//!
//! A namespace's key is its `net_cookie` where the kernel sets one at creation (5.12+). Older
//! kernels (5.10) assign the cookie lazily, on the first `net_gen_cookie()`: it reads 0 for
//! every namespace nobody asked about, so the agent gives each namespace a key of its own
//! there (`NET_KEYS`, by `struct net *`), with [`AGENT_KEY`] set so it never equals a cookie.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use netns_agent_common::{
    lifecycle::NetnsRecord,
    limits::KERNEL_NAMESPACES,
    routes::{TableOwner, UNKNOWN_NETNS},
};

use crate::kernel::{Mem, atomic_add, offset, read};

/// Non-zero when this kernel assigns `net_cookie` lazily (before 5.12): keys then come from
/// `NET_KEYS`. Written by the loader; read-only, so the verifier prunes the other branch.
#[unsafe(no_mangle)]
static LAZY_COOKIE: u8 = 0;

/// The bit set in every key the agent assigns. Cookies count up from 1 and never reach it.
/// Bit 52, so that every key stays below 2^53: the API and the events file carry keys as
/// JSON numbers, which jq and JavaScript read as doubles, exact only up to there.
pub const AGENT_KEY: u64 = 1 << AGENT_KEY_BIT;
const AGENT_KEY_BIT: u32 = 52;

/// Bits of `ns.inum` in an agent key: inode numbers are `0xF0000000 +` a number below 2^28
/// (`proc_alloc_inum`), unique among the namespaces alive at once.
const INUM_BITS: u32 = 28;

/// Lazy-cookie kernels only: `struct net *` -> the key the agent gave that namespace. Written
/// fresh by the creation probe (a reused address gets a new key), else on first sight while
/// the namespace is alive; removed at teardown. Not LRU: evicting a live namespace's entry
/// would split it into two keys. Sized by the agent (`limits.kernel_namespaces`).
#[map]
static NET_KEYS: HashMap<u64, u64> = HashMap::with_max_entries(KERNEL_NAMESPACES, 0);

/// Slot 0: the sequence of agent keys.
#[map]
static KEY_SEQUENCE: Array<u64> = Array::with_max_entries(1, 0);

#[inline(always)]
fn lazy_cookie() -> bool {
    // SAFETY: volatile read of a read-only global set by the loader.
    unsafe { core::ptr::read_volatile(&raw const LAZY_COOKIE) != 0 }
}

/// A key no namespace had: `AGENT_KEY | sequence << 28 | inum's low 28 bits`. The sequence is
/// bumped with a plain atomic add and read back (5.10 has no fetching atomics), so two keys
/// made at the same moment may share it; but those are for two live namespaces, whose inode
/// numbers differ. A namespace that reuses an inode number was created after the earlier
/// one's key was made, and its own add made the sequence larger: keys are never reused
/// until the 24-bit sequence wraps, after 16.7 million keys, and then only if a namespace
/// with the same sequence and inode bits is still known (it would have to outlive all of
/// them).
#[inline(always)]
fn new_key(net: u64) -> u64 {
    // An early return, not `unwrap_or`: LLVM may fill the failed read's value from a stack
    // slot that 5.10's verifier considers never written, inside the inventory's loop.
    let Ok(inum) = read::<u32>(net, offset!(net_inum)) else {
        return UNKNOWN_NETNS;
    };
    let Some(seq) = KEY_SEQUENCE.get_ptr_mut(0) else {
        return UNKNOWN_NETNS;
    };
    atomic_add(seq, 1);
    // SAFETY: the array's value memory; a racing add only makes the value larger.
    let seq = unsafe { core::ptr::read_volatile(seq) };
    AGENT_KEY
        | ((seq & ((1 << (AGENT_KEY_BIT - INUM_BITS)) - 1)) << INUM_BITS)
        | u64::from(inum & ((1 << INUM_BITS) - 1))
}

/// The key of the namespace at `net`, or [`UNKNOWN_NETNS`]. On lazy-cookie kernels a
/// namespace seen for the first time (it existed before the agent, or its creation was
/// missed) gets a key now, but only while it is alive (`refcount` non-zero): a dying one
/// must not get a second key after its teardown removed the first.
#[inline(always)]
pub fn key<M: Mem>(net: u64) -> u64 {
    if net == 0 {
        return UNKNOWN_NETNS;
    }
    if !lazy_cookie() {
        return M::get(net, offset!(net_cookie)).unwrap_or(UNKNOWN_NETNS);
    }
    // SAFETY: plain copy of the key.
    if let Some(key) = unsafe { NET_KEYS.get(net) } {
        return *key;
    }
    if !is_referenced(net) {
        return UNKNOWN_NETNS;
    }
    let fresh = new_key(net);
    if fresh == UNKNOWN_NETNS {
        return UNKNOWN_NETNS;
    }
    if NET_KEYS.insert(net, fresh, u64::from(BPF_NOEXIST)).is_err() {
        // Another CPU gave it one first (or the map is full): theirs is the key.
        // SAFETY: as above.
        return unsafe { NET_KEYS.get(net) }.copied().unwrap_or(UNKNOWN_NETNS);
    }
    // The teardown may have run between the check above and the insert, and removed nothing:
    // take the entry back, so no dead namespace keeps a key its address's next user would get.
    if !is_referenced(net) {
        forget_key(net, fresh);
        return UNKNOWN_NETNS;
    }
    fresh
}

/// The key of a namespace that was just created at `net`: a new one on lazy-cookie kernels,
/// replacing whatever a namespace that had the same address before left behind.
#[inline(always)]
pub fn created_key(net: u64) -> u64 {
    if !lazy_cookie() {
        return read(net, offset!(net_cookie)).unwrap_or(UNKNOWN_NETNS);
    }
    let fresh = new_key(net);
    if fresh == UNKNOWN_NETNS || NET_KEYS.insert(net, fresh, 0).is_err() {
        return UNKNOWN_NETNS;
    }
    fresh
}

/// The key of a namespace being torn down (its last reference is gone): never a new one.
#[inline(always)]
pub fn dying_key(net: u64) -> u64 {
    if !lazy_cookie() {
        return read(net, offset!(net_cookie)).unwrap_or(UNKNOWN_NETNS);
    }
    // SAFETY: plain copy of the key.
    unsafe { NET_KEYS.get(net) }.copied().unwrap_or(UNKNOWN_NETNS)
}

/// Drops the key of `net` if it is still `key` (the address may have a new namespace since).
#[inline(always)]
pub fn forget_key(net: u64, key: u64) {
    if !lazy_cookie() || net == 0 {
        return;
    }
    // SAFETY: plain copy of the key.
    if unsafe { NET_KEYS.get(net) }.copied() == Some(key) {
        let _ = NET_KEYS.remove(net);
    }
}

/// True while the namespace at `net` holds active references (`__put_net` not reached).
#[inline(always)]
fn is_referenced(net: u64) -> bool {
    read::<u32>(net, offset!(net_refcount)).is_ok_and(|refs| refs != 0)
}

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
    forget_key(record.net, cookie);
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
