//! The audit log page: the tenant's chain with whether it verifies (every row, whatever the
//! filter), its signed head to keep, filters (UTC days, action, actor), and the filtered rows as
//! JSON lines or CSV. Unfiltered, the JSON lines export is the whole chain, which the offline
//! verifier checks against the head. Reading the chain is itself audited (`audit.export`).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use minijinja::{Value, context};
use serde::Deserialize;

use super::super::tenant::TenantAuth;
use super::{error_page, html, page_context, time_of};
use crate::api::Service;
use crate::api::error::ApiError;
use crate::audit::AuditRow;
use crate::store::census::{check_day, day_number};

/// Rows the page shows at most (the newest matching ones); exports hold all.
const PAGE_ROWS: usize = 500;

/// The filter, from the page's query string.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in super::super) struct Filter {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    actor: String,
    /// Exports only: `jsonl`, `csv` or `head`.
    #[serde(default)]
    format: String,
}

/// A checked filter: an inclusive range of Unix ms, an action (or action prefix ending in `.`),
/// an actor.
struct Checked {
    from_ms: u64,
    to_ms: u64,
    action: String,
    actor: String,
}

impl Filter {
    fn check(&self) -> Result<Checked, ApiError> {
        let day = |d: &str, what: &str| -> Result<Option<u64>, ApiError> {
            if d.is_empty() {
                return Ok(None);
            }
            check_day(d).map_err(|_| ApiError::invalid(format!("{what} is a day, YYYY-MM-DD")))?;
            Ok(day_number(d))
        };
        let from = day(&self.from, "from")?;
        let to = day(&self.to, "to")?;
        if self.action.len() > 64 || self.actor.len() > 300 {
            return Err(ApiError::invalid(
                "the action filter is at most 64 bytes and the actor filter 300",
            ));
        }
        Ok(Checked {
            from_ms: from.map_or(0, |d| d * 86_400_000),
            to_ms: to.map_or(u64::MAX, |d| (d + 1) * 86_400_000 - 1),
            action: self.action.trim().to_owned(),
            actor: self.actor.trim().to_owned(),
        })
    }

    /// The filter as a query string, for the export links.
    fn query(&self) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("from", &self.from)
            .append_pair("to", &self.to)
            .append_pair("action", &self.action)
            .append_pair("actor", &self.actor)
            .finish()
    }
}

impl Checked {
    fn matches(&self, row: &AuditRow) -> bool {
        let action = self.action.is_empty()
            || row.action == self.action
            || (self.action.ends_with('.') && row.action.starts_with(&self.action));
        row.time_ms >= self.from_ms
            && row.time_ms <= self.to_ms
            && action
            && (self.actor.is_empty() || row.actor == self.actor)
    }
}

/// `GET /dashboard/t/{tenant}/audit`.
pub(in super::super) async fn audit_page(
    State(s): State<Arc<Service>>,
    auth: TenantAuth,
    query: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let filter = match query {
        Ok(Query(f)) => f,
        Err(_) => {
            return error_page(
                Some(&auth),
                ApiError::invalid("the filter's query is malformed"),
                "",
            );
        }
    };
    let checked = match filter.check() {
        Ok(c) => c,
        Err(err) => return error_page(Some(&auth), err, ""),
    };
    let export = match crate::api::off_runtime(|| s.export_chain_as(&auth.actor(), &auth.tenant)) {
        Ok(e) => e,
        Err(err) => return error_page(Some(&auth), err, "/dashboard"),
    };
    let matching: Vec<&AuditRow> = export.rows.iter().filter(|r| checked.matches(r)).collect();
    let total = matching.len();
    let rows: Vec<Value> = matching
        .iter()
        .rev()
        .take(PAGE_ROWS)
        .map(|r| {
            context! {
                seq => r.seq,
                time => time_of(r.time_ms),
                actor => &r.actor,
                action => &r.action,
                resource => &r.resource,
                outcome => &r.outcome,
                details => r.details.to_string(),
            }
        })
        .collect();
    let head = serde_json::to_string_pretty(&export.head).unwrap_or_default();
    html(
        StatusCode::OK,
        "audit.html",
        context! {
            verified => export.chain_verified,
            verify_error => export.verify_error,
            head => head,
            filter => context! {
                from => &filter.from, to => &filter.to,
                action => &filter.action, actor => &filter.actor,
            },
            query => filter.query(),
            shown => rows.len(),
            total => total,
            truncated => total > PAGE_ROWS,
            rows => rows,
            ..page_context(&auth, "audit")
        },
    )
}

/// `GET /dashboard/t/{tenant}/audit/export?format=jsonl|csv|head&...filter`.
pub(in super::super) async fn audit_export(
    State(s): State<Arc<Service>>,
    auth: TenantAuth,
    query: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = (|| {
        let Ok(Query(filter)) = query else {
            return Err(ApiError::invalid("the export's query is malformed"));
        };
        let checked = filter.check()?;
        let export = crate::api::off_runtime(|| s.export_chain_as(&auth.actor(), &auth.tenant))?;
        let rows = export.rows.iter().filter(|r| checked.matches(r));
        let (body, content_type, extension) = match filter.format.as_str() {
            "jsonl" => {
                let mut out = String::new();
                for row in rows {
                    out.push_str(&serde_json::to_string(row).map_err(ApiError::internal)?);
                    out.push('\n');
                }
                (out, "application/jsonl", "jsonl")
            }
            "csv" => (csv_of(rows)?, "text/csv; charset=utf-8", "csv"),
            "head" => (
                serde_json::to_string_pretty(&export.head).map_err(ApiError::internal)? + "\n",
                "application/json",
                "head.json",
            ),
            other => {
                return Err(ApiError::invalid(format!(
                    "{other:?} is not an export format (jsonl, csv or head)"
                )));
            }
        };
        Ok((body, content_type, extension))
    })();
    match result {
        Ok((body, content_type, extension)) => {
            let disposition = format!("attachment; filename=\"audit-{}.{extension}\"", auth.tenant);
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, content_type.to_owned()),
                    (header::CONTENT_DISPOSITION, disposition),
                    (header::CACHE_CONTROL, "no-store".to_owned()),
                ],
                body,
            )
                .into_response()
        }
        Err(err) => err.into_response(),
    }
}

fn csv_of<'a>(rows: impl Iterator<Item = &'a AuditRow>) -> Result<String, ApiError> {
    let mut out = csv::Writer::from_writer(Vec::new());
    let write = |e: csv::Error| ApiError::internal(format!("writing CSV: {e}"));
    out.write_record([
        "chain",
        "seq",
        "time_ms",
        "actor",
        "action",
        "resource",
        "outcome",
        "details",
        "prev_hash",
        "hash",
        "signature",
    ])
    .map_err(write)?;
    for r in rows {
        out.write_record([
            r.chain.as_str(),
            &r.seq.to_string(),
            &r.time_ms.to_string(),
            &neutral(&r.actor),
            &r.action,
            &neutral(&r.resource),
            &r.outcome,
            &r.details.to_string(),
            &r.prev_hash,
            &r.hash,
            &r.signature,
        ])
        .map_err(write)?;
    }
    let bytes = out
        .into_inner()
        .map_err(|e| ApiError::internal(format!("writing CSV: {e}")))?;
    String::from_utf8(bytes).map_err(ApiError::internal)
}

/// A cell a spreadsheet would take for a formula (`=`, `+`, `-`, `@` first) gets a leading `'`.
fn neutral(cell: &str) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64, time_ms: u64, actor: &str, action: &str) -> AuditRow {
        AuditRow {
            chain: "acme".into(),
            seq,
            time_ms,
            actor: actor.into(),
            action: action.into(),
            resource: "acme".into(),
            outcome: "ok".into(),
            details: serde_json::json!({}),
            prev_hash: String::new(),
            hash: String::new(),
            signature: String::new(),
        }
    }

    #[test]
    fn filters_select_by_day_action_and_actor() {
        let rows = [
            row(1, 86_400_000 - 1, "admin", "key.create"),
            row(2, 86_400_000, "user:a@x.io", "key.revoke"),
            row(3, 2 * 86_400_000, "admin", "member.add"),
        ];
        let pick = |f: Filter| -> Vec<u64> {
            let c = f.check().unwrap();
            rows.iter()
                .filter(|r| c.matches(r))
                .map(|r| r.seq)
                .collect()
        };
        assert_eq!(pick(Filter::default()), [1, 2, 3]);
        let day2 = Filter {
            from: "1970-01-02".into(),
            to: "1970-01-02".into(),
            ..Filter::default()
        };
        assert_eq!(pick(day2), [2]);
        let keys = Filter {
            action: "key.".into(),
            ..Filter::default()
        };
        assert_eq!(pick(keys), [1, 2]);
        let exact = Filter {
            action: "key".into(),
            ..Filter::default()
        };
        assert!(pick(exact).is_empty());
        let admin = Filter {
            actor: "admin".into(),
            ..Filter::default()
        };
        assert_eq!(pick(admin), [1, 3]);
        for bad in ["1970-1-2", "yesterday", "1970-01-02T00:00"] {
            let f = Filter {
                from: bad.into(),
                ..Filter::default()
            };
            assert!(f.check().is_err(), "{bad}");
        }
    }

    #[test]
    fn csv_cells_never_start_a_formula() {
        let rows = [row(1, 0, "=HYPERLINK(\"http://x\")", "key.create")];
        let csv = csv_of(rows.iter()).unwrap();
        assert!(csv.contains("'=HYPERLINK"), "{csv}");
        assert_eq!(csv.lines().count(), 2);
    }
}
