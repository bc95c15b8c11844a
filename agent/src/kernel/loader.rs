//! Start-up against the kernel: privileges and version, the BTF layout, then the object
//! loaded with its globals (field offsets) and map sizes set before the kernel sees it.
//! Programs are loaded one by one later, by the attach engine.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use aya::{Btf, Ebpf, EbpfLoader, Endianness};
use netns_agent_common::offsets::KernelOffsets;

use super::{
    host::{self, HostError},
    layout::{KernelLayout, LayoutError, ResolvedField},
    probes,
};

/// The kernel programs, built by `build.rs` from `ebpf/`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netns-agent"));

/// The kernel-side tables: their sizes (`[limits]` in the config), and whether route
/// lookups are also counted per table (`route_table_detail`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelTables {
    pub kernel_namespaces: u32,
    pub event_buffer_bytes: u32,
    pub route_keys: u32,
    pub route_table_detail: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("cannot parse BTF {path}")]
    Btf {
        path: PathBuf,
        #[source]
        source: aya::BtfError,
    },
    #[error("loading the eBPF object failed")]
    Object(#[source] aya::EbpfError),
}

/// Everything start-up learns about the kernel, and the loaded (not yet attached) object.
pub struct Prepared {
    pub release: String,
    /// The BTF file the offsets came from.
    pub btf_path: PathBuf,
    /// Functions the BTF describes, among those the probes hook.
    pub btf_functions: HashSet<String>,
    pub fields: Vec<ResolvedField>,
    pub btf: Btf,
    pub ebpf: Ebpf,
    /// Addresses of the kernel functions the probes use.
    pub kallsyms: HashMap<String, u64>,
    /// The kernel assigns `net_cookie` lazily (before 5.12): the programs key namespaces by
    /// keys of the agent's own (see [`lazy_cookie`]).
    pub lazy_cookie: bool,
}

/// The checks and loading shared by `run` and `check`. Each failure is one line that names
/// the problem and the fix.
pub fn prepare(btf_path: &Path, sizes: KernelTables) -> Result<Prepared, LoadError> {
    host::check_privileges()?;
    let release = host::kernel_release()?;
    host::check_kernel_version(&release)?;
    let layout = KernelLayout::open(btf_path)?;
    let (offsets, fields) = layout.resolve();
    let btf_functions =
        probes::all_functions().into_iter().filter(|f| layout.has_function(f)).map(str::to_owned).collect();
    let lazy_cookie = lazy_cookie(&release, layout.has_function("net_gen_cookie"));
    // The fexit on the move function reads its return value after this many arguments:
    // the function it attaches to is the first of the list the BTF has.
    let move_fn_args =
        probes::MOVE_FUNCTIONS.iter().find_map(|f| layout.parameter_count(f)).unwrap_or(0) as u32;
    // Two parses of the kernel BTF (tens of MiB each) must not be alive at once.
    drop(layout);
    let btf = Btf::parse_file(btf_path, Endianness::default())
        .map_err(|source| LoadError::Btf { path: btf_path.to_owned(), source })?;
    let kallsyms = host::kallsyms_functions(&probes::all_functions());
    let cleanup_net = kallsyms.get("cleanup_net").copied().unwrap_or(0);
    let ebpf = load(&offsets, cleanup_net, lazy_cookie, move_fn_args, &btf, sizes)?;
    Ok(Prepared {
        release,
        btf_path: btf_path.to_owned(),
        btf_functions,
        fields,
        btf,
        ebpf,
        kallsyms,
        lazy_cookie,
    })
}

/// What namespaces are keyed by, for the log and `check`.
pub fn key_source(lazy_cookie: bool) -> &'static str {
    if lazy_cookie {
        "keys of the agent's own (this kernel assigns net_cookie only when asked)"
    } else {
        "net_cookie"
    }
}

/// Whether the kernel gives a namespace its `net_cookie` only when asked (the first
/// `net_gen_cookie()`; until then it reads 0): before 5.12, which sets it at creation and
/// dropped `net_gen_cookie`. Either sign suffices, so a backport of either way is caught.
pub fn lazy_cookie(release: &str, has_net_gen_cookie: bool) -> bool {
    has_net_gen_cookie || host::parse_version(release).is_some_and(|version| version < (5, 12))
}

/// `cleanup_net` is the function's address (0 when unknown), for the tracepoint that
/// watches teardown batches.
fn load(
    offsets: &KernelOffsets,
    cleanup_net: u64,
    lazy_cookie: bool,
    move_fn_args: u32,
    btf: &Btf,
    sizes: KernelTables,
) -> Result<Ebpf, LoadError> {
    EbpfLoader::new()
        .btf(Some(btf))
        .override_global("OFFSETS", offsets, true)
        .override_global("CLEANUP_NET_ADDR", &cleanup_net, true)
        .override_global("ROUTE_TABLE_DETAIL", &u8::from(sizes.route_table_detail), true)
        .override_global("LAZY_COOKIE", &u8::from(lazy_cookie), true)
        .override_global("MOVE_FN_ARGS", &move_fn_args, true)
        .map_max_entries("LIVE", sizes.kernel_namespaces)
        .map_max_entries("TEARDOWN_MARKERS", sizes.kernel_namespaces)
        .map_max_entries("NET_KEYS", sizes.kernel_namespaces)
        .map_max_entries("TABLE_OWNER", sizes.kernel_namespaces)
        .map_max_entries("DEVICE_MOVES", sizes.kernel_namespaces)
        .map_max_entries("ROUTE_LOOKUPS", sizes.route_keys)
        .map_max_entries("EVENTS", sizes.event_buffer_bytes)
        .load(OBJECT)
        .map_err(LoadError::Object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_lazy_before_5_12_or_where_net_gen_cookie_exists() {
        assert!(lazy_cookie("5.10.0-46-amd64", false), "Debian 11");
        assert!(lazy_cookie("5.11.22", false));
        assert!(!lazy_cookie("5.12.0", false));
        assert!(!lazy_cookie("6.18.44-fc-v1045", false));
        assert!(lazy_cookie("5.14.0-backport", true), "a 5.12-style kernel still with net_gen_cookie");
        assert!(!lazy_cookie("unknown", false));
    }
}
