//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while finding, reading or batching data.
///
/// Each variant names the offending path (and line, for labels files) so that
/// a message printed at the top of a run is enough to fix the problem.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The data folder (or a file it must contain) does not exist.
    #[error("data folder not found: {}", .0.display())]
    NotFound(PathBuf),

    /// A path that must be a directory is something else.
    #[error("not a directory: {}", .0.display())]
    NotADirectory(PathBuf),

    /// The folder holds no class sub-directories or no images at all.
    #[error("empty data folder: {} (no class sub-directories with image files)", .0.display())]
    EmptyFolder(PathBuf),

    /// A class folder holds no image file; torchvision refuses this too,
    /// because silently dropping a class would shift every later label.
    #[error("class folder holds no image files: {}", .0.display())]
    EmptyClass(PathBuf),

    /// A line of a flat-layout labels file is malformed or names a missing file.
    #[error("{}:{line}: {message}", file.display())]
    Labels {
        /// The labels file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },

    /// Reading a file or listing a directory failed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path being read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A file could not be decoded as an image.
    #[error("cannot decode image {}: {source}", path.display())]
    Decode {
        /// The image file.
        path: PathBuf,
        /// The decoder's error.
        source: image::ImageError,
    },

    /// A data file is malformed: wrong magic number, truncated, inconsistent counts, labels
    /// out of range.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A named data set is not installed; the message says how to install it.
    #[error("data set '{name}' not found (looked in {looked}); {install}")]
    NotInstalled {
        /// The data set's name (`fashion-mnist`).
        name: String,
        /// The places searched, in order.
        looked: String,
        /// How to install it.
        install: String,
    },

    /// An argument is out of its valid range (batch size 0, limit 0, bad transform).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

impl DataError {
    /// The file or folder at fault, where the error has one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            DataError::NotFound(p)
            | DataError::NotADirectory(p)
            | DataError::EmptyFolder(p)
            | DataError::EmptyClass(p) => Some(p),
            DataError::Labels { file, .. } => Some(file),
            DataError::Io { path, .. }
            | DataError::Decode { path, .. }
            | DataError::Format { path, .. } => Some(path),
            DataError::NotInstalled { .. } | DataError::InvalidArgument(_) => None,
        }
    }
}

/// Lets `?` turn a data error into mixq's error ([`mixq_core::Error::Data`], naming the path).
impl From<DataError> for mixq_core::Error {
    fn from(e: DataError) -> Self {
        let path = match &e {
            DataError::NotInstalled { name, .. } => PathBuf::from(name),
            other => other.path().map(PathBuf::from).unwrap_or_default(),
        };
        mixq_core::Error::Data {
            path,
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_mixq_error_naming_the_path() {
        let e: mixq_core::Error = DataError::EmptyClass("/d/cat".into()).into();
        match &e {
            mixq_core::Error::Data { path, message } => {
                assert_eq!(path, &PathBuf::from("/d/cat"));
                assert!(
                    message.contains("class folder holds no image files"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        let e: mixq_core::Error = DataError::InvalidArgument("batch 0".into()).into();
        assert!(e.to_string().contains("batch 0"), "{e}");
    }
}
