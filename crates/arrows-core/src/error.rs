//! The one error type of the core. Every message says what was wrong, where, and what to do;
//! the Python glue maps each variant onto an exception class.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a file (missing, unreadable, disk full, ...).
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// A bad argument or input the user can fix (empty corpus, vocabulary too small, ...).
    #[error("{0}")]
    Input(String),

    /// A batch larger than the data split holds or this machine can address: the batch settings,
    /// not the data, are to change (the caller can name its own keys for them).
    #[error("{0}")]
    BatchSize(String),

    /// `--strict-utf8` met bytes that are not UTF-8.
    #[error("{}: invalid UTF-8 at byte offset {offset}; fix the file, or run again without --strict-utf8 and with --force (this run has begun the folder) to replace such bytes with U+FFFD", path.display())]
    InvalidUtf8 { path: PathBuf, offset: u64 },

    /// A tokenizer file that cannot be used.
    #[error("{}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },

    /// A shard, manifest or other output file that fails its checks.
    #[error("{}: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },

    /// `--resume` against an output folder made from other inputs, tokenizer or options.
    #[error("{0}")]
    ResumeMismatch(String),

    /// The job was asked to stop (Ctrl-C); what is complete on disk stays valid and resumable.
    #[error("cancelled; the output is resumable")]
    Cancelled,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    pub fn corrupt(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Corrupt { path: path.as_ref().to_path_buf(), message: message.into() }
    }
    pub fn tokenizer(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Tokenizer { path: path.as_ref().to_path_buf(), message: message.into() }
    }
}

/// Attach a path to an `io::Result`.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
