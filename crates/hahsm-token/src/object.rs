//! Object classes and key types: names for listings, and which attributes hold
//! secret material.
use crate::ck;

pub fn class_name(class: u64) -> &'static str {
    match class {
        ck::CKO_DATA => "data",
        ck::CKO_CERTIFICATE => "certificate",
        ck::CKO_PUBLIC_KEY => "public-key",
        ck::CKO_PRIVATE_KEY => "private-key",
        ck::CKO_SECRET_KEY => "secret-key",
        _ => "other",
    }
}

pub fn key_type_name(key_type: u64) -> &'static str {
    match key_type {
        ck::CKK_RSA => "rsa",
        ck::CKK_EC => "ec",
        ck::CKK_EC_EDWARDS => "ed25519",
        ck::CKK_AES => "aes",
        ck::CKK_DES3 => "des3",
        ck::CKK_GENERIC_SECRET => "generic-secret",
        ck::CKK_ML_DSA => "ml-dsa",
        ck::CKK_ML_KEM => "ml-kem",
        _ => "-",
    }
}

/// Attributes that carry secret key material. They are never stored among an
/// object's attributes: the material lives in the object's sealed secret.
pub fn is_secret_component(attr: u64) -> bool {
    matches!(
        attr,
        ck::CKA_VALUE
            | ck::CKA_SEED
            | ck::CKA_PRIVATE_EXPONENT
            | ck::CKA_PRIME_1
            | ck::CKA_PRIME_2
            | ck::CKA_EXPONENT_1
            | ck::CKA_EXPONENT_2
            | ck::CKA_COEFFICIENT
    )
}

/// Classes whose objects hold secret material.
pub fn holds_secret(class: u64) -> bool {
    matches!(class, ck::CKO_PRIVATE_KEY | ck::CKO_SECRET_KEY)
}
