//! ML-DSA signatures (`CKM_ML_DSA`) and ML-KEM encapsulation.
//!
//! `CKM_ML_DSA` is pure ML-DSA (FIPS 204 Algorithms 2 and 3) with the
//! context string of `CK_SIGN_ADDITIONAL_CONTEXT`. AWS-LC always signs
//! hedged, so `CKH_DETERMINISTIC_REQUIRED` is refused when signing; hedging is
//! the signer's choice only, so verification takes any of the three `CKH_*`.
//! HashML-DSA (`CKM_HASH_ML_DSA*`) is not offered yet.
use super::params::param_err;
use crate::loaded::{Inner, LoadedKey};
use crate::pq::ML_KEM_SHARED_SECRET_LEN;
use crate::{ck, SecretBytes, TokenError, TokenResult};
use aws_lc_rs::kem::Ciphertext;
use hahsm_awslc_ffi as ffi;
use hahsm_token::{MechParams, Mechanism};

/// Whether `m` is an ML-DSA signature mechanism this crate runs.
pub(super) fn is_ml_dsa(m: u64) -> bool {
    m == ck::CKM_ML_DSA
}

/// The context string of a `CKM_ML_DSA` mechanism, after checking its
/// parameters.
fn ml_dsa_context(mech: &Mechanism, signing: bool) -> TokenResult<&[u8]> {
    let (hedge, context) = match &mech.params {
        MechParams::None => (ck::CKH_HEDGE_PREFERRED, &[][..]),
        MechParams::SignContext { hedge, context } => (*hedge, context.as_slice()),
        _ => {
            return Err(param_err(
                "CKM_ML_DSA takes CK_SIGN_ADDITIONAL_CONTEXT or nothing",
            ))
        }
    };
    match hedge {
        ck::CKH_HEDGE_PREFERRED | ck::CKH_HEDGE_REQUIRED => {}
        ck::CKH_DETERMINISTIC_REQUIRED if !signing => {}
        ck::CKH_DETERMINISTIC_REQUIRED => {
            return Err(param_err(
                "deterministic ML-DSA signing is not available: AWS-LC signs hedged only",
            ))
        }
        _ => return Err(param_err("unknown hedge variant")),
    }
    if context.len() > ffi::ML_DSA_MAX_CONTEXT {
        return Err(param_err("the ML-DSA context string is at most 255 bytes"));
    }
    Ok(context)
}

pub(super) fn ml_dsa_sign(mech: &Mechanism, key: &LoadedKey, data: &[u8]) -> TokenResult<Vec<u8>> {
    let Inner::MlDsaPrivate(k) = &key.inner else {
        return Err(TokenError::KeyTypeInconsistent);
    };
    let context = ml_dsa_context(mech, true)?;
    k.key
        .sign(data, context)
        .map_err(|_| TokenError::FunctionFailed("ML-DSA signing failed".into()))
}

pub(super) fn ml_dsa_verify(
    mech: &Mechanism,
    key: &LoadedKey,
    data: &[u8],
    signature: &[u8],
) -> TokenResult<()> {
    let k = match &key.inner {
        Inner::MlDsaPrivate(k) | Inner::MlDsaPublic(k) => k,
        _ => return Err(TokenError::KeyTypeInconsistent),
    };
    let context = ml_dsa_context(mech, false)?;
    if signature.len() != k.set.signature_len() {
        return Err(TokenError::SignatureLenRange);
    }
    if k.key.verify(data, context, signature) {
        Ok(())
    } else {
        Err(TokenError::SignatureInvalid)
    }
}

/// The signature length of an ML-DSA key, for `output_len`.
pub(super) fn ml_dsa_signature_len(key: &LoadedKey) -> TokenResult<usize> {
    match &key.inner {
        Inner::MlDsaPrivate(k) => Ok(k.set.signature_len()),
        _ => Err(TokenError::KeyTypeInconsistent),
    }
}

/// ML-KEM encapsulation (FIPS 203 Algorithm 20) to a public key, or to the
/// public half of a private one: the ciphertext and the 32-byte shared secret.
pub fn kem_encapsulate(key: &LoadedKey) -> TokenResult<(Vec<u8>, SecretBytes)> {
    let ek = match &key.inner {
        Inner::MlKemPrivate(k) => &k.ek,
        Inner::MlKemPublic(k) => &k.ek,
        _ => return Err(TokenError::KeyTypeInconsistent),
    };
    let (ct, ss) = ek
        .encapsulate()
        .map_err(|_| TokenError::FunctionFailed("ML-KEM encapsulation failed".into()))?;
    Ok((ct.as_ref().to_vec(), SecretBytes::new(ss.as_ref().to_vec())))
}

/// ML-KEM decapsulation (FIPS 203 Algorithm 21) with a private key. A
/// ciphertext that was changed still gives a secret (implicit rejection): a
/// pseudorandom one that the sender does not share.
pub fn kem_decapsulate(key: &LoadedKey, ciphertext: &[u8]) -> TokenResult<SecretBytes> {
    let Inner::MlKemPrivate(k) = &key.inner else {
        return Err(TokenError::KeyTypeInconsistent);
    };
    if ciphertext.len() != k.set.ciphertext_len() {
        return Err(TokenError::EncryptedDataLenRange);
    }
    let ss =
        k.dk.decapsulate(Ciphertext::from(ciphertext))
            .map_err(|_| TokenError::FunctionFailed("ML-KEM decapsulation failed".into()))?;
    if ss.as_ref().len() != ML_KEM_SHARED_SECRET_LEN {
        return Err(TokenError::FunctionFailed("ML-KEM decapsulation failed".into()));
    }
    Ok(SecretBytes::new(ss.as_ref().to_vec()))
}
