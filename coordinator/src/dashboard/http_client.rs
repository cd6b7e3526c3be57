//! The HTTP client the `oauth2` and `openidconnect` crates call: every request goes through
//! [`Outbound::send`] (https only, checked addresses, no redirects, bounded answers).

use std::future::Future;
use std::pin::Pin;

use crate::outbound::{Outbound, OutboundError};

/// The crate's HTTP client: every request through [`Outbound::send`] (https only, checked
/// addresses, no redirects, bounded answers).
pub(super) struct Http(pub(super) Outbound);

impl<'c> openidconnect::AsyncHttpClient<'c> for Http {
    type Error = OutboundError;
    type Future = Pin<
        Box<dyn Future<Output = Result<openidconnect::HttpResponse, OutboundError>> + Send + 'c>,
    >;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let url = reqwest::Url::parse(&parts.uri.to_string())
                .map_err(|e| OutboundError::Refused(format!("an unusable URL: {e}")))?;
            let request = self
                .0
                .http()
                .request(parts.method, url)
                .headers(parts.headers)
                .body(body)
                .build()
                .map_err(|e| OutboundError::Failed(format!("building a request: {e}")))?;
            let answer = self.0.send(request).await?;
            let mut response = openidconnect::HttpResponse::new(answer.body);
            *response.status_mut() = openidconnect::http::StatusCode::from_u16(answer.status)
                .map_err(|e| OutboundError::Failed(format!("a bad status: {e}")))?;
            *response.headers_mut() = answer.headers;
            Ok(response)
        })
    }
}
