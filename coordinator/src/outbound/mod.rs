//! The one way out (INV-16): every URL and host the coordinator contacts (OpenID Connect
//! discovery, token and key endpoints, GitHub's API, the SMTP relay, any webhook later) goes
//! through an [`Outbound`] guard, on by default.
//!
//! - **https only.** A URL with any other scheme, with credentials in it, or without a host is
//!   refused before anything is resolved. (SMTP goes through [`Outbound::connect`] and is wrapped
//!   in TLS by its caller.)
//! - **Resolved once, connected to what was checked.** A name is resolved once per connection by
//!   the guard itself (the HTTP client's resolver is the guard), every address it answers is
//!   checked, and the connection is made only to those addresses: a second lookup that could
//!   answer differently (DNS rebinding) never happens. A name with any refused address is
//!   refused whole.
//! - **Public unicast addresses only** (`addr.rs`): loopback, private (RFC 1918, RFC 4193),
//!   link-local (169.254.0.0/16 with the cloud metadata address, fe80::/10, fd00:ec2::254 being
//!   unique local), carrier-grade NAT, multicast, unspecified, reserved and documentation ranges,
//!   IPv4-mapped, -compatible and NAT64 IPv6, and 6to4 and Teredo addresses that tunnel to any of
//!   those.
//! - **No redirects**, and no proxy from the environment: a 3xx answer is an error.
//! - **Explicit allowances.** `[outbound] allow_hosts` lists `host:port` pairs an operator allows
//!   whatever they resolve to (a provider inside the network; the tests' local providers), each
//!   logged at start. They must still be reached over https; `[outbound] ca_file` adds roots of
//!   trust (PEM) beside the system's.

mod addr;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use addr::refused_class;

/// How long one outbound HTTP exchange may take, connection included.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes an outbound HTTP answer's body may have.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// `[outbound]` in the coordinator's config.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// `host:port` pairs allowed whatever addresses they resolve to.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Extra roots of trust (PEM), beside the system's.
    pub ca_file: Option<PathBuf>,
}

/// Why an outbound call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The guard refused the URL, the name or an address.
    #[error("outbound call refused: {0}")]
    Refused(String),
    /// The call was allowed and failed (resolution, connection, TLS, the peer's answer).
    #[error("outbound call failed: {0}")]
    Failed(String),
}

/// A host an operator allowed whatever it resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Allowed {
    host: String,
    port: u16,
}

/// The outbound guard (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

struct Inner {
    allowed: Vec<Allowed>,
    lookup: Arc<dyn Lookup>,
    http: reqwest::Client,
    /// The TLS client configuration: the system's roots and `ca_file`'s (SMTP's implicit TLS).
    tls: Arc<rustls::ClientConfig>,
    /// `ca_file` as read (SMTP's STARTTLS, which lettre's TLS does).
    ca_pem: Option<Vec<u8>>,
}

/// Name resolution: the system's ([`SystemLookup`]) outside tests.
pub trait Lookup: Send + Sync {
    /// Every address `host` resolves to, with `port`.
    fn lookup(
        &self,
        host: String,
        port: u16,
    ) -> futures_util::future::BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>;
}

/// The system's resolver (`getaddrinfo`, through tokio).
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(
        &self,
        host: String,
        port: u16,
    ) -> futures_util::future::BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

impl Outbound {
    /// The guard for `config`: its allowances parsed (and logged), its HTTP client built with
    /// the guard as its resolver, no redirects, no proxy, https only.
    pub fn new(config: &OutboundConfig) -> anyhow::Result<Outbound> {
        Outbound::with_lookup(config, Arc::new(SystemLookup))
    }

    /// [`Outbound::new`] resolving names with `lookup`.
    pub fn with_lookup(
        config: &OutboundConfig,
        lookup: Arc<dyn Lookup>,
    ) -> anyhow::Result<Outbound> {
        let mut allowed = Vec::new();
        for entry in &config.allow_hosts {
            let allowance = parse_allowance(entry)?;
            tracing::warn!(
                host = %allowance.host,
                port = allowance.port,
                "outbound calls to this host are allowed whatever address it resolves to ([outbound] allow_hosts)"
            );
            allowed.push(allowance);
        }
        let mut roots = rustls::RootCertStore::empty();
        let mut ca_pem = None;
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("[outbound] ca_file {}: {e}", path.display()))?;
            let mut added = 0;
            use rustls_pki_types::pem::PemObject as _;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert
                    .map_err(|e| anyhow::anyhow!("[outbound] ca_file {}: {e}", path.display()))?;
                roots.add(cert)?;
                added += 1;
            }
            if added == 0 {
                anyhow::bail!("[outbound] ca_file {} holds no certificate", path.display());
            }
            tracing::info!(path = %path.display(), certificates = added, "outbound calls also trust these roots");
            ca_pem = Some(pem);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tls_config = Arc::new(tls.clone());
        let guard = Arc::new(Guard {
            allowed: allowed.clone(),
            lookup: lookup.clone(),
        });
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(guard)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(HTTP_TIMEOUT)
            .build()?;
        Ok(Outbound {
            inner: Arc::new(Inner {
                allowed,
                lookup,
                http,
                tls: tls_config,
                ca_pem,
            }),
        })
    }

    /// Checks `url` before anything is resolved: https, no credentials, a host, and a host
    /// written as an address must be an allowed one. Answers the host and port.
    pub fn check_url(&self, url: &url::Url) -> Result<(String, u16), OutboundError> {
        if url.scheme() != "https" {
            return Err(OutboundError::Refused(format!(
                "{}: only https URLs are fetched",
                redacted(url)
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OutboundError::Refused(format!(
                "{}: a URL with credentials in it",
                redacted(url)
            )));
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let host = match url.host() {
            Some(url::Host::Domain(name)) => {
                let name = name.to_ascii_lowercase();
                // The resolver sees names without ports: an allowance of this name for another
                // port is refused here, before it could let this one through.
                let ports: Vec<u16> = self
                    .inner
                    .allowed
                    .iter()
                    .filter(|a| a.host == name)
                    .map(|a| a.port)
                    .collect();
                if !ports.is_empty() && !ports.contains(&port) {
                    return Err(OutboundError::Refused(format!(
                        "{}: {name} is allowed on port {ports:?} only",
                        redacted(url)
                    )));
                }
                name
            }
            Some(url::Host::Ipv4(ip)) => {
                self.check_ip(&ip.to_string(), port, IpAddr::V4(ip))?;
                ip.to_string()
            }
            Some(url::Host::Ipv6(ip)) => {
                self.check_ip(&ip.to_string(), port, IpAddr::V6(ip))?;
                ip.to_string()
            }
            None => {
                return Err(OutboundError::Refused(format!(
                    "{}: a URL without a host",
                    redacted(url)
                )));
            }
        };
        Ok((host, port))
    }

    fn check_ip(&self, host: &str, port: u16, ip: IpAddr) -> Result<(), OutboundError> {
        if is_allowed(&self.inner.allowed, host, port) {
            return Ok(());
        }
        match refused_class(ip) {
            Some(class) => Err(OutboundError::Refused(format!(
                "{ip} is {class}; only public addresses are reached"
            ))),
            None => Ok(()),
        }
    }

    /// Resolves `host` once and answers the addresses to connect to at `port`, every one of them
    /// checked (see the module docs).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, OutboundError> {
        resolve_checked(&self.inner.allowed, self.inner.lookup.as_ref(), host, port).await
    }

    /// A TCP connection to `host:port` through the guard (for SMTP, which its caller wraps in
    /// TLS): the first checked address that answers within the connect timeout.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, OutboundError> {
        let addrs = self.resolve(host, port).await?;
        let mut last = None;
        for addr in addrs {
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
            {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(err)) => last = Some(err.to_string()),
                Err(_) => last = Some(format!("connecting to {addr} timed out")),
            }
        }
        Err(OutboundError::Failed(format!(
            "connecting to {host}:{port}: {}",
            last.unwrap_or_else(|| "no address".into())
        )))
    }

    /// Sends `request` (built from [`Outbound::http`]) after checking its URL, and reads an
    /// answer of at most [`MAX_ANSWER_BYTES`]. A redirect is an error.
    pub async fn send(&self, request: reqwest::Request) -> Result<Answer, OutboundError> {
        self.check_url(request.url())?;
        let url = redacted(request.url());
        let mut response =
            self.inner
                .http
                .execute(request)
                .await
                .map_err(|e| match refusal_in(&e) {
                    // The resolver refused the name: say so, not that the connection failed.
                    Some(why) => OutboundError::Refused(format!("{url}: {why}")),
                    None => OutboundError::Failed(format!("{url}: {}", error_chain(&e))),
                })?;
        let status = response.status();
        if status.is_redirection() {
            return Err(OutboundError::Refused(format!(
                "{url} answered a redirect ({status}); redirects are not followed"
            )));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
        {
            return Err(OutboundError::Failed(format!(
                "{url}: the answer is over {MAX_ANSWER_BYTES} bytes"
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| OutboundError::Failed(format!("{url}: {}", error_chain(&e))))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(OutboundError::Failed(format!(
                    "{url}: the answer is over {MAX_ANSWER_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status: status.as_u16(),
            headers: response.headers().clone(),
            body,
        })
    }

    /// The TLS client configuration every outbound TLS connection uses (the system's roots and
    /// `[outbound] ca_file`'s).
    pub fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        self.inner.tls.clone()
    }

    /// `[outbound] ca_file`'s certificates (PEM), if one is configured.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.inner.ca_pem.as_deref()
    }

    /// The HTTP client, to build requests with (send them with [`Outbound::send`]).
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }
}

/// An outbound HTTP answer, read whole.
#[derive(Debug)]
pub struct Answer {
    /// Its status.
    pub status: u16,
    /// Its headers.
    pub headers: reqwest::header::HeaderMap,
    /// Its body.
    pub body: Vec<u8>,
}

/// A URL for logs and errors: scheme, host, port and path only (no query, which may carry a
/// code or a secret).
fn redacted(url: &url::Url) -> String {
    format!(
        "{}://{}{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port().map(|p| format!(":{p}")).unwrap_or_default(),
        url.path()
    )
}

/// The guard's refusal somewhere in `err`'s sources, if that is why it failed.
fn refusal_in(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(err);
    while let Some(err) = source {
        if let Some(OutboundError::Refused(why)) = err.downcast_ref::<OutboundError>() {
            return Some(why.clone());
        }
        source = err.source();
    }
    None
}

/// `err` with its sources, `: `-separated.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        out.push_str(": ");
        out.push_str(&err.to_string());
        source = err.source();
    }
    out
}

fn parse_allowance(entry: &str) -> anyhow::Result<Allowed> {
    let (host, port) = entry.rsplit_once(':').ok_or_else(|| {
        anyhow::anyhow!("[outbound] allow_hosts entry {entry:?} is not host:port")
    })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow::anyhow!("[outbound] allow_hosts entry {entry:?} has no valid port"))?;
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        anyhow::bail!("[outbound] allow_hosts entry {entry:?} is not host:port");
    }
    Ok(Allowed {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn is_allowed(allowed: &[Allowed], host: &str, port: u16) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    allowed
        .iter()
        .any(|a| a.port == port && a.host.eq_ignore_ascii_case(host))
}

async fn resolve_checked(
    allowed: &[Allowed],
    lookup: &dyn Lookup,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, OutboundError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let permitted = is_allowed(allowed, bare, port);
    let addrs: Vec<SocketAddr> = if let Ok(ip) = bare.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, port)]
    } else {
        lookup
            .lookup(bare.to_owned(), port)
            .await
            .map_err(|e| OutboundError::Failed(format!("resolving {bare}: {e}")))?
    };
    if addrs.is_empty() {
        return Err(OutboundError::Failed(format!(
            "{bare} resolves to no address"
        )));
    }
    if !permitted {
        for addr in &addrs {
            if let Some(class) = refused_class(addr.ip()) {
                return Err(OutboundError::Refused(format!(
                    "{bare} resolves to {} ({class}); only public addresses are reached",
                    addr.ip()
                )));
            }
        }
    }
    Ok(addrs)
}

/// The HTTP client's resolver: every name it connects to is resolved and checked here, once.
struct Guard {
    allowed: Vec<Allowed>,
    lookup: Arc<dyn Lookup>,
}

impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.allowed.clone();
        let lookup = self.lookup.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // reqwest asks by name only; the port of the allowance is checked against the
            // URL's by `Outbound::check_url`, and here any allowed port of the host counts.
            let port = allowed
                .iter()
                .find(|a| a.host.eq_ignore_ascii_case(&host))
                .map_or(443, |a| a.port);
            let addrs = resolve_checked(&allowed, lookup.as_ref(), &host, port)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}
