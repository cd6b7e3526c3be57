//! The path extractor of every route: axum's `Path`, refusing a bad path (such as one that is not
//! UTF-8 once percent-decoded) with our JSON error body instead of the framework's plain text.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::api::error::ApiError;

/// The path parameters of a route.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) if rejection.status().is_server_error() => Err(ApiError::internal(
                format_args!("path parameters: {}", rejection.body_text()),
            )),
            Err(rejection) => Err(ApiError::invalid(rejection.body_text())),
        }
    }
}
