//! Builds the kernel programs (`ebpf/`) for the BPF target with the nightly toolchain and
//! bpf-linker; the agent embeds the resulting object.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf");
    let root_dir =
        metadata.canonicalize().with_context(|| format!("ebpf crate not found at {}", metadata.display()))?;
    let root_dir = root_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "netns-agent-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
