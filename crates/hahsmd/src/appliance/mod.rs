//! The member's state: HSM initialisation, the SO login, policies, partitions
//! and their activation, and the registry of clients.
//!
//! Key hierarchy (see SECURITY.md):
//! - each partition has a random 256-bit partition master key (PMK) that seals
//!   its objects, its PIN verifier and its op log;
//! - the PMK is stored wrapped under a key derived (HKDF-SHA256) from the
//!   partition-owner secret, so activation needs that secret;
//! - with auto-activation on, the PMK is also sealed under a host-local key file
//!   (`autoactivate.key`, mode 0600), so a restarted member comes back by itself;
//! - the domain secret is stored wrapped under a key derived from the SO secret.
//!
//! The files: `records` (the store's records and their decoding), `state`
//! (the `Appliance` and its start-up), `hsm`, `partitions` and `clients` (the
//! console's commands). Nothing here reaches into replication, PINs or
//! custody: they are above it.
mod clients;
mod hsm;
mod partitions;
mod records;
mod registry;
mod state;

pub use crate::pin_records::PinKind;
pub use records::{max_failed_logins, pin_ok, private_dir, PinPair, MAX_PIN_LEN, MIN_PIN_LEN, SECRET_LEN};
pub use registry::{ClientEntry, ClientRegistry};
pub use state::Appliance;
