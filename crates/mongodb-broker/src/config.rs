//! mongodb-broker's config file: the shared `[broker]` section and `[mongodb]`.

use std::collections::HashMap;

use mongodb::options::{ConnectionString, HostInfo, ServerAddress};
use osb_core::config::{BrokerConfig, Secret};
use osb_core::credentials::PasswordLength;
use osb_core::quota::QuotaPolicy;
use osb_core::uri;
use secrecy::{ExposeSecret, SecretString};
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
    pub uri: AdminUri,
    /// `host:port` handed to apps, when they differ from the URI's hosts.
    #[serde(default)]
    pub public_hosts: Vec<uri::Authority>,
    /// Limits per plan id.
    pub plans: HashMap<String, PlanLimits>,
    /// Seconds between two measurements of every database against its plan's quota.
    #[serde(default = "default_quota_check")]
    pub quota_check_secs: u64,
    /// When a database over its quota is frozen (its users may read and remove, not write)
    /// and when it thaws.
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
    /// over it, its users can only read and remove data until it is back under. No quota when
    /// unset.
    #[serde(default)]
    pub quota_mb: Option<u64>,
}

fn default_name() -> String {
    "mongodb".into()
}

fn default_quota_check() -> u64 {
    30
}

/// The admin URI, checked when the config is read (without ever echoing it: it holds a
/// password): a MongoDB connection string that lists its hosts.
#[derive(Debug, Deserialize)]
#[serde(try_from = "Secret")]
pub struct AdminUri {
    pub secret: SecretString,
    /// `host:port` of each server it names.
    pub hosts: Vec<String>,
    pub replica_set: Option<String>,
}

impl TryFrom<Secret> for AdminUri {
    type Error = String;

    fn try_from(secret: Secret) -> Result<Self, String> {
        if secret.0.expose_secret().starts_with("mongodb+srv://") {
            return Err("mongodb+srv is not supported: list the hosts".into());
        }
        // The driver's reason may quote parts of the URI, the password among them.
        let parsed = ConnectionString::parse(secret.0.expose_secret())
            .map_err(|_| "not a MongoDB connection string".to_owned())?;
        let HostInfo::HostIdentifiers(hosts) = &parsed.host_info else {
            return Err("mongodb+srv is not supported: list the hosts".into());
        };
        Ok(Self {
            hosts: hosts.iter().map(host_and_port).collect(),
            replica_set: parsed.replica_set.clone(),
            secret: secret.0,
        })
    }
}

/// `host:port` as it stands in a URI: the driver's own `Display` drops an IPv6 address's
/// brackets.
fn host_and_port(address: &ServerAddress) -> String {
    match address {
        ServerAddress::Tcp { host, port } => uri::authority(host, port.unwrap_or(27017)),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(text: &str) -> Result<AdminUri, String> {
        AdminUri::try_from(Secret(SecretString::from(text)))
    }

    #[test]
    fn the_admin_uri_is_checked_without_echoing_its_password() {
        let ok = uri("mongodb://root:pw@a:1,b/?replicaSet=rs0").unwrap();
        assert_eq!(ok.hosts, ["a:1", "b:27017"]);
        let v6 = uri("mongodb://root:pw@[fd00::5]:27018,[::1]/").unwrap();
        assert_eq!(v6.hosts, ["[fd00::5]:27018", "[::1]:27017"]);
        assert_eq!(ok.replica_set.as_deref(), Some("rs0"));
        assert!(
            uri("mongodb+srv://root:pw@cluster.example/")
                .unwrap_err()
                .contains("srv")
        );
        let bad = uri("mongodb://root:s3cret-pw@a:notaport/").unwrap_err();
        assert!(!bad.contains("s3cret-pw"), "{bad}");
        assert!(uri("http://a").is_err());
    }
}
