//! A TCP relay that can cut a link without closing it: [`Link::cut`] stops moving bytes both
//! ways and keeps both sockets open (a network partition, not a crash: neither end sees a close,
//! only silence), and [`Link::heal`] closes what was held (both ends' sockets had gone silent and
//! their peers have given up on them) and relays new connections again.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A relay from a loopback port to `target`.
pub struct Link {
    addr: SocketAddr,
    /// `true` while cut; every change also ends the connections relayed before it.
    state: watch::Sender<(bool, u64)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(mut client: TcpStream, target: SocketAddr, mut state: watch::Receiver<(bool, u64)>) {
    let born = state.borrow().1;
    // A connection that arrives while the link is cut waits, unanswered, for the heal, and is
    // then closed: the dialer sees a timeout or a close, never the far end.
    while state.borrow().0 {
        if state.changed().await.is_err() {
            return;
        }
    }
    if state.borrow().1 != born {
        return;
    }
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let (mut up, mut down) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        tokio::select! {
            n = cr.read(&mut up) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if sw.write_all(&up[..n]).await.is_err() { return },
            },
            n = sr.read(&mut down) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if cw.write_all(&down[..n]).await.is_err() { return },
            },
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                if state.borrow().0 {
                    // Cut: hold both sockets open and silent until the heal, then close them.
                    while state.borrow().0 {
                        if state.changed().await.is_err() {
                            return;
                        }
                    }
                    return;
                }
            }
        }
    }
}

impl Link {
    /// Starts relaying `127.0.0.1:<port>` to `target`.
    pub async fn start(target: SocketAddr) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the relay");
        let addr = listener.local_addr().expect("relay address");
        let (state, _) = watch::channel((false, 0u64));
        let rx = state.subscribe();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, target, rx.clone()));
            }
        });
        Link { addr, state, task }
    }

    /// Where to connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops relaying: bytes stop both ways, sockets stay open.
    pub fn cut(&self) {
        self.state.send_modify(|(cut, generation)| {
            *cut = true;
            *generation += 1;
        });
    }

    /// Closes the connections held since the cut and relays new ones again.
    pub fn heal(&self) {
        self.state.send_modify(|(cut, generation)| {
            *cut = false;
            *generation += 1;
        });
    }
}
