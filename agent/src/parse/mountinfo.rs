//! Network-namespace bind mounts and the cgroup v2 mount in a `/proc/PID/mountinfo` text.
//!
//! Lines are split into fields by the procfs crate ([`MountInfo::from_line`]); what it does
//! not do stays here: it leaves mount points escaped as the kernel writes them (`\040`), and
//! its whole-file readers (`Process::mountinfo()`, `MountInfos::from_buf_read`) fail the file
//! on the first line that is not UTF-8 or not parsable, where one odd mount must not hide the
//! others (the caller turns invalid UTF-8 into octal escapes; a bad line is skipped).

use procfs::process::MountInfo;

use super::labels;

/// `(inode, name)` of every network-namespace bind mount in a mountinfo text: `ip netns`
/// mounts (`/run/netns/NAME`, `/var/run/netns/NAME`) by name, others by mount path.
pub fn nsfs_mounts(mountinfo: &str) -> Vec<(u32, String)> {
    mountinfo.lines().filter_map(nsfs_mount).collect()
}

/// One mountinfo line, if it is a network-namespace bind mount.
pub fn nsfs_mount(line: &str) -> Option<(u32, String)> {
    let mount = of_type(line, "nsfs")?;
    let inum = mount.root.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()?;
    let mount_point = unescape(mount.mount_point.to_str()?);
    let name = ["/run/netns/", "/var/run/netns/"]
        .iter()
        .find_map(|dir| mount_point.strip_prefix(dir))
        .filter(|name| !name.is_empty())
        .map_or_else(|| mount_point.clone(), str::to_owned);
    Some((inum, name))
}

/// The cgroup v2 hierarchy's mount point in a mountinfo text, if it is mounted.
pub fn cgroup2_mount(mountinfo: &str) -> Option<String> {
    mountinfo
        .lines()
        .find_map(|line| of_type(line, "cgroup2"))
        .and_then(|m| Some(unescape(m.mount_point.to_str()?)))
}

/// A line parsed, if it is a mount of filesystem type `fs_type`. The type is looked for first:
/// parsing builds maps of every option, and a host has thousands of mounts of other types.
fn of_type(line: &str, fs_type: &str) -> Option<MountInfo> {
    let (_, after) = line.split_once(" - ")?;
    if after.split(' ').next() != Some(fs_type) {
        return None;
    }
    MountInfo::from_line(line).ok().filter(|m| m.fs_type == fs_type)
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`); the result is a
/// label-safe string (invalid UTF-8 as `\xNN`).
pub fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
            && let Ok(value) = u8::from_str_radix(std::str::from_utf8(digits).unwrap_or("x"), 8)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsfs_mounts_are_named() {
        let mountinfo = "\
36 25 0:4 net:[4026532177] /run/netns/red rw shared:5 - nsfs nsfs rw\n\
37 25 0:4 net:[4026532246] /var/run/docker/netns/1a2b3c rw - nsfs nsfs rw\n\
38 25 0:4 mnt:[4026532300] /run/mntns/x rw - nsfs nsfs rw\n\
39 25 0:4 net:[4026532400] /run/netns/with\\040space rw - nsfs nsfs rw\n\
40 25 8:1 / / rw - ext4 /dev/vda rw\n";
        assert_eq!(
            nsfs_mounts(mountinfo),
            vec![
                (4026532177, "red".to_owned()),
                (4026532246, "/var/run/docker/netns/1a2b3c".to_owned()),
                (4026532400, "with space".to_owned()),
            ]
        );
    }

    #[test]
    fn escapes_and_hostile_lines_are_handled() {
        assert_eq!(unescape("a\\040b\\012c\\134d"), "a b\nc\\d");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
        assert_eq!(unescape("bad\\09x"), "bad\\09x");
        assert_eq!(unescape("\\377"), "\\xff");
        for line in
            ["", "-", "1 2 3 net:[1] - nsfs", "a b c net:[x] /p - nsfs", "1 2 3 net:[99999999999] /p - nsfs"]
        {
            assert_eq!(nsfs_mount(line), None, "{line:?}");
        }
    }

    #[test]
    fn the_cgroup2_mount_is_found_and_unescaped() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
31 25 0:27 / /sys/fs/cgroup/uni\\040fied rw,nosuid shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(mountinfo).as_deref(), Some("/sys/fs/cgroup/uni fied"));
        assert_eq!(cgroup2_mount("30 25 0:26 / /sys/fs/cgroup rw - cgroup cgroup rw\n"), None);
    }
}
