//! Ownership markers on the shared server: before it makes a key prefix's instance or a
//! binding's ACL user there, the broker records which platform's instance or binding the name
//! is for, in the hash `kpaas-broker:owners` (field `<kind>:<name>`), which no app can reach:
//! app users' keys are all under an `op_…:` prefix. A name found without this broker's marker
//! for the same owner is never adopted, changed or removed. (Dedicated servers need none: the
//! whole server is the instance's, claimed in the broker's store.)

use osb_core::BrokerError;
use osb_core::orphans;
pub use osb_core::orphans::{Claimed, Marker, Owner};
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

use crate::errors::failed;

const OWNERS: &str = "kpaas-broker:owners";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Prefix,
    User,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prefix => "prefix",
            Self::User => "user",
        }
    }
}

fn field(kind: Kind, name: &str) -> String {
    format!("{}:{name}", kind.as_str())
}

fn value(owner: Owner<'_>, made: bool) -> String {
    json!({
        "platform": owner.platform, "owner_id": owner.id, "parent": owner.parent,
        "created_at_ms": osb_core::store::now_ms(), "made": made,
    })
    .to_string()
}

fn owned_by(value: &Value, owner: Owner<'_>) -> bool {
    value["platform"] == owner.platform
        && value["owner_id"] == owner.id
        && value["parent"] == owner.parent
}

async fn get(
    conn: &mut MultiplexedConnection,
    kind: Kind,
    name: &str,
) -> Result<Option<Value>, BrokerError> {
    let raw: Option<String> = redis::cmd("HGET")
        .arg(OWNERS)
        .arg(field(kind, name))
        .query_async(conn)
        .await
        .map_err(failed)?;
    Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
}

/// Marks `name` as `owner`'s; a name marked for anyone else is a [`BrokerError::Conflict`].
/// (Two claims racing for one name are one platform's identical requests, which osb-core lets
/// through one at a time; `HSETNX` keeps two owners from both winning.)
pub async fn claim(
    conn: &mut MultiplexedConnection,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
) -> Result<Claimed, BrokerError> {
    let set: bool = redis::cmd("HSETNX")
        .arg(OWNERS)
        .arg(field(kind, name))
        .arg(value(owner, false))
        .query_async(conn)
        .await
        .map_err(failed)?;
    if set {
        return Ok(Claimed::Unmade);
    }
    match held(conn, kind, name, owner).await? {
        Some(claimed) => {
            // A retry is at work on it: an orphan sweep must judge its age from now.
            put(conn, kind, name, owner, claimed == Claimed::Made).await?;
            Ok(claimed)
        }
        None => Err(BrokerError::Conflict(format!(
            "the {} {name:?} is taken by another service instance or binding",
            kind.as_str()
        ))),
    }
}

async fn put(
    conn: &mut MultiplexedConnection,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
    made: bool,
) -> Result<(), BrokerError> {
    redis::cmd("HSET")
        .arg(OWNERS)
        .arg(field(kind, name))
        .arg(value(owner, made))
        .exec_async(conn)
        .await
        .map_err(failed)
}

/// Records on `owner`'s marker of `name` that the broker made (or is about to make) it.
pub async fn set_made(
    conn: &mut MultiplexedConnection,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
) -> Result<(), BrokerError> {
    put(conn, kind, name, owner, true).await
}

/// How far `owner`'s marker on `name` got; `None` when there is none for `owner`.
pub async fn held(
    conn: &mut MultiplexedConnection,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
) -> Result<Option<Claimed>, BrokerError> {
    Ok(get(conn, kind, name)
        .await?
        .filter(|v| owned_by(v, owner))
        .map(|v| {
            if v["made"] == true {
                Claimed::Made
            } else {
                Claimed::Unmade
            }
        }))
}

/// Whether `name` carries no marker at all (not merely none of a given owner's).
pub async fn absent(
    conn: &mut MultiplexedConnection,
    kind: Kind,
    name: &str,
) -> Result<bool, BrokerError> {
    let exists: bool = redis::cmd("HEXISTS")
        .arg(OWNERS)
        .arg(field(kind, name))
        .query_async(conn)
        .await
        .map_err(failed)?;
    Ok(!exists)
}

/// Removes `owner`'s marker on `name` (nothing when it is someone else's).
pub async fn release(
    conn: &mut MultiplexedConnection,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
) -> Result<(), BrokerError> {
    if held(conn, kind, name, owner).await?.is_none() {
        return Ok(());
    }
    redis::cmd("HDEL")
        .arg(OWNERS)
        .arg(field(kind, name))
        .exec_async(conn)
        .await
        .map_err(failed)
}

/// [`orphans::remove_marked`] for `owner`'s marker on `name`.
pub async fn remove_marked<F>(
    conn: &mut MultiplexedConnection,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
    remove: impl FnOnce(MultiplexedConnection) -> F,
) -> Result<(), BrokerError>
where
    F: Future<Output = Result<(), BrokerError>>,
{
    let held = held(conn, kind, name, owner).await?;
    let other = conn.clone();
    orphans::remove_marked(held, || remove(other), || release(conn, kind, name, owner)).await
}

/// Every marker on the shared server.
pub async fn all(conn: &mut MultiplexedConnection) -> Result<Vec<Marker>, BrokerError> {
    let fields: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(OWNERS)
        .query_async(conn)
        .await
        .map_err(failed)?;
    Ok(fields
        .into_iter()
        .filter_map(|(field, raw)| {
            let (kind, name) = field.split_once(':')?;
            let v: Value = serde_json::from_str(&raw).ok()?;
            let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            Some(Marker {
                kind: kind.to_owned(),
                name: name.to_owned(),
                platform: text("platform"),
                owner_id: text("owner_id"),
                parent: text("parent"),
                created_at_ms: v["created_at_ms"].as_i64().unwrap_or(0),
                made: v["made"] == true,
            })
        })
        .collect())
}
