//! What every `/v2` request passes before a handler: a span, basic auth, the API version
//! header, originating identity, and the request identity echoed back.

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::Instrument;

use crate::config::Platform;
use crate::error::OsbError;

pub const API_VERSION: &str = "x-broker-api-version";
pub const REQUEST_IDENTITY: &str = "x-broker-api-request-identity";
pub const ORIGINATING_IDENTITY: &str = "x-broker-api-originating-identity";

/// Oldest 2.x minor version served: 2.13 brought the features the core relies on
/// (`maintenance_info`, instance metadata).
const MIN_MINOR: u32 = 13;

/// The platform a request came in for, put in the request's extensions by [`guard`].
#[derive(Debug, Clone)]
pub struct PlatformName(pub String);

pub async fn guard(
    platform: Arc<Platform>,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let request_id = req
        .headers()
        .get(REQUEST_IDENTITY)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        platform = %platform.name,
        method = %req.method(),
        path = %req.path(),
        instance_id = tracing::field::Empty,
        binding_id = tracing::field::Empty,
    );
    async move {
        // A refusal here is answered here, so that it carries the request identity too.
        let mut res = match authenticate(&req, &platform).and_then(|()| check_version(&req)) {
            Err(refused) => req
                .into_response(actix_web::ResponseError::error_response(&refused))
                .map_into_boxed_body(),
            Ok(()) => {
                log_originating_identity(&req);
                req.extensions_mut()
                    .insert(PlatformName(platform.name.clone()));
                next.call(req).await?.map_into_boxed_body()
            }
        };
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            res.headers_mut()
                .insert(HeaderName::from_static(REQUEST_IDENTITY), value);
        }
        tracing::info!(status = res.status().as_u16(), "answered");
        Ok(res)
    }
    .instrument(span)
    .await
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A platform's basic auth credentials, kept as digests: each request hashes only what it
/// brings (the configured side was hashed again at every request).
#[derive(Clone)]
pub struct Login {
    username: [u8; 32],
    password: [u8; 32],
}

impl Login {
    pub fn new(username: &str, password: &SecretString) -> Self {
        Self {
            username: digest(username.as_bytes()),
            password: digest(password.expose_secret().as_bytes()),
        }
    }

    /// Compared in constant time (hashing first makes the comparison independent of where
    /// the strings differ and of their lengths).
    fn admits(&self, username: &str, password: &str) -> bool {
        let user_ok = digest(username.as_bytes()).ct_eq(&self.username);
        let pass_ok = digest(password.as_bytes()).ct_eq(&self.password);
        bool::from(user_ok & pass_ok)
    }
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Login(..)")
    }
}

/// Basic auth, against the platform's [`Login`].
fn authenticate(req: &ServiceRequest, platform: &Platform) -> Result<(), OsbError> {
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| STANDARD.decode(v.trim()).ok())
        .and_then(|v| String::from_utf8(v).ok());
    let Some(given) = given else {
        tracing::warn!("request without basic auth");
        return Err(OsbError::Unauthorized);
    };
    let (user, pass) = given.split_once(':').unwrap_or((given.as_str(), ""));
    if platform.login.admits(user, pass) {
        Ok(())
    } else {
        tracing::warn!("basic auth failed");
        Err(OsbError::Unauthorized)
    }
}

fn check_version(req: &ServiceRequest) -> Result<(), OsbError> {
    let Some(raw) = req.headers().get(API_VERSION) else {
        return Err(OsbError::BadRequest(
            "the X-Broker-API-Version header is required".into(),
        ));
    };
    let version = raw.to_str().unwrap_or("").trim();
    let supported = version
        .split_once('.')
        .and_then(|(major, minor)| Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?)))
        .is_some_and(|(major, minor)| major == 2 && minor >= MIN_MINOR);
    if supported {
        Ok(())
    } else {
        Err(OsbError::PreconditionFailed(format!(
            "X-Broker-API-Version {version:?} is not supported; use 2.{MIN_MINOR} to 2.17"
        )))
    }
}

/// Logs who acted, for audit. The value is `PLATFORM BASE64(JSON)`.
fn log_originating_identity(req: &ServiceRequest) {
    let Some(raw) = req.headers().get(ORIGINATING_IDENTITY) else {
        return;
    };
    let decoded = raw.to_str().ok().and_then(|v| {
        let (platform, value) = v.split_once(' ')?;
        let json: serde_json::Value =
            serde_json::from_slice(&STANDARD.decode(value.trim()).ok()?).ok()?;
        Some((platform.to_owned(), json))
    });
    match decoded {
        Some((platform, identity)) => {
            tracing::info!(origin_platform = %platform, identity = %identity, "originating identity")
        }
        None => tracing::warn!("malformed X-Broker-API-Originating-Identity header"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn versions_from_2_13_up_are_accepted() {
        for (v, ok) in [
            ("2.17", true),
            ("2.13", true),
            ("2.12", false),
            ("3.0", false),
            ("x", false),
        ] {
            let req = TestRequest::default()
                .insert_header((API_VERSION, v))
                .to_srv_request();
            assert_eq!(check_version(&req).is_ok(), ok, "{v}");
        }
    }

    #[test]
    fn missing_version_is_a_bad_request() {
        let req = TestRequest::default().to_srv_request();
        assert!(matches!(check_version(&req), Err(OsbError::BadRequest(_))));
    }

    #[test]
    fn auth_needs_both_user_and_password() {
        let platform = Platform {
            name: "p".into(),
            prefix: String::new(),
            login: Login::new("user", &"pass".to_owned().into()),
        };
        let with = |cred: &str| {
            TestRequest::default()
                .insert_header((AUTHORIZATION, format!("Basic {}", STANDARD.encode(cred))))
                .to_srv_request()
        };
        assert!(authenticate(&with("user:pass"), &platform).is_ok());
        assert!(authenticate(&with("user:wrong"), &platform).is_err());
        assert!(authenticate(&with("other:pass"), &platform).is_err());
        assert!(authenticate(&TestRequest::default().to_srv_request(), &platform).is_err());
    }
}
