//! The quorum lease and the clock-offset rules (docs/replication.md §7.1
//! and §8.1), on real members whose links run through the tests' proxies:
//! - under `quorum`, a member cut off from the majority stops using a key
//!   within the lease after the key was destroyed on the majority side, and
//!   no use of it succeeds after that;
//! - a member whose clock runs 5 s fast (libfaketime, wall clock only) takes
//!   no writes, is refused by its peers and alerted, so that a rename it was
//!   asked for earlier cannot override one acknowledged later.
use hahsm_it::cluster::{Cluster, Setup, GROUP};
use hahsm_it::proxy::Mode;
use hahsm_it::{alert_script, alerts_in, exec_alerts_config, libfaketime};
use std::path::Path;
use std::time::{Duration, Instant};

/// The lease the members of the lease test run with.
const LEASE: Duration = Duration::from_millis(2_000);

/// The environment that runs a process with its wall clock `offset` ahead
/// (a libfaketime offset such as "+5s") and its monotonic clock untouched.
fn fast_clock(offset: &str) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), libfaketime().display().to_string()),
        ("FAKETIME".into(), offset.into()),
        ("DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// The value of `field` in `hahsm keys show` output ("field   value").
fn field(shown: &str, name: &str) -> Option<String> {
    shown.lines().find_map(|l| {
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == name).then(|| v.trim().to_string())
    })
}

/// The label member `i` shows (through its own slot), if it holds the object.
fn label_on(c: &Cluster, i: usize, ouid: &str) -> Option<String> {
    let shown = c.keys(i, &["show", "--ouid", ouid]);
    shown.ok.then(|| field(&shown.stdout, "label")).flatten()
}

/// The cluster-unique id of the one object labelled `label`, from member `i`.
fn ouid_of(c: &Cluster, i: usize, label: &str) -> String {
    let shown = c.keys(i, &["show", "--label", label]).expect_ok().stdout;
    field(&shown, "unique-id").unwrap_or_else(|| panic!("no unique-id in:\n{shown}"))
}

#[test]
fn a_member_cut_off_from_the_majority_stops_signing_within_the_lease_after_a_destroy() {
    let tables = |_| format!("[replication]\nquorum_lease_ms = {}\n", LEASE.as_millis());
    let c = Cluster::with(
        3,
        &Setup {
            group_options: &["--quorum"],
            tables: Some(&tables),
            ..Setup::default()
        },
    );
    let data = c.work.path().join("data.bin");
    std::fs::write(&data, b"sign me").unwrap();
    let data = data.to_str().unwrap().to_string();
    let sign_on = |i: usize| {
        c.keys(
            i,
            &[
                "sign",
                "--label",
                "doomed",
                "--mech",
                "SHA256-HMAC",
                "--in",
                &data,
            ],
        )
    };
    c.keys(0, &["gen", "--type", "generic:256", "--label", "doomed"])
        .expect_ok();
    assert!(c.wait_in_sync(0, Duration::from_secs(15)), "{:?}", c.status(0));
    sign_on(2).expect_ok();

    // Member 2 is cut off from both peers; the key is destroyed on the
    // majority side, which holds the tombstone when the delete returns.
    c.isolate(2, Mode::Cut);
    c.keys(0, &["delete", "--label", "doomed"]).expect_ok();
    let destroyed = Instant::now();

    // Member 2 signs on, for at most the lease; then refuses, and never
    // signs again while it is cut off.
    let mut last_signed_from = None;
    let mut refusals = Vec::new();
    while destroyed.elapsed() < LEASE + Duration::from_secs(4) {
        let started = Instant::now();
        let r = sign_on(2);
        if r.ok {
            last_signed_from = Some(started);
        } else {
            refusals.push((started, r.stderr));
        }
    }
    if let Some(t) = last_signed_from {
        assert!(
            t < destroyed + LEASE,
            "member 2 signed with the destroyed key {:?} after the destroy returned, past the lease ({LEASE:?})",
            t - destroyed
        );
    }
    let after_lease: Vec<_> = refusals.iter().filter(|(t, _)| *t >= destroyed + LEASE).collect();
    assert!(
        !after_lease.is_empty(),
        "member 2 was never asked after the lease ran out"
    );
    for (t, why) in &after_lease {
        assert!(
            why.contains("lease"),
            "{:?} after the destroy member 2 refused, but not for its lease:\n{why}",
            *t - destroyed
        );
    }

    // Healed, it catches up: the key is gone there too, for good.
    c.heal_all();
    assert!(c.wait_in_sync(0, Duration::from_secs(20)), "{:?}", c.status(0));
    let gone = sign_on(2);
    assert!(
        !gone.ok,
        "member 2 signs with the destroyed key after it caught up"
    );
    assert!(!gone.stderr.contains("lease"), "{}", gone.stderr);
}

/// Member 2 of a 3-member group runs 5 s fast.
fn group_with_a_fast_member(tmp: &Path, concern: &[&str]) -> Cluster {
    let script = alert_script(tmp);
    let monitoring = |i| exec_alerts_config(&script, &tmp.join(format!("alerts{i}.log")), "");
    let env = |i| if i == 2 { fast_clock("+5s") } else { Vec::new() };
    Cluster::with(
        3,
        &Setup {
            group_options: concern,
            monitoring: Some(&monitoring),
            env: Some(&env),
            ..Setup::default()
        },
    )
}

/// The scenario an offset check must stop: the fast member is asked for a
/// rename first; a rename made on a good member after it is acknowledged;
/// the later one must stand on every member. Without the check, under
/// `all-reachable` with the fast member cut off (`cut_off`), it takes the
/// first rename, stamped 5 s ahead, which wins over the later one on every
/// member when the cut heals; under `quorum` it takes the rename too.
fn an_earlier_rename_on_the_fast_member_does_not_override_a_later_one(concern: &[&str], cut_off: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let c = group_with_a_fast_member(tmp.path(), concern);
    let fast = c.serials[2].to_string();

    // The peers measure member 2's clock, refuse it and raise the alert;
    // it sees that it is the one that is off.
    assert!(
        c.wait(Duration::from_secs(10), || {
            alerts_in(&tmp.path().join("alerts0.log")).iter().any(|l| {
                l.starts_with("clock-offset firing") && l.contains(&format!("member {fast}'s clock"))
            })
        }),
        "member 0 raised no clock-offset alert for member {fast}: {:?}",
        alerts_in(&tmp.path().join("alerts0.log"))
    );
    assert!(
        c.wait(Duration::from_secs(10), || {
            alerts_in(&tmp.path().join("alerts2.log"))
                .iter()
                .any(|l| l.starts_with("clock-offset firing") && l.contains("takes no writes"))
        }),
        "member 2 raised no alert about its own clock: {:?}",
        alerts_in(&tmp.path().join("alerts2.log"))
    );
    let status = c.status(0);
    let offset = status["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["serial"] == c.serials[2]))
        .and_then(|m| m["clock_offset_ms"].as_i64())
        .unwrap_or_else(|| panic!("no clock offset for member {fast}: {status}"));
    assert!(
        (4_500..5_500).contains(&offset),
        "member 2's offset as member 0 sees it: {offset} ms"
    );
    let shown = c.ha(0, &["show"]).expect_ok().stdout;
    assert!(shown.contains("CLOCK OFFSET:"), "{shown}");

    c.keys(0, &["gen", "--type", "aes:128", "--label", "original"])
        .expect_ok();
    assert!(c.wait_in_sync(0, Duration::from_secs(15)), "{:?}", c.status(0));
    let ouid = ouid_of(&c, 0, "original");

    // The fast member is asked first; it refuses for its clock (without the
    // check it would take the rename, stamped 5 s ahead). Cut off from the
    // others, it still knows its clock is off.
    if cut_off {
        c.isolate(2, Mode::Cut);
        assert!(
            c.wait(Duration::from_secs(10), || c.state_of(2, 0) == "down"),
            "{:?}",
            c.status(2)
        );
    }
    let first = c.keys(2, &["set-attr", "--ouid", &ouid, "--set", "label=earlier"]);
    let refused_for_its_clock =
        !first.ok && (first.stderr.contains("clock") || first.stdout.contains("clock"));
    // Then a good member takes a rename, acknowledged.
    c.keys(0, &["set-attr", "--ouid", &ouid, "--set", "label=later"])
        .expect_ok();
    c.heal_all();
    // Past the fast member's stamps, with every link back, the group agrees.
    std::thread::sleep(Duration::from_secs(6));
    c.ha(0, &["synchronize", "--group", GROUP]).expect_ok();
    assert!(c.wait_in_sync(0, Duration::from_secs(20)), "{:?}", c.status(0));
    for i in 0..3 {
        assert_eq!(
            label_on(&c, i, &ouid).as_deref(),
            Some("later"),
            "member {i}: the rename acknowledged last was overridden (the fast member's rename: ok={} {} {})",
            first.ok,
            first.stdout,
            first.stderr
        );
    }
    assert!(
        refused_for_its_clock,
        "the fast member did not refuse the rename for its clock:\nstdout: {}\nstderr: {}",
        first.stdout, first.stderr
    );
}

#[test]
fn a_member_5s_fast_is_refused_alerted_and_cannot_override_a_later_rename_all_reachable() {
    an_earlier_rename_on_the_fast_member_does_not_override_a_later_one(&[], true);
}

#[test]
fn a_member_5s_fast_is_refused_alerted_and_cannot_override_a_later_rename_quorum() {
    an_earlier_rename_on_the_fast_member_does_not_override_a_later_one(&["--quorum"], false);
}
