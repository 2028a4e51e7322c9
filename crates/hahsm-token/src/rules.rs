//! PKCS#11 attribute rules: the defaults of a new key, which attributes a
//! template may carry, which changes `C_SetAttributeValue` may make, and whether
//! a key may be used for an operation. Pure functions over templates.
use crate::attr::{AttrValue, Template};
use crate::ck;
use crate::error::{TokenError, TokenResult};
use crate::mechanism::{self, Usage};
use crate::object::{holds_secret, is_secret_component};

/// Attributes only the token sets; a template that names them is refused.
const TOKEN_SET: &[u64] = &[
    ck::CKA_LOCAL,
    ck::CKA_ALWAYS_SENSITIVE,
    ck::CKA_NEVER_EXTRACTABLE,
    ck::CKA_KEY_GEN_MECHANISM,
    ck::CKA_UNIQUE_ID,
    crate::attr::CKA_HAHSM_ENCAPSULATION,
];

/// Attributes that never change after creation (copy may still set some of them).
const FIXED_AFTER_CREATE: &[u64] = &[
    ck::CKA_CLASS,
    ck::CKA_KEY_TYPE,
    ck::CKA_TOKEN,
    ck::CKA_PRIVATE,
    ck::CKA_MODIFIABLE,
    ck::CKA_MODULUS,
    ck::CKA_MODULUS_BITS,
    ck::CKA_PUBLIC_EXPONENT,
    ck::CKA_EC_PARAMS,
    ck::CKA_EC_POINT,
    ck::CKA_VALUE_LEN,
    ck::CKA_VALUE,
    ck::CKA_PUBLIC_KEY_INFO,
    ck::CKA_ALWAYS_AUTHENTICATE,
    ck::CKA_CHECK_VALUE,
    ck::CKA_PARAMETER_SET,
    // What a key's wrapping, unwrapping and derivation impose on other keys
    // is set when it is made: changing it later could only loosen it.
    ck::CKA_WRAP_TEMPLATE,
    ck::CKA_UNWRAP_TEMPLATE,
    ck::CKA_DERIVE_TEMPLATE,
    ck::CKA_ENCAPSULATE_TEMPLATE,
    ck::CKA_DECAPSULATE_TEMPLATE,
];

/// Checks a template an application supplied: known attribute types with the right
/// value kinds, and none of the attributes only the token may set.
pub fn check_user_template(template: &Template) -> TokenResult<()> {
    template.check_kinds()?;
    for attr in TOKEN_SET {
        if template.contains(*attr) {
            return Err(TokenError::AttributeReadOnly(*attr));
        }
    }
    // An attribute array is stored among the visible attributes: it may not
    // carry key material.
    for (attr, value) in template.iter() {
        if let AttrValue::Array(t) = value {
            if t.iter().any(|(a, _)| is_secret_component(*a)) {
                return Err(TokenError::AttributeValueInvalid(*attr));
            }
        }
    }
    Ok(())
}

fn expect_ulong(template: &Template, attr: u64, want: u64, what: &str) -> TokenResult<()> {
    match template.ulong(attr) {
        Some(v) if v != want => Err(TokenError::TemplateInconsistent(format!(
            "{what} is {v:#x} but the mechanism makes {want:#x}"
        ))),
        _ => Ok(()),
    }
}

/// The usage flags a key class and type can have, so their defaults are on.
fn default_usages(class: u64, key_type: u64) -> &'static [u64] {
    match (class, key_type) {
        (ck::CKO_SECRET_KEY, ck::CKK_AES) => {
            &[ck::CKA_ENCRYPT, ck::CKA_DECRYPT, ck::CKA_WRAP, ck::CKA_UNWRAP]
        }
        (ck::CKO_SECRET_KEY, ck::CKK_DES3) => &[ck::CKA_ENCRYPT, ck::CKA_DECRYPT],
        (ck::CKO_SECRET_KEY, _) => &[ck::CKA_SIGN, ck::CKA_VERIFY, ck::CKA_DERIVE],
        (ck::CKO_PRIVATE_KEY, ck::CKK_RSA) => &[ck::CKA_SIGN, ck::CKA_DECRYPT, ck::CKA_UNWRAP],
        (ck::CKO_PUBLIC_KEY, ck::CKK_RSA) => &[ck::CKA_VERIFY, ck::CKA_ENCRYPT, ck::CKA_WRAP],
        (ck::CKO_PRIVATE_KEY, ck::CKK_EC) => &[ck::CKA_SIGN, ck::CKA_DERIVE],
        (ck::CKO_PRIVATE_KEY, ck::CKK_ML_KEM) => &[ck::CKA_DECAPSULATE],
        (ck::CKO_PUBLIC_KEY, ck::CKK_ML_KEM) => &[ck::CKA_ENCAPSULATE],
        (ck::CKO_PRIVATE_KEY, _) => &[ck::CKA_SIGN],
        (ck::CKO_PUBLIC_KEY, _) => &[ck::CKA_VERIFY],
        _ => &[],
    }
}

/// Usage flags that make no sense for a class are refused, so a template cannot
/// claim, say, a public key that decrypts.
fn check_usages(template: &Template, class: u64, key_type: u64) -> TokenResult<()> {
    let allowed = default_usages(class, key_type);
    for attr in [
        ck::CKA_ENCRYPT,
        ck::CKA_DECRYPT,
        ck::CKA_WRAP,
        ck::CKA_UNWRAP,
        ck::CKA_SIGN,
        ck::CKA_VERIFY,
        ck::CKA_DERIVE,
        ck::CKA_ENCAPSULATE,
        ck::CKA_DECAPSULATE,
    ] {
        if template.flag(attr, false) && !allowed.contains(&attr) {
            // HMAC keys may also be marked for encryption by some applications;
            // PKCS#11 does not forbid it, so only key-pair halves are strict.
            if class == ck::CKO_SECRET_KEY || client_asks_harmlessly(class, key_type, attr) {
                continue;
            }
            return Err(TokenError::TemplateInconsistent(format!(
                "attribute {attr:#x} cannot be set on this kind of key"
            )));
        }
    }
    Ok(())
}

/// Usage flags that real clients put in EC and Ed25519 key-pair templates
/// although the key type cannot serve them: OpenSC's pkcs11-tool, libp11 and
/// pkcs11-provider ask for `CKA_DERIVE` on both halves of an EC or Ed25519
/// pair, and for `CKA_ENCRYPT`/`CKA_WRAP` on the public half and
/// `CKA_DECRYPT`/`CKA_UNWRAP` on the private half. They are stored as asked
/// and grant nothing: the operation itself is refused later
/// (`CKR_KEY_TYPE_INCONSISTENT` or `CKR_KEY_FUNCTION_NOT_PERMITTED` from
/// [`check_key_use`]). RSA halves stay strict (a public key that signs is
/// refused), as do signing flags on the wrong half.
fn client_asks_harmlessly(class: u64, key_type: u64, attr: u64) -> bool {
    if !matches!(key_type, ck::CKK_EC | ck::CKK_EC_EDWARDS) {
        return false;
    }
    match class {
        ck::CKO_PUBLIC_KEY => matches!(attr, ck::CKA_ENCRYPT | ck::CKA_WRAP | ck::CKA_DERIVE),
        ck::CKO_PRIVATE_KEY => matches!(attr, ck::CKA_DECRYPT | ck::CKA_UNWRAP | ck::CKA_DERIVE),
        _ => false,
    }
}

/// The template of a key that `C_UnwrapKey` or `C_DeriveKey` makes, once the
/// unwrapping or base key's `CKA_UNWRAP_TEMPLATE` or `CKA_DERIVE_TEMPLATE`
/// (`array`) is applied: each of its attributes is added, and one the
/// application gave with another value is `CKR_TEMPLATE_INCONSISTENT`
/// (PKCS#11 3.0 §4.8, "wrapping/unwrapping templates").
pub fn apply_key_template(key: &Template, array: u64, template: &Template) -> TokenResult<Template> {
    let Some(AttrValue::Array(imposed)) = key.get(array) else {
        return Ok(template.clone());
    };
    let mut t = template.clone();
    for (attr, value) in imposed.iter() {
        match t.get(*attr) {
            Some(given) if given != value => {
                return Err(TokenError::TemplateInconsistent(format!(
                    "attribute {attr:#x} differs from the key's template {array:#x}"
                )))
            }
            _ => t.set(*attr, value.clone()),
        }
    }
    Ok(t)
}

/// Fills in the common defaults of a key object. `local` is true for keys the
/// token generated itself.
fn fill_key_defaults(t: &mut Template, class: u64, key_type: u64, local: bool, gen_mech: Option<u64>) {
    t.set(ck::CKA_CLASS, AttrValue::Ulong(class));
    t.set(ck::CKA_KEY_TYPE, AttrValue::Ulong(key_type));
    t.set_default(ck::CKA_TOKEN, AttrValue::Bool(false));
    t.set_default(ck::CKA_MODIFIABLE, AttrValue::Bool(true));
    t.set_default(ck::CKA_COPYABLE, AttrValue::Bool(true));
    t.set_default(ck::CKA_DESTROYABLE, AttrValue::Bool(true));
    t.set_default(ck::CKA_LABEL, AttrValue::Bytes(Vec::new()));
    t.set_default(ck::CKA_ID, AttrValue::Bytes(Vec::new()));
    t.set(ck::CKA_LOCAL, AttrValue::Bool(local));
    t.set(
        ck::CKA_KEY_GEN_MECHANISM,
        AttrValue::Ulong(gen_mech.unwrap_or(ck::CK_UNAVAILABLE_INFORMATION)),
    );
    for usage in default_usages(class, key_type) {
        t.set_default(*usage, AttrValue::Bool(true));
    }
    for usage in [
        ck::CKA_ENCRYPT,
        ck::CKA_DECRYPT,
        ck::CKA_WRAP,
        ck::CKA_UNWRAP,
        ck::CKA_SIGN,
        ck::CKA_VERIFY,
        ck::CKA_DERIVE,
    ] {
        t.set_default(usage, AttrValue::Bool(false));
    }
    // PKCS#11 3.2's KEM usage flags, on the keys that can have them.
    if key_type == ck::CKK_ML_KEM {
        t.set_default(ck::CKA_ENCAPSULATE, AttrValue::Bool(false));
        t.set_default(ck::CKA_DECAPSULATE, AttrValue::Bool(false));
    }
    // Every public key has CKA_VERIFY_RECOVER and every private key
    // CKA_SIGN_RECOVER (PKCS#11 3.0 §4.8, §4.9): false, as the token offers
    // no recover operation.
    match class {
        ck::CKO_PUBLIC_KEY => t.set_default(ck::CKA_VERIFY_RECOVER, AttrValue::Bool(false)),
        ck::CKO_PRIVATE_KEY => t.set_default(ck::CKA_SIGN_RECOVER, AttrValue::Bool(false)),
        _ => {}
    }
    if holds_secret(class) {
        // An HSM keeps keys inside unless the template asks otherwise.
        t.set_default(ck::CKA_PRIVATE, AttrValue::Bool(true));
        t.set_default(ck::CKA_SENSITIVE, AttrValue::Bool(true));
        t.set_default(ck::CKA_EXTRACTABLE, AttrValue::Bool(false));
        t.set_default(ck::CKA_WRAP_WITH_TRUSTED, AttrValue::Bool(false));
        t.set_default(ck::CKA_ALWAYS_AUTHENTICATE, AttrValue::Bool(false));
        let sensitive = t.flag(ck::CKA_SENSITIVE, true);
        let extractable = t.flag(ck::CKA_EXTRACTABLE, false);
        // Only keys made inside the token can be said never to have been exposed.
        t.set(ck::CKA_ALWAYS_SENSITIVE, AttrValue::Bool(local && sensitive));
        t.set(ck::CKA_NEVER_EXTRACTABLE, AttrValue::Bool(local && !extractable));
    } else {
        t.set_default(ck::CKA_PRIVATE, AttrValue::Bool(false));
        t.set_default(ck::CKA_TRUSTED, AttrValue::Bool(false));
    }
}

/// Refuses keys that can both wrap or unwrap and decrypt when the partition
/// enforces key separation: such a key lets an application wrap a sensitive key
/// and then decrypt the blob, which reveals it.
pub fn check_key_separation(t: &Template, enforce: bool) -> TokenResult<()> {
    let wraps = t.flag(ck::CKA_WRAP, false) || t.flag(ck::CKA_UNWRAP, false);
    let crypts = t.flag(ck::CKA_DECRYPT, false) || t.flag(ck::CKA_ENCRYPT, false);
    if enforce && wraps && crypts {
        return Err(TokenError::TemplateInconsistent(
            "key separation is enforced: a key may wrap/unwrap or encrypt/decrypt, not both".into(),
        ));
    }
    Ok(())
}

/// The same rule over the two halves of a key pair: a public key that wraps
/// and a private key that decrypts are one key that does both.
pub fn check_pair_separation(public: &Template, private: &Template, enforce: bool) -> TokenResult<()> {
    let mut union = Template::new();
    for attr in [ck::CKA_WRAP, ck::CKA_UNWRAP, ck::CKA_ENCRYPT, ck::CKA_DECRYPT] {
        let on = public.flag(attr, false) || private.flag(attr, false);
        union.set(attr, AttrValue::Bool(on));
    }
    check_key_separation(&union, enforce)
}

/// The attributes of a new secret key made by `C_GenerateKey`. Returns the
/// template and the key length in bytes.
pub fn generated_secret_key(mech: u64, template: &Template) -> TokenResult<(Template, usize)> {
    check_user_template(template)?;
    let key_type = match mech {
        ck::CKM_AES_KEY_GEN => ck::CKK_AES,
        ck::CKM_GENERIC_SECRET_KEY_GEN => ck::CKK_GENERIC_SECRET,
        ck::CKM_DES3_KEY_GEN => ck::CKK_DES3,
        other => return Err(TokenError::MechanismInvalid(other)),
    };
    expect_ulong(template, ck::CKA_CLASS, ck::CKO_SECRET_KEY, "CKA_CLASS")?;
    expect_ulong(template, ck::CKA_KEY_TYPE, key_type, "CKA_KEY_TYPE")?;
    if template.contains(ck::CKA_VALUE) {
        return Err(TokenError::TemplateInconsistent(
            "a generated key cannot be given CKA_VALUE".into(),
        ));
    }
    // A triple-DES key has one length, so it need not be given.
    let len = match (template.ulong(ck::CKA_VALUE_LEN), key_type) {
        (Some(len), _) => len,
        (None, ck::CKK_DES3) => 24,
        (None, _) => return Err(TokenError::TemplateIncomplete("CKA_VALUE_LEN is required".into())),
    };
    let len = usize::try_from(len).map_err(|_| TokenError::AttributeValueInvalid(ck::CKA_VALUE_LEN))?;
    check_secret_len(key_type, len)?;
    let mut t = template.clone();
    check_usages(&t, ck::CKO_SECRET_KEY, key_type)?;
    fill_key_defaults(&mut t, ck::CKO_SECRET_KEY, key_type, true, Some(mech));
    t.set(ck::CKA_VALUE_LEN, AttrValue::Ulong(len as u64));
    Ok((t, len))
}

fn check_secret_len(key_type: u64, len: usize) -> TokenResult<()> {
    let ok = match key_type {
        ck::CKK_AES => matches!(len, 16 | 24 | 32),
        ck::CKK_DES3 => len == 24,
        _ => (16..=512).contains(&len),
    };
    if ok {
        Ok(())
    } else {
        Err(TokenError::KeySizeRange(format!(
            "{len} bytes is not a valid length for this key type"
        )))
    }
}

/// What a key-pair generation must produce, decided from the mechanism and templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPairSpec {
    Rsa {
        bits: u32,
        public_exponent: Option<Vec<u8>>,
    },
    Ec {
        ec_params: Vec<u8>,
    },
    Ed25519,
    /// ML-DSA of the parameter set `CKP_ML_DSA_*`.
    MlDsa {
        parameter_set: u64,
    },
    /// ML-KEM of the parameter set `CKP_ML_KEM_*`.
    MlKem {
        parameter_set: u64,
    },
}

/// The `CKA_PARAMETER_SET` of an ML-DSA or ML-KEM key-pair generation: from
/// either template (both must agree), one of the three sets PKCS#11 3.2
/// names (1 to 3 for both key types).
fn parameter_set(public: &Template, private: &Template) -> TokenResult<u64> {
    let set = match (
        public.ulong(ck::CKA_PARAMETER_SET),
        private.ulong(ck::CKA_PARAMETER_SET),
    ) {
        (Some(a), Some(b)) if a != b => {
            return Err(TokenError::TemplateInconsistent(
                "the two halves ask for different CKA_PARAMETER_SETs".into(),
            ))
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => {
            return Err(TokenError::TemplateIncomplete(
                "CKA_PARAMETER_SET is required".into(),
            ))
        }
    };
    check_parameter_set(set)?;
    Ok(set)
}

/// One of the three parameter sets of ML-DSA (`CKP_ML_DSA_44/65/87`) and
/// ML-KEM (`CKP_ML_KEM_512/768/1024`), which PKCS#11 3.2 numbers 1 to 3.
fn check_parameter_set(set: u64) -> TokenResult<()> {
    if (1..=3).contains(&set) {
        Ok(())
    } else {
        Err(TokenError::AttributeValueInvalid(ck::CKA_PARAMETER_SET))
    }
}

/// Checks the two templates of `C_GenerateKeyPair` and fills in their defaults.
/// The caller adds the public values (modulus, point) once the key exists.
pub fn generated_key_pair(
    mech: u64,
    public: &Template,
    private: &Template,
) -> TokenResult<(KeyPairSpec, Template, Template)> {
    check_user_template(public)?;
    check_user_template(private)?;
    let (key_type, spec) = match mech {
        ck::CKM_RSA_PKCS_KEY_PAIR_GEN => {
            let bits = public
                .ulong(ck::CKA_MODULUS_BITS)
                .ok_or_else(|| TokenError::TemplateIncomplete("CKA_MODULUS_BITS is required".into()))?;
            let bits =
                u32::try_from(bits).map_err(|_| TokenError::AttributeValueInvalid(ck::CKA_MODULUS_BITS))?;
            let exp = public.bytes(ck::CKA_PUBLIC_EXPONENT).map(<[u8]>::to_vec);
            (
                ck::CKK_RSA,
                KeyPairSpec::Rsa {
                    bits,
                    public_exponent: exp,
                },
            )
        }
        ck::CKM_EC_KEY_PAIR_GEN => {
            let params = public
                .bytes(ck::CKA_EC_PARAMS)
                .or_else(|| private.bytes(ck::CKA_EC_PARAMS))
                .ok_or_else(|| TokenError::TemplateIncomplete("CKA_EC_PARAMS is required".into()))?;
            (
                ck::CKK_EC,
                KeyPairSpec::Ec {
                    ec_params: params.to_vec(),
                },
            )
        }
        ck::CKM_EC_EDWARDS_KEY_PAIR_GEN => (ck::CKK_EC_EDWARDS, KeyPairSpec::Ed25519),
        ck::CKM_ML_DSA_KEY_PAIR_GEN => (
            ck::CKK_ML_DSA,
            KeyPairSpec::MlDsa {
                parameter_set: parameter_set(public, private)?,
            },
        ),
        ck::CKM_ML_KEM_KEY_PAIR_GEN => (
            ck::CKK_ML_KEM,
            KeyPairSpec::MlKem {
                parameter_set: parameter_set(public, private)?,
            },
        ),
        other => return Err(TokenError::MechanismInvalid(other)),
    };
    expect_ulong(public, ck::CKA_CLASS, ck::CKO_PUBLIC_KEY, "public CKA_CLASS")?;
    expect_ulong(private, ck::CKA_CLASS, ck::CKO_PRIVATE_KEY, "private CKA_CLASS")?;
    expect_ulong(public, ck::CKA_KEY_TYPE, key_type, "public CKA_KEY_TYPE")?;
    expect_ulong(private, ck::CKA_KEY_TYPE, key_type, "private CKA_KEY_TYPE")?;
    for t in [public, private] {
        for attr in [
            ck::CKA_VALUE,
            ck::CKA_MODULUS,
            ck::CKA_EC_POINT,
            ck::CKA_PRIVATE_EXPONENT,
            ck::CKA_SEED,
        ] {
            if t.contains(attr) {
                return Err(TokenError::TemplateInconsistent(format!(
                    "a generated key cannot be given attribute {attr:#x}"
                )));
            }
        }
    }
    let mut pubt = public.clone();
    let mut privt = private.clone();
    check_usages(&pubt, ck::CKO_PUBLIC_KEY, key_type)?;
    check_usages(&privt, ck::CKO_PRIVATE_KEY, key_type)?;
    fill_key_defaults(&mut pubt, ck::CKO_PUBLIC_KEY, key_type, true, Some(mech));
    fill_key_defaults(&mut privt, ck::CKO_PRIVATE_KEY, key_type, true, Some(mech));
    match &spec {
        KeyPairSpec::Ec { ec_params } => {
            pubt.set(ck::CKA_EC_PARAMS, AttrValue::Bytes(ec_params.clone()));
            privt.set(ck::CKA_EC_PARAMS, AttrValue::Bytes(ec_params.clone()));
        }
        KeyPairSpec::MlDsa { parameter_set } | KeyPairSpec::MlKem { parameter_set } => {
            pubt.set(ck::CKA_PARAMETER_SET, AttrValue::Ulong(*parameter_set));
            privt.set(ck::CKA_PARAMETER_SET, AttrValue::Ulong(*parameter_set));
        }
        _ => {}
    }
    Ok((spec, pubt, privt))
}

/// Whether an object made from `template` will be private (`CKA_PRIVATE`),
/// read before the template is checked, for the login check that comes
/// first (PKCS#11 3.0 §5.1): the template's value, else the default of its
/// class (the template's `CKA_CLASS`, else `class`): secret and private keys
/// are private, other objects public. The one rule of public objects (see
/// `docs/pkcs11.md`): a private object needs the user's login, a public one
/// none, whatever the function (create, copy, set, destroy, generate,
/// unwrap, derive).
pub fn will_be_private(template: &Template, class: u64) -> bool {
    template.flag(ck::CKA_PRIVATE, holds_secret(template.class().unwrap_or(class)))
}

/// The attributes of an object made by `C_CreateObject`, an import or an unwrap.
/// Secret components are taken out of the template: the caller seals them.
/// Returns the stored attributes and the removed secret components.
pub fn created_object(template: &Template, local: bool) -> TokenResult<(Template, Template)> {
    check_user_template(template)?;
    let class = template
        .class()
        .ok_or_else(|| TokenError::TemplateIncomplete("CKA_CLASS is required".into()))?;
    let mut t = template.clone();
    let mut secret = Template::new();
    match class {
        ck::CKO_DATA | ck::CKO_CERTIFICATE => {
            t.set_default(ck::CKA_TOKEN, AttrValue::Bool(false));
            t.set_default(ck::CKA_PRIVATE, AttrValue::Bool(false));
            t.set_default(ck::CKA_MODIFIABLE, AttrValue::Bool(true));
            t.set_default(ck::CKA_COPYABLE, AttrValue::Bool(true));
            t.set_default(ck::CKA_DESTROYABLE, AttrValue::Bool(true));
            t.set_default(ck::CKA_LABEL, AttrValue::Bytes(Vec::new()));
            if class == ck::CKO_CERTIFICATE {
                t.set_default(ck::CKA_CERTIFICATE_TYPE, AttrValue::Ulong(ck::CKC_X_509));
                t.set_default(ck::CKA_ID, AttrValue::Bytes(Vec::new()));
                // A certificate attribute (PKCS#11 3.0 §4.6.3) only the SO may
                // set true: one an application made is not trusted, as for
                // public keys. Java's SunPKCS11 reads it on every certificate.
                t.set_default(ck::CKA_TRUSTED, AttrValue::Bool(false));
            }
        }
        ck::CKO_PUBLIC_KEY | ck::CKO_PRIVATE_KEY | ck::CKO_SECRET_KEY => {
            let key_type = template
                .key_type()
                .ok_or_else(|| TokenError::TemplateIncomplete("CKA_KEY_TYPE is required".into()))?;
            if !matches!(
                key_type,
                ck::CKK_RSA
                    | ck::CKK_EC
                    | ck::CKK_EC_EDWARDS
                    | ck::CKK_AES
                    | ck::CKK_DES3
                    | ck::CKK_GENERIC_SECRET
                    | ck::CKK_ML_DSA
                    | ck::CKK_ML_KEM
            ) {
                return Err(TokenError::AttributeValueInvalid(ck::CKA_KEY_TYPE));
            }
            if matches!(key_type, ck::CKK_ML_DSA | ck::CKK_ML_KEM) {
                let set = t
                    .ulong(ck::CKA_PARAMETER_SET)
                    .ok_or_else(|| TokenError::TemplateIncomplete("CKA_PARAMETER_SET is required".into()))?;
                check_parameter_set(set)?;
            }
            let secret_type = matches!(key_type, ck::CKK_AES | ck::CKK_DES3 | ck::CKK_GENERIC_SECRET);
            if secret_type != (class == ck::CKO_SECRET_KEY) {
                return Err(TokenError::TemplateInconsistent(
                    "key type does not fit the object class".into(),
                ));
            }
            if holds_secret(class) {
                let keys: Vec<u64> = t.0.keys().copied().filter(|a| is_secret_component(*a)).collect();
                for attr in keys {
                    if let Some(v) = t.remove(attr) {
                        secret.set(attr, v);
                    }
                }
                if secret.is_empty() {
                    return Err(TokenError::TemplateIncomplete(
                        "the key's value is missing".into(),
                    ));
                }
                if class == ck::CKO_SECRET_KEY {
                    let len = secret.bytes(ck::CKA_VALUE).map(<[u8]>::len).unwrap_or(0);
                    check_secret_len(key_type, len)?;
                    if let Some(want) = t.ulong(ck::CKA_VALUE_LEN) {
                        if want != len as u64 {
                            return Err(TokenError::TemplateInconsistent(
                                "CKA_VALUE_LEN does not match CKA_VALUE".into(),
                            ));
                        }
                    }
                    t.set(ck::CKA_VALUE_LEN, AttrValue::Ulong(len as u64));
                }
            }
            check_usages(&t, class, key_type)?;
            fill_key_defaults(&mut t, class, key_type, local, None);
        }
        _ => return Err(TokenError::AttributeValueInvalid(ck::CKA_CLASS)),
    }
    Ok((t, secret))
}

/// Applies a `C_SetAttributeValue` to an object's attributes, enforcing which
/// changes PKCS#11 allows. Returns the changed attributes only.
pub fn set_attributes(current: &Template, changes: &Template) -> TokenResult<Template> {
    changes.check_kinds()?;
    if !current.flag(ck::CKA_MODIFIABLE, true) {
        return Err(TokenError::ActionProhibited(
            "the object is not modifiable".into(),
        ));
    }
    let mut applied = Template::new();
    for (attr, value) in changes.iter() {
        let attr = *attr;
        if TOKEN_SET.contains(&attr) || FIXED_AFTER_CREATE.contains(&attr) || is_secret_component(attr) {
            if current.get(attr) == Some(value) {
                continue;
            }
            return Err(TokenError::AttributeReadOnly(attr));
        }
        // The mechanisms a key allows may be narrowed, never widened.
        if let (ck::CKA_ALLOWED_MECHANISMS, Some(AttrValue::UlongList(now)), AttrValue::UlongList(new)) =
            (attr, current.get(attr), value)
        {
            if !now.is_empty() && (new.is_empty() || new.iter().any(|m| !now.contains(m))) {
                return Err(TokenError::AttributeReadOnly(attr));
            }
        }
        let now = current.bool(attr);
        match (attr, value.as_bool()) {
            // Sensitivity only ever increases, extractability only ever decreases,
            // and copyability can only be turned off.
            (ck::CKA_SENSITIVE, Some(false)) if now == Some(true) => {
                return Err(TokenError::AttributeReadOnly(attr))
            }
            (ck::CKA_EXTRACTABLE, Some(true)) if now == Some(false) => {
                return Err(TokenError::AttributeReadOnly(attr))
            }
            (ck::CKA_COPYABLE, Some(true)) if now == Some(false) => {
                return Err(TokenError::AttributeReadOnly(attr))
            }
            _ => {}
        }
        applied.set(attr, value.clone());
    }
    Ok(applied)
}

/// The attributes of a copy made by `C_CopyObject`: the original's, with the
/// template's changes, which follow the same rules as a set, plus a new
/// `CKA_TOKEN`/`CKA_PRIVATE` if asked.
pub fn copied_object(current: &Template, changes: &Template) -> TokenResult<Template> {
    if !current.flag(ck::CKA_COPYABLE, true) {
        return Err(TokenError::ActionProhibited("the object is not copyable".into()));
    }
    let mut movable = changes.clone();
    let token = movable.remove(ck::CKA_TOKEN);
    let private = movable.remove(ck::CKA_PRIVATE);
    let modifiable = movable.remove(ck::CKA_MODIFIABLE);
    // The copy may be made while the original is read-only; check the rest as a set.
    let mut as_modifiable = current.clone();
    as_modifiable.set(ck::CKA_MODIFIABLE, AttrValue::Bool(true));
    let applied = set_attributes(&as_modifiable, &movable)?;
    let mut out = current.clone();
    for (k, v) in applied.iter() {
        out.set(*k, v.clone());
    }
    for (attr, value) in [
        (ck::CKA_TOKEN, token),
        (ck::CKA_PRIVATE, private),
        (ck::CKA_MODIFIABLE, modifiable),
    ] {
        if let Some(v) = value {
            v.check_kind(attr)?;
            if attr == ck::CKA_PRIVATE
                && holds_secret(current.class().unwrap_or(0))
                && v == AttrValue::Bool(false)
            {
                return Err(TokenError::TemplateInconsistent(
                    "a key cannot be copied into a public object".into(),
                ));
            }
            out.set(attr, v);
        }
    }
    out.remove(ck::CKA_UNIQUE_ID);
    Ok(out)
}

/// Whether an attribute of an object may be revealed to the application.
pub fn is_readable(object: &Template, attr: u64) -> bool {
    if !is_secret_component(attr) {
        return true;
    }
    if !holds_secret(object.class().unwrap_or(0)) {
        return true;
    }
    !object.flag(ck::CKA_SENSITIVE, true) && object.flag(ck::CKA_EXTRACTABLE, false)
}

/// Checks that a key may serve `usage` with mechanism `mech`: the mechanism
/// supports the usage, the key type fits, the usage flag is set and
/// `CKA_ALLOWED_MECHANISMS`, if present, names the mechanism.
pub fn check_key_use(key: &Template, mech: u64, usage: Usage) -> TokenResult<()> {
    if mechanism::info(mech).is_none() {
        return Err(TokenError::MechanismInvalid(mech));
    }
    if !mechanism::supports(mech, usage) {
        return Err(TokenError::MechanismInvalid(mech));
    }
    let want = mechanism::key_type_for(mech);
    let have = key.key_type();
    // HMAC works with any secret key, as PKCS#11 tokens commonly allow.
    let hmac_ok = want == Some(ck::CKK_GENERIC_SECRET) && key.class() == Some(ck::CKO_SECRET_KEY);
    if want.is_some() && have != want && !hmac_ok {
        return Err(TokenError::KeyTypeInconsistent);
    }
    if !key.flag(usage.attribute(), false) {
        return Err(TokenError::KeyFunctionNotPermitted(format!(
            "the key's CKA_{} is false",
            usage.name().to_uppercase()
        )));
    }
    if let Some(AttrValue::UlongList(allowed)) = key.get(ck::CKA_ALLOWED_MECHANISMS) {
        if !allowed.is_empty() && !allowed.contains(&mech) {
            return Err(TokenError::KeyFunctionNotPermitted(
                "CKA_ALLOWED_MECHANISMS excludes this mechanism".into(),
            ));
        }
    }
    Ok(())
}

/// Checks that `key` may be wrapped: it must be extractable, and a key marked
/// `CKA_WRAP_WITH_TRUSTED` only under a trusted wrapping key.
pub fn check_wrappable(key: &Template, wrapping_key: &Template) -> TokenResult<()> {
    if !holds_secret(key.class().unwrap_or(0)) {
        return Err(TokenError::KeyFunctionNotPermitted(
            "only private and secret keys can be wrapped".into(),
        ));
    }
    if !key.flag(ck::CKA_EXTRACTABLE, false) {
        return Err(TokenError::KeyUnextractable);
    }
    if key.flag(ck::CKA_WRAP_WITH_TRUSTED, false) && !wrapping_key.flag(ck::CKA_TRUSTED, false) {
        return Err(TokenError::KeyFunctionNotPermitted(
            "the key may be wrapped only with a trusted key".into(),
        ));
    }
    if let Some(AttrValue::Array(wanted)) = wrapping_key.get(ck::CKA_WRAP_TEMPLATE) {
        if !key.matches(wanted) {
            return Err(TokenError::KeyNotWrappable(
                "the key does not match the wrapping key's CKA_WRAP_TEMPLATE".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aes_template() -> Template {
        Template::new()
            .with(ck::CKA_VALUE_LEN, AttrValue::Ulong(32))
            .with(ck::CKA_TOKEN, AttrValue::Bool(true))
            .with(ck::CKA_LABEL, AttrValue::Bytes(b"k".to_vec()))
    }

    #[test]
    fn generated_secret_key_is_sensitive_local_and_never_extractable() {
        let (t, len) = generated_secret_key(ck::CKM_AES_KEY_GEN, &aes_template()).unwrap();
        assert_eq!(len, 32);
        assert_eq!(t.bool(ck::CKA_SENSITIVE), Some(true));
        assert_eq!(t.bool(ck::CKA_ALWAYS_SENSITIVE), Some(true));
        assert_eq!(t.bool(ck::CKA_NEVER_EXTRACTABLE), Some(true));
        assert_eq!(t.bool(ck::CKA_LOCAL), Some(true));
        assert_eq!(t.ulong(ck::CKA_KEY_GEN_MECHANISM), Some(ck::CKM_AES_KEY_GEN));
    }

    #[test]
    fn generated_key_with_bad_length_or_class_is_refused() {
        let t = aes_template().with(ck::CKA_VALUE_LEN, AttrValue::Ulong(20));
        assert!(matches!(
            generated_secret_key(ck::CKM_AES_KEY_GEN, &t),
            Err(TokenError::KeySizeRange(_))
        ));
        let t = aes_template().with(ck::CKA_CLASS, AttrValue::Ulong(ck::CKO_PUBLIC_KEY));
        assert!(matches!(
            generated_secret_key(ck::CKM_AES_KEY_GEN, &t),
            Err(TokenError::TemplateInconsistent(_))
        ));
        let t = aes_template().with(ck::CKA_LOCAL, AttrValue::Bool(true));
        assert_eq!(
            generated_secret_key(ck::CKM_AES_KEY_GEN, &t),
            Err(TokenError::AttributeReadOnly(ck::CKA_LOCAL))
        );
    }

    #[test]
    fn imported_key_is_not_always_sensitive_and_its_value_is_split_off() {
        let t = Template::new()
            .with(ck::CKA_CLASS, AttrValue::Ulong(ck::CKO_SECRET_KEY))
            .with(ck::CKA_KEY_TYPE, AttrValue::Ulong(ck::CKK_AES))
            .with(ck::CKA_VALUE, AttrValue::Bytes(vec![7; 16]));
        let (attrs, secret) = created_object(&t, false).unwrap();
        assert!(!attrs.contains(ck::CKA_VALUE));
        assert_eq!(secret.bytes(ck::CKA_VALUE), Some(&[7u8; 16][..]));
        assert_eq!(attrs.bool(ck::CKA_ALWAYS_SENSITIVE), Some(false));
        assert_eq!(attrs.bool(ck::CKA_NEVER_EXTRACTABLE), Some(false));
        assert_eq!(attrs.ulong(ck::CKA_VALUE_LEN), Some(16));
    }

    #[test]
    fn a_certificate_made_without_cka_trusted_is_not_trusted() {
        let t = Template::new()
            .with(ck::CKA_CLASS, AttrValue::Ulong(ck::CKO_CERTIFICATE))
            .with(ck::CKA_VALUE, AttrValue::Bytes(b"cert".to_vec()));
        let (attrs, _) = created_object(&t, false).unwrap();
        assert_eq!(attrs.bool(ck::CKA_TRUSTED), Some(false));
        // Given, it stays as given (true is refused to the user by the member).
        let t = t.with(ck::CKA_TRUSTED, AttrValue::Bool(true));
        assert_eq!(
            created_object(&t, false).unwrap().0.bool(ck::CKA_TRUSTED),
            Some(true)
        );
    }

    #[test]
    fn sensitive_cannot_be_cleared_and_extractable_cannot_be_set() {
        let (t, _) = generated_secret_key(ck::CKM_AES_KEY_GEN, &aes_template()).unwrap();
        assert_eq!(
            set_attributes(
                &t,
                &Template::new().with(ck::CKA_SENSITIVE, AttrValue::Bool(false))
            ),
            Err(TokenError::AttributeReadOnly(ck::CKA_SENSITIVE))
        );
        assert_eq!(
            set_attributes(
                &t,
                &Template::new().with(ck::CKA_EXTRACTABLE, AttrValue::Bool(true))
            ),
            Err(TokenError::AttributeReadOnly(ck::CKA_EXTRACTABLE))
        );
        assert_eq!(
            set_attributes(
                &t,
                &Template::new().with(ck::CKA_CLASS, AttrValue::Ulong(ck::CKO_DATA))
            ),
            Err(TokenError::AttributeReadOnly(ck::CKA_CLASS))
        );
        let renamed = set_attributes(
            &t,
            &Template::new().with(ck::CKA_LABEL, AttrValue::Bytes(b"new".to_vec())),
        );
        assert_eq!(renamed.unwrap().label().as_deref(), Some("new"));
    }

    #[test]
    fn copy_cannot_weaken_a_sensitive_key() {
        let (t, _) = generated_secret_key(ck::CKM_AES_KEY_GEN, &aes_template()).unwrap();
        assert!(copied_object(
            &t,
            &Template::new().with(ck::CKA_SENSITIVE, AttrValue::Bool(false))
        )
        .is_err());
        assert!(copied_object(
            &t,
            &Template::new().with(ck::CKA_EXTRACTABLE, AttrValue::Bool(true))
        )
        .is_err());
        let copy = copied_object(&t, &Template::new().with(ck::CKA_TOKEN, AttrValue::Bool(false))).unwrap();
        assert_eq!(copy.bool(ck::CKA_TOKEN), Some(false));
    }

    #[test]
    fn sensitive_values_are_unreadable() {
        let (t, _) = generated_secret_key(ck::CKM_AES_KEY_GEN, &aes_template()).unwrap();
        assert!(!is_readable(&t, ck::CKA_VALUE));
        assert!(is_readable(&t, ck::CKA_LABEL));
    }

    #[test]
    fn key_use_checks_flags_type_and_allowed_mechanisms() {
        let (mut t, _) = generated_secret_key(ck::CKM_AES_KEY_GEN, &aes_template()).unwrap();
        assert!(check_key_use(&t, ck::CKM_AES_GCM, Usage::Encrypt).is_ok());
        assert_eq!(
            check_key_use(&t, ck::CKM_ECDSA, Usage::Sign),
            Err(TokenError::KeyTypeInconsistent)
        );
        t.set(
            ck::CKA_ALLOWED_MECHANISMS,
            AttrValue::UlongList(vec![ck::CKM_AES_CBC_PAD]),
        );
        assert!(matches!(
            check_key_use(&t, ck::CKM_AES_GCM, Usage::Encrypt),
            Err(TokenError::KeyFunctionNotPermitted(_))
        ));
        t.set(ck::CKA_ENCRYPT, AttrValue::Bool(false));
        assert!(matches!(
            check_key_use(&t, ck::CKM_AES_CBC_PAD, Usage::Encrypt),
            Err(TokenError::KeyFunctionNotPermitted(_))
        ));
    }

    /// GnuTLS (Knot DNS's keystore) reads CKA_VERIFY_RECOVER of the public
    /// keys it generates; a public key without it answered
    /// CKR_ATTRIBUTE_TYPE_INVALID.
    #[test]
    fn key_pair_halves_have_their_recover_flags() {
        let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        let public = Template::new().with(ck::CKA_EC_PARAMS, AttrValue::Bytes(p256));
        let (_, public, private) =
            generated_key_pair(ck::CKM_EC_KEY_PAIR_GEN, &public, &Template::new()).unwrap();
        assert_eq!(public.bool(ck::CKA_VERIFY_RECOVER), Some(false));
        assert_eq!(private.bool(ck::CKA_SIGN_RECOVER), Some(false));
        assert!(!public.contains(ck::CKA_SIGN_RECOVER) && !private.contains(ck::CKA_VERIFY_RECOVER));
        let (secret, _) = generated_secret_key(ck::CKM_AES_KEY_GEN, &aes_template()).unwrap();
        assert!(!secret.contains(ck::CKA_SIGN_RECOVER) && !secret.contains(ck::CKA_VERIFY_RECOVER));
    }

    #[test]
    fn ec_public_keys_may_carry_derive_but_rsa_public_keys_may_not_sign() {
        let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        let public = Template::new()
            .with(ck::CKA_EC_PARAMS, AttrValue::Bytes(p256))
            .with(ck::CKA_DERIVE, AttrValue::Bool(true));
        assert!(generated_key_pair(ck::CKM_EC_KEY_PAIR_GEN, &public, &Template::new()).is_ok());
        let rsa = Template::new()
            .with(ck::CKA_MODULUS_BITS, AttrValue::Ulong(2048))
            .with(ck::CKA_SIGN, AttrValue::Bool(true));
        assert!(matches!(
            generated_key_pair(ck::CKM_RSA_PKCS_KEY_PAIR_GEN, &rsa, &Template::new()),
            Err(TokenError::TemplateInconsistent(_))
        ));
    }

    #[test]
    fn allowed_mechanisms_may_be_narrowed_but_not_widened() {
        let (mut t, _) = generated_secret_key(ck::CKM_AES_KEY_GEN, &aes_template()).unwrap();
        t.set(
            ck::CKA_ALLOWED_MECHANISMS,
            AttrValue::UlongList(vec![ck::CKM_AES_CBC_PAD, ck::CKM_AES_GCM]),
        );
        let set = |list: Vec<u64>| {
            set_attributes(
                &t,
                &Template::new().with(ck::CKA_ALLOWED_MECHANISMS, AttrValue::UlongList(list)),
            )
        };
        assert!(set(vec![ck::CKM_AES_GCM]).is_ok());
        for wider in [
            vec![ck::CKM_AES_ECB],
            vec![],
            vec![ck::CKM_AES_GCM, ck::CKM_AES_ECB],
        ] {
            assert_eq!(
                set(wider),
                Err(TokenError::AttributeReadOnly(ck::CKA_ALLOWED_MECHANISMS))
            );
        }
    }

    #[test]
    fn ec_and_ed25519_pairs_store_the_usages_clients_ask_for() {
        let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        let on = |t: Template, attrs: &[u64]| attrs.iter().fold(t, |t, a| t.with(*a, AttrValue::Bool(true)));
        let public = on(
            Template::new().with(ck::CKA_EC_PARAMS, AttrValue::Bytes(p256)),
            &[ck::CKA_VERIFY, ck::CKA_ENCRYPT, ck::CKA_WRAP, ck::CKA_DERIVE],
        );
        let private = on(
            Template::new(),
            &[ck::CKA_SIGN, ck::CKA_DECRYPT, ck::CKA_UNWRAP, ck::CKA_DERIVE],
        );
        let (_, pubt, privt) = generated_key_pair(ck::CKM_EC_KEY_PAIR_GEN, &public, &private).unwrap();
        assert_eq!(pubt.bool(ck::CKA_WRAP), Some(true));
        assert_eq!(privt.bool(ck::CKA_UNWRAP), Some(true));
        // Stored, and harmless: an EC key cannot serve AES key wrapping.
        assert_eq!(
            check_key_use(&privt, ck::CKM_AES_KEY_WRAP, Usage::Unwrap),
            Err(TokenError::KeyTypeInconsistent)
        );
        let ed_public = on(Template::new(), &[ck::CKA_VERIFY, ck::CKA_DERIVE]);
        let ed_private = on(Template::new(), &[ck::CKA_SIGN, ck::CKA_DERIVE]);
        let (_, _, ed_privt) =
            generated_key_pair(ck::CKM_EC_EDWARDS_KEY_PAIR_GEN, &ed_public, &ed_private).unwrap();
        assert_eq!(
            check_key_use(&ed_privt, ck::CKM_ECDH1_DERIVE, Usage::Derive),
            Err(TokenError::KeyTypeInconsistent)
        );
        // A signing flag on the wrong half is still refused.
        let verifying_private = on(Template::new(), &[ck::CKA_VERIFY]);
        assert!(matches!(
            generated_key_pair(ck::CKM_EC_EDWARDS_KEY_PAIR_GEN, &ed_public, &verifying_private),
            Err(TokenError::TemplateInconsistent(_))
        ));
    }

    #[test]
    fn an_unwrap_template_is_applied_and_a_conflict_is_inconsistent() {
        let imposed = Template::new().with(ck::CKA_SENSITIVE, AttrValue::Bool(true));
        let key = Template::new().with(ck::CKA_UNWRAP_TEMPLATE, AttrValue::Array(imposed));
        let t = apply_key_template(&key, ck::CKA_UNWRAP_TEMPLATE, &Template::new()).unwrap();
        assert_eq!(t.bool(ck::CKA_SENSITIVE), Some(true));
        let weak = Template::new().with(ck::CKA_SENSITIVE, AttrValue::Bool(false));
        assert!(matches!(
            apply_key_template(&key, ck::CKA_UNWRAP_TEMPLATE, &weak),
            Err(TokenError::TemplateInconsistent(_))
        ));
        assert_eq!(
            apply_key_template(&Template::new(), ck::CKA_UNWRAP_TEMPLATE, &weak).unwrap(),
            weak
        );
    }

    #[test]
    fn key_separation_covers_both_halves_of_a_pair() {
        let public = Template::new().with(ck::CKA_WRAP, AttrValue::Bool(true));
        let private = Template::new().with(ck::CKA_DECRYPT, AttrValue::Bool(true));
        assert!(check_pair_separation(&public, &private, false).is_ok());
        assert!(matches!(
            check_pair_separation(&public, &private, true),
            Err(TokenError::TemplateInconsistent(_))
        ));
        let signing = Template::new().with(ck::CKA_SIGN, AttrValue::Bool(true));
        assert!(check_pair_separation(&public, &signing, true).is_ok());
    }

    #[test]
    fn non_extractable_keys_cannot_be_wrapped() {
        let (t, _) = generated_secret_key(ck::CKM_AES_KEY_GEN, &aes_template()).unwrap();
        assert_eq!(check_wrappable(&t, &t), Err(TokenError::KeyUnextractable));
    }
}
