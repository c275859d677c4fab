//! The one failure type of an invocation, [`InvocationError`], and its
//! codes, carried in `Nats-Service-Error-Code`, HTTP-like so that the
//! `nats` CLI and humans read them at a glance.

use serde::{Deserialize, Serialize};

/// Why an invocation did not produce an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u16", try_from = "u16")]
pub enum ErrorCode {
    /// The request or message was malformed (bad header, undecodable body).
    BadRequest,
    /// No function of that name is deployed, or it is not installed on the node asked.
    NotFound,
    /// The function ran longer than its timeout and was killed.
    FunctionTimeout,
    /// The input or output exceeds a size limit.
    TooLarge,
    /// The input object does not match its digest (corrupt or replaced).
    InputInvalid,
    /// The node's run queue (or every eligible node) is full.
    TooManyRequests,
    /// The function ran and failed (non-zero exit, crash).
    FunctionFailed,
    /// No live node can run the function now (none alive, none ready, forced placement unmet).
    Unavailable,
    /// The chosen node did not answer in time.
    NodeTimeout,
    /// No room to keep the input or output (bucket or cache disk full).
    InsufficientStorage,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 10] = [
        Self::BadRequest,
        Self::NotFound,
        Self::FunctionTimeout,
        Self::TooLarge,
        Self::InputInvalid,
        Self::TooManyRequests,
        Self::FunctionFailed,
        Self::Unavailable,
        Self::NodeTimeout,
        Self::InsufficientStorage,
    ];

    /// The numeric code sent in `Nats-Service-Error-Code`.
    pub fn as_u16(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::NotFound => 404,
            Self::FunctionTimeout => 408,
            Self::TooLarge => 413,
            Self::InputInvalid => 422,
            Self::TooManyRequests => 429,
            Self::FunctionFailed => 500,
            Self::Unavailable => 503,
            Self::NodeTimeout => 504,
            Self::InsufficientStorage => 507,
        }
    }

    /// Whether trying again later may succeed: no node now (503), node
    /// silent (504), every node full (429).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Unavailable | Self::NodeTimeout | Self::TooManyRequests
        )
    }

    /// The code for a number, if it is one of ours.
    pub fn from_u16(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_u16() == code)
    }
}

/// Why an invocation produced no output: a code for machines and a
/// one-line message for people. Every layer that can refuse or fail an
/// invocation (placement, the dispatcher, the executor, a run) speaks this
/// one type; `comfaas_platform::reply` turns it into reply headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvocationError {
    /// The code sent in `Nats-Service-Error-Code`.
    pub code: ErrorCode,
    /// What went wrong, sent in `Nats-Service-Error`.
    pub message: String,
}

impl InvocationError {
    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// 400: the request or message is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// 404: no such function, or no such input object.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// 408: the function ran past its timeout.
    pub fn function_timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::FunctionTimeout, message)
    }

    /// 413: an input or output over a size limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooLarge, message)
    }

    /// 422: the input object does not match its digest or size.
    pub fn input_invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InputInvalid, message)
    }

    /// 429: the node's queue, or every eligible node's, is full.
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooManyRequests, message)
    }

    /// 500: the function ran and failed.
    pub fn function_failed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::FunctionFailed, message)
    }

    /// 503: no node can run it now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// 504: the node did not answer, or could not start, in time.
    pub fn node_timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NodeTimeout, message)
    }

    /// 507: no room to keep the input or output.
    pub fn no_room(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InsufficientStorage, message)
    }
}

/// A value that does not parse (a tier, a placement, a process count, a
/// duration, a function name, an error code), saying what is wrong in
/// words; a request carrying one is answered with
/// [`InvocationError::bad_request`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

impl From<ErrorCode> for u16 {
    fn from(code: ErrorCode) -> u16 {
        code.as_u16()
    }
}

impl TryFrom<u16> for ErrorCode {
    type Error = InvalidValue;
    fn try_from(code: u16) -> Result<Self, InvalidValue> {
        Self::from_u16(code).ok_or_else(|| InvalidValue(format!("unknown error code {code}")))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_constructors_carry_their_codes() {
        let cases = [
            (InvocationError::bad_request("x"), 400),
            (InvocationError::not_found("x"), 404),
            (InvocationError::function_timeout("x"), 408),
            (InvocationError::too_large("x"), 413),
            (InvocationError::input_invalid("x"), 422),
            (InvocationError::busy("x"), 429),
            (InvocationError::function_failed("x"), 500),
            (InvocationError::unavailable("x"), 503),
            (InvocationError::node_timeout("x"), 504),
            (InvocationError::no_room("x"), 507),
        ];
        for (error, code) in cases {
            assert_eq!(error.code.as_u16(), code);
            assert_eq!(error.code.is_transient(), [429, 503, 504].contains(&code));
        }
        let error = InvocationError::not_found("no such thing");
        assert_eq!(error.to_string(), "no such thing");
    }
}
