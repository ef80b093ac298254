//! A TCP proxy on a free 127.0.0.1 port that breaks connections on demand, for tests of what a
//! broken network does to a run: [`FaultProxy::drop_all`] closes every connection at once (the
//! peers see it end), [`FaultProxy::stall_existing`] stops forwarding on the connections open
//! now while new ones still pass (a half-open link: nobody sees it end), and
//! [`FaultProxy::set_downstream_rate`] slows what flows from the server to the client, so that
//! a transfer can be broken half-way.
//!
//! Threads, not tasks, so that it works beside any runtime or none. Dropping the proxy closes
//! everything and stops its threads.

use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One proxied connection: both sockets, so that it can be closed from outside, and whether it
/// is stalled.
#[derive(Debug)]
struct Link {
    client: TcpStream,
    server: TcpStream,
    stalled: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct Shared {
    links: Mutex<Vec<Link>>,
    stopping: AtomicBool,
    /// Bytes per second from the server to the client; 0 for no limit.
    downstream_rate: AtomicU64,
    downstream_bytes: AtomicU64,
    accepted: AtomicU64,
}

/// A running proxy to one upstream address.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to `upstream`.
    ///
    /// # Errors
    /// When no port can be bound.
    pub fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("fault-proxy-accept".into())
                .spawn(move || accept(&listener, upstream, &shared))?
        };
        Ok(Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every open connection, both ways, at once.
    pub fn drop_all(&self) {
        for link in self.links().drain(..) {
            link.client.shutdown(Shutdown::Both).ok();
            link.server.shutdown(Shutdown::Both).ok();
            // Its pumps wake, meet the closed sockets and end.
            link.stalled.store(false, Ordering::SeqCst);
        }
    }

    /// Stops forwarding on every connection open now, without closing it: bytes sent either
    /// way are held, and neither peer learns that the link is dead. Connections made later pass.
    pub fn stall_existing(&self) {
        for link in self.links().iter() {
            link.stalled.store(true, Ordering::SeqCst);
        }
    }

    /// Limits what flows from the server to the client to `bytes_per_second` (`None`: no limit).
    pub fn set_downstream_rate(&self, bytes_per_second: Option<u64>) {
        self.shared
            .downstream_rate
            .store(bytes_per_second.unwrap_or(0), Ordering::SeqCst);
    }

    /// Bytes forwarded from the server to the client so far, on every connection.
    pub fn downstream_bytes(&self) -> u64 {
        self.shared.downstream_bytes.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Vec<Link>> {
        self.shared
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.drop_all();
        // Wake the acceptor so that it sees `stopping`.
        TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok();
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().ok();
        }
    }
}

fn accept(listener: &TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
            client.shutdown(Shutdown::Both).ok();
            continue;
        };
        client.set_nodelay(true).ok();
        server.set_nodelay(true).ok();
        let stalled = Arc::new(AtomicBool::new(false));
        let (Ok(client_read), Ok(server_write), Ok(server_read), Ok(client_write)) = (
            client.try_clone(),
            server.try_clone(),
            server.try_clone(),
            client.try_clone(),
        ) else {
            continue;
        };
        for (from, to, downstream) in [
            (client_read, server_write, false),
            (server_read, client_write, true),
        ] {
            let shared = shared.clone();
            let stalled = stalled.clone();
            std::thread::Builder::new()
                .name("fault-proxy-pump".into())
                .spawn(move || pump(from, to, downstream, &stalled, &shared))
                .ok();
        }
        shared
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Link {
                client,
                server,
                stalled,
            });
    }
}

/// Copies `from` to `to` until either ends, holding bytes while the link is stalled.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    downstream: bool,
    stalled: &AtomicBool,
    shared: &Shared,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    let started = Instant::now();
    let mut sent_limited: u64 = 0;
    loop {
        if stalled.load(Ordering::SeqCst) {
            // Neither read nor write: the kernel buffers fill and the peers just wait.
            if shared.stopping.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        while stalled.load(Ordering::SeqCst) && !shared.stopping.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if downstream {
            let rate = shared.downstream_rate.load(Ordering::SeqCst);
            if rate > 0 {
                sent_limited += read as u64;
                let due = Duration::from_secs_f64(sent_limited as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            shared
                .downstream_bytes
                .fetch_add(read as u64, Ordering::SeqCst);
        }
        if to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    from.shutdown(Shutdown::Both).ok();
    to.shutdown(Shutdown::Both).ok();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handle = std::thread::spawn(move || {
            for stream in listener.incoming().take(3) {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 1024];
                    while let Ok(read) = stream.read(&mut buffer) {
                        if read == 0 || stream.write_all(&buffer[..read]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, handle)
    }

    fn round_trip(stream: &mut TcpStream, text: &[u8]) -> io::Result<Vec<u8>> {
        stream.write_all(text)?;
        let mut back = vec![0u8; text.len()];
        stream.read_exact(&mut back)?;
        Ok(back)
    }

    #[test]
    fn forwards_then_stalls_old_links_then_drops_them() {
        let (upstream, _server) = echo_server();
        let proxy = FaultProxy::start(upstream).expect("proxy");
        let mut old = TcpStream::connect(proxy.addr()).expect("connect");
        old.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        assert_eq!(round_trip(&mut old, b"hello").expect("echo"), b"hello");

        proxy.stall_existing();
        assert!(
            round_trip(&mut old, b"again").is_err(),
            "a stalled link passes nothing"
        );
        let mut new = TcpStream::connect(proxy.addr()).expect("connect");
        new.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(round_trip(&mut new, b"fresh").expect("echo"), b"fresh");

        proxy.drop_all();
        let mut rest = Vec::new();
        new.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(new.read_to_end(&mut rest).map(|_| ()).ok(), Some(()));
        assert!(rest.is_empty(), "a dropped link ends");
        assert_eq!(proxy.accepted(), 2);
        assert!(proxy.downstream_bytes() >= 10);
    }
}
