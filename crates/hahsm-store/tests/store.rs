//! Behaviour of the store on real files: persistence, atomicity, pragmas, corruption,
//! a full disk, and the op log.
use hahsm_store::{ClientRow, ObjectRow, OpRow, PartitionRow, Store, StoreError, Write, SCHEMA_VERSION};
use std::path::{Path, PathBuf};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

fn partition(name: &str) -> PartitionRow {
    PartitionRow {
        id: 0,
        name: name.to_owned(),
        serial: 7,
        wrapped_pmk: vec![1; 40],
        sealed_pmk: Some(vec![2; 60]),
        pin_salt: vec![3; 16],
        sealed_pin: None,
        failed_logins: 0,
        policies: vec![4, 5],
        activated: true,
        digest: vec![0; 32],
        extra: Vec::new(),
    }
}

fn ouid(n: u64) -> [u8; 16] {
    let mut id = [0xA0; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

fn object(n: u64, version: u64, len: usize) -> ObjectRow {
    ObjectRow {
        ouid: ouid(n),
        version,
        sealed: pseudo_random(len, n.wrapping_mul(31).wrapping_add(version)),
    }
}

fn op(origin: u64, seq: u64, kind: &str) -> OpRow {
    let mut client_op_id = [0u8; 16];
    client_op_id[..8].copy_from_slice(&origin.to_be_bytes());
    client_op_id[8..].copy_from_slice(&seq.to_be_bytes());
    OpRow {
        index: 0,
        origin,
        seq,
        hlc_wall: 1_700_000_000_000 + seq,
        hlc_logical: (seq % 3) as u32,
        client_op_id: Some(client_op_id),
        kind: kind.to_owned(),
        body: pseudo_random(24, seq),
    }
}

/// Deterministic bytes (xorshift64), so no test depends on a random source.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    if x == 0 {
        x = 1;
    }
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

fn expect_corrupt(path: &Path) -> String {
    match Store::open(path) {
        Err(StoreError::Corrupt(msg)) => {
            assert!(
                msg.contains(&path.display().to_string()),
                "the message should name the file: {msg}"
            );
            msg
        }
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("a damaged store file was opened"),
    }
}

#[test]
fn everything_survives_close_and_reopen() {
    let dir = tempdir();
    let path = dir.path().join("store.db");
    let (p1, p2, objects, ops);
    {
        let store = Store::open(&path).expect("open");
        p1 = store.create_partition(&partition("alpha")).expect("create");
        p2 = store.create_partition(&partition("beta")).expect("create");
        store
            .register_client(&ClientRow {
                name: "web1".into(),
                fingerprint_hex: "aa".repeat(32),
                hostname: "web1.example".into(),
            })
            .expect("register");
        store.assign_partition("web1", "alpha").expect("assign");
        store.assign_partition("web1", "beta").expect("assign");
        store.put_meta("member-id", b"\x01\x02").expect("meta");
        store.put_meta("gone", b"x").expect("meta");
        store.delete_meta("gone").expect("meta");
        store.set_failed_logins(p2, 3).expect("failed logins");

        let mut committed = Vec::new();
        let mut logged = Vec::new();
        for n in 1..=5u64 {
            let o = object(n, 1, 100 + n as usize);
            let mut entry = op(1, n, "create");
            let index = store
                .commit(
                    p1,
                    &Write {
                        puts: vec![o.clone()],
                        op: entry.clone(),
                        digest: Some(vec![n as u8; 32]),
                        ..Default::default()
                    },
                )
                .expect("commit");
            entry.index = index;
            committed.push(o);
            logged.push(entry);
        }
        // Replace one object and delete another.
        let replaced = object(2, 2, 50);
        let mut entry = op(1, 6, "set-attributes");
        entry.index = store
            .commit(
                p1,
                &Write {
                    puts: vec![replaced.clone()],
                    deletes: vec![ouid(4)],
                    op: entry.clone(),
                    ..Default::default()
                },
            )
            .expect("commit");
        logged.push(entry);
        committed[1] = replaced;
        committed.remove(3);
        objects = committed;
        ops = logged;
    }
    assert!(
        !wal_path(&path).exists(),
        "closing the last connection should checkpoint and remove the WAL"
    );

    let store = Store::open(&path).expect("reopen");
    store.integrity_check().expect("integrity");
    let alpha = store.get_partition("alpha").expect("get").expect("alpha");
    assert_eq!(alpha.id, p1);
    assert_eq!(
        alpha.digest,
        vec![5u8; 32],
        "the digest of the last commit that set one"
    );
    let mut expect_alpha = partition("alpha");
    expect_alpha.id = p1;
    expect_alpha.digest = vec![5u8; 32];
    assert_eq!(alpha, expect_alpha);
    let beta = store.get_partition_by_id(p2).expect("get").expect("beta");
    assert_eq!(beta.failed_logins, 3);
    assert_eq!(
        store
            .list_partitions()
            .expect("list")
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["alpha", "beta"]
    );
    assert_eq!(store.load_objects(p1).expect("load"), objects);
    assert_eq!(store.object_count(p1).expect("count"), 4);
    assert_eq!(store.ops_since(p1, 0, 100).expect("ops"), ops);
    assert_eq!(store.max_seq(p1, 1).expect("max seq"), 6);
    assert_eq!(
        store.list_clients().expect("clients"),
        [ClientRow {
            name: "web1".into(),
            fingerprint_hex: "aa".repeat(32),
            hostname: "web1.example".into(),
        }]
    );
    assert_eq!(
        store.partitions_of_client("web1").expect("assignments"),
        ["alpha", "beta"]
    );
    assert_eq!(
        store.get_meta("member-id").expect("meta"),
        Some(b"\x01\x02".to_vec())
    );
    assert_eq!(store.get_meta("gone").expect("meta"), None);
}

#[test]
fn extreme_values_round_trip() {
    let dir = tempdir();
    let store = Store::open(&dir.path().join("s.db")).expect("open");
    let mut row = partition("max");
    row.serial = u64::MAX;
    row.failed_logins = u32::MAX;
    row.activated = false;
    row.sealed_pmk = None;
    row.sealed_pin = Some(Vec::new());
    row.wrapped_pmk = Vec::new();
    row.id = store.create_partition(&row).expect("create");
    assert_eq!(store.get_partition("max").expect("get"), Some(row.clone()));
    let o = ObjectRow {
        ouid: [0xFF; 16],
        version: u64::MAX,
        sealed: Vec::new(),
    };
    let mut entry = OpRow {
        origin: u64::MAX,
        seq: i64::MAX as u64,
        hlc_wall: u64::MAX,
        hlc_logical: u32::MAX,
        client_op_id: None,
        kind: String::new(),
        body: Vec::new(),
        index: 0,
    };
    entry.index = store
        .commit(
            row.id,
            &Write {
                puts: vec![o.clone()],
                op: entry.clone(),
                ..Default::default()
            },
        )
        .expect("commit");
    assert_eq!(store.load_objects(row.id).expect("load"), [o]);
    assert_eq!(store.ops_since(row.id, 0, 10).expect("ops"), [entry]);
    assert_eq!(store.max_seq(row.id, u64::MAX).expect("max"), i64::MAX as u64);
    assert_eq!(store.ops_since(row.id, u64::MAX, 10).expect("ops"), []);

    let too_big = Write {
        op: OpRow {
            seq: i64::MAX as u64 + 1,
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(matches!(
        store.commit(row.id, &too_big),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn a_commit_to_a_missing_partition_leaves_nothing() {
    let dir = tempdir();
    let path = dir.path().join("s.db");
    let store = Store::open(&path).expect("open");
    let p = store.create_partition(&partition("p")).expect("create");
    let first = store
        .commit(
            p,
            &Write {
                puts: vec![object(1, 1, 10)],
                op: op(1, 1, "create"),
                ..Default::default()
            },
        )
        .expect("commit");

    let missing = p + 1000;
    let result = store.commit(
        missing,
        &Write {
            clear: true,
            puts: vec![object(2, 1, 10), object(3, 1, 10)],
            op: op(1, 2, "create"),
            digest: Some(vec![9; 32]),
            ..Default::default()
        },
    );
    assert!(
        matches!(result, Err(StoreError::NotFound(_))),
        "foreign key violation should be NotFound, got {result:?}"
    );
    assert_eq!(store.object_count(missing).expect("count"), 0);
    assert_eq!(store.ops_since(missing, 0, 10).expect("ops"), []);
    assert_eq!(store.load_objects(p).expect("load"), [object(1, 1, 10)]);
    drop(store);

    // Nothing of it reached the file either.
    let raw = rusqlite::Connection::open(&path).expect("raw open");
    let (objects, ops): (i64, i64) = raw
        .query_row(
            "SELECT (SELECT COUNT(*) FROM objects), (SELECT COUNT(*) FROM oplog)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("count");
    assert_eq!((objects, ops), (1, 1));
    drop(raw);

    // And it consumed no log index.
    let store = Store::open(&path).expect("reopen");
    let next = store
        .commit(
            p,
            &Write {
                op: op(1, 2, "destroy"),
                ..Default::default()
            },
        )
        .expect("commit");
    assert_eq!(next, first + 1);
}

#[test]
fn a_commit_that_fails_after_its_object_changes_leaves_none_of_them() {
    let dir = tempdir();
    let store = Store::open(&dir.path().join("s.db")).expect("open");
    let p = store.create_partition(&partition("p")).expect("create");
    store
        .commit(
            p,
            &Write {
                puts: vec![object(1, 1, 10)],
                op: op(1, 1, "create"),
                digest: Some(vec![1; 32]),
                ..Default::default()
            },
        )
        .expect("commit");

    // Clear, put and delete all succeed; the op then repeats (origin 1, seq 1) and fails.
    let result = store.commit(
        p,
        &Write {
            clear: true,
            puts: vec![object(2, 1, 10), object(1, 9, 10)],
            deletes: vec![ouid(2)],
            op: op(1, 1, "create"),
            digest: Some(vec![2; 32]),
        },
    );
    assert!(
        matches!(result, Err(StoreError::Exists(_))),
        "a repeated (origin, seq) should be Exists, got {result:?}"
    );
    assert_eq!(store.load_objects(p).expect("load"), [object(1, 1, 10)]);
    assert_eq!(store.ops_since(p, 0, 10).expect("ops").len(), 1);
    assert_eq!(
        store.get_partition_by_id(p).expect("get").expect("p").digest,
        vec![1; 32]
    );

    // A write that repeats nothing goes through; seq 0 ("none") may repeat.
    for _ in 0..2 {
        store
            .commit(
                p,
                &Write {
                    op: OpRow {
                        seq: 0,
                        ..op(1, 0, "local")
                    },
                    ..Default::default()
                },
            )
            .expect("seq 0 repeats");
    }
    assert_eq!(store.max_seq(p, 1).expect("max"), 1);
    assert_eq!(store.max_seq(p, 2).expect("max"), 0);
}

#[test]
fn wal_and_synchronous_full_are_in_force() {
    let dir = tempdir();
    let path = dir.path().join("s.db");
    let store = Store::open(&path).expect("open");
    let settings = store.settings().expect("settings");
    assert_eq!(settings.journal_mode, "wal");
    assert_eq!(settings.synchronous, 2, "synchronous must be FULL (2)");
    assert!(settings.foreign_keys);

    store.put_meta("k", b"v").expect("put");
    assert!(
        wal_path(&path).exists(),
        "a write in WAL mode goes to the -wal file"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in [path.clone(), wal_path(&path)] {
            let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", file.display());
        }
    }

    // WAL mode is a property of the file: another connection sees it too.
    let raw = rusqlite::Connection::open(&path).expect("raw open");
    let mode: String = raw
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("pragma");
    assert_eq!(mode, "wal");
    drop(raw);
    drop(store);

    let store = Store::open(&path).expect("reopen");
    assert_eq!(store.settings().expect("settings").synchronous, 2);
}

/// A store with enough rows to span many pages, closed so that everything is in the main file.
fn build_large_store(path: &Path) {
    let store = Store::open(path).expect("open");
    let p = store.create_partition(&partition("big")).expect("create");
    for batch in 0..40u64 {
        let puts = (0..50).map(|i| object(batch * 50 + i, 1, 180)).collect();
        store
            .commit(
                p,
                &Write {
                    puts,
                    op: op(1, batch + 1, "create"),
                    ..Default::default()
                },
            )
            .expect("commit");
    }
    store.integrity_check().expect("the fresh store is sound");
    drop(store);
    assert!(!wal_path(path).exists(), "everything should be checkpointed");
    let len = std::fs::metadata(path).expect("metadata").len();
    assert!(len > 64 * 1024, "the store should span many pages ({len} bytes)");
}

#[test]
fn a_page_overwritten_in_the_middle_is_refused_as_corrupt() {
    let dir = tempdir();
    let path = dir.path().join("s.db");
    build_large_store(&path);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[8192..8192 + 4096].fill(0x55);
    std::fs::write(&path, &bytes).expect("write");
    let msg = expect_corrupt(&path);
    println!("overwritten page: {msg}");
}

#[test]
fn bytes_overwritten_in_the_middle_of_a_table_page_are_refused_as_corrupt() {
    let dir = tempdir();
    // Half of a table leaf page in the middle of the file: cell contents and headers.
    let path = dir.path().join("half.db");
    build_large_store(&path);
    let mut bytes = std::fs::read(&path).expect("read");
    let leaves = table_leaf_pages(&bytes);
    let (page, _) = leaves[leaves.len() / 2];
    bytes[page + 1024..page + 3072].fill(0x55);
    std::fs::write(&path, &bytes).expect("write");
    let msg = expect_corrupt(&path);
    println!("half a table page overwritten: {msg}");

    // A whole 4 KiB table page in the middle of the file.
    let path = dir.path().join("whole.db");
    build_large_store(&path);
    let mut bytes = std::fs::read(&path).expect("read");
    let leaves = table_leaf_pages(&bytes);
    let (page, _) = leaves[leaves.len() / 2];
    bytes[page..page + 4096].fill(0x55);
    std::fs::write(&path, &bytes).expect("write");
    let msg = expect_corrupt(&path);
    println!("whole table page overwritten: {msg}");
}

/// Table b-tree leaf pages (type byte 0x0D) of the file, as (page offset, cell count).
fn table_leaf_pages(bytes: &[u8]) -> Vec<(usize, usize)> {
    let page_size = match u16::from_be_bytes([bytes[16], bytes[17]]) {
        1 => 65536,
        n => n as usize,
    };
    (1..bytes.len() / page_size)
        .map(|n| n * page_size)
        .filter(|&off| bytes[off] == 0x0D)
        .map(|off| (off, u16::from_be_bytes([bytes[off + 3], bytes[off + 4]]) as usize))
        .filter(|&(_, cells)| cells > 1)
        .collect()
}

#[test]
fn flipped_bytes_in_a_btree_page_are_refused_as_corrupt() {
    let dir = tempdir();
    let path = dir.path().join("s.db");
    build_large_store(&path);
    let mut bytes = std::fs::read(&path).expect("read");
    let leaves = table_leaf_pages(&bytes);
    assert!(leaves.len() > 4, "expected many table leaf pages");
    let (page, cells) = leaves[leaves.len() / 2];
    // Flip every bit of the cell pointer array: each pointer now points outside the page.
    for b in &mut bytes[page + 8..page + 8 + 2 * cells] {
        *b ^= 0xFF;
    }
    std::fs::write(&path, &bytes).expect("write");
    let msg = expect_corrupt(&path);
    println!("flipped cell pointers: {msg}");

    // The same for the page header of another leaf: its cell count goes out of range.
    let path2 = dir.path().join("s2.db");
    build_large_store(&path2);
    let mut bytes = std::fs::read(&path2).expect("read");
    let leaves = table_leaf_pages(&bytes);
    let (page, _) = leaves[leaves.len() / 3];
    bytes[page + 3] ^= 0xFF;
    bytes[page + 5] ^= 0xA5;
    std::fs::write(&path2, &bytes).expect("write");
    let msg = expect_corrupt(&path2);
    println!("flipped page header: {msg}");
}

#[test]
fn a_truncated_store_is_refused_as_corrupt() {
    let dir = tempdir();
    let path = dir.path().join("s.db");
    build_large_store(&path);
    let len = std::fs::metadata(&path).expect("metadata").len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
    file.set_len(len / 2).expect("truncate");
    drop(file);
    expect_corrupt(&path);
}

#[test]
fn random_bytes_are_refused_as_corrupt() {
    let dir = tempdir();
    let path = dir.path().join("s.db");
    std::fs::write(&path, pseudo_random(64 * 1024, 42)).expect("write");
    let msg = expect_corrupt(&path);
    assert!(msg.contains("not a SQLite database"), "{msg}");
    // The file was not touched.
    assert_eq!(std::fs::read(&path).expect("read"), pseudo_random(64 * 1024, 42));
    // Short garbage too.
    std::fs::write(&path, b"hello").expect("write");
    expect_corrupt(&path);
}

#[test]
fn an_empty_file_is_a_new_store() {
    let dir = tempdir();
    let path = dir.path().join("s.db");
    std::fs::write(&path, b"").expect("write");
    let store = Store::open(&path).expect("an empty file opens as a new store");
    store.create_partition(&partition("p")).expect("usable");
    store.integrity_check().expect("sound");
}

#[test]
fn foreign_and_newer_databases_are_refused() {
    let dir = tempdir();
    let foreign = dir.path().join("foreign.db");
    let raw = rusqlite::Connection::open(&foreign).expect("raw");
    raw.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .expect("create");
    drop(raw);
    let msg = expect_corrupt(&foreign);
    assert!(msg.contains("not a hahsm store"), "{msg}");

    let newer = dir.path().join("newer.db");
    drop(Store::open(&newer).expect("create"));
    let raw = rusqlite::Connection::open(&newer).expect("raw");
    raw.execute(
        "UPDATE store_meta SET value = ?1 WHERE key = 'schema_version'",
        [SCHEMA_VERSION + 1],
    )
    .expect("bump version");
    drop(raw);
    match Store::open(&newer) {
        Err(StoreError::Schema(msg)) => assert!(msg.contains("newer"), "{msg}"),
        other => panic!("expected Schema, got {other:?}"),
    }
}

#[test]
fn malformed_rows_are_corrupt_not_panics() {
    let dir = tempdir();
    let path = dir.path().join("s.db");
    let store = Store::open(&path).expect("open");
    let p = store.create_partition(&partition("p")).expect("create");
    store
        .commit(
            p,
            &Write {
                op: op(1, 1, "create"),
                ..Default::default()
            },
        )
        .expect("commit");

    // Write rows that the schema's CHECK constraints would refuse, behind the open
    // store's back (WAL lets a second connection write).
    let damage = || {
        let raw = rusqlite::Connection::open(&path).expect("raw");
        raw.execute_batch(&format!(
            "PRAGMA ignore_check_constraints = ON;
             INSERT INTO objects (partition_id, ouid, version, sealed)
                 VALUES ({p}, x'0102', 1, x'');
             UPDATE oplog SET client_op_id = x'01';
             UPDATE partitions SET failed_logins = -1;"
        ))
        .expect("damage");
    };
    damage();
    assert!(matches!(store.load_objects(p), Err(StoreError::Corrupt(_))));
    assert!(matches!(store.ops_since(p, 0, 10), Err(StoreError::Corrupt(_))));
    assert!(matches!(store.get_partition("p"), Err(StoreError::Corrupt(_))));
    assert!(matches!(store.list_partitions(), Err(StoreError::Corrupt(_))));
    assert!(matches!(store.integrity_check(), Err(StoreError::Corrupt(_))));
    drop(store);

    // Such a file is not served again: quick_check verifies CHECK constraints too.
    let msg = expect_corrupt(&path);
    assert!(msg.contains("CHECK constraint"), "{msg}");
}

#[test]
fn ops_since_and_op_by_client_op_id_return_what_was_committed() {
    let dir = tempdir();
    let store = Store::open(&dir.path().join("s.db")).expect("open");
    let a = store.create_partition(&partition("a")).expect("create");
    let b = store.create_partition(&partition("b")).expect("create");
    let mut in_a = Vec::new();
    let mut in_b = Vec::new();
    let mut last = 0;
    for n in 1..=10u64 {
        let (pid, origin) = if n % 3 == 0 { (b, 2) } else { (a, 1 + n % 2) };
        let mut entry = op(origin, n, if n % 2 == 0 { "destroy" } else { "create" });
        entry.index = store
            .commit(
                pid,
                &Write {
                    op: entry.clone(),
                    ..Default::default()
                },
            )
            .expect("commit");
        assert!(entry.index > last, "indices grow across the store");
        last = entry.index;
        if pid == a {
            in_a.push(entry);
        } else {
            in_b.push(entry);
        }
    }
    assert_eq!(store.ops_since(a, 0, 100).expect("ops"), in_a);
    assert_eq!(store.ops_since(b, 0, 100).expect("ops"), in_b);
    assert_eq!(store.ops_since(a, 0, 2).expect("ops"), in_a[..2]);
    assert_eq!(store.ops_since(a, in_a[2].index, 100).expect("ops"), in_a[3..]);
    assert_eq!(store.ops_since(a, last, 100).expect("ops"), []);
    assert_eq!(store.ops_since(a, 0, 0).expect("ops"), []);

    for entry in &in_a {
        let id = entry.client_op_id.expect("id");
        assert_eq!(
            store.op_by_client_op_id(a, &id).expect("find").as_ref(),
            Some(entry)
        );
        assert_eq!(store.op_by_client_op_id(b, &id).expect("find"), None);
    }
    assert_eq!(store.op_by_client_op_id(a, &[0x77; 16]).expect("find"), None);

    // Origins: in a, n%3 != 0 → origin 1 + n%2: odd n → 2, even n → 1.
    assert_eq!(store.max_seq(a, 1).expect("max"), 10);
    assert_eq!(store.max_seq(a, 2).expect("max"), 7);
    assert_eq!(store.max_seq(b, 2).expect("max"), 9);
    assert_eq!(store.max_seq(b, 1).expect("max"), 0);
}

#[test]
fn delete_partition_cascades() {
    let dir = tempdir();
    let store = Store::open(&dir.path().join("s.db")).expect("open");
    let gone = store.create_partition(&partition("gone")).expect("create");
    let kept = store.create_partition(&partition("kept")).expect("create");
    store
        .register_client(&ClientRow {
            name: "c".into(),
            fingerprint_hex: "01ab".into(),
            hostname: "h".into(),
        })
        .expect("register");
    for (pid, seq) in [(gone, 1), (kept, 1), (gone, 2)] {
        store
            .commit(
                pid,
                &Write {
                    puts: vec![object(seq + pid as u64 * 10, 1, 20)],
                    op: op(1, seq, "create"),
                    ..Default::default()
                },
            )
            .expect("commit");
    }
    store.assign_partition("c", "gone").expect("assign");
    store.assign_partition("c", "kept").expect("assign");

    store.delete_partition(gone).expect("delete");
    assert_eq!(store.get_partition("gone").expect("get"), None);
    assert_eq!(store.get_partition_by_id(gone).expect("get"), None);
    assert_eq!(store.object_count(gone).expect("count"), 0);
    assert_eq!(store.ops_since(gone, 0, 10).expect("ops"), []);
    assert_eq!(store.partitions_of_client("c").expect("of client"), ["kept"]);
    assert_eq!(store.object_count(kept).expect("count"), 1);
    assert_eq!(store.ops_since(kept, 0, 10).expect("ops").len(), 1);
    store.integrity_check().expect("no dangling rows");
    assert!(matches!(
        store.delete_partition(gone),
        Err(StoreError::NotFound(_))
    ));

    // A new partition never gets the deleted one's id.
    let again = store.create_partition(&partition("gone")).expect("create");
    assert!(again > kept);
    assert_eq!(store.object_count(again).expect("count"), 0);
}

#[test]
fn clients_and_assignments() {
    let dir = tempdir();
    let store = Store::open(&dir.path().join("s.db")).expect("open");
    store.create_partition(&partition("p")).expect("create");
    let web = ClientRow {
        name: "web".into(),
        fingerprint_hex: "deadbeef".into(),
        hostname: "web.example".into(),
    };
    store.register_client(&web).expect("register");
    let same_fp = ClientRow {
        name: "other".into(),
        ..web.clone()
    };
    assert!(matches!(
        store.register_client(&same_fp),
        Err(StoreError::Exists(_))
    ));
    let same_fp_upper = ClientRow {
        name: "other".into(),
        fingerprint_hex: "DEADBEEF".into(),
        hostname: "x".into(),
    };
    assert!(matches!(
        store.register_client(&same_fp_upper),
        Err(StoreError::Exists(_))
    ));
    let same_name = ClientRow {
        fingerprint_hex: "cafe".into(),
        ..web.clone()
    };
    assert!(matches!(
        store.register_client(&same_name),
        Err(StoreError::Exists(_))
    ));
    assert_eq!(store.list_clients().expect("list"), std::slice::from_ref(&web));
    assert_eq!(
        store.client_by_fingerprint("DeadBeef").expect("find"),
        Some(web.clone())
    );
    assert_eq!(store.client_by_fingerprint("cafe").expect("find"), None);

    assert!(matches!(
        store.assign_partition("nobody", "p"),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.assign_partition("web", "nope"),
        Err(StoreError::NotFound(_))
    ));
    store.assign_partition("web", "p").expect("assign");
    store.assign_partition("web", "p").expect("assign is idempotent");
    assert_eq!(store.partitions_of_client("web").expect("of"), ["p"]);
    store.revoke_partition("web", "p").expect("revoke");
    store.revoke_partition("web", "p").expect("revoke is idempotent");
    assert_eq!(
        store.partitions_of_client("web").expect("of"),
        Vec::<String>::new()
    );
    assert!(matches!(
        store.partitions_of_client("nobody"),
        Err(StoreError::NotFound(_))
    ));

    store.assign_partition("web", "p").expect("assign");
    store.remove_client("web").expect("remove");
    assert!(matches!(store.remove_client("web"), Err(StoreError::NotFound(_))));
    assert_eq!(store.list_clients().expect("list"), []);
    store.integrity_check().expect("no dangling assignment");
    // The fingerprint is free again.
    store.register_client(&same_fp).expect("register again");
    assert_eq!(
        store.partitions_of_client("other").expect("of"),
        Vec::<String>::new()
    );
}

#[test]
fn partition_updates() {
    let dir = tempdir();
    let store = Store::open(&dir.path().join("s.db")).expect("open");
    let a = store.create_partition(&partition("a")).expect("create");
    let b = store.create_partition(&partition("b")).expect("create");
    assert!(matches!(
        store.create_partition(&partition("a")),
        Err(StoreError::Exists(_))
    ));

    let mut row = store.get_partition_by_id(a).expect("get").expect("a");
    row.name = "a2".into();
    row.activated = false;
    row.sealed_pin = Some(vec![9; 48]);
    row.extra = vec![1, 2, 3];
    store.update_partition(&row).expect("update");
    assert_eq!(store.get_partition("a2").expect("get"), Some(row.clone()));
    assert_eq!(store.get_partition("a").expect("get"), None);

    row.name = "b".into();
    assert!(matches!(store.update_partition(&row), Err(StoreError::Exists(_))));
    let ghost = PartitionRow {
        id: b + 100,
        ..partition("ghost")
    };
    assert!(matches!(
        store.update_partition(&ghost),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.set_failed_logins(b + 100, 1),
        Err(StoreError::NotFound(_))
    ));
    store.set_failed_logins(b, 4).expect("set");
    assert_eq!(
        store
            .get_partition_by_id(b)
            .expect("get")
            .expect("b")
            .failed_logins,
        4
    );
}

/// Unmounts the tmpfs when the test ends, even if it panicked.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(&self.0)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !unmounted {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}

#[test]
fn a_full_disk_gives_full_and_loses_no_committed_write() {
    let base = tempdir();
    let mnt = base.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&mnt)
        .output();
    match &mount {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            println!(
                "skipped: needs root to mount tmpfs (mount said: {})",
                String::from_utf8_lossy(&out.stderr)
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            return;
        }
        Err(err) => {
            println!("skipped: needs root to mount tmpfs (cannot run mount: {err})");
            return;
        }
    }
    // Declared before the store, so dropped after it: the file system is not busy then.
    let _mounted = Mounted(mnt.clone());
    let path = mnt.join("store.db");

    let mut committed: Vec<(ObjectRow, OpRow)> = Vec::new();
    let (pid, failed);
    {
        let store = Store::open(&path).expect("open on tmpfs");
        pid = store.create_partition(&partition("p")).expect("create");
        let mut full = None;
        for n in 1..=5_000u64 {
            let o = object(n, 1, 1500);
            let mut entry = op(1, n, "create");
            let write = Write {
                puts: vec![o.clone()],
                op: entry.clone(),
                digest: Some(pseudo_random(32, n)),
                ..Default::default()
            };
            match store.commit(pid, &write) {
                Ok(index) => {
                    entry.index = index;
                    committed.push((o, entry));
                }
                Err(StoreError::Full(msg)) => {
                    full = Some((n, msg));
                    break;
                }
                Err(other) => panic!("a full disk must give StoreError::Full, got {other:?}"),
            }
        }
        let (n, msg) = full.expect("a 512 KiB tmpfs should fill up");
        println!("Full after {} commits: {msg}", committed.len());
        assert!(committed.len() > 5, "some writes should fit first");
        failed = n;
        let token: hahsm_token::TokenError = StoreError::Full(msg).into();
        assert!(matches!(token, hahsm_token::TokenError::DeviceMemory(_)));

        // The store keeps serving reads, and keeps answering Full to writes.
        assert!(store.object_count(pid).expect("count") >= committed.len() as u64);
        match store.put_meta("big", &pseudo_random(256 * 1024, 1)) {
            Err(StoreError::Full(_)) => {}
            other => panic!("expected Full, got {other:?}"),
        }
    }

    // Reopen (the disk is still full) and check every acknowledged write.
    {
        let store = Store::open(&path).expect("reopen on the full disk");
        store.integrity_check().expect("sound after a full disk");
        let objects = store.load_objects(pid).expect("load");
        let ops = store.ops_since(pid, 0, 100_000).expect("ops");
        for (o, entry) in &committed {
            assert!(objects.contains(o), "lost object {:?}", o.ouid);
            assert!(ops.contains(entry), "lost op {}", entry.seq);
        }
        // The failed write is all there or not there at all; never half.
        let has_object = objects.iter().any(|o| o.ouid == ouid(failed));
        let has_op = ops.iter().any(|e| e.seq == failed);
        assert_eq!(has_object, has_op, "the failed write was half applied");
        assert_eq!(ops.len(), objects.len());
        assert_eq!(store.get_meta("big").expect("meta"), None);
    }

    // With room again, writes work again.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=4m"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if grown {
        let store = Store::open(&path).expect("reopen");
        let next = store.max_seq(pid, 1).expect("max") + 1;
        store
            .commit(
                pid,
                &Write {
                    puts: vec![object(next, 1, 1500)],
                    op: op(1, next, "create"),
                    ..Default::default()
                },
            )
            .expect("writes work once there is room");
        store.integrity_check().expect("sound");
    } else {
        println!("note: could not grow the tmpfs; skipped the write-after-full check");
    }
}

#[test]
fn replication_reads_ops_by_origin_version_vectors_and_the_latest_clock() {
    let dir = tempdir();
    let store = Store::open(&dir.path().join("s.db")).expect("open");
    let a = store.create_partition(&partition("a")).expect("create");
    assert_eq!(store.max_hlc(a).expect("hlc"), (0, 0));
    let mut batch = Vec::new();
    for (origin, seq, wall) in [(7, 1, 500), (9, 1, 900), (7, 2, 700), (9, 2, 400)] {
        let mut o = op(origin, seq, "create");
        o.hlc_wall = wall;
        batch.push(Write {
            op: o,
            ..Default::default()
        });
    }
    store.commit_many(a, &batch).expect("commit many");
    assert_eq!(store.version_vector(a).expect("vv"), vec![(7, 2), (9, 2)]);
    let from7 = store.ops_from_origin(a, 7, 1, 10).expect("ops");
    assert_eq!(
        from7.iter().map(|o| (o.origin, o.seq)).collect::<Vec<_>>(),
        vec![(7, 2)]
    );
    // The greatest clock, not the last written.
    assert_eq!(store.max_hlc(a).expect("hlc").0, 900);
    // A batch with one bad write commits nothing of the batch.
    let dup = vec![
        Write {
            op: op(7, 3, "create"),
            ..Default::default()
        },
        Write {
            op: op(7, 2, "create"),
            ..Default::default()
        },
    ];
    assert!(store.commit_many(a, &dup).is_err());
    assert_eq!(store.version_vector(a).expect("vv"), vec![(7, 2), (9, 2)]);
}

#[test]
fn compaction_drops_old_entries_and_keeps_the_version_vector_and_the_clock() {
    let dir = tempdir();
    let path = dir.path().join("s.db");
    let store = Store::open(&path).expect("open");
    let a = store.create_partition(&partition("a")).expect("create");
    let mut batch = Vec::new();
    for seq in 1..=6 {
        let mut o = op(7, seq, "create");
        o.hlc_wall = 100 * seq;
        batch.push(Write {
            op: o,
            ..Default::default()
        });
    }
    let mut other = op(9, 1, "create");
    other.hlc_wall = 50;
    batch.push(Write {
        op: other,
        ..Default::default()
    });
    store.commit_many(a, &batch).expect("commit");
    // Origin 7 up to 5, but only what was stamped before 450: 1 to 4.
    assert_eq!(store.compact_log(a, &[(7, 5), (9, 1)], 450).expect("compact"), 5);
    assert_eq!(store.log_floor(a).expect("floor"), vec![(7, 4), (9, 1)]);
    let left: Vec<(u64, u64)> = store
        .ops_since(a, 0, 100)
        .expect("ops")
        .iter()
        .map(|o| (o.origin, o.seq))
        .collect();
    assert_eq!(left, vec![(7, 5), (7, 6)]);
    assert_eq!(store.version_vector(a).expect("vv"), vec![(7, 6), (9, 1)]);
    assert_eq!(store.max_seq(a, 9).expect("max"), 1);
    // Everything of origin 7: the floor keeps its last stamp.
    store.compact_log(a, &[(7, 6)], u64::MAX).expect("compact");
    assert_eq!(store.ops_since(a, 0, 100).expect("ops"), []);
    assert_eq!(store.version_vector(a).expect("vv"), vec![(7, 6), (9, 1)]);
    assert_eq!(store.max_hlc(a).expect("hlc").0, 600);
    // A floor never goes down.
    store.compact_log(a, &[(7, 2)], u64::MAX).expect("compact");
    assert_eq!(store.log_floor(a).expect("floor"), vec![(7, 6), (9, 1)]);
    drop(store);
    let store = Store::open(&path).expect("reopen");
    assert_eq!(store.version_vector(a).expect("vv"), vec![(7, 6), (9, 1)]);
    // The next op of origin 7 is 7: the log takes it.
    store
        .commit(
            a,
            &Write {
                op: op(7, 7, "create"),
                ..Default::default()
            },
        )
        .expect("next op");
    store.delete_partition(a).expect("delete");
    let b = store.create_partition(&partition("b")).expect("create");
    assert_eq!(store.log_floor(b).expect("floor"), []);
}

#[test]
fn an_installed_snapshot_puts_its_objects_and_raises_the_floor_in_one_transaction() {
    let dir = tempdir();
    let store = Store::open(&dir.path().join("s.db")).expect("open");
    let a = store.create_partition(&partition("a")).expect("create");
    store
        .install_states(a, &[object(1, 1, 10), object(2, 3, 10)], b"digest", &[], (0, 0))
        .expect("a page");
    assert_eq!(store.version_vector(a).expect("vv"), vec![]);
    store
        .install_states(a, &[object(2, 4, 10)], b"digest2", &[(5, 40), (6, 2)], (900, 3))
        .expect("the last page");
    assert_eq!(store.version_vector(a).expect("vv"), vec![(5, 40), (6, 2)]);
    assert_eq!(store.max_hlc(a).expect("hlc"), (900, 3));
    let objects = store.load_objects(a).expect("objects");
    assert_eq!(
        objects.iter().map(|o| (o.ouid, o.version)).collect::<Vec<_>>(),
        vec![(ouid(1), 1), (ouid(2), 4)]
    );
    assert_eq!(
        store.get_partition("a").expect("get").expect("there").digest,
        b"digest2"
    );
    // A page for a partition that is not there writes nothing.
    assert!(store
        .install_states(a + 100, &[object(3, 1, 10)], b"d", &[(5, 41)], (0, 0))
        .is_err());
    assert_eq!(store.version_vector(a).expect("vv"), vec![(5, 40), (6, 2)]);
}

#[test]
fn a_version_1_store_is_migrated_with_its_log() {
    let dir = tempdir();
    let path = dir.path().join("old.db");
    let store = Store::open(&path).expect("create");
    let a = store.create_partition(&partition("a")).expect("create");
    store
        .commit(
            a,
            &Write {
                op: op(3, 1, "create"),
                ..Default::default()
            },
        )
        .expect("commit");
    drop(store);
    // What version 1 wrote: no log_floor table.
    let raw = rusqlite::Connection::open(&path).expect("raw");
    raw.execute_batch("DROP TABLE log_floor; UPDATE store_meta SET value = 1 WHERE key = 'schema_version';")
        .expect("make it version 1");
    drop(raw);
    let store = Store::open(&path).expect("migrate");
    assert_eq!(store.version_vector(a).expect("vv"), vec![(3, 1)]);
    store
        .compact_log(a, &[(3, 1)], u64::MAX)
        .expect("compact after migration");
    assert_eq!(store.version_vector(a).expect("vv"), vec![(3, 1)]);
    drop(store);
    let raw = rusqlite::Connection::open(&path).expect("raw");
    let v: i64 = raw
        .query_row(
            "SELECT value FROM store_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .expect("version");
    assert_eq!(v, SCHEMA_VERSION);
}
