//! An HA slot's members: `group` (the members and the rotation), `routing`
//! (requests over the members, with failover), `watch` (probing members out
//! of the rotation, following the group's membership). Nothing here knows
//! sessions or handles.
mod group;
pub mod routing;
pub mod watch;

pub(crate) use group::{same_fingerprint, HaGroup, HaMember};
