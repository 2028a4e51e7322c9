//! Every cryptographic operation of the hahsm daemon, on aws-lc-rs.
//!
//! - Key generation and import ([`generate_rsa`], [`import_private_key_pem`], …)
//!   produce a [`KeyPair`]: the public half in PKCS#11 form and the private key
//!   as normalized PKCS#8 inside [`SecretBytes`].
//! - The daemon decrypts a key from its store and turns it into a
//!   [`LoadedKey`] once; [`sign`], [`verify`], [`encrypt`], [`decrypt`],
//!   [`wrap`], [`unwrap`] and [`ecdh_derive`] then run PKCS#11 mechanisms on it
//!   from any thread without parsing it again.
//! - [`SealKey`] seals data at rest and in replication (AES-256-GCM), and
//!   [`hkdf_sha256`], [`hmac_sha256`], [`pin_verifier`] serve the daemon's own
//!   key hierarchy and login.
//!
//! Errors are [`TokenError`]s that map straight to `CKR_*` codes. No input
//! makes this crate panic, secrets are wiped when dropped, and neither `Debug`
//! output nor error messages ever contain key material.
//!
//! This crate has no `unsafe` code. The few operations aws-lc-rs's safe API
//! does not cover (raw RSA, prehashed PSS and ECDSA, OAEP with mixed hashes,
//! non-96-bit GCM IVs, AES-192 key wrap) come from `hahsm-awslc-ffi`, the one
//! crate where `unsafe` is allowed.
#![forbid(unsafe_code)]

mod der;
mod keys;
mod loaded;
mod mech;
mod pq;
#[cfg(test)]
mod pq_tests;
mod seal;
pub mod shares;

pub use der::certificate_not_after;
pub use hahsm_token::{ck, TokenError, TokenResult};
pub use keys::{
    ec_point_from_attribute, ec_private_from_scalar, ed25519_private_from_seed, generate_ec,
    generate_ed25519, generate_rsa, import_private_key_der, import_private_key_pem, is_ed25519_params,
    rsa_private_from_components, Curve, KeyPair, PublicKey, ED25519_EC_PARAMS, LEGACY_RSA_BITS,
};
pub use loaded::{KeyMaterial, LoadedKey};
pub use mech::{
    decrypt, ecdh_derive, encrypt, kem_decapsulate, kem_encapsulate, output_len, sign, unwrap, verify, wrap,
};
pub use pq::{
    generate_ml_dsa, generate_ml_kem, ml_dsa_private_from_seed, ml_dsa_seed_pkcs8, ml_kem_private_from_value,
    MlDsaSet, MlKemSet, ML_KEM_SHARED_SECRET_LEN,
};
pub use seal::SealKey;

use aws_lc_rs::{digest as awsdigest, hkdf, hmac, pbkdf2, rand};
use std::fmt;
use std::num::NonZeroU32;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Secret bytes, wiped when dropped. `Debug` prints only the length. Cloning
/// is allowed and the clone is wiped on drop too.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(bytes)
    }

    /// Takes the buffer out of a `Zeroizing` without copying it.
    pub(crate) fn from_zeroizing(mut z: Zeroizing<Vec<u8>>) -> Self {
        SecretBytes(std::mem::take(&mut *z))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

/// Constant-time comparison.
impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl Eq for SecretBytes {}

/// Whether this process runs AWS-LC's FIPS module (`FIPS_mode()`): true
/// in the build with the `fips` feature, whose module has passed its
/// power-on self-tests by then (a failed one aborts the process), and false
/// otherwise. The member then offers only what
/// `hahsm_token::mechanism::fips_approved_for` allows.
pub fn fips_mode() -> bool {
    aws_lc_rs::try_fips_mode().is_ok()
}

/// The most [`random`] hands out in one call.
pub const MAX_RANDOM_LEN: usize = 1 << 20;

/// The longest secret key [`generate_secret`] makes (PKCS#11's generic
/// secret limit in hahsm's mechanism table).
pub const MAX_SECRET_LEN: usize = 512;

/// Random bytes from AWS-LC's DRBG. At most [`MAX_RANDOM_LEN`]
/// (`DataLenRange` beyond).
pub fn random(len: usize) -> TokenResult<Vec<u8>> {
    if len > MAX_RANDOM_LEN {
        return Err(TokenError::DataLenRange);
    }
    let mut out = vec![0u8; len];
    rand::fill(&mut out).map_err(|_| TokenError::DeviceError("the random generator failed".into()))?;
    Ok(out)
}

/// A fresh three-key triple-DES key: 24 random bytes with DES's odd parity,
/// whose three DES keys all differ (so it never degrades to single DES or to
/// two-key triple DES).
pub fn generate_des3() -> TokenResult<SecretBytes> {
    loop {
        let mut key = generate_secret(24)?;
        for b in key.0.iter_mut() {
            let high = *b & 0xfe;
            *b = high | u8::from(high.count_ones() % 2 == 0);
        }
        let (k1, k2, k3) = (&key.0[..8], &key.0[8..16], &key.0[16..]);
        if k1 != k2 && k2 != k3 && k1 != k3 {
            return Ok(key);
        }
    }
}

/// A fresh random secret key of 1 to [`MAX_SECRET_LEN`] bytes.
pub fn generate_secret(len_bytes: usize) -> TokenResult<SecretBytes> {
    if len_bytes == 0 || len_bytes > MAX_SECRET_LEN {
        return Err(TokenError::KeySizeRange(format!(
            "secret keys are 1 to {MAX_SECRET_LEN} bytes"
        )));
    }
    let mut out = SecretBytes::new(vec![0u8; len_bytes]);
    rand::fill(&mut out.0).map_err(|_| TokenError::DeviceError("the random generator failed".into()))?;
    Ok(out)
}

/// `C_Digest`: `CKM_SHA_1`, `CKM_SHA224`, `CKM_SHA256`, `CKM_SHA384`,
/// `CKM_SHA512`, and `CKM_MD5` (which the member offers only under the
/// legacy policy).
pub fn digest(mech: u64, data: &[u8]) -> TokenResult<Vec<u8>> {
    if mech == ck::CKM_MD5 {
        let out = hahsm_awslc_ffi::md5(data).map_err(|_| TokenError::FunctionFailed("MD5".into()))?;
        return Ok(out.to_vec());
    }
    let h = mech::hash_from_ckm(mech).ok_or(TokenError::MechanismInvalid(mech))?;
    Ok(awsdigest::digest(mech::digest_algorithm(h), data)
        .as_ref()
        .to_vec())
}

/// `CKA_CHECK_VALUE` of a secret key (PKCS#11 3.0 §6.7.1, §6.8.1): for AES
/// the first three bytes of the ECB encryption of one zero block under the
/// key, for a generic secret the first three bytes of the SHA-1 of its
/// value. Three bytes identify a key; they do not reveal it.
pub fn check_value(key_type: u64, value: &[u8]) -> TokenResult<[u8; 3]> {
    let full: Vec<u8> = match key_type {
        ck::CKK_AES => {
            let alg = match value.len() {
                16 => &aws_lc_rs::cipher::AES_128,
                24 => &aws_lc_rs::cipher::AES_192,
                32 => &aws_lc_rs::cipher::AES_256,
                _ => return Err(TokenError::KeySizeRange("AES keys are 16, 24 or 32 bytes".into())),
            };
            let key = aws_lc_rs::cipher::UnboundCipherKey::new(alg, value)
                .map_err(|_| TokenError::FunctionFailed("AES key setup".into()))?;
            let mut block = [0u8; 16];
            aws_lc_rs::cipher::EncryptingKey::ecb(key)
                .and_then(|c| c.less_safe_encrypt(&mut block, aws_lc_rs::cipher::EncryptionContext::None))
                .map_err(|_| TokenError::FunctionFailed("AES-ECB encryption".into()))?;
            block.to_vec()
        }
        ck::CKK_DES3 => hahsm_awslc_ffi::des3_crypt(value, hahsm_awslc_ffi::Des3Mode::Ecb, true, &[0u8; 8])
            .map_err(|_| TokenError::KeySizeRange("triple-DES keys are 24 bytes".into()))?
            .to_vec(),
        _ => awsdigest::digest(&awsdigest::SHA1_FOR_LEGACY_USE_ONLY, value)
            .as_ref()
            .to_vec(),
    };
    Ok([full[0], full[1], full[2]])
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(awsdigest::digest(&awsdigest::SHA256, data).as_ref());
    out
}

pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(hmac::sign(&k, data).as_ref());
    out
}

/// Constant-time equality (lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// HKDF-SHA256 (RFC 5869) over the concatenation of `ikm`. `out_len` is 1 to
/// 8160 bytes (255 hash outputs).
pub fn hkdf_sha256(ikm: &[&[u8]], salt: &[u8], info: &[u8], out_len: usize) -> TokenResult<SecretBytes> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    if out_len == 0 || out_len > 255 * 32 {
        return Err(TokenError::ArgumentsBad(
            "HKDF output must be 1 to 8160 bytes".into(),
        ));
    }
    let total = ikm.iter().map(|p| p.len()).sum();
    let mut joined = Zeroizing::new(Vec::with_capacity(total));
    for part in ikm {
        joined.extend_from_slice(part);
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&joined);
    let info = [info];
    let okm = prk
        .expand(&info, Len(out_len))
        .map_err(|_| TokenError::FunctionFailed("HKDF failed".into()))?;
    let mut out = SecretBytes::new(vec![0u8; out_len]);
    okm.fill(&mut out.0)
        .map_err(|_| TokenError::FunctionFailed("HKDF failed".into()))?;
    Ok(out)
}

/// PBKDF2-HMAC-SHA256 iterations for [`pin_verifier`].
pub const PIN_KDF_ITERATIONS: u32 = 20_000;

/// What the daemon stores to check a PIN: PBKDF2-HMAC-SHA256(pin, salt,
/// [`PIN_KDF_ITERATIONS`]), 32 bytes. Compare with [`ct_eq`].
pub fn pin_verifier(pin: &[u8], salt: &[u8]) -> [u8; 32] {
    let iterations = NonZeroU32::MIN.saturating_add(PIN_KDF_ITERATIONS - 1);
    let mut out = [0u8; 32];
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, pin, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_abc() {
        let want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(hex::encode(sha256(b"abc")), want);
        assert_eq!(hex::encode(digest(ck::CKM_SHA256, b"abc").unwrap()), want);
        assert_eq!(
            hex::encode(digest(ck::CKM_SHA_1, b"abc").unwrap()),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex::encode(digest(ck::CKM_SHA224, b"abc").unwrap()),
            "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"
        );
        assert_eq!(
            hex::encode(digest(ck::CKM_SHA384, b"abc").unwrap()),
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
        );
        assert_eq!(
            hex::encode(digest(ck::CKM_SHA512, b"abc").unwrap()),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
        // MD5 (RFC 1321's "abc"), which the member offers only under the legacy policy.
        assert_eq!(
            hex::encode(digest(ck::CKM_MD5, b"abc").unwrap()),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            digest(ck::CKM_MD2, b"abc"),
            Err(TokenError::MechanismInvalid(ck::CKM_MD2))
        );
    }

    #[test]
    fn secret_bytes_debug_shows_length_only() {
        let s = SecretBytes::new(vec![0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(format!("{s:?}"), "SecretBytes(4 bytes)");
        assert_eq!(s.len(), 4);
        assert_eq!(s.clone(), s);
        assert_ne!(SecretBytes::new(vec![1]), s);
    }

    #[test]
    fn check_values_follow_the_standard() {
        // AES-128 with the zero key: E(0, 0) = 66e94bd4ef8a2c3b884cfa59ca342b2e.
        assert_eq!(check_value(ck::CKK_AES, &[0; 16]).unwrap(), [0x66, 0xe9, 0x4b]);
        // SHA-1("abc") = a9993e36...
        assert_eq!(
            check_value(ck::CKK_GENERIC_SECRET, b"abc").unwrap(),
            [0xa9, 0x99, 0x3e]
        );
        // Triple DES: the ECB encryption of a zero block (openssl enc -des-ede3
        // of eight zero bytes under this key gives 4eba739c998bcb60).
        let key: Vec<u8> = (0..24)
            .map(|i| {
                u8::from_str_radix(
                    &"0123456789ABCDEF23456789ABCDEF01456789ABCDEF0123"[2 * i..2 * i + 2],
                    16,
                )
                .unwrap()
            })
            .collect();
        assert_eq!(check_value(ck::CKK_DES3, &key).unwrap(), [0x4e, 0xba, 0x73]);
    }

    #[test]
    fn generated_des3_keys_have_odd_parity_and_three_different_keys() {
        for _ in 0..64 {
            let key = generate_des3().unwrap();
            assert_eq!(key.len(), 24);
            assert!(key.expose().iter().all(|b| b.count_ones() % 2 == 1), "parity");
            let k = key.expose();
            assert!(k[..8] != k[8..16] && k[8..16] != k[16..] && k[..8] != k[16..]);
        }
    }

    #[test]
    fn random_limits() {
        assert_eq!(random(0).unwrap().len(), 0);
        assert_eq!(random(33).unwrap().len(), 33);
        assert_ne!(random(32).unwrap(), random(32).unwrap());
        assert_eq!(random(MAX_RANDOM_LEN + 1), Err(TokenError::DataLenRange));
        assert_eq!(generate_secret(32).unwrap().len(), 32);
        assert!(matches!(generate_secret(0), Err(TokenError::KeySizeRange(_))));
    }

    #[test]
    fn hmac_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hkdf_rfc5869_case_1_split_ikm() {
        let ikm = [0x0bu8; 22];
        let salt = hex::decode("000102030405060708090a0b0c").unwrap();
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        let okm = hkdf_sha256(&[&ikm[..10], &ikm[10..]], &salt, &info, 42).unwrap();
        assert_eq!(
            hex::encode(okm.expose()),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
        assert!(hkdf_sha256(&[&ikm], &salt, &info, 0).is_err());
        assert!(hkdf_sha256(&[&ikm], &salt, &info, 8161).is_err());
    }

    #[test]
    fn pin_verifier_is_pbkdf2_sha256_20000() {
        // Independent check: PBKDF2 written out with HMAC-SHA256 (one block).
        let (pin, salt) = (b"1234".as_slice(), b"salty".as_slice());
        let mut u = hmac_sha256(pin, &[salt, &1u32.to_be_bytes()].concat());
        let mut t = u;
        for _ in 1..PIN_KDF_ITERATIONS {
            u = hmac_sha256(pin, &u);
            for (a, b) in t.iter_mut().zip(u.iter()) {
                *a ^= b;
            }
        }
        assert_eq!(pin_verifier(pin, salt), t);
        assert_ne!(pin_verifier(b"1235", salt), t);
        assert!(ct_eq(&t, &pin_verifier(pin, salt)));
        assert!(!ct_eq(&t, &t[..31]));
    }
}
