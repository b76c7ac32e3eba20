//! A TCP proxy in front of a backend server that breaks one connection the moment a chosen
//! statement passes (the way to make "the connection dropped mid-operation" happen on cue), or
//! plays the server being down: every broker's tests put their backend behind one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What happens to the connection that sends the armed statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The statement reaches the server and runs, but its answer never comes back: the
    /// connection closes instead.
    Cut,
    /// The statement is never forwarded and the connection stays open: the caller hangs.
    Hold,
    /// The statement is never forwarded and the connection closes.
    Drop,
}

/// The statement patterns waited for, in order, and what to do when each passes.
type Armed = Arc<Mutex<VecDeque<(Vec<u8>, Action)>>>;

pub struct Proxy {
    pub port: u16,
    armed: Armed,
    fired: Arc<Mutex<usize>>,
    accept: JoinHandle<()>,
    down: Arc<AtomicBool>,
    relays: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed: Armed = Arc::default();
        let fired: Arc<Mutex<usize>> = Arc::default();
        let down = Arc::new(AtomicBool::new(false));
        let relays: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (a, f, d, r) = (armed.clone(), fired.clone(), down.clone(), relays.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    // Down: the connection is closed at once, as by a stopped server's host.
                    continue;
                }
                let handle = tokio::spawn(relay(client, upstream, a.clone(), f.clone()));
                let mut relays = r.lock().unwrap();
                relays.retain(|h| !h.is_finished());
                relays.push(handle);
            }
        });
        Self {
            port,
            armed,
            fired,
            accept,
            down,
            relays,
        }
    }

    /// Down: every open connection is cut and new ones are closed at once, as if the server
    /// had stopped; up again: connections pass as before.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            for relay in self.relays.lock().unwrap().drain(..) {
                relay.abort();
            }
        }
    }

    /// The next statement holding `pattern` (on any connection) gets `action`, once; patterns
    /// armed one after another are waited for in turn.
    pub fn arm(&self, pattern: &str, action: Action) {
        self.armed
            .lock()
            .unwrap()
            .push_back((pattern.as_bytes().to_vec(), action));
    }

    /// How many armed statements have passed.
    pub fn fired(&self) -> usize {
        *self.fired.lock().unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(client: TcpStream, upstream: u16, armed: Armed, fired: Arc<Mutex<usize>>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    // Set when the armed statement passes: the server's answer to it must not reach the client.
    let mute = Arc::new(AtomicBool::new(false));
    let muted = mute.clone();
    // Told when that answer came (and was swallowed): the statement has run.
    let answered = Arc::new(tokio::sync::Notify::new());
    let answer = answered.clone();
    let back = AbortOnDrop(tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from_server.read(&mut buf).await {
            if n > 0 && muted.load(Ordering::SeqCst) {
                answer.notify_one();
                break;
            }
            if n == 0 || to_client.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        // Holds the client's write half open until the relay ends.
        std::future::pending::<()>().await;
    }));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from_client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let action = {
            let mut armed = armed.lock().unwrap();
            let hit = armed.front().is_some_and(|(pattern, _)| {
                buf[..n]
                    .windows(pattern.len())
                    .any(|w| w == pattern.as_slice())
            });
            if hit {
                armed.pop_front().map(|(_, a)| a)
            } else {
                None
            }
        };
        match action {
            None => {
                if to_server.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            Some(Action::Cut) => {
                mute.store(true, Ordering::SeqCst);
                let _ = to_server.write_all(&buf[..n]).await;
                // Until the server has run it (its answer came), then both ends close. A
                // statement that waits on a lock is cut after a while all the same.
                let _ = tokio::time::timeout(Duration::from_secs(10), answered.notified()).await;
                *fired.lock().unwrap() += 1;
                drop(back);
                return;
            }
            Some(Action::Drop) => {
                mute.store(true, Ordering::SeqCst);
                *fired.lock().unwrap() += 1;
                drop(back);
                return;
            }
            Some(Action::Hold) => {
                *fired.lock().unwrap() += 1;
                std::future::pending::<()>().await;
            }
        }
    }
    drop(back);
}

/// The server-to-client half of a relay: it ends with the relay, however that ends (an abort
/// included).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
