//! How management API errors become [`BrokerError`]s: only a cluster that no node of answers
//! before anything was asked is `Unavailable` (503); an error once a call was made may have
//! changed something.

use osb_core::BrokerError;
use rabbitmq_http_client::api::HttpClientError;
use rabbitmq_http_client::error::Error;

/// A call failed: something may have changed.
pub fn failed(err: HttpClientError) -> BrokerError {
    match &err {
        Error::ClientErrorResponse { status_code, .. }
        | Error::ServerErrorResponse { status_code, .. } => {
            BrokerError::Failed(format!("RabbitMQ management API answered {status_code}"))
        }
        // The transport error names the management URL: logged, not shown to the platform.
        _ => {
            tracing::warn!(error = %err, "RabbitMQ management API call failed");
            BrokerError::Failed("the RabbitMQ management API failed mid-operation".into())
        }
    }
}

/// Whether the error is the API's 404.
pub fn not_found(err: &HttpClientError) -> bool {
    matches!(err, Error::NotFound)
        || matches!(err, Error::ClientErrorResponse { status_code, .. } if status_code.as_u16() == 404)
}
