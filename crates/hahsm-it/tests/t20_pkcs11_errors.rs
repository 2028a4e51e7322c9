//! The module's return codes for what a client can get wrong, each asserted
//! exactly; its behaviour at the edges (bad configuration, fork, finalize);
//! and the PIN lockout, last, since it locks the partition.
mod t20_pkcs11_support;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use cryptoki_sys as ck;
use hahsm_it::Standalone;
use t20_pkcs11_support::{expect_rv, module_path, raw, run_checks, rv, Env};

fn aes(s: &Session, attrs: &[Attribute]) -> ObjectHandle {
    let mut t: Vec<Attribute> = [
        Attribute::Token(false),
        Attribute::ValueLen(32.into()),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ]
    .into_iter()
    .filter(|base| !attrs.iter().any(|a| a.attribute_type() == base.attribute_type()))
    .collect();
    t.extend_from_slice(attrs);
    s.generate_key(&Mechanism::AesKeyGen, &t).expect("AES key")
}

fn ec_private(s: &Session, private_attrs: &[Attribute]) -> (ObjectHandle, ObjectHandle) {
    let mut privt = vec![Attribute::Token(false), Attribute::Sign(true)];
    privt.extend_from_slice(private_attrs);
    s.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &[
            Attribute::Token(false),
            Attribute::Verify(true),
            Attribute::EcParams(vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
        ],
        &privt,
    )
    .expect("EC key pair")
}

/// A handle the module never issued.
fn bogus() -> ObjectHandle {
    // SAFETY: the handle is only passed to the module, which must refuse it.
    unsafe { ObjectHandle::new_from_raw(999_999) }
}

fn bad_handles(env: &Env) {
    let s = env.user();
    expect_rv(
        s.sign_init(&Mechanism::EcdsaSha256, bogus()),
        RvError::KeyHandleInvalid,
    );
    expect_rv(
        s.get_attributes(bogus(), &[AttributeType::Label]),
        RvError::ObjectHandleInvalid,
    );
    expect_rv(s.destroy_object(bogus()), RvError::ObjectHandleInvalid);
    // SAFETY: plain call with a session handle that was never issued.
    let r = unsafe { env.raw.C_CloseSession.unwrap()(0xdead_beef) };
    assert_eq!(r, ck::CKR_SESSION_HANDLE_INVALID);
    expect_rv(
        env.p11
            .get_slot_info(cryptoki::slot::Slot::try_from(0x7777_7777u64).unwrap()),
        RvError::SlotIdInvalid,
    );
}

fn wrong_operation_state(env: &Env) {
    let s = env.user();
    let (_, private) = ec_private(&s, &[]);
    let h = s.handle();
    let mut len = 0;
    let sign = env.raw.C_Sign.unwrap();
    // SAFETY: valid pointers; no operation is active.
    let r = unsafe { sign(h, b"x".as_ptr() as *mut u8, 1, std::ptr::null_mut(), &mut len) };
    assert_eq!(r, ck::CKR_OPERATION_NOT_INITIALIZED);
    s.sign_init(&Mechanism::EcdsaSha256, private).unwrap();
    expect_rv(
        s.sign_init(&Mechanism::EcdsaSha256, private),
        RvError::OperationActive,
    );
    // A NULL mechanism ends the active operation (PKCS#11 3.0).
    // SAFETY: a NULL mechanism is allowed.
    let r = unsafe { env.raw.C_SignInit.unwrap()(h, std::ptr::null_mut(), raw::obj(private)) };
    assert_eq!(r, ck::CKR_OK);
    s.sign_init(&Mechanism::EcdsaSha256, private)
        .expect("a new operation can start");
    s.session_cancel_all();
    expect_rv(s.find_objects_final_raw(env), RvError::OperationNotInitialized);
}

trait Cancel {
    fn session_cancel_all(&self);
    fn find_objects_final_raw(&self, env: &Env) -> cryptoki::error::Result<()>;
}

impl Cancel for Session {
    fn session_cancel_all(&self) {
        // C_SessionCancel is reached through the interface list (3.0).
        let (_lib, f30) = raw::functions_3_0();
        // SAFETY: valid session handle and flags.
        let r = unsafe { f30.C_SessionCancel.unwrap()(self.handle(), ck::CKF_SIGN | ck::CKF_FIND_OBJECTS) };
        assert_eq!(r, ck::CKR_OK);
    }

    fn find_objects_final_raw(&self, env: &Env) -> cryptoki::error::Result<()> {
        // SAFETY: valid session handle.
        let r = unsafe { env.raw.C_FindObjectsFinal.unwrap()(self.handle()) };
        cryptoki::error::Rv::from(r).into_result(cryptoki::context::Function::FindObjectsFinal)
    }
}

fn buffer_too_small_keeps_the_operation(env: &Env) {
    let s = env.user();
    let (public, private) = ec_private(&s, &[]);
    s.sign_init(&Mechanism::EcdsaSha256, private).unwrap();
    let h = s.handle();
    let sign = |buf: *mut u8, len: &mut u64| {
        // SAFETY: `buf` is NULL or holds `*len` bytes.
        unsafe { env.raw.C_Sign.unwrap()(h, b"data".as_ptr() as *mut u8, 4, buf, len) }
    };
    let mut len = 0;
    assert_eq!(sign(std::ptr::null_mut(), &mut len), ck::CKR_OK);
    assert_eq!(len, 64, "a NULL buffer returns the length");
    let mut small = [0u8; 10];
    let mut n = small.len() as u64;
    assert_eq!(sign(small.as_mut_ptr(), &mut n), ck::CKR_BUFFER_TOO_SMALL);
    assert_eq!(n, 64, "the needed length is returned");
    let mut sig = [0u8; 64];
    let mut n = 64;
    assert_eq!(
        sign(sig.as_mut_ptr(), &mut n),
        ck::CKR_OK,
        "the operation stayed active"
    );
    s.verify(&Mechanism::EcdsaSha256, public, b"data", &sig).unwrap();
    assert_eq!(
        sign(sig.as_mut_ptr(), &mut n),
        ck::CKR_OPERATION_NOT_INITIALIZED,
        "and then ended"
    );
}

fn bad_arguments(env: &Env) {
    // SAFETY: each call passes a NULL where an output is required.
    unsafe {
        assert_eq!(
            env.raw.C_GetInfo.unwrap()(std::ptr::null_mut()),
            ck::CKR_ARGUMENTS_BAD
        );
        assert_eq!(
            env.raw.C_OpenSession.unwrap()(
                env.slot.id(),
                ck::CKF_SERIAL_SESSION,
                std::ptr::null_mut(),
                None,
                std::ptr::null_mut()
            ),
            ck::CKR_ARGUMENTS_BAD
        );
        assert_eq!(
            env.raw.C_GetSlotList.unwrap()(0, std::ptr::null_mut(), std::ptr::null_mut()),
            ck::CKR_ARGUMENTS_BAD
        );
        assert_eq!(
            env.raw.C_Finalize.unwrap()(std::ptr::dangling_mut()),
            ck::CKR_ARGUMENTS_BAD
        );
    }
    // Non-NULL pReserved in C_Initialize.
    let mut args = ck::CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: ck::CKF_OS_LOCKING_OK,
        pReserved: std::ptr::dangling_mut(),
    };
    // SAFETY: a valid CK_C_INITIALIZE_ARGS.
    let r = unsafe { env.raw.C_Initialize.unwrap()(&mut args as *mut _ as *mut _) };
    assert_eq!(r, ck::CKR_ARGUMENTS_BAD);
    args.pReserved = std::ptr::null_mut();
    // SAFETY: as above.
    let r = unsafe { env.raw.C_Initialize.unwrap()(&mut args as *mut _ as *mut _) };
    assert_eq!(r, ck::CKR_CRYPTOKI_ALREADY_INITIALIZED);
    // Serial sessions only.
    let mut h = 0;
    // SAFETY: valid pointers.
    let r = unsafe { env.raw.C_OpenSession.unwrap()(env.slot.id(), 0, std::ptr::null_mut(), None, &mut h) };
    assert_eq!(r, ck::CKR_SESSION_PARALLEL_NOT_SUPPORTED);
    // Mechanism parameters of the wrong size.
    let s = env.user();
    let (_, private) = ec_private(&s, &[]);
    let mut junk = [0u8; 5];
    let mut m = ck::CK_MECHANISM {
        mechanism: ck::CKM_ECDSA_SHA256,
        pParameter: junk.as_mut_ptr() as *mut _,
        ulParameterLen: 5,
    };
    // SAFETY: a valid mechanism whose parameter holds 5 bytes.
    let r = unsafe { env.raw.C_SignInit.unwrap()(s.handle(), &mut m, raw::obj(private)) };
    assert_eq!(r, ck::CKR_MECHANISM_PARAM_INVALID);
    m.mechanism = ck::CKM_SHA256_RSA_PKCS_PSS;
    // SAFETY: as above.
    let r = unsafe { env.raw.C_SignInit.unwrap()(s.handle(), &mut m, raw::obj(private)) };
    assert_eq!(r, ck::CKR_MECHANISM_PARAM_INVALID);
    m.mechanism = 0x8000_1234;
    m.ulParameterLen = 0;
    // SAFETY: as above.
    let r = unsafe { env.raw.C_SignInit.unwrap()(s.handle(), &mut m, raw::obj(private)) };
    assert_eq!(r, ck::CKR_MECHANISM_INVALID);
    // Waiting for slot events without blocking.
    let mut slot = 0;
    let wait = env.raw.C_WaitForSlotEvent.unwrap();
    // SAFETY: valid pointers.
    let r = unsafe { wait(ck::CKF_DONT_BLOCK, &mut slot, std::ptr::null_mut()) };
    assert_eq!(r, ck::CKR_NO_EVENT);
}

fn key_use_is_enforced(env: &Env) {
    let s = env.user();
    let k = aes(&s, &[Attribute::Encrypt(false)]);
    expect_rv(
        s.encrypt_init(&Mechanism::AesEcb, k),
        RvError::KeyFunctionNotPermitted,
    );
    expect_rv(
        s.sign_init(&Mechanism::EcdsaSha256, k),
        RvError::KeyTypeInconsistent,
    );
    expect_rv(s.sign_init(&Mechanism::AesEcb, k), RvError::MechanismInvalid);
    // Sensitive values are not revealed.
    let info = s.get_attribute_info(k, &[AttributeType::Value]).unwrap();
    assert!(
        matches!(info[0], cryptoki::object::AttributeInfo::Sensitive),
        "{info:?}"
    );
    let mut value = [0u8; 32];
    let mut template = [
        ck::CK_ATTRIBUTE {
            type_: ck::CKA_VALUE,
            pValue: value.as_mut_ptr() as *mut _,
            ulValueLen: 32,
        },
        ck::CK_ATTRIBUTE {
            type_: ck::CKA_VALUE_LEN,
            pValue: std::ptr::null_mut(),
            ulValueLen: 0,
        },
    ];
    let get_attributes = env.raw.C_GetAttributeValue.unwrap();
    // SAFETY: two attributes, the first with a 32-byte buffer, the second asking for its length.
    let r = unsafe { get_attributes(s.handle(), raw::obj(k), template.as_mut_ptr(), 2) };
    assert_eq!(r, ck::CKR_ATTRIBUTE_SENSITIVE);
    assert_eq!(template[0].ulValueLen, ck::CK_UNAVAILABLE_INFORMATION);
    assert_eq!(
        template[1].ulValueLen, 8,
        "the other attributes are still processed"
    );
    // Sensitive cannot be cleared, extractable cannot be set back.
    expect_rv(
        s.update_attributes(k, &[Attribute::Sensitive(false)]),
        RvError::AttributeReadOnly,
    );
    // An unextractable key cannot be wrapped.
    let kek = aes(&s, &[Attribute::Wrap(true)]);
    let (r, _) = raw::wrap(env, s.handle(), ck::CKM_AES_KEY_WRAP, raw::obj(kek), raw::obj(k));
    assert_eq!(r, ck::CKR_KEY_UNEXTRACTABLE);
    // A key that is not destroyable, is not.
    let fixed = aes(&s, &[Attribute::Destroyable(false)]);
    expect_rv(s.destroy_object(fixed), RvError::ActionProhibited);
    // A template that names an unknown attribute.
    expect_rv(
        s.create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::VendorDefined((AttributeType::VendorDefined(0x8000_4321), vec![1])),
        ]),
        RvError::AttributeTypeInvalid,
    );
}

fn login_rules(env: &Env) {
    let ro = env.p11.open_ro_session(env.slot).unwrap();
    let rw = env.p11.open_rw_session(env.slot).unwrap();
    // Before login: private objects and key generation are out of reach.
    expect_rv(
        rw.generate_key(&Mechanism::AesKeyGen, &[Attribute::ValueLen(16.into())]),
        RvError::UserNotLoggedIn,
    );
    expect_rv(
        rw.login(UserType::User, Some(&AuthPin::new("wrong-pin".into()))),
        RvError::PinIncorrect,
    );
    rw.login(UserType::User, Some(&env.pin())).unwrap();
    expect_rv(
        rw.login(UserType::User, Some(&env.pin())),
        RvError::UserAlreadyLoggedIn,
    );
    // The login covers every session of the token (the application's login).
    let private = ro
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Label(b"private-data".to_vec()),
        ])
        .expect("a session object in a read-only session");
    expect_rv(
        ro.create_object(&[Attribute::Class(ObjectClass::DATA), Attribute::Token(true)]),
        RvError::SessionReadOnly,
    );
    assert_eq!(
        ro.find_objects(&[Attribute::Label(b"private-data".to_vec())])
            .unwrap(),
        vec![private]
    );
    rw.logout().unwrap();
    expect_rv(rw.logout(), RvError::UserNotLoggedIn);
    assert!(
        ro.find_objects(&[Attribute::Label(b"private-data".to_vec())])
            .unwrap()
            .is_empty(),
        "private objects are invisible before login"
    );
    // The SO cannot log in while a read-only session is open.
    expect_rv(
        rw.login(UserType::So, Some(&AuthPin::new(hahsm_it::SO_PIN.into()))),
        RvError::SessionReadOnlyExists,
    );
    drop(ro);
    rw.login(UserType::So, Some(&AuthPin::new(hahsm_it::SO_PIN.into())))
        .expect("SO login");
    expect_rv(
        rw.login(UserType::User, Some(&env.pin())),
        RvError::UserAnotherAlreadyLoggedIn,
    );
    // The SO re-initializes the user PIN to the same value.
    rw.init_pin(&env.pin()).expect("C_InitPIN as SO");
    rw.logout().unwrap();
    expect_rv(rw.init_pin(&env.pin()), RvError::UserNotLoggedIn);
    // C_SetPIN as the user, and back.
    rw.login(UserType::User, Some(&env.pin())).unwrap();
    let other = AuthPin::new("other-pin-99".into());
    rw.set_pin(&env.pin(), &other).expect("C_SetPIN");
    rw.set_pin(&other, &env.pin()).expect("C_SetPIN back");
    rw.logout().unwrap();
}

/// Signing with a token key runs on the module's pooled connections, each
/// logged in on its own: a logout must reach them all, and a new login too.
fn logout_reaches_pooled_connections(env: &Env) {
    let s = env.user();
    let (_, private) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
            ],
            &[Attribute::Token(true), Attribute::Sign(true)],
        )
        .expect("token EC key pair");
    // Several threads at once, so that several pooled connections exist.
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                let t = env.user();
                for _ in 0..20 {
                    t.sign(&Mechanism::EcdsaSha256, private, b"pooled")
                        .expect("signs");
                }
            });
        }
    });
    s.logout().expect("logout");
    for _ in 0..8 {
        let refused = s
            .sign(&Mechanism::EcdsaSha256, private, b"after logout")
            .expect_err("a private key cannot sign after the logout");
        // The private object is out of sight until the next login.
        assert!(
            matches!(rv(&refused), RvError::UserNotLoggedIn | RvError::KeyHandleInvalid),
            "{refused}"
        );
    }
    s.login(UserType::User, Some(&env.pin())).expect("login again");
    s.sign(&Mechanism::EcdsaSha256, private, b"logged in again")
        .expect("signs after a new login");
    s.destroy_object(private).expect("destroy");
}

fn context_specific_login_for_always_authenticate_keys(env: &Env) {
    let s = env.user();
    let (_, private) = ec_private(&s, &[Attribute::AlwaysAuthenticate(true)]);
    expect_rv(
        s.sign(&Mechanism::EcdsaSha256, private, b"x"),
        RvError::UserNotLoggedIn,
    );
    s.sign_init(&Mechanism::EcdsaSha256, private).unwrap();
    expect_rv(
        s.login(UserType::ContextSpecific, Some(&AuthPin::new("bad-pin-1".into()))),
        RvError::PinIncorrect,
    );
    s.login(UserType::ContextSpecific, Some(&env.pin())).unwrap();
    let h = s.handle();
    let mut sig = [0u8; 64];
    let mut n = 64;
    // SAFETY: `sig` holds `n` bytes.
    let r = unsafe { env.raw.C_Sign.unwrap()(h, b"x".as_ptr() as *mut u8, 1, sig.as_mut_ptr(), &mut n) };
    assert_eq!(r, ck::CKR_OK);
}

fn interfaces_and_function_lists_have_no_null_entries(env: &Env) {
    let (_lib, f30) = raw::functions_3_0();
    assert_eq!((f30.version.major, f30.version.minor), (3, 0));
    let (_lib32, f32) = raw::functions_3_2();
    assert_eq!(
        (f32.version.major, f32.version.minor),
        (3, 2),
        "the default interface is 3.2"
    );
    // Every entry of the 3.0 and 3.2 lists is a function (each struct is all
    // pointers after the version).
    fn entries<T>(list: &T) -> &[usize] {
        let n = std::mem::size_of::<T>() / std::mem::size_of::<usize>();
        // SAFETY: the struct is `n` words: a padded CK_VERSION, then function pointers.
        unsafe { std::slice::from_raw_parts(list as *const T as *const usize, n) }
    }
    assert!(
        entries(&f30)[1..].iter().all(|w| *w != 0),
        "a NULL entry in the 3.0 function list"
    );
    assert!(
        entries(&f32)[1..].iter().all(|w| *w != 0),
        "a NULL entry in the 3.2 function list"
    );
    // An unsupported function answers, rather than being NULL: after the
    // session check, as every function does (PKCS#11 3.0 §5.1).
    let h = raw::session(env);
    // SAFETY: a valid session handle; the other arguments are not read.
    let r = unsafe { f30.C_MessageSignInit.unwrap()(h, std::ptr::null_mut(), 0) };
    assert_eq!(r, ck::CKR_FUNCTION_NOT_SUPPORTED);
    // SAFETY: as above, with a handle the module never issued.
    let r = unsafe { f30.C_MessageSignInit.unwrap()(0xdead_beef, std::ptr::null_mut(), 0) };
    assert_eq!(r, ck::CKR_SESSION_HANDLE_INVALID);
    // SAFETY: a session handle, closed once.
    assert_eq!(unsafe { env.raw.C_CloseSession.unwrap()(h) }, ck::CKR_OK);
}

fn fork_child_must_initialize_again(env: &Env) {
    let s = env.user();
    let (public, private) = ec_private(&s, &[]);
    let raw = env.raw;
    let slot = env.slot.id();
    let pin = env.st.pin.clone();
    // SAFETY: the child only calls the module and then _exit()s.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let code = (|| {
                let mut info = std::mem::MaybeUninit::<ck::CK_INFO>::uninit();
                // SAFETY: valid out-pointer.
                if unsafe { raw.C_GetInfo.unwrap()(info.as_mut_ptr()) } != ck::CKR_CRYPTOKI_NOT_INITIALIZED {
                    return 10;
                }
                // SAFETY: NULL arguments are allowed.
                if unsafe { raw.C_Initialize.unwrap()(std::ptr::null_mut()) } != ck::CKR_OK {
                    return 11;
                }
                let mut h = 0;
                // SAFETY: valid pointers.
                let r = unsafe {
                    raw.C_OpenSession.unwrap()(
                        slot,
                        ck::CKF_SERIAL_SESSION,
                        std::ptr::null_mut(),
                        None,
                        &mut h,
                    )
                };
                if r != ck::CKR_OK {
                    return 12;
                }
                // SAFETY: valid PIN buffer.
                if unsafe { raw.C_Login.unwrap()(h, ck::CKU_USER, pin.as_ptr() as *mut u8, pin.len() as u64) }
                    != ck::CKR_OK
                {
                    return 13;
                }
                // SAFETY: finalize with NULL.
                if unsafe { raw.C_Finalize.unwrap()(std::ptr::null_mut()) } != ck::CKR_OK {
                    return 14;
                }
                0
            })();
            // SAFETY: ends the child without running the parent's atexit handlers.
            unsafe { nix::libc::_exit(code) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).expect("waitpid");
            assert_eq!(
                status,
                nix::sys::wait::WaitStatus::Exited(child, 0),
                "the child's steps"
            );
        }
    }
    // The parent's state is untouched.
    let sig = s
        .sign(&Mechanism::EcdsaSha256, private, b"after fork")
        .expect("parent still signs");
    s.verify(&Mechanism::EcdsaSha256, public, b"after fork", &sig)
        .unwrap();
}

fn pin_lockout(env: &Env) {
    let s = env.p11.open_rw_session(env.slot).unwrap();
    let bad = AuthPin::new("not-the-pin".into());
    let mut last = RvError::PinIncorrect;
    for _ in 0..12 {
        match s.login(UserType::User, Some(&bad)) {
            Err(e) => last = t20_pkcs11_support::rv(&e),
            Ok(()) => panic!("a wrong PIN logged in"),
        }
        if last == RvError::PinLocked {
            break;
        }
    }
    assert_eq!(last, RvError::PinLocked);
    expect_rv(s.login(UserType::User, Some(&env.pin())), RvError::PinLocked);
    let info = env.p11.get_token_info(env.slot).unwrap();
    assert!(info.user_pin_locked(), "the token reports the lock");
}

#[test]
fn client_errors_have_exact_return_codes() {
    let st = Standalone::new();
    // A missing config: C_Initialize fails cleanly, and says why in the log.
    std::env::set_var("HAHSM_CONF", st.path("missing.toml"));
    std::env::set_var("HAHSM_PKCS11_LOG", st.path("pkcs11.log"));
    {
        let p11 = Pkcs11::new(module_path()).unwrap();
        expect_rv(
            p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)),
            RvError::GeneralError,
        );
        let log = std::fs::read_to_string(st.path("pkcs11.log")).unwrap();
        assert!(log.contains("missing.toml"), "log: {log}");
        // A garbled one too.
        std::fs::write(st.path("bad.toml"), "cert = [").unwrap();
        std::env::set_var("HAHSM_CONF", st.path("bad.toml"));
        expect_rv(
            p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)),
            RvError::GeneralError,
        );
        let log = std::fs::read_to_string(st.path("pkcs11.log")).unwrap();
        assert!(log.contains("is invalid"), "log: {log}");
    }
    std::env::set_var("HAHSM_CONF", &st.conf);
    let env = Env::with(st);
    run_checks(
        &env,
        &[
            ("bad_handles", bad_handles),
            ("wrong_operation_state", wrong_operation_state),
            (
                "buffer_too_small_keeps_the_operation",
                buffer_too_small_keeps_the_operation,
            ),
            ("bad_arguments", bad_arguments),
            ("key_use_is_enforced", key_use_is_enforced),
            ("login_rules", login_rules),
            (
                "logout_reaches_pooled_connections",
                logout_reaches_pooled_connections,
            ),
            (
                "context_specific_login_for_always_authenticate_keys",
                context_specific_login_for_always_authenticate_keys,
            ),
            (
                "interfaces_and_function_lists_have_no_null_entries",
                interfaces_and_function_lists_have_no_null_entries,
            ),
            (
                "fork_child_must_initialize_again",
                fork_child_must_initialize_again,
            ),
            ("pin_lockout", pin_lockout),
        ],
    );
    assert!(
        !env.log().contains(&env.st.pin),
        "the PIN never reaches the module's log"
    );
}
