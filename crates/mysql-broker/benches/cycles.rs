//! Provision + bind + unbind + deprovision cycles per second through mysql-broker, against the
//! same SQL statements sent straight to MariaDB (the limit), and the broker's peak RSS.
//!
//! `cargo bench -p mysql-broker` (or `make bench`); needs the local MariaDB (scripts/backends.sh).
//! `BENCH_STORE_URL=mysql://...` runs the broker on that state store instead of SQLite
//! (`make bench` runs both, and records issue #14's goals: `osb_testkit::bench::goal`).
//! Prints figures; asserts nothing about speed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use mysql_async::prelude::Queryable;
use osb_testkit::bench::{compare, goal, memory_goal, rounded};
use osb_testkit::fresh_id;

const SERVICE: &str = "96b9e707-0e2b-47e3-a21a-fd01a8eb0452";
const PLAN1: &str = "411d0c3e-b086-4a24-b041-0aeef1a819d1";

const OWNER: &str =
    "SELECT platform, owner_id, parent FROM kpaas_broker.owners WHERE kind = ? AND name = ?";
const MARK: &str = "INSERT IGNORE INTO kpaas_broker.owners (kind, name, platform, owner_id, parent) VALUES (?, ?, ?, ?, ?)";
const TOUCH: &str =
    "UPDATE kpaas_broker.owners SET created_at = CURRENT_TIMESTAMP WHERE kind = ? AND name = ?";
const UNMARK: &str =
    "DELETE FROM kpaas_broker.owners WHERE kind = ? AND name = ? AND platform = ? AND owner_id = ?";
const MADE_USERS: &str = "SELECT o.name FROM kpaas_broker.owners o JOIN kpaas_broker.made m \
    ON m.kind = o.kind AND m.name = o.name WHERE o.kind = 'user' AND o.parent = ?";
const FORGET: &str = "DELETE FROM kpaas_broker.made WHERE kind = ? AND name = ? AND EXISTS (\
    SELECT 1 FROM kpaas_broker.owners o \
    WHERE o.kind = ? AND o.name = ? AND o.platform = ? AND o.owner_id = ?)";
const GRANTEES: &str = "SELECT DISTINCT User FROM mysql.db WHERE Db = ? AND Host = '%'";
/// A password of the broker's length and alphabet ([A-Za-z0-9-._~]): the second server's
/// password policy (scripts/backends.sh) refuses one without a character of each kind.
const PASSWORD: &str = "Abcdefghijklmnopqrstuvwxyz0123456789-._~";
const SESSION: &str = "SET SESSION lock_wait_timeout = 10, innodb_lock_wait_timeout = 10";

/// A server of the broker's config: where it is, an admin pool to it as the broker makes one,
/// and how many direct cycles placed their database there.
struct Server {
    name: String,
    pool: mysql_async::Pool,
    placed: AtomicUsize,
}

/// The servers of the broker's config (`[[mysql.servers]]`), in its order.
fn configured_servers(config: &Path) -> anyhow::Result<Vec<Server>> {
    let config: toml::Table = std::fs::read_to_string(config)?.parse()?;
    let servers = config
        .get("mysql")
        .and_then(|m| m.get("servers"))
        .and_then(|s| s.as_array())
        .context("the config has no [[mysql.servers]]")?;
    servers
        .iter()
        .map(|server| {
            let text = |key: &str| {
                server
                    .get(key)
                    .and_then(|v| v.as_str())
                    .with_context(|| format!("a server's {key} is not a plain string"))
            };
            let port = server
                .get("port")
                .and_then(|v| v.as_integer())
                .and_then(|p| u16::try_from(p).ok())
                .context("a server's port is not a port")?;
            Ok(Server {
                name: text("name")?.to_owned(),
                pool: admin_pool(
                    text("host")?,
                    port,
                    text("admin_user")?,
                    text("admin_password")?,
                ),
                placed: AtomicUsize::new(0),
            })
        })
        .collect()
}

/// An admin pool as the broker makes one for a server: over TCP to the configured address
/// (never the server's Unix socket), up to 8 connections, idle ones kept, each reset when
/// given back and its session settings sent again.
fn admin_pool(host: &str, port: u16, user: &str, password: &str) -> mysql_async::Pool {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port)
        .prefer_socket(false)
        .user(Some(user))
        .pass(Some(password))
        .db_name(Some("mysql"))
        .setup(vec![SESSION])
        .pool_opts(
            mysql_async::PoolOpts::default()
                .with_constraints(mysql_async::PoolConstraints::new(0, 8).expect("0 <= 8"))
                .with_inactive_connection_ttl(std::time::Duration::from_secs(60)),
        );
    mysql_async::Pool::new(opts)
}

/// The `DROP DATABASE` statements server `pool` has run since it started: one a cycle, on the
/// server its database was placed on, whichever side ran it.
async fn databases_dropped(pool: &mysql_async::Pool) -> anyhow::Result<usize> {
    let row: Option<(String, usize)> = pool
        .get_conn()
        .await?
        .query_first("SHOW GLOBAL STATUS LIKE 'Com_drop_db'")
        .await?;
    Ok(row.context("the server shows no Com_drop_db")?.1)
}

/// A name's ownership marker, as mysql-broker's `owners` module keeps it.
struct Marker<'a> {
    kind: &'a str,
    name: &'a str,
    id: &'a str,
    parent: &'a str,
}

const PLATFORM: &str = "default";

/// `owners::claim` of a name not claimed before, the check that nothing stands under it
/// (`exists`, one parameter: the name), and `owners::set_made`.
async fn claim_new(
    conn: &mut mysql_async::Conn,
    m: &Marker<'_>,
    exists: &str,
) -> anyhow::Result<()> {
    conn.exec_drop(MARK, (m.kind, m.name, PLATFORM, m.id, m.parent))
        .await?;
    conn.exec_drop(OWNER, (m.kind, m.name)).await?;
    conn.exec_drop(
        "DELETE FROM kpaas_broker.made WHERE kind = ? AND name = ?",
        (m.kind, m.name),
    )
    .await?;
    conn.exec_drop(exists, (m.name,)).await?;
    conn.exec_drop(
        "INSERT IGNORE INTO kpaas_broker.made (kind, name) VALUES (?, ?)",
        (m.kind, m.name),
    )
    .await?;
    Ok(())
}

/// `owners::claim` of a name this owner holds already (a removal takes it again).
async fn claim_again(conn: &mut mysql_async::Conn, m: &Marker<'_>) -> anyhow::Result<()> {
    conn.exec_drop(MARK, (m.kind, m.name, PLATFORM, m.id, m.parent))
        .await?;
    conn.exec_drop(OWNER, (m.kind, m.name)).await?;
    conn.exec_drop(TOUCH, (m.kind, m.name)).await?;
    conn.exec_drop(
        "SELECT 1 FROM kpaas_broker.made WHERE kind = ? AND name = ?",
        (m.kind, m.name),
    )
    .await?;
    Ok(())
}

/// `owners::release`.
async fn release(conn: &mut mysql_async::Conn, m: &Marker<'_>) -> anyhow::Result<()> {
    conn.exec_drop(FORGET, (m.kind, m.name, m.kind, m.name, PLATFORM, m.id))
        .await?;
    conn.exec_drop(UNMARK, (m.kind, m.name, PLATFORM, m.id))
        .await?;
    Ok(())
}

/// The database's accounts as the broker reads them: its own, then the server's grants.
async fn accounts(conn: &mut mysql_async::Conn, db: &str, pattern: &str) -> anyhow::Result<()> {
    conn.exec_drop(MADE_USERS, (db,)).await?;
    conn.exec_drop(GRANTEES, (pattern,)).await?;
    Ok(())
}

/// What mysql-broker sends MariaDB for one cycle on an instance with one binding, statement
/// for statement (from the server's general log; its ownership records included), one pooled
/// connection per operation as the broker takes them. The example config has two servers
/// (`servers`, in its order): a provision asks each how full it is, holding the connection of
/// the emptiest so far, and makes the database on the one with the fewest instances (the first
/// of equals), as the broker's `place` does; the rest of the cycle goes to that server.
async fn direct_cycle(servers: &[Server]) -> anyhow::Result<()> {
    let (id, bid) = (fresh_id(), fresh_id());
    let db = format!("op_{}", id.replace('-', "_"));
    let pattern = db.replace('_', "\\_");
    let user = format!("b_{}", &bid.replace('-', "_")[..14]) + "abcdefghijklmnop";
    let account = format!("'{user}'@'%'");
    let database = Marker {
        kind: "database",
        name: &db,
        id: &id,
        parent: "",
    };
    let binding = Marker {
        kind: "user",
        name: &user,
        id: &bid,
        parent: &db,
    };

    // provision
    let placement =
        "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'op\\_%'";
    let mut emptiest: Option<(u64, &Server, mysql_async::Conn)> = None;
    for server in servers {
        let mut conn = server.pool.get_conn().await?;
        conn.exec_drop(OWNER, ("database", &db)).await?;
        let count: u64 = conn.query_first(placement).await?.unwrap_or(0);
        if emptiest.as_ref().is_none_or(|(least, ..)| count < *least) {
            emptiest = Some((count, server, conn));
        }
    }
    let (_, server, mut conn) = emptiest.context("no server to place the database on")?;
    server.placed.fetch_add(1, Ordering::Relaxed);
    let pool = &server.pool;
    let schema = "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?";
    claim_new(&mut conn, &database, schema).await?;
    conn.query_drop(format!(
        "CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    ))
    .await?;
    drop(conn);

    // bind
    let mut conn = pool.get_conn().await?;
    let account_named = "SELECT User FROM mysql.user WHERE User = ? AND Host = '%'";
    claim_new(&mut conn, &binding, account_named).await?;
    let processes = "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?";
    conn.exec_drop(processes, (&user,)).await?;
    conn.query_drop(format!("DROP USER IF EXISTS {account}"))
        .await?;
    accounts(&mut conn, &db, &pattern).await?;
    conn.query_drop(format!(
        "CREATE USER {account} IDENTIFIED BY '{PASSWORD}' WITH MAX_USER_CONNECTIONS 10"
    ))
    .await?;
    conn.query_drop(format!(
        "GRANT ALL PRIVILEGES ON `{pattern}`.* TO {account}"
    ))
    .await?;
    accounts(&mut conn, &db, &pattern).await?;
    conn.query_drop(format!("ALTER USER {account} WITH MAX_USER_CONNECTIONS 10"))
        .await?;
    accounts(&mut conn, &db, &pattern).await?;
    conn.exec_drop(
        "SELECT User, Insert_priv, Update_priv, Create_priv, Alter_priv, Index_priv, \
         Create_tmp_table_priv, Lock_tables_priv, Create_view_priv, Create_routine_priv, \
         Alter_routine_priv, Event_priv, Trigger_priv FROM mysql.db WHERE Db = ? AND Host = '%'",
        (&pattern,),
    )
    .await?;
    conn.exec_drop(
        "SELECT CAST(COALESCE(SUM(data_length + index_length), 0) AS UNSIGNED) FROM information_schema.TABLES WHERE table_schema = ?",
        (&db,),
    )
    .await?;
    drop(conn);

    // unbind
    let mut conn = pool.get_conn().await?;
    claim_again(&mut conn, &binding).await?;
    conn.exec_drop(processes, (&user,)).await?;
    conn.query_drop(format!("DROP USER IF EXISTS {account}"))
        .await?;
    release(&mut conn, &binding).await?;
    accounts(&mut conn, &db, &pattern).await?;
    drop(conn);

    // deprovision
    let mut conn = pool.get_conn().await?;
    claim_again(&mut conn, &database).await?;
    conn.exec_drop(MADE_USERS, (&db,)).await?;
    conn.exec_drop(
        "DELETE kpaas_broker.made FROM kpaas_broker.made JOIN kpaas_broker.owners \
         ON kpaas_broker.made.kind = kpaas_broker.owners.kind \
         AND kpaas_broker.made.name = kpaas_broker.owners.name \
         WHERE kpaas_broker.owners.kind = 'user' AND kpaas_broker.owners.parent = ?",
        (&db,),
    )
    .await?;
    conn.exec_drop(
        "DELETE FROM kpaas_broker.owners WHERE kind = 'user' AND parent = ?",
        (&db,),
    )
    .await?;
    conn.query_drop(format!("DROP DATABASE IF EXISTS `{db}`"))
        .await?;
    release(&mut conn, &database).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mysql-broker.toml");
    let binary = Path::new(env!("CARGO_BIN_EXE_mysql-broker"));
    let servers = Arc::new(configured_servers(&deploy)?);
    let dropped = async || {
        let mut counts = Vec::with_capacity(servers.len());
        for server in servers.iter() {
            counts.push(databases_dropped(&server.pool).await?);
        }
        anyhow::Ok(counts)
    };
    let before = dropped().await?;
    let direct = || {
        let servers = servers.clone();
        async move { direct_cycle(&servers).await }
    };
    let figures = compare(
        "mysql-broker",
        "MariaDB",
        binary,
        &deploy,
        &[],
        SERVICE,
        PLAN1,
        direct,
    )
    .await?;
    // Where each side's databases went: the two sides place by the same rule, but how full
    // each server is when a provision asks differs with what else a cycle does meanwhile, and
    // a cycle costs MariaDB more spread over two servers than on one.
    let after = dropped().await?;
    let split: Vec<String> = servers
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(server, (before, after))| {
            let direct = server.placed.load(Ordering::Relaxed);
            let through = (after - before).saturating_sub(direct);
            format!("{}: {direct} direct, {through} through", server.name)
        })
        .collect();
    println!("  databases placed: {}", split.join("; "));
    // Issue #14 sets the lifecycle's share of the direct rate for these two stores only.
    let (store, floor) = match figures.store.as_str() {
        "sqlite" => ("SQLite", Some(0.8)),
        "mysql" => ("MariaDB", Some(0.6)),
        other => (other, None),
    };
    if let Some(floor) = floor {
        for run in &figures.runs {
            let ratio = rounded(run.ratio(), 3);
            goal(
                &format!(
                    "lifecycle through the broker, {} at a time, {store} store",
                    run.width
                ),
                &format!("{ratio:.3} of the direct SQL rate"),
                &format!(">= {floor}"),
                ratio >= floor,
            )?;
        }
    }
    memory_goal(
        &format!("peak RSS during the lifecycle, {store} store"),
        figures.peak_rss_kib,
        20.0,
    )
}
