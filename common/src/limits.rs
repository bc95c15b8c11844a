//! Default sizes of the kernel-side tables: the one source for the eBPF map definitions
//! (compiled into the object) and the agent's `[limits]` settings (which resize the maps
//! before load). The agent's config, `--help`, the example config and the README all show
//! these values through the agent's settings registry.

/// Namespaces the kernel-side tables track (alive set, teardown markers, table owners,
/// device-move counters).
pub const KERNEL_NAMESPACES: u32 = 32768;

/// Size of the event ring buffer, bytes (a power of two, at least one page).
pub const EVENT_BUFFER_BYTES: u32 = 256 * 1024;

/// (namespace, family, table) keys the route-lookup counters hold, at most, by default.
/// The counters are per CPU: the agent lowers the default on hosts with many CPUs so that
/// the table stays within [`ROUTE_COUNTERS_BYTES`] (see `route_keys_for_cpus`).
pub const ROUTE_KEYS: u32 = 65536;

/// What the route counters may take at most by default, full, bytes.
pub const ROUTE_COUNTERS_BYTES: u64 = 32 << 20;

/// A route key's bytes in the kernel besides its per-CPU values: the hash element's header,
/// the 16-byte key and the per-CPU pointer (rounded up).
pub const ROUTE_KEY_OVERHEAD_BYTES: u64 = 80;

/// The default number of route keys on a host with `cpus` possible CPUs: [`ROUTE_KEYS`], or
/// the largest power of two whose full table fits [`ROUTE_COUNTERS_BYTES`] (4096 on 128
/// CPUs), never below 1024.
pub const fn route_keys_for_cpus(cpus: u64, value_bytes: u64) -> u32 {
    let per_key = ROUTE_KEY_OVERHEAD_BYTES + value_bytes * if cpus == 0 { 1 } else { cpus };
    let fit = ROUTE_COUNTERS_BYTES / per_key;
    let mut keys = ROUTE_KEYS as u64;
    while keys > fit && keys > 1024 {
        keys /= 2;
    }
    keys as u32
}

/// Distinct creator comms counted one by one (the rest count as `(other)`).
pub const CREATOR_COMMS: u32 = 1024;

/// Operations in flight at once, by thread (creations, moves, kprobe-mode lookups): LRU,
/// so a start whose end was never seen ages out.
pub const IN_FLIGHT: u32 = 4096;
