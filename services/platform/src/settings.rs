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
/// (and skipped when serializing) leave the lower layers in place. Keys of
/// the file that the configuration does not have are warned about (a typo
/// such as `slotz = 4` would otherwise be ignored in silence).
pub fn load<T, D, F>(defaults: &D, file: Option<&Path>, flags: &F) -> Result<T, SettingsError>
where
    T: DeserializeOwned + Serialize,
    D: Serialize,
    F: Serialize,
{
    let config: T = load_layers(defaults, file, flags)?;
    if let Some(file) = file {
        for key in unknown_keys(file, defaults, &config) {
            tracing::warn!(
                "configuration {}: unknown key `{key}` is ignored",
                file.display()
            );
        }
    }
    Ok(config)
}

/// The keys of the TOML `file` (dotted paths, e.g. `limits.memroy`) that
/// neither `defaults` nor the configuration read from it has: serializing
/// them lists every key the configuration knows, those left out when unset
/// (an `Option` skipped when `None`) included as soon as the file sets them.
/// A table that is empty in both (a map of names) takes any key.
pub fn unknown_keys<D: Serialize, T: Serialize>(
    file: &Path,
    defaults: &D,
    config: &T,
) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let known: Vec<serde_json::Value> =
        [serde_json::to_value(defaults), serde_json::to_value(config)]
            .into_iter()
            .flatten()
            .collect();
    let known: Vec<&serde_json::Value> = known.iter().collect();
    let mut unknown = Vec::new();
    collect_unknown(&table, &known, "", &mut unknown);
    unknown
}

/// Adds to `unknown` the keys of `table` (under `prefix`) found in none of
/// the `known` objects, descending into tables every known object agrees
/// are tables with keys of their own.
fn collect_unknown(
    table: &toml::Table,
    known: &[&serde_json::Value],
    prefix: &str,
    unknown: &mut Vec<String>,
) {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        // Keys are matched without regard to case, as the config crate reads them.
        let found: Vec<&serde_json::Value> = known
            .iter()
            .filter_map(|k| {
                k.as_object()?
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(key))
                    .map(|(_, v)| v)
            })
            .collect();
        if found.is_empty() {
            unknown.push(path);
            continue;
        }
        let open = found
            .iter()
            .any(|v| v.as_object().is_none_or(|o| o.is_empty()));
        if let (toml::Value::Table(inner), false) = (value, open) {
            collect_unknown(inner, &found, &format!("{path}."), unknown);
        }
    }
}

/// The layers, merged and read into `T`.
fn load_layers<T, D, F>(defaults: &D, file: Option<&Path>, flags: &F) -> Result<T, SettingsError>
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

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Nested {
        slots: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        cpu_time: Option<String>,
        labels: std::collections::BTreeMap<String, String>,
        sandbox: Sandbox,
        #[serde(flatten)]
        nats: Nats,
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Sandbox {
        isolation: String,
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Nats {
        nats_url: String,
        creds_file: Option<String>,
    }

    /// The unknown keys of a file holding `text`, for [`Nested`].
    fn unknown_in(text: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, text).unwrap();
        let config: Nested = load(&Nested::default(), Some(&file), &Flags { site: None }).unwrap();
        unknown_keys(&file, &Nested::default(), &config)
    }

    #[test]
    fn unknown_keys_are_found_at_any_depth() {
        let ok: [&str; 0] = [];
        assert_eq!(unknown_in("slots = 2\nnats_url = \"nats://x\""), ok);
        // Unset by default (skipped or null), set by the file: known.
        assert_eq!(
            unknown_in("cpu_time = \"2s\"\ncreds_file = \"a.creds\""),
            ok
        );
        // A map takes any name; keys match without regard to case.
        assert_eq!(
            unknown_in("[labels]\nanything = \"x\"\n[sandbox]\nIsolation = \"none\""),
            ok
        );
        assert_eq!(
            unknown_in(
                "slotz = 2\nnats_uri = \"x\"\n[sandbox]\nisolaton = \"none\"\n[sandbx]\na = 1"
            ),
            ["nats_uri", "sandbox.isolaton", "sandbx", "slotz"]
        );
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
