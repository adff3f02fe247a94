//! A connection that failed, with its cause found in the chain of the error's sources: nothing
//! listening, an address that cannot be reached, the coordinator's certificate refused here
//! (not valid for the name dialled, expired, from a CA not in the bundle), or this client's
//! refused there (an alert, or a connection closed as it opened). Certificate dates in words.

use std::{error::Error, io, path::Path};

use rustls::{CertificateError, pki_types::UnixTime};
use tonic::Status;

use super::Target;

/// Why the connection failed.
#[derive(Debug)]
enum Cause<'e> {
    /// Nothing listens there.
    Refused,
    /// The address could not be resolved or reached in time.
    Unreachable(String),
    /// The TLS handshake failed here: the coordinator's certificate, or not TLS at all.
    Tls(&'e rustls::Error),
    /// The coordinator sent a TLS alert (`UnknownCA`, `CertificateExpired`, ...): it refused
    /// this client's certificate.
    Alert(String),
    /// The coordinator closed the connection as it opened (in TLS 1.3 a refused client
    /// certificate often shows so, its alert unread).
    Closed,
}

/// `cannot connect to HOST:PORT: what`, with a hint naming the cause; `None` if the failure
/// is not a connection's or its cause is not known.
pub(super) fn failed(status: &Status, target: Target<'_>) -> Option<String> {
    let at = target.coordinator;
    let (what, hint) = match cause(status)? {
        Cause::Refused => (
            "connection refused".to_owned(),
            format!(
                "nothing accepts connections at {at}: is the coordinator running there, on that port? (`rolloutctl dev up` starts a local stack; --coordinator or ROLLOUT_COORDINATOR sets the address)"
            ),
        ),
        Cause::Unreachable(why) => (
            why,
            "check the host name and the network path to it (--coordinator or ROLLOUT_COORDINATOR sets the address)".to_owned(),
        ),
        Cause::Tls(e) => ("the TLS handshake failed".to_owned(), tls_hint(e, target)),
        Cause::Alert(alert) => (
            "the coordinator refused the TLS handshake".to_owned(),
            refused_certificate(Some(&alert), target),
        ),
        Cause::Closed => (
            "the coordinator closed the connection as it opened".to_owned(),
            refused_certificate(None, target),
        ),
    };
    Some(format!("cannot connect to {at}: {what}\nhint: {hint}"))
}

/// The first cause the chain of `status`'s sources names. rustls's errors are found by type
/// where they keep it, and by their words where a reader turned them into text.
fn cause(status: &Status) -> Option<Cause<'_>> {
    let mut next: Option<&(dyn Error + 'static)> = status.source();
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(Cause::Tls(tls));
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(Cause::Tls(tls));
            }
            match io.kind() {
                io::ErrorKind::ConnectionRefused => return Some(Cause::Refused),
                io::ErrorKind::TimedOut
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable
                | io::ErrorKind::AddrNotAvailable => return Some(Cause::Unreachable(io.to_string())),
                io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::UnexpectedEof => return Some(Cause::Closed),
                _ => {}
            }
        }
        let words = e.to_string();
        if let Some(alert) = words.strip_prefix("received fatal alert: ") {
            return Some(Cause::Alert(alert.to_owned()));
        }
        if words == "connection closed" {
            return Some(Cause::Closed);
        }
        if words.contains("failed to lookup address") {
            return Some(Cause::Unreachable(words));
        }
        next = e.source();
    }
    None
}

/// The hint for a TLS handshake that failed here.
fn tls_hint(e: &rustls::Error, target: Target<'_>) -> String {
    let at = target.coordinator;
    let ca = target
        .ca
        .map_or_else(|| "your CA bundle".to_owned(), |p| p.display().to_string());
    match e {
        rustls::Error::InvalidCertificate(c) => server_certificate_hint(c, at, &ca),
        rustls::Error::AlertReceived(alert) => refused_certificate(Some(&format!("{alert:?}")), target),
        rustls::Error::InvalidMessage(_) => format!(
            "the server at {at} does not speak TLS: is that a plaintext health port rather than the coordinator's gRPC port?"
        ),
        other => format!("the TLS handshake with {at} failed: {other}"),
    }
}

/// The hint for a coordinator certificate this client refused.
fn server_certificate_hint(c: &CertificateError, at: &str, ca: &str) -> String {
    match c {
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            let names: Vec<String> = presented.iter().filter_map(|p| dns_name(p)).collect();
            let port = at.rsplit_once(':').map_or("", |(_, p)| p);
            let instead = names
                .first()
                .map(|n| format!(": use --coordinator {n}:{port}"))
                .unwrap_or_default();
            format!(
                "the coordinator's certificate is not valid for the name {:?} you dialled; it is valid for {}{instead}",
                expected.to_str(),
                if names.is_empty() {
                    presented.join(", ")
                } else {
                    names.join(", ")
                }
            )
        }
        CertificateError::NotValidForName => format!(
            "the coordinator's certificate is not valid for the name in {at}: dial it by a name its certificate carries"
        ),
        CertificateError::ExpiredContext { not_after, .. } => format!(
            "the coordinator's certificate expired on {} ({}): its operators must renew it (docs/RUNBOOK.md, \"Certificate rotation\")",
            date(*not_after),
            ago(*not_after)
        ),
        CertificateError::NotValidYetContext { not_before, .. } => format!(
            "the coordinator's certificate is not valid until {}: check this machine's clock, or wait",
            date(*not_before)
        ),
        CertificateError::Expired | CertificateError::NotValidYet => {
            "the coordinator's certificate is outside its validity dates: its operators must renew it, or this machine's clock is wrong".into()
        }
        CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
            "the coordinator's certificate was not issued by a CA in {ca}: pass the CA bundle that issued it with --ca (or ROLLOUT_CA)"
        ),
        CertificateError::Revoked => "the coordinator's certificate has been revoked".into(),
        other => format!("the coordinator's certificate was refused: {other}"),
    }
}

/// The hint for a client certificate the coordinator refused (`alert`, such as `UnknownCA`,
/// if it was read), with the certificate's own dates when they are the cause.
fn refused_certificate(alert: Option<&str>, target: Target<'_>) -> String {
    let yours = target.cert.map_or_else(
        || "your certificate".to_owned(),
        |p| format!("your certificate {}", p.display()),
    );
    if let Some(v) = target
        .cert
        .and_then(certificate_validity)
        .filter(|v| !v.current())
    {
        return format!(
            "the coordinator refused {yours}: {}; ask for a new one (docs/RUNBOOK.md, \"Certificate rotation\")",
            v.said()
        );
    }
    match alert {
        Some("UnknownCA") => format!(
            "the coordinator does not trust the CA that issued {yours}: use a certificate from the CA it trusts"
        ),
        Some("CertificateRevoked") => {
            format!("the coordinator refused {yours}: it has been revoked; ask for a new one")
        }
        Some("CertificateExpired") => format!(
            "the coordinator refused {yours} as expired or not yet valid, though its dates are current here: check the clocks"
        ),
        Some(other) => format!(
            "the coordinator refused {yours} ({other}): check that it is a client certificate from the CA the coordinator trusts"
        ),
        None => format!(
            "either it was shutting down or restarting (try again in a moment), or it refused {yours} (issued by a CA it does not trust, or revoked: its log then says `tls handshake refused` with the reason)"
        ),
    }
}

/// The DNS name in rustls's rendering of a presented name (`DnsName("localhost")`).
fn dns_name(presented: &str) -> Option<String> {
    presented
        .strip_prefix("DnsName(\"")
        .and_then(|s| s.strip_suffix("\")"))
        .map(str::to_owned)
}

/// A certificate's validity dates, in UNIX seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Not before.
    pub not_before: i64,
    /// Not after.
    pub not_after: i64,
}

impl Validity {
    /// Whether now is within the dates.
    fn current(&self) -> bool {
        (self.not_before..=self.not_after).contains(&now())
    }

    /// Where now stands against the dates, in words: `it expired on 2026-11-30 12:00 UTC (2
    /// days ago)`.
    fn said(&self) -> String {
        let at = |s: i64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(s.max(0).unsigned_abs()));
        if self.not_after < now() {
            format!(
                "it expired on {} ({})",
                date(at(self.not_after)),
                ago(at(self.not_after))
            )
        } else if self.not_before > now() {
            format!("it is not valid until {}", date(at(self.not_before)))
        } else {
            format!("it is valid until {}", date(at(self.not_after)))
        }
    }
}

fn now() -> i64 {
    i64::try_from(UnixTime::now().as_secs()).unwrap_or(i64::MAX)
}

/// The validity dates of the first certificate in a PEM file.
pub fn certificate_validity(path: &Path) -> Option<Validity> {
    let pem = std::fs::read(path).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let v = cert.validity();
    Some(Validity {
        not_before: v.not_before.timestamp(),
        not_after: v.not_after.timestamp(),
    })
}

/// A time as `2026-11-30 12:00 UTC`.
pub fn date(t: UnixTime) -> String {
    let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(d) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute()
        ),
        Err(_) => format!("{secs} seconds after 1970"),
    }
}

/// How long ago `t` was, roughly: `3 days ago`, `5 hours ago`, `2 minutes ago`.
fn ago(t: UnixTime) -> String {
    let secs = UnixTime::now().as_secs().saturating_sub(t.as_secs());
    let (n, unit) = match secs {
        s if s >= 2 * 86_400 => (s / 86_400, "days"),
        s if s >= 2 * 3_600 => (s / 3_600, "hours"),
        s if s >= 120 => (s / 60, "minutes"),
        s => (s, "seconds"),
    };
    format!("{n} {unit} ago")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn dates_are_said_in_words() {
        let t = UnixTime::since_unix_epoch(Duration::from_secs(1_796_040_000));
        assert_eq!(date(t), "2026-11-30 12:00 UTC");
        let expired = CertificateError::ExpiredContext {
            time: UnixTime::now(),
            not_after: t,
        };
        let text = server_certificate_hint(&expired, "localhost:1", "ca.pem");
        assert!(text.contains("expired on 2026-11-30 12:00 UTC"), "{text}");
        assert!(!text.contains("1796040000"), "{text}");
    }

    #[test]
    fn an_alert_read_as_words_is_a_cause() {
        let words = io::Error::new(io::ErrorKind::InvalidData, "received fatal alert: UnknownCA");
        let status = Status::from_error(Box::new(words));
        let target = Target {
            coordinator: "localhost:1",
            ca: None,
            cert: Some(Path::new("alice.pem")),
        };
        let said = failed(&status, target).expect("a connection failure");
        assert!(
            said.contains("does not trust the CA that issued your certificate alice.pem"),
            "{said}"
        );
    }
}
