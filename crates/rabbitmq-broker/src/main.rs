//! rabbitmq-broker: K-PaaS's RabbitMQ service broker.

mod backend;
mod config;
mod errors;
mod markers;
mod names;

use std::process::ExitCode;

use osb_core::cli::BuildError;
use osb_core::config::BrokerConfig;
use osb_core::metrics::Metrics;

struct RabbitApp;

impl osb_core::cli::App for RabbitApp {
    type Config = config::Config;
    type Broker = backend::RabbitBroker;

    fn broker_config(config: &config::Config) -> &BrokerConfig {
        &config.broker
    }

    fn build(
        config: &config::Config,
        _metrics: &Metrics,
    ) -> Result<backend::RabbitBroker, BuildError> {
        backend::RabbitBroker::new(&config.rabbitmq, &config.broker.catalog)
    }
}

fn main() -> ExitCode {
    osb_core::cli::run::<RabbitApp>()
}
