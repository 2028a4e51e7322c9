//! The shipped Prometheus rules and Grafana dashboard (monitoring/), checked
//! by the real tools: `promtool check rules` and `promtool test rules` on the
//! rules and their unit tests, and the real `prometheus` server scraping a
//! running three-member group with the shipped rules loaded: every dashboard
//! query returns series, and killing a member fires HahsmMemberDown once,
//! which resolves when the member is back. The members' own alerts reach a
//! real Alertmanager (`[monitoring.alerts] alertmanager`) and resolve there.
//! `scripts/test-deps.sh` installs Debian's `prometheus` package, which
//! brings both Prometheus binaries, and `prometheus-alertmanager`.
use hahsm_it::cluster::{Cluster, GROUP, PARTITION};
use hahsm_it::hahsm_env;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../monitoring")
}

fn rules_file() -> PathBuf {
    monitoring_dir().join("prometheus/hahsm-rules.yml")
}

fn dashboard() -> Value {
    let path = monitoring_dir().join("grafana/hahsm-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// `promtool ARGS…`, panicking with its output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool runs (scripts/test-deps.sh installs Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let rules = rules_file();
    let out = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(out.contains("SUCCESS"), "{out}");
    let tests = monitoring_dir().join("prometheus/hahsm-rules.test.yml");
    let out = promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<Value> {
    fn walk(list: &Value, out: &mut Vec<Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p.clone());
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every query of the dashboard: (where, PromQL with Grafana's variables).
/// A query variable's `label_values(METRIC, LABEL)` becomes
/// `count by (LABEL) (METRIC)`, which returns series exactly when the
/// variable would have values.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or("");
            out.push((
                format!("panel '{}' {}", p["title"].as_str().unwrap_or("?"), t["refId"]),
                expr.to_string(),
            ));
        }
    }
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"].as_str().unwrap_or("");
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: not label_values(…): {q}", v["name"]));
        let (metric, label) = inner.rsplit_once(',').expect("label_values(METRIC, LABEL)");
        out.push((
            format!("variable ${}", v["name"].as_str().unwrap_or("?")),
            format!("count by ({}) ({})", label.trim(), metric.trim()),
        ));
    }
    out
}

/// The query as Grafana would send it, with every variable set to what
/// selects the test's group: `$job` the scrape job, `$group` the group,
/// `$instance` every member.
fn resolve(expr: &str) -> String {
    let resolved = expr
        .replace("$__rate_interval", "1m")
        .replace("$__range", "10m")
        .replace("$instance", ".+")
        .replace("$group", GROUP)
        .replace("$job", "hahsm");
    assert!(
        !resolved.contains('$'),
        "a variable the test does not know: {expr}"
    );
    resolved
}

#[test]
fn the_dashboard_is_one_grafana_can_import() {
    let d = dashboard();
    assert_eq!(d["uid"], "hahsm-group");
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(vars.contains(&"datasource"), "{vars:?}");
    let mut ids = std::collections::BTreeSet::new();
    let mut with_queries = 0;
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        assert!(
            ids.insert(p["id"].as_u64().expect("numeric id")),
            "id of '{title}' repeated"
        );
        let (x, w) = (&p["gridPos"]["x"], &p["gridPos"]["w"]);
        assert!(
            x.as_u64().unwrap() + w.as_u64().unwrap() <= 24,
            "'{title}' is wider than the grid"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "'{title}'");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "'{title}' has no query");
        for t in targets {
            assert!(!t["expr"].as_str().unwrap_or("").is_empty(), "'{title}'");
            assert_eq!(t["datasource"]["uid"], "${datasource}", "'{title}'");
        }
        with_queries += 1;
    }
    assert!(with_queries >= 10, "{with_queries} panels with queries");
    // Every variable a query uses is defined (or is one of Grafana's).
    for (place, expr) in queries(&d) {
        for word in expr.split('$').skip(1) {
            let name: String = word
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            assert!(
                name.starts_with("__") || vars.contains(&name.as_str()),
                "{place} uses ${name}, which the dashboard does not define"
            );
        }
    }
}

/// A real `prometheus` on loopback, with its own storage directory: killed
/// and removed when dropped, so also when the test fails.
struct Prometheus {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

/// Starts `program` with `args(addr)` on a free loopback port, its output in
/// `log_path`, and waits until `GET /-/ready` answers 200. Neither Prometheus
/// nor Alertmanager can listen on port 0: take a free port and release it,
/// and try again should another process take it meanwhile.
fn start_on_a_free_port(
    program: &str,
    log_path: &Path,
    args: &dyn Fn(&str) -> Vec<String>,
) -> (Child, String) {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(log_path).expect("log");
        let mut child = Command::new(program)
            .args(args(&addr))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{program} runs (scripts/test-deps.sh installs it): {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let exited = loop {
            if let Some(status) = child.try_wait().expect("waits for the child") {
                break status;
            }
            if http_get(&addr, "/-/ready").is_some_and(|(code, _)| code == 200) {
                return (child, addr);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{program} did not become ready in 30 s:\n{}",
                    std::fs::read_to_string(log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        assert!(
            log.contains("address already in use"),
            "{program} exited ({exited}):\n{log}"
        );
    }
    panic!("{program} found no free port in 5 tries");
}

impl Prometheus {
    fn start(config: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config).expect("prometheus.yml");
        let data = dir.path().join("data");
        let (child, addr) = start_on_a_free_port("prometheus", &dir.path().join("prometheus.log"), &|addr| {
            vec![
                format!("--config.file={}", file.display()),
                format!("--storage.tsdb.path={}", data.display()),
                format!("--web.listen-address={addr}"),
            ]
        });
        Prometheus { child, addr, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path; its JSON `data`, panicking unless the answer is a success.
    fn api(&self, path: &str) -> Value {
        let (code, body) = http_get(&self.addr, path).unwrap_or_else(|| panic!("no answer to {path}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert!(code == 200 && v["status"] == "success", "{path}: {code} {body}");
        v["data"].clone()
    }

    /// The series an instant query returns.
    fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(promql)));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The active alerts (pending and firing) named `name`.
    fn alerts(&self, name: &str) -> Vec<Value> {
        self.api("/api/v1/alerts")["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == name)
            .cloned()
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 GET (no chunked answers, the server closes): status and body.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(tcp, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    done()
}

/// A few key operations on `member`, one of them failing (a wrong PIN), so
/// that operation, latency, error and failed-login series exist.
fn traffic(c: &Cluster, member: usize, label: &str) {
    c.keys(member, &["gen", "--type", "ec:p256", "--label", label])
        .expect_ok();
    let data = c.work.path().join("data.bin");
    std::fs::write(&data, b"scraped by prometheus").unwrap();
    let sig = c.work.path().join(format!("{label}.sig"));
    for _ in 0..3 {
        c.keys(
            member,
            &[
                "sign",
                "--label",
                label,
                "--mech",
                "ECDSA-SHA256",
                "--in",
                data.to_str().unwrap(),
                "--out",
                sig.to_str().unwrap(),
            ],
        )
        .expect_ok();
    }
    hahsm_env(
        Some(&c.conf),
        &["keys", "--server", &format!("hsm{member}"), "list"],
        &[("HAHSM_PIN", "not-the-pin"), ("HAHSM_PARTITION", PARTITION)],
    )
    .expect_err("PIN");
}

#[test]
fn prometheus_scrapes_the_group_and_fires_member_down_once_until_it_is_back() {
    let started = Instant::now();
    // Every member's alert command fails, so that the delivery failures
    // have series for the dashboard (retried twice, quickly).
    let mut c = Cluster::with_monitoring(3, &|_| {
        "[monitoring.alerts]\nexec = [\"/bin/false\"]\nretries = 2\nretry_backoff_ms = 100\n".to_string()
    });
    // A member keeps its metrics address across restarts, as a scrape
    // target must: pin the port each got on its first start.
    let mut targets = Vec::new();
    for m in &c.members {
        let addr = m
            .metrics_url()
            .trim_start_matches("http://")
            .trim_end_matches("/metrics")
            .to_string();
        let text = std::fs::read_to_string(&m.config).unwrap();
        let pinned = text.replacen(
            "metrics_listen = \"127.0.0.1:0\"",
            &format!("metrics_listen = \"{addr}\""),
            1,
        );
        assert_ne!(pinned, text, "no metrics_listen in {}", m.config.display());
        std::fs::write(&m.config, pinned).unwrap();
        targets.push(addr);
    }
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {rules}\n\
         scrape_configs:\n  - job_name: hahsm\n    static_configs:\n      - targets: [{targets}]\n",
        rules = rules_file().display(),
        targets = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let prom = Prometheus::start(&config);
    let rule_names: Vec<String> = prom.api("/api/v1/rules")["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect();
    assert!(
        rule_names.iter().any(|n| n == "HahsmMemberDown"),
        "the shipped rules are not loaded: {rule_names:?}\n{}",
        prom.log()
    );
    let targets_up = || {
        let t = prom.api("/api/v1/targets");
        let active = t["activeTargets"].as_array().cloned().unwrap_or_default();
        active.len() == 3 && active.iter().all(|t| t["health"] == "up")
    };
    assert!(
        wait_for(Duration::from_secs(60), targets_up),
        "not every member's target is up: {}\n{}",
        prom.api("/api/v1/targets"),
        prom.log()
    );
    traffic(&c, 0, "before-kill");
    traffic(&c, 1, "on-member-1");

    // Kill member 2: both survivors see it down, its own target fails.
    let victim = c.serials[2].to_string();
    let killed = Instant::now();
    c.members[2].kill9();
    let firing = |a: &Value| a["state"] == "firing" && a["labels"]["member"] == victim.as_str();
    assert!(
        wait_for(Duration::from_secs(30), || prom
            .alerts("HahsmMemberDown")
            .iter()
            .any(firing)),
        "HahsmMemberDown did not fire within 30 s of the kill: {:?}\n{}",
        prom.alerts("HahsmMemberDown"),
        c.members[0].log()
    );
    let fired_after = killed.elapsed();
    // Once, not once per reporting member, naming the member and the group.
    let down = prom.alerts("HahsmMemberDown");
    assert_eq!(down.len(), 1, "{down:?}");
    assert_eq!(down[0]["labels"]["group"], GROUP, "{down:?}");
    assert_eq!(down[0]["labels"]["name"], "hsm2", "{down:?}");
    assert_eq!(down[0]["labels"]["severity"], "critical", "{down:?}");
    assert!(
        down[0]["annotations"]["summary"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("hsm2 ({victim}) of HA group {GROUP}")),
        "{down:?}"
    );
    // Its failed scrape is the same outage: no second alert for it.
    let scrape = prom.query(&format!("up{{instance=\"{}\"}}", targets[2]));
    assert_eq!(
        scrape.first().map(|s| s["value"][1].clone()),
        Some(Value::from("0")),
        "{scrape:?}"
    );
    let endpoint = prom.alerts("HahsmMetricsEndpointDown");
    assert!(endpoint.is_empty(), "{endpoint:?}");

    // It comes back: the alert resolves, and its target is up again.
    c.members[2].spawn();
    let restarted = Instant::now();
    assert!(
        wait_for(Duration::from_secs(30), || !prom
            .alerts("HahsmMemberDown")
            .iter()
            .any(firing)),
        "HahsmMemberDown still firing 30 s after the restart: {:?}",
        prom.alerts("HahsmMemberDown")
    );
    let resolved_after = restarted.elapsed();
    assert!(
        wait_for(Duration::from_secs(30), targets_up),
        "member 2's target is not up after its restart: {}",
        prom.api("/api/v1/targets")
    );

    // Every dashboard query returns series from the running group (and
    // every variable has values), the alert panels included: the
    // survivors raised member-down, and their alert command failed.
    traffic(&c, 2, "after-restart");
    let d = dashboard();
    let all = queries(&d);
    assert!(all.len() >= 20, "{} queries", all.len());
    let mut empty: Vec<(String, String)> = Vec::new();
    assert!(
        wait_for(Duration::from_secs(30), || {
            empty = all
                .iter()
                .map(|(place, expr)| (place.clone(), resolve(expr)))
                .filter(|(_, q)| prom.query(q).is_empty())
                .collect();
            empty.is_empty()
        }),
        "dashboard queries without series:\n{}",
        empty
            .iter()
            .map(|(p, q)| format!("  {p}: {q}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "t61: HahsmMemberDown fired {fired_after:?} after the kill, resolved {resolved_after:?} after the restart; {} dashboard queries checked; {:?} in all",
        all.len(),
        started.elapsed()
    );
}

/// A real Alertmanager (Debian's `prometheus-alertmanager`) on loopback, with
/// its own storage directory and no cluster listener: killed when dropped,
/// so also when the test fails.
struct Alertmanager {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

const ALERTMANAGER: &str = "prometheus-alertmanager";

impl Alertmanager {
    /// Alertmanager with one receiver that sends nothing. Its
    /// `resolve_timeout` is an hour: an alert leaves its active alerts
    /// within the test only if a member sent its end.
    fn start() -> Alertmanager {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("alertmanager.yml");
        std::fs::write(
            &file,
            "global:\n  resolve_timeout: 1h\nroute:\n  receiver: nowhere\nreceivers:\n  - name: nowhere\n",
        )
        .expect("alertmanager.yml");
        let data = dir.path().join("data");
        let (child, addr) =
            start_on_a_free_port(ALERTMANAGER, &dir.path().join("alertmanager.log"), &|addr| {
                vec![
                    format!("--config.file={}", file.display()),
                    format!("--storage.path={}", data.display()),
                    format!("--web.listen-address={addr}"),
                    // No gossip port: tests run side by side.
                    "--cluster.listen-address=".to_string(),
                ]
            });
        Alertmanager { child, addr, dir }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }

    /// Its active alerts named `name` (`GET /api/v2/alerts`, which leaves
    /// out the alerts that ended).
    fn alerts(&self, name: &str) -> Vec<Value> {
        let (code, body) = http_get(&self.addr, "/api/v2/alerts").expect("alertmanager answers");
        assert_eq!(code, 200, "{body}");
        let all: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        all.as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == name)
            .cloned()
            .collect()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_members_alerts_reach_a_real_alertmanager_are_resent_and_resolve_there() {
    // At first nothing listens where the members send: their deliveries
    // fail, are logged, and are tried again.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let closed = format!("http://{closed}");
    let mut c = Cluster::with_monitoring(3, &|_| {
        format!(
            "out_of_sync_after_secs = 1\n[monitoring.alerts]\nalertmanager = \"{closed}\"\n\
             alertmanager_resend_secs = 1\nretry_backoff_ms = 100\ntimeout_ms = 2000\n"
        )
    });
    let victim = c.serials[2].to_string();
    c.members[2].kill9();
    let failed = |m: &hahsm_it::Member| {
        m.log()
            .lines()
            .filter(|l| l.contains("alert delivery failed") && l.contains("alertmanager"))
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(30), || failed(&c.members[0]) >= 5),
        "member 0 logged no failed, retried delivery to the Alertmanager:\n{}",
        c.members[0].log()
    );
    // The member serves on meanwhile.
    c.keys(0, &["gen", "--type", "aes:128", "--label", "while-unreachable"])
        .expect_ok();

    // The real Alertmanager comes up: the members are pointed at it (SIGHUP).
    let am = Alertmanager::start();
    for m in &c.members {
        let text = std::fs::read_to_string(&m.config).unwrap();
        let changed = text.replace(&closed, &am.url());
        assert_ne!(text, changed, "no alertmanager in {}", m.config.display());
        std::fs::write(&m.config, changed).unwrap();
    }
    for m in &c.members[..2] {
        m.signal(nix::sys::signal::Signal::SIGHUP);
    }
    let down_of_victim = |a: &Value| a["labels"]["member"] == victim.as_str();
    assert!(
        wait_for(Duration::from_secs(30), || am
            .alerts("HahsmMemberDown")
            .iter()
            .any(down_of_victim)),
        "no HahsmMemberDown for member {victim} in Alertmanager: {:?}\n{}\n{}",
        am.alerts("HahsmMemberDown"),
        am.log(),
        c.members[0].log()
    );
    let down: Vec<Value> = am
        .alerts("HahsmMemberDown")
        .into_iter()
        .filter(down_of_victim)
        .collect();
    let a = &down[0];
    assert_eq!(a["labels"]["group"], GROUP, "{a}");
    assert_eq!(a["labels"]["severity"], "critical", "{a}");
    assert_eq!(a["labels"]["source"], "hahsmd", "{a}");
    assert_eq!(a["status"]["state"], "active", "{a}");
    assert!(
        a["annotations"]["summary"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("has dropped member: {victim}")),
        "{a}"
    );
    assert!(
        a["generatorURL"]
            .as_str()
            .unwrap_or("")
            .starts_with("http://127.0.0.1:"),
        "{a}"
    );
    // The lasting condition the outage causes is there too.
    let out_of_sync = |am: &Alertmanager| {
        am.alerts("HahsmOutOfSync")
            .into_iter()
            .filter(|a| a["labels"]["group"] == GROUP && a["labels"]["partition"] == PARTITION)
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(30), || out_of_sync(&am) == 1),
        "no HahsmOutOfSync in Alertmanager: {:?}",
        am.alerts("HahsmOutOfSync")
    );
    // It is sent again while it fires: Alertmanager's updatedAt keeps
    // moving, long after the few changes (each sent at once) are over. Both
    // survivors send it (each delivers to the Alertmanager, below), with the
    // same labels: it stays one alert, which names a survivor. (Which one
    // Alertmanager shows depends on when each resends: two members whose
    // resends fall a few milliseconds apart show the later one nearly always.)
    let mut updates = std::collections::BTreeSet::new();
    let mut reporters: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
    let mut copies = std::collections::BTreeSet::new();
    assert!(
        wait_for(Duration::from_secs(30), || {
            let down: Vec<Value> = am
                .alerts("HahsmMemberDown")
                .into_iter()
                .filter(down_of_victim)
                .collect();
            copies.insert(down.len());
            for a in &down {
                updates.insert(a["updatedAt"].as_str().unwrap_or("").to_string());
                let text = a["annotations"]["description"].as_str().unwrap_or("");
                reporters.extend(c.serials[..2].iter().copied().filter(|s| text.ends_with(&format!("Reported by member {s}."))));
            }
            updates.len() >= 8 && !reporters.is_empty()
        }),
        "the alert was not sent again and again by a survivor: updatedAt {updates:?}, reporters {reporters:?}"
    );
    for m in &c.members[..2] {
        assert!(
            m.log()
                .lines()
                .any(|l| l.contains("alerts delivered after retrying") && l.contains("alertmanager")),
            "a survivor never delivered to the Alertmanager:\n{}",
            m.log()
        );
    }
    assert_eq!(copies, [1].into(), "copies of the alert seen at once");

    // The member comes back: both alerts end. With a resolve_timeout of an
    // hour, only an end the members sent takes them out of the active ones.
    c.members[2].spawn();
    assert!(
        wait_for(Duration::from_secs(60), || !am
            .alerts("HahsmMemberDown")
            .iter()
            .any(down_of_victim)
            && out_of_sync(&am) == 0),
        "still active 60 s after the restart: {:?} {:?}\n{}",
        am.alerts("HahsmMemberDown"),
        am.alerts("HahsmOutOfSync"),
        c.members[0].log()
    );
    // No line about the deliveries carries a secret.
    for m in &c.members {
        for line in m.log().lines().filter(|l| l.contains("alertmanager")) {
            assert!(!line.contains(hahsm_it::cluster::PIN), "{line}");
        }
    }
}
