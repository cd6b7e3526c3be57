//! TLS for `wss://` coordinator URLs: rustls with the ring provider, roots from `ca_file` or, when
//! it is absent, from the platform's certificate store. Certificate verification is never turned
//! off: the coordinator's certificate must chain to a trusted root and name the host in
//! `coordinator_url` (a DNS name or an IP address).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The client configuration for dialing a `wss://` coordinator.
pub(crate) fn client_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<ClientConfig>> {
    let roots = match ca_file {
        Some(path) => roots_from_file(path)?,
        None => native_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn roots_from_file(path: &Path) -> anyhow::Result<RootCertStore> {
    let pem = std::fs::read(path).with_context(|| format!("reading ca_file {}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.with_context(|| {
            format!("ca_file {} is not a PEM certificate bundle", path.display())
        })?;
        roots.add(cert).with_context(|| {
            format!(
                "ca_file {}: a certificate is not a usable root",
                path.display()
            )
        })?;
    }
    if roots.is_empty() {
        bail!("ca_file {} holds no PEM CERTIFICATE block", path.display());
    }
    Ok(roots)
}

fn native_roots() -> anyhow::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    for err in &found.errors {
        tracing::warn!(error = %err, "reading the system's root certificates");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::warn!(ignored, "unusable system root certificates were skipped");
    }
    if added == 0 {
        bail!(
            "coordinator_url is wss:// without ca_file, and no root certificate was found on this \
             system; set ca_file to the PEM file of the CA that signed the coordinator's \
             [cluster_tls] certificate"
        );
    }
    Ok(roots)
}
