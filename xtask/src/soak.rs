//! `cargo xtask soak`: the churn test (`tests/churn.rs`) at full size, 100,000 namespace
//! creations and destructions by 16 concurrent creators with device moves and traffic mixed
//! in, and its figures written to their own section of `BENCHMARKS.md` (replaced on each run,
//! the rest of the file kept). The test's checks hold here too: a failed check fails the
//! command, after its figures are written.

use std::{fmt::Write as _, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    setup,
    util::{cargo, is_root, step, workspace_root},
};

#[derive(clap::Args)]
pub struct SoakArgs {
    /// Namespaces to create and destroy.
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Where to write the report (its soak section).
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
}

/// The soak section of BENCHMARKS.md lies between these; `cargo xtask bench` keeps it.
pub const BEGIN: &str = "<!-- soak: written by cargo xtask soak -->";
pub const END: &str = "<!-- end of soak -->";

pub fn run(args: SoakArgs) -> Result<()> {
    if !is_root() {
        bail!("cargo xtask soak creates namespaces and loads eBPF programs: run it as root");
    }
    setup::build_tools()?;
    setup::apt(&["iproute2"])?;
    step("building the agent (release)");
    cargo(&["build", "--release", "-p", "netns-agent"])?;
    let root = workspace_root();
    let report = root.join("target/soak-report.json");
    let _ = std::fs::remove_file(&report);
    step(&format!("churn: {} namespaces, 16 creators", args.count));
    let status = Command::new(env!("CARGO"))
        .args(["test", "-p", "netns-agent-e2e", "--test", "churn", "--", "--test-threads=1", "--nocapture"])
        .env("NETNS_AGENT_BIN", root.join("target/release/netns-agent"))
        .env("NETNS_AGENT_TEST_MODE", "tracepoint")
        .env("NETNS_AGENT_CHURN_COUNT", args.count.to_string())
        .env("NETNS_AGENT_CHURN_REPORT", &report)
        .current_dir(&root)
        .status()
        .context("running the churn test")?;
    let text = std::fs::read_to_string(&report)
        .with_context(|| format!("the churn test ({status}) wrote no figures to {}", report.display()))?;
    let figures: Value = serde_json::from_str(&text).context("the churn figures are not JSON")?;
    let section = render(&figures, args.count, status.success());
    print!("{section}");
    let out = if args.out.is_absolute() { args.out.clone() } else { root.join(&args.out) };
    let previous = std::fs::read_to_string(&out).unwrap_or_default();
    std::fs::write(&out, replace_section(&previous, &section))
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("\nwritten to {}", out.display());
    if !status.success() {
        bail!("the churn test failed its checks ({status}): see its output above");
    }
    Ok(())
}

/// `previous` with its soak section replaced by `section` (appended if it has none).
pub fn replace_section(previous: &str, section: &str) -> String {
    let block = format!("{BEGIN}\n{section}{END}\n");
    match (previous.find(BEGIN), previous.find(END)) {
        (Some(begin), Some(end)) if end > begin => {
            format!("{}{block}{}", &previous[..begin], previous[end + END.len()..].trim_start_matches('\n'))
        }
        _ if previous.is_empty() => block,
        _ => format!("{}\n\n{block}", previous.trim_end()),
    }
}

fn render(f: &Value, count: usize, passed: bool) -> String {
    let num = |key: &str| f[key].as_f64().unwrap_or(f64::NAN);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mut s = String::new();
    let _ = writeln!(s, "## Soak: namespace churn\n");
    let _ = writeln!(
        s,
        "Produced by `sudo cargo xtask soak --count {count}` ({cores} cores, Linux {kernel}, tracepoint mode); \
         every figure below is from that run of `tests/churn.rs`, whose checks it {}.\n",
        if passed { "passed" } else { "**FAILED**" }
    );
    let created = f["created"].as_object().map(|m| {
        m.iter().map(|(k, v)| format!("{k} {}", v.as_u64().unwrap_or(0))).collect::<Vec<_>>().join(", ")
    });
    let _ = writeln!(s, "| figure | value |\n|---|---:|");
    let rows = [
        ("namespaces created and destroyed", format!("{count}")),
        ("concurrent creators", format!("{}", f["creators"])),
        ("by path (each under its own comm, counted exactly)", created.unwrap_or_default()),
        ("device moves (host side into P, P to Q; exact in both)", format!("{}", f["moves"])),
        ("route hits counted in P (exact)", format!("{:.0}", num("route_hits_in_p"))),
        (
            "churn duration",
            format!(
                "{:.1} s ({:.0} namespaces/s)",
                num("churn_seconds"),
                count as f64 / num("churn_seconds")
            ),
        ),
        ("events lost", format!("{:.0}", num("events_lost"))),
        ("`netns_destroyed_total` rise (host-wide)", format!("{:.0}", num("destroyed_delta"))),
        (
            "agent RSS first / last / max",
            format!(
                "{:.1} / {:.1} / {:.1} MiB",
                num("rss_kib_first") / 1024.0,
                num("rss_kib_last") / 1024.0,
                num("rss_kib_max") / 1024.0
            ),
        ),
        (
            "RSS at each tenth of the run (MiB)",
            f["rss_kib_by_tenth"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .map(|k| format!("{:.1}", k.as_f64().unwrap_or(0.0) / 1024.0))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
        ),
        (
            "RSS slope after the first 20% (least squares)",
            format!(
                "{:.1} KiB per 1,000 namespaces (bound {:.0})",
                num("rss_slope_kib_per_1000"),
                num("rss_slope_bound_kib_per_1000")
            ),
        ),
        ("tracking cap (`limits.tracked_namespaces`)", format!("{:.0}", num("cap"))),
        (
            "most `netns` label values in one scrape",
            format!("{:.0} (cap + overflow + unknown at most)", num("max_netns_values")),
        ),
        ("most series in one scrape", format!("{:.0}", num("max_series"))),
        (
            "`/metrics` during churn p50 / p99 / max",
            format!(
                "{:.1} / {:.1} / {:.1} ms ({} scrapes)",
                num("scrape_ms_p50"),
                num("scrape_ms_p99"),
                num("scrape_ms_max"),
                f["scrapes"]
            ),
        ),
    ];
    for (what, value) in rows {
        let _ = writeln!(s, "| {what} | {value} |");
    }
    let _ = writeln!(
        s,
        "\nThe `/metrics` times are the whole GET as a client sees it (connect, render, body read), scraped \
         every 100 ms while the creators run.\n"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soak_section_is_replaced_and_the_rest_kept() {
        let first = replace_section("# Benchmarks\n\nbody\n", "one\n");
        assert_eq!(first, format!("# Benchmarks\n\nbody\n\n{BEGIN}\none\n{END}\n"));
        let again = replace_section(&format!("{first}\nafter\n"), "two\n");
        assert_eq!(again, format!("# Benchmarks\n\nbody\n\n{BEGIN}\ntwo\n{END}\nafter\n"));
        assert_eq!(replace_section("", "x\n"), format!("{BEGIN}\nx\n{END}\n"));
    }
}
