//! The OSB endpoints. Extractors turn a request into typed, validated values (or the OSB
//! error for the bad part); each handler hands them to the [`Engine`].

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, web};
use futures::StreamExt;
use futures::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use crate::broker::ServiceBroker;
use crate::engine::{Caller, Engine, Reply};
use crate::error::OsbError;
use crate::guard::PlatformName;
use crate::ids::{BindingId, InstanceId};
use crate::wire::{
    AsyncQuery, BindRequest, DeleteQuery, FetchQuery, ProvisionRequest, UpdateRequest,
};

/// Largest body, set once per app.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Registers the `/v2` routes on a platform's scope. An instance's routes share one scope, so
/// that its id is matched once and a binding's path is not first tried against each instance
/// route: actix matches a route with a regex at every route it tries, which was 4% of a `GET`
/// binding's CPU time.
pub fn configure<B: ServiceBroker>(cfg: &mut web::ServiceConfig) {
    const BINDING: &str = "/service_bindings/{binding_id}";
    cfg.service(resource("/v2/catalog").route(web::get().to(catalog::<B>)))
        .service(
            web::scope("/v2/service_instances/{instance_id}")
                .service(
                    resource("")
                        .route(web::put().to(provision::<B>))
                        .route(web::patch().to(update::<B>))
                        .route(web::delete().to(deprovision::<B>))
                        .route(web::get().to(fetch_instance::<B>)),
                )
                .service(
                    resource("/last_operation").route(web::get().to(instance_last_operation::<B>)),
                )
                .service(
                    resource(BINDING)
                        .route(web::put().to(bind::<B>))
                        .route(web::delete().to(unbind::<B>))
                        .route(web::get().to(fetch_binding::<B>)),
                )
                .service(
                    resource(&format!("{BINDING}/last_operation"))
                        .route(web::get().to(binding_last_operation::<B>)),
                ),
        );
}

/// A resource whose unsupported methods get an OSB error body, not an empty 405.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(|req: HttpRequest| async move {
        actix_web::ResponseError::error_response(&OsbError::MethodNotAllowed(format!(
            "{} is not supported on this endpoint",
            req.method()
        )))
    }))
}

fn query<T: DeserializeOwned>(req: &HttpRequest) -> Result<T, OsbError> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| OsbError::BadRequest(format!("invalid query string: {e}")))
}

/// The platform (from the guard) and whether it accepts asynchronous answers.
impl FromRequest for Caller {
    type Error = OsbError;
    type Future = Ready<Result<Self, OsbError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready((|| {
            let platform = req
                .extensions()
                .get::<PlatformName>()
                .map(|p| p.0.clone())
                .ok_or_else(|| {
                    OsbError::Internal("request reached a handler without a platform".into())
                })?;
            let accepts_incomplete = match query::<AsyncQuery>(req)?.accepts_incomplete.as_deref() {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => {
                    return Err(OsbError::BadRequest(format!(
                        "accepts_incomplete must be true or false, not {other:?}"
                    )));
                }
            };
            Ok(Caller {
                platform,
                accepts_incomplete,
            })
        })())
    }
}

fn instance_id(req: &HttpRequest) -> Result<InstanceId, OsbError> {
    let id = InstanceId::parse(req.match_info().get("instance_id").unwrap_or(""))?;
    tracing::Span::current().record("instance_id", id.as_str());
    Ok(id)
}

/// `:instance_id` of the route, parsed.
struct InstancePath(InstanceId);

impl FromRequest for InstancePath {
    type Error = OsbError;
    type Future = Ready<Result<Self, OsbError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(instance_id(req).map(Self))
    }
}

/// `:instance_id` and `:binding_id` of the route, parsed.
struct BindingPath(InstanceId, BindingId);

impl FromRequest for BindingPath {
    type Error = OsbError;
    type Future = Ready<Result<Self, OsbError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready((|| {
            let id = instance_id(req)?;
            let bid = BindingId::parse(req.match_info().get("binding_id").unwrap_or(""))?;
            tracing::Span::current().record("binding_id", bid.as_str());
            Ok(Self(id, bid))
        })())
    }
}

/// A typed query string; a bad one is a 400.
struct OsbQuery<T>(T);

impl<T: DeserializeOwned> FromRequest for OsbQuery<T> {
    type Error = OsbError;
    type Future = Ready<Result<Self, OsbError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(query(req).map(Self))
    }
}

/// A JSON body: wrong content type or malformed JSON is a 400 naming the problem, a body over
/// the limit a 413.
struct OsbJson<T>(T);

impl<T: DeserializeOwned + 'static> FromRequest for OsbJson<T> {
    type Error = OsbError;
    type Future = LocalBoxFuture<'static, Result<Self, OsbError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .map(|ct| ct.to_str().unwrap_or("").to_owned());
        let limit = req
            .app_data::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(256 * 1024);
        let mut payload = payload.take();
        Box::pin(async move {
            if let Some(ct) = content_type
                && !ct.starts_with("application/json")
                && !ct.contains("+json")
            {
                return Err(OsbError::BadRequest(format!(
                    "Content-Type must be application/json, not {ct:?}"
                )));
            }
            let mut body = web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk =
                    chunk.map_err(|e| OsbError::BadRequest(format!("cannot read body: {e}")))?;
                if body.len() + chunk.len() > limit {
                    return Err(OsbError::PayloadTooLarge(limit));
                }
                body.extend_from_slice(&chunk);
            }
            serde_json::from_slice(&body)
                .map(Self)
                .map_err(|e| OsbError::BadRequest(format!("invalid request body: {e}")))
        })
    }
}

fn respond(reply: Reply) -> HttpResponse {
    let mut response =
        HttpResponse::build(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK));
    if let Some(secs) = reply.retry_after {
        response.insert_header(("Retry-After", secs.to_string()));
    }
    response
        .content_type(actix_web::http::header::ContentType::json())
        .body(reply.body)
}

/// What a client is told of a request whose work panicked: nothing of the panic's message,
/// which may hold anything (the default panic hook writes it to standard error).
const PANICKED: &str = "the request failed on a fault of the broker's own";

/// The error a panic in a request's work answers with, logged in the request's span so that
/// the log ties it to the request (the panic's own message goes to standard error alone).
fn panicked() -> OsbError {
    tracing::error!("the request's work panicked; answered 500");
    OsbError::Internal(PANICKED.into())
}

/// The answer to a request whose task on the broker runtime ended without one.
fn lost(task: tokio::task::JoinError) -> OsbError {
    if task.is_panic() {
        panicked()
    } else {
        // Only a runtime shutting down cancels a request's task.
        OsbError::Unavailable("the broker is stopping".into())
    }
}

/// Runs the engine's work on the broker runtime (see `Runner::spawn`).
async fn run<B, F, Fut>(engine: &Engine<B>, work: F) -> Result<HttpResponse, OsbError>
where
    B: ServiceBroker,
    F: FnOnce(Engine<B>) -> Fut,
    Fut: Future<Output = Result<Reply, OsbError>> + Send + 'static,
{
    use tracing::Instrument;
    let fut = work(engine.clone()).instrument(tracing::Span::current());
    match engine.runner().spawn(fut).await {
        Ok(done) => done.map(respond),
        Err(task) => Err(lost(task)),
    }
}

/// Runs a read (`GET`, `last_operation`) on the request's own thread: a SQLite store's reader
/// connections run their statements in place and hold no socket, and a network store sends a
/// read's statement from its own runtime (see `store::batch`). So a hang-up that drops the read
/// cuts no statement half way, and a read makes no hop to the broker runtime and back (the
/// hops were most of its cost).
async fn read<B, F, Fut>(engine: &Engine<B>, work: F) -> Result<HttpResponse, OsbError>
where
    B: ServiceBroker,
    F: FnOnce(Engine<B>) -> Fut,
    Fut: Future<Output = Result<Reply, OsbError>>,
{
    unless_panicked(work(engine.clone())).await.map(respond)
}

/// `work`'s answer, or a 500 if it panicked. A panic left to unwind would end the task of the
/// request's connection: the connection closed with no answer at all. Nothing a read holds is
/// left half changed by the unwinding: a SQLite reader goes back to its pool with no statement
/// open (a statement is reset when dropped); a network store's statement runs in its batch's
/// turn, whose own panic takes the connection out of its pool (see `store::Unfinished`); and
/// the batches' queues take a poisoned lock as it is.
async fn unless_panicked<Fut>(work: Fut) -> Result<Reply, OsbError>
where
    Fut: Future<Output = Result<Reply, OsbError>>,
{
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(panicked()))
}

type Data<B> = web::Data<Engine<B>>;
type Answer = Result<HttpResponse, OsbError>;

/// The catalog, with `ETag` and `Last-Modified`; a matching `If-None-Match` (or, without
/// one, `If-Modified-Since`) gets 304, as the spec's caching section allows.
async fn catalog<B: ServiceBroker>(engine: Data<B>, req: HttpRequest) -> HttpResponse {
    use actix_web::http::header::{
        ETag, EntityTag, Header, HttpDate, IfModifiedSince, IfNoneMatch, LastModified,
    };
    let (body, etag, loaded_at) = engine.catalog().served();
    let tag = EntityTag::new_strong(etag.to_owned());
    let modified = HttpDate::from(loaded_at);
    let unchanged = if req.headers().contains_key(IfNoneMatch::name()) {
        match IfNoneMatch::parse(&req) {
            Ok(IfNoneMatch::Any) => true,
            Ok(IfNoneMatch::Items(tags)) => tags.iter().any(|t| t.weak_eq(&tag)),
            Err(_) => false,
        }
    } else {
        IfModifiedSince::parse(&req).is_ok_and(|since| modified <= since.0)
    };
    let mut res = if unchanged {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header(ETag(tag))
        .insert_header(LastModified(modified));
    if unchanged {
        res.finish()
    } else {
        res.content_type("application/json").body(body)
    }
}

async fn provision<B: ServiceBroker>(
    e: Data<B>,
    c: Caller,
    InstancePath(id): InstancePath,
    OsbJson(body): OsbJson<ProvisionRequest>,
) -> Answer {
    run(&e, |e| async move { e.provision(c, id, body).await }).await
}

async fn update<B: ServiceBroker>(
    e: Data<B>,
    c: Caller,
    InstancePath(id): InstancePath,
    OsbJson(body): OsbJson<UpdateRequest>,
) -> Answer {
    run(&e, |e| async move { e.update(c, id, body).await }).await
}

async fn deprovision<B: ServiceBroker>(
    e: Data<B>,
    c: Caller,
    InstancePath(id): InstancePath,
    OsbQuery(q): OsbQuery<DeleteQuery>,
) -> Answer {
    run(&e, |e| async move { e.deprovision(c, id, q).await }).await
}

async fn fetch_instance<B: ServiceBroker>(
    e: Data<B>,
    c: Caller,
    InstancePath(id): InstancePath,
    _: OsbQuery<FetchQuery>,
) -> Answer {
    read(&e, |e| async move { e.fetch_instance(c, id).await }).await
}

async fn instance_last_operation<B: ServiceBroker>(
    e: Data<B>,
    c: Caller,
    InstancePath(id): InstancePath,
    OsbQuery(q): OsbQuery<FetchQuery>,
) -> Answer {
    read(
        &e,
        |e| async move { e.instance_last_operation(c, id, q).await },
    )
    .await
}

async fn bind<B: ServiceBroker>(
    e: Data<B>,
    c: Caller,
    BindingPath(id, bid): BindingPath,
    OsbJson(body): OsbJson<BindRequest>,
) -> Answer {
    run(&e, |e| async move { e.bind(c, id, bid, body).await }).await
}

async fn unbind<B: ServiceBroker>(
    e: Data<B>,
    c: Caller,
    BindingPath(id, bid): BindingPath,
    OsbQuery(q): OsbQuery<DeleteQuery>,
) -> Answer {
    run(&e, |e| async move { e.unbind(c, id, bid, q).await }).await
}

async fn fetch_binding<B: ServiceBroker>(
    e: Data<B>,
    c: Caller,
    BindingPath(id, bid): BindingPath,
    _: OsbQuery<FetchQuery>,
) -> Answer {
    read(&e, |e| async move { e.fetch_binding(c, id, bid).await }).await
}

async fn binding_last_operation<B: ServiceBroker>(
    e: Data<B>,
    c: Caller,
    BindingPath(id, bid): BindingPath,
    OsbQuery(q): OsbQuery<FetchQuery>,
) -> Answer {
    read(&e, |e| async move {
        e.binding_last_operation(c, id, bid, q).await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> Reply {
        Reply {
            status: 200,
            body: b"{}".to_vec(),
            retry_after: None,
        }
    }

    #[tokio::test]
    async fn a_read_that_panics_is_answered_500_without_the_panics_message() {
        let answer = unless_panicked(async {
            if std::hint::black_box(true) {
                panic!("the secret is hunter2");
            }
            Ok(reply())
        })
        .await;
        let error = answer.expect_err("a panic is an error");
        let response = actix_web::ResponseError::error_response(&error);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = error.body();
        assert_eq!(body.error, Some("InternalError"));
        assert!(
            !body.description.contains("hunter2"),
            "{}",
            body.description
        );
    }

    #[tokio::test]
    async fn a_request_task_that_panicked_is_a_500_and_one_cancelled_a_503() {
        let panicked = tokio::spawn(async {
            if std::hint::black_box(true) {
                panic!("the secret is hunter2");
            }
        });
        let error = lost(panicked.await.expect_err("it panicked"));
        assert_eq!(
            actix_web::ResponseError::status_code(&error),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert!(!error.body().description.contains("hunter2"));
        let cancelled = tokio::spawn(std::future::pending::<()>());
        cancelled.abort();
        let error = lost(cancelled.await.expect_err("it was cancelled"));
        assert_eq!(
            actix_web::ResponseError::status_code(&error),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn a_read_that_answers_is_passed_on() {
        let answer = unless_panicked(async { Err(OsbError::NotFound("gone".into())) }).await;
        assert!(matches!(answer, Err(OsbError::NotFound(d)) if d == "gone"));
        let answered = unless_panicked(async { Ok(reply()) }).await;
        assert_eq!(answered.expect("answered").body, b"{}");
    }
}
