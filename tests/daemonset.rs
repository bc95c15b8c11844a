//! The DaemonSet as written: the pod spec of deploy/kubernetes/netns-agent.yaml turned into a
//! `podman run` command line (every field it uses is translated or the test fails, so the
//! manifest and this run cannot drift apart), then the image run that way on this host and
//! checked like a kubelet and an operator would: probes attached, namespaces counted and
//! attributed, liveness and readiness answering, memory under the limit, SIGTERM within the
//! grace period. A second test drops each added capability in turn.
//!
//! Run by `cargo xtask test` in its daemonset tier, after `cargo xtask image`. Environment:
//! - `NETNS_AGENT_ENGINE`: `podman` (default; Debian's docker 20.10 rejects CAP_BPF and
//!   CAP_PERFMON as unknown capabilities);
//! - `NETNS_AGENT_OCI_RUNTIME`: the OCI runtime podman uses (default `runc`).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use netns_agent_e2e::{HeldBy, Metrics, OrphanedNetns, free_port, http_get, run, unique, wait_for};
use yaml_rust2::Yaml;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn engine() -> String {
    std::env::var("NETNS_AGENT_ENGINE").unwrap_or_else(|_| "podman".into())
}

fn oci_runtime() -> String {
    std::env::var("NETNS_AGENT_OCI_RUNTIME").unwrap_or_else(|_| "runc".into())
}

/// The DaemonSet document of the manifest.
fn daemonset() -> Result<Yaml> {
    let path = repo().join("deploy/kubernetes/netns-agent.yaml");
    let docs = yaml_rust2::YamlLoader::load_from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("{} is not YAML", path.display()))?;
    docs.into_iter().find(|d| d["kind"].as_str() == Some("DaemonSet")).context("no DaemonSet in the manifest")
}

/// What a kubelet would do with the pod spec, as a container engine command line.
#[derive(Debug, Clone)]
struct PodRun {
    image: String,
    /// `run` options before the image, the capability options excepted.
    options: Vec<String>,
    cap_drop: Vec<String>,
    cap_add: Vec<String>,
    /// Container arguments after the image.
    args: Vec<String>,
    /// Host port published (on loopback) for each named container port.
    ports: BTreeMap<String, (u16, u16)>,
    /// (path, port name or number) of the readiness and liveness probes.
    readiness: (String, String),
    liveness: (String, String),
    memory_limit: Option<u64>,
    grace_seconds: u64,
    /// hostPath directories the kubelet would create (DirectoryOrCreate).
    create_dirs: Vec<PathBuf>,
}

impl PodRun {
    /// The full `run -d` command line.
    fn command(&self, name: &str) -> Vec<String> {
        let mut cmd = vec!["run".to_owned(), "-d".to_owned(), "--name".to_owned(), name.to_owned()];
        cmd.extend(self.options.iter().cloned());
        for cap in &self.cap_drop {
            cmd.extend(["--cap-drop".to_owned(), cap.clone()]);
        }
        for cap in &self.cap_add {
            cmd.extend(["--cap-add".to_owned(), cap.clone()]);
        }
        cmd.push(self.image.clone());
        cmd.extend(self.args.iter().cloned());
        cmd
    }

    fn host_port(&self, port: &str) -> Result<u16> {
        self.ports
            .get(port)
            .or_else(|| self.ports.values().find(|(_, container)| container.to_string() == port))
            .map(|(host, _)| *host)
            .with_context(|| format!("probe port {port} is not a container port"))
    }
}

/// Fails on any key of `map` not in `known`: a field the translation would silently ignore.
fn only_known(map: &Yaml, known: &[&str], what: &str) -> Result<()> {
    let Some(hash) = map.as_hash() else { return Ok(()) };
    for key in hash.keys() {
        let key = key.as_str().unwrap_or("?");
        ensure!(
            known.contains(&key),
            "{what} uses `{key}`, which the DaemonSet test does not translate into the podman run: \
             translate it in tests/daemonset.rs"
        );
    }
    Ok(())
}

fn strings(list: &Yaml) -> Vec<String> {
    list.as_vec()
        .map(|v| v.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// "256Mi" -> bytes, "1G", "512M", plain numbers.
fn memory_quantity(text: &str) -> Result<u64> {
    let units: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = text.strip_suffix(suffix) {
            return Ok(n.parse::<u64>().with_context(|| format!("memory quantity {text}"))? * factor);
        }
    }
    text.parse().with_context(|| format!("memory quantity {text}"))
}

/// "20m" -> 0.02 CPUs, "1" -> 1.
fn cpu_quantity(text: &str) -> Result<f64> {
    match text.strip_suffix('m') {
        Some(milli) => Ok(milli.parse::<f64>().with_context(|| format!("cpu quantity {text}"))? / 1000.0),
        None => text.parse().with_context(|| format!("cpu quantity {text}")),
    }
}

fn probe(probe: &Yaml, what: &str) -> Result<(String, String)> {
    only_known(
        probe,
        &[
            "httpGet",
            "periodSeconds",
            "failureThreshold",
            "initialDelaySeconds",
            "timeoutSeconds",
            "successThreshold",
        ],
        what,
    )?;
    only_known(&probe["httpGet"], &["path", "port"], what)?;
    let path = probe["httpGet"]["path"].as_str().with_context(|| format!("{what}: httpGet.path"))?;
    let port = match &probe["httpGet"]["port"] {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(n) => n.to_string(),
        _ => bail!("{what}: httpGet.port"),
    };
    Ok((path.to_owned(), port))
}

/// The pod template of the DaemonSet as a container engine command line.
fn translate(ds: &Yaml) -> Result<PodRun> {
    let pod = &ds["spec"]["template"]["spec"];
    only_known(
        pod,
        &[
            "hostPID",
            "hostNetwork",
            "priorityClassName",
            "tolerations",
            "containers",
            "volumes",
            "terminationGracePeriodSeconds",
        ],
        "the pod spec",
    )?;
    let containers = pod["containers"].as_vec().context("containers")?;
    ensure!(containers.len() == 1, "one container expected, the manifest has {}", containers.len());
    let c = &containers[0];
    only_known(
        c,
        &[
            "name",
            "image",
            "imagePullPolicy",
            "args",
            "ports",
            "readinessProbe",
            "livenessProbe",
            "resources",
            "securityContext",
            "volumeMounts",
        ],
        "the container",
    )?;
    let mut options: Vec<String> = Vec::new();
    let mut opt = |args: &[&str]| options.extend(args.iter().map(|s| (*s).to_owned()));
    // This host's quirks, not the manifest's: the OCI runtime, and the open-file and process
    // limits (podman's defaults exceed what root may set here; a kubelet sets none).
    opt(&["--runtime", &oci_runtime()]);
    for limit in host_ulimits() {
        opt(&["--ulimit", &limit]);
    }
    // The image is on the node (loaded with `ctr images import`): never contact a registry.
    opt(&["--pull=never"]);
    match c["imagePullPolicy"].as_str() {
        None | Some("IfNotPresent") | Some("Never") => {}
        Some(other) => bail!("imagePullPolicy {other}: the image is loaded on the node, not pulled"),
    }

    if pod["hostPID"].as_bool() == Some(true) {
        opt(&["--pid", "host"]);
    }
    if pod["hostNetwork"].as_bool() == Some(true) {
        opt(&["--network", "host"]);
    }
    // priorityClassName and tolerations only steer scheduling: nothing to run.
    let grace_seconds = pod["terminationGracePeriodSeconds"].as_i64().unwrap_or(30) as u64;

    let mut ports = BTreeMap::new();
    for port in c["ports"].as_vec().into_iter().flatten() {
        only_known(port, &["name", "containerPort", "protocol"], "a container port")?;
        let container_port = port["containerPort"].as_i64().context("containerPort")? as u16;
        let protocol = port["protocol"].as_str().unwrap_or("TCP").to_lowercase();
        let host_port = free_port();
        opt(&["-p", &format!("127.0.0.1:{host_port}:{container_port}/{protocol}")]);
        let name = port["name"].as_str().map(str::to_owned).unwrap_or_else(|| container_port.to_string());
        ports.insert(name, (host_port, container_port));
    }
    let readiness = probe(&c["readinessProbe"], "readinessProbe")?;
    let liveness = probe(&c["livenessProbe"], "livenessProbe")?;

    let resources = &c["resources"];
    only_known(resources, &["requests", "limits"], "resources")?;
    only_known(&resources["requests"], &["cpu", "memory"], "resources.requests")?;
    only_known(&resources["limits"], &["cpu", "memory"], "resources.limits")?;
    let mut memory_limit = None;
    if let Some(limit) = resources["limits"]["memory"].as_str() {
        let bytes = memory_quantity(limit)?;
        memory_limit = Some(bytes);
        // As the kubelet sets it: the limit, and no swap beyond it.
        opt(&["--memory", &bytes.to_string(), "--memory-swap", &bytes.to_string()]);
    }
    if let Some(cpu) = resources["limits"]["cpu"].as_str() {
        opt(&["--cpus", &cpu_quantity(cpu)?.to_string()]);
    }
    if let Some(cpu) = resources["requests"]["cpu"].as_str() {
        // The kubelet's mapping of a CPU request to cgroup shares (minimum 2).
        let shares = ((cpu_quantity(cpu)? * 1024.0) as u64).max(2);
        opt(&["--cpu-shares", &shares.to_string()]);
    }
    if let Some(memory) = resources["requests"]["memory"].as_str() {
        opt(&["--memory-reservation", &memory_quantity(memory)?.to_string()]);
    }

    let sc = &c["securityContext"];
    only_known(
        sc,
        &[
            "privileged",
            "allowPrivilegeEscalation",
            "readOnlyRootFilesystem",
            "capabilities",
            "seccompProfile",
            "appArmorProfile",
        ],
        "the securityContext",
    )?;
    if sc["privileged"].as_bool() == Some(true) {
        opt(&["--privileged"]);
    }
    if sc["allowPrivilegeEscalation"].as_bool() == Some(false) {
        opt(&["--security-opt", "no-new-privileges"]);
    }
    if sc["readOnlyRootFilesystem"].as_bool() == Some(true) {
        // A kubelet adds no tmpfs of its own; podman would unless told not to.
        opt(&["--read-only", "--read-only-tmpfs=false"]);
    }
    match sc["seccompProfile"]["type"].as_str() {
        Some("Unconfined") => opt(&["--security-opt", "seccomp=unconfined"]),
        None | Some("RuntimeDefault") => {}
        Some(other) => bail!("seccompProfile type {other} is not translated"),
    }
    match sc["appArmorProfile"]["type"].as_str() {
        Some("Unconfined") => opt(&["--security-opt", "apparmor=unconfined"]),
        None | Some("RuntimeDefault") => {}
        Some(other) => bail!("appArmorProfile type {other} is not translated"),
    }
    only_known(&sc["capabilities"], &["add", "drop"], "capabilities")?;
    let cap_drop = strings(&sc["capabilities"]["drop"]);
    let cap_add = strings(&sc["capabilities"]["add"]);

    let mut volumes = BTreeMap::new();
    for volume in pod["volumes"].as_vec().into_iter().flatten() {
        only_known(volume, &["name", "hostPath"], "a volume")?;
        only_known(&volume["hostPath"], &["path", "type"], "a hostPath volume")?;
        let name = volume["name"].as_str().context("volume name")?;
        let path = volume["hostPath"]["path"].as_str().context("only hostPath volumes are translated")?;
        volumes.insert(name.to_owned(), (path.to_owned(), volume["hostPath"]["type"].as_str().unwrap_or("")));
    }
    let mut create_dirs = Vec::new();
    for mount in c["volumeMounts"].as_vec().into_iter().flatten() {
        only_known(mount, &["name", "mountPath", "readOnly"], "a volumeMount")?;
        let name = mount["name"].as_str().context("volumeMount name")?;
        let (host, kind) = volumes.get(name).with_context(|| format!("volumeMount {name} has no volume"))?;
        match *kind {
            "DirectoryOrCreate" => create_dirs.push(PathBuf::from(host)),
            "Directory" => {
                ensure!(Path::new(host).is_dir(), "hostPath {host} (type Directory) is missing here")
            }
            other => bail!("hostPath type {other:?} is not translated"),
        }
        let target = mount["mountPath"].as_str().context("mountPath")?;
        let ro = if mount["readOnly"].as_bool() == Some(true) { ":ro" } else { "" };
        opt(&["-v", &format!("{host}:{target}{ro}")]);
    }

    Ok(PodRun {
        image: c["image"].as_str().context("image")?.to_owned(),
        options,
        cap_drop,
        cap_add,
        args: strings(&c["args"]),
        ports,
        readiness,
        liveness,
        memory_limit,
        grace_seconds,
        create_dirs,
    })
}

/// `--ulimit` values a container can be given here: podman's defaults (nofile 1048576) exceed
/// what root may set without CAP_SYS_RESOURCE, so the open-file limit is ours, and the process
/// limit 4096 (root in the initial user namespace is exempt from it anyway).
fn host_ulimits() -> [String; 2] {
    let nofile = rlimit(libc::RLIMIT_NOFILE);
    [format!("nofile={}:{}", nofile.0, nofile.1), "nproc=4096:4096".to_owned()]
}

fn rlimit(resource: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    unsafe { libc::getrlimit(resource, &mut limit) };
    (limit.rlim_cur, limit.rlim_max)
}

fn engine_cmd(args: &[&str]) -> Result<String> {
    let out = run(&engine(), args)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A container started by the test; removed on drop.
struct Container {
    name: String,
}

impl Container {
    fn start(args: &[String]) -> Result<Self> {
        let name = args.iter().skip_while(|a| *a != "--name").nth(1).context("--name")?.clone();
        let container = Self { name };
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        engine_cmd(&refs)?;
        Ok(container)
    }

    fn inspect(&self, format: &str) -> Result<String> {
        engine_cmd(&["inspect", "--format", format, &self.name])
    }

    fn pid(&self) -> Result<u32> {
        self.inspect("{{.State.Pid}}")?.parse().context("container pid")
    }

    fn exited(&self) -> bool {
        self.inspect("{{.State.Status}}").is_ok_and(|s| s == "exited" || s == "stopped")
    }

    fn logs(&self) -> String {
        Command::new(engine())
            .args(["logs", &self.name])
            .output()
            .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
            .unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(engine()).args(["rm", "-f", "-t", "0", &self.name]).output();
    }
}

/// A busybox image made from Debian's busybox-static for the side container (no registry).
fn side_image() -> Result<String> {
    let image = "localhost/netns-agent-test-busybox:1";
    if Command::new(engine()).args(["image", "exists", image]).status().is_ok_and(|s| s.success()) {
        return Ok(image.into());
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox (Debian package busybox-static) is needed for the side container")?;
    let dir = std::env::temp_dir().join(unique("netns-agent-busybox-"));
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::copy(busybox, dir.join("bin/busybox"))?;
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    let tar = Command::new("tar").arg("-C").arg(&dir).args(["-c", "."]).output()?;
    ensure!(tar.status.success(), "tar of the busybox rootfs failed");
    let mut import = Command::new(engine())
        .args(["import", "-", image])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    std::io::Write::write_all(import.stdin.as_mut().unwrap(), &tar.stdout)?;
    drop(import.stdin.take());
    ensure!(import.wait()?.success(), "{} import failed", engine());
    std::fs::remove_dir_all(&dir)?;
    Ok(image.into())
}

/// A copy of `ip` under a unique name, so the creations it makes carry a comm of their own
/// and count exactly even with other namespace activity on the host.
struct UniqueIp {
    path: PathBuf,
    comm: String,
}

impl UniqueIp {
    fn new() -> Result<Self> {
        let ip = ["/usr/bin/ip", "/bin/ip", "/sbin/ip", "/usr/sbin/ip"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("ip (iproute2)")?;
        let comm = unique("dsip");
        ensure!(comm.len() <= 15, "comm {comm} too long");
        // Under target/ (the temporary directory may be mounted noexec).
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("netns-agent-{comm}"));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(&comm);
        std::fs::copy(ip, &path)?;
        Ok(Self { path, comm })
    }

    fn netns_add(&self, name: &str) -> Result<()> {
        run(self.path.to_str().unwrap(), &["netns", "add", name])
            .map(|_| ())
            .context("ip netns add, under a unique name")
    }
}

impl Drop for UniqueIp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.path.parent().unwrap());
    }
}

fn scrape(port: u16) -> Result<Metrics> {
    Ok(Metrics::parse(&http_get(port, "/metrics")?))
}

fn pid_netns(pid: u32) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino())
}

/// Probe name -> modes reported as attached (value 1).
fn attached_modes(m: &Metrics) -> BTreeMap<String, Vec<String>> {
    let mut probes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for labels in m.series("netns_agent_probe_attached") {
        let (probe, mode) = (labels["probe"].clone(), labels["mode"].clone());
        let entry = probes.entry(probe.clone()).or_default();
        if m.get("netns_agent_probe_attached", &[("probe", &probe), ("mode", &mode)]) == Some(1.0) {
            entry.push(mode);
        }
    }
    probes
}

/// What the agent in `agent` (serving /metrics on `port`) must get right: every probe
/// attached in exactly one mode; a namespace made on the host and a container started beside
/// it counted exactly and attributed. Returns a one-line summary.
fn agent_works(agent: &Container, port: u16) -> Result<String> {
    // The agent serves /metrics once every probe has attached or failed to: then the
    // attachment is final.
    let first = wait_for("/metrics to answer", Duration::from_secs(60), || {
        ensure!(!agent.exited(), "the agent container stopped");
        Ok(scrape(port).ok())
    })?;
    let probes = attached_modes(&first);
    ensure!(
        !probes.is_empty() && probes.values().all(|modes| modes.len() == 1),
        "not every probe attached in exactly one mode: {probes:?}"
    );
    // Startup scans are done once /metrics answers; the baseline is taken now.
    let before = scrape(port)?;
    let ip = UniqueIp::new()?;
    let ns_name = unique("dsns");
    ip.netns_add(&ns_name)?;
    let _ns = NetnsName(ns_name.clone());
    let ns_inode = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(format!("/run/netns/{ns_name}"))?.ino()
    };
    let side = Container::start(&[
        "run".into(),
        "-d".into(),
        "--name".into(),
        unique("netns-agent-side-"),
        "--runtime".into(),
        oci_runtime(),
        "--ulimit".into(),
        host_ulimits()[0].clone(),
        "--ulimit".into(),
        host_ulimits()[1].clone(),
        "--pull=never".into(),
        side_image()?,
        "sleep".into(),
        "600".into(),
    ])?;
    let side_pid = side.pid()?;
    let side_id = side.inspect("{{.Id}}")?;
    let side_inode = pid_netns(side_pid)?;
    ensure!(side_inode != pid_netns(std::process::id())?, "the side container shares our namespace");

    let comm = std::fs::read_to_string(format!("/proc/{side_pid}/comm"))?.trim().to_owned();
    // The container's init may be seen before it execs (comm `runc:[2:INIT]`); the agent's
    // periodic rescan (every 15 s by default) brings the comm up to date.
    let after = wait_for("both namespaces in netns_info", Duration::from_secs(30), || {
        let m = scrape(port)?;
        let info = m.series("netns_info");
        let named = info.iter().find(|l| l["netns"] == ns_inode.to_string());
        let side_info = info.iter().find(|l| l["netns"] == side_inode.to_string());
        match (named, side_info) {
            (Some(n), Some(s))
                if n["name"].contains(&ns_name) && s["pid"] == side_pid.to_string() && s["comm"] == comm =>
            {
                Ok(Some(m))
            }
            _ => Ok(None),
        }
    })
    .with_context(|| {
        let info = scrape(port).map(|m| m.series("netns_info")).unwrap_or_default();
        let ours: Vec<_> = info
            .iter()
            .filter(|l| l["netns"] == ns_inode.to_string() || l["netns"] == side_inode.to_string())
            .collect();
        format!("named netns {ns_inode}, side container netns {side_inode} pid {side_pid} comm {comm}; netns_info: {ours:?}")
    })?;
    let delta = |comm: &str| {
        // A comm that had created nothing before has no series yet.
        after.get_or_zero("netns_created_total", &[("comm", comm)])
            - before.get_or_zero("netns_created_total", &[("comm", comm)])
    };
    ensure!(
        delta(&ip.comm) == 1.0,
        "netns_created_total{{comm={}}} rose by {}, not 1",
        ip.comm,
        delta(&ip.comm)
    );
    // The side container's namespace is made by the engine: exactly one more for its comm(s),
    // among the comms whose count rose.
    let rose: BTreeMap<String, f64> = after
        .series("netns_created_total")
        .into_iter()
        .map(|l| l["comm"].clone())
        .filter(|c| c != &ip.comm)
        .map(|c| (c.clone(), delta(&c)))
        .filter(|(_, d)| *d != 0.0)
        .collect();
    let engine_comms: Vec<&String> = rose
        .keys()
        .filter(|c| c.starts_with(&engine()) || c.starts_with("runc") || c.starts_with("conmon"))
        .collect();
    let engine_delta: f64 = engine_comms.iter().map(|c| rose[*c]).sum();
    ensure!(
        engine_delta == 1.0,
        "the side container's creation: counts rose by {rose:?}, expected exactly 1 for {}",
        engine()
    );

    let info = after.series("netns_info");
    let s = info.iter().find(|l| l["netns"] == side_inode.to_string()).unwrap();
    ensure!(s["comm"] == comm, "side container comm {:?}, expected {comm:?}", s["comm"]);
    ensure!(s["container_id"] == side_id, "side container_id {:?}, expected {side_id}", s["container_id"]);
    let sandbox = side.inspect("{{.NetworkSettings.SandboxKey}}").unwrap_or_default();
    ensure!(
        // `ip netns` names appear bare, other nsfs mounts by path.
        sandbox.is_empty()
            || s["name"].split(',').any(|n| n == sandbox || format!("/run/netns/{n}") == sandbox),
        "side container netns name {:?}, expected {sandbox}",
        s["name"]
    );
    let holders = leak_holders_named(port)?;
    Ok(format!(
        "{} probes attached ({}); created +1 for {} and +1 for the side container ({:?}); side container \
         attributed pid {side_pid} comm {comm} container_id {}..; {holders}",
        probes.len(),
        probes.iter().map(|(p, m)| format!("{p}={}", m[0])).collect::<Vec<_>>().join(", "),
        ip.comm,
        engine_comms,
        &side_id[..12],
    ))
}

/// Two namespaces held only by processes of another user (`nobody`), one by a socket made in
/// it, one by an nsfs descriptor: the agent names both holders (the README's leak walk-through,
/// as deployed).
fn leak_holders_named(port: u16) -> Result<String> {
    let mut named = Vec::new();
    for held_by in [HeldBy::Socket, HeldBy::NetnsFd] {
        let (holder, inode) = OrphanedNetns::held_by(held_by)?.give_to_nobody()?;
        let expected = serde_json::json!([{"pid": holder.pid(), "comm": "sleep", "fd": 3, "kind": held_by.kind(), "container_id": ""}]);
        wait_for(&format!("the {} holding {inode} named", held_by.kind()), Duration::from_secs(30), || {
            let body = http_get(port, "/api/v1/namespaces")?;
            let all: Vec<serde_json::Value> = serde_json::from_str(&body)?;
            Ok(all.into_iter().find(|v| v["netns"] == inode && v["holders"] == expected))
        })
        .with_context(|| {
            let body = http_get(port, "/api/v1/namespaces").unwrap_or_default();
            let all: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
            let view = all.into_iter().find(|v| v["netns"] == inode);
            format!("expected holders {expected}; the agent shows {view:?}")
        })?;
        named.push(format!("pid {} {}", holder.pid(), held_by.kind()));
    }
    Ok(format!("leak holders of user nobody named ({})", named.join(", ")))
}

/// Deletes an `ip netns` name on drop.
struct NetnsName(String);

impl Drop for NetnsName {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Capability names (without CAP_) in a /proc status mask.
fn capability_names(mask: u64) -> BTreeSet<String> {
    const NAMES: &[&str] = &[
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    (0..64)
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|bit| NAMES.get(bit).map_or(format!("{bit}"), |n| (*n).to_owned()))
        .collect()
}

fn effective_caps(pid: u32) -> Result<BTreeSet<String>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).context("CapEff")?.trim();
    Ok(capability_names(u64::from_str_radix(hex, 16)?))
}

/// Capabilities this host's runtime cannot grant (absent from our own bounding set).
fn ungrantable(caps: &[String]) -> Vec<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .map(capability_names)
        .unwrap_or_default();
    caps.iter().filter(|c| !bounding.contains(*c)).cloned().collect()
}

fn vm_hwm_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmHWM")?;
    Ok(kib * 1024)
}

fn prepare() -> Result<PodRun> {
    let pod = translate(&daemonset()?)?;
    let expected = format!("netns-agent:{}", env!("CARGO_PKG_VERSION"));
    ensure!(pod.image == expected, "the DaemonSet runs {}, `cargo xtask image` tags {expected}", pod.image);
    for dir in &pod.create_dirs {
        std::fs::create_dir_all(dir)?;
    }
    Ok(pod)
}

#[test]
fn pod_spec_becomes_a_podman_command_line() -> Result<()> {
    let ds = daemonset()?;
    let pod = translate(&ds)?;
    let cmd = pod.command("x").join(" ");
    for expected in [
        "--pid host",
        "--read-only --read-only-tmpfs=false",
        "--security-opt no-new-privileges",
        "--security-opt seccomp=unconfined",
        "--security-opt apparmor=unconfined",
        "--cap-drop ALL",
        "--cap-add BPF",
        "--memory 268435456",
        "-v /sys/kernel/tracing:/sys/kernel/tracing",
        "-v /var/lib/cni/results:/var/lib/cni/results:ro",
        "netns-agent:",
    ] {
        ensure!(cmd.contains(expected), "{expected:?} missing from: {cmd}");
    }
    ensure!(pod.args.first().map(String::as_str) == Some("run"), "args {:?}", pod.args);
    ensure!(!cmd.contains("--privileged"), "privileged: {cmd}");
    // A field the translation does not know fails instead of being dropped silently.
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/netns-agent.yaml"))?
        .replace("      hostPID: true", "      hostPID: true\n      hostIPC: true");
    let docs = yaml_rust2::YamlLoader::load_from_str(&text)?;
    let ds = docs.iter().find(|d| d["kind"].as_str() == Some("DaemonSet")).unwrap();
    let err = translate(ds).expect_err("hostIPC must not be ignored");
    ensure!(err.to_string().contains("hostIPC"), "{err}");
    println!("podman {cmd}");
    Ok(())
}

#[test]
fn daemonset_as_written_runs_counts_and_stops_cleanly() -> Result<()> {
    let pod = prepare()?;
    let name = unique("netns-agent-ds-");
    let cmd = pod.command(&name);
    println!("{} {}", engine(), cmd.join(" "));
    let agent = Container::start(&cmd)?;
    let port = pod.host_port("metrics")?;
    let summary = agent_works(&agent, port).with_context(|| format!("agent log:\n{}", agent.logs()))?;
    println!("{summary}");

    let pid = agent.pid()?;
    let caps = effective_caps(pid)?;
    let added: BTreeSet<String> = pod.cap_add.iter().cloned().collect();
    ensure!(caps.is_subset(&added), "the agent holds {caps:?}, beyond the manifest's {added:?}");
    let missing: Vec<&String> = added.difference(&caps).collect();
    if !missing.is_empty() {
        println!(
            "note: this host could not grant {missing:?} (not in its bounding set): the agent ran without"
        );
    }

    for (what, (path, port_name)) in [("readiness", &pod.readiness), ("liveness", &pod.liveness)] {
        http_get(pod.host_port(port_name)?, path).with_context(|| format!("{what} probe GET {path}"))?;
    }
    let limit = pod.memory_limit.context("the manifest sets no memory limit")?;
    let cgroup_limit: u64 = agent.inspect("{{.HostConfig.Memory}}")?.parse()?;
    ensure!(cgroup_limit == limit, "the container's memory limit is {cgroup_limit}, the manifest's {limit}");
    let peak = vm_hwm_bytes(pid)?;
    ensure!(peak < limit, "peak RSS {peak} bytes, limit {limit}");
    println!("peak RSS {:.1} MiB of the {:.0} MiB limit", peak as f64 / 1048576.0, limit as f64 / 1048576.0);

    // What kubelet does on delete: SIGTERM, SIGKILL after the grace period.
    let start = Instant::now();
    engine_cmd(&["stop", "-t", &pod.grace_seconds.to_string(), &agent.name])?;
    let took = start.elapsed();
    let code = agent.inspect("{{.State.ExitCode}}")?;
    let oom = agent.inspect("{{.State.OOMKilled}}")?;
    let log = agent.logs();
    ensure!(code == "0", "exit code {code} after SIGTERM (137 = killed after the grace period); log:\n{log}");
    ensure!(oom == "false", "OOM killed");
    ensure!(took < Duration::from_secs(pod.grace_seconds), "stopping took {took:?}");
    ensure!(log.contains("probes detached"), "the log does not say the probes were detached:\n{log}");
    println!(
        "SIGTERM: exit 0 in {:.1} s (grace {} s), log says probes detached",
        took.as_secs_f64(),
        pod.grace_seconds
    );
    Ok(())
}

/// How the agent fared in one run.
#[derive(Debug, Clone)]
enum Outcome {
    Works(String),
    /// Exited before serving: exit code and its output.
    FailsAtStart {
        exit: String,
        log: String,
    },
    /// Kept running but got something wrong.
    Broken {
        what: String,
        log: String,
    },
}

/// One capability of the manifest, dropped under each condition tried.
#[derive(Debug, Clone)]
struct CapabilityFinding {
    cap: String,
    /// (condition, outcome): "as written" first, then the condition the manifest names.
    runs: Vec<(String, Outcome)>,
}

impl CapabilityFinding {
    /// The first run that broke without the capability.
    fn breaking(&self) -> Option<&(String, Outcome)> {
        self.runs.iter().find(|(_, o)| !matches!(o, Outcome::Works(_)))
    }
}

/// Where a capability the agent works without on this host is needed, as a run here can
/// show it: (capability, condition, also-dropped capabilities, tracefs replaced by an empty
/// directory).
const HARDER_CONDITIONS: &[(&str, &str, &[&str], bool)] = &[
    // The kernel's bpf_capable() and perfmon_capable() accept CAP_SYS_ADMIN in their place.
    ("BPF", "without SYS_ADMIN too", &["SYS_ADMIN"], false),
    ("PERFMON", "without SYS_ADMIN too", &["SYS_ADMIN"], false),
    // A node that has not mounted tracefs: the agent mounts its own.
    ("SYS_ADMIN", "on a node without tracefs mounted", &[], true),
];

/// Needed where this host cannot show it, with the reason the manifest gives.
const JUSTIFIED_ELSEWHERE: &[(&str, &str)] =
    &[("SYS_RESOURCE", "raises RLIMIT_MEMLOCK for maps on kernels before 5.11 (memcg accounting since)")];

/// Runs the pod spec without `drop`; `empty_tracefs` mounts an empty directory as tracefs.
fn run_without(pod: &PodRun, drop: &[&str], empty_tracefs: bool) -> Result<Outcome> {
    let mut pod = pod.clone();
    pod.cap_add.retain(|c| !drop.contains(&c.as_str()));
    let empty = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("no-tracefs");
    if empty_tracefs {
        std::fs::create_dir_all(&empty)?;
        let mut found = false;
        for option in pod.options.iter_mut() {
            if let Some(target) = option.strip_prefix("/sys/kernel/tracing:") {
                *option = format!("{}:{target}", empty.display());
                found = true;
            }
        }
        ensure!(found, "no /sys/kernel/tracing volume to replace");
    }
    let agent = Container::start(&pod.command(&unique("netns-agent-cap-")))?;
    let port = pod.host_port("metrics")?;
    Ok(match agent_works(&agent, port) {
        Ok(summary) => Outcome::Works(summary),
        Err(_) if agent.exited() => {
            Outcome::FailsAtStart { exit: agent.inspect("{{.State.ExitCode}}")?, log: agent.logs() }
        }
        Err(err) => Outcome::Broken { what: format!("{err:#}"), log: agent.logs() },
    })
}

/// Every added capability dropped in turn (and under its harder condition when the agent
/// works without it here); computed once for both capability tests.
fn capability_findings() -> Result<Vec<CapabilityFinding>> {
    static FINDINGS: std::sync::Mutex<Option<Vec<CapabilityFinding>>> = std::sync::Mutex::new(None);
    let mut cached = FINDINGS.lock().unwrap();
    if let Some(findings) = &*cached {
        return Ok(findings.clone());
    }
    let pod = prepare()?;
    let mut findings = Vec::new();
    for cap in &pod.cap_add {
        let mut finding = CapabilityFinding { cap: cap.clone(), runs: Vec::new() };
        let outcome = run_without(&pod, &[cap], false)?;
        finding.runs.push(("as written".into(), outcome.clone()));
        if let (Outcome::Works(_), Some((_, condition, also, empty_tracefs))) =
            (&outcome, HARDER_CONDITIONS.iter().find(|(c, ..)| c == cap))
        {
            let mut drop = vec![cap.as_str()];
            drop.extend(also.iter().copied());
            finding.runs.push(((*condition).into(), run_without(&pod, &drop, *empty_tracefs)?));
        }
        for (condition, outcome) in &finding.runs {
            let text = match outcome {
                Outcome::Works(summary) => format!("works: {summary}"),
                Outcome::FailsAtStart { exit, log } => {
                    format!("fails at start, exit {exit}: {}", log.trim().lines().last().unwrap_or(""))
                }
                Outcome::Broken { what, log } => {
                    let warnings: Vec<&str> = log
                        .lines()
                        .filter(|l| l.contains("level=warn") || l.contains("level=error"))
                        .collect();
                    format!("keeps running but {what}; warnings: {warnings:?}")
                }
            };
            println!("without {cap} ({condition}): {text}");
        }
        findings.push(finding);
    }
    if let Some(missing) = Some(ungrantable(&pod.cap_add)).filter(|m| !m.is_empty()) {
        println!("note: this host cannot grant {missing:?} (not in its bounding set)");
    }
    *cached = Some(findings.clone());
    Ok(findings)
}

#[test]
fn every_added_capability_is_needed() -> Result<()> {
    let mut problems = Vec::new();
    for finding in capability_findings()? {
        if finding.breaking().is_some() {
            continue;
        }
        match JUSTIFIED_ELSEWHERE.iter().find(|(c, _)| *c == finding.cap) {
            Some((_, why)) => println!("{}: not needed on this host; kept: {why}", finding.cap),
            None => problems.push(format!(
                "{}: the agent works without it under every condition tried; remove it from the manifest \
                 or justify it here",
                finding.cap
            )),
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// Capabilities only one feature needs: without them the agent runs on, and that feature says
/// `unknown` (the holders of orphaned namespaces) rather than stopping everything.
const ONE_FEATURE: &[&str] = &["DAC_READ_SEARCH", "NET_ADMIN"];

/// The agent's side of the capability contract: a needed capability that is missing stops it
/// at start with one line naming it; one that only one feature needs is named by exactly one
/// warning while the agent runs on.
#[test]
fn a_missing_capability_stops_the_agent_with_one_line_naming_it() -> Result<()> {
    let mut problems = Vec::new();
    for finding in capability_findings()? {
        let Some((condition, outcome)) = finding.breaking() else { continue };
        let named = format!("CAP_{}", finding.cap);
        match outcome {
            Outcome::FailsAtStart { log, .. } => {
                let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
                if lines.len() != 1 || !lines[0].contains(&named) {
                    problems.push(format!(
                        "without {} ({condition}): stops, but not with one line naming {named}: {lines:?}",
                        finding.cap
                    ));
                }
            }
            Outcome::Broken { log, .. } if ONE_FEATURE.contains(&finding.cap.as_str()) => {
                let warnings: Vec<&str> =
                    log.lines().filter(|l| l.contains("level=warn") && l.contains(&named)).collect();
                if warnings.len() != 1 {
                    problems.push(format!(
                        "without {} ({condition}): runs on, but not with exactly one warning naming {named}: {warnings:?}",
                        finding.cap
                    ));
                }
            }
            Outcome::Broken { what, .. } => problems.push(format!(
                "without {} ({condition}): keeps running with {what}, instead of stopping with an error naming {named}",
                finding.cap
            )),
            Outcome::Works(_) => unreachable!(),
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}
