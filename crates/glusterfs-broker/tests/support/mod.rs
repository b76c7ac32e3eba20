//! What glusterfs-broker's tests share: this host's name (the volume's bricks are made with
//! it), a guard that unmounts, and writes that find where the quota stops them.
// Each test binary uses part of it.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Unmounts a mount point when dropped, a failed test included.
pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

/// The deploy config on this host: its name as the server and the brick host, `volume` as the
/// shared volume, the admin mount at `admin`.
pub fn deploy_config(volume: &str, admin: &Path) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/glusterfs-broker.toml"),
    )
    .unwrap()
    .replace("servers = [\"vm\"]", &format!("servers = [\"{}\"]", host()))
    .replace("bricks = [\"vm:", &format!("bricks = [\"{}:", host()))
    .replace(
        "admin_mount = \"/var/lib/kpaas/glusterfs-admin\"",
        &format!("admin_mount = \"{}\"", admin.display()),
    )
    .replace(
        "volume = \"kpaas-shared\"",
        &format!("volume = \"{volume}\""),
    )
}

pub fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

/// Writes into `path` in 1 MiB steps, synced, until the file system refuses or `most` bytes
/// are in: how much went in and the refusal. GlusterFS accounts usage a little behind the
/// writes, so the refusal comes at the quota or shortly after it, never exactly at it.
pub fn fill(path: &Path, most: usize) -> (usize, Option<std::io::Error>) {
    let mut file = std::fs::File::create(path).unwrap();
    let mut written = 0;
    while written < most {
        let step = file
            .write_all(&vec![0u8; 1 << 20])
            .and_then(|()| file.sync_all());
        if let Err(e) = step {
            return (written, Some(e));
        }
        written += 1 << 20;
    }
    (written, None)
}

/// Writes `bytes` zeros to `path`, synced: the error the file system gives, if any.
pub fn write(path: &Path, bytes: usize) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    for _ in 0..bytes / 65536 {
        file.write_all(&[0u8; 65536])?;
    }
    file.sync_all()
}

fn gluster(args: &[&str]) -> std::process::Output {
    Command::new("gluster")
        .arg("--mode=script")
        .args(args)
        .output()
        .unwrap()
}

/// A volume of the test's own: one brick under `dir`, quota on and enforced at once; stopped
/// and deleted when dropped. For tests that change volume-wide options, which would disturb
/// the tests running beside them on the shared volume.
pub struct TestVolume {
    pub name: String,
}

impl TestVolume {
    pub fn create(dir: &Path) -> Self {
        let name = format!("kpaas-t{}", &osb_testkit::fresh_id().replace('-', "")[..12]);
        let brick = format!("{}:{}/brick-{name}", host(), dir.display());
        let volume = Self { name };
        let name = volume.name.as_str();
        for args in [
            &["volume", "create", name, &brick, "force"][..],
            &["volume", "start", name],
            &["volume", "quota", name, "enable"],
            &["volume", "quota", name, "hard-timeout", "0"],
            &["volume", "quota", name, "soft-timeout", "0"],
        ] {
            let out = gluster(args);
            assert!(
                out.status.success(),
                "gluster {args:?}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        volume
    }
}

impl Drop for TestVolume {
    fn drop(&mut self) {
        gluster(&["volume", "stop", &self.name, "force"]);
        gluster(&["volume", "delete", &self.name]);
    }
}

/// How long a change of `auth.allow` may take to reach the bricks: glusterd answers
/// `volume set` before the bricks have reconfigured.
const AUTH_SETTLES: std::time::Duration = std::time::Duration::from_secs(20);

/// Mounts `subdir` of `volume` (`""`: its root) under `dir` as a client that is no Gluster
/// server (see [`try_as_client`]), trying again while a change of `auth.allow` may still be on
/// its way to the bricks. `None` when every try was refused.
pub fn mount_as_client(volume: &str, subdir: &str, dir: &Path) -> Option<Mounted> {
    let deadline = std::time::Instant::now() + AUTH_SETTLES;
    loop {
        let mounted = try_as_client(volume, subdir, dir);
        if mounted.is_some() || std::time::Instant::now() >= deadline {
            return mounted;
        }
    }
}

/// Whether such a client is refused `subdir` of `volume`, trying again while a change of
/// `auth.allow` may still be on its way to the bricks.
pub fn refused_as_client(volume: &str, subdir: &str, dir: &Path) -> bool {
    let deadline = std::time::Instant::now() + AUTH_SETTLES;
    loop {
        if try_as_client(volume, subdir, dir).is_none() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// One mount of `subdir` of `volume` (`""`: its root) under `dir` the way a client that is no
/// Gluster server does: with the volume's client volfile stripped of the login glusterd hands
/// its own servers' clients (which `auth.allow` never stops). `None` when refused.
fn try_as_client(volume: &str, subdir: &str, dir: &Path) -> Option<Mounted> {
    let spec = gluster(&["system", "getspec", volume]);
    assert!(spec.status.success(), "getspec {volume}");
    let volfile: String = String::from_utf8_lossy(&spec.stdout)
        .lines()
        .filter(|l| !l.contains("username") && !l.contains("password"))
        .map(|l| format!("{l}\n"))
        .collect();
    let id = osb_testkit::fresh_id();
    let spec_path = dir.join(format!("client-{id}.vol"));
    std::fs::write(&spec_path, volfile).unwrap();
    let at = dir.join(format!("c{id}"));
    std::fs::create_dir_all(&at).unwrap();
    let mut command = Command::new("glusterfs");
    command.arg("-f").arg(&spec_path);
    if !subdir.is_empty() {
        command.arg(format!("--subdir-mount=/{subdir}"));
    }
    let status = command.arg(&at).stderr(Stdio::null()).status().unwrap();
    let guard = Mounted(at);
    if !status.success() {
        return None;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let mounted = std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == guard.0.to_str());
        if mounted && std::fs::read_dir(&guard.0).is_ok() {
            return Some(guard);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}
