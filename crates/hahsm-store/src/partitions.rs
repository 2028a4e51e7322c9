//! Partitions (tokens): their rows, login state and deletion.
use crate::columns::*;
use crate::*;
use rusqlite::{params, OptionalExtension};

impl Store {
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
            tx.execute("DELETE FROM log_floor WHERE partition_id = ?1", [partition_id])
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
}
