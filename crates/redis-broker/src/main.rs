//! redis-broker: K-PaaS's Redis service broker.

mod acl;
mod backend;
mod config;
mod errors;
mod local;
mod markers;
mod names;
mod server;

use std::process::ExitCode;

use osb_core::cli::BuildError;
use osb_core::config::BrokerConfig;
use osb_core::metrics::Metrics;

struct RedisApp;

impl osb_core::cli::App for RedisApp {
    type Config = config::Config;
    type Broker = backend::RedisBroker;

    fn broker_config(config: &config::Config) -> &BrokerConfig {
        &config.broker
    }

    fn build(
        config: &config::Config,
        _metrics: &Metrics,
    ) -> Result<backend::RedisBroker, BuildError> {
        backend::RedisBroker::new(&config.redis, &config.broker)
    }
}

fn main() -> ExitCode {
    osb_core::cli::run::<RedisApp>()
}
