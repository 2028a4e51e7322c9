//! Pure token logic for hahsm: objects, attributes, mechanisms, policies, the
//! attribute rules of PKCS#11, hybrid logical clocks and the operation-log model.
//!
//! Nothing in this crate does I/O, keeps time or draws randomness: callers pass
//! those in. That keeps every rule testable with plain function calls, and lets
//! the daemon, the store and (later) the replication engine share one model.
#![forbid(unsafe_code)]

pub mod attr;
pub mod error;
pub mod hlc;
pub mod mechanism;
pub mod object;
pub mod oplog;
pub mod ouid;
pub mod policy;
pub mod rules;

pub use attr::{AttrType, AttrValue, Template};
pub use error::{TokenError, TokenResult};
pub use hlc::{Hlc, MemberId};
pub use mechanism::{MechParams, Mechanism};
pub use ouid::Ouid;

/// PKCS#11 constants, re-exported so that every crate names them the same way.
pub use cryptoki_sys as ck;
