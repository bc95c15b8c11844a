//! `/proc/PID/cgroup`: cgroup paths are chosen by runtimes, systemd and anyone who can
//! create a cgroup (delegated subtrees, rootless Podman).
#![no_main]

use libfuzzer_sys::fuzz_target;
use netns_agent::parse::cgroup::{container_id, container_id_in_path};

/// Innermost components of the runtimes' layouts; `{}` is the id.
const LAYOUTS: &[&str] = &[
    "{}",
    "docker-{}.scope",
    "cri-containerd-{}.scope",
    "crio-{}.scope",
    "libpod-{}.scope",
    "libpod-{}.scope/container",
    "{}/init.scope",
];

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(id) = container_id(text) {
            assert_eq!(id.len(), 64, "{id:?}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id:?}");
            assert!(text.contains(&id), "an id that is not in the text");
        }
    }

    // Any id in a known layout is found below any parent path, and the v2 line wins over v1
    // lines whatever they say.
    let Some((head, rest)) = data.split_first_chunk::<33>() else { return };
    let upper = head[32] & 1 == 1;
    let mut id: String = head[..32].iter().map(|b| format!("{b:02x}")).collect();
    if upper {
        id.make_ascii_uppercase();
    }
    let layout = LAYOUTS[usize::from(head[32] >> 1) % LAYOUTS.len()].replace("{}", &id);
    let rest = String::from_utf8_lossy(rest);
    let (parent, v1) = rest.split_once('\n').unwrap_or((&rest, ""));
    let path = format!("{}/{layout}", parent.trim_end_matches('/'));
    assert_eq!(container_id_in_path(&path).as_deref(), Some(id.as_str()), "{path:?}");
    let v1_lines: String = v1.lines().map(|l| format!("7:memory:{l}\n")).collect();
    let file = format!("{v1_lines}0::{path}\n");
    assert_eq!(container_id(&file).as_deref(), Some(id.as_str()), "{file:?}");
});
