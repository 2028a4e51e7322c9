//! Mechanisms: the `CKM_*` type plus decoded parameters, and the table of what
//! hahsm supports (for `C_GetMechanismList` and `C_GetMechanismInfo`).
use crate::ck;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mechanism {
    pub mech: u64,
    pub params: MechParams,
}

impl Mechanism {
    pub fn new(mech: u64) -> Self {
        Mechanism {
            mech,
            params: MechParams::None,
        }
    }

    pub fn with(mech: u64, params: MechParams) -> Self {
        Mechanism { mech, params }
    }
}

/// Decoded mechanism parameters. Which variant a mechanism takes is checked where
/// the mechanism runs; a mismatch is `CKR_MECHANISM_PARAM_INVALID`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MechParams {
    None,
    /// CBC and CBC-PAD: a 16-byte IV.
    Iv(Vec<u8>),
    Gcm {
        iv: Vec<u8>,
        aad: Vec<u8>,
        tag_bits: u32,
    },
    Pss {
        hash: u64,
        mgf: u64,
        salt_len: u64,
    },
    Oaep {
        hash: u64,
        mgf: u64,
        label: Vec<u8>,
    },
    Ecdh {
        kdf: u64,
        shared_data: Vec<u8>,
        public_data: Vec<u8>,
    },
    /// `CKM_AES_CTR`: `CK_AES_CTR_PARAMS`, the counter block and how many of
    /// its low bits are the counter (1 to 128).
    Ctr {
        counter_bits: u64,
        cb: Vec<u8>,
    },
    /// A middle part of a multi-part `CKM_AES_CBC_PAD` operation, which only
    /// the PKCS#11 module sends (no application parameter decodes to it):
    /// whole blocks chained from this IV, with no padding added or removed.
    /// The key is checked against `CKM_AES_CBC_PAD`, the mechanism the
    /// application chose. It yields nothing a multi-part `C_DecryptUpdate`
    /// would not.
    IvPart(Vec<u8>),
    /// ML-DSA's `CK_SIGN_ADDITIONAL_CONTEXT` (`CKM_ML_DSA`, `CKM_HASH_ML_DSA_*`):
    /// the hedging choice (`CKH_*`) and the context string (at most 255
    /// bytes; a longer one is refused where the mechanism runs).
    SignContext {
        hedge: u64,
        context: Vec<u8>,
    },
    /// `CKM_HASH_ML_DSA`'s `CK_HASH_SIGN_ADDITIONAL_CONTEXT`: as
    /// [`MechParams::SignContext`], and the hash (`CKM_SHA256` …) the
    /// application already applied to the data it passes.
    HashSignContext {
        hedge: u64,
        context: Vec<u8>,
        hash: u64,
    },
}

/// What `C_GetMechanismInfo` reports: key sizes in bits (bytes for AES and
/// generic secrets, as PKCS#11 says) and `CKF_*` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MechInfo {
    pub min_key: u64,
    pub max_key: u64,
    pub flags: u64,
}

const HW: u64 = ck::CKF_HW;
const SIGN: u64 = ck::CKF_SIGN | ck::CKF_VERIFY | HW;
const CRYPT: u64 = ck::CKF_ENCRYPT | ck::CKF_DECRYPT | HW;
const WRAP: u64 = ck::CKF_WRAP | ck::CKF_UNWRAP | HW;
const KEM: u64 = ck::CKF_ENCAPSULATE | ck::CKF_DECAPSULATE | HW;
const EC_FLAGS: u64 = ck::CKF_EC_F_P | ck::CKF_EC_NAMEDCURVE | ck::CKF_EC_UNCOMPRESS;

/// The mechanisms a partition offers only under its `allow-legacy-mechanisms`
/// policy (docs/pkcs11.md, "Legacy mechanisms"): three-key triple DES, SHA-1
/// HMAC and MD5. RSA keys of [`LEGACY_RSA_MIN_BITS`] bits are the policy's
/// too, with the ordinary RSA mechanisms. Single DES is not offered at all.
pub const LEGACY: &[u64] = &[
    ck::CKM_DES3_KEY_GEN,
    ck::CKM_DES3_ECB,
    ck::CKM_DES3_CBC,
    ck::CKM_DES3_CBC_PAD,
    ck::CKM_SHA_1_HMAC,
    ck::CKM_MD5,
];

/// The smallest RSA modulus under the legacy policy; without it, 2048.
pub const LEGACY_RSA_MIN_BITS: u64 = 1024;
/// The smallest RSA modulus without the legacy policy.
pub const RSA_MIN_BITS: u64 = 2048;

pub fn is_legacy(mech: u64) -> bool {
    LEGACY.contains(&mech)
}

/// The mechanisms a member running AWS-LC's FIPS module refuses, whatever
/// the partition's policies (docs/pkcs11.md, "The FIPS build"): what that
/// module does not approve. Triple DES and MD5 are outside the module's
/// approved services; SHA-1 is not approved for signatures (SP 800-131A
/// Rev. 2, and the module's service indicator), so the SHA-1 signature
/// mechanisms go whole, verification included; the raw RSA permutation is
/// no approved scheme. RSA keys under 2048 bits go too (see [`offered`]).
pub const FIPS_REFUSED: &[u64] = &[
    ck::CKM_DES3_KEY_GEN,
    ck::CKM_DES3_ECB,
    ck::CKM_DES3_CBC,
    ck::CKM_DES3_CBC_PAD,
    ck::CKM_MD5,
    ck::CKM_RSA_X_509,
    ck::CKM_SHA1_RSA_PKCS,
    ck::CKM_SHA1_RSA_PKCS_PSS,
    ck::CKM_ECDSA_SHA1,
];

/// Whether a member running AWS-LC's FIPS module offers `mech` at all.
pub fn fips_approved(mech: u64) -> bool {
    !FIPS_REFUSED.contains(&mech)
}

/// Whether a member running AWS-LC's FIPS module offers `mech` for `usage`:
/// [`fips_approved`], and `CKM_RSA_PKCS` for signatures only, as PKCS#1 v1.5
/// encryption is no approved key transport (SP 800-131A Rev. 2, from 2024).
pub fn fips_approved_for(mech: u64, usage: Usage) -> bool {
    fips_approved(mech) && !(mech == ck::CKM_RSA_PKCS && usage.flag() & (CRYPT | WRAP) != 0)
}

/// What a partition offers: every mechanism, with the legacy ones only when
/// its policy allows them, and the RSA lower bound that goes with it; on a
/// member running the FIPS module (`fips`), only what [`fips_approved_for`]
/// allows, and RSA from 2048 bits under the legacy policy too.
pub fn offered(legacy: bool, fips: bool) -> Vec<(u64, MechInfo)> {
    supported()
        .iter()
        .filter(|(m, _)| legacy || !is_legacy(*m))
        .filter(|(m, _)| !fips || fips_approved(*m))
        .map(|&(m, mut i)| {
            if legacy && !fips && key_type_for(m) == Some(ck::CKK_RSA) {
                i.min_key = LEGACY_RSA_MIN_BITS;
            }
            if fips && m == ck::CKM_RSA_PKCS {
                i.flags &= !((CRYPT | WRAP) & !HW);
            }
            (m, i)
        })
        .collect()
}

/// Every mechanism hahsm implements, the legacy ones included, with its
/// true limits (RSA from 2048 bits: the legacy bound is in [`offered`]).
pub fn supported() -> &'static [(u64, MechInfo)] {
    // Built once: it is consulted on every key use.
    static TABLE: std::sync::OnceLock<Vec<(u64, MechInfo)>> = std::sync::OnceLock::new();
    TABLE.get_or_init(table)
}

fn table() -> Vec<(u64, MechInfo)> {
    let rsa = |flags| MechInfo {
        min_key: 2048,
        max_key: 4096,
        flags,
    };
    let ec = |flags| MechInfo {
        min_key: 256,
        max_key: 521,
        flags: flags | EC_FLAGS,
    };
    let aes = |flags| MechInfo {
        min_key: 16,
        max_key: 32,
        flags,
    };
    let des3 = |flags| MechInfo {
        min_key: 24,
        max_key: 24,
        flags,
    };
    let ml = |flags| MechInfo {
        min_key: 1,
        max_key: 3,
        flags,
    };
    let hmac = MechInfo {
        min_key: 16,
        max_key: 512,
        flags: SIGN,
    };
    let digest = MechInfo {
        min_key: 0,
        max_key: 0,
        flags: ck::CKF_DIGEST | HW,
    };
    vec![
        (ck::CKM_RSA_PKCS_KEY_PAIR_GEN, rsa(ck::CKF_GENERATE_KEY_PAIR | HW)),
        (ck::CKM_RSA_PKCS, rsa(SIGN | CRYPT | WRAP)),
        (ck::CKM_RSA_X_509, rsa(SIGN | CRYPT)),
        (ck::CKM_SHA1_RSA_PKCS, rsa(SIGN)),
        (ck::CKM_SHA224_RSA_PKCS, rsa(SIGN)),
        (ck::CKM_SHA256_RSA_PKCS, rsa(SIGN)),
        (ck::CKM_SHA384_RSA_PKCS, rsa(SIGN)),
        (ck::CKM_SHA512_RSA_PKCS, rsa(SIGN)),
        (ck::CKM_RSA_PKCS_PSS, rsa(SIGN)),
        (ck::CKM_SHA1_RSA_PKCS_PSS, rsa(SIGN)),
        (ck::CKM_SHA224_RSA_PKCS_PSS, rsa(SIGN)),
        (ck::CKM_SHA256_RSA_PKCS_PSS, rsa(SIGN)),
        (ck::CKM_SHA384_RSA_PKCS_PSS, rsa(SIGN)),
        (ck::CKM_SHA512_RSA_PKCS_PSS, rsa(SIGN)),
        (ck::CKM_RSA_PKCS_OAEP, rsa(CRYPT | WRAP)),
        (ck::CKM_EC_KEY_PAIR_GEN, ec(ck::CKF_GENERATE_KEY_PAIR | HW)),
        (ck::CKM_ECDSA, ec(SIGN)),
        (ck::CKM_ECDSA_SHA1, ec(SIGN)),
        (ck::CKM_ECDSA_SHA224, ec(SIGN)),
        (ck::CKM_ECDSA_SHA256, ec(SIGN)),
        (ck::CKM_ECDSA_SHA384, ec(SIGN)),
        (ck::CKM_ECDSA_SHA512, ec(SIGN)),
        (ck::CKM_ECDH1_DERIVE, ec(ck::CKF_DERIVE | HW)),
        (
            ck::CKM_EC_EDWARDS_KEY_PAIR_GEN,
            MechInfo {
                min_key: 255,
                max_key: 255,
                flags: ck::CKF_GENERATE_KEY_PAIR | HW,
            },
        ),
        (
            ck::CKM_EDDSA,
            MechInfo {
                min_key: 255,
                max_key: 255,
                flags: SIGN,
            },
        ),
        // ML-DSA and ML-KEM: the key "sizes" are the parameter sets'
        // CKP_* numbers, as PKCS#11 3.2 has no bit size for them.
        (ck::CKM_ML_DSA_KEY_PAIR_GEN, ml(ck::CKF_GENERATE_KEY_PAIR | HW)),
        (ck::CKM_ML_DSA, ml(SIGN)),
        (ck::CKM_ML_KEM_KEY_PAIR_GEN, ml(ck::CKF_GENERATE_KEY_PAIR | HW)),
        (ck::CKM_ML_KEM, ml(KEM)),
        (ck::CKM_AES_KEY_GEN, aes(ck::CKF_GENERATE | HW)),
        (ck::CKM_AES_ECB, aes(CRYPT)),
        (ck::CKM_AES_CBC, aes(CRYPT)),
        (ck::CKM_AES_CBC_PAD, aes(CRYPT)),
        (ck::CKM_AES_CTR, aes(CRYPT)),
        (ck::CKM_AES_GCM, aes(CRYPT)),
        (ck::CKM_AES_KEY_WRAP, aes(WRAP)),
        (ck::CKM_AES_KEY_WRAP_KWP, aes(WRAP)),
        (
            ck::CKM_GENERIC_SECRET_KEY_GEN,
            MechInfo {
                min_key: 16,
                max_key: 512,
                flags: ck::CKF_GENERATE | HW,
            },
        ),
        (
            ck::CKM_DES3_KEY_GEN,
            MechInfo {
                min_key: 24,
                max_key: 24,
                flags: ck::CKF_GENERATE | HW,
            },
        ),
        (ck::CKM_DES3_ECB, des3(CRYPT)),
        (ck::CKM_DES3_CBC, des3(CRYPT)),
        (ck::CKM_DES3_CBC_PAD, des3(CRYPT)),
        (ck::CKM_SHA_1_HMAC, hmac),
        (ck::CKM_SHA256_HMAC, hmac),
        (ck::CKM_SHA384_HMAC, hmac),
        (ck::CKM_SHA512_HMAC, hmac),
        (ck::CKM_MD5, digest),
        (ck::CKM_SHA_1, digest),
        (ck::CKM_SHA224, digest),
        (ck::CKM_SHA256, digest),
        (ck::CKM_SHA384, digest),
        (ck::CKM_SHA512, digest),
    ]
}

pub fn info(mech: u64) -> Option<MechInfo> {
    supported().iter().find(|(m, _)| *m == mech).map(|(_, i)| *i)
}

/// The `CKA_*` usage flag a mechanism needs on its key for an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Sign,
    Verify,
    Encrypt,
    Decrypt,
    Wrap,
    Unwrap,
    Derive,
    Encapsulate,
    Decapsulate,
}

impl Usage {
    pub fn attribute(self) -> u64 {
        match self {
            Usage::Sign => ck::CKA_SIGN,
            Usage::Verify => ck::CKA_VERIFY,
            Usage::Encrypt => ck::CKA_ENCRYPT,
            Usage::Decrypt => ck::CKA_DECRYPT,
            Usage::Wrap => ck::CKA_WRAP,
            Usage::Unwrap => ck::CKA_UNWRAP,
            Usage::Derive => ck::CKA_DERIVE,
            Usage::Encapsulate => ck::CKA_ENCAPSULATE,
            Usage::Decapsulate => ck::CKA_DECAPSULATE,
        }
    }

    fn flag(self) -> u64 {
        match self {
            Usage::Sign => ck::CKF_SIGN,
            Usage::Verify => ck::CKF_VERIFY,
            Usage::Encrypt => ck::CKF_ENCRYPT,
            Usage::Decrypt => ck::CKF_DECRYPT,
            Usage::Wrap => ck::CKF_WRAP,
            Usage::Unwrap => ck::CKF_UNWRAP,
            Usage::Derive => ck::CKF_DERIVE,
            Usage::Encapsulate => ck::CKF_ENCAPSULATE,
            Usage::Decapsulate => ck::CKF_DECAPSULATE,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Usage::Sign => "sign",
            Usage::Verify => "verify",
            Usage::Encrypt => "encrypt",
            Usage::Decrypt => "decrypt",
            Usage::Wrap => "wrap",
            Usage::Unwrap => "unwrap",
            Usage::Derive => "derive",
            Usage::Encapsulate => "encapsulate",
            Usage::Decapsulate => "decapsulate",
        }
    }
}

/// Whether the mechanism can be used for this operation at all.
pub fn supports(mech: u64, usage: Usage) -> bool {
    info(mech).is_some_and(|i| i.flags & usage.flag() != 0)
}

/// The key type a mechanism works with.
pub fn key_type_for(mech: u64) -> Option<u64> {
    Some(match mech {
        ck::CKM_RSA_PKCS_KEY_PAIR_GEN
        | ck::CKM_RSA_PKCS
        | ck::CKM_RSA_X_509
        | ck::CKM_SHA1_RSA_PKCS
        | ck::CKM_SHA224_RSA_PKCS
        | ck::CKM_SHA256_RSA_PKCS
        | ck::CKM_SHA384_RSA_PKCS
        | ck::CKM_SHA512_RSA_PKCS
        | ck::CKM_RSA_PKCS_PSS
        | ck::CKM_SHA1_RSA_PKCS_PSS
        | ck::CKM_SHA224_RSA_PKCS_PSS
        | ck::CKM_SHA256_RSA_PKCS_PSS
        | ck::CKM_SHA384_RSA_PKCS_PSS
        | ck::CKM_SHA512_RSA_PKCS_PSS
        | ck::CKM_RSA_PKCS_OAEP => ck::CKK_RSA,
        ck::CKM_EC_KEY_PAIR_GEN
        | ck::CKM_ECDSA
        | ck::CKM_ECDSA_SHA1
        | ck::CKM_ECDSA_SHA224
        | ck::CKM_ECDSA_SHA256
        | ck::CKM_ECDSA_SHA384
        | ck::CKM_ECDSA_SHA512
        | ck::CKM_ECDH1_DERIVE => ck::CKK_EC,
        ck::CKM_EC_EDWARDS_KEY_PAIR_GEN | ck::CKM_EDDSA => ck::CKK_EC_EDWARDS,
        ck::CKM_ML_DSA_KEY_PAIR_GEN | ck::CKM_ML_DSA => ck::CKK_ML_DSA,
        ck::CKM_ML_KEM_KEY_PAIR_GEN | ck::CKM_ML_KEM => ck::CKK_ML_KEM,
        ck::CKM_AES_KEY_GEN
        | ck::CKM_AES_ECB
        | ck::CKM_AES_CBC
        | ck::CKM_AES_CBC_PAD
        | ck::CKM_AES_CTR
        | ck::CKM_AES_GCM
        | ck::CKM_AES_KEY_WRAP
        | ck::CKM_AES_KEY_WRAP_KWP => ck::CKK_AES,
        ck::CKM_DES3_KEY_GEN | ck::CKM_DES3_ECB | ck::CKM_DES3_CBC | ck::CKM_DES3_CBC_PAD => ck::CKK_DES3,
        ck::CKM_GENERIC_SECRET_KEY_GEN
        | ck::CKM_SHA_1_HMAC
        | ck::CKM_SHA256_HMAC
        | ck::CKM_SHA384_HMAC
        | ck::CKM_SHA512_HMAC => ck::CKK_GENERIC_SECRET,
        _ => return None,
    })
}

/// Short names used by the CLI (`--mech`), matching pkcs11-tool where it has one.
pub fn by_name(name: &str) -> Option<u64> {
    let n = name.to_ascii_uppercase().replace('_', "-");
    Some(match n.as_str() {
        "RSA-PKCS" => ck::CKM_RSA_PKCS,
        "RSA-X-509" => ck::CKM_RSA_X_509,
        "SHA1-RSA-PKCS" => ck::CKM_SHA1_RSA_PKCS,
        "SHA224-RSA-PKCS" => ck::CKM_SHA224_RSA_PKCS,
        "SHA256-RSA-PKCS" => ck::CKM_SHA256_RSA_PKCS,
        "SHA384-RSA-PKCS" => ck::CKM_SHA384_RSA_PKCS,
        "SHA512-RSA-PKCS" => ck::CKM_SHA512_RSA_PKCS,
        "RSA-PKCS-PSS" => ck::CKM_RSA_PKCS_PSS,
        "SHA1-RSA-PKCS-PSS" => ck::CKM_SHA1_RSA_PKCS_PSS,
        "SHA224-RSA-PKCS-PSS" => ck::CKM_SHA224_RSA_PKCS_PSS,
        "SHA256-RSA-PKCS-PSS" => ck::CKM_SHA256_RSA_PKCS_PSS,
        "SHA384-RSA-PKCS-PSS" => ck::CKM_SHA384_RSA_PKCS_PSS,
        "SHA512-RSA-PKCS-PSS" => ck::CKM_SHA512_RSA_PKCS_PSS,
        "RSA-PKCS-OAEP" => ck::CKM_RSA_PKCS_OAEP,
        "ECDSA" => ck::CKM_ECDSA,
        "ECDSA-SHA1" => ck::CKM_ECDSA_SHA1,
        "ECDSA-SHA224" => ck::CKM_ECDSA_SHA224,
        "ECDSA-SHA256" => ck::CKM_ECDSA_SHA256,
        "ECDSA-SHA384" => ck::CKM_ECDSA_SHA384,
        "ECDSA-SHA512" => ck::CKM_ECDSA_SHA512,
        "ECDH1-DERIVE" => ck::CKM_ECDH1_DERIVE,
        "EDDSA" => ck::CKM_EDDSA,
        "ML-DSA" => ck::CKM_ML_DSA,
        "ML-KEM" => ck::CKM_ML_KEM,
        "AES-ECB" => ck::CKM_AES_ECB,
        "AES-CBC" => ck::CKM_AES_CBC,
        "AES-CBC-PAD" => ck::CKM_AES_CBC_PAD,
        "AES-CTR" => ck::CKM_AES_CTR,
        "AES-GCM" => ck::CKM_AES_GCM,
        "AES-KEY-WRAP" => ck::CKM_AES_KEY_WRAP,
        "AES-KEY-WRAP-PAD" | "AES-KEY-WRAP-KWP" => ck::CKM_AES_KEY_WRAP_KWP,
        "DES3-ECB" => ck::CKM_DES3_ECB,
        "DES3-CBC" => ck::CKM_DES3_CBC,
        "DES3-CBC-PAD" => ck::CKM_DES3_CBC_PAD,
        "SHA-1-HMAC" | "SHA1-HMAC" => ck::CKM_SHA_1_HMAC,
        "MD5" => ck::CKM_MD5,
        "SHA256-HMAC" => ck::CKM_SHA256_HMAC,
        "SHA384-HMAC" => ck::CKM_SHA384_HMAC,
        "SHA512-HMAC" => ck::CKM_SHA512_HMAC,
        "SHA-1" | "SHA1" => ck::CKM_SHA_1,
        "SHA224" => ck::CKM_SHA224,
        "SHA256" => ck::CKM_SHA256,
        "SHA384" => ck::CKM_SHA384,
        "SHA512" => ck::CKM_SHA512,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_mechanism_has_a_key_type_or_is_a_digest() {
        for &(mech, info) in supported() {
            assert!(
                key_type_for(mech).is_some() || info.flags & ck::CKF_DIGEST != 0,
                "{mech:#x}"
            );
        }
    }

    #[test]
    fn legacy_mechanisms_are_offered_only_under_the_policy() {
        let plain = offered(false, false);
        let legacy = offered(true, false);
        for m in LEGACY {
            assert!(info(*m).is_some(), "{m:#x} is implemented");
            assert!(
                !plain.iter().any(|(x, _)| x == m),
                "{m:#x} offered without the policy"
            );
            assert!(
                legacy.iter().any(|(x, _)| x == m),
                "{m:#x} not offered under the policy"
            );
        }
        assert!(!plain
            .iter()
            .any(|(m, _)| *m == ck::CKM_DES_ECB || *m == ck::CKM_DES_KEY_GEN));
        assert!(!legacy
            .iter()
            .any(|(m, _)| *m == ck::CKM_DES_ECB || *m == ck::CKM_DES_KEY_GEN));
        let rsa_min =
            |t: &[(u64, MechInfo)]| t.iter().find(|(m, _)| *m == ck::CKM_RSA_PKCS).unwrap().1.min_key;
        assert_eq!((rsa_min(&plain), rsa_min(&legacy)), (2048, 1024));
        assert_eq!(plain.len() + LEGACY.len(), legacy.len());
    }

    #[test]
    fn the_fips_build_offers_only_what_the_fips_module_approves() {
        // The non-FIPS lists are untouched by the flag's existence.
        assert_eq!(offered(true, false).len(), supported().len());
        for legacy in [false, true] {
            let fips = offered(legacy, true);
            for refused in FIPS_REFUSED {
                assert!(info(*refused).is_some(), "{refused:#x} is implemented");
                assert!(
                    !fips.iter().any(|(m, _)| m == refused),
                    "{refused:#x} offered in FIPS mode (legacy policy {legacy})"
                );
            }
            let get = |mech| fips.iter().find(|(m, _)| *m == mech).map(|(_, i)| *i);
            // RSA stays at 2048 bits even under the legacy policy.
            assert_eq!(get(ck::CKM_RSA_PKCS_KEY_PAIR_GEN).map(|i| i.min_key), Some(2048));
            // CKM_RSA_PKCS signs, but no longer encrypts or wraps.
            let rsa = get(ck::CKM_RSA_PKCS).expect("CKM_RSA_PKCS signs in FIPS mode");
            assert_eq!(rsa.flags & (ck::CKF_ENCRYPT | ck::CKF_WRAP | ck::CKF_UNWRAP), 0);
            assert_ne!(rsa.flags & ck::CKF_SIGN, 0);
            // What the FIPS module approves stays: SHA-2 signatures, EdDSA,
            // ML-DSA, ML-KEM, AES, SHA-1 digests, and SHA-1 HMAC under the policy.
            for kept in [
                ck::CKM_SHA256_RSA_PKCS,
                ck::CKM_RSA_PKCS_OAEP,
                ck::CKM_ECDSA,
                ck::CKM_EDDSA,
                ck::CKM_ML_DSA,
                ck::CKM_ML_KEM,
                ck::CKM_AES_GCM,
                ck::CKM_SHA_1,
            ] {
                assert!(get(kept).is_some(), "{kept:#x} refused in FIPS mode");
            }
            assert_eq!(get(ck::CKM_SHA_1_HMAC).is_some(), legacy);
        }
        assert!(!fips_approved_for(ck::CKM_RSA_PKCS, Usage::Decrypt));
        assert!(!fips_approved_for(ck::CKM_RSA_PKCS, Usage::Unwrap));
        assert!(fips_approved_for(ck::CKM_RSA_PKCS, Usage::Sign));
        assert!(!fips_approved_for(ck::CKM_MD5, Usage::Sign));
        assert!(fips_approved_for(ck::CKM_RSA_PKCS_OAEP, Usage::Unwrap));
    }

    #[test]
    fn usage_checks_follow_flags() {
        assert!(supports(ck::CKM_ECDSA, Usage::Sign));
        assert!(!supports(ck::CKM_ECDSA, Usage::Encrypt));
        assert!(supports(ck::CKM_AES_KEY_WRAP_KWP, Usage::Unwrap));
        assert!(!supports(0xffff_0000, Usage::Sign));
    }
}
