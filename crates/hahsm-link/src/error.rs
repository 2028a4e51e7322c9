//! The one error type of this crate.

use std::io;

/// Everything that can go wrong on a link.
///
/// Peer behaviour (a refusal, a pin mismatch, a timeout, a closed link) is kept apart from local
/// misconfiguration (`Config`, `BadCertificate`) so callers can decide what to retry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// An operating-system I/O error, including an EOF inside a frame (`UnexpectedEof`).
    #[error("link I/O error: {0}")]
    Io(io::Error),

    /// A TLS failure that has no more specific variant.
    #[error("TLS error: {0}")]
    Tls(String),

    /// The server's certificate is not the one the client pinned.
    #[error(
        "the server's certificate fingerprint {actual} does not match the pinned fingerprint \
         {expected}; if the server's certificate was replaced on purpose, update the pin"
    )]
    PinMismatch {
        /// The pinned fingerprint (what the client expected).
        expected: String,
        /// The fingerprint of the certificate the server presented.
        actual: String,
    },

    /// Client side: the server refused our client certificate.
    #[error(
        "the server refused this client's certificate: it is not registered there \
         (run `hahsm appliance client register` on the server)"
    )]
    ClientNotRegistered,

    /// Server side: a client presented a certificate that is not registered here and was refused
    /// (its fingerprint is in the `warn` log line written at the refusal).
    #[error("refused a client whose certificate is not registered here")]
    ClientRefused,

    /// The TLS handshake did not finish before its deadline.
    #[error(
        "the TLS handshake did not finish in time: the peer accepted the TCP connection but did \
         not answer (it may be stopped, hung or overloaded)"
    )]
    HandshakeTimeout,

    /// The TCP connection was not established before its deadline.
    #[error("the TCP connection was not established in time (the peer may be down or unreachable)")]
    ConnectTimeout,

    /// A frame header announced more bytes than the reader accepts.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The length announced by the frame header.
        len: u32,
        /// The reader's limit.
        max: u32,
    },

    /// A payload handed to [`write_frame`](crate::write_frame) does not fit a 32-bit length.
    #[error("payload of {len} bytes does not fit in one frame (at most 4 GiB - 1)")]
    PayloadTooLarge {
        /// The payload length.
        len: usize,
    },

    /// The peer closed the link (before the link greeting, or at a frame boundary without a TLS
    /// close_notify).
    #[error("the peer closed the link")]
    Closed,

    /// A certificate or private key could not be used.
    #[error("bad certificate or key: {0}")]
    BadCertificate(String),

    /// A fingerprint string could not be parsed.
    #[error("invalid certificate fingerprint: {0}")]
    InvalidFingerprint(String),

    /// The link could not be configured.
    #[error("link configuration error: {0}")]
    Config(String),
}

/// Result type of this crate.
pub type LinkResult<T> = Result<T, LinkError>;

impl From<io::Error> for LinkError {
    /// Role-neutral mapping: a TLS error carried inside an I/O error (as tokio-rustls reports
    /// them) becomes [`LinkError::Tls`]; anything else stays [`LinkError::Io`].
    fn from(err: io::Error) -> Self {
        match rustls_error(&err) {
            Some(tls) => LinkError::Tls(tls.to_string()),
            None => LinkError::Io(err),
        }
    }
}

/// The rustls error inside an I/O error returned by tokio-rustls, if there is one.
pub(crate) fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}
