//! The module holds a bounded number of connections to a member whatever
//! its application's thread count (docs/operator-guide.md: per member, one
//! connection that lists the partitions, and per slot one multiplexed
//! connection and at most 16 pooled ones): 64 threads signing at once
//! through one member's slot open no more than that, and every signature
//! succeeds.
mod t20_pkcs11_support;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use t20_pkcs11_support::Env;

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const THREADS: usize = 64;
/// The partition lister's connection, one multiplexed connection and
/// `POOL_MAX` (16) pooled ones.
const BOUND: usize = 18;

/// Established TCP connections (IPv4, from `/proc/net/tcp`) to `port`.
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local address, remote address (hex ip:port), state (01: established)
            f.len() > 3
                && f[3] == "01"
                && f[2]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

#[test]
fn sixty_four_threads_share_a_bounded_set_of_connections() {
    let env = Env::new();
    let port: u16 = env.st.member.address.rsplit(':').next().unwrap().parse().unwrap();
    let s = env.user();
    let (_, key) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::Token(true), Attribute::EcParams(P256.to_vec())],
            &[Attribute::Token(true), Attribute::Sign(true)],
        )
        .expect("key pair");
    let failed = Arc::new(AtomicU64::new(0));
    let most = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (p11, slot, failed, most, start) = (
                env.p11.clone(),
                env.slot,
                failed.clone(),
                most.clone(),
                start.clone(),
            );
            std::thread::spawn(move || {
                let s = p11.open_ro_session(slot).expect("session");
                start.wait();
                for k in 0..40 {
                    if let Err(e) = s.sign(&Mechanism::EcdsaSha256, key, format!("{t}-{k}").as_bytes()) {
                        eprintln!("thread {t}: signature {k}: {e}");
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    if k % 10 == 0 {
                        most.fetch_max(connections_to(port) as u64, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("signer");
    }
    let most = most.load(Ordering::SeqCst) as usize;
    let now = connections_to(port);
    eprintln!(
        "{THREADS} threads, {} signatures: at most {most} connections to the member, {now} after",
        THREADS * 40
    );
    assert_eq!(failed.load(Ordering::SeqCst), 0, "signatures failed");
    assert!(
        most >= 2,
        "the pool was never used ({most} connections): the test measured nothing"
    );
    assert!(
        most <= BOUND,
        "{most} connections to one member from one process, over {BOUND}"
    );
    assert!(now <= BOUND);
}
