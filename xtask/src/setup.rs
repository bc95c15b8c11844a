//! Prerequisites, installed only when missing.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{output, run, step};

/// bpf-linker built against Debian's LLVM 22 (the default llvm-config here is LLVM 14).
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev"];
const BPF_LINKER_VERSION: &str = "0.13";

/// Packages the end-to-end tests and the VM tier use.
const TEST_PACKAGES: &[&str] = &["iproute2", "util-linux", "bpftool", "procps", "prometheus", "systemd"];
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static"];
/// The image engine (`cargo xtask image`) and the runtime the DaemonSet tier runs it with.
pub const PODMAN_PACKAGES: &[&str] = &["podman", "runc"];
/// The manifests, image and daemonset tiers: podman (build, DaemonSet run), docker (load and
/// save round trip), busybox for the side container, promtool and systemd-analyze.
pub const DEPLOY_PACKAGES: &[&str] =
    &["podman", "runc", "docker.io", "busybox-static", "prometheus", "systemd", "iproute2"];

/// The runtimes tier: Docker, Podman with netavark and with CNI, the CNI plugins (in
/// /usr/lib/cni), runc for podman (crun fails on hybrid cgroups), busybox for the image.
pub const RUNTIME_PACKAGES: &[&str] =
    &["docker.io", "podman", "runc", "netavark", "containernetworking-plugins", "busybox-static", "iproute2"];

/// Kernel series of the VM matrix: Debian's images with kprobes and fentry.
pub const VM_KERNEL_SERIES: &[(&str, &str)] = &[
    ("6.1", r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$"),
    ("6.12", r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$"),
];

pub fn build_tools() -> Result<()> {
    step("build prerequisites: nightly rust-src, bpf-linker");
    let toolchains = output("rustup", &["toolchain", "list"]).context("rustup is required")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let components =
        output("rustup", &["component", "list", "--toolchain", "nightly", "--installed"]).unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    let linker = output("bpf-linker", &["--version"]).unwrap_or_default();
    if !linker.contains(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
        apt(LLVM_PACKAGES)?;
        let path = format!("{LLVM_PREFIX}/bin:{}", std::env::var("PATH").unwrap_or_default());
        run(Command::new(env!("CARGO"))
            .args(["install", "bpf-linker", "--version", &format!("^{BPF_LINKER_VERSION}")])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .env("PATH", path))?;
    }
    Ok(())
}

/// cargo-fuzz (crates.io), for the fuzz tier; it drives libFuzzer with the nightly toolchain.
pub fn fuzz_tools() -> Result<()> {
    step("fuzz prerequisites: cargo-fuzz");
    if output("cargo", &["fuzz", "--version"]).is_none() {
        run(Command::new(env!("CARGO")).args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

pub fn test_tools() -> Result<()> {
    step("test prerequisites");
    apt(TEST_PACKAGES)
}

pub fn runtime_tools() -> Result<()> {
    step("runtimes prerequisites: docker.io, podman, runc, netavark, CNI plugins");
    apt(RUNTIME_PACKAGES)
}

/// The VM kernels (installing the newest image of each series if none is) and virtme-ng.
pub fn vm_tools() -> Result<Vec<PathBuf>> {
    step("VM prerequisites: qemu, Debian kernels, virtme-ng");
    apt(VM_PACKAGES)?;
    let mut kernels = Vec::new();
    for (series, package_regex) in VM_KERNEL_SERIES {
        let kernel = match installed_kernel(series) {
            Some(kernel) => kernel,
            None => {
                // Package lists may be missing or stale on a fresh machine: refresh them first.
                apt_update()?;
                let listing =
                    output("apt-cache", &["search", "--names-only", package_regex]).unwrap_or_default();
                let mut names: Vec<&str> =
                    listing.lines().filter_map(|l| l.split_whitespace().next()).collect();
                names.sort_by_key(|n| version_key(n));
                let newest = names
                    .last()
                    .with_context(|| format!("no Debian kernel image matches {package_regex}"))?;
                apt(&[newest])?;
                installed_kernel(series)
                    .with_context(|| format!("{newest} installed no /boot/vmlinuz-{series}.*"))?
            }
        };
        kernels.push(kernel);
    }
    if vng().is_none() {
        run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "virtme-ng"]))?;
        vng().context("virtme-ng installed but vng not found")?;
    }
    Ok(kernels)
}

/// The newest installed `/boot/vmlinuz-<series>.*` image.
fn installed_kernel(series: &str) -> Option<PathBuf> {
    let prefix = format!("vmlinuz-{series}.");
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        // The realtime flavour (`-rt-`) is another kernel with the same version numbers.
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && !n.contains("-rt-"))
        })
        .collect();
    found.sort_by_key(|p| version_key(&p.to_string_lossy()));
    found.pop()
}

/// Orders names by the numbers in them (6.1.0-9 before 6.1.0-56).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect()
}

/// The virtme-ng launcher, on PATH or in Python's scripts directory.
pub fn vng() -> Option<PathBuf> {
    if let Some(path) = output("sh", &["-c", "command -v vng"]) {
        return Some(PathBuf::from(path.trim()));
    }
    let scripts = output("python3", &["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])?;
    let candidate = Path::new(scripts.trim()).join("vng");
    candidate.exists().then_some(candidate)
}

/// Installs the Python packages whose module is missing (pip; `kubernetes-validate` is
/// imported as `kubernetes_validate`).
pub fn pip(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| output("python3", &["-c", &format!("import {}", p.replace('-', "_"))]).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(Command::new("python3").args(["-m", "pip", "install", "--quiet"]).args(&missing))
}

/// `apt-get update`, once per run.
fn apt_update() -> Result<()> {
    static UPDATED: AtomicBool = AtomicBool::new(false);
    if !UPDATED.swap(true, Ordering::Relaxed) {
        run(Command::new("apt-get").args(["update", "-q"]))?;
    }
    Ok(())
}

/// Installs the Debian packages that are missing.
pub fn apt(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            output("dpkg-query", &["-W", "-f=${Status}", p])
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::util::is_root() {
        bail!(
            "missing packages {}: run as root (sudo -E cargo xtask ...) to install them",
            missing.join(" ")
        );
    }
    apt_update()?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_sort_numerically() {
        let mut names =
            ["linux-image-6.1.0-9-amd64", "linux-image-6.1.0-56-amd64", "linux-image-6.1.0-10-amd64"];
        names.sort_by_key(|n| version_key(n));
        assert_eq!(names.last(), Some(&"linux-image-6.1.0-56-amd64"));
    }
}
