//! Quota'd directories on the real volume `scripts/backends.sh` makes (`kpaas-shared` on this
//! host's name), through a mount of the test's own that it unmounts whatever happens.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use glusterfs_broker::cli::{Gluster, Node};
use glusterfs_broker::share::{AdminMount, Shares, Usage};
use osb_core::BrokerError;

const VOLUME: &str = "kpaas-shared";

/// Unmounts the test's mount when dropped, a failed test included.
struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

/// Writes into `path` in 1 MiB steps, synced, until the file system refuses or `most` bytes
/// are in: how much went in and the refusal. GlusterFS accounts usage a little behind the
/// writes, so the refusal comes at the quota or shortly after it, never exactly at it.
fn fill(path: &Path, most: usize) -> (usize, Option<std::io::Error>) {
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
fn write(path: &Path, bytes: usize) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    for _ in 0..bytes / 65536 {
        file.write_all(&[0u8; 65536])?;
    }
    file.sync_all()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_holds_to_its_quota_which_can_grow_and_goes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let mount = AdminMount::new(&host(), VOLUME, &dir.path().join("mnt"));
    let _unmount = Unmount(mount.path());
    let gluster = Gluster::new(Node::Local {
        binary: "gluster".into(),
    });
    let shares = Shares {
        gluster: &gluster,
        mount: &mount,
        volume: VOLUME,
    };
    let name = format!("op_test_{}", std::process::id());
    shares.create(&name, 1 << 20).await.unwrap();
    shares.create(&name, 1 << 20).await.unwrap();
    assert!(shares.exists(&name).await.unwrap());

    let file = mount.path().join(&name).join("data");
    let (went, err) = fill(&file, 40 << 20);
    let err = err.unwrap_or_else(|| panic!("{went} bytes went into a 1 MiB quota"));
    assert_eq!(err.raw_os_error(), Some(122), "EDQUOT, got {err}");
    assert!(went < 8 << 20, "{went} bytes went in before the refusal");
    let usage = shares.usage(&name).await.unwrap().unwrap();
    assert_eq!(usage.limit, 1 << 20);

    std::fs::remove_file(&file).unwrap();
    write(&file, 768 << 10).unwrap();
    let refused = shares.resize(&name, 512 << 10, "tiny").await.unwrap_err();
    assert!(
        matches!(refused, BrokerError::Unprocessable(_)),
        "{refused}"
    );
    assert_eq!(
        shares.usage(&name).await.unwrap().map(|u| u.limit),
        Some(1 << 20),
        "the refused change changed the quota"
    );
    shares.resize(&name, 4 << 20, "larger").await.unwrap();
    write(&mount.path().join(&name).join("more"), 2 << 20).unwrap();

    shares.remove(&name).await.unwrap();
    shares.remove(&name).await.unwrap();
    assert!(!shares.exists(&name).await.unwrap());
    assert_eq!(shares.usage(&name).await.unwrap(), None::<Usage>);
}
