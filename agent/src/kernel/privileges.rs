//! The capabilities the agent uses, what each is for and when, and the drop of those that
//! only start-up needs. One registry: the start-up warnings, `check`, the drop after
//! start-up and the README's table all read [`USES`].

use std::fs;

/// A Linux capability: its bit in the `/proc/PID/status` masks and its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub bit: u32,
    pub name: &'static str,
}

impl Capability {
    const fn new(bit: u32, name: &'static str) -> Self {
        Self { bit, name }
    }

    pub fn mask(self) -> u64 {
        1 << self.bit
    }

    pub fn is_in(self, caps: u64) -> bool {
        caps & self.mask() != 0
    }
}

pub const CAP_DAC_READ_SEARCH: Capability = Capability::new(2, "CAP_DAC_READ_SEARCH");
pub const CAP_NET_ADMIN: Capability = Capability::new(12, "CAP_NET_ADMIN");
pub const CAP_SYS_PTRACE: Capability = Capability::new(19, "CAP_SYS_PTRACE");
pub const CAP_SYS_ADMIN: Capability = Capability::new(21, "CAP_SYS_ADMIN");
pub const CAP_SYS_RESOURCE: Capability = Capability::new(24, "CAP_SYS_RESOURCE");
pub const CAP_PERFMON: Capability = Capability::new(38, "CAP_PERFMON");
pub const CAP_BPF: Capability = Capability::new(39, "CAP_BPF");

/// When a capability is used: only while starting (then dropped), or for as long as the
/// agent runs (kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    StartUp,
    Running,
}

/// One use of one capability.
#[derive(Debug)]
pub struct Use {
    pub cap: Capability,
    pub phase: Phase,
    /// What it allows.
    pub what: &'static str,
    /// What the agent cannot do without it (start-up refuses where that is everything).
    pub without: &'static str,
}

/// Every capability the agent uses, in the order `check` lists them. The shipped systemd unit
/// and DaemonSet grant exactly these (the privileges test reads them from the files).
pub const USES: &[Use] = &[
    Use {
        cap: CAP_BPF,
        phase: Phase::Running,
        what: "load programs and create maps; read the maps (kernels before 6.5 check it on every bpf() call)",
        without: "nothing loads (start-up refuses)",
    },
    Use {
        cap: CAP_PERFMON,
        phase: Phase::StartUp,
        what: "attach tracing programs that read kernel memory",
        without: "nothing attaches (start-up refuses)",
    },
    Use {
        cap: CAP_SYS_ADMIN,
        phase: Phase::StartUp,
        what: "mount tracefs when the host has not (classic tracepoints live there)",
        without: "no classic tracepoints where tracefs is not mounted (start-up refuses)",
    },
    Use {
        cap: CAP_SYS_RESOURCE,
        phase: Phase::StartUp,
        what: "raise RLIMIT_MEMLOCK for maps on kernels before 5.11",
        without: "maps may not fit the memlock limit on kernels before 5.11",
    },
    Use {
        cap: CAP_SYS_PTRACE,
        phase: Phase::Running,
        what: "read every process's /proc/PID/ns/net and the host's mounts through /proc/1; \
               duplicate a holder's socket (pidfd_getfd) to ask its namespace",
        without: "namespaces of other users' processes go unnamed (start-up refuses)",
    },
    Use {
        cap: CAP_DAC_READ_SEARCH,
        phase: Phase::Running,
        what: "list other users' /proc/PID/fd, where the holders of orphaned namespaces are",
        without: "holders among other users' processes are not found: `held by` says unknown",
    },
    Use {
        cap: CAP_NET_ADMIN,
        phase: Phase::Running,
        what: "ask a socket which namespace it was made in (SIOCGSKNS), for holders of orphaned namespaces",
        without: "sockets holding a namespace are not found: `held by` says unknown",
    },
];

/// The effective set in a `/proc/PID/status` text.
pub fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// This process's effective capabilities (none when they cannot be read).
pub fn own_caps() -> u64 {
    effective_caps(&fs::read_to_string("/proc/self/status").unwrap_or_default()).unwrap_or(0)
}

/// Names of the capabilities in `caps` that the agent uses, in registry order.
pub fn names(caps: u64) -> Vec<&'static str> {
    let mut names: Vec<&str> = USES.iter().map(|u| u.cap).filter(|c| c.is_in(caps)).map(|c| c.name).collect();
    names.dedup();
    names
}

/// The running-phase uses `caps` cannot serve that start-up does not already refuse:
/// features that will quietly be missing, for one warning each at start-up and for `check`.
pub fn degraded(caps: u64) -> Vec<&'static Use> {
    USES.iter()
        .filter(|u| u.phase == Phase::Running && !u.cap.is_in(caps))
        .filter(|u| ![CAP_BPF, CAP_SYS_PTRACE].contains(&u.cap))
        .collect()
}

/// What running needs: the union of the running-phase uses.
pub fn running_set() -> u64 {
    USES.iter().filter(|u| u.phase == Phase::Running).fold(0, |set, u| set | u.cap.mask())
}

/// The capabilities kept and dropped by [`drop_start_up_caps`].
#[derive(Debug, PartialEq, Eq)]
pub struct Dropped {
    pub kept: u64,
    pub dropped: u64,
}

/// Drops from this thread every capability running does not need: start-up's, and any the
/// agent was given but never uses (full root has 41). Capabilities are per thread, and a
/// thread inherits its creator's: call it while the process has one thread, before the
/// runtime starts its workers, so every thread the agent ever has runs with the reduced set.
/// The bounding set stays (changing it needs CAP_SETPCAP, which the shipped sets do not grant):
/// the agent never executes anything, so it cannot regain what it dropped.
pub fn drop_start_up_caps() -> std::io::Result<Dropped> {
    use rustix::thread::{CapabilitySet, CapabilitySets};
    let before = rustix::thread::capabilities(None)?;
    let kept = before.effective.bits() & running_set();
    let keep = CapabilitySet::from_bits_retain(kept);
    rustix::thread::set_capabilities(
        None,
        CapabilitySets { effective: keep, permitted: keep, inheritable: CapabilitySet::empty() },
    )?;
    Ok(Dropped { kept, dropped: before.permitted.bits() & !kept })
}

/// The number of threads of this process (1 before the runtime starts).
pub fn thread_count() -> Option<usize> {
    Some(fs::read_dir("/proc/self/task").ok()?.count())
}

/// README's capability table, from [`USES`].
pub fn markdown_table() -> String {
    let mut out = String::from("| capability | used | for | without it |\n|---|---|---|---|\n");
    for u in USES {
        let phase = match u.phase {
            Phase::StartUp => "start-up, then dropped",
            Phase::Running => "kept while running",
        };
        out.push_str(&format!("| `{}` | {phase} | {} | {} |\n", u.cap.name, u.what, u.without));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_table_matches_the_registry() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).unwrap();
        let (begin, end) = ("<!-- capabilities:", "<!-- end of capabilities -->");
        let start = readme.find(begin).expect("README has the capabilities markers");
        let start = start + readme[start..].find('\n').unwrap() + 1;
        let stop = readme.find(end).expect("README has the capabilities end marker");
        if std::env::var_os("NETNS_AGENT_UPDATE_DOCS").is_some() {
            std::fs::write(&path, format!("{}{}{}", &readme[..start], markdown_table(), &readme[stop..]))
                .unwrap();
            return;
        }
        assert_eq!(
            &readme[start..stop],
            markdown_table(),
            "README's capability table is stale: run NETNS_AGENT_UPDATE_DOCS=1 cargo test -p netns-agent privileges"
        );
    }

    #[test]
    fn running_keeps_what_reading_maps_and_finding_holders_need() {
        let names = names(running_set());
        assert_eq!(names, ["CAP_BPF", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_NET_ADMIN"]);
    }

    #[test]
    fn degraded_names_only_what_start_up_does_not_refuse() {
        let all = USES.iter().fold(0, |s, u| s | u.cap.mask());
        assert!(degraded(all).is_empty());
        let caps: Vec<&str> = degraded(all & !CAP_NET_ADMIN.mask() & !CAP_SYS_PTRACE.mask())
            .iter()
            .map(|u| u.cap.name)
            .collect();
        assert_eq!(caps, ["CAP_NET_ADMIN"]);
    }

    #[test]
    fn effective_set_from_status() {
        assert_eq!(effective_caps("Name:\tx\nCapEff:\t000000c000000000\n"), Some(0xc0_0000_0000));
        assert_eq!(effective_caps("Name:\tx\n"), None);
    }
}
