//! Test-only: a fake backend (counts calls, sleeps to widen races) and helpers that start the
//! real osb-core server around it on port 0.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use diesel_async::{
    AsyncConnection, AsyncMysqlConnection, AsyncPgConnection, SimpleAsyncConnection,
};
use osb_core::broker::*;
use osb_core::catalog::{Catalog, Plan};
use osb_core::config::BrokerConfig;
use osb_core::credentials::{Credentials, generate_password};
use osb_core::metrics::Metrics;
use osb_core::orphans::BackendObject;
use osb_core::server::{Running, start};
use osb_core::store::{InstanceRow, InstanceState, OperationRow, OperationState};
use serde_json::json;

pub const SERVICE: &str = "fake-service-id";
pub const PLAN: &str = "fake-small-id";
pub const PLAN_LARGE: &str = "fake-large-id";
pub const PLAN_FIXED: &str = "fake-fixed-id";
pub const PLAN_ASYNC: &str = "fake-async-id";
pub const PLAN_HANG: &str = "fake-hang-id";
pub const PLAN_BROKEN: &str = "fake-broken-id";
pub const PLAN_BROKEN_ASYNC: &str = "fake-broken-async-id";
/// Its backend is unreachable: every call fails before changing anything.
pub const PLAN_DOWN: &str = "fake-down-id";
/// Its bindings rotate; a bind parameter `expires_at` comes back as the binding's expiry.
pub const PLAN_ROTATE: &str = "fake-rotate-id";
/// Its bindings need an app (422 RequiresApp without one).
pub const PLAN_APP: &str = "fake-app-id";
/// What the broken plans' backend says when it fails.
pub const BROKEN: &str = "the fake backend's disk is full";

#[derive(Default)]
pub struct Calls {
    pub provision: AtomicUsize,
    pub bind: AtomicUsize,
    pub unbind: AtomicUsize,
    pub deprovision: AtomicUsize,
    pub upkeep: AtomicUsize,
    /// The instances the last upkeep pass announced.
    pub pass_saw: std::sync::Mutex<Vec<String>>,
    /// Makes the first look at a pass and the object listing never answer.
    pub hang_sweeps: std::sync::atomic::AtomicBool,
    /// What the backend lists as its objects.
    pub objects: std::sync::Mutex<Vec<BackendObject>>,
}

/// Test-only backend: does nothing but count and wait.
pub struct FakeBroker {
    pub calls: Arc<Calls>,
    pub upkeep_every: Option<Duration>,
}

impl FakeBroker {
    async fn pause(plan: &Plan, op: Operation) {
        let ms = match (plan.id.as_str(), op) {
            // Long enough for the testkit to send its requests while it runs, even on a busy CI.
            (PLAN_ASYNC, _) => 2000,
            (PLAN_HANG, Operation::Provision) => 3_600_000,
            _ => 50,
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[async_trait]
impl ServiceBroker for FakeBroker {
    fn mode(&self, _op: Operation, plan: &Plan) -> Mode {
        if [PLAN_ASYNC, PLAN_HANG, PLAN_BROKEN_ASYNC].contains(&plan.id.as_str()) {
            Mode::Async
        } else {
            Mode::Sync
        }
    }

    fn dashboard_url(
        &self,
        instance_id: &osb_core::ids::InstanceId,
        _plan: &Plan,
    ) -> Option<String> {
        Some(format!("https://dash.example/{instance_id}"))
    }

    fn upkeep_interval(&self) -> Option<Duration> {
        self.upkeep_every
    }

    async fn upkeep_pass(&self, instances: &[InstanceView<'_>]) -> Result<(), BrokerError> {
        if self.calls.hang_sweeps.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        *self.calls.pass_saw.lock().unwrap() =
            instances.iter().map(|i| i.id.as_str().to_owned()).collect();
        Ok(())
    }

    async fn objects(&self) -> Result<Vec<BackendObject>, BrokerError> {
        if self.calls.hang_sweeps.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(self.calls.objects.lock().unwrap().clone())
    }

    async fn upkeep(
        &self,
        instance: InstanceView<'_>,
        _bindings: BindingsOf<'_>,
    ) -> Result<Option<osb_core::wire::InstanceMetadata>, BrokerError> {
        let n = self.calls.upkeep.fetch_add(1, Ordering::SeqCst);
        let announced = self
            .calls
            .pass_saw
            .lock()
            .unwrap()
            .iter()
            .any(|id| id == instance.id.as_str());
        let mut facts = osb_core::wire::InstanceMetadata::default();
        facts.attributes.insert("upkeep_pass".into(), json!(n));
        facts
            .attributes
            .insert("announced".into(), json!(announced));
        Ok(Some(facts))
    }

    async fn provision(&self, input: ProvisionInput<'_>) -> Result<Provisioned, BrokerError> {
        self.calls.provision.fetch_add(1, Ordering::SeqCst);
        Self::pause(input.plan, Operation::Provision).await;
        if input.parameters.contains_key("panic") {
            panic!("the fake broker's provision hit a bug");
        }
        if [PLAN_BROKEN, PLAN_BROKEN_ASYNC].contains(&input.plan.id.as_str()) {
            return Err(BrokerError::Failed(BROKEN.into()));
        }
        if input.plan.id == PLAN_DOWN {
            return Err(BrokerError::Unavailable("the fake backend is down".into()));
        }
        Ok(Provisioned {
            dashboard_url: Some(format!("https://dash.example/{}", input.instance_id)),
            metadata: None,
            state: json!({"server": "fake-1"}),
        })
    }

    async fn update(&self, input: UpdateInput<'_>) -> Result<Updated, BrokerError> {
        Self::pause(input.plan, Operation::Update).await;
        if input.parameters.is_some_and(|p| p.contains_key("panic")) {
            panic!("the fake broker's update hit a bug");
        }
        Ok(Updated::default())
    }

    async fn deprovision(&self, input: DeprovisionInput<'_>) -> Result<(), BrokerError> {
        self.calls.deprovision.fetch_add(1, Ordering::SeqCst);
        Self::pause(input.instance.plan, Operation::Deprovision).await;
        Ok(())
    }

    async fn bind(&self, input: BindInput<'_>) -> Result<Bound, BrokerError> {
        self.calls.bind.fetch_add(1, Ordering::SeqCst);
        Self::pause(input.instance.plan, Operation::Bind).await;
        if input.parameters.contains_key("panic") {
            panic!("the fake broker's bind hit a bug");
        }
        let app = input.bind_resource.and_then(|r| r.app_guid.as_ref());
        if input.instance.plan.id == PLAN_APP && app.is_none() {
            return Err(BrokerError::RequiresApp(
                "this plan binds applications only".into(),
            ));
        }
        let metadata = input
            .parameters
            .get("expires_at")
            .and_then(|v| v.as_str())
            .map(|at| osb_core::wire::BindingMetadata {
                expires_at: Some(at.into()),
                renew_before: None,
            });
        Ok(Bound {
            metadata,
            credentials: Credentials::new()
                .with("username", input.binding_id.as_str())
                .with_secret("password", &generate_password(Default::default())),
            state: json!({"user": input.binding_id.as_str()}),
            ..Bound::default()
        })
    }

    async fn unbind(&self, input: UnbindInput<'_>) -> Result<(), BrokerError> {
        self.calls.unbind.fetch_add(1, Ordering::SeqCst);
        Self::pause(input.instance.plan, Operation::Unbind).await;
        Ok(())
    }
}

pub fn catalog() -> Catalog {
    let schema = json!({"service_instance": {"create": {"parameters": {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {"size": {"type": "integer", "minimum": 1, "maximum": 10}},
        "additionalProperties": false
    }}}});
    serde_json::from_value(json!({"services": [{
        "id": SERVICE, "name": "fake", "description": "A fake service for osb-core's tests",
        "bindable": true, "instances_retrievable": true, "bindings_retrievable": true,
        "plan_updateable": true,
        "plans": [
            {"id": PLAN, "name": "small", "description": "small", "schemas": schema,
             "maintenance_info": {"version": "1.0.0"}},
            {"id": PLAN_LARGE, "name": "large", "description": "large"},
            {"id": PLAN_FIXED, "name": "fixed", "description": "no plan changes", "plan_updateable": false},
            {"id": PLAN_ASYNC, "name": "async", "description": "asynchronous"},
            {"id": PLAN_HANG, "name": "hang", "description": "never finishes",
             "maximum_polling_duration": 2},
            {"id": PLAN_BROKEN, "name": "broken", "description": "provisioning fails"},
            {"id": PLAN_BROKEN_ASYNC, "name": "broken-async", "description": "provisioning fails later"},
            {"id": PLAN_DOWN, "name": "down", "description": "the backend is unreachable"},
            {"id": PLAN_ROTATE, "name": "rotate", "description": "bindings rotate",
             "binding_rotatable": true},
            {"id": PLAN_APP, "name": "app", "description": "bindings need an app"}
        ]
    }]}))
    .unwrap()
}

pub const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// A config for a broker on 127.0.0.1:0 over `store_url`; `extra` is more TOML for `[broker]`.
pub fn config(store_url: &str, extra: &str) -> BrokerConfig {
    let text = format!(
        r#"
        listen = "127.0.0.1:0"
        workers = 2
        encryption_key = "{KEY}"
        {extra}
        [store]
        url = "{store_url}"
        pool_size = 8
        [operations]
        lease_secs = 2
        heartbeat_secs = 1
        "#
    );
    use figment::providers::Format;
    figment::Figment::new()
        .merge(figment::providers::Toml::string(&text))
        .merge(figment::providers::Serialized::default(
            "catalog",
            catalog(),
        ))
        .extract()
        .expect("test config")
}

pub fn single_platform(store_url: &str) -> BrokerConfig {
    config(
        store_url,
        "username = \"broker\"\npassword = \"broker-secret\"",
    )
}

pub async fn spawn(config: &BrokerConfig) -> (Running, Arc<Calls>) {
    spawn_with_upkeep(config, None).await
}

/// A broker whose backend asks for upkeep every `every`.
pub async fn spawn_with_upkeep(
    config: &BrokerConfig,
    every: Option<Duration>,
) -> (Running, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let broker = FakeBroker {
        calls: calls.clone(),
        upkeep_every: every,
    };
    let running = start(config, broker, Metrics::new())
        .await
        .expect("broker starts");
    (running, calls)
}

pub fn target(addr: std::net::SocketAddr, prefix: &str) -> osb_testkit::Target {
    let mut t = osb_testkit::Target::new(
        format!("http://{addr}{prefix}"),
        "broker",
        "broker-secret",
        SERVICE,
        PLAN,
    );
    t.provision_parameters = json!({"size": 3});
    t.invalid_parameters = Some(json!({"size": 99}));
    t.update_plan_id = Some(PLAN_LARGE.into());
    t.fixed_plan = Some((PLAN_FIXED.into(), PLAN_LARGE.into()));
    t.async_plan_id = Some(PLAN_ASYNC.into());
    t.app_required_plan_id = Some(PLAN_APP.into());
    t
}

pub fn sqlite_url(dir: &tempfile::TempDir) -> String {
    osb_testkit::sqlite_store(dir.path())
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// A fresh, empty database on the local MariaDB; panics (never skips) when it is unreachable.
pub async fn fresh_mysql() -> String {
    let admin = env_or("KPAAS_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306");
    let name = format!("osb_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = AsyncMysqlConnection::establish(&format!("{admin}/mysql"))
        .await
        .unwrap_or_else(|e| {
            panic!("MariaDB at {admin} is required (run scripts/backends.sh): {e}")
        });
    conn.batch_execute(&format!("CREATE DATABASE `{name}`"))
        .await
        .unwrap();
    format!("{admin}/{name}")
}

/// A fresh, empty database on the local PostgreSQL; panics (never skips) when unreachable.
pub async fn fresh_postgres() -> String {
    let admin = env_or(
        "KPAAS_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432",
    );
    let name = format!("osb_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = AsyncPgConnection::establish(&format!("{admin}/postgres"))
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin} is required (run scripts/backends.sh): {e}")
        });
    conn.batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    format!("{admin}/{name}")
}

/// Runs `check` on a SQLite store, then on a fresh MariaDB and a fresh PostgreSQL database,
/// each dropped after its run.
pub async fn on_every_store<F, Fut>(check: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    check(sqlite_url(&dir)).await;
    let mysql = fresh_mysql().await;
    check(mysql.clone()).await;
    drop_database(&mysql).await;
    let postgres = fresh_postgres().await;
    check(postgres.clone()).await;
    drop_database(&postgres).await;
}

/// Drops a database made by `fresh_mysql`/`fresh_postgres`.
pub async fn drop_database(url: &str) {
    let (admin, name) = url.rsplit_once('/').unwrap();
    if url.starts_with("mysql://") {
        if let Ok(mut c) = AsyncMysqlConnection::establish(&format!("{admin}/mysql")).await {
            let _ = c
                .batch_execute(&format!("DROP DATABASE IF EXISTS `{name}`"))
                .await;
        }
    } else if let Ok(mut c) = AsyncPgConnection::establish(&format!("{admin}/postgres")).await {
        let _ = c
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
}

/// A provisioning instance's row, on operation `op`.
pub fn instance_row(id: &str, op: &str) -> InstanceRow {
    InstanceRow {
        id: id.into(),
        platform: "default".into(),
        service_id: SERVICE.into(),
        plan_id: PLAN.into(),
        fingerprint: "f".into(),
        state: InstanceState::Provisioning.as_str().into(),
        operation_id: op.into(),
        parameters: "{}".into(),
        context: "{}".into(),
        maintenance_version: None,
        dashboard_url: None,
        metadata: None,
        broker_state: "null".into(),
        created_at: 1,
        updated_at: 1,
    }
}

/// A provision in progress on `instance`.
pub fn operation_row(id: &str, instance: &str) -> OperationRow {
    OperationRow {
        id: id.into(),
        platform: "default".into(),
        instance_id: instance.into(),
        binding_id: None,
        kind: "provision".into(),
        state: OperationState::InProgress.as_str().into(),
        fingerprint: "f".into(),
        description: None,
        instance_usable: None,
        update_repeatable: None,
        owner: "replica-a".into(),
        heartbeat_at: 1,
        created_at: 1,
        updated_at: 1,
        runner: "replica-a/1".into(),
        request: None,
    }
}
