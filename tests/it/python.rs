//! The API driven by real clients nobody here wrote: Python's `requests` over HTTP and `grpcio`
//! over gRPC (stubs generated at run time from `proto/proto`). The scenario and its checks are in
//! `tests/python/test_clients.py`; this test starts the cluster, makes the tenants and keys, and
//! runs the script in the venv `scripts/py-env.sh` makes.

use std::path::PathBuf;
use std::time::Duration;

use tests::{ADMIN_TOKEN, Cluster};

/// Longer than the script ever needs (a few seconds); a hang fails instead of blocking the run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// The workspace's directory.
pub(crate) fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_path_buf()
}

/// The venv's Python (`scripts/py-env.sh` makes it; scripts/test.sh runs that first).
pub(crate) fn venv_python() -> PathBuf {
    let python = repo_root().join("target/py-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/py-env.sh` first (scripts/test.sh does)",
        python.display()
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_and_requests_clients() {
    let root = repo_root();
    let python = venv_python();
    let script = root.join("tests/python/test_clients.py");

    let cluster = Cluster::start(2).await;
    let key_a = cluster.tenant("py-http", None).await;
    let key_b = cluster.tenant("py-grpc", None).await;
    let key_readonly = cluster.key("py-http", &["read"], None).await;

    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .current_dir(&root)
        .env("VV_HTTP", cluster.http.to_string())
        .env("VV_GRPC", cluster.grpc.to_string())
        .env("VV_KEY_A", &key_a)
        .env("VV_KEY_B", &key_b)
        .env("VV_TENANT_A", "py-http")
        .env("VV_KEY_READONLY", &key_readonly)
        .env("VV_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("{} did not finish in {SCRIPT_TIMEOUT:?}", script.display()))
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed with {}; the checks marked FAIL below failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        script.display(),
        output.status
    );
    // Shown with `--no-capture`: every check and what it compared.
    println!("{stdout}{stderr}");
    cluster.shutdown().await;
}
