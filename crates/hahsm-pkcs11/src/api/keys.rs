//! Key management and random numbers (§5.14, §5.15): generate, wrap, unwrap,
//! derive; random bytes.
use super::common::*;
use crate::decode::Deferred;
use crate::error::{delivers, rv, Error, Result};
use crate::session::{PendingWrap, Session};
use crate::sync::lock;
use hahsm_client::connection::new_op_id;
use hahsm_proto::client::{Request, Response};
use hahsm_token::mechanism::Usage;
use hahsm_token::{ck, Mechanism, Template};

/// The checks of a new secret key's template that come after the
/// mechanism and the key (PKCS#11 3.0 §5.1): a token key needs a read/write
/// session, a private one the user's login; then the template itself.
/// Returns whether it is a token key, and the template.
fn secret_key_template(s: &Session, template: Deferred<Template>) -> Result<(bool, Template)> {
    let token = template.flag(ck::CKA_TOKEN, false);
    check_writable(s, token)?;
    check_login_for(s, &template, ck::CKO_SECRET_KEY)?;
    Ok((token, template.get()?))
}

pub fn generate_key(cx: Cx, mech: Mechanism, template: Deferred<Template>) -> Result<ck::CK_OBJECT_HANDLE> {
    let Cx { m, s } = cx;
    if !mech_has_flag(&s, mech.mech, ck::CKF_GENERATE) {
        return rv(ck::CKR_MECHANISM_INVALID);
    }
    let (token, template) = secret_key_template(&s, template)?;
    let r = m.call(
        &s.slot,
        Request::GenerateKey {
            partition: s.slot.partition.clone(),
            mechanism: mech,
            template,
            op_id: new_op_id(),
        },
    );
    if let Err(e) = &r {
        size_refused("C_GenerateKey", e);
    }
    object_created(&m, &s, r, token)
}

/// A key generation refused for its size (an RSA key under 2048 bits, an
/// AES key that is not 16, 24 or 32 bytes) says why in the module's log,
/// whether or not `HAHSM_PKCS11_DEBUG` is set: the code alone does not tell
/// an application's operator that the size is the token's rule.
fn size_refused(function: &str, e: &Error) {
    if e.rv() == ck::CKR_KEY_SIZE_RANGE {
        let why = if function == "C_GenerateKeyPair" {
            " (RSA keys under 2048 bits are too short to make today, NIST SP 800-131A; \
             the partition's policy 40, allow-legacy-mechanisms, allows RSA-1024)"
        } else {
            ""
        };
        crate::log::info(&format!(
            "{function}: CKR_KEY_SIZE_RANGE: {}{why}",
            crate::error::describe(e)
        ));
    }
}

pub fn generate_key_pair(
    cx: Cx,
    mech: Mechanism,
    public: Deferred<Template>,
    private: Deferred<Template>,
) -> Result<(ck::CK_OBJECT_HANDLE, ck::CK_OBJECT_HANDLE)> {
    let Cx { m, s } = cx;
    if !mech_has_flag(&s, mech.mech, ck::CKF_GENERATE_KEY_PAIR) {
        return rv(ck::CKR_MECHANISM_INVALID);
    }

    let (pub_token, priv_token) = (
        public.flag(ck::CKA_TOKEN, false),
        private.flag(ck::CKA_TOKEN, false),
    );
    check_writable(&s, pub_token || priv_token)?;
    check_login_for(&s, &public, ck::CKO_PUBLIC_KEY)?;
    check_login_for(&s, &private, ck::CKO_PRIVATE_KEY)?;
    let (public, private) = (public.get()?, private.get()?);
    let made = m
        .call(
            &s.slot,
            Request::GenerateKeyPair {
                partition: s.slot.partition.clone(),
                mechanism: mech,
                public_template: public,
                private_template: private,
                op_id: new_op_id(),
            },
        )
        .inspect_err(|e| size_refused("C_GenerateKeyPair", e))?;
    match made {
        Response::KeyPair { public, private } => Ok((
            new_handle(&m, &s, public, pub_token),
            new_handle(&m, &s, private, priv_token),
        )),
        _ => Err(unexpected()),
    }
}

pub fn wrap_key(
    cx: Cx,
    mech: Mechanism,
    wrapping: ck::CK_OBJECT_HANDLE,
    target: ck::CK_OBJECT_HANDLE,
    capacity: Option<usize>,
) -> Result<Vec<u8>> {
    let Cx { m, s } = cx;
    check_mechanism_for(&s, &mech, Usage::Wrap)?;
    let (wrapping_ouid, info) = key(&m, &s, wrapping).map_err(|e| match e.rv() {
        ck::CKR_KEY_HANDLE_INVALID => Error::Rv(ck::CKR_WRAPPING_KEY_HANDLE_INVALID),
        _ => e,
    })?;
    check_key_for(&mech, &info, Usage::Wrap).map_err(|e| match e.rv() {
        ck::CKR_KEY_TYPE_INCONSISTENT => Error::Rv(ck::CKR_WRAPPING_KEY_TYPE_INCONSISTENT),
        _ => e,
    })?;
    let (target_ouid, _) = m
        .handles
        .object(s.slot.id, target)
        .map_err(|_| Error::Rv(ck::CKR_KEY_HANDLE_INVALID))?;
    let request = (wrapping_ouid, target_ouid, mech);
    let cached = {
        let st = lock(&s.state);
        st.pending_wrap
            .as_ref()
            .filter(|p| p.request == request)
            .map(|p| p.wrapped.clone())
    };
    let wrapped = match cached {
        Some(w) => w,
        None => match m.call(
            &s.slot,
            Request::WrapKey {
                partition: s.slot.partition.clone(),
                wrapping_key: request.0,
                key: request.1,
                mechanism: request.2.clone(),
            },
        )? {
            Response::Bytes(b) => b,
            _ => return Err(unexpected()),
        },
    };
    let mut st = lock(&s.state);
    if delivers(capacity, wrapped.len())? {
        st.pending_wrap = None;
    } else {
        st.pending_wrap = Some(PendingWrap {
            request,
            wrapped: wrapped.clone(),
        });
    }
    Ok(wrapped)
}

pub fn unwrap_key(
    cx: Cx,
    mech: Mechanism,
    unwrapping: ck::CK_OBJECT_HANDLE,
    wrapped: &[u8],
    template: Deferred<Template>,
) -> Result<ck::CK_OBJECT_HANDLE> {
    let Cx { m, s } = cx;
    check_mechanism_for(&s, &mech, Usage::Unwrap)?;
    let (ouid, info) = key(&m, &s, unwrapping).map_err(|e| match e.rv() {
        ck::CKR_KEY_HANDLE_INVALID => Error::Rv(ck::CKR_UNWRAPPING_KEY_HANDLE_INVALID),
        _ => e,
    })?;
    check_key_for(&mech, &info, Usage::Unwrap).map_err(|e| match e.rv() {
        ck::CKR_KEY_TYPE_INCONSISTENT => Error::Rv(ck::CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT),
        _ => e,
    })?;
    let (token, template) = secret_key_template(&s, template)?;
    let r = m.call(
        &s.slot,
        Request::UnwrapKey {
            partition: s.slot.partition.clone(),
            unwrapping_key: ouid,
            mechanism: mech,
            wrapped: wrapped.to_vec(),
            template,
            op_id: new_op_id(),
        },
    );
    object_created(&m, &s, r, token)
}

pub fn derive_key(
    cx: Cx,
    mech: Mechanism,
    base: ck::CK_OBJECT_HANDLE,
    template: Deferred<Template>,
) -> Result<ck::CK_OBJECT_HANDLE> {
    let Cx { m, s } = cx;
    check_mechanism_for(&s, &mech, Usage::Derive)?;
    let (ouid, info) = key(&m, &s, base)?;
    check_key_for(&mech, &info, Usage::Derive)?;
    let (token, template) = secret_key_template(&s, template)?;
    let r = m.call(
        &s.slot,
        Request::DeriveKey {
            partition: s.slot.partition.clone(),
            base_key: ouid,
            mechanism: mech,
            template,
            op_id: new_op_id(),
        },
    );
    object_created(&m, &s, r, token)
}

/// The ciphertext length of an ML-KEM parameter set (FIPS 203, table 3),
/// for the size query of `C_EncapsulateKey`; `None` for another key.
fn kem_ciphertext_len(parameter_set: u64) -> Option<usize> {
    match parameter_set {
        ck::CKP_ML_KEM_512 => Some(768),
        ck::CKP_ML_KEM_768 => Some(1088),
        ck::CKP_ML_KEM_1024 => Some(1568),
        _ => None,
    }
}

/// `C_EncapsulateKey` (PKCS#11 3.2 §5.18): the member encapsulates to the
/// ML-KEM public key and keeps the shared secret as a new secret key from
/// `template`; the ciphertext is the output (buffer convention of §5.2: a
/// size query or a short buffer makes no key) and `key` gets the new
/// key's handle.
pub fn encapsulate_key(
    cx: Cx,
    mech: Mechanism,
    public: ck::CK_OBJECT_HANDLE,
    template: Deferred<Template>,
    capacity: Option<usize>,
    key_out: &mut ck::CK_OBJECT_HANDLE,
) -> Result<Vec<u8>> {
    let Cx { m, s } = cx;
    check_mechanism_for(&s, &mech, Usage::Encapsulate)?;
    let (ouid, info) = key(&m, &s, public)?;
    check_key_for(&mech, &info, Usage::Encapsulate)?;
    let needed = kem_ciphertext_len(info.parameter_set).ok_or(Error::Rv(ck::CKR_KEY_TYPE_INCONSISTENT))?;
    match capacity {
        None => return Ok(vec![0; needed]),
        Some(cap) if cap < needed => return Err(Error::BufferTooSmall { needed }),
        Some(_) => {}
    }
    let (token, template) = secret_key_template(&s, template)?;
    let r = m.call(
        &s.slot,
        Request::EncapsulateKey {
            partition: s.slot.partition.clone(),
            public_key: ouid,
            mechanism: mech,
            template,
            op_id: new_op_id(),
        },
    )?;
    match r {
        Response::Encapsulated { object, ciphertext } if ciphertext.len() == needed => {
            *key_out = new_handle(&m, &s, object, token);
            Ok(ciphertext)
        }
        _ => Err(unexpected()),
    }
}

/// `C_DecapsulateKey` (PKCS#11 3.2 §5.18): the member recovers the shared
/// secret in `ciphertext` with the ML-KEM private key and keeps it as a new
/// secret key from `template`.
pub fn decapsulate_key(
    cx: Cx,
    mech: Mechanism,
    private: ck::CK_OBJECT_HANDLE,
    ciphertext: &[u8],
    template: Deferred<Template>,
) -> Result<ck::CK_OBJECT_HANDLE> {
    let Cx { m, s } = cx;
    check_mechanism_for(&s, &mech, Usage::Decapsulate)?;
    let (ouid, info) = key(&m, &s, private)?;
    check_key_for(&mech, &info, Usage::Decapsulate)?;
    if kem_ciphertext_len(info.parameter_set) != Some(ciphertext.len()) {
        return rv(ck::CKR_ENCRYPTED_DATA_LEN_RANGE);
    }
    let (token, template) = secret_key_template(&s, template)?;
    let r = m.call(
        &s.slot,
        Request::DecapsulateKey {
            partition: s.slot.partition.clone(),
            private_key: ouid,
            mechanism: mech,
            ciphertext: ciphertext.to_vec(),
            template,
            op_id: new_op_id(),
        },
    );
    object_created(&m, &s, r, token)
}

/// `C_SeedRandom`: the seed is accepted and not used. Each member's
/// generator is aws-lc's, seeded and reseeded from the operating system;
/// PKCS#11 lets a token ignore application seed material (it cannot be
/// relied on to add entropy, and must not be able to take any away).
pub fn seed_random(cx: Cx, seed: &[u8]) -> Result<()> {
    let _ = (cx, seed);
    Ok(())
}

pub fn generate_random(cx: Cx, len: usize) -> Result<Vec<u8>> {
    let Cx { m, s } = cx;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let n = (len - out.len()).min(RANDOM_CHUNK);
        match m.call(&s.slot, Request::GenerateRandom { len: n as u32 })? {
            Response::Bytes(b) if b.len() == n => out.extend_from_slice(&b),
            _ => return Err(unexpected()),
        }
    }
    Ok(out)
}
