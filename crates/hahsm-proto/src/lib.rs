//! The hahsm wire protocol: the messages a client exchanges with a member over
//! the mutual-TLS link, and the operator's messages over the local admin socket.
//!
//! Messages are serialized with postcard and carried in length-delimited frames
//! (see `hahsm-link`). This crate does no I/O: `encode` and `decode` are plain
//! functions, so the decoder can be fuzzed directly.
//!
//! Every client frame carries a request id, so that many requests share one
//! connection and complete out of order, and a deadline, after which the member
//! gives up on the request.
#![forbid(unsafe_code)]

pub mod admin;
pub mod backup_file;
pub mod client;
pub mod halog;
pub mod journal;
pub mod peer;
mod secret;
pub mod utc;

pub use secret::Secret;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Bumped on any incompatible change; the handshake refuses a mismatch.
pub const PROTOCOL_VERSION: u16 = 4;

/// The default frame size limit, in bytes. Members and clients make it configurable.
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;

/// An error as it crosses the wire: a PKCS#11 return code and a message for
/// humans. Internal details stay in the member's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    pub code: u64,
    pub message: String,
}

impl From<hahsm_token::TokenError> for WireError {
    fn from(e: hahsm_token::TokenError) -> Self {
        WireError {
            code: e.ckr(),
            message: e.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct DecodeError(String);

pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // postcard only fails on types it cannot represent (maps with non-string
    // keys are fine); our message types are all representable.
    postcard::to_allocvec(msg).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    postcard::from_bytes(bytes).map_err(|e| DecodeError(e.to_string()))
}
