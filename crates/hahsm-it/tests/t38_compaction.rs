//! A bounded op log on real processes (issue 17, item 4). Three members
//! with a short log retention (3 s) and compaction after 1 s: member 2 is
//! cut off, both sides write (a destroy and a create on the majority, a
//! rename and a create on member 2), and every member compacts its whole log
//! past the others. When the links heal, neither side's log holds what the
//! other lacks, so each catches up from the other's snapshot: nothing
//! written on either side is lost, the destroyed key (live in member 2's
//! snapshot) stays destroyed, and the three converge. A fourth member that
//! joins afterwards catches up by snapshot too.
mod t20_pkcs11_support;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use hahsm_it::cluster::{Cluster, Setup, GROUP, PARTITION, PIN};
use hahsm_it::proxy::Mode;
use std::time::Duration;
use t20_pkcs11_support::module_path;

/// More than one snapshot page (1,000 states) of small data objects.
const OBJECTS: usize = 1_200;
const THREADS: usize = 8;

fn metric(c: &Cluster, i: usize, name: &str) -> u64 {
    let text = String::from_utf8(hahsm_it::http_get(&c.members[i].metrics_url())).expect("utf-8");
    let prefix = format!("{name}{{partition=\"{PARTITION}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in member {i}'s metrics:\n{text}"))
}

fn labels(c: &Cluster, i: usize) -> Vec<String> {
    let out = c.keys(i, &["list"]).expect_ok().stdout;
    out.split_whitespace().map(String::from).collect()
}

/// Makes `OBJECTS` token data objects through the HA slot, 8 threads at once.
fn bulk_objects(c: &Cluster) {
    std::env::set_var("HAHSM_CONF", &c.conf);
    let p11 = Pkcs11::new(module_path()).expect("load the module");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = p11
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| p11.get_token_info(*s).is_ok_and(|t| t.label() == GROUP))
        .expect("the HA slot");
    let login = p11.open_rw_session(slot).expect("session");
    login
        .login(UserType::User, Some(&AuthPin::new(PIN.to_string().into())))
        .expect("login");
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let p11 = &p11;
            scope.spawn(move || {
                let s = p11.open_rw_session(slot).expect("session");
                for k in (t..OBJECTS).step_by(THREADS) {
                    s.create_object(&[
                        Attribute::Class(ObjectClass::DATA),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Label(format!("bulk-{k}").into_bytes()),
                        Attribute::Value(vec![k as u8; 32]),
                    ])
                    .unwrap_or_else(|e| panic!("create bulk-{k}: {e}"));
                }
            });
        }
    });
    drop(login);
    p11.finalize().expect("C_Finalize");
}

#[test]
fn members_back_after_the_retention_catch_up_by_snapshot_with_nothing_lost_or_resurrected() {
    let tables = |_| "[replication]\nlog_retention_ms = 3000\ncompact_after_ms = 1000\n".to_string();
    let mut c = Cluster::with(
        3,
        &Setup {
            tables: Some(&tables),
            ..Setup::default()
        },
    );
    bulk_objects(&c);
    for label in ["kept", "doomed", "renamed-before"] {
        c.keys(0, &["gen", "--type", "aes:256", "--label", label])
            .expect_ok();
    }
    assert!(c.wait_in_sync(0, Duration::from_secs(60)), "{:#}", c.status(0));

    // Member 2 cut off; each side writes.
    c.isolate(2, Mode::Cut);
    assert!(
        c.wait(Duration::from_secs(15), || c.state_of(0, 2) == "down"
            && c.state_of(2, 0) == "down"),
        "the split was not seen"
    );
    c.keys(0, &["delete", "--label", "doomed"]).expect_ok();
    for k in 0..10 {
        c.keys(1, &["delete", "--label", &format!("bulk-{k}")])
            .expect_ok();
    }
    c.keys(
        1,
        &["gen", "--type", "aes:128", "--label", "made-on-the-majority"],
    )
    .expect_ok();
    c.keys(2, &["gen", "--type", "aes:128", "--label", "made-cut-off"])
        .expect_ok();
    c.keys(
        2,
        &[
            "set-attr",
            "--label",
            "renamed-before",
            "--set",
            "label=renamed-cut-off",
        ],
    )
    .expect_ok();

    // Past the retention, and a second after the last write, each member's
    // log is empty: everything is compacted, past what the other side lacks.
    assert!(
        c.wait(Duration::from_secs(30), || (0..3).all(|i| metric(
            &c,
            i,
            "hahsm_partition_log_entries"
        ) == 0)),
        "the logs were not compacted: {:?}",
        (0..3)
            .map(|i| metric(&c, i, "hahsm_partition_log_entries"))
            .collect::<Vec<_>>()
    );
    for i in 0..3 {
        assert!(
            metric(&c, i, "hahsm_partition_log_compacted") > OBJECTS as u64,
            "member {i}"
        );
        assert_eq!(
            metric(&c, i, "hahsm_partition_snapshots_installed"),
            0,
            "member {i}"
        );
    }

    c.heal_all();
    assert!(c.wait_in_sync(0, Duration::from_secs(60)), "{:#}", c.status(0));
    eprintln!(
        "after healing: snapshots installed {:?}, log compacted {:?}",
        (0..3)
            .map(|i| metric(&c, i, "hahsm_partition_snapshots_installed"))
            .collect::<Vec<_>>(),
        (0..3)
            .map(|i| metric(&c, i, "hahsm_partition_log_compacted"))
            .collect::<Vec<_>>()
    );
    // Member 2 caught up from a snapshot of 0 or 1, and one of them from 2's.
    assert!(metric(&c, 2, "hahsm_partition_snapshots_installed") >= 1);
    assert!(
        metric(&c, 0, "hahsm_partition_snapshots_installed")
            + metric(&c, 1, "hahsm_partition_snapshots_installed")
            >= 1
    );
    assert!(c.members[2].log().contains("caught up from a peer's snapshot"));
    for i in 0..3 {
        let have = labels(&c, i);
        let has = |l: &str| have.iter().any(|h| h == l);
        assert!(!has("doomed"), "member {i}: the destroyed key came back");
        assert!(!has("renamed-before"), "member {i}: the rename was lost");
        for l in ["kept", "made-on-the-majority", "made-cut-off", "renamed-cut-off"] {
            assert!(has(l), "member {i} lacks '{l}'");
        }
        for k in 0..10 {
            assert!(!has(&format!("bulk-{k}")), "member {i}: bulk-{k} came back");
        }
        let bulk = have.iter().filter(|l| l.starts_with("bulk-")).count();
        assert_eq!(bulk, OBJECTS - 10, "member {i}");
    }

    // A member that joins now: the group's logs hold nothing, so it catches
    // up from a snapshot, and holds what the others hold.
    let (domain, owner) = (c.domain_secret.clone(), c.owner_secret.clone());
    let j = c.add_appliance(3, &domain, &owner);
    c.so_login(j);
    c.ha(
        j,
        &[
            "prepare",
            "--partition",
            PARTITION,
            "--owner-secret",
            owner.to_str().unwrap(),
        ],
    )
    .expect_ok();
    c.add_member(j).expect_ok();
    assert!(c.wait_in_sync(0, Duration::from_secs(60)), "{:#}", c.status(0));
    assert!(metric(&c, j, "hahsm_partition_snapshots_installed") >= 1);
    assert_eq!(c.member_digests(0).len(), 1, "{:#}", c.status(0));
}
