//! redis-broker's config file: the shared `[broker]` section and `[redis]`.

use std::collections::HashMap;

use osb_core::config::{BrokerConfig, Secret};
use osb_core::credentials::PasswordLength;
use osb_core::uri::Host;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub broker: BrokerConfig,
    pub redis: RedisConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// The server `shared` plans keep their instances on (a key prefix each).
    #[serde(default)]
    pub shared: Option<Server>,
    /// Servers the operator deployed for `pool` plans, each handed out whole to one instance.
    #[serde(default)]
    pub pool: Vec<Server>,
    /// How `local` plans run a `redis-server` process per instance on the broker's own host.
    #[serde(default)]
    pub local: Option<LocalConfig>,
    /// What each plan id gets.
    pub plans: HashMap<String, PlanConfig>,
    /// Length of generated passwords (16 to 128).
    #[serde(default)]
    pub password_length: PasswordLength,
    /// Seconds between two upkeep passes (a restarted shared server gets its users back).
    #[serde(default = "default_upkeep")]
    pub upkeep_secs: u64,
}

/// A Redis server the broker administers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Names the server in the store, in errors and in orphan listings; never rename one that
    /// serves instances.
    #[serde(default = "default_name")]
    pub name: String,
    pub host: Host,
    #[serde(default = "default_port")]
    pub port: u16,
    /// An ACL user allowed every command (`default` when unset).
    #[serde(default)]
    pub admin_user: Option<String>,
    #[serde(default)]
    pub admin_password: Option<Secret>,
    /// Host name handed to apps, when it differs from `host`.
    #[serde(default)]
    pub public_host: Option<Host>,
    /// A TLS port the server also listens on, handed to apps as `tls_port`.
    #[serde(default)]
    pub tls_port: Option<u16>,
}

impl Server {
    /// `host:port`, as errors name it.
    pub fn address(&self) -> String {
        osb_core::uri::authority(&self.host, self.port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanKind {
    /// A key prefix on the shared server.
    Shared,
    /// A whole server from the pool.
    Pool,
    /// A `redis-server` process of its own on the broker's host.
    Local,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// The `redis-server` binary.
    #[serde(default = "default_redis_server")]
    pub redis_server: std::path::PathBuf,
    /// Each instance's config, data and pid file live in a directory of its own under here.
    pub data_dir: std::path::PathBuf,
    /// The address the processes listen on.
    #[serde(default = "default_bind")]
    pub bind: Host,
    /// Host name handed to apps, when it differs from `bind`.
    #[serde(default)]
    pub public_host: Option<Host>,
    /// The ports instances take, `[first, last]`.
    pub ports: [u16; 2],
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    pub kind: PlanKind,
    /// `maxmemory` of a dedicated server, in MiB; unset: no limit.
    #[serde(default)]
    pub maxmemory_mb: Option<u64>,
    /// `maxmemory-policy` of a dedicated server.
    #[serde(default)]
    pub maxmemory_policy: MaxmemoryPolicy,
    /// What a dedicated server writes to disk.
    #[serde(default)]
    pub persistence: Persistence,
}

/// Redis's eviction policies, so a typo is refused when the config is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaxmemoryPolicy {
    #[default]
    Noeviction,
    AllkeysLru,
    AllkeysLfu,
    AllkeysRandom,
    VolatileLru,
    VolatileLfu,
    VolatileRandom,
    VolatileTtl,
}

impl MaxmemoryPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Noeviction => "noeviction",
            Self::AllkeysLru => "allkeys-lru",
            Self::AllkeysLfu => "allkeys-lfu",
            Self::AllkeysRandom => "allkeys-random",
            Self::VolatileLru => "volatile-lru",
            Self::VolatileLfu => "volatile-lfu",
            Self::VolatileRandom => "volatile-random",
            Self::VolatileTtl => "volatile-ttl",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Persistence {
    /// Memory only.
    #[default]
    None,
    /// Snapshots (`save 3600 1 300 100 60 10000`).
    Rdb,
    /// An append-only file, fsync every second, plus snapshots.
    Aof,
}

fn default_redis_server() -> std::path::PathBuf {
    "/usr/bin/redis-server".into()
}

fn default_bind() -> Host {
    Host::try_from("127.0.0.1".to_owned()).expect("an IPv4 address")
}

fn default_name() -> String {
    "shared".into()
}

fn default_port() -> u16 {
    6379
}

fn default_upkeep() -> u64 {
    30
}
