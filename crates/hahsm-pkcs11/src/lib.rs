//! `libhahsm_pkcs11.so`, the PKCS#11 3.0 module applications load to use hahsm.
//!
//! ```text
//!   application ──C_Sign──▶ ffi (pointer checks, catch_unwind)
//!                             │
//!                             ▼
//!                           api (safe: sessions, operations, the buffer convention)
//!                             │  Request::Sign
//!                             ▼
//!                           module (runtime, connections, slots, handle tables)
//!                             │  hahsm-client, mutual TLS
//!                             ▼
//!                           hahsmd member
//! ```
//!
//! - [`ffi`] holds every `extern "C"` function; [`ptr`] every read and write of
//!   application memory. They are the only modules with `unsafe`, and each
//!   block carries a `// SAFETY:` comment.
//! - [`decode`] turns templates and mechanism parameters into token types with
//!   safe code only; the fuzz target calls it directly.
//! - [`api`] implements the functions over decoded arguments and returns
//!   [`Error`], which [`Error::rv`] maps to a `CK_RV` in one place.
//! - [`module`] owns the tokio runtime (started by `C_Initialize`, stopped by
//!   `C_Finalize`), one multiplexed connection per member, the slots (one per
//!   assigned partition, with ids derived from the partition serial) and the
//!   handle tables (integers, never reused).
//!
//! The client config is found through `HAHSM_CONF` or `~/.hahsm/client.toml`;
//! the module logs to the file named by `HAHSM_PKCS11_LOG`, or to stderr.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod api;
pub mod decode;
mod error;
pub mod ffi;
pub(crate) mod log;
pub mod module;
pub mod ptr;
pub mod session;

pub use error::{delivers, Error, Result};
