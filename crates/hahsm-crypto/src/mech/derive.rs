//! ECDH derivation, with the X9.63 KDF.
use super::params::*;
use crate::keys::{ec_point_from_attribute, Curve};
use crate::loaded::{Inner, LoadedKey};
use crate::{ck, SecretBytes, TokenError, TokenResult};
use aws_lc_rs::agreement;
use aws_lc_rs::digest;
use hahsm_awslc_ffi::Hash;
use hahsm_token::MechParams;
use zeroize::Zeroizing;

/// Largest key a KDF may produce here (PKCS#11 generic secrets go to 512).
pub(super) const MAX_DERIVED_LEN: usize = 1024;

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
pub(super) fn x963_kdf(h: Hash, z: &[u8], shared_info: &[u8], out_len: usize) -> SecretBytes {
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
