//! Namespace lifecycle, end to end: the real agent, real namespaces, exact counts.
//! Run as root, one test at a time (they share the kernel).
//!
//! The host may be busy (containers starting and stopping beside the tests): exact counts
//! are of what this test did, told apart by comm names only it uses and by the journal's
//! per-namespace records; label-less host-wide counters are only bounded.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Context as _, Result, ensure};
use netns_agent_e2e::{
    Agent, Metrics, NamedNetns, RtnlHold, clone_newnet, events_of, loaded_program_ids, mode, run_as,
    set_thread_comm, slowdown, teardowns, torn_down, unique, unique_comm, wait_for,
};
use serde_json::Value;

const TEARDOWN: Duration = Duration::from_secs(20);
const MODES: [&str; 3] = ["fentry", "kprobe", "tracepoint"];

/// `ip netns add` under comm `comm`; the namespace is deleted on drop.
fn named_as(comm: &str, prefix: &str) -> Result<NamedNetns> {
    let name = unique(prefix);
    run_as("ip", comm, &["netns", "add", &name])?;
    Ok(NamedNetns::adopt(name))
}

/// Waits until the journal after `since` holds `n` creations by `comm`; returns the journal.
fn wait_created(agent: &Agent, since: u64, comm: &str, n: usize) -> Result<Vec<Value>> {
    wait_for(&format!("{n} creations by {comm} in the journal"), Duration::from_secs(10), || {
        let (events, _) = agent.events_since(since)?;
        Ok((events_of(&events, "netns_created", comm).len() >= n).then_some(events))
    })
}

/// Inode numbers of journal entries.
fn inodes(entries: &[&Value]) -> BTreeSet<u64> {
    entries.iter().filter_map(|e| e["netns"].as_u64()).collect()
}

/// Whether the agent holds the namespace as alive (teardown not begun).
fn alive_in_agent(agent: &Agent, inode: u64) -> Result<bool> {
    Ok(alive_view(agent, inode)?.is_some())
}

/// Whether the agent holds as alive a namespace with this inode number made by `creator`
/// (`None`: made before the agent started). After one of ours is gone the kernel may give
/// its number to another creator's namespace: that one is not ours.
fn alive_from(agent: &Agent, inode: u64, creator: Option<&str>) -> Result<bool> {
    Ok(alive_view(agent, inode)?.is_some_and(|view| match creator {
        Some(comm) => view["creator"]["comm"] == comm,
        None => view["creator"].is_null(),
    }))
}

/// The agent's view of the namespace with this inode number, if it holds it as alive.
fn alive_view(agent: &Agent, inode: u64) -> Result<Option<Value>> {
    Ok(agent.namespaces()?.into_iter().find(|ns| {
        ns["netns"] == inode
            && ["new", "active", "parked", "orphaned"].contains(&ns["state"].as_str().unwrap_or(""))
    }))
}

/// The probes the agent registers: every probe appears in `netns_agent_probe_attached`.
fn registered_probes(m: &Metrics) -> BTreeSet<String> {
    m.series("netns_agent_probe_attached").into_iter().map(|l| l["probe"].clone()).collect()
}

#[test]
fn forced_mode_is_the_one_attached() -> Result<()> {
    let agent = Agent::start()?;
    let m = agent.scrape()?;
    let probes = registered_probes(&m);
    ensure!(!probes.is_empty(), "no netns_agent_probe_attached series:\n{}", m.text);
    for probe in &probes {
        // Attached in the forced mode: the series must exist and be 1.
        let got = m.value("netns_agent_probe_attached", &[("probe", probe), ("mode", &mode())])?;
        ensure!(got == 1.0, "{probe}/{}: attached={got}, want 1\n{}", mode(), agent.log_text());
        // Every other mode the probe has is reported, as 0.
        for other in MODES.iter().filter(|m| **m != mode()) {
            if let Some(got) = m.get("netns_agent_probe_attached", &[("probe", probe), ("mode", other)]) {
                ensure!(got == 0.0, "{probe}/{other}: attached={got}, want 0");
            }
        }
    }
    let info = m.value(
        "netns_agent_info",
        &[("version", env!("CARGO_PKG_VERSION")), ("kernel", &kernel_release())],
    )?;
    ensure!(info == 1.0, "netns_agent_info {info}");
    Ok(())
}

/// The README's probe list has the teardown-batch probe (`cleanup_net`), which the
/// `dying` state is told from: it must be registered, so that it is attached and reported.
#[test]
fn the_teardown_batch_probe_is_registered() -> Result<()> {
    let agent = Agent::start()?;
    let probes = registered_probes(&agent.scrape()?);
    ensure!(probes.contains("netns_cleanup"), "netns_cleanup not in netns_agent_probe_attached: {probes:?}");
    Ok(())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned()
}

#[test]
fn every_creation_path_counts_once_and_teardowns_match() -> Result<()> {
    let agent = Agent::start()?;
    let (ip, unshare, me) = (unique_comm("ip"), unique_comm("un"), unique_comm("cl"));
    set_thread_comm(&me)?;
    let before = agent.scrape()?;
    let since = agent.last_seq()?;

    let named: Vec<NamedNetns> = (0..5).map(|_| named_as(&ip, "lc")).collect::<Result<_>>()?;
    for _ in 0..3 {
        run_as("unshare", &unshare, &["-n", "true"])?;
    }
    clone_newnet(false)?;
    clone_newnet(false)?;
    clone_newnet(true)?;
    clone_newnet(true)?;
    // Copies of a namespace without CLONE_NEWNET must not count.
    run_as("unshare", &unshare, &["-m", "true"])?;
    run_as("unshare", &unshare, &["-u", "true"])?;

    let created = |m: &Metrics, comm: &str| m.get_or_zero("netns_created_total", &[("comm", comm)]);
    let after = wait_for("12 creations", Duration::from_secs(10), || {
        let m = agent.scrape()?;
        Ok((created(&m, &ip) + created(&m, &unshare) + created(&m, &me) >= 12.0).then_some(m))
    })?;
    // Nobody else uses these comms: the series did not exist before, and count exactly.
    for (comm, want) in [(&ip, 5.0), (&unshare, 3.0), (&me, 4.0)] {
        ensure!(!before.has("netns_created_total", &[("comm", comm)]), "{comm} counted before it ran");
        let got = after.value("netns_created_total", &[("comm", comm)])?;
        ensure!(got == want, "netns_created_total{{comm={comm:?}}} {got}, want {want}");
    }
    // Host-wide totals include other creators: at least ours.
    let total = |m: &Metrics| m.sum_where("netns_created_total", |_| true);
    ensure!(total(&after) - total(&before) >= 12.0, "total created");
    // The failure counter is always exported (its "(other)" series exists from the start).
    before.value("netns_setup_failures_total", &[("comm", "(other)")])?;
    after.value("netns_setup_failures_total", &[("comm", "(other)")])?;

    // The journal names each of our namespaces; none of our creations was a failure.
    let events = wait_for("our 12 creations in the journal", Duration::from_secs(10), || {
        let (events, _) = agent.events_since(since)?;
        let n = |comm: &str| events_of(&events, "netns_created", comm).len();
        Ok((n(&ip) >= 5 && n(&unshare) >= 3 && n(&me) >= 4).then_some(events))
    })?;
    for comm in [&ip, &unshare, &me] {
        ensure!(events_of(&events, "netns_setup_failed", comm).is_empty(), "a failure by {comm}");
    }
    let parked = inodes(&events_of(&events, "netns_created", &ip));
    let mut short: Vec<&Value> = events_of(&events, "netns_created", &unshare);
    short.extend(events_of(&events, "netns_created", &me));
    ensure!(parked.len() == 5 && short.len() == 7, "journal: {parked:?} and {} short-lived", short.len());
    let want: BTreeSet<u64> = named.iter().map(NamedNetns::inode).collect::<Result<_>>()?;
    ensure!(parked == want, "journal {parked:?}, /run/netns {want:?}");

    // The 3 unshare and 4 clone namespaces died with their processes; the 5 named live on.
    wait_for("7 teardowns in the journal", TEARDOWN, || {
        let (events, _) = agent.events_since(since)?;
        Ok(torn_down(&events, &short).iter().all(|t| *t).then_some(()))
    })?;
    for inode in &parked {
        ensure!(alive_in_agent(&agent, *inode)?, "named namespace {inode} not alive in the agent");
    }
    let mid = agent.scrape()?;

    for ns in named {
        ns.delete()?;
    }
    let created_named = events_of(&events, "netns_created", &ip);
    let events = wait_for("5 more teardowns in the journal", TEARDOWN, || {
        let (events, _) = agent.events_since(since)?;
        Ok(torn_down(&events, &created_named).iter().all(|t| *t).then_some(events))
    })?;
    // Each of ours torn down once: one teardown per creation, none twice.
    let counts = teardowns(&events, &created_named);
    ensure!(counts.iter().all(|n| *n == 1), "teardowns of the named namespaces: {counts:?}");
    let counts = teardowns(&events, &short);
    ensure!(counts.iter().all(|n| *n == 1), "teardowns of the short-lived namespaces: {counts:?}");
    for inode in &parked {
        ensure!(
            !alive_from(&agent, *inode, Some(&ip))?,
            "deleted namespace {inode} still alive in the agent"
        );
    }
    let end = wait_for("the teardown counter to follow the journal", TEARDOWN, || {
        let m = agent.scrape()?;
        let destroyed =
            m.value("netns_destroyed_total", &[])? - before.value("netns_destroyed_total", &[])?;
        Ok((destroyed >= 12.0).then_some(m))
    })?;
    // Host-wide: other namespaces may die meanwhile, so at least ours (exact per namespace above).
    ensure!(
        end.value("netns_destroyed_total", &[])? - mid.value("netns_destroyed_total", &[])? >= 5.0,
        "the 5 named teardowns"
    );
    ensure!(end.value("netns_agent_events_lost_total", &[])? == 0.0, "events lost");
    Ok(())
}

#[test]
fn setup_durations_are_observed_for_every_creation() -> Result<()> {
    let agent = Agent::start()?;
    let ip = unique_comm("ih");
    let before = agent.scrape()?;
    let since = agent.last_seq()?;
    let named: Vec<NamedNetns> = (0..4).map(|_| named_as(&ip, "hist")).collect::<Result<_>>()?;
    let count = |m: &Metrics| m.value("netns_setup_duration_seconds_count", &[]);
    let sum = |m: &Metrics| m.value("netns_setup_duration_seconds_sum", &[]);
    let inf = |m: &Metrics| m.value("netns_setup_duration_seconds_bucket", &[("le", "+Inf")]);
    let c0 = count(&before)?;
    let after = wait_for("4 observations", Duration::from_secs(10), || {
        let m = agent.scrape()?;
        Ok((count(&m)? - c0 >= 4.0).then_some(m))
    })?;
    // The histogram has no labels: other creators on the host add to it, so at least ours.
    ensure!(count(&after)? - c0 >= 4.0, "count {c0} -> {}", count(&after)?);
    ensure!(inf(&after)? == count(&after)?, "+Inf bucket equals count");
    // A namespace takes between a microsecond and (under emulation) a few seconds to set up.
    let added = sum(&after)? - sum(&before)?;
    ensure!(added > 4e-6, "sum of at least 4 setup times: {added}");
    // Exactly ours: each of our 4 creations has its setup time in the journal.
    let events = wait_created(&agent, since, &ip, 4)?;
    let ours = events_of(&events, "netns_created", &ip);
    ensure!(ours.len() == 4, "{} creations by {ip}", ours.len());
    for e in ours {
        let ms = e["setup_ms"].as_f64().context("no setup_ms")?;
        ensure!(ms > 1e-3 && ms < 10_000.0 * f64::from(slowdown()), "setup of {e}");
    }
    drop(named);
    Ok(())
}

#[test]
fn failed_creations_are_counted_not_created() -> Result<()> {
    let agent = Agent::start()?;
    let comm = unique_comm("fail");
    let before = agent.scrape()?;
    let since = agent.last_seq()?;
    let attempts = netns_agent_e2e::failing_creations_as(&comm, 3, 2)?;
    // Exactly ours, from the journal: every attempt a failure, none a creation.
    let events = wait_for("the failures in the journal", Duration::from_secs(10), || {
        let (events, _) = agent.events_since(since)?;
        Ok((events_of(&events, "netns_setup_failed", &comm).len() >= attempts as usize).then_some(events))
    })?;
    let failed = events_of(&events, "netns_setup_failed", &comm).len();
    ensure!(failed == attempts as usize, "journal failures: {failed}, attempts: {attempts}");
    ensure!(
        events_of(&events, "netns_created", &comm).is_empty(),
        "a failed creation in the journal as created"
    );
    // The counter carries the comm: exactly ours, under our comm, which failed nothing before.
    let after = wait_for("the failures counted", Duration::from_secs(10), || {
        let m = agent.scrape()?;
        Ok(m.has("netns_setup_failures_total", &[("comm", &comm)]).then_some(m))
    })?;
    ensure!(!before.has("netns_setup_failures_total", &[("comm", &comm)]), "{comm} failed before it ran");
    let failures = after.value("netns_setup_failures_total", &[("comm", &comm)])?;
    ensure!(failures == f64::from(attempts), "failures: {failures}, attempts: {attempts}");
    ensure!(!after.has("netns_created_total", &[("comm", &comm)]), "a failed creation counted as created");
    Ok(())
}

#[test]
fn a_call_failing_on_another_namespace_is_never_a_setup_failure() -> Result<()> {
    // unshare, clone and clone3 asking for a network and a UTS namespace, failing on the UTS
    // namespace's limit (ENOSPC), which the kernel checks before it starts the network
    // namespace. kprobe and fentry modes never see copy_net_ns run. Tracepoint mode sees only
    // the call's ENOSPC, which the network namespace limit returns too: unattributed, never
    // a setup failure. Then one real failure by the same comm, so that "none counted" cannot
    // be a count not yet read.
    let agent = Agent::start()?;
    let comm = unique_comm("beside");
    let since = agent.last_seq()?;
    let before = agent.scrape()?;
    let beside = netns_agent_e2e::failing_beside_as(&comm, 3, 2)?;
    let real = netns_agent_e2e::failing_creations_as(&comm, 1, 0)?;
    let events = wait_for("the real failure in the journal", Duration::from_secs(10), || {
        let (events, _) = agent.events_since(since)?;
        Ok((!events_of(&events, "netns_setup_failed", &comm).is_empty()).then_some(events))
    })?;
    let failed = events_of(&events, "netns_setup_failed", &comm).len();
    ensure!(
        failed == real as usize,
        "journal failures: {failed}, real failures: {real} (and {beside} beside)"
    );
    let after = agent.scrape()?;
    let failures = after.value("netns_setup_failures_total", &[("comm", &comm)])?;
    ensure!(failures == f64::from(real), "setup failures: {failures}, real: {real} (and {beside} beside)");
    let unattributed = after.value("netns_setup_failures_unattributed_total", &[])?
        - before.value("netns_setup_failures_unattributed_total", &[])?;
    if netns_agent_e2e::mode() == "tracepoint" {
        // A global counter: another process's failures may add to it, never take away.
        ensure!(unattributed >= f64::from(beside), "unattributed: {unattributed}, calls: {beside}");
    } else {
        ensure!(unattributed == 0.0, "unattributed in {} mode: {unattributed}", netns_agent_e2e::mode());
    }
    Ok(())
}

#[test]
fn reused_inode_numbers_do_not_confuse_the_alive_set() -> Result<()> {
    // Short-lived namespaces recycle inode numbers within seconds; keyed by inode, a new
    // namespace would collide with the dying one it replaces and the counts would drift.
    let agent = Agent::start()?;
    let comm = unique_comm("reuse");
    let since = agent.last_seq()?;
    let n = 30;
    for _ in 0..n {
        run_as("unshare", &comm, &["-n", "true"])?;
    }
    let events = wait_created(&agent, since, &comm, n)?;
    let created = events_of(&events, "netns_created", &comm);
    ensure!(created.len() == n, "{} creations in the journal, want {n}", created.len());
    let events = wait_for("every teardown in the journal", TEARDOWN, || {
        let (events, _) = agent.events_since(since)?;
        Ok(torn_down(&events, &created).iter().all(|t| *t).then_some(events))
    })?;
    // Exactly one teardown for each creation.
    let counts = teardowns(&events, &created);
    ensure!(counts.iter().all(|n| *n == 1), "teardowns per creation: {counts:?}");
    let m = agent.scrape()?;
    ensure!(m.value("netns_created_total", &[("comm", &comm)])? == n as f64, "created");
    // None of ours is alive in the agent. The kernel may have given one of these inode
    // numbers to another creator's namespace since: that one is not ours (its creator is).
    for inode in inodes(&created) {
        if let Some(view) = alive_view(&agent, inode)? {
            ensure!(view["creator"]["comm"] != comm.as_str(), "{inode} still alive: {view}");
        }
    }
    ensure!(m.value("netns_agent_untracked_namespaces_total", &[])? == 0.0, "untracked");
    Ok(())
}

#[test]
fn namespaces_from_before_start_are_seeded_and_their_teardown_counted() -> Result<()> {
    let ip = unique_comm("seed");
    let named: Vec<NamedNetns> = (0..3).map(|_| named_as(&ip, "seed")).collect::<Result<_>>()?;
    let agent = Agent::start()?;
    let seeded: BTreeSet<u64> = named.iter().map(NamedNetns::inode).collect::<Result<_>>()?;
    for inode in &seeded {
        ensure!(alive_in_agent(&agent, *inode)?, "{inode} not seeded as alive");
    }
    let m = agent.scrape()?;
    // Created before the agent started: not creations (the series of their comm is absent).
    ensure!(!m.has("netns_created_total", &[("comm", &ip)]), "seeded namespaces counted as creations");
    let since = agent.last_seq()?;
    let (events, _) = agent.events_since(0)?;
    ensure!(
        events
            .iter()
            .all(|e| e["kind"] != "netns_created" || !seeded.contains(&e["netns"].as_u64().unwrap_or(0))),
        "a seeded namespace in the journal as created"
    );

    let destroyed0 = m.value("netns_destroyed_total", &[])?;
    for ns in named {
        ns.delete()?;
    }
    wait_for("the 3 teardowns in the journal", TEARDOWN, || {
        let (events, _) = agent.events_since(since)?;
        let gone: BTreeSet<u64> = events
            .iter()
            .filter(|e| e["kind"] == "netns_destroyed")
            .filter_map(|e| e["netns"].as_u64())
            .collect();
        Ok(seeded.is_subset(&gone).then_some(()))
    })?;
    for inode in &seeded {
        ensure!(!alive_from(&agent, *inode, None)?, "{inode} alive after its teardown");
    }
    // Host-wide counter: other namespaces may die meanwhile, so at least ours.
    wait_for("the teardown counter", TEARDOWN, || {
        let m = agent.scrape()?;
        Ok((m.value("netns_destroyed_total", &[])? >= destroyed0 + 3.0).then_some(()))
    })
}

#[test]
fn alive_matches_the_namespaces_user_space_can_see() -> Result<()> {
    // Ground truth from /proc and mountinfo; on a test machine no namespace is held by a
    // socket alone, so the kernel's count and the visible set agree. Other namespaces may
    // come and go meanwhile (and teardown trails a process's exit): compare at a moment
    // the visible set stays the same around the scrape.
    let _named: Vec<NamedNetns> = (0..2).map(|_| NamedNetns::add("vis")).collect::<Result<_>>()?;
    let agent = Agent::start()?;
    let mut last = String::new();
    wait_for("netns_alive to equal the visible namespaces", Duration::from_secs(20), || {
        let visible = netns_agent_e2e::visible_namespaces();
        let alive = agent.scrape()?.value("netns_alive", &[])?;
        let again = netns_agent_e2e::visible_namespaces();
        last = format!("netns_alive {alive}, visible from /proc and mounts {}", visible.len());
        Ok((visible == again && alive == visible.len() as f64).then_some(()))
    })
    .with_context(|| last.clone())
}

#[test]
fn sigterm_stops_cleanly_and_detaches_every_program() -> Result<()> {
    let agent = Agent::start()?;
    // This agent's own programs (other eBPF users on the host load and unload theirs).
    let ours = agent.program_ids()?;
    ensure!(!ours.is_empty(), "the running agent holds no eBPF program");
    let loaded = loaded_program_ids()?;
    ensure!(ours.is_subset(&loaded), "programs {ours:?} not loaded: {loaded:?}");
    let (status, log) = agent.stop()?;
    ensure!(status.success(), "exit status {status}: {log}");
    ensure!(log.contains("all probes detached"), "{log}");
    // The kernel frees programs asynchronously after their last reference goes.
    wait_for("every program of the agent to be freed", Duration::from_secs(10), || {
        let left: BTreeSet<u32> = ours.intersection(&loaded_program_ids()?).copied().collect();
        if left.is_empty() { Ok(Some(())) } else { anyhow::bail!("still loaded: {left:?}") }
    })
}

/// Sets `kernel.bpf_stats_enabled` for the test and puts the old value back on drop.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> Result<Self> {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let old = std::fs::read_to_string(path)?.trim().to_owned();
        std::fs::write(path, "1")?;
        Ok(Self(old))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// Programs of `pid` attached through a perf-event link (kprobes, kretprobes, tracepoints),
/// by id, with whether each is a kprobe-type program: from the fdinfo of its descriptors.
fn perf_linked_programs(pid: u32) -> Result<std::collections::BTreeMap<u32, bool>> {
    let mut linked = BTreeSet::new();
    let mut kprobe_type = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else { continue };
        let field = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
        let prog_id = field("prog_id:").and_then(|v| v.parse::<u32>().ok());
        match (field("link_type:"), field("prog_type:"), prog_id) {
            (Some("perf"), _, Some(id)) => {
                linked.insert(id);
            }
            // BPF_PROG_TYPE_KPROBE
            (None, Some("2"), Some(id)) => {
                kprobe_type.insert(id);
            }
            _ => {}
        }
    }
    Ok(linked.into_iter().map(|id| (id, kprobe_type.contains(&id))).collect())
}

/// Kprobe misses come from the kernel's kprobe links (Linux 6.7 and later) and nowhere else:
/// where the agent attached no kprobe (this host has none: tracepoint mode, whose
/// tracepoints hold perf links too) the family is absent, not a made-up 0; where it did, one
/// series per kprobe program.
#[test]
fn kprobe_misses_are_exported_only_where_the_kernel_reports_them() -> Result<()> {
    let agent = Agent::start()?;
    let metrics = agent.scrape()?;
    let exported: BTreeSet<String> =
        metrics.series("netns_agent_kprobe_missed_total").iter().map(|l| l["program"].clone()).collect();
    let linked = perf_linked_programs(agent.pid())?;
    let kprobes: BTreeSet<u32> = linked.iter().filter(|(_, kprobe)| **kprobe).map(|(id, _)| *id).collect();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let mut version =
        release.trim().split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().unwrap_or(0));
    let reports = (version.next().unwrap_or(0), version.next().unwrap_or(0)) >= (6, 7);
    if mode() == "tracepoint" {
        // The reading is exercised: the tracepoints' perf links are read and told apart.
        ensure!(!linked.is_empty(), "tracepoint mode holds no perf link: {linked:?}");
    }
    if kprobes.is_empty() || !reports {
        ensure!(exported.is_empty(), "kprobe misses exported without kprobe links: {exported:?}");
        let text = agent.get("/metrics")?;
        ensure!(!text.contains("netns_agent_kprobe_missed_total"), "the family is present though empty");
    } else {
        // The kernel keeps 15 characters of a name (bpftool may show the full one from BTF):
        // compared on those, and by count (two programs may share the first 15).
        let cut = |name: &str| name.chars().take(15).collect::<String>();
        let mut names = BTreeSet::new();
        for id in &kprobes {
            let out = netns_agent_e2e::run("bpftool", &["prog", "show", "id", &id.to_string(), "--json"])?;
            let prog: Value = serde_json::from_slice(&out.stdout)?;
            names.insert(cut(prog["name"].as_str().context("bpftool name")?));
        }
        let exported_cut: BTreeSet<String> = exported.iter().map(|n| cut(n)).collect();
        ensure!(
            exported.len() == kprobes.len() && exported_cut == names,
            "series {exported:?} for the {} kprobe programs {names:?}",
            kprobes.len()
        );
    }
    println!("{} perf links, {} of kprobes; series: {exported:?}", linked.len(), kprobes.len());
    Ok(())
}

/// The kernel side's own cost: one series per program the agent holds, runs and run time
/// that grow with the work it does while the kernel counts them, and the memory its maps
/// are charged, equal to what the kernel reports for the agent's map descriptors.
#[test]
fn the_kernel_sides_cost_and_memory_are_exported() -> Result<()> {
    let agent = Agent::start()?;
    let stats = BpfStats::enable()?;
    let sum = |m: &Metrics, name: &str| m.sum_where(name, |_| true);
    let before = agent.scrape()?;
    ensure!(before.value("netns_agent_bpf_stats_enabled", &[])? == 1.0, "bpf_stats_enabled not seen as 1");
    let programs: BTreeSet<String> =
        before.series("netns_agent_program_runs_total").iter().map(|l| l["program"].clone()).collect();
    let held = agent.program_ids()?;
    ensure!(
        !programs.is_empty() && programs.len() == held.len(),
        "{} program series for the {} programs the agent holds: {programs:?}",
        programs.len(),
        held.len()
    );
    // Each creation runs at least one of the agent's programs.
    let created: Vec<NamedNetns> = (0..5).map(|_| NamedNetns::add("cost")).collect::<Result<_>>()?;
    let after = wait_for("runs counted for the creations", Duration::from_secs(10), || {
        let m = agent.scrape()?;
        let runs = sum(&m, "netns_agent_program_runs_total") - sum(&before, "netns_agent_program_runs_total");
        let time = sum(&m, "netns_agent_program_run_seconds_total")
            - sum(&before, "netns_agent_program_run_seconds_total");
        Ok((runs >= created.len() as f64 && time > 0.0).then_some(m))
    })?;
    // Map memory: the memlock of each map the agent holds, once per map.
    let mut maps = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{}/fdinfo", agent.pid()))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else { continue };
        let field = |key: &str| {
            text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) {
            maps.insert(id, memlock);
        }
    }
    let expected: u64 = maps.values().sum();
    let exported = after.value("netns_agent_kernel_map_bytes", &[])?;
    ensure!(
        exported == expected as f64,
        "map bytes {exported}, the kernel reports {expected} for {} maps",
        maps.len()
    );
    drop(stats);
    let off = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")?.trim() == "0";
    if off {
        ensure!(
            agent.scrape()?.value("netns_agent_bpf_stats_enabled", &[])? == 0.0,
            "bpf_stats_enabled stays 1"
        );
    }
    println!(
        "{} programs, runs +{} for 5 creations, {} maps {} bytes",
        programs.len(),
        sum(&after, "netns_agent_program_runs_total") - sum(&before, "netns_agent_program_runs_total"),
        maps.len(),
        expected
    );
    Ok(())
}

/// With the teardown probe disabled (`disabled_probes`), the periodic inventory walk is the
/// only thing that sees teardowns: every namespace the test deletes is destroyed exactly once
/// (one journal event, and no more after later walks), every teardown the agent counts meanwhile
/// is a reconciled one (the two host-wide counters move together, whoever else's namespaces
/// die), and a config reload that restarts the walking task adds no count.
#[test]
fn teardowns_only_the_inventory_sees_are_counted_once_each() -> Result<()> {
    const M: usize = 12;
    let path = std::env::temp_dir().join(format!("netns-agent-reconcile-{}.toml", std::process::id()));
    let config = |interval: u32| {
        format!("disabled_probes = [\"netns_destroy\"]\ninventory_interval_seconds = {interval}\n")
    };
    std::fs::write(&path, config(1))?;
    let agent = Agent::start_with(&["--attach", &mode(), "--config", path.to_str().unwrap_or_default()])?;
    ensure!(
        agent.log_text().contains("probe netns_destroy: disabled (disabled_probes)"),
        "the log does not say the probe is disabled:\n{}",
        agent.log_text()
    );
    ensure!(
        !registered_probes(&agent.scrape()?).contains("netns_destroy"),
        "a disabled probe has netns_agent_probe_attached series"
    );
    let comm = unique_comm("rec");
    let since = agent.last_seq()?;
    let named: Vec<NamedNetns> = (0..M).map(|_| named_as(&comm, "rec")).collect::<Result<_>>()?;
    // By cookie: a namespace made later (the marker below, another creator's) may reuse an
    // inode number of ours, never a cookie.
    let created = wait_created(&agent, since, &comm, M)?;
    let ours: BTreeSet<u64> =
        events_of(&created, "netns_created", &comm).iter().filter_map(|e| e["cookie"].as_u64()).collect();
    ensure!(ours.len() == M, "{} of {M} creations with a cookie in the journal", ours.len());
    let counters = |m: &Metrics| -> Result<(f64, f64)> {
        Ok((m.value("netns_destroyed_total", &[])?, m.value("netns_agent_reconciled_total", &[])?))
    };
    let (destroyed0, reconciled0) = counters(&agent.scrape()?)?;

    for ns in named {
        ns.delete()?;
    }
    // A reload as the teardowns begin restarts the task that walks (a walk under way
    // finishes first: walks hold the lock across walk and reconciliation).
    std::fs::write(&path, config(2))?;
    let status = std::process::Command::new("kill").args(["-HUP", &agent.pid().to_string()]).status()?;
    ensure!(status.success(), "kill -HUP {}", agent.pid());
    let destroyed_events = |events: &[Value]| -> Vec<u64> {
        events
            .iter()
            .filter(|e| e["kind"] == "netns_destroyed")
            .filter_map(|e| e["cookie"].as_u64())
            .filter(|cookie| ours.contains(cookie))
            .collect()
    };
    wait_for(&format!("the {M} teardowns in the journal"), TEARDOWN * 2, || {
        let seen: BTreeSet<u64> = destroyed_events(&agent.events_since(since)?.0).into_iter().collect();
        Ok((seen.len() == M).then_some(()))
    })?;
    ensure!(
        agent.log_text().contains("inventory_interval_seconds 1 -> 2"),
        "the reload did not apply:\n{}",
        agent.log_text()
    );

    // Later walks find nothing more of ours: a marker namespace deleted now is found gone by a
    // walk that starts after every one of ours was.
    let marker_comm = unique_comm("recm");
    let marker_since = agent.last_seq()?;
    let marker = named_as(&marker_comm, "recm")?;
    let marker_cookie = events_of(
        &wait_created(&agent, marker_since, &marker_comm, 1)?,
        "netns_created",
        &marker_comm,
    )[0]["cookie"]
        .as_u64()
        .context("the marker's creation has no cookie")?;
    marker.delete()?;
    wait_for("a later walk's teardown of the marker", TEARDOWN * 2, || {
        let (events, _) = agent.events_since(marker_since)?;
        Ok(events
            .iter()
            .any(|e| e["kind"] == "netns_destroyed" && e["cookie"].as_u64() == Some(marker_cookie))
            .then_some(()))
    })?;
    let ours_destroyed = destroyed_events(&agent.events_since(since)?.0);
    ensure!(
        ours_destroyed.len() == M,
        "{} teardown events for the {M} namespaces (each once): {ours_destroyed:?}",
        ours_destroyed.len()
    );
    // Host-wide: every teardown counted in this time was reconciled. Both counters move in the
    // same kernel call, so a scrape between the two adds may show them one apart: wait.
    let mut last = String::new();
    wait_for("destroyed and reconciled to move together", Duration::from_secs(10), || {
        let (destroyed, reconciled) = counters(&agent.scrape()?)?;
        let (d, r) = (destroyed - destroyed0, reconciled - reconciled0);
        last = format!("destroyed +{d}, reconciled +{r}");
        Ok((d == r && r >= (M + 1) as f64).then_some(()))
    })
    .with_context(|| last.clone())
}

/// A teardown that cannot finish (here: RTNL held, which `cleanup_net` needs to unregister
/// devices, as a leaked device reference would stall it) shows as `dying` once it has waited
/// `dying_after_seconds`, in the namespaces API and in the series the NetnsTeardownStuck alert
/// reads; once it finishes the namespace is gone, its teardown counted once.
#[test]
fn a_stuck_teardown_shows_as_dying_until_it_finishes() -> Result<()> {
    let agent = Agent::start_with_config("dying_after_seconds = 1\ninventory_interval_seconds = 1\n")?;
    // Where the ethtool request that holds RTNL is made: a veth (its driver answers it).
    let holder = NamedNetns::add("stkh")?;
    netns_agent_e2e::run(
        "ip",
        &["-n", &holder.name, "link", "add", "stk0", "type", "veth", "peer", "name", "stk1"],
    )?;
    let comm = unique_comm("stuck");
    let since = agent.last_seq()?;
    let victim = named_as(&comm, "stuck")?;
    let inode = victim.inode()?;
    wait_created(&agent, since, &comm, 1)?;
    // Kept by an fd while its mount goes: nothing the test does once RTNL is held needs RTNL.
    let last_reference = std::fs::File::open(format!("/run/netns/{}", victim.name))?;
    victim.delete()?;
    let hold = RtnlHold::take(&holder.name, "stk0")?;
    drop(last_reference);

    let state = |agent: &Agent| -> Result<Option<String>> {
        Ok(agent
            .namespaces()?
            .into_iter()
            .find(|ns| ns["netns"] == inode)
            .map(|ns| ns["state"].as_str().unwrap_or_default().to_owned()))
    };
    wait_for("the stuck teardown to show as dying", Duration::from_secs(20), || {
        Ok((state(&agent)?.as_deref() == Some("dying")).then_some(()))
    })?;
    let m = agent.scrape()?;
    let dying = m.value("netns_namespaces", &[("state", "dying")])?;
    ensure!(dying >= 1.0, "netns_namespaces{{state=\"dying\"}} {dying} with ours dying");
    let number = inode.to_string();
    ensure!(
        m.series("netns_leak_info").iter().any(|l| l["netns"] == number && l["state"] == "dying"),
        "no netns_leak_info series for the dying namespace {inode}"
    );

    drop(hold);
    wait_for("the teardown to finish", TEARDOWN, || {
        Ok(matches!(state(&agent)?.as_deref(), None | Some("gone")).then_some(()))
    })?;
    let (events, _) = agent.events_since(since)?;
    let teardowns = events
        .iter()
        .filter(|e| e["kind"] == "netns_destroyed" && e["netns"].as_u64() == Some(inode))
        .count();
    ensure!(teardowns == 1, "{teardowns} teardown events for the namespace (once)");
    Ok(())
}
