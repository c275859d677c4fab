//! The function manifest, `comfaas.toml`, and its validation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::InvalidValue;

/// File name of the manifest at the root of a function folder.
pub const MANIFEST_FILE: &str = "comfaas.toml";

/// Keys a `comfaas.toml` may contain; anything else is a typo we report.
const KNOWN_KEYS: &[&str] = &[
    "name",
    "version",
    "runtime",
    "entry",
    "description",
    "requirements",
    "timeout",
    "procs",
    "placement",
    "mode",
    "workers",
];

/// A function's manifest, as written in `comfaas.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Function name: lowercase letters, digits, `-` and `_`; one subject token.
    pub name: String,
    /// Version label chosen by the author (e.g. `1.2.0`).
    pub version: String,
    /// How the function is installed and run.
    pub runtime: Runtime,
    /// Entry point inside the bundle (a script, source file or executable).
    pub entry: String,
    /// One line for humans.
    #[serde(default)]
    pub description: String,
    /// Packages to install into the function's environment (pip syntax for Python).
    #[serde(default)]
    pub requirements: Vec<String>,
    /// Run time limit (`"30s"`, `"500ms"`); the executor's default when absent.
    #[serde(default)]
    pub timeout: Option<String>,
    /// MPI processes per run (MPI runtimes): a count, or a range the
    /// dispatcher fits to each node's `max_procs`.
    #[serde(default)]
    pub procs: Option<Procs>,
    /// Where to run by default.
    #[serde(default)]
    pub placement: Placement,
    /// How a Python function is called: a process per invocation, or warm
    /// workers calling `handle(data)`.
    #[serde(default)]
    pub mode: Mode,
    /// Warm workers per node in handler mode (default 1).
    #[serde(default)]
    pub workers: Option<u32>,
}

/// How many MPI processes a job takes: `4` (exactly), or `"4-16"` (at
/// least 4, as many up to 16 as the node allows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "ProcsText", into = "ProcsText")]
pub struct Procs {
    /// Fewest processes the job can run with.
    pub min: u32,
    /// Most processes the job can use.
    pub max: u32,
}

impl Procs {
    /// Exactly `n` processes.
    pub fn exactly(n: u32) -> Self {
        Self { min: n, max: n }
    }

    /// The count to run with on a node allowing `max_procs` per job (0: no
    /// limit), or `None` when the node allows fewer than `min`.
    pub fn fit(&self, max_procs: u32) -> Option<u32> {
        let limit = if max_procs == 0 { u32::MAX } else { max_procs };
        let n = self.max.min(limit);
        (n >= self.min).then_some(n)
    }

    /// As [`Procs::fit`], or the fewest processes when even those do not
    /// fit (the node then refuses the job with its own reason).
    pub fn fit_or_fewest(&self, max_procs: u32) -> u32 {
        self.fit(max_procs).unwrap_or(self.min)
    }
}

impl std::fmt::Display for Procs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

impl std::str::FromStr for Procs {
    type Err = InvalidValue;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let number = |t: &str| {
            t.trim().parse::<u32>().map_err(|_| {
                InvalidValue(format!(
                    "`{text}` is not a process count (`4`) or range (`4-16`)"
                ))
            })
        };
        let procs = match text.split_once('-') {
            Some((min, max)) => Self {
                min: number(min)?,
                max: number(max)?,
            },
            None => Self::exactly(number(text)?),
        };
        if procs.min == 0 {
            return Err(InvalidValue(format!("`{text}`: at least 1 process")));
        }
        if procs.min > procs.max {
            return Err(InvalidValue(format!("`{text}`: the range is empty")));
        }
        Ok(procs)
    }
}

/// How [`Procs`] is written: a number or a `min-max` string.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ProcsText {
    Count(u32),
    Range(String),
}

impl TryFrom<ProcsText> for Procs {
    type Error = InvalidValue;

    fn try_from(text: ProcsText) -> Result<Self, Self::Error> {
        match text {
            ProcsText::Count(0) => Err(InvalidValue("must be at least 1".to_owned())),
            ProcsText::Count(n) => Ok(Self::exactly(n)),
            ProcsText::Range(r) => r.parse(),
        }
    }
}

impl From<Procs> for ProcsText {
    fn from(p: Procs) -> Self {
        if p.min == p.max {
            Self::Count(p.min)
        } else {
            Self::Range(p.to_string())
        }
    }
}

/// How a Python function is called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A new process per invocation: input on stdin, output on stdout.
    #[default]
    Script,
    /// Warm worker processes keep the module loaded; each invocation calls
    /// its `handle(data: bytes)`, whose return value (bytes or str) is the output.
    Handler,
}

/// How a function is installed and run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    /// A Python script in its own venv: input on stdin, output on stdout.
    Python,
    /// A Python program under `mpirun`, with `mpi4py` in its venv.
    PythonMpi,
    /// A C program compiled once with `cc`.
    C,
    /// A C program compiled once with `mpicc`, run under `mpirun`.
    CMpi,
    /// A Rust program built once with cargo against the `mpi` crate.
    RustMpi,
    /// A Java class compiled once with `javac`.
    Java,
    /// Any executable shipped in the bundle.
    Exec,
}

impl Runtime {
    /// Every runtime.
    pub const ALL: [Runtime; 7] = [
        Self::Python,
        Self::PythonMpi,
        Self::C,
        Self::CMpi,
        Self::RustMpi,
        Self::Java,
        Self::Exec,
    ];

    /// Whether it runs under `mpirun`.
    pub fn is_mpi(self) -> bool {
        matches!(self, Self::PythonMpi | Self::CMpi | Self::RustMpi)
    }

    /// The name used in manifests and load messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::PythonMpi => "python-mpi",
            Self::C => "c",
            Self::CMpi => "c-mpi",
            Self::RustMpi => "rust-mpi",
            Self::Java => "java",
            Self::Exec => "exec",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an invocation should run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Placement {
    /// The dispatcher decides from live load.
    #[default]
    Auto,
    /// Any edge node.
    Edge,
    /// Any cloud node.
    Cloud,
    /// This node only.
    Node(String),
}

impl std::str::FromStr for Placement {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "" | "auto" => Ok(Self::Auto),
            "edge" => Ok(Self::Edge),
            "cloud" => Ok(Self::Cloud),
            other => match other.strip_prefix("node:") {
                Some(node) if !node.is_empty() => Ok(Self::Node(node.to_owned())),
                _ => Err(InvalidValue(format!(
                    "placement `{other}` is not one of auto, edge, cloud, node:<id>"
                ))),
            },
        }
    }
}

impl TryFrom<String> for Placement {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        s.parse()
    }
}

impl From<Placement> for String {
    fn from(p: Placement) -> String {
        p.to_string()
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Edge => f.write_str("edge"),
            Self::Cloud => f.write_str("cloud"),
            Self::Node(n) => write!(f, "node:{n}"),
        }
    }
}

/// A manifest that cannot be used, naming the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not valid TOML, or a field of the wrong type.
    #[error("comfaas.toml: {0}")]
    Syntax(String),
    /// A field is present but its value is not acceptable.
    #[error("comfaas.toml: field `{field}`: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A key the manifest does not know (usually a typo).
    #[error("comfaas.toml: unknown field `{0}` (known fields: {known})", known = KNOWN_KEYS.join(", "))]
    UnknownField(String),
}

impl Manifest {
    /// Parses and validates the text of a `comfaas.toml`.
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ManifestError::Syntax(e.message().to_owned()))?;
        if let Some(unknown) = table.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
            return Err(ManifestError::UnknownField(unknown.clone()));
        }
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Syntax(e.message().to_owned()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks every field's value.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |field, reason: String| Err(ManifestError::Invalid { field, reason });
        if let Err(InvalidValue(reason)) = validate_function_name(&self.name) {
            return invalid("name", reason);
        }
        if self.version.is_empty()
            || self.version.len() > 64
            || !self
                .version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
        {
            return invalid(
                "version",
                format!(
                    "`{}` must be 1 to 64 letters, digits, `.`, `-`, `_` or `+`",
                    self.version
                ),
            );
        }
        let entry = std::path::Path::new(&self.entry);
        if self.entry.is_empty()
            || entry.is_absolute()
            || entry
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return invalid(
                "entry",
                format!("`{}` must be a relative path inside the bundle", self.entry),
            );
        }
        if let Some(timeout) = &self.timeout {
            if let Err(InvalidValue(reason)) = parse_duration(timeout) {
                return invalid("timeout", reason);
            }
        }
        if self.procs.is_some_and(|p| p.max > 1) && !self.runtime.is_mpi() {
            return invalid(
                "procs",
                format!(
                    "runtime `{}` runs one process; only MPI runtimes take procs",
                    self.runtime
                ),
            );
        }
        if self.mode == Mode::Handler && self.runtime != Runtime::Python {
            return invalid(
                "mode",
                format!(
                    "handler mode is for runtime `python`, not `{}`",
                    self.runtime
                ),
            );
        }
        if let Some(workers) = self.workers {
            if workers == 0 || workers > 64 {
                return invalid("workers", format!("{workers} is not between 1 and 64"));
            }
            if self.mode != Mode::Handler {
                return invalid("workers", "only handler mode has workers".to_owned());
            }
        }
        if let Some(bad) = self
            .requirements
            .iter()
            .find(|r| r.trim().is_empty() || r.trim_start().starts_with('-'))
        {
            return invalid(
                "requirements",
                format!("`{bad}` is not a package requirement (options are not allowed)"),
            );
        }
        Ok(())
    }

    /// The run time limit, if the manifest sets one.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.as_deref().and_then(|t| parse_duration(t).ok())
    }
}

/// Checks that a function name is one subject token and a valid KV key.
pub fn validate_function_name(name: &str) -> Result<(), InvalidValue> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(InvalidValue(format!(
            "`{name}` is not a function name: use 1 to 64 lowercase letters, digits, `-` or `_`, starting with a letter or digit"
        )))
    }
}

/// Parses a duration such as `30s`, `500ms` or `2m`; zero is refused.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidValue> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d.is_zero() => Err(InvalidValue(format!("`{text}` must be longer than zero"))),
        Ok(d) => Ok(d),
        Err(e) => Err(InvalidValue(format!(
            "`{text}` is not a duration like 30s or 500ms: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = r#"
name = "hello"
version = "1.0.0"
runtime = "python"
entry = "main.py"
"#;

    /// Parses `extra` appended to a valid manifest and compares the outcome
    /// with `expect`: `"ok"` or a fragment of the error message.
    fn check(extra: &str, expect: &str) {
        let text = format!("{HELLO}{extra}");
        let outcome = match Manifest::from_toml(&text) {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        assert!(
            outcome.contains(expect),
            "manifest with {extra:?}: expected {expect:?}, got {outcome:?}"
        );
    }

    #[test]
    fn process_ranges_fit_nodes() {
        let range: Procs = "4-16".parse().unwrap();
        assert_eq!(
            (range.fit(4), range.fit(16), range.fit(64)),
            (Some(4), Some(16), Some(16))
        );
        assert_eq!((range.fit(2), range.fit(0)), (None, Some(16)));
        assert_eq!(Procs::exactly(4).fit(16), Some(4));
        assert_eq!(range.to_string(), "4-16");
        let mpi = HELLO
            .replace("\"python\"", "\"c-mpi\"")
            .replace("main.py", "main.c");
        let manifest = Manifest::from_toml(&format!("{mpi}procs = \"4-16\"")).unwrap();
        assert_eq!(manifest.procs, Some(range));
        let bytes = crate::encode(&manifest).unwrap();
        assert_eq!(crate::decode::<Manifest>(&bytes).unwrap(), manifest);
    }

    #[test]
    fn manifests_are_validated_field_by_field() {
        check("", "ok");
        check("timeout = \"30s\"\nplacement = \"edge\"", "ok");
        check("procs = 4", "only MPI runtimes take procs");
        check("placement = \"node:edge-1\"", "ok");
        check("requirements = [\"numpy==1.26\"]", "ok");
        check("mode = \"handler\"\nworkers = 4", "ok");
        check("mode = \"daemon\"", "unknown variant `daemon`");
        check("workers = 2", "only handler mode has workers");
        check("mode = \"handler\"\nworkers = 0", "field `workers`");
        check("timout = \"3s\"", "unknown field `timout`");
        check("timeout = \"soon\"", "field `timeout`");
        check("timeout = \"0s\"", "longer than zero");
        check("procs = 0", "at least 1");
        check("procs = \"16-4\"", "the range is empty");
        check("procs = \"1-4\"", "only MPI runtimes take procs");
        check("procs = 1", "ok");
        check("placement = \"moon\"", "placement `moon`");
        check(
            "requirements = [\"--index-url=http://evil\"]",
            "field `requirements`",
        );
        check("procs = \"four\"", "not a process count");
    }

    #[test]
    fn names_versions_runtimes_and_entries_are_checked() {
        let cases = [
            ("name = \"Hello\"", "field `name`"),
            ("name = \"a.b\"", "field `name`"),
            ("name = \"\"", "field `name`"),
            ("version = \"1 0\"", "field `version`"),
            ("runtime = \"cobol\"", "unknown variant `cobol`"),
            ("entry = \"../x.py\"", "field `entry`"),
            ("entry = \"/bin/sh\"", "field `entry`"),
        ];
        for (line, expect) in cases {
            let key = line.split(' ').next().unwrap_or_default();
            let text: String = HELLO
                .lines()
                .filter(|l| !l.starts_with(key))
                .chain([line])
                .collect::<Vec<_>>()
                .join("\n");
            let got = Manifest::from_toml(&text)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(
                got.contains(expect),
                "{line}: expected {expect:?}, got {got:?}"
            );
        }
    }

    #[test]
    fn missing_required_field_is_named() {
        let err = Manifest::from_toml("name = \"x\"\nversion = \"1\"\nentry = \"m.py\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `runtime`"), "{err}");
    }

    #[test]
    fn placement_round_trips_through_text() {
        for p in ["auto", "edge", "cloud", "node:n1"] {
            let parsed: Placement = p.parse().unwrap();
            assert_eq!(parsed.to_string(), p);
        }
        assert!("node:".parse::<Placement>().is_err());
    }
}
