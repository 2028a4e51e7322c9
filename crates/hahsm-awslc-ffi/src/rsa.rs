//! RSA operations aws-lc-rs does not expose: raw PKCS#1 v1.5 signing of a
//! caller-built `DigestInfo`, the raw RSA permutation, PSS over a digest with
//! any salt length, OAEP with independent hash and MGF1 hash, and CRT values.
use crate::bn::{self, Bn, BnCtx};
use crate::{check, sys, to_c_int, Error, Hash, Pkey, Result};
use core::ptr::{self, NonNull};
use zeroize::Zeroizing;

/// An RSA key (private, or public only) parsed once and used from any thread.
pub struct RsaKey {
    pkey: Pkey,
    /// Borrowed from `pkey` (EVP_PKEY_get0_RSA): valid as long as `pkey`.
    rsa: NonNull<sys::RSA>,
    private: bool,
    size: usize,
}

// SAFETY: `rsa` is only a borrowed view into `pkey`, which is Send + Sync (see
// `Pkey`). Every RSA function called through a shared `&RsaKey` is one AWS-LC
// documents as non-mutating and safe to use concurrently (rsa.h, sections
// "Encryption / Decryption" and "Signing / Verification", and the const
// accessors); they take the key's internal lock around their lazily built
// Montgomery and blinding caches.
unsafe impl Send for RsaKey {}
// SAFETY: see the `Send` impl above.
unsafe impl Sync for RsaKey {}

impl core::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RsaKey")
            .field("bits", &(self.size * 8))
            .field("private", &self.private)
            .finish_non_exhaustive()
    }
}

/// Owned `RSA`, for the short time before an `EVP_PKEY` takes it.
struct Rsa(NonNull<sys::RSA>);

impl Drop for Rsa {
    fn drop(&mut self) {
        // SAFETY: we own this RSA and free it exactly once.
        unsafe { sys::RSA_free(self.0.as_ptr()) }
    }
}

/// Owned `EVP_PKEY_CTX`.
pub(crate) struct PkeyCtx(NonNull<sys::EVP_PKEY_CTX>);

impl PkeyCtx {
    pub(crate) fn new(pkey: &Pkey) -> Result<PkeyCtx> {
        // SAFETY: pkey is a valid EVP_PKEY; EVP_PKEY_CTX_new takes its own reference (an atomic up-ref, safe while other threads use the key).
        let p = unsafe { sys::EVP_PKEY_CTX_new(pkey.as_ptr(), ptr::null_mut()) };
        NonNull::new(p)
            .map(PkeyCtx)
            .ok_or_else(|| Error::new("EVP_PKEY_CTX_new"))
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::EVP_PKEY_CTX {
        self.0.as_ptr()
    }

    /// Sets OAEP padding, hashes and label on a context already initialised
    /// for encryption or decryption.
    fn set_oaep(&self, hash: Hash, mgf1: Hash, label: &[u8]) -> Result<()> {
        // SAFETY: self.0 is a valid EVP_PKEY_CTX initialised for an RSA key.
        let rc = unsafe { sys::EVP_PKEY_CTX_set_rsa_padding(self.as_ptr(), sys::RSA_PKCS1_OAEP_PADDING) };
        check(rc, "EVP_PKEY_CTX_set_rsa_padding")?;
        // SAFETY: as above; hash.md() is a static EVP_MD.
        let rc = unsafe { sys::EVP_PKEY_CTX_set_rsa_oaep_md(self.as_ptr(), hash.md()) };
        check(rc, "EVP_PKEY_CTX_set_rsa_oaep_md")?;
        // SAFETY: as above; mgf1.md() is a static EVP_MD.
        let rc = unsafe { sys::EVP_PKEY_CTX_set_rsa_mgf1_md(self.as_ptr(), mgf1.md()) };
        check(rc, "EVP_PKEY_CTX_set_rsa_mgf1_md")?;
        if label.is_empty() {
            return Ok(());
        }
        // SAFETY: copies label.len() bytes from a live slice into a new AWS-LC allocation (NULL on failure).
        let copy = unsafe { sys::OPENSSL_memdup(label.as_ptr().cast(), label.len()) }.cast::<u8>();
        if copy.is_null() {
            return Err(Error::new("OPENSSL_memdup"));
        }
        // SAFETY: `copy` is an OPENSSL_malloc'ed buffer of label.len() bytes; on success the context takes ownership of it.
        let rc = unsafe { sys::EVP_PKEY_CTX_set0_rsa_oaep_label(self.as_ptr(), copy, label.len()) };
        if rc != 1 {
            // SAFETY: on failure the context did not take `copy`: it is still ours, and is freed exactly once, here.
            unsafe { sys::OPENSSL_free(copy.cast()) };
            return Err(Error::new("EVP_PKEY_CTX_set0_rsa_oaep_label"));
        }
        Ok(())
    }
}

impl Drop for PkeyCtx {
    fn drop(&mut self) {
        // SAFETY: we own this context (and through it one reference to the key) and free it exactly once.
        unsafe { sys::EVP_PKEY_CTX_free(self.0.as_ptr()) }
    }
}

impl RsaKey {
    fn from_pkey(pkey: Pkey, private: bool) -> Result<RsaKey> {
        if pkey.id() != sys::EVP_PKEY_RSA {
            return Err(Error::new("not an RSA key"));
        }
        // SAFETY: pkey is a valid EVP_PKEY of type RSA; get0 returns a pointer owned by pkey (no reference taken), valid while pkey lives, which the struct below guarantees by keeping both together.
        let rsa = unsafe { sys::EVP_PKEY_get0_RSA(pkey.as_ptr()) };
        let rsa = NonNull::new(rsa).ok_or_else(|| Error::new("EVP_PKEY_get0_RSA"))?;
        // SAFETY: rsa is valid (above); RSA_size only reads it.
        let size = unsafe { sys::RSA_size(rsa.as_ptr()) } as usize;
        if size == 0 {
            return Err(Error::new("RSA_size"));
        }
        Ok(RsaKey {
            pkey,
            rsa,
            private,
            size,
        })
    }

    /// Parses an unencrypted PKCS#8 RSA private key and checks its consistency.
    pub fn from_pkcs8(der: &[u8]) -> Result<RsaKey> {
        let key = RsaKey::from_pkey(Pkey::parse_private(der)?, true)?;
        // SAFETY: key.rsa is valid; RSA_check_key only reads it.
        let rc = unsafe { sys::RSA_check_key(key.rsa.as_ptr()) };
        check(rc, "RSA_check_key")?;
        Ok(key)
    }

    /// A public key from its big-endian modulus and public exponent.
    pub fn from_public_components(n: &[u8], e: &[u8]) -> Result<RsaKey> {
        let n = Bn::from_be(n)?;
        let e = Bn::from_be(e)?;
        // SAFETY: n and e are valid BIGNUMs; RSA_new_public_key copies them and validates the key, returning a new RSA we own, or NULL.
        let rsa = unsafe { sys::RSA_new_public_key(n.as_ptr(), e.as_ptr()) };
        let rsa = Rsa(NonNull::new(rsa).ok_or_else(|| Error::new("RSA_new_public_key"))?);
        // SAFETY: EVP_PKEY_new takes no arguments; a non-NULL result is ours.
        let pkey = Pkey::from_raw(unsafe { sys::EVP_PKEY_new() }, "EVP_PKEY_new")?;
        // SAFETY: both pointers are valid; on success the EVP_PKEY takes over our reference to the RSA, so we must not free it ourselves.
        let rc = unsafe { sys::EVP_PKEY_assign_RSA(pkey.as_ptr(), rsa.0.as_ptr()) };
        check(rc, "EVP_PKEY_assign_RSA")?;
        core::mem::forget(rsa);
        RsaKey::from_pkey(pkey, false)
    }

    /// Generates a key of `bits` bits with public exponent `e` (big-endian)
    /// and returns it as unencrypted PKCS#8 DER. Used for the sizes
    /// aws-lc-rs does not generate (below 2048 bits, for the legacy policy).
    pub fn generate_pkcs8(bits: u32, e: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let bits = to_c_int(bits as usize, "RSA_generate_key_ex: bits")?;
        let e = Bn::from_be(e)?;
        // SAFETY: RSA_new takes no arguments; a non-NULL result is ours (freed by `Rsa`'s Drop unless handed over).
        let rsa = Rsa(NonNull::new(unsafe { sys::RSA_new() }).ok_or_else(|| Error::new("RSA_new"))?);
        // SAFETY: rsa and e are valid; RSA_generate_key_ex fills `rsa` and only reads `e`; a NULL callback is allowed.
        let rc = unsafe { sys::RSA_generate_key_ex(rsa.0.as_ptr(), bits, e.as_ptr(), ptr::null_mut()) };
        check(rc, "RSA_generate_key_ex")?;
        // SAFETY: EVP_PKEY_new takes no arguments; a non-NULL result is ours.
        let pkey = Pkey::from_raw(unsafe { sys::EVP_PKEY_new() }, "EVP_PKEY_new")?;
        // SAFETY: both pointers are valid; on success the EVP_PKEY takes over our reference to the RSA, so we must not free it ourselves.
        let rc = unsafe { sys::EVP_PKEY_assign_RSA(pkey.as_ptr(), rsa.0.as_ptr()) };
        check(rc, "EVP_PKEY_assign_RSA")?;
        core::mem::forget(rsa);
        // SAFETY: CBB is plain old data; all zeros is the state CBB_zero leaves it in, which CBB_init expects.
        let mut cbb: sys::CBB = unsafe { core::mem::zeroed() };
        // SAFETY: cbb is a live, zeroed CBB; CBB_init allocates its growable buffer.
        let rc = unsafe { sys::CBB_init(&mut cbb, 0) };
        check(rc, "CBB_init")?;
        let mut out: *mut u8 = ptr::null_mut();
        let mut out_len = 0usize;
        // SAFETY: cbb was initialised above; pkey is a valid private key that the call only reads; CBB_finish hands us its buffer (freed below).
        let rc = unsafe {
            if sys::EVP_marshal_private_key(&mut cbb, pkey.as_ptr()) == 1 {
                sys::CBB_finish(&mut cbb, &mut out, &mut out_len)
            } else {
                0
            }
        };
        if rc != 1 {
            // SAFETY: cbb is initialised and was not finished: CBB_cleanup frees (and wipes) its buffer once.
            unsafe { sys::CBB_cleanup(&mut cbb) };
            return Err(Error::new("EVP_marshal_private_key"));
        }
        // SAFETY: CBB_finish succeeded: `out` points to out_len bytes that are ours.
        let der = Zeroizing::new(unsafe { core::slice::from_raw_parts(out, out_len) }.to_vec());
        // SAFETY: `out` came from AWS-LC's allocator and is freed exactly once; OPENSSL_free wipes the memory first.
        unsafe { sys::OPENSSL_free(out.cast()) };
        Ok(der)
    }

    /// The modulus and public exponent, big-endian without leading zeros.
    pub fn public_components(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        // SAFETY: self.rsa is valid for as long as self; the get0 accessors return pointers owned by the key, read at once by to_be.
        let (n, e) = unsafe {
            (
                sys::RSA_get0_n(self.rsa.as_ptr()),
                sys::RSA_get0_e(self.rsa.as_ptr()),
            )
        };
        Ok((bn::to_be(n)?.to_vec(), bn::to_be(e)?.to_vec()))
    }

    /// RSAES-PKCS1-v1_5 encryption.
    pub fn encrypt_pkcs1(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.public_encrypt(plaintext, sys::RSA_PKCS1_PADDING)
    }

    /// RSAES-PKCS1-v1_5 decryption. Any failure, a bad padding included, is
    /// the same error.
    pub fn decrypt_pkcs1(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.require_private()?;
        let mut out = Zeroizing::new(vec![0u8; self.size]);
        let mut out_len = 0usize;
        // SAFETY: out has self.size writable bytes (max_out); ciphertext is a live slice; RSA_decrypt is documented as non-mutating and checks the input length.
        let rc = unsafe {
            sys::RSA_decrypt(
                self.rsa.as_ptr(),
                &mut out_len,
                out.as_mut_ptr(),
                out.len(),
                ciphertext.as_ptr(),
                ciphertext.len(),
                sys::RSA_PKCS1_PADDING,
            )
        };
        check(rc, "RSA_decrypt")?;
        if out_len > out.len() {
            return Err(Error::new("RSA_decrypt: length"));
        }
        out.truncate(out_len);
        Ok(out)
    }

    /// Modulus length in bytes (the length of every signature and ciphertext).
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn is_private(&self) -> bool {
        self.private
    }

    fn require_private(&self) -> Result<()> {
        if self.private {
            Ok(())
        } else {
            Err(Error::new("not a private key"))
        }
    }

    /// RSASSA-PKCS1-v1_5 over `payload` as given (normally a DER
    /// `DigestInfo`), without hashing: `CKM_RSA_PKCS` signing.
    pub fn sign_pkcs1_raw(&self, payload: &[u8]) -> Result<Vec<u8>> {
        self.require_private()?;
        let mut out = vec![0u8; self.size];
        let mut out_len = 0usize;
        // SAFETY: out has self.size writable bytes, passed as max_out; payload is a live slice; rsa is a valid private key and RSA_sign_raw is documented as non-mutating for thread-safety purposes.
        let rc = unsafe {
            sys::RSA_sign_raw(
                self.rsa.as_ptr(),
                &mut out_len,
                out.as_mut_ptr(),
                out.len(),
                payload.as_ptr(),
                payload.len(),
                sys::RSA_PKCS1_PADDING,
            )
        };
        check(rc, "RSA_sign_raw")?;
        finish_len(out, out_len, self.size)
    }

    /// Recovers the PKCS#1 v1.5 payload of a signature with the public key.
    /// The caller compares it with the expected `DigestInfo`.
    pub fn recover_pkcs1(&self, signature: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.size];
        let mut out_len = 0usize;
        // SAFETY: out has self.size writable bytes (max_out); signature is a live slice; RSA_verify_raw is non-mutating.
        let rc = unsafe {
            sys::RSA_verify_raw(
                self.rsa.as_ptr(),
                &mut out_len,
                out.as_mut_ptr(),
                out.len(),
                signature.as_ptr(),
                signature.len(),
                sys::RSA_PKCS1_PADDING,
            )
        };
        check(rc, "RSA_verify_raw")?;
        if out_len > out.len() {
            return Err(Error::new("RSA_verify_raw: length"));
        }
        out.truncate(out_len);
        Ok(out)
    }

    /// The raw private-key permutation `x^d mod n`. `input` must be exactly
    /// `size()` bytes and less than the modulus. Used for `CKM_RSA_X_509`
    /// signing and decryption; the output may be secret, so it is zeroized.
    pub fn private_raw(&self, input: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.require_private()?;
        let mut out = Zeroizing::new(vec![0u8; self.size]);
        let mut out_len = 0usize;
        // SAFETY: out has self.size writable bytes (max_out); input is a live slice; RSA_decrypt is documented as non-mutating and checks that the input has the modulus length and is below the modulus.
        let rc = unsafe {
            sys::RSA_decrypt(
                self.rsa.as_ptr(),
                &mut out_len,
                out.as_mut_ptr(),
                out.len(),
                input.as_ptr(),
                input.len(),
                sys::RSA_NO_PADDING,
            )
        };
        check(rc, "RSA_decrypt")?;
        if out_len != self.size {
            return Err(Error::new("RSA_decrypt: length"));
        }
        Ok(out)
    }

    /// The raw public-key permutation `x^e mod n`. `input` must be exactly
    /// `size()` bytes and less than the modulus. Used for `CKM_RSA_X_509`
    /// encryption and verification.
    pub fn public_raw(&self, input: &[u8]) -> Result<Vec<u8>> {
        self.public_encrypt(input, sys::RSA_NO_PADDING)
    }

    /// `RSA_encrypt` with `padding`: the output always has the modulus length.
    fn public_encrypt(&self, input: &[u8], padding: core::ffi::c_int) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.size];
        let mut out_len = 0usize;
        // SAFETY: out has self.size writable bytes (max_out); input is a live slice; RSA_encrypt is documented as non-mutating and checks the input length.
        let rc = unsafe {
            sys::RSA_encrypt(
                self.rsa.as_ptr(),
                &mut out_len,
                out.as_mut_ptr(),
                out.len(),
                input.as_ptr(),
                input.len(),
                padding,
            )
        };
        check(rc, "RSA_encrypt")?;
        finish_len(out, out_len, self.size)
    }

    /// RSASSA-PSS over a precomputed digest (`digest.len()` must be
    /// `hash.output_len()`), with MGF1 over `mgf1` and a `salt_len`-byte salt.
    pub fn sign_pss(&self, digest: &[u8], hash: Hash, mgf1: Hash, salt_len: usize) -> Result<Vec<u8>> {
        self.require_private()?;
        if digest.len() != hash.output_len() {
            return Err(Error::new("RSA_sign_pss_mgf1: digest length"));
        }
        let salt = to_c_int(salt_len, "RSA_sign_pss_mgf1: salt length")?;
        let mut out = vec![0u8; self.size];
        let mut out_len = 0usize;
        // SAFETY: out has self.size writable bytes (max_out); digest is a live slice of the hash's length; the EVP_MDs are static; salt is a non-negative explicit length (AWS-LC rejects one that does not fit).
        let rc = unsafe {
            sys::RSA_sign_pss_mgf1(
                self.rsa.as_ptr(),
                &mut out_len,
                out.as_mut_ptr(),
                out.len(),
                digest.as_ptr(),
                digest.len(),
                hash.md(),
                mgf1.md(),
                salt,
            )
        };
        check(rc, "RSA_sign_pss_mgf1")?;
        finish_len(out, out_len, self.size)
    }

    /// Verifies an RSASSA-PSS signature over a precomputed digest. Any failure,
    /// including malformed input, is `false`.
    pub fn verify_pss(
        &self,
        digest: &[u8],
        hash: Hash,
        mgf1: Hash,
        salt_len: usize,
        signature: &[u8],
    ) -> bool {
        if digest.len() != hash.output_len() {
            return false;
        }
        let Ok(salt) = to_c_int(salt_len, "RSA_verify_pss_mgf1: salt length") else {
            return false;
        };
        // SAFETY: digest and signature are live slices passed with their lengths; the EVP_MDs are static; RSA_verify_pss_mgf1 is non-mutating.
        let rc = unsafe {
            sys::RSA_verify_pss_mgf1(
                self.rsa.as_ptr(),
                digest.as_ptr(),
                digest.len(),
                hash.md(),
                mgf1.md(),
                salt,
                signature.as_ptr(),
                signature.len(),
            )
        };
        if rc == 1 {
            true
        } else {
            crate::clear_error_queue();
            false
        }
    }

    /// RSAES-OAEP encryption with any hash / MGF1 hash pair and label.
    pub fn encrypt_oaep(&self, hash: Hash, mgf1: Hash, label: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let ctx = PkeyCtx::new(&self.pkey)?;
        // SAFETY: ctx is a fresh context of ours for an RSA key.
        let rc = unsafe { sys::EVP_PKEY_encrypt_init(ctx.as_ptr()) };
        check(rc, "EVP_PKEY_encrypt_init")?;
        ctx.set_oaep(hash, mgf1, label)?;
        let mut out = vec![0u8; self.size];
        let mut out_len = out.len();
        // SAFETY: out_len holds the capacity of `out` on input, as EVP_PKEY_encrypt requires; plaintext is a live slice.
        let rc = unsafe {
            sys::EVP_PKEY_encrypt(
                ctx.as_ptr(),
                out.as_mut_ptr(),
                &mut out_len,
                plaintext.as_ptr(),
                plaintext.len(),
            )
        };
        check(rc, "EVP_PKEY_encrypt")?;
        finish_len(out, out_len, self.size)
    }

    /// RSAES-OAEP decryption with any hash / MGF1 hash pair and label.
    pub fn decrypt_oaep(
        &self,
        hash: Hash,
        mgf1: Hash,
        label: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        self.require_private()?;
        let ctx = PkeyCtx::new(&self.pkey)?;
        // SAFETY: ctx is a fresh context of ours for an RSA private key.
        let rc = unsafe { sys::EVP_PKEY_decrypt_init(ctx.as_ptr()) };
        check(rc, "EVP_PKEY_decrypt_init")?;
        ctx.set_oaep(hash, mgf1, label)?;
        let mut out = Zeroizing::new(vec![0u8; self.size]);
        let mut out_len = out.len();
        // SAFETY: out_len holds the capacity of `out` on input, as EVP_PKEY_decrypt requires; ciphertext is a live slice.
        let rc = unsafe {
            sys::EVP_PKEY_decrypt(
                ctx.as_ptr(),
                out.as_mut_ptr(),
                &mut out_len,
                ciphertext.as_ptr(),
                ciphertext.len(),
            )
        };
        check(rc, "EVP_PKEY_decrypt")?;
        if out_len > out.len() {
            return Err(Error::new("EVP_PKEY_decrypt: length"));
        }
        out.truncate(out_len);
        Ok(out)
    }
}

fn finish_len(mut out: Vec<u8>, out_len: usize, expected: usize) -> Result<Vec<u8>> {
    if out_len != expected || out_len > out.len() {
        return Err(Error::new("RSA output length"));
    }
    out.truncate(out_len);
    Ok(out)
}

/// The CRT values of an RSA private key, big-endian.
pub struct RsaCrt {
    /// `d mod (p - 1)`
    pub dp: Zeroizing<Vec<u8>>,
    /// `d mod (q - 1)`
    pub dq: Zeroizing<Vec<u8>>,
    /// `q^-1 mod p`
    pub qinv: Zeroizing<Vec<u8>>,
}

/// Computes the CRT values from the private exponent and the primes, for keys
/// imported (e.g. by `C_CreateObject`) without them. The caller still has the
/// complete key validated (aws-lc-rs checks every relation when it builds it).
pub fn rsa_crt_params(d: &[u8], p: &[u8], q: &[u8]) -> Result<RsaCrt> {
    let d = Bn::from_be(d)?;
    let p = Bn::from_be(p)?;
    let q = Bn::from_be(q)?;
    if d.is_zero() || p.is_zero() || q.is_zero() {
        return Err(Error::new("rsa_crt_params: zero component"));
    }
    let mut ctx = BnCtx::new()?;
    let mut p1 = Bn::new()?;
    let mut q1 = Bn::new()?;
    // SAFETY: all BIGNUMs are valid and distinct; BN_sub writes only to its first argument. BN_value_one returns a static constant.
    let rc = unsafe { sys::BN_sub(p1.as_mut_ptr(), p.as_ptr(), sys::BN_value_one()) };
    check(rc, "BN_sub")?;
    // SAFETY: as above.
    let rc = unsafe { sys::BN_sub(q1.as_mut_ptr(), q.as_ptr(), sys::BN_value_one()) };
    check(rc, "BN_sub")?;
    if p1.is_zero() || q1.is_zero() {
        return Err(Error::new("rsa_crt_params: prime is one"));
    }
    let mut dp = Bn::new()?;
    let mut dq = Bn::new()?;
    // SAFETY: valid, distinct BIGNUMs and a BN_CTX of ours; a NULL quotient is allowed ("remainder only"); the divisor was checked to be non-zero.
    let rc = unsafe {
        sys::BN_div(
            ptr::null_mut(),
            dp.as_mut_ptr(),
            d.as_ptr(),
            p1.as_ptr(),
            ctx.as_mut_ptr(),
        )
    };
    check(rc, "BN_div")?;
    // SAFETY: as above.
    let rc = unsafe {
        sys::BN_div(
            ptr::null_mut(),
            dq.as_mut_ptr(),
            d.as_ptr(),
            q1.as_ptr(),
            ctx.as_mut_ptr(),
        )
    };
    check(rc, "BN_div")?;
    let mut qinv = Bn::new()?;
    let (out, scratch) = (qinv.as_mut_ptr(), ctx.as_mut_ptr());
    // SAFETY: valid, distinct BIGNUMs and our BN_CTX; BN_mod_inverse writes to `qinv` (non-NULL out) and returns NULL if q has no inverse mod p.
    let r = unsafe { sys::BN_mod_inverse(out, q.as_ptr(), p.as_ptr(), scratch) };
    if r.is_null() {
        return Err(Error::new("BN_mod_inverse"));
    }
    Ok(RsaCrt {
        dp: bn::to_be(dp.as_ptr())?,
        dq: bn::to_be(dq.as_ptr())?,
        qinv: bn::to_be(qinv.as_ptr())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_1024_bit_key_signs_and_decrypts() {
        let der = RsaKey::generate_pkcs8(1024, &[1, 0, 1]).unwrap();
        let key = RsaKey::from_pkcs8(&der).unwrap();
        assert_eq!(key.size(), 128);
        let (n, e) = key.public_components().unwrap();
        assert_eq!((n.len(), e.as_slice()), (128, &[1u8, 0, 1][..]));
        let public = RsaKey::from_public_components(&n, &e).unwrap();
        let ct = public.encrypt_pkcs1(b"legacy secret").unwrap();
        assert_eq!(key.decrypt_pkcs1(&ct).unwrap().as_slice(), b"legacy secret");
        let mut bad = ct.clone();
        bad[5] ^= 1;
        assert!(key.decrypt_pkcs1(&bad).is_err());
        assert!(public.decrypt_pkcs1(&ct).is_err(), "a public key cannot decrypt");
        let sig = key.sign_pkcs1_raw(b"payload").unwrap();
        assert_eq!(public.recover_pkcs1(&sig).unwrap(), b"payload");
        assert!(
            RsaKey::generate_pkcs8(1024, &[]).is_err(),
            "an empty exponent is refused"
        );
    }
}
