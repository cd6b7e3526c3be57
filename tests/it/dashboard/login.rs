//! Logging in, and the callback's refusals.

use serde_json::{Value, json};

use super::*;

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

/// The exchange names the configured redirect URI exactly: a code the provider issued for another
/// (registered) redirect URI, delivered to this callback with its state, is refused there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_issued_for_another_redirect_uri_is_refused() {
    let h = start().await;
    h.idp
        .control(
            "/test/user",
            json!({"email": "alice@example.com", "verified": true}),
        )
        .await;
    let response = h
        .client
        .get(h.url("/dashboard/login/idp"))
        .send()
        .await
        .unwrap();
    let (browser, _) = set_cookie(&response, "__Host-vv_login").unwrap();
    let mut authorize = url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    let other = format!("{PUBLIC_URL}/dashboard/callback/github");
    let pairs: Vec<(String, String)> = authorize
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == "redirect_uri" {
                (k, other.clone())
            } else {
                (k, v)
            }
        })
        .collect();
    authorize.query_pairs_mut().clear().extend_pairs(pairs);
    let answer = h.idp.https.get(authorize.as_str()).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 302);
    let back = url::Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
    assert!(back.as_str().starts_with(&other), "{back}");
    let (status, session, body) = h
        .callback(back.query().unwrap(), &[("__Host-vv_login", &browser)])
        .await;
    assert_eq!((status, session), (403, None), "{body}");
    assert!(body.contains("code exchange"), "{body}");
    h.cluster.shutdown().await;
}
