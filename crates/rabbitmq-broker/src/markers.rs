//! Ownership markers: before it makes a vhost or a user, the broker records which platform's
//! instance or binding the name is for, as a global runtime parameter
//! (`kpaas-broker.<kind>.<name>`), which only administrators can write. A name that exists
//! without this broker's marker for the same owner is never adopted, changed or deleted.

use osb_core::BrokerError;
use osb_core::orphans;
pub use osb_core::orphans::{Claimed, Marker, Owner};
use rabbitmq_http_client::api::Client;
use rabbitmq_http_client::requests::GlobalRuntimeParameterDefinition;
use serde_json::{Map, Value, json};

use crate::errors::{failed, not_found};

pub type Api = Client<String, String, String>;

const PREFIX: &str = "kpaas-broker.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Vhost,
    User,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vhost => "vhost",
            Self::User => "user",
        }
    }
}

fn key(kind: Kind, name: &str) -> String {
    format!("{PREFIX}{}.{name}", kind.as_str())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn get(api: &Api, kind: Kind, name: &str) -> Result<Option<Map<String, Value>>, BrokerError> {
    match api.get_global_runtime_parameter(&key(kind, name)).await {
        Ok(p) => Ok(p.value.0.as_object().cloned()),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(failed(e)),
    }
}

fn owned_by(value: &Map<String, Value>, owner: Owner<'_>) -> bool {
    value.get("platform").and_then(Value::as_str) == Some(owner.platform)
        && value.get("owner_id").and_then(Value::as_str) == Some(owner.id)
        && value.get("parent").and_then(Value::as_str) == Some(owner.parent)
}

/// Marks `name` as `owner`'s; a name marked for anyone else is a [`BrokerError::Conflict`].
/// (Two claims racing for one name are one platform's identical requests, which osb-core lets
/// through one at a time.)
pub async fn claim(
    api: &Api,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
) -> Result<Claimed, BrokerError> {
    let claimed = match get(api, kind, name).await? {
        Some(value) if owned_by(&value, owner) => {
            if value.get("made") == Some(&Value::Bool(true)) {
                Claimed::Made
            } else {
                Claimed::Unmade
            }
        }
        Some(_) => {
            return Err(BrokerError::Conflict(format!(
                "the {} {name:?} exists and was not made by this broker for this {}",
                kind.as_str(),
                if kind == Kind::Vhost {
                    "instance"
                } else {
                    "binding"
                }
            )));
        }
        None => Claimed::Unmade,
    };
    // Written again on a retry: an orphan sweep must judge its age from now.
    put(api, kind, name, owner, claimed == Claimed::Made).await?;
    Ok(claimed)
}

/// Records on `owner`'s marker of `name` that the broker made the object.
pub async fn set_made(
    api: &Api,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
) -> Result<(), BrokerError> {
    put(api, kind, name, owner, true).await
}

async fn put(
    api: &Api,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
    made: bool,
) -> Result<(), BrokerError> {
    let value = json!({
        "kind": kind.as_str(), "name": name, "platform": owner.platform,
        "owner_id": owner.id, "parent": owner.parent, "created_at_ms": now_ms(), "made": made,
    });
    let Value::Object(value) = value else {
        unreachable!("a JSON object literal")
    };
    let key = key(kind, name);
    api.upsert_global_runtime_parameter(&GlobalRuntimeParameterDefinition { name: &key, value })
        .await
        .map_err(failed)
}

/// How far `owner`'s marker on `name` got; `None` when there is none for `owner`.
pub async fn held(
    api: &Api,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
) -> Result<Option<Claimed>, BrokerError> {
    Ok(get(api, kind, name)
        .await?
        .filter(|v| owned_by(v, owner))
        .map(|v| {
            if v.get("made") == Some(&Value::Bool(true)) {
                Claimed::Made
            } else {
                Claimed::Unmade
            }
        }))
}

/// [`orphans::remove_marked`] for `owner`'s marker on `name`.
pub async fn remove_marked<F>(
    api: &Api,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
    remove: impl FnOnce() -> F,
) -> Result<(), BrokerError>
where
    F: Future<Output = Result<(), BrokerError>>,
{
    let held = held(api, kind, name, owner).await?;
    orphans::remove_marked(held, remove, || release(api, kind, name, owner)).await
}

/// Removes `owner`'s marker on `name` (nothing when it is someone else's).
pub async fn release(
    api: &Api,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
) -> Result<(), BrokerError> {
    if held(api, kind, name, owner).await?.is_none() {
        return Ok(());
    }
    match api.clear_global_runtime_parameter(&key(kind, name)).await {
        Ok(()) => Ok(()),
        Err(e) if not_found(&e) => Ok(()),
        Err(e) => Err(failed(e)),
    }
}

/// Every marker of this broker.
pub async fn all(api: &Api) -> Result<Vec<Marker>, BrokerError> {
    let params = api.list_global_runtime_parameters().await.map_err(failed)?;
    Ok(params
        .into_iter()
        .filter(|p| p.name.starts_with(PREFIX))
        .filter_map(|p| {
            let v = p.value.0;
            let text = |k: &str| {
                v.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            Some(Marker {
                kind: text("kind"),
                name: text("name"),
                platform: text("platform"),
                owner_id: text("owner_id"),
                parent: text("parent"),
                created_at_ms: v.get("created_at_ms")?.as_i64()?,
                made: v.get("made") == Some(&Value::Bool(true)),
            })
        })
        .collect())
}
