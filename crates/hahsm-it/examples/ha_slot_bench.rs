//! The HA slot under load (issue 5's benchmark): RSA-2048 signing through the
//! HA slot of a 3-member group with 8 application threads, against aws-lc-rs
//! signing in this process on the same threads; then the latency of every
//! signature while one member is killed (`kill -9`) mid-run.
//!
//!   cargo build --release -p hahsmd -p hahsm-cli -p hahsm-pkcs11 -p hahsm-it --example ha_slot_bench
//!   HAHSM_BIN_DIR=$PWD/target/release target/release/examples/ha_slot_bench [SECONDS] [THREADS]
//!
//! It also prints CPU time per signature (application and members together,
//! from /proc), which stays meaningful on a loaded machine.
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use hahsm_it::cluster::{Cluster, PIN};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MESSAGE: &[u8] = b"ha_slot_bench: 32 bytes of data.";
/// The module's request deadline in this run.
const DEADLINE_MS: u64 = 2000;

fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

struct Run {
    ops: u64,
    failures: u64,
    seconds: f64,
    latencies_us: Vec<u64>,
}

/// Runs `op` on `threads` threads for `seconds`, calling `during` once
/// `fault_after` has passed (if given); records every call's latency.
fn run(
    threads: usize,
    seconds: f64,
    fault_after: Option<(Duration, &mut dyn FnMut())>,
    op: impl Fn(usize) -> bool + Sync,
) -> Run {
    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let failures = AtomicU64::new(0);
    let latencies = Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, ops, failures, latencies, op) = (&stop, &ops, &failures, &latencies, &op);
            s.spawn(move || {
                let mut mine = Vec::with_capacity(100_000);
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    if op(t) {
                        ops.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    mine.push(began.elapsed().as_micros() as u64);
                }
                latencies.lock().unwrap().extend(mine);
            });
        }
        if let Some((after, fault)) = fault_after {
            std::thread::sleep(after);
            fault();
            std::thread::sleep(Duration::from_secs_f64(seconds).saturating_sub(after));
        } else {
            std::thread::sleep(Duration::from_secs_f64(seconds));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let mut latencies_us = latencies.into_inner().unwrap();
    latencies_us.sort_unstable();
    Run {
        ops: ops.load(Ordering::Relaxed),
        failures: failures.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
        latencies_us,
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().map_or(10.0, |s| s.parse().expect("SECONDS"));
    let threads: usize = args.next().map_or(8, |s| s.parse().expect("THREADS"));

    let mut c = Cluster::new(3);
    let text = std::fs::read_to_string(&c.conf).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("request_timeout_ms") {
                format!("request_timeout_ms = {DEADLINE_MS}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let conf = c.work.path().join("client/ha-bench.toml");
    std::fs::write(&conf, format!("ha_only = true\n{text}")).unwrap();
    std::env::set_var("HAHSM_CONF", &conf);
    std::env::set_var("HAHSM_PKCS11_LOG", c.work.path().join("pkcs11.log"));

    let p11 = Pkcs11::new(hahsm_it::bin_dir().join("libhahsm_pkcs11.so")).expect("module loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = p11.get_slots_with_token().expect("slots")[0];
    let sessions: Vec<_> = (0..threads)
        .map(|_| Mutex::new(p11.open_ro_session(slot).expect("session")))
        .collect();
    sessions[0]
        .lock()
        .unwrap()
        .login(UserType::User, Some(&AuthPin::new(PIN.to_string().into())))
        .expect("login");
    let rw = p11.open_rw_session(slot).expect("rw session");
    let (_, key) = rw
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[Attribute::Token(true), Attribute::ModulusBits(2048.into())],
            &[Attribute::Token(true), Attribute::Sign(true)],
        )
        .expect("RSA key through the HA slot");
    let sign = |t: usize| {
        sessions[t]
            .lock()
            .unwrap()
            .sign(&Mechanism::Sha256RsaPkcs, key, MESSAGE)
            .is_ok()
    };
    // Warm-up: pooled connections opened, every member measured.
    run(threads, 1.0, None, sign);

    let pids: Vec<u32> = c.members.iter().filter_map(|m| m.pid()).collect();
    let me = std::process::id();
    let cpu = |pids: &[u32]| cpu_ticks(me) + pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>();
    let c0 = cpu(&pids);
    let ha = run(threads, seconds, None, sign);
    let ha_cpu_us = (cpu(&pids) - c0) as f64 * 10_000.0 / ha.ops as f64;

    let raw_key = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
    let rng = SystemRandom::new();
    let c0 = cpu_ticks(me);
    let raw = run(threads, seconds, None, |_| {
        let mut sig = vec![0; raw_key.public_modulus_len()];
        raw_key.sign(&RSA_PKCS1_SHA256, &rng, MESSAGE, &mut sig).is_ok()
    });
    let raw_cpu_us = (cpu_ticks(me) - c0) as f64 * 10_000.0 / raw.ops as f64;

    let rate = |r: &Run| r.ops as f64 / r.seconds;
    println!(
        "HA slot over 3 members, RSA-2048 (CKM_SHA256_RSA_PKCS), {threads} application threads, {seconds} s"
    );
    println!(
        "  through the HA slot: {:>8.0} sig/s  p50 {:.2} ms  p99 {:.2} ms  failures {}  CPU {:.0} µs/sig",
        rate(&ha),
        percentile(&ha.latencies_us, 0.5),
        percentile(&ha.latencies_us, 0.99),
        ha.failures,
        ha_cpu_us
    );
    println!(
        "  aws-lc-rs in-process: {:>7.0} sig/s  CPU {:.0} µs/sig",
        rate(&raw),
        raw_cpu_us
    );
    println!(
        "  ratio {:.2} (goal ≥ 0.8); CPU efficiency {:.2}",
        rate(&ha) / rate(&raw),
        raw_cpu_us / ha_cpu_us
    );

    // Failover: member 1 is killed a third of the way through.
    let victim = &mut c.members[1];
    let mut kill = || victim.kill9();
    let fo = run(
        threads,
        seconds,
        Some((Duration::from_secs_f64(seconds / 3.0), &mut kill)),
        sign,
    );
    println!(
        "  across a kill -9 of one member: {:>6.0} sig/s  p50 {:.2} ms  p99 {:.2} ms  max {:.0} ms  failures {}  (deadline {DEADLINE_MS} ms)",
        rate(&fo),
        percentile(&fo.latencies_us, 0.5),
        percentile(&fo.latencies_us, 0.99),
        percentile(&fo.latencies_us, 1.0),
        fo.failures
    );
    drop(rw);
    drop(sessions);
    p11.finalize().expect("C_Finalize");
}
