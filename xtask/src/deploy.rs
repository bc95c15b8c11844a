//! The deployment tiers of `cargo xtask test`:
//! - manifests: the Kubernetes manifest against the API schemas of the newest three
//!   Kubernetes versions `kubernetes-validate` knows (strict), the ServiceMonitor against the
//!   Prometheus Operator's CRD schema, `promtool check config`, `systemd-analyze verify`;
//! - image: `cargo xtask image`, then its size, labels, `--version`, no shell, and its saved
//!   archive loaded by podman, docker and `ctr images import` (and docker's own save loaded by
//!   podman);
//! - daemonset: tests/daemonset.rs, the DaemonSet's pod spec run with podman.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use yaml_rust2::Yaml;

use crate::{
    image, setup,
    util::{output, step, workspace_root},
};

/// The npm package with the Prometheus Operator's CRD schemas (compiled validators), pinned.
pub const PROMETHEUS_OPERATOR_MODELS: &str = "@kubernetes-models/prometheus-operator@6.0.0";
/// How many Kubernetes minor versions the manifest is validated against (newest first).
const KUBERNETES_VERSIONS: usize = 3;

/// Named checks of a tier: each passes or fails with a reason.
#[derive(Default)]
pub struct Checks {
    pub passed: u32,
    pub failed: u32,
}

impl Checks {
    pub fn check(&mut self, name: &str, result: Result<String>) {
        match result {
            Ok(note) if note.is_empty() => {
                self.passed += 1;
                println!("check {name} ... ok");
            }
            Ok(note) => {
                self.passed += 1;
                println!("check {name} ... ok: {note}");
            }
            Err(err) => {
                self.failed += 1;
                println!("check {name} ... FAILED: {err:#}");
            }
        }
    }
}

fn captured(cmd: &mut Command) -> Result<(bool, String)> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    Ok((
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    ))
}

fn manifest() -> PathBuf {
    workspace_root().join("deploy/kubernetes/netns-agent.yaml")
}

// ---------------------------------------------------------------------------------------
// manifests

/// Kubernetes versions (1.N.0) whose strict schemas the installed kubernetes-validate ships,
/// newest first.
pub fn kubernetes_versions() -> Result<Vec<String>> {
    let dir = output(
        "python3",
        &["-c", "import kubernetes_validate, os; print(os.path.dirname(kubernetes_validate.__file__))"],
    )
    .context("kubernetes-validate is not installed (pip install kubernetes-validate)")?;
    let mut versions: Vec<(u64, u64, String)> =
        std::fs::read_dir(Path::new(dir.trim()).join("kubernetes-json-schema"))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let version = name.strip_prefix('v')?.strip_suffix("-local-strict")?.to_owned();
                let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
                Some((parts.next()??, parts.next()??, version))
            })
            .collect();
    versions.sort();
    versions.dedup_by_key(|(major, minor, _)| (*major, *minor));
    Ok(versions.into_iter().rev().take(KUBERNETES_VERSIONS).map(|(_, _, v)| v).collect())
}

fn kubernetes_validate(version: &str) -> Result<String> {
    let (ok, text) = captured(
        Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "-k", version])
            .arg(manifest()),
    )?;
    print!("{text}");
    ensure!(ok && !text.contains("ERROR") && !text.contains("FAIL"), "kubernetes-validate {version} failed");
    // Every object but the ServiceMonitor (a CRD, checked on its own) must have passed.
    let passed = text.lines().filter(|l| l.contains(" passed for resource ")).count();
    let objects = yaml_docs(&manifest())?.len();
    ensure!(passed == objects - 1, "{passed} of {} non-CRD objects passed", objects - 1);
    Ok(format!("{passed} objects"))
}

fn yaml_docs(path: &Path) -> Result<Vec<Yaml>> {
    yaml_rust2::YamlLoader::load_from_str(&std::fs::read_to_string(path)?)
        .with_context(|| format!("{} is not YAML", path.display()))
}

/// A YAML node as JSON (the manifest uses strings, numbers, booleans, lists and maps).
pub fn yaml_to_json(yaml: &Yaml) -> Result<serde_json::Value> {
    use serde_json::Value;
    Ok(match yaml {
        Yaml::Real(r) => Value::from(r.parse::<f64>()?),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::from(s.as_str()),
        Yaml::Boolean(b) => Value::from(*b),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect::<Result<_>>()?),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.as_str().context("a non-string key")?.to_owned(), yaml_to_json(v)?)))
                .collect::<Result<_>>()?,
        ),
        Yaml::Null => Value::Null,
        other => bail!("unsupported YAML node {other:?}"),
    })
}

/// Validates a ServiceMonitor (JSON) with the Prometheus Operator models package, installed
/// into target/manifests from the npm registry; returns (valid, message).
fn servicemonitor_valid(dir: &Path, doc: &serde_json::Value) -> Result<(bool, String)> {
    let mut child = Command::new("node")
        .arg(dir.join("validate-servicemonitor.mjs"))
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("node")?;
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), doc.to_string().as_bytes())?;
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text.trim().to_owned()))
}

const VALIDATE_SERVICEMONITOR: &str = r#"// Generated by cargo xtask test: validates the ServiceMonitor on stdin (JSON) against the
// Prometheus Operator CRD schema compiled into the models package.
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
let text = "";
for await (const chunk of process.stdin) text += chunk;
try {
  new ServiceMonitor(JSON.parse(text)).validate();
  console.log("valid");
} catch (err) {
  console.log(err.message);
  process.exit(1);
}
"#;

fn servicemonitor() -> Result<String> {
    let dir = workspace_root().join("target/manifests");
    std::fs::create_dir_all(&dir)?;
    let installed = dir.join("node_modules/@kubernetes-models/prometheus-operator/package.json");
    let wanted = PROMETHEUS_OPERATOR_MODELS.rsplit_once('@').unwrap().1;
    if !std::fs::read_to_string(&installed).is_ok_and(|p| p.contains(&format!("\"version\": \"{wanted}\""))) {
        let (ok, text) = captured(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--no-save", "--prefix"])
                .arg(&dir)
                .arg(PROMETHEUS_OPERATOR_MODELS),
        )?;
        ensure!(ok, "npm install {PROMETHEUS_OPERATOR_MODELS}: {text}");
    }
    std::fs::write(dir.join("validate-servicemonitor.mjs"), VALIDATE_SERVICEMONITOR)?;
    let docs = yaml_docs(&manifest())?;
    let sm =
        docs.iter().find(|d| d["kind"].as_str() == Some("ServiceMonitor")).context("no ServiceMonitor")?;
    let json = yaml_to_json(sm)?;
    let (ok, message) = servicemonitor_valid(&dir, &json)?;
    ensure!(ok, "the ServiceMonitor does not match the CRD schema: {message}");
    // The validator must be live: a broken copy (a duration the CRD's pattern refuses, and
    // no selector) is rejected.
    let mut broken = json.clone();
    broken["spec"]["endpoints"][0]["interval"] = "30 seconds".into();
    broken["spec"].as_object_mut().context("spec")?.remove("selector");
    let (ok, message) = servicemonitor_valid(&dir, &broken)?;
    ensure!(
        !ok && message.contains("interval") && message.contains("selector"),
        "a broken copy passed: {message}"
    );
    Ok(format!(
        "{PROMETHEUS_OPERATOR_MODELS} (types, patterns, required fields; unknown fields pass, as the API server prunes them)"
    ))
}

fn promtool_config() -> Result<String> {
    let (ok, text) = captured(
        Command::new("promtool")
            .args(["check", "config"])
            .arg(workspace_root().join("deploy/prometheus/prometheus.yml")),
    )?;
    print!("{text}");
    ensure!(ok, "promtool check config failed");
    Ok(String::new())
}

fn systemd_verify(agent: &Path) -> Result<String> {
    let unit = std::fs::read_to_string(workspace_root().join("deploy/systemd/netns-agent.service"))?;
    ensure!(
        unit.contains("ExecStart=/usr/local/bin/netns-agent "),
        "ExecStart is not /usr/local/bin/netns-agent"
    );
    // The unit as installed, with the binary built here in place of /usr/local/bin's.
    let dir = workspace_root().join("target/manifests/systemd");
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join("netns-agent.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/netns-agent", agent.to_str().context("path")?))?;
    let (ok, text) = captured(Command::new("systemd-analyze").arg("verify").arg(&copy))?;
    ensure!(ok && text.trim().is_empty(), "systemd-analyze verify: {text}");
    Ok(String::new())
}

pub fn manifests(agent: &Path) -> (u32, u32, Option<String>) {
    step("manifests: kubernetes-validate, the ServiceMonitor's CRD schema, promtool, systemd-analyze");
    let mut checks = Checks::default();
    match kubernetes_versions() {
        Ok(versions) if versions.len() == KUBERNETES_VERSIONS => {
            for version in versions {
                checks.check(
                    &format!("kubernetes-validate --strict -k {version}"),
                    kubernetes_validate(&version),
                );
            }
        }
        Ok(versions) => checks.check("kubernetes versions", Err(anyhow::anyhow!("only {versions:?} known"))),
        Err(err) => checks.check("kubernetes versions", Err(err)),
    }
    checks.check("ServiceMonitor against the Prometheus Operator CRD schema", servicemonitor());
    checks.check("promtool check config deploy/prometheus/prometheus.yml", promtool_config());
    checks.check("systemd-analyze verify deploy/systemd/netns-agent.service", systemd_verify(agent));
    (checks.passed, checks.failed, None)
}

// ---------------------------------------------------------------------------------------
// image

/// A podman with its own storage under target/, as a node that never had the image.
struct ScratchPodman {
    root: PathBuf,
    /// Its run root: podman refuses one longer than 50 characters, which a path under the
    /// checkout can be (CI clones deep), so it lives under /tmp.
    runroot: PathBuf,
}

impl ScratchPodman {
    fn new(name: &str) -> Result<Self> {
        let root = workspace_root().join("target/image").join(name);
        let runroot = std::env::temp_dir().join(format!("nsa-{name}-{}", std::process::id()));
        for dir in [&root, &runroot] {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir)?;
        }
        ensure!(runroot.as_os_str().len() <= 50, "podman run root {} too long", runroot.display());
        Ok(Self { root, runroot })
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.root.join("storage"))
            .arg("--runroot")
            .arg(&self.runroot)
            // vfs: plain directories, nothing mounted to clean up.
            .args(["--storage-driver", "vfs"]);
        cmd
    }

    /// Loads an archive and runs `--version` from it.
    fn load_and_run(&self, archive: &Path) -> Result<String> {
        let (ok, text) = captured(self.cmd().args(["load", "-i"]).arg(archive))?;
        ensure!(ok, "podman load: {text}");
        let (ok, version) = captured(self.cmd().args(run_args()).arg(image::tag()).arg("--version"))?;
        ensure!(ok, "podman run --version after load: {version}");
        Ok(version.trim().to_owned())
    }
}

impl Drop for ScratchPodman {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = std::fs::remove_dir_all(&self.runroot);
    }
}

/// `run --rm` options for podman on this kind of host (runc; explicit rlimits).
fn run_args() -> Vec<String> {
    // podman's default open-file limit exceeds what root may set without CAP_SYS_RESOURCE:
    // pass ours, and a process limit that fits under conmon's.
    let nofile = output("sh", &["-c", "echo $(ulimit -Sn):$(ulimit -Hn)"]);
    let mut args =
        vec!["run".to_owned(), "--rm".to_owned(), "--pull=never".to_owned(), "--network=none".to_owned()];
    args.extend(["--runtime".to_owned(), "runc".to_owned()]);
    if let Some(nofile) = nofile {
        args.extend(["--ulimit".to_owned(), format!("nofile={}", nofile.trim())]);
    }
    args.extend(["--ulimit".to_owned(), "nproc=4096:4096".to_owned()]);
    args
}

/// Starts dockerd when it is installed and not running; stops it on drop if it started it.
pub struct Dockerd {
    child: Option<std::process::Child>,
}

impl Dockerd {
    pub fn ensure() -> Result<Self> {
        let answers = || output("docker", &["info", "--format", "{{.ServerVersion}}"]).is_some();
        if answers() {
            return Ok(Self { child: None });
        }
        std::fs::create_dir_all(workspace_root().join("target/image"))?;
        let log = std::fs::File::create(workspace_root().join("target/image/dockerd.log"))?;
        let child = Command::new("dockerd")
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting dockerd (Debian package docker.io)")?;
        let dockerd = Self { child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !answers() {
            ensure!(
                Instant::now() < deadline,
                "dockerd did not answer within 60 s (target/image/dockerd.log)"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(dockerd)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

fn docker_round_trip(built: &image::Built) -> Result<String> {
    let tag = image::tag();
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
    let (ok, text) = captured(Command::new("docker").args(["load", "-i"]).arg(&built.archive))?;
    ensure!(ok && text.contains(&format!("Loaded image: {tag}")), "docker load: {text}");
    let (ok, version) = captured(Command::new("docker").args(["run", "--rm", &tag, "--version"]))?;
    ensure!(
        ok && version.trim() == format!("netns-agent {}", image::version()),
        "docker run --version: {version}"
    );
    // And back: what `docker save` writes loads in podman.
    let saved = workspace_root().join("target/image/docker-save.tar");
    let (ok, text) = captured(Command::new("docker").args(["save", "-o"]).arg(&saved).arg(&tag))?;
    ensure!(ok, "docker save: {text}");
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
    let podman = ScratchPodman::new("podman-from-docker")?;
    let from_docker = podman.load_and_run(&saved)?;
    let _ = std::fs::remove_file(&saved);
    ensure!(from_docker == version.trim(), "podman load of docker save: {from_docker}");
    Ok(format!("docker load + run: {}; docker save -> podman load + run: {from_docker}", version.trim()))
}

/// `ctr images import` (how a containerd node loads it) names the image as the kubelet resolves
/// the DaemonSet's `netns-agent:<version>`; uses dockerd's containerd, in a namespace of its own.
fn ctr_import(built: &image::Built) -> Result<String> {
    let socket = ["/run/containerd/containerd.sock", "/var/run/docker/containerd/containerd.sock"]
        .into_iter()
        .find(|s| Path::new(s).exists())
        .context("no containerd socket")?;
    let ctr = |args: &[&str], stdin: Option<&Path>| -> Result<(bool, String)> {
        let mut cmd = Command::new("timeout");
        cmd.args(["120", "ctr", "--address", socket, "-n", "netns-agent-test"]).args(args);
        if let Some(file) = stdin {
            cmd.stdin(std::fs::File::open(file)?);
        }
        captured(&mut cmd)
    };
    let (ok, text) = ctr(&["images", "import", "-"], Some(&built.archive))?;
    ensure!(ok, "ctr images import: {text}");
    let (_, names) = ctr(&["images", "ls", "-q"], None)?;
    let _ = ctr(&["images", "rm", &image::qualified_tag()], None);
    ensure!(names.lines().any(|n| n == image::qualified_tag()), "ctr named it {names:?}");
    Ok(image::qualified_tag())
}

fn labels(built: &image::Built) -> Result<String> {
    let json =
        output(&built.engine, &["image", "inspect", "--format", "{{json .Config.Labels}}", &built.tag])
            .context("image inspect")?;
    let labels: serde_json::Value = serde_json::from_str(&json)?;
    let label =
        |key: &str| labels[format!("org.opencontainers.image.{key}")].as_str().unwrap_or("").to_owned();
    ensure!(label("version") == image::version(), "version label {:?}", label("version"));
    ensure!(
        label("revision") == built.revision,
        "revision label {:?}, HEAD {}",
        label("revision"),
        built.revision
    );
    ensure!(label("source").starts_with("https://"), "source label {:?}", label("source"));
    ensure!(
        !label("created").is_empty() && !label("licenses").is_empty(),
        "created/licenses labels: {labels}"
    );
    Ok(format!("version {}, revision {}, source {}", label("version"), label("revision"), label("source")))
}

fn no_shell(built: &image::Built) -> Result<String> {
    let rootfs = workspace_root().join("target/image/context/rootfs");
    let mut files = Vec::new();
    let mut stack = vec![rootfs.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else {
                files.push(path.strip_prefix(&rootfs)?.to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    ensure!(
        !files.iter().any(|f| f.ends_with("/sh") || f.contains("busybox")),
        "a shell in the image: {files:?}"
    );
    let mut cmd = Command::new(&built.engine);
    if built.engine == "podman" {
        cmd.args(run_args());
    } else {
        cmd.args(["run", "--rm"]);
    }
    let (ok, _) = captured(cmd.args(["--entrypoint", "/bin/sh", &built.tag, "-c", "true"]))?;
    ensure!(!ok, "/bin/sh ran in the image");
    Ok(format!("{} files: {}", files.len(), files.join(", ")))
}

pub fn image_tier() -> (u32, u32, Option<String>) {
    step("image: cargo xtask image, then size, labels, --version, no shell, save/load");
    let built = match image::build(&image::ImageArgs { engine: None }) {
        Ok(built) => built,
        Err(err) => return (0, 1, Some(format!("cargo xtask image: {err:#}"))),
    };
    let mut checks = Checks::default();
    checks.check(
        "image size",
        (|| {
            let mb = built.size_bytes as f64 / 1e6;
            ensure!(built.size_bytes < 64_000_000, "{mb:.1} MB");
            Ok(format!("{mb:.1} MB"))
        })(),
    );
    checks.check("OCI labels", labels(&built));
    checks.check(
        "--version matches the tag",
        (|| {
            let mut cmd = Command::new(&built.engine);
            if built.engine == "podman" {
                cmd.args(run_args());
            } else {
                cmd.args(["run", "--rm"]);
            }
            let (ok, text) = captured(cmd.args([&built.tag, "--version"]))?;
            let expected = format!("netns-agent {}", built.tag.rsplit_once(':').unwrap().1);
            ensure!(ok && text.trim() == expected, "{:?}, expected {expected:?}", text.trim());
            Ok(text.trim().to_owned())
        })(),
    );
    checks.check("no shell, only the binary and its libraries", no_shell(&built));
    checks.check(
        "saved archive loads in a fresh podman",
        ScratchPodman::new("podman-load").and_then(|p| p.load_and_run(&built.archive)),
    );
    // Both need dockerd (and the containerd it runs): started once if it is not running.
    type Check = fn(&image::Built) -> Result<String>;
    let docker_checks: [(&str, Check); 2] = [
        ("saved archive loads in docker, docker save loads in podman", docker_round_trip),
        ("ctr images import names it as the kubelet resolves the DaemonSet's image", ctr_import),
    ];
    match Dockerd::ensure() {
        Ok(_dockerd) => {
            for (name, check) in docker_checks {
                checks.check(name, check(&built));
            }
        }
        Err(err) => {
            for (name, _) in docker_checks {
                checks.check(name, Err(anyhow::anyhow!("{err:#}")));
            }
        }
    }
    (checks.passed, checks.failed, None)
}

pub fn tools() -> Result<()> {
    setup::apt(setup::DEPLOY_PACKAGES)?;
    if output("npm", &["--version"]).is_none() {
        setup::apt(&["npm"])?;
    }
    setup::pip(&["kubernetes-validate"])
}
