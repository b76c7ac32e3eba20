//! Storage quotas, enforced as cf-mysql-broker does: measure each database, and while it is
//! over its plan's quota its accounts keep SELECT, DELETE and DROP but lose every right that
//! writes (`accounts::freeze`); back under, they get everything back.

use std::collections::{HashMap, HashSet};

use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use osb_core::BrokerError;
use osb_core::quota::QuotaPolicy;
use serde_json::{Map, Value, json};

use crate::accounts::{Writes, freeze, grant_all, placeholders, write_rights_on};
use crate::errors::failed;
use crate::names::{DatabaseName, UserName, quote_identifier};
use crate::owners;

const MIB: u64 = 1024 * 1024;

/// A database's size against its quota.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub used_bytes: u64,
    pub quota_bytes: u64,
}

impl Usage {
    pub fn new(used_bytes: u64, quota_mb: u64) -> Self {
        Self {
            used_bytes,
            quota_bytes: quota_mb.saturating_mul(MIB),
        }
    }

    /// Whether the database is to be frozen, given whether it is now (see [`QuotaPolicy`]).
    pub fn frozen(&self, policy: &QuotaPolicy, frozen_now: bool) -> bool {
        policy.frozen(self.used_bytes, self.quota_bytes, frozen_now)
    }

    /// How GET on the instance shows it (`metadata.attributes`), `frozen` as decided.
    pub fn attributes(&self, frozen: bool) -> Map<String, Value> {
        let Value::Object(map) = json!({
            "storage_used_bytes": self.used_bytes,
            "storage_quota_bytes": self.quota_bytes,
            "storage_over_quota": frozen,
        }) else {
            unreachable!("a JSON object literal")
        };
        map
    }
}

/// Data and index bytes of `db`, as InnoDB reports them.
pub async fn database_size(conn: &mut Conn, db: &DatabaseName) -> Result<u64, BrokerError> {
    let size: Option<u64> = conn
        .exec_first(
            "SELECT CAST(COALESCE(SUM(data_length + index_length), 0) AS UNSIGNED) \
             FROM information_schema.TABLES WHERE table_schema = ?",
            (db.as_str(),),
        )
        .await
        .map_err(failed)?;
    Ok(size.unwrap_or(0))
}

/// Databases a survey reads per statement: bounds a statement's size, not the count of
/// statements for a server's usual number of databases.
const SURVEY_CHUNK: usize = 1000;

/// A database as a survey saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub used_bytes: u64,
    /// One of the broker's accounts on it lacks a write right (see [`is_frozen`]).
    pub frozen: bool,
}

/// Sizes and freezes of many databases on one server, read with three statements for up to
/// [`SURVEY_CHUNK`] of them instead of four per database.
#[derive(Debug, Default)]
pub struct Survey(HashMap<String, Seen>);

impl Survey {
    pub fn get(&self, db: &DatabaseName) -> Option<Seen> {
        self.0.get(db.as_str()).copied()
    }
}

/// Surveys `dbs` on the server behind `conn`. A database without tables is 0 bytes.
pub async fn survey(conn: &mut Conn, dbs: &[DatabaseName]) -> Result<Survey, BrokerError> {
    let mut seen = HashMap::with_capacity(dbs.len());
    for chunk in dbs.chunks(SURVEY_CHUNK) {
        let names: Vec<&str> = chunk.iter().map(DatabaseName::as_str).collect();
        // Names compared as bytes: given several, the server matches them without regard to
        // case (listing `op_a` for `op_A` and leaving `op_a` out when both are asked for), and
        // an instance must never be measured by another's tables. Summed here per exact name.
        let tables: Vec<(String, u64)> = conn
            .exec(
                format!(
                    "SELECT table_schema, CAST(COALESCE(data_length + index_length, 0) AS UNSIGNED) \
                     FROM information_schema.TABLES WHERE table_schema COLLATE utf8mb3_bin IN ({})",
                    placeholders(names.len())
                ),
                names.clone(),
            )
            .await
            .map_err(failed)?;
        let mut sizes: HashMap<String, u64> = HashMap::new();
        for (db, bytes) in tables {
            let size = sizes.entry(db).or_default();
            *size = size.saturating_add(bytes);
        }
        let ours: HashSet<(String, String)> = owners::users_under_each(conn, &names)
            .await?
            .into_iter()
            .collect();
        let mut frozen = HashSet::new();
        for (db, user, writes) in write_rights_on(conn, chunk).await? {
            if writes != Writes::All && ours.contains(&(db.clone(), user)) {
                frozen.insert(db);
            }
        }
        for name in names {
            let used_bytes = sizes.remove(name).unwrap_or(0);
            let frozen = frozen.contains(name);
            seen.insert(name.to_owned(), Seen { used_bytes, frozen });
        }
    }
    Ok(Survey(seen))
}

/// Refreshes InnoDB's statistics of every table in `db` and measures it again. Sizes are
/// statistics that lag behind deletions; without this, an app that deleted rows to get back
/// under quota would stay locked out until the server recomputed them on its own.
pub async fn remeasure(conn: &mut Conn, db: &DatabaseName) -> Result<u64, BrokerError> {
    let tables: Vec<String> = conn
        .exec(
            "SELECT table_name FROM information_schema.TABLES WHERE table_schema = ? AND table_type = 'BASE TABLE'",
            (db.as_str(),),
        )
        .await
        .map_err(failed)?;
    if !tables.is_empty() {
        let list: Vec<String> = tables
            .iter()
            .map(|t| format!("{}.{}", db.quoted(), quote_identifier(t)))
            .collect();
        conn.query_drop(format!("ANALYZE TABLE {}", list.join(", ")))
            .await
            .map_err(failed)?;
    }
    database_size(conn, db).await
}

/// The write rights the broker's `accounts` hold on `db`, read once for both the decision
/// ([`is_frozen`]) and its enforcement ([`enforce`]).
pub async fn rights(
    conn: &mut Conn,
    db: &DatabaseName,
    accounts: &[UserName],
) -> Result<Vec<(UserName, Writes)>, BrokerError> {
    Ok(write_rights_on(conn, std::slice::from_ref(db))
        .await?
        .into_iter()
        .filter_map(|(_, name, writes)| {
            let account = accounts.iter().find(|a| a.as_str() == name)?;
            Some((account.clone(), writes))
        })
        .collect())
}

/// Whether the database is frozen now: one of the broker's accounts lacks a write right.
pub fn is_frozen(rights: &[(UserName, Writes)]) -> bool {
    rights.iter().any(|(_, writes)| *writes != Writes::All)
}

/// Brings the accounts of `rights` (as just read) on `db` in line with `over`; returns whether
/// anything changed.
pub async fn enforce(
    conn: &mut Conn,
    db: &DatabaseName,
    rights: &[(UserName, Writes)],
    over: bool,
) -> Result<bool, BrokerError> {
    let mut changed = false;
    for (user, writes) in rights {
        if over && *writes != Writes::None {
            freeze(conn, db, user).await?;
            changed = true;
        } else if !over && *writes != Writes::All {
            grant_all(conn, db, user).await?;
            changed = true;
        }
    }
    if changed {
        tracing::info!(
            database = db.as_str(),
            over_quota = over,
            "quota enforcement changed privileges"
        );
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_freezes_at_the_quota_and_thaws_below_the_lower_mark() {
        let policy = QuotaPolicy::default();
        assert!(!Usage::new(MIB - 1, 1).frozen(&policy, false));
        assert!(Usage::new(MIB, 1).frozen(&policy, false));
        assert!(Usage::new(MIB - 1, 1).frozen(&policy, true));
        assert!(!Usage::new(MIB / 2, 1).frozen(&policy, true));
        let shown = Usage::new(5, 2).attributes(true);
        assert_eq!(shown["storage_quota_bytes"], 2 * MIB);
        assert_eq!(shown["storage_over_quota"], true);
    }
}
