//! osb-core: the Open Service Broker API 2.17 for every K-PaaS broker.
//!
//! A broker implements [`ServiceBroker`] with its backend's operations and calls [`cli::main`]
//! (or [`server::start`]); everything of HTTP and of the OSB rules lives here. ARCHITECTURE.md
//! at the workspace root has the map.

pub mod affinity;
pub mod allocator;
pub mod backend_tls;
pub mod broker;
pub mod catalog;
pub mod claims;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod crypto;
pub mod engine;
pub mod error;
mod fingerprint;
mod guard;
pub mod ids;
pub mod metrics;
pub mod naming;
pub mod orphans;
pub mod quota;
mod routes;
mod runner;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod uri;
pub mod wire;

pub use broker::{BrokerError, Mode, Operation, ServiceBroker};
pub use error::OsbError;
pub use runner::Timing;
