//! mysql-broker: K-PaaS's MySQL/MariaDB service broker.

mod accounts;
mod backend;
mod config;
mod errors;
mod names;
mod owners;
mod quota;

use anyhow::Context;
use osb_core::metrics::Metrics;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = osb_core::config::path_from_args();
    let config: config::Config =
        osb_core::config::load(path.as_deref()).context("loading config")?;
    osb_core::telemetry::init(&config.broker.log);
    let metrics = Metrics::new();
    let broker = backend::MysqlBroker::new(&config.mysql, metrics.registry());
    osb_core::server::serve(&config.broker, broker, metrics)
        .await
        .context("mysql-broker stopped")
}
