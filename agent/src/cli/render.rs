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
        let rows = rows(&now, &[old], 2.0);
        assert_eq!((rows[0].lookups_per_s, rows[0].failures_per_s), (100.0, 10.0));
        assert_eq!(rows[1].lookups_per_s, 0.0, "no earlier sample: no rate");
        let text = table(&rows);
        assert!(text.starts_with("NETNS"), "{text}");
        assert_eq!(text.lines().count(), 3);
    }
}
