//! M-of-N custody of the cloning-domain secret (the report's split red key):
//! Shamir secret sharing over GF(256) from vsss-rs, whose field arithmetic is
//! constant-time.
//!
//! Each share carries, besides its Shamir share:
//! - the split's random 128-bit id, so shares of two different splits are
//!   never combined (they would give a wrong secret, silently);
//! - the threshold M and the count N;
//! - a check value, SHA-256 over the split id and the secret, to confirm the
//!   combined secret: a share altered on purpose (with a recomputed tag) gives
//!   a secret that fails it;
//! - a tag, a truncated SHA-256 over all of the above, so a damaged share is
//!   refused by itself, naming which one.
//!
//! Errors name shares by their position in the list given, never any value.
use crate::{ct_eq, sha256, SecretBytes, TokenError};
use zeroize::Zeroize;

const MAGIC: &[u8; 4] = b"HSH1";
const SPLIT_ID_LEN: usize = 16;
const CHECK_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// The secret's length: a domain secret is 256 bits.
pub const SECRET_LEN: usize = 32;
/// One share's encoded length.
pub const SHARE_LEN: usize = 4 + SPLIT_ID_LEN + 1 + 1 + CHECK_LEN + 1 + SECRET_LEN + TAG_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    #[error("a split needs 2 <= threshold <= shares <= 255 (got threshold {threshold} of {shares})")]
    BadParameters { threshold: usize, shares: usize },
    #[error("the secret to split must be {SECRET_LEN} bytes")]
    BadSecret,
    #[error("share {0} is not a domain-secret share")]
    Malformed(usize),
    #[error("share {0} is damaged: its integrity tag does not match")]
    Corrupted(usize),
    #[error("share {0} belongs to another split than share 1; use shares of one split only")]
    ForeignSplit(usize),
    #[error("share {0} is given twice (same share number as an earlier one)")]
    Repeated(usize),
    #[error("{given} share(s) given, but this split needs {needed}")]
    TooFew { given: usize, needed: usize },
    #[error("the shares do not reconstruct the domain secret: one of them was altered")]
    Mismatch,
    #[error("the system random generator failed")]
    Random,
}

/// What a share says about its split; nothing secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareInfo {
    pub split_id: [u8; SPLIT_ID_LEN],
    pub threshold: u8,
    pub count: u8,
    /// The Shamir x-coordinate, 1..=255.
    pub number: u8,
}

/// The random source vsss-rs asks for, drawing from aws-lc's generator.
struct AwsLcRng;

impl rand_core::RngCore for AwsLcRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        // aws-lc's generator does not fail once the library is initialised;
        // if it ever did, an all-zero buffer must not be used: stop here.
        if aws_lc_rs::rand::fill(dest).is_err() {
            panic!("the system random generator failed");
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        aws_lc_rs::rand::fill(dest).map_err(|_| rand_core::Error::new("aws-lc random generator failed"))
    }
}

impl rand_core::CryptoRng for AwsLcRng {}

fn check_value(split_id: &[u8], secret: &[u8]) -> [u8; 32] {
    let mut buf = b"hahsm/domain-split-check/v1".to_vec();
    buf.extend_from_slice(split_id);
    buf.extend_from_slice(secret);
    let out = sha256(&buf);
    buf.zeroize();
    out
}

fn tag(body: &[u8]) -> [u8; TAG_LEN] {
    let mut buf = b"hahsm/domain-share-tag/v1".to_vec();
    buf.extend_from_slice(body);
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&sha256(&buf)[..TAG_LEN]);
    buf.zeroize();
    out
}

/// Splits a 32-byte secret into `count` shares, any `threshold` of which
/// give it back. Each share is [`SHARE_LEN`] bytes.
pub fn split(secret: &[u8], threshold: usize, count: usize) -> Result<Vec<SecretBytes>, ShareError> {
    if !(2..=255).contains(&threshold) || count < threshold || count > 255 {
        return Err(ShareError::BadParameters {
            threshold,
            shares: count,
        });
    }
    if secret.len() != SECRET_LEN {
        return Err(ShareError::BadSecret);
    }
    let mut split_id = [0u8; SPLIT_ID_LEN];
    aws_lc_rs::rand::fill(&mut split_id).map_err(|_| ShareError::Random)?;
    let check = check_value(&split_id, secret);
    let raw =
        vsss_rs::Gf256::split_array(threshold, count, secret, AwsLcRng).map_err(|_| ShareError::Random)?;
    let mut out = Vec::with_capacity(count);
    for mut share in raw {
        let mut body = Vec::with_capacity(SHARE_LEN);
        body.extend_from_slice(MAGIC);
        body.extend_from_slice(&split_id);
        body.push(threshold as u8);
        body.push(count as u8);
        body.extend_from_slice(&check);
        body.extend_from_slice(&share);
        share.zeroize();
        let t = tag(&body);
        body.extend_from_slice(&t);
        out.push(SecretBytes::new(body));
    }
    Ok(out)
}

/// Reads a share's public facts, checking its form and tag. `position` is its
/// place (1-based) in the operator's list, for the error.
pub fn inspect(share: &[u8], position: usize) -> Result<ShareInfo, ShareError> {
    if share.len() != SHARE_LEN || &share[..4] != MAGIC {
        return Err(ShareError::Malformed(position));
    }
    let (body, t) = share.split_at(SHARE_LEN - TAG_LEN);
    if !ct_eq(&tag(body), t) {
        return Err(ShareError::Corrupted(position));
    }
    let mut split_id = [0u8; SPLIT_ID_LEN];
    split_id.copy_from_slice(&body[4..4 + SPLIT_ID_LEN]);
    let threshold = body[4 + SPLIT_ID_LEN];
    let count = body[5 + SPLIT_ID_LEN];
    let number = body[6 + SPLIT_ID_LEN + CHECK_LEN];
    if threshold < 2 || count < threshold || number == 0 {
        return Err(ShareError::Malformed(position));
    }
    Ok(ShareInfo {
        split_id,
        threshold,
        count,
        number,
    })
}

/// Combines shares of one split into the secret: at least M of them, all
/// distinct, all from the same split, none damaged, and the result must match
/// the split's check value.
pub fn combine(shares: &[&[u8]]) -> Result<SecretBytes, ShareError> {
    let mut infos: Vec<ShareInfo> = Vec::with_capacity(shares.len());
    for (i, s) in shares.iter().enumerate() {
        let info = inspect(s, i + 1)?;
        if let Some(first) = infos.first() {
            let check_of = |s: &[u8]| s[6 + SPLIT_ID_LEN..6 + SPLIT_ID_LEN + CHECK_LEN].to_vec();
            if info.split_id != first.split_id
                || info.threshold != first.threshold
                || info.count != first.count
                || check_of(s) != check_of(shares[0])
            {
                return Err(ShareError::ForeignSplit(i + 1));
            }
        }
        if infos.iter().any(|o| o.number == info.number) {
            return Err(ShareError::Repeated(i + 1));
        }
        infos.push(info);
    }
    let needed = infos.first().map_or(2, |f| f.threshold as usize);
    if infos.len() < needed {
        return Err(ShareError::TooFew {
            given: infos.len(),
            needed,
        });
    }
    let start = 6 + SPLIT_ID_LEN + CHECK_LEN;
    let mut raw: Vec<Vec<u8>> = shares
        .iter()
        .map(|s| s[start..start + 1 + SECRET_LEN].to_vec())
        .collect();
    let combined = vsss_rs::Gf256::combine_array(&raw);
    raw.iter_mut().for_each(|r| r.zeroize());
    let secret = SecretBytes::new(combined.map_err(|_| ShareError::Mismatch)?);
    let check = &shares[0][6 + SPLIT_ID_LEN..start];
    if !ct_eq(&check_value(&infos[0].split_id, secret.expose()), check) {
        return Err(ShareError::Mismatch);
    }
    Ok(secret)
}

/// For callers that speak `TokenError`.
impl From<ShareError> for TokenError {
    fn from(e: ShareError) -> Self {
        TokenError::ArgumentsBad(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(v: &[SecretBytes]) -> Vec<&[u8]> {
        v.iter().map(|s| s.expose()).collect()
    }

    #[test]
    fn any_m_of_n_give_the_secret_back_and_fewer_do_not() {
        let secret = [7u8; 32];
        let shares = split(&secret, 3, 5).unwrap();
        assert_eq!(shares.len(), 5);
        let all = refs(&shares);
        for pick in [[0, 1, 2], [4, 2, 0], [1, 3, 4]] {
            let chosen: Vec<&[u8]> = pick.iter().map(|&i| all[i]).collect();
            assert_eq!(combine(&chosen).unwrap().expose(), &secret);
        }
        assert_eq!(combine(&all).unwrap().expose(), &secret);
        assert_eq!(
            combine(&all[..2]).unwrap_err(),
            ShareError::TooFew { given: 2, needed: 3 }
        );
        let info = inspect(all[3], 1).unwrap();
        assert_eq!((info.threshold, info.count), (3, 5));
    }

    #[test]
    fn repeated_foreign_damaged_and_altered_shares_are_refused() {
        let secret = [9u8; 32];
        let a = split(&secret, 2, 3).unwrap();
        let b = split(&secret, 2, 3).unwrap();
        let (a, b) = (refs(&a), refs(&b));
        assert_eq!(combine(&[a[0], a[0]]).unwrap_err(), ShareError::Repeated(2));
        assert_eq!(combine(&[a[0], b[1]]).unwrap_err(), ShareError::ForeignSplit(2));
        let mut damaged = a[1].to_vec();
        damaged[50] ^= 1;
        assert_eq!(combine(&[a[0], &damaged]).unwrap_err(), ShareError::Corrupted(2));
        // Altered on purpose, with the tag recomputed: the check value catches it.
        let mut forged = a[1][..SHARE_LEN - TAG_LEN].to_vec();
        forged[SHARE_LEN - TAG_LEN - 1] ^= 1;
        let t = tag(&forged);
        forged.extend_from_slice(&t);
        assert_eq!(combine(&[a[0], &forged]).unwrap_err(), ShareError::Mismatch);
        assert_eq!(combine(&[a[0], b"short"]).unwrap_err(), ShareError::Malformed(2));
        assert!(split(&secret, 1, 3).is_err());
        assert!(split(&secret, 4, 3).is_err());
    }
}
