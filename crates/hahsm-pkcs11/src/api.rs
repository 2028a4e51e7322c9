//! The safe half of every `C_*` function: plain Rust over decoded arguments,
//! returning `Result`. The `ffi` module's shims check pointers, call these,
//! and turn the error into a `CK_RV` in one place.
//!
//! Section numbers refer to the PKCS#11 3.0 base specification.
use crate::error::{delivers, rv, Error, Result};
use crate::handles::KeyInfo;
use crate::module::{self, Module};
use crate::session::{Find, Op, OpKind, PendingWrap, Session, State, MAX_BUFFERED};
use crate::sync::lock;
use hahsm_client::connection::new_op_id;
use hahsm_proto::client::{AttrResult, Request, Response};
use hahsm_proto::Secret;
use hahsm_token::mechanism::{self, Usage};
use hahsm_token::{ck, AttrType, Mechanism, Ouid, Template};
use std::sync::Arc;

pub const MANUFACTURER: &str = "hahsm";
pub const LIBRARY_DESCRIPTION: &str = "hahsm PKCS#11 module";
const MAX_PIN_LEN: u64 = 64;
const MIN_PIN_LEN: u64 = 4;
/// Most objects one search returns.
const FIND_LIMIT: u32 = 100_000;
/// Most random bytes per request to the member.
const RANDOM_CHUNK: usize = 64 * 1024;

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

fn version() -> ck::CK_VERSION {
    let v = |s: &str| s.parse::<u8>().unwrap_or(0);
    ck::CK_VERSION {
        major: v(env!("CARGO_PKG_VERSION_MAJOR")),
        minor: v(env!("CARGO_PKG_VERSION_MINOR")),
    }
}

fn unexpected() -> Error {
    Error::Rv(ck::CKR_DEVICE_ERROR)
}

// -------------------------------------------------- general (§5.4) --

pub fn info() -> Result<ck::CK_INFO> {
    module::get()?;
    Ok(ck::CK_INFO {
        cryptokiVersion: ck::CK_VERSION { major: 3, minor: 0 },
        manufacturerID: padded(MANUFACTURER),
        flags: 0,
        libraryDescription: padded(LIBRARY_DESCRIPTION),
        libraryVersion: version(),
    })
}

// -------------------------------------------- slots and tokens (§5.5) --

pub fn slot_list(token_present: bool) -> Result<Vec<ck::CK_SLOT_ID>> {
    let m = module::get()?;
    m.refresh_slots();
    Ok(m.slots()
        .iter()
        .filter(|s| !token_present || lock(&s.info).activated)
        .map(|s| s.id)
        .collect())
}

pub fn slot_info(id: ck::CK_SLOT_ID) -> Result<ck::CK_SLOT_INFO> {
    let m = module::get()?;
    let slot = m.slot(id)?;
    let present = lock(&slot.info).activated;
    Ok(ck::CK_SLOT_INFO {
        slotDescription: padded(&match &slot.ha {
            Some(g) => format!("hahsm HA group {} partition {}", g.label, slot.partition),
            None => format!("hahsm {} partition {}", slot.server.entry.name, slot.partition),
        }),
        manufacturerID: padded(MANUFACTURER),
        flags: ck::CKF_HW_SLOT | ck::CKF_REMOVABLE_DEVICE | if present { ck::CKF_TOKEN_PRESENT } else { 0 },
        hardwareVersion: version(),
        firmwareVersion: version(),
    })
}

pub fn token_info(id: ck::CK_SLOT_ID) -> Result<ck::CK_TOKEN_INFO> {
    let m = module::get()?;
    let slot = m.slot(id)?;
    let info = m.refresh_info(&slot);
    if !info.activated {
        return rv(ck::CKR_TOKEN_NOT_PRESENT);
    }
    let sessions = m.sessions.of_slot(id);
    let rw = sessions.iter().filter(|s| s.rw).count() as u64;
    let mut flags =
        ck::CKF_RNG | ck::CKF_LOGIN_REQUIRED | ck::CKF_USER_PIN_INITIALIZED | ck::CKF_TOKEN_INITIALIZED;
    if info.pin_locked {
        flags |= ck::CKF_USER_PIN_LOCKED;
    }
    Ok(ck::CK_TOKEN_INFO {
        label: padded(slot.label()),
        manufacturerID: padded(MANUFACTURER),
        model: padded(if slot.ha.is_some() {
            "hahsm HA group"
        } else {
            "hahsmd partition"
        }),
        serialNumber: padded(&format!("{:016x}", slot.serial)),
        flags,
        ulMaxSessionCount: ck::CK_EFFECTIVELY_INFINITE,
        ulSessionCount: sessions.len() as u64,
        ulMaxRwSessionCount: ck::CK_EFFECTIVELY_INFINITE,
        ulRwSessionCount: rw,
        ulMaxPinLen: MAX_PIN_LEN,
        ulMinPinLen: MIN_PIN_LEN,
        ulTotalPublicMemory: ck::CK_UNAVAILABLE_INFORMATION,
        ulFreePublicMemory: ck::CK_UNAVAILABLE_INFORMATION,
        ulTotalPrivateMemory: ck::CK_UNAVAILABLE_INFORMATION,
        ulFreePrivateMemory: ck::CK_UNAVAILABLE_INFORMATION,
        hardwareVersion: version(),
        firmwareVersion: version(),
        utcTime: [b' '; 16],
    })
}

pub fn mechanism_list(id: ck::CK_SLOT_ID) -> Result<Vec<ck::CK_MECHANISM_TYPE>> {
    module::get()?.slot(id)?;
    Ok(mechanism::supported().iter().map(|(m, _)| *m).collect())
}

pub fn mechanism_info(id: ck::CK_SLOT_ID, mech: ck::CK_MECHANISM_TYPE) -> Result<ck::CK_MECHANISM_INFO> {
    module::get()?.slot(id)?;
    let i = mechanism::info(mech).ok_or(Error::Rv(ck::CKR_MECHANISM_INVALID))?;
    Ok(ck::CK_MECHANISM_INFO {
        ulMinKeySize: i.min_key,
        ulMaxKeySize: i.max_key,
        flags: i.flags,
    })
}

/// `C_InitToken`: partitions are created and cleared by the appliance's
/// administrator (`hahsm appliance partition …`), who holds the owner secret;
/// an application cannot re-initialize one.
pub fn init_token(id: ck::CK_SLOT_ID) -> Result<()> {
    module::get()?.slot(id)?;
    crate::log::warn("C_InitToken: partitions are initialized by the appliance administrator");
    rv(ck::CKR_FUNCTION_NOT_SUPPORTED)
}

pub fn init_pin(h: ck::CK_SESSION_HANDLE, pin: &[u8]) -> Result<()> {
    let (m, s) = session(h)?;
    if s.slot.login() != Some(ck::CKU_SO) {
        return rv(ck::CKR_USER_NOT_LOGGED_IN);
    }
    expect(
        m.call(
            &s.slot,
            Request::InitPin {
                partition: s.slot.partition.clone(),
                new_pin: Secret::new(pin.to_vec()),
                op_id: new_op_id(),
            },
        ),
        Response::Done,
    )
}

pub fn set_pin(h: ck::CK_SESSION_HANDLE, old: &[u8], new: &[u8]) -> Result<()> {
    let (m, s) = session(h)?;
    if !s.rw {
        return rv(ck::CKR_SESSION_READ_ONLY);
    }
    expect(
        m.call(
            &s.slot,
            Request::SetPin {
                partition: s.slot.partition.clone(),
                old_pin: Secret::new(old.to_vec()),
                new_pin: Secret::new(new.to_vec()),
                op_id: new_op_id(),
            },
        ),
        Response::Done,
    )?;
    m.pin_changed(&s.slot, Secret::new(new.to_vec()));
    Ok(())
}

// ----------------------------------------------------- sessions (§5.6) --

fn session(h: ck::CK_SESSION_HANDLE) -> Result<(Arc<Module>, Arc<Session>)> {
    let m = module::get()?;
    let s = m.sessions.get(h)?;
    Ok((m, s))
}

fn expect(r: Result<Response>, want: Response) -> Result<()> {
    match r? {
        got if got == want => Ok(()),
        _ => Err(unexpected()),
    }
}

pub fn open_session(id: ck::CK_SLOT_ID, flags: ck::CK_FLAGS) -> Result<ck::CK_SESSION_HANDLE> {
    let m = module::get()?;
    let slot = m.slot(id)?;
    if flags & ck::CKF_SERIAL_SESSION == 0 {
        return rv(ck::CKR_SESSION_PARALLEL_NOT_SUPPORTED);
    }
    if !lock(&slot.info).activated {
        return rv(ck::CKR_TOKEN_NOT_PRESENT);
    }
    let rw = flags & ck::CKF_RW_SESSION != 0;
    if !rw && slot.login() == Some(ck::CKU_SO) {
        return rv(ck::CKR_SESSION_READ_WRITE_SO_EXISTS);
    }
    Ok(m.sessions.add(|handle| Session {
        handle,
        slot,
        rw,
        state: Default::default(),
    }))
}

pub fn close_session(h: ck::CK_SESSION_HANDLE) -> Result<()> {
    let m = module::get()?;
    let s = m.sessions.remove(h)?;
    // Session objects die with the session that made them (§4.4), logged
    // in or not, destroyable or not.
    let owned = m.handles.owned_by(h);
    m.release_session_objects(&s.slot, owned.iter().map(|(_, o)| *o).collect());
    for (handle, _) in owned {
        m.handles.forget(handle);
    }
    // Closing the token's last session logs the application out (§5.6).
    if m.sessions.of_slot(s.slot.id).is_empty() && s.slot.login().is_some() {
        let _ = m.logout(&s.slot);
    }
    Ok(())
}

pub fn close_all_sessions(id: ck::CK_SLOT_ID) -> Result<()> {
    let m = module::get()?;
    m.slot(id)?;
    for s in m.sessions.of_slot(id) {
        let _ = close_session(s.handle);
    }
    Ok(())
}

pub fn session_info(h: ck::CK_SESSION_HANDLE) -> Result<ck::CK_SESSION_INFO> {
    let (_, s) = session(h)?;
    Ok(ck::CK_SESSION_INFO {
        slotID: s.slot.id,
        state: s.ck_state(),
        flags: ck::CKF_SERIAL_SESSION | if s.rw { ck::CKF_RW_SESSION } else { 0 },
        ulDeviceError: 0,
    })
}

pub fn login(h: ck::CK_SESSION_HANDLE, user_type: ck::CK_USER_TYPE, pin: &[u8]) -> Result<()> {
    let (m, s) = session(h)?;
    let slot = &s.slot;
    let wire_pin = Secret::new(pin.to_vec());
    match user_type {
        ck::CKU_CONTEXT_SPECIFIC => {
            if slot.login() != Some(ck::CKU_USER) {
                return rv(ck::CKR_USER_NOT_LOGGED_IN);
            }
            // Any member can check the PIN (they share it); in an HA slot the
            // operation that follows may then run on any member.
            if lock(&s.state).any_key_op().is_none() {
                return rv(ck::CKR_OPERATION_NOT_INITIALIZED);
            }
            expect(
                m.call(
                    slot,
                    Request::Login {
                        partition: slot.partition.clone(),
                        user_type: hahsm_proto::client::USER_CONTEXT_SPECIFIC,
                        pin: wire_pin,
                    },
                ),
                Response::Done,
            )?;
            if let Some(op) = lock(&s.state).any_key_op() {
                op.context_login_done = true;
            }
            Ok(())
        }
        ck::CKU_USER | ck::CKU_SO => {
            match slot.login() {
                Some(u) if u == user_type => return rv(ck::CKR_USER_ALREADY_LOGGED_IN),
                Some(_) => return rv(ck::CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
                None => {}
            }
            if user_type == ck::CKU_SO && m.sessions.of_slot(slot.id).iter().any(|s| !s.rw) {
                return rv(ck::CKR_SESSION_READ_ONLY_EXISTS);
            }
            m.login(slot, user_type, wire_pin)
        }
        _ => rv(ck::CKR_USER_TYPE_INVALID),
    }
}

pub fn logout(h: ck::CK_SESSION_HANDLE) -> Result<()> {
    let (m, s) = session(h)?;
    m.logout(&s.slot)
}

/// `C_SessionCancel` (§5.6, 3.0): ends the operations `flags` names.
pub fn session_cancel(h: ck::CK_SESSION_HANDLE, flags: ck::CK_FLAGS) -> Result<()> {
    let (_, s) = session(h)?;
    let mut st = lock(&s.state);
    for kind in OpKind::ALL {
        if flags & kind.cancel_flag() != 0 {
            st.end(kind);
        }
    }
    if flags & ck::CKF_FIND_OBJECTS != 0 {
        st.find = None;
    }
    if flags & ck::CKF_WRAP != 0 {
        st.pending_wrap = None;
    }
    Ok(())
}

// ---------------------------------------------- object management (§5.7) --

/// Token objects can only be written from a read/write session.
fn check_writable(s: &Session, token: bool) -> Result<()> {
    if token && !s.rw {
        return rv(ck::CKR_SESSION_READ_ONLY);
    }
    Ok(())
}

/// Maps a new object to its handle; a session object remembers its session.
fn new_handle(m: &Module, s: &Session, ouid: Ouid, token: bool) -> ck::CK_OBJECT_HANDLE {
    let h = m.handles.handle_for(s.slot.id, ouid);
    if !token {
        m.handles.set_owner(h, s.handle);
    }
    h
}

fn object_created(m: &Module, s: &Session, r: Result<Response>, token: bool) -> Result<ck::CK_OBJECT_HANDLE> {
    match r? {
        Response::Object(ouid) => Ok(new_handle(m, s, ouid, token)),
        _ => Err(unexpected()),
    }
}

pub fn create_object(h: ck::CK_SESSION_HANDLE, template: Template) -> Result<ck::CK_OBJECT_HANDLE> {
    let (m, s) = session(h)?;
    let token = template.flag(ck::CKA_TOKEN, false);
    check_writable(&s, token)?;
    let r = m.call(
        &s.slot,
        Request::CreateObject {
            partition: s.slot.partition.clone(),
            template,
            op_id: new_op_id(),
        },
    );
    object_created(&m, &s, r, token)
}

/// Reads attributes of an object; a missing handle is `CKR_OBJECT_HANDLE_INVALID`.
fn attributes(
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

fn is_token_object(m: &Module, s: &Session, ouid: Ouid, known: Option<KeyInfo>) -> Result<bool> {
    if let Some(k) = known {
        return Ok(k.token);
    }
    let a = attributes(m, s, ouid, vec![ck::CKA_TOKEN])?;
    Ok(matches!(a.first(), Some((_, AttrResult::Value(v))) if v.as_bool() == Some(true)))
}

pub fn copy_object(
    h: ck::CK_SESSION_HANDLE,
    object: ck::CK_OBJECT_HANDLE,
    template: Template,
) -> Result<ck::CK_OBJECT_HANDLE> {
    let (m, s) = session(h)?;
    let (ouid, known) = m.handles.object(s.slot.id, object)?;
    let token = match template.bool(ck::CKA_TOKEN) {
        Some(t) => t,
        None => is_token_object(&m, &s, ouid, known)?,
    };
    check_writable(&s, token)?;
    let r = m.call(
        &s.slot,
        Request::CopyObject {
            partition: s.slot.partition.clone(),
            object: ouid,
            template,
            op_id: new_op_id(),
        },
    );
    object_created(&m, &s, r, token)
}

pub fn destroy_object(h: ck::CK_SESSION_HANDLE, object: ck::CK_OBJECT_HANDLE) -> Result<()> {
    let (m, s) = session(h)?;
    let (ouid, known) = m.handles.object(s.slot.id, object)?;
    check_writable(&s, is_token_object(&m, &s, ouid, known)?)?;
    expect(
        m.call(
            &s.slot,
            Request::DestroyObject {
                partition: s.slot.partition.clone(),
                object: ouid,
                op_id: new_op_id(),
            },
        ),
        Response::Done,
    )?;
    m.handles.forget(object);
    Ok(())
}

/// Attributes counted by `C_GetObjectSize`.
const SIZED: &[AttrType] = &[
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

/// `C_GetObjectSize`: the size of the object's readable attributes, an
/// approximation the specification allows (§5.7).
pub fn object_size(h: ck::CK_SESSION_HANDLE, object: ck::CK_OBJECT_HANDLE) -> Result<u64> {
    let (m, s) = session(h)?;
    let (ouid, _) = m.handles.object(s.slot.id, object)?;
    let attrs = attributes(&m, &s, ouid, SIZED.to_vec())?;
    Ok(attrs
        .iter()
        .map(|(_, r)| match r {
            AttrResult::Value(v) => v.to_raw().len() as u64 + 16,
            _ => 0,
        })
        .sum())
}

pub fn get_attributes(
    h: ck::CK_SESSION_HANDLE,
    object: ck::CK_OBJECT_HANDLE,
    types: Vec<AttrType>,
) -> Result<Vec<AttrResult>> {
    let (m, s) = session(h)?;
    let (ouid, _) = m.handles.object(s.slot.id, object)?;
    let n = types.len();
    let got = attributes(&m, &s, ouid, types.clone())?;
    // Answer in the caller's order, whatever the member's.
    let out: Vec<AttrResult> = types
        .iter()
        .map(|t| {
            got.iter()
                .find(|(a, _)| a == t)
                .map(|(_, r)| r.clone())
                .unwrap_or(AttrResult::Invalid)
        })
        .collect();
    debug_assert_eq!(out.len(), n);
    Ok(out)
}

pub fn set_attributes(
    h: ck::CK_SESSION_HANDLE,
    object: ck::CK_OBJECT_HANDLE,
    template: Template,
) -> Result<()> {
    let (m, s) = session(h)?;
    let (ouid, known) = m.handles.object(s.slot.id, object)?;
    check_writable(&s, is_token_object(&m, &s, ouid, known)?)?;
    let r = m.call(
        &s.slot,
        Request::SetAttributes {
            partition: s.slot.partition.clone(),
            object: ouid,
            template,
            op_id: new_op_id(),
        },
    );
    // Usage flags may have changed: read them again at the next use.
    m.handles.set_key_info(object, None);
    expect(r, Response::Done)
}

/// `C_FindObjectsInit`; `None` is a template naming an attribute hahsm does
/// not know, which matches nothing.
pub fn find_init(h: ck::CK_SESSION_HANDLE, template: Option<Template>) -> Result<()> {
    let (m, s) = session(h)?;
    if lock(&s.state).find.is_some() {
        return rv(ck::CKR_OPERATION_ACTIVE);
    }
    let found = match template {
        None => Vec::new(),
        Some(template) => match m.call(
            &s.slot,
            Request::FindObjects {
                partition: s.slot.partition.clone(),
                template,
                limit: FIND_LIMIT,
            },
        )? {
            Response::Objects(o) => o,
            _ => return Err(unexpected()),
        },
    };
    lock(&s.state).find = Some(Find { found, next: 0 });
    Ok(())
}

pub fn find(h: ck::CK_SESSION_HANDLE, max: usize) -> Result<Vec<ck::CK_OBJECT_HANDLE>> {
    let (m, s) = session(h)?;
    let page: Vec<Ouid> = {
        let mut st = lock(&s.state);
        let f = st
            .find
            .as_mut()
            .ok_or(Error::Rv(ck::CKR_OPERATION_NOT_INITIALIZED))?;
        let end = f.found.len().min(f.next.saturating_add(max));
        let page = f.found[f.next..end].to_vec();
        f.next = end;
        page
    };
    Ok(page
        .into_iter()
        .map(|o| m.handles.handle_for(s.slot.id, o))
        .collect())
}

pub fn find_final(h: ck::CK_SESSION_HANDLE) -> Result<()> {
    let (_, s) = session(h)?;
    let found = lock(&s.state).find.take();
    found
        .map(|_| ())
        .ok_or(Error::Rv(ck::CKR_OPERATION_NOT_INITIALIZED))
}

// ------------------------------- encrypt, decrypt, digest, sign, verify --

fn usage_of(kind: OpKind) -> Usage {
    match kind {
        OpKind::Encrypt => Usage::Encrypt,
        OpKind::Decrypt => Usage::Decrypt,
        OpKind::Sign | OpKind::Digest => Usage::Sign,
        OpKind::Verify => Usage::Verify,
    }
}

const USAGE_ATTRS: [u64; 7] = [
    ck::CKA_SIGN,
    ck::CKA_VERIFY,
    ck::CKA_ENCRYPT,
    ck::CKA_DECRYPT,
    ck::CKA_WRAP,
    ck::CKA_UNWRAP,
    ck::CKA_DERIVE,
];

/// The key behind a handle and what the module knows of it, read from the
/// member on first use.
fn key(m: &Module, s: &Session, handle: ck::CK_OBJECT_HANDLE) -> Result<(Ouid, KeyInfo)> {
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
    ];
    types.extend(USAGE_ATTRS);
    let got = attributes(m, s, ouid, types).map_err(|e| match e.rv() {
        ck::CKR_OBJECT_HANDLE_INVALID => Error::Rv(ck::CKR_KEY_HANDLE_INVALID),
        _ => e,
    })?;
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
    };
    m.handles.set_key_info(handle, Some(info));
    Ok((ouid, info))
}

/// Checks that `mech` can do `usage` with this key: `CKR_MECHANISM_INVALID`,
/// `CKR_KEY_TYPE_INCONSISTENT` or `CKR_KEY_FUNCTION_NOT_PERMITTED` otherwise.
fn check_key_for(mech: &Mechanism, info: &KeyInfo, usage: Usage) -> Result<()> {
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

/// `C_EncryptInit`, `C_DecryptInit`, `C_DigestInit`, `C_SignInit`, `C_VerifyInit`.
pub fn op_init(
    h: ck::CK_SESSION_HANDLE,
    kind: OpKind,
    mech: Mechanism,
    key_handle: Option<ck::CK_OBJECT_HANDLE>,
) -> Result<()> {
    let (m, s) = session(h)?;
    if lock(&s.state).has(kind) {
        return rv(ck::CKR_OPERATION_ACTIVE);
    }
    let op = match (kind, key_handle) {
        (OpKind::Digest, _) => {
            if !mech_has_flag(mech.mech, ck::CKF_DIGEST) {
                return rv(ck::CKR_MECHANISM_INVALID);
            }
            Op {
                stateless: true,
                ..Op::new(mech, None, false)
            }
        }
        (_, Some(kh)) => {
            let (ouid, info) = key(&m, &s, kh)?;
            check_key_for(&mech, &info, usage_of(kind))?;
            Op {
                stateless: info.token && !info.always_authenticate,
                ..Op::new(mech, Some(ouid), info.always_authenticate)
            }
        }
        (_, None) => return rv(ck::CKR_KEY_HANDLE_INVALID),
    };
    let mut st = lock(&s.state);
    if st.has(kind) {
        return rv(ck::CKR_OPERATION_ACTIVE);
    }
    st.set(kind, op);
    Ok(())
}

/// Ends an operation (a NULL mechanism to `C_*Init`, PKCS#11 3.0 §5.2).
pub fn op_cancel(h: ck::CK_SESSION_HANDLE, kind: OpKind) -> Result<()> {
    let (_, s) = session(h)?;
    lock(&s.state).end(kind);
    Ok(())
}

fn op_request(s: &Session, kind: OpKind, op_mech: Mechanism, key: Option<Ouid>, data: Vec<u8>) -> Request {
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
            mechanism: op_mech,
            data,
        },
    }
}

/// Delivers an operation's output under the buffer convention, ending the
/// operation when the output was taken.
fn deliver(st: &mut State, kind: OpKind, out: Vec<u8>, capacity: Option<usize>) -> Result<Vec<u8>> {
    if delivers(capacity, out.len())? {
        st.end(kind);
    }
    Ok(out)
}

/// The input of a producing operation: single-part data, or what `C_*Update` gathered.
pub enum Input<'a> {
    Single(&'a [u8]),
    Final,
}

/// `C_Encrypt`, `C_Decrypt`, `C_Digest`, `C_Sign` and their `C_*Final`.
pub fn produce(
    h: ck::CK_SESSION_HANDLE,
    kind: OpKind,
    input: Input<'_>,
    capacity: Option<usize>,
) -> Result<Vec<u8>> {
    let (m, s) = session(h)?;
    let (data, mech, key, stateless) = {
        let mut st = lock(&s.state);
        let op = st.op(kind).ok_or(Error::Rv(ck::CKR_OPERATION_NOT_INITIALIZED))?;
        let data = match input {
            Input::Single(_) if op.multipart => return rv(ck::CKR_OPERATION_ACTIVE),
            Input::Single(d) => d.to_vec(),
            Input::Final => op.buffer.clone(),
        };
        if op.always_authenticate && !op.context_login_done {
            st.end(kind);
            return rv(ck::CKR_USER_NOT_LOGGED_IN);
        }
        if let Some((i, o)) = &op.cached {
            if *i == data {
                let out = o.clone();
                return deliver(&mut st, kind, out, capacity);
            }
        }
        (data, op.mech.clone(), op.key, op.stateless)
    };
    let request = op_request(&s, kind, mech, key, data.clone());
    let result = if stateless {
        m.call_stateless(&s.slot, request)
    } else {
        m.call(&s.slot, request)
    };
    let mut st = lock(&s.state);
    match result {
        Ok(Response::Bytes(out)) => {
            if let Some(op) = st.op(kind) {
                op.cached = Some((data, out.clone()));
            }
            deliver(&mut st, kind, out, capacity)
        }
        Ok(_) => {
            st.end(kind);
            Err(unexpected())
        }
        Err(e) => {
            st.end(kind);
            Err(e)
        }
    }
}

/// `C_*Update`: gathers input for the request sent at `C_*Final`.
pub fn update(h: ck::CK_SESSION_HANDLE, kind: OpKind, data: &[u8]) -> Result<()> {
    let (_, s) = session(h)?;
    let mut st = lock(&s.state);
    let op = st.op(kind).ok_or(Error::Rv(ck::CKR_OPERATION_NOT_INITIALIZED))?;
    if op.buffer.len() + data.len() > MAX_BUFFERED {
        st.end(kind);
        return rv(ck::CKR_DATA_LEN_RANGE);
    }
    op.multipart = true;
    op.buffer.extend_from_slice(data);
    Ok(())
}

/// A length query on `C_*Update`: the operation must be active; nothing is consumed.
pub fn update_check(h: ck::CK_SESSION_HANDLE, kind: OpKind) -> Result<()> {
    let (_, s) = session(h)?;
    let mut st = lock(&s.state);
    st.op(kind)
        .map(|_| ())
        .ok_or(Error::Rv(ck::CKR_OPERATION_NOT_INITIALIZED))
}

/// `C_Verify` and `C_VerifyFinal`. The operation ends either way.
pub fn verify(h: ck::CK_SESSION_HANDLE, input: Input<'_>, signature: &[u8]) -> Result<()> {
    let (m, s) = session(h)?;
    let (data, mech, key, stateless) = {
        let mut st = lock(&s.state);
        let op = st
            .op(OpKind::Verify)
            .ok_or(Error::Rv(ck::CKR_OPERATION_NOT_INITIALIZED))?;
        let data = match input {
            Input::Single(_) if op.multipart => return rv(ck::CKR_OPERATION_ACTIVE),
            Input::Single(d) => d.to_vec(),
            Input::Final => std::mem::take(&mut op.buffer),
        };
        let r = (
            data,
            op.mech.clone(),
            op.key.unwrap_or(Ouid([0; 16])),
            op.stateless,
        );
        st.end(OpKind::Verify);
        r
    };
    let request = Request::Verify {
        partition: s.slot.partition.clone(),
        key,
        mechanism: mech,
        data,
        signature: signature.to_vec(),
    };
    let result = if stateless {
        m.call_stateless(&s.slot, request)
    } else {
        m.call(&s.slot, request)
    };
    expect(result, Response::Verified)
}

// ------------------------------------------------------ key management --

/// Whether hahsm offers `mech` with this `CKF_*` capability.
fn mech_has_flag(mech: u64, flag: u64) -> bool {
    mechanism::info(mech).is_some_and(|i| i.flags & flag != 0)
}

pub fn generate_key(
    h: ck::CK_SESSION_HANDLE,
    mech: Mechanism,
    template: Template,
) -> Result<ck::CK_OBJECT_HANDLE> {
    let (m, s) = session(h)?;
    if !mech_has_flag(mech.mech, ck::CKF_GENERATE) {
        return rv(ck::CKR_MECHANISM_INVALID);
    }
    let token = template.flag(ck::CKA_TOKEN, false);
    check_writable(&s, token)?;
    let r = m.call(
        &s.slot,
        Request::GenerateKey {
            partition: s.slot.partition.clone(),
            mechanism: mech,
            template,
            op_id: new_op_id(),
        },
    );
    object_created(&m, &s, r, token)
}

pub fn generate_key_pair(
    h: ck::CK_SESSION_HANDLE,
    mech: Mechanism,
    public: Template,
    private: Template,
) -> Result<(ck::CK_OBJECT_HANDLE, ck::CK_OBJECT_HANDLE)> {
    let (m, s) = session(h)?;
    if !mech_has_flag(mech.mech, ck::CKF_GENERATE_KEY_PAIR) {
        return rv(ck::CKR_MECHANISM_INVALID);
    }

    let (pub_token, priv_token) = (
        public.flag(ck::CKA_TOKEN, false),
        private.flag(ck::CKA_TOKEN, false),
    );
    check_writable(&s, pub_token || priv_token)?;
    match m.call(
        &s.slot,
        Request::GenerateKeyPair {
            partition: s.slot.partition.clone(),
            mechanism: mech,
            public_template: public,
            private_template: private,
            op_id: new_op_id(),
        },
    )? {
        Response::KeyPair { public, private } => Ok((
            new_handle(&m, &s, public, pub_token),
            new_handle(&m, &s, private, priv_token),
        )),
        _ => Err(unexpected()),
    }
}

pub fn wrap_key(
    h: ck::CK_SESSION_HANDLE,
    mech: Mechanism,
    wrapping: ck::CK_OBJECT_HANDLE,
    target: ck::CK_OBJECT_HANDLE,
    capacity: Option<usize>,
) -> Result<Vec<u8>> {
    let (m, s) = session(h)?;
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
    h: ck::CK_SESSION_HANDLE,
    mech: Mechanism,
    unwrapping: ck::CK_OBJECT_HANDLE,
    wrapped: &[u8],
    template: Template,
) -> Result<ck::CK_OBJECT_HANDLE> {
    let (m, s) = session(h)?;
    let (ouid, info) = key(&m, &s, unwrapping).map_err(|e| match e.rv() {
        ck::CKR_KEY_HANDLE_INVALID => Error::Rv(ck::CKR_UNWRAPPING_KEY_HANDLE_INVALID),
        _ => e,
    })?;
    check_key_for(&mech, &info, Usage::Unwrap).map_err(|e| match e.rv() {
        ck::CKR_KEY_TYPE_INCONSISTENT => Error::Rv(ck::CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT),
        _ => e,
    })?;
    let token = template.flag(ck::CKA_TOKEN, false);
    check_writable(&s, token)?;
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
    h: ck::CK_SESSION_HANDLE,
    mech: Mechanism,
    base: ck::CK_OBJECT_HANDLE,
    template: Template,
) -> Result<ck::CK_OBJECT_HANDLE> {
    let (m, s) = session(h)?;
    let (ouid, info) = key(&m, &s, base)?;
    check_key_for(&mech, &info, Usage::Derive)?;
    let token = template.flag(ck::CKA_TOKEN, false);
    check_writable(&s, token)?;
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

pub fn generate_random(h: ck::CK_SESSION_HANDLE, len: usize) -> Result<Vec<u8>> {
    let (m, s) = session(h)?;
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
