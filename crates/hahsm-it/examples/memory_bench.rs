//! A million objects in one partition (issue 17, item 2): one standalone
//! member, N small token data objects (1,000,000 by default) created through
//! the client library, and at 10k, 50k, 100k, 250k, 500k, 1M (those up to N,
//! and N) the member's resident memory (VmRSS from /proc) and its store's
//! size (`hahsm.db` and its WAL), as bytes per object against the 1.5 KB
//! goal. Then the member is restarted and its activation of the partition
//! timed (from the start of the process until a login and a find answer),
//! its memory read again, and `C_FindObjects` through the PKCS#11 module
//! timed by class, key type, id and label (p50 and p99 over ROUNDS rounds
//! of `C_FindObjectsInit` + `C_FindObjects` + `C_FindObjectsFinal`). Writes
//! a plot of memory against objects to PLOT (SVG or PNG).
//!
//! Each data object: `CKO_DATA`, token, private, a unique 8-byte `CKA_ID`, a
//! unique label (`obj-<i>`) and a 32-byte value, made by 4 connections with
//! 64 creates in flight each. Before them, through the module: 10
//! certificates and 5 P-256 key pairs, which the finds by class and key
//! type find. The partition's object limit is raised to 1,100,000 (the
//! default, 1,000,000, would refuse the last few).
//!
//! The member's directory is a temporary one under `TMPDIR` (a million
//! objects take about a gigabyte of store): point it at a disk with room.
//! `HAHSM_MEMBER_WRAPPER` (e.g. `valgrind --tool=massif`) applies to both
//! starts of the member.
//!
//!   cargo build --release -p hahsmd -p hahsm-cli -p hahsm-pkcs11 -p hahsm-it --example memory_bench
//!   TMPDIR=/big/disk HAHSM_BIN_DIR=$PWD/target/release \
//!     target/release/examples/memory_bench [N] [ROUNDS] [PLOT]
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, CertificateType, KeyType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use futures::StreamExt;
use hahsm_client::MemberConnection;
use hahsm_it::{Standalone, PIN};
use hahsm_proto::client::{Request, Response, USER_NORMAL};
use hahsm_token::{ck, AttrValue, Template};
use hdrhistogram::Histogram;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const GOAL_BYTES_PER_OBJECT: f64 = 1500.0;
const CONNECTIONS: usize = 4;
const IN_FLIGHT: usize = 64;
static FONT: &[u8] = include_bytes!("../../hahsm-cli/assets/DejaVuSans.ttf");

/// A line of /proc/PID/status, in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Sizes in bytes of the store's main file and of its WAL.
fn store_bytes(data: &Path) -> (u64, u64) {
    let size = |name: &str| std::fs::metadata(data.join(name)).map_or(0, |m| m.len());
    (size("hahsm.db"), size("hahsm.db-wal"))
}

/// One measurement point.
struct Point {
    objects: usize,
    rss_kib: u64,
    hwm_kib: u64,
    db: u64,
    wal: u64,
    creates_per_s: f64,
}

fn data_object(i: usize) -> Template {
    Template::new()
        .with(ck::CKA_CLASS, AttrValue::Ulong(ck::CKO_DATA))
        .with(ck::CKA_TOKEN, AttrValue::Bool(true))
        .with(ck::CKA_PRIVATE, AttrValue::Bool(true))
        .with(ck::CKA_ID, AttrValue::Bytes((i as u64).to_be_bytes().to_vec()))
        .with(ck::CKA_LABEL, AttrValue::Bytes(format!("obj-{i}").into_bytes()))
        .with(ck::CKA_VALUE, AttrValue::Bytes(vec![(i % 251) as u8; 32]))
}

/// Creates data objects `from..to`, over `conns` with `IN_FLIGHT` each.
async fn create_range(conns: &[MemberConnection], partition: &str, from: usize, to: usize) {
    let work = conns.iter().enumerate().map(|(c, conn)| {
        futures::stream::iter((from + c..to).step_by(conns.len())).for_each_concurrent(
            IN_FLIGHT,
            move |i| async move {
                let made = conn
                    .call(Request::CreateObject {
                        partition: partition.to_string(),
                        template: data_object(i),
                        op_id: hahsm_client::connection::new_op_id(),
                    })
                    .await;
                assert!(made.is_ok(), "create {i}: {made:?}");
            },
        )
    });
    futures::future::join_all(work).await;
}

/// A logged-in connection, or the error that prevented it.
async fn try_login(st: &Standalone) -> Result<MemberConnection, String> {
    let config = st.client_config();
    let conn = MemberConnection::connect(&config, &config.servers[0])
        .await
        .map_err(|e| e.to_string())?;
    conn.call(Request::Login {
        partition: st.partition.clone(),
        user_type: USER_NORMAL,
        pin: hahsm_proto::Secret::from(PIN),
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// The member's start command: `hahsmd`, under `HAHSM_MEMBER_WRAPPER` if set.
fn daemon_command() -> Command {
    let words: Vec<String> = std::env::var("HAHSM_MEMBER_WRAPPER")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    match words.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(hahsm_it::bin("hahsmd"));
            c
        }
        None => Command::new(hahsm_it::bin("hahsmd")),
    }
}

/// The restarted member, stopped (SIGTERM, then SIGKILL) when dropped.
struct Restarted(Child);

impl Drop for Restarted {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn p11_login(p11: &Pkcs11) -> Session {
    let slot = p11.get_slots_with_token().expect("slots")[0];
    let s = p11.open_rw_session(slot).expect("session");
    s.login(UserType::User, Some(&AuthPin::new(PIN.to_string().into())))
        .expect("login");
    s
}

/// 10 certificates and 5 P-256 key pairs, for the finds by class and key type.
fn make_certificates_and_keys(p11: &Pkcs11) {
    let s = p11_login(p11);
    for c in 0..10u8 {
        s.create_object(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Id(vec![0xce, c]),
            Attribute::Label(format!("cert-{c}").into_bytes()),
            Attribute::Subject(format!("CN=subject {c}").into_bytes()),
            Attribute::Value(vec![0x30, 0x03, 0x02, 0x01, c]),
        ])
        .expect("certificate");
    }
    for k in 0..5u8 {
        s.generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[Attribute::Token(true), Attribute::EcParams(P256.to_vec())],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sign(true),
                Attribute::Id(vec![0xec, k]),
                Attribute::Label(format!("key-{k}").into_bytes()),
            ],
        )
        .expect("key pair");
    }
}

/// p50 and p99 of `op` over `rounds` calls (after a tenth as many for warm-up), in µs.
fn latency(rounds: usize, mut op: impl FnMut()) -> (u64, u64) {
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..rounds.div_ceil(10) {
        op();
    }
    for _ in 0..rounds {
        let t = Instant::now();
        op();
        h.record(t.elapsed().as_micros() as u64).expect("record");
    }
    (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `C_FindObjects` by class, key type, id and label through the module,
/// and the bare round trip, interleaved round by round (so that whatever
/// else runs on the machine weighs on each alike): p50, p99, p99.9, the
/// slowest, and the share of rounds over the 1 ms goal. Then the walk of
/// every object that a find by an attribute without an index costs.
fn finds(max: usize, rounds: usize, when: &str) {
    let p11 = Pkcs11::new(hahsm_it::bin_dir().join("libhahsm_pkcs11.so")).expect("module loads");
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let s = p11_login(&p11);
    let ops: Vec<(&str, Vec<Attribute>, usize)> = vec![
        (
            "class (the 10 certificates)",
            vec![Attribute::Class(ObjectClass::CERTIFICATE)],
            10,
        ),
        (
            "key type (the 5 EC private keys)",
            vec![
                Attribute::KeyType(KeyType::EC),
                Attribute::Class(ObjectClass::PRIVATE_KEY),
            ],
            5,
        ),
        (
            "id (1 data object)",
            vec![Attribute::Id(((max / 3) as u64).to_be_bytes().to_vec())],
            1,
        ),
        (
            "label (1 data object)",
            vec![Attribute::Label(format!("obj-{}", max * 2 / 3).into_bytes())],
            1,
        ),
        ("label (1 key)", vec![Attribute::Label(b"key-3".to_vec())], 1),
    ];
    let mut hists: Vec<Histogram<u64>> = (0..=ops.len())
        .map(|_| Histogram::new(3).expect("histogram"))
        .collect();
    let load_before = loadavg();
    for round in 0..rounds + rounds.div_ceil(10) {
        for (k, h) in hists.iter_mut().enumerate() {
            let t = Instant::now();
            match ops.get(k) {
                Some((what, template, want)) => {
                    let found = s.find_objects(template).expect("find");
                    assert_eq!(found.len(), *want, "{what}");
                }
                None => s.generate_random_slice(&mut [0u8; 1]).expect("random"),
            }
            if round >= rounds.div_ceil(10) {
                h.record(t.elapsed().as_micros() as u64).expect("record");
            }
        }
    }
    println!(
        "{} objects, {when}: {rounds} interleaved rounds, latency in µs (goal 1 ms); load average {load_before} before, {} after",
        max + 20,
        loadavg()
    );
    println!("  find by                               p50     p99   p99.9     max  over 1 ms");
    for (k, h) in hists.iter().enumerate() {
        let what = ops.get(k).map_or("(bare round trip: C_GenerateRandom)", |o| o.0);
        let over = h.count_between(1001, u64::MAX) as f64 * 100.0 / h.len() as f64;
        println!(
            "  {what:<34} {:>6} {:>7} {:>7} {:>7} {over:>8.2} %{}",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            match (k < ops.len(), h.value_at_quantile(0.99) <= 1000) {
                (false, _) => "",
                (true, true) => "  met",
                (true, false) => "  not met",
            }
        );
    }
    // For scale: a find by an attribute that is not indexed walks every object.
    let walk_rounds = 10;
    let (p50, p99) = latency(walk_rounds, || {
        s.find_objects(&[Attribute::Application(b"nowhere".to_vec())])
            .expect("find");
    });
    println!("  CKA_APPLICATION (a walk; {walk_rounds} rounds) {p50:>6} {p99:>7}");
    drop(s);
    p11.finalize().expect("C_Finalize");
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn plot(path: &Path, base_kib: u64, points: &[Point], restarted: Option<(usize, u64)>) {
    assert!(
        register_font("sans-serif", FontStyle::Normal, FONT).is_ok(),
        "the embedded font"
    );
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).expect("plot directory");
    }
    let x_max = points.iter().map(|p| p.objects).max().unwrap_or(1) as f64;
    let goal = |n: f64| mib(base_kib) + n * GOAL_BYTES_PER_OBJECT / 1_048_576.0;
    let y_max = points
        .iter()
        .map(|p| mib(p.rss_kib).max((p.db + p.wal) as f64 / 1_048_576.0))
        .fold(goal(x_max), f64::max)
        * 1.15;
    let draw = |root: DrawingArea<SVGBackend, plotters::coord::Shift>| {
        root.fill(&WHITE).expect("fill");
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "One partition: member memory and store size against objects",
                ("sans-serif", 22),
            )
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max * 1.03, 0.0..y_max)
            .expect("chart");
        chart
            .configure_mesh()
            .x_desc("token objects in the partition")
            .y_desc("MiB")
            .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
            .label_style(("sans-serif", 14))
            .draw()
            .expect("mesh");
        let rss: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (p.objects as f64, mib(p.rss_kib)))
            .collect();
        let store: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (p.objects as f64, (p.db + p.wal) as f64 / 1_048_576.0))
            .collect();
        let blue = RGBColor(31, 119, 180);
        let red = RGBColor(214, 39, 40);
        let green = RGBColor(44, 160, 44);
        chart
            .draw_series(LineSeries::new(rss.clone(), blue.stroke_width(2)))
            .expect("rss")
            .label("member VmRSS while creating")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
        chart
            .draw_series(rss.iter().map(|p| Circle::new(*p, 4, blue.filled())))
            .expect("rss points");
        chart
            .draw_series(LineSeries::new(store.clone(), green.stroke_width(2)))
            .expect("store")
            .label("store: hahsm.db + WAL")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], green.stroke_width(2)));
        chart
            .draw_series(store.iter().map(|p| Circle::new(*p, 4, green.filled())))
            .expect("store points");
        chart
            .draw_series(LineSeries::new(
                [(0.0, goal(0.0)), (x_max, goal(x_max))],
                red.stroke_width(1),
            ))
            .expect("goal")
            .label("goal: 1.5 KB per object over the empty member")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(1)));
        if let Some((n, kib)) = restarted {
            chart
                .draw_series([TriangleMarker::new((n as f64, mib(kib)), 7, blue.filled())])
                .expect("restart")
                .label("member VmRSS after a restart (activation from the store)")
                .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, blue.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .expect("legend");
        root.present().expect("present");
    };
    draw(SVGBackend::new(path, (1000, 620)).into_drawing_area());
}

fn main() {
    let mut args = std::env::args().skip(1);
    let max: usize = args.next().map_or(1_000_000, |a| a.parse().expect("N"));
    let rounds: usize = args.next().map_or(500, |a| a.parse().expect("ROUNDS"));
    let plot_path = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "docs/bench/memory-vs-objects.svg".into()),
    );
    let mut marks: Vec<usize> = [10_000, 50_000, 100_000, 250_000, 500_000, 1_000_000]
        .into_iter()
        .filter(|&m| m < max)
        .collect();
    marks.push(max);

    let mut st = Standalone::with_limits("max_objects_per_partition = 1100000\n");
    std::env::set_var("HAHSM_CONF", &st.conf);
    let data = st.member.data_dir();
    println!("member directory {}", st.member.dir.display());
    {
        let p11 = Pkcs11::new(hahsm_it::bin_dir().join("libhahsm_pkcs11.so")).expect("module loads");
        p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .expect("C_Initialize");
        make_certificates_and_keys(&p11);
        p11.finalize().expect("C_Finalize");
    }
    let pid = st.member.pid().expect("the member runs");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let conns: Vec<MemberConnection> = runtime.block_on(async {
        let mut v = Vec::new();
        for _ in 0..CONNECTIONS {
            v.push(try_login(&st).await.expect("login"));
        }
        v
    });
    std::thread::sleep(Duration::from_secs(2));
    let base = status_kib(pid, "VmRSS");
    let (db0, wal0) = store_bytes(&data);
    println!(
        "empty partition (15 objects): member VmRSS {:.1} MiB, store {:.1} MiB + WAL {:.1} MiB",
        mib(base),
        db0 as f64 / 1_048_576.0,
        wal0 as f64 / 1_048_576.0
    );
    println!("objects     VmRSS MiB  VmHWM MiB  B/object (RSS)  vs 1.5 KB  db MiB  WAL MiB  store B/object  creates/s");
    let mut points = Vec::new();
    let mut made = 0;
    let mut creating = Duration::ZERO;
    for &mark in &marks {
        let t = Instant::now();
        runtime.block_on(create_range(&conns, &st.partition, made, mark));
        creating += t.elapsed();
        let rate = (mark - made) as f64 / t.elapsed().as_secs_f64();
        made = mark;
        std::thread::sleep(Duration::from_secs(2));
        let (db, wal) = store_bytes(&data);
        let p = Point {
            objects: mark,
            rss_kib: status_kib(pid, "VmRSS"),
            hwm_kib: status_kib(pid, "VmHWM"),
            db,
            wal,
            creates_per_s: rate,
        };
        let per = (p.rss_kib.saturating_sub(base)) as f64 * 1024.0 / mark as f64;
        println!(
            "{:>9}  {:>9.1}  {:>9.1}  {:>14.0}  {:>9}  {:>6.1}  {:>7.1}  {:>14.0}  {:>9.0}",
            p.objects,
            mib(p.rss_kib),
            mib(p.hwm_kib),
            per,
            if per <= GOAL_BYTES_PER_OBJECT {
                "met"
            } else {
                "not met"
            },
            db as f64 / 1_048_576.0,
            wal as f64 / 1_048_576.0,
            (db + wal) as f64 / mark as f64,
            p.creates_per_s
        );
        points.push(p);
    }
    println!(
        "{made} data objects created in {:.1} s ({:.0}/s), {CONNECTIONS} connections x {IN_FLIGHT} in flight",
        creating.as_secs_f64(),
        made as f64 / creating.as_secs_f64()
    );
    drop(conns);
    finds(max, rounds, "on the member that made them");

    // The store's pages by table and index, if the sqlite3 shell has dbstat.
    if let Ok(out) = Command::new("sqlite3")
        .arg("-readonly")
        .arg(data.join("hahsm.db"))
        .arg("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 8;")
        .output()
    {
        println!("store pages by table or index (bytes):");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            println!("  {line}");
        }
    }

    // Restart: time the activation of the partition, from the process's
    // start until a login and a find by label answer.
    st.member.stop();
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(st.member.log_path())
        .expect("log");
    let _ = std::fs::remove_file(data.join("listen.addr"));
    let t0 = Instant::now();
    let child = daemon_command()
        .arg("--config")
        .arg(&st.member.config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .expect("hahsmd restarts");
    let restarted = Restarted(child);
    let mut listening = None;
    let probe = Request::FindObjects {
        partition: st.partition.clone(),
        template: Template::new().with(
            ck::CKA_LABEL,
            AttrValue::Bytes(format!("obj-{}", max / 2).into_bytes()),
        ),
        limit: 10,
        read: 0,
    };
    let activation = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(1200),
            "no answer 20 min after the restart"
        );
        if listening.is_none() && std::fs::metadata(data.join("listen.addr")).is_ok_and(|m| m.len() > 0) {
            listening = Some(t0.elapsed());
        }
        let answered = runtime.block_on(async {
            let conn = try_login(&st).await?;
            conn.call(probe.clone()).await.map_err(|e| e.to_string())
        });
        if matches!(answered, Ok(Response::Objects(ref o)) if o.len() == 1) {
            break t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "restart: listening after {:.2} s, login + find by label answered after {:.2} s (goal 30 s: {})",
        listening.unwrap_or(activation).as_secs_f64(),
        activation.as_secs_f64(),
        if activation <= Duration::from_secs(30) {
            "met"
        } else {
            "not met"
        }
    );
    let new_pid = restarted.0.id();
    std::thread::sleep(Duration::from_secs(2));
    let after = status_kib(new_pid, "VmRSS");
    println!(
        "after the restart: member VmRSS {:.1} MiB, VmHWM {:.1} MiB: {:.0} B per object over the empty member's {:.1} MiB",
        mib(after),
        mib(status_kib(new_pid, "VmHWM")),
        after.saturating_sub(base) as f64 * 1024.0 / max as f64,
        mib(base)
    );

    finds(max, rounds, "after the restart");
    drop(restarted);

    plot(&plot_path, base, &points, Some((max, after)));
    println!("plot: {}", plot_path.display());
}
