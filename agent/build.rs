//! Builds the kernel programs (`ebpf/`) for the BPF target with the nightly toolchain and
//! bpf-linker; the agent embeds the resulting object. Also records the build's revision and
//! compiler for `netns_agent_build_info`.
use std::{path::Path, process::Command};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = |cmd: &mut Command| {
        cmd.output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let revision =
        output(Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(manifest))
            .unwrap_or_else(|| "unknown".to_owned());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let rustc = output(Command::new(rustc).arg("--version")).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=NETNS_AGENT_REVISION={revision}");
    println!("cargo:rustc-env=NETNS_AGENT_RUSTC={rustc}");
    for git in ["../.git/HEAD", "../.git/refs/heads"] {
        if manifest.join(git).exists() {
            println!("cargo:rerun-if-changed={git}");
        }
    }

    let metadata = manifest.join("../ebpf");
    let root_dir =
        metadata.canonicalize().with_context(|| format!("ebpf crate not found at {}", metadata.display()))?;
    let root_dir = root_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "netns-agent-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
