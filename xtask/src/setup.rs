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

/// A kernel of the VM matrix: Debian's newest image of one series and flavour.
pub struct VmKernel {
    /// Its name in the summary and in `--vm-kernels`.
    pub name: &'static str,
    /// Its release is `{prefix}N{suffix}` with N a number: the image is
    /// `/boot/vmlinuz-<release>` from the package `linux-image-<release>-unsigned`. The suffix
    /// is the whole flavour, so `6.12.N+deb12-amd64` never picks `6.12.N+deb12-rt-amd64`.
    pub prefix: &'static str,
    pub suffix: &'static str,
    /// The attach modes it runs in, each with its test files: one VM each.
    pub cells: &'static [Cell],
    /// The suite its image comes from when this machine's sources lack it; `None`: they
    /// have it (Debian 12's kernels on a Debian 12 machine).
    pub suite: Option<&'static AptSuite>,
}

/// One VM of the matrix: an attach mode and the end-to-end test files (`tests/NAME.rs`) run
/// in it.
pub struct Cell {
    pub mode: &'static str,
    /// `None`: every VM test.
    pub tests: Option<&'static [&'static str]>,
}

/// A Debian suite added to apt's sources for one kernel series only: a pin lets nothing else
/// be installed from it.
pub struct AptSuite {
    /// File name of the sources and preferences entries written for it.
    pub file: &'static str,
    pub uri: &'static str,
    pub suite: &'static str,
    /// The packages allowed from it (an apt-preferences glob).
    pub packages: &'static str,
}

/// Debian 11's security suite, for its 5.10 kernel images (bullseye's own suite has only
/// older ones).
const BULLSEYE_SECURITY: AptSuite = AptSuite {
    file: "netns-agent-bullseye-security",
    uri: "http://deb.debian.org/debian-security",
    suite: "bullseye-security",
    packages: "linux-image-5.10.0-*-amd64-unsigned",
};

impl AptSuite {
    /// The deb822 sources entry.
    fn sources(&self) -> String {
        format!(
            "# Written by `cargo xtask setup` (netns-agent) for the VM tests' kernel images;\n\
             # /etc/apt/preferences.d/{file} lets only {packages} come from it.\n\
             Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            file = self.file,
            packages = self.packages,
            uri = self.uri,
            suite = self.suite,
        )
    }

    /// The apt preferences: its kernel images may be installed, nothing else from it. The
    /// package-specific entry comes first: apt takes the first specific pin that matches.
    fn preferences(&self) -> String {
        format!(
            "# Written by `cargo xtask setup` (netns-agent): from {suite}, only {packages}.\n\
             Package: {packages}\nPin: release n={suite}\nPin-Priority: 500\n\n\
             Package: *\nPin: release n={suite}\nPin-Priority: -1\n",
            suite = self.suite,
            packages = self.packages,
        )
    }

    /// Writes its sources and preferences entries unless present; true if it wrote them.
    fn install(&self) -> Result<bool> {
        let sources = Path::new("/etc/apt/sources.list.d").join(format!("{}.sources", self.file));
        let preferences = Path::new("/etc/apt/preferences.d").join(self.file);
        if sources.exists() && preferences.exists() {
            return Ok(false);
        }
        if !crate::util::is_root() {
            bail!("adding the apt suite {}: run as root (sudo -E cargo xtask ...)", self.suite);
        }
        // The pin first: no moment where the suite is a source without it.
        std::fs::write(&preferences, self.preferences())
            .with_context(|| format!("writing {}", preferences.display()))?;
        std::fs::write(&sources, self.sources()).with_context(|| format!("writing {}", sources.display()))?;
        Ok(true)
    }
}

/// The end-to-end test files about the kernel programs: what each probe counts (routes,
/// lifecycle, moves) and which probes attach, and why (check). The other VM test files
/// (attribution, journal, errors) exercise user space over the same events, and run on the
/// newest kernel of the matrix and on the host.
const KERNEL_FACING: &[&str] = &["routes", "lifecycle", "moves", "check"];

/// The VM matrix: Debian's kernels, each in the modes it offers that the host cannot test
/// (the host tier is tracepoint mode on a kernel without kprobes). The whole run has to stay
/// within an hour on 2 cores, where every VM is software emulation: the newest kernel runs
/// every VM test in both modes, the others what differs by kernel (README, Tests).
pub const VM_KERNELS: &[VmKernel] = &[
    // Debian 11's: the oldest kernel the agent runs on. `net_cookie` is assigned lazily there
    // (the programs key namespaces themselves), `bpf_loop` is missing (the bounded inventory
    // walk) and so is `bpf_get_func_ret` (fexit programs read the return value's slot):
    // the route, lifecycle and move tests, which count per namespace through those keys, in
    // kprobe mode; in fentry mode the lifecycle and move tests, whose fexit programs read
    // return values. fentry's route programs are 6.1's, through the same keys: left out for
    // time, as are the other test files.
    VmKernel {
        name: "5.10",
        prefix: "5.10.0-",
        suffix: "-amd64",
        cells: &[
            Cell { mode: "kprobe", tests: Some(&["routes", "lifecycle", "moves"]) },
            Cell { mode: "fentry", tests: Some(&["lifecycle", "moves"]) },
        ],
        suite: Some(&BULLSEYE_SECURITY),
    },
    // Signatures and structure layouts the programs read differ between 6.1 and 6.12: the
    // kernel-facing tests in both modes.
    VmKernel {
        name: "6.1",
        prefix: "6.1.0-",
        suffix: "-amd64",
        cells: &[
            Cell { mode: "kprobe", tests: Some(KERNEL_FACING) },
            Cell { mode: "fentry", tests: Some(KERNEL_FACING) },
        ],
        suite: None,
    },
    VmKernel {
        name: "6.12",
        prefix: "6.12.",
        suffix: "+deb12-amd64",
        cells: &[Cell { mode: "kprobe", tests: None }, Cell { mode: "fentry", tests: None }],
        suite: None,
    },
    // PREEMPT_RT: softirqs run in threads (ksoftirqd, ktimers, or the task that re-enables
    // BH), and per-CPU hash values are refilled from a thread. Tracepoint mode attributes
    // receive-path lookups by that context: the route tests in tracepoint mode, where
    // context matters most.
    VmKernel {
        name: "6.12-rt",
        prefix: "6.12.",
        suffix: "+deb12-rt-amd64",
        cells: &[Cell { mode: "tracepoint", tests: Some(&["routes"]) }],
        suite: None,
    },
];

impl VmKernel {
    /// Whether `release` (`uname -r`) is this kernel's series and flavour.
    pub fn matches(&self, release: &str) -> bool {
        release
            .strip_prefix(self.prefix)
            .and_then(|rest| rest.strip_suffix(self.suffix))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }

    /// The `apt-cache search` regex of its unsigned images.
    fn package_regex(&self) -> String {
        let escape = |s: &str| s.replace('.', r"\.").replace('+', r"\+");
        format!("^linux-image-{}[0-9]+{}-unsigned$", escape(self.prefix), escape(self.suffix))
    }
}

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

/// The VM kernels (installing the newest image of each if none is) and virtme-ng.
pub fn vm_tools() -> Result<Vec<(&'static VmKernel, PathBuf)>> {
    step("VM prerequisites: qemu, Debian kernels, virtme-ng");
    apt(VM_PACKAGES)?;
    let mut kernels = Vec::new();
    for kernel in VM_KERNELS {
        let image = match installed_kernel(kernel) {
            Some(image) => image,
            None => {
                // Package lists may be missing or stale on a fresh machine: refresh them first;
                // again after adding a suite, whose list an earlier update could not fetch.
                let added = match kernel.suite {
                    Some(suite) => suite.install()?,
                    None => false,
                };
                apt_update(added)?;
                let regex = kernel.package_regex();
                let listing = output("apt-cache", &["search", "--names-only", &regex]).unwrap_or_default();
                let mut names: Vec<&str> = listing
                    .lines()
                    .filter_map(|l| l.split_whitespace().next())
                    .filter(|n| {
                        n.strip_prefix("linux-image-")
                            .and_then(|n| n.strip_suffix("-unsigned"))
                            .is_some_and(|release| kernel.matches(release))
                    })
                    .collect();
                names.sort_by_key(|n| version_key(n));
                let newest =
                    names.last().with_context(|| format!("no Debian kernel image matches {regex}"))?;
                apt(&[newest])?;
                installed_kernel(kernel).with_context(|| {
                    format!("{newest} installed no /boot/vmlinuz-{}N{}", kernel.prefix, kernel.suffix)
                })?
            }
        };
        kernels.push((kernel, image));
    }
    if vng().is_none() {
        run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "virtme-ng"]))?;
        vng().context("virtme-ng installed but vng not found")?;
    }
    Ok(kernels)
}

/// The newest installed `/boot/vmlinuz-<release>` image of `kernel`.
fn installed_kernel(kernel: &VmKernel) -> Option<PathBuf> {
    let names = std::fs::read_dir("/boot").ok()?.flatten().filter_map(|e| e.file_name().into_string().ok());
    newest_image(kernel, names).map(|name| Path::new("/boot").join(name))
}

/// The newest of the `vmlinuz-<release>` file names that is `kernel`'s.
fn newest_image(kernel: &VmKernel, names: impl Iterator<Item = String>) -> Option<String> {
    let mut found: Vec<String> =
        names.filter(|n| n.strip_prefix("vmlinuz-").is_some_and(|release| kernel.matches(release))).collect();
    found.sort_by_key(|n| version_key(n));
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

/// `apt-get update`, once per run unless `again` (the sources changed since).
fn apt_update(again: bool) -> Result<()> {
    static UPDATED: AtomicBool = AtomicBool::new(false);
    if !UPDATED.swap(true, Ordering::Relaxed) || again {
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
    apt_update(false)?;
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

    #[test]
    fn kernels_are_selected_by_their_whole_flavour() {
        let boot = [
            "vmlinuz-6.1.0-9-amd64",
            "vmlinuz-6.1.0-57-amd64",
            "vmlinuz-6.1.0-57-rt-amd64",
            "vmlinuz-6.12.118+deb12-amd64",
            "vmlinuz-6.12.9+deb12-amd64",
            "vmlinuz-6.12.118+deb12-rt-amd64",
            "vmlinuz-6.12.120+deb12-cloud-amd64",
            "vmlinuz-6.18.44-fc-v1045",
        ];
        let pick = |name: &str| {
            let kernel = VM_KERNELS.iter().find(|k| k.name == name).unwrap();
            newest_image(kernel, boot.iter().map(|s| s.to_string()))
        };
        assert_eq!(pick("6.1").as_deref(), Some("vmlinuz-6.1.0-57-amd64"));
        assert_eq!(pick("5.10"), None);
        assert_eq!(pick("6.12").as_deref(), Some("vmlinuz-6.12.118+deb12-amd64"));
        assert_eq!(pick("6.12-rt").as_deref(), Some("vmlinuz-6.12.118+deb12-rt-amd64"));
        // Each release is exactly one kernel's, and the package regex agrees with it.
        for name in boot {
            let release = name.trim_start_matches("vmlinuz-");
            assert!(VM_KERNELS.iter().filter(|k| k.matches(release)).count() <= 1, "{release}");
        }
        let rt = VM_KERNELS.iter().find(|k| k.name == "6.12-rt").unwrap();
        assert_eq!(rt.package_regex(), r"^linux-image-6\.12\.[0-9]+\+deb12-rt-amd64-unsigned$");
        let named = |name: &str| VM_KERNELS.iter().find(|k| k.name == name).unwrap();
        assert!(!named("6.12").matches("6.12.118+deb12-rt-amd64"));
        assert!(!named("6.1").matches("6.1.0--amd64"));
        assert!(named("5.10").matches("5.10.0-46-amd64"));
        assert!(!named("6.1").matches("5.10.0-46-amd64"));
        assert_eq!(named("5.10").package_regex(), r"^linux-image-5\.10\.0-[0-9]+-amd64-unsigned$");
    }

    #[test]
    fn an_added_suite_is_pinned_to_its_kernel_images() {
        let prefs = BULLSEYE_SECURITY.preferences();
        let specific = prefs.find("Package: linux-image-5.10.0-*-amd64-unsigned").unwrap();
        let rest = prefs.find("Package: *\nPin: release n=bullseye-security\nPin-Priority: -1").unwrap();
        assert!(specific < rest, "apt takes the first matching specific pin: {prefs}");
        assert!(BULLSEYE_SECURITY.sources().contains("Suites: bullseye-security\n"));
    }
}
