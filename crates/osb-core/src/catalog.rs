//! The catalog: what `GET /v2/catalog` answers, and the index every request is checked against.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Digest;

use crate::error::OsbError;

/// `GET /v2/catalog`'s body, also the `[[catalog.services]]` section of a broker's config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Catalog {
    pub services: Vec<Service>,
}

/// A service offering.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    pub bindable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances_retrievable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bindings_retrievable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_context_updates: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard_client: Option<DashboardClient>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_updateable: Option<bool>,
    pub plans: Vec<Plan>,
}

/// The Cloud Foundry dashboard SSO extension.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DashboardClient {
    pub id: String,
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
}

/// A service plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub id: String,
    pub name: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bindable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding_rotatable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_updateable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schemas: Option<Schemas>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_polling_duration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_info: Option<MaintenanceInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Schemas {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_instance: Option<InstanceSchemas>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_binding: Option<BindingSchemas>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceSchemas {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<InputSchema>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<InputSchema>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BindingSchemas {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<InputSchema>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputSchema {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

/// `maintenance_info`, in the catalog and in requests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MaintenanceInfo {
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Plan {
    /// Whether a plan change may start from this plan (the plan's flag wins over the service's).
    pub fn updateable(&self, service: &Service) -> bool {
        self.plan_updateable
            .or(service.plan_updateable)
            .unwrap_or(false)
    }

    pub fn bindable(&self, service: &Service) -> bool {
        self.bindable.unwrap_or(service.bindable)
    }

    pub fn rotatable(&self) -> bool {
        self.binding_rotatable.unwrap_or(false)
    }
}

/// Which of a plan's parameter schemas applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaUse {
    Provision,
    Update,
    Bind,
}

/// The catalog checked once at start-up, with each plan's JSON schemas compiled.
pub struct CatalogIndex {
    catalog: Catalog,
    /// `GET /v2/catalog`'s body, serialised once.
    json: actix_web::web::Bytes,
    /// A strong entity tag of `json`: the same on every replica serving the same catalog.
    etag: String,
    /// When the catalog was first served, for `Last-Modified` (whole seconds, as HTTP dates
    /// carry them; see [`CatalogIndex::first_served`]).
    modified: std::time::SystemTime,
    plans: HashMap<String, (usize, usize)>,
    validators: HashMap<(String, SchemaUse), jsonschema::Validator>,
}

/// Why a catalog from config is unusable.
#[derive(Debug, thiserror::Error)]
#[error("catalog: {0}")]
pub struct CatalogError(String);

/// What a service may `require` of the platform.
const REQUIRES: [&str; 3] = ["syslog_drain", "route_forwarding", "volume_mount"];

/// Whether `v` is a Semantic Versioning 2.0.0 version: `MAJOR.MINOR.PATCH`, numbers without
/// leading zeros, then an optional `-pre.release` and `+build`.
fn is_semver(v: &str) -> bool {
    let (v, build) = v.split_once('+').map_or((v, None), |(a, b)| (a, Some(b)));
    let (core, pre) = v.split_once('-').map_or((v, None), |(a, b)| (a, Some(b)));
    let number = |n: &str| {
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0'))
    };
    let ident =
        |i: &str| !i.is_empty() && i.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| number(p))
        && pre.is_none_or(|p| {
            p.split('.')
                .all(|i| ident(i) && (!i.bytes().all(|b| b.is_ascii_digit()) || number(i)))
        })
        && build.is_none_or(|b| b.split('.').all(ident))
}

/// Schemas over this size are refused, as the spec requires.
const MAX_SCHEMA_BYTES: usize = 64 * 1024;

impl CatalogIndex {
    pub fn new(catalog: Catalog) -> Result<Self, CatalogError> {
        let mut plans = HashMap::new();
        let mut service_ids = HashSet::new();
        let mut service_names = HashSet::new();
        let mut validators = HashMap::new();
        for (si, service) in catalog.services.iter().enumerate() {
            let at = format!("service {:?}", service.name);
            for (field, value) in [
                ("id", &service.id),
                ("name", &service.name),
                ("description", &service.description),
            ] {
                if value.is_empty() {
                    return Err(CatalogError(format!("{at}: {field} must not be empty")));
                }
            }
            if !service_ids.insert(service.id.clone()) {
                return Err(CatalogError(format!(
                    "{at}: id {} is used twice",
                    service.id
                )));
            }
            if !service_names.insert(service.name.clone()) {
                return Err(CatalogError(format!("{at}: name is used twice")));
            }
            if service.plans.is_empty() {
                return Err(CatalogError(format!("{at}: needs at least one plan")));
            }
            if let Some(bad) = service
                .requires
                .iter()
                .find(|r| !REQUIRES.contains(&r.as_str()))
            {
                return Err(CatalogError(format!(
                    "{at}: requires {bad:?} is none of {REQUIRES:?}"
                )));
            }
            if let Some(client) = &service.dashboard_client
                && (client.id.is_empty() || client.secret.is_empty())
            {
                return Err(CatalogError(format!(
                    "{at}: dashboard_client needs a non-empty id and secret"
                )));
            }
            let mut plan_names = HashSet::new();
            for (pi, plan) in service.plans.iter().enumerate() {
                let at = format!("{at}, plan {:?}", plan.name);
                if plan.id.is_empty() || plan.name.is_empty() || plan.description.is_empty() {
                    return Err(CatalogError(format!(
                        "{at}: id, name and description must not be empty"
                    )));
                }
                if !plan_names.insert(plan.name.clone()) {
                    return Err(CatalogError(format!("{at}: name is used twice")));
                }
                if plans.insert(plan.id.clone(), (si, pi)).is_some()
                    || service_ids.contains(&plan.id)
                {
                    return Err(CatalogError(format!("{at}: id {} is used twice", plan.id)));
                }
                if let Some(m) = &plan.maintenance_info
                    && !is_semver(&m.version)
                {
                    return Err(CatalogError(format!(
                        "{at}: maintenance_info.version {:?} is not a semantic version (2.0.0)",
                        m.version
                    )));
                }
                for (use_, schema) in plan_schemas(plan) {
                    if schema.get("$schema").is_none() {
                        return Err(CatalogError(format!(
                            "{at}: the {use_:?} schema needs a \"$schema\" key"
                        )));
                    }
                    let size = serde_json::to_vec(schema).map(|v| v.len()).unwrap_or(0);
                    if size > MAX_SCHEMA_BYTES {
                        return Err(CatalogError(format!("{at}: a schema exceeds 64 kB")));
                    }
                    let validator = jsonschema::validator_for(schema)
                        .map_err(|e| CatalogError(format!("{at}: invalid {use_:?} schema: {e}")))?;
                    validators.insert((plan.id.clone(), use_), validator);
                }
            }
        }
        let json = serde_json::to_vec(&catalog)
            .map_err(|e| CatalogError(format!("cannot serialise the catalog: {e}")))?;
        let etag = hex::encode(&sha2::Sha256::digest(&json)[..16]);
        Ok(Self {
            catalog,
            json: json.into(),
            etag,
            modified: std::time::UNIX_EPOCH,
            plans,
            validators,
        })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The catalog as served: body, entity tag, time of first service.
    pub fn served(&self) -> (actix_web::web::Bytes, &str, std::time::SystemTime) {
        (self.json.clone(), &self.etag, self.modified)
    }

    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// Sets when this catalog was first served, in Unix milliseconds: taken from the state
    /// store, so that every replica sends the same `Last-Modified`.
    pub fn first_served(&mut self, unix_ms: i64) {
        let secs = u64::try_from(unix_ms / 1000).unwrap_or(0);
        self.modified = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    }

    pub fn service(&self, service_id: &str) -> Option<&Service> {
        self.catalog.services.iter().find(|s| s.id == service_id)
    }

    pub fn plan(&self, plan_id: &str) -> Option<(&Service, &Plan)> {
        self.plans.get(plan_id).map(|&(si, pi)| {
            let service = &self.catalog.services[si];
            (service, &service.plans[pi])
        })
    }

    /// The service and plan a request names, or the 400 the spec asks for.
    pub fn resolve(&self, service_id: &str, plan_id: &str) -> Result<(&Service, &Plan), OsbError> {
        let service = self.service(service_id).ok_or_else(|| {
            OsbError::BadRequest(format!(
                "service_id {service_id:?} is not in this broker's catalog"
            ))
        })?;
        match self.plan(plan_id) {
            Some((s, plan)) if s.id == service.id => Ok((service, plan)),
            _ => Err(OsbError::BadRequest(format!(
                "plan_id {plan_id:?} is not a plan of service {:?}",
                service.name
            ))),
        }
    }

    /// Checks `parameters` against the plan's schema for this use; the error names the field.
    pub fn validate(
        &self,
        plan: &Plan,
        use_: SchemaUse,
        parameters: &Map<String, Value>,
    ) -> Result<(), OsbError> {
        let Some(validator) = self.validators.get(&(plan.id.clone(), use_)) else {
            return Ok(());
        };
        let instance = Value::Object(parameters.clone());
        let problems: Vec<String> = validator
            .iter_errors(&instance)
            .take(5)
            .map(|e| {
                let path = e.instance_path.to_string();
                let at = if path.is_empty() {
                    "parameters".to_owned()
                } else {
                    format!("parameters{path}")
                };
                format!("{at}: {e}")
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(OsbError::BadRequest(format!(
                "invalid parameters: {}",
                problems.join("; ")
            )))
        }
    }
}

fn schema_params(s: Option<&InputSchema>) -> Option<&Value> {
    s.and_then(|s| s.parameters.as_ref())
}

fn plan_schemas(plan: &Plan) -> Vec<(SchemaUse, &Value)> {
    let Some(schemas) = &plan.schemas else {
        return Vec::new();
    };
    let instance = schemas.service_instance.as_ref();
    [
        (
            SchemaUse::Provision,
            schema_params(instance.and_then(|i| i.create.as_ref())),
        ),
        (
            SchemaUse::Update,
            schema_params(instance.and_then(|i| i.update.as_ref())),
        ),
        (
            SchemaUse::Bind,
            schema_params(
                schemas
                    .service_binding
                    .as_ref()
                    .and_then(|b| b.create.as_ref()),
            ),
        ),
    ]
    .into_iter()
    .filter_map(|(u, s)| s.map(|s| (u, s)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog() -> Catalog {
        serde_json::from_value(json!({"services": [{
            "id": "svc", "name": "svc", "description": "d", "bindable": true,
            "plans": [{
                "id": "p1", "name": "small", "description": "d",
                "schemas": {"service_instance": {"create": {"parameters": {
                    "$schema": "http://json-schema.org/draft-04/schema#",
                    "type": "object",
                    "properties": {"size": {"type": "integer", "maximum": 10}},
                    "additionalProperties": false
                }}}}
            }, {"id": "p2", "name": "large", "description": "d", "bindable": false}]
        }]}))
        .unwrap()
    }

    #[test]
    fn resolve_rejects_a_plan_of_another_service() {
        let index = CatalogIndex::new(catalog()).unwrap();
        assert!(index.resolve("svc", "p1").is_ok());
        assert!(index.resolve("svc", "nope").is_err());
        assert!(index.resolve("nope", "p1").is_err());
    }

    #[test]
    fn schema_error_names_the_field() {
        let index = CatalogIndex::new(catalog()).unwrap();
        let (_, plan) = index.plan("p1").unwrap();
        let bad = json!({"size": 99}).as_object().unwrap().clone();
        let err = index
            .validate(plan, SchemaUse::Provision, &bad)
            .unwrap_err();
        assert!(err.to_string().contains("/size"), "{err}");
        let good = json!({"size": 3}).as_object().unwrap().clone();
        assert!(index.validate(plan, SchemaUse::Provision, &good).is_ok());
    }

    #[test]
    fn plan_bindable_overrides_service() {
        let index = CatalogIndex::new(catalog()).unwrap();
        let (service, plan) = index.plan("p2").unwrap();
        assert!(!plan.bindable(service));
    }

    #[test]
    fn semantic_versions_are_told_apart() {
        for ok in [
            "1.0.0",
            "0.0.1",
            "10.20.30",
            "1.0.0-alpha.1",
            "1.0.0+build.5",
            "1.0.0-rc.1+b",
        ] {
            assert!(is_semver(ok), "{ok}");
        }
        for bad in [
            "1.0", "1", "01.0.0", "1.0.0-", "1.0.0-01", "v1.0.0", "1.0.0+", "",
        ] {
            assert!(!is_semver(bad), "{bad}");
        }
    }

    #[test]
    fn catalog_mistakes_the_spec_forbids_stop_the_start() {
        let refused = |edit: fn(&mut Catalog)| {
            let mut c = catalog();
            edit(&mut c);
            CatalogIndex::new(c).is_err()
        };
        assert!(refused(|c| c.services[0].requires = vec!["coffee".into()]));
        assert!(refused(|c| {
            c.services[0].dashboard_client = Some(DashboardClient {
                id: "".into(),
                secret: "s".into(),
                redirect_uri: None,
            })
        }));
        assert!(refused(|c| {
            c.services[0].plans[0].maintenance_info = Some(MaintenanceInfo {
                version: "1.0".into(),
                description: None,
            })
        }));
        let mut c = catalog();
        let schemas = serde_json::to_value(&c.services[0].plans[0].schemas).unwrap();
        let mut schemas = schemas.to_string();
        schemas = schemas.replace(
            "\"$schema\":\"http://json-schema.org/draft-04/schema#\",",
            "",
        );
        c.services[0].plans[0].schemas = serde_json::from_str(&schemas).unwrap();
        assert!(
            CatalogIndex::new(c).is_err(),
            "a schema without $schema was taken"
        );
        assert!(CatalogIndex::new(catalog()).is_ok());
    }

    #[test]
    fn duplicate_plan_ids_are_refused() {
        let mut c = catalog();
        c.services[0].plans[1].id = "p1".into();
        assert!(CatalogIndex::new(c).is_err());
    }
}
