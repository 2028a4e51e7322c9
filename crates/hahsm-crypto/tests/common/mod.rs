//! Helpers shared by the integration tests.
#![allow(dead_code)]

use hahsm_crypto::*;
use hahsm_token::{MechParams, Mechanism};
use std::sync::OnceLock;

pub fn mech(m: u64) -> Mechanism {
    Mechanism::new(m)
}

pub fn mech_with(m: u64, p: MechParams) -> Mechanism {
    Mechanism::with(m, p)
}

pub fn pss(hash: u64, mgf: u64, salt_len: u64) -> MechParams {
    MechParams::Pss { hash, mgf, salt_len }
}

pub fn oaep(hash: u64, mgf: u64, label: &[u8]) -> MechParams {
    MechParams::Oaep {
        hash,
        mgf,
        label: label.to_vec(),
    }
}

pub fn gcm(iv: &[u8], aad: &[u8], tag_bits: u32) -> MechParams {
    MechParams::Gcm {
        iv: iv.to_vec(),
        aad: aad.to_vec(),
        tag_bits,
    }
}

/// One RSA-2048 key pair per test binary (generation is slow in debug builds).
pub fn rsa2048() -> &'static KeyPair {
    static K: OnceLock<KeyPair> = OnceLock::new();
    K.get_or_init(|| generate_rsa(2048, None).unwrap())
}

pub fn load_private(kp: &KeyPair) -> LoadedKey {
    let m = match &kp.public {
        PublicKey::Rsa { .. } => KeyMaterial::RsaPrivate(kp.private_pkcs8.clone()),
        PublicKey::Ec { curve, .. } => KeyMaterial::EcPrivate {
            curve: *curve,
            pkcs8: kp.private_pkcs8.clone(),
        },
        PublicKey::Ed25519 { .. } => KeyMaterial::Ed25519Private(kp.private_pkcs8.clone()),
        PublicKey::MlDsa { set, .. } => KeyMaterial::MlDsaPrivate {
            set: *set,
            seed: kp.private_pkcs8.clone(),
        },
        PublicKey::MlKem { set, .. } => KeyMaterial::MlKemPrivate {
            set: *set,
            value: kp.private_pkcs8.clone(),
        },
    };
    LoadedKey::load(m).unwrap()
}

pub fn load_public(kp: &KeyPair) -> LoadedKey {
    LoadedKey::load(KeyMaterial::Public(kp.public.clone())).unwrap()
}

pub fn aes(bytes: &[u8]) -> LoadedKey {
    LoadedKey::load(KeyMaterial::Aes(SecretBytes::new(bytes.to_vec()))).unwrap()
}

pub fn unhex(s: &str) -> Vec<u8> {
    let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(clean).unwrap()
}

/// DER length bytes.
fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        vec![n as u8]
    } else if n < 0x100 {
        vec![0x81, n as u8]
    } else {
        vec![0x82, (n >> 8) as u8, n as u8]
    }
}

fn der_uint(be: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = be.iter().copied().skip_while(|b| *b == 0).collect();
    if v.first().is_none_or(|b| b & 0x80 != 0) {
        v.insert(0, 0);
    }
    let mut out = vec![0x02];
    out.extend(der_len(v.len()));
    out.extend(v);
    out
}

/// Fixed-width `r || s` to the DER `ECDSA-Sig-Value` other tools expect.
pub fn ecdsa_fixed_to_der(sig: &[u8]) -> Vec<u8> {
    let (r, s) = sig.split_at(sig.len() / 2);
    let body = [der_uint(r), der_uint(s)].concat();
    let mut out = vec![0x30];
    out.extend(der_len(body.len()));
    out.extend(body);
    out
}

/// Minimal DER walker for test-side parsing (panics on bad input: tests only).
pub struct Der<'a>(pub &'a [u8]);

impl<'a> Der<'a> {
    pub fn next(&mut self) -> (u8, &'a [u8]) {
        let tag = self.0[0];
        let (len, hdr) = match self.0[1] {
            l if l < 0x80 => (l as usize, 2),
            0x81 => (self.0[2] as usize, 3),
            0x82 => (((self.0[2] as usize) << 8) | self.0[3] as usize, 4),
            other => panic!("length form {other:#x}"),
        };
        let v = &self.0[hdr..hdr + len];
        self.0 = &self.0[hdr + len..];
        (tag, v)
    }
}

/// The eight big-endian components of an RSA key, from its PKCS#8.
pub fn rsa_components(pkcs8: &[u8]) -> Vec<Vec<u8>> {
    let (_, body) = Der(pkcs8).next();
    let mut d = Der(body);
    d.next(); // version
    d.next(); // algorithm
    let (_, pkcs1) = d.next();
    let (_, seq) = Der(pkcs1).next();
    let mut k = Der(seq);
    k.next(); // version
    (0..8)
        .map(|_| k.next().1.iter().copied().skip_while(|b| *b == 0).collect())
        .collect()
}
