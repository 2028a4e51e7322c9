//! HA groups on the member: the replicator that keeps every member's copy of
//! a partition converged with no client involved, and what it needs.
//!
//! The merge rules are the pure engine's (`hahsm_replica`); this module moves
//! operations between members and decides when:
//! - after every local write, to every reachable peer, in parallel, waiting at
//!   most the replication timeout (the write concern);
//! - on every heartbeat (every second), in both directions, for whatever the
//!   peers' version vectors say they lack (anti-entropy), which is also how a
//!   member that was away catches up by itself.
//!
//! The files, from the pure to the wired: `keys` (dual-control keys and join
//! proofs), `detector` (failure detection, quorum and grace, without I/O),
//! `view` (the group as this member sees it, without I/O), `halog` (the HA
//! log), `group` (the running group: pushes, heartbeats, gates), `admin`
//! (the operator's group commands), `peer` (the peer listener and handler).
//! See `docs/replication.md` for the protocol as a specification.
mod admin;
mod detector;
pub mod group;
mod halog;
pub mod keys;
mod peer;
mod view;

pub use admin::{
    add_member, create_group, group_of, prepare, refresh_policies, remove_member, replicate_clear,
    resume_activated, resume_all, resume_group, show, stop_all, stop_group, synchronize,
};
pub use detector::{PeerHealth, DOWN_AFTER, HEARTBEAT_INTERVAL};
pub use group::Group;
pub use halog::HaLog;
pub use keys::domain_key;
pub use peer::serve_peers;
