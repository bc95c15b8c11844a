//! Reading processes, mounts, file descriptors and the CNI cache from the host. Every
//! namespace is identified by `stat` on a path (which holds nothing open), and processes or
//! namespaces that vanish mid-scan are skipped, never an error. The text read here is
//! untrusted and goes through [`crate::parse`].

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::parse::{self, cni::CniEntry, labels};

/// Where the host's facts are read from (configurable so tests can use fixtures, and so a
/// containerised agent can read the host's through `/proc/1/root`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sources {
    /// The proc filesystem (`/proc`).
    pub proc_root: PathBuf,
    /// The CNI plugins' result cache (`/var/lib/cni/results`).
    pub cni_cache_dir: PathBuf,
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

/// One process and the namespace it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessRecord {
    /// Its network namespace's inode number.
    pub netns: u32,
    pub info: ProcessInfo,
    /// The container its cgroup names, or empty.
    pub container_id: String,
}

/// `task_struct.flags` bit of kernel threads.
const PF_KTHREAD: u32 = 0x0020_0000;

/// The inode number of the network namespace at `path` (a `/proc/PID/ns/net` link or an
/// nsfs bind mount), without keeping anything open.
pub fn netns_inode(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().and_then(|m| u32::try_from(m.ino()).ok())
}

/// One process: its namespace and what attribution shows of it; `None` for a process that
/// is gone or a kernel thread (those live in init_net but belong to no one).
pub fn process(sources: &Sources, pid: i32) -> Option<ProcessRecord> {
    let dir = sources.proc_root.join(pid.to_string());
    let netns = netns_inode(&dir.join("ns/net"))?;
    let stat = procfs::process::Process::new_with_root(dir.clone()).ok()?.stat().ok()?;
    if stat.flags & PF_KTHREAD != 0 {
        return None;
    }
    let comm = std::fs::read(dir.join("comm")).ok()?;
    let comm = labels::from_bytes(comm.strip_suffix(b"\n").unwrap_or(&comm));
    let cgroup = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
    let info = ProcessInfo { pid, comm, start_ticks: stat.starttime };
    Some(ProcessRecord {
        netns,
        info,
        container_id: parse::cgroup::container_id(&cgroup).unwrap_or_default(),
    })
}

/// The pids of every process now (threads excluded).
pub fn pids(sources: &Sources) -> Vec<i32> {
    match procfs::process::all_processes_with_root(&sources.proc_root) {
        Ok(all) => all.flatten().map(|p| p.pid).collect(),
        Err(err) => {
            log::warn!("cannot list processes in {}: {err}", sources.proc_root.display());
            Vec::new()
        }
    }
}

/// Every user process with its namespace.
pub fn processes(sources: &Sources) -> Vec<ProcessRecord> {
    pids(sources).into_iter().filter_map(|pid| process(sources, pid)).collect()
}

/// Names of namespaces held by nsfs bind mounts, from the mount tables of the host (pid 1)
/// and of the agent.
pub fn nsfs_mounts(sources: &Sources) -> Vec<(u32, String)> {
    let mut found = std::collections::BTreeSet::new();
    for pid in ["1", "self"] {
        let Some(text) = read_mountinfo(&sources.proc_root.join(pid).join("mountinfo")) else {
            continue;
        };
        found.extend(parse::mountinfo::nsfs_mounts(&text));
    }
    found.into_iter().collect()
}

/// Wakes when the host's mount table changes: a runtime bind-mounts a new namespace's netns
/// file (`/run/netns/NAME`, `/var/run/docker/netns/ID`) after creating it, at a moment the
/// creation event cannot tell, and a scan made before it names the namespace "". The kernel
/// flags `/proc/PID/mountinfo` with POLLPRI on every change of that process's mount table,
/// which is how systemd follows mounts too. `None` where the host's table cannot be opened
/// (the periodic rescan still runs).
pub struct MountWatch(tokio::io::unix::AsyncFd<std::fs::File>);

impl MountWatch {
    /// Watches pid 1's mount table (the one `nsfs_mounts` reads first). Call inside a runtime.
    pub fn open(sources: &Sources) -> Option<Self> {
        let path = sources.proc_root.join("1").join("mountinfo");
        let watch = std::fs::File::open(&path).and_then(|file| {
            // SAFETY: the File owns its descriptor, open until the AsyncFd (which owns the
            // File) drops it, and as_raw_fd always returns that one descriptor.
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(file, tokio::io::Interest::PRIORITY) }
                .map_err(std::io::Error::from)
        });
        match watch {
            Ok(fd) => Some(Self(fd)),
            Err(err) => {
                static ONCE: std::sync::Once = std::sync::Once::new();
                ONCE.call_once(|| {
                    log::warn!(
                        "cannot watch {} ({err}): names of netns files mounted after a namespace \
                         appears come with the next periodic scan",
                        path.display()
                    )
                });
                None
            }
        }
    }

    /// Returns after the next change of the mount table.
    pub async fn changed(&self) -> std::io::Result<()> {
        let mut ready = self.0.ready(tokio::io::Interest::PRIORITY).await?;
        // The kernel reports a change once per poll; tokio's edge-triggered registration then
        // waits for the next one.
        ready.clear_ready();
        Ok(())
    }
}

/// A mountinfo file as text (not procfs's `Process::mountinfo()`, which fails the whole file
/// on a byte that is not UTF-8). Mount points may hold any bytes but the four the kernel escapes:
/// invalid UTF-8 is written as octal escapes (`\377`), as the kernel writes the others, so
/// one odd mount cannot hide every other mount's name, and the label shows it as `\xff`.
fn read_mountinfo(path: &Path) -> Option<String> {
    use std::fmt::Write as _;
    let bytes = std::fs::read(path).ok()?;
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(text, "\\{b:03o}");
        }
    }
    Some(text)
}

/// Entries of the CNI result cache whose namespace exists now, with its inode number.
pub fn cni_entries(sources: &Sources) -> Vec<(u32, CniEntry)> {
    let Ok(entries) = std::fs::read_dir(&sources.cni_cache_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter_map(|text| parse::cni::parse(&text))
        .filter_map(|entry| {
            // In a container the host's netns files are under /proc/1/root (hostPID).
            let on_host = sources.proc_root.join("1/root").join(entry.netns_path.trim_start_matches('/'));
            let inum = netns_inode(Path::new(&entry.netns_path)).or_else(|| netns_inode(&on_host))?;
            Some((inum, entry))
        })
        .collect()
}

/// Something that keeps a namespace alive without living in it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    pub pid: i32,
    pub comm: String,
    pub fd: i32,
    /// `netns fd` (an open /proc/PID/ns/net or nsfs file) or `socket` (created in it).
    pub kind: &'static str,
    /// The container the holding process's cgroup names, or empty.
    pub container_id: String,
}

/// `SIOCGSKNS`: an ioctl on a socket that returns a file descriptor of its namespace.
const SIOCGSKNS: libc::c_ulong = 0x894C;

/// What [`find_holders`] found, and what it could not look at.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Holders {
    pub found: HashMap<u32, Vec<Holder>>,
    /// Processes whose file descriptors could not all be checked for want of a permission
    /// (another user's fd table without CAP_DAC_READ_SEARCH, a socket's namespace without
    /// CAP_NET_ADMIN, a process the agent may not trace): with any, a namespace with no holder
    /// found has an unknown one.
    pub unchecked: u32,
}

/// Finds processes holding the namespaces `targets` through a file descriptor: an nsfs
/// descriptor of the namespace, or a socket created in it. A socket's namespace is asked
/// of the socket itself (duplicated with pidfd_getfd, SIOCGSKNS), and every duplicate is
/// closed at once: the agent holds nothing past this call. A process that exits meanwhile
/// is skipped; a process that permissions hide, wholly or in part, is counted in
/// [`Holders::unchecked`].
pub fn find_holders(sources: &Sources, targets: &HashSet<u32>) -> Holders {
    let mut holders = Holders::default();
    if targets.is_empty() {
        return holders;
    }
    let denied = |err: &std::io::Error| err.kind() == std::io::ErrorKind::PermissionDenied;
    let nsfs_dev = std::fs::metadata(sources.proc_root.join("self/ns/net")).ok().map(|m| m.dev());
    for pid in pids(sources) {
        let dir = sources.proc_root.join(pid.to_string());
        // Whether a permission hid some of this process's descriptors.
        let mut hidden = false;
        // Not procfs's `Process::fd()`: it types an fd by its link's text, but an nsfs file
        // opened by a path (an `ip netns` mount) links to that path, so every fd is stat'ed here
        // anyway; and it fails an fd whose link is not UTF-8.
        let fds = match std::fs::read_dir(dir.join("fd")) {
            Ok(fds) => fds,
            Err(err) => {
                if denied(&err) {
                    log::debug!("holders: cannot list {}/fd: {err}", dir.display());
                    holders.unchecked += 1;
                }
                continue;
            }
        };
        let comm = std::fs::read(dir.join("comm"))
            .map(|c| labels::from_bytes(c.trim_ascii_end()))
            .unwrap_or_default();
        let mut pidfd: Option<Option<std::os::fd::OwnedFd>> = None;
        // Read only for a process that holds something: most hold nothing.
        let mut container_id: Option<String> = None;
        for fd in fds.flatten() {
            let Some(fd_num) = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let link = match std::fs::read_link(fd.path()) {
                Ok(link) => link,
                Err(err) => {
                    hidden |= denied(&err);
                    continue;
                }
            };
            let (inum, kind) = if link.to_string_lossy().starts_with("socket:[") {
                let pidfd = pidfd.get_or_insert_with(|| open_pidfd(pid));
                let Some(pidfd) = pidfd.as_ref() else { continue };
                match socket_netns(pidfd, fd_num) {
                    Ok(inum) => (inum, "socket"),
                    Err(err) => {
                        hidden |= denied(&err);
                        continue;
                    }
                }
            } else {
                // An nsfs file, however it was opened (/proc/PID/ns/net, an ip netns path
                // since unmounted): stat through the fd, which opens nothing.
                match std::fs::metadata(fd.path()) {
                    Ok(meta) if Some(meta.dev()) == nsfs_dev => (u32::try_from(meta.ino()).ok(), "netns fd"),
                    Ok(_) => continue,
                    Err(err) => {
                        hidden |= denied(&err);
                        continue;
                    }
                }
            };
            if let Some(inum) = inum.filter(|i| targets.contains(i)) {
                let container_id = container_id
                    .get_or_insert_with(|| {
                        let cgroup = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
                        parse::cgroup::container_id(&cgroup).unwrap_or_default()
                    })
                    .clone();
                holders.found.entry(inum).or_default().push(Holder {
                    pid,
                    comm: comm.clone(),
                    fd: fd_num,
                    kind,
                    container_id,
                });
            }
        }
        if hidden {
            log::debug!("holders: some file descriptors of pid {pid} cannot be checked (permission denied)");
            holders.unchecked += 1;
        }
    }
    holders
}

/// A pidfd of `pid`; `None` if it has exited.
fn open_pidfd(pid: i32) -> Option<std::os::fd::OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// The namespace inode of socket `fd` of the process behind `pidfd` (`None`: not a socket
/// with a namespace); permission errors are returned as such.
fn socket_netns(pidfd: &std::os::fd::OwnedFd, fd: i32) -> std::io::Result<Option<u32>> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    let socket = rustix::process::pidfd_getfd(pidfd, fd, rustix::process::PidfdGetfdFlags::empty())?;
    // SAFETY: SIOCGSKNS takes no argument and returns a new fd of the socket's namespace, or
    // fails. (rustix's ioctl wrappers discard an ioctl's return value, which is the fd here.)
    let ns = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCGSKNS as _) };
    if ns < 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(socket);
    // SAFETY: a fresh fd nobody else owns; the File closes it on drop.
    let ns = std::fs::File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(ns) });
    Ok(ns.metadata().ok().and_then(|m| u32::try_from(m.ino()).ok()))
}

/// Container ids by cgroup id (the v2 cgroup's inode number, what `bpf_get_current_cgroup_id`
/// returns), for creations whose process has exited before `/proc` could be read (runc's
/// `runc:[1:CHILD]` unshares the namespace and exits within milliseconds). The cgroup tree is
/// walked through the host's root (`/proc/1/root`), so a containerised agent with its own
/// cgroup namespace still sees every container's cgroup.
#[derive(Debug)]
pub struct CgroupNames {
    /// The host's cgroup v2 mount, as this process reaches it; `None` without cgroup v2.
    root: Option<PathBuf>,
    /// Resolved ids (empty string: no container, or not found).
    cache: HashMap<u64, String>,
}

/// Most directories one walk visits: a bound on the cost of an unknown id.
const CGROUP_WALK_LIMIT: usize = 100_000;
/// Most ids remembered (ids are never reused; the cache only saves walks).
const CGROUP_CACHE_LIMIT: usize = 16_384;

impl CgroupNames {
    pub fn new(sources: &Sources) -> Self {
        let cgroup2 = |pid: &str| {
            parse::mountinfo::cgroup2_mount(&read_mountinfo(&sources.proc_root.join(pid).join("mountinfo"))?)
        };
        // The host's tree through its root first (a containerised agent sees only its own
        // subtree at /sys/fs/cgroup), else this mount namespace's (where /proc/1 is hidden).
        let through_init =
            cgroup2("1").map(|m| sources.proc_root.join("1/root").join(m.trim_start_matches('/')));
        let own = cgroup2("self").map(PathBuf::from);
        let root = [through_init, own].into_iter().flatten().find(|p| std::fs::read_dir(p).is_ok());
        Self { root, cache: HashMap::new() }
    }

    /// The container id of cgroup `id`, or an empty string.
    pub fn container_id(&mut self, id: u64) -> String {
        if id == 0 {
            return String::new();
        }
        if let Some(found) = self.cache.get(&id) {
            return found.clone();
        }
        let found = self
            .root
            .as_deref()
            .and_then(|root| find_inode(root, id).map(|dir| (root.to_owned(), dir)))
            .and_then(|(root, dir)| {
                let relative = dir.strip_prefix(&root).ok()?.to_string_lossy().into_owned();
                parse::cgroup::container_id_in_path(&format!("/{relative}"))
            })
            .unwrap_or_default();
        if self.cache.len() >= CGROUP_CACHE_LIMIT {
            self.cache.clear();
        }
        self.cache.insert(id, found.clone());
        found
    }
}

/// The directory under `root` whose inode number is `inode` (breadth first, bounded).
fn find_inode(root: &Path, inode: u64) -> Option<PathBuf> {
    let mut queue = std::collections::VecDeque::from([root.to_owned()]);
    let mut visited = 0;
    while let Some(dir) = queue.pop_front() {
        visited += 1;
        if visited > CGROUP_WALK_LIMIT {
            return None;
        }
        if std::fs::metadata(&dir).is_ok_and(|m| m.ino() == inode) {
            return Some(dir);
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        queue.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_point_with_invalid_utf8_keeps_every_name() {
        let path = std::env::temp_dir().join(format!("netns-agent-mountinfo-{}", std::process::id()));
        let mut text = b"36 25 0:4 net:[4026532177] /run/netns/red rw - nsfs nsfs rw\n".to_vec();
        text.extend_from_slice(b"37 25 0:4 net:[4026532178] /run/netns/b\xffd rw - nsfs nsfs rw\n");
        std::fs::write(&path, text).unwrap();
        let read = read_mountinfo(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            parse::mountinfo::nsfs_mounts(&read),
            vec![(4026532177, "red".to_owned()), (4026532178, "b\\xffd".to_owned())]
        );
    }

    #[test]
    fn this_process_cgroup_resolves_by_its_inode() {
        let sources = Sources { proc_root: "/proc".into(), cni_cache_dir: "/nonexistent".into() };
        let names = CgroupNames::new(&sources);
        let Some(root) = names.root.clone() else {
            eprintln!("no cgroup v2 here: nothing to resolve");
            return;
        };
        // Our own v2 cgroup: its directory's inode is the id the kernel reports for us.
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = cgroup.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let dir = root.join(path.trim_start_matches('/'));
        let inode = std::fs::metadata(&dir).unwrap().ino();
        assert_eq!(find_inode(&root, inode).as_deref(), Some(dir.as_path()));
        assert_eq!(find_inode(&root, u64::MAX), None);
    }
}
