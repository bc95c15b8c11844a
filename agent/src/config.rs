//! Settings: defaults, overridden by the TOML config file, overridden by flags.
//!
//! [`KEYS`] is the one registry of settings: their defaults (the kernel table sizes come
//! from `netns_agent_common::limits`, which the eBPF maps are compiled with), their allowed
//! ranges, and their help. Validation, `netns-agent run --help`, the example config
//! (`deploy/netns-agent.toml`) and the README's table are all rendered from it, and tests
//! check the committed copies against it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use netns_agent_common::limits;
use serde::Deserialize;

use crate::kernel::{
    attach::Policy,
    loader::KernelTables,
    probes::{Mode, PROBES},
    procfs::Sources,
};

/// A setting's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultValue {
    Number(u64),
    Text(&'static str),
    /// Unset unless given; the example config shows this value.
    Unset(&'static str),
    /// An empty list.
    EmptyList,
}

/// One setting of the config file.
#[derive(Debug)]
pub struct Key {
    /// As written in the file (`limits.route_keys`).
    pub name: &'static str,
    pub default: DefaultValue,
    /// Allowed range, inclusive, for numbers.
    pub range: Option<(u64, u64)>,
    pub help: &'static str,
}

const fn number(name: &'static str, default: u64, min: u64, max: u64, help: &'static str) -> Key {
    Key { name, default: DefaultValue::Number(default), range: Some((min, max)), help }
}

const fn text(name: &'static str, default: DefaultValue, help: &'static str) -> Key {
    Key { name, default, range: None, help }
}

/// The default listen address. The 9100-9999 exporter range is fully allocated; 19110 is
/// outside it and not used by the usual exporters.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:19110";

/// Every setting, in the order the example config lists them.
pub const KEYS: &[Key] = &[
    text(
        "listen",
        DefaultValue::Text(DEFAULT_LISTEN),
        "Address to serve /metrics and /api/v1 on (HOST:PORT).",
    ),
    text(
        "attach",
        DefaultValue::Text("auto"),
        "auto (each probe takes its best working mode), fentry, kprobe or tracepoint (every probe in that mode or detached).",
    ),
    text(
        "disabled_probes",
        DefaultValue::EmptyList,
        "Probes to leave detached, by name as `netns-agent check` lists them (e.g. [\"route_lookup_ipv6\"]): their metrics stay absent; without netns_destroy the periodic inventory finds teardowns, without netns_cleanup no teardown shows as dying.",
    ),
    text("btf", DefaultValue::Text("/sys/kernel/btf/vmlinux"), "Kernel BTF to read structure offsets from."),
    text("web_telemetry_path", DefaultValue::Text("/metrics"), "Path of the Prometheus exposition."),
    text(
        "web_config_file",
        DefaultValue::Unset("/etc/netns-agent/web-config.yml"),
        "TLS and basic authentication for every path served, in the exporter toolkit's web config format (as node_exporter's --web.config.file).",
    ),
    text("web_disable_api", DefaultValue::Text("false"), "true: serve /metrics only, not the JSON API."),
    text(
        "events_file",
        DefaultValue::Unset("/var/log/netns-agent/events.jsonl"),
        "Also append the journal to this file as JSON lines.",
    ),
    number(
        "events_file_max_bytes",
        16 << 20,
        4096,
        1 << 40,
        "Size at which the events file rotates (to FILE.1): at most twice this on disk.",
    ),
    number("journal_max_events", 10_000, 1, 10_000_000, "Journal entries kept in memory."),
    number(
        "series_grace_seconds",
        300,
        0,
        86_400,
        "Seconds a destroyed namespace's series stay, so the last values get scraped.",
    ),
    number(
        "inventory_interval_seconds",
        60,
        1,
        86_400,
        "Seconds between walks of the kernel's namespace list that reconcile the alive set.",
    ),
    number(
        "attribution_interval_seconds",
        15,
        1,
        3_600,
        "Seconds between full scans of /proc, mounts and the CNI cache.",
    ),
    number(
        "dying_after_seconds",
        60,
        1,
        86_400,
        "Seconds after which an unfinished teardown counts as dying (stuck).",
    ),
    text("proc_root", DefaultValue::Text("/proc"), "The proc filesystem to read processes from."),
    text(
        "cni_cache_dir",
        DefaultValue::Text("/var/lib/cni/results"),
        "The CNI plugins' result cache (pods).",
    ),
    text(
        "route_table_detail",
        DefaultValue::Text("false"),
        "true: also count route lookups per table consulted (netns_route_table_lookups_total; more series, a second counter update per lookup).",
    ),
    number(
        "limits.kernel_namespaces",
        limits::KERNEL_NAMESPACES as u64,
        64,
        1 << 22,
        "Namespaces the kernel-side tables track.",
    ),
    number(
        "limits.event_buffer_bytes",
        limits::EVENT_BUFFER_BYTES as u64,
        4096,
        1 << 30,
        "Size of the event ring buffer in bytes (a power of two).",
    ),
    number(
        "limits.route_keys",
        limits::ROUTE_KEYS as u64,
        64,
        1 << 22,
        "(namespace, family, table) keys the route-lookup counters hold; by default fewer on hosts with many CPUs, so that the per-CPU counters stay within 32 MiB (4096 on 128 CPUs).",
    ),
    number(
        "limits.tracked_namespaces",
        16_384,
        1,
        1 << 22,
        "Namespaces exported one by one; past it they fold into netns=\"overflow\".",
    ),
    number(
        "limits.http_connections",
        128,
        1,
        65_536,
        "Connections the HTTP server serves at once; more wait in the listen backlog until one closes.",
    ),
];

/// The registry entry of `name`.
pub fn key(name: &str) -> &'static Key {
    KEYS.iter().find(|k| k.name == name).unwrap_or_else(|| panic!("{name} is not in config::KEYS"))
}

fn default_number(name: &str) -> u64 {
    match key(name).default {
        DefaultValue::Number(n) => n,
        _ => panic!("{name} has no numeric default"),
    }
}

fn default_text(name: &str) -> &'static str {
    match key(name).default {
        DefaultValue::Text(t) => t,
        _ => panic!("{name} has no text default"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} line {line} column {column}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    #[error("bad listen address {value:?}: expected HOST:PORT or :PORT, for example {DEFAULT_LISTEN}")]
    Listen { value: String },
    #[error(
        "bad web_telemetry_path {value:?}: expected a path starting with / other than /, /api/v1/... and /-/..."
    )]
    TelemetryPath { value: String },
    #[error("bad setting {name} = {value}: allowed {expected}")]
    Invalid { name: &'static str, value: String, expected: String },
}

/// `--attach` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachArg {
    /// Each probe picks its best working mode.
    Auto,
    Fentry,
    Kprobe,
    Tracepoint,
}

impl AttachArg {
    pub fn policy(self) -> Policy {
        match self {
            AttachArg::Auto => Policy::Auto,
            AttachArg::Fentry => Policy::Force(Mode::Fentry),
            AttachArg::Kprobe => Policy::Force(Mode::Kprobe),
            AttachArg::Tracepoint => Policy::Force(Mode::Tracepoint),
        }
    }
}

/// `[limits]` as written in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub kernel_namespaces: Option<u64>,
    pub event_buffer_bytes: Option<u64>,
    pub route_keys: Option<u64>,
    pub tracked_namespaces: Option<u64>,
    pub http_connections: Option<u64>,
}

/// The config file's contents. Every key is optional; see [`KEYS`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub attach: Option<AttachArg>,
    pub disabled_probes: Option<Vec<String>>,
    pub btf: Option<PathBuf>,
    pub web_telemetry_path: Option<String>,
    pub web_config_file: Option<PathBuf>,
    pub web_disable_api: Option<bool>,
    pub events_file: Option<PathBuf>,
    pub events_file_max_bytes: Option<u64>,
    pub journal_max_events: Option<u64>,
    pub series_grace_seconds: Option<u64>,
    pub inventory_interval_seconds: Option<u64>,
    pub attribution_interval_seconds: Option<u64>,
    pub dying_after_seconds: Option<u64>,
    pub proc_root: Option<PathBuf>,
    pub cni_cache_dir: Option<PathBuf>,
    pub route_table_detail: Option<bool>,
    #[serde(default)]
    pub limits: FileLimits,
}

/// Flags that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub attach: Option<AttachArg>,
    pub btf: Option<PathBuf>,
    pub events_file: Option<PathBuf>,
    pub web_telemetry_path: Option<String>,
    pub web_config_file: Option<PathBuf>,
    /// `--web.disable-api` given.
    pub web_disable_api: bool,
}

/// Sizes of kernel-side tables and the user-space tracking cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub maps: KernelTables,
    pub tracked_namespaces: usize,
    /// Connections the HTTP server serves at once.
    pub http_connections: usize,
}

/// Everything the agent runs with, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub telemetry_path: String,
    pub web_config_file: Option<PathBuf>,
    pub web_disable_api: bool,
    pub attach: Policy,
    /// Probes left detached on purpose (names from the probe registry).
    pub disabled_probes: Vec<&'static str>,
    pub btf: PathBuf,
    pub limits: Limits,
    pub inventory_interval: Duration,
    pub series_grace: Duration,
    pub attribution_interval: Duration,
    pub sources: Sources,
    pub journal_max_events: usize,
    pub events_file: Option<PathBuf>,
    pub events_file_max_bytes: u64,
    pub dying_after: Duration,
}

impl FileConfig {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|err| {
            let offset = err.span().map_or(0, |span| span.start);
            let before = &text[..offset.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: err.message().replace('\n', " ").trim().to_owned(),
            }
        })
    }
}

/// A listen address as node_exporter takes it: `HOST:PORT`, `:PORT` (every address), or a
/// name that resolves (`localhost:19110`).
fn parse_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs as _;
    let bad = || ConfigError::Listen { value: text.to_owned() };
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    // A name: only when there is a port, so that a bare "localhost" is refused.
    if text.rsplit_once(':').is_none_or(|(_, port)| port.parse::<u16>().is_err()) {
        return Err(bad());
    }
    text.to_socket_addrs().map_err(|_| bad())?.next().ok_or_else(bad)
}

/// A numeric setting: the file's value or the default, checked against its range.
fn checked(name: &'static str, value: Option<u64>) -> Result<u64, ConfigError> {
    let key = key(name);
    let value = value.unwrap_or_else(|| default_number(name));
    let (min, max) = key.range.unwrap_or((0, u64::MAX));
    if value < min || value > max {
        return Err(ConfigError::Invalid {
            name,
            value: value.to_string(),
            expected: format!("{min} to {max}"),
        });
    }
    Ok(value)
}

/// Probe names, each checked against the probe registry.
fn probe_names(names: Option<Vec<String>>) -> Result<Vec<&'static str>, ConfigError> {
    let mut out = Vec::new();
    for name in names.unwrap_or_default() {
        let Some(probe) = PROBES.iter().find(|p| p.name == name) else {
            return Err(ConfigError::Invalid {
                name: "disabled_probes",
                value: format!("{name:?}"),
                expected: format!(
                    "probe names from `netns-agent check`: {}",
                    PROBES.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
                ),
            });
        };
        if !out.contains(&probe.name) {
            out.push(probe.name);
        }
    }
    Ok(out)
}

/// Durations are whole seconds in `*_seconds` keys, as Prometheus exporters name them, checked
/// against the registry's range: not humantime-serde strings ("30s"), whose serde errors do not
/// name the key's range and would change the file format.
fn seconds(name: &'static str, value: Option<u64>) -> Result<Duration, ConfigError> {
    checked(name, value).map(Duration::from_secs)
}

impl Settings {
    pub fn resolve(file: FileConfig, flags: Overrides) -> Result<Self, ConfigError> {
        let listen_text = flags.listen.or(file.listen).unwrap_or_else(|| default_text("listen").to_owned());
        let listen = parse_listen(&listen_text)?;
        let telemetry_path = flags
            .web_telemetry_path
            .or(file.web_telemetry_path)
            .unwrap_or_else(|| default_text("web_telemetry_path").to_owned());
        if !telemetry_path.starts_with('/')
            || telemetry_path == "/"
            || telemetry_path.starts_with("/api/")
            || telemetry_path.starts_with("/-/")
            || telemetry_path.contains(char::is_whitespace)
        {
            return Err(ConfigError::TelemetryPath { value: telemetry_path });
        }
        let event_buffer_bytes = checked("limits.event_buffer_bytes", file.limits.event_buffer_bytes)?;
        if !event_buffer_bytes.is_power_of_two() {
            return Err(ConfigError::Invalid {
                name: "limits.event_buffer_bytes",
                value: event_buffer_bytes.to_string(),
                expected: "a power of two from 4096 to 1073741824".into(),
            });
        }
        // The ranges keep every value below u32::MAX, so the casts below are exact.
        let limits = Limits {
            maps: KernelTables {
                kernel_namespaces: checked("limits.kernel_namespaces", file.limits.kernel_namespaces)? as u32,
                event_buffer_bytes: event_buffer_bytes as u32,
                route_keys: checked(
                    "limits.route_keys",
                    file.limits.route_keys.or(Some(u64::from(crate::kernel::host::default_route_keys()))),
                )? as u32,
                route_table_detail: file.route_table_detail.unwrap_or(false),
            },
            tracked_namespaces: checked("limits.tracked_namespaces", file.limits.tracked_namespaces)?
                as usize,
            http_connections: checked("limits.http_connections", file.limits.http_connections)? as usize,
        };
        Ok(Self {
            listen,
            telemetry_path,
            web_config_file: flags.web_config_file.or(file.web_config_file),
            web_disable_api: flags.web_disable_api || file.web_disable_api.unwrap_or(false),
            attach: flags.attach.or(file.attach).unwrap_or(AttachArg::Auto).policy(),
            disabled_probes: probe_names(file.disabled_probes)?,
            btf: flags.btf.or(file.btf).unwrap_or_else(|| PathBuf::from(default_text("btf"))),
            limits,
            inventory_interval: seconds("inventory_interval_seconds", file.inventory_interval_seconds)?,
            series_grace: seconds("series_grace_seconds", file.series_grace_seconds)?,
            attribution_interval: seconds("attribution_interval_seconds", file.attribution_interval_seconds)?,
            sources: Sources {
                proc_root: file.proc_root.unwrap_or_else(|| default_text("proc_root").into()),
                cni_cache_dir: file.cni_cache_dir.unwrap_or_else(|| default_text("cni_cache_dir").into()),
            },
            journal_max_events: checked("journal_max_events", file.journal_max_events)? as usize,
            events_file: flags.events_file.or(file.events_file),
            events_file_max_bytes: checked("events_file_max_bytes", file.events_file_max_bytes)?,
            dying_after: seconds("dying_after_seconds", file.dying_after_seconds)?,
        })
    }
}

/// The settings a config reload (SIGHUP) applies at once; every other setting takes effect
/// at the next start (ports, probes, kernel tables and files are set up once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunables {
    pub series_grace: Duration,
    pub inventory_interval: Duration,
    pub attribution_interval: Duration,
    pub dying_after: Duration,
}

impl Settings {
    pub fn tunables(&self) -> Tunables {
        Tunables {
            series_grace: self.series_grace,
            inventory_interval: self.inventory_interval,
            attribution_interval: self.attribution_interval,
            dying_after: self.dying_after,
        }
    }
}

/// One setting that differs between the running config and a reloaded one.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    pub key: &'static str,
    pub old: String,
    pub new: String,
    /// Applied at once (a [`Tunables`] field); else at the next start.
    pub live: bool,
}

type Show = fn(&Settings) -> String;

/// How each key of the registry reads from [`Settings`], and whether a reload applies it.
const SHOWN: &[(&str, bool, Show)] = &[
    ("listen", false, |s| s.listen.to_string()),
    ("attach", false, |s| format!("{:?}", s.attach)),
    ("disabled_probes", false, |s| format!("{:?}", s.disabled_probes)),
    ("btf", false, |s| s.btf.display().to_string()),
    ("web_telemetry_path", false, |s| s.telemetry_path.clone()),
    ("web_config_file", false, |s| format!("{:?}", s.web_config_file)),
    ("web_disable_api", false, |s| s.web_disable_api.to_string()),
    ("events_file", false, |s| format!("{:?}", s.events_file)),
    ("events_file_max_bytes", false, |s| s.events_file_max_bytes.to_string()),
    ("journal_max_events", false, |s| s.journal_max_events.to_string()),
    ("series_grace_seconds", true, |s| s.series_grace.as_secs().to_string()),
    ("inventory_interval_seconds", true, |s| s.inventory_interval.as_secs().to_string()),
    ("attribution_interval_seconds", true, |s| s.attribution_interval.as_secs().to_string()),
    ("dying_after_seconds", true, |s| s.dying_after.as_secs().to_string()),
    ("proc_root", false, |s| s.sources.proc_root.display().to_string()),
    ("cni_cache_dir", false, |s| s.sources.cni_cache_dir.display().to_string()),
    ("route_table_detail", false, |s| s.limits.maps.route_table_detail.to_string()),
    ("limits.kernel_namespaces", false, |s| s.limits.maps.kernel_namespaces.to_string()),
    ("limits.event_buffer_bytes", false, |s| s.limits.maps.event_buffer_bytes.to_string()),
    ("limits.route_keys", false, |s| s.limits.maps.route_keys.to_string()),
    ("limits.tracked_namespaces", false, |s| s.limits.tracked_namespaces.to_string()),
    ("limits.http_connections", false, |s| s.limits.http_connections.to_string()),
];

/// What differs between two configs, in registry order.
pub fn changes(old: &Settings, new: &Settings) -> Vec<Change> {
    KEYS.iter()
        .filter_map(|key| SHOWN.iter().find(|(name, _, _)| *name == key.name))
        .filter_map(|(key, live, show)| {
            let (old, new) = (show(old), show(new));
            (old != new).then_some(Change { key, old, new, live: *live })
        })
        .collect()
}

fn default_text_of(key: &Key) -> String {
    match key.default {
        DefaultValue::Number(n) => n.to_string(),
        DefaultValue::Text(t @ ("true" | "false")) => t.to_owned(),
        DefaultValue::Text(t) => format!("{t:?}"),
        DefaultValue::Unset(_) => "unset".to_owned(),
        DefaultValue::EmptyList => "[]".to_owned(),
    }
}

/// The settings as the help text lists them.
pub fn help_text() -> String {
    let mut out = String::from("Config file keys (TOML; flags override them):\n");
    for key in KEYS {
        let range = key.range.map(|(min, max)| format!(", {min} to {max}")).unwrap_or_default();
        out.push_str(&format!(
            "  {} [default: {}{range}]\n      {}\n",
            key.name,
            default_text_of(key),
            key.help
        ));
    }
    out
}

/// The example config file: every key commented out at its default.
pub fn example_config() -> String {
    let mut out = String::from(
        "# netns-agent configuration (netns-agent run --config FILE). Every key is optional;\n\
         # the values shown are the defaults. Generated from the agent's settings registry.\n",
    );
    let mut section = "";
    for key in KEYS {
        let (table, name) = key.name.split_once('.').unwrap_or(("", key.name));
        if table != section {
            out.push_str(&format!("\n[{table}]\n"));
            section = table;
        }
        let range = key.range.map(|(min, max)| format!(" ({min} to {max})")).unwrap_or_default();
        out.push_str(&format!("\n# {}{range}\n", key.help));
        match key.default {
            DefaultValue::Unset(example) => out.push_str(&format!("# {name} = {example:?}\n")),
            _ => out.push_str(&format!("# {name} = {}\n", default_text_of(key))),
        }
    }
    out
}

/// The README's table of settings.
pub fn markdown_table() -> String {
    let mut out = String::from("| key | default | allowed | meaning |\n|---|---|---|---|\n");
    for key in KEYS {
        let range = key.range.map(|(min, max)| format!("{min} to {max}")).unwrap_or_else(|| "-".into());
        let default = match key.default {
            DefaultValue::Number(n) => n.to_string(),
            DefaultValue::Text(t) => format!("`{t}`"),
            DefaultValue::Unset(_) => "unset".into(),
            DefaultValue::EmptyList => "`[]`".into(),
        };
        out.push_str(&format!(
            "| `{}` | {default} | {range} | {} |\n",
            key.name,
            key.help.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(Path::new("agent.toml"), text)
    }

    fn resolve(text: &str) -> Result<Settings, ConfigError> {
        Settings::resolve(parse(text)?, Overrides::default())
    }

    #[test]
    fn a_reload_knows_every_key_and_which_apply_at_once() {
        let names: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
        let shown: Vec<&str> = SHOWN.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(names, shown, "SHOWN lists every registry key, in order");
        let old = resolve("series_grace_seconds = 300\nlisten = \"127.0.0.1:1\"\n").unwrap();
        let new = resolve("series_grace_seconds = 5\nlisten = \"127.0.0.1:2\"\n").unwrap();
        let got = changes(&old, &new);
        assert_eq!(
            got,
            vec![
                Change { key: "listen", old: "127.0.0.1:1".into(), new: "127.0.0.1:2".into(), live: false },
                Change { key: "series_grace_seconds", old: "300".into(), new: "5".into(), live: true },
            ]
        );
        assert_eq!(new.tunables().series_grace, Duration::from_secs(5));
        assert!(changes(&old, &old).is_empty());
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = Settings::resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.attach, Policy::Auto);
        assert_eq!(s.limits.maps.route_keys, limits::ROUTE_KEYS);
        assert_eq!(s.limits.maps.kernel_namespaces, limits::KERNEL_NAMESPACES);
        assert_eq!(s.limits.maps.event_buffer_bytes, limits::EVENT_BUFFER_BYTES);
        assert_eq!(s.series_grace, Duration::from_secs(300));
    }

    #[test]
    fn every_file_key_is_in_the_registry_and_back() {
        // The example config lists every key; parsing it uncommented must give no unknown key.
        let uncommented: String = example_config()
            .lines()
            .filter_map(|l| {
                let l = l.strip_prefix("# ").unwrap_or(l);
                (l.starts_with('[') || l.contains(" = ")).then(|| format!("{l}\n"))
            })
            .collect();
        let file = parse(&uncommented).unwrap();
        Settings::resolve(file, Overrides::default()).unwrap();
        for key in KEYS {
            let (_, name) = key.name.split_once('.').unwrap_or(("", key.name));
            assert!(uncommented.contains(&format!("{name} = ")), "{} missing from the example", key.name);
        }
    }

    #[test]
    fn flags_override_the_file() {
        let file = parse("listen = \"127.0.0.1:1\"\nattach = \"kprobe\"\n").unwrap();
        let flags = Overrides { listen: Some("127.0.0.1:2".into()), ..Default::default() };
        let s = Settings::resolve(file, flags).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:2");
        assert_eq!(s.attach, Policy::Force(Mode::Kprobe));
    }

    #[test]
    fn unknown_keys_are_one_line_errors_with_a_position() {
        let err = parse("listen = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err().to_string();
        assert!(err.starts_with("config file agent.toml line 2 column 1: unknown field `lisen`"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn every_number_out_of_range_names_the_key_and_the_range() {
        for key in KEYS {
            let Some((min, max)) = key.range else { continue };
            let (table, name) = key.name.split_once('.').unwrap_or(("", key.name));
            let prefix = if table.is_empty() { String::new() } else { format!("[{table}]\n") };
            for bad in [min.checked_sub(1), max.checked_add(1)].into_iter().flatten() {
                if bad > i64::MAX as u64 {
                    continue;
                }
                let err = resolve(&format!("{prefix}{name} = {bad}\n")).unwrap_err().to_string();
                assert!(err.starts_with(&format!("bad setting {} = {bad}: allowed", key.name)), "{err}");
                assert!(!err.contains('\n'), "{err}");
            }
            resolve(&format!(
                "{prefix}{name} = {}\n",
                if key.name.ends_with("bytes") { max.next_power_of_two().min(max) } else { min }
            ))
            .unwrap_or_else(|e| panic!("{}: {e}", key.name));
        }
    }

    #[test]
    fn bad_values_name_what_is_expected() {
        let err = Settings::resolve(
            FileConfig::default(),
            Overrides { listen: Some("localhost".into()), ..Default::default() },
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "bad listen address \"localhost\": expected HOST:PORT or :PORT, for example 0.0.0.0:19110"
        );
        for (given, want) in
            [(":19110", "0.0.0.0:19110"), ("localhost:19111", "127.0.0.1:19111"), ("[::1]:5", "[::1]:5")]
        {
            let s = Settings::resolve(
                FileConfig::default(),
                Overrides { listen: Some(given.into()), ..Default::default() },
            )
            .unwrap();
            assert_eq!(s.listen.to_string(), want, "{given}");
        }
        for path in ["metrics", "/", "/api/v1/x", "/-/ready"] {
            let file = parse(&format!("web_telemetry_path = {path:?}\n")).unwrap();
            assert!(Settings::resolve(file, Overrides::default()).is_err(), "{path}");
        }
        let err = resolve("[limits]\nevent_buffer_bytes = 5000\n").unwrap_err().to_string();
        assert!(err.contains("a power of two"), "{err}");
        let err = resolve("[limits]\nroute_keys = 0\n").unwrap_err().to_string();
        assert_eq!(err, "bad setting limits.route_keys = 0: allowed 64 to 4194304");
        let err = parse("attach = \"magic\"\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(resolve("series_grace_seconds = 0\n").is_ok(), "a grace of 0 drops series at once");
        let err = resolve("disabled_probes = [\"route_lookups\"]\n").unwrap_err().to_string();
        assert!(
            err.starts_with("bad setting disabled_probes = \"route_lookups\": allowed probe names")
                && err.contains("route_lookup_ipv4"),
            "{err}"
        );
        let s = resolve("disabled_probes = [\"netns_destroy\", \"route_lookup_ipv6\", \"netns_destroy\"]\n")
            .unwrap();
        assert_eq!(s.disabled_probes, ["netns_destroy", "route_lookup_ipv6"]);
        assert!(resolve("").unwrap().disabled_probes.is_empty());
    }

    /// The committed copies of the registry: the example config and the README's table.
    #[test]
    fn committed_renderings_match_the_registry() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let example = root.join("deploy/netns-agent.toml");
        if std::env::var_os("NETNS_AGENT_UPDATE_DOCS").is_some() {
            std::fs::write(&example, example_config()).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&example).unwrap_or_default(),
            example_config(),
            "deploy/netns-agent.toml is stale: run NETNS_AGENT_UPDATE_DOCS=1 cargo test -p netns-agent"
        );
        let readme_path = root.join("README.md");
        let readme = std::fs::read_to_string(&readme_path).unwrap();
        let (begin, end) = ("<!-- config keys:", "<!-- end of config keys -->");
        let start = readme.find(begin).expect("README has the config-keys markers");
        let start = start + readme[start..].find('\n').unwrap() + 1;
        let stop = readme.find(end).expect("README has the config-keys end marker");
        if std::env::var_os("NETNS_AGENT_UPDATE_DOCS").is_some() {
            let updated = format!("{}{}{}", &readme[..start], markdown_table(), &readme[stop..]);
            std::fs::write(&readme_path, updated).unwrap();
            return;
        }
        assert_eq!(
            &readme[start..stop],
            markdown_table(),
            "README's settings table is stale: run NETNS_AGENT_UPDATE_DOCS=1 cargo test -p netns-agent config"
        );
    }
}
