//! osb-testkit: drives any OSB broker over HTTP through its whole lifecycle and checks the
//! spec's rules. It speaks only HTTP and JSON, so the same checks serve every broker.
//!
//! A broker's tests describe the broker in a [`Target`] and call [`check_all`] (and the
//! checks that need more than one broker process: [`check_restart`], [`check_isolation`]).

pub mod bench;
mod body;
mod client;
mod process;
pub mod proxy;
mod rules;

pub use client::{Client, ORIGINATING_IDENTITY, Reply, fresh_id};
pub use process::{
    BrokerProcess, ENCRYPTION_KEY, PASSWORD, USERNAME, broker_command, free_port, orphan_rows,
    sqlite_store, start_broker,
};
pub use rules::{check_all, check_backend_down, check_isolation, check_restart};

use serde_json::Value;

/// The rules a catalog like K-PaaS's cannot run: it has no parameter schema, no asynchronous
/// plan, no plan that cannot change, no binding that needs an app and no parameters.
pub const PLAIN_CATALOG_SKIPS: [&str; 5] = [
    "parameters_are_validated_against_the_schema",
    "async_operations_follow_the_polling_rules",
    "plan_changes_from_a_fixed_plan_are_refused",
    "bindings_that_need_an_app_are_refused_without_one",
    "plan_changes_keep_the_parameters",
];

/// What the testkit needs to know about a broker.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL including any platform prefix, e.g. `http://127.0.0.1:8080/cf`.
    pub base_url: String,
    pub username: String,
    pub password: String,
    pub service_id: String,
    /// A bindable plan.
    pub plan_id: String,
    /// Parameters valid for provisioning `plan_id`.
    pub provision_parameters: Value,
    /// Parameters the plan's schema refuses, if it has one.
    pub invalid_parameters: Option<Value>,
    /// A plan that `plan_id` may be updated to.
    pub update_plan_id: Option<String>,
    /// A plan of the same service that does not allow plan changes, with another plan to try.
    pub fixed_plan: Option<(String, String)>,
    /// A plan whose operations are asynchronous and take a moment (to observe "in progress").
    pub async_plan_id: Option<String>,
    /// A plan whose bindings need an app: a bind without one is 422 `RequiresApp`.
    pub app_required_plan_id: Option<String>,
    /// How many identical requests the race checks send at once.
    pub race_width: usize,
    /// How long to poll `last_operation` before giving up.
    pub poll_timeout: std::time::Duration,
    /// Rules this target opts out of because it lacks what they need (a schema, an async plan,
    /// a plan that cannot change); `check_all` reports them as skipped, and fails on a rule
    /// that cannot run and is not listed here.
    pub skip: Vec<&'static str>,
    /// Open a new connection for every request (behind a balancer that picks a replica per
    /// connection, so that each request may reach another replica).
    pub fresh_connections: bool,
}

impl Target {
    pub fn new(
        base_url: impl Into<String>,
        username: &str,
        password: &str,
        service_id: &str,
        plan_id: &str,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            username: username.into(),
            password: password.into(),
            service_id: service_id.into(),
            plan_id: plan_id.into(),
            provision_parameters: Value::Object(Default::default()),
            invalid_parameters: None,
            update_plan_id: None,
            fixed_plan: None,
            async_plan_id: None,
            app_required_plan_id: None,
            race_width: 16,
            poll_timeout: std::time::Duration::from_secs(60),
            skip: Vec::new(),
            fresh_connections: false,
        }
    }
}
