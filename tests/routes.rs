//! Route lookups, end to end: whole lookups counted by their outcome, in the namespace where
//! they really happen, including lookups for forwarded packets made in softirq while another
//! namespace's task is current.
//!
//! What the kernel looks up per datagram in the A - R - B topology (no policy rules, so IPv4
//! searches `main` alone, where the local routes are merged, and IPv6 searches `local` then
//! `main`; permanent neighbours, no reverse-path filter), one lookup each:
//! - A's output lookup finds its default route; R's input lookup for the forwarded datagram
//!   finds the route to B; B's input lookup finds its own address. All hits: IPv6's miss in
//!   `local` on the way to `main` is a step of the lookup, never a failure.
//!
//! IPv6 multicast the kernel sends by itself (MLD reports after addresses appear) makes input
//! lookups at times no test knows: the tests wait until the topology makes no lookups of its
//! own before measuring, and still allow a few hits (multicast routes are there).

use std::collections::BTreeMap;

use anyhow::{Result, bail, ensure};
use netns_agent_e2e::{Agent, Metrics, NamedNetns, RouterTopology, in_netns, mode, run, send_udp, wait_for};

const K: u32 = 400;

/// Lookups the kernel makes by itself in a namespace of the topology during a test
/// (IPv6 MLD reports: a few per address change, none once settled).
const BACKGROUND: f64 = 20.0;

const LOOKUPS: &str = "netns_route_lookups_total";
const UNRESOLVED: &str = "netns_route_unresolved_misses_total";
const TABLES: &str = "netns_route_table_lookups_total";

/// Every route series of one namespace and family, keyed by (metric, table, result); the
/// table is empty for whole lookups, the result empty for unresolved misses.
type Key = (&'static str, String, String);

fn lookups(m: &Metrics, netns: u64, family: &str) -> BTreeMap<Key, f64> {
    lookups_labelled(m, &netns.to_string(), family)
}

/// As `lookups`, for a `netns` label (an inode number, or `unknown`).
fn lookups_labelled(m: &Metrics, netns: &str, family: &str) -> BTreeMap<Key, f64> {
    let mut out = BTreeMap::new();
    for name in [LOOKUPS, UNRESOLVED, TABLES] {
        for l in m.series(name).into_iter().filter(|l| l["netns"] == netns && l["family"] == family) {
            let labels: Vec<(&str, &str)> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            // Listed by `series`, so present.
            let value = m.get_or_zero(name, &labels);
            let get = |k: &str| l.get(k).cloned().unwrap_or_default();
            out.insert((name, get("table"), get("result")), value);
        }
    }
    out
}

/// What changed between two scrapes; unchanged keys left out.
fn delta(before: &Metrics, after: &Metrics, netns: u64, family: &str) -> BTreeMap<Key, f64> {
    let b = lookups(before, netns, family);
    lookups(after, netns, family)
        .into_iter()
        .map(|(k, v)| {
            let d = v - b.get(&k).copied().unwrap_or(0.0);
            (k, d)
        })
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

/// An expected delta of one series: between `lo` and `hi` (equal when exact). Series not
/// listed must not change.
struct Want(&'static str, &'static str, &'static str, f64, f64);

/// Whole lookups with this outcome: exactly `n`.
fn outcome(result: &'static str, n: f64) -> Want {
    Want(LOOKUPS, "", result, n, n)
}

/// Whole lookups with this outcome: `lo..=hi`.
fn outcome_in(result: &'static str, lo: f64, hi: f64) -> Want {
    Want(LOOKUPS, "", result, lo, hi)
}

fn check(what: &str, got: &BTreeMap<Key, f64>, want: &[Want]) -> Result<()> {
    for Want(name, table, result, lo, hi) in want {
        let key = (*name, (*table).to_owned(), (*result).to_owned());
        let v = got.get(&key).copied().unwrap_or(0.0);
        ensure!(
            v >= *lo && v <= *hi,
            "{what}: {name}{{{table}/{result}}} +{v}, want {}: all changes {got:?}",
            if lo == hi { format!("{lo}") } else { format!("{lo}..={hi}") }
        );
    }
    let unexpected: Vec<&Key> = got
        .keys()
        .filter(|(n, t, r)| !want.iter().any(|Want(wn, wt, wr, _, _)| wn == n && wt == t && wr == r))
        .collect();
    ensure!(unexpected.is_empty(), "{what}: unexpected lookups {unexpected:?}: all changes {got:?}");
    Ok(())
}

/// Whole lookups in a namespace's deltas.
fn total(d: &BTreeMap<Key, f64>) -> f64 {
    d.iter().filter(|((n, _, _), _)| *n == LOOKUPS).map(|(_, v)| v).sum()
}

/// Whole lookups with this outcome in a namespace's deltas.
fn outcomes(d: &BTreeMap<Key, f64>, result: &str) -> f64 {
    d.get(&(LOOKUPS, String::new(), result.to_owned())).copied().unwrap_or(0.0)
}

/// A UDP socket listening on port 9 in B, so that datagrams to B are delivered, not
/// answered with ICMP port unreachable (whose number the kernel's rate limit decides).
fn sink(topo: &RouterTopology, family: &str) -> Result<std::net::UdpSocket> {
    let addr = if family == "ipv4" { "0.0.0.0:9" } else { "[::]:9" };
    in_netns(&topo.b.name, move || {
        let socket = std::net::UdpSocket::bind(addr)?;
        Ok(socket)
    })
}

/// Waits until the topology's namespaces make no lookups of their own: after links come up
/// the kernel sends IPv6 multicast (MLD reports for the new addresses) for a few seconds.
fn wait_quiet(agent: &Agent, topo: &RouterTopology) -> Result<()> {
    wait_quiet_in(agent, &[topo.a.inode()?, topo.r.inode()?, topo.b.inode()?])
}

/// Waits until these namespaces make no lookups of their own (see `wait_quiet`).
fn wait_quiet_in(agent: &Agent, namespaces: &[u64]) -> Result<()> {
    let all = |m: &Metrics| -> Vec<BTreeMap<Key, f64>> {
        namespaces.iter().flat_map(|ns| ["ipv4", "ipv6"].map(|f| lookups(m, *ns, f))).collect()
    };
    let quiet_for = std::time::Duration::from_secs(1) * netns_agent_e2e::slowdown();
    let mut last = (all(&agent.scrape()?), std::time::Instant::now());
    wait_for("the topology to make no lookups of its own", std::time::Duration::from_secs(30), || {
        let now = all(&agent.scrape()?);
        if now != last.0 {
            last = (now, std::time::Instant::now());
            return Ok(None);
        }
        Ok((last.1.elapsed() >= quiet_for).then_some(()))
    })
}

/// Sends K routable datagrams A -> B and checks the exact lookups in A, R and B.
fn routable_round(agent: &Agent, topo: &RouterTopology, family: &str) -> Result<()> {
    let (a, r, b) = (topo.a.inode()?, topo.r.inode()?, topo.b.inode()?);
    wait_quiet(agent, topo)?;
    let dst = if family == "ipv4" { "10.77.2.2:9" } else { "[fd77:2::2]:9" };
    let _sink = sink(topo, family)?;
    let before = agent.scrape()?;
    send_udp(&topo.a.name, dst, K)?;
    let k = f64::from(K);
    // Delivery through the veths finishes in softirq after the sends return.
    let after =
        wait_for("every datagram forwarded and delivered", std::time::Duration::from_secs(10), || {
            let m = agent.scrape()?;
            let done = [a, r, b].iter().all(|ns| total(&delta(&before, &m, *ns, family)) >= k);
            Ok(done.then_some(m))
        })?;
    let (da, dr, db) = (
        delta(&before, &after, a, family),
        delta(&before, &after, r, family),
        delta(&before, &after, b, family),
    );
    if family == "ipv4" {
        check("ipv4 sender", &da, &[outcome("hit", k)])?;
        check("ipv4 router", &dr, &[outcome("hit", k)])?;
        check("ipv4 receiver", &db, &[outcome("hit", k)])?;
    } else {
        check("ipv6 sender", &da, &[outcome_in("hit", k, k + BACKGROUND)])?;
        check("ipv6 router", &dr, &[outcome_in("hit", k, k + BACKGROUND)])?;
        check("ipv6 receiver", &db, &[outcome_in("hit", k, k + BACKGROUND)])?;
    }
    Ok(())
}

#[test]
fn forwarded_packets_count_exactly_in_the_sender_router_and_receiver() -> Result<()> {
    let topo = RouterTopology::new()?;
    let agent = Agent::start()?;
    for family in ["ipv4", "ipv6"] {
        routable_round(&agent, &topo, family)?;
    }
    Ok(())
}

#[test]
fn unroutable_packets_fail_in_the_router_never_in_the_sender() -> Result<()> {
    let topo = RouterTopology::new()?;
    let agent = Agent::start()?;
    let (a, r) = (topo.a.inode()?, topo.r.inode()?);
    let k = f64::from(K);
    for (family, unroutable) in [("ipv4", "10.99.0.1:9"), ("ipv6", "[fd99::1]:9")] {
        // Routable traffic first: exact, and R's tables have had hits (with kprobe/fentry an
        // IPv4 miss is attributed to the namespace owning the table, learned from its hits).
        routable_round(&agent, &topo, family)?;
        wait_quiet(&agent, &topo)?;
        let before = agent.scrape()?;
        send_udp(&topo.a.name, unroutable, K)?;
        let after =
            wait_for("every datagram refused by the router", std::time::Duration::from_secs(10), || {
                let m = agent.scrape()?;
                Ok((outcomes(&delta(&before, &m, r, family), "no_route") >= k).then_some(m))
            })?;
        let (da, dr) = (delta(&before, &after, a, family), delta(&before, &after, r, family));
        // R answers refused datagrams with ICMP errors as its rate limits allow: a number
        // no test knows (0 to K). Each error R considers costs it route lookups toward A
        // (hits): the route back, and a second look by the IPsec policy check. IPv6 does this
        // for every refused datagram and checks its rate limit after; IPv4 checks a global
        // limit first. So n, R's hits, is at most a few per datagram and bounds the errors A
        // receives and looks up on input (a hit for its own address).
        let n = outcomes(&dr, "hit");
        ensure!(n <= 3.0 * k, "{family}: {n} lookups for ICMP errors for {K} datagrams: {dr:?}");
        let background = if family == "ipv6" { BACKGROUND } else { 0.0 };
        // A's lookups all succeed (its default route); a failure in A would be R's
        // misattributed. R's failures are the datagrams it could not route, each once.
        check(&format!("{family} sender"), &da, &[outcome_in("hit", k, k + n + background)])?;
        check(
            &format!("{family} router"),
            &dr,
            &[outcome_in("no_route", k, k + 2.0 * n), outcome_in("hit", n, n)],
        )?;
    }
    Ok(())
}

// ---- Devices stacked on others, and receive in process context (IPv4) ----------------------
//
// The router receives A's datagrams through a device stacked on another one (the kernel's
// receive path changes `skb->dev` from the lower device to the upper one and goes round
// again, after `netif_receive_skb` has fired for the lower), or from a process writing into
// a tun device (receive in that process's context, outside any softirq). The lower devices
// live in a namespace of their own, P, with no address: a lookup counted there is a
// misattribution. Hits are exact by their nexthop device in every mode; the misses are what
// these tests are about. IPv6 is off in these namespaces (its lookups carry their namespace
// and are exact; off, they make no background traffic).

/// The device R receives A's datagrams through, stacked on a veth whose other end is A's.
#[derive(Clone, Copy, Debug)]
enum Stack {
    Macvlan,
    Ipvlan,
    Vlan,
}

const MAC_A: &str = "02:78:01:00:00:02";
const MAC_RA: &str = "02:78:01:00:00:01";
const MAC_LOWER: &str = "02:78:01:00:00:99";
const MAC_B: &str = "02:78:02:00:00:02";
const MAC_RB: &str = "02:78:02:00:00:01";

/// A local address of R in the ipvlan test whose local route the test deletes: datagrams to
/// it reach R (ipvlan hands them to the device holding the address) and miss there.
const IPVLAN_UNROUTABLE: &str = "10.78.9.50";

fn ip(ns: &NamedNetns, args: &str) -> Result<()> {
    let mut full = vec!["-n", ns.name.as_str()];
    full.extend(args.split_whitespace());
    run("ip", &full).map(|_| ())
}

/// No IPv6, no reverse-path filter (its check is one more lookup per packet), forwarding.
fn quiet_ipv4_namespace(prefix: &str) -> Result<NamedNetns> {
    let ns = NamedNetns::add(prefix)?;
    ip(&ns, "link set lo up")?;
    run(
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.ip_forward=1",
        ],
    )?;
    Ok(ns)
}

/// R's link to B, and B: vb 10.78.2.2/24 with a default route via R's 10.78.2.1.
fn link_router_to_receiver(r: &NamedNetns, b: &NamedNetns) -> Result<()> {
    ip(b, &format!("link add vb address {MAC_B} type veth peer name vrb address {MAC_RB} netns {}", r.name))?;
    ip(r, "addr add 10.78.2.1/24 dev vrb")?;
    ip(r, "link set vrb up")?;
    ip(r, &format!("neigh replace 10.78.2.2 lladdr {MAC_B} dev vrb nud permanent"))?;
    ip(b, "addr add 10.78.2.2/24 dev vb")?;
    ip(b, "link set vb up")?;
    ip(b, "route add default via 10.78.2.1")?;
    ip(b, &format!("neigh replace 10.78.2.1 lladdr {MAC_RB} dev vb nud permanent"))
}

/// A - P - R - B: A's veth ends in P, where the stacked device is made on it and moved to R
/// (as `vra`, 10.78.1.1/24); R forwards to B. A: 10.78.1.2/24, default via R.
struct StackedTopology {
    a: NamedNetns,
    p: NamedNetns,
    r: NamedNetns,
    b: NamedNetns,
}

impl StackedTopology {
    fn new(stack: Stack) -> Result<Self> {
        let (a, p, r, b) = (
            quiet_ipv4_namespace("sa")?,
            quiet_ipv4_namespace("sp")?,
            quiet_ipv4_namespace("sr")?,
            quiet_ipv4_namespace("sb")?,
        );
        // A's end: `va` itself, or a VLAN on it (tagged frames for R's VLAN device).
        let a_lower = if matches!(stack, Stack::Vlan) { "val" } else { "va" };
        // Upper devices other than macvlan take their lower device's address.
        let lower_mac = if matches!(stack, Stack::Macvlan) { MAC_LOWER } else { MAC_RA };
        ip(
            &a,
            &format!(
                "link add {a_lower} address {MAC_A} type veth peer name vp address {lower_mac} netns {}",
                p.name
            ),
        )?;
        ip(&p, "link set vp up")?;
        match stack {
            Stack::Macvlan => {
                ip(&p, &format!("link add vra link vp address {MAC_RA} type macvlan mode bridge"))?
            }
            Stack::Ipvlan => ip(&p, "link add vra link vp type ipvlan mode l2")?,
            Stack::Vlan => {
                ip(&p, "link add vra link vp type vlan id 78")?;
                ip(&a, "link add va link val type vlan id 78")?;
                ip(&a, "link set val up")?;
            }
        }
        ip(&p, &format!("link set vra netns {}", r.name))?;
        ip(&r, "addr add 10.78.1.1/24 dev vra")?;
        ip(&r, "link set vra up")?;
        ip(&r, &format!("neigh replace 10.78.1.2 lladdr {MAC_A} dev vra nud permanent"))?;
        if matches!(stack, Stack::Ipvlan) {
            // A /32 adds no prefix route; without its local route nothing in R routes it.
            ip(&r, &format!("addr add {IPVLAN_UNROUTABLE}/32 dev vra"))?;
            ip(&r, &format!("route del local {IPVLAN_UNROUTABLE} dev vra table local"))?;
        }
        link_router_to_receiver(&r, &b)?;
        ip(&a, "addr add 10.78.1.2/24 dev va")?;
        ip(&a, "link set va up")?;
        ip(&a, "route add default via 10.78.1.1")?;
        ip(&a, &format!("neigh replace 10.78.1.1 lladdr {MAC_RA} dev va nud permanent"))?;
        Ok(Self { a, p, r, b })
    }

    fn inodes(&self) -> Result<[u64; 4]> {
        Ok([self.a.inode()?, self.p.inode()?, self.r.inode()?, self.b.inode()?])
    }
}

/// A UDP socket on port 9 in namespace `ns`, so that datagrams are delivered, not answered.
fn sink_in(ns: &NamedNetns) -> Result<std::net::UdpSocket> {
    in_netns(&ns.name, || Ok(std::net::UdpSocket::bind("0.0.0.0:9")?))
}

impl Stack {
    /// The `ip link` type, and the kernel option that provides it.
    fn kind(self) -> (&'static str, &'static str) {
        match self {
            Stack::Macvlan => ("macvlan", "CONFIG_MACVLAN"),
            Stack::Ipvlan => ("ipvlan", "CONFIG_IPVLAN"),
            Stack::Vlan => ("vlan", "CONFIG_VLAN_8021Q"),
        }
    }

    /// Whether this kernel makes such devices (built in, or a module `ip link add` loads):
    /// some kernels have none (the CI host's has no vlan or ipvlan; the VM kernels have all).
    fn available(self) -> Result<bool> {
        let ns = NamedNetns::add("sk")?;
        ip(&ns, "link add skl type veth peer name skp")?;
        let (kind, _) = self.kind();
        let args = match self {
            Stack::Vlan => "link add sku link skl type vlan id 2".to_owned(),
            _ => format!("link add sku link skl type {kind}"),
        };
        let out = std::process::Command::new("ip").args(["-n", &ns.name]).args(args.split(' ')).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success() || stderr.contains("Unknown device type"),
            "ip link add type {kind}: {}",
            stderr.trim()
        );
        Ok(out.status.success())
    }
}

/// Forwarded hits then misses through a stacked device, exact per namespace.
fn stacked_device_rounds(stack: Stack) -> Result<()> {
    if !stack.available()? {
        // Never a silent pass: `cargo xtask test` skips it by name on such a kernel, says so
        // in the tier's row, and the VM kernels run it.
        let (kind, option) = stack.kind();
        bail!(
            "this kernel makes no {kind} devices ({option} unset): run this test on a kernel that has them"
        );
    }
    let topo = StackedTopology::new(stack)?;
    let agent = Agent::start()?;
    let [a, p, r, b] = topo.inodes()?;
    let k = f64::from(K);
    let what = |ns: &str| format!("{stack:?}, {ns}");

    // Hits. ipvlan hands a device only the datagrams addressed to its own addresses, so
    // nothing is forwarded through it: R's own address, delivered in R, instead.
    let (dst, sink) = match stack {
        Stack::Ipvlan => ("10.78.1.1:9", sink_in(&topo.r)?),
        _ => ("10.78.2.2:9", sink_in(&topo.b)?),
    };
    wait_quiet_in(&agent, &[a, p, r, b])?;
    let before = agent.scrape()?;
    send_udp(&topo.a.name, dst, K)?;
    let receivers: &[u64] = if matches!(stack, Stack::Ipvlan) { &[a, r] } else { &[a, r, b] };
    let after = wait_for("every datagram received", std::time::Duration::from_secs(10), || {
        let m = agent.scrape()?;
        let done = receivers.iter().all(|ns| total(&delta(&before, &m, *ns, "ipv4")) >= k);
        Ok(done.then_some(m))
    })?;
    check(&what("sender"), &delta(&before, &after, a, "ipv4"), &[outcome("hit", k)])?;
    check(&what("lower device's namespace"), &delta(&before, &after, p, "ipv4"), &[])?;
    check(&what("router"), &delta(&before, &after, r, "ipv4"), &[outcome("hit", k)])?;
    let want_b: &[Want] = if matches!(stack, Stack::Ipvlan) { &[] } else { &[outcome("hit", k)] };
    check(&what("receiver"), &delta(&before, &after, b, "ipv4"), want_b)?;
    drop(sink);

    // Misses in R, received through the stacked device (see the unroutable test above for R's
    // ICMP errors and the lookups they cost).
    let unroutable = match stack {
        Stack::Ipvlan => format!("{IPVLAN_UNROUTABLE}:9"),
        _ => "10.99.0.1:9".to_owned(),
    };
    wait_quiet_in(&agent, &[a, p, r, b])?;
    let before = agent.scrape()?;
    send_udp(&topo.a.name, &unroutable, K)?;
    let after = wait_for("every datagram refused by the router", std::time::Duration::from_secs(10), || {
        let m = agent.scrape()?;
        Ok((outcomes(&delta(&before, &m, r, "ipv4"), "no_route") >= k).then_some(m))
    })?;
    let dr = delta(&before, &after, r, "ipv4");
    let n = outcomes(&dr, "hit");
    ensure!(n <= 3.0 * k, "{stack:?}: {n} lookups for ICMP errors for {K} datagrams: {dr:?}");
    check(&what("sender, misses"), &delta(&before, &after, a, "ipv4"), &[outcome_in("hit", k, k + n)])?;
    check(&what("lower device's namespace, misses"), &delta(&before, &after, p, "ipv4"), &[])?;
    check(&what("router, misses"), &dr, &[outcome_in("no_route", k, k + 2.0 * n), outcome_in("hit", n, n)])?;
    check(&what("receiver, misses"), &delta(&before, &after, b, "ipv4"), &[])?;
    Ok(())
}

#[test]
fn lookups_of_packets_received_through_a_macvlan_count_in_its_namespace() -> Result<()> {
    stacked_device_rounds(Stack::Macvlan)
}

#[test]
fn lookups_of_packets_received_through_an_ipvlan_count_in_its_namespace() -> Result<()> {
    stacked_device_rounds(Stack::Ipvlan)
}

#[test]
fn lookups_of_packets_received_through_a_vlan_count_in_its_namespace() -> Result<()> {
    stacked_device_rounds(Stack::Vlan)
}

/// An IPv4 UDP datagram to port 9 (header checksum computed; UDP checksum 0: none).
fn udp_packet(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let payload = b"netns-agent";
    let len = (20 + 8 + payload.len()) as u16;
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p.extend(src);
    p.extend(dst);
    let sum = p.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend(4000u16.to_be_bytes());
    p.extend(9u16.to_be_bytes());
    p.extend((len - 20).to_be_bytes());
    p.extend([0, 0]);
    p.extend(payload);
    p
}

/// Attaches to the tun device `name` of namespace `tun_ns`, then moves the thread to
/// `own_ns` and, `count` times: writes a datagram for B (forwarded by R), writes one R
/// cannot route, and sends one from `own_ns` where nothing routes it (a miss of its own).
fn tun_writer(tun_ns: &str, name: &str, own_ns: &str, count: u32) -> Result<()> {
    use std::{io::Write as _, os::fd::AsRawFd as _};
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TUN: i16 = 0x0001;
    const IFF_NO_PI: i16 = 0x1000;
    let (name, own) = (name.to_owned(), format!("/run/netns/{own_ns}"));
    in_netns(tun_ns, move || {
        let mut tun = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
        // struct ifreq: the name (16 bytes), then the flags.
        let mut ifr = [0u8; 40];
        ifr[..name.len()].copy_from_slice(name.as_bytes());
        ifr[16..18].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is large enough for.
        if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) } != 0 {
            anyhow::bail!("TUNSETIFF {name}: {}", std::io::Error::last_os_error());
        }
        let ns = std::fs::File::open(&own)?;
        // SAFETY: setns on a valid nsfs fd; it only changes this thread's namespace.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            anyhow::bail!("setns {own}: {}", std::io::Error::last_os_error());
        }
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let forwarded = udp_packet([10, 78, 1, 2], [10, 78, 2, 2]);
        let refused = udp_packet([10, 78, 1, 2], [10, 99, 0, 1]);
        for _ in 0..count {
            tun.write_all(&forwarded)?;
            tun.write_all(&refused)?;
            // No route: the error is the point.
            let _ = socket.send_to(b"netns-agent", "10.66.0.1:9");
        }
        Ok(())
    })
}

#[test]
fn lookups_of_packets_written_into_a_tun_count_in_its_namespace_and_the_writers_in_its_own() -> Result<()> {
    // A: the writer's namespace (no routes); R: the tun device `vrt`, 10.78.1.1/24, routing to B.
    let (a, r, b) = (quiet_ipv4_namespace("ta")?, quiet_ipv4_namespace("tr")?, quiet_ipv4_namespace("tb")?);
    // A kernel with tun as a module (the VM kernels) makes /dev/net/tun only once it is
    // loaded, and opening the missing node cannot load it.
    if !std::path::Path::new("/dev/net/tun").exists() {
        run("modprobe", &["tun"])?;
    }
    ip(&r, "tuntap add dev vrt mode tun")?;
    ip(&r, "addr add 10.78.1.1/24 dev vrt")?;
    ip(&r, "link set vrt up")?;
    link_router_to_receiver(&r, &b)?;
    let agent = Agent::start()?;
    let (ia, ir, ib) = (a.inode()?, r.inode()?, b.inode()?);
    let _sink = sink_in(&b)?;
    let k = f64::from(K);
    wait_quiet_in(&agent, &[ia, ir, ib])?;
    let before = agent.scrape()?;
    // The writes are received in the writer's context: R's lookups for them are over when
    // each write returns; B receives the forwarded ones in softirq.
    tun_writer(&r.name, "vrt", &a.name, K)?;
    let after =
        wait_for("every datagram forwarded and delivered", std::time::Duration::from_secs(10), || {
            let m = agent.scrape()?;
            Ok((outcomes(&delta(&before, &m, ib, "ipv4"), "hit") >= k).then_some(m))
        })?;
    let dr = delta(&before, &after, ir, "ipv4");
    // R's hits: the forwarded datagrams, and the lookups of the ICMP errors it sends back
    // into the tun for refused ones (rate-limited: 0..K errors, a few lookups each).
    let n = outcomes(&dr, "hit") - k;
    ensure!((0.0..=3.0 * k).contains(&n), "tun: {n} lookups for ICMP errors for {K} datagrams: {dr:?}");
    check("tun writer's namespace", &delta(&before, &after, ia, "ipv4"), &[outcome("no_route", k)])?;
    check("tun router", &dr, &[outcome_in("no_route", k, k + 2.0 * n), outcome("hit", k + n)])?;
    check("tun receiver", &delta(&before, &after, ib, "ipv4"), &[outcome("hit", k)])?;
    Ok(())
}

/// A namespace whose lookups the test makes one by one with `ip route get`.
struct RouteGet {
    ns: NamedNetns,
    inode: u64,
}

impl RouteGet {
    fn new(agent: &Agent, prefix: &str) -> Result<Self> {
        let ns = NamedNetns::add(prefix)?;
        let inode = ns.inode()?;
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        // The agent knows the namespace (its creation was seen) before the first lookup.
        wait_for("the namespace to be tracked", std::time::Duration::from_secs(10), || {
            let m = agent.scrape()?;
            Ok(m.get("netns_created_timestamp_seconds", &[("netns", &inode.to_string())]).map(|_| ()))
        })?;
        Ok(Self { ns, inode })
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.ns.name.as_str()];
        all.extend(args);
        run("ip", &all).map(|_| ())
    }

    /// One `ip route get` of `addr`; the changes it made to the namespace's series.
    fn get(&self, agent: &Agent, family: &str, addr: &str) -> Result<BTreeMap<Key, f64>> {
        let flag = if family == "ipv4" { "-4" } else { "-6" };
        let before = agent.scrape()?;
        // Its exit status is the lookup's: failures are expected here.
        let _ = std::process::Command::new("ip")
            .args(["-n", &self.ns.name, flag, "route", "get", addr])
            .output()?;
        // Counted before `ip` returns (the lookup runs in its syscall).
        let after = agent.scrape()?;
        Ok(delta(&before, &after, self.inode, family))
    }
}

#[test]
fn every_outcome_counts_once_with_its_kind_and_successful_lookups_only_as_hits() -> Result<()> {
    let agent = Agent::start()?;
    let t = RouteGet::new(&agent, "rk")?;
    for (family, flag, prefix) in [("ipv4", "-4", "10.50"), ("ipv6", "-6", "2001:db8:50")] {
        for kind in ["unreachable", "prohibit", "blackhole"] {
            let n = match kind {
                "unreachable" => 1,
                "prohibit" => 2,
                _ => 3,
            };
            let (net, addr) = if family == "ipv4" {
                (format!("{prefix}.{n}.0/24"), format!("{prefix}.{n}.1"))
            } else {
                (format!("{prefix}:{n}::/64"), format!("{prefix}:{n}::1"))
            };
            t.ip(&[flag, "route", "add", kind, &net])?;
            let d = t.get(&agent, family, &addr)?;
            check(&format!("{family} {kind} route"), &d, &[outcome(kind, 1.0)])?;
        }
    }
    // Own addresses hit; addresses with no route anywhere fail once, whatever the number
    // of tables consulted (IPv6: local, then main).
    for (family, addr, result) in [
        ("ipv4", "127.0.0.1", "hit"),
        ("ipv4", "10.1.2.3", "no_route"),
        ("ipv6", "::1", "hit"),
        ("ipv6", "2001:db8::1", "no_route"),
    ] {
        let d = t.get(&agent, family, addr)?;
        check(&format!("{family} {addr}"), &d, &[outcome(result, 1.0)])?;
    }
    // A route on a device, found in main after IPv6 missed in local: one hit, nothing else.
    t.ip(&["-6", "route", "add", "2001:db8:77::/64", "dev", "lo"])?;
    let d = t.get(&agent, "ipv6", "2001:db8:77::1")?;
    check("ipv6 local then main", &d, &[outcome("hit", 1.0)])?;
    Ok(())
}

#[test]
fn policy_rules_never_turn_a_successful_lookup_into_a_failure() -> Result<()> {
    let agent = Agent::start()?;
    let t = RouteGet::new(&agent, "pr")?;
    // Rules: 10.60/16 to table 100 (populated), 10.61/16 to table 101 (never created), 10.62/16
    // to table 102 (exists, no route for it). Main routes 10.61/16 and 10.62/16 via lo.
    t.ip(&["rule", "add", "to", "10.60.0.0/16", "table", "100"])?;
    t.ip(&["route", "add", "10.60.0.0/16", "dev", "lo", "table", "100"])?;
    t.ip(&["rule", "add", "to", "10.61.0.0/16", "table", "101"])?;
    t.ip(&["rule", "add", "to", "10.62.0.0/16", "table", "102"])?;
    t.ip(&["route", "add", "10.200.0.0/16", "dev", "lo", "table", "102"])?;
    for net in ["10.61.0.0/16", "10.62.0.0/16"] {
        t.ip(&["route", "add", net, "dev", "lo"])?;
    }
    t.ip(&["route", "add", "unreachable", "10.63.0.0/16"])?;
    t.ip(&["rule", "add", "to", "10.64.0.0/16", "prohibit"])?;
    // kprobe and fentry see `fib_rules_lookup` return: every lookup's outcome, exactly. The
    // tracepoints see only the tables: one that answers ends the lookup (exact), one without
    // a route may be a step toward a later rule or the end of a failed lookup, so it is
    // counted as unresolved, never as a failure; a rule action consults no table at all.
    let hooked = mode() != "tracepoint";
    // (address, outcome with the rules hooked; outcome and unresolved misses without).
    type Case = (&'static str, &'static str, Option<&'static str>, f64);
    let cases: [Case; 7] = [
        ("10.60.0.1", "hit", Some("hit"), 1.0), // local miss, 100 hit
        ("10.61.0.1", "hit", Some("hit"), 1.0), // local miss, (101 absent), main hit
        ("10.62.0.1", "hit", Some("hit"), 2.0), // local miss, 102 miss, main hit
        ("127.0.0.1", "hit", Some("hit"), 0.0), // local hit
        ("10.63.0.1", "unreachable", Some("unreachable"), 1.0), // local miss, main unreachable
        ("10.64.0.1", "prohibit", None, 1.0),   // local miss, the prohibit rule
        ("10.99.0.1", "no_route", None, 2.0),   // local miss, main miss
    ];
    for (addr, exact, seen, unresolved) in cases {
        let d = t.get(&agent, "ipv4", addr)?;
        let want: Vec<Want> = if hooked {
            vec![outcome(exact, 1.0)]
        } else {
            let mut want: Vec<Want> = seen.into_iter().map(|r| outcome(r, 1.0)).collect();
            if unresolved > 0.0 {
                want.push(Want(UNRESOLVED, "", "", unresolved, unresolved));
            }
            want
        };
        check(&format!("ipv4 with rules ({}), {addr}", mode()), &d, &want)?;
    }
    // IPv6 with a rule: the same.
    t.ip(&["-6", "rule", "add", "to", "2001:db8:60::/48", "table", "100"])?;
    t.ip(&["-6", "route", "add", "2001:db8:60::/48", "dev", "lo", "table", "100"])?;
    let d = t.get(&agent, "ipv6", "2001:db8:60::1")?;
    let want = if hooked {
        vec![outcome("hit", 1.0)]
    } else {
        vec![outcome("hit", 1.0), Want(UNRESOLVED, "", "", 1.0, 1.0)]
    };
    check(&format!("ipv6 with rules ({})", mode()), &d, &want)?;
    let d = t.get(&agent, "ipv6", "2001:db8:99::1")?;
    let want = if hooked { vec![outcome("no_route", 1.0)] } else { vec![Want(UNRESOLVED, "", "", 2.0, 2.0)] };
    check(&format!("ipv6 with rules, no route ({})", mode()), &d, &want)?;
    Ok(())
}

#[test]
fn table_detail_says_which_tables_a_lookup_consulted() -> Result<()> {
    let agent = Agent::start_with_config("route_table_detail = true\n")?;
    let t = RouteGet::new(&agent, "td")?;
    let table = |table: &'static str, result: &'static str| Want(TABLES, table, result, 1.0, 1.0);
    let d = t.get(&agent, "ipv6", "2001:db8::1")?;
    check(
        "ipv6 no route",
        &d,
        &[outcome("no_route", 1.0), table("local", "no_route"), table("main", "no_route")],
    )?;
    t.ip(&["-6", "route", "add", "2001:db8:77::/64", "dev", "lo"])?;
    let d = t.get(&agent, "ipv6", "2001:db8:77::1")?;
    check("ipv6 main hit", &d, &[outcome("hit", 1.0), table("local", "no_route"), table("main", "hit")])?;
    let d = t.get(&agent, "ipv4", "127.0.0.1")?;
    check("ipv4 merged local", &d, &[outcome("hit", 1.0), table("main", "hit")])?;
    Ok(())
}

/// The IPv4 misses counted for no namespace (`netns="unknown"`), whole and unresolved.
fn unknown_misses(m: &Metrics) -> f64 {
    lookups_labelled(m, "unknown", "ipv4")
        .iter()
        .filter(|((name, table, result), _)| {
            table.is_empty() && (*name == UNRESOLVED || (*name == LOOKUPS && result == "no_route"))
        })
        .map(|(_, v)| v)
        .sum()
}

/// A vxlan tunnel made in U (its underlay) and moved to O: each datagram O sends through it
/// makes the tunnel look up the route to its remote end in U, from O's sending task. U has
/// no such route: K misses that are U's, never O's. Where the agent cannot place them
/// (tracepoint mode, which sees no table; any mode while U's table has never had a hit) they
/// are `unknown`; once U's table has had a hit, kprobe and fentry modes count them in U.
/// The agent starts first: a table that exists at start-up is known from the inventory.
#[test]
fn a_tunnels_underlay_misses_never_count_in_the_senders_namespace() -> Result<()> {
    let agent = Agent::start()?;
    let (u, o) = (quiet_ipv4_namespace("tu")?, quiet_ipv4_namespace("to")?);
    // U's main table: a connected route, none to the remote end 192.0.2.79.
    ip(&u, "link add tul address 02:79:00:00:00:01 type veth peer name tup address 02:79:00:00:00:02")?;
    ip(&u, "addr add 10.79.0.1/24 dev tul")?;
    ip(&u, "link set tup up")?;
    ip(&u, "link set tul up")?;
    ip(&u, "neigh replace 10.79.0.2 lladdr 02:79:00:00:00:02 dev tul nud permanent")?;
    ip(&u, "link add vx79 type vxlan id 79 remote 192.0.2.79 dstport 4789")?;
    ip(&u, &format!("link set vx79 netns {}", o.name))?;
    ip(&o, "addr add 10.79.1.1/24 dev vx79")?;
    ip(&o, "link set vx79 up")?;
    ip(&o, "neigh replace 10.79.1.2 lladdr 02:79:00:00:01:02 dev vx79 nud permanent")?;
    let (ui, oi) = (u.inode()?, o.inode()?);
    let k = f64::from(K);

    // One round: K datagrams from O through the tunnel; O's own lookups are K hits.
    let round = |what: &str, want_u: &[Want]| -> Result<()> {
        wait_quiet_in(&agent, &[ui, oi])?;
        let before = agent.scrape()?;
        send_udp(&o.name, "10.79.1.2:9", K)?;
        let after = wait_for("the sender's lookups counted", std::time::Duration::from_secs(10), || {
            let m = agent.scrape()?;
            Ok((total(&delta(&before, &m, oi, "ipv4")) >= k).then_some(m))
        })?;
        check(&format!("{what}: sender"), &delta(&before, &after, oi, "ipv4"), &[outcome("hit", k)])?;
        let du = delta(&before, &after, ui, "ipv4");
        check(&format!("{what}: underlay"), &du, want_u)?;
        // The misses happened (the tunnel looked its remote end up each time): in U, or
        // unknown (other namespaces of a busy host may add unknown misses of their own).
        let unknown = unknown_misses(&after) - unknown_misses(&before);
        ensure!(
            outcomes(&du, "no_route") + unknown >= k,
            "{what}: {K} underlay misses neither in U nor unknown: U {du:?}, unknown +{unknown}"
        );
        Ok(())
    };
    round("U's table never hit", &[])?;

    // U's table hits once (a datagram to its neighbour): kprobe and fentry learn its owner.
    let before = agent.scrape()?;
    send_udp(&u.name, "10.79.0.2:9", 1)?;
    wait_for("the underlay's hit counted", std::time::Duration::from_secs(10), || {
        Ok((outcomes(&delta(&before, &agent.scrape()?, ui, "ipv4"), "hit") >= 1.0).then_some(()))
    })?;
    if mode() == "tracepoint" {
        round("U's table has hit, tracepoint", &[])
    } else {
        round("U's table has hit", &[outcome("no_route", k)])
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A TCP retransmit timer runs in softirq, on the CPU its socket armed it on, in whatever
/// task that CPU was running: here a thread spinning in namespace Z, pinned to that CPU. X's
/// socket connects (a SYN to a neighbour that never answers), then X loses its route to the
/// peer, so each SYN retransmit looks the route up again and misses. Those misses are X's
/// (kprobe and fentry: X's table has had a hit, the connect's) or unknown (tracepoint mode,
/// which sees no table), never Z's.
#[test]
fn a_retransmit_timers_misses_never_count_in_the_interrupted_tasks_namespace() -> Result<()> {
    let agent = Agent::start()?;
    let (x, z) = (quiet_ipv4_namespace("rx")?, quiet_ipv4_namespace("rz")?);
    ip(&x, "link add rx0 address 02:81:00:00:00:01 type veth peer name rx1")?;
    ip(&x, "addr add 10.81.0.1/24 dev rx0")?;
    ip(&x, "link set rx0 up")?;
    ip(&x, "neigh replace 10.81.0.2 lladdr 02:81:00:00:00:02 dev rx0 nud permanent")?;
    // SYN retransmits 1, 3, 7 and 15 s after the connect.
    run("ip", &["netns", "exec", &x.name, "sysctl", "-qw", "net.ipv4.tcp_syn_retries=4"])?;
    let (xi, zi) = (x.inode()?, z.inode()?);
    let cpu = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinning = std::sync::Arc::clone(&stop);
    let z_name = z.name.clone();
    let spinner = std::thread::spawn(move || {
        in_netns(&z_name, move || {
            pin_to(cpu)?;
            while !spinning.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::spin_loop();
            }
            Ok(())
        })
    });
    // Stops the spinner however the test ends.
    struct Stop(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let stopper = Stop(stop);

    let socket = in_netns(&x.name, move || {
        use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
        pin_to(cpu)?;
        // SAFETY: a new socket we own; connect reads the address we give.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
            if fd < 0 {
                bail!("socket: {}", std::io::Error::last_os_error());
            }
            let socket = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_port = 9u16.to_be();
            addr.sin_addr.s_addr = u32::from_be_bytes([10, 81, 0, 2]).to_be();
            let rc = libc::connect(
                socket.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            let err = std::io::Error::last_os_error();
            ensure!(rc != 0 && err.raw_os_error() == Some(libc::EINPROGRESS), "connect: {err}");
            Ok(socket)
        }
    })?;
    ip(&x, "route del 10.81.0.0/24 dev rx0")?;
    let before = agent.scrape()?;
    // Two retransmits' misses, where the mode puts them.
    let tracepoint = mode() == "tracepoint";
    let after = wait_for("two retransmits' lookups", std::time::Duration::from_secs(30), || {
        let m = agent.scrape()?;
        // Wherever they are counted (Z's count is the defect this test is for).
        let placed: f64 =
            [xi, zi].iter().map(|ns| outcomes(&delta(&before, &m, *ns, "ipv4"), "no_route")).sum();
        let misses = if tracepoint { placed + unknown_misses(&m) - unknown_misses(&before) } else { placed };
        Ok((misses >= 2.0).then_some(m))
    })?;
    drop(stopper);
    spinner.join().map_err(|_| anyhow::anyhow!("the spinner panicked"))??;
    drop(socket);
    check("the interrupted task's namespace", &delta(&before, &after, zi, "ipv4"), &[])?;
    let want: &[Want] = if tracepoint { &[] } else { &[outcome_in("no_route", 2.0, 4.0)] };
    check("the socket's namespace", &delta(&before, &after, xi, "ipv4"), want)?;
    Ok(())
}

#[test]
fn lookups_of_a_destroyed_namespace_leave_with_it() -> Result<()> {
    let agent = Agent::start_with(&["--attach", &netns_agent_e2e::mode(), "--config", &grace_config(2)?])?;
    let ns = NamedNetns::add("gone")?;
    let inode = ns.inode()?.to_string();
    run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
    run("ip", &["-n", &ns.name, "route", "get", "127.0.0.1"])?;
    let has_series = |m: &Metrics| m.series(LOOKUPS).iter().any(|l| l["netns"] == inode);
    ensure!(has_series(&agent.scrape()?), "no series for the namespace while it lives");
    let number: u64 = inode.parse()?;
    ns.delete()?;
    // Gone after the grace period; unless the kernel gave the inode number to a new
    // namespace (another creator's) that lives now: its series are its own.
    wait_for("the series to leave after the grace period", std::time::Duration::from_secs(30), || {
        Ok((!has_series(&agent.scrape()?) || netns_agent_e2e::visible_namespaces().contains(&number))
            .then_some(()))
    })
}

/// A config file with a short series grace period.
pub fn grace_config(seconds: u64) -> Result<String> {
    let path = std::env::temp_dir().join(format!("netns-agent-grace-{}-{seconds}.toml", std::process::id()));
    std::fs::write(&path, format!("series_grace_seconds = {seconds}\n"))?;
    Ok(path.to_string_lossy().into_owned())
}

/// Namespaces a thread of this process made and holds by nsfs fds (no process or mount in
/// them, loopback up: its local routes make the routing table exist; a namespace without a
/// route has no table, and its lookups consult none, so no probe sees them).
struct HeldNamespaces(Vec<std::fs::File>);

/// `ip link set lo up` in the calling thread's namespace (SIOCSIFFLAGS).
fn loopback_up() -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    // SAFETY: a zeroed ifreq is valid; the name fits with its NUL.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: the ioctls read and write the ifreq we own.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) != 0 {
            bail!("SIOCGIFFLAGS lo: {}", std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
            bail!("SIOCSIFFLAGS lo: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl HeldNamespaces {
    fn create(count: usize) -> Result<Self> {
        std::thread::spawn(move || -> Result<Self> {
            let mut held = Vec::with_capacity(count);
            for _ in 0..count {
                // SAFETY: unshare changes only this short-lived thread's network namespace.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    bail!("unshare: {}", std::io::Error::last_os_error());
                }
                loopback_up()?;
                held.push(std::fs::File::open("/proc/thread-self/ns/net")?);
            }
            Ok(Self(held))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    }

    fn inodes(&self) -> Result<Vec<u64>> {
        use std::os::unix::fs::MetadataExt as _;
        self.0.iter().map(|f| Ok(f.metadata()?.ino())).collect()
    }

    /// Sends `count` UDP datagrams to an address without a route from inside each
    /// namespace: one output lookup each, which finds no route.
    fn send_unroutable(&self, count: u32) -> Result<()> {
        use std::os::fd::AsRawFd as _;
        let fds: Vec<i32> = self.0.iter().map(|f| f.as_raw_fd()).collect();
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<()> {
                    for fd in fds {
                        // SAFETY: setns changes only this scoped thread's network namespace.
                        if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                            bail!("setns: {}", std::io::Error::last_os_error());
                        }
                        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
                        for _ in 0..count {
                            let sent = socket.send_to(b"x", "10.255.255.1:9");
                            ensure!(
                                sent.is_err(),
                                "a datagram to 10.255.255.1 was routed in an empty namespace"
                            );
                        }
                    }
                    Ok(())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("sender thread panicked"))?
        })
    }
}

/// More namespaces than route-counter lines (256): some count in a line, the rest in the
/// hash, and a namespace's first lookups (before it got its line) in the hash too. Every
/// namespace's count must be exact whichever way each lookup went.
#[test]
fn lookups_count_exactly_in_many_namespaces_whether_in_a_line_or_the_hash() -> Result<()> {
    const NAMESPACES: usize = 400;
    const SENDS: u32 = 5;
    let agent = Agent::start()?;
    let held = HeldNamespaces::create(NAMESPACES)?;
    let inodes = held.inodes()?;
    let counted = |m: &Metrics, want: f64| -> Result<bool> {
        for ns in &inodes {
            let got = lookups(m, *ns, "ipv4");
            if got.values().sum::<f64>() < want {
                return Ok(false);
            }
            check(&format!("namespace {ns}"), &got, &[outcome("no_route", want)])?;
        }
        Ok(true)
    };
    // Right after creation: the agent has not given these namespaces lines yet (it does
    // every second), so most of these count in the hash.
    held.send_unroutable(SENDS)?;
    let timeout = std::time::Duration::from_secs(30) * netns_agent_e2e::slowdown();
    wait_for("the first lookups of every namespace", timeout, || {
        Ok(counted(&agent.scrape()?, f64::from(SENDS))?.then_some(()))
    })?;
    // Now the first 256-odd have lines: these count there, the rest in the hash.
    held.send_unroutable(SENDS)?;
    let want = f64::from(2 * SENDS);
    wait_for("the second lookups of every namespace", timeout, || {
        Ok(counted(&agent.scrape()?, want)?.then_some(()))
    })?;
    // Nothing more comes: the counts stay where they are.
    let settled = agent.scrape()?;
    ensure!(counted(&settled, want)?, "counts moved after settling");
    Ok(())
}

/// IPv6 lookups through `rt6_lookup` (here: joins of a multicast group that name no
/// interface) run `ip6_pol_route_lookup`, not `fib6_table_lookup`. The tracepoint fires in
/// both; a probe on `fib6_table_lookup` alone missed them, so fentry and kprobe modes counted
/// fewer lookups than tracepoint mode for the same traffic. Every mode must count them.
#[test]
fn ipv6_lookups_outside_fib6_table_lookup_count_the_same_in_every_mode() -> Result<()> {
    let agent = Agent::start()?;
    let ns = NamedNetns::add("v6j")?;
    let inode = ns.inode()?;
    wait_for("the agent to know the namespace", std::time::Duration::from_secs(30), || {
        Ok(agent.scrape()?.series("netns_info").iter().any(|l| l["netns"] == inode.to_string()).then_some(()))
    })?;
    wait_quiet_in(&agent, &[inode])?;
    let before = agent.scrape()?;
    in_netns(&ns.name, || {
        let socket = std::net::UdpSocket::bind("[::]:0")?;
        let group: std::net::Ipv6Addr = "ff0e::1234".parse()?;
        for _ in 0..K {
            // Interface 0: the kernel looks the group up to pick one; there is no route.
            ensure!(socket.join_multicast_v6(&group, 0).is_err(), "a join found a route to {group}");
        }
        Ok(())
    })?;
    let k = f64::from(K);
    let after = wait_for("every join's lookup", std::time::Duration::from_secs(30), || {
        let m = agent.scrape()?;
        Ok((total(&delta(&before, &m, inode, "ipv6")) >= k).then_some(m))
    })?;
    check("multicast joins", &delta(&before, &after, inode, "ipv6"), &[outcome("no_route", k)])
}
