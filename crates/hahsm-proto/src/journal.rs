//! The member's audit journal (the report's table 5.1, kept by the system):
//! one JSON line per administrative action, each chained to the one before
//! it by SHA-256, so an edited, removed or reordered entry breaks the chain.
//!
//! The format lives here, beside the admin messages that carry it, so that the
//! member that writes it and the CLI that verifies it share one definition.
//! This module does no I/O.
use serde::{Deserialize, Serialize};

/// The `prev` of a member's first entry: nothing came before it.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// One journal entry, as written on one line.
///
/// `request` is the request as the member received it with every secret
/// replaced by `<redacted>` (the `Debug` form of the admin messages, whose
/// secret fields print no value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// 1 for the member's first entry, then one more for each.
    pub seq: u64,
    /// When the action finished, RFC 3339 UTC, e.g. `2026-11-29T16:05:05Z`.
    pub time: String,
    /// The serial of the member that journaled it.
    pub member: u64,
    /// Who: `so` (the HSM security officer, logged in on the console),
    /// `console` (the admin socket without an SO login), `peer` (another
    /// member), or `member` (the member itself, e.g. `JournalTruncated`).
    pub role: String,
    /// Who, more precisely: the console user's uid, or the peer's serial.
    pub actor: String,
    /// The SHA-256 fingerprint of the peer's certificate, for `peer`; `-` on
    /// the console, which is a local socket without certificates.
    pub fingerprint: String,
    /// What: the request's name, e.g. `PartitionChangePolicy`.
    pub action: String,
    /// On which object, e.g. `partition haPart`.
    pub object: String,
    /// The redacted request.
    pub request: String,
    /// `done`, or `refused: <why>`.
    pub result: String,
    /// The hash of the previous entry, hex.
    pub prev: String,
    /// SHA-256 over this entry without `hash` (its canonical JSON), hex.
    pub hash: String,
}

/// The fields an entry is hashed over: all but `hash`, in this order.
#[derive(Serialize)]
struct Hashed<'a> {
    seq: u64,
    time: &'a str,
    member: u64,
    role: &'a str,
    actor: &'a str,
    fingerprint: &'a str,
    action: &'a str,
    object: &'a str,
    request: &'a str,
    result: &'a str,
    prev: &'a str,
}

impl JournalEntry {
    /// The canonical bytes the hash covers.
    pub fn hashed_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&Hashed {
            seq: self.seq,
            time: &self.time,
            member: self.member,
            role: &self.role,
            actor: &self.actor,
            fingerprint: &self.fingerprint,
            action: &self.action,
            object: &self.object,
            request: &self.request,
            result: &self.result,
            prev: &self.prev,
        })
        .unwrap_or_default()
    }

    /// The entry as one line (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether the entry's action succeeded.
    pub fn done(&self) -> bool {
        self.result == "done"
    }
}

/// Where a member's journal ends, as the member keeps it in its store beside
/// the file: a tail cut off the file shows as fewer entries than this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalHead {
    pub count: u64,
    /// The last entry's hash, hex; empty when there is none.
    pub hash: String,
}

/// A journal that verified: its entries and where it ends.
#[derive(Debug, Clone)]
pub struct VerifiedJournal {
    pub entries: Vec<JournalEntry>,
    pub head: JournalHead,
}

/// Checks a journal's lines, `sha256` being SHA-256 (passed in so this crate
/// needs no crypto library). Every line must parse, be in canonical form, carry
/// the next sequence number, name the previous entry's hash as `prev`, and hash
/// to its own `hash`; and the journal must end where `sealed` says, if given.
/// Returns every problem found, each naming its line (1-based).
pub fn verify(
    lines: &[String],
    sealed: Option<&JournalHead>,
    sha256: impl Fn(&[u8]) -> [u8; 32],
) -> Result<VerifiedJournal, Vec<String>> {
    let mut problems = Vec::new();
    let mut entries = Vec::with_capacity(lines.len());
    let mut prev = hex::encode(GENESIS);
    let mut expected_seq = 1u64;
    for (i, line) in lines.iter().enumerate() {
        let n = i + 1;
        let entry: JournalEntry = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(_) => {
                problems.push(format!("line {n}: not a journal entry (edited or damaged)"));
                // Resynchronise on the next line as if this one were in place.
                expected_seq += 1;
                prev = String::new();
                continue;
            }
        };
        if entry.to_line() != *line {
            problems.push(format!(
                "line {n}: entry {} is not in canonical form (edited)",
                entry.seq
            ));
        }
        let computed = hex::encode(sha256(&entry.hashed_bytes()));
        if computed != entry.hash {
            problems.push(format!(
                "line {n}: entry {} does not match its hash (edited)",
                entry.seq
            ));
        }
        if entry.seq != expected_seq {
            if entry.seq > expected_seq {
                problems.push(format!(
                    "line {n}: entry {} follows entry {}: {} entr{} removed or moved",
                    entry.seq,
                    expected_seq - 1,
                    entry.seq - expected_seq,
                    if entry.seq - expected_seq == 1 {
                        "y was"
                    } else {
                        "ies were"
                    }
                ));
            } else {
                problems.push(format!(
                    "line {n}: entry {} comes after entry {}: entries were reordered or repeated",
                    entry.seq,
                    expected_seq - 1
                ));
            }
        } else if !prev.is_empty() && entry.prev != prev {
            problems.push(format!(
                "line {n}: entry {} does not chain to the entry before it (an entry was removed, edited or moved)",
                entry.seq
            ));
        }
        expected_seq = entry.seq + 1;
        prev = entry.hash.clone();
        entries.push(entry);
    }
    let head = JournalHead {
        count: lines.len() as u64,
        hash: entries.last().map(|e| e.hash.clone()).unwrap_or_default(),
    };
    if let Some(sealed) = sealed {
        if head.count < sealed.count {
            problems.push(format!(
                "the journal holds {} entries but the member recorded {}: entries were removed from its end",
                head.count, sealed.count
            ));
        } else if head.count == sealed.count && head.hash != sealed.hash {
            problems.push("the journal's last entry is not the one the member recorded".to_string());
        }
    }
    if problems.is_empty() {
        Ok(VerifiedJournal { entries, head })
    } else {
        Err(problems)
    }
}

/// Makes the next entry after `prev_hash` (hex; empty for the first entry)
/// and fills in its hash.
pub fn next_entry(
    mut entry: JournalEntry,
    seq: u64,
    prev_hash: &str,
    sha256: impl Fn(&[u8]) -> [u8; 32],
) -> JournalEntry {
    entry.seq = seq;
    entry.prev = if prev_hash.is_empty() {
        hex::encode(GENESIS)
    } else {
        prev_hash.to_string()
    };
    entry.hash = hex::encode(sha256(&entry.hashed_bytes()));
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    // A stand-in hash for the format tests; the real one is SHA-256.
    fn h(data: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in data.iter().enumerate() {
            out[i % 32] = out[i % 32].wrapping_mul(31).wrapping_add(*b);
        }
        out
    }

    fn journal(n: u64) -> Vec<String> {
        let mut prev = String::new();
        (1..=n)
            .map(|seq| {
                let e = next_entry(
                    JournalEntry {
                        seq: 0,
                        time: "2026-11-29T16:00:00Z".into(),
                        member: 7,
                        role: "so".into(),
                        actor: "uid 0".into(),
                        fingerprint: "ab".into(),
                        action: "PartitionChangePolicy".into(),
                        object: format!("partition p{seq}"),
                        request: "…".into(),
                        result: "done".into(),
                        prev: String::new(),
                        hash: String::new(),
                    },
                    seq,
                    &prev,
                    h,
                );
                prev = e.hash.clone();
                e.to_line()
            })
            .collect()
    }

    #[test]
    fn an_untouched_journal_verifies_and_reports_its_head() {
        let lines = journal(4);
        let v = verify(&lines, None, h).unwrap();
        assert_eq!(v.head.count, 4);
        assert!(verify(&lines, Some(&v.head), h).is_ok());
    }

    #[test]
    fn edits_removals_reorders_and_cut_tails_are_caught() {
        let lines = journal(5);
        let sealed = verify(&lines, None, h).unwrap().head;

        let mut edited = lines.clone();
        edited[2] = edited[2].replace("partition p3", "partition p9");
        assert!(verify(&edited, None, h).unwrap_err()[0].contains("line 3"));

        let mut removed = lines.clone();
        removed.remove(1);
        assert!(verify(&removed, None, h).unwrap_err()[0].contains("removed"));

        let mut reordered = lines.clone();
        reordered.swap(1, 2);
        assert!(!verify(&reordered, None, h).unwrap_err().is_empty());

        let cut = lines[..4].to_vec();
        assert!(verify(&cut, None, h).is_ok(), "a cut tail alone looks whole");
        assert!(verify(&cut, Some(&sealed), h).unwrap_err()[0].contains("end"));

        let mut garbage = lines.clone();
        garbage[0].replace_range(0..1, "x");
        assert!(verify(&garbage, None, h).unwrap_err()[0].contains("line 1"));
    }
}
