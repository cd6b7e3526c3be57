//! Limits on the public listeners that hold before any request is parsed (INV-22): at most
//! `max_connections` open connections per listener (beyond them the listener stops accepting and
//! the kernel's backlog holds the rest), and an idle timeout on every connection: one that moves
//! no byte in either direction for `idle` is closed, so a client that sends half a request line,
//! or stops reading its answers, cannot hold a connection and its buffers forever.

use std::io;
use std::net::SocketAddr;
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

/// A TCP listener that holds at most a fixed number of connections and closes idle ones.
pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    idle: Duration,
}

impl LimitedListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener, max_connections: usize, idle: Duration) -> LimitedListener {
        LimitedListener {
            inner,
            permits: Arc::new(Semaphore::new(max_connections)),
            idle,
        }
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
                    if let Err(err) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %err, "setting TCP_NODELAY failed");
                    }
                    return (LimitedStream::new(tcp, permit, self.idle), addr);
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

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (LimitedStream, SocketAddr) {
        self.accept_limited().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// One accepted connection: holds its listener's permit until dropped, and fails with
/// `TimedOut` when no byte moved for the idle time while the server waited on it.
pub struct LimitedStream {
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl LimitedStream {
    fn new(tcp: TcpStream, permit: OwnedSemaphorePermit, idle: Duration) -> LimitedStream {
        LimitedStream {
            tcp,
            _permit: permit,
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
}
