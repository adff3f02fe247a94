//! The read baseline: a bare tonic echo server process, and the pass-through client codec
//! both sides are called with.

use super::*;

/// The baseline of the read comparison: a bare tonic unary service that answers each request
/// with its own payload, with no layers, served by the same TLS acceptor and HTTP/2 settings as
/// the services. It runs in a child process (this benchmark started with `--echo-server`), so
/// that it is placed and measured exactly as the supplier is.
pub(crate) mod echo {
    use std::{
        convert::Infallible,
        future::{Ready, ready},
        task::{Context, Poll},
    };

    use tonic::{
        Request, Response, Status,
        body::Body,
        codegen::{BoxFuture, Service, http},
    };

    pub const PATH: &str = "/bench.v1.EchoService/Echo";

    /// The request and the answer. Its one field has the number and type of
    /// GetPracticeFeatureRequest's, so the same request bytes serve both sides.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Payload {
        #[prost(bytes = "vec", tag = "1")]
        pub payload: Vec<u8>,
    }

    /// What tonic's generated server does for a unary method, with an echo as the handler.
    #[derive(Clone, Debug)]
    pub struct Server;

    impl tonic::server::NamedService for Server {
        const NAME: &'static str = "bench.v1.EchoService";
    }

    struct Echo;

    impl tonic::server::UnaryService<Payload> for Echo {
        type Response = Payload;
        type Future = Ready<Result<Response<Payload>, Status>>;

        fn call(&mut self, request: Request<Payload>) -> Self::Future {
            ready(Ok(Response::new(request.into_inner())))
        }
    }

    impl Service<http::Request<Body>> for Server {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Infallible>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<Body>) -> Self::Future {
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(Echo, request).await)
            })
        }
    }
}

/// The load generator's codec: request and answer bytes pass through as they are, so that it
/// neither builds nor parses messages and costs the same whichever server it calls.
pub(crate) mod raw {
    use prost::bytes::{Buf, BufMut, Bytes};
    use tonic::{
        Request, Status,
        codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
        codegen::http::uri::PathAndQuery,
        transport::Channel,
    };

    #[derive(Debug, Clone, Copy, Default)]
    pub struct Raw;

    impl Codec for Raw {
        type Encode = Bytes;
        type Decode = Bytes;
        type Encoder = Raw;
        type Decoder = Raw;

        fn encoder(&mut self) -> Raw {
            Raw
        }

        fn decoder(&mut self) -> Raw {
            Raw
        }
    }

    impl Encoder for Raw {
        type Item = Bytes;
        type Error = Status;

        fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put(item);
            Ok(())
        }
    }

    impl Decoder for Raw {
        type Item = Bytes;
        type Error = Status;

        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
            Ok(Some(src.copy_to_bytes(src.remaining())))
        }
    }

    /// One unary call of `path` with an encoded request; the encoded answer.
    pub async fn call(
        grpc: &mut tonic::client::Grpc<Channel>,
        path: PathAndQuery,
        request: Bytes,
    ) -> Result<Bytes, Status> {
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(grpc.unary(Request::new(request), path, Raw).await?.into_inner())
    }
}

/// The body of `system --echo-server PKI_DIR`: serves the echo baseline with the EMIS supplier's
/// certificate and prints its port.
pub(crate) fn echo_server(pki: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let tls_config =
            tls::ReloadingServerConfig::load(TlsFiles::from_pki_dir(pki, "supplier-emis")).expect("tls");
        println!("{}", listener.local_addr().expect("addr").port());
        rollout_net::server::builder()
            .add_service(echo::Server)
            .serve_with_incoming(tls::incoming(listener, tls_config))
            .await
            .expect("echo server");
    });
}

pub(crate) async fn echo_process(pki: &Path, pin: &Pinning) -> (tokio::process::Child, SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let mut child = pin
        .server(&std::env::current_exe().expect("exe"))
        .arg("--echo-server")
        .arg(pki)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the echo server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .expect("echo port");
    let port: u16 = line.trim().parse().expect("echo port");
    (child, SocketAddr::from(([127, 0, 0, 1], port)))
}
