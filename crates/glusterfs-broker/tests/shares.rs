//! Quota'd directories on the real volume `scripts/backends.sh` makes (`kpaas-shared` on this
//! host's name), through a mount of the test's own that it unmounts whatever happens.

mod support;

use glusterfs_broker::cli::{Gluster, Node};
use glusterfs_broker::share::{AdminMount, Shares, Usage};
use osb_core::BrokerError;
use support::{Mounted, fill, host, write};

const VOLUME: &str = "kpaas-shared";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_holds_to_its_quota_which_can_grow_and_goes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let mount = AdminMount::new(&host(), VOLUME, &dir.path().join("mnt"));
    let _unmount = Mounted(mount.path().to_owned());
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
    // The quota's count of a directory follows its writes a moment later: the refusal below
    // needs the 768 KiB counted (not the removal alone).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let used = shares.usage(&name).await.unwrap().unwrap().used;
        if used >= 768 << 10 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the quota counts {used} bytes of 768 KiB written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
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
