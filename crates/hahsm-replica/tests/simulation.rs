//! A seeded, deterministic simulation of 3 to 5 members replicating one
//! partition through [`Replica`], checking the engine's guarantees under random
//! interleavings of writes, partitions, message loss, duplication and
//! reordering, clock drift and restarts.
//!
//! Each member holds a `Replica<u64>` (the secret of an object is a number that
//! names the operation that created it) and a log of every operation it applied.
//! Members push their own operations to their peers, and anti-entropy pulls "the
//! operations of origin X after sequence N" from a peer's log, driven by version
//! vectors. After a random schedule the network heals, anti-entropy runs until
//! nothing moves, and the invariants are checked against the list of every
//! operation generated:
//!
//! 1. convergence: every replica equal, with equal canonical bytes;
//! 2. no lost write: every operation covered by every version vector, and every
//!    object created and never destroyed live everywhere with its secret;
//! 3. no resurrection: a destroyed object is live nowhere, at the end and (per
//!    member) at any time after that member applied the destroy;
//! 4. last-writer-wins per attribute, by the greatest stamp among all writes.
//!
//! Members also **compact** their logs at random (any prefix of an origin's
//! operations they have applied, as a member does after the log retention),
//! and a pull that asks for operations a peer no longer logs is answered with
//! that peer's **snapshot**: its states in pages of a few OUIDs each, each
//! page read from the sender's state as it is when the page is asked for, so
//! that writes land between pages; the receiver joins each page and raises its
//! version vector to what the first page covered only after the last one. The
//! invariants above must hold all the same.
//!
//! Checked at every step as well: gap and duplicate plans change nothing; a
//! member applies each origin's operations in order; a local write's stamp is
//! greater than every stamp its member has applied (so a write made after
//! seeing another wins over it); and at each restart, replaying the member's log
//! origin by origin, in a random order of origins, rebuilds the same replica.
//!
//! The default run is 2000 seeds of 300 steps and 60 seeds of 3000 steps.
//! Replaying a seed and soaking:
//!
//! ```text
//! HAHSM_SIM_SEED=1234 HAHSM_SIM_STEPS=300 HAHSM_SIM_TRACE=1 \
//!     cargo test -p hahsm-replica --test simulation random_schedules -- --nocapture
//! HAHSM_SIM_SEEDS=200000 HAHSM_SIM_STEPS=1000 cargo test -p hahsm-replica --test simulation random_schedules
//! ```
//!
//! `HAHSM_SIM_SEED` runs that seed only, `HAHSM_SIM_SEEDS` runs N seeds from
//! `HAHSM_SIM_FIRST_SEED` (0 unless given), `HAHSM_SIM_STEPS` sets the steps per
//! seed (300 unless given), and `HAHSM_SIM_TRACE=1` prints every event. A
//! failure prints its seed, its invariant and the command that replays it.

use hahsm_replica::{ObjectState, Plan, Replica, VersionVector};
use hahsm_token::oplog::{NewObject, Op, OpBody, Stamp};
use hahsm_token::{ck, AttrType, AttrValue, Hlc, MemberId, Ouid, Template};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;

/// Many short schedules: (seeds, steps per seed).
const SHORT: (u64, usize) = (2000, 300);
/// Fewer long histories: deep gaps, pulls answered in several batches, re-imports.
const LONG: (u64, usize) = (60, 3000);
/// At most this many operations answer one pull; the puller asks again for more.
const MAX_BATCH: usize = 8;
/// Anti-entropy rounds after healing before the simulation gives up on quiescence.
const MAX_SETTLE_ROUNDS: usize = 20;
/// Wall clocks start near a real epoch time, so that drift never goes below zero.
const EPOCH_MS: i64 = 1_700_000_000_000;

// ---------------------------------------------------------------------------
// The seeded random schedules.

#[test]
fn random_schedules_keep_every_invariant() {
    let trace = std::env::var("HAHSM_SIM_TRACE").is_ok_and(|v| v == "1");
    let steps = env_u64("HAHSM_SIM_STEPS").map(|s| s as usize);
    let runs = match (env_u64("HAHSM_SIM_SEED"), env_u64("HAHSM_SIM_SEEDS")) {
        (Some(seed), _) => vec![(seed..seed + 1, steps.unwrap_or(SHORT.1))],
        (None, Some(n)) => {
            let first = env_u64("HAHSM_SIM_FIRST_SEED").unwrap_or(0);
            vec![(first..first + n, steps.unwrap_or(SHORT.1))]
        }
        (None, None) => match steps {
            Some(steps) => vec![(0..SHORT.0, steps)],
            None => vec![(0..SHORT.0, SHORT.1), (0..LONG.0, LONG.1)],
        },
    };
    for (seeds, steps) in runs {
        let n = seeds.end - seeds.start;
        let mut totals = Stats::default();
        for seed in seeds {
            totals.add(&run_seed(seed, steps, trace));
        }
        eprintln!("simulation: {n} seeds x {steps} steps: {totals:?}");
        // The schedules must reach the interesting paths, or the invariants prove little.
        if n >= 50 {
            let t = &totals;
            let per_seed = steps as u64 / 10;
            assert!(t.ops > n * per_seed, "too few operations: {t:?}");
            assert!(
                t.destroys > n && t.reimports > 0,
                "too few destroys or re-imports: {t:?}"
            );
            assert!(
                t.gaps > n && t.duplicates > n,
                "too few gaps or duplicates: {t:?}"
            );
            assert!(
                t.ghosts > 0,
                "no attribute change arrived before its create: {t:?}"
            );
            assert!(t.late_writes > 0, "no write arrived after a destroy: {t:?}");
            assert!(
                t.split_ops > n && t.restarts > n,
                "too few splits or restarts: {t:?}"
            );
            assert!(t.continued_pulls > 0, "no pull needed a second batch: {t:?}");
            assert!(
                t.compactions > n && t.snapshots > 0 && t.snapshot_pages > t.snapshots,
                "too few compactions, or no snapshot of more than one page: {t:?}"
            );
        }
    }
}

/// One seed: a random cluster, a random schedule, then heal, settle and check.
fn run_seed(seed: u64, steps: usize, trace: bool) -> Stats {
    let mut rng = Rng::new(seed);
    let size = 3 + rng.below(3) as usize;
    let replay = format!(
        "HAHSM_SIM_SEED={seed} HAHSM_SIM_STEPS={steps} HAHSM_SIM_TRACE=1 \
         cargo test -p hahsm-replica --test simulation random_schedules -- --nocapture"
    );
    let mut sim = Cluster::new(format!("seed {seed}"), replay, rng, size);
    sim.trace = trace;
    sim.loss_percent = sim.rng.below(25);
    sim.dup_percent = sim.rng.below(10);
    sim.trace(|| {
        let ids: Vec<MemberId> = sim.members.iter().map(|m| m.id).collect();
        format!(
            "members {ids:?}, loss {}%, duplication {}%",
            sim.loss_percent, sim.dup_percent
        )
    });
    for step in 0..steps {
        sim.step = step;
        sim.random_step();
    }
    sim.step = steps;
    sim.trace(|| "heal everything and settle".into());
    sim.heal();
    sim.settle();
    sim.check_final();
    sim.stats
}

impl Cluster {
    fn random_step(&mut self) {
        self.now += self.rng.below(4);
        let n = self.members.len();
        let m = self.rng.index(n);
        match self.rng.below(100) {
            0..=29 => {
                if !self.members[m].down {
                    self.random_op(m);
                }
            }
            30..=69 => self.deliver_random(true),
            70..=79 => {
                let peer = self.rng.index(n);
                if peer != m && !self.members[m].down {
                    self.send(
                        m,
                        peer,
                        Msg::Digest(self.members[m].replica.version_vector().clone()),
                    );
                }
            }
            80..=82 => {
                if self.rng.chance(50) {
                    self.split();
                } else {
                    self.heal_links();
                }
            }
            83..=85 => {
                if self.members[m].down {
                    self.restart(m);
                } else {
                    self.crash(m);
                }
            }
            86..=87 => {
                // An NTP step or a badly set clock: the wall clock jumps.
                let jump = self.rng.below(601) as i64 - 300;
                self.members[m].clock.offset_ms += jump;
                self.trace(|| format!("m{m} clock jumps {jump} ms"));
            }
            88..=89 => {
                // A "synchronize": a member re-sends an old operation from its log.
                let logged: Vec<usize> = self.members[m]
                    .by_seq
                    .values()
                    .flat_map(|l| l.values().copied())
                    .collect();
                if !logged.is_empty() && !self.members[m].down {
                    let op = self.members[m].log[logged[self.rng.index(logged.len())]].clone();
                    let peer = self.rng.index(n);
                    if peer != m {
                        self.trace(|| format!("m{m} re-sends {} to m{peer}", show_op(&op)));
                        self.send(m, peer, Msg::Push(op));
                    }
                }
            }
            90..=91 => {
                // The log retention: a member drops a prefix of one origin's
                // operations, whether or not its peers have them.
                let vv = self.members[m].replica.version_vector().clone();
                if !vv.0.is_empty() {
                    let origins: Vec<MemberId> = vv.0.keys().copied().collect();
                    let origin = origins[self.rng.index(origins.len())];
                    let floor = self.members[m].floor.get(origin);
                    let upto = floor + self.rng.below(vv.get(origin) - floor + 1);
                    self.members[m].compact(origin, upto);
                    self.stats.compactions += 1;
                    self.trace(|| format!("m{m} compacts origin {origin} up to {upto}"));
                }
            }
            _ => self.deliver_random(true),
        }
    }

    /// A random local write on member `m`, on objects `m` can see.
    fn random_op(&mut self, m: usize) {
        let live: Vec<Ouid> = self.members[m].replica.live().map(|(o, _)| *o).collect();
        let roll = self.rng.below(100);
        let body = if live.is_empty() || roll < 35 {
            let pair = self.rng.chance(25);
            let mut objects = Vec::new();
            if pair {
                objects.push(NewObject {
                    ouid: self.rng.ouid(),
                    attrs: self.new_attrs(false),
                    sealed_secret: None,
                });
            }
            // Now and then an object comes back as a new create of an OUID the
            // member already knows, live or destroyed: a re-import from a backup.
            let known: Vec<Ouid> = self.members[m].replica.states().map(|(o, _)| *o).collect();
            let ouid = if !known.is_empty() && self.rng.chance(4) {
                self.stats.reimports += 1;
                known[self.rng.index(known.len())]
            } else {
                self.rng.ouid()
            };
            objects.push(NewObject {
                ouid,
                attrs: self.new_attrs(true),
                // Filled in by `local_op`, which knows the sequence number.
                sealed_secret: Some(0),
            });
            OpBody::Create { objects }
        } else if roll < 80 {
            let ouid = live[self.rng.index(live.len())];
            let mut attrs = Template::new();
            while attrs.is_empty() {
                if self.rng.chance(50) {
                    attrs.set(ck::CKA_LABEL, AttrValue::Bytes(self.fresh_bytes("label")));
                }
                if self.rng.chance(50) {
                    attrs.set(ck::CKA_ID, AttrValue::Bytes(self.fresh_bytes("id")));
                }
                if self.rng.chance(40) {
                    attrs.set(ck::CKA_SIGN, AttrValue::Bool(self.rng.chance(50)));
                }
            }
            OpBody::SetAttributes { ouid, attrs }
        } else if roll < 99 {
            OpBody::Destroy {
                ouid: live[self.rng.index(live.len())],
            }
        } else {
            OpBody::Clear { destroyed: live }
        };
        self.local_op(m, body);
    }

    fn new_attrs(&mut self, private: bool) -> Template {
        let t = Template::new()
            .with(ck::CKA_LABEL, AttrValue::Bytes(self.fresh_bytes("label")))
            .with(ck::CKA_ID, AttrValue::Bytes(self.fresh_bytes("id")));
        if private {
            t.with(ck::CKA_SIGN, AttrValue::Bool(self.rng.chance(50)))
        } else {
            t.with(ck::CKA_VERIFY, AttrValue::Bool(true))
        }
    }

    /// A value no other write uses, so that a wrong winner shows.
    fn fresh_bytes(&mut self, what: &str) -> Vec<u8> {
        self.counter += 1;
        format!("{what}-{}", self.counter).into_bytes()
    }
}

// ---------------------------------------------------------------------------
// Targeted scenarios from the report's HA test plan (§3.4).

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

/// 3.4.5: a key renamed while a member is cut off has the new label on every
/// member once the member is back.
#[test]
fn s3_4_5_rename_while_a_member_is_partitioned_reaches_it_after_healing() {
    let mut sim = Cluster::scenario("3.4.5 rename", 3);
    let x = sim.create(A, "old");
    sim.settle();
    sim.partition(&[&[A, B], &[C]]);
    sim.rename(A, x, "new");
    sim.settle();
    assert_eq!(sim.label(A, x).as_deref(), Some("new"));
    assert_eq!(
        sim.label(C, x).as_deref(),
        Some("old"),
        "C is cut off and must not see the rename yet"
    );
    sim.heal();
    sim.settle();
    for m in [A, B, C] {
        assert_eq!(sim.label(m, x).as_deref(), Some("new"), "member {m}");
    }
    sim.check_final();
}

/// 3.4.5, the other way round: the cut-off member renames, and the change
/// reaches the others; a later rename elsewhere still wins over it.
#[test]
fn s3_4_5_rename_on_the_partitioned_member_reaches_the_others() {
    let mut sim = Cluster::scenario("3.4.5 rename on the cut-off side", 3);
    let x = sim.create(A, "old");
    sim.settle();
    sim.partition(&[&[A, B], &[C]]);
    // C also restarts while cut off: it recovers its clock from its log.
    sim.crash(C);
    sim.restart(C);
    sim.rename(C, x, "by-c");
    sim.settle();
    sim.heal();
    sim.settle();
    for m in [A, B, C] {
        assert_eq!(sim.label(m, x).as_deref(), Some("by-c"), "member {m}");
    }
    sim.rename(B, x, "by-b-later");
    sim.settle();
    for m in [A, B, C] {
        assert_eq!(sim.label(m, x).as_deref(), Some("by-b-later"), "member {m}");
    }
    sim.check_final();
}

/// Concurrent renames on both sides of a split resolve to the same label on
/// every member: the one with the greatest stamp, whichever clock runs fast.
#[test]
fn s3_4_5_concurrent_renames_pick_one_winner_everywhere() {
    let mut sim = Cluster::scenario("3.4.5 concurrent renames", 3);
    sim.members[C].clock.offset_ms = 5_000; // C's clock runs well ahead
    let x = sim.create(A, "old");
    sim.settle();
    sim.partition(&[&[A, B], &[C]]);
    sim.rename(A, x, "by-a");
    sim.rename(C, x, "by-c");
    let ida = AttrValue::Bytes(b"id-a".to_vec());
    sim.local_op(
        A,
        OpBody::SetAttributes {
            ouid: x,
            attrs: Template::new().with(ck::CKA_ID, ida.clone()),
        },
    );
    sim.settle();
    sim.heal();
    sim.settle();
    for m in [A, B, C] {
        // C's stamp is greater (its wall clock is ahead); A's CKA_ID change
        // touches another attribute, so it survives beside C's label.
        assert_eq!(sim.label(m, x).as_deref(), Some("by-c"), "member {m}");
        assert_eq!(sim.attr(m, x, ck::CKA_ID), Some(ida.clone()), "member {m}");
    }
    sim.check_final();
}

/// 3.4.6: objects created on both sides of a split all exist everywhere once it
/// heals, with their secrets.
#[test]
fn s3_4_6_creates_on_both_sides_of_a_split_all_survive() {
    let mut sim = Cluster::scenario("3.4.6 split-brain create", 3);
    sim.create(A, "before");
    sim.settle();
    sim.partition(&[&[A, B], &[C]]);
    let mut made = Vec::new();
    for (m, l) in [(A, "a1"), (B, "b1"), (C, "c1"), (C, "c2"), (A, "a2")] {
        made.push((sim.create(m, l), l));
    }
    // A key pair on the cut-off side: two objects in one operation.
    sim.local_op(
        C,
        OpBody::Create {
            objects: vec![
                NewObject {
                    ouid: Ouid([0xC0; 16]),
                    attrs: label("c-pub"),
                    sealed_secret: None,
                },
                NewObject {
                    ouid: Ouid([0xC1; 16]),
                    attrs: label("c-priv"),
                    sealed_secret: Some(0),
                },
            ],
        },
    );
    made.push((Ouid([0xC0; 16]), "c-pub"));
    made.push((Ouid([0xC1; 16]), "c-priv"));
    sim.settle();
    assert_eq!(sim.members[A].replica.live_count(), 4);
    assert_eq!(sim.members[C].replica.live_count(), 5);
    sim.heal();
    sim.settle();
    for m in [A, B, C] {
        assert_eq!(sim.members[m].replica.live_count(), 8, "member {m}");
        for (x, l) in &made {
            assert_eq!(sim.label(m, *x).as_deref(), Some(*l), "member {m}");
        }
    }
    sim.check_final();
}

/// 3.4.7: objects deleted on either side of a split stay deleted everywhere;
/// neither a concurrent rename, nor re-sending the old create operations (a
/// "synchronize"), nor the same objects sent again as new operations bring
/// them back.
#[test]
fn s3_4_7_deletes_on_either_side_stay_deleted_and_synchronize_does_not_resurrect() {
    let mut sim = Cluster::scenario("3.4.7 split-brain delete", 3);
    let x = sim.create(A, "x");
    let y = sim.create(B, "y");
    let z = sim.create(C, "z");
    sim.settle();
    sim.partition(&[&[A, B], &[C]]);
    sim.local_op(A, OpBody::Destroy { ouid: x });
    sim.local_op(C, OpBody::Destroy { ouid: y });
    sim.rename(C, x, "renamed-on-the-other-side");
    sim.rename(A, y, "renamed-on-the-other-side");
    sim.settle();
    assert!(
        sim.is_live(C, x) && sim.is_live(A, y),
        "each side still sees what the other deleted"
    );
    sim.heal();
    sim.settle();
    for m in [A, B, C] {
        assert!(!sim.is_live(m, x) && !sim.is_live(m, y), "member {m}");
        assert!(sim.is_live(m, z), "member {m}");
    }

    // A "synchronize": every member re-sends every create in its log to every peer.
    for from in [A, B, C] {
        let creates: Vec<Op<u64>> = sim.members[from]
            .log
            .iter()
            .filter(|op| matches!(op.body, OpBody::Create { .. }))
            .cloned()
            .collect();
        for op in creates {
            for to in [A, B, C] {
                if to != from {
                    sim.send(from, to, Msg::Push(op.clone()));
                }
            }
        }
    }
    sim.settle();
    // Worse: a restored backup re-imports the objects as new operations.
    for (m, ouid) in [(A, x), (C, y)] {
        sim.local_op(
            m,
            OpBody::Create {
                objects: vec![NewObject {
                    ouid,
                    attrs: label("back"),
                    sealed_secret: Some(0),
                }],
            },
        );
    }
    sim.settle();
    for m in [A, B, C] {
        assert!(!sim.is_live(m, x) && !sim.is_live(m, y), "member {m}");
        assert!(sim.members[m].replica.is_tombstoned(&x) && sim.members[m].replica.is_tombstoned(&y));
        assert_eq!(sim.members[m].replica.live_count(), 1, "member {m}");
    }
    sim.check_final();
}

/// A member restored from a backup taken before the deletes catches up and
/// drops the deleted objects; the others do not get them back from it.
#[test]
fn s3_4_7_a_member_restored_from_an_old_backup_does_not_resurrect() {
    let mut sim = Cluster::scenario("3.4.7 old backup", 3);
    let x = sim.create(A, "x");
    let y = sim.create(B, "y");
    sim.settle();
    let backup = sim.members[C].replica.clone();
    let backup_log = sim.members[C].log.clone();
    sim.local_op(A, OpBody::Destroy { ouid: x });
    sim.local_op(B, OpBody::Clear { destroyed: vec![y] });
    sim.settle();
    sim.crash(C);
    let vv = backup.version_vector().clone();
    sim.members[C].replica = Replica::restore(vv, backup.states().map(|(o, s)| (*o, s.clone())));
    sim.members[C].set_log(backup_log);
    sim.members[C].destroyed_seen.clear();
    sim.restart(C);
    assert!(sim.is_live(C, x) && sim.is_live(C, y));
    sim.settle();
    for m in [A, B, C] {
        assert_eq!(sim.members[m].replica.live_count(), 0, "member {m}");
    }
    sim.check_final();
}

/// A member cut off for longer than the log retention: both sides compact
/// their whole logs, so each catches up from the other's snapshot. The
/// destroy made on one side holds on the other, whose copy was live; the
/// writes made on the cut-off side reach the majority; nothing else moves.
#[test]
fn a_member_back_after_the_retention_catches_up_by_snapshot_with_nothing_lost_or_resurrected() {
    let mut sim = Cluster::scenario("back after the retention", 3);
    let x = sim.create(A, "x");
    let y = sim.create(B, "y");
    sim.settle();
    sim.partition(&[&[A, B], &[C]]);
    sim.local_op(A, OpBody::Destroy { ouid: x });
    sim.rename(B, y, "renamed by the majority");
    let w = sim.create(C, "made while cut off");
    sim.rename(C, x, "renamed on the cut-off side");
    // Enough objects that a snapshot takes several pages.
    let many: Vec<Ouid> = (0..3 * MAX_BATCH)
        .map(|i| sim.create(A, &format!("n{i}")))
        .collect();
    sim.settle();
    for m in [A, B, C] {
        let vv = sim.members[m].replica.version_vector().clone();
        for (origin, seq) in vv.0 {
            sim.members[m].compact(origin, seq);
        }
    }
    sim.heal();
    sim.settle();
    assert!(sim.stats.snapshots >= 2, "{:?}", sim.stats);
    assert!(sim.stats.snapshot_pages > sim.stats.snapshots, "{:?}", sim.stats);
    for m in [A, B, C] {
        assert!(!sim.is_live(m, x), "member {m}: the destroyed key came back");
        assert!(sim.members[m].replica.is_tombstoned(&x));
        assert_eq!(
            sim.label(m, y).as_deref(),
            Some("renamed by the majority"),
            "member {m}"
        );
        assert_eq!(
            sim.label(m, w).as_deref(),
            Some("made while cut off"),
            "member {m}"
        );
        assert!(many.iter().all(|o| sim.is_live(m, *o)), "member {m}");
    }
    sim.check_final();
}

/// Clearing a partition during a split destroys what the clearing side held,
/// and spares what the other side created meanwhile, the same way everywhere.
#[test]
fn clear_during_a_split_spares_objects_created_on_the_other_side() {
    let mut sim = Cluster::scenario("clear during a split", 4);
    let old: Vec<Ouid> = (0..3).map(|i| sim.create(i, "old")).collect();
    sim.settle();
    sim.partition(&[&[0, 1], &[2, 3]]);
    let fresh = sim.create(3, "created-during-the-split");
    sim.rename(2, old[0], "renamed-during-the-split");
    let destroyed: Vec<Ouid> = sim.members[0].replica.live().map(|(o, _)| *o).collect();
    sim.local_op(0, OpBody::Clear { destroyed });
    sim.settle();
    sim.heal();
    sim.settle();
    for m in 0..4 {
        let live: Vec<Ouid> = sim.members[m].replica.live().map(|(o, _)| *o).collect();
        assert_eq!(live, vec![fresh], "member {m}");
    }
    sim.check_final();
}

// ---------------------------------------------------------------------------
// The checks themselves must be able to fail: each test below damages every
// replica the same way (so that they still agree) and expects the named
// invariant to catch it.

fn damaged(edit: impl Fn(&mut BTreeMap<Ouid, ObjectState<u64>>, Ouid, Ouid)) {
    let mut sim = Cluster::scenario("damaged", 3);
    let kept = sim.create(A, "kept");
    let gone = sim.create(B, "gone");
    sim.rename(C, kept, "renamed");
    sim.local_op(A, OpBody::Destroy { ouid: gone });
    sim.settle();
    for member in &mut sim.members {
        let mut states: BTreeMap<Ouid, ObjectState<u64>> =
            member.replica.states().map(|(o, s)| (*o, s.clone())).collect();
        edit(&mut states, kept, gone);
        member.replica = Replica::restore(member.replica.version_vector().clone(), states);
    }
    sim.check_final();
}

#[test]
#[should_panic(expected = "invariant `no resurrection`")]
fn the_checks_catch_a_resurrection() {
    damaged(|states, kept, gone| {
        let copy = states[&kept].clone();
        states.insert(gone, copy);
    });
}

#[test]
#[should_panic(expected = "invariant `no lost write`")]
fn the_checks_catch_a_lost_object() {
    damaged(|states, kept, _| {
        states.remove(&kept);
    });
}

#[test]
#[should_panic(expected = "invariant `last writer wins per attribute`")]
fn the_checks_catch_a_wrong_lww_winner() {
    damaged(|states, kept, _| {
        let (stamp, _) = states[&kept].attrs[&ck::CKA_LABEL].clone();
        let older = AttrValue::Bytes(b"kept".to_vec());
        states
            .get_mut(&kept)
            .unwrap()
            .attrs
            .insert(ck::CKA_LABEL, (stamp, older));
    });
}

#[test]
#[should_panic(expected = "invariant `convergence`")]
fn the_checks_catch_divergence() {
    let mut sim = Cluster::scenario("divergence", 3);
    sim.create(A, "x");
    sim.settle();
    let y = sim.create(B, "y");
    sim.settle();
    // C is damaged: it lost y, yet its version vector says it has it.
    let vv = sim.members[C].replica.version_vector().clone();
    let states = sim.members[C]
        .replica
        .states()
        .filter(|(o, _)| **o != y)
        .map(|(o, s)| (*o, s.clone()));
    sim.members[C].replica = Replica::restore(vv, states.collect::<Vec<_>>());
    sim.check_final();
}

// ---------------------------------------------------------------------------
// The simulated cluster.

/// One member: its replica and op log (durable), its clock, and what the
/// simulation remembers about it.
struct Member {
    id: MemberId,
    replica: Replica<u64>,
    /// Every operation applied, own and remote, in the order applied.
    log: Vec<Op<u64>>,
    /// Per origin, the positions in `log` of the operations still logged, by
    /// sequence number: always exactly `floor + 1 ..= version vector`.
    by_seq: BTreeMap<MemberId, BTreeMap<u64, usize>>,
    /// Per origin, the operations no longer logged: compacted, or covered by a
    /// snapshot installed here. Their effects are in the replica.
    floor: VersionVector,
    /// Whether a snapshot was ever joined here: its pages may carry effects
    /// of operations beyond what it covered, which no log here holds.
    joined_snapshot: bool,
    hlc: Hlc,
    /// The greatest stamp this member has applied.
    max_applied: Option<Stamp>,
    next_seq: u64,
    clock: Clock,
    /// OUIDs this member has applied a destroy of: never live here again.
    destroyed_seen: BTreeSet<Ouid>,
    down: bool,
}

impl Member {
    fn set_log(&mut self, log: Vec<Op<u64>>) {
        self.by_seq.clear();
        self.floor = VersionVector::default();
        self.joined_snapshot = false;
        for (i, op) in log.iter().enumerate() {
            self.by_seq.entry(op.stamp.origin).or_default().insert(op.seq, i);
        }
        self.max_applied = log.iter().map(|op| op.stamp).max();
        self.log = log;
    }

    /// The operations of `origin` after `after`, from the log, in seq order;
    /// `None` when the log no longer holds the first of them (compacted).
    fn ops_after(&self, origin: MemberId, after: u64) -> Option<Vec<Op<u64>>> {
        if after < self.floor.get(origin) {
            return None;
        }
        let Some(logged) = self.by_seq.get(&origin) else {
            return Some(Vec::new());
        };
        Some(
            logged
                .range(after + 1..)
                .take(MAX_BATCH)
                .map(|(_, &i)| self.log[i].clone())
                .collect(),
        )
    }

    /// Drops `origin`'s operations up to `upto` from the log.
    fn compact(&mut self, origin: MemberId, upto: u64) {
        if let Some(logged) = self.by_seq.get_mut(&origin) {
            logged.retain(|seq, _| *seq > upto);
        }
        let floor = self.floor.0.entry(origin).or_default();
        *floor = (*floor).max(upto);
    }

    /// One page of this member's snapshot: up to `MAX_BATCH` states after
    /// `after`, and the OUID to ask the next page after, if any remain.
    fn snapshot_page(&self, after: Option<Ouid>) -> (Vec<(Ouid, ObjectState<u64>)>, Option<Ouid>) {
        let page: Vec<(Ouid, ObjectState<u64>)> = self
            .replica
            .states()
            .filter(|(o, _)| after.is_none_or(|a| **o > a))
            .take(MAX_BATCH)
            .map(|(o, s)| (*o, s.clone()))
            .collect();
        let next = (page.len() == MAX_BATCH).then(|| page[page.len() - 1].0);
        (page, next)
    }
}

/// A drifting wall clock: it runs `rate_permille`/1000 as fast as real time,
/// from an offset that jumps now and then.
struct Clock {
    offset_ms: i64,
    rate_permille: u64,
}

impl Clock {
    fn wall_ms(&self, now: u64) -> u64 {
        (EPOCH_MS + self.offset_ms + (now * self.rate_permille / 1000) as i64) as u64
    }
}

#[derive(Clone)]
enum Msg {
    /// A new operation, pushed by its origin (or re-sent by anyone).
    Push(Op<u64>),
    /// "Here is my version vector": the receiver pulls what it lacks.
    Digest(VersionVector),
    /// "Send me the operations of `origin` after `after`."
    Pull { origin: MemberId, after: u64 },
    /// The answer to a pull: operations of one origin, in seq order.
    Batch(Vec<Op<u64>>),
    /// The answer to a pull its sender can no longer serve from its log: one
    /// page of its states, the version vector its first page covered, and the
    /// OUID after which the next page starts.
    Snapshot {
        covers: VersionVector,
        states: Vec<(Ouid, ObjectState<u64>)>,
        next: Option<Ouid>,
    },
    /// "Send me the next page of your snapshot, after this OUID."
    SnapshotPull { covers: VersionVector, after: Ouid },
}

#[derive(Clone)]
struct Envelope {
    from: usize,
    to: usize,
    msg: Msg,
}

#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    ops: u64,
    destroys: u64,
    applied_remote: u64,
    gaps: u64,
    duplicates: u64,
    dropped: u64,
    ghosts: u64,
    late_writes: u64,
    split_ops: u64,
    restarts: u64,
    reimports: u64,
    continued_pulls: u64,
    compactions: u64,
    snapshot_pages: u64,
    snapshots: u64,
}

impl Stats {
    fn add(&mut self, s: &Stats) {
        self.ops += s.ops;
        self.destroys += s.destroys;
        self.applied_remote += s.applied_remote;
        self.gaps += s.gaps;
        self.duplicates += s.duplicates;
        self.dropped += s.dropped;
        self.ghosts += s.ghosts;
        self.late_writes += s.late_writes;
        self.split_ops += s.split_ops;
        self.restarts += s.restarts;
        self.reimports += s.reimports;
        self.continued_pulls += s.continued_pulls;
        self.compactions += s.compactions;
        self.snapshot_pages += s.snapshot_pages;
        self.snapshots += s.snapshots;
    }
}

struct Cluster {
    /// Names the run in failure messages: the seed, or the scenario.
    name: String,
    /// How to run it again, for failure messages.
    replay: String,
    rng: Rng,
    step: usize,
    /// Simulated real time, in ms.
    now: u64,
    members: Vec<Member>,
    /// The side of a partition each member is on: members talk only within a side.
    side: Vec<u8>,
    net: Vec<Envelope>,
    /// Every operation any member generated, in generation order.
    generated: Vec<Op<u64>>,
    loss_percent: u64,
    dup_percent: u64,
    counter: u64,
    trace: bool,
    stats: Stats,
}

impl Cluster {
    fn new(name: String, replay: String, mut rng: Rng, size: usize) -> Self {
        // Member ids are serial-like numbers, not in index order, so that the
        // origin tie-break is not the same as the member order.
        let mut ids = BTreeSet::new();
        while ids.len() < size {
            ids.insert(1 + rng.below(60));
        }
        let mut ids: Vec<MemberId> = ids.into_iter().collect();
        rng.shuffle(&mut ids);
        let members = ids
            .into_iter()
            .map(|id| Member {
                id,
                replica: Replica::new(),
                log: Vec::new(),
                by_seq: BTreeMap::new(),
                floor: VersionVector::default(),
                joined_snapshot: false,
                hlc: Hlc::default(),
                max_applied: None,
                next_seq: 1,
                clock: Clock {
                    offset_ms: rng.below(1001) as i64 - 500,
                    rate_permille: 950 + rng.below(101),
                },
                destroyed_seen: BTreeSet::new(),
                down: false,
            })
            .collect();
        Cluster {
            name,
            replay,
            rng,
            step: 0,
            now: 0,
            members,
            side: vec![0; size],
            net: Vec::new(),
            generated: Vec::new(),
            loss_percent: 0,
            dup_percent: 0,
            counter: 0,
            trace: false,
            stats: Stats::default(),
        }
    }

    /// A cluster for a scripted scenario: ids 1..=size, no loss, clocks in step.
    fn scenario(name: &str, size: usize) -> Self {
        let replay = "cargo test -p hahsm-replica --test simulation -- --nocapture".to_string();
        let mut sim = Cluster::new(format!("scenario {name}"), replay, Rng::new(0x5ce7_a210), size);
        for (i, m) in sim.members.iter_mut().enumerate() {
            m.id = i as MemberId + 1;
            m.clock = Clock {
                offset_ms: 0,
                rate_permille: 1000,
            };
        }
        sim
    }

    #[track_caller]
    fn fail(&self, invariant: &str, detail: impl Display) -> ! {
        panic!(
            "{}: invariant `{invariant}` violated at step {}: {detail}\n  replay: {}",
            self.name, self.step, self.replay
        )
    }

    fn trace(&self, line: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[{} t={}] {}", self.step, self.now, line());
        }
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        self.side[a] == self.side[b] && !self.members[a].down && !self.members[b].down
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if !self.members[from].down {
            self.net.push(Envelope { from, to, msg });
        }
    }

    // --- Writes.

    /// Member `m` writes `body` as its next operation: ticks its clock, applies
    /// it, logs it and pushes it to every peer. Secrets in creates are replaced
    /// by a number naming this operation and the object's position in it.
    fn local_op(&mut self, m: usize, mut body: OpBody<u64>) -> Op<u64> {
        let wall = self.members[m].clock.wall_ms(self.now);
        let member = &mut self.members[m];
        member.hlc = member.hlc.tick(wall);
        let stamp = Stamp {
            hlc: member.hlc,
            origin: member.id,
        };
        let seq = member.next_seq;
        member.next_seq += 1;
        if let OpBody::Create { objects } = &mut body {
            for (i, new) in objects.iter_mut().enumerate() {
                if new.sealed_secret.is_some() {
                    new.sealed_secret = Some(secret_of(stamp.origin, seq, i));
                }
            }
        }
        let op = Op {
            seq,
            stamp,
            client_op_id: None,
            body,
        };
        if let Some(max) = self.members[m].max_applied {
            if stamp <= max {
                self.fail(
                    "causal order",
                    format!("m{m}'s new stamp {stamp:?} is not after {max:?}, which it already applied"),
                );
            }
        }
        self.trace(|| format!("m{m} writes {}", show_op(&op)));
        match self.apply(m, &op) {
            Plan::Apply { .. } => {}
            other => self.fail(
                "local writes apply",
                format!("m{m} planned {other:?} for its own {op:?}"),
            ),
        }
        self.stats.ops += 1;
        if matches!(op.body, OpBody::Destroy { .. } | OpBody::Clear { .. }) {
            self.stats.destroys += 1;
        }
        if self.side.iter().any(|s| *s != self.side[0]) {
            self.stats.split_ops += 1;
        }
        self.generated.push(op.clone());
        for peer in 0..self.members.len() {
            if peer != m {
                self.send(m, peer, Msg::Push(op.clone()));
            }
        }
        op
    }

    fn create(&mut self, m: usize, l: &str) -> Ouid {
        let ouid = self.rng.ouid();
        self.local_op(
            m,
            OpBody::Create {
                objects: vec![NewObject {
                    ouid,
                    attrs: label(l),
                    sealed_secret: Some(0),
                }],
            },
        );
        ouid
    }

    fn rename(&mut self, m: usize, ouid: Ouid, l: &str) {
        self.local_op(
            m,
            OpBody::SetAttributes {
                ouid,
                attrs: label(l),
            },
        );
    }

    fn attr(&self, m: usize, ouid: Ouid, attr: AttrType) -> Option<AttrValue> {
        let state = self.members[m].replica.get(&ouid).filter(|s| s.is_live())?;
        state.attrs.get(&attr).map(|(_, v)| v.clone())
    }

    fn label(&self, m: usize, ouid: Ouid) -> Option<String> {
        match self.attr(m, ouid, ck::CKA_LABEL)? {
            AttrValue::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            _ => None,
        }
    }

    fn is_live(&self, m: usize, ouid: Ouid) -> bool {
        self.members[m].replica.get(&ouid).is_some_and(|s| s.is_live())
    }

    // --- Applying, with the checks that hold at every moment.

    fn apply(&mut self, m: usize, op: &Op<u64>) -> Plan<u64> {
        let origin = op.stamp.origin;
        let before = self.members[m].replica.version_vector().get(origin);
        if self.members[m]
            .replica
            .get(&first_ouid(op))
            .is_some_and(|s| s.tombstone.is_some())
            && !matches!(op.body, OpBody::Destroy { .. } | OpBody::Clear { .. })
            && op.seq == before + 1
        {
            self.stats.late_writes += 1;
        }
        if let OpBody::SetAttributes { ouid, .. } = &op.body {
            if self.members[m].replica.get(ouid).is_none() && op.seq == before + 1 {
                self.stats.ghosts += 1;
            }
        }
        let plan = self.members[m].replica.apply(op);
        let after = self.members[m].replica.version_vector().get(origin);
        match &plan {
            Plan::Duplicate | Plan::Gap { .. } => {
                if after != before {
                    self.fail(
                        "gaps and duplicates change nothing",
                        format!("m{m}: {plan:?} moved {before}->{after}"),
                    );
                }
                if let Plan::Gap { expected } = plan {
                    if expected != before + 1 || op.seq <= expected {
                        self.fail(
                            "gap plans",
                            format!("m{m} at {before}: op seq {} planned {plan:?}", op.seq),
                        );
                    }
                    self.stats.gaps += 1;
                } else {
                    if op.seq > before {
                        self.fail(
                            "duplicates",
                            format!("m{m} at {before}: op seq {} is not a duplicate", op.seq),
                        );
                    }
                    self.stats.duplicates += 1;
                }
                return plan;
            }
            Plan::Apply { changes, .. } => {
                if op.seq != before + 1 || after != op.seq {
                    self.fail(
                        "in-order apply",
                        format!("m{m} at {before} applied seq {} -> {after}", op.seq),
                    );
                }
                let member = &mut self.members[m];
                let index = member.log.len();
                let floor = member.floor.get(origin);
                let logged = member.by_seq.entry(origin).or_default();
                logged.insert(op.seq, index);
                if logged.len() as u64 != op.seq - floor || logged.keys().next() != Some(&(floor + 1)) {
                    self.fail(
                        "op log",
                        format!("m{m}'s log of origin {origin} is not {}..={}", floor + 1, op.seq),
                    );
                }
                member.log.push(op.clone());
                member.max_applied = member.max_applied.max(Some(op.stamp));
                let mut touched: Vec<Ouid> = changes.iter().map(|(o, _)| *o).collect();
                match &op.body {
                    OpBody::Create { objects } => touched.extend(objects.iter().map(|n| n.ouid)),
                    OpBody::SetAttributes { ouid, .. } | OpBody::Destroy { ouid } => touched.push(*ouid),
                    OpBody::Clear { destroyed } => touched.extend(destroyed.iter().copied()),
                }
                if let OpBody::Destroy { ouid } = &op.body {
                    member.destroyed_seen.insert(*ouid);
                }
                if let OpBody::Clear { destroyed } = &op.body {
                    member.destroyed_seen.extend(destroyed.iter().copied());
                }
                for ouid in touched {
                    let member = &self.members[m];
                    if member.destroyed_seen.contains(&ouid)
                        && member.replica.get(&ouid).is_some_and(|s| s.is_live())
                    {
                        self.fail(
                            "no resurrection",
                            format!(
                                "m{m} applied a destroy of {ouid}, yet after {} it is live",
                                show_op(op)
                            ),
                        );
                    }
                }
            }
        }
        plan
    }

    /// Member `m` receives an operation from a peer: its clock observes the
    /// stamp, then it applies it if it is next in line.
    fn receive(&mut self, m: usize, op: &Op<u64>) -> Plan<u64> {
        let wall = self.members[m].clock.wall_ms(self.now);
        let member = &mut self.members[m];
        member.hlc = member.hlc.observe(op.stamp.hlc, wall);
        let plan = self.apply(m, op);
        if matches!(plan, Plan::Apply { .. }) {
            self.stats.applied_remote += 1;
        }
        plan
    }

    // --- The network.

    /// Delivers one in-flight message, picked at random (so messages reorder).
    /// When `lossy`, it may be lost or duplicated.
    fn deliver_random(&mut self, lossy: bool) {
        if self.net.is_empty() {
            return;
        }
        let i = self.rng.index(self.net.len());
        let env = self.net.swap_remove(i);
        if !self.linked(env.from, env.to) || (lossy && self.rng.chance(self.loss_percent)) {
            self.stats.dropped += 1;
            self.trace(|| format!("drop m{}->m{} {}", env.from, env.to, show_msg(&env.msg)));
            return;
        }
        if lossy && self.rng.chance(self.dup_percent) {
            self.net.push(env.clone());
        }
        self.handle(env);
    }

    fn handle(&mut self, env: Envelope) {
        let Envelope { from, to, msg } = env;
        self.trace(|| format!("m{from}->m{to} {}", show_msg(&msg)));
        match msg {
            Msg::Push(op) => {
                if let Plan::Gap { .. } = self.receive(to, &op) {
                    let after = self.members[to].replica.version_vector().get(op.stamp.origin);
                    self.send(
                        to,
                        from,
                        Msg::Pull {
                            origin: op.stamp.origin,
                            after,
                        },
                    );
                }
            }
            Msg::Digest(theirs) => {
                for (origin, after) in theirs.ahead_of(self.members[to].replica.version_vector()) {
                    self.send(to, from, Msg::Pull { origin, after });
                }
            }
            Msg::Pull { origin, after } => {
                let Some(ops) = self.members[to].ops_after(origin, after) else {
                    // Compacted: the peer gets this member's states instead.
                    let covers = self.members[to].replica.version_vector().clone();
                    let (states, next) = self.members[to].snapshot_page(None);
                    self.send(to, from, Msg::Snapshot { covers, states, next });
                    return;
                };
                for (k, op) in ops.iter().enumerate() {
                    if op.seq != after + 1 + k as u64 || op.stamp.origin != origin {
                        self.fail(
                            "pulls answer in seq order",
                            format!("m{to} answered seq {} at {k}", op.seq),
                        );
                    }
                }
                if !ops.is_empty() {
                    self.send(to, from, Msg::Batch(ops));
                }
            }
            Msg::Batch(ops) => {
                let full = ops.len() == MAX_BATCH;
                let origin = ops[0].stamp.origin;
                for op in &ops {
                    if let Plan::Gap { .. } = self.receive(to, op) {
                        break;
                    }
                }
                if full {
                    self.stats.continued_pulls += 1;
                    let after = self.members[to].replica.version_vector().get(origin);
                    self.send(to, from, Msg::Pull { origin, after });
                }
            }
            Msg::SnapshotPull { covers, after } => {
                let (states, next) = self.members[to].snapshot_page(Some(after));
                self.send(to, from, Msg::Snapshot { covers, states, next });
            }
            Msg::Snapshot { covers, states, next } => {
                self.install(to, &states, next.is_none().then_some(&covers));
                if let Some(after) = next {
                    self.send(to, from, Msg::SnapshotPull { covers, after });
                }
            }
        }
    }

    /// Member `m` joins one page of a peer's snapshot into its replica and,
    /// after the last page, raises its version vector to what the snapshot
    /// covered; the operations it now covers without logging them are below
    /// its floor.
    fn install(&mut self, m: usize, states: &[(Ouid, ObjectState<u64>)], covers: Option<&VersionVector>) {
        self.stats.snapshot_pages += 1;
        let wall = self.members[m].clock.wall_ms(self.now);
        let member = &mut self.members[m];
        member.joined_snapshot = true;
        let changes = member.replica.plan_states(states);
        let touched: Vec<Ouid> = changes.iter().map(|(o, _)| *o).collect();
        let before = member.replica.version_vector().clone();
        member.replica.commit_states(changes, covers);
        for (ouid, state) in states {
            let stamps = state
                .created
                .iter()
                .map(|c| c.stamp)
                .chain(state.attrs.values().map(|(s, _)| *s))
                .chain(state.tombstone);
            for stamp in stamps {
                member.hlc = member.hlc.observe(stamp.hlc, wall);
                member.max_applied = member.max_applied.max(Some(stamp));
            }
            if state.tombstone.is_some() {
                member.destroyed_seen.insert(*ouid);
            }
        }
        if let Some(covers) = covers {
            for (origin, seq) in &covers.0 {
                if *seq > before.get(*origin) {
                    member.compact(*origin, *seq);
                }
            }
            self.stats.snapshots += 1;
        }
        for ouid in touched {
            let member = &self.members[m];
            if member.destroyed_seen.contains(&ouid) && member.replica.get(&ouid).is_some_and(|s| s.is_live())
            {
                self.fail(
                    "no resurrection",
                    format!("m{m} had applied a destroy of {ouid}, yet after a snapshot it is live"),
                );
            }
        }
    }

    // --- Faults.

    fn split(&mut self) {
        for s in self.side.iter_mut() {
            *s = self.rng.below(2) as u8;
        }
        let side = self.side.clone();
        self.trace(|| format!("partition {side:?}"));
    }

    fn partition(&mut self, groups: &[&[usize]]) {
        for (g, members) in groups.iter().enumerate() {
            for &m in members.iter() {
                self.side[m] = g as u8;
            }
        }
    }

    fn heal_links(&mut self) {
        self.side.iter_mut().for_each(|s| *s = 0);
        self.trace(|| "links heal".into());
    }

    /// Heals every link and restarts every member that is down.
    fn heal(&mut self) {
        self.heal_links();
        for m in 0..self.members.len() {
            if self.members[m].down {
                self.restart(m);
            }
        }
    }

    /// The member stops: every message to or from it is lost. Its replica and
    /// log are durable.
    fn crash(&mut self, m: usize) {
        self.members[m].down = true;
        self.net.retain(|e| e.from != m && e.to != m);
        self.trace(|| format!("m{m} crashes"));
    }

    /// The member starts again from its durable state: its replica rebuilt from
    /// the stored states, and its clock recovered from the log (an HLC must not
    /// fall behind the stamps the member already wrote or applied). Replaying
    /// its log origin by origin, in a random order of origins, must rebuild the
    /// very same replica: the merge does not depend on arrival order.
    fn restart(&mut self, m: usize) {
        let member = &self.members[m];
        let vv = member.replica.version_vector().clone();
        let restored = Replica::restore(vv, member.replica.states().map(|(o, s)| (*o, s.clone())));
        let mut origins: Vec<MemberId> = member.by_seq.keys().copied().collect();
        self.rng.shuffle(&mut origins);
        let member = &self.members[m];
        // Only a log that holds every operation can be replayed.
        let whole_log = member.floor.0.values().all(|f| *f == 0) && !member.joined_snapshot;
        let mut replayed = Replica::new();
        for origin in origins {
            for &i in member.by_seq[&origin].values() {
                replayed.apply(&member.log[i]);
            }
        }
        if (whole_log && replayed != member.replica) || restored != member.replica {
            self.fail(
                "order independence",
                format!("m{m}'s log replayed origin by origin differs from its replica"),
            );
        }
        let member = &mut self.members[m];
        member.replica = restored;
        // The greatest stamp it applied, from its log or its snapshots (the
        // store keeps the stamps of what it compacted away).
        member.hlc = member.max_applied.map(|s| s.hlc).unwrap_or_default();
        member.down = false;
        self.stats.restarts += 1;
        self.trace(|| format!("m{m} restarts"));
    }

    /// Anti-entropy until nothing moves: each round, every member sends its
    /// version vector to every peer it can reach and every message is
    /// delivered, without loss. Within a partition's sides only.
    fn settle(&mut self) {
        let n = self.members.len();
        for _ in 0..MAX_SETTLE_ROUNDS {
            let before: Vec<VersionVector> = self
                .members
                .iter()
                .map(|m| m.replica.version_vector().clone())
                .collect();
            for m in 0..n {
                for peer in 0..n {
                    if peer != m && self.linked(m, peer) {
                        let vv = self.members[m].replica.version_vector().clone();
                        self.send(m, peer, Msg::Digest(vv));
                    }
                }
            }
            let mut deliveries = 0usize;
            while !self.net.is_empty() {
                self.deliver_random(false);
                deliveries += 1;
                if deliveries > 1_000_000 {
                    self.fail("liveness", "anti-entropy keeps sending messages");
                }
            }
            let moved = self
                .members
                .iter()
                .zip(&before)
                .any(|(m, b)| m.replica.version_vector() != b);
            if !moved {
                return;
            }
        }
        self.fail(
            "liveness",
            format!("anti-entropy still moving after {MAX_SETTLE_ROUNDS} rounds"),
        );
    }

    // --- The invariants after healing and settling.

    fn check_final(&self) {
        let n = self.members.len();
        if let Some(m) = (0..n).find(|&m| self.members[m].down || self.side[m] != self.side[0]) {
            self.fail("harness", format!("check_final with m{m} down or cut off"));
        }

        // What the generated operations say the state must be.
        let mut last_seq: BTreeMap<MemberId, u64> = BTreeMap::new();
        let mut created: BTreeMap<Ouid, (Stamp, Option<u64>)> = BTreeMap::new();
        let mut destroyed: BTreeMap<Ouid, Stamp> = BTreeMap::new();
        let mut winners: BTreeMap<Ouid, BTreeMap<AttrType, (Stamp, AttrValue)>> = BTreeMap::new();
        let mut write = |ouid: Ouid, stamp: Stamp, attrs: &Template| {
            let object = winners.entry(ouid).or_default();
            for (attr, value) in attrs.iter() {
                if object.get(attr).is_none_or(|(s, _)| *s < stamp) {
                    object.insert(*attr, (stamp, value.clone()));
                }
            }
        };
        for op in &self.generated {
            let last = last_seq.entry(op.stamp.origin).or_default();
            *last = (*last).max(op.seq);
            match &op.body {
                OpBody::Create { objects } => {
                    for new in objects {
                        // Another creation of an existing OUID (a client write
                        // retried on another member): the latest is the one kept.
                        let entry = created.entry(new.ouid).or_insert((op.stamp, new.sealed_secret));
                        if op.stamp > entry.0 {
                            *entry = (op.stamp, new.sealed_secret);
                        }
                        write(new.ouid, op.stamp, &new.attrs);
                    }
                }
                OpBody::SetAttributes { ouid, attrs } => write(*ouid, op.stamp, attrs),
                OpBody::Destroy { ouid } => {
                    let t = destroyed.entry(*ouid).or_insert(op.stamp);
                    *t = (*t).min(op.stamp);
                }
                OpBody::Clear { destroyed: ouids } => {
                    for ouid in ouids {
                        let t = destroyed.entry(*ouid).or_insert(op.stamp);
                        *t = (*t).min(op.stamp);
                    }
                }
            }
        }
        let expected_vv = VersionVector(last_seq);

        // 2. No lost write: every operation applied everywhere.
        for (m, member) in self.members.iter().enumerate() {
            if member.replica.version_vector() != &expected_vv {
                self.fail(
                    "no lost write",
                    format!(
                        "m{m}'s version vector {:?}, generated {expected_vv:?}",
                        member.replica.version_vector()
                    ),
                );
            }
            // The log holds every operation above the floor, and applied
            // operations plus snapshot-covered ones make up everything.
            let logged: usize = member.by_seq.values().map(|l| l.len()).sum();
            if logged as u64 + member.floor.total() != expected_vv.total() {
                self.fail(
                    "no lost write",
                    format!(
                        "m{m}'s log has {logged} ops and its floor {:?}, of {} generated",
                        member.floor.0,
                        self.generated.len()
                    ),
                );
            }
        }

        // 1. Convergence.
        let first = &self.members[0].replica;
        let first_bytes = canonical(first);
        for (m, member) in self.members.iter().enumerate().skip(1) {
            if member.replica != *first {
                self.fail(
                    "convergence",
                    format!("m0 and m{m} differ: {}", first_difference(first, &member.replica)),
                );
            }
            if canonical(&member.replica) != first_bytes {
                self.fail(
                    "convergence",
                    format!("m0 and m{m} have different canonical bytes"),
                );
            }
        }

        for (m, member) in self.members.iter().enumerate() {
            let replica = &member.replica;
            // 3. No resurrection; and every member keeps the earliest destroy's stamp.
            for (ouid, stamp) in &destroyed {
                let state = replica.get(ouid);
                if state.is_none_or(|s| s.is_live()) {
                    self.fail(
                        "no resurrection",
                        format!(
                            "m{m}: {ouid} was destroyed at {stamp:?}, but its state is {}",
                            show_state(state)
                        ),
                    );
                }
                if state.and_then(|s| s.tombstone) != Some(*stamp) {
                    self.fail(
                        "tombstones keep the earliest destroy",
                        format!(
                            "m{m}: {ouid} first destroyed at {stamp:?}, state {}",
                            show_state(state)
                        ),
                    );
                }
            }
            // 2. No lost write: created and never destroyed means live, with its creating op's secret.
            for (ouid, (stamp, secret)) in &created {
                if destroyed.contains_key(ouid) {
                    continue;
                }
                match replica.get(ouid) {
                    Some(s)
                        if s.is_live()
                            && s.created
                                .as_ref()
                                .is_some_and(|c| c.stamp == *stamp && c.secret == *secret) => {}
                    other => self.fail(
                        "no lost write",
                        format!(
                            "m{m}: {ouid} created at {stamp:?} with secret {secret:?}, state {}",
                            show_state(other)
                        ),
                    ),
                }
            }
            // Nothing else is live, and no ghost is left waiting for a create.
            for (ouid, state) in replica.states() {
                let expected_live = created.contains_key(ouid) && !destroyed.contains_key(ouid);
                if state.is_live() != expected_live || (state.created.is_none() && state.tombstone.is_none())
                {
                    self.fail(
                        "no phantom object",
                        format!("m{m}: {ouid} has state {}", show_state(Some(state))),
                    );
                }
            }
            // 4. Last writer wins, per attribute: exactly the winning writes, with their stamps.
            for (ouid, state) in replica.live() {
                let want = winners.get(ouid).cloned().unwrap_or_default();
                if state.attrs != want {
                    self.fail(
                        "last writer wins per attribute",
                        format!(
                            "m{m}: {ouid} has {}, the greatest writes are {}",
                            show_attrs(&state.attrs),
                            show_attrs(&want)
                        ),
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers.

/// SplitMix64: small, fast and the same on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn ouid(&mut self) -> Ouid {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next().to_le_bytes());
        Ouid(bytes)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.index(i + 1));
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// The secret of the `index`th object of operation `seq` of `origin`.
fn secret_of(origin: MemberId, seq: u64, index: usize) -> u64 {
    (origin << 48) | (seq << 4) | index as u64
}

fn label(l: &str) -> Template {
    Template::new().with(ck::CKA_LABEL, AttrValue::Bytes(l.as_bytes().to_vec()))
}

fn first_ouid(op: &Op<u64>) -> Ouid {
    match &op.body {
        OpBody::Create { objects } => objects.first().map_or(Ouid([0; 16]), |n| n.ouid),
        OpBody::SetAttributes { ouid, .. } | OpBody::Destroy { ouid } => *ouid,
        OpBody::Clear { destroyed } => destroyed.first().copied().unwrap_or(Ouid([0; 16])),
    }
}

fn canonical(replica: &Replica<u64>) -> Vec<u8> {
    let mut bytes = Vec::new();
    replica.canonical(|b| bytes.extend_from_slice(b));
    bytes
}

fn first_difference(a: &Replica<u64>, b: &Replica<u64>) -> String {
    if a.version_vector() != b.version_vector() {
        return format!(
            "version vectors {:?} and {:?}",
            a.version_vector(),
            b.version_vector()
        );
    }
    let ouids: BTreeSet<&Ouid> = a.states().chain(b.states()).map(|(o, _)| o).collect();
    for ouid in ouids {
        if a.get(ouid) != b.get(ouid) {
            return format!(
                "{ouid}: {} and {}",
                show_state(a.get(ouid)),
                show_state(b.get(ouid))
            );
        }
    }
    "nothing visible".into()
}

fn short(ouid: &Ouid) -> String {
    ouid.to_string()[..8].to_string()
}

fn show_value(v: &AttrValue) -> String {
    match v {
        AttrValue::Bytes(b) => format!("{:?}", String::from_utf8_lossy(b)),
        other => format!("{other:?}"),
    }
}

fn show_attrs(attrs: &BTreeMap<AttrType, (Stamp, AttrValue)>) -> String {
    let parts: Vec<String> = attrs
        .iter()
        .map(|(a, (s, v))| {
            format!(
                "{a:#x}={} @{}.{}/{}",
                show_value(v),
                s.hlc.wall_ms,
                s.hlc.logical,
                s.origin
            )
        })
        .collect();
    format!("{{{}}}", parts.join(", "))
}

fn show_state(state: Option<&ObjectState<u64>>) -> String {
    match state {
        None => "absent".into(),
        Some(s) => format!(
            "created={:?} tombstone={:?} attrs={}",
            s.created.as_ref().map(|c| (c.stamp, c.secret)),
            s.tombstone,
            show_attrs(&s.attrs)
        ),
    }
}

fn show_op(op: &Op<u64>) -> String {
    let what = match &op.body {
        OpBody::Create { objects } => {
            format!(
                "create {}",
                objects
                    .iter()
                    .map(|n| short(&n.ouid))
                    .collect::<Vec<_>>()
                    .join("+")
            )
        }
        OpBody::SetAttributes { ouid, attrs } => format!(
            "set {} {}",
            short(ouid),
            attrs
                .iter()
                .map(|(a, v)| format!("{a:#x}={}", show_value(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        OpBody::Destroy { ouid } => format!("destroy {}", short(ouid)),
        OpBody::Clear { destroyed } => format!("clear {} objects", destroyed.len()),
    };
    format!(
        "{}#{} @{}.{} {what}",
        op.stamp.origin, op.seq, op.stamp.hlc.wall_ms, op.stamp.hlc.logical
    )
}

fn show_msg(msg: &Msg) -> String {
    match msg {
        Msg::Push(op) => format!("push {}", show_op(op)),
        Msg::Digest(vv) => format!("digest {:?}", vv.0),
        Msg::Pull { origin, after } => format!("pull origin {origin} after {after}"),
        Msg::Batch(ops) => format!(
            "batch {}#{}..{}",
            ops[0].stamp.origin,
            ops[0].seq,
            ops[ops.len() - 1].seq
        ),
        Msg::Snapshot { covers, states, next } => format!(
            "snapshot page of {} states covering {:?}, next after {:?}",
            states.len(),
            covers.0,
            next.as_ref().map(short)
        ),
        Msg::SnapshotPull { after, .. } => format!("snapshot pull after {}", short(after)),
    }
}
