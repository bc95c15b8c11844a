//! Container ids from `/proc/PID/cgroup`, for the layouts of Docker, containerd (CRI and
//! plain), CRI-O, Podman and systemd scopes, on cgroup v1 and v2. The file's lines are parsed
//! by the procfs crate; which path names a container is the agent's.

use procfs::{FromBufRead as _, ProcessCGroups};

/// The container id in a `/proc/PID/cgroup` text (`None` for text the kernel does not write).
pub fn container_id(cgroup: &str) -> Option<String> {
    // The unified (v2) line is `0::path`: prefer it, then any v1 hierarchy; the id is the
    // innermost path component that carries one.
    let mut lines: Vec<_> = ProcessCGroups::from_buf_read(cgroup.as_bytes()).ok()?.into_iter().collect();
    lines.sort_by_key(|line| !(line.hierarchy == 0 && line.controllers.is_empty()));
    lines.iter().find_map(|line| container_id_in_path(&line.pathname))
}

/// The container id in one cgroup path (innermost component that carries one).
pub fn container_id_in_path(path: &str) -> Option<String> {
    path.rsplit('/').find_map(id_in_component)
}

/// A 64-hex container id in one cgroup path component: `ID`, `docker-ID.scope`,
/// `cri-containerd-ID.scope`, `crio-ID.scope`, `libpod-ID.scope`; `crio-conmon-ID.scope`
/// and `libpod-conmon-ID.scope` are the runtime's monitor, not a container, and are skipped.
fn id_in_component(component: &str) -> Option<String> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    if name.contains("conmon") {
        return None;
    }
    let id = name.rsplit(['-', ':']).next()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
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
            (format!("0::/machine.slice/libpod-conmon-{ID}.scope\n"), None),
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
            // hostile or broken text
            ("".to_owned(), None),
            ("garbage without colons\n".to_owned(), None),
            (format!("0::/docker-{}.scope\n", &ID[..63]), None),
            (format!("0::/docker-{}é.scope\n", &ID[..62]), None),
        ];
        for (cgroup, want) in cases {
            assert_eq!(container_id(&cgroup).as_deref(), want, "{cgroup}");
        }
    }
}
