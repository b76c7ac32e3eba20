//! A directory with a quota on a volume: what a shared plan's instance is. The `gluster` CLI
//! has no file operations, so directories are made and removed through a FUSE mount of the
//! volume the broker keeps for itself (an "admin mount"); their quotas through
//! `gluster volume quota`.

use std::path::{Path, PathBuf};

use osb_core::BrokerError;

use crate::cli::{Gluster, GlusterError, Nothing, QuotaList};

/// The broker's own mount of a volume.
pub struct AdminMount {
    source: String,
    path: PathBuf,
}

impl AdminMount {
    /// `server:/volume` mounted at `path`.
    pub fn new(server: &str, volume: &str, path: &Path) -> Self {
        Self {
            source: format!("{server}:/{volume}"),
            path: path.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a GlusterFS file system is mounted at the path.
    fn mounted(&self) -> bool {
        let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
            return false;
        };
        let path = self.path.to_string_lossy();
        mounts.lines().any(|l| {
            let mut fields = l.split_whitespace();
            let (source, target, kind) = (fields.next(), fields.next(), fields.next());
            source == Some(self.source.as_str())
                && target == Some(path.as_ref())
                && kind == Some("fuse.glusterfs")
        })
    }

    /// Mounts the volume unless it is mounted there already and answering. A mount whose
    /// client lost the servers (cut off by `auth.allow`, a restart of the servers) answers
    /// "Transport endpoint is not connected": it is dropped and made again.
    pub async fn ensure(&self) -> Result<(), BrokerError> {
        if self.mounted() {
            const ENOTCONN: i32 = 107;
            match std::fs::metadata(&self.path) {
                Err(e) if e.raw_os_error() == Some(ENOTCONN) => {
                    tracing::warn!(mount = %self.path.display(), "admin mount lost its servers; mounting again");
                    let _ = tokio::process::Command::new("umount")
                        .arg("-l")
                        .arg(&self.path)
                        .status()
                        .await;
                }
                _ => return Ok(()),
            }
        }
        std::fs::create_dir_all(&self.path)
            .map_err(|e| BrokerError::Failed(format!("making {}: {e}", self.path.display())))?;
        let out = tokio::process::Command::new("mount")
            .args(["-t", "glusterfs", &self.source])
            .arg(&self.path)
            .output()
            .await
            .map_err(|e| BrokerError::Unavailable(format!("mount: {e}")))?;
        if !out.status.success() {
            // Nothing was made: the volume or its server did not answer.
            // mount(8) says only "Mount failed", its log says why.
            let said = String::from_utf8_lossy(&out.stderr);
            return Err(BrokerError::Unavailable(format!(
                "GlusterFS {} could not be mounted: {}",
                self.source,
                said.lines().next().unwrap_or("").trim()
            )));
        }
        Ok(())
    }
}

/// The quota'd directories of one volume.
pub struct Shares<'a> {
    pub gluster: &'a Gluster,
    pub mount: &'a AdminMount,
    pub volume: &'a str,
}

/// A directory's quota and what it holds, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub limit: u64,
    pub used: u64,
}

impl Shares<'_> {
    fn dir(&self, name: &str) -> PathBuf {
        self.mount.path().join(name)
    }

    /// Makes directory `name` (there already is fine: a retry) with a quota of `bytes`.
    pub async fn create(&self, name: &str, bytes: u64) -> Result<(), BrokerError> {
        self.mount.ensure().await?;
        match std::fs::create_dir(self.dir(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(BrokerError::Failed(format!(
                    "making directory {name} on volume {}: {e}",
                    self.volume
                )));
            }
        }
        self.quota().limit(&format!("/{name}"), bytes).await
    }

    /// Whether directory `name` exists on the volume.
    pub async fn exists(&self, name: &str) -> Result<bool, BrokerError> {
        self.mount.ensure().await?;
        // An error is no answer, never "absent" (that would make a provision adopt nothing
        // and a bind refuse a directory that is there).
        self.dir(name)
            .try_exists()
            .map_err(|e| BrokerError::Unavailable(format!("volume {}: {e}", self.volume)))
    }

    fn quota(&self) -> Quota<'_> {
        Quota {
            gluster: self.gluster,
            volume: self.volume,
        }
    }

    /// The directory's quota and use, when it has a quota.
    pub async fn usage(&self, name: &str) -> Result<Option<Usage>, BrokerError> {
        self.quota().usage(&format!("/{name}")).await
    }

    /// Sets the directory's quota to `bytes`, as [`Quota::resize`] does.
    pub async fn resize(&self, name: &str, bytes: u64, plan: &str) -> Result<(), BrokerError> {
        self.quota().resize(&format!("/{name}"), bytes, plan).await
    }

    /// Removes the directory's quota and the directory with everything in it (gone already
    /// is fine).
    pub async fn remove(&self, name: &str) -> Result<(), BrokerError> {
        self.mount.ensure().await?;
        let path = format!("/{name}");
        match self
            .gluster
            .run::<Nothing>(&["volume", "quota", self.volume, "remove", &path])
            .await
        {
            Ok(_) => {}
            // No quota (never set, or removed by an earlier attempt), or no directory.
            Err(GlusterError::Refused { .. }) if !self.dir(name).exists() => {}
            // A directory without a limit (a provision that died before setting it): Gluster
            // finds no limit attribute to remove.
            Err(GlusterError::Refused { message, .. })
                if message.contains("No quota")
                    || message.contains("not set")
                    || message.contains("No data available") => {}
            Err(e) => return Err(e.into()),
        }
        match tokio::fs::remove_dir_all(self.dir(name)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BrokerError::Failed(format!(
                "removing directory {name} from volume {}: {e}",
                self.volume
            ))),
        }
    }
}

/// Gluster's directory quotas on one volume (`/` for the whole volume).
pub struct Quota<'a> {
    pub gluster: &'a Gluster,
    pub volume: &'a str,
}

impl Quota<'_> {
    pub async fn limit(&self, path: &str, bytes: u64) -> Result<(), BrokerError> {
        let bytes = bytes.to_string();
        let args = ["volume", "quota", self.volume, "limit-usage", path, &bytes];
        self.gluster.run::<Nothing>(&args).await?;
        Ok(())
    }

    /// The path's quota and use, when it has a quota.
    pub async fn usage(&self, path: &str) -> Result<Option<Usage>, BrokerError> {
        let list: QuotaList = self
            .gluster
            .read(&["volume", "quota", self.volume, "list", path])
            .await?;
        Ok(list
            .quota
            .limits
            .into_iter()
            .find(|l| l.path == path)
            .map(|l| Usage {
                limit: l.hard_limit,
                used: l.used_space,
            }))
    }

    /// Sets the quota to `bytes`; less than the path holds is refused (422) and changes
    /// nothing. `plan` names the plan in the refusal.
    pub async fn resize(&self, path: &str, bytes: u64, plan: &str) -> Result<(), BrokerError> {
        if let Some(usage) = self.usage(path).await?
            && usage.used > bytes
        {
            return Err(BrokerError::Unprocessable(format!(
                "the instance holds {} MiB, more than plan {plan:?} allows ({} MiB); delete some files first",
                usage.used.div_ceil(1 << 20),
                bytes >> 20
            )));
        }
        self.limit(path, bytes).await
    }
}
