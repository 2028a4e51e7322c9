//! The `raw` baseline: the same operation with aws-lc-rs in this process, on
//! the same number of threads. With every member on this machine's CPU, that
//! is the most any HSM made of this CPU could do.
use super::args::{Curve, Mode};
use super::driver::{Op, Workload};
use anyhow::{anyhow, Result};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::error::Unspecified;
use aws_lc_rs::kem::{Ciphertext, DecapsulationKey, ML_KEM_1024, ML_KEM_512, ML_KEM_768};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    EcdsaKeyPair, EcdsaSigningAlgorithm, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    ECDSA_P384_SHA384_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use aws_lc_rs::signature::{
    PqdsaKeyPair, PqdsaSigningAlgorithm, ML_DSA_44_SIGNING, ML_DSA_65_SIGNING, ML_DSA_87_SIGNING,
};
use aws_lc_rs::{hmac, signature::KeyPair as _};

/// Signing keys are kept as PKCS#8 and parsed once per thread: threads sharing
/// one parsed key contend on its internal locks (RSA blinding), which with
/// more threads than cores would understate what this CPU can do.
enum Key {
    Rsa(Vec<u8>),
    RsaKeygen(KeySize),
    Ecdsa(&'static EcdsaSigningAlgorithm, Vec<u8>),
    Ed25519(Ed25519KeyPair),
    Aes(LessSafeKey),
    Hmac(Box<hmac::Key>),
    Ecdh(PrivateKey, &'static agreement::Algorithm, Vec<u8>),
    MlDsa(PqdsaKeyPair),
    /// The decapsulation key and a ciphertext made to it.
    MlKem(DecapsulationKey, Vec<u8>),
}

fn ml_dsa_alg(set: u16) -> Result<&'static PqdsaSigningAlgorithm> {
    match set {
        44 => Ok(&ML_DSA_44_SIGNING),
        65 => Ok(&ML_DSA_65_SIGNING),
        87 => Ok(&ML_DSA_87_SIGNING),
        _ => Err(anyhow!("ML-DSA-{set} is not offered")),
    }
}

fn ml_kem_alg(set: u16) -> Result<&'static aws_lc_rs::kem::Algorithm> {
    match set {
        512 => Ok(&ML_KEM_512),
        768 => Ok(&ML_KEM_768),
        1024 => Ok(&ML_KEM_1024),
        _ => Err(anyhow!("ML-KEM-{set} is not offered")),
    }
}

pub struct RawWorkload {
    key: Key,
    data: Vec<u8>,
}

fn failed<T>(what: &str) -> impl FnOnce(T) -> anyhow::Error + '_ {
    move |_| anyhow!("aws-lc-rs: {what} failed")
}

fn rsa_size(bits: u32) -> Result<KeySize> {
    match bits {
        2048 => Ok(KeySize::Rsa2048),
        3072 => Ok(KeySize::Rsa3072),
        4096 => Ok(KeySize::Rsa4096),
        _ => Err(anyhow!("RSA-{bits} is not offered")),
    }
}

fn ecdh_alg(c: Curve) -> &'static agreement::Algorithm {
    match c {
        Curve::P256 => &agreement::ECDH_P256,
        Curve::P384 => &agreement::ECDH_P384,
    }
}

/// A peer's public point for ECDH (uncompressed, `04 || x || y`).
pub fn ec_peer_point(c: Curve) -> Result<Vec<u8>> {
    let peer = PrivateKey::generate(ecdh_alg(c)).map_err(failed("EC key generation"))?;
    Ok(peer
        .compute_public_key()
        .map_err(failed("EC public key"))?
        .as_ref()
        .to_vec())
}

impl RawWorkload {
    pub fn new(mode: Mode, bytes: usize) -> Result<RawWorkload> {
        let rng = SystemRandom::new();
        let key = match mode {
            Mode::RsaSign(bits) => {
                let k = RsaKeyPair::generate(rsa_size(bits)?).map_err(failed("RSA key generation"))?;
                let der: Pkcs8V1Der = k.as_der().map_err(failed("RSA key encoding"))?;
                Key::Rsa(der.as_ref().to_vec())
            }
            Mode::RsaKeygen(bits) => Key::RsaKeygen(rsa_size(bits)?),
            Mode::EcdsaSign(c) => {
                let alg = match c {
                    Curve::P256 => &ECDSA_P256_SHA256_FIXED_SIGNING,
                    Curve::P384 => &ECDSA_P384_SHA384_FIXED_SIGNING,
                };
                let k = EcdsaKeyPair::generate(alg).map_err(failed("EC key generation"))?;
                let der = k.to_pkcs8v1().map_err(failed("EC key encoding"))?;
                Key::Ecdsa(alg, der.as_ref().to_vec())
            }
            Mode::EddsaSign => {
                Key::Ed25519(Ed25519KeyPair::generate().map_err(failed("Ed25519 key generation"))?)
            }
            Mode::AesGcm => {
                let mut k = [0u8; 32];
                rng.fill(&mut k).map_err(failed("random"))?;
                Key::Aes(LessSafeKey::new(
                    UnboundKey::new(&AES_256_GCM, &k).map_err(failed("AES key"))?,
                ))
            }
            Mode::Hmac => Key::Hmac(Box::new(
                hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(failed("HMAC key"))?,
            )),
            Mode::Ecdh(c) => Key::Ecdh(
                PrivateKey::generate(ecdh_alg(c)).map_err(failed("EC key generation"))?,
                ecdh_alg(c),
                ec_peer_point(c)?,
            ),
            Mode::MlDsaSign(set) => {
                Key::MlDsa(PqdsaKeyPair::generate(ml_dsa_alg(set)?).map_err(failed("ML-DSA key generation"))?)
            }
            Mode::MlKemDecap(set) => {
                let dk =
                    DecapsulationKey::generate(ml_kem_alg(set)?).map_err(failed("ML-KEM key generation"))?;
                let (ct, _) = dk
                    .encapsulation_key()
                    .map_err(failed("ML-KEM public key"))?
                    .encapsulate()
                    .map_err(failed("ML-KEM encapsulation"))?;
                Key::MlKem(dk, ct.as_ref().to_vec())
            }
        };
        Ok(RawWorkload {
            key,
            data: vec![0x5a; bytes],
        })
    }
}

impl Workload for RawWorkload {
    fn thread_op(&self, thread: usize) -> Result<Op<'_>> {
        let data = &self.data[..];
        let rng = SystemRandom::new();
        Ok(match &self.key {
            Key::Rsa(der) => {
                let k = RsaKeyPair::from_pkcs8(der).map_err(failed("RSA key parsing"))?;
                let mut sig = vec![0u8; k.public_modulus_len()];
                Box::new(move || {
                    k.sign(&RSA_PKCS1_SHA256, &rng, data, &mut sig)
                        .map_err(failed("RSA signing"))
                })
            }
            Key::RsaKeygen(size) => {
                let size = *size;
                Box::new(move || {
                    RsaKeyPair::generate(size).map_err(failed("RSA key generation"))?;
                    Ok(())
                })
            }
            Key::Ecdsa(alg, der) => {
                let k = EcdsaKeyPair::from_pkcs8(alg, der).map_err(failed("EC key parsing"))?;
                Box::new(move || {
                    k.sign(&rng, data).map_err(failed("ECDSA signing"))?;
                    Ok(())
                })
            }
            Key::Ed25519(k) => {
                let _ = k.public_key();
                Box::new(move || {
                    std::hint::black_box(k.sign(data));
                    Ok(())
                })
            }
            Key::Aes(k) => {
                let mut counter = 0u64;
                let mut buf = Vec::with_capacity(data.len());
                Box::new(move || {
                    counter += 1;
                    let mut iv = [0u8; 12];
                    iv[..4].copy_from_slice(&(thread as u32).to_be_bytes());
                    iv[4..].copy_from_slice(&counter.to_be_bytes());
                    buf.clear();
                    buf.extend_from_slice(data);
                    let tag = k
                        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut buf)
                        .map_err(failed("AES-GCM"))?;
                    let _ = std::hint::black_box(tag);
                    Ok(())
                })
            }
            Key::Hmac(k) => Box::new(move || {
                std::hint::black_box(hmac::sign(k, data));
                Ok(())
            }),
            Key::MlDsa(k) => {
                let mut sig = vec![0u8; k.algorithm().signature_len()];
                Box::new(move || {
                    k.sign(data, &mut sig).map_err(failed("ML-DSA signing"))?;
                    Ok(())
                })
            }
            Key::MlKem(dk, ct) => Box::new(move || {
                let secret = dk
                    .decapsulate(Ciphertext::from(&ct[..]))
                    .map_err(failed("ML-KEM decapsulation"))?;
                std::hint::black_box(secret);
                Ok(())
            }),
            Key::Ecdh(k, alg, peer) => Box::new(move || {
                let peer = UnparsedPublicKey::new(alg, &peer[..]);
                agreement::agree(k, peer, Unspecified, |secret| Ok(secret.len())).map_err(failed("ECDH"))?;
                Ok(())
            }),
        })
    }
}
