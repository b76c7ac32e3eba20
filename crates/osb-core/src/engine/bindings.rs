//! Bind and unbind.

use super::*;

/// What the spec allows a binding to carry: the fields of a `requires` only when the service
/// requires it, and RFC 3339 expiry times with `renew_before` not after `expires_at`. A broker
/// that answers otherwise has failed (its binding is then cleaned up like any failed one).
fn check_bound(service: &Service, bound: &crate::broker::Bound) -> Result<(), BrokerError> {
    let requires = |what: &str| service.requires.iter().any(|r| r == what);
    for (present, field, need) in [
        (
            bound.syslog_drain_url.is_some(),
            "syslog_drain_url",
            "syslog_drain",
        ),
        (
            bound.route_service_url.is_some(),
            "route_service_url",
            "route_forwarding",
        ),
        (
            !bound.volume_mounts.is_empty(),
            "volume_mounts",
            "volume_mount",
        ),
    ] {
        if present && !requires(need) {
            return Err(BrokerError::Failed(format!(
                "the binding has {field}, but the service does not require {need}"
            )));
        }
    }
    let Some(metadata) = &bound.metadata else {
        return Ok(());
    };
    let parse = |field: &str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| {
                time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| {
                        BrokerError::Failed(format!(
                            "binding {field} {v:?} is not an RFC 3339 time"
                        ))
                    })
            })
            .transpose()
    };
    let expires = parse("expires_at", &metadata.expires_at)?;
    let renew = parse("renew_before", &metadata.renew_before)?;
    if let (Some(expires), Some(renew)) = (expires, renew)
        && renew > expires
    {
        return Err(BrokerError::Failed(
            "binding renew_before is after its expires_at".into(),
        ));
    }
    Ok(())
}

/// When a binding expires, from the `metadata.expires_at` its broker answered (checked as
/// RFC 3339 when it was made).
fn expiry(row: &BindingRow) -> Option<time::OffsetDateTime> {
    let response: Value = serde_json::from_str(row.response.as_deref()?).ok()?;
    let at = response.pointer("/metadata/expires_at")?.as_str()?;
    time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
}

/// A rotation may leave out the ids (the spec requires only `predecessor_binding_id` of it):
/// they are then the instance's. Any other bind must name them.
fn with_ids(instance: &InstanceRow, mut req: BindRequest) -> Result<BindRequest, OsbError> {
    let rotation = req.predecessor_binding_id.is_some();
    for (value, field, of_instance) in [
        (&mut req.service_id, "service_id", &instance.service_id),
        (&mut req.plan_id, "plan_id", &instance.plan_id),
    ] {
        if value.is_empty() {
            if !rotation {
                return Err(OsbError::BadRequest(format!(
                    "invalid request body: missing field `{field}`"
                )));
            }
            value.clone_from(of_instance);
        }
    }
    Ok(req)
}

impl<B: ServiceBroker> Engine<B> {
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
        // The request as sent: a re-sent rotation matches it whatever became of the instance's
        // plan or of the predecessor since.
        let fp = fingerprint(&json!({
            "instance_id": id.as_str(),
            "service_id": req.service_id,
            "plan_id": req.plan_id,
            "parameters": req.parameters.clone().unwrap_or_default(),
            "app_guid": req.app_guid,
            "bind_resource": req.bind_resource,
            "predecessor_binding_id": req.predecessor_binding_id,
        }));
        let req = with_ids(&instance, req)?;
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
        self.inner.catalog.validate(
            plan,
            SchemaUse::Bind,
            &req.parameters.clone().unwrap_or_default(),
        )?;
        if let Some(app) = &req.app_guid {
            require_non_empty(app, "app_guid")?;
        }
        if let Some(pred) = &req.predecessor_binding_id {
            BindingId::parse(pred)?;
            if !plan.rotatable() {
                return Err(OsbError::BadRequest(format!(
                    "plan {:?} does not support binding rotation",
                    plan.name
                )));
            }
        }
        let mode = self.check_mode(Operation::Bind, plan, &caller)?;
        let started = Instant::now();
        loop {
            if let Some(existing) = self.inner.store.binding(binding_id.as_str()).await? {
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
                        return Ok(Reply::new(200, self.binding_body(&existing.into(), false)?));
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
                        let req = self.predecessor(&id, req.clone()).await?;
                        let claim = Start::Binding {
                            id: binding_id.as_str(),
                            from: &[BindingState::Failed],
                            to: BindingState::Binding,
                            previous: &existing.operation_id,
                        };
                        let redo = Redo::Bind {
                            request: req.clone(),
                        };
                        if let Some(op) = self.claim(&caller, &id, &fp, claim, &redo).await? {
                            let mut row = existing;
                            let previous = std::mem::replace(&mut row.operation_id, op.id.clone());
                            return self.start_bind(mode, row, op.id, req, Some(previous)).await;
                        }
                    }
                    _ => return Err(concurrency("service binding")),
                }
                continue;
            }
            // Only a binding about to be made needs its predecessor as the spec says.
            let req = self.predecessor(&id, req.clone()).await?;
            let op = self.new_operation(
                &caller,
                id.as_str(),
                Some(binding_id.as_str()),
                &fp,
                &Redo::Bind {
                    request: req.clone(),
                },
            );
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
                parameters: to_text(&req.parameters.clone().unwrap_or_default()),
                response: None,
                credentials: None,
                broker_state: "null".into(),
                created_at: now,
                updated_at: now,
            };
            if self.inner.store.start(&op, Start::NewBinding(&row)).await? {
                return self.start_bind(mode, row, op.id, req, None).await;
            }
            // Another request made the row first: answer as its repeat.
        }
    }

    /// A rotation's predecessor must be a live, unexpired binding of this instance (the spec's
    /// "non-expired Service Binding of the same Service Instance"). A rotation that leaves out
    /// its parameters takes the predecessor's: the spec's reason for rotation is that
    /// platforms need not keep them.
    async fn predecessor(
        &self,
        id: &InstanceId,
        mut req: BindRequest,
    ) -> Result<BindRequest, OsbError> {
        let Some(pred) = &req.predecessor_binding_id else {
            return Ok(req);
        };
        let row = self.live_predecessor(id, pred).await?.ok_or_else(|| {
            OsbError::BadRequest(
                "predecessor_binding_id must name a live binding of this instance".into(),
            )
        })?;
        if let Some(expired) = expiry(&row).filter(|at| *at <= time::OffsetDateTime::now_utc()) {
            return Err(OsbError::BadRequest(format!(
                "the predecessor binding expired at {expired}; rotate a binding that has not"
            )));
        }
        if req.parameters.is_none() {
            let parameters: Map<String, Value> = parse_json(&row.parameters, "binding parameters")?;
            req.parameters = (!parameters.is_empty()).then_some(parameters);
        }
        Ok(req)
    }

    /// The binding `pred` when it is bound and belongs to instance `id` (and so to its
    /// platform).
    async fn live_predecessor(
        &self,
        id: &InstanceId,
        pred: &str,
    ) -> Result<Option<BindingRow>, OsbError> {
        Ok(self
            .inner
            .store
            .binding(pred)
            .await?
            .filter(|b| b.instance_id == id.as_str() && b.state() == Some(BindingState::Bound)))
    }

    /// Runs a bind whose row is now in the `binding` state: `previous` is the operation of a
    /// failed binding this request retries, `None` when it created the row.
    async fn start_bind(
        &self,
        mode: Mode,
        row: BindingRow,
        op: String,
        req: BindRequest,
        previous: Option<String>,
    ) -> Result<Reply, OsbError> {
        let store = &self.inner.store;
        // Deprovision claims the instance and then looks for busy bindings; our row is busy
        // now and we look at the instance after, so one of the two always sees the other.
        let Some(instance) = store
            .instance(&row.instance_id)
            .await?
            .filter(|i| i.state() == Some(InstanceState::Ready))
        else {
            match previous {
                None => {
                    store
                        .discard(&op, self.token(), Outcome::DeleteBinding(&row.id))
                        .await?;
                }
                Some(previous) => {
                    store
                        .unclaim(
                            &op,
                            self.token(),
                            Release::Binding(&row.id, BindingState::Failed),
                            &previous,
                        )
                        .await?;
                }
            }
            return Err(concurrency("service instance"));
        };
        let engine = self.clone();
        let op_id = op.clone();
        let fresh = previous.is_none();
        self.launch(mode, &op, None, async move {
            engine
                .run_bind(mode, instance, row, op_id, req, fresh)
                .await
        })
        .await
    }

    /// `fresh` when this request made the binding's row (not a retry of a failed one).
    pub(super) async fn run_bind(
        &self,
        mode: Mode,
        instance: InstanceRow,
        mut row: BindingRow,
        op: String,
        req: BindRequest,
        fresh: bool,
    ) -> Result<Reply, OsbError> {
        let store = &self.inner.store;
        let loaded = Loaded::new(instance)?;
        let (service, plan) = self.plan_of(&loaded.row.plan_id)?;
        let binding_id = BindingId::parse(&row.id)?;
        // Checked again here: the predecessor may have been unbound since the request was
        // accepted (a recovery re-runs it much later), and a rotation without its predecessor
        // would silently become a plain bind.
        let predecessor = match &req.predecessor_binding_id {
            Some(p) => match self.live_predecessor(&loaded.id, p).await? {
                Some(row) => Ok(Some(binding_view(&row)?)),
                None => Err(BrokerError::Failed(format!(
                    "the predecessor binding {p} was unbound before its rotation ran"
                ))),
            },
            None => Ok(None),
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
        let result = match predecessor {
            Ok(predecessor) => self
                .bounded(
                    plan,
                    self.inner.broker.bind(BindInput {
                        instance: loaded.view(service, plan),
                        binding_id: &binding_id,
                        parameters: &parameters,
                        bind_resource: bind_resource.as_ref(),
                        context: &context,
                        predecessor: predecessor.as_ref(),
                        bindings: BindingsOf::new(&self.inner.store, &loaded.row.id),
                    }),
                )
                .await
                .and_then(|bound| check_bound(service, &bound).map(|()| bound)),
            Err(e) => Err(e),
        };
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
                if !store
                    .succeed(&op, self.token(), Outcome::SaveBinding(&row))
                    .await?
                {
                    return Err(superseded(&op));
                }
                tracing::info!(instance_id = %row.instance_id, binding_id = %row.id, "bound");
                Ok(Reply::new(
                    201,
                    BindingResponse {
                        credentials: Some(credentials),
                        ..response
                    },
                ))
            }
            Err(err) => {
                tracing::warn!(binding_id = %row.id, error = %err, "bind failed");
                // Only a row this request made may go: a retry's row stands for what an
                // earlier attempt may have left.
                if mode == Mode::Sync && fresh && left_nothing(&err) {
                    store
                        .discard(&op, self.token(), Outcome::DeleteBinding(&row.id))
                        .await?;
                } else {
                    let release = Release::Binding(&row.id, BindingState::Failed);
                    self.failed(&op, release, &err, None, None).await?;
                }
                Err(err.into())
            }
        }
    }

    /// A bound binding's body from its row: the stored response, its credentials opened, and
    /// its parameters when `with_parameters` (a `GET`). The stored texts are checked as JSON
    /// objects and written out as they are, with no tree built of them.
    pub(super) fn binding_body(
        &self,
        row: &ShownBinding,
        with_parameters: bool,
    ) -> Result<StoredBinding, OsbError> {
        let mut response: BTreeMap<String, Box<RawValue>> = match &row.response {
            Some(text) => parse_json(text, "binding response")?,
            None => BTreeMap::new(),
        };
        // Filled in below, never from the stored response (which is written without them).
        response.remove("credentials");
        response.remove("parameters");
        let credentials = match &row.credentials {
            Some(sealed) => {
                let plain = self.inner.sealer.open(sealed).map_err(|e| {
                    tracing::error!(binding_id = %row.id, error = %e, "cannot open binding credentials");
                    OsbError::Internal("binding credentials cannot be decrypted".into())
                })?;
                let text = String::from_utf8(plain)
                    .map_err(|_| StoreError::Corrupt("binding credentials: not UTF-8".into()))?;
                Some(json_object(text, "binding credentials")?)
            }
            None => None,
        };
        let parameters = if with_parameters {
            Some(json_object(row.parameters.clone(), "binding parameters")?)
        } else {
            None
        };
        Ok(StoredBinding {
            response,
            credentials,
            parameters,
        })
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
            let redo = Redo::Unbind {
                from: from.as_str().into(),
            };
            let claim = Start::Binding {
                id: binding_id.as_str(),
                from: &[from],
                to: BindingState::Unbinding,
                previous: &row.operation_id,
            };
            let Some(op) = self.claim(&caller, &id, "", claim, &redo).await? else {
                continue;
            };
            // As bind does: our row is busy now, so an update or deprovision claimed after this
            // sees it; one claimed before shows in the instance's state.
            let instance = match self.inner.store.instance(id.as_str()).await? {
                Some(i)
                    if matches!(
                        i.state(),
                        Some(InstanceState::Ready | InstanceState::DeleteFailed)
                    ) =>
                {
                    i
                }
                _ => {
                    self.inner
                        .store
                        .unclaim(
                            &op.id,
                            self.token(),
                            Release::Binding(binding_id.as_str(), from),
                            &row.operation_id,
                        )
                        .await?;
                    return Err(concurrency("service instance"));
                }
            };
            let engine = self.clone();
            let op_id = op.id.clone();
            return self
                .launch(mode, &op.id, None, async move {
                    engine.run_unbind(instance, row, op_id, from).await
                })
                .await;
        }
    }

    pub(super) async fn run_unbind(
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
            .bounded(
                plan,
                self.inner.broker.unbind(UnbindInput {
                    instance: loaded.view(service, plan),
                    binding: &binding,
                    bindings: BindingsOf::new(store, &loaded.row.id),
                }),
            )
            .await;
        match result {
            Ok(()) => {
                if !store
                    .succeed(&op, self.token(), Outcome::DeleteBinding(&row.id))
                    .await?
                {
                    return Err(superseded(&op));
                }
                tracing::info!(instance_id = %row.instance_id, binding_id = %row.id, "unbound");
                Ok(Reply::new(200, json!({})))
            }
            Err(err) => {
                tracing::warn!(binding_id = %row.id, error = %err, "unbind failed");
                // Half-removed is not bound: only another unbind may touch it.
                let back = if left_nothing(&err) {
                    from
                } else {
                    BindingState::Failed
                };
                let release = Release::Binding(&row.id, back);
                self.failed(&op, release, &err, None, None).await?;
                Err(err.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Bound;
    use crate::wire::BindingMetadata;

    fn service(requires: &[&str]) -> Service {
        serde_json::from_value(json!({
            "id": "s", "name": "s", "description": "d", "bindable": true, "requires": requires,
            "plans": [{"id": "p", "name": "p", "description": "d"}]
        }))
        .unwrap()
    }

    #[test]
    fn fields_of_a_requires_need_the_service_to_require_it() {
        let bound = Bound {
            syslog_drain_url: Some("syslog://drain".into()),
            ..Bound::default()
        };
        assert!(check_bound(&service(&[]), &bound).is_err());
        assert!(check_bound(&service(&["syslog_drain"]), &bound).is_ok());
    }

    #[test]
    fn expiry_times_are_rfc3339_and_in_order() {
        let with = |expires: &str, renew: &str| Bound {
            metadata: Some(BindingMetadata {
                expires_at: Some(expires.into()),
                renew_before: Some(renew.into()),
            }),
            ..Bound::default()
        };
        let s = service(&[]);
        assert!(check_bound(&s, &with("2030-01-02T00:00:00Z", "2030-01-01T00:00:00Z")).is_ok());
        assert!(check_bound(&s, &with("2030-01-01T00:00:00Z", "2030-01-02T00:00:00Z")).is_err());
        assert!(check_bound(&s, &with("next tuesday", "2030-01-01T00:00:00Z")).is_err());
    }
}
