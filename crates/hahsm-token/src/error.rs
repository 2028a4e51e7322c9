//! The token's one error type. Each variant maps to exactly one `CKR_*` code in
//! [`TokenError::ckr`]; messages never carry secret values.
use crate::ck;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub type TokenResult<T> = Result<T, TokenError>;

/// On the wire only: a member refused a write for want of a quorum. Clients
/// report it as `CKR_DEVICE_ERROR`; the HA slot first tries another member.
pub const CKR_NO_QUORUM: u64 = ck::CKR_VENDOR_DEFINED | 0x4851;

#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TokenError {
    #[error("attribute type {0:#x} is not known")]
    AttributeTypeInvalid(u64),
    #[error("attribute {0:#x} has an invalid value")]
    AttributeValueInvalid(u64),
    #[error("attribute {0:#x} is read-only")]
    AttributeReadOnly(u64),
    #[error("attribute {0:#x} is sensitive and cannot be revealed")]
    AttributeSensitive(u64),
    #[error("template is incomplete: {0}")]
    TemplateIncomplete(String),
    #[error("template is inconsistent: {0}")]
    TemplateInconsistent(String),
    #[error("mechanism {0:#x} is not supported")]
    MechanismInvalid(u64),
    #[error("mechanism parameters are invalid: {0}")]
    MechanismParamInvalid(String),
    #[error("key type does not fit the mechanism")]
    KeyTypeInconsistent,
    #[error("key size is out of range: {0}")]
    KeySizeRange(String),
    #[error("the key does not permit this function: {0}")]
    KeyFunctionNotPermitted(String),
    #[error("the key cannot be extracted")]
    KeyUnextractable,
    #[error("no object with this handle")]
    ObjectHandleInvalid,
    #[error("no key with this handle")]
    KeyHandleInvalid,
    #[error("the action is prohibited: {0}")]
    ActionProhibited(String),
    #[error("the user is not logged in")]
    UserNotLoggedIn,
    #[error("a user is already logged in")]
    UserAlreadyLoggedIn,
    #[error("another user type is already logged in")]
    UserAnotherAlreadyLoggedIn,
    #[error("the user type is invalid")]
    UserTypeInvalid,
    #[error("incorrect PIN ({remaining} attempts left before lockout)")]
    PinIncorrect { remaining: u32 },
    #[error("the PIN is locked after too many failed logins")]
    PinLocked,
    #[error("the PIN is not set")]
    UserPinNotInitialized,
    #[error("the PIN length is out of range")]
    PinLenRange,
    #[error("input data has an invalid length")]
    DataLenRange,
    #[error("input data is invalid")]
    DataInvalid,
    #[error("encrypted data is invalid")]
    EncryptedDataInvalid,
    #[error("encrypted data has an invalid length")]
    EncryptedDataLenRange,
    #[error("the signature is invalid")]
    SignatureInvalid,
    #[error("the signature has an invalid length")]
    SignatureLenRange,
    #[error("the wrapped key is invalid")]
    WrappedKeyInvalid,
    #[error("the output buffer is too small")]
    BufferTooSmall,
    #[error("the partition is not activated")]
    PartitionNotActive,
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    #[error("the store is full: {0}")]
    DeviceMemory(String),
    #[error("device error: {0}")]
    DeviceError(String),
    #[error("the request deadline passed")]
    DeadlineExceeded,
    #[error("the operation failed: {0}")]
    FunctionFailed(String),
    #[error("argument is invalid: {0}")]
    ArgumentsBad(String),
    #[error("too many sessions or objects: {0}")]
    LimitReached(String),
    /// A write refused because the group's write concern (quorum) cannot be
    /// met from this member; another member may meet it.
    #[error("{0}")]
    NoQuorum(String),
    /// The key may not be wrapped with this wrapping key (its `CKA_WRAP_TEMPLATE`).
    #[error("the key cannot be wrapped: {0}")]
    KeyNotWrappable(String),
    /// `C_DigestKey` of a key whose value cannot be digested (not a secret key).
    #[error("the key cannot be digested: {0}")]
    KeyIndigestible(String),
}

impl TokenError {
    /// The PKCS#11 return code for this error.
    pub fn ckr(&self) -> u64 {
        use TokenError::*;
        match self {
            AttributeTypeInvalid(_) => ck::CKR_ATTRIBUTE_TYPE_INVALID,
            AttributeValueInvalid(_) => ck::CKR_ATTRIBUTE_VALUE_INVALID,
            AttributeReadOnly(_) => ck::CKR_ATTRIBUTE_READ_ONLY,
            AttributeSensitive(_) => ck::CKR_ATTRIBUTE_SENSITIVE,
            TemplateIncomplete(_) => ck::CKR_TEMPLATE_INCOMPLETE,
            TemplateInconsistent(_) => ck::CKR_TEMPLATE_INCONSISTENT,
            MechanismInvalid(_) => ck::CKR_MECHANISM_INVALID,
            MechanismParamInvalid(_) => ck::CKR_MECHANISM_PARAM_INVALID,
            KeyTypeInconsistent => ck::CKR_KEY_TYPE_INCONSISTENT,
            KeySizeRange(_) => ck::CKR_KEY_SIZE_RANGE,
            KeyFunctionNotPermitted(_) => ck::CKR_KEY_FUNCTION_NOT_PERMITTED,
            KeyUnextractable => ck::CKR_KEY_UNEXTRACTABLE,
            ObjectHandleInvalid => ck::CKR_OBJECT_HANDLE_INVALID,
            KeyHandleInvalid => ck::CKR_KEY_HANDLE_INVALID,
            ActionProhibited(_) => ck::CKR_ACTION_PROHIBITED,
            UserNotLoggedIn => ck::CKR_USER_NOT_LOGGED_IN,
            UserAlreadyLoggedIn => ck::CKR_USER_ALREADY_LOGGED_IN,
            UserTypeInvalid => ck::CKR_USER_TYPE_INVALID,
            UserAnotherAlreadyLoggedIn => ck::CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
            PinIncorrect { .. } => ck::CKR_PIN_INCORRECT,
            PinLocked => ck::CKR_PIN_LOCKED,
            PinLenRange => ck::CKR_PIN_LEN_RANGE,
            UserPinNotInitialized => ck::CKR_USER_PIN_NOT_INITIALIZED,
            DataLenRange => ck::CKR_DATA_LEN_RANGE,
            DataInvalid => ck::CKR_DATA_INVALID,
            EncryptedDataInvalid => ck::CKR_ENCRYPTED_DATA_INVALID,
            EncryptedDataLenRange => ck::CKR_ENCRYPTED_DATA_LEN_RANGE,
            SignatureInvalid => ck::CKR_SIGNATURE_INVALID,
            SignatureLenRange => ck::CKR_SIGNATURE_LEN_RANGE,
            WrappedKeyInvalid => ck::CKR_WRAPPED_KEY_INVALID,
            BufferTooSmall => ck::CKR_BUFFER_TOO_SMALL,
            PartitionNotActive => ck::CKR_TOKEN_NOT_PRESENT,
            NotAuthorized(_) => ck::CKR_TOKEN_NOT_RECOGNIZED,
            DeviceMemory(_) => ck::CKR_DEVICE_MEMORY,
            DeviceError(_) => ck::CKR_DEVICE_ERROR,
            NoQuorum(_) => CKR_NO_QUORUM,
            DeadlineExceeded => ck::CKR_FUNCTION_CANCELED,
            FunctionFailed(_) => ck::CKR_FUNCTION_FAILED,
            ArgumentsBad(_) => ck::CKR_ARGUMENTS_BAD,
            LimitReached(_) => ck::CKR_SESSION_COUNT,
            KeyNotWrappable(_) => ck::CKR_KEY_NOT_WRAPPABLE,
            KeyIndigestible(_) => ck::CKR_KEY_INDIGESTIBLE,
        }
    }
}
