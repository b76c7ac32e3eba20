//! Ownership markers: before it makes a database or a user, the broker records in its own
//! `kpaas_broker.owners` collection (apps' users have rights on their database only) which
//! platform's instance or binding the name is for. A name that exists without this broker's
//! marker for the same owner was made by someone else, and is never adopted, changed or dropped.

use futures::TryStreamExt;
use mongodb::bson::{DateTime, Document, doc};
use mongodb::{Client, Collection};
use osb_core::BrokerError;
use osb_core::orphans;
pub use osb_core::orphans::{Claimed, Marker, Owner};

use crate::errors::{DUPLICATE_KEY, code, failed};

/// What a marker is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Database,
    User,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::User => "user",
        }
    }
}

fn owners(client: &Client) -> Collection<Document> {
    client.database("kpaas_broker").collection("owners")
}

fn key(kind: Kind, name: &str) -> String {
    format!("{}:{name}", kind.as_str())
}

/// Marks `name` as `owner`'s; a name marked for anyone else is a [`BrokerError::Conflict`].
pub async fn claim(
    client: &Client,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
) -> Result<Claimed, BrokerError> {
    let marker = doc! {
        "_id": key(kind, name), "kind": kind.as_str(), "name": name,
        "platform": owner.platform, "owner_id": owner.id, "parent": owner.parent,
        "created_at": DateTime::now(),
    };
    match owners(client).insert_one(marker).await {
        Ok(_) => Ok(Claimed::Unmade),
        Err(e) if code(&e) == Some(DUPLICATE_KEY) => {
            if held(client, kind, name, owner).await?.is_none() {
                return Err(BrokerError::Conflict(format!(
                    "the {} {name:?} exists and was not made by this broker for this {}",
                    kind.as_str(),
                    if kind == Kind::Database {
                        "instance"
                    } else {
                        "binding"
                    }
                )));
            }
            // A retry is at work on it: an orphan sweep must judge its age from now.
            let marker = owners(client)
                .find_one_and_update(
                    doc! {"_id": key(kind, name)},
                    doc! {"$set": {"created_at": DateTime::now()}},
                )
                .await
                .map_err(failed)?;
            let made = marker.is_some_and(|m| m.get_bool("made").unwrap_or(false));
            Ok(if made { Claimed::Made } else { Claimed::Unmade })
        }
        Err(e) => Err(failed(e)),
    }
}

/// Records on `name`'s marker that the broker made the object.
pub async fn set_made(client: &Client, kind: Kind, name: &str) -> Result<(), BrokerError> {
    owners(client)
        .update_one(doc! {"_id": key(kind, name)}, doc! {"$set": {"made": true}})
        .await
        .map_err(failed)?;
    Ok(())
}

/// How far `owner`'s marker on `name` got; `None` when there is none for `owner`.
pub async fn held(
    client: &Client,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
) -> Result<Option<Claimed>, BrokerError> {
    let found = owners(client)
        .find_one(doc! {
            "_id": key(kind, name), "platform": owner.platform, "owner_id": owner.id,
            "parent": owner.parent,
        })
        .await
        .map_err(failed)?;
    Ok(found.map(|m| {
        if m.get_bool("made").unwrap_or(false) {
            Claimed::Made
        } else {
            Claimed::Unmade
        }
    }))
}

/// [`orphans::remove_marked`] for `owner`'s marker on `name`.
pub async fn remove_marked<F>(
    client: &Client,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
    remove: impl FnOnce() -> F,
) -> Result<(), BrokerError>
where
    F: Future<Output = Result<(), BrokerError>>,
{
    let held = held(client, kind, name, owner).await?;
    orphans::remove_marked(held, remove, || release(client, kind, name, owner)).await
}

/// Whether database `name` is frozen over its quota, as its marker says.
pub async fn frozen(client: &Client, name: &str) -> Result<bool, BrokerError> {
    let marker = owners(client)
        .find_one(doc! {"_id": key(Kind::Database, name)})
        .await
        .map_err(failed)?;
    Ok(marker.is_some_and(|m| m.get_bool("frozen").unwrap_or(false)))
}

/// Records on database `name`'s marker whether it is frozen.
pub async fn set_frozen(client: &Client, name: &str, frozen: bool) -> Result<(), BrokerError> {
    owners(client)
        .update_one(
            doc! {"_id": key(Kind::Database, name), "frozen": {"$ne": frozen}},
            doc! {"$set": {"frozen": frozen}},
        )
        .await
        .map_err(failed)?;
    Ok(())
}

/// Removes `owner`'s marker on `name` (nothing when it is someone else's).
pub async fn release(
    client: &Client,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
) -> Result<(), BrokerError> {
    owners(client)
        .delete_one(doc! {
            "_id": key(kind, name), "platform": owner.platform, "owner_id": owner.id,
            "parent": owner.parent,
        })
        .await
        .map_err(failed)?;
    Ok(())
}

/// Every marker; with `parent`, only the users under that database.
pub async fn all(client: &Client, parent: Option<&str>) -> Result<Vec<Marker>, BrokerError> {
    let filter = match parent {
        Some(p) => doc! {"kind": Kind::User.as_str(), "parent": p},
        None => doc! {},
    };
    let docs: Vec<Document> = owners(client)
        .find(filter)
        .await
        .map_err(failed)?
        .try_collect()
        .await
        .map_err(failed)?;
    Ok(docs
        .into_iter()
        .map(|d| {
            let text = |k: &str| d.get_str(k).unwrap_or_default().to_owned();
            Marker {
                kind: text("kind"),
                name: text("name"),
                platform: text("platform"),
                owner_id: text("owner_id"),
                parent: text("parent"),
                created_at_ms: d
                    .get_datetime("created_at")
                    .map(|t| t.timestamp_millis())
                    .unwrap_or(0),
                made: d.get_bool("made").unwrap_or(false),
            }
        })
        .collect())
}
