//! The one place in hahsm with `unsafe` code: a thin wrapper over `aws-lc-sys`
//! for the few operations that `aws-lc-rs`'s safe API does not offer and that
//! PKCS#11 needs.
//!
//! - RSA: PKCS#1 v1.5 signing of a caller-built `DigestInfo` (`CKM_RSA_PKCS`),
//!   the raw RSA permutation in both directions (`CKM_RSA_X_509`), RSA-PSS over a
//!   precomputed digest with any salt length and MGF1 hash (`CKM_RSA_PKCS_PSS`),
//!   OAEP with a hash and MGF1 hash that differ, and private keys built from
//!   components whose CRT values have to be computed.
//! - ECDSA over a precomputed digest of any length, with the fixed-width
//!   `r || s` signature encoding PKCS#11 uses (`CKM_ECDSA`).
//! - AES-GCM with nonces other than 96 bits and truncated tags.
//! - AES key wrap (RFC 3394 / RFC 5649) with 192-bit key-encryption keys.
//! - ML-DSA (FIPS 204): keys from the 32-byte seed, pure signing with a
//!   context string, and signing an external mu for HashML-DSA, none of which
//!   aws-lc-rs 1.19 offers (`mldsa.rs`); SHAKE128/256 for HashML-DSA.
//! - The legacy primitives (triple DES, MD5, RSA below 2048 bits: generation
//!   and PKCS#1 v1.5 encryption) that a partition offers only under its
//!   `allow-legacy-mechanisms` policy.
//!
//! Rules the module keeps: every `unsafe` block has a `// SAFETY:` comment on
//! the line above it; every return code is checked; every AWS-LC object lives in
//! an RAII wrapper whose `Drop` frees it; secret outputs come back as
//! `Zeroizing` buffers; errors name only the failing call, never data.
//!
//! The types here are deliberately small and dumb. Policy (which mechanism,
//! which lengths are allowed, which error code PKCS#11 wants) lives in
//! `hahsm-crypto`, which is `#![forbid(unsafe_code)]`.

#![deny(clippy::undocumented_unsafe_blocks)]

// The FIPS build calls the same functions in AWS-LC's FIPS module, the copy
// aws-lc-rs links under its `fips` feature, so keys made by either side are
// objects of one library. Every function used here exists in both (checked
// against aws-lc-fips-sys 0.14's bindings).
#[cfg(feature = "fips")]
use aws_lc_fips_sys as sys;
#[cfg(not(feature = "fips"))]
use aws_lc_sys as sys;
use core::fmt;
use core::ptr::NonNull;
use std::os::raw::{c_int, c_uint};

mod aes;
mod bn;
mod ec;
mod legacy;
mod mldsa;
mod rsa;

pub use aes::{
    aes_gcm_open, aes_gcm_seal, aes_key_unwrap, aes_key_unwrap_padded, aes_key_wrap, aes_key_wrap_padded,
};
pub use ec::{EcCurve, EcKey};
pub use legacy::{des3_crypt, md5, Des3Mode};
pub use mldsa::{xof, MlDsaKey, MlDsaLevel, Xof, ML_DSA_MAX_CONTEXT, ML_DSA_MU_LEN, ML_DSA_SEED_LEN};
pub use rsa::{rsa_crt_params, RsaCrt, RsaKey};

/// A failed AWS-LC call. Carries the name of the call only: never key
/// material or data. AWS-LC's thread-local error queue is cleared when the
/// error is made, so failures do not pile up on long-lived worker threads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Error {
    call: &'static str,
}

impl Error {
    fn new(call: &'static str) -> Self {
        clear_error_queue();
        Error { call }
    }

    /// The AWS-LC function (or the check in this crate) that failed.
    pub fn call(&self) -> &'static str {
        self.call
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({})", self.call)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "aws-lc: {} failed", self.call)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = core::result::Result<T, Error>;

fn clear_error_queue() {
    // SAFETY: ERR_clear_error takes no arguments and only touches the calling thread's own error queue.
    unsafe { sys::ERR_clear_error() }
}

/// Turns an AWS-LC "1 on success" return code into a `Result`.
fn check(rc: c_int, call: &'static str) -> Result<()> {
    if rc == 1 {
        Ok(())
    } else {
        Err(Error::new(call))
    }
}

/// The hash functions PKCS#11 mechanisms name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hash {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    /// Digest length in bytes.
    pub const fn output_len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha224 => 28,
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    fn md(self) -> *const sys::EVP_MD {
        // SAFETY: the EVP_sha*() functions take no arguments and return pointers to static, immutable method tables that live for the whole process; they are never freed.
        unsafe {
            match self {
                Hash::Sha1 => sys::EVP_sha1(),
                Hash::Sha224 => sys::EVP_sha224(),
                Hash::Sha256 => sys::EVP_sha256(),
                Hash::Sha384 => sys::EVP_sha384(),
                Hash::Sha512 => sys::EVP_sha512(),
            }
        }
    }
}

/// Owned `EVP_PKEY`, freed on drop.
struct Pkey(NonNull<sys::EVP_PKEY>);

impl Pkey {
    fn from_raw(p: *mut sys::EVP_PKEY, call: &'static str) -> Result<Self> {
        NonNull::new(p).map(Pkey).ok_or_else(|| Error::new(call))
    }

    fn as_ptr(&self) -> *mut sys::EVP_PKEY {
        self.0.as_ptr()
    }

    /// Parses an unencrypted PKCS#8 `PrivateKeyInfo`; the whole input must be
    /// consumed.
    fn parse_private(der: &[u8]) -> Result<Self> {
        let mut cbs = sys::CBS {
            data: der.as_ptr(),
            len: der.len(),
        };
        // SAFETY: `cbs` points into `der`, which outlives the call; the parser only reads through it and advances it. A non-NULL result is a new EVP_PKEY we own.
        let p = unsafe { sys::EVP_parse_private_key(&mut cbs) };
        let key = Pkey::from_raw(p, "EVP_parse_private_key")?;
        if cbs.len != 0 {
            return Err(Error::new("EVP_parse_private_key: trailing data"));
        }
        Ok(key)
    }

    fn id(&self) -> c_int {
        // SAFETY: self.0 is a valid EVP_PKEY for as long as `self` lives.
        unsafe { sys::EVP_PKEY_id(self.as_ptr()) }
    }
}

impl Drop for Pkey {
    fn drop(&mut self) {
        // SAFETY: we own one reference to this EVP_PKEY and give it up exactly once, here.
        unsafe { sys::EVP_PKEY_free(self.0.as_ptr()) }
    }
}

// SAFETY: an EVP_PKEY may be used from several threads at once by AWS-LC's
// non-mutating functions (those that take a `const` pointer, plus the RSA and
// ECDSA private-key operations that AWS-LC documents as non-mutating: they
// guard their lazily built caches with the key's internal lock). Every
// function of this crate that touches a shared key is one of those; the only
// mutations happen while a key is being built and is not yet shared. ML-DSA
// signing and verification build a context of their own per call (which
// takes its reference with an atomic up-ref) and only read the key's
// private and public parts. This is the same reasoning aws-lc-rs uses for
// its own Send + Sync key types.
unsafe impl Send for Pkey {}
// SAFETY: see the `Send` impl above.
unsafe impl Sync for Pkey {}

/// Converts a length to `c_int`, failing instead of truncating.
fn to_c_int(v: usize, what: &'static str) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| Error::new(what))
}

fn to_c_uint(v: usize, what: &'static str) -> Result<c_uint> {
    c_uint::try_from(v).map_err(|_| Error::new(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_call_only() {
        let e = Error::new("RSA_sign_raw");
        assert_eq!(e.to_string(), "aws-lc: RSA_sign_raw failed");
        assert_eq!(format!("{e:?}"), "Error(RSA_sign_raw)");
    }

    #[test]
    fn garbage_is_not_a_private_key() {
        assert!(Pkey::parse_private(&[]).is_err());
        assert!(Pkey::parse_private(&[0x30, 0x03, 0x02, 0x01, 0x00]).is_err());
    }
}
