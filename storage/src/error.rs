//! The crate's one error type.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage engine.
///
/// Variants state the fact. None of them ever carries key material or vector data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A vector has the wrong number of components.
    #[error("vector has {got} dimensions, collection expects {expected}")]
    DimensionMismatch {
        /// The collection's dimension.
        expected: usize,
        /// The dimension given.
        got: usize,
    },
    /// A vector component is NaN or infinite.
    #[error("vector component at position {position} is not finite")]
    NonFiniteVector {
        /// Index of the first bad component.
        position: usize,
    },
    /// A payload is larger than the limit.
    #[error("payload is {size} bytes, over the {limit} byte limit")]
    PayloadTooLarge {
        /// Encoded size in bytes.
        size: usize,
        /// Limit in bytes.
        limit: usize,
    },
    /// A payload is not a JSON object or is otherwise malformed.
    #[error("invalid payload: {reason}")]
    InvalidPayload {
        /// What was wrong.
        reason: String,
    },
    /// A search filter is malformed or exceeds a bound.
    #[error("invalid filter: {reason}")]
    InvalidFilter {
        /// What was wrong.
        reason: String,
    },
    /// An argument is out of its allowed range.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What was wrong.
        reason: String,
    },
    /// An identifier does not have the required shape.
    #[error("invalid {kind}: {reason}")]
    InvalidId {
        /// Which kind of identifier (tenant, collection, point id).
        kind: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// No collection of that name exists for the tenant.
    #[error("collection {0} not found")]
    CollectionNotFound(String),
    /// A collection of that name already exists.
    #[error("collection {0} already exists")]
    CollectionExists(String),
    /// A collection exists but could not be loaded (damaged, or its keys are gone). The tenant's
    /// other collections keep serving.
    #[error("collection {name} is unavailable: {reason}")]
    CollectionUnavailable {
        /// The collection.
        name: String,
        /// Why it could not be loaded.
        reason: String,
    },
    /// The tenant is not loaded or does not exist.
    #[error("tenant {0} not found")]
    TenantNotFound(String),
    /// Authenticated decryption failed: wrong key, tampered or transplanted data.
    #[error("{path}: {what} failed authentication")]
    Decrypt {
        /// The file.
        path: PathBuf,
        /// Which part: a block, a wrapped key, a WAL frame.
        what: String,
    },
    /// A file is structurally corrupt (bad magic, checksum, impossible length).
    #[error("{path}: corrupt at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the problem.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A key could not be obtained, unwrapped or was destroyed.
    #[error("key error: {0}")]
    Key(String),
    /// A file was written by an unsupported format version.
    #[error("{path}: unsupported format version {version}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u16,
    },
    /// An earlier fsync failed, so this collection no longer acknowledges writes.
    #[error("collection {0} stopped accepting writes after an I/O failure; reopen it")]
    Poisoned(String),
    /// The request's deadline passed before it finished; nothing was changed.
    #[error("the request's deadline passed")]
    DeadlineExceeded,
    /// The answer would be larger than the bound on an answer's bytes.
    #[error("answer too large: it would exceed the limit of {limit} bytes; {hint}")]
    AnswerTooLarge {
        /// The bound, in bytes.
        limit: usize,
        /// What to ask instead.
        hint: &'static str,
    },
    /// The collection was dropped (and perhaps created again under its name) after this handle
    /// was taken; it refuses every write.
    #[error("collection {0} was deleted")]
    Dropped(String),
    /// An I/O error, with the file it happened on.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// True when the caller sent something wrong, as opposed to a fault of the server or its disk.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::DimensionMismatch { .. }
                | Error::NonFiniteVector { .. }
                | Error::PayloadTooLarge { .. }
                | Error::InvalidPayload { .. }
                | Error::InvalidFilter { .. }
                | Error::InvalidArgument { .. }
                | Error::InvalidId { .. }
                | Error::CollectionNotFound(_)
                | Error::CollectionExists(_)
                | Error::AnswerTooLarge { .. }
                | Error::Dropped(_)
        )
    }

    /// True when a key could not be obtained from the key service (unreachable, timed out,
    /// refused). Often passing, and never a sign of damaged data: work that needs a key waits and
    /// retries, and a write that needs one is refused as retriable.
    pub fn is_key_failure(&self) -> bool {
        matches!(self, Error::Key(_))
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            reason: reason.into(),
        }
    }
}
