//! Route lookups, end to end: counted in the namespace where they really happen, including
//! lookups for forwarded packets made in softirq while another namespace's task is current.

use anyhow::{Result, ensure};
use netns_agent_e2e::{Agent, Metrics, NamedNetns, RouterTopology, run, send_udp, wait_for};

const K: u32 = 400;
const FAILED: [&str; 5] = ["no_route", "unreachable", "prohibit", "blackhole", "error"];

/// Lookups of one namespace and family with the given results, over every table.
fn lookups(m: &Metrics, netns: u64, family: &str, results: &[&str]) -> f64 {
    let netns = netns.to_string();
    m.series("netns_route_lookups_total")
        .into_iter()
        .filter(|l| l["netns"] == netns && l["family"] == family && results.contains(&l["result"].as_str()))
        .map(|l| {
            // Listed by `series`, so present.
            m.get_or_zero(
                "netns_route_lookups_total",
                &[
                    ("netns", &l["netns"]),
                    ("family", &l["family"]),
                    ("table", &l["table"]),
                    ("result", &l["result"]),
                ],
            )
        })
        .sum()
}

fn delta(before: &Metrics, after: &Metrics, netns: u64, family: &str, results: &[&str]) -> f64 {
    lookups(after, netns, family, results) - lookups(before, netns, family, results)
}

#[test]
fn forwarded_packets_count_in_the_router_and_the_sender() -> Result<()> {
    let topo = RouterTopology::new()?;
    let agent = Agent::start()?;
    let (a, r) = (topo.a.inode()?, topo.r.inode()?);
    for (family, dst) in [("ipv4", "10.77.2.2:9"), ("ipv6", "[fd77:2::2]:9")] {
        let before = agent.scrape()?;
        send_udp(&topo.a.name, dst, K)?;
        let after = agent.scrape()?;
        let router = delta(&before, &after, r, family, &["hit"]);
        let sender = delta(&before, &after, a, family, &["hit"]);
        ensure!(router >= K as f64, "{family}: router hits +{router}, want at least {K}");
        // The sender looks up a route per datagram, and a few more for neighbour discovery.
        ensure!(
            sender >= K as f64 && sender <= K as f64 * 1.1 + 10.0,
            "{family}: sender hits +{sender}, want about {K}"
        );
    }
    Ok(())
}

#[test]
fn unroutable_packets_fail_in_the_router_never_in_the_sender() -> Result<()> {
    let topo = RouterTopology::new()?;
    let agent = Agent::start()?;
    let (a, r) = (topo.a.inode()?, topo.r.inode()?);
    let cases = [("ipv4", "10.77.2.2:9", "10.99.0.1:9"), ("ipv6", "[fd77:2::2]:9", "[fd99::1]:9")];
    for (family, routable, unroutable) in cases {
        // The sender's own lookups may miss in a table before they hit (IPv6 consults the
        // local table first): measure them on routable traffic, then require the same.
        let m0 = agent.scrape()?;
        send_udp(&topo.a.name, routable, K)?;
        let m1 = agent.scrape()?;
        send_udp(&topo.a.name, unroutable, K)?;
        let m2 = agent.scrape()?;
        let router = delta(&m1, &m2, r, family, &FAILED);
        let own = delta(&m0, &m1, a, family, &FAILED);
        let sender = delta(&m1, &m2, a, family, &FAILED);
        ensure!(router >= K as f64, "{family}: router failed lookups +{router}, want at least {K}");
        ensure!(sender == own, "{family}: sender failed lookups +{sender}, +{own} for routable traffic");
        ensure!(delta(&m1, &m2, a, family, &["hit"]) >= K as f64, "{family}: sender hits its default route");
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
