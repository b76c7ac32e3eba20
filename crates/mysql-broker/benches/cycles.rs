//! Provision + bind + unbind + deprovision cycles per second through mysql-broker, against the
//! same SQL statements sent straight to MariaDB (the limit), and the broker's peak RSS.
//!
//! `cargo bench -p mysql-broker` (or `make bench`); needs the local MariaDB (scripts/backends.sh).
//! `BENCH_STORE_URL=mysql://...` runs the broker on that state store instead of SQLite.
//! Prints figures; asserts nothing about speed.

use std::path::Path;
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use osb_testkit::bench::compare;
use osb_testkit::fresh_id;

const SERVICE: &str = "96b9e707-0e2b-47e3-a21a-fd01a8eb0452";
const PLAN1: &str = "411d0c3e-b086-4a24-b041-0aeef1a819d1";

/// The statements mysql-broker sends for one cycle on an instance with one binding.
async fn direct_cycle(pool: &mysql_async::Pool) -> anyhow::Result<()> {
    let mut conn = pool.get_conn().await?;
    let id = fresh_id().replace('-', "_");
    let (db, pattern, user) = (
        format!("op_{id}"),
        format!("op\\_{}", id.replace('_', "\\_")),
        format!("k{}", &id[..15]),
    );
    let account = format!("'{user}'@'%'");
    conn.exec_drop(
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
        (&db,),
    )
    .await?;
    conn.query_drop(
        "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'op\\_%'",
    )
    .await?;
    conn.query_drop(format!(
        "CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    ))
    .await?;
    let users = "SELECT DISTINCT User FROM mysql.db WHERE Db = ? AND Host = '%'";
    conn.exec_drop(users, (&pattern,)).await?;
    conn.query_drop(format!("CREATE USER {account} IDENTIFIED BY 'Abcdefghijklmnopqrstuvwxyz0123456789ABCD' WITH MAX_USER_CONNECTIONS 10")).await?;
    conn.query_drop(format!(
        "GRANT ALL PRIVILEGES ON `{pattern}`.* TO {account}"
    ))
    .await?;
    conn.exec_drop(users, (&pattern,)).await?;
    conn.query_drop(format!("ALTER USER {account} WITH MAX_USER_CONNECTIONS 10"))
        .await?;
    let size = "SELECT CAST(COALESCE(SUM(data_length + index_length), 0) AS UNSIGNED) FROM information_schema.TABLES WHERE table_schema = ?";
    conn.exec_drop(size, (&db,)).await?;
    conn.exec_drop(
        "SELECT User, Insert_priv FROM mysql.db WHERE Db = ? AND Host = '%'",
        (&pattern,),
    )
    .await?;
    let processes = "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?";
    conn.exec_drop(processes, (&user,)).await?;
    conn.query_drop(format!("DROP USER IF EXISTS {account}"))
        .await?;
    conn.exec_drop(users, (&pattern,)).await?;
    conn.exec_drop(users, (&pattern,)).await?;
    conn.query_drop(format!("DROP DATABASE IF EXISTS `{db}`"))
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mysql-broker.toml");
    let binary = Path::new(env!("CARGO_BIN_EXE_mysql-broker"));
    let pool = Arc::new(mysql_async::Pool::new("mysql://root@127.0.0.1:3306/mysql"));
    let direct = || {
        let pool = pool.clone();
        async move { direct_cycle(&pool).await }
    };
    compare(
        "mysql-broker",
        "MariaDB",
        binary,
        &deploy,
        &[],
        SERVICE,
        PLAN1,
        direct,
    )
    .await
}
