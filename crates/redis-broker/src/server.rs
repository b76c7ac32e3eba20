//! One Redis server the broker administers: its settings, a client for the admin account, and
//! the commands the broker sends as admin.

use std::path::PathBuf;
use std::time::Duration;

use osb_core::BrokerError;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo,
};
use secrecy::ExposeSecret;

use crate::config::{Persistence, PlanConfig, Server};
use crate::errors::{failed, unreachable};
use crate::names::AclUser;

pub struct Admin {
    pub server: Server,
    /// Where the client logs in (`host:port`, or a socket's path), as errors name it.
    address: String,
    client: Client,
}

impl Admin {
    pub fn new(server: &Server) -> Result<Self, String> {
        Self::at(
            server,
            ConnectionAddr::Tcp(server.host.to_string(), server.port),
        )
    }

    /// A client that logs in to `server` through the Unix socket at `path`.
    pub fn over_socket(server: &Server, path: PathBuf) -> Result<Self, String> {
        Self::at(server, ConnectionAddr::Unix(path))
    }

    fn at(server: &Server, at: ConnectionAddr) -> Result<Self, String> {
        let address = match &at {
            ConnectionAddr::Unix(path) => path.display().to_string(),
            _ => server.address(),
        };
        // Always `AUTH user password`: a bare `AUTH password` is an error once `default` has
        // no password, and the broker must still log in to say so.
        let mut redis = RedisConnectionInfo::default()
            .set_username(server.admin_user.as_deref().unwrap_or("default"));
        if let Some(password) = &server.admin_password {
            redis = redis.set_password(password.0.expose_secret());
        }
        let info = at
            .into_connection_info()
            .map_err(|e| format!("Redis {address}: {e}"))?
            .set_redis_settings(redis);
        let client = Client::open(info).map_err(|e| format!("Redis {address}: {e}"))?;
        Ok(Self {
            server: server.clone(),
            address,
            client,
        })
    }

    /// `name (host:port)`, or `name (socket path)`, as errors name the server.
    pub fn label(&self) -> String {
        format!("{} ({})", self.server.name, self.address)
    }

    /// A logged-in admin connection; failing to get one is a 503 that names the server.
    pub async fn conn(&self) -> Result<MultiplexedConnection, BrokerError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(10)))
            .set_response_timeout(Some(Duration::from_secs(30)));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| unreachable(&self.label(), &e))
    }

    /// The admin account's name, which the broker never removes.
    pub fn admin_user(&self) -> &str {
        self.server.admin_user.as_deref().unwrap_or("default")
    }
}

/// `ACL SETUSER user rules...`.
pub async fn set_user(
    conn: &mut MultiplexedConnection,
    user: &AclUser,
    rules: &[String],
) -> Result<(), BrokerError> {
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(user.as_str())
        .arg(rules)
        .exec_async(conn)
        .await
        .map_err(failed)
}

/// Whether ACL user `name` exists.
pub async fn user_exists(
    conn: &mut MultiplexedConnection,
    name: &str,
) -> Result<bool, BrokerError> {
    let found: redis::Value = redis::cmd("ACL")
        .arg("GETUSER")
        .arg(name)
        .query_async(conn)
        .await
        .map_err(failed)?;
    Ok(!matches!(found, redis::Value::Nil))
}

/// Whether user `default` is on without a password: then any client that connects without
/// logging in may do what `default` may (all of it, as Redis ships).
pub async fn default_is_open(conn: &mut MultiplexedConnection) -> Result<bool, BrokerError> {
    let found: redis::Value = redis::cmd("ACL")
        .arg("GETUSER")
        .arg("default")
        .query_async(conn)
        .await
        .map_err(failed)?;
    let pairs: Vec<(String, redis::Value)> = match found {
        redis::Value::Array(items) => items
            .chunks(2)
            .filter_map(|kv| match kv {
                [redis::Value::BulkString(k), v] => {
                    Some((String::from_utf8_lossy(k).into(), v.clone()))
                }
                _ => None,
            })
            .collect(),
        redis::Value::Map(items) => items
            .into_iter()
            .filter_map(|(k, v)| match k {
                redis::Value::BulkString(k) => Some((String::from_utf8_lossy(&k).into(), v)),
                _ => None,
            })
            .collect(),
        _ => return Ok(false),
    };
    let flags: Vec<String> = pairs
        .into_iter()
        .find(|(k, _)| k == "flags")
        .and_then(|(_, v)| redis::from_redis_value(v).ok())
        .unwrap_or_default();
    Ok(flags.iter().any(|f| f == "on") && flags.iter().any(|f| f == "nopass"))
}

/// Ends `name`'s connections, then removes the user (gone already is done).
pub async fn remove_user(conn: &mut MultiplexedConnection, name: &str) -> Result<(), BrokerError> {
    if !user_exists(conn, name).await? {
        return Ok(());
    }
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg(name)
        .exec_async(conn)
        .await
        .or_else(|e| {
            // Between the check and the kill the user may have gone: nothing to end.
            if e.to_string().contains("No such user") {
                Ok(())
            } else {
                Err(failed(e))
            }
        })?;
    redis::cmd("ACL")
        .arg("DELUSER")
        .arg(name)
        .exec_async(conn)
        .await
        .map_err(failed)
}

/// Every ACL user but the admin and `default`.
pub async fn other_users(
    conn: &mut MultiplexedConnection,
    admin: &str,
) -> Result<Vec<String>, BrokerError> {
    let users: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query_async(conn)
        .await
        .map_err(failed)?;
    Ok(users
        .into_iter()
        .filter(|u| u != admin && u != "default")
        .collect())
}

/// Empties a dedicated server: every key, every binding's user (with its connections), every
/// script and function. Users the broker does not name (an operator's exporter or replication
/// account) stay: apps cannot make users, so every other one is the operator's.
pub async fn wipe(conn: &mut MultiplexedConnection, admin: &str) -> Result<(), BrokerError> {
    for user in other_users(conn, admin).await? {
        if AclUser::recorded(&user).is_some() {
            remove_user(conn, &user).await?;
        }
    }
    for command in [
        &["FLUSHALL"][..],
        &["SCRIPT", "FLUSH"],
        &["FUNCTION", "FLUSH"],
    ] {
        redis::cmd(command[0])
            .arg(&command[1..])
            .exec_async(conn)
            .await
            .map_err(failed)?;
    }
    Ok(())
}

/// Sets a dedicated server's memory limit, eviction and persistence from `plan`, live.
pub async fn configure(
    conn: &mut MultiplexedConnection,
    plan: &PlanConfig,
) -> Result<(), BrokerError> {
    let maxmemory = plan
        .maxmemory_mb
        .map_or("0".to_owned(), |mb| format!("{}", mb * 1024 * 1024));
    let (appendonly, save) = match plan.persistence {
        Persistence::None => ("no", ""),
        Persistence::Rdb => ("no", "3600 1 300 100 60 10000"),
        Persistence::Aof => ("yes", "3600 1 300 100 60 10000"),
    };
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(maxmemory)
        .arg("maxmemory-policy")
        .arg(plan.maxmemory_policy.as_str())
        .arg("appendonly")
        .arg(appendonly)
        .arg("save")
        .arg(save)
        .exec_async(conn)
        .await
        .map_err(failed)
}

/// The server's `maxmemory-policy`.
pub async fn eviction_policy(conn: &mut MultiplexedConnection) -> Result<String, BrokerError> {
    let (_, policy): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await
        .map_err(failed)?;
    Ok(policy)
}

/// The names of the modules the server has loaded.
pub async fn modules(conn: &mut MultiplexedConnection) -> Result<Vec<String>, BrokerError> {
    let listed: Vec<Vec<redis::Value>> = redis::cmd("MODULE")
        .arg("LIST")
        .query_async(conn)
        .await
        .map_err(failed)?;
    Ok(listed
        .into_iter()
        .filter_map(|fields| {
            fields.chunks(2).find_map(|kv| match kv {
                [redis::Value::BulkString(k), redis::Value::BulkString(v)] if k == b"name" => {
                    Some(String::from_utf8_lossy(v).into_owned())
                }
                _ => None,
            })
        })
        .collect())
}

/// The server's `used_memory`, in bytes.
pub async fn used_memory(conn: &mut MultiplexedConnection) -> Result<u64, BrokerError> {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .map_err(failed)?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| BrokerError::Failed("Redis INFO memory has no used_memory".into()))
}

/// One `SCAN` step over the keys under `prefix:`: the next cursor (0 at the end) and a batch.
async fn scan_prefix(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    cursor: u64,
) -> Result<(u64, Vec<Vec<u8>>), BrokerError> {
    redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(format!("{prefix}:*"))
        .arg("COUNT")
        .arg(1000)
        .query_async(conn)
        .await
        .map_err(failed)
}

/// Removes every key under `prefix:`, a batch at a time as `SCAN` finds them.
pub async fn remove_prefix(
    conn: &mut MultiplexedConnection,
    prefix: &str,
) -> Result<(), BrokerError> {
    let mut cursor = 0;
    loop {
        let (next, keys) = scan_prefix(conn, prefix, cursor).await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(keys)
                .exec_async(conn)
                .await
                .map_err(failed)?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Whether any key lies under `prefix:`.
pub async fn prefix_used(
    conn: &mut MultiplexedConnection,
    prefix: &str,
) -> Result<bool, BrokerError> {
    let mut cursor = 0;
    loop {
        let (next, keys) = scan_prefix(conn, prefix, cursor).await?;
        if !keys.is_empty() {
            return Ok(true);
        }
        if next == 0 {
            return Ok(false);
        }
        cursor = next;
    }
}
