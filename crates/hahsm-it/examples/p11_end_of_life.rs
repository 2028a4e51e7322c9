//! An application's end of life as OpenSSL, NSS and language runtimes make
//! it: a session closed from a thread-local destructor (after the thread's
//! other thread-locals, tokio's among them, are gone), and the last session
//! closed and `C_Finalize` called from an `atexit` handler. Each call's
//! return value is printed as `NAME rv=0x…`, for `t57_end_of_life`.
//!
//!   HAHSM_CONF=… p11_end_of_life MODULE PIN
use cryptoki_sys::{
    CKF_RW_SESSION, CKF_SERIAL_SESSION, CK_FUNCTION_LIST, CK_RV, CK_SESSION_HANDLE, CK_SLOT_ID,
};
use std::cell::Cell;
use std::sync::OnceLock;

static FUNCTIONS: OnceLock<&'static CK_FUNCTION_LIST> = OnceLock::new();
static MAIN_SESSION: OnceLock<CK_SESSION_HANDLE> = OnceLock::new();

fn f() -> &'static CK_FUNCTION_LIST {
    FUNCTIONS.get().expect("loaded")
}

fn report(name: &str, rv: CK_RV) {
    println!("{name} rv={rv:#x}");
}

/// Closes its session when the thread's thread-locals are destroyed.
struct CloseOnThreadExit(Cell<CK_SESSION_HANDLE>);

impl Drop for CloseOnThreadExit {
    fn drop(&mut self) {
        let close = f().C_CloseSession.expect("C_CloseSession");
        // SAFETY: the library stays loaded (leaked); the handle came from C_OpenSession.
        let rv = unsafe { close(self.0.get()) };
        report("tls-close", rv);
    }
}

thread_local! {
    static CLOSER: CloseOnThreadExit = const { CloseOnThreadExit(Cell::new(0)) };
}

extern "C" fn at_exit() {
    let session = *MAIN_SESSION.get().expect("main session");
    // SAFETY: as above; atexit handlers run before the library is unloaded.
    unsafe {
        report(
            "atexit-close",
            f().C_CloseSession.expect("C_CloseSession")(session),
        );
        report(
            "atexit-finalize",
            f().C_Finalize.expect("C_Finalize")(std::ptr::null_mut()),
        );
    }
}

fn open(slot: CK_SLOT_ID) -> CK_SESSION_HANDLE {
    let mut h: CK_SESSION_HANDLE = 0;
    // SAFETY: `h` is a valid output; no callback is given.
    let rv = unsafe {
        f().C_OpenSession.expect("C_OpenSession")(
            slot,
            CKF_SERIAL_SESSION | CKF_RW_SESSION,
            std::ptr::null_mut(),
            None,
            &mut h,
        )
    };
    report("open", rv);
    h
}

/// Makes a session object, so that closing the session has work to do on
/// the member.
fn session_object(h: CK_SESSION_HANDLE) {
    let mut class = cryptoki_sys::CKO_DATA;
    let mut no: cryptoki_sys::CK_BBOOL = 0;
    let mut template = [
        cryptoki_sys::CK_ATTRIBUTE {
            type_: cryptoki_sys::CKA_CLASS,
            pValue: (&mut class as *mut cryptoki_sys::CK_OBJECT_CLASS).cast(),
            ulValueLen: std::mem::size_of::<cryptoki_sys::CK_OBJECT_CLASS>() as _,
        },
        cryptoki_sys::CK_ATTRIBUTE {
            type_: cryptoki_sys::CKA_TOKEN,
            pValue: (&mut no as *mut cryptoki_sys::CK_BBOOL).cast(),
            ulValueLen: 1,
        },
    ];
    let mut object = 0;
    // SAFETY: the template's pointers are valid for their lengths.
    let rv = unsafe {
        f().C_CreateObject.expect("C_CreateObject")(
            h,
            template.as_mut_ptr(),
            template.len() as _,
            &mut object,
        )
    };
    report("session-object", rv);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let module = args.next().expect("module path");
    let mut pin = args.next().expect("PIN").into_bytes();
    // SAFETY: loading a PKCS#11 module runs its initializers, which are ours.
    let loaded = unsafe { libloading::Library::new(&module) }.expect("dlopen");
    let lib = Box::leak(Box::new(loaded));
    type GetFunctionList = unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV;
    // SAFETY: C_GetFunctionList has this signature in every PKCS#11 module.
    let get = unsafe { lib.get::<GetFunctionList>(b"C_GetFunctionList") }.expect("exported");
    let mut list = std::ptr::null_mut();
    // SAFETY: `list` is a valid output; the list lives as long as the library.
    unsafe {
        report("get-function-list", get(&mut list));
        FUNCTIONS.set(&*list).expect("once");
        report(
            "initialize",
            f().C_Initialize.expect("C_Initialize")(std::ptr::null_mut()),
        );
    }
    let mut slots = [0 as CK_SLOT_ID; 8];
    let mut n = slots.len() as _;
    // SAFETY: `slots` holds `n` entries.
    report("slots", unsafe {
        f().C_GetSlotList.expect("C_GetSlotList")(1, slots.as_mut_ptr(), &mut n)
    });
    let slot = slots[0];
    let main_session = open(slot);
    // SAFETY: `pin` is valid for its length.
    report("login", unsafe {
        f().C_Login.expect("C_Login")(
            main_session,
            cryptoki_sys::CKU_USER,
            pin.as_mut_ptr(),
            pin.len() as _,
        )
    });
    session_object(main_session);
    MAIN_SESSION.set(main_session).expect("once");

    std::thread::spawn(move || {
        // Touch our thread-local first: it is then destroyed after those the
        // module's calls create on this thread (tokio's context).
        CLOSER.with(|c| c.0.set(0));
        let h = open(slot);
        session_object(h);
        CLOSER.with(|c| c.0.set(h));
    })
    .join()
    .expect("the thread");

    // SAFETY: `at_exit` is a plain function that lives as long as the process.
    let registered = unsafe { libc::atexit(at_exit) };
    assert_eq!(registered, 0, "atexit");
}
