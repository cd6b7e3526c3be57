//! A restore cut short at each of its steps: the coordinator (a real `vaultvec-coordinator`
//! process, built with the test crash points) aborts at a step, is started again, and the
//! tenant ends wholly on one side: with the files it had and the restore recorded `error`, or
//! wholly restored and recorded `ok`, with every point of that side, no staging left on the
//! worker, and writes taken again. A worker killed in the middle of the staging leaves the
//! tenant as it was too.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::{Cluster, binary};

use super::snapshots::{count, restore};

/// A coordinator and one worker, each a real process, on a directory `init` wrote.
struct Processes {
    _dir: tempfile::TempDir,
    root: PathBuf,
    http: String,
    admin_token: String,
    coordinator: Option<std::process::Child>,
    worker: Option<tokio::process::Child>,
    client: reqwest::Client,
}

/// `text` with every `127.0.0.1:<port>` in `[listen]` replaced, in order, by `ports`.
fn with_ports(text: &str, ports: &[String]) -> String {
    let mut out = String::new();
    let mut next = ports.iter();
    for line in text.lines() {
        let name = line.split('=').next().unwrap_or("").trim();
        match line.find("\"127.0.0.1:") {
            Some(at) if ["http", "grpc", "cluster", "metrics"].contains(&name) => {
                out.push_str(&format!(
                    "{}\"{}\"",
                    &line[..at],
                    next.next().expect("a port per listener")
                ));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

impl Processes {
    async fn start() -> Processes {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        let init = std::process::Command::new(binary("vaultvec-coordinator"))
            .args(["init", "--workers", "1", "--dir"])
            .arg(&root)
            .stdout(std::process::Stdio::null())
            .output()
            .expect("init");
        assert!(init.status.success(), "init failed: {init:?}");
        let config = root.join("coordinator.toml");
        let text = std::fs::read_to_string(&config).expect("config");
        let any = vec!["127.0.0.1:0".to_owned(); 4];
        std::fs::write(&config, with_ports(&text, &any)).expect("config");
        let admin_token = std::fs::read_to_string(root.join("secrets/admin.token"))
            .expect("admin token")
            .trim()
            .to_owned();
        let mut processes = Processes {
            _dir: dir,
            root,
            http: String::new(),
            admin_token,
            coordinator: None,
            worker: None,
            client: reqwest::Client::new(),
        };
        processes.start_coordinator(None);
        processes.start_worker();
        processes.wait_for_worker().await;
        processes
    }

    /// Starts the coordinator, aborting at `failpoint` if one is given. The first start learns
    /// the ports it was given and writes them into its config and the worker's, so that later
    /// starts take the same ones.
    fn start_coordinator(&mut self, failpoint: Option<&str>) {
        assert!(self.coordinator.is_none());
        let config = self.root.join("coordinator.toml");
        let mut command = std::process::Command::new(binary("vaultvec-coordinator"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped());
        if let Some(failpoint) = failpoint {
            command.env("VAULTVEC_FAILPOINT", failpoint);
        }
        let mut child = command.spawn().expect("starting vaultvec-coordinator");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("reading the listening line");
        assert!(line.starts_with("listening "), "coordinator said {line:?}");
        let addr = |name: &str| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix(&format!("{name}=")))
                .expect("an address per listener")
                .to_owned()
        };
        if self.http.is_empty() {
            let ports: Vec<String> = ["http", "grpc", "cluster", "metrics"]
                .iter()
                .map(|n| addr(n))
                .collect();
            let text = std::fs::read_to_string(&config).expect("config");
            std::fs::write(&config, with_ports(&text, &ports)).expect("config");
            let worker = self.root.join("worker-1.toml");
            let text = std::fs::read_to_string(&worker).expect("worker config");
            let text: String = text
                .lines()
                .map(|l| {
                    if l.starts_with("coordinator_url") {
                        format!("coordinator_url = \"ws://{}/v1/cluster\"\n", ports[2])
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect();
            // Back within a fraction of a second of each restart of the coordinator.
            let text = format!("{text}reconnect_max_backoff = \"200ms\"\n");
            std::fs::write(&worker, text).expect("worker config");
        }
        self.http = addr("http");
        self.coordinator = Some(child);
    }

    fn start_worker(&mut self) {
        let child = tokio::process::Command::new(binary("vaultvec-worker"))
            .arg("--config")
            .arg(self.root.join("worker-1.toml"))
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("starting vaultvec-worker");
        self.worker = Some(child);
    }

    /// Waits until the coordinator has the worker connected.
    async fn wait_for_worker(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = self.client.get(self.url("/v1/health")).send().await
                && let Ok(body) = response.json::<Value>().await
                && body["workers_connected"] == 1
            {
                return;
            }
            assert!(Instant::now() < deadline, "the worker never connected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the coordinator process to end (it aborted at its crash point).
    fn wait_for_abort(&mut self) {
        let status = self
            .coordinator
            .take()
            .expect("running")
            .wait()
            .expect("wait");
        assert!(!status.success(), "the coordinator did not abort: {status}");
    }

    fn stop_coordinator(&mut self) {
        let mut child = self.coordinator.take().expect("running");
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(child.wait().expect("wait").success());
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        bearer: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method.parse().unwrap(), self.url(path))
            .bearer_auth(bearer);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, path, &self.admin_token, body).await
    }

    async fn put(&self, key: &str, ids: std::ops::Range<u64>, tag: &str) {
        let points: Vec<Value> = ids
            .map(|id| json!({"id": id, "vector": [id as f32, 1.0, -1.0, 0.5], "payload": {"tag": tag}}))
            .collect();
        let (status, body) = self
            .call(
                "PUT",
                "/v1/collections/docs/points",
                key,
                Some(json!({ "points": points })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// The tenant's point count, once it answers (not `restoring`).
    async fn settled_count(&self, key: &str) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self
                .call(
                    "POST",
                    "/v1/collections/docs/points/count",
                    key,
                    Some(json!({})),
                )
                .await;
            if status == 200 {
                return body["count"].as_u64().unwrap();
            }
            assert_eq!(status, 503, "{body}");
            assert!(
                Instant::now() < deadline,
                "the tenant never answered: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The rows of the tenant's chain with `action`, in order.
    async fn rows(&self, tenant: &str, action: &str) -> Vec<Value> {
        let (status, export) = self
            .admin("GET", &format!("/admin/v1/audit/{tenant}"), None)
            .await;
        assert_eq!(status, 200, "{export}");
        super::cluster::audit_rows(&export, action)
    }

    /// The outcomes of the tenant's `snapshot.restore` rows, in order.
    async fn restore_rows(&self, tenant: &str) -> Vec<String> {
        self.rows(tenant, "snapshot.restore")
            .await
            .iter()
            .map(|r| r["outcome"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Asks for `restore` with the coordinator started anew to abort at `step`, then starts it
    /// again without.
    async fn cut_restore_at(&mut self, restore: &str, step: &str) {
        self.stop_coordinator();
        self.start_coordinator(Some(step));
        self.wait_for_worker().await;
        let cut = self
            .client
            .post(self.url(restore))
            .bearer_auth(&self.admin_token)
            .send()
            .await;
        assert!(cut.is_err(), "{step}: the restore was answered: {cut:?}");
        self.wait_for_abort();
        self.start_coordinator(None);
    }

    fn staging_left(&self) -> bool {
        staging_in(&self.root.join("worker-1"))
    }
}

/// Whether any import staging directory is left under a worker's data directory.
fn staging_in(dir: &Path) -> bool {
    walk(dir).iter().any(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".import"))
    })
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.clone());
            if path.is_dir() {
                out.extend(walk(&path));
            }
        }
    }
    out
}

impl Drop for Processes {
    fn drop(&mut self) {
        if let Some(mut child) = self.coordinator.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_cut_short_at_any_step_ends_wholly_on_one_side() {
    let mut p = Processes::start().await;
    let (status, body) = p
        .admin("POST", "/admin/v1/tenants", Some(json!({"id": "acme"})))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = p
        .admin(
            "POST",
            "/admin/v1/tenants/acme/keys",
            Some(json!({"scopes": ["read", "write", "manage"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let key = body["key"].as_str().unwrap().to_owned();
    let (status, body) = p
        .call(
            "POST",
            "/v1/collections",
            &key,
            Some(json!({"name": "docs", "dim": 4, "metric": "l2"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    p.put(&key, 0..100, "v1").await;
    let (status, body) = p
        .admin("POST", "/admin/v1/tenants/acme/snapshots", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    p.put(&key, 100..150, "v2").await;
    let restore = format!("/admin/v1/tenants/acme/snapshots/{id}/restore");

    // Cut before the switch was asked for: the tenant keeps what it had, the restore is
    // recorded `error`, nothing staged is left.
    let mut rows = Vec::new();
    for step in ["restore.recorded", "restore.staged", "restore.started"] {
        p.cut_restore_at(&restore, step).await;
        assert_eq!(p.settled_count(&key).await, 150, "{step}");
        rows.extend(if step == "restore.started" {
            vec!["started".to_owned(), "error".to_owned()]
        } else {
            vec!["error".to_owned()]
        });
        assert_eq!(p.restore_rows("acme").await, rows, "{step}");
        assert!(!p.staging_left(), "{step}: a staging directory is left");
        // Writes are taken; the point written is deleted again, so that each round starts
        // from the same 150 points.
        p.put(&key, 150..151, "after").await;
        assert_eq!(p.settled_count(&key).await, 151, "{step}");
        let (status, body) = p
            .call(
                "POST",
                "/v1/collections/docs/points/delete",
                &key,
                Some(json!({"ids": [150]})),
            )
            .await;
        assert_eq!(status, 200, "{step}: {body}");
    }

    // Cut after the switch, before its outcome was recorded: the tenant is wholly restored,
    // the restore recorded `ok` at the next start, and its files re-wrapped under a new KEK
    // version as after a restore that was not cut.
    let rotations = p.rows("acme", "kek.rotate").await.len();
    p.cut_restore_at(&restore, "restore.committed").await;
    assert_eq!(p.settled_count(&key).await, 100);
    rows.extend(["started".to_owned(), "ok".to_owned()]);
    assert_eq!(p.restore_rows("acme").await, rows);
    // (The rotation follows the switch's record, so it may land just after the tenant answers.)
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.rows("acme", "kek.rotate").await.len() != rotations + 1 {
        assert!(
            Instant::now() < deadline,
            "no KEK rotation after the restore"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!p.staging_left(), "a staging directory is left");
    p.put(&key, 200..220, "v3").await;
    assert_eq!(p.settled_count(&key).await, 120);

    // And a restore that is not cut still works, after all that.
    let (status, body) = p.admin("POST", &restore, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(p.settled_count(&key).await, 100);
    p.stop_coordinator();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_in_the_middle_of_a_restore_leaves_the_tenant_as_it_was() {
    let mut cluster = Cluster::start_with_processes(1).await;
    let acme = cluster.tenant("acme", None).await;
    cluster.create_collection(&acme, "docs", 64).await;
    // About 10 MB of files, so that the staging takes a while.
    let n = 20_000u64;
    super::cold::fill(&cluster, &acme, "docs", n).await;
    let (status, body) = cluster
        .admin("POST", "/admin/v1/tenants/acme/snapshots", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let (status, body) = cluster
        .http(
            "POST",
            "/v1/collections/docs/points/delete",
            Some(&acme),
            Some(json!({"ids": (0..1000u64).collect::<Vec<_>>()})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let data = cluster.worker_dir(0);
    let restoring = tokio::spawn(
        reqwest::Client::new()
            .post(cluster.url(&format!("/admin/v1/tenants/acme/snapshots/{id}/restore")))
            .bearer_auth(tests::ADMIN_TOKEN)
            .send(),
    );
    // SIGKILL as soon as the staging has begun.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !staging_in(&data) {
        assert!(Instant::now() < deadline, "the staging never began");
        assert!(
            !restoring.is_finished(),
            "the restore ended before the staging was seen"
        );
        tokio::task::yield_now().await;
    }
    cluster.kill_worker(0).await;
    let answer = restoring.await.unwrap().unwrap();
    assert!(answer.status().is_server_error(), "{}", answer.status());

    cluster.start_worker_process(0).await;
    assert_eq!(count(&cluster, &acme).await, n - 1000);
    let (status, body) = restore(&cluster, "acme", &id).await;
    assert_eq!(status, 200, "{body}");
    assert!(!staging_in(&data), "a staging directory is left");
    assert_eq!(count(&cluster, &acme).await, n);
    cluster.shutdown().await;
}
