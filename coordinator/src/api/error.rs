//! The one error type both public transports answer with, and its two mappings: to gRPC status
//! codes and to HTTP statuses with a JSON body `{ "error": { "code", "message" } }`.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use proto::vaultvec::cluster::v1 as cluster;
use tonic::Code as GrpcCode;

use crate::auth::AuthError;

/// What kind of failure, independent of transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The request is malformed or out of bounds.
    InvalidArgument,
    /// Missing, malformed, unknown or revoked credential.
    Unauthenticated,
    /// A valid credential used outside its scope.
    PermissionDenied,
    /// No such resource for this caller (also: another tenant's resource).
    NotFound,
    /// The resource exists already.
    AlreadyExists,
    /// A rate limit or quota is exceeded.
    ResourceExhausted,
    /// The request body is larger than allowed.
    PayloadTooLarge,
    /// The tenant is paused, or the operation does not fit the resource's state.
    FailedPrecondition,
    /// The tenant's worker cannot serve now (down, busy, loading failed); retrying may help.
    Unavailable,
    /// The deadline passed before the worker answered.
    DeadlineExceeded,
    /// Stored data failed authentication or is corrupt.
    DataLoss,
    /// A bug or an unexpected failure on our side.
    Internal,
}

impl Code {
    /// The code whose [`Code::as_str`] is `raw`.
    pub fn parse(raw: &str) -> Option<Code> {
        [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::NotFound,
            Code::AlreadyExists,
            Code::ResourceExhausted,
            Code::PayloadTooLarge,
            Code::FailedPrecondition,
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::DataLoss,
            Code::Internal,
        ]
        .into_iter()
        .find(|c| c.as_str() == raw)
    }

    /// The code as it appears in JSON error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "invalid_argument",
            Code::Unauthenticated => "unauthenticated",
            Code::PermissionDenied => "permission_denied",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::ResourceExhausted => "resource_exhausted",
            Code::PayloadTooLarge => "payload_too_large",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unavailable => "unavailable",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::DataLoss => "data_loss",
            Code::Internal => "internal",
        }
    }

    fn http(self) -> StatusCode {
        match self {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::FailedPrecondition => StatusCode::CONFLICT,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::DataLoss | Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn grpc(self) -> GrpcCode {
        match self {
            Code::InvalidArgument => GrpcCode::InvalidArgument,
            Code::Unauthenticated => GrpcCode::Unauthenticated,
            Code::PermissionDenied => GrpcCode::PermissionDenied,
            Code::NotFound => GrpcCode::NotFound,
            Code::AlreadyExists => GrpcCode::AlreadyExists,
            Code::ResourceExhausted | Code::PayloadTooLarge => GrpcCode::ResourceExhausted,
            Code::FailedPrecondition => GrpcCode::FailedPrecondition,
            Code::Unavailable => GrpcCode::Unavailable,
            Code::DeadlineExceeded => GrpcCode::DeadlineExceeded,
            Code::DataLoss => GrpcCode::DataLoss,
            Code::Internal => GrpcCode::Internal,
        }
    }
}

/// A failed request: a code, a message for the client, and for rate limits when to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// Kind of failure.
    pub code: Code,
    /// Human-readable, safe to show the client (no secrets, no other tenant's names).
    pub message: String,
    /// For `ResourceExhausted` from a rate limit: when a retry can succeed.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with a message.
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Shorthand for `InvalidArgument`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(Code::InvalidArgument, message)
    }

    /// The single answer to every failed authentication.
    pub fn unauthenticated() -> ApiError {
        ApiError::new(
            Code::Unauthenticated,
            AuthError::Unauthenticated.to_string(),
        )
    }

    /// Shorthand for `Internal`; the detail goes to the log, not to the client.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "internal error");
        ApiError::new(Code::Internal, "internal error")
    }

    /// The HTTP status this error is answered with.
    pub fn http_status(&self) -> StatusCode {
        self.code.http()
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> ApiError {
        match err {
            AuthError::Unauthenticated => ApiError::unauthenticated(),
            AuthError::PermissionDenied(_) => {
                ApiError::new(Code::PermissionDenied, err.to_string())
            }
        }
    }
}

/// Errors a worker answered with. Codes that concern the cluster itself (stale epoch, replay) are
/// handled by the router before they get here; if one arrives, it is an internal error.
impl From<cluster::Error> for ApiError {
    fn from(err: cluster::Error) -> ApiError {
        use cluster::ErrorCode as W;
        let code = match W::try_from(err.code).unwrap_or(W::Unspecified) {
            W::InvalidArgument => Code::InvalidArgument,
            W::NotFound => Code::NotFound,
            W::AlreadyExists => Code::AlreadyExists,
            W::Unavailable | W::Busy | W::StaleEpoch | W::NotAssigned => Code::Unavailable,
            W::DataLoss => Code::DataLoss,
            W::DeadlineExceeded => Code::DeadlineExceeded,
            W::PermissionDenied => Code::PermissionDenied,
            W::ResourceExhausted => Code::ResourceExhausted,
            W::FailedPrecondition => Code::FailedPrecondition,
            W::Internal | W::Replayed | W::Unspecified => {
                return ApiError::internal(format_args!("worker error: {}", err.message));
            }
        };
        ApiError::new(code, err.message)
    }
}

/// The only mapping to gRPC.
impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> tonic::Status {
        let mut status = tonic::Status::new(err.code.grpc(), err.message);
        if let Some(after) = err.retry_after
            && let Ok(value) = after.as_secs().max(1).to_string().parse()
        {
            status.metadata_mut().insert("retry-after", value);
        }
        status
    }
}

/// The only mapping to HTTP.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.http();
        let body = serde_json::json!({
            "error": { "code": self.code.as_str(), "message": self.message }
        });
        let mut response = (status, Json(body)).into_response();
        if let Some(after) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        response
    }
}
