//! Tenant routes and roles; the admin API's members routes.

use serde_json::{Value, json};
use tests::Cluster;

use super::*;

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
            .replace("{key_id}", "abcdefgh")
            .replace("{chart}", "daily-requests")
            .replace("{name}", "docs")
            .replace("{email}", "nobody@example.com");
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
