//! A test PKI whose CA the test holds: the local stack's identities written as `rolloutctl pki
//! init` writes them (`ca.pem`, `NAME.pem`, `NAME-key.pem`), so that every harness reads it
//! as it reads the dev PKI, and the CA kept to revoke certificates and issue replacements.

use std::{collections::BTreeMap, path::Path};

use rolloutctl::pki::{DevCa, IdentitySpec, Issued, Validity, local_stack_identities};

/// The CA and the serial number of every identity's certificate, by file name.
pub struct TestPki {
    pub ca: DevCa,
    pub serials: BTreeMap<String, u64>,
}

impl TestPki {
    /// Writes a new CA and every local-stack identity into `dir`.
    pub fn write(dir: &Path) -> TestPki {
        std::fs::create_dir_all(dir).expect("pki directory");
        let ca = DevCa::new("GP Rollout Control test CA").expect("ca");
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("write ca");
        let mut serials = BTreeMap::new();
        for spec in local_stack_identities() {
            let issued = ca.issue(&spec, Validity::default()).expect("issue");
            install(dir, &spec.name, &issued);
            serials.insert(spec.name.clone(), issued.serial);
        }
        TestPki { ca, serials }
    }

    /// A CRL of this CA revoking the certificates of `names`.
    pub fn crl(&self, names: &[&str]) -> String {
        let serials: Vec<u64> = names.iter().map(|n| self.serials[*n]).collect();
        self.ca.crl(&serials).expect("crl")
    }
}

/// Issues `spec` from `ca` over `validity`.
pub fn issue(ca: &DevCa, spec: &IdentitySpec, validity: Validity) -> Issued {
    ca.issue(spec, validity).expect("issue")
}

/// Writes `issued` as `NAME.pem` and `NAME-key.pem` in `dir`, each file replaced whole (written
/// aside, then renamed over the old one), the key first.
pub fn install(dir: &Path, name: &str, issued: &Issued) {
    for (file, contents) in [
        (format!("{name}-key.pem"), &issued.key_pem),
        (format!("{name}.pem"), &issued.cert_pem),
    ] {
        let aside = dir.join(format!(".{file}.new"));
        std::fs::write(&aside, contents).expect("write");
        std::fs::rename(&aside, dir.join(file)).expect("rename");
    }
}
