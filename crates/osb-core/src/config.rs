//! Configuration: one TOML file plus `KPAAS_`-prefixed environment overrides, secrets inline,
//! from a file or from another environment variable.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::catalog::Catalog;

/// The `[broker]` section every broker binary has.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address to listen on; `PORT` in the environment (as `cf push` sets it) overrides it.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Basic-auth user of the single platform served at `/` when `platforms` is empty.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// Several platforms, each under its own URL prefix with its own credentials.
    #[serde(default)]
    pub platforms: Vec<PlatformConfig>,
    pub store: StoreConfig,
    /// 32 bytes, base64: seals binding credentials in the store. Every replica needs the same.
    pub encryption_key: Secret,
    /// Keys used before `encryption_key`: they still open what they sealed (key rotation).
    #[serde(default)]
    pub previous_encryption_keys: Vec<Secret>,
    pub catalog: Catalog,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub operations: OperationsConfig,
    /// Largest request body accepted.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Names this replica in operation records, so that after a restart it takes back its own
    /// unfinished operations at once. Default: the host name and the listen port. Must be
    /// stable across restarts and different for every replica.
    #[serde(default)]
    pub replica_id: Option<String>,
    /// HTTP worker threads; the number of cores when unset.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Each HTTP worker pinned to a core of its own, in turn (see [`crate::affinity`]): for a
    /// broker that has its cores to itself, never under a CPU quota on a larger machine.
    #[serde(default)]
    pub pin_workers: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// Names the platform in the store, in logs and in backend names (e.g. "cf-prod"):
    /// lowercase letters and digits, groups joined by single `-`, at most 32 characters. Never
    /// rename a platform that has instances.
    pub name: String,
    /// URL prefix such as "/cf"; "" or "/" for the root.
    #[serde(default)]
    pub prefix: String,
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH`, `mysql://USER:PASS@HOST:PORT/DB` or `postgres://USER:PASS@HOST:PORT/DB`.
    pub url: Secret,
    #[serde(default = "default_pool")]
    pub pool_size: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// "pretty" (default) or "json".
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as "info" or "osb_core=debug"; `RUST_LOG` wins when set.
    #[serde(default)]
    pub level: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationsConfig {
    /// Seconds after which an operation whose replica stopped sending heartbeats is failed.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    /// How long a repeated synchronous request waits for the identical one in progress.
    #[serde(default = "default_sync_wait")]
    pub sync_wait_secs: u64,
    /// On shutdown, how long to wait for operations still running before exiting.
    #[serde(default = "default_drain")]
    pub drain_secs: u64,
    /// How long one instance's periodic upkeep may take before it is given up for that pass.
    #[serde(default = "default_upkeep_timeout")]
    pub upkeep_timeout_secs: u64,
    /// How long a finished operation that no instance or binding points to any more (the
    /// deprovision of a deleted instance, ...) stays for `last_operation`.
    #[serde(default = "default_retention")]
    pub retention_secs: u64,
}

impl Default for OperationsConfig {
    fn default() -> Self {
        Self {
            lease_secs: default_lease(),
            heartbeat_secs: default_heartbeat(),
            sync_wait_secs: default_sync_wait(),
            drain_secs: default_drain(),
            upkeep_timeout_secs: default_upkeep_timeout(),
            retention_secs: default_retention(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_max_body() -> usize {
    256 * 1024
}
fn default_pool() -> usize {
    8
}
fn default_lease() -> u64 {
    60
}
fn default_heartbeat() -> u64 {
    5
}
fn default_sync_wait() -> u64 {
    50
}
fn default_drain() -> u64 {
    30
}
fn default_upkeep_timeout() -> u64 {
    20
}
fn default_retention() -> u64 {
    24 * 3600
}

/// A secret in config: a plain string, `{ file = "/path" }` or `{ env = "VAR" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "SecretSource")]
pub struct Secret(pub SecretString);

#[derive(Deserialize)]
#[serde(untagged)]
enum SecretSource {
    Inline(String),
    File { file: PathBuf },
    Env { env: String },
}

impl TryFrom<SecretSource> for Secret {
    type Error = String;

    fn try_from(source: SecretSource) -> Result<Self, Self::Error> {
        let value = match source {
            SecretSource::Inline(value) => value,
            SecretSource::File { file } => std::fs::read_to_string(&file)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| format!("cannot read secret file {}: {e}", file.display()))?,
            SecretSource::Env { env } => {
                std::env::var(&env).map_err(|_| format!("environment variable {env} is not set"))?
            }
        };
        Ok(Self(SecretString::from(value)))
    }
}

/// A platform as the server uses it.
#[derive(Debug, Clone)]
pub struct Platform {
    pub name: String,
    pub prefix: String,
    pub login: crate::guard::Login,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(String),
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        Self::Invalid(e.to_string())
    }
}

/// Longest `broker.replica_id`.
const MAX_REPLICA_ID: usize = 48;

/// First path segments a platform prefix may not take: a root platform's routes and the
/// operational endpoints live there.
const RESERVED_SEGMENTS: [&str; 4] = ["v2", "health", "ready", "metrics"];

impl BrokerConfig {
    /// Checks what the types cannot say; every broker binary calls it through
    /// [`crate::server::start`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ops = &self.operations;
        if ops.heartbeat_secs.max(1).saturating_mul(2) > ops.lease_secs.max(1) {
            // A lease that one late heartbeat can miss lets live operations be taken as dead.
            return Err(ConfigError::Invalid(format!(
                "broker.operations: lease_secs ({}) must be at least twice heartbeat_secs ({})",
                ops.lease_secs, ops.heartbeat_secs
            )));
        }
        if let Some(id) = &self.replica_id
            && (id.is_empty() || id.len() > MAX_REPLICA_ID)
        {
            // It is stored with a start nonce in columns of 64 characters.
            return Err(ConfigError::Invalid(format!(
                "broker.replica_id must be 1 to {MAX_REPLICA_ID} characters"
            )));
        }
        self.platforms().map(|_| ())
    }

    /// The platforms to serve, longest prefix first (so that a root platform never takes
    /// another's requests): the configured list, or one at `/` from `username`/`password`.
    pub fn platforms(&self) -> Result<Vec<Platform>, ConfigError> {
        if self.platforms.is_empty() {
            let (Some(username), Some(password)) = (&self.username, &self.password) else {
                return Err(ConfigError::Invalid(
                    "set broker.username and broker.password, or list [[broker.platforms]]".into(),
                ));
            };
            return Ok(vec![Platform {
                name: crate::naming::DEFAULT_PLATFORM.into(),
                prefix: String::new(),
                login: crate::guard::Login::new(username, &password.0),
            }]);
        }
        let mut seen = std::collections::HashSet::new();
        let mut platforms = self
            .platforms
            .iter()
            .map(|p| {
                if !crate::naming::is_plain(&p.name) || p.name.len() > 32 {
                    return Err(ConfigError::Invalid(format!(
                        "broker.platforms: name {:?} must be at most 32 lowercase letters and digits, groups joined by single '-'",
                        p.name
                    )));
                }
                let prefix = p.prefix.trim_end_matches('/').to_owned();
                if !(prefix.is_empty() || prefix.starts_with('/')) {
                    return Err(ConfigError::Invalid(format!(
                        "broker.platforms: prefix {:?} must start with '/'",
                        p.prefix
                    )));
                }
                let first = prefix.trim_start_matches('/').split('/').next().unwrap_or("");
                if RESERVED_SEGMENTS.contains(&first) {
                    return Err(ConfigError::Invalid(format!(
                        "broker.platforms: prefix {:?} may not start with /{first}, where the broker's own routes are",
                        p.prefix
                    )));
                }
                if !seen.insert(prefix.clone()) || !seen.insert(format!("name:{}", p.name)) {
                    return Err(ConfigError::Invalid(format!(
                        "broker.platforms: name {:?} or prefix {:?} is used twice",
                        p.name, p.prefix
                    )));
                }
                Ok(Platform {
                    name: p.name.clone(),
                    prefix,
                    login: crate::guard::Login::new(&p.username, &p.password.0),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Nested prefixes would hand one platform's requests to the other ("/cf" and "/cf/v2");
        // the root is the one prefix others may sit under, and it is matched last.
        for a in &platforms {
            for b in &platforms {
                if !a.prefix.is_empty()
                    && a.prefix != b.prefix
                    && b.prefix.starts_with(&format!("{}/", a.prefix))
                {
                    return Err(ConfigError::Invalid(format!(
                        "broker.platforms: prefix {:?} lies under prefix {:?}",
                        b.prefix, a.prefix
                    )));
                }
            }
        }
        platforms.sort_by_key(|p| std::cmp::Reverse(p.prefix.len()));
        Ok(platforms)
    }
}

/// Loads a binary's whole config (`T` has a `broker: BrokerConfig` field and its backend's
/// sections) from `path` and `KPAAS_SECTION__KEY` environment variables.
pub fn load<T: DeserializeOwned>(path: Option<&Path>) -> Result<T, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = path {
        if !path.exists() {
            return Err(ConfigError::Invalid(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file(path));
    }
    figment = figment.merge(Env::prefixed("KPAAS_").split("__"));
    if let Ok(port) = std::env::var("PORT") {
        figment = figment.merge(("broker.listen", format!("0.0.0.0:{port}")));
    }
    Ok(figment.extract()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[derive(Debug, Deserialize)]
    struct Whole {
        broker: BrokerConfig,
    }

    const MINIMAL: &str = r#"
        [broker]
        username = "u"
        password = "p"
        encryption_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        [broker.store]
        url = "sqlite://x.db"
        [[broker.catalog.services]]
        id = "s"
        name = "s"
        description = "d"
        bindable = true
        [[broker.catalog.services.plans]]
        id = "p"
        name = "p"
        description = "d"
    "#;

    fn parse(text: &str) -> Result<Whole, ConfigError> {
        Ok(Figment::new().merge(Toml::string(text)).extract()?)
    }

    #[test]
    fn minimal_config_gives_one_root_platform() {
        let c = parse(MINIMAL).unwrap();
        let platforms = c.broker.platforms().unwrap();
        assert_eq!(platforms.len(), 1);
        assert_eq!(platforms[0].prefix, "");
        assert_eq!(c.broker.listen, "127.0.0.1:8080");
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let text = MINIMAL.replace("username = \"u\"", "usernme = \"u\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("usernme"), "{err}");
    }

    #[test]
    fn secret_can_come_from_a_file_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let text = MINIMAL.replace(
            "password = \"p\"",
            &format!("password = {{ file = {:?} }}", file.display().to_string()),
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.broker.password.unwrap().0.expose_secret(), "from-file");
        let missing = MINIMAL.replace(
            "password = \"p\"",
            "password = { env = \"KPAAS_TEST_UNSET_VAR\" }",
        );
        let err = parse(&missing).unwrap_err().to_string();
        assert!(err.contains("KPAAS_TEST_UNSET_VAR"), "{err}");
    }

    #[test]
    fn heartbeat_must_be_shorter_than_the_lease() {
        let text =
            format!("{MINIMAL}\n[broker.operations]\nlease_secs = 10\nheartbeat_secs = 10\n");
        let err = parse(&text)
            .unwrap()
            .broker
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("heartbeat_secs"), "{err}");
        assert!(parse(MINIMAL).unwrap().broker.validate().is_ok());
    }

    fn with_platforms(list: &[(&str, &str)]) -> String {
        let mut text = MINIMAL
            .replace("username = \"u\"\n", "")
            .replace("password = \"p\"\n", "");
        for (name, prefix) in list {
            text.push_str(&format!(
                "[[broker.platforms]]\nname = {name:?}\nprefix = {prefix:?}\nusername = \"u\"\npassword = \"p\"\n"
            ));
        }
        text
    }

    #[test]
    fn platforms_route_longest_prefix_first() {
        let c = parse(&with_platforms(&[
            ("root", ""),
            ("cf", "/cf"),
            ("k8s", "/k8s/x"),
        ]))
        .unwrap();
        let prefixes: Vec<String> = c
            .broker
            .platforms()
            .unwrap()
            .into_iter()
            .map(|p| p.prefix)
            .collect();
        assert_eq!(prefixes, ["/k8s/x", "/cf", ""]);
    }

    #[test]
    fn platform_names_and_prefixes_are_checked() {
        for (name, prefix) in [
            ("CF", "/cf"),
            ("cf_prod", "/cf"),
            ("cf", "/v2"),
            ("cf", "/metrics/x"),
            ("cf", "cf"),
        ] {
            let c = parse(&with_platforms(&[(name, prefix)])).unwrap();
            assert!(c.broker.platforms().is_err(), "{name} {prefix}");
        }
        for nested in [
            &[("cf", "/cf"), ("k8s", "/cf/")][..],
            &[("cf", "/cf"), ("k8s", "/cf/v2")],
        ] {
            let c = parse(&with_platforms(nested)).unwrap();
            assert!(c.broker.platforms().is_err(), "{nested:?}");
        }
        let c = parse(&with_platforms(&[("cf", "/cf"), ("k8s", "/cfk")])).unwrap();
        assert!(c.broker.platforms().is_ok());
    }

    #[test]
    fn secrets_are_not_printed_by_debug() {
        let c = parse(MINIMAL).unwrap();
        let shown = format!("{:?}", c.broker);
        assert!(!shown.contains("AAAAAAAA"), "{shown}");
    }
}
