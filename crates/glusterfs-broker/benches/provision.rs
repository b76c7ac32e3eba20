//! glusterfs-broker's benchmark (`make bench`): how long a provision and a bind take on the
//! real glusterd (synchronously, so the figures are the broker's and Gluster's work, not a
//! polling interval), for a shared directory and a dedicated volume; lifecycle cycles per
//! second through the broker against the same Gluster work done straight (one after the
//! other and CONCURRENCY at once); the broker's peak RSS. Prints figures; asserts nothing
//! about speed.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use osb_testkit::bench::{CONCURRENCY, broker_cycle, peak_rss_kib, quantile_ms, rate_of};
use osb_testkit::{BrokerProcess, Client, Reply, fresh_id, start_broker};
use support::{Mounted, deploy_config, host};

const SERVICE: &str = "642e1a24-21c8-450d-b658-88089f34fa0c";
const SHARED: &str = "b777040f-0d08-4ad4-a50a-614cf1d4b985";
const DEDICATED: &str = "3f0c1c9e-7a4e-4b9a-9d3e-2f1b6c8a5d47";
/// Timed provisions and binds of a shared directory, and of dedicated volumes.
const SHARED_RUNS: usize = 30;
const DEDICATED_RUNS: usize = 3;
/// Cycles per rate (fewer than the other brokers': each is several glusterd transactions).
const CYCLES: usize = 40;

/// The deploy config on this host, dedicated volumes with two copies on two brick roots under
/// `dir`, the admin mount under `dir`.
async fn start(dir: &Path) -> anyhow::Result<(BrokerProcess, Mounted)> {
    for root in ["bricks-a", "bricks-b"] {
        std::fs::create_dir_all(dir.join(root))?;
    }
    let text = deploy_config("kpaas-shared", &dir.join("admin"))
        .replace(
            &format!("bricks = [\"{}:/var/lib/kpaas-gluster/dedicated\"]", host()),
            &format!(
                "bricks = [\"{h}:{d}/bricks-a\", \"{h}:{d}/bricks-b\"]",
                h = host(),
                d = dir.display()
            ),
        )
        .replace("force = false", "force = true")
        .replace("replica = 1", "replica = 2");
    let config = dir.join("glusterfs-broker.toml");
    std::fs::write(&config, text)?;
    let binary = Path::new(env!("CARGO_BIN_EXE_glusterfs-broker"));
    let broker = start_broker(binary, &config, dir, &[], "/ready").await?;
    Ok((broker, Mounted(dir.join("admin"))))
}

fn ok(what: &str, reply: &Reply, status: u16) -> anyhow::Result<()> {
    anyhow::ensure!(
        reply.status == status,
        "{what} answered {}: {}",
        reply.status,
        reply.body
    );
    Ok(())
}

/// Provision and bind times on `plan`, `runs` of each, one after the other.
async fn times(
    c: &Client,
    plan: &str,
    runs: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut provisions, mut binds) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (id, bid) = (fresh_id(), fresh_id());
        let started = Instant::now();
        let reply = c.provision(&id, &c.provision_body(plan), false).await?;
        ok("provision", &reply, 201)?;
        provisions.push(started.elapsed());
        let started = Instant::now();
        ok(
            "bind",
            &c.bind(&id, &bid, &c.bind_body(plan), false).await?,
            201,
        )?;
        binds.push(started.elapsed());
        ok("unbind", &c.unbind(&id, &bid, plan, false).await?, 200)?;
        ok("deprovision", &c.deprovision(&id, plan, false).await?, 200)?;
    }
    provisions.sort();
    binds.sort();
    Ok((provisions, binds))
}

async fn gluster(args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("gluster")
        .args(["--mode=script", "--xml"])
        .args(args)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "gluster {args:?} failed");
    Ok(())
}

/// What a shared cycle costs Gluster, done straight: the directory and its quota made and
/// removed through the same admin mount and CLI, with the broker's glusterd check before
/// each of its four operations.
async fn direct_cycle(admin: &Path) -> anyhow::Result<()> {
    let name = format!("op_bench{}", &fresh_id().replace('-', "")[..16]);
    let path = format!("/{name}");
    gluster(&["volume", "list"]).await?;
    tokio::fs::create_dir(admin.join(&name)).await?;
    let limit = [
        "volume",
        "quota",
        "kpaas-shared",
        "limit-usage",
        &path,
        "5242880",
    ];
    gluster(&limit).await?;
    gluster(&["volume", "list"]).await?;
    gluster(&["volume", "list"]).await?;
    gluster(&["volume", "quota", "kpaas-shared", "remove", &path]).await?;
    tokio::fs::remove_dir_all(admin.join(&name)).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (broker, admin) = start(dir.path()).await?;
    println!(
        "glusterfs-broker: provision and bind (sync, one after the other) and cycles (provision + bind + unbind + deprovision), {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("  plan        runs  provision p50     p99   bind p50     p99");
    for (kind, plan, runs) in [
        ("shared", SHARED, SHARED_RUNS),
        ("dedicated", DEDICATED, DEDICATED_RUNS),
    ] {
        let c = Client::new(broker.target(SERVICE, plan));
        let (provisions, binds) = times(&c, plan, runs).await?;
        println!(
            "  {kind:<10} {runs:>5} {:>11.1} ms {:>7.1} {:>7.1} ms {:>7.1}",
            quantile_ms(&provisions, 0.5),
            quantile_ms(&provisions, 0.99),
            quantile_ms(&binds, 0.5),
            quantile_ms(&binds, 0.99),
        );
    }
    let c = Client::new(broker.target(SERVICE, SHARED));
    println!("  shared cycles/s      straight  through broker  ratio");
    for width in [1, CONCURRENCY] {
        // The broker mounted the volume at the admin path during the runs above.
        let direct = rate_of(CYCLES, width, || direct_cycle(&admin.0)).await?;
        let through = rate_of(CYCLES, width, || {
            let c = c.clone();
            async move { broker_cycle(&c, SHARED).await }
        })
        .await?;
        println!(
            "  concurrency {width:<3} {direct:>12.1} {through:>15.1} {:>6.2}",
            through / direct
        );
    }
    if let Some(kib) = peak_rss_kib(broker.pid()) {
        println!("  broker peak RSS: {:.1} MiB", kib as f64 / 1024.0);
    }
    Ok(())
}
