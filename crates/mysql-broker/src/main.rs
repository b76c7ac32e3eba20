//! mysql-broker: K-PaaS's MySQL/MariaDB service broker.

mod accounts;
mod backend;
mod config;
mod errors;
mod names;
mod owners;
mod quota;

use std::process::ExitCode;

use osb_core::cli::BuildError;
use osb_core::config::BrokerConfig;
use osb_core::metrics::Metrics;

struct MysqlApp;

impl osb_core::cli::App for MysqlApp {
    type Config = config::Config;
    type Broker = backend::MysqlBroker;

    fn broker_config(config: &config::Config) -> &BrokerConfig {
        &config.broker
    }

    fn build(
        config: &config::Config,
        metrics: &Metrics,
    ) -> Result<backend::MysqlBroker, BuildError> {
        if let Some(name) = config.mysql.repeated_server() {
            return Err(BuildError::Backend(format!(
                "mysql.servers: {name:?} is named twice; each server needs a name of its own"
            )));
        }
        Ok(backend::MysqlBroker::new(&config.mysql, metrics.registry()))
    }
}

fn main() -> ExitCode {
    osb_core::cli::run::<MysqlApp>()
}
