//! `coordinator/openapi.json` says what the server does: `schemathesis`, a schema-driven fuzzer,
//! generates requests for every data route from the document the server serves, valid ones and
//! ones that break the schema, and fails on any 5xx, any status, content type, header or body the
//! document does not allow, and any request that breaks the schema but is accepted. It runs from
//! the venv `scripts/py-env.sh` makes, with a fixed seed and a bounded number of examples, so a run
//! is repeatable and stays within about two minutes.
//!
//! Not checked: that every request the document allows is accepted. JSON Schema cannot say some
//! of the server's rules (an integer written `24.0`, `min_should` at most the number of `should`
//! conditions, keys counted in bytes, a vector's length against the collection's `dim`,
//! `ef_construction` at least `m`); the document states them in descriptions.

use std::path::PathBuf;
use std::time::Duration;

use tests::Cluster;

/// Longer than the run ever needs; a hang fails instead of blocking the test run.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_server_under_schemathesis() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_path_buf();
    let schemathesis = root.join("target/py-venv/bin/schemathesis");
    assert!(
        schemathesis.exists(),
        "{} is missing: run `bash scripts/py-env.sh` first (scripts/test.sh does)",
        schemathesis.display()
    );
    let cluster = Cluster::start(1).await;
    let key = cluster.tenant("schema-fuzz", None).await;
    let base = cluster.url("");
    let run = tokio::process::Command::new(&schemathesis)
        .arg("run")
        .arg(cluster.url("/openapi.json"))
        .args(["--url", &base])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        // The tenant data API; the admin API is not fuzzed (it would pause and delete tenants).
        .args(["--include-path-regex", "^/v1/"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,negative_data_rejection",
        ])
        .args(["--max-examples", "15", "--seed", "1", "--workers", "1"])
        .args(["--no-color", "--output-truncate", "false"])
        // Hypothesis keeps its example database in the working directory: the cluster's temp dir.
        .current_dir(cluster.dir())
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RUN_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("schemathesis did not finish in {RUN_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("running {}: {e}", schemathesis.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found answers the document does not allow ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("passed"),
        "schemathesis ran no test case\n{stdout}"
    );
    cluster.shutdown().await;
}
