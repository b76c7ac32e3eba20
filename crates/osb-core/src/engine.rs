//! The OSB rules for every broker: validation, idempotency, concurrency, async bookkeeping and
//! persistence around the [`ServiceBroker`] calls. Knows nothing of HTTP.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::broker::{
    BindInput, BindingView, BrokerError, DeprovisionInput, InstanceView, Mode, Operation,
    ProvisionInput, ServiceBroker, UnbindInput, UpdateInput,
};
use crate::catalog::{CatalogIndex, Plan, SchemaUse, Service};
use crate::credentials::Credentials;
use crate::crypto::Sealer;
use crate::error::OsbError;
use crate::fingerprint::fingerprint;
use crate::ids::{BindingId, InstanceId, OperationId};
use crate::runner::{Runner, Timing};
use crate::store::{
    BindingRow, BindingState, InstanceRow, InstanceState, OperationRow, OperationState, Store,
    StoreError, now_ms,
};
use crate::wire::{
    BindRequest, BindingResponse, DeleteQuery, FetchQuery, InstanceMetadata,
    InstanceOperationResponse, InstanceResponse, LastOperationResponse, LastOperationState,
    OperationResponse, ProvisionRequest, UpdateRequest,
};

/// A successful answer: status code and JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// Seconds the platform should wait before polling again.
    pub retry_after: Option<u64>,
}

impl Reply {
    fn new(status: u16, body: impl Serialize) -> Self {
        Self {
            status,
            body: serde_json::to_value(body).unwrap_or_else(|_| json!({})),
            retry_after: None,
        }
    }
}

/// Who is asking and whether they poll.
#[derive(Debug, Clone)]
pub struct Caller {
    pub platform: String,
    pub accepts_incomplete: bool,
}

/// Shared by every request of every platform. Cheap to clone.
pub struct Engine<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for Engine<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<B> {
    broker: B,
    catalog: CatalogIndex,
    store: Store,
    sealer: Sealer,
    runner: Runner,
    timing: Timing,
}

/// What an operation takes hold of: its instance, or one binding, moving between states.
enum Claim<'a> {
    Instance {
        from: &'a [InstanceState],
        to: InstanceState,
    },
    Binding {
        id: &'a BindingId,
        from: &'a [BindingState],
        to: BindingState,
    },
}

/// An instance row with its JSON columns parsed.
struct Loaded {
    row: InstanceRow,
    id: InstanceId,
    parameters: Map<String, Value>,
    context: Map<String, Value>,
    state: Value,
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn to_text(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

impl Loaded {
    fn new(row: InstanceRow) -> Result<Self, OsbError> {
        Ok(Self {
            id: InstanceId::parse(&row.id)?,
            parameters: parse_json(&row.parameters, "instance parameters")?,
            context: parse_json(&row.context, "instance context")?,
            state: parse_json(&row.broker_state, "instance broker state")?,
            row,
        })
    }

    fn view<'a>(&'a self, service: &'a Service, plan: &'a Plan) -> InstanceView<'a> {
        InstanceView {
            id: &self.id,
            service,
            plan,
            parameters: &self.parameters,
            context: &self.context,
            state: &self.state,
        }
    }
}

fn binding_view(row: &BindingRow) -> Result<BindingView, OsbError> {
    Ok(BindingView {
        id: BindingId::parse(&row.id)?,
        state: parse_json(&row.broker_state, "binding broker state")?,
    })
}

fn concurrency(what: &str) -> OsbError {
    OsbError::Concurrency(format!(
        "another operation on this {what} is in progress; retry when it has finished"
    ))
}

fn accepted(op: &str) -> Reply {
    let mut reply = Reply::new(
        202,
        OperationResponse {
            operation: Some(op.to_owned()),
        },
    );
    reply.retry_after = Some(1);
    reply
}

/// Whether a failure left nothing behind, so the record can go too (the spec wants 4xx and,
/// where possible, 5xx answers to leave the broker's resources unchanged).
fn left_nothing(err: &BrokerError) -> bool {
    !matches!(err, BrokerError::Failed(_))
}

fn require_non_empty(value: &str, field: &str) -> Result<(), OsbError> {
    if value.is_empty() {
        return Err(OsbError::BadRequest(format!(
            "{field} must be a non-empty string"
        )));
    }
    Ok(())
}

fn check_maintenance(
    plan: &Plan,
    requested: Option<&crate::catalog::MaintenanceInfo>,
) -> Result<(), OsbError> {
    let Some(requested) = requested else {
        return Ok(());
    };
    match &plan.maintenance_info {
        Some(current) if current.version == requested.version => Ok(()),
        Some(current) => Err(OsbError::MaintenanceInfoConflict(format!(
            "maintenance_info.version {} does not match the plan's current version {}; fetch the catalog again",
            requested.version, current.version
        ))),
        None => Err(OsbError::MaintenanceInfoConflict(format!(
            "plan {:?} has no maintenance_info, but version {} was requested",
            plan.name, requested.version
        ))),
    }
}

impl<B: ServiceBroker> Engine<B> {
    pub fn new(
        broker: B,
        catalog: CatalogIndex,
        store: Store,
        sealer: Sealer,
        runner: Runner,
        timing: Timing,
    ) -> Self {
        runner.start_maintenance(store.clone(), timing);
        let engine = Self {
            inner: Arc::new(Inner {
                broker,
                catalog,
                store,
                sealer,
                runner,
                timing,
            }),
        };
        if let Some(every) = engine.inner.broker.upkeep_interval() {
            let this = engine.clone();
            engine.inner.runner.spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    if let Err(e) = this.upkeep().await {
                        tracing::warn!(error = %e, "upkeep failed");
                    }
                }
            });
        }
        engine
    }

    /// One pass of the broker's upkeep over every ready instance.
    pub async fn upkeep(&self) -> Result<(), OsbError> {
        let rows = self.inner.store.instances_in(InstanceState::Ready).await?;
        let loaded: Vec<Loaded> = rows
            .into_iter()
            .filter_map(|row| Loaded::new(row).ok())
            .collect();
        let views: Vec<InstanceView<'_>> = loaded
            .iter()
            .filter_map(|l| {
                let (service, plan) = self.inner.catalog.plan(&l.row.plan_id)?;
                Some(l.view(service, plan))
            })
            .collect();
        self.inner
            .broker
            .upkeep(&views)
            .await
            .map_err(OsbError::from)
    }

    pub fn catalog(&self) -> &CatalogIndex {
        &self.inner.catalog
    }

    pub fn runner(&self) -> &Runner {
        &self.inner.runner
    }

    /// Store and backend reachable.
    pub async fn ready(&self) -> Result<(), OsbError> {
        self.inner.store.ping().await?;
        self.inner
            .broker
            .check_ready()
            .await
            .map_err(OsbError::from)
    }

    fn check_mode(&self, op: Operation, plan: &Plan, caller: &Caller) -> Result<Mode, OsbError> {
        let mode = self.inner.broker.mode(op, plan);
        if mode == Mode::Async && !caller.accepts_incomplete {
            return Err(OsbError::AsyncRequired);
        }
        Ok(mode)
    }

    fn plan_of(&self, row_plan: &str) -> Result<(&Service, &Plan), OsbError> {
        self.inner.catalog.plan(row_plan).ok_or_else(|| {
            OsbError::Internal(format!(
                "plan {row_plan:?} of this instance is no longer in the catalog"
            ))
        })
    }

    /// The instance if it exists and belongs to this platform.
    async fn visible_instance(
        &self,
        id: &InstanceId,
        caller: &Caller,
    ) -> Result<Option<InstanceRow>, OsbError> {
        Ok(self
            .inner
            .store
            .instance(id.as_str())
            .await?
            .filter(|row| row.platform == caller.platform))
    }

    async fn new_operation(
        &self,
        caller: &Caller,
        instance: &str,
        binding: Option<&str>,
        kind: Operation,
        fingerprint: &str,
    ) -> Result<OperationRow, OsbError> {
        let now = now_ms();
        let row = OperationRow {
            id: OperationId::generate().to_string(),
            platform: caller.platform.clone(),
            instance_id: instance.to_owned(),
            binding_id: binding.map(str::to_owned),
            kind: kind.as_str().to_owned(),
            state: OperationState::InProgress.as_str().to_owned(),
            fingerprint: fingerprint.to_owned(),
            description: None,
            instance_usable: None,
            update_repeatable: None,
            owner: self.inner.runner.replica().to_owned(),
            heartbeat_at: now,
            created_at: now,
            updated_at: now,
        };
        self.inner.store.insert_operation(&row).await?;
        Ok(row)
    }

    /// Records a new operation and claims its instance or binding for it (atomically against
    /// other requests); `None`, with the record removed, when another request holds it.
    async fn claim(
        &self,
        caller: &Caller,
        id: &InstanceId,
        kind: Operation,
        fingerprint: &str,
        claim: Claim<'_>,
    ) -> Result<Option<OperationRow>, OsbError> {
        let store = &self.inner.store;
        let binding = match &claim {
            Claim::Binding { id, .. } => Some(id.as_str()),
            Claim::Instance { .. } => None,
        };
        let op = self
            .new_operation(caller, id.as_str(), binding, kind, fingerprint)
            .await?;
        let won = match claim {
            Claim::Instance { from, to } => {
                store.claim_instance(id.as_str(), from, to, &op.id).await?
            }
            Claim::Binding { id: bid, from, to } => {
                store.claim_binding(bid.as_str(), from, to, &op.id).await?
            }
        };
        if won {
            Ok(Some(op))
        } else {
            store.delete_operation(&op.id).await?;
            Ok(None)
        }
    }

    /// Runs `work` as operation `op`; a sync caller waits for its reply, an async one gets 202.
    async fn launch<F>(&self, mode: Mode, op: &str, work: F) -> Result<Reply, OsbError>
    where
        F: Future<Output = Result<Reply, OsbError>> + Send + 'static,
    {
        let task = self.inner.runner.spawn_operation(op, work);
        match mode {
            Mode::Async => Ok(accepted(op)),
            Mode::Sync => task
                .await
                .map_err(|e| OsbError::Internal(format!("operation task failed: {e}")))?,
        }
    }

    /// Records that operation `op` succeeded.
    async fn succeeded(&self, op: &str) -> Result<(), StoreError> {
        self.inner
            .store
            .finish_operation(op, OperationState::Succeeded, None, None, None)
            .await
            .map(|_| ())
    }

    /// Records that operation `op` failed with `err` (the usability flags only for updates
    /// and deprovisions, as the spec allows).
    async fn failed(
        &self,
        op: &str,
        err: &BrokerError,
        instance_usable: Option<bool>,
        update_repeatable: Option<bool>,
    ) -> Result<(), StoreError> {
        let description = err.to_string();
        self.inner
            .store
            .finish_operation(
                op,
                OperationState::Failed,
                Some(&description),
                instance_usable,
                update_repeatable,
            )
            .await
            .map(|_| ())
    }

    /// Sleeps a little while an identical request finishes; `false` once the wait is over.
    async fn wait_turn(&self, started: Instant) -> bool {
        if started.elapsed() >= self.inner.timing.sync_wait {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        true
    }

    // ---- provision ---------------------------------------------------------------------

    pub async fn provision(
        &self,
        caller: Caller,
        id: InstanceId,
        req: ProvisionRequest,
    ) -> Result<Reply, OsbError> {
        require_non_empty(&req.organization_guid, "organization_guid")?;
        require_non_empty(&req.space_guid, "space_guid")?;
        let (_, plan) = self.inner.catalog.resolve(&req.service_id, &req.plan_id)?;
        let parameters = req.parameters.clone().unwrap_or_default();
        self.inner
            .catalog
            .validate(plan, SchemaUse::Provision, &parameters)?;
        check_maintenance(plan, req.maintenance_info.as_ref())?;
        let mode = self.check_mode(Operation::Provision, plan, &caller)?;
        let fp = fingerprint(&json!({
            "service_id": req.service_id,
            "plan_id": req.plan_id,
            "organization_guid": req.organization_guid,
            "space_guid": req.space_guid,
            "parameters": parameters,
        }));
        let context = req.context.clone().unwrap_or_default();
        let started = Instant::now();
        loop {
            let op = self
                .new_operation(&caller, id.as_str(), None, Operation::Provision, &fp)
                .await?;
            let now = now_ms();
            let row = InstanceRow {
                id: id.to_string(),
                platform: caller.platform.clone(),
                service_id: req.service_id.clone(),
                plan_id: req.plan_id.clone(),
                fingerprint: fp.clone(),
                state: InstanceState::Provisioning.as_str().into(),
                operation_id: op.id.clone(),
                parameters: to_text(&parameters),
                context: to_text(&context),
                maintenance_version: plan.maintenance_info.as_ref().map(|m| m.version.clone()),
                dashboard_url: None,
                metadata: None,
                broker_state: "null".into(),
                created_at: now,
                updated_at: now,
            };
            if self.inner.store.insert_instance(&row).await? {
                return self.start_provision(mode, row, op.id).await;
            }
            self.inner.store.delete_operation(&op.id).await?;
            let Some(existing) = self.inner.store.instance(id.as_str()).await? else {
                continue; // deleted meanwhile: try again
            };
            if existing.platform != caller.platform || existing.fingerprint != fp {
                return Err(OsbError::Conflict(
                    "a service instance with this id already exists with different attributes"
                        .into(),
                ));
            }
            match existing.state() {
                Some(InstanceState::Ready) => {
                    return Ok(Reply::new(200, instance_body(&existing)?));
                }
                Some(InstanceState::Provisioning) if caller.accepts_incomplete => {
                    return Ok(accepted(&existing.operation_id));
                }
                Some(InstanceState::Provisioning) => {
                    if !self.wait_turn(started).await {
                        return Err(concurrency("service instance"));
                    }
                }
                Some(InstanceState::Failed) => {
                    // A retry of a provision that failed: run it again under a new operation.
                    let claim = Claim::Instance {
                        from: &[InstanceState::Failed],
                        to: InstanceState::Provisioning,
                    };
                    if let Some(op) = self
                        .claim(&caller, &id, Operation::Provision, &fp, claim)
                        .await?
                    {
                        let mut row = existing;
                        row.operation_id = op.id.clone();
                        row.state = InstanceState::Provisioning.as_str().into();
                        return self.start_provision(mode, row, op.id).await;
                    }
                }
                _ => return Err(concurrency("service instance")),
            }
        }
    }

    async fn start_provision(
        &self,
        mode: Mode,
        row: InstanceRow,
        op: String,
    ) -> Result<Reply, OsbError> {
        let engine = self.clone();
        let op_id = op.clone();
        self.launch(mode, &op, async move {
            engine.run_provision(mode, row, op_id).await
        })
        .await
    }

    async fn run_provision(
        &self,
        mode: Mode,
        mut row: InstanceRow,
        op: String,
    ) -> Result<Reply, OsbError> {
        let store = &self.inner.store;
        let loaded = Loaded::new(row.clone())?;
        let (service, plan) = self.plan_of(&row.plan_id)?;
        let result = self
            .inner
            .broker
            .provision(ProvisionInput {
                instance_id: &loaded.id,
                service,
                plan,
                parameters: &loaded.parameters,
                context: &loaded.context,
            })
            .await;
        match result {
            Ok(done) => {
                row.state = InstanceState::Ready.as_str().into();
                row.dashboard_url = done.dashboard_url;
                row.metadata = done.metadata.filter(|m| !m.is_empty()).map(|m| to_text(&m));
                row.broker_state = to_text(&done.state);
                row.updated_at = now_ms();
                store.save_instance(&row).await?;
                self.succeeded(&op).await?;
                tracing::info!(instance_id = %row.id, plan = %plan.name, "provisioned");
                Ok(Reply::new(201, instance_body(&row)?))
            }
            Err(err) => {
                tracing::warn!(instance_id = %row.id, error = %err, "provision failed");
                if mode == Mode::Sync && left_nothing(&err) {
                    store.delete_instance(&row.id).await?;
                } else {
                    store
                        .release_instance(&row.id, &op, InstanceState::Failed)
                        .await?;
                }
                self.failed(&op, &err, None, None).await?;
                Err(err.into())
            }
        }
    }

    // ---- update ------------------------------------------------------------------------

    pub async fn update(
        &self,
        caller: Caller,
        id: InstanceId,
        req: UpdateRequest,
    ) -> Result<Reply, OsbError> {
        let Some(row) = self.visible_instance(&id, &caller).await? else {
            return Err(OsbError::NotFound("service instance does not exist".into()));
        };
        if req.service_id != row.service_id {
            return Err(OsbError::BadRequest(format!(
                "service_id {:?} is not the service of this instance",
                req.service_id
            )));
        }
        let (service, current) = self.plan_of(&row.plan_id)?;
        let target_id = req.plan_id.clone().unwrap_or_else(|| row.plan_id.clone());
        let (_, target) = self.inner.catalog.resolve(&req.service_id, &target_id)?;
        if target.id != current.id && !current.updateable(service) {
            return Err(OsbError::BadRequest(format!(
                "plan {:?} does not allow plan changes",
                current.name
            )));
        }
        if let Some(params) = &req.parameters {
            self.inner
                .catalog
                .validate(target, SchemaUse::Update, params)?;
        }
        check_maintenance(target, req.maintenance_info.as_ref())?;
        let changes_something = target.id != current.id
            || req.parameters.is_some()
            || req
                .maintenance_info
                .as_ref()
                .is_some_and(|m| row.maintenance_version.as_deref() != Some(m.version.as_str()));
        let context_update =
            req.context.is_some() && service.allow_context_updates.unwrap_or(false);
        if !changes_something && !context_update {
            return Ok(Reply::new(200, json!({})));
        }
        let mode = self.check_mode(Operation::Update, target, &caller)?;
        let fp = fingerprint(&json!({
            "plan_id": target.id,
            "parameters": req.parameters,
            "maintenance_info": req.maintenance_info.as_ref().map(|m| &m.version),
            "context": req.context,
        }));
        let claim = Claim::Instance {
            from: &[InstanceState::Ready],
            to: InstanceState::Updating,
        };
        let Some(op) = self
            .claim(&caller, &id, Operation::Update, &fp, claim)
            .await?
        else {
            // Someone else holds the instance: the same update still running is a retry.
            return match self.inner.store.instance(id.as_str()).await? {
                Some(current) if current.state() == Some(InstanceState::Failed) => {
                    Err(OsbError::Unprocessable {
                        description: "the service instance failed to provision; delete it".into(),
                        instance_usable: Some(false),
                        update_repeatable: Some(false),
                    })
                }
                Some(current)
                    if current.state() == Some(InstanceState::Updating)
                        && caller.accepts_incomplete =>
                {
                    match self.inner.store.operation(&current.operation_id).await? {
                        Some(running) if running.fingerprint == fp => Ok(accepted(&running.id)),
                        _ => Err(concurrency("service instance")),
                    }
                }
                _ => Err(concurrency("service instance")),
            };
        };
        let engine = self.clone();
        let op_id = op.id.clone();
        let target_id = target.id.clone();
        self.launch(mode, &op.id, async move {
            engine.run_update(row, op_id, target_id, req).await
        })
        .await
    }

    async fn run_update(
        &self,
        row: InstanceRow,
        op: String,
        target_id: String,
        req: UpdateRequest,
    ) -> Result<Reply, OsbError> {
        let store = &self.inner.store;
        let loaded = Loaded::new(row)?;
        let (service, current) = self.plan_of(&loaded.row.plan_id)?;
        let (_, target) = self.plan_of(&target_id)?;
        let context = req
            .context
            .clone()
            .unwrap_or_else(|| loaded.context.clone());
        let result = self
            .inner
            .broker
            .update(UpdateInput {
                instance: loaded.view(service, current),
                plan: target,
                parameters: req.parameters.as_ref(),
                context: &context,
            })
            .await;
        // Re-read: the row may have changed columns we do not own (nothing should, but a
        // stale copy must not overwrite them).
        let mut row = store
            .instance(loaded.id.as_str())
            .await?
            .ok_or_else(|| OsbError::Internal("instance vanished during update".into()))?;
        row.state = InstanceState::Ready.as_str().into();
        row.updated_at = now_ms();
        match result {
            Ok(done) => {
                row.plan_id = target.id.clone();
                if let Some(params) = &req.parameters {
                    row.parameters = to_text(params);
                }
                row.context = to_text(&context);
                if let Some(m) = &req.maintenance_info {
                    row.maintenance_version = Some(m.version.clone());
                } else if target.id != current.id {
                    row.maintenance_version =
                        target.maintenance_info.as_ref().map(|m| m.version.clone());
                }
                if done.dashboard_url.is_some() {
                    row.dashboard_url = done.dashboard_url.clone();
                }
                if let Some(m) = done.metadata.as_ref().filter(|m| !m.is_empty()) {
                    row.metadata = Some(to_text(m));
                }
                if let Some(state) = &done.state {
                    row.broker_state = to_text(state);
                }
                store.save_instance(&row).await?;
                self.succeeded(&op).await?;
                tracing::info!(instance_id = %row.id, plan = %target.name, "updated");
                Ok(Reply::new(
                    200,
                    InstanceOperationResponse {
                        dashboard_url: done.dashboard_url,
                        operation: None,
                        metadata: done.metadata,
                    },
                ))
            }
            Err(err) => {
                tracing::warn!(instance_id = %row.id, error = %err, "update failed");
                store.save_instance(&row).await?;
                let repeatable = !matches!(
                    err,
                    BrokerError::Unprocessable(_) | BrokerError::InvalidParameters(_)
                );
                self.failed(&op, &err, Some(true), Some(repeatable)).await?;
                Err(match OsbError::from(err) {
                    OsbError::Internal(description)
                    | OsbError::Unprocessable { description, .. } => OsbError::Unprocessable {
                        description,
                        instance_usable: Some(true),
                        update_repeatable: Some(repeatable),
                    },
                    other => other,
                })
            }
        }
    }

    // ---- deprovision -------------------------------------------------------------------

    pub async fn deprovision(
        &self,
        caller: Caller,
        id: InstanceId,
        query: DeleteQuery,
    ) -> Result<Reply, OsbError> {
        let (service_id, plan_id) = required_ids(&query)?;
        self.inner.catalog.resolve(&service_id, &plan_id)?;
        let started = Instant::now();
        loop {
            let Some(row) = self.visible_instance(&id, &caller).await? else {
                return Err(OsbError::Gone);
            };
            if row.service_id != service_id {
                return Err(OsbError::BadRequest(format!(
                    "service_id {service_id:?} is not the service of this instance"
                )));
            }
            let (_, plan) = self.plan_of(&row.plan_id)?;
            let mode = self.check_mode(Operation::Deprovision, plan, &caller)?;
            let from = match row.state() {
                Some(InstanceState::Deprovisioning) if caller.accepts_incomplete => {
                    return Ok(accepted(&row.operation_id));
                }
                Some(InstanceState::Deprovisioning) => {
                    if !self.wait_turn(started).await {
                        return Err(concurrency("service instance"));
                    }
                    continue;
                }
                Some(state @ (InstanceState::Ready | InstanceState::Failed)) => state,
                _ => return Err(concurrency("service instance")),
            };
            let claim = Claim::Instance {
                from: &[from],
                to: InstanceState::Deprovisioning,
            };
            let Some(op) = self
                .claim(&caller, &id, Operation::Deprovision, "", claim)
                .await?
            else {
                continue;
            };
            // A bind that started before our claim must finish first (it re-checks the instance
            // after writing its row, so one of the two always sees the other).
            if self.inner.store.has_busy_bindings(id.as_str()).await? {
                self.inner
                    .store
                    .release_instance(id.as_str(), &op.id, from)
                    .await?;
                self.inner.store.delete_operation(&op.id).await?;
                return Err(concurrency("service instance"));
            }
            let engine = self.clone();
            let op_id = op.id.clone();
            return self
                .launch(mode, &op.id, async move {
                    engine.run_deprovision(row, op_id, from).await
                })
                .await;
        }
    }

    async fn run_deprovision(
        &self,
        row: InstanceRow,
        op: String,
        from: InstanceState,
    ) -> Result<Reply, OsbError> {
        let store = &self.inner.store;
        let loaded = Loaded::new(row)?;
        let (service, plan) = self.plan_of(&loaded.row.plan_id)?;
        let bindings = store
            .bindings_of(loaded.id.as_str())
            .await?
            .iter()
            .map(binding_view)
            .collect::<Result<Vec<_>, _>>()?;
        let result = self
            .inner
            .broker
            .deprovision(DeprovisionInput {
                instance: loaded.view(service, plan),
                bindings: &bindings,
            })
            .await;
        match result {
            Ok(()) => {
                store.delete_instance(loaded.id.as_str()).await?;
                self.succeeded(&op).await?;
                tracing::info!(instance_id = %loaded.id, "deprovisioned");
                Ok(Reply::new(200, json!({})))
            }
            Err(err) => {
                tracing::warn!(instance_id = %loaded.id, error = %err, "deprovision failed");
                let usable = from == InstanceState::Ready && left_nothing(&err);
                store
                    .release_instance(loaded.id.as_str(), &op, from)
                    .await?;
                self.failed(&op, &err, Some(usable), None).await?;
                Err(match OsbError::from(err) {
                    OsbError::Internal(description) => OsbError::Unprocessable {
                        description,
                        instance_usable: Some(usable),
                        update_repeatable: None,
                    },
                    other => other,
                })
            }
        }
    }

    // ---- bind --------------------------------------------------------------------------

    pub async fn bind(
        &self,
        caller: Caller,
        id: InstanceId,
        binding_id: BindingId,
        req: BindRequest,
    ) -> Result<Reply, OsbError> {
        let Some(instance) = self.visible_instance(&id, &caller).await? else {
            return Err(OsbError::NotFound("service instance does not exist".into()));
        };
        let (service, plan) = self.inner.catalog.resolve(&req.service_id, &req.plan_id)?;
        if service.id != instance.service_id || plan.id != instance.plan_id {
            return Err(OsbError::BadRequest(
                "service_id and plan_id must be those of the service instance".into(),
            ));
        }
        if !plan.bindable(service) {
            return Err(OsbError::BadRequest(format!(
                "plan {:?} is not bindable",
                plan.name
            )));
        }
        let parameters = req.parameters.clone().unwrap_or_default();
        self.inner
            .catalog
            .validate(plan, SchemaUse::Bind, &parameters)?;
        if let Some(app) = &req.app_guid {
            require_non_empty(app, "app_guid")?;
        }
        if let Some(pred) = &req.predecessor_binding_id {
            if !plan.rotatable() {
                return Err(OsbError::BadRequest(format!(
                    "plan {:?} does not support binding rotation",
                    plan.name
                )));
            }
            let ok = self.inner.store.binding(pred).await?.is_some_and(|b| {
                b.instance_id == id.as_str() && b.state() == Some(BindingState::Bound)
            });
            if !ok {
                return Err(OsbError::BadRequest(
                    "predecessor_binding_id must name a live binding of this instance".into(),
                ));
            }
        }
        let mode = self.check_mode(Operation::Bind, plan, &caller)?;
        let fp = fingerprint(&json!({
            "instance_id": id.as_str(),
            "service_id": req.service_id,
            "plan_id": req.plan_id,
            "parameters": parameters,
            "app_guid": req.app_guid,
            "bind_resource": req.bind_resource,
            "predecessor_binding_id": req.predecessor_binding_id,
        }));
        let started = Instant::now();
        loop {
            let op = self
                .new_operation(
                    &caller,
                    id.as_str(),
                    Some(binding_id.as_str()),
                    Operation::Bind,
                    &fp,
                )
                .await?;
            let now = now_ms();
            let row = BindingRow {
                id: binding_id.to_string(),
                instance_id: id.to_string(),
                platform: caller.platform.clone(),
                service_id: req.service_id.clone(),
                plan_id: req.plan_id.clone(),
                fingerprint: fp.clone(),
                state: BindingState::Binding.as_str().into(),
                operation_id: op.id.clone(),
                parameters: to_text(&parameters),
                response: None,
                credentials: None,
                broker_state: "null".into(),
                created_at: now,
                updated_at: now,
            };
            if self.inner.store.insert_binding(&row).await? {
                // Deprovision claims the instance and then looks for busy bindings; we wrote
                // ours and now look at the instance, so one of us always sees the other.
                let usable = self
                    .inner
                    .store
                    .instance(id.as_str())
                    .await?
                    .is_some_and(|i| i.state() == Some(InstanceState::Ready));
                if !usable {
                    self.inner.store.delete_binding(binding_id.as_str()).await?;
                    self.inner.store.delete_operation(&op.id).await?;
                    return Err(concurrency("service instance"));
                }
                return self.start_bind(mode, row, op.id, req).await;
            }
            self.inner.store.delete_operation(&op.id).await?;
            let Some(existing) = self.inner.store.binding(binding_id.as_str()).await? else {
                continue;
            };
            if existing.platform != caller.platform
                || existing.instance_id != id.as_str()
                || existing.fingerprint != fp
            {
                return Err(OsbError::Conflict(
                    "a service binding with this id already exists with different attributes"
                        .into(),
                ));
            }
            match existing.state() {
                Some(BindingState::Bound) => {
                    return Ok(Reply::new(200, self.binding_body(&existing)?));
                }
                Some(BindingState::Binding) if caller.accepts_incomplete => {
                    return Ok(accepted(&existing.operation_id));
                }
                Some(BindingState::Binding) => {
                    if !self.wait_turn(started).await {
                        return Err(concurrency("service binding"));
                    }
                }
                Some(BindingState::Failed) => {
                    let claim = Claim::Binding {
                        id: &binding_id,
                        from: &[BindingState::Failed],
                        to: BindingState::Binding,
                    };
                    if let Some(op) = self
                        .claim(&caller, &id, Operation::Bind, &fp, claim)
                        .await?
                    {
                        let mut row = existing;
                        row.operation_id = op.id.clone();
                        return self.start_bind(mode, row, op.id, req).await;
                    }
                }
                _ => return Err(concurrency("service binding")),
            }
        }
    }

    async fn start_bind(
        &self,
        mode: Mode,
        row: BindingRow,
        op: String,
        req: BindRequest,
    ) -> Result<Reply, OsbError> {
        let engine = self.clone();
        let op_id = op.clone();
        self.launch(mode, &op, async move {
            engine.run_bind(mode, row, op_id, req).await
        })
        .await
    }

    async fn run_bind(
        &self,
        mode: Mode,
        mut row: BindingRow,
        op: String,
        req: BindRequest,
    ) -> Result<Reply, OsbError> {
        let store = &self.inner.store;
        let instance = store
            .instance(&row.instance_id)
            .await?
            .ok_or_else(|| OsbError::NotFound("service instance does not exist".into()))?;
        let loaded = Loaded::new(instance)?;
        let (service, plan) = self.plan_of(&loaded.row.plan_id)?;
        let binding_id = BindingId::parse(&row.id)?;
        let predecessor = match &req.predecessor_binding_id {
            Some(p) => store
                .binding(p)
                .await?
                .as_ref()
                .map(binding_view)
                .transpose()?,
            None => None,
        };
        let parameters = req.parameters.clone().unwrap_or_default();
        let mut bind_resource = req.bind_resource.clone();
        if let (Some(app), None) = (
            &req.app_guid,
            bind_resource.as_ref().and_then(|r| r.app_guid.as_ref()),
        ) {
            bind_resource.get_or_insert_with(Default::default).app_guid = Some(app.clone());
        }
        let context = req.context.clone().unwrap_or_default();
        let result = self
            .inner
            .broker
            .bind(BindInput {
                instance: loaded.view(service, plan),
                binding_id: &binding_id,
                parameters: &parameters,
                bind_resource: bind_resource.as_ref(),
                context: &context,
                predecessor: predecessor.as_ref(),
            })
            .await;
        match result {
            Ok(bound) => {
                let response = BindingResponse {
                    metadata: bound.metadata,
                    credentials: None,
                    syslog_drain_url: bound.syslog_drain_url,
                    route_service_url: bound.route_service_url,
                    volume_mounts: bound.volume_mounts,
                    endpoints: bound.endpoints,
                    parameters: None,
                };
                let credentials = bound.credentials.into_map();
                row.state = BindingState::Bound.as_str().into();
                row.response = Some(to_text(&response));
                row.credentials = Some(self.inner.sealer.seal(to_text(&credentials).as_bytes()));
                row.broker_state = to_text(&bound.state);
                row.updated_at = now_ms();
                store.save_binding(&row).await?;
                self.succeeded(&op).await?;
                tracing::info!(instance_id = %row.instance_id, binding_id = %row.id, "bound");
                let mut body = serde_json::to_value(&response).unwrap_or_else(|_| json!({}));
                body["credentials"] = Value::Object(credentials);
                Ok(Reply::new(201, body))
            }
            Err(err) => {
                tracing::warn!(binding_id = %row.id, error = %err, "bind failed");
                if mode == Mode::Sync && left_nothing(&err) {
                    store.delete_binding(&row.id).await?;
                } else {
                    store
                        .release_binding(&row.id, &op, BindingState::Failed)
                        .await?;
                }
                self.failed(&op, &err, None, None).await?;
                Err(err.into())
            }
        }
    }

    fn binding_body(&self, row: &BindingRow) -> Result<Value, OsbError> {
        let mut body: Value = match &row.response {
            Some(text) => parse_json(text, "binding response")?,
            None => json!({}),
        };
        if let Some(sealed) = &row.credentials {
            let plain = self.inner.sealer.open(sealed).map_err(|e| {
                tracing::error!(binding_id = %row.id, error = %e, "cannot open binding credentials");
                OsbError::Internal("binding credentials cannot be decrypted".into())
            })?;
            let credentials: Map<String, Value> = serde_json::from_slice(&plain)
                .map_err(|e| StoreError::Corrupt(format!("binding credentials: {e}")))?;
            body["credentials"] = Value::Object(Credentials::from_map(credentials).into_map());
        }
        Ok(body)
    }

    // ---- unbind ------------------------------------------------------------------------

    pub async fn unbind(
        &self,
        caller: Caller,
        id: InstanceId,
        binding_id: BindingId,
        query: DeleteQuery,
    ) -> Result<Reply, OsbError> {
        let (service_id, plan_id) = required_ids(&query)?;
        self.inner.catalog.resolve(&service_id, &plan_id)?;
        let started = Instant::now();
        loop {
            let Some(instance) = self.visible_instance(&id, &caller).await? else {
                return Err(OsbError::Gone);
            };
            let Some(row) = self
                .inner
                .store
                .binding(binding_id.as_str())
                .await?
                .filter(|b| b.instance_id == id.as_str() && b.platform == caller.platform)
            else {
                return Err(OsbError::Gone);
            };
            let (_, plan) = self.plan_of(&instance.plan_id)?;
            let mode = self.check_mode(Operation::Unbind, plan, &caller)?;
            let from = match row.state() {
                Some(BindingState::Unbinding) if caller.accepts_incomplete => {
                    return Ok(accepted(&row.operation_id));
                }
                Some(BindingState::Unbinding) => {
                    if !self.wait_turn(started).await {
                        return Err(concurrency("service binding"));
                    }
                    continue;
                }
                Some(state @ (BindingState::Bound | BindingState::Failed)) => state,
                _ => return Err(concurrency("service binding")),
            };
            let claim = Claim::Binding {
                id: &binding_id,
                from: &[from],
                to: BindingState::Unbinding,
            };
            let Some(op) = self
                .claim(&caller, &id, Operation::Unbind, "", claim)
                .await?
            else {
                continue;
            };
            let engine = self.clone();
            let op_id = op.id.clone();
            return self
                .launch(mode, &op.id, async move {
                    engine.run_unbind(instance, row, op_id, from).await
                })
                .await;
        }
    }

    async fn run_unbind(
        &self,
        instance: InstanceRow,
        row: BindingRow,
        op: String,
        from: BindingState,
    ) -> Result<Reply, OsbError> {
        let store = &self.inner.store;
        let loaded = Loaded::new(instance)?;
        let (service, plan) = self.plan_of(&loaded.row.plan_id)?;
        let binding = binding_view(&row)?;
        let result = self
            .inner
            .broker
            .unbind(UnbindInput {
                instance: loaded.view(service, plan),
                binding: &binding,
            })
            .await;
        match result {
            Ok(()) => {
                store.delete_binding(&row.id).await?;
                self.succeeded(&op).await?;
                tracing::info!(instance_id = %row.instance_id, binding_id = %row.id, "unbound");
                Ok(Reply::new(200, json!({})))
            }
            Err(err) => {
                tracing::warn!(binding_id = %row.id, error = %err, "unbind failed");
                store.release_binding(&row.id, &op, from).await?;
                self.failed(&op, &err, None, None).await?;
                Err(err.into())
            }
        }
    }

    // ---- fetch -------------------------------------------------------------------------

    pub async fn fetch_instance(&self, caller: Caller, id: InstanceId) -> Result<Reply, OsbError> {
        let row = self
            .visible_instance(&id, &caller)
            .await?
            .ok_or_else(|| OsbError::NotFound("service instance does not exist".into()))?;
        match row.state() {
            Some(InstanceState::Ready | InstanceState::Deprovisioning) => {}
            Some(InstanceState::Updating) => return Err(concurrency("service instance")),
            _ => {
                return Err(OsbError::NotFound(
                    "service instance does not exist or is not yet provisioned".into(),
                ));
            }
        }
        let loaded = Loaded::new(row)?;
        let (service, plan) = self.plan_of(&loaded.row.plan_id)?;
        let mut metadata: Option<InstanceMetadata> = match &loaded.row.metadata {
            Some(text) => Some(parse_json(text, "instance metadata")?),
            None => None,
        };
        // Live facts are a bonus: a backend that is down must not hide what the store knows.
        match self.inner.broker.describe(loaded.view(service, plan)).await {
            Ok(Some(live)) => {
                let m = metadata.get_or_insert_with(Default::default);
                m.labels.extend(live.labels);
                m.attributes.extend(live.attributes);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "live instance facts unavailable"),
        }
        Ok(Reply::new(
            200,
            InstanceResponse {
                service_id: loaded.row.service_id.clone(),
                plan_id: loaded.row.plan_id.clone(),
                dashboard_url: loaded.row.dashboard_url.clone(),
                parameters: loaded.parameters.clone(),
                maintenance_info: loaded.row.maintenance_version.clone().map(|version| {
                    crate::catalog::MaintenanceInfo {
                        version,
                        description: None,
                    }
                }),
                metadata,
            },
        ))
    }

    pub async fn fetch_binding(
        &self,
        caller: Caller,
        id: InstanceId,
        binding_id: BindingId,
    ) -> Result<Reply, OsbError> {
        let row = self
            .inner
            .store
            .binding(binding_id.as_str())
            .await?
            .filter(|b| b.instance_id == id.as_str() && b.platform == caller.platform)
            .filter(|b| b.state() == Some(BindingState::Bound))
            .ok_or_else(|| OsbError::NotFound("service binding does not exist".into()))?;
        let mut body = self.binding_body(&row)?;
        body["parameters"] = Value::Object(parse_json(&row.parameters, "binding parameters")?);
        Ok(Reply::new(200, body))
    }

    // ---- last_operation ----------------------------------------------------------------

    pub async fn instance_last_operation(
        &self,
        caller: Caller,
        id: InstanceId,
        query: FetchQuery,
    ) -> Result<Reply, OsbError> {
        let instance = self.visible_instance(&id, &caller).await?;
        self.last_operation(&caller, &id, None, instance.map(|i| i.operation_id), query)
            .await
    }

    pub async fn binding_last_operation(
        &self,
        caller: Caller,
        id: InstanceId,
        binding_id: BindingId,
        query: FetchQuery,
    ) -> Result<Reply, OsbError> {
        let binding = self
            .inner
            .store
            .binding(binding_id.as_str())
            .await?
            .filter(|b| b.instance_id == id.as_str() && b.platform == caller.platform);
        self.last_operation(
            &caller,
            &id,
            Some(&binding_id),
            binding.map(|b| b.operation_id),
            query,
        )
        .await
    }

    async fn last_operation(
        &self,
        caller: &Caller,
        id: &InstanceId,
        binding: Option<&BindingId>,
        current: Option<String>,
        query: FetchQuery,
    ) -> Result<Reply, OsbError> {
        let store = &self.inner.store;
        let belongs = |op: &OperationRow| {
            op.platform == caller.platform
                && op.instance_id == id.as_str()
                && op.binding_id.as_deref() == binding.map(|b| b.as_str())
        };
        let requested = match &query.operation {
            Some(op) => {
                let op_id = OperationId::parse(op)?;
                store.operation(op_id.as_str()).await?.filter(belongs)
            }
            None => None,
        };
        let exists = current.is_some();
        let op = match (requested, current) {
            (Some(op), _) => Some(op),
            (None, Some(current)) => store.operation(&current).await?,
            (None, None) => store
                .latest_operation(id.as_str(), binding.map(|b| b.as_str()))
                .await?
                .filter(belongs),
        };
        let Some(op) = op else {
            return Err(OsbError::NotFound(if binding.is_some() {
                "service binding does not exist".into()
            } else {
                "service instance does not exist".into()
            }));
        };
        let kind = Operation::parse(&op.kind);
        let state = op.state();
        if !exists
            && state == Some(OperationState::Succeeded)
            && matches!(kind, Some(Operation::Deprovision | Operation::Unbind))
        {
            return Err(OsbError::Gone);
        }
        if !exists && query.operation.is_none() {
            return Err(OsbError::NotFound("the resource does not exist".into()));
        }
        let failed = state == Some(OperationState::Failed);
        let mut reply = Reply::new(
            200,
            LastOperationResponse {
                state: match state {
                    Some(OperationState::Succeeded) => LastOperationState::Succeeded,
                    Some(OperationState::Failed) => LastOperationState::Failed,
                    _ => LastOperationState::InProgress,
                },
                description: op.description.clone().filter(|d| !d.is_empty()),
                instance_usable: op.instance_usable.filter(|_| failed),
                update_repeatable: op.update_repeatable.filter(|_| failed),
            },
        );
        if state == Some(OperationState::InProgress) {
            reply.retry_after = Some(1);
        }
        Ok(reply)
    }
}

fn required_ids(query: &DeleteQuery) -> Result<(String, String), OsbError> {
    match (&query.service_id, &query.plan_id) {
        (Some(s), Some(p)) if !s.is_empty() && !p.is_empty() => Ok((s.clone(), p.clone())),
        _ => Err(OsbError::BadRequest(
            "query parameters service_id and plan_id are required".into(),
        )),
    }
}

fn instance_body(row: &InstanceRow) -> Result<InstanceOperationResponse, OsbError> {
    Ok(InstanceOperationResponse {
        dashboard_url: row.dashboard_url.clone(),
        operation: None,
        metadata: match &row.metadata {
            Some(text) => Some(parse_json(text, "instance metadata")?),
            None => None,
        },
    })
}
