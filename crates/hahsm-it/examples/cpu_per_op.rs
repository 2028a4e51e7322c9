//! CPU time per signature through the PKCS#11 module, the application and the
//! member together, against aws-lc-rs signing in-process.
//!
//! Throughput ratios need a quiet machine; CPU time per operation does not:
//! it counts only what the bench process and the member burned (from
//! /proc/PID/stat), whatever else runs. On an otherwise idle machine where
//! both sides keep every core busy, the throughput ratio approaches
//! raw CPU per op ÷ total CPU per op, the "efficiency" printed here.
//!
//!   cargo build --release -p hahsmd -p hahsm-cli -p hahsm-pkcs11 --example cpu_per_op
//!   HAHSM_BIN_DIR=$PWD/target/release target/release/examples/cpu_per_op [SECONDS] [THREADS]
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use hahsm_it::Standalone;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MESSAGE: &[u8] = b"cpu_per_op: 32 bytes of message.";

/// User plus system CPU time of a process, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

struct Measured {
    ops: u64,
    seconds: f64,
    client_ticks: u64,
    member_ticks: u64,
}

impl Measured {
    fn cpu_us_per_op(&self) -> f64 {
        (self.client_ticks + self.member_ticks) as f64 * 10_000.0 / self.ops as f64
    }
}

/// Runs `op` on `threads` threads for `seconds` and measures CPU of this process and of `member`.
fn measure(threads: usize, seconds: f64, member: Option<u32>, op: impl Fn(usize) + Sync) -> Measured {
    let me = std::process::id();
    let (c0, m0) = (cpu_ticks(me), member.map_or(0, cpu_ticks));
    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, ops, op) = (&stop, &ops, &op);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    op(t);
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    Measured {
        ops: ops.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
        client_ticks: cpu_ticks(me) - c0,
        member_ticks: member.map_or(0, cpu_ticks) - m0,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().map_or(5.0, |s| s.parse().expect("SECONDS"));
    let threads: usize = args.next().map_or(8, |s| s.parse().expect("THREADS"));

    let st = Standalone::new();
    std::env::set_var("HAHSM_CONF", &st.conf);
    let p11 = Pkcs11::new(hahsm_it::bin_dir().join("libhahsm_pkcs11.so")).expect("module loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = p11.get_slots_with_token().expect("slots")[0];
    let pin = AuthPin::new(st.pin.clone().into());
    // One session per thread; the mutex only satisfies Sync (never contended).
    let sessions: Vec<_> = (0..threads)
        .map(|_| std::sync::Mutex::new(p11.open_rw_session(slot).expect("session")))
        .collect();
    sessions[0]
        .lock()
        .unwrap()
        .login(UserType::User, Some(&pin))
        .expect("login");
    let keygen = |mech: Mechanism, public: Vec<Attribute>| -> ObjectHandle {
        let private = vec![Attribute::Token(true), Attribute::Sign(true)];
        sessions[0]
            .lock()
            .unwrap()
            .generate_key_pair(&mech, &public, &private)
            .expect("key pair")
            .1
    };
    let rsa = keygen(
        Mechanism::RsaPkcsKeyPairGen,
        vec![Attribute::Token(true), Attribute::ModulusBits(2048.into())],
    );
    // The DER of the P-256 curve OID.
    let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let ec = keygen(
        Mechanism::EccKeyPairGen,
        vec![Attribute::Token(true), Attribute::EcParams(p256)],
    );
    let member = st.member.pid();

    let rng = SystemRandom::new();
    let raw_rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
    let raw_ec = {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("ec");
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).expect("ec")
    };
    let _ = raw_ec.public_key();

    println!("{threads} threads, {seconds} s per measurement; CPU in µs per signature");
    println!("key        via     ops/s  client  member   total   raw ops/s  raw µs  efficiency");
    for (name, key) in [("RSA-2048", rsa), ("P-256", ec)] {
        let module = measure(threads, seconds, member, |t| {
            let mech = if name == "P-256" {
                Mechanism::EcdsaSha256
            } else {
                Mechanism::Sha256RsaPkcs
            };
            let session = sessions[t].lock().unwrap();
            session.sign(&mech, key, MESSAGE).expect("sign");
        });
        let raw = measure(threads, seconds, None, |_| {
            if name == "P-256" {
                raw_ec.sign(&rng, MESSAGE).expect("raw sign");
            } else {
                let mut sig = vec![0; raw_rsa.public_modulus_len()];
                raw_rsa
                    .sign(&RSA_PKCS1_SHA256, &rng, MESSAGE, &mut sig)
                    .expect("raw sign");
            }
        });
        let per = |ticks: u64, ops: u64| ticks as f64 * 10_000.0 / ops as f64;
        println!(
            "{name:<10} module {:>7.0} {:>7.1} {:>7.1} {:>7.1} {:>11.0} {:>7.1} {:>11.2}",
            module.ops as f64 / module.seconds,
            per(module.client_ticks, module.ops),
            per(module.member_ticks, module.ops),
            module.cpu_us_per_op(),
            raw.ops as f64 / raw.seconds,
            raw.cpu_us_per_op(),
            raw.cpu_us_per_op() / module.cpu_us_per_op(),
        );
    }
}
