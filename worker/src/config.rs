//! The worker's configuration: one TOML file, unknown keys refused, the token only as a file path.
//!
//! [`Config::load`] parses the raw file, reads the token file (mode 0600 or stricter), validates
//! every value and, for a `wss://` URL, loads the trusted roots (`ca_file` or the system's). `worker/worker.example.toml` documents each key.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use zeroize::Zeroizing;

/// Everything `serve` needs, validated.
#[derive(Clone)]
pub struct Config {
    /// This worker's id, as configured on the coordinator (sent in the upgrade and in `Hello`).
    pub worker_id: String,
    /// The coordinator's cluster endpoint, `ws://host:port/v1/cluster` or, when the coordinator's
    /// cluster listener has TLS on, `wss://host:port/v1/cluster`.
    pub coordinator_url: String,
    /// PEM bundle of the roots trusted for the coordinator's certificate (`wss://` only); `None`
    /// trusts the platform's root store.
    pub ca_file: Option<PathBuf>,
    /// The worker token sent as `authorization: Bearer <token>`. Zeroized on drop, never logged.
    pub token: Zeroizing<String>,
    /// Where the tenants' encrypted files live.
    pub data_dir: PathBuf,
    /// Where paused tenants' files are moved (an HDD mount in production). Default
    /// `<data_dir>/cold`.
    pub cold_dir: PathBuf,
    /// Plaintext bytes the loaded tenants may hold before least-recently-used ones are unloaded.
    pub memory_budget_bytes: u64,
    /// Tenant requests running at once; one more is answered `ERROR_CODE_BUSY`. One tenant may
    /// hold `max_in_flight / (2 + other tenants with requests running)` of them, at least 1.
    pub max_in_flight: u32,
    /// Requests of one tenant that run at once (each on a thread); the tenant's other admitted
    /// requests wait for one of them to finish. Default: the number of cores.
    pub max_running_per_tenant: u32,
    /// A tenant no request has used for this long is unloaded (`None`: only the memory budget
    /// unloads). Default 5 minutes; `idle_unload_after = "0s"` in the file turns it off.
    pub idle_unload_after: Option<Duration>,
    /// The clock idle unloading goes by: the host's; tests move their own. Never set from the
    /// configuration file.
    #[doc(hidden)]
    pub clock: Arc<dyn crate::tenant::Clock>,
    /// How often a heartbeat is sent.
    pub heartbeat_interval: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_max_backoff: Duration,
    /// Bounds the storage engine enforces on every request.
    pub limits: storage::Limits,
    /// For tests only: called with the tenant and the operation's name on the thread that runs a
    /// tenant request, just before its work starts (and with a transfer step's name, such as
    /// `import_reuse`, before the step runs), so a test can hold a request there. Never set from
    /// the configuration file.
    #[doc(hidden)]
    pub request_hook: Option<RequestHook>,
}

/// See [`Config::request_hook`].
pub type RequestHook = Arc<dyn Fn(&str, &str) + Send + Sync>;

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("worker_id", &self.worker_id)
            .field("coordinator_url", &self.coordinator_url)
            .field("ca_file", &self.ca_file)
            .field("token", &"<redacted>")
            .field("data_dir", &self.data_dir)
            .field("cold_dir", &self.cold_dir)
            .field("memory_budget_bytes", &self.memory_budget_bytes)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_running_per_tenant", &self.max_running_per_tenant)
            .field("idle_unload_after", &self.idle_unload_after)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("reconnect_max_backoff", &self.reconnect_max_backoff)
            .field("limits", &self.limits)
            .field("request_hook", &self.request_hook.is_some())
            .finish()
    }
}

/// A duration in the file: an integer number of seconds, or a string such as `"500ms"`, `"15s"`,
/// `"2m"`, `"1h"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Seconds(u64),
    Text(String),
}

impl RawDuration {
    fn parse(&self, key: &str) -> anyhow::Result<Duration> {
        match self {
            RawDuration::Seconds(secs) => Ok(Duration::from_secs(*secs)),
            RawDuration::Text(text) => parse_duration(text)
                .with_context(|| format!("{key} = {text:?}: expected e.g. \"500ms\", \"15s\", \"2m\", \"1h\" or an integer number of seconds")),
        }
    }
}

fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().context("not a whole number")?;
    let millis = match unit.trim() {
        "ms" => Some(number),
        "s" | "" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        other => bail!("unknown unit {other:?}"),
    };
    millis
        .map(Duration::from_millis)
        .context("duration is too long")
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_top_k: Option<usize>,
    max_ef: Option<usize>,
    max_batch: Option<usize>,
    max_search_batch: Option<usize>,
    max_payload_bytes: Option<usize>,
    segment_points: Option<usize>,
    wal_bytes: Option<u64>,
    index_threads: Option<usize>,
    checkpoint_points: Option<usize>,
    max_answer_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    worker_id: String,
    coordinator_url: String,
    ca_file: Option<PathBuf>,
    token_file: PathBuf,
    data_dir: PathBuf,
    cold_dir: Option<PathBuf>,
    memory_budget_bytes: Option<u64>,
    max_in_flight: Option<u32>,
    max_running_per_tenant: Option<u32>,
    heartbeat_interval: Option<RawDuration>,
    reconnect_max_backoff: Option<RawDuration>,
    idle_unload_after: Option<RawDuration>,
    #[serde(default)]
    limits: RawLimits,
}

const DEFAULT_MEMORY_BUDGET_BYTES: u64 = 1 << 30;
const DEFAULT_MAX_IN_FLIGHT: u32 = 64;

/// One running request per core.
pub(crate) fn default_running_per_tenant() -> u32 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as u32)
}
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
const DEFAULT_IDLE_UNLOAD_AFTER: Duration = Duration::from_secs(300);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Config {
    /// Reads and validates the TOML file at `path`, and the token file it names.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let raw: RawConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Config::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> anyhow::Result<Config> {
        let token = read_token(&raw.token_file)?;
        let defaults = storage::Limits::default();
        let l = raw.limits;
        let limits = storage::Limits {
            max_top_k: l.max_top_k.unwrap_or(defaults.max_top_k),
            max_ef: l.max_ef.unwrap_or(defaults.max_ef),
            max_batch: l.max_batch.unwrap_or(defaults.max_batch),
            max_search_batch: l.max_search_batch.unwrap_or(defaults.max_search_batch),
            max_payload_bytes: l.max_payload_bytes.unwrap_or(defaults.max_payload_bytes),
            segment_points: l.segment_points.unwrap_or(defaults.segment_points),
            wal_bytes: l.wal_bytes.unwrap_or(defaults.wal_bytes),
            index_threads: l.index_threads.unwrap_or(defaults.index_threads),
            checkpoint_points: l.checkpoint_points.unwrap_or(defaults.checkpoint_points),
            max_answer_bytes: l.max_answer_bytes.unwrap_or(defaults.max_answer_bytes),
        };
        let config = Config {
            worker_id: raw.worker_id,
            coordinator_url: raw.coordinator_url,
            ca_file: raw.ca_file,
            token,
            cold_dir: raw.cold_dir.unwrap_or_else(|| raw.data_dir.join("cold")),
            data_dir: raw.data_dir,
            memory_budget_bytes: raw
                .memory_budget_bytes
                .unwrap_or(DEFAULT_MEMORY_BUDGET_BYTES),
            max_in_flight: raw.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
            max_running_per_tenant: raw
                .max_running_per_tenant
                .unwrap_or_else(default_running_per_tenant),
            idle_unload_after: match raw.idle_unload_after {
                Some(d) => Some(d.parse("idle_unload_after")?).filter(|d| !d.is_zero()),
                None => Some(DEFAULT_IDLE_UNLOAD_AFTER),
            },
            clock: Arc::new(crate::tenant::SystemClock),
            heartbeat_interval: match raw.heartbeat_interval {
                Some(d) => d.parse("heartbeat_interval")?,
                None => DEFAULT_HEARTBEAT,
            },
            reconnect_max_backoff: match raw.reconnect_max_backoff {
                Some(d) => d.parse("reconnect_max_backoff")?,
                None => DEFAULT_MAX_BACKOFF,
            },
            limits,
            request_hook: None,
        };
        config.validate()?;
        // Reads and checks the roots now, so a bad ca_file stops the worker at start.
        config.tls_client_config()?;
        Ok(config)
    }

    /// The TLS client configuration for a `wss://` URL (`None` for `ws://`).
    pub(crate) fn tls_client_config(&self) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
        if self.coordinator_url.starts_with("wss://") {
            crate::tls::client_config(self.ca_file.as_deref()).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Checks every value; `serve` calls it too, so a hand-built `Config` is held to the same rules.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        let id_ok = (1..=63).contains(&self.worker_id.len())
            && self
                .worker_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !id_ok {
            bail!(
                "worker_id {:?} must be 1..=63 bytes of [A-Za-z0-9._-]",
                self.worker_id
            );
        }
        let is_tls = self.coordinator_url.starts_with("wss://");
        if !is_tls && !self.coordinator_url.starts_with("ws://") {
            bail!(
                "coordinator_url {:?} must start with ws:// (plain, for loopback or a private \
                 network) or wss:// (TLS, when the coordinator has [cluster_tls])",
                self.coordinator_url
            );
        }
        if !is_tls && let Some(ca_file) = &self.ca_file {
            bail!(
                "ca_file {} is set but coordinator_url {:?} is plain ws://; use wss:// or remove \
                 ca_file",
                ca_file.display(),
                self.coordinator_url
            );
        }
        check_token(&self.token)?;
        if self.memory_budget_bytes == 0 {
            bail!("memory_budget_bytes must be positive");
        }
        if self.max_in_flight == 0 {
            bail!("max_in_flight must be at least 1");
        }
        if self.max_running_per_tenant == 0 {
            bail!("max_running_per_tenant must be at least 1");
        }
        let hour = Duration::from_secs(3600);
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval > hour {
            bail!("heartbeat_interval must be positive and at most 1h");
        }
        if self.reconnect_max_backoff.is_zero() || self.reconnect_max_backoff > hour {
            bail!("reconnect_max_backoff must be positive and at most 1h");
        }
        if let Some(idle) = self.idle_unload_after
            && (idle < Duration::from_secs(1) || idle > Duration::from_secs(30 * 86_400))
        {
            bail!("idle_unload_after is 1s to 30 days, or \"0s\" for never");
        }
        if self.limits.segment_points < self.limits.max_batch {
            bail!(
                "limits.segment_points ({}) must be at least limits.max_batch ({})",
                self.limits.segment_points,
                self.limits.max_batch
            );
        }
        let l = &self.limits;
        if l.max_top_k == 0
            || l.max_ef == 0
            || l.max_batch == 0
            || l.max_search_batch == 0
            || l.max_payload_bytes == 0
            || l.wal_bytes == 0
            || l.max_answer_bytes == 0
        {
            bail!("every [limits] value must be positive");
        }
        Ok(())
    }

    /// A configuration for tests: small backoff and heartbeat interval, one index thread, no
    /// `ca_file`.
    pub fn for_tests(
        worker_id: &str,
        coordinator_url: &str,
        token: &str,
        data_dir: &Path,
    ) -> Config {
        Config {
            worker_id: worker_id.to_owned(),
            coordinator_url: coordinator_url.to_owned(),
            ca_file: None,
            token: Zeroizing::new(token.to_owned()),
            data_dir: data_dir.to_owned(),
            cold_dir: data_dir.join("cold"),
            memory_budget_bytes: DEFAULT_MEMORY_BUDGET_BYTES,
            max_in_flight: 16,
            max_running_per_tenant: 4,
            idle_unload_after: Some(DEFAULT_IDLE_UNLOAD_AFTER),
            clock: Arc::new(crate::tenant::SystemClock),
            heartbeat_interval: Duration::from_secs(1),
            reconnect_max_backoff: Duration::from_millis(200),
            limits: storage::Limits {
                index_threads: 1,
                ..storage::Limits::default()
            },
            request_hook: None,
        }
    }
}

/// Reads the token file, refusing one that group or others may read or write.
fn read_token(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "token file {} has mode {mode:04o}, which lets group or others read it; run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let raw = Zeroizing::new(
        std::fs::read(path).with_context(|| format!("reading token file {}", path.display()))?,
    );
    let text = std::str::from_utf8(&raw)
        .map_err(|_| anyhow::anyhow!("token file {} is not UTF-8", path.display()))?;
    let token = Zeroizing::new(text.trim().to_owned());
    check_token(&token).with_context(|| format!("token file {}", path.display()))?;
    Ok(token)
}

/// A token must fit in an HTTP header: visible ASCII, no spaces.
fn check_token(token: &str) -> anyhow::Result<()> {
    if token.is_empty() {
        bail!("the worker token is empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("the worker token must be visible ASCII without spaces");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
