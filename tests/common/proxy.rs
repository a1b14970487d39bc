//! A TCP proxy of the test's own, between the service and a server, that can black-hole the
//! traffic: from [`Proxy::black_hole`] on nothing passes — bytes are neither read nor
//! forwarded, connections stay open and new ones are accepted, nothing is closed or reset — as
//! behind a firewall or NAT dropping packets, or in front of a database that failed over.
//! [`Proxy::restore`] lets new connections through again; the ones open during the outage stay
//! swallowed for good, as after a NAT forgot them, so only a client that gives a silent
//! connection up and makes a new one gets through.
//!
//! It runs on a thread and runtime of its own, so that a test blocking its own thread (waiting
//! for a log line) does not stop the traffic.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// Whether traffic passes, and which connections may carry it.
#[derive(Debug, Clone, Copy, Default)]
struct State {
    blocked: bool,
    /// Bumped by every black hole and restore: a connection carries traffic only while the
    /// state it was accepted in lasts.
    generation: u64,
}

impl State {
    fn passes(&self, generation: u64) -> bool {
        !self.blocked && self.generation == generation
    }
}

pub struct Proxy {
    port: u16,
    state: watch::Sender<State>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("proxy address").port();
        let (state, watcher) = watch::channel(State::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("proxy listener");
                let accepting = async {
                    while let Ok((client, _)) = listener.accept().await {
                        tokio::spawn(serve(client, upstream, watcher.clone()));
                    }
                };
                tokio::select! {
                    () = accepting => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime ends every connection's task and closes its sockets.
        });
        Proxy {
            port,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// From now on nothing passes, on open connections or new ones.
    pub fn black_hole(&self) {
        self.state.send_modify(|s| {
            s.blocked = true;
            s.generation += 1;
        });
    }

    /// New connections pass again; those open until now stay swallowed.
    pub fn restore(&self) {
        self.state.send_modify(|s| {
            s.blocked = false;
            s.generation += 1;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Forwards one connection both ways while the state it was accepted in lasts, then holds it
/// open, silent, until the proxy stops.
async fn serve(client: TcpStream, upstream: SocketAddr, state: watch::Receiver<State>) {
    let generation = state.borrow().generation;
    if !state.borrow().passes(generation) {
        hold(client).await;
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        // Refused upstream: the client sees its connection closed, as with no proxy.
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pipe(client_read, server_write, state.clone(), generation),
        pipe(server_read, client_write, state, generation),
    );
}

/// Copies `from` to `to` until `from` ends, or until the connection is black-holed: then
/// neither is read, written or closed again.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut state: watch::Receiver<State>,
    generation: u64,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = state.wait_for(|s| !s.passes(generation)) => break,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Bytes read as the black hole opened are swallowed with the rest.
        if !state.borrow().passes(generation) {
            break;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
    hold((from, to)).await;
}

/// Keeps sockets open and unread until the proxy stops.
async fn hold<T>(sockets: T) {
    std::future::pending::<()>().await;
    drop(sockets);
}
