//! Dialing the coordinator: TCP, TLS for `wss://`, and the WebSocket upgrade with the token.

use super::*;

/// The coordinator refused the WebSocket upgrade.
#[derive(Debug, thiserror::Error)]
#[error("the coordinator refused the upgrade with HTTP {status}{hint}")]
pub(super) struct UpgradeRefused {
    status: u16,
    hint: &'static str,
}

/// Opens the WebSocket to the coordinator: TCP, the TLS handshake for `wss://` (the certificate
/// checked against `tls`'s roots and the URL's host), then the upgrade carrying the token.
pub(super) async fn dial(
    config: &Config,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<Ws> {
    let mut request = config
        .coordinator_url
        .as_str()
        .into_client_request()
        .context("coordinator_url is not a valid WebSocket URL")?;
    let bearer = Zeroizing::new(format!("Bearer {}", config.token.as_str()));
    let mut auth =
        HeaderValue::from_str(&bearer).context("the worker token is not a valid header value")?;
    auth.set_sensitive(true);
    request.headers_mut().insert("authorization", auth);
    request.headers_mut().insert(
        "x-vaultvec-worker",
        HeaderValue::from_str(&config.worker_id).context("worker_id")?,
    );
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let is_wss = request.uri().scheme_str() == Some("wss");
    let connector = match tls {
        Some(tls) => Connector::Rustls(tls),
        None if is_wss => bail!("coordinator_url is wss:// but no TLS configuration was built"),
        None => Connector::Plain,
    };
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(ws_config),
        true,
        Some(connector),
    );
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => bail!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let hint = if status == 401 {
                ": the worker token or worker id is not the one configured on the coordinator \
                 (check token_file and worker_id)"
            } else {
                ""
            };
            Err(UpgradeRefused { status, hint }.into())
        }
        Ok(Err(err)) if is_tls_failure(&err) => Err(err).context(
            "the TLS handshake with the coordinator failed: check that ca_file holds the CA that \
             signed the coordinator's [cluster_tls] certificate, that the certificate names the \
             host in coordinator_url, and that the coordinator's cluster listener has [cluster_tls]",
        ),
        Ok(Err(err)) if !is_wss && looks_like_tls_listener(&err) => Err(err).context(
            "connecting (if the coordinator's cluster listener has [cluster_tls], dial wss://)",
        ),
        Ok(Err(err)) => Err(err).context("connecting"),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

/// True if a dial failed in the TLS handshake (tokio-rustls reports rustls errors inside I/O errors).
fn is_tls_failure(err: &tungstenite::Error) -> bool {
    match err {
        tungstenite::Error::Tls(_) => true,
        tungstenite::Error::Io(io) => io
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>()),
        _ => false,
    }
}

/// True if a plain `ws://` dial failed the way it does against a TLS listener: the answer to the
/// upgrade request is a TLS alert, not HTTP, or the connection is cut.
fn looks_like_tls_listener(err: &tungstenite::Error) -> bool {
    use std::io::ErrorKind;
    match err {
        tungstenite::Error::Protocol(_) | tungstenite::Error::HttpFormat(_) => true,
        tungstenite::Error::Io(io) => {
            matches!(
                io.kind(),
                ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof
            )
        }
        _ => false,
    }
}

/// Dials the coordinator once, exactly as [`serve`] does (TCP, TLS for `wss://`, the upgrade with
/// the token), then closes the connection without saying hello. For checking a configuration:
/// `vaultvec-worker --check` and the tests use it.
pub async fn check_connection(config: &Config) -> anyhow::Result<()> {
    config.validate()?;
    let tls = config.tls_client_config()?;
    let mut ws = dial(config, tls).await?;
    let _ = ws.close(None).await;
    Ok(())
}
