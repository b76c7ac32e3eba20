//! Helpers for end-to-end tests: the workspace's real broker binaries, and a round-robin TCP
//! load balancer in front of several replicas.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};

/// A broker binary built by `cargo build --workspace --bins` (which `make test` runs first).
pub fn broker_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: build the brokers first (`cargo build --workspace --bins`, as `make test` does)",
        path.display()
    );
    path
}

/// A round-robin balancer and how many connections it gave each upstream.
pub struct Balancer {
    pub addr: SocketAddr,
    served: Arc<Vec<AtomicUsize>>,
}

impl Balancer {
    /// Connections handed to each upstream so far, in the order they were given.
    pub fn served(&self) -> Vec<usize> {
        self.served
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }
}

/// Accepts on 127.0.0.1:0 and hands each connection to the next upstream in turn, skipping
/// upstreams that refuse, like a load balancer with health checks by connection attempt.
pub async fn round_robin(upstreams: Vec<SocketAddr>) -> Balancer {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind balancer");
    let addr = listener.local_addr().expect("balancer address");
    let next = Arc::new(AtomicUsize::new(0));
    let served: Arc<Vec<AtomicUsize>> =
        Arc::new(upstreams.iter().map(|_| AtomicUsize::new(0)).collect());
    let counts = served.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstreams = upstreams.clone();
            let counts = counts.clone();
            let first = next.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                for i in 0..upstreams.len() {
                    let pick = (first + i) % upstreams.len();
                    if let Ok(mut server) = TcpStream::connect(upstreams[pick]).await {
                        counts[pick].fetch_add(1, Ordering::Relaxed);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                }
            });
        }
    });
    Balancer { addr, served }
}

/// A fresh database on the local MariaDB, for a shared state store; fails loudly without one.
pub async fn fresh_mariadb_store() -> String {
    use mysql_async::prelude::Queryable;
    let name = format!("e2e_store_{}", std::process::id()) + &format!("_{}", next_suffix());
    let mut conn = mysql_async::Conn::from_url("mysql://root@127.0.0.1:3306/mysql")
        .await
        .expect("MariaDB at 127.0.0.1:3306 is required (run scripts/backends.sh)");
    conn.query_drop(format!("CREATE DATABASE `{name}`"))
        .await
        .expect("create store database");
    format!("mysql://root@127.0.0.1:3306/{name}")
}

/// Drops a store made by [`fresh_mariadb_store`].
pub async fn drop_mariadb_store(url: &str) {
    use mysql_async::prelude::Queryable;
    let name = url.rsplit('/').next().unwrap_or_default();
    if let Ok(mut conn) = mysql_async::Conn::from_url("mysql://root@127.0.0.1:3306/mysql").await {
        let _ = conn
            .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
            .await;
    }
}

fn next_suffix() -> usize {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
