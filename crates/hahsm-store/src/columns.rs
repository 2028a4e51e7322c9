//! Free helpers of the store: rows to structs, the checks and look-ups
//! shared by the tables, creating the file and its schema.
use crate::*;
use error::map_sqlite;
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior};
use std::path::Path;

pub(crate) fn partition_not_found(id: i64) -> StoreError {
    StoreError::NotFound(format!("partition id {id}"))
}

pub(crate) fn client_not_found(name: &str) -> StoreError {
    StoreError::NotFound(format!("client {name:?}"))
}

pub(crate) fn partition_id_by_name(conn: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT id FROM partitions WHERE name = ?1", [name], |r| r.get(0))
        .optional()
}

pub(crate) fn client_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM clients WHERE name = ?1)",
        [name],
        |r| r.get(0),
    )
}

pub(crate) fn read_settings(conn: &Connection) -> rusqlite::Result<Settings> {
    Ok(Settings {
        journal_mode: conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?,
        synchronous: conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?,
        foreign_keys: conn.query_row("PRAGMA foreign_keys", [], |r| r.get::<_, i64>(0))? == 1,
    })
}

/// Runs `PRAGMA quick_check` or `PRAGMA integrity_check`; anything but a single "ok"
/// (or an error that says the file is damaged) is [`StoreError::Corrupt`].
pub(crate) fn run_check(conn: &Connection, path: &Path, pragma: &str) -> StoreResult<()> {
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
pub(crate) fn create_private_file(path: &Path) -> StoreResult<()> {
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
pub(crate) fn init_schema(conn: &mut Connection, path: &Path) -> StoreResult<()> {
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
            Some(1) => {
                tx.execute_batch(SCHEMA_V2)
                    .map_err(err("migrate schema to version 2"))?;
                tx.execute(
                    "UPDATE store_meta SET value = ?1 WHERE key = 'schema_version'",
                    [SCHEMA_VERSION],
                )
                .map_err(err("migrate schema to version 2"))?;
            }
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
        // Only a migration wrote anything; otherwise committing releases the lock.
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
    tx.execute_batch(SCHEMA_V2).map_err(err("create schema"))?;
    tx.execute(
        "INSERT INTO store_meta (key, value) VALUES ('schema_version', ?1)",
        [SCHEMA_VERSION],
    )
    .map_err(err("create schema"))?;
    tx.commit().map_err(err("create schema"))?;
    Ok(())
}

// Row decoding.: a value that does not fit is a conversion error, mapped to Corrupt -----

/// u64 values are stored as the i64 with the same bits.
pub(crate) fn u64_col(row: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(row.get::<_, i64>(i)? as u64)
}

pub(crate) fn u32_col(row: &Row<'_>, i: usize) -> rusqlite::Result<u32> {
    let v: i64 = row.get(i)?;
    u32::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(i, v))
}

pub(crate) fn bool_col(row: &Row<'_>, i: usize) -> rusqlite::Result<bool> {
    match row.get::<_, i64>(i)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(rusqlite::Error::IntegralValueOutOfRange(i, v)),
    }
}

pub(crate) fn to_id16(bytes: &[u8], i: usize) -> rusqlite::Result<[u8; 16]> {
    <[u8; 16]>::try_from(bytes).map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            Type::Blob,
            format!("expected a 16-byte id, found {} bytes", bytes.len()).into(),
        )
    })
}

pub(crate) fn id16_col(row: &Row<'_>, i: usize) -> rusqlite::Result<[u8; 16]> {
    let bytes: Vec<u8> = row.get(i)?;
    to_id16(&bytes, i)
}

pub(crate) fn opt_id16_col(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<[u8; 16]>> {
    let bytes: Option<Vec<u8>> = row.get(i)?;
    bytes.map(|b| to_id16(&b, i)).transpose()
}

pub(crate) fn partition_from_row(r: &Row<'_>) -> rusqlite::Result<PartitionRow> {
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

pub(crate) fn client_from_row(r: &Row<'_>) -> rusqlite::Result<ClientRow> {
    Ok(ClientRow {
        name: r.get(0)?,
        fingerprint_hex: r.get(1)?,
        hostname: r.get(2)?,
    })
}

pub(crate) fn op_from_row(r: &Row<'_>) -> rusqlite::Result<OpRow> {
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
