//! The key-value table of the daemon's own settings.
use crate::*;
use rusqlite::{params, OptionalExtension};

impl Store {
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
}
