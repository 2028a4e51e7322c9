//! The cryptographic operations: sign, verify, encrypt, decrypt, digest, random.
use super::handler::{misrouted, KeyOps};
use hahsm_crypto::{self as crypto};
use hahsm_proto::client::{Request, Response};
use hahsm_token::mechanism::Usage;
use hahsm_token::{ck, TokenError, TokenResult};
use zeroize::Zeroizing;

/// Most random bytes one request returns.
const MAX_RANDOM: u32 = 64 * 1024;

impl KeyOps<'_> {
    pub(super) async fn operations(&self, request: Request) -> TokenResult<Response> {
        match request {
            Request::Sign {
                partition,
                key,
                mechanism,
                data,
            } => {
                let k = self.loaded_key(&partition, &key, &mechanism, Usage::Sign)?;
                crypto::sign(&mechanism, &k, &data).map(Response::Bytes)
            }
            Request::Verify {
                partition,
                key,
                mechanism,
                data,
                signature,
            } => {
                let k = self.loaded_key(&partition, &key, &mechanism, Usage::Verify)?;
                crypto::verify(&mechanism, &k, &data, &signature).map(|()| Response::Verified)
            }
            Request::Encrypt {
                partition,
                key,
                mechanism,
                data,
            } => {
                let k = self.loaded_key(&partition, &key, &mechanism, Usage::Encrypt)?;
                crypto::encrypt(&mechanism, &k, &data).map(Response::Bytes)
            }
            Request::Decrypt {
                partition,
                key,
                mechanism,
                data,
            } => {
                let k = self.loaded_key(&partition, &key, &mechanism, Usage::Decrypt)?;
                crypto::decrypt(&mechanism, &k, &data).map(Response::Bytes)
            }
            Request::GenerateRandom { len } => {
                if len > MAX_RANDOM {
                    return Err(TokenError::ArgumentsBad(format!(
                        "at most {MAX_RANDOM} random bytes per request"
                    )));
                }
                crypto::random(len as usize).map(Response::Bytes)
            }
            Request::Digest {
                partition,
                mechanism,
                data,
            } => {
                let ctx = self.ctx(&partition)?;
                self.check_offered(&ctx, mechanism.mech)?;
                crypto::digest(mechanism.mech, &data).map(Response::Bytes)
            }
            Request::DigestKeys {
                partition,
                mechanism,
                data,
                keys,
            } => {
                // Any secret key may be digested (PKCS#11 3.0 §5.10,
                // C_DigestKey): only a hash of its value leaves the member.
                let ctx = self.ctx(&partition)?;
                self.check_offered(&ctx, mechanism.mech)?;
                let mut input = Zeroizing::new(Vec::with_capacity(data.len() + 32 * keys.len()));
                let mut from = 0usize;
                for (offset, ouid) in &keys {
                    let at = usize::try_from(*offset)
                        .ok()
                        .filter(|at| (from..=data.len()).contains(at))
                        .ok_or_else(|| TokenError::ArgumentsBad("key offsets out of order".into()))?;
                    let entry = self.key(&ctx, ouid)?;
                    if entry.class() != ck::CKO_SECRET_KEY {
                        return Err(TokenError::KeyIndigestible(
                            "only secret keys can be digested".into(),
                        ));
                    }
                    input.extend_from_slice(&data[from..at]);
                    input.extend_from_slice(ctx.active.secret_of(&entry)?.expose());
                    from = at;
                }
                input.extend_from_slice(&data[from..]);
                crypto::digest(mechanism.mech, &input).map(Response::Bytes)
            }
            other => Err(misrouted(&other)),
        }
    }
}
