//! Mail: the outbox in SQLite (`store::billing`) and the `send_mail` job that delivers it.
//!
//! Whatever causes a mail (an anomaly, an operator's test mail) queues it in the transaction that
//! records its audit row, so a mail is never lost and always names that row. The `send_mail` job
//! (every minute by default) sends the due mails, oldest first, at most [`BATCH`] a run, one SMTP
//! session each: a mail the relay accepted is marked sent; one that failed (relay down, refused,
//! TLS) is tried again after a delay that doubles from a minute up to an hour, and is never
//! dropped. Nothing in a request's path waits for mail.
//!
//! The relay is reached through the outbound guard ([`crate::outbound::Outbound::connect`]: its
//! name resolved once, its address checked, `[outbound] allow_hosts` for one inside the network),
//! then over TLS only: implicit TLS (`tls = "implicit"`, usually port 465) with the guard's roots,
//! or STARTTLS (`tls = "starttls"`, usually 587), refused when the relay does not offer it, before
//! any credential or mail is sent. lettre speaks SMTP and builds the messages.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::Message;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use zeroize::Zeroizing;

use crate::outbound::Outbound;

mod job;

pub use job::SEND_MAIL;

/// Most mails one run of `send_mail` sends.
pub const BATCH: u32 = 100;
/// How long one mail's SMTP session may take, connection included.
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// The first retry's delay; each failure doubles it, up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(3600);

/// How the relay is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTls {
    /// TLS from the first byte (SMTPS).
    Implicit,
    /// Plain SMTP upgraded with STARTTLS, which the relay must offer.
    Starttls,
}

/// `[mail]` as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMail {
    host: String,
    port: u16,
    tls: MailTls,
    from: String,
    username: Option<String>,
    password_file: Option<PathBuf>,
}

/// `[mail]`: the relay and the sender.
#[derive(Clone)]
pub struct MailConfig {
    /// The relay's host name (checked as the TLS server name).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Implicit TLS or STARTTLS.
    pub tls: MailTls,
    /// The sender, `Name <address>` or an address.
    pub from: Mailbox,
    /// A user name and password, if the relay asks for them.
    pub credentials: Option<(String, Zeroizing<String>)>,
}

impl std::fmt::Debug for MailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("from", &self.from.to_string())
            .field("credentials", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl RawMail {
    /// Checks `[mail]`, reading the password file (`at` resolves relative paths).
    pub fn resolve(&self, at: impl Fn(&std::path::Path) -> PathBuf) -> anyhow::Result<MailConfig> {
        if self.host.is_empty() || self.port == 0 {
            anyhow::bail!("[mail] host and port are required");
        }
        let from: Mailbox = self
            .from
            .parse()
            .map_err(|e| anyhow::anyhow!("[mail] from {:?} is not an address: {e}", self.from))?;
        let credentials = match (&self.username, &self.password_file) {
            (Some(user), Some(file)) => {
                Some((user.clone(), crate::config::read_secret_string(&at(file))?))
            }
            (None, None) => None,
            _ => anyhow::bail!("[mail] username and password_file go together"),
        };
        Ok(MailConfig {
            host: self.host.clone(),
            port: self.port,
            tls: self.tls,
            from,
            credentials,
        })
    }
}

/// The delay before attempt `attempts + 1` of a mail that failed `attempts` times.
pub fn retry_delay(attempts: u64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16) as u32;
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

/// Sends mail through the relay of `[mail]`.
pub struct Mailer {
    config: MailConfig,
    outbound: Outbound,
}

impl Mailer {
    /// A mailer for `config` reaching the relay through `outbound`.
    pub fn new(config: MailConfig, outbound: Outbound) -> Mailer {
        Mailer { config, outbound }
    }

    /// Sends one mail to `to`; the error says what failed (never a credential).
    pub async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), String> {
        let to: Mailbox = to
            .parse()
            .map_err(|e| format!("the recipient is not an address: {e}"))?;
        let message = Message::builder()
            .from(self.config.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_owned())
            .map_err(|e| format!("building the message: {e}"))?;
        match tokio::time::timeout(SESSION_TIMEOUT, self.session(&message)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "the SMTP session took longer than {}s",
                SESSION_TIMEOUT.as_secs()
            )),
        }
    }

    async fn session(&self, message: &Message) -> Result<(), String> {
        let c = &self.config;
        let tcp = self
            .outbound
            .connect(&c.host, c.port)
            .await
            .map_err(|e| e.to_string())?;
        let hello = ClientId::Domain("vaultvec".into());
        let smtp_error = |what: &str, e: lettre::transport::smtp::Error| format!("{what}: {e}");
        let mut conn = match c.tls {
            MailTls::Implicit => {
                let name = rustls_pki_types::ServerName::try_from(c.host.clone())
                    .map_err(|e| format!("{:?} is not a TLS server name: {e}", c.host))?;
                let tls = tokio_rustls::TlsConnector::from(self.outbound.tls_config())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with the relay: {e}"))?;
                AsyncSmtpConnection::connect_with_transport(Box::new(Smtps(tls)), &hello)
                    .await
                    .map_err(|e| smtp_error("greeting", e))?
            }
            MailTls::Starttls => {
                let mut conn = AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &hello)
                    .await
                    .map_err(|e| smtp_error("greeting", e))?;
                if !conn.can_starttls() {
                    conn.abort().await;
                    return Err("the relay does not offer STARTTLS; nothing was sent".into());
                }
                let mut params = TlsParameters::builder(c.host.clone());
                if let Some(pem) = self.outbound.ca_pem() {
                    let cert = Certificate::from_pem(pem)
                        .map_err(|e| format!("[outbound] ca_file: {e}"))?;
                    params = params.add_root_certificate(cert);
                }
                let params = params
                    .build_rustls()
                    .map_err(|e| smtp_error("TLS parameters", e))?;
                conn.starttls(params, &hello)
                    .await
                    .map_err(|e| smtp_error("STARTTLS", e))?;
                conn
            }
        };
        if let Some((user, password)) = &c.credentials {
            let credentials = Credentials::new(user.clone(), password.to_string());
            conn.auth(&[Mechanism::Plain, Mechanism::Login], &credentials)
                .await
                .map_err(|e| smtp_error("authentication", e))?;
        }
        conn.send(message.envelope(), &message.formatted())
            .await
            .map_err(|e| smtp_error("sending", e))?;
        let _ = conn.quit().await;
        Ok(())
    }
}

/// A relay connection over implicit TLS, as lettre takes one.
#[derive(Debug)]
struct Smtps(tokio_rustls::client::TlsStream<tokio::net::TcpStream>);

impl AsyncRead for Smtps {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Smtps {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for Smtps {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

/// The mailer a service sends with, if `[mail]` is configured.
pub type SharedMailer = Option<Arc<Mailer>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_longer_each_time_up_to_an_hour() {
        assert_eq!(retry_delay(1), Duration::from_secs(60));
        assert_eq!(retry_delay(2), Duration::from_secs(120));
        assert_eq!(retry_delay(3), Duration::from_secs(240));
        assert_eq!(retry_delay(7), Duration::from_secs(3600));
        assert_eq!(retry_delay(u64::MAX), Duration::from_secs(3600));
    }

    #[tokio::test]
    async fn a_relay_on_a_private_address_is_refused_before_anything_is_sent() {
        let outbound = Outbound::new(&crate::outbound::OutboundConfig::default()).unwrap();
        for host in ["127.0.0.1", "10.0.0.1", "169.254.169.254", "[::1]"] {
            let config = MailConfig {
                host: host.trim_matches(['[', ']']).into(),
                port: 25,
                tls: MailTls::Starttls,
                from: "ops@vaultvec.test".parse().unwrap(),
                credentials: None,
            };
            let err = Mailer::new(config, outbound.clone())
                .send("someone@example.com", "subject", "body")
                .await
                .unwrap_err();
            assert!(err.contains("refused"), "{host}: {err}");
        }
    }

    #[test]
    fn a_half_given_login_and_a_bad_sender_are_refused() {
        let raw: RawMail = toml::from_str(
            "host = \"smtp.example.com\"\nport = 587\ntls = \"starttls\"\nfrom = \"not an address\"",
        )
        .unwrap();
        assert!(raw.resolve(|p| p.to_owned()).is_err());
        let raw: RawMail = toml::from_str(
            "host = \"smtp.example.com\"\nport = 587\ntls = \"starttls\"\nfrom = \"a@b.example\"\nusername = \"u\"",
        )
        .unwrap();
        let err = raw.resolve(|p| p.to_owned()).unwrap_err().to_string();
        assert!(err.contains("go together"), "{err}");
        assert!(
            toml::from_str::<RawMail>("host = \"h\"\nport = 1\ntls = \"none\"\nfrom = \"a@b.c\"")
                .is_err()
        );
    }
}
