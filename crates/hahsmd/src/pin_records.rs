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

/// Each member's failed-login count.
pub(crate) fn counts(p: &ActivePartition) -> BTreeMap<MemberId, u64> {
    p.reserved_all()
        .iter()
        .filter(|e| e.ouid.0[RESERVED_PREFIX.len()] == FAILURES)
        .filter_map(|e| {
            let member = u64::from_be_bytes(e.ouid.0[8..].try_into().ok()?);
            let count = u64::from_be_bytes(e.attrs.bytes(ATTR_COUNT)?.try_into().ok()?);
            Some((member, count))
        })
        .collect()
}

pub(crate) fn baseline(p: &ActivePartition) -> BTreeMap<MemberId, u64> {
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
    let now: Vec<(u64, u64)> = counts(p).into_iter().collect();
    let encoded = postcard::to_allocvec(&now).map_err(|e| TokenError::DeviceError(format!("encode: {e}")))?;
    p.new_entry(
        record(RESET, 0),
        Template::new().with(ATTR_BASELINE, AttrValue::Bytes(encoded)),
        None,
    )
}

/// This member's count, one more.
pub(crate) fn failure_entry(p: &ActivePartition) -> TokenResult<ObjectEntry> {
    let mine = counts(p).get(&p.member()).copied().unwrap_or(0) + 1;
    p.new_entry(
        record(FAILURES, p.member()),
        Template::new().with(ATTR_COUNT, AttrValue::Bytes(mine.to_be_bytes().to_vec())),
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
}
