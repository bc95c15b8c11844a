//! Churn under load (issue 16): many namespaces created and destroyed by 16 concurrent
//! creators, with device moves and traffic mixed in. Nothing lost, nothing stuck: the counts
//! are exact, every namespace made is torn down exactly once, the agent's memory stays flat
//! after warm-up, its series stay under the tracking cap, and `/metrics` keeps answering.
//!
//! 5,000 namespaces here; `cargo xtask soak` runs the same test with
//! `NETNS_AGENT_CHURN_COUNT` (100,000 by default) and `NETNS_AGENT_CHURN_REPORT` (a JSON file
//! of the figures, which it writes into BENCHMARKS.md).
//!
//! Only what this test made is counted exactly: its creations under comm names only it uses,
//! its namespaces by cookie in the journal (the events file), and the moves and lookups of
//! two namespaces it keeps for the whole run.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs::File,
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use netns_agent_e2e::{
    Agent, Metrics, NamedNetns, TempDir, clone_newnet, command_as, in_netns, rss_kib, run, run_as,
    set_thread_comm, unique, unique_comm, visible_namespaces, wait_for,
};
use serde_json::Value;

/// Where traffic goes: a receiver listens there in P.
const PORT: u16 = 19_999;
/// Concurrent creators.
const CREATORS: usize = 16;
/// Datagrams per traffic step, in the churn namespace and in the kept one.
const DATAGRAMS: u32 = 10;
/// Namespaces the agent tracks one by one beyond those alive at start: small, so that the
/// churn runs past the cap (folded into `overflow`) most of the time.
const CAP_HEADROOM: usize = 64;
/// A leak this test must catch: bytes per namespace. Any per-namespace record kept forever
/// (a map entry with its key, a label string, a journal line) is larger than this.
const LEAK_BYTES_PER_NAMESPACE: f64 = 256.0;

/// What one step of the churn does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    /// `unshare(CLONE_NEWNET)` in a thread that then exits.
    Unshare,
    /// `clone(CLONE_NEWNET)` (every other one `clone3`) of a child that exits at once.
    Clone,
    /// `ip netns add`, then `ip netns del`.
    Named,
    /// `unshare`, a veth pair made there, one end moved to the kept namespace P, then on to Q.
    Move,
    /// `unshare`, datagrams sent there (no route: lo is down), then in P (to its lo).
    Traffic,
}

impl Kind {
    const ALL: [Kind; 5] = [Kind::Unshare, Kind::Clone, Kind::Named, Kind::Move, Kind::Traffic];

    /// Step `i`'s kind: per 100 steps 1 named, 1 move, 4 traffic, the rest half unshare,
    /// half clone (named ones run two processes each: they are the slow path).
    fn of(i: usize) -> Kind {
        match i % 100 {
            0 => Kind::Named,
            50 => Kind::Move,
            10 | 30 | 70 | 90 => Kind::Traffic,
            n if n % 2 == 1 => Kind::Clone,
            _ => Kind::Unshare,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Kind::Unshare => "chu",
            Kind::Clone => "chc",
            Kind::Named => "chn",
            Kind::Move => "chm",
            Kind::Traffic => "cht",
        }
    }
}

/// The namespaces' count: `NETNS_AGENT_CHURN_COUNT`, else 5,000.
fn count() -> usize {
    std::env::var("NETNS_AGENT_CHURN_COUNT").ok().and_then(|s| s.parse().ok()).unwrap_or(5000)
}

/// Everything the churn shares between its threads.
struct Churn {
    total: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    comms: BTreeMap<Kind, String>,
    /// The kept namespaces: moves go host-side into P, then P to Q; traffic also runs in P.
    p: String,
    q: String,
    failed: std::sync::Mutex<Option<String>>,
}

impl Churn {
    fn comm(&self, kind: Kind) -> &str {
        &self.comms[&kind]
    }

    /// One creator: takes steps until all are taken (or one failed).
    fn creator(&self) -> Result<()> {
        set_thread_comm(self.comm(Kind::Clone))?;
        loop {
            if self.failed.lock().map(|f| f.is_some()).unwrap_or(true) {
                return Ok(());
            }
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.total {
                return Ok(());
            }
            self.step(i).with_context(|| format!("step {i} ({:?})", Kind::of(i)))?;
            self.done.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn step(&self, i: usize) -> Result<()> {
        let kind = Kind::of(i);
        match kind {
            Kind::Clone => clone_newnet(i % 4 == 1),
            Kind::Named => {
                let name = unique("chn");
                run_as("ip", self.comm(kind), &["netns", "add", &name])?;
                run_as("ip", self.comm(kind), &["netns", "del", &name]).map(|_| ())
            }
            Kind::Unshare | Kind::Move | Kind::Traffic => {
                let comm = self.comm(kind).to_owned();
                let (p, q) = (self.p.clone(), self.q.clone());
                // The namespace lives as long as this thread: it goes when the thread exits.
                thread::spawn(move || -> Result<()> {
                    set_thread_comm(&comm)?;
                    unshare_net()?;
                    match kind {
                        Kind::Move => move_through(i, &p, &q),
                        Kind::Traffic => {
                            send_udp_here(DATAGRAMS)?;
                            enter(&p)?;
                            send_udp_here(DATAGRAMS)
                        }
                        _ => Ok(()),
                    }
                })
                .join()
                .map_err(|_| anyhow::anyhow!("churn thread panicked"))?
            }
        }
    }
}

/// This thread into a new network namespace.
fn unshare_net() -> Result<()> {
    // SAFETY: unshare changes only the calling thread's network namespace.
    ensure!(
        unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0,
        "unshare: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// This thread into the named namespace.
fn enter(name: &str) -> Result<()> {
    let file = File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns on a valid nsfs fd; it changes only the calling thread's namespace.
    ensure!(
        unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == 0,
        "setns {name}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// `count` datagrams to 127.0.0.1:PORT from this thread's namespace, one unconnected socket (one
/// output route lookup each; where lo is down the lookup fails and the send errors).
fn send_udp_here(count: u32) -> Result<()> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    for _ in 0..count {
        let _ = socket.send_to(b"churn", ("127.0.0.1", PORT));
    }
    Ok(())
}

/// In this thread's (new) namespace: a veth pair, one end moved into P, then from P into Q.
/// Processes started here inherit the thread's namespace. The pair goes when the namespace
/// does (its other end stays here).
fn move_through(i: usize, p: &str, q: &str) -> Result<()> {
    let (dev, peer) = (format!("chm{i}"), format!("chp{i}"));
    run("ip", &["link", "add", &dev, "type", "veth", "peer", "name", &peer])?;
    run("ip", &["link", "set", &dev, "netns", p])?;
    run("ip", &["-n", p, "link", "set", &dev, "netns", q]).map(|_| ())
}

/// One sample taken while the churn runs.
struct Sample {
    done: usize,
    rss_kib: u64,
    scrape_ms: f64,
    series: usize,
    netns_values: usize,
}

/// Least-squares slope of y over x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Reads the events file (and its rotated predecessor): the journal, oldest first.
fn journal_file(path: &std::path::Path) -> Result<Vec<Value>> {
    let mut events = Vec::new();
    let rotated = path.with_extension("jsonl.1");
    for file in [rotated.as_path(), path] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines() {
            // The last line may be half written while the agent runs.
            if let Ok(value) = serde_json::from_str::<Value>(line) {
                events.push(value);
            }
        }
    }
    events.sort_by_key(|e| e["seq"].as_u64().unwrap_or(0));
    Ok(events)
}

/// Of the journal: creations by our comms (by kind) and, per cookie created, its teardowns.
struct Ours {
    created: BTreeMap<Kind, usize>,
    teardowns: HashMap<u64, usize>,
}

impl Ours {
    fn read(events: &[Value], comms: &BTreeMap<Kind, String>) -> Self {
        let mut created = BTreeMap::new();
        let mut teardowns = HashMap::new();
        for e in events {
            let Some(cookie) = e["cookie"].as_u64() else { continue };
            if e["kind"] == "netns_created"
                && let Some((kind, _)) = comms.iter().find(|(_, c)| e["comm"] == c.as_str())
            {
                *created.entry(*kind).or_insert(0) += 1;
                teardowns.insert(cookie, 0);
            } else if e["kind"] == "netns_destroyed"
                && let Some(n) = teardowns.get_mut(&cookie)
            {
                *n += 1;
            }
        }
        Self { created, teardowns }
    }

    fn all_torn_down(&self) -> bool {
        self.teardowns.values().all(|n| *n > 0)
    }
}

#[test]
fn churn_counts_exactly_with_memory_series_and_scrapes_bounded() -> Result<()> {
    let total = count();
    let started = Instant::now();
    // Every namespace alive now may take a tracked slot; the churn gets few of the rest.
    let cap = visible_namespaces().len() + CAP_HEADROOM;
    let dir = TempDir::new("churn")?;
    let events_file = dir.0.join("events.jsonl");
    // A small in-memory journal (full early in the warm-up), the whole journal on disk for
    // the exact per-namespace check; grace 1 s so destroyed namespaces leave the table fast.
    let agent = Agent::start_with_config(&format!(
        "journal_max_events = 1000\nseries_grace_seconds = 1\nattribution_interval_seconds = 5\n\
         events_file = {:?}\nevents_file_max_bytes = 1099511627776\n[limits]\ntracked_namespaces = {cap}\n",
        events_file.to_string_lossy()
    ))?;

    let comms: BTreeMap<Kind, String> = Kind::ALL.iter().map(|k| (*k, unique_comm(k.prefix()))).collect();
    // Made once here: run_as links the comm's name to `ip` on first use, racing if concurrent.
    command_as("ip", &comms[&Kind::Named])?;
    let (p, q) = (NamedNetns::add("chP")?, NamedNetns::add("chQ")?);
    run("ip", &["-n", &p.name, "link", "set", "lo", "up"])?;
    // A receiver, so no datagram is refused: a refusal's ICMP reply is a route lookup too.
    let _receiver = in_netns(&p.name, || Ok(std::net::UdpSocket::bind(("127.0.0.1", PORT))?))?;
    let (pi, qi) = (p.inode()?.to_string(), q.inode()?.to_string());
    // P and Q were made before the churn filled the cap: they must have series of their own.
    let mut last = String::new();
    let before = wait_for("P and Q in netns_info", Duration::from_secs(10), || {
        let m = agent.scrape()?;
        let has = |inode: &str| m.series("netns_info").iter().any(|l| l["netns"] == inode);
        last = m.text.lines().filter(|l| l.starts_with("netns_info")).collect::<Vec<_>>().join("\n");
        Ok((has(&pi) && has(&qi)).then_some(m))
    })
    .with_context(|| format!("P {pi}, Q {qi}, cap {cap}; netns_info:\n{last}"))?;
    for comm in comms.values() {
        ensure!(!before.has("netns_created_total", &[("comm", comm)]), "{comm} counted before the churn");
    }

    let churn = Arc::new(Churn {
        total,
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        comms: comms.clone(),
        p: p.name.clone(),
        q: q.name.clone(),
        failed: std::sync::Mutex::new(None),
    });
    let finished = Arc::new(AtomicBool::new(false));
    let creators: Vec<_> = (0..CREATORS)
        .map(|_| {
            let churn = Arc::clone(&churn);
            thread::spawn(move || {
                if let Err(err) = churn.creator()
                    && let Ok(mut failed) = churn.failed.lock()
                {
                    failed.get_or_insert(format!("{err:#}"));
                }
            })
        })
        .collect();
    let waiter = {
        let finished = Arc::clone(&finished);
        thread::spawn(move || {
            for creator in creators {
                let _ = creator.join();
            }
            finished.store(true, Ordering::Relaxed);
        })
    };

    // While it runs: scrape as Prometheus would (timed), sample the agent's memory.
    let churn_started = Instant::now();
    let mut samples = Vec::new();
    let mut scrape_errors = Vec::new();
    while !finished.load(Ordering::Relaxed) {
        let t = Instant::now();
        match agent.get("/metrics") {
            Ok(text) => {
                let scrape_ms = t.elapsed().as_secs_f64() * 1e3;
                let m = Metrics::parse(&text);
                let netns_values: BTreeSet<String> = m
                    .all_series()
                    .into_iter()
                    .filter_map(|(_, labels)| labels.get("netns").cloned())
                    .collect();
                samples.push(Sample {
                    done: churn.done.load(Ordering::Relaxed),
                    rss_kib: rss_kib(agent.pid())?,
                    scrape_ms,
                    series: m.all_series().len(),
                    netns_values: netns_values.len(),
                });
            }
            Err(err) => scrape_errors.push(format!("{err:#}")),
        }
        // Bounded pacing of the sampler (not a wait for state): about 10 scrapes a second.
        thread::sleep(Duration::from_millis(100));
    }
    waiter.join().map_err(|_| anyhow::anyhow!("waiter panicked"))?;
    let churn_seconds = churn_started.elapsed().as_secs_f64();
    if let Some(err) = churn.failed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.take() {
        bail!("the churn failed: {err}");
    }
    ensure!(scrape_errors.is_empty(), "/metrics failed during the churn: {scrape_errors:?}");

    // Expected creations per comm: exactly the steps of each kind.
    let mut want: BTreeMap<Kind, usize> = BTreeMap::new();
    for i in 0..total {
        *want.entry(Kind::of(i)).or_insert(0) += 1;
    }
    let (moves, traffic) = (want.get(&Kind::Move).copied().unwrap_or(0), want[&Kind::Traffic]);

    // Counts: in the kernel's maps, exact whatever the ring buffer dropped.
    let created = |m: &Metrics, kind: Kind| m.get_or_zero("netns_created_total", &[("comm", &comms[&kind])]);
    let after = wait_for("every creation counted", Duration::from_secs(30), || {
        let m = agent.scrape()?;
        Ok(Kind::ALL.iter().all(|k| created(&m, *k) >= want[k] as f64).then_some(m))
    })?;
    for kind in Kind::ALL {
        let got = after.value("netns_created_total", &[("comm", &comms[&kind])])?;
        ensure!(
            got == want[&kind] as f64,
            "netns_created_total{{comm={:?}}} {got}, want {}",
            comms[&kind],
            want[&kind]
        );
        ensure!(
            !after.has("netns_setup_failures_total", &[("comm", &comms[&kind])]),
            "a setup failure under {}",
            comms[&kind]
        );
    }

    // Teardowns: asynchronous (cleanup_net batches); wait, bounded, for the journal to hold
    // every one of ours.
    let lost = || -> Result<f64> { agent.scrape()?.value("netns_agent_events_lost_total", &[]) };
    let teardown_timeout = Duration::from_secs(60 + (total / 100) as u64);
    let ours =
        wait_for("every namespace of ours created and torn down in the journal", teardown_timeout, || {
            let ours = Ours::read(&journal_file(&events_file)?, &comms);
            let complete = ours.created.values().sum::<usize>() == total && ours.all_torn_down();
            // With events lost the journal may never be complete: the kernel's counters still are.
            Ok((complete || lost()? > 0.0).then_some(ours))
        })?;
    let events_lost = lost()?;
    let end = agent.scrape()?;
    let destroyed = end.value("netns_destroyed_total", &[])? - before.value("netns_destroyed_total", &[])?;
    ensure!(destroyed >= total as f64, "netns_destroyed_total rose by {destroyed}, want at least {total}");
    if events_lost == 0.0 {
        for kind in Kind::ALL {
            let got = ours.created.get(&kind).copied().unwrap_or(0);
            ensure!(got == want[&kind], "journal: {got} creations by {}, want {}", comms[&kind], want[&kind]);
        }
        let twice = ours.teardowns.values().filter(|n| **n > 1).count();
        ensure!(twice == 0, "{twice} namespaces torn down more than once in the journal");
        ensure!(
            ours.teardowns.len() == total,
            "{} distinct cookies created, want {total}",
            ours.teardowns.len()
        );
    } else {
        let seen = ours.created.values().sum::<usize>();
        ensure!(seen <= total, "journal: {seen} creations of ours, more than the {total} made");
        eprintln!(
            "events lost: {events_lost}; the journal has {seen} of {total} creations, the counters all"
        );
    }
    ensure!(end.value("netns_agent_untracked_namespaces_total", &[])? == 0.0, "kernel-side table full");

    // The kept namespaces: every move and lookup of ours counted exactly.
    let delta = |name: &str, labels: &[(&str, &str)]| {
        end.get_or_zero(name, labels) - before.get_or_zero(name, labels)
    };
    let moved = [
        (&pi, "in", delta("netns_device_moves_total", &[("netns", &pi), ("direction", "in")])),
        (&pi, "out", delta("netns_device_moves_total", &[("netns", &pi), ("direction", "out")])),
        (&qi, "in", delta("netns_device_moves_total", &[("netns", &qi), ("direction", "in")])),
    ];
    for (netns, direction, got) in moved {
        ensure!(
            got == moves as f64,
            "netns_device_moves_total{{netns={netns},direction={direction}}} {got}, want {moves}"
        );
    }
    for netns in [&pi, &qi] {
        ensure!(
            delta("netns_device_move_failures_total", &[("netns", netns)]) == 0.0,
            "move failures in {netns}"
        );
    }
    let hits = delta("netns_route_lookups_total", &[("netns", &pi), ("family", "ipv4"), ("result", "hit")]);
    let want_hits = traffic as f64 * f64::from(DATAGRAMS);
    ensure!(hits == want_hits, "route hits in P {hits}, want {want_hits}");

    // Series: each namespace's series carry its `netns`; tracked ones are at most the cap,
    // plus `overflow` and `unknown`.
    let max_values = samples.iter().map(|s| s.netns_values).max().unwrap_or(0);
    let max_series = samples.iter().map(|s| s.series).max().unwrap_or(0);

    // Memory: RSS against namespaces made, after the first 20% (warm-up: allocator pools,
    // the in-memory journal filling, maps reaching their working size).
    let warm: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.done >= total / 5)
        .map(|s| (s.done as f64 / 1000.0, s.rss_kib as f64))
        .collect();
    ensure!(warm.len() >= 10, "only {} memory samples after warm-up", warm.len());
    let kib_per_1000 = slope(&warm);
    let bound = LEAK_BYTES_PER_NAMESPACE * 1000.0 / 1024.0;
    let rss: Vec<u64> = samples.iter().map(|s| s.rss_kib).collect();
    let mut latencies: Vec<f64> = samples.iter().map(|s| s.scrape_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let figures = serde_json::json!({
        "count": total,
        "creators": CREATORS,
        "created": want.iter().map(|(k, n)| (format!("{k:?}").to_lowercase(), n)).collect::<BTreeMap<_, _>>(),
        "moves": moves,
        "route_hits_in_p": want_hits,
        "events_lost": events_lost,
        "destroyed_delta": destroyed,
        "churn_seconds": churn_seconds,
        "total_seconds": started.elapsed().as_secs_f64(),
        "rss_kib_first": rss.first(),
        "rss_kib_last": rss.last(),
        "rss_kib_max": rss.iter().max(),
        "rss_slope_kib_per_1000": kib_per_1000,
        "rss_slope_bound_kib_per_1000": bound,
        "samples": samples.len(),
        // RSS at each tenth of the run: the shape behind the slope.
        "rss_kib_by_tenth": (1..=10)
            .filter_map(|t| samples.iter().find(|s| s.done >= total * t / 10).map(|s| s.rss_kib))
            .collect::<Vec<_>>(),
        "cap": cap,
        "max_netns_values": max_values,
        "max_series": max_series,
        "scrape_ms_p50": percentile(&latencies, 0.5),
        "scrape_ms_p99": percentile(&latencies, 0.99),
        "scrape_ms_max": latencies.last(),
        "scrapes": latencies.len(),
    });
    println!("churn figures: {figures}");
    if let Some(path) = std::env::var_os("NETNS_AGENT_CHURN_REPORT") {
        std::fs::write(&path, serde_json::to_string_pretty(&figures)?)?;
    }
    ensure!(
        max_values <= cap + 2,
        "{max_values} netns label values in one scrape, cap {cap} (+ overflow, unknown)"
    );
    ensure!(
        kib_per_1000 <= bound,
        "RSS grows {kib_per_1000:.1} KiB per 1000 namespaces after warm-up (bound {bound:.0}): {rss:?}"
    );
    Ok(())
}
