//! The dashboard a tenant's people log in to (issue 11): OAuth 2.0 authorization code flow with
//! PKCE (S256) against OpenID Connect providers (Google is one: issuer
//! `https://accounts.google.com`) and GitHub (OAuth 2.0, then its user and verified-email API:
//! `github.rs`), server-side sessions in SQLite.
//!
//! **Login.** `GET /dashboard/login/{provider}` starts a flow: a random `state`, nonce and PKCE
//! verifier, kept server-side (`login_flows`, keyed by the SHA-256 of the state) together with
//! the SHA-256 of a random value set as the `__Host-vv_login` cookie, which binds the flow to the
//! browser that started it; the browser is sent to the provider's authorization endpoint. The
//! callback (`GET /dashboard/callback/{provider}`) takes the flow (once: its row is deleted as it
//! is read), checks the provider and the browser cookie and its age, exchanges the code with the
//! PKCE verifier at the token endpoint (the `redirect_uri` is the one configured, exactly), and
//! checks the ID token with the `openidconnect` crate: signature against the provider's keys,
//! `iss`, `aud`, `exp` (by the host's clock), `nonce`, and the access token's hash. The user is the token's email,
//! which must be verified and be a member of a tenant (`store::dashboard`). Nothing of OAuth, JWT
//! or JWKS is written here; every call to the provider goes through the outbound guard
//! (`crate::outbound`).
//!
//! **Sessions.** A login creates a session: a fresh random id of 256 bits (so an id from before
//! the login is never valid after it: a presented one is ended), stored as its SHA-256 only, in
//! the `__Host-vv_session` cookie (`Secure`, `HttpOnly`, `SameSite=Lax`, `Path=/`), with a CSRF
//! token that every state-changing request carries. The server enforces the idle and absolute
//! timeouts on every use, by the scheduler's clock; logout deletes the row. Logins, refused
//! logins and logouts are audited.

mod github;
mod http_client;
mod oidc;
mod pages;
pub mod roles;
pub mod routes;
mod tenant;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::jobs::Clock;
use crate::outbound::Outbound;
use crate::store::Store;
use crate::store::dashboard::{LoginFlow, NewSession, SessionLimits, SessionRow};

/// How long a login flow may take from its redirect to its callback.
pub(crate) const LOGIN_MAX_AGE: Duration = Duration::from_secs(600);

/// `[dashboard]` in the coordinator's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDashboard {
    /// The URL the dashboard is reached at (`https://vaultvec.example`); redirect URIs are
    /// `<public_url>/dashboard/callback/<provider>`.
    public_url: String,
    /// Idle timeout of a session, seconds (default 1800).
    session_idle_s: Option<u64>,
    /// Absolute timeout of a session, seconds (default 43200).
    session_absolute_s: Option<u64>,
    /// OpenID Connect providers.
    #[serde(default)]
    oidc: Vec<RawOidc>,
    /// GitHub (OAuth 2.0 and its user API), as provider `github`.
    github: Option<RawGithub>,
    /// Email addresses of operators: logged in (with a verified address), they see every
    /// tenant and act in any as `operator:<email>`.
    #[serde(default)]
    operators: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGithub {
    client_id: String,
    /// A 0600 file holding the client secret.
    client_secret_file: PathBuf,
    /// Default `https://github.com/login/oauth/authorize`.
    authorize_url: Option<String>,
    /// Default `https://github.com/login/oauth/access_token`.
    token_url: Option<String>,
    /// Default `https://api.github.com`.
    api_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    /// The provider's name in URLs (`google`).
    name: String,
    /// Its issuer URL (`https://accounts.google.com`).
    issuer: String,
    client_id: String,
    /// A 0600 file holding the client secret.
    client_secret_file: PathBuf,
}

/// The dashboard's settings.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// Where the dashboard is reached.
    pub public_url: url::Url,
    /// Session timeouts.
    pub idle: Duration,
    /// Absolute session timeout.
    pub absolute: Duration,
    /// The providers by name.
    pub providers: Vec<Provider>,
    /// Operators' email addresses, normalized.
    pub operators: Vec<String>,
}

/// One login provider.
#[derive(Clone)]
pub struct Provider {
    /// Its name in URLs.
    pub name: String,
    /// Its protocol and endpoints.
    pub kind: ProviderKind,
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: Zeroizing<String>,
}

/// A provider's protocol and endpoints.
#[derive(Debug, Clone)]
pub enum ProviderKind {
    /// OpenID Connect, by discovery from the issuer.
    Oidc {
        /// The issuer.
        issuer: url::Url,
    },
    /// GitHub: OAuth 2.0, then its user and email API.
    Github {
        /// The authorization endpoint.
        authorize_url: url::Url,
        /// The token endpoint.
        token_url: url::Url,
        /// The API's base URL.
        api_url: url::Url,
    },
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// An authorization request: where to send the browser, and what the callback needs.
pub(crate) struct Authorization {
    url: String,
    state: String,
    /// Empty for a provider without ID tokens.
    nonce: String,
    pkce_verifier: String,
}

/// Who the provider says logged in.
pub(crate) struct Identity {
    subject: String,
    email: String,
    email_verified: bool,
}

fn url_setting(what: &str, value: Option<&str>, default: &str) -> anyhow::Result<url::Url> {
    url::Url::parse(value.unwrap_or(default)).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

impl RawDashboard {
    /// The settings, files relative to the config file's directory (`at`).
    pub fn resolve(&self, at: impl Fn(&Path) -> PathBuf) -> anyhow::Result<DashboardConfig> {
        let public_url = url::Url::parse(self.public_url.trim_end_matches('/'))
            .map_err(|e| anyhow::anyhow!("[dashboard] public_url: {e}"))?;
        if public_url.scheme() != "https" {
            anyhow::bail!("[dashboard] public_url must be https (the session cookie is Secure)");
        }
        let mut providers = Vec::new();
        for raw in &self.oidc {
            if raw.name.is_empty()
                || !raw
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                anyhow::bail!("[[dashboard.oidc]] name {:?}: use a-z, 0-9 and -", raw.name);
            }
            if providers.iter().any(|p: &Provider| p.name == raw.name) {
                anyhow::bail!("[[dashboard.oidc]] name {:?} is given twice", raw.name);
            }
            let issuer = url::Url::parse(&raw.issuer)
                .map_err(|e| anyhow::anyhow!("[[dashboard.oidc]] {} issuer: {e}", raw.name))?;
            let secret = crate::config::read_secret_string(&at(&raw.client_secret_file))?;
            providers.push(Provider {
                name: raw.name.clone(),
                kind: ProviderKind::Oidc { issuer },
                client_id: raw.client_id.clone(),
                client_secret: secret,
            });
        }
        if let Some(raw) = &self.github {
            if providers.iter().any(|p| p.name == "github") {
                anyhow::bail!(
                    "[dashboard.github] and an OpenID Connect provider are both called github"
                );
            }
            providers.push(Provider {
                name: "github".into(),
                kind: ProviderKind::Github {
                    authorize_url: url_setting(
                        "[dashboard.github] authorize_url",
                        raw.authorize_url.as_deref(),
                        "https://github.com/login/oauth/authorize",
                    )?,
                    token_url: url_setting(
                        "[dashboard.github] token_url",
                        raw.token_url.as_deref(),
                        "https://github.com/login/oauth/access_token",
                    )?,
                    api_url: url_setting(
                        "[dashboard.github] api_url",
                        raw.api_url.as_deref(),
                        "https://api.github.com",
                    )?,
                },
                client_id: raw.client_id.clone(),
                client_secret: crate::config::read_secret_string(&at(&raw.client_secret_file))?,
            });
        }
        let operators = self
            .operators
            .iter()
            .map(|e| {
                crate::store::dashboard::normalize_email(e)
                    .map_err(|err| anyhow::anyhow!("[dashboard] operators: {err}"))
            })
            .collect::<anyhow::Result<Vec<String>>>()?;
        Ok(DashboardConfig {
            operators,
            public_url,
            idle: Duration::from_secs(self.session_idle_s.unwrap_or(1800).max(1)),
            absolute: Duration::from_secs(self.session_absolute_s.unwrap_or(43_200).max(1)),
            providers,
        })
    }
}

/// Why a login was refused. The message is for the audit row and the page; it never holds a
/// token or a code.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// A session a request presented, still valid.
#[derive(Debug, Clone)]
pub struct Session {
    /// The user's email.
    pub email: String,
    /// The provider they logged in with.
    pub provider: String,
    /// The CSRF token of the session.
    pub csrf: String,
}

/// The dashboard's state.
pub struct Dashboard {
    config: DashboardConfig,
    outbound: Outbound,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    /// Provider metadata by provider name, with when it was fetched.
    metadata: tokio::sync::Mutex<HashMap<String, (oidc::Metadata, u64)>>,
}

/// A random value of 256 bits, base64url.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

impl Dashboard {
    /// The dashboard for `config`.
    pub fn new(
        config: DashboardConfig,
        outbound: Outbound,
        store: Arc<Store>,
        clock: Arc<dyn Clock>,
    ) -> Dashboard {
        Dashboard {
            config,
            outbound,
            store,
            clock,
            metadata: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    fn provider(&self, name: &str) -> Result<&Provider, Refused> {
        self.config
            .providers
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Refused(format!("no login provider is called {name:?}")))
    }

    /// The providers' names.
    pub fn provider_names(&self) -> Vec<String> {
        self.config
            .providers
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    /// The exact redirect URI registered for `provider`.
    pub fn redirect_uri(&self, provider: &str) -> String {
        format!(
            "{}/dashboard/callback/{provider}",
            self.config.public_url.as_str().trim_end_matches('/')
        )
    }

    fn limits(&self) -> SessionLimits {
        SessionLimits {
            idle_ms: self.config.idle.as_millis() as u64,
            absolute_ms: self.config.absolute.as_millis() as u64,
        }
    }

    /// Starts a login with `provider`: answers the provider's authorization URL and the value
    /// of the browser-binding cookie.
    pub async fn start_login(&self, provider: &str) -> Result<(String, String), Refused> {
        let provider = self.provider(provider)?.clone();
        let redirect_uri = self.redirect_uri(&provider.name);
        let request = match &provider.kind {
            ProviderKind::Oidc { .. } => {
                let metadata = self.metadata(&provider).await?;
                oidc::authorization(&provider, metadata, &redirect_uri)?
            }
            ProviderKind::Github {
                authorize_url,
                token_url,
                ..
            } => github::authorization(&provider, authorize_url, token_url, &redirect_uri)?,
        };
        let browser = random_token();
        let flow = LoginFlow {
            state_hash: digest(&request.state),
            browser_hash: digest(&browser),
            provider: provider.name.clone(),
            pkce_verifier: request.pkce_verifier,
            nonce: request.nonce,
            created_ms: self.clock.now_ms(),
        };
        let store = self.store.clone();
        crate::api::off_runtime(|| store.begin_login(&flow, LOGIN_MAX_AGE.as_millis() as u64))
            .map_err(|e| Refused(format!("recording the login failed: {e}")))?;
        Ok((request.url, browser))
    }

    /// Finishes a login at its callback: answers the new session's id (for the cookie). Every
    /// refusal is audited.
    pub async fn finish_login(
        &self,
        provider: &str,
        callback: Callback,
        previous_session: Option<&str>,
    ) -> Result<String, Refused> {
        let now = self.clock.now_ms();
        let result = self.check_callback(provider, callback, now).await;
        let store = self.store.clone();
        match result {
            Ok((email, subject)) => {
                // A session id from before the login is never valid after it.
                if let Some(old) = previous_session {
                    let _ = crate::api::off_runtime(|| store.end_session(&digest(old), now));
                }
                let id = random_token();
                let csrf = random_token();
                let new = NewSession {
                    id_hash: digest(&id),
                    email: &email,
                    provider,
                    subject: &subject,
                    csrf: &csrf,
                    now_ms: now,
                };
                crate::api::off_runtime(|| store.create_session(&new))
                    .map_err(|e| Refused(format!("recording the session failed: {e}")))?;
                tracing::info!(provider, "dashboard login");
                Ok(id)
            }
            Err((who, refused)) => {
                tracing::warn!(provider, reason = %refused, "dashboard login refused");
                let _ = crate::api::off_runtime(|| {
                    store.audit_failed_login(provider, who.as_deref(), &refused.0, now)
                });
                Err(refused)
            }
        }
    }

    /// The checks of a callback (see the module docs): answers the verified email and the
    /// provider's subject, or who it was (if known) and why not.
    async fn check_callback(
        &self,
        provider: &str,
        callback: Callback,
        now: u64,
    ) -> Result<(String, String), (Option<String>, Refused)> {
        let refuse = |why: &str| (None, Refused(why.to_owned()));
        if let Some(error) = &callback.error {
            return Err(refuse(&format!("the provider answered {error:?}")));
        }
        let state = callback.state.as_deref().filter(|s| !s.is_empty());
        let Some(state) = state else {
            return Err(refuse("the callback has no state"));
        };
        let store = self.store.clone();
        let flow = crate::api::off_runtime(|| store.take_login(&digest(state)))
            .map_err(|e| refuse(&format!("reading the login failed: {e}")))?
            .ok_or_else(|| refuse("the state is unknown or was used already"))?;
        if flow.provider != provider {
            return Err(refuse("the state was issued for another provider"));
        }
        let bound = callback.browser.as_deref().is_some_and(|b| {
            bool::from(subtle::ConstantTimeEq::ct_eq(
                &digest(b)[..],
                &flow.browser_hash[..],
            ))
        });
        if !bound {
            return Err(refuse("the state is not bound to this browser"));
        }
        if now.saturating_sub(flow.created_ms) > LOGIN_MAX_AGE.as_millis() as u64 {
            return Err(refuse("the login took too long"));
        }
        let Some(code) = callback.code.filter(|c| !c.is_empty()) else {
            return Err(refuse("the callback has no code"));
        };
        let provider = self.provider(provider).map_err(|r| (None, r))?.clone();
        let redirect_uri = self.redirect_uri(&provider.name);
        let identity = match &provider.kind {
            ProviderKind::Oidc { .. } => {
                let metadata = self.metadata(&provider).await.map_err(|r| (None, r))?;
                oidc::exchange(
                    &self.outbound,
                    &provider,
                    metadata,
                    &redirect_uri,
                    code,
                    flow.pkce_verifier,
                    flow.nonce,
                )
                .await
            }
            ProviderKind::Github {
                authorize_url,
                token_url,
                api_url,
            } => {
                let endpoints = github::Endpoints {
                    authorize_url,
                    token_url,
                    api_url,
                };
                github::exchange(
                    &self.outbound,
                    &provider,
                    &endpoints,
                    &redirect_uri,
                    code,
                    flow.pkce_verifier,
                )
                .await
            }
        }
        .map_err(|r| (None, r))?;
        let who = Some(identity.email.clone());
        if !identity.email_verified {
            return Err((
                who,
                Refused("the provider has not verified the email address".into()),
            ));
        }
        let email = identity.email.clone();
        let memberships = crate::api::off_runtime(|| store.memberships(&email)).map_err(|e| {
            (
                who.clone(),
                Refused(format!("reading memberships failed: {e}")),
            )
        })?;
        if memberships.is_empty() && !self.is_operator(&email) {
            return Err((
                who,
                Refused("the email address is not a member of any tenant".into()),
            ));
        }
        Ok((identity.email, identity.subject))
    }

    /// The session whose id is `id`, if it is still valid (its idle timer restarts).
    pub fn session(&self, id: &str) -> Option<Session> {
        let now = self.clock.now_ms();
        let row: Option<SessionRow> =
            crate::api::off_runtime(|| self.store.session(&digest(id), now, self.limits()))
                .map_err(|e| tracing::error!(error = %e, "reading a session failed"))
                .ok()
                .flatten();
        row.map(|r| Session {
            email: r.email,
            provider: r.provider,
            csrf: r.csrf,
        })
    }

    /// Ends the session whose id is `id`.
    pub fn logout(&self, id: &str) -> bool {
        let now = self.clock.now_ms();
        crate::api::off_runtime(|| self.store.end_session(&digest(id), now)).unwrap_or(false)
    }

    /// Whether `email` is an operator's.
    /// The operators' addresses (`[dashboard] operators`).
    pub fn operators(&self) -> &[String] {
        &self.config.operators
    }

    /// Whether `email` is an operator's.
    pub fn is_operator(&self, email: &str) -> bool {
        crate::store::dashboard::normalize_email(email)
            .is_ok_and(|e| self.config.operators.contains(&e))
    }

    /// The dashboard clock's time, Unix ms.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The members' view of `email`: each tenant with its role.
    pub fn memberships(&self, email: &str) -> Vec<crate::store::dashboard::Member> {
        crate::api::off_runtime(|| self.store.memberships(email)).unwrap_or_default()
    }

    /// `provider`'s metadata (discovery document and keys), fetched at most once an hour.
    async fn metadata(&self, provider: &Provider) -> Result<oidc::Metadata, Refused> {
        const REFRESH_MS: u64 = 3_600_000;
        let now = self.clock.now_ms();
        let mut cache = self.metadata.lock().await;
        if let Some((metadata, at)) = cache.get(&provider.name)
            && now.saturating_sub(*at) < REFRESH_MS
        {
            return Ok(metadata.clone());
        }
        let metadata = oidc::discover(&self.outbound, provider).await?;
        cache.insert(provider.name.clone(), (metadata.clone(), now));
        Ok(metadata)
    }
}

/// `segment` percent-encoded for a URL path (all but unreserved characters and `@`).
pub fn encode_path(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a callback brought.
#[derive(Debug, Default)]
pub struct Callback {
    /// `code`.
    pub code: Option<String>,
    /// `state`.
    pub state: Option<String>,
    /// `error`, if the provider refused.
    pub error: Option<String>,
    /// The browser-binding cookie.
    pub browser: Option<String>,
}
