//! How MySQL driver errors become [`BrokerError`]s.
//!
//! Only failing to get a connection means "nothing changed" (503, and the engine may forget the
//! request). Any error once a statement has been sent is a failure, whatever its kind: a
//! connection that drops mid-statement may have done the statement's work, so the engine must
//! keep the record and let a retry or a delete clean up.

use osb_core::BrokerError;

/// A statement failed: something may have changed.
pub fn failed(err: mysql_async::Error) -> BrokerError {
    match err {
        mysql_async::Error::Server(e) => {
            BrokerError::Failed(format!("MySQL error {}: {}", e.code, e.message))
        }
        other => BrokerError::Failed(format!("MySQL connection failed mid-operation: {other}")),
    }
}

/// No connection could be had: nothing was sent.
pub fn unreachable(server: &str, err: mysql_async::Error) -> BrokerError {
    BrokerError::Unavailable(format!("MySQL server {server:?} unreachable: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_connection_means_nothing_changed() {
        let io = || {
            mysql_async::Error::Io(mysql_async::IoError::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            )))
        };
        assert!(matches!(failed(io()), BrokerError::Failed(_)));
        assert!(matches!(
            unreachable("a", io()),
            BrokerError::Unavailable(_)
        ));
    }
}
