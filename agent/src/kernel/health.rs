//! The agent's kernel side as the kernel accounts for it: per program, the time spent in it,
//! how often it ran and how often the kernel skipped it (recursion misses); for kprobes and
//! kretprobes, the hits the kprobe layer itself missed; the memory its maps are charged.
//! Read from `/proc/self/fdinfo` of the descriptors the agent holds (no syscall, no
//! capability), except the kprobe misses: one `BPF_OBJ_GET_INFO_BY_FD` per kprobe link, on
//! kernels that report them (6.7 and later).

use std::collections::HashMap;

use aya::Ebpf;
use aya_obj::generated::{
    bpf_attr, bpf_cmd, bpf_link_info,
    bpf_link_type::BPF_LINK_TYPE_PERF_EVENT,
    bpf_perf_event_type::{BPF_PERF_EVENT_KPROBE, BPF_PERF_EVENT_KRETPROBE},
};

/// Names of the agent's loaded programs by kernel id, taken once after attaching.
#[derive(Debug, Default)]
pub struct ProgramNames {
    names: HashMap<u32, String>,
    /// The kernel fills `bpf_link_info.perf_event.kprobe.missed` (Linux 6.7, "bpf: Add missed
    /// value to kprobe perf link info"); older kernels leave it 0, which would read as "none
    /// missed", so there it is not read at all.
    kprobe_missed: bool,
}

/// The first kernel that reports a kprobe link's missed hits.
const KPROBE_MISSED_SINCE: (u32, u32) = (6, 7);

impl ProgramNames {
    pub fn of(ebpf: &Ebpf) -> Self {
        let release = super::host::kernel_release().unwrap_or_default();
        Self {
            names: ebpf
                .programs()
                .filter_map(|(name, program)| Some((program.info().ok()?.id(), name.to_owned())))
                .collect(),
            kprobe_missed: reports_kprobe_missed(&release),
        }
    }
}

fn reports_kprobe_missed(release: &str) -> bool {
    super::host::parse_version(release).is_some_and(|v| v >= KPROBE_MISSED_SINCE)
}

/// One program's cost, as counted by the kernel since it was loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramCost {
    pub name: String,
    /// Nanoseconds spent in the program; only counted while `kernel.bpf_stats_enabled` is 1.
    pub run_time_ns: u64,
    /// Runs; only counted while `kernel.bpf_stats_enabled` is 1.
    pub runs: u64,
    /// Times the kernel did not run it because it was already running on that CPU (an
    /// event it could not count); 0 on kernels before 5.12, which do not report it.
    pub recursion_misses: u64,
    /// For a program attached as a kprobe or kretprobe through a BPF link: the hits the
    /// kprobe layer missed (another kprobe was running on that CPU, or, for a kretprobe, all
    /// its return instances were in use), summed over its links. `None` where the kernel
    /// cannot tell: other kinds of program, kprobes attached without a link, kernels
    /// before 6.7.
    pub kprobe_missed: Option<u64>,
}

/// The kernel side's health at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelHealth {
    /// By program name; a program held by several descriptors is counted once.
    pub programs: Vec<ProgramCost>,
    /// Memory charged for the maps (memlock), bytes.
    pub map_bytes: u64,
    /// `kernel.bpf_stats_enabled`: run time and runs are counted only while it is 1.
    pub stats_enabled: bool,
}

/// Reads the fdinfo of every descriptor this process holds.
pub fn read(names: &ProgramNames) -> KernelHealth {
    let mut health = KernelHealth {
        stats_enabled: std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .is_ok_and(|s| s.trim() == "1"),
        ..KernelHealth::default()
    };
    let mut seen_programs = std::collections::HashSet::new();
    let mut seen_maps = std::collections::HashSet::new();
    let mut seen_links = std::collections::HashSet::new();
    let mut missed: HashMap<u32, u64> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc/self/fdinfo") else { return health };
    for entry in entries.flatten() {
        // A descriptor closed meanwhile has no fdinfo any more: skipped.
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        match parse_fdinfo(&text) {
            Some(Fdinfo::Program { id, run_time_ns, runs, recursion_misses }) if seen_programs.insert(id) => {
                if let Some(name) = names.names.get(&id) {
                    health.programs.push(ProgramCost {
                        name: name.clone(),
                        run_time_ns,
                        runs,
                        recursion_misses,
                        kprobe_missed: None,
                    });
                }
            }
            Some(Fdinfo::Map { id, memlock }) if seen_maps.insert(id) => health.map_bytes += memlock,
            Some(Fdinfo::PerfLink { id, prog_id }) if names.kprobe_missed && seen_links.insert(id) => {
                let fd = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok());
                if let Some(count) = fd.and_then(|fd| kprobe_link_missed(fd, id)) {
                    *missed.entry(prog_id).or_default() += count;
                }
            }
            _ => {}
        }
    }
    for (prog_id, count) in missed {
        let Some(name) = names.names.get(&prog_id) else { continue };
        if let Some(program) = health.programs.iter_mut().find(|p| &p.name == name) {
            program.kprobe_missed = Some(count);
        }
    }
    health.programs.sort_by(|a, b| a.name.cmp(&b.name));
    health
}

/// The kprobe layer's missed hits of the perf-event link `link_id` held as descriptor `fd`:
/// `None` unless it is that link and a kprobe or kretprobe (tracepoints use perf links too).
fn kprobe_link_missed(fd: i32, link_id: u32) -> Option<u64> {
    let info = link_info(fd)?;
    if info.type_ != BPF_LINK_TYPE_PERF_EVENT as u32 || info.id != link_id {
        // The descriptor was closed and its number reused between the fdinfo read and now.
        return None;
    }
    // SAFETY: the kernel filled `perf_event` for a link of type BPF_LINK_TYPE_PERF_EVENT (the
    // union member it writes for that type); every bit pattern is a valid u32/u64.
    let perf = unsafe { info.__bindgen_anon_1.perf_event };
    if perf.type_ != BPF_PERF_EVENT_KPROBE as u32 && perf.type_ != BPF_PERF_EVENT_KRETPROBE as u32 {
        return None;
    }
    // SAFETY: for BPF_PERF_EVENT_KPROBE and _KRETPROBE the kernel fills the `kprobe` member.
    Some(unsafe { perf.__bindgen_anon_1.kprobe.missed })
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a link descriptor. aya 0.14 reads this structure too
/// (`FdLink::info`) but keeps the union private, and reaching the descriptor through aya
/// would take the link away from the program that owns it.
fn link_info(fd: i32) -> Option<bpf_link_info> {
    // SAFETY: a plain C structure of integers and unions of integers: valid all zero (the
    // kernel reads the name buffer fields from it: zero asks for no name).
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    // SAFETY: a C union of structures of integers: valid all zero, and the kernel requires
    // the parts the command does not use to be zero.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.info.bpf_fd = u32::try_from(fd).ok()?;
    attr.info.info = std::ptr::from_mut(&mut info) as u64;
    attr.info.info_len = u32::try_from(std::mem::size_of::<bpf_link_info>()).ok()?;
    // SAFETY: `attr` names `info` and its size; the kernel writes at most that many bytes
    // into it (and the length into `attr`), both alive for the call. A descriptor that is
    // not a BPF object fails with EINVAL/EBADF and nothing is written.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            std::ptr::from_mut(&mut attr),
            std::mem::size_of::<bpf_attr>(),
        )
    };
    (rc == 0).then_some(info)
}

/// What one fdinfo file says of a BPF object.
#[derive(Debug, PartialEq, Eq)]
enum Fdinfo {
    Program {
        id: u32,
        run_time_ns: u64,
        runs: u64,
        recursion_misses: u64,
    },
    Map {
        id: u32,
        memlock: u64,
    },
    /// A perf-event link (kprobe, kretprobe, tracepoint, uprobe or perf event).
    PerfLink {
        id: u32,
        prog_id: u32,
    },
}

fn parse_fdinfo(text: &str) -> Option<Fdinfo> {
    let fields: HashMap<&str, &str> =
        text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim(), v.trim())).collect();
    let num = |key: &str| fields.get(key).and_then(|v| v.parse::<u64>().ok());
    // A link's fdinfo names its program too (prog_id): the link fields come first.
    if let Some(link_type) = fields.get("link_type") {
        if *link_type != "perf" {
            return None;
        }
        return Some(Fdinfo::PerfLink {
            id: u32::try_from(num("link_id")?).ok()?,
            prog_id: u32::try_from(num("prog_id")?).ok()?,
        });
    }
    if let Some(id) = num("prog_id") {
        return Some(Fdinfo::Program {
            id: u32::try_from(id).ok()?,
            run_time_ns: num("run_time_ns").unwrap_or(0),
            runs: num("run_cnt").unwrap_or(0),
            recursion_misses: num("recursion_misses").unwrap_or(0),
        });
    }
    if let Some(id) = num("map_id") {
        return Some(Fdinfo::Map { id: u32::try_from(id).ok()?, memlock: num("memlock").unwrap_or(0) });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_and_map_fdinfo_are_told_apart() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2071\nprog_type:\t26\nprog_jited:\t1\n\
                    prog_tag:\t0123456789abcdef\nmemlock:\t4096\nprog_id:\t3901\nrun_time_ns:\t1234\n\
                    run_cnt:\t56\nrecursion_misses:\t7\nverified_insns:\t99\n";
        assert_eq!(
            parse_fdinfo(prog),
            Some(Fdinfo::Program { id: 3901, run_time_ns: 1234, runs: 56, recursion_misses: 7 })
        );
        let map = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2071\nmap_type:\t5\nkey_size:\t16\n\
                   value_size:\t56\nmax_entries:\t65536\nmap_flags:\t0x1\nmap_extra:\t0x0\n\
                   memlock:\t1049952\nmap_id:\t3830\nfrozen:\t0\n";
        assert_eq!(parse_fdinfo(map), Some(Fdinfo::Map { id: 3830, memlock: 1_049_952 }));
        assert_eq!(parse_fdinfo("pos:\t0\nflags:\t02\n"), None);
        // Before 5.12 there is no recursion_misses line.
        let old = "prog_id:\t5\nrun_time_ns:\t0\nrun_cnt:\t0\n";
        assert_eq!(
            parse_fdinfo(old),
            Some(Fdinfo::Program { id: 5, run_time_ns: 0, runs: 0, recursion_misses: 0 })
        );
    }

    #[test]
    fn perf_links_are_told_from_programs_and_other_links() {
        // Linux 6.18, a tracepoint's perf link (6.16 and later add the event's fields).
        let perf = "pos:\t0\nflags:\t02000000\nmnt_id:\t16\nino:\t1058\nlink_type:\tperf\nlink_id:\t91\n\
                    prog_tag:\tc5dbbd9f2e7f4a3b\nprog_id:\t3902\ntp_name:\tsys_enter_sendto\n\
                    event_type:\ttracepoint\ncookie:\t0\n";
        assert_eq!(parse_fdinfo(perf), Some(Fdinfo::PerfLink { id: 91, prog_id: 3902 }));
        // A tp_btf or fentry link names a program as well, but is not a perf link.
        let raw = "pos:\t0\nflags:\t02000000\nlink_type:\traw_tracepoint\nlink_id:\t92\n\
                   prog_tag:\tc5dbbd9f2e7f4a3b\nprog_id:\t3903\ntp_name:\tfib_table_lookup\n";
        assert_eq!(parse_fdinfo(raw), None);
        let tracing = "link_type:\ttracing\nlink_id:\t93\nprog_id:\t3904\nattach_type:\t25\n";
        assert_eq!(parse_fdinfo(tracing), None);
    }

    #[test]
    fn kprobe_misses_are_read_only_where_the_kernel_reports_them() {
        assert!(!reports_kprobe_missed("5.10.0-35-amd64"));
        assert!(!reports_kprobe_missed("6.6.58-1-lts"));
        assert!(reports_kprobe_missed("6.7.0"));
        assert!(reports_kprobe_missed("6.12.117+deb12-amd64"));
        assert!(reports_kprobe_missed("6.18.44-fc-v1045"));
        assert!(!reports_kprobe_missed(""));
    }

    #[test]
    fn a_descriptor_that_is_no_link_gives_no_count() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        assert_eq!(kprobe_link_missed(fd, 1), None);
        assert_eq!(kprobe_link_missed(-1, 1), None);
    }

    #[test]
    fn this_process_reads_without_bpf_objects() {
        let health = read(&ProgramNames::default());
        assert!(health.programs.is_empty());
        assert_eq!(health.map_bytes, 0);
    }
}
