//! The OSB endpoints: extract, parse into typed values, hand to the [`Engine`], answer.

use actix_web::http::StatusCode;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::broker::ServiceBroker;
use crate::engine::{Caller, Engine, Reply};
use crate::error::OsbError;
use crate::guard::PlatformName;
use crate::ids::{BindingId, InstanceId};
use crate::wire::{AsyncQuery, DeleteQuery, FetchQuery};

/// Largest body, set once per app.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Registers the `/v2` routes on a platform's scope.
pub fn configure<B: ServiceBroker>(cfg: &mut web::ServiceConfig) {
    cfg.route("/v2/catalog", web::get().to(catalog::<B>))
        .service(
            web::resource("/v2/service_instances/{instance_id}")
                .route(web::put().to(provision::<B>))
                .route(web::patch().to(update::<B>))
                .route(web::delete().to(deprovision::<B>))
                .route(web::get().to(fetch_instance::<B>)),
        )
        .route(
            "/v2/service_instances/{instance_id}/last_operation",
            web::get().to(instance_last_operation::<B>),
        )
        .service(
            web::resource("/v2/service_instances/{instance_id}/service_bindings/{binding_id}")
                .route(web::put().to(bind::<B>))
                .route(web::delete().to(unbind::<B>))
                .route(web::get().to(fetch_binding::<B>)),
        )
        .route(
            "/v2/service_instances/{instance_id}/service_bindings/{binding_id}/last_operation",
            web::get().to(binding_last_operation::<B>),
        );
}

fn caller(req: &HttpRequest, accepts_incomplete: Option<&str>) -> Result<Caller, OsbError> {
    let platform = req
        .extensions()
        .get::<PlatformName>()
        .map(|p| p.0.clone())
        .ok_or_else(|| OsbError::Internal("request reached a handler without a platform".into()))?;
    let accepts_incomplete = match accepts_incomplete {
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
}

fn instance_id(req: &HttpRequest) -> Result<InstanceId, OsbError> {
    let id = InstanceId::parse(req.match_info().get("instance_id").unwrap_or(""))?;
    tracing::Span::current().record("instance_id", id.as_str());
    Ok(id)
}

fn binding_id(req: &HttpRequest) -> Result<BindingId, OsbError> {
    let id = BindingId::parse(req.match_info().get("binding_id").unwrap_or(""))?;
    tracing::Span::current().record("binding_id", id.as_str());
    Ok(id)
}

fn query<T: DeserializeOwned>(req: &HttpRequest) -> Result<T, OsbError> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| OsbError::BadRequest(format!("invalid query string: {e}")))
}

/// Reads and parses a JSON body, refusing wrong content types and bodies over the limit.
async fn json_body<T: DeserializeOwned>(
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<T, OsbError> {
    if let Some(ct) = req.headers().get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !ct.starts_with("application/json") && !ct.contains("+json") {
            return Err(OsbError::BadRequest(format!(
                "Content-Type must be application/json, not {ct:?}"
            )));
        }
    }
    let limit = req
        .app_data::<BodyLimit>()
        .map(|l| l.0)
        .unwrap_or(256 * 1024);
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| OsbError::BadRequest(format!("cannot read body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(OsbError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map_err(|e| OsbError::BadRequest(format!("invalid request body: {e}")))
}

fn respond(reply: Reply) -> HttpResponse {
    let mut response =
        HttpResponse::build(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK));
    if let Some(secs) = reply.retry_after {
        response.insert_header(("Retry-After", secs.to_string()));
    }
    response.json(reply.body)
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
    engine
        .runner()
        .spawn(fut)
        .await
        .map_err(|e| OsbError::Internal(format!("request task failed: {e}")))?
        .map(respond)
}

async fn catalog<B: ServiceBroker>(engine: web::Data<Engine<B>>) -> HttpResponse {
    HttpResponse::Ok().json(engine.catalog().catalog())
}

async fn provision<B: ServiceBroker>(
    engine: web::Data<Engine<B>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, OsbError> {
    let id = instance_id(&req)?;
    let q: AsyncQuery = query(&req)?;
    let caller = caller(&req, q.accepts_incomplete.as_deref())?;
    let body = json_body(&req, payload).await?;
    run(
        &engine,
        |e| async move { e.provision(caller, id, body).await },
    )
    .await
}

async fn update<B: ServiceBroker>(
    engine: web::Data<Engine<B>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, OsbError> {
    let id = instance_id(&req)?;
    let q: AsyncQuery = query(&req)?;
    let caller = caller(&req, q.accepts_incomplete.as_deref())?;
    let body = json_body(&req, payload).await?;
    run(&engine, |e| async move { e.update(caller, id, body).await }).await
}

async fn deprovision<B: ServiceBroker>(
    engine: web::Data<Engine<B>>,
    req: HttpRequest,
) -> Result<HttpResponse, OsbError> {
    let id = instance_id(&req)?;
    let q: DeleteQuery = query(&req)?;
    let caller = caller(&req, q.accepts_incomplete.as_deref())?;
    run(
        &engine,
        |e| async move { e.deprovision(caller, id, q).await },
    )
    .await
}

async fn fetch_instance<B: ServiceBroker>(
    engine: web::Data<Engine<B>>,
    req: HttpRequest,
) -> Result<HttpResponse, OsbError> {
    let id = instance_id(&req)?;
    let _hints: FetchQuery = query(&req)?;
    let caller = caller(&req, None)?;
    run(
        &engine,
        |e| async move { e.fetch_instance(caller, id).await },
    )
    .await
}

async fn instance_last_operation<B: ServiceBroker>(
    engine: web::Data<Engine<B>>,
    req: HttpRequest,
) -> Result<HttpResponse, OsbError> {
    let id = instance_id(&req)?;
    let q: FetchQuery = query(&req)?;
    let caller = caller(&req, None)?;
    run(&engine, |e| async move {
        e.instance_last_operation(caller, id, q).await
    })
    .await
}

async fn bind<B: ServiceBroker>(
    engine: web::Data<Engine<B>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, OsbError> {
    let id = instance_id(&req)?;
    let bid = binding_id(&req)?;
    let q: AsyncQuery = query(&req)?;
    let caller = caller(&req, q.accepts_incomplete.as_deref())?;
    let body = json_body(&req, payload).await?;
    run(
        &engine,
        |e| async move { e.bind(caller, id, bid, body).await },
    )
    .await
}

async fn unbind<B: ServiceBroker>(
    engine: web::Data<Engine<B>>,
    req: HttpRequest,
) -> Result<HttpResponse, OsbError> {
    let id = instance_id(&req)?;
    let bid = binding_id(&req)?;
    let q: DeleteQuery = query(&req)?;
    let caller = caller(&req, q.accepts_incomplete.as_deref())?;
    run(
        &engine,
        |e| async move { e.unbind(caller, id, bid, q).await },
    )
    .await
}

async fn fetch_binding<B: ServiceBroker>(
    engine: web::Data<Engine<B>>,
    req: HttpRequest,
) -> Result<HttpResponse, OsbError> {
    let id = instance_id(&req)?;
    let bid = binding_id(&req)?;
    let _hints: FetchQuery = query(&req)?;
    let caller = caller(&req, None)?;
    run(&engine, |e| async move {
        e.fetch_binding(caller, id, bid).await
    })
    .await
}

async fn binding_last_operation<B: ServiceBroker>(
    engine: web::Data<Engine<B>>,
    req: HttpRequest,
) -> Result<HttpResponse, OsbError> {
    let id = instance_id(&req)?;
    let bid = binding_id(&req)?;
    let q: FetchQuery = query(&req)?;
    let caller = caller(&req, None)?;
    run(&engine, |e| async move {
        e.binding_last_operation(caller, id, bid, q).await
    })
    .await
}
