//! The FIPS build (issue 14, item 7), through the built module's HA slot of a
//! two-member group: it runs only when the workspace is built and tested with
//! `--features fips` (`cargo build --features fips && cargo test -p hahsm-it
//! --features fips --test t37_fips`), as the members and the module then run
//! AWS-LC's FIPS module.
//!
//! - The console, the metrics and `C_GetInfo` say so.
//! - What the FIPS module does not approve is not listed and is refused with
//!   `CKR_MECHANISM_INVALID` (`CKR_KEY_SIZE_RANGE` for RSA-1024), even under
//!   the partition's policy 40; what it approves still works.
#![cfg(feature = "fips")]
mod t20_pkcs11_support;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use hahsm_it::cluster::{Cluster, PARTITION, PIN};
use t20_pkcs11_support::module_path;

fn code<T: std::fmt::Debug>(r: Result<T, Error>) -> Option<RvError> {
    match r {
        Err(Error::Pkcs11(rv, _)) => Some(rv),
        Err(other) => panic!("not a PKCS#11 error: {other}"),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

fn rsa(s: &Session, bits: u64) -> Result<(ObjectHandle, ObjectHandle), Error> {
    s.generate_key_pair(
        &Mechanism::RsaPkcsKeyPairGen,
        &[
            Attribute::Token(true),
            Attribute::ModulusBits(bits.into()),
            Attribute::Verify(true),
            Attribute::Encrypt(true),
        ],
        &[
            Attribute::Token(true),
            Attribute::Sign(true),
            Attribute::Decrypt(true),
        ],
    )
}

#[test]
fn the_fips_build_says_so_and_refuses_what_the_fips_module_does_not_approve() {
    let c = Cluster::new(2);
    c.ha_only_conf(None);

    let status = c.admin(0, &["status"]).expect_ok();
    assert!(
        status.stdout.contains("FIPS module:      yes"),
        "{}",
        status.stdout
    );

    let p11 = Pkcs11::new(module_path()).expect("module loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let info = p11.get_library_info().expect("C_GetInfo");
    assert_eq!(info.library_description(), "hahsm PKCS#11 module (FIPS)");
    let slot = p11.get_slots_with_token().expect("slots")[0];
    let s = p11.open_rw_session(slot).expect("session");
    s.login(UserType::User, Some(&AuthPin::new(PIN.to_string().into())))
        .expect("login");

    // Under the legacy policy too: FIPS mode comes first.
    for i in 0..c.members.len() {
        c.so_login(i);
        c.admin(
            i,
            &[
                "partition",
                "change-policy",
                "--partition",
                PARTITION,
                "--policy",
                "40",
                "--value",
                "1",
            ],
        )
        .expect_ok();
    }
    let list = t20_pkcs11_support::raw::mechanisms_of(slot);
    for m in hahsm_token::mechanism::FIPS_REFUSED {
        assert!(!list.contains(m), "{m:#x} is listed in FIPS mode");
    }
    assert!(
        list.contains(&cryptoki_sys::CKM_SHA_1_HMAC),
        "SHA-1 HMAC is approved"
    );
    let rsa_info = p11
        .get_mechanism_info(slot, MechanismType::RSA_PKCS)
        .expect("C_GetMechanismInfo");
    assert_eq!(rsa_info.min_key_size(), 2048);
    assert!(rsa_info.sign() && !rsa_info.encrypt() && !rsa_info.unwrap());

    assert_eq!(
        code(s.generate_key(&Mechanism::Des3KeyGen, &[Attribute::Token(false)])),
        Some(RvError::MechanismInvalid)
    );
    assert_eq!(code(rsa(&s, 1024)), Some(RvError::KeySizeRange));
    let (public, private) = rsa(&s, 2048).expect("RSA-2048");
    assert_eq!(
        code(s.sign(&Mechanism::Sha1RsaPkcs, private, b"data")),
        Some(RvError::MechanismInvalid)
    );
    assert_eq!(
        code(s.encrypt(&Mechanism::RsaPkcs, public, b"data")),
        Some(RvError::MechanismInvalid)
    );
    assert_eq!(
        code(s.sign(&Mechanism::RsaX509, private, &[1u8; 256])),
        Some(RvError::MechanismInvalid)
    );
    let sig = s
        .sign(&Mechanism::Sha256RsaPkcs, private, b"data")
        .expect("SHA-256 RSA signs");
    s.verify(&Mechanism::Sha256RsaPkcs, public, b"data", &sig)
        .expect("and verifies");
    let oaep = cryptoki::mechanism::rsa::PkcsOaepParams::new(
        MechanismType::SHA256,
        cryptoki::mechanism::rsa::PkcsMgfType::MGF1_SHA256,
        cryptoki::mechanism::rsa::PkcsOaepSource::empty(),
    );
    let ct = s
        .encrypt(&Mechanism::RsaPkcsOaep(oaep), public, b"data")
        .expect("OAEP encrypts");
    assert_eq!(
        s.decrypt(&Mechanism::RsaPkcsOaep(oaep), private, &ct)
            .expect("OAEP decrypts"),
        b"data"
    );

    // The member says it too, on its metrics.
    let metrics = c.members[0].metrics_url();
    let body = hahsm_it::run("curl", &["-s", &metrics]).stdout;
    assert!(body.contains("fips=\"true\""), "{body}");
}
