//! OSB 2.17 request and response bodies, as they travel over HTTP.
//!
//! Unknown fields are ignored (the spec's vendor-extension rule); required fields are
//! plain (non-`Option`) so that serde itself refuses a body without them. An optional object
//! sent empty (`{}`) or `null` is read as absent, as is an empty optional query value:
//! clients generated from the OSB OpenAPI document send every optional object, empty.

use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::catalog::MaintenanceInfo;

/// An optional object where `{}` and `null` mean absent.
fn non_empty<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) if map.is_empty() => Ok(None),
        Some(value) => T::deserialize(value).map(Some).map_err(D::Error::custom),
    }
}

/// An optional query value where an empty string means absent.
fn non_empty_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

/// `PUT /v2/service_instances/:id`.
#[derive(Debug, Clone, Deserialize)]
pub struct ProvisionRequest {
    pub service_id: String,
    pub plan_id: String,
    #[serde(default, deserialize_with = "non_empty")]
    pub context: Option<Map<String, Value>>,
    pub organization_guid: String,
    pub space_guid: String,
    #[serde(default, deserialize_with = "non_empty")]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "non_empty")]
    pub maintenance_info: Option<MaintenanceInfo>,
}

/// `PATCH /v2/service_instances/:id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateRequest {
    pub service_id: String,
    #[serde(default)]
    pub plan_id: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub context: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "non_empty")]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "non_empty")]
    pub previous_values: Option<PreviousValues>,
    #[serde(default, deserialize_with = "non_empty")]
    pub maintenance_info: Option<MaintenanceInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviousValues {
    #[serde(default)]
    pub service_id: Option<String>,
    #[serde(default)]
    pub plan_id: Option<String>,
    #[serde(default)]
    pub organization_id: Option<String>,
    #[serde(default)]
    pub space_id: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub maintenance_info: Option<MaintenanceInfo>,
}

/// `PUT /v2/service_instances/:id/service_bindings/:bid`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindRequest {
    /// Empty when absent: a rotation (`predecessor_binding_id`) may leave out the ids, which
    /// are then those of the instance; any other bind must send them.
    #[serde(default)]
    pub service_id: String,
    #[serde(default)]
    pub plan_id: String,
    #[serde(default, deserialize_with = "non_empty")]
    pub context: Option<Map<String, Value>>,
    #[serde(default)]
    pub app_guid: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub bind_resource: Option<BindResource>,
    #[serde(default, deserialize_with = "non_empty")]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default)]
    pub predecessor_binding_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BindResource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_guid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Query of `DELETE` on instances and bindings: both ids are required there.
#[derive(Debug, Clone, Deserialize)]
pub struct DeleteQuery {
    pub service_id: Option<String>,
    pub plan_id: Option<String>,
}

/// The `accepts_incomplete` query parameter, on any route.
#[derive(Debug, Clone, Deserialize)]
pub struct AsyncQuery {
    #[serde(default)]
    pub accepts_incomplete: Option<String>,
}

/// Query of `GET` and `last_operation`: hints only.
#[derive(Debug, Clone, Deserialize)]
pub struct FetchQuery {
    #[serde(default)]
    pub service_id: Option<String>,
    #[serde(default)]
    pub plan_id: Option<String>,
    #[serde(default, deserialize_with = "non_empty_str")]
    pub operation: Option<String>,
}

/// Body of a 200/201/202 answer to provision or update.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InstanceOperationResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<InstanceMetadata>,
}

/// Labels and attributes the broker attaches to an instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InstanceMetadata {
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub labels: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub attributes: Map<String, Value>,
}

impl InstanceMetadata {
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.attributes.is_empty()
    }
}

/// Body of `GET /v2/service_instances/:id`.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceResponse {
    pub service_id: String,
    pub plan_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dashboard_url: Option<String>,
    /// As stored (a JSON object, checked), not parsed and written out again.
    pub parameters: Box<serde_json::value::RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance_info: Option<MaintenanceInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<InstanceMetadata>,
}

/// Body of a 200/201 bind and of `GET` on a binding (the parts that are not secret are here;
/// `credentials` is filled in from the encrypted store when answering).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BindingResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BindingMetadata>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syslog_drain_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_service_url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BindingMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeMount {
    pub driver: String,
    pub container_dir: String,
    pub mode: String,
    pub device_type: String,
    pub device: Device,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Device {
    pub volume_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_config: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Endpoint {
    pub host: String,
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// Body of a 202 on bind, unbind and deprovision.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OperationResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

/// `state` of `last_operation`, spelled as the spec spells it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum LastOperationState {
    #[serde(rename = "in progress")]
    InProgress,
    #[serde(rename = "succeeded")]
    Succeeded,
    #[serde(rename = "failed")]
    Failed,
}

/// Body of `last_operation`.
#[derive(Debug, Clone, Serialize)]
pub struct LastOperationResponse {
    pub state: LastOperationState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_usable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_repeatable: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn provision_ignores_unknown_fields_and_needs_required_ones() {
        let ok: ProvisionRequest = serde_json::from_value(json!({
            "service_id": "s", "plan_id": "p", "organization_guid": "o", "space_guid": "sp",
            "x-vendor-extension": 1
        }))
        .unwrap();
        assert_eq!(ok.plan_id, "p");
        let err = serde_json::from_value::<ProvisionRequest>(json!({"service_id": "s"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("plan_id"), "{err}");
    }

    #[test]
    fn empty_optional_objects_are_absent() {
        let update: UpdateRequest = serde_json::from_value(json!({
            "service_id": "s", "context": {}, "parameters": {}, "maintenance_info": {},
            "previous_values": {"maintenance_info": {}}
        }))
        .unwrap();
        assert!(update.context.is_none());
        assert!(update.parameters.is_none());
        assert!(update.maintenance_info.is_none());
        assert!(update.previous_values.unwrap().maintenance_info.is_none());
        let update: UpdateRequest = serde_json::from_value(
            json!({"service_id": "s", "previous_values": {}, "parameters": null}),
        )
        .unwrap();
        assert!(update.previous_values.is_none() && update.parameters.is_none());
        let bind: BindRequest = serde_json::from_value(json!({
            "service_id": "s", "plan_id": "p", "bind_resource": {}, "context": null
        }))
        .unwrap();
        assert!(bind.bind_resource.is_none() && bind.context.is_none());
        let query: FetchQuery = serde_json::from_value(json!({"operation": ""})).unwrap();
        assert!(query.operation.is_none());
    }

    #[test]
    fn maintenance_info_with_fields_still_needs_a_version() {
        let err = serde_json::from_value::<ProvisionRequest>(json!({
            "service_id": "s", "plan_id": "p", "organization_guid": "o", "space_guid": "sp",
            "maintenance_info": {"description": "no version"}
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("version"), "{err}");
    }

    #[test]
    fn last_operation_state_is_spelled_as_the_spec() {
        let body = serde_json::to_value(LastOperationResponse {
            state: LastOperationState::InProgress,
            description: None,
            instance_usable: None,
            update_repeatable: None,
        })
        .unwrap();
        assert_eq!(body, json!({"state": "in progress"}));
    }
}
