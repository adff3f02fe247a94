//! Compiles the contracts with protox (pure Rust, no protoc) and writes the encoded file
//! descriptor set next to the generated code, for gRPC reflection.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const FILES: &[&str] = &[
    "nhs/gprollout/v1/resources.proto",
    "nhs/gprollout/v1/supplier.proto",
    "nhs/gprollout/v1/coordinator.proto",
    // The OpenFeature flagd evaluation protocol, which the supplier serves to backends.
    "flagd/evaluation/v1/evaluation.proto",
    "flagd/evaluation/v2/evaluation.proto",
    // Not imported by the contracts, but every error carries its types in `grpc-status-details-bin`:
    // served by reflection so that grpcurl and other clients can print ErrorInfo and BadRequest.
    "google/rpc/error_details.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());

    let fds = protox::compile(FILES, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("gprollout_descriptor.bin"), fds.encode_to_vec())?;

    // Type names (`prost::Name`) let the CLI print any message as protobuf JSON by its own name.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
