//! vaultvec wire types, generated from `proto/`: the public API `vaultvec.v1` (gRPC services and
//! messages, also the bodies of the HTTP/JSON API) and the coordinator-worker messages
//! `vaultvec.cluster.v1` that travel as binary WebSocket frames. Generated code, plus [`json`]: the
//! one mapping between `google.protobuf.Struct` and JSON that both servers share, and [`stored`]:
//! the wire forms of what the storage engine holds.

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/mod.rs"));
}
pub use generated::*;

/// The encoded `google.protobuf.FileDescriptorSet` of every `.proto` file above: the source of truth
/// for which gRPC methods exist (the coordinator's route inventory is checked against it).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

pub mod chunk;
pub mod codec;
pub mod json;
pub mod stored;

#[cfg(test)]
mod tests;
