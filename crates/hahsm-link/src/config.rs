//! TLS configurations: TLS 1.3 only, aws-lc-rs, mutual authentication by fingerprint.
//!
//! There are no certificate authorities. The client pins the server's certificate fingerprint;
//! the server asks a [`ClientAuthorizer`] whether the client's fingerprint is registered. Both
//! sides still check the TLS 1.3 `CertificateVerify` signature, which proves the peer holds the
//! private key of the certificate it presented (a certificate alone is public).
//!
//! Validity dates are not checked: the pin (or the registration) is the trust decision, and it is
//! revoked by changing the pin or unregistering the client.
//!
//! Session resumption is disabled on both sides: a resumed TLS 1.3 session skips the client
//! certificate, so it would keep a client connected after it was unregistered.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::NoServerSessionStorage;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::{Fingerprint, Identity, LinkError, LinkResult};

/// Decides whether a client certificate may connect; the daemon implements it over its registry.
///
/// It is called once per handshake, inside the TLS state machine, so it must be cheap and must
/// not block (an in-memory set lookup).
pub trait ClientAuthorizer: Send + Sync + 'static {
    /// Whether the certificate with this fingerprint is registered.
    fn is_registered(&self, fp: &Fingerprint) -> bool;
}

/// The crypto provider of every link: aws-lc-rs, passed explicitly so no process-global default
/// provider needs installing.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Server configuration: TLS 1.3 only, presents `identity`, requires a client certificate, and
/// accepts it only if its `CertificateVerify` signature is valid and
/// `authorizer.is_registered(fingerprint)`.
///
/// A refusal logs `warn!(fingerprint, "refused client certificate: not registered")` and fails the
/// handshake with an `access_denied` alert, which [`connect`](crate::connect) reports as
/// [`LinkError::ClientNotRegistered`].
pub fn server_config(
    identity: Identity,
    authorizer: Arc<dyn ClientAuthorizer>,
) -> LinkResult<Arc<ServerConfig>> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LinkError::Config(format!("TLS 1.3 is not available: {e}")))?
        .with_client_cert_verifier(Arc::new(RegisteredClientVerifier {
            authorizer,
            algorithms: provider.signature_verification_algorithms,
        }));
    let config = builder
        .with_single_cert(vec![identity.cert_der], identity.key_der)
        .map_err(|e| LinkError::BadCertificate(format!("cannot use the server identity: {e}")))?;
    Ok(Arc::new(without_resumption_server(config)))
}

/// Client configuration: TLS 1.3 only, presents `identity`, and accepts the server only if its
/// certificate's SHA-256 fingerprint equals `pinned` and its `CertificateVerify` signature is
/// valid. A different certificate fails the handshake with [`LinkError::PinMismatch`].
pub fn client_config(identity: Identity, pinned: Fingerprint) -> LinkResult<Arc<ClientConfig>> {
    let provider = provider();
    let config = client_builder(&provider, pinned)?
        .with_client_auth_cert(vec![identity.cert_der], identity.key_der)
        .map_err(|e| LinkError::BadCertificate(format!("cannot use the client identity: {e}")))?;
    Ok(Arc::new(without_resumption_client(config)))
}

type ClientBuilderWantsCert = rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>;

fn client_builder(provider: &Arc<CryptoProvider>, pinned: Fingerprint) -> LinkResult<ClientBuilderWantsCert> {
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LinkError::Config(format!("TLS 1.3 is not available: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier {
            pinned,
            algorithms: provider.signature_verification_algorithms,
        })))
}

fn without_resumption_server(mut config: ServerConfig) -> ServerConfig {
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config
}

fn without_resumption_client(mut config: ClientConfig) -> ClientConfig {
    config.resumption = Resumption::disabled();
    config
}

/// Client configuration presenting whatever `resolver` returns, pinning `pinned`. Only tests use
/// it, to present a certificate with a key that does not belong to it.
#[cfg(test)]
pub(crate) fn client_config_with_resolver(
    resolver: Arc<dyn rustls::client::ResolvesClientCert>,
    pinned: Fingerprint,
) -> LinkResult<Arc<ClientConfig>> {
    let config = client_builder(&provider(), pinned)?.with_client_cert_resolver(resolver);
    Ok(Arc::new(without_resumption_client(config)))
}

/// Server configuration presenting whatever `resolver` returns. Only tests use it.
#[cfg(test)]
pub(crate) fn server_config_with_resolver(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    authorizer: Arc<dyn ClientAuthorizer>,
) -> LinkResult<Arc<ServerConfig>> {
    let provider = provider();
    let config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LinkError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(RegisteredClientVerifier {
            authorizer,
            algorithms: provider.signature_verification_algorithms,
        }))
        .with_cert_resolver(resolver);
    Ok(Arc::new(without_resumption_server(config)))
}

/// What the pin verifier puts inside the rustls error, so that `connect` can report both
/// fingerprints.
#[derive(Debug)]
pub(crate) struct PinMismatchDetail {
    pub(crate) expected: Fingerprint,
    pub(crate) actual: Fingerprint,
}

impl fmt::Display for PinMismatchDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server certificate fingerprint {} is not the pinned {}",
            self.actual, self.expected
        )
    }
}

impl std::error::Error for PinMismatchDetail {}

/// Accepts exactly the server certificate whose fingerprint is pinned.
#[derive(Debug)]
struct PinnedServerVerifier {
    pinned: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = Fingerprint::of_der(end_entity);
        if actual == self.pinned {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatchDetail {
                    expected: self.pinned.clone(),
                    actual,
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Accepts a client certificate only if the authorizer knows its fingerprint.
struct RegisteredClientVerifier {
    authorizer: Arc<dyn ClientAuthorizer>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for RegisteredClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisteredClientVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for RegisteredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // rustls calls verify_tls13_signature next, on the CertificateVerify message, which proves
        // the client holds this certificate's key; a registered but stolen certificate fails there.
        let fp = Fingerprint::of_der(end_entity);
        if self.authorizer.is_registered(&fp) {
            Ok(ClientCertVerified::assertion())
        } else {
            tracing::warn!(fingerprint = %fp, "refused client certificate: not registered");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The configurations offer TLS 1.3 only, so a TLS 1.2 signature is never asked for.
fn tls12_refused() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is not supported on hahsm links".to_owned())
}

#[cfg(test)]
mod tests {
    //! A certificate is public: these tests present a peer's real certificate signed with another
    //! key, and check that the `CertificateVerify` signature check catches it.

    use std::time::Duration;

    use rustls::sign::CertifiedKey;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::{accept, connect, generate_self_signed};

    const T: Duration = Duration::from_secs(5);

    fn identity(name: &str) -> Identity {
        let (cert, key) = generate_self_signed(name, &["localhost".to_owned()]).unwrap();
        Identity::from_pem(&cert, &key).unwrap()
    }

    /// `cert_of`'s certificate with `key_of`'s private key.
    fn forged(cert_of: &Identity, key_of: &Identity) -> Arc<CertifiedKey> {
        let key = provider()
            .key_provider
            .load_private_key(key_of.key_der.clone_key())
            .unwrap();
        Arc::new(CertifiedKey::new(vec![cert_of.cert_der.clone()], key))
    }

    #[derive(Debug)]
    struct Always(Arc<CertifiedKey>);

    impl rustls::client::ResolvesClientCert for Always {
        fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }

    impl rustls::server::ResolvesServerCert for Always {
        fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    struct Only(Fingerprint);

    impl ClientAuthorizer for Only {
        fn is_registered(&self, fp: &Fingerprint) -> bool {
            *fp == self.0
        }
    }

    #[tokio::test]
    async fn client_presenting_a_registered_certificate_without_its_key_is_refused() {
        let server = identity("server");
        let registered = identity("registered-client");
        let thief = identity("thief");
        let pinned = server.fingerprint();
        let acceptor =
            TlsAcceptor::from(server_config(server, Arc::new(Only(registered.fingerprint()))).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(tcp, &acceptor, T).await
        });

        let config =
            client_config_with_resolver(Arc::new(Always(forged(&registered, &thief))), pinned).unwrap();
        let client = connect(&addr, config, T, T).await;
        assert!(client.is_err(), "a forged client got a link");
        match server_task.await.unwrap() {
            Err(LinkError::Tls(msg)) => assert!(msg.to_lowercase().contains("signature"), "{msg}"),
            other => panic!("the server accepted or failed oddly: {other:?}"),
        }
    }

    #[tokio::test]
    async fn server_presenting_the_pinned_certificate_without_its_key_is_refused() {
        let real_server = identity("server");
        let impostor = identity("impostor");
        let client = identity("client");
        let acceptor = TlsAcceptor::from(
            server_config_with_resolver(
                Arc::new(Always(forged(&real_server, &impostor))),
                Arc::new(Only(client.fingerprint())),
            )
            .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            accept(tcp, &acceptor, T).await
        });

        let config = client_config(client, real_server.fingerprint()).unwrap();
        match connect(&addr, config, T, T).await {
            Err(LinkError::Tls(msg)) => assert!(msg.to_lowercase().contains("signature"), "{msg}"),
            other => panic!("expected a signature failure, got {other:?}"),
        }
        assert!(server_task.await.unwrap().is_err());
    }
}
