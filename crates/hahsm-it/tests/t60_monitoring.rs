//! Monitoring with no application (report §5.2.3): alerts raised by the
//! members themselves, the metrics endpoint checked with a third-party
//! OpenMetrics parser (Python's prometheus_client, installed by scripts/test-deps.sh),
//! `hahsm monitor`, and policy drift detected, alerted and synced.
use hahsm_it::cluster::{Cluster, GROUP, PARTITION};
use hahsm_it::{
    alert_script, alerts_in, exec_alerts_config, hahsm, hahsm_env, Standalone, PARTITION as PARTITION_1,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn wait(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// A webhook receiver on loopback that answers 503 to its first request and
/// 200 afterwards, keeping every body it received.
fn flaky_webhook() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = bodies.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let status = if n == 0 {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
        }
    });
    (url, bodies)
}

#[test]
fn killing_a_member_with_no_application_runs_the_alert_command_within_3s() {
    let tmp = tempfile::tempdir().unwrap();
    let script = alert_script(tmp.path());
    let out0 = tmp.path().join("alerts0.log");
    let (webhook, bodies) = flaky_webhook();
    let c = Cluster::with_monitoring(3, &|i| {
        let out = tmp.path().join(format!("alerts{i}.log"));
        let mut cfg = exec_alerts_config(&script, &out, "out_of_sync_after_secs = 1\n");
        if i == 0 {
            cfg.push_str(&format!("webhook = \"{webhook}\"\n"));
        }
        cfg
    });
    let mut c = c;
    let victim = c.serials[2].to_string();
    // No application runs: the client config exists, but nothing uses it.
    let killed = Instant::now();
    c.members[2].kill9();
    let down = |line: &String| line.starts_with(&format!("member-down firing {victim} "));
    assert!(
        wait(Duration::from_secs(10), || alerts_in(&out0).iter().any(down)),
        "no member-down alert on member 0: {:?}\n{}",
        alerts_in(&out0),
        c.members[0].log()
    );
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(3),
        "the member-down alert took {took:?} (more than 3 s)"
    );
    // The other survivor raises it too, each member from its own view.
    let out1 = tmp.path().join("alerts1.log");
    assert!(wait(Duration::from_secs(5), || alerts_in(&out1).iter().any(down)));
    // The JSON on stdin names the group and the member, and the reporter.
    let line = alerts_in(&out0).into_iter().find(down).unwrap();
    let json: serde_json::Value = serde_json::from_str(line.splitn(4, ' ').nth(3).unwrap()).unwrap();
    assert_eq!(json["kind"], "member-down");
    assert_eq!(json["group"], GROUP);
    assert_eq!(json["member"].to_string(), victim);
    assert_eq!(json["reporter"], c.serials[0]);
    assert!(json["summary"]
        .as_str()
        .unwrap()
        .contains(&format!("has dropped member: {victim}")));

    // The webhook refused the first POST; the member retried with back-off.
    assert!(
        wait(Duration::from_secs(10), || bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b.contains("\"member-down\""))
            .count()
            >= 2),
        "the webhook was not retried: {:?}",
        bodies.lock().unwrap()
    );

    // A lasting outage leaves the group out of sync: that alert follows.
    let outage = |l: &String| {
        l.starts_with("out-of-sync firing ") && l.contains(&format!("member {victim} (hsm2) is down"))
    };
    assert!(
        wait(Duration::from_secs(10), || alerts_in(&out0).iter().any(outage)),
        "no out-of-sync alert: {:?}",
        alerts_in(&out0)
    );

    // The member comes back: member-recovered, again with no application,
    // and once it has caught up, the group is in sync again.
    c.members[2].spawn();
    let recovered = |line: &String| line.starts_with(&format!("member-recovered firing {victim} "));
    assert!(
        wait(Duration::from_secs(15), || alerts_in(&out0).iter().any(recovered)),
        "no member-recovered alert: {:?}",
        alerts_in(&out0)
    );
    assert!(
        wait(Duration::from_secs(15), || {
            let all = alerts_in(&out0);
            let fired = all.iter().position(outage).unwrap_or(usize::MAX);
            all.iter()
                .skip(fired.saturating_add(1))
                .any(|l| l.starts_with("out-of-sync resolved "))
        }),
        "no out-of-sync resolved alert after the outage: {:?}",
        alerts_in(&out0)
    );
    // Nothing secret travels in an alert.
    let secret = std::fs::read(&c.owner_secret).unwrap();
    for line in alerts_in(&out0) {
        assert!(!line.contains(hahsm_it::cluster::PIN));
        assert!(!line.contains(&hex::encode(&secret)));
    }
}

/// The metrics endpoint, fetched and parsed by Python's prometheus_client
/// OpenMetrics parser, which refuses anything not valid OpenMetrics.
struct Scrape {
    content_type: String,
    samples: Vec<(String, serde_json::Map<String, serde_json::Value>, f64)>,
}

const PARSE: &str = r#"
import json, sys, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    ctype = r.headers.get("Content-Type")
    text = r.read().decode("utf-8")
samples = [[s.name, s.labels, s.value] for f in text_string_to_metric_families(text) for s in f.samples]
print(json.dumps({"content_type": ctype, "samples": samples}))
"#;

fn scrape(url: &str) -> Scrape {
    let out = std::process::Command::new("python3")
        .args(["-c", PARSE, url])
        .output()
        .expect("python3 runs (scripts/test-deps.sh installs prometheus-client)");
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused {url}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Scrape {
        content_type: v["content_type"].as_str().unwrap_or("").to_string(),
        samples: v["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s[0].as_str().unwrap().to_string(),
                    s[1].as_object().unwrap().clone(),
                    s[2].as_f64().unwrap(),
                )
            })
            .collect(),
    }
}

impl Scrape {
    /// The value of the one sample named `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).and_then(|x| x.as_str()) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?} matches {} samples",
            found.len()
        );
        found.first().copied()
    }

    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).and_then(|x| x.as_str()) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }
}

#[test]
fn metrics_are_valid_openmetrics_and_follow_the_group_state() {
    let mut c = Cluster::new(3);
    // The URL is discoverable from `ha show --json` (and from metrics.addr).
    let status = c.status(0);
    let url = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["serial"] == c.serials[0])
        .unwrap()["metrics"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(url, c.members[0].metrics_url());
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    // Each member's heartbeats carry its URL to the others.
    let peer_url = c.status(1)["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["serial"] == c.serials[0])
        .unwrap()["metrics"]
        .clone();
    assert_eq!(peer_url, serde_json::Value::String(url.clone()));

    // Operations by mechanism, and a failed login.
    c.keys(0, &["gen", "--type", "ec:p256", "--label", "m1"])
        .expect_ok();
    let data = c.work.path().join("data.bin");
    std::fs::write(&data, b"hello").unwrap();
    let sig = c.work.path().join("sig.bin");
    let (d, s) = (data.to_str().unwrap(), sig.to_str().unwrap());
    c.keys(
        0,
        &[
            "sign",
            "--label",
            "m1",
            "--mech",
            "ECDSA-SHA256",
            "--in",
            d,
            "--out",
            s,
        ],
    )
    .expect_ok();
    hahsm_env(
        Some(&c.conf),
        &["keys", "--server", "hsm0", "list"],
        &[("HAHSM_PIN", "wrong-pin-1"), ("HAHSM_PARTITION", PARTITION)],
    )
    .expect_err("PIN");

    let group = [("group", GROUP)];
    let m = scrape(&url);
    assert!(
        m.content_type.starts_with("application/openmetrics-text"),
        "{}",
        m.content_type
    );
    assert_eq!(m.value("hahsm_group_in_sync", &group), Some(1.0));
    assert_eq!(m.value("hahsm_group_degraded", &group), Some(0.0));
    assert_eq!(m.value("hahsm_group_policy_drift", &group), Some(0.0));
    for serial in &c.serials {
        let who = [("group", GROUP), ("member", &*serial.to_string())];
        assert_eq!(m.value("hahsm_member_up", &who), Some(1.0), "member {serial}");
        assert_eq!(m.value("hahsm_replication_lag_operations", &who), Some(0.0));
    }
    assert_eq!(
        m.value(
            "hahsm_operations_total",
            &[
                ("operation", "sign"),
                ("mechanism", "ECDSA-SHA256"),
                ("result", "ok")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value(
            "hahsm_operation_duration_seconds_count",
            &[
                ("operation", "generate-key-pair"),
                ("mechanism", "EC-KEY-PAIR-GEN")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value(
            "hahsm_failed_logins_total",
            &[("partition", PARTITION), ("user", "user")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value("hahsm_partition_failed_logins", &[("partition", PARTITION)]),
        Some(1.0)
    );
    assert_eq!(
        m.value("hahsm_partition_objects", &[("partition", PARTITION)]),
        Some(2.0)
    );
    assert!(m.value("hahsm_store_size_bytes", &[]).unwrap() > 0.0);

    // Member 2 dies: member 0's metrics say so, and the group is degraded.
    c.members[2].kill9();
    let victim = [("group", GROUP), ("member", &*c.serials[2].to_string())];
    assert!(
        wait(Duration::from_secs(10), || scrape(&url)
            .value("hahsm_member_up", &victim)
            == Some(0.0)),
        "member 2 never shown down"
    );
    let m = scrape(&url);
    assert_eq!(
        m.value("hahsm_member_state", &[victim[0], victim[1], ("state", "down")]),
        Some(1.0)
    );
    assert_eq!(
        m.sum("hahsm_member_state", &victim),
        1.0,
        "exactly one state at a time"
    );
    assert_eq!(m.value("hahsm_group_in_sync", &group), Some(0.0));
    assert_eq!(m.value("hahsm_group_degraded", &group), Some(1.0));

    // A write while it is down: it lags by the operations made meanwhile,
    // for a while. They are two: the login of `keys gen` clears the failed
    // login counted above (group state, see crates/hahsmd/src/pins.rs), then
    // the key.
    c.keys(0, &["gen", "--type", "aes:128", "--label", "while-down"])
        .expect_ok();
    assert!(wait(Duration::from_secs(10), || {
        let m = scrape(&url);
        m.value("hahsm_replication_lag_operations", &victim) == Some(2.0)
            && m.value("hahsm_replication_lag_seconds", &victim).unwrap_or(0.0) > 0.0
    }));
    // `hahsm monitor` shows the same, for a script: one frame.
    let socket = c.members[0].admin_socket();
    let shown = hahsm(None, &["monitor", "--socket", socket.to_str().unwrap(), "--once"]).expect_ok();
    let row = shown
        .stdout
        .lines()
        .find(|l| l.starts_with("hsm2 "))
        .unwrap_or_else(|| panic!("{}", shown.stdout))
        .to_string();
    assert!(row.contains(" down "), "{row}");
    assert!(
        shown.stdout.contains("in sync: NO   degraded: YES"),
        "{}",
        shown.stdout
    );
    let frames = hahsm(
        None,
        &[
            "monitor",
            "--socket",
            socket.to_str().unwrap(),
            "--count",
            "2",
            "--interval",
            "0.2",
        ],
    )
    .expect_ok();
    assert_eq!(
        frames.stdout.matches("hahsm monitor: member").count(),
        2,
        "{}",
        frames.stdout
    );

    // It comes back and catches up: up, in sync, no lag.
    c.members[2].spawn();
    assert!(
        wait(Duration::from_secs(20), || {
            let m = scrape(&url);
            m.value("hahsm_member_up", &victim) == Some(1.0)
                && m.value("hahsm_group_in_sync", &group) == Some(1.0)
                && m.value("hahsm_replication_lag_operations", &victim) == Some(0.0)
                && m.value("hahsm_replication_lag_seconds", &victim) == Some(0.0)
        }),
        "member 2 never shown back in sync"
    );
}

#[test]
fn policy_drift_is_detected_alerted_and_synced() {
    let tmp = tempfile::tempdir().unwrap();
    let script = alert_script(tmp.path());
    let out0 = tmp.path().join("alerts0.log");
    let c = Cluster::with_monitoring(2, &|i| {
        exec_alerts_config(
            &script,
            &tmp.path().join(format!("alerts{i}.log")),
            "policy_drift_after_secs = 1\n",
        )
    });
    let show = |i: usize| c.ha(i, &["show"]).expect_ok().stdout;
    assert!(
        show(0).contains("policies: the same on every member"),
        "{}",
        show(0)
    );

    // Someone changes a policy on member 1 only.
    c.admin(
        1,
        &[
            "partition",
            "change-policy",
            "--partition",
            PARTITION,
            "--policy",
            "15",
            "--value",
            "3",
        ],
    )
    .expect_ok();
    // Member 0 sees it with no one asking: in `ha show`, its JSON and an alert.
    assert!(
        wait(Duration::from_secs(10), || show(0).contains("POLICY DRIFT")),
        "{}",
        show(0)
    );
    let text = show(0);
    assert!(
        text.contains("partition policy 15 (max-failed-logins): hsm0=10, hsm1=3"),
        "{text}"
    );
    let drift = c.status(0)["policy_drift"].clone();
    assert_eq!(drift.as_array().map(Vec::len), Some(1), "{drift}");
    assert!(
        wait(Duration::from_secs(10), || alerts_in(&out0).iter().any(|l| l
            .starts_with("policy-drift firing ")
            && l.contains("max-failed-logins"))),
        "no policy-drift alert: {:?}",
        alerts_in(&out0)
    );

    // Sync member 1 from member 0, through member 1's console.
    let synced = c
        .ha(
            1,
            &[
                "sync-policies",
                "--group",
                GROUP,
                "--from",
                &c.serials[0].to_string(),
            ],
        )
        .expect_ok();
    assert!(
        synced
            .stdout
            .contains(&format!("partition {PARTITION} policy 15 set to 10")),
        "{}",
        synced.stdout
    );
    assert!(
        synced.stdout.contains("policies: the same on every member"),
        "{}",
        synced.stdout
    );
    assert!(wait(Duration::from_secs(10), || show(0)
        .contains("policies: the same on every member")));
    let policies = c
        .admin(1, &["partition", "show-policies", "--partition", PARTITION])
        .expect_ok()
        .stdout;
    let line = policies
        .lines()
        .find(|l| l.contains("max-failed-logins") || l.contains(" 15 "))
        .unwrap_or("")
        .to_string();
    assert!(line.contains("10"), "{policies}");
    assert!(
        wait(Duration::from_secs(10), || alerts_in(&out0)
            .iter()
            .any(|l| l.starts_with("policy-drift resolved "))),
        "{:?}",
        alerts_in(&out0)
    );
    // Syncing again changes nothing.
    let again = c
        .ha(1, &["sync-policies", "--group", GROUP, "--from", "hsm0"])
        .expect_ok();
    assert!(
        again.stdout.contains("already has the policies"),
        "{}",
        again.stdout
    );
    // A source that is not in the group is refused.
    c.ha(1, &["sync-policies", "--group", GROUP, "--from", "hsm9"])
        .expect_err("no member 'hsm9'");
}

/// The labelled counters a rule or the dashboard reads exist at 0 before
/// their first event (a `rate()` or `increase()` sees that first one): the
/// failed logins of each partition, every alert kind, each configured
/// target's delivery failures; a target configured by SIGHUP from then on.
#[test]
fn counters_exist_at_zero_before_their_first_event() {
    let work = tempfile::tempdir().unwrap();
    let script = alert_script(work.path());
    let out = work.path().join("alerts.log");
    let st = Standalone::build_monitored(work, "", &exec_alerts_config(&script, &out, ""));
    let url = st.member.metrics_url();
    let m = scrape(&url);
    for user in ["user", "so"] {
        assert_eq!(
            m.value(
                "hahsm_failed_logins_total",
                &[("partition", PARTITION_1), ("user", user)]
            ),
            Some(0.0),
            "failed logins ({user})"
        );
    }
    for (kind, status) in [
        ("member-down", "firing"),
        ("member-recovered", "firing"),
        ("out-of-sync", "firing"),
        ("out-of-sync", "resolved"),
        ("policy-drift", "firing"),
        ("policy-drift", "resolved"),
        ("pin-lockout", "firing"),
        ("clock-offset", "firing"),
        ("clock-offset", "resolved"),
    ] {
        assert_eq!(
            m.value("hahsm_alerts_total", &[("kind", kind), ("status", status)]),
            Some(0.0),
            "{kind} {status}"
        );
    }
    assert_eq!(
        m.value("hahsm_alert_delivery_failures_total", &[("target", "exec")]),
        Some(0.0)
    );
    // Only configured targets: no webhook here.
    assert_eq!(
        m.value("hahsm_alert_delivery_failures_total", &[("target", "webhook")]),
        None
    );
    // A webhook configured by SIGHUP has its counter at 0 from then on.
    let text = std::fs::read_to_string(&st.member.config).unwrap();
    std::fs::write(
        &st.member.config,
        text.replacen(
            "[monitoring.alerts]\n",
            "[monitoring.alerts]\nwebhook = \"http://127.0.0.1:9/hook\"\n",
            1,
        ),
    )
    .unwrap();
    st.member.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        wait(Duration::from_secs(10), || scrape(&url).value(
            "hahsm_alert_delivery_failures_total",
            &[("target", "webhook")]
        ) == Some(0.0)),
        "{}",
        st.member.log()
    );
    // The first event counts from 0.
    st.keys_with_pin("not-the-pin-42", &["list"]).expect_err("PIN");
    assert_eq!(
        scrape(&url).value(
            "hahsm_failed_logins_total",
            &[("partition", PARTITION_1), ("user", "user")]
        ),
        Some(1.0)
    );
}

/// The member exports its version and when its TLS certificate expires: the
/// `notAfter` OpenSSL reads from its server.pem, to the second.
#[test]
fn the_build_and_the_certificates_expiry_are_exported() {
    let work = tempfile::tempdir().unwrap();
    let m = hahsm_it::Member::start(&work.path().join("m"));
    let s = scrape(&m.metrics_url());
    assert_eq!(
        s.value("hahsm_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        Some(1.0)
    );
    let pem = m.data_dir().join("server.pem");
    let end = hahsm_it::run(
        "openssl",
        &["x509", "-noout", "-enddate", "-in", pem.to_str().unwrap()],
    )
    .expect_ok()
    .stdout;
    let end = end.trim().strip_prefix("notAfter=").expect("notAfter=");
    let seconds = std::process::Command::new("python3")
        .args([
            "-c",
            "import ssl, sys; print(ssl.cert_time_to_seconds(sys.argv[1]))",
            end,
        ])
        .output()
        .expect("python3 runs");
    let seconds: f64 = String::from_utf8_lossy(&seconds.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {end}"));
    assert_eq!(
        s.value(
            "hahsm_certificate_not_after_timestamp_seconds",
            &[("certificate", "server")]
        ),
        Some(seconds),
        "notAfter={end}"
    );
}

/// SIGHUP reloads the alert targets: the alerts raised after it go to the
/// command the config names now, none to the old one.
#[test]
fn sighup_reloads_the_alert_targets() {
    let work = tempfile::tempdir().unwrap();
    let script = alert_script(work.path());
    let (old, new) = (work.path().join("old.log"), work.path().join("new.log"));
    let st = Standalone::build_monitored(work, "", &exec_alerts_config(&script, &old, ""));
    st.set_partition_policy(15, 2);
    let text = std::fs::read_to_string(&st.member.config).unwrap();
    let changed = text.replace(&old.display().to_string(), &new.display().to_string());
    assert_ne!(text, changed, "the config names the old target");
    std::fs::write(&st.member.config, changed).unwrap();
    st.member.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        wait(Duration::from_secs(10), || st
            .member
            .log()
            .contains("configuration reloaded")),
        "{}",
        st.member.log()
    );
    for _ in 0..2 {
        st.keys_with_pin("not-the-pin-42", &["list"]).expect_err("PIN");
    }
    assert!(
        wait(Duration::from_secs(10), || alerts_in(&new)
            .iter()
            .any(|l| l.starts_with("pin-lockout firing "))),
        "no lockout alert at the new target: {:?}\n{}",
        alerts_in(&new),
        st.member.log()
    );
    assert!(
        alerts_in(&old).is_empty(),
        "the old target still got {:?}",
        alerts_in(&old)
    );
}

#[test]
fn a_pin_lockout_raises_an_alert_without_the_pin() {
    let work = tempfile::tempdir().unwrap();
    let script = alert_script(work.path());
    let out = work.path().join("alerts.log");
    let st = Standalone::build_monitored(work, "", &exec_alerts_config(&script, &out, ""));
    st.set_partition_policy(15, 3);
    let wrong = "not-the-pin-42";
    for _ in 0..3 {
        st.keys_with_pin(wrong, &["list"]).expect_err("PIN");
    }
    assert!(
        wait(Duration::from_secs(10), || alerts_in(&out)
            .iter()
            .any(|l| l.starts_with("pin-lockout firing "))),
        "no lockout alert: {:?}\n{}",
        alerts_in(&out),
        st.member.log()
    );
    let line = alerts_in(&out)
        .into_iter()
        .find(|l| l.starts_with("pin-lockout"))
        .unwrap();
    assert!(line.contains(&st.partition), "{line}");
    assert!(!line.contains(wrong) && !line.contains(&st.pin), "{line}");
    // One alert for one lockout, however many refused logins follow.
    st.keys(&["list"]).expect_err("locked");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        alerts_in(&out)
            .iter()
            .filter(|l| l.starts_with("pin-lockout"))
            .count(),
        1,
        "{:?}",
        alerts_in(&out)
    );
    // The same alert is kept in the member's own alerts.jsonl.
    let kept = std::fs::read_to_string(st.member.data_dir().join("alerts.jsonl")).unwrap();
    assert!(kept.contains("\"pin-lockout\""), "{kept}");
}

#[test]
fn a_bad_alert_target_or_metrics_address_gets_a_clear_error() {
    let work = tempfile::tempdir().unwrap();
    let mut m = hahsm_it::Member::start(&work.path().join("m"));
    m.stop();
    m.add_monitoring("[monitoring.alerts]\nwebhook = \"https://alerts.example/hook\"\n");
    let (code, err) = m.spawn_expect_exit();
    assert_ne!(code, Some(0));
    assert!(err.contains("only http:// URLs are supported"), "{err}");

    // A metrics port that is taken does not keep the HSM from serving.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = std::fs::read_to_string(&m.config).unwrap();
    let text = text
        .replace("webhook = \"https://alerts.example/hook\"\n", "")
        .replace(
            "metrics_listen = \"127.0.0.1:0\"",
            &format!("metrics_listen = \"{}\"", taken.local_addr().unwrap()),
        );
    std::fs::write(&m.config, text).unwrap();
    m.spawn();
    let status = m.admin(&["status"]).expect_ok().stdout;
    assert!(status.contains("metrics:          off"), "{status}");
    assert!(
        m.log().contains("cannot bind the metrics endpoint"),
        "{}",
        m.log()
    );
}

/// One raw HTTP exchange with the metrics endpoint: the status line.
fn http_status(addr: &str, request: &[u8]) -> String {
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp.write_all(request).unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    answer.lines().next().unwrap_or("").to_string()
}

#[test]
fn the_metrics_endpoint_answers_only_get_metrics_and_survives_garbage() {
    let work = tempfile::tempdir().unwrap();
    let m = hahsm_it::Member::start(&work.path().join("m"));
    let url = m.metrics_url();
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    // Scrapers that connect and say nothing do not hold the endpoint: a
    // scrape behind 40 of them is served at once, or at worst when their 2 s
    // header deadline passes, never after the 10 s connection deadline (the
    // bound is generous for a loaded machine).
    let idle: Vec<_> = (0..40)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let started = Instant::now();
    let answer = http_status(
        &addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.contains("200"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "a scrape waited {:?} behind idle connections",
        started.elapsed()
    );
    drop(idle);
    assert!(http_status(&addr, b"GET /keys HTTP/1.1\r\nHost: x\r\n\r\n").contains("404"));
    assert!(http_status(
        &addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    .contains("405"));
    let garbage = http_status(&addr, b"\x00\x01\x02 not http at all\r\n\r\n");
    assert!(garbage.is_empty() || garbage.contains("400"), "{garbage}");
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(1 << 20));
    let _ = std::panic::catch_unwind(|| http_status(&addr, huge.as_bytes()));
    // The member still serves valid metrics and its admin socket.
    let s = scrape(&url);
    assert!(s.value("hahsm_store_size_bytes", &[]).unwrap() > 0.0);
    m.admin(&["status"]).expect_ok();
}
