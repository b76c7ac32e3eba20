//! The upkeep pass at scale (issue #14): 1,000 instances, each with a bound account and a table,
//! on one real MariaDB server; how long mysql-broker's quota pass over them takes, against
//! `quota_check_secs`. `cargo bench -p mysql-broker --bench upkeep` (or `make bench`); needs
//! the local MariaDB (scripts/backends.sh). `BENCH_STORE_URL=mysql://...` runs the broker on
//! that state store instead of SQLite. Prints figures; asserts nothing about speed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mysql_async::prelude::Queryable;
use osb_testkit::bench::{goal, rounded, store_url};
use osb_testkit::{BrokerProcess, Client, fresh_id, start_broker};

const PLAN1: &str = "411d0c3e-b086-4a24-b041-0aeef1a819d1";
const SERVICE: &str = "96b9e707-0e2b-47e3-a21a-fd01a8eb0452";
const ADMIN: &str = "mysql://root@127.0.0.1:3306/mysql";
const INSTANCES: usize = 1_000;
const QUOTA_CHECK_SECS: u64 = 5;
/// Requests (or admin statements) in flight while the instances are made and removed.
const CONCURRENCY: usize = 8;
const PASSES: usize = 3;

/// The shipped config on the first local server only, checking quotas every
/// [`QUOTA_CHECK_SECS`].
fn config(dir: &Path) -> anyhow::Result<PathBuf> {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mysql-broker.toml");
    let text = std::fs::read_to_string(shipped)?;
    let second = text
        .match_indices("[[mysql.servers]]")
        .nth(1)
        .map(|(at, _)| at)
        .ok_or_else(|| anyhow::anyhow!("the shipped config has one server"))?;
    let plans = text
        .find("[mysql.plans.")
        .ok_or_else(|| anyhow::anyhow!("the shipped config has no plans"))?;
    let text = format!("{}{}", &text[..second], &text[plans..]).replace(
        "quota_check_secs = 30",
        &format!("quota_check_secs = {QUOTA_CHECK_SECS}"),
    );
    let path = dir.join("mysql-broker.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The value of `name` on the broker's `/metrics`, 0 when absent.
async fn metric(broker: &BrokerProcess, name: &str) -> anyhow::Result<f64> {
    Ok(broker.metric(name).await?.0.unwrap_or(0.0))
}

/// Waits for the next upkeep pass to finish and returns how long it took.
async fn next_pass(broker: &BrokerProcess) -> anyhow::Result<f64> {
    let last = metric(broker, "osb_upkeep_last_pass_timestamp_seconds").await?;
    let deadline = Instant::now() + Duration::from_secs(10 * QUOTA_CHECK_SECS);
    loop {
        if metric(broker, "osb_upkeep_last_pass_timestamp_seconds").await? > last {
            return metric(broker, "osb_upkeep_pass_duration_seconds").await;
        }
        anyhow::ensure!(Instant::now() < deadline, "no upkeep pass finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = store_url(dir.path());
    println!(
        "mysql-broker upkeep: {INSTANCES} instances with an account and a table each on one server, {} state store, {} cores",
        store.split(':').next().unwrap_or_default(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let broker = start_broker(
        Path::new(env!("CARGO_BIN_EXE_mysql-broker")),
        &config(dir.path())?,
        dir.path(),
        &[
            ("RUST_LOG", "warn,osb_core::server=info"),
            ("KPAAS_BROKER__STORE__URL", &store),
        ],
        "/ready",
    )
    .await?;
    let c = Client::new(broker.target(SERVICE, PLAN1));
    let c = &c;
    let admin = mysql_async::Pool::new(ADMIN);
    let admin = &admin;

    let started = Instant::now();
    let made: Vec<anyhow::Result<(String, String)>> = futures::stream::iter(0..INSTANCES)
        .map(|_| async move {
            let (id, bid) = (fresh_id(), fresh_id());
            c.provision_ready(&id, PLAN1).await?;
            let bound = c.bind_ready(&id, &bid, PLAN1).await?;
            let db = bound["credentials"]["name"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("no database name in {bound}"))?
                .to_owned();
            let mut conn = admin.get_conn().await?;
            conn.query_drop(format!(
                "CREATE TABLE `{db}`.t (id INT PRIMARY KEY, b BLOB); INSERT INTO `{db}`.t VALUES (1, REPEAT('x', 1000))"
            ))
            .await?;
            Ok((id, bid))
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let made: Vec<(String, String)> = made.into_iter().collect::<anyhow::Result<_>>()?;
    println!(
        "  made in {:.1} s (provision, bind, a table: {CONCURRENCY} at a time)",
        started.elapsed().as_secs_f64()
    );

    // The pass running now may have started before the last instance was ready.
    next_pass(&broker).await?;
    // Between two passes' ends, nothing but the second pass works on the store and the server
    // (the status query itself aside).
    let questions = || async {
        let mut conn = admin.get_conn().await?;
        let asked: Option<(String, u64)> = conn
            .query_first("SHOW GLOBAL STATUS LIKE 'Questions'")
            .await?;
        anyhow::Ok(asked.map_or(0, |(_, n)| n))
    };
    let commits = || metric(&broker, "osb_store_commits_total");
    let (mut asked, mut committed) = (questions().await?, commits().await?);
    let mut took = Vec::new();
    let (mut statements, mut store_commits) = (Vec::new(), Vec::new());
    for _ in 0..PASSES {
        took.push(next_pass(&broker).await?);
        let (now_asked, now_committed) = (questions().await?, commits().await?);
        statements.push(now_asked - asked);
        store_commits.push(now_committed - committed);
        (asked, committed) = (now_asked, now_committed);
    }
    let failures = broker.metric("osb_upkeep_failures_total").await?.1;
    let failures: Vec<&str> = failures
        .lines()
        .filter(|l| l.starts_with("osb_upkeep_failures_total{"))
        .collect();
    let list = |figures: Vec<String>| figures.join(", ");
    println!(
        "  upkeep pass over {INSTANCES} databases: {} s (quota_check_secs {QUOTA_CHECK_SECS}); failures: {}",
        list(took.iter().map(|t| format!("{t:.2}")).collect()),
        if failures.is_empty() {
            "none".to_owned()
        } else {
            failures.join(", ")
        }
    );
    println!(
        "  per pass: {} statements to MariaDB, {} state store commits",
        list(statements.iter().map(u64::to_string).collect()),
        list(store_commits.iter().map(|c| format!("{c:.0}")).collect()),
    );

    let slowest = rounded(took.iter().copied().fold(0.0, f64::max), 3);
    goal(
        &format!("upkeep pass over {INSTANCES} databases on one server (slowest of {PASSES})"),
        &format!(
            "{slowest:.3} s{}",
            if failures.is_empty() {
                ""
            } else {
                ", with failures (above)"
            }
        ),
        &format!("well under quota_check_secs ({QUOTA_CHECK_SECS} s): <= 10%"),
        failures.is_empty() && slowest <= 0.1 * QUOTA_CHECK_SECS as f64,
    )?;
    // On a MariaDB store on the same server, the store's own statements count too.
    if store.starts_with("sqlite:") {
        let most = statements.iter().copied().max().unwrap_or(0);
        goal(
            "statements to the server per upkeep pass (most of the passes')",
            &most.to_string(),
            &format!(
                "one survey per server, not per database (< {})",
                INSTANCES / 10
            ),
            most < (INSTANCES / 10) as u64,
        )?;
    }

    let removed: Vec<anyhow::Result<()>> = futures::stream::iter(&made)
        .map(|(id, bid)| async move {
            c.unbind_done(id, bid, PLAN1).await?;
            c.deprovision_done(id, PLAN1).await?;
            Ok(())
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    removed.into_iter().collect::<anyhow::Result<()>>()
}
