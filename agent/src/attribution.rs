//! Who owns a namespace: its processes, its names, its container and its pod, from /proc,
//! mountinfo and the CNI result cache. No API server, no open namespace handles: every
//! namespace is identified by `stat` on a path (which holds nothing open), and processes
//! or namespaces that vanish mid-scan are simply skipped.
//!
//! The main process of a namespace is its oldest (earliest start time; lowest pid on a tie):
//! for a container, the container's init; for `ip netns exec`, the first command started.

use std::{
    collections::{BTreeSet, HashMap},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::labels;

/// Where attribution reads from (configurable so tests can use fixtures).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sources {
    /// The proc filesystem (`/proc`).
    pub proc_root: PathBuf,
    /// The CNI plugins' result cache (`/var/lib/cni/results`).
    pub cni_cache_dir: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Self { proc_root: PathBuf::from("/proc"), cni_cache_dir: PathBuf::from("/var/lib/cni/results") }
    }
}

/// A process, as attribution needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: i32,
    /// Label-safe comm (untrusted bytes from the kernel).
    pub comm: String,
    /// Start time in clock ticks since boot (orders processes by age).
    pub start_ticks: u64,
}

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
    /// Names joined for the `name` label (`ip netns` names first).
    pub fn name_label(&self) -> String {
        self.names.iter().cloned().collect::<Vec<_>>().join(",")
    }
}

/// `task_struct.flags` bit of kernel threads.
const PF_KTHREAD: u32 = 0x0020_0000;

/// The inode number of the network namespace at `path` (a `/proc/PID/ns/net` link or an
/// nsfs bind mount), without keeping anything open.
fn netns_inode(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().and_then(|m| u32::try_from(m.ino()).ok())
}

/// Scans everything: processes, mounts, CNI cache.
pub fn scan(sources: &Sources) -> HashMap<u32, Owner> {
    let mut owners: HashMap<u32, Owner> = HashMap::new();
    scan_processes(sources, &mut owners);
    for (inum, name) in nsfs_mounts(sources) {
        owners.entry(inum).or_default().names.insert(name);
    }
    for pod in cni_pods(sources) {
        let owner = owners.entry(pod.inum).or_default();
        owner.pod = pod.name;
        owner.pod_namespace = pod.namespace;
        if owner.container_id.is_empty() {
            owner.container_id = pod.container_id;
        }
    }
    owners
}

/// One process: its namespace inode and what the info series shows of it.
pub fn process(sources: &Sources, pid: i32) -> Option<(u32, ProcessInfo, String)> {
    let dir = sources.proc_root.join(pid.to_string());
    let inum = netns_inode(&dir.join("ns/net"))?;
    let stat = procfs::process::Process::new_with_root(dir.clone()).ok()?.stat().ok()?;
    if stat.flags & PF_KTHREAD != 0 {
        return None; // kernel threads live in init_net but belong to no one
    }
    let comm = std::fs::read(dir.join("comm")).ok()?;
    let comm = labels::from_bytes(comm.strip_suffix(b"\n").unwrap_or(&comm));
    let cgroup = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
    let info = ProcessInfo { pid, comm, start_ticks: stat.starttime };
    Some((inum, info, container_id(&cgroup).unwrap_or_default()))
}

fn scan_processes(sources: &Sources, owners: &mut HashMap<u32, Owner>) {
    let Ok(all) = procfs::process::all_processes_with_root(&sources.proc_root) else {
        log::warn!("cannot list processes in {}", sources.proc_root.display());
        return;
    };
    let mut containers: HashMap<u32, String> = HashMap::new();
    for proc in all.flatten() {
        let pid = proc.pid;
        drop(proc);
        // Gone since the listing, or a kernel thread: nothing to attribute.
        let Some((inum, info, container)) = process(sources, pid) else {
            continue;
        };
        let owner = owners.entry(inum).or_default();
        owner.processes += 1;
        let older = owner
            .main
            .as_ref()
            .is_none_or(|main| (info.start_ticks, info.pid) < (main.start_ticks, main.pid));
        if older {
            owner.main = Some(info);
            containers.insert(inum, container);
        }
    }
    for (inum, container) in containers {
        if let Some(owner) = owners.get_mut(&inum) {
            owner.container_id = container;
        }
    }
}

/// Names of namespaces held by nsfs bind mounts, from the mount tables of the host (pid 1)
/// and of the agent.
pub fn nsfs_mounts(sources: &Sources) -> Vec<(u32, String)> {
    let mut found = BTreeSet::new();
    for pid in ["1", "self"] {
        let Ok(text) = std::fs::read_to_string(sources.proc_root.join(pid).join("mountinfo")) else {
            continue;
        };
        found.extend(parse_nsfs_mounts(&text));
    }
    found.into_iter().collect()
}

/// `(inode, name)` of every network-namespace bind mount in a mountinfo text: `ip netns`
/// mounts (`/run/netns/NAME`, `/var/run/netns/NAME`) by name, others by mount path.
pub fn parse_nsfs_mounts(mountinfo: &str) -> Vec<(u32, String)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = fields.iter().position(|f| *f == "-")?;
            if fields.get(separator + 1) != Some(&"nsfs") {
                return None;
            }
            let inum = fields.get(3)?.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()?;
            let mount_point = unescape_mountinfo(fields.get(4)?);
            let name = ["/run/netns/", "/var/run/netns/"]
                .iter()
                .find_map(|dir| mount_point.strip_prefix(dir))
                .map_or_else(|| mount_point.clone(), str::to_owned);
            Some((inum, name))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mountinfo(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Some(digits) = text.get(i + 1..i + 4)
            && let Ok(value) = u8::from_str_radix(digits, 8)
        {
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    labels::from_bytes(&out)
}

/// The container id in a `/proc/PID/cgroup` text, for the layouts of Docker, containerd
/// (CRI and plain), CRI-O, Podman and systemd scopes, on cgroup v1 and v2.
pub fn container_id(cgroup: &str) -> Option<String> {
    // Lines are `hierarchy:controllers:path`; the unified (v2) line is `0::path`. Prefer it,
    // then any v1 hierarchy; the id is the innermost path component that carries one.
    let mut lines: Vec<(bool, &str)> = cgroup
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (hierarchy, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((!(hierarchy == "0" && controllers.is_empty()), path))
        })
        .collect();
    lines.sort_by_key(|(v1, _)| *v1);
    lines.iter().find_map(|(_, path)| path.rsplit('/').find_map(id_in_component))
}

/// A 64-hex container id in one cgroup path component: `ID`, `docker-ID.scope`,
/// `cri-containerd-ID.scope`, `crio-ID.scope`, `libpod-ID.scope`, `crio-conmon-ID.scope`
/// is not a container (the monitor) and is skipped.
fn id_in_component(component: &str) -> Option<String> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    if name.contains("conmon") {
        return None;
    }
    let id = name.rsplit(['-', ':']).next()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

/// A pod found in the CNI cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniPod {
    pub inum: u32,
    pub name: String,
    pub namespace: String,
    pub container_id: String,
}

/// Pods from the CNI result cache: each file names the netns path, the (sandbox) container
/// id and the `K8S_POD_NAME`/`K8S_POD_NAMESPACE` arguments.
pub fn cni_pods(sources: &Sources) -> Vec<CniPod> {
    let Ok(entries) = std::fs::read_dir(&sources.cni_cache_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter_map(|text| parse_cni_result(&text))
        .filter_map(|(netns_path, pod)| {
            // In a container the host's netns files are under /proc/1/root (hostPID).
            let on_host = sources.proc_root.join("1/root").join(netns_path.trim_start_matches('/'));
            let inum = netns_inode(Path::new(&netns_path)).or_else(|| netns_inode(&on_host))?;
            Some(CniPod { inum, ..pod })
        })
        .collect()
}

/// The netns path and pod of one cache file (`inum` left 0).
pub fn parse_cni_result(text: &str) -> Option<(String, CniPod)> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let netns = value.get("netns")?.as_str()?.to_owned();
    let arg = |key: &str| {
        value
            .get("cniArgs")?
            .as_array()?
            .iter()
            .filter_map(|pair| pair.as_array())
            .find(|pair| pair.first().and_then(|k| k.as_str()) == Some(key))
            .and_then(|pair| pair.get(1)?.as_str().map(str::to_owned))
    };
    let pod = CniPod {
        inum: 0,
        name: arg("K8S_POD_NAME")?,
        namespace: arg("K8S_POD_NAMESPACE").unwrap_or_default(),
        container_id: value.get("containerId").and_then(|c| c.as_str()).unwrap_or_default().to_owned(),
    };
    Some((netns, pod))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4a1c2b9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";

    #[test]
    fn container_ids_come_from_every_common_cgroup_layout() {
        let cases = [
            // Docker, cgroup v2 (systemd driver) and v1 (cgroupfs driver)
            (format!("0::/system.slice/docker-{ID}.scope\n"), Some(ID)),
            (format!("12:memory:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n"), Some(ID)),
            // containerd CRI: systemd driver (v2), cgroupfs driver (v1)
            (
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_5f60_7182_93a4_b5c6d7e8f901.slice/cri-containerd-{ID}.scope\n"
                ),
                Some(ID),
            ),
            (format!("4:pids:/kubepods/besteffort/pod1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901/{ID}\n"), Some(ID)),
            // plain containerd (namespace/id)
            (format!("0::/default/{ID}\n"), Some(ID)),
            // CRI-O, and its monitor which is not the container
            (format!("0::/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope\n"), Some(ID)),
            (format!("0::/machine.slice/crio-conmon-{ID}.scope\n"), None),
            // Podman, rootful (machine.slice) and rootless (user slice), with a sub-cgroup
            (format!("0::/machine.slice/libpod-{ID}.scope/container\n"), Some(ID)),
            (
                format!("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope\n"),
                Some(ID),
            ),
            // plain systemd services and sessions: no container
            ("0::/system.slice/sshd.service\n".to_owned(), None),
            ("0::/user.slice/user-0.slice/session-3.scope\n".to_owned(), None),
            ("0::/\n".to_owned(), None),
            // hybrid: v1 lines and a v2 line; the v2 line wins
            (format!("12:memory:/other\n0::/system.slice/docker-{ID}.scope\n"), Some(ID)),
        ];
        for (cgroup, want) in cases {
            assert_eq!(container_id(&cgroup).as_deref(), want, "{cgroup}");
        }
    }

    #[test]
    fn nsfs_mounts_are_named() {
        let mountinfo = "\
36 25 0:4 net:[4026532177] /run/netns/red rw shared:5 - nsfs nsfs rw\n\
37 25 0:4 net:[4026532246] /var/run/docker/netns/1a2b3c rw - nsfs nsfs rw\n\
38 25 0:4 mnt:[4026532300] /run/mntns/x rw - nsfs nsfs rw\n\
39 25 0:4 net:[4026532400] /run/netns/with\\040space rw - nsfs nsfs rw\n\
40 25 8:1 / / rw - ext4 /dev/vda rw\n";
        assert_eq!(
            parse_nsfs_mounts(mountinfo),
            vec![
                (4026532177, "red".to_owned()),
                (4026532246, "/var/run/docker/netns/1a2b3c".to_owned()),
                (4026532400, "with space".to_owned()),
            ]
        );
    }

    #[test]
    fn cni_cache_files_give_pods() {
        let text = r#"{"kind":"cniCacheV1","containerId":"abc123","config":"e30=","ifName":"eth0",
            "networkName":"cbr0","netns":"/var/run/netns/cni-1234",
            "cniArgs":[["IgnoreUnknown","1"],["K8S_POD_NAMESPACE","shop"],["K8S_POD_NAME","cart-7d9f"],
                       ["K8S_POD_INFRA_CONTAINER_ID","abc123"]],"result":{}}"#;
        let (netns, pod) = parse_cni_result(text).unwrap();
        assert_eq!(netns, "/var/run/netns/cni-1234");
        assert_eq!(
            (pod.name.as_str(), pod.namespace.as_str(), pod.container_id.as_str()),
            ("cart-7d9f", "shop", "abc123")
        );
        assert!(parse_cni_result("{}").is_none());
        assert!(parse_cni_result("not json").is_none());
    }

    #[test]
    fn the_oldest_process_is_the_main_one() {
        // This test process and its parent share a namespace; the scan finds a main process
        // no younger than this one.
        let owners = scan(&Sources::default());
        let me = process(&Sources::default(), std::process::id() as i32).unwrap();
        let owner = &owners[&me.0];
        assert!(owner.processes >= 1);
        let main = owner.main.as_ref().unwrap();
        assert!(main.start_ticks <= me.1.start_ticks);
    }
}

/// Something that keeps a namespace alive without living in it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    pub pid: i32,
    pub comm: String,
    pub fd: i32,
    /// `netns fd` (an open /proc/PID/ns/net or nsfs file) or `socket` (created in it).
    pub kind: &'static str,
}

/// `SIOCGSKNS`: an ioctl on a socket that returns a file descriptor of its namespace.
const SIOCGSKNS: libc::c_ulong = 0x894C;

/// Finds processes holding the namespaces `targets` through a file descriptor: an nsfs
/// descriptor of the namespace, or a socket created in it. A socket's namespace is asked
/// of the socket itself (duplicated with pidfd_getfd, SIOCGSKNS), and every duplicate is
/// closed at once: the agent holds nothing past this call.
pub fn find_holders(
    sources: &Sources,
    targets: &std::collections::HashSet<u32>,
) -> HashMap<u32, Vec<Holder>> {
    let mut found: HashMap<u32, Vec<Holder>> = HashMap::new();
    if targets.is_empty() {
        return found;
    }
    let Ok(all) = procfs::process::all_processes_with_root(&sources.proc_root) else { return found };
    let nsfs_dev = std::fs::metadata(sources.proc_root.join("self/ns/net")).ok().map(|m| m.dev());
    for proc in all.flatten() {
        let pid = proc.pid;
        drop(proc);
        let dir = sources.proc_root.join(pid.to_string());
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else { continue };
        let comm = std::fs::read(dir.join("comm"))
            .map(|c| labels::from_bytes(c.trim_ascii_end()))
            .unwrap_or_default();
        let mut pidfd: Option<Option<std::os::fd::OwnedFd>> = None;
        for fd in fds.flatten() {
            let Some(fd_num) = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let Ok(link) = std::fs::read_link(fd.path()) else { continue };
            let link = link.to_string_lossy();
            let (inum, kind) = if link.starts_with("socket:[") {
                let pidfd = pidfd.get_or_insert_with(|| open_pidfd(pid));
                (pidfd.as_ref().and_then(|p| socket_netns(p, fd_num)), "socket")
            } else {
                // An nsfs file, however it was opened (/proc/PID/ns/net, an ip netns path
                // since unmounted): stat through the fd, which opens nothing.
                match std::fs::metadata(fd.path()) {
                    Ok(meta) if Some(meta.dev()) == nsfs_dev => (u32::try_from(meta.ino()).ok(), "netns fd"),
                    _ => continue,
                }
            };
            if let Some(inum) = inum.filter(|i| targets.contains(i)) {
                found.entry(inum).or_default().push(Holder { pid, comm: comm.clone(), fd: fd_num, kind });
            }
        }
    }
    found
}

fn open_pidfd(pid: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: pidfd_open returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a fresh fd we own.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// The namespace inode of socket `fd` of the process behind `pidfd`.
fn socket_netns(pidfd: &std::os::fd::OwnedFd, fd: i32) -> Option<u32> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    // SAFETY: pidfd_getfd duplicates the target's fd into ours, or fails.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return None;
    }
    // SAFETY: a fresh fd we own; dropping it closes it.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(dup as i32) };
    // SAFETY: the ioctl returns a new fd of the socket's namespace, or fails.
    let ns = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCGSKNS as _) };
    drop(socket);
    if ns < 0 {
        return None;
    }
    // SAFETY: a fresh fd we own.
    let ns = std::fs::File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(ns) });
    ns.metadata().ok().and_then(|m| u32::try_from(m.ino()).ok())
}
