//! Who owns a namespace, end to end: names, processes, containers, pods; hostile labels;
//! series that leave; bounded memory under churn.

use std::time::Duration;

use anyhow::{Result, ensure};
use netns_agent_e2e::{
    Agent, ChildProcess, HostileProcess, Metrics, NamedNetns, clone_newnet_inode, promtool_check, rss_kib,
    run, set_thread_comm, slowdown, unique, unique_comm, visible_namespaces, wait_for,
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

/// `netns_processes` of a namespace; `None` when the series is absent.
fn processes(m: &Metrics, netns: u64) -> Option<f64> {
    m.get("netns_processes", &[("netns", &netns.to_string())])
}

/// The comm of a process now (empty once it is gone).
fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim_end().to_owned()
}

/// Waits until `pid` has executed `comm` (`ip netns exec` and `unshare` run as themselves
/// until they exec the command: asserting before then reads their comm).
fn wait_exec(pid: u32, comm: &str) -> Result<()> {
    wait_for(&format!("{pid} to exec {comm}"), Duration::from_secs(5), || {
        Ok((comm_of(pid) == comm).then_some(()))
    })
}

/// A process's start time, in clock ticks since boot (`/proc/PID/stat` field 22).
fn start_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    // Fields after the comm start at field 3: field 22 is the 20th of them.
    let ticks = after_comm.split_whitespace().nth(19).and_then(|t| t.parse().ok());
    ticks.ok_or_else(|| anyhow::anyhow!("no start time in /proc/{pid}/stat"))
}

#[test]
fn a_named_namespace_shows_its_name() -> Result<()> {
    let agent = Agent::start_with_config(FAST)?;
    let ns = NamedNetns::add("named")?;
    let inode = ns.inode()?;
    // `ip netns add` itself sits in the namespace until it exits: wait for the state
    // with no process, rather than reading whatever the first rescan saw.
    wait_info(&agent, inode, "the name, no process", |l, m| {
        l["name"] == ns.name
            && l["pid"].is_empty()
            && l["comm"].is_empty()
            && processes(m, inode) == Some(0.0)
    })?;
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
    wait_exec(pid, "sleep")?;
    wait_info(&agent, inode, "pid and comm of the process, no name", |l, m| {
        l["pid"] == pid.to_string()
            && l["comm"] == "sleep"
            && processes(m, inode) == Some(1.0)
            && l["name"].is_empty()
    })?;
    Ok(())
}

/// A runtime mounts a new namespace's netns file after creating it (Docker, Podman and CNI
/// all do), so the scan the creation triggers can come too early to see the file: the mount
/// itself must bring the name, not the next periodic scan.
#[test]
fn a_netns_file_mounted_after_the_scan_names_the_namespace_at_once() -> Result<()> {
    // The namespace predates the agent, so its creation triggers no scan.
    let child = ChildProcess::spawn("unshare", &["-n", "sleep", "120"])?;
    let pid = child.pid();
    let inode = wait_for("the child's namespace", Duration::from_secs(5), || {
        use std::os::unix::fs::MetadataExt as _;
        let mine = std::fs::metadata("/proc/self/ns/net")?.ino();
        let ino = std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino();
        Ok((ino != mine).then_some(ino))
    })?;
    wait_exec(pid, "sleep")?;
    // Periodic scans an hour apart: after the start-up scan, only the mount can trigger one.
    let agent = Agent::start_with_config("attribution_interval_seconds = 3600\nseries_grace_seconds = 2\n")?;
    wait_for("the agent's start-up scan (/-/ready)", Duration::from_secs(10), || {
        Ok((netns_agent_e2e::http_get_status(agent.port, "/-/ready")?.0 == 200).then_some(()))
    })?;
    wait_info(&agent, inode, "the process, and no name", |l, m| {
        l["pid"] == pid.to_string()
            && l["comm"] == "sleep"
            && l["name"].is_empty()
            && processes(m, inode) == Some(1.0)
    })?;
    let name = unique("mountedlater");
    std::fs::create_dir_all("/run/netns")?;
    std::fs::File::create(format!("/run/netns/{name}"))?;
    let _named = NamedNetns::adopt(name.clone());
    run("mount", &["--bind", &format!("/proc/{pid}/ns/net"), &format!("/run/netns/{name}")])?;
    wait_info(&agent, inode, "the name of the file mounted later", |l, _| {
        l["name"] == name && l["pid"] == pid.to_string()
    })?;
    Ok(())
}

#[test]
fn process_count_and_main_process_of_a_named_namespace() -> Result<()> {
    let agent = Agent::start_with_config(FAST)?;
    let ns = NamedNetns::add("procs")?;
    let inode = ns.inode()?;
    let first = ChildProcess::spawn("ip", &["netns", "exec", &ns.name, "sleep", "120"])?;
    // Start times are in clock ticks: the others must start in a later tick to be younger.
    let first_start = start_ticks(first.pid())?;
    wait_for("a clock tick after the first process started", Duration::from_secs(5), || {
        let probe = ChildProcess::spawn("true", &[])?;
        Ok((start_ticks(probe.pid())? > first_start).then_some(()))
    })?;
    let others = [
        ChildProcess::spawn("ip", &["netns", "exec", &ns.name, "sleep", "121"])?,
        ChildProcess::spawn("ip", &["netns", "exec", &ns.name, "sleep", "122"])?,
    ];
    for p in others.iter().chain([&first]) {
        wait_exec(p.pid(), "sleep")?;
    }
    // The oldest process is the main one.
    wait_info(&agent, inode, "3 processes, the oldest first", |l, m| {
        processes(m, inode) == Some(3.0)
            && l["pid"] == first.pid().to_string()
            && l["comm"] == "sleep"
            && l["name"] == ns.name
    })?;
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
    let proc = ChildProcess::spawn("ip", &["netns", "exec", &ns.name, "sleep", "120"])?;
    let inode = ns.inode()?;
    // `ip` is the namespace's process until it execs sleep: wait for the state asserted.
    wait_exec(proc.pid(), "sleep")?;
    // The process is in no container cgroup here, so the id comes from the CNI cache.
    wait_info(&agent, inode, "the pod labels and the process", |l, m| {
        l["pod"] == "cart-7d9f"
            && l["pod_namespace"] == "shop"
            && l["container_id"] == sandbox
            && l["comm"] == "sleep"
            && l["pid"] == proc.pid().to_string()
            && processes(m, inode) == Some(1.0)
    })?;
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

/// A namespace bind-mounted on a file in a fresh directory whose name holds every character
/// mountinfo escapes (space, tab, newline, backslash) and the quotes; unmounted and removed on
/// drop.
struct HostileMount {
    dir: std::path::PathBuf,
    file: std::path::PathBuf,
}

impl HostileMount {
    fn bind(netns: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(netns_agent_e2e::unique("netns-agent-hostile a\"b'c\\d\ne\tf-"));
        std::fs::create_dir(&dir)?;
        let file = dir.join("net");
        let mount = Self { dir, file };
        std::fs::write(&mount.file, b"")?;
        // No shell: the path goes to mount(8) as one argument, newline and all.
        let out = std::process::Command::new("mount").arg("--bind").arg(netns).arg(&mount.file).output()?;
        ensure!(out.status.success(), "mount --bind: {}", String::from_utf8_lossy(&out.stderr).trim());
        Ok(mount)
    }

    fn path(&self) -> &str {
        self.file.to_str().unwrap_or_default()
    }
}

impl Drop for HostileMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.file).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_namespace_mounted_at_a_hostile_path_shows_that_path_everywhere() -> Result<()> {
    use anyhow::Context as _;
    let agent = Agent::start_with_config(FAST)?;
    let holder = HostileProcess::spawn(b"hostile-path")?;
    let inode = holder.netns()?;
    let mount = HostileMount::bind(&format!("/proc/{}/ns/net", holder.0))?;
    // Only the mount holds the namespace now: the path is all there is to name it by.
    drop(holder);
    let path = mount.path();
    ensure!(path.contains(['\n', '\t', ' ', '"', '\'', '\\']), "{path:?}");
    wait_info(&agent, inode, "the mount path as the name, no process", |l, _| {
        l["name"] == path && l["comm"].is_empty() && l["pid"].is_empty()
    })?;
    // The exposition escapes `\`, `"` and newline (and nothing else), on one line.
    let text = agent.get("/metrics")?;
    let escaped = path.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let line = text
        .lines()
        .find(|l| l.starts_with("netns_info{") && l.contains(&format!("netns=\"{inode}\"")))
        .context("no netns_info line")?;
    ensure!(line.contains(&format!("name=\"{escaped}\"")), "{line}");
    let problems = promtool_check(&text)?;
    ensure!(problems.is_empty(), "promtool: {problems}");
    // The API carries the exact string.
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&agent.cli(&["ls", "--json", "--interval", "0"])?)?;
    let view = all.iter().find(|ns| ns["netns"] == inode).context("not in ls --json")?;
    ensure!(view["names"] == serde_json::json!([path]), "{view}");
    let json: serde_json::Value =
        serde_json::from_str(&agent.cli(&["show", "--json", &inode.to_string()])?)?;
    ensure!(json["namespace"]["names"] == serde_json::json!([path]), "{json}");
    // The text forms escape it as Rust does (`\n`, `\t`, `\"`, `\'`, `\\`): one line, unambiguous.
    let shown = path.escape_debug().to_string();
    ensure!(!shown.contains(['\n', '\t']), "{shown}");
    let table = agent.cli(&["ls", "--interval", "0"])?;
    let row = table.lines().find(|l| l.starts_with(&inode.to_string())).context("no ls row")?;
    ensure!(row.contains(&shown), "{row}\nwanted {shown}");
    // `show` finds the namespace by the exact path, as by its inode number.
    for what in [path.to_owned(), inode.to_string()] {
        let show = agent.cli(&["show", &what])?;
        let names = show.lines().find(|l| l.starts_with("names")).context("no names line")?;
        ensure!(names == format!("names         {shown}"), "{names:?}");
    }
    Ok(())
}

#[test]
fn a_destroyed_namespace_leaves_the_exposition_after_the_grace_period() -> Result<()> {
    let agent = Agent::start_with_config(FAST)?;
    let ns = NamedNetns::add("leave")?;
    let inode = ns.inode()?;
    wait_info(&agent, inode, "the namespace", |_, _| true)?;
    ns.delete()?;
    // Still there just after teardown (grace 2 s), gone after; unless the kernel gave the
    // inode number to a new namespace (another creator's) that lives now: its series
    // replaces ours at once, and user space sees that namespace.
    wait_for("the info series to leave", Duration::from_secs(20), || {
        Ok((info(&agent.scrape()?, inode).is_none() || visible_namespaces().contains(&inode)).then_some(()))
    })
}

#[test]
fn namespaces_past_the_cap_fold_into_overflow() -> Result<()> {
    let baseline = visible_namespaces().len();
    let cap = baseline + 2;
    let agent = Agent::start_with_config(&format!("{FAST}[limits]\ntracked_namespaces = {cap}\n"))?;
    let named: Vec<NamedNetns> = (0..5).map(|_| NamedNetns::add("cap")).collect::<Result<_>>()?;
    let ours: Vec<u64> = named.iter().map(NamedNetns::inode).collect::<Result<_>>()?;
    // With the host's namespaces as they were, 2 of ours fit and 3 fold. Other namespaces
    // coming or going meanwhile move that split, so count what happened to ours: each is
    // either exported one by one or folded, and every folded one is counted as dropped.
    let dropped_ours = |m: &Metrics| ours.iter().filter(|i| info(m, **i).is_none()).count();
    let m = wait_for("the cap reached and ours placed", Duration::from_secs(10), || {
        let m = agent.scrape()?;
        let dropped = m.value("netns_agent_namespaces_dropped_total", &[])?;
        Ok((dropped_ours(&m) >= 1 && dropped >= dropped_ours(&m) as f64).then_some(m))
    })?;
    let info_series = m.series("netns_info").len();
    ensure!(info_series <= cap, "info series {info_series}, cap {cap}");
    // The cap holds only once reached: a namespace of ours folded means it was full.
    ensure!(info_series == cap, "info series {info_series} below the cap {cap} though one of ours folded");
    // Lookups in a dropped namespace count under netns="overflow" (other folded namespaces
    // may add to it too: at least this one lookup).
    let (last, _) = named
        .iter()
        .zip(&ours)
        .rev()
        .find(|(_, i)| info(&m, **i).is_none())
        .ok_or_else(|| anyhow::anyhow!("none of ours folded"))?;
    netns_agent_e2e::run("ip", &["-n", &last.name, "link", "set", "lo", "up"])?;
    let overflow = |m: &Metrics| m.sum_where("netns_route_lookups_total", |l| l["netns"] == "overflow");
    let before = overflow(&agent.scrape()?);
    netns_agent_e2e::run("ip", &["-n", &last.name, "route", "get", "127.0.0.1"])?;
    wait_for("the lookup counted under overflow", Duration::from_secs(10), || {
        Ok((overflow(&agent.scrape()?) >= before + 1.0).then_some(()))
    })?;
    Ok(())
}

#[test]
fn churn_of_short_lived_namespaces_leaves_exposition_and_memory_where_they_started() -> Result<()> {
    // A small journal, full after the warm-up, so that what remains is any real growth.
    let agent = Agent::start_with_config(&format!("{FAST}journal_max_events = 200\n"))?;
    // Under emulation (the VM matrix) a smaller burst keeps the suite inside its budget.
    let burst = if slowdown() > 1 { 300 } else { 2000 };
    // Our creations under a comm nobody else uses.
    let comm = unique_comm("churn");
    set_thread_comm(&comm)?;
    // Series about namespaces: the ones this test made are known by inode. The others
    // (the host's, other creators') are not this test's to count.
    let mut ours = std::collections::BTreeSet::new();
    // What is left of our namespaces in the exposition: series labelled with one of our
    // inode numbers, unless the namespace the agent has under that number now is another
    // creator's (inode numbers come back within seconds, and other creators get ours).
    let leftovers = |agent: &Agent, ours: &std::collections::BTreeSet<u64>| -> Result<Vec<String>> {
        let creators = |agent: &Agent| -> Result<std::collections::BTreeMap<u64, String>> {
            Ok(agent
                .namespaces()?
                .iter()
                .filter_map(|ns| {
                    Some((ns["netns"].as_u64()?, ns["creator"]["comm"].as_str().unwrap_or("").to_owned()))
                })
                .collect())
        };
        let (first, text, second) = (creators(agent)?, agent.get("/metrics")?, creators(agent)?);
        let others = |inode: u64| {
            [&first, &second].iter().any(|c| c.get(&inode).is_some_and(|creator| *creator != comm))
                && ![&first, &second].iter().any(|c| c.get(&inode).is_some_and(|creator| *creator == comm))
        };
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.split("netns=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next()?.parse::<u64>().ok())
                    .is_some_and(|inode| ours.contains(&inode) && !others(inode))
            })
            .map(str::to_owned)
            .collect())
    };
    let mut churn = |agent: &Agent| -> Result<()> {
        for _ in 0..burst {
            ours.insert(clone_newnet_inode(false)?);
        }
        // Teardown, then the grace period (2 s): every series of ours leaves.
        let mut left = Vec::new();
        wait_for("our namespaces' series to leave", Duration::from_secs(60), || {
            left = leftovers(agent, &ours)?;
            Ok(left.is_empty().then_some(()))
        })
        .map_err(|e| e.context(format!("left: {:?}", left.iter().take(5).collect::<Vec<_>>())))?;
        Ok(())
    };
    // Series not about a namespace: a fixed set the test owns all causes of (other
    // creators only add netns_created_total comms, which are theirs).
    let fixed = |m: &Metrics| -> Vec<(String, std::collections::BTreeMap<String, String>)> {
        m.all_series()
            .into_iter()
            .filter(|(name, labels)| !labels.contains_key("netns") && name != "netns_created_total")
            .collect()
    };
    let before = agent.scrape()?;
    churn(&agent)?; // warm-up: allocator pools and maps reach their working size
    let rss_warm = rss_kib(agent.pid())?;
    churn(&agent)?;
    let after = agent.scrape()?;
    let rss_after = rss_kib(agent.pid())?;
    ensure!(fixed(&after) == fixed(&before), "the series not about a namespace changed");
    // The churning thread's comm adds one netns_created_total series.
    ensure!(!before.has("netns_created_total", &[("comm", &comm)]), "{comm} counted before it ran");
    let created = after.value("netns_created_total", &[("comm", &comm)])?;
    ensure!(created == 2.0 * burst as f64, "netns_created_total{{comm={comm:?}}} {created}");
    ensure!(after.value("netns_agent_events_lost_total", &[])? == 0.0, "events lost");
    // A leak grows with every burst; a heap that reached a new high-water mark once (a
    // burst handled in bigger batches under load, as in a busy VM) does not grow again.
    // So a round that grew past the bound is followed by one more, which must not grow.
    if rss_after > rss_warm + 2048 {
        churn(&agent)?;
        let rss_again = rss_kib(agent.pid())?;
        ensure!(
            rss_again <= rss_after + 512,
            "RSS grew from {rss_warm} KiB to {rss_after} KiB over {burst} namespaces, and again to \
             {rss_again} KiB over {burst} more"
        );
    }
    Ok(())
}
