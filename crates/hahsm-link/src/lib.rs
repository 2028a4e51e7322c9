//! The mutual-TLS link of hahsm, shared by client→member and member→member connections (the role
//! Luna's NTLS plays).
//!
//! This crate knows certificates, fingerprints and byte frames, and nothing about messages (those
//! are encoded by `hahsm-proto`). It provides:
//!
//! - **identities**: [`generate_self_signed`] ECDSA P-256 certificates, [`load_identity`] from PEM
//!   files, and [`write_private_file`] to store a key with mode 0600;
//! - **trust by pinning**, with no certificate authorities: a client accepts a server only by its
//!   certificate's SHA-256 [`Fingerprint`] ([`client_config`]); a server accepts a client only if
//!   a [`ClientAuthorizer`] says its fingerprint is registered ([`server_config`]). Both sides
//!   check that the peer holds the key of the certificate it presents. TLS 1.3 only, aws-lc-rs,
//!   no session resumption;
//! - **link setup under deadlines**: [`connect`] and [`accept`] bound the TCP connect, the
//!   handshake and the server's greeting, because a stopped peer still completes TCP connects
//!   through the kernel backlog and then never answers;
//! - **frames**: [`read_frame`] and [`write_frame`] move `u32` big-endian length-prefixed byte
//!   strings, refusing oversized lengths before allocating; a [`SharedWriter`] lets many tasks
//!   send on one connection without a writer-task hand-off per frame.
//!
//! ```no_run
//! # async fn demo() -> hahsm_link::LinkResult<()> {
//! use std::time::Duration;
//! use hahsm_link::*;
//!
//! let (cert, key) = generate_self_signed("client-1", &[])?;
//! let identity = Identity::from_pem(&cert, &key)?;
//! let pinned = Fingerprint::parse("sha256 Fingerprint=AB:CD:…")?; // the server's, out of band
//! let config = client_config(identity, pinned)?;
//! let mut link = connect("10.0.0.5:1792", config, Duration::from_secs(2), Duration::from_secs(2)).await?;
//! write_frame(&mut link, b"request").await?;
//! let reply = read_frame(&mut link, 1 << 20).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod error;
mod fingerprint;
mod frame;
mod identity;
mod net;
mod shared_writer;

pub use config::{client_config, server_config, ClientAuthorizer};
pub use error::{LinkError, LinkResult};
pub use fingerprint::Fingerprint;
pub use frame::{read_frame, write_frame, write_frames, FRAME_HEADER_LEN};
pub use identity::{
    cert_from_pem, generate_self_signed, load_cert_pem, load_identity, write_private_file, Identity,
};
pub use net::{accept, connect, keep_alive, ClientStream, ServerStream, LINK_GREETING};
pub use shared_writer::SharedWriter;

/// Whether the link's TLS runs on AWS-LC's FIPS module: the build with the
/// `fips` feature, where rustls offers only its FIPS-approved suites and
/// key exchanges (`rustls::crypto::aws_lc_rs::default_provider`).
pub fn fips_mode() -> bool {
    aws_lc_rs::try_fips_mode().is_ok()
}

/// Re-exported so callers can name the configuration and stream types without depending on these
/// crates directly.
pub use rustls;
pub use tokio_rustls;
pub use tokio_rustls::TlsAcceptor;
