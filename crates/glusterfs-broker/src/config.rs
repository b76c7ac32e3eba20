//! glusterfs-broker's config file: the shared `[broker]` section and `[glusterfs]`.

use std::collections::HashMap;
use std::path::PathBuf;

use osb_core::config::BrokerConfig;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub broker: BrokerConfig,
    pub glusterfs: GlusterConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlusterConfig {
    /// Where `gluster` runs: this host (unset) or a server node over SSH.
    #[serde(default)]
    pub ssh: Option<Ssh>,
    /// The `gluster` binary on this host.
    #[serde(default = "default_gluster")]
    pub gluster: PathBuf,
    /// Server host names apps mount from (never an IP literal a brick was not made with).
    pub servers: Vec<String>,
    /// The volume shared plans keep their directories on.
    pub volume: String,
    /// Where the broker mounts the volume for itself (to make and remove directories).
    pub admin_mount: PathBuf,
    /// Mount options handed to apps (`mount -o`).
    #[serde(default)]
    pub mount_options: String,
    /// The volume driver named in `volume_mounts`.
    #[serde(default = "default_driver")]
    pub driver: String,
    /// Where apps get the directory mounted when a binding names no `mount`.
    #[serde(default = "default_container_dir")]
    pub container_dir: String,
    /// Quota per plan id.
    pub plans: HashMap<String, PlanConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    /// `user@host` of a server node.
    pub destination: String,
    #[serde(default)]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// The directory's quota, in MiB.
    pub quota_mb: u64,
}

fn default_gluster() -> PathBuf {
    "gluster".into()
}

fn default_driver() -> String {
    "glusterfs".into()
}

fn default_container_dir() -> String {
    "/var/vcap/data/glusterfs".into()
}
