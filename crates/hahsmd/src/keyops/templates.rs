//! The templates of new objects, without I/O: what a create, an import, a
//! generation or an unwrap makes, with the attributes the rules add; and the
//! OUIDs a client write derives from its operation id.
use crate::appliance::Appliance;
use crate::partition::{ml_dsa_set, ml_dsa_set_of, ml_kem_set, ml_kem_set_of, public_key_of};
use hahsm_crypto::{self as crypto, KeyPair, PublicKey, SecretBytes};
use hahsm_link::Fingerprint;
use hahsm_proto::client::{OpId, Request};
use hahsm_token::rules::{self, KeyPairSpec};
use hahsm_token::{ck, AttrValue, Ouid, Template, TokenError, TokenResult};

/// The OUID of the `index`th object a client write makes, derived from the
/// write's operation id (and the partition's name and the client, so that no one
/// else's op id can name it). A write retried on another member after an
/// ambiguous failure makes the same OUID there: if the first attempt was
/// applied after all, the two creations meet as one object, and the
/// replication engine keeps the later (the one the client was answered).
pub(super) fn derived_ouid(partition: &str, client: &Fingerprint, op_id: &OpId, index: usize) -> Ouid {
    let mut input = Vec::with_capacity(128);
    input.extend_from_slice(b"hahsm/ouid/v2");
    // The partition's name, not its serial: each member of a group has its own
    // serial for the same partition, and a retry must make the same OUID on any.
    input.extend_from_slice(&(partition.len() as u64).to_be_bytes());
    input.extend_from_slice(partition.as_bytes());
    input.extend_from_slice(&client.0);
    input.extend_from_slice(op_id);
    input.extend_from_slice(&(index as u64).to_be_bytes());
    let hash = crypto::sha256(&input);
    let mut id = [0u8; 16];
    id.copy_from_slice(&hash[..16]);
    Ouid(id)
}

/// Under key separation, a generated key wraps or unwraps only when its
/// template asks for it, so the defaults alone never break the rule.
pub(super) fn separated_defaults(mut template: Template, separation: bool) -> Template {
    if separation {
        for attr in [ck::CKA_WRAP, ck::CKA_UNWRAP] {
            template.set_default(attr, AttrValue::Bool(false));
        }
    }
    template
}

pub(super) fn check_template_size(app: &Appliance, t: &Template) -> TokenResult<()> {
    if t.len() > app.config.limits.max_template_attributes {
        return Err(TokenError::ArgumentsBad(format!(
            "the template has {} attributes; the limit is {}",
            t.len(),
            app.config.limits.max_template_attributes
        )));
    }
    Ok(())
}

/// The mechanism a request uses, if any, for the metrics' labels.
pub(super) fn mechanism_of(request: &Request) -> Option<u64> {
    match request {
        Request::GenerateKey { mechanism, .. }
        | Request::GenerateKeyPair { mechanism, .. }
        | Request::Sign { mechanism, .. }
        | Request::Verify { mechanism, .. }
        | Request::Encrypt { mechanism, .. }
        | Request::Decrypt { mechanism, .. }
        | Request::WrapKey { mechanism, .. }
        | Request::UnwrapKey { mechanism, .. }
        | Request::DeriveKey { mechanism, .. }
        | Request::Digest { mechanism, .. }
        | Request::DigestKeys { mechanism, .. }
        | Request::EncapsulateKey { mechanism, .. }
        | Request::DecapsulateKey { mechanism, .. } => Some(mechanism.mech),
        _ => None,
    }
}

pub(super) fn generate_pair(spec: &KeyPairSpec) -> TokenResult<KeyPair> {
    match spec {
        KeyPairSpec::Rsa {
            bits,
            public_exponent,
        } => crypto::generate_rsa(*bits, public_exponent.as_deref()),
        KeyPairSpec::Ec { ec_params } => crypto::generate_ec(crypto::Curve::from_ec_params(ec_params)?),
        KeyPairSpec::Ed25519 => crypto::generate_ed25519(),
        KeyPairSpec::MlDsa { parameter_set } => crypto::generate_ml_dsa(ml_dsa_set(*parameter_set)?),
        KeyPairSpec::MlKem { parameter_set } => crypto::generate_ml_kem(ml_kem_set(*parameter_set)?),
    }
}

/// DER of OID 1.3.101.112 (Ed25519), the `CKA_EC_PARAMS` of Edwards keys.
pub(super) const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// Puts the public values of a key into the attributes of both halves.
pub(super) fn add_public_attributes(public: &PublicKey, pubt: &mut Template, privt: &mut Template) {
    match public {
        PublicKey::Rsa {
            modulus,
            public_exponent,
        } => {
            let bits = public.modulus_bits().unwrap_or(0);
            for t in [&mut *pubt, &mut *privt] {
                t.set(ck::CKA_MODULUS, AttrValue::Bytes(modulus.clone()));
                t.set(ck::CKA_PUBLIC_EXPONENT, AttrValue::Bytes(public_exponent.clone()));
            }
            pubt.set(ck::CKA_MODULUS_BITS, AttrValue::Ulong(bits));
        }
        PublicKey::Ec { curve, .. } => {
            let point = public.ec_point_der().unwrap_or_default();
            pubt.set(ck::CKA_EC_PARAMS, AttrValue::Bytes(curve.ec_params()));
            privt.set(ck::CKA_EC_PARAMS, AttrValue::Bytes(curve.ec_params()));
            pubt.set(ck::CKA_EC_POINT, AttrValue::Bytes(point));
        }
        PublicKey::Ed25519 { .. } => {
            let point = public.ec_point_der().unwrap_or_default();
            pubt.set_default(ck::CKA_EC_PARAMS, AttrValue::Bytes(ED25519_PARAMS.to_vec()));
            privt.set_default(ck::CKA_EC_PARAMS, AttrValue::Bytes(ED25519_PARAMS.to_vec()));
            pubt.set(ck::CKA_EC_POINT, AttrValue::Bytes(point));
        }
        PublicKey::MlDsa { value, .. } | PublicKey::MlKem { value, .. } => {
            let set = public.parameter_set().unwrap_or(0);
            pubt.set(ck::CKA_PARAMETER_SET, AttrValue::Ulong(set));
            privt.set(ck::CKA_PARAMETER_SET, AttrValue::Ulong(set));
            pubt.set(ck::CKA_VALUE, AttrValue::Bytes(value.clone()));
        }
    }
    pubt.set(ck::CKA_PUBLIC_KEY_INFO, AttrValue::Bytes(public.to_spki_der()));
    privt.set(ck::CKA_PUBLIC_KEY_INFO, AttrValue::Bytes(public.to_spki_der()));
}

/// `C_CreateObject`: checks the template and turns the key's components into
/// the form the member keeps (raw secret bytes, or PKCS#8 for private keys).
pub fn imported_object(template: &Template) -> TokenResult<(Template, Option<SecretBytes>)> {
    let (mut attrs, secret) = rules::created_object(template, false)?;
    let class = attrs.class().unwrap_or(ck::CKO_DATA);
    let comp = |a: u64| secret.bytes(a).unwrap_or_default();
    match (class, attrs.key_type()) {
        (ck::CKO_SECRET_KEY, _) => Ok((attrs, Some(SecretBytes::new(comp(ck::CKA_VALUE).to_vec())))),
        (ck::CKO_PRIVATE_KEY, Some(ck::CKK_RSA)) => {
            let n = attrs.bytes(ck::CKA_MODULUS).unwrap_or_default().to_vec();
            let e = attrs.bytes(ck::CKA_PUBLIC_EXPONENT).unwrap_or_default().to_vec();
            let pair = crypto::rsa_private_from_components(
                &n,
                &e,
                comp(ck::CKA_PRIVATE_EXPONENT),
                comp(ck::CKA_PRIME_1),
                comp(ck::CKA_PRIME_2),
                comp(ck::CKA_EXPONENT_1),
                comp(ck::CKA_EXPONENT_2),
                comp(ck::CKA_COEFFICIENT),
            )?;
            let mut dummy = Template::new();
            add_public_attributes(&pair.public, &mut dummy, &mut attrs);
            Ok((attrs, Some(pair.private_pkcs8)))
        }
        (ck::CKO_PRIVATE_KEY, Some(ck::CKK_EC)) => {
            let params = attrs
                .bytes(ck::CKA_EC_PARAMS)
                .ok_or_else(|| TokenError::TemplateIncomplete("CKA_EC_PARAMS is required".into()))?;
            let pair =
                crypto::ec_private_from_scalar(crypto::Curve::from_ec_params(params)?, comp(ck::CKA_VALUE))?;
            let mut dummy = Template::new();
            add_public_attributes(&pair.public, &mut dummy, &mut attrs);
            Ok((attrs, Some(pair.private_pkcs8)))
        }
        (ck::CKO_PRIVATE_KEY, Some(ck::CKK_EC_EDWARDS)) => {
            let pair = crypto::ed25519_private_from_seed(comp(ck::CKA_VALUE))?;
            let mut dummy = Template::new();
            add_public_attributes(&pair.public, &mut dummy, &mut attrs);
            Ok((attrs, Some(pair.private_pkcs8)))
        }
        (ck::CKO_PRIVATE_KEY, Some(ck::CKK_ML_DSA)) => {
            // The seed form only (PKCS#11 3.2 `CKA_SEED`): hahsm keeps the
            // seed, and an expanded key alone cannot give it back.
            if secret.contains(ck::CKA_VALUE) {
                return Err(TokenError::TemplateInconsistent(
                    "an ML-DSA private key is imported by its CKA_SEED, not its expanded CKA_VALUE".into(),
                ));
            }
            let seed = secret
                .bytes(ck::CKA_SEED)
                .ok_or_else(|| TokenError::TemplateIncomplete("CKA_SEED is required".into()))?;
            let pair = crypto::ml_dsa_private_from_seed(ml_dsa_set_of(&attrs)?, seed)?;
            let mut dummy = Template::new();
            add_public_attributes(&pair.public, &mut dummy, &mut attrs);
            Ok((attrs, Some(pair.private_pkcs8)))
        }
        (ck::CKO_PRIVATE_KEY, Some(ck::CKK_ML_KEM)) => {
            // The decapsulation key dk (`CKA_VALUE`); hahsm does not expand
            // ML-KEM seeds.
            if secret.contains(ck::CKA_SEED) {
                return Err(TokenError::TemplateInconsistent(
                    "an ML-KEM private key is imported by its CKA_VALUE (dk), not a CKA_SEED".into(),
                ));
            }
            let set = ml_kem_set_of(&attrs)?;
            let pair = crypto::ml_kem_private_from_value(set, comp(ck::CKA_VALUE))?;
            let mut dummy = Template::new();
            add_public_attributes(&pair.public, &mut dummy, &mut attrs);
            Ok((attrs, Some(pair.private_pkcs8)))
        }
        (ck::CKO_PUBLIC_KEY, _) => {
            // Parse and check the public values now, so a bad key is refused
            // at creation rather than at its first use.
            let public = public_key_of(&attrs)?;
            public.validate()?;
            if let Some(point) = public.ec_point_der() {
                attrs.set(ck::CKA_EC_POINT, AttrValue::Bytes(point));
            }
            attrs.set(ck::CKA_PUBLIC_KEY_INFO, AttrValue::Bytes(public.to_spki_der()));
            Ok((attrs, None))
        }
        _ => Ok((attrs, None)),
    }
}

/// The two objects of an imported key pair: `template` (label, id, token,
/// usage flags) applies to both, each keeping only what fits its class.
pub(super) fn imported_pair_templates(
    public: &PublicKey,
    template: &Template,
) -> TokenResult<(Template, Template)> {
    let key_type = public.key_type();
    let mut common = template.clone();
    for attr in [ck::CKA_CLASS, ck::CKA_KEY_TYPE] {
        common.remove(attr);
    }
    let only_private = [
        ck::CKA_SIGN,
        ck::CKA_DECRYPT,
        ck::CKA_UNWRAP,
        ck::CKA_DERIVE,
        ck::CKA_SENSITIVE,
        ck::CKA_EXTRACTABLE,
        ck::CKA_DECAPSULATE,
    ];
    let only_public = [ck::CKA_VERIFY, ck::CKA_ENCRYPT, ck::CKA_WRAP, ck::CKA_ENCAPSULATE];
    let mut pubt = common.clone();
    let mut privt = common;
    for a in only_private {
        pubt.remove(a);
    }
    for a in only_public {
        privt.remove(a);
    }
    pubt.set(ck::CKA_CLASS, AttrValue::Ulong(ck::CKO_PUBLIC_KEY));
    pubt.set(ck::CKA_KEY_TYPE, AttrValue::Ulong(key_type));
    privt.set(ck::CKA_CLASS, AttrValue::Ulong(ck::CKO_PRIVATE_KEY));
    privt.set(ck::CKA_KEY_TYPE, AttrValue::Ulong(key_type));
    // A placeholder component so the creation rules see a key with a value;
    // the real material is the PKCS#8 blob, kept sealed.
    privt.set(ck::CKA_VALUE, AttrValue::Bytes(vec![0]));
    add_public_attributes(public, &mut pubt, &mut privt);
    // The public template needs its public values before the rules check it.
    let (pubt, _) = rules::created_object(&pubt, false)?;
    let (privt, _) = rules::created_object(&privt, false)?;
    Ok((pubt, privt))
}

/// What `C_WrapKey` wraps of a key: its stored secret, which is the raw
/// value of a secret key and PKCS#8 of an RSA, EC or Ed25519 private key;
/// an ML-DSA key's stored seed goes out as its seed-form PKCS#8 (RFC 9881),
/// which `C_UnwrapKey` takes back. An ML-KEM private key has no PKCS#8 form
/// here, so it is not wrapped.
pub(super) fn wrapped_form(key: &Template, secret: SecretBytes) -> TokenResult<SecretBytes> {
    match (key.class(), key.key_type()) {
        (Some(ck::CKO_PRIVATE_KEY), Some(ck::CKK_ML_DSA)) => {
            crypto::ml_dsa_seed_pkcs8(ml_dsa_set_of(key)?, &secret)
        }
        (Some(ck::CKO_PRIVATE_KEY), Some(ck::CKK_ML_KEM)) => Err(TokenError::KeyNotWrappable(
            "an ML-KEM private key cannot be wrapped: hahsm has no PKCS#8 form for it".into(),
        )),
        _ => Ok(secret),
    }
}

/// `C_UnwrapKey`: the template names the class and key type; the unwrapped bytes
/// are the raw secret, or PKCS#8 for private keys.
pub(super) fn unwrapped_object(
    template: &Template,
    secret: SecretBytes,
) -> TokenResult<(Template, SecretBytes)> {
    let class = template
        .class()
        .ok_or_else(|| TokenError::TemplateIncomplete("CKA_CLASS is required".into()))?;
    match class {
        ck::CKO_SECRET_KEY => {
            let mut t = template.clone();
            t.set(ck::CKA_VALUE, AttrValue::Bytes(secret.expose().to_vec()));
            let (attrs, _) = rules::created_object(&t, false)?;
            Ok((attrs, secret))
        }
        ck::CKO_PRIVATE_KEY => {
            let pair =
                crypto::import_private_key_der(secret.expose()).map_err(|_| TokenError::WrappedKeyInvalid)?;
            if template.key_type().is_some_and(|k| k != pair.public.key_type()) {
                return Err(TokenError::TemplateInconsistent(
                    "the unwrapped key is of another type".into(),
                ));
            }
            let mut t = template.clone();
            t.set(ck::CKA_KEY_TYPE, AttrValue::Ulong(pair.public.key_type()));
            // An ML-DSA key's parameter set is the one its PKCS#8 names.
            if let Some(set) = pair.public.parameter_set() {
                if t.ulong(ck::CKA_PARAMETER_SET).is_some_and(|asked| asked != set) {
                    return Err(TokenError::TemplateInconsistent(
                        "the unwrapped key is of another parameter set".into(),
                    ));
                }
                t.set(ck::CKA_PARAMETER_SET, AttrValue::Ulong(set));
            }
            // A placeholder component so the rules accept the template; the real
            // material is the PKCS#8 blob.
            t.set(ck::CKA_VALUE, AttrValue::Bytes(vec![0]));
            let (mut attrs, _) = rules::created_object(&t, false)?;
            let mut dummy = Template::new();
            add_public_attributes(&pair.public, &mut dummy, &mut attrs);
            Ok((attrs, pair.private_pkcs8))
        }
        _ => Err(TokenError::TemplateInconsistent(
            "only secret and private keys can be unwrapped".into(),
        )),
    }
}
