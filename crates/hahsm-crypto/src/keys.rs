//! Key formats: curves, public keys and their encodings, key generation and
//! private-key import. Private keys always leave this module as normalized
//! PKCS#8 v1 DER inside [`SecretBytes`].
use crate::der::{self, Reader};
use crate::pq::{MlDsaSet, MlKemSet};
use crate::{ck, SecretBytes, TokenError, TokenResult};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::error::KeyRejected;
use aws_lc_rs::signature::{self as sig, KeyPair as _};
use aws_lc_rs::{agreement, rsa};
use hahsm_awslc_ffi as ffi;
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::Zeroizing;

// OID contents (without tag and length).
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// `CKA_EC_PARAMS` of an Ed25519 key: the DER OID 1.3.101.112 (RFC 8410), as
/// PKCS#11 3.x recommends.
pub const ED25519_EC_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// Whether a `CKA_EC_PARAMS` value names Ed25519: the RFC 8410 OID, or the
/// PrintableString "edwards25519" that PKCS#11 3.0 also allows.
pub fn is_ed25519_params(der: &[u8]) -> bool {
    const PRINTABLE: &[u8] = b"\x13\x0cedwards25519";
    der == ED25519_EC_PARAMS || der == PRINTABLE
}

/// The NIST curves hahsm supports for ECDSA and ECDH.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    /// The curve named by a `CKA_EC_PARAMS` value: a DER OBJECT IDENTIFIER
    /// (namedCurve). Explicit parameters and curve names are not accepted.
    pub fn from_ec_params(der: &[u8]) -> TokenResult<Curve> {
        let oid = der::parse_single(der, der::TAG_OID)
            .ok_or(TokenError::AttributeValueInvalid(ck::CKA_EC_PARAMS))?;
        Curve::from_oid(oid).ok_or(TokenError::AttributeValueInvalid(ck::CKA_EC_PARAMS))
    }

    fn from_oid(oid: &[u8]) -> Option<Curve> {
        match oid {
            OID_P256 => Some(Curve::P256),
            OID_P384 => Some(Curve::P384),
            OID_P521 => Some(Curve::P521),
            _ => None,
        }
    }

    fn oid(self) -> &'static [u8] {
        match self {
            Curve::P256 => OID_P256,
            Curve::P384 => OID_P384,
            Curve::P521 => OID_P521,
        }
    }

    /// The `CKA_EC_PARAMS` value: the curve's DER-encoded OID.
    pub fn ec_params(self) -> Vec<u8> {
        der::tlv(der::TAG_OID, self.oid())
    }

    /// Field size in bits (what `C_GetMechanismInfo` key sizes count).
    pub fn bits(self) -> u64 {
        match self {
            Curve::P256 => 256,
            Curve::P384 => 384,
            Curve::P521 => 521,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }

    /// Bytes of one coordinate, and of each of `r` and `s` in a signature.
    pub fn field_len(self) -> usize {
        self.ffi().field_len()
    }

    /// Length of the uncompressed point `04 || X || Y`.
    pub fn point_len(self) -> usize {
        1 + 2 * self.field_len()
    }

    pub(crate) fn ffi(self) -> ffi::EcCurve {
        match self {
            Curve::P256 => ffi::EcCurve::P256,
            Curve::P384 => ffi::EcCurve::P384,
            Curve::P521 => ffi::EcCurve::P521,
        }
    }

    /// The aws-lc-rs signing algorithm that pairs the curve with its own hash
    /// (the common case, and the benchmarked hot path).
    pub(crate) fn native_signing(self) -> &'static sig::EcdsaSigningAlgorithm {
        match self {
            Curve::P256 => &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
            Curve::P384 => &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
            Curve::P521 => &sig::ECDSA_P521_SHA512_FIXED_SIGNING,
        }
    }

    /// The hash `native_signing` uses.
    pub(crate) fn native_hash(self) -> ffi::Hash {
        match self {
            Curve::P256 => ffi::Hash::Sha256,
            Curve::P384 => ffi::Hash::Sha384,
            Curve::P521 => ffi::Hash::Sha512,
        }
    }

    pub(crate) fn ecdh(self) -> &'static agreement::Algorithm {
        match self {
            Curve::P256 => &agreement::ECDH_P256,
            Curve::P384 => &agreement::ECDH_P384,
            Curve::P521 => &agreement::ECDH_P521,
        }
    }

    const ALL: [Curve; 3] = [Curve::P256, Curve::P384, Curve::P521];
}

/// A public key in the form PKCS#11 attributes carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublicKey {
    /// Big-endian modulus and public exponent, without leading zeros.
    Rsa {
        modulus: Vec<u8>,
        public_exponent: Vec<u8>,
    },
    /// `point` is uncompressed: `04 || X || Y`.
    Ec { curve: Curve, point: Vec<u8> },
    /// The 32-byte RFC 8032 public key.
    Ed25519 { point: Vec<u8> },
    /// The FIPS 204 encoded public key (`CKA_VALUE`).
    MlDsa { set: MlDsaSet, value: Vec<u8> },
    /// The FIPS 203 encapsulation key ek (`CKA_VALUE`).
    MlKem { set: MlKemSet, value: Vec<u8> },
}

impl PublicKey {
    /// X.509 SubjectPublicKeyInfo, DER.
    pub fn to_spki_der(&self) -> Vec<u8> {
        match self {
            PublicKey::Rsa {
                modulus,
                public_exponent,
            } => {
                let alg = der::sequence(&[
                    &der::tlv(der::TAG_OID, OID_RSA_ENCRYPTION),
                    &der::tlv(der::TAG_NULL, &[]),
                ]);
                let key = der::sequence(&[
                    &der::unsigned_integer(modulus),
                    &der::unsigned_integer(public_exponent),
                ]);
                der::sequence(&[&alg, &der::bit_string(&key)])
            }
            PublicKey::Ec { curve, point } => {
                let alg = der::sequence(&[&der::tlv(der::TAG_OID, OID_EC_PUBLIC_KEY), &curve.ec_params()]);
                der::sequence(&[&alg, &der::bit_string(point)])
            }
            PublicKey::Ed25519 { point } => {
                let alg = der::sequence(&[&der::tlv(der::TAG_OID, OID_ED25519)]);
                der::sequence(&[&alg, &der::bit_string(point)])
            }
            // RFC 9881 and RFC 9935: the OID alone, no parameters, and the
            // raw key as the BIT STRING.
            PublicKey::MlDsa { set, value } => {
                let alg = der::sequence(&[&der::tlv(der::TAG_OID, set.oid())]);
                der::sequence(&[&alg, &der::bit_string(value)])
            }
            PublicKey::MlKem { set, value } => {
                let alg = der::sequence(&[&der::tlv(der::TAG_OID, set.oid())]);
                der::sequence(&[&alg, &der::bit_string(value)])
            }
        }
    }

    /// PEM "PUBLIC KEY" (SubjectPublicKeyInfo), with `\n` line endings.
    pub fn to_pem(&self) -> String {
        let p = pem::Pem::new("PUBLIC KEY", self.to_spki_der());
        pem::encode_config(&p, pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
    }

    /// Parses and validates a SubjectPublicKeyInfo (RSA, EC on a supported
    /// curve with an uncompressed point, Ed25519, ML-DSA or ML-KEM).
    pub fn from_spki_der(spki: &[u8]) -> TokenResult<PublicKey> {
        let bad = || TokenError::AttributeValueInvalid(ck::CKA_PUBLIC_KEY_INFO);
        let body = der::parse_single(spki, der::TAG_SEQUENCE).ok_or_else(bad)?;
        let mut r = Reader::new(body);
        let alg = r.read(der::TAG_SEQUENCE).ok_or_else(bad)?;
        let bits = r
            .read(der::TAG_BIT_STRING)
            .and_then(der::bit_string_bytes)
            .ok_or_else(bad)?;
        if !r.is_empty() {
            return Err(bad());
        }
        let mut a = Reader::new(alg);
        let oid = a.read(der::TAG_OID).ok_or_else(bad)?;
        let key = match oid {
            OID_RSA_ENCRYPTION => {
                // Parameters: NULL, or (leniently) absent.
                if !a.is_empty() && a.read(der::TAG_NULL) != Some(&[]) {
                    return Err(bad());
                }
                let seq = der::parse_single(bits, der::TAG_SEQUENCE).ok_or_else(bad)?;
                let mut k = Reader::new(seq);
                let n = k
                    .read(der::TAG_INTEGER)
                    .and_then(der::integer_to_unsigned)
                    .ok_or_else(bad)?;
                let e = k
                    .read(der::TAG_INTEGER)
                    .and_then(der::integer_to_unsigned)
                    .ok_or_else(bad)?;
                if !k.is_empty() {
                    return Err(bad());
                }
                PublicKey::Rsa {
                    modulus: n.to_vec(),
                    public_exponent: e.to_vec(),
                }
            }
            OID_EC_PUBLIC_KEY => {
                let curve = a.read(der::TAG_OID).and_then(Curve::from_oid).ok_or_else(bad)?;
                PublicKey::Ec {
                    curve,
                    point: bits.to_vec(),
                }
            }
            OID_ED25519 => PublicKey::Ed25519 { point: bits.to_vec() },
            _ => {
                if let Some(set) = MlDsaSet::from_oid(oid) {
                    PublicKey::MlDsa {
                        set,
                        value: bits.to_vec(),
                    }
                } else if let Some(set) = MlKemSet::from_oid(oid) {
                    PublicKey::MlKem {
                        set,
                        value: bits.to_vec(),
                    }
                } else {
                    return Err(bad());
                }
            }
        };
        if !a.is_empty() {
            return Err(bad());
        }
        key.validate()?;
        Ok(key)
    }

    /// Checks the key is usable: an RSA modulus AWS-LC accepts, an EC point
    /// on its curve, a well-formed Ed25519 key, an ML-DSA or ML-KEM key of
    /// its set's length that AWS-LC accepts.
    pub fn validate(&self) -> TokenResult<()> {
        match self {
            PublicKey::Rsa {
                modulus,
                public_exponent,
            } => {
                ffi::RsaKey::from_public_components(modulus, public_exponent)
                    .map_err(|_| TokenError::AttributeValueInvalid(ck::CKA_MODULUS))?;
            }
            PublicKey::Ec { curve, point } => {
                if point.len() != curve.point_len() || point.first() != Some(&0x04) {
                    return Err(TokenError::AttributeValueInvalid(ck::CKA_EC_POINT));
                }
                ffi::EcKey::from_public_point(curve.ffi(), point)
                    .map_err(|_| TokenError::AttributeValueInvalid(ck::CKA_EC_POINT))?;
            }
            PublicKey::Ed25519 { point } => {
                sig::ParsedPublicKey::new(&sig::ED25519, point)
                    .map_err(|_| TokenError::AttributeValueInvalid(ck::CKA_EC_POINT))?;
            }
            PublicKey::MlDsa { set, value } => {
                ffi::MlDsaKey::from_public(set.ffi(), value)
                    .map_err(|_| TokenError::AttributeValueInvalid(ck::CKA_VALUE))?;
            }
            PublicKey::MlKem { set, value } => {
                // aws-lc-rs checks the length; FIPS 203 §7.2's modulus check
                // (every coefficient below q) is done here.
                if value.len() != set.public_len() || !ml_kem_ek_coefficients_reduced(value) {
                    return Err(TokenError::AttributeValueInvalid(ck::CKA_VALUE));
                }
                aws_lc_rs::kem::EncapsulationKey::new(set.alg(), value)
                    .map_err(|_| TokenError::AttributeValueInvalid(ck::CKA_VALUE))?;
            }
        }
        Ok(())
    }

    /// `CKK_RSA`, `CKK_EC`, `CKK_EC_EDWARDS`, `CKK_ML_DSA` or `CKK_ML_KEM`.
    pub fn key_type(&self) -> u64 {
        match self {
            PublicKey::Rsa { .. } => ck::CKK_RSA,
            PublicKey::Ec { .. } => ck::CKK_EC,
            PublicKey::Ed25519 { .. } => ck::CKK_EC_EDWARDS,
            PublicKey::MlDsa { .. } => ck::CKK_ML_DSA,
            PublicKey::MlKem { .. } => ck::CKK_ML_KEM,
        }
    }

    /// `CKA_PARAMETER_SET` (`CKP_ML_DSA_*`, `CKP_ML_KEM_*`) for ML keys.
    pub fn parameter_set(&self) -> Option<u64> {
        match self {
            PublicKey::MlDsa { set, .. } => Some(set.ckp()),
            PublicKey::MlKem { set, .. } => Some(set.ckp()),
            _ => None,
        }
    }

    /// `CKA_MODULUS_BITS` for RSA keys.
    pub fn modulus_bits(&self) -> Option<u64> {
        match self {
            PublicKey::Rsa { modulus, .. } => Some(bit_len(modulus)),
            _ => None,
        }
    }

    /// `CKA_EC_PARAMS` for EC and Ed25519 keys.
    pub fn ec_params(&self) -> Option<Vec<u8>> {
        match self {
            PublicKey::Ec { curve, .. } => Some(curve.ec_params()),
            PublicKey::Ed25519 { .. } => Some(ED25519_EC_PARAMS.to_vec()),
            PublicKey::Rsa { .. } | PublicKey::MlDsa { .. } | PublicKey::MlKem { .. } => None,
        }
    }

    /// `CKA_EC_POINT`: the point wrapped in a DER OCTET STRING (the form
    /// PKCS#11 specifies), for EC and Ed25519 keys.
    pub fn ec_point_der(&self) -> Option<Vec<u8>> {
        match self {
            PublicKey::Ec { point, .. } | PublicKey::Ed25519 { point } => {
                Some(der::tlv(der::TAG_OCTET_STRING, point))
            }
            PublicKey::Rsa { .. } | PublicKey::MlDsa { .. } | PublicKey::MlKem { .. } => None,
        }
    }
}

/// FIPS 203 §7.2 input check: each 12-bit coefficient of `ByteEncode12(t̂)`
/// (the first 384k bytes of ek) is below q = 3329, so decoding and encoding
/// again gives the same bytes.
fn ml_kem_ek_coefficients_reduced(ek: &[u8]) -> bool {
    const Q: u16 = 3329;
    let t = &ek[..ek.len().saturating_sub(32)];
    t.chunks_exact(3).all(|c| {
        let (b0, b1, b2) = (u16::from(c[0]), u16::from(c[1]), u16::from(c[2]));
        let a = b0 | ((b1 & 0x0f) << 8);
        let b = (b1 >> 4) | (b2 << 4);
        a < Q && b < Q
    })
}

fn bit_len(be: &[u8]) -> u64 {
    let be = der::strip_leading_zeros(be);
    match be.first() {
        None => 0,
        Some(first) => (be.len() as u64 - 1) * 8 + u64::from(8 - first.leading_zeros()),
    }
}

/// Accepts a `CKA_EC_POINT` value in DER-wrapped (OCTET STRING, the form the
/// standard specifies) or raw form (which many applications send), and
/// returns the raw point. The two readings can never both give a valid point
/// length (33-byte or 1 + 2n-byte points with n in {32, 48, 66}), so the
/// choice is unambiguous.
pub fn ec_point_from_attribute(value: &[u8]) -> TokenResult<Vec<u8>> {
    let plausible = |p: &[u8]| -> bool {
        p.len() == 32 || (p.first() == Some(&0x04) && Curve::ALL.iter().any(|c| c.point_len() == p.len()))
    };
    if let Some(inner) = der::parse_single(value, der::TAG_OCTET_STRING) {
        if plausible(inner) {
            return Ok(inner.to_vec());
        }
    }
    if plausible(value) {
        return Ok(value.to_vec());
    }
    Err(TokenError::AttributeValueInvalid(ck::CKA_EC_POINT))
}

/// A freshly generated or imported key pair.
pub struct KeyPair {
    pub public: PublicKey,
    /// Normalized PKCS#8 v1 DER; for ML-DSA the 32-byte seed ξ, for ML-KEM
    /// the FIPS 203 decapsulation key dk (the forms `KeyMaterial` takes).
    pub private_pkcs8: SecretBytes,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .field("private_pkcs8", &self.private_pkcs8)
            .finish()
    }
}

fn rejected(e: KeyRejected, attr: u64) -> TokenError {
    match e.description_() {
        "TooSmall" | "TooLarge" => TokenError::KeySizeRange(format!("key rejected: {}", e.description_())),
        _ => TokenError::AttributeValueInvalid(attr),
    }
}

fn internal(what: &str) -> TokenError {
    TokenError::FunctionFailed(format!("{what} failed"))
}

fn rsa_keypair(kp: &rsa::KeyPair) -> TokenResult<KeyPair> {
    let pk = kp.public_key();
    let public = PublicKey::Rsa {
        modulus: pk.modulus().big_endian_without_leading_zero().to_vec(),
        public_exponent: pk.exponent().big_endian_without_leading_zero().to_vec(),
    };
    let der = kp.as_der().map_err(|_| internal("RSA PKCS#8 encoding"))?;
    Ok(KeyPair {
        public,
        private_pkcs8: SecretBytes::new(der.as_ref().to_vec()),
    })
}

fn ec_keypair(curve: Curve, kp: &sig::EcdsaKeyPair) -> TokenResult<KeyPair> {
    let public = PublicKey::Ec {
        curve,
        point: kp.public_key().as_ref().to_vec(),
    };
    let doc = kp.to_pkcs8v1().map_err(|_| internal("EC PKCS#8 encoding"))?;
    Ok(KeyPair {
        public,
        private_pkcs8: SecretBytes::new(doc.as_ref().to_vec()),
    })
}

fn ed25519_keypair(kp: &sig::Ed25519KeyPair) -> TokenResult<KeyPair> {
    let public = PublicKey::Ed25519 {
        point: kp.public_key().as_ref().to_vec(),
    };
    let doc = kp.to_pkcs8v1().map_err(|_| internal("Ed25519 PKCS#8 encoding"))?;
    Ok(KeyPair {
        public,
        private_pkcs8: SecretBytes::new(doc.as_ref().to_vec()),
    })
}

/// Generates an RSA key pair of 2048, 3072 or 4096 bits, or of
/// [`LEGACY_RSA_BITS`] (which the caller allows only under the partition's
/// legacy policy), with public exponent 65537 (the only exponent offered;
/// `public_exponent` may state it, with or without leading zeros).
pub fn generate_rsa(bits: u32, public_exponent: Option<&[u8]>) -> TokenResult<KeyPair> {
    if let Some(e) = public_exponent {
        if der::strip_leading_zeros(e) != [0x01, 0x00, 0x01] {
            return Err(TokenError::TemplateInconsistent(
                "the public exponent must be 65537".into(),
            ));
        }
    }
    let size = match bits {
        2048 => rsa::KeySize::Rsa2048,
        3072 => rsa::KeySize::Rsa3072,
        4096 => rsa::KeySize::Rsa4096,
        LEGACY_RSA_BITS => {
            // aws-lc-rs makes 2048 bits and more; AWS-LC makes the rest.
            let pkcs8 = ffi::RsaKey::generate_pkcs8(bits, &[0x01, 0x00, 0x01])
                .map_err(|_| internal("RSA key generation"))?;
            let raw = ffi::RsaKey::from_pkcs8(&pkcs8).map_err(|_| internal("RSA key generation"))?;
            let (modulus, public_exponent) = raw
                .public_components()
                .map_err(|_| internal("RSA key generation"))?;
            return Ok(KeyPair {
                public: PublicKey::Rsa {
                    modulus,
                    public_exponent,
                },
                private_pkcs8: SecretBytes::new(pkcs8.to_vec()),
            });
        }
        _ => {
            return Err(TokenError::KeySizeRange(format!(
                "RSA keys are 2048, 3072 or 4096 bits, not {bits}"
            )))
        }
    };
    let kp = rsa::KeyPair::generate(size).map_err(|_| internal("RSA key generation"))?;
    rsa_keypair(&kp)
}

/// The one RSA size below 2048 bits that hahsm makes, under the partition's
/// `allow-legacy-mechanisms` policy only.
pub const LEGACY_RSA_BITS: u32 = 1024;

pub fn generate_ec(curve: Curve) -> TokenResult<KeyPair> {
    let kp =
        sig::EcdsaKeyPair::generate(curve.native_signing()).map_err(|_| internal("EC key generation"))?;
    ec_keypair(curve, &kp)
}

pub fn generate_ed25519() -> TokenResult<KeyPair> {
    let kp = sig::Ed25519KeyPair::generate().map_err(|_| internal("Ed25519 key generation"))?;
    ed25519_keypair(&kp)
}

/// Imports a DER private key: PKCS#8 `PrivateKeyInfo` (RSA, EC, Ed25519, or
/// ML-DSA in the RFC 9881 seed form),
/// PKCS#1 `RSAPrivateKey`, or SEC1 `ECPrivateKey`. The key is fully
/// validated. Returns its public half and a normalized PKCS#8.
pub fn import_private_key_der(der_bytes: &[u8]) -> TokenResult<KeyPair> {
    let bad = || TokenError::AttributeValueInvalid(ck::CKA_VALUE);
    let body = der::parse_single(der_bytes, der::TAG_SEQUENCE).ok_or_else(bad)?;
    let mut r = Reader::new(body);
    r.read(der::TAG_INTEGER).ok_or_else(bad)?; // version
    match r.peek_tag() {
        // PKCS#8: version, AlgorithmIdentifier, OCTET STRING privateKey, ...
        Some(der::TAG_SEQUENCE) => {
            let alg = r.read(der::TAG_SEQUENCE).ok_or_else(bad)?;
            let mut a = Reader::new(alg);
            match a.read(der::TAG_OID).ok_or_else(bad)? {
                OID_RSA_ENCRYPTION => {
                    let kp = rsa::KeyPair::from_pkcs8(der_bytes).map_err(|e| rejected(e, ck::CKA_VALUE))?;
                    rsa_keypair(&kp)
                }
                OID_EC_PUBLIC_KEY => {
                    let curve = a
                        .read(der::TAG_OID)
                        .and_then(Curve::from_oid)
                        .ok_or(TokenError::AttributeValueInvalid(ck::CKA_EC_PARAMS))?;
                    let kp = sig::EcdsaKeyPair::from_pkcs8(curve.native_signing(), der_bytes)
                        .map_err(|e| rejected(e, ck::CKA_VALUE))?;
                    ec_keypair(curve, &kp)
                }
                OID_ED25519 => {
                    let kp =
                        sig::Ed25519KeyPair::from_pkcs8(der_bytes).map_err(|e| rejected(e, ck::CKA_VALUE))?;
                    ed25519_keypair(&kp)
                }
                oid => match MlDsaSet::from_oid(oid) {
                    Some(set) => {
                        if !a.is_empty() {
                            return Err(bad());
                        }
                        let private_key = r.read(der::TAG_OCTET_STRING).ok_or_else(bad)?;
                        crate::pq::ml_dsa_from_pkcs8_private(set, private_key)
                    }
                    None => Err(TokenError::TemplateInconsistent(
                        "unsupported private key algorithm".into(),
                    )),
                },
            }
        }
        // PKCS#1 RSAPrivateKey: version, modulus, ...
        Some(der::TAG_INTEGER) => {
            let kp = rsa::KeyPair::from_der(der_bytes).map_err(|e| rejected(e, ck::CKA_VALUE))?;
            rsa_keypair(&kp)
        }
        // SEC1 ECPrivateKey: version, OCTET STRING privateKey, [0] parameters, [1] publicKey
        Some(der::TAG_OCTET_STRING) => {
            r.read(der::TAG_OCTET_STRING).ok_or_else(bad)?;
            let named = match r.read_optional(der::TAG_CONTEXT_0) {
                Some(params) => Some(
                    der::parse_single(params, der::TAG_OID)
                        .and_then(Curve::from_oid)
                        .ok_or(TokenError::AttributeValueInvalid(ck::CKA_EC_PARAMS))?,
                ),
                None => None,
            };
            let candidates: &[Curve] = match &named {
                Some(c) => core::slice::from_ref(c),
                None => &Curve::ALL,
            };
            for &curve in candidates {
                if let Ok(kp) = sig::EcdsaKeyPair::from_private_key_der(curve.native_signing(), der_bytes) {
                    return ec_keypair(curve, &kp);
                }
            }
            Err(bad())
        }
        _ => Err(bad()),
    }
}

/// Imports a PEM private key: "PRIVATE KEY" (PKCS#8), "RSA PRIVATE KEY"
/// (PKCS#1) or "EC PRIVATE KEY" (SEC1). Other blocks in the input (such as
/// the "EC PARAMETERS" that `openssl ecparam -genkey` writes first) are
/// skipped. Encrypted keys are refused.
pub fn import_private_key_pem(pem_text: &str) -> TokenResult<KeyPair> {
    let blocks = pem::parse_many(pem_text)
        .map_err(|_| TokenError::ArgumentsBad("the input is not valid PEM".into()))?;
    let mut found = None;
    for block in blocks {
        match block.tag() {
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => {
                found = Some(Zeroizing::new(block.into_contents()));
                break;
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(TokenError::ArgumentsBad(
                    "encrypted private keys are not supported: decrypt it first".into(),
                ))
            }
            _ => {}
        }
    }
    let der_bytes =
        found.ok_or_else(|| TokenError::ArgumentsBad("no PRIVATE KEY block in the PEM input".into()))?;
    import_private_key_der(&der_bytes)
}

/// Builds an RSA private key from PKCS#11 attribute values (big-endian). The
/// primes are required; missing CRT values (`dp`, `dq`, `qinv` empty) are
/// computed. Every relation between the components is then checked.
#[allow(clippy::too_many_arguments, clippy::many_single_char_names)]
pub fn rsa_private_from_components(
    n: &[u8],
    e: &[u8],
    d: &[u8],
    p: &[u8],
    q: &[u8],
    dp: &[u8],
    dq: &[u8],
    qinv: &[u8],
) -> TokenResult<KeyPair> {
    let (n, e) = (der::strip_leading_zeros(n), der::strip_leading_zeros(e));
    if n.is_empty() || e.is_empty() || d.is_empty() {
        return Err(TokenError::TemplateIncomplete(
            "CKA_MODULUS, CKA_PUBLIC_EXPONENT and CKA_PRIVATE_EXPONENT are required".into(),
        ));
    }
    if p.is_empty() || q.is_empty() {
        return Err(TokenError::TemplateIncomplete(
            "CKA_PRIME_1 and CKA_PRIME_2 are required".into(),
        ));
    }
    let computed;
    let (dp, dq, qinv) = if dp.is_empty() || dq.is_empty() || qinv.is_empty() {
        computed = ffi::rsa_crt_params(d, p, q)
            .map_err(|_| TokenError::TemplateInconsistent("the RSA components do not form a key".into()))?;
        (&computed.dp[..], &computed.dq[..], &computed.qinv[..])
    } else {
        (dp, dq, qinv)
    };
    let components = rsa::KeyPairComponents {
        public_key: rsa::PublicKeyComponents { n, e },
        d,
        p,
        q,
        dP: dp,
        dQ: dq,
        qInv: qinv,
    };
    let kp = rsa::KeyPair::from_components(&components).map_err(|err| match err.description_() {
        "TooSmall" | "TooLarge" => TokenError::KeySizeRange("RSA modulus size is not supported".into()),
        _ => TokenError::TemplateInconsistent("the RSA components do not form a key".into()),
    })?;
    rsa_keypair(&kp)
}

/// Builds an EC private key from its scalar (`CKA_VALUE`, big-endian; leading
/// zeros may be missing).
pub fn ec_private_from_scalar(curve: Curve, scalar: &[u8]) -> TokenResult<KeyPair> {
    let s = der::strip_leading_zeros(scalar);
    let n = curve.field_len();
    if s.is_empty() || s.len() > n {
        return Err(TokenError::AttributeValueInvalid(ck::CKA_VALUE));
    }
    let mut padded = Zeroizing::new(vec![0u8; n]);
    padded[n - s.len()..].copy_from_slice(s);
    let key = agreement::PrivateKey::from_private_key(curve.ecdh(), &padded)
        .map_err(|_| TokenError::AttributeValueInvalid(ck::CKA_VALUE))?;
    let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der<'static> =
        key.as_der().map_err(|_| internal("EC PKCS#8 encoding"))?;
    let kp = sig::EcdsaKeyPair::from_pkcs8(curve.native_signing(), pkcs8.as_ref())
        .map_err(|_| TokenError::AttributeValueInvalid(ck::CKA_VALUE))?;
    ec_keypair(curve, &kp)
}

/// Builds an Ed25519 private key from its 32-byte seed (`CKA_VALUE`).
pub fn ed25519_private_from_seed(seed: &[u8]) -> TokenResult<KeyPair> {
    if seed.len() != 32 {
        return Err(TokenError::AttributeValueInvalid(ck::CKA_VALUE));
    }
    let kp = sig::Ed25519KeyPair::from_seed_unchecked(seed)
        .map_err(|_| TokenError::AttributeValueInvalid(ck::CKA_VALUE))?;
    ed25519_keypair(&kp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_params_round_trip() {
        for c in Curve::ALL {
            assert_eq!(Curve::from_ec_params(&c.ec_params()).unwrap(), c);
        }
        assert_eq!(
            Curve::P256.ec_params(),
            hex::decode("06082a8648ce3d030107").unwrap()
        );
        assert_eq!(Curve::P384.ec_params(), hex::decode("06052b81040022").unwrap());
        assert_eq!(Curve::P521.ec_params(), hex::decode("06052b81040023").unwrap());
        assert!(Curve::from_ec_params(ED25519_EC_PARAMS).is_err());
        assert!(Curve::from_ec_params(b"\x13\x0aprime256v1").is_err());
        assert!(is_ed25519_params(ED25519_EC_PARAMS));
        assert!(is_ed25519_params(b"\x13\x0cedwards25519"));
        assert_eq!(Curve::P521.bits(), 521);
        assert_eq!(Curve::P521.point_len(), 133);
        assert_eq!(Curve::P384.name(), "P-384");
    }

    #[test]
    fn ec_point_both_forms() {
        let kp = generate_ec(Curve::P256).unwrap();
        let raw = match &kp.public {
            PublicKey::Ec { point, .. } => point.clone(),
            _ => unreachable!(),
        };
        let wrapped = kp.public.ec_point_der().unwrap();
        assert_eq!(wrapped.len(), 67);
        assert_eq!(&wrapped[..2], &[0x04, 0x41]);
        assert_eq!(ec_point_from_attribute(&wrapped).unwrap(), raw);
        assert_eq!(ec_point_from_attribute(&raw).unwrap(), raw);
        // A raw point whose X starts with 0x3f looks like an OCTET STRING of 63
        // bytes; it must still be read as raw.
        let mut tricky = raw.clone();
        tricky[1] = 0x3f;
        assert_eq!(ec_point_from_attribute(&tricky).unwrap(), tricky);
        // Ed25519, both forms.
        let ed = generate_ed25519().unwrap();
        let w = ed.public.ec_point_der().unwrap();
        assert_eq!(w.len(), 34);
        assert_eq!(ec_point_from_attribute(&w).unwrap(), w[2..].to_vec());
        assert_eq!(ec_point_from_attribute(&w[2..]).unwrap(), w[2..].to_vec());
        // P-521 wrapped uses a long-form length.
        let big = generate_ec(Curve::P521).unwrap();
        let w = big.public.ec_point_der().unwrap();
        assert_eq!(&w[..3], &[0x04, 0x81, 0x85]);
        assert_eq!(ec_point_from_attribute(&w).unwrap().len(), 133);
        assert!(ec_point_from_attribute(&[0x04, 0x01, 0x02]).is_err());
        assert!(ec_point_from_attribute(&[]).is_err());
    }

    #[test]
    fn spki_round_trips_and_validates() {
        for kp in [
            generate_rsa(2048, None).unwrap(),
            generate_ec(Curve::P384).unwrap(),
            generate_ed25519().unwrap(),
        ] {
            let spki = kp.public.to_spki_der();
            assert_eq!(PublicKey::from_spki_der(&spki).unwrap(), kp.public);
            if matches!(kp.public, PublicKey::Ec { .. }) {
                let mut off_curve = spki.clone();
                let last = off_curve.len() - 1;
                off_curve[last] ^= 0x01;
                assert!(
                    PublicKey::from_spki_der(&off_curve).is_err(),
                    "EC point off the curve was accepted"
                );
            }
            assert!(PublicKey::from_spki_der(&spki[..spki.len() - 1]).is_err());
        }
        assert!(PublicKey::from_spki_der(&[]).is_err());
    }

    #[test]
    fn rsa_generation_rules() {
        for bits in [512, 1536, 8192] {
            assert!(matches!(
                generate_rsa(bits, None),
                Err(TokenError::KeySizeRange(_))
            ));
        }
        // The legacy size is made (the member asks for it only under the
        // legacy policy), loads and signs, through AWS-LC directly.
        let legacy = generate_rsa(LEGACY_RSA_BITS, None).unwrap();
        assert_eq!(legacy.public.modulus_bits(), Some(1024));
        let k = crate::LoadedKey::load(crate::KeyMaterial::RsaPrivate(legacy.private_pkcs8)).unwrap();
        assert_eq!(k.public(), Some(&legacy.public));
        assert!(matches!(
            generate_rsa(2048, Some(&[3])),
            Err(TokenError::TemplateInconsistent(_))
        ));
        let kp = generate_rsa(2048, Some(&[0, 0, 1, 0, 1])).unwrap();
        assert_eq!(kp.public.modulus_bits(), Some(2048));
        assert_eq!(kp.public.key_type(), ck::CKK_RSA);
        match &kp.public {
            PublicKey::Rsa { public_exponent, .. } => assert_eq!(public_exponent, &[1, 0, 1]),
            _ => unreachable!(),
        }
        let dbg = format!("{kp:?}");
        assert!(
            dbg.contains("SecretBytes(") && !dbg.contains(&format!("{:?}", &kp.private_pkcs8.expose()[..8]))
        );
    }

    #[test]
    fn import_round_trip_of_generated_keys() {
        for kp in [
            generate_rsa(2048, None).unwrap(),
            generate_ec(Curve::P521).unwrap(),
            generate_ed25519().unwrap(),
        ] {
            let again = import_private_key_der(kp.private_pkcs8.expose()).unwrap();
            assert_eq!(again.public, kp.public);
        }
        assert!(import_private_key_der(b"not a key").is_err());
        assert!(import_private_key_der(&[0x30, 0x03, 0x02, 0x01, 0x00]).is_err());
    }

    #[test]
    fn ec_scalar_and_ed25519_seed_import() {
        let kp = ec_private_from_scalar(Curve::P256, &[0x01]).unwrap();
        // 1 * G is the generator.
        let g = "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";
        assert_eq!(
            kp.public,
            PublicKey::Ec {
                curve: Curve::P256,
                point: hex::decode(g).unwrap()
            }
        );
        assert!(ec_private_from_scalar(Curve::P256, &[0u8; 32]).is_err());
        assert!(ec_private_from_scalar(Curve::P256, &[0xffu8; 33]).is_err());
        // RFC 8032 section 7.1, test 1.
        let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60").unwrap();
        let kp = ed25519_private_from_seed(&seed).unwrap();
        let pk = hex::decode("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a").unwrap();
        assert_eq!(kp.public, PublicKey::Ed25519 { point: pk });
        assert!(ed25519_private_from_seed(&seed[..31]).is_err());
    }
}
