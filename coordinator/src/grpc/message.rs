//! What a gRPC call's message may take before tonic reads it: [`MessageBudget`] reads the 5-byte
//! length prefix of an authenticated call's message (gRPC framing: a compression flag and a
//! big-endian `u32`) before tonic reads or decodes a byte of it. A message over the tenant's tier
//! body limit is refused unread; one over [`crate::api::LARGE_MESSAGE_BYTES`] first reserves its
//! share of the large-message budget (`large_message_budget_bytes`, as HTTP bodies do), held until
//! the answer has been sent. A large answer reserves too ([`super::Grpc`] puts its [`Held`]
//! reservation in the response's extensions), so what large gRPC calls hold at once is bounded by
//! the same configuration as HTTP's.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body as _, Frame};
use prost::bytes::Bytes;
use tonic::body::Body;

use crate::api::error::ApiError;
use crate::api::{LARGE_MESSAGE_BYTES, Reservation, Service};

/// How long the first bytes of a message may take to arrive.
const PREFIX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The bytes of gRPC's message prefix: a compression flag and a big-endian `u32` length.
const PREFIX_BYTES: usize = 5;

/// Who made an authenticated call, put in its answer's extensions for [`super::RequestLog`], which
/// logs calls answered before their handler ran (refused here, or by tonic's codec).
#[derive(Clone)]
pub struct Caller {
    pub tenant: String,
    pub key_id: String,
}

/// A reservation held by a request or response until its body has been sent (see the module
/// docs); cloned into extensions, so it is shared.
#[derive(Clone)]
pub struct Held(pub Arc<Reservation>);

/// The layer (see the module docs); it goes inside the authenticating interceptor, whose
/// identity it reads.
#[derive(Clone)]
pub struct MessageBudget {
    service: Arc<Service>,
}

impl MessageBudget {
    pub fn new(service: Arc<Service>) -> MessageBudget {
        MessageBudget { service }
    }
}

impl<S> tower::Layer<S> for MessageBudget {
    type Service = MessageBudgetService<S>;

    fn layer(&self, inner: S) -> MessageBudgetService<S> {
        MessageBudgetService {
            inner,
            service: self.service.clone(),
        }
    }
}

/// The service of [`MessageBudget`].
#[derive(Clone)]
pub struct MessageBudgetService<S> {
    inner: S,
    service: Arc<Service>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for MessageBudgetService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready is the one called (tower's readiness contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let service = self.service.clone();
        Box::pin(async move {
            let Some(identity) = request
                .extensions()
                .get::<Arc<crate::auth::Identity>>()
                .cloned()
            else {
                // Public methods: nothing authenticated, nothing to charge (health checks).
                return inner.call(request).await;
            };
            let (parts, mut body) = request.into_parts();
            let mut head = Vec::new();
            let mut ended = false;
            while head.len() < PREFIX_BYTES && !ended {
                let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
                match tokio::time::timeout(PREFIX_TIMEOUT, frame).await {
                    Err(_) => {
                        let err = ApiError::invalid(format!(
                            "the request message did not arrive within {} s",
                            PREFIX_TIMEOUT.as_secs()
                        ));
                        return Ok(refusal(err, &identity));
                    }
                    Ok(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            head.extend_from_slice(&data);
                        }
                    }
                    // A broken or ended body: tonic reports it as it does today.
                    Ok(Some(Err(_)) | None) => ended = true,
                }
            }
            let mut held = None;
            if head.len() >= PREFIX_BYTES {
                let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                if let Err(err) = service.check_body_size(&identity, len) {
                    return Ok(refusal(err, &identity));
                }
                if len > LARGE_MESSAGE_BYTES {
                    match service.reserve_large(len, "request message").await {
                        Ok(reservation) => held = Some(reservation),
                        Err(err) => return Ok(refusal(err, &identity)),
                    }
                }
            }
            let body = Body::new(Prefixed {
                head: (!head.is_empty()).then(|| Bytes::from(head)),
                rest: body,
            });
            // The message's reservation is held while it is read, decoded and worked on: the
            // handler has dropped the decoded message by the time it answers.
            let mut response = inner.call(http::Request::from_parts(parts, body)).await?;
            drop(held);
            response.extensions_mut().insert(caller(&identity));
            Ok(hold_until_sent(response))
        })
    }
}

/// An error answer for a call refused before its message was read.
fn refusal(err: ApiError, identity: &crate::auth::Identity) -> http::Response<Body> {
    let mut response: http::Response<Body> = tonic::Status::from(err).into_http();
    response.extensions_mut().insert(caller(identity));
    response
}

fn caller(identity: &crate::auth::Identity) -> Caller {
    Caller {
        tenant: identity.tenant.clone(),
        key_id: identity.key_id.clone(),
    }
}

/// The response, whose body keeps the answer's reservation (if the handler put one in its
/// extensions) until it has been sent.
fn hold_until_sent(response: http::Response<Body>) -> http::Response<Body> {
    let (mut parts, body) = response.into_parts();
    let Some(Held(reservation)) = parts.extensions.remove::<Held>() else {
        return http::Response::from_parts(parts, body);
    };
    let body = Body::new(Holding {
        body,
        held: Some(reservation),
    });
    http::Response::from_parts(parts, body)
}

/// A request body whose first bytes were read already.
struct Prefixed {
    head: Option<Bytes>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }
}

/// A response body holding a reservation until it has been sent (or dropped).
struct Holding {
    body: Body,
    held: Option<Arc<Reservation>>,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.held = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}
