//! `netns-agent check` against the kernel it runs on.

use anyhow::{Result, ensure};
use netns_agent_e2e::{agent_bin, mode, run};

#[test]
fn check_explains_every_mode_and_picks_one_that_works() -> Result<()> {
    let out = run(agent_bin().to_str().unwrap(), &["check"])?;
    let text = String::from_utf8(out.stdout)?;
    for probe in ["netns_create", "netns_destroy", "device_move", "route_lookup_ipv4", "route_lookup_ipv6"] {
        ensure!(text.contains(&format!("{probe}: ")), "{probe} missing:\n{text}");
    }
    ensure!(text.contains("BTF           /sys/kernel/btf/vmlinux: present"), "{text}");
    // The mode this test tier forces must work here, and check must say so.
    let works = |l: &str| {
        let mut words = l.split_whitespace();
        words.next() == Some(mode().as_str()) && words.next() == Some("works")
    };
    ensure!(text.lines().any(works), "{text}");
    let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    if kprobes {
        ensure!(text.contains("kprobes       available"), "{text}");
    } else {
        // A tracepoint-only kernel (the CI host): say why kprobes cannot work.
        ensure!(text.contains("kprobes       unavailable") && text.contains("CONFIG_KPROBES"), "{text}");
        ensure!(text.contains("run would use: tracepoint"), "{text}");
    }
    Ok(())
}

#[test]
fn check_forced_mode_reports_that_mode() -> Result<()> {
    let out = run(agent_bin().to_str().unwrap(), &["check", "--attach", &mode()])?;
    let text = String::from_utf8(out.stdout)?;
    ensure!(text.contains(&format!("run would use: {} (forced)", mode())), "{text}");
    Ok(())
}
