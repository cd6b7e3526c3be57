//! A fake coordinator: accepts the worker's WebSocket on a bound loopback listener, checks its
//! credentials, acknowledges its hello, serves its key-service calls from a `LocalKeyService`, and
//! lets a test send requests and read the answers.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use proto::vaultvec::cluster::v1 as cluster;
use proto::vaultvec::v1 as api;
use storage::crypto::{DekContext, KeyService, LocalKeyFile, LocalKeyService, WrappedDek};
use storage::ids::TenantId;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_util::sync::CancellationToken;

pub use cluster::ErrorCode;
pub use cluster::envelope::Body;
pub use cluster::tenant_request::Op;
pub use cluster::tenant_response::Result as Answer;

pub const TOKEN: &str = "worker-a-token-0123456789abcdef";
pub const WORKER: &str = "worker-a";
pub const TENANT: &str = "acme";

/// How long any single wait on the worker may take before the test fails (a guard against hangs,
/// not a readiness delay).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The listener and the key service of a fake coordinator.
pub struct Coordinator {
    listener: TcpListener,
    pub url: String,
    keys: Arc<LocalKeyService>,
    _keys_dir: TempDir,
    /// Whether its answer to a hello says it answers `DecryptDataKeys` (as the real one does).
    key_batches: std::sync::atomic::AtomicBool,
}

impl Coordinator {
    /// From the next hello on, answers like a coordinator from before `DecryptDataKeys`.
    pub fn without_key_batches(&self) {
        self.key_batches
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    pub async fn start() -> Coordinator {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/v1/cluster", listener.local_addr().unwrap());
        let keys_dir = tempfile::tempdir().unwrap();
        let root = LocalKeyFile::generate(&keys_dir.path().join("root.key")).unwrap();
        let keys =
            Arc::new(LocalKeyService::open(Arc::new(root), &keys_dir.path().join("keks")).unwrap());
        Coordinator {
            listener,
            url,
            keys,
            _keys_dir: keys_dir,
            key_batches: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// A worker config pointing at this coordinator.
    pub fn worker_config(&self, data_dir: &Path) -> worker::Config {
        let mut config = worker::Config::for_tests(WORKER, &self.url, TOKEN, data_dir);
        config.limits.max_batch = 50;
        config.limits.segment_points = 1000;
        config
    }

    /// Accepts the next connection, checks its credentials and hello, and acknowledges it.
    // The callback's error type is tungstenite's.
    #[allow(clippy::result_large_err)]
    pub async fn accept(&self) -> Conn {
        let stream = self.next_stream().await;
        let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
            assert_eq!(req.uri().path(), "/v1/cluster");
            assert_eq!(header("authorization"), Some(&*format!("Bearer {TOKEN}")));
            assert_eq!(header("x-vaultvec-worker"), Some(WORKER));
            Ok(resp)
        };
        let ws = tokio_tungstenite::accept_hdr_async(stream, callback)
            .await
            .unwrap();
        let mut conn = Conn {
            ws,
            next_id: 0,
            keys: self.keys.clone(),
            hold_keys: false,
            key_error: None,
            held: VecDeque::new(),
            early: HashMap::new(),
            heartbeats: Vec::new(),
            hello: cluster::Hello::default(),
            reassembly: proto::chunk::Reassembly::new(64 << 20, 128 << 20),
            pieces: HashMap::new(),
        };
        let hello = conn.read().await;
        assert_eq!(hello.request_id, 0);
        let Some(Body::Hello(hello_body)) = hello.body else {
            panic!("the first frame is not a hello: {hello:?}");
        };
        assert_eq!(hello_body.worker_id, WORKER);
        assert_eq!(hello_body.version, env!("CARGO_PKG_VERSION"));
        assert!(hello_body.max_in_flight > 0);
        assert!(hello_body.memory_budget_bytes > 0);
        conn.hello = hello_body;
        let key_batches = self.key_batches.load(std::sync::atomic::Ordering::SeqCst);
        conn.send(0, 0, Body::Ack(cluster::Ack { key_batches }))
            .await;
        conn
    }

    /// Accepts the next connection and refuses its upgrade with 401.
    #[allow(clippy::result_large_err)]
    pub async fn refuse(&self) {
        let stream = self.next_stream().await;
        let callback = |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
            let mut refusal = ErrorResponse::new(Some("invalid worker credentials".into()));
            *refusal.status_mut() = http_status_401();
            Err(refusal)
        };
        assert!(
            tokio_tungstenite::accept_hdr_async(stream, callback)
                .await
                .is_err()
        );
    }

    async fn next_stream(&self) -> TcpStream {
        let (stream, _) = tokio::time::timeout(PATIENCE, self.listener.accept())
            .await
            .expect("the worker did not connect")
            .unwrap();
        stream
    }

    /// Creates the tenant's first KEK, as the coordinator does when it creates a tenant.
    pub fn ensure_tenant(&self, tenant: &str) {
        self.keys
            .ensure_tenant(&TenantId::parse(tenant).unwrap())
            .unwrap();
    }
}

fn http_status_401() -> tokio_tungstenite::tungstenite::http::StatusCode {
    tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED
}

/// A running `worker::serve`, stopped (and awaited) by [`Worker::stop`].
pub struct Worker {
    stop: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    pub fn start(config: worker::Config) -> Worker {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(worker::serve(config, stop.clone().cancelled_owned()));
        Worker { stop, handle }
    }

    /// Asks the worker to shut down without waiting.
    pub fn signal_stop(&self) {
        self.stop.cancel();
    }

    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("the worker did not stop")
            .unwrap()
            .unwrap();
    }
}

/// One accepted connection.
pub struct Conn {
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
    keys: Arc<LocalKeyService>,
    /// Queue key-service calls instead of answering them.
    pub hold_keys: bool,
    /// Answer key-service calls with this error.
    pub key_error: Option<ErrorCode>,
    held: VecDeque<cluster::Envelope>,
    early: HashMap<u64, cluster::Envelope>,
    pub heartbeats: Vec<cluster::Heartbeat>,
    pub hello: cluster::Hello,
    /// Puts large frames sent in pieces back together.
    reassembly: proto::chunk::Reassembly,
    /// Pieces of large frames received so far, by request id.
    pub pieces: HashMap<u64, usize>,
}

fn is_key_call(body: &Option<Body>) -> bool {
    matches!(
        body,
        Some(
            Body::GenerateDataKey(_)
                | Body::DecryptDataKey(_)
                | Body::DecryptDataKeys(_)
                | Body::RewrapDataKey(_)
                | Body::KekVersion(_)
        )
    )
}

impl Conn {
    pub async fn send(&mut self, request_id: u64, deadline_unix_ms: u64, body: Body) {
        let envelope = cluster::Envelope {
            request_id,
            deadline_unix_ms,
            body: Some(body),
        };
        self.send_raw(Message::binary(envelope.encode_to_vec()))
            .await;
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.unwrap();
    }

    /// Sends requests with the next ids in one write, so they reach the worker back to back;
    /// returns their ids.
    pub async fn request_burst(&mut self, bodies: Vec<Body>) -> Vec<u64> {
        let mut ids = Vec::with_capacity(bodies.len());
        for body in bodies {
            self.next_id += 1;
            ids.push(self.next_id);
            let envelope = cluster::Envelope {
                request_id: self.next_id,
                deadline_unix_ms: 0,
                body: Some(body),
            };
            self.ws
                .feed(Message::binary(envelope.encode_to_vec()))
                .await
                .unwrap();
        }
        self.ws.flush().await.unwrap();
        ids
    }

    /// Sends a frame that the worker may refuse by dropping the connection.
    pub async fn try_send_raw(&mut self, message: Message) -> bool {
        self.ws.send(message).await.is_ok()
    }

    /// Sends a request with the next id; returns the id.
    pub async fn request(&mut self, body: Body) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.send(id, 0, body).await;
        id
    }

    /// The next frame from the worker.
    async fn read(&mut self) -> cluster::Envelope {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("the worker did not send anything")
                .expect("the worker closed the connection")
                .unwrap();
            match message {
                Message::Binary(bytes) => {
                    let frame = match self.reassembly.offer(&bytes) {
                        proto::chunk::Piece::Frame => bytes.to_vec(),
                        proto::chunk::Piece::Pending => {
                            let id = cluster::Envelope::decode(bytes.as_ref())
                                .unwrap()
                                .request_id;
                            *self.pieces.entry(id).or_default() += 1;
                            continue;
                        }
                        proto::chunk::Piece::Whole(frame) => {
                            let id = cluster::Envelope::decode(bytes.as_ref())
                                .unwrap()
                                .request_id;
                            *self.pieces.entry(id).or_default() += 1;
                            frame
                        }
                        other => panic!("the worker sent a frame over the limit: {other:?}"),
                    };
                    return cluster::Envelope::decode(frame.as_slice()).unwrap();
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected frame from the worker: {other:?}"),
            }
        }
    }

    /// Handles heartbeats and key calls; gives back anything else.
    async fn triage(&mut self, envelope: cluster::Envelope) -> Option<cluster::Envelope> {
        if let Some(Body::Heartbeat(beat)) = &envelope.body {
            assert_eq!(envelope.request_id, 0);
            self.heartbeats.push(*beat);
            return None;
        }
        if is_key_call(&envelope.body) {
            if self.hold_keys {
                self.held.push_back(envelope);
            } else {
                self.answer_key(envelope).await;
            }
            return None;
        }
        Some(envelope)
    }

    /// Waits for the answer to request `id`, serving key calls and recording heartbeats meanwhile.
    pub async fn reply(&mut self, id: u64) -> Body {
        if let Some(envelope) = self.early.remove(&id) {
            return envelope.body.unwrap();
        }
        loop {
            let envelope = self.read().await;
            let Some(envelope) = self.triage(envelope).await else {
                continue;
            };
            if envelope.request_id == id {
                return envelope.body.expect("an answer without a body");
            }
            self.early.insert(envelope.request_id, envelope);
        }
    }

    pub async fn call(&mut self, body: Body) -> Body {
        let id = self.request(body).await;
        self.reply(id).await
    }

    /// The next key-service call (with `hold_keys` set).
    pub async fn held_key_call(&mut self) -> cluster::Envelope {
        loop {
            if let Some(envelope) = self.held.pop_front() {
                return envelope;
            }
            let envelope = self.read().await;
            if let Some(envelope) = self.triage(envelope).await {
                self.early.insert(envelope.request_id, envelope);
            }
        }
    }

    /// Answers every held key call.
    pub async fn release_held_keys(&mut self) {
        self.hold_keys = false;
        while let Some(envelope) = self.held.pop_front() {
            self.answer_key(envelope).await;
        }
    }

    /// The next heartbeat.
    pub async fn heartbeat(&mut self) -> cluster::Heartbeat {
        let seen = self.heartbeats.len();
        while self.heartbeats.len() == seen {
            let envelope = self.read().await;
            if let Some(envelope) = self.triage(envelope).await {
                self.early.insert(envelope.request_id, envelope);
            }
        }
        self.heartbeats[seen]
    }

    /// Reads until the worker closes the connection; true if it sent a Close frame.
    pub async fn closed(&mut self) -> bool {
        tokio::time::timeout(PATIENCE, async {
            loop {
                match self.ws.next().await {
                    None | Some(Err(_)) => return false,
                    Some(Ok(Message::Close(_))) => return true,
                    Some(Ok(Message::Binary(bytes))) => {
                        let envelope = cluster::Envelope::decode(bytes.as_ref()).unwrap();
                        if let Some(envelope) = self.triage(envelope).await {
                            self.early.insert(envelope.request_id, envelope);
                        }
                    }
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
        .expect("the worker did not close the connection")
    }

    pub async fn answer_key(&mut self, envelope: cluster::Envelope) {
        let body = match self.key_error {
            Some(code) => Body::Error(cluster::Error {
                code: code as i32,
                message: "the test's key service refuses".into(),
            }),
            None => serve_key(&self.keys, envelope.body.unwrap()),
        };
        self.send(envelope.request_id, 0, body).await;
    }

    pub async fn assign(&mut self, tenant: &str, epoch: u64, quota: cluster::TenantQuota) -> Body {
        self.call(Body::AssignTenant(cluster::AssignTenant {
            tenant: tenant.into(),
            epoch,
            quota: Some(quota),
        }))
        .await
    }

    pub async fn release(&mut self, tenant: &str, epoch: u64) -> Body {
        self.call(Body::ReleaseTenant(cluster::ReleaseTenant {
            tenant: tenant.into(),
            epoch,
        }))
        .await
    }

    /// Runs `op` for `tenant` under `epoch`.
    pub async fn op_for(
        &mut self,
        tenant: &str,
        epoch: u64,
        op: Op,
    ) -> Result<Answer, cluster::Error> {
        let body = self.call(tenant_request(tenant, epoch, op)).await;
        answer(body)
    }

    /// Runs `op` for [`TENANT`] under epoch 1.
    pub async fn op(&mut self, op: Op) -> Result<Answer, cluster::Error> {
        self.op_for(TENANT, 1, op).await
    }

    /// Runs `op` and expects it to fail with `code`.
    pub async fn refused(&mut self, op: Op, code: ErrorCode) -> String {
        match self.op(op).await {
            Ok(answer) => panic!("expected {code:?}, got {answer:?}"),
            Err(err) => {
                assert_eq!(err.code(), code, "{}", err.message);
                err.message
            }
        }
    }

    /// Live points in `collection` of [`TENANT`].
    pub async fn count(&mut self, collection: &str) -> u64 {
        match self.op(count(collection, None)).await.unwrap() {
            Answer::Count(count) => count.count,
            other => panic!("not a count: {other:?}"),
        }
    }
}

pub fn tenant_request(tenant: &str, epoch: u64, op: Op) -> Body {
    Body::TenantRequest(cluster::TenantRequest {
        tenant: tenant.into(),
        epoch,
        op: Some(op),
        write_token: 0,
    })
}

pub fn answer(body: Body) -> Result<Answer, cluster::Error> {
    match body {
        Body::TenantResponse(resp) => Ok(resp.result.expect("a response without a result")),
        Body::Error(err) => Err(err),
        other => panic!("not an answer to a tenant request: {other:?}"),
    }
}

pub fn error_code(body: &Body) -> Option<ErrorCode> {
    match body {
        Body::Error(err) => Some(err.code()),
        _ => None,
    }
}

fn serve_key(keys: &LocalKeyService, body: Body) -> Body {
    let fail = |err: storage::Error| {
        Body::Error(cluster::Error {
            code: ErrorCode::DataLoss as i32,
            message: err.to_string(),
        })
    };
    match body {
        Body::GenerateDataKey(req) => {
            let tenant = TenantId::parse(&req.tenant).unwrap();
            let ctx = DekContext {
                collection: &req.collection,
                file_id: req.file_id,
            };
            match keys.generate_data_key(&tenant, ctx) {
                Ok((dek, wrapped)) => {
                    Body::GenerateDataKeyResponse(cluster::GenerateDataKeyResponse {
                        data_key: dek.to_wire().to_vec(),
                        kek_version: wrapped.kek_version,
                        wrapped_data_key: wrapped.bytes.to_vec(),
                    })
                }
                Err(err) => fail(err),
            }
        }
        Body::DecryptDataKey(req) => {
            let tenant = TenantId::parse(&req.tenant).unwrap();
            let ctx = DekContext {
                collection: &req.collection,
                file_id: req.file_id,
            };
            let wrapped = WrappedDek::from_wire(req.kek_version, &req.wrapped_data_key).unwrap();
            match keys.decrypt_data_key(&tenant, ctx, &wrapped) {
                Ok(dek) => Body::DecryptDataKeyResponse(cluster::DecryptDataKeyResponse {
                    data_key: dek.to_wire().to_vec(),
                }),
                Err(err) => fail(err),
            }
        }
        Body::DecryptDataKeys(req) => {
            let tenant = TenantId::parse(&req.tenant).unwrap();
            let mut data_keys = Vec::new();
            let mut failed = None;
            for k in &req.keys {
                let ctx = DekContext {
                    collection: &k.collection,
                    file_id: k.file_id,
                };
                let wrapped = WrappedDek::from_wire(k.kek_version, &k.wrapped_data_key).unwrap();
                match keys.decrypt_data_key(&tenant, ctx, &wrapped) {
                    Ok(dek) => data_keys.push(dek.to_wire().to_vec()),
                    Err(err) => {
                        failed = Some(err);
                        break;
                    }
                }
            }
            match failed {
                None => {
                    Body::DecryptDataKeysResponse(cluster::DecryptDataKeysResponse { data_keys })
                }
                Some(err) => fail(err),
            }
        }
        Body::RewrapDataKey(req) => {
            let tenant = TenantId::parse(&req.tenant).unwrap();
            let ctx = DekContext {
                collection: &req.collection,
                file_id: req.file_id,
            };
            let wrapped = WrappedDek::from_wire(req.kek_version, &req.wrapped_data_key).unwrap();
            match keys.rewrap_data_key(&tenant, ctx, &wrapped) {
                Ok(wrapped) => Body::RewrapDataKeyResponse(cluster::RewrapDataKeyResponse {
                    kek_version: wrapped.kek_version,
                    wrapped_data_key: wrapped.bytes.to_vec(),
                }),
                Err(err) => fail(err),
            }
        }
        Body::KekVersion(req) => {
            let tenant = TenantId::parse(&req.tenant).unwrap();
            match keys.current_kek_version(&tenant) {
                Ok(kek_version) => {
                    Body::KekVersionResponse(cluster::KekVersionResponse { kek_version })
                }
                Err(err) => fail(err),
            }
        }
        other => panic!("not a key-service call: {other:?}"),
    }
}

impl Coordinator {
    /// Rotates the tenant's KEK (for the re-wrap test).
    pub fn rotate_kek(&self, tenant: &str) -> u32 {
        self.keys
            .rotate_kek(&TenantId::parse(tenant).unwrap())
            .unwrap()
    }

    /// Destroys an old KEK version.
    pub fn destroy_kek(&self, tenant: &str, version: u32) {
        self.keys
            .destroy_kek(&TenantId::parse(tenant).unwrap(), version)
            .unwrap()
    }
}

// Request builders.

pub fn no_quota() -> cluster::TenantQuota {
    cluster::TenantQuota::default()
}

pub fn create(name: &str, dim: u32, metric: api::Metric) -> Op {
    Op::CreateCollection(api::CreateCollectionRequest {
        name: name.into(),
        config: Some(api::CollectionConfig {
            dim,
            metric: metric as i32,
            ..Default::default()
        }),
    })
}

pub fn num_id(n: u64) -> api::PointId {
    api::PointId {
        kind: Some(api::point_id::Kind::Num(n)),
    }
}

pub fn point(id: u64, vector: Vec<f32>, payload: Option<serde_json::Value>) -> api::Point {
    api::Point {
        id: Some(num_id(id)),
        vector,
        payload: payload.map(|p| proto::json::json_to_struct(&p).unwrap()),
    }
}

pub fn upsert(collection: &str, points: Vec<api::Point>) -> Op {
    Op::Upsert(api::UpsertRequest {
        collection: collection.into(),
        points,
        idempotency_key: String::new(),
    })
}

pub fn filter(value: serde_json::Value) -> Option<prost_types::Struct> {
    Some(proto::json::json_to_struct(&value).unwrap())
}

pub fn count(collection: &str, filter: Option<prost_types::Struct>) -> Op {
    Op::Count(api::CountRequest {
        collection: collection.into(),
        filter,
    })
}

pub fn search(collection: &str, vector: Vec<f32>, top_k: u32) -> api::SearchRequest {
    api::SearchRequest {
        collection: collection.into(),
        vector,
        top_k,
        ..Default::default()
    }
}

pub fn id_of(id: &Option<api::PointId>) -> u64 {
    match id.as_ref().and_then(|id| id.kind.as_ref()) {
        Some(api::point_id::Kind::Num(n)) => *n,
        other => panic!("not a numeric id: {other:?}"),
    }
}

/// A connected worker on a fresh data dir with [`TENANT`] assigned (epoch 1) and a 2-d L2
/// collection `docs` holding points 1..=n at (i, 0) with payload `{"i": i, "even": i % 2 == 0}`.
pub struct Setup {
    pub coordinator: Coordinator,
    pub conn: Conn,
    pub worker: Worker,
    pub dir: TempDir,
}

impl Setup {
    pub async fn with(n: u64, tweak: impl FnOnce(&mut worker::Config)) -> Setup {
        let coordinator = Coordinator::start().await;
        coordinator.ensure_tenant(TENANT);
        let dir = tempfile::tempdir().unwrap();
        let mut config = coordinator.worker_config(dir.path());
        tweak(&mut config);
        let worker = Worker::start(config);
        let mut conn = coordinator.accept().await;
        assert_eq!(
            conn.assign(TENANT, 1, no_quota()).await,
            Body::Ack(cluster::Ack::default())
        );
        conn.op(create("docs", 2, api::Metric::L2)).await.unwrap();
        if n > 0 {
            let points = (1..=n)
                .map(|i| {
                    point(
                        i,
                        vec![i as f32, 0.0],
                        Some(serde_json::json!({"i": i, "even": i % 2 == 0})),
                    )
                })
                .collect();
            match conn.op(upsert("docs", points)).await.unwrap() {
                Answer::Upsert(resp) => assert_eq!(resp.upserted, n),
                other => panic!("{other:?}"),
            }
        }
        Setup {
            coordinator,
            conn,
            worker,
            dir,
        }
    }

    pub async fn new(n: u64) -> Setup {
        Setup::with(n, |_| {}).await
    }

    pub async fn stop(self) {
        self.worker.stop().await;
    }
}
