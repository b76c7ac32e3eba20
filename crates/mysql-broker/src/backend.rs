//! The MySQL/MariaDB backend: a database per instance, an account per binding, connection
//! limits from the plan.

use std::collections::HashMap;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts};
use osb_core::broker::*;
use osb_core::catalog::Plan;
use osb_core::credentials::{Credentials, generate_password};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::config::{MysqlConfig, PlanLimits};
use crate::names::{DatabaseName, UserName};

pub struct MysqlBroker {
    pool: Pool,
    host: String,
    port: u16,
    plans: HashMap<String, PlanLimits>,
}

/// Maps driver errors: no connection means nothing changed (503); a server error is a failure.
fn backend(err: mysql_async::Error) -> BrokerError {
    match err {
        mysql_async::Error::Server(e) => {
            BrokerError::Failed(format!("MySQL error {}: {}", e.code, e.message))
        }
        other => BrokerError::Unavailable(format!("MySQL server unreachable: {other}")),
    }
}

impl MysqlBroker {
    pub fn new(config: &MysqlConfig) -> Self {
        let opts: Opts = OptsBuilder::default()
            .ip_or_hostname(config.host.clone())
            .tcp_port(config.port)
            .user(Some(config.admin_user.clone()))
            .pass(Some(config.admin_password.0.expose_secret().to_owned()))
            .pool_opts(PoolOpts::default().with_constraints(
                PoolConstraints::new(0, config.pool_size.max(1)).expect("0 <= max"),
            ))
            .into();
        Self {
            pool: Pool::new(opts),
            host: config
                .public_host
                .clone()
                .unwrap_or_else(|| config.host.clone()),
            port: config.port,
            plans: config.plans.clone(),
        }
    }

    async fn conn(&self) -> Result<Conn, BrokerError> {
        self.pool.get_conn().await.map_err(backend)
    }

    fn limits(&self, plan: &Plan) -> Result<&PlanLimits, BrokerError> {
        self.plans.get(&plan.id).ok_or_else(|| {
            BrokerError::Failed(format!("no [mysql.plans] limits for plan {:?}", plan.name))
        })
    }

    /// Accounts holding privileges on the database (the backend's own truth, which also finds
    /// accounts of bindings whose records were lost).
    async fn users_of(
        &self,
        conn: &mut Conn,
        db: &DatabaseName,
    ) -> Result<Vec<UserName>, BrokerError> {
        let names: Vec<String> = conn
            .exec(
                "SELECT DISTINCT User FROM mysql.db WHERE Db = ? AND Host = '%'",
                (db.grant_pattern_value(),),
            )
            .await
            .map_err(backend)?;
        names.iter().map(|n| UserName::parse(n)).collect()
    }

    /// Shares the plan's connections out among the database's accounts.
    async fn rebalance(
        &self,
        conn: &mut Conn,
        db: &DatabaseName,
        plan: &Plan,
    ) -> Result<(), BrokerError> {
        let users = self.users_of(conn, db).await?;
        if users.is_empty() {
            return Ok(());
        }
        let per_user = per_user_limit(self.limits(plan)?.connections, users.len(), plan)?;
        for user in users {
            conn.query_drop(format!(
                "ALTER USER {} WITH MAX_USER_CONNECTIONS {per_user}",
                user.account()
            ))
            .await
            .map_err(backend)?;
        }
        Ok(())
    }

    async fn drop_user(&self, conn: &mut Conn, user: &UserName) -> Result<(), BrokerError> {
        let ids: Vec<u64> = conn
            .exec(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?",
                (user.as_str(),),
            )
            .await
            .map_err(backend)?;
        for id in ids {
            // The connection may end on its own meanwhile; that is what we want anyway.
            let _ = conn.query_drop(format!("KILL CONNECTION {id}")).await;
        }
        conn.query_drop(format!("DROP USER IF EXISTS {}", user.account()))
            .await
            .map_err(backend)
    }

    fn credentials(
        &self,
        db: &DatabaseName,
        user: &UserName,
        password: &secrecy::SecretString,
    ) -> Credentials {
        let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        let (u, p) = (enc(user.as_str()), enc(password.expose_secret()));
        let (host, port, name) = (&self.host, self.port, db.as_str());
        Credentials::new()
            .with("name", name)
            .with("hostname", host.as_str())
            .with("port", port)
            .with("username", user.as_str())
            .with_secret("password", password)
            .with("uri", format!("mysql://{u}:{p}@{host}:{port}/{name}"))
            .with(
                "jdbcUrl",
                format!("jdbc:mysql://{host}:{port}/{name}?user={u}&password={p}"),
            )
    }
}

/// Each account's share of the plan's connections; at least one each, or the plan is too small.
fn per_user_limit(connections: u32, users: usize, plan: &Plan) -> Result<u32, BrokerError> {
    let users = u32::try_from(users).unwrap_or(u32::MAX);
    if users > connections {
        return Err(BrokerError::Unprocessable(format!(
            "plan {:?} allows {connections} connections, fewer than the instance's {users} bindings; unbind some first",
            plan.name
        )));
    }
    Ok(connections / users.max(1))
}

fn user_of(binding: &BindingView) -> Result<UserName, BrokerError> {
    let raw = binding
        .state
        .get("user")
        .and_then(|u| u.as_str())
        .unwrap_or("");
    UserName::parse(raw)
}

#[async_trait]
impl ServiceBroker for MysqlBroker {
    async fn provision(&self, input: ProvisionInput<'_>) -> Result<Provisioned, BrokerError> {
        let db = DatabaseName::for_instance(input.instance_id)?;
        self.limits(input.plan)?;
        let mut conn = self.conn().await?;
        conn.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
            db.quoted()
        ))
        .await
        .map_err(backend)?;
        Ok(Provisioned {
            state: json!({"database": db.as_str()}),
            ..Provisioned::default()
        })
    }

    async fn update(&self, input: UpdateInput<'_>) -> Result<Updated, BrokerError> {
        let db = DatabaseName::for_instance(input.instance.id)?;
        let mut conn = self.conn().await?;
        let users = self.users_of(&mut conn, &db).await?;
        per_user_limit(
            self.limits(input.plan)?.connections,
            users.len(),
            input.plan,
        )?;
        self.rebalance(&mut conn, &db, input.plan).await?;
        Ok(Updated::default())
    }

    async fn deprovision(&self, input: DeprovisionInput<'_>) -> Result<(), BrokerError> {
        let db = DatabaseName::for_instance(input.instance.id)?;
        let mut conn = self.conn().await?;
        let mut users = self.users_of(&mut conn, &db).await?;
        for binding in input.bindings {
            if let Ok(user) = user_of(binding)
                && !users.contains(&user)
            {
                users.push(user);
            }
        }
        for user in &users {
            self.drop_user(&mut conn, user).await?;
        }
        conn.query_drop(format!("DROP DATABASE IF EXISTS {}", db.quoted()))
            .await
            .map_err(backend)
    }

    async fn bind(&self, input: BindInput<'_>) -> Result<Bound, BrokerError> {
        let db = DatabaseName::for_instance(input.instance.id)?;
        let plan = input.instance.plan;
        let mut conn = self.conn().await?;
        let existing = self.users_of(&mut conn, &db).await?;
        let per_user = per_user_limit(self.limits(plan)?.connections, existing.len() + 1, plan)?;
        let user = UserName::generate();
        let password = generate_password();
        conn.query_drop(format!(
            "CREATE USER {} IDENTIFIED BY '{}' WITH MAX_USER_CONNECTIONS {per_user}",
            user.account(),
            password.expose_secret()
        ))
        .await
        .map_err(backend)?;
        let granted = async {
            conn.query_drop(format!(
                "GRANT ALL PRIVILEGES ON {}.* TO {}",
                db.grant_pattern(),
                user.account()
            ))
            .await
            .map_err(backend)?;
            self.rebalance(&mut conn, &db, plan).await
        }
        .await;
        if let Err(err) = granted {
            // Leave nothing half-made behind.
            let _ = self.drop_user(&mut conn, &user).await;
            return Err(err);
        }
        Ok(Bound {
            credentials: self.credentials(&db, &user, &password),
            state: json!({"user": user.as_str()}),
            ..Bound::default()
        })
    }

    async fn unbind(&self, input: UnbindInput<'_>) -> Result<(), BrokerError> {
        let db = DatabaseName::for_instance(input.instance.id)?;
        let user = user_of(input.binding)?;
        let mut conn = self.conn().await?;
        self.drop_user(&mut conn, &user).await?;
        self.rebalance(&mut conn, &db, input.instance.plan).await
    }

    async fn check_ready(&self) -> Result<(), BrokerError> {
        self.conn()
            .await?
            .query_drop("SELECT 1")
            .await
            .map_err(backend)
    }
}
