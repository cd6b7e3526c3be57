//! The HTML pages, through real HTTP with the session cookie and forms as a browser posts them
//! (the browser itself drives them in `tests/it/browser.rs`): headers and CSP, forms checked
//! by their CSRF field, collections, keys, members, the audit log and its exports, the
//! operator view, escaping.

use serde_json::{Value, json};

use super::{Harness, OPERATOR, start};

/// A page answer: status, headers, body.
pub(super) struct Page {
    pub(super) status: u16,
    pub(super) headers: reqwest::header::HeaderMap,
    pub(super) body: String,
}

impl Harness {
    pub(super) async fn page(&self, session: &str, path: &str) -> Page {
        let response = self
            .client
            .get(self.url(path))
            .header("cookie", format!("__Host-vv_session={session}"))
            .send()
            .await
            .unwrap();
        Page {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    /// Posts `fields` as a browser's form would (the CSRF token among them if the caller put
    /// it there).
    pub(super) async fn form(&self, session: &str, path: &str, fields: &[(&str, &str)]) -> Page {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let response = self
            .client
            .post(self.url(path))
            .header("cookie", format!("__Host-vv_session={session}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        Page {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    pub(super) async fn csrf(&self, session: &str) -> String {
        self.me(session).await.1["csrf_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

fn location(page: &Page) -> &str {
    page.headers["location"].to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_carry_a_strict_csp_and_forms_need_the_session_csrf_token() {
    let h = start().await;
    // Without a session: the login page, with a link per provider.
    let response = h.client.get(h.url("/dashboard")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for directive in [
        "default-src 'none'",
        "style-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    let body = response.text().await.unwrap();
    assert!(body.contains("href=\"/dashboard/login/idp\""), "{body}");
    assert!(body.contains("href=\"/dashboard/login/github\""), "{body}");
    assert!(
        !body.contains("<script") && !body.contains("style="),
        "{body}"
    );
    // The stylesheet is served from the binary.
    let css = h
        .client
        .get(h.url("/dashboard/assets/style.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    assert!(css.text().await.unwrap().contains("font"));

    // A login lands on the list of the user's tenants.
    let flow = h.begin("alice@example.com", true).await;
    let response = h
        .client
        .get(h.url(&format!("/dashboard/callback/idp?{}", flow.callback_query)))
        .header("cookie", format!("__Host-vv_login={}", flow.browser))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(response.headers()["location"], "/dashboard");
    let session = super::set_cookie(&response, "__Host-vv_session").unwrap().0;
    let home = h.page(&session, "/dashboard").await;
    assert!(
        home.body.contains("href=\"/dashboard/t/acme\""),
        "{}",
        home.body
    );
    assert!(!home.body.contains("/dashboard/t/beta"), "{}", home.body);
    assert!(!home.body.contains("operator-view"), "{}", home.body);
    // Not an operator: the operator view does not exist for them.
    assert_eq!(h.page(&session, "/dashboard/operator").await.status, 404);

    let csrf = h.csrf(&session).await;
    let form = [("name", "docs"), ("dimension", "4"), ("metric", "cosine")];
    // A form without the token, or with another, changes nothing.
    let refused = h
        .form(&session, "/dashboard/t/acme/collections", &form)
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let mut forged = form.to_vec();
    forged.push(("csrf", "not-the-token"));
    let refused = h
        .form(&session, "/dashboard/t/acme/collections", &forged)
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    // Another session's token is not this session's.
    let other = h.login("alice@example.com").await;
    let other_csrf = h.csrf(&other).await;
    let mut crossed = form.to_vec();
    crossed.push(("csrf", &other_csrf));
    let refused = h
        .form(&session, "/dashboard/t/acme/collections", &crossed)
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let page = h.page(&session, "/dashboard/t/acme/collections").await;
    assert!(page.body.contains("No collections yet"), "{}", page.body);
    // An oversized form is refused before anything reads it whole.
    let big = "x".repeat(64 * 1024);
    let refused = h
        .form(
            &session,
            "/dashboard/t/acme/collections",
            &[("csrf", &csrf), ("name", &big)],
        )
        .await;
    assert_eq!(refused.status, 413, "{}", refused.body);

    // With it: created, and back to the list (post/redirect/get).
    let mut good = form.to_vec();
    good.push(("csrf", &csrf));
    let created = h
        .form(&session, "/dashboard/t/acme/collections", &good)
        .await;
    assert_eq!(created.status, 303, "{}", created.body);
    assert_eq!(location(&created), "/dashboard/t/acme/collections");
    let page = h.page(&session, "/dashboard/t/acme/collections").await;
    assert_eq!(page.status, 200);
    assert!(
        page.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(
        page.body.contains("<td>docs</td><td>4</td><td>cosine</td>"),
        "{}",
        page.body
    );
    // A client mistake is a page with the API's reason and a 4xx, never a 5xx.
    let mut bad = good.clone();
    bad[1] = ("dimension", "-3");
    let page = h
        .form(&session, "/dashboard/t/acme/collections", &bad)
        .await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("whole number"), "{}", page.body);
    let page = h
        .form(&session, "/dashboard/t/acme/collections", &good)
        .await;
    assert_eq!(page.status, 409, "{}", page.body);
    h.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_collections_and_members_are_managed_through_the_pages_and_audited() {
    let h = start().await;
    let session = h.login("alice@example.com").await;
    let csrf = h.csrf(&session).await;
    let t = "/dashboard/t/acme";
    // A key with scopes and a collection restriction; its secret is on the answer, once.
    let made = h
        .form(
            &session,
            &format!("{t}/keys"),
            &[
                ("csrf", &csrf),
                ("label", "<script>alert('label')</script>"),
                ("scope", "read"),
                ("scope", "write"),
                ("scope", "manage"),
                ("collections", ""),
            ],
        )
        .await;
    assert_eq!(made.status, 200, "{}", made.body);
    assert_eq!(made.headers["cache-control"], "no-store");
    let secret = made
        .body
        .split("<code id=\"new-key-secret\">")
        .nth(1)
        .and_then(|rest| rest.split("</code>").next())
        .expect("the new key's secret")
        .to_owned();
    assert!(secret.starts_with("vv_"), "{secret}");
    // The label is text, never markup.
    assert!(!made.body.contains("<script>alert"), "{}", made.body);
    assert!(made.body.contains("&lt;script&gt;"), "{}", made.body);
    let keys = h.page(&session, &format!("{t}/keys")).await;
    assert!(
        !keys.body.contains(&secret),
        "a listing shows the secret again"
    );
    let key_id = secret[3..11].to_owned();
    assert!(keys.body.contains(&key_id));

    // A collection made on its page; the key writes to it through the API...
    let created = h
        .form(
            &session,
            &format!("{t}/collections"),
            &[
                ("csrf", &csrf),
                ("name", "docs"),
                ("dimension", "4"),
                ("metric", "cosine"),
            ],
        )
        .await;
    assert_eq!(created.status, 303, "{}", created.body);
    let (status, body) = h
        .cluster
        .http(
            "PUT",
            "/v1/collections/docs/points",
            Some(&secret),
            Some(json!({"points": [{"id": 1, "vector": [1.0, 0.0, 0.0, 0.0]}]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let page = h.page(&session, &format!("{t}/collections")).await;
    assert!(
        page.body
            .contains("<td>docs</td><td>4</td><td>cosine</td><td>1</td>"),
        "{}",
        page.body
    );
    // ... until revoked on the page.
    let revoked = h
        .form(
            &session,
            &format!("{t}/keys/{key_id}/revoke"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(revoked.status, 303, "{}", revoked.body);
    let (status, _) = h
        .cluster
        .http("GET", "/v1/collections", Some(&secret), None)
        .await;
    assert_eq!(status, 401);
    let keys = h.page(&session, &format!("{t}/keys")).await;
    assert!(keys.body.contains("revoked"), "{}", keys.body);
    // Scopes that do not exist, and a restriction to a malformed name, are refused.
    for fields in [
        vec![("csrf", csrf.as_str()), ("scope", "root")],
        vec![
            ("csrf", csrf.as_str()),
            ("scope", "read"),
            ("collections", "../x"),
        ],
    ] {
        let page = h.form(&session, &format!("{t}/keys"), &fields).await;
        assert_eq!(page.status, 400, "{fields:?}: {}", page.body);
    }

    // Deleting a collection asks for its name first.
    let confirm = h
        .page(&session, &format!("{t}/collections/docs/delete"))
        .await;
    assert!(
        confirm.body.contains("cannot be undone"),
        "{}",
        confirm.body
    );
    let wrong = h
        .form(
            &session,
            &format!("{t}/collections/docs/delete"),
            &[("csrf", &csrf), ("confirm", "doc")],
        )
        .await;
    assert_eq!(wrong.status, 400, "{}", wrong.body);
    let page = h.page(&session, &format!("{t}/collections")).await;
    assert!(
        page.body.contains("<td>docs</td>"),
        "a wrong confirmation deleted it"
    );
    let deleted = h
        .form(
            &session,
            &format!("{t}/collections/docs/delete"),
            &[("csrf", &csrf), ("confirm", "docs")],
        )
        .await;
    assert_eq!(deleted.status, 303, "{}", deleted.body);
    let page = h.page(&session, &format!("{t}/collections")).await;
    assert!(!page.body.contains("<td>docs</td>"), "{}", page.body);

    // Members: invite, change a role, remove; the only owner stays one.
    let invited = h
        .form(
            &session,
            &format!("{t}/members"),
            &[
                ("csrf", &csrf),
                ("email", "Bob@Example.com"),
                ("role", "viewer"),
            ],
        )
        .await;
    assert_eq!(invited.status, 303, "{}", invited.body);
    let changed = h
        .form(
            &session,
            &format!("{t}/members/bob%40example.com/role"),
            &[("csrf", &csrf), ("role", "admin")],
        )
        .await;
    assert_eq!(changed.status, 303, "{}", changed.body);
    let members = h.page(&session, &format!("{t}/members")).await;
    assert!(
        members
            .body
            .contains("<td>bob@example.com</td><td class=\"role\">admin</td>"),
        "{}",
        members.body
    );
    for (path, fields) in [
        (
            "alice%40example.com/role",
            vec![("csrf", csrf.as_str()), ("role", "admin")],
        ),
        ("alice%40example.com/remove", vec![("csrf", csrf.as_str())]),
    ] {
        let page = h
            .form(&session, &format!("{t}/members/{path}"), &fields)
            .await;
        assert_eq!(page.status, 409, "{path}: {}", page.body);
        assert!(page.body.contains("only owner"), "{}", page.body);
    }
    let bad_role = h
        .form(
            &session,
            &format!("{t}/members/bob%40example.com/role"),
            &[("csrf", &csrf), ("role", "god")],
        )
        .await;
    assert_eq!(bad_role.status, 400, "{}", bad_role.body);
    let removed = h
        .form(
            &session,
            &format!("{t}/members/bob%40example.com/remove"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(removed.status, 303, "{}", removed.body);
    let members = h.page(&session, &format!("{t}/members")).await;
    assert!(
        !members.body.contains("bob@example.com"),
        "{}",
        members.body
    );

    // Every change is in the tenant's chain under alice's name.
    for action in [
        "key.create",
        "key.revoke",
        "collection.create",
        "collection.delete",
        "member.add",
        "member.remove",
    ] {
        let rows = h.audit("acme", action).await;
        assert!(
            rows.iter().any(|r| r["actor"] == "user:alice@example.com"),
            "{action}: {rows:?}"
        );
    }
    let deletions = h.audit("acme", "collection.delete").await;
    let outcomes: Vec<&str> = deletions
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["started", "ok"], "{deletions:?}");
    h.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_page_verifies_filters_and_exports_the_chain() {
    let h = start().await;
    let session = h.login("alice@example.com").await;
    let csrf = h.csrf(&session).await;
    for label in ["one", "two"] {
        let made = h
            .form(
                &session,
                "/dashboard/t/acme/keys",
                &[("csrf", &csrf), ("label", label), ("scope", "read")],
            )
            .await;
        assert_eq!(made.status, 200);
    }
    let page = h.page(&session, "/dashboard/t/acme/audit").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("The chain verifies"), "{}", page.body);
    assert!(
        page.body.contains("&quot;signature&quot;: &quot;"),
        "no signed head: {}",
        page.body
    );
    let filtered = h
        .page(
            &session,
            "/dashboard/t/acme/audit?action=key.&actor=user%3Aalice%40example.com",
        )
        .await;
    assert_eq!(
        filtered
            .body
            .matches("<td class=\"action\">key.create</td>")
            .count(),
        2
    );
    assert!(
        !filtered
            .body
            .contains("<td class=\"action\">member.add</td>"),
        "{}",
        filtered.body
    );
    let none = h
        .page(
            &session,
            "/dashboard/t/acme/audit?from=2000-01-01&to=2000-01-02",
        )
        .await;
    assert!(none.body.contains("No rows match"), "{}", none.body);
    for bad in ["from=yesterday", "actor=", "unknown=1"] {
        let page = h
            .page(&session, &format!("/dashboard/t/acme/audit?{bad}"))
            .await;
        if bad == "actor=" {
            assert_eq!(page.status, 200, "{bad}");
        } else {
            assert_eq!(page.status, 400, "{bad}: {}", page.body);
        }
    }

    // The unfiltered JSON lines are the whole chain, verifiable against the signed head.
    let jsonl = h
        .page(&session, "/dashboard/t/acme/audit/export?format=jsonl")
        .await;
    assert_eq!(jsonl.status, 200);
    assert!(
        jsonl.headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    let rows: Vec<Value> = jsonl
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = rows.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    for pair in rows.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
    let head = h
        .page(&session, "/dashboard/t/acme/audit/export?format=head")
        .await;
    let head: Value = serde_json::from_str(&head.body).unwrap();
    assert_eq!(head["chain"], "acme");
    assert!(head["seq"].as_u64().unwrap() >= rows.len() as u64);
    let csv = h
        .page(&session, "/dashboard/t/acme/audit/export?format=csv&action=key.create&actor=user%3Aalice%40example.com")
        .await;
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    let lines: Vec<&str> = csv.body.lines().collect();
    assert!(
        lines[0].starts_with("chain,seq,time_ms,actor,action"),
        "{}",
        csv.body
    );
    assert_eq!(lines.len(), 3, "{}", csv.body);
    let bad = h
        .page(&session, "/dashboard/t/acme/audit/export?format=xml")
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    h.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_the_tier_and_draws_its_charts() {
    let h = start().await;
    let session = h.login("alice@example.com").await;
    let page = h.page(&session, "/dashboard/t/acme").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("<dd id=\"tier\">pro</dd>"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("<dd id=\"state\">active</dd>"),
        "{}",
        page.body
    );
    let charts: Vec<&str> = page
        .body
        .split("src=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|src| src.contains("/charts/"))
        .collect();
    assert!(charts.len() >= 4, "{}", page.body);
    for src in charts {
        let chart = h.page(&session, src).await;
        assert_eq!(chart.status, 200, "{src}");
        assert_eq!(chart.headers["content-type"], "image/svg+xml");
        assert!(chart.body.starts_with("<svg"), "{src}");
        assert!(!chart.body.contains("<script"), "{src}");
    }
    assert_eq!(
        h.page(&session, "/dashboard/t/acme/charts/passwords")
            .await
            .status,
        404
    );
    // Another tenant's overview does not exist for a non-member.
    assert_eq!(h.page(&session, "/dashboard/t/beta").await.status, 404);
    h.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_every_tenant_and_their_actions_are_in_its_chain_under_their_name() {
    let h = start().await;
    // An operator is a member of no tenant, and may log in.
    let session = h.login(OPERATOR).await;
    let home = h.page(&session, "/dashboard").await;
    assert!(
        home.body.contains("href=\"/dashboard/operator\""),
        "{}",
        home.body
    );
    let view = h.page(&session, "/dashboard/operator").await;
    assert_eq!(view.status, 200, "{}", view.body);
    for tenant in ["acme", "beta"] {
        assert!(
            view.body
                .contains(&format!("href=\"/dashboard/t/{tenant}\"")),
            "{}",
            view.body
        );
    }
    let csrf = h.csrf(&session).await;
    let made = h
        .form(
            &session,
            "/dashboard/t/beta/keys",
            &[("csrf", &csrf), ("label", "support"), ("scope", "read")],
        )
        .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let rows = h.audit("beta", "key.create").await;
    assert!(
        rows.iter()
            .any(|r| r["actor"] == format!("operator:{OPERATOR}")),
        "{rows:?}"
    );
    let mirrored = h.audit("platform", "operator.request").await;
    assert!(
        mirrored
            .iter()
            .any(|r| r["resource"] == "beta" && r["actor"] == format!("operator:{OPERATOR}")),
        "{mirrored:?}"
    );
    // A tenant that does not exist is not found, for operators too.
    assert_eq!(h.page(&session, "/dashboard/t/nobody").await.status, 404);
    h.cluster.shutdown().await;
}
