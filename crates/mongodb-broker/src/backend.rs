//! The MongoDB backend: a database per instance, a user per binding with `readWrite` on that
//! database only, storage quotas measured by `dbStats` and enforced by switching the instance's
//! users to a role that reads and removes but does not write. Standard admin commands only, so it runs unchanged against a `mongos`, a
//! replica set or one server.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};
use osb_core::broker::*;
use osb_core::catalog::Plan;
use osb_core::credentials::{Credentials, PasswordLength, generate_password};
use osb_core::ids::BindingId;
use osb_core::orphans::BackendObject;
use osb_core::quota::QuotaPolicy;
use osb_core::uri;
use osb_core::wire::InstanceMetadata;
use prometheus::{IntGauge, Registry};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use tokio::sync::OnceCell;

use crate::config::{MongoConfig, PlanLimits};
use crate::errors::{
    ROLE_EXISTS, ROLE_NOT_FOUND, USER_EXISTS, USER_NOT_FOUND, code, failed, unreachable,
};
use crate::names::{DatabaseName, UserName};
use crate::owners::{self, Claimed, Kind, Owner};

/// Options of the admin URI that apps need as well (topology and transport, not identity).
const CARRIED: [&str; 8] = [
    "replicaset",
    "tls",
    "ssl",
    "directconnection",
    "readpreference",
    "w",
    "retrywrites",
    "compressors",
];

const MIB: u64 = 1024 * 1024;

pub struct MongoBroker {
    name: String,
    uri: SecretString,
    client: OnceCell<Client>,
    /// `host:port` of each server, as apps get them.
    hosts: Vec<String>,
    replica_set: Option<String>,
    /// `&key=value` options carried from the admin URI into apps' URIs.
    carried: String,
    plans: HashMap<String, PlanLimits>,
    quota_every: Duration,
    quota_policy: QuotaPolicy,
    password_length: PasswordLength,
    over_quota: Mutex<HashSet<String>>,
    over_quota_gauge: IntGauge,
}

impl MongoBroker {
    pub fn new(config: &MongoConfig, registry: &Registry) -> Self {
        let uri = &config.uri;
        let hosts = if config.public_hosts.is_empty() {
            uri.hosts.clone()
        } else {
            config
                .public_hosts
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        let over_quota_gauge = IntGauge::new(
            "mongodb_broker_instances_over_quota",
            "Instances whose users may only read, being over their plan's storage quota",
        )
        .expect("a valid gauge");
        registry
            .register(Box::new(over_quota_gauge.clone()))
            .expect("the gauge registered once");
        Self {
            name: config.name.clone(),
            carried: carried_options(uri.secret.expose_secret()),
            replica_set: uri.replica_set.clone(),
            uri: uri.secret.clone(),
            client: OnceCell::new(),
            hosts,
            plans: config.plans.clone(),
            quota_every: Duration::from_secs(config.quota_check_secs.max(1)),
            quota_policy: config.quota_policy,
            password_length: config.password_length,
            over_quota: Mutex::default(),
            over_quota_gauge,
        }
    }

    /// The admin client, checked with a `ping`: failing here means nothing was sent.
    async fn admin(&self) -> Result<&Client, BrokerError> {
        let client = self
            .client
            .get_or_try_init(|| async {
                let mut options = ClientOptions::parse(self.uri.expose_secret())
                    .await
                    .map_err(|e| unreachable(&self.name, &e))?;
                options
                    .server_selection_timeout
                    .get_or_insert(Duration::from_secs(10));
                options
                    .connect_timeout
                    .get_or_insert(Duration::from_secs(10));
                options
                    .app_name
                    .get_or_insert("kpaas-mongodb-broker".into());
                Client::with_options(options).map_err(|e| unreachable(&self.name, &e))
            })
            .await?;
        // A ping changes nothing: however it fails, nothing was done.
        client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .map_err(|e| unreachable(&self.name, &e))?;
        Ok(client)
    }

    fn limits(&self, plan: &Plan) -> Result<&PlanLimits, BrokerError> {
        self.plans.get(&plan.id).ok_or_else(|| {
            BrokerError::Failed(format!("plan {:?} has no [mongodb.plans] entry", plan.name))
        })
    }

    /// What apps get: a URI that logs in to the instance's database, and its parts.
    fn credentials(
        &self,
        db: &DatabaseName,
        user: &UserName,
        password: &SecretString,
    ) -> Credentials {
        let uri = format!(
            // The users have SCRAM-SHA-256 only: naming it saves drivers a negotiation that
            // some servers answer poorly (and SCRAM-SHA-1 would fail).
            "mongodb://{}:{}@{}/{db}?authSource={db}&authMechanism=SCRAM-SHA-256{}",
            uri::component(user.as_str()),
            uri::component(password.expose_secret()),
            self.hosts.join(","),
            self.carried
        );
        let (host, port) = split_host(&self.hosts[0]);
        let mut credentials = Credentials::new()
            .with_secret("uri", &SecretString::from(uri))
            .with("hosts", json!(self.hosts))
            .with("host", host)
            .with("port", port)
            .with("database", db.as_str())
            .with("name", db.as_str())
            .with("username", user.as_str())
            .with_secret("password", password);
        if let Some(set) = &self.replica_set {
            credentials = credentials.with("replica_set", set.as_str());
        }
        credentials
    }

    fn set_over_quota(&self, instance: &str, over: bool) {
        let mut set = self.over_quota.lock().expect("over-quota set");
        if over {
            set.insert(instance.to_owned());
        } else {
            set.remove(instance);
        }
        self.over_quota_gauge.set(set.len() as i64);
    }

    /// Whether a listed object is still on the server.
    async fn exists(&self, client: &Client, object: &BackendObject) -> Result<bool, BrokerError> {
        if object.kind == Kind::Database.as_str() {
            let names = client.list_database_names().await.map_err(failed)?;
            return Ok(names.contains(&object.name));
        }
        let all = client
            .database("admin")
            .run_command(doc! {"usersInfo": {"forAllDBs": true}})
            .await
            .map_err(failed)?;
        Ok(all.get_array("users").is_ok_and(|users| {
            users.iter().any(|u| {
                u.as_document()
                    .is_some_and(|u| u.get_str("user") == Ok(object.name.as_str()))
            })
        }))
    }

    /// The instance's database: as recorded at provision, or derived from its id.
    fn database_of(instance: &InstanceView<'_>) -> Result<DatabaseName, BrokerError> {
        match instance.state.get("database").and_then(Value::as_str) {
            Some(recorded) => DatabaseName::recorded(recorded),
            None => Ok(DatabaseName::for_instance(instance.platform, instance.id)),
        }
    }

    /// Measures the database against `plan`'s quota and gives its users the rights that
    /// follow; returns the usage (and whether it is frozen) when the plan has a quota. Whether
    /// the database is frozen now is kept on its marker, not read off its users' roles: an
    /// instance whose bindings were all unbound while frozen is still frozen for the next one.
    async fn apply_quota(
        &self,
        client: &Client,
        db: &DatabaseName,
        plan: &Plan,
    ) -> Result<Option<(u64, u64, bool)>, BrokerError> {
        let (usage, frozen) = match self.limits(plan)?.quota_mb {
            None => (None, false),
            Some(quota_mb) => {
                let quota = quota_mb.saturating_mul(MIB);
                let frozen_now = owners::frozen(client, db.as_str()).await?;
                let used = database_size(&client.database(db.as_str())).await?;
                let frozen = self.quota_policy.frozen(used, quota, frozen_now);
                (Some((used, quota)), frozen)
            }
        };
        owners::set_frozen(client, db.as_str(), frozen).await?;
        let role = if frozen {
            Role::Frozen
        } else {
            Role::ReadWrite
        };
        set_role(client, db, role).await?;
        Ok(usage.map(|(used, quota)| (used, quota, frozen)))
    }
}

/// The options of `uri` that apps need too, as `&key=value...`.
fn carried_options(uri: &str) -> String {
    let query = uri.split_once('?').map(|(_, q)| q).unwrap_or("");
    query
        .split('&')
        .filter(|kv| {
            kv.split_once('=')
                .is_some_and(|(k, _)| CARRIED.contains(&k.to_ascii_lowercase().as_str()))
        })
        .map(|kv| format!("&{kv}"))
        .collect()
}

/// `host:port` → host and port (27017 when absent); an IPv6 address without its brackets, as
/// the `host` field of other brokers' credentials holds it.
fn split_host(host: &str) -> (&str, u16) {
    let (h, port) = match host.rsplit_once(':') {
        // `[::1]` alone has colons but no port; `[::1]:27018` has one after the bracket.
        Some((h, p)) if !host.ends_with(']') => (h, p.parse().unwrap_or(27017)),
        _ => (host, 27017),
    };
    let bare = h.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    (bare.unwrap_or(h), port)
}

/// The two rights a binding's user can hold on its database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    ReadWrite,
    /// Over quota: read, and remove data (documents, collections, indexes) to get back under,
    /// but write nothing. A role of the database's own (`kpaas_frozen`), as no built-in role
    /// reads and removes without writing.
    Frozen,
}

/// The frozen role's name, in each instance's database.
const FROZEN_ROLE: &str = "kpaas_frozen";

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::ReadWrite => "readWrite",
            Self::Frozen => FROZEN_ROLE,
        }
    }

    fn on(self, db: &DatabaseName) -> Bson {
        Bson::Array(vec![Bson::Document(
            doc! {"role": self.name(), "db": db.as_str()},
        )])
    }
}

/// Makes `db`'s frozen role (idempotent).
async fn ensure_frozen_role(client: &Client, db: &DatabaseName) -> Result<(), BrokerError> {
    let actions = [
        "find",
        "remove",
        "dropCollection",
        "dropIndex",
        "listCollections",
        "listIndexes",
        "collStats",
        "dbStats",
        "killCursors",
    ];
    let create = doc! {
        "createRole": FROZEN_ROLE,
        "privileges": [{"resource": {"db": db.as_str(), "collection": ""}, "actions": actions.to_vec()}],
        "roles": [],
    };
    match client.database(db.as_str()).run_command(create).await {
        Ok(_) => Ok(()),
        Err(e) if code(&e) == Some(ROLE_EXISTS) => Ok(()),
        Err(e) => Err(failed(e)),
    }
}

/// Removes `db`'s frozen role, if any: roles outlive their database.
async fn drop_frozen_role(client: &Client, db: &DatabaseName) -> Result<(), BrokerError> {
    match client
        .database(db.as_str())
        .run_command(doc! {"dropRole": FROZEN_ROLE})
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if code(&e) == Some(ROLE_NOT_FOUND) => Ok(()),
        Err(e) => Err(failed(e)),
    }
}

/// Documents and indexes of `db`, as `dbStats` counts them. `dataSize` shrinks as soon as
/// documents are deleted, so an app that cleans up gets its writes back at the next check.
async fn database_size(db: &Database) -> Result<u64, BrokerError> {
    let stats = db
        .run_command(doc! {"dbStats": 1, "scale": 1})
        .await
        .map_err(failed)?;
    let number = |k: &str| match stats.get(k) {
        Some(Bson::Double(v)) => *v as u64,
        Some(Bson::Int32(v)) => u64::try_from(*v).unwrap_or(0),
        Some(Bson::Int64(v)) => u64::try_from(*v).unwrap_or(0),
        _ => 0,
    };
    Ok(number("dataSize") + number("indexSize"))
}

/// The users of `db` that carry this broker's marker as its bindings'.
async fn our_users(client: &Client, db: &DatabaseName) -> Result<Vec<UserName>, BrokerError> {
    Ok(owners::all(client, Some(db.as_str()))
        .await?
        .iter()
        .filter_map(|m| UserName::recorded(&m.name))
        .collect())
}

/// The users `db` holds, by name, with their roles.
async fn users_of(client: &Client, db: &DatabaseName) -> Result<Vec<Document>, BrokerError> {
    let info = client
        .database(db.as_str())
        .run_command(doc! {"usersInfo": 1})
        .await
        .map_err(failed)?;
    Ok(info
        .get_array("users")
        .map(|users| {
            users
                .iter()
                .filter_map(|u| u.as_document().cloned())
                .collect()
        })
        .unwrap_or_default())
}

/// Gives each of the broker's users on `db` `role`, touching only those that hold another:
/// every role change makes the servers reload their user caches.
async fn set_role(client: &Client, db: &DatabaseName, role: Role) -> Result<(), BrokerError> {
    let ours = our_users(client, db).await?;
    let wanted = doc! {"role": role.name(), "db": db.as_str()};
    let mut prepared = false;
    for user in users_of(client, db).await? {
        let name = user.get_str("user").unwrap_or_default();
        if !ours.iter().any(|u| u.as_str() == name) {
            continue;
        }
        let roles = user.get_array("roles").cloned().unwrap_or_default();
        if roles.len() == 1 && roles[0].as_document() == Some(&wanted) {
            continue;
        }
        if role == Role::Frozen && !prepared {
            ensure_frozen_role(client, db).await?;
            prepared = true;
        }
        match client
            .database(db.as_str())
            .run_command(doc! {"updateUser": name, "roles": role.on(db)})
            .await
        {
            Ok(_) => {}
            // Dropped since it was listed (an unbind at the same time): nothing to change.
            Err(e) if code(&e) == Some(USER_NOT_FOUND) => {}
            Err(e) => return Err(failed(e)),
        }
    }
    Ok(())
}

async fn drop_user(client: &Client, db: &DatabaseName, user: &UserName) -> Result<(), BrokerError> {
    match client
        .database(db.as_str())
        .run_command(doc! {"dropUser": user.as_str()})
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if code(&e) == Some(USER_NOT_FOUND) => Ok(()),
        Err(e) => Err(failed(e)),
    }
}

async fn database_exists(client: &Client, db: &DatabaseName) -> Result<bool, BrokerError> {
    // MongoDB refuses two databases whose names differ only in case: `OP_x` blocks `op_x`.
    let names = client.list_database_names().await.map_err(failed)?;
    Ok(names.iter().any(|n| n.eq_ignore_ascii_case(db.as_str())))
}

fn binding_owner<'a>(platform: &'a str, binding: &'a BindingId, db: &'a DatabaseName) -> Owner<'a> {
    Owner {
        platform,
        id: binding.as_str(),
        parent: db.as_str(),
    }
}

/// Drops the users of `db` this broker marked, and their markers.
async fn drop_our_users(client: &Client, db: &DatabaseName) -> Result<(), BrokerError> {
    for marker in owners::all(client, Some(db.as_str())).await? {
        let Some(user) = UserName::recorded(&marker.name) else {
            continue;
        };
        if marker.made {
            drop_user(client, db, &user).await?;
        }
        let owner = marker.owner();
        owners::release(client, Kind::User, user.as_str(), owner).await?;
    }
    Ok(())
}

#[async_trait]
impl ServiceBroker for MongoBroker {
    async fn provision(&self, input: ProvisionInput<'_>) -> Result<Provisioned, BrokerError> {
        self.limits(input.plan)?;
        let db = DatabaseName::for_instance(input.platform, input.instance_id);
        let client = self.admin().await?;
        let owner = Owner {
            platform: input.platform,
            id: input.instance_id.as_str(),
            parent: "",
        };
        let claimed = owners::claim(client, Kind::Database, db.as_str(), owner).await?;
        if claimed == Claimed::Unmade && database_exists(client, &db).await? {
            owners::release(client, Kind::Database, db.as_str(), owner).await?;
            return Err(BrokerError::Conflict(format!(
                "a database named {db:?} already exists on {} and was not made by this broker for this instance",
                self.name
            )));
        }
        // The name is free: from here on, what stands under it is the instance's (MongoDB makes
        // the database with the first collection the app writes).
        owners::set_made(client, Kind::Database, db.as_str()).await?;
        Ok(Provisioned {
            state: json!({"database": db.as_str()}),
            ..Provisioned::default()
        })
    }

    async fn update(&self, input: UpdateInput<'_>) -> Result<Updated, BrokerError> {
        let db = Self::database_of(&input.instance)?;
        let client = self.admin().await?;
        if let Some(quota_mb) = self.limits(input.plan)?.quota_mb {
            let used = database_size(&client.database(db.as_str())).await?;
            if self
                .quota_policy
                .frozen(used, quota_mb.saturating_mul(MIB), false)
            {
                return Err(BrokerError::Unprocessable(format!(
                    "the database uses {} MiB, more than plan {:?}'s quota of {quota_mb} MiB; remove data first",
                    used.div_ceil(MIB),
                    input.plan.name
                )));
            }
        }
        self.apply_quota(client, &db, input.plan).await?;
        Ok(Updated::default())
    }

    async fn deprovision(&self, input: DeprovisionInput<'_>) -> Result<(), BrokerError> {
        let instance = &input.instance;
        let db = Self::database_of(instance)?;
        let client = self.admin().await?;
        let owner = Owner {
            platform: instance.platform,
            id: instance.id.as_str(),
            parent: "",
        };
        // Every binding's user, the recorded ones and any a dying bind marked; then the
        // database, only when it is this instance's.
        for binding in input.bindings {
            let user = UserName::for_binding(instance.platform, &binding.id);
            let owner = binding_owner(instance.platform, &binding.id, &db);
            owners::remove_marked(client, Kind::User, user.as_str(), owner, || {
                drop_user(client, &db, &user)
            })
            .await?;
        }
        owners::remove_marked(client, Kind::Database, db.as_str(), owner, || async {
            drop_our_users(client, &db).await?;
            drop_frozen_role(client, &db).await?;
            client.database(db.as_str()).drop().await.map_err(failed)
        })
        .await?;
        self.set_over_quota(instance.id.as_str(), false);
        Ok(())
    }

    async fn bind(&self, input: BindInput<'_>) -> Result<Bound, BrokerError> {
        let instance = &input.instance;
        let db = Self::database_of(instance)?;
        let user = UserName::for_binding(instance.platform, input.binding_id);
        let owner = binding_owner(instance.platform, input.binding_id, &db);
        let client = self.admin().await?;
        let claimed = owners::claim(client, Kind::User, user.as_str(), owner).await?;
        let database = client.database(db.as_str());
        let exists = users_of(client, &db)
            .await?
            .iter()
            .any(|u| u.get_str("user") == Ok(user.as_str()));
        if claimed == Claimed::Unmade && exists {
            owners::release(client, Kind::User, user.as_str(), owner).await?;
            return Err(BrokerError::Conflict(format!(
                "a user named {user:?} already exists in {db:?} and was not made by this broker for this binding"
            )));
        }
        // The name is free: what stands under it from now on is this binding's (a retry that
        // finds it made re-creates it; one that does not checks again).
        owners::set_made(client, Kind::User, user.as_str()).await?;
        // The user starts as the instance is (frozen or not); apply_quota below measures
        // again and settles every user of the instance, this one included.
        let role = if owners::frozen(client, db.as_str()).await? {
            ensure_frozen_role(client, &db).await?;
            Role::Frozen
        } else {
            Role::ReadWrite
        };
        let password = generate_password(self.password_length);
        let create = doc! {
            "createUser": user.as_str(), "pwd": password.expose_secret(), "roles": role.on(&db),
            "mechanisms": ["SCRAM-SHA-256"],
        };
        let made = match database.run_command(create).await {
            Ok(_) => Ok(()),
            // A retry of a bind that made the user: its password is lost, so it gets a new one.
            Err(e) if code(&e) == Some(USER_EXISTS) => database
                .run_command(doc! {
                    "updateUser": user.as_str(), "pwd": password.expose_secret(),
                    "roles": role.on(&db), "mechanisms": ["SCRAM-SHA-256"],
                })
                .await
                .map(|_| ())
                .map_err(failed),
            Err(e) => Err(failed(e)),
        };
        let made = match made {
            Ok(()) => self
                .apply_quota(client, &db, instance.plan)
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(err) = made {
            // Leave nothing half-made; if this fails too, unbind finds the user by its name.
            let cleaned = async {
                drop_user(client, &db, &user).await?;
                owners::release(client, Kind::User, user.as_str(), owner).await
            }
            .await;
            if let Err(e) = cleaned {
                tracing::warn!(error = %e, "cleaning up after a failed bind failed; unbind will retry");
            }
            return Err(err);
        }
        Ok(Bound {
            credentials: self.credentials(&db, &user, &password),
            state: json!({"user": user.as_str()}),
            ..Bound::default()
        })
    }

    async fn unbind(&self, input: UnbindInput<'_>) -> Result<(), BrokerError> {
        let instance = &input.instance;
        let db = Self::database_of(instance)?;
        let user = UserName::for_binding(instance.platform, &input.binding.id);
        let owner = binding_owner(instance.platform, &input.binding.id, &db);
        let client = self.admin().await?;
        owners::remove_marked(client, Kind::User, user.as_str(), owner, || {
            drop_user(client, &db, &user)
        })
        .await
    }

    fn upkeep_interval(&self) -> Option<Duration> {
        Some(self.quota_every)
    }

    /// Measures the database and applies its plan's quota; the usage is what `GET` shows.
    async fn upkeep(
        &self,
        instance: InstanceView<'_>,
        _bindings: BindingsOf<'_>,
    ) -> Result<Option<InstanceMetadata>, BrokerError> {
        let db = Self::database_of(&instance)?;
        let client = self.admin().await?;
        let usage = self.apply_quota(client, &db, instance.plan).await?;
        self.set_over_quota(
            instance.id.as_str(),
            usage.is_some_and(|(_, _, frozen)| frozen),
        );
        Ok(usage.map(|(used, quota, frozen)| {
            let Value::Object(attributes) = json!({
                "storage_used_bytes": used,
                "storage_quota_bytes": quota,
                "storage_over_quota": frozen,
            }) else {
                unreachable!("a JSON object literal")
            };
            InstanceMetadata {
                labels: Map::new(),
                attributes,
            }
        }))
    }

    async fn check_ready(&self) -> Result<(), BrokerError> {
        self.admin().await.map(|_| ())
    }

    /// Marked databases and users, and databases or users named like the broker's without a
    /// marker (listed, never removed).
    async fn objects(&self) -> Result<Vec<BackendObject>, BrokerError> {
        let client = self.admin().await?;
        let markers = owners::all(client, None).await?;
        let mut objects: Vec<BackendObject> =
            markers.iter().map(|m| m.object(&self.name)).collect();
        let marked = |kind: Kind, name: &str| {
            markers
                .iter()
                .any(|m| m.kind == kind.as_str() && m.name == name)
        };
        let unmarked =
            |kind: Kind, name: &str| BackendObject::unmarked(kind.as_str(), name, &self.name);
        for name in client.list_database_names().await.map_err(failed)? {
            if DatabaseName::recorded(&name).is_ok() && !marked(Kind::Database, &name) {
                objects.push(unmarked(Kind::Database, &name));
            }
        }
        let all = client
            .database("admin")
            .run_command(doc! {"usersInfo": {"forAllDBs": true}})
            .await
            .map_err(failed)?;
        for user in all.get_array("users").cloned().unwrap_or_default() {
            let name = user
                .as_document()
                .and_then(|u| u.get_str("user").ok())
                .unwrap_or_default();
            if UserName::recorded(name).is_some() && !marked(Kind::User, name) {
                objects.push(unmarked(Kind::User, name));
            }
        }
        Ok(objects)
    }

    async fn remove_object(&self, object: &BackendObject) -> Result<(), BrokerError> {
        let client = self.admin().await?;
        let markers = owners::all(client, None).await?;
        let Some(marker) = markers
            .iter()
            .find(|m| m.kind == object.kind && m.name == object.name)
        else {
            // A user goes with its database's removal, marker and all: gone is done.
            if !self.exists(client, object).await? {
                return Ok(());
            }
            return Err(BrokerError::Conflict(format!(
                "{} {:?} carries no marker of this broker",
                object.kind, object.name
            )));
        };
        let owner = marker.owner();
        let kind = if marker.kind == Kind::Database.as_str() {
            Kind::Database
        } else {
            Kind::User
        };
        if !marker.made {
            // Only a claim: whatever stands under the name was never the broker's.
            return owners::release(client, kind, &marker.name, owner).await;
        }
        if kind == Kind::Database {
            let db = DatabaseName::recorded(&marker.name)?;
            drop_our_users(client, &db).await?;
            drop_frozen_role(client, &db).await?;
            client.database(db.as_str()).drop().await.map_err(failed)?;
            owners::release(client, Kind::Database, db.as_str(), owner).await
        } else {
            let db = DatabaseName::recorded(&marker.parent)?;
            let user = UserName::recorded(&marker.name).ok_or_else(|| {
                BrokerError::Failed(format!(
                    "marked user {:?} is not one this broker makes",
                    marker.name
                ))
            })?;
            drop_user(client, &db, &user).await?;
            owners::release(client, Kind::User, user.as_str(), owner).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_get_the_topology_options_of_the_admin_uri_and_not_its_identity() {
        let carried = carried_options(
            "mongodb://root:pw@a:1,b:2/?authSource=admin&replicaSet=rs0&tls=true&authMechanism=SCRAM-SHA-256&w=majority",
        );
        assert_eq!(carried, "&replicaSet=rs0&tls=true&w=majority");
        assert_eq!(carried_options("mongodb://a"), "");
        assert_eq!(split_host("db.example:27018"), ("db.example", 27018));
        assert_eq!(split_host("db.example"), ("db.example", 27017));
        assert_eq!(split_host("[::1]"), ("::1", 27017));
        assert_eq!(split_host("[::1]:27018"), ("::1", 27018));
    }
}
