//! A group on a test bed of real hosts (bed::Bed): three members, each in its
//! own network namespace with its own address, and an application in a fourth,
//! joined by a bridge; the faults are the kernel's. While the application signs
//! through the HA slot: random loss, duplicated packets and a slow link on one
//! member (nftables and tc tbf; this kernel has no netem), an asymmetric partition made with nftables (one member
//! stops hearing another, which still hears it), one member cut off entirely
//! (its /health/ready says 503, then 200 once back), SIGSTOP and SIGCONT, and
//! kill -9 and a restart with the same data. Not one signature may fail, and
//! the members end identical.
//!
//! Runs as root (the tests do); scripts/test-deps.sh installs iproute2,
//! nftables and curl.
use hahsm_it::bed_group::{BedGroup, BedSetup, MEMBERS};
use hahsm_it::expect_clean_bench;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

#[test]
fn the_group_signs_through_kernel_made_faults_on_a_bed_of_namespaces() {
    let mut g = BedGroup::new(&BedSetup::default());
    for m in MEMBERS {
        g.wait_ready(m, 200, Duration::from_secs(30));
    }
    // A key written through the group before the faults, to be found on each
    // member after them.
    g.app(&[
        "keys",
        "gen",
        "--type",
        "ec:p256",
        "--label",
        "before-the-faults",
        "--server",
        "hsm1",
    ])
    .expect_ok();
    let seconds = 50;
    let mut signing = g.start_signing(seconds);
    let started = Instant::now();
    let at = |what: &str| eprintln!("{:>5.1} s  {what}", started.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_secs(4));

    at("hsm2: 5% of its packets lost, 2% sent twice to hsm1, its link at 2 Mbit/s");
    g.bed.lose("hsm2", 5);
    g.bed.duplicate("hsm2", "hsm1", 2);
    g.bed.throttle("hsm2", "2mbit", "200ms");
    std::thread::sleep(Duration::from_secs(6));
    g.bed.heal();

    at("hsm3 stops hearing hsm1 (hsm1 still hears hsm3)");
    g.bed.cut_one_way("hsm1", "hsm3");
    std::thread::sleep(Duration::from_secs(6));
    g.bed.heal();

    at("hsm3 cut off");
    g.bed.isolate("hsm3");
    let body = g.wait_ready("hsm3", 503, Duration::from_secs(20));
    at(&format!("hsm3 says 503: {body}"));
    assert!(body.contains("cut off"), "the 503 does not say why: {body}");
    for m in ["hsm1", "hsm2"] {
        assert_eq!(g.ready(m).0, 200, "{m}, in the majority, is not ready");
    }
    g.bed.heal();
    g.wait_ready("hsm3", 200, Duration::from_secs(30));
    at("hsm3 back and caught up");

    at("hsm1 paused (SIGSTOP) for 4 s");
    g.members[0].signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(4));
    g.members[0].signal(Signal::SIGCONT);
    g.wait_ready("hsm1", 200, Duration::from_secs(30));

    at("hsm2 killed (kill -9) and started again with its data");
    g.members[1].kill9();
    std::thread::sleep(Duration::from_secs(3));
    g.members[1].spawn();
    g.wait_ready("hsm2", 200, Duration::from_secs(30));
    at("the faults are over");
    assert!(
        signing.try_wait().unwrap().is_none(),
        "the signing run ended before the faults were over ({:?} of {seconds} s)",
        started.elapsed()
    );

    let point = expect_clean_bench(signing, "through the faults");
    eprintln!("signing run: {point}");

    g.wait_in_sync(Duration::from_secs(30));
    for name in MEMBERS {
        let list = g.app(&["keys", "list", "--server", name]).expect_ok();
        assert!(
            list.stdout.contains("before-the-faults"),
            "{name} lost the key made before the faults:\n{}",
            list.stdout
        );
    }
}
