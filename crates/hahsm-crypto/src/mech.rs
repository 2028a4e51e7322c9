//! The PKCS#11 mechanisms: sign, verify, encrypt, decrypt, wrap, unwrap and
//! ECDH derivation on a [`LoadedKey`].
//!
//! Checks run in a fixed order so the error a caller sees is predictable:
//! unknown mechanism (`MechanismInvalid`), then the key kind
//! (`KeyTypeInconsistent`), then the parameters (`MechanismParamInvalid`),
//! then the input length (`DataLenRange`, `EncryptedDataLenRange`,
//! `SignatureLenRange`), then the cryptography itself.
//!
//! What runs where: aws-lc-rs does RSA PKCS#1 v1.5 signing with SHA-256/384/512,
//! RSA PKCS#1 v1.5 and OAEP encryption when the OAEP hash and MGF1 hash are
//! the same SHA-1/256/384/512, ECDSA with the curve's own hash, Ed25519, HMAC,
//! the AES modes, AES-GCM with a 96-bit IV and full tag, AES-128/256 key wrap
//! and ECDH. `hahsm-awslc-ffi` does the rest (see its crate docs).
use crate::keys::{ec_point_from_attribute, Curve};
use crate::loaded::{Inner, LoadedKey};
use crate::{ck, ct_eq, SecretBytes, TokenError, TokenResult};
use aws_lc_rs::aead;
use aws_lc_rs::agreement;
use aws_lc_rs::cipher::{self, DecryptionContext, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::digest;
use aws_lc_rs::hmac;
use aws_lc_rs::key_wrap::{self, KeyWrap, KeyWrapPadded};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa as awsrsa;
use aws_lc_rs::signature as sig;
use hahsm_awslc_ffi::{self as ffi, Hash};
use hahsm_token::mechanism::Usage;
use hahsm_token::{MechParams, Mechanism};
use zeroize::Zeroizing;

// ---------------------------------------------------------------- helpers --

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

fn hash_from_mgf(g: u64) -> Option<Hash> {
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

fn hash(h: Hash, data: &[u8]) -> digest::Digest {
    digest::digest(digest_algorithm(h), data)
}

/// The DER `DigestInfo` prefix (RFC 8017 section 9.2, note 1) for each hash.
fn digest_info_prefix(h: Hash) -> &'static [u8] {
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

fn no_params(mech: &Mechanism) -> TokenResult<()> {
    match mech.params {
        MechParams::None => Ok(()),
        _ => Err(TokenError::MechanismParamInvalid(format!(
            "mechanism {:#x} takes no parameters",
            mech.mech
        ))),
    }
}

fn param_err(msg: &str) -> TokenError {
    TokenError::MechanismParamInvalid(msg.to_string())
}

fn left_pad(data: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(vec![0u8; len]);
    let start = len.saturating_sub(data.len());
    out[start..].copy_from_slice(&data[data.len().saturating_sub(len)..]);
    out
}

// -------------------------------------------------------- classification --

#[derive(Clone, Copy)]
enum RsaSig {
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

fn rsa_sig_mech(m: u64) -> Option<RsaSig> {
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
fn ecdsa_mech(m: u64) -> Option<Option<Hash>> {
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

fn hmac_algorithm(m: u64) -> Option<hmac::Algorithm> {
    Some(match m {
        ck::CKM_SHA256_HMAC => hmac::HMAC_SHA256,
        ck::CKM_SHA384_HMAC => hmac::HMAC_SHA384,
        ck::CKM_SHA512_HMAC => hmac::HMAC_SHA512,
        _ => return None,
    })
}

/// The RSA key behind any RSA `LoadedKey`, for public-key operations.
struct RsaView<'a> {
    size: usize,
    modulus_bits: u64,
    key: &'a LoadedKey,
}

impl<'a> RsaView<'a> {
    fn of(key: &'a LoadedKey) -> TokenResult<RsaView<'a>> {
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

    fn raw(&self) -> TokenResult<&'a ffi::RsaKey> {
        match &self.key.inner {
            Inner::RsaPrivate(k) => k.raw(),
            Inner::RsaPublic(k) => Ok(&k.raw),
            _ => Err(TokenError::KeyTypeInconsistent),
        }
    }

    fn encrypter(&self) -> TokenResult<&'a awsrsa::PublicEncryptingKey> {
        match &self.key.inner {
            Inner::RsaPrivate(k) => k.encrypter(),
            Inner::RsaPublic(k) => k.encrypter(),
            _ => Err(TokenError::KeyTypeInconsistent),
        }
    }

    /// Checks PSS parameters against the mechanism and the key.
    fn pss_params(&self, mech: &Mechanism, bound: Option<Hash>) -> TokenResult<(Hash, Hash, usize)> {
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

fn oaep_params(mech: &Mechanism) -> TokenResult<(Hash, Hash, &[u8])> {
    let MechParams::Oaep { hash, mgf, label } = &mech.params else {
        return Err(param_err("RSA-OAEP needs CK_RSA_PKCS_OAEP_PARAMS"));
    };
    let h = hash_from_ckm(*hash).ok_or_else(|| param_err("unsupported OAEP hash"))?;
    let g = hash_from_mgf(*mgf).ok_or_else(|| param_err("unsupported OAEP MGF"))?;
    Ok((h, g, label))
}

/// The aws-lc-rs OAEP algorithm, when the hash and MGF1 hash agree.
fn aws_oaep(h: Hash, g: Hash) -> Option<&'static awsrsa::OaepAlgorithm> {
    match (h, g) {
        (Hash::Sha1, Hash::Sha1) => Some(&awsrsa::OAEP_SHA1_MGF1SHA1),
        (Hash::Sha256, Hash::Sha256) => Some(&awsrsa::OAEP_SHA256_MGF1SHA256),
        (Hash::Sha384, Hash::Sha384) => Some(&awsrsa::OAEP_SHA384_MGF1SHA384),
        (Hash::Sha512, Hash::Sha512) => Some(&awsrsa::OAEP_SHA512_MGF1SHA512),
        _ => None,
    }
}

fn oaep_max_plaintext(size: usize, h: Hash) -> usize {
    size.saturating_sub(2 * h.output_len() + 2)
}

/// The secret value of an AES key.
fn aes_key(key: &LoadedKey) -> TokenResult<&[u8]> {
    match &key.inner {
        Inner::Secret { key_type, bytes } if *key_type == ck::CKK_AES => Ok(bytes.expose()),
        _ => Err(TokenError::KeyTypeInconsistent),
    }
}

fn aes_cipher(key: &[u8]) -> TokenResult<&'static cipher::Algorithm> {
    match key.len() {
        16 => Ok(&cipher::AES_128),
        24 => Ok(&cipher::AES_192),
        32 => Ok(&cipher::AES_256),
        _ => Err(TokenError::KeySizeRange("AES keys are 16, 24 or 32 bytes".into())),
    }
}

fn cipher_key(key: &[u8]) -> TokenResult<UnboundCipherKey> {
    UnboundCipherKey::new(aes_cipher(key)?, key).map_err(|_| internal("AES key setup"))
}

fn iv16(mech: &Mechanism) -> TokenResult<[u8; 16]> {
    match &mech.params {
        MechParams::Iv(iv) => {
            <[u8; 16]>::try_from(iv.as_slice()).map_err(|_| param_err("the IV must be 16 bytes"))
        }
        _ => Err(param_err("AES-CBC needs a 16-byte IV")),
    }
}

struct GcmParams<'a> {
    iv: &'a [u8],
    aad: &'a [u8],
    tag_len: usize,
}

fn gcm_params(mech: &Mechanism) -> TokenResult<GcmParams<'_>> {
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

fn aead_algorithm(key: &[u8]) -> TokenResult<&'static aead::Algorithm> {
    match key.len() {
        16 => Ok(&aead::AES_128_GCM),
        24 => Ok(&aead::AES_192_GCM),
        32 => Ok(&aead::AES_256_GCM),
        _ => Err(TokenError::KeySizeRange("AES keys are 16, 24 or 32 bytes".into())),
    }
}

fn internal(what: &str) -> TokenError {
    TokenError::FunctionFailed(format!("{what} failed"))
}

// ------------------------------------------------------------------- sign --

/// Signs (or MACs) `data` with a private or secret key.
pub fn sign(mech: &Mechanism, key: &LoadedKey, data: &[u8]) -> TokenResult<Vec<u8>> {
    let m = mech.mech;
    if let Some(kind) = rsa_sig_mech(m) {
        let Inner::RsaPrivate(k) = &key.inner else {
            return Err(TokenError::KeyTypeInconsistent);
        };
        let view = RsaView::of(key)?;
        return match kind {
            RsaSig::Pkcs1Raw => {
                no_params(mech)?;
                if data.len() > k.size.saturating_sub(11) {
                    return Err(TokenError::DataLenRange);
                }
                k.raw()?
                    .sign_pkcs1_raw(data)
                    .map_err(|_| internal("RSA PKCS#1 signing"))
            }
            RsaSig::X509 => {
                no_params(mech)?;
                if data.len() > k.size {
                    return Err(TokenError::DataLenRange);
                }
                let out = k
                    .raw()?
                    .private_raw(&left_pad(data, k.size))
                    .map_err(|_| TokenError::DataInvalid)?;
                Ok(out.to_vec())
            }
            RsaSig::Pkcs1(h) => {
                no_params(mech)?;
                let encoding: &'static dyn sig::RsaEncoding = match h {
                    Hash::Sha256 => &sig::RSA_PKCS1_SHA256,
                    Hash::Sha384 => &sig::RSA_PKCS1_SHA384,
                    Hash::Sha512 => &sig::RSA_PKCS1_SHA512,
                    // aws-lc-rs has no SHA-1 / SHA-224 PKCS#1 signing encodings.
                    Hash::Sha1 | Hash::Sha224 => {
                        return k
                            .raw()?
                            .sign_pkcs1_raw(&digest_info(h, data))
                            .map_err(|_| internal("RSA PKCS#1 signing"))
                    }
                };
                let mut out = vec![0u8; k.size];
                k.signer
                    .sign(encoding, &SystemRandom::new(), data, &mut out)
                    .map_err(|_| internal("RSA signing"))?;
                Ok(out)
            }
            RsaSig::PssRaw => {
                let (h, g, salt) = view.pss_params(mech, None)?;
                if data.len() != h.output_len() {
                    return Err(TokenError::DataLenRange);
                }
                k.raw()?
                    .sign_pss(data, h, g, salt)
                    .map_err(|_| internal("RSA-PSS signing"))
            }
            RsaSig::Pss(mh) => {
                let (h, g, salt) = view.pss_params(mech, Some(mh))?;
                k.raw()?
                    .sign_pss(hash(h, data).as_ref(), h, g, salt)
                    .map_err(|_| internal("RSA-PSS signing"))
            }
        };
    }
    if let Some(prehash) = ecdsa_mech(m) {
        let Inner::EcPrivate(k) = &key.inner else {
            return Err(TokenError::KeyTypeInconsistent);
        };
        no_params(mech)?;
        return match prehash {
            None => {
                if data.is_empty() {
                    return Err(TokenError::DataLenRange);
                }
                k.raw()?.sign_digest(data).map_err(|_| internal("ECDSA signing"))
            }
            Some(h) if h == k.curve.native_hash() => {
                let s = k
                    .signer
                    .sign(&SystemRandom::new(), data)
                    .map_err(|_| internal("ECDSA signing"))?;
                Ok(s.as_ref().to_vec())
            }
            Some(h) => k
                .raw()?
                .sign_digest(hash(h, data).as_ref())
                .map_err(|_| internal("ECDSA signing")),
        };
    }
    if m == ck::CKM_EDDSA {
        let Inner::Ed25519Private(k) = &key.inner else {
            return Err(TokenError::KeyTypeInconsistent);
        };
        no_params(mech)?;
        let s = k.signer.try_sign(data).map_err(|_| internal("Ed25519 signing"))?;
        return Ok(s.as_ref().to_vec());
    }
    if let Some(alg) = hmac_algorithm(m) {
        let secret = key.secret().ok_or(TokenError::KeyTypeInconsistent)?;
        no_params(mech)?;
        let k = hmac::Key::new(alg, secret.expose());
        return Ok(hmac::sign(&k, data).as_ref().to_vec());
    }
    Err(TokenError::MechanismInvalid(m))
}

// ----------------------------------------------------------------- verify --

/// Verifies a signature (or MAC). `SignatureInvalid` on mismatch,
/// `SignatureLenRange` when the signature cannot have the right length.
pub fn verify(mech: &Mechanism, key: &LoadedKey, data: &[u8], signature: &[u8]) -> TokenResult<()> {
    let m = mech.mech;
    let verdict = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(TokenError::SignatureInvalid)
        }
    };
    if let Some(kind) = rsa_sig_mech(m) {
        let view = RsaView::of(key)?;
        let k = view.size;
        // Parameters first, then lengths.
        let pss = match kind {
            RsaSig::PssRaw => Some(view.pss_params(mech, None)?),
            RsaSig::Pss(mh) => Some(view.pss_params(mech, Some(mh))?),
            _ => {
                no_params(mech)?;
                None
            }
        };
        if signature.len() != k {
            return Err(TokenError::SignatureLenRange);
        }
        let raw = view.raw()?;
        return match (kind, pss) {
            (RsaSig::Pkcs1Raw, _) => {
                if data.len() > k.saturating_sub(11) {
                    return Err(TokenError::DataLenRange);
                }
                let recovered = raw
                    .recover_pkcs1(signature)
                    .map_err(|_| TokenError::SignatureInvalid)?;
                verdict(ct_eq(&recovered, data))
            }
            (RsaSig::X509, _) => {
                if data.len() > k {
                    return Err(TokenError::DataLenRange);
                }
                let recovered = raw
                    .public_raw(signature)
                    .map_err(|_| TokenError::SignatureInvalid)?;
                verdict(ct_eq(&recovered, &left_pad(data, k)))
            }
            (RsaSig::Pkcs1(h), _) => {
                let recovered = raw
                    .recover_pkcs1(signature)
                    .map_err(|_| TokenError::SignatureInvalid)?;
                verdict(ct_eq(&recovered, &digest_info(h, data)))
            }
            (RsaSig::PssRaw, Some((h, g, salt))) => {
                if data.len() != h.output_len() {
                    return Err(TokenError::DataLenRange);
                }
                verdict(raw.verify_pss(data, h, g, salt, signature))
            }
            (RsaSig::Pss(_), Some((h, g, salt))) => {
                verdict(raw.verify_pss(hash(h, data).as_ref(), h, g, salt, signature))
            }
            // pss_params returned Some for both PSS kinds above.
            (RsaSig::PssRaw | RsaSig::Pss(_), None) => Err(internal("PSS parameter check")),
        };
    }
    if let Some(prehash) = ecdsa_mech(m) {
        let (curve, raw) = match &key.inner {
            Inner::EcPrivate(k) => (k.curve, k.raw()?),
            Inner::EcPublic(k) => (k.curve, &k.raw),
            _ => return Err(TokenError::KeyTypeInconsistent),
        };
        no_params(mech)?;
        if signature.len() != 2 * curve.field_len() {
            return Err(TokenError::SignatureLenRange);
        }
        return match prehash {
            None => {
                if data.is_empty() {
                    return Err(TokenError::DataLenRange);
                }
                verdict(raw.verify_digest(data, signature))
            }
            Some(h) => verdict(raw.verify_digest(hash(h, data).as_ref(), signature)),
        };
    }
    if m == ck::CKM_EDDSA {
        let verifier = match &key.inner {
            Inner::Ed25519Private(k) => &k.verifier,
            Inner::Ed25519Public(k) => &k.verifier,
            _ => return Err(TokenError::KeyTypeInconsistent),
        };
        no_params(mech)?;
        if signature.len() != 64 {
            return Err(TokenError::SignatureLenRange);
        }
        return verdict(verifier.verify_sig(data, signature).is_ok());
    }
    if let Some(alg) = hmac_algorithm(m) {
        let secret = key.secret().ok_or(TokenError::KeyTypeInconsistent)?;
        no_params(mech)?;
        if signature.len() != alg.digest_algorithm().output_len() {
            return Err(TokenError::SignatureLenRange);
        }
        let k = hmac::Key::new(alg, secret.expose());
        return verdict(hmac::verify(&k, data, signature).is_ok());
    }
    Err(TokenError::MechanismInvalid(m))
}

// ---------------------------------------------------------------- encrypt --

/// Single-part encryption.
pub fn encrypt(mech: &Mechanism, key: &LoadedKey, data: &[u8]) -> TokenResult<Vec<u8>> {
    let m = mech.mech;
    match m {
        ck::CKM_RSA_PKCS => {
            let view = RsaView::of(key)?;
            no_params(mech)?;
            if data.len() > view.size.saturating_sub(11) {
                return Err(TokenError::DataLenRange);
            }
            let enc = awsrsa::Pkcs1PublicEncryptingKey::new(view.encrypter()?.clone())
                .map_err(|_| internal("RSA key setup"))?;
            let mut out = vec![0u8; enc.ciphertext_size()];
            let n = enc
                .encrypt(data, &mut out)
                .map_err(|_| internal("RSA PKCS#1 encryption"))?
                .len();
            out.truncate(n);
            Ok(out)
        }
        ck::CKM_RSA_PKCS_OAEP => {
            let view = RsaView::of(key)?;
            let (h, g, label) = oaep_params(mech)?;
            if data.len() > oaep_max_plaintext(view.size, h) || view.size < 2 * h.output_len() + 2 {
                return Err(TokenError::DataLenRange);
            }
            match aws_oaep(h, g) {
                Some(alg) => {
                    let enc = awsrsa::OaepPublicEncryptingKey::new(view.encrypter()?.clone())
                        .map_err(|_| internal("RSA key setup"))?;
                    let mut out = vec![0u8; enc.ciphertext_size()];
                    let label = (!label.is_empty()).then_some(label);
                    let n = enc
                        .encrypt(alg, data, &mut out, label)
                        .map_err(|_| internal("RSA-OAEP encryption"))?
                        .len();
                    out.truncate(n);
                    Ok(out)
                }
                None => view
                    .raw()?
                    .encrypt_oaep(h, g, label, data)
                    .map_err(|_| internal("RSA-OAEP encryption")),
            }
        }
        ck::CKM_RSA_X_509 => {
            let view = RsaView::of(key)?;
            no_params(mech)?;
            if data.len() > view.size {
                return Err(TokenError::DataLenRange);
            }
            view.raw()?
                .public_raw(&left_pad(data, view.size))
                .map_err(|_| TokenError::DataInvalid)
        }
        ck::CKM_AES_ECB => {
            let k = aes_key(key)?;
            no_params(mech)?;
            if data.len() % 16 != 0 {
                return Err(TokenError::DataLenRange);
            }
            let mut buf = data.to_vec();
            if !buf.is_empty() {
                cipher::EncryptingKey::ecb(cipher_key(k)?)
                    .and_then(|c| c.less_safe_encrypt(&mut buf, EncryptionContext::None))
                    .map_err(|_| internal("AES-ECB encryption"))?;
            }
            Ok(buf)
        }
        ck::CKM_AES_CBC => {
            let k = aes_key(key)?;
            let iv = iv16(mech)?;
            if data.len() % 16 != 0 {
                return Err(TokenError::DataLenRange);
            }
            let mut buf = data.to_vec();
            if !buf.is_empty() {
                cipher::EncryptingKey::cbc(cipher_key(k)?)
                    .and_then(|c| c.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(iv.into())))
                    .map_err(|_| internal("AES-CBC encryption"))?;
            }
            Ok(buf)
        }
        ck::CKM_AES_CBC_PAD => {
            let k = aes_key(key)?;
            let iv = iv16(mech)?;
            let mut buf = Vec::with_capacity(data.len() + 16);
            buf.extend_from_slice(data);
            cipher::PaddedBlockEncryptingKey::cbc_pkcs7(cipher_key(k)?)
                .and_then(|c| c.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(iv.into())))
                .map_err(|_| internal("AES-CBC-PAD encryption"))?;
            Ok(buf)
        }
        ck::CKM_AES_GCM => {
            let k = aes_key(key)?;
            let p = gcm_params(mech)?;
            if p.iv.len() == aead::NONCE_LEN && p.tag_len == aead::MAX_TAG_LEN {
                let sealing = aead::UnboundKey::new(aead_algorithm(k)?, k)
                    .map(aead::LessSafeKey::new)
                    .map_err(|_| internal("AES-GCM key setup"))?;
                let nonce =
                    aead::Nonce::try_assume_unique_for_key(p.iv).map_err(|_| param_err("bad GCM IV"))?;
                let mut buf = Vec::with_capacity(data.len() + p.tag_len);
                buf.extend_from_slice(data);
                sealing
                    .seal_in_place_append_tag(nonce, aead::Aad::from(p.aad), &mut buf)
                    .map_err(|_| TokenError::DataLenRange)?;
                Ok(buf)
            } else {
                ffi::aes_gcm_seal(k, p.iv, p.aad, data, p.tag_len).map_err(|_| TokenError::DataLenRange)
            }
        }
        _ => Err(TokenError::MechanismInvalid(m)),
    }
}

// ---------------------------------------------------------------- decrypt --

/// Single-part decryption. A wrong ciphertext length is
/// `EncryptedDataLenRange`; bad padding or a failed tag check is
/// `EncryptedDataInvalid`.
pub fn decrypt(mech: &Mechanism, key: &LoadedKey, data: &[u8]) -> TokenResult<Vec<u8>> {
    let m = mech.mech;
    match m {
        ck::CKM_RSA_PKCS | ck::CKM_RSA_PKCS_OAEP | ck::CKM_RSA_X_509 => {
            let Inner::RsaPrivate(k) = &key.inner else {
                return Err(TokenError::KeyTypeInconsistent);
            };
            let oaep = if m == ck::CKM_RSA_PKCS_OAEP {
                Some(oaep_params(mech)?)
            } else {
                no_params(mech)?;
                None
            };
            if data.len() != k.size {
                return Err(TokenError::EncryptedDataLenRange);
            }
            match (m, oaep) {
                (ck::CKM_RSA_X_509, _) => {
                    let out = k
                        .raw()?
                        .private_raw(data)
                        .map_err(|_| TokenError::EncryptedDataInvalid)?;
                    Ok(out.to_vec())
                }
                (ck::CKM_RSA_PKCS_OAEP, Some((h, g, label))) => match aws_oaep(h, g) {
                    Some(alg) => {
                        let dec = awsrsa::OaepPrivateDecryptingKey::new(k.decrypter()?.clone())
                            .map_err(|_| internal("RSA key setup"))?;
                        let mut out = Zeroizing::new(vec![0u8; dec.min_output_size()]);
                        let label = (!label.is_empty()).then_some(label);
                        let pt = dec
                            .decrypt(alg, data, &mut out, label)
                            .map_err(|_| TokenError::EncryptedDataInvalid)?;
                        Ok(pt.to_vec())
                    }
                    None => {
                        let pt = k
                            .raw()?
                            .decrypt_oaep(h, g, label, data)
                            .map_err(|_| TokenError::EncryptedDataInvalid)?;
                        Ok(pt.to_vec())
                    }
                },
                _ => {
                    let dec = awsrsa::Pkcs1PrivateDecryptingKey::new(k.decrypter()?.clone())
                        .map_err(|_| internal("RSA key setup"))?;
                    let mut out = Zeroizing::new(vec![0u8; dec.min_output_size()]);
                    let pt = dec
                        .decrypt(data, &mut out)
                        .map_err(|_| TokenError::EncryptedDataInvalid)?;
                    Ok(pt.to_vec())
                }
            }
        }
        ck::CKM_AES_ECB => {
            let k = aes_key(key)?;
            no_params(mech)?;
            if data.len() % 16 != 0 {
                return Err(TokenError::EncryptedDataLenRange);
            }
            let mut buf = data.to_vec();
            if !buf.is_empty() {
                cipher::DecryptingKey::ecb(cipher_key(k)?)
                    .and_then(|c| c.decrypt(&mut buf, DecryptionContext::None).map(|_| ()))
                    .map_err(|_| internal("AES-ECB decryption"))?;
            }
            Ok(buf)
        }
        ck::CKM_AES_CBC => {
            let k = aes_key(key)?;
            let iv = iv16(mech)?;
            if data.len() % 16 != 0 {
                return Err(TokenError::EncryptedDataLenRange);
            }
            let mut buf = data.to_vec();
            if !buf.is_empty() {
                cipher::DecryptingKey::cbc(cipher_key(k)?)
                    .and_then(|c| {
                        c.decrypt(&mut buf, DecryptionContext::Iv128(iv.into()))
                            .map(|_| ())
                    })
                    .map_err(|_| internal("AES-CBC decryption"))?;
            }
            Ok(buf)
        }
        ck::CKM_AES_CBC_PAD => {
            let k = aes_key(key)?;
            let iv = iv16(mech)?;
            if data.is_empty() || data.len() % 16 != 0 {
                return Err(TokenError::EncryptedDataLenRange);
            }
            let mut buf = data.to_vec();
            let dec = cipher::PaddedBlockDecryptingKey::cbc_pkcs7(cipher_key(k)?)
                .map_err(|_| internal("AES-CBC-PAD key setup"))?;
            let n = dec
                .decrypt(&mut buf, DecryptionContext::Iv128(iv.into()))
                .map_err(|_| TokenError::EncryptedDataInvalid)?
                .len();
            buf.truncate(n);
            Ok(buf)
        }
        ck::CKM_AES_GCM => {
            let k = aes_key(key)?;
            let p = gcm_params(mech)?;
            if data.len() < p.tag_len {
                return Err(TokenError::EncryptedDataLenRange);
            }
            if p.iv.len() == aead::NONCE_LEN && p.tag_len == aead::MAX_TAG_LEN {
                let opening = aead::UnboundKey::new(aead_algorithm(k)?, k)
                    .map(aead::LessSafeKey::new)
                    .map_err(|_| internal("AES-GCM key setup"))?;
                let nonce =
                    aead::Nonce::try_assume_unique_for_key(p.iv).map_err(|_| param_err("bad GCM IV"))?;
                let mut buf = data.to_vec();
                let n = opening
                    .open_in_place(nonce, aead::Aad::from(p.aad), &mut buf)
                    .map_err(|_| TokenError::EncryptedDataInvalid)?
                    .len();
                buf.truncate(n);
                Ok(buf)
            } else {
                let pt = ffi::aes_gcm_open(k, p.iv, p.aad, data, p.tag_len)
                    .map_err(|_| TokenError::EncryptedDataInvalid)?;
                Ok(pt.to_vec())
            }
        }
        _ => Err(TokenError::MechanismInvalid(m)),
    }
}

// ------------------------------------------------------------- output_len --

/// The output length a single-part operation will produce, or an upper bound
/// (for PKCS#11's NULL-buffer length query). `Verify` and `Derive` produce no
/// output and return 0. The same mechanism, key and length checks run as in
/// the operation itself.
pub fn output_len(mech: &Mechanism, key: &LoadedKey, input_len: usize, op: Usage) -> TokenResult<usize> {
    let m = mech.mech;
    let too_long = || TokenError::DataLenRange;
    match op {
        Usage::Verify | Usage::Derive => Ok(0),
        Usage::Sign => {
            if rsa_sig_mech(m).is_some() {
                match &key.inner {
                    Inner::RsaPrivate(k) => Ok(k.size),
                    _ => Err(TokenError::KeyTypeInconsistent),
                }
            } else if ecdsa_mech(m).is_some() {
                match &key.inner {
                    Inner::EcPrivate(k) => Ok(2 * k.curve.field_len()),
                    _ => Err(TokenError::KeyTypeInconsistent),
                }
            } else if m == ck::CKM_EDDSA {
                match &key.inner {
                    Inner::Ed25519Private(_) => Ok(64),
                    _ => Err(TokenError::KeyTypeInconsistent),
                }
            } else if let Some(alg) = hmac_algorithm(m) {
                key.secret().ok_or(TokenError::KeyTypeInconsistent)?;
                Ok(alg.digest_algorithm().output_len())
            } else {
                Err(TokenError::MechanismInvalid(m))
            }
        }
        Usage::Encrypt | Usage::Wrap | Usage::Decrypt | Usage::Unwrap => {
            let forward = matches!(op, Usage::Encrypt | Usage::Wrap);
            match m {
                ck::CKM_RSA_PKCS | ck::CKM_RSA_PKCS_OAEP | ck::CKM_RSA_X_509 => match &key.inner {
                    Inner::RsaPrivate(k) => Ok(k.size),
                    Inner::RsaPublic(k) if forward => Ok(k.size),
                    _ => Err(TokenError::KeyTypeInconsistent),
                },
                ck::CKM_AES_ECB | ck::CKM_AES_CBC => {
                    aes_key(key)?;
                    if input_len % 16 != 0 {
                        return Err(if forward {
                            TokenError::DataLenRange
                        } else {
                            TokenError::EncryptedDataLenRange
                        });
                    }
                    Ok(input_len)
                }
                ck::CKM_AES_CBC_PAD => {
                    aes_key(key)?;
                    if forward {
                        (input_len / 16)
                            .checked_add(1)
                            .and_then(|b| b.checked_mul(16))
                            .ok_or_else(too_long)
                    } else {
                        Ok(input_len)
                    }
                }
                ck::CKM_AES_GCM => {
                    aes_key(key)?;
                    let p = gcm_params(mech)?;
                    if forward {
                        input_len.checked_add(p.tag_len).ok_or_else(too_long)
                    } else {
                        input_len
                            .checked_sub(p.tag_len)
                            .ok_or(TokenError::EncryptedDataLenRange)
                    }
                }
                ck::CKM_AES_KEY_WRAP | ck::CKM_AES_KEY_WRAP_KWP => {
                    aes_key(key)?;
                    if forward {
                        let padded = if m == ck::CKM_AES_KEY_WRAP_KWP {
                            input_len.checked_add(7).map(|n| n / 8 * 8)
                        } else {
                            Some(input_len)
                        };
                        padded.and_then(|n| n.checked_add(8)).ok_or_else(too_long)
                    } else {
                        input_len.checked_sub(8).ok_or(TokenError::WrappedKeyInvalid)
                    }
                }
                _ => Err(TokenError::MechanismInvalid(m)),
            }
        }
    }
}

// ------------------------------------------------------------ wrap/unwrap --

/// Wraps `key_bytes` (a secret key's value, or a private key's PKCS#8 DER)
/// under `wrapping`: `CKM_AES_KEY_WRAP` (RFC 3394), `CKM_AES_KEY_WRAP_KWP`
/// (RFC 5649), `CKM_RSA_PKCS_OAEP`, `CKM_RSA_PKCS`, `CKM_AES_GCM`,
/// `CKM_AES_CBC_PAD`.
pub fn wrap(mech: &Mechanism, wrapping: &LoadedKey, key_bytes: &[u8]) -> TokenResult<Vec<u8>> {
    let m = mech.mech;
    match m {
        ck::CKM_AES_KEY_WRAP | ck::CKM_AES_KEY_WRAP_KWP => {
            let kek = aes_key(wrapping)?;
            no_params(mech)?;
            let padded = m == ck::CKM_AES_KEY_WRAP_KWP;
            if key_bytes.is_empty() || (!padded && (key_bytes.len() < 16 || key_bytes.len() % 8 != 0)) {
                return Err(TokenError::KeySizeRange(
                    "AES key wrap needs a key of at least 16 bytes, a multiple of 8 (use KWP otherwise)"
                        .into(),
                ));
            }
            fn failed<E>(_: E) -> TokenError {
                internal("AES key wrap")
            }
            match kek_cipher(kek) {
                Some(cipher) => {
                    let kek = key_wrap::AesKek::new(cipher, kek).map_err(failed)?;
                    let mut out = vec![0u8; key_bytes.len() + 16];
                    let n = if padded {
                        kek.wrap_with_padding(key_bytes, &mut out).map_err(failed)?.len()
                    } else {
                        kek.wrap(key_bytes, &mut out).map_err(failed)?.len()
                    };
                    out.truncate(n);
                    Ok(out)
                }
                None if padded => ffi::aes_key_wrap_padded(kek, key_bytes).map_err(failed),
                None => ffi::aes_key_wrap(kek, key_bytes).map_err(failed),
            }
        }
        ck::CKM_RSA_PKCS_OAEP | ck::CKM_RSA_PKCS | ck::CKM_AES_GCM | ck::CKM_AES_CBC_PAD => {
            encrypt(mech, wrapping, key_bytes).map_err(|e| match e {
                TokenError::DataLenRange => {
                    TokenError::KeySizeRange("the key is too long to wrap with this mechanism".into())
                }
                other => other,
            })
        }
        _ => Err(TokenError::MechanismInvalid(m)),
    }
}

/// AES-128 and AES-256 key-encryption keys go through aws-lc-rs; AES-192
/// (which its key-wrap API lacks) through the FFI crate.
fn kek_cipher(kek: &[u8]) -> Option<&'static key_wrap::AesBlockCipher> {
    match kek.len() {
        16 => Some(&key_wrap::AES_128),
        32 => Some(&key_wrap::AES_256),
        _ => None,
    }
}

/// Reverses [`wrap`]. Any failure of the wrapped data itself (length,
/// integrity check, padding) is `WrappedKeyInvalid`.
pub fn unwrap(mech: &Mechanism, unwrapping: &LoadedKey, wrapped: &[u8]) -> TokenResult<SecretBytes> {
    let m = mech.mech;
    fn invalid<E>(_: E) -> TokenError {
        TokenError::WrappedKeyInvalid
    }
    match m {
        ck::CKM_AES_KEY_WRAP | ck::CKM_AES_KEY_WRAP_KWP => {
            let kek = aes_key(unwrapping)?;
            no_params(mech)?;
            let padded = m == ck::CKM_AES_KEY_WRAP_KWP;
            let min = if padded { 16 } else { 24 };
            if wrapped.len() < min || wrapped.len() % 8 != 0 {
                return Err(TokenError::WrappedKeyInvalid);
            }
            let plain = match kek_cipher(kek) {
                Some(cipher) => {
                    let kek = key_wrap::AesKek::new(cipher, kek).map_err(|_| internal("AES key unwrap"))?;
                    let mut out = Zeroizing::new(vec![0u8; wrapped.len()]);
                    let n = if padded {
                        kek.unwrap_with_padding(wrapped, &mut out).map_err(invalid)?.len()
                    } else {
                        kek.unwrap(wrapped, &mut out).map_err(invalid)?.len()
                    };
                    out.truncate(n);
                    out
                }
                None if padded => ffi::aes_key_unwrap_padded(kek, wrapped).map_err(invalid)?,
                None => ffi::aes_key_unwrap(kek, wrapped).map_err(invalid)?,
            };
            Ok(SecretBytes::from_zeroizing(plain))
        }
        ck::CKM_RSA_PKCS_OAEP | ck::CKM_RSA_PKCS | ck::CKM_AES_GCM | ck::CKM_AES_CBC_PAD => {
            match decrypt(mech, unwrapping, wrapped) {
                Ok(v) => Ok(SecretBytes::new(v)),
                Err(
                    e @ (TokenError::MechanismInvalid(_)
                    | TokenError::MechanismParamInvalid(_)
                    | TokenError::KeyTypeInconsistent
                    | TokenError::KeySizeRange(_)
                    | TokenError::FunctionFailed(_)
                    | TokenError::DeviceError(_)),
                ) => Err(e),
                Err(_) => Err(TokenError::WrappedKeyInvalid),
            }
        }
        _ => Err(TokenError::MechanismInvalid(m)),
    }
}

// ------------------------------------------------------------------- ECDH --

/// Largest key a KDF may produce here (PKCS#11 generic secrets go to 512).
const MAX_DERIVED_LEN: usize = 1024;

/// `CKM_ECDH1_DERIVE`. `params` must be `MechParams::Ecdh`; its
/// `public_data` is the peer's point, raw or DER-wrapped.
///
/// - `CKD_NULL`: the raw shared secret (the x-coordinate, `field_len` bytes);
///   with `out_len` shorter than that, its trailing `out_len` bytes are kept
///   (as SoftHSM does). `shared_data` must be empty.
/// - `CKD_SHA1_KDF` … `CKD_SHA512_KDF`: the ANSI X9.63 KDF,
///   `Hash(Z || counter || shared_data)` with a 32-bit counter from 1,
///   `out_len` bytes (default: one hash output).
pub fn ecdh_derive(key: &LoadedKey, params: &MechParams, out_len: Option<usize>) -> TokenResult<SecretBytes> {
    let Inner::EcPrivate(k) = &key.inner else {
        return Err(TokenError::KeyTypeInconsistent);
    };
    let MechParams::Ecdh {
        kdf,
        shared_data,
        public_data,
    } = params
    else {
        return Err(param_err("ECDH needs CK_ECDH1_DERIVE_PARAMS"));
    };
    let kdf_hash = match *kdf {
        ck::CKD_NULL => None,
        ck::CKD_SHA1_KDF => Some(Hash::Sha1),
        ck::CKD_SHA224_KDF => Some(Hash::Sha224),
        ck::CKD_SHA256_KDF => Some(Hash::Sha256),
        ck::CKD_SHA384_KDF => Some(Hash::Sha384),
        ck::CKD_SHA512_KDF => Some(Hash::Sha512),
        _ => return Err(param_err("unsupported ECDH KDF")),
    };
    if kdf_hash.is_none() && !shared_data.is_empty() {
        return Err(param_err("CKD_NULL takes no shared data"));
    }
    let peer =
        ec_point_from_attribute(public_data).map_err(|_| param_err("the public data is not an EC point"))?;
    let curve: Curve = k.curve;
    if peer.len() != curve.point_len() {
        return Err(param_err("the peer's point is not on the key's curve"));
    }
    let z = agreement::agree(
        k.agreement()?,
        agreement::UnparsedPublicKey::new(curve.ecdh(), &peer),
        param_err("the peer's point is not on the key's curve"),
        |secret| Ok(Zeroizing::new(secret.to_vec())),
    )?;
    match kdf_hash {
        None => {
            let n = out_len.unwrap_or(z.len());
            if n == 0 || n > z.len() {
                return Err(TokenError::KeySizeRange(format!(
                    "CKD_NULL yields at most {} bytes",
                    z.len()
                )));
            }
            Ok(SecretBytes::new(z[z.len() - n..].to_vec()))
        }
        Some(h) => {
            let n = out_len.unwrap_or(h.output_len());
            if n == 0 || n > MAX_DERIVED_LEN {
                return Err(TokenError::KeySizeRange(format!(
                    "derived keys are 1 to {MAX_DERIVED_LEN} bytes"
                )));
            }
            Ok(x963_kdf(h, &z, shared_data, n))
        }
    }
}

/// ANSI X9.63 KDF (SEC 1 section 3.6.1).
fn x963_kdf(h: Hash, z: &[u8], shared_info: &[u8], out_len: usize) -> SecretBytes {
    let mut out = Zeroizing::new(Vec::with_capacity(out_len + h.output_len()));
    let mut counter: u32 = 1;
    while out.len() < out_len {
        let mut ctx = digest::Context::new(digest_algorithm(h));
        ctx.update(z);
        ctx.update(&counter.to_be_bytes());
        ctx.update(shared_info);
        out.extend_from_slice(ctx.finish().as_ref());
        counter = counter.wrapping_add(1);
    }
    out.truncate(out_len);
    SecretBytes::from_zeroizing(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_info_prefixes_have_consistent_lengths() {
        for h in [Hash::Sha1, Hash::Sha224, Hash::Sha256, Hash::Sha384, Hash::Sha512] {
            let di = digest_info(h, b"x");
            // Outer SEQUENCE length covers everything after the 2-byte header,
            // and the OCTET STRING length is the digest length.
            assert_eq!(usize::from(di[1]) + 2, di.len());
            let p = digest_info_prefix(h);
            assert_eq!(usize::from(p[p.len() - 1]), h.output_len());
        }
    }

    #[test]
    fn left_pad_pads_and_never_panics() {
        assert_eq!(&left_pad(&[1, 2], 4)[..], &[0, 0, 1, 2]);
        assert_eq!(&left_pad(&[], 2)[..], &[0, 0]);
        assert_eq!(&left_pad(&[1, 2, 3], 2)[..], &[2, 3]);
    }

    #[test]
    fn x963_known_answer() {
        // SEC 1 / ANSI X9.63 vector (NIST CAVS, SHA-256, 256-bit Z, no shared
        // info): Z = 96c0..., key = 4432...
        let z = hex::decode("96c05619d56c328ab95fe84b18264b08725b85e33fd34f08").unwrap();
        let out = x963_kdf(Hash::Sha256, &z, &[], 16);
        assert_eq!(hex::encode(out.expose()), "443024c3dae66b95e6f5670601558f71");
    }
}
