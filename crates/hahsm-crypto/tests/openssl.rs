//! Cross-checks against an independent implementation: the `openssl` command
//! line tool (OpenSSL, not AWS-LC). These tests need `openssl` on the PATH and
//! fail if it is missing. OpenSSL's `enc` has no AEAD modes, so AES-GCM is
//! checked elsewhere (known answers, and pyca/cryptography where present).
mod common;

use common::*;
use hahsm_crypto::*;
use std::path::PathBuf;
use std::process::Command;

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn write(&self, name: &str, data: &[u8]) -> String {
        let p = self.path(name);
        std::fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_string()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    fn p(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }
}

/// Runs openssl; returns (success, stdout+stderr).
fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the `openssl` command is required for these tests (apt-get install openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn openssl_ok(args: &[&str]) -> String {
    let (ok, text) = openssl(args);
    assert!(ok, "openssl {args:?} failed:\n{text}");
    text
}

fn private_pem(kp: &KeyPair) -> String {
    pem::encode(&pem::Pem::new("PRIVATE KEY", kp.private_pkcs8.expose().to_vec()))
}

/// `openssl dgst -verify` of a signature over `data`.
fn dgst_verify(dir: &Dir, md: &str, extra: &[&str], public_pem: &str, data: &[u8], sig: &[u8]) -> bool {
    let pubf = dir.write("pub.pem", public_pem.as_bytes());
    let dataf = dir.write("data.bin", data);
    let sigf = dir.write("sig.bin", sig);
    let mut args = vec!["dgst", md];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-verify", &pubf, "-signature", &sigf, &dataf]);
    let (ok, text) = openssl(&args);
    ok && text.contains("Verified OK")
}

#[test]
fn rsa2048_sha256_pkcs1_signature_verifies_with_openssl() {
    let dir = Dir::new();
    let kp = rsa2048();
    let key = load_private(kp);
    let msg = b"signed by hahsm, checked by openssl";
    let sig = sign(&mech(ck::CKM_SHA256_RSA_PKCS), &key, msg).unwrap();
    assert!(dgst_verify(&dir, "-sha256", &[], &kp.public.to_pem(), msg, &sig));
    let mut bad = sig.clone();
    bad[17] ^= 1;
    assert!(
        !dgst_verify(&dir, "-sha256", &[], &kp.public.to_pem(), msg, &bad),
        "openssl accepted a tampered signature"
    );
    // SHA-1 and SHA-224 go through the FFI DigestInfo path.
    for (m, md) in [
        (ck::CKM_SHA1_RSA_PKCS, "-sha1"),
        (ck::CKM_SHA224_RSA_PKCS, "-sha224"),
    ] {
        let sig = sign(&mech(m), &key, msg).unwrap();
        assert!(dgst_verify(&dir, md, &[], &kp.public.to_pem(), msg, &sig), "{md}");
    }
}

#[test]
fn rsa_pss_with_custom_salt_and_mgf_verifies_with_openssl() {
    let dir = Dir::new();
    let kp = rsa2048();
    let key = load_private(kp);
    let msg = b"pss message";
    for (salt, mgf, mgf_name) in [
        (20u64, ck::CKG_MGF1_SHA1, "sha1"),
        (0, ck::CKG_MGF1_SHA256, "sha256"),
        (64, ck::CKG_MGF1_SHA512, "sha512"),
    ] {
        let m = mech_with(ck::CKM_SHA256_RSA_PKCS_PSS, pss(ck::CKM_SHA256, mgf, salt));
        let sig = sign(&m, &key, msg).unwrap();
        let salt_opt = format!("rsa_pss_saltlen:{salt}");
        let mgf_opt = format!("rsa_mgf1_md:{mgf_name}");
        let opts = [
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            &salt_opt,
            "-sigopt",
            &mgf_opt,
        ];
        assert!(
            dgst_verify(&dir, "-sha256", &opts, &kp.public.to_pem(), msg, &sig),
            "salt {salt} mgf {mgf_name}"
        );
    }
}

#[test]
fn ecdsa_signatures_verify_with_openssl() {
    let dir = Dir::new();
    let msg = b"ecdsa, checked by openssl";
    for (curve, m, md) in [
        (Curve::P256, ck::CKM_ECDSA_SHA256, "-sha256"),
        (Curve::P384, ck::CKM_ECDSA_SHA384, "-sha384"),
        (Curve::P521, ck::CKM_ECDSA_SHA512, "-sha512"),
        (Curve::P256, ck::CKM_ECDSA_SHA1, "-sha1"),
        (Curve::P521, ck::CKM_ECDSA_SHA256, "-sha256"),
    ] {
        let kp = generate_ec(curve).unwrap();
        let key = load_private(&kp);
        let sig = sign(&mech(m), &key, msg).unwrap();
        assert_eq!(sig.len(), 2 * curve.field_len());
        let der = ecdsa_fixed_to_der(&sig);
        assert!(
            dgst_verify(&dir, md, &[], &kp.public.to_pem(), msg, &der),
            "{curve:?} {md}"
        );
        assert!(!dgst_verify(
            &dir,
            md,
            &[],
            &kp.public.to_pem(),
            b"other message",
            &der
        ));
    }
}

#[test]
fn ed25519_signature_verifies_with_openssl() {
    let dir = Dir::new();
    let kp = generate_ed25519().unwrap();
    let key = load_private(&kp);
    let msg = b"pure ed25519";
    let sig = sign(&mech(ck::CKM_EDDSA), &key, msg).unwrap();
    let pubf = dir.write("pub.pem", kp.public.to_pem().as_bytes());
    let dataf = dir.write("data.bin", msg);
    let sigf = dir.write("sig.bin", &sig);
    let text = openssl_ok(&[
        "pkeyutl", "-verify", "-pubin", "-inkey", &pubf, "-rawin", "-in", &dataf, "-sigfile", &sigf,
    ]);
    assert!(text.contains("Signature Verified Successfully"), "{text}");
}

#[test]
fn openssl_signs_with_our_pkcs8_and_we_verify() {
    let dir = Dir::new();
    let msg = b"signed by openssl with hahsm's exported PKCS#8";
    for kp in [rsa2048(), &generate_ec(Curve::P256).unwrap()] {
        let keyf = dir.write("key.pem", private_pem(kp).as_bytes());
        let dataf = dir.write("data.bin", msg);
        let sigf = dir.p("sig.bin");
        openssl_ok(&["dgst", "-sha256", "-sign", &keyf, "-out", &sigf, &dataf]);
        let sig = dir.read("sig.bin");
        let public = load_public(kp);
        match &kp.public {
            PublicKey::Rsa { .. } => verify(&mech(ck::CKM_SHA256_RSA_PKCS), &public, msg, &sig).unwrap(),
            _ => {
                // openssl writes DER; convert to r || s.
                let (_, body) = Der(&sig).next();
                let mut d = Der(body);
                let fixed: Vec<u8> = [d.next().1, d.next().1]
                    .iter()
                    .flat_map(|x| {
                        let x: Vec<u8> = x.iter().copied().skip_while(|b| *b == 0).collect();
                        let mut v = vec![0u8; 32 - x.len()];
                        v.extend(x);
                        v
                    })
                    .collect();
                verify(&mech(ck::CKM_ECDSA_SHA256), &public, msg, &fixed).unwrap();
            }
        }
    }
}

/// Key files as OpenSSL writes them, in each format `import_private_key_pem`
/// accepts.
fn openssl_keys(dir: &Dir) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut gen = |name: &'static str, args: &[&str]| {
        let f = dir.p(&format!("{}.pem", name.replace(' ', "_")));
        let mut a: Vec<&str> = args.to_vec();
        a.extend_from_slice(&["-out", &f]);
        openssl_ok(&a);
        out.push((name, f));
    };
    gen(
        "rsa pkcs8",
        &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    gen("rsa pkcs1", &["genrsa", "-traditional"]);
    gen(
        "ec p384 pkcs8",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
        ],
    );
    gen("ec p256 sec1", &["ecparam", "-name", "prime256v1", "-genkey"]);
    gen("ed25519 pkcs8", &["genpkey", "-algorithm", "ED25519"]);
    out
}

#[test]
fn openssl_generated_pem_keys_import_and_sign_correctly() {
    let dir = Dir::new();
    let msg = b"imported key, signed by hahsm";
    for (name, file) in openssl_keys(&dir) {
        let text = std::fs::read_to_string(&file).unwrap();
        match name {
            "rsa pkcs1" => assert!(text.contains("BEGIN RSA PRIVATE KEY"), "{name}"),
            "ec p256 sec1" => {
                assert!(text.contains("BEGIN EC PARAMETERS") && text.contains("BEGIN EC PRIVATE KEY"))
            }
            _ => assert!(text.contains("BEGIN PRIVATE KEY"), "{name}"),
        }
        let kp = import_private_key_pem(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        // The public half matches what OpenSSL derives from the same file.
        let spki = dir.p("pub.der");
        openssl_ok(&["pkey", "-in", &file, "-pubout", "-outform", "DER", "-out", &spki]);
        assert_eq!(
            PublicKey::from_spki_der(&std::fs::read(&spki).unwrap()).unwrap(),
            kp.public,
            "{name}"
        );
        assert_eq!(
            kp.public.to_spki_der(),
            std::fs::read(&spki).unwrap(),
            "{name}: SPKI encodings differ"
        );
        // A signature made by hahsm with the imported key verifies in OpenSSL.
        let key = load_private(&kp);
        let pub_pem = kp.public.to_pem();
        match &kp.public {
            PublicKey::Rsa { .. } => {
                let sig = sign(&mech(ck::CKM_SHA256_RSA_PKCS), &key, msg).unwrap();
                assert!(dgst_verify(&dir, "-sha256", &[], &pub_pem, msg, &sig), "{name}");
            }
            PublicKey::Ec { curve, .. } => {
                let (m, md) = if *curve == Curve::P384 {
                    (ck::CKM_ECDSA_SHA384, "-sha384")
                } else {
                    (ck::CKM_ECDSA_SHA256, "-sha256")
                };
                let sig = sign(&mech(m), &key, msg).unwrap();
                assert!(
                    dgst_verify(&dir, md, &[], &pub_pem, msg, &ecdsa_fixed_to_der(&sig)),
                    "{name}"
                );
            }
            PublicKey::Ed25519 { .. } => {
                let sig = sign(&mech(ck::CKM_EDDSA), &key, msg).unwrap();
                let pubf = dir.write("pub.pem", pub_pem.as_bytes());
                let dataf = dir.write("data.bin", msg);
                let sigf = dir.write("sig.bin", &sig);
                openssl_ok(&[
                    "pkeyutl", "-verify", "-pubin", "-inkey", &pubf, "-rawin", "-in", &dataf, "-sigfile",
                    &sigf,
                ]);
            }
            // OpenSSL 3.0 makes no ML keys: this loop has none.
            PublicKey::MlDsa { .. } | PublicKey::MlKem { .. } => unreachable!("{name}"),
        }
        // The normalized PKCS#8 reads back in OpenSSL and names the same key.
        let keyf = dir.write("norm.pem", private_pem(&kp).as_bytes());
        let spki2 = dir.p("pub2.der");
        openssl_ok(&["pkey", "-in", &keyf, "-pubout", "-outform", "DER", "-out", &spki2]);
        assert_eq!(
            std::fs::read(&spki2).unwrap(),
            std::fs::read(&spki).unwrap(),
            "{name}"
        );
    }
    // An encrypted key is refused with a clear error.
    let enc = dir.p("enc.pem");
    openssl_ok(&[
        "genpkey",
        "-algorithm",
        "ED25519",
        "-aes-128-cbc",
        "-pass",
        "pass:x",
        "-out",
        &enc,
    ]);
    let err = import_private_key_pem(&std::fs::read_to_string(&enc).unwrap()).unwrap_err();
    assert!(err.to_string().contains("encrypted"), "{err}");
}

fn enc(dir: &Dir, cipher: &str, key: &[u8], iv: Option<&[u8]>, nopad: bool, pt: &[u8]) -> Vec<u8> {
    let inf = dir.write("pt.bin", pt);
    let outf = dir.p("ct.bin");
    let k = hex::encode(key);
    let ivh = iv.map(hex::encode);
    let mut args = vec!["enc", cipher, "-K", &k, "-in", &inf, "-out", &outf];
    if let Some(ivh) = &ivh {
        args.extend_from_slice(&["-iv", ivh]);
    }
    if nopad {
        args.push("-nopad");
    }
    openssl_ok(&args);
    dir.read("ct.bin")
}

#[test]
fn aes_modes_match_openssl_enc() {
    let dir = Dir::new();
    let iv = [0x5cu8; 16];
    let pt32: Vec<u8> = (0u8..32).collect();
    for (key_len, bits) in [(16, "128"), (24, "192"), (32, "256")] {
        let key_bytes: Vec<u8> = (0..key_len as u8).map(|b| b.wrapping_mul(7)).collect();
        let key = aes(&key_bytes);
        let cbc = format!("-aes-{bits}-cbc");
        let ecb = format!("-aes-{bits}-ecb");
        let m = mech_with(ck::CKM_AES_CBC, hahsm_token::MechParams::Iv(iv.to_vec()));
        assert_eq!(
            encrypt(&m, &key, &pt32).unwrap(),
            enc(&dir, &cbc, &key_bytes, Some(&iv), true, &pt32),
            "{cbc}"
        );
        assert_eq!(
            encrypt(&mech(ck::CKM_AES_ECB), &key, &pt32).unwrap(),
            enc(&dir, &ecb, &key_bytes, None, true, &pt32),
            "{ecb}"
        );
        let mp = mech_with(ck::CKM_AES_CBC_PAD, hahsm_token::MechParams::Iv(iv.to_vec()));
        for len in [0usize, 1, 15, 16, 17, 31] {
            let ours = encrypt(&mp, &key, &pt32[..len]).unwrap();
            assert_eq!(
                ours,
                enc(&dir, &cbc, &key_bytes, Some(&iv), false, &pt32[..len]),
                "{cbc} pad len {len}"
            );
            // And openssl decrypts what we encrypted.
            let inf = dir.write("ours.bin", &ours);
            let outf = dir.p("back.bin");
            let k = hex::encode(&key_bytes);
            let ivh = hex::encode(iv);
            openssl_ok(&[
                "enc", "-d", &cbc, "-K", &k, "-iv", &ivh, "-in", &inf, "-out", &outf,
            ]);
            assert_eq!(dir.read("back.bin"), &pt32[..len]);
        }
    }
}

#[test]
fn rsa_oaep_interoperates_with_openssl_pkeyutl() {
    let dir = Dir::new();
    let kp = rsa2048();
    let private = load_private(kp);
    let public = load_public(kp);
    let keyf = dir.write("key.pem", private_pem(kp).as_bytes());
    let pubf = dir.write("pub.pem", kp.public.to_pem().as_bytes());
    let msg = b"wrapped AES key material 0123456";
    // (hash, mgf, label) including the Java-default mixed pair and a label.
    for (h, g, md, mgf_md, label) in [
        (ck::CKM_SHA256, ck::CKG_MGF1_SHA256, "sha256", "sha256", &b""[..]),
        (ck::CKM_SHA256, ck::CKG_MGF1_SHA1, "sha256", "sha1", b"label"),
        (ck::CKM_SHA_1, ck::CKG_MGF1_SHA1, "sha1", "sha1", b""),
        (ck::CKM_SHA512, ck::CKG_MGF1_SHA256, "sha512", "sha256", b"x"),
    ] {
        let m = mech_with(ck::CKM_RSA_PKCS_OAEP, oaep(h, g, label));
        let md_opt = format!("rsa_oaep_md:{md}");
        let mgf_opt = format!("rsa_mgf1_md:{mgf_md}");
        let label_opt = format!("rsa_oaep_label:{}", hex::encode(label));
        let mut opts = vec![
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            &md_opt,
            "-pkeyopt",
            &mgf_opt,
        ];
        if !label.is_empty() {
            opts.extend_from_slice(&["-pkeyopt", &label_opt]);
        }
        // hahsm encrypts, openssl decrypts.
        let ct = encrypt(&m, &public, msg).unwrap();
        let ctf = dir.write("ct.bin", &ct);
        let ptf = dir.p("pt.bin");
        let mut args = vec!["pkeyutl", "-decrypt", "-inkey", &keyf, "-in", &ctf, "-out", &ptf];
        args.extend_from_slice(&opts);
        openssl_ok(&args);
        assert_eq!(dir.read("pt.bin"), msg, "{md}/{mgf_md}");
        // openssl encrypts, hahsm decrypts.
        let inf = dir.write("msg.bin", msg);
        let outf = dir.p("ct2.bin");
        let mut args = vec![
            "pkeyutl", "-encrypt", "-pubin", "-inkey", &pubf, "-in", &inf, "-out", &outf,
        ];
        args.extend_from_slice(&opts);
        openssl_ok(&args);
        assert_eq!(
            decrypt(&m, &private, &dir.read("ct2.bin")).unwrap(),
            msg,
            "{md}/{mgf_md}"
        );
    }
    // PKCS#1 v1.5 encryption both ways.
    let ct = encrypt(&mech(ck::CKM_RSA_PKCS), &public, msg).unwrap();
    let ctf = dir.write("ct.bin", &ct);
    let ptf = dir.p("pt.bin");
    openssl_ok(&["pkeyutl", "-decrypt", "-inkey", &keyf, "-in", &ctf, "-out", &ptf]);
    assert_eq!(dir.read("pt.bin"), msg);
}

#[test]
fn ecdh_matches_openssl_derive() {
    let dir = Dir::new();
    let a = generate_ec(Curve::P256).unwrap();
    let b = generate_ec(Curve::P256).unwrap();
    let af = dir.write("a.pem", private_pem(&a).as_bytes());
    let bf = dir.write("b_pub.pem", b.public.to_pem().as_bytes());
    let zf = dir.p("z.bin");
    openssl_ok(&["pkeyutl", "-derive", "-inkey", &af, "-peerkey", &bf, "-out", &zf]);
    let params = hahsm_token::MechParams::Ecdh {
        kdf: ck::CKD_NULL,
        shared_data: vec![],
        public_data: b.public.ec_point_der().unwrap(),
    };
    let z = ecdh_derive(&load_private(&a), &params, None).unwrap();
    assert_eq!(z.expose(), &dir.read("z.bin")[..]);
}
