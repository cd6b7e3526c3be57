//! The dashboard, against a real OpenID Connect provider the test starts
//! (`tests/python/oidc_provider.py`, authlib over HTTPS on loopback, with a GitHub-style OAuth side),
//! reached through the outbound guard with an explicit allowance (INV-16):
//! - `login.rs`: logins with PKCE S256 (OpenID Connect and GitHub), the callback's refusals (state,
//!   injected codes, tampered ID tokens, unverified and non-member emails), a flood of forged
//!   callbacks cut off;
//! - `sessions.rs`: cookies, fixation, idle and absolute timeouts, every route without a session
//!   (INV-19);
//! - `pages.rs`: the HTML pages (CSP, forms and their CSRF field, collections, keys, members,
//!   the audit log, the operator view); `owner.rs`: snapshots, settings and hourly usage;
//!   `browser.rs`: all of it in headless Chromium through nginx;
//! - `tenant.rs`: every tenant route against every role, keys made and revoked in the dashboard
//!   and used against the API, members, the verified chain; the admin API's members routes.

mod browser;
mod login;
mod owner;
mod pages;
mod sessions;
mod tenant;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordinator::config::Config;
use coordinator::dashboard::roles::allows;
use coordinator::dashboard::routes::{DASHBOARD_ROUTES, Permission};
use coordinator::dashboard::{DashboardConfig, Provider, ProviderKind};
use coordinator::jobs::ManualClock;
use coordinator::outbound::OutboundConfig;
use serde_json::{Value, json};
use sha2::Digest;
use tests::{Cluster, TestCa};
use tokio::io::AsyncBufReadExt;

use super::python::repo_root;

const CLIENT_ID: &str = "vaultvec-dashboard";
const CLIENT_SECRET: &str = "a-client-secret-for-the-test-provider";
const PUBLIC_URL: &str = "https://vaultvec.test";
/// An operator's address (`[dashboard] operators`), a member of no tenant.
const OPERATOR: &str = "root@ops.example";
const IDLE: Duration = Duration::from_secs(1800);
const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);

/// The dashboard settings of the cluster the next `Cluster::start_without_workers` makes
/// (nextest runs each test in a process of its own).
static SETUP: Mutex<Option<(DashboardConfig, OutboundConfig, Arc<ManualClock>)>> = Mutex::new(None);

fn with_dashboard(config: &mut Config) {
    let (dashboard, outbound, clock) = SETUP.lock().unwrap().clone().expect("the setup");
    config.dashboard = Some(dashboard);
    config.outbound = outbound;
    config.clock = clock;
    config.snapshots.max_owner_snapshots = 2;
}

struct Idp {
    port: u16,
    https: reqwest::Client,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Idp {
    async fn control(&self, path: &str, body: Value) {
        let response = self
            .https
            .post(format!("https://localhost:{}{path}", self.port))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }
}

pub(crate) struct Harness {
    /// The CA of the provider's certificate (and of any other the test makes).
    ca: TestCa,
    cluster: Cluster,
    idp: Idp,
    clock: Arc<ManualClock>,
    /// Talks to the coordinator, following no redirect.
    client: reqwest::Client,
}

pub(crate) async fn start() -> Harness {
    start_at(PUBLIC_URL).await
}

/// A harness whose dashboard is reached at `public_url` (its redirect URIs registered there).
pub(crate) async fn start_at(public_url: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("dashboard test CA");
    let (cert, key) = ca.server_cert();
    let (cert_file, key_file, ca_file) = (
        dir.path().join("idp.pem"),
        dir.path().join("idp.key"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    ca.write_cert(&ca_file);
    let python = super::python::venv_python();
    let mut child = tokio::process::Command::new(python)
        .arg(repo_root().join("tests/python/oidc_provider.py"))
        .args([&cert_file, &key_file])
        .args([
            CLIENT_ID,
            CLIENT_SECRET,
            &format!("{public_url}/dashboard/callback/idp"),
            &format!("{public_url}/dashboard/callback/github"),
        ])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the provider did not start in a minute")
            .unwrap()
            .expect("the provider exited");
        if let Some(port) = line.strip_prefix("PORT ") {
            break port.trim().parse().unwrap();
        }
    };
    let https = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&ca_file).unwrap()).unwrap(),
        )
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let clock = Arc::new(ManualClock::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    ));
    let dashboard = DashboardConfig {
        operators: vec![OPERATOR.into()],
        public_url: url::Url::parse(public_url).unwrap(),
        idle: IDLE,
        absolute: ABSOLUTE,
        providers: vec![
            Provider {
                name: "idp".into(),
                kind: ProviderKind::Oidc {
                    issuer: url::Url::parse(&format!("https://localhost:{port}")).unwrap(),
                },
                client_id: CLIENT_ID.into(),
                client_secret: zeroize::Zeroizing::new(CLIENT_SECRET.into()),
            },
            Provider {
                name: "github".into(),
                kind: ProviderKind::Github {
                    authorize_url: url::Url::parse(&format!(
                        "https://localhost:{port}/login/oauth/authorize"
                    ))
                    .unwrap(),
                    token_url: url::Url::parse(&format!(
                        "https://localhost:{port}/login/oauth/access_token"
                    ))
                    .unwrap(),
                    api_url: url::Url::parse(&format!("https://localhost:{port}/api")).unwrap(),
                },
                client_id: CLIENT_ID.into(),
                client_secret: zeroize::Zeroizing::new(CLIENT_SECRET.into()),
            },
        ],
    };
    let outbound = OutboundConfig {
        allow_hosts: vec![format!("localhost:{port}")],
        ca_file: Some(ca_file),
    };
    *SETUP.lock().unwrap() = Some((dashboard, outbound, clock.clone()));
    let mut cluster = Cluster::start_without_workers(1, with_dashboard).await;
    cluster.start_worker(0).await;
    cluster.tenant("acme", Some("pro")).await;
    cluster.tenant("beta", Some("pro")).await;
    let (status, body) = cluster
        .admin(
            "POST",
            "/admin/v1/tenants/acme/members",
            Some(json!({"email": "Alice@Example.com", "role": "owner"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["email"], "alice@example.com", "{body}");
    Harness {
        ca,
        cluster,
        idp: Idp {
            port,
            https,
            _child: child,
            _dir: dir,
        },
        clock,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

/// A login flow's first half: the coordinator's redirect (answers the browser cookie) and the
/// provider's answer (the callback's query).
struct Flow {
    browser: String,
    callback_query: String,
}

fn set_cookie(response: &reqwest::Response, name: &str) -> Option<(String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|header| {
            let value = header[name.len() + 1..]
                .split(';')
                .next()
                .unwrap()
                .to_owned();
            (value, header)
        })
}

impl Harness {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.cluster.http)
    }

    async fn begin(&self, email: &str, verified: bool) -> Flow {
        self.begin_with("idp", email, verified).await
    }

    async fn begin_with(&self, provider: &str, email: &str, verified: bool) -> Flow {
        self.idp
            .control(
                "/test/user",
                json!({"email": email, "verified": verified, "sub": format!("sub-{email}")}),
            )
            .await;
        let response = self
            .client
            .get(self.url(&format!("/dashboard/login/{provider}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 303);
        let (browser, header) = set_cookie(&response, "__Host-vv_login").expect("login cookie");
        assert!(
            header.contains("Secure") && header.contains("HttpOnly"),
            "{header}"
        );
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let authorize = url::Url::parse(&location).unwrap();
        let query: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
        assert_eq!(query["code_challenge_method"], "S256", "{location}");
        assert_eq!(query["response_type"], "code");
        assert_eq!(
            query["redirect_uri"],
            format!("{PUBLIC_URL}/dashboard/callback/{provider}")
        );
        assert!(query["state"].len() >= 16);
        if provider == "idp" {
            assert!(query["nonce"].len() >= 16);
        }
        let answer = self.idp.https.get(location).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 302, "{:?}", answer.text().await);
        let back = answer.headers()["location"].to_str().unwrap().to_owned();
        let back = url::Url::parse(&back).unwrap();
        assert_eq!(
            back.as_str().split('?').next().unwrap(),
            format!("{PUBLIC_URL}/dashboard/callback/{provider}")
        );
        Flow {
            browser,
            callback_query: back.query().unwrap().to_owned(),
        }
    }

    /// The callback with `query` and these cookies: (status, session id if one was set, body).
    async fn callback(
        &self,
        query: &str,
        cookies: &[(&str, &str)],
    ) -> (u16, Option<String>, String) {
        self.callback_with("idp", query, cookies).await
    }

    async fn callback_with(
        &self,
        provider: &str,
        query: &str,
        cookies: &[(&str, &str)],
    ) -> (u16, Option<String>, String) {
        let mut request = self
            .client
            .get(self.url(&format!("/dashboard/callback/{provider}?{query}")));
        if !cookies.is_empty() {
            let header: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            request = request.header("cookie", header.join("; "));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let session = set_cookie(&response, "__Host-vv_session").map(|(v, _)| v);
        (
            status,
            session.filter(|s| !s.is_empty()),
            response.text().await.unwrap(),
        )
    }

    async fn login(&self, email: &str) -> String {
        let flow = self.begin(email, true).await;
        let (status, session, body) = self
            .callback(&flow.callback_query, &[("__Host-vv_login", &flow.browser)])
            .await;
        assert_eq!(status, 303, "{body}");
        session.expect("a session cookie")
    }

    async fn me(&self, session: &str) -> (u16, Value) {
        let response = self
            .client
            .get(self.url("/dashboard/v1/me"))
            .header("cookie", format!("__Host-vv_session={session}"))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn logout(&self, session: &str, csrf: Option<&str>) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url("/dashboard/logout"))
            .header("cookie", format!("__Host-vv_session={session}"));
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        request.send().await.unwrap()
    }

    fn session_hashes(&self) -> Vec<Vec<u8>> {
        let db =
            rusqlite::Connection::open(self.cluster.dir().join("coordinator/coordinator.sqlite"))
                .unwrap();
        let mut stmt = db.prepare("SELECT id_hash FROM sessions").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    async fn audit(&self, chain: &str, action: &str) -> Vec<Value> {
        let (_, export) = self
            .cluster
            .admin("GET", &format!("/admin/v1/audit/{chain}"), None)
            .await;
        super::cluster::audit_rows(&export, action)
    }
}

impl Harness {
    /// `method path` as the holder of `session` (with its CSRF token), with `body`.
    async fn as_member(
        &self,
        method: &str,
        path: &str,
        session: &str,
        csrf: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method.parse().unwrap(), self.url(path))
            .header("cookie", format!("__Host-vv_session={session}"))
            .header("x-csrf-token", csrf);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}
