//! The RabbitMQ backend: a vhost per instance (with the plan's limits), a user per binding
//! with full permissions on that vhost only, through the management HTTP API; an AMQP
//! connection (lapin) proves a new vhost works.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use osb_core::backend_tls::{BackendTls, Trust};
use osb_core::broker::*;
use osb_core::catalog::{Catalog, Plan};
use osb_core::cli::BuildError;
use osb_core::credentials::{Credentials, PasswordLength, generate_password};
use osb_core::ids::BindingId;
use osb_core::orphans::BackendObject;
use osb_core::uri;
use rabbitmq_http_client::api::ClientBuilder;
use rabbitmq_http_client::commons::{PolicyTarget, VirtualHostLimitTarget};
use rabbitmq_http_client::password_hashing;
use rabbitmq_http_client::requests::{
    EnforcedLimitParams, Permissions, PolicyParams, UserParams, VirtualHostParams,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

use crate::config::{Node, PlanLimits, RabbitConfig};
use crate::errors::{failed, not_found};
use crate::markers::{self, Api, Claimed, Kind, Owner};
use crate::names::{UserName, VhostName};

/// The policy that carries a plan's queue limits in each vhost.
const PLAN_POLICY: &str = "kpaas-plan";

/// An AMQP URI: `user` on `vhost` of `host`, every part percent-encoded.
fn amqp_uri(
    scheme: &str,
    user: &str,
    password: &SecretString,
    host: &str,
    port: u16,
    vhost: &str,
) -> String {
    format!(
        "{scheme}://{}:{}@{}/{}",
        uri::component(user),
        uri::component(password.expose_secret()),
        uri::authority(host, port),
        uri::component(vhost),
    )
}

/// Where an AMQP check connects: the admin account on `vhost`, with AMQP's smallest frames.
/// lapin keeps room for 32 frames of the negotiated size in each direction, zeroed as the
/// connection opens: at RabbitMQ's default 128 KiB frames a check took 8 MiB of the broker's
/// memory (kept by the allocator after), for a connection that sends nothing but its
/// handshake. Built as lapin's parts rather than a URI string: lapin reads an IPv6 host in a
/// URI as `localhost`, and the admin's password would go there.
fn check_target(
    tls: bool,
    user: &str,
    password: &SecretString,
    host: &str,
    port: u16,
    vhost: &str,
) -> AMQPUri {
    AMQPUri {
        scheme: if tls {
            AMQPScheme::AMQPS
        } else {
            AMQPScheme::AMQP
        },
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: user.to_owned(),
                password: password.expose_secret().to_owned(),
            },
            host: host.to_owned(),
            port,
        },
        vhost: vhost.to_owned(),
        query: AMQPQueryString {
            frame_max: Some(lapin::protocol::constants::FRAME_MIN_SIZE),
            ..AMQPQueryString::default()
        },
    }
}

pub struct RabbitBroker {
    nodes: Vec<Node>,
    /// One management client per node (each keeps its connections), by `host:port`.
    clients: Vec<(String, Arc<Api>)>,
    admin_user: String,
    admin_password: SecretString,
    plans: HashMap<String, PlanLimits>,
    password_length: PasswordLength,
    /// Set when every node is reached over TLS; what it trusts.
    tls: Option<Trust>,
    ready_vhost: String,
}

impl RabbitBroker {
    pub fn new(config: &RabbitConfig, catalog: &Catalog) -> Result<Self, BuildError> {
        for plan in catalog.services.iter().flat_map(|s| &s.plans) {
            let limits = config.plans.get(&plan.id).ok_or_else(|| {
                BuildError::Backend(format!(
                    "plan {:?} ({}) has no [rabbitmq.plans] entry",
                    plan.name, plan.id
                ))
            })?;
            if limits.max_connections == Some(0) {
                // The broker's own AMQP check of a new vhost would be refused.
                return Err(BuildError::Backend(format!(
                    "plan {:?}: max_connections must be at least 1",
                    plan.name
                )));
            }
        }
        if config.nodes.is_empty() {
            return Err(BuildError::Backend(
                "[[rabbitmq.nodes]] lists no node".into(),
            ));
        }
        let tls = config.tls.as_ref().map(BackendTls::load).transpose()?;
        // One way to build every client: plain HTTP nodes get the (unused) public roots.
        let trust = match &tls {
            Some(trust) => trust.clone(),
            None => BackendTls::default().load()?,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut clients = Vec::new();
        for node in &config.nodes {
            let name = uri::authority(&node.host, node.management_port);
            let http = reqwest_rabbitmq::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(30))
                // The admin's credentials go to the configured node only.
                .redirect(reqwest_rabbitmq::redirect::Policy::none())
                .tls_backend_preconfigured(trust.client_config())
                .build()
                .map_err(|e| BuildError::Backend(format!("management client for {name}: {e}")))?;
            let api = ClientBuilder::new()
                .with_endpoint(format!("{scheme}://{name}/api"))
                .with_basic_auth_credentials(
                    config.admin_user.clone(),
                    config.admin_password.0.expose_secret().to_owned(),
                )
                .with_client(http)
                .build()
                .map_err(|e| BuildError::Backend(format!("management API of {name}: {e}")))?;
            clients.push((name, Arc::new(api)));
        }
        Ok(Self {
            clients,
            nodes: config.nodes.clone(),
            admin_user: config.admin_user.clone(),
            admin_password: config.admin_password.0.clone(),
            plans: config.plans.clone(),
            password_length: config.password_length,
            tls,
            ready_vhost: config.ready_vhost.clone(),
        })
    }

    /// The AMQP scheme and port of `node` apps and the broker use.
    fn amqp_of(&self, node: &Node) -> (&'static str, u16) {
        if self.tls.is_some() {
            ("amqps", node.amqps_port)
        } else {
            ("amqp", node.amqp_port)
        }
    }

    fn names(&self) -> String {
        self.nodes
            .iter()
            .map(|n| uri::authority(&n.host, n.management_port))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A management client on the first node that answers; none answering is a 503 naming
    /// them all (nothing was asked of any).
    async fn api(&self) -> Result<Arc<Api>, BrokerError> {
        for (node, api) in &self.clients {
            match tokio::time::timeout(Duration::from_secs(10), api.current_user()).await {
                Ok(Ok(_)) => return Ok(api.clone()),
                Ok(Err(e)) => {
                    tracing::warn!(%node, error = %e, "RabbitMQ management API did not answer")
                }
                Err(_) => tracing::warn!(%node, "RabbitMQ management API timed out"),
            }
        }
        Err(BrokerError::Unavailable(format!(
            "no RabbitMQ management API answers ({})",
            self.names()
        )))
    }

    fn limits(&self, plan: &Plan) -> Result<&PlanLimits, BrokerError> {
        self.plans.get(&plan.id).ok_or_else(|| {
            BrokerError::Failed(format!(
                "plan {:?} has no [rabbitmq.plans] entry",
                plan.name
            ))
        })
    }

    /// Sets (or lifts) the plan's vhost limits and its queue policy.
    async fn apply_limits(
        &self,
        api: &Api,
        vhost: &VhostName,
        plan: &Plan,
    ) -> Result<(), BrokerError> {
        let limits = self.limits(plan)?;
        for (target, value) in [
            (
                VirtualHostLimitTarget::MaxConnections,
                limits.max_connections,
            ),
            (VirtualHostLimitTarget::MaxQueues, limits.max_queues),
        ] {
            // -1 is RabbitMQ's "no limit".
            let value = value.map_or(-1, i64::from);
            api.set_vhost_limit(vhost.as_str(), EnforcedLimitParams::new(target, value))
                .await
                .map_err(failed)?;
        }
        let mut definition = Map::new();
        if let Some(n) = limits.max_length {
            definition.insert("max-length".into(), json!(n));
        }
        if let Some(ms) = limits.message_ttl_ms {
            definition.insert("message-ttl".into(), json!(ms));
        }
        if definition.is_empty() {
            api.delete_policy(vhost.as_str(), PLAN_POLICY, true)
                .await
                .map_err(failed)?;
        } else {
            let policy = PolicyParams {
                vhost: vhost.as_str(),
                name: PLAN_POLICY,
                pattern: ".*",
                apply_to: PolicyTarget::Queues,
                priority: 0,
                definition,
            };
            api.declare_policy(&policy).await.map_err(failed)?;
        }
        Ok(())
    }

    /// Opens an AMQP connection to `vhost` on some node with the admin account: proof that
    /// the vhost serves.
    async fn amqp_check(&self, vhost: &str) -> Result<(), BrokerError> {
        let mut last = String::new();
        for node in &self.nodes {
            match self.amqp_on(node, vhost).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(BrokerError::Failed(format!(
            "no RabbitMQ node takes AMQP connections to vhost {vhost:?} ({last})"
        )))
    }

    /// An AMQP connection to `vhost` on `node`, closed at once; why not, when it fails.
    async fn amqp_on(&self, node: &Node, vhost: &str) -> Result<(), String> {
        let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
        let (_, port) = self.amqp_of(node);
        let target = check_target(
            self.tls.is_some(),
            &self.admin_user,
            &self.admin_password,
            &node.host,
            port,
            vhost,
        );
        let tls = OwnedTLSConfig {
            identity: None,
            cert_chain: self
                .tls
                .as_ref()
                .and_then(|t| t.ca_pem().map(str::to_owned)),
        };
        let connect = lapin::Connection::connect_uri_with_config(
            target,
            lapin::ConnectionProperties::default(),
            tls,
            runtime,
        );
        match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(conn)) => {
                let _ = conn.close(200, "kpaas-broker check".into()).await;
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// The credentials of Cloud Foundry's RabbitMQ service, which apps and Spring Cloud
    /// Connectors read.
    fn credentials(
        &self,
        vhost: &VhostName,
        user: &UserName,
        password: &SecretString,
    ) -> Credentials {
        let (u, p) = (
            uri::component(user.as_str()),
            uri::component(password.expose_secret()),
        );
        let ssl = self.tls.is_some();
        let hosts: Vec<&str> = self.nodes.iter().map(|n| n.host.as_str()).collect();
        let amqp_uris: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                let (scheme, port) = self.amqp_of(n);
                amqp_uri(
                    scheme,
                    user.as_str(),
                    password,
                    &n.host,
                    port,
                    vhost.as_str(),
                )
            })
            .collect();
        let http = if ssl { "https" } else { "http" };
        let api_uris: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                let at = uri::authority(&n.host, n.management_port);
                format!("{http}://{u}:{p}@{at}/api/")
            })
            .collect();
        let protocol = |port: u16, uris: &[String]| {
            json!({
                "host": hosts[0], "hosts": hosts, "port": port, "uri": uris[0], "uris": uris,
                "vhost": vhost.as_str(), "username": user.as_str(),
                "password": password.expose_secret(), "ssl": ssl,
            })
        };
        // Cloud Foundry's key for AMQP over TLS; with TLS on, no plain entry tempts an app to
        // send its password in clear.
        let amqp_key = if ssl { "amqp+ssl" } else { "amqp" };
        let protocols = json!({
            amqp_key: protocol(self.amqp_of(&self.nodes[0]).1, &amqp_uris),
            "management": protocol(self.nodes[0].management_port, &api_uris),
        });
        Credentials::new()
            .with_secret("uri", &SecretString::from(amqp_uris[0].clone()))
            .with("uris", json!(amqp_uris))
            .with("vhost", vhost.as_str())
            .with("username", user.as_str())
            .with_secret("password", password)
            .with("hostname", hosts[0])
            .with("hostnames", json!(hosts))
            .with("http_api_uri", api_uris[0].as_str())
            .with("http_api_uris", json!(api_uris))
            .with("ssl", ssl)
            .with("protocols", protocols)
    }

    fn vhost_of(instance: &InstanceView<'_>) -> Result<VhostName, BrokerError> {
        match instance.state.get("vhost").and_then(Value::as_str) {
            Some(recorded) => VhostName::recorded(recorded).ok_or_else(|| {
                BrokerError::Failed(format!(
                    "recorded vhost {recorded:?} is not one this broker makes"
                ))
            }),
            None => Ok(VhostName::for_instance(instance.platform, instance.id)),
        }
    }
}

/// The management tags of a plan's users, as the API takes them.
fn tags_of(limits: &PlanLimits) -> String {
    limits
        .tags
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn binding_owner<'a>(platform: &'a str, binding: &'a BindingId, vhost: &'a VhostName) -> Owner<'a> {
    Owner {
        platform,
        id: binding.as_str(),
        parent: vhost.as_str(),
    }
}

/// Ends `user`'s connections, then deletes it. A connection that closes on its own while the
/// API closes it can make the call fail: what is left is closed again, a few times.
async fn remove_user(api: &Api, user: &str) -> Result<(), BrokerError> {
    let mut attempt = 0;
    while let Err(e) = api
        .close_user_connections(user, Some("the binding was removed"), true)
        .await
    {
        attempt += 1;
        if attempt == 3 {
            return Err(failed(e));
        }
        tracing::warn!(error = %e, "closing a user's connections failed; again");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    api.delete_user(user, true).await.map_err(failed)
}

/// Removes every user this broker made under `vhost`, with their markers (a marker that is
/// only a claim goes alone).
async fn remove_users_under(api: &Api, vhost: &VhostName) -> Result<(), BrokerError> {
    for marker in markers::all(api).await? {
        if marker.kind != Kind::User.as_str() || marker.parent != vhost.as_str() {
            continue;
        }
        let Some(user) = UserName::recorded(&marker.name) else {
            continue;
        };
        if marker.made {
            remove_user(api, user.as_str()).await?;
        }
        markers::release(api, Kind::User, user.as_str(), marker.owner()).await?;
    }
    Ok(())
}

#[async_trait]
impl ServiceBroker for RabbitBroker {
    async fn provision(&self, input: ProvisionInput<'_>) -> Result<Provisioned, BrokerError> {
        self.limits(input.plan)?;
        let vhost = VhostName::for_instance(input.platform, input.instance_id);
        let api = self.api().await?;
        let owner = Owner {
            platform: input.platform,
            id: input.instance_id.as_str(),
            parent: "",
        };
        let claimed = markers::claim(&api, Kind::Vhost, vhost.as_str(), owner).await?;
        if claimed == Claimed::Unmade {
            match api.get_vhost(vhost.as_str()).await {
                Ok(_) => {
                    markers::release(&api, Kind::Vhost, vhost.as_str(), owner).await?;
                    return Err(BrokerError::Conflict(format!(
                        "a vhost named {vhost:?} exists and was not made by this broker for this instance"
                    )));
                }
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(failed(e)),
            }
        }
        // The name is free (or was made by an earlier attempt): from now on, it is this owner's.
        markers::set_made(&api, Kind::Vhost, vhost.as_str(), owner).await?;
        let description = format!("K-PaaS service instance {}", input.instance_id);
        let params = VirtualHostParams {
            name: vhost.as_str(),
            description: Some(&description),
            tags: None,
            default_queue_type: None,
            tracing: false,
        };
        api.create_vhost(&params).await.map_err(failed)?;
        self.apply_limits(&api, &vhost, input.plan).await?;
        self.amqp_check(vhost.as_str()).await?;
        Ok(Provisioned {
            state: json!({"vhost": vhost.as_str()}),
            ..Provisioned::default()
        })
    }

    async fn update(&self, input: UpdateInput<'_>) -> Result<Updated, BrokerError> {
        let vhost = Self::vhost_of(&input.instance)?;
        let api = self.api().await?;
        let limits = self.limits(input.plan)?;
        let connections = api
            .list_connections_in(vhost.as_str())
            .await
            .map_err(failed)?
            .len();
        let listed = api.list_queues_in(vhost.as_str()).await.map_err(failed)?;
        let queues = listed.len();
        // A smaller max-length would drop messages at once: refused like any other misfit.
        if let Some(max) = limits.max_length
            && let Some(q) = listed.iter().find(|q| q.message_count > max)
        {
            return Err(BrokerError::Unprocessable(format!(
                "queue {:?} holds {} messages, more than plan {:?} keeps per queue ({max}); consume some first",
                q.name, q.message_count, input.plan.name
            )));
        }
        for (what, used, max) in [
            ("connections", connections, limits.max_connections),
            ("queues", queues, limits.max_queues),
        ] {
            if let Some(max) = max.filter(|m| used > *m as usize) {
                return Err(BrokerError::Unprocessable(format!(
                    "the vhost has {used} {what}, more than plan {:?} allows ({max}); close or delete some first",
                    input.plan.name
                )));
            }
        }
        self.apply_limits(&api, &vhost, input.plan).await?;
        // The users keep their passwords and get the new plan's tags.
        let tags = tags_of(limits);
        for marker in markers::all(&api).await? {
            if !marker.made || marker.kind != Kind::User.as_str() || marker.parent != vhost.as_str()
            {
                continue;
            }
            // Only a name the broker makes: a forged marker must not retag the admin.
            let Some(name) = UserName::recorded(&marker.name) else {
                continue;
            };
            let user = match api.get_user(name.as_str()).await {
                Ok(user) => user,
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(failed(e)),
            };
            let Some(hash) = user.password_hash else {
                continue;
            };
            let params = UserParams {
                name: name.as_str(),
                password_hash: hash.as_str(),
                tags: &tags,
            };
            api.create_user(&params).await.map_err(failed)?;
        }
        Ok(Updated::default())
    }

    async fn deprovision(&self, input: DeprovisionInput<'_>) -> Result<(), BrokerError> {
        let instance = &input.instance;
        let vhost = Self::vhost_of(instance)?;
        let api = self.api().await?;
        for binding in input.bindings {
            let user = UserName::for_binding(instance.platform, &binding.id);
            let owner = binding_owner(instance.platform, &binding.id, &vhost);
            markers::remove_marked(&api, Kind::User, user.as_str(), owner, || {
                remove_user(&api, user.as_str())
            })
            .await?;
        }
        let owner = Owner {
            platform: instance.platform,
            id: instance.id.as_str(),
            parent: "",
        };
        markers::remove_marked(&api, Kind::Vhost, vhost.as_str(), owner, || async {
            remove_users_under(&api, &vhost).await?;
            // Its queues, exchanges and connections go with it.
            api.delete_vhost(vhost.as_str(), true).await.map_err(failed)
        })
        .await?;
        Ok(())
    }

    async fn bind(&self, input: BindInput<'_>) -> Result<Bound, BrokerError> {
        let instance = &input.instance;
        let vhost = Self::vhost_of(instance)?;
        let user = UserName::for_binding(instance.platform, input.binding_id);
        let owner = binding_owner(instance.platform, input.binding_id, &vhost);
        let limits = self.limits(instance.plan)?;
        let api = self.api().await?;
        let claimed = markers::claim(&api, Kind::User, user.as_str(), owner).await?;
        if claimed == Claimed::Unmade {
            match api.get_user(user.as_str()).await {
                Ok(_) => {
                    markers::release(&api, Kind::User, user.as_str(), owner).await?;
                    return Err(BrokerError::Conflict(format!(
                        "a user named {user:?} exists and was not made by this broker for this binding"
                    )));
                }
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(failed(e)),
            }
        }
        // The name is free (or was made by an earlier attempt): from now on, it is this owner's.
        markers::set_made(&api, Kind::User, user.as_str(), owner).await?;
        let password = generate_password(self.password_length);
        let salt = password_hashing::salt();
        let hash = password_hashing::base64_encoded_salted_password_hash_sha256(
            &salt,
            password.expose_secret(),
        );
        let tags = tags_of(limits);
        let made = async {
            // A retry of a bind that made the user replaces it: its password was never handed out.
            api.create_user(&UserParams {
                name: user.as_str(),
                password_hash: &hash,
                tags: &tags,
            })
            .await
            .map_err(failed)?;
            let everything = Permissions {
                user: user.as_str(),
                vhost: vhost.as_str(),
                configure: ".*",
                read: ".*",
                write: ".*",
            };
            api.declare_permissions(&everything).await.map_err(failed)
        }
        .await;
        if let Err(err) = made {
            let cleaned = async {
                remove_user(&api, user.as_str()).await?;
                markers::release(&api, Kind::User, user.as_str(), owner).await
            }
            .await;
            if let Err(e) = cleaned {
                tracing::warn!(error = %e, "cleaning up after a failed bind failed; unbind will retry");
            }
            return Err(err);
        }
        Ok(Bound {
            credentials: self.credentials(&vhost, &user, &password),
            state: json!({"user": user.as_str()}),
            ..Bound::default()
        })
    }

    async fn unbind(&self, input: UnbindInput<'_>) -> Result<(), BrokerError> {
        let instance = &input.instance;
        let vhost = Self::vhost_of(instance)?;
        let user = UserName::for_binding(instance.platform, &input.binding.id);
        let owner = binding_owner(instance.platform, &input.binding.id, &vhost);
        let api = self.api().await?;
        markers::remove_marked(&api, Kind::User, user.as_str(), owner, || {
            remove_user(&api, user.as_str())
        })
        .await
    }

    /// Every node, one problem per line: a node that only answers after failover is found
    /// before it is needed.
    async fn check_backends(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for ((name, api), node) in self.clients.iter().zip(&self.nodes) {
            if let Err(e) = api.current_user().await {
                problems.push(format!("RabbitMQ management API {name}: {e}"));
            }
            if let Err(e) = self.amqp_on(node, &self.ready_vhost).await {
                let (_, port) = self.amqp_of(node);
                problems.push(format!(
                    "RabbitMQ AMQP {} (vhost {:?}): {e}",
                    uri::authority(&node.host, port),
                    self.ready_vhost
                ));
            }
        }
        problems
    }

    /// The management API of some node, and AMQP on some node.
    async fn check_ready(&self) -> Result<(), BrokerError> {
        self.api().await?;
        self.amqp_check(&self.ready_vhost)
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))
    }

    async fn objects(&self) -> Result<Vec<BackendObject>, BrokerError> {
        let api = self.api().await?;
        let markers = markers::all(&api).await?;
        let location = self.names();
        let mut objects: Vec<BackendObject> = markers.iter().map(|m| m.object(&location)).collect();
        let marked = |kind: Kind, name: &str| {
            markers
                .iter()
                .any(|m| m.kind == kind.as_str() && m.name == name)
        };
        let unmarked =
            |kind: Kind, name: &str| BackendObject::unmarked(kind.as_str(), name, &location);
        for vhost in api.list_vhosts().await.map_err(failed)? {
            if VhostName::recorded(&vhost.name).is_some() && !marked(Kind::Vhost, &vhost.name) {
                objects.push(unmarked(Kind::Vhost, &vhost.name));
            }
        }
        for user in api.list_users().await.map_err(failed)? {
            if UserName::recorded(&user.name).is_some() && !marked(Kind::User, &user.name) {
                objects.push(unmarked(Kind::User, &user.name));
            }
        }
        Ok(objects)
    }

    async fn remove_object(&self, object: &BackendObject) -> Result<(), BrokerError> {
        let api = self.api().await?;
        let markers = markers::all(&api).await?;
        let Some(marker) = markers
            .iter()
            .find(|m| m.kind == object.kind && m.name == object.name)
        else {
            // A user goes with its vhost's removal, marker and all: gone is done.
            let found = if object.kind == Kind::Vhost.as_str() {
                api.get_vhost(&object.name).await.map(|_| ())
            } else {
                api.get_user(&object.name).await.map(|_| ())
            };
            match found {
                Err(e) if not_found(&e) => return Ok(()),
                Err(e) => return Err(failed(e)),
                Ok(()) => {}
            }
            return Err(BrokerError::Conflict(format!(
                "{} {:?} carries no marker of this broker",
                object.kind, object.name
            )));
        };
        let owner = marker.owner();
        if !marker.made {
            // Only a claim: whatever stands under the name was never the broker's.
            let kind = if marker.kind == Kind::Vhost.as_str() {
                Kind::Vhost
            } else {
                Kind::User
            };
            return markers::release(&api, kind, &marker.name, owner).await;
        }
        if marker.kind == Kind::Vhost.as_str() {
            let vhost = VhostName::recorded(&marker.name).ok_or_else(|| {
                BrokerError::Failed(format!(
                    "marked vhost {:?} is not one this broker makes",
                    marker.name
                ))
            })?;
            remove_users_under(&api, &vhost).await?;
            api.delete_vhost(vhost.as_str(), true)
                .await
                .map_err(failed)?;
            markers::release(&api, Kind::Vhost, vhost.as_str(), owner).await
        } else {
            // Only a name the broker makes: a forged marker must not name the admin.
            let user = UserName::recorded(&marker.name).ok_or_else(|| {
                BrokerError::Failed(format!(
                    "marked user {:?} is not one this broker makes",
                    marker.name
                ))
            })?;
            remove_user(&api, user.as_str()).await?;
            markers::release(&api, Kind::User, user.as_str(), owner).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A check connects with every part as given (a password or vhost with URI delimiters in
    /// it included), an IPv6 host as itself, and the smallest frames.
    #[test]
    fn a_check_keeps_its_parts_and_asks_for_the_smallest_frames() {
        let password = SecretString::from("p@ss:w/rd?#%");
        let target = check_target(true, "ad min", &password, "fd00::5", 5671, "/");
        assert_eq!(target.scheme, AMQPScheme::AMQPS);
        assert_eq!(target.authority.userinfo.username, "ad min");
        assert_eq!(target.authority.userinfo.password, "p@ss:w/rd?#%");
        assert_eq!(
            (target.authority.host.as_str(), target.authority.port),
            ("fd00::5", 5671)
        );
        assert_eq!(target.vhost, "/");
        assert_eq!(target.query.frame_max, Some(8192));
    }

    /// Apps' URIs: every part percent-encoded, an IPv6 host in brackets.
    #[test]
    fn an_app_uri_encodes_its_parts_and_brackets_an_ipv6_host() {
        let password = SecretString::from("p@ss:w/rd");
        assert_eq!(
            amqp_uri("amqp", "u", &password, "fd00::5", 5672, "/"),
            "amqp://u:p%40ss%3Aw%2Frd@[fd00::5]:5672/%2F"
        );
        assert_eq!(
            amqp_uri("amqps", "u", &password, "mq.example", 5671, "v1"),
            "amqps://u:p%40ss%3Aw%2Frd@mq.example:5671/v1"
        );
    }
}
