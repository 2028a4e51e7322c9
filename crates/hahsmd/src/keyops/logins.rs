//! Logins and PINs on a connection: `Login`, `Logout`, `SetPin`, `InitPin`
//! (the PINs are the group's: `crate::pins`).
use super::handler::{misrouted, KeyOps};
use crate::appliance::PinKind;
use crate::sync::Recover;
use hahsm_proto::client::{Request, Response, USER_SO};
use hahsm_token::{TokenError, TokenResult};
use tracing::info;

impl KeyOps<'_> {
    pub(super) async fn logins(&self, request: Request) -> TokenResult<Response> {
        match request {
            Request::Login {
                partition,
                user_type,
                pin,
            } => self.login(&partition, user_type, pin.expose()).await,
            Request::Logout { partition } => {
                let _ = self.ctx(&partition)?;
                let removed = self.conn.logins.lock_or_recover().remove(&partition);
                removed.map(|_| Response::Done).ok_or(TokenError::UserNotLoggedIn)
            }
            Request::SetPin {
                partition,
                old_pin,
                new_pin,
                op_id,
            } => {
                let ctx = self.ctx(&partition)?;
                if self.already_done(&ctx, &op_id).await? {
                    return Ok(Response::Done);
                }
                let kind = if ctx.role == Some(USER_SO) {
                    PinKind::So
                } else {
                    PinKind::User
                };
                let row = self.app.partition_row_for_login(&partition)?;
                crate::pins::check(self.app, &row, &ctx.active, kind, old_pin.expose()).await?;
                crate::pins::set(self.app, &ctx.active, kind, new_pin.expose(), Some(op_id)).await?;
                info!(client = %self.conn.client_name, partition, ?kind, "PIN changed");
                Ok(Response::Done)
            }
            Request::InitPin {
                partition,
                new_pin,
                op_id,
            } => {
                let ctx = self.ctx(&partition)?;
                if ctx.role != Some(USER_SO) {
                    return Err(TokenError::UserNotLoggedIn);
                }
                if self.already_done(&ctx, &op_id).await? {
                    return Ok(Response::Done);
                }
                crate::pins::set(
                    self.app,
                    &ctx.active,
                    PinKind::User,
                    new_pin.expose(),
                    Some(op_id),
                )
                .await?;
                info!(client = %self.conn.client_name, partition, "user PIN initialized by the partition SO");
                Ok(Response::Done)
            }
            other => Err(misrouted(&other)),
        }
    }
}
