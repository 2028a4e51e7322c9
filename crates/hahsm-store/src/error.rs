//! The store's error type, and the one place where SQLite's errors are sorted into it.
//!
//! Messages name the store file and what was being done. They never carry stored values:
//! the store does not look at them, and callers' sealed blobs stay out of logs.
use hahsm_token::TokenError;
use rusqlite::ErrorCode;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file is not a SQLite database, failed an integrity check, or holds a malformed row.
    #[error("the store is corrupt: {0}")]
    Corrupt(String),
    /// The disk (or the user's quota, or SQLite's page limit) is full: `SQLITE_FULL`, `ENOSPC`, `EDQUOT`.
    #[error("the store is full: {0}")]
    Full(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    Exists(String),
    /// The file was written by a newer hahsm (a schema version this build does not know).
    #[error("unsupported store schema: {0}")]
    Schema(String),
    /// The caller passed a value the store cannot keep (for example a sequence number above `i64::MAX`).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Any other SQLite or I/O failure (busy, read-only, permission denied, I/O error).
    #[error("store error: {0}")]
    Sqlite(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl From<StoreError> for TokenError {
    /// A full store is `CKR_DEVICE_MEMORY`; anything else the store reports is `CKR_DEVICE_ERROR`.
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Full(msg) => TokenError::DeviceMemory(msg),
            other => TokenError::DeviceError(other.to_string()),
        }
    }
}

/// Sorts a rusqlite error into a [`StoreError`]. `path` is the store file, `ctx` says
/// what the store was doing; both go into the message.
pub(crate) fn map_sqlite(err: rusqlite::Error, path: &Path, ctx: &str) -> StoreError {
    use rusqlite::Error as E;
    let place = format!("{}: {ctx}", path.display());
    match &err {
        E::SqliteFailure(failure, _) => match failure.code {
            ErrorCode::DiskFull => StoreError::Full(format!("{place}: disk full ({err})")),
            ErrorCode::NotADatabase => {
                StoreError::Corrupt(format!("{place}: the file is not a SQLite database ({err})"))
            }
            ErrorCode::DatabaseCorrupt => {
                StoreError::Corrupt(format!("{place}: the database file is malformed ({err})"))
            }
            ErrorCode::ConstraintViolation => match failure.extended_code {
                rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                    StoreError::Exists(format!("{place}: a row with this key exists ({err})"))
                }
                rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => {
                    StoreError::NotFound(format!("{place}: a row it refers to does not exist ({err})"))
                }
                _ => StoreError::Sqlite(format!("{place}: constraint failed ({err})")),
            },
            // SQLite turns ENOSPC on write() into SQLITE_FULL itself, but EDQUOT, and ENOSPC
            // from fsync, ftruncate or the shared-memory file, come back as SQLITE_IOERR_*.
            // rusqlite gives no errno without unsafe code, so ask the file system.
            ErrorCode::SystemIoFailure if no_space_left(path) => {
                StoreError::Full(format!("{place}: disk full ({err})"))
            }
            ErrorCode::SystemIoFailure => StoreError::Sqlite(format!("{place}: I/O error ({err})")),
            _ => StoreError::Sqlite(format!("{place}: {err}")),
        },
        E::FromSqlConversionFailure(..)
        | E::InvalidColumnType(..)
        | E::IntegralValueOutOfRange(..)
        | E::Utf8Error(..) => StoreError::Corrupt(format!("{place}: malformed row ({err})")),
        _ => StoreError::Sqlite(format!("{place}: {err}")),
    }
}

/// True if `err` is ENOSPC or EDQUOT.
pub(crate) fn is_no_space(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT)
}

/// Called only after an I/O error: tries to write and sync a 64 KiB probe file next to
/// the store, and reports whether that failed for lack of space or quota.
fn no_space_left(store: &Path) -> bool {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match store.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let base = store
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".to_owned());
    let probe = dir.join(format!(
        ".{base}.space-probe-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> std::io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&probe)?;
        file.write_all(&[0u8; 64 * 1024])?;
        file.sync_all()
    })();
    // The probe may not exist if create failed; either way it must not stay behind.
    let _ = std::fs::remove_file(&probe);
    matches!(result, Err(ref e) if is_no_space(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn the_space_probe_tells_a_full_file_system_from_one_with_room() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("s.db");
        assert!(!no_space_left(&store));
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("ls").count(),
            0,
            "probe left behind"
        );

        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&mnt)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !mounted {
            println!("skipped: needs root to mount tmpfs");
            return;
        }
        let result = std::panic::catch_unwind(|| {
            let filler = mnt.join("filler");
            let mut file = std::fs::File::create(&filler).expect("create");
            let chunk = [0x5Au8; 4096];
            let filled = loop {
                if let Err(e) = file.write_all(&chunk) {
                    break e;
                }
            };
            assert!(is_no_space(&filled), "{filled}");
            drop(file);
            assert!(no_space_left(&mnt.join("s.db")));
        });
        let _ = Command::new("umount").arg(&mnt).status();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
