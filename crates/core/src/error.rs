use std::path::PathBuf;

/// Result with mixq's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every user-facing failure of mixq. Each variant names the file, key or value at fault so the
/// CLI can print one line and exit with code 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model name that is neither a known alias nor a model-card file.
    #[error("unknown model '{name}'; known models: {}", known.join(", "))]
    UnknownModel {
        /// What was asked for.
        name: String,
        /// Every alias there is.
        known: Vec<String>,
    },

    /// A weights file that cannot be used, with every problem found (missing keys, shapes...).
    #[error("weights '{}': {}", path.display(), problems.join("; "))]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// Every problem found, each naming its key.
        problems: Vec<String>,
    },

    /// A file that cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// A file whose content does not parse (TOML, JSON, safetensors, images...).
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What does not parse, and where.
        message: String,
    },

    /// A data folder or data set that cannot be used.
    #[error("data '{}': {message}", path.display())]
    Data {
        /// The data folder, file or data set name.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// An argument or configuration value out of its valid range.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidValue {
        /// The option or key (`--bits`, `lambda`).
        name: String,
        /// The value given.
        value: String,
        /// Why it is not accepted, and what would be.
        reason: String,
    },

    /// A value that could not be written as JSON or TOML (a non-finite float in a report, say).
    #[error("cannot write {what} as {format}: {message}")]
    Serialize {
        /// What was being written (`results`, a file name).
        what: String,
        /// `JSON` or `TOML`.
        format: &'static str,
        /// The serializer's message.
        message: String,
    },

    /// A site named in a plan or score file that the model does not have.
    #[error("unknown site '{site}' (the model has {count} sites, e.g. {example})")]
    UnknownSite {
        /// The site named.
        site: String,
        /// Sites the model has.
        count: usize,
        /// One of them, to show the naming.
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
