//! The outbound guard (INV-16) against a real HTTPS server on loopback: an allowed host is
//! reached over verified TLS; a redirect is refused, not followed; an oversized answer is cut
//! off; the same server by address, on another port, without the allowance or over plain http
//! is refused with no connection made; without the test CA the TLS check fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use coordinator::outbound::{MAX_ANSWER_BYTES, Outbound, OutboundConfig, OutboundError};
use rustls_pki_types::pem::PemObject as _;
use tests::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Server {
    port: u16,
    connections: Arc<AtomicUsize>,
    ca_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// An HTTPS server on 127.0.0.1 (certificate for `localhost` and `127.0.0.1` from a test CA)
/// answering `/ok`, `/redirect`, `/big` (a declared length over the bound) and `/stream` (a
/// chunked answer over the bound).
async fn server() -> Server {
    let ca = TestCa::new("outbound test CA");
    let (cert_pem, key_pem) = ca.server_cert();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    ca.write_cert(&ca_file);
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let big = vec![b'x'; MAX_ANSWER_BYTES + 1];
                let _ = match path.as_str() {
                    "/ok" => {
                        tls.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await
                    }
                    "/redirect" => {
                        let answer = format!(
                            "HTTP/1.1 302 Found\r\nlocation: https://localhost:{port}/ok\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        );
                        tls.write_all(answer.as_bytes()).await
                    }
                    "/big" => {
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            big.len()
                        );
                        let _ = tls.write_all(answer.as_bytes()).await;
                        tls.write_all(&big).await
                    }
                    _ => {
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
                            .await;
                        for piece in big.chunks(64 * 1024) {
                            let size = format!("{:x}\r\n", piece.len());
                            if tls.write_all(size.as_bytes()).await.is_err()
                                || tls.write_all(piece).await.is_err()
                                || tls.write_all(b"\r\n").await.is_err()
                            {
                                return;
                            }
                        }
                        tls.write_all(b"0\r\n\r\n").await
                    }
                };
                let _ = tls.shutdown().await;
            });
        }
    });
    Server {
        port,
        connections,
        ca_file,
        _dir: dir,
    }
}

async fn get(out: &Outbound, url: &str) -> Result<coordinator::outbound::Answer, OutboundError> {
    let request = out.http().get(url).build().unwrap();
    out.send(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_host_is_reached_over_verified_tls_and_nothing_else_is() {
    let server = server().await;
    let port = server.port;
    let allowed = Outbound::new(&OutboundConfig {
        allow_hosts: vec![format!("localhost:{port}")],
        ca_file: Some(server.ca_file.clone()),
    })
    .unwrap();

    let answer = get(&allowed, &format!("https://localhost:{port}/ok"))
        .await
        .unwrap();
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"ok"[..]));

    let err = get(&allowed, &format!("https://localhost:{port}/redirect"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, OutboundError::Refused(m) if m.contains("redirect")),
        "{err}"
    );
    for path in ["/big", "/stream"] {
        let err = get(&allowed, &format!("https://localhost:{port}{path}"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, OutboundError::Failed(m) if m.contains("over")),
            "{path}: {err}"
        );
    }

    // Refused without a connection: by address, on another port, over http, unallowed.
    let before = server.connections.load(Ordering::SeqCst);
    for url in [
        format!("https://127.0.0.1:{port}/ok"),
        format!("https://[::1]:{port}/ok"),
        format!("https://localhost:{}/ok", port.wrapping_add(1)),
        format!("http://localhost:{port}/ok"),
    ] {
        let err = get(&allowed, &url).await.unwrap_err();
        assert!(matches!(err, OutboundError::Refused(_)), "{url}: {err}");
    }
    let unallowed = Outbound::new(&OutboundConfig {
        allow_hosts: Vec::new(),
        ca_file: Some(server.ca_file.clone()),
    })
    .unwrap();
    let err = get(&unallowed, &format!("https://localhost:{port}/ok"))
        .await
        .unwrap_err();
    assert!(matches!(err, OutboundError::Refused(_)), "{err}");
    let err = unallowed.connect("localhost", port).await.unwrap_err();
    assert!(matches!(err, OutboundError::Refused(_)), "{err}");
    assert_eq!(server.connections.load(Ordering::SeqCst), before);

    // Allowed, but without the test CA: the certificate does not verify.
    let untrusting = Outbound::new(&OutboundConfig {
        allow_hosts: vec![format!("localhost:{port}")],
        ca_file: None,
    })
    .unwrap();
    let err = get(&untrusting, &format!("https://localhost:{port}/ok"))
        .await
        .unwrap_err();
    assert!(matches!(err, OutboundError::Failed(_)), "{err}");
}
