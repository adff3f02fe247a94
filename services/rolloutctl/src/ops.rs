//! The operator commands: each talks to the coordinator over mutual TLS and prints a table or
//! the protobuf JSON of the answer (`--output json`, the same mapping grpcurl prints).

use std::{
    fmt::Write as _,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant, SystemTime},
};

use clap::{Args, Subcommand, ValueEnum};
use prost::Message;
use rollout_net::{
    MessageLimits,
    tls::{self, TlsFiles},
    wire,
};
use rollout_proto::v1::{self as pb, coordinator_service_client::CoordinatorServiceClient};
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// How to reach the coordinator and who to be.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The coordinator's address (host:port).
    #[arg(
        long,
        global = true,
        env = "ROLLOUT_COORDINATOR",
        default_value = "localhost:50050"
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
    /// Output format of read commands.
    #[arg(
        long,
        global = true,
        env = "ROLLOUT_OUTPUT",
        value_enum,
        default_value = "table"
    )]
    pub output: Output,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables and sentences for people.
    Table,
    /// The answer as protobuf JSON, for scripts.
    Json,
    /// Only the names of the resources written or listed (commands/ID, features/KEY), one a
    /// line, for shell variables: HALT=$(rolloutctl --output name halt ...).
    Name,
}

/// An operator command.
#[derive(Debug, Clone, Subcommand)]
pub enum Op {
    /// Feature definitions.
    Feature {
        #[command(subcommand)]
        command: FeatureOp,
    },
    /// Halt a feature in a scope, at once and until further notice.
    Halt {
        /// The feature key.
        feature: String,
        /// national | supplier:ID | region:CODE | icb:CODE | sub-icb:CODE | practices:ODS,ODS...
        #[arg(long)]
        scope: String,
        /// Why, in words the practices and suppliers will read.
        #[arg(long)]
        reason: String,
        /// Only show which practices at which suppliers it would cover.
        #[arg(long)]
        dry_run: bool,
        /// Wait until every supplier has applied it, verify it, and print the time from issue
        /// to verified.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Idempotency key (UUID4) so that a retry does not halt twice.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Ask to lift halts (waits for approval by a different approver).
    Resume {
        /// The feature key.
        feature: String,
        /// A halt to lift (command id); repeat for several.
        #[arg(long = "halt", required = true)]
        halts: Vec<String>,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Only show the impact.
        #[arg(long)]
        dry_run: bool,
        /// Idempotency key (UUID4).
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Ask to switch a feature on in a scope (waits for approval by a different approver).
    GoLive {
        /// The feature key.
        feature: String,
        /// The scope, as for halt.
        #[arg(long)]
        scope: String,
        /// When it takes effect (RFC 3339, for example 2026-12-01T09:00:00Z); default at once.
        #[arg(long)]
        at: Option<String>,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Only show the impact.
        #[arg(long)]
        dry_run: bool,
        /// Idempotency key (UUID4).
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Approve a pending command (you must hold the approver role and not be its requester).
    Approve {
        /// The command id.
        command: String,
        /// A comment kept with the approval.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Withdraw a command still waiting for approval.
    Cancel {
        /// The command id.
        command: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Commands.
    Commands {
        #[command(subcommand)]
        command: CommandsOp,
    },
    /// Follow a command's delivery until every supplier has answered. Exits 2 if a supplier
    /// rejected it, 3 on timeout.
    Watch {
        /// The command id.
        command: String,
        /// How long to wait.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Every supplier and whether it is in sync.
    Status,
    /// List practices in a halt's scope still enabled at any supplier. Exits 2 if any.
    Verify {
        /// The halt's command id.
        command: String,
    },
    /// A practice's live, explained answer from its supplier.
    Practice {
        #[command(subcommand)]
        command: PracticeOp,
    },
    /// The coordinator's audit log (role auditor).
    Audit {
        #[command(subcommand)]
        command: AuditOp,
    },
    /// Recover into the coordinator's log the commands a DIVERGED supplier holds beyond it
    /// (after the coordinator was restored from an older backup). Run with --dry-run first to
    /// see what would be recovered.
    Recover {
        /// The supplier to read the commands from, for example `emis`.
        #[arg(long = "from")]
        supplier: String,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
        /// Only show what would be recovered.
        #[arg(long)]
        dry_run: bool,
        /// Idempotency key (UUID4).
        #[arg(long)]
        request_id: Option<String>,
    },
}

/// Feature subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum FeatureOp {
    /// Define a feature (delivered to every supplier).
    Create {
        /// The feature key, a lower-case slug.
        #[arg(value_name = "KEY")]
        feature: String,
        /// static (keep serving when out of contact) or closed (off after the control TTL).
        #[arg(long, value_parser = ["static", "closed"])]
        fail_mode: String,
        /// For --fail-mode closed: how long without contact before off (10s to 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        control_ttl: Option<Duration>,
        /// Approvals a resume or go-live needs (1 to 5).
        #[arg(long, default_value_t = 1)]
        approvals: i32,
        /// What it is.
        #[arg(long, default_value = "")]
        description: String,
        /// Why it is being defined.
        #[arg(long)]
        reason: String,
    },
    /// Every feature.
    List,
}

/// Commands subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum CommandsOp {
    /// Commands, newest first.
    List {
        /// Only this feature's.
        #[arg(long)]
        feature: Option<String>,
        /// Only in this state: pending, dispatched, cancelled.
        #[arg(long, value_parser = ["pending", "dispatched", "cancelled"])]
        state: Option<String>,
    },
    /// One command with its approvals and deliveries.
    Show {
        /// The command id.
        command: String,
    },
}

/// Practice subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum PracticeOp {
    /// Is the feature on at the practice, and why.
    Show {
        /// The ODS code.
        ods: String,
        /// The feature key.
        #[arg(long, default_value = "prospective-record-access")]
        feature: String,
    },
}

/// Audit subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum AuditOp {
    /// Audit events, oldest first.
    List {
        /// Only events after this sequence.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Read the whole log and check its hash chain. Exits 2 if it is broken.
    Verify,
}

/// A failure, said in a way that tells the operator what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Local set-up (certificates, arguments).
    #[error("{0}")]
    Usage(String),
    /// The coordinator answered with an error.
    #[error("{0}")]
    Call(String),
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// Explains a status from the coordinator.
fn explain(coordinator: &str, s: &tonic::Status) -> CliError {
    let reason = s
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default();
    let hint = match s.code() {
        tonic::Code::Unavailable => format!(
            "\nhint: is the coordinator running at {coordinator}? (`rolloutctl dev up` starts a local stack; --coordinator or ROLLOUT_COORDINATOR sets the address)"
        ),
        tonic::Code::PermissionDenied => {
            "\nhint: use a certificate whose identity holds the role this needs (--as, --cert/--key)".into()
        }
        _ => String::new(),
    };
    let detail = if s.message().is_empty() {
        format!("{s}")
    } else {
        s.message().to_owned()
    };
    CliError::Call(format!(
        "{:?}{}: {detail}{hint}",
        s.code(),
        if reason.is_empty() {
            String::new()
        } else {
            format!(" ({reason})")
        }
    ))
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
    pub fn client(&self) -> Result<CoordinatorServiceClient<Channel>, CliError> {
        let config = tls::client_config(&self.files()?, None).map_err(|e| usage(e.to_string()))?;
        let channel = tls::channel(&self.coordinator, config).map_err(|e| usage(e.to_string()))?;
        Ok(CoordinatorServiceClient::new(channel).with_message_limits())
    }
}

/// Prints `msg` as protobuf JSON.
pub fn json(msg: &impl Message, full_name: &str) -> String {
    let pool = prost_reflect::DescriptorPool::decode(rollout_proto::FILE_DESCRIPTOR_SET)
        .expect("the compiled descriptor set decodes");
    let desc = pool
        .get_message_by_name(full_name)
        .expect("message is in the descriptor set");
    let dynamic = prost_reflect::DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .expect("message re-decodes");
    serde_json::to_string_pretty(&dynamic).expect("JSON")
}

fn scope(s: &str) -> Result<pb::Scope, CliError> {
    use pb::scope::Target;
    let (kind, value) = s.split_once(':').unwrap_or((s, ""));
    let target = match kind {
        "national" if value.is_empty() => Target::National(pb::scope::National {}),
        "supplier" => Target::Supplier(value.into()),
        "region" => Target::Region(value.into()),
        "icb" => Target::Icb(value.into()),
        "sub-icb" => Target::SubIcb(value.into()),
        "practices" => Target::Practices(pb::scope::PracticeList {
            practices: value
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
        }),
        _ => {
            return Err(usage(format!(
                "scope {s:?} not understood: use national, supplier:ID, region:CODE, icb:CODE, sub-icb:CODE or practices:ODS,ODS"
            )));
        }
    };
    Ok(pb::Scope { target: Some(target) })
}

/// A rule's scope as an operator reads it: `national`, `icb QN7`, `list of 5000`.
fn scope_summary(s: &pb::ScopeSummary) -> String {
    use pb::scope_summary::Kind;
    match s.kind() {
        Kind::PracticeList => format!("list of {}", s.practice_count),
        Kind::National | Kind::Unspecified => "national".to_owned(),
        k => format!(
            "{} {}",
            k.as_str_name()
                .trim_start_matches("KIND_")
                .to_lowercase()
                .replace('_', "-"),
            s.target
        ),
    }
}

fn cmd_name(id: &str) -> String {
    if id.starts_with("commands/") {
        id.to_owned()
    } else {
        format!("commands/{id}")
    }
}

fn short(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn when(t: &Option<prost_types::Timestamp>) -> String {
    t.and_then(|t| SystemTime::try_from(t).ok())
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .unwrap_or_else(|| "-".into())
}

fn command_table(c: &pb::Command) -> String {
    let action = match &c.action {
        Some(pb::command::Action::Halt(_)) => "halt",
        Some(pb::command::Action::Resume(_)) => "resume",
        Some(pb::command::Action::GoLive(_)) => "go-live",
        Some(pb::command::Action::CreateFeature(_)) => "create-feature",
        None => "-",
    };
    let mut out = format!(
        "command   {}\naction    {action} {}\nstate     {}\nsequence  {}\nrequester {}\nreason    {}\n",
        short(&c.name),
        short(&c.feature),
        c.state().as_str_name().trim_start_matches("STATE_"),
        c.sequence,
        c.requester,
        c.reason
    );
    if let Some(i) = &c.impact {
        let per: Vec<String> = i
            .suppliers
            .iter()
            .map(|s| format!("{} {}", short(&s.supplier), s.practices))
            .collect();
        let _ = writeln!(out, "impact    {} practices ({})", i.practices, per.join(", "));
    }
    for a in &c.approvals {
        let _ = writeln!(out, "approved  by {} at {}", a.approver, when(&a.approve_time));
    }
    if c.state() == pb::command::State::PendingApproval {
        let _ = writeln!(
            out,
            "waiting   for {} approval(s) by a different approver",
            c.approvals_required - c.approvals.len() as i32
        );
    }
    for d in &c.deliveries {
        let _ = writeln!(
            out,
            "delivery  {:<10} {:<8} applied {} acknowledged {}{}",
            short(&d.supplier),
            d.state().as_str_name().trim_start_matches("STATE_"),
            when(&d.apply_time),
            when(&d.acknowledge_time),
            if d.rejection_reason.is_empty() {
                String::new()
            } else {
                format!(" rejected: {}", d.rejection_reason)
            }
        );
    }
    out
}

fn print_command(c: &pb::Command, output: Output) {
    match output {
        Output::Json => println!("{}", json(c, "nhs.gprollout.v1.Command")),
        Output::Name => println!("{}", c.name),
        Output::Table => print!("{}", command_table(c)),
    }
}

/// A List answer whose pages join into one.
trait Paged: Default {
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
    pb::ListSuppliersResponse => suppliers,
    pb::ListAuditEventsResponse => events,
);

/// The pages of a List joined into one answer, up to `most` items: `ask(page_token,
/// page_size)` asks for one page of at most `max_page` items. Pages end at the server's byte
/// budget as well as at `page_size`, so a long history of large commands comes in many pages;
/// each is read within the client's 4 MiB limit. The answer's `next_page_token` continues
/// after its last item (empty when there is no more).
async fn pages<R: Paged, F>(
    most: usize,
    max_page: usize,
    mut ask: impl FnMut(String, i32) -> F,
) -> Result<R, tonic::Status>
where
    F: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    let mut all = R::default();
    loop {
        let size = (most - all.len()).min(max_page);
        let page = ask(
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

/// The outcome of a command: its exit status.
pub type Outcome = Result<ExitCode, CliError>;

fn request_id(given: Option<String>) -> String {
    given.unwrap_or_default()
}

/// Runs an operator command.
pub async fn run(conn: &Connection, op: Op) -> Outcome {
    let mut c = conn.client()?;
    let out = conn.output;
    let call = |s: tonic::Status| explain(&conn.coordinator, &s);
    match op {
        Op::Feature {
            command:
                FeatureOp::Create {
                    feature: key,
                    fail_mode,
                    control_ttl,
                    approvals,
                    description,
                    reason,
                },
        } => {
            let feature = pb::Feature {
                description,
                fail_mode: if fail_mode == "closed" {
                    pb::FailMode::Closed
                } else {
                    pb::FailMode::Static
                }
                .into(),
                control_ttl: control_ttl.and_then(|d| prost_types::Duration::try_from(d).ok()),
                approvals_required: approvals,
                ..Default::default()
            };
            let f = c
                .create_feature(pb::CreateFeatureRequest {
                    feature_id: key,
                    feature: Some(feature),
                    reason,
                    request_id: String::new(),
                })
                .await
                .map_err(call)?
                .into_inner();
            match out {
                Output::Json => println!("{}", json(&f, "nhs.gprollout.v1.Feature")),
                Output::Name => println!("{}", f.name),
                Output::Table => println!("created {} (sequence {})", f.name, f.sequence),
            }
        }
        Op::Feature {
            command: FeatureOp::List,
        } => {
            let r: pb::ListFeaturesResponse = pages(usize::MAX, 1_000, |page_token, page_size| {
                let mut c = c.clone();
                async move {
                    c.list_features(pb::ListFeaturesRequest {
                        page_size,
                        page_token,
                    })
                    .await
                }
            })
            .await
            .map_err(call)?;
            match out {
                Output::Json => println!("{}", json(&r, "nhs.gprollout.v1.ListFeaturesResponse")),
                Output::Name => r.features.iter().for_each(|f| println!("{}", f.name)),
                Output::Table => {
                    println!(
                        "{:<32} {:<12} {:>9} {:>8}",
                        "FEATURE", "FAIL MODE", "APPROVALS", "SEQUENCE"
                    );
                    for f in &r.features {
                        println!(
                            "{:<32} {:<12} {:>9} {:>8}",
                            short(&f.name),
                            f.fail_mode().as_str_name().trim_start_matches("FAIL_MODE_"),
                            f.approvals_required,
                            f.sequence
                        );
                    }
                }
            }
        }
        Op::Halt {
            feature,
            scope: s,
            reason,
            dry_run,
            wait,
            timeout,
            request_id: rid,
        } => {
            let issued = Instant::now();
            let cmd = c
                .halt_feature(pb::HaltFeatureRequest {
                    name: format!("features/{feature}"),
                    scope: Some(scope(&s)?),
                    reason,
                    request_id: request_id(rid),
                    dry_run,
                })
                .await
                .map_err(call)?
                .into_inner();
            print_command(&cmd, out);
            if wait && !dry_run {
                return wait_and_verify(&mut c, conn, &cmd.name, issued, timeout).await;
            }
        }
        Op::Resume {
            feature,
            halts,
            reason,
            dry_run,
            request_id: rid,
        } => {
            let cmd = c
                .resume_feature(pb::ResumeFeatureRequest {
                    name: format!("features/{feature}"),
                    halts: halts.iter().map(|h| cmd_name(h)).collect(),
                    reason,
                    request_id: request_id(rid),
                    dry_run,
                })
                .await
                .map_err(call)?
                .into_inner();
            print_command(&cmd, out);
        }
        Op::GoLive {
            feature,
            scope: s,
            at,
            reason,
            dry_run,
            request_id: rid,
        } => {
            let effective_time = at
                .map(|t| {
                    humantime::parse_rfc3339_weak(&t).map_err(|e| {
                        usage(format!(
                            "--at {t:?}: {e}; use RFC 3339, e.g. 2026-12-01T09:00:00Z"
                        ))
                    })
                })
                .transpose()?
                .map(wire::timestamp);
            let cmd = c
                .schedule_go_live(pb::ScheduleGoLiveRequest {
                    name: format!("features/{feature}"),
                    scope: Some(scope(&s)?),
                    effective_time,
                    reason,
                    request_id: request_id(rid),
                    dry_run,
                })
                .await
                .map_err(call)?
                .into_inner();
            print_command(&cmd, out);
        }
        Op::Approve { command, comment } => {
            let cmd = c
                .approve_command(pb::ApproveCommandRequest {
                    name: cmd_name(&command),
                    comment,
                    request_id: String::new(),
                })
                .await
                .map_err(call)?
                .into_inner();
            print_command(&cmd, out);
        }
        Op::Cancel { command, reason } => {
            let cmd = c
                .cancel_command(pb::CancelCommandRequest {
                    name: cmd_name(&command),
                    reason,
                    request_id: String::new(),
                })
                .await
                .map_err(call)?
                .into_inner();
            print_command(&cmd, out);
        }
        Op::Commands {
            command: CommandsOp::Show { command },
        } => {
            let cmd = c
                .get_command(pb::GetCommandRequest {
                    name: cmd_name(&command),
                })
                .await
                .map_err(call)?
                .into_inner();
            print_command(&cmd, out);
        }
        Op::Commands {
            command: CommandsOp::List { feature, state },
        } => {
            let state = match state.as_deref() {
                Some("pending") => pb::command::State::PendingApproval,
                Some("dispatched") => pb::command::State::Dispatched,
                Some("cancelled") => pb::command::State::Cancelled,
                _ => pb::command::State::Unspecified,
            };
            let feature = feature.map(|f| format!("features/{f}")).unwrap_or_default();
            let r: pb::ListCommandsResponse = pages(usize::MAX, 500, |page_token, page_size| {
                let mut c = c.clone();
                let request = pb::ListCommandsRequest {
                    feature: feature.clone(),
                    state: state.into(),
                    page_size,
                    page_token,
                };
                async move { c.list_commands(request).await }
            })
            .await
            .map_err(call)?;
            match out {
                Output::Json => println!("{}", json(&r, "nhs.gprollout.v1.ListCommandsResponse")),
                Output::Name => r.commands.iter().for_each(|c| println!("{}", c.name)),
                Output::Table => {
                    println!(
                        "{:<36} {:>4} {:<16} {:<28} {:<18} REQUESTER",
                        "COMMAND", "SEQ", "STATE", "FEATURE", "ACTION"
                    );
                    for cmd in &r.commands {
                        let action = match &cmd.action {
                            Some(pb::command::Action::Halt(_)) => "halt",
                            Some(pb::command::Action::Resume(_)) => "resume",
                            Some(pb::command::Action::GoLive(_)) => "go-live",
                            Some(pb::command::Action::CreateFeature(_)) => "create-feature",
                            None => "-",
                        };
                        println!(
                            "{:<36} {:>4} {:<16} {:<28} {:<18} {}",
                            short(&cmd.name),
                            cmd.sequence,
                            cmd.state().as_str_name().trim_start_matches("STATE_"),
                            short(&cmd.feature),
                            action,
                            cmd.requester
                        );
                    }
                }
            }
        }
        Op::Watch { command, timeout } => {
            return watch(&mut c, conn, &cmd_name(&command), timeout)
                .await
                .map(|(code, _)| code);
        }
        Op::Status => {
            let r: pb::ListSuppliersResponse = pages(usize::MAX, 100, |page_token, page_size| {
                let mut c = c.clone();
                async move {
                    c.list_suppliers(pb::ListSuppliersRequest {
                        page_size,
                        page_token,
                    })
                    .await
                }
            })
            .await
            .map_err(call)?;
            match out {
                Output::Json => println!("{}", json(&r, "nhs.gprollout.v1.ListSuppliersResponse")),
                Output::Name => r.suppliers.iter().for_each(|s| println!("{}", s.name)),
                Output::Table => {
                    println!(
                        "{:<10} {:<9} {:>7} {:>6} {:>8} {:>7} {:>9} {:<25} CONFLICTS / LAST ERROR",
                        "SUPPLIER",
                        "STATE",
                        "APPLIED",
                        "TARGET",
                        "ENABLED",
                        "HALTED",
                        "OPTED-OUT",
                        "LAST CONTACT"
                    );
                    for s in &r.suppliers {
                        let (enabled, halted, opted): (i32, i32, i32) =
                            s.feature_counts.iter().fold((0, 0, 0), |(e, h, o), f| {
                                (e + f.enabled, h + f.halted, o + f.opted_out)
                            });
                        let extra = if !s.divergence.is_empty() {
                            format!(
                                "{} (see: rolloutctl recover --from {} --reason \"...\" --dry-run)",
                                s.divergence,
                                short(&s.name)
                            )
                        } else if s.conflicts.is_empty() {
                            s.last_error.clone()
                        } else {
                            s.conflicts.join(" ")
                        };
                        println!(
                            "{:<10} {:<9} {:>7} {:>6} {:>8} {:>7} {:>9} {:<25} {}",
                            short(&s.name),
                            s.state().as_str_name().trim_start_matches("STATE_"),
                            s.applied_sequence,
                            s.target_sequence,
                            enabled,
                            halted,
                            opted,
                            when(&s.last_contact_time),
                            extra
                        );
                    }
                }
            }
        }
        Op::Verify { command } => {
            let r = c
                .verify_command(pb::VerifyCommandRequest {
                    name: cmd_name(&command),
                })
                .await
                .map_err(call)?
                .into_inner();
            print_verify(&r, out);
            if !r.verified {
                return Ok(ExitCode::from(2));
            }
        }
        Op::Practice {
            command: PracticeOp::Show { ods, feature },
        } => {
            let p = c
                .get_practice_status(pb::GetPracticeStatusRequest {
                    name: format!("practices/{ods}/features/{feature}"),
                })
                .await
                .map_err(call)?
                .into_inner();
            match out {
                Output::Json => println!("{}", json(&p, "nhs.gprollout.v1.PracticeFeature")),
                Output::Name => println!("{}", p.name),
                Output::Table => {
                    println!("{}\n{}", p.name, p.explanation);
                    for r in &p.rules {
                        println!(
                            "  {} {:<8} {:<8} {} {:<22} {} by {}: {}",
                            if r.deciding { "*" } else { " " },
                            r.kind().as_str_name().trim_start_matches("KIND_"),
                            r.status().as_str_name().trim_start_matches("STATUS_"),
                            if r.command.is_empty() {
                                "opt-out"
                            } else {
                                short(&r.command)
                            },
                            r.scope.as_ref().map(scope_summary).unwrap_or_default(),
                            when(&r.issue_time),
                            r.issued_by,
                            r.reason
                        );
                    }
                    if p.omitted_rules > 0 {
                        println!(
                            "  ... and {} more rules in force (newest and deciding shown)",
                            p.omitted_rules
                        );
                    }
                }
            }
        }
        Op::Audit {
            command: AuditOp::List { after, limit },
        } => {
            let r = audit_events(&c, after, limit as usize).await.map_err(call)?;
            match out {
                Output::Json => println!("{}", json(&r, "nhs.gprollout.v1.ListAuditEventsResponse")),
                Output::Name => r.events.iter().for_each(|e| println!("{}", e.sequence)),
                Output::Table => {
                    for e in &r.events {
                        println!(
                            "{:>6} {} {:<8} {} {} {} {}",
                            e.sequence,
                            when(&e.event_time),
                            e.outcome().as_str_name().trim_start_matches("OUTCOME_"),
                            e.identity,
                            short(&e.action),
                            e.target,
                            e.reason
                        );
                    }
                }
            }
        }
        Op::Audit {
            command: AuditOp::Verify,
        } => {
            let events: Vec<_> = audit_events(&c, 0, usize::MAX)
                .await
                .map_err(call)?
                .events
                .iter()
                .map(wire::audit_from_pb)
                .collect();
            return Ok(match rollout_core::audit::verify_chain(&events) {
                Ok(n) => {
                    println!(
                        "audit chain verified: {n} events, last hash {}",
                        events.last().map_or("-", |e| e.hash.as_str())
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("audit chain BROKEN: {e}");
                    ExitCode::from(2)
                }
            });
        }
        Op::Recover {
            supplier,
            reason,
            dry_run,
            request_id: id,
        } => {
            let r = c
                .recover_commands(pb::RecoverCommandsRequest {
                    supplier: format!("suppliers/{supplier}"),
                    reason,
                    dry_run,
                    request_id: request_id(id),
                })
                .await
                .map_err(call)?
                .into_inner();
            print_recovery(&r, out);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_recovery(r: &pb::RecoverCommandsResponse, out: Output) {
    match out {
        Output::Json => println!("{}", json(r, "nhs.gprollout.v1.RecoverCommandsResponse")),
        Output::Name => {
            for c in &r.commands {
                println!("{}", c.name);
            }
        }
        Output::Table => {
            println!(
                "{} {} commands from {}: the log goes from sequence {} to {}",
                if r.dry_run { "would recover" } else { "recovered" },
                r.command_count,
                short(&r.supplier),
                r.from_sequence,
                r.to_sequence
            );
            println!(
                "{:>8} {:<14} {:<36} {:<22} {:<10} REASON",
                "SEQUENCE", "ACTION", "COMMAND", "SCOPE", "OUTCOME"
            );
            for c in &r.commands {
                println!(
                    "{:>8} {:<14} {:<36} {:<22} {:<10} {}",
                    c.sequence,
                    c.action,
                    short(&c.name),
                    c.scope.as_ref().map(scope_summary).unwrap_or_default(),
                    if c.rejected { "rejected" } else { "applied" },
                    c.reason
                );
            }
            if usize::try_from(r.command_count).unwrap_or(0) > r.commands.len() {
                println!(
                    "... {} more not listed",
                    r.command_count as usize - r.commands.len()
                );
            }
            if r.dry_run {
                println!("nothing was changed; run again without --dry-run to recover them");
            }
        }
    }
}

/// Up to `most` audit events after the sequence `after`, oldest first.
async fn audit_events(
    c: &CoordinatorServiceClient<Channel>,
    after: i64,
    most: usize,
) -> Result<pb::ListAuditEventsResponse, tonic::Status> {
    pages(most, 1_000, |page_token, page_size| {
        let mut c = c.clone();
        async move {
            c.list_audit_events(pb::ListAuditEventsRequest {
                page_size,
                page_token,
                after_sequence: after,
            })
            .await
        }
    })
    .await
}

fn print_verify(r: &pb::VerifyCommandResponse, out: Output) {
    match out {
        Output::Json => println!("{}", json(r, "nhs.gprollout.v1.VerifyCommandResponse")),
        Output::Name => println!("{}", r.command),
        Output::Table => {
            println!(
                "{} {}",
                short(&r.command),
                if r.verified {
                    "VERIFIED: no practice in scope is enabled"
                } else {
                    "NOT VERIFIED"
                }
            );
            for s in &r.suppliers {
                println!(
                    "  {:<10} in scope {:>5}  still enabled {:>5}{}",
                    short(&s.supplier),
                    s.checked_count,
                    s.enabled_count,
                    if s.error.is_empty() {
                        String::new()
                    } else {
                        format!("  error: {}", s.error)
                    }
                );
            }
        }
    }
}

/// Follows a command until every supplier has answered. Returns the exit status and the last
/// view.
async fn watch(
    c: &mut CoordinatorServiceClient<Channel>,
    conn: &Connection,
    name: &str,
    timeout: Duration,
) -> Result<(ExitCode, Option<pb::Command>), CliError> {
    let call = |s: tonic::Status| explain(&conn.coordinator, &s);
    let progress = conn.output == Output::Table;
    let follow = async {
        let mut stream = c
            .watch_command(pb::WatchCommandRequest {
                name: name.to_owned(),
            })
            .await
            .map_err(call)?
            .into_inner();
        let mut last: Option<pb::Command> = None;
        let mut reported = std::collections::HashSet::new();
        while let Some(update) = stream.message().await.map_err(call)? {
            let Some(cmd) = update.command else { continue };
            if progress {
                for d in &cmd.deliveries {
                    if d.state() != pb::delivery::State::Pending && reported.insert(d.supplier.clone()) {
                        println!(
                            "{:<10} {}{}",
                            short(&d.supplier),
                            d.state().as_str_name().trim_start_matches("STATE_"),
                            if d.rejection_reason.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", d.rejection_reason)
                            }
                        );
                    }
                }
                let answered = cmd
                    .deliveries
                    .iter()
                    .filter(|d| d.state() != pb::delivery::State::Pending)
                    .count();
                println!("{answered}/{} suppliers answered", cmd.deliveries.len());
            }
            let done = update.complete;
            last = Some(cmd);
            if done {
                break;
            }
        }
        Ok::<_, CliError>(last)
    };
    match tokio::time::timeout(timeout, follow).await {
        Err(_) => {
            eprintln!(
                "timed out after {} waiting for every supplier to answer",
                humantime::format_duration(timeout)
            );
            Ok((ExitCode::from(3), None))
        }
        Ok(result) => {
            let last = result?;
            if conn.output == Output::Json
                && let Some(cmd) = &last
            {
                println!("{}", json(cmd, "nhs.gprollout.v1.Command"));
            }
            let rejected = last.as_ref().is_some_and(|c| {
                c.deliveries
                    .iter()
                    .any(|d| d.state() == pb::delivery::State::Rejected)
            });
            if rejected {
                eprintln!("at least one supplier rejected the command (a conflict): see `rolloutctl status`");
            }
            Ok((
                if rejected {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                },
                last,
            ))
        }
    }
}

/// `halt --wait`: follows the halt until every supplier applied it, verifies it, and prints the
/// time from issue to verified.
async fn wait_and_verify(
    c: &mut CoordinatorServiceClient<Channel>,
    conn: &Connection,
    name: &str,
    issued: Instant,
    timeout: Duration,
) -> Outcome {
    let (code, _) = watch(c, conn, name, timeout).await?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let r = c
        .verify_command(pb::VerifyCommandRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(|s| explain(&conn.coordinator, &s))?
        .into_inner();
    let elapsed = issued.elapsed();
    print_verify(&r, conn.output);
    if r.verified {
        let line = format!("time to a verified halt: {} ms", elapsed.as_millis());
        match conn.output {
            Output::Table => println!("{line}"),
            Output::Json | Output::Name => eprintln!("{line}"),
        }
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(2))
    }
}
