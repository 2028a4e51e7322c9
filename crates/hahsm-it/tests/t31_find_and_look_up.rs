//! Finding objects and looking keys up as servers do (issue 15, item 7),
//! through the HA slot of a three-member group:
//!
//! - among 10,000 objects, `C_FindObjects` by class, key type, id, label,
//!   subject and issuer with serial number answers exactly the objects the
//!   test made with that value, on every member (each killed in turn, so
//!   each member's own index answers, also the one rebuilt at its restart),
//!   and a rename moves an object from one label's answer to the other's;
//! - a look-up like nginx's through libp11 (find the key by label, read its
//!   id, label, key type and public point, sign) costs one round trip more
//!   than the signature: the find brings the attributes. Counted by the
//!   members themselves (`hahsm_operations_total`);
//! - what the find brought answers only while it stands for the member's
//!   answer: not after this process changed the object (read-your-writes),
//!   not after a logout, and not once it is older than its freshness bound
//!   when another process renamed the key.
//!
//! How fast the indexed find is lives in a benchmark (`examples/find_bench`).
mod t20_pkcs11_support;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, CertificateType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use hahsm_it::cluster::{Cluster, PIN};
use std::collections::BTreeSet;
use std::time::Duration;
use t20_pkcs11_support::module_path;

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// Data objects made; with the keys and certificates, a partition of just
/// over 10,000 objects.
const DATA_OBJECTS: usize = 9_980;
/// The data objects share this many labels.
const LABELS: usize = 50;
const CERTIFICATES: usize = 10;

/// A session of the HA slot, logged in (a login is the token's: the
/// process's other sessions may have made it already).
fn login(p11: &Pkcs11) -> Session {
    let slot = p11.get_slots_with_token().expect("slots")[0];
    let s = p11.open_rw_session(slot).expect("session");
    match s.login(UserType::User, Some(&AuthPin::new(PIN.to_string().into()))) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => s,
        Err(e) => panic!("C_Login: {e}"),
    }
}

/// What the test made, by value, as the IDs it gave each object
/// (`CKA_ID` is unique per object).
struct Made {
    data: Vec<Vec<u8>>,
    certificates: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    ec_ids: Vec<Vec<u8>>,
    aes_ids: Vec<Vec<u8>>,
}

fn id_of(i: usize) -> Vec<u8> {
    format!("t31-{i:06}").into_bytes()
}

fn data_label(i: usize) -> Vec<u8> {
    format!("data-{}", i % LABELS).into_bytes()
}

fn subject(i: usize) -> Vec<u8> {
    format!("CN=t31 subject {i}").into_bytes()
}

fn make_objects(p11: &Pkcs11) -> Made {
    let s = login(p11);
    let mut made = Made {
        data: Vec::new(),
        certificates: Vec::new(),
        ec_ids: Vec::new(),
        aes_ids: Vec::new(),
    };
    // Four threads, each its own session, as a server's workers would.
    let per = DATA_OBJECTS.div_ceil(4);
    std::thread::scope(|scope| {
        for t in 0..4 {
            scope.spawn(move || {
                let s = login(p11);
                for i in (t * per)..((t + 1) * per).min(DATA_OBJECTS) {
                    s.create_object(&[
                        Attribute::Class(ObjectClass::DATA),
                        Attribute::Token(true),
                        Attribute::Id(id_of(i)),
                        Attribute::Label(data_label(i)),
                        Attribute::Application(b"t31".to_vec()),
                    ])
                    .unwrap_or_else(|e| panic!("C_CreateObject of data object {i}: {e}"));
                }
            });
        }
    });
    made.data = (0..DATA_OBJECTS).map(id_of).collect();
    for c in 0..CERTIFICATES {
        let id = id_of(100_000 + c);
        let issuer = b"CN=t31 test CA".to_vec();
        let serial = vec![0x02, 0x01, c as u8 + 1];
        s.create_object(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Id(id.clone()),
            Attribute::Label(format!("cert-{c}").into_bytes()),
            Attribute::Subject(subject(c)),
            Attribute::Issuer(issuer),
            Attribute::SerialNumber(serial.clone()),
            Attribute::Value(vec![0x30, 0x03, 0x02, 0x01, c as u8]),
        ])
        .expect("C_CreateObject of a certificate");
        made.certificates.push((id, subject(c), serial));
    }
    for k in 0..4 {
        let id = id_of(200_000 + k);
        s.generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(P256.to_vec()),
                Attribute::Id(id.clone()),
                Attribute::Label(format!("ec-{k}").into_bytes()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sign(true),
                Attribute::Id(id.clone()),
                Attribute::Label(format!("ec-{k}").into_bytes()),
            ],
        )
        .expect("C_GenerateKeyPair");
        made.ec_ids.push(id);
    }
    for k in 0..3 {
        let id = id_of(300_000 + k);
        s.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::ValueLen(32.into()),
                Attribute::Encrypt(true),
                Attribute::Id(id.clone()),
                Attribute::Label(format!("aes-{k}").into_bytes()),
            ],
        )
        .expect("C_GenerateKey");
        made.aes_ids.push(id);
    }
    made
}

/// The `CKA_ID`s of the objects a find answers, sorted, as many times as
/// they are found (each read back, so that the handles are checked too; the
/// two halves of a key pair share theirs).
fn ids_found(s: &Session, template: &[Attribute]) -> Vec<Vec<u8>> {
    let found = s.find_objects(template).expect("C_FindObjects");
    let mut ids: Vec<Vec<u8>> = found.iter().map(|o| id(s, *o)).collect();
    ids.sort();
    ids
}

fn id(s: &Session, o: ObjectHandle) -> Vec<u8> {
    match s.get_attributes(o, &[AttributeType::Id]).expect("CKA_ID").pop() {
        Some(Attribute::Id(v)) => v,
        other => panic!("CKA_ID: {other:?}"),
    }
}

fn label(s: &Session, o: ObjectHandle) -> Vec<u8> {
    match s
        .get_attributes(o, &[AttributeType::Label])
        .expect("CKA_LABEL")
        .pop()
    {
        Some(Attribute::Label(v)) => v,
        other => panic!("CKA_LABEL: {other:?}"),
    }
}

/// Sorted, each once.
fn set(ids: impl IntoIterator<Item = Vec<u8>>) -> Vec<Vec<u8>> {
    let once: BTreeSet<Vec<u8>> = ids.into_iter().collect();
    once.into_iter().collect()
}

/// Sorted, each twice: the ids of key pairs.
fn pairs(ids: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut both: Vec<Vec<u8>> = ids.iter().chain(ids).cloned().collect();
    both.sort();
    both
}

/// Every indexed attribute, each against what the test made.
fn every_find_answers_what_was_made(s: &Session, made: &Made, on: &str) {
    let data = ids_found(s, &[Attribute::Class(ObjectClass::DATA)]);
    assert_eq!(data, set(made.data.clone()), "{on}: every data object by class");
    let seventh = ids_found(s, &[Attribute::Label(data_label(7))]);
    assert_eq!(
        seventh,
        set((0..DATA_OBJECTS).filter(|i| i % LABELS == 7).map(id_of)),
        "{on}: the data objects of one label"
    );
    for i in [0, 4_321, DATA_OBJECTS - 1] {
        assert_eq!(
            ids_found(s, &[Attribute::Id(id_of(i))]),
            set([id_of(i)]),
            "{on}: data object {i} by its id"
        );
    }
    let ec = ids_found(s, &[Attribute::KeyType(KeyType::EC)]);
    assert_eq!(ec, pairs(&made.ec_ids), "{on}: the EC keys (both halves)");
    let ec_private = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC),
        ])
        .expect("C_FindObjects");
    assert_eq!(ec_private.len(), made.ec_ids.len(), "{on}: the EC private keys");
    let aes = ids_found(s, &[Attribute::KeyType(KeyType::AES)]);
    assert_eq!(aes, set(made.aes_ids.clone()), "{on}: the AES keys");
    for (id, subject, serial) in &made.certificates {
        assert_eq!(
            ids_found(s, &[Attribute::Subject(subject.clone())]),
            set([id.clone()]),
            "{on}: a certificate by its subject"
        );
        assert_eq!(
            ids_found(
                s,
                &[
                    Attribute::Class(ObjectClass::CERTIFICATE),
                    Attribute::Issuer(b"CN=t31 test CA".to_vec()),
                    Attribute::SerialNumber(serial.clone()),
                ]
            ),
            set([id.clone()]),
            "{on}: a certificate by issuer and serial number"
        );
    }
    let missing = ids_found(s, &[Attribute::Id(b"no such id".to_vec())]);
    assert!(missing.is_empty(), "{on}: an id nobody holds");
    // An attribute with no index: the walk of every object still answers.
    let by_application = s
        .find_objects(&[
            Attribute::Application(b"t31".to_vec()),
            Attribute::Label(data_label(3)),
        ])
        .expect("C_FindObjects");
    let third = (0..DATA_OBJECTS).filter(|i| i % LABELS == 3).count();
    assert_eq!(by_application.len(), third, "{on}: by application and label");
}

/// The operations the members have counted of each kind, summed.
fn member_counts(c: &Cluster, operation: &str) -> f64 {
    c.members
        .iter()
        .filter(|m| m.pid().is_some())
        .map(|m| {
            let r = hahsm_it::run("curl", &["-sS", "--max-time", "5", &m.metrics_url()]);
            assert!(r.ok, "scrape: {}", r.stderr);
            r.stdout
                .lines()
                .filter(|l| {
                    l.starts_with("hahsm_operations_total{")
                        && l.contains(&format!("operation=\"{operation}\""))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        })
        .sum()
}

/// Round trips of each kind that `act` made, as the members counted them.
fn round_trips(c: &Cluster, act: impl FnOnce()) -> [f64; 3] {
    let kinds = ["find-objects", "get-attributes", "sign"];
    let before = kinds.map(|k| member_counts(c, k));
    act();
    let after = kinds.map(|k| member_counts(c, k));
    [0, 1, 2].map(|i| after[i] - before[i])
}

/// libp11's look-up of a private key, as nginx's `engine:pkcs11:` makes it:
/// the key by label, its attributes one by one (each asked for its length,
/// then its value), then a signature.
fn look_up_and_sign(s: &Session, name: &str) -> Vec<u8> {
    let key = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(name.as_bytes().to_vec()),
        ])
        .expect("C_FindObjects")[0];
    for t in [
        AttributeType::Id,
        AttributeType::Label,
        AttributeType::KeyType,
        AttributeType::AlwaysAuthenticate,
        AttributeType::EcParams,
    ] {
        s.get_attributes(key, &[t]).expect("C_GetAttributeValue");
    }
    s.sign(&Mechanism::Ecdsa, key, &[7u8; 32]).expect("C_Sign")
}

fn a_look_up_costs_one_round_trip_more_than_the_signature(c: &Cluster, s: &Session) {
    let [finds, reads, signs] = round_trips(c, || {
        look_up_and_sign(s, "ec-1");
    });
    assert_eq!(
        (finds, reads, signs),
        (1.0, 0.0, 1.0),
        "find, read the attributes, sign: round trips (find, get-attributes, sign)"
    );
    // The key is known now: a signature is one round trip.
    let key = s
        .find_objects(&[Attribute::Label(b"ec-2".to_vec()), Attribute::Sign(true)])
        .expect("C_FindObjects")[0];
    let [_, reads, signs] = round_trips(c, || {
        s.sign(&Mechanism::Ecdsa, key, &[1u8; 32]).expect("C_Sign");
    });
    assert_eq!((reads, signs), (0.0, 1.0), "a signature with a key found before");
}

fn what_a_find_brought_answers_only_while_it_stands(c: &Cluster, p11: &Pkcs11, s: &Session) {
    // Read-your-writes: this process renames the key after finding it,
    // through another session; the next read goes to a member.
    let other = login(p11);
    let key = s
        .find_objects(&[Attribute::Label(b"ec-3".to_vec()), Attribute::Sign(true)])
        .expect("C_FindObjects")[0];
    other
        .update_attributes(key, &[Attribute::Label(b"ec-3-renamed".to_vec())])
        .expect("C_SetAttributeValue");
    assert_eq!(
        label(s, key),
        b"ec-3-renamed",
        "a read after this process's rename"
    );

    // Another process renames it back; within the freshness bound the read
    // may answer as of the find, after it the member answers.
    let key = s
        .find_objects(&[Attribute::Label(b"ec-3-renamed".to_vec()), Attribute::Sign(true)])
        .expect("C_FindObjects")[0];
    c.keys(0, &["set-attr", "--label", "ec-3-renamed", "--set", "label=ec-3"])
        .expect_ok();
    // (Polled: the member that answers may apply the rename a little later.
    // Reads from what the find brought would answer the old label for ever.)
    let renamed = c.wait(Duration::from_secs(10), || label(s, key) == b"ec-3");
    assert!(
        renamed,
        "a read past the freshness bound of the find: {:?}",
        label(s, key)
    );

    // A logout hides the private key the find brought.
    let key = s
        .find_objects(&[Attribute::Label(b"ec-0".to_vec()), Attribute::Sign(true)])
        .expect("C_FindObjects")[0];
    s.logout().expect("C_Logout");
    let after = s.get_attributes(key, &[AttributeType::Label]);
    assert!(
        after.is_err(),
        "the private key's label read after C_Logout: {after:?}"
    );
    drop(other);
}

#[test]
fn finds_and_look_ups_among_ten_thousand_objects_through_the_ha_slot() {
    let mut c = Cluster::with_monitoring(3, &|_| String::new());
    c.ha_only_conf(None);
    std::env::set_var("HAHSM_PKCS11_LOG", c.work.path().join("pkcs11.log"));
    let p11 = Pkcs11::new(module_path()).expect("module loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let made = make_objects(&p11);
    {
        let s = login(&p11);
        every_find_answers_what_was_made(&s, &made, "every member up");
        // A rename moves the object between two labels' answers.
        let moved = s.find_objects(&[Attribute::Id(id_of(7))]).expect("find")[0];
        s.update_attributes(moved, &[Attribute::Label(b"moved".to_vec())])
            .expect("C_SetAttributeValue");
        assert_eq!(
            ids_found(&s, &[Attribute::Label(b"moved".to_vec())]),
            set([id_of(7)])
        );
        s.update_attributes(moved, &[Attribute::Label(data_label(7))])
            .expect("C_SetAttributeValue");
        assert!(ids_found(&s, &[Attribute::Label(b"moved".to_vec())]).is_empty());
    }
    for i in 0..c.members.len() {
        c.members[i].kill9();
        let s = login(&p11);
        every_find_answers_what_was_made(&s, &made, &format!("member {i} down"));
        drop(s);
        c.members[i].spawn();
        assert!(
            c.wait_in_sync(i, Duration::from_secs(120)),
            "member {i} did not catch up"
        );
    }
    let s = login(&p11);
    a_look_up_costs_one_round_trip_more_than_the_signature(&c, &s);
    what_a_find_brought_answers_only_while_it_stands(&c, &p11, &s);
    drop(s);
    p11.finalize().expect("C_Finalize");
}
