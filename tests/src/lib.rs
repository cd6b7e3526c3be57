//! The integration-test harness: a real coordinator and real workers on loopback.
//!
//! [`Cluster::start`] binds every listener on `127.0.0.1:0` first and hands the bound listeners to
//! the servers, so clients can connect at once; it waits for the workers' hellos through the hub's
//! notification, never by sleeping. Each cluster lives in its own directory, kept when a test fails
//! (see [`Cluster::dir`]). [`Cluster::start_tls`] puts TLS on the cluster listener, with a
//! certificate from a CA made at run time ([`TestCa`]), and the workers dial `wss://`.

pub mod partition;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use coordinator::api::Service;
use coordinator::cluster::Hub;
use coordinator::config::Config;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Admin token of every test cluster (see `coordinator::config::Config::for_tests`).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdefghij";

/// A certificate authority made at run time with rcgen, for TLS tests.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// A new CA with its own key; `name` goes into its subject.
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA's certificate to `path` (what a worker's `ca_file` names).
    pub fn write_cert(&self, path: &Path) {
        std::fs::write(path, self.cert_pem()).expect("writing the CA certificate");
    }

    /// A server certificate for `127.0.0.1` and `localhost` signed by this CA: (certificate PEM,
    /// private key PEM).
    pub fn server_cert(&self) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "vaultvec test coordinator");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// The TLS material of a cluster started with [`Cluster::start_tls`].
struct ClusterTlsFiles {
    cert_pem: String,
    key_pem: String,
    /// The CA certificate the workers trust.
    ca_file: PathBuf,
}

fn worker_token(i: usize) -> String {
    format!("worker-token-{i}-0123456789abcdefghijklmnop")
}

enum RunningWorker {
    Task {
        stop: CancellationToken,
        task: JoinHandle<anyhow::Result<()>>,
    },
    Process(tokio::process::Child),
}

/// A binary built by cargo beside the test executable (`target/<profile>/<name>`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo nextest run --workspace` (it builds every binary)",
        path.display()
    );
    path
}

/// A coordinator and its workers.
pub struct Cluster {
    dir: tempfile::TempDir,
    /// Public HTTP address.
    pub http: SocketAddr,
    /// Public gRPC address.
    pub grpc: SocketAddr,
    /// Workers' WebSocket address.
    pub cluster: SocketAddr,
    /// Metrics address.
    pub metrics: SocketAddr,
    coordinator_stop: CancellationToken,
    coordinator_task: Option<JoinHandle<anyhow::Result<()>>>,
    service: Arc<Service>,
    hub: Arc<Hub>,
    workers: Vec<Option<RunningWorker>>,
    client: reqwest::Client,
    tweak: fn(&mut Config),
    tls: Option<ClusterTlsFiles>,
    /// Appended to the TOML config of every worker process started from now on.
    pub worker_process_toml: String,
}

fn worker_ids(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("worker-{i}"), worker_token(i)))
        .collect()
}

async fn start_coordinator(
    dir: &Path,
    n_workers: usize,
    addrs: Option<coordinator::config::Listen>,
    tweak: fn(&mut Config),
    tls: Option<&ClusterTlsFiles>,
) -> (
    coordinator::config::Listen,
    CancellationToken,
    JoinHandle<anyhow::Result<()>>,
    Arc<Service>,
    Arc<Hub>,
) {
    let ids = worker_ids(n_workers);
    let creds: Vec<(&str, &str)> = ids.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut config = Config::for_tests(&dir.join("coordinator"), &creds);
    config.cluster_tls = tls.map(|tls| {
        coordinator::config::ClusterTls::from_pem(tls.cert_pem.as_bytes(), tls.key_pem.as_bytes())
            .expect("the test certificate")
    });
    tweak(&mut config);
    let listeners = match addrs {
        // A restart binds the same ports, so workers reconnect to the address they know.
        Some(addrs) => coordinator::Listeners::bind(&addrs)
            .await
            .expect("rebinding the ports"),
        None => coordinator::Listeners::loopback()
            .await
            .expect("binding loopback"),
    };
    let coordinator =
        coordinator::Coordinator::open(config, listeners).expect("opening the coordinator");
    let addrs = coordinator.addrs().expect("addresses");
    let (service, hub) = (coordinator.service(), coordinator.hub());
    let stop = CancellationToken::new();
    let task = tokio::spawn(coordinator.run(stop.clone().cancelled_owned()));
    (addrs, stop, task, service, hub)
}

impl Cluster {
    /// Starts a coordinator and `n_workers` workers, and waits until every worker has said hello.
    pub async fn start(n_workers: usize) -> Cluster {
        let mut cluster = Cluster::start_empty(n_workers).await;
        for i in 0..n_workers {
            cluster.start_worker(i).await;
        }
        cluster
    }

    /// As [`Cluster::start`], with TLS on the cluster listener: a certificate for 127.0.0.1 from a
    /// CA made for this cluster, and workers dialing `wss://` with that CA as their `ca_file`.
    pub async fn start_tls(n_workers: usize) -> Cluster {
        let mut cluster = Cluster::start_empty_with(n_workers, true, |_| {}).await;
        for i in 0..n_workers {
            cluster.start_worker(i).await;
        }
        cluster
    }

    async fn start_empty(n_workers: usize) -> Cluster {
        Cluster::start_empty_with(n_workers, false, |_| {}).await
    }

    /// A coordinator admitting `n_workers` worker ids, none started, its test config changed by
    /// `tweak` (also on restarts). Tests connect their own fake workers or call `start_worker`.
    pub async fn start_without_workers(n_workers: usize, tweak: fn(&mut Config)) -> Cluster {
        Cluster::start_empty_with(n_workers, false, tweak).await
    }

    async fn start_empty_with(n_workers: usize, is_tls: bool, tweak: fn(&mut Config)) -> Cluster {
        // With RUST_LOG set, the coordinator's and in-process workers' logs go to the test's
        // output, which nextest shows for a test that fails or is stopped for hanging.
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::Builder::new()
            .prefix("vaultvec-it-")
            .tempdir()
            .expect("creating the test dir");
        let tls = is_tls.then(|| {
            let ca = TestCa::new("vaultvec test cluster CA");
            let (cert_pem, key_pem) = ca.server_cert();
            let ca_file = dir.path().join("cluster-ca.pem");
            ca.write_cert(&ca_file);
            ClusterTlsFiles {
                cert_pem,
                key_pem,
                ca_file,
            }
        });
        let (addrs, coordinator_stop, task, service, hub) =
            start_coordinator(dir.path(), n_workers, None, tweak, tls.as_ref()).await;
        Cluster {
            dir,
            http: addrs.http,
            grpc: addrs.grpc,
            cluster: addrs.cluster,
            metrics: addrs.metrics,
            coordinator_stop,
            coordinator_task: Some(task),
            service,
            hub,
            workers: (0..n_workers).map(|_| None).collect(),
            client: reqwest::Client::new(),
            tweak,
            tls,
            worker_process_toml: String::new(),
        }
    }

    /// As [`Cluster::start`], with every worker a real `vaultvec-worker` process.
    pub async fn start_with_processes(n_workers: usize) -> Cluster {
        let mut cluster = Cluster::start_empty(n_workers).await;
        for i in 0..n_workers {
            cluster.start_worker_process(i).await;
        }
        cluster
    }

    /// The cluster's directory (coordinator database, worker data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the directory after the test (for a failing test's post-mortem).
    pub fn keep_dir(self) -> PathBuf {
        let Cluster { dir, .. } = self;
        dir.keep()
    }

    /// Worker `i`'s data directory.
    pub fn worker_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("worker-{i}"))
    }

    /// The coordinator's shared service layer.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// The worker hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The URL workers dial: `ws://` or, for [`Cluster::start_tls`], `wss://`.
    pub fn worker_url(&self) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}/v1/cluster", self.cluster)
    }

    /// The CA certificate file the workers trust, for [`Cluster::start_tls`].
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|tls| tls.ca_file.as_path())
    }

    /// The configuration worker `i` runs with (tests alter it to dial with other settings).
    pub fn worker_config(&self, i: usize) -> worker::Config {
        let id = format!("worker-{i}");
        let mut config = worker::Config::for_tests(
            &id,
            &self.worker_url(),
            &worker_token(i),
            &self.worker_dir(i),
        );
        config.ca_file = self.ca_file().map(Path::to_owned);
        config
    }

    /// Starts worker `i` (again) on its data directory and waits for its hello.
    pub async fn start_worker(&mut self, i: usize) {
        let config = self.worker_config(i);
        self.start_worker_with(i, config).await;
    }

    /// As [`Cluster::start_worker`], with `config` (from [`Cluster::worker_config`], altered).
    pub async fn start_worker_with(&mut self, i: usize, config: worker::Config) {
        assert!(self.workers[i].is_none(), "worker {i} is running");
        let id = format!("worker-{i}");
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker::serve(config, stop.clone().cancelled_owned()));
        self.workers[i] = Some(RunningWorker::Task { stop, task });
        self.hub.wait_for_worker(&id).await;
    }

    /// Starts worker `i` as a real `vaultvec-worker` process on its data directory, with a TOML
    /// config and a 0600 token file, and waits for its hello.
    pub async fn start_worker_process(&mut self, i: usize) {
        let url = self.worker_url();
        self.start_worker_process_dialing(i, &url).await;
    }

    /// As [`Cluster::start_worker_process`], dialing `url` (a relay in front of the cluster
    /// listener, say) instead of the cluster listener itself.
    pub async fn start_worker_process_dialing(&mut self, i: usize, url: &str) {
        use std::os::unix::fs::OpenOptionsExt;
        assert!(self.workers[i].is_none(), "worker {i} is running");
        let id = format!("worker-{i}");
        let dir = self.dir.path().join(format!("{id}-process"));
        std::fs::create_dir_all(&dir).expect("config dir");
        let token_file = dir.join("token");
        if !token_file.exists() {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&token_file)
                .expect("token file");
            std::io::Write::write_all(&mut file, worker_token(i).as_bytes()).expect("token");
        }
        let mut config = format!(
            "worker_id = \"{id}\"\ncoordinator_url = \"{}\"\ntoken_file = \"{}\"\ndata_dir = \"{}\"\n",
            url,
            token_file.display(),
            self.worker_dir(i).display()
        );
        if let Some(ca_file) = self.ca_file() {
            config.push_str(&format!("ca_file = \"{}\"\n", ca_file.display()));
        }
        config.push_str(&self.worker_process_toml);
        let config_file = dir.join("worker.toml");
        std::fs::write(&config_file, config).expect("worker config");
        let mut child = tokio::process::Command::new(binary("vaultvec-worker"))
            .arg("--config")
            .arg(&config_file)
            .kill_on_drop(true)
            .spawn()
            .expect("starting vaultvec-worker");
        // A worker that exits before its hello (it refused its data directory, say) fails the
        // test with its status instead of leaving it waiting.
        tokio::select! {
            () = self.hub.wait_for_worker(&id) => {}
            status = child.wait() => panic!("{id} exited before its hello: {status:?}"),
        }
        self.workers[i] = Some(RunningWorker::Process(child));
    }

    /// The process id of worker `i`, if it runs as a process.
    pub fn worker_pid(&self, i: usize) -> Option<u32> {
        match self.workers[i].as_ref()? {
            RunningWorker::Process(child) => child.id(),
            RunningWorker::Task { .. } => None,
        }
    }

    /// Stops worker `i` gracefully (drain, flush): cancellation in process, SIGTERM for a process.
    pub async fn stop_worker(&mut self, i: usize) {
        match self.workers[i].take().expect("worker is running") {
            RunningWorker::Task { stop, task } => {
                stop.cancel();
                task.await
                    .expect("worker task")
                    .expect("worker stopped cleanly");
            }
            RunningWorker::Process(mut child) => {
                let pid = child.id().expect("running child") as i32;
                std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .expect("kill -TERM");
                let status = child.wait().await.expect("waiting for the worker");
                assert!(status.success(), "worker exited with {status}");
            }
        }
    }

    /// Kills worker `i` without any chance to clean up: SIGKILL for a process, an aborted task in
    /// process.
    pub async fn kill_worker(&mut self, i: usize) {
        match self.workers[i].take().expect("worker is running") {
            RunningWorker::Task { task, .. } => {
                task.abort();
                let _ = task.await;
            }
            RunningWorker::Process(mut child) => {
                child.kill().await.expect("SIGKILL");
            }
        }
    }

    /// Stops the coordinator and starts it again on the same directory and ports; waits until
    /// every running worker has reconnected.
    pub async fn restart_coordinator(&mut self) {
        self.coordinator_stop.cancel();
        self.coordinator_task
            .take()
            .expect("coordinator running")
            .await
            .expect("coordinator task")
            .expect("coordinator stopped cleanly");
        let addrs = coordinator::config::Listen {
            http: self.http,
            grpc: self.grpc,
            cluster: self.cluster,
            metrics: self.metrics,
        };
        let (_, stop, task, service, hub) = start_coordinator(
            self.dir.path(),
            self.workers.len(),
            Some(addrs),
            self.tweak,
            self.tls.as_ref(),
        )
        .await;
        self.coordinator_stop = stop;
        self.coordinator_task = Some(task);
        self.service = service;
        self.hub = hub;
        for (i, w) in self.workers.iter().enumerate() {
            if w.is_some() {
                self.hub.wait_for_worker(&format!("worker-{i}")).await;
            }
        }
    }

    /// Stops everything and checks that every task ended cleanly.
    pub async fn shutdown(mut self) {
        self.coordinator_stop.cancel();
        if let Some(task) = self.coordinator_task.take() {
            task.await
                .expect("coordinator task")
                .expect("coordinator stopped cleanly");
        }
        for i in 0..self.workers.len() {
            if self.workers[i].is_some() {
                self.stop_worker(i).await;
            }
        }
    }

    /// Base URL of the HTTP API.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// The value of the unlabelled metric `name` on the coordinator's metrics listener.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .expect("scraping metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
            .parse()
            .unwrap_or_else(|err| panic!("{name}: {err}"))
    }

    /// A raw HTTP request; answers the status and the JSON body (`Null` if none).
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method.parse().expect("method"), self.url(path));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("http request");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("http body");
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    /// An admin API call with the admin token.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.http(method, path, Some(ADMIN_TOKEN), body).await
    }

    /// Creates a tenant (tier `pro` unless given) and a key with all scopes; answers the key.
    pub async fn tenant(&self, id: &str, tier: Option<&str>) -> String {
        let mut body = serde_json::json!({ "id": id });
        if let Some(tier) = tier {
            body["tier"] = tier.into();
        }
        let (status, value) = self.admin("POST", "/admin/v1/tenants", Some(body)).await;
        assert_eq!(status, 200, "creating tenant {id}: {value}");
        self.key(id, &["read", "write", "manage"], None).await
    }

    /// Creates an L2 collection `name` of dimension `dim` with `key`, asserting it was made.
    pub async fn create_collection(&self, key: &str, name: &str, dim: usize) {
        let (status, value) = self
            .http(
                "POST",
                "/v1/collections",
                Some(key),
                Some(serde_json::json!({"name": name, "dim": dim, "metric": "l2"})),
            )
            .await;
        assert_eq!(status, 200, "creating collection {name}: {value}");
    }

    /// Issues a key for a tenant.
    pub async fn key(&self, tenant: &str, scopes: &[&str], collections: Option<&[&str]>) -> String {
        let (status, value) = self
            .admin(
                "POST",
                &format!("/admin/v1/tenants/{tenant}/keys"),
                Some(serde_json::json!({ "scopes": scopes, "collections": collections })),
            )
            .await;
        assert_eq!(status, 200, "issuing a key: {value}");
        value["key"].as_str().expect("key in answer").to_owned()
    }

    /// A gRPC channel to the coordinator.
    pub async fn grpc_channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .expect("endpoint")
            .connect()
            .await
            .expect("grpc connect")
    }
}

/// Adds `authorization: Bearer <key>` to a gRPC request.
pub fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {key}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}
