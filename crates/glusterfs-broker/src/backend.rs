//! The GlusterFS backend: a shared plan's instance is a directory with a quota on the
//! configured volume, claimed in the broker's store (apps can write the volume, so ownership
//! cannot be marked on it); a binding hands apps what a native mount needs, as credentials and
//! as OSB `volume_mounts`.

use std::collections::HashMap;

use async_trait::async_trait;
use osb_core::broker::*;
use osb_core::catalog::Plan;
use osb_core::claims::Claims;
use osb_core::cli::BuildError;
use osb_core::config::BrokerConfig;
use osb_core::credentials::Credentials;
use osb_core::orphans::{BackendObject, Claim, Owner};
use osb_core::wire::{Device, VolumeMount};
use serde_json::{Map, Value, json};

use crate::cli::{Gluster, Node};
use crate::config::{GlusterConfig, PlanConfig};
use crate::names::DirName;
use crate::share::{AdminMount, Shares};

/// The store's name for the volume's directories.
const DIRS: &str = "glusterfs-dirs";

pub struct GlusterBroker {
    gluster: Gluster,
    mount: AdminMount,
    volume: String,
    servers: Vec<String>,
    mount_options: String,
    driver: String,
    container_dir: String,
    plans: HashMap<String, PlanConfig>,
    claims: Claims,
}

fn owner<'a>(instance: &InstanceView<'a>) -> Owner<'a> {
    Owner {
        platform: instance.platform,
        id: instance.id.as_str(),
        parent: "",
    }
}

impl GlusterBroker {
    pub fn new(config: &GlusterConfig, broker: &BrokerConfig) -> Result<Self, BuildError> {
        let bad = |why: String| BuildError::Backend(why);
        if config.servers.is_empty() {
            return Err(bad("[glusterfs] servers lists no host".into()));
        }
        for plan in broker.catalog.services.iter().flat_map(|s| &s.plans) {
            if !config.plans.contains_key(&plan.id) {
                return Err(bad(format!(
                    "plan {:?} ({}) has no [glusterfs.plans] entry",
                    plan.name, plan.id
                )));
            }
        }
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
            servers: config.servers.clone(),
            mount_options: config.mount_options.clone(),
            driver: config.driver.clone(),
            container_dir: config.container_dir.clone(),
            plans: config.plans.clone(),
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

    fn quota(&self, plan: &Plan) -> Result<u64, BrokerError> {
        self.plans
            .get(&plan.id)
            .map(|p| p.quota_mb << 20)
            .ok_or_else(|| BrokerError::Failed(format!("plan {:?} has no quota", plan.name)))
    }

    /// The instance's directory, when the store's claim says it holds one.
    async fn dir_of(&self, instance: &InstanceView<'_>) -> Result<Option<DirName>, BrokerError> {
        let held = self.claims.held_by(DIRS, owner(instance)).await?;
        Ok(held.as_deref().and_then(DirName::recorded))
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

    async fn provision(&self, input: ProvisionInput<'_>) -> Result<Provisioned, BrokerError> {
        let bytes = self.quota(input.plan)?;
        let dir = DirName::for_instance(input.platform, input.instance_id);
        let owner = Owner {
            platform: input.platform,
            id: input.instance_id.as_str(),
            parent: "",
        };
        let retry = self.claims.held_by(DIRS, owner).await?.as_deref() == Some(dir.as_str());
        if !retry {
            if !self.claims.claim(DIRS, dir.as_str(), owner).await? {
                return Err(BrokerError::Conflict(format!(
                    "directory {} of volume {} belongs to another service instance",
                    dir.as_str(),
                    self.volume
                )));
            }
            // Claimed now: a directory already there is someone else's, never adopted.
            let exists = self.shares().exists(dir.as_str()).await;
            if !matches!(exists, Ok(false)) {
                self.claims.release(DIRS, dir.as_str(), owner).await?;
                exists?;
                return Err(BrokerError::Conflict(format!(
                    "directory {} exists on volume {} and was not made for this instance",
                    dir.as_str(),
                    self.volume
                )));
            }
        }
        self.shares()
            .create(dir.as_str(), bytes)
            .await
            .map_err(|e| match e {
                // The claim is made: never "nothing done".
                BrokerError::Unavailable(why) => BrokerError::Failed(why),
                e => e,
            })?;
        Ok(Provisioned {
            state: json!({"dir": dir.as_str()}),
            ..Provisioned::default()
        })
    }

    async fn update(&self, input: UpdateInput<'_>) -> Result<Updated, BrokerError> {
        let bytes = self.quota(input.plan)?;
        let Some(dir) = self.dir_of(&input.instance).await? else {
            return Err(BrokerError::Failed(
                "the instance holds no directory".into(),
            ));
        };
        self.shares()
            .resize(dir.as_str(), bytes, &input.plan.name)
            .await?;
        Ok(Updated::default())
    }

    async fn deprovision(&self, input: DeprovisionInput<'_>) -> Result<(), BrokerError> {
        let Some(dir) = self.dir_of(&input.instance).await? else {
            return Ok(());
        };
        self.shares().remove(dir.as_str()).await?;
        self.claims
            .release(DIRS, dir.as_str(), owner(&input.instance))
            .await
    }

    async fn bind(&self, input: BindInput<'_>) -> Result<Bound, BrokerError> {
        let (container_dir, readonly) = mount_of(input.parameters, &self.container_dir)?;
        let bytes = self.quota(input.instance.plan)?;
        let Some(dir) = self.dir_of(&input.instance).await? else {
            return Err(BrokerError::Failed(
                "the instance holds no directory".into(),
            ));
        };
        // Credentials for a mount that cannot work help no app: the volume must answer and
        // hold the directory.
        if !self.shares().exists(dir.as_str()).await? {
            return Err(BrokerError::Failed(format!(
                "directory {} is missing from volume {}",
                dir.as_str(),
                self.volume
            )));
        }
        let path = format!("/{}", dir.as_str());
        let source = format!("{}:/{}{path}", self.servers[0], self.volume);
        let mut config = Map::new();
        config.insert("source".into(), json!(source));
        if !self.mount_options.is_empty() {
            config.insert("options".into(), json!(self.mount_options));
        }
        let mount = VolumeMount {
            driver: self.driver.clone(),
            container_dir,
            mode: if readonly { "r" } else { "rw" }.into(),
            device_type: "shared".into(),
            device: Device {
                volume_id: format!(
                    "{}/{}/{}",
                    self.volume,
                    dir.as_str(),
                    input.binding_id.as_str()
                ),
                mount_config: Some(config),
            },
        };
        let credentials = Credentials::new()
            .with("servers", json!(self.servers))
            .with("volume", self.volume.as_str())
            .with("path", path.as_str())
            .with("mount_source", source.as_str())
            .with("mount_options", self.mount_options.as_str())
            .with("quota_bytes", bytes);
        Ok(Bound {
            credentials,
            volume_mounts: vec![mount],
            ..Bound::default()
        })
    }

    /// A binding gave nothing on the servers (no client list): nothing to take back.
    async fn unbind(&self, _input: UnbindInput<'_>) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn check_ready(&self) -> Result<(), BrokerError> {
        self.gluster
            .run::<crate::cli::VolumeInfo>(&["volume", "info", &self.volume])
            .await?;
        Ok(())
    }

    async fn objects(&self) -> Result<Vec<BackendObject>, BrokerError> {
        Ok(self
            .claims
            .all(DIRS)
            .await?
            .iter()
            .map(|c| {
                let owner = Owner {
                    platform: &c.platform,
                    id: &c.owner_id,
                    parent: "",
                };
                BackendObject::marked("directory", &c.item, &self.volume, owner, c.claimed_at_ms)
            })
            .collect())
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
        if self.claims.held_by(DIRS, owner).await?.as_deref() != Some(object.name.as_str()) {
            return Ok(());
        }
        let dir = DirName::recorded(&object.name).ok_or_else(|| {
            BrokerError::Failed(format!(
                "{:?} is no directory this broker makes",
                object.name
            ))
        })?;
        self.shares().remove(dir.as_str()).await?;
        self.claims.release(DIRS, dir.as_str(), owner).await
    }
}
