//! The Redis backend. A `shared` plan's instance is a key prefix on the shared server; a
//! `pool` plan's instance is a whole server from the operator's pool, claimed in the broker's
//! store so that two replicas never hand out the same one. Every binding is an ACL user of
//! its own (apps never get an admin password).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use osb_core::broker::*;
use osb_core::catalog::{Catalog, Plan};
use osb_core::claims::Claims;
use osb_core::cli::BuildError;
use osb_core::credentials::{Credentials, PasswordLength, generate_password};
use osb_core::ids::BindingId;
use osb_core::orphans::{BackendObject, Claim};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use redis::aio::MultiplexedConnection;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::acl::{self, Scope};
use crate::config::{PlanConfig, PlanKind, RedisConfig};
use crate::markers::{self, Claimed, Kind, Owner};
use crate::names::{AclUser, KeyPrefix};
use crate::server::{self, Admin};

/// The store's name for the pool of dedicated servers.
const POOL: &str = "redis-pool";

/// RFC 3986 unreserved characters stay as they are in URIs; everything else is encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

pub struct RedisBroker {
    shared: Option<Admin>,
    pool: Vec<Admin>,
    plans: HashMap<String, PlanConfig>,
    password_length: PasswordLength,
    claims: Claims,
    upkeep_every: Duration,
}

/// Where an instance lives.
enum Home<'a> {
    Shared(&'a Admin, KeyPrefix),
    Pool(&'a Admin),
}

impl<'a> Home<'a> {
    fn admin(&self) -> &'a Admin {
        match self {
            Home::Shared(admin, _) | Home::Pool(admin) => admin,
        }
    }

    fn scope(&self) -> Scope<'_> {
        match self {
            Home::Shared(_, prefix) => Scope::Prefix(prefix),
            Home::Pool(_) => Scope::Server,
        }
    }
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
    pub fn new(config: &RedisConfig, catalog: &Catalog) -> Result<Self, BuildError> {
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
                _ => {}
            }
        }
        Ok(Self {
            shared,
            pool,
            plans: config.plans.clone(),
            password_length: config.password_length,
            claims: Claims::new(),
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
            PlanKind::Pool => {
                let name = match instance.state.get("server").and_then(Value::as_str) {
                    Some(name) => Some(name.to_owned()),
                    None => self.claims.held_by(POOL, instance_owner(instance)).await?,
                };
                name.map(|n| self.pool_server(&n).map(Home::Pool))
                    .transpose()
            }
        }
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
            "redis://{}:{}@{host}:{}",
            encode(user.as_str()),
            encode(password.expose_secret()),
            server.port
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
            (Operation::Provision | Operation::Deprovision, Some(PlanKind::Pool)) => Mode::Either,
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
                let mut conn = admin.conn().await?;
                // Whatever an earlier tenant or attempt left goes before the new one sees it.
                server::wipe(&mut conn, admin.admin_user()).await?;
                server::configure(&mut conn, plan).await?;
                Ok(Provisioned {
                    state: json!({"server": admin.server.name}),
                    ..Provisioned::default()
                })
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
        let Some(Home::Pool(admin)) = self.home(&input.instance).await? else {
            return Ok(Updated::default());
        };
        let mut conn = admin.conn().await?;
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
        server::configure(&mut conn, after).await?;
        Ok(Updated::default())
    }

    async fn deprovision(&self, input: DeprovisionInput<'_>) -> Result<(), BrokerError> {
        let instance = &input.instance;
        let owner = instance_owner(instance);
        match self.home(instance).await? {
            None => Ok(()),
            Some(Home::Pool(admin)) => {
                let mut conn = admin.conn().await?;
                server::wipe(&mut conn, admin.admin_user()).await?;
                self.claims.release(POOL, &admin.server.name, owner).await
            }
            Some(Home::Shared(admin, prefix)) => {
                let mut conn = admin.conn().await?;
                for binding in input.bindings {
                    let user = AclUser::for_binding(instance.platform, &binding.id);
                    let name = user.as_str();
                    let owner = binding_owner(instance.platform, &binding.id, &prefix);
                    markers::remove_marked(
                        &mut conn,
                        Kind::User,
                        user.as_str(),
                        owner,
                        |mut c| async move { server::remove_user(&mut c, name).await },
                    )
                    .await?;
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
            Home::Pool(_) => server::remove_user(&mut conn, user.as_str()).await,
            Home::Shared(_, prefix) => {
                let name = user.as_str();
                let owner = binding_owner(instance.platform, &input.binding.id, prefix);
                markers::remove_marked(
                    &mut conn,
                    Kind::User,
                    user.as_str(),
                    owner,
                    |mut c| async move { server::remove_user(&mut c, name).await },
                )
                .await
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
        let Some(home) = self.home(&instance).await? else {
            return Ok(None);
        };
        let mut conn = home.admin().conn().await?;
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
        for binding in bindings.load().await? {
            let (Some(name), Some(hash)) = (
                binding.state.get("user").and_then(Value::as_str),
                binding.state.get("password_sha256").and_then(Value::as_str),
            ) else {
                continue;
            };
            let Some(user) = AclUser::recorded(name) else {
                continue;
            };
            if server::user_exists(&mut conn, user.as_str()).await? {
                continue;
            }
            if let Home::Shared(_, prefix) = &home {
                let owner = binding_owner(instance.platform, &binding.id, prefix);
                markers::claim(&mut conn, Kind::User, user.as_str(), owner).await?;
                markers::set_made(&mut conn, Kind::User, user.as_str(), owner).await?;
            }
            tracing::warn!(user = %user, server = %home.admin().label(), "putting back a binding's user the server lost");
            Self::put_user(&mut conn, &home, &user, hash).await?;
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

    /// Every server: reachable, and not open to clients that do not log in.
    async fn check_backends(&self) -> Vec<String> {
        let mut problems = Vec::new();
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
