//! mongodb-broker: K-PaaS's MongoDB service broker.

mod backend;
mod config;
mod errors;
mod names;
mod owners;

use std::process::ExitCode;

use osb_core::cli::BuildError;
use osb_core::config::BrokerConfig;
use osb_core::metrics::Metrics;

struct MongoApp;

impl osb_core::cli::App for MongoApp {
    type Config = config::Config;
    type Broker = backend::MongoBroker;

    fn broker_config(config: &config::Config) -> &BrokerConfig {
        &config.broker
    }

    fn build(
        config: &config::Config,
        metrics: &Metrics,
    ) -> Result<backend::MongoBroker, BuildError> {
        Ok(backend::MongoBroker::new(
            &config.mongodb,
            metrics.registry(),
        ))
    }
}

fn main() -> ExitCode {
    osb_core::cli::run::<MongoApp>()
}
