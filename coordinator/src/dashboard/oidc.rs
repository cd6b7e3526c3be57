//! The OpenID Connect protocol, all of it done by the `openidconnect` crate: discovery (with the
//! provider's keys), the authorization URL with PKCE S256, the code exchange, and the ID token's
//! checks. Its HTTP calls go through the outbound guard (`http_client.rs`).

use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};

use super::http_client::Http;
use super::{Authorization, Identity, Provider, Refused};
use crate::outbound::{Outbound, error_chain as chain};

/// A provider's discovery document with its keys.
pub(super) type Metadata = CoreProviderMetadata;

/// Fetches `provider`'s discovery document and keys.
pub(super) async fn discover(
    outbound: &Outbound,
    provider: &Provider,
) -> Result<Metadata, Refused> {
    let super::ProviderKind::Oidc { issuer } = &provider.kind else {
        return Err(Refused(format!(
            "{} is not an OpenID Connect provider",
            provider.name
        )));
    };
    let issuer = IssuerUrl::new(issuer.as_str().trim_end_matches('/').to_owned())
        .map_err(|e| Refused(format!("the issuer URL: {e}")))?;
    let http = Http(outbound.clone());
    CoreProviderMetadata::discover_async(issuer, &http)
        .await
        .map_err(|e| Refused(format!("discovering {}: {}", provider.name, chain(&e))))
}

fn client(
    provider: &Provider,
    metadata: Metadata,
    redirect_uri: &str,
) -> Result<
    CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    >,
    Refused,
> {
    let redirect = RedirectUrl::new(redirect_uri.to_owned())
        .map_err(|e| Refused(format!("the redirect URI: {e}")))?;
    Ok(CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(provider.client_id.clone()),
        Some(ClientSecret::new(provider.client_secret.to_string())),
    )
    .set_redirect_uri(redirect))
}

/// Builds the authorization URL (code flow, PKCE S256, `openid email` scopes, random state and
/// nonce).
pub(super) fn authorization(
    provider: &Provider,
    metadata: Metadata,
    redirect_uri: &str,
) -> Result<Authorization, Refused> {
    let client = client(provider, metadata, redirect_uri)?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".into()))
        .set_pkce_challenge(challenge)
        .url();
    Ok(Authorization {
        url: url.to_string(),
        state: state.secret().clone(),
        nonce: nonce.secret().clone(),
        pkce_verifier: verifier.secret().clone(),
    })
}

/// Exchanges `code` (with the PKCE verifier) and checks the ID token: signature against the
/// provider's keys, issuer, audience, expiry (by the host's clock, which the provider's `exp`
/// is written against), nonce, and the access token's hash.
pub(super) async fn exchange(
    outbound: &Outbound,
    provider: &Provider,
    metadata: Metadata,
    redirect_uri: &str,
    code: String,
    pkce_verifier: String,
    nonce: String,
) -> Result<Identity, Refused> {
    let client = client(provider, metadata, redirect_uri)?;
    let http = Http(outbound.clone());
    let token = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| Refused(format!("the provider has no token endpoint: {e}")))?
        .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier))
        .request_async(&http)
        .await
        .map_err(|e| Refused(format!("the code exchange failed: {}", chain(&e))))?;
    let id_token = token
        .id_token()
        .ok_or_else(|| Refused("the provider answered no ID token".into()))?;
    let verifier = client.id_token_verifier();
    let claims = id_token
        .claims(&verifier, &Nonce::new(nonce))
        .map_err(|e| Refused(format!("the ID token does not verify: {}", chain(&e))))?;
    if let Some(expected) = claims.access_token_hash() {
        let alg = id_token
            .signing_alg()
            .map_err(|e| Refused(format!("the ID token's algorithm: {e}")))?;
        let key = id_token
            .signing_key(&verifier)
            .map_err(|e| Refused(format!("the ID token's key: {e}")))?;
        let actual = AccessTokenHash::from_token(token.access_token(), alg, key)
            .map_err(|e| Refused(format!("the access token's hash: {e}")))?;
        if actual != *expected {
            return Err(Refused(
                "the access token does not match the ID token's hash".into(),
            ));
        }
    }
    let email = claims
        .email()
        .map(|e| e.as_str().to_ascii_lowercase())
        .ok_or_else(|| Refused("the ID token has no email address".into()))?;
    Ok(Identity {
        subject: claims.subject().as_str().to_owned(),
        email,
        email_verified: claims.email_verified() == Some(true),
    })
}
