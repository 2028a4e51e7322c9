//! Hybrid logical clocks: physical milliseconds plus a logical counter.
//!
//! Members' wall clocks drift, so ordering by wall time alone would let a member
//! with a fast clock win every conflict forever. An HLC never runs backwards, and
//! ties are broken by the origin member id, which gives every member the same
//! total order over operations.
use serde::{Deserialize, Serialize};

/// A member's id inside a group (its serial number).
pub type MemberId = u64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    pub wall_ms: u64,
    pub logical: u32,
}

impl Hlc {
    /// The next timestamp for a local event, given the current wall time.
    pub fn tick(self, now_ms: u64) -> Hlc {
        if now_ms > self.wall_ms {
            Hlc {
                wall_ms: now_ms,
                logical: 0,
            }
        } else {
            Hlc {
                wall_ms: self.wall_ms,
                logical: self.logical.saturating_add(1),
            }
        }
    }

    /// The next timestamp after receiving `remote`, given the current wall time.
    pub fn observe(self, remote: Hlc, now_ms: u64) -> Hlc {
        let wall = now_ms.max(self.wall_ms).max(remote.wall_ms);
        let logical = if wall == self.wall_ms && wall == remote.wall_ms {
            self.logical.max(remote.logical).saturating_add(1)
        } else if wall == self.wall_ms {
            self.logical.saturating_add(1)
        } else if wall == remote.wall_ms {
            remote.logical.saturating_add(1)
        } else {
            0
        };
        Hlc {
            wall_ms: wall,
            logical,
        }
    }

    /// Like `observe`, but refuses a remote stamp more than `max_ahead_ms`
    /// ahead of this member's wall clock (it comes from a clock that runs
    /// fast): adopting it would drag this member's clock, and every later
    /// stamp of the group, that far into the future. Returns how far ahead
    /// it was.
    pub fn observe_bounded(self, remote: Hlc, now_ms: u64, max_ahead_ms: u64) -> Result<Hlc, u64> {
        let ahead = remote.wall_ms.saturating_sub(now_ms);
        if ahead > max_ahead_ms {
            return Err(ahead);
        }
        Ok(self.observe(remote, now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_never_goes_backwards_when_the_wall_clock_does() {
        let a = Hlc {
            wall_ms: 1000,
            logical: 3,
        };
        let b = a.tick(500);
        assert!(b > a);
        assert!(a.tick(2000) > b);
    }

    #[test]
    fn observe_moves_past_the_remote_stamp() {
        let local = Hlc {
            wall_ms: 10,
            logical: 0,
        };
        let remote = Hlc {
            wall_ms: 50,
            logical: 7,
        };
        let next = local.observe(remote, 20);
        assert!(next > remote && next > local);
    }

    #[test]
    fn a_stamp_further_ahead_than_the_bound_is_refused_and_moves_nothing() {
        let local = Hlc {
            wall_ms: 1_000,
            logical: 0,
        };
        let fast = Hlc {
            wall_ms: 6_000,
            logical: 0,
        };
        assert_eq!(local.observe_bounded(fast, 1_000, 500), Err(5_000));
        // Within the bound it is adopted as `observe` would.
        let near = Hlc {
            wall_ms: 1_400,
            logical: 2,
        };
        assert_eq!(
            local.observe_bounded(near, 1_000, 500),
            Ok(local.observe(near, 1_000))
        );
    }
}
