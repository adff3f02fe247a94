//! Generated code for the `nhs.gprollout.v1` contracts, used by both servers, the CLI and the
//! tests. Keep it slim: generated types and the descriptor set, nothing else.

/// `nhs.gprollout.v1`: messages, clients and servers.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic, missing_debug_implementations)]
    tonic::include_proto!("nhs.gprollout.v1");
}

/// The encoded `FileDescriptorSet` of every contract file and its imports, for
/// `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gprollout_descriptor.bin"));
