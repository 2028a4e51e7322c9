//! Owned `BIGNUM`s and a `BN_CTX`, wiped and freed on drop.
use crate::{check, sys, Error, Result};
use core::ptr::{self, NonNull};
use zeroize::Zeroizing;

/// An owned `BIGNUM`. Dropping it wipes it (`BN_clear_free`): we use the same
/// type for public and secret values.
pub(crate) struct Bn(NonNull<sys::BIGNUM>);

impl Bn {
    pub(crate) fn new() -> Result<Bn> {
        // SAFETY: BN_new takes no arguments; a non-NULL result is ours.
        let p = unsafe { sys::BN_new() };
        NonNull::new(p).map(Bn).ok_or_else(|| Error::new("BN_new"))
    }

    /// A big-endian unsigned integer.
    pub(crate) fn from_be(bytes: &[u8]) -> Result<Bn> {
        // SAFETY: BN_bin2bn reads exactly bytes.len() bytes from a live slice; with `ret` NULL it allocates a new BIGNUM, which we then own.
        let p = unsafe { sys::BN_bin2bn(bytes.as_ptr(), bytes.len(), ptr::null_mut()) };
        NonNull::new(p).map(Bn).ok_or_else(|| Error::new("BN_bin2bn"))
    }

    pub(crate) fn as_ptr(&self) -> *const sys::BIGNUM {
        self.0.as_ptr()
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut sys::BIGNUM {
        self.0.as_ptr()
    }

    /// Gives up ownership, for AWS-LC calls that take it (`*_set0`).
    pub(crate) fn into_raw(self) -> *mut sys::BIGNUM {
        let p = self.0.as_ptr();
        core::mem::forget(self);
        p
    }

    pub(crate) fn is_zero(&self) -> bool {
        // SAFETY: self.0 is a valid BIGNUM; BN_is_zero only reads it.
        unsafe { sys::BN_is_zero(self.as_ptr()) == 1 }
    }
}

impl Drop for Bn {
    fn drop(&mut self) {
        // SAFETY: we own this BIGNUM and free it exactly once; BN_clear_free zeroes its limbs first.
        unsafe { sys::BN_clear_free(self.0.as_ptr()) }
    }
}

/// Minimal big-endian encoding (no leading zeros; empty for zero).
pub(crate) fn to_be(bn: *const sys::BIGNUM) -> Result<Zeroizing<Vec<u8>>> {
    if bn.is_null() {
        return Err(Error::new("BIGNUM missing"));
    }
    // SAFETY: bn is a non-NULL BIGNUM owned by a live object of the caller.
    let len = unsafe { sys::BN_num_bytes(bn) } as usize;
    let mut out = Zeroizing::new(vec![0u8; len]);
    // SAFETY: out has exactly BN_num_bytes(bn) writable bytes, which is what BN_bn2bin writes.
    let written = unsafe { sys::BN_bn2bin(bn, out.as_mut_ptr()) };
    if written != len {
        return Err(Error::new("BN_bn2bin"));
    }
    Ok(out)
}

/// Fixed-width big-endian encoding, left-padded with zeros.
pub(crate) fn to_be_padded(bn: *const sys::BIGNUM, out: &mut [u8]) -> Result<()> {
    if bn.is_null() {
        return Err(Error::new("BIGNUM missing"));
    }
    // SAFETY: out is a live, writable slice of out.len() bytes; bn is a non-NULL BIGNUM owned by a live object of the caller. The call fails (returns 0) rather than overflow if bn does not fit.
    let rc = unsafe { sys::BN_bn2bin_padded(out.as_mut_ptr(), out.len(), bn) };
    check(rc, "BN_bn2bin_padded")
}

/// An owned `BN_CTX` (scratch space for modular arithmetic).
pub(crate) struct BnCtx(NonNull<sys::BN_CTX>);

impl BnCtx {
    pub(crate) fn new() -> Result<BnCtx> {
        // SAFETY: BN_CTX_new takes no arguments; a non-NULL result is ours.
        let p = unsafe { sys::BN_CTX_new() };
        NonNull::new(p).map(BnCtx).ok_or_else(|| Error::new("BN_CTX_new"))
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut sys::BN_CTX {
        self.0.as_ptr()
    }
}

impl Drop for BnCtx {
    fn drop(&mut self) {
        // SAFETY: we own this BN_CTX and free it exactly once.
        unsafe { sys::BN_CTX_free(self.0.as_ptr()) }
    }
}
