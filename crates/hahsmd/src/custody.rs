//! Custody of the cloning-domain secret.
//!
//! The domain secret reaches the member either whole (a secret file) or as M
//! shares of an M-of-N split (`hahsm domain split`), which the member combines
//! here, checks, and zeroizes after use. A member initialised from shares
//! records the split (id, M, N, never a share) and from then on wants M shares,
//! not the whole secret, to add a member to a group (and to make or restore
//! a backup, `crate::backup`): the custodians must meet.
use crate::appliance::Appliance;
use crate::error::refuse;
use crate::error::{AdminError, AdminResult};
use hahsm_crypto::{self as crypto, shares, SecretBytes};
use hahsm_proto::admin::DomainSecret;
use hahsm_proto::Secret;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

const META_CUSTODY: &str = "hsm.domain_custody";

/// How this member's domain secret is held, when it came from shares.
#[derive(Debug, Serialize, Deserialize)]
struct SplitRecord {
    split_id: [u8; 16],
    threshold: u8,
    count: u8,
}

/// The whole domain secret from what the operator gave, and the split it
/// came from, if any.
pub fn resolve(input: &DomainSecret) -> AdminResult<(SecretBytes, Option<shares::ShareInfo>)> {
    match input {
        DomainSecret::Whole(s) => {
            if s.len() != crate::appliance::SECRET_LEN {
                return refuse("the domain secret must be 32 bytes (256 bits)");
            }
            Ok((SecretBytes::new(s.expose().to_vec()), None))
        }
        DomainSecret::Shares(list) => {
            let refs: Vec<&[u8]> = list.iter().map(Secret::expose).collect();
            let secret =
                shares::combine(&refs).map_err(|e| AdminError::Refused(format!("domain shares: {e}")))?;
            let info = shares::inspect(refs[0], 1).map_err(|e| AdminError::Refused(e.to_string()))?;
            Ok((secret, Some(info)))
        }
    }
}

/// Initialises the HSM into the domain given whole or as shares.
pub fn hsm_init(app: &Appliance, label: &str, so_secret: &Secret, domain: &DomainSecret) -> AdminResult<()> {
    let (secret, split) = resolve(domain)?;
    app.hsm_init(label, so_secret, &Secret::new(secret.expose().to_vec()))?;
    match split {
        Some(info) => {
            let record = SplitRecord {
                split_id: info.split_id,
                threshold: info.threshold,
                count: info.count,
            };
            app.store
                .put_meta(META_CUSTODY, &postcard::to_allocvec(&record).unwrap_or_default())?;
            info!(
                threshold = info.threshold,
                shares = info.count,
                "HSM initialised from domain shares"
            );
        }
        None => app.store.delete_meta(META_CUSTODY)?,
    }
    Ok(())
}

/// Forgets the split record (factory reset).
pub fn forget(app: &Appliance) -> AdminResult<()> {
    Ok(app.store.delete_meta(META_CUSTODY)?)
}

fn split_record(app: &Appliance) -> Option<SplitRecord> {
    app.store
        .get_meta(META_CUSTODY)
        .ok()
        .flatten()
        .and_then(|b| postcard::from_bytes(&b).ok())
}

/// Checks that the domain secret given is this member's (the SO logged in),
/// and returns it whole.
pub fn check_domain(app: &Appliance, input: &DomainSecret) -> AdminResult<SecretBytes> {
    let ours = app.so_domain_key()?;
    if let (DomainSecret::Whole(_), Some(r)) = (input, split_record(app)) {
        return refuse(format!(
            "this member's domain secret is held as {} of {} shares: give {} shares (--share FILE), not a whole secret",
            r.threshold, r.count, r.threshold
        ));
    }
    let (secret, _) = resolve(input)?;
    let given = crate::replication::keys::domain_key(secret.expose())?;
    if !crypto::ct_eq(given.expose(), ours.expose()) {
        warn!("refused: the domain secret given is not this member's");
        return refuse("the domain secret given is not this member's cloning domain");
    }
    Ok(secret)
}

/// Before `ha add-member`: a member whose domain is held in shares wants M of
/// them; otherwise the domain secret is optional, and checked if given.
pub fn authorize_add_member(app: &Appliance, input: Option<&DomainSecret>) -> AdminResult<()> {
    match (input, split_record(app)) {
        (Some(d), _) => check_domain(app, d).map(drop),
        (None, Some(r)) => refuse(format!(
            "adding a member needs the domain custodians: give {} of the {} domain shares (--share FILE)",
            r.threshold, r.count
        )),
        (None, None) => Ok(()),
    }
}
