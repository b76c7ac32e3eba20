//! redis-broker, black box: the real binary against real `redis-server` processes each test
//! starts for itself (a shared server and a pool, on free ports, stopped when the test ends),
//! driven over HTTP; what it made is checked with the `redis` client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use osb_testkit::{
    BrokerProcess, Client as Osb, PLAIN_CATALOG_SKIPS, Target, check_all, check_restart, free_port,
    fresh_id, start_broker,
};
use redis::aio::MultiplexedConnection;
use serde_json::Value;

const SERVICE: &str = "8ed570e6-3cb9-4985-8e01-19dceff34e3d";
const DEDICATED: &str = "18c43681-eff7-4c63-a6d3-54837c3365ea";
const LARGE: &str = "b93b7f94-541a-4a7a-8eda-4cf99fc6ec24";
const SHARED: &str = "5a0e9b78-66c7-4229-ba1a-b634cbd1440c";
const POOL_PASSWORD: &str = "Kpaas-redis-pool-1";
const SHARED_PASSWORD: &str = "Kpaas-redis-shared-1";

/// A `redis-server` of the test's own: a free port, a temporary directory, the admin
/// password on `default`; killed when dropped.
struct RedisProcess {
    port: u16,
    password: &'static str,
    dir: tempfile::TempDir,
    child: Child,
}

impl RedisProcess {
    async fn start(password: &'static str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Self::spawn(port, dir.path(), password);
        let server = Self {
            port,
            password,
            dir,
            child,
        };
        server.wait_up().await;
        server
    }

    fn spawn(port: u16, dir: &Path, password: &str) -> Child {
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

    async fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_admin().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} never answered",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn try_admin(&self) -> redis::RedisResult<MultiplexedConnection> {
        connect(self.port, "default", self.password).await
    }

    async fn admin(&self) -> MultiplexedConnection {
        self.try_admin().await.unwrap()
    }

    /// `kill -9`, then the same server again (no `aclfile`: its ACL users are gone).
    async fn crash_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(self.port, self.dir.path(), self.password);
        self.wait_up().await;
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(
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
async fn app(creds: &Value) -> redis::RedisResult<MultiplexedConnection> {
    redis::Client::open(creds["uri"].as_str().unwrap())?
        .get_multiplexed_async_connection()
        .await
}

/// What the server answers `args` with: `Ok` or the error's code (`NOPERM`, ...).
async fn run(conn: &mut MultiplexedConnection, args: &[&str]) -> Result<redis::Value, String> {
    let mut cmd = redis::cmd(args[0]);
    cmd.arg(&args[1..]);
    cmd.query_async(conn)
        .await
        .map_err(|e| e.code().unwrap_or("?").to_owned())
}

struct Servers {
    shared: RedisProcess,
    pool: Vec<RedisProcess>,
}

async fn servers(pool: usize) -> Servers {
    let mut started = Vec::new();
    for _ in 0..pool {
        started.push(RedisProcess::start(POOL_PASSWORD).await);
    }
    Servers {
        shared: RedisProcess::start(SHARED_PASSWORD).await,
        pool: started,
    }
}

fn deploy_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/redis-broker.toml")
}

/// The deploy config with this test's servers and upkeep every `upkeep_secs`.
fn config(dir: &Path, servers: &Servers, upkeep_secs: u64) -> PathBuf {
    let text = std::fs::read_to_string(deploy_config()).unwrap();
    let (head, rest) = text.split_once("[redis.shared]").unwrap();
    let (_, plans) = rest.split_once("# Per plan:").unwrap();
    let mut redis = format!(
        "[redis.shared]\nhost = \"127.0.0.1\"\nport = {}\nadmin_password = {{ env = \"REDIS_BROKER_SHARED_PASSWORD\" }}\n\n",
        servers.shared.port
    );
    for (i, server) in servers.pool.iter().enumerate() {
        redis.push_str(&format!(
            "[[redis.pool]]\nname = \"pool-{i}\"\nhost = \"127.0.0.1\"\nport = {}\nadmin_password = {{ env = \"REDIS_BROKER_POOL_PASSWORD\" }}\n\n",
            server.port
        ));
    }
    let head = head.replace("upkeep_secs = 30", &format!("upkeep_secs = {upkeep_secs}"));
    let config = dir.join("redis-broker.toml");
    std::fs::write(&config, format!("{head}{redis}# Per plan:{plans}")).unwrap();
    config
}

async fn start(dir: &Path, config: &Path) -> BrokerProcess {
    let binary = Path::new(env!("CARGO_BIN_EXE_redis-broker"));
    let env = [
        ("REDIS_BROKER_POOL_PASSWORD", POOL_PASSWORD),
        ("REDIS_BROKER_SHARED_PASSWORD", SHARED_PASSWORD),
    ];
    start_broker(binary, config, dir, &env, "/ready")
        .await
        .unwrap()
}

/// The dedicated plans run async for a platform that polls and sync for one that cannot
/// (`Mode::Either`): the testkit's async-only rule does not apply; the tests below poll.
fn target(broker: &BrokerProcess, plan: &str) -> Target {
    let mut t = broker.target(SERVICE, plan);
    t.update_plan_id = Some(LARGE.into());
    t.race_width = 8;
    t.skip = PLAIN_CATALOG_SKIPS.to_vec();
    t
}

/// The admin connection to the pool server an instance got, found by its port in `creds`.
async fn home<'a>(servers: &'a Servers, creds: &Value) -> &'a RedisProcess {
    let port = creds["port"].as_u64().unwrap() as u16;
    servers
        .pool
        .iter()
        .chain(std::iter::once(&servers.shared))
        .find(|s| s.port == port)
        .expect("the credentials name one of the test's servers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testkit_rules_hold_on_a_dedicated_plan() {
    let dir = tempfile::tempdir().unwrap();
    let servers = servers(4).await;
    let broker = start(dir.path(), &config(dir.path(), &servers, 30)).await;
    check_all(&target(&broker, DEDICATED)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_between_provision_and_bind_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let servers = servers(2).await;
    let config = config(dir.path(), &servers, 30);
    let broker = start(dir.path(), &config).await;
    let t = target(&broker, DEDICATED);
    let restarted = std::sync::Mutex::new(None);
    check_restart(&t, || async {
        drop(broker);
        let again = start(dir.path(), &config).await;
        let t = target(&again, DEDICATED);
        *restarted.lock().unwrap() = Some(again);
        Ok(t)
    })
    .await
    .unwrap();
}

/// A dedicated server's binding reads and writes, and nothing more: no `CONFIG`, `FLUSHALL`,
/// `ACL`, `DEBUG`; another instance's server refuses its login; unbind ends its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_bindings_get_data_commands_only_on_their_own_server() {
    let dir = tempfile::tempdir().unwrap();
    let servers = servers(2).await;
    let broker = start(dir.path(), &config(dir.path(), &servers, 30)).await;
    let c = Osb::new(target(&broker, DEDICATED));
    let (a, b, bid) = (fresh_id(), fresh_id(), fresh_id());
    c.provision_ready(&a, DEDICATED).await.unwrap();
    c.provision_ready(&b, DEDICATED).await.unwrap();
    let creds = c.bind_ready(&a, &bid, DEDICATED).await.unwrap()["credentials"].clone();
    for field in ["host", "port", "password", "username", "uri"] {
        assert!(
            creds.get(field).is_some(),
            "credentials lack {field}: {creds}"
        );
    }
    assert!(creds.get("key_prefix").is_none(), "{creds}");
    let server = home(&servers, &creds).await;
    let mut admin = server.admin().await;
    assert_eq!(
        run(&mut admin, &["CONFIG", "GET", "maxmemory"])
            .await
            .unwrap(),
        redis::Value::Array(vec![
            redis::Value::BulkString(b"maxmemory".to_vec()),
            redis::Value::BulkString(b"268435456".to_vec())
        ]),
        "the plan's 256 MB"
    );

    let mut conn = app(&creds).await.unwrap();
    run(&mut conn, &["SET", "greeting", "hello"]).await.unwrap();
    assert_eq!(
        run(&mut conn, &["GET", "greeting"]).await.unwrap(),
        redis::Value::BulkString(b"hello".to_vec())
    );
    for refused in [
        &["CONFIG", "SET", "maxmemory", "0"][..],
        &["FLUSHALL"],
        &["ACL", "SETUSER", "x", "on"],
        &["ACL", "LIST"],
        &["DEBUG", "SLEEP", "0"],
        &["KEYS", "*"],
        &["SHUTDOWN", "NOSAVE"],
    ] {
        assert_eq!(
            run(&mut conn, refused).await.err().as_deref(),
            Some("NOPERM"),
            "{refused:?}"
        );
    }
    let other = servers.pool.iter().find(|s| s.port != server.port).unwrap();
    let password = creds["password"].as_str().unwrap();
    let user = creds["username"].as_str().unwrap();
    assert!(
        connect(other.port, user, password).await.is_err(),
        "the other instance's server took this binding's login"
    );

    c.unbind_done(&a, &bid, DEDICATED).await.unwrap();
    assert!(
        run(&mut conn, &["PING"]).await.is_err(),
        "the connection outlived unbind"
    );
    assert!(app(&creds).await.is_err(), "the login outlived unbind");
    c.deprovision_done(&a, DEDICATED).await.unwrap();
    c.deprovision_done(&b, DEDICATED).await.unwrap();
}

/// Three servers: three instances, the fourth refused saying why, with nothing claimed; a
/// deprovisioned instance's server comes back wiped and serves the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_hands_out_each_server_once_and_takes_it_back_wiped() {
    let dir = tempfile::tempdir().unwrap();
    let servers = servers(3).await;
    let broker = start(dir.path(), &config(dir.path(), &servers, 30)).await;
    let c = Osb::new(target(&broker, DEDICATED));
    let ids: Vec<String> = (0..3).map(|_| fresh_id()).collect();
    let made =
        futures::future::join_all(ids.iter().map(|id| c.provision_ready(id, DEDICATED))).await;
    assert!(made.iter().all(Result::is_ok), "{made:?}");
    let mut ports = Vec::new();
    for id in &ids {
        let creds = c.bind_ready(id, &fresh_id(), DEDICATED).await.unwrap()["credentials"].clone();
        ports.push(creds["port"].as_u64().unwrap());
        let mut conn = app(&creds).await.unwrap();
        run(&mut conn, &["SET", "left", "behind"]).await.unwrap();
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3, "a server was handed out twice");

    let fourth = fresh_id();
    let reply = c
        .provision(&fourth, &c.provision_body(DEDICATED), true)
        .await
        .unwrap();
    assert_eq!(reply.status, 202, "{}", reply.body);
    let last = c
        .poll(&fourth, None, reply.operation().as_deref())
        .await
        .unwrap();
    assert_eq!(last.body["state"], "failed", "{}", last.body);
    assert!(
        last.body["description"]
            .as_str()
            .unwrap()
            .contains("no free Redis server"),
        "{}",
        last.body
    );
    c.deprovision_done(&fourth, DEDICATED).await.unwrap();

    // The first instance goes: its server is wiped (keys and users) and serves the fourth.
    let creds = c.bind_ready(&ids[0], &fresh_id(), DEDICATED).await.unwrap()["credentials"].clone();
    let server = home(&servers, &creds).await;
    c.deprovision_done(&ids[0], DEDICATED).await.unwrap();
    let mut admin = server.admin().await;
    assert_eq!(
        run(&mut admin, &["DBSIZE"]).await.unwrap(),
        redis::Value::Int(0)
    );
    assert_eq!(
        run(&mut admin, &["ACL", "USERS"]).await.unwrap(),
        redis::Value::Array(vec![redis::Value::BulkString(b"default".to_vec())]),
        "binding users outlived the instance"
    );
    c.provision_ready(&fourth, DEDICATED).await.unwrap();
    let creds = c.bind_ready(&fourth, &fresh_id(), DEDICATED).await.unwrap()["credentials"].clone();
    assert_eq!(creds["port"].as_u64().unwrap() as u16, server.port);
    for id in ids.iter().skip(1).chain([&fourth]) {
        c.deprovision_done(id, DEDICATED).await.unwrap();
    }
}

/// A shared instance's binding works under its prefix only; after the shared server restarts
/// without its ACL users, one upkeep pass gives them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_users_stay_under_their_prefix_and_come_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = servers(1).await;
    let broker = start(dir.path(), &config(dir.path(), &servers, 1)).await;
    let c = Osb::new(target(&broker, SHARED));
    let (id, other, bid, other_bid) = (fresh_id(), fresh_id(), fresh_id(), fresh_id());
    c.provision_ready(&id, SHARED).await.unwrap();
    c.provision_ready(&other, SHARED).await.unwrap();
    let creds = c.bind_ready(&id, &bid, SHARED).await.unwrap()["credentials"].clone();
    let theirs = c.bind_ready(&other, &other_bid, SHARED).await.unwrap()["credentials"].clone();
    let prefix = creds["key_prefix"].as_str().unwrap().to_owned();
    assert_eq!(prefix, format!("op_{}:", id.replace('-', "_")));

    let mut conn = app(&creds).await.unwrap();
    let mine = format!("{prefix}k");
    run(&mut conn, &["SET", &mine, "v"]).await.unwrap();
    let their_key = format!("{}k", theirs["key_prefix"].as_str().unwrap());
    for refused in [
        &["SET", "unprefixed", "v"][..],
        &["GET", &their_key],
        &["SET", "kpaas-broker:owners", "v"],
        &["HGETALL", "kpaas-broker:owners"],
        &["SCAN", "0"],
        &["RANDOMKEY"],
        &["KEYS", "*"],
        &["FLUSHDB"],
        &["SCRIPT", "FLUSH"],
        &["PUBLISH", "elsewhere", "x"],
    ] {
        assert_eq!(
            run(&mut conn, refused).await.err().as_deref(),
            Some("NOPERM"),
            "{refused:?}"
        );
    }
    let channel = format!("{prefix}news");
    run(&mut conn, &["PUBLISH", &channel, "x"]).await.unwrap();

    servers.shared.crash_and_restart().await;
    assert!(
        app(&creds).await.is_err(),
        "a restarted server kept its ACL users"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while app(&creds).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the upkeep never put the user back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut conn = app(&creds).await.unwrap();
    run(&mut conn, &["SET", &mine, "again"]).await.unwrap();
    assert!(run(&mut conn, &["SET", "unprefixed", "v"]).await.is_err());

    c.unbind_done(&id, &bid, SHARED).await.unwrap();
    assert!(app(&creds).await.is_err(), "the login outlived unbind");
    c.deprovision_done(&id, SHARED).await.unwrap();
    let mut admin = servers.shared.admin().await;
    assert_eq!(
        run(&mut admin, &["EXISTS", &mine]).await.unwrap(),
        redis::Value::Int(0),
        "the instance's keys outlived it"
    );
    c.unbind_done(&other, &other_bid, SHARED).await.unwrap();
    c.deprovision_done(&other, SHARED).await.unwrap();
    assert_eq!(
        run(&mut admin, &["HLEN", "kpaas-broker:owners"])
            .await
            .unwrap(),
        redis::Value::Int(0),
        "markers outlived their instances"
    );
}

/// Ids that are no GUIDs get plain names of their own; an ACL user the broker did not make
/// under a binding's name is never adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_ids_get_plain_names_and_foreign_users_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let servers = servers(1).await;
    let broker = start(dir.path(), &config(dir.path(), &servers, 30)).await;
    let c = Osb::new(target(&broker, SHARED));
    for bad in ["a%2Fb", "a%20b", "a*b", "%2A"] {
        let reply = c
            .provision(bad, &c.provision_body(SHARED), false)
            .await
            .unwrap();
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
    }
    let mut prefixes = std::collections::HashSet::new();
    for id in ["default", "Default", "a.b", &"x".repeat(120)] {
        c.provision_ready(id, SHARED).await.unwrap();
        let creds = c.bind_ready(id, id, SHARED).await.unwrap()["credentials"].clone();
        for name in [
            creds["key_prefix"].as_str().unwrap(),
            creds["username"].as_str().unwrap(),
        ] {
            let name = name.trim_end_matches(':');
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    && name != "default",
                "{id:?} made {name:?}"
            );
            assert!(prefixes.insert(name.to_owned()), "{id:?} reused {name:?}");
        }
        c.unbind_done(id, id, SHARED).await.unwrap();
        c.deprovision_done(id, SHARED).await.unwrap();
    }

    // A user someone else made under the name a binding would get.
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, SHARED).await.unwrap();
    let squatter = format!("b_{}", bid.replace('-', "_"));
    let mut admin = servers.shared.admin().await;
    run(
        &mut admin,
        &[
            "ACL",
            "SETUSER",
            &squatter,
            "on",
            ">Squatter-pass-1",
            "~*",
            "+get",
        ],
    )
    .await
    .unwrap();
    let reply = c
        .bind(&id, &bid, &c.bind_body(SHARED), false)
        .await
        .unwrap();
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(
        connect(servers.shared.port, &squatter, "Squatter-pass-1")
            .await
            .is_ok(),
        "the foreign user was changed"
    );
    c.deprovision_done(&id, SHARED).await.unwrap();
    assert!(
        connect(servers.shared.port, &squatter, "Squatter-pass-1")
            .await
            .is_ok(),
        "the foreign user was removed"
    );
}

/// `check-config` names a server whose `default` user takes clients without a password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_names_a_server_open_to_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let servers = servers(1).await;
    let config = config(dir.path(), &servers, 30);
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_redis-broker"))
            .arg("--config")
            .arg(&config)
            .arg("check-config")
            .env("REDIS_BROKER_POOL_PASSWORD", POOL_PASSWORD)
            .env("REDIS_BROKER_SHARED_PASSWORD", SHARED_PASSWORD)
            .env("KPAAS_BROKER__PASSWORD", osb_testkit::PASSWORD)
            .env("KPAAS_BROKER__ENCRYPTION_KEY", osb_testkit::ENCRYPTION_KEY)
            .env(
                "KPAAS_BROKER__STORE__URL",
                format!("sqlite://{}/state.db", dir.path().display()),
            )
            .output()
            .unwrap()
    };
    let fine = check();
    assert!(
        fine.status.success(),
        "{}",
        String::from_utf8_lossy(&fine.stdout)
    );
    let mut admin = servers.pool[0].admin().await;
    run(&mut admin, &["ACL", "SETUSER", "default", "nopass"])
        .await
        .unwrap();
    let open = check();
    let said = String::from_utf8_lossy(&open.stdout);
    assert!(!open.status.success(), "{said}");
    assert!(
        said.contains("pool-0") && said.contains("needs no password"),
        "{said}"
    );
}
