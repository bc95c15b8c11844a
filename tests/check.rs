//! `netns-agent check` against the kernel it runs on.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result, ensure};
use netns_agent_e2e::{Agent, agent_bin, mode, run};

/// The probes the agent registers, from a running agent in the test mode: every registered
/// probe appears in `netns_agent_probe_attached`, attached or not.
fn registered_probes() -> Result<BTreeSet<String>> {
    let agent = Agent::start()?;
    let m = agent.scrape()?;
    let probes: BTreeSet<String> =
        m.series("netns_agent_probe_attached").into_iter().map(|l| l["probe"].clone()).collect();
    ensure!(!probes.is_empty(), "no netns_agent_probe_attached series:\n{}", m.text);
    Ok(probes)
}

/// `check`'s per-probe sections: probe name -> (mode -> status line), from
/// `NAME: summary` headers followed by indented `MODE STATUS` lines.
fn sections(text: &str, probes: &BTreeSet<String>) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(' ') {
            current = line.split_once(": ").map(|(n, _)| n.to_owned()).filter(|n| probes.contains(n));
            if let Some(name) = &current {
                out.entry(name.clone()).or_default();
            }
            continue;
        }
        let (Some(name), Some((word, status))) = (&current, line.trim_start().split_once(' ')) else {
            continue;
        };
        if ["fentry", "kprobe", "tracepoint"].contains(&word) && !status.trim_start().starts_with("sees:") {
            out.entry(name.clone()).or_default().insert(word.to_owned(), status.trim().to_owned());
        }
    }
    out
}

#[test]
fn check_explains_every_mode_and_picks_one_that_works() -> Result<()> {
    let probes = registered_probes()?;
    let out = run(agent_bin().to_str().context("agent path")?, &["check"])?;
    let text = String::from_utf8(out.stdout)?;
    ensure!(text.contains("BTF           /sys/kernel/btf/vmlinux: present"), "{text}");
    // Every probe that should work in this tier's mode must, and check must say so: one
    // probe failing is a failure, not only all of them.
    let sections = sections(&text, &probes);
    for probe in &probes {
        let modes = sections.get(probe).with_context(|| format!("{probe} missing from check:\n{text}"))?;
        let status = modes.get(&mode()).with_context(|| format!("{probe}: no {} line:\n{text}", mode()))?;
        ensure!(status == "works", "{probe} in {} mode: {status}\n{text}", mode());
    }
    let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    if kprobes {
        ensure!(text.contains("kprobes       available"), "{text}");
    } else {
        // A tracepoint-only kernel (the CI host): say why kprobes cannot work.
        ensure!(text.contains("kprobes       unavailable") && text.contains("CONFIG_KPROBES"), "{text}");
        let picks = text.matches("run would use: tracepoint").count();
        ensure!(picks == probes.len(), "{picks} of {} probes would use tracepoint:\n{text}", probes.len());
    }
    Ok(())
}

#[test]
fn check_forced_mode_reports_that_mode() -> Result<()> {
    let probes = registered_probes()?;
    let out = run(agent_bin().to_str().context("agent path")?, &["check", "--attach", &mode()])?;
    let text = String::from_utf8(out.stdout)?;
    let forced = format!("run would use: {} (forced)", mode());
    // Each registered probe's section says so, not just one of them.
    ensure!(
        text.matches(&forced).count() == probes.len(),
        "{} of {} probes say {forced:?}:\n{text}",
        text.matches(&forced).count(),
        probes.len()
    );
    Ok(())
}

/// The running kernel's BTF with one member renamed, `netns_ipv4.fib_has_custom_rules` (the
/// `net_fib_has_custom_rules` field, which only the IPv4 route lookup probe declares, in
/// every mode): a layout hole such as another kernel version could have. Same length, so
/// the BTF stays valid.
fn btf_without_fib_has_custom_rules() -> Result<std::path::PathBuf> {
    let mut bytes = std::fs::read("/sys/kernel/btf/vmlinux")?;
    let needle = b"\0fib_has_custom_rules\0";
    let at: Vec<usize> =
        bytes.windows(needle.len()).enumerate().filter(|(_, w)| w == needle).map(|(i, _)| i).collect();
    ensure!(
        at.len() == 1,
        "the name fib_has_custom_rules appears {} times in this kernel's BTF strings, not once",
        at.len()
    );
    bytes[at[0] + needle.len() - 2] = b'X';
    let path = std::env::temp_dir().join(format!("netns-agent-test-{}-hole.btf", std::process::id()));
    std::fs::write(&path, bytes)?;
    Ok(path)
}

#[test]
fn a_field_missing_from_btf_detaches_only_the_probe_that_reads_it_and_says_why() -> Result<()> {
    const PROBE: &str = "route_lookup_ipv4";
    const FIELD: &str = "net_fib_has_custom_rules";
    let probes = registered_probes()?;
    ensure!(probes.contains(PROBE), "{PROBE} is not registered: {probes:?}");
    let btf = btf_without_fib_has_custom_rules()?;
    let btf = btf.to_str().context("temp path")?;

    // `check`: that probe's line for the mode names the field; every other probe works.
    let out = run(agent_bin().to_str().context("agent path")?, &["check", "--btf", btf])?;
    let text = String::from_utf8(out.stdout)?;
    let sections = sections(&text, &probes);
    for probe in &probes {
        let modes = sections.get(probe).with_context(|| format!("{probe} missing from check:\n{text}"))?;
        let status = modes.get(&mode()).with_context(|| format!("{probe}: no {} line:\n{text}", mode()))?;
        if probe == PROBE {
            ensure!(status.contains(FIELD) && status != "works", "{probe}: {status}\n{text}");
        } else {
            ensure!(status == "works", "{probe} in {} mode: {status}\n{text}", mode());
        }
    }

    // A run: that probe detached (0), the others attached, the log naming probe and field.
    let agent = Agent::start_with(&["--attach", &mode(), "--btf", btf])?;
    let m = agent.scrape()?;
    for probe in &probes {
        let attached = m.value("netns_agent_probe_attached", &[("probe", probe), ("mode", &mode())])?;
        let want = if probe == PROBE { 0.0 } else { 1.0 };
        ensure!(attached == want, "{probe}: netns_agent_probe_attached {attached}, want {want}:\n{}", m.text);
    }
    let log = agent.log_text();
    ensure!(
        log.lines().any(|l| l.contains(PROBE) && l.contains(FIELD)),
        "no log line names {PROBE} and {FIELD}:\n{log}"
    );
    let _ = std::fs::remove_file(btf);
    Ok(())
}
