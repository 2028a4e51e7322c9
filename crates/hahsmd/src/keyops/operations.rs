//! The cryptographic operations: sign, verify, encrypt, decrypt, digest, random.
use super::handler::{misrouted, KeyOps};
use hahsm_crypto::{self as crypto};
use hahsm_proto::client::{Request, Response};
use hahsm_token::mechanism::Usage;
use hahsm_token::{TokenError, TokenResult};

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
            Request::Digest { mechanism, data } => crypto::digest(mechanism.mech, &data).map(Response::Bytes),
            other => Err(misrouted(&other)),
        }
    }
}
