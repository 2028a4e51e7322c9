//! The legacy mechanisms (offered by a member only under the partition's
//! `allow-legacy-mechanisms` policy): three-key triple DES, SHA-1 HMAC, MD5
//! and RSA-1024, against known answers and openssl where it has them.
mod common;

use common::*;
use hahsm_crypto::*;
use hahsm_token::mechanism::Usage;
use hahsm_token::MechParams;

const DES3_KEY: &str = "0123456789ABCDEF23456789ABCDEF01456789ABCDEF0123";

fn des3(hex_key: &str) -> LoadedKey {
    LoadedKey::load(KeyMaterial::Des3(SecretBytes::new(unhex(hex_key)))).unwrap()
}

#[test]
fn des3_known_answers_and_round_trips() {
    let key = des3(DES3_KEY);
    // NIST SP 800-67 Rev. 2, Appendix B (ECB, three keys).
    let pt = b"The qufck brown fox jump";
    let ct = encrypt(&mech(ck::CKM_DES3_ECB), &key, pt).unwrap();
    assert_eq!(
        hex::encode(&ct),
        "a826fd8ce53b855fcce21c8112256fe668d5c05dd9b6b900"
    );
    assert_eq!(decrypt(&mech(ck::CKM_DES3_ECB), &key, &ct).unwrap(), pt);
    // CBC and CBC-PAD against openssl enc -des-ede3-cbc (same key and IV).
    let iv = MechParams::Iv(vec![1, 2, 3, 4, 5, 6, 7, 8]);
    for (m, data) in [
        (ck::CKM_DES3_CBC, &b"sixteen bytes!!!"[..]),
        (ck::CKM_DES3_CBC_PAD, b"not a multiple"),
    ] {
        let ct = encrypt(&mech_with(m, iv.clone()), &key, data).unwrap();
        assert_eq!(
            output_len(&mech_with(m, iv.clone()), &key, data.len(), Usage::Encrypt).unwrap(),
            ct.len()
        );
        assert_eq!(decrypt(&mech_with(m, iv.clone()), &key, &ct).unwrap(), data);
        if let Some(want) = openssl_des3_cbc(data, m == ck::CKM_DES3_CBC_PAD) {
            assert_eq!(hex::encode(&ct), want, "{m:#x} differs from openssl");
        }
    }
    // Lengths, IVs and padding are checked.
    assert_eq!(
        encrypt(&mech(ck::CKM_DES3_ECB), &key, b"seven b"),
        Err(TokenError::DataLenRange)
    );
    assert_eq!(
        decrypt(&mech_with(ck::CKM_DES3_CBC_PAD, iv.clone()), &key, &[0; 12]),
        Err(TokenError::EncryptedDataLenRange)
    );
    let mut bad = encrypt(&mech_with(ck::CKM_DES3_CBC_PAD, iv.clone()), &key, b"x").unwrap();
    bad[7] ^= 0x5a;
    assert_eq!(
        decrypt(&mech_with(ck::CKM_DES3_CBC_PAD, iv), &key, &bad),
        Err(TokenError::EncryptedDataInvalid)
    );
    assert!(matches!(
        encrypt(
            &mech_with(ck::CKM_DES3_CBC, MechParams::Iv(vec![0; 16])),
            &key,
            &[0; 8]
        ),
        Err(TokenError::MechanismParamInvalid(_))
    ));
    // An AES key is not a triple-DES key, nor the other way round.
    assert_eq!(
        encrypt(&mech(ck::CKM_DES3_ECB), &aes(&[1; 24]), &[0; 8]),
        Err(TokenError::KeyTypeInconsistent)
    );
    assert_eq!(
        encrypt(&mech(ck::CKM_AES_ECB), &key, &[0; 16]),
        Err(TokenError::KeyTypeInconsistent)
    );
    assert!(LoadedKey::load(KeyMaterial::Des3(SecretBytes::new(vec![1; 16]))).is_err());
}

/// openssl's own triple-DES CBC of `data` under [`DES3_KEY`] and IV 0102…08, if openssl runs.
fn openssl_des3_cbc(data: &[u8], pad: bool) -> Option<String> {
    use std::io::Write;
    let mut args = vec!["enc", "-des-ede3-cbc", "-K", DES3_KEY, "-iv", "0102030405060708"];
    if !pad {
        args.push("-nopad");
    }
    let mut child = std::process::Command::new("openssl")
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(data).ok()?;
    let out = child.wait_with_output().ok()?;
    out.status.success().then(|| hex::encode(out.stdout))
}

#[test]
fn sha1_hmac_rfc_2202_and_md5_rfc_1321() {
    // RFC 2202 test case 2.
    let key = LoadedKey::load(KeyMaterial::GenericSecret(SecretBytes::new(b"Jefe".to_vec()))).unwrap();
    let m = mech(ck::CKM_SHA_1_HMAC);
    let mac = sign(&m, &key, b"what do ya want for nothing?").unwrap();
    assert_eq!(hex::encode(&mac), "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    assert_eq!(output_len(&m, &key, 0, Usage::Sign).unwrap(), 20);
    verify(&m, &key, b"what do ya want for nothing?", &mac).unwrap();
    assert_eq!(
        verify(&m, &key, b"what do ya want for nothing!", &mac),
        Err(TokenError::SignatureInvalid)
    );
    assert_eq!(
        hex::encode(digest(ck::CKM_MD5, b"message digest").unwrap()),
        "f96b697d7cb7938d525a2f31aaf161d0"
    );
}

#[test]
fn rsa_1024_signs_verifies_encrypts_and_decrypts() {
    let kp = generate_rsa(LEGACY_RSA_BITS, None).unwrap();
    let private = load_private(&kp);
    let public = load_public(&kp);
    for m in [
        ck::CKM_SHA256_RSA_PKCS,
        ck::CKM_SHA1_RSA_PKCS,
        ck::CKM_SHA512_RSA_PKCS,
        ck::CKM_RSA_PKCS,
    ] {
        let data = if m == ck::CKM_RSA_PKCS {
            &b"raw DigestInfo bytes"[..]
        } else {
            b"legacy"
        };
        let sig = sign(&mech(m), &private, data).unwrap_or_else(|e| panic!("{m:#x}: {e}"));
        assert_eq!(sig.len(), 128);
        verify(&mech(m), &public, data, &sig).unwrap();
        assert_eq!(
            verify(&mech(m), &public, b"other", &sig),
            Err(TokenError::SignatureInvalid)
        );
    }
    let pss = mech_with(
        ck::CKM_SHA256_RSA_PKCS_PSS,
        common::pss(ck::CKM_SHA256, ck::CKG_MGF1_SHA256, 32),
    );
    let sig = sign(&pss, &private, b"legacy").unwrap();
    verify(&pss, &public, b"legacy", &sig).unwrap();
    // PKCS#1 v1.5 and OAEP encryption, through AWS-LC (aws-lc-rs does not take 1024 bits).
    let ct = encrypt(&mech(ck::CKM_RSA_PKCS), &public, b"secret").unwrap();
    assert_eq!(
        decrypt(&mech(ck::CKM_RSA_PKCS), &private, &ct).unwrap(),
        b"secret"
    );
    let mut bad = ct.clone();
    bad[3] ^= 1;
    assert_eq!(
        decrypt(&mech(ck::CKM_RSA_PKCS), &private, &bad),
        Err(TokenError::EncryptedDataInvalid)
    );
    let oaep = mech_with(
        ck::CKM_RSA_PKCS_OAEP,
        common::oaep(ck::CKM_SHA256, ck::CKG_MGF1_SHA256, b""),
    );
    let ct = encrypt(&oaep, &public, b"secret").unwrap();
    assert_eq!(decrypt(&oaep, &private, &ct).unwrap(), b"secret");
}
