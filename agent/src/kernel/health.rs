//! The agent's kernel side as the kernel accounts for it: per program, the time spent in it,
//! how often it ran and how often the kernel skipped it (recursion misses); the memory its
//! maps are charged. Read from `/proc/self/fdinfo` of the descriptors the agent holds: no
//! syscall and no capability, so it works after start-up's capabilities are dropped.

use std::collections::HashMap;

use aya::Ebpf;

/// Names of the agent's loaded programs by kernel id, taken once after attaching.
#[derive(Debug, Default)]
pub struct ProgramNames(HashMap<u32, String>);

impl ProgramNames {
    pub fn of(ebpf: &Ebpf) -> Self {
        Self(
            ebpf.programs()
                .filter_map(|(name, program)| Some((program.info().ok()?.id(), name.to_owned())))
                .collect(),
        )
    }
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
    let Ok(entries) = std::fs::read_dir("/proc/self/fdinfo") else { return health };
    for entry in entries.flatten() {
        // A descriptor closed meanwhile has no fdinfo any more: skipped.
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        match parse_fdinfo(&text) {
            Some(Fdinfo::Program { id, run_time_ns, runs, recursion_misses }) if seen_programs.insert(id) => {
                if let Some(name) = names.0.get(&id) {
                    health.programs.push(ProgramCost {
                        name: name.clone(),
                        run_time_ns,
                        runs,
                        recursion_misses,
                    });
                }
            }
            Some(Fdinfo::Map { id, memlock }) if seen_maps.insert(id) => health.map_bytes += memlock,
            _ => {}
        }
    }
    health.programs.sort_by(|a, b| a.name.cmp(&b.name));
    health
}

/// What one fdinfo file says of a BPF object.
#[derive(Debug, PartialEq, Eq)]
enum Fdinfo {
    Program { id: u32, run_time_ns: u64, runs: u64, recursion_misses: u64 },
    Map { id: u32, memlock: u64 },
}

fn parse_fdinfo(text: &str) -> Option<Fdinfo> {
    let fields: HashMap<&str, &str> =
        text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim(), v.trim())).collect();
    let num = |key: &str| fields.get(key).and_then(|v| v.parse::<u64>().ok());
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
    fn this_process_reads_without_bpf_objects() {
        let health = read(&ProgramNames::default());
        assert!(health.programs.is_empty());
        assert_eq!(health.map_bytes, 0);
    }
}
