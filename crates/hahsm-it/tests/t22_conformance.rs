//! PKCS#11 conformance (issue 19): one table of cases over every function the
//! module exports, each asserting the exact `CKR_` code, run through the
//! built `.so` against a 3-member group's HA slot and against one member's
//! physical slot.
//!
//! The check order under test (PKCS#11 3.0 §5.1, as `docs/pkcs11.md` states
//! it): not initialized; then the session handle (or slot id); then the
//! arguments (NULL pointers, counts); then the mechanism, key handle, key
//! type and usage; then the session and login state where it depends on the
//! object; then the template. So most cases pass several faults at once and
//! expect the one that comes first: a bad session handle together with NULL
//! pointers and an unknown mechanism is `CKR_SESSION_HANDLE_INVALID`; NULL
//! pointers together with an unknown mechanism are `CKR_ARGUMENTS_BAD`.
//!
//! The phases follow the token's states: before `C_Initialize`; any session
//! (bad handles, NULL arguments, bad mechanisms); a read-only and a
//! read/write public session (the public-object rule of `docs/pkcs11.md`);
//! a user session. Calls go through the raw 3.0 function list, since the
//! `cryptoki` crate will not pass NULL pointers.
mod t20_pkcs11_support;

use cryptoki::object::{Attribute, AttributeType};
use cryptoki_sys::*;
use hahsm_it::cluster::{Cluster, PIN};
use std::ptr::null_mut;
use t20_pkcs11_support::raw;

/// A session handle the module never issued.
const BAD_SESSION: CK_SESSION_HANDLE = 0xdead_beef;
/// A slot id no partition has.
const BAD_SLOT: CK_SLOT_ID = 0x7777_7777;
/// An object handle the module never issued.
const BOGUS: CK_OBJECT_HANDLE = 999_999;
/// A mechanism no token offers (vendor-defined).
const BAD_MECH: CK_MECHANISM_TYPE = 0x8000_7777;
/// What a case returns when the call succeeded but its result was wrong.
const WRONG_RESULT: CK_RV = 0xffff_fff0;
const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Calls one function of the 3.0 list.
macro_rules! call {
    ($fx:expr, $f:ident $(, $a:expr)* $(,)?) => {{
        let f = $fx.f.$f.expect(stringify!($f));
        // Every case passes pointers that are NULL or valid for the lengths
        // given beside them, as PKCS#11 asks of applications.
        // SAFETY: the pointers are NULL or valid for their lengths (above).
        unsafe { f($($a),*) }
    }};
}

/// What a case runs with.
struct Fx {
    f: CK_FUNCTION_LIST_3_0,
    slot: CK_SLOT_ID,
    /// A read-only and a read/write session of `slot` (0 before `C_Initialize`).
    ro: CK_SESSION_HANDLE,
    rw: CK_SESSION_HANDLE,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    NotInitialized,
    AnySession,
    RoPublic,
    RwPublic,
    User,
}

/// A call of one function on a session, a slot, or with a mechanism.
type OnSession = fn(&Fx, CK_SESSION_HANDLE) -> CK_RV;
type OnSlot = fn(&Fx, CK_SLOT_ID) -> CK_RV;
type WithMechanism = fn(&Fx, *mut CK_MECHANISM) -> CK_RV;

struct Case {
    phase: Phase,
    name: &'static str,
    want: CK_RV,
    run: Box<dyn Fn(&Fx) -> CK_RV>,
}

fn case(phase: Phase, name: &'static str, want: CK_RV, run: impl Fn(&Fx) -> CK_RV + 'static) -> Case {
    Case {
        phase,
        name,
        want,
        run: Box::new(run),
    }
}

fn mech(m: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: m,
        pParameter: null_mut(),
        ulParameterLen: 0,
    }
}

/// A template borrowing `attrs`.
fn tmpl(attrs: &[Attribute]) -> Vec<CK_ATTRIBUTE> {
    attrs.iter().map(|a| a.into()).collect()
}

fn data_object(token: bool, private: bool) -> Vec<Attribute> {
    vec![
        Attribute::Class(cryptoki::object::ObjectClass::DATA),
        Attribute::Token(token),
        Attribute::Private(private),
        Attribute::Label(b"t22-data".to_vec()),
        Attribute::Value(b"conformance".to_vec()),
    ]
}

fn aes_key(token: bool, private: Option<bool>, encrypt: bool) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Token(token),
        Attribute::ValueLen(16.into()),
        Attribute::Encrypt(encrypt),
        Attribute::Decrypt(encrypt),
        Attribute::Label(b"t22-aes".to_vec()),
    ];
    if let Some(p) = private {
        t.push(Attribute::Private(p));
    }
    t
}

/// `C_CreateObject`; the handle or the code.
fn create(fx: &Fx, h: CK_SESSION_HANDLE, attrs: &[Attribute]) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    let mut t = tmpl(attrs);
    let mut o = 0;
    match call!(fx, C_CreateObject, h, t.as_mut_ptr(), t.len() as CK_ULONG, &mut o) {
        CKR_OK => Ok(o),
        rv => Err(rv),
    }
}

fn gen_key(fx: &Fx, h: CK_SESSION_HANDLE, attrs: &[Attribute]) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    let mut m = mech(CKM_AES_KEY_GEN);
    let mut t = tmpl(attrs);
    let mut o = 0;
    match call!(
        fx,
        C_GenerateKey,
        h,
        &mut m,
        t.as_mut_ptr(),
        t.len() as CK_ULONG,
        &mut o
    ) {
        CKR_OK => Ok(o),
        rv => Err(rv),
    }
}

/// An EC P-256 pair; `private`: the `CKA_PRIVATE` of both halves (`None`:
/// the defaults); `params`: whether `CKA_EC_PARAMS` is given.
fn gen_pair(
    fx: &Fx,
    h: CK_SESSION_HANDLE,
    token: bool,
    private: Option<bool>,
    params: bool,
) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE), CK_RV> {
    let mut m = mech(CKM_EC_KEY_PAIR_GEN);
    let mut puba = vec![Attribute::Token(token), Attribute::Verify(true)];
    let mut priva = vec![Attribute::Token(token), Attribute::Sign(true)];
    if params {
        puba.push(Attribute::EcParams(P256.to_vec()));
    }
    if let Some(p) = private {
        puba.push(Attribute::Private(p));
        priva.push(Attribute::Private(p));
    }
    let (mut pt, mut st) = (tmpl(&puba), tmpl(&priva));
    let (mut p, mut s) = (0, 0);
    match call!(
        fx,
        C_GenerateKeyPair,
        h,
        &mut m,
        pt.as_mut_ptr(),
        pt.len() as CK_ULONG,
        st.as_mut_ptr(),
        st.len() as CK_ULONG,
        &mut p,
        &mut s
    ) {
        CKR_OK => Ok((p, s)),
        rv => Err(rv),
    }
}

fn destroy(fx: &Fx, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> CK_RV {
    call!(fx, C_DestroyObject, h, o)
}

fn set_label(fx: &Fx, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> CK_RV {
    let a = [Attribute::Label(b"t22-renamed".to_vec())];
    let mut t = tmpl(&a);
    call!(fx, C_SetAttributeValue, h, o, t.as_mut_ptr(), 1)
}

fn copy(fx: &Fx, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    let a = [Attribute::Label(b"t22-copy".to_vec())];
    let mut t = tmpl(&a);
    let mut n = 0;
    match call!(fx, C_CopyObject, h, o, t.as_mut_ptr(), 1, &mut n) {
        CKR_OK => Ok(n),
        rv => Err(rv),
    }
}

/// The whole life of one object in session `h`: create (or generate), set
/// an attribute, copy, destroy the copy and the original. The first
/// failure's code, or `CKR_OK`.
fn life(fx: &Fx, h: CK_SESSION_HANDLE, make: impl Fn() -> Result<CK_OBJECT_HANDLE, CK_RV>) -> CK_RV {
    let o = match make() {
        Ok(o) => o,
        Err(rv) => return rv,
    };
    let steps = || -> Result<(), CK_RV> {
        ok(set_label(fx, h, o))?;
        let c = copy(fx, h, o)?;
        ok(destroy(fx, h, c))?;
        ok(destroy(fx, h, o))
    };
    match steps() {
        Ok(()) => CKR_OK,
        Err(rv) => rv,
    }
}

/// In `rw`: a public wrapping key wraps a public extractable key, and the
/// blob is unwrapped as a session key with `CKA_PRIVATE` `private` (`None`:
/// the default). The first failure's code, or `CKR_OK`.
fn wrap_unwrap(fx: &Fx, private: Option<bool>) -> CK_RV {
    let steps = || -> Result<(), CK_RV> {
        let kek = gen_key(
            fx,
            fx.rw,
            &[
                Attribute::Token(false),
                Attribute::Private(false),
                Attribute::ValueLen(16.into()),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
            ],
        )?;
        let key = gen_key(
            fx,
            fx.rw,
            &[
                Attribute::Token(false),
                Attribute::Private(false),
                Attribute::ValueLen(16.into()),
                Attribute::Extractable(true),
                Attribute::Encrypt(true),
            ],
        )?;
        let mut m = mech(CKM_AES_KEY_WRAP);
        let (mut blob, mut n) = ([0u8; 64], 64);
        ok(call!(
            fx,
            C_WrapKey,
            fx.rw,
            &mut m,
            kek,
            key,
            blob.as_mut_ptr(),
            &mut n
        ))?;
        let mut attrs = vec![
            Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY),
            Attribute::KeyType(cryptoki::object::KeyType::AES),
            Attribute::Token(false),
            Attribute::Encrypt(true),
        ];
        if let Some(p) = private {
            attrs.push(Attribute::Private(p));
        }
        let mut t = tmpl(&attrs);
        let mut out = 0;
        let r = call!(
            fx,
            C_UnwrapKey,
            fx.rw,
            &mut m,
            kek,
            blob.as_mut_ptr(),
            n,
            t.as_mut_ptr(),
            t.len() as CK_ULONG,
            &mut out
        );
        ok(destroy(fx, fx.rw, key))?;
        ok(destroy(fx, fx.rw, kek))?;
        ok(r)?;
        ok(destroy(fx, fx.rw, out))
    };
    match steps() {
        Ok(()) => CKR_OK,
        Err(rv) => rv,
    }
}

fn ok(rv: CK_RV) -> Result<(), CK_RV> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(rv)
    }
}

fn session_state(fx: &Fx, h: CK_SESSION_HANDLE, want: CK_STATE) -> CK_RV {
    // SAFETY: CK_SESSION_INFO is plain data, valid when zeroed.
    let mut info: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
    match call!(fx, C_GetSessionInfo, h, &mut info) {
        CKR_OK if info.state == want => CKR_OK,
        CKR_OK => {
            eprintln!("session state {:#x}, want {want:#x}", info.state);
            WRONG_RESULT
        }
        rv => rv,
    }
}

/// Every function that takes a session handle, called with `h` and NULL
/// pointers, non-zero counts, an unknown mechanism and a bogus object where
/// it takes them. With a bad handle, all answer `CKR_SESSION_HANDLE_INVALID`.
fn session_functions() -> Vec<(&'static str, OnSession)> {
    vec![
        ("C_InitPIN", |fx, h| call!(fx, C_InitPIN, h, null_mut(), 4)),
        ("C_SetPIN", |fx, h| {
            call!(fx, C_SetPIN, h, null_mut(), 4, null_mut(), 4)
        }),
        ("C_CloseSession", |fx, h| call!(fx, C_CloseSession, h)),
        ("C_GetSessionInfo", |fx, h| {
            call!(fx, C_GetSessionInfo, h, null_mut())
        }),
        ("C_SessionCancel", |fx, h| {
            call!(fx, C_SessionCancel, h, CKF_FIND_OBJECTS)
        }),
        ("C_GetOperationState", |fx, h| {
            call!(fx, C_GetOperationState, h, null_mut(), null_mut())
        }),
        ("C_SetOperationState", |fx, h| {
            call!(fx, C_SetOperationState, h, null_mut(), 4, 0, 0)
        }),
        ("C_Login", |fx, h| call!(fx, C_Login, h, CKU_USER, null_mut(), 4)),
        ("C_LoginUser", |fx, h| {
            call!(fx, C_LoginUser, h, CKU_USER, null_mut(), 4, null_mut(), 4)
        }),
        ("C_Logout", |fx, h| call!(fx, C_Logout, h)),
        ("C_CreateObject", |fx, h| {
            call!(fx, C_CreateObject, h, null_mut(), 1, null_mut())
        }),
        ("C_CopyObject", |fx, h| {
            call!(fx, C_CopyObject, h, BOGUS, null_mut(), 1, null_mut())
        }),
        ("C_DestroyObject", |fx, h| call!(fx, C_DestroyObject, h, BOGUS)),
        ("C_GetObjectSize", |fx, h| {
            call!(fx, C_GetObjectSize, h, BOGUS, null_mut())
        }),
        ("C_GetAttributeValue", |fx, h| {
            call!(fx, C_GetAttributeValue, h, BOGUS, null_mut(), 1)
        }),
        ("C_SetAttributeValue", |fx, h| {
            call!(fx, C_SetAttributeValue, h, BOGUS, null_mut(), 1)
        }),
        ("C_FindObjectsInit", |fx, h| {
            call!(fx, C_FindObjectsInit, h, null_mut(), 1)
        }),
        ("C_FindObjects", |fx, h| {
            call!(fx, C_FindObjects, h, null_mut(), 1, null_mut())
        }),
        ("C_FindObjectsFinal", |fx, h| call!(fx, C_FindObjectsFinal, h)),
        ("C_EncryptInit", |fx, h| {
            call!(fx, C_EncryptInit, h, &mut mech(BAD_MECH), BOGUS)
        }),
        ("C_Encrypt", |fx, h| {
            call!(fx, C_Encrypt, h, null_mut(), 1, null_mut(), null_mut())
        }),
        ("C_EncryptUpdate", |fx, h| {
            call!(fx, C_EncryptUpdate, h, null_mut(), 1, null_mut(), null_mut())
        }),
        ("C_EncryptFinal", |fx, h| {
            call!(fx, C_EncryptFinal, h, null_mut(), null_mut())
        }),
        ("C_DecryptInit", |fx, h| {
            call!(fx, C_DecryptInit, h, &mut mech(BAD_MECH), BOGUS)
        }),
        ("C_Decrypt", |fx, h| {
            call!(fx, C_Decrypt, h, null_mut(), 1, null_mut(), null_mut())
        }),
        ("C_DecryptUpdate", |fx, h| {
            call!(fx, C_DecryptUpdate, h, null_mut(), 1, null_mut(), null_mut())
        }),
        ("C_DecryptFinal", |fx, h| {
            call!(fx, C_DecryptFinal, h, null_mut(), null_mut())
        }),
        ("C_DigestInit", |fx, h| {
            call!(fx, C_DigestInit, h, &mut mech(BAD_MECH))
        }),
        ("C_Digest", |fx, h| {
            call!(fx, C_Digest, h, null_mut(), 1, null_mut(), null_mut())
        }),
        ("C_DigestUpdate", |fx, h| {
            call!(fx, C_DigestUpdate, h, null_mut(), 1)
        }),
        ("C_DigestKey", |fx, h| call!(fx, C_DigestKey, h, BOGUS)),
        ("C_DigestFinal", |fx, h| {
            call!(fx, C_DigestFinal, h, null_mut(), null_mut())
        }),
        ("C_SignInit", |fx, h| {
            call!(fx, C_SignInit, h, &mut mech(BAD_MECH), BOGUS)
        }),
        ("C_Sign", |fx, h| {
            call!(fx, C_Sign, h, null_mut(), 1, null_mut(), null_mut())
        }),
        ("C_SignUpdate", |fx, h| call!(fx, C_SignUpdate, h, null_mut(), 1)),
        ("C_SignFinal", |fx, h| {
            call!(fx, C_SignFinal, h, null_mut(), null_mut())
        }),
        ("C_SignRecoverInit", |fx, h| {
            call!(fx, C_SignRecoverInit, h, &mut mech(BAD_MECH), BOGUS)
        }),
        ("C_SignRecover", |fx, h| {
            call!(fx, C_SignRecover, h, null_mut(), 1, null_mut(), null_mut())
        }),
        ("C_VerifyInit", |fx, h| {
            call!(fx, C_VerifyInit, h, &mut mech(BAD_MECH), BOGUS)
        }),
        ("C_Verify", |fx, h| {
            call!(fx, C_Verify, h, null_mut(), 1, null_mut(), 1)
        }),
        ("C_VerifyUpdate", |fx, h| {
            call!(fx, C_VerifyUpdate, h, null_mut(), 1)
        }),
        ("C_VerifyFinal", |fx, h| {
            call!(fx, C_VerifyFinal, h, null_mut(), 1)
        }),
        ("C_VerifyRecoverInit", |fx, h| {
            call!(fx, C_VerifyRecoverInit, h, &mut mech(BAD_MECH), BOGUS)
        }),
        ("C_VerifyRecover", |fx, h| {
            call!(fx, C_VerifyRecover, h, null_mut(), 1, null_mut(), null_mut())
        }),
        ("C_DigestEncryptUpdate", |fx, h| {
            call!(
                fx,
                C_DigestEncryptUpdate,
                h,
                null_mut(),
                1,
                null_mut(),
                null_mut()
            )
        }),
        ("C_DecryptDigestUpdate", |fx, h| {
            call!(
                fx,
                C_DecryptDigestUpdate,
                h,
                null_mut(),
                1,
                null_mut(),
                null_mut()
            )
        }),
        ("C_SignEncryptUpdate", |fx, h| {
            call!(fx, C_SignEncryptUpdate, h, null_mut(), 1, null_mut(), null_mut())
        }),
        ("C_DecryptVerifyUpdate", |fx, h| {
            call!(
                fx,
                C_DecryptVerifyUpdate,
                h,
                null_mut(),
                1,
                null_mut(),
                null_mut()
            )
        }),
        ("C_GenerateKey", |fx, h| {
            call!(
                fx,
                C_GenerateKey,
                h,
                &mut mech(BAD_MECH),
                null_mut(),
                1,
                null_mut()
            )
        }),
        ("C_GenerateKeyPair", |fx, h| {
            call!(
                fx,
                C_GenerateKeyPair,
                h,
                &mut mech(BAD_MECH),
                null_mut(),
                1,
                null_mut(),
                1,
                null_mut(),
                null_mut()
            )
        }),
        ("C_WrapKey", |fx, h| {
            call!(
                fx,
                C_WrapKey,
                h,
                &mut mech(BAD_MECH),
                BOGUS,
                BOGUS,
                null_mut(),
                null_mut()
            )
        }),
        ("C_UnwrapKey", |fx, h| {
            call!(
                fx,
                C_UnwrapKey,
                h,
                &mut mech(BAD_MECH),
                BOGUS,
                null_mut(),
                1,
                null_mut(),
                1,
                null_mut()
            )
        }),
        ("C_DeriveKey", |fx, h| {
            call!(
                fx,
                C_DeriveKey,
                h,
                &mut mech(BAD_MECH),
                BOGUS,
                null_mut(),
                1,
                null_mut()
            )
        }),
        ("C_SeedRandom", |fx, h| call!(fx, C_SeedRandom, h, null_mut(), 1)),
        ("C_GenerateRandom", |fx, h| {
            call!(fx, C_GenerateRandom, h, null_mut(), 1)
        }),
        ("C_GetFunctionStatus", |fx, h| call!(fx, C_GetFunctionStatus, h)),
        ("C_CancelFunction", |fx, h| call!(fx, C_CancelFunction, h)),
        ("C_MessageEncryptInit", |fx, h| {
            call!(fx, C_MessageEncryptInit, h, &mut mech(BAD_MECH), BOGUS)
        }),
        ("C_EncryptMessage", |fx, h| {
            call!(
                fx,
                C_EncryptMessage,
                h,
                null_mut(),
                1,
                null_mut(),
                1,
                null_mut(),
                1,
                null_mut(),
                null_mut()
            )
        }),
        ("C_EncryptMessageBegin", |fx, h| {
            call!(fx, C_EncryptMessageBegin, h, null_mut(), 1, null_mut(), 1)
        }),
        ("C_EncryptMessageNext", |fx, h| {
            call!(
                fx,
                C_EncryptMessageNext,
                h,
                null_mut(),
                1,
                null_mut(),
                1,
                null_mut(),
                null_mut(),
                0
            )
        }),
        ("C_MessageEncryptFinal", |fx, h| {
            call!(fx, C_MessageEncryptFinal, h)
        }),
        ("C_MessageDecryptInit", |fx, h| {
            call!(fx, C_MessageDecryptInit, h, &mut mech(BAD_MECH), BOGUS)
        }),
        ("C_DecryptMessage", |fx, h| {
            call!(
                fx,
                C_DecryptMessage,
                h,
                null_mut(),
                1,
                null_mut(),
                1,
                null_mut(),
                1,
                null_mut(),
                null_mut()
            )
        }),
        ("C_DecryptMessageBegin", |fx, h| {
            call!(fx, C_DecryptMessageBegin, h, null_mut(), 1, null_mut(), 1)
        }),
        ("C_DecryptMessageNext", |fx, h| {
            call!(
                fx,
                C_DecryptMessageNext,
                h,
                null_mut(),
                1,
                null_mut(),
                1,
                null_mut(),
                null_mut(),
                0
            )
        }),
        ("C_MessageDecryptFinal", |fx, h| {
            call!(fx, C_MessageDecryptFinal, h)
        }),
        ("C_MessageSignInit", |fx, h| {
            call!(fx, C_MessageSignInit, h, &mut mech(BAD_MECH), BOGUS)
        }),
        ("C_SignMessage", |fx, h| {
            call!(
                fx,
                C_SignMessage,
                h,
                null_mut(),
                1,
                null_mut(),
                1,
                null_mut(),
                null_mut()
            )
        }),
        ("C_SignMessageBegin", |fx, h| {
            call!(fx, C_SignMessageBegin, h, null_mut(), 1)
        }),
        ("C_SignMessageNext", |fx, h| {
            call!(
                fx,
                C_SignMessageNext,
                h,
                null_mut(),
                1,
                null_mut(),
                1,
                null_mut(),
                null_mut()
            )
        }),
        ("C_MessageSignFinal", |fx, h| call!(fx, C_MessageSignFinal, h)),
        ("C_MessageVerifyInit", |fx, h| {
            call!(fx, C_MessageVerifyInit, h, &mut mech(BAD_MECH), BOGUS)
        }),
        ("C_VerifyMessage", |fx, h| {
            call!(
                fx,
                C_VerifyMessage,
                h,
                null_mut(),
                1,
                null_mut(),
                1,
                null_mut(),
                1
            )
        }),
        ("C_VerifyMessageBegin", |fx, h| {
            call!(fx, C_VerifyMessageBegin, h, null_mut(), 1)
        }),
        ("C_VerifyMessageNext", |fx, h| {
            call!(
                fx,
                C_VerifyMessageNext,
                h,
                null_mut(),
                1,
                null_mut(),
                1,
                null_mut(),
                1
            )
        }),
        ("C_MessageVerifyFinal", |fx, h| call!(fx, C_MessageVerifyFinal, h)),
    ]
}

/// Every function that takes a slot id, with `slot` and NULL outputs.
fn slot_functions() -> Vec<(&'static str, OnSlot)> {
    vec![
        ("C_GetSlotInfo", |fx, s| call!(fx, C_GetSlotInfo, s, null_mut())),
        ("C_GetTokenInfo", |fx, s| call!(fx, C_GetTokenInfo, s, null_mut())),
        ("C_GetMechanismList", |fx, s| {
            call!(fx, C_GetMechanismList, s, null_mut(), null_mut())
        }),
        ("C_GetMechanismInfo", |fx, s| {
            call!(fx, C_GetMechanismInfo, s, BAD_MECH, null_mut())
        }),
        ("C_InitToken", |fx, s| {
            call!(fx, C_InitToken, s, null_mut(), 4, null_mut())
        }),
        ("C_OpenSession", |fx, s| {
            call!(fx, C_OpenSession, s, 0, null_mut(), None, null_mut())
        }),
        ("C_CloseAllSessions", |fx, s| call!(fx, C_CloseAllSessions, s)),
    ]
}

/// Functions that are not offered: with a valid session they say so (after
/// the session check, before looking at their arguments).
const NOT_OFFERED: &[&str] = &[
    "C_GetOperationState",
    "C_SetOperationState",
    "C_SignRecoverInit",
    "C_SignRecover",
    "C_VerifyRecoverInit",
    "C_VerifyRecover",
    "C_DigestEncryptUpdate",
    "C_DecryptDigestUpdate",
    "C_SignEncryptUpdate",
    "C_DecryptVerifyUpdate",
    "C_MessageEncryptInit",
    "C_EncryptMessage",
    "C_EncryptMessageBegin",
    "C_EncryptMessageNext",
    "C_MessageEncryptFinal",
    "C_MessageDecryptInit",
    "C_DecryptMessage",
    "C_DecryptMessageBegin",
    "C_DecryptMessageNext",
    "C_MessageDecryptFinal",
    "C_MessageSignInit",
    "C_SignMessage",
    "C_SignMessageBegin",
    "C_SignMessageNext",
    "C_MessageSignFinal",
    "C_MessageVerifyInit",
    "C_VerifyMessage",
    "C_VerifyMessageBegin",
    "C_VerifyMessageNext",
    "C_MessageVerifyFinal",
];

/// What each session function answers with a valid read/write public
/// session and the faulty arguments of [`session_functions`].
fn with_valid_session(name: &str) -> CK_RV {
    match name {
        n if NOT_OFFERED.contains(&n) => CKR_FUNCTION_NOT_SUPPORTED,
        "C_GetFunctionStatus" | "C_CancelFunction" => CKR_FUNCTION_NOT_PARALLEL,
        // No pointer arguments: the next check decides.
        "C_SessionCancel" => CKR_OK,
        "C_Logout" => CKR_USER_NOT_LOGGED_IN,
        "C_DestroyObject" => CKR_OBJECT_HANDLE_INVALID,
        "C_FindObjectsFinal" | "C_DigestKey" => CKR_OPERATION_NOT_INITIALIZED,
        // An unknown mechanism, and a pointer-free call otherwise.
        "C_EncryptInit" | "C_DecryptInit" | "C_DigestInit" | "C_SignInit" | "C_VerifyInit" => {
            CKR_MECHANISM_INVALID
        }
        _ => CKR_ARGUMENTS_BAD,
    }
}

fn cases() -> Vec<Case> {
    use Phase::*;
    let mut v = Vec::new();

    // ---- before C_Initialize: every function but the three that hand out
    // the function lists answers CKR_CRYPTOKI_NOT_INITIALIZED, whatever else
    // is wrong with the call.
    for (name, f) in session_functions() {
        v.push(case(
            NotInitialized,
            name,
            CKR_CRYPTOKI_NOT_INITIALIZED,
            move |fx| f(fx, BAD_SESSION),
        ));
    }
    for (name, f) in slot_functions() {
        v.push(case(
            NotInitialized,
            name,
            CKR_CRYPTOKI_NOT_INITIALIZED,
            move |fx| f(fx, BAD_SLOT),
        ));
    }
    v.push(case(
        NotInitialized,
        "C_EncryptInit with a bad parameter",
        CKR_CRYPTOKI_NOT_INITIALIZED,
        |fx| {
            let mut m = CK_MECHANISM {
                mechanism: CKM_AES_CBC,
                pParameter: null_mut(),
                ulParameterLen: 16,
            };
            call!(fx, C_EncryptInit, 1, &mut m, 1)
        },
    ));
    v.push(case(
        NotInitialized,
        "C_GetInfo",
        CKR_CRYPTOKI_NOT_INITIALIZED,
        |fx| call!(fx, C_GetInfo, null_mut()),
    ));
    v.push(case(
        NotInitialized,
        "C_GetSlotList",
        CKR_CRYPTOKI_NOT_INITIALIZED,
        |fx| call!(fx, C_GetSlotList, 0, null_mut(), null_mut()),
    ));
    v.push(case(
        NotInitialized,
        "C_WaitForSlotEvent",
        CKR_CRYPTOKI_NOT_INITIALIZED,
        |fx| call!(fx, C_WaitForSlotEvent, CKF_DONT_BLOCK, null_mut(), null_mut()),
    ));
    v.push(case(
        NotInitialized,
        "C_Finalize",
        CKR_CRYPTOKI_NOT_INITIALIZED,
        |fx| call!(fx, C_Finalize, std::ptr::dangling_mut()),
    ));
    v.push(case(NotInitialized, "C_GetFunctionList works", CKR_OK, |fx| {
        let mut l = null_mut();
        call!(fx, C_GetFunctionList, &mut l)
    }));
    v.push(case(NotInitialized, "C_GetInterfaceList works", CKR_OK, |fx| {
        let mut n = 0;
        call!(fx, C_GetInterfaceList, null_mut(), &mut n)
    }));
    v.push(case(NotInitialized, "C_GetInterface works", CKR_OK, |fx| {
        let mut i = null_mut();
        call!(fx, C_GetInterface, null_mut(), null_mut(), &mut i, 0)
    }));

    // ---- any session: a bad session handle comes before NULL arguments and
    // unknown mechanisms; NULL arguments before mechanisms and objects.
    for (name, f) in session_functions() {
        v.push(case(AnySession, name, CKR_SESSION_HANDLE_INVALID, move |fx| {
            f(fx, BAD_SESSION)
        }));
    }
    for (name, f) in slot_functions() {
        v.push(case(AnySession, name, CKR_SLOT_ID_INVALID, move |fx| {
            f(fx, BAD_SLOT)
        }));
    }
    for (name, f) in session_functions() {
        if name == "C_CloseSession" {
            continue; // it would close `rw`; see "C_CloseSession of a fresh session"
        }
        v.push(case(AnySession, name, with_valid_session(name), move |fx| {
            f(fx, fx.rw)
        }));
    }
    for (name, f) in slot_functions() {
        let want = match name {
            "C_CloseAllSessions" => continue,
            _ => CKR_ARGUMENTS_BAD,
        };
        v.push(case(AnySession, name, want, move |fx| f(fx, fx.slot)));
    }
    v.push(case(AnySession, "C_GetInfo(NULL)", CKR_ARGUMENTS_BAD, |fx| {
        call!(fx, C_GetInfo, null_mut())
    }));
    v.push(case(
        AnySession,
        "C_GetSlotList(NULL count)",
        CKR_ARGUMENTS_BAD,
        |fx| call!(fx, C_GetSlotList, 0, null_mut(), null_mut()),
    ));
    v.push(case(
        AnySession,
        "C_GetFunctionList(NULL)",
        CKR_ARGUMENTS_BAD,
        |fx| call!(fx, C_GetFunctionList, null_mut()),
    ));
    v.push(case(
        AnySession,
        "C_GetInterfaceList(NULL count)",
        CKR_ARGUMENTS_BAD,
        |fx| call!(fx, C_GetInterfaceList, null_mut(), null_mut()),
    ));
    v.push(case(
        AnySession,
        "C_GetInterface(NULL out)",
        CKR_ARGUMENTS_BAD,
        |fx| call!(fx, C_GetInterface, null_mut(), null_mut(), null_mut(), 0),
    ));
    v.push(case(
        AnySession,
        "C_WaitForSlotEvent(NULL slot)",
        CKR_ARGUMENTS_BAD,
        |fx| call!(fx, C_WaitForSlotEvent, CKF_DONT_BLOCK, null_mut(), null_mut()),
    ));
    v.push(case(
        AnySession,
        "C_Finalize(reserved)",
        CKR_ARGUMENTS_BAD,
        |fx| call!(fx, C_Finalize, std::ptr::dangling_mut()),
    ));
    v.push(case(
        AnySession,
        "C_GenerateKey NULL mechanism",
        CKR_ARGUMENTS_BAD,
        |fx| {
            let a = aes_key(false, None, true);
            let mut t = tmpl(&a);
            let mut o = 0;
            call!(
                fx,
                C_GenerateKey,
                fx.rw,
                null_mut(),
                t.as_mut_ptr(),
                t.len() as CK_ULONG,
                &mut o
            )
        },
    ));
    v.push(case(
        AnySession,
        "C_GenerateKey NULL key out",
        CKR_ARGUMENTS_BAD,
        |fx| {
            let a = aes_key(false, None, true);
            let mut t = tmpl(&a);
            call!(
                fx,
                C_GenerateKey,
                fx.rw,
                &mut mech(CKM_AES_KEY_GEN),
                t.as_mut_ptr(),
                t.len() as CK_ULONG,
                null_mut()
            )
        },
    ));
    v.push(case(
        AnySession,
        "C_GenerateKey NULL template, count 1",
        CKR_ARGUMENTS_BAD,
        |fx| {
            let mut o = 0;
            call!(
                fx,
                C_GenerateKey,
                fx.rw,
                &mut mech(CKM_AES_KEY_GEN),
                null_mut(),
                1,
                &mut o
            )
        },
    ));
    v.push(case(
        AnySession,
        "C_CreateObject NULL handle out",
        CKR_ARGUMENTS_BAD,
        |fx| {
            let a = data_object(false, false);
            let mut t = tmpl(&a);
            call!(
                fx,
                C_CreateObject,
                fx.rw,
                t.as_mut_ptr(),
                t.len() as CK_ULONG,
                null_mut()
            )
        },
    ));
    v.push(case(
        AnySession,
        "C_OpenSession NULL out, no serial flag",
        CKR_ARGUMENTS_BAD,
        |fx| call!(fx, C_OpenSession, fx.slot, 0, null_mut(), None, null_mut()),
    ));
    v.push(case(
        AnySession,
        "C_OpenSession without CKF_SERIAL_SESSION",
        CKR_SESSION_PARALLEL_NOT_SUPPORTED,
        |fx| {
            let mut h = 0;
            call!(fx, C_OpenSession, fx.slot, 0, null_mut(), None, &mut h)
        },
    ));
    v.push(case(
        AnySession,
        "C_FindObjects NULL count",
        CKR_ARGUMENTS_BAD,
        |fx| {
            let mut objs = [0; 4];
            call!(fx, C_FindObjects, fx.rw, objs.as_mut_ptr(), 4, null_mut())
        },
    ));
    v.push(case(
        AnySession,
        "C_Sign with data, NULL length",
        CKR_ARGUMENTS_BAD,
        |fx| {
            call!(
                fx,
                C_Sign,
                fx.rw,
                b"x".as_ptr() as *mut u8,
                1,
                null_mut(),
                null_mut()
            )
        },
    ));
    // Mechanisms, then keys.
    let bad_mech_inits: [(&'static str, WithMechanism); 5] = [
        ("C_EncryptInit bad mechanism, bogus key", |fx, m| {
            call!(fx, C_EncryptInit, fx.rw, m, BOGUS)
        }),
        ("C_DecryptInit bad mechanism, bogus key", |fx, m| {
            call!(fx, C_DecryptInit, fx.rw, m, BOGUS)
        }),
        ("C_SignInit bad mechanism, bogus key", |fx, m| {
            call!(fx, C_SignInit, fx.rw, m, BOGUS)
        }),
        ("C_VerifyInit bad mechanism, bogus key", |fx, m| {
            call!(fx, C_VerifyInit, fx.rw, m, BOGUS)
        }),
        ("C_DigestInit bad mechanism", |fx, m| {
            call!(fx, C_DigestInit, fx.rw, m)
        }),
    ];
    for (name, f) in bad_mech_inits {
        v.push(case(AnySession, name, CKR_MECHANISM_INVALID, move |fx| {
            f(fx, &mut mech(BAD_MECH))
        }));
    }
    v.push(case(
        AnySession,
        "C_DigestInit with a signing mechanism",
        CKR_MECHANISM_INVALID,
        |fx| call!(fx, C_DigestInit, fx.rw, &mut mech(CKM_ECDSA)),
    ));
    v.push(case(
        AnySession,
        "C_EncryptInit short IV, bogus key",
        CKR_MECHANISM_PARAM_INVALID,
        |fx| {
            let mut iv = [0u8; 3];
            let mut m = CK_MECHANISM {
                mechanism: CKM_AES_CBC,
                pParameter: iv.as_mut_ptr() as *mut _,
                ulParameterLen: 3,
            };
            call!(fx, C_EncryptInit, fx.rw, &mut m, BOGUS)
        },
    ));
    v.push(case(
        AnySession,
        "C_EncryptInit bogus key",
        CKR_KEY_HANDLE_INVALID,
        |fx| call!(fx, C_EncryptInit, fx.rw, &mut mech(CKM_AES_ECB), BOGUS),
    ));
    v.push(case(
        AnySession,
        "C_SignInit bogus key",
        CKR_KEY_HANDLE_INVALID,
        |fx| call!(fx, C_SignInit, fx.rw, &mut mech(CKM_ECDSA_SHA256), BOGUS),
    ));
    v.push(case(
        AnySession,
        "C_GenerateKey bad mechanism",
        CKR_MECHANISM_INVALID,
        |fx| {
            let a = aes_key(false, Some(false), true);
            let mut t = tmpl(&a);
            let mut o = 0;
            call!(
                fx,
                C_GenerateKey,
                fx.rw,
                &mut mech(BAD_MECH),
                t.as_mut_ptr(),
                t.len() as CK_ULONG,
                &mut o
            )
        },
    ));
    v.push(case(
        AnySession,
        "C_GenerateKey with a key-pair mechanism",
        CKR_MECHANISM_INVALID,
        |fx| {
            let a = aes_key(false, Some(false), true);
            let mut t = tmpl(&a);
            let mut o = 0;
            call!(
                fx,
                C_GenerateKey,
                fx.rw,
                &mut mech(CKM_EC_KEY_PAIR_GEN),
                t.as_mut_ptr(),
                t.len() as CK_ULONG,
                &mut o
            )
        },
    ));
    v.push(case(
        AnySession,
        "C_GenerateKeyPair bad mechanism",
        CKR_MECHANISM_INVALID,
        |fx| {
            let (mut p, mut s) = (0, 0);
            call!(
                fx,
                C_GenerateKeyPair,
                fx.rw,
                &mut mech(BAD_MECH),
                null_mut(),
                0,
                null_mut(),
                0,
                &mut p,
                &mut s
            )
        },
    ));
    v.push(case(
        AnySession,
        "C_WrapKey bad mechanism",
        CKR_MECHANISM_INVALID,
        |fx| {
            let mut n = 0;
            call!(
                fx,
                C_WrapKey,
                fx.rw,
                &mut mech(BAD_MECH),
                BOGUS,
                BOGUS,
                null_mut(),
                &mut n
            )
        },
    ));
    v.push(case(
        AnySession,
        "C_WrapKey bogus wrapping key",
        CKR_WRAPPING_KEY_HANDLE_INVALID,
        |fx| {
            let mut n = 0;
            call!(
                fx,
                C_WrapKey,
                fx.rw,
                &mut mech(CKM_AES_KEY_WRAP),
                BOGUS,
                BOGUS,
                null_mut(),
                &mut n
            )
        },
    ));
    v.push(case(
        AnySession,
        "C_UnwrapKey bad mechanism",
        CKR_MECHANISM_INVALID,
        |fx| {
            let w = [0u8; 24];
            let mut o = 0;
            call!(
                fx,
                C_UnwrapKey,
                fx.rw,
                &mut mech(BAD_MECH),
                BOGUS,
                w.as_ptr() as *mut u8,
                24,
                null_mut(),
                0,
                &mut o
            )
        },
    ));
    v.push(case(
        AnySession,
        "C_UnwrapKey bogus unwrapping key",
        CKR_UNWRAPPING_KEY_HANDLE_INVALID,
        |fx| {
            let w = [0u8; 24];
            let mut o = 0;
            call!(
                fx,
                C_UnwrapKey,
                fx.rw,
                &mut mech(CKM_AES_KEY_WRAP),
                BOGUS,
                w.as_ptr() as *mut u8,
                24,
                null_mut(),
                0,
                &mut o
            )
        },
    ));
    v.push(case(
        AnySession,
        "C_DeriveKey bad mechanism",
        CKR_MECHANISM_INVALID,
        |fx| {
            let mut o = 0;
            call!(
                fx,
                C_DeriveKey,
                fx.rw,
                &mut mech(BAD_MECH),
                BOGUS,
                null_mut(),
                0,
                &mut o
            )
        },
    ));
    v.push(case(
        AnySession,
        "C_GetMechanismInfo bad mechanism",
        CKR_MECHANISM_INVALID,
        |fx| {
            // SAFETY: CK_MECHANISM_INFO is plain data.
            let mut i: CK_MECHANISM_INFO = unsafe { std::mem::zeroed() };
            call!(fx, C_GetMechanismInfo, fx.slot, BAD_MECH, &mut i)
        },
    ));
    v.push(case(
        AnySession,
        "C_GetAttributeValue bogus object",
        CKR_OBJECT_HANDLE_INVALID,
        |fx| {
            let mut t = [CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: null_mut(),
                ulValueLen: 0,
            }];
            call!(fx, C_GetAttributeValue, fx.rw, BOGUS, t.as_mut_ptr(), 1)
        },
    ));
    v.push(case(
        AnySession,
        "C_Encrypt without init",
        CKR_OPERATION_NOT_INITIALIZED,
        |fx| {
            let mut n = 0;
            call!(
                fx,
                C_Encrypt,
                fx.rw,
                b"x".as_ptr() as *mut u8,
                1,
                null_mut(),
                &mut n
            )
        },
    ));
    v.push(case(
        AnySession,
        "C_FindObjects without init",
        CKR_OPERATION_NOT_INITIALIZED,
        |fx| {
            let (mut objs, mut n) = ([0; 4], 0);
            call!(fx, C_FindObjects, fx.rw, objs.as_mut_ptr(), 4, &mut n)
        },
    ));
    v.push(case(
        AnySession,
        "C_Login unknown user type",
        CKR_USER_TYPE_INVALID,
        |fx| {
            call!(
                fx,
                C_Login,
                fx.rw,
                77,
                PIN.as_ptr() as *mut u8,
                PIN.len() as CK_ULONG
            )
        },
    ));
    v.push(case(
        AnySession,
        "C_CloseSession of a fresh session",
        CKR_OK,
        |fx| {
            let mut h = 0;
            let r = call!(
                fx,
                C_OpenSession,
                fx.slot,
                CKF_SERIAL_SESSION | CKF_RW_SESSION,
                null_mut(),
                None,
                &mut h
            );
            if r != CKR_OK {
                return r;
            }
            call!(fx, C_CloseSession, h)
        },
    ));

    // ---- read-only public session: session objects are read/write, token
    // objects read-only; public objects need no login, private ones do.
    v.push(case(RoPublic, "state is CKS_RO_PUBLIC_SESSION", CKR_OK, |fx| {
        session_state(fx, fx.ro, CKS_RO_PUBLIC_SESSION)
    }));
    v.push(case(
        RoPublic,
        "create a token object",
        CKR_SESSION_READ_ONLY,
        |fx| create(fx, fx.ro, &data_object(true, false)).map_or_else(|e| e, |_| CKR_OK),
    ));
    v.push(case(
        RoPublic,
        "life of a public session data object",
        CKR_OK,
        |fx| life(fx, fx.ro, || create(fx, fx.ro, &data_object(false, false))),
    ));
    v.push(case(
        RoPublic,
        "create a private session object",
        CKR_USER_NOT_LOGGED_IN,
        |fx| create(fx, fx.ro, &data_object(false, true)).map_or_else(|e| e, |_| CKR_OK),
    ));
    v.push(case(
        RoPublic,
        "generate a token key",
        CKR_SESSION_READ_ONLY,
        |fx| gen_key(fx, fx.ro, &aes_key(true, Some(false), true)).map_or_else(|e| e, |_| CKR_OK),
    ));
    v.push(case(
        RoPublic,
        "generate a session key, private by default",
        CKR_USER_NOT_LOGGED_IN,
        |fx| gen_key(fx, fx.ro, &aes_key(false, None, true)).map_or_else(|e| e, |_| CKR_OK),
    ));
    v.push(case(RoPublic, "life of a public session key", CKR_OK, |fx| {
        life(fx, fx.ro, || {
            gen_key(fx, fx.ro, &aes_key(false, Some(false), true))
        })
    }));
    v.push(case(RoPublic, "a public session key encrypts", CKR_OK, |fx| {
        let k = match gen_key(fx, fx.ro, &aes_key(false, Some(false), true)) {
            Ok(k) => k,
            Err(rv) => return rv,
        };
        let r = call!(fx, C_EncryptInit, fx.ro, &mut mech(CKM_AES_ECB), k);
        if r != CKR_OK {
            return r;
        }
        let (mut out, mut n) = ([0u8; 16], 16);
        let r = call!(
            fx,
            C_Encrypt,
            fx.ro,
            [7u8; 16].as_ptr() as *mut u8,
            16,
            out.as_mut_ptr(),
            &mut n
        );
        if r != CKR_OK {
            return r;
        }
        destroy(fx, fx.ro, k)
    }));
    v.push(case(
        RoPublic,
        "a public session key pair",
        CKR_OK,
        |fx| match gen_pair(fx, fx.ro, false, Some(false), true) {
            Ok((p, s)) => ok(destroy(fx, fx.ro, p))
                .and(ok(destroy(fx, fx.ro, s)))
                .map_or_else(|e| e, |_| CKR_OK),
            Err(rv) => rv,
        },
    ));
    v.push(case(
        RoPublic,
        "key pair private by default",
        CKR_USER_NOT_LOGGED_IN,
        |fx| gen_pair(fx, fx.ro, false, None, true).map_or_else(|e| e, |_| CKR_OK),
    ));
    v.push(case(
        RoPublic,
        "incomplete key pair, private by default: login first",
        CKR_USER_NOT_LOGGED_IN,
        |fx| gen_pair(fx, fx.ro, false, None, false).map_or_else(|e| e, |_| CKR_OK),
    ));
    v.push(case(
        RoPublic,
        "incomplete public key pair: the template",
        CKR_TEMPLATE_INCOMPLETE,
        |fx| gen_pair(fx, fx.ro, false, Some(false), false).map_or_else(|e| e, |_| CKR_OK),
    ));
    v.push(case(
        RoPublic,
        "unknown attribute, private by default: login first",
        CKR_USER_NOT_LOGGED_IN,
        |fx| {
            let mut a = aes_key(false, None, true);
            a.push(Attribute::VendorDefined((
                AttributeType::VendorDefined(0x8000_4321),
                vec![1],
            )));
            gen_key(fx, fx.ro, &a).map_or_else(|e| e, |_| CKR_OK)
        },
    ));
    v.push(case(
        RoPublic,
        "unknown attribute in a public key's template",
        CKR_ATTRIBUTE_TYPE_INVALID,
        |fx| {
            let mut a = aes_key(false, Some(false), true);
            a.push(Attribute::VendorDefined((
                AttributeType::VendorDefined(0x8000_4321),
                vec![1],
            )));
            gen_key(fx, fx.ro, &a).map_or_else(|e| e, |_| CKR_OK)
        },
    ));
    v.push(case(RoPublic, "C_SetPIN", CKR_SESSION_READ_ONLY, |fx| {
        let new = b"other-pin-42";
        call!(
            fx,
            C_SetPIN,
            fx.ro,
            PIN.as_ptr() as *mut u8,
            PIN.len() as CK_ULONG,
            new.as_ptr() as *mut u8,
            12
        )
    }));
    v.push(case(RoPublic, "C_InitPIN", CKR_USER_NOT_LOGGED_IN, |fx| {
        call!(
            fx,
            C_InitPIN,
            fx.ro,
            PIN.as_ptr() as *mut u8,
            PIN.len() as CK_ULONG
        )
    }));
    v.push(case(RoPublic, "C_Logout", CKR_USER_NOT_LOGGED_IN, |fx| {
        call!(fx, C_Logout, fx.ro)
    }));
    v.push(case(
        RoPublic,
        "C_Login as SO with a read-only session open",
        CKR_SESSION_READ_ONLY_EXISTS,
        |fx| {
            call!(
                fx,
                C_Login,
                fx.rw,
                CKU_SO,
                PIN.as_ptr() as *mut u8,
                PIN.len() as CK_ULONG
            )
        },
    ));
    v.push(case(RoPublic, "C_SeedRandom with data", CKR_OK, |fx| {
        call!(fx, C_SeedRandom, fx.ro, b"some seed".as_ptr() as *mut u8, 9)
    }));
    v.push(case(RoPublic, "C_SeedRandom(NULL, 1)", CKR_ARGUMENTS_BAD, |fx| {
        call!(fx, C_SeedRandom, fx.ro, null_mut(), 1)
    }));
    v.push(case(RoPublic, "C_GenerateRandom", CKR_OK, |fx| {
        let mut b = [0u8; 32];
        call!(fx, C_GenerateRandom, fx.ro, b.as_mut_ptr(), 32)
    }));
    v.push(case(RoPublic, "C_DigestInit and C_Digest", CKR_OK, |fx| {
        let r = call!(fx, C_DigestInit, fx.ro, &mut mech(CKM_SHA256));
        if r != CKR_OK {
            return r;
        }
        let (mut out, mut n) = ([0u8; 32], 32);
        call!(
            fx,
            C_Digest,
            fx.ro,
            b"abc".as_ptr() as *mut u8,
            3,
            out.as_mut_ptr(),
            &mut n
        )
    }));
    v.push(case(RoPublic, "a search", CKR_OK, |fx| {
        let r = call!(fx, C_FindObjectsInit, fx.ro, null_mut(), 0);
        if r != CKR_OK {
            return r;
        }
        let (mut objs, mut n) = ([0; 8], 0);
        let r = call!(fx, C_FindObjects, fx.ro, objs.as_mut_ptr(), 8, &mut n);
        if r != CKR_OK {
            return r;
        }
        call!(fx, C_FindObjectsFinal, fx.ro)
    }));
    v.push(case(
        RoPublic,
        "C_FindObjectsInit twice",
        CKR_OPERATION_ACTIVE,
        |fx| {
            let r = call!(fx, C_FindObjectsInit, fx.ro, null_mut(), 0);
            if r != CKR_OK {
                return r;
            }
            let again = call!(fx, C_FindObjectsInit, fx.ro, null_mut(), 0);
            call!(fx, C_FindObjectsFinal, fx.ro);
            again
        },
    ));

    // ---- read/write public session: public token objects too.
    v.push(case(RwPublic, "state is CKS_RW_PUBLIC_SESSION", CKR_OK, |fx| {
        session_state(fx, fx.rw, CKS_RW_PUBLIC_SESSION)
    }));
    v.push(case(
        RwPublic,
        "life of a public token data object",
        CKR_OK,
        |fx| life(fx, fx.rw, || create(fx, fx.rw, &data_object(true, false))),
    ));
    v.push(case(
        RwPublic,
        "life of a public session data object",
        CKR_OK,
        |fx| life(fx, fx.rw, || create(fx, fx.rw, &data_object(false, false))),
    ));
    v.push(case(
        RwPublic,
        "create a private token object",
        CKR_USER_NOT_LOGGED_IN,
        |fx| create(fx, fx.rw, &data_object(true, true)).map_or_else(|e| e, |_| CKR_OK),
    ));
    v.push(case(RwPublic, "life of a public token key", CKR_OK, |fx| {
        life(fx, fx.rw, || {
            gen_key(fx, fx.rw, &aes_key(true, Some(false), true))
        })
    }));
    v.push(case(RwPublic, "life of a public session key", CKR_OK, |fx| {
        life(fx, fx.rw, || {
            gen_key(fx, fx.rw, &aes_key(false, Some(false), true))
        })
    }));
    v.push(case(
        RwPublic,
        "a public object cannot be made private without login",
        CKR_USER_NOT_LOGGED_IN,
        |fx| {
            let o = match create(fx, fx.rw, &data_object(false, false)) {
                Ok(o) => o,
                Err(rv) => return rv,
            };
            let a = [Attribute::Private(true)];
            let mut t = tmpl(&a);
            let mut n = 0;
            let r = call!(fx, C_CopyObject, fx.rw, o, t.as_mut_ptr(), 1, &mut n);
            destroy(fx, fx.rw, o);
            r
        },
    ));
    v.push(case(
        RwPublic,
        "wrap and unwrap public session keys",
        CKR_OK,
        |fx| wrap_unwrap(fx, Some(false)),
    ));
    v.push(case(
        RwPublic,
        "unwrap a key private by default",
        CKR_USER_NOT_LOGGED_IN,
        |fx| wrap_unwrap(fx, None),
    ));
    v.push(case(RwPublic, "C_InitPIN", CKR_USER_NOT_LOGGED_IN, |fx| {
        call!(
            fx,
            C_InitPIN,
            fx.rw,
            PIN.as_ptr() as *mut u8,
            PIN.len() as CK_ULONG
        )
    }));

    v.extend(public_derive_cases());

    // ---- a user session (logged in through `rw`; the login is the token's,
    // so `ro` is a read-only user session).
    v.push(case(User, "C_Login as the user", CKR_OK, |fx| {
        call!(
            fx,
            C_Login,
            fx.rw,
            CKU_USER,
            PIN.as_ptr() as *mut u8,
            PIN.len() as CK_ULONG
        )
    }));
    v.push(case(User, "state is CKS_RW_USER_FUNCTIONS", CKR_OK, |fx| {
        session_state(fx, fx.rw, CKS_RW_USER_FUNCTIONS)
    }));
    v.push(case(User, "state is CKS_RO_USER_FUNCTIONS", CKR_OK, |fx| {
        session_state(fx, fx.ro, CKS_RO_USER_FUNCTIONS)
    }));
    v.push(case(User, "C_Login again", CKR_USER_ALREADY_LOGGED_IN, |fx| {
        call!(
            fx,
            C_Login,
            fx.ro,
            CKU_USER,
            PIN.as_ptr() as *mut u8,
            PIN.len() as CK_ULONG
        )
    }));
    v.push(case(
        User,
        "C_Login as SO",
        CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
        |fx| {
            call!(
                fx,
                C_Login,
                fx.rw,
                CKU_SO,
                PIN.as_ptr() as *mut u8,
                PIN.len() as CK_ULONG
            )
        },
    ));
    v.push(case(
        User,
        "create a token object read-only",
        CKR_SESSION_READ_ONLY,
        |fx| create(fx, fx.ro, &data_object(true, true)).map_or_else(|e| e, |_| CKR_OK),
    ));
    v.push(case(User, "life of a private token data object", CKR_OK, |fx| {
        life(fx, fx.rw, || create(fx, fx.rw, &data_object(true, true)))
    }));
    v.push(case(User, "life of a private session key", CKR_OK, |fx| {
        life(fx, fx.ro, || gen_key(fx, fx.ro, &aes_key(false, None, true)))
    }));
    v.push(case(
        User,
        "C_EncryptInit with a signing mechanism",
        CKR_MECHANISM_INVALID,
        |fx| {
            let k = match gen_key(fx, fx.rw, &aes_key(false, None, true)) {
                Ok(k) => k,
                Err(rv) => return rv,
            };
            let r = call!(fx, C_EncryptInit, fx.rw, &mut mech(CKM_ECDSA), k);
            destroy(fx, fx.rw, k);
            r
        },
    ));
    v.push(case(
        User,
        "C_EncryptInit AES with an EC key",
        CKR_KEY_TYPE_INCONSISTENT,
        |fx| {
            let (p, s) = match gen_pair(fx, fx.rw, false, None, true) {
                Ok(k) => k,
                Err(rv) => return rv,
            };
            let r = call!(fx, C_EncryptInit, fx.rw, &mut mech(CKM_AES_ECB), p);
            destroy(fx, fx.rw, p);
            destroy(fx, fx.rw, s);
            r
        },
    ));
    v.push(case(
        User,
        "C_EncryptInit with a key that may not encrypt",
        CKR_KEY_FUNCTION_NOT_PERMITTED,
        |fx| {
            let k = match gen_key(fx, fx.rw, &aes_key(false, None, false)) {
                Ok(k) => k,
                Err(rv) => return rv,
            };
            let r = call!(fx, C_EncryptInit, fx.rw, &mut mech(CKM_AES_ECB), k);
            destroy(fx, fx.rw, k);
            r
        },
    ));
    v.push(case(
        User,
        "C_SignInit with a public key",
        CKR_KEY_FUNCTION_NOT_PERMITTED,
        |fx| {
            let (p, s) = match gen_pair(fx, fx.rw, false, None, true) {
                Ok(k) => k,
                Err(rv) => return rv,
            };
            let r = call!(fx, C_SignInit, fx.rw, &mut mech(CKM_ECDSA_SHA256), p);
            destroy(fx, fx.rw, p);
            destroy(fx, fx.rw, s);
            r
        },
    ));
    v.push(case(
        User,
        "C_WrapKey with an EC wrapping key",
        CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
        |fx| {
            let (p, s) = match gen_pair(fx, fx.rw, false, None, true) {
                Ok(k) => k,
                Err(rv) => return rv,
            };
            let mut n = 0;
            let r = call!(
                fx,
                C_WrapKey,
                fx.rw,
                &mut mech(CKM_AES_KEY_WRAP),
                p,
                s,
                null_mut(),
                &mut n
            );
            destroy(fx, fx.rw, p);
            destroy(fx, fx.rw, s);
            r
        },
    ));
    v.extend(client_template_cases());
    v.extend(digest_key_cases());
    v.push(rsa_1024_case());
    v.push(streaming_case());
    v.extend(size_and_ctr_cases());
    v.push(case(User, "C_SeedRandom(NULL, 1)", CKR_ARGUMENTS_BAD, |fx| {
        call!(fx, C_SeedRandom, fx.rw, null_mut(), 1)
    }));
    v.push(case(User, "C_SeedRandom with data", CKR_OK, |fx| {
        call!(fx, C_SeedRandom, fx.rw, b"more seed".as_ptr() as *mut u8, 9)
    }));
    v.push(case(User, "library version is the release's", CKR_OK, |fx| {
        // SAFETY: CK_INFO is plain data.
        let mut info: CK_INFO = unsafe { std::mem::zeroed() };
        let r = call!(fx, C_GetInfo, &mut info);
        if r != CKR_OK {
            return r;
        }
        let want = release_version();
        let got = (info.libraryVersion.major, info.libraryVersion.minor);
        if got != want {
            eprintln!("library version {got:?}, want {want:?}");
            return WRONG_RESULT;
        }
        CKR_OK
    }));
    v.push(case(User, "C_Logout", CKR_OK, |fx| call!(fx, C_Logout, fx.rw)));
    v.push(case(User, "C_Logout again", CKR_USER_NOT_LOGGED_IN, |fx| {
        call!(fx, C_Logout, fx.rw)
    }));
    v
}

// ------------------------------------ templates real clients send (issue 19) --

const P384: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// An attribute array (`CKA_UNWRAP_TEMPLATE` …) over `inner`, which must
/// outlive the call it is passed to.
fn array_attr(ty: CK_ATTRIBUTE_TYPE, inner: &mut [CK_ATTRIBUTE]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: inner.as_mut_ptr() as *mut std::ffi::c_void,
        ulValueLen: std::mem::size_of_val(inner) as CK_ULONG,
    }
}

/// `C_GenerateKeyPair` with raw templates.
fn gen_pair_raw(
    fx: &Fx,
    m: CK_MECHANISM_TYPE,
    pt: &mut [CK_ATTRIBUTE],
    st: &mut [CK_ATTRIBUTE],
) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE), CK_RV> {
    let mut m = mech(m);
    let (mut p, mut s) = (0, 0);
    match call!(
        fx,
        C_GenerateKeyPair,
        fx.rw,
        &mut m,
        pt.as_mut_ptr(),
        pt.len() as CK_ULONG,
        st.as_mut_ptr(),
        st.len() as CK_ULONG,
        &mut p,
        &mut s
    ) {
        CKR_OK => Ok((p, s)),
        rv => Err(rv),
    }
}

/// A session key pair (`CKA_TOKEN` false) with the usage flags pkcs11-tool,
/// libp11 and pkcs11-provider ask for, whatever the key type can serve.
fn client_pair(
    fx: &Fx,
    m: CK_MECHANISM_TYPE,
    params: Option<&[u8]>,
    extra_private: &mut Vec<CK_ATTRIBUTE>,
) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE), CK_RV> {
    let mut puba = vec![
        Attribute::Token(false),
        Attribute::Verify(true),
        Attribute::Encrypt(true),
        Attribute::Wrap(true),
        Attribute::Derive(true),
        Attribute::Label(b"t22-client".to_vec()),
    ];
    if let Some(p) = params {
        puba.push(Attribute::EcParams(p.to_vec()));
    }
    let priva = vec![
        Attribute::Token(false),
        Attribute::Sign(true),
        Attribute::Decrypt(true),
        Attribute::Unwrap(true),
        Attribute::Derive(true),
        Attribute::Sensitive(true),
        Attribute::Label(b"t22-client".to_vec()),
    ];
    let mut pt = tmpl(&puba);
    let mut st = tmpl(&priva);
    st.append(extra_private);
    gen_pair_raw(fx, m, &mut pt, &mut st)
}

/// One attribute's value (`C_GetAttributeValue`, length first).
fn get_attr(fx: &Fx, o: CK_OBJECT_HANDLE, ty: CK_ATTRIBUTE_TYPE) -> Result<Vec<u8>, CK_RV> {
    let mut a = [CK_ATTRIBUTE {
        type_: ty,
        pValue: null_mut(),
        ulValueLen: 0,
    }];
    ok(call!(fx, C_GetAttributeValue, fx.rw, o, a.as_mut_ptr(), 1))?;
    let mut buf = vec![0u8; a[0].ulValueLen as usize];
    a[0].pValue = buf.as_mut_ptr() as *mut std::ffi::c_void;
    ok(call!(fx, C_GetAttributeValue, fx.rw, o, a.as_mut_ptr(), 1))?;
    buf.truncate(a[0].ulValueLen as usize);
    Ok(buf)
}

/// `CKR_OK` when `o`'s attribute `ty` has the value `want`.
fn expect_attr(fx: &Fx, o: CK_OBJECT_HANDLE, ty: CK_ATTRIBUTE_TYPE, want: &[u8]) -> Result<(), CK_RV> {
    let got = get_attr(fx, o, ty)?;
    if got != want {
        eprintln!("attribute {ty:#x} is {got:02x?}, want {want:02x?}");
        return Err(WRONG_RESULT);
    }
    Ok(())
}

fn result(r: Result<(), CK_RV>) -> CK_RV {
    r.err().unwrap_or(CKR_OK)
}

/// `CK_ECDH1_DERIVE_PARAMS` with `CKD_NULL` over `point`, which must outlive the call.
fn ecdh_params(point: &mut [u8]) -> CK_ECDH1_DERIVE_PARAMS {
    CK_ECDH1_DERIVE_PARAMS {
        kdf: CKD_NULL,
        ulSharedDataLen: 0,
        pSharedData: null_mut(),
        ulPublicDataLen: point.len() as CK_ULONG,
        pPublicData: point.as_mut_ptr(),
    }
}

/// `C_DeriveKey` with `CKM_ECDH1_DERIVE` from `base` and the peer's `point`.
fn ecdh_derive(
    fx: &Fx,
    h: CK_SESSION_HANDLE,
    base: CK_OBJECT_HANDLE,
    point: &mut [u8],
    attrs: &[Attribute],
) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    let mut p = ecdh_params(point);
    let mut m = CK_MECHANISM {
        mechanism: CKM_ECDH1_DERIVE,
        pParameter: &mut p as *mut CK_ECDH1_DERIVE_PARAMS as *mut std::ffi::c_void,
        ulParameterLen: std::mem::size_of::<CK_ECDH1_DERIVE_PARAMS>() as CK_ULONG,
    };
    let mut t = tmpl(attrs);
    let mut o = 0;
    match call!(
        fx,
        C_DeriveKey,
        h,
        &mut m,
        base,
        t.as_mut_ptr(),
        t.len() as CK_ULONG,
        &mut o
    ) {
        CKR_OK => Ok(o),
        rv => Err(rv),
    }
}

/// The raw point inside a DER-wrapped `CKA_EC_POINT` (an OCTET STRING of 65 or 97 bytes).
fn raw_point(der: &[u8]) -> Vec<u8> {
    der[2..].to_vec()
}

/// A KEK that wraps and unwraps, with `CKA_UNWRAP_TEMPLATE` `imposed`; an
/// extractable AES key; the key wrapped under the KEK.
fn kek_and_blob(
    fx: &Fx,
    imposed: &[Attribute],
) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE, Vec<u8>), CK_RV> {
    let mut inner = tmpl(imposed);
    let mut t = tmpl(&[
        Attribute::Token(false),
        Attribute::ValueLen(16.into()),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
    ]);
    t.push(array_attr(CKA_UNWRAP_TEMPLATE, &mut inner));
    let mut m = mech(CKM_AES_KEY_GEN);
    let mut kek = 0;
    ok(call!(
        fx,
        C_GenerateKey,
        fx.rw,
        &mut m,
        t.as_mut_ptr(),
        t.len() as CK_ULONG,
        &mut kek
    ))?;
    let key = gen_key(
        fx,
        fx.rw,
        &[
            Attribute::Token(false),
            Attribute::ValueLen(16.into()),
            Attribute::Extractable(true),
        ],
    )?;
    let mut m = mech(CKM_AES_KEY_WRAP);
    let (mut blob, mut n) = (vec![0u8; 64], 64);
    ok(call!(
        fx,
        C_WrapKey,
        fx.rw,
        &mut m,
        kek,
        key,
        blob.as_mut_ptr(),
        &mut n
    ))?;
    blob.truncate(n as usize);
    Ok((kek, key, blob))
}

fn unwrap_aes(
    fx: &Fx,
    kek: CK_OBJECT_HANDLE,
    blob: &mut [u8],
    attrs: &[Attribute],
) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    let mut m = mech(CKM_AES_KEY_WRAP);
    let mut all = vec![
        Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY),
        Attribute::KeyType(cryptoki::object::KeyType::AES),
        Attribute::Token(false),
    ];
    all.extend_from_slice(attrs);
    let mut t = tmpl(&all);
    let mut o = 0;
    match call!(
        fx,
        C_UnwrapKey,
        fx.rw,
        &mut m,
        kek,
        blob.as_mut_ptr(),
        blob.len() as CK_ULONG,
        t.as_mut_ptr(),
        t.len() as CK_ULONG,
        &mut o
    ) {
        CKR_OK => Ok(o),
        rv => Err(rv),
    }
}

/// A KEK with `CKA_WRAP_TEMPLATE` `wanted` wraps an extractable AES key:
/// the code of `C_WrapKey`.
fn wrap_under_template(fx: &Fx, wanted: &[Attribute]) -> CK_RV {
    let mut inner = tmpl(wanted);
    let mut t = tmpl(&[
        Attribute::Token(false),
        Attribute::ValueLen(16.into()),
        Attribute::Wrap(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
    ]);
    t.push(array_attr(CKA_WRAP_TEMPLATE, &mut inner));
    let mut m = mech(CKM_AES_KEY_GEN);
    let mut kek = 0;
    let r = call!(
        fx,
        C_GenerateKey,
        fx.rw,
        &mut m,
        t.as_mut_ptr(),
        t.len() as CK_ULONG,
        &mut kek
    );
    if r != CKR_OK {
        return r;
    }
    let key = match gen_key(
        fx,
        fx.rw,
        &[
            Attribute::Token(false),
            Attribute::ValueLen(16.into()),
            Attribute::Extractable(true),
        ],
    ) {
        Ok(k) => k,
        Err(rv) => return rv,
    };
    let mut m = mech(CKM_AES_KEY_WRAP);
    let (mut blob, mut n) = ([0u8; 64], 64);
    let r = call!(fx, C_WrapKey, fx.rw, &mut m, kek, key, blob.as_mut_ptr(), &mut n);
    destroy(fx, fx.rw, key);
    destroy(fx, fx.rw, kek);
    r
}

/// `C_SetAttributeValue` on a new AES key of its `CKA_UNWRAP_TEMPLATE`
/// (`array`) or its `CKA_CHECK_VALUE`, which are fixed once it is made.
fn set_after_creation(fx: &Fx, array: bool) -> CK_RV {
    let k = match gen_key(fx, fx.rw, &aes_key(false, None, true)) {
        Ok(k) => k,
        Err(rv) => return rv,
    };
    let mut inner = tmpl(&[Attribute::Sensitive(false)]);
    let mut kcv = [1u8, 2, 3];
    let mut t = [if array {
        array_attr(CKA_UNWRAP_TEMPLATE, &mut inner)
    } else {
        CK_ATTRIBUTE {
            type_: CKA_CHECK_VALUE,
            pValue: kcv.as_mut_ptr() as *mut std::ffi::c_void,
            ulValueLen: 3,
        }
    }];
    let r = call!(fx, C_SetAttributeValue, fx.rw, k, t.as_mut_ptr(), 1);
    destroy(fx, fx.rw, k);
    r
}

/// Every attribute PKCS#11 3.0's common, storage, key and secret-key
/// tables let an application give a new secret key (§4.4, §4.7, §4.10),
/// the attribute arrays included; `CKA_TRUSTED` false (only the SO may set it true).
fn secret_key_table(key_type: cryptoki::object::KeyType) -> Vec<Attribute> {
    let date = cryptoki::types::Date::new_from_str_slice("2026", "01", "01").unwrap();
    let end = cryptoki::types::Date::new_from_str_slice("2036", "12", "31").unwrap();
    vec![
        Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY),
        Attribute::KeyType(key_type),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Modifiable(true),
        Attribute::Copyable(true),
        Attribute::Destroyable(true),
        Attribute::Label(b"t22-table".to_vec()),
        Attribute::Id(vec![0x22, 0x01]),
        Attribute::StartDate(date),
        Attribute::EndDate(end),
        Attribute::Sensitive(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Sign(true),
        Attribute::Verify(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(true),
        Attribute::Extractable(false),
        Attribute::WrapWithTrusted(true),
        Attribute::Trusted(false),
        Attribute::AllowedMechanisms(vec![
            cryptoki::mechanism::MechanismType::AES_CBC_PAD,
            cryptoki::mechanism::MechanismType::SHA256_HMAC,
        ]),
    ]
}

/// [`secret_key_table`] with the three attribute arrays, through `f`.
fn with_arrays(attrs: &[Attribute], f: impl FnOnce(&mut [CK_ATTRIBUTE]) -> CK_RV) -> CK_RV {
    let mut wrap = tmpl(&[Attribute::Extractable(true)]);
    let mut unwrap = tmpl(&[Attribute::Sensitive(true)]);
    let mut derive = tmpl(&[Attribute::Token(false)]);
    let mut t = tmpl(attrs);
    t.push(array_attr(CKA_WRAP_TEMPLATE, &mut wrap));
    t.push(array_attr(CKA_UNWRAP_TEMPLATE, &mut unwrap));
    t.push(array_attr(CKA_DERIVE_TEMPLATE, &mut derive));
    f(&mut t)
}

/// `C_DigestInit(SHA256)`, then `C_DigestUpdate`s and `C_DigestKey`s in order, then `C_DigestFinal`.
fn digest_with_keys(fx: &Fx, parts: &[Result<&[u8], CK_OBJECT_HANDLE>]) -> Result<Vec<u8>, CK_RV> {
    ok(call!(fx, C_DigestInit, fx.rw, &mut mech(CKM_SHA256)))?;
    for part in parts {
        match part {
            Ok(data) => ok(call!(
                fx,
                C_DigestUpdate,
                fx.rw,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG
            ))?,
            Err(key) => ok(call!(fx, C_DigestKey, fx.rw, *key))?,
        }
    }
    let mut out = vec![0u8; 32];
    let mut n = 32;
    ok(call!(fx, C_DigestFinal, fx.rw, out.as_mut_ptr(), &mut n))?;
    out.truncate(n as usize);
    Ok(out)
}

/// In session `h` (public): two public session EC pairs, and a key derived
/// from them with `CKA_PRIVATE` `private`; the code, or `WRONG_RESULT` when
/// the derived key is not the one both sides agree on.
fn public_derive(fx: &Fx, h: CK_SESSION_HANDLE, private: bool) -> CK_RV {
    let steps = || -> Result<(), CK_RV> {
        let (ap, a) = gen_pair_derive(fx, h)?;
        let (bp, b) = gen_pair_derive(fx, h)?;
        let point = |o| -> Result<Vec<u8>, CK_RV> {
            let mut a = [CK_ATTRIBUTE {
                type_: CKA_EC_POINT,
                pValue: null_mut(),
                ulValueLen: 0,
            }];
            ok(call!(fx, C_GetAttributeValue, h, o, a.as_mut_ptr(), 1))?;
            let mut buf = vec![0u8; a[0].ulValueLen as usize];
            a[0].pValue = buf.as_mut_ptr() as *mut std::ffi::c_void;
            ok(call!(fx, C_GetAttributeValue, h, o, a.as_mut_ptr(), 1))?;
            Ok(raw_point(&buf))
        };
        let mut b_point = point(bp)?;
        let template = [
            Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY),
            Attribute::KeyType(cryptoki::object::KeyType::AES),
            Attribute::ValueLen(16.into()),
            Attribute::Token(false),
            Attribute::Private(private),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ];
        let r = ecdh_derive(fx, h, a, &mut b_point, &template);
        for o in [ap, a, bp, b] {
            destroy(fx, h, o);
        }
        let k = r?;
        let r = call!(fx, C_DestroyObject, h, k);
        ok(r)
    };
    steps().err().unwrap_or(CKR_OK)
}

/// A public session EC P-256 pair whose private half derives.
fn gen_pair_derive(fx: &Fx, h: CK_SESSION_HANDLE) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE), CK_RV> {
    let puba = [
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::EcParams(P256.to_vec()),
    ];
    let priva = [
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::Derive(true),
    ];
    let (mut pt, mut st) = (tmpl(&puba), tmpl(&priva));
    let mut m = mech(CKM_EC_KEY_PAIR_GEN);
    let (mut p, mut s) = (0, 0);
    match call!(
        fx,
        C_GenerateKeyPair,
        h,
        &mut m,
        pt.as_mut_ptr(),
        pt.len() as CK_ULONG,
        st.as_mut_ptr(),
        st.len() as CK_ULONG,
        &mut p,
        &mut s
    ) {
        CKR_OK => Ok((p, s)),
        rv => Err(rv),
    }
}

/// C_DeriveKey in public sessions (the public-object rule of
/// `docs/pkcs11.md`): a public session object may be derived from public
/// session keys, in a read-only session too; a private one needs the login.
fn public_derive_cases() -> Vec<Case> {
    use Phase::{RoPublic, RwPublic};
    vec![
        case(
            RwPublic,
            "C_DeriveKey(ECDH1) of a public session key",
            CKR_OK,
            |fx| public_derive(fx, fx.rw, false),
        ),
        case(
            RoPublic,
            "C_DeriveKey(ECDH1) of a public session key",
            CKR_OK,
            |fx| public_derive(fx, fx.ro, false),
        ),
        case(
            RwPublic,
            "C_DeriveKey(ECDH1) of a private key without the login",
            CKR_USER_NOT_LOGGED_IN,
            |fx| public_derive(fx, fx.rw, true),
        ),
    ]
}

fn rsa_1024_case() -> Case {
    case(
        Phase::User,
        "C_GenerateKeyPair(RSA 1024), and the module's log says why",
        CKR_KEY_SIZE_RANGE,
        |fx| {
            let mut m = mech(CKM_RSA_PKCS_KEY_PAIR_GEN);
            let (mut pt, mut st) = (
                tmpl(&[Attribute::Token(false), Attribute::ModulusBits(1024.into())]),
                tmpl(&[Attribute::Token(false)]),
            );
            let (mut p, mut s) = (0, 0);
            let r = call!(
                fx,
                C_GenerateKeyPair,
                fx.rw,
                &mut m,
                pt.as_mut_ptr(),
                pt.len() as CK_ULONG,
                st.as_mut_ptr(),
                st.len() as CK_ULONG,
                &mut p,
                &mut s
            );
            let log = std::env::var_os("HAHSM_PKCS11_LOG")
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default();
            let said = log.lines().any(|l| {
                l.contains("C_GenerateKeyPair") && l.contains("CKR_KEY_SIZE_RANGE") && l.contains("1024")
            });
            if r == CKR_KEY_SIZE_RANGE && !said {
                eprintln!("the module's log does not say why RSA-1024 was refused:\n{log}");
                return WRONG_RESULT;
            }
            r
        },
    )
}

/// Multi-part AES-CBC-PAD in parts of 40, 1 and 100 bytes against the
/// single-part result, on both slots (in the HA slot each part may run on
/// another member): each update outputs its whole blocks at once.
fn streaming_case() -> Case {
    case(
        Phase::User,
        "multi-part AES-CBC-PAD streams whole blocks and matches single-part",
        CKR_OK,
        |fx| {
            let k = match gen_key(fx, fx.rw, &aes_key(false, None, true)) {
                Ok(k) => k,
                Err(rv) => return rv,
            };
            let mut iv = [0x19u8; 16];
            let iv_ptr = iv.as_mut_ptr() as *mut std::ffi::c_void;
            let cbc_pad = || CK_MECHANISM {
                mechanism: CKM_AES_CBC_PAD,
                pParameter: iv_ptr,
                ulParameterLen: 16,
            };
            let data: Vec<u8> = (0..141u8).collect();
            let steps = || -> Result<(), CK_RV> {
                ok(call!(fx, C_EncryptInit, fx.rw, &mut cbc_pad(), k))?;
                let mut one = vec![0u8; 160];
                let mut n = 160;
                ok(call!(
                    fx,
                    C_Encrypt,
                    fx.rw,
                    data.as_ptr() as *mut u8,
                    data.len() as CK_ULONG,
                    one.as_mut_ptr(),
                    &mut n
                ))?;
                one.truncate(n as usize);
                ok(call!(fx, C_EncryptInit, fx.rw, &mut cbc_pad(), k))?;
                let mut parts = Vec::new();
                let mut lens = Vec::new();
                for part in [&data[..40], &data[40..41], &data[41..]] {
                    let mut out = vec![0u8; 160];
                    let mut n = 160;
                    ok(call!(
                        fx,
                        C_EncryptUpdate,
                        fx.rw,
                        part.as_ptr() as *mut u8,
                        part.len() as CK_ULONG,
                        out.as_mut_ptr(),
                        &mut n
                    ))?;
                    lens.push(n);
                    parts.extend_from_slice(&out[..n as usize]);
                }
                let mut out = vec![0u8; 32];
                let mut n = 32;
                ok(call!(fx, C_EncryptFinal, fx.rw, out.as_mut_ptr(), &mut n))?;
                lens.push(n);
                parts.extend_from_slice(&out[..n as usize]);
                // 40 bytes: two blocks; 41: none more; 141: six more; the pad block at Final.
                if lens != [32, 0, 96, 16] || parts != one {
                    eprintln!("update lengths {lens:?}; same as single-part: {}", parts == one);
                    return Err(WRONG_RESULT);
                }
                Ok(())
            };
            let r = steps();
            destroy(fx, fx.rw, k);
            result(r)
        },
    )
}

/// Encrypts `data` with `mech` and key `k` in session `fx.rw`, single-part
/// (`parts` empty) or in parts of the given lengths: the output, or the
/// first code that was not `CKR_OK`.
fn encrypt_in_parts(
    fx: &Fx,
    k: CK_OBJECT_HANDLE,
    mech: &mut CK_MECHANISM,
    data: &[u8],
    parts: &[usize],
) -> Result<Vec<u8>, CK_RV> {
    ok(call!(fx, C_EncryptInit, fx.rw, mech, k))?;
    let mut out = Vec::new();
    if parts.is_empty() {
        let mut buf = vec![0u8; data.len() + 32];
        let mut n = buf.len() as CK_ULONG;
        ok(call!(
            fx,
            C_Encrypt,
            fx.rw,
            data.as_ptr() as *mut u8,
            data.len() as CK_ULONG,
            buf.as_mut_ptr(),
            &mut n
        ))?;
        out.extend_from_slice(&buf[..n as usize]);
        return Ok(out);
    }
    let mut at = 0;
    for len in parts {
        let part = &data[at..at + len];
        at += len;
        let mut buf = vec![0u8; part.len() + 32];
        let mut n = buf.len() as CK_ULONG;
        ok(call!(
            fx,
            C_EncryptUpdate,
            fx.rw,
            part.as_ptr() as *mut u8,
            part.len() as CK_ULONG,
            buf.as_mut_ptr(),
            &mut n
        ))?;
        out.extend_from_slice(&buf[..n as usize]);
    }
    let mut buf = vec![0u8; 32];
    let mut n = 32;
    ok(call!(fx, C_EncryptFinal, fx.rw, buf.as_mut_ptr(), &mut n))?;
    out.extend_from_slice(&buf[..n as usize]);
    Ok(out)
}

/// `CK_AES_CTR_PARAMS` with `bits` counter bits and the counter block `cb`.
fn ctr_params(bits: CK_ULONG, cb: [u8; 16]) -> CK_AES_CTR_PARAMS {
    CK_AES_CTR_PARAMS {
        ulCounterBits: bits,
        cb,
    }
}

/// The size limit of single-part input and AES-CTR (single and streaming,
/// and a counter that would wrap), on both slots.
fn size_and_ctr_cases() -> Vec<Case> {
    use Phase::User;
    let with_key = |fx: &Fx, f: &dyn Fn(CK_OBJECT_HANDLE) -> Result<(), CK_RV>| -> CK_RV {
        let k = match gen_key(fx, fx.rw, &aes_key(false, None, true)) {
            Ok(k) => k,
            Err(rv) => return rv,
        };
        let r = f(k);
        destroy(fx, fx.rw, k);
        result(r)
    };
    vec![
        case(
            User,
            "single-part C_Encrypt of 1 MiB is CKR_DATA_LEN_RANGE",
            CKR_DATA_LEN_RANGE,
            move |fx| {
                with_key(fx, &|k| {
                    let mut iv = [7u8; 16];
                    let mut m = CK_MECHANISM {
                        mechanism: CKM_AES_CBC_PAD,
                        pParameter: iv.as_mut_ptr() as *mut std::ffi::c_void,
                        ulParameterLen: 16,
                    };
                    encrypt_in_parts(fx, k, &mut m, &vec![0u8; 1 << 20], &[]).map(|_| ())
                })
            },
        ),
        case(
            User,
            "AES-CTR in parts of 5, 16, 40 and 3 bytes gives the single-part output",
            CKR_OK,
            move |fx| {
                with_key(fx, &|k| {
                    let data: Vec<u8> = (0..64u8).collect();
                    let mut p = ctr_params(32, [0x42; 16]);
                    let mut m = || CK_MECHANISM {
                        mechanism: CKM_AES_CTR,
                        pParameter: &mut p as *mut CK_AES_CTR_PARAMS as *mut std::ffi::c_void,
                        ulParameterLen: std::mem::size_of::<CK_AES_CTR_PARAMS>() as CK_ULONG,
                    };
                    let one = encrypt_in_parts(fx, k, &mut m(), &data, &[])?;
                    let parts = encrypt_in_parts(fx, k, &mut m(), &data, &[5, 16, 40, 3])?;
                    if one.len() != 64 || one == data || parts != one {
                        return Err(WRONG_RESULT);
                    }
                    Ok(())
                })
            },
        ),
        case(
            User,
            "AES-CTR input that would wrap a 1-bit counter is CKR_DATA_LEN_RANGE",
            CKR_DATA_LEN_RANGE,
            move |fx| {
                with_key(fx, &|k| {
                    let mut p = ctr_params(1, [0; 16]);
                    let mut m = CK_MECHANISM {
                        mechanism: CKM_AES_CTR,
                        pParameter: &mut p as *mut CK_AES_CTR_PARAMS as *mut std::ffi::c_void,
                        ulParameterLen: std::mem::size_of::<CK_AES_CTR_PARAMS>() as CK_ULONG,
                    };
                    // Two counter values: two blocks pass, a third would reuse the key stream.
                    encrypt_in_parts(fx, k, &mut m, &[0u8; 48], &[]).map(|_| ())
                })
            },
        ),
    ]
}

fn digest_key_cases() -> Vec<Case> {
    use Phase::User;
    vec![
        case(
            User,
            "C_DigestKey of a sensitive AES key: the SHA-256 of data, value, data",
            CKR_OK,
            |fx| {
                let value = [0x3cu8; 32];
                let k = match create(
                    fx,
                    fx.rw,
                    &[
                        Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY),
                        Attribute::KeyType(cryptoki::object::KeyType::AES),
                        Attribute::Token(false),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Value(value.to_vec()),
                    ],
                ) {
                    Ok(k) => k,
                    Err(rv) => return rv,
                };
                let got = digest_with_keys(fx, &[Ok(b"abc"), Err(k), Ok(b"xyz")]);
                destroy(fx, fx.rw, k);
                let mut input = b"abc".to_vec();
                input.extend_from_slice(&value);
                input.extend_from_slice(b"xyz");
                let want = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
                match got {
                    Ok(d) if d == want.as_ref() => CKR_OK,
                    Ok(d) => {
                        eprintln!("digest {}, want {}", hex::encode(d), hex::encode(want.as_ref()));
                        WRONG_RESULT
                    }
                    Err(rv) => rv,
                }
            },
        ),
        case(
            User,
            "C_DigestKey of an EC private key",
            CKR_KEY_INDIGESTIBLE,
            |fx| {
                let (p, s) = match gen_pair(fx, fx.rw, false, None, true) {
                    Ok(k) => k,
                    Err(rv) => return rv,
                };
                let r = digest_with_keys(fx, &[Err(s)]);
                destroy(fx, fx.rw, p);
                destroy(fx, fx.rw, s);
                // The failed C_DigestKey leaves the digest active: end it.
                call!(fx, C_DigestInit, fx.rw, null_mut());
                r.err().unwrap_or(WRONG_RESULT)
            },
        ),
        case(User, "C_DigestKey of a bogus key", CKR_KEY_HANDLE_INVALID, |fx| {
            let r = digest_with_keys(fx, &[Err(BOGUS)]);
            call!(fx, C_DigestInit, fx.rw, null_mut());
            r.err().unwrap_or(WRONG_RESULT)
        }),
    ]
}

fn client_template_cases() -> Vec<Case> {
    use Phase::User;
    let mut v = Vec::new();
    v.push(case(
        User,
        "EC P-256 pair with ENCRYPT/WRAP/DERIVE and DECRYPT/UNWRAP/DERIVE",
        CKR_OK,
        |fx| {
            let (p, s) = match client_pair(fx, CKM_EC_KEY_PAIR_GEN, Some(&P256), &mut vec![]) {
                Ok(k) => k,
                Err(rv) => return rv,
            };
            // Stored as asked.
            let r = expect_attr(fx, p, CKA_WRAP, &[1]).and_then(|_| expect_attr(fx, s, CKA_UNWRAP, &[1]));
            destroy(fx, fx.rw, p);
            destroy(fx, fx.rw, s);
            result(r)
        },
    ));
    v.push(case(
        User,
        "EC P-384 pair with ENCRYPT/WRAP/DERIVE and DECRYPT/UNWRAP/DERIVE",
        CKR_OK,
        |fx| match client_pair(fx, CKM_EC_KEY_PAIR_GEN, Some(&P384), &mut vec![]) {
            Ok((p, s)) => {
                destroy(fx, fx.rw, p);
                destroy(fx, fx.rw, s)
            }
            Err(rv) => rv,
        },
    ));
    v.push(case(
        User,
        "Ed25519 pair with CKA_DERIVE on both halves",
        CKR_OK,
        |fx| match client_pair(fx, CKM_EC_EDWARDS_KEY_PAIR_GEN, None, &mut vec![]) {
            Ok((p, s)) => {
                let r = expect_attr(fx, s, CKA_DERIVE, &[1]);
                destroy(fx, fx.rw, p);
                destroy(fx, fx.rw, s);
                result(r)
            }
            Err(rv) => rv,
        },
    ));
    v.push(case(
        User,
        "C_DeriveKey(ECDH1) with an Ed25519 key that has CKA_DERIVE",
        CKR_KEY_TYPE_INCONSISTENT,
        |fx| {
            let (p, s) = match client_pair(fx, CKM_EC_EDWARDS_KEY_PAIR_GEN, None, &mut vec![]) {
                Ok(k) => k,
                Err(rv) => return rv,
            };
            let mut point = [4u8; 65];
            let r = ecdh_derive(fx, fx.rw, s, &mut point, &[Attribute::Token(false)]);
            destroy(fx, fx.rw, p);
            destroy(fx, fx.rw, s);
            r.err().unwrap_or(WRONG_RESULT)
        },
    ));
    v.push(case(
        User,
        "C_EncryptInit(AES_ECB) with an EC public key that has CKA_ENCRYPT",
        CKR_KEY_TYPE_INCONSISTENT,
        |fx| {
            let (p, s) = match client_pair(fx, CKM_EC_KEY_PAIR_GEN, Some(&P256), &mut vec![]) {
                Ok(k) => k,
                Err(rv) => return rv,
            };
            let r = call!(fx, C_EncryptInit, fx.rw, &mut mech(CKM_AES_ECB), p);
            destroy(fx, fx.rw, p);
            destroy(fx, fx.rw, s);
            r
        },
    ));
    v.push(case(
        User,
        "C_UnwrapKey(AES_KEY_WRAP) with an EC private key that has CKA_UNWRAP",
        CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
        |fx| {
            let (p, s) = match client_pair(fx, CKM_EC_KEY_PAIR_GEN, Some(&P256), &mut vec![]) {
                Ok(k) => k,
                Err(rv) => return rv,
            };
            let mut blob = [0u8; 24];
            let r = unwrap_aes(fx, s, &mut blob, &[]);
            destroy(fx, fx.rw, p);
            destroy(fx, fx.rw, s);
            r.err().unwrap_or(WRONG_RESULT)
        },
    ));
    v.push(case(
        User,
        "EC pair whose private template has CKA_UNWRAP_TEMPLATE, read back",
        CKR_OK,
        |fx| {
            let mut inner = tmpl(&[Attribute::Extractable(false)]);
            let mut extra = vec![array_attr(CKA_UNWRAP_TEMPLATE, &mut inner)];
            let (p, s) = match client_pair(fx, CKM_EC_KEY_PAIR_GEN, Some(&P256), &mut extra) {
                Ok(k) => k,
                Err(rv) => return rv,
            };
            // The array's length is one CK_ATTRIBUTE; read into it.
            let mut value = [0xffu8; 1];
            let mut nested = [CK_ATTRIBUTE {
                type_: 0,
                pValue: value.as_mut_ptr() as *mut std::ffi::c_void,
                ulValueLen: 1,
            }];
            let mut a = [array_attr(CKA_UNWRAP_TEMPLATE, &mut nested)];
            let r = call!(fx, C_GetAttributeValue, fx.rw, s, a.as_mut_ptr(), 1);
            destroy(fx, fx.rw, p);
            destroy(fx, fx.rw, s);
            if r != CKR_OK {
                return r;
            }
            if nested[0].type_ != CKA_EXTRACTABLE || nested[0].ulValueLen != 1 || value != [0] {
                eprintln!(
                    "CKA_UNWRAP_TEMPLATE read back as type {:#x}, len {}, value {value:?}",
                    nested[0].type_, nested[0].ulValueLen
                );
                return WRONG_RESULT;
            }
            CKR_OK
        },
    ));
    v.push(case(
        User,
        "C_UnwrapKey applies the KEK's CKA_UNWRAP_TEMPLATE",
        CKR_OK,
        |fx| {
            let (kek, key, mut blob) = match kek_and_blob(fx, &[Attribute::Encrypt(false)]) {
                Ok(k) => k,
                Err(rv) => return rv,
            };
            // An AES key encrypts by default; the KEK's template says otherwise.
            let r = unwrap_aes(fx, kek, &mut blob, &[Attribute::Decrypt(true)]).and_then(|o| {
                let r = expect_attr(fx, o, CKA_ENCRYPT, &[0]);
                destroy(fx, fx.rw, o);
                r
            });
            destroy(fx, fx.rw, key);
            destroy(fx, fx.rw, kek);
            result(r)
        },
    ));
    v.push(case(
        User,
        "C_UnwrapKey against the KEK's CKA_UNWRAP_TEMPLATE",
        CKR_TEMPLATE_INCONSISTENT,
        |fx| {
            let (kek, key, mut blob) = match kek_and_blob(fx, &[Attribute::Encrypt(false)]) {
                Ok(k) => k,
                Err(rv) => return rv,
            };
            let r = unwrap_aes(fx, kek, &mut blob, &[Attribute::Encrypt(true)]);
            if let Ok(o) = r {
                destroy(fx, fx.rw, o);
            }
            destroy(fx, fx.rw, key);
            destroy(fx, fx.rw, kek);
            r.err().unwrap_or(CKR_OK)
        },
    ));
    v.push(case(
        User,
        "C_WrapKey of a key that does not match the KEK's CKA_WRAP_TEMPLATE",
        CKR_KEY_NOT_WRAPPABLE,
        |fx| {
            wrap_under_template(
                fx,
                &[Attribute::KeyType(cryptoki::object::KeyType::GENERIC_SECRET)],
            )
        },
    ));
    v.push(case(
        User,
        "C_WrapKey of a key that matches the KEK's CKA_WRAP_TEMPLATE",
        CKR_OK,
        |fx| wrap_under_template(fx, &[Attribute::KeyType(cryptoki::object::KeyType::AES)]),
    ));
    v.push(case(
        User,
        "C_DeriveKey applies the base key's CKA_DERIVE_TEMPLATE",
        CKR_OK,
        |fx| {
            let steps = || -> Result<(), CK_RV> {
                let mut inner = tmpl(&[Attribute::Encrypt(false)]);
                let mut extra = vec![array_attr(CKA_DERIVE_TEMPLATE, &mut inner)];
                let (ap, a) = client_pair(fx, CKM_EC_KEY_PAIR_GEN, Some(&P256), &mut extra)?;
                let (bp, b) = client_pair(fx, CKM_EC_KEY_PAIR_GEN, Some(&P256), &mut vec![])?;
                let mut b_point = raw_point(&get_attr(fx, bp, CKA_EC_POINT)?);
                // An AES key encrypts by default; the base key's template says otherwise.
                let template = [
                    Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY),
                    Attribute::KeyType(cryptoki::object::KeyType::AES),
                    Attribute::ValueLen(16.into()),
                    Attribute::Token(false),
                ];
                let k = ecdh_derive(fx, fx.rw, a, &mut b_point, &template);
                let r = k.and_then(|k| {
                    let r = expect_attr(fx, k, CKA_ENCRYPT, &[0]);
                    destroy(fx, fx.rw, k);
                    r
                });
                for o in [ap, a, bp, b] {
                    destroy(fx, fx.rw, o);
                }
                r
            };
            result(steps())
        },
    ));
    v.push(case(
        User,
        "C_SetAttributeValue of CKA_UNWRAP_TEMPLATE",
        CKR_ATTRIBUTE_READ_ONLY,
        |fx| set_after_creation(fx, true),
    ));
    v.push(case(
        User,
        "C_SetAttributeValue of CKA_CHECK_VALUE",
        CKR_ATTRIBUTE_READ_ONLY,
        |fx| set_after_creation(fx, false),
    ));
    v.push(case(
        User,
        "C_GenerateKey(AES) with every attribute of the secret-key table",
        CKR_OK,
        |fx| {
            let mut attrs = secret_key_table(cryptoki::object::KeyType::AES);
            attrs.push(Attribute::ValueLen(32.into()));
            with_arrays(&attrs, |t| {
                let mut m = mech(CKM_AES_KEY_GEN);
                let mut o = 0;
                let r = call!(
                    fx,
                    C_GenerateKey,
                    fx.rw,
                    &mut m,
                    t.as_mut_ptr(),
                    t.len() as CK_ULONG,
                    &mut o
                );
                if r == CKR_OK {
                    let r = expect_attr(fx, o, CKA_WRAP_WITH_TRUSTED, &[1]);
                    destroy(fx, fx.rw, o);
                    return result(r);
                }
                r
            })
        },
    ));
    v.push(case(
        User,
        "C_GenerateKey(GENERIC_SECRET) with every attribute of the secret-key table",
        CKR_OK,
        |fx| {
            let mut attrs = secret_key_table(cryptoki::object::KeyType::GENERIC_SECRET);
            attrs.push(Attribute::ValueLen(32.into()));
            with_arrays(&attrs, |t| {
                let mut m = mech(CKM_GENERIC_SECRET_KEY_GEN);
                let mut o = 0;
                let r = call!(
                    fx,
                    C_GenerateKey,
                    fx.rw,
                    &mut m,
                    t.as_mut_ptr(),
                    t.len() as CK_ULONG,
                    &mut o
                );
                if r == CKR_OK {
                    destroy(fx, fx.rw, o);
                }
                r
            })
        },
    ));
    v.push(case(
        User,
        "C_CreateObject(AES) with the table and its CKA_CHECK_VALUE",
        CKR_OK,
        |fx| {
            let mut attrs = secret_key_table(cryptoki::object::KeyType::AES);
            attrs.push(Attribute::Value(vec![0; 16]));
            // E(0^128, 0^128) begins 66 e9 4b.
            attrs.push(Attribute::CheckValue(vec![0x66, 0xe9, 0x4b]));
            match create(fx, fx.rw, &attrs) {
                Ok(o) => destroy(fx, fx.rw, o),
                Err(rv) => rv,
            }
        },
    ));
    v.push(case(
        User,
        "C_CreateObject(AES) with a wrong CKA_CHECK_VALUE",
        CKR_ATTRIBUTE_VALUE_INVALID,
        |fx| {
            let mut attrs = secret_key_table(cryptoki::object::KeyType::AES);
            attrs.push(Attribute::Value(vec![0; 16]));
            attrs.push(Attribute::CheckValue(vec![0x66, 0xe9, 0x4c]));
            match create(fx, fx.rw, &attrs) {
                Ok(o) => {
                    destroy(fx, fx.rw, o);
                    CKR_OK
                }
                Err(rv) => rv,
            }
        },
    ));
    v.push(case(
        User,
        "a generated AES key's CKA_CHECK_VALUE",
        CKR_OK,
        |fx| {
            let o = match gen_key(fx, fx.rw, &aes_key(false, None, true)) {
                Ok(o) => o,
                Err(rv) => return rv,
            };
            // Sensitive: the value is not readable, but its check value is, and
            // it is three bytes.
            let r = get_attr(fx, o, CKA_CHECK_VALUE).and_then(|kcv| {
                if kcv.len() == 3 {
                    Ok(())
                } else {
                    Err(WRONG_RESULT)
                }
            });
            destroy(fx, fx.rw, o);
            result(r)
        },
    ));
    v.push(case(
        User,
        "ECDH1_DERIVE to session AES and generic keys with an ordinary template",
        CKR_OK,
        |fx| {
            let steps = || -> Result<(), CK_RV> {
                let (ap, a) = client_pair(fx, CKM_EC_KEY_PAIR_GEN, Some(&P256), &mut vec![])?;
                let (bp, b) = client_pair(fx, CKM_EC_KEY_PAIR_GEN, Some(&P256), &mut vec![])?;
                let mut a_point = raw_point(&get_attr(fx, ap, CKA_EC_POINT)?);
                let mut b_point = raw_point(&get_attr(fx, bp, CKA_EC_POINT)?);
                for (key_type, len) in [
                    (cryptoki::object::KeyType::AES, 16u64),
                    (cryptoki::object::KeyType::GENERIC_SECRET, 32),
                ] {
                    let template = [
                        Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY),
                        Attribute::KeyType(key_type),
                        Attribute::ValueLen(len.into()),
                        Attribute::Token(false),
                        Attribute::Sensitive(false),
                        Attribute::Extractable(true),
                        Attribute::Encrypt(true),
                        Attribute::Decrypt(true),
                    ];
                    let ka = ecdh_derive(fx, fx.rw, a, &mut b_point, &template)?;
                    let kb = ecdh_derive(fx, fx.rw, b, &mut a_point, &template)?;
                    let (va, vb) = (get_attr(fx, ka, CKA_VALUE)?, get_attr(fx, kb, CKA_VALUE)?);
                    if va != vb || va.len() as u64 != len {
                        eprintln!(
                            "the two sides derived {} and {} bytes that differ",
                            va.len(),
                            vb.len()
                        );
                        return Err(WRONG_RESULT);
                    }
                    expect_attr(fx, ka, CKA_ENCRYPT, &[1])?;
                    ok(destroy(fx, fx.rw, ka))?;
                    ok(destroy(fx, fx.rw, kb))?;
                }
                for o in [ap, a, bp, b] {
                    ok(destroy(fx, fx.rw, o))?;
                }
                Ok(())
            };
            result(steps())
        },
    ));
    v
}

/// The release as `CK_VERSION` (major, minor): the workspace version, which
/// the module shares.
fn release_version() -> (u8, u8) {
    let v = |s: &str| s.parse::<u8>().unwrap();
    (
        v(env!("CARGO_PKG_VERSION_MAJOR")),
        v(env!("CARGO_PKG_VERSION_MINOR")),
    )
}

/// Runs the cases of `phase`; returns the names of the failed ones.
fn run_phase(fx: &Fx, all: &[Case], phase: Phase, label: &str, failed: &mut Vec<String>) -> usize {
    let mut n = 0;
    for c in all.iter().filter(|c| c.phase == phase) {
        n += 1;
        let got = (c.run)(fx);
        if got != c.want {
            eprintln!(
                "FAIL [{label}] {phase:?} {}: got {got:#x}, want {:#x}",
                c.name, c.want
            );
            failed.push(format!("[{label}] {phase:?} {}", c.name));
        }
    }
    n
}

fn open(fx: &Fx, slot: CK_SLOT_ID, rw: bool) -> CK_SESSION_HANDLE {
    let mut h = 0;
    let flags = CKF_SERIAL_SESSION | if rw { CKF_RW_SESSION } else { 0 };
    assert_eq!(
        call!(fx, C_OpenSession, slot, flags, null_mut(), None, &mut h),
        CKR_OK,
        "C_OpenSession"
    );
    h
}

/// The slots with a token, and for each whether it is the HA slot.
fn slots(fx: &Fx) -> Vec<(CK_SLOT_ID, bool)> {
    let mut n = 0;
    assert_eq!(call!(fx, C_GetSlotList, CK_TRUE, null_mut(), &mut n), CKR_OK);
    let mut list = vec![0; n as usize];
    assert_eq!(
        call!(fx, C_GetSlotList, CK_TRUE, list.as_mut_ptr(), &mut n),
        CKR_OK
    );
    list.into_iter()
        .map(|s| {
            // SAFETY: CK_TOKEN_INFO is plain data.
            let mut info: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
            assert_eq!(call!(fx, C_GetTokenInfo, s, &mut info), CKR_OK);
            (s, String::from_utf8_lossy(&info.model).contains("HA group"))
        })
        .collect()
}

#[test]
fn every_function_answers_the_exact_code_in_the_standard_order() {
    let c = Cluster::new(3);
    std::env::set_var("HAHSM_CONF", &c.conf);
    std::env::set_var("HAHSM_PKCS11_LOG", c.work.path().join("pkcs11.log"));
    let (_lib, f) = raw::functions_3_0();
    let all = cases();
    let mut failed = Vec::new();
    let mut total = 0;

    let mut fx = Fx {
        f,
        slot: BAD_SLOT,
        ro: 0,
        rw: 0,
    };
    total += run_phase(&fx, &all, Phase::NotInitialized, "module", &mut failed);

    assert_eq!(call!(fx, C_Initialize, null_mut()), CKR_OK, "C_Initialize");
    let slots = slots(&fx);
    let ha = slots.iter().find(|(_, ha)| *ha).expect("an HA slot").0;
    let member = slots.iter().find(|(_, ha)| !*ha).expect("a member's slot").0;
    for (slot, label) in [(ha, "HA slot"), (member, "member slot")] {
        fx.slot = slot;
        fx.ro = open(&fx, slot, false);
        fx.rw = open(&fx, slot, true);
        for phase in [Phase::AnySession, Phase::RoPublic, Phase::RwPublic, Phase::User] {
            total += run_phase(&fx, &all, phase, label, &mut failed);
        }
        assert_eq!(call!(fx, C_CloseAllSessions, slot), CKR_OK);
    }
    assert_eq!(call!(fx, C_Finalize, null_mut()), CKR_OK, "C_Finalize");
    assert_eq!(
        call!(fx, C_GetInfo, null_mut()),
        CKR_CRYPTOKI_NOT_INITIALIZED,
        "after C_Finalize"
    );
    eprintln!("{} of {total} conformance cases failed", failed.len());
    assert!(
        failed.is_empty(),
        "{} of {total} cases failed: {failed:#?}",
        failed.len()
    );
}
