//! The replication engine of hahsm, with no I/O: one partition's replicated
//! state on one member, and the rules that merge operations into it.
//!
//! Every member applies the same operations (from its own op log and from its
//! peers') and must reach the same state whatever order they arrive in. The
//! rules (see `docs/replication.md`):
//!
//! - objects are identified by their cluster-unique id (OUID);
//! - a destroy leaves a **tombstone** that wins over every write to that OUID,
//!   earlier, concurrent or later: nothing brings a destroyed object back;
//! - attributes merge **last-writer-wins per attribute**, ordered by the
//!   operation's stamp (hybrid logical clock, then origin member id), a total
//!   order every member computes alike;
//! - an attribute change that arrives before its object's creation is kept (as
//!   an invisible "ghost") and merged when the creation arrives;
//! - each origin's operations are applied in sequence order, without gaps: a
//!   member's version vector says, per origin, how far it has applied.
//!
//! - a peer's **snapshot** (its states, and the version vector they cover) is
//!   joined state by state ([`ObjectState::join`]): the same as applying the
//!   operations behind it, so a member whose peers compacted their logs past
//!   what it lacks catches up from their states instead.
//!
//! Applying is split in two: [`Replica::plan`] computes the new state of every
//! object an operation touches without changing anything, the runtime makes that
//! durable, and only then [`Replica::commit`] changes memory. So a failed write
//! leaves memory as it was.
#![forbid(unsafe_code)]

use hahsm_token::oplog::{Op, OpBody, Stamp};
use hahsm_token::{AttrType, AttrValue, MemberId, Ouid, Template};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Per origin member, the highest sequence number applied (all before it are too).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(pub BTreeMap<MemberId, u64>);

impl VersionVector {
    pub fn get(&self, origin: MemberId) -> u64 {
        self.0.get(&origin).copied().unwrap_or(0)
    }

    /// True when this vector has applied everything `other` has.
    pub fn covers(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(o, s)| self.get(*o) >= *s)
    }

    /// The total number of operations applied.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// What `self` has that `peer` lacks: for each origin, the peer's position,
    /// so the peer should receive operations after it.
    pub fn ahead_of(&self, peer: &VersionVector) -> Vec<(MemberId, u64)> {
        self.0
            .iter()
            .filter(|(o, s)| peer.get(**o) < **s)
            .map(|(o, _)| (*o, peer.get(*o)))
            .collect()
    }
}

/// How an object's creation is recorded: its stamp and its (opaque) secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created<S> {
    pub stamp: Stamp,
    pub secret: Option<S>,
}

/// The replicated state of one OUID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectState<S> {
    /// `None` while only attribute changes have arrived (a ghost).
    pub created: Option<Created<S>>,
    /// Each attribute with the stamp of the write that set it.
    pub attrs: BTreeMap<AttrType, (Stamp, AttrValue)>,
    /// Set once the object is destroyed; then the object is gone for good.
    pub tombstone: Option<Stamp>,
}

impl<S> Default for ObjectState<S> {
    fn default() -> Self {
        ObjectState {
            created: None,
            attrs: BTreeMap::new(),
            tombstone: None,
        }
    }
}

impl<S> ObjectState<S> {
    /// Visible to applications: created and not destroyed.
    pub fn is_live(&self) -> bool {
        self.created.is_some() && self.tombstone.is_none()
    }

    /// The attributes as a plain template.
    pub fn template(&self) -> Template {
        Template(self.attrs.iter().map(|(k, (_, v))| (*k, v.clone())).collect())
    }

    /// The join of two states of one OUID: what a member holds once it has
    /// applied the operations behind both. Applying an operation is a join
    /// with that operation's effect, so joining states (a snapshot from a
    /// peer) gives what applying the operations would, in any order, any
    /// number of times: the tombstone absorbs everything (the earliest
    /// destroy's stamp), the later creation wins, each attribute keeps the
    /// value of the greater stamp.
    pub fn join(&self, other: &ObjectState<S>) -> ObjectState<S>
    where
        S: Clone,
    {
        let tombstone = match (self.tombstone, other.tombstone) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if tombstone.is_some() {
            return ObjectState {
                created: None,
                attrs: BTreeMap::new(),
                tombstone,
            };
        }
        let created = match (&self.created, &other.created) {
            (Some(a), Some(b)) if b.stamp > a.stamp => Some(b.clone()),
            (Some(a), _) => Some(a.clone()),
            (None, b) => b.clone(),
        };
        let mut joined = ObjectState {
            created,
            attrs: self.attrs.clone(),
            tombstone: None,
        };
        for (attr, (stamp, value)) in &other.attrs {
            joined.merge_attr(*attr, *stamp, value);
        }
        joined
    }

    /// Last-writer-wins for one attribute.
    fn merge_attr(&mut self, attr: AttrType, stamp: Stamp, value: &AttrValue) -> bool {
        match self.attrs.get(&attr) {
            Some((have, _)) if *have >= stamp => false,
            _ => {
                self.attrs.insert(attr, (stamp, value.clone()));
                true
            }
        }
    }
}

/// What applying an operation would do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan<S> {
    /// Already applied (its sequence number is covered): nothing to do.
    Duplicate,
    /// An earlier operation of the same origin is missing; apply that first.
    Gap { expected: u64 },
    /// The new state of each object the operation changes (possibly none: a
    /// write to a destroyed object changes nothing, but the operation still
    /// counts as applied).
    Apply {
        origin: MemberId,
        seq: u64,
        changes: Vec<(Ouid, ObjectState<S>)>,
    },
}

/// One partition's replicated state on one member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replica<S> {
    vv: VersionVector,
    objects: BTreeMap<Ouid, ObjectState<S>>,
}

impl<S: Clone> Replica<S> {
    pub fn new() -> Self {
        Replica {
            vv: VersionVector::default(),
            objects: BTreeMap::new(),
        }
    }

    /// Rebuilds the state from what the store holds.
    pub fn restore(vv: VersionVector, objects: impl IntoIterator<Item = (Ouid, ObjectState<S>)>) -> Self {
        Replica {
            vv,
            objects: objects.into_iter().collect(),
        }
    }

    pub fn version_vector(&self) -> &VersionVector {
        &self.vv
    }

    pub fn get(&self, ouid: &Ouid) -> Option<&ObjectState<S>> {
        self.objects.get(ouid)
    }

    /// Every OUID with any state: live objects, ghosts and tombstones.
    pub fn states(&self) -> impl Iterator<Item = (&Ouid, &ObjectState<S>)> {
        self.objects.iter()
    }

    /// The states after `after` in OUID order (all of them for `None`): one
    /// page of a snapshot at a time.
    pub fn states_after(&self, after: Option<&Ouid>) -> impl Iterator<Item = (&Ouid, &ObjectState<S>)> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.objects.range((from, Bound::Unbounded))
    }

    pub fn live(&self) -> impl Iterator<Item = (&Ouid, &ObjectState<S>)> {
        self.objects.iter().filter(|(_, o)| o.is_live())
    }

    pub fn live_count(&self) -> usize {
        self.live().count()
    }

    pub fn is_tombstoned(&self, ouid: &Ouid) -> bool {
        self.objects.get(ouid).is_some_and(|o| o.tombstone.is_some())
    }

    /// Computes what `op` would change, without changing anything.
    pub fn plan(&self, op: &Op<S>) -> Plan<S> {
        self.plan_over(op, &self.vv, &BTreeMap::new())
    }

    /// Plans a batch of operations, each seeing the effects of those before
    /// it, without changing anything: the caller makes the plans durable,
    /// then commits them in order, so memory is never ahead of the disk.
    pub fn plan_batch(&self, ops: &[Op<S>]) -> Vec<Plan<S>> {
        let mut vv = self.vv.clone();
        let mut pending: BTreeMap<Ouid, ObjectState<S>> = BTreeMap::new();
        ops.iter()
            .map(|op| {
                let plan = self.plan_over(op, &vv, &pending);
                if let Plan::Apply { origin, seq, changes } = &plan {
                    vv.0.insert(*origin, *seq);
                    pending.extend(changes.iter().cloned());
                }
                plan
            })
            .collect()
    }

    /// Plans `op` as if `vv` were the version vector and `pending` changes
    /// were made on top of the state held.
    fn plan_over(&self, op: &Op<S>, vv: &VersionVector, pending: &BTreeMap<Ouid, ObjectState<S>>) -> Plan<S> {
        let origin = op.stamp.origin;
        let have = vv.get(origin);
        if op.seq <= have {
            return Plan::Duplicate;
        }
        if op.seq != have + 1 {
            return Plan::Gap { expected: have + 1 };
        }
        let mut changes: BTreeMap<Ouid, ObjectState<S>> = BTreeMap::new();
        let current = |changes: &BTreeMap<Ouid, ObjectState<S>>, ouid: &Ouid| {
            changes
                .get(ouid)
                .or_else(|| pending.get(ouid))
                .or_else(|| self.objects.get(ouid))
                .cloned()
                .unwrap_or_default()
        };
        match &op.body {
            OpBody::Create { objects } => {
                for new in objects {
                    let mut state = current(&changes, &new.ouid);
                    if state.tombstone.is_some() {
                        continue;
                    }
                    // Two creations of one OUID are two attempts of one client
                    // write (the OUID derives from its operation id): the later
                    // is the one the client was answered, so it wins.
                    let later = state.created.as_ref().is_some_and(|c| c.stamp >= op.stamp);
                    if !later {
                        state.created = Some(Created {
                            stamp: op.stamp,
                            secret: new.sealed_secret.clone(),
                        });
                    }
                    for (attr, value) in new.attrs.iter() {
                        state.merge_attr(*attr, op.stamp, value);
                    }
                    changes.insert(new.ouid, state);
                }
            }
            OpBody::SetAttributes { ouid, attrs } => {
                let mut state = current(&changes, ouid);
                if state.tombstone.is_none() {
                    let mut changed = false;
                    for (attr, value) in attrs.iter() {
                        changed |= state.merge_attr(*attr, op.stamp, value);
                    }
                    if changed {
                        changes.insert(*ouid, state);
                    }
                }
            }
            OpBody::Destroy { ouid } => {
                changes.insert(*ouid, tombstone(current(&changes, ouid), op.stamp));
            }
            OpBody::Clear { destroyed } => {
                for ouid in destroyed {
                    changes.insert(*ouid, tombstone(current(&changes, ouid), op.stamp));
                }
            }
        }
        Plan::Apply {
            origin,
            seq: op.seq,
            changes: changes.into_iter().collect(),
        }
    }

    /// Makes a plan's changes, once they are durable.
    pub fn commit(&mut self, plan: Plan<S>) {
        if let Plan::Apply { origin, seq, changes } = plan {
            for (ouid, state) in changes {
                self.objects.insert(ouid, state);
            }
            self.vv.0.insert(origin, seq);
        }
    }

    /// Plans the join of states from a peer's snapshot (`ObjectState::join`),
    /// without changing anything: the new state of each OUID the join
    /// changes, for the caller to make durable, then `commit_states`.
    pub fn plan_states(&self, states: &[(Ouid, ObjectState<S>)]) -> Vec<(Ouid, ObjectState<S>)>
    where
        S: PartialEq,
    {
        let mut changes: BTreeMap<Ouid, ObjectState<S>> = BTreeMap::new();
        for (ouid, theirs) in states {
            let current = changes.get(ouid).or_else(|| self.objects.get(ouid));
            let joined = match current {
                Some(mine) => mine.join(theirs),
                None => ObjectState::default().join(theirs),
            };
            if current != Some(&joined) {
                changes.insert(*ouid, joined);
            }
        }
        changes.into_iter().collect()
    }

    /// Makes planned joins, once they are durable; then, if the snapshot is
    /// complete, raises the version vector to cover what it covered (each
    /// origin to the greater of the two).
    pub fn commit_states(&mut self, changes: Vec<(Ouid, ObjectState<S>)>, covered: Option<&VersionVector>) {
        for (ouid, state) in changes {
            self.objects.insert(ouid, state);
        }
        if let Some(vv) = covered {
            for (origin, seq) in &vv.0 {
                let have = self.vv.0.entry(*origin).or_default();
                *have = (*have).max(*seq);
            }
        }
    }

    /// Plans and commits at once, for callers with nothing to make durable.
    pub fn apply(&mut self, op: &Op<S>) -> Plan<S> {
        let plan = self.plan(op);
        self.commit(plan.clone());
        plan
    }

    /// Feeds the canonical form of every live object to `sink`, in OUID order:
    /// two replicas with the same live objects and attributes feed the same
    /// bytes. The caller hashes them into the partition digest.
    pub fn canonical(&self, mut sink: impl FnMut(&[u8])) {
        for (ouid, _) in self.live() {
            self.canonical_object(ouid, &mut sink);
        }
    }

    /// The canonical form of one object, if it is live: its OUID and its
    /// attributes in order. Runtimes keep a digest up to date from it, one
    /// changed object at a time.
    pub fn canonical_object(&self, ouid: &Ouid, mut sink: impl FnMut(&[u8])) -> bool {
        let Some(state) = self.objects.get(ouid).filter(|s| s.is_live()) else {
            return false;
        };
        sink(ouid.as_bytes());
        for (attr, (_, value)) in &state.attrs {
            sink(&attr.to_le_bytes());
            let raw = value.to_raw();
            sink(&(raw.len() as u64).to_le_bytes());
            sink(&raw);
        }
        true
    }
}

/// A destroyed object keeps only its tombstone: the earliest destroy's stamp, so
/// every member records the same one. Its attributes and secret are dropped.
fn tombstone<S>(state: ObjectState<S>, stamp: Stamp) -> ObjectState<S> {
    let stamp = state.tombstone.map_or(stamp, |t| t.min(stamp));
    ObjectState {
        created: None,
        attrs: BTreeMap::new(),
        tombstone: Some(stamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hahsm_token::oplog::NewObject;
    use hahsm_token::{ck, Hlc};

    fn stamp(ms: u64, origin: MemberId) -> Stamp {
        Stamp {
            hlc: Hlc {
                wall_ms: ms,
                logical: 0,
            },
            origin,
        }
    }

    fn op(origin: MemberId, seq: u64, ms: u64, body: OpBody<u8>) -> Op<u8> {
        Op {
            seq,
            stamp: stamp(ms, origin),
            client_op_id: None,
            body,
        }
    }

    fn label(s: &str) -> Template {
        Template::new().with(ck::CKA_LABEL, AttrValue::Bytes(s.as_bytes().to_vec()))
    }

    fn create(id: u8, l: &str) -> OpBody<u8> {
        OpBody::Create {
            objects: vec![NewObject {
                ouid: Ouid([id; 16]),
                attrs: label(l),
                sealed_secret: Some(id),
            }],
        }
    }

    #[test]
    fn a_batch_is_planned_without_changing_the_state_and_commits_as_applying_in_turn() {
        let x = Ouid([3; 16]);
        let mut r = Replica::new();
        r.apply(&op(1, 1, 10, create(9, "other")));
        let batch = vec![
            op(1, 2, 20, create(3, "a")),
            op(
                1,
                3,
                30,
                OpBody::SetAttributes {
                    ouid: x,
                    attrs: label("b"),
                },
            ),
            op(2, 1, 25, OpBody::Destroy { ouid: x }),
            // A duplicate within the batch, and a gap.
            op(
                1,
                3,
                30,
                OpBody::SetAttributes {
                    ouid: x,
                    attrs: label("b"),
                },
            ),
            op(2, 3, 40, create(4, "gap")),
        ];
        let before = r.clone();
        let plans = r.plan_batch(&batch);
        assert_eq!(r, before, "planning changed the state");
        assert!(matches!(plans[3], Plan::Duplicate), "{:?}", plans[3]);
        assert_eq!(plans[4], Plan::Gap { expected: 2 });
        let mut one_by_one = before.clone();
        for o in &batch {
            one_by_one.apply(o);
        }
        for plan in plans {
            r.commit(plan);
        }
        assert_eq!(r, one_by_one);
        assert!(r.is_tombstoned(&x));
        assert_eq!(r.version_vector().get(1), 3);
        assert_eq!(r.version_vector().get(2), 1);
    }

    #[test]
    fn joining_a_peers_states_gives_what_applying_its_operations_gives() {
        let (x, y, z) = (Ouid([1; 16]), Ouid([2; 16]), Ouid([3; 16]));
        let rename = |ouid, l: &str| OpBody::SetAttributes {
            ouid,
            attrs: label(l),
        };
        // Origin 1's operations 1..=4 and origin 2's 1..=3.
        let ones = [
            op(1, 1, 10, create(1, "x")),
            op(1, 2, 11, create(2, "y")),
            op(1, 3, 40, rename(x, "x by 1, late")),
            op(1, 4, 50, OpBody::Destroy { ouid: y }),
        ];
        let twos = [
            op(2, 1, 20, rename(x, "x by 2")),
            op(2, 2, 30, rename(y, "y by 2")),
            op(2, 3, 35, create(3, "z")),
        ];
        // One member applied 1..=2 of origin 1 and all of origin 2; the other
        // all of origin 1 and 1 of origin 2 (so: a ghost rename of x there).
        let mut a = Replica::new();
        for o in ones[..2].iter().chain(&twos) {
            a.apply(o);
        }
        let mut b = Replica::new();
        for o in ones.iter().chain(&twos[..1]) {
            b.apply(o);
        }
        let mut everything = Replica::new();
        for o in ones.iter().chain(&twos) {
            everything.apply(o);
        }
        for (into, from) in [(a.clone(), &b), (b.clone(), &a)] {
            let mut into = into;
            let states: Vec<_> = from.states().map(|(o, s)| (*o, s.clone())).collect();
            let before = into.clone();
            let changes = into.plan_states(&states);
            assert_eq!(into, before, "planning changed the state");
            into.commit_states(changes, Some(from.version_vector()));
            assert_eq!(into, everything);
            // Joining again changes nothing.
            assert!(into.plan_states(&states).is_empty());
        }
        assert!(everything.is_tombstoned(&y));
        assert_eq!(
            everything.get(&x).unwrap().template().label().as_deref(),
            Some("x by 1, late")
        );
        assert!(everything.get(&z).unwrap().is_live());
    }

    #[test]
    fn gaps_and_duplicates_are_not_applied() {
        let mut r = Replica::new();
        assert_eq!(r.plan(&op(1, 2, 10, create(1, "a"))), Plan::Gap { expected: 1 });
        r.apply(&op(1, 1, 10, create(1, "a")));
        assert_eq!(r.plan(&op(1, 1, 10, create(1, "a"))), Plan::Duplicate);
        assert_eq!(r.version_vector().get(1), 1);
    }

    #[test]
    fn a_tombstone_beats_a_later_rename_and_a_late_create() {
        let x = Ouid([7; 16]);
        let mut r = Replica::new();
        r.apply(&op(2, 1, 50, OpBody::Destroy { ouid: x }));
        r.apply(&op(1, 1, 10, create(7, "x")));
        r.apply(&op(
            1,
            2,
            90,
            OpBody::SetAttributes {
                ouid: x,
                attrs: label("renamed"),
            },
        ));
        assert!(!r.get(&x).unwrap().is_live());
        assert_eq!(r.live_count(), 0);
    }

    #[test]
    fn attributes_merge_per_attribute_by_stamp_in_any_order() {
        let x = Ouid([1; 16]);
        let ops = vec![
            op(1, 1, 10, create(1, "orig")),
            op(
                2,
                1,
                30,
                OpBody::SetAttributes {
                    ouid: x,
                    attrs: label("by-2"),
                },
            ),
            op(
                3,
                1,
                20,
                OpBody::SetAttributes {
                    ouid: x,
                    attrs: label("by-3").with(ck::CKA_ID, AttrValue::Bytes(vec![3])),
                },
            ),
        ];
        let mut first = Replica::new();
        for o in &ops {
            first.apply(o);
        }
        let mut second = Replica::new();
        for o in ops.iter().rev() {
            second.apply(o);
        }
        assert_eq!(first, second);
        let t = first.get(&x).unwrap().template();
        assert_eq!(t.label().as_deref(), Some("by-2"));
        assert_eq!(t.bytes(ck::CKA_ID), Some(&[3u8][..]));
    }

    #[test]
    fn a_rename_that_arrives_before_its_create_is_kept() {
        let x = Ouid([4; 16]);
        let mut r = Replica::new();
        r.apply(&op(
            2,
            1,
            30,
            OpBody::SetAttributes {
                ouid: x,
                attrs: label("new"),
            },
        ));
        assert!(!r.get(&x).unwrap().is_live(), "a ghost is invisible");
        r.apply(&op(1, 1, 10, create(4, "old")));
        assert_eq!(r.get(&x).unwrap().template().label().as_deref(), Some("new"));
    }

    #[test]
    fn clear_destroys_only_what_it_names() {
        let mut r = Replica::new();
        r.apply(&op(1, 1, 10, create(1, "a")));
        r.apply(&op(2, 1, 11, create(2, "b")));
        r.apply(&op(
            1,
            2,
            20,
            OpBody::Clear {
                destroyed: vec![Ouid([1; 16])],
            },
        ));
        assert_eq!(r.live().map(|(o, _)| *o).collect::<Vec<_>>(), vec![Ouid([2; 16])]);
    }

    #[test]
    fn version_vectors_say_what_a_peer_lacks() {
        let mine = VersionVector([(1, 5), (2, 3)].into_iter().collect());
        let peer = VersionVector([(1, 5), (2, 1), (3, 2)].into_iter().collect());
        assert_eq!(mine.ahead_of(&peer), vec![(2, 1)]);
        assert!(!mine.covers(&peer));
        assert!(VersionVector([(1, 5), (2, 3), (3, 2)].into_iter().collect()).covers(&peer));
    }
}
