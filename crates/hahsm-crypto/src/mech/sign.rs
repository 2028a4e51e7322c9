//! Sign and verify.
use super::params::*;
use crate::loaded::{Inner, LoadedKey};
use crate::{ck, ct_eq, TokenError, TokenResult};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature as sig;
use hahsm_awslc_ffi::Hash;
use hahsm_token::Mechanism;

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
                let encoding: &'static dyn sig::RsaEncoding = match (h, &k.signer) {
                    (Hash::Sha256, Some(_)) => &sig::RSA_PKCS1_SHA256,
                    (Hash::Sha384, Some(_)) => &sig::RSA_PKCS1_SHA384,
                    (Hash::Sha512, Some(_)) => &sig::RSA_PKCS1_SHA512,
                    // aws-lc-rs has no SHA-1 / SHA-224 PKCS#1 signing
                    // encodings, and does not load legacy (small) keys.
                    _ => {
                        return k
                            .raw()?
                            .sign_pkcs1_raw(&digest_info(h, data))
                            .map_err(|_| internal("RSA PKCS#1 signing"))
                    }
                };
                let Some(signer) = &k.signer else {
                    return Err(internal("RSA signer"));
                };
                let mut out = vec![0u8; k.size];
                signer
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
    if super::pq::is_ml_dsa(m) {
        return super::pq::ml_dsa_sign(mech, key, data);
    }
    if let Some(alg) = hmac_algorithm(m) {
        let secret = key.secret().ok_or(TokenError::KeyTypeInconsistent)?;
        no_params(mech)?;
        let k = hmac::Key::new(alg, secret.expose());
        return Ok(hmac::sign(&k, data).as_ref().to_vec());
    }
    Err(TokenError::MechanismInvalid(m))
}

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
    if super::pq::is_ml_dsa(m) {
        return super::pq::ml_dsa_verify(mech, key, data, signature);
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
