//! Legacy mechanisms, deliberately (issue 19, item 5): three-key triple DES,
//! SHA-1 HMAC, MD5 and RSA-1024, through the built module's HA slot of a
//! three-member group.
//!
//! - Without the partition's policy 40 (`allow-legacy-mechanisms`, off by
//!   default) they are not listed, and each is refused with the code the
//!   standard gives: `CKR_MECHANISM_INVALID` for the mechanisms,
//!   `CKR_KEY_SIZE_RANGE` for RSA-1024 (with the reason in the module's
//!   log), `CKR_ATTRIBUTE_VALUE_INVALID` for a triple-DES key object.
//! - With it on every member they are listed, work, agree with openssl, are
//!   replicated (they still work with a member killed), and the RSA lower
//!   bound in `C_GetMechanismInfo` is 1024.
//! - Turned off again, the keys made meanwhile can no longer be used.
mod t20_pkcs11_support;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use hahsm_it::cluster::{Cluster, PARTITION, PIN};
use hahsm_it::run;
use std::path::Path;
use t20_pkcs11_support::module_path;

const LEGACY: [(u64, &str); 6] = [
    (cryptoki_sys::CKM_DES3_KEY_GEN, "DES3-KEY-GEN"),
    (cryptoki_sys::CKM_DES3_ECB, "DES3-ECB"),
    (cryptoki_sys::CKM_DES3_CBC, "DES3-CBC"),
    (cryptoki_sys::CKM_DES3_CBC_PAD, "DES3-CBC-PAD"),
    (cryptoki_sys::CKM_SHA_1_HMAC, "SHA-1-HMAC"),
    (cryptoki_sys::CKM_MD5, "MD5"),
];
const IV: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
const HMAC_KEY: &[u8] = b"a legacy HMAC key of 24 b";

fn code<T: std::fmt::Debug>(r: Result<T, Error>) -> Option<RvError> {
    match r {
        Err(Error::Pkcs11(rv, _)) => Some(rv),
        Err(other) => panic!("not a PKCS#11 error: {other}"),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

fn set_policy(c: &Cluster, value: &str) {
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
                value,
            ],
        )
        .expect_ok();
    }
}

fn rsa_min_bits(p11: &Pkcs11, slot: cryptoki::slot::Slot) -> u64 {
    p11.get_mechanism_info(slot, MechanismType::RSA_PKCS)
        .expect("C_GetMechanismInfo")
        .min_key_size() as u64
}

fn des3_key(s: &Session) -> Result<ObjectHandle, Error> {
    s.generate_key(
        &Mechanism::Des3KeyGen,
        &[
            Attribute::Token(true),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Label(b"t26-des3".to_vec()),
        ],
    )
}

fn rsa1024(s: &Session) -> Result<(ObjectHandle, ObjectHandle), Error> {
    s.generate_key_pair(
        &Mechanism::RsaPkcsKeyPairGen,
        &[
            Attribute::Token(true),
            Attribute::ModulusBits(1024.into()),
            Attribute::Verify(true),
            Attribute::Label(b"t26-rsa1024".to_vec()),
        ],
        &[
            Attribute::Token(true),
            Attribute::Sign(true),
            Attribute::Label(b"t26-rsa1024".to_vec()),
        ],
    )
}

fn hmac_key(s: &Session) -> ObjectHandle {
    s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(true),
        Attribute::Sign(true),
        Attribute::Verify(true),
        Attribute::Value(HMAC_KEY.to_vec()),
        Attribute::Label(b"t26-hmac".to_vec()),
    ])
    .expect("a generic secret for HMAC")
}

fn openssl(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// openssl verifies a SHA-256 PKCS#1 v1.5 signature with the public key
/// built from the token's modulus and exponent.
fn openssl_verifies(dir: &Path, modulus: &[u8], exponent: &[u8], data: &[u8], sig: &[u8]) -> bool {
    let conf = dir.join("rsa1024.asn1");
    std::fs::write(
        &conf,
        format!(
            "asn1=SEQUENCE:key\n[key]\nn=INTEGER:0x{}\ne=INTEGER:0x{}\n",
            hex::encode(modulus),
            hex::encode(exponent)
        ),
    )
    .unwrap();
    let (der, pem) = (dir.join("rsa1024.der"), dir.join("rsa1024.pem"));
    let (sig_file, data_file) = (dir.join("rsa1024.sig"), dir.join("rsa1024.data"));
    std::fs::write(&sig_file, sig).unwrap();
    std::fs::write(&data_file, data).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    openssl(
        &["asn1parse", "-genconf", &s(&conf), "-out", &s(&der), "-noout"],
        b"",
    );
    openssl(
        &[
            "rsa",
            "-RSAPublicKey_in",
            "-inform",
            "DER",
            "-in",
            &s(&der),
            "-pubout",
            "-out",
            &s(&pem),
        ],
        b"",
    );
    run(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            &s(&pem),
            "-signature",
            &s(&sig_file),
            &s(&data_file),
        ],
    )
    .ok
}

/// MD5 of "abc" by pkcs11-tool (cryptoki has no MD5 mechanism) through the
/// module's one slot; the error output when it fails.
fn pkcs11_tool_md5(dir: &Path) -> Result<Vec<u8>, String> {
    let (input, output) = (dir.join("md5.in"), dir.join("md5.out"));
    std::fs::write(&input, b"abc").unwrap();
    let _ = std::fs::remove_file(&output);
    let module = module_path();
    let r = run(
        "pkcs11-tool",
        &[
            "--module",
            module.to_str().unwrap(),
            "--hash",
            "-m",
            "MD5",
            "-i",
            input.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
        ],
    );
    if r.ok {
        std::fs::read(&output).map_err(|e| e.to_string())
    } else {
        Err(format!("{}{}", r.stdout, r.stderr))
    }
}

fn bytes_of(s: &Session, o: ObjectHandle, t: AttributeType) -> Vec<u8> {
    match s.get_attributes(o, &[t]).expect("C_GetAttributeValue").pop() {
        Some(Attribute::Value(v)) | Some(Attribute::CheckValue(v)) => v,
        Some(Attribute::Modulus(v)) | Some(Attribute::PublicExponent(v)) => v,
        other => panic!("{t:?}: {other:?}"),
    }
}

#[test]
fn legacy_mechanisms_only_under_the_partition_policy_through_the_ha_slot() {
    let mut c = Cluster::new(3);
    c.ha_only_conf(None);
    let module_log = c.work.path().join("pkcs11.log");
    std::env::set_var("HAHSM_PKCS11_LOG", &module_log);

    let p11 = Pkcs11::new(module_path()).expect("module loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = p11.get_slots_with_token().expect("slots")[0];
    let s = p11.open_rw_session(slot).expect("session");
    s.login(UserType::User, Some(&AuthPin::new(PIN.to_string().into())))
        .expect("login");

    // Off by default: nothing listed, everything refused.
    let list = t20_pkcs11_support::raw::mechanisms_of(slot);
    for (m, name) in LEGACY {
        assert!(!list.contains(&m), "{name} is listed without the policy");
    }
    assert!(!list.contains(&cryptoki_sys::CKM_DES_ECB), "single DES is listed");
    assert_eq!(rsa_min_bits(&p11, slot), 2048);
    assert_eq!(code(des3_key(&s)), Some(RvError::MechanismInvalid));
    assert_eq!(code(rsa1024(&s)), Some(RvError::KeySizeRange));
    let log = std::fs::read_to_string(&module_log).unwrap_or_default();
    assert!(
        log.contains("CKR_KEY_SIZE_RANGE") && log.contains("allow-legacy-mechanisms"),
        "the module's log does not say why RSA-1024 was refused:\n{log}"
    );
    let md5 = pkcs11_tool_md5(c.work.path());
    assert!(
        md5.is_err(),
        "pkcs11-tool's MD5 worked without the policy: {md5:?}"
    );
    let hmac = hmac_key(&s);
    assert_eq!(
        code(s.sign(&Mechanism::Sha1Hmac, hmac, b"data")),
        Some(RvError::MechanismInvalid)
    );
    let des3_object = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::DES3),
        Attribute::Token(false),
        Attribute::Encrypt(true),
        Attribute::Value(vec![0x01; 24]),
    ];
    assert_eq!(
        code(s.create_object(&des3_object)),
        Some(RvError::AttributeValueInvalid)
    );

    // On every member: listed, and each works and agrees with openssl.
    set_policy(&c, "1");
    let list = t20_pkcs11_support::raw::mechanisms_of(slot);
    for (m, name) in LEGACY {
        assert!(list.contains(&m), "{name} is not listed under the policy");
    }
    assert!(!list.contains(&cryptoki_sys::CKM_DES_ECB), "single DES is listed");
    assert_eq!(rsa_min_bits(&p11, slot), 1024);

    let des3 = des3_key(&s).expect("a triple-DES key under the policy");
    let value = bytes_of(&s, des3, AttributeType::Value);
    assert_eq!(value.len(), 24);
    assert!(value.iter().all(|b| b.count_ones() % 2 == 1), "DES parity");
    let kcv = openssl(
        &["enc", "-des-ede3", "-K", &hex::encode(&value), "-nopad"],
        &[0; 8],
    );
    assert_eq!(bytes_of(&s, des3, AttributeType::CheckValue), kcv[..3].to_vec());
    let plain = b"an older system's message, any length".to_vec();
    let cbc_pad = Mechanism::Des3CbcPad(IV);
    let ct = s
        .encrypt(&cbc_pad, des3, &plain)
        .expect("3DES-CBC-PAD encryption");
    let want = openssl(
        &[
            "enc",
            "-des-ede3-cbc",
            "-K",
            &hex::encode(&value),
            "-iv",
            &hex::encode(IV),
        ],
        &plain,
    );
    assert_eq!(ct, want, "3DES-CBC-PAD differs from openssl");
    assert_eq!(s.decrypt(&cbc_pad, des3, &ct).expect("3DES decryption"), plain);
    // Multi-part: gathered in the module, the same ciphertext at C_EncryptFinal.
    s.encrypt_init(&cbc_pad, des3).expect("C_EncryptInit");
    let mut parts = Vec::new();
    for chunk in plain.chunks(5) {
        parts.extend(s.encrypt_update(chunk).expect("C_EncryptUpdate"));
    }
    parts.extend(s.encrypt_final().expect("C_EncryptFinal"));
    assert_eq!(parts, ct, "multi-part 3DES-CBC-PAD differs from single-part");
    let ecb = s.encrypt(&Mechanism::Des3Ecb, des3, &[0; 16]).expect("3DES-ECB");
    assert_eq!(ecb[..8], kcv[..]);

    let mac = s.sign(&Mechanism::Sha1Hmac, hmac, b"data").expect("SHA-1 HMAC");
    let want = openssl(
        &[
            "mac",
            "-digest",
            "SHA1",
            "-macopt",
            &format!("hexkey:{}", hex::encode(HMAC_KEY)),
            "HMAC",
        ],
        b"data",
    );
    assert_eq!(
        hex::encode(&mac),
        String::from_utf8_lossy(&want).trim().to_ascii_lowercase()
    );
    assert_eq!(
        pkcs11_tool_md5(c.work.path()).map(hex::encode),
        Ok("900150983cd24fb0d6963f7d28e17f72".to_string()),
        "pkcs11-tool's MD5 of abc"
    );

    let (public, private) = rsa1024(&s).expect("RSA-1024 under the policy");
    let modulus = bytes_of(&s, public, AttributeType::Modulus);
    assert_eq!(modulus.len(), 128);
    let exponent = bytes_of(&s, public, AttributeType::PublicExponent);
    let sig = s
        .sign(&Mechanism::Sha256RsaPkcs, private, b"data")
        .expect("RSA-1024 signature");
    assert!(
        openssl_verifies(c.work.path(), &modulus, &exponent, b"data", &sig),
        "openssl does not verify the RSA-1024 signature"
    );

    // Replicated: the keys work with one member gone.
    assert!(
        c.wait_in_sync(0, std::time::Duration::from_secs(30)),
        "the group did not converge"
    );
    c.members[0].kill9();
    for _ in 0..6 {
        s.sign(&Mechanism::Sha256RsaPkcs, private, b"data")
            .expect("RSA-1024 signature with a member down");
        assert_eq!(
            s.decrypt(&cbc_pad, des3, &ct).expect("3DES with a member down"),
            plain
        );
    }
    c.members[0].spawn();

    // Off again: the keys made meanwhile cannot be used.
    set_policy(&c, "0");
    assert!(!t20_pkcs11_support::raw::mechanisms_of(slot).contains(&cryptoki_sys::CKM_DES3_CBC_PAD));
    assert_eq!(
        code(s.decrypt(&cbc_pad, des3, &ct)),
        Some(RvError::MechanismInvalid)
    );
    assert_eq!(
        code(s.sign(&Mechanism::Sha256RsaPkcs, private, b"data")),
        Some(RvError::KeySizeRange)
    );
    drop(s);
    p11.finalize().expect("C_Finalize");
}
