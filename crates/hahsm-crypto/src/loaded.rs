//! Keys parsed once and cached by the daemon.
//!
//! Parsing a private key (and, for RSA, checking it) costs far more than one
//! signature, so the daemon decrypts a key from its store once, turns it into
//! a [`LoadedKey`] and keeps that. The hot paths (RSA PKCS#1 v1.5 with
//! SHA-256/384/512, and ECDSA with the curve's own hash) use an aws-lc-rs key
//! built here, at load time. Everything else builds what it needs on first use
//! and caches it in a `OnceLock`, so no key is ever parsed twice.
use crate::keys::{Curve, PublicKey};
use crate::pq::{MlDsaSet, MlKemSet};
use crate::{ck, SecretBytes, TokenError, TokenResult};
use aws_lc_rs::agreement;
use aws_lc_rs::kem;
use aws_lc_rs::rsa;
use aws_lc_rs::signature::{self as sig, KeyPair as _};
use hahsm_awslc_ffi as ffi;
use std::fmt;
use std::sync::OnceLock;

/// Key material the daemon decrypts from its store, for one operation or to
/// build a cached [`LoadedKey`].
pub enum KeyMaterial {
    /// PKCS#8 DER.
    RsaPrivate(SecretBytes),
    /// PKCS#8 DER of a key on `curve`.
    EcPrivate {
        curve: Curve,
        pkcs8: SecretBytes,
    },
    /// PKCS#8 DER.
    Ed25519Private(SecretBytes),
    /// 16, 24 or 32 bytes.
    Aes(SecretBytes),
    /// 24 bytes: a three-key triple-DES key (legacy policy).
    Des3(SecretBytes),
    /// Any non-empty length (HMAC keys).
    GenericSecret(SecretBytes),
    /// The 32-byte FIPS 204 key-generation seed ξ.
    MlDsaPrivate {
        set: MlDsaSet,
        seed: SecretBytes,
    },
    /// The FIPS 203 decapsulation key dk, as aws-lc-rs's `key_bytes()`
    /// gives it.
    MlKemPrivate {
        set: MlKemSet,
        value: SecretBytes,
    },
    Public(PublicKey),
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyMaterial::RsaPrivate(s) => f.debug_tuple("RsaPrivate").field(s).finish(),
            KeyMaterial::EcPrivate { curve, pkcs8 } => f
                .debug_struct("EcPrivate")
                .field("curve", curve)
                .field("pkcs8", pkcs8)
                .finish(),
            KeyMaterial::Ed25519Private(s) => f.debug_tuple("Ed25519Private").field(s).finish(),
            KeyMaterial::Aes(s) => f.debug_tuple("Aes").field(s).finish(),
            KeyMaterial::Des3(s) => f.debug_tuple("Des3").field(s).finish(),
            KeyMaterial::GenericSecret(s) => f.debug_tuple("GenericSecret").field(s).finish(),
            KeyMaterial::MlDsaPrivate { set, seed } => f
                .debug_struct("MlDsaPrivate")
                .field("set", set)
                .field("seed", seed)
                .finish(),
            KeyMaterial::MlKemPrivate { set, value } => f
                .debug_struct("MlKemPrivate")
                .field("set", set)
                .field("value", value)
                .finish(),
            KeyMaterial::Public(p) => f.debug_tuple("Public").field(p).finish(),
        }
    }
}

/// A key ready for use: `Send + Sync`, cheap to use many times from many
/// threads. Its `Debug` output shows the kind of key only.
pub struct LoadedKey {
    pub(crate) inner: Inner,
}

pub(crate) enum Inner {
    RsaPrivate(Box<RsaPrivate>),
    RsaPublic(Box<RsaPublic>),
    EcPrivate(Box<EcPrivate>),
    EcPublic(Box<EcPublic>),
    Ed25519Private(Box<EdPrivate>),
    Ed25519Public(Box<EdPublic>),
    MlDsaPrivate(Box<MlDsa>),
    MlDsaPublic(Box<MlDsa>),
    MlKemPrivate(Box<MlKemPrivate>),
    MlKemPublic(Box<MlKemPublic>),
    Secret { key_type: u64, bytes: SecretBytes },
}

/// A cell filled on first use with the result of building something; a
/// failure is cached too (building the same thing again would fail again).
pub(crate) type Lazy<T> = OnceLock<TokenResult<T>>;

pub(crate) fn lazy<T>(cell: &Lazy<T>, build: impl FnOnce() -> TokenResult<T>) -> TokenResult<&T> {
    cell.get_or_init(build).as_ref().map_err(Clone::clone)
}

/// RSA keys with a modulus shorter than this many bytes (2048 bits) are
/// legacy keys: aws-lc-rs does not use them, AWS-LC does.
pub(crate) const LEGACY_RSA_BELOW: usize = 256;

fn corrupt(what: &str) -> TokenError {
    // Material from our own store that does not parse: the store is damaged.
    TokenError::DeviceError(format!("stored {what} key does not parse"))
}

pub(crate) struct RsaPrivate {
    pub(crate) public: PublicKey,
    pub(crate) size: usize,
    /// aws-lc-rs signer: the PKCS#1 v1.5 SHA-2 hot path. None for a key
    /// below 2048 bits (legacy policy), which aws-lc-rs does not load:
    /// everything then runs on `raw`.
    pub(crate) signer: Option<rsa::KeyPair>,
    pkcs8: SecretBytes,
    /// Raw, PSS, DigestInfo-based and mixed-hash OAEP operations.
    raw: Lazy<ffi::RsaKey>,
    decrypter: Lazy<rsa::PrivateDecryptingKey>,
    encrypter: Lazy<rsa::PublicEncryptingKey>,
}

impl RsaPrivate {
    pub(crate) fn raw(&self) -> TokenResult<&ffi::RsaKey> {
        lazy(&self.raw, || {
            ffi::RsaKey::from_pkcs8(self.pkcs8.expose()).map_err(|_| corrupt("RSA"))
        })
    }

    pub(crate) fn decrypter(&self) -> TokenResult<&rsa::PrivateDecryptingKey> {
        lazy(&self.decrypter, || {
            rsa::PrivateDecryptingKey::from_pkcs8(self.pkcs8.expose()).map_err(|_| corrupt("RSA"))
        })
    }

    pub(crate) fn encrypter(&self) -> TokenResult<&rsa::PublicEncryptingKey> {
        lazy(&self.encrypter, || {
            rsa::PublicEncryptingKey::from_der(&self.public.to_spki_der()).map_err(|_| corrupt("RSA"))
        })
    }
}

pub(crate) struct RsaPublic {
    pub(crate) public: PublicKey,
    pub(crate) size: usize,
    pub(crate) raw: ffi::RsaKey,
    encrypter: Lazy<rsa::PublicEncryptingKey>,
}

impl RsaPublic {
    pub(crate) fn encrypter(&self) -> TokenResult<&rsa::PublicEncryptingKey> {
        lazy(&self.encrypter, || {
            rsa::PublicEncryptingKey::from_der(&self.public.to_spki_der())
                .map_err(|_| TokenError::KeySizeRange("RSA key size is not supported for encryption".into()))
        })
    }
}

pub(crate) struct EcPrivate {
    pub(crate) curve: Curve,
    pub(crate) public: PublicKey,
    /// aws-lc-rs signer bound to the curve's own hash: the hot path.
    pub(crate) signer: sig::EcdsaKeyPair,
    pkcs8: SecretBytes,
    /// Prehashed ECDSA and other curve/hash pairs; verification.
    raw: Lazy<ffi::EcKey>,
    agreement: Lazy<agreement::PrivateKey>,
}

impl EcPrivate {
    pub(crate) fn raw(&self) -> TokenResult<&ffi::EcKey> {
        lazy(&self.raw, || {
            ffi::EcKey::from_pkcs8(self.pkcs8.expose()).map_err(|_| corrupt("EC"))
        })
    }

    pub(crate) fn agreement(&self) -> TokenResult<&agreement::PrivateKey> {
        lazy(&self.agreement, || {
            agreement::PrivateKey::from_private_key_der(self.curve.ecdh(), self.pkcs8.expose())
                .map_err(|_| corrupt("EC"))
        })
    }
}

pub(crate) struct EcPublic {
    pub(crate) curve: Curve,
    pub(crate) public: PublicKey,
    pub(crate) raw: ffi::EcKey,
}

pub(crate) struct EdPrivate {
    pub(crate) public: PublicKey,
    pub(crate) signer: sig::Ed25519KeyPair,
    pub(crate) verifier: sig::ParsedPublicKey,
}

pub(crate) struct EdPublic {
    pub(crate) public: PublicKey,
    pub(crate) verifier: sig::ParsedPublicKey,
}

/// An ML-DSA key; a private one holds its public half too, so it verifies.
pub(crate) struct MlDsa {
    pub(crate) set: MlDsaSet,
    pub(crate) public: PublicKey,
    pub(crate) key: ffi::MlDsaKey,
}

pub(crate) struct MlKemPrivate {
    pub(crate) set: MlKemSet,
    pub(crate) public: PublicKey,
    pub(crate) dk: kem::DecapsulationKey,
    /// aws-lc-rs gives no encapsulation key for a dk built from bytes, so
    /// it is built from the ek that dk embeds.
    pub(crate) ek: kem::EncapsulationKey,
}

pub(crate) struct MlKemPublic {
    pub(crate) set: MlKemSet,
    pub(crate) public: PublicKey,
    pub(crate) ek: kem::EncapsulationKey,
}

impl LoadedKey {
    /// Parses (and for private keys, validates) key material once.
    pub fn load(material: KeyMaterial) -> TokenResult<LoadedKey> {
        let inner = match material {
            KeyMaterial::RsaPrivate(pkcs8) => {
                let (signer, public, size) = match rsa::KeyPair::from_pkcs8(pkcs8.expose()) {
                    Ok(signer) => {
                        let pk = signer.public_key();
                        let public = PublicKey::Rsa {
                            modulus: pk.modulus().big_endian_without_leading_zero().to_vec(),
                            public_exponent: pk.exponent().big_endian_without_leading_zero().to_vec(),
                        };
                        let size = signer.public_modulus_len();
                        (Some(signer), public, size)
                    }
                    // aws-lc-rs loads 2048 bits and more; a smaller key
                    // (made under the legacy policy) runs on AWS-LC directly.
                    Err(_) => {
                        let raw = ffi::RsaKey::from_pkcs8(pkcs8.expose()).map_err(|_| corrupt("RSA"))?;
                        let (modulus, public_exponent) =
                            raw.public_components().map_err(|_| corrupt("RSA"))?;
                        if raw.size() >= LEGACY_RSA_BELOW {
                            return Err(corrupt("RSA"));
                        }
                        let public = PublicKey::Rsa {
                            modulus,
                            public_exponent,
                        };
                        (None, public, raw.size())
                    }
                };
                Inner::RsaPrivate(Box::new(RsaPrivate {
                    size,
                    public,
                    signer,
                    pkcs8,
                    raw: OnceLock::new(),
                    decrypter: OnceLock::new(),
                    encrypter: OnceLock::new(),
                }))
            }
            KeyMaterial::EcPrivate { curve, pkcs8 } => {
                let signer = sig::EcdsaKeyPair::from_pkcs8(curve.native_signing(), pkcs8.expose())
                    .map_err(|_| corrupt("EC"))?;
                let public = PublicKey::Ec {
                    curve,
                    point: signer.public_key().as_ref().to_vec(),
                };
                Inner::EcPrivate(Box::new(EcPrivate {
                    curve,
                    public,
                    signer,
                    pkcs8,
                    raw: OnceLock::new(),
                    agreement: OnceLock::new(),
                }))
            }
            KeyMaterial::Ed25519Private(pkcs8) => {
                let signer =
                    sig::Ed25519KeyPair::from_pkcs8(pkcs8.expose()).map_err(|_| corrupt("Ed25519"))?;
                let point = signer.public_key().as_ref().to_vec();
                let verifier =
                    sig::ParsedPublicKey::new(&sig::ED25519, &point).map_err(|_| corrupt("Ed25519"))?;
                Inner::Ed25519Private(Box::new(EdPrivate {
                    public: PublicKey::Ed25519 { point },
                    signer,
                    verifier,
                }))
            }
            KeyMaterial::Aes(bytes) => {
                if !matches!(bytes.len(), 16 | 24 | 32) {
                    return Err(TokenError::KeySizeRange("AES keys are 16, 24 or 32 bytes".into()));
                }
                Inner::Secret {
                    key_type: ck::CKK_AES,
                    bytes,
                }
            }
            KeyMaterial::Des3(bytes) => {
                if bytes.len() != 24 {
                    return Err(TokenError::KeySizeRange("triple-DES keys are 24 bytes".into()));
                }
                Inner::Secret {
                    key_type: ck::CKK_DES3,
                    bytes,
                }
            }
            KeyMaterial::GenericSecret(bytes) => {
                if bytes.is_empty() {
                    return Err(TokenError::KeySizeRange("a secret key cannot be empty".into()));
                }
                Inner::Secret {
                    key_type: ck::CKK_GENERIC_SECRET,
                    bytes,
                }
            }
            KeyMaterial::MlDsaPrivate { set, seed } => {
                let key =
                    ffi::MlDsaKey::from_seed(set.ffi(), seed.expose()).map_err(|_| corrupt("ML-DSA"))?;
                let value = key.public_key().map_err(|_| corrupt("ML-DSA"))?;
                Inner::MlDsaPrivate(Box::new(MlDsa {
                    set,
                    public: PublicKey::MlDsa { set, value },
                    key,
                }))
            }
            KeyMaterial::MlKemPrivate { set, value } => {
                let ek = set.public_of(value.expose()).ok_or_else(|| corrupt("ML-KEM"))?;
                let public = PublicKey::MlKem {
                    set,
                    value: ek.to_vec(),
                };
                let ek = kem::EncapsulationKey::new(set.alg(), ek).map_err(|_| corrupt("ML-KEM"))?;
                let dk =
                    kem::DecapsulationKey::new(set.alg(), value.expose()).map_err(|_| corrupt("ML-KEM"))?;
                Inner::MlKemPrivate(Box::new(MlKemPrivate { set, public, dk, ek }))
            }
            KeyMaterial::Public(public) => match &public {
                PublicKey::Rsa {
                    modulus,
                    public_exponent,
                } => {
                    let raw = ffi::RsaKey::from_public_components(modulus, public_exponent)
                        .map_err(|_| TokenError::AttributeValueInvalid(ck::CKA_MODULUS))?;
                    Inner::RsaPublic(Box::new(RsaPublic {
                        size: raw.size(),
                        raw,
                        public,
                        encrypter: OnceLock::new(),
                    }))
                }
                PublicKey::Ec { curve, point } => {
                    public.validate()?;
                    let raw = ffi::EcKey::from_public_point(curve.ffi(), point)
                        .map_err(|_| TokenError::AttributeValueInvalid(ck::CKA_EC_POINT))?;
                    Inner::EcPublic(Box::new(EcPublic {
                        curve: *curve,
                        raw,
                        public,
                    }))
                }
                PublicKey::Ed25519 { point } => {
                    let verifier = sig::ParsedPublicKey::new(&sig::ED25519, point)
                        .map_err(|_| TokenError::AttributeValueInvalid(ck::CKA_EC_POINT))?;
                    Inner::Ed25519Public(Box::new(EdPublic { public, verifier }))
                }
                PublicKey::MlDsa { set, value } => {
                    let key = ffi::MlDsaKey::from_public(set.ffi(), value)
                        .map_err(|_| TokenError::AttributeValueInvalid(ck::CKA_VALUE))?;
                    Inner::MlDsaPublic(Box::new(MlDsa {
                        set: *set,
                        public,
                        key,
                    }))
                }
                PublicKey::MlKem { set, value } => {
                    public.validate()?;
                    let ek = kem::EncapsulationKey::new(set.alg(), value)
                        .map_err(|_| TokenError::AttributeValueInvalid(ck::CKA_VALUE))?;
                    Inner::MlKemPublic(Box::new(MlKemPublic {
                        set: *set,
                        public,
                        ek,
                    }))
                }
            },
        };
        Ok(LoadedKey { inner })
    }

    /// `CKK_RSA`, `CKK_EC`, `CKK_EC_EDWARDS`, `CKK_ML_DSA`, `CKK_ML_KEM`,
    /// `CKK_AES`, `CKK_DES3` or `CKK_GENERIC_SECRET`.
    pub fn key_type(&self) -> u64 {
        match &self.inner {
            Inner::RsaPrivate(_) | Inner::RsaPublic(_) => ck::CKK_RSA,
            Inner::EcPrivate(_) | Inner::EcPublic(_) => ck::CKK_EC,
            Inner::Ed25519Private(_) | Inner::Ed25519Public(_) => ck::CKK_EC_EDWARDS,
            Inner::MlDsaPrivate(_) | Inner::MlDsaPublic(_) => ck::CKK_ML_DSA,
            Inner::MlKemPrivate(_) | Inner::MlKemPublic(_) => ck::CKK_ML_KEM,
            Inner::Secret { key_type, .. } => *key_type,
        }
    }

    /// `CKA_PARAMETER_SET` of an ML-DSA or ML-KEM key.
    pub fn parameter_set(&self) -> Option<u64> {
        match &self.inner {
            Inner::MlDsaPrivate(k) | Inner::MlDsaPublic(k) => Some(k.set.ckp()),
            Inner::MlKemPrivate(k) => Some(k.set.ckp()),
            Inner::MlKemPublic(k) => Some(k.set.ckp()),
            _ => None,
        }
    }

    /// The public half of an asymmetric key.
    pub fn public(&self) -> Option<&PublicKey> {
        match &self.inner {
            Inner::RsaPrivate(k) => Some(&k.public),
            Inner::RsaPublic(k) => Some(&k.public),
            Inner::EcPrivate(k) => Some(&k.public),
            Inner::EcPublic(k) => Some(&k.public),
            Inner::Ed25519Private(k) => Some(&k.public),
            Inner::Ed25519Public(k) => Some(&k.public),
            Inner::MlDsaPrivate(k) | Inner::MlDsaPublic(k) => Some(&k.public),
            Inner::MlKemPrivate(k) => Some(&k.public),
            Inner::MlKemPublic(k) => Some(&k.public),
            Inner::Secret { .. } => None,
        }
    }

    /// Whether the key holds private or secret material.
    pub fn is_private(&self) -> bool {
        matches!(
            self.inner,
            Inner::RsaPrivate(_)
                | Inner::EcPrivate(_)
                | Inner::Ed25519Private(_)
                | Inner::MlDsaPrivate(_)
                | Inner::MlKemPrivate(_)
                | Inner::Secret { .. }
        )
    }

    /// Bytes of the secret value of an AES or generic secret key.
    pub(crate) fn secret(&self) -> Option<&SecretBytes> {
        match &self.inner {
            Inner::Secret { bytes, .. } => Some(bytes),
            _ => None,
        }
    }
}

impl fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner {
            Inner::RsaPrivate(_) => "RsaPrivate",
            Inner::RsaPublic(_) => "RsaPublic",
            Inner::EcPrivate(_) => "EcPrivate",
            Inner::EcPublic(_) => "EcPublic",
            Inner::Ed25519Private(_) => "Ed25519Private",
            Inner::Ed25519Public(_) => "Ed25519Public",
            Inner::MlDsaPrivate(_) => "MlDsaPrivate",
            Inner::MlDsaPublic(_) => "MlDsaPublic",
            Inner::MlKemPrivate(_) => "MlKemPrivate",
            Inner::MlKemPublic(_) => "MlKemPublic",
            Inner::Secret { key_type, .. } if *key_type == ck::CKK_AES => "Aes",
            Inner::Secret { key_type, .. } if *key_type == ck::CKK_DES3 => "Des3",
            Inner::Secret { .. } => "GenericSecret",
        };
        f.debug_struct("LoadedKey")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{generate_ec, generate_ed25519, generate_rsa};

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn loaded_key_is_send_and_sync() {
        assert_send_sync::<LoadedKey>();
    }

    #[test]
    fn load_reports_type_and_public_half() {
        let rsa = generate_rsa(2048, None).unwrap();
        let k = LoadedKey::load(KeyMaterial::RsaPrivate(rsa.private_pkcs8.clone())).unwrap();
        assert_eq!(k.key_type(), ck::CKK_RSA);
        assert_eq!(k.public(), Some(&rsa.public));
        assert!(k.is_private());
        let p = LoadedKey::load(KeyMaterial::Public(rsa.public.clone())).unwrap();
        assert!(!p.is_private());

        let ec = generate_ec(Curve::P384).unwrap();
        let k = LoadedKey::load(KeyMaterial::EcPrivate {
            curve: Curve::P384,
            pkcs8: ec.private_pkcs8.clone(),
        })
        .unwrap();
        assert_eq!(k.public(), Some(&ec.public));
        // The wrong curve for the material is refused.
        assert!(LoadedKey::load(KeyMaterial::EcPrivate {
            curve: Curve::P256,
            pkcs8: ec.private_pkcs8
        })
        .is_err());

        let ed = generate_ed25519().unwrap();
        let k = LoadedKey::load(KeyMaterial::Ed25519Private(ed.private_pkcs8)).unwrap();
        assert_eq!(k.key_type(), ck::CKK_EC_EDWARDS);

        assert!(matches!(
            LoadedKey::load(KeyMaterial::Aes(SecretBytes::new(vec![0; 15]))),
            Err(TokenError::KeySizeRange(_))
        ));
        let aes = LoadedKey::load(KeyMaterial::Aes(SecretBytes::new(vec![0x5a; 32]))).unwrap();
        assert_eq!(format!("{aes:?}"), "LoadedKey { kind: \"Aes\", .. }");
        assert!(LoadedKey::load(KeyMaterial::RsaPrivate(SecretBytes::new(b"junk".to_vec()))).is_err());
    }

    #[test]
    fn bad_public_points_are_refused() {
        let ec = generate_ec(Curve::P256).unwrap();
        let PublicKey::Ec { point, .. } = ec.public else {
            unreachable!()
        };
        let mut off = point.clone();
        off[64] ^= 1;
        assert!(LoadedKey::load(KeyMaterial::Public(PublicKey::Ec {
            curve: Curve::P256,
            point: off
        }))
        .is_err());
        assert!(LoadedKey::load(KeyMaterial::Public(PublicKey::Ec {
            curve: Curve::P384,
            point
        }))
        .is_err());
    }
}
