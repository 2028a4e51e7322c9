//! An HA slot's group: its serving members, the rotation that picks the
//! least busy one, and taking a failed member out of the rotation (the HA
//! log's "dropped"). Nothing here sends requests: that is `routing`'s and
//! `watch`'s.
use crate::log;
use crate::pool::{Server, TokenLogin};
use crate::sync::{lock, read, write};
use hahsm_proto::halog::HaEvent;
use hahsm_proto::peer::GroupDef;
use hahsm_token::Ouid;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The longest wait between two probes of a member out of the rotation.
const PROBE_MAX: Duration = Duration::from_secs(10);

/// The wait after probe attempt `n` failed: 1 s after the first two attempts,
/// then 2, 4 and 8 s (each twice), then 10 s for as long as the member stays away.
pub(crate) fn backoff(n: u32) -> Duration {
    let secs = 1u64 << (n.saturating_sub(1) / 2).min(4);
    Duration::from_secs(secs).min(PROBE_MAX)
}

/// Why and since when a member is out of the rotation.
pub(super) struct Outage {
    /// Probes made so far.
    pub(super) attempts: u32,
    pub(super) next_probe: Instant,
    /// A probe is on its way.
    pub(super) probing: bool,
    /// A member that joined the group while the application ran: it enters
    /// the rotation through its first successful probe.
    pub(super) joining: bool,
}

/// One member serving an HA slot.
pub struct HaMember {
    pub server: Arc<Server>,
    /// Requests sent to this member and not yet answered.
    pub(super) in_flight: AtomicUsize,
    /// Out of the rotation, after a connection-level failure (or while
    /// joining): application requests pass it over and the background task
    /// probes it until it may serve again.
    pub(super) outage: Mutex<Option<Outage>>,
    /// When it last refused a write for want of a quorum (cut off from the
    /// majority): for a moment after, writes go to the other members first.
    pub(super) quorum_refused_at: Mutex<Option<Instant>>,
}

/// How long a member that refused a write for want of a quorum is asked for
/// writes last: about one heartbeat, time for its view of the group to change.
const QUORUM_SIDELINE: Duration = Duration::from_secs(1);

impl HaMember {
    pub(crate) fn new(server: Arc<Server>) -> Arc<HaMember> {
        Arc::new(HaMember {
            server,
            in_flight: AtomicUsize::new(0),
            outage: Mutex::new(None),
            quorum_refused_at: Mutex::new(None),
        })
    }

    /// A member that joined while the application runs: out of the
    /// rotation until its first probe succeeds.
    pub(super) fn joining(server: Arc<Server>) -> Arc<HaMember> {
        let member = HaMember::new(server);
        *lock(&member.outage) = Some(Outage {
            attempts: 0,
            next_probe: Instant::now(),
            probing: false,
            joining: true,
        });
        member
    }

    pub fn is_down(&self) -> bool {
        lock(&self.outage).is_some()
    }

    pub(super) fn refused_a_write_lately(&self) -> bool {
        lock(&self.quorum_refused_at).is_some_and(|t| t.elapsed() < QUORUM_SIDELINE)
    }
}

/// Counts a request in flight on a member while it lives.
pub(super) struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    pub(super) fn start(counter: &'a AtomicUsize) -> InFlight<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What an HA slot adds to a slot: the group and its serving members.
pub struct HaGroup {
    pub id: [u8; 16],
    pub label: String,
    /// The group's partition, the same on every member.
    pub partition: String,
    pub def: Mutex<GroupDef>,
    pub(crate) members: RwLock<Vec<Arc<HaMember>>>,
    /// The slot's login (as `Slot::token`), for the members that join.
    pub(crate) token: Arc<Mutex<TokenLogin>>,
    /// Rotates the choice among equally loaded members.
    pub(super) next: AtomicUsize,
    /// The member that holds the slot's session objects (they live in one
    /// connection on one member), chosen when the first one is made.
    pub(crate) session_home: Mutex<Option<Arc<HaMember>>>,
    /// The session objects made through this slot, all on `session_home`.
    pub(crate) session_objects: Mutex<std::collections::HashSet<Ouid>>,
}

impl HaGroup {
    /// A group's slot state on first sight of one of its members.
    pub(crate) fn new(def: &GroupDef, first: Arc<Server>, token: Arc<Mutex<TokenLogin>>) -> HaGroup {
        HaGroup {
            id: def.id,
            label: def.label.clone(),
            partition: def.partition.clone(),
            def: Mutex::new(def.clone()),
            members: RwLock::new(vec![HaMember::new(first)]),
            token,
            next: AtomicUsize::new(0),
            session_home: Mutex::default(),
            session_objects: Mutex::default(),
        }
    }

    pub fn members(&self) -> Vec<Arc<HaMember>> {
        read(&self.members).clone()
    }

    /// The untried member in the rotation with the fewest requests in
    /// flight; among those, the fastest to answer lately, where members
    /// under four times the fastest's time count as equal and take turns (a
    /// member not measured yet counts as fastest, so it gets measured). One
    /// pick in eight ignores latency, so that a member passed over after a
    /// slow spell is measured again soon.
    /// Members out of the rotation are left to the background probe,
    /// unless every member is out: then they are tried as a last resort.
    pub(crate) fn pick(&self, members: &[Arc<HaMember>], tried: &[bool]) -> Option<usize> {
        let n = members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let down: Vec<bool> = members.iter().map(|m| m.is_down()).collect();
        let any_up = down.iter().any(|d| !d);
        let explore = start % 8 == 0;
        // The picks that ignore latency take turns among the members on
        // their own count (the k-th begins at member k), so that each member
        // is measured again whatever the group's size; by `start` alone they
        // would begin at the same member with two or four members.
        let first = if explore { start / 8 } else { start };
        let candidates: Vec<usize> = (0..n)
            .map(|k| first.wrapping_add(k) % n)
            .filter(|&i| !tried[i] && (!any_up || !down[i]))
            .collect();
        let latency = |i: usize| {
            if explore {
                0
            } else {
                members[i].server.latency_us.load(Ordering::Relaxed)
            }
        };
        let fastest = candidates.iter().map(|&i| latency(i)).min()?.max(1);
        candidates.into_iter().min_by_key(|&i| {
            (
                members[i].in_flight.load(Ordering::SeqCst),
                latency(i) / (4 * fastest),
            )
        })
    }

    /// The member's serial, as the HA log names it (its name if the group
    /// definition does not know it).
    pub(crate) fn serial_of(&self, member: &HaMember) -> String {
        lock(&self.def)
            .members
            .iter()
            .find(|m| same_fingerprint(&m.fingerprint, &member.server.entry.fingerprint))
            .map_or_else(|| member.server.entry.name.clone(), |m| m.serial.to_string())
    }

    /// Takes a member out of the rotation after a connection-level failure;
    /// the background task probes it from now on.
    pub(crate) fn drop_member(&self, member: &HaMember) {
        {
            let mut o = lock(&member.outage);
            if o.is_some() {
                return;
            }
            *o = Some(Outage {
                attempts: 0,
                next_probe: Instant::now() + backoff(1),
                probing: false,
                joining: false,
            });
        }
        write(&member.server.conn).take();
        member.server.clear_pool();
        log::ha_event(&self.label, HaEvent::Dropped, &self.serial_of(member));
    }
}

/// A fingerprint as written in configs and group definitions, for comparison.
pub(crate) fn same_fingerprint(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.replace(':', "").to_ascii_lowercase();
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hahsm_client::ServerEntry;

    fn member(name: &str) -> Arc<HaMember> {
        let entry = ServerEntry {
            name: name.into(),
            address: String::new(),
            fingerprint: String::new(),
        };
        HaMember::new(Arc::new(Server::new(entry, "p", Arc::default())))
    }

    fn group(members: &[Arc<HaMember>]) -> HaGroup {
        let def = GroupDef {
            id: [0; 16],
            label: "g".into(),
            serial: 1,
            partition: "p".into(),
            epoch: 1,
            members: vec![],
            write_concern: hahsm_proto::peer::WriteConcern::AllReachable,
            replication_timeout_ms: 1000,
        };
        let g = HaGroup::new(&def, members[0].server.clone(), Arc::default());
        *write(&g.members) = members.to_vec();
        g
    }

    #[test]
    fn probes_back_off_to_ten_seconds() {
        let waits: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, vec![1, 1, 2, 2, 4, 4, 8, 8, 10, 10, 10, 10]);
    }

    #[test]
    fn the_least_busy_member_is_picked_and_ties_take_turns() {
        let ms = [member("a"), member("b"), member("c")];
        let g = group(&ms);
        ms[0].in_flight.store(2, Ordering::SeqCst);
        ms[1].in_flight.store(1, Ordering::SeqCst);
        ms[2].in_flight.store(1, Ordering::SeqCst);
        // b and c tie: the rotation alternates between them.
        let picks: Vec<usize> = (0..4).map(|_| g.pick(&ms, &[false; 3]).unwrap()).collect();
        assert!(picks.iter().all(|&i| i == 1 || i == 2), "{picks:?}");
        assert!(picks.contains(&1) && picks.contains(&2), "{picks:?}");
        // Tried members are not picked again; none left, none picked.
        assert_eq!(g.pick(&ms, &[false, true, true]), Some(0));
        assert_eq!(g.pick(&ms, &[true; 3]), None);
    }

    #[test]
    fn a_member_four_times_slower_is_passed_over_unless_exploring() {
        let ms = [member("fast"), member("slow")];
        let g = group(&ms);
        ms[0].server.latency_us.store(100, Ordering::Relaxed);
        ms[1].server.latency_us.store(400, Ordering::Relaxed);
        let picks: Vec<usize> = (0..16).map(|_| g.pick(&ms, &[false; 2]).unwrap()).collect();
        // Two picks in sixteen ignore latency and take turns from there.
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 1, "{picks:?}");
        // With three members, the slow one is explored one time in three.
        let three = [member("fast"), member("slow"), member("fast too")];
        let g3 = group(&three);
        for (m, us) in three.iter().zip([100, 400, 100]) {
            m.server.latency_us.store(us, Ordering::Relaxed);
        }
        let picks: Vec<usize> = (0..24).map(|_| g3.pick(&three, &[false; 3]).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 1, "{picks:?}");
        ms[1].server.latency_us.store(399, Ordering::Relaxed);
        let picks: Vec<usize> = (0..16).map(|_| g.pick(&ms, &[false; 2]).unwrap()).collect();
        // Within four times the fastest they tie and take turns (8 of these 14), and
        // the two picks that ignore latency go one to each.
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 9, "{picks:?}");
    }

    #[test]
    fn members_out_of_the_rotation_are_a_last_resort() {
        let ms = [member("a"), member("b")];
        let g = group(&ms);
        g.drop_member(&ms[0]);
        assert!(ms[0].is_down());
        for _ in 0..4 {
            assert_eq!(g.pick(&ms, &[false; 2]), Some(1));
        }
        g.drop_member(&ms[1]);
        assert!(g.pick(&ms, &[false; 2]).is_some());
    }
}
