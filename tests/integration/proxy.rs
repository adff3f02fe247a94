//! A TCP proxy under the test's control, between the coordinator and a supplier: it passes
//! bytes, refuses and cuts connections (a network cut), holds bytes without forwarding them
//! and releases them later (a black hole that recovers), holds only the answers (requests reach
//! the supplier, which acts on them, but nothing comes back), drops the connections open (with
//! whatever they hold: an answer lost on the way back), or delays every chunk (a slow link).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Refuse new connections and cut the open ones.
    Cut,
    /// Accept and hold bytes without forwarding them, until the mode changes.
    BlackHole,
    /// Forward what the client sends; hold what the server answers, until the mode changes.
    HoldAnswers,
    /// Forward every chunk after this delay.
    Slow(Duration),
}

/// A running proxy.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// The connections open (their tasks).
    open: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let (mode, rx) = watch::channel(Mode::Pass);
        let open = Arc::new(Mutex::new(Vec::new()));
        let connections = open.clone();
        tokio::spawn(async move {
            let open = connections;
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *rx.borrow() == Mode::Cut {
                    drop(client);
                    continue;
                }
                let rx = rx.clone();
                let task = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pipe(cr, sw, rx.clone(), false), pipe(sr, cw, rx, true));
                });
                let mut open = open.lock().expect("connections");
                open.retain(|t: &tokio::task::AbortHandle| !t.is_finished());
                open.push(task.abort_handle());
            }
        });
        Proxy { addr, mode, open }
    }

    /// Closes every connection open now, dropping whatever bytes they hold (an answer held by
    /// [`Mode::HoldAnswers`] is lost); new connections go through in the current mode.
    pub fn drop_connections(&self) {
        for task in self.open.lock().expect("connections").drain(..) {
            task.abort();
        }
    }

    /// Changes what the proxy does, at once, for open connections too.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

/// Copies one direction (`answers`: from the server to the client), obeying the mode.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    answers: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = mode.wait_for(|m| *m == Mode::Cut) => return,
        };
        // Hold the bytes while the link is a black hole; forward them when it recovers.
        loop {
            let current = *mode.borrow();
            match current {
                Mode::Cut => return,
                Mode::BlackHole => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                Mode::HoldAnswers if answers => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                Mode::HoldAnswers => break,
                Mode::Slow(delay) => {
                    tokio::time::sleep(delay).await;
                    break;
                }
                Mode::Pass => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
