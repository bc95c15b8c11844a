//! Who owns a namespace: its processes, its names, its container and its pod, assembled from
//! the host's processes, nsfs mounts and the CNI result cache (read by `kernel::procfs`).
//!
//! The main process of a namespace is its oldest (earliest start time; lowest pid on a tie):
//! for a container, the container's init; for `ip netns exec`, the first command started.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::SystemTime,
};

use crate::kernel::procfs::{self, Holder, ProcessInfo, ProcessRecord, Sources};

/// What is known about one namespace (by inode number).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// Names: `ip netns` names, other nsfs bind mounts by path.
    pub names: BTreeSet<String>,
    /// The oldest process in it.
    pub main: Option<ProcessInfo>,
    /// How many processes (not threads) are in it.
    pub processes: u32,
    /// The container of the main process (from its cgroup), else from the CNI cache.
    pub container_id: String,
    pub pod: String,
    pub pod_namespace: String,
}

impl Owner {
    /// Names joined for the `name` label.
    pub fn name_label(&self) -> String {
        self.names.iter().cloned().collect::<Vec<_>>().join(",")
    }
}

/// The result of the last full attribution scan.
#[derive(Default, Debug)]
pub struct Ownership {
    pub owners: HashMap<u32, Owner>,
    /// Processes holding orphaned namespaces by a file descriptor.
    pub holders: HashMap<u32, Vec<Holder>>,
    /// The namespaces the holder search looked for (those orphaned when it ran).
    pub holders_searched: HashSet<u32>,
    /// Processes the holder search could not fully check (see `procfs::Holders`).
    pub holders_unchecked: u32,
    /// When the scan began.
    pub scanned: Option<SystemTime>,
}

/// Scans everything: processes, mounts, CNI cache. Blocking (reads /proc): call it from a
/// blocking thread.
pub fn scan(sources: &Sources) -> HashMap<u32, Owner> {
    let processes = procfs::processes(sources);
    if !processes.iter().any(|r| r.info.pid == 1) {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            log::warn!(
                "cannot read {}/1: the host namespace's main process (init) is shown as unknown",
                sources.proc_root.display()
            )
        });
    }
    assemble(processes, procfs::nsfs_mounts(sources), procfs::cni_entries(sources))
}

/// The `name` of the host's (init's) namespace. Runtimes bind-mount it under names of their
/// own (Docker's `/run/docker/netns/default`), which would pass it off as a container's.
pub const HOST_NAME: &str = "host";

/// `init_net`'s inode number (`PROC_NET_INIT_INO`, fixed since Linux 3.8): the host's
/// namespace, known even where /proc/1 cannot be read.
pub const HOST_NETNS: u32 = 0xEFFF_FFF9;

/// Joins processes, mount names and CNI entries into owners by namespace inode. The host's
/// namespace is named `host` whatever else mounts it, and its main process is init (pid 1),
/// or unknown when pid 1 cannot be read: never whichever process happens to be oldest.
pub fn assemble(
    processes: Vec<ProcessRecord>,
    mounts: Vec<(u32, String)>,
    cni: Vec<(u32, crate::parse::cni::CniEntry)>,
) -> HashMap<u32, Owner> {
    let mut owners: HashMap<u32, Owner> = HashMap::new();
    let host = Some(HOST_NETNS);
    for record in processes {
        let owner = owners.entry(record.netns).or_default();
        owner.processes += 1;
        if record.netns == HOST_NETNS && record.info.pid != 1 {
            continue;
        }
        let older = owner
            .main
            .as_ref()
            .is_none_or(|main| (record.info.start_ticks, record.info.pid) < (main.start_ticks, main.pid));
        if older {
            owner.main = Some(record.info);
            owner.container_id = record.container_id;
        }
    }
    for (inum, name) in mounts {
        if Some(inum) != host {
            owners.entry(inum).or_default().names.insert(name);
        }
    }
    if let Some(host) = host {
        owners.entry(host).or_default().names = [HOST_NAME.to_owned()].into();
    }
    for (inum, entry) in cni {
        let owner = owners.entry(inum).or_default();
        if let Some((name, namespace)) = entry.pod {
            owner.pod = name;
            owner.pod_namespace = namespace;
        }
        if owner.container_id.is_empty() {
            owner.container_id = entry.container_id;
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::cni::CniEntry;

    fn record(netns: u32, pid: i32, start: u64, container: &str) -> ProcessRecord {
        ProcessRecord {
            netns,
            info: ProcessInfo { pid, comm: format!("p{pid}"), start_ticks: start },
            container_id: container.into(),
        }
    }

    #[test]
    fn the_oldest_process_is_the_main_one_and_names_its_container() {
        let owners = assemble(
            vec![record(7, 300, 50, "c-young"), record(7, 200, 10, "c-old"), record(7, 100, 10, "c-tie")],
            vec![(7, "red".into())],
            vec![],
        );
        let o = &owners[&7];
        assert_eq!(o.processes, 3);
        assert_eq!(o.main.as_ref().unwrap().pid, 100, "lowest pid wins a tie");
        assert_eq!(o.container_id, "c-tie");
        assert_eq!(o.name_label(), "red");
    }

    #[test]
    fn the_host_namespace_is_named_host_not_after_a_runtime_mount() {
        let owners = assemble(
            vec![record(HOST_NETNS, 900, 1, ""), record(HOST_NETNS, 1, 5, ""), record(2, 1000, 60, "")],
            vec![(HOST_NETNS, "/run/docker/netns/default".into()), (2, "red".into())],
            vec![],
        );
        assert_eq!(owners[&HOST_NETNS].name_label(), "host");
        assert_eq!(owners[&HOST_NETNS].main.as_ref().unwrap().pid, 1, "init is the host's main process");
        assert_eq!(owners[&HOST_NETNS].processes, 2);
        assert_eq!(owners[&2].name_label(), "red");
        // Where pid 1 cannot be read, the host's main process is unknown, not the oldest other.
        let owners = assemble(vec![record(HOST_NETNS, 900, 1, "")], vec![], vec![]);
        assert_eq!(owners[&HOST_NETNS].main, None);
        assert_eq!(owners[&HOST_NETNS].name_label(), "host");
    }

    #[test]
    fn cni_entries_give_pods_and_fill_a_missing_container() {
        let pod = CniEntry {
            netns_path: "/x".into(),
            container_id: "sandbox".into(),
            pod: Some(("web".into(), "shop".into())),
        };
        let owners = assemble(vec![record(8, 1, 1, "")], vec![], vec![(8, pod)]);
        assert_eq!((owners[&8].pod.as_str(), owners[&8].pod_namespace.as_str()), ("web", "shop"));
        assert_eq!(owners[&8].container_id, "sandbox");
    }

    #[test]
    fn a_real_scan_finds_this_process() {
        let sources = Sources { proc_root: "/proc".into(), cni_cache_dir: "/nonexistent".into() };
        let owners = scan(&sources);
        let me = procfs::process(&sources, std::process::id() as i32).unwrap();
        let owner = &owners[&me.netns];
        assert!(owner.processes >= 1);
        match &owner.main {
            // The host's main process is init, or unknown where /proc/1 is hidden.
            main if me.netns == HOST_NETNS => assert!(main.as_ref().is_none_or(|m| m.pid == 1)),
            main => assert!(main.as_ref().unwrap().start_ticks <= me.info.start_ticks),
        }
    }
}
