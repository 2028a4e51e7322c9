//! Encrypt and decrypt, and the output length each mechanism needs.
use super::params::*;
use crate::loaded::{Inner, LoadedKey, LEGACY_RSA_BELOW};
use crate::{ck, TokenError, TokenResult};
use aws_lc_rs::aead;
use aws_lc_rs::cipher::{self, DecryptionContext, EncryptionContext};
use aws_lc_rs::rsa as awsrsa;
use hahsm_awslc_ffi::{self as ffi};
use hahsm_token::mechanism::Usage;
use hahsm_token::Mechanism;
use zeroize::Zeroizing;

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
            if view.size < LEGACY_RSA_BELOW {
                return view
                    .raw()?
                    .encrypt_pkcs1(data)
                    .map_err(|_| internal("RSA PKCS#1 encryption"));
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
            match aws_oaep(h, g).filter(|_| view.size >= LEGACY_RSA_BELOW) {
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
        ck::CKM_AES_CBC => cbc_encrypt(aes_key(key)?, iv16(mech)?, data),
        ck::CKM_AES_CBC_PAD if cbc_part(mech)?.is_some() => {
            let iv = cbc_part(mech)?.unwrap_or_default();
            cbc_encrypt(aes_key(key)?, iv, data)
        }
        ck::CKM_AES_CTR => ctr(aes_key(key)?, mech, data, TokenError::DataLenRange),
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
        ck::CKM_DES3_ECB | ck::CKM_DES3_CBC | ck::CKM_DES3_CBC_PAD => {
            let k = des3_key(key)?;
            let mode = des3_mode(mech)?;
            if !matches!(mode, ffi::Des3Mode::CbcPad(_)) && data.len() % 8 != 0 {
                return Err(TokenError::DataLenRange);
            }
            let out = ffi::des3_crypt(k, mode, true, data).map_err(|_| internal("triple-DES encryption"))?;
            Ok(out.to_vec())
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
                (ck::CKM_RSA_PKCS_OAEP, Some((h, g, label))) => {
                    match aws_oaep(h, g).filter(|_| k.signer.is_some()) {
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
                    }
                }
                _ if k.signer.is_none() => {
                    let pt = k
                        .raw()?
                        .decrypt_pkcs1(data)
                        .map_err(|_| TokenError::EncryptedDataInvalid)?;
                    Ok(pt.to_vec())
                }
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
        ck::CKM_AES_CBC => cbc_decrypt(aes_key(key)?, iv16(mech)?, data),
        ck::CKM_AES_CBC_PAD if cbc_part(mech)?.is_some() => {
            let iv = cbc_part(mech)?.unwrap_or_default();
            cbc_decrypt(aes_key(key)?, iv, data)
        }
        ck::CKM_AES_CTR => ctr(aes_key(key)?, mech, data, TokenError::EncryptedDataLenRange),
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
        ck::CKM_DES3_ECB | ck::CKM_DES3_CBC | ck::CKM_DES3_CBC_PAD => {
            let k = des3_key(key)?;
            let mode = des3_mode(mech)?;
            let padded = matches!(mode, ffi::Des3Mode::CbcPad(_));
            if data.len() % 8 != 0 || (padded && data.is_empty()) {
                return Err(TokenError::EncryptedDataLenRange);
            }
            let out = ffi::des3_crypt(k, mode, false, data).map_err(|_| {
                if padded {
                    TokenError::EncryptedDataInvalid
                } else {
                    internal("triple-DES decryption")
                }
            })?;
            Ok(out.to_vec())
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

/// AES-CBC over whole blocks.
fn cbc_encrypt(k: &[u8], iv: [u8; 16], data: &[u8]) -> TokenResult<Vec<u8>> {
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

fn cbc_decrypt(k: &[u8], iv: [u8; 16], data: &[u8]) -> TokenResult<Vec<u8>> {
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

/// AES-CTR (NIST SP 800-38A §6.5), encryption and decryption alike. The
/// counter is the low `ulCounterBits` of the counter block; input that would
/// make it wrap is `too_long` (`CKR_DATA_LEN_RANGE` or
/// `CKR_ENCRYPTED_DATA_LEN_RANGE`), so the counter never repeats and the
/// full-width increment aws-lc makes is the standard's.
fn ctr(k: &[u8], mech: &Mechanism, data: &[u8], too_long: TokenError) -> TokenResult<Vec<u8>> {
    let (cb, bits) = ctr_params(mech)?;
    if !ctr_fits(&cb, bits, data.len()) {
        return Err(too_long);
    }
    let mut buf = data.to_vec();
    if !buf.is_empty() {
        cipher::EncryptingKey::ctr(cipher_key(k)?)
            .and_then(|c| c.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(cb.into())))
            .map_err(|_| internal("AES-CTR"))?;
    }
    Ok(buf)
}

/// Whether `len` bytes of CTR from counter block `cb` keep the low `bits`
/// counter from wrapping.
pub(super) fn ctr_fits(cb: &[u8; 16], bits: u32, len: usize) -> bool {
    let blocks = (len as u128).div_ceil(16);
    let mask = if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    let low = u128::from_be_bytes(*cb) & mask;
    // The counter takes the values low ..= low + blocks - 1, all within the mask.
    blocks == 0 || blocks - 1 <= mask - low
}

/// The output length a single-part operation will produce, or an upper bound
/// (for PKCS#11's NULL-buffer length query). `Verify` and `Derive` produce no
/// output and return 0. The same mechanism, key and length checks run as in
/// the operation itself.
pub fn output_len(mech: &Mechanism, key: &LoadedKey, input_len: usize, op: Usage) -> TokenResult<usize> {
    let m = mech.mech;
    let too_long = || TokenError::DataLenRange;
    match op {
        Usage::Verify | Usage::Derive | Usage::Encapsulate | Usage::Decapsulate => Ok(0),
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
            } else if super::pq::is_ml_dsa(m) {
                super::pq::ml_dsa_signature_len(key)
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
                ck::CKM_AES_CTR => {
                    aes_key(key)?;
                    Ok(input_len)
                }
                ck::CKM_AES_CBC_PAD if cbc_part(mech)?.is_some() => {
                    aes_key(key)?;
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
                ck::CKM_DES3_ECB | ck::CKM_DES3_CBC => {
                    des3_key(key)?;
                    if input_len % 8 != 0 {
                        return Err(if forward {
                            TokenError::DataLenRange
                        } else {
                            TokenError::EncryptedDataLenRange
                        });
                    }
                    Ok(input_len)
                }
                ck::CKM_DES3_CBC_PAD => {
                    des3_key(key)?;
                    if forward {
                        (input_len / 8)
                            .checked_add(1)
                            .and_then(|b| b.checked_mul(8))
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
