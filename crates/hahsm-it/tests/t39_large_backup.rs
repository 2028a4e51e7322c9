//! A backup larger than any one frame (issue 17, item 5): a partition of
//! 2,400 data objects of 8 KiB and an AES key (about 20 MB, past the 16 MiB
//! a backup could hold before) backs up in encrypted chunks and restores on
//! a fresh member identically: every object with its value, and the key,
//! which decrypts what the original encrypted. A changed chunk, a missing
//! chunk, chunks swapped, a missing last chunk and a file cut mid-chunk each
//! refuse the whole restore and leave no partition behind.
mod t20_pkcs11_support;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use hahsm_it::cluster::{fresh_member_in_domain, restore, serve_client, Cluster, PARTITION, PIN};
use hahsm_it::Run;
use hahsm_proto::backup_file;
use std::collections::BTreeMap;
use std::path::Path;
use t20_pkcs11_support::module_path;

const OBJECTS: usize = 2_400;
const VALUE: usize = 8 << 10;
const THREADS: usize = 8;
const IV: [u8; 16] = [7; 16];

/// The module, reading the client config `conf`.
fn module(conf: &Path) -> Pkcs11 {
    std::env::set_var("HAHSM_CONF", conf);
    let p11 = Pkcs11::new(module_path()).expect("load the module");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    p11
}

/// The slot of server `name` in the client config.
fn slot_of(p11: &Pkcs11, name: &str) -> Slot {
    let want = format!("hahsm {name} partition {PARTITION}");
    p11.get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| p11.get_slot_info(*s).is_ok_and(|i| i.slot_description() == want))
        .unwrap_or_else(|| panic!("no slot '{want}'"))
}

fn login(p11: &Pkcs11, slot: Slot) -> Session {
    let s = p11.open_rw_session(slot).expect("session");
    s.login(UserType::User, Some(&AuthPin::new(PIN.to_string().into())))
        .expect("login");
    s
}

fn value_of(k: usize) -> Vec<u8> {
    (0..VALUE).map(|i| (k * 31 + i * 7) as u8).collect()
}

/// Every data object's label and value, read through the module.
fn contents(s: &Session) -> BTreeMap<String, Vec<u8>> {
    s.find_objects(&[Attribute::Class(ObjectClass::DATA)])
        .expect("find")
        .into_iter()
        .map(|h| {
            let attrs = s
                .get_attributes(h, &[AttributeType::Label, AttributeType::Value])
                .expect("attributes");
            let (mut label, mut value) = (String::new(), Vec::new());
            for a in attrs {
                match a {
                    Attribute::Label(l) => label = String::from_utf8(l).expect("utf-8 label"),
                    Attribute::Value(v) => value = v,
                    _ => {}
                }
            }
            (label, value)
        })
        .collect()
}

fn aes_key(s: &Session) -> cryptoki::object::ObjectHandle {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Label(b"backed-up-key".to_vec()),
        ])
        .expect("find the key");
    assert_eq!(found.len(), 1, "the AES key, once");
    found[0]
}

#[test]
fn a_partition_larger_than_a_frame_backs_up_in_chunks_restores_identically_and_any_damage_refuses_it() {
    let c = Cluster::new(1);
    let p11 = module(&c.conf);
    let slot = slot_of(&p11, "hsm0");
    let session = login(&p11, slot);
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
                        Attribute::Label(format!("big-{k}").into_bytes()),
                        Attribute::Value(value_of(k)),
                    ])
                    .unwrap_or_else(|e| panic!("create big-{k}: {e}"));
                }
            });
        }
    });
    let key = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::ValueLen(32.into()),
                Attribute::Label(b"backed-up-key".to_vec()),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
            ],
        )
        .expect("AES key");
    let plain = b"encrypted before the backup, decrypted after the restore".to_vec();
    let sealed = session
        .encrypt(&Mechanism::AesCbcPad(IV), key, &plain)
        .expect("encrypt");
    // Destroyed before the backup: the backup holds its tombstone, not it.
    for k in 0..5 {
        let h = session
            .find_objects(&[Attribute::Label(format!("big-{k}").into_bytes())])
            .expect("find");
        session.destroy_object(h[0]).expect("destroy");
    }
    let original = contents(&session);
    assert_eq!(original.len(), OBJECTS - 5);
    drop(session);
    p11.finalize().expect("C_Finalize");

    let bak = c.work.path().join("big.bak");
    let made = c.backup(0, &bak).expect_ok();
    assert!(
        made.stderr.contains("backed up"),
        "no progress shown: {}",
        made.stderr
    );
    let bytes = std::fs::read(&bak).expect("the backup");
    assert!(bytes.len() > 16 << 20, "only {} bytes", bytes.len());
    // Its chunk records, as the file holds them.
    let mut r = &bytes[..];
    let head = backup_file::read_head(&mut r).expect("head");
    let mut records = Vec::new();
    while let Some(rec) = backup_file::read_record(&mut r).expect("a record") {
        records.push(rec);
    }
    assert!(records.len() >= 5, "{} chunks", records.len());
    let lasts: Vec<bool> = records
        .iter()
        .map(|rec| backup_file::parse_record(rec).expect("framing").0)
        .collect();
    assert!(lasts[..lasts.len() - 1].iter().all(|l| !l) && lasts[lasts.len() - 1]);
    let file = |name: &str, content: &[u8]| {
        let path = c.work.path().join(name);
        std::fs::write(&path, content).expect("write");
        path
    };

    // A fresh member in the same domain.
    let m = fresh_member_in_domain(&c.work.path().join("restored"), "restored", &c.domain_secret);
    let restore = |path: &Path| -> Run { restore(&m, path, &c.owner_secret, &c.domain_secret) };
    let nothing_left = |case: &str| {
        let listed = m.admin(&["partition", "list"]).expect_ok().stdout;
        assert!(
            !listed.contains(PARTITION),
            "{case}: a refused restore left the partition:\n{listed}"
        );
    };
    let mut changed = records[2].clone();
    let middle = changed.len() / 2;
    changed[middle] ^= 0x01;
    let r = &records;
    // The file with its first chunks replaced by `first`, the rest as made.
    let with_first = |first: &[&[u8]]| -> Vec<u8> {
        first
            .iter()
            .copied()
            .chain(r[3..].iter().map(|v| &v[..]))
            .collect::<Vec<&[u8]>>()
            .concat()
    };
    let no_last: Vec<u8> = std::iter::once(&head[..])
        .chain(r[..r.len() - 1].iter().map(|v| &v[..]))
        .collect::<Vec<&[u8]>>()
        .concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a changed chunk",
            with_first(&[&head, &r[0], &r[1], &changed]),
            "does not open",
        ),
        (
            "a missing chunk",
            with_first(&[&head, &r[0], &r[1]]),
            "does not open",
        ),
        (
            "two chunks swapped",
            with_first(&[&head, &r[0], &r[2], &r[1]]),
            "does not open",
        ),
        ("no last chunk", no_last, "cut short"),
        (
            "cut mid-chunk",
            [&head[..], &r[0], &r[1], &r[2][..r[2].len() / 2]].concat(),
            "damaged or cut short",
        ),
    ];
    for (case, content, needle) in cases {
        let path = file(&format!("{}.bak", case.replace(' ', "-")), &content);
        let run = restore(&path);
        assert!(
            !run.ok && (run.stderr.contains(needle) || run.stdout.contains(needle)),
            "{case}: {run:?}"
        );
        nothing_left(case);
    }

    let restored = restore(&bak).expect_ok();
    assert!(
        restored.stdout.contains("restored from the backup"),
        "{restored:?}"
    );

    // Read it back through the module: the restored member as a server of its own.
    serve_client(&c.conf, "restored", &m);
    let p11 = module(&c.conf);
    let session = login(&p11, slot_of(&p11, "restored"));
    let back = contents(&session);
    assert_eq!(back.len(), original.len());
    assert!(
        back == original,
        "the restored objects differ from the backed-up ones"
    );
    for k in 0..5 {
        assert!(!back.contains_key(&format!("big-{k}")), "big-{k} came back");
    }
    assert_eq!(back["big-2399"], value_of(2399));
    let key = aes_key(&session);
    assert_eq!(
        session
            .decrypt(&Mechanism::AesCbcPad(IV), key, &sealed)
            .expect("decrypt with the restored key"),
        plain
    );
    drop(session);
    p11.finalize().expect("C_Finalize");
}
