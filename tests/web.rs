//! The secured endpoint (`--web.config.file`, the Prometheus exporter toolkit's format): TLS
//! with a test CA, basic authentication, client certificates, `--web.disable-api`, and a
//! malformed web config refused at start. Certificates come from `openssl`; requests are
//! made with `curl`, as an operator would check a deployment.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use netns_agent_e2e::{agent_bin, free_port, mode, run, wait_for};

const USER: &str = "prometheus";
const PASSWORD: &str = "s3cret pass";

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in a fresh directory.
fn certificates() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("netns-agent-web-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let d = dir.to_str().context("path")?;
    let openssl =
        |args: &str| run("openssl", &args.replace("DIR", d).split(' ').collect::<Vec<_>>()).map(|_| ());
    openssl(
        "req -x509 -newkey rsa:2048 -nodes -keyout DIR/ca.key -out DIR/ca.crt -days 2 -subj /CN=netns-agent-test-ca",
    )?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n")?;
    for name in ["server", "client"] {
        openssl(&format!(
            "req -newkey rsa:2048 -nodes -keyout DIR/{name}.key -out DIR/{name}.csr -subj /CN={name}"
        ))?;
        openssl(&format!(
            "x509 -req -in DIR/{name}.csr -CA DIR/ca.crt -CAkey DIR/ca.key -CAcreateserial -out DIR/{name}.crt -days 2 -extfile DIR/san.ext"
        ))?;
    }
    Ok(dir)
}

/// The agent with a web config; killed on drop.
struct Secured {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Secured {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, web_config: &str, extra: &[&str]) -> Result<Secured> {
    let config = dir.join(format!("web-{}.yml", free_port()));
    std::fs::write(&config, web_config)?;
    let port = free_port();
    let log = config.with_extension("log");
    let child = Command::new(agent_bin())
        .args(["run", "--listen", &format!("127.0.0.1:{port}"), "--attach", &mode()])
        .arg("--web.config.file")
        .arg(&config)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    Ok(Secured { child, port, log })
}

/// `curl`'s HTTP status for a request (000 when no HTTP answer came: refused handshake).
fn status(args: &[&str]) -> Result<String> {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn users_yaml() -> Result<String> {
    let hash = bcrypt::hash(PASSWORD, 4)?;
    Ok(format!("basic_auth_users:\n  {USER}: {hash}\n"))
}

#[test]
fn tls_and_basic_auth_guard_every_path() -> Result<()> {
    let dir = certificates()?;
    let agent = start(
        &dir,
        &format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{}", users_yaml()?),
        &[],
    )?;
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", agent.port);
    let ca = dir.join("ca.crt");
    let ca = ca.to_str().context("path")?;
    let good = format!("{USER}:{PASSWORD}");
    wait_for("the agent to serve over TLS", Duration::from_secs(30), || {
        Ok((status(&["--cacert", ca, "-u", &good, &url("/metrics")])? == "200").then_some(()))
    })
    .with_context(|| std::fs::read_to_string(&agent.log).unwrap_or_default())?;
    let body = Command::new("curl").args(["-sf", "--cacert", ca, "-u", &good, &url("/metrics")]).output()?;
    ensure!(String::from_utf8_lossy(&body.stdout).contains("netns_alive "), "no exposition over TLS");
    for path in ["/metrics", "/api/v1/namespaces", "/api/v1/events"] {
        ensure!(
            status(&["--cacert", ca, "-u", &good, &url(path)])? == "200",
            "{path} with the right password"
        );
        ensure!(
            status(&["--cacert", ca, "-u", &format!("{USER}:wrong"), &url(path)])? == "401",
            "{path}: wrong password"
        );
        ensure!(
            status(&["--cacert", ca, "-u", &format!("nobody:{PASSWORD}"), &url(path)])? == "401",
            "{path}: unknown user"
        );
        ensure!(status(&["--cacert", ca, &url(path)])? == "401", "{path}: no password");
    }
    // Plain HTTP to a TLS port gets no HTTP answer at all.
    let plain = status(&["-u", &good, &format!("http://127.0.0.1:{}/metrics", agent.port)])?;
    ensure!(plain != "200", "plain HTTP answered {plain}");
    // A client that does not trust the CA refuses the server.
    ensure!(status(&["-u", &good, &url("/metrics")])? == "000", "an untrusted certificate was accepted");
    Ok(())
}

#[test]
fn client_certificates_can_be_required() -> Result<()> {
    let dir = certificates()?;
    let agent = start(
        &dir,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
        &[],
    )?;
    let url = format!("https://127.0.0.1:{}/metrics", agent.port);
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let with_cert = [
        "--cacert".to_owned(),
        path("ca.crt"),
        "--cert".into(),
        path("client.crt"),
        "--key".into(),
        path("client.key"),
        url.clone(),
    ];
    let with_cert: Vec<&str> = with_cert.iter().map(String::as_str).collect();
    wait_for("the agent to serve with client certificates", Duration::from_secs(30), || {
        Ok((status(&with_cert)? == "200").then_some(()))
    })
    .with_context(|| std::fs::read_to_string(&agent.log).unwrap_or_default())?;
    ensure!(status(&["--cacert", &path("ca.crt"), &url])? != "200", "served without a client certificate");
    Ok(())
}

#[test]
fn the_api_can_be_disabled() -> Result<()> {
    let dir = certificates()?;
    let agent = start(&dir, "", &["--web.disable-api"])?;
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", agent.port);
    wait_for("the agent to serve", Duration::from_secs(30), || {
        Ok((status(&[&url("/metrics")])? == "200").then_some(()))
    })
    .with_context(|| std::fs::read_to_string(&agent.log).unwrap_or_default())?;
    ensure!(status(&[&url("/api/v1/namespaces")])? == "404", "the API is still served");
    ensure!(status(&[&url("/api/v1/events")])? == "404", "the API is still served");
    Ok(())
}

#[test]
fn a_malformed_web_config_is_a_one_line_start_error() -> Result<()> {
    let dir = certificates()?;
    for (text, want) in [
        ("tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n", "missing.crt"),
        ("basic_auth_users:\n  alice: not-a-hash\n", "not a bcrypt hash"),
        ("tls_server_confg: {}\n", "unknown key"),
    ] {
        let config = dir.join("bad.yml");
        std::fs::write(&config, text)?;
        let out = Command::new(agent_bin())
            .args(["run", "--listen", &format!("127.0.0.1:{}", free_port()), "--web.config.file"])
            .arg(&config)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{text:?} started");
        ensure!(stderr.lines().count() == 1, "{text:?}: not one line:\n{stderr}");
        ensure!(stderr.contains("web config") && stderr.contains(want), "{text:?}: {stderr}");
    }
    Ok(())
}

/// One raw HTTP/1.1 request; the status line's code, or the error.
fn raw_status(port: u16, request: &[u8]) -> Result<u16> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10) * netns_agent_e2e::slowdown()))?;
    stream.write_all(request)?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split(' ').nth(1).and_then(|code| code.parse().ok()).with_context(|| format!("status line {line:?}"))
}

/// Hostile and careless clients: oversized request lines and headers, bad query parameters,
/// unknown paths, a client that trickles its headers, and 64 clients at once. Every answer
/// is the right status, and nothing delays the scrapes of others.
#[test]
fn abusive_clients_get_clear_statuses_and_do_not_delay_scrapes() -> Result<()> {
    use std::io::Write as _;
    let agent = netns_agent_e2e::Agent::start()?;
    let port = agent.port;
    let request = |target: &str, headers: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n").into_bytes()
    };
    ensure!(raw_status(port, &request("/metrics", ""))? == 200, "a plain scrape");
    let long_target = format!("/metrics?{}", "a".repeat(70_000));
    ensure!(raw_status(port, &request(&long_target, ""))? == 414, "an oversized request line is 414");
    let many: String = (0..600).map(|i| format!("X-Filler-{i}: {}\r\n", "b".repeat(1000))).collect();
    ensure!(raw_status(port, &request("/metrics", &many))? == 431, "oversized headers are 431");
    ensure!(raw_status(port, &request("/api/v1/namespaces?pid=abc", ""))? == 400, "a bad query is 400");
    let (code, body) = netns_agent_e2e::http_get_status(port, "/api/v1/events?limit=abc")?;
    ensure!(code == 400 && body.contains("limit"), "the 400 names the parameter: {code} {body:?}");
    ensure!(raw_status(port, &request("/no/such/path", ""))? == 404, "an unknown path is 404");

    // A client that sends a byte of its headers now and then holds its own connection only.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port))?;
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")?;
    let trickle = std::thread::spawn(move || {
        for _ in 0..20 {
            if slow.write_all(b"a").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let started = std::time::Instant::now();
    ensure!(raw_status(port, &request("/metrics", ""))? == 200, "a scrape beside a slow client");
    let beside = started.elapsed();
    ensure!(beside < Duration::from_secs(2) * netns_agent_e2e::slowdown(), "a scrape waited {beside:?}");

    // 64 scrapers and API clients at once for a few seconds: no error; latencies reported.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let workers: Vec<_> = (0..64)
        .map(|i| {
            let path = if i % 2 == 0 { "/metrics" } else { "/api/v1/namespaces" };
            let req = request(path, "");
            std::thread::spawn(move || -> Result<Vec<Duration>> {
                let mut latencies = Vec::new();
                while std::time::Instant::now() < until {
                    let t = std::time::Instant::now();
                    let code = raw_status(port, &req)?;
                    ensure!(code == 200, "{path}: {code}");
                    latencies.push(t.elapsed());
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??);
    }
    let _ = trickle.join();
    all.sort();
    let p = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    println!(
        "64 clients for 5 s: {} requests, p50 {:?}, p99 {:?}, max {:?}",
        all.len(),
        p(0.5),
        p(0.99),
        p(1.0)
    );
    ensure!(all.len() >= 64, "only {} requests answered", all.len());
    Ok(())
}

/// Connections to `port` the process `pid` has accepted and holds open: its socket fds
/// whose entry in /proc/net/tcp is an established connection on that local port.
fn accepted(pid: u32, port: u16) -> Result<usize> {
    let mut inodes = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = std::fs::read_link(entry?.path()) else { continue };
        if let Some(inode) =
            target.to_str().and_then(|t| t.strip_prefix("socket:[")).and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))?;
    let local = format!(":{port:04X}");
    Ok(table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 9 && f[1].ends_with(&local) && f[3] == "01" && inodes.contains(f[9]))
        .count())
}

/// Sends `GET path` with `Connection: close` on `stream` and reads the answer's status, or
/// `None` if nothing came within `wait`.
fn ask(stream: &mut std::net::TcpStream, path: &str, wait: Duration) -> Result<Option<u16>> {
    use std::io::Write as _;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    answer(stream, wait)
}

fn answer(stream: &mut std::net::TcpStream, wait: Duration) -> Result<Option<u16>> {
    use std::io::Read as _;
    stream.set_read_timeout(Some(wait))?;
    let mut head = [0u8; 64];
    match stream.read(&mut head) {
        Ok(0) => anyhow::bail!("closed without an answer"),
        Ok(n) => {
            let line = String::from_utf8_lossy(&head[..n]);
            Ok(Some(
                line.split(' ').nth(1).and_then(|c| c.parse().ok()).with_context(|| format!("{line:?}"))?,
            ))
        }
        Err(err) if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            Ok(None)
        }
        Err(err) => Err(err.into()),
    }
}

/// The endpoint serves at most `limits.http_connections` connections at once: more wait in
/// the listen backlog, unanswered and costing the agent nothing, until one closes; idle
/// connections are closed after the first-request timeout, so a scrape queued behind a full
/// set of them is answered then.
#[test]
fn connections_past_the_limit_wait_and_idle_ones_give_their_slot_back() -> Result<()> {
    const LIMIT: usize = 4;
    let agent = netns_agent_e2e::Agent::start_with_config(&format!("limits.http_connections = {LIMIT}\n"))?;
    let (pid, port) = (agent.pid(), agent.port);
    let connect = || std::net::TcpStream::connect(("127.0.0.1", port));
    wait_for(
        "no connection held",
        Duration::from_secs(10),
        || Ok((accepted(pid, port)? == 0).then_some(())),
    )?;

    // LIMIT + 6 idle clients: every connect completes (the backlog), LIMIT are accepted.
    let held: Vec<std::net::TcpStream> = (0..LIMIT).map(|_| connect()).collect::<std::io::Result<_>>()?;
    wait_for("the first clients accepted", Duration::from_secs(5), || {
        Ok((accepted(pid, port)? == LIMIT).then_some(()))
    })?;
    let mut waiting: Vec<std::net::TcpStream> = (0..6).map(|_| connect()).collect::<std::io::Result<_>>()?;
    // Those past the limit ask and get nothing while the first ones are held.
    for stream in &mut waiting {
        use std::io::Write as _;
        stream.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    }
    ensure!(
        answer(&mut waiting[0], Duration::from_secs(1))?.is_none(),
        "a connection past the limit was served"
    );
    let open = accepted(pid, port)?;
    ensure!(open == LIMIT, "{open} connections accepted, limit {LIMIT}");

    // The first ones close: every waiting one is answered, and a scrape goes through.
    drop(held);
    for (i, stream) in waiting.iter_mut().enumerate() {
        let code = answer(stream, Duration::from_secs(5) * netns_agent_e2e::slowdown())?;
        ensure!(code == Some(200), "waiting client {i}: {code:?}");
    }
    drop(waiting);
    ensure!(netns_agent_e2e::http_get(port, "/metrics")?.contains("netns_alive "), "a scrape after");

    // A full set of idle clients that never ask: a scrape queued behind them is answered when
    // the first-request timeout (10 s) closes them.
    let idle: Vec<std::net::TcpStream> = (0..LIMIT).map(|_| connect()).collect::<std::io::Result<_>>()?;
    wait_for("the idle clients accepted", Duration::from_secs(5), || {
        Ok((accepted(pid, port)? == LIMIT).then_some(()))
    })?;
    let started = std::time::Instant::now();
    let mut scrape = connect()?;
    let code = ask(&mut scrape, "/metrics", Duration::from_secs(20) * netns_agent_e2e::slowdown())?;
    let waited = started.elapsed();
    ensure!(code == Some(200), "the queued scrape: {code:?} after {waited:?}");
    ensure!(accepted(pid, port)? <= LIMIT, "over the limit");
    println!("a scrape behind {LIMIT} idle connections answered after {waited:?}");
    drop(idle);
    Ok(())
}
