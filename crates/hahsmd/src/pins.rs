//! A partition's PINs and its failed-login count as group state.
//!
//! Both are kept as reserved records of the partition, written as objects are
//! (one operation of the partition's log, under the group's write concern),
//! so they replicate, converge by anti-entropy and count in the content
//! digest like any key: a member that missed a PIN change is out of sync,
//! and catches up before it checks a PIN again (see
//! `replication::Group::login_gate`). The records never appear as objects.
//!
//! - `PIN_USER`, `PIN_SO`: the PIN verifier (salt and PBKDF2 hash), held as
//!   the record's secret, so it is sealed under the partition master key in
//!   the store and under the group's replication key on the wire, as every
//!   secret is. A change is a new creation of the record: the later wins.
//!   Until the first change, each member checks the PIN its partition was
//!   created with (its row's verifier).
//! - `FAILURES` of member M: how many failed logins M has seen in all. Only
//!   M writes its own count, so counts never conflict and never go back.
//! - `RESET`: each member's count when the failures were last cleared (a new
//!   user PIN, the owner secret, or a login that succeeded).
//!
//! The failures that count toward the lockout (partition policy 15) are
//! those since the reset: the sum over members of count minus baseline. A
//! wrong PIN on any member adds to one sum, so the limit holds for the group.
use crate::appliance::Appliance;
use crate::partition::{ActivePartition, ObjectEntry};
use crate::pin_records::{failure_entry, failures, pin_entry, reset_entry, verifier, PinKind, SALT_LEN};
use hahsm_crypto as crypto;
use hahsm_store::PartitionRow;
use hahsm_token::{TokenError, TokenResult};
use std::sync::Arc;
use tracing::warn;

/// Whether a write of records is a client's write, refused up front where
/// the write concern cannot take it (a PIN change), or the member's own
/// bookkeeping, recorded here whatever the group can confirm (a failed
/// login must count even on a member cut off from the majority).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Concern {
    ClientWrite,
    Bookkeeping,
}

/// Writes records as one operation of the partition, and replicates it
/// under the group's write concern. The outer error: not written here; the
/// inner: written here, not confirmed by the group.
async fn write(
    app: &Appliance,
    p: &ActivePartition,
    entries: Vec<ObjectEntry>,
    op_id: Option<[u8; 16]>,
    concern: Concern,
) -> TokenResult<TokenResult<()>> {
    let group = crate::replication::group_of(app, &p.name);
    if let (Some(g), Concern::ClientWrite) = (&group, concern) {
        g.write_allowed().await?;
    }
    p.create_reserved(entries, op_id).await?;
    Ok(match &group {
        Some(g) => g.replicate_write(p).await,
        None => Ok(()),
    })
}

/// The failed-login limit of the partition (0: none).
fn limit(row: &PartitionRow) -> TokenResult<u64> {
    Ok(crate::appliance::max_failed_logins(row)? as u64)
}

/// Checks a user or SO PIN against the group's verifier. A wrong PIN adds
/// one failure for the group (replicated before the answer); a right one
/// clears the failures counted so far. Once the failures reach the limit,
/// every login is refused, on every member, until the owner secret or the
/// partition SO sets a new user PIN.
pub async fn check(
    app: &Appliance,
    row: &PartitionRow,
    p: &Arc<ActivePartition>,
    kind: PinKind,
    pin: &[u8],
) -> TokenResult<()> {
    if let Some(g) = crate::replication::group_of(app, &p.name) {
        g.login_gate(p).await?;
    }
    // Failures are read and written under this lock: guesses sent in
    // parallel to this member must not all read the same count.
    let _serialized = app.pin_check_lock.lock().await;
    publish_pending(app, row, p).await?;
    let max = limit(row)?;
    let failed = failures(p);
    if max > 0 && failed >= max {
        warn!(partition = %p.name, "login refused: the PIN is locked");
        app.monitor.metrics.failed_login(&p.name, kind == PinKind::So);
        return Err(TokenError::PinLocked);
    }
    let stored = match verifier(p, kind)? {
        Some(v) => v,
        // No PIN change since the partition was made: each member's row
        // holds the PIN it was created with.
        None => app
            .row_verifier(row, p, kind)?
            .ok_or(TokenError::UserPinNotInitialized)?,
    };
    let given = crypto::pin_verifier(pin, &stored.salt);
    if crypto::ct_eq(&given, stored.hash.expose()) {
        if failed > 0 {
            // Best effort: a reset that does not replicate leaves the
            // failures counted, which is the strict side.
            let _ = write(app, p, vec![reset_entry(p)?], None, Concern::Bookkeeping).await;
        }
        return Ok(());
    }
    // A failure that cannot be recorded refuses the login without an
    // answer on the PIN: guesses are never free. One recorded here counts
    // whether or not the group confirms it in time: it is in this member's
    // log, and reaches the others with it.
    let counted = write(app, p, vec![failure_entry(p, kind)?], None, Concern::Bookkeeping)
        .await
        .map_err(|e| {
        warn!(partition = %p.name, error = %e, "a failed login could not be recorded; the login is refused");
        TokenError::DeviceError("the failed login could not be recorded".into())
    })?;
    if let Err(e) = counted {
        warn!(partition = %p.name, error = %e, "a failed login was counted here but not yet confirmed by the group");
    }
    app.monitor.metrics.failed_login(&p.name, kind == PinKind::So);
    let failed = failures(p);
    if max > 0 && failed >= max {
        warn!(partition = %p.name, failed, "PIN locked after too many failed logins");
        app.monitor.raise(
            crate::alerts::Alert::new(
                crate::alerts::AlertKind::PinLockout,
                crate::alerts::AlertStatus::Firing,
                format!(
                    "partition {}: PIN locked after {failed} failed logins over the group; the partition-owner secret clears it",
                    p.name
                ),
            )
            .partition(&p.name),
        );
        return Err(TokenError::PinLocked);
    }
    Err(TokenError::PinIncorrect {
        remaining: max.saturating_sub(failed) as u32,
    })
}

/// Sets a PIN for the group: a new verifier, and for the user PIN, a reset
/// of the failures (a new user PIN clears a lockout).
pub async fn set(
    app: &Appliance,
    p: &ActivePartition,
    kind: PinKind,
    pin: &[u8],
    op_id: Option<[u8; 16]>,
) -> TokenResult<()> {
    crate::appliance::pin_ok(pin)?;
    let salt = crypto::random(SALT_LEN)?;
    let hash = crypto::pin_verifier(pin, &salt);
    let mut entries = vec![pin_entry(p, kind, &salt, &hash)?];
    if kind == PinKind::User {
        entries.push(reset_entry(p)?);
    }
    write(app, p, entries, op_id, Concern::ClientWrite).await?
}

/// Publishes to the group the PINs set in the partition's row while it was
/// not activated (with the owner secret), and a reset they imply.
pub async fn publish_pending(app: &Appliance, row: &PartitionRow, p: &ActivePartition) -> TokenResult<()> {
    for kind in [PinKind::User, PinKind::So] {
        if !app.pin_pending(&p.name, kind) {
            continue;
        }
        if let Some(v) = app.row_verifier(row, p, kind)? {
            let mut entries = vec![pin_entry(p, kind, &v.salt, v.hash.expose())?];
            if kind == PinKind::User {
                entries.push(reset_entry(p)?);
            }
            // Recorded here, it reaches the group with this member's log even
            // when not confirmed now: never publish it twice.
            let _ = write(app, p, entries, None, Concern::ClientWrite).await?;
        }
        app.clear_pin_pending(&p.name, kind)?;
    }
    Ok(())
}

/// Gives the group the PINs just set in the partition's row with the owner
/// secret, if the partition is active here (else at its next login).
pub async fn publish(app: &Appliance, partition: &str) -> TokenResult<()> {
    let Some(p) = app.active_partition(partition) else {
        return Ok(());
    };
    let row = app.partition_row_for_login(partition)?;
    let _serialized = app.pin_check_lock.lock().await;
    publish_pending(app, &row, &p).await
}

/// Changes the user PIN with the old one, for the group (the appliance's
/// `partition change-pin --old-pin`).
pub async fn change_with_old_pin(
    app: &Appliance,
    partition: &str,
    old: &hahsm_proto::Secret,
    new: &hahsm_proto::Secret,
) -> TokenResult<()> {
    crate::appliance::pin_ok(new.expose())?;
    let p = app.active_partition(partition).ok_or_else(|| {
        TokenError::NotAuthorized(format!(
            "partition '{partition}' is not activated; give --owner-secret instead"
        ))
    })?;
    let row = app.partition_row_for_login(partition)?;
    check(app, &row, &p, PinKind::User, old.expose()).await?;
    set(app, &p, PinKind::User, new.expose(), None).await?;
    tracing::info!(partition, "partition PIN changed");
    Ok(())
}
