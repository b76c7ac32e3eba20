//! The MySQL/MariaDB backend: a database per instance on the least-loaded server, an account
//! per binding, connection limits from the plan.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, SslOpts};
use osb_core::broker::*;
use osb_core::catalog::Plan;
use osb_core::credentials::{Credentials, generate_password};
use osb_core::wire::InstanceMetadata;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use prometheus::{IntGauge, Registry};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::config::{MysqlConfig, PlanLimits, ServerConfig};
use crate::names::{DatabaseName, UserName};
use crate::quota::{self, Usage};

/// One configured server.
struct Server {
    name: String,
    pool: Pool,
    /// What apps are told to connect to.
    host: String,
    port: u16,
}

pub struct MysqlBroker {
    servers: Vec<Server>,
    plans: HashMap<String, PlanLimits>,
    quota_every: Duration,
    over_quota: IntGauge,
}

/// Maps driver errors: no connection means nothing changed (503); a server error is a failure.
pub(crate) fn backend(err: mysql_async::Error) -> BrokerError {
    match err {
        mysql_async::Error::Server(e) => {
            BrokerError::Failed(format!("MySQL error {}: {}", e.code, e.message))
        }
        other => BrokerError::Unavailable(format!("MySQL server unreachable: {other}")),
    }
}

impl Server {
    fn new(config: &ServerConfig) -> Self {
        let opts: Opts = OptsBuilder::default()
            .ip_or_hostname(config.host.clone())
            .tcp_port(config.port)
            .user(Some(config.admin_user.clone()))
            .pass(Some(config.admin_password.0.expose_secret().to_owned()))
            .pool_opts(PoolOpts::default().with_constraints(
                PoolConstraints::new(0, config.pool_size.max(1)).expect("0 <= max"),
            ))
            .ssl_opts(config.tls.as_ref().map(|tls| {
                SslOpts::default().with_root_certs(tls.ca.iter().cloned().map(Into::into).collect())
            }))
            .into();
        Self {
            name: config.name.clone(),
            pool: Pool::new(opts),
            host: config
                .public_host
                .clone()
                .unwrap_or_else(|| config.host.clone()),
            port: config.port,
        }
    }

    async fn conn(&self) -> Result<Conn, BrokerError> {
        self.pool.get_conn().await.map_err(|e| match backend(e) {
            BrokerError::Unavailable(d) => {
                BrokerError::Unavailable(format!("server {:?}: {d}", self.name))
            }
            other => other,
        })
    }

    fn credentials(
        &self,
        db: &DatabaseName,
        user: &UserName,
        password: &SecretString,
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

/// Accounts holding privileges on the database (the server's own truth, which also finds
/// accounts of bindings whose records were lost).
async fn users_of(conn: &mut Conn, db: &DatabaseName) -> Result<Vec<UserName>, BrokerError> {
    let names: Vec<String> = conn
        .exec(
            "SELECT DISTINCT User FROM mysql.db WHERE Db = ? AND Host = '%'",
            (db.grant_pattern_value(),),
        )
        .await
        .map_err(backend)?;
    names.iter().map(|n| UserName::parse(n)).collect()
}

async fn database_exists(conn: &mut Conn, db: &DatabaseName) -> Result<bool, BrokerError> {
    let found: Option<String> = conn
        .exec_first(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
            (db.as_str(),),
        )
        .await
        .map_err(backend)?;
    Ok(found.is_some())
}

/// How many instances a server holds: the databases this broker named.
async fn instance_count(conn: &mut Conn) -> Result<u64, BrokerError> {
    let count: Option<u64> = conn
        .query_first(
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'op\\_%'",
        )
        .await
        .map_err(backend)?;
    Ok(count.unwrap_or(0))
}

/// Every privilege on `db` (and nothing else) for `user`.
pub(crate) async fn grant_all(
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
    .map_err(backend)
}

/// Ends every session of `user`.
pub(crate) async fn kill_connections(conn: &mut Conn, user: &UserName) -> Result<(), BrokerError> {
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
    Ok(())
}

async fn drop_user(conn: &mut Conn, user: &UserName) -> Result<(), BrokerError> {
    kill_connections(conn, user).await?;
    conn.query_drop(format!("DROP USER IF EXISTS {}", user.account()))
        .await
        .map_err(backend)
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
        .and_then(Value::as_str)
        .unwrap_or("");
    UserName::parse(raw)
}

impl MysqlBroker {
    /// Builds the broker and registers its metrics on `registry`.
    pub fn new(config: &MysqlConfig, registry: &Registry) -> Self {
        let over_quota = IntGauge::new(
            "mysql_broker_instances_over_quota",
            "Instances whose database is over its plan's storage quota",
        )
        .expect("valid metric");
        registry
            .register(Box::new(over_quota.clone()))
            .expect("metric registered once");
        Self {
            servers: config.servers.iter().map(Server::new).collect(),
            plans: config.plans.clone(),
            quota_every: Duration::from_secs(config.quota_check_secs.max(1)),
            over_quota,
        }
    }

    /// Measures the instance's database against its plan's quota, if the plan has one.
    async fn usage(
        &self,
        conn: &mut Conn,
        db: &DatabaseName,
        plan: &Plan,
    ) -> Result<Option<Usage>, BrokerError> {
        match self.limits(plan)?.quota_mb {
            Some(quota_mb) => Ok(Some(Usage::new(
                quota::database_size(conn, db).await?,
                quota_mb,
            ))),
            None => Ok(None),
        }
    }

    /// Applies the plan's quota to the instance's accounts right now.
    async fn apply_quota(
        &self,
        conn: &mut Conn,
        db: &DatabaseName,
        plan: &Plan,
    ) -> Result<(), BrokerError> {
        let over = self.usage(conn, db, plan).await?.is_some_and(|u| u.over());
        quota::enforce(conn, db, over).await.map(|_| ())
    }

    fn limits(&self, plan: &Plan) -> Result<&PlanLimits, BrokerError> {
        self.plans.get(&plan.id).ok_or_else(|| {
            BrokerError::Failed(format!("no [mysql.plans] limits for plan {:?}", plan.name))
        })
    }

    /// The server an instance was placed on, as its state records.
    fn server_of(&self, instance: &InstanceView<'_>) -> Result<&Server, BrokerError> {
        let name = instance.state.get("server").and_then(Value::as_str);
        self.servers
            .iter()
            .find(|s| Some(s.name.as_str()) == name)
            .ok_or_else(|| {
                BrokerError::Failed(format!(
                    "the instance lives on server {name:?}, which is not configured"
                ))
            })
    }

    /// Where a new instance goes: the server that already has its database (a retried
    /// provision), else the reachable server with the fewest instances.
    async fn place(&self, db: &DatabaseName) -> Result<(&Server, Conn), BrokerError> {
        let mut best: Option<(u64, &Server, Conn)> = None;
        let mut last_error = None;
        for server in &self.servers {
            let mut conn = match server.conn().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(server = %server.name, error = %e, "server unreachable; not placing there");
                    last_error = Some(e);
                    continue;
                }
            };
            if database_exists(&mut conn, db).await? {
                return Ok((server, conn));
            }
            let count = instance_count(&mut conn).await?;
            if best.as_ref().is_none_or(|(c, _, _)| count < *c) {
                best = Some((count, server, conn));
            }
        }
        best.map(|(_, s, c)| (s, c)).ok_or_else(|| {
            last_error
                .unwrap_or_else(|| BrokerError::Unavailable("no MySQL server is configured".into()))
        })
    }

    /// Shares the plan's connections out among the database's accounts.
    async fn rebalance(
        &self,
        conn: &mut Conn,
        db: &DatabaseName,
        plan: &Plan,
    ) -> Result<(), BrokerError> {
        let users = users_of(conn, db).await?;
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
}

#[async_trait]
impl ServiceBroker for MysqlBroker {
    async fn provision(&self, input: ProvisionInput<'_>) -> Result<Provisioned, BrokerError> {
        let db = DatabaseName::for_instance(input.instance_id)?;
        self.limits(input.plan)?;
        let (server, mut conn) = self.place(&db).await?;
        conn.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
            db.quoted()
        ))
        .await
        .map_err(backend)?;
        tracing::info!(server = %server.name, database = db.as_str(), "database created");
        Ok(Provisioned {
            state: json!({"server": server.name, "database": db.as_str()}),
            ..Provisioned::default()
        })
    }

    async fn update(&self, input: UpdateInput<'_>) -> Result<Updated, BrokerError> {
        let db = DatabaseName::for_instance(input.instance.id)?;
        let mut conn = self.server_of(&input.instance)?.conn().await?;
        let users = users_of(&mut conn, &db).await?;
        per_user_limit(
            self.limits(input.plan)?.connections,
            users.len(),
            input.plan,
        )?;
        if let Some(usage) = self.usage(&mut conn, &db, input.plan).await?
            && usage.over()
        {
            return Err(BrokerError::Unprocessable(format!(
                "the database uses {} MiB, more than plan {:?}'s quota of {} MiB; remove data first",
                usage.used_bytes.div_ceil(1024 * 1024),
                input.plan.name,
                usage.quota_bytes / (1024 * 1024)
            )));
        }
        self.rebalance(&mut conn, &db, input.plan).await?;
        self.apply_quota(&mut conn, &db, input.plan).await?;
        Ok(Updated::default())
    }

    async fn deprovision(&self, input: DeprovisionInput<'_>) -> Result<(), BrokerError> {
        let db = DatabaseName::for_instance(input.instance.id)?;
        let mut conn = self.server_of(&input.instance)?.conn().await?;
        let mut users = users_of(&mut conn, &db).await?;
        for binding in input.bindings {
            if let Ok(user) = user_of(binding)
                && !users.contains(&user)
            {
                users.push(user);
            }
        }
        for user in &users {
            drop_user(&mut conn, user).await?;
        }
        conn.query_drop(format!("DROP DATABASE IF EXISTS {}", db.quoted()))
            .await
            .map_err(backend)
    }

    async fn bind(&self, input: BindInput<'_>) -> Result<Bound, BrokerError> {
        let db = DatabaseName::for_instance(input.instance.id)?;
        let plan = input.instance.plan;
        let server = self.server_of(&input.instance)?;
        let mut conn = server.conn().await?;
        let existing = users_of(&mut conn, &db).await?;
        let per_user = per_user_limit(self.limits(plan)?.connections, existing.len() + 1, plan)?;
        let user = UserName::generate();
        let password = generate_password();
        // Identifiers cannot be bound parameters; both values here are generated by this
        // broker from [a-z0-9] and [A-Za-z0-9] only.
        conn.query_drop(format!(
            "CREATE USER {} IDENTIFIED BY '{}' WITH MAX_USER_CONNECTIONS {per_user}",
            user.account(),
            password.expose_secret()
        ))
        .await
        .map_err(backend)?;
        let granted = async {
            grant_all(&mut conn, &db, &user).await?;
            self.rebalance(&mut conn, &db, plan).await?;
            self.apply_quota(&mut conn, &db, plan).await
        }
        .await;
        if let Err(err) = granted {
            // Leave nothing half-made behind.
            let _ = drop_user(&mut conn, &user).await;
            return Err(err);
        }
        Ok(Bound {
            credentials: server.credentials(&db, &user, &password),
            state: json!({"user": user.as_str()}),
            ..Bound::default()
        })
    }

    async fn unbind(&self, input: UnbindInput<'_>) -> Result<(), BrokerError> {
        let db = DatabaseName::for_instance(input.instance.id)?;
        let user = user_of(input.binding)?;
        let mut conn = self.server_of(&input.instance)?.conn().await?;
        drop_user(&mut conn, &user).await?;
        self.rebalance(&mut conn, &db, input.instance.plan).await
    }

    fn upkeep_interval(&self) -> Option<Duration> {
        Some(self.quota_every)
    }

    /// Measures every database and enforces its plan's quota.
    async fn upkeep(&self, instances: &[InstanceView<'_>]) -> Result<(), BrokerError> {
        let mut over_count = 0;
        tracing::debug!(instances = instances.len(), "quota check");
        for server in &self.servers {
            let mine: Vec<&InstanceView<'_>> = instances
                .iter()
                .filter(|i| {
                    i.state.get("server").and_then(Value::as_str) == Some(server.name.as_str())
                })
                .collect();
            if mine.is_empty() {
                continue;
            }
            let mut conn = match server.conn().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(server = %server.name, error = %e, "quota check skipped");
                    continue;
                }
            };
            let sizes = quota::database_sizes(&mut conn).await?;
            tracing::debug!(server = %server.name, databases = sizes.len(), "measured");
            for instance in mine {
                let Some(quota_mb) = self.limits(instance.plan)?.quota_mb else {
                    continue;
                };
                let db = DatabaseName::for_instance(instance.id)?;
                let mut usage = Usage::new(sizes.get(db.as_str()).copied().unwrap_or(0), quota_mb);
                if usage.over() {
                    // Only databases that look over quota pay for fresh statistics.
                    usage = Usage::new(quota::remeasure(&mut conn, &db).await?, quota_mb);
                }
                over_count += i64::from(usage.over());
                quota::enforce(&mut conn, &db, usage.over()).await?;
            }
        }
        self.over_quota.set(over_count);
        Ok(())
    }

    /// The storage used against the quota, as instance metadata attributes.
    async fn describe(
        &self,
        instance: InstanceView<'_>,
    ) -> Result<Option<InstanceMetadata>, BrokerError> {
        let db = DatabaseName::for_instance(instance.id)?;
        let mut conn = self.server_of(&instance)?.conn().await?;
        Ok(self
            .usage(&mut conn, &db, instance.plan)
            .await?
            .map(|usage| InstanceMetadata {
                labels: Default::default(),
                attributes: usage.attributes(),
            }))
    }

    /// Ready while at least one server takes new instances; the others are logged.
    async fn check_ready(&self) -> Result<(), BrokerError> {
        let mut last_error = None;
        for server in &self.servers {
            match server.conn().await {
                Ok(mut conn) => match conn.query_drop("SELECT 1").await {
                    Ok(()) => return Ok(()),
                    Err(e) => last_error = Some(backend(e)),
                },
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| BrokerError::Unavailable("no MySQL server is configured".into())))
    }
}
