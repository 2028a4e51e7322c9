//! Catch-up, snapshots and backups at scale (issue 17, items 4 and 5), on a
//! group of two members and N small token data objects (100,000 unless
//! given):
//!
//! 1. member 1 is stopped while 64 threads make the N objects on member 0
//!    (creates/s); started again, it catches up on the N operations it missed
//!    (from member 0's log, or, this far behind, from its snapshot): the time
//!    until it holds every object, and the CPU each member spent;
//! 2. both logs are then compacted (everything is older than
//!    `compact_after_ms` and both members have it), so a member that joins
//!    now catches up from a snapshot: the time from `ha add-member` until it
//!    holds every object, and the snapshots it installed;
//! 3. `hahsm backup` of the partition (time, file size, bytes per object)
//!    and `hahsm restore` of it on a fresh member (time).
//!
//! Each member's resident memory is printed after each step.
//!
//!   cargo build --release -p hahsmd -p hahsm-cli -p hahsm-pkcs11 -p hahsm-it --example catch_up_bench
//!   HAHSM_BIN_DIR=$PWD/target/release target/release/examples/catch_up_bench [N]
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use hahsm_it::cluster::{fresh_member_in_domain, restore, Cluster, Setup, PARTITION, PIN};
use hahsm_it::Member;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const WRITERS: usize = 64;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn metric(m: &Member, name: &str) -> u64 {
    let text = String::from_utf8(hahsm_it::http_get(&m.metrics_url())).expect("utf-8");
    let prefix = format!("{name}{{partition=\"{PARTITION}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn rss_mib(m: &Member) -> f64 {
    let pid = m.pid().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

/// The CPU seconds (user and system) member `m` has used.
fn cpu_secs(m: &Member) -> f64 {
    let pid = m.pid().expect("running");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // After the parenthesised command name: utime is field 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// Waits until member `m` reports `want` live objects; the seconds it took.
fn until_objects(m: &Member, want: u64, limit: Duration) -> f64 {
    let started = Instant::now();
    while metric(m, "hahsm_partition_objects") < want {
        assert!(
            started.elapsed() < limit,
            "not caught up within {limit:?}: {} of {want}",
            metric(m, "hahsm_partition_objects")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    started.elapsed().as_secs_f64()
}

fn main() {
    let n: usize = std::env::args().nth(1).map_or(100_000, |a| a.parse().expect("N"));
    let tables = |_| "[replication]\nlog_retention_ms = 3600000\ncompact_after_ms = 1000\n".to_string();
    let mut c = Cluster::with(
        2,
        &Setup {
            tables: Some(&tables),
            ..Setup::default()
        },
    );
    let memory = |c: &Cluster, when: &str| {
        let each: Vec<String> = c
            .members
            .iter()
            .filter(|m| m.pid().is_some())
            .map(|m| format!("{:.0} MiB", rss_mib(m)))
            .collect();
        println!("  resident memory {when}: {}", each.join(", "));
    };

    // 1. Member 1 away while member 0 takes N creates.
    c.members[1].stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.state_of(0, 1) != "down" {
        assert!(Instant::now() < deadline, "member 1 never seen down");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::env::set_var("HAHSM_CONF", &c.conf);
    let p11 = Pkcs11::new(t20_module()).expect("load the module");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let want = format!("hahsm hsm0 partition {PARTITION}");
    let slot = p11
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| p11.get_slot_info(*s).is_ok_and(|i| i.slot_description() == want))
        .expect("member 0's slot");
    let login = p11.open_rw_session(slot).expect("session");
    login
        .login(UserType::User, Some(&AuthPin::new(PIN.to_string().into())))
        .expect("login");
    let base = metric(&c.members[0], "hahsm_partition_objects");
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..WRITERS {
            scope.spawn(|| {
                let s = p11.open_rw_session(slot).expect("session");
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= n {
                        break;
                    }
                    s.create_object(&[
                        Attribute::Class(ObjectClass::DATA),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Label(format!("obj-{k}").into_bytes()),
                        Attribute::Value(vec![k as u8; 16]),
                    ])
                    .unwrap_or_else(|e| panic!("create obj-{k}: {e}"));
                }
            });
        }
    });
    let made = started.elapsed().as_secs_f64();
    drop(login);
    p11.finalize().expect("C_Finalize");
    let total = base + n as u64;
    println!(
        "{n} objects on member 0 with member 1 down: {made:.1} s, {:.0} creates/s",
        n as f64 / made
    );
    memory(&c, "after the creates");

    let sender_before = cpu_secs(&c.members[0]);
    c.members[1].spawn();
    let caught_up = until_objects(&c.members[1], total, Duration::from_secs(3600));
    println!(
        "member 1 back: caught up on {n} missed operations in {caught_up:.1} s ({:.0} ops/s; {} snapshot installed); \
         CPU: {:.1} s on member 1 (it started with this), {:.1} s on member 0",
        n as f64 / caught_up,
        metric(&c.members[1], "hahsm_partition_snapshots_installed"),
        cpu_secs(&c.members[1]),
        cpu_secs(&c.members[0]) - sender_before
    );
    memory(&c, "after the catch-up");

    // 2. Both logs compacted, then a member joins by snapshot.
    let deadline = Instant::now() + Duration::from_secs(600);
    while (0..2).any(|i| metric(&c.members[i], "hahsm_partition_log_entries") > 0) {
        assert!(Instant::now() < deadline, "the logs were not compacted");
        std::thread::sleep(Duration::from_millis(500));
    }
    let store = std::fs::metadata(c.members[0].data_dir().join("hahsm.db")).map_or(0, |m| m.len());
    println!(
        "logs compacted: {} operations out of the log; member 0's store {:.1} MiB, {:.0} bytes per object",
        metric(&c.members[0], "hahsm_partition_log_compacted"),
        store as f64 / (1 << 20) as f64,
        store as f64 / total as f64
    );
    let (domain, owner) = (c.domain_secret.clone(), c.owner_secret.clone());
    let j = c.add_appliance(2, &domain, &owner);
    c.so_login(j);
    c.ha(
        j,
        &["prepare", "--partition", PARTITION, "--owner-secret", s(&owner)],
    )
    .expect_ok();
    let (started, cpu_before) = (Instant::now(), (cpu_secs(&c.members[0]), cpu_secs(&c.members[j])));
    c.add_member(j).expect_ok();
    until_objects(&c.members[j], total, Duration::from_secs(3600));
    let joined = started.elapsed().as_secs_f64();
    println!(
        "a new member joined {total} objects by snapshot in {joined:.1} s ({} snapshot installed); \
         CPU: {:.1} s on the new member, {:.1} s on member 0",
        metric(&c.members[j], "hahsm_partition_snapshots_installed"),
        cpu_secs(&c.members[j]) - cpu_before.1,
        cpu_secs(&c.members[0]) - cpu_before.0
    );
    memory(&c, "after the join");

    // 3. Backup and restore.
    let bak = c.work.path().join("scale.bak");
    let started = Instant::now();
    c.backup(0, &bak).expect_ok();
    let backed_up = started.elapsed().as_secs_f64();
    let size = std::fs::metadata(&bak).expect("backup").len();
    println!(
        "backup of {total} objects: {backed_up:.1} s, {:.1} MiB, {:.0} bytes per object",
        size as f64 / (1 << 20) as f64,
        size as f64 / total as f64
    );
    memory(&c, "after the backup");
    let m = fresh_member_in_domain(&c.work.path().join("restored"), "restored", &domain);
    let started = Instant::now();
    restore(&m, &bak, &owner, &domain).expect_ok();
    let restored = started.elapsed().as_secs_f64();
    println!(
        "restore of {total} objects on a fresh member: {restored:.1} s ({} objects there, {:.0} MiB resident)",
        metric(&m, "hahsm_partition_objects"),
        rss_mib(&m)
    );
}

/// The PKCS#11 module the harness built.
fn t20_module() -> std::path::PathBuf {
    hahsm_it::bin_dir().join("libhahsm_pkcs11.so")
}
