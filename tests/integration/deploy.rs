//! The deployment material parses, and the example configuration names every setting.

use std::path::{Path, PathBuf};

use crate::support::binary;

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read deploy/") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn every_yaml_and_toml_file_in_deploy_parses() {
    let mut all = Vec::new();
    files(&deploy(), &mut all);
    let (mut yaml, mut toml_files) = (0, 0);
    for path in &all {
        let text = std::fs::read_to_string(path).expect("read");
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => {
                let docs = yaml_rust2::YamlLoader::load_from_str(&text)
                    .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
                // Kubernetes manifests name their kind; the Prometheus files are checked by
                // promtool (.ci/run) and loaded by a real Prometheus (metrics::prometheus).
                let manifests = path.starts_with(deploy().join("kubernetes"));
                for doc in docs.iter().filter(|_| manifests) {
                    assert!(
                        !doc["kind"].is_badvalue(),
                        "{}: a document without a kind",
                        path.display()
                    );
                    assert!(
                        !doc["apiVersion"].is_badvalue(),
                        "{}: a document without an apiVersion",
                        path.display()
                    );
                }
                yaml += docs.len();
            }
            Some("toml") => {
                text.parse::<toml::Table>()
                    .unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", path.display()));
                toml_files += 1;
            }
            _ => {}
        }
    }
    assert!(yaml >= 10, "Kubernetes documents found: {yaml}");
    assert!(toml_files >= 3, "TOML files found: {toml_files}");
    // The role policies the services would load are valid policies, not just valid TOML.
    for policy in ["config/supplier-policy.toml", "config/coordinator-policy.toml"] {
        rollout_net::RolePolicy::load(&deploy().join(policy)).expect(policy);
    }
    // The coordinator's example names the person behind its operators: two identities of one
    // person, one of another.
    let coordinator =
        rollout_net::RolePolicy::load(&deploy().join("config/coordinator-policy.toml")).expect("policy");
    let person = |who: &str| coordinator.person(&format!("spiffe://gprollout.test/operator/{who}"));
    assert!(person("alice").is_some() && person("alice") == person("alice-smartcard"));
    assert!(person("bob").is_some() && person("bob") != person("alice"));
    rollout_coordinator::read_suppliers(&deploy().join("config/suppliers.toml")).expect("suppliers.toml");
}

/// The `[env: NAME=]` settings a binary's --help lists.
fn env_settings(program: &str) -> Vec<String> {
    let out = std::process::Command::new(binary(program))
        .arg("--help")
        .output()
        .expect("run --help");
    let help = String::from_utf8_lossy(&out.stdout);
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split('=').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_example_configuration_documents_every_setting() {
    for (program, file) in [
        ("rollout-supplier", "config/supplier.env"),
        ("rollout-coordinator", "config/coordinator.env"),
    ] {
        let text = std::fs::read_to_string(deploy().join(file)).expect("read");
        let settings = env_settings(program);
        assert!(
            settings.len() >= 10,
            "{program} --help lists its settings: {settings:?}"
        );
        for name in settings {
            assert!(
                text.contains(&format!("{name}=")),
                "{file} does not document {name}"
            );
        }
    }
}
