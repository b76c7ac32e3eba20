//! rabbitmq-broker's config file: the shared `[broker]` section and `[rabbitmq]`.

use std::collections::HashMap;

use osb_core::backend_tls::BackendTls;
use osb_core::config::{BrokerConfig, Secret};
use osb_core::credentials::PasswordLength;
use osb_core::uri::Host;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub broker: BrokerConfig,
    pub rabbitmq: RabbitConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitConfig {
    /// The cluster's nodes: apps get all of them; management calls go to the first that answers.
    pub nodes: Vec<Node>,
    /// An `administrator` account of the management API (it also opens the AMQP check).
    pub admin_user: String,
    pub admin_password: Secret,
    /// Limits and user tags per plan id.
    pub plans: HashMap<String, PlanLimits>,
    /// Length of generated user passwords (16 to 128).
    #[serde(default)]
    pub password_length: PasswordLength,
    /// TLS to every node, verified: AMQP on each node's `amqps_port` and the management API
    /// over HTTPS on its `management_port`, for the broker and for apps (`amqps://`,
    /// `https://`, `ssl: true`). Plain TCP when unset.
    #[serde(default)]
    pub tls: Option<BackendTls>,
    /// A vhost the admin user may open: `/ready` opens an AMQP connection to it.
    #[serde(default = "default_ready_vhost")]
    pub ready_vhost: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub host: Host,
    #[serde(default = "default_amqp")]
    pub amqp_port: u16,
    /// The management API's port: HTTPS when `[rabbitmq.tls]` is set.
    #[serde(default = "default_management")]
    pub management_port: u16,
    /// AMQP over TLS, used when `[rabbitmq.tls]` is set.
    #[serde(default = "default_amqps")]
    pub amqps_port: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanLimits {
    /// The vhost's `max-connections` limit; none when unset.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// The vhost's `max-queues` limit; none when unset.
    #[serde(default)]
    pub max_queues: Option<u32>,
    /// The most messages a queue of the vhost holds (policy `max-length`: past it, the oldest
    /// are dropped); none when unset.
    #[serde(default)]
    pub max_length: Option<u64>,
    /// How long a message may wait in a queue, in milliseconds (policy `message-ttl`); none
    /// when unset.
    #[serde(default)]
    pub message_ttl_ms: Option<u64>,
    /// Management tags the plan's users get: only `management` (the UI and API for their own
    /// vhost). Not `policymaker`: it could rewrite its vhost's limits and the broker's
    /// markers (global parameters).
    #[serde(default)]
    pub tags: Vec<UserTag>,
}

/// The management tags a plan may hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserTag {
    Management,
}

impl UserTag {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Management => "management",
        }
    }
}

fn default_amqp() -> u16 {
    5672
}

fn default_amqps() -> u16 {
    5671
}

fn default_ready_vhost() -> String {
    "/".into()
}

fn default_management() -> u16 {
    15672
}
