//! The contract of comfaas: every message that crosses NATS, the names of
//! every subject, header, stream and bucket, the function manifest and the
//! error codes.
//!
//! Architecture invariant: this crate knows nothing of NATS, processes or
//! tokio. It is plain data plus its encoding, so firmware authors and
//! third-party executors can read it as a specification.
//!
//! Internal messages are MessagePack maps with field names
//! ([`encode`]/[`decode`]): a newer sender may add fields and an older
//! receiver ignores them; every added field is `#[serde(default)]`.

mod cached;
mod codec;
mod error;
mod limits;
mod manifest;
mod messages;
pub mod names;

pub use cached::{
    digest_hash, CachedInputs, DigestFilter, FILTERED_INPUTS, FILTER_FALSE_POSITIVES, LISTED_INPUTS,
};
pub use codec::{decode, encode, CodecError};
pub use error::{ErrorCode, InvalidValue, InvocationError};
pub use limits::{job_procs, RunLimits};
pub use manifest::{
    check_requirement, parse_duration, validate_env_name, validate_function_name, ByteSize,
    Manifest, ManifestError, Mode, Placement, Position, Procs, ResourceLimits, Runtime,
    MANIFEST_FILE,
};
pub use messages::{
    now_unix_ms, BundleRef, CandidateEstimate, Deployment, DeploymentSignature, DispatchMetrics,
    ErrorCount, EstimateParts, FunctionState, InputObject, InstallState, InstallStep, InstallTimes,
    Invocation, NodeLoad, NodeMetrics, NoticeBatch, PlacementRecord, SandboxReport,
    SignaturePolicy, SigningError, Tier, WorkNotice, DEPLOYMENT_SIGNING_DOMAIN, SCHEMA_VERSION,
};
pub use names::validate_secret_name;
