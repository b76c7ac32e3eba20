//! Every failure the OSB API can report, and its one mapping to status code and error body.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::broker::BrokerError;
use crate::store::StoreError;

/// An error answered to the platform: status code plus the spec's `{"error", "description"}`.
#[derive(Debug, thiserror::Error)]
pub enum OsbError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication failed")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the resource does not exist")]
    Gone,
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("the request body is larger than the {0} bytes this broker accepts")]
    PayloadTooLarge(usize),
    #[error("this service plan requires client support for asynchronous service operations")]
    AsyncRequired,
    #[error("{0}")]
    Concurrency(String),
    #[error("{0}")]
    RequiresApp(String),
    #[error("{0}")]
    MaintenanceInfoConflict(String),
    #[error("{description}")]
    Unprocessable {
        description: String,
        /// Only for failed updates and deprovisions, as the spec allows.
        instance_usable: Option<bool>,
        update_repeatable: Option<bool>,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// An update or deprovision that failed part-way (500): the spec wants 4xx to mean
    /// "unchanged", so this is a 5xx that says how usable the instance is.
    #[error("{description}")]
    PartlyDone {
        description: String,
        instance_usable: Option<bool>,
        update_repeatable: Option<bool>,
    },
}

/// The OSB error body.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_usable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_repeatable: Option<bool>,
}

impl OsbError {
    /// The spec's camel-case error code, where it defines one.
    pub fn code(&self) -> Option<&'static str> {
        Some(match self {
            Self::BadRequest(_) => "BadRequest",
            Self::Unauthorized => "Unauthorized",
            Self::NotFound(_) => "NotFound",
            Self::MethodNotAllowed(_) => "MethodNotAllowed",
            Self::Conflict(_) => "Conflict",
            Self::Gone => return None,
            Self::PreconditionFailed(_) => "PreconditionFailed",
            Self::PayloadTooLarge(_) => "PayloadTooLarge",
            Self::AsyncRequired => "AsyncRequired",
            Self::Concurrency(_) => "ConcurrencyError",
            Self::RequiresApp(_) => "RequiresApp",
            Self::MaintenanceInfoConflict(_) => "MaintenanceInfoConflict",
            Self::Unprocessable { .. } => "UnprocessableEntity",
            Self::Unavailable(_) => "ServiceUnavailable",
            Self::Internal(_) | Self::PartlyDone { .. } => "InternalError",
        })
    }

    pub fn body(&self) -> ErrorBody {
        let (instance_usable, update_repeatable) = match self {
            Self::Unprocessable {
                instance_usable,
                update_repeatable,
                ..
            }
            | Self::PartlyDone {
                instance_usable,
                update_repeatable,
                ..
            } => (*instance_usable, *update_repeatable),
            _ => (None, None),
        };
        let description = match self.to_string() {
            // The spec's error bodies always explain; a backend that said nothing still gets one.
            empty if empty.trim().is_empty() => format!(
                "the request failed ({})",
                self.code().unwrap_or("no error code")
            ),
            text => text,
        };
        ErrorBody {
            error: self.code(),
            description,
            instance_usable,
            update_repeatable,
        }
    }
}

impl ResponseError for OsbError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Gone => StatusCode::GONE,
            Self::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::AsyncRequired
            | Self::Concurrency(_)
            | Self::RequiresApp(_)
            | Self::MaintenanceInfoConflict(_)
            | Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) | Self::PartlyDone { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, Self::Unauthorized) {
            response.insert_header(("WWW-Authenticate", "Basic realm=\"osb\""));
        }
        if matches!(self, Self::Gone) {
            // 410 means success to the platform; the spec's body for it is `{}`.
            return response.json(serde_json::json!({}));
        }
        response.json(self.body())
    }
}

impl From<StoreError> for OsbError {
    fn from(err: StoreError) -> Self {
        tracing::error!(error = %err, "state store failure");
        match err {
            StoreError::Unavailable(_) => {
                Self::Unavailable("the broker's state store is unreachable; retry later".into())
            }
            _ => Self::Internal("the broker's state store failed; retry later".into()),
        }
    }
}

impl From<BrokerError> for OsbError {
    fn from(err: BrokerError) -> Self {
        match err {
            BrokerError::InvalidParameters(d) => Self::BadRequest(d),
            BrokerError::RequiresApp(d) => Self::RequiresApp(d),
            // The usability flags belong to update and deprovision errors only; those add them.
            BrokerError::Unprocessable(d) => Self::Unprocessable {
                description: d,
                instance_usable: None,
                update_repeatable: None,
            },
            BrokerError::Conflict(d) => Self::Conflict(d),
            BrokerError::Unavailable(d) => Self::Unavailable(d),
            BrokerError::Failed(d) => Self::Internal(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_error_uses_the_spec_code() {
        let err = OsbError::Concurrency("busy".into());
        assert_eq!(err.status_code(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(err.body().error, Some("ConcurrencyError"));
        assert_eq!(err.body().description, "busy");
    }

    #[test]
    fn an_empty_description_is_replaced() {
        let body = OsbError::Internal(String::new()).body();
        assert!(!body.description.is_empty());
    }

    #[test]
    fn usability_flags_appear_only_when_set() {
        let plain = serde_json::to_value(OsbError::BadRequest("x".into()).body()).unwrap();
        assert!(plain.get("instance_usable").is_none());
        let failed = OsbError::Unprocessable {
            description: "no".into(),
            instance_usable: Some(true),
            update_repeatable: Some(false),
        };
        let body = serde_json::to_value(failed.body()).unwrap();
        assert_eq!(body["update_repeatable"], false);
    }
}
