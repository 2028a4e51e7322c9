//! One client request against the member: the PKCS#11 semantics of each
//! operation, on top of the pure rules in `hahsm_token::rules` and the crypto in
//! `hahsm_crypto`.
//!
//! `handler` holds the connection's state, the checks every request passes
//! and the dispatch; `logins`, `objects`, `keys` and `operations` the
//! requests by kind; `templates` what new objects are made of, without I/O.
mod handler;
mod keys;
mod logins;
mod objects;
mod operations;
mod templates;

pub use handler::{Connection, KeyOps};
pub use templates::imported_object;
