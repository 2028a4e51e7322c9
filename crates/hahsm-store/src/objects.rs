//! A partition's objects and its operation log: loading, the one-transaction
//! commit of a write, and reading operations for replication.
use crate::columns::*;
use crate::*;
use rusqlite::{params, OptionalExtension, Transaction};

impl Store {
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

    pub(crate) fn apply_write(
        &self,
        tx: &Transaction<'_>,
        partition_id: i64,
        write: &Write,
    ) -> StoreResult<u64> {
        let op = &write.op;
        let seq = i64::try_from(op.seq)
            .map_err(|_| StoreError::Invalid(format!("op sequence number {} is above i64::MAX", op.seq)))?;

        if write.clear {
            tx.execute("DELETE FROM objects WHERE partition_id = ?1", [partition_id])
                .map_err(self.err("commit: clear objects"))?;
        }
        if !write.puts.is_empty() {
            self.put_objects(tx, partition_id, &write.puts, "commit: put object")?;
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
            "SELECT hlc_wall, hlc_logical FROM (
                 SELECT hlc_wall, hlc_logical FROM oplog WHERE partition_id = ?1
                 UNION ALL
                 SELECT hlc_wall, hlc_logical FROM log_floor WHERE partition_id = ?1)
             ORDER BY hlc_wall DESC, hlc_logical DESC LIMIT 1",
            [partition_id],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u32)),
        )
        .optional()
        .map(|o| o.unwrap_or((0, 0)))
        .map_err(self.err("read max hlc"))
    }

    /// For each origin, the highest sequence number logged or below the log's
    /// floor: the partition's version vector.
    pub fn version_vector(&self, partition_id: i64) -> StoreResult<Vec<(u64, u64)>> {
        let conn = self.lock();
        (|| {
            let mut stmt = conn.prepare_cached(
                "SELECT origin, MAX(seq) FROM (
                     SELECT origin, seq FROM oplog WHERE partition_id = ?1 AND seq > 0
                     UNION ALL
                     SELECT origin, seq FROM log_floor WHERE partition_id = ?1)
                 GROUP BY origin ORDER BY origin",
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

    /// The highest sequence number logged for the partition from this origin,
    /// or below the log's floor; 0 if none.
    pub fn max_seq(&self, partition_id: i64, origin: u64) -> StoreResult<u64> {
        let conn = self.lock();
        let max: Option<i64> = conn
            .query_row(
                "SELECT MAX(seq) FROM (
                     SELECT seq FROM oplog WHERE partition_id = ?1 AND origin = ?2 AND seq > 0
                     UNION ALL
                     SELECT seq FROM log_floor WHERE partition_id = ?1 AND origin = ?2)",
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

    /// Inserts or replaces object rows by OUID.
    fn put_objects(
        &self,
        tx: &Transaction<'_>,
        partition_id: i64,
        rows: &[ObjectRow],
        ctx: &'static str,
    ) -> StoreResult<()> {
        let e = self.err(ctx);
        let mut put = tx
            .prepare_cached(
                "INSERT INTO objects (partition_id, ouid, version, sealed)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (partition_id, ouid)
                 DO UPDATE SET version = excluded.version, sealed = excluded.sealed",
            )
            .map_err(&e)?;
        for object in rows {
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
        Ok(())
    }

    /// Per origin, the highest sequence number no longer in the log (compacted,
    /// or covered by a snapshot): a peer that lacks operations at or below it
    /// must catch up from a snapshot. Origins with nothing below the floor are
    /// absent.
    pub fn log_floor(&self, partition_id: i64) -> StoreResult<Vec<(u64, u64)>> {
        let conn = self.lock();
        (|| {
            let mut stmt = conn.prepare_cached(
                "SELECT origin, seq FROM log_floor WHERE partition_id = ?1 ORDER BY origin",
            )?;
            let rows = stmt.query_map([partition_id], |r| Ok((u64_col(r, 0)?, u64_col(r, 1)?)))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })()
        .map_err(self.err("read log floor"))
    }

    /// Compacts the log: for each `(origin, upto)`, drops that origin's entries
    /// with a sequence number up to `upto` and stamped before `before_wall_ms`,
    /// and raises its floor to the last one dropped, keeping its stamp (so the
    /// version vector and the clock stay what they were). One transaction.
    /// Returns how many entries were dropped.
    pub fn compact_log(
        &self,
        partition_id: i64,
        upto: &[(u64, u64)],
        before_wall_ms: u64,
    ) -> StoreResult<u64> {
        let before = i64::try_from(before_wall_ms).unwrap_or(i64::MAX);
        self.write_tx("compact the op log", |tx| {
            let e = self.err("compact the op log");
            let mut dropped = 0u64;
            for &(origin, upto) in upto {
                let upto = i64::try_from(upto).unwrap_or(i64::MAX);
                // Each origin stamps its operations in sequence order, so the
                // old enough ones are a prefix.
                let last: Option<(i64, i64, i64)> = tx
                    .query_row(
                        "SELECT seq, hlc_wall, hlc_logical FROM oplog
                         WHERE partition_id = ?1 AND origin = ?2 AND seq > 0 AND seq <= ?3 AND hlc_wall < ?4
                         ORDER BY seq DESC LIMIT 1",
                        params![partition_id, origin as i64, upto, before],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
                    .map_err(&e)?;
                let Some((seq, wall, logical)) = last else {
                    continue;
                };
                dropped += tx
                    .execute(
                        "DELETE FROM oplog WHERE partition_id = ?1 AND origin = ?2 AND seq > 0 AND seq <= ?3",
                        params![partition_id, origin as i64, seq],
                    )
                    .map_err(&e)? as u64;
                raise_floor(tx, partition_id, origin, seq, wall, logical).map_err(&e)?;
            }
            Ok(dropped)
        })
    }

    /// Joins states from a peer's snapshot: the changed objects (insert or
    /// replace by OUID) and the new partition digest, and, after its last page,
    /// the floor raised to what the snapshot covers (`(origin, seq)`, with the
    /// greatest stamp the snapshot holds). One transaction.
    pub fn install_states(
        &self,
        partition_id: i64,
        puts: &[ObjectRow],
        digest: &[u8],
        covers: &[(u64, u64)],
        max_hlc: (u64, u32),
    ) -> StoreResult<()> {
        self.write_tx("install a snapshot", |tx| {
            let e = self.err("install a snapshot");
            self.put_objects(tx, partition_id, puts, "install a snapshot")?;
            let changed = tx
                .execute(
                    "UPDATE partitions SET digest = ?2 WHERE id = ?1",
                    params![partition_id, digest],
                )
                .map_err(&e)?;
            if changed == 0 {
                return Err(partition_not_found(partition_id));
            }
            for &(origin, seq) in covers {
                let seq = i64::try_from(seq)
                    .map_err(|_| StoreError::Invalid(format!("sequence number {seq} is above i64::MAX")))?;
                raise_floor(
                    tx,
                    partition_id,
                    origin,
                    seq,
                    max_hlc.0 as i64,
                    i64::from(max_hlc.1),
                )
                .map_err(&e)?;
            }
            Ok(())
        })
    }
}

/// Raises one origin's floor to `seq` (never lowers it), keeping the greater stamp.
fn raise_floor(
    tx: &Transaction<'_>,
    partition_id: i64,
    origin: u64,
    seq: i64,
    wall: i64,
    logical: i64,
) -> rusqlite::Result<usize> {
    tx.execute(
        "INSERT INTO log_floor (partition_id, origin, seq, hlc_wall, hlc_logical)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (partition_id, origin) DO UPDATE SET
             seq = MAX(seq, excluded.seq),
             hlc_wall = CASE WHEN (excluded.hlc_wall, excluded.hlc_logical) > (hlc_wall, hlc_logical)
                             THEN excluded.hlc_wall ELSE hlc_wall END,
             hlc_logical = CASE WHEN (excluded.hlc_wall, excluded.hlc_logical) > (hlc_wall, hlc_logical)
                                THEN excluded.hlc_logical ELSE hlc_logical END",
        params![partition_id, origin as i64, seq, wall, logical],
    )
}
