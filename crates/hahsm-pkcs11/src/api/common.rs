//! What the functions share: the library's constants and the padded fields
//! of its descriptions, the shared checks and look-ups.
use crate::decode::Deferred;
use crate::error::{delivers, rv, Error, Result};
use crate::handles::KeyInfo;
use crate::module::{self, Module};
use crate::session::{OpKind, Session, State};
use crate::slots::Slot;
use crate::sync::lock;
use hahsm_proto::client::{AttrResult, Request, Response};
use hahsm_token::mechanism::{self, Usage};
use hahsm_token::{ck, AttrType, Mechanism, Ouid, Template};
use std::sync::Arc;

pub const MANUFACTURER: &str = "hahsm";
pub const LIBRARY_DESCRIPTION: &str = "hahsm PKCS#11 module";
/// `C_GetInfo`'s description when the module's TLS runs on AWS-LC's FIPS
/// module (the build with the `fips` feature).
pub const LIBRARY_DESCRIPTION_FIPS: &str = "hahsm PKCS#11 module (FIPS)";

/// The description `C_GetInfo` gives: whether this module runs AWS-LC's
/// FIPS module. The member's own mode shows in its mechanism list.
pub fn library_description() -> &'static str {
    if hahsm_client::fips_mode() {
        LIBRARY_DESCRIPTION_FIPS
    } else {
        LIBRARY_DESCRIPTION
    }
}
pub(super) const MAX_PIN_LEN: u64 = 64;
pub(super) const MIN_PIN_LEN: u64 = 4;
/// Most objects one search returns.
pub(super) const FIND_LIMIT: u32 = 100_000;
/// For how many of the objects a search finds the member sends their
/// attributes along (it may send fewer).
pub(super) const READ_WITH_FIND: u32 = 32;
/// Most random bytes per request to the member.
pub(super) const RANDOM_CHUNK: usize = 64 * 1024;

/// Copies `text` into a blank-padded PKCS#11 string field.
pub fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [b' '; N];
    let mut n = text.len().min(N);
    // Never cut a UTF-8 character in half.
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out
}

pub(super) fn version() -> ck::CK_VERSION {
    let v = |s: &str| s.parse::<u8>().unwrap_or(0);
    ck::CK_VERSION {
        major: v(env!("CARGO_PKG_VERSION_MAJOR")),
        minor: v(env!("CARGO_PKG_VERSION_MINOR")),
    }
}

pub(super) fn unexpected() -> Error {
    Error::Rv(ck::CKR_DEVICE_ERROR)
}

/// A call on a session that passed the first two checks of PKCS#11 3.0
/// §5.1's order: the module is initialized (`CKR_CRYPTOKI_NOT_INITIALIZED`
/// otherwise) and the handle names an open session
/// (`CKR_SESSION_HANDLE_INVALID`). Every function on a session takes one, and
/// only [`Cx::enter`] makes one, so no function can look at its arguments
/// before those two checks; `ffi`'s entry helpers call it first.
pub struct Cx {
    pub(crate) m: Arc<Module>,
    pub(crate) s: Arc<Session>,
}

impl Cx {
    pub fn enter(h: ck::CK_SESSION_HANDLE) -> Result<Cx> {
        let m = module::get()?;
        let s = m.sessions.get(h)?;
        Ok(Cx { m, s })
    }
}

/// A call on a slot past the same first checks: initialized, then the slot
/// id (`CKR_SLOT_ID_INVALID`).
pub struct SlotCx {
    pub(crate) m: Arc<Module>,
    pub(crate) slot: Arc<Slot>,
}

impl SlotCx {
    pub fn enter(id: ck::CK_SLOT_ID) -> Result<SlotCx> {
        let m = module::get()?;
        let slot = m.slot(id)?;
        Ok(SlotCx { m, slot })
    }
}

/// `CKR_MECHANISM_INVALID` unless the slot's partition offers `mech` and it
/// can do `usage`: the mechanism is checked before the key handle (§5.1).
pub(super) fn check_mechanism_for(s: &Session, mech: &Mechanism, usage: Usage) -> Result<()> {
    if !mechanism::supports(mech.mech, usage) || !offered(&s.slot, mech.mech) {
        return rv(ck::CKR_MECHANISM_INVALID);
    }
    if lock(&s.slot.info).fips && !mechanism::fips_approved_for(mech.mech, usage) {
        return rv(ck::CKR_MECHANISM_INVALID);
    }
    Ok(())
}

/// Whether the slot's partition offers `mech`: a legacy mechanism only when
/// the partition's `allow-legacy-mechanisms` policy is on, and on a member
/// running the FIPS module only what that module approves, as the member
/// last reported it (the member checks again).
pub(super) fn offered(slot: &Slot, mech: u64) -> bool {
    let info = lock(&slot.info);
    (!mechanism::is_legacy(mech) || info.legacy_mechanisms) && (!info.fips || mechanism::fips_approved(mech))
}

pub(super) fn expect(r: Result<Response>, want: Response) -> Result<()> {
    match r? {
        got if got == want => Ok(()),
        _ => Err(unexpected()),
    }
}

/// Token objects can only be written from a read/write session.
pub(super) fn check_writable(s: &Session, token: bool) -> Result<()> {
    if token && !s.rw {
        return rv(ck::CKR_SESSION_READ_ONLY);
    }
    Ok(())
}

/// The login a new object needs (step 5 of §5.1's order, before its
/// template is checked): a private object needs the user's login
/// (`docs/pkcs11.md`, "Public objects and sessions"). The member checks it
/// again.
pub(super) fn check_login_for(s: &Session, template: &Deferred<Template>, class: u64) -> Result<()> {
    if template.private(class) && s.slot.login() != Some(ck::CKU_USER) {
        return rv(ck::CKR_USER_NOT_LOGGED_IN);
    }
    Ok(())
}

/// Maps a new object to its handle; a session object remembers its session.
pub(super) fn new_handle(m: &Module, s: &Session, ouid: Ouid, token: bool) -> ck::CK_OBJECT_HANDLE {
    let h = m.handles.handle_for(s.slot.id, ouid);
    if !token {
        m.handles.set_owner(h, s.handle);
    }
    h
}

pub(super) fn object_created(
    m: &Module,
    s: &Session,
    r: Result<Response>,
    token: bool,
) -> Result<ck::CK_OBJECT_HANDLE> {
    match r? {
        Response::Object(ouid) => Ok(new_handle(m, s, ouid, token)),
        _ => Err(unexpected()),
    }
}

/// Reads attributes of an object; a missing handle is `CKR_OBJECT_HANDLE_INVALID`.
pub(super) fn attributes(
    m: &Module,
    s: &Session,
    ouid: Ouid,
    types: Vec<AttrType>,
) -> Result<Vec<(AttrType, AttrResult)>> {
    match m.call(
        &s.slot,
        Request::GetAttributes {
            partition: s.slot.partition.clone(),
            object: ouid,
            types,
        },
    )? {
        Response::Attributes(a) => Ok(a),
        _ => Err(unexpected()),
    }
}

/// `types` of `ouid` answered from what the session's last find brought
/// (`session::ReadWithFind`), as the member answered for them then: a stored
/// value, or `Invalid` for an attribute the object does not have. `None` when
/// that is stale or did not cover the object, or when a type is a secret
/// component, which only the member answers for.
pub(super) fn found_attributes(
    m: &Module,
    s: &Session,
    ouid: Ouid,
    types: &[AttrType],
) -> Option<Vec<(AttrType, AttrResult)>> {
    let st = lock(&s.state);
    let attrs = st.read_with_find.as_ref()?.of(&ouid, m.changes())?;
    types
        .iter()
        .map(|t| match attrs.get(*t) {
            Some(v) => Some((*t, AttrResult::Value(v.clone()))),
            None if hahsm_token::object::is_secret_component(*t) => None,
            None => Some((*t, AttrResult::Invalid)),
        })
        .collect()
}

pub(super) fn is_token_object(m: &Module, s: &Session, ouid: Ouid, known: Option<KeyInfo>) -> Result<bool> {
    if let Some(k) = known {
        return Ok(k.token);
    }
    let a = attributes(m, s, ouid, vec![ck::CKA_TOKEN])?;
    Ok(matches!(a.first(), Some((_, AttrResult::Value(v))) if v.as_bool() == Some(true)))
}

/// Attributes counted by `C_GetObjectSize`.
pub(super) const SIZED: &[AttrType] = &[
    ck::CKA_CLASS,
    ck::CKA_TOKEN,
    ck::CKA_PRIVATE,
    ck::CKA_LABEL,
    ck::CKA_ID,
    ck::CKA_KEY_TYPE,
    ck::CKA_VALUE,
    ck::CKA_VALUE_LEN,
    ck::CKA_MODULUS,
    ck::CKA_PUBLIC_EXPONENT,
    ck::CKA_EC_PARAMS,
    ck::CKA_EC_POINT,
    ck::CKA_PUBLIC_KEY_INFO,
    ck::CKA_SUBJECT,
    ck::CKA_UNIQUE_ID,
];

pub(super) fn usage_of(kind: OpKind) -> Usage {
    match kind {
        OpKind::Encrypt => Usage::Encrypt,
        OpKind::Decrypt => Usage::Decrypt,
        OpKind::Sign | OpKind::Digest => Usage::Sign,
        OpKind::Verify => Usage::Verify,
    }
}

pub(super) const USAGE_ATTRS: [u64; 9] = [
    ck::CKA_SIGN,
    ck::CKA_VERIFY,
    ck::CKA_ENCRYPT,
    ck::CKA_DECRYPT,
    ck::CKA_WRAP,
    ck::CKA_UNWRAP,
    ck::CKA_DERIVE,
    ck::CKA_ENCAPSULATE,
    ck::CKA_DECAPSULATE,
];

/// The key behind a handle and what the module knows of it, read from the
/// member on first use.
pub(super) fn key(m: &Module, s: &Session, handle: ck::CK_OBJECT_HANDLE) -> Result<(Ouid, KeyInfo)> {
    let (ouid, known) = m
        .handles
        .object(s.slot.id, handle)
        .map_err(|_| Error::Rv(ck::CKR_KEY_HANDLE_INVALID))?;
    if let Some(k) = known {
        return Ok((ouid, k));
    }
    let mut types = vec![
        ck::CKA_CLASS,
        ck::CKA_KEY_TYPE,
        ck::CKA_TOKEN,
        ck::CKA_ALWAYS_AUTHENTICATE,
        ck::CKA_PARAMETER_SET,
    ];
    types.extend(USAGE_ATTRS);
    let got = match found_attributes(m, s, ouid, &types) {
        Some(got) => got,
        None => attributes(m, s, ouid, types).map_err(|e| match e.rv() {
            ck::CKR_OBJECT_HANDLE_INVALID => Error::Rv(ck::CKR_KEY_HANDLE_INVALID),
            _ => e,
        })?,
    };
    let value = |attr: u64| {
        got.iter().find_map(|(a, r)| match r {
            AttrResult::Value(v) if *a == attr => Some(v.clone()),
            _ => None,
        })
    };
    let ulong = |attr| value(attr).and_then(|v| v.as_ulong());
    let flag = |attr| value(attr).and_then(|v| v.as_bool()).unwrap_or(false);
    let class = ulong(ck::CKA_CLASS).unwrap_or(ck::CKO_DATA);
    if !matches!(
        class,
        ck::CKO_PUBLIC_KEY | ck::CKO_PRIVATE_KEY | ck::CKO_SECRET_KEY
    ) {
        return rv(ck::CKR_KEY_HANDLE_INVALID);
    }
    let info = KeyInfo {
        class,
        key_type: ulong(ck::CKA_KEY_TYPE).unwrap_or(ck::CK_UNAVAILABLE_INFORMATION),
        token: flag(ck::CKA_TOKEN),
        always_authenticate: flag(ck::CKA_ALWAYS_AUTHENTICATE),
        usages: USAGE_ATTRS.map(|a| (a, flag(a))),
        parameter_set: ulong(ck::CKA_PARAMETER_SET).unwrap_or(0),
    };
    m.handles.set_key_info(handle, Some(info));
    Ok((ouid, info))
}

/// Checks that `mech` can do `usage` with this key: `CKR_MECHANISM_INVALID`,
/// `CKR_KEY_TYPE_INCONSISTENT` or `CKR_KEY_FUNCTION_NOT_PERMITTED` otherwise.
pub(super) fn check_key_for(mech: &Mechanism, info: &KeyInfo, usage: Usage) -> Result<()> {
    if !mechanism::supports(mech.mech, usage) {
        return rv(ck::CKR_MECHANISM_INVALID);
    }
    if mechanism::key_type_for(mech.mech) != Some(info.key_type) {
        if crate::log::debug_enabled() {
            crate::log::debug(&format!(
                "mechanism {:#x} needs another key type than {:#x} (class {:#x})",
                mech.mech, info.key_type, info.class
            ));
        }
        return rv(ck::CKR_KEY_TYPE_INCONSISTENT);
    }
    if !info.allows(usage.attribute()) {
        return rv(ck::CKR_KEY_FUNCTION_NOT_PERMITTED);
    }
    Ok(())
}

pub(super) fn op_request(
    s: &Session,
    kind: OpKind,
    op_mech: Mechanism,
    key: Option<Ouid>,
    data: Vec<u8>,
) -> Request {
    let partition = s.slot.partition.clone();
    let key = key.unwrap_or(Ouid([0; 16]));
    match kind {
        OpKind::Encrypt => Request::Encrypt {
            partition,
            key,
            mechanism: op_mech,
            data,
        },
        OpKind::Decrypt => Request::Decrypt {
            partition,
            key,
            mechanism: op_mech,
            data,
        },
        OpKind::Sign => Request::Sign {
            partition,
            key,
            mechanism: op_mech,
            data,
        },
        OpKind::Digest | OpKind::Verify => Request::Digest {
            partition,
            mechanism: op_mech,
            data,
        },
    }
}

/// Delivers an operation's output under the buffer convention, ending the
/// operation when the output was taken.
pub(super) fn deliver(
    st: &mut State,
    kind: OpKind,
    out: Vec<u8>,
    capacity: Option<usize>,
) -> Result<Vec<u8>> {
    if delivers(capacity, out.len())? {
        st.end(kind);
    }
    Ok(out)
}

/// Whether the session's partition offers `mech` with this `CKF_*` capability.
pub(super) fn mech_has_flag(s: &Session, mech: u64, flag: u64) -> bool {
    mechanism::info(mech).is_some_and(|i| i.flags & flag != 0) && offered(&s.slot, mech)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_fields_are_blank_filled_and_cut_on_char_boundaries() {
        let f: [u8; 8] = padded("ab");
        assert_eq!(&f, b"ab      ");
        let g: [u8; 3] = padded("aé!");
        assert_eq!(&g, b"a\xc3\xa9");
        let h: [u8; 2] = padded("aé");
        assert_eq!(&h, b"a ");
    }
}
