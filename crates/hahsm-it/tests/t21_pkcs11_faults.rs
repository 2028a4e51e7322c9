//! The module when its member fails: a stopped member costs one request
//! deadline, a killed one an error at once, never a hang; when the member
//! returns, the application carries on with the same session and key handle.
mod t20_pkcs11_support;
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use hahsm_it::Standalone;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};
use t20_pkcs11_support::{rv, Env};

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

#[test]
fn a_failed_member_gives_an_error_within_the_deadline_and_recovery_is_transparent() {
    let st = Standalone::new();
    // A short request deadline, so a stopped member costs little test time.
    let conf = std::fs::read_to_string(&st.conf).unwrap();
    let conf = conf
        .lines()
        .map(|l| {
            if l.starts_with("request_timeout_ms") {
                "request_timeout_ms = 1500"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&st.conf, conf).unwrap();
    std::env::set_var("HAHSM_CONF", &st.conf);
    std::env::set_var("HAHSM_PKCS11_LOG", st.path("pkcs11.log"));
    let mut env = Env::with(st);
    let s = env.user();
    let (_, key) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(P256.to_vec()),
                Attribute::Verify(true),
            ],
            &[Attribute::Token(true), Attribute::Sign(true)],
        )
        .expect("key pair");
    s.sign(&Mechanism::EcdsaSha256, key, b"before").expect("signs");

    // Stopped: the request fails at its deadline with a device error.
    env.st.member.signal(Signal::SIGSTOP);
    let t = Instant::now();
    let err = s
        .sign(&Mechanism::EcdsaSha256, key, b"stopped")
        .expect_err("a stopped member cannot sign");
    let waited = t.elapsed();
    assert!(
        matches!(
            rv(&err),
            RvError::DeviceError | RvError::DeviceRemoved | RvError::FunctionCanceled
        ),
        "{err}"
    );
    assert!(waited < Duration::from_secs(6), "the call hung for {waited:?}");
    env.st.member.signal(Signal::SIGCONT);
    s.sign(&Mechanism::EcdsaSha256, key, b"resumed")
        .expect("signs again once resumed");

    // Killed: an error at once (connection refused), not a hang.
    env.st.member.kill9();
    let t = Instant::now();
    let err = s
        .sign(&Mechanism::EcdsaSha256, key, b"killed")
        .expect_err("a dead member cannot sign");
    assert!(
        matches!(rv(&err), RvError::DeviceError | RvError::DeviceRemoved),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "the call hung for {:?}",
        t.elapsed()
    );

    // Back: the module reconnects, logs in again, and the same handle signs.
    env.st.member.spawn();
    let sig = s
        .sign(&Mechanism::EcdsaSha256, key, b"after")
        .expect("signs after the member restarts");
    assert_eq!(sig.len(), 64);
    let log = std::fs::read_to_string(env.st.path("pkcs11.log")).unwrap_or_default();
    assert!(!log.contains(&env.st.pin), "the PIN reached the module's log");
}
