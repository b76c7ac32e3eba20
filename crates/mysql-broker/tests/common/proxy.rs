//! A TCP proxy in front of a MariaDB server that breaks one connection the moment a chosen
//! statement passes: the way to make "the connection dropped mid-operation" happen on cue.

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
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed: Armed = Arc::default();
        let fired: Arc<Mutex<usize>> = Arc::default();
        let (a, f) = (armed.clone(), fired.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream, a.clone(), f.clone()));
            }
        });
        Self {
            port,
            armed,
            fired,
            accept,
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
    let back = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from_server.read(&mut buf).await {
            if n == 0
                || muted.load(Ordering::SeqCst)
                || to_client.write_all(&buf[..n]).await.is_err()
            {
                break;
            }
        }
        // Holds the client's write half open until the relay ends.
        std::future::pending::<()>().await;
    });
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
                // Long enough for the server to run it; then both ends close.
                tokio::time::sleep(Duration::from_millis(300)).await;
                *fired.lock().unwrap() += 1;
                back.abort();
                return;
            }
            Some(Action::Drop) => {
                mute.store(true, Ordering::SeqCst);
                *fired.lock().unwrap() += 1;
                back.abort();
                return;
            }
            Some(Action::Hold) => {
                *fired.lock().unwrap() += 1;
                std::future::pending::<()>().await;
            }
        }
    }
    back.abort();
}
