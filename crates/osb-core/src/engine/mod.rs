//! The OSB rules for every broker: validation, idempotency, concurrency, async bookkeeping and
//! persistence around the [`ServiceBroker`] calls. Knows nothing of HTTP.
//!
//! This module holds the shared machinery; `instances`, `bindings` and `fetch` hold the
//! endpoints' rules.

mod bindings;
mod fetch;
mod instances;
mod recovery;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::broker::{
    BindInput, BindingView, BindingsOf, BrokerError, DeprovisionInput, InstanceView, Mode,
    Operation, ProvisionInput, ServiceBroker, UnbindInput, UpdateInput,
};
use crate::catalog::{CatalogIndex, Plan, SchemaUse, Service};
use crate::crypto::Sealer;
use crate::error::OsbError;
use crate::fingerprint::fingerprint;
use crate::ids::{BindingId, InstanceId, OperationId};
use crate::runner::{Runner, Timing};
use crate::store::{
    BindingRow, BindingState, InstanceRow, InstanceState, OperationRow, OperationState,
    OperationStatus, Outcome, Release, ShownBinding, Start, Store, StoreError, now_ms,
};
use crate::wire::{
    BindRequest, BindingResponse, DeleteQuery, FetchQuery, InstanceMetadata,
    InstanceOperationResponse, InstanceResponse, LastOperationResponse, LastOperationState,
    ProvisionRequest, UpdateRequest,
};

/// A successful answer: status code and JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The JSON body, written out once from its typed value (not through a `Value` tree).
    pub body: Vec<u8>,
    /// Seconds the platform should wait before polling again.
    pub retry_after: Option<u64>,
}

impl Reply {
    fn new(status: u16, body: impl Serialize) -> Self {
        Self {
            status,
            body: serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec()),
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
    /// The instance the last upkeep pass reached: the next pass starts after it, so a pass cut
    /// short by its time budget does not starve the instances behind it.
    upkeep_cursor: Mutex<Option<String>>,
}

/// What running an operation again needs beyond its rows, kept in its record
/// (`osb_operations.request`), so that any replica can finish it after a crash.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Redo {
    Provision,
    Update {
        target: String,
        request: UpdateRequest,
    },
    Deprovision {
        from: String,
    },
    Bind {
        request: BindRequest,
    },
    Unbind {
        from: String,
    },
}

impl Redo {
    fn kind(&self) -> Operation {
        match self {
            Self::Provision => Operation::Provision,
            Self::Update { .. } => Operation::Update,
            Self::Deprovision { .. } => Operation::Deprovision,
            Self::Bind { .. } => Operation::Bind,
            Self::Unbind { .. } => Operation::Unbind,
        }
    }
}

/// Instances whose upkeep figures one store transaction keeps: a pass over many instances
/// commits a few times, while one transaction never holds the store's writer for long.
const FACTS_PER_COMMIT: usize = 100;

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

/// A stored JSON text that must be an object, kept as text.
fn json_object(text: String, what: &str) -> Result<Box<RawValue>, StoreError> {
    let raw =
        RawValue::from_string(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
    if raw.get().starts_with('{') {
        Ok(raw)
    } else {
        Err(StoreError::Corrupt(format!("{what}: not a JSON object")))
    }
}

/// A binding's body as answered from the store (see `Engine::binding_body`).
#[derive(Serialize)]
struct StoredBinding {
    #[serde(flatten)]
    response: BTreeMap<String, Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credentials: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Box<RawValue>>,
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
            platform: &self.row.platform,
            id: &self.id,
            service,
            plan,
            parameters: &self.parameters,
            context: &self.context,
            state: &self.state,
        }
    }
}

pub(crate) fn binding_view(row: &BindingRow) -> Result<BindingView, OsbError> {
    Ok(BindingView {
        id: BindingId::parse(&row.id)?,
        ready: row.state() == Some(BindingState::Bound),
        state: parse_json(&row.broker_state, "binding broker state")?,
        parameters: parse_json(&row.parameters, "binding parameters")?,
    })
}

fn concurrency(what: &str) -> OsbError {
    OsbError::Concurrency(format!(
        "another operation on this {what} is in progress; retry when it has finished"
    ))
}

fn accepted(op: &str) -> Reply {
    accepted_with(op, None)
}

/// A 202 for an instance operation: the spec wants the dashboard URL in it, when there is one,
/// "even if the service is provisioned asynchronously".
fn accepted_with(op: &str, dashboard_url: Option<&str>) -> Reply {
    let mut reply = Reply::new(
        202,
        InstanceOperationResponse {
            dashboard_url: dashboard_url.map(str::to_owned),
            operation: Some(op.to_owned()),
            metadata: None,
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

/// What a fenced-out operation answers: the reaper failed it while it ran (its replica stalled
/// past the lease) and a newer operation owns the row now, so nothing of it was recorded.
fn superseded(op: &str) -> OsbError {
    tracing::warn!(operation = %op, "operation finished after it was taken over; its outcome was not recorded");
    OsbError::Concurrency(
        "this operation was taken over by a newer one after its broker replica stalled; poll or retry"
            .into(),
    )
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
                upkeep_cursor: Mutex::default(),
            }),
        };
        engine.start_recovery();
        if let Some(every) = engine.inner.broker.upkeep_interval() {
            let this = engine.clone();
            // One replica does the upkeep: whoever holds the lease, taken over by another
            // replica once it lapses, so that two replicas never run at once. Renewed before
            // each part of a pass, it outlasts the longest: the broker's first look (one
            // timeout), the visits (the budget plus one instance's timeout; `every` to spare
            // for writing their figures), the orphan count (one timeout).
            let budget = every.saturating_mul(2).max(Duration::from_secs(1));
            let ttl = (budget + engine.inner.timing.upkeep_timeout + every).as_millis() as i64;
            engine.inner.runner.every(every, move || {
                let this = this.clone();
                async move {
                    // Held by this process, not its replica id: two processes that share an id
                    // by mistake still never run upkeep at once.
                    let holder = this.inner.runner.token();
                    let held = || async {
                        let lease = this.inner.store.acquire_lease("upkeep", holder, ttl);
                        lease.await.unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "upkeep lease unavailable");
                            false
                        })
                    };
                    if !held().await {
                        return;
                    }
                    let started = Instant::now();
                    let lost =
                        || tracing::info!("upkeep lease lost; another replica does the upkeep");
                    match this.upkeep(budget, &held).await {
                        // Only a pass whose lease held to its end counts as finished.
                        Ok(true) if held().await => {
                            this.count_orphans().await;
                            this.inner.runner.metrics().upkeep_passed(started.elapsed());
                        }
                        Ok(_) => lost(),
                        Err(e) => {
                            tracing::warn!(error = %e, "upkeep failed");
                            this.inner.runner.metrics().upkeep_failed("error");
                        }
                    }
                }
            });
        }
        engine
    }

    /// One pass of the broker's upkeep over the ready instances, each on its own: one that
    /// fails or hangs (bounded by `operations.upkeep_timeout_secs`) is logged and counted in
    /// `/metrics`, and the pass goes on. The broker first sees every instance of the pass at
    /// once ([`ServiceBroker::upkeep_pass`]), then `held` renews the lease. The visits stop
    /// after `budget`; the next pass starts where they stopped. `Ok(false)`: the lease was lost
    /// after the first look, and nothing was visited.
    async fn upkeep<F, Held>(&self, budget: Duration, held: F) -> Result<bool, OsbError>
    where
        F: Fn() -> Held,
        Held: Future<Output = bool>,
    {
        let mut rows = self.inner.store.instances_in(InstanceState::Ready).await?;
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        let start = {
            let cursor = self.inner.upkeep_cursor.lock().unwrap();
            cursor
                .as_ref()
                .map_or(0, |last| rows.partition_point(|r| &r.id <= last))
        };
        rows.rotate_left(start);
        let metrics = self.inner.runner.metrics();
        // An instance whose plan left the catalog has nothing to keep up.
        let mut visits = Vec::with_capacity(rows.len());
        for row in rows {
            let id = row.id.clone();
            match Loaded::new(row) {
                Ok(loaded) => {
                    if let Some((service, plan)) = self.inner.catalog.plan(&loaded.row.plan_id) {
                        visits.push((loaded, service, plan));
                    }
                }
                Err(e) => {
                    tracing::warn!(instance_id = %id, error = %e, "upkeep skipped an unreadable instance");
                    metrics.upkeep_failed("error");
                }
            }
        }
        if visits.is_empty() {
            return Ok(true);
        }
        let views: Vec<InstanceView> = visits.iter().map(|(l, s, p)| l.view(s, p)).collect();
        let prepared = self.inner.broker.upkeep_pass(&views);
        match tokio::time::timeout(self.inner.timing.upkeep_timeout, prepared).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "upkeep pass preparation failed");
                metrics.upkeep_failed("error");
            }
            Err(_) => {
                tracing::warn!("upkeep pass preparation timed out");
                metrics.upkeep_failed("timeout");
            }
        }
        // The first look's time is not the visits': a slow one must not starve them.
        if !held().await {
            return Ok(false);
        }
        let deadline = Instant::now() + budget;
        let total = views.len();
        let mut facts = Vec::with_capacity(FACTS_PER_COMMIT);
        for (done, view) in views.into_iter().enumerate() {
            if facts.len() == FACTS_PER_COMMIT {
                self.keep_facts(&mut facts).await;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    left = total - done,
                    "upkeep pass ran out of time; the next pass goes on from here"
                );
                metrics.upkeep_failed("out_of_time");
                break;
            }
            let id = view.id.as_str();
            let bindings = BindingsOf::new(&self.inner.store, id);
            let work = self.inner.broker.upkeep(view, bindings);
            match tokio::time::timeout(self.inner.timing.upkeep_timeout, work).await {
                Ok(Ok(measured)) => {
                    let kept = measured.map(|m| (to_text(&m), now_ms()));
                    facts.push((id.to_owned(), kept));
                }
                Ok(Err(e)) => {
                    tracing::warn!(instance_id = %id, error = %e, "upkeep of an instance failed");
                    metrics.upkeep_failed("error");
                }
                Err(_) => {
                    tracing::warn!(instance_id = %id, "upkeep of an instance timed out");
                    metrics.upkeep_failed("timeout");
                }
            }
            *self.inner.upkeep_cursor.lock().unwrap() = Some(id.to_owned());
        }
        self.keep_facts(&mut facts).await;
        Ok(true)
    }

    /// Writes what the pass measured so far, and empties `facts`. A batch the store refused
    /// is written instance by instance: one bad figure loses no other. A store that cannot be
    /// reached is not asked again a hundred times (each would wait out the pool).
    async fn keep_facts(&self, facts: &mut Vec<(String, Option<(String, i64)>)>) {
        if facts.is_empty() {
            return;
        }
        match self.inner.store.keep_facts(facts).await {
            Ok(()) => {}
            Err(e @ (StoreError::Query(_) | StoreError::Corrupt(_))) => {
                tracing::warn!(instances = facts.len(), error = %e, "keeping upkeep facts failed; keeping them one by one");
                for one in facts.iter() {
                    if let Err(e) = self.inner.store.keep_facts(std::slice::from_ref(one)).await {
                        tracing::warn!(instance_id = %one.0, error = %e, "keeping upkeep facts failed");
                        self.inner.runner.metrics().upkeep_failed("error");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(instances = facts.len(), error = %e, "keeping upkeep facts failed");
                self.inner.runner.metrics().upkeep_failed("error");
            }
        }
        facts.clear();
    }

    /// Counts the backend objects nothing claims, for `/metrics`. Bounded like one instance's
    /// upkeep: a backend that never answers must not stop every later pass.
    async fn count_orphans(&self) {
        let find = crate::orphans::find(&self.inner.broker, &self.inner.store, 0);
        match tokio::time::timeout(self.inner.timing.upkeep_timeout, find).await {
            Ok(Ok(sweep)) => self.inner.runner.metrics().set_orphans(sweep.orphans.len()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "counting orphans failed");
                self.inner.runner.metrics().upkeep_failed("error");
            }
            Err(_) => {
                tracing::warn!("counting orphans timed out");
                self.inner.runner.metrics().upkeep_failed("timeout");
            }
        }
    }

    pub fn catalog(&self) -> &CatalogIndex {
        &self.inner.catalog
    }

    pub fn runner(&self) -> &Runner {
        &self.inner.runner
    }

    /// This process, as operation records name their runner (see [`Runner::token`]).
    fn token(&self) -> &str {
        self.inner.runner.token()
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

    /// How this call runs: [`Mode::Sync`] or [`Mode::Async`], never [`Mode::Either`].
    fn check_mode(&self, op: Operation, plan: &Plan, caller: &Caller) -> Result<Mode, OsbError> {
        match (self.inner.broker.mode(op, plan), caller.accepts_incomplete) {
            (Mode::Async, false) => Err(OsbError::AsyncRequired),
            (Mode::Either, true) => Ok(Mode::Async),
            (Mode::Either, false) => Ok(Mode::Sync),
            (mode, _) => Ok(mode),
        }
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

    /// A new operation's record, for [`Store::start`] to write with its row.
    fn new_operation(
        &self,
        caller: &Caller,
        instance: &str,
        binding: Option<&str>,
        fingerprint: &str,
        redo: &Redo,
    ) -> OperationRow {
        let now = now_ms();
        let kind = redo.kind();
        OperationRow {
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
            runner: self.token().to_owned(),
            request: Some(to_text(redo)),
        }
    }

    /// Records a new operation on instance `id` and takes its instance or binding for it as
    /// `start` says (atomically against other requests); `None`, with nothing written, when
    /// another request holds it.
    async fn claim(
        &self,
        caller: &Caller,
        id: &InstanceId,
        fingerprint: &str,
        start: Start<'_>,
        redo: &Redo,
    ) -> Result<Option<OperationRow>, OsbError> {
        let binding = match start {
            Start::Binding { id, .. } => Some(id),
            Start::NewBinding(row) => Some(row.id.as_str()),
            Start::Instance { .. } | Start::NewInstance(_) => None,
        };
        let op = self.new_operation(caller, id.as_str(), binding, fingerprint, redo);
        Ok(self.inner.store.start(&op, start).await?.then_some(op))
    }

    /// Runs `work` as operation `op`; a sync caller waits for its reply, an async one gets 202.
    async fn launch<F>(
        &self,
        mode: Mode,
        op: &str,
        dashboard_url: Option<&str>,
        work: F,
    ) -> Result<Reply, OsbError>
    where
        F: Future<Output = Result<Reply, OsbError>> + Send + 'static,
    {
        let task = self.spawn_operation(op, work);
        match mode {
            Mode::Async => Ok(accepted_with(op, dashboard_url)),
            // `check_mode` settled `Either` already.
            // A join error is a panic in the panic handling itself, or the runtime shutting
            // down: its words are a bug's, logged for the operator and kept out of the reply.
            Mode::Sync | Mode::Either => task.await.map_err(|e| {
                tracing::error!(operation = %op, error = %e, "operation task ended abnormally");
                OsbError::Internal(recovery::PANICKED.into())
            })?,
        }
    }

    /// Runs operation `op`'s task on the broker runtime. A panic in it (a bug) ends the
    /// operation failed, as one whose records are gone ends: left to recovery, the same code
    /// would run again at every lease, and a sync request, answered 500 already, would have
    /// the change the platform was told failed made after all.
    fn spawn_operation<T: Send + 'static>(
        &self,
        op: &str,
        work: impl Future<Output = Result<T, OsbError>> + Send + 'static,
    ) -> tokio::task::JoinHandle<Result<T, OsbError>> {
        let engine = self.clone();
        let id = op.to_owned();
        self.inner.runner.spawn_operation(op, async move {
            match std::panic::AssertUnwindSafe(work).catch_unwind().await {
                Ok(result) => result,
                Err(_) => Err(engine.end_panicked(&id).await),
            }
        })
    }

    /// Records that operation `op` failed with `err` and puts its row back as `release` says
    /// (the usability flags only for updates and deprovisions, as the spec allows). Fenced: a
    /// taken-over operation writes nothing.
    async fn failed(
        &self,
        op: &str,
        release: Release<'_>,
        err: &BrokerError,
        instance_usable: Option<bool>,
        update_repeatable: Option<bool>,
    ) -> Result<(), StoreError> {
        let recorded = self
            .inner
            .store
            .fail(
                op,
                self.token(),
                release,
                &err.to_string(),
                instance_usable,
                update_repeatable,
            )
            .await?;
        if !recorded {
            tracing::warn!(operation = %op, "operation failed after it was taken over; its failure was not recorded");
        }
        Ok(())
    }

    /// Runs a backend call within its plan's `maximum_polling_duration`, if it has one: past it
    /// the platform has stopped polling (and will clean up), so the call is abandoned and the
    /// operation ends failed, letting the platform's delete run.
    async fn bounded<T>(
        &self,
        plan: &Plan,
        work: impl Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        let Some(max) = plan.maximum_polling_duration else {
            return work.await;
        };
        tokio::time::timeout(Duration::from_secs(max), work)
            .await
            .unwrap_or_else(|_| {
                Err(BrokerError::Failed(format!(
                    "the operation ran past plan {:?}'s maximum_polling_duration of {max} s and was abandoned",
                    plan.name
                )))
            })
    }

    /// Sleeps a little while an identical request finishes; `false` once the wait is over.
    async fn wait_turn(&self, started: Instant) -> bool {
        if started.elapsed() >= self.inner.timing.sync_wait {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        true
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_binding_is_one_object_of_the_texts_as_stored() {
        let response: BTreeMap<String, Box<RawValue>> = parse_json(
            r#"{"syslog_drain_url":"syslog://d","metadata":{"expires_at":"x"}}"#,
            "r",
        )
        .unwrap();
        let body = StoredBinding {
            response,
            credentials: Some(
                json_object(r#"{"password":"p\"w","port":3306}"#.into(), "c").unwrap(),
            ),
            parameters: Some(json_object("{}".into(), "p").unwrap()),
        };
        let written = String::from_utf8(Reply::new(200, body).body).unwrap();
        assert_eq!(
            written,
            r#"{"metadata":{"expires_at":"x"},"syslog_drain_url":"syslog://d","credentials":{"password":"p\"w","port":3306},"parameters":{}}"#
        );
        let absent = StoredBinding {
            response: BTreeMap::new(),
            credentials: None,
            parameters: None,
        };
        assert_eq!(Reply::new(200, absent).body, b"{}");
    }

    #[test]
    fn a_stored_text_that_is_no_json_object_is_corrupt() {
        for text in ["[1]", "\"s\"", "{\"a\":", "null"] {
            assert!(
                matches!(json_object(text.into(), "t"), Err(StoreError::Corrupt(_))),
                "{text}"
            );
        }
        let padded = json_object(" {\"a\":1} ".into(), "t").unwrap();
        assert_eq!(padded.get(), "{\"a\":1}", "written out without the padding");
    }
}
