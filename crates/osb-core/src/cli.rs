//! The command line every broker binary shares: `serve` (the default), `check-config` and
//! `orphans`. A broker's `main` names its config type and how to build its backend ([`App`]),
//! and calls [`main`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::de::DeserializeOwned;

use crate::broker::ServiceBroker;
use crate::catalog::CatalogIndex;
use crate::config::{BrokerConfig, LogConfig, LogFormat, load};
use crate::crypto::Sealer;
use crate::metrics::Metrics;
use crate::orphans::{self, Claim, Orphan};
use crate::store::{Store, StoreError};

/// The crate version and the git commit the binary was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("KPAAS_GIT_COMMIT"),
    ")"
);

/// What a broker binary tells the shared command line.
pub trait App {
    /// The whole config file: a `broker` section and the backend's own.
    type Config: DeserializeOwned;
    type Broker: ServiceBroker;

    fn broker_config(config: &Self::Config) -> &BrokerConfig;

    /// Builds the backend, registering its metrics on `metrics`; refuses what the config
    /// file alone could not check (a CA file that does not parse).
    fn build(config: &Self::Config, metrics: &Metrics) -> Result<Self::Broker, BuildError>;
}

/// Why a backend could not be built from its config; the broker does not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Trust(#[from] crate::backend_tls::TrustError),
    /// A client the backend needs could not be made from its settings.
    #[error("{0}")]
    Backend(String),
}

#[derive(Debug, Parser)]
#[command(version = VERSION)]
struct Cli {
    /// The config file (TOML); `KPAAS_SECTION__KEY` variables override its keys.
    #[arg(long, global = true, env = "KPAAS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the Open Service Broker API (the default).
    Serve,
    /// Load the config, reach the state store and every backend server; print each problem on
    /// a line of its own; exit 0 when there is none, 1 otherwise.
    CheckConfig,
    /// List backend objects this broker made that no service instance or binding claims.
    Orphans {
        /// Only objects at least this old (`90s`, `30m`, `1h`, `2d`).
        #[arg(long, default_value = "1h", value_parser = parse_age)]
        older_than: Duration,
        /// Remove the listed orphans that carry the broker's marker (never unmarked ones).
        #[arg(long)]
        delete: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Delete even when the store holds no instance, or more than half of the broker's
        /// marked objects look orphaned (signs of a wrong store url).
        #[arg(long)]
        force: bool,
    },
}

fn parse_age(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not an age such as 90s, 30m, 1h or 2d"))?;
    let secs = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

/// A broker binary's `main`: the allocator set up while the process has one thread (glibc's
/// `mallopt` is not safe against other threads' frees), then [`main`] on a multi-threaded
/// tokio runtime.
pub fn run<A: App>() -> ExitCode {
    crate::allocator::tune();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(main::<A>()),
        Err(e) => {
            eprintln!("starting the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the command line, loads the config and runs the command.
pub async fn main<A: App>() -> ExitCode {
    // Every TLS client in the process uses ring, as the server does; a library that builds a
    // client without a config of its own would otherwise find no provider and panic.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Named after the binary (`mysql-broker --help`), not this crate.
    let name = std::env::args()
        .next()
        .and_then(|arg0| {
            std::path::Path::new(&arg0)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "broker".into());
    let matches = Cli::command().name(name).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let config: A::Config = match load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("loading config: {e}");
            return ExitCode::FAILURE;
        }
    };
    let broker_config = A::broker_config(&config);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            crate::telemetry::init(&broker_config.log);
            let metrics = Metrics::new();
            let broker = match A::build(&config, &metrics) {
                Ok(broker) => broker,
                Err(e) => {
                    eprintln!("loading config: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let running = crate::server::start(broker_config, broker, metrics).await;
            // The running broker keeps what it needs of the config's secrets in its own form:
            // the platforms' passwords only as digests, the keys in the sealer, the store's URL
            // in its pool, a backend's credentials in the broker. The config's own copies go
            // now, zeroed (SecretString does on drop), rather than live as long as the process.
            // Not every copy: a secret given in the environment stays there, and the buffers
            // it was parsed through were freed as they were.
            drop(config);
            match async { running?.wait().await }.await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("stopped: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig => {
            quiet_logs();
            let problems = check::<A>(&config).await;
            for problem in &problems {
                println!("{problem}");
            }
            if problems.is_empty() {
                println!("ok");
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Orphans {
            older_than,
            delete,
            json,
            force,
        } => {
            quiet_logs();
            match sweep::<A>(&config, older_than, delete && !force, delete, json).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Commands other than `serve` print their own results; only warnings go to the log.
fn quiet_logs() {
    crate::telemetry::init(&LogConfig {
        format: LogFormat::Pretty,
        level: Some("warn".into()),
    });
}

/// Every problem with the config, the store and the backend servers, one line each.
async fn check<A: App>(config: &A::Config) -> Vec<String> {
    let broker_config = A::broker_config(config);
    let mut problems = Vec::new();
    if let Err(e) = broker_config.validate() {
        problems.push(e.to_string());
    }
    if let Err(e) = CatalogIndex::new(broker_config.catalog.clone()) {
        problems.push(e.to_string());
    }
    let previous: Vec<_> = broker_config
        .previous_encryption_keys
        .iter()
        .map(|k| k.0.clone())
        .collect();
    if let Err(e) = Sealer::new(&broker_config.encryption_key.0, &previous) {
        problems.push(e.to_string());
    }
    let url = secrecy::ExposeSecret::expose_secret(&broker_config.store.url.0);
    let store = match Store::open_existing(url).await {
        Ok(store) => Some(store),
        // A store the broker has not started on yet is no problem: it makes its tables then.
        Err(StoreError::NotSetUp(_)) => None,
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    match A::build(config, &Metrics::new()) {
        Ok(broker) => {
            if let (Some(claims), Some(store)) = (broker.claims(), &store) {
                claims.attach(store);
            }
            problems.extend(broker.check_backends().await);
        }
        Err(e) => problems.push(e.to_string()),
    }
    problems
}

/// Lists (and with `delete` removes) orphans; `careful` refuses to delete when the store looks
/// like the wrong one.
async fn sweep<A: App>(
    config: &A::Config,
    older_than: Duration,
    careful: bool,
    delete: bool,
    json: bool,
) -> Result<(), String> {
    let broker_config = A::broker_config(config);
    let url = secrecy::ExposeSecret::expose_secret(&broker_config.store.url.0);
    let store = Store::open_existing(url).await.map_err(|e| e.to_string())?;
    let broker = A::build(config, &Metrics::new()).map_err(|e| e.to_string())?;
    if let Some(claims) = broker.claims() {
        claims.attach(&store);
    }
    let age = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
    let found = orphans::find(&broker, &store, age)
        .await
        .map_err(|e| e.to_string())?;
    if careful {
        let removable = found.orphans.iter().filter(|o| o.removable).count();
        let instances = store.count_instances().await.map_err(|e| e.to_string())?;
        if removable > 0 && (instances == 0 || removable * 2 > found.marked) {
            return Err(format!(
                "refusing to delete {removable} of {} marked objects with {instances} instances in the store: is --config the right store? (--force deletes anyway)",
                found.marked
            ));
        }
    }
    let mut listed: Vec<(Orphan, Option<String>)> = Vec::new();
    for orphan in found.orphans {
        let outcome = if delete && orphan.removable {
            // A retried request may have claimed it since it was listed.
            Some(match orphans::is_claimed(&store, &orphan.object).await {
                Ok(true) => "claimed again; kept".to_owned(),
                Ok(false) => match broker.remove_object(&orphan.object).await {
                    Ok(()) => "removed".to_owned(),
                    Err(e) => format!("not removed: {e}"),
                },
                Err(e) => format!("not removed: {e}"),
            })
        } else {
            None
        };
        listed.push((orphan, outcome));
    }
    if json {
        let rows: Vec<serde_json::Value> = listed
            .iter()
            .map(|(orphan, outcome)| {
                let mut row = serde_json::to_value(orphan).unwrap_or_default();
                if let Some(outcome) = outcome {
                    row["outcome"] = outcome.as_str().into();
                }
                row
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        println!("KIND\tNAME\tWHERE\tMADE FOR\tREMOVABLE\tOUTCOME");
        for (orphan, outcome) in &listed {
            let object = &orphan.object;
            let made_for = match &object.claim {
                Claim::Instance { platform, id } => format!("instance {platform}/{id}"),
                Claim::Binding { platform, id } => format!("binding {platform}/{id}"),
                Claim::Unmarked => "unmarked".to_owned(),
            };
            println!(
                "{}\t{}\t{}\t{made_for}\t{}\t{}",
                object.kind,
                object.name,
                object.location,
                orphan.removable,
                outcome.as_deref().unwrap_or("-")
            );
        }
    }
    let failed = listed.iter().any(|(_, outcome)| {
        outcome
            .as_deref()
            .is_some_and(|o| o.starts_with("not removed"))
    });
    if failed {
        return Err("some orphans could not be removed".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_take_the_usual_units() {
        assert_eq!(parse_age("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_age("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_age("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_age("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_age("0").unwrap(), Duration::ZERO);
        assert!(parse_age("1w").is_err());
        assert!(parse_age("h").is_err());
    }
}
