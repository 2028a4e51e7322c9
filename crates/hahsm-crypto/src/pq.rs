//! Post-quantum keys: ML-DSA (FIPS 204) and ML-KEM (FIPS 203).
//!
//! An ML-DSA private key is kept as its 32-byte seed ξ: the smallest form, the
//! one RFC 9881 recommends, and the one every implementation expands to the
//! same key. An ML-KEM private key is kept as the FIPS 203 decapsulation key
//! `dk` (aws-lc-rs 1.19 takes no ML-KEM seed), which embeds the encapsulation
//! key and its hash, so the public half is recovered from it and checked.
//!
//! ML-KEM runs on aws-lc-rs's `kem` module; ML-DSA on `hahsm-awslc-ffi`,
//! because aws-lc-rs signs with an empty context only.
use crate::keys::{KeyPair, PublicKey};
use crate::{ck, SecretBytes, TokenError, TokenResult};
use aws_lc_rs::digest;
use aws_lc_rs::kem;
use hahsm_awslc_ffi as ffi;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The ML-DSA parameter sets (`CKP_ML_DSA_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MlDsaSet {
    P44,
    P65,
    P87,
}

impl MlDsaSet {
    pub const ALL: [MlDsaSet; 3] = [MlDsaSet::P44, MlDsaSet::P65, MlDsaSet::P87];

    /// The set a `CKA_PARAMETER_SET` value names.
    pub fn from_ckp(parameter_set: u64) -> Option<MlDsaSet> {
        MlDsaSet::ALL.into_iter().find(|s| s.ckp() == parameter_set)
    }

    pub fn ckp(self) -> u64 {
        match self {
            MlDsaSet::P44 => ck::CKP_ML_DSA_44,
            MlDsaSet::P65 => ck::CKP_ML_DSA_65,
            MlDsaSet::P87 => ck::CKP_ML_DSA_87,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MlDsaSet::P44 => "ML-DSA-44",
            MlDsaSet::P65 => "ML-DSA-65",
            MlDsaSet::P87 => "ML-DSA-87",
        }
    }

    /// Bytes of the public key (`CKA_VALUE` of the public key object).
    pub fn public_len(self) -> usize {
        self.ffi().public_len()
    }

    pub fn signature_len(self) -> usize {
        self.ffi().signature_len()
    }

    pub(crate) fn ffi(self) -> ffi::MlDsaLevel {
        match self {
            MlDsaSet::P44 => ffi::MlDsaLevel::P44,
            MlDsaSet::P65 => ffi::MlDsaLevel::P65,
            MlDsaSet::P87 => ffi::MlDsaLevel::P87,
        }
    }

    /// OID contents, id-ml-dsa-44/65/87 (2.16.840.1.101.3.4.3.17/18/19).
    pub(crate) fn oid(self) -> &'static [u8] {
        match self {
            MlDsaSet::P44 => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x11],
            MlDsaSet::P65 => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x12],
            MlDsaSet::P87 => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x13],
        }
    }

    pub(crate) fn from_oid(oid: &[u8]) -> Option<MlDsaSet> {
        MlDsaSet::ALL.into_iter().find(|s| s.oid() == oid)
    }
}

/// The ML-KEM parameter sets (`CKP_ML_KEM_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MlKemSet {
    P512,
    P768,
    P1024,
}

impl MlKemSet {
    pub const ALL: [MlKemSet; 3] = [MlKemSet::P512, MlKemSet::P768, MlKemSet::P1024];

    pub fn from_ckp(parameter_set: u64) -> Option<MlKemSet> {
        MlKemSet::ALL.into_iter().find(|s| s.ckp() == parameter_set)
    }

    pub fn ckp(self) -> u64 {
        match self {
            MlKemSet::P512 => ck::CKP_ML_KEM_512,
            MlKemSet::P768 => ck::CKP_ML_KEM_768,
            MlKemSet::P1024 => ck::CKP_ML_KEM_1024,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MlKemSet::P512 => "ML-KEM-512",
            MlKemSet::P768 => "ML-KEM-768",
            MlKemSet::P1024 => "ML-KEM-1024",
        }
    }

    /// The module rank k of FIPS 203 table 2.
    fn k(self) -> usize {
        match self {
            MlKemSet::P512 => 2,
            MlKemSet::P768 => 3,
            MlKemSet::P1024 => 4,
        }
    }

    /// Bytes of the encapsulation key ek: 384k + 32.
    pub fn public_len(self) -> usize {
        384 * self.k() + 32
    }

    /// Bytes of the decapsulation key dk: 768k + 96.
    pub fn private_len(self) -> usize {
        768 * self.k() + 96
    }

    pub fn ciphertext_len(self) -> usize {
        match self {
            MlKemSet::P512 => 768,
            MlKemSet::P768 => 1088,
            MlKemSet::P1024 => 1568,
        }
    }

    pub(crate) fn alg(self) -> &'static kem::Algorithm {
        match self {
            MlKemSet::P512 => &kem::ML_KEM_512,
            MlKemSet::P768 => &kem::ML_KEM_768,
            MlKemSet::P1024 => &kem::ML_KEM_1024,
        }
    }

    /// OID contents, id-alg-ml-kem-512/768/1024 (2.16.840.1.101.3.4.4.1/2/3).
    pub(crate) fn oid(self) -> &'static [u8] {
        match self {
            MlKemSet::P512 => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x04, 0x01],
            MlKemSet::P768 => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x04, 0x02],
            MlKemSet::P1024 => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x04, 0x03],
        }
    }

    pub(crate) fn from_oid(oid: &[u8]) -> Option<MlKemSet> {
        MlKemSet::ALL.into_iter().find(|s| s.oid() == oid)
    }

    /// The encapsulation key inside a decapsulation key, `dk[384k .. 768k+32]`,
    /// if `dk` has the right length and carries the hash H(ek) = SHA3-256(ek)
    /// of that key (the FIPS 203 §7.3 decapsulation key check).
    pub(crate) fn public_of(self, dk: &[u8]) -> Option<&[u8]> {
        if dk.len() != self.private_len() {
            return None;
        }
        let start = 384 * self.k();
        let end = start + self.public_len();
        let ek = dk.get(start..end)?;
        let h = dk.get(end..end + 32)?;
        let ok = digest::digest(&digest::SHA3_256, ek).as_ref() == h;
        ok.then_some(ek)
    }
}

fn internal(what: &str) -> TokenError {
    TokenError::FunctionFailed(format!("{what} failed"))
}

/// Generates an ML-DSA key pair from a fresh random seed.
pub fn generate_ml_dsa(set: MlDsaSet) -> TokenResult<KeyPair> {
    let mut seed = Zeroizing::new([0u8; ffi::ML_DSA_SEED_LEN]);
    aws_lc_rs::rand::fill(&mut seed[..]).map_err(|_| internal("random"))?;
    ml_dsa_private_from_seed(set, &seed[..])
}

/// The ML-DSA key pair of a 32-byte seed ξ (`CKA_SEED`): FIPS 204 key
/// generation is deterministic given ξ. `private_pkcs8` holds the seed.
pub fn ml_dsa_private_from_seed(set: MlDsaSet, seed: &[u8]) -> TokenResult<KeyPair> {
    if seed.len() != ffi::ML_DSA_SEED_LEN {
        return Err(TokenError::AttributeValueInvalid(ck::CKA_SEED));
    }
    let key = ffi::MlDsaKey::from_seed(set.ffi(), seed)
        .map_err(|_| TokenError::AttributeValueInvalid(ck::CKA_SEED))?;
    let value = key.public_key().map_err(|_| internal("ML-DSA key generation"))?;
    Ok(KeyPair {
        public: PublicKey::MlDsa { set, value },
        private_pkcs8: SecretBytes::new(seed.to_vec()),
    })
}

/// Generates an ML-KEM key pair. `private_pkcs8` holds dk.
pub fn generate_ml_kem(set: MlKemSet) -> TokenResult<KeyPair> {
    let dk = kem::DecapsulationKey::generate(set.alg()).map_err(|_| internal("ML-KEM key generation"))?;
    let bytes = dk.key_bytes().map_err(|_| internal("ML-KEM key generation"))?;
    ml_kem_private_from_value(set, bytes.as_ref())
}

/// The ML-KEM key pair of a decapsulation key dk (`CKA_VALUE`), checked as
/// FIPS 203 §7.3 asks: its length, the hash of the encapsulation key it
/// embeds, and that AWS-LC accepts both halves.
pub fn ml_kem_private_from_value(set: MlKemSet, dk: &[u8]) -> TokenResult<KeyPair> {
    let bad = || TokenError::AttributeValueInvalid(ck::CKA_VALUE);
    let ek = set.public_of(dk).ok_or_else(bad)?;
    kem::DecapsulationKey::new(set.alg(), dk).map_err(|_| bad())?;
    let public = PublicKey::MlKem {
        set,
        value: ek.to_vec(),
    };
    public.validate().map_err(|_| bad())?;
    Ok(KeyPair {
        public,
        private_pkcs8: SecretBytes::new(dk.to_vec()),
    })
}

/// A seed-form ML-DSA PKCS#8 private key (RFC 9881: the privateKey OCTET
/// STRING holds `seed [0] IMPLICIT OCTET STRING (SIZE (32))`). The expanded
/// and "both" forms are refused: the seed is what hahsm keeps, and "both"
/// could carry a key that does not match its seed.
pub(crate) fn ml_dsa_from_pkcs8_private(set: MlDsaSet, private_key: &[u8]) -> TokenResult<KeyPair> {
    const TAG_SEED: u8 = 0x80;
    match private_key {
        [TAG_SEED, 32, seed @ ..] if seed.len() == 32 => ml_dsa_private_from_seed(set, seed),
        _ => Err(TokenError::TemplateInconsistent(
            "only the seed form of an ML-DSA private key is supported".into(),
        )),
    }
}

/// The shared secret's length for every ML-KEM set.
pub const ML_KEM_SHARED_SECRET_LEN: usize = 32;

/// The seed-form PKCS#8 `PrivateKeyInfo` of an ML-DSA key (RFC 9881): what
/// `C_WrapKey` wraps, and what [`crate::import_private_key_der`] (so
/// `C_UnwrapKey`) takes back. Built in a buffer that is wiped when dropped.
pub fn ml_dsa_seed_pkcs8(set: MlDsaSet, seed: &SecretBytes) -> TokenResult<SecretBytes> {
    if seed.len() != ffi::ML_DSA_SEED_LEN {
        return Err(TokenError::DeviceError(
            "stored ML-DSA seed has the wrong length".into(),
        ));
    }
    let oid = set.oid();
    // SEQUENCE { INTEGER 0, SEQUENCE { OID }, OCTET STRING { [0] seed } }:
    // every length is below 128, so each is one byte.
    let alg_len = 2 + oid.len();
    let private_len = 2 + seed.len();
    let body_len = 3 + (2 + alg_len) + (2 + private_len);
    let mut out = Zeroizing::new(Vec::with_capacity(2 + body_len));
    out.extend_from_slice(&[0x30, body_len as u8, 0x02, 0x01, 0x00]);
    out.extend_from_slice(&[0x30, alg_len as u8, 0x06, oid.len() as u8]);
    out.extend_from_slice(oid);
    out.extend_from_slice(&[0x04, private_len as u8, 0x80, seed.len() as u8]);
    out.extend_from_slice(seed.expose());
    Ok(SecretBytes::from_zeroizing(out))
}
