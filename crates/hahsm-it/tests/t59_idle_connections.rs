//! Idle connections across a firewall that forgets idle flows (issue 15,
//! item 7; nethsm-pkcs11 #156), on the bed of network namespaces: the
//! application's host sits behind a stateful firewall (nftables with
//! conntrack, made by the kernel) that forgets a TCP flow idle for 4 s and
//! then drops its packets without a word, as a corporate firewall or a cloud
//! NAT does after minutes. An application holds one logged-in session to
//! the HA slot and signs after long idle spells.
//!
//! - With the module's TCP keepalive off (`keepalive_ms = 0`), the firewall
//!   bites: after an idle spell the signature meets a dead connection, and
//!   the module has to give up on a member (or the call fails). This is the
//!   control: it shows the firewall forgets flows as the test means it to.
//! - With keepalive on (1 s here; 30 s by default, under the minutes such
//!   devices allow), the same session signs after each of three spells of
//!   10 s with no failure, and the module never gives up on a member.
//!
//! The members close a client connection that sends nothing for 6 s here
//! (`idle_timeout_ms`, 5 minutes by default), so each idle spell also ends
//! every connection under the session: a session and its login outlive the
//! connections they started on, as a session held for days must.
use hahsm_it::bed_group::{BedGroup, BedSetup};
use hahsm_it::bin;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the firewall remembers an idle flow.
const FORGETS_AFTER_S: u32 = 4;
/// The module's deadline per request in these runs.
const DEADLINE_MS: u64 = 2_000;

/// The group's client config with only the HA slot, this deadline and this
/// keepalive.
fn conf_with_keepalive(g: &BedGroup, keepalive_ms: u64) -> PathBuf {
    let text = std::fs::read_to_string(&g.conf).expect("the client config");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("request_timeout_ms") && !l.starts_with("keepalive_ms"))
        .collect();
    let path = g
        .work
        .path()
        .join(format!("client/keepalive-{keepalive_ms}.toml"));
    std::fs::write(
        &path,
        format!(
            "ha_only = true\nrequest_timeout_ms = {DEADLINE_MS}\nkeepalive_ms = {keepalive_ms}\n{}\n",
            kept.join("\n")
        ),
    )
    .expect("write the client config");
    path
}

struct Round {
    failures: u64,
    slowest_ms: u64,
    error: String,
}

/// Runs `idle_client` on the application host with `conf`; returns each
/// round's line and the module's log.
fn idle_client(g: &BedGroup, conf: &Path, log: &Path, idle_s: u32, rounds: u32) -> (Vec<Round>, String) {
    let idle = idle_s.to_string();
    let rounds_arg = rounds.to_string();
    let mut child = g
        .bed
        .command("app", &bin("examples/idle_client"))
        .args(["idle-key", &idle, &rounds_arg, "10"])
        .env("HAHSM_CONF", conf)
        .env("HAHSM_PIN", hahsm_it::cluster::PIN)
        .env("HAHSM_PKCS11_LOG", log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("idle_client starts (cargo build -p hahsm-it --examples)");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut found = Vec::new();
    for line in out.lines().map_while(Result::ok) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v.get("round").is_some() {
            found.push(Round {
                failures: v["failures"].as_u64().unwrap_or(u64::MAX),
                slowest_ms: v["slowest_ms"].as_u64().unwrap_or(u64::MAX),
                error: v["error"].as_str().unwrap_or_default().to_string(),
            });
        }
    }
    let status = child.wait().expect("idle_client ends");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).ok();
    assert!(status.success(), "idle_client: {status}\n{stderr}");
    assert_eq!(found.len(), rounds as usize, "a line per round\n{stderr}");
    (found, std::fs::read_to_string(log).unwrap_or_default())
}

/// What the module logs when it gives up on a member or a call.
fn gave_up(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("trying another member") || l.contains("failed on every member"))
        .collect()
}

#[test]
fn a_session_idle_behind_a_firewall_that_forgets_idle_flows_keeps_signing() {
    // The members log the connections they close for idleness at debug.
    let debug_closes = |_: &str| vec![("RUST_LOG".to_string(), "info,hahsmd::server=debug".to_string())];
    let g = BedGroup::new(&BedSetup {
        limits: "idle_timeout_ms = 6000",
        env: Some(&debug_closes),
        ..BedSetup::default()
    });
    g.app(&["keys", "gen", "--type", "ec:p256", "--label", "idle-key"])
        .expect_ok();
    g.wait_in_sync(Duration::from_secs(30));
    g.bed.forget_idle_flows("app", FORGETS_AFTER_S);

    // The control: no keepalive, one idle spell past the firewall's memory.
    let off = conf_with_keepalive(&g, 0);
    let (rounds, log) = idle_client(&g, &off, &g.work.path().join("off.log"), 10, 1);
    eprintln!(
        "keepalive off: {} of 10 signatures failed after the idle spell, slowest {} ms; \
         the module gave up {} times",
        rounds[0].failures,
        rounds[0].slowest_ms,
        gave_up(&log).len()
    );
    let bit = rounds[0].failures > 0 || !gave_up(&log).is_empty();
    assert!(
        bit,
        "without keepalive, nothing showed the firewall forgetting the idle connections \
         (slowest signature {} ms): the control does not control\n{log}",
        rounds[0].slowest_ms
    );

    // Keepalive each second: three spells of 10 s, 10 signatures after each.
    let closes = |g: &BedGroup| -> usize {
        g.members
            .iter()
            .map(|m| m.log().matches("closing idle connection").count())
            .sum()
    };
    let closed_before = closes(&g);
    let on = conf_with_keepalive(&g, 1_000);
    let (rounds, log) = idle_client(&g, &on, &g.work.path().join("on.log"), 10, 3);
    for (i, r) in rounds.iter().enumerate() {
        eprintln!(
            "keepalive on, round {}: slowest signature {} ms",
            i + 1,
            r.slowest_ms
        );
        assert_eq!(
            r.failures,
            0,
            "round {}: signatures failed after an idle spell with keepalive on: {}\n{log}",
            i + 1,
            r.error
        );
    }
    let gave_up = gave_up(&log);
    assert!(
        gave_up.is_empty(),
        "with keepalive on, the module still met dead connections:\n{}",
        gave_up.join("\n")
    );
    // The session outlived its connections: the members did close them.
    let closed = closes(&g) - closed_before;
    assert!(
        closed > 0,
        "no member closed an idle connection, so no session outlived one"
    );
    eprintln!("the members closed {closed} idle connections under the session");
}
