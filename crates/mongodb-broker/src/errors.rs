//! How driver errors become [`BrokerError`]s. As in every broker: only failing to reach the
//! server before anything was sent is `Unavailable` (503, nothing changed); an error once a
//! command has been sent is a failure, whatever its kind, since the command may have run.

use mongodb::error::{Error, ErrorKind};
use osb_core::BrokerError;

/// MongoDB's codes the broker reads.
pub const USER_NOT_FOUND: i32 = 11;
pub const USER_EXISTS: i32 = 51003;
pub const DUPLICATE_KEY: i32 = 11000;
pub const ROLE_NOT_FOUND: i32 = 31;
pub const ROLE_EXISTS: i32 = 51002;

/// The server's error code, for a command error.
pub fn code(err: &Error) -> Option<i32> {
    match err.kind.as_ref() {
        ErrorKind::Command(e) => Some(e.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(e)) => Some(e.code),
        _ => None,
    }
}

/// A command failed: something may have changed.
pub fn failed(err: Error) -> BrokerError {
    match err.kind.as_ref() {
        ErrorKind::Command(e) => BrokerError::Failed(format!(
            "MongoDB error {} ({}): {}",
            e.code, e.code_name, e.message
        )),
        _ => BrokerError::Failed(format!("MongoDB connection failed mid-operation: {err}")),
    }
}

/// The server could not be reached or refused the admin login before anything was done (the
/// client's set-up or the `ping` each operation starts with): nothing changed.
pub fn unreachable(server: &str, err: &Error) -> BrokerError {
    match err.kind.as_ref() {
        ErrorKind::Authentication { .. } => {
            BrokerError::Unavailable(format!("MongoDB {server} refused the broker's admin login"))
        }
        _ => BrokerError::Unavailable(format!("MongoDB {server} unreachable")),
    }
}
