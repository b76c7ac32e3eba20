//! Provision, update and deprovision of service instances.

use super::*;

fn failed_provision() -> OsbError {
    OsbError::Unprocessable {
        description: "the service instance failed to provision; delete it".into(),
        instance_usable: Some(false),
        update_repeatable: Some(false),
    }
}

fn delete_failed() -> OsbError {
    OsbError::Unprocessable {
        description: "a delete of this service instance failed half-way; delete it again".into(),
        instance_usable: Some(false),
        update_repeatable: Some(false),
    }
}

impl<B: ServiceBroker> Engine<B> {
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
            let op = self.new_operation(&caller, id.as_str(), None, &fp, &Redo::Provision);
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
                dashboard_url: self.inner.broker.dashboard_url(&id, plan),
                metadata: None,
                broker_state: "null".into(),
                created_at: now,
                updated_at: now,
            };
            if self
                .inner
                .store
                .start(&op, Start::NewInstance(&row))
                .await?
            {
                return self.start_provision(mode, row, op.id, false).await;
            }
            let Some(existing) = self.inner.store.instance(id.as_str()).await? else {
                continue; // deleted meanwhile: try again
            };
            // The instance as it is now, not only as first asked for: an update since may have
            // changed its plan or parameters, and then the original request differs from it.
            let changed_since = existing.plan_id != req.plan_id
                || parse_json::<Map<String, Value>>(&existing.parameters, "instance parameters")?
                    != parameters;
            if existing.platform != caller.platform || existing.fingerprint != fp || changed_since {
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
                    return Ok(accepted_with(
                        &existing.operation_id,
                        existing.dashboard_url.as_deref(),
                    ));
                }
                Some(InstanceState::Provisioning) => {
                    if !self.wait_turn(started).await {
                        return Err(concurrency("service instance"));
                    }
                }
                Some(InstanceState::Failed) => {
                    // A retry of a provision that failed: run it again under a new operation.
                    let claim = Start::Instance {
                        id: id.as_str(),
                        from: &[InstanceState::Failed],
                        to: InstanceState::Provisioning,
                        previous: &existing.operation_id,
                    };
                    if let Some(op) = self
                        .claim(&caller, &id, &fp, claim, &Redo::Provision)
                        .await?
                    {
                        let mut row = existing;
                        row.operation_id = op.id.clone();
                        row.state = InstanceState::Provisioning.as_str().into();
                        return self.start_provision(mode, row, op.id, true).await;
                    }
                }
                Some(InstanceState::DeleteFailed) => return Err(delete_failed()),
                _ => return Err(concurrency("service instance")),
            }
        }
    }

    /// Runs a provision whose row is now `provisioning`; `retry` when the row was there
    /// already (a failed provision tried again), not made by this request.
    async fn start_provision(
        &self,
        mode: Mode,
        row: InstanceRow,
        op: String,
        retry: bool,
    ) -> Result<Reply, OsbError> {
        let engine = self.clone();
        let op_id = op.clone();
        let dashboard_url = row.dashboard_url.clone();
        self.launch(mode, &op, dashboard_url.as_deref(), async move {
            engine.run_provision(mode, row, op_id, retry).await
        })
        .await
    }

    pub(super) async fn run_provision(
        &self,
        mode: Mode,
        mut row: InstanceRow,
        op: String,
        retry: bool,
    ) -> Result<Reply, OsbError> {
        let store = &self.inner.store;
        let loaded = Loaded::new(row.clone())?;
        let (service, plan) = self.plan_of(&row.plan_id)?;
        let result = self
            .bounded(
                plan,
                self.inner.broker.provision(ProvisionInput {
                    platform: &loaded.row.platform,
                    instance_id: &loaded.id,
                    service,
                    plan,
                    parameters: &loaded.parameters,
                    context: &loaded.context,
                    retry,
                }),
            )
            .await;
        match result {
            Ok(done) => {
                row.state = InstanceState::Ready.as_str().into();
                row.dashboard_url = done.dashboard_url.or(row.dashboard_url.take());
                row.metadata = done.metadata.filter(|m| !m.is_empty()).map(|m| to_text(&m));
                row.broker_state = to_text(&done.state);
                row.updated_at = now_ms();
                if !store
                    .succeed(&op, self.token(), Outcome::SaveInstance(&row))
                    .await?
                {
                    return Err(superseded(&op));
                }
                tracing::info!(instance_id = %row.id, plan = %plan.name, "provisioned");
                Ok(Reply::new(201, instance_body(&row)?))
            }
            Err(err) => {
                tracing::warn!(instance_id = %row.id, error = %err, "provision failed");
                // Only a row this request made may go: a retry's row stands for what an
                // earlier attempt may have left.
                if mode == Mode::Sync && !retry && left_nothing(&err) {
                    store
                        .discard(&op, self.token(), Outcome::DeleteInstance(&row.id))
                        .await?;
                } else {
                    let release = Release::Instance(&row.id, InstanceState::Failed);
                    self.failed(&op, release, &err, None, None).await?;
                }
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
            // "422 ... MUST be returned if the requested change is not supported".
            return Err(OsbError::Unprocessable {
                description: format!("plan {:?} does not allow plan changes", current.name),
                instance_usable: None,
                update_repeatable: None,
            });
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
            // Nothing to change, but only an instance that is there and idle can say so.
            return match row.state() {
                Some(InstanceState::Ready) => Ok(Reply::new(200, json!({}))),
                Some(InstanceState::Failed) => Err(failed_provision()),
                Some(InstanceState::DeleteFailed) => Err(delete_failed()),
                _ => Err(concurrency("service instance")),
            };
        }
        let mode = self.check_mode(Operation::Update, target, &caller)?;
        let fp = fingerprint(&json!({
            "plan_id": target.id,
            "parameters": req.parameters,
            "maintenance_info": req.maintenance_info.as_ref().map(|m| &m.version),
            "context": req.context,
        }));
        let redo = Redo::Update {
            target: target.id.clone(),
            request: req.clone(),
        };
        let started = Instant::now();
        let op = loop {
            let claim = Start::Instance {
                id: id.as_str(),
                from: &[InstanceState::Ready],
                to: InstanceState::Updating,
                previous: &row.operation_id,
            };
            if let Some(op) = self.claim(&caller, &id, &fp, claim, &redo).await? {
                break op;
            }
            // Someone else holds the instance, or it changed since it was read. The same update
            // is a retry: 202 while it runs (or a wait, synchronously), 200 once it is done.
            let Some(current) = self.inner.store.instance(id.as_str()).await? else {
                return Err(OsbError::NotFound("service instance does not exist".into()));
            };
            let latest = self.inner.store.operation(&current.operation_id).await?;
            let same = latest
                .as_ref()
                .filter(|op| op.fingerprint == fp && op.kind == Operation::Update.as_str());
            match (current.state(), same) {
                (Some(InstanceState::Failed), _) => return Err(failed_provision()),
                (Some(InstanceState::DeleteFailed), _) => return Err(delete_failed()),
                (Some(InstanceState::Updating), Some(running)) if caller.accepts_incomplete => {
                    return Ok(accepted_with(&running.id, current.dashboard_url.as_deref()));
                }
                (Some(InstanceState::Updating), Some(_)) if self.wait_turn(started).await => {}
                (Some(InstanceState::Ready), Some(done))
                    if done.state() == Some(OperationState::Succeeded) =>
                {
                    return Ok(Reply::new(200, json!({})));
                }
                _ => return Err(concurrency("service instance")),
            }
        };
        // A bind that started before our claim must finish first: it sized its account for the
        // plan it read (it re-checks the instance after writing its row, so one of the two
        // always sees the other).
        if self.inner.store.has_busy_bindings(id.as_str()).await? {
            self.inner
                .store
                .unclaim(
                    &op.id,
                    self.token(),
                    Release::Instance(id.as_str(), InstanceState::Ready),
                    &row.operation_id,
                )
                .await?;
            return Err(concurrency("service instance"));
        }
        let engine = self.clone();
        let op_id = op.id.clone();
        let target_id = target.id.clone();
        let dashboard_url = row.dashboard_url.clone();
        self.launch(mode, &op.id, dashboard_url.as_deref(), async move {
            engine.run_update(row, op_id, target_id, req).await
        })
        .await
    }

    pub(super) async fn run_update(
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
            .bounded(
                target,
                self.inner.broker.update(UpdateInput {
                    instance: loaded.view(service, current),
                    plan: target,
                    parameters: req.parameters.as_ref(),
                    context: &context,
                }),
            )
            .await;
        match result {
            Ok(done) => {
                // The row as read before the claim; while this operation holds it nothing else
                // writes it, and the fenced write checks that this is still so.
                let mut row = loaded.row.clone();
                row.state = InstanceState::Ready.as_str().into();
                row.operation_id = op.clone();
                row.updated_at = now_ms();
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
                if !store
                    .succeed(&op, self.token(), Outcome::SaveInstance(&row))
                    .await?
                {
                    return Err(superseded(&op));
                }
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
                tracing::warn!(instance_id = %loaded.id, error = %err, "update failed");
                let repeatable = !matches!(
                    err,
                    BrokerError::Unprocessable(_) | BrokerError::InvalidParameters(_)
                );
                let release = Release::Instance(loaded.id.as_str(), InstanceState::Ready);
                self.failed(&op, release, &err, Some(true), Some(repeatable))
                    .await?;
                Err(match OsbError::from(err) {
                    OsbError::Internal(description) => OsbError::PartlyDone {
                        description,
                        instance_usable: Some(true),
                        update_repeatable: Some(repeatable),
                    },
                    OsbError::Unprocessable { description, .. } => OsbError::Unprocessable {
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
                Some(
                    state @ (InstanceState::Ready
                    | InstanceState::Failed
                    | InstanceState::DeleteFailed),
                ) => state,
                _ => return Err(concurrency("service instance")),
            };
            let redo = Redo::Deprovision {
                from: from.as_str().into(),
            };
            let claim = Start::Instance {
                id: id.as_str(),
                from: &[from],
                to: InstanceState::Deprovisioning,
                previous: &row.operation_id,
            };
            let Some(op) = self.claim(&caller, &id, "", claim, &redo).await? else {
                continue;
            };
            // A bind that started before our claim must finish first (it re-checks the instance
            // after writing its row, so one of the two always sees the other).
            if self.inner.store.has_busy_bindings(id.as_str()).await? {
                self.inner
                    .store
                    .unclaim(
                        &op.id,
                        self.token(),
                        Release::Instance(id.as_str(), from),
                        &row.operation_id,
                    )
                    .await?;
                return Err(concurrency("service instance"));
            }
            let engine = self.clone();
            let op_id = op.id.clone();
            return self
                .launch(mode, &op.id, None, async move {
                    engine.run_deprovision(row, op_id, from).await
                })
                .await;
        }
    }

    pub(super) async fn run_deprovision(
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
            .bounded(
                plan,
                self.inner.broker.deprovision(DeprovisionInput {
                    instance: loaded.view(service, plan),
                    bindings: &bindings,
                }),
            )
            .await;
        match result {
            Ok(()) => {
                if !store
                    .succeed(
                        &op,
                        self.token(),
                        Outcome::DeleteInstance(loaded.id.as_str()),
                    )
                    .await?
                {
                    return Err(superseded(&op));
                }
                tracing::info!(instance_id = %loaded.id, "deprovisioned");
                Ok(Reply::new(200, json!({})))
            }
            Err(err) => {
                tracing::warn!(instance_id = %loaded.id, error = %err, "deprovision failed");
                let usable = from == InstanceState::Ready && left_nothing(&err);
                // Half-deleted is not usable: only another deprovision may touch it.
                let back = if left_nothing(&err) {
                    from
                } else {
                    InstanceState::DeleteFailed
                };
                let release = Release::Instance(loaded.id.as_str(), back);
                self.failed(&op, release, &err, Some(usable), None).await?;
                Err(match OsbError::from(err) {
                    OsbError::Internal(description) => OsbError::PartlyDone {
                        description,
                        instance_usable: Some(usable),
                        update_repeatable: None,
                    },
                    OsbError::Unprocessable { description, .. } => OsbError::Unprocessable {
                        description,
                        instance_usable: Some(usable),
                        update_repeatable: None,
                    },
                    other => other,
                })
            }
        }
    }
}
