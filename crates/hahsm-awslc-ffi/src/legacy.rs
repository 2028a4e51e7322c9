//! The legacy primitives a partition offers only under its
//! `allow-legacy-mechanisms` policy, which aws-lc-rs does not expose:
//! three-key triple DES (ECB, CBC, CBC with PKCS#7 padding) and MD5.
use crate::{check, sys, to_c_int, Error, Result};
use core::ptr::{self, NonNull};
use zeroize::Zeroizing;

/// A triple-DES mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Des3Mode<'a> {
    Ecb,
    /// CBC without padding, from this 8-byte IV.
    Cbc(&'a [u8]),
    /// CBC with PKCS#7 padding, from this 8-byte IV.
    CbcPad(&'a [u8]),
}

/// Owned `EVP_CIPHER_CTX`, freed (and its key schedule wiped) on drop.
struct CipherCtx(NonNull<sys::EVP_CIPHER_CTX>);

impl Drop for CipherCtx {
    fn drop(&mut self) {
        // SAFETY: we own this context and free it exactly once; EVP_CIPHER_CTX_free cleans it (key schedule included) first.
        unsafe { sys::EVP_CIPHER_CTX_free(self.0.as_ptr()) }
    }
}

/// Encrypts or decrypts `data` with a 24-byte triple-DES key. Without
/// padding the input must be whole 8-byte blocks; with padding a decryption
/// fails if the padding is wrong. The output may be secret, so it is zeroized.
pub fn des3_crypt(key: &[u8], mode: Des3Mode<'_>, encrypt: bool, data: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if key.len() != 24 {
        return Err(Error::new("3DES: key length"));
    }
    let (iv, pad) = match mode {
        Des3Mode::Ecb => (None, false),
        Des3Mode::Cbc(iv) => (Some(iv), false),
        Des3Mode::CbcPad(iv) => (Some(iv), true),
    };
    if iv.is_some_and(|iv| iv.len() != 8) {
        return Err(Error::new("3DES: IV length"));
    }
    if !pad && data.len() % 8 != 0 {
        return Err(Error::new("3DES: not whole blocks"));
    }
    // SAFETY: the EVP_des_ede3*() functions take no arguments and return pointers to static, immutable method tables.
    let cipher = unsafe {
        if iv.is_some() {
            sys::EVP_des_ede3_cbc()
        } else {
            sys::EVP_des_ede3_ecb()
        }
    };
    // SAFETY: EVP_CIPHER_CTX_new takes no arguments; a non-NULL result is ours.
    let ctx = NonNull::new(unsafe { sys::EVP_CIPHER_CTX_new() })
        .map(CipherCtx)
        .ok_or_else(|| Error::new("EVP_CIPHER_CTX_new"))?;
    let iv_ptr = iv.map_or(ptr::null(), <[u8]>::as_ptr);
    // SAFETY: ctx is ours; cipher is static; key holds the 24 bytes the cipher reads and iv_ptr is NULL (ECB) or 8 readable bytes, both checked above; the engine is NULL (the default).
    let rc = unsafe {
        sys::EVP_CipherInit_ex(
            ctx.0.as_ptr(),
            cipher,
            ptr::null_mut(),
            key.as_ptr(),
            iv_ptr,
            i32::from(encrypt),
        )
    };
    check(rc, "EVP_CipherInit_ex")?;
    // SAFETY: ctx was initialised just above.
    let rc = unsafe { sys::EVP_CIPHER_CTX_set_padding(ctx.0.as_ptr(), i32::from(pad)) };
    check(rc, "EVP_CIPHER_CTX_set_padding")?;
    let in_len = to_c_int(data.len(), "3DES: input length")?;
    // One block more than the input: room for the padding block.
    let mut out = Zeroizing::new(vec![0u8; data.len() + 8]);
    let mut n: i32 = 0;
    let (c, o) = (ctx.0.as_ptr(), out.as_mut_ptr());
    // SAFETY: out has data.len() + 8 writable bytes, as much as EVP_CipherUpdate may write for data.len() input bytes of an 8-byte block cipher; data is a live slice.
    let rc = unsafe { sys::EVP_CipherUpdate(c, o, &mut n, data.as_ptr(), in_len) };
    check(rc, "EVP_CipherUpdate")?;
    let first = usize::try_from(n).map_err(|_| Error::new("EVP_CipherUpdate: length"))?;
    if first > out.len() {
        return Err(Error::new("EVP_CipherUpdate: length"));
    }
    let mut m: i32 = 0;
    // SAFETY: out[first..] has at least 8 writable bytes left (first <= data.len() rounded down to blocks), the most EVP_CipherFinal_ex writes.
    let rc = unsafe { sys::EVP_CipherFinal_ex(ctx.0.as_ptr(), out.as_mut_ptr().add(first), &mut m) };
    check(rc, "EVP_CipherFinal_ex")?;
    let last = usize::try_from(m).map_err(|_| Error::new("EVP_CipherFinal_ex: length"))?;
    let total = first + last;
    if total > out.len() {
        return Err(Error::new("EVP_CipherFinal_ex: length"));
    }
    out.truncate(total);
    Ok(out)
}

/// The MD5 digest of `data`.
pub fn md5(data: &[u8]) -> Result<[u8; 16]> {
    let mut out = [0u8; 16];
    let mut out_len: core::ffi::c_uint = 0;
    // SAFETY: data is a live slice passed with its length; out has the 16 bytes an MD5 digest takes (EVP_MAX_MD_SIZE is not needed for a known digest); EVP_md5() is a static method table; the engine is NULL (the default).
    let rc = unsafe {
        sys::EVP_Digest(
            data.as_ptr().cast(),
            data.len(),
            out.as_mut_ptr(),
            &mut out_len,
            sys::EVP_md5(),
            ptr::null_mut(),
        )
    };
    check(rc, "EVP_Digest")?;
    if out_len != 16 {
        return Err(Error::new("EVP_Digest: length"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn md5_matches_rfc_1321() {
        assert_eq!(
            md5(b"").unwrap().to_vec(),
            hex("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(
            md5(b"abc").unwrap().to_vec(),
            hex("900150983cd24fb0d6963f7d28e17f72")
        );
    }

    #[test]
    fn des3_matches_sp_800_67_example() {
        // NIST SP 800-67 Rev. 2, Appendix B: three keys, ECB.
        let key = hex("0123456789ABCDEF23456789ABCDEF01456789ABCDEF0123");
        let pt = b"The qufck brown fox jump";
        let ct = des3_crypt(&key, Des3Mode::Ecb, true, pt).unwrap();
        assert_eq!(
            ct.to_vec(),
            hex("A826FD8CE53B855FCCE21C8112256FE668D5C05DD9B6B900")
        );
        let back = des3_crypt(&key, Des3Mode::Ecb, false, &ct).unwrap();
        assert_eq!(back.as_slice(), pt);
    }

    #[test]
    fn des3_cbc_pad_round_trips_and_checks_padding() {
        let key = hex("0123456789ABCDEF23456789ABCDEF01456789ABCDEF0123");
        let iv = [7u8; 8];
        for len in [0, 1, 7, 8, 9, 100] {
            let pt = vec![0x42u8; len];
            let ct = des3_crypt(&key, Des3Mode::CbcPad(&iv), true, &pt).unwrap();
            assert_eq!(ct.len(), (len / 8 + 1) * 8);
            let back = des3_crypt(&key, Des3Mode::CbcPad(&iv), false, &ct).unwrap();
            assert_eq!(back.as_slice(), pt.as_slice());
        }
        let mut ct = des3_crypt(&key, Des3Mode::CbcPad(&iv), true, b"x")
            .unwrap()
            .to_vec();
        ct[7] ^= 0xff;
        assert!(des3_crypt(&key, Des3Mode::CbcPad(&iv), false, &ct).is_err());
        assert!(des3_crypt(&key, Des3Mode::Cbc(&iv), true, b"seven b").is_err());
        assert!(des3_crypt(&key[..16], Des3Mode::Ecb, true, &[0; 8]).is_err());
        assert!(des3_crypt(&key, Des3Mode::Cbc(&iv[..4]), true, &[0; 8]).is_err());
    }
}
