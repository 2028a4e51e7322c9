//! The group as one member sees it (`ha show`, the metrics, the monitor):
//! each member's state, lag and policies, whether the group is in sync or
//! degraded, and which policies drift. Pure: it is given what the member
//! knows and the time, and does no I/O.
use super::detector::{PeerHealth, Peers};
use hahsm_proto::admin::{GroupMemberStatus, GroupStatus, MemberState};
use hahsm_proto::peer::{GroupDef, PolicySnapshot, ReplicaState};
use hahsm_token::policy::{PolicyDef, HSM_POLICIES, PARTITION_POLICIES};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// The status of `def` seen from member `me` with state `mine`.
/// `behind_since` keeps, between calls, since when each member has lacked
/// operations (so a lag has a duration); members no longer in the group
/// are forgotten.
pub fn group_status(
    def: &GroupDef,
    me: u64,
    mine: &ReplicaState,
    peers: &Peers,
    behind_since: &mut HashMap<u64, Instant>,
    now: Instant,
) -> GroupStatus {
    let mut seen = Vec::new();
    for m in &def.members {
        if m.serial == me {
            seen.push((MemberState::Alive, mine.clone(), Some(Duration::ZERO)));
        } else {
            let s = peers.get(&m.serial).cloned().unwrap_or_default();
            let health = match s.health {
                PeerHealth::Down => MemberState::Down,
                _ if !s.fresh(now) => MemberState::Down,
                PeerHealth::Lagging => MemberState::Lagging,
                PeerHealth::Alive => MemberState::Alive,
            };
            let since = s.last_seen.map(|t| now.saturating_duration_since(t));
            seen.push((health, s.state, since));
        }
    }
    let best = best_vector(seen.iter().map(|(_, s, _)| s.version_vector.as_slice()));
    let drift = policy_drift(
        &def.members
            .iter()
            .zip(&seen)
            .map(|(m, (_, s, _))| (m.hsm_label.clone(), &s.policies))
            .collect::<Vec<_>>(),
    );
    behind_since.retain(|serial, _| def.member(*serial).is_some());
    let mut members = Vec::new();
    let mut in_sync = true;
    let mut degraded = false;
    for (m, (health, state, last_seen)) in def.members.iter().zip(seen) {
        let lag_operations = lag_operations(&state.version_vector, &best);
        let lag_ms = if lag_operations == 0 {
            behind_since.remove(&m.serial);
            0
        } else {
            let since = *behind_since.entry(m.serial).or_insert(now);
            now.saturating_duration_since(since).as_millis() as u64
        };
        let alive = health == MemberState::Alive;
        degraded |= !alive;
        if !alive || state.digest != mine.digest || state.version_vector != mine.version_vector {
            in_sync = false;
        }
        members.push(GroupMemberStatus {
            name: m.hsm_label.clone(),
            serial: m.serial,
            state: if m.standby && alive {
                MemberState::Standby
            } else {
                health
            },
            object_count: state.live_objects,
            digest: hex::encode(state.digest),
            version_vector: state.version_vector.clone(),
            peer_address: m.peer_address.clone(),
            client_address: m.client_address.clone(),
            lag_operations,
            lag_ms,
            last_seen_ms: last_seen.map(|d| d.as_millis() as u64),
            policies: state.policies,
            metrics: state.metrics,
            clock_offset_ms: None,
        });
    }
    GroupStatus {
        id: hex::encode(def.id),
        label: def.label.clone(),
        serial: def.serial,
        partition: def.partition.clone(),
        write_concern: format!("{:?}", def.write_concern),
        members,
        in_sync,
        degraded,
        policy_drift: drift,
        clock_problems: Vec::new(),
        own_clock_off: false,
    }
}

/// Operations `have` lacks against `best`, summed over origins.
pub fn lag_operations(have: &[(u64, u64)], best: &BTreeMap<u64, u64>) -> u64 {
    let have: BTreeMap<u64, u64> = have.iter().copied().collect();
    best.iter()
        .map(|(origin, top)| top.saturating_sub(have.get(origin).copied().unwrap_or(0)))
        .sum()
}

/// The highest sequence number per origin over all version vectors.
pub fn best_vector<'a>(vectors: impl IntoIterator<Item = &'a [(u64, u64)]>) -> BTreeMap<u64, u64> {
    let mut best = BTreeMap::new();
    for vv in vectors {
        for (origin, seq) in vv {
            let e = best.entry(*origin).or_insert(0);
            *e = (*e).max(*seq);
        }
    }
    best
}

/// Picks the HSM or the partition policies out of a snapshot.
type PolicyTable = fn(&PolicySnapshot) -> &Vec<(u32, u64)>;

/// One line per policy whose value differs between members: `members` are
/// (name, policies); members never heard from (empty policies) are left out.
pub fn policy_drift(members: &[(String, &PolicySnapshot)]) -> Vec<String> {
    let known: Vec<&(String, &PolicySnapshot)> = members.iter().filter(|(_, p)| !p.is_empty()).collect();
    if known.len() < 2 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let tables: [(&str, &[PolicyDef], PolicyTable); 2] = [
        ("HSM", HSM_POLICIES, |p| &p.hsm),
        ("partition", PARTITION_POLICIES, |p| &p.partition),
    ];
    for (what, table, pick) in tables {
        let mut numbers: Vec<u32> = known
            .iter()
            .flat_map(|(_, p)| pick(p).iter().map(|(n, _)| *n))
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        for n in numbers {
            let values: Vec<(String, Option<u64>)> = known
                .iter()
                .map(|(name, p)| {
                    (
                        name.clone(),
                        pick(p).iter().find(|(k, _)| *k == n).map(|(_, v)| *v),
                    )
                })
                .collect();
            if values.windows(2).all(|w| w[0].1 == w[1].1) {
                continue;
            }
            let policy = table
                .iter()
                .find(|d| d.number == n)
                .map(|d| format!("{what} policy {n} ({})", d.name))
                .unwrap_or_else(|| format!("{what} policy {n}"));
            let listed: Vec<String> = values
                .iter()
                .map(|(name, v)| match v {
                    Some(v) => format!("{name}={v}"),
                    None => format!("{name}=unset"),
                })
                .collect();
            out.push(format!("{policy}: {}", listed.join(", ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::detector::PeerStatus;
    use hahsm_proto::peer::{GroupMember, WriteConcern};

    fn def() -> GroupDef {
        GroupDef {
            id: [1; 16],
            label: "haGroup".into(),
            serial: 77,
            partition: "haPart".into(),
            epoch: 3,
            members: (1..=3)
                .map(|serial| GroupMember {
                    serial,
                    hsm_label: format!("hsm{serial}"),
                    partition_serial: serial,
                    peer_address: format!("10.0.0.{serial}:7001"),
                    fingerprint: String::new(),
                    client_address: String::new(),
                    standby: serial == 3,
                })
                .collect(),
            write_concern: WriteConcern::Quorum,
            replication_timeout_ms: 1000,
        }
    }

    fn state(vv: &[(u64, u64)], digest: u8) -> ReplicaState {
        ReplicaState {
            version_vector: vv.to_vec(),
            digest: [digest; 32],
            live_objects: 4,
            ..ReplicaState::default()
        }
    }

    fn heard(vv: &[(u64, u64)], digest: u8, at: Instant, health: PeerHealth) -> PeerStatus {
        PeerStatus {
            health,
            last_seen: Some(at),
            state: state(vv, digest),
            ..PeerStatus::default()
        }
    }

    fn states(g: &GroupStatus) -> Vec<(u64, MemberState, u64, u64)> {
        g.members
            .iter()
            .map(|m| (m.serial, m.state, m.lag_operations, m.lag_ms))
            .collect()
    }

    #[test]
    fn a_group_in_step_is_in_sync_and_its_standby_shows_as_standby() {
        let t0 = Instant::now();
        let mine = state(&[(1, 5)], 9);
        let peers = Peers::from([
            (2, heard(&[(1, 5)], 9, t0, PeerHealth::Alive)),
            (3, heard(&[(1, 5)], 9, t0, PeerHealth::Alive)),
        ]);
        let g = group_status(&def(), 1, &mine, &peers, &mut HashMap::new(), t0);
        assert_eq!(
            states(&g),
            vec![
                (1, MemberState::Alive, 0, 0),
                (2, MemberState::Alive, 0, 0),
                (3, MemberState::Standby, 0, 0)
            ]
        );
        assert!(g.in_sync && !g.degraded);
        assert_eq!(
            (g.label.as_str(), g.serial, g.write_concern.as_str()),
            ("haGroup", 77, "Quorum")
        );
        assert!(g.policy_drift.is_empty());
    }

    #[test]
    fn a_lagging_member_has_a_lag_that_grows_until_it_catches_up() {
        let t0 = Instant::now();
        let mine = state(&[(1, 5)], 9);
        let mut behind = HashMap::new();
        let peers = Peers::from([
            (2, heard(&[(1, 3)], 8, t0, PeerHealth::Lagging)),
            (3, heard(&[(1, 5)], 9, t0, PeerHealth::Alive)),
        ]);
        let g = group_status(&def(), 1, &mine, &peers, &mut behind, t0);
        assert_eq!(states(&g)[1], (2, MemberState::Lagging, 2, 0));
        assert!(!g.in_sync && g.degraded);
        let later = t0 + Duration::from_millis(700);
        let g = group_status(&def(), 1, &mine, &peers, &mut behind, later);
        assert_eq!(states(&g)[1], (2, MemberState::Lagging, 2, 700));
        let peers = Peers::from([
            (2, heard(&[(1, 5)], 9, later, PeerHealth::Alive)),
            (3, heard(&[(1, 5)], 9, later, PeerHealth::Alive)),
        ]);
        let g = group_status(&def(), 1, &mine, &peers, &mut behind, later);
        assert_eq!(states(&g)[1], (2, MemberState::Alive, 0, 0));
        assert!(g.in_sync && behind.is_empty());
    }

    #[test]
    fn a_member_with_another_digest_or_not_heard_lately_breaks_sync() {
        let t0 = Instant::now();
        let mine = state(&[(1, 5)], 9);
        // Same operations, other content (a PIN record or an object differs).
        let peers = Peers::from([
            (2, heard(&[(1, 5)], 1, t0, PeerHealth::Alive)),
            (3, heard(&[(1, 5)], 9, t0, PeerHealth::Alive)),
        ]);
        let g = group_status(&def(), 1, &mine, &peers, &mut HashMap::new(), t0);
        assert!(!g.in_sync && !g.degraded);
        // Not heard from for twice DOWN_AFTER: shown down before the detector says so.
        let stale = t0 + super::super::detector::DOWN_AFTER * 2;
        let peers = Peers::from([
            (2, heard(&[(1, 5)], 9, t0, PeerHealth::Alive)),
            (3, heard(&[(1, 5)], 9, stale, PeerHealth::Alive)),
        ]);
        let g = group_status(&def(), 1, &mine, &peers, &mut HashMap::new(), stale);
        assert_eq!(states(&g)[1], (2, MemberState::Down, 0, 0));
        assert_eq!(g.members[1].last_seen_ms, Some(4000));
        assert!(!g.in_sync && g.degraded);
    }

    fn snap(hsm: &[(u32, u64)], partition: &[(u32, u64)]) -> PolicySnapshot {
        PolicySnapshot {
            hsm: hsm.to_vec(),
            partition: partition.to_vec(),
        }
    }

    #[test]
    fn drift_names_the_policy_and_every_members_value() {
        let a = snap(&[(7, 1), (16, 1)], &[(15, 10), (23, 1)]);
        let b = snap(&[(7, 1), (16, 1)], &[(15, 3), (23, 1)]);
        let never_heard = PolicySnapshot::default();
        let lines = policy_drift(&[
            ("hsm0".into(), &a),
            ("hsm1".into(), &b),
            ("hsm2".into(), &never_heard),
        ]);
        assert_eq!(
            lines,
            vec!["partition policy 15 (max-failed-logins): hsm0=10, hsm1=3".to_string()]
        );
        assert!(policy_drift(&[("hsm0".into(), &a), ("hsm1".into(), &a.clone())]).is_empty());
        let c = snap(&[(7, 1)], &[(15, 10), (23, 1)]);
        assert_eq!(
            policy_drift(&[("hsm0".into(), &a), ("hsm1".into(), &c)]),
            vec!["HSM policy 16 (allow-network-replication): hsm0=1, hsm1=unset".to_string()]
        );
    }

    #[test]
    fn lag_counts_missing_operations_per_origin() {
        let a = [(1, 10), (2, 5)];
        let b = [(1, 7)];
        let best = best_vector([&a[..], &b[..]]);
        assert_eq!(lag_operations(&a, &best), 0);
        assert_eq!(lag_operations(&b, &best), 3 + 5);
    }
}
