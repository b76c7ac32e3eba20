//! How `redis` errors become [`BrokerError`]s. As in every broker: only failing to reach the
//! server or to log in before any command was sent is `Unavailable` (503, nothing changed);
//! an error once a command has been sent is a failure, since the command may have run.

use osb_core::BrokerError;
use redis::RedisError;

/// A command failed: something may have changed. The server's own words are kept; they name
/// commands and keys, never passwords.
pub fn failed(err: RedisError) -> BrokerError {
    BrokerError::Failed(format!("Redis: {err}"))
}

/// The server could not be reached or refused the broker's login: nothing was done.
pub fn unreachable(server: &str, err: &RedisError) -> BrokerError {
    if err.kind() == redis::ErrorKind::AuthenticationFailed {
        BrokerError::Unavailable(format!("Redis {server} refused the broker's admin login"))
    } else {
        BrokerError::Unavailable(format!("Redis {server} unreachable"))
    }
}
