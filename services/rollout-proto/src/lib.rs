//! Generated code for the `nhs.gprollout.v1` contracts and the flagd evaluation protocol, used
//! by both servers, the CLI and the tests. Keep it slim: generated types and the descriptor set,
//! nothing else.

/// `nhs.gprollout.v1`: messages, clients and servers.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic, missing_debug_implementations)]
    tonic::include_proto!("nhs.gprollout.v1");
}

/// The OpenFeature flagd evaluation protocol (`flagd.evaluation.v1` and `v2`), served by the
/// supplier to backends that use an OpenFeature flagd provider in RPC mode.
pub mod flagd {
    /// `flagd.evaluation`: the two versions of the evaluation service.
    pub mod evaluation {
        /// `flagd.evaluation.v1`: called by the Rust provider.
        pub mod v1 {
            #![allow(missing_docs, clippy::all, clippy::pedantic, missing_debug_implementations)]
            tonic::include_proto!("flagd.evaluation.v1");
        }
        /// `flagd.evaluation.v2`: called by the Python, Java, JavaScript and .NET providers.
        pub mod v2 {
            #![allow(missing_docs, clippy::all, clippy::pedantic, missing_debug_implementations)]
            tonic::include_proto!("flagd.evaluation.v2");
        }
    }
}

/// The encoded `FileDescriptorSet` of every contract file and its imports, for
/// `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gprollout_descriptor.bin"));
