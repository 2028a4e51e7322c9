//! HA benchmarks on real members (report §3.4.10, §3.4.11 and table 4.5):
//! RSA-2048 key generation on one standalone member and through a 3-member
//! group, the same with one member stopped (SIGSTOP), and how long a member
//! that missed 10,000 operations takes to be back in sync.
//!
//! Build everything in release first, then run:
//!   cargo build --release --workspace --bins --examples
//!   target/release/examples/ha_bench [SECONDS] [CONCURRENCY] [CATCH_UP_OPS]
use hahsm_client::connection::new_op_id;
use hahsm_client::MemberConnection;
use hahsm_it::cluster::{Cluster, PARTITION, PIN};
use hahsm_it::Standalone;
use hahsm_proto::client::{Request, Response, USER_NORMAL};
use hahsm_proto::Secret;
use hahsm_token::{ck, AttrValue, Mechanism, Template};
use nix::sys::signal::Signal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn connect(conf: &std::path::Path, server: usize, partition: &str, pin: &str) -> MemberConnection {
    let config = hahsm_client::ClientConfig::load(conf).expect("client config");
    let conn = MemberConnection::connect(&config, &config.servers[server])
        .await
        .expect("connects");
    conn.call(Request::Login {
        partition: partition.into(),
        user_type: USER_NORMAL,
        pin: Secret::from(pin),
    })
    .await
    .expect("logs in");
    conn
}

fn rsa_keygen(partition: &str) -> Request {
    let public = Template::new()
        .with(ck::CKA_TOKEN, AttrValue::Bool(true))
        .with(ck::CKA_MODULUS_BITS, AttrValue::Ulong(2048));
    let private = Template::new().with(ck::CKA_TOKEN, AttrValue::Bool(true));
    Request::GenerateKeyPair {
        partition: partition.into(),
        mechanism: Mechanism::new(ck::CKM_RSA_PKCS_KEY_PAIR_GEN),
        public_template: public,
        private_template: private,
        op_id: new_op_id(),
    }
}

fn aes_keygen(partition: &str, i: u64) -> Request {
    Request::GenerateKey {
        partition: partition.into(),
        mechanism: Mechanism::new(ck::CKM_AES_KEY_GEN),
        template: Template::new()
            .with(ck::CKA_TOKEN, AttrValue::Bool(true))
            .with(ck::CKA_VALUE_LEN, AttrValue::Ulong(16))
            .with(ck::CKA_LABEL, AttrValue::Bytes(format!("op-{i}").into_bytes())),
        op_id: new_op_id(),
    }
}

/// Runs `concurrency` request loops for `seconds`; returns (ops/s, worst latency).
async fn rate(
    conn: Arc<MemberConnection>,
    partition: &str,
    seconds: u64,
    concurrency: usize,
) -> (f64, Duration) {
    let done = Arc::new(AtomicU64::new(0));
    let worst = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (conn, done, worst, partition) =
            (conn.clone(), done.clone(), worst.clone(), partition.to_string());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let t = Instant::now();
                match conn.call(rsa_keygen(&partition)).await {
                    Ok(Response::KeyPair { .. }) => {}
                    other => panic!("keygen failed: {other:?}"),
                }
                worst.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let n = done.load(Ordering::Relaxed) as f64;
    (
        n / start.elapsed().as_secs_f64(),
        Duration::from_micros(worst.load(Ordering::Relaxed)),
    )
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let seconds = args.first().copied().unwrap_or(10);
    let concurrency = args.get(1).copied().unwrap_or(4) as usize;
    let catch_up_ops = args.get(2).copied().unwrap_or(10_000);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!("RSA-2048 key generation, {concurrency} concurrent requests, {seconds} s per run");

    let st = Standalone::new();
    let standalone = rt.block_on(async {
        let conn = Arc::new(connect(&st.conf, 0, &st.partition, &st.pin).await);
        rate(conn, &st.partition, seconds, concurrency).await
    });
    drop(st);
    println!(
        "standalone member            {:>8.2} keys/s  (worst {:?})",
        standalone.0, standalone.1
    );

    let c = Cluster::new(3);
    let conn = Arc::new(rt.block_on(connect(&c.conf, 0, PARTITION, PIN)));
    let ha = rt.block_on(rate(conn.clone(), PARTITION, seconds, concurrency));
    println!(
        "3-member group               {:>8.2} keys/s  (worst {:?})  {:.2} of standalone",
        ha.0,
        ha.1,
        ha.0 / standalone.0
    );
    c.members[2].signal(Signal::SIGSTOP);
    let stopped = rt.block_on(rate(conn.clone(), PARTITION, seconds, concurrency));
    println!(
        "3-member group, one SIGSTOP  {:>8.2} keys/s  (worst {:?})  {:.2} of standalone",
        stopped.0,
        stopped.1,
        stopped.0 / standalone.0
    );
    c.members[2].signal(Signal::SIGCONT);
    assert!(
        c.wait_in_sync(0, Duration::from_secs(60)),
        "the group did not heal"
    );
    // A slowed member: 200 ms added each way on its links.
    for j in [0, 1] {
        c.proxies[&(j, 2)].set_delay(Duration::from_millis(200));
        c.proxies[&(2, j)].set_delay(Duration::from_millis(200));
    }
    let slowed = rt.block_on(rate(conn.clone(), PARTITION, seconds, concurrency));
    println!(
        "3-member group, one slowed   {:>8.2} keys/s  (worst {:?})  {:.2} of standalone",
        slowed.0,
        slowed.1,
        slowed.0 / standalone.0
    );
    for j in [0, 1] {
        c.proxies[&(j, 2)].set_delay(Duration::ZERO);
        c.proxies[&(2, j)].set_delay(Duration::ZERO);
    }
    assert!(
        c.wait_in_sync(0, Duration::from_secs(60)),
        "the group did not heal"
    );
    drop(c);

    // Catch-up: a member misses `catch_up_ops` operations, then returns.
    let mut c = Cluster::new(3);
    c.members[2].kill9();
    let conn = Arc::new(rt.block_on(connect(&c.conf, 0, PARTITION, PIN)));
    let written = Instant::now();
    rt.block_on(async {
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (conn, next) = (conn.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= catch_up_ops {
                        return;
                    }
                    conn.call(aes_keygen(PARTITION, i)).await.expect("write");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    });
    println!(
        "{catch_up_ops} writes with one member down took {:?}",
        written.elapsed()
    );
    let restarted = Instant::now();
    c.members[2].spawn();
    let ready = restarted.elapsed();
    let synced = c.wait_in_sync(0, Duration::from_secs(120));
    println!(
        "member back in sync {:?} after its restart (of which {:?} to start); in sync: {synced}",
        restarted.elapsed(),
        ready
    );
}
