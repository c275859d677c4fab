//! Layered configuration: built-in defaults, a TOML file (`--config`),
//! `COMFAAS_*` environment variables (nested keys joined by `__`), then
//! command-line flags, each layer overriding the one before.

use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};

/// Configuration that cannot be read or does not fit its type.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct SettingsError(#[from] config::ConfigError);

/// Reads a service's configuration.
///
/// `defaults` and `flags` are serialized into layers; flags left `None`
/// (and skipped when serializing) leave the lower layers in place.
pub fn load<T, D, F>(defaults: &D, file: Option<&Path>, flags: &F) -> Result<T, SettingsError>
where
    T: DeserializeOwned,
    D: Serialize,
    F: Serialize,
{
    let mut builder = config::Config::builder().add_source(config::Config::try_from(defaults)?);
    if let Some(file) = file {
        builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml));
    }
    let settings = builder
        .add_source(
            config::Environment::with_prefix("COMFAAS")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true),
        )
        .add_source(config::Config::try_from(flags)?)
        .build()?;
    Ok(settings.try_deserialize()?)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Conf {
        nats_url: String,
        slots: u32,
        site: String,
    }

    #[derive(Serialize)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        site: Option<String>,
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "slots = 7\nsite = \"file\"\n").unwrap();
        let defaults = Conf {
            nats_url: "nats://default".into(),
            slots: 1,
            site: "default".into(),
        };
        // The environment is process-wide: use a variable no other test reads.
        std::env::set_var("COMFAAS_NATS_URL", "nats://from-env");
        let got: Conf = load(&defaults, Some(&file), &Flags { site: None }).unwrap();
        assert_eq!(
            got,
            Conf {
                nats_url: "nats://from-env".into(),
                slots: 7,
                site: "file".into()
            }
        );
        let got: Conf = load(
            &defaults,
            Some(&file),
            &Flags {
                site: Some("flag".into()),
            },
        )
        .unwrap();
        assert_eq!(got.site, "flag");
        std::env::remove_var("COMFAAS_NATS_URL");
    }

    #[test]
    fn a_broken_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broken.toml");
        std::fs::write(&file, "slots = [").unwrap();
        let defaults = Conf {
            nats_url: String::new(),
            slots: 1,
            site: String::new(),
        };
        let err = load::<Conf, _, _>(&defaults, Some(&file), &Flags { site: None })
            .unwrap_err()
            .to_string();
        assert!(err.contains("broken.toml"), "{err}");
    }
}
