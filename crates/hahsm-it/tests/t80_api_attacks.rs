//! Attacks through the PKCS#11 API on the real module and member, each refused
//! with its exact return code: reading a sensitive key's value by every path,
//! wrapping what may not be wrapped, the wrap-then-decrypt key-separation
//! attack (shown to work with the policy off, refused with it on), mechanisms
//! a key does not allow, handles from another process or login state, replayed
//! request frames, and PIN guessing, sequential and in parallel.
mod t20_pkcs11_support;

use cryptoki::error::RvError;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use cryptoki_sys as ck;
use hahsm_it::Standalone;
use hahsm_proto::client::{Request, RequestFrame, Response, ResponseFrame};
use hahsm_token::{AttrValue, Template};
use t20_pkcs11_support::{expect_rv, raw, run_checks, Env};

/// The value of the sensitive AES key the attacks try to read.
const SECRET: [u8; 32] = [0x5a; 32];
const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn oaep() -> Mechanism<'static> {
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        MechanismType::SHA256,
        PkcsMgfType::MGF1_SHA256,
        PkcsOaepSource::empty(),
    ))
}

/// A token AES key with the known value, sensitive; `extractable` as asked.
fn secret_key(s: &Session, label: &str, extractable: bool) -> ObjectHandle {
    s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Value(SECRET.to_vec()),
        Attribute::Sensitive(true),
        Attribute::Extractable(extractable),
        Attribute::Encrypt(true),
    ])
    .expect("sensitive key imported")
}

/// A generated AES key with exactly the usages given.
fn aes_with(s: &Session, usages: &[Attribute]) -> cryptoki::error::Result<ObjectHandle> {
    let mut t = vec![
        Attribute::Token(false),
        Attribute::ValueLen(32.into()),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
    ];
    t.retain(|a| !usages.iter().any(|u| u.attribute_type() == a.attribute_type()));
    t.extend_from_slice(usages);
    s.generate_key(&Mechanism::AesKeyGen, &t)
}

fn rsa_pair(
    s: &Session,
    public: &[Attribute],
    private: &[Attribute],
) -> cryptoki::error::Result<(ObjectHandle, ObjectHandle)> {
    let mut pubt = vec![Attribute::Token(false), Attribute::ModulusBits(2048.into())];
    pubt.extend_from_slice(public);
    let mut privt = vec![Attribute::Token(false)];
    privt.extend_from_slice(private);
    s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &pubt, &privt)
}

fn ec_pair(s: &Session, private: &[Attribute]) -> (ObjectHandle, ObjectHandle) {
    let mut privt = vec![Attribute::Token(true), Attribute::Sign(true)];
    privt.extend_from_slice(private);
    s.generate_key_pair(
        &Mechanism::EccKeyPairGen,
        &[
            Attribute::Token(true),
            Attribute::Verify(true),
            Attribute::EcParams(P256.to_vec()),
        ],
        &privt,
    )
    .expect("EC key pair")
}

/// `C_GetAttributeValue` for `CKA_VALUE` with a buffer, as an application
/// would call it (the safe wrapper skips attributes it is told are sensitive).
fn read_value(env: &Env, s: &Session, k: ObjectHandle) -> u64 {
    let mut value = [0u8; 64];
    let mut template = [ck::CK_ATTRIBUTE {
        type_: ck::CKA_VALUE,
        pValue: value.as_mut_ptr() as *mut _,
        ulValueLen: value.len() as u64,
    }];
    let get = env.raw.C_GetAttributeValue.unwrap();
    // SAFETY: one attribute with a 64-byte buffer.
    let r = unsafe { get(s.handle(), raw::obj(k), template.as_mut_ptr(), 1) };
    assert_eq!(template[0].ulValueLen, ck::CK_UNAVAILABLE_INFORMATION);
    assert_eq!(value, [0u8; 64], "nothing written to the buffer");
    r
}

fn admin(env: &Env, args: &[&str]) {
    let so = env.st.so_secret.to_str().unwrap();
    env.st
        .member
        .admin(&["hsm", "login", "--so-secret", so])
        .expect_ok();
    env.st.member.admin(args).expect_ok();
}

fn partition_policy(env: &Env, policy: &str, value: &str) {
    admin(
        env,
        &[
            "partition",
            "change-policy",
            "--partition",
            &env.st.partition,
            "--policy",
            policy,
            "--value",
            value,
        ],
    );
}

/// `CKA_VALUE` of a sensitive key: not by reading it, not through a copy or a
/// change that would make it readable, and a find on the value is no oracle.
fn sensitive_value_by_every_path(env: &Env) {
    let s = env.user();
    for extractable in [false, true] {
        let label = format!("sensitive-{extractable}");
        let k = secret_key(&s, &label, extractable);
        let info = s.get_attribute_info(k, &[AttributeType::Value]).unwrap();
        assert!(matches!(info[0], AttributeInfo::Sensitive), "{info:?}");
        assert_eq!(read_value(env, &s, k), ck::CKR_ATTRIBUTE_SENSITIVE);
        // A copy that would be readable.
        for weaker in [Attribute::Sensitive(false), Attribute::Extractable(true)] {
            if extractable && matches!(weaker, Attribute::Extractable(_)) {
                continue;
            }
            expect_rv(
                s.copy_object(k, std::slice::from_ref(&weaker)),
                RvError::AttributeReadOnly,
            );
            expect_rv(s.update_attributes(k, &[weaker]), RvError::AttributeReadOnly);
        }
        expect_rv(
            s.copy_object(k, &[Attribute::Private(false)]),
            RvError::TemplateInconsistent,
        );
        // A permitted copy is just as sensitive.
        let copy = s
            .copy_object(k, &[Attribute::Label(b"copy".to_vec()), Attribute::Token(false)])
            .expect("a plain copy");
        assert_eq!(read_value(env, &s, copy), ck::CKR_ATTRIBUTE_SENSITIVE);
        // Finding by value: the right value and a wrong one answer alike.
        let by_label = Attribute::Label(label.as_bytes().to_vec());
        assert_eq!(s.find_objects(std::slice::from_ref(&by_label)).unwrap(), vec![k]);
        for guess in [SECRET, [0u8; 32]] {
            let found = s
                .find_objects(&[by_label.clone(), Attribute::Value(guess.to_vec())])
                .unwrap();
            assert!(found.is_empty(), "a find on CKA_VALUE matched: an oracle");
            let found = s.find_objects(&[Attribute::Value(guess.to_vec())]).unwrap();
            assert!(found.is_empty(), "a find on CKA_VALUE alone matched");
        }
        s.destroy_object(copy).unwrap();
    }
    // An EC private key's scalar is not findable either.
    let (_, private) = ec_pair(&s, &[Attribute::Label(b"ec-find".to_vec())]);
    for guess in [vec![1u8; 32], vec![0u8; 32]] {
        assert!(s
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Value(guess)
            ])
            .unwrap()
            .is_empty());
    }
    assert_eq!(read_value(env, &s, private), ck::CKR_ATTRIBUTE_SENSITIVE);
}

/// A key that is not extractable cannot be wrapped; a key that demands a
/// trusted wrapping key cannot be wrapped under one a user marked trusted,
/// because a user cannot mark keys trusted.
fn wrapping_what_may_not_be_wrapped(env: &Env) {
    let s = env.user();
    let kek = aes_with(&s, &[Attribute::Wrap(true)]).unwrap();
    let fixed = secret_key(&s, "not-extractable", false);
    expect_rv(
        s.wrap_key(&Mechanism::AesKeyWrap, kek, fixed),
        RvError::KeyUnextractable,
    );
    let guarded = s
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Value(SECRET.to_vec()),
            Attribute::Extractable(true),
            Attribute::WrapWithTrusted(true),
        ])
        .unwrap();
    expect_rv(
        s.wrap_key(&Mechanism::AesKeyWrap, kek, guarded),
        RvError::KeyFunctionNotPermitted,
    );
    expect_rv(
        aes_with(&s, &[Attribute::Wrap(true), Attribute::Trusted(true)]),
        RvError::AttributeReadOnly,
    );
    expect_rv(
        s.update_attributes(kek, &[Attribute::Trusted(true)]),
        RvError::AttributeReadOnly,
    );
    // The partition SO may mark a public key trusted; the user then wraps with it.
    let (public, _) = rsa_pair(&s, &[Attribute::Wrap(true)], &[Attribute::Unwrap(true)]).unwrap();
    let attrs = s
        .get_attributes(public, &[AttributeType::Modulus, AttributeType::PublicExponent])
        .unwrap();
    s.logout().unwrap();
    s.login(UserType::So, Some(&AuthPin::new(hahsm_it::SO_PIN.into())))
        .expect("SO login");
    let mut trusted = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(false),
        Attribute::Wrap(true),
        Attribute::Trusted(true),
    ];
    trusted.extend(attrs);
    let trusted_kek = s.create_object(&trusted).expect("the SO marks a key trusted");
    s.logout().unwrap();
    s.login(UserType::User, Some(&env.pin())).unwrap();
    s.wrap_key(&oaep(), trusted_kek, guarded)
        .expect("a trusted key wraps it");
}

/// RFC 3394 unwrapping done with nothing but single-block AES decryptions:
/// what an application can do with a key that both wraps and decrypts (ECB).
fn rfc3394_unwrap_by_decryption(decrypt_block: impl Fn(&[u8]) -> Vec<u8>, wrapped: &[u8]) -> Vec<u8> {
    let n = wrapped.len() / 8 - 1;
    let mut a: [u8; 8] = wrapped[..8].try_into().unwrap();
    let mut r: Vec<[u8; 8]> = (1..=n)
        .map(|i| wrapped[i * 8..i * 8 + 8].try_into().unwrap())
        .collect();
    for j in (0..6).rev() {
        for i in (1..=n).rev() {
            let t = (n * j + i) as u64;
            let block = [(u64::from_be_bytes(a) ^ t).to_be_bytes(), r[i - 1]].concat();
            let out = decrypt_block(&block);
            a = out[..8].try_into().unwrap();
            r[i - 1] = out[8..].try_into().unwrap();
        }
    }
    assert_eq!(a, [0xa6; 8], "the RFC 3394 integrity value");
    r.concat()
}

/// The wrap-then-decrypt attack: wrap a sensitive, extractable key under a key
/// that also decrypts, then decrypt the blob. With policy 30 off (the
/// default) it reveals the key, for a single AES key and for an RSA pair; with
/// it on, such keys cannot be made or used.
fn wrap_then_decrypt(env: &Env) {
    let s = env.user();
    let target = secret_key(&s, "wrap-then-decrypt", true);

    // Policy off: the attack works, and these tests show it.
    let both = aes_with(&s, &[Attribute::Wrap(true), Attribute::Decrypt(true)]).unwrap();
    let blob = s.wrap_key(&Mechanism::AesKeyWrap, both, target).unwrap();
    let revealed = rfc3394_unwrap_by_decryption(|b| s.decrypt(&Mechanism::AesEcb, both, b).unwrap(), &blob);
    assert_eq!(revealed, SECRET, "policy off: the AES key is revealed");
    let (public, private) = rsa_pair(&s, &[Attribute::Wrap(true)], &[Attribute::Decrypt(true)]).unwrap();
    let blob = s.wrap_key(&oaep(), public, target).unwrap();
    assert_eq!(
        s.decrypt(&oaep(), private, &blob).unwrap(),
        SECRET,
        "policy off: revealed through an RSA pair"
    );

    partition_policy(env, "30", "1");
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Making such keys.
        expect_rv(
            aes_with(&s, &[Attribute::Wrap(true), Attribute::Decrypt(true)]),
            RvError::TemplateInconsistent,
        );
        expect_rv(
            aes_with(&s, &[Attribute::Unwrap(true), Attribute::Encrypt(true)]),
            RvError::TemplateInconsistent,
        );
        expect_rv(
            rsa_pair(&s, &[Attribute::Wrap(true)], &[Attribute::Decrypt(true)]),
            RvError::TemplateInconsistent,
        );
        // Turning a wrapping key into one that decrypts, directly or by a copy.
        let wrap_only = aes_with(&s, &[Attribute::Wrap(true)]).unwrap();
        expect_rv(
            s.update_attributes(wrap_only, &[Attribute::Decrypt(true)]),
            RvError::TemplateInconsistent,
        );
        expect_rv(
            s.copy_object(wrap_only, &[Attribute::Decrypt(true)]),
            RvError::TemplateInconsistent,
        );
        // A key made before the policy is held to it when used.
        expect_rv(
            s.wrap_key(&Mechanism::AesKeyWrap, both, target),
            RvError::KeyFunctionNotPermitted,
        );
        expect_rv(
            s.decrypt(&Mechanism::AesEcb, both, &[0u8; 16]),
            RvError::KeyFunctionNotPermitted,
        );
        // Keys that keep to one side work, and the defaults keep to one side.
        s.wrap_key(&Mechanism::AesKeyWrap, wrap_only, target)
            .expect("a wrap-only key wraps");
        let (public, private) = rsa_pair(&s, &[], &[]).expect("default RSA templates pass");
        let ct = s.encrypt(&oaep(), public, b"hello").unwrap();
        assert_eq!(s.decrypt(&oaep(), private, &ct).unwrap(), b"hello");
        expect_rv(
            s.wrap_key(&oaep(), public, target),
            RvError::KeyFunctionNotPermitted,
        );
    }));
    partition_policy(env, "30", "0");
    if let Err(panic) = refused {
        std::panic::resume_unwind(panic);
    }
}

/// A key restricted by `CKA_ALLOWED_MECHANISMS` serves no other mechanism, and
/// the list can be narrowed but not widened.
fn allowed_mechanisms(env: &Env) {
    let s = env.user();
    let k = aes_with(
        &s,
        &[
            Attribute::Encrypt(true),
            Attribute::Wrap(true),
            Attribute::AllowedMechanisms(vec![MechanismType::AES_CBC_PAD, MechanismType::AES_KEY_WRAP]),
        ],
    )
    .unwrap();
    s.encrypt(&Mechanism::AesCbcPad([7; 16]), k, b"allowed")
        .expect("an allowed mechanism");
    expect_rv(
        s.encrypt(&Mechanism::AesEcb, k, &[0; 16]),
        RvError::KeyFunctionNotPermitted,
    );
    let target = secret_key(&s, "allowed-target", true);
    s.wrap_key(&Mechanism::AesKeyWrap, k, target).unwrap();
    expect_rv(
        s.update_attributes(k, &[Attribute::AllowedMechanisms(vec![MechanismType::AES_ECB])]),
        RvError::AttributeReadOnly,
    );
    expect_rv(
        s.update_attributes(k, &[Attribute::AllowedMechanisms(vec![])]),
        RvError::AttributeReadOnly,
    );
    s.update_attributes(
        k,
        &[Attribute::AllowedMechanisms(vec![MechanismType::AES_CBC_PAD])],
    )
    .expect("narrowed");
    expect_rv(
        s.wrap_key(&Mechanism::AesKeyWrap, k, target),
        RvError::KeyFunctionNotPermitted,
    );
    let (_, private) = ec_pair(
        &s,
        &[Attribute::AllowedMechanisms(vec![MechanismType::ECDSA_SHA256])],
    );
    s.sign(&Mechanism::EcdsaSha256, private, b"ok").unwrap();
    expect_rv(
        s.sign(&Mechanism::EcdsaSha384, private, b"no"),
        RvError::KeyFunctionNotPermitted,
    );
}

/// After logout, and as the SO, the user's private key is out of reach through
/// the same session and handle; logged in again, the handle works.
fn handles_across_login_states(env: &Env) {
    let s = env.user();
    let (_, private) = ec_pair(&s, &[Attribute::Label(b"login-state".to_vec())]);
    s.sign(&Mechanism::EcdsaSha256, private, b"x").unwrap();
    s.logout().unwrap();
    expect_rv(
        s.sign(&Mechanism::EcdsaSha256, private, b"x"),
        RvError::KeyHandleInvalid,
    );
    expect_rv(
        s.get_attributes(private, &[AttributeType::Label]),
        RvError::ObjectHandleInvalid,
    );
    s.login(UserType::So, Some(&AuthPin::new(hahsm_it::SO_PIN.into())))
        .unwrap();
    expect_rv(
        s.sign(&Mechanism::EcdsaSha256, private, b"x"),
        RvError::KeyHandleInvalid,
    );
    s.logout().unwrap();
    s.login(UserType::User, Some(&env.pin())).unwrap();
    s.sign(&Mechanism::EcdsaSha256, private, b"x")
        .expect("the same handle after logging in again");
}

/// Another process holds none of this process's sessions or object handles,
/// even once it has initialized the module and logged in itself.
fn handles_from_another_process(env: &Env) {
    let s = env.user();
    let (_, private) = ec_pair(&s, &[]);
    let (session, key) = (s.handle(), raw::obj(private));
    let raw = env.raw;
    let slot = env.slot.id();
    let pin = env.st.pin.clone();
    // SAFETY: the child only calls the module and then _exit()s.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let code = (|| {
                let mut m = ck::CK_MECHANISM {
                    mechanism: ck::CKM_ECDSA_SHA256,
                    pParameter: std::ptr::null_mut(),
                    ulParameterLen: 0,
                };
                // SAFETY: NULL arguments are allowed.
                if unsafe { raw.C_Initialize.unwrap()(std::ptr::null_mut()) } != ck::CKR_OK {
                    return 10;
                }
                // SAFETY: valid mechanism; the handles are only numbers to the module.
                if unsafe { raw.C_SignInit.unwrap()(session, &mut m, key) } != ck::CKR_SESSION_HANDLE_INVALID
                {
                    return 11;
                }
                let mut mine = 0;
                // SAFETY: valid pointers.
                let r = unsafe {
                    raw.C_OpenSession.unwrap()(
                        slot,
                        ck::CKF_SERIAL_SESSION,
                        std::ptr::null_mut(),
                        None,
                        &mut mine,
                    )
                };
                if r != ck::CKR_OK {
                    return 12;
                }
                // SAFETY: valid PIN buffer.
                if unsafe {
                    raw.C_Login.unwrap()(mine, ck::CKU_USER, pin.as_ptr() as *mut u8, pin.len() as u64)
                } != ck::CKR_OK
                {
                    return 13;
                }
                // SAFETY: as above.
                if unsafe { raw.C_SignInit.unwrap()(mine, &mut m, key) } != ck::CKR_KEY_HANDLE_INVALID {
                    return 14;
                }
                if mine != session {
                    // SAFETY: a plain call with a handle value.
                    let closed = unsafe { raw.C_CloseSession.unwrap()(session) };
                    if closed != ck::CKR_SESSION_HANDLE_INVALID {
                        return 15;
                    }
                }
                // SAFETY: finalize with NULL.
                unsafe { raw.C_Finalize.unwrap()(std::ptr::null_mut()) };
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
                "the child's steps (exit code = the step that failed)"
            );
        }
    }
    s.sign(&Mechanism::EcdsaSha256, private, b"parent")
        .expect("the parent's session and key still work");
}

/// Guessing the PIN locks it at the policy's limit, and then the right PIN
/// is refused too. Last: it locks the partition.
fn pin_guessing_locks_out(env: &Env) {
    partition_policy(env, "15", "3");
    let s = env.p11.open_rw_session(env.slot).unwrap();
    let bad = AuthPin::new("guess-0000".into());
    expect_rv(s.login(UserType::User, Some(&bad)), RvError::PinIncorrect);
    expect_rv(s.login(UserType::User, Some(&bad)), RvError::PinIncorrect);
    expect_rv(s.login(UserType::User, Some(&bad)), RvError::PinLocked);
    expect_rv(s.login(UserType::User, Some(&env.pin())), RvError::PinLocked);
    assert!(env.p11.get_token_info(env.slot).unwrap().user_pin_locked());
}

#[test]
fn api_attacks_are_refused_with_exact_codes() {
    let env = Env::new();
    run_checks(
        &env,
        &[
            ("sensitive_value_by_every_path", sensitive_value_by_every_path),
            (
                "wrapping_what_may_not_be_wrapped",
                wrapping_what_may_not_be_wrapped,
            ),
            ("wrap_then_decrypt", wrap_then_decrypt),
            ("allowed_mechanisms", allowed_mechanisms),
            ("handles_across_login_states", handles_across_login_states),
            ("handles_from_another_process", handles_from_another_process),
            ("pin_guessing_locks_out", pin_guessing_locks_out),
        ],
    );
    let log = env.st.member.log();
    assert!(
        !log.contains(&env.st.pin),
        "the PIN never reaches the member's log"
    );
    assert!(!log.contains("panicked"), "{log}");
}

// --- Replayed frames and parallel guessing, through the client link itself.

/// Sends raw frame bytes on a fresh TLS connection made with `conf`'s
/// certificate, after the hello, and returns the member's answer.
async fn replay(st: &Standalone, conf: &std::path::Path, frame: &[u8]) -> ResponseFrame {
    let mut c = st.raw_client(conf, "replay").await;
    hahsm_link::write_frame(&mut c, frame).await.unwrap();
    let answer = hahsm_link::read_frame(&mut c, 1 << 20)
        .await
        .unwrap()
        .expect("an answer");
    hahsm_proto::decode(&answer).unwrap()
}

fn frame(request: Request) -> Vec<u8> {
    hahsm_proto::encode(&RequestFrame {
        id: 7,
        deadline_ms: 10_000,
        issued_unix_ms: hahsm_proto::client::unix_ms(),
        request,
    })
}

fn code(r: &ResponseFrame) -> u64 {
    r.result.as_ref().expect_err("the replay must be refused").code
}

#[test]
fn replayed_request_frames_act_for_no_one() {
    use hahsm_token::{ck, Mechanism};
    let st = Standalone::new();
    let other = st.add_client("app2", true);
    let stranger = st.add_client("app3", false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = st.connect().await;
        let op_id = hahsm_client::connection::new_op_id();
        let keygen = Request::GenerateKey {
            partition: st.partition.clone(),
            mechanism: Mechanism::new(ck::CKM_AES_KEY_GEN),
            template: Template::new()
                .with(ck::CKA_TOKEN, AttrValue::Bool(true))
                .with(ck::CKA_VALUE_LEN, AttrValue::Ulong(32))
                .with(ck::CKA_LABEL, AttrValue::Bytes(b"replayed".to_vec())),
            op_id,
        };
        let Response::Object(key) = conn.call(keygen.clone()).await.unwrap() else {
            panic!("a key")
        };
        // The same write again, on the same client: the same key, not a second one.
        assert_eq!(conn.call(keygen.clone()).await.unwrap(), Response::Object(key));
        let create = Request::CreateObject {
            partition: st.partition.clone(),
            template: Template::new()
                .with(ck::CKA_CLASS, AttrValue::Ulong(ck::CKO_DATA))
                .with(ck::CKA_TOKEN, AttrValue::Bool(true))
                .with(ck::CKA_PRIVATE, AttrValue::Bool(true))
                .with(ck::CKA_LABEL, AttrValue::Bytes(b"replayed".to_vec())),
            op_id: hahsm_client::connection::new_op_id(),
        };
        conn.call(create.clone()).await.unwrap();
        conn.call(create.clone()).await.unwrap();
        let found = conn
            .call(Request::FindObjects {
                partition: st.partition.clone(),
                template: Template::new().with(ck::CKA_LABEL, AttrValue::Bytes(b"replayed".to_vec())),
                limit: 100,
                read: 0,
            })
            .await
            .unwrap();
        assert!(
            matches!(&found, Response::Objects(o) if o.len() == 2),
            "one key and one data object: {found:?}"
        );

        // Frames the first client sent, replayed from other certificates: they
        // carry no login and no authority of the first client.
        let encrypt = Request::Encrypt {
            partition: st.partition.clone(),
            key,
            mechanism: Mechanism::new(ck::CKM_AES_ECB),
            data: vec![0; 16],
        };
        conn.call(encrypt.clone())
            .await
            .expect("the first client may encrypt");
        for (request, want) in [
            (encrypt.clone(), ck::CKR_KEY_HANDLE_INVALID),
            (keygen, ck::CKR_USER_NOT_LOGGED_IN),
            (create, ck::CKR_USER_NOT_LOGGED_IN),
        ] {
            let answer = replay(&st, &other, &frame(request)).await;
            assert_eq!(code(&answer), want, "{answer:?}");
        }
        let answer = replay(&st, &stranger, &frame(encrypt)).await;
        assert_eq!(code(&answer), ck::CKR_TOKEN_NOT_RECOGNIZED, "{answer:?}");
    });
    let list = st.keys(&["list"]).expect_ok().stdout;
    assert_eq!(
        list.matches(" replayed ").count(),
        2,
        "one key, one data object: {list}"
    );
}

/// Guesses sent in parallel, over several connections, are each counted:
/// no more than the limit are ever checked against the PIN.
#[test]
fn parallel_pin_guesses_are_all_counted() {
    use hahsm_client::MemberConnection;
    let st = Standalone::new();
    let so = st.so_secret.to_str().unwrap().to_string();
    st.member.admin(&["hsm", "login", "--so-secret", &so]).expect_ok();
    st.member
        .admin(&[
            "partition",
            "change-policy",
            "--partition",
            &st.partition,
            "--policy",
            "15",
            "--value",
            "3",
        ])
        .expect_ok();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (incorrect, locked) = rt.block_on(async {
        let config = st.client_config();
        let server = config.servers[0].clone();
        let mut guesses = Vec::new();
        for c in 0..4 {
            let conn = std::sync::Arc::new(MemberConnection::connect(&config, &server).await.unwrap());
            for g in 0..16 {
                let (conn, partition) = (conn.clone(), st.partition.clone());
                guesses.push(tokio::spawn(async move {
                    conn.call(Request::Login {
                        partition,
                        user_type: hahsm_proto::client::USER_NORMAL,
                        pin: hahsm_proto::Secret::from(format!("guess-{c}-{g}").as_str()),
                    })
                    .await
                    .expect_err("a wrong PIN")
                    .ckr()
                }));
            }
        }
        let mut counts = (0, 0);
        for g in guesses {
            match g.await.unwrap() {
                hahsm_token::ck::CKR_PIN_INCORRECT => counts.0 += 1,
                hahsm_token::ck::CKR_PIN_LOCKED => counts.1 += 1,
                other => panic!("unexpected return code {other:#x}"),
            }
        }
        counts
    });
    assert_eq!(
        (incorrect, locked),
        (2, 62),
        "two guesses answered 'incorrect', the third locked the PIN, the rest were not tried"
    );
    assert!(!st.keys(&["list"]).ok, "the right PIN is refused once locked");
}
