//! mongodb-broker's config file: the shared `[broker]` section and `[mongodb]`.

use std::collections::HashMap;

use osb_core::config::{BrokerConfig, Secret};
use osb_core::credentials::PasswordLength;
use osb_core::quota::QuotaPolicy;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub broker: BrokerConfig,
    pub mongodb: MongoConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    /// A human name for the server (or cluster) in errors and orphan listings.
    #[serde(default = "default_name")]
    pub name: String,
    /// The admin connection: `mongodb://USER:PASS@HOST[:PORT][,HOST...]/?authSource=admin&...`
    /// (a `mongos`, a replica set or one server). Its replica set and TLS options are handed on
    /// to apps. The account needs `userAdminAnyDatabase`, `readWriteAnyDatabase` and
    /// `dbAdminAnyDatabase` (or `root`).
    pub uri: Secret,
    /// `host:port` handed to apps, when they differ from the URI's hosts.
    #[serde(default)]
    pub public_hosts: Vec<String>,
    /// Limits per plan id.
    pub plans: HashMap<String, PlanLimits>,
    /// Seconds between two measurements of every database against its plan's quota.
    #[serde(default = "default_quota_check")]
    pub quota_check_secs: u64,
    /// When a database over its quota is frozen (users switched to `read`) and when it thaws.
    #[serde(default)]
    pub quota_policy: QuotaPolicy,
    /// Length of generated user passwords (16 to 128).
    #[serde(default)]
    pub password_length: PasswordLength,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanLimits {
    /// Storage an instance may use, in MiB (documents and indexes, as `dbStats` counts them);
    /// over it, its users can only read until it is back under. No quota when unset.
    #[serde(default)]
    pub quota_mb: Option<u64>,
}

fn default_name() -> String {
    "mongodb".into()
}

fn default_quota_check() -> u64 {
    30
}
