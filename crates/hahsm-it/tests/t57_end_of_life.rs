//! Sessions at the edges (issue 20): a session closed from a thread-local
//! destructor, and `C_CloseSession` and `C_Finalize` from an `atexit`
//! handler, return `CKR_OK` and never reach the module's panic guard; and
//! session objects die with their session, logged in or not.
mod t20_pkcs11_support;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use hahsm_it::cluster::{Cluster, PIN};
use std::process::Command;
use t20_pkcs11_support::module_path;

fn ha_only(c: &Cluster) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&c.conf).unwrap();
    let conf = c.work.path().join("client/ha.toml");
    std::fs::write(&conf, format!("ha_only = true\n{text}\n")).unwrap();
    conf
}

#[test]
fn closing_from_thread_local_destructors_and_atexit_is_clean() {
    let c = Cluster::new(3);
    let conf = ha_only(&c);
    let log = c.work.path().join("pkcs11.log");
    let program = hahsm_it::bin_dir().join("examples/p11_end_of_life");
    assert!(program.exists(), "{} is built by cargo test", program.display());
    let out = Command::new(&program)
        .arg(module_path())
        .arg(PIN)
        .env("HAHSM_CONF", &conf)
        .env("HAHSM_PKCS11_LOG", &log)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for call in [
        "initialize",
        "login",
        "session-object",
        "tls-close",
        "atexit-close",
        "atexit-finalize",
    ] {
        assert!(
            stdout.contains(&format!("{call} rv=0x0\n")),
            "{call} did not return CKR_OK:\n{stdout}"
        );
    }
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !log.contains("internal error"),
        "the module caught a panic:\n{log}"
    );
}

/// A session object dies with its session, also when the session closes
/// logged out (`C_DestroyObject` would need the login), and when the last
/// session of the application closes.
#[test]
fn session_objects_die_with_their_session() {
    let c = Cluster::new(3);
    std::env::set_var("HAHSM_CONF", ha_only(&c));
    std::env::set_var("HAHSM_PKCS11_LOG", c.work.path().join("pkcs11.log"));
    let p11 = Pkcs11::new(module_path()).expect("loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = p11.get_slots_with_token().expect("slots")[0];
    let pin = AuthPin::new(PIN.to_string().into());
    let data = |label: &str, private: bool| {
        vec![
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(false),
            Attribute::Private(private),
            Attribute::Label(label.as_bytes().to_vec()),
        ]
    };
    let find = |s: &cryptoki::session::Session, label: &str| {
        s.find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
            .expect("find")
            .len()
    };
    let keeper = p11.open_rw_session(slot).expect("session");
    keeper.login(UserType::User, Some(&pin)).expect("login");
    let a = p11.open_rw_session(slot).expect("session");
    a.create_object(&data("t57-a-private", true)).expect("object");
    a.create_object(&data("t57-a-public", false)).expect("object");
    keeper.logout().expect("logout");
    // Closed logged out: its private object must go too.
    drop(a);
    keeper.login(UserType::User, Some(&pin)).expect("login");
    assert_eq!(
        find(&keeper, "t57-a-private"),
        0,
        "the closed session's private object stayed behind"
    );
    assert_eq!(
        find(&keeper, "t57-a-public"),
        0,
        "the closed session's public object stayed behind"
    );
    keeper.create_object(&data("t57-last", true)).expect("object");
    // The application's last session closes: its objects go with it.
    drop(keeper);
    let again = p11.open_rw_session(slot).expect("session");
    again.login(UserType::User, Some(&pin)).expect("login");
    assert_eq!(
        find(&again, "t57-last"),
        0,
        "the last session's object stayed behind"
    );
    drop(again);
    p11.finalize().expect("C_Finalize");
}
