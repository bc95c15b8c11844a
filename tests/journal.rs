//! The incident tools, end to end: journal, states, leak holders, API and CLI, events file.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, ensure};
use netns_agent_e2e::{
    Agent, ContainerCgroup, HeldNetns, Hold, NamedNetns, OrphanedNetns, agent_bin, run, unique, unique_comm,
    wait_for,
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
