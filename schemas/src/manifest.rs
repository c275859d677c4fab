//! The function manifest, `comfaas.toml`, and its validation.

use std::collections::BTreeMap;
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
    "env",
    "network",
    "secrets",
    "limits",
];

/// Keys of the `[limits]` table.
const LIMIT_KEYS: &[&str] = &["memory", "procs", "open_files", "file_size", "cpu_time"];

/// Environment variables a manifest may not set: the platform sets them
/// for every run (`COMFAAS_*` too).
const RESERVED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "PWD",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
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
    /// How the function is called: a process per invocation, or warm
    /// workers calling its handler (runtimes python, c, java and exec).
    #[serde(default)]
    pub mode: Mode,
    /// Warm workers per node in handler mode (default 1).
    #[serde(default)]
    pub workers: Option<u32>,
    /// Environment variables of every run, besides those the platform sets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Whether runs may use the network; by default a run has a network
    /// namespace of its own with nothing in it but loopback.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network: bool,
    /// Names of secrets each run gets as the file `secrets/<NAME>` in its
    /// directory (never in its environment or arguments).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Resource limits of each run; the executor's defaults fill the rest.
    #[serde(default, skip_serializing_if = "ResourceLimits::is_empty")]
    pub limits: ResourceLimits,
}

/// The resource limits of a run (`[limits]` in a manifest, `[limits]` in
/// the executor's configuration for the defaults); every field optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResourceLimits {
    /// Memory of the whole run (every process), e.g. `"256MB"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// Processes and threads of the whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub procs: Option<u32>,
    /// Open files per process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u32>,
    /// Largest file a process may write, e.g. `"64MB"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<ByteSize>,
    /// CPU time per process, e.g. `"30s"` (a warm worker is not bound by
    /// it: its calls are bound by their timeout).
    #[serde(
        default,
        with = "duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_time: Option<Duration>,
}

impl ResourceLimits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// These limits, each one absent taken from `defaults`.
    pub fn or(self, defaults: Self) -> Self {
        Self {
            memory: self.memory.or(defaults.memory),
            procs: self.procs.or(defaults.procs),
            open_files: self.open_files.or(defaults.open_files),
            file_size: self.file_size.or(defaults.file_size),
            cpu_time: self.cpu_time.or(defaults.cpu_time),
        }
    }

    /// Checks that every limit set leaves a run room to start.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let at_least = |what: &str, value: u64, min: u64, shown: String| {
            if value < min {
                Err(InvalidValue(format!(
                    "{what} {shown} is below the least of {min}"
                )))
            } else {
                Ok(())
            }
        };
        if let Some(memory) = self.memory {
            at_least("memory", memory.0, 4 << 20, memory.to_string())?;
        }
        if let Some(procs) = self.procs {
            at_least("procs", procs.into(), 1, procs.to_string())?;
        }
        if let Some(files) = self.open_files {
            at_least("open_files", files.into(), 8, files.to_string())?;
        }
        if let Some(size) = self.file_size {
            at_least("file_size", size.0, 1, size.to_string())?;
        }
        Ok(())
    }
}

/// A number of bytes, written `"256MB"`, `"1GiB"`, `"512k"` or a plain
/// integer. Units are binary whatever their spelling (1 MB = 1 MiB =
/// 2^20 bytes), as in most container tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "SizeText", into = "String")]
pub struct ByteSize(pub u64);

/// How a [`ByteSize`] may be written.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeText {
    Count(u64),
    Text(String),
}

impl TryFrom<SizeText> for ByteSize {
    type Error = InvalidValue;
    fn try_from(text: SizeText) -> Result<Self, InvalidValue> {
        match text {
            SizeText::Count(n) => Ok(Self(n)),
            SizeText::Text(t) => t.parse(),
        }
    }
}

impl From<ByteSize> for String {
    fn from(size: ByteSize) -> String {
        size.to_string()
    }
}

impl std::str::FromStr for ByteSize {
    type Err = InvalidValue;
    fn from_str(text: &str) -> Result<Self, InvalidValue> {
        let bad = || InvalidValue(format!("`{text}` is not a size like 256MB, 1GiB or 65536"));
        let trimmed = text.trim();
        let digits = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let number: u64 = trimmed[..digits].parse().map_err(|_| bad())?;
        let shift = match trimmed[digits..].trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => return Err(bad()),
        };
        number
            .checked_mul(1 << shift)
            .map(Self)
            .ok_or_else(|| InvalidValue(format!("`{text}` is too large")))
    }
}

impl std::fmt::Display for ByteSize {
    /// The largest binary unit that divides it exactly: `256 MiB`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if self.0 != 0 && self.0.is_multiple_of(1u64 << shift) {
                return write!(f, "{} {unit}", self.0 >> shift);
            }
        }
        write!(f, "{} bytes", self.0)
    }
}

/// `Option<Duration>` as text such as `"30s"`, for limits.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => super::parse_duration(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
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

/// How a function is called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A new process per invocation: input on stdin, output on stdout.
    #[default]
    Script,
    /// Warm worker processes keep the function loaded; each invocation is
    /// one framed call to its handler (Python's `handle(data: bytes)`, or a
    /// C, Rust or Java handler through the runtime's helper), whose return
    /// value is the output.
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

/// Where in a `comfaas.toml` a problem is: 1-based line and column
/// (columns count characters, as editors do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` of `text` (clamped to its end).
    pub fn of_offset(text: &str, offset: usize) -> Self {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Self {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A manifest that cannot be used, naming the field, the reason and, when
/// it was read from text, the line and column: `comfaas.toml:3:1: what`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not valid TOML, or a field of the wrong type.
    #[error("{}: {message}", located(*at))]
    Syntax {
        /// What is wrong.
        message: String,
        /// Where, when known.
        at: Option<Position>,
    },
    /// A field is present but its value is not acceptable.
    #[error("{}: field `{field}`: {reason}", located(*at))]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// Why it is refused.
        reason: String,
        /// Where its key is, when known.
        at: Option<Position>,
    },
    /// A key the manifest does not know (usually a typo).
    #[error("{}: unknown field `{name}` (known fields: {known})", located(*at), known = KNOWN_KEYS.join(", "))]
    UnknownField {
        /// The key as written.
        name: String,
        /// Where it is, when known.
        at: Option<Position>,
    },
}

/// `comfaas.toml:LINE:COL`, or the bare file name when the place is unknown.
fn located(at: Option<Position>) -> String {
    match at {
        Some(at) => format!("{MANIFEST_FILE}:{at}"),
        None => MANIFEST_FILE.to_owned(),
    }
}

impl ManifestError {
    /// Where the problem is, when known.
    pub fn position(&self) -> Option<Position> {
        match self {
            Self::Syntax { at, .. } | Self::Invalid { at, .. } | Self::UnknownField { at, .. } => {
                *at
            }
        }
    }

    /// The message with the manifest's real path in front of the line and
    /// column instead of its bare name, as compilers print it:
    /// `functions/hello/comfaas.toml:3:1: field `name`: ...`.
    pub fn in_file(&self, path: &std::path::Path) -> String {
        let text = self.to_string();
        let rest = text.strip_prefix(MANIFEST_FILE).unwrap_or(&text);
        format!("{}{rest}", path.display())
    }

    fn at(self, position: Option<Position>) -> Self {
        match self {
            Self::Syntax { message, .. } => Self::Syntax {
                message,
                at: position,
            },
            Self::Invalid { field, reason, .. } => Self::Invalid {
                field,
                reason,
                at: position,
            },
            Self::UnknownField { name, .. } => Self::UnknownField { name, at: position },
        }
    }
}

/// The position of the key at `path` (`["limits", "memory"]`) in a parsed
/// manifest, for errors about a value that parsed but is not acceptable.
fn key_position(text: &str, doc: &toml_edit::ImDocument<&str>, path: &[&str]) -> Option<Position> {
    let (first, rest) = path.split_first()?;
    let (mut key, mut item) = doc.as_table().get_key_value(first)?;
    for part in rest {
        (key, item) = item.as_table_like()?.get_key_value(part)?;
    }
    let _ = item;
    key.span().map(|span| Position::of_offset(text, span.start))
}

/// A syntax or type error of the toml crate, with its place.
fn syntax(text: &str, e: &toml::de::Error) -> ManifestError {
    ManifestError::Syntax {
        message: e.message().trim().to_owned(),
        // A missing field "is" the whole document: no place to show.
        at: e
            .span()
            .filter(|span| !(span.start == 0 && span.end >= text.trim_end().len()))
            .map(|span| Position::of_offset(text, span.start)),
    }
}

impl Manifest {
    /// Parses and validates the text of a `comfaas.toml`; every error says
    /// the line and column it is about (of the key, for a value that
    /// parses but is refused).
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        let table: toml::Table = text.parse().map_err(|e| syntax(text, &e))?;
        // The same text, parsed again keeping where each key is.
        let doc = toml_edit::ImDocument::parse(text).ok();
        let at = |path: &[&str]| doc.as_ref().and_then(|d| key_position(text, d, path));
        if let Some(unknown) = table.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
            return Err(ManifestError::UnknownField {
                name: unknown.clone(),
                at: at(&[unknown]),
            });
        }
        if let Some(toml::Value::Table(limits)) = table.get("limits") {
            if let Some(unknown) = limits.keys().find(|k| !LIMIT_KEYS.contains(&k.as_str())) {
                return Err(ManifestError::Invalid {
                    field: "limits",
                    reason: format!(
                        "unknown limit `{unknown}` (known limits: {})",
                        LIMIT_KEYS.join(", ")
                    ),
                    at: at(&["limits", unknown]),
                });
            }
        }
        let manifest: Manifest = toml::from_str(text).map_err(|e| syntax(text, &e))?;
        manifest.validate().map_err(|e| {
            let position = match &e {
                ManifestError::Invalid { field, .. } => at(&[field]),
                other => other.position(),
            };
            e.at(position)
        })?;
        Ok(manifest)
    }

    /// Checks every field's value.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |field, reason: String| {
            Err(ManifestError::Invalid {
                field,
                reason,
                at: None,
            })
        };
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
        if self.mode == Mode::Handler && self.runtime.is_mpi() {
            // An MPI job is many ranks started together by `mpirun`: there
            // is no one process to keep warm.
            return invalid(
                "mode",
                format!(
                    "handler mode is not for MPI runtime `{}`: an MPI job is one `mpirun` per \
                     invocation (handler mode is for python, c, java and exec)",
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
        for requirement in &self.requirements {
            if let Err(InvalidValue(reason)) = check_requirement(requirement) {
                return invalid("requirements", reason);
            }
        }
        for (name, value) in &self.env {
            if let Err(InvalidValue(reason)) = validate_env_name(name) {
                return invalid("env", reason);
            }
            if value.contains('\0') {
                return invalid("env", format!("the value of `{name}` holds a NUL byte"));
            }
        }
        for name in &self.secrets {
            if let Err(InvalidValue(reason)) = crate::names::validate_secret_name(name) {
                return invalid("secrets", reason);
            }
        }
        if let Err(InvalidValue(reason)) = self.limits.validate() {
            return invalid("limits", reason);
        }
        Ok(())
    }

    /// The run time limit, if the manifest sets one.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.as_deref().and_then(|t| parse_duration(t).ok())
    }
}

/// Checks one line of Python requirements (a manifest entry, or a line of
/// a bundle's `requirements.txt`): a package name with versions, extras
/// and markers only. Options (`--index-url`, `-i`, `-f`, `-r`, `-e`,
/// `--trusted-host`, ...), URLs and paths are refused, so a function
/// installs only from the sources the executor is configured with.
pub fn check_requirement(line: &str) -> Result<(), InvalidValue> {
    let text = line.trim();
    let refuse = |why: &str| {
        Err(InvalidValue(format!(
            "`{text}` is not a package requirement ({why})"
        )))
    };
    if text.is_empty() {
        return refuse("it is empty");
    }
    if text.split_whitespace().any(|token| token.starts_with('-')) {
        return refuse("options are not allowed");
    }
    if text.contains("://") || text.contains('@') {
        return refuse("URLs and direct references are not allowed");
    }
    if text.starts_with(['.', '/', '~']) || text.contains('\\') {
        return refuse("paths are not allowed");
    }
    let first = text.chars().next().unwrap_or(' ');
    if !first.is_ascii_alphanumeric() {
        return refuse("it must start with a package name");
    }
    Ok(())
}

/// Checks an environment variable name a manifest sets: letters, digits
/// and `_`, not starting with a digit, and none the platform sets itself.
pub fn validate_env_name(name: &str) -> Result<(), InvalidValue> {
    let shaped = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !shaped {
        return Err(InvalidValue(format!(
            "`{name}` is not an environment variable name (letters, digits and `_`)"
        )));
    }
    if RESERVED_ENV.contains(&name) || name.starts_with("COMFAAS_") {
        return Err(InvalidValue(format!(
            "`{name}` is set by the platform and cannot be overridden"
        )));
    }
    Ok(())
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
        for (runtime, expect) in [
            ("c", "ok"),
            ("java", "ok"),
            ("exec", "ok"),
            ("c-mpi", "not for MPI runtime `c-mpi`"),
            ("python-mpi", "one `mpirun` per invocation"),
            ("rust-mpi", "not for MPI runtime `rust-mpi`"),
        ] {
            let text = HELLO.replace("runtime = \"python\"", &format!("runtime = \"{runtime}\""));
            let outcome = match Manifest::from_toml(&format!("{text}mode = \"handler\"")) {
                Ok(_) => "ok".to_owned(),
                Err(e) => e.to_string(),
            };
            assert!(outcome.contains(expect), "{runtime}: {outcome}");
        }
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
        check("requirements = [\"pkg @ https://evil/pkg.whl\"]", "URLs");
        check("requirements = [\"./local-pkg\"]", "paths are not allowed");
        check(
            "requirements = [\"numpy -i http://evil\"]",
            "options are not allowed",
        );
        check(
            "requirements = [\"numpy>=1.26; python_version >= '3.9'\"]",
            "ok",
        );
    }

    #[test]
    fn env_network_and_secrets_are_checked() {
        check("network = true", "ok");
        check("network = \"yes\"", "invalid type");
        check("env = { LOG_LEVEL = \"debug\", _X1 = \"\" }", "ok");
        check("env = { PATH = \"/tmp\" }", "cannot be overridden");
        check("env = { HOME = \"/\" }", "cannot be overridden");
        check("env = { COMFAAS_NODE = \"x\" }", "cannot be overridden");
        check("env = { LD_PRELOAD = \"/x.so\" }", "cannot be overridden");
        check(
            "env = { \"A-B\" = \"1\" }",
            "not an environment variable name",
        );
        check(
            "env = { \"1A\" = \"1\" }",
            "not an environment variable name",
        );
        check("env = { A = \"\\u0000\" }", "NUL byte");
        check("env = { A = 1 }", "invalid type");
        check("secrets = [\"DB_PASSWORD\", \"_api_key2\"]", "ok");
        check("secrets = [\"api.key\"]", "field `secrets`");
        check("secrets = [\"../etc\"]", "field `secrets`");
        check("secrets = [\".hidden\"]", "field `secrets`");
        check("secrets = [\"\"]", "field `secrets`");
    }

    #[test]
    fn limits_are_typed_and_checked() {
        check("[limits]\nmemory = \"256MB\"\nprocs = 64\nopen_files = 256\nfile_size = \"64MB\"\ncpu_time = \"30s\"", "ok");
        check("[limits]\nmemory = 268435456", "ok");
        check("[limits]\nmemory = \"lots\"", "not a size");
        check("[limits]\nmemory = \"1MB\"", "below the least");
        check("[limits]\nprocs = 0", "below the least");
        check("[limits]\nopen_files = 2", "below the least");
        check("[limits]\ncpu_time = \"soon\"", "not a duration");
        check("[limits]\ncpu_time = \"0s\"", "longer than zero");
        check("[limits]\nmemroy = \"1GB\"", "unknown limit `memroy`");
        check("limits = 3", "invalid type");
        let text = format!("{HELLO}[limits]\nmemory = \"256MB\"\ncpu_time = \"2s\"\n");
        let manifest = Manifest::from_toml(&text).unwrap();
        let limits = manifest.limits;
        assert_eq!(limits.memory, Some(ByteSize(256 << 20)));
        assert_eq!(limits.memory.unwrap().to_string(), "256 MiB");
        assert_eq!(limits.cpu_time, Some(Duration::from_secs(2)));
        let defaults = ResourceLimits {
            memory: Some(ByteSize(1 << 30)),
            procs: Some(128),
            ..ResourceLimits::default()
        };
        let merged = limits.or(defaults);
        assert_eq!(
            merged.memory,
            Some(ByteSize(256 << 20)),
            "the manifest wins"
        );
        assert_eq!(merged.procs, Some(128), "defaults fill the rest");
        let bytes = crate::encode(&manifest).unwrap();
        assert_eq!(crate::decode::<Manifest>(&bytes).unwrap(), manifest);
    }

    #[test]
    fn sizes_parse_in_binary_units() {
        for (text, bytes) in [
            ("65536", 65536),
            ("512k", 512 << 10),
            ("256MB", 256 << 20),
            ("256 MiB", 256 << 20),
            ("1GiB", 1 << 30),
            ("2g", 2 << 30),
        ] {
            assert_eq!(text.parse::<ByteSize>().unwrap(), ByteSize(bytes), "{text}");
        }
        for bad in ["", "MB", "1.5GB", "-1", "12 parsecs", "99999999999T"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
        assert_eq!(ByteSize(1536).to_string(), "1536 bytes");
        assert_eq!(ByteSize(3 << 30).to_string(), "3 GiB");
    }

    #[test]
    fn requirement_lines_refuse_options_urls_and_paths() {
        for ok in [
            "numpy",
            "numpy==1.26.4",
            "requests[socks]>=2,<3",
            "Foo_bar.baz~=1.0",
        ] {
            assert!(check_requirement(ok).is_ok(), "{ok}");
        }
        for bad in [
            "--index-url http://evil/simple",
            "--extra-index-url=http://evil",
            "-i http://evil",
            "-f http://evil/wheels",
            "--trusted-host evil",
            "-r other.txt",
            "-c constraints.txt",
            "-e git+https://evil/x",
            "https://evil/x.whl",
            "git+https://evil/x",
            "x @ file:///etc/passwd",
            "/etc/passwd",
            "../outside",
            "",
        ] {
            assert!(check_requirement(bad).is_err(), "{bad}");
        }
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

    /// Every error says where: `text` is a whole manifest, `expect` the
    /// error's start (`comfaas.toml:LINE:COL: ...`).
    fn check_at(text: &str, expect: &str) {
        let got = match Manifest::from_toml(text) {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        assert!(
            got.starts_with(expect),
            "manifest {text:?}: expected {expect:?}, got {got:?}"
        );
    }

    #[test]
    fn errors_give_line_and_column() {
        // Syntax: where the parser stopped.
        check_at("name = \"x\"\nversion = [", "comfaas.toml:2:12: ");
        check_at("name = \"x\"\nname = \"y\"", "comfaas.toml:2:1: ");
        // A value of the wrong type or variant: the value.
        check_at(
            &HELLO.replace("\"python\"", "\"cobol\""),
            "comfaas.toml:4:11: unknown variant `cobol`",
        );
        check_at(
            &format!("{HELLO}network = \"yes\""),
            "comfaas.toml:6:11: invalid type",
        );
        // An unknown key: the key, also inside a table.
        check_at(
            &format!("{HELLO}  timout = \"3s\""),
            "comfaas.toml:6:3: unknown field `timout`",
        );
        check_at(
            &format!("{HELLO}[limits]\nmemory = \"1GB\"\nmemroy = \"1GB\""),
            "comfaas.toml:8:1: field `limits`: unknown limit `memroy`",
        );
        // A value that parses but is refused: its key.
        check_at(
            &HELLO.replace("\"1.0.0\"", "\"1 0\""),
            "comfaas.toml:3:1: field `version`",
        );
        check_at(
            &format!("{HELLO}workers = 2"),
            "comfaas.toml:6:1: field `workers`",
        );
        check_at(
            &format!("{HELLO}[limits]\nmemory = \"1MB\""),
            "comfaas.toml:6:2: field `limits`: memory 1 MiB is below",
        );
        check_at(
            "version = \"1\"\nruntime = \"python\"\nentry = \"m.py\"",
            "comfaas.toml: missing field `name`",
        );
        check_at(HELLO, "ok");
    }

    #[test]
    fn a_path_replaces_the_bare_file_name() {
        let err = Manifest::from_toml(&HELLO.replace("hello", "Hello")).unwrap_err();
        assert_eq!(err.position(), Some(Position { line: 2, column: 1 }));
        let shown = err.in_file(std::path::Path::new("fns/hello/comfaas.toml"));
        assert!(
            shown.starts_with("fns/hello/comfaas.toml:2:1: field `name`"),
            "{shown}"
        );
        // Validated without its text (a stored deployment): no place.
        let mut manifest = Manifest::from_toml(HELLO).unwrap();
        manifest.workers = Some(3);
        let err = manifest.validate().unwrap_err();
        assert_eq!(err.position(), None);
        assert!(err.to_string().starts_with("comfaas.toml: field `workers`"));
    }

    #[test]
    fn offsets_become_lines_and_columns() {
        let text = "ab\nçd\n";
        let at = |offset| Position::of_offset(text, offset).to_string();
        assert_eq!(at(0), "1:1");
        assert_eq!(at(1), "1:2");
        assert_eq!(at(3), "2:1");
        assert_eq!(at(5), "2:2", "columns count characters, not bytes");
        assert_eq!(at(4), "2:1", "inside a character: its start");
        assert_eq!(at(99), "3:1");
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
