//! Route lookups, end to end: counted in the namespace where they really happen, including
//! lookups for forwarded packets made in softirq while another namespace's task is current.
//!
//! What the kernel looks up per datagram in the A - R - B topology (no custom rules, so
//! IPv4 searches `main` alone, where the local routes are merged, and IPv6 searches `local`
//! then `main`; permanent neighbours, no reverse-path filter):
//! - IPv4: A's output lookup hits `main`; R's input lookup for the forwarded datagram hits
//!   `main`; B's input lookup hits its own address in `main`. One each.
//! - IPv6: A's output lookup misses `local` and hits `main`; R's input lookup likewise; B's
//!   input lookup hits its own address in `local`.
//!
//! IPv6 multicast the kernel sends by itself (MLD reports after addresses appear) makes input
//! lookups at times no test knows: the tests wait until the topology makes no lookups of its
//! own before measuring, and still allow a few `local` hits (multicast routes are there).

use std::collections::BTreeMap;

use anyhow::{Result, ensure};
use netns_agent_e2e::{Agent, Metrics, NamedNetns, RouterTopology, in_netns, run, send_udp, wait_for};

const K: u32 = 400;

/// Lookups the kernel makes by itself in a namespace of the topology during a test
/// (IPv6 MLD reports: a few per address change, none once settled).
const BACKGROUND: f64 = 20.0;

type Key = (String, String);

/// Lookups of one namespace and family, per (table, result).
fn lookups(m: &Metrics, netns: u64, family: &str) -> BTreeMap<Key, f64> {
    let netns = netns.to_string();
    m.series("netns_route_lookups_total")
        .into_iter()
        .filter(|l| l["netns"] == netns && l["family"] == family)
        .map(|l| {
            let labels = [
                ("netns", netns.as_str()),
                ("family", family),
                ("table", l["table"].as_str()),
                ("result", l["result"].as_str()),
            ];
            // Listed by `series`, so present.
            let value = m.get_or_zero("netns_route_lookups_total", &labels);
            ((l["table"].clone(), l["result"].clone()), value)
        })
        .collect()
}

/// What changed between two scrapes, per (table, result); unchanged keys left out.
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

/// An expected delta per (table, result): between `lo` and `hi` (equal when exact). Keys
/// not listed must not change.
struct Want(&'static str, &'static str, f64, f64);

fn exact(table: &'static str, result: &'static str, n: f64) -> Want {
    Want(table, result, n, n)
}

fn check(what: &str, got: &BTreeMap<Key, f64>, want: &[Want]) -> Result<()> {
    for Want(table, result, lo, hi) in want {
        let v = got.get(&((*table).to_owned(), (*result).to_owned())).copied().unwrap_or(0.0);
        ensure!(
            v >= *lo && v <= *hi,
            "{what}: {table}/{result} +{v}, want {}: all changes {got:?}",
            if lo == hi { format!("{lo}") } else { format!("{lo}..={hi}") }
        );
    }
    let unexpected: Vec<&Key> =
        got.keys().filter(|(t, r)| !want.iter().any(|Want(wt, wr, _, _)| wt == t && wr == r)).collect();
    ensure!(unexpected.is_empty(), "{what}: unexpected lookups {unexpected:?}: all changes {got:?}");
    Ok(())
}

/// The sum of a namespace's deltas.
fn total(d: &BTreeMap<Key, f64>) -> f64 {
    d.values().sum()
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
    let namespaces = [topo.a.inode()?, topo.r.inode()?, topo.b.inode()?];
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
        check("ipv4 sender", &da, &[exact("main", "hit", k)])?;
        check("ipv4 router", &dr, &[exact("main", "hit", k)])?;
        check("ipv4 receiver", &db, &[exact("main", "hit", k)])?;
    } else {
        let background = Want("local", "hit", 0.0, BACKGROUND);
        check("ipv6 sender", &da, &[exact("local", "no_route", k), exact("main", "hit", k), background])?;
        let background = Want("local", "hit", 0.0, BACKGROUND);
        check("ipv6 router", &dr, &[exact("local", "no_route", k), exact("main", "hit", k), background])?;
        check("ipv6 receiver", &db, &[Want("local", "hit", k, k + BACKGROUND)])?;
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
        let failed = |d: &BTreeMap<Key, f64>| {
            d.iter()
                .filter(|((t, _), _)| t == "main")
                .filter(|((_, r), _)| r != "hit")
                .map(|(_, v)| v)
                .sum::<f64>()
        };
        let after =
            wait_for("every datagram refused by the router", std::time::Duration::from_secs(10), || {
                let m = agent.scrape()?;
                Ok((failed(&delta(&before, &m, r, family)) >= k).then_some(m))
            })?;
        let (da, dr) = (delta(&before, &after, a, family), delta(&before, &after, r, family));
        // R answers refused datagrams with ICMP errors as its rate limits allow: a number
        // no test knows (0 to K). Each error R considers costs it route lookups toward A
        // (hits in R's `main`): the route back, and a second look by the IPsec policy check
        // (which also looks the reverse flow up, and for IPv4 asks the local table about
        // the address). IPv6 does this for every refused datagram and checks its rate limit
        // after; IPv4 checks a global limit first. So n, R's `main` hits, is at most a few
        // per datagram and bounds the errors A receives and looks up on input (a hit for
        // its own address); the lookups around each error are bounded by n.
        let n = dr.get(&("main".to_owned(), "hit".to_owned())).copied().unwrap_or(0.0);
        ensure!(n <= 3.0 * k, "{family}: {n} lookups for ICMP errors for {K} datagrams: {dr:?}");
        if family == "ipv4" {
            // A's own lookups all hit (its default route); a failure in A would be R's
            // misattributed.
            check("ipv4 sender", &da, &[Want("main", "hit", k, k + n)])?;
            check(
                "ipv4 router",
                &dr,
                &[
                    Want("main", "no_route", k, k + 2.0 * n),
                    exact("main", "hit", n),
                    Want("local", "hit", 0.0, 2.0 * n),
                    Want("local", "no_route", 0.0, 2.0 * n),
                ],
            )?;
        } else {
            check(
                "ipv6 sender",
                &da,
                &[
                    exact("local", "no_route", k),
                    exact("main", "hit", k),
                    Want("local", "hit", 0.0, n + BACKGROUND),
                ],
            )?;
            // Per datagram, R's input lookup misses local and main. Nothing here is R's own
            // address, so every lookup that reaches `main` missed `local` first: exact.
            let main = dr.get(&("main".to_owned(), "no_route".to_owned())).copied().unwrap_or(0.0) + n;
            check(
                "ipv6 router",
                &dr,
                &[
                    Want("main", "no_route", k, k + 2.0 * n),
                    exact("local", "no_route", main),
                    exact("main", "hit", n),
                    Want("local", "hit", 0.0, BACKGROUND),
                ],
            )?;
        }
    }
    Ok(())
}

#[test]
fn route_get_in_a_fresh_namespace_hits_and_misses_there() -> Result<()> {
    let agent = Agent::start()?;
    let ns = NamedNetns::add("rg")?;
    let inode = ns.inode()?;
    run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
    // One lookup per table consulted: IPv4 has merged local into main (no custom rules);
    // IPv6 searches local, then main.
    type Expected = &'static [(&'static str, &'static str)];
    let cases: [(&str, &str, &str, bool, Expected); 4] = [
        ("ipv4", "-4", "127.0.0.1", true, &[("main", "hit")]),
        ("ipv4", "-4", "10.1.2.3", false, &[("main", "no_route")]),
        ("ipv6", "-6", "::1", true, &[("local", "hit")]),
        ("ipv6", "-6", "2001:db8::1", false, &[("local", "no_route"), ("main", "no_route")]),
    ];
    let netns = inode.to_string();
    let counts = |m: &Metrics, family: &str| -> std::collections::BTreeMap<(String, String), f64> {
        m.series("netns_route_lookups_total")
            .into_iter()
            .filter(|l| l["netns"] == netns && l["family"] == family)
            .map(|l| {
                let v = m.get_or_zero(
                    "netns_route_lookups_total",
                    &[
                        ("netns", &netns),
                        ("family", family),
                        ("table", &l["table"]),
                        ("result", &l["result"]),
                    ],
                );
                ((l["table"].clone(), l["result"].clone()), v)
            })
            .collect()
    };
    for (family, flag, addr, routable, expected) in cases {
        let before = agent.scrape()?;
        let out =
            std::process::Command::new("ip").args(["-n", &ns.name, flag, "route", "get", addr]).output()?;
        ensure!(
            out.status.success() == routable,
            "ip route get {addr}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let after = agent.scrape()?;
        let (b, a) = (counts(&before, family), counts(&after, family));
        let changed: std::collections::BTreeMap<(String, String), f64> = a
            .iter()
            .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, d)| *d != 0.0)
            .collect();
        let want: std::collections::BTreeMap<(String, String), f64> =
            expected.iter().map(|(t, r)| (((*t).to_owned(), (*r).to_owned()), 1.0)).collect();
        ensure!(changed == want, "ip route get {addr}: lookups {changed:?}, want {want:?}");
    }
    Ok(())
}

#[test]
fn lookups_of_a_destroyed_namespace_leave_with_it() -> Result<()> {
    let agent = Agent::start_with(&["--attach", &netns_agent_e2e::mode(), "--config", &grace_config(2)?])?;
    let ns = NamedNetns::add("gone")?;
    let inode = ns.inode()?.to_string();
    run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
    run("ip", &["-n", &ns.name, "route", "get", "127.0.0.1"])?;
    let has_series = |m: &Metrics| m.series("netns_route_lookups_total").iter().any(|l| l["netns"] == inode);
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
