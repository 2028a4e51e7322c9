//! An application that holds one session for a long time and mostly idles
//! (t59_idle_connections): it loads the module, logs in through the HA slot,
//! finds a P-256 key by label and signs with it; then, `ROUNDS` times, idles
//! `IDLE_SECONDS` and signs `SIGNS` times. Prints one JSON line per round:
//! `{"round": n, "signs": k, "failures": f, "slowest_ms": m, "error": "…"}`.
//!
//!   idle_client LABEL IDLE_SECONDS ROUNDS SIGNS
//!
//! The module reads `HAHSM_CONF`; the PIN comes from `HAHSM_PIN`.
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [label, idle, rounds, signs] = args.as_slice() else {
        eprintln!("usage: idle_client LABEL IDLE_SECONDS ROUNDS SIGNS");
        std::process::exit(2);
    };
    let idle = Duration::from_secs_f64(idle.parse().expect("IDLE_SECONDS"));
    let rounds: u32 = rounds.parse().expect("ROUNDS");
    let signs: u32 = signs.parse().expect("SIGNS");
    let pin = std::env::var("HAHSM_PIN").expect("HAHSM_PIN");
    let module = hahsm_it::bin_dir().join("libhahsm_pkcs11.so");
    let p11 = Pkcs11::new(module).expect("module loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = p11.get_slots_with_token().expect("slots")[0];
    let s = p11.open_rw_session(slot).expect("C_OpenSession");
    s.login(UserType::User, Some(&AuthPin::new(pin.into())))
        .expect("C_Login");
    let key = s
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec()), Attribute::Sign(true)])
        .expect("C_FindObjects")
        .first()
        .copied()
        .expect("the key");
    s.sign(&Mechanism::Ecdsa, key, &[1u8; 32])
        .expect("the first signature");
    println!("{{\"ready\": true}}");
    for round in 1..=rounds {
        std::thread::sleep(idle);
        let mut failures = 0;
        let mut slowest = Duration::ZERO;
        let mut error = String::new();
        for _ in 0..signs {
            let t = Instant::now();
            if let Err(e) = s.sign(&Mechanism::Ecdsa, key, &[2u8; 32]) {
                failures += 1;
                error = e.to_string();
            }
            slowest = slowest.max(t.elapsed());
        }
        println!(
            "{{\"round\": {round}, \"signs\": {signs}, \"failures\": {failures}, \"slowest_ms\": {}, \"error\": {:?}}}",
            slowest.as_millis(),
            error
        );
    }
    drop(s);
    p11.finalize().expect("C_Finalize");
}
