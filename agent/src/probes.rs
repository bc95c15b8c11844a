//! The probe registry: every logical probe, its hooks in each attach mode, and what each
//! mode measures. The attach engine, `netns_agent_probe_attached` and `check` all read this
//! one list.

use std::fmt;

/// How a probe hooks the kernel.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// BPF trampolines on function entry/exit (fentry/fexit): exact, cheap; needs BTF and a
    /// kernel that allows them.
    Fentry,
    /// kprobes/kretprobes: exact, the most expensive per hit; needs CONFIG_KPROBES.
    Kprobe,
    /// Tracepoints (classic and BTF): stable and cheap, but only where the kernel has one.
    Tracepoint,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Fentry, Mode::Kprobe, Mode::Tracepoint];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Fentry => "fentry",
            Mode::Kprobe => "kprobe",
            Mode::Tracepoint => "tracepoint",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One program and the kernel hook it attaches to. Function hooks list the names the
/// function has had; the first one this kernel has is used.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    Fentry {
        program: &'static str,
        functions: &'static [&'static str],
    },
    Fexit {
        program: &'static str,
        functions: &'static [&'static str],
    },
    Kprobe {
        program: &'static str,
        functions: &'static [&'static str],
    },
    Kretprobe {
        program: &'static str,
        functions: &'static [&'static str],
    },
    /// A BTF-typed tracepoint (`tp_btf`): typed pointer arguments, no tracefs needed.
    BtfTracepoint {
        program: &'static str,
        tracepoint: &'static str,
    },
    /// A classic tracepoint under tracefs `events/<category>/<name>`.
    Tracepoint {
        program: &'static str,
        category: &'static str,
        name: &'static str,
    },
}

impl Hook {
    pub fn program(&self) -> &'static str {
        match *self {
            Hook::Fentry { program, .. }
            | Hook::Fexit { program, .. }
            | Hook::Kprobe { program, .. }
            | Hook::Kretprobe { program, .. }
            | Hook::BtfTracepoint { program, .. }
            | Hook::Tracepoint { program, .. } => program,
        }
    }

    /// Candidate kernel function names, for function hooks.
    pub fn functions(&self) -> &'static [&'static str] {
        match *self {
            Hook::Fentry { functions, .. }
            | Hook::Fexit { functions, .. }
            | Hook::Kprobe { functions, .. }
            | Hook::Kretprobe { functions, .. } => functions,
            Hook::BtfTracepoint { .. } | Hook::Tracepoint { .. } => &[],
        }
    }
}

/// A probe's implementation in one mode: all hooks attach, or none stays attached.
#[derive(Debug)]
pub struct Variant {
    pub mode: Mode,
    pub hooks: &'static [Hook],
    /// Kernel fields (names from `kernel_layout`) the programs read.
    pub fields: &'static [&'static str],
    /// What this mode measures, for `check` and the README.
    pub sees: &'static str,
}

/// A logical probe.
#[derive(Debug)]
pub struct ProbeSpec {
    pub name: &'static str,
    pub summary: &'static str,
    /// Variants in the order `--attach auto` tries them (best first).
    pub variants: &'static [Variant],
}

const NET_FIELDS: &[&str] = &[
    "net_inum",
    "net_cookie",
    "net_prot_inuse",
    "task_nsproxy",
    "nsproxy_net_ns",
];

pub static NETNS_CREATE: ProbeSpec = ProbeSpec {
    name: "netns_create",
    summary: "network namespace creations, setup time and failures",
    variants: &[
        Variant {
            mode: Mode::Fentry,
            hooks: &[
                Hook::Fentry {
                    program: "lifecycle_create_fentry",
                    functions: &["copy_net_ns"],
                },
                Hook::Fexit {
                    program: "lifecycle_create_fexit",
                    functions: &["copy_net_ns"],
                },
            ],
            fields: NET_FIELDS,
            sees: "every copy_net_ns(CLONE_NEWNET) and its result; setup time is the whole \
                   call (allocation, net_mutex wait, pernet init)",
        },
        Variant {
            mode: Mode::Kprobe,
            hooks: &[
                Hook::Kprobe {
                    program: "lifecycle_create_kprobe",
                    functions: &["copy_net_ns"],
                },
                Hook::Kretprobe {
                    program: "lifecycle_create_kretprobe",
                    functions: &["copy_net_ns"],
                },
            ],
            fields: NET_FIELDS,
            sees: "every copy_net_ns(CLONE_NEWNET) and its result; setup time is the whole \
                   call (allocation, net_mutex wait, pernet init)",
        },
        Variant {
            mode: Mode::Tracepoint,
            hooks: &[
                Hook::BtfTracepoint {
                    program: "lifecycle_create_newtask",
                    tracepoint: "task_newtask",
                },
                Hook::Tracepoint {
                    program: "lifecycle_unshare_enter",
                    category: "syscalls",
                    name: "sys_enter_unshare",
                },
                Hook::Tracepoint {
                    program: "lifecycle_unshare_exit",
                    category: "syscalls",
                    name: "sys_exit_unshare",
                },
                Hook::Tracepoint {
                    program: "lifecycle_clone_enter",
                    category: "syscalls",
                    name: "sys_enter_clone",
                },
                Hook::Tracepoint {
                    program: "lifecycle_clone_exit",
                    category: "syscalls",
                    name: "sys_exit_clone",
                },
                Hook::Tracepoint {
                    program: "lifecycle_clone3_enter",
                    category: "syscalls",
                    name: "sys_enter_clone3",
                },
                Hook::Tracepoint {
                    program: "lifecycle_clone3_exit",
                    category: "syscalls",
                    name: "sys_exit_clone3",
                },
            ],
            fields: &[
                "net_inum",
                "net_cookie",
                "net_prot_inuse",
                "task_nsproxy",
                "nsproxy_net_ns",
                "task_tgid",
            ],
            sees: "creations by clone/clone3 (task_newtask) and unshare (sys_exit_unshare); \
                   setup time is the whole unshare/clone syscall; failures are those calls \
                   failing with ENOMEM or ENOSPC (EPERM/EINVAL are refused before any \
                   namespace work and are not counted)",
        },
    ],
};

pub static NETNS_DESTROY: ProbeSpec = ProbeSpec {
    name: "netns_destroy",
    summary: "network namespace teardowns",
    variants: &[
        Variant {
            mode: Mode::Fentry,
            hooks: &[Hook::Fentry {
                program: "lifecycle_destroy_fentry",
                functions: &["__put_net"],
            }],
            fields: &["net_cookie"],
            sees: "__put_net: the last reference is gone and teardown is queued",
        },
        Variant {
            mode: Mode::Kprobe,
            hooks: &[Hook::Kprobe {
                program: "lifecycle_destroy_kprobe",
                functions: &["__put_net"],
            }],
            fields: &["net_cookie"],
            sees: "__put_net: the last reference is gone and teardown is queued",
        },
        Variant {
            mode: Mode::Tracepoint,
            hooks: &[Hook::BtfTracepoint {
                program: "lifecycle_destroy_percpu",
                tracepoint: "percpu_free_percpu",
            }],
            fields: &["net_prot_inuse"],
            sees: "percpu_free_percpu of the namespace's core.prot_inuse: its exit handlers \
                   run in cleanup_net (teardown under way, usually within milliseconds of \
                   the last reference)",
        },
    ],
};

/// Every attachable probe, in the order they are attached and reported.
pub static PROBES: &[&ProbeSpec] = &[&NETNS_CREATE, &NETNS_DESTROY];

/// Kernel function names any probe may hook (for one kallsyms scan).
pub fn all_functions() -> Vec<&'static str> {
    let mut names: Vec<&str> = PROBES
        .iter()
        .flat_map(|p| p.variants.iter())
        .flat_map(|v| v.hooks.iter())
        .flat_map(|h| h.functions().iter().copied())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_probe_has_one_variant_per_mode() {
        for probe in PROBES {
            let modes: Vec<Mode> = probe.variants.iter().map(|v| v.mode).collect();
            let unique: HashSet<Mode> = modes.iter().copied().collect();
            assert_eq!(unique.len(), modes.len(), "{}: duplicate mode", probe.name);
            assert_eq!(
                unique.len(),
                Mode::ALL.len(),
                "{}: a mode is missing",
                probe.name
            );
        }
    }

    #[test]
    fn program_names_are_unique() {
        let mut seen = HashSet::new();
        for hook in PROBES.iter().flat_map(|p| p.variants).flat_map(|v| v.hooks) {
            assert!(seen.insert(hook.program()), "{} used twice", hook.program());
        }
    }

    #[test]
    fn fields_named_by_variants_exist() {
        let known: HashSet<&str> = crate::kernel_layout::field_names().collect();
        for variant in PROBES.iter().flat_map(|p| p.variants) {
            for field in variant.fields {
                assert!(known.contains(field), "unknown field {field}");
            }
        }
    }
}
