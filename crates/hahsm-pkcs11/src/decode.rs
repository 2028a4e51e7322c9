//! Decoding of what applications pass in: attribute templates and mechanism
//! parameters. Everything here is safe code over byte slices, so the fuzz
//! target (`fuzz/fuzz_targets/decode.rs`) calls it directly; the FFI layer only
//! copies the application's buffers into slices first.
//!
//! Mechanism parameter structures are read field by field from their bytes. On
//! the platforms hahsm supports, `CK_ULONG` and pointers are both one machine
//! word, so every parameter structure used here is an array of words; the
//! compile-time checks below keep that true.
use crate::error::{rv, Result};
use hahsm_token::{ck, AttrType, AttrValue, MechParams, Mechanism, Template, TokenError};

const WORD: usize = std::mem::size_of::<usize>();
const _: () = assert!(std::mem::size_of::<ck::CK_ULONG>() == WORD);
const _: () = assert!(std::mem::size_of::<ck::CK_RSA_PKCS_PSS_PARAMS>() == 3 * WORD);
const _: () = assert!(std::mem::size_of::<ck::CK_RSA_PKCS_OAEP_PARAMS>() == 5 * WORD);
const _: () = assert!(std::mem::size_of::<ck::CK_GCM_PARAMS>() == 6 * WORD);
const _: () = assert!(std::mem::size_of::<ck::CK_AES_CTR_PARAMS>() == WORD + 16);
const _: () = assert!(std::mem::size_of::<ck::CK_ECDH1_DERIVE_PARAMS>() == 5 * WORD);

/// Most bytes one attribute value or parameter buffer may have. Larger values
/// could not cross the wire in one frame anyway.
pub const MAX_VALUE_LEN: usize = 1 << 20;
/// Longest ML-DSA context string (FIPS 204: 255 bytes).
const MAX_SIGN_CONTEXT: usize = 255;
/// Most attributes in one template.
pub const MAX_TEMPLATE_LEN: usize = 1024;

/// One attribute as the application passed it: its type and its value bytes
/// (`None` for a NULL `pValue`).
pub type RawAttr<'a> = (AttrType, Option<&'a [u8]>);

/// A decoded template whose error, if any, waits for its turn: PKCS#11 3.0
/// §5.1 puts template errors last, after the mechanism, the key and the login
/// state, so a function decodes its template with its arguments but reports
/// what is wrong with it only when [`Deferred::get`] is called, after the
/// other checks. Its `CKA_CLASS`, `CKA_TOKEN` and `CKA_PRIVATE` can be read
/// before that ([`hints`]), even when another attribute is wrong.
pub struct Deferred<T> {
    decoded: Result<T>,
    hints: Template,
}

impl<T> Deferred<T> {
    pub fn new(decoded: Result<T>, hints: Template) -> Self {
        Deferred { decoded, hints }
    }

    /// The template, or its error: call it after the checks that come first.
    pub fn get(self) -> Result<T> {
        self.decoded
    }
}

impl Deferred<Template> {
    /// A boolean attribute among the hints, `default` when not given.
    pub fn flag(&self, attr: AttrType, default: bool) -> bool {
        self.bool(attr).unwrap_or(default)
    }

    /// A boolean attribute among the hints, if given (and well-formed).
    pub fn bool(&self, attr: AttrType) -> Option<bool> {
        self.hints.bool(attr)
    }

    /// Whether the object it makes will be private (`rules::will_be_private`,
    /// with `class` unless the template names one).
    pub fn private(&self, class: u64) -> bool {
        hahsm_token::rules::will_be_private(&self.hints, class)
    }
}

/// The attributes the checks before a template's own read from it:
/// `CKA_CLASS`, `CKA_TOKEN` and `CKA_PRIVATE`, each decoded alone (one that is
/// malformed is left out, and fails later with the template).
pub fn hints(raw: &[RawAttr<'_>]) -> Template {
    let mut t = Template::new();
    for (attr, value) in raw {
        if let (ck::CKA_CLASS | ck::CKA_TOKEN | ck::CKA_PRIVATE, Some(bytes)) = (*attr, value) {
            if let Ok(v) = AttrValue::from_raw(*attr, bytes) {
                t.set(*attr, v);
            }
        }
    }
    t
}

/// Decodes a creation or search template. Unknown attribute types are
/// `CKR_ATTRIBUTE_TYPE_INVALID`, values of the wrong size
/// `CKR_ATTRIBUTE_VALUE_INVALID`; `CKA_EC_POINT` is accepted raw or
/// DER-wrapped and stored DER-wrapped.
pub fn template(raw: &[RawAttr<'_>]) -> Result<Template> {
    if raw.len() > MAX_TEMPLATE_LEN {
        return rv(ck::CKR_ARGUMENTS_BAD);
    }
    let mut t = Template::new();
    for (attr, value) in raw {
        let bytes = value.ok_or(TokenError::AttributeValueInvalid(*attr))?;
        let mut v = AttrValue::from_raw(*attr, bytes)?;
        if *attr == ck::CKA_EC_POINT {
            v = AttrValue::Bytes(ec_point_der(bytes));
        }
        if t.contains(*attr) && t.get(*attr) != Some(&v) {
            // The same attribute twice with different values.
            return Err(TokenError::TemplateInconsistent(format!("attribute {attr:#x} given twice")).into());
        }
        t.set(*attr, v);
    }
    Ok(t)
}

/// A search template: like [`template`], except that an attribute hahsm does not
/// know matches no object (rather than being an error). Returns `None` then.
pub fn search_template(raw: &[RawAttr<'_>]) -> Result<Option<Template>> {
    match template(raw) {
        Err(crate::Error::Token(TokenError::AttributeTypeInvalid(_))) => Ok(None),
        other => other.map(Some),
    }
}

/// Lengths of raw public points: uncompressed P-256, P-384, P-521, and Ed25519.
/// Their DER-wrapped forms (67, 99, 136 and 34 bytes) never have these lengths.
pub const RAW_POINT_LENS: [usize; 4] = [65, 97, 133, 32];

/// `CKA_EC_POINT` in the DER form (an OCTET STRING around the encoded point).
/// A value of a raw point's length is taken as raw and wrapped; anything else
/// that is already an OCTET STRING is kept; the rest is wrapped.
pub fn ec_point_der(bytes: &[u8]) -> Vec<u8> {
    if !RAW_POINT_LENS.contains(&bytes.len()) && der_octet_string(bytes).is_some() {
        return bytes.to_vec();
    }
    let mut out = vec![0x04];
    let n = bytes.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend_from_slice(&[0x81, n as u8]);
    } else {
        out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(bytes);
    out
}

/// The contents of a DER OCTET STRING that spans all of `bytes`.
fn der_octet_string(bytes: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = bytes.split_first()?;
    if tag != 0x04 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (first as usize, rest),
        0x81 => {
            let (&l, rest) = rest.split_first()?;
            (l as usize, rest)
        }
        0x82 => {
            let l = rest.get(..2)?;
            (((l[0] as usize) << 8) | l[1] as usize, &rest[2..])
        }
        _ => return None,
    };
    (rest.len() == len).then_some(rest)
}

/// Reads a buffer the application points to from inside a parameter
/// structure: `(address, length)` to bytes. The FFI layer reads real memory;
/// the fuzz target and unit tests serve bytes from a table.
pub trait Memory {
    fn read(&mut self, addr: usize, len: usize) -> Result<Vec<u8>>;
}

/// Words of a parameter structure, after checking its exact size.
fn words<const N: usize>(param: &[u8]) -> Result<[usize; N]> {
    if param.len() != N * WORD {
        return rv(ck::CKR_MECHANISM_PARAM_INVALID);
    }
    let mut out = [0usize; N];
    for (w, chunk) in out.iter_mut().zip(param.chunks_exact(WORD)) {
        let mut b = [0u8; WORD];
        b.copy_from_slice(chunk);
        *w = usize::from_ne_bytes(b);
    }
    Ok(out)
}

fn param_invalid(msg: &str) -> crate::Error {
    TokenError::MechanismParamInvalid(msg.to_string()).into()
}

/// Reads a (pointer, length) pair, refusing a NULL pointer with a length and
/// lengths beyond [`MAX_VALUE_LEN`].
fn buffer(mem: &mut dyn Memory, addr: usize, len: usize) -> Result<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    if addr == 0 || len > MAX_VALUE_LEN {
        return Err(param_invalid("a parameter buffer is NULL or too long"));
    }
    mem.read(addr, len)
}

/// What parameter structure a mechanism takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    None,
    Pss,
    Oaep,
    Iv16,
    /// Triple-DES CBC: an 8-byte IV.
    Iv8,
    /// `CK_AES_CTR_PARAMS { CK_ULONG ulCounterBits; CK_BYTE cb[16]; }`.
    Ctr,
    Gcm,
    Ecdh,
    /// `CKM_EDDSA`: optional `CK_EDDSA_PARAMS`, only the pure (no prehash, no context) form.
    Eddsa,
    /// AES key wrap: an optional IV, only the default one.
    WrapIv(&'static [u8]),
    /// `CKM_ML_DSA`: an optional `CK_SIGN_ADDITIONAL_CONTEXT`.
    SignContext,
}

fn shape(mech: u64) -> Result<Shape> {
    if hahsm_token::mechanism::info(mech).is_none() {
        return Err(TokenError::MechanismInvalid(mech).into());
    }
    Ok(match mech {
        ck::CKM_RSA_PKCS_PSS
        | ck::CKM_SHA1_RSA_PKCS_PSS
        | ck::CKM_SHA224_RSA_PKCS_PSS
        | ck::CKM_SHA256_RSA_PKCS_PSS
        | ck::CKM_SHA384_RSA_PKCS_PSS
        | ck::CKM_SHA512_RSA_PKCS_PSS => Shape::Pss,
        ck::CKM_RSA_PKCS_OAEP => Shape::Oaep,
        ck::CKM_AES_CBC | ck::CKM_AES_CBC_PAD => Shape::Iv16,
        ck::CKM_DES3_CBC | ck::CKM_DES3_CBC_PAD => Shape::Iv8,
        ck::CKM_AES_CTR => Shape::Ctr,
        ck::CKM_AES_GCM => Shape::Gcm,
        ck::CKM_ECDH1_DERIVE => Shape::Ecdh,
        ck::CKM_EDDSA => Shape::Eddsa,
        ck::CKM_ML_DSA => Shape::SignContext,
        ck::CKM_AES_KEY_WRAP => Shape::WrapIv(&[0xa6; 8]),
        ck::CKM_AES_KEY_WRAP_KWP => Shape::WrapIv(&[0xa6, 0x59, 0x59, 0xa6]),
        _ => Shape::None,
    })
}

/// Decodes a `CK_MECHANISM`: its type and its parameter bytes (`pParameter`,
/// `ulParameterLen`), following pointers inside the parameter through `mem`.
/// Sizes are checked exactly; an unsupported mechanism is `CKR_MECHANISM_INVALID`.
pub fn mechanism(mech: u64, param: &[u8], mem: &mut dyn Memory) -> Result<Mechanism> {
    let params = match shape(mech)? {
        Shape::None => {
            if !param.is_empty() {
                return Err(param_invalid("this mechanism takes no parameter"));
            }
            MechParams::None
        }
        Shape::Eddsa => {
            // CK_EDDSA_PARAMS { CK_BBOOL phFlag; CK_ULONG ulContextDataLen; CK_BYTE_PTR pContextData; }
            if !param.is_empty() {
                let [ph, ctx_len, _] = words::<3>(param)?;
                if ph & 0xff != 0 || ctx_len != 0 {
                    return Err(param_invalid("only pure Ed25519 without context is supported"));
                }
            }
            MechParams::None
        }
        Shape::SignContext => {
            if param.is_empty() {
                MechParams::None
            } else {
                // CK_SIGN_ADDITIONAL_CONTEXT { CK_HEDGE_TYPE hedgeVariant;
                // CK_BYTE_PTR pContext; CK_ULONG ulContextLen; }
                let [hedge, context, context_len] = words::<3>(param)?;
                if hedge as u64 > ck::CKH_DETERMINISTIC_REQUIRED {
                    return Err(param_invalid("unknown hedgeVariant"));
                }
                if context_len > MAX_SIGN_CONTEXT {
                    return Err(param_invalid("an ML-DSA context string is at most 255 bytes"));
                }
                MechParams::SignContext {
                    hedge: hedge as u64,
                    context: buffer(mem, context, context_len)?,
                }
            }
        }
        Shape::WrapIv(default) => {
            if !param.is_empty() && param != default {
                return Err(param_invalid("only the default key-wrap IV is supported"));
            }
            MechParams::None
        }
        Shape::Iv16 => {
            if param.len() != 16 {
                return Err(param_invalid("AES-CBC needs a 16-byte IV"));
            }
            MechParams::Iv(param.to_vec())
        }
        Shape::Iv8 => {
            if param.len() != 8 {
                return Err(param_invalid("triple-DES CBC needs an 8-byte IV"));
            }
            MechParams::Iv(param.to_vec())
        }
        Shape::Ctr => {
            if param.len() != WORD + 16 {
                return Err(param_invalid("AES-CTR needs CK_AES_CTR_PARAMS"));
            }
            let [bits] = words::<1>(&param[..WORD])?;
            if !(1..=128).contains(&bits) {
                return Err(param_invalid("ulCounterBits must be 1 to 128"));
            }
            MechParams::Ctr {
                counter_bits: bits as u64,
                cb: param[WORD..].to_vec(),
            }
        }
        Shape::Pss => {
            let [hash, mgf, salt] = words::<3>(param)?;
            MechParams::Pss {
                hash: hash as u64,
                mgf: mgf as u64,
                salt_len: salt as u64,
            }
        }
        Shape::Oaep => {
            let [hash, mgf, source, data, data_len] = words::<5>(param)?;
            let label = buffer(mem, data, data_len)?;
            if source as u64 != ck::CKZ_DATA_SPECIFIED && !(source == 0 && label.is_empty()) {
                return Err(param_invalid("OAEP source must be CKZ_DATA_SPECIFIED"));
            }
            MechParams::Oaep {
                hash: hash as u64,
                mgf: mgf as u64,
                label,
            }
        }
        Shape::Gcm => {
            let [iv, iv_len, iv_bits, aad, aad_len, tag_bits] = words::<6>(param)?;
            if iv_bits != 0 && iv_bits != iv_len.saturating_mul(8) {
                return Err(param_invalid("ulIvBits does not match ulIvLen"));
            }
            let tag_bits = u32::try_from(tag_bits).map_err(|_| param_invalid("ulTagBits is too large"))?;
            MechParams::Gcm {
                iv: buffer(mem, iv, iv_len)?,
                aad: buffer(mem, aad, aad_len)?,
                tag_bits,
            }
        }
        Shape::Ecdh => {
            let [kdf, shared_len, shared, public_len, public] = words::<5>(param)?;
            let public_data = buffer(mem, public, public_len)?;
            if public_data.is_empty() {
                return Err(param_invalid("ECDH needs the peer's public point"));
            }
            MechParams::Ecdh {
                kdf: kdf as u64,
                shared_data: buffer(mem, shared, shared_len)?,
                public_data,
            }
        }
    };
    Ok(Mechanism::with(mech, params))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Table(HashMap<usize, Vec<u8>>);
    impl Memory for Table {
        fn read(&mut self, addr: usize, len: usize) -> Result<Vec<u8>> {
            match self.0.get(&addr) {
                Some(b) if b.len() >= len => Ok(b[..len].to_vec()),
                _ => Err(param_invalid("bad address")),
            }
        }
    }

    fn bytes(words: &[usize]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    fn ckr(r: Result<Mechanism>) -> u64 {
        r.unwrap_err().rv()
    }

    #[test]
    fn a_template_s_error_waits_while_its_hints_are_read() {
        let t = [1u8];
        let f = [0u8];
        let class = ck::CKO_SECRET_KEY.to_ne_bytes();
        let raw: Vec<RawAttr<'_>> = vec![
            (ck::CKA_PRIVATE, Some(&f[..])),
            (ck::CKA_TOKEN, Some(&t[..])),
            (ck::CKA_CLASS, Some(&class[..])),
            (0x8000_4321, Some(&t[..])),
        ];
        let d = Deferred::new(template(&raw), hints(&raw));
        assert!(d.flag(ck::CKA_TOKEN, false));
        assert!(!d.private(ck::CKO_SECRET_KEY), "CKA_PRIVATE false is read");
        assert_eq!(
            d.get().map(|_| ()).unwrap_err().rv(),
            ck::CKR_ATTRIBUTE_TYPE_INVALID
        );
        // A malformed CKA_PRIVATE is no hint: the class's default holds.
        let raw: Vec<RawAttr<'_>> = vec![(ck::CKA_PRIVATE, Some(&class[..]))];
        let d = Deferred::new(template(&raw), hints(&raw));
        assert!(d.private(ck::CKO_SECRET_KEY));
        assert!(d.get().is_err());
    }

    #[test]
    fn aes_ctr_params_are_read_and_their_counter_width_checked() {
        let mut mem = Table(HashMap::new());
        let mut p = bytes(&[32]);
        p.extend([7u8; 16]);
        let m = mechanism(ck::CKM_AES_CTR, &p, &mut mem).unwrap();
        assert_eq!(
            m.params,
            MechParams::Ctr {
                counter_bits: 32,
                cb: vec![7; 16]
            }
        );
        for bits in [0, 129] {
            let mut p = bytes(&[bits]);
            p.extend([7u8; 16]);
            assert_eq!(
                ckr(mechanism(ck::CKM_AES_CTR, &p, &mut mem)),
                ck::CKR_MECHANISM_PARAM_INVALID
            );
        }
        assert_eq!(
            ckr(mechanism(ck::CKM_AES_CTR, &p[..20], &mut mem)),
            ck::CKR_MECHANISM_PARAM_INVALID
        );
    }

    #[test]
    fn attribute_arrays_in_their_flat_form_decode_into_templates() {
        let yes = [1u8];
        let flat = hahsm_token::attr::flatten_array([(ck::CKA_SENSITIVE, &yes[..])]);
        let raw: Vec<RawAttr<'_>> = vec![(ck::CKA_UNWRAP_TEMPLATE, Some(&flat[..]))];
        let t = template(&raw).unwrap();
        assert_eq!(
            t.get(ck::CKA_UNWRAP_TEMPLATE),
            Some(&AttrValue::Array(
                Template::new().with(ck::CKA_SENSITIVE, AttrValue::Bool(true))
            ))
        );
    }

    #[test]
    fn ec_point_raw_and_der_forms_both_become_der() {
        let raw: Vec<u8> = std::iter::once(4u8).chain([7u8; 64]).collect();
        let der = ec_point_der(&raw);
        assert_eq!(&der[..2], &[0x04, 65]);
        assert_eq!(ec_point_der(&der), der, "DER input is kept");
        let ed = [9u8; 32];
        assert_eq!(ec_point_der(&ed)[..2], [0x04, 32]);
        // A raw P-256 point whose x starts with 0x3f looks like a DER header; it is still wrapped.
        let mut tricky = vec![4u8, 0x3f];
        tricky.extend([1u8; 63]);
        assert_eq!(ec_point_der(&tricky)[..2], [0x04, 65]);
    }

    #[test]
    fn templates_check_types_sizes_and_duplicates() {
        let t = template(&[(ck::CKA_TOKEN, Some(&[1])), (ck::CKA_LABEL, Some(b"x"))]).unwrap();
        assert_eq!(t.bool(ck::CKA_TOKEN), Some(true));
        let e = |r: Result<Template>| r.unwrap_err().rv();
        assert_eq!(
            e(template(&[(ck::CKA_CLASS, Some(&[1, 2]))])),
            ck::CKR_ATTRIBUTE_VALUE_INVALID
        );
        assert_eq!(
            e(template(&[(0xdead_0000, Some(&[]))])),
            ck::CKR_ATTRIBUTE_TYPE_INVALID
        );
        assert_eq!(
            e(template(&[(ck::CKA_LABEL, None)])),
            ck::CKR_ATTRIBUTE_VALUE_INVALID
        );
        assert_eq!(
            e(template(&[
                (ck::CKA_TOKEN, Some(&[1])),
                (ck::CKA_TOKEN, Some(&[0]))
            ])),
            ck::CKR_TEMPLATE_INCONSISTENT
        );
        assert_eq!(search_template(&[(0xdead_0000, Some(&[]))]).unwrap(), None);
    }

    #[test]
    fn parameters_are_size_checked() {
        let mut mem = Table(HashMap::new());
        let pss = bytes(&[ck::CKM_SHA256 as usize, ck::CKG_MGF1_SHA256 as usize, 32]);
        let m = mechanism(ck::CKM_RSA_PKCS_PSS, &pss, &mut mem).unwrap();
        assert_eq!(
            m.params,
            MechParams::Pss {
                hash: ck::CKM_SHA256,
                mgf: ck::CKG_MGF1_SHA256,
                salt_len: 32
            }
        );
        assert_eq!(
            ckr(mechanism(ck::CKM_RSA_PKCS_PSS, &pss[..16], &mut mem)),
            ck::CKR_MECHANISM_PARAM_INVALID
        );
        assert_eq!(
            ckr(mechanism(ck::CKM_ECDSA, &[1], &mut mem)),
            ck::CKR_MECHANISM_PARAM_INVALID
        );
        assert_eq!(
            ckr(mechanism(0x8000_1234, &[], &mut mem)),
            ck::CKR_MECHANISM_INVALID
        );
        assert_eq!(
            ckr(mechanism(ck::CKM_AES_CBC, &[0; 8], &mut mem)),
            ck::CKR_MECHANISM_PARAM_INVALID
        );
    }

    #[test]
    fn pointers_inside_parameters_are_followed_and_checked() {
        let mut mem = Table(HashMap::from([
            (0x1000, vec![1u8; 12]),
            (0x2000, b"aad".to_vec()),
        ]));
        let gcm = bytes(&[0x1000, 12, 96, 0x2000, 3, 128]);
        let m = mechanism(ck::CKM_AES_GCM, &gcm, &mut mem).unwrap();
        assert_eq!(
            m.params,
            MechParams::Gcm {
                iv: vec![1; 12],
                aad: b"aad".to_vec(),
                tag_bits: 128
            }
        );
        let null_iv = bytes(&[0, 12, 96, 0, 0, 128]);
        assert_eq!(
            ckr(mechanism(ck::CKM_AES_GCM, &null_iv, &mut mem)),
            ck::CKR_MECHANISM_PARAM_INVALID
        );
        let oaep = bytes(&[
            ck::CKM_SHA256 as usize,
            ck::CKG_MGF1_SHA256 as usize,
            ck::CKZ_DATA_SPECIFIED as usize,
            0,
            0,
        ]);
        let m = mechanism(ck::CKM_RSA_PKCS_OAEP, &oaep, &mut mem).unwrap();
        assert!(matches!(
            m.params,
            MechParams::Oaep {
                hash: ck::CKM_SHA256,
                ..
            }
        ));
        let ecdh = bytes(&[ck::CKD_NULL as usize, 0, 0, 0, 0]);
        assert_eq!(
            ckr(mechanism(ck::CKM_ECDH1_DERIVE, &ecdh, &mut mem)),
            ck::CKR_MECHANISM_PARAM_INVALID
        );
    }
}
