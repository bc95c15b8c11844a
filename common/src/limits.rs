//! Default sizes of the kernel-side tables: the one source for the eBPF map definitions
//! (compiled into the object) and the agent's `[limits]` settings (which resize the maps
//! before load). The agent's config, `--help`, the example config and the README all show
//! these values through the agent's settings registry.

/// Namespaces the kernel-side tables track (alive set, teardown markers, table owners,
/// device-move counters).
pub const KERNEL_NAMESPACES: u32 = 32768;

/// Size of the event ring buffer, bytes (a power of two, at least one page).
pub const EVENT_BUFFER_BYTES: u32 = 256 * 1024;

/// (namespace, family, table) keys the route-lookup counters hold.
pub const ROUTE_KEYS: u32 = 65536;

/// Distinct creator comms counted one by one (the rest count as `(other)`).
pub const CREATOR_COMMS: u32 = 1024;

/// Operations in flight at once, by thread (creations, moves, kprobe-mode lookups): LRU,
/// so a start whose end was never seen ages out.
pub const IN_FLIGHT: u32 = 4096;
