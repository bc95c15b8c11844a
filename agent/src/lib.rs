//! netns-agent: eBPF observability for network namespaces.
//!
//! Each event family has one stem used across the crates: `lifecycle` (creation, setup,
//! teardown), `inventory` (the walk of every namespace alive), `moves` (devices changing
//! namespace), `routes` (route lookups), `events` (the ring buffer they share). The kernel side of each lives
//! in `ebpf/src/<stem>.rs`, shared types in `common/src/<stem>.rs`, and the user side here.

pub mod agent;
pub mod attach;
pub mod attribution;
pub mod check;
pub mod cli;
pub mod config;
pub mod events;
pub mod host;
pub mod http;
pub mod inventory;
pub mod kernel_layout;
pub mod labels;
pub mod lifecycle;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod moves;
pub mod namespaces;
pub mod probes;
pub mod routes;

use config::{FileConfig, Overrides, Settings};

/// Settings for a command from its config file and flags.
pub fn settings(common: &cli::CommonArgs, listen: Option<String>) -> Result<Settings, config::ConfigError> {
    let file = match &common.config {
        Some(path) => FileConfig::read(path)?,
        None => FileConfig::default(),
    };
    Settings::resolve(file, Overrides { listen, attach: common.attach, btf: common.btf.clone() })
}
