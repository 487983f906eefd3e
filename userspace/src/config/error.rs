//! Errors from reading `daemon.json`: each names the file, the key and what would be accepted.
use std::fmt;

use super::parse::{MAX_BUSY_POLL_BUDGET, MAX_COALESCE_US, MAX_CORE, TYPICAL_BUSY_POLL_BUDGET};

/// What is wrong with one key (or with the file as a whole).
#[derive(Debug)]
pub enum ErrorKind {
    /// The file could not be read.
    Io(std::io::Error),
    /// The text is not JSON.
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// The top level is not a JSON object.
    NotAnObject { found: String },
    /// A key xmacvlan does not know, with the closest known one if there is a likely typo.
    UnknownKey {
        suggestion: Option<&'static str>,
        allowed: &'static [&'static str],
    },
    /// The value has the wrong JSON type.
    WrongType {
        expected: &'static str,
        found: String,
    },
    /// The value is not one of a fixed list.
    NotOneOf {
        value: String,
        allowed: &'static [&'static str],
    },
    /// `max-size` is not a size.
    BadSize { value: String, reason: ValueError },
    /// `metrics-addr` names an address other than loopback.
    NonLoopback { value: String },
    /// Any other bad value, with the reason.
    Invalid { value: String, reason: ValueError },
}

/// Why a value was refused, whether a key's or a flag's: the parse helpers' errors (the
/// [`ConfigError`] around one names the key and quotes the value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("it does not start with a number")]
    SizeNotANumber,
    #[error("unknown unit \"{0}\"")]
    SizeUnit(String),
    #[error("must be at least 1 byte")]
    SizeTooSmall,
    #[error("must be a whole number of bytes above 0")]
    SizeNotWhole,
    #[error("not a duration: use \"1s\", \"500ms\" or \"2m\"")]
    NotADuration,
    #[error("unknown unit \"{0}\": use ms, s or m (\"500ms\", \"1s\", \"2m\")")]
    DurationUnit(String),
    #[error("must be longer than zero")]
    NotLongerThanZero,
    #[error("too long to be a duration")]
    DurationTooLong,
    #[error("must be a positive number of seconds")]
    NotPositiveSeconds,
    #[error("must be between 100ms and 1h")]
    IntervalRange,
    #[error("must be a whole number of microseconds from 0 (off) to {MAX_COALESCE_US}")]
    Coalesce,
    #[error(
        "must be a whole number of frames from 0 (off) to {MAX_BUSY_POLL_BUDGET} \
         ({TYPICAL_BUSY_POLL_BUDGET} is typical)"
    )]
    BusyPollBudget,
    #[error(
        "must be a whole number from 0 to 4294967295 (lower runs first; xdp-filter runs at 10)"
    )]
    Priority,
    #[error(
        "\"{0}\" is not a CPU id or range; write ids from 0 to {MAX_CORE} like \"0-1\" or \"1,3-4\""
    )]
    NotACpu(String),
    #[error("CPU ids are whole numbers from 0 to {MAX_CORE}")]
    CpuId,
    #[error("range \"{0}\" runs backwards")]
    Backwards(String),
    #[error("lists no CPU; leave the key out to use the default cores")]
    NoCpu,
    #[error("CPU {0} is listed twice")]
    CpuTwice(usize),
    #[error("must be an absolute path")]
    NotAbsolute,
    #[error(
        "must be an absolute path ending in .sock (Docker looks for \
         /run/docker/plugins/NAME.sock), or \"\" to turn the plugin off"
    )]
    DockerPluginPath,
    #[error("must be a whole number of files from 1 to 1000")]
    MaxFile,
    #[error("use 1-48 characters from [A-Za-z0-9._-]")]
    Tag,
    #[error("write options as KEY=VALUE, e.g. --log-opt max-size=10m")]
    LogOpt,
    #[error(transparent)]
    Metrics(MetricsAddrError),
}

/// Why a metrics address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsAddrError {
    #[error("not a loopback address: metrics are only served on loopback or a Unix socket")]
    NonLoopback,
    #[error("a Unix socket needs an absolute path: unix:/run/xmacvlan/metrics.sock")]
    RelativeUnixPath,
    #[error("not an address: use 127.0.0.1:9100, [::1]:9100 or unix:/run/xmacvlan/metrics.sock")]
    NotAnAddress,
    #[error("port 0 would pick a random port: choose one, e.g. 127.0.0.1:9100")]
    PortZero,
}

/// An error in `daemon.json` (or in a flag that overrides it).
#[derive(Debug)]
pub struct ConfigError {
    /// Where the value came from: the file's path, or `daemon.json` for text given directly.
    pub source: String,
    /// The key, `parent.child` for an option inside `log-opts`; None for file-level errors.
    pub key: Option<String>,
    pub kind: ErrorKind,
}

impl ConfigError {
    pub(crate) fn file(source: &str, kind: ErrorKind) -> Self {
        Self {
            source: source.to_string(),
            key: None,
            kind,
        }
    }

    pub(crate) fn key(source: &str, key: &str, kind: ErrorKind) -> Self {
        Self {
            source: source.to_string(),
            key: Some(key.to_string()),
            kind,
        }
    }

    /// The key the error is about (`log-opts.max-size` for a log option).
    pub fn key_name(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.source)?;
        if let ErrorKind::UnknownKey {
            suggestion,
            allowed,
        } = &self.kind
        {
            let key = self.key.as_deref().unwrap_or_default();
            // A top-level key may itself contain a dot: only an option's key is `parent.child`.
            let option = if *allowed == super::KEYS {
                None
            } else {
                key.split_once('.')
            };
            return match option {
                Some((parent, child)) => {
                    write!(f, "key \"{parent}\": unknown option \"{child}\"")?;
                    if let Some(s) = suggestion {
                        write!(f, " (did you mean \"{s}\"?)")?;
                    }
                    if allowed.is_empty() {
                        write!(f, "; this log driver takes no options")
                    } else {
                        write!(f, "; its options are {}", allowed.join(", "))
                    }
                }
                None => {
                    write!(f, "unknown key \"{key}\"")?;
                    if let Some(s) = suggestion {
                        write!(f, " (did you mean \"{s}\"?)")?;
                    }
                    write!(f, "; known keys are {}", allowed.join(", "))
                }
            };
        }
        if let Some(key) = &self.key {
            match key.split_once('.') {
                Some((parent, child)) => write!(f, "key \"{parent}\": option \"{child}\": ")?,
                None => write!(f, "key \"{key}\": ")?,
            }
        }
        match &self.kind {
            ErrorKind::Io(e) => write!(f, "cannot read the file: {e}"),
            ErrorKind::Syntax {
                line,
                column,
                message,
            } => write!(
                f,
                "not valid JSON at line {line}, column {column}: {message}"
            ),
            ErrorKind::NotAnObject { found } => write!(
                f,
                "expected a JSON object such as {{\"log-level\": \"info\"}} at the top level, found {found}"
            ),
            ErrorKind::UnknownKey { .. } => unreachable!("handled above"),
            ErrorKind::WrongType { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            ErrorKind::NotOneOf { value, allowed } => {
                write!(f, "\"{value}\" is not one of {}", allowed.join(", "))
            }
            ErrorKind::BadSize { value, reason } => write!(
                f,
                "\"{value}\" is not a valid size ({reason}); use bytes or a number with k, m or g, such as \"10m\""
            ),
            ErrorKind::NonLoopback { value } => write!(
                f,
                "\"{value}\" is not a loopback address; metrics are only served on loopback \
                 (127.0.0.1:PORT, [::1]:PORT, localhost:PORT) or on a Unix socket (unix:/run/xmacvlan/metrics.sock); \
                 put a reverse proxy in front to expose them further"
            ),
            ErrorKind::Invalid { value, reason } => write!(f, "{value}: {reason}"),
        }
    }
}

/// No `source()`: the message already ends with the OS error, and a source would make
/// `{:#}` chains print it twice.
impl std::error::Error for ConfigError {}

/// The known word closest to `word`, if it is close enough to be a likely typo.
pub(crate) fn suggest(word: &str, known: &[&'static str]) -> Option<&'static str> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        let known = &["log-level", "log-format", "debug"];
        assert_eq!(suggest("log-levl", known), Some("log-level"));
        assert_eq!(suggest("loglevel", known), Some("log-level"));
        assert_eq!(suggest("verbosity", known), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
