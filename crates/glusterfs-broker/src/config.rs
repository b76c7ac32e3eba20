//! glusterfs-broker's config file: the shared `[broker]` section and `[glusterfs]`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use osb_core::config::BrokerConfig;
use osb_core::uri::Host;
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
    /// Checked when read: a port or a path in one would make every mount source wrong
    /// (`host:24007:/volume`), and the first also names the broker's own mount.
    pub servers: Vec<Host>,
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
    /// Whom a directory without restriction lets mount (IP addresses or CIDR blocks, the app
    /// networks): set, every directory gets an `auth.allow` entry for them and the volume root
    /// none, so only the Gluster servers mount the root. Unset, nothing is written until a
    /// binding restricts a directory (and open directories then allow `*`).
    #[serde(default)]
    pub open_to: Option<Vec<String>>,
    /// How often each instance's `auth.allow` entry is checked against its bindings (and put
    /// right after a write lost to a crash or between replicas).
    #[serde(default = "default_upkeep_secs")]
    pub upkeep_secs: u64,
    /// Where dedicated plans' volumes get their bricks.
    #[serde(default)]
    pub dedicated: Option<DedicatedConfig>,
    /// What each plan id gives.
    pub plans: HashMap<String, PlanConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedicatedConfig {
    /// Brick roots, `host:/path`: a volume gets one brick under each, in this order (replica
    /// sets are consecutive bricks, so list replicas' hosts alternately).
    pub bricks: Vec<String>,
    /// Create volumes even where Gluster advises against it (bricks on the root file
    /// system, replicas on one host): for test machines.
    #[serde(default)]
    pub force: bool,
    /// Volume options set on every new volume (`gluster volume set`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
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
    /// The instance's quota, in MiB.
    pub quota_mb: u64,
    /// A directory on the shared volume, or a volume of its own.
    #[serde(default)]
    pub kind: PlanKind,
    /// Copies of each file, for a dedicated volume (1: plain distribute).
    #[serde(default = "one")]
    pub replica: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanKind {
    #[default]
    Shared,
    Dedicated,
}

fn one() -> usize {
    1
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

fn default_upkeep_secs() -> u64 {
    60
}

/// The longest server name mount.glusterfs takes: it drops one of `HOST_NAME_MAX` (64) bytes or
/// more as invalid, so every mount from it would fail with "no valid servers".
pub const SERVER_NAME_MAX: usize = 63;

impl GlusterConfig {
    /// Why `servers` cannot make a mount source, if it cannot.
    pub fn servers_unusable(&self) -> Option<String> {
        if self.servers.is_empty() {
            return Some("[glusterfs] servers lists no host".into());
        }
        self.servers.iter().find(|s| s.len() > SERVER_NAME_MAX).map(|s| {
            format!("[glusterfs] servers: {s:?} is longer than the {SERVER_NAME_MAX} bytes mount.glusterfs takes")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(servers: &str) -> Result<GlusterConfig, toml::de::Error> {
        toml::from_str(&format!(
            "servers = {servers}\nvolume = \"v\"\nadmin_mount = \"/mnt/v\"\nplans = {{}}\n"
        ))
    }

    #[test]
    fn a_server_is_a_host_alone() {
        let ok = read(r#"["gluster-1", "10.0.0.5", "[fd00::5]"]"#).unwrap();
        let hosts: Vec<&str> = ok.servers.iter().map(Host::as_str).collect();
        assert_eq!(hosts, ["gluster-1", "10.0.0.5", "fd00::5"]);
        for bad in [
            "gluster-1:24007",
            "gluster-1:/v",
            "gluster 1",
            "a,b",
            "x/y",
            "-oro",
        ] {
            let refused = read(&format!("[{bad:?}]"));
            assert!(refused.is_err(), "{bad:?} was accepted");
        }
        assert_eq!(ok.servers_unusable(), None);
        // A name of several labels, each within the DNS's 63 bytes.
        let name = |len: usize| format!("{}.{}", "g".repeat(30), "h".repeat(len - 31));
        let longest = format!("[{:?}]", name(SERVER_NAME_MAX));
        assert_eq!(read(&longest).unwrap().servers_unusable(), None);
        let long = format!("[\"gluster-1\", {:?}]", name(SERVER_NAME_MAX + 1));
        let why = read(&long).unwrap().servers_unusable().unwrap();
        assert!(why.contains(&name(SERVER_NAME_MAX + 1)), "{why}");
        assert!(read("[]").unwrap().servers_unusable().is_some());
    }
}
