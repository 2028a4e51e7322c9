//! Shared by the `t20_pkcs11_*` tests: loading the built module the way an
//! application does, a runner for the named checks of one test, and helpers.
//!
//! The module keeps process-wide state (as every PKCS#11 module does), so each
//! test file initializes it once and runs its checks in sequence; a failed
//! check is reported by name and the others still run.
#![allow(dead_code)]
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use hahsm_it::Standalone;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `target/<profile>/libhahsm_pkcs11.so`, next to the binaries.
pub fn module_path() -> PathBuf {
    let path = hahsm_it::bin_dir().join("libhahsm_pkcs11.so");
    assert!(
        path.exists(),
        "{} is missing: build it first (scripts/test.sh does: cargo build --workspace)",
        path.display()
    );
    path
}

pub struct Env {
    pub st: Standalone,
    pub p11: Pkcs11,
    pub slot: Slot,
    /// The raw function list of the same loaded module, for calls the safe
    /// wrapper cannot make (NULL pointers, short buffers).
    pub raw: cryptoki_sys::CK_FUNCTION_LIST,
    _lib: libloading::Library,
}

impl Env {
    /// A member, the module loaded and initialized with its config.
    pub fn new() -> Env {
        let st = Standalone::new();
        std::env::set_var("HAHSM_CONF", &st.conf);
        std::env::set_var("HAHSM_PKCS11_LOG", st.path("pkcs11.log"));
        Self::with(st)
    }

    pub fn with(st: Standalone) -> Env {
        let p11 = Pkcs11::new(module_path()).expect("module loads");
        p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .expect("C_Initialize");
        let slots = p11.get_slots_with_token().expect("slots");
        assert_eq!(slots.len(), 1, "one partition is assigned");
        let (lib, raw) = raw_functions();
        Env {
            st,
            p11,
            slot: slots[0],
            raw,
            _lib: lib,
        }
    }

    pub fn pin(&self) -> AuthPin {
        AuthPin::new(self.st.pin.clone().into())
    }

    /// A read/write session logged in as the user (the login is per token:
    /// an already-logged-in token is fine).
    pub fn user(&self) -> Session {
        let s = self.p11.open_rw_session(self.slot).expect("open session");
        match s.login(UserType::User, Some(&self.pin())) {
            Ok(()) => {}
            Err(e) if rv(&e) == RvError::UserAlreadyLoggedIn => {}
            Err(e) => panic!("login: {e}"),
        }
        s
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.st.path("pkcs11.log")).unwrap_or_default()
    }
}

/// The module's function list, through `dlopen` of the same file (the
/// loader returns the same instance, so state is shared with `Env::p11`).
pub fn raw_functions() -> (libloading::Library, cryptoki_sys::CK_FUNCTION_LIST) {
    // SAFETY: loading our own module runs no initializers with preconditions.
    let lib = unsafe { libloading::Library::new(module_path()) }.expect("dlopen");
    type GetFunctionList = unsafe extern "C" fn(*mut *mut cryptoki_sys::CK_FUNCTION_LIST) -> u64;
    // SAFETY: C_GetFunctionList has this signature in every PKCS#11 module.
    let get = unsafe { lib.get::<GetFunctionList>(b"C_GetFunctionList") }.expect("exported");
    let mut list = std::ptr::null_mut();
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { get(&mut list) }, 0);
    // SAFETY: the module returned a pointer to its static function list.
    let copy = unsafe { *list };
    (lib, copy)
}

/// The return code inside a cryptoki error.
pub fn rv(e: &Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => *rv,
        other => panic!("not a PKCS#11 error: {other}"),
    }
}

#[track_caller]
pub fn expect_rv<T: std::fmt::Debug>(r: Result<T, Error>, want: RvError) {
    match r {
        Ok(v) => panic!("expected {want:?}, got Ok({v:?})"),
        Err(e) => assert_eq!(rv(&e), want, "{e}"),
    }
}

/// Runs named checks in order, each isolated from the others' panics, and
/// fails with the names of those that failed.
/// A named check of one test.
pub type Check<E> = (&'static str, fn(&E));

pub fn run_checks<E>(env: &E, checks: &[Check<E>]) {
    let mut failed = Vec::new();
    for (name, check) in checks {
        eprintln!("--- check {name}");
        if catch_unwind(AssertUnwindSafe(|| check(env))).is_err() {
            failed.push(*name);
        }
    }
    assert!(failed.is_empty(), "failed checks: {failed:?}");
}

/// Runs a program with a time limit, so that a hanging tool fails the test
/// instead of hanging it. Returns (success, stdout, stderr).
pub fn tool(program: &str, args: &[&str], envs: &[(&str, &Path)], limit: Duration) -> (bool, String, String) {
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=5")
        .arg(limit.as_secs().to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("{program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An object's `CKA_VALUE`; panics if it has none or it cannot be read.
pub fn value(s: &Session, o: cryptoki::object::ObjectHandle) -> Vec<u8> {
    use cryptoki::object::{Attribute, AttributeType};
    match s
        .get_attributes(o, &[AttributeType::Value])
        .expect("CKA_VALUE")
        .pop()
    {
        Some(Attribute::Value(v)) => v,
        other => panic!("no CKA_VALUE: {other:?}"),
    }
}

/// The template of a session secret key whose value a test may read
/// (not sensitive, extractable), as a KEM or a derivation makes it.
pub fn readable_secret() -> Vec<cryptoki::object::Attribute> {
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    vec![
        Attribute::Token(false),
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ]
}

/// An ECDSA signature r||s as DER, for openssl.
pub fn ecdsa_der(sig: &[u8]) -> Vec<u8> {
    let (r, s) = sig.split_at(sig.len() / 2);
    let int = |v: &[u8]| {
        let mut v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
        if v.is_empty() || v[0] & 0x80 != 0 {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    };
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30];
    if body.len() >= 0x80 {
        out.push(0x81);
    }
    out.push(body.len() as u8);
    out.extend(body);
    out
}

/// Raw calls on the module's function list, for what the safe wrapper cannot
/// express: NULL pointers, short buffers, mechanisms it does not know.
pub mod raw {
    use super::Env;
    use cryptoki_sys as ck;

    /// A read/write session opened through the raw function list.
    pub fn session(env: &Env) -> ck::CK_SESSION_HANDLE {
        let mut h = 0;
        // SAFETY: valid arguments; the module is initialized.
        let r = unsafe {
            env.raw.C_OpenSession.unwrap()(
                env.slot.id(),
                ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION,
                std::ptr::null_mut(),
                None,
                &mut h,
            )
        };
        assert_eq!(r, ck::CKR_OK);
        h
    }

    /// `C_WrapKey` with a mechanism without parameters: (rv, output).
    pub fn wrap(env: &Env, h: ck::CK_SESSION_HANDLE, mech: u64, kek: u64, key: u64) -> (u64, Vec<u8>) {
        let mut m = ck::CK_MECHANISM {
            mechanism: mech,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        };
        let mut len = 0;
        // SAFETY: valid pointers; a NULL output asks for the length.
        let r = unsafe { env.raw.C_WrapKey.unwrap()(h, &mut m, kek, key, std::ptr::null_mut(), &mut len) };
        if r != ck::CKR_OK {
            return (r, Vec::new());
        }
        let mut out = vec![0u8; len as usize];
        // SAFETY: `out` holds `len` bytes.
        let r = unsafe { env.raw.C_WrapKey.unwrap()(h, &mut m, kek, key, out.as_mut_ptr(), &mut len) };
        out.truncate(len as usize);
        (r, out)
    }

    /// `C_UnwrapKey` with a mechanism without parameters; panics on failure.
    pub fn unwrap(
        env: &Env,
        h: ck::CK_SESSION_HANDLE,
        mech: u64,
        kek: u64,
        wrapped: &[u8],
        template: &[cryptoki::object::Attribute],
    ) -> cryptoki::object::ObjectHandle {
        let mut m = ck::CK_MECHANISM {
            mechanism: mech,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        };
        let mut t: Vec<ck::CK_ATTRIBUTE> = template.iter().map(|a| a.into()).collect();
        let mut out = 0;
        // SAFETY: valid pointers and lengths; the attributes borrow `template`.
        let r = unsafe {
            env.raw.C_UnwrapKey.unwrap()(
                h,
                &mut m,
                kek,
                wrapped.as_ptr() as *mut u8,
                wrapped.len() as u64,
                t.as_mut_ptr(),
                t.len() as u64,
                &mut out,
            )
        };
        assert_eq!(r, ck::CKR_OK, "C_UnwrapKey");
        // SAFETY: the handle was just issued by the module.
        unsafe { cryptoki::object::ObjectHandle::new_from_raw(out) }
    }

    /// The mechanism list, unfiltered.
    pub fn mechanisms(env: &Env) -> Vec<u64> {
        mechanisms_of(env.slot)
    }

    /// The mechanism list of `slot`, unfiltered (cryptoki drops the types
    /// it does not know, among them `CKM_DES3_CBC`), through the raw list of
    /// the module this process loaded.
    pub fn mechanisms_of(slot: cryptoki::slot::Slot) -> Vec<u64> {
        let (_lib, raw) = super::raw_functions();
        let list_mechanisms = raw.C_GetMechanismList.unwrap();
        let mut n = 0;
        // SAFETY: a NULL list asks for the count.
        let r = unsafe { list_mechanisms(slot.id(), std::ptr::null_mut(), &mut n) };
        assert_eq!(r, ck::CKR_OK, "C_GetMechanismList");
        let mut list = vec![0; n as usize];
        // SAFETY: `list` holds `n` entries.
        let r = unsafe { list_mechanisms(slot.id(), list.as_mut_ptr(), &mut n) };
        assert_eq!(r, ck::CKR_OK, "C_GetMechanismList");
        list.truncate(n as usize);
        list
    }

    /// The function list of interface `version` through `C_GetInterface`
    /// (`None`: the default one), read as `T`, which must be the list type
    /// of that version.
    pub fn interface<T: Copy>(version: Option<(u8, u8)>) -> (libloading::Library, T) {
        // SAFETY: loading our own module.
        let lib = unsafe { libloading::Library::new(super::module_path()) }.expect("dlopen");
        type GetInterface =
            unsafe extern "C" fn(*mut u8, *mut ck::CK_VERSION, *mut *mut ck::CK_INTERFACE, u64) -> u64;
        // SAFETY: C_GetInterface has this signature in PKCS#11 3.0 and later.
        let get: libloading::Symbol<GetInterface> = unsafe { lib.get(b"C_GetInterface") }.expect("exported");
        let mut iface = std::ptr::null_mut();
        let mut v = version.map(|(major, minor)| ck::CK_VERSION { major, minor });
        let vp = v
            .as_mut()
            .map_or(std::ptr::null_mut(), |v| v as *mut ck::CK_VERSION);
        // SAFETY: a NULL name; `vp` NULL or a valid version.
        let r = unsafe { get(std::ptr::null_mut(), vp, &mut iface, 0) };
        assert_eq!(r, 0, "C_GetInterface({version:?})");
        // SAFETY: the module returned its static interface, whose function list is of the version asked for (the caller's `T`).
        let list = unsafe { *((*iface).pFunctionList as *const T) };
        (lib, list)
    }

    /// The 3.0 function list, through `C_GetInterface` with version 3.0.
    pub fn functions_3_0() -> (libloading::Library, ck::CK_FUNCTION_LIST_3_0) {
        interface(Some((3, 0)))
    }

    /// The 3.2 function list: the default interface.
    pub fn functions_3_2() -> (libloading::Library, ck::CK_FUNCTION_LIST_3_2) {
        interface(None)
    }

    /// Handle of a cryptoki object.
    pub fn obj(o: cryptoki::object::ObjectHandle) -> u64 {
        o.handle()
    }
}
