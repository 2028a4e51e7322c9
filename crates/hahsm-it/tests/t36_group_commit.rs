//! Group commit: 32 application threads creating objects at once on one
//! member share store transactions (fewer syncs to disk than writes, by the
//! member's `hahsm_partition_write_commits` and `_writes_committed`), every
//! write answered exists, and after a SIGKILL and a restart every answered
//! write is still there.
mod t20_pkcs11_support;

use cryptoki::object::{Attribute, ObjectClass};
use std::sync::{Arc, Barrier};
use t20_pkcs11_support::Env;

const THREADS: usize = 32;
const EACH: usize = 25;

fn metric(env: &Env, name: &str) -> f64 {
    let text = String::from_utf8(hahsm_it::http_get(&env.st.member.metrics_url())).unwrap();
    let prefix = format!("{name}{{partition=\"{}\"}} ", env.st.partition);
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in the metrics:\n{text}"))
}

#[test]
fn concurrent_writes_share_commits_and_survive_a_crash() {
    let mut env = Env::new();
    let _login = env.user();
    let (commits_before, writes_before) = (
        metric(&env, "hahsm_partition_write_commits"),
        metric(&env, "hahsm_partition_writes_committed"),
    );
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (p11, slot, start) = (env.p11.clone(), env.slot, start.clone());
            std::thread::spawn(move || {
                let s = p11.open_rw_session(slot).expect("session");
                start.wait();
                for k in 0..EACH {
                    s.create_object(&[
                        Attribute::Class(ObjectClass::DATA),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Label(format!("gc-{t}-{k}").into_bytes()),
                        Attribute::Value(vec![t as u8; 16]),
                    ])
                    .unwrap_or_else(|e| panic!("thread {t}: create {k}: {e}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    let commits = metric(&env, "hahsm_partition_write_commits") - commits_before;
    let writes = metric(&env, "hahsm_partition_writes_committed") - writes_before;
    eprintln!(
        "{writes} writes in {commits} commits: {:.1} writes per sync",
        writes / commits.max(1.0)
    );
    assert_eq!(writes, (THREADS * EACH) as f64, "every create was committed once");
    assert!(
        commits < writes,
        "no two writes shared a commit ({commits} commits for {writes} writes)"
    );

    // Every answered write survives a crash of the member.
    let count = |env: &Env| {
        let s = env.user();
        s.find_objects(&[Attribute::Class(ObjectClass::DATA)])
            .expect("find")
            .len()
    };
    assert_eq!(count(&env), THREADS * EACH);
    env.st.member.kill9();
    env.st.member.spawn();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let after = loop {
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| count(&env)));
        match got {
            Ok(n) => break n,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(200))
            }
            Err(e) => std::panic::resume_unwind(e),
        }
    };
    assert_eq!(after, THREADS * EACH, "acknowledged writes lost in the crash");
}
