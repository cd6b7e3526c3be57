//! The dashboard's server-rendered HTML pages (`/dashboard`, `/dashboard/t/{tenant}/...`).
//!
//! Templates (minijinja, HTML auto-escaping) and the stylesheet are compiled into the binary;
//! pages use no script at all and no inline style, so the Content-Security-Policy every
//! dashboard answer carries ([`CSP`]) allows neither. Charts are SVG images the server draws
//! (plotters), loaded with `<img>`. Forms post `application/x-www-form-urlencoded` with the
//! session's CSRF token in a hidden `csrf` field: [`lift_form_csrf`] copies that field into the
//! `x-csrf-token` header before the session extractor checks it, so forms and JSON clients pass
//! one and the same check. A state-changing form answers `303 See Other` back to its page
//! (post/redirect/get), except a new key, whose secret is shown on the answer itself, once.

mod audit;
mod charts;
mod collections;
mod people;
mod settings;
mod snapshots;

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use minijinja::{Environment, Value, context};

use super::routes::{CSRF_HEADER, SESSION_COOKIE, cookie};
use super::tenant::TenantAuth;
use crate::api::Service;
use crate::api::error::ApiError;

pub(super) use audit::{audit_export, audit_page};
pub(super) use charts::chart;
pub(super) use collections::{
    collections_page, confirm_delete_collection, create_collection, delete_collection,
};
pub(super) use people::{
    create_key, invite_member, keys_page, members_page, remove_member, revoke_key, set_role,
};
pub(super) use settings::{save_settings, settings_page};
pub(super) use snapshots::{snapshots_page, take_snapshot};

type Svc = Arc<Service>;

/// The Content-Security-Policy of every dashboard answer: nothing but same-origin stylesheets
/// and images, forms only to this origin, never framed.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Largest form a page accepts.
pub(super) const MAX_FORM_BYTES: usize = 16 * 1024;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("error.html", include_str!("templates/error.html")),
    ("home.html", include_str!("templates/home.html")),
    ("operator.html", include_str!("templates/operator.html")),
    ("overview.html", include_str!("templates/overview.html")),
    (
        "collections.html",
        include_str!("templates/collections.html"),
    ),
    (
        "collection_delete.html",
        include_str!("templates/collection_delete.html"),
    ),
    ("keys.html", include_str!("templates/keys.html")),
    ("members.html", include_str!("templates/members.html")),
    ("audit.html", include_str!("templates/audit.html")),
    ("snapshots.html", include_str!("templates/snapshots.html")),
    ("settings.html", include_str!("templates/settings.html")),
];

/// The stylesheet, served at `/dashboard/assets/style.css`.
const STYLE: &str = include_str!("assets/style.css");

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // `|path`: a value percent-encoded as one URL path segment.
        env.add_filter("path", |value: String| super::encode_path(&value));
        // `.html` templates escape every value for HTML (minijinja's default by extension).
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .expect("the dashboard's templates parse (a unit test renders each)");
        }
        env
    })
}

/// Renders `template` with `ctx` as a complete HTML answer.
pub(super) fn html(status: StatusCode, template: &str, ctx: Value) -> Response {
    let rendered = templates()
        .get_template(template)
        .and_then(|t| t.render(ctx));
    match rendered {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(err) => {
            tracing::error!(template, error = %err, "rendering a dashboard page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// What the member may do, for the templates' menus and buttons.
fn can(auth: &TenantAuth) -> Value {
    use super::roles::Action::*;
    let may = |a| auth.may(a);
    context! {
        keys_read => may(KeysRead),
        keys_write => may(KeysWrite),
        members_write => may(MembersWrite),
        audit_read => may(AuditRead),
        collections_write => may(CollectionsWrite),
        settings_read => may(SettingsRead),
        settings_write => may(SettingsWrite),
        snapshots_read => may(SnapshotsRead),
        snapshots_write => may(SnapshotsWrite),
    }
}

/// The context every tenant page shares.
pub(super) fn page_context(auth: &TenantAuth, nav: &str) -> Value {
    context! {
        tenant => &auth.tenant,
        user => &auth.email,
        role => &auth.role,
        csrf => &auth.csrf,
        nav => nav,
        can => can(auth),
    }
}

/// An error as a page: a client's mistake keeps its 4xx status, anything else is logged.
pub(super) fn error_page(auth: Option<&TenantAuth>, err: ApiError, back: &str) -> Response {
    let response = err.into_response();
    let status = response.status();
    let message = api_message(response);
    let ctx = match auth {
        Some(auth) => context! {
            title => title_of(status), message => message, back => back,
            ..page_context(auth, "")
        },
        None => context! { title => title_of(status), message => message, back => back },
    };
    html(status, "error.html", ctx)
}

fn title_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 422 => "That did not work",
        401 => "Please log in",
        403 => "Not allowed",
        404 => "Not found",
        409 => "Conflict",
        429 => "Too many requests",
        _ => "Something went wrong",
    }
}

/// The message of an API error answer (`{"error": {"message": ...}}`).
fn api_message(response: Response) -> String {
    // The error bodies are small JSON documents built in memory.
    let body = response.into_body();
    let bytes = futures_util::FutureExt::now_or_never(axum::body::to_bytes(body, 64 * 1024))
        .and_then(Result::ok)
        .unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(|m| m.as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned())
}

/// `303 See Other` to `location` (after a form).
pub(super) fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// A parsed form body (`application/x-www-form-urlencoded`), every field in order.
pub(super) struct Form(pub Vec<(String, String)>);

impl Form {
    pub(super) async fn read(body: Body) -> Result<Form, ApiError> {
        let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|_| ApiError::invalid(format!("the form is over {MAX_FORM_BYTES} bytes")))?;
        Ok(Form(
            url::form_urlencoded::parse(&bytes).into_owned().collect(),
        ))
    }

    /// The first value of `name`, trimmed ("" when absent).
    pub(super) fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.trim())
    }

    /// Every value of `name`.
    pub(super) fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Copies the `csrf` field of a form POST into the `x-csrf-token` header (when the request has
/// none), so the session extractor checks forms as it checks JSON requests. Bodies over
/// [`MAX_FORM_BYTES`] are refused here (413) before anything reads them whole.
pub async fn lift_form_csrf(request: Request, next: Next) -> Response {
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if request.method() != Method::POST || !is_form || request.headers().contains_key(CSRF_HEADER) {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
        return super::routes::plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the form is over {MAX_FORM_BYTES} bytes"),
        );
    };
    let token = url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.into_owned());
    if let Some(value) = token.and_then(|t| HeaderValue::from_str(&t).ok()) {
        parts.headers.insert(CSRF_HEADER, value);
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Adds the security headers to every dashboard answer (the CSP unless the answer set its own).
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// `GET /dashboard/assets/style.css`.
pub(super) async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLE,
    )
        .into_response()
}

/// `GET /dashboard`: the login links without a session, the user's tenants with one.
pub(super) async fn home(State(s): State<Svc>, headers: axum::http::HeaderMap) -> Response {
    let Some(dashboard) = s.dashboard() else {
        return super::routes::not_configured();
    };
    let session = cookie(&headers, SESSION_COOKIE).and_then(|id| dashboard.session(id));
    let ctx = match session {
        None => context! { providers => dashboard.provider_names() },
        Some(session) => {
            let memberships: Vec<Value> = dashboard
                .memberships(&session.email)
                .into_iter()
                .map(|m| context! { tenant => m.tenant, role => m.role })
                .collect();
            context! {
                user => &session.email,
                csrf => &session.csrf,
                operator => dashboard.is_operator(&session.email),
                memberships => memberships,
            }
        }
    };
    html(StatusCode::OK, "home.html", ctx)
}

/// `GET /dashboard/operator`: every tenant, for operators (404 for anyone else).
pub(super) async fn operator(State(s): State<Svc>, auth: super::routes::SessionAuth) -> Response {
    let Some(dashboard) = s.dashboard() else {
        return super::routes::not_configured();
    };
    if !dashboard.is_operator(&auth.session.email) {
        return super::routes::plain(StatusCode::NOT_FOUND, "no such page");
    }
    let listed = crate::api::off_runtime(|| {
        let tenants = s.list_tenants()?;
        tenants
            .into_iter()
            .map(|t| {
                let members = s.list_members(&t.id)?.len();
                Ok(context! {
                    id => t.id,
                    tier => t.tier,
                    state => if t.paused_from.is_some() { "paused" } else { "active" },
                    members => members,
                    created => time_of(t.created_ms),
                })
            })
            .collect::<Result<Vec<Value>, ApiError>>()
    });
    match listed {
        Ok(tenants) => html(
            StatusCode::OK,
            "operator.html",
            context! {
                user => &auth.session.email,
                csrf => &auth.session.csrf,
                tenants => tenants,
            },
        ),
        Err(err) => error_page(None, err, "/dashboard"),
    }
}

/// `GET /dashboard/t/{tenant}`: state, tier and limits, anomalies, usage charts.
pub(super) async fn overview(State(s): State<Svc>, auth: TenantAuth) -> Response {
    let tenant = match crate::api::off_runtime(|| s.get_tenant(&auth.tenant)) {
        Ok(t) => t,
        Err(err) => return error_page(Some(&auth), err, "/dashboard"),
    };
    let state = if tenant.paused_from.is_some() {
        "paused"
    } else {
        "active"
    };
    let tier_name = tenant.paused_from.clone().unwrap_or(tenant.tier.clone());
    let limits: Vec<Value> = s
        .tiers
        .get(&tier_name)
        .map(|t| {
            vec![
                context! { name => "Collections", value => t.max_collections },
                context! { name => "Points", value => t.max_points },
                context! { name => "Stored bytes", value => if t.max_stored_bytes == 0 { "no limit".to_owned() } else { human_bytes(t.max_stored_bytes) } },
                context! { name => "Largest dimension", value => t.max_dim },
                context! { name => "Requests per second", value => t.requests_per_second },
                context! { name => "Copies", value => t.replicas },
            ]
        })
        .unwrap_or_default();
    let today = crate::store::census::day_of(auth.now_ms);
    let anomalies: Vec<Value> =
        match crate::api::off_runtime(|| s.store.anomalies_of(&auth.tenant, 20)) {
            Ok(rows) => rows
                .into_iter()
                .map(|a| {
                    let value = if a.anomaly.metric == "stored_bytes" {
                        human_bytes(a.anomaly.value)
                    } else {
                        a.anomaly.value.to_string()
                    };
                    context! {
                        day => time_of(a.anomaly.period_ms),
                        metric => a.anomaly.metric,
                        value => value,
                        median => format!("{:.1}", a.anomaly.median),
                        audit_seq => a.audit_seq,
                        paused => a.paused_ms.is_some() && a.anomaly.auto_pause,
                    }
                })
                .collect(),
            Err(err) => return error_page(Some(&auth), err.into(), "/dashboard"),
        };
    let ctx = context! {
        anomalies => anomalies,
        state => state,
        tier => if tenant.paused_from.is_some() { format!("paused (was {tier_name})") } else { tier_name },
        limits => limits,
        today => today,
        days => charts::DAYS,
        daily => charts::daily_charts(),
        hourly => charts::hourly_charts(),
        ..page_context(&auth, "overview")
    };
    html(StatusCode::OK, "overview.html", ctx)
}

/// `YYYY-MM-DD HH:MM` (UTC) of Unix ms.
pub(super) fn time_of(unix_ms: u64) -> String {
    let day = crate::store::census::day_of(unix_ms);
    let minutes = (unix_ms / 60_000) % (24 * 60);
    format!("{day} {:02}:{:02}", minutes / 60, minutes % 60)
}

/// Bytes for people: `512 B`, `3.4 KiB`, `1.2 GiB`.
pub(super) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_renders_and_escapes() {
        let hostile = "<script>alert(1)</script>\"'&";
        for (name, _) in TEMPLATES {
            let rendered = templates()
                .get_template(name)
                .unwrap()
                .render(context! {
                    tenant => hostile, user => hostile, title => hostile, message => hostile,
                    name => hostile, csrf => hostile, head => hostile,
                    can => context! { keys_read => true, keys_write => true, audit_read => true,
                                      members_write => true, collections_write => true },
                    filter => context! { action => hostile },
                    memberships => vec![context! { tenant => hostile, role => hostile }],
                    rows => vec![context! { actor => hostile, details => hostile }],
                })
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(!rendered.contains("<script>"), "{name} let markup through");
        }
    }

    #[test]
    fn bytes_and_times_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(time_of(86_400_000 + 3_660_000), "1970-01-02 01:01");
    }
}
