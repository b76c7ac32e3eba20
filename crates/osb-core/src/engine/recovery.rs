//! Crash recovery that finishes the job. An operation whose process stopped is run again from
//! its records (the rows and its `Redo`), since every broker call is idempotent by contract: a
//! restarted replica takes back its own unfinished operations at once; another replica takes
//! over those of a replica that stays away, once their heartbeat is older than the lease. Taking
//! over is a compare-and-set on the operation's runner, so one process wins, and the one that
//! stopped can no longer record an end. Only an operation whose backend call fails again ends
//! `failed`, with the backend's reason.

use super::*;

/// What an operation that cannot be run again (its rows are gone, its record predates
/// recovery, or what it needs is no longer so) ends with.
const LOST: &str =
    "the broker replica running this operation stopped before it finished; retry the request";

/// What an operation whose task panicked ends with: a bug, whose words stay in the log.
pub(super) const PANICKED: &str =
    "the broker stopped this operation on an internal error (see its log); retry the request";

impl<B: ServiceBroker> Engine<B> {
    /// Takes back this replica's unfinished operations (after one heartbeat: if they are still
    /// silent, no other live process shares this replica id), and watches for operations that
    /// outlive their lease.
    pub(super) fn start_recovery(&self) {
        let this = self.clone();
        self.inner.runner.spawn(async move {
            let runner = &this.inner.runner;
            let own = match this.inner.store.unfinished_of(runner.replica()).await {
                Ok(ops) => ops,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for unfinished operations");
                    return;
                }
            };
            // Operations this process has just started are not to be taken back.
            let own: Vec<OperationRow> = own
                .into_iter()
                .filter(|op| op.runner != runner.token())
                .collect();
            if own.is_empty() {
                return;
            }
            tokio::time::sleep(this.inner.timing.heartbeat + Duration::from_secs(1)).await;
            for op in own {
                this.take_over(op).await;
            }
        });
        let this = self.clone();
        self.inner
            .runner
            .every(self.inner.timing.heartbeat, move || {
                let this = this.clone();
                async move { this.take_over_stale().await }
            });
    }

    /// Takes over the operations whose heartbeat is older than the lease: other processes',
    /// and this process's own that ended without recording an end (a store failure, a panic).
    async fn take_over_stale(&self) {
        let store = &self.inner.store;
        let runner = &self.inner.runner;
        let before = now_ms() - self.inner.timing.lease.as_millis() as i64;
        match store.stale_operations(before, runner.token()).await {
            Ok(ops) => {
                for op in ops {
                    self.take_over(op).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "looking for stopped operations failed"),
        }
        match store.unfinished_of(runner.replica()).await {
            Ok(ops) => {
                // Not running here, and too old to be one whose task is about to start.
                for op in ops.into_iter().filter(|op| {
                    op.runner == runner.token()
                        && op.created_at < before
                        && op.heartbeat_at < before
                        && !runner.is_running(&op.id)
                }) {
                    self.take_over(op).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "looking for stuck operations failed"),
        }
    }

    async fn take_over(&self, op: OperationRow) {
        let runner = &self.inner.runner;
        match self
            .inner
            .store
            .take_over(
                &op.id,
                &op.runner,
                op.heartbeat_at,
                runner.replica(),
                runner.token(),
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                // Another replica was quicker, it ended, or its runner is alive after all.
                tracing::debug!(operation = %op.id, "not taken over");
                return;
            }
            Err(e) => {
                tracing::warn!(operation = %op.id, error = %e, "cannot take over an operation");
                return;
            }
        }
        tracing::info!(operation = %op.id, kind = %op.kind, instance_id = %op.instance_id, from = %op.runner, "running a stopped operation again");
        let this = self.clone();
        let id = op.id.clone();
        self.spawn_operation(&id, async move {
            let result = this.run_again(&op).await;
            if let Err(e) = &result {
                tracing::warn!(operation = %op.id, error = %e, "operation run again failed");
            }
            result
        });
    }

    /// Runs `op` again from its records, or ends it failed when they are gone.
    async fn run_again(&self, op: &OperationRow) -> Result<(), OsbError> {
        let store = &self.inner.store;
        let redo: Option<Redo> = op
            .request
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok());
        let instance = store
            .instance(&op.instance_id)
            .await?
            .filter(|row| op.binding_id.is_some() || row.operation_id == op.id);
        let binding = match &op.binding_id {
            Some(b) => store
                .binding(b)
                .await?
                .filter(|row| row.operation_id == op.id),
            None => None,
        };
        let id = op.id.clone();
        let result = match (redo, instance, binding) {
            (Some(Redo::Provision), Some(row), _) => {
                self.run_provision(Mode::Async, row, id, true).await
            }
            (Some(Redo::Update { target, request }), Some(row), _) => {
                self.run_update(row, id, target, request).await
            }
            (Some(Redo::Deprovision { from }), Some(row), _) => {
                let from = InstanceState::parse(&from).unwrap_or(InstanceState::Failed);
                self.run_deprovision(row, id, from).await
            }
            // As the request path checks after its claim: a bind needs a ready instance.
            (Some(Redo::Bind { request }), Some(instance), Some(row))
                if instance.state() == Some(InstanceState::Ready) =>
            {
                self.run_bind(Mode::Async, instance, row, id, request, false)
                    .await
            }
            (Some(Redo::Unbind { from }), Some(instance), Some(row)) => {
                let from = BindingState::parse(&from).unwrap_or(BindingState::Failed);
                self.run_unbind(instance, row, id, from).await
            }
            _ => return self.give_up(op).await,
        };
        result.map(|_| ())
    }

    /// Ends an operation that cannot be run again as failed, its row where a retry or a delete
    /// can pick it up.
    async fn give_up(&self, op: &OperationRow) -> Result<(), OsbError> {
        tracing::warn!(operation = %op.id, "an operation whose records are gone cannot be run again; failing it");
        self.end_failed(op, LOST).await.map(|_| ())
    }

    /// Ends operation `op`, whose task panicked, as failed (see `Engine::spawn_operation`),
    /// unless it had ended; the answer for a sync caller, with the usability it recorded.
    pub(super) async fn end_panicked(&self, op: &str) -> OsbError {
        let ended = match self.inner.store.operation(op).await {
            Ok(Some(row)) => self.end_failed(&row, PANICKED).await,
            Ok(None) => Ok((None, None)),
            Err(e) => Err(e.into()),
        };
        let (instance_usable, update_repeatable) = match ended {
            Ok(flags) => {
                tracing::error!(operation = %op, "the operation's task panicked; it ends failed unless it had ended");
                flags
            }
            // Recovery ends it after the lease then.
            Err(e) => {
                tracing::error!(operation = %op, error = %e, "the operation's task panicked, and ending it failed did not work");
                (None, None)
            }
        };
        OsbError::PartlyDone {
            description: PANICKED.into(),
            instance_usable,
            update_repeatable,
        }
    }

    /// Ends `op` failed with `why`, its row put back by the operation's kind: where a retry or
    /// a delete can pick it up. Fenced: an operation no longer this process's, or already
    /// ended, is left as it is.
    /// Gives the usability flags it recorded, for a sync caller's answer.
    async fn end_failed(
        &self,
        op: &OperationRow,
        why: &str,
    ) -> Result<(Option<bool>, Option<bool>), OsbError> {
        let kind = Operation::parse(&op.kind);
        let (release, usable, repeatable) = match (kind, &op.binding_id) {
            (_, Some(binding)) => (Release::Binding(binding, BindingState::Failed), None, None),
            (Some(Operation::Update), None) => (
                Release::Instance(&op.instance_id, InstanceState::Ready),
                Some(true),
                Some(true),
            ),
            (Some(Operation::Deprovision), None) => (
                Release::Instance(&op.instance_id, InstanceState::DeleteFailed),
                Some(false),
                None,
            ),
            (_, None) => (
                Release::Instance(&op.instance_id, InstanceState::Failed),
                None,
                None,
            ),
        };
        let store = &self.inner.store;
        if !store
            .fail(&op.id, self.token(), release, why, usable, repeatable)
            .await?
        {
            // Its row is gone or moved on: end the record alone.
            store.fail_record(&op.id, self.token(), why).await?;
        }
        Ok((usable, repeatable))
    }
}
