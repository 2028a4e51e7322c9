//! Post-quantum keys through the built module, as a PKCS#11 3.2 application
//! uses them with the `cryptoki` crate: ML-DSA-44/65/87 and
//! ML-KEM-512/768/1024 on a member, each cross-checked with RustCrypto's
//! `ml-dsa` and `ml-kem` (an implementation that is not aws-lc), and the
//! exact return codes of what goes wrong.
mod t20_pkcs11_support;

use cryptoki::error::RvError;
use cryptoki::mechanism::dsa::{HedgeType, SignAdditionalContext};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, MlDsaParameterSetType, MlKemParameterSetType,
    ObjectClass, ObjectHandle,
};
use cryptoki::session::Session;
use cryptoki_sys as ck;
use t20_pkcs11_support::{expect_rv, raw, readable_secret, run_checks, value, Env};

const MSG: &[u8] = b"a message signed with a post-quantum key";

/// The three ML-DSA sets: (CKP_*, public key bytes, signature bytes).
const DSA_SETS: [(u64, usize, usize); 3] = [
    (ck::CKP_ML_DSA_44, 1312, 2420),
    (ck::CKP_ML_DSA_65, 1952, 3309),
    (ck::CKP_ML_DSA_87, 2592, 4627),
];

/// The three ML-KEM sets: (CKP_*, public key bytes, ciphertext bytes).
const KEM_SETS: [(u64, usize, usize); 3] = [
    (ck::CKP_ML_KEM_512, 800, 768),
    (ck::CKP_ML_KEM_768, 1184, 1088),
    (ck::CKP_ML_KEM_1024, 1568, 1568),
];

fn dsa_set(p: u64) -> Attribute {
    Attribute::ParameterSet(
        match p {
            ck::CKP_ML_DSA_44 => MlDsaParameterSetType::ML_DSA_44,
            ck::CKP_ML_DSA_65 => MlDsaParameterSetType::ML_DSA_65,
            _ => MlDsaParameterSetType::ML_DSA_87,
        }
        .into(),
    )
}

fn kem_set(p: u64) -> Attribute {
    Attribute::ParameterSet(
        match p {
            ck::CKP_ML_KEM_512 => MlKemParameterSetType::ML_KEM_512,
            ck::CKP_ML_KEM_768 => MlKemParameterSetType::ML_KEM_768,
            _ => MlKemParameterSetType::ML_KEM_1024,
        }
        .into(),
    )
}

/// A parameter set no standard names.
fn bad_set(v: u64) -> Attribute {
    Attribute::ParameterSet(
        cryptoki::object::ParameterSetType::try_from(cryptoki::types::Ulong::from(v)).expect("any value"),
    )
}

fn ml_dsa(context: Option<&[u8]>) -> Mechanism<'_> {
    Mechanism::MlDsa(SignAdditionalContext::new(HedgeType::Preferred, context))
}

fn dsa_pair(s: &Session, set: u64, token: bool) -> (ObjectHandle, ObjectHandle) {
    s.generate_key_pair(
        &Mechanism::MlDsaKeyPairGen,
        &[Attribute::Token(token), dsa_set(set), Attribute::Verify(true)],
        &[
            Attribute::Token(token),
            Attribute::Sign(true),
            Attribute::Label(b"ml-dsa".to_vec()),
        ],
    )
    .expect("ML-DSA key pair")
}

fn kem_pair(s: &Session, set: u64, token: bool) -> (ObjectHandle, ObjectHandle) {
    s.generate_key_pair(
        &Mechanism::MlKemKeyPairGen,
        &[
            Attribute::Token(token),
            kem_set(set),
            Attribute::Encapsulate(true),
        ],
        &[Attribute::Token(token), Attribute::Decapsulate(true)],
    )
    .expect("ML-KEM key pair")
}

fn parameter_set(s: &Session, o: ObjectHandle) -> u64 {
    match s
        .get_attributes(o, &[AttributeType::ParameterSet])
        .expect("CKA_PARAMETER_SET")
        .pop()
    {
        Some(Attribute::ParameterSet(p)) => **p,
        other => panic!("no CKA_PARAMETER_SET: {other:?}"),
    }
}

fn sensitive(s: &Session, o: ObjectHandle, t: AttributeType) -> bool {
    let info = s.get_attribute_info(o, &[t]).expect("attribute info");
    matches!(info[0], AttributeInfo::Sensitive)
}

// ------------------------------------------------------------- interfaces --

fn the_module_offers_pkcs11_3_2_first(_env: &Env) {
    // SAFETY: loading our own module.
    let lib = unsafe { libloading::Library::new(t20_pkcs11_support::module_path()) }.expect("dlopen");
    type GetInterfaceList = unsafe extern "C" fn(*mut ck::CK_INTERFACE, *mut ck::CK_ULONG) -> ck::CK_RV;
    let name: &[u8] = b"C_GetInterfaceList";
    // SAFETY: C_GetInterfaceList has this signature in PKCS#11 3.0 and later.
    let list: libloading::Symbol<GetInterfaceList> = unsafe { lib.get(name) }.expect("exported");
    let mut n = 0;
    // SAFETY: a NULL list asks for the count.
    assert_eq!(unsafe { list(std::ptr::null_mut(), &mut n) }, ck::CKR_OK);
    let mut ifaces = vec![
        ck::CK_INTERFACE {
            pInterfaceName: std::ptr::null_mut(),
            pFunctionList: std::ptr::null_mut(),
            flags: 0,
        };
        n as usize
    ];
    // SAFETY: `ifaces` holds `n` entries.
    assert_eq!(unsafe { list(ifaces.as_mut_ptr(), &mut n) }, ck::CKR_OK);
    let versions: Vec<(u8, u8)> = ifaces
        .iter()
        .map(|i| {
            // SAFETY: every function list begins with its CK_VERSION.
            let v = unsafe { *(i.pFunctionList as *const ck::CK_VERSION) };
            (v.major, v.minor)
        })
        .collect();
    assert_eq!(
        versions,
        [(3, 2), (3, 0), (2, 40)],
        "3.2 first, then 3.0 and 2.40"
    );
    // The default interface and each version asked for.
    let (_l, f32) = raw::functions_3_2();
    assert_eq!((f32.version.major, f32.version.minor), (3, 2));
    assert!(f32.C_EncapsulateKey.is_some() && f32.C_DecapsulateKey.is_some());
    let (_l, f30) = raw::functions_3_0();
    assert_eq!((f30.version.major, f30.version.minor), (3, 0));
    let (_l, f240) = raw::interface::<ck::CK_FUNCTION_LIST>(Some((2, 40)));
    assert_eq!((f240.version.major, f240.version.minor), (2, 40));
    // An application that only calls C_GetFunctionList gets 2.40, unchanged.
    let (_l, old) = raw_function_list();
    assert_eq!((old.version.major, old.version.minor), (2, 40));
    // C_GetInfo says 3.2.
    let mut info = ck::CK_INFO::default();
    // SAFETY: a valid out-pointer; the module is initialized.
    assert_eq!(unsafe { f32.C_GetInfo.unwrap()(&mut info) }, ck::CKR_OK);
    assert_eq!((info.cryptokiVersion.major, info.cryptokiVersion.minor), (3, 2));
}

fn raw_function_list() -> (libloading::Library, ck::CK_FUNCTION_LIST) {
    t20_pkcs11_support::raw_functions()
}

fn the_mechanisms_are_listed_with_their_flags(env: &Env) {
    let mechs = raw::mechanisms(env);
    for m in [
        ck::CKM_ML_DSA_KEY_PAIR_GEN,
        ck::CKM_ML_DSA,
        ck::CKM_ML_KEM_KEY_PAIR_GEN,
        ck::CKM_ML_KEM,
    ] {
        assert!(mechs.contains(&m), "{m:#x} listed");
    }
    let info = env
        .p11
        .get_mechanism_info(env.slot, MechanismType::ML_KEM)
        .expect("mechanism info");
    assert!(info.encapsulate() && info.decapsulate(), "{info:?}");
    let info = env
        .p11
        .get_mechanism_info(env.slot, MechanismType::ML_DSA)
        .unwrap();
    assert!(info.sign() && info.verify(), "{info:?}");
    // HashML-DSA is not offered (AWS-LC has no pre-hash ML-DSA).
    assert!(!mechs.contains(&ck::CKM_HASH_ML_DSA));
}

// ----------------------------------------------------------------- ML-DSA --

/// Every set: generation, the attributes (public value, parameter set, a
/// seed that never leaves), signing with and without a context, single and
/// multi-part, each signature checked by RustCrypto's ml-dsa as well.
fn ml_dsa_signs_with_every_parameter_set(env: &Env) {
    let s = env.user();
    for (set, public_len, sig_len) in DSA_SETS {
        let (public, private) = dsa_pair(&s, set, true);
        let pk = value(&s, public);
        assert_eq!(pk.len(), public_len, "set {set}");
        assert_eq!(parameter_set(&s, public), set);
        assert_eq!(parameter_set(&s, private), set);
        assert!(
            sensitive(&s, private, AttributeType::Seed),
            "the seed is sensitive"
        );
        assert!(
            sensitive(&s, private, AttributeType::Value),
            "so is the expanded key"
        );
        for context in [None, Some(&b"a context"[..]), Some(&[0x17u8; 255][..])] {
            let sig = s.sign(&ml_dsa(context), private, MSG).expect("sign");
            assert_eq!(sig.len(), sig_len);
            s.verify(&ml_dsa(context), public, MSG, &sig).expect("verify");
            assert!(rustcrypto_verifies(set, &pk, MSG, context.unwrap_or(b""), &sig));
            // Another context is another signature.
            expect_rv(
                s.verify(&ml_dsa(Some(b"another context")), public, MSG, &sig),
                RvError::SignatureInvalid,
            );
        }
        // Multi-part: the parts of MSG sign as MSG does.
        s.sign_init(&ml_dsa(Some(b"parts")), private).unwrap();
        s.sign_update(&MSG[..10]).unwrap();
        s.sign_update(&MSG[10..]).unwrap();
        let sig = s.sign_final().unwrap();
        s.verify(&ml_dsa(Some(b"parts")), public, MSG, &sig)
            .expect("multi-part signature");
        s.verify_init(&ml_dsa(Some(b"parts")), public).unwrap();
        s.verify_update(&MSG[..3]).unwrap();
        s.verify_update(&MSG[3..]).unwrap();
        s.verify_final(&sig).expect("multi-part verification");
        // A flipped bit, a wrong length.
        let mut bad = sig.clone();
        bad[100] ^= 1;
        expect_rv(
            s.verify(&ml_dsa(Some(b"parts")), public, MSG, &bad),
            RvError::SignatureInvalid,
        );
        expect_rv(
            s.verify(&ml_dsa(Some(b"parts")), public, MSG, &sig[..sig.len() - 1]),
            RvError::SignatureLenRange,
        );
        s.destroy_object(public).unwrap();
        s.destroy_object(private).unwrap();
    }
}

/// Whether RustCrypto's ml-dsa verifies `sig` over `msg` with `context`
/// under the public key `pk` of `set`.
fn rustcrypto_verifies(set: u64, pk: &[u8], msg: &[u8], context: &[u8], sig: &[u8]) -> bool {
    macro_rules! verify_with {
        ($p:ty) => {{
            use ml_dsa::{EncodedVerifyingKey, Signature, VerifyingKey};
            let Ok(encoded) = EncodedVerifyingKey::<$p>::try_from(pk) else {
                return false;
            };
            let vk = VerifyingKey::<$p>::decode(&encoded);
            let Ok(sig) = Signature::<$p>::try_from(sig) else {
                return false;
            };
            vk.verify_with_context(msg, context, &sig)
        }};
    }
    match set {
        ck::CKP_ML_DSA_44 => verify_with!(ml_dsa::MlDsa44),
        ck::CKP_ML_DSA_65 => verify_with!(ml_dsa::MlDsa65),
        _ => verify_with!(ml_dsa::MlDsa87),
    }
}

/// RustCrypto's key of `seed`: (public key, a deterministic signature of
/// `msg` with `context`).
fn rustcrypto_sign(set: u64, seed: &[u8; 32], msg: &[u8], context: &[u8]) -> (Vec<u8>, Vec<u8>) {
    macro_rules! sign_with {
        ($p:ty) => {{
            use ml_dsa::SigningKey;
            let sk = SigningKey::<$p>::from_seed(&(*seed).into());
            let vk = sk.expanded_key().verifying_key();
            let sig = sk.expanded_key().sign_deterministic(msg, context).expect("sign");
            (vk.encode().to_vec(), sig.encode().to_vec())
        }};
    }
    match set {
        ck::CKP_ML_DSA_44 => sign_with!(ml_dsa::MlDsa44),
        ck::CKP_ML_DSA_65 => sign_with!(ml_dsa::MlDsa65),
        _ => sign_with!(ml_dsa::MlDsa87),
    }
}

/// Import: a private key by its seed (the same seed in RustCrypto gives the
/// same public key, and the imported key's signatures verify there), and a
/// public key by its value (it verifies RustCrypto's signatures).
fn ml_dsa_keys_import(env: &Env) {
    let s = env.user();
    let seed: [u8; 32] = core::array::from_fn(|i| i as u8 ^ 0xa5);
    for (set, ..) in DSA_SETS {
        let (rc_pk, rc_sig) = rustcrypto_sign(set, &seed, MSG, b"theirs");
        let private = s
            .create_object(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::ML_DSA),
                dsa_set(set),
                Attribute::Token(false),
                Attribute::Sign(true),
                Attribute::Seed(seed.to_vec()),
            ])
            .expect("import by seed");
        assert!(sensitive(&s, private, AttributeType::Seed));
        let sig = s.sign(&ml_dsa(Some(b"ours")), private, MSG).unwrap();
        assert!(rustcrypto_verifies(set, &rc_pk, MSG, b"ours", &sig), "set {set}");
        let public = s
            .create_object(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::ML_DSA),
                dsa_set(set),
                Attribute::Token(false),
                Attribute::Verify(true),
                Attribute::Value(rc_pk.clone()),
            ])
            .expect("import of the public key");
        s.verify(&ml_dsa(Some(b"theirs")), public, MSG, &rc_sig)
            .expect("RustCrypto's signature");
        s.verify(&ml_dsa(Some(b"ours")), public, MSG, &sig)
            .expect("ours, under the imported public key");
        // A seed of the wrong length; the expanded form; a public key of the wrong length.
        let import = |extra: Attribute| {
            s.create_object(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::ML_DSA),
                dsa_set(set),
                Attribute::Token(false),
                extra,
            ])
        };
        expect_rv(
            import(Attribute::Seed(seed[..31].to_vec())),
            RvError::AttributeValueInvalid,
        );
        expect_rv(
            import(Attribute::Value(vec![7; 2560])),
            RvError::TemplateInconsistent,
        );
        expect_rv(
            s.create_object(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::ML_DSA),
                dsa_set(set),
                Attribute::Value(rc_pk[1..].to_vec()),
            ]),
            RvError::AttributeValueInvalid,
        );
    }
}

/// The exact codes: parameter sets, key types, contexts, hedging, buffers.
fn ml_dsa_refusals_have_exact_codes(env: &Env) {
    let s = env.user();
    let gen = |public: &[Attribute], private: &[Attribute]| {
        s.generate_key_pair(&Mechanism::MlDsaKeyPairGen, public, private)
    };
    let t = Attribute::Token(false);
    expect_rv(
        gen(&[t.clone(), bad_set(4)], std::slice::from_ref(&t)),
        RvError::AttributeValueInvalid,
    );
    expect_rv(
        gen(&[t.clone(), bad_set(0)], std::slice::from_ref(&t)),
        RvError::AttributeValueInvalid,
    );
    expect_rv(
        gen(std::slice::from_ref(&t), std::slice::from_ref(&t)),
        RvError::TemplateIncomplete,
    );
    expect_rv(
        gen(
            &[t.clone(), dsa_set(ck::CKP_ML_DSA_44)],
            &[t.clone(), dsa_set(ck::CKP_ML_DSA_87)],
        ),
        RvError::TemplateInconsistent,
    );
    // A KEM usage on a signature key.
    expect_rv(
        gen(
            &[
                t.clone(),
                dsa_set(ck::CKP_ML_DSA_65),
                Attribute::Encapsulate(true),
            ],
            std::slice::from_ref(&t),
        ),
        RvError::TemplateInconsistent,
    );
    let (public, private) = dsa_pair(&s, ck::CKP_ML_DSA_65, false);
    // A context of 256 bytes; deterministic signing (AWS-LC signs hedged).
    expect_rv(
        s.sign_init(&ml_dsa(Some(&[0u8; 256])), private),
        RvError::MechanismParamInvalid,
    );
    expect_rv(
        s.verify_init(&ml_dsa(Some(&[0u8; 256])), public),
        RvError::MechanismParamInvalid,
    );
    let deterministic = Mechanism::MlDsa(SignAdditionalContext::new(HedgeType::DeterministicRequired, None));
    expect_rv(
        s.sign_init(&deterministic, private),
        RvError::MechanismParamInvalid,
    );
    let required = Mechanism::MlDsa(SignAdditionalContext::new(HedgeType::Required, Some(b"c")));
    let sig = s.sign(&required, private, MSG).expect("hedged signing");
    s.verify(&required, public, MSG, &sig).unwrap();
    // Wrong key types, both ways.
    let (ec_public, ec_private) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(false),
                Attribute::EcParams(vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
            ],
            &[Attribute::Token(false), Attribute::Sign(true)],
        )
        .unwrap();
    expect_rv(
        s.sign_init(&ml_dsa(None), ec_private),
        RvError::KeyTypeInconsistent,
    );
    expect_rv(
        s.verify_init(&ml_dsa(None), ec_public),
        RvError::KeyTypeInconsistent,
    );
    expect_rv(
        s.sign_init(&Mechanism::Ecdsa, private),
        RvError::KeyTypeInconsistent,
    );
    // A buffer too small: the length needed comes back, the operation stays.
    let h = s.handle();
    let mut mech = ck::CK_MECHANISM {
        mechanism: ck::CKM_ML_DSA,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    // SAFETY: a valid session, mechanism and key handle.
    let r = unsafe { env.raw.C_SignInit.unwrap()(h, &mut mech, raw::obj(private)) };
    assert_eq!(r, ck::CKR_OK);
    let mut out = vec![0u8; 100];
    let mut n: ck::CK_ULONG = 100;
    // SAFETY: `out` holds `n` bytes.
    let r = unsafe {
        env.raw.C_Sign.unwrap()(
            h,
            MSG.as_ptr() as *mut u8,
            MSG.len() as _,
            out.as_mut_ptr(),
            &mut n,
        )
    };
    assert_eq!((r, n), (ck::CKR_BUFFER_TOO_SMALL, 3309));
    let mut out = vec![0u8; 3309];
    // SAFETY: `out` now holds `n` bytes.
    let r = unsafe {
        env.raw.C_Sign.unwrap()(
            h,
            MSG.as_ptr() as *mut u8,
            MSG.len() as _,
            out.as_mut_ptr(),
            &mut n,
        )
    };
    assert_eq!(
        r,
        ck::CKR_OK,
        "the operation stayed active after the short buffer"
    );
    s.verify(&ml_dsa(None), public, MSG, &out[..n as usize]).unwrap();
    // The parameter set is fixed once the key exists.
    expect_rv(
        s.update_attributes(public, &[dsa_set(ck::CKP_ML_DSA_44)]),
        RvError::AttributeReadOnly,
    );
}

// ----------------------------------------------------------------- ML-KEM --

/// Every set: generation, encapsulation to the public key and
/// decapsulation with the private one give the same secret key; by
/// default that key is sensitive; an AES key takes the first 16 bytes and
/// the two sides' AES keys agree.
fn ml_kem_encapsulates_with_every_parameter_set(env: &Env) {
    let s = env.user();
    for (set, public_len, ct_len) in KEM_SETS {
        let (public, private) = kem_pair(&s, set, true);
        assert_eq!(value(&s, public).len(), public_len);
        assert_eq!(parameter_set(&s, private), set);
        assert!(
            sensitive(&s, private, AttributeType::Value),
            "dk stays in the member"
        );
        let (ct, sent) = s
            .encapsulate_key(&Mechanism::MlKem, public, &readable_secret())
            .expect("encapsulate");
        assert_eq!(ct.len(), ct_len);
        let got = s
            .decapsulate_key(&Mechanism::MlKem, private, &readable_secret(), &ct)
            .expect("decapsulate");
        let secret = value(&s, sent);
        assert_eq!(secret.len(), 32);
        assert_eq!(
            secret,
            value(&s, got),
            "both sides have the same secret (set {set})"
        );
        // The default template: the shared secret does not leave the member.
        let (_, hidden) = s
            .encapsulate_key(&Mechanism::MlKem, public, &[Attribute::Token(false)])
            .unwrap();
        assert!(sensitive(&s, hidden, AttributeType::Value));
        // AES-128 keys on both sides: one encrypts what the other decrypts.
        let aes = [
            Attribute::Token(false),
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(16.into()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ];
        let (ct, mine) = s.encapsulate_key(&Mechanism::MlKem, public, &aes).unwrap();
        let theirs = s.decapsulate_key(&Mechanism::MlKem, private, &aes, &ct).unwrap();
        let iv = [9u8; 16];
        let sealed = s.encrypt(&Mechanism::AesCbcPad(iv), mine, MSG).unwrap();
        assert_eq!(
            s.decrypt(&Mechanism::AesCbcPad(iv), theirs, &sealed).unwrap(),
            MSG
        );
        // A changed ciphertext decapsulates to another secret (implicit rejection).
        let (ct, sent) = s
            .encapsulate_key(&Mechanism::MlKem, public, &readable_secret())
            .unwrap();
        let mut changed = ct.clone();
        changed[0] ^= 1;
        let other = s
            .decapsulate_key(&Mechanism::MlKem, private, &readable_secret(), &changed)
            .unwrap();
        assert_ne!(value(&s, other), value(&s, sent));
        // A ciphertext of the wrong length.
        expect_rv(
            s.decapsulate_key(&Mechanism::MlKem, private, &readable_secret(), &ct[1..]),
            RvError::EncryptedDataLenRange,
        );
        s.destroy_object(public).unwrap();
        s.destroy_object(private).unwrap();
    }
}

/// RustCrypto's ml-kem on the other side, both ways, every set: it
/// encapsulates to hahsm's public key and hahsm decapsulates to its secret;
/// hahsm encapsulates to an imported RustCrypto key and RustCrypto
/// decapsulates to hahsm's secret; and a RustCrypto dk imports.
fn ml_kem_agrees_with_rustcrypto(env: &Env) {
    let s = env.user();
    let seed: [u8; 64] = core::array::from_fn(|i| (i as u8).wrapping_mul(13));
    macro_rules! with {
        ($p:ty, $set:expr) => {{
            #[allow(deprecated)] // ExpandedKeyEncoding: the FIPS 203 dk bytes.
            use ml_kem::{Decapsulate, DecapsulationKey, EncapsulationKey, ExpandedKeyEncoding, KeyExport};
            let set: u64 = $set;
            // RustCrypto encapsulates to a key made on the member.
            let (public, private) = kem_pair(&s, set, false);
            let ek = EncapsulationKey::<$p>::new(&value(&s, public).as_slice().try_into().unwrap()).unwrap();
            let (ct, rc_secret) = ek.encapsulate_deterministic(&[0x42; 32].into());
            let ours = s
                .decapsulate_key(&Mechanism::MlKem, private, &readable_secret(), ct.as_slice())
                .unwrap();
            assert_eq!(value(&s, ours), rc_secret.as_slice(), "set {set}");
            // hahsm encapsulates to RustCrypto's public key, imported.
            let rc = DecapsulationKey::<$p>::from_seed(seed.into());
            let imported_public = s
                .create_object(&[
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::KeyType(KeyType::ML_KEM),
                    kem_set(set),
                    Attribute::Token(false),
                    Attribute::Encapsulate(true),
                    Attribute::Value(rc.encapsulation_key().to_bytes().to_vec()),
                ])
                .expect("import of the public key");
            let (ct, sent) = s
                .encapsulate_key(&Mechanism::MlKem, imported_public, &readable_secret())
                .unwrap();
            let rc_secret = rc.decapsulate(&ct.as_slice().try_into().unwrap());
            assert_eq!(value(&s, sent), rc_secret.as_slice());
            // RustCrypto's dk imports and decapsulates the same.
            #[allow(deprecated)]
            let dk = rc.to_expanded_bytes().to_vec();
            let imported_private = s
                .create_object(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::KeyType(KeyType::ML_KEM),
                    kem_set(set),
                    Attribute::Token(false),
                    Attribute::Decapsulate(true),
                    Attribute::Value(dk.clone()),
                ])
                .expect("import of dk");
            let again = s
                .decapsulate_key(&Mechanism::MlKem, imported_private, &readable_secret(), &ct)
                .unwrap();
            assert_eq!(value(&s, again), rc_secret.as_slice());
            // A dk whose embedded hash of ek is wrong is refused.
            let mut bad = dk;
            let n = bad.len();
            bad[n - 40] ^= 1;
            expect_rv(
                s.create_object(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::KeyType(KeyType::ML_KEM),
                    kem_set(set),
                    Attribute::Token(false),
                    Attribute::Value(bad),
                ]),
                RvError::AttributeValueInvalid,
            );
        }};
    }
    with!(ml_kem::MlKem512, ck::CKP_ML_KEM_512);
    with!(ml_kem::MlKem768, ck::CKP_ML_KEM_768);
    with!(ml_kem::MlKem1024, ck::CKP_ML_KEM_1024);
}

fn ml_kem_refusals_have_exact_codes(env: &Env) {
    let s = env.user();
    let t = Attribute::Token(false);
    expect_rv(
        s.generate_key_pair(
            &Mechanism::MlKemKeyPairGen,
            &[t.clone(), bad_set(7)],
            std::slice::from_ref(&t),
        ),
        RvError::AttributeValueInvalid,
    );
    expect_rv(
        s.generate_key_pair(
            &Mechanism::MlKemKeyPairGen,
            std::slice::from_ref(&t),
            std::slice::from_ref(&t),
        ),
        RvError::TemplateIncomplete,
    );
    // A signing flag on a KEM key.
    expect_rv(
        s.generate_key_pair(
            &Mechanism::MlKemKeyPairGen,
            &[t.clone(), kem_set(ck::CKP_ML_KEM_768)],
            &[t.clone(), Attribute::Sign(true)],
        ),
        RvError::TemplateInconsistent,
    );
    let (public, private) = kem_pair(&s, ck::CKP_ML_KEM_768, false);
    let (dsa_public, dsa_private) = dsa_pair(&s, ck::CKP_ML_DSA_44, false);
    // Wrong key types; a public key cannot decapsulate.
    expect_rv(
        s.encapsulate_key(&Mechanism::MlKem, dsa_public, &readable_secret()),
        RvError::KeyTypeInconsistent,
    );
    expect_rv(
        s.decapsulate_key(&Mechanism::MlKem, dsa_private, &readable_secret(), &[0; 1088]),
        RvError::KeyTypeInconsistent,
    );
    expect_rv(
        s.decapsulate_key(&Mechanism::MlKem, public, &readable_secret(), &[0; 1088]),
        RvError::KeyFunctionNotPermitted,
    );
    expect_rv(s.sign_init(&ml_dsa(None), private), RvError::KeyTypeInconsistent);
    // A key longer than the 32-byte secret.
    let mut long = readable_secret();
    long.push(Attribute::ValueLen(33.into()));
    expect_rv(
        s.encapsulate_key(&Mechanism::MlKem, public, &long),
        RvError::TemplateInconsistent,
    );
    // The size query and a short buffer make no key and give the length.
    let (_lib, f32) = raw::functions_3_2();
    let h = s.handle();
    let mut mech = ck::CK_MECHANISM {
        mechanism: ck::CKM_ML_KEM,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    let mut template = [ck::CK_ATTRIBUTE {
        type_: ck::CKA_TOKEN,
        pValue: &mut (ck::CK_FALSE as ck::CK_BBOOL) as *mut ck::CK_BBOOL as *mut std::ffi::c_void,
        ulValueLen: 1,
    }];
    let count_secret_keys = || {
        s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .unwrap()
            .len()
    };
    let before = count_secret_keys();
    let mut n: ck::CK_ULONG = 0;
    let mut key = 0;
    // SAFETY: valid session, mechanism, key and template; a NULL ciphertext asks for the length.
    let r = unsafe {
        f32.C_EncapsulateKey.unwrap()(
            h,
            &mut mech,
            raw::obj(public),
            template.as_mut_ptr(),
            1,
            std::ptr::null_mut(),
            &mut n,
            &mut key,
        )
    };
    assert_eq!((r, n), (ck::CKR_OK, 1088));
    let mut out = vec![0u8; 1000];
    n = 1000;
    // SAFETY: `out` holds `n` bytes.
    let r = unsafe {
        f32.C_EncapsulateKey.unwrap()(
            h,
            &mut mech,
            raw::obj(public),
            template.as_mut_ptr(),
            1,
            out.as_mut_ptr(),
            &mut n,
            &mut key,
        )
    };
    assert_eq!((r, n), (ck::CKR_BUFFER_TOO_SMALL, 1088));
    assert_eq!(
        count_secret_keys(),
        before,
        "no key was made by the query or the short buffer"
    );
    // NULL arguments.
    // SAFETY: a NULL ciphertext length is refused before it is read.
    let r = unsafe {
        f32.C_EncapsulateKey.unwrap()(
            h,
            &mut mech,
            raw::obj(public),
            template.as_mut_ptr(),
            1,
            out.as_mut_ptr(),
            std::ptr::null_mut(),
            &mut key,
        )
    };
    assert_eq!(r, ck::CKR_ARGUMENTS_BAD);
    // SAFETY: a NULL ciphertext is refused before it is read.
    let r = unsafe {
        f32.C_DecapsulateKey.unwrap()(
            h,
            &mut mech,
            raw::obj(private),
            template.as_mut_ptr(),
            1,
            std::ptr::null_mut(),
            1088,
            &mut key,
        )
    };
    assert_eq!(r, ck::CKR_ARGUMENTS_BAD);
}

// ------------------------------------------------------- wrap and unwrap --

/// An extractable ML-DSA private key wraps (as its seed-form PKCS#8 under
/// AES key wrap with padding) and unwraps as the same key; an ML-KEM
/// private key does not wrap.
fn ml_keys_wrap_where_they_can(env: &Env) {
    let s = env.user();
    let kek = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
            ],
        )
        .unwrap();
    let (public, private) = s
        .generate_key_pair(
            &Mechanism::MlDsaKeyPairGen,
            &[Attribute::Token(false), dsa_set(ck::CKP_ML_DSA_65)],
            &[Attribute::Token(false), Attribute::Extractable(true)],
        )
        .unwrap();
    let (h, kwp) = (s.handle(), ck::CKM_AES_KEY_WRAP_KWP);
    let (r, wrapped) = raw::wrap(env, h, kwp, raw::obj(kek), raw::obj(private));
    assert_eq!(r, ck::CKR_OK, "wrap");
    let back = raw::unwrap(
        env,
        h,
        kwp,
        raw::obj(kek),
        &wrapped,
        &[
            Attribute::Token(false),
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::ML_DSA),
            Attribute::Sign(true),
        ],
    );
    assert_eq!(parameter_set(&s, back), ck::CKP_ML_DSA_65);
    let sig = s.sign(&ml_dsa(None), back, MSG).unwrap();
    s.verify(&ml_dsa(None), public, MSG, &sig)
        .expect("the unwrapped key is the same key");
    let (_, kem_private) = s
        .generate_key_pair(
            &Mechanism::MlKemKeyPairGen,
            &[Attribute::Token(false), kem_set(ck::CKP_ML_KEM_512)],
            &[Attribute::Token(false), Attribute::Extractable(true)],
        )
        .unwrap();
    assert_eq!(
        raw::wrap(env, h, kwp, raw::obj(kek), raw::obj(kem_private)).0,
        ck::CKR_KEY_NOT_WRAPPABLE
    );
    // A key that is not extractable (the default) does not wrap at all.
    let (_, fixed) = dsa_pair(&s, ck::CKP_ML_DSA_44, false);
    assert_eq!(
        raw::wrap(env, h, kwp, raw::obj(kek), raw::obj(fixed)).0,
        ck::CKR_KEY_UNEXTRACTABLE
    );
}

#[test]
fn post_quantum_keys_through_the_module() {
    let env = Env::new();
    run_checks(
        &env,
        &[
            (
                "the_module_offers_pkcs11_3_2_first",
                the_module_offers_pkcs11_3_2_first,
            ),
            (
                "the_mechanisms_are_listed_with_their_flags",
                the_mechanisms_are_listed_with_their_flags,
            ),
            (
                "ml_dsa_signs_with_every_parameter_set",
                ml_dsa_signs_with_every_parameter_set,
            ),
            ("ml_dsa_keys_import", ml_dsa_keys_import),
            (
                "ml_dsa_refusals_have_exact_codes",
                ml_dsa_refusals_have_exact_codes,
            ),
            (
                "ml_kem_encapsulates_with_every_parameter_set",
                ml_kem_encapsulates_with_every_parameter_set,
            ),
            ("ml_kem_agrees_with_rustcrypto", ml_kem_agrees_with_rustcrypto),
            (
                "ml_kem_refusals_have_exact_codes",
                ml_kem_refusals_have_exact_codes,
            ),
            ("ml_keys_wrap_where_they_can", ml_keys_wrap_where_they_can),
        ],
    );
}
