//! Binding accounts on a server: their rights on the instance's database, their sessions.

use std::collections::HashMap;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value};
use osb_core::BrokerError;

use crate::errors::failed;
use crate::names::{DatabaseName, UserName};

/// What an account over quota loses: every right that can store more bytes, in its database or
/// outside what the quota measures (temporary tables, routine and view bodies), and LOCK TABLES,
/// with which an app could hold the measurement off. Kept: reading, DELETE and DROP, so the
/// app can get back under.
const WRITE_PRIVILEGES: &str = "INSERT, UPDATE, CREATE, ALTER, INDEX, CREATE TEMPORARY TABLES, \
    LOCK TABLES, CREATE VIEW, CREATE ROUTINE, ALTER ROUTINE, EVENT, TRIGGER";

/// The `mysql.db` columns of [`WRITE_PRIVILEGES`]: an account holding any of them can write.
const WRITE_COLUMNS: &str = "Insert_priv, Update_priv, Create_priv, Alter_priv, Index_priv, \
    Create_tmp_table_priv, Lock_tables_priv, Create_view_priv, Create_routine_priv, \
    Alter_routine_priv, Event_priv, Trigger_priv";

/// Accounts holding privileges on the database (the server's own truth) under names the
/// broker could have made; an operator's own account is none of its business.
pub async fn users_of(conn: &mut Conn, db: &DatabaseName) -> Result<Vec<UserName>, BrokerError> {
    let names: Vec<String> = conn
        .exec(
            "SELECT DISTINCT User FROM mysql.db WHERE Db = ? AND Host = '%'",
            (db.grant_pattern_value(),),
        )
        .await
        .map_err(failed)?;
    Ok(names
        .iter()
        .filter_map(|n| UserName::parse(n).ok())
        .collect())
}

/// Whether the account exists on the server at all.
pub async fn user_exists(conn: &mut Conn, user: &UserName) -> Result<bool, BrokerError> {
    let found: Option<String> = conn
        .exec_first(
            "SELECT User FROM mysql.user WHERE User = ? AND Host = '%'",
            (user.as_str(),),
        )
        .await
        .map_err(failed)?;
    Ok(found.is_some())
}

/// Every privilege on `db` (and nothing else) for `user`.
pub async fn grant_all(
    conn: &mut Conn,
    db: &DatabaseName,
    user: &UserName,
) -> Result<(), BrokerError> {
    conn.query_drop(format!(
        "GRANT ALL PRIVILEGES ON {}.* TO {}",
        db.grant_pattern(),
        user.account()
    ))
    .await
    .map_err(failed)
}

/// Takes [`WRITE_PRIVILEGES`] on `db` away from `user` and ends its sessions, which keep the
/// rights they started with (and release any table lock they hold).
pub async fn freeze(
    conn: &mut Conn,
    db: &DatabaseName,
    user: &UserName,
) -> Result<(), BrokerError> {
    conn.query_drop(format!(
        "REVOKE {WRITE_PRIVILEGES} ON {}.* FROM {}",
        db.grant_pattern(),
        user.account()
    ))
    .await
    .map_err(failed)?;
    kill_connections(conn, user).await
}

/// Which of [`WRITE_PRIVILEGES`] an account holds on a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    All,
    Some,
    None,
}

/// Each account on each of `dbs` with the write privileges it holds there, in one query: (the
/// database, the account's name as the server has it, its rights). Names are left raw: an
/// operator's own account may hold grants there under a name the broker never makes.
pub async fn write_rights_on(
    conn: &mut Conn,
    dbs: &[DatabaseName],
) -> Result<Vec<(String, String, Writes)>, BrokerError> {
    // mysql.db holds the grant's pattern, `_` escaped.
    let patterns: HashMap<String, &str> = dbs
        .iter()
        .map(|db| (db.grant_pattern_value(), db.as_str()))
        .collect();
    let rows: Vec<mysql_async::Row> = conn
        .exec(
            format!(
                "SELECT Db, User, {WRITE_COLUMNS} FROM mysql.db WHERE Host = '%' AND Db IN ({})",
                placeholders(dbs.len())
            ),
            dbs.iter()
                .map(|db| db.grant_pattern_value().into())
                .collect::<Vec<Value>>(),
        )
        .await
        .map_err(failed)?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let pattern: String = row.get(0).unwrap_or_default();
            let db = (*patterns.get(&pattern)?).to_owned();
            let name: String = row.get(1).unwrap_or_default();
            let held = (2..row.len())
                .filter(|i| row.get::<String, _>(*i).as_deref() == Some("Y"))
                .count();
            let writes = match held {
                0 => Writes::None,
                n if n == row.len() - 2 => Writes::All,
                _ => Writes::Some,
            };
            Some((db, name, writes))
        })
        .collect())
}

/// `?, ?, …`: `n` statement parameters, for an `IN` list.
pub fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Ends every session of `user`.
pub async fn kill_connections(conn: &mut Conn, user: &UserName) -> Result<(), BrokerError> {
    let ids: Vec<u64> = conn
        .exec(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?",
            (user.as_str(),),
        )
        .await
        .map_err(failed)?;
    for id in ids {
        // The connection may end on its own meanwhile; that is what we want anyway.
        let _ = conn.query_drop(format!("KILL CONNECTION {id}")).await;
    }
    Ok(())
}

/// Ends `user`'s sessions and drops the account, if it exists.
pub async fn drop_user(conn: &mut Conn, user: &UserName) -> Result<(), BrokerError> {
    kill_connections(conn, user).await?;
    conn.query_drop(format!("DROP USER IF EXISTS {}", user.account()))
        .await
        .map_err(failed)
}
