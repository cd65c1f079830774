use std::path::PathBuf;

/// Result with mixq's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every user-facing failure of mixq. Each variant names the file, key or value at fault so the
/// CLI can print one line and exit with code 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model name that is neither a known alias nor a model-card file.
    #[error("unknown model '{name}'; known models: {}", known.join(", "))]
    UnknownModel { name: String, known: Vec<String> },

    /// A weights file that cannot be used, with every problem found (missing keys, shapes...).
    #[error("weights '{}': {}", path.display(), problems.join("; "))]
    Weights {
        path: PathBuf,
        problems: Vec<String>,
    },

    /// A file that cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file whose content does not parse (TOML, JSON, safetensors, images...).
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },

    /// A data folder or data set that cannot be used.
    #[error("data '{}': {message}", path.display())]
    Data { path: PathBuf, message: String },

    /// An argument or configuration value out of its valid range.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidValue {
        name: String,
        value: String,
        reason: String,
    },

    /// A value that could not be written as JSON or TOML (a non-finite float in a report, say).
    #[error("cannot write {what} as {format}: {message}")]
    Serialize {
        what: String,
        format: &'static str,
        message: String,
    },

    /// A site named in a plan or score file that the model does not have.
    #[error("unknown site '{site}' (the model has {count} sites, e.g. {example})")]
    UnknownSite {
        site: String,
        count: usize,
        example: String,
    },
}

impl Error {
    /// Shorthand for [`Error::InvalidValue`].
    pub fn invalid(
        name: impl Into<String>,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidValue {
            name: name.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Serialize`].
    pub fn serialize(what: impl Into<String>, format: &'static str, e: impl ToString) -> Self {
        Error::Serialize {
            what: what.into(),
            format,
            message: e.to_string(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`Error::Parse`].
    pub fn parse(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        Error::Parse {
            path: path.into(),
            message: message.to_string(),
        }
    }
}
