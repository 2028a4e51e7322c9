//! The layout of a partition's reserved records for PINs and failed
//! logins (see `crate::pins` for how they are written and checked), and
//! reading them: the group's PIN verifier and the failures since the last
//! reset. No I/O beyond the partition in memory.
use crate::partition::{ActivePartition, ObjectEntry, RESERVED_PREFIX};
use hahsm_crypto::{self as crypto, SecretBytes};
use hahsm_token::attr::AttrValue;
use hahsm_token::{ck, AttrType, MemberId, Ouid, Template, TokenError, TokenResult};
use std::collections::BTreeMap;

/// Which PIN of a partition: the user's, or the partition SO's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinKind {
    User,
    So,
}

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
/// How many of a member's failed logins were the SO's, 8 bytes big-endian
/// (absent in records written before it was kept: none).
const ATTR_SO_COUNT: AttrType = ck::CKA_VENDOR_DEFINED | 0x4841_0004;
/// The SO counts at the last reset, as `ATTR_BASELINE`.
const ATTR_SO_BASELINE: AttrType = ck::CKA_VENDOR_DEFINED | 0x4841_0005;

pub(crate) const SALT_LEN: usize = 16;

pub(crate) fn record(tag: u8, member: MemberId) -> Ouid {
    let mut o = [0u8; 16];
    o[..RESERVED_PREFIX.len()].copy_from_slice(&RESERVED_PREFIX);
    o[RESERVED_PREFIX.len()] = tag;
    o[8..].copy_from_slice(&member.to_be_bytes());
    Ouid(o)
}

pub(crate) fn pin_record(kind: PinKind) -> Ouid {
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

/// Each member's failed-login count (`ATTR_COUNT`, all logins; or
/// `ATTR_SO_COUNT`, the SO's among them).
fn counts_of(p: &ActivePartition, attr: AttrType) -> BTreeMap<MemberId, u64> {
    p.reserved_all()
        .iter()
        .filter(|e| e.ouid.0[RESERVED_PREFIX.len()] == FAILURES)
        .filter_map(|e| {
            let member = u64::from_be_bytes(e.ouid.0[8..].try_into().ok()?);
            let count = match e.attrs.bytes(attr) {
                Some(b) => u64::from_be_bytes(b.try_into().ok()?),
                None if attr == ATTR_SO_COUNT => 0,
                None => return None,
            };
            Some((member, count))
        })
        .collect()
}

pub(crate) fn counts(p: &ActivePartition) -> BTreeMap<MemberId, u64> {
    counts_of(p, ATTR_COUNT)
}

fn baseline_of(p: &ActivePartition, attr: AttrType) -> BTreeMap<MemberId, u64> {
    p.reserved(&record(RESET, 0))
        .and_then(|e| e.attrs.bytes(attr).map(<[u8]>::to_vec))
        .and_then(|b| postcard::from_bytes::<Vec<(u64, u64)>>(&b).ok())
        .map(|v| v.into_iter().collect())
        .unwrap_or_default()
}

pub(crate) fn baseline(p: &ActivePartition) -> BTreeMap<MemberId, u64> {
    baseline_of(p, ATTR_BASELINE)
}

fn since_reset(counts: BTreeMap<MemberId, u64>, base: BTreeMap<MemberId, u64>) -> u64 {
    counts
        .iter()
        .map(|(m, c)| c.saturating_sub(base.get(m).copied().unwrap_or(0)))
        .sum()
}

/// The failed logins since the last reset, over the whole group as far as
/// this member has heard.
pub fn failures(p: &ActivePartition) -> u64 {
    since_reset(counts(p), baseline(p))
}

/// The SO's failed logins among [`failures`].
pub fn so_failures(p: &ActivePartition) -> u64 {
    since_reset(counts_of(p, ATTR_SO_COUNT), baseline_of(p, ATTR_SO_BASELINE))
}

/// The token flags (PKCS#11 3.0 §5.5, `CK_TOKEN_INFO`) of the partition's
/// PINs, from the failed logins since the last reset (`user` and `so`) and
/// the limit (`max`, 0: none). The lockout counts both PINs' failures
/// together (see `crate::pins`), so one more wrong PIN of either locks both,
/// and "final try" and "locked" are set for both; "count low" says which PIN
/// was given wrongly. No SO flags when the SO has no PIN.
pub fn pin_flags(user: u64, so: u64, max: u64, so_pin_set: bool) -> u64 {
    let total = user + so;
    let mut flags = 0;
    if user > 0 {
        flags |= ck::CKF_USER_PIN_COUNT_LOW;
    }
    if so > 0 && so_pin_set {
        flags |= ck::CKF_SO_PIN_COUNT_LOW;
    }
    if max > 0 && total >= max {
        flags |= ck::CKF_USER_PIN_LOCKED;
        if so_pin_set {
            flags |= ck::CKF_SO_PIN_LOCKED;
        }
    } else if max > 0 && total + 1 == max {
        flags |= ck::CKF_USER_PIN_FINAL_TRY;
        if so_pin_set {
            flags |= ck::CKF_SO_PIN_FINAL_TRY;
        }
    }
    flags
}

/// [`pin_flags`] of an active partition.
pub fn partition_pin_flags(p: &ActivePartition, max: u64, so_pin_set: bool) -> u64 {
    let total = failures(p);
    let so = so_failures(p).min(total);
    pin_flags(total - so, so, max, so_pin_set)
}

/// A new verifier record for `pin`, with a fresh salt.
pub(crate) fn pin_entry(
    p: &ActivePartition,
    kind: PinKind,
    salt: &[u8],
    hash: &[u8],
) -> TokenResult<ObjectEntry> {
    let mut secret = SecretBytes::new([salt, hash].concat());
    let attrs = Template::new().with(ATTR_PIN_ID, AttrValue::Bytes(crypto::random(16)?));
    let entry = p.new_entry(pin_record(kind), attrs, Some(secret.expose()));
    drop(std::mem::replace(&mut secret, SecretBytes::new(Vec::new())));
    entry
}

/// The record that clears the failures counted so far.
pub(crate) fn reset_entry(p: &ActivePartition) -> TokenResult<ObjectEntry> {
    let encode = |counts: BTreeMap<MemberId, u64>| {
        let now: Vec<(u64, u64)> = counts.into_iter().collect();
        postcard::to_allocvec(&now).map_err(|e| TokenError::DeviceError(format!("encode: {e}")))
    };
    p.new_entry(
        record(RESET, 0),
        Template::new()
            .with(ATTR_BASELINE, AttrValue::Bytes(encode(counts(p))?))
            .with(
                ATTR_SO_BASELINE,
                AttrValue::Bytes(encode(counts_of(p, ATTR_SO_COUNT))?),
            ),
        None,
    )
}

/// This member's count, one more (and its SO count, if the SO's PIN was wrong).
pub(crate) fn failure_entry(p: &ActivePartition, kind: PinKind) -> TokenResult<ObjectEntry> {
    let mine = counts(p).get(&p.member()).copied().unwrap_or(0) + 1;
    let mine_so =
        counts_of(p, ATTR_SO_COUNT).get(&p.member()).copied().unwrap_or(0) + u64::from(kind == PinKind::So);
    p.new_entry(
        record(FAILURES, p.member()),
        Template::new()
            .with(ATTR_COUNT, AttrValue::Bytes(mine.to_be_bytes().to_vec()))
            .with(ATTR_SO_COUNT, AttrValue::Bytes(mine_so.to_be_bytes().to_vec())),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::is_reserved;

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

    #[test]
    fn pin_flags_follow_the_failures_and_the_limit() {
        use ck::*;
        assert_eq!(pin_flags(0, 0, 3, true), 0);
        assert_eq!(pin_flags(1, 0, 3, true), CKF_USER_PIN_COUNT_LOW);
        assert_eq!(
            pin_flags(2, 0, 3, true),
            CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_SO_PIN_FINAL_TRY
        );
        assert_eq!(
            pin_flags(2, 1, 3, true),
            CKF_USER_PIN_COUNT_LOW | CKF_SO_PIN_COUNT_LOW | CKF_USER_PIN_LOCKED | CKF_SO_PIN_LOCKED
        );
        assert_eq!(pin_flags(0, 1, 3, false), 0, "no SO PIN, no SO flags");
        assert_eq!(pin_flags(0, 2, 3, false), CKF_USER_PIN_FINAL_TRY);
        assert_eq!(
            pin_flags(5, 0, 0, true),
            CKF_USER_PIN_COUNT_LOW,
            "no limit, no lock"
        );
        assert_eq!(
            pin_flags(1, 0, 1, true),
            CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_LOCKED | CKF_SO_PIN_LOCKED
        );
    }
}
