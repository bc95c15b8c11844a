//! Facts about the running kernel and the agent's privileges that decide what can attach.

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
};

/// Oldest kernel the agent runs on: the event stream is a BPF ring buffer (5.8), and the
/// start-up inventory is run with `BPF_PROG_TEST_RUN` on a raw tracepoint program (5.10).
/// 5.10 is also the oldest kernel the VM tests boot (Debian 11's): there the cookie is lazy
/// and `bpf_loop` missing, which the programs handle (`ebpf/src/netns.rs`, `inventory.rs`);
/// older kernels are untested and refused rather than trusted with numbers.
pub const MIN_KERNEL: (u32, u32) = (5, 10);

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(
        "not permitted: loading eBPF programs needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN \
         (missing {missing}); run netns-agent as root (sudo) or grant them"
    )]
    NotPrivileged { missing: String },
    #[error(
        "tracefs is not mounted at /sys/kernel/tracing and mounting it needs CAP_SYS_ADMIN \
         (missing); grant it, or mount tracefs for the agent (hostPath /sys/kernel/tracing)"
    )]
    NoTracefs,
    #[error(
        "cannot read {path} ({reason}): naming the processes of other namespaces needs \
         CAP_SYS_PTRACE (missing); grant it, or run netns-agent as root"
    )]
    NoPtrace { path: String, reason: String },
    #[error(
        "kernel {release} is too old: netns-agent needs Linux {}.{} or newer (the BPF ring \
         buffer and test runs of raw tracepoint programs); upgrade the kernel",
        MIN_KERNEL.0,
        MIN_KERNEL.1
    )]
    KernelTooOld { release: String },
    #[error("cannot read the kernel release ({0}); is /proc mounted?")]
    NoRelease(String),
}

/// `uname -r`.
pub fn kernel_release() -> Result<String, HostError> {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .map_err(|err| HostError::NoRelease(err.to_string()))
}

/// The (major, minor) of a release string such as `6.12.117+deb12-amd64`.
pub fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Fails for kernels older than [`MIN_KERNEL`]; an unparsable release is given the benefit
/// of the doubt (the loader will say what is missing).
pub fn check_kernel_version(release: &str) -> Result<(), HostError> {
    match parse_version(release) {
        Some(version) if version < MIN_KERNEL => Err(HostError::KernelTooOld { release: release.to_owned() }),
        _ => Ok(()),
    }
}

use super::privileges::{CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_PTRACE, own_caps};

/// True if `caps` allow loading and attaching tracing programs.
pub fn caps_allow_bpf(caps: u64) -> bool {
    CAP_SYS_ADMIN.is_in(caps) || (CAP_BPF.is_in(caps) && CAP_PERFMON.is_in(caps))
}

/// The capabilities loading needs that `caps` lacks, named.
pub fn missing_bpf_caps(caps: u64) -> Vec<&'static str> {
    if caps_allow_bpf(caps) {
        return Vec::new();
    }
    let mut missing: Vec<&str> =
        [CAP_BPF, CAP_PERFMON].into_iter().filter(|cap| !cap.is_in(caps)).map(|cap| cap.name).collect();
    missing.push(CAP_SYS_ADMIN.name);
    missing
}

/// Every capability the agent needs, checked before anything touches the kernel, so that a
/// container or unit granting too few stops at once with one line naming what is missing.
pub fn check_privileges() -> Result<(), HostError> {
    let caps = own_caps();
    let missing = missing_bpf_caps(caps);
    if !missing.is_empty() {
        return Err(HostError::NotPrivileged { missing: missing.join(", ") });
    }
    let tracefs_mounted = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|dir| Path::new(dir).join("events").is_dir());
    if !tracefs_mounted && !CAP_SYS_ADMIN.is_in(caps) {
        return Err(HostError::NoTracefs);
    }
    Ok(())
}

/// Attribution reads every process's `/proc/PID/ns/net`, which needs CAP_SYS_PTRACE for
/// processes the agent does not own or that are not dumpable; init's is the test case.
pub fn check_proc_access(proc_root: &Path) -> Result<(), HostError> {
    let path = proc_root.join("1/ns/net");
    match fs::metadata(&path) {
        Err(err)
            if err.kind() == std::io::ErrorKind::PermissionDenied && !CAP_SYS_PTRACE.is_in(own_caps()) =>
        {
            Err(HostError::NoPtrace { path: path.display().to_string(), reason: err.to_string() })
        }
        _ => Ok(()),
    }
}

/// Where tracefs is, mounting it if nobody has: classic tracepoints need its `events/`.
pub fn ensure_tracefs() -> Result<&'static str, String> {
    const TRACEFS: &str = "/sys/kernel/tracing";
    const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";
    for dir in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(dir);
        }
    }
    let mounted =
        rustix::mount::mount("tracefs", TRACEFS, "tracefs", rustix::mount::MountFlags::empty(), None)
            .map_err(std::io::Error::from);
    match mounted {
        Ok(()) if Path::new(TRACEFS).join("events").is_dir() => {
            log::info!("mounted tracefs at {TRACEFS}");
            Ok(TRACEFS)
        }
        Ok(()) => Err(format!("tracefs mounted at {TRACEFS} has no events/ directory")),
        Err(err) => Err(format!("tracefs is not mounted and mounting it at {TRACEFS} failed ({err})")),
    }
}

/// True if a classic tracepoint exists.
pub fn has_tracepoint(tracefs: &str, category: &str, name: &str) -> bool {
    Path::new(tracefs).join("events").join(category).join(name).is_dir()
}

/// Why kprobes cannot work here, or `None` if the kernel has them.
pub fn kprobe_support() -> Option<String> {
    let pmu = Path::new("/sys/bus/event_source/devices/kprobe");
    let legacy = ["/sys/kernel/tracing/kprobe_events", "/sys/kernel/debug/tracing/kprobe_events"];
    if pmu.exists() || legacy.iter().any(|p| Path::new(p).exists()) {
        None
    } else {
        Some(format!(
            "no kprobe PMU ({}) and no kprobe_events in tracefs: the kernel was built without \
             CONFIG_KPROBES",
            pmu.display()
        ))
    }
}

/// Which of `wanted` are functions in `/proc/kallsyms` (kprobe targets), with addresses.
pub fn kallsyms_functions(wanted: &[&str]) -> HashMap<String, u64> {
    let Ok(file) = fs::File::open("/proc/kallsyms") else {
        return HashMap::new();
    };
    let wanted: HashSet<&str> = wanted.iter().copied().collect();
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (addr, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
            let addr = u64::from_str_radix(addr, 16).ok()?;
            (matches!(kind, "T" | "t") && wanted.contains(name)).then(|| (name.to_owned(), addr))
        })
        .collect()
}

/// Limits malloc to two arenas: plenty for a handful of threads, and it keeps freed memory
/// from being scattered over one arena per short-lived blocking thread. Call it first thing
/// in `main`, before any thread exists.
pub fn limit_arenas() {
    // glibc's own tunable: rustix and nix wrap system calls, not the C library's allocator.
    // SAFETY: mallopt only tunes the allocator; called before other threads exist.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
}

/// Possible CPUs: what the kernel sizes per-CPU map values by.
pub fn possible_cpus() -> u64 {
    aya::util::nr_cpus().map_or(1, |n| n as u64)
}

/// The default `limits.route_keys` for this host: the per-CPU route counters (one u64 per
/// lookup result) within their memory budget on its CPUs.
pub fn default_route_keys() -> u32 {
    let value_bytes = (netns_agent_common::routes::result::COUNT * 8) as u64;
    netns_agent_common::limits::route_keys_for_cpus(possible_cpus(), value_bytes)
}

/// Hands free heap pages back to the system (after a BTF parse or a /proc scan).
pub fn trim_heap() {
    // glibc's own call, as for mallopt above: no system-call crate wraps it.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
}

/// Blocks the calling thread until SIGINT or SIGTERM arrives (on a runtime of its own: call
/// it outside any async runtime).
pub fn wait_for_termination() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::runtime::Builder::new_current_thread().enable_io().build()?.block_on(async {
        // Both handlers are installed before waiting, so neither signal takes its default action.
        let (mut interrupt, mut terminate) =
            (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        Ok(())
    })
}

/// Whether the filesystem holding directory `dir` could take `bytes` more now: `Some(false)`
/// when it is read-only or has fewer free blocks than that, `None` when the kernel does not
/// say. Used to retry a failing events file only once there is room, so that a few bytes of
/// slack at the end of its last block do not make writes flap between failing and working.
pub fn has_room(dir: &Path, bytes: u64) -> Option<bool> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let stat = rustix::fs::statvfs(dir).ok()?;
    if stat.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
        return Some(false);
    }
    Some(stat.f_bavail.saturating_mul(stat.f_frsize) >= bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::privileges::effective_caps;

    #[test]
    fn room_is_asked_of_the_filesystem() {
        assert_eq!(has_room(Path::new("/no/such/dir"), 1), None);
        // procfs has no free blocks at all.
        assert_eq!(has_room(Path::new("/proc"), 1), Some(false));
        assert_eq!(has_room(Path::new(""), 0), Some(true), "the current directory, nothing needed");
    }

    #[test]
    fn versions_parse_from_distribution_releases() {
        assert_eq!(parse_version("6.12.117+deb12-amd64"), Some((6, 12)));
        assert_eq!(parse_version("6.1.0-56-amd64"), Some((6, 1)));
        assert_eq!(parse_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_version("5.4"), Some((5, 4)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn old_kernels_are_refused_with_the_minimum_named() {
        let err = check_kernel_version("5.4.0-150-generic").unwrap_err().to_string();
        assert!(err.contains("5.4.0-150-generic is too old"), "{err}");
        assert!(err.contains("5.10 or newer"), "{err}");
        assert!(check_kernel_version("5.9.16").is_err(), "no test runs of raw tracepoint programs");
        assert!(check_kernel_version("5.10.0-46-amd64").is_ok(), "Debian 11: agent keys, bounded walk");
        assert!(check_kernel_version("5.14.0").is_ok());
        assert!(check_kernel_version("6.18.44").is_ok());
        assert!(check_kernel_version("unknown").is_ok());
    }

    #[test]
    fn route_keys_scale_down_with_cpus() {
        use netns_agent_common::limits::{
            ROUTE_COUNTERS_BYTES, ROUTE_KEY_OVERHEAD_BYTES, route_keys_for_cpus,
        };
        assert_eq!(route_keys_for_cpus(2, 56), 65536);
        assert_eq!(route_keys_for_cpus(16, 56), 32768);
        assert_eq!(route_keys_for_cpus(128, 56), 4096);
        assert_eq!(route_keys_for_cpus(100_000, 56), 1024);
        for cpus in [1, 2, 4, 8, 16, 32, 64, 96, 128, 256] {
            let keys = u64::from(route_keys_for_cpus(cpus, 56));
            assert!(
                keys == 1024 || keys * (ROUTE_KEY_OVERHEAD_BYTES + 56 * cpus) <= ROUTE_COUNTERS_BYTES,
                "{cpus}"
            );
        }
    }

    #[test]
    fn capabilities_are_read_from_status() {
        let root = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        let nobody = "Name:\tx\nCapEff:\t0000000000000000\n";
        let bpf_only = format!("CapEff:\t{:016x}\n", CAP_BPF.mask() | CAP_PERFMON.mask());
        assert!(caps_allow_bpf(effective_caps(root).unwrap()));
        assert!(!caps_allow_bpf(effective_caps(nobody).unwrap()));
        assert!(caps_allow_bpf(effective_caps(&bpf_only).unwrap()));
        assert!(missing_bpf_caps(CAP_SYS_ADMIN.mask()).is_empty());
        assert_eq!(missing_bpf_caps(CAP_BPF.mask()), vec!["CAP_PERFMON", "CAP_SYS_ADMIN"]);
        assert_eq!(missing_bpf_caps(0), vec!["CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN"]);
        assert_eq!(effective_caps("no caps here"), None);
    }
}
