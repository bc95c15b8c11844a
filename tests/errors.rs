//! Bad input and hostile environments: each gives one clear line on stderr and a non-zero
//! exit, before any probe touches the kernel.

use std::{net::TcpListener, process::Command};

use anyhow::{Result, ensure};
use netns_agent_e2e::{agent_bin, free_port};

/// Runs the agent expecting failure; returns its single stderr line.
fn fails(args: &[&str], setup: impl FnOnce(&mut Command)) -> Result<String> {
    let mut cmd = Command::new(agent_bin());
    cmd.args(args);
    setup(&mut cmd);
    let out = cmd.output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(!out.status.success(), "{args:?} succeeded; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    ensure!(lines.len() == 1, "{args:?}: expected one line, got {}:\n{stderr}", lines.len());
    ensure!(lines[0].starts_with("netns-agent: "), "{}", lines[0]);
    Ok(lines[0].to_owned())
}

fn listen_arg() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[test]
fn unknown_flag() -> Result<()> {
    let line = fails(&["run", "--frobnicate"], |_| {})?;
    ensure!(line.contains("--frobnicate") && line.contains("--help"), "{line}");
    Ok(())
}

#[test]
fn bad_attach_mode() -> Result<()> {
    let line = fails(&["run", "--attach", "magic"], |_| {})?;
    ensure!(line.contains("magic") && line.contains("tracepoint"), "{line}");
    Ok(())
}

#[test]
fn bad_listen_address() -> Result<()> {
    let line = fails(&["run", "--listen", "localhost"], |_| {})?;
    ensure!(line.contains("bad listen address") && line.contains("HOST:PORT"), "{line}");
    Ok(())
}

#[test]
fn port_in_use() -> Result<()> {
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let line = fails(&["run", "--listen", &addr], |_| {})?;
    ensure!(line.contains("address already in use") && line.contains("--listen"), "{line}");
    Ok(())
}

#[test]
fn bad_config_file() -> Result<()> {
    let path = std::env::temp_dir().join(format!("netns-agent-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "listen = \"127.0.0.1:1\"\nlimits = { kernel_namespacez = 5 }\n")?;
    let line = fails(&["run", "--config", path.to_str().unwrap()], |_| {})?;
    std::fs::remove_file(&path)?;
    ensure!(line.contains("line 2") && line.contains("kernel_namespacez"), "{line}");
    let line = fails(&["run", "--config", "/nonexistent/agent.toml"], |_| {})?;
    ensure!(line.contains("cannot read config file /nonexistent/agent.toml"), "{line}");
    Ok(())
}

#[test]
fn missing_btf() -> Result<()> {
    let line = fails(&["run", "--listen", &listen_arg(), "--btf", "/nonexistent/vmlinux"], |_| {})?;
    ensure!(line.contains("BTF missing") && line.contains("CONFIG_DEBUG_INFO_BTF"), "{line}");
    Ok(())
}

#[test]
fn not_root() -> Result<()> {
    // setpriv drops to nobody with no capabilities, as an unprivileged user would run it.
    let bin = agent_bin();
    let line =
        fails(&["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"], |cmd| {
            *cmd = Command::new("setpriv");
            cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
                .arg(&bin)
                .args(["run", "--listen", &listen_arg()]);
        })?;
    ensure!(line.contains("not permitted") && line.contains("root"), "{line}");
    Ok(())
}

#[test]
fn check_refuses_without_privileges_too() -> Result<()> {
    let bin = agent_bin();
    let line = fails(&[], |cmd| {
        *cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
            .arg(&bin)
            .arg("check");
    })?;
    ensure!(line.contains("not permitted"), "{line}");
    Ok(())
}

/// SIGHUP reloads the config as Prometheus does: what can change at once does (and works),
/// the rest is named as taking effect at the next start, and a bad config is refused while the
/// agent runs on.
#[test]
fn sighup_reloads_the_config_and_refuses_a_bad_one() -> Result<()> {
    use std::time::Duration;

    use netns_agent_e2e::{Agent, NamedNetns, mode, wait_for};
    let path = std::env::temp_dir().join(format!("netns-agent-reload-{}.toml", std::process::id()));
    std::fs::write(&path, "series_grace_seconds = 300\n")?;
    let agent = Agent::start_with(&["--attach", &mode(), "--config", path.to_str().unwrap()])?;
    let hup = |agent: &Agent| -> Result<()> {
        let pid = agent.pid();
        ensure!(pid != 0, "agent not running");
        let status = Command::new("kill").args(["-HUP", &pid.to_string()]).status()?;
        ensure!(status.success(), "kill -HUP {pid}");
        Ok(())
    };
    let reloaded = |agent: &Agent| -> Result<f64> {
        agent.scrape()?.value("netns_agent_config_last_reload_successful", &[])
    };
    let bound = Duration::from_secs(10) * netns_agent_e2e::slowdown();

    std::fs::write(&path, "series_grace_seconds = 1\n[limits]\ntracked_namespaces = 100\n")?;
    hup(&agent)?;
    wait_for("the reload's log lines", bound, || {
        let log = agent.log_text();
        Ok((log.contains("SIGHUP: config reloaded: series_grace_seconds 300 -> 1")
            && log.contains("limits.tracked_namespaces 16384 -> 100 takes effect at the next start"))
        .then_some(()))
    })?;
    ensure!(reloaded(&agent)? == 1.0, "a reload that loaded is successful");
    // The new grace is in force: a torn-down namespace's series leave within about a second
    // of its teardown, where the old grace kept them for 5 minutes.
    let ns = NamedNetns::add("hup")?;
    let inode = ns.inode()?.to_string();
    let tracked = |agent: &Agent| -> Result<bool> {
        Ok(agent.scrape()?.has("netns_created_timestamp_seconds", &[("netns", &inode)])
            || agent.scrape()?.series("netns_info").iter().any(|l| l["netns"] == inode))
    };
    wait_for("the namespace tracked", bound, || Ok(tracked(&agent)?.then_some(())))?;
    ns.delete()?;
    wait_for("its series gone after the reloaded grace", bound * 6, || {
        Ok((!agent.scrape()?.series("netns_info").iter().any(|l| l["netns"] == inode)).then_some(()))
    })?;

    // A bad config: refused, in one line, and the agent still serves.
    std::fs::write(&path, "series_grace_seconds = 999999\n")?;
    hup(&agent)?;
    wait_for("the refusal", bound, || Ok(agent.log_text().contains("config reload refused").then_some(())))?;
    let line =
        agent.log_text().lines().find(|l| l.contains("config reload refused")).unwrap_or("").to_owned();
    ensure!(line.contains("series_grace_seconds"), "the refusal names the key: {line}");
    ensure!(reloaded(&agent)? == 0.0, "a refused reload shows as 0");
    // And a good one again.
    std::fs::write(&path, "series_grace_seconds = 1\n")?;
    hup(&agent)?;
    wait_for("a successful reload again", bound, || Ok((reloaded(&agent)? == 1.0).then_some(())))?;
    let _ = std::fs::remove_file(&path);
    let (status, log) = agent.stop()?;
    ensure!(status.success(), "the agent survived its SIGHUPs and stopped cleanly: {status}\n{log}");
    Ok(())
}
