//! Part 5's status page: with the long history issued through the coordinator, how long each
//! view's JSON takes to answer, and (with Chromium and Playwright for Python, as the browser
//! test uses them) how long each view takes to load and paint in a real browser.

#[path = "../../integration/web/https.rs"]
mod https;

use super::*;

/// Requests of each JSON view, after the first.
const REPEATS: usize = 6;

/// Prints the page's figures against the coordinator's status page at `web`, its history at
/// `target` commands; `practice` is an ODS code for the practice view.
pub(crate) async fn status_page_figures(pki: &Path, web: SocketAddr, practice: &str, target: i64) {
    println!(
        "   the status page with {target} commands (HTTPS with a client certificate, a new connection a request):"
    );
    let practice_path = format!("/api/practices?q={practice}");
    let views = [
        ("national picture", "/api/national", "viewer"),
        ("commands, newest 20", "/api/commands", "viewer"),
        (
            "practice (read live from its supplier)",
            practice_path.as_str(),
            "viewer",
        ),
        ("audit (the chain checked on the first)", "/api/audit", "auditor"),
        ("the page itself", "/", "viewer"),
    ];
    for (label, path, who) in views {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..=REPEATS {
            let t = Instant::now();
            let (status, body) = https::get(pki, who, web, path).await;
            times.push(t.elapsed());
            assert_eq!(status, 200, "{path}: {body}");
            bytes = body.len();
        }
        let first = times.remove(0);
        println!(
            "          {label}: first {}, then {} (median of {REPEATS}); {:.0} KiB",
            ms(first),
            ms(median(times)),
            bytes as f64 / 1024.0
        );
    }
    browser_figures(pki, web, practice).await;
}

/// Loads each view in Chromium through `tests/web/status_page.py` (timing mode) and prints its
/// figures, or says why it could not.
async fn browser_figures(pki: &Path, web: SocketAddr, practice: &str) {
    let python = std::env::var_os("ROLLOUT_TEST_PYTHON").filter(|p| !p.is_empty());
    let chromium = std::env::var_os("ROLLOUT_TEST_CHROMIUM")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let Some(python) = python.filter(|_| chromium.is_file()) else {
        println!(
            "          in a browser: not measured (set ROLLOUT_TEST_PYTHON to a Python with tests/web/requirements.txt, and install Debian's chromium)"
        );
        return;
    };
    let pem = |file: String| pki.join(file).display().to_string();
    let identity = |name: &str| serde_json::json!({"cert": pem(format!("{name}.pem")), "key": pem(format!("{name}-key.pem"))});
    let config = serde_json::json!({
        "mode": "timing",
        "origin": format!("https://localhost:{}", web.port()),
        "chromium": chromium,
        "identities": {"viewer": identity("viewer"), "auditor": identity("auditor")},
        "practice": practice,
        "screenshots": std::env::temp_dir(),
    });
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tokio::process::Command::new(python)
        .arg("tests/web/status_page.py")
        .current_dir(&workspace)
        .env("ROLLOUT_WEB_TEST", config.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .await
        .expect("run the browser script");
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        println!(
            "          in a browser: failed: {}",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        );
        return;
    }
    for line in text.lines().filter_map(|l| l.strip_prefix("TIMING ")) {
        println!("          in Chromium: {line}");
    }
}
