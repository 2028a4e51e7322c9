//! The appliance's records in the store and the rules on them: the meta
//! keys, the key-derivation and sealing labels of the HSM and partition
//! secrets, and decoding each row, which fails closed (a row that does not
//! decode stops the member: `check_records`). No state of its own.
use crate::error::refuse;
use crate::error::AdminResult;
pub use crate::pin_records::PinKind;
use hahsm_crypto::{self as crypto, SealKey, SecretBytes};
use hahsm_proto::admin::PolicyLine;
use hahsm_proto::Secret;
use hahsm_store::{PartitionRow, Store};
use hahsm_token::policy::{self, Policies, PolicyDef};
use hahsm_token::TokenError;

/// Partition data kept in the row's `extra` blob.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct PartitionExtra {
    pub(super) so_pin_salt: Vec<u8>,
    pub(super) sealed_so_pin: Option<Vec<u8>>,
}

/// The row's extra data; empty for a partition that never had any. Bytes
/// that do not decode are a damaged row: refused, never read as "no SO PIN".
pub(super) fn extra_of(row: &PartitionRow) -> Result<PartitionExtra, TokenError> {
    if row.extra.is_empty() {
        return Ok(PartitionExtra::default());
    }
    decode_row(&row.extra, &format!("the extra data of partition '{}'", row.name))
}

pub const SECRET_LEN: usize = 32;
pub const MIN_PIN_LEN: usize = 4;
pub const MAX_PIN_LEN: usize = 64;

pub(super) const META_SERIAL: &str = "member.serial";
pub(super) const META_LABEL: &str = "hsm.label";
pub(super) const META_SO_SALT: &str = "hsm.so_salt";
pub(super) const META_SO_VERIFIER: &str = "hsm.so_verifier";
pub(super) const META_DOMAIN: &str = "hsm.domain_wrapped";
pub(super) const META_POLICIES: &str = "hsm.policies";
/// Followed by a partition serial: the partition's origin id, when not the member's serial.
pub(super) const META_ORIGIN: &str = "partition.origin.";

/// A PIN verifier and its salt, in clear (for backups only).
pub type PinPair = Option<(Vec<u8>, Vec<u8>)>;

pub(super) fn secret_ok(secret: &Secret, what: &str) -> AdminResult<()> {
    if secret.len() != SECRET_LEN {
        return refuse(format!(
            "the {what} must be {SECRET_LEN} bytes (256 bits); got {} bytes",
            secret.len()
        ));
    }
    Ok(())
}

pub fn pin_ok(pin: &[u8]) -> Result<(), TokenError> {
    if pin.len() < MIN_PIN_LEN || pin.len() > MAX_PIN_LEN {
        return Err(TokenError::PinLenRange);
    }
    Ok(())
}

pub(super) fn owner_kek(owner_secret: &[u8], serial: u64) -> Result<SealKey, TokenError> {
    let key = crypto::hkdf_sha256(
        &[owner_secret],
        &serial.to_le_bytes(),
        b"hahsm/partition-owner-kek/v1",
        32,
    )?;
    SealKey::new(key)
}

pub(super) fn so_kek(so_secret: &[u8], salt: &[u8]) -> Result<SealKey, TokenError> {
    SealKey::new(crypto::hkdf_sha256(&[so_secret], salt, b"hahsm/so-kek/v1", 32)?)
}

pub(super) fn so_verifier(so_secret: &[u8], salt: &[u8]) -> Result<SecretBytes, TokenError> {
    crypto::hkdf_sha256(&[so_secret], salt, b"hahsm/so-verifier/v1", 32)
}

pub(super) fn pmk_aad(serial: u64) -> Vec<u8> {
    let mut aad = b"hahsm/pmk/v1".to_vec();
    aad.extend_from_slice(&serial.to_le_bytes());
    aad
}

pub(super) fn autoactivate_aad(serial: u64) -> Vec<u8> {
    let mut aad = b"hahsm/autoactivate/v1".to_vec();
    aad.extend_from_slice(&serial.to_le_bytes());
    aad
}

pub(super) fn pin_pending_meta(partition: &str, kind: PinKind) -> String {
    match kind {
        PinKind::User => format!("pin-pending/{partition}/user"),
        PinKind::So => format!("pin-pending/{partition}/so"),
    }
}

/// Partition policy 15: the failed logins that lock the PIN (0: no limit).
pub fn max_failed_logins(row: &PartitionRow) -> Result<u32, TokenError> {
    Ok(partition_policies_of(row)?.get(policy::partition::MAX_FAILED_LOGINS) as u32)
}

pub(super) fn pin_aad(serial: u64, kind: PinKind) -> Vec<u8> {
    let mut aad = match kind {
        PinKind::User => b"hahsm/pin/v1".to_vec(),
        PinKind::So => b"hahsm/so-pin/v1".to_vec(),
    };
    aad.extend_from_slice(&serial.to_le_bytes());
    aad
}

pub(super) fn random_serial(digits: u32) -> Result<u64, TokenError> {
    let bytes = crypto::random(8)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes);
    let low = 10u64.pow(digits - 1);
    Ok(low + u64::from_le_bytes(b) % (9 * low))
}

pub(super) fn policy_lines(table: &[PolicyDef], values: &Policies) -> Vec<PolicyLine> {
    table
        .iter()
        .map(|d| PolicyLine {
            number: d.number,
            name: d.name.to_string(),
            description: d.description.to_string(),
            value: values.get(d.number),
        })
        .collect()
}

/// Decodes a record of the appliance's own. One that does not decode is a
/// damaged store, refused as the store refuses a damaged file: replacing it
/// with defaults could relax a policy or lose a PIN verifier.
pub(super) fn decode_row<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, TokenError> {
    postcard::from_bytes(bytes)
        .map_err(|_| TokenError::DeviceError(format!("store integrity check failed: {what} does not decode")))
}

pub(super) fn decode_policies(bytes: &[u8], whose: &str) -> Result<Policies, TokenError> {
    decode_row(bytes, &format!("the policies of {whose}"))
}

pub(super) fn partition_policies_of(row: &PartitionRow) -> Result<Policies, TokenError> {
    decode_policies(&row.policies, &format!("partition '{}'", row.name))
}

pub(super) fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, TokenError> {
    postcard::to_allocvec(v).map_err(|e| TokenError::DeviceError(format!("cannot encode a record: {e}")))
}

/// Refuses a store whose appliance records do not decode (the HSM policies,
/// each partition's policies and extra data), naming the damaged one.
pub(super) fn check_records(store: &Store) -> anyhow::Result<()> {
    if let Some(b) = store.get_meta(META_POLICIES)? {
        decode_policies(&b, "the HSM")?;
    }
    for row in store.list_partitions()? {
        partition_policies_of(&row)?;
        extra_of(&row)?;
    }
    Ok(())
}

/// Creates a directory readable only by this user.
pub fn private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

pub(super) fn random_pin() -> Result<String, TokenError> {
    // Four groups of four from an alphabet without look-alikes, as the
    // appliance's challenge strings are.
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";
    // Rejection sampling: bytes at or above the largest multiple of the
    // alphabet's size would favour its first letters.
    let limit = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
    let mut chars: Vec<char> = Vec::with_capacity(16);
    while chars.len() < 16 {
        for b in crypto::random(32)? {
            if b < limit && chars.len() < 16 {
                chars.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    Ok(chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-"))
}

pub(super) fn load_or_create_seal_key(path: &std::path::Path) -> anyhow::Result<SealKey> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(SealKey::new(SecretBytes::new(bytes))
            .map_err(|_| anyhow::anyhow!("{} is not a valid auto-activation key", path.display()))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SealKey::generate()?;
            hahsm_link::write_private_file(path, key.key_bytes())?;
            Ok(key)
        }
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pins_are_four_groups_of_four_from_the_alphabet() {
        for _ in 0..50 {
            let pin = random_pin().unwrap();
            let groups: Vec<&str> = pin.split('-').collect();
            assert_eq!(groups.len(), 4, "{pin}");
            assert!(groups.iter().all(|g| g.len() == 4), "{pin}");
            assert!(
                pin.chars()
                    .all(|c| c == '-' || (c.is_ascii_alphanumeric() && !"IlO01o".contains(c))),
                "{pin}"
            );
        }
        assert_ne!(random_pin().unwrap(), random_pin().unwrap());
    }
}
