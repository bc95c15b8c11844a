//! The command line: `run`, `check`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::AttachArg;

#[derive(Debug, Parser)]
#[command(
    name = "netns-agent",
    version,
    about = "eBPF observability for network namespaces: lifecycle, device moves, route lookups",
    long_about = None,
)]
pub struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info", env = "NETNS_AGENT_LOG")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the probes and serve Prometheus metrics until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Report which attach mode each probe can use on this kernel, which it would pick, and why.
    Check(CommonArgs),
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Config file (TOML); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Attach mode: auto picks the best working mode per probe; the others force one mode
    /// for every probe (probes without it stay detached).
    #[arg(long, value_enum, value_name = "MODE")]
    pub attach: Option<AttachArg>,
    /// Kernel BTF to read structure offsets from [default: /sys/kernel/btf/vmlinux].
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address to serve /metrics on [default: 0.0.0.0:19110].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}
