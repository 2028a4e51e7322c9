//! What servers that hold keys in an HSM need of the module (issue 15,
//! item 7), through the HA slot of a three-member group:
//!
//! - `fork()` after `C_Initialize`: the child's own `C_Initialize` works and
//!   it signs through the HA slot, the parent keeps signing, and the module
//!   does not claim `CKF_INTERFACE_FORK_SAFE` (a child must initialize again);
//! - X.509 certificate objects written by pkcs11-tool: read back byte for
//!   byte, parsed by openssl, found by `CKA_ID`, `CKA_LABEL`, `CKA_SUBJECT`
//!   and `CKA_ISSUER` with `CKA_SERIAL_NUMBER`, on every member;
//! - `CKA_ID` and `CKA_LABEL` independent and settable: changing one leaves
//!   the other, and every member serves the change.
//!
//! "On every member": each member in turn is killed, the check runs on the
//! other two, the member comes back and catches up.
mod t20_pkcs11_support;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use hahsm_it::cluster::{Cluster, PIN};
use hahsm_it::run;
use std::path::Path;
use std::time::Duration;
use t20_pkcs11_support::module_path;

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn login(p11: &Pkcs11) -> Session {
    let slot = p11.get_slots_with_token().expect("slots")[0];
    let s = p11.open_rw_session(slot).expect("session");
    s.login(UserType::User, Some(&AuthPin::new(PIN.to_string().into())))
        .expect("login");
    s
}

fn find(s: &Session, template: &[Attribute]) -> Vec<ObjectHandle> {
    s.find_objects(template).expect("C_FindObjects")
}

fn bytes(s: &Session, o: ObjectHandle, t: AttributeType) -> Vec<u8> {
    match s.get_attributes(o, &[t]).expect("C_GetAttributeValue").pop() {
        Some(Attribute::Id(v))
        | Some(Attribute::Label(v))
        | Some(Attribute::Subject(v))
        | Some(Attribute::Issuer(v))
        | Some(Attribute::SerialNumber(v))
        | Some(Attribute::Value(v)) => v,
        other => panic!("{t:?}: {other:?}"),
    }
}

/// Runs `check` with each member killed in turn; the member then comes back
/// and catches up before the next.
fn on_every_member(c: &mut Cluster, what: &str, check: &dyn Fn(usize)) {
    for i in 0..c.members.len() {
        c.members[i].kill9();
        check(i);
        c.members[i].spawn();
        assert!(
            c.wait_in_sync(i, Duration::from_secs(60)),
            "member {i} did not catch up after {what}"
        );
    }
}

/// A self-signed certificate from openssl, as DER.
fn certificate(dir: &Path) -> Vec<u8> {
    let (key, der) = (dir.join("cert.key"), dir.join("cert.der"));
    let r = run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-subj",
            "/CN=t28.example/O=hahsm tests",
            "-days",
            "30",
            "-outform",
            "DER",
            "-out",
            der.to_str().unwrap(),
        ],
    );
    assert!(r.ok, "openssl req: {}", r.stderr);
    std::fs::read(der).unwrap()
}

fn pkcs11_tool(args: &[&str]) -> hahsm_it::Run {
    let module = module_path();
    let mut all = vec!["--module", module.to_str().unwrap(), "--login", "--pin", PIN];
    all.extend_from_slice(args);
    run("pkcs11-tool", &all)
}

fn certificates_are_stored_found_and_replicated(c: &mut Cluster, p11: &Pkcs11) {
    let dir = c.work.path().to_path_buf();
    let der = certificate(&dir);
    let file = dir.join("cert.der");
    let w = pkcs11_tool(&[
        "--write-object",
        file.to_str().unwrap(),
        "--type",
        "cert",
        "--id",
        "2801",
        "--label",
        "t28-cert",
    ]);
    assert!(w.ok, "pkcs11-tool --write-object: {}{}", w.stdout, w.stderr);
    let s = login(p11);
    let by_label = find(
        &s,
        &[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::Label(b"t28-cert".to_vec()),
        ],
    );
    assert_eq!(by_label.len(), 1, "the certificate by its label");
    let cert = by_label[0];
    assert_eq!(
        bytes(&s, cert, AttributeType::Value),
        der,
        "CKA_VALUE is the DER written"
    );
    let subject = bytes(&s, cert, AttributeType::Subject);
    let issuer = bytes(&s, cert, AttributeType::Issuer);
    let serial = bytes(&s, cert, AttributeType::SerialNumber);
    assert!(
        !subject.is_empty() && subject == issuer && !serial.is_empty(),
        "pkcs11-tool stored the subject, issuer (self-signed: the same) and serial"
    );
    assert!(
        der.windows(subject.len()).any(|w| w == subject.as_slice()),
        "CKA_SUBJECT is not the certificate's own Name"
    );
    drop(s);
    on_every_member(c, "the certificate checks", &|down| {
        let s = login(p11);
        for (how, template) in [
            (
                "CKA_ID",
                vec![
                    Attribute::Class(ObjectClass::CERTIFICATE),
                    Attribute::Id(vec![0x28, 0x01]),
                ],
            ),
            ("CKA_LABEL", vec![Attribute::Label(b"t28-cert".to_vec())]),
            (
                "CKA_SUBJECT",
                vec![
                    Attribute::Class(ObjectClass::CERTIFICATE),
                    Attribute::Subject(subject.clone()),
                ],
            ),
            (
                "CKA_ISSUER and CKA_SERIAL_NUMBER",
                vec![
                    Attribute::Issuer(issuer.clone()),
                    Attribute::SerialNumber(serial.clone()),
                ],
            ),
        ] {
            let found = find(&s, &template);
            assert_eq!(found.len(), 1, "by {how} with member {down} down: {found:?}");
            assert_eq!(
                bytes(&s, found[0], AttributeType::Value),
                der,
                "by {how}, member {down} down"
            );
        }
        // Read as pkcs11-tool reads it, parsed by openssl.
        let out = dir.join(format!("read-{down}.der"));
        let r = pkcs11_tool(&[
            "--read-object",
            "--type",
            "cert",
            "--id",
            "2801",
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(
            r.ok,
            "pkcs11-tool --read-object with member {down} down: {}",
            r.stderr
        );
        assert_eq!(std::fs::read(&out).unwrap(), der);
        let x = run(
            "openssl",
            &[
                "x509",
                "-inform",
                "DER",
                "-in",
                out.to_str().unwrap(),
                "-noout",
                "-subject",
            ],
        );
        assert!(
            x.ok && x.stdout.contains("t28.example"),
            "openssl x509: {}{}",
            x.stdout,
            x.stderr
        );
    });
}

fn id_and_label_are_independent_on_every_member(c: &mut Cluster, p11: &Pkcs11) {
    let s = login(p11);
    let key = s
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Label(b"t28-data".to_vec()),
            Attribute::Id(vec![7, 7]),
            Attribute::Value(b"payload".to_vec()),
        ])
        .expect("a data object");
    s.update_attributes(key, &[Attribute::Label(b"t28-renamed".to_vec())])
        .expect("set CKA_LABEL");
    assert_eq!(
        bytes(&s, key, AttributeType::Id),
        vec![7, 7],
        "CKA_ID changed with the label"
    );
    s.update_attributes(key, &[Attribute::Id(vec![8, 8, 8])])
        .expect("set CKA_ID");
    assert_eq!(
        bytes(&s, key, AttributeType::Label),
        b"t28-renamed",
        "CKA_LABEL changed with the id"
    );
    drop(s);
    on_every_member(c, "the id and label checks", &|down| {
        let s = login(p11);
        let found = find(&s, &[Attribute::Id(vec![8, 8, 8])]);
        assert_eq!(found.len(), 1, "by the new id, member {down} down");
        assert_eq!(
            bytes(&s, found[0], AttributeType::Label),
            b"t28-renamed",
            "member {down} down"
        );
        assert!(
            find(&s, &[Attribute::Label(b"t28-data".to_vec())]).is_empty(),
            "the old label, member {down} down"
        );
        assert!(
            find(&s, &[Attribute::Id(vec![7, 7])]).is_empty(),
            "the old id, member {down} down"
        );
    });
}

fn fork_child_initializes_and_signs_through_the_ha_slot(p11: &Pkcs11) {
    let s = login(p11);
    let (public, private) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(P256.to_vec()),
                Attribute::Verify(true),
                Attribute::Label(b"t28-fork".to_vec()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Sign(true),
                Attribute::Label(b"t28-fork".to_vec()),
            ],
        )
        .expect("a P-256 pair");
    let (_lib, raw) = t20_pkcs11_support::raw_functions();
    // Twenty children, one after another, while the parent's module threads
    // are parked: a child that inherits their state in a process-wide table
    // (tokio's parking_lot feature did) crashed about once in twenty.
    for _ in 0..FORKS {
        fork_one_child(&raw);
    }
    let sig = s
        .sign(&Mechanism::EcdsaSha256, private, b"after fork")
        .expect("the parent still signs");
    s.verify(&Mechanism::EcdsaSha256, public, b"after fork", &sig)
        .unwrap();
    // The default interface does not claim fork safety: a child must initialize again.
    let get = raw_get_interface();
    assert_eq!(
        get & cryptoki_sys::CKF_INTERFACE_FORK_SAFE,
        0,
        "CKF_INTERFACE_FORK_SAFE is claimed"
    );
}

/// Children forked by the fork step.
const FORKS: usize = 20;

/// Forks a child that must find the module uninitialized, initialize it,
/// log in, find the key and sign, and waits for it.
fn fork_one_child(raw: &cryptoki_sys::CK_FUNCTION_LIST) {
    // SAFETY: the child only uses the module and then _exit()s.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let code = (|| {
                let mut info = std::mem::MaybeUninit::<cryptoki_sys::CK_INFO>::uninit();
                // SAFETY: a valid out-pointer.
                if unsafe { raw.C_GetInfo.unwrap()(info.as_mut_ptr()) }
                    != cryptoki_sys::CKR_CRYPTOKI_NOT_INITIALIZED
                {
                    return 10;
                }
                let Ok(child) = Pkcs11::new(module_path()) else {
                    return 11;
                };
                if child
                    .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
                    .is_err()
                {
                    return 12;
                }
                let cs = login(&child);
                let Ok(keys) = cs.find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Label(b"t28-fork".to_vec()),
                ]) else {
                    return 13;
                };
                let Some(&key) = keys.first() else { return 14 };
                if let Err(e) = cs.sign(&Mechanism::EcdsaSha256, key, b"from the child") {
                    // (The parent's assertion names only the code.)
                    eprintln!("the child's C_Sign after fork: {e}");
                    return 15;
                }
                0
            })();
            // SAFETY: ends the child without running the parent's atexit handlers.
            unsafe { nix::libc::_exit(code) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).expect("waitpid");
            let log = std::env::var("HAHSM_PKCS11_LOG")
                .ok()
                .and_then(|l| std::fs::read_to_string(l).ok())
                .unwrap_or_default();
            assert_eq!(
                status,
                nix::sys::wait::WaitStatus::Exited(child, 0),
                "the child's steps; the module's log:\n{log}"
            );
        }
    }
}

/// The flags of the module's default interface (`C_GetInterface` with a NULL name).
fn raw_get_interface() -> cryptoki_sys::CK_FLAGS {
    // SAFETY: loading our own module runs no initializers with preconditions.
    let lib = unsafe { libloading::Library::new(module_path()) }.expect("dlopen");
    type GetInterface = unsafe extern "C" fn(
        *mut cryptoki_sys::CK_UTF8CHAR,
        *mut cryptoki_sys::CK_VERSION,
        *mut *mut cryptoki_sys::CK_INTERFACE,
        cryptoki_sys::CK_FLAGS,
    ) -> cryptoki_sys::CK_RV;
    // SAFETY: C_GetInterface has this signature in every PKCS#11 3.0 module.
    let get = unsafe { lib.get::<GetInterface>(b"C_GetInterface") }.expect("exported");
    let mut iface = std::ptr::null_mut();
    // SAFETY: NULL name and version ask for the default interface; a valid out-pointer.
    let rv = unsafe { get(std::ptr::null_mut(), std::ptr::null_mut(), &mut iface, 0) };
    assert_eq!(rv, cryptoki_sys::CKR_OK, "C_GetInterface");
    // SAFETY: the module returned a pointer to its static interface.
    unsafe { (*iface).flags }
}

#[test]
fn fork_certificates_and_id_label_through_the_ha_slot() {
    let mut c = Cluster::new(3);
    c.ha_only_conf(None);
    std::env::set_var("HAHSM_PKCS11_LOG", c.work.path().join("pkcs11.log"));
    let p11 = Pkcs11::new(module_path()).expect("module loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");

    fork_child_initializes_and_signs_through_the_ha_slot(&p11);
    certificates_are_stored_found_and_replicated(&mut c, &p11);
    id_and_label_are_independent_on_every_member(&mut c, &p11);
    p11.finalize().expect("C_Finalize");
}
