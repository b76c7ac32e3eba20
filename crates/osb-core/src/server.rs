//! Assembles a broker: state store, engine, HTTP server with one scope per platform, and the
//! operational endpoints (`/health`, `/ready`, `/metrics`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, Error, HttpResponse, HttpServer, web};
use tokio::task::JoinHandle;

use crate::broker::ServiceBroker;
use crate::catalog::{CatalogError, CatalogIndex};
use crate::config::{BrokerConfig, ConfigError, TlsConfig};
use crate::crypto::{CryptoError, Sealer};
use crate::engine::Engine;
use crate::error::OsbError;
use crate::guard::guard;
use crate::metrics::Metrics;
use crate::routes::{BodyLimit, configure};
use crate::runner::{Runner, Timing};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tls: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A started broker.
pub struct Running {
    pub addr: SocketAddr,
    handle: ServerHandle,
    task: JoinHandle<std::io::Result<()>>,
    runner: Runner,
    drain: Duration,
}

impl Running {
    /// Waits until the server stops (SIGTERM/SIGINT start a graceful shutdown), then for the
    /// operations still running, up to `operations.drain_secs`.
    pub async fn wait(self) -> Result<(), ServeError> {
        let served = self.task.await;
        self.runner.drain(self.drain).await;
        self.runner.shutdown();
        served.map_err(|e| ServeError::Io(std::io::Error::other(e)))??;
        Ok(())
    }

    /// Stops accepting, lets requests and operations in flight finish, then returns.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
        self.runner.drain(self.drain).await;
        self.runner.shutdown();
    }
}

/// Starts the broker and returns once it listens. Call from a multi-threaded Tokio runtime:
/// backend operations run there.
pub async fn start<B: ServiceBroker>(
    config: &BrokerConfig,
    broker: B,
    metrics: Metrics,
) -> Result<Running, ServeError> {
    config.validate()?;
    let platforms = config.platforms()?;
    let mut catalog = CatalogIndex::new(config.catalog.clone())?;
    let previous: Vec<_> = config
        .previous_encryption_keys
        .iter()
        .map(|k| k.0.clone())
        .collect();
    let sealer = Sealer::new(&config.encryption_key.0, &previous)?;
    let store = Store::connect(
        secrecy::ExposeSecret::expose_secret(&config.store.url.0),
        config.store.pool_size,
    )
    .await?;
    tracing::info!(store = store.kind(), "state store ready");
    metrics.watch_store(store.counters());
    if let Some(claims) = broker.claims() {
        claims.attach(&store);
    }
    catalog.first_served(store.catalog_first_served(catalog.etag()).await?);
    let replica = config
        .replica_id
        .clone()
        .unwrap_or_else(|| default_replica_id(&config.listen));
    let ops = config.operations;
    let timing = Timing {
        lease: Duration::from_secs(ops.lease_secs.max(1)),
        heartbeat: Duration::from_secs(ops.heartbeat_secs.max(1)),
        sync_wait: Duration::from_secs(ops.sync_wait_secs),
        upkeep_timeout: Duration::from_secs(ops.upkeep_timeout_secs.max(1)),
        retention: Duration::from_secs(ops.retention_secs.max(1)),
    };
    let runner = Runner::new(replica, metrics.clone());
    let engine = web::Data::new(Engine::new(
        broker,
        catalog,
        store,
        sealer,
        runner.clone(),
        timing,
    ));
    let limit = BodyLimit(config.max_body_bytes);
    let platforms: Vec<_> = platforms.into_iter().map(Arc::new).collect();
    let app_metrics = web::Data::new(metrics);

    let cores = if config.pin_workers {
        let cores = crate::affinity::WorkerCores::new();
        if cores.is_none() {
            tracing::warn!("pin_workers is set, but this process's cores cannot be known");
        }
        cores.map(Arc::new)
    } else {
        None
    };
    let mut server = HttpServer::new(move || {
        // Called on each worker's own thread, once per listening socket; a worker is pinned
        // at its first call.
        if let Some(cores) = &cores {
            cores.pin_this_worker();
        }
        let mut app = App::new()
            .app_data(engine.clone())
            .app_data(app_metrics.clone())
            .app_data(limit)
            .wrap(from_fn(observe))
            .route("/health", web::get().to(health))
            .route("/ready", web::get().to(ready::<B>))
            .route("/metrics", web::get().to(metrics_text));
        for platform in &platforms {
            let p = platform.clone();
            app = app.service(
                web::scope(&platform.prefix)
                    .wrap(from_fn(move |req, next| guard(p.clone(), req, next)))
                    .configure(configure::<B>),
            );
        }
        app.default_service(web::to(|| async {
            actix_web::ResponseError::error_response(&OsbError::NotFound("no such endpoint".into()))
        }))
    })
    .shutdown_timeout(30);
    if let Some(workers) = config.workers {
        server = server.workers(workers.max(1));
    }
    let server = match &config.tls {
        Some(tls) => server.bind_rustls_0_23(&config.listen, tls_config(tls)?),
        None => server.bind(&config.listen),
    }
    .map_err(|source| ServeError::Bind {
        addr: config.listen.clone(),
        source,
    })?;
    let addr = *server
        .addrs()
        .first()
        .ok_or_else(|| ServeError::Tls("server bound no address".into()))?;
    let server = server.run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    tracing::info!(%addr, tls = config.tls.is_some(), "broker listening");
    Ok(Running {
        addr,
        handle,
        task,
        runner,
        drain: Duration::from_secs(ops.drain_secs),
    })
}

/// The host name and the listen port: the same after a restart, so the replica finds its own
/// unfinished operations. A port chosen by the system (`:0`) is new at every start, so such a
/// replica gets a random id instead.
fn default_replica_id(listen: &str) -> String {
    let host: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
        .chars()
        .take(32)
        .collect();
    match listen.rsplit_once(':').map(|(_, port)| port) {
        Some(port) if port != "0" && !port.is_empty() && port.len() <= 5 => {
            format!("{host}:{port}")
        }
        _ => format!(
            "{host}:{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ),
    }
}

fn tls_config(tls: &TlsConfig) -> Result<rustls::ServerConfig, ServeError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| ServeError::Tls(format!("cannot read {}: {e}", path.display())))
    };
    let certs = rustls_pemfile::certs(&mut read(&tls.cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::Tls(format!("bad certificate: {e}")))?;
    let key = rustls_pemfile::private_key(&mut read(&tls.key)?.as_slice())
        .map_err(|e| ServeError::Tls(format!("bad key: {e}")))?
        .ok_or_else(|| ServeError::Tls("no private key in the key file".into()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))
}

/// Counts every request by its route pattern (never the raw path: ids would explode the
/// label set) and status.
async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let method = crate::metrics::method_label(req.method().as_str());
    let result = next.call(req).await;
    if let Some(metrics) = metrics {
        let (route, status) = match &result {
            Ok(res) => (
                res.request()
                    .match_pattern()
                    .unwrap_or_else(|| "unmatched".into()),
                res.status().as_u16(),
            ),
            Err(e) => (
                "unmatched".into(),
                e.as_response_error().status_code().as_u16(),
            ),
        };
        metrics.observe_request(&route, method, status, started.elapsed().as_secs_f64());
    }
    result
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn ready<B: ServiceBroker>(engine: web::Data<Engine<B>>) -> HttpResponse {
    let engine = engine.get_ref().clone();
    let result = engine
        .runner()
        .clone()
        .spawn(async move { engine.ready().await })
        .await;
    // Unauthenticated: say only whether, never why (server names, errors go to the log).
    let why = match result {
        Ok(Ok(())) => return HttpResponse::Ok().json(serde_json::json!({"status": "ready"})),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::warn!(error = %why, "not ready");
    HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "unavailable"}))
}

async fn metrics_text(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics.render())
}
