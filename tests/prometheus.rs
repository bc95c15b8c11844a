//! Prometheus and Grafana for real: the dashboards and rules against a live Prometheus
//! (Debian's `prometheus` package) scraping the agent every second, and the deployment
//! files checked with the tools that can check them here. Runs on the host only: one real
//! Prometheus is enough, and the VM tier is about kernels.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use netns_agent_e2e::{
    Agent, HeldNetns, Hold, NamedNetns, RouterTopology, free_port, promtool_check, run, send_udp, unique,
    unique_comm, wait_for,
};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn dashboards() -> Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo().join("dashboards"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let value = serde_json::from_str(&std::fs::read_to_string(&path)?)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            out.push((path.file_name().unwrap().to_string_lossy().into_owned(), value));
        }
    }
    ensure!(out.len() >= 3, "expected the overview, namespace and health dashboards");
    Ok(out)
}

/// Every (dashboard, panel title, expression) of every dashboard.
fn panel_queries() -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for (file, dash) in dashboards()? {
        for panel in dash["panels"].as_array().context("panels")? {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().context("a target without expr")?;
                out.push((file.clone(), panel["title"].as_str().unwrap_or("").to_owned(), expr.to_owned()));
            }
        }
    }
    Ok(out)
}

#[test]
fn dashboards_are_valid_grafana_dashboards() -> Result<()> {
    for (file, dash) in dashboards()? {
        ensure!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "{file}: schemaVersion");
        ensure!(dash["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40), "{file}: uid");
        ensure!(dash["title"].as_str().is_some_and(|t| !t.is_empty()), "{file}: title");
        let vars = dash["templating"]["list"].as_array().context("templating")?;
        let names: Vec<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
        ensure!(names.contains(&"datasource") && names.contains(&"instance"), "{file}: variables {names:?}");
        let datasource = vars.iter().find(|v| v["name"] == "datasource").unwrap();
        ensure!(datasource["type"] == "datasource" && datasource["query"] == "prometheus", "{file}");
        let mut ids = BTreeSet::new();
        for panel in dash["panels"].as_array().context("panels")? {
            let id = panel["id"].as_u64().context("panel id")?;
            ensure!(ids.insert(id), "{file}: duplicate panel id {id}");
            ensure!(
                panel["gridPos"]["w"].as_u64().is_some_and(|w| w > 0 && w <= 24),
                "{file}: gridPos of {id}"
            );
            if panel["type"] == "row" {
                continue;
            }
            let uses_variable = |ds: &Value| ds["uid"] == "${datasource}" && ds["type"] == "prometheus";
            ensure!(uses_variable(&panel["datasource"]), "{file}: panel {id} data source is not $datasource");
            for target in panel["targets"].as_array().context("targets")? {
                ensure!(uses_variable(&target["datasource"]), "{file}: a target of panel {id}");
            }
        }
        for var in vars.iter().filter(|v| v["type"] == "query") {
            ensure!(var["datasource"]["uid"] == "${datasource}", "{file}: variable {}", var["name"]);
        }
    }
    Ok(())
}

#[test]
fn rules_pass_promtool_and_their_unit_tests() -> Result<()> {
    let dir = repo().join("deploy/prometheus");
    run("promtool", &["check", "rules", dir.join("rules.yml").to_str().unwrap()])?;
    let out =
        Command::new("promtool").args(["test", "rules", "rules_test.yml"]).current_dir(&dir).output()?;
    ensure!(out.status.success(), "promtool test rules: {}", String::from_utf8_lossy(&out.stdout));
    run("promtool", &["check", "config", dir.join("prometheus.yml").to_str().unwrap()])?;
    // Every alert has a unit test.
    let rules = std::fs::read_to_string(dir.join("rules.yml"))?;
    let tests = std::fs::read_to_string(dir.join("rules_test.yml"))?;
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        ensure!(tests.contains(&format!("alertname: {alert}")), "no promtool test for {alert}");
    }
    // Every alert links to its README section, and the section exists.
    let readme = std::fs::read_to_string(repo().join("README.md"))?;
    let docs = yaml_docs(&dir.join("rules.yml"))?;
    for group in docs[0]["groups"].as_vec().context("groups")? {
        for rule in group["rules"].as_vec().context("rules")? {
            let Some(alert) = rule["alert"].as_str() else { continue };
            let url = rule["annotations"]["runbook_url"].as_str().unwrap_or("");
            ensure!(
                url.ends_with(&format!("README.md#{}", alert.to_lowercase())),
                "{alert}: runbook_url {url:?}"
            );
            ensure!(readme.contains(&format!("\n#### {alert}\n")), "{alert}: no README section");
        }
    }
    Ok(())
}

fn yaml_docs(path: &Path) -> Result<Vec<yaml_rust2::Yaml>> {
    yaml_rust2::YamlLoader::load_from_str(&std::fs::read_to_string(path)?)
        .with_context(|| format!("{} is not YAML", path.display()))
}

#[test]
fn deployment_files_reference_the_right_port_paths_and_capabilities() -> Result<()> {
    let docs = yaml_docs(&repo().join("deploy/kubernetes/netns-agent.yaml"))?;
    let kind =
        |k: &str| docs.iter().find(|d| d["kind"].as_str() == Some(k)).with_context(|| format!("no {k}"));
    let ds = kind("DaemonSet")?;
    let pod = &ds["spec"]["template"]["spec"];
    ensure!(pod["hostPID"].as_bool() == Some(true), "hostPID");
    let container = &pod["containers"][0];
    ensure!(container["ports"][0]["containerPort"].as_i64() == Some(19110), "container port");
    let args: Vec<&str> =
        container["args"].as_vec().context("args")?.iter().filter_map(|a| a.as_str()).collect();
    ensure!(args.windows(2).any(|w| w == ["--listen", "0.0.0.0:19110"]), "{args:?}");
    let caps: Vec<&str> = container["securityContext"]["capabilities"]["add"]
        .as_vec()
        .context("capabilities")?
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    for cap in ["BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"] {
        ensure!(caps.contains(&cap), "missing capability {cap}: {caps:?}");
    }
    ensure!(container["securityContext"]["privileged"].as_bool() == Some(false), "not privileged");
    let host_paths: Vec<&str> = pod["volumes"]
        .as_vec()
        .context("volumes")?
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    for path in ["/sys/kernel/tracing", "/var/lib/cni/results"] {
        ensure!(host_paths.contains(&path), "hostPath {path} missing: {host_paths:?}");
    }
    let svc = kind("Service")?;
    ensure!(svc["spec"]["ports"][0]["port"].as_i64() == Some(19110), "service port");
    ensure!(svc["spec"]["ports"][0]["targetPort"].as_str() == Some("metrics"), "service target port");
    let sm = kind("ServiceMonitor")?;
    ensure!(sm["spec"]["endpoints"][0]["port"].as_str() == Some("metrics"), "ServiceMonitor port");
    ensure!(sm["spec"]["endpoints"][0]["path"].as_str() == Some("/metrics"), "ServiceMonitor path");
    // The systemd unit, with the binary built here in place of the installed one.
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/netns-agent.service"))?;
    ensure!(unit.contains("--listen 0.0.0.0:19110"), "systemd unit port");
    let dir = std::env::temp_dir().join(format!("netns-agent-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join("netns-agent.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/netns-agent", netns_agent_e2e::agent_bin().to_str().unwrap()),
    )?;
    let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().context("systemd-analyze")?;
    let complaints = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success() && complaints.trim().is_empty(), "systemd-analyze verify: {complaints}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Debian's Prometheus on loopback, scraping the agent every second; stopped on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(agent_port: u16) -> Result<Self> {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("netns-agent-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data"))?;
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: netns-agent\n    static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n",
                repo().join("deploy/prometheus/rules.yml").display()
            ),
        )?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log"))?)
            .spawn()
            .context("starting prometheus (Debian package prometheus)")?;
        let prometheus = Self { child, port, dir };
        wait_for("Prometheus to be ready", Duration::from_secs(60), || {
            Ok(netns_agent_e2e::http_get(port, "/-/ready").ok().map(|_| ()))
        })?;
        Ok(prometheus)
    }

    fn api(&self, path: &str) -> Result<Value> {
        let body = netns_agent_e2e::http_get(self.port, path)?;
        let value: Value = serde_json::from_str(&body)?;
        if value["status"] != "success" {
            bail!("{path}: {value}");
        }
        Ok(value["data"].clone())
    }

    fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let data = self.api(&format!("/api/v1/query?query={}", urlencode(expr)))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A dashboard expression with Grafana's variables replaced as Grafana would (`pod` at
/// its All value unless given).
fn concrete(expr: &str, netns: &str) -> String {
    concrete_with(expr, netns, ".*")
}

fn concrete_with(expr: &str, netns: &str, pod: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$instance", ".*")
        .replace("$netns", netns)
        .replace("$pod", pod)
}

/// A `label_values(SELECTOR, LABEL)` variable query as PromQL returning one series per value.
fn label_values_query(query: &str) -> Result<(String, String)> {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .with_context(|| format!("not a label_values query: {query}"))?;
    let (selector, label) = inner.rsplit_once(',').context("label_values without a label")?;
    let label = label.trim().to_owned();
    Ok((format!("count by ({label}) ({})", selector.trim()), label))
}

/// The data links of a panel: every `links` in its field config, defaults and overrides.
fn panel_links(panel: &Value) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    let field = &panel["fieldConfig"];
    for link in field["defaults"]["links"].as_array().into_iter().flatten() {
        out.push((None, link["url"].as_str().unwrap_or("").to_owned()));
    }
    for o in field["overrides"].as_array().into_iter().flatten() {
        let on = o["matcher"]["options"].as_str().map(str::to_owned);
        for p in o["properties"].as_array().into_iter().flatten().filter(|p| p["id"] == "links") {
            for link in p["value"].as_array().into_iter().flatten() {
                out.push((on.clone(), link["url"].as_str().unwrap_or("").to_owned()));
            }
        }
    }
    out
}

/// Families the agent exports only where the kernel can tell (README): kprobe misses exist
/// only for kprobes attached through links on Linux 6.7 and later, never in tracepoint mode.
const ONLY_WHERE_REPORTED: &[&str] = &["netns_agent_kprobe_missed_total"];

#[test]
fn every_dashboard_query_and_rule_works_against_a_live_prometheus() -> Result<()> {
    // The workload: namespaces come and go, a device moves, traffic with and without routes,
    // a failed creation, a pod (a CNI cache entry) and a leak held by a socket, so every
    // panel and variable has something to show.
    let parked = NamedNetns::add("prom")?;
    let cni = std::env::temp_dir().join(format!("netns-agent-prom-cni-{}", std::process::id()));
    std::fs::create_dir_all(&cni)?;
    let sandbox = "5e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f";
    let pod = unique("web");
    std::fs::write(
        cni.join(format!("cbr0-{sandbox}-eth0")),
        format!(
            r#"{{"kind":"cniCacheV1","containerId":"{sandbox}","config":"e30=","ifName":"eth0",
"networkName":"cbr0","netns":"/run/netns/{}","cniArgs":[["K8S_POD_NAMESPACE","shop"],
["K8S_POD_NAME","{pod}"]],"result":{{}}}}"#,
            parked.name
        ),
    )?;
    let agent = Agent::start_with_config(&format!(
        "attribution_interval_seconds = 1\ncni_cache_dir = \"{}\"\n",
        cni.display()
    ))?;
    let prometheus = Prometheus::start(agent.port)?;
    let leak = HeldNetns::spawn(Hold::Socket, &unique_comm("pleak"), None)?;
    let topo = RouterTopology::new()?;
    let veth = unique("pv");
    run("ip", &["link", "add", &veth, "type", "veth", "peer", "name", &unique("pp")])?;
    // Into the router: the drill-down dashboard looks at it, moves and lookups both.
    run("ip", &["link", "set", &veth, "netns", &topo.r.name])?;
    netns_agent_e2e::failing_creations(1, 0)?;
    for _ in 0..20 {
        netns_agent_e2e::clone_newnet(false)?;
    }
    for round in 0..8 {
        send_udp(&topo.a.name, "10.77.2.2:9", 100)?;
        send_udp(&topo.a.name, "10.99.0.1:9", 100)?;
        if round == 4 {
            let failed = agent.get("/metrics")?;
            let problems = promtool_check(&failed)?;
            ensure!(problems.is_empty(), "promtool check metrics: {problems}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let netns = topo.r.inode()?.to_string();
    // Enough scrapes for rate() over 1m windows.
    wait_for("scrapes to accumulate", Duration::from_secs(60), || {
        let up = prometheus.query("count_over_time(up{job=\"netns-agent\"}[1m])")?;
        Ok(up
            .first()
            .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
            .filter(|n| *n >= 10.0)
            .map(|_| ()))
    })?;

    // The leak and the pod are scraped (a scan finds the holder, the cache names the pod).
    wait_for("the leak and the pod in Prometheus", Duration::from_secs(60), || {
        let held = prometheus.query(&format!("netns_holder_fds{{netns=\"{}\"}}", leak.inode))?;
        let pod = prometheus.query(&format!("netns_info{{pod=\"{pod}\"}}"))?;
        Ok((!held.is_empty() && !pod.is_empty()).then_some(()))
    })?;

    let mut empty = Vec::new();
    let exposition = agent.get("/metrics")?;
    for (file, panel, expr) in panel_queries()? {
        let expr = concrete(&expr, &netns);
        let result = prometheus.query(&expr).with_context(|| format!("{file} / {panel}: {expr}"))?;
        // A family the agent exports only where the kernel reports it may leave its panel
        // empty, when the agent's own exposition has no sample of it either.
        let unreported = ONLY_WHERE_REPORTED.iter().any(|m| expr.contains(m) && !exposition.contains(m));
        if result.is_empty() && !unreported {
            empty.push(format!("{file} / {panel}: {expr}"));
        }
    }
    ensure!(empty.is_empty(), "dashboard queries with no data under the workload:\n{}", empty.join("\n"));

    // Every query variable has values; the pod variable narrows netns to that pod's namespace.
    let boards = dashboards()?;
    for (file, dash) in &boards {
        for var in
            dash["templating"]["list"].as_array().into_iter().flatten().filter(|v| v["type"] == "query")
        {
            let (expr, label) = label_values_query(var["query"]["query"].as_str().unwrap_or(""))?;
            let values = prometheus.query(&concrete(&expr, &netns))?;
            ensure!(
                values.iter().any(|v| v["metric"][&label].as_str().is_some_and(|l| !l.is_empty())),
                "{file}: variable {} has no values: {expr}",
                var["name"]
            );
        }
    }
    let namespace_board = &boards.iter().find(|(f, _)| f == "namespace.json").context("namespace.json")?.1;
    let vars = namespace_board["templating"]["list"].as_array().context("templating")?;
    let var =
        |name: &str| vars.iter().find(|v| v["name"] == name).with_context(|| format!("no {name} variable"));
    let pods = prometheus
        .query(&concrete(&label_values_query(var("pod")?["query"]["query"].as_str().unwrap_or(""))?.0, ""))?;
    ensure!(pods.iter().any(|p| p["metric"]["pod"] == pod.as_str()), "pod {pod} not offered: {pods:?}");
    let (expr, _) = label_values_query(var("netns")?["query"]["query"].as_str().unwrap_or(""))?;
    let picked = prometheus.query(&concrete_with(&expr, "", &pod))?;
    let picked: Vec<&str> = picked.iter().filter_map(|v| v["metric"]["netns"].as_str()).collect();
    ensure!(picked == [parked.inode()?.to_string()], "pod {pod} picks netns {picked:?}");

    // Every table that lists namespaces links each to the Namespace dashboard: the link's
    // dashboard exists, every variable it sets exists there, and every field it reads is a
    // column of the table's query.
    let uids: Vec<(&str, &Value)> =
        boards.iter().filter_map(|(_, d)| Some((d["uid"].as_str()?, d))).collect();
    let mut linked = 0;
    for (file, dash) in &boards {
        for panel in dash["panels"].as_array().into_iter().flatten().filter(|p| p["type"] == "table") {
            let title = panel["title"].as_str().unwrap_or("");
            let expr = panel["targets"][0]["expr"].as_str().unwrap_or("");
            let rows = prometheus.query(&concrete(expr, &netns))?;
            let columns: BTreeSet<&str> = rows
                .iter()
                .flat_map(|r| r["metric"].as_object().into_iter().flatten().map(|(k, _)| k.as_str()))
                .collect();
            let links = panel_links(panel);
            if columns.contains("netns") && file != "namespace.json" {
                ensure!(
                    links.iter().any(|(on, _)| on.as_deref() == Some("netns")),
                    "{file} / {title}: lists namespaces without a link on netns"
                );
            }
            for (_, url) in links {
                let (path, query) = url.split_once('?').unwrap_or((&url, ""));
                let uid = path.strip_prefix("/d/").and_then(|p| p.split('/').next()).unwrap_or("");
                let target = uids.iter().find(|(u, _)| *u == uid).map(|(_, d)| *d);
                let target =
                    target.with_context(|| format!("{file} / {title}: no dashboard {uid:?}: {url}"))?;
                let target_vars: Vec<&str> = target["templating"]["list"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v["name"].as_str())
                    .collect();
                for param in query.split('&') {
                    if let Some((name, _)) = param.strip_prefix("var-").and_then(|p| p.split_once('=')) {
                        ensure!(
                            target_vars.contains(&name),
                            "{file} / {title}: {uid} has no variable {name}"
                        );
                    }
                }
                for field in
                    url.split("${__data.fields.").skip(1).filter_map(|f| f.split_once('}')).map(|f| f.0)
                {
                    ensure!(
                        columns.contains(field),
                        "{file} / {title}: the link reads {field}, not a column"
                    );
                }
                ensure!(url.contains("var-netns=${__data.fields.netns}"), "{file} / {title}: {url}");
                linked += 1;
            }
        }
    }
    ensure!(linked >= 3, "only {linked} data links: the top-N tables and the leak table each need one");

    // The leak table names the holder: this test's own leak, by pid and comm.
    let overview = &boards.iter().find(|(f, _)| f == "overview.json").context("overview.json")?.1;
    let leak_table = overview["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["title"] == "Who is leaking")
        .context("no Who is leaking table")?;
    let rows =
        prometheus.query(&concrete(leak_table["targets"][0]["expr"].as_str().unwrap_or(""), &netns))?;
    ensure!(
        rows.iter().any(|r| r["metric"]["netns"] == leak.inode.to_string().as_str()
            && r["metric"]["pid"] == leak.pid.to_string().as_str()
            && r["metric"]["kind"] == "socket"
            && r["metric"]["state"] == "orphaned"),
        "the leak table lacks this test's leak: {rows:?}"
    );
    drop(leak);
    std::fs::remove_dir_all(&cni)?;

    // Every rule loaded, evaluated without error; recording rules produce data.
    let groups = wait_for("the rules to be evaluated", Duration::from_secs(30), || {
        let groups = prometheus.api("/api/v1/rules")?["groups"].as_array().cloned().unwrap_or_default();
        let evaluated = groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .all(|r| r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001")));
        Ok((evaluated && !groups.is_empty()).then_some(groups))
    })?;
    let mut count = 0;
    for rule in groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()) {
        count += 1;
        ensure!(rule["health"] == "ok", "rule {}: {} {}", rule["name"], rule["health"], rule["lastError"]);
        if rule["type"] == "recording" {
            let name = rule["name"].as_str().unwrap_or("");
            ensure!(!prometheus.query(name)?.is_empty(), "recording rule {name} has no data");
        }
    }
    ensure!(count >= 10, "only {count} rules loaded");
    Ok(())
}
