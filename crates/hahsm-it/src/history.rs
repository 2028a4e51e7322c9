//! Histories of application operations, checked by a checker we did not
//! write: stateright's `LinearizabilityTester`, against the model of
//! docs/replication.md §12.
//!
//! The model is one register per key: it holds the key's label while the
//! key lives, and is `Destroyed` for good once the key is destroyed. A label
//! read answers the label or "gone"; a use (a signature) answers "usable" or
//! "gone"; a rename of a destroyed key answers "gone", or is accepted and
//! changes nothing (the tombstone wins). Under `quorum` the group is linearizable *up to
//! staleness bounds*: a read or a use may take effect as early as
//! `Bounds::read_us` before it was invoked (a member serves them only while it
//! holds the lease, so its state holds every write acknowledged more than
//! the lease before, ordered by stamp), a write or a destroy as early as
//! `Bounds::write_us` before (a write's stamp orders it among writes more than
//! twice the maximum clock offset apart), and each no later than it
//! returned. The check encodes exactly that: every invocation is moved its
//! bound earlier, then the history goes to the tester as it is.
//!
//! Outcomes: an answer is a return; a failed read is left out (it had no
//! effect); a failed write or destroy is *unknown* (it may have taken effect
//! on some member, and may still), so it is invoked and never returns.
use serde::{Deserialize, Serialize};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};
use std::collections::BTreeMap;

/// What an application asked for, on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// The key was made with this label (before any other operation on it).
    Create(String),
    SetLabel(String),
    ReadLabel,
    /// A signature with the key.
    Use,
    Destroy,
}

/// What it answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ret {
    Done,
    Label(String),
    Usable,
    /// The key does not exist (CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID).
    Gone,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Returned(Ret),
    /// A read that failed (with this error): no effect, left out of the check.
    Failed(String),
    /// A write that failed (with this error): it may take effect, or not.
    Unknown(String),
}

/// One operation of the history, with its times in microseconds since the
/// start of the run, on one clock. A history is a file of these, one JSON
/// object a line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub key: u32,
    /// The application thread that made it.
    pub process: u32,
    pub op: Op,
    pub invoked_us: u64,
    pub returned_us: u64,
    pub outcome: Outcome,
}

/// Reads a history file (one event a line).
pub fn read(path: &std::path::Path) -> Vec<Event> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

/// The model of one key (docs/replication.md §12).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyRegister {
    Live(String),
    Destroyed,
}

impl SequentialSpec for KeyRegister {
    type Op = Op;
    type Ret = Ret;

    fn invoke(&mut self, op: &Op) -> Ret {
        match (op, &*self) {
            (Op::Create(label) | Op::SetLabel(label), KeyRegister::Live(_)) => {
                *self = KeyRegister::Live(label.clone());
                Ret::Done
            }
            (Op::Create(_) | Op::SetLabel(_), KeyRegister::Destroyed) => Ret::Done,
            (Op::ReadLabel, KeyRegister::Live(label)) => Ret::Label(label.clone()),
            (Op::Use, KeyRegister::Live(_)) => Ret::Usable,
            (Op::ReadLabel | Op::Use, KeyRegister::Destroyed) => Ret::Gone,
            (Op::Destroy, _) => {
                *self = KeyRegister::Destroyed;
                Ret::Done
            }
        }
    }

    /// A rename or destroy of a destroyed key may also answer "gone": a
    /// member that has applied the destroy refuses it (a member that has
    /// not takes it, which changes nothing).
    fn is_valid_step(&mut self, op: &Op, ret: &Ret) -> bool {
        let destroyed = *self == KeyRegister::Destroyed;
        let done = self.invoke(op);
        &done == ret || (destroyed && matches!(op, Op::SetLabel(_) | Op::Destroy) && *ret == Ret::Gone)
    }
}

/// How much earlier than its invocation an operation may take effect.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// For reads and uses: the lease plus twice the maximum clock offset.
    pub read_us: u64,
    /// For renames and destroys: twice the maximum clock offset.
    pub write_us: u64,
}

impl Bounds {
    /// The bounds of a group with this lease and maximum clock offset.
    pub fn of(lease_ms: u64, max_offset_ms: u64) -> Bounds {
        Bounds {
            read_us: (lease_ms + 2 * max_offset_ms) * 1000,
            write_us: 2 * max_offset_ms * 1000,
        }
    }

    fn of_op(&self, op: &Op) -> u64 {
        match op {
            Op::ReadLabel | Op::Use => self.read_us,
            Op::Create(_) | Op::SetLabel(_) | Op::Destroy => self.write_us,
        }
    }
}

/// A key whose history the model cannot explain.
#[derive(Debug)]
pub struct Anomaly {
    pub key: u32,
    /// The fewest of its operations that still cannot be explained (as far
    /// as the shrinking got in its time).
    pub smallest: Vec<Event>,
    pub operations: usize,
}

impl std::fmt::Display for Anomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "key {}: {} operations, of which these {} are not linearizable (times in ms from the start):",
            self.key,
            self.operations,
            self.smallest.len()
        )?;
        for e in &self.smallest {
            writeln!(
                f,
                "  [{:>9.3} .. {:>9.3}] process {:>3} {:?} -> {:?}",
                e.invoked_us as f64 / 1000.0,
                e.returned_us as f64 / 1000.0,
                e.process,
                e.op,
                e.outcome
            )?;
        }
        Ok(())
    }
}

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    pub keys: usize,
    pub operations: usize,
    /// Failed reads, left out.
    pub failed_reads: usize,
    /// Writes and destroys of unknown outcome.
    pub unknown: usize,
    pub anomalies: Vec<Anomaly>,
}

/// Whether the operations of one key (its creation first) are linearizable
/// up to `bounds` under the model.
pub fn key_is_consistent(events: &[Event], bounds: Bounds) -> bool {
    let Some(Event {
        op: Op::Create(first),
        ..
    }) = events.first()
    else {
        return false;
    };
    // (time, 0 = invoke / 1 = return, operation): invocations first at a tie,
    // so that operations that touch in time count as concurrent.
    let mut marks: Vec<(u64, u8, usize)> = Vec::new();
    for (i, e) in events.iter().enumerate().skip(1) {
        let from = e.invoked_us.saturating_sub(bounds.of_op(&e.op));
        match &e.outcome {
            Outcome::Failed(_) => {}
            Outcome::Unknown(_) => marks.push((from, 0, i)),
            Outcome::Returned(_) => {
                marks.push((from, 0, i));
                marks.push((e.returned_us, 1, i));
            }
        }
    }
    marks.sort_unstable();
    let mut tester = LinearizabilityTester::new(KeyRegister::Live(first.clone()));
    for (_, kind, i) in marks {
        let e = &events[i];
        let step = if kind == 0 {
            tester.on_invoke(i, e.op.clone()).map(|_| ())
        } else if let Outcome::Returned(ret) = &e.outcome {
            tester.on_return(i, ret.clone()).map(|_| ())
        } else {
            Ok(())
        };
        if step.is_err() {
            return false;
        }
    }
    tester.is_consistent()
}

/// Checks a whole history, key by key (the keys are independent registers),
/// and shrinks the first ten keys that fail to the fewest operations that
/// still fail.
pub fn check(events: &[Event], bounds: Bounds) -> Report {
    let mut by_key: BTreeMap<u32, Vec<Event>> = BTreeMap::new();
    for e in events {
        by_key.entry(e.key).or_default().push(e.clone());
    }
    let mut report = Report {
        keys: by_key.len(),
        operations: events.len(),
        ..Report::default()
    };
    for e in events {
        match e.outcome {
            Outcome::Failed(_) => report.failed_reads += 1,
            Outcome::Unknown(_) => report.unknown += 1,
            Outcome::Returned(_) => {}
        }
    }
    for (key, mut ops) in by_key {
        // The creation first, then by invocation.
        ops.sort_by_key(|e| (!matches!(e.op, Op::Create(_)), e.invoked_us));
        if key_is_consistent(&ops, bounds) {
            continue;
        }
        // The first few are shrunk; a long run with many would spend its
        // time shrinking them all.
        let smallest = if report.anomalies.len() < 10 {
            shrink(ops.clone(), bounds)
        } else {
            ops.clone()
        };
        report.anomalies.push(Anomaly {
            key,
            operations: ops.len(),
            smallest,
        });
    }
    report
}

/// The writes a run lost, judged from the history and the labels every
/// member holds at the end (`final_labels`: key → label, absent when the key
/// is gone), the same on every member once they are in sync. Per key:
/// - a key whose destroy was acknowledged must be gone, and a key never
///   destroyed (not even by a destroy of unknown outcome) must be there;
/// - its label must be that of a write no acknowledged write came after:
///   a write (its creation, or a rename acknowledged or not) is superseded
///   by an acknowledged rename invoked more than `write_us` after it
///   returned (or failed), as stamps order such writes.
///
/// Returns one line per key that breaks a rule.
pub fn lost_writes(events: &[Event], final_labels: &BTreeMap<u32, String>, write_us: u64) -> Vec<String> {
    let mut by_key: BTreeMap<u32, Vec<&Event>> = BTreeMap::new();
    for e in events {
        by_key.entry(e.key).or_default().push(e);
    }
    let mut lost = Vec::new();
    for (key, ops) in by_key {
        let acked = |e: &&Event| e.outcome == Outcome::Returned(Ret::Done);
        let destroyed = ops.iter().any(|e| e.op == Op::Destroy && acked(e));
        let maybe_destroyed = ops
            .iter()
            .any(|e| e.op == Op::Destroy && matches!(e.outcome, Outcome::Unknown(_)));
        match final_labels.get(&key) {
            Some(label) if destroyed => lost.push(format!(
                "key {key}: its destroy was acknowledged, and it is back as {label:?}"
            )),
            None if !destroyed && !maybe_destroyed => {
                lost.push(format!("key {key}: never destroyed, and gone"))
            }
            None => {}
            Some(label) => {
                let writes: Vec<&&Event> = ops
                    .iter()
                    .filter(|e| matches!(e.op, Op::Create(_) | Op::SetLabel(_)))
                    .filter(|e| !matches!(e.outcome, Outcome::Failed(_)))
                    .collect();
                let superseded = |w: &Event| {
                    writes.iter().any(|later| {
                        acked(later) && later.invoked_us > w.returned_us.saturating_add(write_us)
                    })
                };
                let winner = writes.iter().find(|w| match &w.op {
                    Op::Create(l) | Op::SetLabel(l) => l == label,
                    _ => false,
                });
                match winner {
                    None => lost.push(format!("key {key}: holds {label:?}, which no write wrote")),
                    Some(w) if superseded(w) => lost.push(format!(
                        "key {key}: holds {label:?}, written at {:.3} s, over a rename acknowledged after it",
                        w.invoked_us as f64 / 1e6
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    lost
}

/// Uses of a key (signatures, label reads) that succeeded although they
/// began more than `bound_us` after an acknowledged destroy of it returned.
pub fn used_after_destroy(events: &[Event], bound_us: u64) -> usize {
    let mut destroyed_at: BTreeMap<u32, u64> = BTreeMap::new();
    for e in events {
        if e.op == Op::Destroy && e.outcome == Outcome::Returned(Ret::Done) {
            let t = destroyed_at.entry(e.key).or_insert(e.returned_us);
            *t = (*t).min(e.returned_us);
        }
    }
    events
        .iter()
        .filter(|e| matches!(e.op, Op::Use | Op::ReadLabel))
        .filter(|e| matches!(e.outcome, Outcome::Returned(Ret::Usable | Ret::Label(_))))
        .filter(|e| {
            destroyed_at
                .get(&e.key)
                .is_some_and(|t| e.invoked_us > t.saturating_add(bound_us))
        })
        .count()
}

/// Drops operations one at a time (never the creation) while the rest still
/// fails the check, for at most a few seconds (each try of a failing history
/// searches every order the tester can find).
fn shrink(mut ops: Vec<Event>, bounds: Bounds) -> Vec<Event> {
    let budget = std::time::Instant::now() + std::time::Duration::from_secs(5);
    // Passes until one removes nothing: a write kept for a read that a
    // later step removed may go in the next pass.
    let mut removed_any = true;
    while removed_any && std::time::Instant::now() < budget {
        removed_any = false;
        let mut i = 1;
        while i < ops.len() && std::time::Instant::now() < budget {
            let mut fewer = ops.clone();
            fewer.remove(i);
            // A write whose value a remaining read returned stays: without it
            // that read would fail for a value never written, which is not the
            // anomaly found.
            if still_explains_its_reads(&ops[i], &fewer) || key_is_consistent(&fewer, bounds) {
                i += 1;
            } else {
                ops = fewer;
                removed_any = true;
            }
        }
    }
    ops
}

/// Whether `removed` is a write that a read in `rest` observed: the rename
/// to the label it returned, or the destroy behind a "gone".
fn still_explains_its_reads(removed: &Event, rest: &[Event]) -> bool {
    let observed = |ret: &Ret| rest.iter().any(|e| e.outcome == Outcome::Returned(ret.clone()));
    match &removed.op {
        Op::SetLabel(label) => observed(&Ret::Label(label.clone())),
        Op::Destroy => observed(&Ret::Gone),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(process: u32, op: Op, invoked_ms: u64, returned_ms: u64, outcome: Outcome) -> Event {
        Event {
            key: 1,
            process,
            op,
            invoked_us: invoked_ms * 1000,
            returned_us: returned_ms * 1000,
            outcome,
        }
    }

    fn ret(r: Ret) -> Outcome {
        Outcome::Returned(r)
    }

    /// Reads 1 s, writes nothing: a lease of 1 s with clocks in step.
    const READS_1S: Bounds = Bounds {
        read_us: 1_000_000,
        write_us: 0,
    };
    const EXACT: Bounds = Bounds {
        read_us: 0,
        write_us: 0,
    };

    fn created() -> Event {
        ev(0, Op::Create("a".into()), 0, 1, ret(Ret::Done))
    }

    #[test]
    fn a_stale_read_within_the_bound_passes_and_beyond_it_fails() {
        let history = |read_at: u64| {
            vec![
                created(),
                ev(1, Op::SetLabel("b".into()), 10, 20, ret(Ret::Done)),
                ev(
                    2,
                    Op::ReadLabel,
                    read_at,
                    read_at + 5,
                    ret(Ret::Label("a".into())),
                ),
            ]
        };
        // Read 500 ms after the rename returned: within a 1 s bound, not without one.
        assert!(key_is_consistent(&history(520), READS_1S));
        assert!(!key_is_consistent(&history(520), EXACT));
        let mut noisy = history(3_000);
        noisy.push(ev(3, Op::SetLabel("c".into()), 4_000, 4_010, ret(Ret::Done)));
        noisy.push(ev(1, Op::ReadLabel, 4_100, 4_105, ret(Ret::Label("c".into()))));
        let report = check(&noisy, READS_1S);
        assert_eq!(report.anomalies.len(), 1, "{report:?}");
        // The shrunk history keeps what shows it: the rename and the stale
        // read (not the read of "c" without the rename that wrote it).
        let kept: Vec<&Op> = report.anomalies[0].smallest.iter().map(|e| &e.op).collect();
        assert_eq!(
            kept,
            vec![&Op::Create("a".into()), &Op::SetLabel("b".into()), &Op::ReadLabel],
            "{}",
            report.anomalies[0]
        );
    }

    #[test]
    fn a_use_after_the_destroy_fails_past_the_bound_and_a_rename_of_it_changes_nothing() {
        let history = |use_at: u64| {
            vec![
                created(),
                ev(1, Op::Destroy, 10, 20, ret(Ret::Done)),
                ev(2, Op::SetLabel("late".into()), 30, 40, ret(Ret::Done)),
                ev(3, Op::Use, use_at, use_at + 5, ret(Ret::Usable)),
                ev(3, Op::ReadLabel, 5_000, 5_005, ret(Ret::Gone)),
            ]
        };
        assert!(key_is_consistent(&history(900), READS_1S));
        assert!(!key_is_consistent(&history(2_000), READS_1S));
    }

    #[test]
    fn a_rename_answers_gone_only_once_the_key_is_destroyed() {
        let history = |rename_at: u64| {
            vec![
                created(),
                ev(1, Op::Destroy, 1_000, 1_010, ret(Ret::Done)),
                ev(
                    2,
                    Op::SetLabel("b".into()),
                    rename_at,
                    rename_at + 5,
                    ret(Ret::Gone),
                ),
            ]
        };
        assert!(key_is_consistent(&history(2_000), EXACT));
        assert!(!key_is_consistent(&history(100), EXACT));
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_and_a_failed_read_counts_for_nothing() {
        let history = vec![
            created(),
            ev(
                1,
                Op::SetLabel("b".into()),
                10,
                20,
                Outcome::Unknown("CKR_DEVICE_ERROR".into()),
            ),
            ev(2, Op::ReadLabel, 100, 105, ret(Ret::Label("a".into()))),
            ev(2, Op::ReadLabel, 9_000, 9_005, ret(Ret::Label("b".into()))),
            ev(
                3,
                Op::ReadLabel,
                9_100,
                9_105,
                Outcome::Failed("CKR_DEVICE_ERROR".into()),
            ),
        ];
        assert!(key_is_consistent(&history, EXACT));
        // Once "b" was read, an older value may not come back (beyond the bound).
        let mut back = history.clone();
        back.push(ev(2, Op::ReadLabel, 20_000, 20_005, ret(Ret::Label("a".into()))));
        assert!(!key_is_consistent(&back, READS_1S));
    }

    #[test]
    fn the_final_labels_show_a_lost_rename_a_resurrection_and_a_lost_key() {
        let mut history = vec![
            created(),
            ev(1, Op::SetLabel("b".into()), 10, 20, ret(Ret::Done)),
            ev(2, Op::SetLabel("c".into()), 2_000, 2_010, ret(Ret::Done)),
        ];
        let holds = |label: &str| BTreeMap::from([(1, label.to_string())]);
        assert!(lost_writes(&history, &holds("c"), 500_000).is_empty());
        // "b" was acknowledged 2 s before "c" began: "b" winning lost "c".
        assert_eq!(lost_writes(&history, &holds("b"), 500_000).len(), 1);
        assert_eq!(
            lost_writes(&history, &BTreeMap::new(), 500_000).len(),
            1,
            "a lost key"
        );
        history.push(ev(1, Op::Destroy, 3_000, 3_010, ret(Ret::Done)));
        assert!(lost_writes(&history, &BTreeMap::new(), 500_000).is_empty());
        assert_eq!(
            lost_writes(&history, &holds("c"), 500_000).len(),
            1,
            "a resurrection"
        );
        history.push(ev(2, Op::Use, 3_500, 3_505, ret(Ret::Usable)));
        history.push(ev(2, Op::Use, 9_000, 9_005, ret(Ret::Usable)));
        assert_eq!(used_after_destroy(&history, 2_000_000), 1);
    }

    #[test]
    fn two_renames_closer_than_the_write_bound_may_land_in_either_order() {
        // "c" was made after "b" returned, but 300 ms later only: with clocks
        // up to 250 ms apart the stamps may order them the other way.
        let history = vec![
            created(),
            ev(1, Op::SetLabel("b".into()), 10, 20, ret(Ret::Done)),
            ev(2, Op::SetLabel("c".into()), 320, 330, ret(Ret::Done)),
            ev(3, Op::ReadLabel, 5_000, 5_005, ret(Ret::Label("b".into()))),
        ];
        let skewed = Bounds {
            read_us: 0,
            write_us: 500_000,
        };
        assert!(key_is_consistent(&history, skewed));
        assert!(!key_is_consistent(&history, EXACT));
    }
}
