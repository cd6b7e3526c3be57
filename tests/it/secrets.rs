//! INV-08 through the real binaries: a coordinator and a worker process, started from `init`'s
//! files and logging everything at `trace` (`RUST_LOG=trace`: the most an operator can ask
//! for), serve a whole session: a tenant, keys, a
//! collection, points with distinctive vectors, searches, wrong and revoked keys, a wrong admin
//! token, a KEK rotation, audit exports. Afterwards no secret the test knows (admin token, pepper,
//! audit key, worker token, root key, the API keys' secrets) appears in either process's logs, in
//! any answer body or in the audit chains, in hex or base64; and no vector component appears in a
//! log line, and the protocol crates log nothing below `debug`. At the default level nothing logs
//! below `info`.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use tests::binary;

/// A process whose stdout and stderr lines are collected; each line is also sent on `lines`.
struct Logged {
    child: Child,
    text: Arc<Mutex<String>>,
    lines: mpsc::UnboundedReceiver<String>,
}

/// `log_filter` is `RUST_LOG`; `None` leaves it unset (the binaries' default, `info`).
fn spawn_logged(mut command: Command, log_filter: Option<&str>) -> Logged {
    match log_filter {
        Some(filter) => command.env("RUST_LOG", filter),
        None => command.env_remove("RUST_LOG"),
    };
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("starting the binary");
    let text = Arc::new(Mutex::new(String::new()));
    let (tx, lines) = mpsc::unbounded_channel();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    for stream in [
        Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(stderr),
    ] {
        let (text, tx) = (text.clone(), tx.clone());
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let mut all = text.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
                drop(all);
                let _ = tx.send(line);
            }
        });
    }
    Logged { child, text, lines }
}

impl Logged {
    /// Waits for a line containing `needle` and returns it.
    async fn wait_for(&mut self, needle: &str) -> String {
        while let Some(line) = self.lines.recv().await {
            if line.contains(needle) {
                return line;
            }
        }
        panic!(
            "the process ended without logging {needle:?}:\n{}",
            self.text.lock().unwrap()
        );
    }

    /// Stops the process with SIGTERM and waits for it and for its output to end.
    async fn stop(mut self) -> String {
        let pid = self.child.id().expect("running") as i32;
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let _ = self.child.wait().await;
        while self.lines.recv().await.is_some() {}
        self.text.lock().unwrap().clone()
    }
}

/// Every form of `secret` a leak could take: as given, and the hex and base64 of its bytes.
fn forms(secret: &[u8]) -> Vec<String> {
    let mut forms = vec![
        hex::encode(secret),
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
    ];
    if let Ok(text) = std::str::from_utf8(secret) {
        forms.push(text.trim().to_owned());
    }
    forms.retain(|f| f.len() >= 16);
    forms
}

/// A coordinator and a worker process, started from `init`'s files with every listener on port 0.
struct Pair {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    coordinator: Logged,
    worker: Logged,
    http: String,
    grpc: String,
    demo_key: String,
}

impl Pair {
    async fn start(log_filter: Option<&str>) -> Pair {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let init = std::process::Command::new(binary("vaultvec-coordinator"))
            .arg("init")
            .arg("--dir")
            .arg(&data)
            .output()
            .expect("init");
        assert!(init.status.success(), "init failed: {init:?}");
        let init_out = String::from_utf8_lossy(&init.stdout).to_string();
        let demo_key = init_out
            .split_whitespace()
            .find_map(|w| w.strip_prefix("VV_KEY="))
            .expect("init prints the demo key")
            .to_owned();

        // Every listener on port 0; the coordinator prints the ports it got.
        let config = data.join("coordinator.toml");
        let text = std::fs::read_to_string(&config).expect("config");
        let rewritten: String = text
            .lines()
            .map(|line| match line.find("127.0.0.1:") {
                Some(at) => format!("{}127.0.0.1:0\"\n", &line[..at]),
                None => format!("{line}\n"),
            })
            .collect();
        std::fs::write(&config, rewritten).expect("config");
        let mut command = Command::new(binary("vaultvec-coordinator"));
        command.arg("serve").arg("--config").arg(&config);
        let mut coordinator = spawn_logged(command, log_filter);
        let listening = coordinator.wait_for("listening http=").await;
        let addr = |name: &str| -> String {
            listening
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .expect("an address")
                .to_owned()
        };
        let (http, grpc, cluster) = (addr("http"), addr("grpc"), addr("cluster"));

        let worker_config = data.join("worker-1.toml");
        let text = std::fs::read_to_string(&worker_config).expect("worker config");
        let rewritten: String = text
            .lines()
            .map(|line| {
                if line.starts_with("coordinator_url") {
                    format!("coordinator_url = \"ws://{cluster}/v1/cluster\"\n")
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        std::fs::write(&worker_config, rewritten).expect("worker config");
        let mut command = Command::new(binary("vaultvec-worker"));
        command.arg("--config").arg(&worker_config);
        let worker = spawn_logged(command, log_filter);
        coordinator.wait_for("worker connected").await;
        Pair {
            _dir: dir,
            data,
            coordinator,
            worker,
            http,
            grpc,
            demo_key,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_an_answer_or_the_audit_chain() {
    let Pair {
        _dir,
        data,
        coordinator,
        worker,
        http,
        grpc: _,
        demo_key,
    } = Pair::start(Some("trace")).await;
    let admin_token = std::fs::read_to_string(data.join("secrets/admin.token")).expect("token");
    let client = reqwest::Client::new();
    let bodies = std::cell::RefCell::new(String::new());
    let call = async |method: &str, path: &str, bearer: &str, body: Option<Value>| -> Value {
        let mut request = client
            .request(method.parse().unwrap(), format!("http://{http}{path}"))
            .bearer_auth(bearer);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.expect("request");
        let text = answer.text().await.expect("body");
        bodies.borrow_mut().push_str(&text);
        bodies.borrow_mut().push('\n');
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };

    // Vector components no log line may show.
    let vector = [0.864_209_7_f64, -0.357_913_6, 0.246_813_6, 0.975_318_6];
    call(
        "POST",
        "/v1/collections",
        &demo_key,
        Some(json!({"name": "c", "dim": 4, "metric": "l2"})),
    )
    .await;
    call(
        "PUT",
        "/v1/collections/c/points",
        &demo_key,
        Some(json!({"points": [
            {"id": 1, "vector": vector, "payload": {"note": "first"}},
            {"id": 2, "vector": [0.1, 0.2, 0.3, 0.4]},
        ]})),
    )
    .await;
    call(
        "POST",
        "/v1/collections/c/points/search",
        &demo_key,
        Some(json!({"vector": vector, "top_k": 2, "with_vector": true})),
    )
    .await;
    call(
        "POST",
        "/v1/collections/c/points/search",
        &demo_key,
        Some(json!({"vector": [0.864_209_7, 1.0], "top_k": 2})),
    )
    .await;
    // The answer that creates a key shows its secret, once, by design; it is left out.
    let before_key = bodies.borrow().len();
    let created = call(
        "POST",
        "/admin/v1/tenants/demo/keys",
        &admin_token,
        Some(json!({"scopes": ["read"]})),
    )
    .await;
    bodies.borrow_mut().truncate(before_key);
    let second_key = created["key"].as_str().expect("a new key").to_owned();
    let key_id = created["key_id"].as_str().expect("its id").to_owned();
    call("GET", "/v1/collections/c", &second_key, None).await;
    call(
        "DELETE",
        &format!("/admin/v1/tenants/demo/keys/{key_id}"),
        &admin_token,
        None,
    )
    .await;
    call("GET", "/v1/collections/c", &second_key, None).await;
    let wrong_secret = format!("{}{}", &demo_key[..12], "Q".repeat(demo_key.len() - 12));
    call("GET", "/v1/collections/c", &wrong_secret, None).await;
    call(
        "GET",
        "/admin/v1/tenants",
        "not-the-admin-token-at-all",
        None,
    )
    .await;
    call(
        "POST",
        "/admin/v1/tenants/demo/rotate-kek",
        &admin_token,
        None,
    )
    .await;
    call(
        "POST",
        "/v1/collections/c/points/search",
        &demo_key,
        Some(json!({"vector": vector, "top_k": 1})),
    )
    .await;
    let platform = call("GET", "/admin/v1/audit/platform", &admin_token, None).await;
    let tenant = call("GET", "/admin/v1/audit/demo", &admin_token, None).await;
    assert!(
        platform["rows"].as_array().is_some_and(|r| !r.is_empty())
            && tenant["rows"].as_array().is_some_and(|r| !r.is_empty()),
        "the audit chains were exported"
    );
    let chains = format!("{platform}\n{tenant}");
    let bodies = bodies.borrow().clone();

    let worker_logs = worker.stop().await;
    let coordinator_logs = coordinator.stop().await;
    let logs = format!("{coordinator_logs}\n{worker_logs}");
    assert!(
        logs.contains("\"request\"") || logs.contains(" request"),
        "the request log lines were captured:\n{logs}"
    );

    let secret_file = |name: &str| std::fs::read(data.join("secrets").join(name)).expect(name);
    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        ("admin token".into(), admin_token.trim().as_bytes().to_vec()),
        ("pepper".into(), secret_file("pepper")),
        ("audit key".into(), secret_file("audit.key")),
        ("worker token".into(), secret_file("worker-1.token")),
        ("root key".into(), secret_file("root.key")),
    ];
    for (name, key) in [("demo key", &demo_key), ("second key", &second_key)] {
        // The secret part: everything after `vv_<key id>_`.
        secrets.push((format!("{name} secret"), key.as_bytes()[12..].to_vec()));
    }
    for (name, secret) in &secrets {
        for form in forms(secret) {
            for (place, text) in [("logs", &logs), ("answers", &bodies), ("audit", &chains)] {
                assert!(
                    !text.contains(&form),
                    "the {name} appears in the {place} (as {form:?}): {:?}",
                    text.lines()
                        .filter(|l| l.contains(&form))
                        .take(3)
                        .collect::<Vec<_>>()
                );
            }
        }
    }
    for component in ["0.86420", "0.35791", "0.24681", "0.97531"] {
        assert!(
            !logs.contains(component),
            "a vector component ({component}) appears in the logs"
        );
    }
    // The cap holds under `RUST_LOG=trace`: the protocol crates log nothing below `debug`, while
    // our own crates do log at `trace`.
    let capped: Vec<&str> = logs
        .lines()
        .filter(|line| level(line) == Some("TRACE") && from_capped_target(line))
        .take(3)
        .collect();
    assert!(
        capped.is_empty(),
        "capped dependencies logged at trace: {capped:?}"
    );
    assert!(
        logs.lines()
            .any(|line| level(line) == Some("DEBUG") && from_capped_target(line)),
        "the protocol crates' debug lines were captured (the filter was trace)"
    );
}

/// The level of a plain-text log line (its second word).
fn level(line: &str) -> Option<&str> {
    line.split_whitespace().nth(1)
}

/// Whether the line's target is one of the dependencies capped at `debug`.
fn from_capped_target(line: &str) -> bool {
    storage::logging::CAPPED_TARGETS.iter().any(|target| {
        line.contains(&format!(" {target}::")) || line.contains(&format!(" {target}: "))
    })
}

/// At the default level (no `RUST_LOG`) nothing logs below `info`: the cap on the protocol
/// crates only ever removes lines. It once raised them to `debug`, a line per HTTP/2 frame, which
/// cost a gRPC `Health` call more server CPU than the call itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_default_level_nothing_logs_below_info() {
    let pair = Pair::start(None).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", pair.http);
    for (method, path, body) in [
        (
            "POST",
            "/v1/collections",
            json!({"name": "c", "dim": 2, "metric": "l2"}),
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            json!({"points": [{"id": 1, "vector": [0.5, 1.0]}]}),
        ),
        (
            "POST",
            "/v1/collections/c/points/search",
            json!({"vector": [0.5, 1.0], "top_k": 1}),
        ),
    ] {
        let answer = client
            .request(method.parse().unwrap(), url(path))
            .bearer_auth(&pair.demo_key)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
    }
    let mut health =
        proto::vaultvec::v1::health_client::HealthClient::connect(format!("http://{}", pair.grpc))
            .await
            .expect("a gRPC connection");
    for _ in 0..3 {
        health
            .check(proto::vaultvec::v1::HealthCheckRequest {})
            .await
            .expect("Health.Check");
    }
    let worker_logs = pair.worker.stop().await;
    let coordinator_logs = pair.coordinator.stop().await;
    let logs = format!("{coordinator_logs}\n{worker_logs}");
    assert!(
        logs.lines()
            .any(|line| level(line) == Some("INFO") && line.contains(" request")),
        "the request lines were captured:\n{logs}"
    );
    let below_info: Vec<&str> = logs
        .lines()
        .filter(|line| matches!(level(line), Some("DEBUG" | "TRACE")))
        .take(5)
        .collect();
    assert!(
        below_info.is_empty(),
        "lines below info at the default level: {below_info:?}"
    );
}
