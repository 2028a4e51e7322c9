//! The member's audit journal: every administrative action, with who did it,
//! when, on what and with which result, appended to `journal.jsonl` in the
//! data directory and chained by SHA-256 (format: `hahsm_proto::journal`).
//!
//! Crash safety: each entry is one line, written with one `write` and synced
//! to disk before the operator gets the answer. A line torn by a crash (no
//! final newline) was never acknowledged; it is cut off when the member starts.
//!
//! A cut tail: the member also records the journal's head (entry count and
//! last hash) in its store, after each append. `hahsm journal verify` compares
//! the file with that head, so entries removed from the end of the file show;
//! and a member that starts on a journal cut while it was down appends a
//! `JournalTruncated` entry naming the head it had recorded.
//! Someone who can rewrite both the file and the store can rewrite history;
//! copying the heads that `hahsm journal` prints elsewhere catches that too.
use crate::sync::Recover;
use hahsm_proto::journal::{next_entry, JournalEntry, JournalHead};
use hahsm_store::Store;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing::warn;

const META_HEAD: &str = "journal.head";

/// Who asked for an action.
#[derive(Debug, Clone)]
pub struct Who {
    /// `so`, `console` or `peer`.
    pub role: String,
    pub actor: String,
    pub fingerprint: String,
}

/// What was done, and how it ended.
pub struct Action {
    pub action: String,
    pub object: String,
    /// Already redacted: no secret may be in it.
    pub request: String,
    pub result: String,
}

pub struct Journal {
    path: PathBuf,
    member: u64,
    store: Arc<Store>,
    head: Mutex<JournalHead>,
}

impl Journal {
    /// Opens the journal, cutting off a torn last line.
    pub fn open(path: &Path, member: u64, store: Arc<Store>) -> anyhow::Result<Journal> {
        let mut text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => anyhow::bail!("cannot read the journal {}: {e}", path.display()),
        };
        if !text.is_empty() && !text.ends_with('\n') {
            let keep = text.rfind('\n').map_or(0, |i| i + 1);
            warn!(
                bytes = text.len() - keep,
                "the journal's last line was torn by a crash; it was never acknowledged and is cut off"
            );
            text.truncate(keep);
            let f = std::fs::OpenOptions::new().write(true).open(path)?;
            f.set_len(keep as u64)?;
            f.sync_all()?;
        }
        let count = text.lines().count() as u64;
        let hash = text
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<JournalEntry>(l).ok())
            .map(|e| e.hash)
            .unwrap_or_default();
        let head = JournalHead { count, hash };
        let sealed = sealed_head(&store);
        // The store lags the file by one entry after a crash between the two
        // writes. A file that ends before the recorded head was cut while the
        // member was down: say so in the journal itself, so that appending on
        // does not hide it.
        let cut = sealed
            .as_ref()
            .filter(|s| s.count > count || (s.count == count && s.hash != head.hash))
            .cloned();
        if sealed.as_ref().is_none_or(|s| s.count < count) {
            store.put_meta(META_HEAD, &postcard::to_allocvec(&head)?)?;
        }
        let journal = Journal {
            path: path.to_path_buf(),
            member,
            store,
            head: Mutex::new(head),
        };
        if let Some(sealed) = cut {
            warn!(
                entries = count,
                recorded = sealed.count,
                "the journal ends before the head this member recorded: entries were removed"
            );
            let who = Who {
                role: "member".into(),
                actor: "hahsmd".into(),
                fingerprint: "-".into(),
            };
            journal.append(
                &who,
                Action {
                    action: "JournalTruncated".into(),
                    object: "journal".into(),
                    request: format!(
                        "at start the journal held {count} entries, but this member had recorded {} ending with {}",
                        sealed.count, sealed.hash
                    ),
                    result: "done".into(),
                },
            )?;
        }
        Ok(journal)
    }

    /// Appends one entry and syncs it to disk.
    pub fn append(&self, who: &Who, action: Action) -> anyhow::Result<()> {
        let mut head = self.head.lock_or_recover();
        let entry = next_entry(
            JournalEntry {
                seq: 0,
                time: hahsm_proto::utc::rfc3339_seconds(std::time::SystemTime::now()),
                member: self.member,
                role: who.role.clone(),
                actor: who.actor.clone(),
                fingerprint: who.fingerprint.clone(),
                action: action.action,
                object: action.object,
                request: action.request,
                result: action.result,
                prev: String::new(),
                hash: String::new(),
            },
            head.count + 1,
            &head.hash,
            hahsm_crypto::sha256,
        );
        let mut line = entry.to_line();
        line.push('\n');
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)?;
            f.write_all(line.as_bytes())?;
            f.sync_data()?;
        }
        *head = JournalHead {
            count: entry.seq,
            hash: entry.hash,
        };
        self.store.put_meta(META_HEAD, &postcard::to_allocvec(&*head)?)?;
        Ok(())
    }

    /// Lines after entry `after`, at most `limit`, as they are in the file,
    /// and the head the member recorded.
    pub fn read(&self, after: u64, limit: usize) -> anyhow::Result<(Vec<String>, JournalHead)> {
        let _head = self.head.lock_or_recover();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => anyhow::bail!("cannot read the journal: {e}"),
        };
        let lines = text
            .lines()
            .skip(after as usize)
            .take(limit)
            .map(str::to_string)
            .collect();
        let sealed = sealed_head(&self.store).unwrap_or(JournalHead {
            count: 0,
            hash: String::new(),
        });
        Ok((lines, sealed))
    }
}

fn sealed_head(store: &Store) -> Option<JournalHead> {
    store
        .get_meta(META_HEAD)
        .ok()
        .flatten()
        .and_then(|b| postcard::from_bytes(&b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Who {
        Who {
            role: "so".into(),
            actor: "uid 0".into(),
            fingerprint: "-".into(),
        }
    }

    fn act(n: u32) -> Action {
        Action {
            action: "HsmChangePolicy".into(),
            object: format!("hsm policy {n}"),
            request: "HsmChangePolicy { .. }".into(),
            result: "done".into(),
        }
    }

    #[test]
    fn appended_entries_chain_survive_a_reopen_and_a_torn_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.db")).unwrap());
        let path = dir.path().join("journal.jsonl");
        let j = Journal::open(&path, 42, store.clone()).unwrap();
        j.append(&who(), act(1)).unwrap();
        j.append(&who(), act(2)).unwrap();
        drop(j);
        // A crash in the middle of a third write.
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":3,\"ti").unwrap();
        drop(f);
        let j = Journal::open(&path, 42, store).unwrap();
        j.append(&who(), act(3)).unwrap();
        let (lines, head) = j.read(0, 100).unwrap();
        assert_eq!(lines.len(), 3);
        let v = hahsm_proto::journal::verify(&lines, Some(&head), hahsm_crypto::sha256).unwrap();
        assert_eq!(v.entries[2].object, "hsm policy 3");
        assert_eq!(v.head, head);
        assert_eq!(j.read(2, 100).unwrap().0.len(), 1);
    }

    #[test]
    fn a_tail_cut_while_the_member_was_down_is_journaled_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.db")).unwrap());
        let path = dir.path().join("journal.jsonl");
        let j = Journal::open(&path, 42, store.clone()).unwrap();
        for n in 0..3 {
            j.append(&who(), act(n)).unwrap();
        }
        drop(j);
        let text = std::fs::read_to_string(&path).unwrap();
        let kept: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, kept).unwrap();
        let j = Journal::open(&path, 42, store).unwrap();
        let (lines, head) = j.read(0, 100).unwrap();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[2].contains("JournalTruncated") && lines[2].contains("recorded 3"),
            "{}",
            lines[2]
        );
        hahsm_proto::journal::verify(&lines, Some(&head), hahsm_crypto::sha256).unwrap();
    }
}
