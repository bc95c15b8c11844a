//! The agent under exactly the capabilities it ships with: the systemd unit's
//! `CapabilityBoundingSet=` and the DaemonSet's `capabilities.add`, both read from the files
//! in deploy/. Under each, every feature works, leak holders among another user's processes
//! included (a socket and an nsfs descriptor, each the only thing holding its namespace), and
//! once started the agent keeps only the capabilities running needs, in every thread. Without
//! a capability a feature needs, the agent says so once at start-up and in `check`, and shows
//! the holder as unknown, never as absent. The JSON API never carries command lines or
//! environments.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, ensure};
use netns_agent_e2e::{
    Agent, ChildProcess, HeldBy, NamedNetns, OrphanedNetns, agent_bin, mode, unique, wait_for,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Capability names, upper case without `CAP_`, as the DaemonSet writes them.
type Caps = BTreeSet<String>;

/// The systemd unit's bounding set.
fn systemd_caps() -> Result<Caps> {
    let path = repo().join("deploy/systemd/netns-agent.service");
    let unit = std::fs::read_to_string(&path)?;
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .with_context(|| format!("no CapabilityBoundingSet= in {}", path.display()))?;
    line.split_whitespace()
        .map(|c| c.strip_prefix("CAP_").map(str::to_owned).with_context(|| format!("{c}: not CAP_...")))
        .collect()
}

/// The DaemonSet container's added capabilities (it drops ALL).
fn daemonset_caps() -> Result<Caps> {
    let path = repo().join("deploy/kubernetes/netns-agent.yaml");
    let docs = yaml_rust2::YamlLoader::load_from_str(&std::fs::read_to_string(&path)?)?;
    let ds = docs.iter().find(|d| d["kind"].as_str() == Some("DaemonSet")).context("no DaemonSet")?;
    let sc = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"];
    ensure!(
        sc["drop"].as_vec().is_some_and(|d| d.iter().any(|c| c.as_str() == Some("ALL"))),
        "the DaemonSet does not drop ALL"
    );
    let add = sc["add"].as_vec().context("no capabilities.add")?;
    Ok(add.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect())
}

/// Bits of the capabilities the tests name.
fn bit(cap: &str) -> u32 {
    match cap {
        "DAC_READ_SEARCH" => 2,
        "NET_ADMIN" => 12,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("unknown capability {other}"),
    }
}

fn mask(caps: &Caps) -> u64 {
    caps.iter().fold(0, |m, c| m | 1 << bit(c))
}

/// What the agent keeps after start-up: what it uses while running.
const RUNNING: [&str; 4] = ["BPF", "SYS_PTRACE", "DAC_READ_SEARCH", "NET_ADMIN"];

/// This test process's bounding set: a capability outside it cannot be granted here.
fn own_bounding() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).context("CapBnd")?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

/// `setpriv` that limits the bounding set (and so what root gets at exec) to `caps`.
fn setpriv(caps: &Caps) -> Vec<String> {
    let list: Vec<String> = caps.iter().map(|c| format!("+{}", c.to_lowercase())).collect();
    vec![
        "setpriv".into(),
        "--inh-caps=-all".into(),
        format!("--bounding-set=-all,{}", list.join(",")),
        "--".into(),
    ]
}

/// CapEff of every thread of `pid`.
fn thread_caps(pid: u32) -> Result<Vec<u64>> {
    let mut caps = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(task?.path().join("status"))?;
        let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).context("CapEff")?;
        caps.push(u64::from_str_radix(hex.trim(), 16)?);
    }
    Ok(caps)
}

/// Processes whose file descriptors even this test (full root) may not read: what the agent
/// cannot check with any capability (on some sandboxes, their pid 1). Usually none.
fn hidden_from_root() -> Vec<u32> {
    let mut hidden = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let denied = |err: &std::io::Error| err.kind() == std::io::ErrorKind::PermissionDenied;
        let hides = match std::fs::read_dir(entry.path().join("fd")) {
            Err(err) => denied(&err),
            Ok(fds) => fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_err_and(|e| denied(&e))),
        };
        if hides {
            hidden.push(pid);
        }
    }
    hidden
}

/// Two namespaces, each held only by a process of user `nobody`: one by a socket made in it,
/// one by an open nsfs descriptor (fd 3 of each).
struct NobodyHolders {
    socket: (ChildProcess, u64),
    netns_fd: (ChildProcess, u64),
}

impl NobodyHolders {
    fn new() -> Result<Self> {
        Ok(Self {
            socket: OrphanedNetns::held_by(HeldBy::Socket)?.give_to_nobody()?,
            netns_fd: OrphanedNetns::held_by(HeldBy::NetnsFd)?.give_to_nobody()?,
        })
    }

    fn each(&self) -> [(&(ChildProcess, u64), HeldBy); 2] {
        [(&self.socket, HeldBy::Socket), (&self.netns_fd, HeldBy::NetnsFd)]
    }
}

/// The namespace `inode` as the JSON API shows it, once its holders have been looked for.
fn orphan_view(agent: &Agent, inode: u64) -> Result<Option<serde_json::Value>> {
    Ok(agent.namespaces()?.into_iter().find(|v| {
        v["netns"] == inode
            && v["state"] == "orphaned"
            && (v["holders"].as_array().is_some_and(|h| !h.is_empty())
                || v["holders_unchecked_processes"].as_u64().is_some_and(|n| n > 0))
    }))
}

/// Under `caps` the agent names both holders exactly, keeps only what running needs in every
/// thread, and warns about nothing.
fn everything_works_under(what: &str, caps: &Caps) -> Result<()> {
    let grantable =
        caps.iter().filter(|c| own_bounding().is_ok_and(|b| b & 1 << bit(c) != 0)).cloned().collect();
    if &grantable != caps {
        let missing: Vec<&String> = caps.difference(&grantable).collect();
        println!("{what}: this host cannot grant {missing:?}; testing with the rest");
    }
    let holders = NobodyHolders::new()?;
    let agent = Agent::start_wrapped(
        &setpriv(&grantable).iter().map(String::as_str).collect::<Vec<_>>(),
        &["--attach", &mode()],
    )?;
    for ((holder, inode), held_by) in holders.each() {
        let view = wait_for(
            &format!("{what}: the {} holder of {inode}", held_by.kind()),
            Duration::from_secs(60),
            || orphan_view(&agent, *inode),
        )
        .with_context(|| agent.log_text())?;
        let expected = serde_json::json!([{"pid": holder.pid(), "comm": "sleep", "fd": 3, "kind": held_by.kind(), "container_id": ""}]);
        ensure!(
            view["holders"] == expected,
            "{what}: holders of {inode}: {} (expected {expected})",
            view["holders"]
        );
        let hidden = hidden_from_root();
        ensure!(
            view["holders_unchecked_processes"] == hidden.len(),
            "{what}: {} processes unchecked, but only {hidden:?} are hidden from full root here",
            view["holders_unchecked_processes"]
        );
        let show = agent.cli(&["show", &inode.to_string()])?;
        let line = format!("pid {} (sleep) {} 3", holder.pid(), held_by.kind());
        ensure!(show.contains(&line), "{what}: `show {inode}` lacks {line:?}:\n{show}");
    }
    let running: Caps = RUNNING.iter().map(|c| (*c).to_owned()).collect();
    let expected = mask(&grantable) & mask(&running);
    let threads = thread_caps(agent.pid())?;
    ensure!(threads.len() > 1, "{what}: the agent has one thread?");
    ensure!(
        threads.iter().all(|c| *c == expected),
        "{what}: CapEff of the agent's threads {threads:x?}, expected {expected:x} (only what running needs)"
    );
    let log = agent.log_text();
    ensure!(!log.contains("without CAP_"), "{what}: a capability warning under the shipped set:\n{log}");
    ensure!(log.contains("capabilities after start-up:"), "{what}: no line about the drop:\n{log}");
    println!(
        "{what}: holders named (pid {} socket 3, pid {} netns fd 3); CapEff of all {} threads {expected:#x}",
        holders.socket.0.pid(),
        holders.netns_fd.0.pid(),
        threads.len()
    );
    Ok(())
}

#[test]
fn every_feature_works_under_the_systemd_units_capabilities() -> Result<()> {
    everything_works_under("systemd unit", &systemd_caps()?)
}

#[test]
fn every_feature_works_under_the_daemonsets_capabilities() -> Result<()> {
    everything_works_under("DaemonSet", &daemonset_caps()?)
}

#[test]
fn the_shipped_sets_are_the_same() -> Result<()> {
    let (unit, ds) = (systemd_caps()?, daemonset_caps()?);
    ensure!(unit == ds, "systemd unit grants {unit:?}, the DaemonSet {ds:?}");
    Ok(())
}

/// Without `missing`, holders the agent cannot check show as unknown, the log says why once,
/// and `check` says what is lost.
fn holders_unknown_without(missing: &str, unknown: &[HeldBy]) -> Result<()> {
    let mut caps = systemd_caps()?;
    ensure!(caps.remove(missing), "the unit does not grant {missing}");
    caps.retain(|c| own_bounding().is_ok_and(|b| b & 1 << bit(c) != 0));
    let holders = NobodyHolders::new()?;
    let wrapper = setpriv(&caps);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let agent = Agent::start_wrapped(&wrapper, &["--attach", &mode()])?;
    for ((holder, inode), held_by) in holders.each() {
        let view = wait_for(
            &format!("the {} holder of {inode} looked for", held_by.kind()),
            Duration::from_secs(60),
            || orphan_view(&agent, *inode),
        )
        .with_context(|| agent.log_text())?;
        let show = agent.cli(&["show", &inode.to_string()])?;
        if unknown.contains(&held_by) {
            ensure!(
                view["holders"] == serde_json::json!([])
                    && view["holders_unchecked_processes"].as_u64() > Some(hidden_from_root().len() as u64),
                "without {missing}: the {} holder of {inode} should be unknown: {view}",
                held_by.kind()
            );
            ensure!(
                show.contains("held by") && show.contains("unknown:"),
                "`show` does not say unknown:\n{show}"
            );
        } else {
            ensure!(
                view["holders"][0]["pid"] == holder.pid(),
                "without {missing}: the {} holder of {inode} should still be found: {view}",
                held_by.kind()
            );
        }
    }
    let log = agent.log_text();
    let warning = format!("without CAP_{missing}");
    ensure!(log.matches(&warning).count() == 1, "without {missing}: expected one warning naming it:\n{log}");
    let out = std::process::Command::new(wrapper[0])
        .args(&wrapper[1..])
        .arg(agent_bin())
        .args(["check"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(text.contains(&warning), "`check` without {missing} does not say so:\n{text}");
    println!("without {missing}: {:?} holders unknown, one warning, `check` says it", unknown);
    Ok(())
}

#[test]
fn without_net_admin_socket_holders_are_unknown() -> Result<()> {
    holders_unknown_without("NET_ADMIN", &[HeldBy::Socket])
}

#[test]
fn without_dac_read_search_other_users_holders_are_unknown() -> Result<()> {
    holders_unknown_without("DAC_READ_SEARCH", &[HeldBy::Socket, HeldBy::NetnsFd])
}

/// A process with a secret in its command line and environment, the main process of a named
/// namespace: nothing the agent serves carries either.
#[test]
fn the_api_never_returns_command_lines_or_environments() -> Result<()> {
    let agent = Agent::start()?;
    let ns = NamedNetns::add("privns")?;
    let secret_arg = unique("argsecret");
    let secret_env = unique("envsecret");
    // `sh -c CMD NAME`: NAME becomes the shell's argv[0], in its command line.
    let sleeper = ChildProcess::spawn(
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            "env",
            &format!("TOKEN={secret_env}"),
            "sh",
            "-c",
            "sleep 600",
            &secret_arg,
        ],
    )?;
    let inode = ns.inode()?;
    // Wait until the agent shows the sleeper as the namespace's process.
    wait_for("the sleeper attributed", Duration::from_secs(60), || {
        Ok(agent
            .namespaces()?
            .into_iter()
            .find(|v| v["netns"] == inode && v["processes"].as_u64() >= Some(1)))
    })?;
    for path in ["/metrics", "/api/v1/namespaces", "/api/v1/events", "/"] {
        let body = agent.get(path)?;
        ensure!(
            !body.contains(&secret_arg) && !body.contains(&secret_env),
            "{path} carries a command line or environment"
        );
    }
    for args in [vec!["ls", "-o", "wide"], vec!["show", &ns.name], vec!["events"]] {
        let out = agent.cli(&args)?;
        ensure!(
            !out.contains(&secret_arg) && !out.contains(&secret_env),
            "`{}` shows a secret",
            args.join(" ")
        );
    }
    drop(sleeper);
    Ok(())
}
