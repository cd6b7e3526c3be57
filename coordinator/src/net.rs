//! Limits on the public listeners that hold before any request is parsed (INV-22): at most
//! `max_connections` open connections per listener (beyond them the listener stops accepting and
//! the kernel's backlog holds the rest), and an idle timeout on every connection: one that moves
//! no byte in either direction for `idle` is closed, so a client that sends half a request line,
//! or stops reading its answers, cannot hold a connection and its buffers forever.
//!
//! One client address holds at most `per_address` of the listener's connections (IPv6 clients
//! per /64; trusted proxies, which carry many clients, are exempt), so no single client can take
//! every slot. The HTTP listener ([`serve_http`]) also bounds the time a request's head may take
//! ([`HEADER_READ_TIMEOUT`]): a client that trickles a header byte at a time, which would keep
//! the idle timer from ever firing, is closed once the head is late.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Connections each public listener keeps open at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// An HTTP connection that moves no byte for this long is closed (keep-alive included).
pub const HTTP_IDLE: Duration = Duration::from_secs(60);
/// A gRPC connection that moves no byte for this long is closed; the server's HTTP/2 pings every
/// [`GRPC_KEEPALIVE`] keep a live client's connection busy.
pub const GRPC_IDLE: Duration = Duration::from_secs(300);
/// Interval of the gRPC server's HTTP/2 keep-alive pings.
pub const GRPC_KEEPALIVE: Duration = Duration::from_secs(60);
/// Connections one client address (an IPv6 /64) may hold on a listener.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
/// Time an HTTP request's line and headers may take to arrive, from the first byte of the
/// request (or from the connection's start).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest number of header fields in an HTTP request.
pub const MAX_HEADERS: usize = 64;
/// Largest read buffer of an HTTP connection, which bounds a request's line and headers.
pub const MAX_HTTP_BUFFER: usize = 64 * 1024;

/// Open connections per client address, shared by a listener and its streams.
#[derive(Default)]
struct PerAddress {
    open: parking_lot::Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// Counts a connection from `ip`, unless `ip` already holds `max`.
    fn admit(&self, ip: IpAddr, max: usize) -> bool {
        let mut open = self.open.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, ip: IpAddr) {
        let mut open = self.open.lock();
        if let Some(n) = open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }
}

/// A connection's share of its address's count, returned when the connection closes.
struct AddressSlot {
    counts: Arc<PerAddress>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.counts.release(self.ip);
    }
}

/// A TCP listener that holds at most a fixed number of connections and closes idle ones.
pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    idle: Duration,
    per_address: usize,
    exempt: Vec<IpAddr>,
    counts: Arc<PerAddress>,
}

impl LimitedListener {
    /// Wraps a bound listener; each address may hold [`MAX_CONNECTIONS_PER_ADDRESS`].
    pub fn new(inner: TcpListener, max_connections: usize, idle: Duration) -> LimitedListener {
        LimitedListener {
            inner,
            permits: Arc::new(Semaphore::new(max_connections)),
            idle,
            per_address: MAX_CONNECTIONS_PER_ADDRESS,
            exempt: Vec::new(),
            counts: Arc::default(),
        }
    }

    /// Sets the connections one address may hold, and the addresses (trusted proxies) exempt
    /// from that bound.
    pub fn per_address(mut self, max: usize, exempt: Vec<IpAddr>) -> LimitedListener {
        self.per_address = max.max(1);
        self.exempt = exempt;
        self
    }

    /// The next connection, once fewer than the maximum are open. Answers are not held back by
    /// Nagle's algorithm (TCP_NODELAY).
    pub async fn accept_limited(&mut self) -> (LimitedStream, SocketAddr) {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((tcp, addr)) => {
                    let slot = if self.exempt.contains(&addr.ip()) {
                        None
                    } else {
                        let ip = crate::api::limit::client_bucket(addr.ip());
                        if !self.counts.admit(ip, self.per_address) {
                            // Closed at once; the permit stays for the next connection.
                            tracing::debug!(%ip, "refusing a connection over the address's limit");
                            continue;
                        }
                        Some(AddressSlot {
                            counts: self.counts.clone(),
                            ip,
                        })
                    };
                    if let Err(err) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %err, "setting TCP_NODELAY failed");
                    }
                    return (LimitedStream::new(tcp, permit, slot, self.idle), addr);
                }
                // Out of file descriptors or a connection reset before accept: wait a moment
                // rather than spin.
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Connections open now (tests).
    pub fn open_connections(&self, max_connections: usize) -> usize {
        max_connections - self.permits.available_permits()
    }
}

/// One accepted connection: holds its listener's permit until dropped, and fails with
/// `TimedOut` when no byte moved for the idle time while the server waited on it.
pub struct LimitedStream {
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
    _slot: Option<AddressSlot>,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl LimitedStream {
    fn new(
        tcp: TcpStream,
        permit: OwnedSemaphorePermit,
        slot: Option<AddressSlot>,
        idle: Duration,
    ) -> LimitedStream {
        LimitedStream {
            tcp,
            _permit: permit,
            _slot: slot,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn progressed(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// `Pending` while the deadline is ahead; an error once it passed.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            Poll::Ready(res) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(res)
            }
            Poll::Pending => this.check_idle(cx),
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.tcp).poll_write(cx, buf) {
            Poll::Ready(res) => {
                this.progressed();
                Poll::Ready(res)
            }
            Poll::Pending => this.check_idle(cx).map(|r| r.map(|()| 0)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.tcp).poll_flush(cx) {
            Poll::Ready(res) => Poll::Ready(res),
            Poll::Pending => this.check_idle(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for LimitedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}

/// The connections of a listener as the stream tonic serves.
pub fn incoming(
    listener: LimitedListener,
) -> impl futures_util::Stream<Item = io::Result<LimitedStream>> {
    futures_util::stream::unfold(listener, |mut listener| async move {
        let (stream, _) = listener.accept_limited().await;
        Some((Ok(stream), listener))
    })
}

/// Serves the HTTP/1.1 API on `listener` until `stop`, then lets the open connections finish
/// their requests. Each connection gets [`HEADER_READ_TIMEOUT`] for every request head, at most
/// [`MAX_HEADERS`] header fields and a [`MAX_HTTP_BUFFER`] read buffer; handlers see the peer's
/// address as `ConnectInfo<SocketAddr>`.
pub async fn serve_http(
    mut listener: LimitedListener,
    router: axum::Router,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use tower::ServiceExt;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HTTP_BUFFER);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept_limited() => accepted,
            () = stop.cancelled() => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(addr));
                router.clone().oneshot(request.map(axum::body::Body::new))
            },
        );
        let connection =
            graceful.watch(builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A connection that sends nothing is closed after the idle time, and a listener at its
    /// limit accepts the next connection only when one closes. The clock is paused: the idle
    /// time passes without waiting.
    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed_and_open_ones_are_bounded() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = LimitedListener::new(tcp, 1, Duration::from_secs(60));
        let _quiet_client = TcpStream::connect(addr).await.unwrap();
        let (mut first, _) = listener.accept_limited().await;
        assert_eq!(listener.open_connections(1), 1);
        let _waiting_client = TcpStream::connect(addr).await.unwrap();
        {
            let mut second = std::pin::pin!(listener.accept_limited());
            assert!(futures_util::poll!(second.as_mut()).is_pending());
            let mut buf = [0u8; 16];
            let err = first.read(&mut buf).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert!(
                futures_util::poll!(second.as_mut()).is_pending(),
                "still at the limit"
            );
            drop(first);
            let (second, _) = second.await;
            drop(second);
        }
        assert_eq!(listener.open_connections(1), 0);
    }

    /// One address holds at most its share of the listener; a connection over it is closed at
    /// once, and a closed one frees its place. Exempt addresses (trusted proxies) are not counted.
    #[tokio::test]
    async fn one_address_holds_at_most_its_share_of_connections() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener =
            LimitedListener::new(tcp, 100, Duration::from_secs(60)).per_address(2, Vec::new());
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let mut refused = TcpStream::connect(addr).await.unwrap();
        let (first, _) = listener.accept_limited().await;
        let (_second, _) = listener.accept_limited().await;
        {
            // The third is accepted and closed by the listener while it waits for a fourth.
            let mut next = std::pin::pin!(listener.accept_limited());
            let mut buf = [0u8; 1];
            tokio::select! {
                _ = &mut next => panic!("a third connection from one address was admitted"),
                read = refused.read(&mut buf) => assert_eq!(read.unwrap(), 0),
            }
            drop(first);
            let _c = TcpStream::connect(addr).await.unwrap();
            let (third, _) = next.await;
            drop(third);
        }
        assert_eq!(listener.open_connections(100), 1);

        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut proxy_listener = LimitedListener::new(tcp, 100, Duration::from_secs(60))
            .per_address(1, vec![[127, 0, 0, 1].into()]);
        let _clients: Vec<TcpStream> =
            futures_util::future::join_all((0..5).map(|_| TcpStream::connect(addr)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        for _ in 0..5 {
            let _ = proxy_listener.accept_limited().await;
        }
    }

    /// A client that sends its request head one byte at a time (each byte resetting the idle
    /// timer) is closed once the head is later than the header deadline, long before the idle
    /// time. The clock is paused.
    #[tokio::test(start_paused = true)]
    async fn a_request_head_trickled_a_byte_at_a_time_is_cut_off_at_the_header_deadline() {
        use tokio::io::AsyncWriteExt;
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = LimitedListener::new(tcp, 10, HTTP_IDLE);
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(serve_http(listener, router, stop.clone()));

        // A complete request is answered.
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = client.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);

        let started = Instant::now();
        let (mut reader, mut writer) = TcpStream::connect(addr).await.unwrap().into_split();
        writer
            .write_all(b"GET / HTTP/1.1\r\nx-slow: ")
            .await
            .unwrap();
        let trickle = tokio::spawn(async move {
            for _ in 0..200 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if writer.write_all(b"a").await.is_err() {
                    return;
                }
            }
        });
        // Closed (with or without an answer) by the server, not by the idle timer.
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let took = started.elapsed();
        assert!(took >= HEADER_READ_TIMEOUT, "closed after {took:?}");
        assert!(took < HTTP_IDLE, "closed only after {took:?}");
        trickle.abort();
        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
