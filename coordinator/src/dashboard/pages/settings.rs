//! The settings page: the tenant's notification addresses (beside its owners, who always hear of
//! an anomaly) and its anomaly threshold within its tier's range (`crate::billing`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use minijinja::context;

use super::super::tenant::TenantAuth;
use super::{Form, error_page, html, page_context, see_other};
use crate::api::Service;
use crate::api::error::ApiError;

fn page_of(auth: &TenantAuth) -> String {
    format!(
        "/dashboard/t/{}/settings",
        super::super::encode_path(&auth.tenant)
    )
}

/// `GET /dashboard/t/{tenant}/settings`.
pub(in super::super) async fn settings_page(
    State(s): State<Arc<Service>>,
    auth: TenantAuth,
) -> Response {
    let found = crate::api::off_runtime(|| {
        let policy = s.anomaly_policy(&auth.tenant)?;
        let settings = s.store.tenant_settings(&auth.tenant)?;
        Ok::<_, ApiError>((policy, settings))
    });
    let (policy, settings) = match found {
        Ok(f) => f,
        Err(err) => return error_page(Some(&auth), err, "/dashboard"),
    };
    html(
        StatusCode::OK,
        "settings.html",
        context! {
            emails => settings.notify_emails.join("\n"),
            threshold => settings.anomaly_threshold.map(|t| t.to_string()).unwrap_or_default(),
            tier_threshold => policy.threshold,
            threshold_min => policy.threshold_min,
            threshold_max => policy.threshold_max,
            auto_pause => policy.auto_pause,
            max_emails => crate::billing::MAX_NOTIFY_EMAILS,
            ..page_context(&auth, "settings")
        },
    )
}

/// `POST /dashboard/t/{tenant}/settings` (form: `emails`, one address a line or comma
/// separated; `threshold`, empty for the tier's).
pub(in super::super) async fn save_settings(
    State(s): State<Arc<Service>>,
    auth: TenantAuth,
    body: Body,
) -> Response {
    let result = async {
        let form = Form::read(body).await?;
        let (emails, threshold) = (
            form.get("emails").to_owned(),
            form.get("threshold").to_owned(),
        );
        crate::api::off_runtime(|| {
            s.set_tenant_settings_as(&auth.actor(), &auth.tenant, &emails, &threshold)
        })
    }
    .await;
    match result {
        Ok(()) => see_other(&page_of(&auth)),
        Err(err) => error_page(Some(&auth), err, &page_of(&auth)),
    }
}
