//! vaultvec wire types, generated from `proto/`: the public API `vaultvec.v1` (gRPC services and
//! messages, also the bodies of the HTTP/JSON API) and the coordinator-worker messages
//! `vaultvec.cluster.v1` that travel as binary WebSocket frames. Generated code, plus [`json`]: the
//! one mapping between `google.protobuf.Struct` and JSON that both servers share.

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/mod.rs"));
}
pub use generated::*;

pub mod codec;
pub mod json;

#[cfg(test)]
mod tests;
