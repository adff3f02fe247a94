//! What makes certificate files unusable or stale, judged from the certificates themselves
//! (RFC 5280: a certificate's validity period; a CRL's nextUpdate).

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::FromDer;

use super::{Identity, TlsError, pem_items};

/// A certificate's validity period, or `None` if it does not parse.
pub(super) fn validity(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let v = cert.validity();
    Some((time(v.not_before.timestamp()), time(v.not_after.timestamp())))
}

/// When a certificate stops being valid (its notAfter), or `None` if it does not parse.
pub fn not_after(der: &CertificateDer<'_>) -> Option<SystemTime> {
    validity(der).map(|(_, until)| until)
}

fn time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

/// A time as an operator reads it in a log: RFC 3339, to the second.
fn shown(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Whether `leaf` (the certificate of `path`, already read) is one to present now: valid at
/// `now`, and carrying `identity` when given (the identity this process started with). The
/// key's match with it is rustls's check, when the configuration is built.
pub(super) fn usable(
    path: &Path,
    leaf: &CertificateDer<'_>,
    identity: Option<&Identity>,
    now: SystemTime,
) -> Result<(), TlsError> {
    let unusable = |why: String| TlsError::Unusable {
        path: path.to_owned(),
        why,
    };
    let (from, until) = validity(leaf).ok_or_else(|| unusable("the certificate does not parse".into()))?;
    if now < from {
        return Err(unusable(format!(
            "the certificate is not valid until {} (check the clock, or wait)",
            shown(from)
        )));
    }
    if now > until {
        return Err(unusable(format!("the certificate expired at {}", shown(until))));
    }
    if let Some(expected) = identity {
        let found = Identity::of_certificate(leaf);
        if found.as_ref() != Some(expected) {
            return Err(unusable(format!(
                "the certificate is for {}, not {expected}, the identity this server started with",
                found.map_or_else(|| "no identity".to_owned(), |i| i.to_string())
            )));
        }
    }
    Ok(())
}

/// When one CRL is due to be replaced (its nextUpdate), to judge at any time whether it is
/// stale: a CRL goes stale by time passing, not only by an old file being loaded.
#[derive(Debug, Clone)]
pub(super) struct CrlDue {
    issuer: String,
    path: String,
    next_update: SystemTime,
}

/// The due time of every CRL of `paths` that has one (unreadable CRLs fail loading first).
pub(super) fn crl_dues(paths: &[impl AsRef<Path>]) -> Vec<CrlDue> {
    let mut dues = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let Ok(crls) = pem_items::<CertificateRevocationListDer<'static>>(path, "CRL") else {
            continue;
        };
        for der in crls {
            let Ok((_, crl)) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der) else {
                continue;
            };
            if let Some(next) = crl.next_update() {
                dues.push(CrlDue {
                    issuer: crl.issuer().to_string(),
                    path: path.display().to_string(),
                    next_update: time(next.timestamp()),
                });
            }
        }
    }
    dues
}

/// One warning per CRL of `dues` past its nextUpdate at `now`: its revocations are still
/// enforced, but revocations made since are not known.
pub(super) fn stale_crls(dues: &[CrlDue], now: SystemTime) -> Vec<String> {
    dues.iter()
        .filter(|d| d.next_update < now)
        .map(|d| {
            format!(
                "the CRL of {} in {} was due to be replaced at {}: the revocations it lists are \
                 still enforced, but any made since are not known; install a current CRL",
                d.issuer,
                d.path,
                shown(d.next_update)
            )
        })
        .collect()
}
