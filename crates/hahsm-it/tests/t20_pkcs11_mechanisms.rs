//! The PKCS#11 module loaded through the `cryptoki` crate, as applications load
//! it, against a real member: every mechanism family, each cross-checked
//! outside hahsm (openssl or aws-lc-rs), and object management.
mod t20_pkcs11_support;

use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use hahsm_it::run;
use std::path::Path;
use t20_pkcs11_support::{ecdsa_der, expect_rv, raw, run_checks, Env};

const KWP: u64 = cryptoki_sys::CKM_AES_KEY_WRAP_KWP;

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const DATA: &[u8] = b"the quick brown fox jumps over the lazy dog";

fn ps(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn bytes_attr(s: &Session, o: ObjectHandle, t: AttributeType) -> Vec<u8> {
    match s.get_attributes(o, &[t]).expect("get attribute").pop() {
        Some(Attribute::EcPoint(v))
        | Some(Attribute::PublicKeyInfo(v))
        | Some(Attribute::Value(v))
        | Some(Attribute::UniqueId(v))
        | Some(Attribute::Modulus(v))
        | Some(Attribute::Label(v)) => v,
        other => panic!("unexpected {other:?}"),
    }
}

/// Writes the key's SubjectPublicKeyInfo as a DER file openssl reads.
fn public_key_file(env: &Env, s: &Session, public: ObjectHandle, name: &str) -> std::path::PathBuf {
    let spki = bytes_attr(s, public, AttributeType::PublicKeyInfo);
    let path = env.st.path(name);
    std::fs::write(&path, spki).unwrap();
    path
}

fn openssl_ok(args: &[&str]) {
    let r = run("openssl", args);
    assert!(r.ok, "openssl {args:?}: {} {}", r.stdout, r.stderr);
}

fn rsa_pair(s: &Session, token: bool) -> (ObjectHandle, ObjectHandle) {
    s.generate_key_pair(
        &Mechanism::RsaPkcsKeyPairGen,
        &[
            Attribute::Token(token),
            Attribute::ModulusBits(2048.into()),
            Attribute::Verify(true),
            Attribute::Encrypt(true),
            Attribute::Wrap(true),
        ],
        &[
            Attribute::Token(token),
            Attribute::Private(true),
            Attribute::Sign(true),
            Attribute::Decrypt(true),
            Attribute::Unwrap(true),
            Attribute::Label(b"rsa".to_vec()),
        ],
    )
    .expect("RSA key pair")
}

fn ec_pair(s: &Session, params: &[u8], derive: bool) -> (ObjectHandle, ObjectHandle) {
    let mech = if params == ED25519 {
        Mechanism::EccEdwardsKeyPairGen
    } else {
        Mechanism::EccKeyPairGen
    };
    s.generate_key_pair(
        &mech,
        &[
            Attribute::Token(false),
            Attribute::EcParams(params.to_vec()),
            Attribute::Verify(true),
        ],
        &[
            Attribute::Token(false),
            Attribute::Sign(true),
            Attribute::Derive(derive),
        ],
    )
    .expect("EC key pair")
}

fn rsa_signatures_verified_by_openssl(env: &Env) {
    let s = env.user();
    let (public, private) = rsa_pair(&s, false);
    let pubkey = public_key_file(env, &s, public, "rsa.der");
    let data = env.st.path("data.bin");
    std::fs::write(&data, DATA).unwrap();
    for (mech, md) in [
        (Mechanism::Sha1RsaPkcs, "-sha1"),
        (Mechanism::Sha224RsaPkcs, "-sha224"),
        (Mechanism::Sha256RsaPkcs, "-sha256"),
        (Mechanism::Sha384RsaPkcs, "-sha384"),
        (Mechanism::Sha512RsaPkcs, "-sha512"),
    ] {
        let sig = s.sign(&mech, private, DATA).expect("sign");
        s.verify(&mech, public, DATA, &sig).expect("module verifies");
        let f = env.st.path("rsa.sig");
        std::fs::write(&f, &sig).unwrap();
        openssl_ok(&[
            "dgst",
            md,
            "-verify",
            ps(&pubkey),
            "-keyform",
            "DER",
            "-signature",
            ps(&f),
            ps(&data),
        ]);
    }
    for (mech, hash, mgf, md) in [
        (
            MechanismType::SHA256_RSA_PKCS_PSS,
            MechanismType::SHA256,
            PkcsMgfType::MGF1_SHA256,
            "-sha256",
        ),
        (
            MechanismType::SHA512_RSA_PKCS_PSS,
            MechanismType::SHA512,
            PkcsMgfType::MGF1_SHA512,
            "-sha512",
        ),
    ] {
        let params = PkcsPssParams {
            hash_alg: hash,
            mgf,
            s_len: 32.into(),
        };
        let m = if mech == MechanismType::SHA256_RSA_PKCS_PSS {
            Mechanism::Sha256RsaPkcsPss(params)
        } else {
            Mechanism::Sha512RsaPkcsPss(params)
        };
        let sig = s.sign(&m, private, DATA).expect("PSS sign");
        let f = env.st.path("pss.sig");
        std::fs::write(&f, &sig).unwrap();
        openssl_ok(&[
            "dgst",
            md,
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:32",
            "-verify",
            ps(&pubkey),
            "-keyform",
            "DER",
            "-signature",
            ps(&f),
            ps(&data),
        ]);
    }
    // CKM_RSA_PKCS_PSS over a digest the application computed.
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, DATA);
    let pss = Mechanism::RsaPkcsPss(PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: 32.into(),
    });
    let sig = s.sign(&pss, private, digest.as_ref()).expect("raw PSS");
    s.verify(&pss, public, digest.as_ref(), &sig)
        .expect("raw PSS verifies");
    // CKM_RSA_PKCS over a DigestInfo, and CKM_RSA_X_509 recovering it by hand.
    let mut info = hex::decode("3031300d060960864801650304020105000420").unwrap();
    info.extend_from_slice(digest.as_ref());
    let sig = s
        .sign(&Mechanism::RsaPkcs, private, &info)
        .expect("RSA_PKCS sign");
    let f = env.st.path("raw.sig");
    std::fs::write(&f, &sig).unwrap();
    openssl_ok(&[
        "dgst",
        "-sha256",
        "-verify",
        ps(&pubkey),
        "-keyform",
        "DER",
        "-signature",
        ps(&f),
        ps(&data),
    ]);
    let raw = s
        .encrypt(&Mechanism::RsaX509, public, &sig)
        .expect("RSA_X_509 public op");
    assert!(raw.ends_with(&info), "the padded block ends with the DigestInfo");
}

fn rsa_oaep_and_pkcs1_encryption_cross_checked(env: &Env) {
    let s = env.user();
    let (public, private) = rsa_pair(&s, false);
    let pubkey = public_key_file(env, &s, public, "rsa-enc.der");
    let plain = env.st.path("plain.bin");
    std::fs::write(&plain, b"secret message").unwrap();
    for (hash, mgf, md) in [
        (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, "sha256"),
        (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1, "sha1"),
    ] {
        let oaep = Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()));
        // Module encrypts, module decrypts.
        let ct = s.encrypt(&oaep, public, b"secret message").expect("OAEP encrypt");
        assert_eq!(
            s.decrypt(&oaep, private, &ct).expect("OAEP decrypt"),
            b"secret message"
        );
        // openssl encrypts, the module decrypts.
        let ctf = env.st.path("oaep.bin");
        openssl_ok(&[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-keyform",
            "DER",
            "-inkey",
            ps(&pubkey),
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            &format!("rsa_oaep_md:{md}"),
            "-pkeyopt",
            &format!("rsa_mgf1_md:{md}"),
            "-in",
            ps(&plain),
            "-out",
            ps(&ctf),
        ]);
        let ct = std::fs::read(&ctf).unwrap();
        assert_eq!(
            s.decrypt(&oaep, private, &ct).expect("decrypts openssl's OAEP"),
            b"secret message"
        );
    }
    let ctf = env.st.path("pkcs1.bin");
    openssl_ok(&[
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-keyform",
        "DER",
        "-inkey",
        ps(&pubkey),
        "-in",
        ps(&plain),
        "-out",
        ps(&ctf),
    ]);
    let ct = std::fs::read(&ctf).unwrap();
    assert_eq!(
        s.decrypt(&Mechanism::RsaPkcs, private, &ct).unwrap(),
        b"secret message"
    );
}

fn ecdsa_on_each_curve_verified_by_openssl(env: &Env) {
    let s = env.user();
    let data = env.st.path("ec-data.bin");
    std::fs::write(&data, DATA).unwrap();
    for (curve, point_len) in [(P256, 65), (P384, 97)] {
        let (public, private) = ec_pair(&s, curve, false);
        // CKA_EC_POINT comes back DER-wrapped: an OCTET STRING around 04||x||y.
        let point = bytes_attr(&s, public, AttributeType::EcPoint);
        assert_eq!(point[0], 0x04);
        assert_eq!(point[1] as usize, point_len);
        assert_eq!(point.len(), point_len + 2);
        let pubkey = public_key_file(env, &s, public, "ec.der");
        for (mech, md) in [
            (Mechanism::EcdsaSha1, "-sha1"),
            (Mechanism::EcdsaSha224, "-sha224"),
            (Mechanism::EcdsaSha256, "-sha256"),
            (Mechanism::EcdsaSha384, "-sha384"),
            (Mechanism::EcdsaSha512, "-sha512"),
        ] {
            let sig = s.sign(&mech, private, DATA).expect("ECDSA sign");
            assert_eq!(sig.len(), point_len - 1, "r||s");
            s.verify(&mech, public, DATA, &sig).expect("module verifies");
            let f = env.st.path("ec.sig");
            std::fs::write(&f, ecdsa_der(&sig)).unwrap();
            openssl_ok(&[
                "dgst",
                md,
                "-verify",
                ps(&pubkey),
                "-keyform",
                "DER",
                "-signature",
                ps(&f),
                ps(&data),
            ]);
        }
        // CKM_ECDSA over a digest.
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, DATA);
        let sig = s.sign(&Mechanism::Ecdsa, private, digest.as_ref()).unwrap();
        s.verify(&Mechanism::Ecdsa, public, digest.as_ref(), &sig)
            .unwrap();
    }
}

fn ed25519_verified_by_openssl(env: &Env) {
    let s = env.user();
    let (public, private) = ec_pair(&s, ED25519, false);
    let sig = s
        .sign(
            &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
            private,
            DATA,
        )
        .expect("EdDSA sign");
    assert_eq!(sig.len(), 64);
    let pubkey = public_key_file(env, &s, public, "ed.der");
    let (data, f) = (env.st.path("ed-data.bin"), env.st.path("ed.sig"));
    std::fs::write(&data, DATA).unwrap();
    std::fs::write(&f, &sig).unwrap();
    openssl_ok(&[
        "pkeyutl",
        "-verify",
        "-pubin",
        "-keyform",
        "DER",
        "-inkey",
        ps(&pubkey),
        "-rawin",
        "-in",
        ps(&data),
        "-sigfile",
        ps(&f),
    ]);
}

fn ecdh_derives_the_same_secret_with_raw_and_der_points(env: &Env) {
    let s = env.user();
    let (pub_a, priv_a) = ec_pair(&s, P256, true);
    let (pub_b, priv_b) = ec_pair(&s, P256, true);
    let der_b = bytes_attr(&s, pub_b, AttributeType::EcPoint);
    let raw_a = bytes_attr(&s, pub_a, AttributeType::EcPoint)[2..].to_vec();
    let template = [
        Attribute::Token(false),
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::ValueLen(32.into()),
    ];
    let k1 = s
        .derive_key(
            &Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &der_b)),
            priv_a,
            &template,
        )
        .expect("derive with a DER point");
    let k2 = s
        .derive_key(
            &Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &raw_a)),
            priv_b,
            &template,
        )
        .expect("derive with a raw point");
    let v1 = bytes_attr(&s, k1, AttributeType::Value);
    assert_eq!(v1.len(), 32);
    assert_eq!(v1, bytes_attr(&s, k2, AttributeType::Value), "both sides agree");
}

fn aes_key(s: &Session, value: &[u8]) -> ObjectHandle {
    s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Value(value.to_vec()),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Extractable(true),
        Attribute::Sensitive(false),
    ])
    .expect("AES key imported")
}

fn aes_modes_decrypted_by_openssl_and_aws_lc(env: &Env) {
    let s = env.user();
    let key = [0x11u8; 32];
    let k = aes_key(&s, &key);
    let iv = [0x22u8; 16];
    let plain = b"sixteen byte blk and then some more".to_vec();
    let decrypt_with_openssl = |cipher: &str, ct: &[u8], nopad: bool| {
        let (ctf, ptf) = (env.st.path("aes.ct"), env.st.path("aes.pt"));
        std::fs::write(&ctf, ct).unwrap();
        let mut args = vec![
            "enc".to_string(),
            "-d".into(),
            format!("-{cipher}"),
            "-K".into(),
            hex::encode(key),
            "-in".into(),
            ps(&ctf).into(),
            "-out".into(),
            ps(&ptf).into(),
        ];
        if cipher.ends_with("cbc") {
            args.extend(["-iv".to_string(), hex::encode(iv)]);
        }
        if nopad {
            args.push("-nopad".into());
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        openssl_ok(&a);
        std::fs::read(&ptf).unwrap()
    };
    let ct = s.encrypt(&Mechanism::AesCbcPad(iv), k, &plain).expect("CBC-PAD");
    assert_eq!(decrypt_with_openssl("aes-256-cbc", &ct, false), plain);
    assert_eq!(s.decrypt(&Mechanism::AesCbcPad(iv), k, &ct).unwrap(), plain);
    let block = &plain[..32];
    let ct = s.encrypt(&Mechanism::AesCbc(iv), k, block).expect("CBC");
    assert_eq!(decrypt_with_openssl("aes-256-cbc", &ct, true), block);
    let ct = s.encrypt(&Mechanism::AesEcb, k, block).expect("ECB");
    assert_eq!(decrypt_with_openssl("aes-256-ecb", &ct, true), block);
    assert_eq!(s.decrypt(&Mechanism::AesEcb, k, &ct).unwrap(), block);
    // GCM with AAD, opened by aws-lc-rs.
    let mut nonce = [0x33u8; 12];
    let ct = s
        .encrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut nonce, b"aad", 128.into()).unwrap()),
            k,
            &plain,
        )
        .expect("GCM");
    let opening = aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &key).unwrap(),
    );
    let mut in_out = ct.clone();
    let opened = opening
        .open_in_place(
            aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
            aws_lc_rs::aead::Aad::from(b"aad"),
            &mut in_out,
        )
        .expect("aws-lc-rs opens the module's GCM");
    assert_eq!(opened, &plain[..]);
    let mut nonce2 = nonce;
    let back = s
        .decrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut nonce2, b"aad", 128.into()).unwrap()),
            k,
            &ct,
        )
        .unwrap();
    assert_eq!(back, plain);
}

fn multi_part_operations_match_single_part(env: &Env) {
    let s = env.user();
    let k = aes_key(&s, &[0x44; 16]);
    let iv = [0x55u8; 16];
    let m = Mechanism::AesCbcPad(iv);
    let one = s.encrypt(&m, k, DATA).unwrap();
    s.encrypt_init(&m, k).unwrap();
    let mut parts = s.encrypt_update(&DATA[..10]).unwrap();
    parts.extend(s.encrypt_update(&DATA[10..]).unwrap());
    parts.extend(s.encrypt_final().unwrap());
    assert_eq!(parts, one);
    s.decrypt_init(&m, k).unwrap();
    let mut back = s.decrypt_update(&one[..16]).unwrap();
    back.extend(s.decrypt_update(&one[16..]).unwrap());
    back.extend(s.decrypt_final().unwrap());
    assert_eq!(back, DATA);
    let (public, private) = ec_pair(&s, P256, false);
    s.sign_init(&Mechanism::EcdsaSha256, private).unwrap();
    s.sign_update(&DATA[..5]).unwrap();
    s.sign_update(&DATA[5..]).unwrap();
    let sig = s.sign_final().unwrap();
    s.verify(&Mechanism::EcdsaSha256, public, DATA, &sig).unwrap();
    s.verify_init(&Mechanism::EcdsaSha256, public).unwrap();
    s.verify_update(&DATA[..7]).unwrap();
    s.verify_update(&DATA[7..]).unwrap();
    s.verify_final(&sig).expect("multi-part verify");
    s.digest_init(&Mechanism::Sha256).unwrap();
    s.digest_update(&DATA[..3]).unwrap();
    s.digest_update(&DATA[3..]).unwrap();
    assert_eq!(
        s.digest_final().unwrap(),
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, DATA).as_ref()
    );
}

/// What aws-lc-rs makes of `data` under AES-`mode` with `key` and `iv`.
fn aws_lc_aes(mode: u64, key: &[u8], iv: [u8; 16], data: &[u8]) -> Vec<u8> {
    use aws_lc_rs::cipher::{
        EncryptingKey, EncryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey, AES_128,
    };
    let k = || UnboundCipherKey::new(&AES_128, key).unwrap();
    let mut buf = data.to_vec();
    match mode {
        cryptoki_sys::CKM_AES_ECB => EncryptingKey::ecb(k())
            .unwrap()
            .less_safe_encrypt(&mut buf, EncryptionContext::None)
            .map(|_| ()),
        cryptoki_sys::CKM_AES_CBC => EncryptingKey::cbc(k())
            .unwrap()
            .less_safe_encrypt(&mut buf, EncryptionContext::Iv128(iv.into()))
            .map(|_| ()),
        _ => PaddedBlockEncryptingKey::cbc_pkcs7(k())
            .unwrap()
            .less_safe_encrypt(&mut buf, EncryptionContext::Iv128(iv.into()))
            .map(|_| ()),
    }
    .expect("aws-lc-rs encrypts");
    buf
}

/// Issue 19: multi-part AES-ECB, AES-CBC and AES-CBC-PAD stream. A 4 MiB
/// buffer in 64 KiB parts gives the bytes aws-lc-rs gives in one go, each
/// `C_EncryptUpdate` outputs its whole blocks at once (so the module holds
/// at most a partial block), and decryption in parts of an odd size returns
/// the plaintext, CBC-PAD keeping the last block for `C_DecryptFinal`.
fn aes_multi_part_streams_whole_blocks(env: &Env) {
    let s = env.user();
    let key = [0x5au8; 16];
    let k = aes_key(&s, &key);
    let iv = [0x6bu8; 16];
    let data: Vec<u8> = (0..4usize << 20).map(|i| (i * 7 + i / 251) as u8).collect();
    for (mode, m) in [
        (cryptoki_sys::CKM_AES_ECB, Mechanism::AesEcb),
        (cryptoki_sys::CKM_AES_CBC, Mechanism::AesCbc(iv)),
        (cryptoki_sys::CKM_AES_CBC_PAD, Mechanism::AesCbcPad(iv)),
    ] {
        let want = aws_lc_aes(mode, &key, iv, &data);
        s.encrypt_init(&m, k).unwrap();
        let mut got = Vec::with_capacity(want.len());
        for part in data.chunks(64 * 1024) {
            let out = s.encrypt_update(part).unwrap();
            assert_eq!(out.len(), part.len(), "{m:?}: a 64 KiB update outputs its 64 KiB");
            got.extend(out);
        }
        got.extend(s.encrypt_final().unwrap());
        assert!(
            got == want,
            "{m:?}: the streamed ciphertext differs from aws-lc-rs's"
        );

        // Not a whole block yet: nothing; the block completed: 16 bytes.
        s.encrypt_init(&m, k).unwrap();
        assert_eq!(s.encrypt_update(&data[..10]).unwrap().len(), 0, "{m:?}");
        assert_eq!(s.encrypt_update(&data[10..20]).unwrap(), &want[..16], "{m:?}");
        if mode == cryptoki_sys::CKM_AES_CBC_PAD {
            assert_eq!(
                s.encrypt_final().unwrap(),
                aws_lc_aes(mode, &key, iv, &data[..20])[16..]
            );
        } else {
            expect_rv(s.encrypt_final(), RvError::DataLenRange);
        }

        s.decrypt_init(&m, k).unwrap();
        let mut back = Vec::with_capacity(data.len());
        for part in want.chunks(64 * 1024 + 7) {
            back.extend(s.decrypt_update(part).unwrap());
        }
        back.extend(s.decrypt_final().unwrap());
        assert!(
            back == data,
            "{m:?}: decryption in parts gives the plaintext back"
        );
    }
    // CBC-PAD decryption holds back the last whole block: one block in, none out.
    let ct = aws_lc_aes(cryptoki_sys::CKM_AES_CBC_PAD, &key, iv, b"one block");
    s.decrypt_init(&Mechanism::AesCbcPad(iv), k).unwrap();
    assert_eq!(s.decrypt_update(&ct).unwrap().len(), 0);
    assert_eq!(s.decrypt_final().unwrap(), b"one block");
}

/// Issue 19: a single-part `C_Encrypt` over what one request carries is
/// `CKR_DATA_LEN_RANGE` (it was `CKR_ARGUMENTS_BAD`), and the module's log
/// names the limit; the same data goes through in parts (of 700 KiB, which
/// the module sends on in requests of at most 512 KiB).
fn single_part_over_the_limit_is_data_len_range(env: &Env) {
    let s = env.user();
    let k = aes_key(&s, &[0x77; 16]);
    // Over what one frame carries (1 MiB), where CKR_ARGUMENTS_BAD came from
    // the connection before.
    let big = vec![0u8; 2 << 20];
    match s.encrypt(&Mechanism::AesEcb, k, &big) {
        Err(e) => assert_eq!(t20_pkcs11_support::rv(&e), RvError::DataLenRange, "{e}"),
        Ok(out) => panic!("a 2 MiB single-part C_Encrypt gave {} bytes", out.len()),
    }
    let log = env.log();
    assert!(
        log.contains("C_Encrypt") && log.contains("limit of 1024000 bytes"),
        "the log names the limit:\n{log}"
    );
    s.encrypt_init(&Mechanism::AesEcb, k).unwrap();
    let mut n = 0;
    for part in big.chunks(700 * 1024) {
        n += s.encrypt_update(part).unwrap().len();
    }
    n += s.encrypt_final().unwrap().len();
    assert_eq!(n, big.len());
}

/// A multi-part operation through the raw list (cryptoki has no AES-CTR):
/// the output of each `C_*Update` over `parts`, then of `C_*Final`.
fn raw_crypt_parts(
    env: &Env,
    h: cryptoki_sys::CK_SESSION_HANDLE,
    encrypt: bool,
    mech: &mut cryptoki_sys::CK_MECHANISM,
    key: u64,
    parts: &[&[u8]],
) -> Result<Vec<Vec<u8>>, u64> {
    let f = &env.raw;
    let check = |r: u64| if r == 0 { Ok(()) } else { Err(r) };
    // SAFETY: valid pointers for the calls' lengths; the module is initialized.
    check(unsafe {
        if encrypt {
            f.C_EncryptInit.unwrap()(h, mech, key)
        } else {
            f.C_DecryptInit.unwrap()(h, mech, key)
        }
    })?;
    let mut outs = Vec::new();
    for part in parts {
        let mut buf = vec![0u8; part.len() + 32];
        let mut len = buf.len() as cryptoki_sys::CK_ULONG;
        // SAFETY: as above; `buf` holds `len` bytes.
        check(unsafe {
            let update = if encrypt {
                f.C_EncryptUpdate.unwrap()
            } else {
                f.C_DecryptUpdate.unwrap()
            };
            update(
                h,
                part.as_ptr() as *mut u8,
                part.len() as _,
                buf.as_mut_ptr(),
                &mut len,
            )
        })?;
        buf.truncate(len as usize);
        outs.push(buf);
    }
    let mut buf = vec![0u8; 32];
    let mut len = 32;
    // SAFETY: as above.
    check(unsafe {
        if encrypt {
            f.C_EncryptFinal.unwrap()(h, buf.as_mut_ptr(), &mut len)
        } else {
            f.C_DecryptFinal.unwrap()(h, buf.as_mut_ptr(), &mut len)
        }
    })?;
    buf.truncate(len as usize);
    outs.push(buf);
    Ok(outs)
}

/// Issue 19: `CKM_AES_CTR` is offered, and encrypts NIST SP 800-38A F.5.1
/// (CTR-AES128.Encrypt) single-part and in parts that split blocks.
fn aes_ctr_known_answer(env: &Env) {
    let s = env.user();
    let mechs = env.p11.get_mechanism_list(env.slot).unwrap();
    assert!(
        mechs.iter().any(|m| **m == cryptoki_sys::CKM_AES_CTR),
        "CKM_AES_CTR is in C_GetMechanismList"
    );
    let key = hex::decode("2b7e151628aed2a6abf7158809cf4f3c").unwrap();
    let plain = hex::decode(concat!(
        "6bc1bee22e409f96e93d7e117393172a",
        "ae2d8a571e03ac9c9eb76fac45af8e51",
        "30c81c46a35ce411e5fbc1191a0a52ef",
        "f69f2445df4f9b17ad2b417be66c3710"
    ))
    .unwrap();
    let cipher = hex::decode(concat!(
        "874d6191b620e3261bef6864990db6ce",
        "9806f66b7970fdff8617187bb9fffdff",
        "5ae4df3edbd5d35e5b4f09020db03eab",
        "1e031dda2fbe03d1792170a0f3009cee"
    ))
    .unwrap();
    let k = raw::obj(aes_key(&s, &key));
    let mut params = cryptoki_sys::CK_AES_CTR_PARAMS {
        ulCounterBits: 128,
        cb: <[u8; 16]>::try_from(hex::decode("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff").unwrap()).unwrap(),
    };
    let mut m = cryptoki_sys::CK_MECHANISM {
        mechanism: cryptoki_sys::CKM_AES_CTR,
        pParameter: &mut params as *mut _ as *mut std::ffi::c_void,
        ulParameterLen: std::mem::size_of::<cryptoki_sys::CK_AES_CTR_PARAMS>() as _,
    };
    let h = s.handle();
    let f = &env.raw;
    // SAFETY: valid pointers for their lengths.
    assert_eq!(unsafe { f.C_EncryptInit.unwrap()(h, &mut m, k) }, 0);
    let mut out = vec![0u8; 64];
    let mut len = 64;
    // SAFETY: as above.
    let r = unsafe { f.C_Encrypt.unwrap()(h, plain.as_ptr() as *mut u8, 64, out.as_mut_ptr(), &mut len) };
    assert_eq!((r, len), (0, 64));
    assert_eq!(
        hex::encode(&out),
        hex::encode(&cipher),
        "single-part CTR-AES128.Encrypt"
    );

    let parts: Vec<&[u8]> = vec![&plain[..5], &plain[5..25], &plain[25..57], &plain[57..]];
    let outs = raw_crypt_parts(env, h, true, &mut m, k, &parts).expect("multi-part CTR");
    // Whole blocks come out as soon as they are complete: 5 bytes make none,
    // 25 one, 57 three, 64 four.
    assert_eq!(outs.iter().map(Vec::len).collect::<Vec<_>>(), [0, 16, 32, 16, 0]);
    assert_eq!(
        hex::encode(outs.concat()),
        hex::encode(&cipher),
        "multi-part CTR-AES128.Encrypt"
    );
    // 60 bytes: the last 12 are a partial block, which C_DecryptFinal outputs.
    let parts: Vec<&[u8]> = vec![&cipher[..33], &cipher[33..60]];
    let back = raw_crypt_parts(env, h, false, &mut m, k, &parts).expect("CTR decryption");
    assert_eq!(back.iter().map(Vec::len).collect::<Vec<_>>(), [32, 16, 12]);
    assert_eq!(back.concat(), &plain[..60], "CTR-AES128.Decrypt");
    // An 8-bit counter at 0xff has one block left: two blocks would repeat the key stream.
    let mut eight = cryptoki_sys::CK_AES_CTR_PARAMS {
        ulCounterBits: 8,
        cb: params.cb,
    };
    let mut m8 = cryptoki_sys::CK_MECHANISM {
        pParameter: &mut eight as *mut _ as *mut std::ffi::c_void,
        ..m
    };
    let two: Vec<&[u8]> = vec![&plain[..16], &plain[16..32]];
    assert_eq!(
        raw_crypt_parts(env, h, true, &mut m8, k, &two),
        Err(cryptoki_sys::CKR_DATA_LEN_RANGE)
    );
    // One block is what it has, single-part too.
    assert_eq!(
        raw_crypt_parts(env, h, true, &mut m8, k, &two[..1]).map(|o| o.concat()),
        Ok(cipher[..16].to_vec())
    );
}

fn digests_and_hmac_match_aws_lc(env: &Env) {
    let s = env.user();
    use aws_lc_rs::digest as d;
    for (mech, alg) in [
        (Mechanism::Sha1, &d::SHA1_FOR_LEGACY_USE_ONLY),
        (Mechanism::Sha224, &d::SHA224),
        (Mechanism::Sha256, &d::SHA256),
        (Mechanism::Sha384, &d::SHA384),
        (Mechanism::Sha512, &d::SHA512),
    ] {
        assert_eq!(s.digest(&mech, DATA).unwrap(), d::digest(alg, DATA).as_ref());
    }
    let secret = [0x66u8; 32];
    let k = s
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Value(secret.to_vec()),
            Attribute::Sign(true),
            Attribute::Verify(true),
        ])
        .unwrap();
    use aws_lc_rs::hmac;
    for (mech, alg) in [
        (Mechanism::Sha256Hmac, hmac::HMAC_SHA256),
        (Mechanism::Sha384Hmac, hmac::HMAC_SHA384),
        (Mechanism::Sha512Hmac, hmac::HMAC_SHA512),
    ] {
        let mac = s.sign(&mech, k, DATA).unwrap();
        assert_eq!(mac, hmac::sign(&hmac::Key::new(alg, &secret), DATA).as_ref());
        s.verify(&mech, k, DATA, &mac).unwrap();
    }
    let generated = s
        .generate_key(
            &Mechanism::GenericSecretKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Sign(true),
                Attribute::Verify(true),
            ],
        )
        .expect("generic secret generated");
    let mac = s.sign(&Mechanism::Sha256Hmac, generated, DATA).unwrap();
    s.verify(&Mechanism::Sha256Hmac, generated, DATA, &mac).unwrap();
}

fn wrapped_keys_unwrap_elsewhere(env: &Env) {
    let s = env.user();
    let kek_bytes = [0x77u8; 32];
    let kek = aes_key(&s, &kek_bytes);
    let target_bytes = [0x88u8; 24];
    let target = aes_key(&s, &target_bytes);
    use aws_lc_rs::key_wrap::{AesKek, KeyWrap, KeyWrapPadded, AES_256};
    let kek_local = || AesKek::new(&AES_256, &kek_bytes).unwrap();
    let wrapped = s
        .wrap_key(&Mechanism::AesKeyWrap, kek, target)
        .expect("AES key wrap");
    let mut out = [0u8; 64];
    assert_eq!(kek_local().unwrap(&wrapped, &mut out).unwrap(), &target_bytes);
    // cryptoki has no CKM_AES_KEY_WRAP_KWP (RFC 5649); call it raw.
    let (r, wrapped) = raw::wrap(env, s.handle(), KWP, raw::obj(kek), raw::obj(target));
    assert_eq!(r, 0, "AES KWP");
    assert_eq!(
        kek_local().unwrap_with_padding(&wrapped, &mut out).unwrap(),
        &target_bytes
    );
    // Wrapped elsewhere, unwrapped by the module.
    let mut buf = [0u8; 64];
    let ext = kek_local().wrap(&target_bytes, &mut buf).unwrap().to_vec();
    let unwrapped = s
        .unwrap_key(
            &Mechanism::AesKeyWrap,
            kek,
            &ext,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
                Attribute::Encrypt(true),
            ],
        )
        .expect("unwrap");
    assert_eq!(bytes_attr(&s, unwrapped, AttributeType::Value), target_bytes);
    // An RSA private key wrapped with KWP and unwrapped again signs the same.
    let (public, private) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::Token(false),
                Attribute::ModulusBits(2048.into()),
                Attribute::Verify(true),
            ],
            &[
                Attribute::Token(false),
                Attribute::Sign(true),
                Attribute::Extractable(true),
            ],
        )
        .unwrap();
    let (r, wrapped) = raw::wrap(env, s.handle(), KWP, raw::obj(kek), raw::obj(private));
    assert_eq!(r, 0, "wrap a private key");
    let pkcs8 = kek_local()
        .unwrap_with_padding(&wrapped, &mut vec![0u8; 4096])
        .unwrap()
        .to_vec();
    let local = aws_lc_rs::rsa::KeyPair::from_pkcs8(&pkcs8).expect("PKCS#8 from the module");
    let mut sig = vec![0u8; local.public_modulus_len()];
    local
        .sign(
            &aws_lc_rs::signature::RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            DATA,
            &mut sig,
        )
        .unwrap();
    s.verify(&Mechanism::Sha256RsaPkcs, public, DATA, &sig)
        .expect("the unwrapped key is the module's key");
    // The member's KWP blob, wrapped by aws-lc-rs again, unwrapped by the module.
    let mut buf = vec![0u8; 4096];
    let rewrapped = kek_local().wrap_with_padding(&pkcs8, &mut buf).unwrap().to_vec();
    let template = [
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(false),
        Attribute::Sign(true),
    ];
    let back = raw::unwrap(env, s.handle(), KWP, raw::obj(kek), &rewrapped, &template);
    let sig = s.sign(&Mechanism::Sha256RsaPkcs, back, DATA).unwrap();
    s.verify(&Mechanism::Sha256RsaPkcs, public, DATA, &sig).unwrap();
}

fn random_bytes_are_random(env: &Env) {
    let s = env.user();
    let a = s.generate_random_vec(32).unwrap();
    let b = s.generate_random_vec(32).unwrap();
    assert_eq!(a.len(), 32);
    assert_ne!(a, b);
    assert_eq!(s.generate_random_vec(100_000).unwrap().len(), 100_000);
}

fn objects_find_copy_attributes_destroy(env: &Env) {
    let s = env.user();
    let label = b"find-me".to_vec();
    let data = s
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Label(label.clone()),
            Attribute::Value(b"payload".to_vec()),
        ])
        .expect("data object");
    let found = s.find_objects(&[Attribute::Label(label.clone())]).unwrap();
    assert_eq!(found, vec![data], "found by label, with the same handle");
    let uid = bytes_attr(&s, data, AttributeType::UniqueId);
    assert_eq!(uid.len(), 32, "CKA_UNIQUE_ID is the OUID in hex");
    let copy = s
        .copy_object(data, &[Attribute::Label(b"copied".to_vec())])
        .expect("copy");
    assert_ne!(copy, data);
    assert_ne!(bytes_attr(&s, copy, AttributeType::UniqueId), uid);
    assert_eq!(bytes_attr(&s, copy, AttributeType::Value), b"payload");
    s.update_attributes(copy, &[Attribute::Label(b"renamed".to_vec())])
        .unwrap();
    assert_eq!(bytes_attr(&s, copy, AttributeType::Label), b"renamed");
    assert!(env.p11.get_slot_info(env.slot).is_ok());
    let size = s.get_attribute_info(data, &[AttributeType::Value]).unwrap();
    assert!(
        matches!(size[0], cryptoki::object::AttributeInfo::Available(7)),
        "{size:?}"
    );
    s.destroy_object(copy).unwrap();
    s.destroy_object(data).unwrap();
    assert!(s.find_objects(&[Attribute::Label(label)]).unwrap().is_empty());
    // An attribute hahsm does not know matches nothing, without an error.
    let vendor = AttributeType::VendorDefined(0x8000_1234);
    assert!(s
        .find_objects(&[Attribute::VendorDefined((vendor, vec![1]))])
        .unwrap()
        .is_empty());
}

fn session_objects_die_with_their_session(env: &Env) {
    let s1 = env.user();
    let label = b"ephemeral".to_vec();
    let o = s1
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(false),
            Attribute::Label(label.clone()),
        ])
        .unwrap();
    let s2 = env.user();
    assert_eq!(
        s2.find_objects(&[Attribute::Label(label.clone())]).unwrap(),
        vec![o],
        "visible to the application's other sessions"
    );
    drop(s1);
    assert!(s2.find_objects(&[Attribute::Label(label)]).unwrap().is_empty());
}

fn mechanism_info_reports_true_sizes(env: &Env) {
    let list = raw::mechanisms(env);
    // Without the partition's legacy policy (t26_legacy_mechanisms has it on).
    let offered: Vec<u64> = hahsm_token::mechanism::offered(false, false)
        .iter()
        .map(|(m, _)| *m)
        .collect();
    assert_eq!(list, offered);
    let rsa = env
        .p11
        .get_mechanism_info(env.slot, MechanismType::RSA_PKCS_KEY_PAIR_GEN)
        .unwrap();
    assert_eq!((rsa.min_key_size(), rsa.max_key_size()), (2048, 4096));
    assert!(rsa.generate_key_pair());
    let aes = env
        .p11
        .get_mechanism_info(env.slot, MechanismType::AES_GCM)
        .unwrap();
    assert_eq!((aes.min_key_size(), aes.max_key_size()), (16, 32));
    assert!(aes.encrypt() && aes.decrypt() && !aes.sign());
}

fn many_threads_sign_at_once(env: &Env) {
    let s = env.user();
    let (public, private) = ec_pair(&s, P256, false);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                let t = env.user();
                for _ in 0..50 {
                    let sig = t.sign(&Mechanism::EcdsaSha256, private, DATA).unwrap();
                    t.verify(&Mechanism::EcdsaSha256, public, DATA, &sig).unwrap();
                }
            });
        }
    });
}

#[test]
fn every_mechanism_family_through_the_module() {
    let env = Env::new();
    run_checks(
        &env,
        &[
            (
                "rsa_signatures_verified_by_openssl",
                rsa_signatures_verified_by_openssl,
            ),
            (
                "rsa_oaep_and_pkcs1_encryption_cross_checked",
                rsa_oaep_and_pkcs1_encryption_cross_checked,
            ),
            (
                "ecdsa_on_each_curve_verified_by_openssl",
                ecdsa_on_each_curve_verified_by_openssl,
            ),
            ("ed25519_verified_by_openssl", ed25519_verified_by_openssl),
            (
                "ecdh_derives_the_same_secret_with_raw_and_der_points",
                ecdh_derives_the_same_secret_with_raw_and_der_points,
            ),
            (
                "aes_modes_decrypted_by_openssl_and_aws_lc",
                aes_modes_decrypted_by_openssl_and_aws_lc,
            ),
            (
                "multi_part_operations_match_single_part",
                multi_part_operations_match_single_part,
            ),
            (
                "aes_multi_part_streams_whole_blocks",
                aes_multi_part_streams_whole_blocks,
            ),
            (
                "single_part_over_the_limit_is_data_len_range",
                single_part_over_the_limit_is_data_len_range,
            ),
            ("aes_ctr_known_answer", aes_ctr_known_answer),
            ("digests_and_hmac_match_aws_lc", digests_and_hmac_match_aws_lc),
            ("wrapped_keys_unwrap_elsewhere", wrapped_keys_unwrap_elsewhere),
            ("random_bytes_are_random", random_bytes_are_random),
            (
                "objects_find_copy_attributes_destroy",
                objects_find_copy_attributes_destroy,
            ),
            (
                "session_objects_die_with_their_session",
                session_objects_die_with_their_session,
            ),
            (
                "mechanism_info_reports_true_sizes",
                mechanism_info_reports_true_sizes,
            ),
            ("many_threads_sign_at_once", many_threads_sign_at_once),
        ],
    );
    // Token objects of the RSA check are still there; the token keeps working after the checks.
    let _ = rsa_pair(&env.user(), true);
}
