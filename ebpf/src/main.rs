//! netns-agent's kernel programs. One module per event family (the same stems as in
//! `common/` and `agent/src/families/`): each declares its maps and its programs for every
//! attach mode. `netns` owns the namespace table they share, `kernel` the field reads,
//! `events` the ring buffer; the families import those, never each other.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features, reason = "atomic_xadd: the BPF target has no atomic types")]

mod bench;
mod events;
mod inventory;
mod kernel;
mod lifecycle;
mod moves;
mod netns;
mod routes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No panic is reachable in verified code; the loop only satisfies the signature.
    loop {}
}

// GPL-compatible: bpf_probe_read_kernel and the ring buffer helpers are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
