//! The GlusterFS backend. A shared plan's instance is a directory with a quota on the
//! configured volume; a dedicated plan's is a volume of its own with a quota on its root.
//! Either is claimed in the broker's store before it is made (apps can write the volume, so
//! ownership cannot be marked on it), and one already there is never adopted. A binding hands
//! apps what a native mount needs, as credentials and as OSB `volume_mounts`, and may let
//! named clients in through the volume's `auth.allow`.

use std::collections::{HashMap, HashSet};
use std::net::ToSocketAddrs;
use std::time::Duration;

use async_trait::async_trait;
use osb_core::broker::*;
use osb_core::catalog::Plan;
use osb_core::claims::Claims;
use osb_core::cli::BuildError;
use osb_core::config::BrokerConfig;
use osb_core::credentials::Credentials;
use osb_core::orphans::{BackendObject, Claim, Owner};
use osb_core::uri::Host;
use osb_core::wire::{Device, InstanceMetadata, VolumeMount};
use serde_json::{Map, Value, json};

use crate::access::{Access, Client, Policy};
use crate::cli::{Gluster, Node, VolumeList};
use crate::config::{DedicatedConfig, GlusterConfig, PlanConfig, PlanKind};
use crate::names::{DirName, VolumeName};
use crate::share::{AdminMount, Quota, Shares};
use crate::volumes::{Volumes, brick_root};

/// The store's names for the shared volume's directories and for dedicated volumes.
const DIRS: &str = "glusterfs-dirs";
const VOLUMES: &str = "glusterfs-volumes";

pub struct GlusterBroker {
    gluster: Gluster,
    mount: AdminMount,
    volume: String,
    servers: Vec<String>,
    mount_options: String,
    driver: String,
    container_dir: String,
    dedicated: Option<DedicatedConfig>,
    plans: HashMap<String, PlanConfig>,
    upkeep_every: Duration,
    /// Whom open entries allow, and whether every directory has one (`open_to` configured).
    open_to: Vec<String>,
    always: bool,
    claims: Claims,
}

/// Where an instance lives.
enum Home {
    Dir(DirName),
    Volume(VolumeName),
}

impl Home {
    fn for_instance(kind: PlanKind, platform: &str, id: &osb_core::ids::InstanceId) -> Self {
        match kind {
            PlanKind::Shared => Home::Dir(DirName::for_instance(platform, id)),
            PlanKind::Dedicated => Home::Volume(VolumeName::for_instance(platform, id)),
        }
    }

    fn recorded(kind: PlanKind, raw: &str) -> Option<Self> {
        match kind {
            PlanKind::Shared => DirName::recorded(raw).map(Home::Dir),
            PlanKind::Dedicated => VolumeName::recorded(raw).map(Home::Volume),
        }
    }

    fn pool(&self) -> &'static str {
        match self {
            Home::Dir(_) => DIRS,
            Home::Volume(_) => VOLUMES,
        }
    }

    fn name(&self) -> &str {
        match self {
            Home::Dir(d) => d.as_str(),
            Home::Volume(v) => v.as_str(),
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Home::Dir(_) => "directory",
            Home::Volume(_) => "volume",
        }
    }
}

fn pool_of(kind: PlanKind) -> &'static str {
    match kind {
        PlanKind::Shared => DIRS,
        PlanKind::Dedicated => VOLUMES,
    }
}

fn owner<'a>(instance: &InstanceView<'a>) -> Owner<'a> {
    Owner {
        platform: instance.platform,
        id: instance.id.as_str(),
        parent: "",
    }
}

/// Checks the dedicated plans' brick layout: every plan's replica count divides the brick
/// count, every brick root is `host:/path`, and without SSH every brick host is this one (the
/// broker removes brick directories where it runs them).
fn check_dedicated(config: &GlusterConfig, plans: &[(&Plan, &PlanConfig)]) -> Result<(), String> {
    if plans.is_empty() {
        return Ok(());
    }
    let Some(dedicated) = &config.dedicated else {
        return Err(format!(
            "plan {:?} is dedicated but [glusterfs.dedicated] names no bricks",
            plans[0].0.name
        ));
    };
    if dedicated.bricks.is_empty() {
        return Err("[glusterfs.dedicated] bricks is empty".into());
    }
    for root in &dedicated.bricks {
        let Some((host, _)) = brick_root(root) else {
            return Err(format!("brick root {root:?} is no host:/path"));
        };
        if config.ssh.is_none() {
            let local = (host, 0)
                .to_socket_addrs()
                .map(|mut a| a.all(|a| a.ip().is_loopback()))
                .unwrap_or(false);
            if !local {
                return Err(format!(
                    "brick host {host:?} is not this host: set [glusterfs.ssh] for the broker to reach it"
                ));
            }
        }
    }
    for (plan, config) in plans {
        let crowded = dedicated.bricks.chunks(config.replica.max(1)).any(|set| {
            let hosts: HashSet<&str> = set
                .iter()
                .filter_map(|b| brick_root(b))
                .map(|(h, _)| h)
                .collect();
            hosts.len() < set.len()
        });
        if crowded && !dedicated.force {
            return Err(format!(
                "plan {:?} would keep copies of a file on one host (a replica set is {} consecutive brick roots): alternate the hosts, or set force",
                plan.name, config.replica
            ));
        }
        if config.replica == 0 || dedicated.bricks.len() % config.replica != 0 {
            return Err(format!(
                "plan {:?} wants replica {}, which does not divide the {} brick roots",
                plan.name,
                config.replica,
                dedicated.bricks.len()
            ));
        }
    }
    Ok(())
}

impl GlusterBroker {
    pub fn new(config: &GlusterConfig, broker: &BrokerConfig) -> Result<Self, BuildError> {
        let bad = |why: String| BuildError::Backend(why);
        if let Some(why) = config.servers_unusable() {
            return Err(bad(why));
        }
        let mut dedicated = Vec::new();
        for plan in broker.catalog.services.iter().flat_map(|s| &s.plans) {
            let Some(p) = config.plans.get(&plan.id) else {
                return Err(bad(format!(
                    "plan {:?} ({}) has no [glusterfs.plans] entry",
                    plan.name, plan.id
                )));
            };
            if p.kind == PlanKind::Dedicated {
                dedicated.push((plan, p));
            }
        }
        check_dedicated(config, &dedicated).map_err(bad)?;
        let open_to = match &config.open_to {
            None => vec!["*".to_owned()],
            Some(list) if list.is_empty() => {
                return Err(bad("[glusterfs] open_to lists no client".into()));
            }
            Some(list) => list
                .iter()
                .map(|c| Client::parse(c).map(|c| c.as_str().to_owned()))
                .collect::<Result<_, _>>()
                .map_err(|e| bad(format!("[glusterfs] open_to: {e}")))?,
        };
        let node = match &config.ssh {
            Some(ssh) => Node::Ssh {
                destination: ssh.destination.clone(),
                identity: ssh.identity.clone(),
            },
            None => Node::Local {
                binary: config.gluster.clone(),
            },
        };
        Ok(Self {
            gluster: Gluster::new(node),
            mount: AdminMount::new(&config.servers[0], &config.volume, &config.admin_mount),
            volume: config.volume.clone(),
            servers: config.servers.iter().map(Host::to_string).collect(),
            mount_options: config.mount_options.clone(),
            driver: config.driver.clone(),
            container_dir: config.container_dir.clone(),
            dedicated: config.dedicated.clone(),
            plans: config.plans.clone(),
            upkeep_every: Duration::from_secs(config.upkeep_secs.max(1)),
            open_to,
            always: config.open_to.is_some(),
            claims: Claims::new(),
        })
    }

    fn shares(&self) -> Shares<'_> {
        Shares {
            gluster: &self.gluster,
            mount: &self.mount,
            volume: &self.volume,
        }
    }

    fn volumes(&self) -> Result<Volumes<'_>, BrokerError> {
        let config = self
            .dedicated
            .as_ref()
            .ok_or_else(|| BrokerError::Failed("[glusterfs.dedicated] is not configured".into()))?;
        Ok(Volumes {
            gluster: &self.gluster,
            config,
        })
    }

    /// Who may mount `home`: its entry in the shared volume's `auth.allow`, or its own
    /// volume's root entry.
    fn access<'a>(&'a self, home: &'a Home) -> (Access<'a>, &'a str) {
        let (volume, dir, dirs, made): (_, _, _, fn(&str) -> bool) = match home {
            Home::Dir(d) => (self.volume.as_str(), d.as_str(), Some(DIRS), |dir| {
                DirName::recorded(dir).is_some()
            }),
            Home::Volume(v) => (v.as_str(), "", None, str::is_empty),
        };
        let access = Access {
            gluster: &self.gluster,
            claims: &self.claims,
            volume,
            dirs,
            policy: Policy {
                made,
                always: self.always,
            },
            open_to: &self.open_to,
        };
        (access, dir)
    }

    fn plan(&self, plan: &Plan) -> Result<&PlanConfig, BrokerError> {
        self.plans
            .get(&plan.id)
            .ok_or_else(|| BrokerError::Failed(format!("plan {:?} is not configured", plan.name)))
    }

    /// Whether glusterd answers: checked before anything is claimed or made, so that a
    /// stopped glusterd is a 503 with nothing done.
    async fn ping(&self) -> Result<(), BrokerError> {
        self.gluster.read::<VolumeList>(&["volume", "list"]).await?;
        Ok(())
    }

    /// The instance's directory or volume, when the store's claim says it holds one.
    async fn home_of(&self, instance: &InstanceView<'_>) -> Result<Option<Home>, BrokerError> {
        let kind = self.plan(instance.plan)?.kind;
        let held = self.claims.held_by(pool_of(kind), owner(instance)).await?;
        Ok(held.as_deref().and_then(|raw| Home::recorded(kind, raw)))
    }

    async fn exists(&self, home: &Home) -> Result<bool, BrokerError> {
        match home {
            Home::Dir(d) => self.shares().exists(d.as_str()).await,
            Home::Volume(v) => Ok(self.volumes()?.find(v.as_str()).await?.is_some()),
        }
    }

    async fn remove(&self, home: &Home) -> Result<(), BrokerError> {
        match home {
            // The data first: the entry keeps its restriction until nothing is left to guard.
            Home::Dir(d) => {
                self.shares().remove(d.as_str()).await?;
                let (access, dir) = self.access(home);
                access.forget(dir).await.map_err(BrokerError::after_changes)
            }
            Home::Volume(v) => self.volumes()?.remove(v.as_str()).await,
        }
    }

    /// Every name on Gluster this broker could have made, whoever claims it: the shared
    /// volume's `op_` directories and the `op_` volumes.
    async fn found(&self) -> Result<Vec<(&'static str, String, String)>, BrokerError> {
        let mut found = Vec::new();
        self.mount.ensure().await?;
        let entries = std::fs::read_dir(self.mount.path())
            .map_err(|e| BrokerError::Failed(format!("listing volume {}: {e}", self.volume)))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if DirName::recorded(&name).is_some() {
                found.push(("directory", name, self.volume.clone()));
            }
        }
        let list: VolumeList = self.gluster.read(&["volume", "list"]).await?;
        for name in list.list.names {
            if VolumeName::recorded(&name).is_some() {
                found.push(("volume", name, String::new()));
            }
        }
        Ok(found)
    }
}

/// Bind parameters: where the app wants the directory, read-only or not.
fn mount_of(parameters: &Map<String, Value>, default: &str) -> Result<(String, bool), BrokerError> {
    let dir = match parameters.get("mount") {
        None | Some(Value::Null) => default.to_owned(),
        Some(Value::String(path)) if path.starts_with('/') && !path.contains("..") => path.clone(),
        Some(other) => {
            return Err(BrokerError::InvalidParameters(format!(
                "mount must be an absolute path in the app's container (got {other})"
            )));
        }
    };
    let readonly = match parameters.get("readonly") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(BrokerError::InvalidParameters(format!(
                "readonly must be true or false (got {other})"
            )));
        }
    };
    Ok((dir, readonly))
}

#[async_trait]
impl ServiceBroker for GlusterBroker {
    fn claims(&self) -> Option<&Claims> {
        Some(&self.claims)
    }

    /// A volume takes seconds to make and remove: K-PaaS's Cloud Foundry polls for it, a
    /// client that cannot poll waits for it within the request.
    fn mode(&self, operation: Operation, plan: &Plan) -> Mode {
        let dedicated = self.plans.get(&plan.id).map(|p| p.kind) == Some(PlanKind::Dedicated);
        match operation {
            Operation::Provision | Operation::Deprovision if dedicated => Mode::Either,
            _ => Mode::Sync,
        }
    }

    async fn provision(&self, input: ProvisionInput<'_>) -> Result<Provisioned, BrokerError> {
        let plan = self.plan(input.plan)?;
        let bytes = plan.quota_mb << 20;
        let home = Home::for_instance(plan.kind, input.platform, input.instance_id);
        self.ping().await?;
        let owner = Owner {
            platform: input.platform,
            id: input.instance_id.as_str(),
            parent: "",
        };
        let held = self.claims.held_by(home.pool(), owner).await?;
        if held.as_deref() != Some(home.name()) {
            if !self.claims.claim(home.pool(), home.name(), owner).await? {
                return Err(BrokerError::Conflict(format!(
                    "{} {} belongs to another service instance",
                    home.what(),
                    home.name()
                )));
            }
            // Claimed now: one already there is someone else's, never adopted.
            let exists = self.exists(&home).await;
            if !matches!(exists, Ok(false)) {
                self.claims.release(home.pool(), home.name(), owner).await?;
                exists?;
                return Err(BrokerError::Conflict(format!(
                    "{} {} exists on GlusterFS and was not made for this instance",
                    home.what(),
                    home.name()
                )));
            }
        }
        let made = match &home {
            Home::Dir(d) => self.shares().create(d.as_str(), bytes).await,
            Home::Volume(v) => {
                self.volumes()?
                    .create(v.as_str(), plan.replica, bytes)
                    .await
            }
        };
        // Mountable by whom an unrestricted instance is open to.
        let (access, dir) = self.access(&home);
        let made = match made {
            Ok(()) => access.open(dir).await,
            e => e,
        };
        made.map_err(BrokerError::after_changes)?;
        Ok(Provisioned {
            state: json!({ home.what(): home.name() }),
            ..Provisioned::default()
        })
    }

    async fn update(&self, input: UpdateInput<'_>) -> Result<Updated, BrokerError> {
        let from = self.plan(input.instance.plan)?;
        let to = self.plan(input.plan)?;
        let replicas_differ = from.kind == PlanKind::Dedicated && from.replica != to.replica;
        if from.kind != to.kind || replicas_differ {
            return Err(BrokerError::Unprocessable(format!(
                "plan {:?} keeps its data {}, plan {:?} {}: create a new instance and copy the data",
                input.instance.plan.name,
                layout(from),
                input.plan.name,
                layout(to)
            )));
        }
        let Some(home) = self.home_of(&input.instance).await? else {
            return Err(BrokerError::Failed("the instance holds no storage".into()));
        };
        self.ping().await?;
        let bytes = to.quota_mb << 20;
        match &home {
            Home::Dir(d) => {
                self.shares()
                    .resize(d.as_str(), bytes, &input.plan.name)
                    .await?
            }
            Home::Volume(v) => {
                let quota = Quota {
                    gluster: &self.gluster,
                    volume: v.as_str(),
                };
                quota.resize("/", bytes, &input.plan.name).await?
            }
        }
        Ok(Updated::default())
    }

    async fn deprovision(&self, input: DeprovisionInput<'_>) -> Result<(), BrokerError> {
        let Some(home) = self.home_of(&input.instance).await? else {
            return Ok(());
        };
        self.ping().await?;
        self.remove(&home).await?;
        self.claims
            .release(home.pool(), home.name(), owner(&input.instance))
            .await
    }

    async fn bind(&self, input: BindInput<'_>) -> Result<Bound, BrokerError> {
        let (container_dir, readonly) = mount_of(input.parameters, &self.container_dir)?;
        let clients = Client::list_from(input.parameters)?;
        let bytes = self.plan(input.instance.plan)?.quota_mb << 20;
        let Some(home) = self.home_of(&input.instance).await? else {
            return Err(BrokerError::Failed("the instance holds no storage".into()));
        };
        self.ping().await?;
        // Credentials for a mount that cannot work help no app: the volume must answer and
        // hold the directory, or be there.
        if !self.exists(&home).await? {
            return Err(BrokerError::Failed(format!(
                "{} {} is missing from GlusterFS",
                home.what(),
                home.name()
            )));
        }
        let (access, dir) = self.access(&home);
        access.grant(dir, &clients, &input.bindings).await?;
        let (volume, path) = match &home {
            Home::Dir(d) => (self.volume.as_str(), format!("/{}", d.as_str())),
            Home::Volume(v) => (v.as_str(), String::from("/")),
        };
        let source = format!(
            "{}:/{volume}{}",
            self.servers[0],
            path.trim_end_matches('/')
        );
        // Read-only is the client's promise (the servers let any mount write): the options
        // say it too, for apps that mount from the credentials.
        let options = match (readonly, self.mount_options.as_str()) {
            (false, options) => options.to_owned(),
            (true, "") => "ro".to_owned(),
            (true, options) => format!("{options},ro"),
        };
        let mut config = Map::new();
        config.insert("source".into(), json!(source));
        if !options.is_empty() {
            config.insert("options".into(), json!(options));
        }
        let mount = VolumeMount {
            driver: self.driver.clone(),
            container_dir,
            mode: if readonly { "r" } else { "rw" }.into(),
            device_type: "shared".into(),
            device: Device {
                volume_id: format!(
                    "{volume}/{}/{}",
                    path.trim_matches('/'),
                    input.binding_id.as_str()
                )
                .replace("//", "/"),
                mount_config: Some(config),
            },
        };
        let credentials = Credentials::new()
            .with("servers", json!(self.servers))
            .with("volume", volume)
            .with("path", path.as_str())
            .with("mount_source", source.as_str())
            .with("mount_options", options.as_str())
            .with("quota_bytes", bytes);
        Ok(Bound {
            credentials,
            volume_mounts: vec![mount],
            ..Bound::default()
        })
    }

    /// Takes back the clients the binding let in, but those another binding still holds.
    async fn unbind(&self, input: UnbindInput<'_>) -> Result<(), BrokerError> {
        if Client::list_from(&input.binding.parameters).map_or(true, |c| c.is_empty()) {
            return Ok(());
        }
        let Some(home) = self.home_of(&input.instance).await? else {
            return Ok(());
        };
        let (access, dir) = self.access(&home);
        access.revoke(dir, input.binding, &input.bindings).await
    }

    fn upkeep_interval(&self) -> Option<Duration> {
        Some(self.upkeep_every)
    }

    /// Puts the instance's `auth.allow` entry right by its bindings (after a write lost
    /// between replicas or to a crash).
    async fn upkeep(
        &self,
        instance: InstanceView<'_>,
        bindings: BindingsOf<'_>,
    ) -> Result<Option<InstanceMetadata>, BrokerError> {
        if let Some(home) = self.home_of(&instance).await? {
            let (access, dir) = self.access(&home);
            access.reconcile(dir, &bindings).await?;
        }
        Ok(None)
    }

    /// The shared volume answers, with its quota on (without it every provision would fail
    /// after making its directory).
    async fn check_ready(&self) -> Result<(), BrokerError> {
        let info: crate::cli::VolumeInfo =
            self.gluster.read(&["volume", "info", &self.volume]).await?;
        let quota = info
            .info
            .volumes
            .volumes
            .first()
            .and_then(|v| v.option("features.quota"));
        if quota != Some("on") {
            return Err(BrokerError::Unavailable(format!(
                "volume {} has no quota: gluster volume quota {} enable",
                self.volume, self.volume
            )));
        }
        Ok(())
    }

    /// Claimed directories and volumes, and those with the broker's naming that nobody
    /// claims (listed, never removed: the broker cannot know it made them).
    async fn objects(&self) -> Result<Vec<BackendObject>, BrokerError> {
        let mut objects = Vec::new();
        let mut claimed = HashSet::new();
        for (pool, kind, location) in [
            (DIRS, "directory", self.volume.as_str()),
            (VOLUMES, "volume", ""),
        ] {
            for c in self.claims.all(pool).await? {
                let owner = Owner {
                    platform: &c.platform,
                    id: &c.owner_id,
                    parent: "",
                };
                claimed.insert((kind, c.item.clone()));
                objects.push(BackendObject::marked(
                    kind,
                    &c.item,
                    location,
                    owner,
                    c.claimed_at_ms,
                ));
            }
        }
        for (kind, name, location) in self.found().await? {
            if !claimed.contains(&(kind, name.clone())) {
                objects.push(BackendObject::unmarked(kind, &name, &location));
            }
        }
        Ok(objects)
    }

    async fn remove_object(&self, object: &BackendObject) -> Result<(), BrokerError> {
        let Claim::Instance { platform, id } = &object.claim else {
            return Err(BrokerError::Failed(format!(
                "{:?} is not claimed",
                object.name
            )));
        };
        let owner = Owner {
            platform,
            id,
            parent: "",
        };
        let kind = match object.kind.as_str() {
            "volume" => PlanKind::Dedicated,
            _ => PlanKind::Shared,
        };
        if self.claims.held_by(pool_of(kind), owner).await?.as_deref() != Some(object.name.as_str())
        {
            return Ok(());
        }
        let home = Home::recorded(kind, &object.name).ok_or_else(|| {
            BrokerError::Failed(format!("{:?} is no name this broker makes", object.name))
        })?;
        self.remove(&home).await?;
        self.claims.release(home.pool(), home.name(), owner).await
    }
}

/// How a plan keeps data, for a refused plan change.
fn layout(plan: &PlanConfig) -> String {
    match plan.kind {
        PlanKind::Shared => "in a directory of a shared volume".into(),
        PlanKind::Dedicated => format!("on a volume of its own with {} copies", plan.replica),
    }
}
