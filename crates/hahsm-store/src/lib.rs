//! The durable, crash-safe store of one hahsmd member.
//!
//! It keeps, in one SQLite file: the partitions (tokens) with their wrapped master keys
//! and login state, the registered clients and which partitions each may use, every
//! partition's objects, the operation log that replication ships, and a small key-value
//! table for the daemon's own settings.
//!
//! The store never interprets what it keeps. Secret values reach it already sealed by the
//! daemon (encrypted under the member master key, bound to the object's OUID and version),
//! and it does no cryptography of its own.
//!
//! # Durability contract
//!
//! - **Acknowledged means durable.** The file is in WAL mode with `synchronous=FULL`: a
//!   method that changes anything returns `Ok` only after SQLite has committed the change
//!   and synced the write-ahead log, so it survives a crash of the process or a power loss.
//! - **All or nothing.** Every public method that changes anything runs as one transaction.
//!   [`Store::commit`] writes a partition's object changes, the operation-log entry that
//!   describes them and the new partition digest together: after a crash either all of them
//!   are there or none is. [`Store::delete_partition`] and [`Store::remove_client`] take
//!   their dependent rows with them in the same way.
//! - **An error is not a rollback promise.** A method that returned an error did not take
//!   effect in the common case (constraint, full disk), but if the final sync itself failed
//!   the write may still turn up after a restart, whole. Callers retry a write with the
//!   same client operation id ([`Store::op_by_client_op_id`]), never as a new one.
//! - **A full disk is an answer, not a crash.** `SQLITE_FULL`, `ENOSPC` and `EDQUOT` give
//!   [`StoreError::Full`] (`CKR_DEVICE_MEMORY` via [`hahsm_token::TokenError`]). Everything
//!   committed before stays intact and readable, and writes work again once space is freed.
//! - **Never serve a corrupt store.** [`Store::open`] runs `PRAGMA quick_check` and refuses
//!   a damaged file, or one that is not a SQLite database, with [`StoreError::Corrupt`];
//!   [`Store::integrity_check`] runs the full check on demand. A row that does not decode
//!   (a wrong-sized id, an out-of-range number) is reported as `Corrupt`, never a panic.
//!   SQLite keeps no page checksums, so damage that leaves every page well-formed (a flipped
//!   bit inside a value) is not seen here; the daemon's authenticated sealing catches it in
//!   secret values.
//! - **Foreign keys are enforced** (`foreign_keys=ON`): no object, log entry or assignment
//!   can point at a partition or client that does not exist.
//! - **The file is private.** A new store file is created mode 0600 (SQLite gives its
//!   `-wal` and `-shm` files the same mode): it holds wrapped partition master keys and,
//!   with auto-activation, master keys sealed to this host, so whoever can read it on this
//!   host can activate the member.
//! - The store takes no lock against a second process opening the same file; SQLite keeps
//!   such access consistent, but the daemon should hold its own lock (a pid file).
#![forbid(unsafe_code)]

mod clients;
mod columns;
mod error;
mod meta;
mod objects;
mod partitions;
mod rows;

pub use error::{StoreError, StoreResult};
pub use rows::{ClientRow, ObjectRow, OpRow, PartitionRow, Write};

use columns::*;
use error::map_sqlite;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The schema version this build writes. A file with a higher version is refused
/// with [`StoreError::Schema`].
pub const SCHEMA_VERSION: i64 = 2;

/// How long a statement waits for another connection's lock before failing.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many problems are reported from an integrity check.
pub(crate) const MAX_CHECK_MESSAGES: usize = 20;

pub(crate) const SCHEMA_V1: &str = "
CREATE TABLE store_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;
CREATE TABLE partitions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL UNIQUE,
    serial        INTEGER NOT NULL,
    wrapped_pmk   BLOB NOT NULL,
    sealed_pmk    BLOB,
    pin_salt      BLOB NOT NULL,
    sealed_pin    BLOB,
    failed_logins INTEGER NOT NULL CHECK (failed_logins BETWEEN 0 AND 4294967295),
    policies      BLOB NOT NULL,
    activated     INTEGER NOT NULL CHECK (activated IN (0, 1)),
    digest        BLOB NOT NULL,
    extra         BLOB NOT NULL
) STRICT;
CREATE TABLE clients (
    name            TEXT PRIMARY KEY,
    fingerprint_hex TEXT NOT NULL UNIQUE COLLATE NOCASE,
    hostname        TEXT NOT NULL
) STRICT;
CREATE TABLE assignments (
    client_name  TEXT NOT NULL REFERENCES clients(name),
    partition_id INTEGER NOT NULL REFERENCES partitions(id),
    PRIMARY KEY (client_name, partition_id)
) STRICT;
CREATE INDEX assignments_by_partition ON assignments(partition_id);
CREATE TABLE objects (
    partition_id INTEGER NOT NULL REFERENCES partitions(id),
    ouid         BLOB NOT NULL CHECK (length(ouid) = 16),
    version      INTEGER NOT NULL,
    sealed       BLOB NOT NULL,
    PRIMARY KEY (partition_id, ouid)
) STRICT;
CREATE TABLE oplog (
    idx          INTEGER PRIMARY KEY AUTOINCREMENT,
    partition_id INTEGER NOT NULL REFERENCES partitions(id),
    origin       INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    hlc_wall     INTEGER NOT NULL,
    hlc_logical  INTEGER NOT NULL CHECK (hlc_logical BETWEEN 0 AND 4294967295),
    client_op_id BLOB CHECK (client_op_id IS NULL OR length(client_op_id) = 16),
    kind         TEXT NOT NULL,
    body         BLOB NOT NULL
) STRICT;
CREATE INDEX oplog_by_partition ON oplog(partition_id, idx);
CREATE INDEX oplog_by_client_op ON oplog(partition_id, client_op_id);
CREATE UNIQUE INDEX oplog_by_origin_seq ON oplog(partition_id, origin, seq) WHERE seq > 0;
";

/// Version 2 adds, per partition and origin, the operations no longer in the
/// log (compacted, or covered by a peer's snapshot) whose effects the objects
/// hold: the version vector and the clock count them as the log's own.
pub(crate) const SCHEMA_V2: &str = "
CREATE TABLE log_floor (
    partition_id INTEGER NOT NULL REFERENCES partitions(id),
    origin       INTEGER NOT NULL,
    seq          INTEGER NOT NULL CHECK (seq > 0),
    hlc_wall     INTEGER NOT NULL,
    hlc_logical  INTEGER NOT NULL CHECK (hlc_logical BETWEEN 0 AND 4294967295),
    PRIMARY KEY (partition_id, origin)
) STRICT;
";

/// The tables a valid store has; a file that lacks one is refused as corrupt.
pub(crate) const TABLES: [&str; 8] = [
    "store_meta",
    "meta",
    "partitions",
    "clients",
    "assignments",
    "objects",
    "oplog",
    "log_floor",
];

pub(crate) const PARTITION_COLUMNS: &str =
    "id, name, serial, wrapped_pmk, sealed_pmk, pin_salt, sealed_pin, \
     failed_logins, policies, activated, digest, extra";

pub(crate) const OP_COLUMNS: &str = "idx, origin, seq, hlc_wall, hlc_logical, client_op_id, kind, body";

/// One origin's operations after a sequence number, in order: what every push,
/// pull and anti-entropy round reads. `seq > 0` is redundant for the rows but
/// lets SQLite use the partial index `oplog_by_origin_seq`; without it each
/// call scanned and sorted the partition's whole log.
pub(crate) fn ops_from_origin_sql() -> String {
    format!(
        "SELECT {OP_COLUMNS} FROM oplog WHERE partition_id = ?1 AND origin = ?2 AND seq > ?3 AND seq > 0
         ORDER BY seq LIMIT ?4"
    )
}

/// The connection settings in force, as SQLite reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `PRAGMA journal_mode`: "wal" for an open store.
    pub journal_mode: String,
    /// `PRAGMA synchronous`: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA. 2 for an open store.
    pub synchronous: i64,
    /// `PRAGMA foreign_keys`.
    pub foreign_keys: bool,
}

/// One member's store. All methods are synchronous and serialized on one connection;
/// the type is `Send + Sync`, so share it in an `Arc`.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens or creates the store file.
    ///
    /// Runs `PRAGMA quick_check` first and refuses a damaged file, or one that is not a
    /// SQLite database, with [`StoreError::Corrupt`] naming the file. Then switches to WAL
    /// with `synchronous=FULL` and `foreign_keys=ON`, and creates the schema if the file is
    /// new (an empty file counts as new). A file from a newer hahsm gives
    /// [`StoreError::Schema`]; a SQLite database that is not a hahsm store gives `Corrupt`.
    pub fn open(path: &Path) -> StoreResult<Store> {
        let result = Self::open_inner(path);
        if let Err(err) = &result {
            tracing::error!(path = %path.display(), error = %err, "cannot open the store");
        }
        result
    }

    fn open_inner(path: &Path) -> StoreResult<Store> {
        let err = |ctx: &'static str| move |e| map_sqlite(e, path, ctx);
        create_private_file(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags).map_err(err("open"))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err("set busy timeout"))?;
        // None of these reads the file, so they work even on a file that is not a database.
        conn.execute_batch(
            "PRAGMA foreign_keys = ON; PRAGMA cell_size_check = ON; PRAGMA trusted_schema = OFF;",
        )
        .map_err(err("set pragmas"))?;

        // Check before anything writes to the file.
        run_check(&conn, path, "quick_check")?;

        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err("enable WAL"))?;
        // After a checkpoint, a WAL file larger than this is cut back.
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA journal_size_limit = 67108864;")
            .map_err(err("set synchronous"))?;
        let settings = read_settings(&conn).map_err(err("read pragmas"))?;
        if !mode.eq_ignore_ascii_case("wal") || !settings.journal_mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Sqlite(format!(
                "{}: cannot switch to WAL mode (journal mode is {:?})",
                path.display(),
                settings.journal_mode
            )));
        }
        if settings.synchronous != 2 || !settings.foreign_keys {
            return Err(StoreError::Sqlite(format!(
                "{}: SQLite did not accept synchronous=FULL and foreign_keys=ON ({settings:?})",
                path.display()
            )));
        }

        init_schema(&mut conn, path)?;
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    /// The store file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The journal mode, synchronous level and foreign-key setting in force.
    pub fn settings(&self) -> StoreResult<Settings> {
        let conn = self.lock();
        read_settings(&conn).map_err(self.err("read pragmas"))
    }

    /// Runs the full `PRAGMA integrity_check` and `PRAGMA foreign_key_check`; any
    /// problem gives [`StoreError::Corrupt`].
    pub fn integrity_check(&self) -> StoreResult<()> {
        let conn = self.lock();
        run_check(&conn, &self.path, "integrity_check")?;
        let violations = (|| {
            let mut stmt = conn.prepare("PRAGMA foreign_key_check")?;
            let rows = stmt.query_map([], |r| {
                Ok(format!(
                    "row {} of {} refers to a missing {} row",
                    r.get::<_, Option<i64>>(1)?.unwrap_or(-1),
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(2)?
                ))
            })?;
            rows.take(MAX_CHECK_MESSAGES)
                .collect::<rusqlite::Result<Vec<String>>>()
        })()
        .map_err(self.err("foreign_key_check"))?;
        if violations.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Corrupt(format!(
                "{}: foreign_key_check found problems: {}",
                self.path.display(),
                violations.join("; ")
            )))
        }
    }

    /// Locks the connection. A thread that panicked while holding the lock has left no
    /// half-done transaction behind (rusqlite rolls back on drop, and we roll back any
    /// leftover here), so a poisoned lock is safe to take over.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        let guard = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if !guard.is_autocommit() {
            if let Err(err) = guard.execute_batch("ROLLBACK") {
                tracing::warn!(path = %self.path.display(), error = %err, "rollback of a leftover transaction failed");
            }
        }
        guard
    }

    /// A mapper from rusqlite errors for this store and this action.
    pub(crate) fn err<'a>(&'a self, ctx: &'a str) -> impl Fn(rusqlite::Error) -> StoreError + 'a {
        move |e| map_sqlite(e, &self.path, ctx)
    }

    /// Runs `f` in one immediate (write-locking) transaction, committed only if `f` succeeds.
    pub(crate) fn write_tx<T>(
        &self,
        ctx: &str,
        f: impl FnOnce(&Transaction<'_>) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err(ctx))?;
        // On error `tx` is dropped here, which rolls it back.
        let out = f(&tx)?;
        tx.commit().map_err(self.err(ctx))?;
        Ok(out)
    }

    /// The id of `partition`, after checking that `client` exists.
    pub(crate) fn resolve_assignment(
        &self,
        tx: &Transaction<'_>,
        client: &str,
        partition: &str,
    ) -> StoreResult<i64> {
        let e = self.err("resolve client and partition");
        if !client_exists(tx, client).map_err(&e)? {
            return Err(client_not_found(client));
        }
        partition_id_by_name(tx, partition)
            .map_err(&e)?
            .ok_or_else(|| StoreError::NotFound(format!("partition {partition:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::params;
    use std::sync::Arc;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn store_is_send_and_sync() {
        assert_send_sync::<Store>();
    }

    #[test]
    fn a_poisoned_lock_does_not_panic_and_leaves_no_half_transaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(&dir.path().join("s.db")).expect("open"));
        store.put_meta("k", b"before").expect("put");
        let inner = Arc::clone(&store);
        let joined = std::thread::spawn(move || {
            let conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
            // Leave a transaction open with an uncommitted change, then die holding the lock.
            let _ = conn.execute_batch("BEGIN; UPDATE meta SET value = x'00' WHERE key = 'k';");
            panic!("deliberate panic while holding the store lock");
        })
        .join();
        assert!(joined.is_err());
        assert!(store.conn.is_poisoned());
        assert_eq!(store.get_meta("k").expect("get"), Some(b"before".to_vec()));
        store.put_meta("k", b"after").expect("put after poison");
        assert_eq!(store.get_meta("k").expect("get"), Some(b"after".to_vec()));
    }

    /// Reading one origin's operations must seek the index, not scan the log:
    /// it runs on every push and every anti-entropy round.
    #[test]
    fn reading_an_origins_operations_uses_its_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        let conn = store.lock();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", ops_from_origin_sql()))
            .and_then(|mut stmt| {
                stmt.query_map(params![1, 2, 3, 4], |r| r.get::<_, String>(3))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .expect("query plan");
        assert!(
            plan.iter().any(|step| step.contains("oplog_by_origin_seq")),
            "not using the (partition, origin, seq) index: {plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.contains("TEMP B-TREE")),
            "sorts the rows it read: {plan:?}"
        );
    }

    #[test]
    fn debug_prints_lengths_not_bytes() {
        let row = PartitionRow {
            name: "p".into(),
            wrapped_pmk: vec![0xAB; 40],
            sealed_pmk: Some(vec![0xCD; 7]),
            ..Default::default()
        };
        let text = format!("{row:?}");
        assert!(
            text.contains("<40 bytes>") && text.contains("Some(<7 bytes>)"),
            "{text}"
        );
        assert!(
            !text.to_lowercase().contains("ab, ") && !text.contains("171"),
            "{text}"
        );
        let obj = ObjectRow {
            ouid: [1; 16],
            version: 3,
            sealed: vec![0xEE; 5],
        };
        let text = format!("{obj:?}");
        assert!(text.contains("<5 bytes>") && !text.contains("238"), "{text}");
        let op = OpRow {
            body: vec![0x99; 9],
            ..Default::default()
        };
        let text = format!("{op:?}");
        assert!(text.contains("<9 bytes>") && !text.contains("153"), "{text}");
    }

    #[test]
    fn errors_map_to_token_errors() {
        use hahsm_token::TokenError;
        let t: TokenError = StoreError::Full("disk".into()).into();
        assert_eq!(t, TokenError::DeviceMemory("disk".into()));
        let t: TokenError = StoreError::Corrupt("bad".into()).into();
        assert!(matches!(t, TokenError::DeviceError(m) if m.contains("bad")));
        let t: TokenError = StoreError::NotFound("x".into()).into();
        assert!(matches!(t, TokenError::DeviceError(_)));
    }
}
