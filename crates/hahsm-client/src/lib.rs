//! The client side of hahsm, shared by the `hahsm` CLI and the PKCS#11 module:
//! the client configuration, a multiplexed connection to a member, a blocking
//! one-request-at-a-time connection for the module's hot path, the admin
//! socket client, and the secret files.
#![forbid(unsafe_code)]

pub mod admin;
pub mod blocking;
pub mod config;
pub mod connection;
pub mod secrets;

pub use blocking::BlockingConnection;
pub use config::{ClientConfig, ServerEntry};
pub use connection::{ClientError, MemberConnection};
pub use hahsm_link::fips_mode;
