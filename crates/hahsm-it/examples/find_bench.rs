//! Finding one object among many (issue 15, item 7): the latency of
//! `C_FindObjectsInit` + `C_FindObjects` + `C_FindObjectsFinal` through the
//! HA slot of a 3-member group holding N objects (10,000 by default), by each
//! attribute the members index (class, key type, id, label, subject, issuer
//! with serial number), and by one they do not (`CKA_APPLICATION`, a walk of
//! every object: what finds by class, key type, id or subject cost before
//! the index). Beside them, the latency of `C_GetAttributeValue` of a found
//! key's id (answered from what the find brought) and of a signature, and
//! the bare round trip (`C_GenerateRandom` of 1 byte) as the floor.
//!
//!   cargo build --release -p hahsmd -p hahsm-cli -p hahsm-pkcs11 -p hahsm-it --example find_bench
//!   HAHSM_BIN_DIR=$PWD/target/release target/release/examples/find_bench [OBJECTS] [ROUNDS]
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, CertificateType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use hahsm_it::cluster::{Cluster, PIN};
use hdrhistogram::Histogram;
use std::time::Instant;

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn login(p11: &Pkcs11) -> Session {
    let slot = p11.get_slots_with_token().expect("slots")[0];
    let s = p11.open_rw_session(slot).expect("session");
    let _ = s.login(UserType::User, Some(&AuthPin::new(PIN.to_string().into())));
    s
}

/// p50 and p99 of `op` over `rounds` calls, in µs.
fn measure(rounds: usize, mut op: impl FnMut()) -> (f64, f64) {
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..rounds.div_ceil(10) {
        op();
    }
    for _ in 0..rounds {
        let t = Instant::now();
        op();
        h.record(t.elapsed().as_micros() as u64).expect("record");
    }
    (h.value_at_quantile(0.5) as f64, h.value_at_quantile(0.99) as f64)
}

fn row(what: &str, p50: f64, p99: f64) {
    println!("  {what:<44} {p50:>8.0} {p99:>8.0}");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let objects: usize = args.next().map_or(10_000, |a| a.parse().expect("OBJECTS"));
    let rounds: usize = args.next().map_or(2_000, |a| a.parse().expect("ROUNDS"));
    let c = Cluster::new(3);
    c.ha_only_conf(None);
    let p11 = Pkcs11::new(hahsm_it::bin_dir().join("libhahsm_pkcs11.so")).expect("module loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");

    let started = Instant::now();
    let data = objects.saturating_sub(20);
    std::thread::scope(|scope| {
        for t in 0..8 {
            let p11 = &p11;
            scope.spawn(move || {
                let s = login(p11);
                for i in (t..data).step_by(8) {
                    s.create_object(&[
                        Attribute::Class(ObjectClass::DATA),
                        Attribute::Token(true),
                        Attribute::Id(format!("data-{i}").into_bytes()),
                        Attribute::Label(format!("label-{}", i % 100).into_bytes()),
                        Attribute::Application(format!("app-{i}").into_bytes()),
                    ])
                    .expect("C_CreateObject");
                }
            });
        }
    });
    let s = login(&p11);
    for c in 0..10u8 {
        s.create_object(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Id(vec![c]),
            Attribute::Label(format!("cert-{c}").into_bytes()),
            Attribute::Subject(format!("CN=subject {c}").into_bytes()),
            Attribute::Issuer(b"CN=bench CA".to_vec()),
            Attribute::SerialNumber(vec![2, 1, c]),
            Attribute::Value(vec![0x30, 0x03, 0x02, 0x01, c]),
        ])
        .expect("certificate");
    }
    for k in 0..5u8 {
        s.generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::Token(true), Attribute::EcParams(P256.to_vec())],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sign(true),
                Attribute::Id(vec![0xec, k]),
                Attribute::Label(format!("key-{k}").into_bytes()),
            ],
        )
        .expect("key pair");
    }
    println!(
        "{} objects made through the HA slot of 3 members in {:.1} s",
        data + 20,
        started.elapsed().as_secs_f64()
    );

    let finds: Vec<(&str, Vec<Attribute>)> = vec![
        (
            "class (10 certificates)",
            vec![Attribute::Class(ObjectClass::CERTIFICATE)],
        ),
        (
            "key type (5 EC private keys)",
            vec![
                Attribute::KeyType(cryptoki::object::KeyType::EC),
                Attribute::Class(ObjectClass::PRIVATE_KEY),
            ],
        ),
        (
            "id (1)",
            vec![Attribute::Id(format!("data-{}", data / 2).into_bytes())],
        ),
        ("label (1 key)", vec![Attribute::Label(b"key-3".to_vec())]),
        ("subject (1)", vec![Attribute::Subject(b"CN=subject 7".to_vec())]),
        (
            "issuer + serial (1)",
            vec![
                Attribute::Issuer(b"CN=bench CA".to_vec()),
                Attribute::SerialNumber(vec![2, 1, 4]),
            ],
        ),
        (
            "CKA_APPLICATION (1, no index)",
            vec![Attribute::Application(format!("app-{}", data / 3).into_bytes())],
        ),
    ];
    println!("{rounds} rounds each, latency in µs (p50 / p99):");
    for (what, template) in &finds {
        let want = s.find_objects(template).expect("find").len();
        assert!(want > 0, "{what}: nothing found");
        let (p50, p99) = measure(rounds, || {
            let found = s.find_objects(template).expect("find");
            assert_eq!(found.len(), want);
        });
        row(&format!("find by {what}"), p50, p99);
    }
    let key = s
        .find_objects(&[Attribute::Label(b"key-1".to_vec())])
        .expect("find")[0];
    let (p50, p99) = measure(rounds, || {
        let k = s
            .find_objects(&[Attribute::Label(b"key-1".to_vec())])
            .expect("find")[0];
        s.get_attributes(k, &[AttributeType::Id]).expect("id");
    });
    row("find by label, then read CKA_ID", p50, p99);
    let (p50, p99) = measure(rounds, || {
        s.sign(&Mechanism::Ecdsa, key, &[7u8; 32]).expect("sign");
    });
    row("sign (P-256)", p50, p99);
    let (p50, p99) = measure(rounds, || {
        s.generate_random_slice(&mut [0u8; 1]).expect("random");
    });
    row("bare round trip (C_GenerateRandom, 1 byte)", p50, p99);
    drop(s);
    p11.finalize().expect("C_Finalize");
}
