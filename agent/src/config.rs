//! Settings: defaults, overridden by the TOML config file, overridden by flags.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{attach::Policy, probes::Mode};

/// The default listen address. The 9100-9999 exporter range is fully allocated; 19110 is
/// outside it and not used by the usual exporters.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:19110";

/// How long a destroyed namespace's series stay: long enough for a few scrapes at the usual
/// 15-60 s intervals to catch their last values.
pub const DEFAULT_GRACE_SECONDS: u64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("config file {path} line {line} column {column}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    #[error("bad listen address {value:?}: expected HOST:PORT, for example {DEFAULT_LISTEN}")]
    Listen { value: String },
    #[error("bad setting {name} = {value}: {expected}")]
    Invalid { name: &'static str, value: String, expected: &'static str },
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

/// Sizes of kernel-side tables.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Namespaces the kernel-side table tracks (alive set, teardown markers).
    pub kernel_namespaces: u32,
    /// Size of the event ring buffer, bytes (a power of two, at least one page).
    pub event_buffer_bytes: u32,
    /// (namespace, family, table) keys the route-lookup counters hold.
    pub route_keys: u32,
    /// Namespaces exported one by one; past it they are folded into `netns="overflow"`.
    pub tracked_namespaces: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            kernel_namespaces: 32768,
            event_buffer_bytes: 256 * 1024,
            route_keys: 65536,
            tracked_namespaces: 16384,
        }
    }
}

/// The config file's contents. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub attach: Option<AttachArg>,
    pub btf: Option<PathBuf>,
    #[serde(default)]
    pub limits: Limits,
    /// Seconds between inventory walks that reconcile the alive set.
    pub inventory_interval_seconds: Option<u64>,
    /// Seconds a destroyed namespace's series stay in the exposition.
    pub series_grace_seconds: Option<u64>,
    /// Seconds between full scans of /proc, mounts and the CNI cache for attribution.
    pub attribution_interval_seconds: Option<u64>,
    /// The proc filesystem to read processes from.
    pub proc_root: Option<PathBuf>,
    /// The CNI plugins' result cache (pod names).
    pub cni_cache_dir: Option<PathBuf>,
    /// Journal entries kept in memory.
    pub journal_max_events: Option<usize>,
    /// Append the journal to this file as JSON lines.
    pub events_file: Option<PathBuf>,
    /// Size at which the events file rotates (to `<file>.1`).
    pub events_file_max_bytes: Option<u64>,
    /// Seconds after which a teardown that has not finished counts as dying.
    pub dying_after_seconds: Option<u64>,
}

/// Flags that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub attach: Option<AttachArg>,
    pub btf: Option<PathBuf>,
    pub events_file: Option<PathBuf>,
}

/// Everything the agent runs with, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub attach: Policy,
    pub btf: PathBuf,
    pub limits: Limits,
    pub inventory_interval: Duration,
    pub series_grace: Duration,
    pub attribution_interval: Duration,
    pub sources: crate::attribution::Sources,
    pub journal_max_events: usize,
    pub events_file: Option<PathBuf>,
    pub events_file_max_bytes: u64,
    pub dying_after: Duration,
}

impl FileConfig {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| ConfigError::Read { path: path.to_owned(), reason: err.to_string() })?;
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

impl Settings {
    pub fn resolve(file: FileConfig, flags: Overrides) -> Result<Self, ConfigError> {
        let listen_text = flags.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text.parse().map_err(|_| ConfigError::Listen { value: listen_text.clone() })?;
        let limits = file.limits;
        if limits.kernel_namespaces < 64 {
            return Err(ConfigError::Invalid {
                name: "limits.kernel_namespaces",
                value: limits.kernel_namespaces.to_string(),
                expected: "at least 64",
            });
        }
        let page = 4096;
        if !limits.event_buffer_bytes.is_power_of_two() || limits.event_buffer_bytes < page {
            return Err(ConfigError::Invalid {
                name: "limits.event_buffer_bytes",
                value: limits.event_buffer_bytes.to_string(),
                expected: "a power of two of at least 4096",
            });
        }
        let seconds = |name: &'static str, value: Option<u64>, default: u64| match value {
            Some(0) => Err(ConfigError::Invalid { name, value: "0".into(), expected: "at least 1" }),
            other => Ok(Duration::from_secs(other.unwrap_or(default))),
        };
        let inventory_interval = seconds("inventory_interval_seconds", file.inventory_interval_seconds, 60)?;
        let attribution_interval =
            seconds("attribution_interval_seconds", file.attribution_interval_seconds, 15)?;
        if limits.tracked_namespaces == 0 {
            return Err(ConfigError::Invalid {
                name: "limits.tracked_namespaces",
                value: "0".into(),
                expected: "at least 1",
            });
        }
        let defaults = crate::attribution::Sources::default();
        let dying_after = seconds("dying_after_seconds", file.dying_after_seconds, 60)?;
        let journal_max_events = file.journal_max_events.unwrap_or(10_000);
        let events_file_max_bytes = file.events_file_max_bytes.unwrap_or(16 << 20);
        if journal_max_events == 0 || events_file_max_bytes < 4096 {
            return Err(ConfigError::Invalid {
                name: "journal_max_events / events_file_max_bytes",
                value: format!("{journal_max_events} / {events_file_max_bytes}"),
                expected: "at least 1 entry and 4096 bytes",
            });
        }
        Ok(Self {
            listen,
            attach: flags.attach.or(file.attach).unwrap_or(AttachArg::Auto).policy(),
            btf: flags
                .btf
                .or(file.btf)
                .unwrap_or_else(|| PathBuf::from(crate::kernel_layout::KernelLayout::DEFAULT_PATH)),
            limits,
            inventory_interval,
            series_grace: Duration::from_secs(file.series_grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS)),
            attribution_interval,
            sources: crate::attribution::Sources {
                proc_root: file.proc_root.unwrap_or(defaults.proc_root),
                cni_cache_dir: file.cni_cache_dir.unwrap_or(defaults.cni_cache_dir),
            },
            journal_max_events,
            events_file: flags.events_file.or(file.events_file),
            events_file_max_bytes,
            dying_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(Path::new("agent.toml"), text)
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = Settings::resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.attach, Policy::Auto);
        assert_eq!(s.limits, Limits::default());
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
    fn bad_values_name_what_is_expected() {
        let err = Settings::resolve(
            FileConfig::default(),
            Overrides { listen: Some("localhost".into()), ..Default::default() },
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "bad listen address \"localhost\": expected HOST:PORT, for example 0.0.0.0:19110");
        let file = parse("[limits]\nevent_buffer_bytes = 5000\n").unwrap();
        let err = Settings::resolve(file, Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("a power of two"), "{err}");
        let err = parse("attach = \"magic\"\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
