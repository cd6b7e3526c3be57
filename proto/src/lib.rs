//! vaultvec wire types, generated from `proto/`: the public API `vaultvec.v1` (gRPC services and
//! messages, also the bodies of the HTTP/JSON API) and the coordinator-worker messages
//! `vaultvec.cluster.v1` that travel as binary WebSocket frames. Generated code only.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/mod.rs"));

#[cfg(test)]
mod tests;
