//! Keys made on the member: generation, import, wrap and unwrap, derivation.
use super::handler::{misrouted, needs_login_for, KeyOps};
use super::templates::*;
use hahsm_crypto::{self as crypto};
use hahsm_proto::client::{Request, Response};
use hahsm_token::attr::CKA_HAHSM_ENCAPSULATION;
use hahsm_token::mechanism::Usage;
use hahsm_token::rules::{self};
use hahsm_token::{ck, AttrValue, TokenError, TokenResult};
use tracing::info;

impl KeyOps<'_> {
    pub(super) async fn keys(&self, request: Request) -> TokenResult<Response> {
        match request {
            Request::ImportKeyPair {
                partition,
                private_key_der,
                template,
                op_id,
            } => {
                let ctx = self.ctx_logged_in(&partition)?;
                check_template_size(self.app, &template)?;
                if let Some(done) = self.previous(&ctx, &op_id).await? {
                    return Ok(done);
                }
                let pair = crypto::import_private_key_der(private_key_der.expose())?;
                let (pubt, privt) = imported_pair_templates(&pair.public, &template)?;
                rules::check_pair_separation(&pubt, &privt, self.enforce_separation(&ctx))?;
                let ids = self
                    .store_new(&ctx, vec![(pubt, None), (privt, Some(pair.private_pkcs8))], op_id)
                    .await?;
                info!(client = %self.conn.client_name, partition, private = %ids[1], "key pair imported");
                Ok(Response::KeyPair {
                    public: ids[0],
                    private: ids[1],
                })
            }
            Request::GenerateKey {
                partition,
                mechanism,
                template,
                op_id,
            } => {
                let ctx = self.ctx(&partition)?;
                self.check_offered(&ctx, mechanism.mech)?;
                check_template_size(self.app, &template)?;
                needs_login_for(&ctx, &template, ck::CKO_SECRET_KEY)?;
                if let Some(done) = self.previous(&ctx, &op_id).await? {
                    return Ok(done);
                }
                let template = separated_defaults(template, self.enforce_separation(&ctx));
                let (attrs, len) = rules::generated_secret_key(mechanism.mech, &template)?;
                let secret = if mechanism.mech == ck::CKM_DES3_KEY_GEN {
                    crypto::generate_des3()?
                } else {
                    crypto::generate_secret(len)?
                };
                let ids = self.store_new(&ctx, vec![(attrs, Some(secret))], op_id).await?;
                info!(client = %self.conn.client_name, partition, object = %ids[0], "secret key generated");
                Ok(Response::Object(ids[0]))
            }
            Request::GenerateKeyPair {
                partition,
                mechanism,
                public_template,
                private_template,
                op_id,
            } => {
                let ctx = self.ctx(&partition)?;
                check_template_size(self.app, &public_template)?;
                check_template_size(self.app, &private_template)?;
                needs_login_for(&ctx, &public_template, ck::CKO_PUBLIC_KEY)?;
                needs_login_for(&ctx, &private_template, ck::CKO_PRIVATE_KEY)?;
                if let Some(done) = self.previous(&ctx, &op_id).await? {
                    return Ok(done);
                }
                let separation = self.enforce_separation(&ctx);
                let (spec, mut pubt, mut privt) = rules::generated_key_pair(
                    mechanism.mech,
                    &separated_defaults(public_template, separation),
                    &separated_defaults(private_template, separation),
                )?;
                rules::check_pair_separation(&pubt, &privt, separation)?;
                if let rules::KeyPairSpec::Rsa { bits, .. } = &spec {
                    // The legacy size is made only under the policy; any
                    // other size is refused by the generator itself.
                    if *bits == crypto::LEGACY_RSA_BITS {
                        self.check_legacy_key(&ctx, &pubt)?;
                    }
                }
                // Key generation can take a while (RSA-4096): keep it off the async workers.
                let pair = tokio::task::spawn_blocking(move || generate_pair(&spec))
                    .await
                    .map_err(|e| TokenError::FunctionFailed(format!("key generation task failed: {e}")))??;
                add_public_attributes(&pair.public, &mut pubt, &mut privt);
                let ids = self
                    .store_new(&ctx, vec![(pubt, None), (privt, Some(pair.private_pkcs8))], op_id)
                    .await?;
                info!(client = %self.conn.client_name, partition, public = %ids[0], private = %ids[1], "key pair generated");
                Ok(Response::KeyPair {
                    public: ids[0],
                    private: ids[1],
                })
            }
            Request::WrapKey {
                partition,
                wrapping_key,
                key,
                mechanism,
            } => {
                let (ctx, wrapping) = self.usable_key(&partition, &wrapping_key, &mechanism, Usage::Wrap)?;
                let target = self.key(&ctx, &key)?;
                rules::check_wrappable(&target.attrs, &wrapping.attrs)?;
                let secret = wrapped_form(&target.attrs, ctx.active.secret_of(&target)?)?;
                let k = ctx.active.key(&wrapping)?;
                crypto::wrap(&mechanism, &k, secret.expose()).map(Response::Bytes)
            }
            Request::UnwrapKey {
                partition,
                unwrapping_key,
                mechanism,
                wrapped,
                template,
                op_id,
            } => {
                let (ctx, unwrapping) =
                    self.usable_key(&partition, &unwrapping_key, &mechanism, Usage::Unwrap)?;
                check_template_size(self.app, &template)?;
                needs_login_for(&ctx, &template, ck::CKO_SECRET_KEY)?;
                if let Some(done) = self.previous(&ctx, &op_id).await? {
                    return Ok(done);
                }
                let template =
                    rules::apply_key_template(&unwrapping.attrs, ck::CKA_UNWRAP_TEMPLATE, &template)?;
                let k = ctx.active.key(&unwrapping)?;
                let secret = crypto::unwrap(&mechanism, &k, &wrapped)?;
                let (attrs, secret) = unwrapped_object(&template, secret)?;
                let ids = self.store_new(&ctx, vec![(attrs, Some(secret))], op_id).await?;
                Ok(Response::Object(ids[0]))
            }
            Request::DeriveKey {
                partition,
                base_key,
                mechanism,
                template,
                op_id,
            } => {
                let (ctx, base) = self.usable_key(&partition, &base_key, &mechanism, Usage::Derive)?;
                check_template_size(self.app, &template)?;
                needs_login_for(&ctx, &template, ck::CKO_SECRET_KEY)?;
                if let Some(done) = self.previous(&ctx, &op_id).await? {
                    return Ok(done);
                }
                let template = rules::apply_key_template(&base.attrs, ck::CKA_DERIVE_TEMPLATE, &template)?;
                let (attrs, secret) = self.derived_object(&ctx, &base, &mechanism, &template)?;
                let ids = self.store_new(&ctx, vec![(attrs, Some(secret))], op_id).await?;
                Ok(Response::Object(ids[0]))
            }
            Request::EncapsulateKey {
                partition,
                public_key,
                mechanism,
                template,
                op_id,
            } => {
                let (ctx, public) =
                    self.usable_key(&partition, &public_key, &mechanism, Usage::Encapsulate)?;
                check_template_size(self.app, &template)?;
                needs_login_for(&ctx, &template, ck::CKO_SECRET_KEY)?;
                if let Some(done) = self.previous(&ctx, &op_id).await? {
                    // Encapsulation is randomized: a retry answers the
                    // ciphertext the first attempt stored with its key.
                    let Response::Object(object) = done else {
                        return Err(TokenError::DeviceError(
                            "an earlier encapsulation left no key".into(),
                        ));
                    };
                    let key = self.key(&ctx, &object)?;
                    let ciphertext = key
                        .attrs
                        .bytes(CKA_HAHSM_ENCAPSULATION)
                        .ok_or_else(|| {
                            TokenError::DeviceError("an earlier encapsulation left no ciphertext".into())
                        })?
                        .to_vec();
                    return Ok(Response::Encapsulated { object, ciphertext });
                }
                let template =
                    rules::apply_key_template(&public.attrs, ck::CKA_ENCAPSULATE_TEMPLATE, &template)?;
                let (ciphertext, shared) = crypto::kem_encapsulate(&*ctx.active.key(&public)?)?;
                let (mut attrs, secret) = self.kem_object(None, &template, shared)?;
                attrs.set(CKA_HAHSM_ENCAPSULATION, AttrValue::Bytes(ciphertext.clone()));
                let ids = self.store_new(&ctx, vec![(attrs, Some(secret))], op_id).await?;
                Ok(Response::Encapsulated {
                    object: ids[0],
                    ciphertext,
                })
            }
            Request::DecapsulateKey {
                partition,
                private_key,
                mechanism,
                ciphertext,
                template,
                op_id,
            } => {
                let (ctx, private) =
                    self.usable_key(&partition, &private_key, &mechanism, Usage::Decapsulate)?;
                check_template_size(self.app, &template)?;
                needs_login_for(&ctx, &template, ck::CKO_SECRET_KEY)?;
                if let Some(done) = self.previous(&ctx, &op_id).await? {
                    return Ok(done);
                }
                let template =
                    rules::apply_key_template(&private.attrs, ck::CKA_DECAPSULATE_TEMPLATE, &template)?;
                let shared = crypto::kem_decapsulate(&*ctx.active.key(&private)?, &ciphertext)?;
                let (attrs, secret) = self.kem_object(Some(&private), &template, shared)?;
                let ids = self.store_new(&ctx, vec![(attrs, Some(secret))], op_id).await?;
                Ok(Response::Object(ids[0]))
            }
            other => Err(misrouted(&other)),
        }
    }
}
