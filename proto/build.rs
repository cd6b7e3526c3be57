//! Compiles the .proto files with the protoc shipped inside `protoc-bin-vendored`, so a fresh
//! machine needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/vaultvec/v1/vaultvec.proto",
        "proto/vaultvec/cluster/v1/cluster.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // One module tree (vaultvec::v1, vaultvec::cluster::v1) in OUT_DIR/mod.rs. tonic-prost-build
    // maps google.protobuf.Struct and Value to prost-types itself.
    config.include_file("mod.rs");
    // A frame's pieces are slices of it, and a received piece a slice of the frame it came in:
    // no copy on either side but the one into the reassembled frame.
    config.bytes([".vaultvec.cluster.v1.Chunk.data"]);
    // The descriptors of every service and method, for the gRPC route inventory (INV-12).
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    config.file_descriptor_set_path(out_dir.join("descriptors.bin"));
    // Malformed messages are the client's mistake: see src/codec.rs.
    tonic_prost_build::configure()
        .codec_path("crate::codec::Codec")
        .compile_with_config(config, &protos, &["proto"])?;
    Ok(())
}
