//! AES-GCM with any non-empty nonce and a tag of 4..=16 bytes, and AES key
//! wrap (RFC 3394) / key wrap with padding (RFC 5649) for every AES key size.
use crate::{check, sys, to_c_uint, Error, Result};
use core::ptr::NonNull;
use zeroize::Zeroizing;

fn gcm_aead(key_len: usize) -> Result<*const sys::EVP_AEAD> {
    // SAFETY: the EVP_aead_*() functions take no arguments and return pointers to static, immutable method tables.
    unsafe {
        match key_len {
            16 => Ok(sys::EVP_aead_aes_128_gcm()),
            24 => Ok(sys::EVP_aead_aes_192_gcm()),
            32 => Ok(sys::EVP_aead_aes_256_gcm()),
            _ => Err(Error::new("AES-GCM: key length")),
        }
    }
}

/// Owned `EVP_AEAD_CTX` (holds the expanded key; wiped when freed).
struct AeadCtx(NonNull<sys::EVP_AEAD_CTX>);

impl AeadCtx {
    fn gcm(key: &[u8], tag_len: usize) -> Result<AeadCtx> {
        let aead = gcm_aead(key.len())?;
        // SAFETY: aead is a static method table; key is a live slice passed with its length; AWS-LC validates tag_len. A non-NULL result is ours.
        let ctx = unsafe { sys::EVP_AEAD_CTX_new(aead, key.as_ptr(), key.len(), tag_len) };
        NonNull::new(ctx)
            .map(AeadCtx)
            .ok_or_else(|| Error::new("EVP_AEAD_CTX_new"))
    }
}

impl Drop for AeadCtx {
    fn drop(&mut self) {
        // SAFETY: we own this context and free it exactly once; AWS-LC's allocator wipes the memory (and so the key schedule) on free.
        unsafe { sys::EVP_AEAD_CTX_free(self.0.as_ptr()) }
    }
}

/// AES-GCM encryption. Returns `ciphertext || tag` with a `tag_len`-byte tag.
pub fn aes_gcm_seal(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    plaintext: &[u8],
    tag_len: usize,
) -> Result<Vec<u8>> {
    if nonce.is_empty() {
        return Err(Error::new("AES-GCM: empty nonce"));
    }
    let ctx = AeadCtx::gcm(key, tag_len)?;
    let max_out = plaintext
        .len()
        .checked_add(tag_len)
        .ok_or_else(|| Error::new("AES-GCM: length"))?;
    let mut out = vec![0u8; max_out];
    let mut out_len = 0usize;
    // SAFETY: out has max_out writable bytes; nonce, plaintext and aad are live slices passed with their lengths; ctx is valid and used through a const pointer.
    let rc = unsafe {
        sys::EVP_AEAD_CTX_seal(
            ctx.0.as_ptr(),
            out.as_mut_ptr(),
            &mut out_len,
            out.len(),
            nonce.as_ptr(),
            nonce.len(),
            plaintext.as_ptr(),
            plaintext.len(),
            aad.as_ptr(),
            aad.len(),
        )
    };
    check(rc, "EVP_AEAD_CTX_seal")?;
    if out_len != max_out {
        return Err(Error::new("EVP_AEAD_CTX_seal: length"));
    }
    Ok(out)
}

/// AES-GCM decryption of `ciphertext || tag`. Fails if the tag does not match.
pub fn aes_gcm_open(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    sealed: &[u8],
    tag_len: usize,
) -> Result<Zeroizing<Vec<u8>>> {
    if nonce.is_empty() {
        return Err(Error::new("AES-GCM: empty nonce"));
    }
    if sealed.len() < tag_len {
        return Err(Error::new("AES-GCM: input shorter than the tag"));
    }
    let ctx = AeadCtx::gcm(key, tag_len)?;
    let mut out = Zeroizing::new(vec![0u8; sealed.len()]);
    let mut out_len = 0usize;
    // SAFETY: out has sealed.len() writable bytes (enough for the plaintext); nonce, sealed and aad are live slices with their lengths; ctx is valid.
    let rc = unsafe {
        sys::EVP_AEAD_CTX_open(
            ctx.0.as_ptr(),
            out.as_mut_ptr(),
            &mut out_len,
            out.len(),
            nonce.as_ptr(),
            nonce.len(),
            sealed.as_ptr(),
            sealed.len(),
            aad.as_ptr(),
            aad.len(),
        )
    };
    check(rc, "EVP_AEAD_CTX_open")?;
    if out_len > out.len() {
        return Err(Error::new("EVP_AEAD_CTX_open: length"));
    }
    out.truncate(out_len);
    Ok(out)
}

/// An expanded AES key on the stack, wiped on drop.
struct AesKey(sys::AES_KEY);

impl AesKey {
    fn new(key: &[u8], encrypt: bool) -> Result<AesKey> {
        let bits = to_c_uint(key.len().saturating_mul(8), "AES key length")?;
        if !matches!(bits, 128 | 192 | 256) {
            return Err(Error::new("AES key length"));
        }
        // SAFETY: AES_KEY is plain old data (round keys and a count); all zeros is a valid value, overwritten just below.
        let mut k = AesKey(unsafe { core::mem::zeroed() });
        // SAFETY: key holds bits/8 readable bytes; k.0 is a writable AES_KEY. These two functions return 0 on success (OpenSSL convention).
        let rc = unsafe {
            if encrypt {
                sys::AES_set_encrypt_key(key.as_ptr(), bits, &mut k.0)
            } else {
                sys::AES_set_decrypt_key(key.as_ptr(), bits, &mut k.0)
            }
        };
        if rc != 0 {
            return Err(Error::new("AES_set_key"));
        }
        Ok(k)
    }
}

impl Drop for AesKey {
    fn drop(&mut self) {
        let p: *mut sys::AES_KEY = &mut self.0;
        // SAFETY: p points to our own AES_KEY of exactly size_of::<AES_KEY>() bytes; OPENSSL_cleanse overwrites them in a way the compiler keeps.
        unsafe { sys::OPENSSL_cleanse(p.cast(), core::mem::size_of::<sys::AES_KEY>()) }
    }
}

/// RFC 3394 key wrap with the default IV. `input` must be at least 16 bytes
/// and a multiple of 8.
pub fn aes_key_wrap(kek: &[u8], input: &[u8]) -> Result<Vec<u8>> {
    if input.len() < 16 || input.len() % 8 != 0 {
        return Err(Error::new("AES_wrap_key: input length"));
    }
    let key = AesKey::new(kek, true)?;
    let mut out = vec![0u8; input.len() + 8];
    // SAFETY: out has input.len() + 8 writable bytes, exactly what RFC 3394 produces; a NULL IV selects the default; key is an expanded encryption key. Returns the output length, or -1.
    let rc = unsafe {
        sys::AES_wrap_key(
            &key.0,
            core::ptr::null(),
            out.as_mut_ptr(),
            input.as_ptr(),
            input.len(),
        )
    };
    if usize::try_from(rc).ok() != Some(out.len()) {
        return Err(Error::new("AES_wrap_key"));
    }
    Ok(out)
}

/// RFC 3394 key unwrap; fails if the integrity check fails.
pub fn aes_key_unwrap(kek: &[u8], input: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if input.len() < 24 || input.len() % 8 != 0 {
        return Err(Error::new("AES_unwrap_key: input length"));
    }
    let key = AesKey::new(kek, false)?;
    let mut out = Zeroizing::new(vec![0u8; input.len() - 8]);
    // SAFETY: out has input.len() - 8 writable bytes, exactly what unwrapping produces; a NULL IV selects the default; key is an expanded decryption key. Returns the output length, or -1.
    let rc = unsafe {
        sys::AES_unwrap_key(
            &key.0,
            core::ptr::null(),
            out.as_mut_ptr(),
            input.as_ptr(),
            input.len(),
        )
    };
    if usize::try_from(rc).ok() != Some(out.len()) {
        return Err(Error::new("AES_unwrap_key"));
    }
    Ok(out)
}

/// RFC 5649 key wrap with padding. `input` must not be empty.
pub fn aes_key_wrap_padded(kek: &[u8], input: &[u8]) -> Result<Vec<u8>> {
    if input.is_empty() {
        return Err(Error::new("AES_wrap_key_padded: input length"));
    }
    let key = AesKey::new(kek, true)?;
    let max_out = input
        .len()
        .checked_add(15)
        .map(|n| n / 8 * 8)
        .ok_or_else(|| Error::new("AES_wrap_key_padded: input length"))?;
    let mut out = vec![0u8; max_out];
    let mut out_len = 0usize;
    // SAFETY: out has max_out writable bytes (input rounded up to 8, plus 8), passed as max_out; input is a live slice; key is an encryption key.
    let rc = unsafe {
        sys::AES_wrap_key_padded(
            &key.0,
            out.as_mut_ptr(),
            &mut out_len,
            out.len(),
            input.as_ptr(),
            input.len(),
        )
    };
    check(rc, "AES_wrap_key_padded")?;
    if out_len > out.len() {
        return Err(Error::new("AES_wrap_key_padded: length"));
    }
    out.truncate(out_len);
    Ok(out)
}

/// RFC 5649 key unwrap with padding; fails if the integrity check fails.
pub fn aes_key_unwrap_padded(kek: &[u8], input: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if input.len() < 16 || input.len() % 8 != 0 {
        return Err(Error::new("AES_unwrap_key_padded: input length"));
    }
    let key = AesKey::new(kek, false)?;
    let mut out = Zeroizing::new(vec![0u8; input.len()]);
    let mut out_len = 0usize;
    // SAFETY: out has input.len() writable bytes, passed as max_out, more than unwrapping can produce; input is a live slice; key is a decryption key.
    let rc = unsafe {
        sys::AES_unwrap_key_padded(
            &key.0,
            out.as_mut_ptr(),
            &mut out_len,
            out.len(),
            input.as_ptr(),
            input.len(),
        )
    };
    check(rc, "AES_unwrap_key_padded")?;
    if out_len > out.len() {
        return Err(Error::new("AES_unwrap_key_padded: length"));
    }
    out.truncate(out_len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rfc3394_4_2_kek192_data128() {
        let kek = unhex("000102030405060708090A0B0C0D0E0F1011121314151617");
        let data = unhex("00112233445566778899AABBCCDDEEFF");
        let wrapped = aes_key_wrap(&kek, &data).unwrap();
        assert_eq!(wrapped, unhex("96778B25AE6CA435F92B5B97C050AED2468AB8A17AD84E5D"));
        assert_eq!(&aes_key_unwrap(&kek, &wrapped).unwrap()[..], &data[..]);
        let mut bad = wrapped.clone();
        bad[3] ^= 1;
        assert!(aes_key_unwrap(&kek, &bad).is_err());
    }

    #[test]
    fn rfc5649_6_kek192() {
        let kek = unhex("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8");
        let data = unhex("466f7250617369");
        let wrapped = aes_key_wrap_padded(&kek, &data).unwrap();
        assert_eq!(wrapped, unhex("afbeb0f07dfbf5419200f2ccb50bb24f"));
        assert_eq!(&aes_key_unwrap_padded(&kek, &wrapped).unwrap()[..], &data[..]);
        let data = unhex("c37b7e6492584340bed12207808941155068f738");
        let wrapped = aes_key_wrap_padded(&kek, &data).unwrap();
        assert_eq!(
            wrapped,
            unhex("138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a")
        );
    }

    #[test]
    fn gcm_truncated_tag_round_trip_and_tamper() {
        let key = [7u8; 24];
        let nonce = [1u8; 16];
        let ct = aes_gcm_seal(&key, &nonce, b"aad", b"hello world", 12).unwrap();
        assert_eq!(ct.len(), 11 + 12);
        assert_eq!(
            &aes_gcm_open(&key, &nonce, b"aad", &ct, 12).unwrap()[..],
            b"hello world"
        );
        assert!(aes_gcm_open(&key, &nonce, b"aaD", &ct, 12).is_err());
        assert!(aes_gcm_open(&key, &nonce, b"aad", &ct[..5], 12).is_err());
        assert!(aes_gcm_seal(&key, &[], b"", b"x", 16).is_err());
        assert!(aes_gcm_seal(&[0u8; 17], &nonce, b"", b"x", 16).is_err());
    }
}
