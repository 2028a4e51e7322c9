//! The errors of the admin socket's commands: a message for the operator,
//! shown as is. Token and store errors become one with their text.
use hahsm_token::TokenError;

/// An operator-facing failure on the admin socket. Its text is shown as is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AdminError(pub String);

impl From<TokenError> for AdminError {
    fn from(e: TokenError) -> Self {
        AdminError(e.to_string())
    }
}

impl From<hahsm_store::StoreError> for AdminError {
    fn from(e: hahsm_store::StoreError) -> Self {
        AdminError(e.to_string())
    }
}

pub type AdminResult<T> = Result<T, AdminError>;
