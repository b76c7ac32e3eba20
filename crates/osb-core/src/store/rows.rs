//! One struct per table row, and the states a row moves through.

use diesel::prelude::*;

use super::schema::{osb_bindings, osb_instances, osb_operations};

macro_rules! states {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}

states! {
    /// Where an instance is in its life.
    InstanceState {
        Provisioning => "provisioning",
        Ready => "ready",
        Updating => "updating",
        Deprovisioning => "deprovisioning",
        /// A provision that failed: a retried provision or a delete may follow.
        Failed => "failed",
        /// A deprovision that failed half-way: only another delete may follow.
        DeleteFailed => "delete failed",
    }
}

states! {
    /// Where a binding is in its life.
    BindingState {
        Binding => "binding",
        Bound => "bound",
        Unbinding => "unbinding",
        Failed => "failed",
    }
}

impl InstanceState {
    /// The states an operation holds an instance in: its current operation is in progress.
    pub const BUSY: [Self; 3] = [Self::Provisioning, Self::Updating, Self::Deprovisioning];
}

impl BindingState {
    /// The states an operation holds a binding in: its current operation is in progress.
    pub const BUSY: [Self; 2] = [Self::Binding, Self::Unbinding];
}

states! {
    /// An operation's state, spelled as `last_operation` reports it.
    OperationState {
        InProgress => "in progress",
        Succeeded => "succeeded",
        Failed => "failed",
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = osb_instances)]
#[diesel(treat_none_as_null = true)]
pub struct InstanceRow {
    pub id: String,
    pub platform: String,
    pub service_id: String,
    pub plan_id: String,
    /// Hash of what identifies the provision request, to tell a retry from a conflict.
    pub fingerprint: String,
    pub state: String,
    pub operation_id: String,
    pub parameters: String,
    pub context: String,
    pub maintenance_version: Option<String>,
    pub dashboard_url: Option<String>,
    pub metadata: Option<String>,
    pub broker_state: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = osb_bindings)]
#[diesel(treat_none_as_null = true)]
pub struct BindingRow {
    pub id: String,
    pub instance_id: String,
    pub platform: String,
    pub service_id: String,
    pub plan_id: String,
    pub fingerprint: String,
    pub state: String,
    pub operation_id: String,
    pub parameters: String,
    /// The non-secret part of the bind response, as JSON.
    pub response: Option<String>,
    /// The credentials, sealed (see `crypto`).
    pub credentials: Option<String>,
    pub broker_state: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = osb_operations)]
pub struct OperationRow {
    pub id: String,
    pub platform: String,
    pub instance_id: String,
    pub binding_id: Option<String>,
    pub kind: String,
    pub state: String,
    pub fingerprint: String,
    pub description: Option<String>,
    pub instance_usable: Option<bool>,
    pub update_repeatable: Option<bool>,
    /// The replica running it; with `heartbeat_at`, how a dead runner is noticed, and how a
    /// restarted replica knows its own unfinished operations.
    pub owner: String,
    pub heartbeat_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// The process running it (replica id and a start nonce): only it may write the end.
    pub runner: String,
    /// What running it again needs (the engine's `Redo`, as JSON).
    pub request: Option<String>,
}

/// What `GET` on an instance reads of its row: what it answers with and checks, without the
/// columns only operations use (a read's cost grows with each column it decodes).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = osb_instances)]
pub struct ShownInstance {
    pub id: String,
    pub platform: String,
    pub service_id: String,
    pub plan_id: String,
    pub state: String,
    pub parameters: String,
    pub maintenance_version: Option<String>,
    pub dashboard_url: Option<String>,
    pub metadata: Option<String>,
}

/// What `GET` on a binding reads of its row (see [`ShownInstance`]).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = osb_bindings)]
pub struct ShownBinding {
    pub id: String,
    pub instance_id: String,
    pub platform: String,
    pub state: String,
    pub parameters: String,
    pub response: Option<String>,
    pub credentials: Option<String>,
}

impl From<BindingRow> for ShownBinding {
    fn from(row: BindingRow) -> Self {
        Self {
            id: row.id,
            instance_id: row.instance_id,
            platform: row.platform,
            state: row.state,
            parameters: row.parameters,
            response: row.response,
            credentials: row.credentials,
        }
    }
}

/// What `last_operation` reads of an instance or a binding: whose it is.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = osb_instances)]
pub struct InstanceOwner {
    pub id: String,
    pub platform: String,
}

/// See [`InstanceOwner`].
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = osb_bindings)]
pub struct BindingOwner {
    pub id: String,
    pub instance_id: String,
    pub platform: String,
}

/// What `last_operation` reports of an operation, and checks it by.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = osb_operations)]
pub struct OperationStatus {
    pub id: String,
    pub platform: String,
    pub instance_id: String,
    pub binding_id: Option<String>,
    pub kind: String,
    pub state: String,
    pub description: Option<String>,
    pub instance_usable: Option<bool>,
    pub update_repeatable: Option<bool>,
}

impl From<OperationRow> for OperationStatus {
    fn from(row: OperationRow) -> Self {
        Self {
            id: row.id,
            platform: row.platform,
            instance_id: row.instance_id,
            binding_id: row.binding_id,
            kind: row.kind,
            state: row.state,
            description: row.description,
            instance_usable: row.instance_usable,
            update_repeatable: row.update_repeatable,
        }
    }
}

/// `state()` on each row type that has a `state` column: the column, parsed.
macro_rules! parsed_state {
    ($state:ident: $($row:ty),+) => {
        $(impl $row {
            pub fn state(&self) -> Option<$state> {
                $state::parse(&self.state)
            }
        })+
    };
}

parsed_state!(InstanceState: InstanceRow, ShownInstance);
parsed_state!(BindingState: BindingRow, ShownBinding);
parsed_state!(OperationState: OperationRow, OperationStatus);
