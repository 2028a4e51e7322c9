//! Custody on real members: the hash-chained journal of administrative actions
//! (report table 5.1), M-of-N shares of the domain secret (§5.1.3), and
//! encrypted backups restored into a running group.
use hahsm_it::cluster::{
    fresh_member_in_domain, restore, serve_client, set_up_for_ha, Cluster, GROUP, PARTITION, PIN,
};
use hahsm_it::{hahsm, Member, Run};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `hahsm journal ARGS… --socket <each member>`.
fn journal(c: &Cluster, args: &[&str]) -> Run {
    let sockets: Vec<PathBuf> = c.members.iter().map(Member::admin_socket).collect();
    let mut full = vec!["journal"];
    full.extend_from_slice(args);
    for socket in &sockets {
        full.extend_from_slice(&["--socket", s(socket)]);
    }
    hahsm(None, &full)
}

fn has_label(c: &Cluster, member: usize, label: &str) -> bool {
    let out = c.keys(member, &["list"]).expect_ok().stdout;
    out.split_whitespace().any(|w| w == label)
}

/// The row of the merged journal whose action is `action`.
fn row<'a>(table: &'a serde_json::Value, action: &str) -> &'a serde_json::Value {
    table["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["action"] == action))
        .unwrap_or_else(|| panic!("no row '{action}' in {table:#}"))
}

#[test]
fn the_journal_records_every_admin_action_and_verify_catches_edits_deletions_and_reorders() {
    let c = Cluster::new(2);
    // Done on one member only: the journal must show it pending on the other.
    c.admin(
        0,
        &[
            "partition",
            "change-policy",
            "--partition",
            PARTITION,
            "--policy",
            "15",
            "--value",
            "5",
        ],
    )
    .expect_ok();
    // A refused attempt is journaled too.
    let wrong_so = c.work.path().join("secrets/wrong-so.key");
    std::fs::write(&wrong_so, format!("{}\n", "5a".repeat(32))).unwrap();
    std::fs::set_permissions(&wrong_so, std::fs::Permissions::from_mode(0o600)).unwrap();
    c.admin(1, &["hsm", "login", "--so-secret", s(&wrong_so)])
        .expect_err("SO secret is wrong");

    // Refused wherever it was tried: refused, and not pending anywhere.
    c.admin(
        1,
        &[
            "partition",
            "change-policy",
            "--partition",
            "nope",
            "--policy",
            "15",
            "--value",
            "3",
        ],
    )
    .expect_err("no partition named 'nope'");
    let out = journal(&c, &["--json"]).expect_ok();
    let table: serde_json::Value = serde_json::from_str(&out.stdout).expect("journal --json");
    let policy = row(&table, "PartitionChangePolicy partition haPart policy 15 = 5");
    assert_eq!(policy["members"]["hsm0"], "done", "{policy:#}");
    assert_eq!(policy["members"]["hsm1"], "pending", "{policy:#}");
    assert_eq!(policy["complete"], false);
    assert!(
        table["pending"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("policy 15 = 5: to be done on hsm1")),
        "{table:#}"
    );
    let nope = row(&table, "PartitionChangePolicy partition nope policy 15 = 3");
    assert_eq!(nope["members"]["hsm0"], "not-needed", "{nope:#}");
    assert_eq!(nope["members"]["hsm1"], "refused", "{nope:#}");
    let assign = row(&table, "ClientAssignPartition client app1 partition haPart");
    assert_eq!(assign["members"]["hsm0"], "done");
    assert_eq!(assign["members"]["hsm1"], "done");
    assert_eq!(assign["clients"]["app1"], "done");
    assert_eq!(assign["complete"], true);
    let group = row(&table, "HaCreateGroup group haGroup");
    assert_eq!(group["members"]["hsm1"], "not-needed");
    let refused = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "HsmLogin hsm" && r["members"]["hsm1"] == "refused")
        .unwrap_or_else(|| panic!("the refused login is not in {table:#}"));
    assert_eq!(refused["complete"], false);
    assert!(refused["notes"].as_str().unwrap().contains("SO secret is wrong"));
    // The join, journaled on the new member as a peer's action with its certificate.
    let data1 = c.members[1].data_dir();
    let text1 = std::fs::read_to_string(data1.join("journal.jsonl")).unwrap();
    let join = text1
        .lines()
        .find(|l| l.contains("\"action\":\"HaJoinConfirm\""))
        .expect("the join is journaled on the member that joined");
    assert!(
        join.contains("\"role\":\"peer\"") && join.contains(&c.fingerprints[0]),
        "{join}"
    );
    assert!(
        text1.contains("refused: SO login refused"),
        "the refused login is journaled"
    );
    // The text table says the same.
    let text = journal(&c, &[]).expect_ok().stdout;
    assert!(text.contains("to be done on hsm1"), "{text}");

    // No secret in any journal: PINs, secret files, the SO secrets.
    let mut secrets = vec![PIN.to_string()];
    for f in [&c.domain_secret, &c.owner_secret] {
        secrets.push(std::fs::read_to_string(f).unwrap().trim().to_string());
    }
    for m in &c.members {
        secrets.push(
            std::fs::read_to_string(m.dir.join("so.key"))
                .unwrap()
                .trim()
                .to_string(),
        );
    }
    for m in &c.members {
        let text = std::fs::read_to_string(m.data_dir().join("journal.jsonl")).unwrap();
        assert!(text.contains("<redacted>"), "secrets are shown redacted");
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "a secret reached the journal");
            assert!(
                !text.contains(&secret.to_uppercase()),
                "a secret reached the journal"
            );
        }
    }

    let ok = journal(&c, &["verify"]).expect_ok().stdout;
    assert_eq!(ok.matches("chain intact").count(), 2, "{ok}");

    // Tamper with member 1's journal on disk, one way at a time.
    let path = data1.join("journal.jsonl");
    let original = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.len() >= 4, "{original}");
    let rejoin = |ls: &[&str]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();

    let mut flipped = original.clone().into_bytes();
    let at = lines[0].len() + 1 + lines[1].len() + 1 + lines[2].len() / 2;
    flipped[at] ^= 0x01;
    std::fs::write(&path, &flipped).unwrap();
    let out = journal(&c, &["verify"]).expect_err("failed verification");
    assert!(out.stdout.contains("line 3"), "a flipped byte: {}", out.stdout);

    let mut deleted = lines.clone();
    deleted.remove(1);
    std::fs::write(&path, rejoin(&deleted)).unwrap();
    let out = journal(&c, &["verify"]).expect_err("failed verification");
    assert!(out.stdout.contains("removed"), "a deleted line: {}", out.stdout);

    let mut reordered = lines.clone();
    reordered.swap(1, 2);
    std::fs::write(&path, rejoin(&reordered)).unwrap();
    let out = journal(&c, &["verify"]).expect_err("failed verification");
    assert!(
        out.stdout.contains("reordered"),
        "a reordered pair: {}",
        out.stdout
    );

    std::fs::write(&path, rejoin(&lines[..lines.len() - 1])).unwrap();
    let out = journal(&c, &["verify"]).expect_err("failed verification");
    assert!(
        out.stdout.contains("removed from its end"),
        "a cut tail: {}",
        out.stdout
    );

    std::fs::write(&path, &original).unwrap();
    journal(&c, &["verify"]).expect_ok();
}

/// A fresh member initialised into the domain with `domain_args`, SO logged
/// in, with the HA policies, and partition `haPart` activated and prepared.
fn member(work: &Path, label: &str, domain_args: &[&str], owner: &Path) -> (Member, String) {
    let m = Member::start_peer(&work.join(label));
    let so = m.dir.join("so.key");
    set_up_for_ha(&m, label, &so, domain_args, owner);
    ha(
        &m,
        &["prepare", "--partition", PARTITION, "--owner-secret", s(owner)],
    )
    .expect_ok();
    let fp = m.fingerprint();
    (m, fp)
}

fn ha(m: &Member, args: &[&str]) -> Run {
    let socket = m.admin_socket();
    let mut full = vec!["ha", "--socket", s(&socket)];
    full.extend_from_slice(args);
    hahsm(None, &full)
}

fn write_secret(path: &Path, byte: u8) {
    std::fs::write(path, format!("{}\n", hex::encode([byte; 32]))).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn split(secret: &Path, out: &Path) -> Vec<PathBuf> {
    hahsm(
        None,
        &[
            "domain",
            "split",
            "--domain-secret",
            s(secret),
            "--shares",
            "3",
            "--threshold",
            "2",
            "--out-dir",
            s(out),
        ],
    )
    .expect_ok();
    (1..=3)
        .map(|i| out.join(format!("domain-share-{i}-of-3.key")))
        .collect()
}

#[test]
fn m_of_n_shares_initialise_members_add_them_and_restore_fewer_repeated_or_foreign_shares_fail() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (domain, other, owner) = (w.join("domain.key"), w.join("other.key"), w.join("owner.key"));
    write_secret(&domain, 0x3c);
    write_secret(&other, 0x77);
    write_secret(&owner, 0x11);
    let shares = split(&domain, &w.join("shares"));
    let foreign = split(&other, &w.join("other-shares"));
    assert!(!domain.exists(), "no whole domain secret remains after the split");
    for sh in &shares {
        let mode = std::fs::metadata(sh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", sh.display());
    }
    let (s1, s2, s3) = (s(&shares[0]), s(&shares[1]), s(&shares[2]));
    let mut damaged = std::fs::read_to_string(&shares[1]).unwrap();
    let last = damaged.trim_end().len() - 1;
    let flip = if &damaged[last..last + 1] == "0" { "1" } else { "0" };
    damaged.replace_range(last..last + 1, flip);
    let damaged_path = w.join("damaged.key");
    std::fs::write(&damaged_path, damaged).unwrap();
    std::fs::set_permissions(&damaged_path, std::fs::Permissions::from_mode(0o600)).unwrap();

    let m = Member::start_peer(&w.join("probe"));
    let so = m.dir.join("so.key");
    let init = |shares: &[&str]| {
        let mut args = vec!["hsm", "init", "--label", "probe", "--so-secret", s(&so)];
        for sh in shares {
            args.extend_from_slice(&["--share", sh]);
        }
        m.admin(&args)
    };
    init(&[s1]).expect_err("1 share(s) given, but this split needs 2");
    init(&[s1, s1]).expect_err("given twice");
    init(&[s1, s(&foreign[1])]).expect_err("another split");
    init(&[s1, s(&damaged_path)]).expect_err("damaged");
    assert!(m
        .admin(&["status"])
        .expect_ok()
        .stdout
        .contains("not initialized"));
    init(&[s3, s1]).expect_ok();
    drop(m);

    // A group whose members were initialised from shares: adding a member
    // needs M shares at the console.
    let (m0, _) = member(w, "hsm0", &["--share", s1, "--share", s2], &owner);
    let (m1, fp1) = member(w, "hsm1", &["--share", s2, "--share", s3], &owner);
    ha(&m0, &["create-group", "--label", GROUP, "--partition", PARTITION]).expect_ok();
    let add = |extra: &[&str]| {
        let mut args = vec![
            "add-member",
            "--group",
            GROUP,
            "--address",
            &m1.peer_address,
            "--fingerprint",
            &fp1,
        ];
        args.extend_from_slice(extra);
        ha(&m0, &args)
    };
    add(&[]).expect_err("needs the domain custodians");
    add(&["--share", s2]).expect_err("1 share(s) given, but this split needs 2");
    add(&["--share", s2, "--share", s(&foreign[0])]).expect_err("another split");
    add(&["--share", s(&foreign[0]), "--share", s(&foreign[2])])
        .expect_err("not this member's cloning domain");
    add(&["--share", s1, "--share", s3]).expect_ok();
    let in_sync = || {
        let out = ha(&m0, &["show", "--sync-status", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out.stdout).is_ok_and(|v| v["in_sync"] == true)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !in_sync() {
        assert!(
            std::time::Instant::now() < deadline,
            "the group never got in sync"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Backups and restores need M shares too.
    let bak = w.join("haPart.bak");
    let backup = |shares: &[&str]| {
        let socket = m0.admin_socket();
        let mut args = vec![
            "backup",
            "--socket",
            s(&socket),
            "--partition",
            PARTITION,
            "--owner-secret",
            s(&owner),
            "--out",
            s(&bak),
        ];
        for sh in shares {
            args.extend_from_slice(&["--share", sh]);
        }
        hahsm(None, &args)
    };
    backup(&[s1]).expect_err("needs 2");
    backup(&[s1, s2]).expect_ok();
    let restore = |shares: &[&str]| {
        let socket = m1.admin_socket();
        let mut args = vec![
            "restore",
            "--socket",
            s(&socket),
            "--partition",
            "copy",
            "--owner-secret",
            s(&owner),
            "--file",
            s(&bak),
        ];
        for sh in shares {
            args.extend_from_slice(&["--share", sh]);
        }
        hahsm(None, &args)
    };
    restore(&[s3]).expect_err("needs 2");
    restore(&[s2, s(&foreign[1])]).expect_err("another split");
    restore(&[s2, s3]).expect_ok();
}

#[test]
fn a_backup_restores_into_the_running_group_converges_and_keeps_deleted_keys_deleted() {
    let mut c = Cluster::new(2);
    c.keys(0, &["gen", "--type", "aes:256", "--label", "kept"])
        .expect_ok();
    c.keys(0, &["gen", "--type", "aes:128", "--label", "deleted-before"])
        .expect_ok();
    c.keys(0, &["delete", "--label", "deleted-before"]).expect_ok();
    c.keys(1, &["gen", "--type", "aes:256", "--label", "doomed-later"])
        .expect_ok();
    // Post-quantum keys go into the backup like any other.
    c.keys(0, &["gen", "--type", "ml-dsa-65", "--label", "pq-kept"])
        .expect_ok();
    c.keys(1, &["gen", "--type", "ml-kem:768", "--label", "pq-kem-kept"])
        .expect_ok();
    assert!(c.wait_in_sync(0, Duration::from_secs(15)), "{:#}", c.status(0));

    let bak = c.work.path().join("haPart.bak");
    c.backup(1, &bak).expect_ok();
    let mode = std::fs::metadata(&bak).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // After the backup: a key destroyed, a key made.
    c.keys(0, &["delete", "--label", "doomed-later"]).expect_ok();
    c.keys(1, &["gen", "--type", "aes:128", "--label", "after-backup"])
        .expect_ok();

    // A fresh member in the same domain.
    let m = fresh_member_in_domain(&c.work.path().join("hsm2"), "hsm2", &c.domain_secret);
    let d = c.domain_secret.clone();
    let restore = |file: &Path, owner: &Path| restore(&m, file, owner, &d);
    // A modified backup, or the wrong owner secret, is refused as a whole.
    let mut bytes = std::fs::read(&bak).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    let tampered = c.work.path().join("tampered.bak");
    std::fs::write(&tampered, &bytes).unwrap();
    restore(&tampered, &c.owner_secret).expect_err("does not open");
    let wrong_owner = c.work.path().join("secrets/wrong-owner.key");
    write_secret(&wrong_owner, 0x42);
    restore(&bak, &wrong_owner).expect_err("does not open");
    assert!(
        !m.admin(&["partition", "list"])
            .expect_ok()
            .stdout
            .contains(PARTITION),
        "a refused restore leaves nothing behind"
    );
    restore(&bak, &c.owner_secret).expect_ok();

    // Into the group: prepare, add, register the client.
    let fp = m.fingerprint();
    let serial: u64 = m
        .admin(&["status"])
        .expect_ok()
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("serial:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    c.fingerprints.push(fp.clone());
    c.serials.push(serial);
    c.members.push(m);
    c.ha(
        2,
        &[
            "prepare",
            "--partition",
            PARTITION,
            "--owner-secret",
            s(&c.owner_secret),
        ],
    )
    .expect_ok();
    c.add_member(2).expect_ok();
    serve_client(&c.conf, "hsm2", &c.members[2]);

    assert!(c.wait_in_sync(0, Duration::from_secs(30)), "{:#}", c.status(0));
    assert!(has_label(&c, 2, "kept"));
    assert!(
        has_label(&c, 2, "after-backup"),
        "caught up on what came after the backup"
    );
    for m in 0..3 {
        for gone in ["deleted-before", "doomed-later"] {
            assert!(!has_label(&c, m, gone), "'{gone}' came back on member {m}");
        }
    }
    // The restored ML-DSA key signs on the restored member, and the
    // signature verifies on another; the ML-KEM key is there too.
    let data = c.work.path().join("pq-data");
    let sig = c.work.path().join("pq-sig");
    std::fs::write(&data, b"signed by a restored ML-DSA-65 key").unwrap();
    c.keys(
        2,
        &[
            "sign",
            "--label",
            "pq-kept",
            "--mech",
            "ML-DSA",
            "--in",
            s(&data),
            "--out",
            s(&sig),
        ],
    )
    .expect_ok();
    assert_eq!(std::fs::read(&sig).unwrap().len(), 3309);
    c.keys(
        0,
        &[
            "verify",
            "--label",
            "pq-kept",
            "--mech",
            "ML-DSA",
            "--in",
            s(&data),
            "--signature",
            s(&sig),
        ],
    )
    .expect_ok();
    assert!(has_label(&c, 2, "pq-kem-kept"));
    // The restored member's own writes reach the group.
    c.keys(2, &["gen", "--type", "aes:128", "--label", "from-restored"])
        .expect_ok();
    assert!(
        c.wait(Duration::from_secs(15), || has_label(&c, 0, "from-restored")),
        "a write on the restored member never reached member 0"
    );
    assert!(c.wait_in_sync(1, Duration::from_secs(15)), "{:#}", c.status(1));
}

/// The trap of restoring a member onto itself: its old op log ends before
/// writes it made after the backup, which its peers hold. Writing on from the
/// old sequence numbers, its new writes would be dropped by the peers as
/// duplicates; the restored partition writes under a new origin id instead.
#[test]
fn a_member_restored_from_its_own_old_backup_writes_under_a_new_origin_and_its_writes_reach_the_group() {
    let c = Cluster::new(2);
    let socket1 = c.members[1].admin_socket();
    let bak = c.work.path().join("hsm1.bak");
    c.keys(1, &["gen", "--type", "aes:128", "--label", "before-backup"])
        .expect_ok();
    hahsm(
        None,
        &[
            "backup",
            "--socket",
            s(&socket1),
            "--partition",
            PARTITION,
            "--owner-secret",
            s(&c.owner_secret),
            "--domain-secret",
            s(&c.domain_secret),
            "--out",
            s(&bak),
        ],
    )
    .expect_ok();
    // Writes on member 1 after its backup: its own sequence numbers go on.
    for i in 0..3 {
        c.keys(1, &["gen", "--type", "aes:128", "--label", &format!("after-{i}")])
            .expect_ok();
    }
    assert!(c.wait_in_sync(0, Duration::from_secs(15)), "{:#}", c.status(0));

    // Member 1 is lost: removed from the group, wiped, and rebuilt from its backup.
    let serial = c.serials[1].to_string();
    c.ha(0, &["remove-member", "--group", GROUP, "--serial", &serial])
        .expect_ok();
    c.admin(1, &["hsm", "factory-reset", "--force"]).expect_ok();
    let so = c.members[1].dir.join("so.key");
    c.admin(
        1,
        &[
            "hsm",
            "init",
            "--label",
            "hsm1",
            "--so-secret",
            s(&so),
            "--domain-secret",
            s(&c.domain_secret),
        ],
    )
    .expect_ok();
    c.so_login(1);
    for p in ["7", "16", "20"] {
        c.admin(1, &["hsm", "change-policy", "--policy", p, "--value", "1"])
            .expect_ok();
    }
    hahsm(
        None,
        &[
            "restore",
            "--socket",
            s(&socket1),
            "--partition",
            PARTITION,
            "--owner-secret",
            s(&c.owner_secret),
            "--domain-secret",
            s(&c.domain_secret),
            "--file",
            s(&bak),
        ],
    )
    .expect_ok();
    let cert = c.conf.with_file_name("app1.pem");
    c.admin(1, &["client", "register", "--client", "app1", "--cert", s(&cert)])
        .expect_ok();
    c.admin(
        1,
        &[
            "client",
            "assign-partition",
            "--client",
            "app1",
            "--partition",
            PARTITION,
        ],
    )
    .expect_ok();
    // A write before it rejoins: under its old origin it would take a
    // sequence number the group already holds for another key.
    c.keys(1, &["gen", "--type", "aes:128", "--label", "before-rejoin"])
        .expect_ok();
    c.ha(
        1,
        &[
            "prepare",
            "--partition",
            PARTITION,
            "--owner-secret",
            s(&c.owner_secret),
        ],
    )
    .expect_ok();
    c.add_member(1).expect_ok();
    assert!(
        c.wait(Duration::from_secs(20), || has_label(&c, 1, "after-2")),
        "the restored member never caught up"
    );
    assert!(
        c.wait(Duration::from_secs(15), || has_label(&c, 0, "before-rejoin")),
        "member 0 dropped the restored member's write"
    );
    for i in 0..3 {
        assert!(has_label(&c, 1, &format!("after-{i}")));
    }
    c.keys(1, &["gen", "--type", "aes:128", "--label", "after-rejoin"])
        .expect_ok();
    assert!(c.wait(Duration::from_secs(15), || has_label(&c, 0, "after-rejoin")));
    assert!(c.wait_in_sync(0, Duration::from_secs(15)), "{:#}", c.status(0));
}
