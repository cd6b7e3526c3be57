//! vaultvec coordinator: the public face of the cluster.
//!
//! Clients call the gRPC ([`grpc`]) or HTTP/JSON ([`http`]) API; both go through one service layer
//! ([`api`]) that authenticates the API key ([`auth`]), applies the tenant's tier, validates, and
//! routes the request over WebSocket to the worker holding the tenant ([`cluster`]). The coordinator
//! owns the control-plane SQLite database ([`store`]), the tenants' KEKs (it is the workers' key
//! service), and the hash-chained audit trail ([`audit`]).
//!
//! Entry point: [`Coordinator::open`] with bound listeners, then [`Coordinator::run`] until a
//! shutdown future resolves (the binary hands in SIGTERM/ctrl-c; tests a cancellation token).

pub mod api;
pub mod audit;
pub mod auth;
pub mod billing;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod failpoint;
pub mod grpc;
pub mod http;
pub mod jobs;
pub mod mail;
pub mod metrics;
pub mod net;
pub mod outbound;
pub mod snapshot;
pub mod store;

/// The name of the thread (and `storage::gate` counter) of the gate the pieces of large bodies
/// and answers pass.
pub const GATE_THREAD: &str = "vv-gate";

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::response::IntoResponse;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::Service;
use crate::cluster::Hub;
use crate::config::Config;

/// The four listeners, bound by the caller (the binary from the config, tests on port 0).
pub struct Listeners {
    /// Public HTTP/JSON and admin API.
    pub http: TcpListener,
    /// Public gRPC API.
    pub grpc: TcpListener,
    /// Workers' WebSocket.
    pub cluster: TcpListener,
    /// Metrics and probes.
    pub metrics: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(listen: &config::Listen) -> anyhow::Result<Listeners> {
        async fn one(addr: SocketAddr) -> anyhow::Result<TcpListener> {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))
        }
        Ok(Listeners {
            http: one(listen.http).await?,
            grpc: one(listen.grpc).await?,
            cluster: one(listen.cluster).await?,
            metrics: one(listen.metrics).await?,
        })
    }

    /// Four listeners on loopback ports chosen by the kernel.
    pub async fn loopback() -> anyhow::Result<Listeners> {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        Listeners::bind(&config::Listen {
            http: any,
            grpc: any,
            cluster: any,
            metrics: any,
        })
        .await
    }

    /// The bound addresses.
    pub fn addrs(&self) -> anyhow::Result<config::Listen> {
        Ok(config::Listen {
            http: self.http.local_addr()?,
            grpc: self.grpc.local_addr()?,
            cluster: self.cluster.local_addr()?,
            metrics: self.metrics.local_addr()?,
        })
    }
}

/// An opened coordinator, ready to run.
pub struct Coordinator {
    service: Arc<Service>,
    hub: Arc<Hub>,
    listeners: Listeners,
}

impl Coordinator {
    /// Opens the database and the key service; binds nothing new.
    pub fn open(config: Config, listeners: Listeners) -> anyhow::Result<Coordinator> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        let audit_key = audit::AuditKey::new(&config.secrets.audit_key)
            .context("the audit key must be at least 32 bytes")?;
        let store = Arc::new(
            store::Store::open(&config.data_dir.join("coordinator.sqlite"), audit_key)
                .context("opening the control-plane database")?,
        );
        let root = storage::crypto::LocalKeyFile::open(&config.secrets.root_key_file)
            .context("opening the root key")?;
        let keys = Arc::new(
            storage::crypto::LocalKeyService::open(Arc::new(root), &config.data_dir.join("keks"))
                .context("opening the tenant key store")?,
        );
        let credentials = config
            .workers
            .iter()
            .map(|w| (w.id.clone(), w.token.clone()))
            .collect();
        let heavy = api::heavy_pool().context("starting the large-message pool")?;
        let gate = storage::gate::IdleGate::start(GATE_THREAD);
        let large = api::LargeMessages::new(config.large_message_budget_bytes);
        let mut hub = Hub::new(
            credentials,
            store.clone(),
            keys.clone(),
            config.max_in_flight_per_worker,
            config.health,
        )
        .with_max_in_flight_per_tenant(config.max_in_flight_per_tenant)
        .with_refusal_budget(config.auth_failures.per_second, config.auth_failures.burst)
        .with_heavy(heavy.clone())
        .with_budget(large.clone())
        .with_gate(gate.clone());
        if let Some(tls) = &config.cluster_tls {
            hub = hub.with_tls(tls.server_config());
        }
        let hub = Arc::new(hub);
        let outbound = outbound::Outbound::new(&config.outbound).context("the outbound guard")?;
        let dashboard = config.dashboard.clone().map(|d| {
            Arc::new(dashboard::Dashboard::new(
                d,
                outbound.clone(),
                store.clone(),
                config.clock.clone(),
            ))
        });
        let mailer = config
            .mail
            .clone()
            .map(|m| Arc::new(mail::Mailer::new(m, outbound.clone())));
        let service = Arc::new(Service::new(api::Parts {
            dashboard,
            mailer,
            store,
            pepper: config.secrets.pepper.clone(),
            hub: hub.clone(),
            heavy,
            gate,
            large,
            keys,
            tiers: config.tiers.clone(),
            default_tier: config.default_tier.clone(),
            admin_token: config.secrets.admin_token.clone(),
            request_timeout: config.request_timeout,
            metrics: metrics::Metrics::new(),
            auth_failures: config.auth_failures,
            replace_after: config.replace_after,
            auto_rebalance: config.auto_rebalance,
            jobs: jobs::Jobs::new(config.clock.clone(), config.jobs.clone()),
            privacy: config.privacy.clone(),
            snapshots: config.snapshots.clone(),
        })?);
        service.schedule_jobs();
        Ok(Coordinator {
            service,
            hub,
            listeners,
        })
    }

    /// The shared service layer (tests use it to wait for workers and inspect state).
    pub fn service(&self) -> Arc<Service> {
        self.service.clone()
    }

    /// The worker hub.
    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    /// The bound addresses.
    pub fn addrs(&self) -> anyhow::Result<config::Listen> {
        self.listeners.addrs()
    }

    /// Serves until `shutdown` resolves, then drains: the public listeners stop accepting and
    /// finish their in-flight requests first, then the worker connections close.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Coordinator {
            service,
            hub,
            listeners,
        } = self;
        // A write in flight when the coordinator stopped may have reached only some copies:
        // before any request is served, every replica is recorded stale, to copy its primary
        // again before it is read from.
        let staled = api::off_runtime(|| {
            service
                .store
                .stale_all_replicas(&store::Actor("system".into()))
        })
        .map_err(|err| anyhow::anyhow!("recording replicas stale at start: {err}"))?;
        if staled > 0 {
            tracing::info!(
                replicas = staled,
                "replicas recorded stale at start; they catch up from their primaries"
            );
        }
        let public = CancellationToken::new();
        let internal = CancellationToken::new();
        let mut servers = tokio::task::JoinSet::new();

        let router = http::router(service.clone());
        let stop = public.clone();
        let trusted = service.trusted_proxies().to_vec();
        let http_listener =
            net::LimitedListener::new(listeners.http, net::MAX_CONNECTIONS, net::HTTP_IDLE)
                .per_address(net::MAX_CONNECTIONS_PER_ADDRESS, trusted.clone());
        servers.spawn(async move {
            // Bounded connections (per listener and per address), idle ones closed, request heads
            // on a deadline, TCP_NODELAY (net.rs).
            net::serve_http(http_listener, router, stop)
                .await
                .context("http server")
        });

        let grpc = grpc::Grpc::new(service.clone());
        let authenticate = grpc::Authenticate::new(service.clone());
        let call_timeout = service.request_timeout() + std::time::Duration::from_secs(5);
        let request_log = grpc::RequestLog::new(service.clone());
        let message_budget = grpc::message::MessageBudget::new(service.clone());
        let stop = public.clone();
        servers.spawn(async move {
            use proto::vaultvec::v1::{
                collections_server::CollectionsServer, health_server::HealthServer,
                points_server::PointsServer,
            };
            let max = grpc::MAX_MESSAGE_BYTES;
            // The key is checked from the metadata before a message is read or decoded (INV-22):
            // `tag_path` records which method a request is for, then the interceptor authenticates,
            // then `MessageBudget` checks the message's declared length against the tier and the
            // large-message budget before tonic reads it.
            // The request log is outermost, so it also logs the calls the interceptor refuses.
            let layers = tower::ServiceBuilder::new()
                .layer(request_log)
                .layer(tower::util::MapRequestLayer::new(grpc::tag_path))
                .layer(tonic::service::InterceptorLayer::new(authenticate))
                .layer(message_budget);
            tonic::transport::Server::builder()
                .max_concurrent_streams(Some(grpc::MAX_STREAMS_PER_CONNECTION))
                .concurrency_limit_per_connection(grpc::MAX_STREAMS_PER_CONNECTION as usize)
                .http2_max_header_list_size(grpc::MAX_HEADER_BYTES)
                .http2_keepalive_interval(Some(net::GRPC_KEEPALIVE))
                .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
                .timeout(call_timeout)
                .layer(layers)
                .add_service(CollectionsServer::new(grpc.clone()).max_decoding_message_size(max))
                .add_service(
                    PointsServer::new(grpc.clone())
                        .max_decoding_message_size(max)
                        .max_encoding_message_size(max),
                )
                .add_service(HealthServer::new(grpc))
                .serve_with_incoming_shutdown(
                    net::incoming(
                        net::LimitedListener::new(
                            listeners.grpc,
                            net::MAX_CONNECTIONS,
                            net::GRPC_IDLE,
                        )
                        .per_address(net::MAX_CONNECTIONS_PER_ADDRESS, trusted),
                    ),
                    stop.cancelled_owned(),
                )
                .await
                .context("grpc server")
        });

        let metrics_router = metrics_router(service.clone());
        let stop = public.clone();
        servers.spawn(async move {
            axum::serve(listeners.metrics, metrics_router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .context("metrics server")
        });

        // Moves cut short: those still copying are aborted before any request is served; the
        // copies they left are deleted when their workers say hello.
        service
            .abort_interrupted_moves()
            .map_err(|err| anyhow::anyhow!("aborting interrupted moves: {}", err.message))?;
        service
            .sweep_snapshot_store()
            .map_err(|err| anyhow::anyhow!("sweeping the snapshot store: {}", err.message))?;
        service
            .resume_drains()
            .map_err(|err| anyhow::anyhow!("resuming drains: {}", err.message))?;
        // Restores cut short: their tenants answer `restoring` until each is settled.
        service
            .hold_unsettled_restores()
            .map_err(|err| anyhow::anyhow!("listing unsettled restores: {}", err.message))?;
        let repair = tokio::spawn({
            let service = service.clone();
            let stop = internal.clone();
            async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = service.repair_replicas_forever() => {}
                }
            }
        });
        let scheduler = tokio::spawn({
            let service = service.clone();
            let stop = internal.clone();
            async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    () = service.run_jobs_forever() => {}
                }
            }
        });
        let mut hellos = hub.hellos();
        let stop = internal.clone();
        let moves_service = service.clone();
        let moves = tokio::spawn(async move {
            loop {
                let worker = tokio::select! {
                    _ = stop.cancelled() => break,
                    hello = hellos.recv() => match hello {
                        Ok(worker) => worker,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                };
                moves_service.finish_moves_on(&worker).await;
                moves_service.drop_leftovers_on(&worker).await;
                moves_service.finish_storage_moves_on(&worker).await;
                moves_service.settle_restores(Some(&worker)).await;
            }
        });
        // A restore whose switch failed or went unanswered is settled by this pass (and by its
        // worker's next hello).
        let settling = tokio::spawn({
            let service = service.clone();
            let stop = internal.clone();
            async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = every.tick() => service.settle_restores(None).await,
                    }
                }
            }
        });

        let cluster_hub = hub.clone();
        let stop = internal.clone();
        let cluster = tokio::spawn(async move {
            cluster_hub
                .serve(listeners.cluster, stop.cancelled_owned())
                .await;
        });

        // Failed authentications are counted in memory and written as coalesced audit rows.
        let flushing = CancellationToken::new();
        let failure_rows = tokio::spawn(api::failures::flush_every(
            api::failures::AUDIT_WINDOW,
            flushing.clone(),
            {
                let service = service.clone();
                Arc::new(move || service.flush_auth_failures())
            },
        ));

        tracing::info!(cluster_tls = hub.is_tls(), "coordinator serving");
        let mut failure = None;
        tokio::select! {
            _ = shutdown => {}
            Some(res) = servers.join_next() => {
                failure = Some(res.map_err(anyhow::Error::from).and_then(|r| r).err());
            }
        }
        tracing::info!("shutting down: draining requests");
        public.cancel();
        while let Some(res) = servers.join_next().await {
            if let Err(err) = res.map_err(anyhow::Error::from).and_then(|r| r) {
                tracing::error!(error = %err, "server failed while draining");
            }
        }
        flushing.cancel();
        if let Err(err) = failure_rows.await {
            tracing::error!(error = %err, "the failed-authentication writer failed");
        }
        internal.cancel();
        cluster.await.context("cluster listener")?;
        let _ = moves.await;
        let _ = settling.await;
        let _ = repair.await;
        let _ = scheduler.await;
        // Usage counted since the last flush is kept.
        let _ = service.flush_usage();
        match failure.flatten() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

fn metrics_router(service: Arc<Service>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get({
                let service = service.clone();
                move || async move {
                    service
                        .metrics
                        .workers_connected
                        .set(service.hub.connected().len() as i64);
                    let store = service.store.clone();
                    let (known, placements, moves, leftovers) =
                        tokio::task::spawn_blocking(move || {
                            (
                                store.list_workers().unwrap_or_default(),
                                store.placements().unwrap_or_default(),
                                store.moves().map_or(0, |m| m.len()),
                                store.leftover_count().unwrap_or(0),
                            )
                        })
                        .await
                        .unwrap_or_default();
                    let known: Vec<String> = known.into_iter().map(|w| w.id).collect();
                    let fleet = &service.metrics.workers;
                    fleet.set(&known, &service.hub.health());
                    fleet.set_placed(&known, &placements);
                    fleet.moves.set(moves as i64);
                    fleet.leftover_copies.set(leftovers as i64);
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        service.metrics.render(),
                    )
                }
            }),
        )
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if service.hub.connected().is_empty() {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "no worker connected",
                    )
                        .into_response()
                } else {
                    "ok".into_response()
                }
            }),
        )
}

/// Opens and runs a coordinator: the whole server.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Coordinator::open(config, listeners)?.run(shutdown).await
}
