//! What redis-broker's tests and its benchmark share: `redis-server` processes of their own,
//! configs pointing the broker at them, and the plans of the deploy config.
// Each of the two uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use osb_testkit::{BrokerProcess, PLAIN_CATALOG_SKIPS, Target, fresh_id, start_broker};
use redis::aio::MultiplexedConnection;
use serde_json::Value;

pub const SERVICE: &str = "8ed570e6-3cb9-4985-8e01-19dceff34e3d";
pub const DEDICATED: &str = "18c43681-eff7-4c63-a6d3-54837c3365ea";
pub const LARGE: &str = "b93b7f94-541a-4a7a-8eda-4cf99fc6ec24";
pub const SHARED: &str = "5a0e9b78-66c7-4229-ba1a-b634cbd1440c";
pub const POOL_PASSWORD: &str = "Kpaas-redis-pool-1";
pub const SHARED_PASSWORD: &str = "Kpaas-redis-shared-1";

/// A `redis-server` of the test's own: a free port, a temporary directory, the admin
/// password on `default`; killed when dropped.
pub struct RedisProcess {
    pub port: u16,
    password: &'static str,
    dir: tempfile::TempDir,
    child: Child,
}

impl RedisProcess {
    pub async fn start(password: &'static str) -> Self {
        // Below the ephemeral ports, so that no outgoing connection takes the port while the
        // server is down between a crash and its restart. Another run's server may still
        // take it first: the server exits then, and another port is tried.
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let [port, _] = port_range(1);
            let child = Self::spawn(port, dir.path(), password);
            let mut server = Self {
                port,
                password,
                dir,
                child,
            };
            if server.came_up().await {
                return server;
            }
        }
        panic!("redis-server exited on five free ports in a row");
    }

    pub fn spawn(port: u16, dir: &Path, password: &str) -> Child {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                password,
            ])
            // So that ACLs, not this switch, are what refuses DEBUG to apps.
            .args(["--enable-debug-command", "yes"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/backends.sh installs it)")
    }

    /// Whether the server answers; `false` when it exited first.
    async fn came_up(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_admin().await.is_err() {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {} never answered",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    pub async fn try_admin(&self) -> redis::RedisResult<MultiplexedConnection> {
        connect(self.port, "default", self.password).await
    }

    pub async fn admin(&self) -> MultiplexedConnection {
        self.try_admin().await.unwrap()
    }

    /// `kill -9`, then the same server again (no `aclfile`: its ACL users are gone).
    pub async fn crash_and_restart(&mut self) {
        self.crash();
        self.restart().await;
    }

    /// `kill -9`: the port refuses connections until [`RedisProcess::restart`].
    pub fn crash(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The same server again, on its port and directory.
    pub async fn restart(&mut self) {
        self.child = Self::spawn(self.port, self.dir.path(), self.password);
        assert!(
            self.came_up().await,
            "redis-server exited on its port {}",
            self.port
        );
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn connect(
    port: u16,
    user: &str,
    password: &str,
) -> redis::RedisResult<MultiplexedConnection> {
    let url = format!("redis://{user}:{password}@127.0.0.1:{port}");
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

/// A connection with a binding's credentials, through its `uri`.
pub async fn app(creds: &Value) -> redis::RedisResult<MultiplexedConnection> {
    redis::Client::open(creds["uri"].as_str().unwrap())?
        .get_multiplexed_async_connection()
        .await
}

/// What the server answers `args` with: `Ok` or the error's code (`NOPERM`, ...).
pub async fn run(conn: &mut MultiplexedConnection, args: &[&str]) -> Result<redis::Value, String> {
    let mut cmd = redis::cmd(args[0]);
    cmd.arg(&args[1..]);
    cmd.query_async(conn)
        .await
        .map_err(|e| e.code().unwrap_or("?").to_owned())
}

pub struct Servers {
    pub shared: RedisProcess,
    pub pool: Vec<RedisProcess>,
}

pub async fn servers(pool: usize) -> Servers {
    let mut started = Vec::new();
    for _ in 0..pool {
        started.push(RedisProcess::start(POOL_PASSWORD).await);
    }
    Servers {
        shared: RedisProcess::start(SHARED_PASSWORD).await,
        pool: started,
    }
}

pub fn deploy_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/redis-broker.toml")
}

/// The deploy config with this test's servers and upkeep every `upkeep_secs`.
pub fn config(dir: &Path, servers: &Servers, upkeep_secs: u64) -> PathBuf {
    let text = std::fs::read_to_string(deploy_config()).unwrap();
    let (head, rest) = text.split_once("[redis.shared]").unwrap();
    let (_, plans) = rest.split_once("# Per plan:").unwrap();
    let mut redis = format!(
        "[redis.shared]\nhost = \"127.0.0.1\"\nport = {}\nadmin_password = {{ env = \"REDIS_BROKER_SHARED_PASSWORD\" }}\n\n",
        servers.shared.port
    );
    for (i, server) in servers.pool.iter().enumerate() {
        redis.push_str(&format!(
            // A TLS port is only handed on to apps: one past the plain port, to check it is.
            "[[redis.pool]]\nname = \"pool-{i}\"\nhost = \"127.0.0.1\"\nport = {}\ntls_port = {}\nadmin_password = {{ env = \"REDIS_BROKER_POOL_PASSWORD\" }}\n\n",
            server.port,
            server.port + 1
        ));
    }
    let head = head.replace("upkeep_secs = 30", &format!("upkeep_secs = {upkeep_secs}"));
    let config = dir.join("redis-broker.toml");
    std::fs::write(&config, format!("{head}{redis}# Per plan:{plans}")).unwrap();
    config
}

pub async fn start(dir: &Path, config: &Path) -> BrokerProcess {
    start_with(dir, config, &[]).await
}

/// [`start`] with more environment.
pub async fn start_with(dir: &Path, config: &Path, more: &[(&str, &str)]) -> BrokerProcess {
    let binary = Path::new(env!("CARGO_BIN_EXE_redis-broker"));
    let mut env = vec![
        ("REDIS_BROKER_POOL_PASSWORD", POOL_PASSWORD),
        ("REDIS_BROKER_SHARED_PASSWORD", SHARED_PASSWORD),
    ];
    env.extend_from_slice(more);
    start_broker(binary, config, dir, &env, "/ready")
        .await
        .unwrap()
}

/// The dedicated plans run async for a platform that polls and sync for one that cannot
/// (`Mode::Either`): the testkit's async-only rule does not apply; the tests below poll.
pub fn target(broker: &BrokerProcess, plan: &str) -> Target {
    let mut t = broker.target(SERVICE, plan);
    t.update_plan_id = Some(LARGE.into());
    t.race_width = 8;
    t.skip = PLAIN_CATALOG_SKIPS.to_vec();
    t
}

/// The admin connection to the pool server an instance got, found by its port in `creds`.
pub async fn home<'a>(servers: &'a Servers, creds: &Value) -> &'a RedisProcess {
    let port = creds["port"].as_u64().unwrap() as u16;
    servers
        .pool
        .iter()
        .chain(std::iter::once(&servers.shared))
        .find(|s| s.port == port)
        .expect("the credentials name one of the test's servers")
}

/// A plan of the tests' own for local processes (the deploy config has none: local mode needs
/// a one-replica SQLite store, which the deploy manifests do not use).
pub const LOCAL: &str = "b683846b-f5bb-493f-ad6a-a63c76870fab";
/// A local plan of 4 MiB, for a downgrade that cannot fit.
pub const TINY: &str = "88a6e080-8b5a-48e0-bdbb-95cb07d10e84";

/// `config` plus `[redis.local]` over `ports` under `data_dir`, and the local plan.
pub fn local_config(dir: &Path, servers: &Servers, data_dir: &Path, ports: [u16; 2]) -> PathBuf {
    let config = config(dir, servers, 1);
    let mut text = std::fs::read_to_string(&config).unwrap();
    let (head, catalog) = text.split_once("[[broker.catalog.services]]").unwrap();
    text = format!(
        "{head}[redis.local]\ndata_dir = \"{}\"\nports = [{}, {}]\n\n\
         [redis.plans.{LOCAL}]\nkind = \"local\"\nmaxmemory_mb = 64\npersistence = \"aof\"\n\n\
         [redis.plans.{TINY}]\nkind = \"local\"\nmaxmemory_mb = 4\n\n\
         [[broker.catalog.services]]{catalog}\n\
         [[broker.catalog.services.plans]]\nid = \"{LOCAL}\"\nname = \"local\"\n\
         description = \"A redis-server process of its own on the broker's host\"\nfree = true\n\n\
         [[broker.catalog.services.plans]]\nid = \"{TINY}\"\nname = \"local-tiny\"\n\
         description = \"A tiny redis-server process\"\nfree = true\n",
        data_dir.display(),
        ports[0],
        ports[1]
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// The data directory of a test's local processes: whatever still runs there when the test
/// ends (a failed one included) is killed.
pub struct LocalData(tempfile::TempDir);

impl LocalData {
    pub fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for LocalData {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(self.0.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(pid) = std::fs::read_to_string(entry.path().join("redis.pid")) {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
        }
    }
}

/// `count` consecutive free ports for a test's local range: apart from every other range this
/// test binary hands out (its tests run at once), and below the kernel's ephemeral ports (32768
/// and up by default), which outgoing connections take at random. A random start per run keeps
/// two runs at once (a developer's and CI's) apart too, mostly.
pub fn port_range(count: u16) -> [u16; 2] {
    static BASE: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    static HANDED_OUT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = *BASE.get_or_init(|| 20_000 + rand_u16() % 12_000);
    loop {
        let first = base + HANDED_OUT.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        let last = first + count - 1;
        assert!(
            last < 32_768,
            "test port ranges ran into the ephemeral ports"
        );
        // A port a server of the machine holds (RabbitMQ's 25672, MongoDB's 27017, ...)
        // would be skipped by the broker and shift the ports a test expects.
        if (first..=last).all(port_free) {
            return [first, last];
        }
    }
}

/// Whether nothing holds `port` on 127.0.0.1: the broker's own test before it claims a port.
pub fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

pub fn rand_u16() -> u16 {
    let id = fresh_id().replace('-', "");
    u16::from_str_radix(&id[..4], 16).unwrap()
}

/// The pid in a local instance's pid file.
pub fn local_pid(data_dir: &Path, id: &str) -> u32 {
    let dir = data_dir.join(format!("op_{}", id.replace('-', "_")));
    std::fs::read_to_string(dir.join("redis.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
