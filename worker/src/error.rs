//! The crate's one error type, and the one place that picks the `ErrorCode` a failure is answered with.

use cluster::ErrorCode;
use proto::vaultvec::cluster::v1 as cluster;

/// Why a request from the coordinator was not served.
///
/// Messages never carry key material, tokens or vector values; storage errors are rendered without
/// file paths (the full error is logged on the worker).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage engine refused or failed.
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// The request is malformed or out of bounds.
    #[error("{0}")]
    InvalidArgument(String),
    /// A tenant quota would be exceeded.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The tenant is not assigned to this worker.
    #[error("tenant {0:?} is not assigned to this worker")]
    NotAssigned(String),
    /// The request's epoch differs from the assignment's.
    #[error(
        "epoch {got} of tenant {tenant} does not match the current assignment (epoch {current})"
    )]
    StaleEpoch {
        /// The tenant.
        tenant: String,
        /// The epoch of the current assignment.
        current: u64,
        /// The epoch the message carried.
        got: u64,
    },
    /// The request id was already used on this connection, or is below the remembered window.
    #[error("request id {0} was already used on this connection")]
    Replayed(u64),
    /// The request's deadline passed.
    #[error("the request's deadline passed")]
    DeadlineExceeded,
    /// Too many requests are running.
    #[error("{0} requests are already running on this worker")]
    Busy(u32),
    /// The tenant already has its share of the worker's requests in flight.
    #[error(
        "the tenant has {held} requests running on this worker, its share while others are served too is {share}"
    )]
    TenantBusy {
        /// The tenant's requests in flight.
        held: u32,
        /// Its share.
        share: u32,
    },
    /// The worker is shutting down and takes no new requests.
    #[error("the worker is shutting down")]
    ShuttingDown,
    /// The encoded answer is larger than the frames the coordinator accepts.
    #[error(
        "answer too large: {bytes} bytes encoded, over the limit of {limit} bytes a frame to the \
         coordinator may carry; ask for fewer ids, a smaller limit or top_k, or leave out vectors \
         or payloads"
    )]
    FrameTooLarge {
        /// The encoded answer's size.
        bytes: usize,
        /// The frame limit.
        limit: usize,
    },
    /// A fault of the worker itself.
    /// The tenant is not in a state to serve the request (its files are on cold storage).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The code this error is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Storage(err) => storage_code(err),
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::QuotaExceeded(_) => ErrorCode::ResourceExhausted,
            Error::NotAssigned(_) => ErrorCode::NotAssigned,
            Error::StaleEpoch { .. } => ErrorCode::StaleEpoch,
            Error::Replayed(_) => ErrorCode::Replayed,
            Error::DeadlineExceeded => ErrorCode::DeadlineExceeded,
            Error::Busy(_) | Error::TenantBusy { .. } => ErrorCode::Busy,
            Error::ShuttingDown => ErrorCode::Unavailable,
            Error::FrameTooLarge { .. } => ErrorCode::InvalidArgument,
            Error::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The error as it travels to the coordinator.
    pub fn to_proto(&self) -> cluster::Error {
        let message = match self {
            Error::Storage(err) => storage_message(err),
            other => other.to_string(),
        };
        cluster::Error {
            code: self.code() as i32,
            message,
        }
    }

    /// True for errors the caller caused (logged at debug level, not as a fault).
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Storage(err) => err.is_user_error(),
            Error::Internal(_) => false,
            _ => true,
        }
    }
}

/// The one mapping from storage errors to wire codes.
///
/// A key that cannot be obtained (the key service refused, or is unreachable) means the tenant
/// cannot be served now, so it maps to `UNAVAILABLE` like a collection that failed to load.
fn storage_code(err: &storage::Error) -> ErrorCode {
    use storage::Error as E;
    match err {
        E::CollectionNotFound(_) => ErrorCode::NotFound,
        E::CollectionExists(_) => ErrorCode::AlreadyExists,
        E::Dropped(_) => ErrorCode::NotFound,
        E::DeadlineExceeded => ErrorCode::DeadlineExceeded,
        err if err.is_user_error() => ErrorCode::InvalidArgument,
        E::CollectionUnavailable { .. } | E::TenantNotFound(_) | E::Key(_) => {
            ErrorCode::Unavailable
        }
        E::Decrypt { .. } | E::Corrupt { .. } => ErrorCode::DataLoss,
        _ => ErrorCode::Internal,
    }
}

/// The message of a storage error, without the file paths server faults carry.
fn storage_message(err: &storage::Error) -> String {
    use storage::Error as E;
    match err {
        E::Decrypt { what, .. } => format!("stored data failed authentication: {what}"),
        E::Corrupt { reason, .. } => format!("stored data is corrupt: {reason}"),
        E::UnsupportedVersion { version, .. } => {
            format!("stored data has unsupported format version {version}")
        }
        E::Io { source, .. } => format!("i/o error: {source}"),
        // The reason names files; the worker logged it when the collection failed to load.
        E::CollectionUnavailable { name, .. } => {
            format!("collection {name} could not be loaded; the worker log has the cause")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
