//! netns-agent: eBPF observability for network namespaces.
//!
//! How an event travels, layer by layer (each module imports only those below it):
//! - `kernel/`: the probe registry, attach engine, BTF layout, loader, maps, ring buffer,
//!   inventory walk, host facts, clocks, /proc and syscalls (all `unsafe` is here);
//! - `parse/`: pure parsers of untrusted host text (cgroup, mountinfo, CNI cache, labels);
//! - `model/`: namespaces and their states, owners, the journal, and the one join
//!   (`snapshot`) every output renders from;
//! - `families/`: `lifecycle`, `moves`, `routes` (the stems of `ebpf/src/` and
//!   `common/src/`): kernel maps read into the model's counters, kernel records applied to
//!   the model;
//! - `expose/`: `/metrics` and the JSON API, rendered from a snapshot;
//! - `daemon/`: start-up, the supervised tasks and shutdown (`netns-agent run`);
//! - `cli/`: the commands; the on-call ones are clients of the JSON API.
//!
//! `config` (the settings registry) and `errors` are used across layers.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod errors;
pub mod expose;
pub mod families;
pub mod kernel;
pub mod model;
pub mod parse;
