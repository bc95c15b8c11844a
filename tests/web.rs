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
