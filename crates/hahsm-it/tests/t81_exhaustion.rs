//! Exhaustion: floods of idle and half-open connections, a slowloris client,
//! one client taking every connection, huge templates and a partition of a
//! hundred thousand objects. None may take the member down or starve the
//! other clients; each limit is configurable and answers with a clear error.
use hahsm_client::{ClientError, MemberConnection};
use hahsm_it::Standalone;
use hahsm_proto::client::{Request, Response};
use hahsm_token::{ck, AttrValue, Template};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Raises this process's soft limit on open files to its hard limit (the
/// members started afterwards inherit it) and returns the soft limit.
fn raise_open_files_limit() -> u64 {
    let mut limit = nix::libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer to an rlimit.
    let got = unsafe { nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(got, 0);
    if limit.rlim_cur < limit.rlim_max {
        let raised = nix::libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: a valid rlimit; raising the soft limit up to the hard one is always allowed.
        if unsafe { nix::libc::setrlimit(nix::libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    limit.rlim_cur
}

/// Polls `done` until it holds or `limit` passes.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// Whether the member has closed this connection (EOF or reset), without blocking.
fn closed_by_member(mut s: &std::net::TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[test]
fn thousands_of_half_open_connections_do_not_lock_out_a_real_client() {
    let soft = raise_open_files_limit();
    // Room for the flood in this process and in the member, with spare.
    let flood = 2000.min((soft.saturating_sub(300) / 2) as usize);
    assert!(flood >= 500, "ulimit -n is {soft}: too low for this test");
    // A long handshake deadline, so only eviction can free the places.
    let st = Standalone::with_limits("max_pending_handshakes = 128\nhandshake_timeout_ms = 120000");
    let mut conns = Vec::with_capacity(flood);
    for i in 0..flood {
        let mut c = std::net::TcpStream::connect(&st.member.address).expect("connect");
        if i % 2 == 0 {
            // Half of them start a TLS record and stop.
            c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
        }
        conns.push(c);
    }
    // A real client, with its own connect and handshake deadlines (3 s), is served.
    st.keys(&["gen", "--type", "aes:128", "--label", "during-flood"])
        .expect_ok();
    st.keys(&["show", "--label", "during-flood"]).expect_ok();
    // And the member shed the flood rather than holding it.
    let evicted = wait_for(Duration::from_secs(60), || {
        conns.iter().filter(|c| closed_by_member(c)).count() >= flood - 128
    });
    let closed = conns.iter().filter(|c| closed_by_member(c)).count();
    assert!(evicted, "only {closed} of {flood} idle connections were closed");
    let log = st.member.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_slowloris_client_is_cut_off_and_starves_no_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let st = Standalone::with_limits("idle_timeout_ms = 3000\nhandshake_timeout_ms = 3000");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // In the handshake: one byte of a ClientHello per second.
    let handshake = std::thread::spawn({
        let address = st.member.address.clone();
        move || {
            let started = Instant::now();
            let mut c = std::net::TcpStream::connect(address).unwrap();
            for b in [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]
                .iter()
                .cycle()
                .take(60)
            {
                if c.write_all(&[*b]).is_err() || closed_by_member(&c) {
                    return started.elapsed();
                }
                let _ = c.set_nonblocking(false);
                std::thread::sleep(Duration::from_secs(1));
            }
            panic!("a slow handshake was kept open for a minute");
        }
    });
    let (cut_after, served_meanwhile) = rt.block_on(async {
        let mut c = st.raw_client(&st.conf, "slow").await;
        let started = Instant::now();
        // A frame header announcing 1000 bytes, then one byte per second.
        c.write_all(&1000u32.to_be_bytes()).await.unwrap();
        c.flush().await.unwrap();
        let mut served = false;
        for _ in 0..60 {
            if c.write_all(&[0]).await.is_err() || c.flush().await.is_err() {
                break;
            }
            let mut buf = [0u8; 256];
            match tokio::time::timeout(Duration::from_secs(1), c.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) | Err(_) => {}
            }
            if !served {
                // Meanwhile, another client is served as usual.
                let out = tokio::task::block_in_place(|| {
                    st.keys(&["gen", "--type", "aes:128", "--label", "meanwhile"])
                });
                served = out.ok;
            }
        }
        (started.elapsed(), served)
    });
    assert!(served_meanwhile, "the other client was not served");
    assert!(
        cut_after < Duration::from_secs(30),
        "a slowloris frame was read for {cut_after:?} (idle timeout 3 s)"
    );
    let slow_handshake = handshake.join().expect("the slow handshake was cut off");
    assert!(slow_handshake < Duration::from_secs(30), "{slow_handshake:?}");
    st.keys(&["show", "--label", "meanwhile"]).expect_ok();
}

async fn connect(conf: &Path) -> Result<MemberConnection, ClientError> {
    let config = hahsm_client::ClientConfig::load(conf).unwrap();
    MemberConnection::connect(&config, &config.servers[0]).await
}

#[track_caller]
fn refused(r: Result<MemberConnection, ClientError>, message: &str) {
    match r {
        Ok(_) => panic!("a connection over the limit was accepted"),
        Err(e) => {
            assert_eq!(e.ckr(), ck::CKR_SESSION_COUNT, "{e}");
            assert!(e.to_string().contains(message), "{e}");
        }
    }
}

#[test]
fn one_client_cannot_take_every_connection() {
    let st = Standalone::with_limits("max_connections = 6\nmax_connections_per_client = 4");
    let other = st.add_client("app2", true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut mine = Vec::new();
        for _ in 0..4 {
            mine.push(connect(&st.conf).await.expect("within the client's limit"));
        }
        refused(connect(&st.conf).await, "this client has reached its limit of 4");
        // Another client still gets in, up to the member's limit.
        let a = connect(&other).await.expect("another client is served");
        let _b = connect(&other).await.expect("another client is served");
        refused(connect(&other).await, "the member has reached its limit of 6");
        a.call(Request::ListPartitions)
            .await
            .expect("and its requests are answered");
        // A closed connection frees its place.
        drop(mine.pop());
        let mut again = None;
        for _ in 0..100 {
            match connect(&st.conf).await {
                Ok(c) => {
                    again = Some(c);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        assert!(again.is_some(), "the freed place was not given back");
    });
}

#[test]
fn huge_templates_get_a_clear_error() {
    let st = Standalone::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = st.connect().await;
        let mut many = Template::new().with(ck::CKA_CLASS, AttrValue::Ulong(ck::CKO_DATA));
        for i in 0..200 {
            many.set(ck::CKA_VENDOR_DEFINED + i, AttrValue::Bytes(vec![1]));
        }
        for request in [
            Request::CreateObject {
                partition: st.partition.clone(),
                template: many.clone(),
                op_id: hahsm_client::connection::new_op_id(),
            },
            Request::FindObjects {
                partition: st.partition.clone(),
                template: many.clone(),
                limit: 10,
                read: 0,
            },
        ] {
            let e = conn.call(request).await.unwrap_err();
            assert_eq!(e.ckr(), ck::CKR_ARGUMENTS_BAD, "{e}");
            assert!(e.to_string().contains("the limit is 128"), "{e}");
        }
        // One attribute larger than a frame may be: refused, not taken in.
        let big = Template::new()
            .with(ck::CKA_CLASS, AttrValue::Ulong(ck::CKO_DATA))
            .with(ck::CKA_LABEL, AttrValue::Bytes(vec![b'x'; 2 << 20]));
        let e = conn
            .call(Request::CreateObject {
                partition: st.partition.clone(),
                template: big,
                op_id: hahsm_client::connection::new_op_id(),
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
    });
    // The member is up and serves.
    st.keys(&["gen", "--type", "aes:128", "--label", "after-huge"])
        .expect_ok();
    assert!(!st.member.log().contains("panicked"));
}

/// A partition of 100,000 token objects (`HAHSM_BULK_OBJECTS` overrides the
/// count): created with writes in flight on several connections, then found
/// by label. Only correctness is asserted; the times are printed and recorded
/// in BENCHMARKS.md.
#[test]
fn a_hundred_thousand_objects_in_one_partition() {
    let count: usize = std::env::var("HAHSM_BULK_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let st = Standalone::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let connections = 4;
        let mut conns = Vec::new();
        for _ in 0..connections {
            conns.push(std::sync::Arc::new(st.connect().await));
        }
        let started = Instant::now();
        let mut workers = Vec::new();
        for (w, conn) in conns.iter().enumerate() {
            let (conn, partition) = (conn.clone(), st.partition.clone());
            workers.push(tokio::spawn(async move {
                let mut in_flight = tokio::task::JoinSet::new();
                for i in (w..count).step_by(connections) {
                    if in_flight.len() >= 32 {
                        in_flight.join_next().await.unwrap().unwrap();
                    }
                    let (conn, partition) = (conn.clone(), partition.clone());
                    in_flight.spawn(async move {
                        conn.call(Request::CreateObject {
                            partition,
                            template: Template::new()
                                .with(ck::CKA_CLASS, AttrValue::Ulong(ck::CKO_DATA))
                                .with(ck::CKA_TOKEN, AttrValue::Bool(true))
                                .with(ck::CKA_LABEL, AttrValue::Bytes(format!("bulk-{i}").into_bytes()))
                                .with(ck::CKA_VALUE, AttrValue::Bytes(i.to_be_bytes().to_vec())),
                            op_id: hahsm_client::connection::new_op_id(),
                        })
                        .await
                        .expect("object created");
                    });
                }
                while let Some(r) = in_flight.join_next().await {
                    r.unwrap();
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
        let created = started.elapsed();
        let conn = &conns[0];
        let find = |label: String| Request::FindObjects {
            partition: st.partition.clone(),
            template: Template::new().with(ck::CKA_LABEL, AttrValue::Bytes(label.into_bytes())),
            limit: 10,
            read: 0,
        };
        let mut slowest = Duration::ZERO;
        for i in [0, count / 2, count - 1] {
            let t = Instant::now();
            let found = conn.call(find(format!("bulk-{i}"))).await.unwrap();
            slowest = slowest.max(t.elapsed());
            let Response::Objects(found) = found else { panic!("{found:?}") };
            assert_eq!(found.len(), 1, "bulk-{i}");
            let Response::Attributes(a) = conn
                .call(Request::GetAttributes {
                    partition: st.partition.clone(),
                    object: found[0],
                    types: vec![ck::CKA_VALUE],
                })
                .await
                .unwrap()
            else {
                panic!("attributes")
            };
            assert_eq!(
                a[0].1,
                hahsm_proto::client::AttrResult::Value(AttrValue::Bytes(i.to_be_bytes().to_vec())),
                "the object found is the one made"
            );
        }
        let missing = conn.call(find("bulk-none".into())).await.unwrap();
        assert_eq!(missing, Response::Objects(vec![]));
        let Response::Partitions(p) = conn.call(Request::ListPartitions).await.unwrap() else {
            panic!("partitions")
        };
        assert_eq!(p[0].object_count, count as u64);
        eprintln!(
            "{count} objects created in {created:.1?} ({:.0}/s); C_FindObjects by label: slowest of 3 {slowest:.1?}",
            count as f64 / created.as_secs_f64()
        );
    });
}
