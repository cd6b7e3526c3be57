//! Point payloads and search filters.
//!
//! A [`Payload`] is a JSON object attached to a point. It is parsed from untrusted network input,
//! so parsing is bounded ([`PayloadLimits`]), checks sizes and nesting before allocating where it
//! can, never panics, and names the offending value and limit in its errors
//! ([`Error::InvalidPayload`](crate::Error::InvalidPayload),
//! [`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge)).

mod json;
mod payload;

pub use payload::{Payload, PayloadLimits};
