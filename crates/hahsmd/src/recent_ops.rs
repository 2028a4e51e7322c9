//! The latest operations of a partition's log, per origin, kept in memory
//! as they were committed: a push that follows a write (and most
//! anti-entropy) reads what it sends from here instead of reading it back
//! from the store and decrypting it. A run of one origin's operations is
//! always gap-free; anything older, or after a gap, is the store's to give.
use hahsm_token::oplog::Op;
use hahsm_token::MemberId;
use std::collections::{HashMap, VecDeque};

/// How many operations of each origin are kept.
pub const KEEP: usize = 1024;

#[derive(Default)]
pub struct RecentOps {
    by_origin: HashMap<MemberId, VecDeque<Op>>,
}

impl RecentOps {
    /// Records an operation just committed to the store. One that does not
    /// follow the last kept of its origin (an operation committed without
    /// passing here) starts the run afresh.
    pub fn push(&mut self, op: Op) {
        let run = self.by_origin.entry(op.stamp.origin).or_default();
        if run.back().is_some_and(|last| last.seq + 1 != op.seq) {
            run.clear();
        }
        if run.len() == KEEP {
            run.pop_front();
        }
        run.push_back(op);
    }

    /// Origin's operations after `after_seq`, at most `limit`, if the run
    /// kept here starts at or before `after_seq + 1`; `None` when the store
    /// must be asked.
    pub fn after(&self, origin: MemberId, after_seq: u64, limit: usize) -> Option<Vec<Op>> {
        let run = self.by_origin.get(&origin)?;
        let first = run.front()?.seq;
        let last = run.back()?.seq;
        if after_seq + 1 < first {
            return None;
        }
        if after_seq >= last {
            return Some(Vec::new());
        }
        let skip = usize::try_from(after_seq + 1 - first).ok()?;
        Some(run.iter().skip(skip).take(limit).cloned().collect())
    }

    /// Forgets everything (the partition was reloaded from the store).
    pub fn clear(&mut self) {
        self.by_origin.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hahsm_token::oplog::{OpBody, Stamp};
    use hahsm_token::Hlc;

    fn op(origin: MemberId, seq: u64) -> Op {
        Op {
            seq,
            stamp: Stamp {
                hlc: Hlc::default(),
                origin,
            },
            client_op_id: None,
            body: OpBody::Clear { destroyed: vec![] },
        }
    }

    fn seqs(ops: Option<Vec<Op>>) -> Option<Vec<u64>> {
        ops.map(|v| v.iter().map(|o| o.seq).collect())
    }

    #[test]
    fn a_run_answers_from_its_start_and_defers_to_the_store_before_it() {
        let mut r = RecentOps::default();
        for s in 5..=9 {
            r.push(op(1, s));
        }
        assert_eq!(seqs(r.after(1, 4, 10)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(seqs(r.after(1, 6, 2)), Some(vec![7, 8]));
        assert_eq!(seqs(r.after(1, 9, 10)), Some(vec![]));
        assert_eq!(seqs(r.after(1, 3, 10)), None, "op 4 is not kept");
        assert_eq!(seqs(r.after(2, 0, 10)), None, "another origin");
    }

    #[test]
    fn a_gap_restarts_the_run_and_the_oldest_go_first() {
        let mut r = RecentOps::default();
        r.push(op(1, 1));
        r.push(op(1, 2));
        r.push(op(1, 4));
        assert_eq!(seqs(r.after(1, 0, 10)), None);
        assert_eq!(seqs(r.after(1, 3, 10)), Some(vec![4]));
        for s in 5..=(5 + KEEP as u64) {
            r.push(op(1, s));
        }
        assert_eq!(seqs(r.after(1, 4, 1)), None, "op 5 was dropped");
        assert_eq!(seqs(r.after(1, 5, 1)), Some(vec![6]));
    }
}
