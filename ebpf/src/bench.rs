//! Reference programs for `cargo xtask bench`, never attached by the agent: an empty
//! program on the route-lookup tracepoint is the floor the real program is compared with.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

#[btf_tracepoint(function = "fib_table_lookup")]
pub fn bench_empty_fib(_ctx: BtfTracePointContext) -> u32 {
    0
}
