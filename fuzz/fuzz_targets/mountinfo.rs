//! `/proc/PID/mountinfo`: mount points are chosen by whoever mounts (any container runtime,
//! any `ip netns add NAME`), escaped by the kernel as octal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netns_agent::parse::{
    labels,
    mountinfo::{nsfs_mount, nsfs_mounts, unescape},
};

/// What the kernel's mountinfo does to a path: space, tab, newline and backslash as `\ooo`.
fn kernel_escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // Whole files as the agent reads them (read_to_string: valid UTF-8 only).
    if let Ok(text) = std::str::from_utf8(data) {
        let mounts = nsfs_mounts(text);
        assert!(mounts.len() <= text.lines().count());
        for field in text.split([' ', '\n']) {
            let unescaped = unescape(field);
            if !field.contains('\\') {
                assert_eq!(unescaped, field, "unescaping text without a backslash changes it");
            }
            // What comes out is label text: octal escapes decoded, invalid UTF-8 as \xNN.
            assert!(unescaped.len() <= field.len() * 4);
        }
    }

    // A namespace bind-mounted at any path the kernel can show is found, under its name.
    let (inum, path) = match data.split_first_chunk::<4>() {
        Some((inum, rest)) => (u32::from_le_bytes(*inum), String::from_utf8_lossy(rest)),
        None => return,
    };
    let path = format!("/{}", path.trim_start_matches('/'));
    let line = format!("36 25 0:4 net:[{inum}] {} rw,nosuid shared:5 - nsfs nsfs rw", kernel_escape(&path));
    let want = ["/run/netns/", "/var/run/netns/"]
        .iter()
        .find_map(|dir| path.strip_prefix(dir))
        .filter(|name| !name.is_empty())
        .unwrap_or(&path);
    assert_eq!(nsfs_mount(&line), Some((inum, labels::from_bytes(want.as_bytes()))), "{line:?}");
    assert_eq!(unescape(&kernel_escape(&path)), path, "escaping then unescaping is identity");
    let file = format!("40 25 8:1 / / rw - ext4 /dev/vda rw\n{line}\n");
    assert_eq!(nsfs_mounts(&file), vec![(inum, want.to_owned())]);
});
