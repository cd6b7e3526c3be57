//! GitHub login: OAuth 2.0 authorization code flow with PKCE S256 (the `oauth2` crate), then
//! GitHub's user API (`GET /user`) for the account's id and `GET /user/emails` for its primary
//! email address and whether GitHub verified it. GitHub issues no ID token; the access token is
//! used for these two calls and dropped. Every call goes through the outbound guard.

use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse, TokenUrl,
};
use serde::Deserialize;

use super::http_client::Http;
use super::{Authorization, Identity, Provider, Refused};
use crate::outbound::{Outbound, error_chain};

/// GitHub's endpoints (GitHub's own, or a GitHub Enterprise server's).
pub(super) struct Endpoints<'a> {
    pub(super) authorize_url: &'a url::Url,
    pub(super) token_url: &'a url::Url,
    pub(super) api_url: &'a url::Url,
}

type Client = BasicClient<
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

fn client(
    provider: &Provider,
    authorize_url: &url::Url,
    token_url: &url::Url,
    redirect_uri: &str,
) -> Result<Client, Refused> {
    let redirect = RedirectUrl::new(redirect_uri.to_owned())
        .map_err(|e| Refused(format!("the redirect URI: {e}")))?;
    Ok(BasicClient::new(ClientId::new(provider.client_id.clone()))
        .set_client_secret(ClientSecret::new(provider.client_secret.to_string()))
        .set_auth_uri(AuthUrl::from_url(authorize_url.clone()))
        .set_token_uri(TokenUrl::from_url(token_url.clone()))
        .set_redirect_uri(redirect))
}

/// Builds the authorization URL (PKCE S256, random state, scopes `read:user user:email`).
pub(super) fn authorization(
    provider: &Provider,
    authorize_url: &url::Url,
    token_url: &url::Url,
    redirect_uri: &str,
) -> Result<Authorization, Refused> {
    let client = client(provider, authorize_url, token_url, redirect_uri)?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("read:user".into()))
        .add_scope(Scope::new("user:email".into()))
        .set_pkce_challenge(challenge)
        .url();
    Ok(Authorization {
        url: url.to_string(),
        state: state.secret().clone(),
        nonce: String::new(),
        pkce_verifier: verifier.secret().clone(),
    })
}

#[derive(Deserialize)]
struct User {
    id: u64,
}

#[derive(Deserialize)]
struct Email {
    email: String,
    primary: bool,
    verified: bool,
}

/// Exchanges `code` (with the PKCE verifier) and reads who logged in: the account's id and its
/// primary email address with GitHub's verification of it.
pub(super) async fn exchange(
    outbound: &Outbound,
    provider: &Provider,
    endpoints: &Endpoints<'_>,
    redirect_uri: &str,
    code: String,
    pkce_verifier: String,
) -> Result<Identity, Refused> {
    let client = client(
        provider,
        endpoints.authorize_url,
        endpoints.token_url,
        redirect_uri,
    )?;
    let http = Http(outbound.clone());
    let token = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier))
        .request_async(&http)
        .await
        .map_err(|e| Refused(format!("the code exchange failed: {}", error_chain(&e))))?;
    let bearer = token.access_token().secret();
    let user: User = api(outbound, endpoints.api_url, "user", bearer).await?;
    let emails: Vec<Email> = api(outbound, endpoints.api_url, "user/emails", bearer).await?;
    let primary = emails
        .into_iter()
        .find(|e| e.primary)
        .ok_or_else(|| Refused("the GitHub account has no primary email address".into()))?;
    Ok(Identity {
        subject: user.id.to_string(),
        email: primary.email.to_ascii_lowercase(),
        email_verified: primary.verified,
    })
}

/// `GET <api>/<path>` with the access token, as JSON.
async fn api<T: serde::de::DeserializeOwned>(
    outbound: &Outbound,
    base: &url::Url,
    path: &str,
    bearer: &str,
) -> Result<T, Refused> {
    let url = format!("{}/{path}", base.as_str().trim_end_matches('/'));
    let request = outbound
        .http()
        .get(&url)
        .bearer_auth(bearer)
        .header("accept", "application/vnd.github+json")
        .header("x-github-api-version", "2022-11-28")
        .header("user-agent", "vaultvec")
        .build()
        .map_err(|e| Refused(format!("building the {path} request: {e}")))?;
    let answer = outbound
        .send(request)
        .await
        .map_err(|e| Refused(format!("GitHub's {path}: {e}")))?;
    if answer.status != 200 {
        return Err(Refused(format!(
            "GitHub's {path} answered {}",
            answer.status
        )));
    }
    serde_json::from_slice(&answer.body)
        .map_err(|e| Refused(format!("GitHub's {path} answer: {e}")))
}
