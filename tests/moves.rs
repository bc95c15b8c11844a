//! Device moves, end to end: exact in/out counts per namespace, failures apart.
//!
//! The test's own namespaces count exactly. The host namespace is shared with whatever else
//! runs (container runtimes move veths out of it all the time): there its counters are only
//! bounded, and the journal's entries for the test's own devices are counted exactly.

use anyhow::{Result, ensure};
use netns_agent_e2e::{Agent, Metrics, NamedNetns, mode, run, unique, wait_for};
use serde_json::Value;

/// Moves counted for a namespace in one direction. The counters of a namespace start
/// absent (before its first move), so absent reads as none here; `ensure_no_moves` checks
/// absence explicitly where none may have happened.
fn moves(m: &Metrics, netns: u64, direction: &str) -> f64 {
    m.get_or_zero("netns_device_moves_total", &[("netns", &netns.to_string()), ("direction", direction)])
}

fn failures(m: &Metrics, netns: u64) -> f64 {
    m.get_or_zero("netns_device_move_failures_total", &[("netns", &netns.to_string())])
}

/// Journal entries of `kind` about device `device` after `since`.
fn journal(agent: &Agent, since: u64, kind: &str, device: &str) -> Result<Vec<Value>> {
    let (events, _) = agent.events_since(since)?;
    Ok(events.into_iter().filter(|e| e["kind"] == kind && e["device"] == device).collect())
}

fn host_netns() -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata("/proc/self/ns/net")?.ino())
}

/// A veth pair in the host namespace, deleted on drop wherever it went.
struct Veth(String, String);

impl Veth {
    fn new() -> Result<Self> {
        let (a, b) = (unique("mv"), unique("mp"));
        run("ip", &["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        Ok(Self(a, b))
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "del", &self.1]).output();
    }
}

#[test]
fn moves_host_to_x_to_y_and_back_count_exactly() -> Result<()> {
    // Routine moves are logged at debug only.
    let agent = Agent::start_with(&["--attach", &mode(), "--log.level", "debug"])?;
    let (x, y) = (NamedNetns::add("mx")?, NamedNetns::add("my")?);
    let (host, xi, yi) = (host_netns()?, x.inode()?, y.inode()?);
    let veth = Veth::new()?;
    let before = agent.scrape()?;
    let since = agent.last_seq()?;
    run("ip", &["link", "set", &veth.0, "netns", &x.name])?;
    run("ip", &["-n", &x.name, "link", "set", &veth.0, "netns", &y.name])?;
    run("ip", &["-n", &y.name, "link", "set", &veth.0, "netns", "1"])?;
    run("ip", &["link", "set", &veth.1, "netns", &y.name])?;
    let d = |m: &Metrics, netns: u64, dir: &str| moves(m, netns, dir) - moves(&before, netns, dir);
    // Wait for everything asserted below, then check it is exact (not more).
    let after = wait_for("4 moves", std::time::Duration::from_secs(10), || {
        let m = agent.scrape()?;
        let moved = journal(&agent, since, "device_moved", &veth.0)?.len()
            + journal(&agent, since, "device_moved", &veth.1)?.len();
        Ok((d(&m, yi, "in") >= 2.0
            && d(&m, yi, "out") >= 1.0
            && d(&m, xi, "in") >= 1.0
            && d(&m, xi, "out") >= 1.0
            && moved >= 4)
            .then_some(m))
    })?;
    ensure!(
        d(&after, xi, "in") == 1.0 && d(&after, xi, "out") == 1.0,
        "x in {} out {}",
        d(&after, xi, "in"),
        d(&after, xi, "out")
    );
    ensure!(
        d(&after, yi, "in") == 2.0 && d(&after, yi, "out") == 1.0,
        "y in {} out {}",
        d(&after, yi, "in"),
        d(&after, yi, "out")
    );
    // The host: our 3 moves through it exactly, from the journal; the counters at least
    // that (other devices leave and enter the host namespace meanwhile).
    let mut ours: Vec<Value> = journal(&agent, since, "device_moved", &veth.0)?;
    ours.extend(journal(&agent, since, "device_moved", &veth.1)?);
    let through = |field: &str| ours.iter().filter(|e| e[field] == host).count();
    ensure!(through("from_netns") == 2 && through("to_netns") == 1, "host moves in the journal: {ours:?}");
    ensure!(ours.len() == 4, "4 moves of our devices in the journal: {ours:?}");
    ensure!(
        d(&after, host, "out") >= 2.0 && d(&after, host, "in") >= 1.0,
        "host out {} in {}",
        d(&after, host, "out"),
        d(&after, host, "in")
    );
    // Our namespaces had moves, so their failure counters are exported, at 0.
    for ns in [xi, yi] {
        let failed = after.value("netns_device_move_failures_total", &[("netns", &ns.to_string())])?;
        ensure!(failed == 0.0, "{failed} failures in {ns}");
    }
    for dev in [&veth.0, &veth.1] {
        ensure!(journal(&agent, since, "device_move_failed", dev)?.is_empty(), "a failed move of {dev}");
    }
    ensure!(
        agent.log_text().contains(&format!("moved from netns {xi} to netns {yi}")),
        "{}",
        agent.log_text()
    );
    Ok(())
}

#[test]
fn a_failed_move_is_a_failure_not_a_move() -> Result<()> {
    let agent = Agent::start()?;
    let x = NamedNetns::add("mf")?;
    let (host, xi) = (host_netns()?, x.inode()?);
    // The destination already has a device of the same name: the move fails with EEXIST.
    let veth = Veth::new()?;
    run("ip", &["-n", &x.name, "link", "add", &veth.0, "type", "veth", "peer", "name", "p0"])?;
    let before = agent.scrape()?;
    let since = agent.last_seq()?;
    let out = std::process::Command::new("ip").args(["link", "set", &veth.0, "netns", &x.name]).output()?;
    ensure!(!out.status.success(), "the conflicting move succeeded");
    // Exactly ours, from the journal: one failure, no move.
    wait_for("the failure in the journal", std::time::Duration::from_secs(10), || {
        Ok((!journal(&agent, since, "device_move_failed", &veth.0)?.is_empty()).then_some(()))
    })?;
    let after = agent.scrape()?;
    ensure!(journal(&agent, since, "device_move_failed", &veth.0)?.len() == 1, "one failure in the journal");
    ensure!(journal(&agent, since, "device_moved", &veth.0)?.is_empty(), "a failure is not a move");
    // The host's counters are shared with other activity: at least ours.
    ensure!(failures(&after, host) - failures(&before, host) >= 1.0, "host failures");
    // X is ours: nothing may have moved in, and no series was made for it.
    ensure!(
        !after.has("netns_device_moves_total", &[("netns", &xi.to_string()), ("direction", "in")]),
        "a failure is not a move in"
    );
    ensure!(
        !after.has("netns_device_move_failures_total", &[("netns", &xi.to_string())]),
        "the failure is the host's"
    );
    // At the default log level a failed move is a warning line; routine moves (the veth
    // made in X moved nowhere, but other moves on the host may) are not logged.
    let log = agent.log_text();
    let device = veth.0.escape_debug().to_string();
    ensure!(
        log.lines().any(|l| l.contains(&format!("device {device} ")) && l.contains("failed to leave")),
        "no warning for the failed move: {log}"
    );
    ensure!(!log.contains(" moved from netns "), "a routine move logged at the default level: {log}");
    Ok(())
}

#[test]
fn the_agent_keeps_no_namespace_alive() -> Result<()> {
    // Moves and lookups in a namespace, then delete it: its teardown must happen, so the
    // agent holds no fd or socket there.
    let agent = Agent::start()?;
    let x = NamedNetns::add("hold")?;
    let veth = Veth::new()?;
    run("ip", &["link", "set", &veth.0, "netns", &x.name])?;
    run("ip", &["-n", &x.name, "link", "set", &veth.0, "netns", "1"])?;
    let inode = x.inode()?;
    x.delete()?;
    // This namespace's own teardown, from the journal (not any other namespace's).
    wait_for("the namespace's teardown", std::time::Duration::from_secs(20), || {
        let events = agent.cli(&["events", "--json", "--netns", &inode.to_string()])?;
        Ok(events.contains("\"kind\":\"netns_destroyed\"").then_some(()))
    })?;
    Ok(())
}

/// Moves device `ifindex` into the namespace of `netns_fd` the way Go CNI plugins do: one
/// RTM_NEWLINK request with IFLA_NET_NS_FD, sent with sendto(2) to a `sockaddr_nl`.
fn move_with_sendto(ifindex: i32, netns_fd: i32) -> Result<()> {
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    const IFLA_NET_NS_FD: u16 = 28;
    let mut msg = Vec::new();
    let len: u32 = 16 + 16 + 8;
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
    msg.extend_from_slice(&[0u8; 4]); // family, pad, type
    msg.extend_from_slice(&ifindex.to_ne_bytes());
    msg.extend_from_slice(&[0u8; 8]); // flags, change
    msg.extend_from_slice(&8u16.to_ne_bytes());
    msg.extend_from_slice(&IFLA_NET_NS_FD.to_ne_bytes());
    msg.extend_from_slice(&netns_fd.to_ne_bytes());
    // SAFETY: plain socket calls on buffers that outlive them; the fd is closed at the end.
    unsafe {
        let sock = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE);
        ensure!(sock >= 0, "netlink socket: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        let sent = libc::sendto(
            sock,
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        );
        let mut ack = [0u8; 256];
        let got = libc::recv(sock, ack.as_mut_ptr().cast(), ack.len(), 0);
        libc::close(sock);
        ensure!(sent == msg.len() as isize && got >= 36, "sendto {sent}, ack {got}");
        let error = i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]);
        ensure!(error == 0, "the kernel refused the move: errno {}", -error);
    }
    Ok(())
}

#[test]
fn a_move_requested_with_sendto_counts_like_any_other() -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let agent = Agent::start()?;
    let x = NamedNetns::add("mt")?;
    let (host, xi) = (host_netns()?, x.inode()?);
    let veth = Veth::new()?;
    let ifindex: i32 =
        std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", veth.0))?.trim().parse()?;
    let target = std::fs::File::open(format!("/run/netns/{}", x.name))?;
    let before = agent.scrape()?;
    let since = agent.last_seq()?;
    move_with_sendto(ifindex, target.as_raw_fd())?;
    drop(target);
    let after = wait_for("the move", std::time::Duration::from_secs(10), || {
        let m = agent.scrape()?;
        Ok((moves(&m, xi, "in") > moves(&before, xi, "in")).then_some(m))
    })?;
    ensure!(
        after.value("netns_device_moves_total", &[("netns", &xi.to_string()), ("direction", "in")])? == 1.0,
        "x in"
    );
    // The host: exactly our move in the journal, the counter at least that.
    let ours = wait_for("the move in the journal", std::time::Duration::from_secs(10), || {
        let ours = journal(&agent, since, "device_moved", &veth.0)?;
        Ok((!ours.is_empty()).then_some(ours))
    })?;
    ensure!(ours.len() == 1 && ours[0]["from_netns"] == host && ours[0]["to_netns"] == xi, "{ours:?}");
    ensure!(moves(&after, host, "out") - moves(&before, host, "out") >= 1.0, "host out");
    Ok(())
}
