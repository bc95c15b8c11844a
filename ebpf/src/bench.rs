//! Reference programs for `cargo xtask bench`, never attached by the agent, each on the
//! route-lookup tracepoint the real program is compared with:
//! - `bench_empty_fib`: does nothing, the floor of any program on the hook;
//! - `bench_empty_fexit`: does nothing, an fexit on `fib_table_lookup`: the floor of the
//!   route program in fentry mode (`routes_v4_fexit`), measured in the 6.12 VM;
//! - `bench_empty_fib6`: does nothing, on `fib6_table_lookup`: the floor of the IPv6 route
//!   programs, which use that tracepoint in every mode;
//! - `bench_count_fib`: the route program's counting step alone (one per-CPU hash update with
//!   the agent's key and value, no reads of the kernel): the experiment that tells the cost of
//!   the counting from the cost of finding the namespace.

use aya_ebpf::{
    macros::{btf_tracepoint, fexit},
    programs::{BtfTracePointContext, FExitContext},
};
use netns_agent_common::routes::{RouteKey, family, kind, result};

#[btf_tracepoint(function = "fib_table_lookup")]
pub fn bench_empty_fib(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "fib6_table_lookup")]
pub fn bench_empty_fib6(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[fexit(function = "fib_table_lookup")]
pub fn bench_empty_fexit(_ctx: FExitContext) -> u32 {
    0
}

#[btf_tracepoint(function = "fib_table_lookup")]
pub fn bench_count_fib(_ctx: BtfTracePointContext) -> u32 {
    crate::routes::count(
        RouteKey { cookie: 1, table: 0, family: family::IPV4, kind: kind::LOOKUP },
        result::HIT,
    );
    0
}
