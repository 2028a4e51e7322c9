//! Sealing for data at rest and in replication: AES-256-GCM with a random
//! 96-bit nonce. Output: `nonce || ciphertext || tag`.
use crate::{random, SecretBytes, TokenError, TokenResult};
use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use std::fmt;
use zeroize::Zeroizing;

const TAG_LEN: usize = 16;

/// A 32-byte AES-256-GCM sealing key.
pub struct SealKey {
    key: LessSafeKey,
    bytes: SecretBytes,
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(AES-256-GCM)")
    }
}

impl SealKey {
    pub fn new(key: SecretBytes) -> TokenResult<SealKey> {
        if key.len() != 32 {
            return Err(TokenError::KeySizeRange("a seal key is 32 bytes".into()));
        }
        let unbound = UnboundKey::new(&aead::AES_256_GCM, key.expose())
            .map_err(|_| TokenError::FunctionFailed("AES-GCM key setup failed".into()))?;
        Ok(SealKey {
            key: LessSafeKey::new(unbound),
            bytes: key,
        })
    }

    pub fn generate() -> TokenResult<SealKey> {
        SealKey::new(crate::generate_secret(32)?)
    }

    /// Encrypts and authenticates `plaintext`, binding `aad` to it.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> TokenResult<Vec<u8>> {
        let nonce_bytes = random(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(&nonce_bytes)
            .map_err(|_| TokenError::FunctionFailed("nonce setup failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(aad), &mut out[NONCE_LEN..])
            .map_err(|_| TokenError::DataLenRange)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Checks and decrypts what [`SealKey::seal`] produced with the same
    /// `aad`. Any mismatch is `DeviceError("integrity check failed: …")`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> TokenResult<SecretBytes> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(TokenError::DeviceError(
                "integrity check failed: sealed data is too short".into(),
            ));
        }
        let (nonce_bytes, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce_bytes)
            .map_err(|_| TokenError::DeviceError("integrity check failed: bad nonce".into()))?;
        let mut buf = Zeroizing::new(body.to_vec());
        let n = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| {
                TokenError::DeviceError(
                    "integrity check failed: wrong key, wrong context or tampered data".into(),
                )
            })?
            .len();
        buf.truncate(n);
        Ok(SecretBytes::from_zeroizing(buf))
    }

    /// The raw key, for wrapping it under a higher key in the hierarchy.
    pub fn key_bytes(&self) -> &[u8] {
        self.bytes.expose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip() {
        let k = SealKey::generate().unwrap();
        let sealed = k.seal(b"object 7", b"top secret").unwrap();
        assert_eq!(sealed.len(), 12 + 10 + 16);
        assert_eq!(k.open(b"object 7", &sealed).unwrap().expose(), b"top secret");
        // Two seals of the same data differ (random nonce).
        assert_ne!(k.seal(b"object 7", b"top secret").unwrap(), sealed);
        let empty = k.seal(b"", b"").unwrap();
        assert_eq!(k.open(b"", &empty).unwrap().len(), 0);
    }

    #[test]
    fn open_rejects_wrong_aad_key_and_tampering_without_leaking() {
        let k = SealKey::new(SecretBytes::new(vec![0x42; 32])).unwrap();
        let sealed = k.seal(b"ctx", b"the plaintext").unwrap();
        let check = |r: TokenResult<SecretBytes>| match r {
            Err(TokenError::DeviceError(msg)) => {
                assert!(msg.starts_with("integrity check failed"), "{msg}");
                assert!(!msg.contains("plaintext") && !msg.contains("42"), "{msg}");
            }
            other => panic!("expected an integrity error, got {other:?}"),
        };
        check(k.open(b"ctx2", &sealed));
        let other = SealKey::new(SecretBytes::new(vec![0x43; 32])).unwrap();
        check(other.open(b"ctx", &sealed));
        for i in [0, 12, sealed.len() - 1] {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            check(k.open(b"ctx", &t));
        }
        check(k.open(b"ctx", &sealed[..27]));
        check(k.open(b"ctx", &[]));
        assert_eq!(k.key_bytes(), &[0x42; 32]);
        assert_eq!(format!("{k:?}"), "SealKey(AES-256-GCM)");
        assert!(SealKey::new(SecretBytes::new(vec![0; 16])).is_err());
    }
}
