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

mod error;
mod rows;

pub use error::{StoreError, StoreResult};
pub use rows::{ClientRow, ObjectRow, OpRow, PartitionRow, Write};

use error::map_sqlite;
use rusqlite::types::Type;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The schema version this build writes. A file with a higher version is refused
/// with [`StoreError::Schema`].
pub const SCHEMA_VERSION: i64 = 1;

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many problems are reported from an integrity check.
const MAX_CHECK_MESSAGES: usize = 20;

const SCHEMA_V1: &str = "
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

/// The tables a valid store has; a file that lacks one is refused as corrupt.
const TABLES: [&str; 7] = [
    "store_meta",
    "meta",
    "partitions",
    "clients",
    "assignments",
    "objects",
    "oplog",
];

const PARTITION_COLUMNS: &str = "id, name, serial, wrapped_pmk, sealed_pmk, pin_salt, sealed_pin, \
     failed_logins, policies, activated, digest, extra";

const OP_COLUMNS: &str = "idx, origin, seq, hlc_wall, hlc_logical, client_op_id, kind, body";

/// One origin's operations after a sequence number, in order: what every push,
/// pull and anti-entropy round reads. `seq > 0` is redundant for the rows but
/// lets SQLite use the partial index `oplog_by_origin_seq`; without it each
/// call scanned and sorted the partition's whole log.
fn ops_from_origin_sql() -> String {
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

    // ----- meta -----

    pub fn get_meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let conn = self.lock();
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(self.err("get meta"))
    }

    pub fn put_meta(&self, key: &str, value: &[u8]) -> StoreResult<()> {
        self.write_tx("put meta", |tx| {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(self.err("put meta"))?;
            Ok(())
        })
    }

    /// Removes the key; a key that is not there is not an error.
    pub fn delete_meta(&self, key: &str) -> StoreResult<()> {
        self.write_tx("delete meta", |tx| {
            tx.execute("DELETE FROM meta WHERE key = ?1", [key])
                .map_err(self.err("delete meta"))?;
            Ok(())
        })
    }

    // ----- partitions -----

    /// Creates a partition and returns its id (`row.id` is ignored). Ids are never reused.
    pub fn create_partition(&self, row: &PartitionRow) -> StoreResult<i64> {
        self.write_tx("create partition", |tx| {
            if partition_id_by_name(tx, &row.name)
                .map_err(self.err("create partition"))?
                .is_some()
            {
                return Err(StoreError::Exists(format!("partition {:?} exists", row.name)));
            }
            tx.execute(
                "INSERT INTO partitions (name, serial, wrapped_pmk, sealed_pmk, pin_salt,
                     sealed_pin, failed_logins, policies, activated, digest, extra)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    row.name,
                    row.serial as i64,
                    row.wrapped_pmk,
                    row.sealed_pmk,
                    row.pin_salt,
                    row.sealed_pin,
                    i64::from(row.failed_logins),
                    row.policies,
                    row.activated,
                    row.digest,
                    row.extra
                ],
            )
            .map_err(self.err("create partition"))?;
            Ok(tx.last_insert_rowid())
        })
    }

    pub fn get_partition(&self, name: &str) -> StoreResult<Option<PartitionRow>> {
        let conn = self.lock();
        conn.query_row(
            &format!("SELECT {PARTITION_COLUMNS} FROM partitions WHERE name = ?1"),
            [name],
            partition_from_row,
        )
        .optional()
        .map_err(self.err("get partition"))
    }

    pub fn get_partition_by_id(&self, id: i64) -> StoreResult<Option<PartitionRow>> {
        let conn = self.lock();
        conn.query_row(
            &format!("SELECT {PARTITION_COLUMNS} FROM partitions WHERE id = ?1"),
            [id],
            partition_from_row,
        )
        .optional()
        .map_err(self.err("get partition"))
    }

    /// All partitions, ordered by id.
    pub fn list_partitions(&self) -> StoreResult<Vec<PartitionRow>> {
        let conn = self.lock();
        (|| {
            let mut stmt =
                conn.prepare(&format!("SELECT {PARTITION_COLUMNS} FROM partitions ORDER BY id"))?;
            let rows = stmt.query_map([], partition_from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })()
        .map_err(self.err("list partitions"))
    }

    /// Rewrites every column of the partition with id `row.id`. [`StoreError::NotFound`] if
    /// there is none, [`StoreError::Exists`] if the new name belongs to another partition.
    pub fn update_partition(&self, row: &PartitionRow) -> StoreResult<()> {
        self.write_tx("update partition", |tx| {
            if let Some(other) = partition_id_by_name(tx, &row.name).map_err(self.err("update partition"))? {
                if other != row.id {
                    return Err(StoreError::Exists(format!("partition {:?} exists", row.name)));
                }
            }
            let changed = tx
                .execute(
                    "UPDATE partitions SET name = ?2, serial = ?3, wrapped_pmk = ?4,
                         sealed_pmk = ?5, pin_salt = ?6, sealed_pin = ?7, failed_logins = ?8,
                         policies = ?9, activated = ?10, digest = ?11, extra = ?12
                     WHERE id = ?1",
                    params![
                        row.id,
                        row.name,
                        row.serial as i64,
                        row.wrapped_pmk,
                        row.sealed_pmk,
                        row.pin_salt,
                        row.sealed_pin,
                        i64::from(row.failed_logins),
                        row.policies,
                        row.activated,
                        row.digest,
                        row.extra
                    ],
                )
                .map_err(self.err("update partition"))?;
            if changed == 0 {
                return Err(partition_not_found(row.id));
            }
            Ok(())
        })
    }

    pub fn set_failed_logins(&self, partition_id: i64, count: u32) -> StoreResult<()> {
        self.write_tx("set failed logins", |tx| {
            let changed = tx
                .execute(
                    "UPDATE partitions SET failed_logins = ?2 WHERE id = ?1",
                    params![partition_id, i64::from(count)],
                )
                .map_err(self.err("set failed logins"))?;
            if changed == 0 {
                return Err(partition_not_found(partition_id));
            }
            Ok(())
        })
    }

    /// Deletes the partition with its objects, its operation log and its client
    /// assignments, in one transaction.
    pub fn delete_partition(&self, partition_id: i64) -> StoreResult<()> {
        self.write_tx("delete partition", |tx| {
            let e = self.err("delete partition");
            tx.execute("DELETE FROM assignments WHERE partition_id = ?1", [partition_id])
                .map_err(&e)?;
            tx.execute("DELETE FROM objects WHERE partition_id = ?1", [partition_id])
                .map_err(&e)?;
            tx.execute("DELETE FROM oplog WHERE partition_id = ?1", [partition_id])
                .map_err(&e)?;
            let changed = tx
                .execute("DELETE FROM partitions WHERE id = ?1", [partition_id])
                .map_err(&e)?;
            if changed == 0 {
                return Err(partition_not_found(partition_id));
            }
            Ok(())
        })
    }

    // ----- clients -----

    /// Registers a client. [`StoreError::Exists`] if its name, or its fingerprint
    /// (compared without regard to case), is taken.
    pub fn register_client(&self, row: &ClientRow) -> StoreResult<()> {
        self.write_tx("register client", |tx| {
            let e = self.err("register client");
            if client_exists(tx, &row.name).map_err(&e)? {
                return Err(StoreError::Exists(format!("client {:?} exists", row.name)));
            }
            let holder: Option<String> = tx
                .query_row(
                    "SELECT name FROM clients WHERE fingerprint_hex = ?1",
                    [&row.fingerprint_hex],
                    |r| r.get(0),
                )
                .optional()
                .map_err(&e)?;
            if let Some(holder) = holder {
                return Err(StoreError::Exists(format!(
                    "fingerprint {} is registered to client {holder:?}",
                    row.fingerprint_hex
                )));
            }
            tx.execute(
                "INSERT INTO clients (name, fingerprint_hex, hostname) VALUES (?1, ?2, ?3)",
                params![row.name, row.fingerprint_hex, row.hostname],
            )
            .map_err(&e)?;
            Ok(())
        })
    }

    /// Removes the client and its partition assignments.
    pub fn remove_client(&self, name: &str) -> StoreResult<()> {
        self.write_tx("remove client", |tx| {
            let e = self.err("remove client");
            tx.execute("DELETE FROM assignments WHERE client_name = ?1", [name])
                .map_err(&e)?;
            let changed = tx
                .execute("DELETE FROM clients WHERE name = ?1", [name])
                .map_err(&e)?;
            if changed == 0 {
                return Err(client_not_found(name));
            }
            Ok(())
        })
    }

    /// All clients, ordered by name.
    pub fn list_clients(&self) -> StoreResult<Vec<ClientRow>> {
        let conn = self.lock();
        (|| {
            let mut stmt =
                conn.prepare("SELECT name, fingerprint_hex, hostname FROM clients ORDER BY name")?;
            let rows = stmt.query_map([], client_from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })()
        .map_err(self.err("list clients"))
    }

    /// The client with this certificate fingerprint (compared without regard to case).
    pub fn client_by_fingerprint(&self, fingerprint_hex: &str) -> StoreResult<Option<ClientRow>> {
        let conn = self.lock();
        conn.query_row(
            "SELECT name, fingerprint_hex, hostname FROM clients WHERE fingerprint_hex = ?1",
            [fingerprint_hex],
            client_from_row,
        )
        .optional()
        .map_err(self.err("find client"))
    }

    /// Lets the client use the partition. [`StoreError::NotFound`] for an unknown client
    /// or partition; assigning twice is not an error.
    pub fn assign_partition(&self, client: &str, partition: &str) -> StoreResult<()> {
        self.write_tx("assign partition", |tx| {
            let partition_id = self.resolve_assignment(tx, client, partition)?;
            tx.execute(
                "INSERT INTO assignments (client_name, partition_id) VALUES (?1, ?2)
                 ON CONFLICT DO NOTHING",
                params![client, partition_id],
            )
            .map_err(self.err("assign partition"))?;
            Ok(())
        })
    }

    /// Takes the partition away from the client. [`StoreError::NotFound`] for an unknown
    /// client or partition; revoking what was not assigned is not an error.
    pub fn revoke_partition(&self, client: &str, partition: &str) -> StoreResult<()> {
        self.write_tx("revoke partition", |tx| {
            let partition_id = self.resolve_assignment(tx, client, partition)?;
            tx.execute(
                "DELETE FROM assignments WHERE client_name = ?1 AND partition_id = ?2",
                params![client, partition_id],
            )
            .map_err(self.err("revoke partition"))?;
            Ok(())
        })
    }

    /// The names of the partitions the client may use, sorted. [`StoreError::NotFound`]
    /// for an unknown client.
    pub fn partitions_of_client(&self, client: &str) -> StoreResult<Vec<String>> {
        let conn = self.lock();
        let e = self.err("list partitions of client");
        if !client_exists(&conn, client).map_err(&e)? {
            return Err(client_not_found(client));
        }
        (|| {
            let mut stmt = conn.prepare(
                "SELECT p.name FROM assignments a JOIN partitions p ON p.id = a.partition_id
                 WHERE a.client_name = ?1 ORDER BY p.name",
            )?;
            let rows = stmt.query_map([client], |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })()
        .map_err(&e)
    }

    // ----- objects and the operation log -----

    /// Every object of the partition, ordered by OUID (empty for an unknown partition).
    pub fn load_objects(&self, partition_id: i64) -> StoreResult<Vec<ObjectRow>> {
        let conn = self.lock();
        (|| {
            let mut stmt = conn.prepare_cached(
                "SELECT ouid, version, sealed FROM objects WHERE partition_id = ?1 ORDER BY ouid",
            )?;
            let rows = stmt.query_map([partition_id], |r| {
                Ok(ObjectRow {
                    ouid: id16_col(r, 0)?,
                    version: u64_col(r, 1)?,
                    sealed: r.get(2)?,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })()
        .map_err(self.err("load objects"))
    }

    /// Applies one write atomically: the optional clear of all the partition's objects, the
    /// puts (insert or replace by OUID), the deletes, the operation-log entry and the optional
    /// new partition digest, in that order and in one transaction. Returns the entry's local
    /// log index, which grows with every commit in the store and is never reused.
    ///
    /// Errors, after which nothing of the write is applied: [`StoreError::NotFound`] for an
    /// unknown partition, [`StoreError::Exists`] if the log already holds an entry from the
    /// same origin with the same (non-zero) sequence number, [`StoreError::Invalid`] for a
    /// sequence number above `i64::MAX`, [`StoreError::Full`] for a full disk.
    pub fn commit(&self, partition_id: i64, write: &Write) -> StoreResult<u64> {
        self.write_tx("commit", |tx| self.apply_write(tx, partition_id, write))
    }

    /// Applies several writes in one transaction: all of them, or none. The
    /// replication runtime uses it to apply a batch of a peer's operations with
    /// one sync to disk. Returns the last op's log index.
    pub fn commit_many(&self, partition_id: i64, writes: &[Write]) -> StoreResult<u64> {
        self.write_tx("commit", |tx| {
            let mut last = 0;
            for w in writes {
                last = self.apply_write(tx, partition_id, w)?;
            }
            Ok(last)
        })
    }

    fn apply_write(&self, tx: &Transaction<'_>, partition_id: i64, write: &Write) -> StoreResult<u64> {
        let op = &write.op;
        let seq = i64::try_from(op.seq)
            .map_err(|_| StoreError::Invalid(format!("op sequence number {} is above i64::MAX", op.seq)))?;

        if write.clear {
            tx.execute("DELETE FROM objects WHERE partition_id = ?1", [partition_id])
                .map_err(self.err("commit: clear objects"))?;
        }
        if !write.puts.is_empty() {
            let e = self.err("commit: put object");
            let mut put = tx
                .prepare_cached(
                    "INSERT INTO objects (partition_id, ouid, version, sealed)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (partition_id, ouid)
                     DO UPDATE SET version = excluded.version, sealed = excluded.sealed",
                )
                .map_err(&e)?;
            for object in &write.puts {
                put.execute(params![
                    partition_id,
                    &object.ouid[..],
                    object.version as i64,
                    object.sealed
                ])
                .map_err(|err| match e(err) {
                    StoreError::NotFound(_) => partition_not_found(partition_id),
                    other => other,
                })?;
            }
        }
        if !write.deletes.is_empty() {
            let e = self.err("commit: delete object");
            let mut delete = tx
                .prepare_cached("DELETE FROM objects WHERE partition_id = ?1 AND ouid = ?2")
                .map_err(&e)?;
            for ouid in &write.deletes {
                delete.execute(params![partition_id, &ouid[..]]).map_err(&e)?;
            }
        }
        let e = self.err("commit: append op");
        tx.prepare_cached(
            "INSERT INTO oplog (partition_id, origin, seq, hlc_wall, hlc_logical,
                 client_op_id, kind, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                partition_id,
                op.origin as i64,
                seq,
                op.hlc_wall as i64,
                i64::from(op.hlc_logical),
                op.client_op_id.as_ref().map(|id| &id[..]),
                op.kind,
                op.body
            ])
        })
        .map_err(|err| match e(err) {
            StoreError::NotFound(_) => partition_not_found(partition_id),
            StoreError::Exists(_) => StoreError::Exists(format!(
                "partition {partition_id} already has op {} from origin {}",
                op.seq, op.origin
            )),
            other => other,
        })?;
        let index = tx.last_insert_rowid();
        if let Some(digest) = &write.digest {
            let changed = tx
                .execute(
                    "UPDATE partitions SET digest = ?2 WHERE id = ?1",
                    params![partition_id, digest],
                )
                .map_err(self.err("commit: set digest"))?;
            if changed == 0 {
                return Err(partition_not_found(partition_id));
            }
        }
        // AUTOINCREMENT rowids start at 1 and stay below i64::MAX (SQLite fails with
        // SQLITE_FULL rather than wrap), so the conversion cannot fail; be safe anyway.
        u64::try_from(index)
            .map_err(|_| StoreError::Corrupt(format!("{}: negative op-log index", self.path.display())))
    }

    /// Up to `limit` log entries of the partition with an index above `after_index`,
    /// ordered by index.
    pub fn ops_since(&self, partition_id: i64, after_index: u64, limit: usize) -> StoreResult<Vec<OpRow>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Indices never exceed i64::MAX, so a larger `after_index` finds nothing, as it should.
        let after = i64::try_from(after_index).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let conn = self.lock();
        (|| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {OP_COLUMNS} FROM oplog WHERE partition_id = ?1 AND idx > ?2
                 ORDER BY idx LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![partition_id, after, limit], op_from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })()
        .map_err(self.err("read op log"))
    }

    /// One origin's entries after sequence number `after_seq`, in sequence
    /// order: what anti-entropy sends a peer that has applied up to `after_seq`.
    pub fn ops_from_origin(
        &self,
        partition_id: i64,
        origin: u64,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<OpRow>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let conn = self.lock();
        (|| {
            let mut stmt = conn.prepare_cached(&ops_from_origin_sql())?;
            let rows = stmt.query_map(params![partition_id, origin as i64, after, limit], op_from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })()
        .map_err(self.err("read op log by origin"))
    }

    /// The greatest hybrid-logical-clock stamp in the partition's log, as
    /// (wall milliseconds, logical); (0, 0) for an empty log. A restarted member
    /// moves its clock past it, so its new writes order after its old ones even
    /// if the wall clock went back.
    pub fn max_hlc(&self, partition_id: i64) -> StoreResult<(u64, u32)> {
        let conn = self.lock();
        conn.query_row(
            "SELECT hlc_wall, hlc_logical FROM oplog WHERE partition_id = ?1
             ORDER BY hlc_wall DESC, hlc_logical DESC LIMIT 1",
            [partition_id],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u32)),
        )
        .optional()
        .map(|o| o.unwrap_or((0, 0)))
        .map_err(self.err("read max hlc"))
    }

    /// For each origin, the highest sequence number logged: the partition's
    /// version vector, as the log proves it.
    pub fn version_vector(&self, partition_id: i64) -> StoreResult<Vec<(u64, u64)>> {
        let conn = self.lock();
        (|| {
            let mut stmt = conn.prepare_cached(
                "SELECT origin, MAX(seq) FROM oplog WHERE partition_id = ?1 AND seq > 0 GROUP BY origin",
            )?;
            let rows = stmt.query_map([partition_id], |r| {
                let (o, s): (i64, i64) = (r.get(0)?, r.get(1)?);
                Ok((o as u64, s as u64))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })()
        .map_err(self.err("read version vector"))
    }

    /// The first log entry of the partition that carries this client operation id.
    pub fn op_by_client_op_id(
        &self,
        partition_id: i64,
        client_op_id: &[u8; 16],
    ) -> StoreResult<Option<OpRow>> {
        let conn = self.lock();
        conn.query_row(
            &format!(
                "SELECT {OP_COLUMNS} FROM oplog WHERE partition_id = ?1 AND client_op_id = ?2
                 ORDER BY idx LIMIT 1"
            ),
            params![partition_id, &client_op_id[..]],
            op_from_row,
        )
        .optional()
        .map_err(self.err("find op by client op id"))
    }

    /// The highest sequence number logged for the partition from this origin, 0 if none.
    pub fn max_seq(&self, partition_id: i64, origin: u64) -> StoreResult<u64> {
        let conn = self.lock();
        let max: Option<i64> = conn
            .query_row(
                "SELECT MAX(seq) FROM oplog WHERE partition_id = ?1 AND origin = ?2 AND seq > 0",
                params![partition_id, origin as i64],
                |r| r.get(0),
            )
            .map_err(self.err("max seq"))?;
        // seq > 0 in the query, so the value is positive.
        Ok(max.map_or(0, |m| m as u64))
    }

    /// The number of objects in the partition.
    pub fn object_count(&self, partition_id: i64) -> StoreResult<u64> {
        let conn = self.lock();
        let count: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM objects WHERE partition_id = ?1",
                [partition_id],
                |r| r.get(0),
            )
            .map_err(self.err("count objects"))?;
        Ok(count.max(0) as u64)
    }

    // ----- helpers -----

    /// Locks the connection. A thread that panicked while holding the lock has left no
    /// half-done transaction behind (rusqlite rolls back on drop, and we roll back any
    /// leftover here), so a poisoned lock is safe to take over.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        let guard = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if !guard.is_autocommit() {
            if let Err(err) = guard.execute_batch("ROLLBACK") {
                tracing::warn!(path = %self.path.display(), error = %err, "rollback of a leftover transaction failed");
            }
        }
        guard
    }

    /// A mapper from rusqlite errors for this store and this action.
    fn err<'a>(&'a self, ctx: &'a str) -> impl Fn(rusqlite::Error) -> StoreError + 'a {
        move |e| map_sqlite(e, &self.path, ctx)
    }

    /// Runs `f` in one immediate (write-locking) transaction, committed only if `f` succeeds.
    fn write_tx<T>(&self, ctx: &str, f: impl FnOnce(&Transaction<'_>) -> StoreResult<T>) -> StoreResult<T> {
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
    fn resolve_assignment(&self, tx: &Transaction<'_>, client: &str, partition: &str) -> StoreResult<i64> {
        let e = self.err("resolve client and partition");
        if !client_exists(tx, client).map_err(&e)? {
            return Err(client_not_found(client));
        }
        partition_id_by_name(tx, partition)
            .map_err(&e)?
            .ok_or_else(|| StoreError::NotFound(format!("partition {partition:?}")))
    }
}

fn partition_not_found(id: i64) -> StoreError {
    StoreError::NotFound(format!("partition id {id}"))
}

fn client_not_found(name: &str) -> StoreError {
    StoreError::NotFound(format!("client {name:?}"))
}

fn partition_id_by_name(conn: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT id FROM partitions WHERE name = ?1", [name], |r| r.get(0))
        .optional()
}

fn client_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM clients WHERE name = ?1)",
        [name],
        |r| r.get(0),
    )
}

fn read_settings(conn: &Connection) -> rusqlite::Result<Settings> {
    Ok(Settings {
        journal_mode: conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?,
        synchronous: conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?,
        foreign_keys: conn.query_row("PRAGMA foreign_keys", [], |r| r.get::<_, i64>(0))? == 1,
    })
}

/// Runs `PRAGMA quick_check` or `PRAGMA integrity_check`; anything but a single "ok"
/// (or an error that says the file is damaged) is [`StoreError::Corrupt`].
fn run_check(conn: &Connection, path: &Path, pragma: &str) -> StoreResult<()> {
    let found = (|| {
        let mut stmt = conn.prepare(&format!("PRAGMA {pragma}({MAX_CHECK_MESSAGES})"))?;
        let rows = stmt.query_map([], |r| r.get::<_, Option<String>>(0))?;
        rows.take(MAX_CHECK_MESSAGES)
            .collect::<rusqlite::Result<Vec<Option<String>>>>()
    })()
    .map_err(|e| match map_sqlite(e, path, pragma) {
        // Whatever stops the check from running on a readable file means damage.
        StoreError::Corrupt(msg) => StoreError::Corrupt(msg),
        StoreError::Sqlite(msg) if msg.contains("malformed") => StoreError::Corrupt(msg),
        other => other,
    })?;
    // SQLite's messages may span lines; keep the error on one.
    let found: Vec<String> = found
        .into_iter()
        .map(|m| {
            m.map_or_else(
                || "(no message)".to_owned(),
                |m| m.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    if matches!(found.as_slice(), [only] if only == "ok") {
        return Ok(());
    }
    Err(StoreError::Corrupt(format!(
        "{}: {pragma} found the file damaged: {}",
        path.display(),
        if found.is_empty() {
            "(no result)".to_owned()
        } else {
            found.join("; ")
        }
    )))
}

/// Creates a missing store file empty and readable by its owner only (it holds wrapped and
/// sealed keys), and syncs its directory so that the new name is durable. SQLite gives the
/// `-wal` and `-shm` files the same permissions. An existing file is left as it is.
fn create_private_file(path: &Path) -> StoreResult<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let io = |what: &str, e: std::io::Error| {
        let msg = format!("{}: {what}: {e}", path.display());
        if error::is_no_space(&e) {
            StoreError::Full(msg)
        } else {
            StoreError::Sqlite(msg)
        }
    };
    match options.open(path) {
        Ok(file) => {
            file.sync_all().map_err(|e| io("sync the new store file", e))?;
            let dir = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            // Directories can be opened read-only and synced on Unix; elsewhere this may
            // fail, which only loses the extra durability of a brand-new file's name.
            if let Ok(dir) = std::fs::File::open(dir) {
                if let Err(e) = dir.sync_all() {
                    tracing::warn!(path = %path.display(), error = %e, "cannot sync the store's directory");
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io("create the store file", e)),
    }
}

/// Creates the schema in a new file, or checks the version of an existing one.
fn init_schema(conn: &mut Connection, path: &Path) -> StoreResult<()> {
    let err = |ctx: &'static str| move |e| map_sqlite(e, path, ctx);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err("check schema"))?;
    let table_exists = |name: &str| -> rusqlite::Result<bool> {
        tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
            [name],
            |r| r.get(0),
        )
    };
    if table_exists("store_meta").map_err(err("check schema"))? {
        let version: Option<i64> = tx
            .query_row(
                "SELECT value FROM store_meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(err("read schema version"))?;
        match version {
            None => {
                return Err(StoreError::Corrupt(format!(
                    "{}: the store has no schema version",
                    path.display()
                )))
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::Schema(format!(
                    "{}: schema version {v} is newer than this build's {SCHEMA_VERSION}; \
                     upgrade hahsm",
                    path.display()
                )))
            }
            Some(v) if v < 1 => {
                return Err(StoreError::Corrupt(format!(
                    "{}: invalid schema version {v}",
                    path.display()
                )))
            }
            // Version 1 is the only one so far: nothing to migrate.
            Some(_) => {}
        }
        for table in TABLES {
            if !table_exists(table).map_err(err("check schema"))? {
                return Err(StoreError::Corrupt(format!(
                    "{}: the store has no {table} table",
                    path.display()
                )));
            }
        }
        // Nothing was written: committing only releases the lock.
        tx.commit().map_err(err("check schema"))?;
        return Ok(());
    }
    let objects: i64 = tx
        .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(err("check schema"))?;
    if objects > 0 {
        return Err(StoreError::Corrupt(format!(
            "{}: this SQLite database is not a hahsm store (it has no store_meta table)",
            path.display()
        )));
    }
    tx.execute_batch(SCHEMA_V1).map_err(err("create schema"))?;
    tx.execute(
        "INSERT INTO store_meta (key, value) VALUES ('schema_version', ?1)",
        [SCHEMA_VERSION],
    )
    .map_err(err("create schema"))?;
    tx.commit().map_err(err("create schema"))?;
    Ok(())
}

// ----- row decoding: a value that does not fit is a conversion error, mapped to Corrupt -----

/// u64 values are stored as the i64 with the same bits.
fn u64_col(row: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(row.get::<_, i64>(i)? as u64)
}

fn u32_col(row: &Row<'_>, i: usize) -> rusqlite::Result<u32> {
    let v: i64 = row.get(i)?;
    u32::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(i, v))
}

fn bool_col(row: &Row<'_>, i: usize) -> rusqlite::Result<bool> {
    match row.get::<_, i64>(i)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(rusqlite::Error::IntegralValueOutOfRange(i, v)),
    }
}

fn to_id16(bytes: &[u8], i: usize) -> rusqlite::Result<[u8; 16]> {
    <[u8; 16]>::try_from(bytes).map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            Type::Blob,
            format!("expected a 16-byte id, found {} bytes", bytes.len()).into(),
        )
    })
}

fn id16_col(row: &Row<'_>, i: usize) -> rusqlite::Result<[u8; 16]> {
    let bytes: Vec<u8> = row.get(i)?;
    to_id16(&bytes, i)
}

fn opt_id16_col(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<[u8; 16]>> {
    let bytes: Option<Vec<u8>> = row.get(i)?;
    bytes.map(|b| to_id16(&b, i)).transpose()
}

fn partition_from_row(r: &Row<'_>) -> rusqlite::Result<PartitionRow> {
    Ok(PartitionRow {
        id: r.get(0)?,
        name: r.get(1)?,
        serial: u64_col(r, 2)?,
        wrapped_pmk: r.get(3)?,
        sealed_pmk: r.get(4)?,
        pin_salt: r.get(5)?,
        sealed_pin: r.get(6)?,
        failed_logins: u32_col(r, 7)?,
        policies: r.get(8)?,
        activated: bool_col(r, 9)?,
        digest: r.get(10)?,
        extra: r.get(11)?,
    })
}

fn client_from_row(r: &Row<'_>) -> rusqlite::Result<ClientRow> {
    Ok(ClientRow {
        name: r.get(0)?,
        fingerprint_hex: r.get(1)?,
        hostname: r.get(2)?,
    })
}

fn op_from_row(r: &Row<'_>) -> rusqlite::Result<OpRow> {
    Ok(OpRow {
        index: u64_col(r, 0)?,
        origin: u64_col(r, 1)?,
        seq: u64_col(r, 2)?,
        hlc_wall: u64_col(r, 3)?,
        hlc_logical: u32_col(r, 4)?,
        client_op_id: opt_id16_col(r, 5)?,
        kind: r.get(6)?,
        body: r.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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
