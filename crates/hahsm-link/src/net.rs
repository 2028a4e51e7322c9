//! Connecting and accepting links, each under a deadline.
//!
//! A link is established in three steps, all bounded in time:
//!
//! 1. TCP connect (client), bounded by `connect_timeout`;
//! 2. the TLS 1.3 handshake, and
//! 3. the link greeting: the server sends [`LINK_GREETING`] once it has verified the client's
//!    certificate; steps 2 and 3 share `handshake_timeout`.
//!
//! The greeting exists because in TLS 1.3 the client finishes its handshake *before* the server
//! has looked at the client certificate. Without it, `connect` would succeed for an unregistered
//! client and the refusal would only show up on the first read. With it, `connect` returns only
//! once the server has accepted this client, and a refusal is reported as
//! [`LinkError::ClientNotRegistered`].
//!
//! The deadlines matter: a SIGSTOPped member still completes TCP connects through the kernel's
//! listen backlog, and then never answers the handshake.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::{AlertDescription, CertificateError};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::PinMismatchDetail;
use crate::error::rustls_error;
use crate::{Fingerprint, LinkError, LinkResult};

/// Client side of a link.
pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;
/// Server side of a link.
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

/// What the server sends first on an accepted link: the link protocol's name and version.
pub const LINK_GREETING: [u8; 4] = *b"HSL1";

/// The SNI name sent when `addr` has no usable host part. Pinning ignores names anyway.
const FALLBACK_SERVER_NAME: &str = "hahsm.invalid";

/// How long a refusing server keeps draining the socket after its alert, at most, so that the
/// client reads the alert instead of a TCP reset.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// Opens a link to `addr` (`host:port`): TCP connect within `connect_timeout`, then the TLS
/// handshake and the server's greeting within `handshake_timeout`. Sets `TCP_NODELAY`.
///
/// Errors of note: [`LinkError::ConnectTimeout`], [`LinkError::HandshakeTimeout`] (the peer
/// accepted TCP but did not answer, e.g. it is stopped), [`LinkError::PinMismatch`] and
/// [`LinkError::ClientNotRegistered`].
pub async fn connect(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
) -> LinkResult<ClientStream> {
    let tcp = match timeout(connect_timeout, TcpStream::connect(addr)).await {
        Err(_elapsed) => return Err(LinkError::ConnectTimeout),
        Ok(result) => result
            .map_err(|e| LinkError::Io(io::Error::new(e.kind(), format!("cannot connect to {addr}: {e}"))))?,
    };
    tcp.set_nodelay(true)?;

    let deadline = Instant::now() + handshake_timeout;
    let connector = TlsConnector::from(config);
    let mut stream = match timeout_at(deadline, connector.connect(server_name_for(addr), tcp)).await {
        Err(_elapsed) => return Err(LinkError::HandshakeTimeout),
        Ok(result) => result.map_err(client_error)?,
    };

    let mut greeting = [0u8; LINK_GREETING.len()];
    match timeout_at(deadline, stream.read_exact(&mut greeting)).await {
        Err(_elapsed) => Err(LinkError::HandshakeTimeout),
        Ok(Err(e)) => Err(client_error(e)),
        Ok(Ok(_)) if greeting == LINK_GREETING => Ok(stream),
        Ok(Ok(_)) => Err(LinkError::Tls(format!(
            "the server at {addr} did not send the hahsm link greeting (got {:?}); \
             is it a hahsm member of a compatible version?",
            String::from_utf8_lossy(&greeting)
        ))),
    }
}

/// Turns TCP keepalive on for a link's socket: after `idle` without traffic
/// the kernel sends a probe, then one each `idle`, and ends the connection
/// after three unanswered. A stateful firewall or NAT that forgets idle flows
/// sees traffic often enough to keep this one, and a connection whose peer
/// vanished is found dead instead of holding the next request until its
/// deadline.
pub fn keep_alive(tcp: &TcpStream, idle: Duration) -> io::Result<()> {
    let idle = idle.max(Duration::from_secs(1));
    let probes = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(idle)
        .with_retries(3);
    socket2::SockRef::from(tcp).set_tcp_keepalive(&probes)
}

/// Runs the server side of a link on an accepted TCP connection: the TLS handshake (which checks
/// the client's registration) and the greeting, within `handshake_timeout`. Sets `TCP_NODELAY`.
///
/// Returns the stream and the fingerprint of the client's certificate. A client that is not
/// registered gives [`LinkError::ClientRefused`]; one that sends nothing gives
/// [`LinkError::HandshakeTimeout`].
pub async fn accept(
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
    handshake_timeout: Duration,
) -> LinkResult<(ServerStream, Fingerprint)> {
    let deadline = Instant::now() + handshake_timeout;
    tcp.set_nodelay(true)?;

    let mut stream = match timeout_at(deadline, acceptor.accept(tcp).into_fallible()).await {
        Err(_elapsed) => return Err(LinkError::HandshakeTimeout),
        Ok(Err((err, mut tcp))) => {
            linger_after_failure(&mut tcp, deadline).await;
            return Err(server_error(err));
        }
        Ok(Ok(stream)) => stream,
    };

    let fingerprint = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|cert| Fingerprint::of_der(cert))
        // The server configurations make client certificates mandatory.
        .ok_or_else(|| LinkError::Tls("the client presented no certificate".to_owned()))?;

    let greet = async {
        stream.write_all(&LINK_GREETING).await?;
        stream.flush().await
    };
    match timeout_at(deadline, greet).await {
        Err(_elapsed) => Err(LinkError::HandshakeTimeout),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(())) => Ok((stream, fingerprint)),
    }
}

/// After a failed server handshake (whose alert tokio-rustls has already tried to send), close
/// our side and read whatever the client still sends, briefly. Closing a socket with unread data
/// sends a TCP reset, which can make the client lose the alert that says why it was refused.
async fn linger_after_failure(tcp: &mut TcpStream, deadline: Instant) {
    let until = deadline.min(Instant::now() + REFUSAL_LINGER);
    let _ = timeout_at(until, async {
        let _ = tcp.shutdown().await;
        let mut sink = [0u8; 1024];
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// The server name for SNI: the host part of `addr` when it is a DNS name or an IP address.
fn server_name_for(addr: &str) -> ServerName<'static> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).unwrap_or_else(|_| {
        // A constant, syntactically valid DNS name: the conversion cannot fail.
        ServerName::try_from(FALLBACK_SERVER_NAME).expect("the fallback server name is a valid DNS name")
    })
}

/// Maps a client-side handshake or greeting error.
fn client_error(err: io::Error) -> LinkError {
    if let Some(tls) = rustls_error(&err) {
        match tls {
            rustls::Error::AlertReceived(
                AlertDescription::AccessDenied
                | AlertDescription::CertificateUnknown
                | AlertDescription::BadCertificate,
            ) => return LinkError::ClientNotRegistered,
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                if let Some(detail) = other.0.downcast_ref::<PinMismatchDetail>() {
                    return LinkError::PinMismatch {
                        expected: detail.expected.to_string(),
                        actual: detail.actual.to_string(),
                    };
                }
            }
            _ => {}
        }
    }
    handshake_io_error(err)
}

/// Maps a server-side handshake error.
fn server_error(err: io::Error) -> LinkError {
    match rustls_error(&err) {
        Some(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)) => {
            LinkError::ClientRefused
        }
        Some(rustls::Error::AlertReceived(
            alert @ (AlertDescription::CertificateUnknown | AlertDescription::BadCertificate),
        )) => LinkError::Tls(format!(
            "the client refused this server's certificate ({alert:?}); \
             its pinned fingerprint probably names another certificate"
        )),
        _ => handshake_io_error(err),
    }
}

/// Role-neutral mapping during link setup: an EOF means the peer hung up.
fn handshake_io_error(err: io::Error) -> LinkError {
    if err.kind() == io::ErrorKind::UnexpectedEof && rustls_error(&err).is_none() {
        LinkError::Closed
    } else {
        err.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_from_addresses() {
        let name = |a: &str| server_name_for(a).to_str().into_owned();
        assert_eq!(name("127.0.0.1:9000"), "127.0.0.1");
        assert_eq!(name("[::1]:9000"), "::1");
        assert_eq!(name("member-a.example:9000"), "member-a.example");
        assert_eq!(name("bad name:9000"), FALLBACK_SERVER_NAME);
    }
}
