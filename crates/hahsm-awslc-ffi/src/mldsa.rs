//! ML-DSA (FIPS 204) through AWS-LC's EVP interface.
//!
//! Why FFI: aws-lc-rs 1.19's `PqdsaKeyPair` signs with an empty context
//! string only, and has neither keys built from the 32-byte seed ξ nor the
//! external-mu entry point that HashML-DSA needs. AWS-LC itself has all three:
//! `EVP_PKEY_pqdsa_new_raw_private_key` expands a seed, `EVP_DigestSign` after
//! `EVP_PKEY_CTX_set_signature_context` signs pure ML-DSA with a context, and
//! `EVP_PKEY_sign` signs a caller-computed mu (FIPS 204 Algorithm 7, line 6).
//! AWS-LC signs hedged only (fresh randomness in every signature): there is no
//! public deterministic-signing call.
use crate::rsa::PkeyCtx;
use crate::{check, sys, Error, Pkey, Result};
use core::ptr::{self, NonNull};

/// The three FIPS 204 parameter sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MlDsaLevel {
    P44,
    P65,
    P87,
}

impl MlDsaLevel {
    fn nid(self) -> i32 {
        match self {
            MlDsaLevel::P44 => sys::NID_MLDSA44,
            MlDsaLevel::P65 => sys::NID_MLDSA65,
            MlDsaLevel::P87 => sys::NID_MLDSA87,
        }
    }

    /// Bytes of the encoded public key.
    pub const fn public_len(self) -> usize {
        match self {
            MlDsaLevel::P44 => 1312,
            MlDsaLevel::P65 => 1952,
            MlDsaLevel::P87 => 2592,
        }
    }

    /// Bytes of a signature.
    pub const fn signature_len(self) -> usize {
        match self {
            MlDsaLevel::P44 => 2420,
            MlDsaLevel::P65 => 3309,
            MlDsaLevel::P87 => 4627,
        }
    }
}

/// Bytes of the key-generation seed ξ.
pub const ML_DSA_SEED_LEN: usize = 32;
/// Bytes of mu, the message representative `EVP_PKEY_sign` takes.
pub const ML_DSA_MU_LEN: usize = 64;
/// The longest context string FIPS 204 allows.
pub const ML_DSA_MAX_CONTEXT: usize = 255;

/// An ML-DSA key (private with its public half, or public only), parsed once
/// and used from any thread.
pub struct MlDsaKey {
    pkey: Pkey,
    level: MlDsaLevel,
    private: bool,
}

impl core::fmt::Debug for MlDsaKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MlDsaKey")
            .field("level", &self.level)
            .field("private", &self.private)
            .finish_non_exhaustive()
    }
}

/// Owned `EVP_MD_CTX`.
struct MdCtx(NonNull<sys::EVP_MD_CTX>);

impl MdCtx {
    fn new() -> Result<MdCtx> {
        // SAFETY: EVP_MD_CTX_new takes no arguments; a non-NULL result is a new context we own.
        let p = unsafe { sys::EVP_MD_CTX_new() };
        NonNull::new(p)
            .map(MdCtx)
            .ok_or_else(|| Error::new("EVP_MD_CTX_new"))
    }
}

impl Drop for MdCtx {
    fn drop(&mut self) {
        // SAFETY: we own this context (and the EVP_PKEY_CTX it may hold) and free it exactly once.
        unsafe { sys::EVP_MD_CTX_free(self.0.as_ptr()) }
    }
}

impl MlDsaKey {
    /// The key pair FIPS 204 `ML-DSA.KeyGen_internal(ξ)` makes from a 32-byte
    /// seed: the same seed always gives the same key.
    pub fn from_seed(level: MlDsaLevel, seed: &[u8]) -> Result<MlDsaKey> {
        if seed.len() != ML_DSA_SEED_LEN {
            return Err(Error::new("ML-DSA seed length"));
        }
        // SAFETY: seed is a live slice passed with its length; AWS-LC copies it (and the expanded key it derives) into the new EVP_PKEY. A non-NULL result is ours.
        let p = unsafe { sys::EVP_PKEY_pqdsa_new_raw_private_key(level.nid(), seed.as_ptr(), seed.len()) };
        let pkey = Pkey::from_raw(p, "EVP_PKEY_pqdsa_new_raw_private_key")?;
        Ok(MlDsaKey {
            pkey,
            level,
            private: true,
        })
    }

    /// A public key from its FIPS 204 encoding (`pkEncode`); only the length
    /// can be wrong, every byte string of the right length decodes.
    pub fn from_public(level: MlDsaLevel, public: &[u8]) -> Result<MlDsaKey> {
        if public.len() != level.public_len() {
            return Err(Error::new("ML-DSA public key length"));
        }
        // SAFETY: public is a live slice passed with its length; AWS-LC copies it. A non-NULL result is ours.
        let p = unsafe { sys::EVP_PKEY_pqdsa_new_raw_public_key(level.nid(), public.as_ptr(), public.len()) };
        let pkey = Pkey::from_raw(p, "EVP_PKEY_pqdsa_new_raw_public_key")?;
        Ok(MlDsaKey {
            pkey,
            level,
            private: false,
        })
    }

    pub fn level(&self) -> MlDsaLevel {
        self.level
    }

    pub fn is_private(&self) -> bool {
        self.private
    }

    /// The encoded public key.
    pub fn public_key(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.level.public_len()];
        let mut len = out.len();
        // SAFETY: the key is valid and read through a const pointer; out is a live buffer of `len` bytes, and AWS-LC writes at most `len` bytes and stores the count in `len`.
        let rc = unsafe { sys::EVP_PKEY_get_raw_public_key(self.pkey.as_ptr(), out.as_mut_ptr(), &mut len) };
        check(rc, "EVP_PKEY_get_raw_public_key")?;
        if len != out.len() {
            return Err(Error::new("EVP_PKEY_get_raw_public_key: length"));
        }
        Ok(out)
    }

    /// A digest context set up for one pure ML-DSA signature or verification
    /// with `context` (at most 255 bytes).
    fn message_ctx(&self, context: &[u8], sign: bool) -> Result<MdCtx> {
        if context.len() > ML_DSA_MAX_CONTEXT {
            return Err(Error::new("ML-DSA context length"));
        }
        let md = MdCtx::new()?;
        let mut pctx: *mut sys::EVP_PKEY_CTX = ptr::null_mut();
        let (m, k) = (md.0.as_ptr(), self.pkey.as_ptr());
        let (rc, call) = if sign {
            // SAFETY: md and the key are valid; a NULL EVP_MD is what one-shot schemes take. On success `pctx` points to a context owned by md (freed with it), which takes its own reference to the key.
            let rc = unsafe { sys::EVP_DigestSignInit(m, &mut pctx, ptr::null(), ptr::null_mut(), k) };
            (rc, "EVP_DigestSignInit")
        } else {
            // SAFETY: as for EVP_DigestSignInit above.
            let rc = unsafe { sys::EVP_DigestVerifyInit(m, &mut pctx, ptr::null(), ptr::null_mut(), k) };
            (rc, "EVP_DigestVerifyInit")
        };
        check(rc, call)?;
        if pctx.is_null() {
            return Err(Error::new("EVP_Digest*Init: no EVP_PKEY_CTX"));
        }
        if !context.is_empty() {
            let (ctx_ptr, ctx_len) = (context.as_ptr(), context.len());
            // SAFETY: pctx is the valid context md owns, and only this thread has it; context is a live slice with its length, which AWS-LC copies.
            let rc = unsafe { sys::EVP_PKEY_CTX_set_signature_context(pctx, ctx_ptr, ctx_len) };
            check(rc, "EVP_PKEY_CTX_set_signature_context")?;
        }
        Ok(md)
    }

    /// Pure ML-DSA (FIPS 204 Algorithm 2, hedged) of `message` under
    /// `context`.
    pub fn sign(&self, message: &[u8], context: &[u8]) -> Result<Vec<u8>> {
        if !self.private {
            return Err(Error::new("not a private key"));
        }
        #[cfg(feature = "fips")]
        if !context.is_empty() {
            return self.sign_mu(&self.mu(message, context)?);
        }
        let md = self.message_ctx(context, true)?;
        let mut out = vec![0u8; self.level.signature_len()];
        let mut len = out.len();
        // SAFETY: md is a sign-initialised context; out is a live buffer of `len` bytes (the signature length), message a live slice with its length.
        let rc = unsafe {
            sys::EVP_DigestSign(
                md.0.as_ptr(),
                out.as_mut_ptr(),
                &mut len,
                message.as_ptr(),
                message.len(),
            )
        };
        check(rc, "EVP_DigestSign")?;
        if len != out.len() {
            return Err(Error::new("EVP_DigestSign: length"));
        }
        Ok(out)
    }

    /// Verifies a pure ML-DSA signature (FIPS 204 Algorithm 3). Any failure,
    /// including a wrong length or a context over 255 bytes, is `false`.
    pub fn verify(&self, message: &[u8], context: &[u8], signature: &[u8]) -> bool {
        let ok = self.verify_inner(message, context, signature).unwrap_or(false);
        if !ok {
            crate::clear_error_queue();
        }
        ok
    }

    fn verify_inner(&self, message: &[u8], context: &[u8], signature: &[u8]) -> Result<bool> {
        if signature.len() != self.level.signature_len() {
            return Ok(false);
        }
        #[cfg(feature = "fips")]
        if !context.is_empty() {
            return self.verify_mu_inner(&self.mu(message, context)?, signature);
        }
        let md = self.message_ctx(context, false)?;
        // SAFETY: md is a verify-initialised context; signature and message are live slices passed with their lengths.
        let rc = unsafe {
            sys::EVP_DigestVerify(
                md.0.as_ptr(),
                signature.as_ptr(),
                signature.len(),
                message.as_ptr(),
                message.len(),
            )
        };
        Ok(rc == 1)
    }

    /// Pure ML-DSA's mu for `message` under `context` (FIPS 204 Algorithm 2
    /// line 10 and Algorithm 7 line 6): SHAKE256(SHAKE256(pk, 64) || 0 ||
    /// len(ctx) || ctx || M, 64). The FIPS module (AWS-LC-FIPS 4.2.0) has no
    /// `EVP_PKEY_CTX_set_signature_context` for ML-DSA keys (its ML-DSA
    /// `EVP_PKEY` method takes no controls and always signs with an empty
    /// context), so the FIPS build signs and verifies a non-empty context
    /// through the external-mu path, which gives the same signatures.
    #[cfg(feature = "fips")]
    fn mu(&self, message: &[u8], context: &[u8]) -> Result<[u8; ML_DSA_MU_LEN]> {
        let len = u8::try_from(context.len()).map_err(|_| Error::new("ML-DSA context length"))?;
        let mut tr = [0u8; 64];
        xof(Xof::Shake256, &[&self.public_key()?], &mut tr)?;
        let mut mu = [0u8; ML_DSA_MU_LEN];
        xof(Xof::Shake256, &[&tr, &[0, len], context, message], &mut mu)?;
        Ok(mu)
    }

    /// Signs an external mu (FIPS 204 Algorithm 7, from line 7 on): the
    /// caller has already bound the public key, the domain separator and the
    /// context into it. This is how HashML-DSA runs here.
    pub fn sign_mu(&self, mu: &[u8]) -> Result<Vec<u8>> {
        if !self.private {
            return Err(Error::new("not a private key"));
        }
        if mu.len() != ML_DSA_MU_LEN {
            return Err(Error::new("ML-DSA mu length"));
        }
        let ctx = PkeyCtx::new(&self.pkey)?;
        // SAFETY: ctx is a fresh context of our own on a valid private key.
        let rc = unsafe { sys::EVP_PKEY_sign_init(ctx.as_ptr()) };
        check(rc, "EVP_PKEY_sign_init")?;
        let mut out = vec![0u8; self.level.signature_len()];
        let mut len = out.len();
        let (sig, mu_ptr, mu_len) = (out.as_mut_ptr(), mu.as_ptr(), mu.len());
        // SAFETY: ctx is sign-initialised; out is a live buffer of `len` bytes; mu a live 64-byte slice.
        let rc = unsafe { sys::EVP_PKEY_sign(ctx.as_ptr(), sig, &mut len, mu_ptr, mu_len) };
        check(rc, "EVP_PKEY_sign")?;
        if len != out.len() {
            return Err(Error::new("EVP_PKEY_sign: length"));
        }
        Ok(out)
    }

    /// Verifies a signature over an external mu. Any failure is `false`.
    pub fn verify_mu(&self, mu: &[u8], signature: &[u8]) -> bool {
        let ok = self.verify_mu_inner(mu, signature).unwrap_or(false);
        if !ok {
            crate::clear_error_queue();
        }
        ok
    }

    fn verify_mu_inner(&self, mu: &[u8], signature: &[u8]) -> Result<bool> {
        if mu.len() != ML_DSA_MU_LEN || signature.len() != self.level.signature_len() {
            return Ok(false);
        }
        let ctx = PkeyCtx::new(&self.pkey)?;
        // SAFETY: ctx is a fresh context of our own on a valid key.
        let rc = unsafe { sys::EVP_PKEY_verify_init(ctx.as_ptr()) };
        check(rc, "EVP_PKEY_verify_init")?;
        // SAFETY: ctx is verify-initialised; signature and mu are live slices passed with their lengths.
        let rc = unsafe {
            sys::EVP_PKEY_verify(
                ctx.as_ptr(),
                signature.as_ptr(),
                signature.len(),
                mu.as_ptr(),
                mu.len(),
            )
        };
        Ok(rc == 1)
    }
}

/// The extendable-output functions FIPS 204's HashML-DSA and mu need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Xof {
    Shake128,
    Shake256,
}

/// `out.len()` bytes of SHAKE128 or SHAKE256 over the concatenation of
/// `parts`.
pub fn xof(x: Xof, parts: &[&[u8]], out: &mut [u8]) -> Result<()> {
    let md = MdCtx::new()?;
    // SAFETY: EVP_shake*() return static method tables that are never freed.
    let kind = unsafe {
        match x {
            Xof::Shake128 => sys::EVP_shake128(),
            Xof::Shake256 => sys::EVP_shake256(),
        }
    };
    // SAFETY: md is our fresh context; kind is a static EVP_MD; no engine.
    let rc = unsafe { sys::EVP_DigestInit_ex(md.0.as_ptr(), kind, ptr::null_mut()) };
    check(rc, "EVP_DigestInit_ex")?;
    for part in parts {
        // SAFETY: md is initialised; part is a live slice passed with its length.
        let rc = unsafe { sys::EVP_DigestUpdate(md.0.as_ptr(), part.as_ptr().cast(), part.len()) };
        check(rc, "EVP_DigestUpdate")?;
    }
    // SAFETY: md is initialised with an XOF; out is a live buffer of out.len() bytes.
    let rc = unsafe { sys::EVP_DigestFinalXOF(md.0.as_ptr(), out.as_mut_ptr(), out.len()) };
    check(rc, "EVP_DigestFinalXOF")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_with_and_without_context() {
        for level in [MlDsaLevel::P44, MlDsaLevel::P65, MlDsaLevel::P87] {
            let key = MlDsaKey::from_seed(level, &[7u8; 32]).unwrap();
            let again = MlDsaKey::from_seed(level, &[7u8; 32]).unwrap();
            let pk = key.public_key().unwrap();
            assert_eq!(
                pk,
                again.public_key().unwrap(),
                "keygen from a seed is deterministic"
            );
            let public = MlDsaKey::from_public(level, &pk).unwrap();
            let sig = key.sign(b"msg", b"ctx").unwrap();
            assert!(public.verify(b"msg", b"ctx", &sig));
            assert!(
                !public.verify(b"msg", b"", &sig),
                "the context is bound into the signature"
            );
            assert!(!public.verify(b"msh", b"ctx", &sig));
            let sig = key.sign(b"msg", b"").unwrap();
            assert!(public.verify(b"msg", b"", &sig));
            assert!(public.sign(b"msg", b"").is_err());
            assert!(key.sign(b"msg", &[0u8; 256]).is_err());
            assert!(key.sign(b"msg", &[0u8; 255]).is_ok());
        }
        assert!(MlDsaKey::from_seed(MlDsaLevel::P44, &[0u8; 31]).is_err());
        assert!(MlDsaKey::from_public(MlDsaLevel::P44, &[0u8; 1311]).is_err());
    }

    #[test]
    fn external_mu_matches_pure_signing() {
        // mu = SHAKE256(SHAKE256(pk, 64) || 0 || len(ctx) || ctx || M, 64)
        // (FIPS 204 Algorithm 2 line 10, Algorithm 7 line 6): a signature
        // over it verifies as a pure signature of M, and back.
        let key = MlDsaKey::from_seed(MlDsaLevel::P65, &[1u8; 32]).unwrap();
        let pk = key.public_key().unwrap();
        let mut tr = [0u8; 64];
        xof(Xof::Shake256, &[&pk], &mut tr).unwrap();
        let mut mu = [0u8; 64];
        xof(Xof::Shake256, &[&tr, &[0, 3], b"abc", b"message"], &mut mu).unwrap();
        let sig = key.sign_mu(&mu).unwrap();
        assert!(key.verify(b"message", b"abc", &sig));
        let sig = key.sign(b"message", b"abc").unwrap();
        assert!(key.verify_mu(&mu, &sig));
        mu[0] ^= 1;
        assert!(!key.verify_mu(&mu, &sig));
        assert!(key.sign_mu(&mu[..63]).is_err());
    }

    #[test]
    fn shake_known_answers() {
        // FIPS 202 empty-message values.
        let mut out = [0u8; 8];
        xof(Xof::Shake128, &[], &mut out).unwrap();
        assert_eq!(out, [0x7f, 0x9c, 0x2b, 0xa4, 0xe8, 0x8f, 0x82, 0x7d]);
        xof(Xof::Shake256, &[], &mut out).unwrap();
        assert_eq!(out, [0x46, 0xb9, 0xdd, 0x2b, 0x0b, 0xa8, 0x8d, 0x13]);
    }
}
