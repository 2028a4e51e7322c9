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
use crate::appliance::{Appliance, PinKind};
use crate::partition::{ActivePartition, ObjectEntry};
use hahsm_crypto::{self as crypto, SecretBytes};
use hahsm_store::PartitionRow;
use hahsm_token::attr::AttrValue;
use hahsm_token::{ck, AttrType, MemberId, Ouid, Template, TokenError, TokenResult};
use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::warn;

/// The first bytes of every reserved record's OUID. Object OUIDs are
/// random or derived by a hash (`keyops::derive_ouid`), never this.
const PREFIX: [u8; 7] = *b"\xffhahsm\x00";
const PIN_USER: u8 = 1;
const PIN_SO: u8 = 2;
const FAILURES: u8 = 3;
const RESET: u8 = 4;

/// A random id of the PIN verifier, so that two verifiers of one PIN made
/// on two members are told apart by the digest too.
const ATTR_PIN_ID: AttrType = ck::CKA_VENDOR_DEFINED | 0x4841_0001;
/// A member's failed-login count, 8 bytes big-endian.
const ATTR_COUNT: AttrType = ck::CKA_VENDOR_DEFINED | 0x4841_0002;
/// The counts at the last reset: (member, count) pairs, postcard-encoded.
const ATTR_BASELINE: AttrType = ck::CKA_VENDOR_DEFINED | 0x4841_0003;

const SALT_LEN: usize = 16;

pub fn is_reserved(ouid: &Ouid) -> bool {
    ouid.0[..PREFIX.len()] == PREFIX
}

fn record(tag: u8, member: MemberId) -> Ouid {
    let mut o = [0u8; 16];
    o[..PREFIX.len()].copy_from_slice(&PREFIX);
    o[PREFIX.len()] = tag;
    o[8..].copy_from_slice(&member.to_be_bytes());
    Ouid(o)
}

fn pin_record(kind: PinKind) -> Ouid {
    record(
        match kind {
            PinKind::User => PIN_USER,
            PinKind::So => PIN_SO,
        },
        0,
    )
}

/// A PIN verifier: the salt and the PBKDF2 hash of the PIN.
pub struct Verifier {
    pub salt: Vec<u8>,
    pub hash: SecretBytes,
}

/// The group's verifier of a PIN, `None` when none was ever written here.
pub fn verifier(p: &ActivePartition, kind: PinKind) -> TokenResult<Option<Verifier>> {
    let Some(entry) = p.reserved(&pin_record(kind)) else {
        return Ok(None);
    };
    let secret = p.secret_of(&entry)?;
    let bytes = secret.expose();
    if bytes.len() <= SALT_LEN {
        return Err(TokenError::DeviceError(
            "store integrity check failed: PIN verifier".into(),
        ));
    }
    Ok(Some(Verifier {
        salt: bytes[..SALT_LEN].to_vec(),
        hash: SecretBytes::new(bytes[SALT_LEN..].to_vec()),
    }))
}

/// Each member's failed-login count.
fn counts(p: &ActivePartition) -> BTreeMap<MemberId, u64> {
    p.reserved_all()
        .iter()
        .filter(|e| e.ouid.0[PREFIX.len()] == FAILURES)
        .filter_map(|e| {
            let member = u64::from_be_bytes(e.ouid.0[8..].try_into().ok()?);
            let count = u64::from_be_bytes(e.attrs.bytes(ATTR_COUNT)?.try_into().ok()?);
            Some((member, count))
        })
        .collect()
}

fn baseline(p: &ActivePartition) -> BTreeMap<MemberId, u64> {
    p.reserved(&record(RESET, 0))
        .and_then(|e| e.attrs.bytes(ATTR_BASELINE).map(<[u8]>::to_vec))
        .and_then(|b| postcard::from_bytes::<Vec<(u64, u64)>>(&b).ok())
        .map(|v| v.into_iter().collect())
        .unwrap_or_default()
}

/// The failed logins since the last reset, over the whole group as far as
/// this member has heard.
pub fn failures(p: &ActivePartition) -> u64 {
    let base = baseline(p);
    counts(p)
        .iter()
        .map(|(m, c)| c.saturating_sub(base.get(m).copied().unwrap_or(0)))
        .sum()
}

/// A new verifier record for `pin`, with a fresh salt.
fn pin_entry(p: &ActivePartition, kind: PinKind, salt: &[u8], hash: &[u8]) -> TokenResult<ObjectEntry> {
    let mut secret = SecretBytes::new([salt, hash].concat());
    let attrs = Template::new().with(ATTR_PIN_ID, AttrValue::Bytes(crypto::random(16)?));
    let entry = p.new_entry(pin_record(kind), attrs, Some(secret.expose()));
    drop(std::mem::replace(&mut secret, SecretBytes::new(Vec::new())));
    entry
}

/// The record that clears the failures counted so far.
fn reset_entry(p: &ActivePartition) -> TokenResult<ObjectEntry> {
    let now: Vec<(u64, u64)> = counts(p).into_iter().collect();
    let encoded = postcard::to_allocvec(&now).map_err(|e| TokenError::DeviceError(format!("encode: {e}")))?;
    p.new_entry(
        record(RESET, 0),
        Template::new().with(ATTR_BASELINE, AttrValue::Bytes(encoded)),
        None,
    )
}

/// This member's count, one more.
fn failure_entry(p: &ActivePartition) -> TokenResult<ObjectEntry> {
    let mine = counts(p).get(&p.member()).copied().unwrap_or(0) + 1;
    p.new_entry(
        record(FAILURES, p.member()),
        Template::new().with(ATTR_COUNT, AttrValue::Bytes(mine.to_be_bytes().to_vec())),
        None,
    )
}

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
        g.write_allowed()?;
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
    let counted = write(app, p, vec![failure_entry(p)?], None, Concern::Bookkeeping)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_records_are_told_from_objects() {
        assert!(is_reserved(&record(FAILURES, 7)));
        assert!(is_reserved(&pin_record(PinKind::So)));
        assert_ne!(record(FAILURES, 7), record(FAILURES, 8));
        assert_ne!(pin_record(PinKind::User), pin_record(PinKind::So));
        assert!(!is_reserved(&Ouid([0u8; 16])));
        let mut almost = record(RESET, 0).0;
        almost[1] ^= 1;
        assert!(!is_reserved(&Ouid(almost)));
    }
}
