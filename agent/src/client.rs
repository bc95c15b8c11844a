//! The on-call engineer's commands, `ls`, `show` and `events`: clients of a running agent's
//! JSON API.

use std::{fmt::Write as _, time::Duration};

use serde::de::DeserializeOwned;

use crate::{
    api::{EventsView, NamespaceView},
    journal::Entry,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no agent answering at {addr} ({reason}): start one with 'netns-agent run', or point --agent or \
         NETNS_AGENT_ADDR at it"
    )]
    NoAgent { addr: String, reason: String },
    #[error("the agent at {addr} answered {path} with: {reason}")]
    Bad { addr: String, path: String, reason: String },
    #[error("no namespace matches {0:?} (give an inode number, an ip netns name or a pid)")]
    NotFound(String),
}

pub struct Client {
    addr: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(addr: &str) -> Self {
        let config = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(30))).build();
        Self { addr: addr.to_owned(), agent: config.into() }
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("http://{}{path}", self.addr);
        let bad =
            |reason: String| ClientError::Bad { addr: self.addr.clone(), path: path.to_owned(), reason };
        let mut response = self.agent.get(&url).call().map_err(|err| match err {
            ureq::Error::StatusCode(code) => bad(format!("HTTP {code}")),
            ureq::Error::Io(io) => ClientError::NoAgent { addr: self.addr.clone(), reason: io.to_string() },
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                ClientError::NoAgent { addr: self.addr.clone(), reason: err.to_string() }
            }
            other => bad(other.to_string()),
        })?;
        let body = response.body_mut().read_to_string().map_err(|err| bad(err.to_string()))?;
        serde_json::from_str(&body).map_err(|err| bad(err.to_string()))
    }

    pub fn namespaces(&self) -> Result<Vec<NamespaceView>, ClientError> {
        self.get("/api/v1/namespaces")
    }

    pub fn namespace_of_pid(&self, pid: i32) -> Result<Vec<NamespaceView>, ClientError> {
        self.get(&format!("/api/v1/namespaces?pid={pid}"))
    }

    pub fn events(&self, netns: Option<u32>, since: u64, limit: usize) -> Result<EventsView, ClientError> {
        let filter = netns.map(|n| format!("&netns={n}")).unwrap_or_default();
        self.get(&format!("/api/v1/events?since={since}&limit={limit}{filter}"))
    }
}

/// `1h2m`, `3m4s`, `5.2s`: how `ps` and `kubectl get` show ages.
pub fn short_duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{seconds:.1}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

/// Keys `ls --sort` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    Netns,
    State,
    Age,
    Name,
    Lookups,
    Failures,
}

/// A row of `ls`: the namespace and its rates over the sampling interval.
pub struct Row<'a> {
    pub ns: &'a NamespaceView,
    pub lookups_per_s: f64,
    pub failures_per_s: f64,
}

/// Rates between two samples of the namespaces, matched by cookie.
pub fn rows<'a>(now: &'a [NamespaceView], before: &[NamespaceView], seconds: f64) -> Vec<Row<'a>> {
    now.iter()
        .map(|ns| {
            let prev = before.iter().find(|b| b.cookie == ns.cookie);
            let rate = |cur: u64, old: Option<u64>| match (old, seconds > 0.0) {
                (Some(old), true) => cur.saturating_sub(old) as f64 / seconds,
                _ => 0.0,
            };
            Row {
                ns,
                lookups_per_s: rate(ns.route_lookups, prev.map(|p| p.route_lookups)),
                failures_per_s: rate(ns.route_failures, prev.map(|p| p.route_failures)),
            }
        })
        .collect()
}

pub fn sort_rows(rows: &mut [Row<'_>], key: SortKey) {
    match key {
        SortKey::Netns => rows.sort_by_key(|r| r.ns.netns),
        SortKey::State => rows.sort_by(|a, b| a.ns.state.cmp(&b.ns.state).then(a.ns.netns.cmp(&b.ns.netns))),
        SortKey::Age => rows.sort_by(|a, b| a.ns.age_seconds.total_cmp(&b.ns.age_seconds)),
        SortKey::Name => rows.sort_by(|a, b| a.ns.names.cmp(&b.ns.names).then(a.ns.netns.cmp(&b.ns.netns))),
        SortKey::Lookups => rows.sort_by(|a, b| b.lookups_per_s.total_cmp(&a.lookups_per_s)),
        SortKey::Failures => rows.sort_by(|a, b| b.failures_per_s.total_cmp(&a.failures_per_s)),
    }
}

/// The `ls` table.
pub fn table(rows: &[Row<'_>]) -> String {
    let mut lines = vec![[
        "NETNS".to_owned(),
        "STATE".into(),
        "AGE".into(),
        "NAME".into(),
        "PROCESS".into(),
        "CONTAINER/POD".into(),
        "LOOKUPS/S".into(),
        "FAILURES/S".into(),
    ]];
    for r in rows {
        let ns = r.ns;
        let process = ns
            .main_process
            .as_ref()
            .map_or("-".to_owned(), |p| format!("{}/{}", p.pid, p.comm.escape_debug()));
        let owner = if !ns.pod.is_empty() {
            format!("{}/{}", ns.pod_namespace, ns.pod)
        } else {
            dash(&ns.container_id).chars().take(12).collect()
        };
        lines.push([
            ns.netns.to_string(),
            ns.state.clone(),
            short_duration(ns.age_seconds),
            dash(&ns.names.join(",")).escape_debug().to_string(),
            process,
            owner,
            format!("{:.1}", r.lookups_per_s),
            format!("{:.1}", r.failures_per_s),
        ]);
    }
    let widths: Vec<usize> =
        (0..8).map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// One journal line.
pub fn event_line(e: &Entry) -> String {
    let who = format!("pid {} ({})", e.pid, e.comm.escape_debug());
    let detail = match e.kind.as_str() {
        "netns_created" => {
            let mut d = format!("netns {} created by {who}", e.netns.unwrap_or(0));
            if let Some(ms) = e.setup_ms {
                let _ = write!(d, " in {ms:.1} ms");
            }
            if let Some(c) = &e.container_id {
                let _ = write!(d, ", container {}", c.chars().take(12).collect::<String>());
            }
            if let Some(p) = &e.pod {
                let _ = write!(d, ", pod {p}");
            }
            d
        }
        "netns_destroyed" => {
            let age = e.age_seconds.map(|a| format!(" after {}", short_duration(a))).unwrap_or_default();
            format!("netns {} destroyed{age}", e.netns.unwrap_or(0))
        }
        "netns_setup_failed" => format!("netns creation by {who} failed: errno {}", -e.error.unwrap_or(0)),
        "device_moved" => format!(
            "device {} (ifindex {}) moved from netns {} to netns {} by {who}",
            e.device.as_deref().unwrap_or("?").escape_debug(),
            e.ifindex.unwrap_or(0),
            e.from_netns.unwrap_or(0),
            e.to_netns.unwrap_or(0)
        ),
        "device_move_failed" => format!(
            "device {} (ifindex {}) failed to leave netns {} ({who}, error {})",
            e.device.as_deref().unwrap_or("?").escape_debug(),
            e.ifindex.unwrap_or(0),
            e.from_netns.unwrap_or(0),
            e.error.unwrap_or(0)
        ),
        other => format!("{other} {who}"),
    };
    format!("{}  {detail}", e.time)
}

/// `show`: everything about one namespace, then its journal.
pub fn describe(ns: &NamespaceView, journal: &[Entry]) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<14}{value}");
    };
    field("netns", format!("{} (cookie {})", ns.netns, ns.cookie));
    field("state", ns.state.clone());
    field("names", dash(&ns.names.join(", ")).escape_debug().to_string());
    let created = ns
        .created
        .as_ref()
        .map(|c| format!(", created {c}"))
        .unwrap_or_else(|| ", created before the agent started".into());
    field("age", format!("{}{created}", short_duration(ns.age_seconds)));
    field(
        "creator",
        ns.creator.as_ref().map_or("-".into(), |c| {
            let container = if c.container_id.is_empty() {
                String::new()
            } else {
                format!(", container {}", c.container_id)
            };
            format!("pid {} ({}), setup {:.1} ms{container}", c.pid, c.comm.escape_debug(), c.setup_ms)
        }),
    );
    field(
        "main process",
        ns.main_process.as_ref().map_or("-".into(), |p| format!("pid {} ({})", p.pid, p.comm.escape_debug())),
    );
    field("processes", ns.processes.to_string());
    field("container", dash(&ns.container_id).to_owned());
    field("pod", if ns.pod.is_empty() { "-".into() } else { format!("{}/{}", ns.pod_namespace, ns.pod) });
    field(
        "devices",
        format!(
            "moved in {}, out {}, failed {}",
            ns.devices_moved_in, ns.devices_moved_out, ns.device_move_failures
        ),
    );
    field("route lookups", format!("{} ({} failed)", ns.route_lookups, ns.route_failures));
    field(
        "held by",
        if ns.holders.is_empty() {
            "-".into()
        } else {
            ns.holders
                .iter()
                .map(|h| format!("pid {} ({}) {} {}", h.pid, h.comm.escape_debug(), h.kind, h.fd))
                .collect::<Vec<_>>()
                .join("; ")
        },
    );
    let _ = writeln!(out, "\njournal:");
    if journal.is_empty() {
        let _ = writeln!(out, "  (nothing recorded since the agent started)");
    }
    for e in journal {
        let _ = writeln!(out, "  {}", event_line(e));
    }
    out
}

/// Finds the namespace a `show` argument names: an inode number, a pid, or a name.
pub fn find(client: &Client, what: &str) -> Result<NamespaceView, ClientError> {
    const FIRST_NS_INODE: u64 = 0xF000_0000;
    let found = match what.parse::<u64>() {
        Ok(n) if n >= FIRST_NS_INODE => client.namespaces()?.into_iter().find(|ns| u64::from(ns.netns) == n),
        Ok(pid) => match client.namespace_of_pid(pid as i32) {
            Ok(found) => found.into_iter().next(),
            Err(ClientError::Bad { .. }) => None, // no such process
            Err(err) => return Err(err),
        },
        Err(_) => client.namespaces()?.into_iter().find(|ns| ns.names.iter().any(|n| n == what)),
    };
    found.ok_or_else(|| ClientError::NotFound(what.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(short_duration(5.23), "5.2s");
        assert_eq!(short_duration(312.0), "5m12s");
        assert_eq!(short_duration(7380.0), "2h3m");
        assert_eq!(short_duration(90000.0), "1d1h");
    }

    #[test]
    fn rates_come_from_two_samples_matched_by_cookie() {
        let old = NamespaceView { cookie: 7, route_lookups: 100, route_failures: 10, ..Default::default() };
        let new = NamespaceView { cookie: 7, route_lookups: 300, route_failures: 30, ..Default::default() };
        let fresh = NamespaceView { cookie: 8, route_lookups: 50, ..Default::default() };
        let now = [new, fresh];
        let rows = rows(&now, &[old], 2.0);
        assert_eq!((rows[0].lookups_per_s, rows[0].failures_per_s), (100.0, 10.0));
        assert_eq!(rows[1].lookups_per_s, 0.0, "no earlier sample: no rate");
        let text = table(&rows);
        assert!(text.starts_with("NETNS"), "{text}");
        assert_eq!(text.lines().count(), 3);
    }
}
