//! The safe half of every `C_*` function: plain Rust over decoded arguments,
//! returning `Result`. The `ffi` module's shims check pointers, call these,
//! and turn the error into a `CK_RV` in one place.
//!
//! Section numbers refer to the PKCS#11 3.0 base specification.
//!
//! By the specification's chapters: `tokens` (general, slots and tokens),
//! `sessions`, `objects`, `operations` (encrypt to verify), `keys` (key
//! management and random); `common` what they share. The helpers one chapter
//! lends another are `pub(super)`; the functions `ffi` calls are `pub`.
mod common;
mod keys;
mod objects;
mod operations;
mod sessions;
mod tokens;

pub use common::{padded, Cx, SlotCx, LIBRARY_DESCRIPTION, MANUFACTURER};
pub use keys::*;
pub use objects::*;
pub use operations::*;
pub use sessions::*;
pub use tokens::*;
