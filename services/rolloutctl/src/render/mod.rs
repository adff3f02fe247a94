//! What the operator commands print, apart from the calls that fetch it: one [`Printer`] that
//! knows the output format and where output goes, and a [`View`] per answer (a table for
//! people, the resource names for scripts; protobuf JSON for every message alike).
//!
//! Everything printed goes through the [`Printer`], whose writes return their errors instead
//! of panicking as `println!` does: a closed standard output (`rolloutctl ... | head -1`) ends
//! the command quietly (see [`crate::client::CliError::is_closed_output`]).

mod command;
mod resource;
mod verify;

use std::{
    fmt::{self, Display},
    io::{self, Write},
    time::SystemTime,
};

use clap::ValueEnum;
use prost::{Message, Name};
use rollout_proto::v1 as pb;

pub use command::answered;
pub use verify::supplier_verified;

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

/// An answer as the commands print it. Its JSON is the protobuf JSON mapping of the message
/// (what grpcurl prints), found by its type name.
pub trait View: Message + Name {
    /// For people: a table or sentences.
    fn table(&self, w: &mut dyn Write) -> io::Result<()>;
    /// The names of the resources it holds, one a line for `--output name`.
    fn names(&self) -> Vec<String>;
}

/// Where the commands' output goes, in the format asked for.
pub struct Printer {
    output: Output,
    out: Box<dyn Write>,
}

impl fmt::Debug for Printer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Printer")
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

impl Printer {
    /// A printer to standard output.
    pub fn stdout(output: Output) -> Printer {
        Printer::new(output, Box::new(io::stdout()))
    }

    /// A printer to `out`.
    pub fn new(output: Output, out: Box<dyn Write>) -> Printer {
        Printer { output, out }
    }

    /// The output format.
    pub fn output(&self) -> Output {
        self.output
    }

    /// Prints an answer in the output format.
    pub fn print(&mut self, view: &impl View) -> io::Result<()> {
        match self.output {
            Output::Table => view.table(&mut self.out),
            Output::Json => writeln!(self.out, "{}", json(view)),
            Output::Name => view.names().iter().try_for_each(|n| writeln!(self.out, "{n}")),
        }
    }

    /// A view shown to a person before a question (see `cmd::confirm`): its table, on standard
    /// output with tables, otherwise on standard error so that standard output stays JSON or
    /// names.
    pub fn preview(&mut self, view: &impl View) -> io::Result<()> {
        match self.output {
            Output::Table => view.table(&mut self.out),
            Output::Json | Output::Name => view.table(&mut io::stderr()),
        }
    }

    /// A line only people read, such as progress: printed with tables, left out otherwise.
    pub fn progress(&mut self, line: impl Display) -> io::Result<()> {
        match self.output {
            Output::Table => writeln!(self.out, "{line}"),
            Output::Json | Output::Name => Ok(()),
        }
    }

    /// A line for people: on standard output with tables, otherwise on standard error so that
    /// standard output stays JSON or names.
    pub fn say(&mut self, line: impl Display) -> io::Result<()> {
        match self.output {
            Output::Table => writeln!(self.out, "{line}"),
            Output::Json | Output::Name => {
                warn(line);
                Ok(())
            }
        }
    }

    /// A line on standard output in every format.
    pub fn line(&mut self, line: impl Display) -> io::Result<()> {
        writeln!(self.out, "{line}")
    }
}

/// A line on standard error. Nothing is left to tell if standard error is closed, so a failed
/// write is ignored rather than a panic (as `eprintln!` would).
pub fn warn(line: impl Display) {
    let _ = writeln!(io::stderr(), "{line}");
}

/// `msg` as protobuf JSON, through its descriptor in the compiled descriptor set.
pub fn json<M: Message + Name>(msg: &M) -> String {
    serde_json::to_string_pretty(&json_value(msg)).expect("JSON")
}

/// `msg` as a protobuf JSON value, to place in a larger document.
pub use rollout_net::wire::json_value;

/// The last segment of a resource name: `emis` for `suppliers/emis`.
pub fn short(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// A time as RFC 3339 with milliseconds; `-` when unset.
fn when(t: &Option<prost_types::Timestamp>) -> String {
    t.and_then(|t| SystemTime::try_from(t).ok())
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .unwrap_or_else(|| "-".into())
}

/// A rule's scope as an operator reads it: `national`, `icb QN7`, `list of 5000`.
fn scope_summary(s: &Option<pb::ScopeSummary>) -> String {
    use pb::scope_summary::Kind;
    let Some(s) = s else {
        return String::new();
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_output_is_an_error_that_ends_the_command_quietly() {
        let command = pb::Command {
            name: "commands/x".into(),
            ..Default::default()
        };
        for output in [Output::Table, Output::Json, Output::Name] {
            let err = Printer::new(output, Box::new(Closed))
                .print(&command)
                .expect_err("a closed output fails");
            assert!(crate::client::CliError::from(err).is_closed_output());
        }
    }

    #[test]
    fn json_finds_a_message_by_its_type_name() {
        let feature = pb::Feature {
            name: "features/f".into(),
            ..Default::default()
        };
        let printed: serde_json::Value = serde_json::from_str(&json(&feature)).expect("JSON");
        assert_eq!(printed["name"], "features/f");
    }
}
