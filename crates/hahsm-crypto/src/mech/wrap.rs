//! Wrap and unwrap keys.
use super::cipher::{decrypt, encrypt};
use super::params::*;
use crate::loaded::LoadedKey;
use crate::{ck, SecretBytes, TokenError, TokenResult};
use aws_lc_rs::key_wrap::{self, KeyWrap, KeyWrapPadded};
use hahsm_awslc_ffi::{self as ffi};
use hahsm_token::Mechanism;
use zeroize::Zeroizing;

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
pub(super) fn kek_cipher(kek: &[u8]) -> Option<&'static key_wrap::AesBlockCipher> {
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
