//! The on-call commands' text output: the `ls` table with rates, and `show`.

use std::fmt::Write as _;

use crate::model::{
    journal::{Entry, short_duration},
    view::NamespaceView,
};

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

/// A row of `ls`: the namespace and its rates over the sampling interval (`None` when no
/// rate was measured: a single sample, or a namespace new since the first one).
pub struct Row<'a> {
    pub ns: &'a NamespaceView,
    pub lookups_per_s: Option<f64>,
    pub failures_per_s: Option<f64>,
}

/// Rates between two samples of the namespaces, matched by cookie; `seconds` is `None` for
/// a single sample.
pub fn rows<'a>(now: &'a [NamespaceView], before: &[NamespaceView], seconds: Option<f64>) -> Vec<Row<'a>> {
    now.iter()
        .map(|ns| {
            let prev = before.iter().find(|b| b.cookie == ns.cookie);
            let rate = |cur: u64, old: Option<u64>| match (old, seconds) {
                (Some(old), Some(s)) if s > 0.0 => Some(cur.saturating_sub(old) as f64 / s),
                _ => None,
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
        SortKey::Lookups => {
            rows.sort_by(|a, b| rate_key(b.lookups_per_s).total_cmp(&rate_key(a.lookups_per_s)))
        }
        SortKey::Failures => {
            rows.sort_by(|a, b| rate_key(b.failures_per_s).total_cmp(&rate_key(a.failures_per_s)))
        }
    }
}

/// Unmeasured rates sort last.
fn rate_key(rate: Option<f64>) -> f64 {
    rate.unwrap_or(-1.0)
}

fn rate(rate: Option<f64>) -> String {
    rate.map_or("-".to_owned(), |r| format!("{r:.1}"))
}

/// The `ls` table, aligned like `ps` (no borders); `wide` adds the cookie, the creator,
/// device moves and holders.
pub fn table(rows: &[Row<'_>], wide: bool) -> String {
    let mut header =
        vec!["NETNS", "STATE", "AGE", "NAME", "PROCESS", "CONTAINER/POD", "LOOKUPS/S", "FAILURES/S"];
    if wide {
        header.extend(["COOKIE", "CREATOR", "MOVED IN/OUT", "HELD BY"]);
    }
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING).set_header(header);
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
        let mut cells = vec![
            ns.netns.to_string(),
            ns.state.clone(),
            short_duration(ns.age_seconds),
            dash(&ns.names.join(",")).escape_debug().to_string(),
            process,
            owner,
            rate(r.lookups_per_s),
            rate(r.failures_per_s),
        ];
        if wide {
            cells.push(ns.cookie.to_string());
            cells.push(
                ns.creator.as_ref().map_or("-".into(), |c| format!("{}/{}", c.pid, c.comm.escape_debug())),
            );
            cells.push(format!("{}/{}", ns.devices_moved_in, ns.devices_moved_out));
            cells.push(if ns.holders.is_empty() {
                if ns.holders_unchecked_processes > 0 { "unknown".into() } else { "-".into() }
            } else {
                ns.holders
                    .iter()
                    .map(|h| format!("{}/{}", h.pid, h.comm.escape_debug()))
                    .collect::<Vec<_>>()
                    .join(",")
            });
        }
        table.add_row(cells);
    }
    // The preset pads every cell with a space on each side: trim the margins.
    let mut out = String::new();
    for line in table.lines() {
        let _ = writeln!(out, "{}", line.trim());
    }
    out
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
    field("held by", {
        let found = ns
            .holders
            .iter()
            .map(|h| {
                let container = if h.container_id.is_empty() {
                    String::new()
                } else {
                    format!(", container {}", h.container_id)
                };
                format!("pid {} ({}) {} {}{container}", h.pid, h.comm.escape_debug(), h.kind, h.fd)
            })
            .collect::<Vec<_>>()
            .join("; ");
        let unchecked = ns.holders_unchecked_processes;
        match (found.is_empty(), unchecked) {
            (true, 0) => "-".into(),
            (false, 0) => found,
            (true, n) => format!("unknown: {n} processes could not be checked (see `netns-agent check`)"),
            (false, n) => format!("{found}; maybe more: {n} processes could not be checked"),
        }
    });
    if let Some(last) = &ns.last_known {
        // A leaked namespace's own labels are empty: say what it was.
        let mut was = Vec::new();
        if !last.names.is_empty() {
            was.push(format!("names {}", last.names.join(", ").escape_debug()));
        }
        if let Some(p) = &last.main_process {
            was.push(format!("pid {} ({})", p.pid, p.comm.escape_debug()));
        }
        if !last.container_id.is_empty() {
            was.push(format!("container {}", last.container_id));
        }
        if !last.pod.is_empty() {
            was.push(format!("pod {}/{}", last.pod_namespace, last.pod));
        }
        if !was.is_empty() {
            field("last known", was.join(", "));
        }
    }
    let _ = writeln!(out, "\njournal:");
    if journal.is_empty() {
        let _ = writeln!(out, "  (nothing recorded since the agent started)");
    }
    for e in journal {
        let _ = writeln!(out, "  {}", e.line());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_two_samples_matched_by_cookie() {
        let old = NamespaceView { cookie: 7, route_lookups: 100, route_failures: 10, ..Default::default() };
        let new = NamespaceView { cookie: 7, route_lookups: 300, route_failures: 30, ..Default::default() };
        let fresh = NamespaceView { cookie: 8, route_lookups: 50, ..Default::default() };
        let now = [new, fresh];
        let rows_now = rows(&now, std::slice::from_ref(&old), Some(2.0));
        assert_eq!((rows_now[0].lookups_per_s, rows_now[0].failures_per_s), (Some(100.0), Some(10.0)));
        assert_eq!(rows_now[1].lookups_per_s, None, "no earlier sample: no rate");
        let text = table(&rows_now, false);
        assert!(text.starts_with("NETNS"), "{text}");
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().nth(2).unwrap().trim_end().ends_with("-  -") || text.contains(" - "), "{text}");
        let single = rows(&now, &now, None);
        assert!(single.iter().all(|r| r.lookups_per_s.is_none()), "--interval 0 measures no rate");
        let wide = table(&single, true);
        assert!(wide.lines().next().unwrap().contains("COOKIE"), "{wide}");
    }
}
