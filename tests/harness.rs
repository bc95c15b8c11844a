//! End-to-end test harness: starts the real agent as root, scrapes `/metrics`, and makes
//! kernel ground truth (namespaces, processes) for the tests to count.
//!
//! Environment:
//! - `NETNS_AGENT_BIN`: the agent binary (default: `target/debug/netns-agent`).
//! - `NETNS_AGENT_TEST_MODE`: attach mode forced on the agent (default `tracepoint`, the
//!   only one the CI host kernel has; the VM matrix sets `kprobe` and `fentry`).
//! - `NETNS_AGENT_TEST_SLOWDOWN`: multiplies every wait (the VMs run under emulation).

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

/// The attach mode the tests force.
pub fn mode() -> String {
    std::env::var("NETNS_AGENT_TEST_MODE").unwrap_or_else(|_| "tracepoint".to_owned())
}

/// Scales waits for slow (emulated) machines.
pub fn slowdown() -> u32 {
    std::env::var("NETNS_AGENT_TEST_SLOWDOWN").ok().and_then(|s| s.parse().ok()).unwrap_or(1)
}

pub fn agent_bin() -> PathBuf {
    std::env::var_os("NETNS_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/netns-agent"))
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Polls `check` until it returns `Ok(Some(_))` or the (scaled) timeout passes; the last
/// error explains the failure.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout * slowdown();
    loop {
        let last = match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => "condition not met".to_owned(),
            Err(err) => format!("{err:#}"),
        };
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}: {last}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A running agent, stopped with SIGTERM on drop.
pub struct Agent {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
}

impl Agent {
    /// Starts the agent in the test mode and waits until `/metrics` answers.
    pub fn start() -> Result<Self> {
        Self::start_with(&["--attach", &mode()])
    }

    pub fn start_with(extra: &[&str]) -> Result<Self> {
        Self::start_wrapped(&[], extra)
    }

    /// Starts the agent under `wrapper` (a command that execs the rest of its command line,
    /// as `setpriv ... --` does), with `extra` arguments to `run`.
    pub fn start_wrapped(wrapper: &[&str], extra: &[&str]) -> Result<Self> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let port = free_port();
        let log = std::env::temp_dir().join(format!(
            "netns-agent-test-{}-{}.log",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(agent_bin());
                cmd
            }
            None => Command::new(agent_bin()),
        };
        let child = cmd
            .args(["run", "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", agent_bin().display()))?;
        let mut agent = Self { child: Some(child), port, log };
        wait_for("the agent to serve /metrics", Duration::from_secs(30), || {
            if let Some(status) = agent.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("agent exited with {status}: {}", agent.log_text());
            }
            Ok(agent.scrape().ok().map(|_| ()))
        })?;
        Ok(agent)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Result<String> {
        http_get(self.port, path)
    }

    pub fn scrape(&self) -> Result<Metrics> {
        Ok(Metrics::parse(&self.get("/metrics")?))
    }

    /// Stops the agent with SIGTERM and returns its exit status and log.
    pub fn stop(mut self) -> Result<(std::process::ExitStatus, String)> {
        let mut child = self.child.take().context("already stopped")?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = wait_for("the agent to exit", Duration::from_secs(20), || Ok(child.try_wait()?))?;
        Ok((status, self.log_text()))
    }
}

impl Agent {
    /// Kills the agent with SIGKILL (no clean-up of its own can run) and reaps it.
    pub fn kill(mut self) -> Result<String> {
        let mut child = self.child.take().context("already stopped")?;
        child.kill()?;
        child.wait()?;
        Ok(self.log_text())
    }
}

/// A fresh directory under the system's temp dir, removed (with its content) on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(unique(&format!("netns-agent-{prefix}-")));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

/// A GET against loopback that must answer 200; its body.
pub fn http_get(port: u16, path: &str) -> Result<String> {
    let (status, body) = http_get_status(port, path)?;
    ensure!(status == 200, "GET {path}: HTTP {status}: {}", body.trim());
    Ok(body)
}

/// A GET against loopback: the status (any, 404 and 500 included) and the body.
pub fn http_get_status(port: u16, path: &str) -> Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // Loopback only: never through a proxy the environment may name.
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(10) * slowdown()))
        .build()
        .into();
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut response = agent.get(&url).call().with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    // An exposition of many namespaces is large: no 10 MB default cap.
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()
        .with_context(|| format!("reading the body of {url}"))?;
    Ok((status, body))
}

/// A parsed exposition: `name{label="value",...}` -> value.
#[derive(Debug, Clone)]
pub struct Metrics {
    samples: BTreeMap<String, BTreeMap<Vec<(String, String)>, f64>>,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let mut samples: BTreeMap<String, BTreeMap<Vec<(String, String)>, f64>> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or(f64::NAN),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, Vec::new()),
            };
            samples.entry(name.to_owned()).or_default().insert(labels, value);
        }
        Self { samples, text: text.to_owned() }
    }

    /// The sample with exactly these labels, `None` when the series is absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut key: Vec<(String, String)> =
            labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        key.sort();
        self.samples.get(name).and_then(|m| m.get(&key)).copied()
    }

    /// The sample with exactly these labels; an error naming the series when it is absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        self.get(name, labels).with_context(|| format!("absent: {}", series_name(name, labels)))
    }

    /// The sample, or 0 when absent. Only for counters that legitimately start absent (a
    /// labelled counter before its first event); anything always exported takes `value`.
    pub fn get_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Whether the series exists.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.get(name, labels).is_some()
    }

    /// Sum over every sample of `name` whose labels satisfy `filter`; 0 when none does.
    pub fn sum_where(&self, name: &str, filter: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
        self.samples
            .get(name)
            .map(|m| m.iter().filter(|(k, _)| filter(&k.iter().cloned().collect())).map(|(_, v)| v).sum())
            .unwrap_or(0.0)
    }

    /// Every series: its name and labels.
    pub fn all_series(&self) -> Vec<(String, BTreeMap<String, String>)> {
        self.samples
            .iter()
            .flat_map(|(name, m)| m.keys().map(|k| (name.clone(), k.iter().cloned().collect())))
            .collect()
    }

    /// Label sets of `name`.
    pub fn series(&self, name: &str) -> Vec<BTreeMap<String, String>> {
        self.samples
            .get(name)
            .map(|m| m.keys().map(|k| k.iter().cloned().collect()).collect())
            .unwrap_or_default()
    }
}

/// `name{a="x",b="y"}`, for messages.
pub fn series_name(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// Parses `a="x",b="y\"z"` with the exposition's escapes.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((name.trim_start_matches(',').to_owned(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out.sort();
    out
}

/// Runs a command, failing with its stderr if it fails.
pub fn run(cmd: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("running {cmd}"))?;
    ensure!(
        out.status.success(),
        "{cmd} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

/// A unique name for test namespaces and devices.
pub fn unique(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}x{}", std::process::id() % 100_000, SEQ.fetch_add(1, Ordering::Relaxed))
}

/// A named namespace (`ip netns add`), deleted on drop.
pub struct NamedNetns {
    pub name: String,
    deleted: bool,
}

impl NamedNetns {
    pub fn add(prefix: &str) -> Result<Self> {
        let name = unique(prefix);
        run("ip", &["netns", "add", &name])?;
        Ok(Self { name, deleted: false })
    }

    /// The namespace inode, as `ls -L -i /run/netns/NAME` shows it.
    pub fn inode(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        Ok(std::fs::metadata(format!("/run/netns/{}", self.name))?.ino())
    }

    /// Takes charge of a namespace created under `/run/netns/NAME` some other way.
    pub fn adopt(name: String) -> Self {
        Self { name, deleted: false }
    }

    pub fn delete(mut self) -> Result<()> {
        self.deleted = true;
        run("ip", &["netns", "del", &self.name]).map(|_| ())
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        }
    }
}

/// The comm of the calling thread (what the kernel reports for creations made here).
pub fn thread_comm() -> String {
    std::fs::read_to_string("/proc/thread-self/comm").unwrap_or_default().trim_end().to_owned()
}

/// Creates a namespace with `clone(CLONE_NEWNET)` (or clone3); the child exits at once.
pub fn clone_newnet(clone3: bool) -> Result<()> {
    match raw_clone_newnet(clone3, 0) {
        // SAFETY: the child exits immediately, touching nothing of the parent's state.
        0 => unsafe { libc::_exit(0) },
        -1 => bail!("clone failed: {}", std::io::Error::last_os_error()),
        pid => {
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid as i32, &mut status, 0) };
            Ok(())
        }
    }
}

/// A fork-like clone with `CLONE_NEWNET`: 0 in the child, the child's pid or -1 in the caller.
/// Only raw syscalls: it also runs in forked children of this multi-threaded process.
fn raw_clone_newnet(clone3: bool, also: u64) -> i64 {
    const CLONE_NEWNET: u64 = 0x4000_0000;
    if clone3 {
        #[repr(C)]
        #[derive(Default)]
        struct CloneArgs {
            flags: u64,
            pidfd: u64,
            child_tid: u64,
            parent_tid: u64,
            exit_signal: u64,
            stack: u64,
            stack_size: u64,
            tls: u64,
        }
        let args =
            CloneArgs { flags: CLONE_NEWNET | also, exit_signal: libc::SIGCHLD as u64, ..Default::default() };
        // SAFETY: a fork-like clone3; the caller makes the child exit at once.
        unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, size_of::<CloneArgs>()) }
    } else {
        // SAFETY: a fork-like clone (no new stack); the caller makes the child exit at once.
        unsafe { libc::syscall(libc::SYS_clone, CLONE_NEWNET | also | libc::SIGCHLD as u64, 0, 0, 0, 0) }
    }
}

/// Makes namespace creation fail for real: a child process enters a new user namespace,
/// sets its `max_net_namespaces` to 0 (the kernel's own limit, checked in copy_net_ns) and
/// tries `unshares` unshare(CLONE_NEWNET), then `clones` clone and clone3 calls each.
/// Every attempt must fail with ENOSPC. Returns how many attempts were made.
pub fn failing_creations(unshares: u32, clones: u32) -> Result<u32> {
    failing_creations_as(&thread_comm(), unshares, clones)
}

/// `failing_creations` by a child named `comm`, so the journal tells its failures apart.
pub fn failing_creations_as(comm: &str, unshares: u32, clones: u32) -> Result<u32> {
    failing_calls_as(comm, c"/proc/sys/user/max_net_namespaces", 0, unshares, clones)
}

/// Calls that ask for a network namespace and a UTS namespace and fail on the UTS one: as
/// [`failing_creations_as`], with `max_uts_namespaces` 0 instead (the kernel makes the UTS
/// namespace first, so it never starts the network namespace). Returns the attempts.
pub fn failing_beside_as(comm: &str, unshares: u32, clones: u32) -> Result<u32> {
    failing_calls_as(comm, c"/proc/sys/user/max_uts_namespaces", libc::CLONE_NEWUTS as u64, unshares, clones)
}

/// In a child named `comm`, in a new user namespace whose `limit` is 0: `unshares`
/// unshare(CLONE_NEWNET | `also`), then `clones` clone and clone3 calls each, every one
/// required to fail with ENOSPC.
fn failing_calls_as(
    comm: &str,
    limit: &std::ffi::CStr,
    also: u64,
    unshares: u32,
    clones: u32,
) -> Result<u32> {
    let name = std::ffi::CString::new(comm)?;
    let uid_map = c"/proc/self/uid_map";
    let unshare_flags = libc::CLONE_NEWNET | also as libc::c_int;
    // SAFETY: after fork the child runs only raw syscalls on pre-built data, then _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above; every path ends in _exit.
        unsafe {
            let write_all = |path: &std::ffi::CStr, data: &[u8]| {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
                fd >= 0 && libc::write(fd, data.as_ptr().cast(), data.len()) == data.len() as isize
            };
            libc::prctl(libc::PR_SET_NAME, name.as_ptr());
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                libc::_exit(10);
            }
            if !write_all(uid_map, b"0 0 1\n") || !write_all(limit, b"0\n") {
                libc::_exit(11);
            }
            for _ in 0..unshares {
                if libc::unshare(unshare_flags) == 0 || *libc::__errno_location() != libc::ENOSPC {
                    libc::_exit(12);
                }
            }
            for clone3 in [false, true] {
                for _ in 0..clones {
                    match raw_clone_newnet(clone3, also) {
                        0 => libc::_exit(0),
                        -1 if *libc::__errno_location() == libc::ENOSPC => {}
                        _ => libc::_exit(13),
                    }
                }
            }
            libc::_exit(0);
        }
    }
    ensure!(pid > 0, "fork failed: {}", std::io::Error::last_os_error());
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "failing-creation child exited with status {status:#x} (10: no user namespace, 11: \
         cannot set the limit, 12/13: a creation did not fail with ENOSPC)"
    );
    Ok(unshares + 2 * clones)
}

/// Network namespaces visible from user space now: process namespaces and nsfs mounts.
/// (Namespaces held only by a socket are invisible here.)
pub fn visible_namespaces() -> std::collections::BTreeSet<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let mut set = std::collections::BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Ok(meta) = std::fs::metadata(entry.path().join("ns/net")) {
                set.insert(meta.ino());
            }
        }
    }
    if let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if let (Some(root), Some(sep)) = (fields.get(3), fields.iter().position(|f| *f == "-"))
                && fields.get(sep + 1) == Some(&"nsfs")
                && let Some(inum) = root.strip_prefix("net:[").and_then(|r| r.strip_suffix(']'))
                && let Ok(inum) = inum.parse()
            {
                set.insert(inum);
            }
        }
    }
    set
}

/// Runs `f` on a thread that has entered the named namespace (network namespaces are
/// per-thread: the rest of the test process stays where it is).
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    use std::os::fd::AsRawFd as _;
    let path = format!("/run/netns/{name}");
    thread::spawn(move || -> Result<T> {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on a valid nsfs fd; it only changes this thread's namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        drop(file);
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {name} panicked"))?
}

/// Sends `count` UDP datagrams from namespace `ns` to `dst` with one unconnected socket
/// (one output route lookup per datagram).
pub fn send_udp(ns: &str, dst: &str, count: u32) -> Result<()> {
    let dst: std::net::SocketAddr = dst.parse()?;
    in_netns(ns, move || {
        let bind = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let socket = std::net::UdpSocket::bind(bind)?;
        for _ in 0..count {
            // A route error is what some tests want: count attempts, not successes.
            let _ = socket.send_to(b"netns-agent", dst);
        }
        Ok(())
    })
}

const MAC_A: &str = "02:77:01:00:00:02";
const MAC_RA: &str = "02:77:01:00:00:01";
const MAC_B: &str = "02:77:02:00:00:02";
const MAC_RB: &str = "02:77:02:00:00:01";

/// Three namespaces joined by veth pairs: `a` - `r` - `b`, with `r` forwarding IPv4 and IPv6;
/// permanent neighbour entries and no reverse-path filter, so that the route lookups per
/// datagram are known (see tests/routes.rs).
/// a: 10.77.1.2/24, fd77:1::2/64; r: 10.77.1.1, 10.77.2.1, fd77:1::1, fd77:2::1;
/// b: 10.77.2.2/24, fd77:2::2/64. Deleted on drop.
pub struct RouterTopology {
    pub a: NamedNetns,
    pub r: NamedNetns,
    pub b: NamedNetns,
}

impl RouterTopology {
    pub fn new() -> Result<Self> {
        let (a, r, b) = (NamedNetns::add("ta")?, NamedNetns::add("tr")?, NamedNetns::add("tb")?);
        let ip = |ns: &NamedNetns, args: &str| -> Result<()> {
            let mut full = vec!["-n", ns.name.as_str()];
            full.extend(args.split_whitespace());
            run("ip", &full).map(|_| ())
        };
        for ns in [&a, &r, &b] {
            ip(ns, "link set lo up")?;
        }
        // Fixed addresses and permanent neighbours: no ARP or neighbour discovery, whose
        // lookups would come at times the tests cannot know. No reverse-path filter (its
        // check is one more lookup per packet, depending on the host's defaults).
        ip(
            &a,
            &format!("link add va address {MAC_A} type veth peer name vra address {MAC_RA} netns {}", r.name),
        )?;
        ip(
            &b,
            &format!("link add vb address {MAC_B} type veth peer name vrb address {MAC_RB} netns {}", r.name),
        )?;
        let sysctl = |ns: &NamedNetns, settings: &[&str]| -> Result<()> {
            let mut args = vec!["netns", "exec", ns.name.as_str(), "sysctl", "-qw"];
            args.extend(settings);
            run("ip", &args).map(|_| ())
        };
        sysctl(&a, &["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.va.rp_filter=0"])?;
        sysctl(&b, &["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.vb.rp_filter=0"])?;
        sysctl(
            &r,
            &[
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.vra.rp_filter=0",
                "net.ipv4.conf.vrb.rp_filter=0",
            ],
        )?;
        // No router solicitations or duplicate address detection on the hosts' links.
        sysctl(&a, &["net.ipv6.conf.va.router_solicitations=0", "net.ipv6.conf.va.accept_dad=0"])?;
        sysctl(&b, &["net.ipv6.conf.vb.router_solicitations=0", "net.ipv6.conf.vb.accept_dad=0"])?;
        sysctl(&r, &["net.ipv6.conf.vra.accept_dad=0", "net.ipv6.conf.vrb.accept_dad=0"])?;
        ip(&a, "addr add 10.77.1.2/24 dev va")?;
        ip(&a, "addr add fd77:1::2/64 dev va nodad")?;
        ip(&a, "link set va up")?;
        ip(&a, "route add default via 10.77.1.1")?;
        ip(&a, "-6 route add default via fd77:1::1")?;
        ip(&r, "addr add 10.77.1.1/24 dev vra")?;
        ip(&r, "addr add fd77:1::1/64 dev vra nodad")?;
        ip(&r, "addr add 10.77.2.1/24 dev vrb")?;
        ip(&r, "addr add fd77:2::1/64 dev vrb nodad")?;
        ip(&r, "link set vra up")?;
        ip(&r, "link set vrb up")?;
        ip(&b, "addr add 10.77.2.2/24 dev vb")?;
        ip(&b, "addr add fd77:2::2/64 dev vb nodad")?;
        ip(&b, "link set vb up")?;
        ip(&b, "route add default via 10.77.2.1")?;
        ip(&b, "-6 route add default via fd77:2::1")?;
        for (ns, dev, addrs, mac) in [
            (&a, "va", ["10.77.1.1", "fd77:1::1"], MAC_RA),
            (&r, "vra", ["10.77.1.2", "fd77:1::2"], MAC_A),
            (&r, "vrb", ["10.77.2.2", "fd77:2::2"], MAC_B),
            (&b, "vb", ["10.77.2.1", "fd77:2::1"], MAC_RB),
        ] {
            for addr in addrs {
                ip(ns, &format!("neigh replace {addr} lladdr {mac} dev {dev} nud permanent"))?;
            }
        }
        run("ip", &["netns", "exec", &r.name, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        run("ip", &["netns", "exec", &r.name, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        Ok(Self { a, r, b })
    }
}

/// Writes a config file for the agent and returns its path.
pub fn config_file(text: &str) -> Result<String> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "netns-agent-test-{}-{}.toml",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, text)?;
    Ok(path.to_string_lossy().into_owned())
}

impl Agent {
    /// Starts the agent in the test mode with this config file content.
    pub fn start_with_config(config: &str) -> Result<Self> {
        let path = config_file(config)?;
        Self::start_with(&["--attach", &mode(), "--config", &path])
    }
}

/// A child process, killed and reaped on drop.
pub struct ChildProcess(pub Child);

impl ChildProcess {
    pub fn spawn(cmd: &str, args: &[&str]) -> Result<Self> {
        Ok(Self(Command::new(cmd).args(args).stdin(Stdio::null()).stdout(Stdio::null()).spawn()?))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process in its own new network namespace, named `comm` (any bytes, up to 15), that
/// waits until killed. Made with raw syscalls in a forked child.
pub struct HostileProcess(pub i32);

impl HostileProcess {
    pub fn spawn(comm: &[u8]) -> Result<Self> {
        let mut name = [0u8; 16];
        name[..comm.len().min(15)].copy_from_slice(&comm[..comm.len().min(15)]);
        // SAFETY: the child only makes raw syscalls on prepared data, then pauses or exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                libc::prctl(libc::PR_SET_NAME, name.as_ptr());
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    libc::_exit(1);
                }
                loop {
                    libc::pause();
                }
            }
        }
        ensure!(pid > 0, "fork failed");
        Ok(Self(pid))
    }

    /// Its namespace's inode number (waits for the unshare).
    pub fn netns(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        let mine = std::fs::metadata("/proc/self/ns/net")?.ino();
        wait_for("the child's unshare", Duration::from_secs(5), || {
            let ino = std::fs::metadata(format!("/proc/{}/ns/net", self.0))?.ino();
            Ok((ino != mine).then_some(ino))
        })
    }
}

impl Drop for HostileProcess {
    fn drop(&mut self) {
        // SAFETY: killing and reaping our own child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

/// `promtool check metrics` on an exposition: its complaints, empty when clean.
pub fn promtool_check(text: &str) -> Result<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (Debian package prometheus)")?;
    child.stdin.take().context("stdin")?.write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let mut problems = String::from_utf8_lossy(&out.stdout).into_owned();
    problems.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() && problems.trim().is_empty() {
        problems = format!("promtool failed: {}", out.status);
    }
    Ok(problems.trim().to_owned())
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }
}

impl Agent {
    /// Runs an on-call command (`ls`, `show`, `events`) against this agent; its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let addr = format!("127.0.0.1:{}", self.port);
        let out = Command::new(agent_bin()).args(args).args(["--agent", &addr]).output()?;
        ensure!(
            out.status.success(),
            "netns-agent {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8(out.stdout)?)
    }
}

/// A namespace held only by one file descriptor: a child process creates it, sends a socket
/// made in it (or an nsfs descriptor of it) to this process over a unix socket, and exits.
/// Closing the descriptor (drop) frees it.
pub struct OrphanedNetns {
    pub fd: std::os::fd::OwnedFd,
    pub inode: u64,
}

/// What holds an [`OrphanedNetns`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldBy {
    /// A UDP socket created in the namespace (what the agent shows as `socket`).
    Socket,
    /// An open `/proc/self/ns/net` of the namespace (`netns fd`).
    NetnsFd,
}

impl HeldBy {
    /// The holder kind the agent reports.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Socket => "socket",
            Self::NetnsFd => "netns fd",
        }
    }
}

impl OrphanedNetns {
    /// Held by a socket.
    pub fn make() -> Result<Self> {
        Self::held_by(HeldBy::Socket)
    }

    pub fn held_by(held_by: HeldBy) -> Result<Self> {
        use std::os::fd::{AsRawFd as _, FromRawFd as _};
        let mut pair = [0i32; 2];
        // SAFETY: socketpair fills the two fds.
        ensure!(
            unsafe {
                libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0, pair.as_mut_ptr())
            } == 0
        );
        // SAFETY: fresh fds we own.
        let (ours, theirs) = unsafe {
            (std::os::fd::OwnedFd::from_raw_fd(pair[0]), std::os::fd::OwnedFd::from_raw_fd(pair[1]))
        };
        // SAFETY: the child makes raw syscalls only, then exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    libc::_exit(1);
                }
                let fd = match held_by {
                    HeldBy::Socket => libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0),
                    HeldBy::NetnsFd => libc::open(c"/proc/self/ns/net".as_ptr(), libc::O_RDONLY),
                };
                if fd < 0 || send_fd(theirs.as_raw_fd(), fd) != 0 {
                    libc::_exit(2);
                }
                libc::_exit(0);
            }
        }
        drop(theirs);
        ensure!(pid > 0, "fork failed");
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        ensure!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child failed: {status:#x}");
        let fd = recv_fd(ours.as_raw_fd())?;
        use std::os::unix::fs::MetadataExt as _;
        let inode = match held_by {
            HeldBy::Socket => {
                // SAFETY: SIOCGSKNS returns a new fd of the socket's namespace.
                let ns = unsafe { libc::ioctl(fd.as_raw_fd(), 0x894C) };
                ensure!(ns >= 0, "SIOCGSKNS: {}", std::io::Error::last_os_error());
                // SAFETY: a fresh fd we own; closed at the end of this scope.
                let ns = std::fs::File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(ns) });
                ns.metadata()?.ino()
            }
            HeldBy::NetnsFd => std::fs::File::from(fd.try_clone()?).metadata()?.ino(),
        };
        Ok(Self { fd, inode })
    }

    /// Hands the descriptor to a new process running as `nobody` (uid and gid 65534), as its
    /// fd 3, and closes ours: the namespace is then held by another user's process only.
    pub fn give_to_nobody(self) -> Result<(ChildProcess, u64)> {
        use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
        let fd = self.fd.as_raw_fd();
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "sleep", "600"]);
        // SAFETY: dup2 and fcntl are async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                // fd 3 without close-on-exec, and no other copy.
                if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if fd != 3 {
                    libc::close(fd);
                }
                Ok(())
            });
        }
        let child = cmd.stdin(Stdio::null()).spawn().context("setpriv (util-linux)")?;
        let inode = self.inode;
        drop(self);
        Ok((ChildProcess(child), inode))
    }
}

/// Sends `fd` over a unix socket (SCM_RIGHTS). Raw calls only: runs in a forked child.
unsafe fn send_fd(over: i32, fd: i32) -> isize {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut control = [0u8; 64];
    // SAFETY: msghdr and cmsg built in stack buffers large enough for one fd.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<i32>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<i32>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
        if libc::sendmsg(over, &msg, 0) == 1 { 0 } else { -1 }
    }
}

/// Receives one fd sent with `send_fd`.
fn recv_fd(from: i32) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut control = [0u8; 64];
    // SAFETY: as in send_fd; the received fd is checked before use.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        ensure!(
            libc::recvmsg(from, &mut msg, libc::MSG_CMSG_CLOEXEC) == 1,
            "recvmsg: {}",
            std::io::Error::last_os_error()
        );
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        ensure!(!cmsg.is_null() && (*cmsg).cmsg_type == libc::SCM_RIGHTS, "no fd received");
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>());
        Ok(std::os::fd::OwnedFd::from_raw_fd(fd))
    }
}

impl Agent {
    /// The journal after `since` (a `seq`; 0 for all): its entries, oldest first, and the
    /// newest `seq`, from `GET /api/v1/events`.
    pub fn events_since(&self, since: u64) -> Result<(Vec<serde_json::Value>, u64)> {
        let body = self.get(&format!("/api/v1/events?since={since}&limit=1000000"))?;
        let view: serde_json::Value = serde_json::from_str(&body).context("events API: not JSON")?;
        let events = view["events"].as_array().cloned().context("events API: no events")?;
        let last = view["last_seq"].as_u64().context("events API: no last_seq")?;
        Ok((events, last))
    }

    /// The newest journal `seq` now: pass it to `events_since` to see only what follows.
    pub fn last_seq(&self) -> Result<u64> {
        Ok(self.events_since(u64::MAX)?.1)
    }

    /// `GET /api/v1/namespaces`: one object per namespace the agent knows.
    pub fn namespaces(&self) -> Result<Vec<serde_json::Value>> {
        let body = self.get("/api/v1/namespaces")?;
        serde_json::from_str(&body).context("namespaces API: not JSON")
    }

    /// The ids of the eBPF programs this agent holds now (`prog_id:` in the fdinfo of its
    /// program and link fds).
    pub fn program_ids(&self) -> Result<std::collections::BTreeSet<u32>> {
        let pid = self.pid();
        let mut ids = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
            let entry = entry?;
            let Ok(target) = std::fs::read_link(entry.path()) else { continue };
            let target = target.to_string_lossy();
            if target != "anon_inode:bpf-prog" && target != "anon_inode:bpf_link" {
                continue;
            }
            let fdinfo = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
            let Ok(text) = std::fs::read_to_string(fdinfo) else { continue };
            ids.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:"))
                    .filter_map(|v| v.trim().parse::<u32>().ok()),
            );
        }
        Ok(ids)
    }
}

/// The ids of every eBPF program loaded in the kernel now (`bpftool prog show --json`).
pub fn loaded_program_ids() -> Result<std::collections::BTreeSet<u32>> {
    let out = run("bpftool", &["prog", "show", "--json"])?;
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).context("bpftool --json")?;
    Ok(list.iter().filter_map(|p| p["id"].as_u64()).map(|id| id as u32).collect())
}

/// Names the calling thread (its comm, what the kernel reports for creations it makes):
/// a name no other process on the host uses lets a test count only its own creations.
pub fn set_thread_comm(comm: &str) -> Result<()> {
    ensure!(comm.len() <= 15, "comm {comm:?} is longer than 15 bytes");
    let name = std::ffi::CString::new(comm)?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    ensure!(unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) } == 0, "prctl(PR_SET_NAME)");
    Ok(())
}

/// A unique comm for this test process: `prefix` and a sequence (at most 15 bytes).
pub fn unique_comm(prefix: &str) -> String {
    let name = unique(prefix);
    ensure_len(&name);
    name
}

fn ensure_len(name: &str) {
    assert!(name.len() <= 15, "comm {name:?} is longer than 15 bytes");
}

/// A command that runs program `cmd` (found in PATH) under the comm `comm`: through a
/// symlink named `comm` (the kernel takes a process's comm from the file name it
/// executes), with `argv[0]` still `cmd` (`ip` dispatches on its argv[0]).
pub fn command_as(cmd: &str, comm: &str) -> Result<Command> {
    use std::os::unix::process::CommandExt as _;
    ensure_len(comm);
    let target = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(cmd))
        .find(|p| p.is_file())
        .with_context(|| format!("{cmd} not found in PATH"))?;
    let dir = std::env::temp_dir().join(format!("netns-agent-test-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let link = dir.join(comm);
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(&target, &link)?;
    }
    let mut command = Command::new(link);
    command.arg0(cmd);
    Ok(command)
}

/// Runs `cmd args` under the comm `comm` (see `command_as`), failing with its stderr.
pub fn run_as(cmd: &str, comm: &str, args: &[&str]) -> Result<Output> {
    let out = command_as(cmd, comm)?.args(args).output().with_context(|| format!("running {cmd}"))?;
    ensure!(
        out.status.success(),
        "{cmd} {} (as {comm}) failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

/// Like `clone_newnet`, and returns the new namespace's inode: the child waits on a pipe
/// until this process has read its `/proc/PID/ns/net`, then exits.
pub fn clone_newnet_inode(clone3: bool) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let mut pipe = [0i32; 2];
    // SAFETY: pipe2 fills the two fds.
    ensure!(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } == 0, "pipe2");
    let (read_end, write_end) = (pipe[0], pipe[1]);
    match raw_clone_newnet(clone3, 0) {
        // SAFETY: the child closes its write end, waits for EOF and exits: raw calls only.
        0 => unsafe {
            libc::close(write_end);
            let mut byte = 0u8;
            libc::read(read_end, (&raw mut byte).cast(), 1);
            libc::_exit(0)
        },
        -1 => {
            // SAFETY: closing our own fds.
            unsafe {
                libc::close(read_end);
                libc::close(write_end);
            }
            bail!("clone failed: {}", std::io::Error::last_os_error())
        }
        pid => {
            let inode = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino());
            let mut status = 0;
            // SAFETY: closing our own fds (EOF releases the child), then reaping it.
            unsafe {
                libc::close(read_end);
                libc::close(write_end);
                libc::waitpid(pid as i32, &mut status, 0);
            }
            Ok(inode?)
        }
    }
}

/// Journal entries of `kind` whose `comm` is `comm`.
pub fn events_of<'a>(events: &'a [serde_json::Value], kind: &str, comm: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["kind"] == kind && e["comm"] == comm).collect()
}

/// For each creation in `created`, the teardowns the journal (`events`, oldest first)
/// records for that namespace: entries about its inode number after the creation and
/// before any later creation of the same number (inode numbers come back within seconds).
pub fn teardowns(events: &[serde_json::Value], created: &[&serde_json::Value]) -> Vec<usize> {
    created
        .iter()
        .map(|c| {
            let (seq, netns) = (c["seq"].as_u64().unwrap_or(0), &c["netns"]);
            events
                .iter()
                .filter(|e| e["seq"].as_u64().unwrap_or(0) > seq && &e["netns"] == netns)
                .take_while(|e| e["kind"] != "netns_created")
                .filter(|e| e["kind"] == "netns_destroyed")
                .count()
        })
        .collect()
}

/// For each creation in `created`, whether the journal records its teardown (see
/// `teardowns`).
pub fn torn_down(events: &[serde_json::Value], created: &[&serde_json::Value]) -> Vec<bool> {
    teardowns(events, created).into_iter().map(|n| n > 0).collect()
}

/// How a [`HeldNetns`] holds its namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// A UDP socket created in it.
    Socket,
    /// An open `/proc/self/ns/net` of it (an nsfs file descriptor).
    NetnsFd,
}

impl Hold {
    /// The agent's name for it (`kind` of a holder).
    pub fn kind(self) -> &'static str {
        match self {
            Hold::Socket => "socket",
            Hold::NetnsFd => "netns fd",
        }
    }
}

/// A leak made on purpose: a child process named `comm` creates a namespace, makes a
/// socket in it or opens it, goes back to this process's namespace and waits. Nothing lives
/// in the namespace and nothing names it: only the child's descriptor keeps it (orphaned).
/// Killing the child (drop) frees it.
pub struct HeldNetns {
    pub pid: i32,
    pub inode: u64,
    /// The holding descriptor's number in the child.
    pub fd: i32,
}

impl HeldNetns {
    /// The child is moved into `cgroup` (if given) before it creates the namespace, so the
    /// creator and the holder both belong to that "container".
    pub fn spawn(hold: Hold, comm: &str, cgroup: Option<&ContainerCgroup>) -> Result<Self> {
        use std::os::fd::AsRawFd as _;
        ensure_len(comm);
        let name = std::ffi::CString::new(comm)?;
        let ns_path = c"/proc/self/ns/net";
        let home = std::fs::File::open("/proc/self/ns/net")?;
        let (mut go, mut ready) = ([0i32; 2], [0i32; 2]);
        // SAFETY: pipe2 fills the two fds of each.
        ensure!(unsafe { libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) } == 0, "pipe2");
        // SAFETY: as above.
        ensure!(unsafe { libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) } == 0, "pipe2");
        // SAFETY: the child makes raw syscalls on data prepared before the fork, then pauses.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                let mut byte = 0u8;
                // Wait until the parent has put us in the cgroup.
                if libc::read(go[0], (&raw mut byte).cast(), 1) != 1 {
                    libc::_exit(1);
                }
                libc::prctl(libc::PR_SET_NAME, name.as_ptr());
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    libc::_exit(2);
                }
                let fd = match hold {
                    Hold::Socket => libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0),
                    Hold::NetnsFd => libc::open(ns_path.as_ptr(), libc::O_RDONLY),
                };
                if fd < 0 || libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    libc::_exit(3);
                }
                libc::close(home.as_raw_fd());
                // The held namespace's inode: the socket's (SIOCGSKNS) or the nsfs fd's own.
                let ns = if hold == Hold::Socket { libc::ioctl(fd, 0x894C) } else { fd };
                let mut st: libc::stat = std::mem::zeroed();
                if ns < 0 || libc::fstat(ns, &mut st) != 0 {
                    libc::_exit(4);
                }
                if ns != fd {
                    libc::close(ns);
                }
                let report = [fd as u64, st.st_ino];
                if libc::write(ready[1], report.as_ptr().cast(), 16) != 16 {
                    libc::_exit(5);
                }
                loop {
                    libc::pause();
                }
            }
        }
        // SAFETY: closing the child's ends in this process.
        unsafe {
            libc::close(go[0]);
            libc::close(ready[1]);
        }
        let result = (|| {
            ensure!(pid > 0, "fork failed");
            let held = Self { pid, inode: 0, fd: -1 };
            if let Some(cgroup) = cgroup {
                cgroup.add(pid)?;
            }
            let mut report = [0u64; 2];
            // SAFETY: one byte releases the child; it answers 16 bytes, or EOF if it failed.
            let n = unsafe {
                ensure!(libc::write(go[1], [1u8].as_ptr().cast(), 1) == 1, "releasing the child");
                libc::read(ready[0], report.as_mut_ptr().cast(), 16)
            };
            ensure!(n == 16, "the holding child failed before holding its namespace");
            std::mem::forget(held);
            Ok(Self { pid, inode: report[1], fd: report[0] as i32 })
        })();
        // SAFETY: closing our ends; a failed child is killed by `held`'s drop above.
        unsafe {
            libc::close(go[1]);
            libc::close(ready[0]);
        }
        result
    }
}

impl Drop for HeldNetns {
    fn drop(&mut self) {
        if self.pid > 0 {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// A cgroup v2 directory named as Docker names a container's (`docker-ID.scope`), for
/// processes whose container id a test must know; removed on drop (once empty).
pub struct ContainerCgroup {
    pub id: String,
    dir: PathBuf,
}

impl ContainerCgroup {
    /// None where no cgroup v2 hierarchy is mounted.
    pub fn make() -> Result<Option<Self>> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let Some(root) = mountinfo.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            (fields.get(sep + 1) == Some(&"cgroup2")).then(|| fields.get(4).map(PathBuf::from))?
        }) else {
            return Ok(None);
        };
        let n = (u64::from(std::process::id()) << 32) | u64::from(SEQ.fetch_add(1, Ordering::Relaxed));
        let id = format!("{:064x}", u128::from(n) | (0xfeed_u128 << 112));
        let dir = root.join(format!("docker-{id}.scope"));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Some(Self { id, dir }))
    }

    pub fn add(&self, pid: i32) -> Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", self.dir.display()))
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Holds the kernel's RTNL lock until dropped, which stalls every namespace teardown
/// (`cleanup_net` takes RTNL to unregister the devices) the way a leaked device reference
/// does: a stuck teardown made on purpose, and ended on purpose.
///
/// How: an ethtool request (`SIOCETHTOOL`, `ETHTOOL_GLINK`) runs under RTNL and copies its
/// answer to user memory there (`ETHTOOL_GDRVINFO`'s is copied after RTNL is released). The
/// answer's page is registered with userfaultfd and left missing, so the copy waits, RTNL
/// held, until this holder fills the page. The command word sits at the end of the page
/// before, which the kernel reads before taking the lock. The fault arriving proves the lock
/// is held. If the process dies instead, closing the userfaultfd fails the copy and RTNL is
/// released. Needs root (CAP_SYS_PTRACE: the fault is the kernel's) and a device with a link
/// state (a veth) in namespace `ns`.
pub struct RtnlHold {
    uffd: std::os::fd::OwnedFd,
    page: usize,
    waiter: Option<thread::JoinHandle<()>>,
}

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

// include/uapi/linux/userfaultfd.h, ethtool.h, sockios.h.
const UFFD_API: u64 = 0xAA;
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xC020_AA04;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GLINK: u32 = 0xa;
const PAGE: usize = 4096;

impl RtnlHold {
    /// Takes RTNL through an ethtool request on `device` in namespace `ns`; returns once the
    /// request is waiting with the lock held (bounded: an error if it never waits).
    pub fn take(ns: &str, device: &str) -> Result<Self> {
        use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
        // SAFETY: plain syscalls on values this function owns; each result is checked.
        let (uffd, page) = unsafe {
            let fd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK);
            if fd < 0 {
                bail!("userfaultfd: {} (needs root with CAP_SYS_PTRACE)", std::io::Error::last_os_error());
            }
            let uffd = OwnedFd::from_raw_fd(fd as i32);
            let mut api = UffdioApi { api: UFFD_API, features: 0, ioctls: 0 };
            if libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api) != 0 {
                bail!("UFFDIO_API: {}", std::io::Error::last_os_error());
            }
            let map = libc::mmap(
                std::ptr::null_mut(),
                2 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if map == libc::MAP_FAILED {
                bail!("mmap: {}", std::io::Error::last_os_error());
            }
            let map = map as usize;
            // The command word, last in the first page (which this write populates).
            std::ptr::write((map + PAGE - 4) as *mut u32, ETHTOOL_GLINK);
            let mut reg = UffdioRegister {
                range: UffdioRange { start: (map + PAGE) as u64, len: PAGE as u64 },
                mode: UFFDIO_REGISTER_MODE_MISSING,
                ioctls: 0,
            };
            if libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &mut reg) != 0 {
                bail!("UFFDIO_REGISTER: {}", std::io::Error::last_os_error());
            }
            (uffd, map)
        };
        let socket = in_netns(ns, || Ok(std::net::UdpSocket::bind("0.0.0.0:0")?))?;
        let name = device.to_owned();
        let waiter = thread::spawn(move || {
            // SAFETY: a zeroed ifreq is valid; the name fits with its NUL (checked by the
            // kernel's lookup failing otherwise); the data pointer is this process's mapping,
            // which outlives the request (unmapped only after the thread is joined).
            unsafe {
                let mut req: libc::ifreq = std::mem::zeroed();
                for (dst, src) in req.ifr_name.iter_mut().take(15).zip(name.bytes()) {
                    *dst = src as libc::c_char;
                }
                req.ifr_ifru.ifru_data = (page + PAGE - 4) as *mut libc::c_char;
                libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &mut req);
            }
        });
        let hold = Self { uffd, page, waiter: Some(waiter) };
        // The fault: the request is inside the copy, under the lock.
        let mut pfd = libc::pollfd { fd: hold.uffd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll and read on the fd we own, into a buffer of the message's size.
        let event = unsafe {
            if libc::poll(&mut pfd, 1, 10_000 * slowdown() as i32) != 1 {
                bail!("the ethtool request on {device} never waited on its answer's page: RTNL not held");
            }
            let mut msg = [0u8; 32];
            if libc::read(hold.uffd.as_raw_fd(), msg.as_mut_ptr().cast(), msg.len()) != 32 {
                bail!("reading the userfaultfd message: {}", std::io::Error::last_os_error());
            }
            msg[0]
        };
        ensure!(event == UFFD_EVENT_PAGEFAULT, "userfaultfd event {event:#x}, not a page fault");
        Ok(hold)
    }
}

impl Drop for RtnlHold {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd as _;
        let mut zero = UffdioZeropage {
            range: UffdioRange { start: (self.page + PAGE) as u64, len: PAGE as u64 },
            mode: 0,
            zeropage: 0,
        };
        // SAFETY: fills the registered page, which wakes the request; the mapping is ours and
        // is unmapped once the request's thread has returned.
        unsafe {
            libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_ZEROPAGE, &mut zero);
        }
        if let Some(waiter) = self.waiter.take() {
            let _ = waiter.join();
        }
        // SAFETY: our two-page mapping; nothing uses it any more.
        unsafe {
            libc::munmap(self.page as *mut libc::c_void, 2 * PAGE);
        }
    }
}
