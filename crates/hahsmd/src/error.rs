//! The errors of the admin socket's commands. Each variant says what kind of
//! failure it is, so callers can tell them apart (a peer request answers a
//! token error with its own code); the text is shown to the operator as is.
use hahsm_store::StoreError;
use hahsm_token::TokenError;

/// An operator-facing failure on the admin socket.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The HSM has not been initialized yet.
    #[error("the HSM is not initialized: run `hahsm appliance hsm init` first")]
    NotInitialized,
    /// The command needs the SO logged in on the console.
    #[error("this command needs the SO: run `hahsm appliance hsm login --so-secret FILE` first")]
    SoNotLoggedIn,
    /// The command was refused, for the reason given (a missing object, a
    /// policy, an argument out of range, a group rule).
    #[error("{0}")]
    Refused(String),
    /// A token rule or operation failed.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

pub type AdminResult<T> = Result<T, AdminError>;

/// A refusal, as an `Err`.
pub fn refuse<T>(why: impl Into<String>) -> AdminResult<T> {
    Err(AdminError::Refused(why.into()))
}
