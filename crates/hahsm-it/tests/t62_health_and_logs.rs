//! Issue 16, items 4 and 5: the health endpoints a load balancer or an
//! orchestrator asks (`/health/live`, `/health/ready`, with the codes Vault
//! answers and their overrides, a real standby's 429 included), and logs as
//! JSON lines for a log shipper.
use hahsm_it::cluster::{Cluster, PARTITION};
use hahsm_it::proxy::Mode;
use std::time::{Duration, Instant};

/// Polls member `i`'s readiness until `done` holds for (code, body).
fn wait_ready(c: &Cluster, i: usize, timeout: Duration, done: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let started = Instant::now();
    loop {
        let (code, body) = c.members[i].health("/health/ready");
        if done(code, &body) || started.elapsed() > timeout {
            return (code, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `keys list` with a wrong PIN, which the member must refuse (and log).
fn login_with_a_wrong_pin(st: &hahsm_it::Standalone) {
    let wrong = st.keys_with_pin(WRONG_PIN, &["list"]);
    assert!(!wrong.ok, "a wrong PIN was accepted");
}

const WRONG_PIN: &str = "wrong-pin-4242";

#[test]
fn readiness_follows_the_quorum_the_catch_up_and_the_activation() {
    let c = Cluster::with_group_options(3, &["--quorum"]);
    for i in 0..3 {
        let (code, body) = c.members[i].health("/health/live");
        assert_eq!((code, body.as_str()), (200, "live\n"), "member {i}");
        let (code, body) = wait_ready(&c, i, Duration::from_secs(10), |code, _| code == 200);
        assert_eq!(code, 200, "member {i}: {body}");
        assert_eq!(body, format!("serving partitions {PARTITION}\n"));
    }
    let (code, json) = c.members[0].health("/health/ready?format=json");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["readiness"], "ready", "{json}");
    assert_eq!(v["partitions"][0]["partition"], PARTITION, "{json}");
    assert_eq!(v["partitions"][0]["cut_off"], false, "{json}");

    // Member 2 cut off from both peers: under quorum it serves no keys.
    c.isolate(2, Mode::Cut);
    let (code, body) = wait_ready(&c, 2, Duration::from_secs(15), |code, _| code == 503);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("cut off from the quorum"), "{body}");
    // The majority side stays ready.
    assert_eq!(c.members[0].health("/health/ready").0, 200);
    // A load balancer that only knows 2xx can be told otherwise.
    assert_eq!(c.members[2].health("/health/ready?unavailablecode=200").0, 200);
    assert_eq!(c.members[2].health("/health/ready?unavailablecode=42").0, 400);
    let (_, json) = c.members[2].health("/health/ready?format=json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["readiness"], "unavailable", "{json}");
    assert_eq!(v["partitions"][0]["cut_off"], true, "{json}");

    // A key made while it is away: back, it is ready only once caught up.
    c.keys(0, &["gen", "--type", "aes:128", "--label", "while-cut-off"])
        .expect_ok();
    c.heal_all();
    let (code, body) = wait_ready(&c, 2, Duration::from_secs(20), |code, _| code == 200);
    assert_eq!(code, 200, "{body}");
    assert!(c.wait_in_sync(0, Duration::from_secs(10)));

    // Deactivated: nothing to serve.
    c.so_login(0);
    c.admin(0, &["partition", "deactivate", "--partition", PARTITION])
        .expect_ok();
    let (code, body) = c.members[0].health("/health/ready");
    assert_eq!((code, body.as_str()), (503, "no partition is activated\n"));
}

/// A standby (`ha add-standby`) answers 429 while an active member is up,
/// 200 when asked `?standbycode=200`, and 200 once every active member is
/// gone and it serves.
#[test]
fn a_standby_answers_429_while_an_active_member_is_up_and_200_once_it_serves() {
    let mut c = Cluster::new(2);
    let s = c.add_standby();
    let (code, body) = wait_ready(&c, s, Duration::from_secs(20), |code, _| code == 429);
    assert_eq!(
        (code, body.as_str()),
        (429, format!("standby for partitions {PARTITION}\n").as_str())
    );
    let (code, json) = c.members[s].health("/health/ready?format=json");
    assert_eq!(code, 429, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["readiness"], "standby", "{json}");
    assert_eq!(v["partitions"][0]["standby"], true, "{json}");
    // For a load balancer that sends to any 2xx, a standby can count as up.
    assert_eq!(c.members[s].health("/health/ready?standbycode=200").0, 200);
    // The active members are ready, and the standby refuses keys.
    assert_eq!(c.members[0].health("/health/ready").0, 200);
    c.keys(s, &["list"]).expect_err("standby");
    // Every active member gone: the standby serves, and says so.
    c.members[0].kill9();
    c.members[1].kill9();
    let (code, body) = wait_ready(&c, s, Duration::from_secs(20), |code, _| code == 200);
    assert_eq!(
        (code, body.as_str()),
        (200, format!("serving partitions {PARTITION}\n").as_str())
    );
    assert!(c.wait(Duration::from_secs(10), || c.keys(s, &["list"]).ok));
}

#[test]
fn a_member_writes_json_lines_with_no_secret_when_asked() {
    let mut st = hahsm_it::Standalone::new();
    st.member.add_top_level("log_format = \"json\"");
    st.member.stop();
    let before = st.member.log().len();
    st.member.spawn();
    // Work that logs: a wrong PIN, a key, a signature.
    login_with_a_wrong_pin(&st);
    st.keys(&["gen", "--type", "ec:p256", "--label", "logged"])
        .expect_ok();
    st.member.stop();
    let log = st.member.log();
    let lines: Vec<&str> = log[before..].lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "too few lines: {lines:?}");
    let mut messages = Vec::new();
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(v["level"].is_string(), "{line}");
        messages.push(v["fields"]["message"].as_str().unwrap_or_default().to_string());
    }
    assert!(messages.iter().any(|m| m == "hahsmd ready"), "{messages:?}");
    assert!(
        messages.iter().any(|m| m.contains("login failed")),
        "{messages:?}"
    );
    for secret in [st.pin.as_str(), WRONG_PIN] {
        assert!(!log.contains(secret), "a PIN reached the log");
    }
}

/// SIGHUP reopens the log file (after logrotate moved it) and applies a
/// changed `log_level`.
#[test]
fn sighup_reopens_the_log_file_and_applies_the_log_level() {
    let mut st = hahsm_it::Standalone::new();
    let file = st.member.data_dir().join("hahsmd.log");
    st.member
        .add_top_level(&format!("log_file = \"{}\"", file.display()));
    st.member.stop();
    st.member.spawn();
    let wait_for = |path: &std::path::Path, needle: &str| {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if std::fs::read_to_string(path).unwrap_or_default().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    assert!(
        wait_for(&file, "hahsmd ready"),
        "the log file has no start-up line"
    );
    // logrotate moves the file away, then signals.
    let rotated = file.with_extension("log.1");
    std::fs::rename(&file, &rotated).unwrap();
    st.member.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        wait_for(&file, "configuration reloaded"),
        "no new log file after SIGHUP"
    );
    assert!(
        !std::fs::read_to_string(&rotated)
            .unwrap()
            .contains("configuration reloaded"),
        "the rotated file still gets the lines"
    );
    // Warnings only from now on.
    let text = std::fs::read_to_string(&st.member.config).unwrap();
    std::fs::write(
        &st.member.config,
        text.replacen("log_file", "log_level = \"warn\"\nlog_file", 1),
    )
    .unwrap();
    st.member.signal(nix::sys::signal::Signal::SIGHUP);
    let started = Instant::now();
    while std::fs::read_to_string(&file)
        .unwrap_or_default()
        .matches("configuration reloaded")
        .count()
        < 2
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the second SIGHUP was not applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    st.keys(&["gen", "--type", "aes:128", "--label", "quiet"])
        .expect_ok();
    login_with_a_wrong_pin(&st);
    assert!(wait_for(&file, "login failed"), "the warning was not logged");
    let log = std::fs::read_to_string(&file).unwrap();
    let after = &log[log.rfind("configuration reloaded").unwrap_or(0)..];
    assert!(
        !after.contains("secret key generated"),
        "an info line after the level went to warn:\n{after}"
    );
}
