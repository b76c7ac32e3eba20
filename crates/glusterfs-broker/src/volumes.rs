//! A volume of its own: what a dedicated plan's instance is. Made from one brick under each
//! configured brick root, started, with the plan's quota on its root; removed by stopping and
//! deleting it and then its brick directories (Gluster leaves those behind). Every step
//! checks what is there first, so a retry after a crash carries on where the last one ended.

use osb_core::BrokerError;

use crate::cli::{Gluster, GlusterError, Nothing, Volume, VolumeInfo};
use crate::config::DedicatedConfig;

pub struct Volumes<'a> {
    pub gluster: &'a Gluster,
    pub config: &'a DedicatedConfig,
}

/// A brick root `host:/path` split in two.
pub fn brick_root(root: &str) -> Option<(&str, &str)> {
    root.split_once(':')
        .filter(|(host, path)| !host.is_empty() && path.starts_with('/'))
}

impl Volumes<'_> {
    /// The volume, if Gluster has it.
    pub async fn find(&self, name: &str) -> Result<Option<Volume>, BrokerError> {
        match self
            .gluster
            .read::<VolumeInfo>(&["volume", "info", name])
            .await
        {
            Ok(info) => Ok(info
                .info
                .volumes
                .volumes
                .into_iter()
                .find(|v| v.name == name)),
            Err(GlusterError::Refused { message, .. }) if message.contains("does not exist") => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `name`'s bricks, `host:/root/name`.
    fn bricks(&self, name: &str) -> Vec<String> {
        self.config
            .bricks
            .iter()
            .map(|root| format!("{}/{name}", root.trim_end_matches('/')))
            .collect()
    }

    /// Makes (or finishes making) volume `name` with `replica` copies and a quota of
    /// `bytes` on its root.
    pub async fn create(&self, name: &str, replica: usize, bytes: u64) -> Result<(), BrokerError> {
        let volume = match self.find(name).await? {
            Some(v) => v,
            None => {
                let replica = replica.to_string();
                let bricks = self.bricks(name);
                let mut args = vec!["volume", "create", name];
                if replica != "1" {
                    args.extend(["replica", replica.as_str()]);
                }
                args.extend(bricks.iter().map(String::as_str));
                if self.config.force {
                    args.push("force");
                }
                self.gluster.run::<Nothing>(&args).await?;
                self.find(name).await?.ok_or_else(|| {
                    BrokerError::Failed(format!(
                        "volume {name} is missing right after its creation"
                    ))
                })?
            }
        };
        for (key, value) in &self.config.options {
            if volume.option(key) != Some(value.as_str()) {
                self.gluster
                    .run::<Nothing>(&["volume", "set", name, key, value])
                    .await?;
            }
        }
        if volume.status != "Started" {
            self.gluster
                .run::<Nothing>(&["volume", "start", name])
                .await?;
        }
        if volume.option("features.quota") != Some("on") {
            self.gluster
                .run::<Nothing>(&["volume", "quota", name, "enable"])
                .await?;
        }
        let bytes = bytes.to_string();
        self.gluster
            .run::<Nothing>(&["volume", "quota", name, "limit-usage", "/", &bytes])
            .await?;
        Ok(())
    }

    /// Stops and deletes volume `name`, then removes its brick directories (gone already is
    /// fine, at every step).
    pub async fn remove(&self, name: &str) -> Result<(), BrokerError> {
        let mut changed = false;
        if let Some(volume) = self.find(name).await? {
            if volume.status == "Started" {
                self.gluster
                    .run::<Nothing>(&["volume", "stop", name, "force"])
                    .await?;
                changed = true;
            }
            // Stopped: whatever fails from here is no "nothing done".
            let deleted = self
                .gluster
                .run::<Nothing>(&["volume", "delete", name])
                .await;
            deleted.map_err(|e| {
                let e = BrokerError::from(e);
                if changed { e.after_changes() } else { e }
            })?;
        }
        for brick in self.bricks(name) {
            let (host, path) = brick_root(&brick)
                .ok_or_else(|| BrokerError::Failed(format!("brick {brick} is no host:/path")))?;
            self.gluster.node().remove_tree(host, path).await?;
        }
        Ok(())
    }
}
