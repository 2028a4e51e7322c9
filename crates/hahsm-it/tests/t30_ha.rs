//! HA groups on three real members, named after the report's tests (§3.4).
//! Faults are made for real: SIGKILL, SIGSTOP, and links cut or black-holed
//! by the proxies every member-to-member link runs through.
use hahsm_it::cluster::{Cluster, GROUP};
use hahsm_it::proxy::Mode;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// The attributes `keys show` prints, without the line that can differ.
fn shown(c: &Cluster, member: usize, label: &str) -> String {
    let out = c.keys(member, &["show", "--label", label]);
    assert!(
        out.ok,
        "member {member} lacks '{label}': {}{}",
        out.stdout, out.stderr
    );
    out.stdout
}

fn has_label(c: &Cluster, member: usize, label: &str) -> bool {
    let out = c.keys(member, &["list"]).expect_ok().stdout;
    out.split_whitespace().any(|w| w == label)
}

#[test]
fn t3_4_1_key_distribution_a_new_key_is_on_every_member_when_the_call_returns() {
    let c = Cluster::new(3);
    c.keys(0, &["gen", "--type", "aes:256", "--label", "dist"])
        .expect_ok();
    // No waiting: the write concern made every reachable member durable first.
    let reference = shown(&c, 0, "dist");
    for m in 1..3 {
        assert_eq!(shown(&c, m, "dist"), reference, "member {m} differs");
    }
    // And a key pair made on another member reaches the first.
    c.keys(2, &["gen", "--type", "ec:p256", "--label", "pair"])
        .expect_ok();
    assert!(has_label(&c, 0, "pair"));
    assert!(c.wait_in_sync(1, Duration::from_secs(5)));
}

#[test]
fn t3_4_2_failure_detection_a_stopped_member_is_reported_down_with_no_application_running() {
    let c = Cluster::new(3);
    c.members[2].signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    let serial = c.serials[2].to_string();
    let reported = c.wait(Duration::from_secs(6), || {
        c.ha_log(0)
            .lines()
            .any(|l| l.contains("HA group: haGroup has dropped member:") && l.ends_with(&serial))
    });
    let took = stopped.elapsed();
    assert!(reported, "member 0 never logged the drop:\n{}", c.ha_log(0));
    eprintln!("drop reported after {took:?}");
    assert_eq!(c.state_of(0, 2), "down");
    assert_eq!(c.status(0)["in_sync"], false);
    let json = std::fs::read_to_string(c.members[0].data_dir().join("ha.jsonl")).unwrap();
    assert!(json.contains("\"event\":\"dropped\""), "{json}");

    c.members[2].signal(Signal::SIGCONT);
    let back = c.wait(Duration::from_secs(8), || {
        c.ha_log(0)
            .lines()
            .any(|l| l.contains("succeeded for member:") && l.ends_with(&serial))
    });
    assert!(back, "no recovery line:\n{}", c.ha_log(0));
    assert!(c.wait_in_sync(0, Duration::from_secs(8)));
}

#[test]
fn t3_4_4_recovery_a_member_that_was_down_catches_up_with_no_client_running() {
    let mut c = Cluster::new(3);
    c.members[2].kill9();
    // A client creates a key while member 2 is down, and exits.
    c.keys(0, &["gen", "--type", "rsa:2048", "--label", "while-down"])
        .expect_ok();
    c.keys(1, &["gen", "--type", "aes:128", "--label", "also-while-down"])
        .expect_ok();
    // The operator sees which member is out of step.
    let serial = c.serials[2].to_string();
    assert!(c.wait(Duration::from_secs(6), || {
        let text = c.ha(0, &["show", "--sync-status"]).stdout;
        text.contains("in sync: NO") && text.contains(&format!("member {serial} (hsm2) is down"))
    }));
    // Member 2 restarts; no client runs; the group heals by itself.
    c.members[2].spawn();
    assert!(c.wait_in_sync(0, Duration::from_secs(15)), "{:#}", c.status(0));
    assert_eq!(shown(&c, 2, "also-while-down"), shown(&c, 0, "also-while-down"));
    assert!(has_label(&c, 2, "while-down"));
    // The recovered member serves the replicated private key.
    let data = c.work.path().join("d");
    std::fs::write(&data, b"x").unwrap();
    let sig = c.work.path().join("sig");
    c.keys(
        2,
        &[
            "sign",
            "--label",
            "while-down",
            "--mech",
            "SHA256-RSA-PKCS",
            "--in",
            data.to_str().unwrap(),
            "--out",
            sig.to_str().unwrap(),
        ],
    )
    .expect_ok();
    c.keys(
        0,
        &[
            "verify",
            "--label",
            "while-down",
            "--mech",
            "SHA256-RSA-PKCS",
            "--in",
            data.to_str().unwrap(),
            "--signature",
            sig.to_str().unwrap(),
        ],
    )
    .expect_ok();
}

#[test]
fn t3_4_5_attribute_change_a_rename_made_while_a_member_is_offline_reaches_it() {
    let mut c = Cluster::new(3);
    c.keys(0, &["gen", "--type", "aes:256", "--label", "old-name"])
        .expect_ok();
    c.members[1].kill9();
    c.keys(
        0,
        &[
            "set-attr",
            "--label",
            "old-name",
            "--set",
            "label=new-name",
            "--set",
            "id=0a0b",
        ],
    )
    .expect_ok();
    c.members[1].spawn();
    assert!(c.wait_in_sync(0, Duration::from_secs(15)), "{:#}", c.status(0));
    for m in 0..3 {
        assert!(has_label(&c, m, "new-name"), "member {m} kept the old label");
        assert!(!has_label(&c, m, "old-name"));
    }
    assert_eq!(shown(&c, 1, "new-name"), shown(&c, 0, "new-name"));
}

#[test]
fn t3_4_6_split_brain_create_objects_made_on_both_sides_all_survive() {
    let c = Cluster::new(3);
    c.isolate(2, Mode::Cut);
    c.keys(0, &["gen", "--type", "aes:128", "--label", "left"])
        .expect_ok();
    c.keys(2, &["gen", "--type", "aes:128", "--label", "right"])
        .expect_ok();
    assert!(!has_label(&c, 2, "left"));
    c.heal_all();
    assert!(c.wait_in_sync(0, Duration::from_secs(15)), "{:#}", c.status(0));
    for m in 0..3 {
        assert!(
            has_label(&c, m, "left") && has_label(&c, m, "right"),
            "member {m} lost an object"
        );
    }
}

#[test]
fn t3_4_7_split_brain_delete_deleted_objects_stay_deleted_even_after_synchronize() {
    let c = Cluster::new(3);
    c.keys(0, &["gen", "--type", "aes:128", "--label", "doomed"])
        .expect_ok();
    c.keys(
        0,
        &["gen", "--type", "aes:128", "--label", "renamed-then-deleted"],
    )
    .expect_ok();
    c.isolate(2, Mode::Cut);
    // Deleted on one side of the split, changed on the other.
    c.keys(2, &["delete", "--label", "doomed"]).expect_ok();
    c.keys(0, &["set-attr", "--label", "doomed", "--set", "label=doomed-2"])
        .expect_ok();
    c.keys(0, &["delete", "--label", "renamed-then-deleted"])
        .expect_ok();
    c.keys(
        2,
        &[
            "set-attr",
            "--label",
            "renamed-then-deleted",
            "--set",
            "label=zombie",
        ],
    )
    .expect_ok();
    c.heal_all();
    assert!(c.wait_in_sync(0, Duration::from_secs(15)), "{:#}", c.status(0));
    c.ha(0, &["synchronize", "--group", GROUP]).expect_ok();
    c.ha(2, &["synchronize", "--group", GROUP]).expect_ok();
    for m in 0..3 {
        for gone in ["doomed", "doomed-2", "renamed-then-deleted", "zombie"] {
            assert!(!has_label(&c, m, gone), "'{gone}' came back on member {m}");
        }
    }
    assert!(c.wait_in_sync(1, Duration::from_secs(5)));
}

#[test]
fn t3_4_11_a_stopped_member_does_not_stall_key_generation() {
    let c = Cluster::new(3);
    c.members[2].signal(Signal::SIGSTOP);
    let started = Instant::now();
    for i in 0..8 {
        let t = Instant::now();
        c.keys(0, &["gen", "--type", "aes:128", "--label", &format!("slow-{i}")])
            .expect_ok();
        // Bounded by the replication timeout (2 s), never a stall.
        assert!(
            t.elapsed() < Duration::from_secs(6),
            "key generation {i} took {:?}",
            t.elapsed()
        );
    }
    eprintln!(
        "8 key generations with a stopped member took {:?}",
        started.elapsed()
    );
    c.members[2].signal(Signal::SIGCONT);
    assert!(c.wait_in_sync(0, Duration::from_secs(15)), "{:#}", c.status(0));
    assert!(has_label(&c, 2, "slow-7"));
}

#[test]
fn t3_4_3_black_holed_member_costs_a_deadline_not_a_hang() {
    let c = Cluster::new(3);
    c.isolate(1, Mode::BlackHole);
    let t = Instant::now();
    c.keys(0, &["gen", "--type", "aes:128", "--label", "bh"])
        .expect_ok();
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "a black hole stalled the write: {:?}",
        t.elapsed()
    );
    assert!(
        c.wait(Duration::from_secs(6), || c.state_of(0, 1) == "down"),
        "{:#}",
        c.status(0)
    );
    c.heal_all();
    assert!(c.wait_in_sync(0, Duration::from_secs(15)), "{:#}", c.status(0));
    assert!(has_label(&c, 1, "bh"));
}

/// Starts a fresh appliance with the given secrets and prepares its partition.
fn candidate(c: &mut Cluster, domain: &std::path::Path, owner: &std::path::Path) -> usize {
    let j = c.add_appliance(c.members.len(), domain, owner);
    c.so_login(j);
    c.ha(
        j,
        &[
            "prepare",
            "--partition",
            hahsm_it::cluster::PARTITION,
            "--owner-secret",
            owner.to_str().unwrap(),
        ],
    )
    .expect_ok();
    j
}

/// `ha add-member` for appliance `j`, run on member 0, straight to its peer listener.
fn add_candidate(c: &Cluster, j: usize) -> hahsm_it::Run {
    let fp = c.fingerprints[j].clone();
    c.ha(
        0,
        &[
            "add-member",
            "--group",
            GROUP,
            "--address",
            &c.members[j].peer_address,
            "--fingerprint",
            &fp,
        ],
    )
}

fn member_count(c: &Cluster) -> usize {
    c.status(0)["members"].as_array().map(Vec::len).unwrap_or(0)
}

#[test]
fn t3_4_12_a_member_of_another_cloning_domain_is_refused_when_added() {
    let mut c = Cluster::new(2);
    let other_domain = c.work.path().join("secrets/other-domain.key");
    let owner = c.owner_secret.clone();
    let j = candidate(&mut c, &other_domain, &owner);
    let out = add_candidate(&c, j).expect_err("different cloning-domain secret");
    assert!(
        !out.stderr.contains("partition-owner"),
        "only the domain differs: {}",
        out.stderr
    );
    assert_eq!(member_count(&c), 2);
}

#[test]
fn t3_4_13_a_member_with_another_partition_owner_secret_is_refused_when_added() {
    let mut c = Cluster::new(2);
    let other_owner = c.work.path().join("secrets/other-owner.key");
    let domain = c.domain_secret.clone();
    let j = candidate(&mut c, &domain, &other_owner);
    let out = add_candidate(&c, j).expect_err("different partition-owner secret");
    assert!(
        !out.stderr.contains("cloning-domain"),
        "only the owner secret differs: {}",
        out.stderr
    );
    assert_eq!(member_count(&c), 2);
}

#[test]
fn a_rogue_domain_custodian_cannot_join_nor_pull_a_single_object() {
    use hahsm_proto::peer::{PeerRequest, PeerRequestFrame, PeerResponseFrame};
    let mut c = Cluster::new(2);
    c.keys(0, &["gen", "--type", "aes:256", "--label", "crown-jewels"])
        .expect_ok();
    // The custodian of the red key builds a fresh HSM with it, and a partition
    // of the same name with an owner secret of their own.
    let rogue_owner = c.work.path().join("secrets/rogue-owner.key");
    let domain = c.domain_secret.clone();
    let r = candidate(&mut c, &domain, &rogue_owner);
    add_candidate(&c, r).expect_err("different partition-owner secret");
    // Asking a member directly for the group's operations fails too.
    let group_id: [u8; 16] = hex::decode(c.status(0)["id"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let data = c.members[r].data_dir();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answer = rt.block_on(async {
        let identity = hahsm_link::load_identity(&data.join("server.pem"), &data.join("server.key")).unwrap();
        let pinned = hahsm_link::Fingerprint::parse(&c.fingerprints[0]).unwrap();
        let tls = hahsm_link::client_config(identity, pinned).unwrap();
        let t = Duration::from_secs(3);
        let mut s = hahsm_link::connect(&c.members[0].peer_address, tls, t, t)
            .await
            .unwrap();
        let pull = PeerRequest::Pull {
            group_id,
            origin: c.serials[0],
            after_seq: 0,
            limit: 100,
        };
        let frame = PeerRequestFrame {
            id: 1,
            deadline_ms: 2000,
            request: pull,
        };
        hahsm_link::write_frame(&mut s, &hahsm_proto::encode(&frame))
            .await
            .unwrap();
        let bytes = hahsm_link::read_frame(&mut s, 1 << 24).await.unwrap().unwrap();
        hahsm_proto::decode::<PeerResponseFrame>(&bytes).unwrap().result
    });
    let err = answer.expect_err("a non-member must not pull operations");
    assert!(err.message.contains("not a member"), "{err:?}");
    // The rogue's partition holds nothing of the group's.
    let rogue = c.admin(r, &["partition", "list"]).expect_ok().stdout;
    let objects: Vec<&str> = rogue
        .lines()
        .filter(|l| l.starts_with("haPart"))
        .flat_map(|l| l.split_whitespace().nth(4))
        .collect();
    assert_eq!(objects, vec!["0"], "{rogue}");
    assert!(c.members[0].log().contains("refused a peer that is not a member"));
}

#[test]
fn a_standby_member_receives_every_object_but_serves_only_when_the_active_members_are_gone() {
    let mut c = Cluster::new(2);
    let domain = c.domain_secret.clone();
    let owner = c.owner_secret.clone();
    let s = candidate(&mut c, &domain, &owner);
    c.ha(
        0,
        &[
            "add-standby",
            "--group",
            GROUP,
            "--address",
            &c.members[s].peer_address,
            "--fingerprint",
            &c.fingerprints[s],
        ],
    )
    .expect_ok();
    // Register the client on the standby too.
    let cert = c.conf.with_file_name("app1.pem");
    c.admin(
        s,
        &[
            "client",
            "register",
            "--client",
            "app1",
            "--cert",
            cert.to_str().unwrap(),
        ],
    )
    .expect_ok();
    c.admin(
        s,
        &[
            "client",
            "assign-partition",
            "--client",
            "app1",
            "--partition",
            hahsm_it::cluster::PARTITION,
        ],
    )
    .expect_ok();
    let name = format!("hsm{s}");
    hahsm_it::hahsm(
        Some(&c.conf),
        &[
            "client",
            "add-server",
            "--name",
            &name,
            "--address",
            &c.members[s].address,
            "--fingerprint",
            &c.fingerprints[s],
        ],
    )
    .expect_ok();
    c.keys(0, &["gen", "--type", "aes:128", "--label", "for-standby"])
        .expect_ok();
    assert!(
        c.wait(Duration::from_secs(8), || c.state_of(0, s) == "standby"),
        "{:#}",
        c.status(0)
    );
    assert!(c.wait_in_sync(0, Duration::from_secs(8)), "{:#}", c.status(0));
    c.keys(s, &["list"]).expect_err("standby");
    // Every active member gone: the standby serves, with everything it received.
    c.members[0].kill9();
    c.members[1].kill9();
    assert!(c.wait(Duration::from_secs(8), || c.keys(s, &["list"]).ok));
    assert!(has_label(&c, s, "for-standby"));
}

#[test]
fn t3_4_11_a_slowed_link_does_not_stall_key_generation() {
    let c = Cluster::new(3);
    for j in [0, 1] {
        c.proxies[&(j, 2)].set_delay(Duration::from_millis(2500));
        c.proxies[&(2, j)].set_delay(Duration::from_millis(2500));
    }
    for i in 0..6 {
        let t = Instant::now();
        c.keys(
            0,
            &["gen", "--type", "aes:128", "--label", &format!("slowed-{i}")],
        )
        .expect_ok();
        assert!(
            t.elapsed() < Duration::from_secs(6),
            "key generation {i} took {:?}",
            t.elapsed()
        );
    }
    for j in [0, 1] {
        c.proxies[&(j, 2)].set_delay(Duration::ZERO);
        c.proxies[&(2, j)].set_delay(Duration::ZERO);
    }
    assert!(c.wait_in_sync(0, Duration::from_secs(20)), "{:#}", c.status(0));
    assert!(has_label(&c, 2, "slowed-5"));
}

#[test]
fn quorum_write_concern_refuses_writes_on_the_minority_side_of_a_split() {
    let c = Cluster::with_group_options(3, &["--quorum"]);
    c.isolate(0, Mode::Cut);
    // Once member 0 sees both peers down, it is a minority and refuses writes.
    assert!(c.wait(Duration::from_secs(8), || c.state_of(0, 1) == "down"
        && c.state_of(0, 2) == "down"));
    c.keys(0, &["gen", "--type", "aes:128", "--label", "minority"])
        .expect_err("quorum");
    // The majority side keeps working.
    c.keys(1, &["gen", "--type", "aes:128", "--label", "majority"])
        .expect_ok();
    c.heal_all();
    assert!(c.wait_in_sync(0, Duration::from_secs(15)), "{:#}", c.status(0));
    assert!(has_label(&c, 0, "majority"));
    assert!(!has_label(&c, 1, "minority"));
}

/// A member whose links to its peers were just black-holed does not know it
/// yet (nothing has failed so far), so it makes the write; but it must not
/// acknowledge a write that only it holds: under the quorum write concern an
/// acknowledgement means a majority has the write, so the write survives the
/// loss of that member.
#[test]
fn quorum_acknowledges_a_write_only_once_a_majority_holds_it() {
    let c = Cluster::with_group_options(3, &["--quorum"]);
    c.isolate(0, Mode::BlackHole);
    c.keys(0, &["gen", "--type", "aes:128", "--label", "held-by-one"])
        .expect_err("only 1 of 3 members confirmed it");
    // The majority side never saw it; it stays on member 0 …
    assert!(!has_label(&c, 1, "held-by-one"));
    assert!(has_label(&c, 0, "held-by-one"));
    // … and reaches the others once the link is back (its outcome was unknown).
    c.heal_all();
    assert!(c.wait(Duration::from_secs(15), || has_label(&c, 1, "held-by-one")));
    // A connected member's writes are acknowledged as usual.
    c.keys(1, &["gen", "--type", "aes:128", "--label", "held-by-all"])
        .expect_ok();
    assert!(has_label(&c, 2, "held-by-all"));
}

/// A write refused because no majority confirmed it stays on its member;
/// the same write sent again (same operation id) to that member must meet the
/// write concern too, not be answered from the member's log alone.
#[test]
fn a_refused_write_sent_again_to_the_same_member_is_refused_again() {
    use hahsm_proto::client::{Request, USER_NORMAL};
    use hahsm_token::{ck, AttrValue, Mechanism, Template};
    let c = Cluster::with_group_options(3, &["--quorum"]);
    c.isolate(0, Mode::BlackHole);
    let config = hahsm_client::ClientConfig::load(&c.conf).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = hahsm_client::MemberConnection::connect(&config, &config.servers[0])
            .await
            .unwrap();
        conn.call(Request::Login {
            partition: hahsm_it::cluster::PARTITION.into(),
            user_type: USER_NORMAL,
            pin: hahsm_proto::Secret::from(hahsm_it::cluster::PIN),
        })
        .await
        .expect("logs in");
        let op_id = hahsm_client::connection::new_op_id();
        let keygen = || Request::GenerateKey {
            partition: hahsm_it::cluster::PARTITION.into(),
            mechanism: Mechanism::new(ck::CKM_AES_KEY_GEN),
            template: Template::new()
                .with(ck::CKA_TOKEN, AttrValue::Bool(true))
                .with(ck::CKA_VALUE_LEN, AttrValue::Ulong(16)),
            op_id,
        };
        for attempt in ["first", "second"] {
            match conn.call(keygen()).await {
                Err(hahsm_client::ClientError::Remote(e)) => assert_eq!(
                    e.code,
                    hahsm_token::error::CKR_NO_QUORUM,
                    "{attempt} attempt: {}",
                    e.message
                ),
                other => panic!("{attempt} attempt was not refused: {other:?}"),
            }
        }
    });
}

#[test]
fn a_removed_member_can_no_longer_write_into_the_group() {
    let c = Cluster::new(3);
    let serial = c.serials[2].to_string();
    c.ha(0, &["remove-member", "--group", GROUP, "--serial", &serial])
        .expect_ok();
    assert_eq!(member_count(&c), 2);
    // It still serves its own copy, but what it writes stays with it.
    c.keys(2, &["gen", "--type", "aes:128", "--label", "from-removed"])
        .expect_ok();
    c.keys(0, &["gen", "--type", "aes:128", "--label", "after-removal"])
        .expect_ok();
    std::thread::sleep(Duration::from_secs(3));
    assert!(!has_label(&c, 0, "from-removed"));
    assert!(!has_label(&c, 2, "after-removal"));
    assert!(c.wait_in_sync(0, Duration::from_secs(5)), "{:#}", c.status(0));
}

#[test]
fn a_client_learns_the_whole_group_from_any_one_member() {
    use hahsm_proto::client::{Request, Response};
    let c = Cluster::new(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let config = hahsm_client::ClientConfig::load(&c.conf).unwrap();
    let group = rt.block_on(async {
        // Ask the last member: it was added, not the group's creator.
        let conn = hahsm_client::MemberConnection::connect(&config, &config.servers[2])
            .await
            .unwrap();
        match conn
            .call(Request::GetGroup {
                partition: hahsm_it::cluster::PARTITION.into(),
            })
            .await
            .unwrap()
        {
            Response::Group(Some(g)) => g,
            other => panic!("{other:?}"),
        }
    });
    assert_eq!(group.label, GROUP);
    assert_eq!(group.members.len(), 3);
    for (i, m) in c.members.iter().enumerate() {
        let entry = group.member(c.serials[i]).expect("every member is listed");
        assert_eq!(entry.client_address, m.address);
        assert_eq!(entry.fingerprint, c.fingerprints[i]);
    }
}
