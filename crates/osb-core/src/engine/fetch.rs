//! Reading instances, bindings and operations: `GET` and `last_operation`.

use super::*;

/// Unix milliseconds as an RFC 3339 UTC time.
fn rfc3339(unix_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl<B: ServiceBroker> Engine<B> {
    // ---- fetch -------------------------------------------------------------------------

    pub async fn fetch_instance(&self, caller: Caller, id: InstanceId) -> Result<Reply, OsbError> {
        // One read: the row and what upkeep last measured of it.
        let (row, facts) = self
            .inner
            .store
            .instance_with_facts(id.as_str())
            .await?
            .filter(|(row, _)| row.platform == caller.platform)
            .ok_or_else(|| OsbError::NotFound("service instance does not exist".into()))?;
        match row.state() {
            // A half-deleted instance is there (only a delete may follow): it is shown.
            Some(
                InstanceState::Ready | InstanceState::Deprovisioning | InstanceState::DeleteFailed,
            ) => {}
            Some(InstanceState::Updating) => return Err(concurrency("service instance")),
            _ => {
                return Err(OsbError::NotFound(
                    "service instance does not exist or is not yet provisioned".into(),
                ));
            }
        }
        let mut metadata: Option<InstanceMetadata> = match &row.metadata {
            Some(text) => Some(parse_json(text, "instance metadata")?),
            None => None,
        };
        // What upkeep last measured, never a live backend call: a platform polling many
        // instances must not put that load on the backend.
        if let Some((facts, measured_at)) = facts {
            let facts: InstanceMetadata = parse_json(&facts, "instance facts")?;
            let m = metadata.get_or_insert_with(Default::default);
            m.labels.extend(facts.labels);
            m.attributes.extend(facts.attributes);
            m.attributes
                .insert("measured_at".into(), Value::from(rfc3339(measured_at)));
        }
        Ok(Reply::new(
            200,
            InstanceResponse {
                parameters: json_object(row.parameters, "instance parameters")?,
                service_id: row.service_id,
                plan_id: row.plan_id,
                dashboard_url: row.dashboard_url,
                maintenance_info: row.maintenance_version.map(|version| {
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
            .shown_binding(binding_id.as_str())
            .await?
            .filter(|b| b.instance_id == id.as_str() && b.platform == caller.platform)
            .filter(|b| b.state() == Some(BindingState::Bound))
            .ok_or_else(|| OsbError::NotFound("service binding does not exist".into()))?;
        Ok(Reply::new(200, self.binding_body(&row, true)?))
    }

    // ---- last_operation ----------------------------------------------------------------

    pub async fn instance_last_operation(
        &self,
        caller: Caller,
        id: InstanceId,
        query: FetchQuery,
    ) -> Result<Reply, OsbError> {
        let current = self
            .inner
            .store
            .instance_with_operation(id.as_str())
            .await?
            .filter(|(row, _)| row.platform == caller.platform)
            .map(|(_, op)| op);
        self.last_operation(&caller, &id, None, current, query)
            .await
    }

    pub async fn binding_last_operation(
        &self,
        caller: Caller,
        id: InstanceId,
        binding_id: BindingId,
        query: FetchQuery,
    ) -> Result<Reply, OsbError> {
        let current = self
            .inner
            .store
            .binding_with_operation(binding_id.as_str())
            .await?
            .filter(|(b, _)| b.instance_id == id.as_str() && b.platform == caller.platform)
            .map(|(_, op)| op);
        self.last_operation(&caller, &id, Some(&binding_id), current, query)
            .await
    }

    async fn last_operation(
        &self,
        caller: &Caller,
        id: &InstanceId,
        binding: Option<&BindingId>,
        // Whether the resource is there, and its current operation (the same read brought both:
        // the operation is missing only if its record is).
        current: Option<Option<OperationStatus>>,
        query: FetchQuery,
    ) -> Result<Reply, OsbError> {
        let store = &self.inner.store;
        let belongs = |op: &OperationStatus| {
            op.platform == caller.platform
                && op.instance_id == id.as_str()
                && op.binding_id.as_deref() == binding.map(|b| b.as_str())
        };
        let requested = match &query.operation {
            Some(op) => {
                let op_id = OperationId::parse(op)?;
                // Mostly the one asked about is the current one, which the first read brought.
                let found = match &current {
                    Some(Some(now)) if now.id == op_id.as_str() => Some(now.clone()),
                    _ => store.operation(op_id.as_str()).await?.map(Into::into),
                }
                .filter(belongs);
                if found.is_none() && current.is_some() {
                    return Err(OsbError::BadRequest(format!(
                        "operation {op:?} is not an operation of this resource"
                    )));
                }
                found
            }
            None => None,
        };
        let missing = || {
            OsbError::NotFound(if binding.is_some() {
                "service binding does not exist".into()
            } else {
                "service instance does not exist".into()
            })
        };
        let Some(current) = current else {
            // Gone, or never there: only a delete that succeeded says 410; an older operation
            // of what no longer exists is never reported.
            let last = match requested {
                Some(op) => Some(op),
                None => store
                    .latest_operation(id.as_str(), binding.map(|b| b.as_str()))
                    .await?
                    .map(OperationStatus::from)
                    .filter(belongs),
            };
            let deleted = last.is_some_and(|op| {
                op.state() == Some(OperationState::Succeeded)
                    && matches!(
                        Operation::parse(&op.kind),
                        Some(Operation::Deprovision | Operation::Unbind)
                    )
            });
            return Err(if deleted { OsbError::Gone } else { missing() });
        };
        let op = match requested {
            Some(op) => op,
            None => current.ok_or_else(missing)?,
        };
        let state = op.state();
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

#[cfg(test)]
mod tests {
    #[test]
    fn measurement_times_are_rfc3339_utc() {
        assert_eq!(
            super::rfc3339(1_764_100_800_123),
            "2025-11-25T20:00:00.123Z"
        );
    }
}
