//! A TCP proxy of the test's own, between a client and a server, that can disturb the traffic
//! two ways:
//!
//! - [`Proxy::black_hole`]: nothing passes — bytes are neither read nor forwarded, connections
//!   stay open and new ones are accepted, nothing is closed or reset — as behind a firewall or
//!   NAT dropping packets, or in front of a database that failed over.
//! - [`Proxy::drop_answers`]: the client's requests reach the server, but the server's answers
//!   are read and thrown away, as when the way back is lost: the server did what it was asked
//!   and the client, hearing nothing, times out and asks again.
//!
//! [`Proxy::restore`] lets new connections through again. The ones a black hole reached stay
//! swallowed for good, as after a NAT forgot them; the ones whose answers were dropped stay
//! deaf for good (a stream cut mid-answer cannot be resumed). So only a client that gives a
//! silent connection up and makes a new one gets through.
//!
//! It runs on a thread and runtime of its own, so that a test blocking its own thread (waiting
//! for a log line) does not stop the traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// What the proxy does to the traffic from now on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Mode {
    #[default]
    Pass,
    BlackHole,
    DropAnswers,
}

/// The mode, and how many times each disturbance began: a connection open when one began is
/// marked by it for good, however soon the proxy is restored.
#[derive(Debug, Clone, Copy, Default)]
struct State {
    mode: Mode,
    black_holes: u64,
    answer_drops: u64,
}

/// What becomes of the bytes of one direction of a connection; each step only ever moves
/// forward, from passing to dropping to swallowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    /// Forwarded.
    Pass,
    /// Read and thrown away.
    Drop,
    /// Neither read nor forwarded.
    Swallow,
}

/// The direction of a connection's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Requests,
    Answers,
}

/// The state a connection was accepted in, against which later changes are told.
#[derive(Debug, Clone, Copy)]
struct Accepted(State);

impl Accepted {
    fn fate(&self, now: &State, direction: Direction) -> Fate {
        let accepted = &self.0;
        if now.mode == Mode::BlackHole || now.black_holes > accepted.black_holes {
            Fate::Swallow
        } else if direction == Direction::Answers
            && (accepted.mode == Mode::DropAnswers
                || now.mode == Mode::DropAnswers
                || now.answer_drops > accepted.answer_drops)
        {
            Fate::Drop
        } else {
            Fate::Pass
        }
    }
}

pub struct Proxy {
    port: u16,
    state: watch::Sender<State>,
    /// Bytes of answers read and thrown away, so that a test can tell the disturbance reached
    /// the traffic.
    dropped: Arc<AtomicU64>,
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
        let dropped = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn({
            let dropped = dropped.clone();
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("proxy listener");
                    let accepting = async {
                        while let Ok((client, _)) = listener.accept().await {
                            tokio::spawn(serve(client, upstream, watcher.clone(), dropped.clone()));
                        }
                    };
                    tokio::select! {
                        () = accepting => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime ends every connection's task and closes its sockets.
            }
        });
        Proxy {
            port,
            state,
            dropped,
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
            s.mode = Mode::BlackHole;
            s.black_holes += 1;
        });
    }

    /// From now on requests pass but answers are thrown away, on open connections and new
    /// ones.
    pub fn drop_answers(&self) {
        self.state.send_modify(|s| {
            s.mode = Mode::DropAnswers;
            s.answer_drops += 1;
        });
    }

    /// New connections pass again; those open until now stay swallowed or deaf.
    pub fn restore(&self) {
        self.state.send_modify(|s| s.mode = Mode::Pass);
    }

    /// Bytes of answers thrown away so far.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
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

/// Forwards one connection both ways as the proxy's state allows, then holds it open, silent,
/// until the proxy stops.
async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    state: watch::Receiver<State>,
    dropped: Arc<AtomicU64>,
) {
    let accepted = Accepted(*state.borrow());
    if accepted.0.mode == Mode::BlackHole {
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
        pipe(
            (client_read, server_write),
            state.clone(),
            accepted,
            Direction::Requests,
            dropped.clone(),
        ),
        pipe(
            (server_read, client_write),
            state,
            accepted,
            Direction::Answers,
            dropped,
        ),
    );
}

/// Copies `from` to `to` until `from` ends, throwing the bytes away instead once their fate
/// is to be dropped; once it is to be swallowed, neither is read, written or closed again.
async fn pipe(
    (mut from, mut to): (OwnedReadHalf, OwnedWriteHalf),
    mut state: watch::Receiver<State>,
    accepted: Accepted,
    direction: Direction,
    dropped: Arc<AtomicU64>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut fate = accepted.fate(&state.borrow(), direction);
    while fate != Fate::Swallow {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = state.wait_for(|s| accepted.fate(s, direction) != fate) => {
                fate = match changed {
                    Ok(now) => accepted.fate(&now, direction),
                    Err(_) => Fate::Swallow,
                };
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Bytes read as a disturbance began share the fate of those after them.
        fate = fate.max(accepted.fate(&state.borrow(), direction));
        match fate {
            Fate::Pass => {
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
            Fate::Drop => {
                dropped.fetch_add(n as u64, Ordering::Relaxed);
            }
            Fate::Swallow => {}
        }
    }
    hold((from, to)).await;
}

/// Keeps sockets open and unread until the proxy stops.
async fn hold<T>(sockets: T) {
    std::future::pending::<()>().await;
    drop(sockets);
}
