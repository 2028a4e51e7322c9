//! The dual-control keys of replication and the join proofs: what only a
//! member holding both the cloning-domain and the partition-owner secret can
//! derive, and the labels of the group's records sealed under the
//! partition's PMK. No I/O; nothing here talks to a peer.
use hahsm_crypto::{self as crypto, SealKey, SecretBytes};
use hahsm_link::Fingerprint;
use hahsm_proto::peer::{GroupDef, Proof};
use hahsm_token::TokenResult;
use serde::{Deserialize, Serialize};

/// The key derived from the cloning-domain secret.
pub fn domain_key(domain_secret: &[u8]) -> TokenResult<SecretBytes> {
    crypto::hkdf_sha256(&[domain_secret], b"hahsm/domain-key/v1", b"hahsm/domain-key", 32)
}

/// The key derived from the partition-owner secret, bound to the partition's
/// name (the same on every member of a group).
pub(super) fn owner_key(owner_secret: &[u8], partition: &str) -> TokenResult<SecretBytes> {
    crypto::hkdf_sha256(&[owner_secret], b"hahsm/owner-key/v1", partition.as_bytes(), 32)
}

/// The two derived keys a partition needs to replicate, sealed under its PMK.
#[derive(Serialize, Deserialize)]
pub(super) struct ReplicationKeys {
    pub(super) domain: Vec<u8>,
    pub(super) owner: Vec<u8>,
}

impl Drop for ReplicationKeys {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.domain.zeroize();
        self.owner.zeroize();
    }
}

pub(super) fn keys_meta(partition: &str) -> String {
    format!("replication-keys/{partition}")
}

pub(super) fn group_meta(partition: &str) -> String {
    format!("group/{partition}")
}

pub(super) fn aad(label: &[u8], serial: u64) -> Vec<u8> {
    let mut a = label.to_vec();
    a.extend_from_slice(&serial.to_le_bytes());
    a
}

/// The group's replication key: it needs **both** secrets (dual control), and
/// is bound to the group and the partition.
pub(super) fn replication_key(domain: &[u8], owner: &[u8], group: &GroupDef) -> TokenResult<SealKey> {
    let mut info = b"hahsm/replication/v1/".to_vec();
    info.extend_from_slice(group.partition.as_bytes());
    SealKey::new(crypto::hkdf_sha256(&[domain, owner], &group.id, &info, 32)?)
}

/// What a join proof covers: the role, the group, both nonces and both
/// certificates, so a proof made for one connection is worthless on another.
pub(super) fn transcript(
    role: &[u8],
    group: &GroupDef,
    initiator_nonce: &[u8; 32],
    candidate_nonce: &[u8; 32],
    initiator: &Fingerprint,
    candidate: &Fingerprint,
) -> Vec<u8> {
    let mut t = b"hahsm/join/v1/".to_vec();
    t.extend_from_slice(role);
    t.extend_from_slice(&group.id);
    t.extend_from_slice(group.partition.as_bytes());
    t.extend_from_slice(initiator_nonce);
    t.extend_from_slice(candidate_nonce);
    t.extend_from_slice(&initiator.0);
    t.extend_from_slice(&candidate.0);
    t
}

pub(super) fn prove(keys: &ReplicationKeys, transcript: &[u8]) -> Proof {
    Proof {
        domain: crypto::hmac_sha256(&keys.domain, transcript),
        owner: crypto::hmac_sha256(&keys.owner, transcript),
    }
}

/// Compares a peer's proof with ours; says which secret differs.
pub(super) fn check_proof(ours: &Proof, theirs: &Proof, whose: &str) -> Result<(), String> {
    let domain_ok = crypto::ct_eq(&ours.domain, &theirs.domain);
    let owner_ok = crypto::ct_eq(&ours.owner, &theirs.owner);
    match (domain_ok, owner_ok) {
        (true, true) => Ok(()),
        (false, true) => Err(format!("{whose} holds a different cloning-domain secret")),
        (true, false) => Err(format!("{whose} holds a different partition-owner secret")),
        (false, false) => Err(format!(
            "{whose} holds a different cloning-domain secret and a different partition-owner secret"
        )),
    }
}

pub(super) fn random32() -> TokenResult<[u8; 32]> {
    let b = crypto::random(32)?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&b);
    Ok(out)
}

pub(super) fn wire_aad(group: &GroupDef, ouid: &hahsm_token::Ouid) -> Vec<u8> {
    let mut a = b"hahsm/wire-secret/v1".to_vec();
    a.extend_from_slice(&group.id);
    a.extend_from_slice(ouid.as_bytes());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(domain: u8, owner: u8) -> ReplicationKeys {
        ReplicationKeys {
            domain: vec![domain; 32],
            owner: vec![owner; 32],
        }
    }

    #[test]
    fn a_proof_names_the_secret_that_differs() {
        let t = b"transcript";
        let ours = prove(&keys(1, 2), t);
        assert_eq!(check_proof(&ours, &prove(&keys(1, 2), t), "peer"), Ok(()));
        assert_eq!(
            check_proof(&ours, &prove(&keys(9, 2), t), "peer"),
            Err("peer holds a different cloning-domain secret".into())
        );
        assert_eq!(
            check_proof(&ours, &prove(&keys(1, 9), t), "peer"),
            Err("peer holds a different partition-owner secret".into())
        );
        assert_eq!(
            check_proof(&ours, &prove(&keys(9, 9), t), "peer"),
            Err("peer holds a different cloning-domain secret and a different partition-owner secret".into())
        );
        // The same secrets over another transcript prove nothing here.
        assert!(check_proof(&ours, &prove(&keys(1, 2), b"another"), "peer").is_err());
    }

    #[test]
    fn the_replication_key_needs_both_secrets() {
        let group = GroupDef {
            id: [7; 16],
            label: "g".into(),
            serial: 1,
            partition: "p".into(),
            epoch: 1,
            members: vec![],
            write_concern: hahsm_proto::peer::WriteConcern::AllReachable,
            replication_timeout_ms: 1000,
        };
        let sealed = replication_key(&[1; 32], &[2; 32], &group)
            .unwrap()
            .seal(b"aad", b"secret")
            .unwrap();
        assert!(replication_key(&[1; 32], &[2; 32], &group)
            .unwrap()
            .open(b"aad", &sealed)
            .is_ok());
        for (domain, owner) in [([9; 32], [2; 32]), ([1; 32], [9; 32])] {
            assert!(replication_key(&domain, &owner, &group)
                .unwrap()
                .open(b"aad", &sealed)
                .is_err());
        }
    }
}
