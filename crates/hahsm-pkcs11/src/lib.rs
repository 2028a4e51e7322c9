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
//! - [`module`] holds the state between `C_Initialize` and `C_Finalize` and
//!   what spans its parts: `runtime` (the tokio runtime and the blocking
//!   hand-off), `pool` (the connections per slot and member, logged in as the
//!   token is), `ha` (an HA slot's members: rotation, failover, probing,
//!   membership), `slots` (one per assigned partition and per HA group, with
//!   ids from the serials), `sessions` and `handles` (integers, never reused).
//!   Each depends only on those listed before it.
//!
//! The client config is found through `HAHSM_CONF` or `~/.hahsm/client.toml`;
//! the module logs to the file named by `HAHSM_PKCS11_LOG`, or to stderr.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod api;
pub mod decode;
mod error;
pub mod ffi;
mod ha;
mod handles;
pub(crate) mod log;
pub mod module;
mod pool;
pub mod ptr;
mod runtime;
pub mod session;
mod sessions;
mod slots;
mod sync;

pub use error::{delivers, Error, Result};
