//! mysql-broker: K-PaaS's MySQL/MariaDB service broker.

mod backend;
mod config;
mod names;
mod quota;

use std::path::PathBuf;

use anyhow::Context;
use osb_core::metrics::Metrics;

fn config_path() -> Option<PathBuf> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("KPAAS_CONFIG").map(PathBuf::from)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = config_path();
    let config: config::Config =
        osb_core::config::load(path.as_deref()).context("loading config")?;
    osb_core::telemetry::init(&config.broker.log);
    let metrics = Metrics::new();
    let broker = backend::MysqlBroker::new(&config.mysql, metrics.registry());
    osb_core::server::serve(&config.broker, broker, metrics)
        .await
        .context("mysql-broker stopped")
}
