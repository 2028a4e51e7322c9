//! A fixed number of P-256 signatures, for counting instructions per
//! signature under `valgrind --tool=callgrind` (issue 17, item 1), where
//! CPU time is too noisy on a shared machine:
//!
//! - `sign_count raw N`: N signatures with aws-lc-rs in this process
//!   (`EcdsaKeyPair::sign`, as `cpu_per_op`'s raw baseline), after 10 for
//!   warm-up;
//! - `sign_count module N [THREADS]`: a standalone member (started under
//!   `HAHSM_MEMBER_WRAPPER` if set), a P-256 token key generated through
//!   `libhahsm_pkcs11.so`, 100 signatures for warm-up, then N signatures
//!   (`C_SignInit` + `C_Sign`, as `cpu_per_op` makes them) shared out over
//!   THREADS application threads (1 by default), each with its own session;
//!   then the member is stopped with SIGTERM, so that a wrapped member ends
//!   cleanly and writes its profile.
//!
//! Two runs with different N, the rest equal, give instructions per
//! signature as the difference of their totals over the difference of N:
//! start-up, key generation and shutdown cancel out. `scripts/callgrind-per-op.sh`
//! does that for the three processes.
//!
//! With `HAHSM_CALLGRIND_CONTROL=1` (the member under callgrind), the
//! member's counters are zeroed right before the N signatures and dumped
//! right after (`callgrind_control -z`, `-d`), so that its dump holds the
//! signatures alone, for `callgrind_annotate`.
//!
//!   cargo build --release -p hahsmd -p hahsm-cli -p hahsm-pkcs11 -p hahsm-it --example sign_count
//!   HAHSM_BIN_DIR=$PWD/target/release target/release/examples/sign_count module 2000
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use hahsm_it::Standalone;
use std::process::Command;
use std::time::Instant;

const MESSAGE: &[u8] = b"cpu_per_op: 32 bytes of message.";

/// `callgrind_control FLAG PID`; true if it answered.
fn callgrind_control(flag: &str, pid: u32) -> bool {
    Command::new("callgrind_control")
        .arg(flag)
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

fn raw(n: usize) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("ec");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).expect("ec");
    for _ in 0..10 {
        key.sign(&rng, MESSAGE).expect("raw sign");
    }
    let started = Instant::now();
    for _ in 0..n {
        key.sign(&rng, MESSAGE).expect("raw sign");
    }
    println!(
        "raw: {n} P-256 signatures in {:.3} s",
        started.elapsed().as_secs_f64()
    );
}

fn module(n: usize, threads: usize) {
    let mut st = Standalone::new();
    std::env::set_var("HAHSM_CONF", &st.conf);
    let p11 = Pkcs11::new(hahsm_it::bin_dir().join("libhahsm_pkcs11.so")).expect("module loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = p11.get_slots_with_token().expect("slots")[0];
    // One session per thread; the mutex only satisfies Sync (never contended).
    let sessions: Vec<_> = (0..threads)
        .map(|_| std::sync::Mutex::new(p11.open_rw_session(slot).expect("session")))
        .collect();
    let pin = AuthPin::new(st.pin.clone().into());
    sessions[0]
        .lock()
        .unwrap()
        .login(UserType::User, Some(&pin))
        .expect("login");
    // The DER of the P-256 curve OID.
    let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let (_, key) = sessions[0]
        .lock()
        .unwrap()
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::Token(true), Attribute::EcParams(p256)],
            &[Attribute::Token(true), Attribute::Sign(true)],
        )
        .expect("key pair");
    let sign_all = |count: usize| {
        std::thread::scope(|s| {
            for (t, session) in sessions.iter().enumerate() {
                let mine = count / threads + usize::from(t < count % threads);
                s.spawn(move || {
                    let session = session.lock().unwrap();
                    for _ in 0..mine {
                        session.sign(&Mechanism::EcdsaSha256, key, MESSAGE).expect("sign");
                    }
                });
            }
        });
    };
    sign_all(100);
    let member = st.member.pid().expect("the member runs");
    let control = std::env::var("HAHSM_CALLGRIND_CONTROL").is_ok_and(|v| v == "1");
    if control {
        assert!(callgrind_control("-z", member), "callgrind_control -z");
    }
    let started = Instant::now();
    sign_all(n);
    let took = started.elapsed().as_secs_f64();
    if control {
        assert!(callgrind_control("-d", member), "callgrind_control -d");
    }
    println!("module: {n} P-256 signatures on {threads} threads in {took:.3} s; member pid {member}");
    drop(sessions);
    p11.finalize().expect("C_Finalize");
    st.member.stop();
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "module".into());
    let n: usize = args.next().map_or(2000, |a| a.parse().expect("N"));
    let threads: usize = args.next().map_or(1, |a| a.parse().expect("THREADS"));
    match mode.as_str() {
        "raw" => raw(n),
        "module" => module(n, threads),
        other => panic!("mode '{other}': use raw or module"),
    }
}
