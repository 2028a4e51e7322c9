//! Group commit (issue 17, item 3): W application threads (64 by default)
//! creating small token data objects through the PKCS#11 module for S
//! seconds, on a standalone member's slot or through the HA slot of a
//! 3-member group. Prints the creates per second, the writes per sync to
//! disk that the member reports (`hahsm_partition_writes_committed` over
//! `hahsm_partition_write_commits`, on the member the module wrote to most),
//! and beside them the disk's own limit: `fdatasync`s per second of a file
//! in the member's data directory, one 4 KiB write each.
//!
//!   cargo build --release -p hahsmd -p hahsm-cli -p hahsm-pkcs11 -p hahsm-it --example create_bench
//!   HAHSM_BIN_DIR=$PWD/target/release target/release/examples/create_bench standalone|ha [W] [S]
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `fdatasync`s per second of 4 KiB writes to a file in `dir`, for 2 s.
fn disk_syncs_per_s(dir: &Path) -> f64 {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .expect("probe file");
    let block = [0x5au8; 4096];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        f.write_all(&block).expect("write");
        f.sync_data().expect("fdatasync");
        n += 1;
    }
    let _ = std::fs::remove_file(&path);
    n as f64 / started.elapsed().as_secs_f64()
}

/// The value of `name{partition=…}` on a member's metrics endpoint.
fn metric(url: &str, name: &str) -> f64 {
    let text = String::from_utf8(hahsm_it::http_get(url)).expect("utf-8");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "standalone".into());
    let writers: usize = args.next().map_or(64, |a| a.parse().expect("W"));
    let seconds: u64 = args.next().map_or(5, |a| a.parse().expect("S"));
    // The members must outlive the run: keep whichever was made.
    let (standalone, cluster);
    let (urls, data_dir, pin): (Vec<String>, std::path::PathBuf, String) = match mode.as_str() {
        "standalone" => {
            standalone = hahsm_it::Standalone::new();
            std::env::set_var("HAHSM_CONF", &standalone.conf);
            (
                vec![standalone.member.metrics_url()],
                standalone.member.data_dir(),
                standalone.pin.clone(),
            )
        }
        "ha" => {
            cluster = hahsm_it::cluster::Cluster::new(3);
            cluster.ha_only_conf(None);
            (
                cluster.members.iter().map(|m| m.metrics_url()).collect(),
                cluster.members[0].data_dir(),
                hahsm_it::cluster::PIN.to_string(),
            )
        }
        other => panic!("mode '{other}': use standalone or ha"),
    };
    let p11 = Pkcs11::new(hahsm_it::bin_dir().join("libhahsm_pkcs11.so")).expect("module loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = p11.get_slots_with_token().expect("slots")[0];
    let login = p11.open_rw_session(slot).expect("session");
    login
        .login(UserType::User, Some(&AuthPin::new(pin.into())))
        .expect("login");
    let before: Vec<(f64, f64)> = urls
        .iter()
        .map(|u| {
            (
                metric(u, "hahsm_partition_write_commits"),
                metric(u, "hahsm_partition_writes_committed"),
            )
        })
        .collect();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|t| {
            let (p11, done, failed, stop) = (p11.clone(), done.clone(), failed.clone(), stop.clone());
            std::thread::spawn(move || {
                let s = p11.open_rw_session(slot).expect("session");
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let made = s.create_object(&[
                        Attribute::Class(ObjectClass::DATA),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Label(format!("bench-{t}-{k}").into_bytes()),
                        Attribute::Value(vec![0x33; 32]),
                    ]);
                    match made {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    k += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("writer");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let creates = done.load(Ordering::Relaxed) as f64;
    // The member that committed the most writes of its own: the one the
    // creates went to (in a group, the others commit them as replicated
    // operations, not as their own writes).
    let (commits, writes) = urls
        .iter()
        .zip(&before)
        .map(|(u, (c, w))| {
            (
                metric(u, "hahsm_partition_write_commits") - c,
                metric(u, "hahsm_partition_writes_committed") - w,
            )
        })
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let syncs = disk_syncs_per_s(&data_dir);
    println!(
        "{mode}: {writers} writers, {:.0} creates/s ({} failed) over {elapsed:.1} s; \
         {writes:.0} writes in {commits:.0} commits on the members = {:.1} writes per sync; \
         the disk does {syncs:.0} fdatasyncs/s (4 KiB each)",
        creates / elapsed,
        failed.load(Ordering::Relaxed),
        writes / commits.max(1.0)
    );
    drop(login);
    p11.finalize().expect("C_Finalize");
}
