//! Dashboard login against a real OpenID Connect provider the test starts
//! (`tests/python/oidc_provider.py`, authlib over HTTPS on loopback), reached through the
//! outbound guard with an explicit allowance (INV-16), and the sessions it makes (INV-19):
//! - a member logs in (code flow with PKCE S256 and a nonce), gets a `__Host-` cookie with a
//!   256-bit id stored only hashed, sees their tenants, and logs out (CSRF checked, row deleted);
//!   every step is audited;
//! - the callback refuses a missing, unknown, replayed or other browser's `state`, a code from
//!   another flow (the PKCE verifier does not match), ID tokens with a wrong issuer, audience,
//!   nonce, expiry, signature or access-token hash, an unverified email and a non-member;
//! - a session id from before a login is not valid after it; sessions end at the idle and
//!   absolute timeouts by the server's clock;
//! - every dashboard route that needs a session refuses a request without one.

use std::path::PathBuf;
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

const CLIENT_ID: &str = "vaultvec-dashboard";
const CLIENT_SECRET: &str = "a-client-secret-for-the-test-provider";
const PUBLIC_URL: &str = "https://vaultvec.test";
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

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

struct Harness {
    cluster: Cluster,
    idp: Idp,
    clock: Arc<ManualClock>,
    /// Talks to the coordinator, following no redirect.
    client: reqwest::Client,
}

async fn start() -> Harness {
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
    let python = repo_root().join("target/py-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/py-env.sh` first (scripts/test.sh does)",
        python.display()
    );
    let mut child = tokio::process::Command::new(python)
        .arg(repo_root().join("tests/python/oidc_provider.py"))
        .args([&cert_file, &key_file])
        .args([
            CLIENT_ID,
            CLIENT_SECRET,
            &format!("{PUBLIC_URL}/dashboard/callback/idp"),
            &format!("{PUBLIC_URL}/dashboard/callback/github"),
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
        public_url: url::Url::parse(PUBLIC_URL).unwrap(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_logs_in_with_pkce_sees_their_tenants_and_logs_out() {
    let h = start().await;
    let flow = h.begin("alice@example.com", true).await;
    let response = h
        .client
        .get(h.url(&format!("/dashboard/callback/idp?{}", flow.callback_query)))
        .header("cookie", format!("__Host-vv_login={}", flow.browser))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    let (session, header) = set_cookie(&response, "__Host-vv_session").unwrap();
    for attribute in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
        assert!(header.contains(attribute), "{attribute} in {header}");
    }
    assert!(!header.to_ascii_lowercase().contains("domain="), "{header}");
    // 256 bits, base64url; stored only as its SHA-256.
    assert_eq!(session.len(), 43, "{session}");
    let hashes = h.session_hashes();
    assert_eq!(
        hashes,
        vec![sha2::Sha256::digest(session.as_bytes()).to_vec()]
    );

    let (status, me) = h.me(&session).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(
        me["memberships"],
        json!([{"tenant": "acme", "role": "owner"}])
    );
    let csrf = me["csrf_token"].as_str().unwrap().to_owned();
    assert_eq!(h.audit("platform", "dashboard.login").await.len(), 1);
    let acme = h.audit("acme", "dashboard.login").await;
    assert_eq!(acme.len(), 1, "{acme:?}");
    assert_eq!(acme[0]["actor"], "user:alice@example.com");
    assert!(h.audit("beta", "dashboard.login").await.is_empty());

    // Logout needs the CSRF token.
    assert_eq!(h.logout(&session, None).await.status().as_u16(), 403);
    assert_eq!(
        h.logout(&session, Some("wrong")).await.status().as_u16(),
        403
    );
    assert_eq!(h.me(&session).await.0, 200, "still logged in");
    let response = h.logout(&session, Some(&csrf)).await;
    assert_eq!(response.status().as_u16(), 200);
    let (cleared, _) = set_cookie(&response, "__Host-vv_session").unwrap();
    assert!(cleared.is_empty());
    assert_eq!(h.me(&session).await.0, 401);
    assert!(h.session_hashes().is_empty(), "logout deletes the row");
    let out = h.audit("platform", "dashboard.logout").await;
    assert_eq!(out.len(), 1, "{out:?}");
    h.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callback_refuses_bad_state_codes_and_id_tokens() {
    let h = start().await;
    // No state, an unknown one.
    let flow = h.begin("alice@example.com", true).await;
    let code_only: String = flow
        .callback_query
        .split('&')
        .filter(|p| !p.starts_with("state="))
        .collect::<Vec<_>>()
        .join("&");
    let cookie = [("__Host-vv_login", flow.browser.as_str())];
    assert_eq!(h.callback(&code_only, &cookie).await.0, 403);
    assert_eq!(
        h.callback(&format!("{code_only}&state=forged"), &cookie)
            .await
            .0,
        403
    );
    // Another browser's state (its cookie is missing or different): refused, and used up.
    let flow = h.begin("alice@example.com", true).await;
    assert_eq!(h.callback(&flow.callback_query, &[]).await.0, 403);
    let flow = h.begin("alice@example.com", true).await;
    let (status, session, body) = h
        .callback(
            &flow.callback_query,
            &[("__Host-vv_login", "someone-elses")],
        )
        .await;
    assert_eq!((status, session), (403, None), "{body}");
    let (status, _, body) = h
        .callback(&flow.callback_query, &[("__Host-vv_login", &flow.browser)])
        .await;
    assert_eq!(status, 403, "a state is used once: {body}");
    // A replayed callback.
    let flow = h.begin("alice@example.com", true).await;
    let cookie = [("__Host-vv_login", flow.browser.as_str())];
    assert_eq!(h.callback(&flow.callback_query, &cookie).await.0, 303);
    assert_eq!(h.callback(&flow.callback_query, &cookie).await.0, 403);
    // A code from another flow, with this flow's state: the PKCE verifier does not match.
    let stolen = h.begin("alice@example.com", true).await;
    let mine = h.begin("alice@example.com", true).await;
    let code = |q: &str| {
        q.split('&')
            .find(|p| p.starts_with("code="))
            .unwrap()
            .to_owned()
    };
    let state = |q: &str| {
        q.split('&')
            .find(|p| p.starts_with("state="))
            .unwrap()
            .to_owned()
    };
    let injected = format!(
        "{}&{}",
        code(&stolen.callback_query),
        state(&mine.callback_query)
    );
    let (status, _, body) = h
        .callback(&injected, &[("__Host-vv_login", &mine.browser)])
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("code exchange"), "{body}");

    // ID tokens with a claim wrong, or signed by another key.
    for what in ["iss", "aud", "nonce", "exp", "sig", "at_hash"] {
        let flow = h.begin("alice@example.com", true).await;
        h.idp.control("/test/tamper", json!({ "what": what })).await;
        let (status, session, body) = h
            .callback(&flow.callback_query, &[("__Host-vv_login", &flow.browser)])
            .await;
        assert_eq!((status, session), (403, None), "{what}: {body}");
    }
    // An unverified email; a verified one that is no member.
    for (email, verified) in [("alice@example.com", false), ("mallory@example.com", true)] {
        let flow = h.begin(email, verified).await;
        let (status, session, body) = h
            .callback(&flow.callback_query, &[("__Host-vv_login", &flow.browser)])
            .await;
        assert_eq!((status, session), (403, None), "{email}: {body}");
    }
    // The provider's own refusal.
    assert_eq!(h.callback("error=access_denied&state=x", &[]).await.0, 403);
    // One session in all (the replay test's first callback); every refusal audited.
    assert_eq!(h.session_hashes().len(), 1);
    let denied: Vec<Value> = h
        .audit("platform", "dashboard.login")
        .await
        .into_iter()
        .filter(|r| r["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 16, "{denied:#?}");
    assert!(
        denied
            .iter()
            .any(|r| r["actor"] == "user:mallory@example.com"),
        "{denied:#?}"
    );
    h.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_fresh_at_login_and_end_at_the_idle_and_absolute_timeouts() {
    let h = start().await;
    // An id from before a login is not valid after it.
    let before = h.login("alice@example.com").await;
    let flow = h.begin("alice@example.com", true).await;
    let (status, after, _) = h
        .callback(
            &flow.callback_query,
            &[
                ("__Host-vv_login", &flow.browser),
                ("__Host-vv_session", &before),
            ],
        )
        .await;
    assert_eq!(status, 303);
    let after = after.unwrap();
    assert_ne!(after, before);
    assert_eq!(h.me(&before).await.0, 401);
    assert_eq!(h.me(&after).await.0, 200);

    // Idle: just within, then past.
    h.clock.advance(IDLE - Duration::from_secs(1));
    assert_eq!(
        h.me(&after).await.0,
        200,
        "each use restarts the idle timer"
    );
    h.clock.advance(IDLE + Duration::from_secs(1));
    assert_eq!(h.me(&after).await.0, 401);
    assert!(h.session_hashes().is_empty(), "the expired row is deleted");

    // Absolute: used every half idle period, it still ends.
    let session = h.login("alice@example.com").await;
    let mut elapsed = Duration::ZERO;
    while elapsed + IDLE / 2 <= ABSOLUTE {
        h.clock.advance(IDLE / 2);
        elapsed += IDLE / 2;
        assert_eq!(h.me(&session).await.0, 200, "at {elapsed:?}");
    }
    h.clock.advance(IDLE / 2);
    assert_eq!(h.me(&session).await.0, 401);

    // Removed from their only tenant, a member's sessions end at once.
    let session = h.login("alice@example.com").await;
    let (status, body) = h
        .cluster
        .admin(
            "DELETE",
            "/admin/v1/tenants/acme/members/alice@example.com",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h.me(&session).await.0, 401);
    h.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_account_logs_in_by_its_verified_primary_email() {
    let h = start().await;
    let flow = h.begin_with("github", "alice@example.com", true).await;
    let cookie = [("__Host-vv_login", flow.browser.as_str())];
    let (status, session, body) = h
        .callback_with("github", &flow.callback_query, &cookie)
        .await;
    assert_eq!(status, 303, "{body}");
    let (status, me) = h.me(&session.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&me["email"], &me["provider"]),
        (&json!("alice@example.com"), &json!("github"))
    );
    // A replayed callback; a state issued for the other provider.
    let (status, _, _) = h
        .callback_with("github", &flow.callback_query, &cookie)
        .await;
    assert_eq!(status, 403);
    let flow = h.begin("alice@example.com", true).await;
    let (status, _, body) = h
        .callback_with(
            "github",
            &flow.callback_query,
            &[("__Host-vv_login", &flow.browser)],
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // A code from another flow: GitHub's PKCE check refuses it.
    let stolen = h.begin_with("github", "alice@example.com", true).await;
    let mine = h.begin_with("github", "alice@example.com", true).await;
    let part = |q: &str, p: &str| q.split('&').find(|x| x.starts_with(p)).unwrap().to_owned();
    let injected = format!(
        "{}&{}",
        part(&stolen.callback_query, "code="),
        part(&mine.callback_query, "state=")
    );
    let (status, _, body) = h
        .callback_with("github", &injected, &[("__Host-vv_login", &mine.browser)])
        .await;
    assert_eq!(status, 403, "{body}");
    // A primary address GitHub has not verified (its other, verified one is not used).
    let flow = h.begin_with("github", "alice@example.com", false).await;
    let (status, session, body) = h
        .callback_with(
            "github",
            &flow.callback_query,
            &[("__Host-vv_login", &flow.browser)],
        )
        .await;
    assert_eq!((status, session), (403, None), "{body}");
    assert!(body.contains("not verified"), "{body}");
    h.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_callbacks_is_cut_off_before_it_fills_the_audit_chain() {
    let h = start().await;
    let mut limited = 0;
    for i in 0..120 {
        let (status, _, _) = h.callback(&format!("code=x&state=forged-{i}"), &[]).await;
        assert!(status == 403 || status == 429, "{status}");
        limited += usize::from(status == 429);
    }
    assert!(limited > 0, "never limited");
    let denied = h
        .audit("platform", "dashboard.login")
        .await
        .into_iter()
        .filter(|r| r["outcome"] == "denied")
        .count();
    // The budget's burst (50) and what it refills meanwhile; never one row per request.
    assert!((50..120).contains(&denied), "{denied} rows");
    h.cluster.shutdown().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tenant_route_checks_the_members_role_in_that_tenant() {
    let h = start().await;
    for (tenant, email, role) in [
        ("acme", "vera@example.com", "viewer"),
        ("acme", "mo@example.com", "member"),
        ("acme", "ada@example.com", "admin"),
        ("beta", "nora@example.com", "owner"),
    ] {
        let (status, body) = h
            .cluster
            .admin(
                "POST",
                &format!("/admin/v1/tenants/{tenant}/members"),
                Some(json!({"email": email, "role": role})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let mut people = Vec::new();
    for (email, role) in [
        ("vera@example.com", Some("viewer")),
        ("mo@example.com", Some("member")),
        ("ada@example.com", Some("admin")),
        ("alice@example.com", Some("owner")),
        ("nora@example.com", None),
    ] {
        let session = h.login(email).await;
        let csrf = h.me(&session).await.1["csrf_token"]
            .as_str()
            .unwrap()
            .to_owned();
        people.push((email, role, session, csrf));
    }
    let mut checked = 0;
    for route in DASHBOARD_ROUTES {
        let Permission::Tenant(action) = route.permission else {
            continue;
        };
        let path = route
            .path
            .replace("{tenant}", "acme")
            .replace("{key_id}", "abcdefgh");
        let body = match route.name {
            "dashboard_issue_key" => Some(json!({"scopes": ["read"]})),
            "dashboard_add_member" => Some(json!({"email": "guest@example.com", "role": "viewer"})),
            _ => None,
        };
        for (email, role, session, csrf) in &people {
            let (status, answer) = h
                .as_member(route.method, &path, session, csrf, body.clone())
                .await;
            match role {
                None => assert_eq!(status, 404, "{email} {path}: {answer}"),
                Some(role) if allows(role, action) => assert!(
                    ![401, 403].contains(&status),
                    "{role} {} {path}: {status} {answer}",
                    route.method
                ),
                Some(role) => assert_eq!(status, 403, "{role} {} {path}: {answer}", route.method),
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked}");
    h.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_creates_a_key_uses_it_revokes_it_invites_and_reads_the_verified_chain() {
    let h = start().await;
    let session = h.login("alice@example.com").await;
    let csrf = h.me(&session).await.1["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, issued) = h
        .as_member(
            "POST",
            "/dashboard/v1/tenants/acme/keys",
            &session,
            &csrf,
            Some(json!({"scopes": ["read", "write", "manage"], "label": "from the dashboard"})),
        )
        .await;
    assert_eq!(status, 200, "{issued}");
    let key = issued["key"].as_str().unwrap().to_owned();
    let key_id = issued["key_id"].as_str().unwrap().to_owned();
    // The secret is shown once: listings never carry it.
    let (status, listed) = h
        .as_member(
            "GET",
            "/dashboard/v1/tenants/acme/keys",
            &session,
            &csrf,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(!listed.to_string().contains(&key), "{listed}");
    assert!(listed.to_string().contains(&key_id), "{listed}");
    // The key works against the API, until revoked from the dashboard.
    h.cluster.create_collection(&key, "docs", 4).await;
    let (status, _) = h
        .cluster
        .http("GET", "/v1/collections", Some(&key), None)
        .await;
    assert_eq!(status, 200);
    let (status, body) = h
        .as_member(
            "DELETE",
            &format!("/dashboard/v1/tenants/acme/keys/{key_id}"),
            &session,
            &csrf,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = h
        .cluster
        .http("GET", "/v1/collections", Some(&key), None)
        .await;
    assert_eq!(status, 401);
    // Another tenant's key is not this tenant's to revoke.
    let beta_key = h.cluster.key("beta", &["read"], None).await;
    let beta_id = &beta_key[3..11];
    let (status, _) = h
        .as_member(
            "DELETE",
            &format!("/dashboard/v1/tenants/acme/keys/{beta_id}"),
            &session,
            &csrf,
            None,
        )
        .await;
    assert!(
        (400..500).contains(&status) && status != 401 && status != 403,
        "{status}"
    );
    let (status, _) = h
        .cluster
        .http("GET", "/v1/collections", Some(&beta_key), None)
        .await;
    assert_eq!(status, 200, "beta's key still works");
    // Invite a member; the list shows them.
    let (status, body) = h
        .as_member(
            "POST",
            "/dashboard/v1/tenants/acme/members",
            &session,
            &csrf,
            Some(json!({"email": "Newbie@Example.com", "role": "member"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, members) = h
        .as_member(
            "GET",
            "/dashboard/v1/tenants/acme/members",
            &session,
            &csrf,
            None,
        )
        .await;
    assert!(
        members.to_string().contains("newbie@example.com"),
        "{members}"
    );
    // The chain verifies and names the member for what they did.
    let (status, chain) = h
        .as_member(
            "GET",
            "/dashboard/v1/tenants/acme/audit",
            &session,
            &csrf,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(chain["chain_verified"], true, "{chain}");
    let by_alice: Vec<&str> = chain["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["actor"] == "user:alice@example.com")
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert!(by_alice.len() >= 4, "{by_alice:?}");
    assert!(by_alice.contains(&"member.add"), "{by_alice:?}");
    h.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_manages_members_and_refuses_bad_input() {
    let cluster = Cluster::start(1).await;
    cluster.tenant("acme", Some("pro")).await;
    let add = |body: Value| cluster.admin("POST", "/admin/v1/tenants/acme/members", Some(body));
    let (status, body) = add(json!({"email": " Bob@Example.COM ", "role": "viewer"})).await;
    assert_eq!(
        (status, &body["email"], &body["role"]),
        (200, &json!("bob@example.com"), &json!("viewer")),
        "{body}"
    );
    let (status, body) = add(json!({"email": "bob@example.com", "role": "admin"})).await;
    assert_eq!((status, &body["role"]), (200, &json!("admin")), "{body}");
    for bad in [
        json!({"email": "bob@example.com", "role": "root"}),
        json!({"email": "not-an-email", "role": "viewer"}),
        json!({"email": "a@b", "role": "viewer"}),
        json!({"email": "x<script>@example.com", "role": "viewer"}),
        json!({"email": "bob@example.com"}),
        json!({"email": "bob@example.com", "role": "viewer", "extra": 1}),
    ] {
        let (status, body) = add(bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) = cluster
        .admin(
            "POST",
            "/admin/v1/tenants/nobody/members",
            Some(json!({"email": "bob@example.com", "role": "viewer"})),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = cluster
        .admin("GET", "/admin/v1/tenants/acme/members", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["members"].as_array().unwrap().len(), 1, "{body}");
    let (status, _) = cluster
        .admin(
            "DELETE",
            "/admin/v1/tenants/acme/members/carol@example.com",
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = cluster
        .admin(
            "DELETE",
            "/admin/v1/tenants/acme/members/bob@example.com",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (_, export) = cluster.admin("GET", "/admin/v1/audit/acme", None).await;
    let actions: Vec<&str> = export["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .filter(|a| a.starts_with("member."))
        .collect();
    assert_eq!(actions, ["member.add", "member.add", "member.remove"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_route_that_needs_a_session_refuses_without_one() {
    // (Tenant routes included: the session is checked before the role.)
    let h = start().await;
    let session = h.login("alice@example.com").await;
    let mut checked = 0;
    for route in DASHBOARD_ROUTES {
        if route.permission == Permission::Public {
            continue;
        }
        let path = route
            .path
            .replace("{provider}", "idp")
            .replace("{tenant}", "acme")
            .replace("{key_id}", "abcdefgh");
        let method: reqwest::Method = route.method.parse().unwrap();
        let send = |cookie: Option<String>| {
            let mut request = h.client.request(method.clone(), h.url(&path));
            if let Some(cookie) = cookie {
                request = request.header("cookie", cookie);
            }
            request.send()
        };
        assert_eq!(send(None).await.unwrap().status().as_u16(), 401, "{path}");
        let forged = "__Host-vv_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned();
        assert_eq!(
            send(Some(forged)).await.unwrap().status().as_u16(),
            401,
            "{path}"
        );
        // Two session cookies (one planted by a sibling domain): neither is taken.
        let doubled = format!("__Host-vv_session={session}; __Host-vv_session=planted");
        assert_eq!(
            send(Some(doubled)).await.unwrap().status().as_u16(),
            401,
            "{path}"
        );
        if route.method != "GET" {
            let own = format!("__Host-vv_session={session}");
            assert_eq!(
                send(Some(own)).await.unwrap().status().as_u16(),
                403,
                "{path}: CSRF"
            );
        }
        checked += 1;
    }
    assert!(checked >= 8, "{checked}");
    h.cluster.shutdown().await;
}
