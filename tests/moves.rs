//! Device moves, end to end: exact in/out counts per namespace, failures apart.

use anyhow::{Result, ensure};
use netns_agent_e2e::{Agent, Metrics, NamedNetns, run, unique, wait_for};

fn moves(m: &Metrics, netns: u64, direction: &str) -> f64 {
    m.get("netns_device_moves_total", &[("netns", &netns.to_string()), ("direction", direction)])
}

fn failures(m: &Metrics, netns: u64) -> f64 {
    m.get("netns_device_move_failures_total", &[("netns", &netns.to_string())])
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
    let agent = Agent::start()?;
    let (x, y) = (NamedNetns::add("mx")?, NamedNetns::add("my")?);
    let (host, xi, yi) = (host_netns()?, x.inode()?, y.inode()?);
    let veth = Veth::new()?;
    let before = agent.scrape()?;
    run("ip", &["link", "set", &veth.0, "netns", &x.name])?;
    run("ip", &["-n", &x.name, "link", "set", &veth.0, "netns", &y.name])?;
    run("ip", &["-n", &y.name, "link", "set", &veth.0, "netns", "1"])?;
    run("ip", &["link", "set", &veth.1, "netns", &y.name])?;
    let after = wait_for("4 moves", std::time::Duration::from_secs(10), || {
        let m = agent.scrape()?;
        Ok((moves(&m, yi, "in") - moves(&before, yi, "in") >= 2.0).then_some(m))
    })?;
    let d = |netns: u64, dir: &str| moves(&after, netns, dir) - moves(&before, netns, dir);
    ensure!(
        d(host, "out") == 2.0 && d(host, "in") == 1.0,
        "host out {} in {}",
        d(host, "out"),
        d(host, "in")
    );
    ensure!(d(xi, "in") == 1.0 && d(xi, "out") == 1.0, "x in {} out {}", d(xi, "in"), d(xi, "out"));
    ensure!(d(yi, "in") == 2.0 && d(yi, "out") == 1.0, "y in {} out {}", d(yi, "in"), d(yi, "out"));
    for ns in [host, xi, yi] {
        ensure!(failures(&after, ns) == failures(&before, ns), "no failures in {ns}");
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
    let out = std::process::Command::new("ip").args(["link", "set", &veth.0, "netns", &x.name]).output()?;
    ensure!(!out.status.success(), "the conflicting move succeeded");
    let after = agent.scrape()?;
    ensure!(failures(&after, host) - failures(&before, host) == 1.0, "host failures");
    ensure!(moves(&after, host, "out") == moves(&before, host, "out"), "a failure is not a move out");
    ensure!(moves(&after, xi, "in") == moves(&before, xi, "in"), "a failure is not a move in");
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
    move_with_sendto(ifindex, target.as_raw_fd())?;
    drop(target);
    let after = wait_for("the move", std::time::Duration::from_secs(10), || {
        let m = agent.scrape()?;
        Ok((moves(&m, xi, "in") > moves(&before, xi, "in")).then_some(m))
    })?;
    ensure!(moves(&after, xi, "in") - moves(&before, xi, "in") == 1.0, "x in");
    ensure!(moves(&after, host, "out") - moves(&before, host, "out") == 1.0, "host out");
    Ok(())
}
