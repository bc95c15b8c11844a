//! The probe registry: every logical probe, its hooks in each attach mode, and what each
//! mode measures. The attach engine, `netns_agent_probe_attached` and `check` all read this
//! one list.

use std::fmt;

/// How a probe hooks the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Deserialize)]
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
    /// Kernel fields (names from `layout`) the programs read.
    pub fields: &'static [&'static str],
    /// What this mode measures, for `check` and the README.
    pub sees: &'static str,
    /// Kernel symbols whose address the programs need (from /proc/kallsyms).
    pub symbols: &'static [&'static str],
}

/// A logical probe.
#[derive(Debug)]
pub struct ProbeSpec {
    pub name: &'static str,
    pub summary: &'static str,
    /// Variants in the order `--attach auto` tries them (best first).
    pub variants: &'static [Variant],
}

const NET_FIELDS: &[&str] = &["net_inum", "net_cookie", "net_prot_inuse", "task_nsproxy", "nsproxy_net_ns"];

/// Where an exec has set the new program's comm: the first exec in a new namespace names its
/// real main process (`begin_new_exec`, 5.7+).
const EXEC_FUNCTIONS: &[&str] = &["begin_new_exec"];

static NETNS_CREATE: ProbeSpec = ProbeSpec {
    name: "netns_create",
    summary: "network namespace creations, setup time and failures",
    variants: &[
        Variant {
            mode: Mode::Fentry,
            hooks: &[
                Hook::Fentry { program: "lifecycle_create_fentry", functions: &["copy_net_ns"] },
                Hook::Fexit { program: "lifecycle_create_fexit", functions: &["copy_net_ns"] },
                Hook::Fexit { program: "lifecycle_exec_fexit", functions: EXEC_FUNCTIONS },
            ],
            fields: NET_FIELDS,
            symbols: &[],
            sees: "every copy_net_ns(CLONE_NEWNET) and its result; setup time is the whole \
                   call (allocation, net_mutex wait, pernet init)",
        },
        Variant {
            mode: Mode::Kprobe,
            hooks: &[
                Hook::Kprobe { program: "lifecycle_create_kprobe", functions: &["copy_net_ns"] },
                Hook::Kretprobe { program: "lifecycle_create_kretprobe", functions: &["copy_net_ns"] },
                Hook::Kretprobe { program: "lifecycle_exec_kretprobe", functions: EXEC_FUNCTIONS },
            ],
            fields: NET_FIELDS,
            symbols: &[],
            sees: "every copy_net_ns(CLONE_NEWNET) and its result; setup time is the whole \
                   call (allocation, net_mutex wait, pernet init)",
        },
        Variant {
            mode: Mode::Tracepoint,
            hooks: &[
                Hook::BtfTracepoint { program: "lifecycle_create_newtask", tracepoint: "task_newtask" },
                Hook::BtfTracepoint {
                    program: "lifecycle_exec_tracepoint",
                    tracepoint: "sched_process_exec",
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
            symbols: &[],
            sees: "creations by clone/clone3 (task_newtask) and unshare (sys_exit_unshare); \
                   setup time is the whole unshare/clone syscall; a failure is such a call \
                   failing with ENOSPC when it asked for no other namespace; ENOMEM, and \
                   ENOSPC beside other new namespaces, are unattributed (another step of the \
                   call returns them too); EPERM/EINVAL are not counted",
        },
    ],
};

static NETNS_DESTROY: ProbeSpec = ProbeSpec {
    name: "netns_destroy",
    summary: "network namespace teardowns",
    variants: &[
        Variant {
            mode: Mode::Fentry,
            hooks: &[Hook::Fentry { program: "lifecycle_destroy_fentry", functions: &["__put_net"] }],
            fields: &["net_cookie"],
            symbols: &[],
            sees: "__put_net: the last reference is gone and teardown is queued",
        },
        Variant {
            mode: Mode::Kprobe,
            hooks: &[Hook::Kprobe { program: "lifecycle_destroy_kprobe", functions: &["__put_net"] }],
            fields: &["net_cookie"],
            symbols: &[],
            sees: "__put_net: the last reference is gone and teardown is queued",
        },
        Variant {
            mode: Mode::Tracepoint,
            hooks: &[Hook::BtfTracepoint {
                program: "lifecycle_destroy_percpu",
                tracepoint: "percpu_free_percpu",
            }],
            fields: &["net_prot_inuse"],
            symbols: &[],
            sees: "percpu_free_percpu of the namespace's core.prot_inuse: its exit handlers \
                   run in cleanup_net (teardown under way, usually within milliseconds of \
                   the last reference)",
        },
    ],
};

const MOVE_FIELDS: &[&str] = &["netdev_nd_net", "netdev_ifindex", "netdev_name", "net_cookie", "net_inum"];

static DEVICE_MOVE: ProbeSpec = ProbeSpec {
    name: "device_move",
    summary: "network devices moved between namespaces",
    variants: &[
        Variant {
            mode: Mode::Fentry,
            hooks: &[
                Hook::Fentry { program: "moves_begin_fentry", functions: MOVE_FUNCTIONS },
                Hook::Fexit { program: "moves_end_fexit", functions: MOVE_FUNCTIONS },
            ],
            fields: MOVE_FIELDS,
            symbols: &[],
            sees: "every move through __dev_change_net_namespace, whoever asks (rtnetlink, \
                   devices sent back to init_net when their namespace dies), with its error",
        },
        Variant {
            mode: Mode::Kprobe,
            hooks: &[
                Hook::Kprobe { program: "moves_begin_kprobe", functions: MOVE_FUNCTIONS },
                Hook::Kretprobe { program: "moves_end_kretprobe", functions: MOVE_FUNCTIONS },
            ],
            fields: MOVE_FIELDS,
            symbols: &[],
            sees: "every move through __dev_change_net_namespace, whoever asks (rtnetlink, \
                   devices sent back to init_net when their namespace dies), with its error",
        },
        Variant {
            mode: Mode::Tracepoint,
            hooks: &[
                Hook::Tracepoint {
                    program: "moves_sendmsg_enter",
                    category: "syscalls",
                    name: "sys_enter_sendmsg",
                },
                Hook::Tracepoint {
                    program: "moves_sendmsg_exit",
                    category: "syscalls",
                    name: "sys_exit_sendmsg",
                },
                Hook::Tracepoint {
                    program: "moves_sendto_enter",
                    category: "syscalls",
                    name: "sys_enter_sendto",
                },
                Hook::Tracepoint {
                    program: "moves_sendto_exit",
                    category: "syscalls",
                    name: "sys_exit_sendto",
                },
            ],
            fields: &[
                "netdev_nd_net",
                "netdev_ifindex",
                "netdev_name",
                "netdev_index_hlist",
                "netdev_dev_list",
                "net_cookie",
                "net_inum",
                "net_dev_index_head",
                "net_dev_base_head",
                "task_files",
                "files_fdt",
                "fdtable_max_fds",
                "fdtable_fd",
                "file_f_inode",
                "inode_i_mode",
                "file_private_data",
                "socket_sk",
                "sock_net",
                "sock_family",
                "sock_protocol",
            ],
            symbols: &[],
            sees: "moves asked for over rtnetlink with sendmsg or sendto (RTM_NEWLINK/SETLINK \
                   with a target namespace), checked at the end of the call by where the device \
                   is; misses moves made inside the kernel (devices returning to init_net when \
                   a namespace dies) and requests sent with write/sendmmsg or as the second \
                   message of a batch; a failure's errno is not visible",
        },
    ],
};

/// `__dev_change_net_namespace` on 5.13+ (and 6.15+, where `dev_change_net_namespace` is
/// out of line again but only wraps it); `dev_change_net_namespace` on 5.12 and older.
pub const MOVE_FUNCTIONS: &[&str] = &["__dev_change_net_namespace", "dev_change_net_namespace"];

const ROUTE_V4_FIELDS: &[&str] = &[
    "fib_table_id",
    "fib_result_nhc",
    "nhc_dev",
    "netdev_nd_net",
    "net_cookie",
    "flowi4_iif",
    "net_fib_has_custom_rules",
    "net_fib_default",
    "fib_rules_ops_family",
    "fib_rules_ops_fro_net",
    // The caller's namespace (current_net) for an output lookup in a table that never hit.
    "task_nsproxy",
    "nsproxy_net_ns",
];

static ROUTE_LOOKUP_V4: ProbeSpec = ProbeSpec {
    name: "route_lookup_ipv4",
    summary: "IPv4 route lookups (fib_table_lookup), per namespace and outcome",
    variants: &[
        Variant {
            mode: Mode::Fentry,
            hooks: &[
                Hook::Fexit { program: "routes_v4_fexit", functions: &["fib_table_lookup"] },
                Hook::Fexit { program: "routes_v4_rules_fexit", functions: &["fib_rules_lookup"] },
                // Each transmit's end before its beginning: a begin never waits for an end
                // that is not attached.
                Hook::BtfTracepoint { program: "routes_xmit_end_fentry", tracepoint: "net_dev_xmit" },
                Hook::BtfTracepoint { program: "routes_xmit_begin_fentry", tracepoint: "net_dev_start_xmit" },
                Hook::BtfTracepoint { program: "routes_softirq_end_fentry", tracepoint: "softirq_exit" },
                Hook::BtfTracepoint { program: "routes_softirq_begin_fentry", tracepoint: "softirq_entry" },
            ],
            fields: ROUTE_V4_FIELDS,
            symbols: &[],
            sees: "every table lookup; hits by the nexthop device's namespace, misses by the \
                   namespace owning the table searched (known once the table has had a hit; \
                   before that an output lookup counts for the caller's namespace, or as \
                   unknown inside a device's transmit (a tunnel's underlay) or a softirq (a \
                   retransmit timer), and an input lookup as unknown); lookups under policy rules by the outcome \
                   fib_rules_lookup returns, rule actions included",
        },
        Variant {
            mode: Mode::Tracepoint,
            hooks: &[
                Hook::BtfTracepoint { program: "routes_v4_tracepoint", tracepoint: "fib_table_lookup" },
                Hook::BtfTracepoint { program: "routes_rx_begin", tracepoint: "netif_receive_skb" },
                Hook::BtfTracepoint { program: "routes_rx_done", tracepoint: "netif_receive_skb_exit" },
                Hook::BtfTracepoint { program: "routes_rx_end", tracepoint: "softirq_exit" },
                Hook::BtfTracepoint { program: "routes_xmit_end", tracepoint: "net_dev_xmit" },
                Hook::BtfTracepoint { program: "routes_xmit_begin", tracepoint: "net_dev_start_xmit" },
                Hook::BtfTracepoint { program: "routes_softirq_begin", tracepoint: "softirq_entry" },
            ],
            fields: &[
                "nhc_dev",
                "netdev_nd_net",
                "netdev_ifindex",
                "net_cookie",
                "flowi4_iif",
                "skb_dev",
                "net_fib_has_custom_rules",
                "net_fib_default",
                // The caller's namespace (current_net) for a miss outside any receive.
                "task_nsproxy",
                "nsproxy_net_ns",
            ],
            symbols: &[],
            sees: "every table lookup; hits by the nexthop device's namespace, misses of \
                   received packets by the namespace of the device holding the packet at the \
                   lookup (stacked devices included; unknown if the input interface does not \
                   match it), other misses inside a device's transmit (a tunnel's underlay) \
                   or a softirq (a retransmit timer) as unknown, the rest by the caller's \
                   namespace; \
                   under policy rules a table without a route is an unresolved miss (no \
                   tracepoint shows the walk's end) and rule actions are not seen",
        },
        Variant {
            mode: Mode::Kprobe,
            hooks: &[
                Hook::Kprobe { program: "routes_v4_kprobe", functions: &["fib_table_lookup"] },
                Hook::Kretprobe { program: "routes_v4_kretprobe", functions: &["fib_table_lookup"] },
                Hook::Kprobe { program: "routes_v4_rules_kprobe", functions: &["fib_rules_lookup"] },
                Hook::Kretprobe { program: "routes_v4_rules_kretprobe", functions: &["fib_rules_lookup"] },
                Hook::BtfTracepoint { program: "routes_xmit_end_kprobe", tracepoint: "net_dev_xmit" },
                Hook::BtfTracepoint { program: "routes_xmit_begin_kprobe", tracepoint: "net_dev_start_xmit" },
                Hook::BtfTracepoint { program: "routes_softirq_end_kprobe", tracepoint: "softirq_exit" },
                Hook::BtfTracepoint { program: "routes_softirq_begin_kprobe", tracepoint: "softirq_entry" },
            ],
            fields: ROUTE_V4_FIELDS,
            symbols: &[],
            sees: "as fentry, at several times the cost per lookup",
        },
    ],
};

const ROUTE_V6_FIELDS: &[&str] = &[
    "fib6_table_id",
    "fib6_result_f6i",
    "fib6_result_type",
    "net_fib6_null_entry",
    "net_cookie",
    "net_fib6_has_custom_rules",
    "fib_rules_ops_family",
    "fib_rules_ops_fro_net",
];

static ROUTE_LOOKUP_V6: ProbeSpec = ProbeSpec {
    name: "route_lookup_ipv6",
    summary: "IPv6 route lookups (fib6_table_lookup), per namespace and outcome",
    variants: &[
        Variant {
            mode: Mode::Fentry,
            // The table lookups through the tracepoint in every mode: it also fires in
            // ip6_pol_route_lookup (rt6_lookup: multicast joins, tunnels, netfilter), which a
            // probe on fib6_table_lookup misses, and the counts must not depend on the mode.
            hooks: &[
                Hook::BtfTracepoint { program: "routes_v6_tp_fentry", tracepoint: "fib6_table_lookup" },
                Hook::Fexit { program: "routes_v6_rules_fexit", functions: &["fib_rules_lookup"] },
            ],
            fields: ROUTE_V6_FIELDS,
            symbols: &[],
            sees: "fib6:fib6_table_lookup, by its net argument (exact); lookups under policy \
                   rules by the outcome fib_rules_lookup returns",
        },
        Variant {
            mode: Mode::Tracepoint,
            hooks: &[Hook::BtfTracepoint {
                program: "routes_v6_tracepoint",
                tracepoint: "fib6_table_lookup",
            }],
            fields: ROUTE_V6_FIELDS,
            symbols: &[],
            sees: "fib6:fib6_table_lookup, by its net argument (exact); under policy rules a \
                   table without a route is an unresolved miss",
        },
        Variant {
            mode: Mode::Kprobe,
            hooks: &[
                Hook::BtfTracepoint { program: "routes_v6_tp_kprobe", tracepoint: "fib6_table_lookup" },
                Hook::Kprobe { program: "routes_v6_rules_kprobe", functions: &["fib_rules_lookup"] },
                Hook::Kretprobe { program: "routes_v6_rules_kretprobe", functions: &["fib_rules_lookup"] },
            ],
            fields: ROUTE_V6_FIELDS,
            symbols: &[],
            sees: "as fentry; fib_rules_lookup by kprobe and kretprobe",
        },
    ],
};

/// The probe that tells teardown batches ending; without it `dying` cannot be told.
pub const CLEANUP_PROBE: &str = "netns_cleanup";

static NETNS_CLEANUP: ProbeSpec = ProbeSpec {
    name: CLEANUP_PROBE,
    summary: "teardown batches (cleanup_net) finishing, which tells stuck teardowns",
    variants: &[
        Variant {
            mode: Mode::Fentry,
            hooks: &[Hook::Fexit { program: "lifecycle_cleanup_fexit", functions: &["cleanup_net"] }],
            fields: &[],
            symbols: &[],
            sees: "the end of every cleanup_net run",
        },
        Variant {
            mode: Mode::Kprobe,
            hooks: &[Hook::Kretprobe { program: "lifecycle_cleanup_kretprobe", functions: &["cleanup_net"] }],
            fields: &[],
            symbols: &[],
            sees: "the end of every cleanup_net run",
        },
        Variant {
            mode: Mode::Tracepoint,
            hooks: &[Hook::Tracepoint {
                program: "lifecycle_cleanup_workqueue",
                category: "workqueue",
                name: "workqueue_execute_end",
            }],
            fields: &[],
            symbols: &["cleanup_net"],
            sees: "workqueue_execute_end of the cleanup_net work item (the end of every run)",
        },
    ],
};

/// Every attachable probe, in the order they are attached and reported. The specs above
/// are private: one left out of this list is dead code, which the lint refuses.
pub static PROBES: &[&ProbeSpec] =
    &[&NETNS_CREATE, &NETNS_DESTROY, &NETNS_CLEANUP, &DEVICE_MOVE, &ROUTE_LOOKUP_V4, &ROUTE_LOOKUP_V6];

/// Kernel function names any probe may hook or need the address of (one kallsyms scan).
pub fn all_functions() -> Vec<&'static str> {
    let mut names: Vec<&str> = PROBES
        .iter()
        .flat_map(|p| p.variants.iter())
        .flat_map(|v| v.hooks.iter())
        .flat_map(|h| h.functions().iter().copied())
        .chain(PROBES.iter().flat_map(|p| p.variants).flat_map(|v| v.symbols.iter().copied()))
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
            assert_eq!(unique.len(), Mode::ALL.len(), "{}: a mode is missing", probe.name);
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
        let known: HashSet<&str> = crate::kernel::layout::field_names().collect();
        for variant in PROBES.iter().flat_map(|p| p.variants) {
            for field in variant.fields {
                assert!(known.contains(field), "unknown field {field}");
            }
        }
    }
}
