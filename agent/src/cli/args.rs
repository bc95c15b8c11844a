//! The command line's arguments: `run`, `check`, and the on-call commands `ls`, `show`,
//! `events`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::render::SortKey;
use crate::config::AttachArg;

/// Where the on-call commands find the agent: loopback, at the port `run` listens on by
/// default (`config::DEFAULT_LISTEN`; a unit test keeps the two equal).
pub const DEFAULT_AGENT: &str = "127.0.0.1:19110";

#[cfg(test)]
mod tests {
    #[test]
    fn the_client_default_is_the_server_default_port() {
        let port = crate::config::DEFAULT_LISTEN.rsplit(':').next().unwrap();
        assert_eq!(super::DEFAULT_AGENT, format!("127.0.0.1:{port}"));
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "netns-agent",
    version,
    about = "eBPF observability for network namespaces: lifecycle, device moves, route lookups",
    long_about = None,
)]
pub struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(
        long = "log.level",
        alias = "log-level",
        global = true,
        default_value = "info",
        env = "NETNS_AGENT_LOG"
    )]
    pub log_level: String,
    /// Log line format: logfmt (key=value, as Prometheus logs) or json (one object a line).
    #[arg(long = "log.format", global = true, value_enum, default_value = "logfmt")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// `--log.format` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the probes and serve Prometheus metrics and the JSON API until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Report which attach mode each probe can use on this kernel, which it would pick, and why.
    Check(CommonArgs),
    /// List namespaces like `ps`: state, age, name, main process, container or pod, route
    /// lookups and failures per second.
    Ls(LsArgs),
    /// Everything about one namespace (inode number, ip netns name or pid) and its journal.
    Show(ShowArgs),
    /// The journal: namespaces created and destroyed, devices moved, setup failures.
    Events(EventsArgs),
    /// Attach only a reference program on fib_table_lookup until SIGINT/SIGTERM (what
    /// `cargo xtask bench` measures the route-lookup program against).
    #[command(hide = true)]
    BenchFloor(BenchFloorArgs),
}

#[derive(Clone, Debug, Args)]
pub struct BenchFloorArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The reference program: `bench_empty_fib` (does nothing), `bench_empty_fexit` (does
    /// nothing, as an fexit), `bench_empty_fib6` (does nothing, on fib6_table_lookup) or
    /// `bench_count_fib` (the route program's counting step alone).
    #[arg(
        long,
        default_value = "bench_empty_fib",
        value_parser = ["bench_empty_fib", "bench_empty_fexit", "bench_empty_fib6", "bench_count_fib"]
    )]
    pub program: String,
}

#[derive(Clone, Debug, Args)]
pub struct CommonArgs {
    /// Config file (TOML); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Attach mode: auto picks the best working mode per probe; the others force one mode
    /// for every probe (probes without it stay detached).
    #[arg(long, value_enum, value_name = "MODE")]
    pub attach: Option<AttachArg>,
    /// Kernel BTF to read structure offsets from (config key `btf`; default below).
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
}

#[derive(Clone, Debug, Args)]
#[command(after_long_help = crate::config::help_text())]
pub struct RunArgs {
    /// Address to serve /metrics and /api on, as HOST:PORT, :PORT or NAME:PORT (config key
    /// `listen`; default below).
    #[arg(long = "web.listen-address", alias = "listen", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Path of the Prometheus exposition (config key `web_telemetry_path`).
    #[arg(long = "web.telemetry-path", value_name = "PATH")]
    pub telemetry_path: Option<String>,
    /// TLS and basic authentication, in the Prometheus exporter toolkit's format (as
    /// node_exporter's); applies to /metrics and /api/v1 alike.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    /// Serve /metrics only, not the JSON API (/api/v1).
    #[arg(long = "web.disable-api")]
    pub web_disable_api: bool,
    /// Also append the journal to this file as JSON lines (rotated at events_file_max_bytes).
    #[arg(long, value_name = "FILE")]
    pub events_file: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `-o` values, as kubectl has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// The API's objects as JSON.
    Json,
    /// More columns (`ls`): cookie, creator, devices moved, holders.
    Wide,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The agent to ask (HOST:PORT).
    #[arg(long, value_name = "ADDR", env = "NETNS_AGENT_ADDR", default_value = DEFAULT_AGENT)]
    pub agent: String,
    /// Output format: json (the API's objects) or wide (more columns).
    #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT")]
    pub output: Option<Output>,
    /// Print JSON (the same as -o json).
    #[arg(long)]
    pub json: bool,
}

impl AgentArgs {
    pub fn json(&self) -> bool {
        self.json || self.output == Some(Output::Json)
    }

    pub fn wide(&self) -> bool {
        self.output == Some(Output::Wide)
    }
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Sort by this column (lookups and failures: busiest first).
    #[arg(long, value_enum, default_value = "netns")]
    pub sort: SortKey,
    /// Seconds between the two samples the rates come from (0: no rates).
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    pub interval: f64,
    /// Also list namespaces already torn down (kept for the series grace period).
    #[arg(long, short)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Inode number (as in /proc/PID/ns/net), ip netns name, or pid of a process in it.
    pub namespace: String,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Keep printing new events as they happen.
    #[arg(long, short)]
    pub follow: bool,
    /// Only events of this namespace: inode number, ip netns name, or pid of a process in it
    /// (every namespace that had that inode number).
    #[arg(long, value_name = "NETNS")]
    pub netns: Option<String>,
    /// At most this many of the newest events first.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}
