//! The fuzz tier: every `cargo fuzz` target in `fuzz/` (libFuzzer) for a bounded time,
//! from the committed seed corpus plus what earlier runs on this machine found. A crash,
//! leak, timeout or memory blow-up fails the target; its input is left in
//! `fuzz/artifacts/TARGET/` and named in the summary.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use crate::{
    tier::Tier,
    util::{step, workspace_root},
};

/// Limits of one target's run, as libFuzzer flags.
const RSS_LIMIT_MB: u32 = 2048;
/// Seconds one input may take before it counts as a hang.
const INPUT_TIMEOUT_S: u32 = 10;

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// `cargo +nightly fuzz ...` in `fuzz/` (cargo fuzz needs nightly for the sanitizer flags).
fn cargo_fuzz(args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz"]).args(args).current_dir(fuzz_dir());
    // Leave nothing of the outer cargo's environment to the nested build: `cargo run` sets
    // CARGO_MANIFEST_DIR, CARGO_PKG_NAME and the like for xtask, and build scripts that
    // watch them (ring's does) would otherwise rebuild whenever the tier alternates with a
    // `cargo fuzz` run from a shell.
    for (var, _) in std::env::vars_os() {
        let name = var.to_string_lossy();
        if (name.starts_with("CARGO") && name != "CARGO_HOME") || name.ends_with("RUSTFLAGS") {
            cmd.env_remove(&var);
        }
    }
    cmd
}

/// Builds every target, then runs each for `seconds`; one summary row per target.
/// Unoptimised builds: the targets and the agent's whole dependency tree (tokio, rustls,
/// aya) are built with the sanitizer's instrumentation, and optimising them is most of that
/// build. Measured from clean on 2 cores: 357 s (optimised) against 132 s. The tier runs each
/// target for seconds, where the build is the cost, not the executions per second; longer
/// campaigns by hand (`cargo +nightly fuzz run TARGET`) build optimised.
const BUILD_PROFILE: &str = "--dev";

pub fn tiers(seconds: u32) -> Vec<Tier> {
    step("fuzz: building the targets (cargo +nightly fuzz build --dev, debug assertions on)");
    let start = Instant::now();
    let built = cargo_fuzz(&["build", BUILD_PROFILE, "--debug-assertions"]).status();
    let targets = cargo_fuzz(&["list"])
        .stderr(Stdio::inherit())
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect::<Vec<_>>())
        .unwrap_or_default();
    let build_error = match built {
        Ok(status) if status.success() && !targets.is_empty() => None,
        Ok(status) if status.success() => Some("cargo fuzz list named no target".to_owned()),
        Ok(status) => Some(format!("cargo fuzz build: {status}")),
        Err(err) => Some(format!("cargo fuzz: {err}")),
    };
    if let Some(error) = build_error {
        return vec![Tier {
            name: "fuzz  build".into(),
            passed: 0,
            failed: 0,
            error: Some(error),
            note: None,
            elapsed: start.elapsed(),
        }];
    }
    let build_time = start.elapsed();
    let mut tiers: Vec<Tier> = targets.iter().map(|target| run_target(target, seconds)).collect();
    // The build counts towards the tier's time: charge it to the first row.
    if let Some(first) = tiers.first_mut() {
        first.elapsed += build_time;
    }
    tiers
}

fn run_target(target: &str, seconds: u32) -> Tier {
    step(&format!("fuzz: {target} for {seconds} s"));
    let start = Instant::now();
    let dir = fuzz_dir();
    // New inputs go to the first corpus directory, which is not committed; the seeds are.
    let work = dir.join("corpus-work").join(target);
    let seeds = dir.join("corpus").join(target);
    let log_path = workspace_root().join("target/fuzz").join(format!("{target}.log"));
    let result = (|| -> std::io::Result<(bool, String)> {
        std::fs::create_dir_all(&work)?;
        std::fs::create_dir_all(&seeds)?;
        std::fs::create_dir_all(log_path.parent().unwrap_or(Path::new(".")))?;
        let out = cargo_fuzz(&["run", BUILD_PROFILE, "--debug-assertions", target])
            .arg(&work)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
            .arg("-print_final_stats=1")
            .stdin(Stdio::null())
            .output()?;
        let mut log = String::from_utf8_lossy(&out.stdout).into_owned();
        log.push_str(&String::from_utf8_lossy(&out.stderr));
        std::fs::write(&log_path, &log)?;
        Ok((out.status.success(), log))
    })();
    let (ok, log) = match result {
        Ok(done) => done,
        Err(err) => {
            return Tier {
                name: format!("fuzz  {target}"),
                passed: 0,
                failed: 0,
                error: Some(format!("cannot run: {err}")),
                note: None,
                elapsed: start.elapsed(),
            };
        }
    };
    let runs = stat(&log, "stat::number_of_executed_units:");
    let name = match runs {
        Some(runs) => format!("fuzz  {target}  {seconds} s, {runs} runs"),
        None => format!("fuzz  {target}  {seconds} s"),
    };
    let note = (!ok).then(|| {
        let artifact = log
            .lines()
            .find_map(|l| l.split_once("Test unit written to ").map(|(_, path)| path.trim().to_owned()))
            .unwrap_or_else(|| "no input saved".into());
        let what = cause(&log).map(|c| format!("{c}; ")).unwrap_or_default();
        format!("{what}input {artifact} (log {})", log_path.display())
    });
    Tier { name, passed: u32::from(ok), failed: u32::from(!ok), error: None, note, elapsed: start.elapsed() }
}

/// What went wrong: a panic's location and message, or the sanitizer's or libFuzzer's
/// own report line (`ERROR: libFuzzer: timeout`, out-of-memory, leaks).
fn cause(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    if let Some(i) = lines.iter().position(|l| l.contains("panicked at")) {
        let at = lines[i].split_once("panicked at ").map_or(lines[i], |(_, at)| at).trim_end_matches(':');
        let message = lines.get(i + 1).map_or("", |m| m.trim());
        return Some(format!("panic at {at}: {message}"));
    }
    lines.iter().find(|l| l.starts_with("==") && l.contains("ERROR")).map(|l| l.trim().to_owned())
}

/// A number from libFuzzer's final stats (`-print_final_stats=1`).
fn stat(log: &str, key: &str) -> Option<u64> {
    log.lines().find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_stats_are_read() {
        let log =
            "Done 1234 runs in 21 second(s)\nstat::number_of_executed_units: 1234\nstat::peak_rss_mb: 80\n";
        assert_eq!(stat(log, "stat::number_of_executed_units:"), Some(1234));
        assert_eq!(stat("", "stat::number_of_executed_units:"), None);
    }

    #[test]
    fn causes_name_the_panic_or_the_report() {
        let log = "INFO: Seed: 1\nthread '<unnamed>' panicked at fuzz_targets/cgroup.rs:31:13:\n\
                   an id that is not in the text\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            cause(log).as_deref(),
            Some("panic at fuzz_targets/cgroup.rs:31:13: an id that is not in the text")
        );
        let log = "==4242== ERROR: libFuzzer: timeout after 10 seconds\n";
        assert_eq!(cause(log).as_deref(), Some("==4242== ERROR: libFuzzer: timeout after 10 seconds"));
        assert_eq!(cause("Done 5 runs in 20 second(s)\n"), None);
    }
}
