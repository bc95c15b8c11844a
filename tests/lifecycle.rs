//! Namespace lifecycle, end to end: the real agent, real namespaces, exact counts.
//! Run as root, one test at a time (they share the kernel).

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Result, ensure};
use netns_agent_e2e::{Agent, Metrics, NamedNetns, clone_newnet, mode, run, thread_comm, wait_for};

const TEARDOWN: Duration = Duration::from_secs(20);

fn created_by(m: &Metrics) -> BTreeMap<String, f64> {
    m.series("netns_created_total")
        .into_iter()
        .map(|labels| {
            let comm = labels["comm"].clone();
            let value = m.get("netns_created_total", &[("comm", &comm)]);
            (comm, value)
        })
        .collect()
}

fn delta(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>, comm: &str) -> f64 {
    after.get(comm).copied().unwrap_or(0.0) - before.get(comm).copied().unwrap_or(0.0)
}

/// Waits until teardowns reach `destroyed` and returns the scrape.
fn wait_destroyed(agent: &Agent, destroyed: f64) -> Result<Metrics> {
    wait_for("teardowns to be counted", TEARDOWN, || {
        let m = agent.scrape()?;
        Ok((m.get("netns_destroyed_total", &[]) >= destroyed).then_some(m))
    })
}

#[test]
fn forced_mode_is_the_one_attached() -> Result<()> {
    let agent = Agent::start()?;
    let m = agent.scrape()?;
    for probe in ["netns_create", "netns_destroy", "device_move", "route_lookup_ipv4", "route_lookup_ipv6"] {
        for other in ["fentry", "kprobe", "tracepoint"] {
            let want = if other == mode() { 1.0 } else { 0.0 };
            let got = m.get("netns_agent_probe_attached", &[("probe", probe), ("mode", other)]);
            ensure!(got == want, "{probe}/{other}: attached={got}, want {want}\n{}", agent.log_text());
        }
    }
    ensure!(
        m.get("netns_agent_info", &[("version", env!("CARGO_PKG_VERSION")), ("kernel", &kernel_release())])
            == 1.0
    );
    Ok(())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned()
}

#[test]
fn every_creation_path_counts_once_and_teardowns_match() -> Result<()> {
    let agent = Agent::start()?;
    let before = agent.scrape()?;
    let by_comm_before = created_by(&before);

    let named: Vec<NamedNetns> = (0..5).map(|_| NamedNetns::add("lc")).collect::<Result<_>>()?;
    for _ in 0..3 {
        run("unshare", &["-n", "true"])?;
    }
    clone_newnet(false)?;
    clone_newnet(false)?;
    clone_newnet(true)?;
    clone_newnet(true)?;
    // Copies of a namespace without CLONE_NEWNET must not count.
    run("unshare", &["-m", "true"])?;
    run("unshare", &["-u", "true"])?;

    let after = wait_for("12 creations", Duration::from_secs(10), || {
        let m = agent.scrape()?;
        Ok((m.sum("netns_created_total") - before.sum("netns_created_total") >= 12.0).then_some(m))
    })?;
    let by_comm = created_by(&after);
    let me = thread_comm();
    ensure!(delta(&by_comm, &by_comm_before, "ip") == 5.0, "ip: {by_comm:?} vs {by_comm_before:?}");
    ensure!(delta(&by_comm, &by_comm_before, "unshare") == 3.0, "unshare: {by_comm:?}");
    ensure!(delta(&by_comm, &by_comm_before, &me) == 4.0, "{me}: {by_comm:?}");
    ensure!(after.sum("netns_created_total") - before.sum("netns_created_total") == 12.0, "total created");
    ensure!(after.get("netns_setup_failures_total", &[]) == before.get("netns_setup_failures_total", &[]));
    // The 3 unshare and 4 clone namespaces died with their processes; the 5 named live on.
    let alive0 = before.get("netns_alive", &[]);
    let mid = wait_destroyed(&agent, before.get("netns_destroyed_total", &[]) + 7.0)?;
    ensure!(
        mid.get("netns_alive", &[]) == alive0 + 5.0,
        "alive {} vs {alive0} + 5",
        mid.get("netns_alive", &[])
    );

    for ns in named {
        ns.delete()?;
    }
    let end = wait_destroyed(&agent, before.get("netns_destroyed_total", &[]) + 12.0)?;
    ensure!(end.get("netns_destroyed_total", &[]) - before.get("netns_destroyed_total", &[]) == 12.0);
    ensure!(end.get("netns_alive", &[]) == alive0, "alive back to {alive0}: {}", end.get("netns_alive", &[]));
    ensure!(end.get("netns_agent_events_lost_total", &[]) == 0.0);
    Ok(())
}

#[test]
fn setup_durations_are_observed_for_every_creation() -> Result<()> {
    let agent = Agent::start()?;
    let before = agent.scrape()?;
    let named: Vec<NamedNetns> = (0..4).map(|_| NamedNetns::add("hist")).collect::<Result<_>>()?;
    let after = agent.scrape()?;
    let count = |m: &Metrics| m.get("netns_setup_duration_seconds_count", &[]);
    let sum = |m: &Metrics| m.get("netns_setup_duration_seconds_sum", &[]);
    let inf = |m: &Metrics| m.get("netns_setup_duration_seconds_bucket", &[("le", "+Inf")]);
    ensure!(count(&after) - count(&before) == 4.0, "count {} -> {}", count(&before), count(&after));
    ensure!(inf(&after) == count(&after), "+Inf bucket equals count");
    let added = sum(&after) - sum(&before);
    // A namespace takes between a microsecond and (under emulation) a few seconds to set up.
    ensure!(added > 4e-6 && added < 40.0, "sum of 4 setup times: {added}");
    drop(named);
    Ok(())
}

#[test]
fn failed_creations_are_counted_not_created() -> Result<()> {
    let agent = Agent::start()?;
    let before = agent.scrape()?;
    let attempts = netns_agent_e2e::failing_creations(3, 2)?;
    let after = agent.scrape()?;
    let failures =
        after.get("netns_setup_failures_total", &[]) - before.get("netns_setup_failures_total", &[]);
    ensure!(failures == attempts as f64, "failures: {failures}, attempts: {attempts}");
    ensure!(after.sum("netns_created_total") == before.sum("netns_created_total"), "no creation counted");
    ensure!(after.get("netns_alive", &[]) == before.get("netns_alive", &[]));
    Ok(())
}

#[test]
fn reused_inode_numbers_do_not_confuse_the_alive_set() -> Result<()> {
    // Short-lived namespaces recycle inode numbers within seconds; keyed by inode, a new
    // namespace would collide with the dying one it replaces and the counts would drift.
    let agent = Agent::start()?;
    let before = agent.scrape()?;
    let n = 30;
    for _ in 0..n {
        run("unshare", &["-n", "true"])?;
    }
    let after = wait_destroyed(&agent, before.get("netns_destroyed_total", &[]) + n as f64)?;
    let created = after.sum("netns_created_total") - before.sum("netns_created_total");
    let destroyed = after.get("netns_destroyed_total", &[]) - before.get("netns_destroyed_total", &[]);
    ensure!(created == n as f64 && destroyed == n as f64, "created {created}, destroyed {destroyed}");
    ensure!(after.get("netns_alive", &[]) == before.get("netns_alive", &[]), "alive drifted");
    ensure!(after.get("netns_agent_untracked_namespaces_total", &[]) == 0.0);
    Ok(())
}

#[test]
fn namespaces_from_before_start_are_seeded_and_their_teardown_counted() -> Result<()> {
    let first = Agent::start()?;
    let alive0 = first.scrape()?.get("netns_alive", &[]);
    first.stop()?;

    let named: Vec<NamedNetns> = (0..3).map(|_| NamedNetns::add("seed")).collect::<Result<_>>()?;
    let agent = Agent::start()?;
    let m = agent.scrape()?;
    ensure!(m.get("netns_alive", &[]) == alive0 + 3.0, "alive {} vs {alive0} + 3", m.get("netns_alive", &[]));
    ensure!(m.sum("netns_created_total") == 0.0, "seeded namespaces are not creations");

    let destroyed0 = m.get("netns_destroyed_total", &[]);
    for ns in named {
        ns.delete()?;
    }
    let end = wait_destroyed(&agent, destroyed0 + 3.0)?;
    ensure!(end.get("netns_destroyed_total", &[]) == destroyed0 + 3.0);
    ensure!(end.get("netns_alive", &[]) == alive0);
    Ok(())
}

#[test]
fn alive_matches_the_namespaces_user_space_can_see() -> Result<()> {
    // Ground truth from /proc and mountinfo; on a test machine no namespace is held by a
    // socket alone, so the kernel's count and the visible set agree.
    let _named: Vec<NamedNetns> = (0..2).map(|_| NamedNetns::add("vis")).collect::<Result<_>>()?;
    let agent = Agent::start()?;
    let visible = netns_agent_e2e::visible_namespaces().len() as f64;
    let alive = agent.scrape()?.get("netns_alive", &[]);
    ensure!(alive == visible, "netns_alive {alive}, visible from /proc and mounts {visible}");
    Ok(())
}

#[test]
fn sigterm_stops_cleanly_and_detaches_every_program() -> Result<()> {
    let before = loaded_agent_programs()?;
    let agent = Agent::start()?;
    ensure!(loaded_agent_programs()? > before, "programs loaded while running");
    let (status, log) = agent.stop()?;
    ensure!(status.success(), "exit status {status}: {log}");
    ensure!(log.contains("all probes detached"), "{log}");
    ensure!(loaded_agent_programs()? == before, "programs left loaded after exit");
    Ok(())
}

/// Programs loaded in the kernel whose names are the agent's (bpftool shows 15 characters).
fn loaded_agent_programs() -> Result<usize> {
    let out = run("bpftool", &["prog", "show"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().filter(|l| l.contains("name lifecycle_") || l.contains("name inventory_")).count())
}
