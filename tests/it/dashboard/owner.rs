//! The pages of a tenant's owner beside the API's: snapshots (up to the store's limit), settings
//! (notification addresses, the anomaly threshold within the tier's range), and the overview's
//! hourly usage. The page helpers are in `pages.rs`.

use serde_json::json;

use super::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_takes_snapshots_up_to_the_limit_and_an_admin_only_lists_them() {
    let h = start().await;
    let session = h.login("alice@example.com").await;
    let csrf = h.csrf(&session).await;
    let page = h.page(&session, "/dashboard/t/acme/snapshots").await;
    assert!(page.body.contains("No snapshots yet"), "{}", page.body);
    for _ in 0..2 {
        let taken = h
            .form(&session, "/dashboard/t/acme/snapshots", &[("csrf", &csrf)])
            .await;
        assert_eq!(taken.status, 303, "{}", taken.body);
    }
    let page = h.page(&session, "/dashboard/t/acme/snapshots").await;
    assert_eq!(
        page.body.matches("<td>owner</td>").count(),
        2,
        "{}",
        page.body
    );
    // The owner's limit (2 in this harness) holds; the operator's own snapshots do not count.
    let refused = h
        .form(&session, "/dashboard/t/acme/snapshots", &[("csrf", &csrf)])
        .await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    let (status, body) = h
        .cluster
        .admin("POST", "/admin/v1/tenants/acme/snapshots", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let rows = h.audit("acme", "snapshot.create").await;
    let actors: Vec<&str> = rows.iter().map(|r| r["actor"].as_str().unwrap()).collect();
    assert_eq!(
        actors,
        ["user:alice@example.com", "user:alice@example.com", "admin"],
        "{rows:?}"
    );
    // An admin of the tenant sees them and may not take one.
    h.cluster
        .admin(
            "POST",
            "/admin/v1/tenants/acme/members",
            Some(json!({"email": "dana@example.com", "role": "admin"})),
        )
        .await;
    let dana = h.login("dana@example.com").await;
    let dana_csrf = h.csrf(&dana).await;
    let page = h.page(&dana, "/dashboard/t/acme/snapshots").await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("take-snapshot"), "{}", page.body);
    let refused = h
        .form(
            &dana,
            "/dashboard/t/acme/snapshots",
            &[("csrf", &dana_csrf)],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    h.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_sets_notification_addresses_and_a_threshold_within_the_tiers_range() {
    let h = start().await;
    let session = h.login("alice@example.com").await;
    let csrf = h.csrf(&session).await;
    let page = h.page(&session, "/dashboard/t/acme/settings").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("id=\"settings\""), "{}", page.body);
    let saved = h
        .form(
            &session,
            "/dashboard/t/acme/settings",
            &[
                ("csrf", &csrf),
                ("emails", "Billing@Acme.example\nops@acme.example"),
                ("threshold", "12.5"),
            ],
        )
        .await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let page = h.page(&session, "/dashboard/t/acme/settings").await;
    assert!(
        page.body
            .contains("billing@acme.example\nops@acme.example</textarea>"),
        "{}",
        page.body
    );
    assert!(page.body.contains("value=\"12.5\""), "{}", page.body);
    let rows = h.audit("acme", "settings.update").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["actor"], "user:alice@example.com");
    // Out of the tier's range (4 to 50), not a number, not an address, too many: 400, unchanged.
    let many: Vec<String> = (0..11).map(|i| format!("p{i}@acme.example")).collect();
    for (emails, threshold) in [
        ("a@acme.example", "3"),
        ("a@acme.example", "51"),
        ("a@acme.example", "NaN"),
        ("a@acme.example", "1e400"),
        ("<script>@x", ""),
        (many.join("\n").as_str(), ""),
    ] {
        let refused = h
            .form(
                &session,
                "/dashboard/t/acme/settings",
                &[
                    ("csrf", &csrf),
                    ("emails", emails),
                    ("threshold", threshold),
                ],
            )
            .await;
        assert_eq!(
            refused.status, 400,
            "{emails} {threshold}: {}",
            refused.body
        );
        assert!(!refused.body.contains("<script>"), "{}", refused.body);
    }
    assert_eq!(h.audit("acme", "settings.update").await.len(), 1);
    // An admin of the tenant reads them and may not change them.
    h.cluster
        .admin(
            "POST",
            "/admin/v1/tenants/acme/members",
            Some(json!({"email": "dana@example.com", "role": "admin"})),
        )
        .await;
    let dana = h.login("dana@example.com").await;
    let dana_csrf = h.csrf(&dana).await;
    let page = h.page(&dana, "/dashboard/t/acme/settings").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("id=\"settings-view\""), "{}", page.body);
    assert!(!page.body.contains("id=\"settings\""), "{}", page.body);
    let refused = h
        .form(
            &dana,
            "/dashboard/t/acme/settings",
            &[("csrf", &dana_csrf), ("threshold", "20")],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    h.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_draws_hourly_usage_from_the_flushed_counters() {
    let h = start().await;
    let session = h.login("alice@example.com").await;
    let key = h
        .cluster
        .key("acme", &["read", "write", "manage"], None)
        .await;
    h.cluster.create_collection(&key, "docs", 4).await;
    crate::snapshots::put(&h.cluster, &key, 0..7, "a").await;
    h.cluster.service().flush_usage();
    let page = h.page(&session, "/dashboard/t/acme").await;
    for chart in ["hourly-requests", "hourly-searches", "hourly-upserted"] {
        assert!(
            page.body
                .contains(&format!("/dashboard/t/acme/charts/{chart}")),
            "{chart}: {}",
            page.body
        );
    }
    let chart = h
        .page(&session, "/dashboard/t/acme/charts/hourly-upserted")
        .await;
    assert_eq!(chart.status, 200, "{}", chart.body);
    assert!(chart.body.starts_with("<svg"), "{}", chart.body);
    // The value axis reaches the 7 points upserted (it is drawn to 110% of the largest value;
    // an hour axis label reads HH:00).
    let labels: Vec<f64> = chart
        .body
        .split('>')
        .filter_map(|t| t.split('<').next()?.trim().parse().ok())
        .collect();
    let top = labels.iter().copied().fold(0.0, f64::max);
    assert!((6.0..=7.7).contains(&top), "{top} {labels:?}");
    h.cluster.shutdown().await;
}
