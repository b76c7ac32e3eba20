//! The Redis backend. A `shared` plan's instance is a key prefix on the shared server; a
//! `pool` plan's instance is a whole server from the operator's pool, claimed in the broker's
//! store so that two replicas never hand out the same one. Every binding is an ACL user of
//! its own (apps never get an admin password).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use osb_core::broker::*;
use osb_core::catalog::Plan;
use osb_core::claims::Claims;
use osb_core::cli::BuildError;
use osb_core::config::BrokerConfig;
use osb_core::credentials::{Credentials, PasswordLength, generate_password};
use osb_core::ids::BindingId;
use osb_core::orphans::{BackendObject, Claim};
use osb_core::uri;
use redis::aio::MultiplexedConnection;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::acl::{self, Scope};
use crate::config::{LocalConfig, PlanConfig, PlanKind, RedisConfig};
use crate::local::{self, Process, StartError};
use crate::markers::{self, Claimed, Kind, Owner};
use crate::names::{AclUser, KeyPrefix};
use crate::server::{self, Admin};

/// The store's name for the pool of dedicated servers.
const POOL: &str = "redis-pool";

/// The store's name for the ports of local processes.
const PORTS: &str = "redis-local-ports";

/// How many times a new local instance moves to another port when the one it claimed was
/// taken before its server could listen on it.
const PORT_MOVES: u32 = 3;

pub struct RedisBroker {
    shared: Option<Admin>,
    pool: Vec<Admin>,
    local: Option<LocalConfig>,
    plans: HashMap<String, PlanConfig>,
    password_length: PasswordLength,
    claims: Claims,
    upkeep_every: Duration,
    /// One start or removal of a local process at a time (local mode is one replica): an
    /// upkeep never starts a process a deprovision is removing.
    local_turn: tokio::sync::Mutex<()>,
}

/// Where an instance lives.
enum Home<'a> {
    Shared(&'a Admin, KeyPrefix),
    Pool(&'a Admin),
    Local(Box<Admin>, Process),
}

impl Home<'_> {
    fn admin(&self) -> &Admin {
        match self {
            Home::Shared(admin, _) | Home::Pool(admin) => admin,
            Home::Local(admin, _) => admin,
        }
    }

    fn scope(&self) -> Scope<'_> {
        match self {
            Home::Shared(_, prefix) => Scope::Prefix(prefix),
            Home::Pool(_) | Home::Local(..) => Scope::Server,
        }
    }
}

/// After the first change (a claim in the store, a wiped server), a failure must not read as
/// "nothing was done": the platform then cleans up instead of assuming nothing is there.
fn after_claim(err: BrokerError) -> BrokerError {
    match err {
        BrokerError::Unavailable(why) => BrokerError::Failed(why),
        other => other,
    }
}

/// Removes a shared binding's user: under this broker's marker, or, with the marker gone
/// (evicted, flushed, lost in a restart), when the binding's own record names the user, which
/// only a bind that made it writes.
async fn remove_binding_user(
    conn: &mut MultiplexedConnection,
    platform: &str,
    binding: &BindingView,
    prefix: &KeyPrefix,
) -> Result<(), BrokerError> {
    let user = AclUser::for_binding(platform, &binding.id);
    let name = user.as_str();
    let owner = binding_owner(platform, &binding.id, prefix);
    let recorded = binding.state.get("user").and_then(Value::as_str) == Some(name);
    if recorded && markers::absent(conn, Kind::User, name).await? {
        return server::remove_user(conn, name).await;
    }
    markers::remove_marked(conn, Kind::User, name, owner, |mut c| async move {
        server::remove_user(&mut c, name).await
    })
    .await
}

fn instance_owner<'a>(instance: &InstanceView<'a>) -> Owner<'a> {
    Owner {
        platform: instance.platform,
        id: instance.id.as_str(),
        parent: "",
    }
}

fn binding_owner<'a>(
    platform: &'a str,
    binding: &'a BindingId,
    prefix: &'a KeyPrefix,
) -> Owner<'a> {
    Owner {
        platform,
        id: binding.as_str(),
        parent: prefix.as_str(),
    }
}

impl RedisBroker {
    pub fn new(config: &RedisConfig, broker: &BrokerConfig) -> Result<Self, BuildError> {
        let catalog = &broker.catalog;
        let bad = |why: String| BuildError::Backend(why);
        let shared = config
            .shared
            .as_ref()
            .map(Admin::new)
            .transpose()
            .map_err(bad)?;
        let pool = config
            .pool
            .iter()
            .map(Admin::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        for (i, a) in pool.iter().enumerate() {
            if pool[..i].iter().any(|b| b.server.name == a.server.name) {
                return Err(bad(format!(
                    "two [[redis.pool]] servers are named {:?}",
                    a.server.name
                )));
            }
        }
        for plan in catalog.services.iter().flat_map(|s| &s.plans) {
            let Some(limits) = config.plans.get(&plan.id) else {
                return Err(bad(format!(
                    "plan {:?} ({}) has no [redis.plans] entry",
                    plan.name, plan.id
                )));
            };
            match limits.kind {
                PlanKind::Shared if shared.is_none() => {
                    return Err(bad(format!(
                        "plan {:?} is shared but [redis.shared] names no server",
                        plan.name
                    )));
                }
                PlanKind::Pool if pool.is_empty() => {
                    return Err(bad(format!(
                        "plan {:?} takes servers from the pool but [[redis.pool]] lists none",
                        plan.name
                    )));
                }
                PlanKind::Local if config.local.is_none() => {
                    return Err(bad(format!(
                        "plan {:?} runs local processes but [redis.local] is missing",
                        plan.name
                    )));
                }
                PlanKind::Local if !broker.store.url.0.expose_secret().starts_with("sqlite://") => {
                    return Err(bad(format!(
                        "plan {:?} runs redis-server processes on this host, which other replicas cannot reach: local mode needs a SQLite state store of its own (one replica), not a shared one",
                        plan.name
                    )));
                }
                _ => {}
            }
        }
        if let Some(local) = &config.local
            && !local.redis_server.is_absolute()
        {
            // Processes start with an empty environment: no PATH to search.
            return Err(bad(format!(
                "[redis.local] redis_server must be an absolute path (got {})",
                local.redis_server.display()
            )));
        }
        if let Some(local) = &config.local
            && local.data_dir.as_os_str().len() > local::DATA_DIR_FOR_SOCKETS
        {
            tracing::warn!(
                data_dir = %local.data_dir.display(),
                "[redis.local] data_dir is longer than {} bytes: instances whose admin socket does not fit in it are logged in to over TCP (docs/redis-broker.md, Known limits)",
                local::DATA_DIR_FOR_SOCKETS
            );
        }
        if let Some(local) = &config.local
            && local.ports[0] > local.ports[1]
        {
            return Err(bad(format!(
                "[redis.local] ports {:?} is an empty range",
                local.ports
            )));
        }
        Ok(Self {
            shared,
            pool,
            local: config.local.clone(),
            plans: config.plans.clone(),
            password_length: config.password_length,
            claims: Claims::new(),
            local_turn: tokio::sync::Mutex::new(()),
            upkeep_every: Duration::from_secs(config.upkeep_secs.max(1)),
        })
    }

    fn plan(&self, plan: &Plan) -> Result<&PlanConfig, BrokerError> {
        self.plans.get(&plan.id).ok_or_else(|| {
            BrokerError::Failed(format!("plan {:?} has no [redis.plans] entry", plan.name))
        })
    }

    fn shared(&self) -> Result<&Admin, BrokerError> {
        self.shared
            .as_ref()
            .ok_or_else(|| BrokerError::Failed("[redis.shared] names no server".into()))
    }

    fn pool_server(&self, name: &str) -> Result<&Admin, BrokerError> {
        self.pool
            .iter()
            .find(|a| a.server.name == name)
            .ok_or_else(|| {
                BrokerError::Failed(format!("pool server {name:?} is no longer configured"))
            })
    }

    /// Where `instance` lives: its recorded prefix or server; for a pool instance that
    /// recorded none (its provision died), the server its claim names, if any.
    async fn home<'a>(
        &'a self,
        instance: &InstanceView<'_>,
    ) -> Result<Option<Home<'a>>, BrokerError> {
        match self.plan(instance.plan)?.kind {
            PlanKind::Shared => {
                let prefix = match instance.state.get("prefix").and_then(Value::as_str) {
                    Some(raw) => KeyPrefix::recorded(raw).ok_or_else(|| {
                        BrokerError::Failed(format!(
                            "recorded key prefix {raw:?} is not one this broker makes"
                        ))
                    })?,
                    None => KeyPrefix::for_instance(instance.platform, instance.id),
                };
                Ok(Some(Home::Shared(self.shared()?, prefix)))
            }
            // The claim in the store is what makes a server or a port the instance's: once an
            // earlier deprovision gave it back (and another instance may hold it now), the
            // recorded name means nothing and the server is never touched again.
            PlanKind::Pool => {
                let held = self.claims.held_by(POOL, instance_owner(instance)).await?;
                let recorded = instance.state.get("server").and_then(Value::as_str);
                match held {
                    Some(name) if recorded.is_none_or(|r| r == name) => {
                        self.pool_server(&name).map(|a| Some(Home::Pool(a)))
                    }
                    _ => Ok(None),
                }
            }
            PlanKind::Local => {
                let held = self.claims.held_by(PORTS, instance_owner(instance)).await?;
                let recorded = instance.state.get("port").and_then(Value::as_u64);
                let Some(port) = held
                    .and_then(|p| p.parse::<u16>().ok())
                    .filter(|p| recorded.is_none_or(|r| r == u64::from(*p)))
                else {
                    return Ok(None);
                };
                let process = self.process(instance, port)?;
                if !process.configured() {
                    // The provision died before writing the config: nothing runs there.
                    return Ok(None);
                }
                let admin = process.admin(self.local()?)?;
                Ok(Some(Home::Local(Box::new(admin), process)))
            }
        }
    }

    /// The local process `instance` has (or would have) on `port`.
    fn process(&self, instance: &InstanceView<'_>, port: u16) -> Result<Process, BrokerError> {
        let name = KeyPrefix::for_instance(instance.platform, instance.id);
        Ok(Process::new(self.local()?, &name, port))
    }

    fn local(&self) -> Result<&LocalConfig, BrokerError> {
        self.local
            .as_ref()
            .ok_or_else(|| BrokerError::Failed("[redis.local] is missing".into()))
    }

    /// A free port of the local range, claimed for `owner`, and `true`; or the one it holds
    /// already (on a retry) and `false`. A port another program listens on is skipped.
    async fn claim_port(&self, owner: Owner<'_>) -> Result<(u16, bool), BrokerError> {
        if let Some(port) = self.claims.held_by(PORTS, owner).await? {
            let port = port
                .parse()
                .map_err(|_| BrokerError::Failed(format!("claimed port {port:?} is no port")))?;
            return Ok((port, false));
        }
        let local = self.local()?;
        let taken = self.claims.all(PORTS).await?;
        let [first, last] = local.ports;
        for port in first..=last {
            let item = port.to_string();
            if taken.iter().any(|c| c.item == item) || !local::port_free(&local.bind, port) {
                continue;
            }
            if self.claims.claim(PORTS, &item, owner).await? {
                return Ok((port, true));
            }
        }
        Err(BrokerError::Unprocessable(format!(
            "no free port left in {first}-{last} for another Redis process; ask the operator for a wider range"
        )))
    }

    /// A free pool server, claimed for `owner` in the store (the one it holds already, on a
    /// retry); none free is a refusal that says so.
    async fn claim_server(&self, owner: Owner<'_>) -> Result<&Admin, BrokerError> {
        if let Some(name) = self.claims.held_by(POOL, owner).await? {
            return self.pool_server(&name);
        }
        let taken = self.claims.all(POOL).await?;
        for admin in &self.pool {
            if taken.iter().any(|c| c.item == admin.server.name) {
                continue;
            }
            // Another replica may take it first: then the next one.
            if self.claims.claim(POOL, &admin.server.name, owner).await? {
                return Ok(admin);
            }
        }
        Err(BrokerError::Unprocessable(format!(
            "no free Redis server in the pool: all {} are in use; ask the operator for more",
            self.pool.len()
        )))
    }

    fn credentials(&self, home: &Home<'_>, user: &AclUser, password: &SecretString) -> Credentials {
        let server = &home.admin().server;
        let host = server.public_host.as_deref().unwrap_or(&server.host);
        let uri = format!(
            "redis://{}:{}@{}",
            uri::component(user.as_str()),
            uri::component(password.expose_secret()),
            uri::authority(host, server.port)
        );
        let mut credentials = Credentials::new()
            .with("host", host)
            .with("port", server.port)
            .with("username", user.as_str())
            .with_secret("password", password)
            .with_secret("uri", &SecretString::from(uri));
        if let Some(port) = server.tls_port {
            credentials = credentials.with("tls_port", port);
        }
        if let Home::Shared(_, prefix) = home {
            credentials = credentials.with("key_prefix", format!("{prefix}:"));
        }
        credentials
    }

    /// Makes (or puts back) a binding's user from its recorded password hash.
    async fn put_user(
        conn: &mut MultiplexedConnection,
        home: &Home<'_>,
        user: &AclUser,
        hash: &str,
    ) -> Result<(), BrokerError> {
        server::set_user(conn, user, &acl::rules(home.scope(), hash)).await
    }
}

#[async_trait]
impl ServiceBroker for RedisBroker {
    fn mode(&self, operation: Operation, plan: &Plan) -> Mode {
        // A dedicated server is a deployment in K-PaaS's broker: Cloud Foundry answers "Create
        // in progress" and polls, as it did. Taking one from the pool is quick, so a client
        // that cannot poll gets it within the request.
        match (operation, self.plans.get(&plan.id).map(|p| p.kind)) {
            (
                Operation::Provision | Operation::Deprovision,
                Some(PlanKind::Pool | PlanKind::Local),
            ) => Mode::Either,
            _ => Mode::Sync,
        }
    }

    fn claims(&self) -> Option<&Claims> {
        Some(&self.claims)
    }

    async fn provision(&self, input: ProvisionInput<'_>) -> Result<Provisioned, BrokerError> {
        let plan = self.plan(input.plan)?;
        let owner = Owner {
            platform: input.platform,
            id: input.instance_id.as_str(),
            parent: "",
        };
        match plan.kind {
            PlanKind::Shared => {
                let admin = self.shared()?;
                let prefix = KeyPrefix::for_instance(input.platform, input.instance_id);
                let mut conn = admin.conn().await?;
                let claimed =
                    markers::claim(&mut conn, Kind::Prefix, prefix.as_str(), owner).await?;
                if claimed == Claimed::Unmade
                    && server::prefix_used(&mut conn, prefix.as_str()).await?
                {
                    markers::release(&mut conn, Kind::Prefix, prefix.as_str(), owner).await?;
                    return Err(BrokerError::Conflict(format!(
                        "keys under {prefix}: exist on {} and were not made for this instance",
                        admin.label()
                    )));
                }
                markers::set_made(&mut conn, Kind::Prefix, prefix.as_str(), owner).await?;
                Ok(Provisioned {
                    state: json!({"prefix": prefix.as_str()}),
                    ..Provisioned::default()
                })
            }
            PlanKind::Pool => {
                let admin = self.claim_server(owner).await?;
                // From here on the server is claimed: a failure is no longer "nothing done".
                let mut conn = admin.conn().await.map_err(after_claim)?;
                // Whatever an earlier tenant or attempt left goes before the new one sees it.
                server::wipe(&mut conn, admin.admin_user()).await?;
                server::configure(&mut conn, plan).await?;
                Ok(Provisioned {
                    state: json!({"server": admin.server.name}),
                    ..Provisioned::default()
                })
            }
            PlanKind::Local => {
                let local = self.local()?;
                let name = KeyPrefix::for_instance(input.platform, input.instance_id);
                // The port is claimed within the turn, so that the server starts on it right
                // after it was found free, not after every start queued before this one.
                let _turn = self.local_turn.lock().await;
                let mut moves = 0;
                loop {
                    let (port, fresh) = self.claim_port(owner).await?;
                    let process = Process::new(local, &name, port);
                    process.write_conf(local, plan)?;
                    match process.ensure_running(local).await {
                        Ok(()) => {
                            return Ok(Provisioned {
                                state: json!({"port": port}),
                                ..Provisioned::default()
                            });
                        }
                        // Taken since this attempt found it free. Nothing names the port
                        // yet: the directory goes (nothing ran there), then the claim, and the
                        // next free port is tried, as a new provision would (a crash in between
                        // leaves what deprovision removes). A port an earlier attempt claimed
                        // stays: the server that attempt started may be what holds it.
                        Err(StartError::PortTaken(_)) if fresh && moves < PORT_MOVES => {
                            moves += 1;
                            process.remove().await.map_err(after_claim)?;
                            self.claims
                                .release(PORTS, &port.to_string(), owner)
                                .await
                                .map_err(after_claim)?;
                        }
                        Err(err) => return Err(after_claim(err.into())),
                    }
                }
            }
        }
    }

    async fn update(&self, input: UpdateInput<'_>) -> Result<Updated, BrokerError> {
        let before = self.plan(input.instance.plan)?;
        let after = self.plan(input.plan)?;
        if before.kind != after.kind {
            return Err(BrokerError::Unprocessable(format!(
                "plan {:?} keeps instances elsewhere (shared and dedicated plans do not change into each other)",
                input.plan.name
            )));
        }
        let home = match self.home(&input.instance).await? {
            Some(home @ (Home::Pool(_) | Home::Local(..))) => home,
            _ => return Ok(Updated::default()),
        };
        let mut conn = home.admin().conn().await?;
        if let Some(mb) = after.maxmemory_mb {
            let used = server::used_memory(&mut conn).await?;
            if used > mb * 1024 * 1024 {
                return Err(BrokerError::Unprocessable(format!(
                    "the server holds {} MiB, more than plan {:?} allows ({mb} MiB); delete some keys first",
                    used.div_ceil(1024 * 1024),
                    input.plan.name
                )));
            }
        }
        if let Home::Local(_, process) = &home {
            // Kept for the process's next start; not while upkeep starts it (and may give its
            // config the socket).
            let _turn = self.local_turn.lock().await;
            process.write_conf(self.local()?, after)?;
        }
        server::configure(&mut conn, after).await?;
        Ok(Updated::default())
    }

    async fn deprovision(&self, input: DeprovisionInput<'_>) -> Result<(), BrokerError> {
        let instance = &input.instance;
        let owner = instance_owner(instance);
        match self.home(instance).await? {
            None => {
                // A local instance whose provision died before its process was set up: what
                // its directory holds goes, then the port.
                if let Some(port) = self.claims.held_by(PORTS, owner).await?
                    && let Ok(number) = port.parse()
                {
                    let _turn = self.local_turn.lock().await;
                    self.process(instance, number)?
                        .remove()
                        .await
                        .map_err(after_claim)?;
                    self.claims.release(PORTS, &port, owner).await?;
                }
                Ok(())
            }
            Some(Home::Pool(admin)) => {
                let mut conn = admin.conn().await?;
                server::wipe(&mut conn, admin.admin_user()).await?;
                self.claims
                    .release(POOL, &admin.server.name, owner)
                    .await
                    .map_err(after_claim)
            }
            Some(Home::Local(_, process)) => {
                let _turn = self.local_turn.lock().await;
                process.remove().await?;
                self.claims
                    .release(PORTS, &process.port.to_string(), owner)
                    .await
                    .map_err(after_claim)
            }
            Some(Home::Shared(admin, prefix)) => {
                let mut conn = admin.conn().await?;
                for binding in input.bindings {
                    remove_binding_user(&mut conn, instance.platform, binding, &prefix).await?;
                }
                // The record of a finished provision is proof enough that the prefix is this
                // instance's, should the marker hash be gone (evicted, flushed, lost in a
                // restart).
                let recorded =
                    instance.state.get("prefix").and_then(Value::as_str) == Some(prefix.as_str());
                if recorded && markers::absent(&mut conn, Kind::Prefix, prefix.as_str()).await? {
                    return server::remove_prefix(&mut conn, prefix.as_str()).await;
                }
                markers::remove_marked(&mut conn, Kind::Prefix, prefix.as_str(), owner, |mut c| {
                    let prefix = prefix.clone();
                    async move {
                        // Users a lost binding record left under the prefix go too.
                        for marker in markers::all(&mut c).await? {
                            if marker.kind != Kind::User.as_str()
                                || marker.parent != prefix.as_str()
                            {
                                continue;
                            }
                            let Some(user) = AclUser::recorded(&marker.name) else {
                                continue;
                            };
                            if marker.made {
                                server::remove_user(&mut c, user.as_str()).await?;
                            }
                            markers::release(&mut c, Kind::User, user.as_str(), marker.owner())
                                .await?;
                        }
                        server::remove_prefix(&mut c, prefix.as_str()).await
                    }
                })
                .await
            }
        }
    }

    async fn bind(&self, input: BindInput<'_>) -> Result<Bound, BrokerError> {
        let instance = &input.instance;
        let home = self
            .home(instance)
            .await?
            .ok_or_else(|| BrokerError::Failed("the instance holds no pool server".into()))?;
        let user = AclUser::for_binding(instance.platform, input.binding_id);
        let mut conn = home.admin().conn().await?;
        if let Home::Shared(_, prefix) = &home {
            let owner = binding_owner(instance.platform, input.binding_id, prefix);
            let claimed = markers::claim(&mut conn, Kind::User, user.as_str(), owner).await?;
            if claimed == Claimed::Unmade && server::user_exists(&mut conn, user.as_str()).await? {
                markers::release(&mut conn, Kind::User, user.as_str(), owner).await?;
                return Err(BrokerError::Conflict(format!(
                    "an ACL user named {user} exists on {} and was not made for this binding",
                    home.admin().label()
                )));
            }
            markers::set_made(&mut conn, Kind::User, user.as_str(), owner).await?;
        }
        // A retry of a bind that made the user resets it: its password was never handed out.
        let password = generate_password(self.password_length);
        let hash = acl::password_hash(&password);
        Self::put_user(&mut conn, &home, &user, &hash).await?;
        Ok(Bound {
            credentials: self.credentials(&home, &user, &password),
            state: json!({"user": user.as_str(), "password_sha256": hash}),
            ..Bound::default()
        })
    }

    async fn unbind(&self, input: UnbindInput<'_>) -> Result<(), BrokerError> {
        let instance = &input.instance;
        let Some(home) = self.home(instance).await? else {
            return Ok(());
        };
        let user = AclUser::for_binding(instance.platform, &input.binding.id);
        let mut conn = home.admin().conn().await?;
        match &home {
            Home::Pool(_) | Home::Local(..) => server::remove_user(&mut conn, user.as_str()).await,
            Home::Shared(_, prefix) => {
                remove_binding_user(&mut conn, instance.platform, input.binding, prefix).await
            }
        }
    }

    fn upkeep_interval(&self) -> Option<Duration> {
        Some(self.upkeep_every)
    }

    /// Puts back the users (and, on the shared server, the markers) a restarted server lost:
    /// ACL users live in memory when the server has no `aclfile`.
    async fn upkeep(
        &self,
        instance: InstanceView<'_>,
        bindings: BindingsOf<'_>,
    ) -> Result<Option<osb_core::wire::InstanceMetadata>, BrokerError> {
        // The pass works from a list read at its start: an instance that a deprovision or a
        // plan change took since is theirs now.
        if !bindings.instance_ready().await? {
            return Ok(None);
        }
        let Some(home) = self.home(&instance).await? else {
            return Ok(None);
        };
        if let Home::Local(_, process) = &home {
            // A process that died (or never came back after a reboot) starts again on its
            // data; never while a deprovision removes it.
            let _turn = self.local_turn.lock().await;
            if !bindings.instance_ready().await? {
                return Ok(None);
            }
            process.ensure_running(self.local()?).await?;
        }
        let mut conn = home.admin().conn().await?;
        if let Home::Pool(_) = &home {
            // A pool server that restarted came back with its own file's settings.
            server::configure(&mut conn, self.plan(instance.plan)?).await?;
        }
        if let Home::Shared(_, prefix) = &home {
            let owner = instance_owner(&instance);
            if markers::held(&mut conn, Kind::Prefix, prefix.as_str(), owner)
                .await?
                .is_none()
            {
                markers::claim(&mut conn, Kind::Prefix, prefix.as_str(), owner).await?;
                markers::set_made(&mut conn, Kind::Prefix, prefix.as_str(), owner).await?;
            }
        }
        let mut put_back = Vec::new();
        for binding in bindings.load().await? {
            // Only a binding that is bound: one being (or failed to be) removed stays revoked.
            if !binding.ready {
                continue;
            }
            let (Some(name), Some(hash)) = (
                binding.state.get("user").and_then(Value::as_str),
                binding.state.get("password_sha256").and_then(Value::as_str),
            ) else {
                continue;
            };
            let Some(user) = AclUser::recorded(name) else {
                continue;
            };
            let exists = server::user_exists(&mut conn, user.as_str()).await?;
            if let Home::Shared(_, prefix) = &home {
                // Markers a flush or an eviction took are written again, for lost users and
                // for live ones.
                let owner = binding_owner(instance.platform, &binding.id, prefix);
                if markers::held(&mut conn, Kind::User, user.as_str(), owner).await?
                    != Some(Claimed::Made)
                {
                    markers::claim(&mut conn, Kind::User, user.as_str(), owner).await?;
                    markers::set_made(&mut conn, Kind::User, user.as_str(), owner).await?;
                }
            }
            if exists {
                continue;
            }
            tracing::warn!(user = %user, server = %home.admin().label(), "putting back a binding's user the server lost");
            Self::put_user(&mut conn, &home, &user, hash).await?;
            put_back.push((binding.id, user));
        }
        if put_back.is_empty() {
            return Ok(None);
        }
        // Checked after the writes: an unbind or a deprovision marks its row before it removes
        // anything, so one that began meanwhile is seen here and its user goes again; for a
        // pool server, so is a claim given back (and maybe taken) meanwhile.
        let still = bindings.load().await?;
        let home_still = match &home {
            Home::Pool(admin) => {
                self.claims
                    .held_by(POOL, instance_owner(&instance))
                    .await?
                    .as_deref()
                    == Some(admin.server.name.as_str())
            }
            _ => true,
        };
        let instance_still = home_still && bindings.instance_ready().await?;
        for (id, user) in put_back {
            if !instance_still || !still.iter().any(|b| b.id == id && b.ready) {
                server::remove_user(&mut conn, user.as_str()).await?;
            }
        }
        Ok(None)
    }

    /// Every configured server answers the admin login.
    async fn check_ready(&self) -> Result<(), BrokerError> {
        for admin in self.shared.iter().chain(&self.pool) {
            admin.conn().await?;
        }
        Ok(())
    }

    /// Every server: reachable, and not open to clients that do not log in; the shared one
    /// keeping every key (its markers among them) rather than evicting any.
    async fn check_backends(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(admin) = &self.shared
            && let Ok(mut conn) = admin.conn().await
        {
            match server::eviction_policy(&mut conn).await {
                Ok(policy) if policy.starts_with("allkeys-") => problems.push(format!(
                    "Redis {}: maxmemory-policy {policy} may evict any key, the broker's markers too; use noeviction or a volatile-* policy",
                    admin.label()
                )),
                Ok(_) => {}
                Err(e) => problems.push(e.to_string()),
            }
            match server::modules(&mut conn).await {
                Ok(modules) if !modules.is_empty() => problems.push(format!(
                    "Redis {}: modules loaded ({}): their commands may not hold to key patterns, so tenants of the shared server could reach each other's data",
                    admin.label(),
                    modules.join(", ")
                )),
                Ok(_) => {}
                Err(e) => problems.push(e.to_string()),
            }
        }
        for admin in self.shared.iter().chain(&self.pool) {
            let open = match admin.conn().await {
                Ok(mut conn) => server::default_is_open(&mut conn).await,
                Err(e) => Err(e),
            };
            match open {
                Ok(false) => {}
                Ok(true) => problems.push(format!(
                    "Redis {}: user `default` needs no password, so every client that connects is admin; set requirepass or turn `default` off",
                    admin.label()
                )),
                Err(e) => problems.push(e.to_string()),
            }
        }
        problems
    }

    async fn objects(&self) -> Result<Vec<BackendObject>, BrokerError> {
        let mut objects = Vec::new();
        for claim in self.claims.all(POOL).await? {
            let location = self
                .pool
                .iter()
                .find(|a| a.server.name == claim.item)
                .map_or_else(|| claim.item.clone(), Admin::label);
            objects.push(BackendObject::marked(
                "server",
                &claim.item,
                &location,
                Owner {
                    platform: &claim.platform,
                    id: &claim.owner_id,
                    parent: "",
                },
                claim.claimed_at_ms,
            ));
        }
        for claim in self.claims.all(PORTS).await? {
            let owner = Owner {
                platform: &claim.platform,
                id: &claim.owner_id,
                parent: "",
            };
            objects.push(BackendObject::marked(
                "process",
                &claim.item,
                "local",
                owner,
                claim.claimed_at_ms,
            ));
        }
        if let Some(admin) = &self.shared {
            let mut conn = admin.conn().await?;
            let markers = markers::all(&mut conn).await?;
            let location = admin.label();
            objects.extend(markers.iter().map(|m| m.object(&location)));
            for user in server::other_users(&mut conn, admin.admin_user()).await? {
                let marked = markers
                    .iter()
                    .any(|m| m.kind == Kind::User.as_str() && m.name == user);
                if AclUser::recorded(&user).is_some() && !marked {
                    objects.push(BackendObject::unmarked(
                        Kind::User.as_str(),
                        &user,
                        &location,
                    ));
                }
            }
        }
        Ok(objects)
    }

    async fn remove_object(&self, object: &BackendObject) -> Result<(), BrokerError> {
        if object.kind == "process" {
            let Claim::Instance { platform, id } = &object.claim else {
                return Err(BrokerError::Failed(format!(
                    "port {:?} is not claimed",
                    object.name
                )));
            };
            let owner = Owner {
                platform,
                id,
                parent: "",
            };
            let port = object.name.parse().map_err(|_| {
                BrokerError::Failed(format!("claimed port {:?} is no port", object.name))
            })?;
            // The directory is named from the owner's instance id, as provision named it.
            let instance = osb_core::ids::InstanceId::parse(id)
                .map_err(|e| BrokerError::Failed(e.to_string()))?;
            let name = KeyPrefix::for_instance(platform, &instance);
            if self.claims.held_by(PORTS, owner).await?.as_deref() != Some(object.name.as_str()) {
                return Ok(());
            }
            let _turn = self.local_turn.lock().await;
            Process::new(self.local()?, &name, port).remove().await?;
            return self.claims.release(PORTS, &object.name, owner).await;
        }
        if object.kind == "server" {
            let Claim::Instance { platform, id } = &object.claim else {
                return Err(BrokerError::Failed(format!(
                    "pool server {:?} is not claimed",
                    object.name
                )));
            };
            let owner = Owner {
                platform,
                id,
                parent: "",
            };
            // Claimed by that owner still (not given back and taken by another meanwhile).
            if self.claims.held_by(POOL, owner).await?.as_deref() != Some(object.name.as_str()) {
                return Ok(());
            }
            let admin = self.pool_server(&object.name)?;
            let mut conn = admin.conn().await?;
            server::wipe(&mut conn, admin.admin_user()).await?;
            return self.claims.release(POOL, &object.name, owner).await;
        }
        let admin = self.shared()?;
        let mut conn = admin.conn().await?;
        let markers = markers::all(&mut conn).await?;
        let Some(marker) = markers
            .iter()
            .find(|m| m.kind == object.kind && m.name == object.name)
        else {
            return Err(BrokerError::Conflict(format!(
                "{} {:?} carries no marker of this broker",
                object.kind, object.name
            )));
        };
        let owner = marker.owner();
        let kind = if marker.kind == Kind::Prefix.as_str() {
            Kind::Prefix
        } else {
            Kind::User
        };
        if !marker.made {
            // Only a claim: whatever stands under the name was never the broker's.
            return markers::release(&mut conn, kind, &marker.name, owner).await;
        }
        match kind {
            Kind::Prefix => {
                let prefix = KeyPrefix::recorded(&marker.name).ok_or_else(|| {
                    BrokerError::Failed(format!(
                        "marked prefix {:?} is not one this broker makes",
                        marker.name
                    ))
                })?;
                server::remove_prefix(&mut conn, prefix.as_str()).await?;
            }
            Kind::User => {
                // Only a name the broker makes: a forged marker must not name the admin.
                let user = AclUser::recorded(&marker.name).ok_or_else(|| {
                    BrokerError::Failed(format!(
                        "marked user {:?} is not one this broker makes",
                        marker.name
                    ))
                })?;
                server::remove_user(&mut conn, user.as_str()).await?;
            }
        }
        markers::release(&mut conn, kind, &marker.name, owner).await
    }
}
