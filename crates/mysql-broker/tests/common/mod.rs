//! Test helpers: the real mysql-broker binary on a free port, admin connections to MariaDB.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use osb_testkit::Target;
pub use osb_testkit::{BrokerProcess as Broker, free_port};

pub const SERVICE: &str = "96b9e707-0e2b-47e3-a21a-fd01a8eb0452";
pub const PLAN1: &str = "411d0c3e-b086-4a24-b041-0aeef1a819d1";
pub const PLAN2: &str = "4a932d9d-9bc5-4a86-937f-e2c14bb9f497";
pub const SERVERS: [&str; 2] = [
    "mysql://root@127.0.0.1:3306/mysql",
    "mysql://root@127.0.0.1:3307/mysql",
];

/// The shipped config: the K-PaaS catalog and both local servers.
pub fn deploy_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mysql-broker.toml")
}

/// The shipped config with its `[[mysql.servers]]` replaced by `servers` (TOML), in `dir`.
pub fn config_with_servers(dir: &Path, servers: &str) -> PathBuf {
    let text = std::fs::read_to_string(deploy_config()).unwrap();
    let start = text.find("[[mysql.servers]]").unwrap();
    let end = text.find("[mysql.plans.").unwrap();
    let path = dir.join(format!("mysql-broker-{}.toml", free_port()));
    std::fs::write(
        &path,
        format!("{}{servers}\n{}", &text[..start], &text[end..]),
    )
    .unwrap();
    path
}

/// The shipped config with each `(from, to)` text replaced, in `dir`.
pub fn config_edited(dir: &Path, edits: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(deploy_config()).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "deploy config lacks {from:?}");
        text = text.replace(from, to);
    }
    let path = dir.join(format!("mysql-broker-{}.toml", free_port()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts mysql-broker with the shipped config and a state store in `dir`; waits until ready.
pub async fn start(dir: &Path, port: u16) -> Broker {
    start_with(dir, port, &deploy_config(), true).await
}

/// Starts mysql-broker with `config`; waits for `/ready` when `wait_ready`, else `/health`.
/// Its log is `dir/broker.log`.
pub async fn start_with(dir: &Path, port: u16, config: &Path, wait_ready: bool) -> Broker {
    start_env(dir, port, config, wait_ready, &[]).await
}

/// [`start_with`], with more environment variables (which win over the defaults here).
pub async fn start_env(
    dir: &Path,
    port: u16,
    config: &Path,
    wait_ready: bool,
    env: &[(&str, &str)],
) -> Broker {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mysql-broker"));
    command
        .arg("--config")
        .arg(config)
        .env("KPAAS_BROKER__LISTEN", format!("127.0.0.1:{port}"))
        .env("KPAAS_BROKER__STORE__URL", osb_testkit::sqlite_store(dir))
        .env("KPAAS_BROKER__LOG__FORMAT", "json")
        .env("KPAAS_BROKER__WORKERS", "2")
        .env("MYSQL_BROKER_PASSWORD", "broker-secret")
        .env(
            "MYSQL_BROKER_ENCRYPTION_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        // The listening line (info, osb_core::server) tells the port of a broker on port 0.
        .env(
            "RUST_LOG",
            format!(
                "{},osb_core::server=info",
                std::env::var("TEST_BROKER_LOG").unwrap_or_else(|_| "info".into())
            ),
        )
        .envs(env.iter().copied());
    let mut broker = Broker::spawn(command, port, &dir.join("broker.log")).unwrap();
    let path = if wait_ready { "/ready" } else { "/health" };
    broker
        .wait_for(path, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "mysql-broker not up ({e}); are both MariaDB servers up? run scripts/backends.sh"
            )
        });
    broker
}

/// One `[[mysql.servers]]` entry named `name` for root on 127.0.0.1:`port`.
pub fn server_entry(name: &str, port: u16) -> String {
    format!(
        "[[mysql.servers]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\nadmin_user = \"root\"\nadmin_password = \"\"\n"
    )
}

/// The ownership marker rows (kind, name) on local server `i` for OSB id `owner_id`.
pub async fn markers_of(i: usize, owner_id: &str) -> Vec<(String, String)> {
    admin_of(i)
        .await
        .exec(
            "SELECT kind, name FROM kpaas_broker.owners WHERE owner_id = ?",
            (owner_id,),
        )
        .await
        .unwrap()
}

/// Whether account `user` exists on local server `i`.
pub async fn account_exists(i: usize, user: &str) -> bool {
    let found: Vec<String> = admin_of(i)
        .await
        .exec("SELECT User FROM mysql.user WHERE User = ?", (user,))
        .await
        .unwrap();
    !found.is_empty()
}

pub fn target(broker: &Broker) -> Target {
    let mut t = Target::new(
        format!("http://127.0.0.1:{}", broker.port),
        "broker",
        "broker-secret",
        SERVICE,
        PLAN1,
    );
    t.update_plan_id = Some(PLAN2.into());
    t.race_width = 8;
    t.skip = osb_testkit::PLAIN_CATALOG_SKIPS.to_vec();
    t
}

/// An admin connection to local server `i` (0: 3306, 1: 3307).
pub async fn admin_of(i: usize) -> mysql_async::Conn {
    mysql_async::Conn::from_url(SERVERS[i])
        .await
        .unwrap_or_else(|e| {
            panic!(
                "MariaDB {} is required (run scripts/backends.sh): {e}",
                SERVERS[i]
            )
        })
}

pub async fn admin() -> mysql_async::Conn {
    admin_of(0).await
}

pub async fn databases_of(i: usize) -> Vec<String> {
    admin_of(i).await.query("SHOW DATABASES").await.unwrap()
}

pub async fn databases() -> Vec<String> {
    let mut all = databases_of(0).await;
    all.extend(databases_of(1).await);
    all
}

/// `max_user_connections` of an account, on whichever server has it.
pub async fn max_connections(user: &str) -> Option<u64> {
    for i in 0..SERVERS.len() {
        let found: Option<u64> = admin_of(i)
            .await
            .exec_first(
                "SELECT max_user_connections FROM mysql.user WHERE User = ?",
                (user,),
            )
            .await
            .unwrap();
        if found.is_some() {
            return found;
        }
    }
    None
}

pub fn server_code(err: &mysql_async::Error) -> Option<u16> {
    match err {
        mysql_async::Error::Server(e) => Some(e.code),
        _ => None,
    }
}
