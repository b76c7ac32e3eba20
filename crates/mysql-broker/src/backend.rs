//! The MySQL/MariaDB backend: a database per instance on the least-loaded server, an account
//! per binding, connection limits from the plan. Every name it makes is marked as its own first
//! (`owners`), and nothing unmarked is ever adopted or dropped.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, SslOpts};
use osb_core::broker::*;
use osb_core::catalog::Plan;
use osb_core::credentials::{Credentials, PasswordLength, generate_password};
use osb_core::ids::BindingId;
use osb_core::orphans::{BackendObject, Claim};
use osb_core::uri;
use osb_core::wire::InstanceMetadata;
use prometheus::{IntGauge, Registry};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::accounts::{Writes, drop_user, grant_all, user_exists, users_of};
use crate::config::{MysqlConfig, PlanLimits, ServerConfig};
use crate::errors::{failed, unreachable};
use crate::names::{DatabaseName, UserName};
use crate::owners::{self, Claimed, Kind, Owner};
use crate::quota::{self, Survey, Usage};
use osb_core::quota::QuotaPolicy;

/// Seconds an admin statement waits for a lock an app holds (`LOCK TABLES`, a long
/// transaction) before it fails: an app must not be able to stall the broker.
const ADMIN_LOCK_WAIT_SECS: u32 = 10;

/// How long to wait for an admin connection (a new one, or a free one from the pool).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle admin connection stays in the pool.
const IDLE_CONNECTION_TTL: Duration = Duration::from_secs(60);

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
    password_length: PasswordLength,
    /// Instances found over quota at their last check; its size is the gauge.
    quota_policy: QuotaPolicy,
    over_quota: Mutex<HashSet<String>>,
    over_quota_gauge: IntGauge,
    /// The running upkeep pass's look at each server's databases, by server name.
    survey: Mutex<HashMap<String, Survey>>,
}

impl Server {
    fn new(config: &ServerConfig) -> Self {
        let opts: Opts = OptsBuilder::default()
            .ip_or_hostname(config.host.as_str())
            .tcp_port(config.port)
            // Talk to the server where configured: the driver would otherwise switch to the
            // server's Unix socket when it is local, around TLS and whatever sits in between.
            .prefer_socket(false)
            .user(Some(config.admin_user.clone()))
            .pass(Some(config.admin_password.0.expose_secret().to_owned()))
            // Once per connection; mysql_async runs these last to first.
            .init(owners::SCHEMA.iter().rev().copied().collect())
            // On every checkout too: the pool resets connections it gets back, and a reset
            // forgets session variables.
            .setup(vec![format!(
                "SET SESSION lock_wait_timeout = {ADMIN_LOCK_WAIT_SECS}, innodb_lock_wait_timeout = {ADMIN_LOCK_WAIT_SECS}"
            )])
            // Idle connections are kept for a minute (up to the maximum), then closed down to
            // none. Without that TTL the pool keeps at most its minimum, none: every operation
            // paid a new connection, its login and its init statements (most of a bind's time).
            .pool_opts(
                PoolOpts::default()
                    .with_constraints(
                        PoolConstraints::new(0, config.pool_size.max(1)).expect("0 <= max"),
                    )
                    .with_inactive_connection_ttl(IDLE_CONNECTION_TTL),
            )
            .ssl_opts(config.tls.as_ref().map(|tls| {
                SslOpts::default().with_root_certs(tls.ca.iter().cloned().map(Into::into).collect())
            }))
            .into();
        Self {
            name: config.name.clone(),
            pool: Pool::new(opts),
            host: config
                .public_host
                .as_ref()
                .unwrap_or(&config.host)
                .to_string(),
            port: config.port,
        }
    }

    /// An admin connection; failing here means nothing was sent. The pool hands out no idle
    /// one whose server closed it (a restart, a `KILL`): it makes a new one.
    async fn conn(&self) -> Result<Conn, BrokerError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.pool.get_conn()).await {
            Ok(conn) => conn.map_err(|e| unreachable(&self.name, e)),
            Err(_) => Err(BrokerError::Unavailable(format!(
                "MySQL server {:?}: no admin connection within {CONNECT_TIMEOUT:?}",
                self.name
            ))),
        }
    }

    fn credentials(
        &self,
        db: &DatabaseName,
        user: &UserName,
        password: &SecretString,
    ) -> Credentials {
        let (u, p) = (
            uri::component(user.as_str()),
            uri::component(password.expose_secret()),
        );
        let (at, name) = (uri::authority(&self.host, self.port), db.as_str());
        Credentials::new()
            .with("name", name)
            .with("hostname", self.host.as_str())
            .with("port", self.port)
            .with("username", user.as_str())
            .with_secret("password", password)
            .with("uri", format!("mysql://{u}:{p}@{at}/{name}"))
            .with(
                "jdbcUrl",
                format!("jdbc:mysql://{at}/{name}?user={u}&password={p}"),
            )
    }
}

async fn database_exists(conn: &mut Conn, db: &DatabaseName) -> Result<bool, BrokerError> {
    let found: Option<String> = conn
        .exec_first(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
            (db.as_str(),),
        )
        .await
        .map_err(failed)?;
    Ok(found.is_some())
}

/// How many instances a server holds: the databases this broker named.
async fn instance_count(conn: &mut Conn) -> Result<u64, BrokerError> {
    let count: Option<u64> = conn
        .query_first(
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'op\\_%'",
        )
        .await
        .map_err(failed)?;
    Ok(count.unwrap_or(0))
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

/// Where a name came from, which decides what proves the object is the broker's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The state store recorded it as made by this broker: its marker is written if missing
    /// (objects made before markers existed), unless another owner's marker is there.
    Recorded,
    /// Derived from the id by an operation that never recorded anything: only the marker can
    /// prove the object is the broker's.
    Derived,
}

/// The instance's database: the name its provision recorded, else (a provision that never
/// finished) the name it derives.
fn database_of(instance: &InstanceView<'_>) -> Result<(DatabaseName, Source), BrokerError> {
    match instance.state.get("database").and_then(Value::as_str) {
        Some(recorded) => Ok((DatabaseName::recorded(recorded)?, Source::Recorded)),
        None => Ok((
            DatabaseName::for_instance(instance.platform, instance.id),
            Source::Derived,
        )),
    }
}

/// A binding's account: the name its bind recorded, else the name it derives.
fn account_of(platform: &str, binding: &BindingView) -> Result<(UserName, Source), BrokerError> {
    match binding.state.get("user").and_then(Value::as_str) {
        Some(recorded) => Ok((UserName::parse(recorded)?, Source::Recorded)),
        None => Ok((
            UserName::for_binding(platform, &binding.id),
            Source::Derived,
        )),
    }
}

/// Whether the object under `name` is `owner`'s to remove.
async fn ours_to_remove(
    conn: &mut Conn,
    kind: Kind,
    name: &str,
    owner: Owner<'_>,
    source: Source,
) -> Result<bool, BrokerError> {
    match source {
        Source::Derived => match owners::held(conn, kind, name, owner).await? {
            Some(Claimed::Made) => Ok(true),
            // Only a claim: whatever stands under the name was never the broker's.
            Some(Claimed::Unmade) => {
                owners::release(conn, kind, name, owner).await?;
                Ok(false)
            }
            None => Ok(false),
        },
        Source::Recorded => match owners::claim(conn, kind, name, owner).await {
            Ok(_) => Ok(true),
            Err(BrokerError::Conflict(why)) => {
                tracing::warn!(name, %why, "a recorded name carries another owner's marker; left alone");
                Ok(false)
            }
            Err(e) => Err(e),
        },
    }
}

fn instance_owner<'a>(instance: &InstanceView<'a>) -> Owner<'a> {
    Owner {
        platform: instance.platform,
        id: instance.id.as_str(),
        parent: "",
    }
}

fn binding_owner<'a>(platform: &'a str, binding: &'a BindingId, db: &'a DatabaseName) -> Owner<'a> {
    Owner {
        platform,
        id: binding.as_str(),
        parent: db.as_str(),
    }
}

/// The accounts of `db` that are the broker's: holding rights on it and marked as made for
/// one of its bindings. Accounts an operator added are never counted, resized or frozen.
async fn our_accounts(conn: &mut Conn, db: &DatabaseName) -> Result<Vec<UserName>, BrokerError> {
    let marked = owners::users_under(conn, db.as_str()).await?;
    Ok(users_of(conn, db)
        .await?
        .into_iter()
        .filter(|u| marked.iter().any(|m| m == u.as_str()))
        .collect())
}

/// Drops everything of the instance on one server: the accounts marked as its bindings' (and
/// each binding's own account), then the database, then the markers. Touches nothing unless
/// the database is the instance's.
async fn remove_instance(
    conn: &mut Conn,
    instance: &InstanceView<'_>,
    bindings: &[BindingView],
) -> Result<(), BrokerError> {
    let (db, source) = database_of(instance)?;
    let owner = instance_owner(instance);
    if !ours_to_remove(conn, Kind::Database, db.as_str(), owner, source).await? {
        return Ok(());
    }
    let mut users: Vec<UserName> = owners::users_under(conn, db.as_str())
        .await?
        .iter()
        .map(|n| UserName::parse(n))
        .collect::<Result<_, _>>()?;
    for binding in bindings {
        let (user, source) = account_of(instance.platform, binding)?;
        let owner = binding_owner(instance.platform, &binding.id, &db);
        if !users.contains(&user)
            && ours_to_remove(conn, Kind::User, user.as_str(), owner, source).await?
        {
            users.push(user);
        }
    }
    for user in &users {
        drop_user(conn, user).await?;
    }
    owners::release_under(conn, db.as_str()).await?;
    conn.query_drop(format!("DROP DATABASE IF EXISTS {}", db.quoted()))
        .await
        .map_err(failed)?;
    owners::release(conn, Kind::Database, db.as_str(), owner).await
}

impl MysqlBroker {
    /// Builds the broker and registers its metrics on `registry`.
    pub fn new(config: &MysqlConfig, registry: &Registry) -> Self {
        let over_quota_gauge = IntGauge::new(
            "mysql_broker_instances_over_quota",
            "Instances whose database is over its plan's storage quota",
        )
        .expect("valid metric");
        registry
            .register(Box::new(over_quota_gauge.clone()))
            .expect("metric registered once");
        Self {
            servers: config.servers.iter().map(Server::new).collect(),
            plans: config.plans.clone(),
            quota_every: Duration::from_secs(config.quota_check_secs.max(1)),
            password_length: config.password_length,
            quota_policy: config.quota_policy,
            over_quota: Mutex::default(),
            survey: Mutex::default(),
            over_quota_gauge,
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
        let rights = self.rights(conn, db).await?;
        let over = match self.usage(conn, db, plan).await? {
            Some(usage) => usage.frozen(&self.quota_policy, quota::is_frozen(&rights)),
            None => false,
        };
        quota::enforce(conn, db, &rights, over).await.map(|_| ())
    }

    /// The write rights of the broker's accounts on `db`.
    async fn rights(
        &self,
        conn: &mut Conn,
        db: &DatabaseName,
    ) -> Result<Vec<(UserName, Writes)>, BrokerError> {
        let accounts = our_accounts(conn, db).await?;
        quota::rights(conn, db, &accounts).await
    }

    /// Brings the broker's accounts on `db` in line with `over`, as they are now.
    async fn enforce(
        &self,
        conn: &mut Conn,
        db: &DatabaseName,
        over: bool,
    ) -> Result<(), BrokerError> {
        let rights = self.rights(conn, db).await?;
        quota::enforce(conn, db, &rights, over).await.map(|_| ())
    }

    fn limits(&self, plan: &Plan) -> Result<&PlanLimits, BrokerError> {
        self.plans.get(&plan.id).ok_or_else(|| {
            BrokerError::Failed(format!("no [mysql.plans] limits for plan {:?}", plan.name))
        })
    }

    /// The server an instance was placed on, as its state records; `None` for an instance
    /// whose provision never finished (it recorded nothing).
    fn recorded_server(&self, instance: &InstanceView<'_>) -> Result<Option<&Server>, BrokerError> {
        let Some(name) = instance.state.get("server").and_then(Value::as_str) else {
            return Ok(None);
        };
        self.servers
            .iter()
            .find(|s| s.name == name)
            .map(Some)
            .ok_or_else(|| {
                BrokerError::Failed(format!(
                    "the instance lives on server {name:?}, which is not configured"
                ))
            })
    }

    /// The server of a provisioned instance.
    fn server_of(&self, instance: &InstanceView<'_>) -> Result<&Server, BrokerError> {
        self.recorded_server(instance)?.ok_or_else(|| {
            BrokerError::Failed("the instance records no server; it was never provisioned".into())
        })
    }

    /// Where a new instance goes: the server that already carries its marker (a retried
    /// provision), else the reachable server with the fewest instances. A retry needs every
    /// server: an unreachable one may hold what the first attempt began.
    async fn place(
        &self,
        db: &DatabaseName,
        owner: Owner<'_>,
        retry: bool,
    ) -> Result<(&Server, Conn), BrokerError> {
        let mut best: Option<(u64, &Server, Conn)> = None;
        let mut last_error = None;
        for server in &self.servers {
            let mut conn = match server.conn().await {
                Ok(conn) => conn,
                Err(e) if retry => return Err(e),
                Err(e) => {
                    tracing::warn!(server = %server.name, error = %e, "server unreachable; not placing there");
                    last_error = Some(e);
                    continue;
                }
            };
            if owners::is_mine(&mut conn, Kind::Database, db.as_str(), owner).await? {
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
        let users = our_accounts(conn, db).await?;
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
            .map_err(failed)?;
        }
        Ok(())
    }

    /// Creates the binding's account with its share of connections and its rights.
    async fn make_account(
        &self,
        conn: &mut Conn,
        db: &DatabaseName,
        user: &UserName,
        password: &SecretString,
        plan: &Plan,
    ) -> Result<(), BrokerError> {
        // An account under this name is what an earlier attempt of this same bind left (its
        // marker is this binding's): its password was never handed out, so start afresh.
        drop_user(conn, user).await?;
        let others = our_accounts(conn, db).await?.len();
        let per_user = per_user_limit(self.limits(plan)?.connections, others + 1, plan)?;
        // Identifiers and passwords cannot be bound parameters; the name is [a-z0-9_] and the
        // password [A-Za-z0-9-._~], both made by this broker, so neither can close the quote.
        conn.query_drop(format!(
            "CREATE USER {} IDENTIFIED BY '{}' WITH MAX_USER_CONNECTIONS {per_user}",
            user.account(),
            password.expose_secret()
        ))
        .await
        .map_err(failed)?;
        grant_all(conn, db, user).await?;
        self.rebalance(conn, db, plan).await?;
        self.apply_quota(conn, db, plan).await
    }

    fn set_over_quota(&self, instance: &str, over: bool) {
        let mut set = self.over_quota.lock().unwrap();
        if over {
            set.insert(instance.to_owned());
        } else {
            set.remove(instance);
        }
        self.over_quota_gauge.set(set.len() as i64);
    }
}

#[async_trait]
impl ServiceBroker for MysqlBroker {
    async fn provision(&self, input: ProvisionInput<'_>) -> Result<Provisioned, BrokerError> {
        let db = DatabaseName::for_instance(input.platform, input.instance_id);
        let owner = Owner {
            platform: input.platform,
            id: input.instance_id.as_str(),
            parent: "",
        };
        self.limits(input.plan)?;
        let (server, mut conn) = self.place(&db, owner, input.retry).await?;
        let claimed = owners::claim(&mut conn, Kind::Database, db.as_str(), owner).await?;
        if claimed == Claimed::Unmade && database_exists(&mut conn, &db).await? {
            owners::release(&mut conn, Kind::Database, db.as_str(), owner).await?;
            return Err(BrokerError::Conflict(format!(
                "a database named {:?} already exists on MySQL server {:?} and was not made by this broker for this instance",
                db.as_str(),
                server.name
            )));
        }
        // The name is free: from now on, what stands under it is the instance's.
        owners::set_made(&mut conn, Kind::Database, db.as_str()).await?;
        conn.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
            db.quoted()
        ))
        .await
        .map_err(failed)?;
        tracing::info!(server = %server.name, database = db.as_str(), "database created");
        Ok(Provisioned {
            state: json!({"server": server.name, "database": db.as_str()}),
            ..Provisioned::default()
        })
    }

    async fn update(&self, input: UpdateInput<'_>) -> Result<Updated, BrokerError> {
        let (db, _) = database_of(&input.instance)?;
        let mut conn = self.server_of(&input.instance)?.conn().await?;
        let users = our_accounts(&mut conn, &db).await?;
        per_user_limit(
            self.limits(input.plan)?.connections,
            users.len(),
            input.plan,
        )?;
        if let Some(usage) = self.usage(&mut conn, &db, input.plan).await?
            && usage.frozen(&self.quota_policy, false)
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

    /// Removes what the instance has on its server; for an instance whose provision died
    /// before recording its server, whatever it may have begun on any server.
    async fn deprovision(&self, input: DeprovisionInput<'_>) -> Result<(), BrokerError> {
        let servers: Vec<&Server> = match self.recorded_server(&input.instance)? {
            Some(server) => vec![server],
            None => self.servers.iter().collect(),
        };
        for server in servers {
            let mut conn = server.conn().await?;
            remove_instance(&mut conn, &input.instance, input.bindings).await?;
        }
        self.set_over_quota(input.instance.id.as_str(), false);
        Ok(())
    }

    async fn bind(&self, input: BindInput<'_>) -> Result<Bound, BrokerError> {
        let instance = &input.instance;
        let (db, _) = database_of(instance)?;
        let server = self.server_of(instance)?;
        let user = UserName::for_binding(instance.platform, input.binding_id);
        let owner = binding_owner(instance.platform, input.binding_id, &db);
        let mut conn = server.conn().await?;
        let claimed = owners::claim(&mut conn, Kind::User, user.as_str(), owner).await?;
        if claimed == Claimed::Unmade && user_exists(&mut conn, &user).await? {
            owners::release(&mut conn, Kind::User, user.as_str(), owner).await?;
            return Err(BrokerError::Conflict(format!(
                "an account named {:?} already exists on MySQL server {:?} and was not made by this broker for this binding",
                user.as_str(),
                server.name
            )));
        }
        // The name is free: from now on, what stands under it is this binding's.
        owners::set_made(&mut conn, Kind::User, user.as_str()).await?;
        let password = generate_password(self.password_length);
        if let Err(err) = self
            .make_account(&mut conn, &db, &user, &password, instance.plan)
            .await
        {
            // Leave nothing half-made behind, on a fresh connection: the error may be the
            // old one dropping. If cleaning fails too, unbind finds the account by its name.
            drop(conn);
            let cleaned = async {
                let mut conn = server.conn().await?;
                drop_user(&mut conn, &user).await?;
                owners::release(&mut conn, Kind::User, user.as_str(), owner).await
            }
            .await;
            if let Err(e) = cleaned {
                tracing::warn!(error = %e, "cleaning up after a failed bind failed; unbind will retry");
            }
            return Err(err);
        }
        Ok(Bound {
            credentials: server.credentials(&db, &user, &password),
            state: json!({"user": user.as_str()}),
            ..Bound::default()
        })
    }

    async fn unbind(&self, input: UnbindInput<'_>) -> Result<(), BrokerError> {
        let instance = &input.instance;
        let (db, _) = database_of(instance)?;
        let (user, source) = account_of(instance.platform, input.binding)?;
        let owner = binding_owner(instance.platform, &input.binding.id, &db);
        let mut conn = self.server_of(instance)?.conn().await?;
        // A derived name without its marker: the bind died before making anything.
        if ours_to_remove(&mut conn, Kind::User, user.as_str(), owner, source).await? {
            drop_user(&mut conn, &user).await?;
            owners::release(&mut conn, Kind::User, user.as_str(), owner).await?;
        }
        self.rebalance(&mut conn, &db, instance.plan).await
    }

    fn upkeep_interval(&self) -> Option<Duration> {
        Some(self.quota_every)
    }

    /// Surveys the pass's databases, a few statements per server for all of them, so that
    /// `upkeep` asks a server only about a database to freeze, thaw or measure afresh.
    async fn upkeep_pass(&self, instances: &[InstanceView<'_>]) -> Result<(), BrokerError> {
        // An earlier pass's look is never used again, whatever fails below.
        self.survey.lock().unwrap().clear();
        let mut wanted: HashMap<&str, Vec<DatabaseName>> = HashMap::new();
        for instance in instances {
            // An instance whose records are unusable fails in its own upkeep.
            if let (Ok((db, _)), Ok(server)) = (database_of(instance), self.server_of(instance)) {
                wanted.entry(server.name.as_str()).or_default().push(db);
            }
        }
        // The servers side by side, each kept as soon as read: one that is slow or down (the
        // engine bounds the whole) holds up no other.
        let surveys = self.servers.iter().filter_map(|server| {
            let dbs = wanted.remove(server.name.as_str())?;
            Some(async move {
                let surveyed = async { quota::survey(&mut server.conn().await?, &dbs).await };
                match surveyed.await {
                    Ok(survey) => {
                        self.survey
                            .lock()
                            .unwrap()
                            .insert(server.name.clone(), survey);
                        Ok(())
                    }
                    Err(e) => {
                        tracing::warn!(server = %server.name, error = %e, "survey failed; its databases are checked one by one");
                        Err(e)
                    }
                }
            })
        });
        futures::future::join_all(surveys)
            .await
            .into_iter()
            .collect()
    }

    /// Measures the database and enforces its plan's quota; a plan without one (any more)
    /// gets every right back. The usage against the quota is what `GET` shows.
    async fn upkeep(
        &self,
        instance: InstanceView<'_>,
        _bindings: BindingsOf<'_>,
    ) -> Result<Option<InstanceMetadata>, BrokerError> {
        let (db, _) = database_of(&instance)?;
        let server = self.server_of(&instance)?;
        let quota_mb = self.limits(instance.plan)?.quota_mb;
        // Most databases, as the pass's survey saw them: every right held and under the quota
        // (or none). Nothing to change, nothing more to ask the server.
        let seen = self
            .survey
            .lock()
            .unwrap()
            .get(&server.name)
            .and_then(|survey| survey.get(&db));
        if let Some(seen) = seen.filter(|seen| !seen.frozen) {
            let usage = quota_mb.map(|quota_mb| Usage::new(seen.used_bytes, quota_mb));
            if usage.is_none_or(|usage| !usage.frozen(&self.quota_policy, false)) {
                self.set_over_quota(instance.id.as_str(), false);
                return Ok(usage.map(|usage| InstanceMetadata {
                    labels: Default::default(),
                    attributes: usage.attributes(false),
                }));
            }
        }
        let mut conn = server.conn().await?;
        let Some(quota_mb) = quota_mb else {
            self.enforce(&mut conn, &db, false).await?;
            self.set_over_quota(instance.id.as_str(), false);
            return Ok(None);
        };
        let mut rights = self.rights(&mut conn, &db).await?;
        let frozen_now = quota::is_frozen(&rights);
        let mut usage = Usage::new(quota::database_size(&mut conn, &db).await?, quota_mb);
        if usage.frozen(&self.quota_policy, frozen_now) {
            // Statistics lag behind deletions, so a database that looks over quota is measured
            // again on fresh ones. It is frozen first: that ends its sessions and so any table
            // lock they hold, which would otherwise keep the statistics (and the freeze) off.
            quota::enforce(&mut conn, &db, &rights, true).await?;
            rights = self.rights(&mut conn, &db).await?;
            match quota::remeasure(&mut conn, &db).await {
                Ok(bytes) => usage = Usage::new(bytes, quota_mb),
                Err(e) => {
                    tracing::warn!(database = db.as_str(), error = %e, "fresh statistics unavailable; the database stays frozen");
                }
            }
        }
        let frozen = usage.frozen(&self.quota_policy, frozen_now);
        quota::enforce(&mut conn, &db, &rights, frozen).await?;
        self.set_over_quota(instance.id.as_str(), frozen);
        Ok(Some(InstanceMetadata {
            labels: Default::default(),
            attributes: usage.attributes(frozen),
        }))
    }

    /// Each server that cannot be reached, or refuses the admin account.
    async fn check_backends(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for server in &self.servers {
            let checked = async {
                let mut conn = server.conn().await?;
                conn.query_drop("SELECT 1").await.map_err(failed)
            }
            .await;
            if let Err(e) = checked {
                problems.push(format!("mysql.servers {:?}: {e}", server.name));
            }
        }
        problems
    }

    /// The marked databases and accounts on every server, and those named like the broker's
    /// (`op_…`, `b_…`) that carry no marker.
    async fn objects(&self) -> Result<Vec<BackendObject>, BrokerError> {
        let mut objects = Vec::new();
        for server in &self.servers {
            let mut conn = server.conn().await?;
            let marked = owners::all(&mut conn).await?;
            let databases: Vec<String> = conn
                .query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'op\\_%'")
                .await
                .map_err(failed)?;
            let accounts: Vec<String> = conn
                .query("SELECT User FROM mysql.user WHERE User LIKE 'b\\_%' AND Host = '%'")
                .await
                .map_err(failed)?;
            let unmarked = |kind: Kind, names: Vec<String>| {
                names
                    .into_iter()
                    .filter(|n| !marked.iter().any(|m| m.kind == kind && &m.name == n))
                    .map(|name| BackendObject::unmarked(kind.as_str(), &name, &server.name))
                    .collect::<Vec<_>>()
            };
            objects.extend(unmarked(Kind::Database, databases));
            objects.extend(unmarked(Kind::User, accounts));
            objects.extend(marked.iter().map(|m| {
                let owner = Owner {
                    platform: &m.platform,
                    id: &m.owner_id,
                    parent: &m.parent,
                };
                BackendObject::marked(
                    m.kind.as_str(),
                    &m.name,
                    &server.name,
                    owner,
                    m.created_at_ms,
                )
            }));
        }
        Ok(objects)
    }

    /// Removes an orphaned database (with the accounts marked under it) or account, and its
    /// markers.
    async fn remove_object(&self, object: &BackendObject) -> Result<(), BrokerError> {
        let (platform, id) = match &object.claim {
            Claim::Instance { platform, id } | Claim::Binding { platform, id } => (platform, id),
            Claim::Unmarked => {
                return Err(BrokerError::Failed(format!(
                    "{} {:?} carries no marker of this broker",
                    object.kind, object.name
                )));
            }
        };
        let server = self
            .servers
            .iter()
            .find(|s| s.name == object.location)
            .ok_or_else(|| {
                BrokerError::Failed(format!("server {:?} is not configured", object.location))
            })?;
        let mut conn = server.conn().await?;
        let owner = Owner {
            platform,
            id,
            parent: "",
        };
        let kind = match &object.claim {
            Claim::Instance { .. } => Kind::Database,
            _ => Kind::User,
        };
        if !owners::made(&mut conn, kind, &object.name).await? {
            // Only a claim: whatever stands under the name is not the broker's; the marker
            // goes alone.
            return owners::release(&mut conn, kind, &object.name, owner).await;
        }
        match &object.claim {
            Claim::Instance { .. } => {
                let db = DatabaseName::recorded(&object.name)?;
                for name in owners::users_under(&mut conn, db.as_str()).await? {
                    drop_user(&mut conn, &UserName::parse(&name)?).await?;
                }
                owners::release_under(&mut conn, db.as_str()).await?;
                conn.query_drop(format!("DROP DATABASE IF EXISTS {}", db.quoted()))
                    .await
                    .map_err(failed)?;
                owners::release(&mut conn, Kind::Database, db.as_str(), owner).await
            }
            _ => {
                let user = UserName::parse(&object.name)?;
                drop_user(&mut conn, &user).await?;
                owners::release(&mut conn, Kind::User, user.as_str(), owner).await
            }
        }
    }

    /// Ready while at least one server takes new instances; the others are logged.
    async fn check_ready(&self) -> Result<(), BrokerError> {
        let mut last_error = None;
        for server in &self.servers {
            match server.conn().await {
                Ok(mut conn) => match conn.query_drop("SELECT 1").await {
                    Ok(()) => return Ok(()),
                    Err(e) => last_error = Some(failed(e)),
                },
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| BrokerError::Unavailable("no MySQL server is configured".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv6 server address stands bare in `hostname` and in brackets in both URIs, so that
    /// its colons are not read as the port's.
    #[tokio::test]
    async fn an_ipv6_host_is_bracketed_in_the_uris() {
        let server = Server {
            name: "v6".into(),
            pool: Pool::new(OptsBuilder::default()),
            host: "fd00::5".into(),
            port: 3306,
        };
        let db = DatabaseName::recorded("op_a").unwrap();
        let user = UserName::parse("b_a").unwrap();
        let creds = server.credentials(&db, &user, &SecretString::from("p-w"));
        assert_eq!(creds.get("hostname"), Some(&json!("fd00::5")));
        assert_eq!(
            creds.get("uri"),
            Some(&json!("mysql://b_a:p-w@[fd00::5]:3306/op_a"))
        );
        assert_eq!(
            creds.get("jdbcUrl"),
            Some(&json!(
                "jdbc:mysql://[fd00::5]:3306/op_a?user=b_a&password=p-w"
            ))
        );
    }
}
