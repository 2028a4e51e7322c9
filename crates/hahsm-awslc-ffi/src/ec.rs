//! ECDSA over a precomputed digest with the fixed-width `r || s` encoding
//! (`CKM_ECDSA`, and the `CKM_ECDSA_SHA*` curve/hash pairs aws-lc-rs lacks).
use crate::bn::{self, Bn};
use crate::{check, sys, Error, Pkey, Result};
use core::ptr::{self, NonNull};

/// The NIST curves hahsm supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EcCurve {
    P256,
    P384,
    P521,
}

impl EcCurve {
    fn nid(self) -> i32 {
        match self {
            EcCurve::P256 => sys::NID_X9_62_prime256v1,
            EcCurve::P384 => sys::NID_secp384r1,
            EcCurve::P521 => sys::NID_secp521r1,
        }
    }

    fn from_nid(nid: i32) -> Option<EcCurve> {
        match nid {
            sys::NID_X9_62_prime256v1 => Some(EcCurve::P256),
            sys::NID_secp384r1 => Some(EcCurve::P384),
            sys::NID_secp521r1 => Some(EcCurve::P521),
            _ => None,
        }
    }

    /// Bytes of one field element (and of `r` and `s` in a signature).
    pub const fn field_len(self) -> usize {
        match self {
            EcCurve::P256 => 32,
            EcCurve::P384 => 48,
            EcCurve::P521 => 66,
        }
    }
}

/// An EC key (private, or public only) parsed once and used from any thread.
pub struct EcKey {
    key: NonNull<sys::EC_KEY>,
    curve: EcCurve,
    private: bool,
}

// SAFETY: we own one reference to the EC_KEY. After construction it is only
// passed to AWS-LC functions taking `const EC_KEY *` (ECDSA_do_sign,
// ECDSA_do_verify, getters), which AWS-LC documents as non-mutating and safe
// to call concurrently from several threads (ec_key.h, "thread-safety").
unsafe impl Send for EcKey {}
// SAFETY: see the `Send` impl above.
unsafe impl Sync for EcKey {}

impl core::fmt::Debug for EcKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EcKey")
            .field("curve", &self.curve)
            .field("private", &self.private)
            .finish_non_exhaustive()
    }
}

impl Drop for EcKey {
    fn drop(&mut self) {
        // SAFETY: we own one reference to this EC_KEY and release it once. EC_KEY_free wipes the private scalar.
        unsafe { sys::EC_KEY_free(self.key.as_ptr()) }
    }
}

/// Owned `EC_POINT`.
struct Point(NonNull<sys::EC_POINT>);

impl Drop for Point {
    fn drop(&mut self) {
        // SAFETY: we own this point and free it exactly once.
        unsafe { sys::EC_POINT_free(self.0.as_ptr()) }
    }
}

/// Owned `ECDSA_SIG`.
struct Sig(NonNull<sys::ECDSA_SIG>);

impl Drop for Sig {
    fn drop(&mut self) {
        // SAFETY: we own this signature object and free it exactly once.
        unsafe { sys::ECDSA_SIG_free(self.0.as_ptr()) }
    }
}

impl EcKey {
    fn curve_of(key: *const sys::EC_KEY) -> Result<EcCurve> {
        // SAFETY: key is a valid EC_KEY; the group pointer is owned by it.
        let group = unsafe { sys::EC_KEY_get0_group(key) };
        if group.is_null() {
            return Err(Error::new("EC_KEY_get0_group"));
        }
        // SAFETY: group is a valid EC_GROUP (non-NULL, owned by key).
        let nid = unsafe { sys::EC_GROUP_get_curve_name(group) };
        EcCurve::from_nid(nid).ok_or_else(|| Error::new("unsupported curve"))
    }

    /// Parses an unencrypted PKCS#8 EC private key on P-256, P-384 or P-521.
    pub fn from_pkcs8(der: &[u8]) -> Result<EcKey> {
        let pkey = Pkey::parse_private(der)?;
        if pkey.id() != sys::EVP_PKEY_EC {
            return Err(Error::new("not an EC key"));
        }
        // SAFETY: pkey is a valid EC EVP_PKEY; get1 returns a new reference that we own (and release in EcKey::drop).
        let key = unsafe { sys::EVP_PKEY_get1_EC_KEY(pkey.as_ptr()) };
        let key = NonNull::new(key).ok_or_else(|| Error::new("EVP_PKEY_get1_EC_KEY"))?;
        let mut out = EcKey {
            key,
            curve: EcCurve::P256,
            private: true,
        };
        out.curve = EcKey::curve_of(key.as_ptr())?;
        // SAFETY: key is valid; EC_KEY_check_key only reads it.
        let rc = unsafe { sys::EC_KEY_check_key(key.as_ptr()) };
        check(rc, "EC_KEY_check_key")?;
        Ok(out)
    }

    /// A public key from an uncompressed (or compressed) SEC1 point; the point
    /// must be on the curve.
    pub fn from_public_point(curve: EcCurve, point: &[u8]) -> Result<EcKey> {
        // SAFETY: a known NID; a non-NULL result is a new EC_KEY we own.
        let key = unsafe { sys::EC_KEY_new_by_curve_name(curve.nid()) };
        let key = NonNull::new(key).ok_or_else(|| Error::new("EC_KEY_new_by_curve_name"))?;
        let out = EcKey {
            key,
            curve,
            private: false,
        };
        // SAFETY: key is valid; the group is owned by it.
        let group = unsafe { sys::EC_KEY_get0_group(key.as_ptr()) };
        if group.is_null() {
            return Err(Error::new("EC_KEY_get0_group"));
        }
        // SAFETY: group is a valid EC_GROUP; a non-NULL result is ours.
        let p = unsafe { sys::EC_POINT_new(group) };
        let p = Point(NonNull::new(p).ok_or_else(|| Error::new("EC_POINT_new"))?);
        // SAFETY: group and p are valid and p belongs to group; point is a live slice; a NULL BN_CTX is allowed. Fails for points off the curve.
        let rc = unsafe {
            sys::EC_POINT_oct2point(group, p.0.as_ptr(), point.as_ptr(), point.len(), ptr::null_mut())
        };
        check(rc, "EC_POINT_oct2point")?;
        // SAFETY: the key is ours and not yet shared, so mutating it is fine; EC_KEY_set_public_key copies the point.
        let rc = unsafe { sys::EC_KEY_set_public_key(key.as_ptr(), p.0.as_ptr()) };
        check(rc, "EC_KEY_set_public_key")?;
        // SAFETY: key is valid; EC_KEY_check_key only reads it.
        let rc = unsafe { sys::EC_KEY_check_key(key.as_ptr()) };
        check(rc, "EC_KEY_check_key")?;
        Ok(out)
    }

    pub fn curve(&self) -> EcCurve {
        self.curve
    }

    pub fn is_private(&self) -> bool {
        self.private
    }

    /// Signs a precomputed digest of any length (AWS-LC truncates it to the
    /// order's bit length as ECDSA specifies). Returns `r || s`, each
    /// left-padded to the field length.
    pub fn sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>> {
        if !self.private {
            return Err(Error::new("not a private key"));
        }
        // SAFETY: digest is a live slice passed with its length; the key is a valid private EC_KEY used through a const pointer (non-mutating). A non-NULL result is a new ECDSA_SIG we own.
        let sig = unsafe { sys::ECDSA_do_sign(digest.as_ptr(), digest.len(), self.key.as_ptr()) };
        let sig = Sig(NonNull::new(sig).ok_or_else(|| Error::new("ECDSA_do_sign"))?);
        let mut r: *const sys::BIGNUM = ptr::null();
        let mut s: *const sys::BIGNUM = ptr::null();
        // SAFETY: sig is valid; the out pointers are live locals. r and s stay owned by sig, which outlives their use below.
        unsafe { sys::ECDSA_SIG_get0(sig.0.as_ptr(), &mut r, &mut s) };
        let n = self.curve.field_len();
        let mut out = vec![0u8; 2 * n];
        let (r_out, s_out) = out.split_at_mut(n);
        bn::to_be_padded(r, r_out)?;
        bn::to_be_padded(s, s_out)?;
        Ok(out)
    }

    /// Verifies a fixed-width `r || s` signature over a precomputed digest.
    /// Any failure, including a wrong length, is `false`.
    pub fn verify_digest(&self, digest: &[u8], signature: &[u8]) -> bool {
        let ok = self.verify_inner(digest, signature).unwrap_or(false);
        if !ok {
            crate::clear_error_queue();
        }
        ok
    }

    fn verify_inner(&self, digest: &[u8], signature: &[u8]) -> Result<bool> {
        let n = self.curve.field_len();
        if signature.len() != 2 * n {
            return Ok(false);
        }
        let (r, s) = signature.split_at(n);
        let r = Bn::from_be(r)?;
        let s = Bn::from_be(s)?;
        // SAFETY: ECDSA_SIG_new takes no arguments; a non-NULL result is ours.
        let sig = unsafe { sys::ECDSA_SIG_new() };
        let sig = Sig(NonNull::new(sig).ok_or_else(|| Error::new("ECDSA_SIG_new"))?);
        let (r, s) = (r.into_raw(), s.into_raw());
        // SAFETY: sig, r and s are valid; on success sig takes ownership of r and s (freed with sig).
        let rc = unsafe { sys::ECDSA_SIG_set0(sig.0.as_ptr(), r, s) };
        if rc != 1 {
            // SAFETY: set0 failed, so r and s are still ours: free them once.
            unsafe {
                sys::BN_free(r);
                sys::BN_free(s);
            }
            return Err(Error::new("ECDSA_SIG_set0"));
        }
        let (sig, key) = (sig.0.as_ptr(), self.key.as_ptr());
        // SAFETY: digest is a live slice with its length; sig and the key are valid and used through const pointers (non-mutating).
        let rc = unsafe { sys::ECDSA_do_verify(digest.as_ptr(), digest.len(), sig, key) };
        Ok(rc == 1)
    }
}
