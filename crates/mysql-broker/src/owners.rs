//! Ownership markers: before it makes a database or an account, the broker records on that
//! server, in its own `kpaas_broker.owners` table (apps have no rights there), which platform's
//! instance or binding the name is for. A name that exists on the server without this broker's
//! marker for the same owner was made by someone else, and is never adopted, changed or dropped.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use osb_core::BrokerError;
pub use osb_core::orphans::{Claimed, Owner};

use crate::errors::failed;

/// Creates the marker tables if missing; cheap enough to run on every new admin connection.
/// `made` holds the names whose objects the broker has made (or is about to, the name being
/// free): a retry of a claim finds there whether a same-named object can be its own.
pub const SCHEMA: [&str; 3] = [
    "CREATE DATABASE IF NOT EXISTS kpaas_broker",
    "CREATE TABLE IF NOT EXISTS kpaas_broker.owners (\
        kind VARCHAR(16) NOT NULL, \
        name VARCHAR(64) NOT NULL, \
        platform VARCHAR(64) NOT NULL, \
        owner_id VARCHAR(128) NOT NULL, \
        parent VARCHAR(64) NOT NULL DEFAULT '', \
        created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, \
        PRIMARY KEY (kind, name), \
        KEY owners_parent (parent)\
    ) CHARACTER SET ascii COLLATE ascii_bin",
    "CREATE TABLE IF NOT EXISTS kpaas_broker.made (\
        kind VARCHAR(16) NOT NULL, \
        name VARCHAR(64) NOT NULL, \
        PRIMARY KEY (kind, name)\
    ) CHARACTER SET ascii COLLATE ascii_bin",
];

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

/// Marks `name` as `owner`'s; a name marked for anyone else is a [`BrokerError::Conflict`].
pub async fn claim(
    conn: &mut Conn,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
) -> Result<Claimed, BrokerError> {
    conn.exec_drop(
        "INSERT IGNORE INTO kpaas_broker.owners (kind, name, platform, owner_id, parent) VALUES (?, ?, ?, ?, ?)",
        (kind.as_str(), name, owner.platform, owner.id, owner.parent),
    )
    .await
    .map_err(failed)?;
    let inserted = conn.affected_rows() == 1;
    if is_mine(conn, kind, name, owner).await? {
        if !inserted {
            // A retry is at work on it: an orphan sweep must judge its age from now.
            conn.exec_drop(
                "UPDATE kpaas_broker.owners SET created_at = CURRENT_TIMESTAMP WHERE kind = ? AND name = ?",
                (kind.as_str(), name),
            )
            .await
            .map_err(failed)?;
        }
        if inserted {
            // A name claimed anew: whatever an earlier owner's object left there says nothing.
            conn.exec_drop(
                "DELETE FROM kpaas_broker.made WHERE kind = ? AND name = ?",
                (kind.as_str(), name),
            )
            .await
            .map_err(failed)?;
            return Ok(Claimed::Unmade);
        }
        Ok(if made(conn, kind, name).await? {
            Claimed::Made
        } else {
            Claimed::Unmade
        })
    } else {
        Err(BrokerError::Conflict(format!(
            "the MySQL {} name {name:?} is taken by another service instance or binding",
            kind.as_str()
        )))
    }
}

/// Records that the broker made (or is about to make, the name being free) the object `name`.
pub async fn set_made(conn: &mut Conn, kind: Kind, name: &str) -> Result<(), BrokerError> {
    conn.exec_drop(
        "INSERT IGNORE INTO kpaas_broker.made (kind, name) VALUES (?, ?)",
        (kind.as_str(), name),
    )
    .await
    .map_err(failed)
}

/// Whether `name` carries `owner`'s marker (same platform, id and parent).
pub async fn is_mine(
    conn: &mut Conn,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
) -> Result<bool, BrokerError> {
    let found: Option<(String, String, String)> = conn
        .exec_first(
            "SELECT platform, owner_id, parent FROM kpaas_broker.owners WHERE kind = ? AND name = ?",
            (kind.as_str(), name),
        )
        .await
        .map_err(failed)?;
    Ok(found.is_some_and(|(platform, id, parent)| {
        platform == owner.platform && id == owner.id && parent == owner.parent
    }))
}

/// How far `owner`'s marker on `name` got; `None` when there is none for `owner`.
pub async fn held(
    conn: &mut Conn,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
) -> Result<Option<Claimed>, BrokerError> {
    if !is_mine(conn, kind, name, owner).await? {
        return Ok(None);
    }
    Ok(Some(if made(conn, kind, name).await? {
        Claimed::Made
    } else {
        Claimed::Unmade
    }))
}

/// Whether the broker made (or was about to make) the object `name`.
pub async fn made(conn: &mut Conn, kind: Kind, name: &str) -> Result<bool, BrokerError> {
    let made: Option<u8> = conn
        .exec_first(
            "SELECT 1 FROM kpaas_broker.made WHERE kind = ? AND name = ?",
            (kind.as_str(), name),
        )
        .await
        .map_err(failed)?;
    Ok(made.is_some())
}

/// Removes `owner`'s marker on `name`, and the record that the broker made it, once what it
/// marked is gone (names come from ids: left there, those records would pile up for good).
pub async fn release(
    conn: &mut Conn,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
) -> Result<(), BrokerError> {
    let (kind, platform, id) = (kind.as_str(), owner.platform, owner.id);
    conn.exec_drop(
        "DELETE FROM kpaas_broker.made WHERE kind = ? AND name = ? AND EXISTS (\
         SELECT 1 FROM kpaas_broker.owners o \
         WHERE o.kind = ? AND o.name = ? AND o.platform = ? AND o.owner_id = ?)",
        (kind, name, kind, name, platform, id),
    )
    .await
    .map_err(failed)?;
    conn.exec_drop(
        "DELETE FROM kpaas_broker.owners WHERE kind = ? AND name = ? AND platform = ? AND owner_id = ?",
        (kind, name, platform, id),
    )
    .await
    .map_err(failed)
}

/// Accounts this broker made for bindings of database `parent`, whether or not their binding
/// records survived (a marker that is only a claim names no account of the broker's).
pub async fn users_under(conn: &mut Conn, parent: &str) -> Result<Vec<String>, BrokerError> {
    Ok(users_under_each(conn, &[parent])
        .await?
        .into_iter()
        .map(|(_, name)| name)
        .collect())
}

/// [`users_under`] each of `parents` with one query: (the parent, an account).
pub async fn users_under_each(
    conn: &mut Conn,
    parents: &[&str],
) -> Result<Vec<(String, String)>, BrokerError> {
    conn.exec(
        format!(
            "SELECT o.parent, o.name FROM kpaas_broker.owners o JOIN kpaas_broker.made m \
             ON m.kind = o.kind AND m.name = o.name WHERE o.kind = 'user' AND o.parent IN ({})",
            crate::accounts::placeholders(parents.len())
        ),
        parents.to_vec(),
    )
    .await
    .map_err(failed)
}

/// Removes the markers of every account made for bindings of database `parent`, and their
/// records of being made, as [`release`] does.
pub async fn release_under(conn: &mut Conn, parent: &str) -> Result<(), BrokerError> {
    conn.exec_drop(
        "DELETE kpaas_broker.made FROM kpaas_broker.made JOIN kpaas_broker.owners \
         ON kpaas_broker.made.kind = kpaas_broker.owners.kind \
         AND kpaas_broker.made.name = kpaas_broker.owners.name \
         WHERE kpaas_broker.owners.kind = 'user' AND kpaas_broker.owners.parent = ?",
        (parent,),
    )
    .await
    .map_err(failed)?;
    conn.exec_drop(
        "DELETE FROM kpaas_broker.owners WHERE kind = 'user' AND parent = ?",
        (parent,),
    )
    .await
    .map_err(failed)
}

/// A marker as stored.
#[derive(Debug, Clone)]
pub struct Marker {
    pub kind: Kind,
    pub name: String,
    pub platform: String,
    pub owner_id: String,
    pub parent: String,
    pub created_at_ms: i64,
}

/// Every marker on the server.
pub async fn all(conn: &mut Conn) -> Result<Vec<Marker>, BrokerError> {
    let rows: Vec<(String, String, String, String, String, i64)> = conn
        .query(
            "SELECT kind, name, platform, owner_id, parent, CAST(UNIX_TIMESTAMP(created_at) AS SIGNED) * 1000 \
             FROM kpaas_broker.owners",
        )
        .await
        .map_err(failed)?;
    Ok(rows
        .into_iter()
        .filter_map(|(kind, name, platform, owner_id, parent, created_at_ms)| {
            let kind = match kind.as_str() {
                "database" => Kind::Database,
                "user" => Kind::User,
                _ => return None,
            };
            Some(Marker {
                kind,
                name,
                platform,
                owner_id,
                parent,
                created_at_ms,
            })
        })
        .collect())
}
