//! Post-quantum keys in a group of three: an ML-DSA-65 key and an
//! ML-KEM-768 key made through the HA slot are on every member and work
//! there (each member's own slot signs and decapsulates with them), a member
//! killed with SIGKILL while applications sign costs no signature, and a key
//! generated while it is down is made once. Under both write concerns.
//!
//! The module keeps process-wide state, so the two tests take turns.
mod t20_pkcs11_support;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::dsa::{HedgeType, SignAdditionalContext};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, MlDsaParameterSetType, MlKemParameterSetType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use hahsm_it::cluster::{Cluster, GROUP, PIN};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use t20_pkcs11_support::{module_path, readable_secret, value};

fn ml_dsa(context: Option<&[u8]>) -> Mechanism<'_> {
    Mechanism::MlDsa(SignAdditionalContext::new(HedgeType::Preferred, context))
}

fn login(p11: &Pkcs11, slot: Slot) -> Session {
    let s = p11.open_rw_session(slot).expect("session");
    s.login(UserType::User, Some(&AuthPin::new(PIN.to_string().into())))
        .expect("login");
    s
}

fn find_one(s: &Session, class: ObjectClass, label: &str) -> Option<cryptoki::object::ObjectHandle> {
    let found = s
        .find_objects(&[
            Attribute::Class(class),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .ok()?;
    match found.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

fn dsa_pair(s: &Session, label: &str) {
    s.generate_key_pair(
        &Mechanism::MlDsaKeyPairGen,
        &[
            Attribute::Token(true),
            Attribute::ParameterSet(MlDsaParameterSetType::ML_DSA_65.into()),
            Attribute::Label(label.as_bytes().to_vec()),
        ],
        &[
            Attribute::Token(true),
            Attribute::Sign(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ],
    )
    .unwrap_or_else(|e| panic!("ML-DSA-65 pair {label} through the HA slot: {e}"));
}

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn post_quantum_keys_in_a_group_of_three_under_all_reachable() {
    keys_in_a_group(&[]);
}

#[test]
fn post_quantum_keys_in_a_group_of_three_under_quorum() {
    keys_in_a_group(&["--quorum"]);
}

fn keys_in_a_group(group_options: &[&str]) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::with_group_options(3, group_options);
    // The group's client config lists each member's own slot and the HA slot.
    std::env::set_var("HAHSM_CONF", &c.conf);
    std::env::set_var("HAHSM_PKCS11_LOG", c.work.path().join("pkcs11.log"));
    std::env::set_var("HAHSM_HA_LOG", c.work.path().join("ha.log"));
    let p11 = Pkcs11::new(module_path()).expect("module loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slots = p11.get_slots_with_token().expect("slots");
    let (ha, members): (Vec<Slot>, Vec<Slot>) = slots.iter().partition(|s| {
        p11.get_token_info(**s)
            .map(|t| t.label() == GROUP)
            .unwrap_or(false)
    });
    assert_eq!(
        (ha.len(), members.len()),
        (1, 3),
        "the HA slot and each member's own"
    );
    let ha = ha[0];
    let s = login(&p11, ha);

    // Both keys are made through the HA slot.
    dsa_pair(&s, "pq-dsa");
    let dsa_public = find_one(&s, ObjectClass::PUBLIC_KEY, "pq-dsa").expect("the public half");
    s.generate_key_pair(
        &Mechanism::MlKemKeyPairGen,
        &[
            Attribute::Token(true),
            Attribute::ParameterSet(MlKemParameterSetType::ML_KEM_768.into()),
            Attribute::Encapsulate(true),
            Attribute::Label(b"pq-kem".to_vec()),
        ],
        &[
            Attribute::Token(true),
            Attribute::Decapsulate(true),
            Attribute::Label(b"pq-kem".to_vec()),
        ],
    )
    .expect("ML-KEM-768 pair through the HA slot");
    let kem_public = find_one(&s, ObjectClass::PUBLIC_KEY, "pq-kem").expect("the public half");
    let (ciphertext, sent) = s
        .encapsulate_key(&Mechanism::MlKem, kem_public, &readable_secret())
        .expect("encapsulate through the HA slot");
    let secret = value(&s, sent);

    // Every member signs with the ML-DSA key and decapsulates with the
    // ML-KEM key, through its own slot.
    for (i, slot) in members.iter().enumerate() {
        let m = login(&p11, *slot);
        let replicated = c.wait(Duration::from_secs(20), || {
            find_one(&m, ObjectClass::PRIVATE_KEY, "pq-dsa").is_some()
                && find_one(&m, ObjectClass::PRIVATE_KEY, "pq-kem").is_some()
        });
        assert!(replicated, "slot {i} never had both keys");
        let dsa = find_one(&m, ObjectClass::PRIVATE_KEY, "pq-dsa").unwrap();
        let context = format!("member slot {i}");
        let sig = m
            .sign(&ml_dsa(Some(context.as_bytes())), dsa, b"signed on one member")
            .unwrap_or_else(|e| panic!("slot {i} signs: {e}"));
        s.verify(
            &ml_dsa(Some(context.as_bytes())),
            dsa_public,
            b"signed on one member",
            &sig,
        )
        .unwrap_or_else(|e| panic!("slot {i}'s signature verifies through the HA slot: {e}"));
        let kem = find_one(&m, ObjectClass::PRIVATE_KEY, "pq-kem").unwrap();
        let got = m
            .decapsulate_key(&Mechanism::MlKem, kem, &readable_secret(), &ciphertext)
            .unwrap_or_else(|e| panic!("slot {i} decapsulates: {e}"));
        assert_eq!(
            value(&m, got),
            secret,
            "slot {i} recovers the encapsulated secret"
        );
    }

    // Signers through the HA slot while member 1 is killed with SIGKILL.
    let dsa = find_one(&s, ObjectClass::PRIVATE_KEY, "pq-dsa").unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let signers: Vec<_> = (0..4)
        .map(|t| {
            let (p11, done, failed, stop) = (p11.clone(), done.clone(), failed.clone(), stop.clone());
            std::thread::spawn(move || {
                let s = p11.open_ro_session(ha).expect("session");
                let mut k = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let data = format!("{t}-{k}");
                    match s.sign(&ml_dsa(None), dsa, data.as_bytes()) {
                        Ok(_) => done.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            eprintln!("signer {t}: signature {k} failed: {e}");
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                    k += 1;
                }
            })
        })
        .collect();
    let wait_for = |more: u64| {
        let target = done.load(Ordering::SeqCst) + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && done.load(Ordering::SeqCst) < target {
            std::thread::sleep(Duration::from_millis(20));
        }
        done.load(Ordering::SeqCst) >= target
    };
    assert!(wait_for(40), "signing started");
    c.members[1].kill9();
    assert!(wait_for(200), "signing went on after the kill");
    stop.store(true, Ordering::SeqCst);
    for t in signers {
        t.join().expect("signer");
    }
    let (signed, failures) = (done.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("{signed} ML-DSA-65 signatures through the HA slot, {failures} failed, member 1 killed midway");
    let ha_log = std::fs::read_to_string(c.work.path().join("ha.log")).unwrap_or_default();
    assert_eq!(failures, 0, "a member's death cost signatures\n{ha_log}");
    assert!(
        ha_log.contains("dropped"),
        "the killed member was never taken out of the rotation, so it served nothing:\n{ha_log}"
    );

    // A key made while member 1 is down is made once, on the two left.
    dsa_pair(&s, "pq-dsa-later");
    let sig = s
        .sign(
            &ml_dsa(None),
            find_one(&s, ObjectClass::PRIVATE_KEY, "pq-dsa-later").unwrap(),
            b"later",
        )
        .expect("the new key signs");
    let public = find_one(&s, ObjectClass::PUBLIC_KEY, "pq-dsa-later").expect("one public half");
    s.verify(&ml_dsa(None), public, b"later", &sig).unwrap();
    for i in [0, 2] {
        let list = c.keys(i, &["list"]).expect_ok().stdout;
        let n = list
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == "pq-dsa-later"))
            .count();
        assert_eq!(n, 2, "member {i} holds the pair once (its two halves):\n{list}");
    }
    drop(s);
    p11.finalize().expect("C_Finalize");
}
