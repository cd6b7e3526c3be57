//! The coordinator's configuration: one TOML file, unknown keys refused, secrets only as file paths.
//!
//! [`Config::load`] reads the raw file, then reads and checks every secret file (mode 0600 or
//! stricter) and validates the tiers. See `coordinator/coordinator.example.toml`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use zeroize::Zeroizing;

/// The built-in tier that refuses every data request.
pub const PAUSED_TIER: &str = "paused";

/// Limits of a tier.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Most collections a tenant may have.
    pub max_collections: u32,
    /// Most live points over all collections.
    pub max_points: u64,
    /// Most bytes the live points of all collections occupy, 0 for no limit: per point its vector
    /// (4 bytes a component), id and payload, as the worker's memory budget counts them. An upsert
    /// that would grow the tenant past it is refused (an overwrite that does not grow it is not).
    pub max_stored_bytes: u64,
    /// Largest vector dimension of a collection.
    pub max_dim: u32,
    /// Sustained requests per second.
    pub requests_per_second: f64,
    /// Requests allowed in a burst above the sustained rate.
    pub burst: u32,
    /// Largest request body in bytes (HTTP body or gRPC message).
    pub max_body_bytes: usize,
    /// Requests one tenant of the tier may have in flight through the coordinator at once; one
    /// more is answered 429 at once. 0 (the default): `max_in_flight_per_tenant`. Never more than
    /// `max_in_flight_per_worker`.
    #[serde(default)]
    pub max_in_flight: usize,
    /// Days between scheduled rotations of each of its tenants' KEKs (`rotate_keks` job);
    /// 0 (the default) rotates only on request.
    #[serde(default)]
    pub rotate_kek_every_days: u32,
    /// Hours between scheduled snapshots of each of its tenants (`snapshots` job); 0 (the
    /// default) snapshots only on request.
    #[serde(default)]
    pub snapshot_every_hours: u32,
    /// Scheduled snapshots kept per tenant; older ones are deleted by the `snapshots` job
    /// (snapshots taken on request are kept until deleted). Default 7.
    #[serde(default = "default_snapshot_keep")]
    pub snapshot_keep: u32,
    /// Copies of each tenant, each on a different worker (1 to 3; default 1). Writes are
    /// acknowledged once every live copy has made them durable; reads go to any live copy.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Billing anomalies (`[tiers.<name>.anomaly]`, `crate::billing`).
    #[serde(default)]
    pub anomaly: crate::billing::AnomalyPolicy,
}

fn default_replicas() -> u32 {
    1
}

fn default_snapshot_keep() -> u32 {
    7
}

impl Tier {
    fn validate(&self, name: &str) -> anyhow::Result<()> {
        if !(self.requests_per_second.is_finite() && self.requests_per_second > 0.0) {
            bail!("tier {name}: requests_per_second must be a positive number");
        }
        if self.burst == 0 || self.max_body_bytes == 0 || self.max_dim == 0 {
            bail!("tier {name}: burst, max_body_bytes and max_dim must be positive");
        }
        if self.rotate_kek_every_days > 3_650 {
            bail!("tier {name}: rotate_kek_every_days is 0 (never) to 3650");
        }
        if self.snapshot_every_hours > 8_760 || !(1..=1_000).contains(&self.snapshot_keep) {
            bail!(
                "tier {name}: snapshot_every_hours is 0 (never) to 8760, snapshot_keep 1 to 1000"
            );
        }
        self.anomaly.validate(name)?;
        if !(1..=3).contains(&self.replicas) {
            bail!("tier {name}: replicas must be 1, 2 or 3");
        }
        if self.max_dim > 4096 {
            bail!("tier {name}: max_dim is at most 4096");
        }
        let one_vector = u64::from(self.max_dim) * 4;
        if self.max_stored_bytes != 0 && self.max_stored_bytes < one_vector {
            bail!(
                "tier {name}: max_stored_bytes must be 0 (no limit) or at least one vector of \
                 max_dim, {one_vector} bytes"
            );
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    http: SocketAddr,
    grpc: SocketAddr,
    cluster: SocketAddr,
    metrics: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    pepper_file: PathBuf,
    admin_token_file: PathBuf,
    audit_key_file: PathBuf,
    root_key_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    id: String,
    token_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClusterTls {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: PathBuf,
    listen: RawListen,
    secrets: RawSecrets,
    #[serde(default)]
    workers: Vec<RawWorker>,
    default_tier: String,
    tiers: BTreeMap<String, Tier>,
    #[serde(default = "default_request_timeout")]
    request_timeout_secs: u64,
    #[serde(default = "default_in_flight")]
    max_in_flight_per_worker: usize,
    max_in_flight_per_tenant: Option<usize>,
    #[serde(default)]
    health: RawHealth,
    #[serde(default = "default_large_message_budget")]
    large_message_budget_bytes: usize,
    #[serde(default = "default_auto_rebalance")]
    auto_rebalance: bool,
    #[serde(default)]
    auth_failures: AuthFailureBudget,
    cluster_tls: Option<RawClusterTls>,
    #[serde(default)]
    jobs: jobs::RawJobs,
    #[serde(default)]
    privacy: Privacy,
    #[serde(default)]
    snapshots: crate::snapshot::RawSettings,
    #[serde(default)]
    outbound: crate::outbound::OutboundConfig,
    dashboard: Option<crate::dashboard::RawDashboard>,
    mail: Option<crate::mail::RawMail>,
}

/// `[privacy]`: privacy requests (`DELETE /admin/v1/tenants/{t}/entities/{entity_id}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Privacy {
    /// The payload field that names the entity (a person, a customer's customer) a point is
    /// about; an entity erasure removes every point whose payload has this field equal to the
    /// entity id. A dotted path reaches into nested objects.
    #[serde(default = "default_entity_field")]
    pub entity_field: String,
    /// How long an erasure may take on a worker, rewrite included, before the coordinator stops
    /// waiting (the worker finishes it anyway; running it again reports what is left).
    #[serde(default = "default_erase_timeout_secs")]
    pub erase_timeout_secs: u64,
}

impl Default for Privacy {
    fn default() -> Privacy {
        Privacy {
            entity_field: default_entity_field(),
            erase_timeout_secs: default_erase_timeout_secs(),
        }
    }
}

fn default_entity_field() -> String {
    "entity_id".to_owned()
}

fn default_erase_timeout_secs() -> u64 {
    600
}

/// Failed authentications allowed per client address (`[auth_failures]`): a sustained rate and a
/// burst. Beyond them a client is answered 429 before any lookup or audit write.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFailureBudget {
    /// Failures per second, sustained.
    pub per_second: f64,
    /// Failures allowed at once.
    pub burst: u32,
    /// Addresses of reverse proxies in front of the public listeners. A request whose TCP peer is
    /// one of them is counted against the address its `X-Forwarded-For` names (the rightmost
    /// entry that is not a listed proxy); from any other peer the header is ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for AuthFailureBudget {
    fn default() -> AuthFailureBudget {
        AuthFailureBudget {
            per_second: 10.0,
            burst: 50,
            trusted_proxies: Vec::new(),
        }
    }
}

fn default_large_message_budget() -> usize {
    crate::api::DEFAULT_LARGE_MESSAGE_BUDGET_BYTES
}

fn default_request_timeout() -> u64 {
    30
}
fn default_auto_rebalance() -> bool {
    true
}
fn default_in_flight() -> usize {
    256
}
/// `[health]`: when the health tracker calls a connected worker suspect (no new tenants are
/// placed on it) and when down (its connection is closed and its tenants are unavailable on it),
/// counted from its last heartbeat. Workers send one every second by default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default = "default_suspect_after_ms")]
    suspect_after_ms: u64,
    #[serde(default = "default_down_after_ms")]
    down_after_ms: u64,
    #[serde(default = "default_replace_after_ms")]
    replace_after_ms: u64,
}

impl Default for RawHealth {
    fn default() -> RawHealth {
        RawHealth {
            suspect_after_ms: default_suspect_after_ms(),
            down_after_ms: default_down_after_ms(),
            replace_after_ms: default_replace_after_ms(),
        }
    }
}

fn default_suspect_after_ms() -> u64 {
    3_000
}
fn default_down_after_ms() -> u64 {
    6_000
}
fn default_replace_after_ms() -> u64 {
    60_000
}

/// Secrets, read from their files. None of them is ever printed.
pub struct Secrets {
    /// HMAC key for API-key digests.
    pub pepper: Zeroizing<Vec<u8>>,
    /// Bearer token of the admin API.
    pub admin_token: crate::auth::BearerToken,
    /// HMAC key of the audit chain.
    pub audit_key: Zeroizing<Vec<u8>>,
    /// Path of the root key file that wraps tenant KEKs (read by the key provider itself).
    pub root_key_file: PathBuf,
}

/// A worker allowed to connect, and its token.
pub struct WorkerCredential {
    /// The worker's id.
    pub id: String,
    /// Its bearer token.
    pub token: crate::auth::BearerToken,
}

/// Addresses of the four listeners.
#[derive(Debug, Clone, Copy)]
pub struct Listen {
    /// Public HTTP/JSON API and admin API.
    pub http: SocketAddr,
    /// Public gRPC API.
    pub grpc: SocketAddr,
    /// Workers' WebSocket (keep it off the public network).
    pub cluster: SocketAddr,
    /// Prometheus metrics, liveness and readiness.
    pub metrics: SocketAddr,
}

/// TLS on the cluster listener: the certificate chain and private key the coordinator presents to
/// workers dialing `wss://`. Workers are not asked for certificates; they authenticate with their
/// token inside the upgrade, as over plain `ws://`.
#[derive(Clone)]
pub struct ClusterTls {
    server: Arc<rustls::ServerConfig>,
}

impl ClusterTls {
    /// Reads the PEM certificate chain (leaf first) and the PEM private key (PKCS#8, PKCS#1 or
    /// SEC1). The key file is a secret: mode 0600 or stricter, like every other secret file.
    pub fn load(cert_file: &Path, key_file: &Path) -> anyhow::Result<ClusterTls> {
        let chain = std::fs::read(cert_file)
            .with_context(|| format!("reading cluster_tls.cert_file {}", cert_file.display()))?;
        let key = read_secret(key_file).context("cluster_tls.key_file")?;
        ClusterTls::parse(
            &chain,
            &key,
            &cert_file.display().to_string(),
            &key_file.display().to_string(),
        )
    }

    /// As [`ClusterTls::load`], from PEM text in memory (tests make theirs at run time).
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<ClusterTls> {
        ClusterTls::parse(
            cert_chain_pem,
            key_pem,
            "the certificate",
            "the private key",
        )
    }

    fn parse(
        chain: &[u8],
        key: &[u8],
        cert_name: &str,
        key_name: &str,
    ) -> anyhow::Result<ClusterTls> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{cert_name} is not a PEM certificate chain"))?;
        if chain.is_empty() {
            bail!("{cert_name} holds no PEM CERTIFICATE block");
        }
        // The parser's own message could quote the key's text, so it is left out.
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| {
            anyhow::anyhow!(
                "{key_name} is not a PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .with_context(|| format!("{key_name} does not fit {cert_name}"))?;
        Ok(ClusterTls {
            server: Arc::new(server),
        })
    }

    /// The rustls server configuration: the ring provider, TLS 1.2 and 1.3, no client certificates.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }
}

/// The validated configuration.
pub struct Config {
    /// Where SQLite and the tenant KEKs live.
    pub data_dir: PathBuf,
    /// Listener addresses (the binary binds them; tests pass their own listeners).
    pub listen: Listen,
    /// Secrets.
    pub secrets: Secrets,
    /// Workers allowed to connect.
    pub workers: Vec<WorkerCredential>,
    /// Tier of new tenants when none is given.
    pub default_tier: String,
    /// Tiers by name; `paused` is built in and refuses every data request.
    pub tiers: BTreeMap<String, Tier>,
    /// Deadline of a request routed to a worker.
    pub request_timeout: Duration,
    /// Requests in flight per worker before new ones are answered busy.
    pub max_in_flight_per_worker: usize,
    /// Requests in flight per tenant before its new ones are answered 429 (default: a quarter of
    /// the per-worker bound), so one tenant cannot take every slot of its worker.
    pub max_in_flight_per_tenant: usize,
    /// When a worker without heartbeats is suspect, and when down (disconnected).
    pub health: crate::cluster::HealthConfig,
    /// How long a worker may be down before the copies of replicated tenants it held are
    /// replaced by new ones on other workers (`[health] replace_after_ms`).
    pub replace_after: Duration,
    /// Whether copies are handed over from the workers holding the most to those holding the
    /// fewest (a worker that joins, say), one at a time, with no request refused.
    pub auto_rebalance: bool,
    /// Memory that messages over 64 KiB in flight may hold, all tenants together, counted as
    /// [`crate::api::LARGE_MESSAGE_EXPANSION`] times their size (request bodies from before they
    /// are read, answers from their arrival until their last bytes are handed to the socket).
    pub large_message_budget_bytes: usize,
    /// Failed authentications allowed per client address.
    pub auth_failures: AuthFailureBudget,
    /// TLS on the cluster listener (`[cluster_tls]`); `None` serves plain `ws://`.
    pub cluster_tls: Option<ClusterTls>,
    /// The scheduled jobs and their intervals (`[jobs]`).
    pub jobs: Vec<crate::jobs::JobSpec>,
    /// Privacy requests (`[privacy]`).
    pub privacy: Privacy,
    /// The snapshot store (`[snapshots]`).
    pub snapshots: crate::snapshot::Settings,
    /// The scheduler's clock (the dashboard's sessions too): the host's, or one a test moves.
    pub clock: std::sync::Arc<dyn crate::jobs::Clock>,
    /// The outbound guard's allowances and roots (`[outbound]`).
    pub outbound: crate::outbound::OutboundConfig,
    /// The dashboard (`[dashboard]`); without it the dashboard's routes answer 404.
    pub dashboard: Option<crate::dashboard::DashboardConfig>,
    /// The mail relay (`[mail]`); without it mail waits in the outbox.
    pub mail: Option<crate::mail::MailConfig>,
}

/// Reads a secret file, refusing one that others may read.
pub fn read_secret(path: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "{} is readable by other users (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let trimmed = bytes.trim_ascii().to_vec();
    let out = Zeroizing::new(trimmed);
    drop(Zeroizing::new(bytes));
    if out.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(out)
}

pub(crate) fn read_secret_string(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let bytes = read_secret(path)?;
    let text = std::str::from_utf8(&bytes)
        .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    Ok(Zeroizing::new(text.to_owned()))
}

impl Config {
    /// Reads and validates a config file; relative paths are relative to the file's directory.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let raw: RawConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_raw(raw, base)
    }

    fn from_raw(raw: RawConfig, base: &Path) -> anyhow::Result<Config> {
        let at = |p: &Path| base.join(p);
        let secrets = Secrets {
            pepper: read_secret(&at(&raw.secrets.pepper_file))?,
            admin_token: crate::auth::BearerToken::new(read_secret_string(&at(&raw
                .secrets
                .admin_token_file))?),
            audit_key: read_secret(&at(&raw.secrets.audit_key_file))?,
            root_key_file: at(&raw.secrets.root_key_file),
        };
        if secrets.pepper.len() < 32 || secrets.audit_key.len() < 32 {
            bail!("the pepper and the audit key must be at least 32 bytes");
        }
        if secrets.admin_token.len() < 32 {
            bail!("the admin token must be at least 32 characters");
        }
        let mut workers = Vec::new();
        for w in raw.workers {
            let token = read_secret_string(&at(&w.token_file))?;
            if token.len() < 32 {
                bail!(
                    "the token of worker {} must be at least 32 characters",
                    w.id
                );
            }
            workers.push(WorkerCredential {
                id: w.id,
                token: crate::auth::BearerToken::new(token),
            });
        }
        let cluster_tls = match &raw.cluster_tls {
            Some(tls) => Some(ClusterTls::load(&at(&tls.cert_file), &at(&tls.key_file))?),
            None => None,
        };
        let config = Config {
            data_dir: at(&raw.data_dir),
            listen: Listen {
                http: raw.listen.http,
                grpc: raw.listen.grpc,
                cluster: raw.listen.cluster,
                metrics: raw.listen.metrics,
            },
            secrets,
            workers,
            default_tier: raw.default_tier,
            tiers: raw.tiers,
            request_timeout: Duration::from_secs(raw.request_timeout_secs.max(1)),
            max_in_flight_per_worker: raw.max_in_flight_per_worker.max(1),
            max_in_flight_per_tenant: raw
                .max_in_flight_per_tenant
                .unwrap_or(raw.max_in_flight_per_worker / 4)
                .max(1),
            health: crate::cluster::HealthConfig {
                suspect_after: Duration::from_millis(raw.health.suspect_after_ms),
                down_after: Duration::from_millis(raw.health.down_after_ms),
            },
            replace_after: Duration::from_millis(raw.health.replace_after_ms),
            auto_rebalance: raw.auto_rebalance,
            large_message_budget_bytes: raw.large_message_budget_bytes,
            auth_failures: raw.auth_failures,
            cluster_tls,
            jobs: jobs::job_specs(&raw.jobs),
            privacy: raw.privacy,
            snapshots: raw.snapshots.resolve(&at(&raw.data_dir), at)?,
            clock: std::sync::Arc::new(crate::jobs::SystemClock),
            outbound: crate::outbound::OutboundConfig {
                allow_hosts: raw.outbound.allow_hosts.clone(),
                ca_file: raw.outbound.ca_file.as_deref().map(at),
            },
            dashboard: match &raw.dashboard {
                Some(d) => Some(d.resolve(at)?),
                None => None,
            },
            mail: match &raw.mail {
                Some(m) => Some(m.resolve(at)?),
                None => None,
            },
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !(1 << 20..=1 << 40).contains(&self.large_message_budget_bytes) {
            bail!("large_message_budget_bytes must be between 1 MiB and 1 TiB");
        }
        let health = &self.health;
        if health.suspect_after < Duration::from_millis(100)
            || health.suspect_after >= health.down_after
            || health.down_after > Duration::from_secs(3600)
        {
            bail!(
                "[health] needs 100 <= suspect_after_ms < down_after_ms <= 3600000 \
                 (workers send a heartbeat every second by default)"
            );
        }
        if self.replace_after < health.down_after
            || self.replace_after > Duration::from_secs(86_400)
        {
            bail!("[health] needs down_after_ms <= replace_after_ms <= 86400000");
        }
        for job in &self.jobs {
            if !(Duration::from_secs(60)..=Duration::from_secs(30 * 86_400)).contains(&job.every) {
                bail!(
                    "[jobs] every interval is 60 seconds to 30 days ({})",
                    job.name
                );
            }
        }
        let field = &self.privacy.entity_field;
        if field.is_empty()
            || field.len() > 128
            || field.chars().any(char::is_control)
            || field.split('.').any(str::is_empty)
        {
            bail!(
                "[privacy] entity_field is a payload field: 1 to 128 bytes, no control \
                 characters, no empty part between dots"
            );
        }
        if !(1..=86_400).contains(&self.privacy.erase_timeout_secs) {
            bail!("[privacy] erase_timeout_secs is 1 to 86400");
        }
        let budget = &self.auth_failures;
        if !(budget.per_second.is_finite() && budget.per_second > 0.0) || budget.burst == 0 {
            bail!("[auth_failures] per_second must be a positive number and burst at least 1");
        }
        if self.tiers.contains_key(PAUSED_TIER) {
            bail!("tier `{PAUSED_TIER}` is built in and cannot be configured");
        }
        for (name, tier) in &self.tiers {
            tier.validate(name)?;
        }
        if !self.tiers.contains_key(&self.default_tier) {
            bail!(
                "default_tier {:?} is not a configured tier",
                self.default_tier
            );
        }
        let mut ids: Vec<&str> = self.workers.iter().map(|w| w.id.as_str()).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            bail!("a worker id appears twice in [[workers]]");
        }
        Ok(())
    }

    /// A configuration for tests: generated secrets in `dir`, two tiers (`free`, small, and `pro`,
    /// roomy), loopback addresses (unused: tests hand in their own listeners), no cluster TLS (set
    /// [`Config::cluster_tls`] to turn it on).
    pub fn for_tests(dir: &Path, workers: &[(&str, &str)]) -> Config {
        std::fs::create_dir_all(dir).expect("creating the test data dir");
        storage::crypto::LocalKeyFile::open_or_generate(&dir.join("root.key"))
            .expect("creating the test root key");
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut tiers = BTreeMap::new();
        tiers.insert(
            "free".to_owned(),
            Tier {
                max_collections: 3,
                max_points: 1_000,
                max_stored_bytes: 64 << 20,
                max_dim: 256,
                requests_per_second: 5.0,
                burst: 10,
                max_body_bytes: 256 * 1024,
                max_in_flight: 0,
                rotate_kek_every_days: 0,
                snapshot_every_hours: 0,
                snapshot_keep: 7,
                replicas: 1,
                anomaly: crate::billing::AnomalyPolicy::default(),
            },
        );
        tiers.insert(
            "pro".to_owned(),
            Tier {
                max_collections: 100,
                max_points: 10_000_000,
                max_stored_bytes: 0,
                max_dim: 4096,
                requests_per_second: 100_000.0,
                burst: 100_000,
                max_body_bytes: 64 << 20,
                max_in_flight: 0,
                rotate_kek_every_days: 0,
                snapshot_every_hours: 0,
                snapshot_keep: 7,
                replicas: 1,
                anomaly: crate::billing::AnomalyPolicy::default(),
            },
        );
        Config {
            data_dir: dir.to_owned(),
            listen: Listen {
                http: loopback,
                grpc: loopback,
                cluster: loopback,
                metrics: loopback,
            },
            secrets: Secrets {
                pepper: Zeroizing::new(vec![7u8; 32]),
                admin_token: crate::auth::BearerToken::new(Zeroizing::new(
                    "test-admin-token-0123456789abcdefghij".to_owned(),
                )),
                audit_key: Zeroizing::new(vec![9u8; 32]),
                root_key_file: dir.join("root.key"),
            },
            workers: workers
                .iter()
                .map(|(id, token)| WorkerCredential {
                    id: (*id).to_owned(),
                    token: crate::auth::BearerToken::new(Zeroizing::new((*token).to_owned())),
                })
                .collect(),
            default_tier: "pro".to_owned(),
            tiers,
            large_message_budget_bytes: crate::api::DEFAULT_LARGE_MESSAGE_BUDGET_BYTES,
            request_timeout: Duration::from_secs(30),
            max_in_flight_per_worker: 256,
            max_in_flight_per_tenant: 64,
            health: crate::cluster::HealthConfig {
                suspect_after: Duration::from_secs(30),
                down_after: Duration::from_secs(60),
            },
            replace_after: Duration::from_secs(60),
            // Tests that place tenants where they want them turn it on only to test it.
            auto_rebalance: false,
            auth_failures: AuthFailureBudget::default(),
            cluster_tls: None,
            jobs: jobs::job_specs(&jobs::RawJobs::default()),
            privacy: Privacy::default(),
            snapshots: crate::snapshot::RawSettings::default()
                .resolve(dir, |p| dir.join(p))
                .expect("default snapshot settings"),
            clock: std::sync::Arc::new(crate::jobs::SystemClock),
            outbound: crate::outbound::OutboundConfig::default(),
            dashboard: None,
            mail: None,
        }
    }
}

mod jobs;

#[cfg(test)]
mod tests;
