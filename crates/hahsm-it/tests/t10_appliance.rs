//! The appliance on real processes: the report's listings 3.1 and 3.2 (setup
//! of one HSM), keys through the CLI, restarts, crashes and refusals.
use hahsm_it::{hahsm, hahsm_env, run, Member, Standalone};
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn setup_keygen_and_signature_verify_with_openssl() {
    let st = Standalone::new();
    hahsm(Some(&st.conf), &["client", "verify"]).expect_ok();
    let data = st.path("data.txt");
    std::fs::write(&data, b"hello from hahsm").unwrap();

    // RSA PKCS#1 v1.5 with SHA-256, checked by openssl dgst.
    st.keys(&["gen", "--type", "rsa:2048", "--label", "rsa1"])
        .expect_ok();
    let (sig, pubkey) = (st.path("rsa.sig"), st.path("rsa.pub"));
    st.keys(&[
        "sign",
        "--label",
        "rsa1",
        "--mech",
        "SHA256-RSA-PKCS",
        "--in",
        s(&data),
        "--out",
        s(&sig),
    ])
    .expect_ok();
    st.keys(&["pubkey", "--label", "rsa1", "--out", s(&pubkey)])
        .expect_ok();
    let v = run(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            s(&pubkey),
            "-signature",
            s(&sig),
            s(&data),
        ],
    );
    assert!(
        v.ok && v.stdout.contains("Verified OK"),
        "openssl: {} {}",
        v.stdout,
        v.stderr
    );

    // RSA-PSS, checked by openssl with the PSS options.
    let pss = st.path("pss.sig");
    st.keys(&[
        "sign",
        "--label",
        "rsa1",
        "--mech",
        "SHA256-RSA-PKCS-PSS",
        "--in",
        s(&data),
        "--out",
        s(&pss),
    ])
    .expect_ok();
    let v = run(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:32",
            "-verify",
            s(&pubkey),
            "-signature",
            s(&pss),
            s(&data),
        ],
    );
    assert!(v.ok, "openssl PSS: {} {}", v.stdout, v.stderr);

    // Ed25519, checked by openssl pkeyutl.
    st.keys(&["gen", "--type", "ed25519", "--label", "ed1"])
        .expect_ok();
    let (esig, epub) = (st.path("ed.sig"), st.path("ed.pub"));
    st.keys(&[
        "sign",
        "--label",
        "ed1",
        "--mech",
        "EDDSA",
        "--in",
        s(&data),
        "--out",
        s(&esig),
    ])
    .expect_ok();
    st.keys(&["pubkey", "--label", "ed1", "--out", s(&epub)])
        .expect_ok();
    let v = run(
        "openssl",
        &[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            s(&epub),
            "-rawin",
            "-in",
            s(&data),
            "-sigfile",
            s(&esig),
        ],
    );
    assert!(v.ok, "openssl Ed25519: {} {}", v.stdout, v.stderr);

    // A tampered message no longer verifies, through hahsm itself.
    st.keys(&[
        "verify",
        "--label",
        "rsa1",
        "--mech",
        "SHA256-RSA-PKCS",
        "--in",
        s(&data),
        "--signature",
        s(&sig),
    ])
    .expect_ok();
    std::fs::write(&data, b"hello from hahsm!").unwrap();
    st.keys(&[
        "verify",
        "--label",
        "rsa1",
        "--mech",
        "SHA256-RSA-PKCS",
        "--in",
        s(&data),
        "--signature",
        s(&sig),
    ])
    .expect_err("signature is invalid");
}

#[test]
fn key_imported_from_openssl_pem_signs_exactly_as_openssl_does() {
    let st = Standalone::new();
    let key = st.path("imported.pem");
    run(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            s(&key),
        ],
    )
    .expect_ok();
    st.keys(&["import", "--file", s(&key), "--label", "imp"])
        .expect_ok();
    let data = st.path("msg");
    std::fs::write(&data, b"known answer").unwrap();
    let ours = st.path("ours.sig");
    st.keys(&[
        "sign",
        "--label",
        "imp",
        "--mech",
        "SHA256-RSA-PKCS",
        "--in",
        s(&data),
        "--out",
        s(&ours),
    ])
    .expect_ok();
    let theirs = st.path("theirs.sig");
    run(
        "openssl",
        &["dgst", "-sha256", "-sign", s(&key), "-out", s(&theirs), s(&data)],
    )
    .expect_ok();
    // PKCS#1 v1.5 is deterministic: the same key must give the same bytes.
    assert_eq!(std::fs::read(&ours).unwrap(), std::fs::read(&theirs).unwrap());

    // An EC key from openssl: its ECDSA signature verifies under openssl's own public key.
    let ec = st.path("ec.pem");
    run(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            s(&ec),
        ],
    )
    .expect_ok();
    st.keys(&["import", "--file", s(&ec), "--label", "ecimp"])
        .expect_ok();
    let raw = st.path("ec.sig");
    st.keys(&[
        "sign",
        "--label",
        "ecimp",
        "--mech",
        "ECDSA-SHA256",
        "--in",
        s(&data),
        "--out",
        s(&raw),
    ])
    .expect_ok();
    let der = st.path("ec.der.sig");
    std::fs::write(&der, ecdsa_raw_to_der(&std::fs::read(&raw).unwrap())).unwrap();
    let ecpub = st.path("ec.pub");
    run("openssl", &["pkey", "-in", s(&ec), "-pubout", "-out", s(&ecpub)]).expect_ok();
    let v = run(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            s(&ecpub),
            "-signature",
            s(&der),
            s(&data),
        ],
    );
    assert!(v.ok, "openssl ECDSA: {} {}", v.stdout, v.stderr);
}

/// PKCS#11 ECDSA signatures are r||s; openssl wants the DER SEQUENCE of two INTEGERs.
fn ecdsa_raw_to_der(raw: &[u8]) -> Vec<u8> {
    let (r, s) = raw.split_at(raw.len() / 2);
    let int = |v: &[u8]| {
        let mut v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
        if v.first().is_some_and(|b| b & 0x80 != 0) || v.is_empty() {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    };
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

#[test]
fn restart_keeps_keys_and_auto_activates() {
    let mut st = Standalone::new();
    st.keys(&["gen", "--type", "ec:p256", "--label", "survivor"])
        .expect_ok();
    st.member.stop();
    st.member.spawn();
    // No owner secret given: the partition came back by itself.
    let list = st.member.admin(&["partition", "list"]).expect_ok();
    assert!(
        list.stdout
            .lines()
            .any(|l| l.starts_with("myPart") && l.contains("yes")),
        "{}",
        list.stdout
    );
    let data = st.path("d");
    std::fs::write(&data, b"x").unwrap();
    st.keys(&[
        "sign",
        "--label",
        "survivor",
        "--mech",
        "ECDSA-SHA256",
        "--in",
        s(&data),
        "--out",
        s(&st.path("sig")),
    ])
    .expect_ok();

    // With auto-activation off, a restart leaves the partition inactive until
    // its owner activates it again.
    st.member
        .admin(&["hsm", "login", "--so-secret", s(&st.so_secret)])
        .expect_ok();
    st.member
        .admin(&[
            "partition",
            "change-policy",
            "--partition",
            "myPart",
            "--policy",
            "23",
            "--value",
            "0",
        ])
        .expect_ok();
    st.member.kill9();
    st.member.spawn();
    st.keys(&["list"]).expect_err("not activated");
    st.member
        .admin(&[
            "partition",
            "activate",
            "--partition",
            "myPart",
            "--owner-secret",
            s(&st.owner_secret),
        ])
        .expect_ok();
    st.keys(&[
        "sign",
        "--label",
        "survivor",
        "--mech",
        "ECDSA-SHA256",
        "--in",
        s(&data),
        "--out",
        s(&st.path("sig2")),
    ])
    .expect_ok();
}

#[test]
fn kill9_during_a_write_stream_loses_no_acknowledged_write() {
    use hahsm_proto::client::{Request, Response};
    use hahsm_token::{ck, AttrValue, Mechanism, Template};
    let mut st = Standalone::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let acknowledged = rt.block_on(async {
        let conn = st.connect().await;
        let mut acked = Vec::new();
        let pid = st.member.pid().unwrap();
        for i in 0..400 {
            if i == 60 {
                // Kill from outside while requests are in flight.
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(30));
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                });
            }
            let template = Template::new()
                .with(ck::CKA_TOKEN, AttrValue::Bool(true))
                .with(ck::CKA_VALUE_LEN, AttrValue::Ulong(32))
                .with(ck::CKA_LABEL, AttrValue::Bytes(format!("w{i}").into_bytes()));
            let req = Request::GenerateKey {
                partition: st.partition.clone(),
                mechanism: Mechanism::new(ck::CKM_AES_KEY_GEN),
                template,
                op_id: hahsm_client::connection::new_op_id(),
            };
            match conn.call(req).await {
                Ok(Response::Object(_)) => acked.push(format!("w{i}")),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => break,
            }
        }
        acked
    });
    assert!(
        acknowledged.len() >= 60,
        "the stream should have run before the kill: {}",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() < 400,
        "the kill should have interrupted the stream"
    );
    st.member.kill9();
    st.member.spawn();
    let list = st.keys(&["list"]).expect_ok().stdout;
    for label in &acknowledged {
        assert!(
            list.split_whitespace().any(|w| w == label),
            "acknowledged key {label} lost after kill -9\n{list}"
        );
    }
}

#[test]
fn refusals_unregistered_client_wrong_pin_partition_and_lockout() {
    let st = Standalone::new();
    // An unregistered client certificate.
    let other_conf = st.path("other/client.toml");
    hahsm(
        Some(&other_conf),
        &["client", "create-cert", "--name", "intruder"],
    )
    .expect_ok();
    hahsm(
        Some(&other_conf),
        &[
            "client",
            "add-server",
            "--name",
            "testhsm",
            "--address",
            &st.member.address,
            "--fingerprint",
            &st.member.fingerprint(),
        ],
    )
    .expect_ok();
    hahsm(Some(&other_conf), &["client", "verify"]).expect_err("not registered");
    assert!(
        st.member.log().contains("refused client certificate"),
        "refusal not logged:\n{}",
        st.member.log()
    );

    // A server pinned to another certificate: the client refuses the server.
    let bogus = st.path("bogus.pem");
    let (cert, _) = hahsm_link::generate_self_signed("bogus", &[]).unwrap();
    std::fs::write(&bogus, cert).unwrap();
    hahsm(
        Some(&st.conf),
        &[
            "client",
            "add-server",
            "--name",
            "testhsm",
            "--address",
            &st.member.address,
            "--cert",
            s(&bogus),
        ],
    )
    .expect_ok();
    hahsm(Some(&st.conf), &["client", "verify"]).expect_err("fingerprint");
    hahsm(
        Some(&st.conf),
        &[
            "client",
            "add-server",
            "--name",
            "testhsm",
            "--address",
            &st.member.address,
            "--fingerprint",
            &st.member.fingerprint(),
        ],
    )
    .expect_ok();

    // A partition that exists but is not assigned to this client.
    st.member
        .admin(&[
            "partition",
            "create",
            "--partition",
            "other",
            "--owner-secret",
            s(&st.owner_secret),
            "--pin",
            "0000-other",
        ])
        .expect_ok();
    hahsm_env(
        Some(&st.conf),
        &["keys", "list"],
        &[("HAHSM_PIN", "0000-other"), ("HAHSM_PARTITION", "other")],
    )
    .expect_err("not assigned to client 'app1'");
    assert!(
        st.member.log().contains("partition not assigned"),
        "refusal not logged"
    );

    // Wrong PINs count toward the lockout policy (15), then even the right PIN is refused.
    st.member
        .admin(&[
            "partition",
            "change-policy",
            "--partition",
            "myPart",
            "--policy",
            "max-failed-logins",
            "--value",
            "3",
        ])
        .expect_ok();
    let wrong = |pin: &str| {
        hahsm_env(
            Some(&st.conf),
            &["keys", "list"],
            &[("HAHSM_PIN", pin), ("HAHSM_PARTITION", "myPart")],
        )
    };
    wrong("bad-pin-1").expect_err("incorrect PIN (2 attempts left");
    wrong("bad-pin-2").expect_err("incorrect PIN (1 attempts left");
    wrong("bad-pin-3").expect_err("locked");
    wrong(&st.pin).expect_err("locked");
    // The partition owner clears the lockout by setting a new PIN.
    st.member
        .admin(&[
            "partition",
            "change-pin",
            "--partition",
            "myPart",
            "--owner-secret",
            s(&st.owner_secret),
            "--new-pin",
            &st.pin,
        ])
        .expect_ok();
    st.keys(&["list"]).expect_ok();
    assert!(!st.member.log().contains(&st.pin), "a PIN reached the log");
}

#[test]
fn a_tampered_store_is_detected_and_not_served() {
    let mut st = Standalone::new();
    st.keys(&["gen", "--type", "aes:256", "--label", "a"]).expect_ok();
    st.keys(&["gen", "--type", "aes:256", "--label", "b"]).expect_ok();
    st.member.stop();
    let db = st.member.data_dir().join("hahsm.db");
    let backup = std::fs::read(&db).unwrap();

    // 1. One byte of an object's sealed record flipped.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        let blob: Vec<u8> = c
            .query_row("SELECT sealed FROM objects LIMIT 1", [], |r| r.get(0))
            .unwrap();
        let mut flipped = blob.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 1;
        c.execute(
            "UPDATE objects SET sealed = ?1 WHERE sealed = ?2",
            rusqlite::params![flipped, blob],
        )
        .unwrap();
    }
    st.member.spawn();
    assert!(
        st.member.log().contains("integrity check failed"),
        "tamper not reported:\n{}",
        st.member.log()
    );
    st.keys(&["list"]).expect_err("not activated");
    st.member.stop();

    // 2. A whole object row deleted behind the daemon's back.
    std::fs::write(&db, &backup).unwrap();
    let _ = std::fs::remove_file(db.with_extension("db-wal"));
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        assert_eq!(
            c.execute(
                "DELETE FROM objects WHERE rowid = (SELECT min(rowid) FROM objects)",
                []
            )
            .unwrap(),
            1
        );
    }
    let log_before = st.member.log().len();
    st.member.spawn();
    assert!(
        st.member.log()[log_before..].contains("removed or rolled back"),
        "deletion not detected:\n{}",
        st.member.log()
    );
    st.member.stop();

    // 3. Pages overwritten: the daemon refuses to start on a corrupt store.
    std::fs::write(&db, &backup).unwrap();
    let mut bytes = backup.clone();
    let len = bytes.len();
    for b in &mut bytes[len / 2..(len / 2 + 4096).min(len)] {
        *b = 0x55;
    }
    std::fs::write(&db, bytes).unwrap();
    let (code, stderr) = st.member.spawn_expect_exit();
    assert_ne!(code, Some(0));
    assert!(
        stderr.to_lowercase().contains("corrupt"),
        "corruption not reported: {stderr}"
    );

    // The untouched store still serves.
    std::fs::write(&db, &backup).unwrap();
    st.member.spawn();
    st.keys(&["show", "--label", "a"]).expect_ok();
}

#[test]
fn malformed_frames_and_stalled_handshakes_do_not_hurt_the_member() {
    use std::io::Write;
    let st = Standalone::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = st.client_config();
        let identity = hahsm_link::load_identity(&config.cert, &config.key).unwrap();
        let pinned = hahsm_link::Fingerprint::parse(&config.servers[0].fingerprint).unwrap();
        let tls = hahsm_link::client_config(identity, pinned).unwrap();
        let t = std::time::Duration::from_secs(3);

        // Garbage instead of a hello, then garbage instead of a request.
        let mut c = hahsm_link::connect(&st.member.address, tls.clone(), t, t)
            .await
            .unwrap();
        hahsm_link::write_frame(&mut c, &[0xff; 64]).await.unwrap();
        let answer = hahsm_link::read_frame(&mut c, 1 << 20).await;
        assert!(matches!(answer, Ok(Some(_)) | Ok(None) | Err(_)));

        let conn = st.connect().await;
        drop(conn);
        let mut c = hahsm_link::connect(&st.member.address, tls.clone(), t, t)
            .await
            .unwrap();
        let hello = hahsm_proto::client::Hello {
            protocol_version: hahsm_proto::PROTOCOL_VERSION,
            client_software: "t".into(),
        };
        hahsm_link::write_frame(&mut c, &hahsm_proto::encode(&hello))
            .await
            .unwrap();
        hahsm_link::read_frame(&mut c, 1 << 20).await.unwrap().unwrap();
        hahsm_link::write_frame(&mut c, &[0x07, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        let frame = hahsm_link::read_frame(&mut c, 1 << 20)
            .await
            .unwrap()
            .expect("an error frame");
        let resp: hahsm_proto::client::ResponseFrame = hahsm_proto::decode(&frame).unwrap();
        let err = resp.result.expect_err("malformed request is refused");
        assert_eq!(err.code, hahsm_token::ck::CKR_ARGUMENTS_BAD);

        // A frame header announcing more than the limit.
        let mut c = hahsm_link::connect(&st.member.address, tls.clone(), t, t)
            .await
            .unwrap();
        hahsm_link::write_frame(&mut c, &hahsm_proto::encode(&hello))
            .await
            .unwrap();
        hahsm_link::read_frame(&mut c, 1 << 20).await.unwrap().unwrap();
        use tokio::io::AsyncWriteExt;
        c.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        c.flush().await.unwrap();
        let frame = hahsm_link::read_frame(&mut c, 1 << 20)
            .await
            .unwrap()
            .expect("an error frame");
        let resp: hahsm_proto::client::ResponseFrame = hahsm_proto::decode(&frame).unwrap();
        let err = resp.result.unwrap_err();
        assert!(err.message.contains("exceeds the limit"), "{err:?}");
    });

    // A truncated TLS handshake, and a client that connects and says nothing.
    let mut half = std::net::TcpStream::connect(&st.member.address).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    drop(half);
    let _silent = std::net::TcpStream::connect(&st.member.address).unwrap();

    // The member still serves a well-behaved client, and is still running.
    st.keys(&["gen", "--type", "aes:128", "--label", "after"])
        .expect_ok();
    st.keys(&["show", "--label", "after"]).expect_ok();
    assert!(!st.member.log().contains("panicked"), "{}", st.member.log());
}

#[test]
fn bad_templates_and_mechanisms_get_exact_errors() {
    use hahsm_proto::client::Request;
    use hahsm_token::{ck, AttrValue, Mechanism, Template};
    let st = Standalone::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = st.connect().await;
        let code = |r: Result<hahsm_proto::client::Response, hahsm_client::ClientError>| r.unwrap_err().ckr();
        let gen = |mech: u64, t: Template| Request::GenerateKey {
            partition: st.partition.clone(),
            mechanism: Mechanism::new(mech),
            template: t,
            op_id: hahsm_client::connection::new_op_id(),
        };
        let aes = Template::new().with(ck::CKA_VALUE_LEN, AttrValue::Ulong(32));
        assert_eq!(code(conn.call(gen(0x8000_1234, aes.clone())).await), ck::CKR_MECHANISM_INVALID);
        assert_eq!(
            code(conn.call(gen(ck::CKM_AES_KEY_GEN, aes.clone().with(ck::CKA_CLASS, AttrValue::Ulong(ck::CKO_PUBLIC_KEY)))).await),
            ck::CKR_TEMPLATE_INCONSISTENT
        );
        assert_eq!(code(conn.call(gen(ck::CKM_AES_KEY_GEN, Template::new())).await), ck::CKR_TEMPLATE_INCOMPLETE);
        assert_eq!(
            code(conn.call(gen(ck::CKM_AES_KEY_GEN, aes.clone().with(0x7fff_0001, AttrValue::Bytes(vec![1])))).await),
            ck::CKR_ATTRIBUTE_TYPE_INVALID
        );
        assert_eq!(
            code(conn.call(gen(ck::CKM_AES_KEY_GEN, aes.clone().with(ck::CKA_VALUE_LEN, AttrValue::Ulong(7)))).await),
            ck::CKR_KEY_SIZE_RANGE
        );
        assert_eq!(
            code(conn.call(gen(ck::CKM_AES_KEY_GEN, aes.clone().with(ck::CKA_LOCAL, AttrValue::Bool(true)))).await),
            ck::CKR_ATTRIBUTE_READ_ONLY
        );
        // Reading the value of a sensitive key is refused attribute by attribute.
        let key = match conn.call(gen(ck::CKM_AES_KEY_GEN, aes.clone().with(ck::CKA_TOKEN, AttrValue::Bool(true)))).await.unwrap() {
            hahsm_proto::client::Response::Object(o) => o,
            other => panic!("{other:?}"),
        };
        let attrs = conn
            .call(Request::GetAttributes { partition: st.partition.clone(), object: key, types: vec![ck::CKA_VALUE, ck::CKA_LABEL] })
            .await
            .unwrap();
        assert!(matches!(attrs, hahsm_proto::client::Response::Attributes(ref a) if a[0].1 == hahsm_proto::client::AttrResult::Sensitive));
        // Clearing CKA_SENSITIVE is refused.
        let clear = Request::SetAttributes {
            partition: st.partition.clone(),
            object: key,
            template: Template::new().with(ck::CKA_SENSITIVE, AttrValue::Bool(false)),
            op_id: hahsm_client::connection::new_op_id(),
        };
        assert_eq!(code(conn.call(clear).await), ck::CKR_ATTRIBUTE_READ_ONLY);
    });
}

#[test]
fn the_same_op_id_makes_one_key_only() {
    use hahsm_proto::client::{Request, Response};
    use hahsm_token::{ck, AttrValue, Mechanism, Template};
    let st = Standalone::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = st.connect().await;
        let op_id = hahsm_client::connection::new_op_id();
        let req = || Request::GenerateKey {
            partition: st.partition.clone(),
            mechanism: Mechanism::new(ck::CKM_AES_KEY_GEN),
            template: Template::new()
                .with(ck::CKA_TOKEN, AttrValue::Bool(true))
                .with(ck::CKA_VALUE_LEN, AttrValue::Ulong(16))
                .with(ck::CKA_LABEL, AttrValue::Bytes(b"once".to_vec())),
            op_id,
        };
        let first = conn.call(req()).await.unwrap();
        let second = conn.call(req()).await.unwrap();
        assert!(matches!(first, Response::Object(_)));
        assert_eq!(first, second, "a retried keygen must return the first key");
    });
    let list = st.keys(&["list"]).expect_ok().stdout;
    assert_eq!(list.matches(" once ").count(), 1, "{list}");
}

/// The HA slot resends a write with its operation id when the first answer
/// was lost or the member could not get it confirmed; the member that already
/// applied it must answer as the first time, not with another shape.
#[test]
fn a_retried_rename_or_destroy_answers_done() {
    use hahsm_proto::client::{Request, Response};
    use hahsm_token::{ck, AttrValue, Mechanism, Template};
    let st = Standalone::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = st.connect().await;
        let made = conn
            .call(Request::GenerateKey {
                partition: st.partition.clone(),
                mechanism: Mechanism::new(ck::CKM_AES_KEY_GEN),
                template: Template::new()
                    .with(ck::CKA_TOKEN, AttrValue::Bool(true))
                    .with(ck::CKA_VALUE_LEN, AttrValue::Ulong(16)),
                op_id: hahsm_client::connection::new_op_id(),
            })
            .await
            .unwrap();
        let Response::Object(key) = made else {
            panic!("{made:?}")
        };
        let op_id = hahsm_client::connection::new_op_id();
        let rename = || Request::SetAttributes {
            partition: st.partition.clone(),
            object: key,
            template: Template::new().with(ck::CKA_LABEL, AttrValue::Bytes(b"renamed".to_vec())),
            op_id,
        };
        assert_eq!(conn.call(rename()).await.unwrap(), Response::Done);
        assert_eq!(
            conn.call(rename()).await.unwrap(),
            Response::Done,
            "retried rename"
        );
        let op_id = hahsm_client::connection::new_op_id();
        let destroy = || Request::DestroyObject {
            partition: st.partition.clone(),
            object: key,
            op_id,
        };
        assert_eq!(conn.call(destroy()).await.unwrap(), Response::Done);
        assert_eq!(
            conn.call(destroy()).await.unwrap(),
            Response::Done,
            "retried destroy"
        );
    });
}

#[test]
fn factory_reset_erases_and_init_needs_fresh_setup() {
    let st = Standalone::new();
    st.keys(&["gen", "--type", "aes:128", "--label", "gone"])
        .expect_ok();
    st.member.admin(&["hsm", "factory-reset"]).expect_err("--force");
    st.member.admin(&["hsm", "factory-reset", "--force"]).expect_ok();
    st.member.admin(&["partition", "list"]).expect_ok();
    st.member
        .admin(&["hsm", "login", "--so-secret", s(&st.so_secret)])
        .expect_err("not initialized");
    st.keys(&["list"]).expect_err("not registered");
    let m: &Member = &st.member;
    m.admin(&[
        "hsm",
        "init",
        "--label",
        "again",
        "--so-secret",
        s(&st.so_secret),
        "--domain-secret",
        s(&st.domain_secret),
    ])
    .expect_ok();
}

#[test]
fn a_full_disk_refuses_writes_clearly_and_loses_nothing() {
    use hahsm_proto::client::{Request, Response};
    use hahsm_token::{ck, AttrValue, Mechanism, Template};
    let work = tempfile::tempdir().unwrap();
    let Some(_disk) = hahsm_it::Tmpfs::mount(&work.path().join("testhsm/data"), "1536k") else {
        // Mounting needs root; CI runs as root, so this only skips on a developer's machine.
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    };
    let mut st = Standalone::build(work, "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (acked, refusal) = rt.block_on(async {
        let conn = st.connect().await;
        let mut acked = Vec::new();
        for i in 0..20_000 {
            let template = Template::new()
                .with(ck::CKA_TOKEN, AttrValue::Bool(true))
                .with(ck::CKA_VALUE_LEN, AttrValue::Ulong(32))
                .with(
                    ck::CKA_LABEL,
                    AttrValue::Bytes(format!("fill-{i}-{}", "x".repeat(200)).into_bytes()),
                );
            let req = Request::GenerateKey {
                partition: st.partition.clone(),
                mechanism: Mechanism::new(ck::CKM_AES_KEY_GEN),
                template,
                op_id: hahsm_client::connection::new_op_id(),
            };
            match conn.call(req).await {
                Ok(Response::Object(o)) => acked.push(o),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => return (acked, e),
            }
        }
        panic!("a 1.5 MiB disk never filled up");
    });
    eprintln!("{} keys fitted; then: {refusal}", acked.len());
    assert_eq!(
        refusal.ckr(),
        ck::CKR_DEVICE_MEMORY,
        "a full disk must say so: {refusal}"
    );
    assert!(acked.len() > 10, "some writes should fit: {}", acked.len());
    // The member is still up and still signs with what it has.
    st.keys(&["list"]).expect_ok();
    // A crash on the full disk, then a restart: every acknowledged key is back.
    st.member.kill9();
    st.member.spawn();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = st.connect().await;
        let found = match conn
            .call(Request::FindObjects {
                partition: st.partition.clone(),
                template: Template::new(),
                limit: 100_000,
                read: 0,
            })
            .await
            .unwrap()
        {
            Response::Objects(o) => o,
            other => panic!("{other:?}"),
        };
        for id in &acked {
            assert!(found.contains(id), "acknowledged key {id} lost on a full disk");
        }
    });
}

#[test]
fn a_client_that_never_finishes_its_handshake_is_dropped_at_the_deadline() {
    use std::io::Read;
    let st = Standalone::with_limits("handshake_timeout_ms = 400");
    let mut stalled = std::net::TcpStream::connect(&st.member.address).unwrap();
    stalled
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    // The member closes the connection: read returns EOF (or a reset), not a timeout.
    match stalled.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("unexpected {n} bytes from the member"),
        Err(e) => assert_ne!(
            e.kind(),
            std::io::ErrorKind::WouldBlock,
            "the member kept a stalled handshake open"
        ),
    }
    let waited = started.elapsed();
    assert!(
        waited < std::time::Duration::from_secs(4),
        "closed only after {waited:?}"
    );
    st.keys(&["list"]).expect_ok();
}

/// A partition row whose policies or extra data (the SO PIN verifier) do not
/// decode is a damaged store: the member refuses to start, naming it, instead
/// of reading default policies or "no SO PIN" from it. Before, it started with
/// the default policies (auto-activation off, lockout at 10, key separation
/// off) and without the SO PIN.
#[test]
fn a_member_refuses_to_start_on_a_partition_row_it_cannot_decode() {
    for column in ["policies", "extra"] {
        let mut st = Standalone::new();
        st.member.stop();
        let db = st.member.data_dir().join("hahsm.db");
        {
            let c = rusqlite::Connection::open(&db).unwrap();
            let changed = c
                .execute(
                    &format!("UPDATE partitions SET {column} = ?1 WHERE name = 'myPart'"),
                    rusqlite::params![vec![0xffu8; 3]],
                )
                .unwrap();
            assert_eq!(changed, 1);
        }
        let (code, log) = st.member.spawn_expect_exit();
        assert!(
            code.is_some_and(|c| c != 0),
            "{column}: the member started on a damaged row ({code:?})"
        );
        assert!(
            log.contains("partition 'myPart'")
                && log.contains("does not decode")
                && log.contains("refusing to start"),
            "{column}: the error does not name the damage:\n{log}"
        );
    }
}

/// The same for the HSM's own policies: a damaged record must not relax
/// them to the defaults.
#[test]
fn a_member_refuses_to_start_on_hsm_policies_it_cannot_decode() {
    let mut st = Standalone::new();
    st.member.stop();
    let db = st.member.data_dir().join("hahsm.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        let changed = c
            .execute(
                "UPDATE meta SET value = ?1 WHERE key = 'hsm.policies'",
                rusqlite::params![vec![0xffu8; 3]],
            )
            .unwrap();
        assert_eq!(changed, 1, "the HSM policies are recorded");
    }
    let (code, log) = st.member.spawn_expect_exit();
    assert!(
        code.is_some_and(|c| c != 0),
        "the member started on damaged HSM policies ({code:?})"
    );
    assert!(
        log.contains("the HSM") && log.contains("does not decode") && log.contains("refusing to start"),
        "the error does not name the damage:\n{log}"
    );
}
