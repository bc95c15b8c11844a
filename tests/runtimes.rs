//! The real container runtimes, several containers at once, checked against what the runtimes
//! themselves report (`docker inspect`, `podman inspect`, the CNI result cache):
//! - Docker: the default bridge, a user-defined network, `docker network connect`/`disconnect`;
//! - Podman with netavark and with its CNI backend;
//! - the CNI plugins driven as a kubelet does (`bridge` with `host-local`, `loopback`, and a
//!   `host-device` move) on `ip netns add` namespaces, with a libcni 1.x result cache.
//!
//! For the namespaces each test makes (the host may be busy: nothing else is counted): exact
//! creations, device moves and teardowns in the journal; the container id, pod and main
//! process in `netns_info`, `/api/v1/namespaces`, `ls`, `show` and the creation event; route
//! hits for traffic sent from inside each container; and one `netns_info` series per
//! container from the moment the runtime says it runs. Every check is reported (`check ...
//! ok` / `FAILED`) and a test fails with the list of its failed checks.
//!
//! Run by `cargo xtask test` in its runtimes tier (tracepoint mode on the host kernel), which
//! installs Debian's docker.io, podman, runc, netavark, containernetworking-plugins and
//! busybox-static and starts dockerd when it is not running. Nothing is pulled: the image is
//! built here from busybox-static. Podman runs with runc (crun fails on hybrid cgroups) and
//! explicit open-file and process limits (root here lacks CAP_SYS_RESOURCE).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use netns_agent_e2e::{Agent, ChildProcess, Metrics, http_get, run, slowdown, teardowns, unique, wait_for};
use serde_json::Value;

/// Containers (or pods) each scenario starts at once.
const CONTAINERS: usize = 4;
/// The agent's rescan interval in these tests (seconds): short, so the tier stays short.
const RESCAN: u64 = 5;
const IMAGE: &str = "localhost/netns-agent-test-runtimes:1";
/// The CNI plugins of Debian's containernetworking-plugins.
const CNI_PATH: &str = "/usr/lib/cni";
/// The inode number of the host's namespace (init_net): fixed by the kernel
/// (PROC_NET_INIT_INO).
const INIT_NET: u64 = 0xEFFF_FFF9;

type Labels = BTreeMap<String, String>;

// ---------------------------------------------------------------------------------------
// Checks: every one is reported; the test fails at the end with those that failed.

#[derive(Default)]
struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn check(&mut self, name: &str, result: Result<()>) {
        match result {
            Ok(()) => println!("check {name} ... ok"),
            Err(err) => {
                println!("check {name} ... FAILED: {err:#}");
                self.failed.push(format!("{name}: {err:#}"));
            }
        }
    }

    fn finish(self) -> Result<()> {
        ensure!(self.failed.is_empty(), "{} checks failed:\n{}", self.failed.len(), self.failed.join("\n"));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Engines

#[derive(Clone)]
struct Engine {
    program: &'static str,
    /// CONTAINERS_CONF for podman: the network backend.
    conf: Option<PathBuf>,
    /// `run` options this host needs.
    options: Vec<String>,
}

impl Engine {
    fn docker() -> Self {
        Self { program: "docker", conf: None, options: vec!["--cap-add".into(), "NET_RAW".into()] }
    }

    /// Podman with `network_backend` (netavark or cni): podman 4.3 has no flag for it, so a
    /// containers.conf of our own names it.
    fn podman(backend: &str) -> Result<Self> {
        let conf = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("containers-{backend}.conf"));
        std::fs::write(&conf, format!("[network]\nnetwork_backend = \"{backend}\"\n"))?;
        let engine = Self {
            program: "podman",
            conf: Some(conf),
            options: [
                "--runtime",
                "runc",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
                "--pull=never",
                "--cap-add",
                "NET_RAW",
            ]
            .map(str::to_owned)
            .to_vec(),
        };
        let used = engine.output(&["info", "--format", "{{.Host.NetworkBackend}}"])?;
        ensure!(used == backend, "podman uses network backend {used:?}, not {backend:?}");
        Ok(engine)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.program);
        cmd.args(args).stdin(Stdio::null());
        if let Some(conf) = &self.conf {
            cmd.env("CONTAINERS_CONF", conf);
        }
        cmd
    }

    /// Runs the engine; its stdout, trimmed, or an error with its stderr.
    fn output(&self, args: &[&str]) -> Result<String> {
        let out = self.command(args).output().with_context(|| format!("running {}", self.program))?;
        ensure!(
            out.status.success(),
            "{} {} failed ({}): {}",
            self.program,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The busybox image, imported once from a rootfs made of Debian's busybox-static.
    fn image(&self) -> Result<&'static str> {
        if self.command(&["image", "inspect", IMAGE]).output().is_ok_and(|o| o.status.success()) {
            return Ok(IMAGE);
        }
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("runtimes-rootfs-"));
        std::fs::create_dir_all(dir.join("bin"))?;
        std::fs::copy(busybox()?, dir.join("bin/busybox"))?;
        for applet in ["sh", "sleep", "ping", "ip"] {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
        }
        let tar = Command::new("tar").arg("-C").arg(&dir).args(["-c", "."]).output()?;
        ensure!(tar.status.success(), "tar of the busybox rootfs failed");
        let mut import = self.command(&["import", "-", IMAGE]);
        let mut child = import.stdin(Stdio::piped()).stdout(Stdio::null()).spawn()?;
        std::io::Write::write_all(child.stdin.as_mut().context("stdin")?, &tar.stdout)?;
        drop(child.stdin.take());
        ensure!(child.wait()?.success(), "{} import failed", self.program);
        std::fs::remove_dir_all(&dir)?;
        Ok(IMAGE)
    }
}

fn busybox() -> Result<&'static str> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox (Debian package busybox-static) is needed")
}

fn netns_of(pid: u32) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino())
}

fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim_end().to_owned()
}

/// A container (or a pod sandbox), as its runtime reports it.
#[derive(Clone, Debug)]
struct Ctr {
    name: String,
    /// Full 64-hex id (the sandbox id for a CNI pod).
    id: String,
    /// Its init (main process) and that process's comm.
    pid: u32,
    comm: String,
    netns: u64,
    /// The netns file the runtime made (SandboxKey), empty when none.
    sandbox: String,
    /// The gateway of its first network, for traffic (none on the host network).
    gateway: String,
    /// When the runtime reported it started and the kernel showed its init running the
    /// container's command.
    started: Instant,
    pod: String,
    pod_namespace: String,
}

/// Removes containers on drop (a failed test leaves nothing behind).
struct Containers {
    engine: Engine,
    names: Vec<String>,
}

impl Drop for Containers {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self.engine.command(&["rm", "-f", name]).output();
        }
    }
}

/// Starts `networks.len()` containers at once (`sleep 600`, each on the network given, the
/// engine's default when `None`) and inspects them.
fn start_containers(
    engine: &Engine,
    prefix: &str,
    networks: &[Option<String>],
) -> Result<(Containers, Vec<Ctr>)> {
    let image = engine.image()?;
    let names: Vec<String> = networks.iter().map(|_| unique(prefix)).collect();
    let guard = Containers { engine: engine.clone(), names: names.clone() };
    let started: Vec<Result<Instant>> = thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .zip(networks)
            .map(|(name, network)| {
                s.spawn(move || {
                    let mut args: Vec<&str> = vec!["run", "-d", "--name", name];
                    args.extend(engine.options.iter().map(String::as_str));
                    if let Some(network) = network {
                        args.extend(["--network", network]);
                    }
                    args.extend([image, "sleep", "600"]);
                    engine.output(&args)?;
                    Ok(Instant::now())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| bail!("run thread panicked"))).collect()
    });
    let mut ctrs = Vec::new();
    for (name, started) in names.iter().zip(started) {
        let started = started?;
        ctrs.push(inspect(engine, name, started)?);
    }
    Ok((guard, ctrs))
}

fn inspect(engine: &Engine, name: &str, started: Instant) -> Result<Ctr> {
    let text = engine.output(&["inspect", name])?;
    let all: Value = serde_json::from_str(&text).context("inspect: not JSON")?;
    let c = &all[0];
    ensure!(c["State"]["Running"] == true, "{name} is not running: {}", c["State"]);
    let id = c["Id"].as_str().context("inspect: Id")?.to_owned();
    ensure!(id.len() == 64 && id.chars().all(|ch| ch.is_ascii_hexdigit()), "inspect: Id {id:?}");
    let pid = c["State"]["Pid"].as_u64().context("inspect: State.Pid")? as u32;
    // The runtime returns once the container's init was told to start, which may be just
    // before it has executed the command (comm `runc:[2:INIT]`): from when the kernel shows
    // the command, the main process is known for certain, and `started` is that moment.
    let comm = wait_for(&format!("{name}'s init to execute its command"), Duration::from_secs(10), || {
        let comm = comm_of(pid);
        Ok((!comm.is_empty() && !comm.starts_with("runc:")).then_some(comm))
    })?;
    let started = started.max(Instant::now());
    let gateway = c["NetworkSettings"]["Networks"]
        .as_object()
        .and_then(|nets| nets.values().find_map(|n| n["Gateway"].as_str().filter(|g| !g.is_empty())))
        .unwrap_or_default()
        .to_owned();
    Ok(Ctr {
        name: name.to_owned(),
        id,
        pid,
        comm,
        netns: netns_of(pid)?,
        sandbox: c["NetworkSettings"]["SandboxKey"].as_str().unwrap_or("").to_owned(),
        gateway,
        started,
        pod: String::new(),
        pod_namespace: String::new(),
    })
}

// ---------------------------------------------------------------------------------------
// netns_info over time

/// Each label set a namespace's `netns_info` had, with the start time of the last scrape
/// that showed it.
#[derive(Clone, Debug)]
struct Seen {
    labels: Labels,
    last: Instant,
}

/// Scrapes `/metrics` continuously in a thread, recording every `netns_info` label set.
struct Sampler {
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<BTreeMap<String, Vec<Seen>>>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let history: Arc<Mutex<BTreeMap<String, Vec<Seen>>>> = Arc::default();
        let handle = {
            let (stop, history) = (stop.clone(), history.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    if let Ok(text) = http_get(port, "/metrics") {
                        let m = Metrics::parse(&text);
                        let mut history = history.lock().unwrap();
                        for labels in m.series("netns_info") {
                            let seen = history.entry(labels["netns"].clone()).or_default();
                            match seen.iter_mut().find(|s| s.labels == labels) {
                                Some(s) => s.last = at,
                                None => seen.push(Seen { labels, last: at }),
                            }
                        }
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self { stop, history, handle: Some(handle) }
    }

    /// Label sets of `netns` shown by a scrape that began at or after `since`.
    fn seen_since(&self, netns: u64, since: Instant) -> Vec<Seen> {
        let history = self.history.lock().unwrap();
        history.get(&netns.to_string()).into_iter().flatten().filter(|s| s.last >= since).cloned().collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn info_of(m: &Metrics, netns: u64) -> Option<Labels> {
    m.series("netns_info").into_iter().find(|l| l["netns"] == netns.to_string())
}

/// Where the labels of `netns_info` differ from what the runtime reports; empty when right.
fn label_mismatches(c: &Ctr, l: &Labels) -> Vec<String> {
    let mut wrong = Vec::new();
    for (key, want) in [
        ("container_id", c.id.clone()),
        ("pid", c.pid.to_string()),
        ("comm", c.comm.clone()),
        ("pod", c.pod.clone()),
        ("pod_namespace", c.pod_namespace.clone()),
    ] {
        let got = l.get(key).map(String::as_str).unwrap_or("<absent>");
        if got != want {
            wrong.push(format!("{key}={got:?} (expected {want:?})"));
        }
    }
    if !c.sandbox.is_empty() && !names_match(&l["name"], &c.sandbox) {
        wrong.push(format!("name={:?} (expected the netns file {})", l["name"], c.sandbox));
    }
    wrong
}

/// Whether the comma-separated `name` label (bare `ip netns` names, other nsfs mounts by
/// path) names the netns file `sandbox` (`/var/run` is `/run`).
fn names_match(name: &str, sandbox: &str) -> bool {
    let file = sandbox.rsplit('/').next().unwrap_or(sandbox);
    name.split(',').any(|n| n == file || n.ends_with(&format!("/{file}")))
}

// ---------------------------------------------------------------------------------------
// The common checks

/// Expected device moves of one container over its life (in, out).
type Moves = BTreeMap<u64, (u64, u64)>;

/// Route hits counted for `netns` so far.
fn hits(m: &Metrics, netns: u64) -> f64 {
    m.sum_where("netns_route_lookups_total", |l| {
        l.get("netns").map(String::as_str) == Some(&netns.to_string()) && l["result"] == "hit"
    })
}

/// What every scenario checks while its containers run: labels eventually right, then one
/// series since start, the API, `ls`, `show`, the creation events, and route hits for pings
/// from inside each container (`ping` runs `ping -c 3 -W 1 GATEWAY` in it).
fn check_running(
    checks: &mut Checks,
    agent: &Agent,
    sampler: &Sampler,
    ctrs: &[Ctr],
    since: u64,
    creation_carries_id: bool,
    ping: &dyn Fn(&Ctr) -> Result<()>,
) -> Result<BTreeMap<u64, u64>> {
    // Eventually right: a bounded wait of three rescans.
    let mut last = BTreeMap::new();
    let settled = wait_for(
        "netns_info of every container to match inspect",
        Duration::from_secs(3 * RESCAN + 10),
        || {
            let m = agent.scrape()?;
            last = ctrs.iter().map(|c| (c.name.clone(), info_of(&m, c.netns))).collect();
            Ok(ctrs
                .iter()
                .all(|c| info_of(&m, c.netns).is_some_and(|l| label_mismatches(c, &l).is_empty()))
                .then_some(()))
        },
    );
    checks.check(
        "netns_info names each container's id, main process (pid, comm), pod and netns file",
        settled.map_err(|e| {
            let details: Vec<String> = ctrs
                .iter()
                .map(|c| match &last[&c.name] {
                    None => format!("{} (netns {}): no netns_info", c.name, c.netns),
                    Some(l) => {
                        format!("{} (netns {}): {}", c.name, c.netns, label_mismatches(c, l).join(", "))
                    }
                })
                .collect();
            e.context(details.join("; "))
        }),
    );
    // One series from start on: watch two more rescans after the last start, so that any
    // correction the agent makes is seen, then require a single label set since each start.
    let newest = ctrs.iter().map(|c| c.started).max().context("no containers")?;
    let until = newest + Duration::from_secs(2 * RESCAN + 2) * slowdown();
    while Instant::now() < until {
        thread::sleep(Duration::from_millis(200));
    }
    checks.check("one netns_info series per container from the moment it runs, and it is right", {
        let mut problems = Vec::new();
        for c in ctrs {
            let seen = sampler.seen_since(c.netns, c.started);
            let wrong: Vec<String> = seen
                .iter()
                .filter(|s| !label_mismatches(c, &s.labels).is_empty())
                .map(|s| {
                    format!(
                        "[{}] still exported {:.1} s after start",
                        label_mismatches(c, &s.labels).join(", "),
                        s.last.saturating_duration_since(c.started).as_secs_f64()
                    )
                })
                .collect();
            if seen.len() != 1 || !wrong.is_empty() {
                problems.push(format!(
                    "{} (netns {}): {} label sets after start; wrong ones: {}",
                    c.name,
                    c.netns,
                    seen.len(),
                    if wrong.is_empty() { "none".to_owned() } else { wrong.join("; ") }
                ));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(anyhow::anyhow!(problems.join("\n"))) }
    });

    // The API, `ls` and `show`.
    let api = agent.namespaces()?;
    let by_netns =
        |list: &[Value], netns: u64| list.iter().find(|n| n["netns"].as_u64() == Some(netns)).cloned();
    let view_problems = |c: &Ctr, v: &Value| -> Vec<String> {
        let mut wrong = Vec::new();
        for (key, got, want) in [
            ("container_id", v["container_id"].clone(), Value::from(c.id.clone())),
            ("main_process.pid", v["main_process"]["pid"].clone(), Value::from(c.pid)),
            ("main_process.comm", v["main_process"]["comm"].clone(), Value::from(c.comm.clone())),
            ("pod", v["pod"].clone(), Value::from(c.pod.clone())),
            ("pod_namespace", v["pod_namespace"].clone(), Value::from(c.pod_namespace.clone())),
        ] {
            if got != want {
                wrong.push(format!("{key} {got} (expected {want})"));
            }
        }
        wrong
    };
    checks.check("/api/v1/namespaces and ls --json: container id, main process, pod", {
        let ls: Vec<Value> = serde_json::from_str(&agent.cli(&["ls", "--json"])?).context("ls --json")?;
        let mut problems = Vec::new();
        for (what, list) in [("/api/v1/namespaces", &api), ("ls --json", &ls)] {
            for c in ctrs {
                match by_netns(list, c.netns) {
                    None => problems.push(format!("{what}: {} (netns {}) missing", c.name, c.netns)),
                    Some(v) => {
                        let wrong = view_problems(c, &v);
                        if !wrong.is_empty() {
                            problems.push(format!(
                                "{what}: {} (netns {}): {}",
                                c.name,
                                c.netns,
                                wrong.join(", ")
                            ));
                        }
                    }
                }
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(anyhow::anyhow!(problems.join("\n"))) }
    });
    checks.check("ls and show (text): main process, container or pod", {
        let ls = agent.cli(&["ls"])?;
        let mut problems = Vec::new();
        for c in ctrs {
            let process = format!("{}/{}", c.pid, c.comm);
            let owner = if c.pod.is_empty() {
                c.id[..12].to_owned()
            } else {
                format!("{}/{}", c.pod_namespace, c.pod)
            };
            let row = ls.lines().find(|l| l.split_whitespace().next() == Some(&c.netns.to_string()));
            match row {
                Some(row) if row.contains(&process) && row.contains(&owner) => {}
                other => {
                    problems.push(format!("ls: {} row {other:?}, expected {process} and {owner}", c.netns))
                }
            }
            let show = agent.cli(&["show", &c.netns.to_string()])?;
            for want in [
                format!("main process  pid {} ({})", c.pid, c.comm),
                format!("container     {}", c.id),
                format!(
                    "pod           {}",
                    if c.pod.is_empty() { "-".to_owned() } else { format!("{}/{}", c.pod_namespace, c.pod) }
                ),
            ] {
                if !show.lines().any(|l| l.trim_end() == want) {
                    problems.push(format!("show {}: no line {want:?} in:\n{show}", c.netns));
                }
            }
            let json: Value = serde_json::from_str(&agent.cli(&["show", &c.netns.to_string(), "--json"])?)?;
            let wrong = view_problems(c, &json["namespace"]);
            if !wrong.is_empty() {
                problems.push(format!("show --json {}: {}", c.netns, wrong.join(", ")));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(anyhow::anyhow!(problems.join("\n"))) }
    });

    // Creations: exactly one per namespace (by cookie), carrying the container id.
    let cookies: BTreeMap<u64, u64> =
        ctrs.iter().filter_map(|c| Some((c.netns, by_netns(&api, c.netns)?["cookie"].as_u64()?))).collect();
    let (events, _) = agent.events_since(since)?;
    checks.check("exactly one creation per namespace in the journal", {
        let problems: Vec<String> = ctrs
            .iter()
            .filter_map(|c| {
                let n = events
                    .iter()
                    .filter(|e| e["kind"] == "netns_created" && e["netns"].as_u64() == Some(c.netns))
                    .count();
                (n != 1).then(|| format!("{} (netns {}): {n} creations", c.name, c.netns))
            })
            .collect();
        if problems.is_empty() { Ok(()) } else { Err(anyhow::anyhow!(problems.join("\n"))) }
    });
    if creation_carries_id {
        checks.check("the creation event carries the container id (journal, show --json)", {
            let mut problems = Vec::new();
            for c in ctrs {
                let created = events
                    .iter()
                    .find(|e| e["kind"] == "netns_created" && e["netns"].as_u64() == Some(c.netns));
                match created {
                    Some(e) if e["container_id"] == c.id.as_str() => {}
                    Some(e) => problems.push(format!(
                        "{} (netns {}): created by pid {} ({}) with container_id {} (expected {})",
                        c.name, c.netns, e["pid"], e["comm"], e["container_id"], c.id
                    )),
                    None => problems.push(format!("{} (netns {}): no creation", c.name, c.netns)),
                }
                let json: Value =
                    serde_json::from_str(&agent.cli(&["show", &c.netns.to_string(), "--json"])?)?;
                let shown =
                    json["events"].as_array().into_iter().flatten().find(|e| e["kind"] == "netns_created");
                if let Some(e) = shown
                    && e["container_id"] != c.id.as_str()
                {
                    problems.push(format!(
                        "show --json {}: creation container_id {}",
                        c.netns, e["container_id"]
                    ));
                }
                let creator = &json["namespace"]["creator"]["container_id"];
                if creator != c.id.as_str() {
                    problems.push(format!("show --json {}: creator.container_id {creator}", c.netns));
                }
            }
            if problems.is_empty() { Ok(()) } else { Err(anyhow::anyhow!(problems.join("\n"))) }
        });
    }

    // Traffic: pings from inside each container count as hits in its namespace.
    checks.check("pings from inside each container count route hits in its namespace", {
        let mut problems = Vec::new();
        for c in ctrs {
            let before = hits(&agent.scrape()?, c.netns);
            if let Err(err) = ping(c) {
                problems.push(format!("{}: the pings could not be sent: {err:#}", c.name));
                continue;
            }
            let counted = wait_for("the pings' route hits", Duration::from_secs(10), || {
                let now = hits(&agent.scrape()?, c.netns);
                Ok((now >= before + 3.0).then_some(now))
            });
            if let Err(err) = counted {
                let now = hits(&agent.scrape()?, c.netns);
                problems.push(format!(
                    "{} (netns {}): hits {before} -> {now} after 3 pings: {err}",
                    c.name, c.netns
                ));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(anyhow::anyhow!(problems.join("\n"))) }
    });
    Ok(cookies)
}

/// After the containers are gone: one teardown each, and exactly the expected moves over
/// their lives (journal, by cookie: inode numbers come back).
fn check_gone(
    checks: &mut Checks,
    agent: &Agent,
    ctrs: &[Ctr],
    cookies: &BTreeMap<u64, u64>,
    since: u64,
    moves: &Moves,
) -> Result<()> {
    let created = |events: &[Value]| -> Vec<Value> {
        ctrs.iter()
            .filter_map(|c| {
                events
                    .iter()
                    .find(|e| {
                        e["kind"] == "netns_created" && e["cookie"].as_u64() == cookies.get(&c.netns).copied()
                    })
                    .cloned()
            })
            .collect()
    };
    let teardown = wait_for("every namespace's teardown in the journal", Duration::from_secs(30), || {
        let (events, _) = agent.events_since(since)?;
        let made = created(&events);
        let refs: Vec<&Value> = made.iter().collect();
        let n = teardowns(&events, &refs);
        Ok((made.len() == ctrs.len() && n.iter().all(|n| *n >= 1)).then_some(n))
    });
    checks.check(
        "exactly one teardown per namespace in the journal",
        match teardown {
            Ok(n) if n.iter().all(|n| *n == 1) => Ok(()),
            Ok(n) => Err(anyhow::anyhow!("teardowns per namespace {n:?}")),
            Err(err) => Err(err),
        },
    );
    let (events, _) = agent.events_since(since)?;
    checks.check("exactly the device moves the runtime made (journal)", {
        let mut problems = Vec::new();
        for c in ctrs {
            let Some(cookie) = cookies.get(&c.netns) else {
                problems.push(format!("{}: no cookie", c.name));
                continue;
            };
            let moved = |key: &str| {
                events
                    .iter()
                    .filter(|e| e["kind"] == "device_moved" && e[key].as_u64() == Some(*cookie))
                    .map(|e| format!("{} {}->{} by {}", e["device"], e["netns"], e["to_netns"], e["comm"]))
                    .collect::<Vec<_>>()
            };
            let (ins, outs) = (moved("to_cookie"), moved("cookie"));
            let want = moves.get(&c.netns).copied().unwrap_or((0, 0));
            if (ins.len() as u64, outs.len() as u64) != want {
                problems.push(format!(
                    "{} (netns {}): moved in {} {ins:?}, out {} {outs:?}; expected in {}, out {}",
                    c.name,
                    c.netns,
                    ins.len(),
                    outs.len(),
                    want.0,
                    want.1
                ));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(anyhow::anyhow!(problems.join("\n"))) }
    });
    Ok(())
}

fn agent_with(extra: &str) -> Result<Agent> {
    Agent::start_with_config(&format!("attribution_interval_seconds = {RESCAN}\n{extra}"))
}

/// Runs `podman`/`docker` `rm -f` on every container at once.
fn remove_all(engine: &Engine, ctrs: &[Ctr]) -> Result<()> {
    let results: Vec<Result<String>> = thread::scope(|s| {
        let handles: Vec<_> =
            ctrs.iter().map(|c| s.spawn(|| engine.output(&["rm", "-f", &c.name]))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| bail!("rm thread panicked"))).collect()
    });
    results.into_iter().collect::<Result<Vec<_>>>().map(|_| ())
}

/// `ping -c 3 -W 1 GATEWAY` inside the container: each echo request is an output route lookup
/// in its namespace whether or not a reply comes (exit 1 is no reply), so either will do.
fn exec_ping(engine: &Engine) -> impl Fn(&Ctr) -> Result<()> + '_ {
    move |c: &Ctr| {
        let out = engine.command(&["exec", &c.name, "ping", "-c", "3", "-W", "1", &c.gateway]).output()?;
        ensure!(
            matches!(out.status.code(), Some(0 | 1)),
            "{} exec ping failed ({}): {}",
            engine.program,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios

#[test]
fn docker_bridge_user_network_connect_and_disconnect() -> Result<()> {
    let engine = Engine::docker();
    engine.output(&["info", "--format", "{{.ServerVersion}}"]).context("dockerd must be running")?;
    let network = unique("rtnet");
    engine.output(&["network", "create", &network])?;
    let _network = DockerNetwork(network.clone());
    let network_name = network;
    let agent = agent_with("")?;
    let sampler = Sampler::start(agent.port);
    let since = agent.last_seq()?;
    let networks: Vec<Option<String>> =
        (0..CONTAINERS).map(|i| (i >= CONTAINERS / 2).then(|| network_name.clone())).collect();
    let (_guard, ctrs) = start_containers(&engine, "rtdocker", &networks)?;
    let mut checks = Checks::default();
    // libnetwork makes each veth pair on the host and moves one end in (1 in per network
    // joined); leaving a network moves it back out before deleting it (1 out).
    let mut moves: Moves = ctrs.iter().map(|c| (c.netns, (1, 1))).collect();
    // The first container (default bridge) joins the user network and leaves it again.
    engine.output(&["network", "connect", &network_name, &ctrs[0].name])?;
    engine.output(&["network", "disconnect", &network_name, &ctrs[0].name])?;
    moves.insert(ctrs[0].netns, (2, 2));
    // A host-network container beside them: Docker bind-mounts the host's namespace as
    // /run/docker/netns/default for it.
    let (_host_guard, host_ctrs) = start_containers(&engine, "rtdockerhost", &[Some("host".into())])?;
    let ping = exec_ping(&engine);
    let cookies = check_running(&mut checks, &agent, &sampler, &ctrs, since, true, &ping)?;
    checks.check("the host's namespace (init_net) is named host and is no container's", {
        let m = agent.scrape()?;
        let (events, _) = agent.events_since(since)?;
        let labels = info_of(&m, INIT_NET);
        let created = events.iter().filter(|e| e["kind"] == "netns_created" && e["netns"].as_u64() == Some(INIT_NET)).count();
        match labels {
            _ if host_ctrs[0].netns != INIT_NET => {
                Err(anyhow::anyhow!("the host-network container is not in init_net ({INIT_NET})"))
            }
            None => Err(anyhow::anyhow!("no netns_info for init_net ({INIT_NET})")),
            Some(l) if l["name"] != "host" || !l["container_id"].is_empty() || created != 0 => Err(anyhow::anyhow!(
                "netns_info of init_net ({INIT_NET}) with a host-network container running: name={:?} \
                 container_id={:?} pid={:?} comm={:?}; {created} creations of it in the journal (expected name \
                 \"host\", no container, no creation)",
                l["name"],
                l["container_id"],
                l["pid"],
                l["comm"]
            )),
            Some(_) => Ok(()),
        }
    });
    drop(sampler);
    remove_all(&engine, &ctrs)?;
    check_gone(&mut checks, &agent, &ctrs, &cookies, since, &moves)?;
    checks.finish()
}

/// Podman's CNI backend makes a `cni-podman0` bridge for its default network, 10.88.0.0/16:
/// the subnet netavark's `podman0` uses too. Left behind (down, once the containers are gone),
/// its route comes first and cuts every netavark container off from the host's published
/// ports (the DaemonSet tier's scrapes timed out so). Deleted on drop once no port is on it;
/// CNI makes it again when next needed.
struct CniBridge;

impl Drop for CniBridge {
    fn drop(&mut self) {
        let ports = Path::new("/sys/class/net/cni-podman0/brif");
        if std::fs::read_dir(ports).is_ok_and(|mut p| p.next().is_none()) {
            let _ = Command::new("ip").args(["link", "del", "cni-podman0"]).status();
        }
    }
}

fn podman_scenario(backend: &str) -> Result<()> {
    // Declared first, dropped last: after the containers' guard.
    let _bridge = (backend == "cni").then_some(CniBridge);
    let engine = Engine::podman(backend)?;
    let agent = agent_with("")?;
    let sampler = Sampler::start(agent.port);
    let since = agent.last_seq()?;
    let (_guard, ctrs) = start_containers(&engine, &format!("rt{backend}"), &vec![None; CONTAINERS])?;
    let mut checks = Checks::default();
    if backend == "cni" {
        // What the agent reads: podman's libcni cache names each container and its netns file,
        // with K8S_POD_NAME alone (not a pod).
        checks.check("podman's CNI cache records each container (the ground truth read)", {
            let mut problems = Vec::new();
            for c in &ctrs {
                let path = Path::new("/var/lib/cni/results").join(format!("podman-{}-eth0", c.id));
                let entry: Value = match std::fs::read_to_string(&path).map(|t| serde_json::from_str(&t)) {
                    Ok(Ok(entry)) => entry,
                    other => {
                        problems.push(format!("{}: {other:?}", path.display()));
                        continue;
                    }
                };
                let sandboxes: Vec<&str> = entry["result"]["interfaces"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["sandbox"].as_str())
                    .collect();
                let args = entry["cniArgs"].to_string();
                if entry["containerId"] != c.id.as_str()
                    || !sandboxes.contains(&c.sandbox.as_str())
                    || args.contains("K8S_POD_NAMESPACE")
                {
                    problems.push(format!(
                        "{}: containerId {}, sandboxes {sandboxes:?}, cniArgs {args}",
                        path.display(),
                        entry["containerId"]
                    ));
                }
            }
            if problems.is_empty() { Ok(()) } else { Err(anyhow::anyhow!(problems.join("\n"))) }
        });
    }
    // netavark and the CNI bridge plugin create the container's end of the veth pair in
    // its namespace directly (the peer's IFLA_NET_NS_FD in the creation request): no move.
    let moves: Moves = ctrs.iter().map(|c| (c.netns, (0, 0))).collect();
    let ping = exec_ping(&engine);
    // Podman makes the namespace itself (`podman`, /run/netns/netns-UUID) before the container
    // exists: its creation cannot name a container that is not there yet. The container is
    // named from the first exec in the namespace on (checked above with the labels).
    let cookies = check_running(&mut checks, &agent, &sampler, &ctrs, since, false, &ping)?;
    drop(sampler);
    remove_all(&engine, &ctrs)?;
    check_gone(&mut checks, &agent, &ctrs, &cookies, since, &moves)?;
    checks.finish()
}

#[test]
fn podman_with_netavark() -> Result<()> {
    podman_scenario("netavark")
}

/// Podman's CNI backend writes a libcni cache with `K8S_POD_NAME` set to the container's
/// name and no `K8S_POD_NAMESPACE`: not a pod, so no pod labels.
#[test]
fn podman_with_cni() -> Result<()> {
    podman_scenario("cni")
}

/// Runs a CNI plugin; its stdout (the result JSON for ADD).
fn cni(
    plugin: &str,
    command: &str,
    config: &str,
    id: &str,
    netns: &str,
    ifname: &str,
    args: &str,
) -> Result<String> {
    let mut child = Command::new(Path::new(CNI_PATH).join(plugin))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", CNI_PATH)
        .env("CNI_ARGS", args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running the CNI plugin {plugin} (containernetworking-plugins)"))?;
    std::io::Write::write_all(child.stdin.as_mut().context("stdin")?, config.as_bytes())?;
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "CNI {plugin} {command} {ifname} failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(stdout)
}

fn base64(data: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A 64-hex sandbox id, unique to this run.
fn sandbox_id(i: usize) -> String {
    let seed = format!("{}-{}-{i}", std::process::id(), unique("s"));
    let mut out = String::new();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    while out.len() < 64 {
        for b in seed.bytes().chain(out.bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        out.push_str(&format!("{h:016x}"));
    }
    out.truncate(64);
    out
}

/// Tears down what the CNI scenario set up, in the kubelet's order, even when a check failed.
struct Pods {
    pods: Vec<(String, String, String)>,
    /// The bridge network's config; the host-device config and the pod it went to.
    bridge: String,
    host_device: Option<(String, usize)>,
    cache: PathBuf,
    ipam: PathBuf,
    dummy: String,
    bridge_dev: String,
}

impl Drop for Pods {
    fn drop(&mut self) {
        for (i, (ns, id, args)) in self.pods.iter().enumerate() {
            let path = format!("/run/netns/{ns}");
            if let Some((config, pod)) = &self.host_device
                && *pod == i
            {
                let _ = cni("host-device", "DEL", config, id, &path, "net1", args);
            }
            let _ = cni("bridge", "DEL", &self.bridge, id, &path, "eth0", args);
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.cache);
        let _ = std::fs::remove_dir_all(&self.ipam);
        let _ = Command::new("ip").args(["link", "del", &format!("{}p", self.dummy)]).output();
        let _ = Command::new("ip").args(["link", "del", &self.bridge_dev]).output();
    }
}

#[test]
fn cni_plugins_driven_as_a_kubelet_does() -> Result<()> {
    let u = unique("");
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cni-results-{u}"));
    let ipam = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cni-ipam-{u}"));
    std::fs::create_dir_all(&cache)?;
    let network = format!("rtk8s{u}");
    let bridge_dev = format!("rtbr{u}").chars().take(15).collect::<String>();
    let subnet = 20 + std::process::id() % 200;
    let bridge = serde_json::json!({
        "cniVersion": "1.0.0", "name": network, "type": "bridge", "bridge": bridge_dev, "isGateway": true,
        "ipam": {"type": "host-local", "subnet": format!("10.99.{subnet}.0/24"), "dataDir": ipam},
    })
    .to_string();
    let loopback = r#"{"cniVersion":"1.0.0","name":"lo","type":"loopback"}"#;
    let dummy = format!("rthd{u}").chars().take(14).collect::<String>();
    let host_device =
        serde_json::json!({"cniVersion": "1.0.0", "name": format!("rthd{u}"), "type": "host-device", "device": dummy})
            .to_string();
    let agent = agent_with(&format!("cni_cache_dir = \"{}\"\n", cache.display()))?;
    let sampler = Sampler::start(agent.port);
    let since = agent.last_seq()?;
    let mut pods = Pods {
        pods: Vec::new(),
        bridge: bridge.clone(),
        host_device: None,
        cache: cache.clone(),
        ipam: ipam.clone(),
        dummy: dummy.clone(),
        bridge_dev,
    };
    // The device: one end of a veth pair (this kernel has no dummy driver); the other end
    // stays on the host.
    run("ip", &["link", "add", &dummy, "type", "veth", "peer", "name", &format!("{dummy}p")])?;
    // The pods' sandboxes: a namespace each (as CRI runtimes pin them, under /run/netns) and
    // its pause process.
    let mut pauses = Vec::new();
    for i in 0..CONTAINERS {
        let ns = format!("rtpod{u}x{i}");
        let id = sandbox_id(i);
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=rt-shop;K8S_POD_NAME=web-{i};K8S_POD_INFRA_CONTAINER_ID={id}"
        );
        run("ip", &["netns", "add", &ns])?;
        pods.pods.push((ns.clone(), id, args));
        pauses.push(ChildProcess::spawn("ip", &["netns", "exec", &ns, "sleep", "600"])?);
    }
    // ADD, as the kubelet's runtime does it for each pod at once.
    let results: Vec<Result<String>> = thread::scope(|s| {
        let handles: Vec<_> = pods
            .pods
            .iter()
            .map(|(ns, id, args)| {
                let (bridge, path) = (&bridge, format!("/run/netns/{ns}"));
                s.spawn(move || {
                    cni("loopback", "ADD", loopback, id, &path, "lo", args)?;
                    cni("bridge", "ADD", bridge, id, &path, "eth0", args)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| bail!("CNI thread panicked"))).collect()
    });
    let mut ctrs = Vec::new();
    for (i, (((ns, id, args), result), pause)) in pods.pods.iter().zip(results).zip(&pauses).enumerate() {
        let result: Value = serde_json::from_str(&result?).context("bridge ADD result")?;
        let gateway = result["ips"][0]["gateway"].as_str().context("no gateway in the result")?.to_owned();
        // The libcni 1.x cache entry, without a top-level netns (the result's sandbox has it).
        let cni_args: Vec<Value> = args
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| Value::from(vec![k, v]))
            .collect();
        let entry = serde_json::json!({
            "kind": "cniCacheV1", "containerId": id, "config": base64(bridge.as_bytes()), "ifName": "eth0",
            "networkName": network, "cniArgs": cni_args, "result": result,
        });
        std::fs::write(cache.join(format!("{network}-{id}-eth0")), entry.to_string())?;
        let started = Instant::now();
        wait_for("the pause process to exec sleep", Duration::from_secs(5), || {
            Ok((comm_of(pause.pid()) == "sleep").then_some(()))
        })?;
        ctrs.push(Ctr {
            name: format!("rt-shop/web-{i}"),
            id: id.clone(),
            pid: pause.pid(),
            comm: "sleep".into(),
            netns: netns_of(pause.pid())?,
            sandbox: format!("/run/netns/{ns}"),
            gateway,
            started,
            pod: format!("web-{i}"),
            pod_namespace: "rt-shop".into(),
        });
    }
    // A host device given to the first pod (as for SR-IOV): moved in, and out at DEL.
    let (ns0, id0, args0) = pods.pods[0].clone();
    cni("host-device", "ADD", &host_device, &id0, &format!("/run/netns/{ns0}"), "net1", &args0)?;
    pods.host_device = Some((host_device.clone(), 0));
    let mut moves: Moves = ctrs.iter().map(|c| (c.netns, (0, 0))).collect();
    moves.insert(ctrs[0].netns, (1, 1));

    let mut checks = Checks::default();
    // The pods' labels come from the cache, read at the next rescan: the single-series rule
    // applies from when the cache entry was written plus one rescan.
    let ctrs_after_rescan: Vec<Ctr> = ctrs
        .iter()
        .cloned()
        .map(|mut c| {
            c.started += Duration::from_secs(RESCAN + 1) * slowdown();
            c
        })
        .collect();
    let ping = |c: &Ctr| -> Result<()> {
        let ns = c.sandbox.trim_start_matches("/run/netns/");
        let out = Command::new("ip")
            .args(["netns", "exec", ns, busybox()?, "ping", "-c", "3", "-W", "1", &c.gateway])
            .output()?;
        ensure!(matches!(out.status.code(), Some(0 | 1)), "ping in {ns} failed ({})", out.status);
        Ok(())
    };
    // `ip netns add` makes the namespace before any pod exists: no container id to carry.
    let cookies = check_running(&mut checks, &agent, &sampler, &ctrs_after_rescan, since, false, &ping)?;
    checks.check("the creations are `ip netns add`'s", {
        let (events, _) = agent.events_since(since)?;
        let wrong: Vec<String> = ctrs
            .iter()
            .filter_map(|c| {
                let e = events
                    .iter()
                    .find(|e| e["kind"] == "netns_created" && e["netns"].as_u64() == Some(c.netns))?;
                (e["comm"] != "ip").then(|| format!("{}: created by {}", c.name, e["comm"]))
            })
            .collect();
        if wrong.is_empty() { Ok(()) } else { Err(anyhow::anyhow!(wrong.join("; "))) }
    });
    drop(sampler);
    // DEL (host-device first: it moves the device back), cache entries removed, sandboxes gone.
    drop(pauses);
    drop(pods);
    check_gone(&mut checks, &agent, &ctrs, &cookies, since, &moves)?;
    checks.finish()
}

/// A Docker network, removed on drop (after its containers).
struct DockerNetwork(String);

impl Drop for DockerNetwork {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["network", "rm", &self.0]).output();
    }
}
