//! Many clients on one member (issue 17, item 6): opens N authenticated
//! connections (mutual TLS, the hello, a login each; 5,000 by default) to a
//! standalone member from this process, 100 handshakes at a time, and reports
//! the member's resident memory per connection (VmRSS from /proc, before and
//! after), how long the handshakes took, and that the member still answers:
//! a random-bytes request on every one of the N connections, and on a new one.
//!
//!   cargo build --release -p hahsmd -p hahsm-cli -p hahsm-it --example connections_bench
//!   ulimit -n 20000   # this process and the member each hold N sockets
//!   HAHSM_BIN_DIR=$PWD/target/release target/release/examples/connections_bench [N]
use hahsm_it::Standalone;
use hahsm_proto::client::{Request, Response};
use std::time::Instant;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::args().nth(1).map_or(5_000, |a| a.parse().expect("N"));
    let st = Standalone::with_limits(&format!(
        "max_connections = {}\nmax_connections_per_client = {}\nmax_pending_handshakes = 256\n",
        n + 100,
        n + 100
    ));
    let pid = st.member.pid().expect("the member runs");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        // One connection first, so the partition's state is loaded before the baseline.
        let first = st.connect().await;
        let random = Request::GenerateRandom { len: 16 };
        assert!(matches!(first.call(random.clone()).await, Ok(Response::Bytes(_))));
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let before = rss_kib(pid);
        let started = Instant::now();
        let mut held = Vec::with_capacity(n);
        while held.len() < n {
            let batch = (n - held.len()).min(100);
            let opened = futures::future::join_all((0..batch).map(|_| st.connect())).await;
            held.extend(opened);
        }
        let took = started.elapsed();
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let after = rss_kib(pid);
        let mut answered = 0;
        for c in &held {
            if matches!(c.call(random.clone()).await, Ok(Response::Bytes(_))) {
                answered += 1;
            }
        }
        let fresh = st.connect().await;
        let fresh_ok = matches!(fresh.call(random.clone()).await, Ok(Response::Bytes(_)));
        let settled = rss_kib(pid);
        println!("{n} authenticated connections to one member (mutual TLS 1.3, hello, login each)");
        println!(
            "  opened in {:.1} s ({:.0}/s), 100 at a time",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
        println!(
            "  member VmRSS {before} KiB before, {after} KiB with them open: {:.1} KiB per connection",
            (after.saturating_sub(before)) as f64 / n as f64
        );
        println!(
            "  after one request on each: {settled} KiB, {:.1} KiB per connection",
            (settled.saturating_sub(before)) as f64 / n as f64
        );
        println!("  answered a request: {answered} of {n}; a new connection: {fresh_ok}");
    });
}
