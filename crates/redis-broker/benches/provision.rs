//! redis-broker's benchmark (`make bench`): for each plan kind, how long a provision takes
//! until the instance is ready (synchronously, so the figure is the broker's work and not a
//! polling interval), full lifecycle cycles per second, and the broker's peak RSS. Prints
//! figures; asserts nothing about speed.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use osb_testkit::bench::{CONCURRENCY, broker_cycle, peak_rss_kib, quantile_ms, rate};
use osb_testkit::{Client, fresh_id};
use support::*;

/// Provisions timed one after the other, per kind.
const PROVISIONS: usize = 50;

async fn provision_times(c: &Client, plan: &str) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(PROVISIONS);
    for _ in 0..PROVISIONS {
        let id = fresh_id();
        let started = Instant::now();
        let reply = c.provision(&id, &c.provision_body(plan), false).await?;
        anyhow::ensure!(
            reply.status == 201,
            "provision answered {}: {}",
            reply.status,
            reply.body
        );
        times.push(started.elapsed());
        let gone = c.deprovision(&id, plan, false).await?;
        anyhow::ensure!(gone.status == 200, "deprovision answered {}", gone.status);
    }
    times.sort();
    Ok(times)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = LocalData::new();
    // One pool server per cycle running at once.
    let servers = servers(CONCURRENCY).await;
    let config = local_config(
        dir.path(),
        &servers,
        data.path(),
        port_range(2 * CONCURRENCY as u16),
    );
    let broker = start(dir.path(), &config).await;
    println!(
        "redis-broker: provision until ready (sync, {PROVISIONS} one after the other) and cycles (provision + bind + unbind + deprovision, concurrency {CONCURRENCY}), {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("  kind     provision p50   p99      cycles/s");
    for (kind, plan) in [("shared", SHARED), ("pool", DEDICATED), ("local", LOCAL)] {
        let c = Client::new(target(&broker, plan));
        let times = provision_times(&c, plan).await?;
        let cycles = rate(|| {
            let c = c.clone();
            async move { broker_cycle(&c, plan).await }
        })
        .await?;
        println!(
            "  {kind:<8} {:>9.1} ms {:>7.1} ms {:>9.1}",
            quantile_ms(&times, 0.5),
            quantile_ms(&times, 0.99),
            cycles
        );
    }
    if let Some(kib) = peak_rss_kib(broker.pid()) {
        println!("  broker peak RSS: {:.1} MiB", kib as f64 / 1024.0);
    }
    Ok(())
}
