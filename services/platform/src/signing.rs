//! Signed deployments: an operator signs a [`Deployment`] with the Ed25519
//! key of its nkey seed ([`Signer`]); an executor installs a deployment
//! only when it is signed by a key it trusts ([`TrustedOperators`]), or
//! anything at all when it trusts no key (a laptop's open mode). What is
//! signed is [`Deployment::signed_bytes`]: name, version, the whole
//! manifest and the bundle's digest and size, so that whoever can write
//! the registry bucket can neither change a deployment nor forge one.

use std::path::Path;

use comfaas_schemas::{Deployment, DeploymentSignature, SignaturePolicy, SigningError};
use data_encoding::BASE64URL_NOPAD;
use nkeys::KeyPair;

/// A key or seed could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A trusted key is not a public nkey.
    #[error("`{key}` is not a public nkey (U…, 56 characters): {reason}")]
    PublicKey {
        /// The key as given.
        key: String,
        /// Why.
        reason: String,
    },
    /// The signing key file could not be read, or holds no seed line.
    #[error(transparent)]
    File(#[from] crate::NatsError),
    /// The file or text holds no nkey seed (the seed itself is never quoted).
    #[error("{what} holds no nkey seed (a line `SU…`)")]
    NoSeed {
        /// The file, or "the signing key".
        what: String,
    },
    /// Signing failed.
    #[error("cannot sign: {0}")]
    Sign(String),
    /// The signed bytes could not be written.
    #[error(transparent)]
    Encode(#[from] SigningError),
}

/// Why an executor refuses a deployment. Its text is the reason the node
/// reports in its load report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No signature, and this node requires one.
    #[error("deployment refused: it is unsigned and this node installs only deployments signed by a trusted operator")]
    Unsigned,
    /// Signed by a key this node does not trust.
    #[error("deployment refused: signed by unknown key {0}")]
    UnknownSigner(String),
    /// The signature does not match the deployment (it was altered after
    /// signing, or the signature is garbage).
    #[error("deployment refused: its signature by {0} does not match its content")]
    BadSignature(String),
    /// The signed bytes could not be written.
    #[error("deployment refused: {0}")]
    Unreadable(String),
}

/// An operator's signing key, from its nkey seed.
pub struct Signer {
    key: KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the seed.
        f.debug_struct("Signer")
            .field("public_key", &self.key.public_key())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The signer of `seed` (`SU…`, or any nkey seed).
    pub fn from_seed(seed: &str) -> Result<Self, KeyError> {
        let key = KeyPair::from_seed(seed.trim()).map_err(|_| KeyError::NoSeed {
            what: "the signing key".to_owned(),
        })?;
        Ok(Self { key })
    }

    /// The signer whose seed is in `path`: an nkey file (the seed alone on
    /// a line, as `comfaas auth init` writes) or a NATS `.creds` file.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let seed = crate::nats::read_seed(path)?;
        KeyPair::from_seed(&seed)
            .map(|key| Self { key })
            .map_err(|_| KeyError::NoSeed {
                what: path.display().to_string(),
            })
    }

    /// A new random key (`U…`), for tests and `comfaas auth init`.
    pub fn generate() -> Self {
        Self {
            key: KeyPair::new_user(),
        }
    }

    /// The seed, to write into a key file (keep it secret).
    pub fn seed(&self) -> Result<String, KeyError> {
        self.key.seed().map_err(|e| KeyError::Sign(e.to_string()))
    }

    /// The public key executors list in `trusted_operators`.
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// Sets `deployment.signature` to this key's signature of it.
    pub fn sign(&self, deployment: &mut Deployment) -> Result<(), KeyError> {
        let bytes = deployment.signed_bytes()?;
        let signature = self
            .key
            .sign(&bytes)
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        deployment.signature = Some(DeploymentSignature {
            signer: self.public_key(),
            signature: BASE64URL_NOPAD.encode(&signature),
        });
        Ok(())
    }
}

/// The operator keys an executor trusts; none means signatures are off.
#[derive(Debug, Clone, Default)]
pub struct TrustedOperators {
    keys: Vec<String>,
}

impl TrustedOperators {
    /// Trusts `keys` (public nkeys), each checked now so a typo fails at
    /// start rather than refusing every deployment later.
    pub fn new(keys: &[String]) -> Result<Self, KeyError> {
        let mut trusted = Vec::with_capacity(keys.len());
        for key in keys {
            let key = key.trim();
            KeyPair::from_public_key(key).map_err(|e| KeyError::PublicKey {
                key: key.to_owned(),
                reason: e.to_string(),
            })?;
            trusted.push(key.to_owned());
        }
        Ok(Self { keys: trusted })
    }

    /// What this node asks of a deployment's signature.
    pub fn policy(&self) -> SignaturePolicy {
        if self.keys.is_empty() {
            SignaturePolicy::Off
        } else {
            SignaturePolicy::Required
        }
    }

    /// Whether `deployment` may be installed: always when no key is
    /// trusted; else only when a trusted key signed exactly this content.
    pub fn check(&self, deployment: &Deployment) -> Result<(), Refusal> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let Some(signature) = &deployment.signature else {
            return Err(Refusal::Unsigned);
        };
        if !self.keys.contains(&signature.signer) {
            return Err(Refusal::UnknownSigner(signature.signer.clone()));
        }
        verify(deployment, signature)
    }
}

/// Whether `signature` is its signer's signature of `deployment`.
fn verify(deployment: &Deployment, signature: &DeploymentSignature) -> Result<(), Refusal> {
    let bad = || Refusal::BadSignature(signature.signer.clone());
    let key = KeyPair::from_public_key(&signature.signer).map_err(|_| bad())?;
    let raw = BASE64URL_NOPAD
        .decode(signature.signature.as_bytes())
        .map_err(|_| bad())?;
    let bytes = deployment
        .signed_bytes()
        .map_err(|e| Refusal::Unreadable(e.to_string()))?;
    key.verify(&bytes, &raw).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use comfaas_schemas::{BundleRef, Manifest, SCHEMA_VERSION};

    use super::*;

    fn deployment() -> Deployment {
        Deployment {
            schema: SCHEMA_VERSION,
            manifest: Manifest::from_toml(
                "name = \"f\"\nversion = \"1\"\nruntime = \"python\"\nentry = \"main.py\"",
            )
            .unwrap(),
            bundle: BundleRef {
                object: "sha256-aa".into(),
                digest: format!("sha256:{}", "a".repeat(64)),
                size: 3,
            },
            deployed_unix_ms: 1,
            signature: None,
        }
    }

    /// One line per case: what was done to a deployment signed by the
    /// operator, and what a node trusting the operator says.
    #[test]
    fn only_a_trusted_signature_of_this_very_content_passes() {
        let operator = Signer::generate();
        let stranger = Signer::generate();
        let trusted = TrustedOperators::new(&[operator.public_key()]).unwrap();
        let signed = |by: &Signer| {
            let mut d = deployment();
            by.sign(&mut d).unwrap();
            d
        };
        let check = |d: Deployment| trusted.check(&d);
        let op = operator.public_key();

        assert_eq!(check(signed(&operator)), Ok(()));
        let mut later = signed(&operator);
        later.deployed_unix_ms = 99; // a rollback re-puts it
        assert_eq!(check(later), Ok(()));
        assert_eq!(check(deployment()), Err(Refusal::Unsigned));
        assert_eq!(
            check(signed(&stranger)),
            Err(Refusal::UnknownSigner(stranger.public_key()))
        );
        let mut altered = signed(&operator);
        altered.manifest.entry = "evil.py".into();
        assert_eq!(check(altered), Err(Refusal::BadSignature(op.clone())));
        let mut other_bundle = signed(&operator);
        other_bundle.bundle.digest = format!("sha256:{}", "b".repeat(64));
        assert_eq!(check(other_bundle), Err(Refusal::BadSignature(op.clone())));
        let mut garbage = signed(&operator);
        garbage.signature.as_mut().unwrap().signature = "!!".into();
        assert_eq!(check(garbage), Err(Refusal::BadSignature(op.clone())));
        // A stranger's signature relabelled as the operator's.
        let mut relabelled = signed(&stranger);
        relabelled.signature.as_mut().unwrap().signer = op.clone();
        assert_eq!(check(relabelled), Err(Refusal::BadSignature(op)));

        // Nobody trusted: signatures are off, anything passes.
        let open = TrustedOperators::default();
        assert_eq!(open.policy(), SignaturePolicy::Off);
        assert_eq!(trusted.policy(), SignaturePolicy::Required);
        assert_eq!(open.check(&deployment()), Ok(()));
    }

    #[test]
    fn keys_are_checked_and_seeds_read_from_files_without_being_quoted() {
        let error = TrustedOperators::new(&["UNOTAKEY".into()]).unwrap_err();
        assert!(error
            .to_string()
            .contains("`UNOTAKEY` is not a public nkey"));
        let operator = Signer::generate();
        let seed = operator.seed().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let nk = dir.path().join("operator.nk");
        std::fs::write(&nk, format!("{seed}\n")).unwrap();
        assert_eq!(
            Signer::from_file(&nk).unwrap().public_key(),
            operator.public_key()
        );
        let creds = dir.path().join("operator.creds");
        std::fs::write(
            &creds,
            format!("-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"),
        )
        .unwrap();
        assert_eq!(
            Signer::from_file(&creds).unwrap().public_key(),
            operator.public_key()
        );
        let bad = dir.path().join("bad.nk");
        std::fs::write(&bad, "SUnotaseed\n").unwrap();
        let error = Signer::from_file(&bad).unwrap_err().to_string();
        assert!(
            error.contains("holds no nkey seed") && !error.contains("SUnot"),
            "{error}"
        );
        assert!(!format!("{operator:?}").contains(&seed));
    }
}
