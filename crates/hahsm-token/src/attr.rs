//! Attributes and templates.
//!
//! Attribute types use the numeric `CKA_*` values of PKCS#11, so that the module
//! maps them one to one. Values are typed by the attribute's kind; `from_raw` and
//! `to_raw` convert to and from the byte layout PKCS#11 uses on this platform.
use crate::ck;
use crate::error::{TokenError, TokenResult};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type AttrType = u64;

/// The value of one attribute.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttrValue {
    Bool(bool),
    Ulong(u64),
    Bytes(Vec<u8>),
    /// `CKA_ALLOWED_MECHANISMS`: an array of mechanism types.
    UlongList(Vec<u64>),
    /// `CKA_WRAP_TEMPLATE`, `CKA_UNWRAP_TEMPLATE`, `CKA_DERIVE_TEMPLATE`: an
    /// attribute array (`CKF_ARRAY_ATTRIBUTE`), itself a template.
    Array(Template),
}

// Attribute values of public objects are not secret, but `Debug` must stay safe
// for templates that carry `CKA_VALUE` of a key being imported, so bytes are elided.
impl std::fmt::Debug for AttrValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Ulong(v) => write!(f, "{v:#x}"),
            AttrValue::Bytes(b) => write!(f, "<{} bytes>", b.len()),
            AttrValue::UlongList(v) => write!(f, "{v:x?}"),
            AttrValue::Array(t) => write!(f, "{:?}", t.0),
        }
    }
}

/// How an attribute's value is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrKind {
    Bool,
    Ulong,
    Bytes,
    UlongList,
    /// An attribute array: in PKCS#11 a `CK_ATTRIBUTE[]` that `pValue` points
    /// to; here, in the flat layout of [`AttrValue::from_raw`].
    Array,
}

/// Whether an attribute is an attribute array (`CKF_ARRAY_ATTRIBUTE`), whose
/// value the FFI layer must follow through pointers.
pub fn is_array(attr: AttrType) -> bool {
    attr_kind(attr) == Some(AttrKind::Array)
}

/// The flat layout of an attribute array: for each attribute, its type and its
/// value's length (8 bytes each, little-endian), then the value bytes in the
/// PKCS#11 layout. The FFI layer flattens the application's `CK_ATTRIBUTE[]`
/// into it, since its values are behind pointers.
pub fn flatten_array<'a>(attrs: impl IntoIterator<Item = (AttrType, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (attr, value) in attrs {
        out.extend_from_slice(&attr.to_le_bytes());
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// hahsm's own attribute on a secret key that `C_EncapsulateKey` made: the
/// ciphertext it was answered with. A retry of an encapsulation whose answer
/// was lost (on this member or another) finds the key by its operation id
/// and answers this ciphertext again, since encapsulation is randomized. The
/// ciphertext is public; the token sets it, a template cannot.
pub const CKA_HAHSM_ENCAPSULATION: AttrType = ck::CKA_VENDOR_DEFINED | 0x4841_0100;

/// The kind of every attribute type hahsm knows; unknown types are `None`.
pub fn attr_kind(attr: AttrType) -> Option<AttrKind> {
    use AttrKind::*;
    Some(match attr {
        ck::CKA_TOKEN
        | ck::CKA_PRIVATE
        | ck::CKA_TRUSTED
        | ck::CKA_SENSITIVE
        | ck::CKA_ENCRYPT
        | ck::CKA_DECRYPT
        | ck::CKA_WRAP
        | ck::CKA_UNWRAP
        | ck::CKA_SIGN
        | ck::CKA_SIGN_RECOVER
        | ck::CKA_VERIFY
        | ck::CKA_VERIFY_RECOVER
        | ck::CKA_DERIVE
        | ck::CKA_EXTRACTABLE
        | ck::CKA_LOCAL
        | ck::CKA_NEVER_EXTRACTABLE
        | ck::CKA_ALWAYS_SENSITIVE
        | ck::CKA_MODIFIABLE
        | ck::CKA_COPYABLE
        | ck::CKA_DESTROYABLE
        | ck::CKA_ALWAYS_AUTHENTICATE
        | ck::CKA_WRAP_WITH_TRUSTED
        | ck::CKA_ENCAPSULATE
        | ck::CKA_DECAPSULATE => Bool,
        ck::CKA_CLASS
        | ck::CKA_KEY_TYPE
        | ck::CKA_CERTIFICATE_TYPE
        | ck::CKA_CERTIFICATE_CATEGORY
        | ck::CKA_MODULUS_BITS
        | ck::CKA_VALUE_LEN
        | ck::CKA_KEY_GEN_MECHANISM
        | ck::CKA_NAME_HASH_ALGORITHM
        | ck::CKA_JAVA_MIDP_SECURITY_DOMAIN
        | ck::CKA_PARAMETER_SET => Ulong,
        ck::CKA_ALLOWED_MECHANISMS => UlongList,
        ck::CKA_WRAP_TEMPLATE
        | ck::CKA_UNWRAP_TEMPLATE
        | ck::CKA_DERIVE_TEMPLATE
        | ck::CKA_ENCAPSULATE_TEMPLATE
        | ck::CKA_DECAPSULATE_TEMPLATE => Array,
        ck::CKA_LABEL
        | ck::CKA_ID
        | ck::CKA_APPLICATION
        | ck::CKA_VALUE
        | ck::CKA_OBJECT_ID
        | ck::CKA_SUBJECT
        | ck::CKA_ISSUER
        | ck::CKA_SERIAL_NUMBER
        | ck::CKA_START_DATE
        | ck::CKA_END_DATE
        | ck::CKA_MODULUS
        | ck::CKA_PUBLIC_EXPONENT
        | ck::CKA_PRIVATE_EXPONENT
        | ck::CKA_PRIME_1
        | ck::CKA_PRIME_2
        | ck::CKA_EXPONENT_1
        | ck::CKA_EXPONENT_2
        | ck::CKA_COEFFICIENT
        | ck::CKA_PUBLIC_KEY_INFO
        | ck::CKA_SEED
        | ck::CKA_EC_PARAMS
        | ck::CKA_EC_POINT
        | ck::CKA_UNIQUE_ID
        | ck::CKA_CHECK_VALUE
        | ck::CKA_URL
        | ck::CKA_HASH_OF_SUBJECT_PUBLIC_KEY
        | ck::CKA_HASH_OF_ISSUER_PUBLIC_KEY
        | CKA_HAHSM_ENCAPSULATION => Bytes,
        _ => return None,
    })
}

const ULONG_SIZE: usize = std::mem::size_of::<ck::CK_ULONG>();

impl AttrValue {
    /// Decodes a PKCS#11 attribute value. Unknown types and wrong lengths are errors,
    /// never panics: this is fed by applications and fuzzers.
    // CK_ULONG is C's `unsigned long`: 64 bits here, 32 bits on some platforms.
    #[allow(clippy::unnecessary_cast)]
    pub fn from_raw(attr: AttrType, raw: &[u8]) -> TokenResult<AttrValue> {
        let kind = attr_kind(attr).ok_or(TokenError::AttributeTypeInvalid(attr))?;
        match kind {
            AttrKind::Bool => match raw {
                [0] => Ok(AttrValue::Bool(false)),
                [_] => Ok(AttrValue::Bool(true)),
                _ => Err(TokenError::AttributeValueInvalid(attr)),
            },
            AttrKind::Ulong => {
                let bytes: [u8; ULONG_SIZE] = raw
                    .try_into()
                    .map_err(|_| TokenError::AttributeValueInvalid(attr))?;
                Ok(AttrValue::Ulong(ck::CK_ULONG::from_ne_bytes(bytes) as u64))
            }
            AttrKind::UlongList => {
                if !raw.len().is_multiple_of(ULONG_SIZE) {
                    return Err(TokenError::AttributeValueInvalid(attr));
                }
                Ok(AttrValue::UlongList(
                    raw.chunks_exact(ULONG_SIZE)
                        .map(|c| {
                            let mut b = [0u8; ULONG_SIZE];
                            b.copy_from_slice(c);
                            ck::CK_ULONG::from_ne_bytes(b) as u64
                        })
                        .collect(),
                ))
            }
            AttrKind::Bytes => Ok(AttrValue::Bytes(raw.to_vec())),
            AttrKind::Array => Self::array_from_flat(attr, raw),
        }
    }

    /// An attribute array from its flat layout ([`flatten_array`]). Arrays do
    /// not nest; a nested attribute given twice is inconsistent.
    fn array_from_flat(attr: AttrType, mut raw: &[u8]) -> TokenResult<AttrValue> {
        let bad = TokenError::AttributeValueInvalid(attr);
        let mut t = Template::new();
        while !raw.is_empty() {
            let (head, rest) = raw.split_at_checked(16).ok_or(bad.clone())?;
            let (ty, len) = head.split_at(8);
            let ty = u64::from_le_bytes(ty.try_into().map_err(|_| bad.clone())?);
            let len = u64::from_le_bytes(len.try_into().map_err(|_| bad.clone())?);
            let len = usize::try_from(len).map_err(|_| bad.clone())?;
            let (value, rest) = rest.split_at_checked(len).ok_or(bad.clone())?;
            if attr_kind(ty) == Some(AttrKind::Array) {
                return Err(bad);
            }
            let v = AttrValue::from_raw(ty, value)?;
            if t.get(ty).is_some_and(|old| *old != v) {
                return Err(TokenError::TemplateInconsistent(format!(
                    "attribute {ty:#x} given twice in {attr:#x}"
                )));
            }
            t.set(ty, v);
            raw = rest;
        }
        Ok(AttrValue::Array(t))
    }

    /// Encodes the value in the PKCS#11 layout.
    #[allow(clippy::unnecessary_cast)]
    pub fn to_raw(&self) -> Vec<u8> {
        match self {
            AttrValue::Bool(b) => vec![u8::from(*b)],
            AttrValue::Ulong(v) => (*v as ck::CK_ULONG).to_ne_bytes().to_vec(),
            AttrValue::Bytes(b) => b.clone(),
            AttrValue::UlongList(v) => v
                .iter()
                .flat_map(|m| (*m as ck::CK_ULONG).to_ne_bytes())
                .collect(),
            AttrValue::Array(t) => {
                let values: Vec<(AttrType, Vec<u8>)> = t.iter().map(|(k, v)| (*k, v.to_raw())).collect();
                flatten_array(values.iter().map(|(k, v)| (*k, v.as_slice())))
            }
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            AttrValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_ulong(&self) -> Option<u64> {
        match self {
            AttrValue::Ulong(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            AttrValue::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// Checks that the value has the kind its attribute type demands.
    pub fn check_kind(&self, attr: AttrType) -> TokenResult<()> {
        let kind = attr_kind(attr).ok_or(TokenError::AttributeTypeInvalid(attr))?;
        let ok = matches!(
            (kind, self),
            (AttrKind::Bool, AttrValue::Bool(_))
                | (AttrKind::Ulong, AttrValue::Ulong(_))
                | (AttrKind::Bytes, AttrValue::Bytes(_))
                | (AttrKind::UlongList, AttrValue::UlongList(_))
                | (AttrKind::Array, AttrValue::Array(_))
        );
        if let AttrValue::Array(t) = self {
            // Arrays do not nest, and what they hold follows the same rules.
            if t.iter().any(|(k, _)| is_array(*k)) {
                return Err(TokenError::AttributeValueInvalid(attr));
            }
            t.check_kinds()?;
        }
        if ok {
            Ok(())
        } else {
            Err(TokenError::AttributeValueInvalid(attr))
        }
    }
}

/// A set of attributes: an object's state, a search filter or a creation template.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template(pub BTreeMap<AttrType, AttrValue>);

impl Template {
    pub fn new() -> Self {
        Template(BTreeMap::new())
    }

    pub fn with(mut self, attr: AttrType, value: AttrValue) -> Self {
        self.0.insert(attr, value);
        self
    }

    pub fn set(&mut self, attr: AttrType, value: AttrValue) {
        self.0.insert(attr, value);
    }

    pub fn set_default(&mut self, attr: AttrType, value: AttrValue) {
        self.0.entry(attr).or_insert(value);
    }

    pub fn get(&self, attr: AttrType) -> Option<&AttrValue> {
        self.0.get(&attr)
    }

    pub fn remove(&mut self, attr: AttrType) -> Option<AttrValue> {
        self.0.remove(&attr)
    }

    pub fn contains(&self, attr: AttrType) -> bool {
        self.0.contains_key(&attr)
    }

    pub fn bool(&self, attr: AttrType) -> Option<bool> {
        self.get(attr).and_then(AttrValue::as_bool)
    }

    /// A boolean attribute, or `default` when absent.
    pub fn flag(&self, attr: AttrType, default: bool) -> bool {
        self.bool(attr).unwrap_or(default)
    }

    pub fn ulong(&self, attr: AttrType) -> Option<u64> {
        self.get(attr).and_then(AttrValue::as_ulong)
    }

    pub fn bytes(&self, attr: AttrType) -> Option<&[u8]> {
        self.get(attr).and_then(AttrValue::as_bytes)
    }

    pub fn class(&self) -> Option<u64> {
        self.ulong(ck::CKA_CLASS)
    }

    pub fn key_type(&self) -> Option<u64> {
        self.ulong(ck::CKA_KEY_TYPE)
    }

    pub fn label(&self) -> Option<String> {
        self.bytes(ck::CKA_LABEL)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// True when every attribute of `filter` is present here with an equal value.
    pub fn matches(&self, filter: &Template) -> bool {
        filter.0.iter().all(|(k, v)| self.0.get(k) == Some(v))
    }

    /// Checks every value against its attribute's kind.
    pub fn check_kinds(&self) -> TokenResult<()> {
        self.0.iter().try_for_each(|(k, v)| v.check_kind(*k))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&AttrType, &AttrValue)> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_round_trip_for_each_kind() {
        for (attr, value) in [
            (ck::CKA_TOKEN, AttrValue::Bool(true)),
            (ck::CKA_CLASS, AttrValue::Ulong(ck::CKO_SECRET_KEY)),
            (ck::CKA_LABEL, AttrValue::Bytes(b"k".to_vec())),
            (
                ck::CKA_ALLOWED_MECHANISMS,
                AttrValue::UlongList(vec![ck::CKM_ECDSA, ck::CKM_SHA256_RSA_PKCS]),
            ),
        ] {
            assert_eq!(AttrValue::from_raw(attr, &value.to_raw()).unwrap(), value);
        }
    }

    #[test]
    fn attribute_arrays_round_trip_in_the_flat_layout_and_do_not_nest() {
        let inner = Template::new()
            .with(ck::CKA_CLASS, AttrValue::Ulong(ck::CKO_SECRET_KEY))
            .with(ck::CKA_SENSITIVE, AttrValue::Bool(true));
        let value = AttrValue::Array(inner);
        let raw = value.to_raw();
        assert_eq!(AttrValue::from_raw(ck::CKA_UNWRAP_TEMPLATE, &raw).unwrap(), value);
        assert!(value.check_kind(ck::CKA_UNWRAP_TEMPLATE).is_ok());
        let nested = flatten_array([(ck::CKA_WRAP_TEMPLATE, raw.as_slice())]);
        assert_eq!(
            AttrValue::from_raw(ck::CKA_DERIVE_TEMPLATE, &nested),
            Err(TokenError::AttributeValueInvalid(ck::CKA_DERIVE_TEMPLATE))
        );
        assert_eq!(
            AttrValue::from_raw(ck::CKA_WRAP_TEMPLATE, &raw[..raw.len() - 1]),
            Err(TokenError::AttributeValueInvalid(ck::CKA_WRAP_TEMPLATE))
        );
    }

    #[test]
    fn wrong_lengths_and_unknown_types_are_errors() {
        assert_eq!(
            AttrValue::from_raw(ck::CKA_CLASS, &[1, 2, 3]),
            Err(TokenError::AttributeValueInvalid(ck::CKA_CLASS))
        );
        assert_eq!(
            AttrValue::from_raw(ck::CKA_TOKEN, &[]),
            Err(TokenError::AttributeValueInvalid(ck::CKA_TOKEN))
        );
        assert_eq!(
            AttrValue::from_raw(0xdead_beef, &[]),
            Err(TokenError::AttributeTypeInvalid(0xdead_beef))
        );
    }

    #[test]
    fn matches_requires_equal_values() {
        let obj = Template::new()
            .with(ck::CKA_LABEL, AttrValue::Bytes(b"a".to_vec()))
            .with(ck::CKA_TOKEN, AttrValue::Bool(true));
        assert!(obj.matches(&Template::new().with(ck::CKA_TOKEN, AttrValue::Bool(true))));
        assert!(!obj.matches(&Template::new().with(ck::CKA_LABEL, AttrValue::Bytes(b"b".to_vec()))));
        assert!(!obj.matches(&Template::new().with(ck::CKA_ID, AttrValue::Bytes(vec![]))));
    }
}
