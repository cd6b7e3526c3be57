//! The dashboard in a real browser: headless Chromium driven by selenium
//! (`tests/python/browser_dashboard.py`), through nginx running the config of `deploy/` over
//! TLS, logging in through the test's OpenID Connect provider and its GitHub-style one. The
//! browser sees the overview with its charts, creates a key and uses it against the API, revokes
//! it, invites a member, reads the verified audit log and logs out; screenshots of each page are
//! kept in `target/test-artifacts/dashboard/`. Needs `chromium`, `chromium-driver` and `nginx`
//! (`scripts/browser-env.sh` installs them; `scripts/test.sh` runs it).

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::super::python::repo_root;
use super::start_at;

/// Reads the driver's lines until one starts with `prefix`; its rest.
async fn line_starting(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    prefix: &str,
    within: Duration,
) -> String {
    loop {
        let line = tokio::time::timeout(within, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the browser driver printed no {prefix:?} in {within:?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the browser driver exited before {prefix:?}"));
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.trim().to_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_through_nginx_manages_keys_and_members_reads_the_audit_log_and_logs_out()
{
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(tool).exists(),
            "{tool} is missing: run `bash scripts/browser-env.sh` (scripts/test.sh does)"
        );
    }
    let artifacts = repo_root().join("target/test-artifacts/dashboard");
    let _ = std::fs::remove_dir_all(&artifacts);
    let python = crate::python::venv_python();
    let mut driver = tokio::process::Command::new(&python)
        .arg(repo_root().join("tests/python/browser_dashboard.py"))
        .arg(&artifacts)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(driver.stdout.take().unwrap()).lines();
    let port = line_starting(&mut lines, "PORT ", Duration::from_secs(60)).await;
    // The dashboard is reached where nginx listens, as the browser sees it.
    let h = start_at(&format!("https://localhost:{port}")).await;
    h.idp
        .control(
            "/test/user",
            json!({"email": "alice@example.com", "verified": true, "sub": "alice-browser"}),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = h.ca.server_cert();
    let (cert_file, key_file, ca_file) = (
        dir.path().join("nginx.pem"),
        dir.path().join("nginx.key"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    h.ca.write_cert(&ca_file);
    let setup = json!({
        "upstream": h.cluster.http.to_string(),
        "cert": cert_file,
        "key": key_file,
        "ca": ca_file,
        "tenant": "acme",
        "invite": "carol@example.com",
    });
    let mut stdin = driver.stdin.take().unwrap();
    stdin
        .write_all(format!("{setup}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let result = line_starting(&mut lines, "RESULT ", Duration::from_secs(300)).await;
    let status = tokio::time::timeout(Duration::from_secs(60), driver.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the browser driver failed: {status}");
    let result: Value = serde_json::from_str(&result).unwrap();
    assert_eq!(result["api_with_key"], 200, "{result}");
    assert_eq!(result["api_after_revoke"], 401, "{result}");
    assert_eq!(result["audit_verified"], true, "{result}");
    assert_eq!(result["settings_saved"], true, "{result}");
    let shots = result["screenshots"].as_array().unwrap();
    assert!(shots.len() >= 10, "{result}");
    for shot in shots {
        let file = artifacts.join(shot.as_str().unwrap());
        let bytes = std::fs::read(&file).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{}", file.display());
    }

    // What the browser did is in the tenant's chain, in alice's name, and verifies.
    let key_id = result["key_id"].as_str().unwrap();
    for action in ["key.create", "key.revoke", "member.add", "settings.update"] {
        let rows = h.audit("acme", action).await;
        assert!(
            rows.iter().any(|r| r["actor"] == "user:alice@example.com"
                && (!action.starts_with("key.") || r["resource"] == key_id)),
            "{action}: {rows:?}"
        );
    }
    let logins = h.audit("platform", "dashboard.login").await;
    let providers: Vec<&str> = logins
        .iter()
        .filter_map(|r| r["details"]["provider"].as_str())
        .collect();
    assert!(
        providers.contains(&"idp") && providers.contains(&"github"),
        "{logins:?}"
    );
    let (status, verified) = h
        .cluster
        .admin("POST", "/admin/v1/audit/acme/verify", None)
        .await;
    assert_eq!(status, 200, "{verified}");
    h.cluster.shutdown().await;
}
