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
