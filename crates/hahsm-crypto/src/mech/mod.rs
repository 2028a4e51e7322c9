//! The PKCS#11 mechanisms: sign, verify, encrypt, decrypt, wrap, unwrap and
//! ECDH derivation on a [`LoadedKey`].
//!
//! Checks run in a fixed order so the error a caller sees is predictable:
//! unknown mechanism (`MechanismInvalid`), then the key kind
//! (`KeyTypeInconsistent`), then the parameters (`MechanismParamInvalid`),
//! then the input length (`DataLenRange`, `EncryptedDataLenRange`,
//! `SignatureLenRange`), then the cryptography itself.
//!
//! What runs where: aws-lc-rs does RSA PKCS#1 v1.5 signing with SHA-256/384/512,
//! RSA PKCS#1 v1.5 and OAEP encryption when the OAEP hash and MGF1 hash are
//! the same SHA-1/256/384/512, ECDSA with the curve's own hash, Ed25519, HMAC,
//! the AES modes, AES-GCM with a 96-bit IV and full tag, AES-128/256 key wrap
//! and ECDH, and ML-KEM. `hahsm-awslc-ffi` does the rest, ML-DSA among it
//! (see its crate docs).
//!
//! `params` holds what the mechanisms share; `sign`, `cipher`, `wrap`,
//! `derive` and `pq` (ML-DSA, ML-KEM) the operations.
mod cipher;
mod derive;
mod params;
mod pq;
mod sign;
#[cfg(test)]
mod tests;
mod wrap;

pub use cipher::{decrypt, encrypt, output_len};
pub use derive::ecdh_derive;
pub(crate) use params::{digest_algorithm, hash_from_ckm};
pub use pq::{kem_decapsulate, kem_encapsulate};
pub use sign::{sign, verify};
pub use wrap::{unwrap, wrap};
