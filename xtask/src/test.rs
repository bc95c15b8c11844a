//! `cargo xtask test`: lint, unit tests, end-to-end tests on the host kernel (tracepoint
//! mode), the real container runtimes on the host kernel, the deployment tiers, the fuzz tier
//! (`fuzz/`, each parser target for a bounded time) and the VM matrix (Debian 12's 6.1 and
//! 6.12 kernels booted with virtme-ng in kprobe and fentry modes, Debian 11's 5.10 with the
//! route and lifecycle tests in kprobe mode, Debian 12's 6.12 PREEMPT_RT kernel with the
//! route tests in tracepoint mode; `setup::VM_KERNELS`), which runs beside the tiers after
//! the host's. Ends with a summary naming each
//! tier, (kernel, mode) and fuzz target, and its result.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    deploy, fuzz, setup,
    tier::Tier,
    util::{cargo, is_root, step, workspace_root},
};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip the VM matrix (host tiers only).
    #[arg(long)]
    no_vm: bool,
    /// Run only the VM matrix (after building).
    #[arg(long, conflicts_with = "no_vm")]
    vm_only: bool,
    /// Run only the deployment tiers: manifests, image, daemonset (after building).
    #[arg(long, conflicts_with_all = ["no_vm", "vm_only"])]
    deploy_only: bool,
    /// Run only the runtimes tier: Docker, Podman (netavark, CNI) and the CNI plugins on the
    /// host kernel (after building).
    #[arg(long, conflicts_with_all = ["no_vm", "vm_only", "deploy_only"])]
    runtimes_only: bool,
    /// Run only the fuzz tier (no root needed).
    #[arg(long, conflicts_with_all = ["no_vm", "vm_only", "deploy_only", "runtimes_only"])]
    fuzz_only: bool,
    /// Seconds each fuzz target runs.
    #[arg(long, default_value_t = 20)]
    fuzz_seconds: u32,
    /// Only these attach modes in the VMs (default: each kernel's modes, see README).
    #[arg(long, value_delimiter = ',')]
    vm_modes: Vec<String>,
    /// Only these kernels of the VM matrix (5.10, 6.1, 6.12, 6.12-rt).
    #[arg(long, value_delimiter = ',')]
    vm_kernels: Vec<String>,
    /// VMs of the matrix that run at once (one VM per kernel and mode).
    #[arg(long, default_value_t = 5)]
    vm_jobs: usize,
    /// Only run end-to-end tests whose name contains this (passed to the test binaries).
    #[arg(long)]
    filter: Option<String>,
}

/// Sums the `test result:` lines of cargo test output.
fn count_results(output: &str) -> (u32, u32) {
    let mut passed = 0;
    let mut failed = 0;
    for line in output.lines().filter(|l| l.starts_with("test result:")) {
        let number_before = |word: &str| {
            line.split(';')
                .find_map(|part| {
                    part.trim()
                        .strip_suffix(word)
                        .and_then(|n| n.split_whitespace().last()?.parse::<u32>().ok())
                })
                .unwrap_or(0)
        };
        passed += number_before(" passed");
        failed += number_before(" failed");
    }
    (passed, failed)
}

pub fn run(args: TestArgs) -> Result<()> {
    if args.fuzz_only {
        let started = Instant::now();
        setup::build_tools()?;
        setup::fuzz_tools()?;
        return summarize(&fuzz::tiers(args.fuzz_seconds), started);
    }
    if !is_root() {
        bail!(
            "cargo xtask test loads eBPF programs and creates namespaces: run it as root (sudo -E cargo xtask test)"
        );
    }
    let started = Instant::now();
    setup::build_tools()?;
    setup::test_tools()?;
    let only = args.vm_only || args.deploy_only || args.runtimes_only;
    if !only {
        setup::fuzz_tools()?;
    }
    if !args.vm_only && !args.runtimes_only {
        deploy::tools()?;
    }
    if !args.vm_only && !args.deploy_only {
        setup::runtime_tools()?;
    }
    let kernels =
        if args.no_vm || args.deploy_only || args.runtimes_only { Vec::new() } else { setup::vm_tools()? };
    let mut tiers = Vec::new();

    step("building the agent (release) and the end-to-end tests");
    cargo(&["build", "--release", "-p", "netns-agent"])?;
    let binaries = e2e_binaries()?;
    let agent = workspace_root().join("target/release/netns-agent");

    // The DaemonSet test runs the image in its own tier, after the image is built.
    let is = |b: &PathBuf, prefix: &str| {
        b.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix))
    };
    let (daemonset_binaries, binaries): (Vec<PathBuf>, Vec<PathBuf>) =
        binaries.into_iter().partition(|b| is(b, "daemonset-"));
    // The container runtimes run on the host only (the VMs have none).
    let (runtimes_binaries, binaries): (Vec<PathBuf>, Vec<PathBuf>) =
        binaries.into_iter().partition(|b| is(b, "runtimes-"));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // The host tier first, alone: its churn, scrape-latency and live-Prometheus tests measure
    // this host, and the VMs (software emulation) would be load of our own making.
    if !only {
        tiers.push(host(&binaries, &agent, release.trim(), args.filter.as_deref()));
    }
    // The kernel matrix runs everything but the live-Prometheus test, which is about
    // Prometheus and Grafana, not kernels, and runs once on the host.
    // The secured endpoint (web) is about HTTP, not kernels: like Prometheus, once on the host.
    // So are the capability sets (privileges): every VM test runs with the agent's reduced
    // set after start-up anyway, which is where a kernel could differ.
    let vm_binaries: Vec<PathBuf> = binaries
        .iter()
        // The churn test is about load on a real host: under emulation it would measure the
        // emulator (and 5,000 namespaces would not fit the VM budget).
        .filter(|b| !is(b, "prometheus-") && !is(b, "web-") && !is(b, "privileges-") && !is(b, "churn-"))
        .cloned()
        .collect();
    // The VM matrix is the longest part of a run, and its guests spend most of it waiting
    // on their emulated kernels: it runs beside the tiers that follow (lint, unit tests,
    // fuzzing, the runtimes and deployment tiers, none of which times the host), so the
    // run takes about as long as the matrix instead of the sum of both.
    let vm_tiers = std::thread::scope(|scope| {
        let matrix = (!kernels.is_empty()).then(|| {
            scope.spawn(|| {
                vm_matrix(
                    &kernels,
                    &args.vm_kernels,
                    &args.vm_modes,
                    &vm_binaries,
                    &agent,
                    args.filter.as_deref(),
                    args.vm_jobs,
                )
            })
        });
        if !only {
            tiers.push(lint());
            tiers.push(unit());
            tiers.extend(fuzz::tiers(args.fuzz_seconds));
        }
        if !args.vm_only && !args.deploy_only {
            tiers.push(runtimes(&runtimes_binaries, &agent, release.trim(), args.filter.as_deref()));
        }
        if !args.vm_only && !args.runtimes_only {
            tiers.push(timed("manifests  k8s schemas, CRD, promtool, systemd", || deploy::manifests(&agent)));
            tiers.push(timed("image  build, labels, size, save/load", deploy::image_tier));
            tiers.push(daemonset(&daemonset_binaries, args.filter.as_deref()));
        }
        if matrix.is_some() {
            step("waiting for the VM matrix");
        }
        matrix
            .map(|m| {
                m.join().unwrap_or_else(|_| {
                    vec![Tier {
                        name: "vm".into(),
                        passed: 0,
                        failed: 0,
                        error: Some("the VM matrix panicked".into()),
                        note: None,
                        elapsed: started.elapsed(),
                    }]
                })
            })
            .unwrap_or_default()
    });
    tiers.extend(vm_tiers);
    summarize(&tiers, started)
}

/// Prints the summary; fails if any tier did.
fn summarize(tiers: &[Tier], started: Instant) -> Result<()> {
    let mut summary = String::from("\n== summary ==\n");
    for tier in tiers {
        let status = if tier.ok() { "ok" } else { "FAILED" };
        let _ = write!(
            summary,
            "{:<46} {:<7} {:>4} passed, {:>3} failed  ({:.0} s)",
            tier.name,
            status,
            tier.passed,
            tier.failed,
            tier.elapsed.as_secs_f64()
        );
        if let Some(err) = &tier.error {
            let _ = write!(summary, "  {err}");
        }
        if let Some(note) = &tier.note {
            let _ = write!(summary, "  {note}");
        }
        summary.push('\n');
    }
    let passed: u32 = tiers.iter().map(|t| t.passed).sum();
    let failed: u32 = tiers.iter().map(|t| t.failed).sum::<u32>()
        + tiers.iter().filter(|t| t.error.is_some()).count() as u32;
    let _ = writeln!(summary, "total time {:.0} s", started.elapsed().as_secs_f64());
    let _ = writeln!(summary, "{passed} passed, {failed} failed");
    print!("{summary}");
    if tiers.iter().all(Tier::ok) { Ok(()) } else { bail!("some tests failed") }
}

fn timed(name: impl Into<String>, f: impl FnOnce() -> (u32, u32, Option<String>)) -> Tier {
    let start = Instant::now();
    let (passed, failed, error) = f();
    Tier { name: name.into(), passed, failed, error, note: None, elapsed: start.elapsed() }
}

fn lint() -> Tier {
    step("lint: cargo fmt --check, cargo clippy -D warnings");
    timed("lint  fmt, clippy -D warnings", || {
        let root = workspace_root();
        let cargo = |toolchain: Option<&str>, args: &[&str]| {
            let mut cmd = match toolchain {
                Some(t) => {
                    let mut c = Command::new("rustup");
                    c.args(["run", t, "cargo"]);
                    c
                }
                None => Command::new(env!("CARGO")),
            };
            cmd.args(args).current_dir(&root).status().is_ok_and(|s| s.success())
        };
        let checks = [
            cargo(None, &["fmt", "--all", "--check"]),
            cargo(
                None,
                &[
                    "clippy",
                    "--workspace",
                    "--exclude",
                    "netns-agent-ebpf",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
            ),
            // The kernel programs only build for the BPF target, with nightly.
            cargo(
                Some("nightly"),
                &[
                    "clippy",
                    "-p",
                    "netns-agent-ebpf",
                    "--release",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--",
                    "-D",
                    "warnings",
                ],
            ),
        ];
        let failed = checks.iter().filter(|ok| !**ok).count() as u32;
        (checks.len() as u32 - failed, failed, None)
    })
}

fn unit() -> Tier {
    step("unit tests");
    timed("unit  cargo test (workspace)", || {
        let out = Command::new(env!("CARGO"))
            .args(["test", "--workspace", "--exclude", "netns-agent-e2e", "--exclude", "netns-agent-ebpf"])
            .current_dir(workspace_root())
            .stderr(Stdio::inherit())
            .output();
        match out {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                print!("{text}");
                let (passed, failed) = count_results(&text);
                let error =
                    (!out.status.success() && failed == 0).then(|| format!("cargo test: {}", out.status));
                (passed, failed, error)
            }
            Err(err) => (0, 0, Some(err.to_string())),
        }
    })
}

/// Builds the end-to-end test binaries and returns their paths.
fn e2e_binaries() -> Result<Vec<PathBuf>> {
    let out = Command::new(env!("CARGO"))
        .args(["test", "-p", "netns-agent-e2e", "--no-run", "--message-format=json"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("building the end-to-end tests failed");
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["kind"][0] == "test"
            && let Some(exe) = msg["executable"].as_str()
        {
            binaries.push(PathBuf::from(exe));
        }
    }
    if binaries.is_empty() {
        bail!("no end-to-end test binaries were built");
    }
    Ok(binaries)
}

/// End-to-end tests that need a device type some kernels lack: (`ip link` type, test, the
/// kernel option). On such a kernel the host tier skips the test by name and says so in its
/// row; the VM kernels have every type and run it.
const DEVICE_TESTS: [(&str, &str, &str); 2] = [
    ("vlan", "lookups_of_packets_received_through_a_vlan_count_in_its_namespace", "CONFIG_VLAN_8021Q"),
    ("ipvlan", "lookups_of_packets_received_through_an_ipvlan_count_in_its_namespace", "CONFIG_IPVLAN"),
];

/// Whether this kernel makes `kind` devices: one made on a dummy in a scratch namespace.
fn kernel_makes(kind: &str) -> bool {
    let ns = "xtask-devprobe";
    let ip = |args: &str| {
        Command::new("ip")
            .args(args.split(' '))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let _ = ip(&format!("netns del {ns}"));
    let made = ip(&format!("netns add {ns}"))
        && ip(&format!("-n {ns} link add d0 type dummy"))
        && ip(&format!(
            "-n {ns} link add d1 link d0 type {kind}{}",
            if kind == "vlan" { " id 2" } else { "" }
        ));
    let _ = ip(&format!("netns del {ns}"));
    made
}

fn host(binaries: &[PathBuf], agent: &Path, release: &str, filter: Option<&str>) -> Tier {
    step(&format!("end-to-end tests on this kernel ({release}), tracepoint mode"));
    let lacking: Vec<_> = DEVICE_TESTS.iter().filter(|(kind, _, _)| !kernel_makes(kind)).collect();
    let mut tier = timed(format!("host  Linux {release} / tracepoint"), || {
        run_binaries(binaries, filter, |cmd| {
            cmd.env("NETNS_AGENT_BIN", agent).env("NETNS_AGENT_TEST_MODE", "tracepoint");
            for (_, test, _) in &lacking {
                cmd.args(["--skip", test]);
            }
        })
    });
    if !lacking.is_empty() {
        let names: Vec<String> = lacking
            .iter()
            .map(|(kind, test, option)| format!("{test} (no {kind}: {option} unset)"))
            .collect();
        tier.note = Some(format!("not run on this kernel, run in the VMs: {}", names.join(", ")));
    }
    tier
}

/// tests/runtimes.rs: Docker, Podman (netavark and CNI backends) and the CNI plugins, several
/// containers at once, on the host kernel in tracepoint mode; dockerd is started when it is
/// not running (and stopped after).
fn runtimes(binaries: &[PathBuf], agent: &Path, release: &str, filter: Option<&str>) -> Tier {
    step(&format!(
        "runtimes: docker, podman (netavark, CNI), CNI plugins on this kernel ({release}), tracepoint mode"
    ));
    timed(format!("runtimes  docker, podman, CNI / Linux {release}"), || {
        if binaries.is_empty() {
            return (0, 0, Some("no runtimes test binary".into()));
        }
        let _dockerd = match deploy::Dockerd::ensure() {
            Ok(dockerd) => dockerd,
            Err(err) => return (0, 0, Some(format!("dockerd: {err:#}"))),
        };
        run_binaries(binaries, filter, |cmd| {
            // Each check is printed, passing or not: the tier's output is its findings.
            cmd.arg("--nocapture").env("NETNS_AGENT_BIN", agent).env("NETNS_AGENT_TEST_MODE", "tracepoint");
        })
    })
}

/// tests/daemonset.rs: the DaemonSet's pod spec run with podman, on the image just built.
fn daemonset(binaries: &[PathBuf], filter: Option<&str>) -> Tier {
    step("daemonset: the manifest's pod spec as a podman run of the image");
    timed("daemonset  manifest as podman run, caps", || {
        if binaries.is_empty() {
            return (0, 0, Some("no daemonset test binary".into()));
        }
        run_binaries(binaries, filter, |cmd| {
            // Its findings (capabilities, memory, stop time) are printed by passing tests too.
            cmd.arg("--nocapture").env("NETNS_AGENT_ENGINE", "podman");
        })
    })
}

/// Runs test binaries one test at a time; sums their results.
fn run_binaries(
    binaries: &[PathBuf],
    filter: Option<&str>,
    env: impl Fn(&mut Command),
) -> (u32, u32, Option<String>) {
    let mut output = String::new();
    let mut error = None;
    for binary in binaries {
        let mut cmd = Command::new(binary);
        cmd.arg("--test-threads=1").args(filter).stderr(Stdio::inherit());
        env(&mut cmd);
        match cmd.output() {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                print!("{text}");
                if !out.status.success() && count_results(&text).1 == 0 {
                    error = Some(format!("{} exited with {}", binary.display(), out.status));
                }
                output.push_str(&text);
            }
            Err(err) => error = Some(format!("{}: {err}", binary.display())),
        }
    }
    let (passed, failed) = count_results(&output);
    (passed, failed, error)
}

/// One VM of the matrix: a kernel booted to run its test binaries in one attach mode.
struct VmJob<'a> {
    kernel: &'a Path,
    version: String,
    mode: &'a str,
    binaries: Vec<PathBuf>,
}

/// The VM matrix: one VM per (kernel, mode), `jobs` at a time. Under software emulation the
/// tests mostly wait for the emulated kernel (RCU grace periods, teardown batches), not for
/// a host CPU: measured with the moves tests, one VM alone took 99 s and two at once 131 s
/// on 2 cores, so VMs side by side cut the matrix's wall time with bounds that already allow
/// for a slow guest (NETNS_AGENT_TEST_SLOWDOWN).
fn vm_matrix(
    kernels: &[(&'static setup::VmKernel, PathBuf)],
    only_kernels: &[String],
    only_modes: &[String],
    binaries: &[PathBuf],
    agent: &Path,
    filter: Option<&str>,
    jobs: usize,
) -> Vec<Tier> {
    let wanted = |only: &[String], name: &str| only.is_empty() || only.iter().any(|o| o == name);
    // Longest first: a kernel running every test starts before one running a subset, so
    // the subsets fill the slots the long VMs leave.
    let mut matrix: Vec<VmJob> = kernels
        .iter()
        .filter(|(kernel, _)| wanted(only_kernels, kernel.name))
        .flat_map(|(kernel, image)| {
            let version = image
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("?")
                .trim_start_matches("vmlinuz-")
                .to_owned();
            kernel.cells.iter().filter(|cell| wanted(only_modes, cell.mode)).map(move |cell| VmJob {
                kernel: image,
                version: version.clone(),
                mode: cell.mode,
                binaries: binaries
                    .iter()
                    .filter(|b| cell.tests.is_none_or(|tests| tests.iter().any(|t| test_file_is(b, t))))
                    .cloned()
                    .collect(),
            })
        })
        .collect();
    matrix.sort_by_key(|job| std::cmp::Reverse(job.binaries.len()));
    step(&format!(
        "VMs: {} ({} at a time)",
        matrix.iter().map(|j| format!("{} / {}", j.version, j.mode)).collect::<Vec<_>>().join(", "),
        jobs.max(1)
    ));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Tier>>> = matrix.iter().map(|_| Default::default()).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1).min(matrix.len()) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(job) = matrix.get(index) else { break };
                    let tier = vm(job, agent, filter);
                    *results[index].lock().unwrap() = Some(tier);
                }
            });
        }
    });
    results.into_iter().filter_map(|r| r.into_inner().unwrap()).collect()
}

/// The last `n` lines of `text`.
fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether `binary` is the test binary of `tests/NAME.rs` (cargo names it `NAME-HASH`).
fn test_file_is(binary: &Path, name: &str) -> bool {
    binary
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(name)?.strip_prefix('-'))
        .is_some_and(|hash| hash.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// One virtual CPU per VM. With two, QEMU's software emulation lets a CPU run code another
/// CPU is live-patching (`text_poke_bp`: a static key or a probe being switched on or off),
/// and the guest dies with "Oops: int3". Measured without the agent, by switching the
/// `irq/softirq_exit` and `net/netif_receive_skb` trace events on and off 3,000 times while
/// `ping -f` runs: with two CPUs both Debian 6.12 kernels (PREEMPT_RT and not) oopsed within
/// seconds, with one the RT kernel ran all 3,000 (README, Tests). The agent switches
/// probes on at start and off at exit, and CI saw a PREEMPT_RT VM die so.
const VM_CPUS: &str = "1";

fn vm(job: &VmJob, agent: &Path, filter: Option<&str>) -> Tier {
    let VmJob { kernel, version, mode, binaries } = job;
    let dir = workspace_root().join("target/vm").join(format!("{version}-{mode}"));
    let start = Instant::now();
    let result = (|| -> Result<()> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut script = String::from("#!/bin/sh\n# Generated by cargo xtask test: runs inside the VM.\n");
        for binary in binaries {
            let _ = writeln!(
                script,
                "NETNS_AGENT_BIN={agent} NETNS_AGENT_TEST_MODE={mode} NETNS_AGENT_TEST_SLOWDOWN=10 {binary} --test-threads=1 {filter} >> {dir}/tests.log 2>&1; echo \"{binary} $?\" >> {dir}/tests.rc",
                agent = agent.display(),
                binary = binary.display(),
                filter = filter.unwrap_or(""),
                dir = dir.display(),
            );
        }
        let script_path = dir.join("run.sh");
        std::fs::write(&script_path, script)?;
        std::fs::set_permissions(&script_path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let vng = setup::vng().context("vng not found")?;
        let console = std::fs::File::create(dir.join("console.log"))?;
        // Software emulation (no KVM here): bounded so a hung guest cannot stall CI. The
        // longest cells took 39 minutes in a whole run, beside the other VMs and tiers.
        let status = Command::new("timeout")
            .args(["--signal=KILL", "3300"])
            .arg(vng)
            .arg("-r")
            .arg(kernel)
            // The guest's console at warning level: quiet while tests pass, and an oops, a
            // BUG or the panic that ends a VM early (virtme-ng boots with panic=-1) is kept.
            .args(["--disable-kvm", "-m", "2G", "--cpus", VM_CPUS])
            .args(["--verbose", "--append", "loglevel=4", "--rwdir"])
            .arg(&dir)
            .arg("--")
            .arg(&script_path)
            .stdout(console.try_clone()?)
            .stderr(console)
            .stdin(Stdio::null())
            .status()?;
        if status.code() == Some(137) {
            bail!("the VM timed out (see {}/console.log)", dir.display());
        }
        Ok(())
    })();
    let elapsed = start.elapsed();
    let log = std::fs::read_to_string(dir.join("tests.log")).unwrap_or_default();
    let rcs = std::fs::read_to_string(dir.join("tests.rc")).unwrap_or_default();
    // Printed whole, after the VM ends, so that the logs of VMs side by side do not interleave.
    println!("\n==> VM: Linux {version} / {mode} ({} s)\n{log}", elapsed.as_secs());
    let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    let console_tail = tail_lines(&console, 60);
    let (passed, failed) = count_results(&log);
    let crashed = rcs.lines().filter(|l| !l.ends_with(" 0")).count() as u32;
    let stopped = result.is_err() || rcs.lines().count() < binaries.len();
    if stopped || console.contains("Call Trace") || console.contains("BUG") {
        // The log dies with CI's clone: what the guest kernel said is printed here.
        println!("--> guest console, last lines:\n{console_tail}");
    }
    let error = match &result {
        Err(err) => Some(err.to_string()),
        Ok(()) if rcs.lines().count() < binaries.len() => {
            Some(format!("the VM stopped early (see {}/console.log)", dir.display()))
        }
        Ok(()) if crashed > failed => Some(format!("{crashed} test binaries failed without a test result")),
        Ok(()) => None,
    };
    Tier { name: format!("vm    Linux {version} / {mode}"), passed, failed, error, note: None, elapsed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_summed_over_binaries() {
        let text = "test a ... ok\ntest result: ok. 8 passed; 0 failed; 0 ignored\n\
                    test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured\n";
        assert_eq!(count_results(text), (9, 2));
        assert_eq!(count_results("no tests"), (0, 0));
    }

    #[test]
    fn a_kernel_subset_names_test_files() {
        let binary = Path::new("/t/target/debug/deps/routes-305d60bd9e1856d5");
        assert!(test_file_is(binary, "routes"));
        assert!(!test_file_is(binary, "route"));
        assert!(!test_file_is(Path::new("/t/routes-extra-305d60bd"), "routes"));
    }
}
