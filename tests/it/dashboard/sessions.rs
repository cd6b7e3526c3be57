//! Sessions: fresh at login, timeouts, every route without one.

use super::*;

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
        let refused = send(None).await.unwrap();
        assert_eq!(refused.status().as_u16(), 401, "{path}");
        // A page asked for by a browser says to log in, with the way to the login page; the JSON
        // routes and the forms answer plain text.
        let kind = refused.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = refused.text().await.unwrap();
        if route.method == "GET" && !path.starts_with("/dashboard/v1/") {
            assert!(kind.starts_with("text/html"), "{path}: {kind}");
            assert!(
                body.contains("log in first") && body.contains("href=\"/dashboard\""),
                "{path}: {body}"
            );
        } else {
            assert!(kind.starts_with("text/plain"), "{path}: {kind}");
        }
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
