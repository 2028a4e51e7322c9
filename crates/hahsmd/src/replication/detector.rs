//! The protocol's decisions, without I/O: the failure detector (when a
//! silent peer is down, when it has recovered, which attempts the HA log
//! names), the quorum and grace arithmetic of a write, and which peers a
//! member must wait for before it serves a login or a standby serves at all.
//! Every function takes the time as an argument, so the unit tests below
//! assert exact outcomes; `group.rs` calls them with the clock and the network.
use hahsm_proto::halog::HaEvent;
use hahsm_proto::peer::{GroupDef, ReplicaState, WriteConcern};
use hahsm_replica::VersionVector;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How often members heartbeat each other.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1000);
/// A member silent for this long is declared down.
pub const DOWN_AFTER: Duration = Duration::from_millis(2000);
/// While a peer that is not yet down fails to answer, it is probed this
/// often instead of every heartbeat interval, so that it is declared down
/// (and the alert raised) close to `DOWN_AFTER` after it went silent, not up
/// to a heartbeat interval later.
pub const SUSPECT_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// The shortest grace the slower peers get after the first confirms a write.
pub const MIN_GRACE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerHealth {
    /// Heard from within the failure-detection window, and caught up.
    Alive,
    /// Alive, but missing operations this member has (or missed a write deadline).
    Lagging,
    Down,
}

/// What this member knows of one peer.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub health: PeerHealth,
    pub last_seen: Option<Instant>,
    pub state: ReplicaState,
    pub recovery_attempts: u32,
    /// A write deadline was missed; cleared when the peer is caught up.
    pub missed_write: bool,
    /// The last call could not reach it (connect, I/O or time-out); cleared
    /// by its next answer. The quorum check counts it unreachable meanwhile,
    /// so a member cut off from its peers refuses writes before making them.
    pub link_failed: bool,
    /// The peer's clock against this member's, as last measured; kept while
    /// the peer is away (a clock off before an outage is off after it).
    pub clock: Option<ClockReading>,
    /// When this member sent the last heartbeat whose answer it has since
    /// caught up with: everything the peer held then is applied here. The
    /// quorum lease is counted from it (`lease`).
    pub caught_up_as_of: Option<Instant>,
}

/// One measurement of a peer's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockReading {
    /// The peer's wall clock minus this member's, in milliseconds.
    pub offset_ms: i64,
    /// Half the round trip: the measurement is right to within this.
    pub uncertainty_ms: u64,
    /// This member's wall clock minus its monotonic clock when it measured
    /// (`clock_anchor`): if its own wall clock jumps later, the anchor moves
    /// by as much, and `offset_now` corrects the reading for it.
    pub anchor_ms: i64,
}

/// A member's wall clock minus its monotonic clock (milliseconds since
/// `origin`), which stays put while the wall clock runs normally and moves
/// when it jumps or is stepped.
pub fn clock_anchor(wall_ms: u64, now: Instant, origin: Instant) -> i64 {
    wall_ms as i64 - now.saturating_duration_since(origin).as_millis() as i64
}

/// The offset of a peer's clock from a heartbeat: this member's wall clock
/// when it sent (`sent_wall_ms`), the round trip, and the wall clock the
/// peer's answer carries, taken as read half-way through the round trip.
pub fn measure_clock(
    sent_wall_ms: u64,
    round_trip: Duration,
    their_wall_ms: u64,
    anchor_ms: i64,
) -> ClockReading {
    let half = round_trip.as_millis() as u64 / 2;
    ClockReading {
        offset_ms: their_wall_ms as i64 - (sent_wall_ms + half) as i64,
        uncertainty_ms: half,
        anchor_ms,
    }
}

impl ClockReading {
    /// The offset now: the reading, less however far this member's own wall
    /// clock has jumped since (its anchor then and now).
    pub fn offset_now(&self, anchor_now: i64) -> i64 {
        self.offset_ms - (anchor_now - self.anchor_ms)
    }

    /// Whether the two clocks are certainly further apart than `max_ms`.
    pub fn beyond(&self, anchor_now: i64, max_ms: u64) -> bool {
        self.offset_now(anchor_now).unsigned_abs() > max_ms + self.uncertainty_ms
    }
}

impl Default for PeerStatus {
    fn default() -> Self {
        // A peer is presumed alive until it fails to answer: a member that
        // starts must not log every peer as dropped.
        PeerStatus {
            health: PeerHealth::Alive,
            last_seen: None,
            state: ReplicaState::default(),
            recovery_attempts: 0,
            missed_write: false,
            link_failed: false,
            clock: None,
            caught_up_as_of: None,
        }
    }
}

impl PeerStatus {
    /// The peer answered at `now` with `state`. A peer that was down has
    /// recovered (the attempt that reached it is counted), and is lagging
    /// until anti-entropy shows it caught up.
    pub fn answered(&mut self, state: ReplicaState, now: Instant) -> Option<HaEvent> {
        let mut event = None;
        if self.health == PeerHealth::Down {
            event = Some(HaEvent::Recovered(self.recovery_attempts + 1));
            self.recovery_attempts = 0;
            self.health = PeerHealth::Lagging;
        }
        self.last_seen = Some(now);
        self.link_failed = false;
        self.state = state;
        event
    }

    /// An exchange with the peer failed at `now`. It is declared down once
    /// silent for `DOWN_AFTER` (since it was last heard, or since this
    /// member started if never); once down, each failure is a failed
    /// recovery attempt, of which the HA log names the first three and then
    /// every tenth, so that an outage of a day does not fill the disk.
    pub fn failed(&mut self, member_started: Instant, now: Instant) -> Option<HaEvent> {
        let silent_since = self.last_seen.unwrap_or(member_started);
        match self.health {
            PeerHealth::Down => {
                self.recovery_attempts += 1;
                let n = self.recovery_attempts;
                (n <= 3 || n.is_multiple_of(10)).then_some(HaEvent::RecoveryFailed(n))
            }
            _ if now.saturating_duration_since(silent_since) >= DOWN_AFTER => {
                self.health = PeerHealth::Down;
                Some(HaEvent::Dropped)
            }
            _ => None,
        }
    }

    /// A push or pull showed whether the peer holds everything this member has.
    pub fn caught_up(&mut self, covered: bool) {
        if covered {
            self.missed_write = false;
            self.health = PeerHealth::Alive;
        } else {
            self.health = PeerHealth::Lagging;
        }
    }

    /// The peer did not confirm a write in time: it is not waited for again
    /// until anti-entropy has brought it back in step.
    pub fn missed_a_write(&mut self) {
        self.missed_write = true;
        if self.health == PeerHealth::Alive {
            self.health = PeerHealth::Lagging;
        }
    }

    /// Whether the peer's answers are recent enough to trust its health:
    /// a peer not heard from for twice `DOWN_AFTER` shows as down, even
    /// before the detector has declared it.
    pub fn fresh(&self, now: Instant) -> bool {
        self.last_seen
            .is_some_and(|t| now.saturating_duration_since(t) < DOWN_AFTER * 2)
    }

    /// A peer not yet down that has been silent for more than a heartbeat.
    pub fn suspect(&self, now: Instant) -> bool {
        self.health != PeerHealth::Down
            && self
                .last_seen
                .is_some_and(|t| now.saturating_duration_since(t) > HEARTBEAT_INTERVAL)
    }

    fn version_vector(&self) -> VersionVector {
        VersionVector(self.state.version_vector.iter().copied().collect())
    }
}

/// The peers' statuses as `Group` keeps them, by serial; a peer never heard
/// of has the default status.
pub type Peers = HashMap<u64, PeerStatus>;

fn status_of(peers: &Peers, serial: u64) -> PeerStatus {
    peers.get(&serial).cloned().unwrap_or_default()
}

/// How long the pause before the next heartbeat round: shorter while a peer
/// is suspect.
pub fn next_pause(peers: &Peers, others: &[u64], now: Instant) -> Duration {
    if others.iter().any(|s| status_of(peers, *s).suspect(now)) {
        SUSPECT_PROBE_INTERVAL
    } else {
        HEARTBEAT_INTERVAL
    }
}

/// The voting (non-standby) members of a group.
pub fn voters(def: &GroupDef) -> usize {
    def.members.iter().filter(|m| !m.standby).count()
}

/// Whether `holders` voting members (this one included) are a majority of `voters`.
pub fn is_majority(holders: usize, voters: usize) -> bool {
    holders * 2 > voters
}

/// The peers a write is pushed to: under `quorum` every peer not known to
/// be down, lagging ones included; under `all-reachable` only those in step.
pub fn write_targets(def: &GroupDef, me: u64, peers: &Peers) -> Vec<u64> {
    let quorum = def.write_concern == WriteConcern::Quorum;
    def.members
        .iter()
        .filter(|m| m.serial != me)
        .filter(|m| match status_of(peers, m.serial).health {
            PeerHealth::Alive => true,
            PeerHealth::Lagging => quorum,
            PeerHealth::Down => false,
        })
        .map(|m| m.serial)
        .collect()
}

/// Whether this member and the peers in `confirmed` are a majority of the
/// group's voters (a standby peer's confirmation does not count).
pub fn majority_holds(def: &GroupDef, me: u64, confirmed: &HashSet<u64>) -> bool {
    let holders = 1 + def
        .members
        .iter()
        .filter(|m| m.serial != me && !m.standby && confirmed.contains(&m.serial))
        .count();
    is_majority(holders, voters(def))
}

/// Once enough peers have confirmed a write (`first_after` after it was
/// pushed), the others get four times as long, at least `MIN_GRACE`: a
/// peer far slower than its siblings is a straggler, not waited for.
pub fn grace(first_after: Duration) -> Duration {
    (first_after * 4).max(MIN_GRACE)
}

/// Under `quorum`, a write may start only while a majority of the voters is
/// reachable: this member, and every voting peer neither down nor failing.
/// Returns the reachable and voting counts when it may not.
pub fn quorum_refusal(def: &GroupDef, me: u64, peers: &Peers) -> Option<(usize, usize)> {
    if def.write_concern != WriteConcern::Quorum {
        return None;
    }
    let reachable = 1 + def
        .members
        .iter()
        .filter(|m| {
            let s = status_of(peers, m.serial);
            m.serial != me && !m.standby && s.health != PeerHealth::Down && !s.link_failed
        })
        .count();
    let voters = voters(def);
    (!is_majority(reachable, voters)).then_some((reachable, voters))
}

/// A standby serves nothing while an active member is up (not known down).
pub fn standby_must_wait(def: &GroupDef, me: u64, peers: &Peers) -> bool {
    def.member(me).is_some_and(|m| m.standby)
        && def
            .members
            .iter()
            .any(|m| m.serial != me && !m.standby && status_of(peers, m.serial).health != PeerHealth::Down)
}

/// The peers this member must catch up with before it checks a PIN: every
/// peer not down that it has not heard from since it started, or that
/// reported operations this member has not applied.
pub fn catching_up_with(def: &GroupDef, me: u64, mine: &VersionVector, peers: &Peers) -> Vec<u64> {
    def.members
        .iter()
        .filter(|m| m.serial != me)
        .filter(|m| {
            let s = status_of(peers, m.serial);
            s.health != PeerHealth::Down && (s.last_seen.is_none() || !mine.covers(&s.version_vector()))
        })
        .map(|m| m.serial)
        .collect()
}

/// How far this member may compact its log: per origin, the least of what
/// it has applied and what each peer it still waits for reported. A peer is
/// waited for while it was heard from within the retention, or, never heard
/// from since this member started, while this member has run for less than
/// the retention. A peer away longer than that no longer holds the log back:
/// it catches up from a snapshot when it returns.
pub fn compaction_floor(
    def: &GroupDef,
    me: u64,
    mine: &VersionVector,
    peers: &Peers,
    started: Instant,
    now: Instant,
    retention: Duration,
) -> VersionVector {
    let mut upto = mine.clone();
    for m in def.members.iter().filter(|m| m.serial != me) {
        let s = status_of(peers, m.serial);
        let (waited_for, theirs) = match s.last_seen {
            Some(seen) => (
                now.saturating_duration_since(seen) < retention,
                s.version_vector(),
            ),
            None => (
                now.saturating_duration_since(started) < retention,
                VersionVector::default(),
            ),
        };
        if waited_for {
            for (origin, seq) in upto.0.iter_mut() {
                *seq = (*seq).min(theirs.get(*origin));
            }
        }
    }
    upto.0.retain(|_, seq| *seq > 0);
    upto
}

/// The peers whose clock is further off than `max_ms` from this member's,
/// with their offset now (peer minus this member, milliseconds).
pub fn far_clocks(def: &GroupDef, me: u64, peers: &Peers, anchor_now: i64, max_ms: u64) -> Vec<(u64, i64)> {
    def.members
        .iter()
        .filter(|m| m.serial != me)
        .filter_map(|m| {
            let c = status_of(peers, m.serial).clock?;
            c.beyond(anchor_now, max_ms)
                .then_some((m.serial, c.offset_now(anchor_now)))
        })
        .collect()
}

/// Why this member's clock keeps it from writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClockRefusal {
    /// Peers not known to be down whose clocks it has not compared yet.
    NotCompared(Vec<u64>),
    /// Its clock is further off than the maximum from too many of the
    /// members it has compared with: it agrees with `agreeing` of `known`
    /// (itself included), no majority; `far` are the others.
    Outvoted {
        agreeing: usize,
        known: usize,
        far: Vec<(u64, i64)>,
    },
}

/// Whether this member's clock must keep it from writing: a write's stamp
/// comes from its clock, and a stamp from a clock that runs fast would win
/// over writes acknowledged after it. It may write once it has compared
/// clocks with every peer not known to be down or unreachable (waiting for
/// one it cannot reach would not help), and only while its clock is
/// within `max_ms` of a majority of the members it has compared with
/// (itself included). With two members whose clocks disagree, neither has
/// a majority: both stop writing, because which one is wrong cannot be told.
pub fn clock_refusal(
    def: &GroupDef,
    me: u64,
    peers: &Peers,
    anchor_now: i64,
    max_ms: u64,
) -> Option<ClockRefusal> {
    let others = || def.members.iter().filter(|m| m.serial != me);
    let not_compared: Vec<u64> = others()
        .filter(|m| {
            let s = status_of(peers, m.serial);
            s.clock.is_none() && s.health != PeerHealth::Down && !s.link_failed
        })
        .map(|m| m.serial)
        .collect();
    if !not_compared.is_empty() {
        return Some(ClockRefusal::NotCompared(not_compared));
    }
    let known = 1 + others()
        .filter(|m| status_of(peers, m.serial).clock.is_some())
        .count();
    let far = far_clocks(def, me, peers, anchor_now, max_ms);
    let agreeing = known - far.len();
    (!is_majority(agreeing, known)).then_some(ClockRefusal::Outvoted { agreeing, known, far })
}

/// Whether a member may serve key operations under the quorum lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// No lease applies: the write concern is `all-reachable`, or this
    /// member is a majority by itself.
    NotNeeded,
    /// Until then: a majority of the voters (this member included) was
    /// caught up with, as of `lease` before it.
    Until(Instant),
    /// It has not caught up with enough peers since it started.
    Missing,
}

/// The quorum lease. A destroy under `quorum` returns once a majority holds
/// the tombstone. A member renews its lease with a majority of the voters
/// (itself and peers whose heartbeat answers it has caught up with); any
/// two majorities share a member, so a renewal from heartbeats sent after
/// the destroy returned brings the tombstone with it. A lease counted from
/// heartbeats sent before then ends less than `lease` after the destroy
/// returned: no member uses the key after that, a member cut off from the
/// majority included.
pub fn lease(def: &GroupDef, me: u64, peers: &Peers, lease: Duration) -> Lease {
    if def.write_concern != WriteConcern::Quorum {
        return Lease::NotNeeded;
    }
    let voters = voters(def);
    let i_vote = def.member(me).is_some_and(|m| !m.standby);
    let from_peers = (voters / 2 + 1).saturating_sub(i_vote as usize);
    if from_peers == 0 {
        return Lease::NotNeeded;
    }
    let mut renewals: Vec<Instant> = def
        .members
        .iter()
        .filter(|m| m.serial != me && !m.standby)
        .filter_map(|m| status_of(peers, m.serial).caught_up_as_of)
        .collect();
    renewals.sort_unstable_by(|a, b| b.cmp(a));
    match renewals.get(from_peers - 1) {
        Some(t) => Lease::Until(*t + lease),
        None => Lease::Missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hahsm_proto::peer::GroupMember;

    fn member(serial: u64, standby: bool) -> GroupMember {
        GroupMember {
            serial,
            hsm_label: format!("hsm{serial}"),
            partition_serial: serial,
            peer_address: String::new(),
            fingerprint: String::new(),
            client_address: String::new(),
            standby,
        }
    }

    fn group(concern: WriteConcern, members: &[(u64, bool)]) -> GroupDef {
        GroupDef {
            id: [0; 16],
            label: "g".into(),
            serial: 1,
            partition: "p".into(),
            epoch: 1,
            members: members.iter().map(|&(s, standby)| member(s, standby)).collect(),
            write_concern: concern,
            replication_timeout_ms: 1000,
        }
    }

    fn with(health: PeerHealth) -> PeerStatus {
        PeerStatus {
            health,
            ..PeerStatus::default()
        }
    }

    fn state(vv: &[(u64, u64)]) -> ReplicaState {
        ReplicaState {
            version_vector: vv.to_vec(),
            ..ReplicaState::default()
        }
    }

    #[test]
    fn the_log_is_compacted_only_as_far_as_every_peer_within_the_retention_has_it() {
        let def = group(WriteConcern::AllReachable, &[(1, false), (2, false), (3, false)]);
        let t0 = Instant::now();
        let retention = Duration::from_secs(60);
        let mine = VersionVector([(1, 10), (2, 8), (3, 4)].into_iter().collect());
        let heard = |vv: &[(u64, u64)], at: Instant| PeerStatus {
            last_seen: Some(at),
            state: state(vv),
            ..PeerStatus::default()
        };
        let mut peers = Peers::new();
        // Peer 3 not heard from since this member started: nothing yet.
        peers.insert(2, heard(&[(1, 7), (2, 8), (3, 4)], t0));
        let floor = compaction_floor(&def, 1, &mine, &peers, t0, t0 + Duration::from_secs(1), retention);
        assert_eq!(floor, VersionVector::default());
        // Both heard from: the least of the three, per origin.
        peers.insert(3, heard(&[(1, 9), (2, 5)], t0));
        let floor = compaction_floor(&def, 1, &mine, &peers, t0, t0 + Duration::from_secs(1), retention);
        assert_eq!(floor, VersionVector([(1, 7), (2, 5)].into_iter().collect()));
        // Peer 3 silent for longer than the retention: it no longer holds
        // the log back (it will catch up from a snapshot).
        let later = t0 + retention + Duration::from_secs(1);
        peers.insert(2, heard(&[(1, 10), (2, 8), (3, 4)], later));
        let floor = compaction_floor(&def, 1, &mine, &peers, t0, later, retention);
        assert_eq!(floor, mine);
        // Nor does a peer never heard from once this member has run that long.
        peers.remove(&3);
        assert_eq!(
            compaction_floor(&def, 1, &mine, &peers, t0, later, retention),
            mine
        );
    }

    #[test]
    fn a_silent_peer_is_dropped_at_down_after_and_its_attempts_are_counted() {
        let t0 = Instant::now();
        let mut s = PeerStatus::default();
        assert_eq!(s.answered(state(&[]), t0), None);
        // Silent, but not for DOWN_AFTER yet: no event, still alive.
        assert_eq!(s.failed(t0, t0 + DOWN_AFTER - Duration::from_millis(1)), None);
        assert_eq!(s.health, PeerHealth::Alive);
        assert_eq!(s.failed(t0, t0 + DOWN_AFTER), Some(HaEvent::Dropped));
        assert_eq!(s.health, PeerHealth::Down);
        // The log names attempts 1, 2, 3, then every tenth.
        let logged: Vec<u32> = (1..=30)
            .filter_map(|_| s.failed(t0, t0 + DOWN_AFTER * 2))
            .map(|e| e.attempt().unwrap())
            .collect();
        assert_eq!(logged, vec![1, 2, 3, 10, 20, 30]);
        // The 31st attempt reaches it: recovered, lagging until caught up.
        assert_eq!(
            s.answered(state(&[(1, 5)]), t0 + DOWN_AFTER * 3),
            Some(HaEvent::Recovered(31))
        );
        assert_eq!((s.health, s.recovery_attempts), (PeerHealth::Lagging, 0));
        s.caught_up(true);
        assert_eq!(s.health, PeerHealth::Alive);
    }

    #[test]
    fn a_peer_never_heard_from_is_dropped_counting_from_the_member_start() {
        let started = Instant::now();
        let mut s = PeerStatus::default();
        assert_eq!(s.failed(started, started + Duration::from_millis(1999)), None);
        assert_eq!(
            s.failed(started, started + Duration::from_millis(2000)),
            Some(HaEvent::Dropped)
        );
    }

    #[test]
    fn a_missed_write_makes_an_alive_peer_lagging_until_caught_up() {
        let mut s = PeerStatus::default();
        s.missed_a_write();
        assert_eq!((s.health, s.missed_write), (PeerHealth::Lagging, true));
        s.caught_up(false);
        assert_eq!((s.health, s.missed_write), (PeerHealth::Lagging, true));
        s.caught_up(true);
        assert_eq!((s.health, s.missed_write), (PeerHealth::Alive, false));
        let mut down = with(PeerHealth::Down);
        down.missed_a_write();
        assert_eq!(down.health, PeerHealth::Down);
    }

    #[test]
    fn freshness_and_suspicion_follow_the_last_answer() {
        let t0 = Instant::now();
        let mut s = PeerStatus::default();
        assert!(!s.fresh(t0) && !s.suspect(t0));
        s.answered(state(&[]), t0);
        assert!(s.fresh(t0 + DOWN_AFTER * 2 - Duration::from_millis(1)));
        assert!(!s.fresh(t0 + DOWN_AFTER * 2));
        assert!(!s.suspect(t0 + HEARTBEAT_INTERVAL));
        assert!(s.suspect(t0 + HEARTBEAT_INTERVAL + Duration::from_millis(1)));
        let peers = Peers::from([(2, s.clone())]);
        assert_eq!(next_pause(&peers, &[2], t0), HEARTBEAT_INTERVAL);
        assert_eq!(
            next_pause(&peers, &[2], t0 + Duration::from_secs(2)),
            SUSPECT_PROBE_INTERVAL
        );
        s.health = PeerHealth::Down;
        assert!(!s.suspect(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn majorities_count_voters_only() {
        assert!(!is_majority(1, 2));
        assert!(is_majority(2, 3));
        assert!(!is_majority(2, 4));
        assert!(is_majority(3, 5));
        let def = group(
            WriteConcern::Quorum,
            &[(1, false), (2, false), (3, false), (4, true)],
        );
        assert_eq!(voters(&def), 3);
        assert!(!majority_holds(&def, 1, &HashSet::new()));
        // A standby's confirmation does not make a majority.
        assert!(!majority_holds(&def, 1, &HashSet::from([4])));
        assert!(majority_holds(&def, 1, &HashSet::from([3])));
        assert!(majority_holds(&def, 1, &HashSet::from([2, 4])));
    }

    #[test]
    fn the_grace_is_four_times_the_first_answer_at_least_fifty_ms() {
        assert_eq!(grace(Duration::from_millis(1)), Duration::from_millis(50));
        assert_eq!(grace(Duration::from_millis(12)), Duration::from_millis(50));
        assert_eq!(grace(Duration::from_millis(13)), Duration::from_millis(52));
        assert_eq!(grace(Duration::from_millis(300)), Duration::from_millis(1200));
    }

    #[test]
    fn writes_go_to_lagging_peers_only_under_quorum() {
        let peers = Peers::from([
            (2, with(PeerHealth::Alive)),
            (3, with(PeerHealth::Lagging)),
            (4, with(PeerHealth::Down)),
        ]);
        let members = [(1, false), (2, false), (3, false), (4, false), (5, false)];
        // Member 5 was never heard of: presumed alive.
        assert_eq!(
            write_targets(&group(WriteConcern::Quorum, &members), 1, &peers),
            vec![2, 3, 5]
        );
        assert_eq!(
            write_targets(&group(WriteConcern::AllReachable, &members), 1, &peers),
            vec![2, 5]
        );
    }

    #[test]
    fn quorum_refuses_a_write_without_a_reachable_majority() {
        let members = [(1, false), (2, false), (3, false), (4, true)];
        let mut cut = with(PeerHealth::Alive);
        cut.link_failed = true;
        let peers = Peers::from([
            (2, with(PeerHealth::Down)),
            (3, cut),
            (4, with(PeerHealth::Alive)),
        ]);
        assert_eq!(
            quorum_refusal(&group(WriteConcern::Quorum, &members), 1, &peers),
            Some((1, 3))
        );
        assert_eq!(
            quorum_refusal(&group(WriteConcern::AllReachable, &members), 1, &peers),
            None
        );
        let peers = Peers::from([(2, with(PeerHealth::Lagging)), (3, with(PeerHealth::Down))]);
        assert_eq!(
            quorum_refusal(&group(WriteConcern::Quorum, &members), 1, &peers),
            None
        );
    }

    #[test]
    fn a_standby_waits_while_an_active_member_is_up() {
        let def = group(WriteConcern::AllReachable, &[(1, false), (2, false), (3, true)]);
        let up = Peers::from([(1, with(PeerHealth::Down)), (2, with(PeerHealth::Lagging))]);
        assert!(standby_must_wait(&def, 3, &up));
        let down = Peers::from([(1, with(PeerHealth::Down)), (2, with(PeerHealth::Down))]);
        assert!(!standby_must_wait(&def, 3, &down));
        // An active member never waits.
        assert!(!standby_must_wait(&def, 1, &up));
    }

    #[test]
    fn a_login_waits_for_peers_unheard_or_ahead() {
        let def = group(
            WriteConcern::AllReachable,
            &[(1, false), (2, false), (3, false), (4, false)],
        );
        let t0 = Instant::now();
        let mut ahead = PeerStatus::default();
        ahead.answered(state(&[(2, 7)]), t0);
        let mut level = PeerStatus::default();
        level.answered(state(&[(2, 5)]), t0);
        let peers = Peers::from([(2, ahead), (3, level), (4, with(PeerHealth::Down))]);
        let mine = VersionVector([(2, 5)].into_iter().collect());
        // 2 is ahead of this member; 3 is level; 4 is down.
        assert_eq!(catching_up_with(&def, 1, &mine, &peers), vec![2]);
        let caught_up = VersionVector([(2, 7)].into_iter().collect());
        assert_eq!(catching_up_with(&def, 1, &caught_up, &peers), Vec::<u64>::new());
        // A peer not heard from since this member started is waited for.
        let unheard = Peers::from([(3, PeerStatus::default())]);
        let def3 = group(WriteConcern::AllReachable, &[(1, false), (3, false)]);
        assert_eq!(catching_up_with(&def3, 1, &caught_up, &unheard), vec![3]);
    }

    fn clocked(offset_ms: i64) -> PeerStatus {
        PeerStatus {
            clock: Some(ClockReading {
                offset_ms,
                uncertainty_ms: 1,
                anchor_ms: 0,
            }),
            ..PeerStatus::default()
        }
    }

    #[test]
    fn a_clock_reading_is_taken_half_way_through_the_round_trip_and_follows_a_jump() {
        let r = measure_clock(10_000, Duration::from_millis(20), 15_010, 7);
        assert_eq!((r.offset_ms, r.uncertainty_ms), (5_000, 10));
        // This member's own clock jumped 5 s ahead since: now they agree.
        assert_eq!(r.offset_now(7 + 5_000), 0);
        assert!(r.beyond(7, 500) && !r.beyond(5_007, 500));
        let origin = Instant::now();
        assert_eq!(
            clock_anchor(9_000, origin + Duration::from_millis(1_000), origin),
            8_000
        );
    }

    #[test]
    fn the_member_whose_clock_is_off_from_the_majority_stops_writing_and_the_others_do_not() {
        let def = group(WriteConcern::Quorum, &[(1, false), (2, false), (3, false)]);
        // Member 3 runs 5 s fast: 1 and 2 see it ahead, it sees them behind.
        let at_1 = Peers::from([(2, clocked(3)), (3, clocked(5_000))]);
        assert_eq!(clock_refusal(&def, 1, &at_1, 0, 500), None);
        assert_eq!(far_clocks(&def, 1, &at_1, 0, 500), vec![(3, 5_000)]);
        let at_3 = Peers::from([(1, clocked(-5_000)), (2, clocked(-4_997))]);
        assert_eq!(
            clock_refusal(&def, 3, &at_3, 0, 500),
            Some(ClockRefusal::Outvoted {
                agreeing: 1,
                known: 3,
                far: vec![(1, -5_000), (2, -4_997)]
            })
        );
        // Two members that disagree cannot tell who is wrong: both stop.
        let pair = group(WriteConcern::AllReachable, &[(1, false), (2, false)]);
        assert!(clock_refusal(&pair, 1, &Peers::from([(2, clocked(900))]), 0, 500).is_some());
        // A peer not compared yet holds writes back, unless it is down; a
        // down peer's last reading still counts.
        let unknown = Peers::from([(2, clocked(0))]);
        assert_eq!(
            clock_refusal(&def, 1, &unknown, 0, 500),
            Some(ClockRefusal::NotCompared(vec![3]))
        );
        let mut gone = clocked(5_000);
        gone.health = PeerHealth::Down;
        let down = Peers::from([(2, with(PeerHealth::Down)), (3, gone)]);
        assert_eq!(
            clock_refusal(&def, 1, &down, 0, 500),
            Some(ClockRefusal::Outvoted {
                agreeing: 1,
                known: 2,
                far: vec![(3, 5_000)]
            })
        );
    }

    #[test]
    fn the_lease_runs_from_the_latest_majority_caught_up_with() {
        let t0 = Instant::now();
        let lease_for = Duration::from_millis(4_000);
        let renewed = |at: Duration| PeerStatus {
            caught_up_as_of: Some(t0 + at),
            ..PeerStatus::default()
        };
        let def = group(
            WriteConcern::Quorum,
            &[(1, false), (2, false), (3, false), (4, false), (5, false)],
        );
        // Of 5 voters, member 1 needs 2 peers: the second most recent counts.
        let peers = Peers::from([
            (2, renewed(Duration::from_millis(300))),
            (3, renewed(Duration::from_millis(100))),
            (4, renewed(Duration::from_millis(200))),
        ]);
        assert_eq!(
            lease(&def, 1, &peers, lease_for),
            Lease::Until(t0 + Duration::from_millis(200) + lease_for)
        );
        let one = Peers::from([(2, renewed(Duration::ZERO))]);
        assert_eq!(lease(&def, 1, &one, lease_for), Lease::Missing);
        // A standby's renewal does not count, and a standby needs a majority of the voters.
        let with_standby = group(WriteConcern::Quorum, &[(1, false), (2, false), (3, true)]);
        let standby_only = Peers::from([(3, renewed(Duration::ZERO))]);
        assert_eq!(lease(&with_standby, 1, &standby_only, lease_for), Lease::Missing);
        let from_2 = Peers::from([(2, renewed(Duration::ZERO))]);
        assert_eq!(lease(&with_standby, 3, &from_2, lease_for), Lease::Missing);
        // No lease under all-reachable, nor for a member that is a majority alone.
        let ar = group(WriteConcern::AllReachable, &[(1, false), (2, false), (3, false)]);
        assert_eq!(lease(&ar, 1, &Peers::new(), lease_for), Lease::NotNeeded);
        let alone = group(WriteConcern::Quorum, &[(1, false), (2, true)]);
        assert_eq!(lease(&alone, 1, &Peers::new(), lease_for), Lease::NotNeeded);
    }
}
