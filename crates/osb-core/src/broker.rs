//! The one trait a broker implements: its backend's operations, nothing of HTTP or OSB rules.

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::catalog::{Plan, Service};
use crate::claims::Claims;
use crate::credentials::Credentials;
use crate::ids::{BindingId, InstanceId};
use crate::orphans::BackendObject;
use crate::store::Store;
use crate::wire::{BindResource, BindingMetadata, Endpoint, InstanceMetadata, VolumeMount};

/// What a broker can do; also the `kind` of a recorded operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Provision,
    Update,
    Deprovision,
    Bind,
    Unbind,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provision => "provision",
            Self::Update => "update",
            Self::Deprovision => "deprovision",
            Self::Bind => "bind",
            Self::Unbind => "unbind",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Provision,
            Self::Update,
            Self::Deprovision,
            Self::Bind,
            Self::Unbind,
        ]
        .into_iter()
        .find(|op| op.as_str() == s)
    }
}

/// Whether an operation completes within the request, or runs on and is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answered 200/201 once the backend work is done.
    Sync,
    /// Answered 202 at once; the platform polls `last_operation`. Needs `accepts_incomplete`.
    Async,
    /// Async for a platform that accepts incomplete operations (Cloud Foundry always does),
    /// else within the request: for work quick enough either way.
    Either,
}

/// An existing service instance as the broker sees it.
#[derive(Debug, Clone, Copy)]
pub struct InstanceView<'a> {
    /// The platform that owns the instance; backend names derive from it and the id
    /// ([`crate::naming::NameRule`]).
    pub platform: &'a str,
    pub id: &'a InstanceId,
    pub service: &'a Service,
    pub plan: &'a Plan,
    pub parameters: &'a Map<String, Value>,
    pub context: &'a Map<String, Value>,
    /// What the broker returned when it provisioned or last updated this instance.
    pub state: &'a Value,
}

/// The bindings of the instance an upkeep runs on, read from the store only when asked for
/// (most upkeeps never need them).
pub struct BindingsOf<'a> {
    store: &'a Store,
    instance_id: &'a str,
}

impl<'a> BindingsOf<'a> {
    pub(crate) fn new(store: &'a Store, instance_id: &'a str) -> Self {
        Self { store, instance_id }
    }

    /// Whether the instance is still ready (not being deprovisioned, updated, or gone): what
    /// an upkeep checks again after a write that a concurrent removal must not see undone.
    pub async fn instance_ready(&self) -> Result<bool, BrokerError> {
        let row = self
            .store
            .instance(self.instance_id)
            .await
            .map_err(|e| BrokerError::Failed(e.to_string()))?;
        Ok(row.is_some_and(|r| r.state() == Some(crate::store::InstanceState::Ready)))
    }

    /// Every binding the store knows for the instance, whatever its state.
    pub async fn load(&self) -> Result<Vec<BindingView>, BrokerError> {
        let rows = self
            .store
            .bindings_of(self.instance_id)
            .await
            .map_err(|e| BrokerError::Failed(e.to_string()))?;
        rows.iter()
            .map(|row| {
                crate::engine::binding_view(row).map_err(|e| BrokerError::Failed(e.to_string()))
            })
            .collect()
    }
}

/// An existing binding as the broker sees it.
#[derive(Debug, Clone)]
pub struct BindingView {
    pub id: BindingId,
    /// Bound and not being removed: what upkeep may put back on a server that lost it.
    pub ready: bool,
    /// What the broker returned when it created this binding.
    pub state: Value,
    /// The bind request's parameters (known while the bind still runs, unlike `state`).
    pub parameters: Map<String, Value>,
}

pub struct ProvisionInput<'a> {
    /// The platform asking; backend names derive from it and the id.
    pub platform: &'a str,
    pub instance_id: &'a InstanceId,
    pub service: &'a Service,
    pub plan: &'a Plan,
    pub parameters: &'a Map<String, Value>,
    pub context: &'a Map<String, Value>,
    /// Set when an earlier attempt of this provision failed or died: what it began may be
    /// there already, on any backend server.
    pub retry: bool,
}

pub struct UpdateInput<'a> {
    pub instance: InstanceView<'a>,
    /// The plan after the update (the same plan when only parameters or context change).
    pub plan: &'a Plan,
    /// `None` when the request did not touch parameters: the broker must keep them.
    pub parameters: Option<&'a Map<String, Value>>,
    pub context: &'a Map<String, Value>,
}

pub struct DeprovisionInput<'a> {
    pub instance: InstanceView<'a>,
    /// Every binding the store still knows for the instance, whatever its state.
    pub bindings: &'a [BindingView],
}

pub struct BindInput<'a> {
    pub instance: InstanceView<'a>,
    pub binding_id: &'a BindingId,
    pub parameters: &'a Map<String, Value>,
    pub bind_resource: Option<&'a BindResource>,
    pub context: &'a Map<String, Value>,
    /// Set when the platform rotates a binding.
    pub predecessor: Option<&'a BindingView>,
    /// The instance's bindings, this one included (recorded before the bind runs).
    pub bindings: BindingsOf<'a>,
}

pub struct UnbindInput<'a> {
    pub instance: InstanceView<'a>,
    pub binding: &'a BindingView,
    /// The instance's bindings, this one included: for what other bindings still hold.
    pub bindings: BindingsOf<'a>,
}

/// A provisioned instance.
#[derive(Debug, Default)]
pub struct Provisioned {
    pub dashboard_url: Option<String>,
    pub metadata: Option<InstanceMetadata>,
    /// The broker's own record of the instance (which server it lives on, ...), kept by the
    /// store and handed back on every later call. Never put secrets here.
    pub state: Value,
}

/// An updated instance.
#[derive(Debug, Default)]
pub struct Updated {
    pub dashboard_url: Option<String>,
    pub metadata: Option<InstanceMetadata>,
    /// Replaces the instance's state when `Some`.
    pub state: Option<Value>,
}

/// A created binding.
#[derive(Debug, Default)]
pub struct Bound {
    /// Encrypted at rest by the store; never logged.
    pub credentials: Credentials,
    pub syslog_drain_url: Option<String>,
    pub route_service_url: Option<String>,
    pub volume_mounts: Vec<VolumeMount>,
    pub endpoints: Vec<Endpoint>,
    pub metadata: Option<BindingMetadata>,
    /// The broker's own record of the binding (the user name it made, ...). Never secrets.
    pub state: Value,
}

/// How a backend operation failed. Each broker maps its own errors into these.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The parameters or ids cannot be served by this backend (400).
    #[error("{0}")]
    InvalidParameters(String),
    /// The binding needs an app (422 RequiresApp).
    #[error("{0}")]
    RequiresApp(String),
    /// The change is impossible in the instance's current state, e.g. a downgrade that the
    /// current usage does not fit (422). Repeating it will fail again.
    #[error("{0}")]
    Unprocessable(String),
    /// A backend object under this instance's or binding's name exists and was not made for
    /// it (409); nothing was changed.
    #[error("{0}")]
    Conflict(String),
    /// The backend could not be reached before anything was sent; nothing was changed (503).
    #[error("{0}")]
    Unavailable(String),
    /// The backend failed part-way (500). The description is shown to the user.
    #[error("{0}")]
    Failed(String),
}

impl BrokerError {
    /// This error, met after the operation changed something on the backend: never "nothing
    /// done" (a 503 or 422 lets the engine forget the operation, or put a half-removed
    /// instance back to ready), so those become failures.
    pub fn after_changes(self) -> Self {
        match self {
            BrokerError::Unavailable(why) | BrokerError::Unprocessable(why) => {
                BrokerError::Failed(why)
            }
            e => e,
        }
    }
}

/// A service broker's backend. `osb-core` calls these with validated, typed input once the
/// OSB rules (auth, catalog, idempotency, concurrency, async bookkeeping) are satisfied.
///
/// Every method must be idempotent: after a crash the same call may come again for an
/// instance or binding that was half made.
#[async_trait]
pub trait ServiceBroker: Send + Sync + 'static {
    /// Whether `operation` on `plan` completes within the request. Async operations are
    /// refused with 422 AsyncRequired when the platform does not accept them.
    fn mode(&self, _operation: Operation, _plan: &Plan) -> Mode {
        Mode::Sync
    }

    /// The instance's dashboard, known before the backend work: the spec wants it in the first
    /// answer to a provision, a 202 included. `Provisioned.dashboard_url` may still change it.
    fn dashboard_url(&self, _instance_id: &InstanceId, _plan: &Plan) -> Option<String> {
        None
    }

    async fn provision(&self, input: ProvisionInput<'_>) -> Result<Provisioned, BrokerError>;

    async fn update(&self, input: UpdateInput<'_>) -> Result<Updated, BrokerError>;

    /// Removes the instance and everything its bindings made.
    async fn deprovision(&self, input: DeprovisionInput<'_>) -> Result<(), BrokerError>;

    async fn bind(&self, input: BindInput<'_>) -> Result<Bound, BrokerError>;

    async fn unbind(&self, input: UnbindInput<'_>) -> Result<(), BrokerError>;

    /// How often [`ServiceBroker::upkeep`] runs; `None` (the default) never.
    fn upkeep_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// Called at the start of each upkeep pass with the instances it is to visit, before
    /// [`ServiceBroker::upkeep`] on each: a broker with many instances per backend server reads
    /// here what their upkeep needs, for all of them at once (a query per server rather than
    /// several per instance), and keeps it for the pass. Bounded like one instance's upkeep:
    /// the future may be dropped part way, so what it keeps must be whole at every await. When
    /// it fails or times out, that is logged and counted and the pass goes on, so `upkeep` must
    /// do without what it would have read.
    async fn upkeep_pass(&self, _instances: &[InstanceView<'_>]) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Periodic work on one ready instance (quota enforcement, ...), returning what it measured
    /// (usage against quota, ...): the store keeps it, and `GET` on the instance shows it in
    /// its metadata, so that reads never reach the backend. The engine calls it for every ready
    /// instance, each bounded in time, a failure logged and counted without stopping the pass;
    /// one replica at a time runs passes (a lease in the store). It must be idempotent, as the
    /// lease can move.
    async fn upkeep(
        &self,
        _instance: InstanceView<'_>,
        _bindings: BindingsOf<'_>,
    ) -> Result<Option<InstanceMetadata>, BrokerError> {
        Ok(None)
    }

    /// The broker's claims on items it hands out whole, if it has any: the server attaches
    /// the state store to them.
    fn claims(&self) -> Option<&Claims> {
        None
    }

    /// Whether the backend is reachable, for `GET /ready`.
    async fn check_ready(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// What is wrong with each backend server, one line each (empty when all is well), for
    /// `check-config`. Default: what `check_ready` says.
    async fn check_backends(&self) -> Vec<String> {
        self.check_ready()
            .await
            .err()
            .map(|e| e.to_string())
            .into_iter()
            .collect()
    }

    /// Every backend object the broker made (or that is named like its own), for orphan sweeps.
    async fn objects(&self) -> Result<Vec<BackendObject>, BrokerError> {
        Ok(Vec::new())
    }

    /// Removes an orphan [`ServiceBroker::objects`] listed: only ever one marked as the broker's
    /// whose instance or binding the store no longer has.
    async fn remove_object(&self, object: &BackendObject) -> Result<(), BrokerError> {
        Err(BrokerError::Failed(format!(
            "this broker cannot remove {} {:?}",
            object.kind, object.name
        )))
    }
}
