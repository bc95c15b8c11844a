//! The running kernel's structure layout, read from its BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF has no CO-RE: the offsets the kernel programs use come from here and reach them
//! as the `OFFSETS` global. Each field lists the paths it has had across kernel versions,
//! newest first; the first one this kernel's BTF resolves wins.

use std::path::{Path, PathBuf};

use btf_rs::{Btf, Type};
use netns_agent_common::offsets::{KernelOffsets, UNKNOWN};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "BTF missing: {path} does not exist; the kernel needs CONFIG_DEBUG_INFO_BTF=y, or pass \
         --btf FILE with this kernel's BTF"
    )]
    Missing { path: PathBuf },
    #[error("cannot parse BTF {path}: {reason}; is it this kernel's vmlinux BTF?")]
    Unreadable { path: PathBuf, reason: String },
}

/// One field the programs read, with its known paths (`struct.member.member...`).
struct FieldSpec {
    name: &'static str,
    paths: &'static [&'static str],
    set: fn(&mut KernelOffsets, u32),
}

/// Every field the kernel programs read. The single place that knows where they moved.
const FIELDS: &[FieldSpec] = &[
    FieldSpec { name: "task_nsproxy", paths: &["task_struct.nsproxy"], set: |o, v| o.task_nsproxy = v },
    FieldSpec { name: "task_tgid", paths: &["task_struct.tgid"], set: |o, v| o.task_tgid = v },
    FieldSpec { name: "task_files", paths: &["task_struct.files"], set: |o, v| o.task_files = v },
    FieldSpec { name: "nsproxy_net_ns", paths: &["nsproxy.net_ns"], set: |o, v| o.nsproxy_net_ns = v },
    // ns_common.inum: offset 16 up to 6.17, 24 from 6.18 (ns_type was added in front).
    FieldSpec { name: "net_inum", paths: &["net.ns.inum"], set: |o, v| o.net_inum = v },
    // The active count moved into ns_common as `count` (5.12-6.17), renamed `__ns_ref` in 6.18.
    FieldSpec {
        name: "net_refcount",
        paths: &["net.ns.__ns_ref", "net.ns.count", "net.count"],
        set: |o, v| o.net_refcount = v,
    },
    FieldSpec { name: "net_ns_ops", paths: &["net.ns.ops"], set: |o, v| o.net_ns_ops = v },
    FieldSpec { name: "net_cookie", paths: &["net.net_cookie"], set: |o, v| o.net_cookie = v },
    FieldSpec { name: "net_list", paths: &["net.list"], set: |o, v| o.net_list = v },
    FieldSpec { name: "net_prot_inuse", paths: &["net.core.prot_inuse"], set: |o, v| o.net_prot_inuse = v },
    FieldSpec { name: "net_fib_main", paths: &["net.ipv4.fib_main"], set: |o, v| o.net_fib_main = v },
    FieldSpec {
        name: "net_fib_default",
        paths: &["net.ipv4.fib_default"],
        set: |o, v| o.net_fib_default = v,
    },
    // Whether a namespace has policy rules: the shape of its lookups' table walk. Present
    // with CONFIG_IP_MULTIPLE_TABLES / CONFIG_IPV6_MULTIPLE_TABLES (Debian's kernels).
    FieldSpec {
        name: "net_fib_has_custom_rules",
        paths: &["net.ipv4.fib_has_custom_rules"],
        set: |o, v| o.net_fib_has_custom_rules = v,
    },
    FieldSpec {
        name: "net_fib6_has_custom_rules",
        paths: &["net.ipv6.fib6_has_custom_rules"],
        set: |o, v| o.net_fib6_has_custom_rules = v,
    },
    FieldSpec {
        name: "fib_rules_ops_family",
        paths: &["fib_rules_ops.family"],
        set: |o, v| o.fib_rules_ops_family = v,
    },
    FieldSpec {
        name: "fib_rules_ops_fro_net",
        paths: &["fib_rules_ops.fro_net"],
        set: |o, v| o.fib_rules_ops_fro_net = v,
    },
    FieldSpec {
        name: "net_fib6_null_entry",
        paths: &["net.ipv6.fib6_null_entry"],
        set: |o, v| o.net_fib6_null_entry = v,
    },
    FieldSpec {
        name: "net_dev_index_head",
        paths: &["net.dev_index_head"],
        set: |o, v| o.net_dev_index_head = v,
    },
    FieldSpec {
        name: "net_dev_base_head",
        paths: &["net.dev_base_head"],
        set: |o, v| o.net_dev_base_head = v,
    },
    FieldSpec { name: "netdev_nd_net", paths: &["net_device.nd_net.net"], set: |o, v| o.netdev_nd_net = v },
    FieldSpec { name: "netdev_ifindex", paths: &["net_device.ifindex"], set: |o, v| o.netdev_ifindex = v },
    FieldSpec { name: "netdev_name", paths: &["net_device.name"], set: |o, v| o.netdev_name = v },
    FieldSpec {
        name: "netdev_index_hlist",
        paths: &["net_device.index_hlist"],
        set: |o, v| o.netdev_index_hlist = v,
    },
    FieldSpec { name: "netdev_dev_list", paths: &["net_device.dev_list"], set: |o, v| o.netdev_dev_list = v },
    FieldSpec { name: "skb_dev", paths: &["sk_buff.dev"], set: |o, v| o.skb_dev = v },
    FieldSpec { name: "flowi4_iif", paths: &["flowi4.__fl_common.flowic_iif"], set: |o, v| o.flowi4_iif = v },
    FieldSpec { name: "fib_table_id", paths: &["fib_table.tb_id"], set: |o, v| o.fib_table_id = v },
    FieldSpec { name: "fib_result_nhc", paths: &["fib_result.nhc"], set: |o, v| o.fib_result_nhc = v },
    FieldSpec { name: "nhc_dev", paths: &["fib_nh_common.nhc_dev"], set: |o, v| o.nhc_dev = v },
    FieldSpec { name: "fib6_table_id", paths: &["fib6_table.tb6_id"], set: |o, v| o.fib6_table_id = v },
    FieldSpec { name: "fib6_result_f6i", paths: &["fib6_result.f6i"], set: |o, v| o.fib6_result_f6i = v },
    FieldSpec {
        name: "fib6_result_type",
        paths: &["fib6_result.fib6_type"],
        set: |o, v| o.fib6_result_type = v,
    },
    FieldSpec { name: "files_fdt", paths: &["files_struct.fdt"], set: |o, v| o.files_fdt = v },
    FieldSpec { name: "fdtable_fd", paths: &["fdtable.fd"], set: |o, v| o.fdtable_fd = v },
    FieldSpec {
        name: "file_private_data",
        paths: &["file.private_data"],
        set: |o, v| o.file_private_data = v,
    },
    FieldSpec { name: "socket_sk", paths: &["socket.sk"], set: |o, v| o.socket_sk = v },
    FieldSpec { name: "sock_net", paths: &["sock.__sk_common.skc_net.net"], set: |o, v| o.sock_net = v },
    FieldSpec { name: "sock_family", paths: &["sock.__sk_common.skc_family"], set: |o, v| o.sock_family = v },
    FieldSpec { name: "sock_protocol", paths: &["sock.sk_protocol"], set: |o, v| o.sock_protocol = v },
    FieldSpec { name: "fdtable_max_fds", paths: &["fdtable.max_fds"], set: |o, v| o.fdtable_max_fds = v },
    FieldSpec { name: "file_f_inode", paths: &["file.f_inode"], set: |o, v| o.file_f_inode = v },
    FieldSpec { name: "inode_i_mode", paths: &["inode.i_mode"], set: |o, v| o.inode_i_mode = v },
];

/// Names of every field the programs may read.
pub fn field_names() -> impl Iterator<Item = &'static str> {
    FIELDS.iter().map(|f| f.name)
}

/// A field and where this kernel has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedField {
    pub name: &'static str,
    /// The path that resolved and its byte offset, or `None` when no known path did.
    pub found: Option<(&'static str, u32)>,
}

/// A parsed kernel BTF.
pub struct KernelLayout {
    btf: Btf,
}

impl KernelLayout {
    /// The default BTF of the running kernel.
    pub const DEFAULT_PATH: &'static str = "/sys/kernel/btf/vmlinux";

    pub fn open(path: &Path) -> Result<Self, LayoutError> {
        if !path.exists() {
            return Err(LayoutError::Missing { path: path.to_owned() });
        }
        let unreadable = |reason: String| LayoutError::Unreadable { path: path.to_owned(), reason };
        // One read: parsing straight from the file issues thousands of small reads, which
        // costs seconds under emulation.
        let bytes = std::fs::read(path).map_err(|err| unreadable(err.to_string()))?;
        let btf = Btf::from_bytes(&bytes).map_err(|err| unreadable(err.to_string()))?;
        Ok(Self { btf })
    }

    #[cfg(test)]
    fn from_bytes(bytes: &[u8]) -> Self {
        Self { btf: Btf::from_bytes(bytes).expect("valid BTF") }
    }

    /// Resolves every field the programs need.
    pub fn resolve(&self) -> (KernelOffsets, Vec<ResolvedField>) {
        let mut offsets = KernelOffsets::UNSET;
        let fields = FIELDS
            .iter()
            .map(|spec| {
                let found =
                    spec.paths.iter().find_map(|path| self.member_offset(path).map(|offset| (*path, offset)));
                (spec.set)(&mut offsets, found.map_or(UNKNOWN, |(_, offset)| offset));
                ResolvedField { name: spec.name, found }
            })
            .collect();
        (offsets, fields)
    }

    /// True if the BTF describes a function of this name (a candidate for fentry/fexit).
    pub fn has_function(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .map(|types| types.iter().any(|t| matches!(t, Type::Func(_))))
            .unwrap_or(false)
    }

    /// How many parameters function `name` takes, if the BTF describes it.
    pub fn parameter_count(&self, name: &str) -> Option<usize> {
        let types = self.btf.resolve_types_by_name(name).ok()?;
        types.iter().find_map(|t| match t {
            Type::Func(func) => match self.btf.resolve_chained_type(func).ok()? {
                Type::FuncProto(proto) => Some(proto.parameters.len()),
                _ => None,
            },
            _ => None,
        })
    }

    /// Byte offset of `struct.member[.member...]`, looking through anonymous structs/unions.
    pub fn member_offset(&self, path: &str) -> Option<u32> {
        let mut parts = path.split('.');
        let mut current = self.struct_named(parts.next()?)?;
        let mut total_bits = 0u32;
        let mut members = parts.peekable();
        while let Some(member) = members.next() {
            let (bits, ty) = self.find_member(&current, member)?;
            total_bits += bits;
            if members.peek().is_some() {
                current = self.as_struct(ty)?;
            }
        }
        total_bits.is_multiple_of(8).then_some(total_bits / 8)
    }

    fn struct_named(&self, name: &str) -> Option<btf_rs::Struct> {
        self.btf.resolve_types_by_name(name).ok()?.into_iter().find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
    }

    /// Follows typedefs and qualifiers down to a struct or union.
    fn as_struct(&self, mut ty: Type) -> Option<btf_rs::Struct> {
        for _ in 0..16 {
            ty = match ty {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(_)
                | Type::Const(_)
                | Type::Volatile(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => self.btf.resolve_chained_type(ty.as_btf_type()?).ok()?,
                _ => return None,
            };
        }
        None
    }

    /// Finds `name` among the members (recursing into anonymous ones); returns its bit
    /// offset within `s` and its type.
    fn find_member(&self, s: &btf_rs::Struct, name: &str) -> Option<(u32, Type)> {
        for member in &s.members {
            if member.bitfield_size().is_some_and(|size| size != 0) {
                continue;
            }
            let member_name = self.btf.resolve_name(member).unwrap_or_default();
            let ty = self.btf.resolve_chained_type(member).ok()?;
            if member_name == name {
                return Some((member.bit_offset(), ty));
            }
            if member_name.is_empty()
                && let Some(inner) = self.as_struct(ty)
                && let Some((bits, found)) = self.find_member(&inner, name)
            {
                return Some((member.bit_offset() + bits, found));
            }
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod test_btf {
    //! A minimal BTF writer, enough to describe the structs the resolver walks.

    /// Builds BTF bytes from a list of types.
    #[derive(Default)]
    pub struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    pub enum Member<'a> {
        Named(&'a str, u32, u32),
        Anonymous(u32, u32),
    }

    impl BtfBuilder {
        pub fn new() -> Self {
            Self { types: Vec::new(), strings: vec![0], next_id: 1 }
        }

        fn string(&mut self, s: &str) -> u32 {
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn header(&mut self, name: &str, kind: u32, vlen: u32, size_or_type: u32) -> u32 {
            let name_off = if name.is_empty() { 0 } else { self.string(name) };
            for word in [name_off, (kind << 24) | vlen, size_or_type] {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        pub fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.header(name, 1, 0, size);
            self.types.extend_from_slice(&(size * 8).to_le_bytes());
            id
        }

        pub fn ptr(&mut self, target: u32) -> u32 {
            self.header("", 2, 0, target)
        }

        /// A struct (kind 4) or union (kind 5) with (name, type, byte offset) members.
        pub fn composite(&mut self, union: bool, name: &str, size: u32, members: &[Member<'_>]) -> u32 {
            let resolved: Vec<(u32, u32, u32)> = members
                .iter()
                .map(|m| match m {
                    Member::Named(n, t, o) => (self.string(n), *t, *o),
                    Member::Anonymous(t, o) => (0, *t, *o),
                })
                .collect();
            let id = self.header(name, if union { 5 } else { 4 }, members.len() as u32, size);
            for (name_off, ty, offset) in resolved {
                for word in [name_off, ty, offset * 8] {
                    self.types.extend_from_slice(&word.to_le_bytes());
                }
            }
            id
        }

        pub fn func(&mut self, name: &str) -> u32 {
            self.func_with_params(name, &[])
        }

        /// A function whose prototype has these (name, type) parameters.
        pub fn func_with_params(&mut self, name: &str, params: &[(&str, u32)]) -> u32 {
            let resolved: Vec<(u32, u32)> = params.iter().map(|(n, t)| (self.string(n), *t)).collect();
            let proto = self.header("", 13, params.len() as u32, 0);
            for (name_off, ty) in resolved {
                for word in [name_off, ty] {
                    self.types.extend_from_slice(&word.to_le_bytes());
                }
            }
            self.header(name, 12, 0, proto)
        }

        pub fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
            out.push(1);
            out.push(0);
            let hdr_len = 24u32;
            let type_len = self.types.len() as u32;
            for word in [hdr_len, 0, type_len, type_len, self.strings.len() as u32] {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_btf::{BtfBuilder, Member::*};
    use super::*;

    /// `ns_common` as 6.17 and older lay it out, or as 6.18 does.
    fn kernel(v6_18: bool) -> KernelLayout {
        let mut b = BtfBuilder::new();
        let u32_t = b.int("unsigned int", 4);
        let u64_t = b.int("long long unsigned int", 8);
        let ptr = b.ptr(u64_t);
        let ns_common = if v6_18 {
            b.composite(
                false,
                "ns_common",
                40,
                &[
                    Named("ns_type", u32_t, 0),
                    Named("stashed", ptr, 8),
                    Named("ops", ptr, 16),
                    Named("inum", u32_t, 24),
                    Named("__ns_ref", u32_t, 28),
                ],
            )
        } else {
            b.composite(
                false,
                "ns_common",
                24,
                &[
                    Named("stashed", ptr, 0),
                    Named("ops", ptr, 8),
                    Named("inum", u32_t, 16),
                    Named("count", u32_t, 20),
                ],
            )
        };
        let list = b.composite(false, "list_head", 16, &[Named("next", ptr, 0), Named("prev", ptr, 8)]);
        let core = b.composite(false, "netns_core", 32, &[Named("prot_inuse", ptr, 24)]);
        let anon = b.composite(true, "", 8, &[Named("net_cookie", u64_t, 0)]);
        b.composite(
            false,
            "net",
            512,
            &[
                Named("list", list, 40),
                Named("ns", ns_common, 160),
                Named("core", core, 300),
                Anonymous(anon, 400),
            ],
        );
        let possible = b.composite(false, "", 8, &[Named("net", ptr, 0)]);
        b.composite(
            false,
            "net_device",
            1024,
            &[Named("ifindex", u32_t, 224), Named("nd_net", possible, 264), Named("name", u64_t, 280)],
        );
        b.func("copy_net_ns");
        KernelLayout::from_bytes(&b.build())
    }

    #[test]
    fn nested_paths_sum_their_offsets() {
        let k = kernel(false);
        assert_eq!(k.member_offset("net.ns.inum"), Some(176));
        assert_eq!(k.member_offset("net.core.prot_inuse"), Some(324));
        assert_eq!(k.member_offset("net_device.nd_net.net"), Some(264));
        assert_eq!(k.member_offset("net.list"), Some(40));
    }

    #[test]
    fn inum_moves_in_6_18() {
        assert_eq!(kernel(false).member_offset("net.ns.inum"), Some(176));
        assert_eq!(kernel(true).member_offset("net.ns.inum"), Some(184));
    }

    #[test]
    fn renamed_fields_fall_back_to_older_names() {
        let (old, _) = kernel(false).resolve();
        let (new, _) = kernel(true).resolve();
        assert_eq!(old.net_refcount, 180, "6.17 and older: ns.count");
        assert_eq!(new.net_refcount, 188, "6.18: ns.__ns_ref");
    }

    #[test]
    fn anonymous_members_are_searched() {
        assert_eq!(kernel(false).member_offset("net.net_cookie"), Some(400));
    }

    #[test]
    fn missing_fields_are_unknown_and_reported() {
        let (offsets, fields) = kernel(false).resolve();
        // The test BTF has no task_struct.
        assert_eq!(offsets.task_nsproxy, UNKNOWN);
        let task = fields.iter().find(|f| f.name == "task_nsproxy").unwrap();
        assert_eq!(task.found, None);
        let inum = fields.iter().find(|f| f.name == "net_inum").unwrap();
        assert_eq!(inum.found, Some(("net.ns.inum", 176)));
    }

    #[test]
    fn functions_are_found_by_name() {
        let k = kernel(false);
        assert!(k.has_function("copy_net_ns"));
        assert!(!k.has_function("setup_net"));
        assert!(!k.has_function("net"), "a struct is not a function");
    }

    #[test]
    fn parameters_are_counted_from_the_prototype() {
        let mut b = BtfBuilder::new();
        let long = b.int("long", 8);
        let ptr = b.ptr(long);
        b.func_with_params("dev_change_net_namespace", &[("dev", ptr), ("net", ptr), ("pat", ptr)]);
        b.func_with_params(
            "__dev_change_net_namespace",
            &[("dev", ptr), ("net", ptr), ("pat", ptr), ("i", long)],
        );
        b.func("no_args");
        let k = KernelLayout::from_bytes(&b.build());
        assert_eq!(k.parameter_count("dev_change_net_namespace"), Some(3));
        assert_eq!(k.parameter_count("__dev_change_net_namespace"), Some(4));
        assert_eq!(k.parameter_count("no_args"), Some(0));
        assert_eq!(k.parameter_count("long"), None, "a type is not a function");
        assert_eq!(k.parameter_count("missing"), None);
    }

    #[test]
    fn missing_file_names_the_fix() {
        let err = KernelLayout::open(Path::new("/nonexistent/vmlinux")).err().unwrap();
        let text = err.to_string();
        assert!(text.contains("BTF missing"), "{text}");
        assert!(text.contains("CONFIG_DEBUG_INFO_BTF"), "{text}");
    }

    #[test]
    fn host_btf_resolves_every_field() {
        // The agent needs kernel BTF; every machine this suite runs on has it.
        let path = Path::new(KernelLayout::DEFAULT_PATH);
        assert!(path.exists(), "{} missing: the agent cannot run here", path.display());
        let (_, fields) = KernelLayout::open(path).unwrap().resolve();
        let missing: Vec<_> = fields.iter().filter(|f| f.found.is_none()).map(|f| f.name).collect();
        assert!(missing.is_empty(), "unresolved on this kernel: {missing:?}");
        // The move fexit's return slot: 4 arguments from 5.13, 5 from 6.15.
        let layout = KernelLayout::open(path).unwrap();
        let args = crate::kernel::probes::MOVE_FUNCTIONS.iter().find_map(|f| layout.parameter_count(f));
        assert!(matches!(args, Some(3..=5)), "{args:?}");
    }
}
