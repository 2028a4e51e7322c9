//! ML-DSA and ML-KEM: the mechanisms' rules, known answers (the IETF example
//! keys, `tests/data/README.md`), and cross-checks with RustCrypto's
//! independent `ml-dsa` and `ml-kem` crates.
use crate::keys::{generate_ec, import_private_key_der, Curve, PublicKey};
use crate::pq::{
    generate_ml_dsa, generate_ml_kem, ml_dsa_private_from_seed, ml_kem_private_from_value, MlDsaSet, MlKemSet,
};
use crate::{
    ck, kem_decapsulate, kem_encapsulate, output_len, sign, verify, KeyMaterial, LoadedKey, SecretBytes,
    TokenError,
};
use hahsm_token::mechanism::Usage;
use hahsm_token::{MechParams, Mechanism};

fn ml_dsa(params: MechParams) -> Mechanism {
    Mechanism {
        mech: ck::CKM_ML_DSA,
        params,
    }
}

fn ctx(hedge: u64, context: &[u8]) -> Mechanism {
    ml_dsa(MechParams::SignContext {
        hedge,
        context: context.to_vec(),
    })
}

fn dsa_private(set: MlDsaSet, seed: &SecretBytes) -> LoadedKey {
    LoadedKey::load(KeyMaterial::MlDsaPrivate {
        set,
        seed: seed.clone(),
    })
    .unwrap()
}

fn kem_private(set: MlKemSet, dk: &SecretBytes) -> LoadedKey {
    LoadedKey::load(KeyMaterial::MlKemPrivate {
        set,
        value: dk.clone(),
    })
    .unwrap()
}

fn public(p: &PublicKey) -> LoadedKey {
    LoadedKey::load(KeyMaterial::Public(p.clone())).unwrap()
}

fn pem_der(text: &str) -> Vec<u8> {
    pem::parse(text).unwrap().into_contents()
}

fn raw_public(p: &PublicKey) -> &[u8] {
    match p {
        PublicKey::MlDsa { value, .. } | PublicKey::MlKem { value, .. } => value,
        _ => panic!("not an ML key"),
    }
}

#[test]
fn parameter_sets_name_their_sizes_and_codes() {
    let dsa: Vec<_> = MlDsaSet::ALL
        .iter()
        .map(|s| (s.name(), s.ckp(), s.public_len(), s.signature_len()))
        .collect();
    assert_eq!(
        dsa,
        [
            ("ML-DSA-44", 1, 1312, 2420),
            ("ML-DSA-65", 2, 1952, 3309),
            ("ML-DSA-87", 3, 2592, 4627)
        ]
    );
    let kem: Vec<_> = MlKemSet::ALL
        .iter()
        .map(|s| {
            (
                s.name(),
                s.ckp(),
                s.public_len(),
                s.private_len(),
                s.ciphertext_len(),
            )
        })
        .collect();
    assert_eq!(
        kem,
        [
            ("ML-KEM-512", 1, 800, 1632, 768),
            ("ML-KEM-768", 2, 1184, 2400, 1088),
            ("ML-KEM-1024", 3, 1568, 3168, 1568)
        ]
    );
    for s in MlDsaSet::ALL {
        assert_eq!(MlDsaSet::from_ckp(s.ckp()), Some(s));
    }
    for s in MlKemSet::ALL {
        assert_eq!(MlKemSet::from_ckp(s.ckp()), Some(s));
    }
    assert_eq!(MlDsaSet::from_ckp(0), None);
    assert_eq!(MlKemSet::from_ckp(4), None);
}

#[test]
fn ml_dsa_signs_and_verifies_with_and_without_context() {
    for set in MlDsaSet::ALL {
        let kp = generate_ml_dsa(set).unwrap();
        assert_eq!(kp.private_pkcs8.len(), 32);
        assert_eq!(raw_public(&kp.public).len(), set.public_len());
        let private = dsa_private(set, &kp.private_pkcs8);
        let pubkey = public(&kp.public);
        for k in [&private, &pubkey] {
            assert_eq!(k.key_type(), ck::CKK_ML_DSA);
            assert_eq!(k.parameter_set(), Some(set.ckp()));
            assert_eq!(k.public(), Some(&kp.public));
        }
        assert!(private.is_private() && !pubkey.is_private());
        assert_eq!(kp.public.parameter_set(), Some(set.ckp()));
        assert_eq!(kp.public.key_type(), ck::CKK_ML_DSA);
        assert_eq!(kp.public.ec_params(), None);
        assert_eq!(kp.public.modulus_bits(), None);

        let none = ml_dsa(MechParams::None);
        assert_eq!(
            output_len(&none, &private, 5, Usage::Sign).unwrap(),
            set.signature_len()
        );
        let sig = sign(&none, &private, b"hello").unwrap();
        assert_eq!(sig.len(), set.signature_len());
        verify(&none, &pubkey, b"hello", &sig).unwrap();
        verify(&none, &private, b"hello", &sig).unwrap();
        // MechParams::None is the empty context, hedged.
        verify(&ctx(ck::CKH_HEDGE_PREFERRED, b""), &pubkey, b"hello", &sig).unwrap();
        assert_eq!(
            verify(&none, &pubkey, b"hellp", &sig),
            Err(TokenError::SignatureInvalid)
        );

        for hedge in [ck::CKH_HEDGE_PREFERRED, ck::CKH_HEDGE_REQUIRED] {
            let m = ctx(hedge, b"application context");
            let sig = sign(&m, &private, b"hello").unwrap();
            verify(&m, &pubkey, b"hello", &sig).unwrap();
            // The context is part of what is signed.
            assert_eq!(
                verify(&none, &pubkey, b"hello", &sig),
                Err(TokenError::SignatureInvalid)
            );
            assert_eq!(
                verify(&ctx(hedge, b"application contexu"), &pubkey, b"hello", &sig),
                Err(TokenError::SignatureInvalid)
            );
        }
        // Hedged: two signatures of one message differ, and both verify.
        let a = sign(&none, &private, b"m").unwrap();
        let b = sign(&none, &private, b"m").unwrap();
        assert_ne!(a, b);
        // Empty messages are messages.
        let e = sign(&none, &private, b"").unwrap();
        verify(&none, &pubkey, b"", &e).unwrap();
    }
}

#[test]
fn ml_dsa_context_of_255_bytes_is_the_limit() {
    for set in MlDsaSet::ALL {
        let kp = generate_ml_dsa(set).unwrap();
        let private = dsa_private(set, &kp.private_pkcs8);
        let pubkey = public(&kp.public);
        let max = ctx(ck::CKH_HEDGE_PREFERRED, &[0xa5; 255]);
        let sig = sign(&max, &private, b"data").unwrap();
        verify(&max, &pubkey, b"data", &sig).unwrap();
        let over = ctx(ck::CKH_HEDGE_PREFERRED, &[0xa5; 256]);
        assert!(matches!(
            sign(&over, &private, b"data"),
            Err(TokenError::MechanismParamInvalid(_))
        ));
        assert!(matches!(
            verify(&over, &pubkey, b"data", &sig),
            Err(TokenError::MechanismParamInvalid(_))
        ));
    }
}

#[test]
fn ml_dsa_refuses_deterministic_signing_and_other_parameters() {
    let kp = generate_ml_dsa(MlDsaSet::P44).unwrap();
    let private = dsa_private(MlDsaSet::P44, &kp.private_pkcs8);
    let det = ctx(ck::CKH_DETERMINISTIC_REQUIRED, b"");
    match sign(&det, &private, b"x") {
        Err(TokenError::MechanismParamInvalid(msg)) => assert!(msg.contains("hedged"), "{msg}"),
        other => panic!("deterministic signing: {other:?}"),
    }
    // Verification does not depend on how the signer hedged.
    let sig = sign(&ml_dsa(MechParams::None), &private, b"x").unwrap();
    verify(&det, &private, b"x", &sig).unwrap();
    for bad in [
        ctx(3, b""),
        ctx(u64::MAX, b""),
        ml_dsa(MechParams::Iv(vec![0; 16])),
        ml_dsa(MechParams::HashSignContext {
            hedge: 0,
            context: vec![],
            hash: ck::CKM_SHA256,
        }),
    ] {
        assert!(
            matches!(
                sign(&bad, &private, b"x"),
                Err(TokenError::MechanismParamInvalid(_))
            ),
            "{bad:?}"
        );
        assert!(
            matches!(
                verify(&bad, &private, b"x", &sig),
                Err(TokenError::MechanismParamInvalid(_))
            ),
            "{bad:?}"
        );
    }
    // HashML-DSA is not offered.
    let hash = Mechanism::new(ck::CKM_HASH_ML_DSA_SHA256);
    assert_eq!(
        sign(&hash, &private, b"x"),
        Err(TokenError::MechanismInvalid(ck::CKM_HASH_ML_DSA_SHA256))
    );
}

#[test]
fn ml_dsa_needs_an_ml_dsa_key() {
    let none = ml_dsa(MechParams::None);
    let ec = generate_ec(Curve::P256).unwrap();
    let ec = LoadedKey::load(KeyMaterial::EcPrivate {
        curve: Curve::P256,
        pkcs8: ec.private_pkcs8,
    })
    .unwrap();
    let kem = generate_ml_kem(MlKemSet::P768).unwrap();
    let kem = kem_private(MlKemSet::P768, &kem.private_pkcs8);
    let dsa = generate_ml_dsa(MlDsaSet::P65).unwrap();
    let dsa_public = public(&dsa.public);
    for k in [&ec, &kem, &dsa_public] {
        assert_eq!(
            sign(&none, k, b"x"),
            Err(TokenError::KeyTypeInconsistent),
            "{k:?}"
        );
        assert_eq!(
            output_len(&none, k, 1, Usage::Sign),
            Err(TokenError::KeyTypeInconsistent)
        );
    }
    for k in [&ec, &kem] {
        assert_eq!(
            verify(&none, k, b"x", &[0; 3309]),
            Err(TokenError::KeyTypeInconsistent)
        );
    }
    // An ML-DSA key with ECDSA.
    let private = dsa_private(MlDsaSet::P65, &dsa.private_pkcs8);
    assert_eq!(
        sign(&Mechanism::new(ck::CKM_ECDSA), &private, &[0; 32]),
        Err(TokenError::KeyTypeInconsistent)
    );
}

#[test]
fn ml_dsa_rejects_wrong_lengths_and_flipped_bits() {
    for set in MlDsaSet::ALL {
        let kp = generate_ml_dsa(set).unwrap();
        let private = dsa_private(set, &kp.private_pkcs8);
        let pubkey = public(&kp.public);
        let none = ml_dsa(MechParams::None);
        let sig = sign(&none, &private, b"data").unwrap();
        for len in [0, sig.len() - 1, sig.len() + 1] {
            let mut s = sig.clone();
            s.resize(len, 0);
            assert_eq!(
                verify(&none, &pubkey, b"data", &s),
                Err(TokenError::SignatureLenRange),
                "{len}"
            );
        }
        for at in [0, sig.len() / 2, sig.len() - 1] {
            let mut s = sig.clone();
            s[at] ^= 0x01;
            assert_eq!(
                verify(&none, &pubkey, b"data", &s),
                Err(TokenError::SignatureInvalid),
                "bit flipped at {at}"
            );
        }
    }
}

#[test]
fn ml_dsa_key_from_seed_is_the_generated_key() {
    for set in MlDsaSet::ALL {
        let kp = generate_ml_dsa(set).unwrap();
        let again = ml_dsa_private_from_seed(set, kp.private_pkcs8.expose()).unwrap();
        assert_eq!(again.public, kp.public);
        assert_eq!(again.private_pkcs8.expose(), kp.private_pkcs8.expose());
        let a = dsa_private(set, &kp.private_pkcs8);
        let b = dsa_private(set, &again.private_pkcs8);
        let none = ml_dsa(MechParams::None);
        verify(&none, &b, b"m", &sign(&none, &a, b"m").unwrap()).unwrap();
        verify(&none, &a, b"m", &sign(&none, &b, b"m").unwrap()).unwrap();
        for bad in [&[0u8; 31][..], &[0u8; 33], &[]] {
            assert!(matches!(
                ml_dsa_private_from_seed(set, bad),
                Err(TokenError::AttributeValueInvalid(ck::CKA_SEED))
            ));
        }
    }
    // One seed gives a different key in each set.
    let seed = [9u8; 32];
    let p44 = ml_dsa_private_from_seed(MlDsaSet::P44, &seed).unwrap().public;
    let p65 = ml_dsa_private_from_seed(MlDsaSet::P65, &seed).unwrap().public;
    assert_ne!(raw_public(&p44).len(), raw_public(&p65).len());
    // A stored seed of the wrong length is a damaged store.
    assert!(matches!(
        LoadedKey::load(KeyMaterial::MlDsaPrivate {
            set: MlDsaSet::P44,
            seed: SecretBytes::new(vec![0; 31]),
        }),
        Err(TokenError::DeviceError(_))
    ));
}

#[test]
fn ml_dsa_public_keys_are_checked() {
    let kp = generate_ml_dsa(MlDsaSet::P87).unwrap();
    let value = raw_public(&kp.public).to_vec();
    for set in [MlDsaSet::P44, MlDsaSet::P65] {
        let wrong = PublicKey::MlDsa {
            set,
            value: value.clone(),
        };
        assert_eq!(
            wrong.validate(),
            Err(TokenError::AttributeValueInvalid(ck::CKA_VALUE))
        );
        assert!(LoadedKey::load(KeyMaterial::Public(wrong)).is_err());
    }
    kp.public.validate().unwrap();
}

#[test]
fn ml_kem_round_trips_every_set() {
    for set in MlKemSet::ALL {
        let kp = generate_ml_kem(set).unwrap();
        assert_eq!(kp.private_pkcs8.len(), set.private_len());
        assert_eq!(raw_public(&kp.public).len(), set.public_len());
        let private = kem_private(set, &kp.private_pkcs8);
        let pubkey = public(&kp.public);
        for k in [&private, &pubkey] {
            assert_eq!(k.key_type(), ck::CKK_ML_KEM);
            assert_eq!(k.parameter_set(), Some(set.ckp()));
            assert_eq!(k.public(), Some(&kp.public));
        }
        assert!(private.is_private() && !pubkey.is_private());
        for sender in [&pubkey, &private] {
            let (ct, ss) = kem_encapsulate(sender).unwrap();
            assert_eq!(ct.len(), set.ciphertext_len());
            assert_eq!(ss.len(), 32);
            let got = kem_decapsulate(&private, &ct).unwrap();
            assert_eq!(got.expose(), ss.expose());
        }
        // dk import gives the same key.
        let again = ml_kem_private_from_value(set, kp.private_pkcs8.expose()).unwrap();
        assert_eq!(again.public, kp.public);
        let (ct, ss) = kem_encapsulate(&pubkey).unwrap();
        let got = kem_decapsulate(&kem_private(set, &again.private_pkcs8), &ct).unwrap();
        assert_eq!(got.expose(), ss.expose());
    }
}

#[test]
fn ml_kem_ciphertexts_are_checked() {
    for set in MlKemSet::ALL {
        let kp = generate_ml_kem(set).unwrap();
        let private = kem_private(set, &kp.private_pkcs8);
        let (ct, ss) = kem_encapsulate(&private).unwrap();
        for len in [0, ct.len() - 1, ct.len() + 1] {
            let mut c = ct.clone();
            c.resize(len, 0);
            assert!(matches!(
                kem_decapsulate(&private, &c),
                Err(TokenError::EncryptedDataLenRange)
            ));
        }
        // Implicit rejection: a changed ciphertext decapsulates, to another
        // secret, and always the same one.
        let mut c = ct.clone();
        c[10] ^= 0x40;
        let other = kem_decapsulate(&private, &c).unwrap();
        assert_ne!(other.expose(), ss.expose());
        assert_eq!(kem_decapsulate(&private, &c).unwrap().expose(), other.expose());
    }
}

#[test]
fn ml_kem_needs_an_ml_kem_key() {
    let kp = generate_ml_kem(MlKemSet::P512).unwrap();
    let pubkey = public(&kp.public);
    let (ct, _) = kem_encapsulate(&pubkey).unwrap();
    assert!(matches!(
        kem_decapsulate(&pubkey, &ct),
        Err(TokenError::KeyTypeInconsistent)
    ));
    let dsa = generate_ml_dsa(MlDsaSet::P44).unwrap();
    for k in [
        dsa_private(MlDsaSet::P44, &dsa.private_pkcs8),
        public(&dsa.public),
    ] {
        assert!(matches!(
            kem_encapsulate(&k),
            Err(TokenError::KeyTypeInconsistent)
        ));
        assert!(matches!(
            kem_decapsulate(&k, &ct),
            Err(TokenError::KeyTypeInconsistent)
        ));
    }
    let aes = LoadedKey::load(KeyMaterial::Aes(SecretBytes::new(vec![1; 32]))).unwrap();
    assert!(matches!(
        kem_encapsulate(&aes),
        Err(TokenError::KeyTypeInconsistent)
    ));
}

#[test]
fn ml_kem_decapsulation_keys_are_checked() {
    let kp = generate_ml_kem(MlKemSet::P768).unwrap();
    let dk = kp.private_pkcs8.expose();
    let invalid =
        |r: Result<_, TokenError>| matches!(r, Err(TokenError::AttributeValueInvalid(ck::CKA_VALUE)));
    assert!(invalid(ml_kem_private_from_value(MlKemSet::P768, &dk[1..])));
    assert!(invalid(ml_kem_private_from_value(MlKemSet::P512, dk)));
    assert!(invalid(ml_kem_private_from_value(MlKemSet::P1024, dk)));
    // The embedded ek no longer matches its hash H(ek).
    let mut bad = dk.to_vec();
    bad[384 * 3 + 5] ^= 1;
    assert!(invalid(ml_kem_private_from_value(MlKemSet::P768, &bad)));
    // Nor does the hash.
    let mut bad = dk.to_vec();
    bad[768 * 3 + 40] ^= 1;
    assert!(invalid(ml_kem_private_from_value(MlKemSet::P768, &bad)));
    // ... and from the store, that is damage.
    assert!(matches!(
        LoadedKey::load(KeyMaterial::MlKemPrivate {
            set: MlKemSet::P768,
            value: SecretBytes::new(bad),
        }),
        Err(TokenError::DeviceError(_))
    ));
}

#[test]
fn ml_kem_public_keys_are_checked() {
    let kp = generate_ml_kem(MlKemSet::P512).unwrap();
    let value = raw_public(&kp.public).to_vec();
    kp.public.validate().unwrap();
    let wrong_set = PublicKey::MlKem {
        set: MlKemSet::P768,
        value: value.clone(),
    };
    assert_eq!(
        wrong_set.validate(),
        Err(TokenError::AttributeValueInvalid(ck::CKA_VALUE))
    );
    // A coefficient of q = 3329 (0xd01) or more fails FIPS 203's modulus check.
    let mut unreduced = value.clone();
    unreduced[0] = 0x01;
    unreduced[1] = (unreduced[1] & 0xf0) | 0x0d;
    let unreduced = PublicKey::MlKem {
        set: MlKemSet::P512,
        value: unreduced,
    };
    assert_eq!(
        unreduced.validate(),
        Err(TokenError::AttributeValueInvalid(ck::CKA_VALUE))
    );
    assert!(LoadedKey::load(KeyMaterial::Public(unreduced)).is_err());
    // The second coefficient of a 3-byte group too.
    let mut high = value;
    high[2] = 0xff;
    assert!(PublicKey::MlKem {
        set: MlKemSet::P512,
        value: high
    }
    .validate()
    .is_err());
}

#[test]
fn ml_spki_round_trips() {
    let keys = MlDsaSet::ALL
        .iter()
        .map(|&s| generate_ml_dsa(s).unwrap().public)
        .chain(MlKemSet::ALL.iter().map(|&s| generate_ml_kem(s).unwrap().public));
    for p in keys {
        let spki = p.to_spki_der();
        assert_eq!(PublicKey::from_spki_der(&spki).unwrap(), p);
        assert!(PublicKey::from_spki_der(&spki[..spki.len() - 1]).is_err());
        assert!(p.to_pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(p.ec_point_der(), None);
    }
    // The AlgorithmIdentifier has no parameters: ML-DSA-44 is
    // 30 0b 06 09 60 86 48 01 65 03 04 03 11.
    let p = generate_ml_dsa(MlDsaSet::P44).unwrap().public;
    let spki = p.to_spki_der();
    assert_eq!(
        &spki[4..17],
        &[0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x11]
    );
}

#[test]
fn debug_output_shows_no_ml_key_material() {
    let kp = generate_ml_dsa(MlDsaSet::P44).unwrap();
    let m = KeyMaterial::MlDsaPrivate {
        set: MlDsaSet::P44,
        seed: kp.private_pkcs8.clone(),
    };
    let shown = format!("{m:?} {:?}", dsa_private(MlDsaSet::P44, &kp.private_pkcs8));
    assert!(
        shown.contains("SecretBytes(32 bytes)") && shown.contains("MlDsaPrivate"),
        "{shown}"
    );
    assert!(
        !shown.contains(&format!("{:?}", &kp.private_pkcs8.expose()[..4])),
        "{shown}"
    );
    let kem = generate_ml_kem(MlKemSet::P512).unwrap();
    let m = KeyMaterial::MlKemPrivate {
        set: MlKemSet::P512,
        value: kem.private_pkcs8.clone(),
    };
    assert!(format!("{m:?}").contains("SecretBytes(1632 bytes)"));
}

// Known answers: the IETF example keys (tests/data/README.md).

const ML_DSA_KAT: [(MlDsaSet, &str, &str); 3] = [
    (
        MlDsaSet::P44,
        include_str!("../tests/data/ml-dsa-44-seed.pem"),
        include_str!("../tests/data/ml-dsa-44.pub.pem"),
    ),
    (
        MlDsaSet::P65,
        include_str!("../tests/data/ml-dsa-65-seed.pem"),
        include_str!("../tests/data/ml-dsa-65.pub.pem"),
    ),
    (
        MlDsaSet::P87,
        include_str!("../tests/data/ml-dsa-87-seed.pem"),
        include_str!("../tests/data/ml-dsa-87.pub.pem"),
    ),
];

const ML_KEM_KAT: [(MlKemSet, &str, &str, &str); 3] = [
    (
        MlKemSet::P512,
        include_str!("../tests/data/ml-kem-512-seed.pem"),
        include_str!("../tests/data/ml-kem-512-expanded.pem"),
        include_str!("../tests/data/ml-kem-512.pub.pem"),
    ),
    (
        MlKemSet::P768,
        include_str!("../tests/data/ml-kem-768-seed.pem"),
        include_str!("../tests/data/ml-kem-768-expanded.pem"),
        include_str!("../tests/data/ml-kem-768.pub.pem"),
    ),
    (
        MlKemSet::P1024,
        include_str!("../tests/data/ml-kem-1024-seed.pem"),
        include_str!("../tests/data/ml-kem-1024-expanded.pem"),
        include_str!("../tests/data/ml-kem-1024.pub.pem"),
    ),
];

/// The seed ξ = 00 01 … 1f of the examples.
fn counting(n: u8) -> Vec<u8> {
    (0..n).collect()
}

#[test]
fn ml_dsa_keygen_from_seed_known_answers() {
    for (set, seed_pem, pub_pem) in ML_DSA_KAT {
        let expected = PublicKey::from_spki_der(&pem_der(pub_pem)).unwrap();
        assert!(matches!(&expected, PublicKey::MlDsa { set: s, .. } if *s == set));
        // From the raw seed.
        let kp = ml_dsa_private_from_seed(set, &counting(32)).unwrap();
        assert_eq!(kp.public, expected, "{}", set.name());
        // From the RFC 9881 seed-form PKCS#8.
        let imported = import_private_key_der(&pem_der(seed_pem)).unwrap();
        assert_eq!(imported.public, expected, "{}", set.name());
        assert_eq!(imported.private_pkcs8.expose(), &counting(32)[..]);
        // Our SPKI encoding is the example's, byte for byte.
        assert_eq!(expected.to_spki_der(), pem_der(pub_pem));
    }
}

#[test]
fn ml_dsa_pkcs8_other_forms_are_refused() {
    let der = pem_der(ML_DSA_KAT[0].1);
    // The seed CHOICE retagged as the expandedKey OCTET STRING.
    let mut expanded = der.clone();
    let at = expanded.len() - 34;
    assert_eq!(&expanded[at..at + 2], &[0x80, 0x20]);
    expanded[at] = 0x04;
    assert!(matches!(
        import_private_key_der(&expanded),
        Err(TokenError::TemplateInconsistent(_))
    ));
    let mut short = der;
    short.truncate(short.len() - 1);
    assert!(import_private_key_der(&short).is_err());
}

#[test]
fn ml_kem_known_answers() {
    for (set, seed_pem, expanded_pem, pub_pem) in ML_KEM_KAT {
        let expected = PublicKey::from_spki_der(&pem_der(pub_pem)).unwrap();
        assert!(matches!(&expected, PublicKey::MlKem { set: s, .. } if *s == set));
        assert_eq!(expected.to_spki_der(), pem_der(pub_pem));
        // The expanded key ends the PKCS#8 (privateKey OCTET STRING holding
        // an OCTET STRING dk).
        let der = pem_der(expanded_pem);
        let dk = &der[der.len() - set.private_len()..];
        let kp = ml_kem_private_from_value(set, dk).unwrap();
        assert_eq!(kp.public, expected, "{}", set.name());
        // The seed form holds d || z = 00 … 3f, and FIPS 203 puts z at the
        // end of dk.
        let seed = pem_der(seed_pem);
        assert_eq!(&seed[seed.len() - 64..], &counting(64)[..]);
        assert_eq!(&dk[dk.len() - 32..], &counting(64)[32..]);
        // The key works: a round trip through its public half.
        let private = kem_private(set, &kp.private_pkcs8);
        let (ct, ss) = kem_encapsulate(&public(&expected)).unwrap();
        assert_eq!(kem_decapsulate(&private, &ct).unwrap().expose(), ss.expose());
    }
}

// Cross-checks with RustCrypto's ml-dsa and ml-kem.

macro_rules! rustcrypto_ml_dsa {
    ($name:ident, $params:ty, $set:expr) => {
        #[test]
        fn $name() {
            use ml_dsa::{Signature, SigningKey, VerifyingKey};
            let set: MlDsaSet = $set;
            for seed in [
                [0u8; 32],
                [0x5au8; 32],
                *b"hahsm cross-checks ml-dsa seeds.",
            ] {
                let rc = SigningKey::<$params>::from_seed(&seed.into());
                let rc_vk: VerifyingKey<$params> = rc.expanded_key().verifying_key();
                // Same seed, same public key.
                let ours = ml_dsa_private_from_seed(set, &seed).unwrap();
                assert_eq!(
                    raw_public(&ours.public),
                    rc_vk.encode().as_slice(),
                    "{}",
                    set.name()
                );
                let private = dsa_private(set, &ours.private_pkcs8);
                let pubkey = public(&ours.public);
                for context in [&b""[..], b"ctx", &[0xee; 255]] {
                    let m = ctx(ck::CKH_HEDGE_PREFERRED, context);
                    // RustCrypto verifies ours...
                    let sig = sign(&m, &private, b"cross-checked message").unwrap();
                    let parsed = Signature::<$params>::try_from(sig.as_slice()).unwrap();
                    assert!(rc_vk.verify_with_context(b"cross-checked message", context, &parsed));
                    assert!(!rc_vk.verify_with_context(b"cross-checked message", b"other", &parsed));
                    // ...and we verify RustCrypto's.
                    let theirs = rc
                        .expanded_key()
                        .sign_deterministic(b"their message", context)
                        .unwrap();
                    let theirs = theirs.encode();
                    verify(&m, &pubkey, b"their message", theirs.as_slice()).unwrap();
                    assert_eq!(
                        verify(&m, &pubkey, b"their messagf", theirs.as_slice()),
                        Err(TokenError::SignatureInvalid)
                    );
                }
            }
        }
    };
}

rustcrypto_ml_dsa!(rustcrypto_ml_dsa_44_agrees, ml_dsa::MlDsa44, MlDsaSet::P44);
rustcrypto_ml_dsa!(rustcrypto_ml_dsa_65_agrees, ml_dsa::MlDsa65, MlDsaSet::P65);
rustcrypto_ml_dsa!(rustcrypto_ml_dsa_87_agrees, ml_dsa::MlDsa87, MlDsaSet::P87);

macro_rules! rustcrypto_ml_kem {
    ($name:ident, $params:ty, $set:expr) => {
        #[test]
        #[allow(deprecated)] // ExpandedKeyEncoding: the FIPS 203 dk bytes.
        fn $name() {
            use ml_kem::{Decapsulate, DecapsulationKey, EncapsulationKey, ExpandedKeyEncoding, KeyExport};
            let set: MlKemSet = $set;
            let seed: [u8; 64] = core::array::from_fn(|i| (i as u8).wrapping_mul(7));
            let rc = DecapsulationKey::<$params>::from_seed(seed.into());
            // RustCrypto's dk imports, with RustCrypto's ek as its public half.
            let dk = rc.to_expanded_bytes();
            let ours = ml_kem_private_from_value(set, dk.as_slice()).unwrap();
            let rc_ek = rc.encapsulation_key().to_bytes();
            assert_eq!(raw_public(&ours.public), rc_ek.as_slice());
            // We encapsulate to RustCrypto's key; it decapsulates.
            let (ct, ss) = kem_encapsulate(&public(&ours.public)).unwrap();
            let rc_ss = rc.decapsulate(&ct.as_slice().try_into().unwrap());
            assert_eq!(rc_ss.as_slice(), ss.expose());
            // RustCrypto encapsulates to a key we made; we decapsulate.
            let kp = generate_ml_kem(set).unwrap();
            let ek = EncapsulationKey::<$params>::new(&raw_public(&kp.public).try_into().unwrap()).unwrap();
            let private = kem_private(set, &kp.private_pkcs8);
            for m in [[0u8; 32], [0xc3; 32]] {
                let (ct, rc_ss) = ek.encapsulate_deterministic(&m.into());
                let ss = kem_decapsulate(&private, ct.as_slice()).unwrap();
                assert_eq!(ss.expose(), rc_ss.as_slice());
                // Both reject a changed ciphertext the same way (the
                // implicit-rejection secret depends only on z and c).
                let mut c = ct.clone();
                c[0] ^= 1;
                let ours = kem_decapsulate(&private, c.as_slice()).unwrap();
                let rc_dk = DecapsulationKey::<$params>::from_expanded_bytes(
                    &kp.private_pkcs8.expose().try_into().unwrap(),
                )
                .unwrap();
                assert_eq!(ours.expose(), rc_dk.decapsulate(&c).as_slice());
                assert_ne!(ours.expose(), rc_ss.as_slice());
            }
        }
    };
}

rustcrypto_ml_kem!(rustcrypto_ml_kem_512_agrees, ml_kem::MlKem512, MlKemSet::P512);
rustcrypto_ml_kem!(rustcrypto_ml_kem_768_agrees, ml_kem::MlKem768, MlKemSet::P768);
rustcrypto_ml_kem!(rustcrypto_ml_kem_1024_agrees, ml_kem::MlKem1024, MlKemSet::P1024);

#[test]
fn ml_dsa_seed_pkcs8_imports_as_the_same_key() {
    for set in MlDsaSet::ALL {
        let pair = generate_ml_dsa(set).unwrap();
        let der = crate::pq::ml_dsa_seed_pkcs8(set, &pair.private_pkcs8).unwrap();
        let back = import_private_key_der(der.expose()).unwrap();
        assert_eq!(back.public, pair.public, "{}", set.name());
        assert_eq!(back.private_pkcs8, pair.private_pkcs8);
    }
    // The RFC 9881 examples (seed 00..1f) encode as their published PKCS#8.
    let seed = SecretBytes::new((0u8..32).collect());
    for (set, pem) in [
        (MlDsaSet::P44, include_str!("../tests/data/ml-dsa-44-seed.pem")),
        (MlDsaSet::P65, include_str!("../tests/data/ml-dsa-65-seed.pem")),
        (MlDsaSet::P87, include_str!("../tests/data/ml-dsa-87-seed.pem")),
    ] {
        let der = crate::pq::ml_dsa_seed_pkcs8(set, &seed).unwrap();
        assert_eq!(der.expose(), pem_der(pem).as_slice(), "{}", set.name());
    }
    assert!(crate::pq::ml_dsa_seed_pkcs8(MlDsaSet::P65, &SecretBytes::new(vec![0; 31])).is_err());
}
