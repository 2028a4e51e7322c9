//! The module's one error type, and its one mapping to `CK_RV` ([`Error::rv`]).
use hahsm_client::ClientError;
use hahsm_token::{ck, TokenError};

/// Why a call failed. Messages never carry PINs or key bytes.
#[derive(Debug)]
pub enum Error {
    /// A PKCS#11 return code decided by the module itself.
    Rv(ck::CK_RV),
    /// The caller's buffer is too small; `needed` bytes are required. The
    /// operation stays active (PKCS#11 3.0 §5.2).
    BufferTooSmall { needed: usize },
    /// A token rule broken in the module's own checks (templates, parameters).
    Token(TokenError),
    /// The member refused the request, or could not be reached.
    Client(ClientError),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The return code an application sees. This is the only place errors become `CK_RV`s.
    pub fn rv(&self) -> ck::CK_RV {
        match self {
            Error::Rv(rv) => *rv,
            Error::BufferTooSmall { .. } => ck::CKR_BUFFER_TOO_SMALL,
            Error::Token(e) => e.ckr(),
            Error::Client(e) => e.ckr(),
        }
    }
}

impl From<TokenError> for Error {
    fn from(e: TokenError) -> Self {
        Error::Token(e)
    }
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Self {
        Error::Client(e)
    }
}

/// Shorthand for a module-decided return code.
pub fn rv<T>(code: ck::CK_RV) -> Result<T> {
    Err(Error::Rv(code))
}

/// The buffer convention of PKCS#11 3.0 §5.2, written once.
///
/// `capacity` is `None` when the application passed a NULL output buffer (it
/// asks for the length) and `Some(n)` for a buffer of `n` bytes. Returns
/// `Ok(true)` when the output fits and the operation is finished, `Ok(false)`
/// when only the length is returned and the operation stays active, and
/// `Err(BufferTooSmall)`, which also keeps the operation active.
pub fn delivers(capacity: Option<usize>, produced: usize) -> Result<bool> {
    match capacity {
        None => Ok(false),
        Some(c) if c < produced => Err(Error::BufferTooSmall { needed: produced }),
        Some(_) => Ok(true),
    }
}

/// An error as the log shows it: the member's message or the connection's fault.
pub fn describe(e: &Error) -> String {
    match e {
        Error::Client(c) => c.to_string(),
        Error::Token(t) => t.to_string(),
        other => format!("CKR {:#x}", other.rv()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_convention() {
        assert!(!delivers(None, 10).unwrap());
        assert!(delivers(Some(10), 10).unwrap());
        assert!(matches!(
            delivers(Some(9), 10),
            Err(Error::BufferTooSmall { needed: 10 })
        ));
    }

    #[test]
    fn each_error_has_one_code() {
        assert_eq!(Error::Rv(ck::CKR_ARGUMENTS_BAD).rv(), ck::CKR_ARGUMENTS_BAD);
        assert_eq!(Error::BufferTooSmall { needed: 1 }.rv(), ck::CKR_BUFFER_TOO_SMALL);
        assert_eq!(Error::from(TokenError::PinLocked).rv(), ck::CKR_PIN_LOCKED);
        let gone = ClientError::Disconnected { server: "a".into() };
        assert_eq!(Error::from(gone).rv(), ck::CKR_DEVICE_REMOVED);
    }
}
