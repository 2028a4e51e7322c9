//! A client that disconnects at a frame boundary is an orderly close, not a
//! warning in the member's log (issue 19: every client disconnect logged a
//! "bad frame" warning, about 1,400 per member in one test run); a truncated
//! frame and garbage still are warnings.
use hahsm_it::Standalone;
use std::time::{Duration, Instant};

/// Waits until the member's log holds `needle` `n` times; the count then.
fn wait_for(st: &Standalone, needle: &str, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let count = st.member.log().matches(needle).count();
        if count >= n || Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_orderly_disconnect_is_no_warning_and_a_bad_frame_still_is() {
    let st = Standalone::new();
    // Debug lines show each close, so the test knows when they are all seen
    // (SIGHUP applies the config's level over the harness's RUST_LOG).
    st.member.add_top_level("log_level = \"debug\"");
    st.member.signal(nix::sys::signal::Signal::SIGHUP);
    assert_eq!(wait_for(&st, "configuration reloaded", 1), 1, "SIGHUP applied");
    let closes_before = st.member.log().matches("client closed the connection").count();

    // Clients that work and exit: the CLI, three times (it does not send
    // TLS's close_notify), and a raw connection that hangs up after the hello.
    for _ in 0..3 {
        st.keys(&["list"]).expect_ok();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = st.raw_client(&st.conf, "t23").await;
        drop(c);
    });
    let closes = wait_for(&st, "client closed the connection", closes_before + 4);
    let log = st.member.log();
    assert!(
        !log.contains("bad frame"),
        "an orderly disconnect was logged as a bad frame:\n{log}"
    );
    assert!(
        closes >= closes_before + 4,
        "the member did not see four orderly closes ({closes}); log:\n{log}"
    );

    // A frame cut short: its header announces 100 bytes, 10 come, then the end.
    rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut c = st.raw_client(&st.conf, "t23").await;
        let mut bytes = 100u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 10]);
        c.write_all(&bytes).await.unwrap();
        c.flush().await.unwrap();
        c.shutdown().await.unwrap();
    });
    assert_eq!(wait_for(&st, "bad frame", 1), 1, "a truncated frame is a warning");
    // Garbage in a whole frame.
    rt.block_on(async {
        let mut c = st.raw_client(&st.conf, "t23").await;
        hahsm_link::write_frame(&mut c, &[0xff; 40]).await.unwrap();
        let _ = hahsm_link::read_frame(&mut c, 1 << 20).await;
    });
    assert_eq!(
        wait_for(&st, "malformed request frame", 1),
        1,
        "garbage is a warning"
    );
    let log = st.member.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && (l.contains("bad frame") || l.contains("malformed")))
        .count();
    assert_eq!(warnings, 2, "both faults are warnings:\n{log}");
}
