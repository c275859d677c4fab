//! Error codes carried in `Nats-Service-Error-Code`, HTTP-like so that the
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

    /// The code for a number, if it is one of ours.
    pub fn from_u16(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_u16() == code)
    }
}

impl From<ErrorCode> for u16 {
    fn from(code: ErrorCode) -> u16 {
        code.as_u16()
    }
}

impl TryFrom<u16> for ErrorCode {
    type Error = String;
    fn try_from(code: u16) -> Result<Self, String> {
        Self::from_u16(code).ok_or_else(|| format!("unknown error code {code}"))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.as_u16())
    }
}
