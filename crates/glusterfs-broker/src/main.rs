//! glusterfs-broker: K-PaaS's GlusterFS service broker.

use std::process::ExitCode;

use glusterfs_broker::backend::GlusterBroker;
use glusterfs_broker::config::Config;
use osb_core::cli::BuildError;
use osb_core::config::BrokerConfig;
use osb_core::metrics::Metrics;

struct GlusterApp;

impl osb_core::cli::App for GlusterApp {
    type Config = Config;
    type Broker = GlusterBroker;

    fn broker_config(config: &Config) -> &BrokerConfig {
        &config.broker
    }

    fn build(config: &Config, _metrics: &Metrics) -> Result<GlusterBroker, BuildError> {
        GlusterBroker::new(&config.glusterfs, &config.broker)
    }
}

fn main() -> ExitCode {
    osb_core::cli::run::<GlusterApp>()
}
