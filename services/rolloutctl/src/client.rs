//! The connection to the coordinator: where it is and who to be ([`Connection`]), failures said
//! so that the operator knows what to do ([`CliError`]), and List answers read to the end
//! (`pages`).

use std::{io, path::PathBuf};

use clap::Args;
use rollout_net::{
    MessageLimits,
    tls::{self, TlsFiles},
};
use rollout_proto::v1::{self as pb, coordinator_service_client::CoordinatorServiceClient};
use tonic::transport::Channel;

use crate::hints;

/// A client of the coordinator.
pub type Client = CoordinatorServiceClient<Channel>;

/// `HOST:PORT` with a port from 1 to 65535 (`[::1]:50050` for an IPv6 address).
fn host_port(s: &str) -> Result<String, String> {
    let port = s
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .map(|(_, p)| p);
    match port.map(str::parse::<u16>) {
        Some(Ok(p)) if p > 0 => Ok(s.to_owned()),
        _ => Err(format!(
            "{s:?} is not HOST:PORT with a port from 1 to 65535 (for example localhost:50050)"
        )),
    }
}

/// How to reach the coordinator and who to be.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The coordinator's address (host:port).
    #[arg(
        long,
        global = true,
        env = "ROLLOUT_COORDINATOR",
        default_value = "localhost:50050",
        value_parser = host_port
    )]
    pub coordinator: String,
    /// Development PKI directory used with --as.
    #[arg(
        long,
        global = true,
        env = "ROLLOUT_PKI_DIR",
        default_value = ".gprollout-dev/pki"
    )]
    pub pki_dir: PathBuf,
    /// Act as this identity of the development PKI (alice, bob, auditor, viewer): uses
    /// PKI_DIR/ca.pem, PKI_DIR/NAME.pem and PKI_DIR/NAME-key.pem unless --ca/--cert/--key say
    /// otherwise.
    #[arg(long = "as", global = true, env = "ROLLOUT_AS", value_name = "NAME")]
    pub identity: Option<String>,
    /// CA bundle the coordinator's certificate must chain to.
    #[arg(long, global = true, env = "ROLLOUT_CA", value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Your client certificate.
    #[arg(long, global = true, env = "ROLLOUT_CERT", value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// Your private key.
    #[arg(long, global = true, env = "ROLLOUT_KEY", value_name = "PEM")]
    pub key: Option<PathBuf>,
}

impl Connection {
    fn files(&self) -> Result<TlsFiles, CliError> {
        let from_pki = |suffix: &str| {
            self.identity
                .as_ref()
                .map(|n| self.pki_dir.join(format!("{n}{suffix}")))
        };
        let ca = self
            .ca
            .clone()
            .or_else(|| self.identity.as_ref().map(|_| self.pki_dir.join("ca.pem")));
        let cert = self.cert.clone().or_else(|| from_pki(".pem"));
        let key = self.key.clone().or_else(|| from_pki("-key.pem"));
        match (ca, cert, key) {
            (Some(ca), Some(cert), Some(key)) => Ok(TlsFiles {
                ca,
                cert,
                key,
                crls: vec![],
            }),
            _ => Err(usage(
                "no client certificate: pass --as NAME (with --pki-dir) or --ca, --cert and --key (or ROLLOUT_AS, ROLLOUT_CA, ROLLOUT_CERT, ROLLOUT_KEY)",
            )),
        }
    }

    /// A client for the coordinator.
    pub fn client(&self) -> Result<Client, CliError> {
        let config = tls::client_config(&self.files()?, None).map_err(|e| local(e.to_string()))?;
        let channel = tls::channel(&self.coordinator, config).map_err(|e| usage(e.to_string()))?;
        Ok(CoordinatorServiceClient::new(channel).with_message_limits())
    }
}

/// A failure, said in a way that tells the operator what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line was not understood (a malformed scope or time, a missing flag):
    /// nothing was sent. Exit 64 ([`Exit::Usage`](crate::cmd::Exit::Usage)).
    #[error("{0}")]
    Usage(String),
    /// Local set-up (certificate files, the runtime), or a question answered no.
    #[error("{0}")]
    Local(String),
    /// The coordinator answered with an error, explained (see [`CliError::explained`]).
    #[error("{0}")]
    Call(String),
    /// The coordinator answered with an error, not yet explained: `?` on a call gives this.
    #[error("{0}")]
    Status(#[from] tonic::Status),
    /// Standard output could not be written.
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
}

/// A [`CliError::Usage`]: the command line was not understood.
pub fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// A [`CliError::Local`]: something here failed, or the operator said no.
pub fn local(msg: impl Into<String>) -> CliError {
    CliError::Local(msg.into())
}

impl CliError {
    /// A coordinator's error explained (see [`crate::hints`]): the code, the reason
    /// (`google.rpc.ErrorInfo`), the message, the field violations and a hint where one helps.
    pub fn explained(self, connection: &Connection) -> CliError {
        let CliError::Status(s) = self else {
            return self;
        };
        let files = connection.files().ok();
        CliError::Call(hints::explain(
            &s,
            hints::Target {
                coordinator: &connection.coordinator,
                ca: files.as_ref().map(|f| f.ca.as_path()),
                cert: files.as_ref().map(|f| f.cert.as_path()),
            },
        ))
    }

    /// Whether standard output was closed under us (`rolloutctl ... | head -1`): the command
    /// then ends quietly, with success, as other command-line tools do.
    pub fn is_closed_output(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// A List answer whose pages join into one.
pub(crate) trait Paged: Default {
    /// The token of the page after this one; empty on the last page.
    fn next_page_token(&self) -> &str;
    /// How many items it holds.
    fn len(&self) -> usize;
    /// Appends the next page's items and takes its token.
    fn join(&mut self, next: Self);
}

macro_rules! paged {
    ($($response:ty => $items:ident),* $(,)?) => {$(
        impl Paged for $response {
            fn next_page_token(&self) -> &str {
                &self.next_page_token
            }
            fn len(&self) -> usize {
                self.$items.len()
            }
            fn join(&mut self, next: Self) {
                self.$items.extend(next.$items);
                self.next_page_token = next.next_page_token;
            }
        }
    )*};
}

paged!(
    pb::ListFeaturesResponse => features,
    pb::ListCommandsResponse => commands,
    pb::ListAuditEventsResponse => events,
);

/// The coordinator's refusal counters come with every page: the latest stay.
impl Paged for pb::ListSuppliersResponse {
    fn next_page_token(&self) -> &str {
        &self.next_page_token
    }
    fn len(&self) -> usize {
        self.suppliers.len()
    }
    fn join(&mut self, next: Self) {
        self.suppliers.extend(next.suppliers);
        self.next_page_token = next.next_page_token;
        if next.coordinator_refusal_audit.is_some() {
            self.coordinator_refusal_audit = next.coordinator_refusal_audit;
        }
        // On every page: the last page's are the newest.
        self.coordinator_tls_warnings = next.coordinator_tls_warnings;
    }
}

/// The register's counts cover every page (the server sends them with each): the first page's
/// stay.
impl Paged for pb::ListOptOutsResponse {
    fn next_page_token(&self) -> &str {
        &self.next_page_token
    }
    fn len(&self) -> usize {
        self.opt_outs.len()
    }
    fn join(&mut self, next: Self) {
        self.opt_outs.extend(next.opt_outs);
        self.next_page_token = next.next_page_token;
        if self.counts.is_empty() {
            self.counts = next.counts;
        }
    }
}

/// The pages of a List joined into one answer, up to `most` items: `ask(client, page_token,
/// page_size)` asks for one page of at most `max_page` items. Pages end at the server's byte
/// budget as well as at `page_size`, so a long history of large commands comes in many pages;
/// each is read within the client's 4 MiB limit. The answer's `next_page_token` continues
/// after its last item (empty when there is no more).
pub(crate) async fn pages<R: Paged, F>(
    client: &Client,
    most: usize,
    max_page: usize,
    mut ask: impl FnMut(Client, String, i32) -> F,
) -> Result<R, tonic::Status>
where
    F: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    let mut all = R::default();
    loop {
        let size = (most - all.len()).min(max_page);
        let page = ask(
            client.clone(),
            all.next_page_token().to_owned(),
            i32::try_from(size).unwrap_or(i32::MAX),
        )
        .await?
        .into_inner();
        all.join(page);
        if all.next_page_token().is_empty() || all.len() >= most {
            return Ok(all);
        }
    }
}

#[cfg(test)]
mod tests {
    use rollout_proto::v1 as pb;

    use super::Paged;

    #[test]
    fn joined_register_pages_keep_the_counts_the_server_sent() {
        let count = pb::list_opt_outs_response::Count {
            supplier: "suppliers/emis".into(),
            feature: "features/f".into(),
            opted_out: 3,
            withdrawn: 1,
        };
        let page = |name: &str, token: &str| pb::ListOptOutsResponse {
            opt_outs: vec![pb::PracticeOptOut {
                name: name.into(),
                ..Default::default()
            }],
            next_page_token: token.into(),
            counts: vec![count.clone()],
        };
        let mut first = page("a", "t");
        first.join(page("b", ""));
        assert_eq!(first.len(), 2);
        assert_eq!(first.next_page_token(), "");
        assert_eq!(first.counts, [count]);
    }
}
