//! Registered clients and the partitions assigned to each.
use crate::columns::*;
use crate::*;
use rusqlite::{params, OptionalExtension};

impl Store {
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
}
