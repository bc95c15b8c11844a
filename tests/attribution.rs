//! Who owns a namespace, end to end: names, processes, containers, pods; hostile labels;
//! series that leave; bounded memory under churn.

use std::time::Duration;

use anyhow::{Result, ensure};
use netns_agent_e2e::{
    Agent, ChildProcess, HostileProcess, Metrics, NamedNetns, clone_newnet, promtool_check, rss_kib,
    slowdown, wait_for,
};

/// Fast rescans and a short grace period, so tests need not wait.
const FAST: &str = "attribution_interval_seconds = 1\nseries_grace_seconds = 2\n";

/// The labels of the `netns_info` series of a namespace.
fn info(m: &Metrics, netns: u64) -> Option<std::collections::BTreeMap<String, String>> {
    m.series("netns_info").into_iter().find(|l| l["netns"] == netns.to_string())
}

/// Waits until the namespace's info satisfies `check`.
fn wait_info(
    agent: &Agent,
    netns: u64,
    what: &str,
    check: impl Fn(&std::collections::BTreeMap<String, String>, &Metrics) -> bool,
) -> Result<std::collections::BTreeMap<String, String>> {
    wait_for(what, Duration::from_secs(10), || {
        let m = agent.scrape()?;
        Ok(info(&m, netns).filter(|l| check(l, &m)))
    })
}

fn processes(m: &Metrics, netns: u64) -> f64 {
    m.get("netns_processes", &[("netns", &netns.to_string())])
}

#[test]
fn a_named_namespace_shows_its_name() -> Result<()> {
    let agent = Agent::start_with_config(FAST)?;
    let ns = NamedNetns::add("named")?;
    let inode = ns.inode()?;
    let labels = wait_info(&agent, inode, "the name", |l, _| l["name"] == ns.name)?;
    ensure!(labels["pid"].is_empty() && labels["comm"].is_empty(), "no process in it: {labels:?}");
    ensure!(processes(&agent.scrape()?, inode) == 0.0);
    Ok(())
}

#[test]
fn an_unshared_process_shows_its_pid_and_comm() -> Result<()> {
    let agent = Agent::start_with_config(FAST)?;
    let child = ChildProcess::spawn("unshare", &["-n", "sleep", "120"])?;
    let pid = child.pid();
    let inode = wait_for("the child's namespace", Duration::from_secs(5), || {
        use std::os::unix::fs::MetadataExt as _;
        let mine = std::fs::metadata("/proc/self/ns/net")?.ino();
        let ino = std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino();
        Ok((ino != mine).then_some(ino))
    })?;
    let labels = wait_info(&agent, inode, "pid and comm of the process", |l, m| {
        l["pid"] == pid.to_string() && l["comm"] == "sleep" && processes(m, inode) == 1.0
    })?;
    ensure!(labels["name"].is_empty(), "{labels:?}");
    Ok(())
}

#[test]
fn process_count_and_main_process_of_a_named_namespace() -> Result<()> {
    let agent = Agent::start_with_config(FAST)?;
    let ns = NamedNetns::add("procs")?;
    let inode = ns.inode()?;
    let first = ChildProcess::spawn("ip", &["netns", "exec", &ns.name, "sleep", "120"])?;
    std::thread::sleep(Duration::from_millis(50) * slowdown());
    let _others = [
        ChildProcess::spawn("ip", &["netns", "exec", &ns.name, "sleep", "121"])?,
        ChildProcess::spawn("ip", &["netns", "exec", &ns.name, "sleep", "122"])?,
    ];
    // The oldest process is the main one.
    let labels = wait_info(&agent, inode, "3 processes, the oldest first", |l, m| {
        processes(m, inode) == 3.0 && l["pid"] == first.pid().to_string()
    })?;
    ensure!(labels["comm"] == "sleep" && labels["name"] == ns.name, "{labels:?}");
    Ok(())
}

#[test]
fn a_cni_cache_entry_names_the_pod() -> Result<()> {
    let ns = NamedNetns::add("pod")?;
    let dir = std::env::temp_dir().join(format!("netns-agent-cni-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sandbox = "9a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5";
    std::fs::write(
        dir.join(format!("cbr0-{sandbox}-eth0")),
        format!(
            r#"{{"kind":"cniCacheV1","containerId":"{sandbox}","config":"e30=","ifName":"eth0",
"networkName":"cbr0","netns":"/run/netns/{}","cniArgs":[["IgnoreUnknown","1"],
["K8S_POD_NAMESPACE","shop"],["K8S_POD_NAME","cart-7d9f"],["K8S_POD_INFRA_CONTAINER_ID","{sandbox}"]],"result":{{}}}}"#,
            ns.name
        ),
    )?;
    let agent = Agent::start_with_config(&format!("{FAST}cni_cache_dir = \"{}\"\n", dir.display()))?;
    let _proc = ChildProcess::spawn("ip", &["netns", "exec", &ns.name, "sleep", "120"])?;
    let inode = ns.inode()?;
    let labels = wait_info(&agent, inode, "the pod labels", |l, m| {
        l["pod"] == "cart-7d9f" && processes(m, inode) == 1.0
    })?;
    ensure!(labels["pod_namespace"] == "shop", "{labels:?}");
    // The process is in no container cgroup here, so the id comes from the CNI cache.
    ensure!(labels["container_id"] == sandbox, "{labels:?}");
    ensure!(labels["comm"] == "sleep", "{labels:?}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn a_hostile_process_name_keeps_the_exposition_valid() -> Result<()> {
    let agent = Agent::start_with_config(FAST)?;
    let hostile = HostileProcess::spawn(b"x\"y\\z\n}\xff{ #")?;
    let inode = hostile.netns()?;
    let labels = wait_info(&agent, inode, "the hostile comm", |l, _| !l["comm"].is_empty())?;
    // Faithful: the bytes come back, the invalid one as \xff.
    ensure!(labels["comm"] == "x\"y\\z\n}\\xff{ #", "{:?}", labels["comm"]);
    let text = agent.get("/metrics")?;
    let problems = promtool_check(&text)?;
    ensure!(problems.is_empty(), "promtool: {problems}");
    Ok(())
}

#[test]
fn a_destroyed_namespace_leaves_the_exposition_after_the_grace_period() -> Result<()> {
    let agent = Agent::start_with_config(FAST)?;
    let ns = NamedNetns::add("leave")?;
    let inode = ns.inode()?;
    wait_info(&agent, inode, "the namespace", |_, _| true)?;
    ns.delete()?;
    // Still there just after teardown (grace 2 s), gone after.
    wait_for("the info series to leave", Duration::from_secs(20), || {
        Ok(info(&agent.scrape()?, inode).is_none().then_some(()))
    })
}

#[test]
fn namespaces_past_the_cap_fold_into_overflow() -> Result<()> {
    let baseline = netns_agent_e2e::visible_namespaces().len();
    let agent =
        Agent::start_with_config(&format!("{FAST}[limits]\ntracked_namespaces = {}\n", baseline + 2))?;
    let named: Vec<NamedNetns> = (0..5).map(|_| NamedNetns::add("cap")).collect::<Result<_>>()?;
    let m = wait_for("3 namespaces dropped", Duration::from_secs(10), || {
        let m = agent.scrape()?;
        Ok((m.get("netns_agent_namespaces_dropped_total", &[]) == 3.0).then_some(m))
    })?;
    ensure!(
        m.series("netns_info").len() == baseline + 2,
        "info series capped: {}",
        m.series("netns_info").len()
    );
    // Lookups in a dropped namespace count under netns="overflow".
    let last = named.last().unwrap();
    netns_agent_e2e::run("ip", &["-n", &last.name, "link", "set", "lo", "up"])?;
    netns_agent_e2e::run("ip", &["-n", &last.name, "route", "get", "127.0.0.1"])?;
    let m = agent.scrape()?;
    ensure!(
        m.series("netns_route_lookups_total").iter().any(|l| l["netns"] == "overflow"),
        "no overflow series"
    );
    Ok(())
}

#[test]
fn churn_of_short_lived_namespaces_leaves_exposition_and_memory_where_they_started() -> Result<()> {
    // A small journal, full after the warm-up, so that what remains is any real growth.
    let agent = Agent::start_with_config(&format!("{FAST}journal_max_events = 200\n"))?;
    // Under emulation (the VM matrix) a smaller burst keeps the suite inside its budget.
    let burst = if slowdown() > 1 { 300 } else { 2000 };
    let lines = |agent: &Agent| -> Result<usize> {
        Ok(agent.get("/metrics")?.lines().filter(|l| !l.starts_with('#')).count())
    };
    let churn = |agent: &Agent| -> Result<()> {
        let destroyed = agent.scrape()?.get("netns_destroyed_total", &[]);
        for _ in 0..burst {
            clone_newnet(false)?;
        }
        wait_for("every teardown", Duration::from_secs(60), || {
            Ok((agent.scrape()?.get("netns_destroyed_total", &[]) >= destroyed + burst as f64).then_some(()))
        })?;
        // Grace is 2 s: afterwards only the namespaces that were there before remain.
        std::thread::sleep(Duration::from_secs(4));
        Ok(())
    };
    let before = lines(&agent)?;
    churn(&agent)?; // warm-up: allocator pools and maps reach their working size
    let rss_warm = rss_kib(agent.pid())?;
    churn(&agent)?;
    let after = lines(&agent)?;
    let rss_after = rss_kib(agent.pid())?;
    // The churning thread's comm adds one netns_created_total series; nothing else stays.
    ensure!(after <= before + 1, "exposition grew from {before} to {after} lines");
    ensure!(
        rss_after <= rss_warm + 2048,
        "RSS grew from {rss_warm} KiB to {rss_after} KiB over {burst} namespaces"
    );
    ensure!(agent.scrape()?.get("netns_agent_events_lost_total", &[]) == 0.0);
    Ok(())
}
