//! Loading the kernel object: globals (field offsets) and map sizes set before the kernel
//! sees it. Programs are loaded one by one later, by the attach engine.

use aya::{Btf, Ebpf, EbpfLoader};
use netns_agent_common::offsets::KernelOffsets;

use crate::config::Limits;

/// The kernel programs, built by `build.rs` from `ebpf/`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netns-agent"));

#[derive(Debug, thiserror::Error)]
#[error("loading the eBPF object failed: {0}")]
pub struct LoadError(String);

/// `cleanup_net` is the function's address (0 when unknown), for the tracepoint that
/// watches teardown batches.
pub fn load(
    offsets: &KernelOffsets,
    cleanup_net: u64,
    btf: &Btf,
    limits: &Limits,
) -> Result<Ebpf, LoadError> {
    EbpfLoader::new()
        .btf(Some(btf))
        .override_global("OFFSETS", offsets, true)
        .override_global("CLEANUP_NET_ADDR", &cleanup_net, true)
        .map_max_entries("LIVE", limits.kernel_namespaces)
        .map_max_entries("TEARDOWN_MARKERS", limits.kernel_namespaces)
        .map_max_entries("TABLE_OWNER", limits.kernel_namespaces)
        .map_max_entries("DEVICE_MOVES", limits.kernel_namespaces)
        .map_max_entries("ROUTE_LOOKUPS", limits.route_keys)
        .map_max_entries("EVENTS", limits.event_buffer_bytes)
        .load(OBJECT)
        .map_err(|err| LoadError(crate::attach::error_chain(&err)))
}
