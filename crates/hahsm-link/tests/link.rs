//! Link tests over real loopback TCP sockets.

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hahsm_link::*;
use tokio::net::{TcpListener, TcpStream};

/// Generous deadline for steps that are expected to succeed.
const T: Duration = Duration::from_secs(5);
const MAX: u32 = 1 << 20;

fn identity(name: &str) -> Identity {
    let (cert, key) = generate_self_signed(name, &["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("generate a certificate");
    Identity::from_pem(&cert, &key).expect("parse the generated certificate")
}

/// An in-memory registry whose contents tests can change between handshakes.
#[derive(Default)]
struct Registry(Mutex<HashSet<Fingerprint>>);

impl Registry {
    fn with(fps: &[Fingerprint]) -> Arc<Registry> {
        let registry = Registry::default();
        registry.0.lock().unwrap().extend(fps.iter().cloned());
        Arc::new(registry)
    }
}

impl ClientAuthorizer for Registry {
    fn is_registered(&self, fp: &Fingerprint) -> bool {
        self.0.lock().unwrap().contains(fp)
    }
}

struct Server {
    addr: String,
    fingerprint: Fingerprint,
    listener: TcpListener,
    acceptor: TlsAcceptor,
}

async fn server(authorizer: Arc<dyn ClientAuthorizer>) -> Server {
    let id = identity("member-a");
    let fingerprint = id.fingerprint();
    let acceptor = TlsAcceptor::from(server_config(id, authorizer).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    Server {
        addr,
        fingerprint,
        listener,
        acceptor,
    }
}

/// Accepts one connection and runs the link handshake on it in a task.
fn accept_one(
    server: Server,
    handshake_timeout: Duration,
) -> tokio::task::JoinHandle<LinkResult<(ServerStream, Fingerprint)>> {
    tokio::spawn(async move {
        let (tcp, _) = server.listener.accept().await.unwrap();
        accept(tcp, &server.acceptor, handshake_timeout).await
    })
}

#[tokio::test]
async fn registered_client_connects_and_exchanges_frames_both_ways() {
    let client = identity("client-1");
    let client_fp = client.fingerprint();
    let server = server(Registry::with(std::slice::from_ref(&client_fp))).await;
    let (addr, pinned) = (server.addr.clone(), server.fingerprint.clone());

    let server_task = tokio::spawn(async move {
        let (tcp, _) = server.listener.accept().await.unwrap();
        let (mut link, fp) = accept(tcp, &server.acceptor, T).await.unwrap();
        let request = read_frame(&mut link, MAX).await.unwrap().unwrap();
        let mut reply = b"echo:".to_vec();
        reply.extend_from_slice(&request);
        write_frame(&mut link, &reply).await.unwrap();
        write_frame(&mut link, &vec![0xAB; 100_000]).await.unwrap();
        let end = read_frame(&mut link, MAX).await;
        (fp, end)
    });

    let config = client_config(client, pinned).unwrap();
    let mut link = connect(&addr, config, T, T).await.unwrap();
    assert!(link.get_ref().0.nodelay().unwrap(), "TCP_NODELAY is not set");
    write_frame(&mut link, b"ping").await.unwrap();
    assert_eq!(read_frame(&mut link, MAX).await.unwrap().unwrap(), b"echo:ping");
    assert_eq!(
        read_frame(&mut link, MAX).await.unwrap().unwrap(),
        vec![0xAB; 100_000]
    );
    tokio::io::AsyncWriteExt::shutdown(&mut link).await.unwrap();

    let (seen_fp, end) = server_task.await.unwrap();
    assert_eq!(seen_fp, client_fp, "accept reported the wrong client fingerprint");
    assert!(
        matches!(end, Ok(None)),
        "close_notify should read as a clean end of link, got {end:?}"
    );
}

#[tokio::test]
async fn unregistered_client_is_refused_with_client_not_registered() {
    let registered = identity("client-registered");
    let stranger = identity("client-stranger");
    let server = server(Registry::with(&[registered.fingerprint()])).await;
    let (addr, pinned) = (server.addr.clone(), server.fingerprint.clone());
    let server_task = accept_one(server, T);

    let config = client_config(stranger, pinned).unwrap();
    let err = connect(&addr, config, T, T).await.unwrap_err();
    assert!(
        matches!(err, LinkError::ClientNotRegistered),
        "expected ClientNotRegistered, got {err:?}"
    );
    assert!(err.to_string().contains("hahsm appliance client register"));

    let server_err = server_task.await.unwrap().unwrap_err();
    assert!(
        matches!(server_err, LinkError::ClientRefused),
        "expected ClientRefused on the server, got {server_err:?}"
    );
}

/// Session resumption would skip the client certificate, so an unregistered client could resume
/// its old session. Every handshake must ask the authorizer again.
#[tokio::test]
async fn unregistering_a_client_refuses_its_next_connection() {
    let client = identity("client-1");
    let registry = Registry::with(&[client.fingerprint()]);
    let server = server(registry.clone()).await;
    let (addr, pinned) = (server.addr.clone(), server.fingerprint.clone());
    let config = client_config(client.clone(), pinned).unwrap();

    let server_task = tokio::spawn(async move {
        let mut results = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = server.listener.accept().await.unwrap();
            let result = accept(tcp, &server.acceptor, T).await;
            if let Ok((mut link, _)) = result {
                // Keep the first link usable until the client is done with it.
                let _ = read_frame(&mut link, MAX).await;
                results.push(Ok(()));
            } else {
                results.push(result.map(drop));
            }
        }
        results
    });

    let mut first = connect(&addr, config.clone(), T, T).await.unwrap();
    write_frame(&mut first, b"hello").await.unwrap();
    tokio::io::AsyncWriteExt::shutdown(&mut first).await.unwrap();

    registry.0.lock().unwrap().clear();
    let err = connect(&addr, config, T, T).await.unwrap_err();
    assert!(
        matches!(err, LinkError::ClientNotRegistered),
        "expected ClientNotRegistered after unregistering, got {err:?}"
    );
    let results = server_task.await.unwrap();
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(LinkError::ClientRefused)));
}

#[tokio::test]
async fn client_pinned_to_another_servers_fingerprint_gets_pin_mismatch() {
    let client = identity("client-1");
    let server = server(Registry::with(&[client.fingerprint()])).await;
    let other_server = identity("member-b").fingerprint();
    let (addr, actual) = (server.addr.clone(), server.fingerprint.clone());
    let server_task = accept_one(server, T);

    let config = client_config(client, other_server.clone()).unwrap();
    match connect(&addr, config, T, T).await {
        Err(LinkError::PinMismatch {
            expected,
            actual: got,
        }) => {
            assert_eq!(expected, other_server.to_string());
            assert_eq!(got, actual.to_string());
        }
        other => panic!("expected PinMismatch, got {other:?}"),
    }
    let server_err = server_task.await.unwrap().unwrap_err();
    assert!(matches!(server_err, LinkError::Tls(_)), "{server_err:?}");
}

/// A SIGSTOPped member: the kernel completes the TCP connect, nobody ever answers.
#[tokio::test]
async fn connect_times_out_when_the_server_accepts_tcp_but_never_speaks_tls() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let holder = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(socket);
    });

    let config = client_config(identity("client-1"), identity("member-a").fingerprint()).unwrap();
    let handshake_timeout = Duration::from_millis(300);
    let started = Instant::now();
    let result = connect(&addr, config, T, handshake_timeout).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(LinkError::HandshakeTimeout)),
        "expected HandshakeTimeout, got {result:?}"
    );
    assert!(elapsed >= handshake_timeout, "gave up early: {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(2),
        "deadline not enforced: {elapsed:?}"
    );
    holder.abort();
}

#[tokio::test]
async fn accept_times_out_when_the_client_sends_nothing() {
    let server = server(Registry::with(&[])).await;
    let addr = server.addr.clone();
    let handshake_timeout = Duration::from_millis(300);
    let started = Instant::now();
    let server_task = accept_one(server, handshake_timeout);

    let silent = TcpStream::connect(&addr).await.unwrap();
    let result = server_task.await.unwrap();
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(LinkError::HandshakeTimeout)),
        "expected HandshakeTimeout, got {:?}",
        result.map(|(_, fp)| fp)
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "deadline not enforced: {elapsed:?}"
    );
    drop(silent);
}

#[tokio::test]
async fn connect_to_a_closed_port_is_an_io_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let config = client_config(identity("client-1"), identity("member-a").fingerprint()).unwrap();
    match connect(&addr, config, T, T).await {
        Err(LinkError::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
            assert!(e.to_string().contains(&addr), "{e}");
        }
        other => panic!("expected Io(ConnectionRefused), got {other:?}"),
    }
}

#[tokio::test]
async fn truncated_frame_over_tls_is_an_error() {
    let client = identity("client-1");
    let server = server(Registry::with(&[client.fingerprint()])).await;
    let (addr, pinned) = (server.addr.clone(), server.fingerprint.clone());
    let server_task = tokio::spawn(async move {
        let (tcp, _) = server.listener.accept().await.unwrap();
        let (mut link, _) = accept(tcp, &server.acceptor, T).await.unwrap();
        // A header announcing 10 bytes, then only 3, then a clean TLS close.
        tokio::io::AsyncWriteExt::write_all(&mut link, &[0, 0, 0, 10, 1, 2, 3])
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::shutdown(&mut link).await.unwrap();
    });

    let mut link = connect(&addr, client_config(client, pinned).unwrap(), T, T)
        .await
        .unwrap();
    match read_frame(&mut link, MAX).await {
        Err(LinkError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
        other => panic!("expected Io(UnexpectedEof), got {other:?}"),
    }
    server_task.await.unwrap();
}

#[test]
fn fingerprint_parses_openssl_output() {
    let (cert_pem, key_pem) = generate_self_signed("openssl-check", &["10.0.0.5".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    std::fs::write(&cert_path, &cert_pem).unwrap();

    let out = Command::new("/usr/bin/openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&cert_path)
        .output()
        .expect("run /usr/bin/openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();

    let der = load_cert_pem(&cert_path).unwrap();
    let expected = Fingerprint::of_der(&der);
    assert_eq!(Fingerprint::parse(&printed).unwrap(), expected, "{printed}");
    assert_eq!(Fingerprint::parse(&expected.to_string()).unwrap(), expected);
    assert!(
        printed.trim().ends_with(&expected.to_string()),
        "{printed} vs {expected}"
    );
    assert_eq!(
        Identity::from_pem(&cert_pem, &key_pem).unwrap().fingerprint(),
        expected
    );
}

#[test]
fn generated_certificate_has_cn_sans_and_ten_year_validity() {
    let (cert_pem, _) = generate_self_signed(
        "member-a",
        &["member-a.example".to_owned(), "10.0.0.5".to_owned()],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    std::fs::write(&cert_path, &cert_pem).unwrap();
    let out = Command::new("/usr/bin/openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert_path)
        .output()
        .expect("run /usr/bin/openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CN = member-a"), "{text}");
    assert!(text.contains("DNS:member-a.example"), "{text}");
    assert!(text.contains("IP Address:10.0.0.5"), "{text}");
    assert!(text.contains("prime256v1"), "{text}");
    let ok_in_9y = Command::new("/usr/bin/openssl")
        .args([
            "x509",
            "-noout",
            "-checkend",
            &(9 * 366 * 86_400).to_string(),
            "-in",
        ])
        .arg(&cert_path)
        .output()
        .unwrap()
        .status;
    assert!(ok_in_9y.success(), "certificate expires within 9 years");
    let ok_in_11y = Command::new("/usr/bin/openssl")
        .args([
            "x509",
            "-noout",
            "-checkend",
            &(11 * 366 * 86_400).to_string(),
            "-in",
        ])
        .arg(&cert_path)
        .status()
        .unwrap();
    assert!(!ok_in_11y.success(), "certificate valid for more than 11 years");
}

#[test]
fn load_identity_round_trips_and_rejects_a_foreign_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = generate_self_signed("a", &[]).unwrap();
    let (_, key_b) = generate_self_signed("b", &[]).unwrap();
    let cert_path = dir.path().join("a.crt");
    let key_path = dir.path().join("a.key");
    let foreign_key_path = dir.path().join("b.key");
    std::fs::write(&cert_path, &cert_a).unwrap();
    write_private_file(&key_path, key_a.as_bytes()).unwrap();
    write_private_file(&foreign_key_path, key_b.as_bytes()).unwrap();

    let id = load_identity(&cert_path, &key_path).unwrap();
    assert_eq!(id.cert_der, cert_from_pem(&cert_a).unwrap());

    match load_identity(&cert_path, &foreign_key_path) {
        Err(LinkError::BadCertificate(msg)) => assert!(msg.contains("does not belong"), "{msg}"),
        other => panic!("expected BadCertificate, got {other:?}"),
    }
    match load_identity(&dir.path().join("missing.crt"), &key_path) {
        Err(LinkError::Io(e)) => assert!(e.to_string().contains("missing.crt"), "{e}"),
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(matches!(cert_from_pem(&key_a), Err(LinkError::BadCertificate(_))));
}

#[cfg(unix)]
#[test]
fn write_private_file_is_0600_and_replaces_existing_contents() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("member.key");
    std::fs::write(&path, b"old contents that are longer than the new ones").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();

    write_private_file(&path, b"new").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode is {mode:o}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != "member.key")
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
