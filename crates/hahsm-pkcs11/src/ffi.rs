//! The C ABI: every `C_*` function of PKCS#11 3.2, and the function lists and
//! interfaces that hand them out (3.2 first, then 3.0 and 2.40 for
//! applications that ask for those by version).
//!
//! Each shim is short: it takes its pointer and length checks from [`crate::ptr`],
//! calls a safe function in [`crate::api`], and lets [`ptr::guard`] turn the
//! result into a `CK_RV` (catching any panic as `CKR_GENERAL_ERROR`). Section
//! numbers refer to the PKCS#11 3.0 base specification.
//!
//! The contract of every function here is the PKCS#11 one: pointers are NULL
//! or valid for the lengths passed with them.
//!
//! Every function enters through one of the helpers below ([`enter`],
//! [`enter_slot`], [`enter_session`]), which make the first checks of the
//! order PKCS#11 3.0 §5.1 gives, in that order: `CKR_CRYPTOKI_NOT_INITIALIZED`,
//! then `CKR_SLOT_ID_INVALID` or `CKR_SESSION_HANDLE_INVALID`. The closure then
//! checks its pointers and counts (`CKR_ARGUMENTS_BAD`), then decodes the
//! mechanism; [`api`] checks the key handle, key type and usage, then the
//! session and login state, and only then looks at the template (which
//! [`ptr::template`] hands over as a [`crate::decode::Deferred`]). The safe
//! functions of [`api`] take the [`api::Cx`] or [`api::SlotCx`] the helpers
//! make, so a function cannot skip the first checks. Only the three
//! functions that hand out function lists, and `C_Initialize`, work before
//! `C_Initialize`.
//!
//! It is one file of about 1,100 lines on purpose: it is the module's whole
//! `unsafe` surface on the application's side, and a reviewer checks every
//! `// SAFETY:` comment of it in one pass, in the specification's order.
#![allow(non_snake_case, clippy::missing_safety_doc)]

use crate::api::{self, Cx, Input, SlotCx};
use crate::module::{self, Module};
use crate::ptr::{self, guard};
use crate::session::OpKind;
use crate::Result;
use hahsm_token::ck::*;
use std::os::raw::c_void;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;

// ------------------------------------------------- the check order (§5.1) --

/// The entry of a function that needs the initialized module:
/// `CKR_CRYPTOKI_NOT_INITIALIZED` before anything else.
fn enter(name: &str, f: impl FnOnce(Arc<Module>) -> Result<()>) -> CK_RV {
    guard(name, || f(module::get()?))
}

/// The entry of a function on a slot: not initialized, then the slot id.
fn enter_slot(name: &str, slot: CK_SLOT_ID, f: impl FnOnce(SlotCx) -> Result<()>) -> CK_RV {
    guard(name, || f(SlotCx::enter(slot)?))
}

/// The entry of a function on a session: not initialized, then the session handle.
fn enter_session(name: &str, h: CK_SESSION_HANDLE, f: impl FnOnce(Cx) -> Result<()>) -> CK_RV {
    guard(name, || f(Cx::enter(h)?))
}

fn arguments_bad() -> crate::Error {
    crate::Error::Rv(CKR_ARGUMENTS_BAD)
}

// ------------------------------------------------------- general (§5.4) --

/// §5.4 `C_Initialize`.
#[no_mangle]
pub unsafe extern "C" fn C_Initialize(args: *mut c_void) -> CK_RV {
    guard("C_Initialize", || {
        // SAFETY: `args` is NULL or a CK_C_INITIALIZE_ARGS (PKCS#11 §5.4).
        unsafe { ptr::init_args(args as *const CK_C_INITIALIZE_ARGS) }?;
        module::initialize()
    })
}

/// §5.4 `C_Finalize`.
#[no_mangle]
pub unsafe extern "C" fn C_Finalize(reserved: *mut c_void) -> CK_RV {
    enter("C_Finalize", |_| {
        if !reserved.is_null() {
            return Err(arguments_bad());
        }
        module::finalize()
    })
}

/// §5.4 `C_GetInfo`.
#[no_mangle]
pub unsafe extern "C" fn C_GetInfo(info: *mut CK_INFO) -> CK_RV {
    enter("C_GetInfo", |_| {
        // SAFETY: `info` is NULL or valid for writes (PKCS#11 §5.4).
        *unsafe { ptr::out(info) }? = api::info();
        Ok(())
    })
}

/// §5.4 `C_GetFunctionList`: the 2.40 list.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    guard("C_GetFunctionList", || {
        // SAFETY: `list` is NULL or valid for writes (PKCS#11 §5.4).
        *unsafe { ptr::out(list) }? = &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST;
        Ok(())
    })
}

/// §5.4 `C_GetInterfaceList`: "PKCS 11" 3.2, 3.0 and 2.40.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterfaceList(list: *mut CK_INTERFACE, count: *mut CK_ULONG) -> CK_RV {
    guard("C_GetInterfaceList", || {
        // SAFETY: `count` is NULL or valid; `list` NULL or valid for `*count` entries (§5.4).
        unsafe { ptr::list(list, count, &INTERFACES.0) }
    })
}

/// §5.4 `C_GetInterface`: NULL name and version give the 3.2 interface. The
/// interface is handed out in writable memory ([`HANDED_OUT`]): OpenSC's
/// pkcs11-spy writes its own function list into the `CK_INTERFACE` it gets,
/// and crashed when that was in read-only memory.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterface(
    name: *mut CK_UTF8CHAR,
    version: *mut CK_VERSION,
    interface: *mut *mut CK_INTERFACE,
    flags: CK_FLAGS,
) -> CK_RV {
    guard("C_GetInterface", || {
        // SAFETY: `interface` is NULL or valid for writes (§5.4).
        let out = unsafe { ptr::out(interface) }?;
        if !name.is_null() {
            // SAFETY: a non-NULL name is a NUL-terminated string (§5.4).
            let wanted = unsafe { std::ffi::CStr::from_ptr(name as *const std::os::raw::c_char) };
            if wanted.to_bytes() != b"PKCS 11" {
                return Err(crate::Error::Rv(CKR_ARGUMENTS_BAD));
            }
        }
        // SAFETY: `version` is NULL or valid for reads (§5.4).
        let wanted_version = unsafe { version.as_ref() }.map(|v| (v.major, v.minor));
        let found = INTERFACES.0.iter().position(|i| {
            // SAFETY: our own interfaces point at our own function lists, whose first field is a CK_VERSION.
            let v = unsafe { &*(i.pFunctionList as *const CK_VERSION) };
            let version_ok = match wanted_version {
                Some(w) => w == (v.major, v.minor),
                None => true,
            };
            version_ok && i.flags & flags == flags
        });
        match found {
            Some(i) => {
                *out = HANDED_OUT[i].fill(&INTERFACES.0[i]);
                Ok(())
            }
            None => Err(crate::Error::Rv(CKR_ARGUMENTS_BAD)),
        }
    })
}

// ---------------------------------------------- slots and tokens (§5.5) --

/// §5.5 `C_GetSlotList`.
#[no_mangle]
pub unsafe extern "C" fn C_GetSlotList(
    present: CK_BBOOL,
    list: *mut CK_SLOT_ID,
    count: *mut CK_ULONG,
) -> CK_RV {
    enter("C_GetSlotList", |m| {
        ptr::required(count)?;
        let slots = api::slot_list(&m, present != 0);
        // SAFETY: `count` is NULL or valid; `list` NULL or valid for `*count` ids (§5.5).
        unsafe { ptr::list(list, count, &slots) }
    })
}

/// §5.5 `C_GetSlotInfo`.
#[no_mangle]
pub unsafe extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    enter_slot("C_GetSlotInfo", slot, |cx| {
        // SAFETY: `info` is NULL or valid for writes (§5.5).
        let out = unsafe { ptr::out(info) }?;
        *out = api::slot_info(cx);
        Ok(())
    })
}

/// §5.5 `C_GetTokenInfo`.
#[no_mangle]
pub unsafe extern "C" fn C_GetTokenInfo(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
    enter_slot("C_GetTokenInfo", slot, |cx| {
        // SAFETY: `info` is NULL or valid for writes (§5.5).
        let out = unsafe { ptr::out(info) }?;
        *out = api::token_info(cx)?;
        Ok(())
    })
}

/// §5.5 `C_WaitForSlotEvent`: slots do not change while the module runs;
/// with `CKF_DONT_BLOCK` there is no event, and blocking is not offered.
#[no_mangle]
pub unsafe extern "C" fn C_WaitForSlotEvent(
    flags: CK_FLAGS,
    slot: *mut CK_SLOT_ID,
    reserved: *mut c_void,
) -> CK_RV {
    enter("C_WaitForSlotEvent", |_| {
        if !reserved.is_null() {
            return Err(arguments_bad());
        }
        // SAFETY: `slot` is NULL or valid for writes (§5.5).
        unsafe { ptr::out(slot) }?;
        if flags & CKF_DONT_BLOCK != 0 {
            Err(crate::Error::Rv(CKR_NO_EVENT))
        } else {
            Err(crate::Error::Rv(CKR_FUNCTION_NOT_SUPPORTED))
        }
    })
}

/// §5.5 `C_GetMechanismList`.
#[no_mangle]
pub unsafe extern "C" fn C_GetMechanismList(
    slot: CK_SLOT_ID,
    list: *mut CK_MECHANISM_TYPE,
    count: *mut CK_ULONG,
) -> CK_RV {
    enter_slot("C_GetMechanismList", slot, |cx| {
        ptr::required(count)?;
        let mechs = api::mechanism_list(cx);
        // SAFETY: `count` is NULL or valid; `list` NULL or valid for `*count` entries (§5.5).
        unsafe { ptr::list(list, count, &mechs) }
    })
}

/// §5.5 `C_GetMechanismInfo`.
#[no_mangle]
pub unsafe extern "C" fn C_GetMechanismInfo(
    slot: CK_SLOT_ID,
    mech: CK_MECHANISM_TYPE,
    info: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    enter_slot("C_GetMechanismInfo", slot, |cx| {
        // SAFETY: `info` is NULL or valid for writes (§5.5).
        let out = unsafe { ptr::out(info) }?;
        *out = api::mechanism_info(cx, mech)?;
        Ok(())
    })
}

/// §5.5 `C_InitToken`: not offered, see [`api::init_token`].
#[no_mangle]
pub unsafe extern "C" fn C_InitToken(
    slot: CK_SLOT_ID,
    pin: *mut CK_UTF8CHAR,
    pin_len: CK_ULONG,
    label: *mut CK_UTF8CHAR,
) -> CK_RV {
    enter_slot("C_InitToken", slot, |cx| {
        ptr::required(label)?;
        // SAFETY: `pin` is NULL or valid for `pin_len` bytes (§5.5).
        unsafe { ptr::bytes(pin, pin_len) }?;
        api::init_token(cx)
    })
}

/// §5.5 `C_InitPIN`.
#[no_mangle]
pub unsafe extern "C" fn C_InitPIN(h: CK_SESSION_HANDLE, pin: *mut CK_UTF8CHAR, len: CK_ULONG) -> CK_RV {
    enter_session("C_InitPIN", h, |cx| {
        // SAFETY: `pin` is NULL or valid for `len` bytes (§5.5).
        let pin = unsafe { ptr::bytes(pin, len) }?;
        api::init_pin(cx, pin)
    })
}

/// §5.5 `C_SetPIN`.
#[no_mangle]
pub unsafe extern "C" fn C_SetPIN(
    h: CK_SESSION_HANDLE,
    old: *mut CK_UTF8CHAR,
    old_len: CK_ULONG,
    new: *mut CK_UTF8CHAR,
    new_len: CK_ULONG,
) -> CK_RV {
    enter_session("C_SetPIN", h, |cx| {
        // SAFETY: each PIN pointer is NULL or valid for its length (§5.5).
        let (old, new) = unsafe { (ptr::bytes(old, old_len)?, ptr::bytes(new, new_len)?) };
        api::set_pin(cx, old, new)
    })
}

// ------------------------------------------------------ sessions (§5.6) --

/// §5.6 `C_OpenSession`. Notification callbacks are not used.
#[no_mangle]
pub unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    _app: *mut c_void,
    _notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    enter_slot("C_OpenSession", slot, |cx| {
        // SAFETY: `session` is NULL or valid for writes (§5.6).
        let out = unsafe { ptr::out(session) }?;
        *out = api::open_session(cx, flags)?;
        Ok(())
    })
}

/// §5.6 `C_CloseSession`.
#[no_mangle]
pub unsafe extern "C" fn C_CloseSession(h: CK_SESSION_HANDLE) -> CK_RV {
    enter_session("C_CloseSession", h, api::close_session)
}

/// §5.6 `C_CloseAllSessions`.
#[no_mangle]
pub unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    enter_slot("C_CloseAllSessions", slot, api::close_all_sessions)
}

/// §5.6 `C_GetSessionInfo`.
#[no_mangle]
pub unsafe extern "C" fn C_GetSessionInfo(h: CK_SESSION_HANDLE, info: *mut CK_SESSION_INFO) -> CK_RV {
    enter_session("C_GetSessionInfo", h, |cx| {
        // SAFETY: `info` is NULL or valid for writes (§5.6).
        let out = unsafe { ptr::out(info) }?;
        *out = api::session_info(cx)?;
        Ok(())
    })
}

/// §5.6 `C_SessionCancel` (3.0).
#[no_mangle]
pub unsafe extern "C" fn C_SessionCancel(h: CK_SESSION_HANDLE, flags: CK_FLAGS) -> CK_RV {
    enter_session("C_SessionCancel", h, |cx| api::session_cancel(cx, flags))
}

/// §5.6 `C_Login`.
#[no_mangle]
pub unsafe extern "C" fn C_Login(
    h: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    len: CK_ULONG,
) -> CK_RV {
    enter_session("C_Login", h, |cx| {
        // SAFETY: `pin` is NULL or valid for `len` bytes (§5.6).
        let pin = unsafe { ptr::bytes(pin, len) }?;
        api::login(cx, user, pin)
    })
}

/// §5.6 `C_LoginUser` (3.0). hahsm partitions have one user per role, so the
/// user name is checked for validity and otherwise not used.
#[no_mangle]
pub unsafe extern "C" fn C_LoginUser(
    h: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    len: CK_ULONG,
    name: *mut CK_UTF8CHAR,
    name_len: CK_ULONG,
) -> CK_RV {
    enter_session("C_LoginUser", h, |cx| {
        // SAFETY: `pin` and `name` are NULL or valid for their lengths (§5.6).
        let (pin, _name) = unsafe { (ptr::bytes(pin, len)?, ptr::bytes(name, name_len)?) };
        api::login(cx, user, pin)
    })
}

/// §5.6 `C_Logout`.
#[no_mangle]
pub unsafe extern "C" fn C_Logout(h: CK_SESSION_HANDLE) -> CK_RV {
    enter_session("C_Logout", h, api::logout)
}

// --------------------------------------------- object management (§5.7) --

/// §5.7 `C_CreateObject`.
#[no_mangle]
pub unsafe extern "C" fn C_CreateObject(
    h: CK_SESSION_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    object: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    enter_session("C_CreateObject", h, |cx| {
        // SAFETY: `object` is NULL or writable; `template` NULL or `count` attributes (§5.7).
        let (out, t) = unsafe { (ptr::out(object)?, ptr::template(template, count)?) };
        *out = api::create_object(cx, t)?;
        Ok(())
    })
}

/// §5.7 `C_CopyObject`.
#[no_mangle]
pub unsafe extern "C" fn C_CopyObject(
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    new_object: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    enter_session("C_CopyObject", h, |cx| {
        // SAFETY: `new_object` is NULL or writable; `template` NULL or `count` attributes (§5.7).
        let (out, t) = unsafe { (ptr::out(new_object)?, ptr::template(template, count)?) };
        *out = api::copy_object(cx, object, t)?;
        Ok(())
    })
}

/// §5.7 `C_DestroyObject`.
#[no_mangle]
pub unsafe extern "C" fn C_DestroyObject(h: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) -> CK_RV {
    enter_session("C_DestroyObject", h, |cx| api::destroy_object(cx, object))
}

/// §5.7 `C_GetObjectSize`.
#[no_mangle]
pub unsafe extern "C" fn C_GetObjectSize(
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    size: *mut CK_ULONG,
) -> CK_RV {
    enter_session("C_GetObjectSize", h, |cx| {
        // SAFETY: `size` is NULL or valid for writes (§5.7).
        let out = unsafe { ptr::out(size) }?;
        *out = api::object_size(cx, object)?;
        Ok(())
    })
}

/// §5.7 `C_GetAttributeValue`.
#[no_mangle]
pub unsafe extern "C" fn C_GetAttributeValue(
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    enter_session("C_GetAttributeValue", h, |cx| {
        // SAFETY: `template` is NULL or valid for `count` attributes (§5.7).
        let types = unsafe { ptr::attribute_types(template, count) }?;
        let results = api::get_attributes(cx, object, types)?;
        // SAFETY: the same `count` attributes, each `pValue` NULL or valid for `ulValueLen`.
        unsafe { ptr::write_attributes(template, &results) }
    })
}

/// §5.7 `C_SetAttributeValue`.
#[no_mangle]
pub unsafe extern "C" fn C_SetAttributeValue(
    h: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    enter_session("C_SetAttributeValue", h, |cx| {
        // SAFETY: `template` is NULL or valid for `count` attributes (§5.7).
        let t = unsafe { ptr::template(template, count) }?;
        api::set_attributes(cx, object, t)
    })
}

/// §5.7 `C_FindObjectsInit`.
#[no_mangle]
pub unsafe extern "C" fn C_FindObjectsInit(
    h: CK_SESSION_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    enter_session("C_FindObjectsInit", h, |cx| {
        // SAFETY: `template` is NULL or valid for `count` attributes (§5.7).
        let t = unsafe { ptr::search_template(template, count) }?;
        api::find_init(cx, t)
    })
}

/// §5.7 `C_FindObjects`.
#[no_mangle]
pub unsafe extern "C" fn C_FindObjects(
    h: CK_SESSION_HANDLE,
    objects: *mut CK_OBJECT_HANDLE,
    max: CK_ULONG,
    count: *mut CK_ULONG,
) -> CK_RV {
    enter_session("C_FindObjects", h, |cx| {
        // SAFETY: `count` is NULL or valid for writes (§5.7).
        let count = unsafe { ptr::out(count) }?;
        if objects.is_null() && max > 0 {
            return Err(arguments_bad());
        }
        let found = api::find(cx, max as usize)?;
        if !found.is_empty() {
            // SAFETY: `objects` holds `max` >= `found.len()` writable handles.
            unsafe { std::ptr::copy_nonoverlapping(found.as_ptr(), objects, found.len()) };
        }
        *count = found.len() as CK_ULONG;
        Ok(())
    })
}

/// §5.7 `C_FindObjectsFinal`.
#[no_mangle]
pub unsafe extern "C" fn C_FindObjectsFinal(h: CK_SESSION_HANDLE) -> CK_RV {
    enter_session("C_FindObjectsFinal", h, api::find_final)
}

// ------------------------- encryption, decryption, digests, signatures --

/// The `C_*Init` of an operation; a NULL mechanism ends the active one (3.0).
///
/// # Safety
/// `mech` is NULL or a valid `CK_MECHANISM`.
unsafe fn op_init(
    name: &str,
    h: CK_SESSION_HANDLE,
    kind: OpKind,
    mech: *mut CK_MECHANISM,
    key: Option<CK_OBJECT_HANDLE>,
) -> CK_RV {
    enter_session(name, h, |cx| {
        // SAFETY: forwarded contract.
        match unsafe { ptr::mechanism(mech) }? {
            None => api::op_cancel(cx, kind),
            Some(m) => api::op_init(cx, kind, m, key),
        }
    })
}

/// A single-part operation or a `C_*Final` that produces output.
///
/// # Safety
/// `data` is NULL or valid for `len` bytes; `out`/`out_len` as for [`ptr::output`].
unsafe fn produce(
    name: &str,
    h: CK_SESSION_HANDLE,
    kind: OpKind,
    data: Option<(*mut CK_BYTE, CK_ULONG)>,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    enter_session(name, h, |cx| {
        let input = match data {
            // SAFETY: forwarded contract.
            Some((p, n)) => Input::Single(unsafe { ptr::bytes(p, n) }?),
            None => Input::Final,
        };
        // SAFETY: forwarded contract.
        unsafe { ptr::output(out, out_len, |cap| api::produce(cx, kind, input, cap)) }
    })
}

/// A `C_*Update`. For ciphers (`out` given) it follows the buffer
/// convention: AES-ECB, AES-CBC, AES-CBC-PAD and AES-CTR output the whole
/// blocks at once ([`api::update_cipher`]); the other ciphers gather their
/// input and output nothing until `C_*Final`. A NULL output buffer only asks
/// for the output length and does not consume the input.
///
/// # Safety
/// `data` is NULL or valid for `len` bytes; `out_len` NULL or valid, and
/// `out` NULL or valid for writes of `*out_len` bytes.
unsafe fn update(
    name: &str,
    h: CK_SESSION_HANDLE,
    kind: OpKind,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: Option<(*mut CK_BYTE, *mut CK_ULONG)>,
) -> CK_RV {
    enter_session(name, h, |cx| {
        // SAFETY: forwarded contract.
        let data = unsafe { ptr::bytes(data, len) }?;
        match out {
            Some((buf, out_len)) => {
                // SAFETY: forwarded contract.
                unsafe { ptr::output(buf, out_len, |cap| api::update_cipher(cx, kind, data, cap)) }
            }
            None => api::update(cx, kind, data),
        }
    })
}

/// §5.8 `C_EncryptInit`.
#[no_mangle]
pub unsafe extern "C" fn C_EncryptInit(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: `mech` is NULL or valid (§5.8).
    unsafe { op_init("C_EncryptInit", h, OpKind::Encrypt, mech, Some(key)) }
}

/// §5.8 `C_Encrypt`.
#[no_mangle]
pub unsafe extern "C" fn C_Encrypt(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: buffers are NULL or valid for their lengths (§5.8).
    unsafe { produce("C_Encrypt", h, OpKind::Encrypt, Some((data, len)), out, out_len) }
}

/// §5.8 `C_EncryptUpdate`: whole blocks out for AES-ECB/CBC/CBC-PAD/CTR; other ciphers' output comes at `C_EncryptFinal`.
#[no_mangle]
pub unsafe extern "C" fn C_EncryptUpdate(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: buffers are NULL or valid for their lengths (§5.8).
    unsafe {
        update(
            "C_EncryptUpdate",
            h,
            OpKind::Encrypt,
            data,
            len,
            Some((out, out_len)),
        )
    }
}

/// §5.8 `C_EncryptFinal`.
#[no_mangle]
pub unsafe extern "C" fn C_EncryptFinal(
    h: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: buffers are NULL or valid for their lengths (§5.8).
    unsafe { produce("C_EncryptFinal", h, OpKind::Encrypt, None, out, out_len) }
}

/// §5.9 `C_DecryptInit`.
#[no_mangle]
pub unsafe extern "C" fn C_DecryptInit(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: `mech` is NULL or valid (§5.9).
    unsafe { op_init("C_DecryptInit", h, OpKind::Decrypt, mech, Some(key)) }
}

/// §5.9 `C_Decrypt`.
#[no_mangle]
pub unsafe extern "C" fn C_Decrypt(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: buffers are NULL or valid for their lengths (§5.9).
    unsafe { produce("C_Decrypt", h, OpKind::Decrypt, Some((data, len)), out, out_len) }
}

/// §5.9 `C_DecryptUpdate`: whole blocks out for AES-ECB/CBC/CBC-PAD/CTR (CBC-PAD keeps the last for `C_DecryptFinal`); other ciphers' output comes at `C_DecryptFinal`.
#[no_mangle]
pub unsafe extern "C" fn C_DecryptUpdate(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: buffers are NULL or valid for their lengths (§5.9).
    unsafe {
        update(
            "C_DecryptUpdate",
            h,
            OpKind::Decrypt,
            data,
            len,
            Some((out, out_len)),
        )
    }
}

/// §5.9 `C_DecryptFinal`.
#[no_mangle]
pub unsafe extern "C" fn C_DecryptFinal(
    h: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: buffers are NULL or valid for their lengths (§5.9).
    unsafe { produce("C_DecryptFinal", h, OpKind::Decrypt, None, out, out_len) }
}

/// §5.10 `C_DigestInit`.
#[no_mangle]
pub unsafe extern "C" fn C_DigestInit(h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM) -> CK_RV {
    // SAFETY: `mech` is NULL or valid (§5.10).
    unsafe { op_init("C_DigestInit", h, OpKind::Digest, mech, None) }
}

/// §5.10 `C_Digest`.
#[no_mangle]
pub unsafe extern "C" fn C_Digest(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: buffers are NULL or valid for their lengths (§5.10).
    unsafe { produce("C_Digest", h, OpKind::Digest, Some((data, len)), out, out_len) }
}

/// §5.10 `C_DigestUpdate`.
#[no_mangle]
pub unsafe extern "C" fn C_DigestUpdate(h: CK_SESSION_HANDLE, data: *mut CK_BYTE, len: CK_ULONG) -> CK_RV {
    // SAFETY: `data` is NULL or valid for `len` bytes (§5.10).
    unsafe { update("C_DigestUpdate", h, OpKind::Digest, data, len, None) }
}

/// §5.10 `C_DigestKey`: a secret key's value into the digest, on the member.
#[no_mangle]
pub unsafe extern "C" fn C_DigestKey(h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> CK_RV {
    enter_session("C_DigestKey", h, |cx| api::digest_key(cx, key))
}

/// §5.10 `C_DigestFinal`.
#[no_mangle]
pub unsafe extern "C" fn C_DigestFinal(
    h: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: buffers are NULL or valid for their lengths (§5.10).
    unsafe { produce("C_DigestFinal", h, OpKind::Digest, None, out, out_len) }
}

/// §5.11 `C_SignInit`.
#[no_mangle]
pub unsafe extern "C" fn C_SignInit(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: `mech` is NULL or valid (§5.11).
    unsafe { op_init("C_SignInit", h, OpKind::Sign, mech, Some(key)) }
}

/// §5.11 `C_Sign`.
#[no_mangle]
pub unsafe extern "C" fn C_Sign(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    sig: *mut CK_BYTE,
    sig_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: buffers are NULL or valid for their lengths (§5.11).
    unsafe { produce("C_Sign", h, OpKind::Sign, Some((data, len)), sig, sig_len) }
}

/// §5.11 `C_SignUpdate`.
#[no_mangle]
pub unsafe extern "C" fn C_SignUpdate(h: CK_SESSION_HANDLE, data: *mut CK_BYTE, len: CK_ULONG) -> CK_RV {
    // SAFETY: `data` is NULL or valid for `len` bytes (§5.11).
    unsafe { update("C_SignUpdate", h, OpKind::Sign, data, len, None) }
}

/// §5.11 `C_SignFinal`.
#[no_mangle]
pub unsafe extern "C" fn C_SignFinal(
    h: CK_SESSION_HANDLE,
    sig: *mut CK_BYTE,
    sig_len: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: buffers are NULL or valid for their lengths (§5.11).
    unsafe { produce("C_SignFinal", h, OpKind::Sign, None, sig, sig_len) }
}

/// §5.12 `C_VerifyInit`.
#[no_mangle]
pub unsafe extern "C" fn C_VerifyInit(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: `mech` is NULL or valid (§5.12).
    unsafe { op_init("C_VerifyInit", h, OpKind::Verify, mech, Some(key)) }
}

/// §5.12 `C_Verify`.
#[no_mangle]
pub unsafe extern "C" fn C_Verify(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    sig: *mut CK_BYTE,
    sig_len: CK_ULONG,
) -> CK_RV {
    enter_session("C_Verify", h, |cx| {
        // SAFETY: buffers are NULL or valid for their lengths (§5.12).
        let (data, sig) = unsafe { (ptr::bytes(data, len)?, ptr::bytes(sig, sig_len)?) };
        api::verify(cx, Input::Single(data), sig)
    })
}

/// §5.12 `C_VerifyUpdate`.
#[no_mangle]
pub unsafe extern "C" fn C_VerifyUpdate(h: CK_SESSION_HANDLE, data: *mut CK_BYTE, len: CK_ULONG) -> CK_RV {
    // SAFETY: `data` is NULL or valid for `len` bytes (§5.12).
    unsafe { update("C_VerifyUpdate", h, OpKind::Verify, data, len, None) }
}

/// §5.12 `C_VerifyFinal`.
#[no_mangle]
pub unsafe extern "C" fn C_VerifyFinal(h: CK_SESSION_HANDLE, sig: *mut CK_BYTE, sig_len: CK_ULONG) -> CK_RV {
    enter_session("C_VerifyFinal", h, |cx| {
        // SAFETY: `sig` is NULL or valid for `sig_len` bytes (§5.12).
        let sig = unsafe { ptr::bytes(sig, sig_len) }?;
        api::verify(cx, Input::Final, sig)
    })
}

// ------------------------------------------------ key management (§5.14) --

/// §5.14 `C_GenerateKey`.
#[no_mangle]
pub unsafe extern "C" fn C_GenerateKey(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    enter_session("C_GenerateKey", h, |cx| {
        ptr::required(mech)?;
        // SAFETY: pointers are NULL or valid for their lengths (§5.14).
        let (out, t) = unsafe { (ptr::out(key)?, ptr::template(template, count)?) };
        // SAFETY: as above.
        let m = unsafe { ptr::required_mechanism(mech) }?;
        *out = api::generate_key(cx, m, t)?;
        Ok(())
    })
}

/// §5.14 `C_GenerateKeyPair`.
#[no_mangle]
pub unsafe extern "C" fn C_GenerateKeyPair(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    pub_template: *mut CK_ATTRIBUTE,
    pub_count: CK_ULONG,
    priv_template: *mut CK_ATTRIBUTE,
    priv_count: CK_ULONG,
    pub_key: *mut CK_OBJECT_HANDLE,
    priv_key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    enter_session("C_GenerateKeyPair", h, |cx| {
        ptr::required(mech)?;
        // SAFETY: pointers are NULL or valid for their lengths (§5.14).
        let (pub_out, priv_out, pt, st) = unsafe {
            (
                ptr::out(pub_key)?,
                ptr::out(priv_key)?,
                ptr::template(pub_template, pub_count)?,
                ptr::template(priv_template, priv_count)?,
            )
        };
        // SAFETY: as above.
        let m = unsafe { ptr::required_mechanism(mech) }?;
        let (p, s) = api::generate_key_pair(cx, m, pt, st)?;
        *pub_out = p;
        *priv_out = s;
        Ok(())
    })
}

/// §5.14 `C_WrapKey`.
#[no_mangle]
pub unsafe extern "C" fn C_WrapKey(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    wrapping: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    enter_session("C_WrapKey", h, |cx| {
        ptr::required(mech)?;
        ptr::required(out_len)?;
        // SAFETY: pointers are NULL or valid for their lengths (§5.14).
        let m = unsafe { ptr::required_mechanism(mech) }?;
        // SAFETY: as above.
        unsafe { ptr::output(out, out_len, |cap| api::wrap_key(cx, m, wrapping, key, cap)) }
    })
}

/// §5.14 `C_UnwrapKey`.
#[no_mangle]
pub unsafe extern "C" fn C_UnwrapKey(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    unwrapping: CK_OBJECT_HANDLE,
    wrapped: *mut CK_BYTE,
    wrapped_len: CK_ULONG,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    enter_session("C_UnwrapKey", h, |cx| {
        ptr::required(mech)?;
        // SAFETY: pointers are NULL or valid for their lengths (§5.14).
        let (out, w, t) = unsafe {
            (
                ptr::out(key)?,
                ptr::bytes(wrapped, wrapped_len)?,
                ptr::template(template, count)?,
            )
        };
        // SAFETY: as above.
        let m = unsafe { ptr::required_mechanism(mech) }?;
        *out = api::unwrap_key(cx, m, unwrapping, w, t)?;
        Ok(())
    })
}

/// §5.14 `C_DeriveKey`.
#[no_mangle]
pub unsafe extern "C" fn C_DeriveKey(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    base: CK_OBJECT_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    enter_session("C_DeriveKey", h, |cx| {
        ptr::required(mech)?;
        // SAFETY: pointers are NULL or valid for their lengths (§5.14).
        let (out, t) = unsafe { (ptr::out(key)?, ptr::template(template, count)?) };
        // SAFETY: as above.
        let m = unsafe { ptr::required_mechanism(mech) }?;
        *out = api::derive_key(cx, m, base, t)?;
        Ok(())
    })
}

// ------------------------------------ key encapsulation (3.2, §5.18) --

/// §5.18 `C_EncapsulateKey` (3.2).
#[no_mangle]
pub unsafe extern "C" fn C_EncapsulateKey(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    public_key: CK_OBJECT_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    ciphertext: *mut CK_BYTE,
    ciphertext_len: *mut CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    enter_session("C_EncapsulateKey", h, |cx| {
        ptr::required(mech)?;
        ptr::required(ciphertext_len)?;
        // SAFETY: `key` is NULL or writable; `template` NULL or `count` attributes (§5.18).
        let (out, t) = unsafe { (ptr::out(key)?, ptr::template(template, count)?) };
        // SAFETY: `mech` is a valid CK_MECHANISM (checked non-NULL above).
        let m = unsafe { ptr::required_mechanism(mech) }?;
        // SAFETY: `ciphertext_len` is valid; `ciphertext` NULL or valid for `*ciphertext_len` bytes (§5.18).
        unsafe {
            ptr::output(ciphertext, ciphertext_len, |cap| {
                api::encapsulate_key(cx, m, public_key, t, cap, out)
            })
        }
    })
}

/// §5.18 `C_DecapsulateKey` (3.2).
#[no_mangle]
pub unsafe extern "C" fn C_DecapsulateKey(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    private_key: CK_OBJECT_HANDLE,
    template: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    ciphertext: *mut CK_BYTE,
    ciphertext_len: CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    enter_session("C_DecapsulateKey", h, |cx| {
        ptr::required(mech)?;
        ptr::required(ciphertext)?;
        // SAFETY: `key` is NULL or writable; `template` NULL or `count` attributes; `ciphertext` valid for `ciphertext_len` bytes (§5.18).
        let (out, t, c) = unsafe {
            (
                ptr::out(key)?,
                ptr::template(template, count)?,
                ptr::bytes(ciphertext, ciphertext_len)?,
            )
        };
        // SAFETY: `mech` is a valid CK_MECHANISM (checked non-NULL above).
        let m = unsafe { ptr::required_mechanism(mech) }?;
        *out = api::decapsulate_key(cx, m, private_key, c, t)?;
        Ok(())
    })
}

// ------------------------------------------------ random numbers (§5.15) --

/// §5.15 `C_SeedRandom`: accepted, and not used (see [`api::seed_random`]).
#[no_mangle]
pub unsafe extern "C" fn C_SeedRandom(h: CK_SESSION_HANDLE, seed: *mut CK_BYTE, len: CK_ULONG) -> CK_RV {
    enter_session("C_SeedRandom", h, |cx| {
        // SAFETY: `seed` is NULL or valid for `len` bytes (§5.15).
        let seed = unsafe { ptr::bytes(seed, len) }?;
        api::seed_random(cx, seed)
    })
}

/// §5.15 `C_GenerateRandom`.
#[no_mangle]
pub unsafe extern "C" fn C_GenerateRandom(h: CK_SESSION_HANDLE, out: *mut CK_BYTE, len: CK_ULONG) -> CK_RV {
    enter_session("C_GenerateRandom", h, |cx| {
        if out.is_null() && len > 0 {
            return Err(arguments_bad());
        }
        let bytes = api::generate_random(cx, len as usize)?;
        if !bytes.is_empty() {
            // SAFETY: `out` is valid for `len` == `bytes.len()` writable bytes (§5.15).
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), out, bytes.len()) };
        }
        Ok(())
    })
}

// ----------------------------------------------- functions not offered --

/// Defines functions that return `CKR_FUNCTION_NOT_SUPPORTED` (or the code
/// given), so that no function-list entry is NULL. They enter like the
/// others (each takes a session first): not initialized, then the session
/// handle, then the refusal.
macro_rules! not_supported {
    ($( $name:ident ( h: CK_SESSION_HANDLE $(, $arg:ident : $ty:ty)* ) $(=> $code:expr)? ;)*) => {$(
        #[doc = concat!("`", stringify!($name), "`: not offered by hahsm.")]
        #[no_mangle]
        pub unsafe extern "C" fn $name(h: CK_SESSION_HANDLE $(, $arg: $ty)*) -> CK_RV {
            $(let _ = $arg;)*
            enter_session(stringify!($name), h, |_| Err(crate::Error::Rv(not_supported!(@code $($code)?))))
        }
    )*};
    (@code) => { CKR_FUNCTION_NOT_SUPPORTED };
    (@code $code:expr) => { $code };
}

not_supported! {
    C_GetOperationState(h: CK_SESSION_HANDLE, a: *mut CK_BYTE, b: *mut CK_ULONG);
    C_SetOperationState(h: CK_SESSION_HANDLE, a: *mut CK_BYTE, b: CK_ULONG, c: CK_OBJECT_HANDLE, d: CK_OBJECT_HANDLE);
    C_SignRecoverInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE);
    C_SignRecover(h: CK_SESSION_HANDLE, a: *mut CK_BYTE, b: CK_ULONG, c: *mut CK_BYTE, d: *mut CK_ULONG);
    C_VerifyRecoverInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE);
    C_VerifyRecover(h: CK_SESSION_HANDLE, a: *mut CK_BYTE, b: CK_ULONG, c: *mut CK_BYTE, d: *mut CK_ULONG);
    C_DigestEncryptUpdate(h: CK_SESSION_HANDLE, a: *mut CK_BYTE, b: CK_ULONG, c: *mut CK_BYTE, d: *mut CK_ULONG);
    C_DecryptDigestUpdate(h: CK_SESSION_HANDLE, a: *mut CK_BYTE, b: CK_ULONG, c: *mut CK_BYTE, d: *mut CK_ULONG);
    C_SignEncryptUpdate(h: CK_SESSION_HANDLE, a: *mut CK_BYTE, b: CK_ULONG, c: *mut CK_BYTE, d: *mut CK_ULONG);
    C_DecryptVerifyUpdate(h: CK_SESSION_HANDLE, a: *mut CK_BYTE, b: CK_ULONG, c: *mut CK_BYTE, d: *mut CK_ULONG);
    C_GetFunctionStatus(h: CK_SESSION_HANDLE) => CKR_FUNCTION_NOT_PARALLEL;
    C_CancelFunction(h: CK_SESSION_HANDLE) => CKR_FUNCTION_NOT_PARALLEL;
    C_MessageEncryptInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE);
    C_EncryptMessage(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, a: *mut CK_BYTE, al: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG);
    C_EncryptMessageBegin(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, a: *mut CK_BYTE, al: CK_ULONG);
    C_EncryptMessageNext(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG, f: CK_FLAGS);
    C_MessageEncryptFinal(h: CK_SESSION_HANDLE);
    C_MessageDecryptInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE);
    C_DecryptMessage(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, a: *mut CK_BYTE, al: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG);
    C_DecryptMessageBegin(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, a: *mut CK_BYTE, al: CK_ULONG);
    C_DecryptMessageNext(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG, f: CK_FLAGS);
    C_MessageDecryptFinal(h: CK_SESSION_HANDLE);
    C_MessageSignInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE);
    C_SignMessage(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG, s: *mut CK_BYTE, sl: *mut CK_ULONG);
    C_SignMessageBegin(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG);
    C_SignMessageNext(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG, s: *mut CK_BYTE, sl: *mut CK_ULONG);
    C_MessageSignFinal(h: CK_SESSION_HANDLE);
    C_MessageVerifyInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE);
    C_VerifyMessage(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG, s: *mut CK_BYTE, sl: CK_ULONG);
    C_VerifyMessageBegin(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG);
    C_VerifyMessageNext(h: CK_SESSION_HANDLE, p: *mut c_void, pl: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG, s: *mut CK_BYTE, sl: CK_ULONG);
    C_MessageVerifyFinal(h: CK_SESSION_HANDLE);
    C_VerifySignatureInit(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE, s: *mut CK_BYTE, sl: CK_ULONG);
    C_VerifySignature(h: CK_SESSION_HANDLE, d: *mut CK_BYTE, dl: CK_ULONG);
    C_VerifySignatureUpdate(h: CK_SESSION_HANDLE, d: *mut CK_BYTE, dl: CK_ULONG);
    C_VerifySignatureFinal(h: CK_SESSION_HANDLE);
    C_GetSessionValidationFlags(h: CK_SESSION_HANDLE, t: CK_SESSION_VALIDATION_FLAGS_TYPE, f: *mut CK_FLAGS);
    C_AsyncComplete(h: CK_SESSION_HANDLE, n: *mut CK_UTF8CHAR, d: *mut CK_ASYNC_DATA);
    C_AsyncGetID(h: CK_SESSION_HANDLE, n: *mut CK_UTF8CHAR, i: *mut CK_ULONG);
    C_AsyncJoin(h: CK_SESSION_HANDLE, n: *mut CK_UTF8CHAR, i: CK_ULONG, d: *mut CK_BYTE, dl: CK_ULONG);
    C_WrapKeyAuthenticated(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, w: CK_OBJECT_HANDLE, k: CK_OBJECT_HANDLE, a: *mut CK_BYTE, al: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG);
    C_UnwrapKeyAuthenticated(h: CK_SESSION_HANDLE, m: *mut CK_MECHANISM, u: CK_OBJECT_HANDLE, w: *mut CK_BYTE, wl: CK_ULONG, t: *mut CK_ATTRIBUTE, tc: CK_ULONG, a: *mut CK_BYTE, al: CK_ULONG, k: *mut CK_OBJECT_HANDLE);
}

// ------------------------------------------ function lists and interfaces --

/// Fills a function list's common entries; every one points to a function.
macro_rules! function_list {
    ($ty:ident, $major:expr, $minor:expr, { $($extra:ident),* }) => {
        $ty {
            version: CK_VERSION { major: $major, minor: $minor },
            C_Initialize: Some(C_Initialize),
            C_Finalize: Some(C_Finalize),
            C_GetInfo: Some(C_GetInfo),
            C_GetFunctionList: Some(C_GetFunctionList),
            C_GetSlotList: Some(C_GetSlotList),
            C_GetSlotInfo: Some(C_GetSlotInfo),
            C_GetTokenInfo: Some(C_GetTokenInfo),
            C_GetMechanismList: Some(C_GetMechanismList),
            C_GetMechanismInfo: Some(C_GetMechanismInfo),
            C_InitToken: Some(C_InitToken),
            C_InitPIN: Some(C_InitPIN),
            C_SetPIN: Some(C_SetPIN),
            C_OpenSession: Some(C_OpenSession),
            C_CloseSession: Some(C_CloseSession),
            C_CloseAllSessions: Some(C_CloseAllSessions),
            C_GetSessionInfo: Some(C_GetSessionInfo),
            C_GetOperationState: Some(C_GetOperationState),
            C_SetOperationState: Some(C_SetOperationState),
            C_Login: Some(C_Login),
            C_Logout: Some(C_Logout),
            C_CreateObject: Some(C_CreateObject),
            C_CopyObject: Some(C_CopyObject),
            C_DestroyObject: Some(C_DestroyObject),
            C_GetObjectSize: Some(C_GetObjectSize),
            C_GetAttributeValue: Some(C_GetAttributeValue),
            C_SetAttributeValue: Some(C_SetAttributeValue),
            C_FindObjectsInit: Some(C_FindObjectsInit),
            C_FindObjects: Some(C_FindObjects),
            C_FindObjectsFinal: Some(C_FindObjectsFinal),
            C_EncryptInit: Some(C_EncryptInit),
            C_Encrypt: Some(C_Encrypt),
            C_EncryptUpdate: Some(C_EncryptUpdate),
            C_EncryptFinal: Some(C_EncryptFinal),
            C_DecryptInit: Some(C_DecryptInit),
            C_Decrypt: Some(C_Decrypt),
            C_DecryptUpdate: Some(C_DecryptUpdate),
            C_DecryptFinal: Some(C_DecryptFinal),
            C_DigestInit: Some(C_DigestInit),
            C_Digest: Some(C_Digest),
            C_DigestUpdate: Some(C_DigestUpdate),
            C_DigestKey: Some(C_DigestKey),
            C_DigestFinal: Some(C_DigestFinal),
            C_SignInit: Some(C_SignInit),
            C_Sign: Some(C_Sign),
            C_SignUpdate: Some(C_SignUpdate),
            C_SignFinal: Some(C_SignFinal),
            C_SignRecoverInit: Some(C_SignRecoverInit),
            C_SignRecover: Some(C_SignRecover),
            C_VerifyInit: Some(C_VerifyInit),
            C_Verify: Some(C_Verify),
            C_VerifyUpdate: Some(C_VerifyUpdate),
            C_VerifyFinal: Some(C_VerifyFinal),
            C_VerifyRecoverInit: Some(C_VerifyRecoverInit),
            C_VerifyRecover: Some(C_VerifyRecover),
            C_DigestEncryptUpdate: Some(C_DigestEncryptUpdate),
            C_DecryptDigestUpdate: Some(C_DecryptDigestUpdate),
            C_SignEncryptUpdate: Some(C_SignEncryptUpdate),
            C_DecryptVerifyUpdate: Some(C_DecryptVerifyUpdate),
            C_GenerateKey: Some(C_GenerateKey),
            C_GenerateKeyPair: Some(C_GenerateKeyPair),
            C_WrapKey: Some(C_WrapKey),
            C_UnwrapKey: Some(C_UnwrapKey),
            C_DeriveKey: Some(C_DeriveKey),
            C_SeedRandom: Some(C_SeedRandom),
            C_GenerateRandom: Some(C_GenerateRandom),
            C_GetFunctionStatus: Some(C_GetFunctionStatus),
            C_CancelFunction: Some(C_CancelFunction),
            C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
            $($extra: Some($extra),)*
        }
    };
}

static FUNCTION_LIST: CK_FUNCTION_LIST = function_list!(CK_FUNCTION_LIST, 2, 40, {});

static FUNCTION_LIST_3_0: CK_FUNCTION_LIST_3_0 = function_list!(CK_FUNCTION_LIST_3_0, 3, 0, {
    C_GetInterfaceList, C_GetInterface, C_LoginUser, C_SessionCancel,
    C_MessageEncryptInit, C_EncryptMessage, C_EncryptMessageBegin, C_EncryptMessageNext, C_MessageEncryptFinal,
    C_MessageDecryptInit, C_DecryptMessage, C_DecryptMessageBegin, C_DecryptMessageNext, C_MessageDecryptFinal,
    C_MessageSignInit, C_SignMessage, C_SignMessageBegin, C_SignMessageNext, C_MessageSignFinal,
    C_MessageVerifyInit, C_VerifyMessage, C_VerifyMessageBegin, C_VerifyMessageNext, C_MessageVerifyFinal
});

static FUNCTION_LIST_3_2: CK_FUNCTION_LIST_3_2 = function_list!(CK_FUNCTION_LIST_3_2, 3, 2, {
    C_GetInterfaceList, C_GetInterface, C_LoginUser, C_SessionCancel,
    C_MessageEncryptInit, C_EncryptMessage, C_EncryptMessageBegin, C_EncryptMessageNext, C_MessageEncryptFinal,
    C_MessageDecryptInit, C_DecryptMessage, C_DecryptMessageBegin, C_DecryptMessageNext, C_MessageDecryptFinal,
    C_MessageSignInit, C_SignMessage, C_SignMessageBegin, C_SignMessageNext, C_MessageSignFinal,
    C_MessageVerifyInit, C_VerifyMessage, C_VerifyMessageBegin, C_VerifyMessageNext, C_MessageVerifyFinal,
    C_EncapsulateKey, C_DecapsulateKey,
    C_VerifySignatureInit, C_VerifySignature, C_VerifySignatureUpdate, C_VerifySignatureFinal,
    C_GetSessionValidationFlags, C_AsyncComplete, C_AsyncGetID, C_AsyncJoin,
    C_WrapKeyAuthenticated, C_UnwrapKeyAuthenticated
});

/// The interfaces `C_GetInterfaceList` offers, the default (3.2) first.
struct Interfaces([CK_INTERFACE; 3]);

// SAFETY: the interfaces hold pointers to immutable statics only (a name and
// three function lists), which any thread may read.
unsafe impl Sync for Interfaces {}

static INTERFACE_NAME: &[u8] = b"PKCS 11\0";

/// A `CK_INTERFACE` in writable memory, for [`C_GetInterface`] to hand out:
/// the caller may write to it (pkcs11-spy does), so it is made of atomics,
/// which also keeps this module's own stores free of data races.
#[repr(C)]
struct HandedOut {
    name: AtomicPtr<CK_UTF8CHAR>,
    list: AtomicPtr<c_void>,
    flags: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<HandedOut>() == std::mem::size_of::<CK_INTERFACE>());
const _: () = assert!(std::mem::align_of::<HandedOut>() == std::mem::align_of::<CK_INTERFACE>());
const _: () = assert!(std::mem::size_of::<CK_FLAGS>() == std::mem::size_of::<u64>());

impl HandedOut {
    const fn new() -> HandedOut {
        HandedOut {
            name: AtomicPtr::new(std::ptr::null_mut()),
            list: AtomicPtr::new(std::ptr::null_mut()),
            flags: AtomicU64::new(0),
        }
    }

    /// Sets it to `i` (whatever a caller wrote there before) and points to it.
    fn fill(&self, i: &CK_INTERFACE) -> *mut CK_INTERFACE {
        self.name.store(i.pInterfaceName, Ordering::SeqCst);
        self.list.store(i.pFunctionList, Ordering::SeqCst);
        self.flags.store(i.flags, Ordering::SeqCst);
        self as *const HandedOut as *mut CK_INTERFACE
    }
}

/// What [`C_GetInterface`] hands out, one per entry of [`INTERFACES`].
static HANDED_OUT: [HandedOut; 3] = [HandedOut::new(), HandedOut::new(), HandedOut::new()];

static INTERFACES: Interfaces = Interfaces([
    CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR,
        pFunctionList: &FUNCTION_LIST_3_2 as *const CK_FUNCTION_LIST_3_2 as *mut c_void,
        flags: 0,
    },
    CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR,
        pFunctionList: &FUNCTION_LIST_3_0 as *const CK_FUNCTION_LIST_3_0 as *mut c_void,
        flags: 0,
    },
    CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_UTF8CHAR,
        pFunctionList: &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut c_void,
        flags: 0,
    },
]);
