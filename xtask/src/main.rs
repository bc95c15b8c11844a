//! Build, run and test automation: `cargo xtask <command>`.
//!
//! Every command first installs what it needs (idempotent, quick when already there), so
//! the same commands work on a fresh machine and in CI.

mod bench;
mod deploy;
mod fuzz;
mod image;
mod setup;
mod soak;
mod test;
mod tier;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "netns-agent automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the build and test prerequisites (toolchain parts, bpf-linker, cargo-fuzz,
    /// packages, VM kernels, virtme-ng).
    Setup,
    /// Build the agent (release).
    Build,
    /// Build and run the agent as root with default settings; arguments after `--` go to
    /// `netns-agent run`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: lint, unit tests, the parser fuzz targets, end-to-end tests on this kernel
    /// (tracepoint mode) and in VMs running Debian's 6.1 and 6.12 kernels (kprobe and fentry modes).
    Test(test::TestArgs),
    /// Build the container image `netns-agent:<version>` offline (FROM scratch: the agent and
    /// the libraries it links) with podman or docker, and save it to target/image/ as a
    /// tarball for `docker load`, `podman load` or `ctr images import`.
    Image(image::ImageArgs),
    /// Measure the agent's cost (per event, per packet, user space) against an empty program
    /// and bpftrace; prints a table and writes BENCHMARKS.md. Never fails on slow numbers.
    Bench(bench::BenchArgs),
    /// Churn soak: 100,000 namespace creations and destructions (`--count N`) by 16
    /// concurrent creators with moves and traffic mixed in (tests/churn.rs at full size);
    /// writes its figures to their own section of BENCHMARKS.md. Fails if a check fails.
    Soak(soak::SoakArgs),
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Setup => {
            setup::build_tools()?;
            setup::test_tools()?;
            setup::fuzz_tools()?;
            deploy::tools()?;
            setup::runtime_tools()?;
            setup::vm_tools()?;
            Ok(())
        }
        Command::Build => {
            setup::build_tools()?;
            util::cargo(&["build", "--release", "-p", "netns-agent"])
        }
        Command::Run { args } => {
            setup::build_tools()?;
            util::cargo(&["build", "--release", "-p", "netns-agent"])?;
            let bin = util::workspace_root().join("target/release/netns-agent");
            let mut cmd = if util::is_root() {
                std::process::Command::new(&bin)
            } else {
                let mut sudo = std::process::Command::new("sudo");
                sudo.arg(&bin);
                sudo
            };
            cmd.arg("run").args(&args);
            let status = cmd.status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Command::Image(args) => image::build(&args).map(|_| ()),
        Command::Test(args) => test::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Soak(args) => soak::run(args),
    }
}
