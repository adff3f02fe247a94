//! Trust over time: certificates, CRLs and the role policy change while the servers run.
//! `open.rs`: an operator's connection already open is refused at its next call once its
//! certificate is revoked (CRL reload) or its identity leaves the role policy (policy reload),
//! and a policy file that does not parse changes nothing; against a real coordinator process,
//! whose log says when each reload took effect. `rotation.rs`: the coordinator's own
//! certificate rotated to one from a second CA (a CA bundle rollover) and the old one left to
//! expire; deliveries go on without a restart. `crl.rs`: a supplier revoked in
//! `--supplier-crl` refused by the coordinator; a CRL past its next update enforced and shown
//! in status.

mod crl;
mod open;
mod rotation;
