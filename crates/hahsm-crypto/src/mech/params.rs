//! What every mechanism shares: hashes and DigestInfo, the classification
//! of the RSA, ECDSA, HMAC and AES mechanisms, and their parameters.
use crate::loaded::{Inner, LoadedKey};
use crate::{ck, TokenError, TokenResult};
use aws_lc_rs::aead;
use aws_lc_rs::cipher::{self, UnboundCipherKey};
use aws_lc_rs::digest;
use aws_lc_rs::hmac;
use aws_lc_rs::rsa as awsrsa;
use hahsm_awslc_ffi::{self as ffi, Hash};
use hahsm_token::{MechParams, Mechanism};
use zeroize::Zeroizing;

pub(crate) fn hash_from_ckm(m: u64) -> Option<Hash> {
    Some(match m {
        ck::CKM_SHA_1 => Hash::Sha1,
        ck::CKM_SHA224 => Hash::Sha224,
        ck::CKM_SHA256 => Hash::Sha256,
        ck::CKM_SHA384 => Hash::Sha384,
        ck::CKM_SHA512 => Hash::Sha512,
        _ => return None,
    })
}

pub(super) fn hash_from_mgf(g: u64) -> Option<Hash> {
    Some(match g {
        ck::CKG_MGF1_SHA1 => Hash::Sha1,
        ck::CKG_MGF1_SHA224 => Hash::Sha224,
        ck::CKG_MGF1_SHA256 => Hash::Sha256,
        ck::CKG_MGF1_SHA384 => Hash::Sha384,
        ck::CKG_MGF1_SHA512 => Hash::Sha512,
        _ => return None,
    })
}

pub(crate) fn digest_algorithm(h: Hash) -> &'static digest::Algorithm {
    match h {
        Hash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        Hash::Sha224 => &digest::SHA224,
        Hash::Sha256 => &digest::SHA256,
        Hash::Sha384 => &digest::SHA384,
        Hash::Sha512 => &digest::SHA512,
    }
}

pub(super) fn hash(h: Hash, data: &[u8]) -> digest::Digest {
    digest::digest(digest_algorithm(h), data)
}

/// The DER `DigestInfo` prefix (RFC 8017 section 9.2, note 1) for each hash.
pub(super) fn digest_info_prefix(h: Hash) -> &'static [u8] {
    match h {
        Hash::Sha1 => &[
            0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14,
        ],
        Hash::Sha224 => &[
            0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04, 0x05,
            0x00, 0x04, 0x1c,
        ],
        Hash::Sha256 => &[
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
            0x00, 0x04, 0x20,
        ],
        Hash::Sha384 => &[
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
            0x00, 0x04, 0x30,
        ],
        Hash::Sha512 => &[
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05,
            0x00, 0x04, 0x40,
        ],
    }
}

/// `DigestInfo` for the hash of `data`: the input `CKM_RSA_PKCS` signs.
pub(crate) fn digest_info(h: Hash, data: &[u8]) -> Vec<u8> {
    let d = hash(h, data);
    [digest_info_prefix(h), d.as_ref()].concat()
}

pub(super) fn no_params(mech: &Mechanism) -> TokenResult<()> {
    match mech.params {
        MechParams::None => Ok(()),
        _ => Err(TokenError::MechanismParamInvalid(format!(
            "mechanism {:#x} takes no parameters",
            mech.mech
        ))),
    }
}

pub(super) fn param_err(msg: &str) -> TokenError {
    TokenError::MechanismParamInvalid(msg.to_string())
}

pub(super) fn left_pad(data: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(vec![0u8; len]);
    let start = len.saturating_sub(data.len());
    out[start..].copy_from_slice(&data[data.len().saturating_sub(len)..]);
    out
}

#[derive(Clone, Copy)]
pub(super) enum RsaSig {
    /// `CKM_RSA_PKCS`: PKCS#1 v1.5 over a caller-supplied DigestInfo.
    Pkcs1Raw,
    /// `CKM_RSA_X_509`: the raw permutation.
    X509,
    /// `CKM_SHA*_RSA_PKCS`.
    Pkcs1(Hash),
    /// `CKM_RSA_PKCS_PSS`: PSS over a caller-supplied digest.
    PssRaw,
    /// `CKM_SHA*_RSA_PKCS_PSS`.
    Pss(Hash),
}

pub(super) fn rsa_sig_mech(m: u64) -> Option<RsaSig> {
    Some(match m {
        ck::CKM_RSA_PKCS => RsaSig::Pkcs1Raw,
        ck::CKM_RSA_X_509 => RsaSig::X509,
        ck::CKM_SHA1_RSA_PKCS => RsaSig::Pkcs1(Hash::Sha1),
        ck::CKM_SHA224_RSA_PKCS => RsaSig::Pkcs1(Hash::Sha224),
        ck::CKM_SHA256_RSA_PKCS => RsaSig::Pkcs1(Hash::Sha256),
        ck::CKM_SHA384_RSA_PKCS => RsaSig::Pkcs1(Hash::Sha384),
        ck::CKM_SHA512_RSA_PKCS => RsaSig::Pkcs1(Hash::Sha512),
        ck::CKM_RSA_PKCS_PSS => RsaSig::PssRaw,
        ck::CKM_SHA1_RSA_PKCS_PSS => RsaSig::Pss(Hash::Sha1),
        ck::CKM_SHA224_RSA_PKCS_PSS => RsaSig::Pss(Hash::Sha224),
        ck::CKM_SHA256_RSA_PKCS_PSS => RsaSig::Pss(Hash::Sha256),
        ck::CKM_SHA384_RSA_PKCS_PSS => RsaSig::Pss(Hash::Sha384),
        ck::CKM_SHA512_RSA_PKCS_PSS => RsaSig::Pss(Hash::Sha512),
        _ => return None,
    })
}

/// `None` is `CKM_ECDSA` (the input is already a digest).
pub(super) fn ecdsa_mech(m: u64) -> Option<Option<Hash>> {
    Some(match m {
        ck::CKM_ECDSA => None,
        ck::CKM_ECDSA_SHA1 => Some(Hash::Sha1),
        ck::CKM_ECDSA_SHA224 => Some(Hash::Sha224),
        ck::CKM_ECDSA_SHA256 => Some(Hash::Sha256),
        ck::CKM_ECDSA_SHA384 => Some(Hash::Sha384),
        ck::CKM_ECDSA_SHA512 => Some(Hash::Sha512),
        _ => return None,
    })
}

pub(super) fn hmac_algorithm(m: u64) -> Option<hmac::Algorithm> {
    Some(match m {
        ck::CKM_SHA_1_HMAC => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        ck::CKM_SHA256_HMAC => hmac::HMAC_SHA256,
        ck::CKM_SHA384_HMAC => hmac::HMAC_SHA384,
        ck::CKM_SHA512_HMAC => hmac::HMAC_SHA512,
        _ => return None,
    })
}

/// The RSA key behind any RSA `LoadedKey`, for public-key operations.
pub(super) struct RsaView<'a> {
    pub(super) size: usize,
    pub(super) modulus_bits: u64,
    pub(super) key: &'a LoadedKey,
}

impl<'a> RsaView<'a> {
    pub(super) fn of(key: &'a LoadedKey) -> TokenResult<RsaView<'a>> {
        let (size, public) = match &key.inner {
            Inner::RsaPrivate(k) => (k.size, &k.public),
            Inner::RsaPublic(k) => (k.size, &k.public),
            _ => return Err(TokenError::KeyTypeInconsistent),
        };
        Ok(RsaView {
            size,
            modulus_bits: public.modulus_bits().unwrap_or(0),
            key,
        })
    }

    pub(super) fn raw(&self) -> TokenResult<&'a ffi::RsaKey> {
        match &self.key.inner {
            Inner::RsaPrivate(k) => k.raw(),
            Inner::RsaPublic(k) => Ok(&k.raw),
            _ => Err(TokenError::KeyTypeInconsistent),
        }
    }

    pub(super) fn encrypter(&self) -> TokenResult<&'a awsrsa::PublicEncryptingKey> {
        match &self.key.inner {
            Inner::RsaPrivate(k) => k.encrypter(),
            Inner::RsaPublic(k) => k.encrypter(),
            _ => Err(TokenError::KeyTypeInconsistent),
        }
    }

    /// Checks PSS parameters against the mechanism and the key.
    pub(super) fn pss_params(
        &self,
        mech: &Mechanism,
        bound: Option<Hash>,
    ) -> TokenResult<(Hash, Hash, usize)> {
        let MechParams::Pss { hash, mgf, salt_len } = mech.params else {
            return Err(param_err("RSA-PSS needs CK_RSA_PKCS_PSS_PARAMS"));
        };
        let h = hash_from_ckm(hash).ok_or_else(|| param_err("unsupported PSS hash"))?;
        if bound.is_some_and(|b| b != h) {
            return Err(param_err("the PSS hash must match the mechanism's hash"));
        }
        let g = hash_from_mgf(mgf).ok_or_else(|| param_err("unsupported PSS MGF"))?;
        let salt = usize::try_from(salt_len).map_err(|_| param_err("PSS salt length is too large"))?;
        // RFC 8017 section 9.1.1: emLen >= hLen + sLen + 2, emLen = ceil((modBits - 1) / 8).
        let em_len = usize::try_from(self.modulus_bits.saturating_sub(1).div_ceil(8)).unwrap_or(0);
        if salt.saturating_add(h.output_len()).saturating_add(2) > em_len {
            return Err(param_err("PSS salt length is too large for the key"));
        }
        Ok((h, g, salt))
    }
}

pub(super) fn oaep_params(mech: &Mechanism) -> TokenResult<(Hash, Hash, &[u8])> {
    let MechParams::Oaep { hash, mgf, label } = &mech.params else {
        return Err(param_err("RSA-OAEP needs CK_RSA_PKCS_OAEP_PARAMS"));
    };
    let h = hash_from_ckm(*hash).ok_or_else(|| param_err("unsupported OAEP hash"))?;
    let g = hash_from_mgf(*mgf).ok_or_else(|| param_err("unsupported OAEP MGF"))?;
    Ok((h, g, label))
}

/// The aws-lc-rs OAEP algorithm, when the hash and MGF1 hash agree.
pub(super) fn aws_oaep(h: Hash, g: Hash) -> Option<&'static awsrsa::OaepAlgorithm> {
    match (h, g) {
        (Hash::Sha1, Hash::Sha1) => Some(&awsrsa::OAEP_SHA1_MGF1SHA1),
        (Hash::Sha256, Hash::Sha256) => Some(&awsrsa::OAEP_SHA256_MGF1SHA256),
        (Hash::Sha384, Hash::Sha384) => Some(&awsrsa::OAEP_SHA384_MGF1SHA384),
        (Hash::Sha512, Hash::Sha512) => Some(&awsrsa::OAEP_SHA512_MGF1SHA512),
        _ => None,
    }
}

pub(super) fn oaep_max_plaintext(size: usize, h: Hash) -> usize {
    size.saturating_sub(2 * h.output_len() + 2)
}

/// The secret value of an AES key.
pub(super) fn aes_key(key: &LoadedKey) -> TokenResult<&[u8]> {
    match &key.inner {
        Inner::Secret { key_type, bytes } if *key_type == ck::CKK_AES => Ok(bytes.expose()),
        _ => Err(TokenError::KeyTypeInconsistent),
    }
}

pub(super) fn des3_key(key: &LoadedKey) -> TokenResult<&[u8]> {
    match &key.inner {
        Inner::Secret { key_type, bytes } if *key_type == ck::CKK_DES3 => Ok(bytes.expose()),
        _ => Err(TokenError::KeyTypeInconsistent),
    }
}

/// The triple-DES mode of a `CKM_DES3_*` mechanism, with its 8-byte IV.
pub(super) fn des3_mode(mech: &Mechanism) -> TokenResult<ffi::Des3Mode<'_>> {
    let iv = || match &mech.params {
        MechParams::Iv(iv) if iv.len() == 8 => Ok(iv.as_slice()),
        _ => Err(param_err("triple-DES CBC needs an 8-byte IV")),
    };
    match mech.mech {
        ck::CKM_DES3_ECB => {
            no_params(mech)?;
            Ok(ffi::Des3Mode::Ecb)
        }
        ck::CKM_DES3_CBC => Ok(ffi::Des3Mode::Cbc(iv()?)),
        _ => Ok(ffi::Des3Mode::CbcPad(iv()?)),
    }
}

pub(super) fn aes_cipher(key: &[u8]) -> TokenResult<&'static cipher::Algorithm> {
    match key.len() {
        16 => Ok(&cipher::AES_128),
        24 => Ok(&cipher::AES_192),
        32 => Ok(&cipher::AES_256),
        _ => Err(TokenError::KeySizeRange("AES keys are 16, 24 or 32 bytes".into())),
    }
}

pub(super) fn cipher_key(key: &[u8]) -> TokenResult<UnboundCipherKey> {
    UnboundCipherKey::new(aes_cipher(key)?, key).map_err(|_| internal("AES key setup"))
}

/// `CKM_AES_CTR`'s counter block and counter width.
pub(super) fn ctr_params(mech: &Mechanism) -> TokenResult<([u8; 16], u32)> {
    match &mech.params {
        MechParams::Ctr { counter_bits, cb } => {
            let cb = <[u8; 16]>::try_from(cb.as_slice())
                .map_err(|_| param_err("the counter block must be 16 bytes"))?;
            match u32::try_from(*counter_bits) {
                Ok(bits @ 1..=128) => Ok((cb, bits)),
                _ => Err(param_err("ulCounterBits must be 1 to 128")),
            }
        }
        _ => Err(param_err("AES-CTR needs CK_AES_CTR_PARAMS")),
    }
}

/// The IV of a `CKM_AES_CBC_PAD` middle part ([`MechParams::IvPart`]), if it is one.
pub(super) fn cbc_part(mech: &Mechanism) -> TokenResult<Option<[u8; 16]>> {
    match &mech.params {
        MechParams::IvPart(iv) => <[u8; 16]>::try_from(iv.as_slice())
            .map(Some)
            .map_err(|_| param_err("the IV must be 16 bytes")),
        _ => Ok(None),
    }
}

pub(super) fn iv16(mech: &Mechanism) -> TokenResult<[u8; 16]> {
    match &mech.params {
        MechParams::Iv(iv) => {
            <[u8; 16]>::try_from(iv.as_slice()).map_err(|_| param_err("the IV must be 16 bytes"))
        }
        _ => Err(param_err("AES-CBC needs a 16-byte IV")),
    }
}

pub(super) struct GcmParams<'a> {
    pub(super) iv: &'a [u8],
    pub(super) aad: &'a [u8],
    pub(super) tag_len: usize,
}

pub(super) fn gcm_params(mech: &Mechanism) -> TokenResult<GcmParams<'_>> {
    let MechParams::Gcm { iv, aad, tag_bits } = &mech.params else {
        return Err(param_err("AES-GCM needs CK_GCM_PARAMS"));
    };
    if !matches!(tag_bits, 96 | 104 | 112 | 120 | 128) {
        return Err(param_err(
            "AES-GCM tag length must be 96 to 128 bits, in steps of 8",
        ));
    }
    if iv.is_empty() || iv.len() > 128 {
        return Err(param_err("AES-GCM IV must be 1 to 128 bytes (12 recommended)"));
    }
    // Lossless: tag_bits is at most 128.
    Ok(GcmParams {
        iv,
        aad,
        tag_len: *tag_bits as usize / 8,
    })
}

pub(super) fn aead_algorithm(key: &[u8]) -> TokenResult<&'static aead::Algorithm> {
    match key.len() {
        16 => Ok(&aead::AES_128_GCM),
        24 => Ok(&aead::AES_192_GCM),
        32 => Ok(&aead::AES_256_GCM),
        _ => Err(TokenError::KeySizeRange("AES keys are 16, 24 or 32 bytes".into())),
    }
}

pub(super) fn internal(what: &str) -> TokenError {
    TokenError::FunctionFailed(format!("{what} failed"))
}
