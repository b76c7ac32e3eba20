//! mysql-broker's config file: the shared `[broker]` section and `[mysql]`.

use std::collections::{HashMap, HashSet};

use osb_core::backend_tls::BackendTls;
use osb_core::config::{BrokerConfig, Secret};
use osb_core::credentials::PasswordLength;
use osb_core::quota::QuotaPolicy;
use osb_core::uri::Host;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub broker: BrokerConfig,
    pub mysql: MysqlConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlConfig {
    /// The servers instances are placed on; a new instance goes to the one with the fewest.
    pub servers: Vec<ServerConfig>,
    /// Limits per plan id.
    pub plans: HashMap<String, PlanLimits>,
    /// Seconds between two measurements of every database against its plan's quota.
    #[serde(default = "default_quota_check")]
    pub quota_check_secs: u64,
    /// When a database over its quota is frozen and when it thaws.
    #[serde(default)]
    pub quota_policy: QuotaPolicy,
    /// Length of generated account passwords (16 to 128).
    #[serde(default)]
    pub password_length: PasswordLength,
}

impl MysqlConfig {
    /// A server name given twice: instances record their server by name, so a second server
    /// of the same name would get none of its instances' upkeep right.
    pub fn repeated_server(&self) -> Option<&str> {
        let mut seen = HashSet::new();
        self.servers
            .iter()
            .map(|s| s.name.as_str())
            .find(|name| !seen.insert(*name))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Stable name, recorded with each instance placed here: never rename a server in use.
    pub name: String,
    pub host: Host,
    #[serde(default = "default_port")]
    pub port: u16,
    /// An account allowed to create databases and users and grant privileges.
    pub admin_user: String,
    pub admin_password: Secret,
    /// Host name handed to apps in credentials, when it differs from `host`.
    #[serde(default)]
    pub public_host: Option<Host>,
    /// Admin connections kept open.
    #[serde(default = "default_pool")]
    pub pool_size: usize,
    /// TLS to the server, verified; plain TCP when absent.
    #[serde(default)]
    pub tls: Option<BackendTls>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanLimits {
    /// Connections an instance may hold at once, shared out among its bindings.
    pub connections: u32,
    /// Storage an instance may use, in MiB; over it, its accounts lose every right that writes
    /// (they keep SELECT, DELETE, DROP) until it is back under. No quota when unset.
    #[serde(default)]
    pub quota_mb: Option<u64>,
}

fn default_port() -> u16 {
    3306
}

fn default_quota_check() -> u64 {
    30
}

fn default_pool() -> usize {
    8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(names: &[&str]) -> MysqlConfig {
        let entries: String = names
            .iter()
            .map(|n| format!("[[servers]]\nname = \"{n}\"\nhost = \"h\"\nadmin_user = \"u\"\nadmin_password = \"p\"\n"))
            .collect();
        toml::from_str(&format!("plans = {{}}\n{entries}")).unwrap()
    }

    #[test]
    fn a_server_name_given_twice_is_found() {
        assert_eq!(servers(&["a", "b"]).repeated_server(), None);
        assert_eq!(servers(&["a", "b", "a"]).repeated_server(), Some("a"));
        assert_eq!(servers(&["a", "b", "b"]).repeated_server(), Some("b"));
    }

    /// A host is checked when the config is read: a port in it would reach nothing, or be
    /// handed to apps as `mysql://...@db:3306:3306/...`.
    #[test]
    fn a_host_with_a_port_is_refused_when_read() {
        let read = |host: &str, public: &str| {
            toml::from_str::<MysqlConfig>(&format!(
                "plans = {{}}\n[[servers]]\nname = \"a\"\nhost = \"{host}\"\npublic_host = \"{public}\"\nadmin_user = \"u\"\nadmin_password = \"p\"\n"
            ))
        };
        let ok = read("[fd00::5]", "db.example").unwrap();
        assert_eq!(ok.servers[0].host.as_str(), "fd00::5");
        let refused = read("db", "db.example:3306").unwrap_err().to_string();
        assert!(refused.contains("without its port"), "{refused}");
        assert!(read("db:3306", "db").is_err());
    }
}
