//! The incident tools, end to end: journal, states, leak holders, API and CLI, events file.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, ensure};
use netns_agent_e2e::{
    Agent, ContainerCgroup, HeldNetns, Hold, NamedNetns, OrphanedNetns, agent_bin, loaded_program_ids, run,
    unique, unique_comm, wait_for,
};
use serde_json::Value;

const FAST: &str = "attribution_interval_seconds = 1\nseries_grace_seconds = 30\n";

fn events(agent: &Agent, netns: u64) -> Result<Vec<Value>> {
    agent
        .cli(&["events", "--json", "--netns", &netns.to_string()])?
        .lines()
        .map(|l| serde_json::from_str(l).context("an events line is not JSON"))
        .collect()
}

fn namespace(agent: &Agent, netns: u64) -> Result<Option<Value>> {
    let all: Vec<Value> = serde_json::from_str(&agent.cli(&["ls", "--json", "--interval", "0"])?)?;
    Ok(all.into_iter().find(|ns| ns["netns"] == netns))
}

#[test]
fn events_list_creation_move_and_teardown_in_order_with_who() -> Result<()> {
    let agent = Agent::start_with_config(FAST)?;
    // A process we know creates the namespace; `ip`, whose pid we know too, moves a device in.
    let owner = netns_agent_e2e::HostileProcess::spawn(b"journal-owner")?;
    let netns = owner.netns()?;
    let veth = unique("jv");
    run("ip", &["link", "add", &veth, "type", "veth", "peer", "name", &unique("jp")])?;
    let mover = std::process::Command::new("ip")
        .args(["link", "set", &veth, "netns", &owner.0.to_string()])
        .spawn()?;
    let mover_pid = mover.id();
    ensure!(mover.wait_with_output()?.status.success(), "the move failed");
    drop(owner); // its only process exits: the namespace dies (and the veth with it)
    // Up to the teardown: the kernel may give the inode number to a new namespace after it.
    let list = wait_for("three events", Duration::from_secs(20), || {
        let mut list = events(&agent, netns)?;
        let end = list.iter().position(|e| e["kind"] == "netns_destroyed");
        Ok(end.map(|end| {
            list.truncate(end + 1);
            list
        }))
    })?;
    let kinds: Vec<&str> = list.iter().map(|e| e["kind"].as_str().unwrap_or("")).collect();
    ensure!(kinds == ["netns_created", "device_moved", "netns_destroyed"], "{kinds:?}");
    let created = &list[0];
    ensure!(created["comm"] == "journal-owner", "{created}");
    ensure!(created["pid"].as_u64().is_some_and(|p| p > 0), "{created}");
    let moved = &list[1];
    ensure!(moved["pid"] == mover_pid && moved["comm"] == "ip", "{moved}");
    ensure!(moved["device"] == veth.as_str() && moved["to_netns"] == netns, "{moved}");
    ensure!(list[2]["age_seconds"].as_f64().is_some_and(|a| a > 0.0), "{}", list[2]);
    let seqs: Vec<u64> = list.iter().filter_map(|e| e["seq"].as_u64()).collect();
    ensure!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    // The text form says the same in one line each.
    let text = agent.cli(&["events", "--netns", &netns.to_string()])?;
    let lines: Vec<&str> = text.lines().take(3).collect();
    ensure!(
        lines.len() == 3
            && lines[0].contains(&format!("netns {netns} created by pid"))
            && lines[1].contains("moved from netns")
            && lines[2].contains(&format!("netns {netns} destroyed")),
        "{text}"
    );
    Ok(())
}

#[test]
fn ls_and_show_describe_a_parked_namespace() -> Result<()> {
    let agent = Agent::start_with_config(FAST)?;
    let ns = NamedNetns::add("parked")?;
    let inode = ns.inode()?;
    let view = wait_for("the namespace parked", Duration::from_secs(10), || {
        Ok(namespace(&agent, inode)?.filter(|v| v["state"] == "parked"))
    })?;
    ensure!(view["names"][0] == ns.name.as_str(), "{view}");
    let table = agent.cli(&["ls", "--interval", "0.2", "--sort", "name"])?;
    let row = table.lines().find(|l| l.starts_with(&inode.to_string())).context("no row")?;
    ensure!(row.contains("parked") && row.contains(&ns.name), "{table}");
    ensure!(
        table.lines().next().is_some_and(|h| h.contains("LOOKUPS/S") && h.contains("FAILURES/S")),
        "{table}"
    );
    let show = agent.cli(&["show", &ns.name])?;
    ensure!(show.contains("state         parked") && !show.contains("netns_created"), "{show}");
    ensure!(show.contains(&format!("netns {inode} created by pid")), "{show}");
    let json: Value = serde_json::from_str(&agent.cli(&["show", "--json", &inode.to_string()])?)?;
    ensure!(json["namespace"]["netns"] == inode && json["events"].is_array(), "{json}");
    Ok(())
}

#[test]
fn a_namespace_held_only_by_a_socket_is_orphaned_with_its_holder_then_gone() -> Result<()> {
    let agent = Agent::start_with_config(FAST)?;
    let orphan = OrphanedNetns::make()?;
    let me = std::process::id();
    let view = wait_for("the namespace orphaned with its holder", Duration::from_secs(15), || {
        Ok(namespace(&agent, orphan.inode)?
            .filter(|v| v["state"] == "orphaned" && v["holders"].as_array().is_some_and(|h| !h.is_empty())))
    })?;
    let holder = &view["holders"][0];
    ensure!(holder["pid"] == me && holder["kind"] == "socket", "{view}");
    let process_comm = std::fs::read_to_string("/proc/self/comm")?;
    ensure!(holder["comm"] == process_comm.trim_end(), "{view}");
    let show = agent.cli(&["show", &orphan.inode.to_string()])?;
    ensure!(show.contains(&format!("pid {me}")) && show.contains("socket"), "{show}");
    let m = agent.scrape()?;
    ensure!(
        m.value("netns_namespaces", &[("state", "orphaned")])? >= 1.0,
        "netns_namespaces{{state=\"orphaned\"}}"
    );
    // Closing the socket releases the namespace.
    let inode = orphan.inode;
    drop(orphan);
    // Gone; unless the kernel gave the inode number to a new namespace (another creator's)
    // that user space sees now.
    wait_for("the namespace gone", Duration::from_secs(20), || {
        Ok((namespace(&agent, inode)?.is_none_or(|v| v["state"] == "gone")
            || netns_agent_e2e::visible_namespaces().contains(&inode))
        .then_some(()))
    })?;
    let kinds: Vec<String> =
        events(&agent, inode)?.iter().map(|e| e["kind"].as_str().unwrap_or("").to_owned()).collect();
    // Its creation, then its teardown (anything after is a new namespace of that number).
    let created = kinds.iter().position(|k| k == "netns_created");
    let destroyed = kinds.iter().position(|k| k == "netns_destroyed");
    ensure!(created.is_some_and(|c| destroyed.is_some_and(|d| c < d)), "{kinds:?}");
    Ok(())
}

/// The series of `name` about namespace `netns`, as label maps with their value.
fn series_of(m: &netns_agent_e2e::Metrics, name: &str, netns: u64) -> Vec<(BTreeMap<String, String>, f64)> {
    m.series(name)
        .into_iter()
        .filter(|l| l.get("netns").is_some_and(|n| *n == netns.to_string()))
        .map(|l| {
            let pairs: Vec<(&str, &str)> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let value = m.get(name, &pairs).unwrap_or(f64::NAN);
            (l, value)
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn leaked_namespaces_name_their_holders_until_the_holders_exit() -> Result<()> {
    let agent = Agent::start_with_config(FAST)?;
    // Each holder in a cgroup named like a Docker container's, so its container id is known.
    let (cg_socket, cg_fd) = (ContainerCgroup::make()?, ContainerCgroup::make()?);
    let container = |cg: &Option<ContainerCgroup>| cg.as_ref().map_or(String::new(), |c| c.id.clone());
    if cg_socket.is_none() {
        eprintln!("no cgroup v2 here: the holders' container ids are not checked");
    }
    let comm_socket = unique_comm("hsock");
    let comm_fd = unique_comm("hnsfd");
    let by_socket = HeldNetns::spawn(Hold::Socket, &comm_socket, cg_socket.as_ref())?;
    let by_fd = HeldNetns::spawn(Hold::NetnsFd, &comm_fd, cg_fd.as_ref())?;
    let cases = [
        (&by_socket, Hold::Socket, comm_socket.as_str(), container(&cg_socket)),
        (&by_fd, Hold::NetnsFd, comm_fd.as_str(), container(&cg_fd)),
    ];
    for (held, hold, comm, container_id) in &cases {
        let (inode, pid) = (held.inode, held.pid.to_string());
        let m = wait_for("the holder exported", Duration::from_secs(15), || {
            let m = agent.scrape()?;
            Ok((!series_of(&m, "netns_holder_fds", inode).is_empty()).then_some(m))
        })?;
        let holders = series_of(&m, "netns_holder_fds", inode);
        let want = labels(&[
            ("netns", &inode.to_string()),
            ("kind", hold.kind()),
            ("pid", &pid),
            ("comm", comm),
            ("container_id", container_id),
        ]);
        if cg_socket.is_some() {
            ensure!(holders == [(want, 1.0)], "{comm}: {holders:?}");
        } else {
            ensure!(holders.len() == 1 && holders[0].1 == 1.0, "{comm}: {holders:?}");
            let got = &holders[0].0;
            ensure!(["netns", "kind", "pid", "comm"].iter().all(|k| got.get(*k) == want.get(*k)), "{got:?}");
        }
        let leak = series_of(&m, "netns_leak_info", inode);
        ensure!(leak.len() == 1 && leak[0].1 == 1.0, "{comm}: {leak:?}");
        let leak = &leak[0].0;
        for (label, value) in
            [("state", "orphaned"), ("name", ""), ("creator_comm", comm), ("pod", ""), ("pod_namespace", "")]
        {
            ensure!(leak.get(label).map(String::as_str) == Some(value), "{comm}: {label}: {leak:?}");
        }
        if cg_socket.is_some() {
            ensure!(leak["creator_container_id"] == *container_id, "{comm}: {leak:?}");
            // The last known container: none, unless a scan caught the child in the namespace
            // during the microseconds between its unshare and its return (then its own).
            ensure!(leak["container_id"].is_empty() || leak["container_id"] == *container_id, "{leak:?}");
        }
        // netns_info has nothing to say about it: that is why the leak families exist.
        let info = series_of(&m, "netns_info", inode);
        ensure!(info.len() == 1 && info[0].0["pid"].is_empty() && info[0].0["pod"].is_empty(), "{info:?}");
        // The API names the descriptor too.
        let view = namespace(&agent, inode)?.context("not in ls")?;
        let api = &view["holders"];
        ensure!(
            api.as_array().is_some_and(|h| h.len() == 1)
                && api[0]["pid"] == held.pid
                && api[0]["fd"] == held.fd
                && api[0]["kind"] == hold.kind()
                && api[0]["comm"] == *comm,
            "{view}"
        );
        let show = agent.cli(&["show", &inode.to_string()])?;
        let mut said = format!("held by       pid {pid} ({comm}) {} {}", hold.kind(), held.fd);
        if !container_id.is_empty() {
            said.push_str(&format!(", container {container_id}"));
        }
        ensure!(show.contains(&said), "{said:?} not in:\n{show}");
    }
    // The socket's holder exits: its namespace goes, and with it both series; the other stays.
    let (socket_inode, socket_pid) = (by_socket.inode, by_socket.pid.to_string());
    drop(by_socket);
    // Only what this test made: the kernel may give the inode number to another namespace.
    let mine = |m: &netns_agent_e2e::Metrics| {
        series_of(m, "netns_holder_fds", socket_inode).iter().any(|(l, _)| l["pid"] == socket_pid)
            || series_of(m, "netns_leak_info", socket_inode)
                .iter()
                .any(|(l, _)| l["creator_comm"] == comm_socket)
    };
    wait_for("the socket holder's series gone", Duration::from_secs(20), || {
        Ok((!mine(&agent.scrape()?)).then_some(()))
    })?;
    let m = agent.scrape()?;
    ensure!(
        series_of(&m, "netns_holder_fds", by_fd.inode).len() == 1,
        "the fd holder's series left too early"
    );
    let (fd_inode, fd_pid) = (by_fd.inode, by_fd.pid.to_string());
    drop(by_fd);
    wait_for("the fd holder's series gone", Duration::from_secs(20), || {
        let m = agent.scrape()?;
        let left = series_of(&m, "netns_holder_fds", fd_inode).iter().any(|(l, _)| l["pid"] == fd_pid)
            || series_of(&m, "netns_leak_info", fd_inode).iter().any(|(l, _)| l["creator_comm"] == comm_fd);
        Ok((!left).then_some(()))
    })?;
    Ok(())
}

#[test]
fn the_events_file_respects_its_cap() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("netns-agent-events-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("events.jsonl");
    let agent = Agent::start_with_config(&format!(
        "{FAST}events_file = \"{}\"\nevents_file_max_bytes = 4096\n",
        path.display()
    ))?;
    // Our own 60 namespaces, created under a comm nobody else uses, and their teardowns.
    let comm = netns_agent_e2e::unique_comm("evf");
    netns_agent_e2e::set_thread_comm(&comm)?;
    let since = agent.last_seq()?;
    for _ in 0..60 {
        netns_agent_e2e::clone_newnet(false)?;
    }
    wait_for("our teardowns", Duration::from_secs(30), || {
        let (list, _) = agent.events_since(since)?;
        let created = netns_agent_e2e::events_of(&list, "netns_created", &comm);
        Ok((created.len() == 60 && netns_agent_e2e::torn_down(&list, &created).iter().all(|t| *t))
            .then_some(()))
    })?;
    let current = std::fs::metadata(&path)?.len();
    let rotated = std::fs::metadata(dir.join("events.jsonl.1")).context("rotated file")?.len();
    ensure!(current <= 4096 && rotated <= 4096, "{current} and {rotated} bytes, cap 4096");
    for line in std::fs::read_to_string(&path)?.lines() {
        let _: Value = serde_json::from_str(line).context("events file line")?;
    }
    drop(agent);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn on_call_commands_say_when_no_agent_answers() -> Result<()> {
    let port = netns_agent_e2e::free_port();
    for cmd in [&["ls"][..], &["events"], &["show", "1"]] {
        let out = std::process::Command::new(agent_bin())
            .args(cmd)
            .args(["--agent", &format!("127.0.0.1:{port}")])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success() && stderr.lines().count() == 1, "{cmd:?}: {stderr}");
        ensure!(stderr.contains("no agent answering") && stderr.contains("netns-agent run"), "{stderr}");
    }
    Ok(())
}

/// A reused inode number is another namespace: `show` lists the live one's own events (by
/// its cookie) and says that an earlier namespace had the number.
#[test]
fn show_tells_a_reused_inode_number_from_the_namespace_that_had_it() -> Result<()> {
    let agent = Agent::start_with_config(FAST)?;
    let first = NamedNetns::add("reuse")?;
    let inode = first.inode()?;
    wait_for("the first namespace in the journal", Duration::from_secs(10), || {
        Ok(events(&agent, inode)?.iter().any(|e| e["kind"] == "netns_created").then_some(()))
    })?;
    first.delete()?;
    wait_for("its teardown in the journal", Duration::from_secs(30), || {
        Ok(events(&agent, inode)?.iter().any(|e| e["kind"] == "netns_destroyed").then_some(()))
    })?;
    // The kernel hands the freed number to a new namespace soon: make namespaces until one
    // gets it (bounded), keep that one and drop the others.
    let mut reused = None;
    for _ in 0..200 {
        let ns = NamedNetns::add("reuse")?;
        if ns.inode()? == inode {
            reused = Some(ns);
            break;
        }
    }
    let Some(reused) = reused else {
        // Not a failure of the agent: the kernel did not reuse the number in 200 tries.
        eprintln!("inode {inode} was not reused in 200 creations; nothing to check");
        return Ok(());
    };
    let shown: Value = wait_for("the new namespace in show", Duration::from_secs(10), || {
        let v: Value = serde_json::from_str(&agent.cli(&["show", &inode.to_string(), "--json"])?)?;
        Ok((v["events"].as_array().is_some_and(|e| !e.is_empty())).then_some(v))
    })?;
    let cookie = shown["namespace"]["cookie"].as_u64().context("cookie")?;
    let kinds: Vec<&str> =
        shown["events"].as_array().into_iter().flatten().filter_map(|e| e["kind"].as_str()).collect();
    ensure!(kinds == ["netns_created"], "show {inode} lists another namespace's events: {kinds:?}");
    ensure!(shown["events"][0]["cookie"] == cookie, "{shown}");
    let text = agent.cli(&["show", &inode.to_string()])?;
    ensure!(text.contains("1 earlier namespace(s) had inode"), "{text}");
    // The inode's history still has both, told apart by cookie.
    let all = events(&agent, inode)?;
    let cookies: std::collections::BTreeSet<u64> = all.iter().filter_map(|e| e["cookie"].as_u64()).collect();
    ensure!(cookies.len() == 2, "events --netns {inode}: {all:?}");
    drop(reused);
    Ok(())
}

/// A torn-down namespace keeps its last known labels for the grace period.
#[test]
fn a_destroyed_namespace_keeps_its_labels_for_the_grace_period() -> Result<()> {
    let agent = Agent::start_with_config(FAST)?;
    let ns = NamedNetns::add("keep")?;
    let inode = ns.inode()?;
    let mut sleeper =
        std::process::Command::new("ip").args(["netns", "exec", &ns.name, "sleep", "60"]).spawn()?;
    let info = |m: &netns_agent_e2e::Metrics| {
        m.series("netns_info")
            .into_iter()
            .find(|l| l.get("netns").map(String::as_str) == Some(&inode.to_string()))
    };
    wait_for("the name and main process", Duration::from_secs(10), || {
        let m = agent.scrape()?;
        Ok(info(&m).filter(|l| l["name"] == ns.name && l["comm"] == "sleep").map(|_| ()))
    })?;
    sleeper.kill()?;
    sleeper.wait()?;
    let name = ns.name.clone();
    ns.delete()?;
    let gone = wait_for("its teardown", Duration::from_secs(30), || {
        // Gone, or still terminating where a teardown batch is slow (emulated VMs).
        Ok(agent
            .namespaces()?
            .into_iter()
            .find(|n| n["netns"] == inode && (n["state"] == "gone" || n["state"] == "terminating")))
    })?;
    ensure!(gone["names"][0] == name.as_str(), "the API forgot the name: {gone}");
    let labels = info(&agent.scrape()?).context("netns_info left before the grace period")?;
    ensure!(labels["name"] == name && labels["comm"] == "sleep", "labels emptied at teardown: {labels:?}");
    ensure!(
        agent.scrape()?.get("netns_processes", &[("netns", &inode.to_string())]) == Some(0.0),
        "a torn-down namespace has no processes"
    );
    Ok(())
}

/// Output into a pipe closed early (`| head`) ends quietly, as `ps` does.
#[test]
fn on_call_output_into_a_closed_pipe_ends_quietly() -> Result<()> {
    let agent = Agent::start()?;
    // `true` exits without reading while the client is still asking the agent: its write
    // then meets a closed pipe (EPIPE).
    let script = format!(
        "{} ls --all -o json --interval 0 --agent 127.0.0.1:{} | true",
        agent_bin().display(),
        agent.port
    );
    let out = std::process::Command::new("bash").args(["-o", "pipefail", "-c", &script]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success() && stderr.is_empty(), "{}: {stderr}", out.status);
    Ok(())
}

/// The seqs of the events file's lines, oldest first; an error names a line that is not a
/// whole JSON object.
fn file_seqs(path: &std::path::Path) -> Result<Vec<u64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not JSON: {line:?}", path.display(), i + 1))?;
            v["seq"].as_u64().with_context(|| format!("line {}: no seq: {line}", i + 1))
        })
        .collect()
}

/// Ids of the eBPF links the kernel has whose program is one of `programs`.
fn links_of(programs: &std::collections::BTreeSet<u32>) -> Result<Vec<u64>> {
    let out = run("bpftool", &["link", "show", "--json"])?;
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).context("bpftool link --json")?;
    Ok(list
        .iter()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|p| programs.contains(&(p as u32))))
        .filter_map(|l| l["id"].as_u64())
        .collect())
}

/// Named namespaces made by a test, deleted on drop (also when the test fails half-way).
#[derive(Default)]
struct Names(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Names {
    fn list(&self) -> Vec<String> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        for name in self.list() {
            let _ = std::process::Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// A thread creating namespaces in a loop (`ip netns add`, under our own comm, and clones),
/// stopped and joined on drop.
struct Burst {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Burst {
    fn start(comm: &str, names: &Names) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, comm, list) =
            (std::sync::Arc::clone(&stop), comm.to_owned(), std::sync::Arc::clone(&names.0));
        let thread = std::thread::spawn(move || -> Result<()> {
            netns_agent_e2e::set_thread_comm(&comm)?;
            // Bounded, whatever happens to the test.
            for _ in 0..500 {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let name = unique("burst");
                netns_agent_e2e::run_as("ip", &comm, &["netns", "add", &name])?;
                list.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(name);
                netns_agent_e2e::clone_newnet(false)?;
            }
            Ok(())
        });
        Self { stop, thread: Some(thread) }
    }

    fn finish(mut self) -> Result<()> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().context("joined")?.join().map_err(|_| anyhow::anyhow!("burst thread panicked"))?
    }
}

impl Drop for Burst {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// SIGKILL in the middle of a burst of creations, then a restart on the same events file:
/// every line of the file is whole, sequence numbers go on, `netns_alive` is right at the
/// first scrape, the namespaces made while the agent was down are there with their names,
/// state and main process, and nothing of the killed agent stays in the kernel.
#[test]
fn a_killed_agent_restarts_without_loss() -> Result<()> {
    let dir = netns_agent_e2e::TempDir::new("restart")?;
    let path = dir.0.join("events.jsonl");
    let config = format!("{FAST}events_file = \"{}\"\n", path.display());
    let agent = Agent::start_with_config(&config)?;
    let programs = agent.program_ids()?;
    ensure!(!programs.is_empty(), "the agent holds no eBPF program");
    ensure!(!links_of(&programs)?.is_empty(), "bpftool shows no link of the agent's programs");
    let comm = netns_agent_e2e::unique_comm("rst");
    let names = Names::default();
    let since = agent.last_seq()?;
    let burst = Burst::start(&comm, &names);
    // Killed while the burst runs and the journal is being written.
    wait_for("20 of our creations in the journal", Duration::from_secs(30), || {
        let (list, _) = agent.events_since(since)?;
        Ok((netns_agent_e2e::events_of(&list, "netns_created", &comm).len() >= 20).then_some(()))
    })?;
    let log = agent.kill()?;
    let named_before_kill = names.list().len();
    // More of the burst while the agent is down, and two namespaces of our own: a named one
    // with a process in it, and an unnamed one held by its process.
    wait_for("5 creations while the agent is down", Duration::from_secs(30), || {
        Ok((names.list().len() >= named_before_kill + 5).then_some(()))
    })?;
    burst.finish()?;
    let named = NamedNetns::add("down")?;
    let in_named =
        netns_agent_e2e::ChildProcess::spawn("ip", &["netns", "exec", &named.name, "sleep", "60"])?;
    let unnamed = netns_agent_e2e::ChildProcess::spawn("unshare", &["-n", "sleep", "60"])?;
    let unnamed_inode = wait_for("the unshared namespace", Duration::from_secs(10), || {
        use std::os::unix::fs::MetadataExt as _;
        let ino = std::fs::metadata(format!("/proc/{}/ns/net", unnamed.pid()))?.ino();
        // Until `unshare` has run, the child is in the host's namespace.
        Ok((ino != std::fs::metadata("/proc/self/ns/net")?.ino()).then_some(ino))
    })?;

    // Nothing of the killed agent is left in the kernel: programs and links were held by its
    // file descriptors only (a pinned one would keep its program loaded).
    wait_for("the killed agent's programs and links freed", Duration::from_secs(10), || {
        let left: Vec<u32> = programs.intersection(&loaded_program_ids()?).copied().collect();
        let links = links_of(&programs)?;
        if left.is_empty() && links.is_empty() {
            Ok(Some(()))
        } else {
            anyhow::bail!("still loaded: programs {left:?}, links {links:?}")
        }
    })
    .with_context(|| log.clone())?;

    // What the killed agent left: whole lines, increasing, perhaps a torn last one.
    let raw = std::fs::read(&path)?;
    let torn = !raw.is_empty() && raw.last() != Some(&b'\n');
    let whole = if torn {
        let end = raw.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        String::from_utf8_lossy(&raw[..end]).into_owned()
    } else {
        String::from_utf8_lossy(&raw).into_owned()
    };
    let before: Vec<u64> = whole
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).ok().and_then(|v| v["seq"].as_u64()))
        .collect::<Option<_>>()
        .context("a line of the killed agent's file is not whole JSON")?;
    let last_before = *before.last().context("the killed agent wrote nothing")?;
    ensure!(before.len() >= 20, "only {} lines", before.len());

    // The restart: the inventory is in the first scrape.
    let visible_before = netns_agent_e2e::visible_namespaces();
    let agent = Agent::start_with_config(&config)?;
    let metrics = agent.scrape()?;
    let listed = agent.namespaces()?;
    let visible_after = netns_agent_e2e::visible_namespaces();
    let alive = metrics.value("netns_alive", &[])?;
    let held: std::collections::BTreeSet<u64> = listed
        .iter()
        .filter(|n| !matches!(n["state"].as_str(), Some("gone" | "terminating" | "dying")))
        .filter_map(|n| n["netns"].as_u64())
        .collect();
    let stable: std::collections::BTreeSet<u64> =
        visible_before.intersection(&visible_after).copied().collect();
    let missing: Vec<&u64> = stable.difference(&held).collect();
    ensure!(missing.is_empty(), "at the first answer, namespaces not listed: {missing:?}");
    ensure!(
        alive >= stable.len() as f64,
        "netns_alive {alive} at the first scrape, {} visible",
        stable.len()
    );
    let mut ours: Vec<(String, u64)> = Vec::new();
    for name in names.list().into_iter().chain([named.name.clone()]) {
        use std::os::unix::fs::MetadataExt as _;
        ours.push((name.clone(), std::fs::metadata(format!("/run/netns/{name}"))?.ino()));
    }
    for (name, inode) in &ours {
        ensure!(held.contains(inode), "{name} ({inode}) not in the first answer");
    }
    ensure!(held.contains(&unnamed_inode), "the unshared namespace not in the first answer");

    // Once the first scan is done: names, states and main processes.
    wait_for("the first scan", Duration::from_secs(20), || {
        Ok((netns_agent_e2e::http_get_status(agent.port, "/-/ready")?.0 == 200).then_some(()))
    })?;
    let listed = agent.namespaces()?;
    let find = |inode: u64| listed.iter().find(|n| n["netns"] == inode).cloned();
    for (name, inode) in &ours {
        let n = find(*inode).with_context(|| format!("{name} ({inode}) gone from the list"))?;
        let names_of: Vec<&str> =
            n["names"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        ensure!(names_of.contains(&name.as_str()), "{name}: {n}");
        let want = if *name == named.name { "active" } else { "parked" };
        ensure!(n["state"] == want, "{name}: want {want}: {n}");
    }
    // Made while the agent was down: no creation was seen, so no creator is claimed.
    for (name, inode) in &ours[named_before_kill..] {
        let n = find(*inode).with_context(|| format!("{name} ({inode}) gone from the list"))?;
        ensure!(n["creator"].is_null(), "{name} has a creator: {n}");
    }
    let n = find(ours.last().context("ours")?.1).context("the named namespace")?;
    let sleeper_pid = in_named.pid();
    ensure!(n["main_process"]["comm"] == "sleep" && n["main_process"]["pid"] == sleeper_pid, "{n}");
    let n = find(unnamed_inode).context("the unshared namespace")?;
    ensure!(
        n["state"] == "active"
            && n["main_process"]["comm"] == "sleep"
            && n["main_process"]["pid"] == unnamed.pid(),
        "{n}"
    );

    // Sequence numbers go on from the file, in memory and on disk, past any torn line.
    let fresh = NamedNetns::add("after")?;
    let fresh_inode = fresh.inode()?;
    let created = wait_for("a creation after the restart", Duration::from_secs(10), || {
        Ok(events(&agent, fresh_inode)?.into_iter().find(|e| e["kind"] == "netns_created"))
    })?;
    ensure!(created["seq"].as_u64().is_some_and(|s| s > last_before), "{created} after seq {last_before}");
    let seqs = file_seqs(&path)?;
    ensure!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs not strictly increasing across the restart");
    ensure!(seqs.len() > before.len() && seqs[..before.len()] == before[..], "the old lines changed");
    if torn {
        ensure!(agent.log_text().contains("cut a torn last line"), "torn line not reported");
    }
    println!(
        "killed after seq {last_before} ({} lines{}), {} named namespaces made while it was down, first scrape netns_alive {alive}",
        before.len(),
        if torn { ", a torn last line" } else { "" },
        names.list().len() - named_before_kill
    );
    drop((in_named, unnamed));
    Ok(())
}

/// A tmpfs mounted for one test, unmounted on drop (lazily: whatever still holds it), so a
/// failed test leaves no mount behind.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: std::path::PathBuf, size: &str) -> Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let target = dir.to_str().context("path")?;
        run("mount", &["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "netns-agent-test", target])?;
        Ok(Self(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Fills the filesystem of `path` with one file until it refuses more (ENOSPC).
fn fill(path: &std::path::Path) -> Result<u64> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
    let block = [0x55u8; 4096];
    let mut total = 0;
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(err) => return Err(err.into()),
        }
    }
    Ok(total)
}

/// `n` namespaces created (and left to die) by clones from a thread named `comm`.
fn clones_as(comm: &str, n: u32) -> Result<()> {
    let comm = comm.to_owned();
    std::thread::spawn(move || -> Result<()> {
        netns_agent_e2e::set_thread_comm(&comm)?;
        for _ in 0..n {
            netns_agent_e2e::clone_newnet(false)?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("clone thread panicked"))?
}

/// The seqs of our creations (`comm`) the API lists after `since`, once there are `n`.
fn our_creations(agent: &Agent, since: u64, comm: &str, n: usize) -> Result<Vec<u64>> {
    wait_for(&format!("{n} creations by {comm}"), Duration::from_secs(20), || {
        let (list, _) = agent.events_since(since)?;
        let seqs: Vec<u64> = netns_agent_e2e::events_of(&list, "netns_created", comm)
            .iter()
            .filter_map(|e| e["seq"].as_u64())
            .collect();
        ensure!(seqs.len() <= n, "{} creations by {comm}, made {n}", seqs.len());
        Ok((seqs.len() == n).then_some(seqs))
    })
}

/// The events file's directory full: the agent counts and serves on, says so once, counts
/// the lines it could not write, cuts no line in half, and writes again (numbering going on)
/// once there is room, within its size cap throughout.
#[test]
fn a_full_disk_loses_file_lines_only_and_writing_resumes() -> Result<()> {
    const CAP: u64 = 4096;
    let dir = netns_agent_e2e::TempDir::new("diskfull")?;
    let mnt = Tmpfs::mount(dir.0.join("mnt"), "64k")?;
    let path = mnt.0.join("events.jsonl");
    let rotated = mnt.0.join("events.jsonl.1");
    let agent = Agent::start_with_config(&format!(
        "{FAST}events_file = \"{}\"\nevents_file_max_bytes = {CAP}\n",
        path.display()
    ))?;
    let comm = netns_agent_e2e::unique_comm("dsk");
    let created = |m: &netns_agent_e2e::Metrics| m.get_or_zero("netns_created_total", &[("comm", &comm)]);
    let health = || -> Result<(f64, f64)> {
        let m = agent.scrape()?;
        Ok((
            m.value("netns_agent_journal_write_errors_total", &[])?,
            m.value("netns_agent_journal_writable", &[])?,
        ))
    };
    let warnings = || agent.log_text().matches("its lines are lost").count();
    let resumed = || agent.log_text().matches("writing again").count();

    // Writing works.
    let since = agent.last_seq()?;
    clones_as(&comm, 3)?;
    let first = our_creations(&agent, since, &comm, 3)?;
    // On a busy host the 4 KiB file may rotate our lines out before we look: written means
    // in the file or its rotation, or passed by lines written after them.
    let on_disk = |seqs_wanted: &[u64]| -> Result<Option<u64>> {
        let mut seqs = file_seqs(&path)?;
        if rotated.exists() {
            seqs.extend(file_seqs(&rotated)?);
        }
        let newest = seqs.iter().copied().max().unwrap_or(0);
        let written = seqs_wanted.iter().all(|s| seqs.contains(s) || *s < newest);
        Ok(written.then_some(newest))
    };
    let last_good = wait_for("our first lines on disk", Duration::from_secs(10), || on_disk(&first))?;
    ensure!(health()? == (0.0, 1.0), "before the disk is full: {:?}", health()?);

    // Full: namespaces until a line fails (space the rotation frees is taken first).
    let filler = mnt.0.join("filler");
    let filled = fill(&filler)?;
    let mut made = 3;
    wait_for("the events file to fail", Duration::from_secs(30), || {
        clones_as(&comm, 1)?;
        made += 1;
        Ok((health()?.1 == 0.0).then_some(()))
    })?;
    let failed_at = health()?.0;
    ensure!(failed_at >= 1.0, "writable 0 with {failed_at} errors");

    // While full: counted exactly, served, journaled in memory; the lines are not on disk.
    let since_full = agent.last_seq()?;
    clones_as(&comm, 10)?;
    made += 10;
    let lost = our_creations(&agent, since_full, &comm, 10)?;
    wait_for("every creation counted", Duration::from_secs(10), || {
        Ok((created(&agent.scrape()?) == f64::from(made)).then_some(()))
    })?;
    let (errors, writable) = health()?;
    ensure!(
        writable == 0.0 && errors >= failed_at + 10.0,
        "errors {errors} (were {failed_at}), writable {writable}"
    );
    let seqs = file_seqs(&path)?;
    ensure!(lost.iter().all(|s| !seqs.contains(s)), "lines written to a full disk: {lost:?} in {seqs:?}");
    ensure!(warnings() == 1 && resumed() == 0, "log:\n{}", agent.log_text());

    // Room again: the next lines are written, numbering going on past the lost ones.
    std::fs::remove_file(&filler)?;
    let since = agent.last_seq()?;
    clones_as(&comm, 3)?;
    made += 3;
    let after = our_creations(&agent, since, &comm, 3)?;
    wait_for("lines on disk again", Duration::from_secs(10), || on_disk(&after))?;
    let seqs = file_seqs(&path)?;
    ensure!(after.iter().all(|s| *s > lost[lost.len() - 1] && *s > last_good), "{after:?}");
    ensure!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs not increasing: {seqs:?}");
    let (errors_after, writable) = health()?;
    ensure!(writable == 1.0 && errors_after >= errors, "after: errors {errors_after}, writable {writable}");
    ensure!(warnings() == 1 && resumed() == 1, "one warning, one info line:\n{}", agent.log_text());
    ensure!(created(&agent.scrape()?) == f64::from(made), "counts");

    // The cap held throughout (the file rotated at least once: 4 KiB is ~15 lines).
    let current = std::fs::metadata(&path)?.len();
    let old = std::fs::metadata(&rotated).context("no rotated file")?.len();
    ensure!(current <= CAP && old <= CAP, "{current} and {old} bytes, cap {CAP}");
    file_seqs(&rotated)?;
    println!(
        "filler {filled} bytes; {} lines lost while full ({} ours), writing resumed at seq {}",
        errors_after,
        lost.len(),
        after[0]
    );
    drop(agent);
    drop(mnt);
    Ok(())
}
