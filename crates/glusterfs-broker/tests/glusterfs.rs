//! glusterfs-broker, black box: the real binary against the local glusterd and its volume
//! `kpaas-shared` (`scripts/backends.sh`), driven over HTTP; what it made is mounted over FUSE
//! with the bound credentials, and unmounted whatever happens.

mod support;

use std::path::Path;
use std::process::Command;

use osb_testkit::{
    BrokerProcess, Client as Osb, PLAIN_CATALOG_SKIPS, Target, check_all, check_backend_down,
    fresh_id, start_broker,
};
use support::{Mounted, fill, host, write};

const SERVICE: &str = "642e1a24-21c8-450d-b658-88089f34fa0c";
const SMALL: &str = "b777040f-0d08-4ad4-a50a-614cf1d4b985";
const MEDIUM: &str = "da5d9ba3-b63f-4311-b0eb-82cfc56ffa82";

/// The deploy config with this host's name as the server and an admin mount under `dir`.
async fn start(dir: &Path) -> (BrokerProcess, Mounted) {
    start_on(dir, "kpaas-shared", "/ready").await
}

/// [`start`] on `volume`, waiting until `path` answers.
async fn start_on(dir: &Path, volume: &str, path: &str) -> (BrokerProcess, Mounted) {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/glusterfs-broker.toml"),
    )
    .unwrap()
    .replace("servers = [\"vm\"]", &format!("servers = [\"{}\"]", host()))
    .replace(
        "admin_mount = \"/var/lib/kpaas/glusterfs-admin\"",
        &format!("admin_mount = \"{}\"", dir.join(volume).display()),
    )
    .replace(
        "volume = \"kpaas-shared\"",
        &format!("volume = \"{volume}\""),
    );
    let config = dir.join("glusterfs-broker.toml");
    std::fs::write(&config, text).unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_glusterfs-broker"));
    let broker = start_broker(binary, &config, dir, &[], path).await.unwrap();
    (broker, Mounted(dir.join(volume)))
}

fn target(broker: &BrokerProcess) -> Target {
    let mut t = broker.target(SERVICE, SMALL);
    t.update_plan_id = Some(MEDIUM.into());
    t.race_width = 8;
    // Bindings carry no secret to rotate (no plan is binding_rotatable).
    t.skip = PLAIN_CATALOG_SKIPS.to_vec();
    t.skip.push("binding_rotation_follows_the_plan");
    t
}

/// Mounts `source` (`host:/volume/dir`) at a new directory under `dir`.
fn mount(source: &str, dir: &Path) -> Mounted {
    let at = dir.join(format!("m{}", fresh_id()));
    std::fs::create_dir_all(&at).unwrap();
    let status = Command::new("mount")
        .args(["-t", "glusterfs", source])
        .arg(&at)
        .status()
        .unwrap();
    assert!(status.success(), "mount {source}");
    Mounted(at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testkit_rules_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _admin) = start(dir.path()).await;
    check_all(&target(&broker)).await.unwrap();
}

/// The bound credentials mount the instance's directory: writes go in up to the plan's quota
/// (then EDQUOT), a larger plan lets them through; `volume_mounts` says the same; deprovision
/// takes the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_directory_mounts_holds_its_quota_and_goes_with_its_instance() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _admin) = start(dir.path()).await;
    let c = Osb::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, SMALL).await.unwrap();
    let mut body = c.bind_body(SMALL);
    body["parameters"] = serde_json::json!({"mount": "/data", "readonly": true});
    let reply = c.bind(&id, &bid, &body, false).await.unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);
    let creds = &reply.body["credentials"];
    let source = creds["mount_source"].as_str().unwrap().to_owned();
    assert_eq!(
        source,
        format!("{}:/kpaas-shared/op_{}", host(), id.replace('-', "_"))
    );
    assert_eq!(creds["quota_bytes"], 5 << 20);
    let mounts = &reply.body["volume_mounts"][0];
    assert_eq!(mounts["container_dir"], "/data");
    assert_eq!(mounts["mode"], "r");
    assert_eq!(mounts["device_type"], "shared");
    assert_eq!(mounts["device"]["mount_config"]["source"], source.as_str());

    let app = mount(&source, dir.path());
    write(&app.0.join("fits"), 1 << 20).unwrap();
    let (went, err) = fill(&app.0.join("too-much"), 40 << 20);
    let err = err.unwrap_or_else(|| panic!("{went} bytes went into a 5 MiB quota"));
    assert_eq!(err.raw_os_error(), Some(122), "EDQUOT, got {err}");
    assert!(went < 12 << 20, "{went} bytes went in before the refusal");
    std::fs::remove_file(app.0.join("too-much")).unwrap();
    let up = serde_json::json!({"service_id": SERVICE, "plan_id": MEDIUM});
    assert_eq!(c.update(&id, &up, false).await.unwrap().status, 200);
    write(&app.0.join("now-fits"), 6 << 20).unwrap();
    drop(app);

    c.unbind_done(&id, &bid, SMALL).await.unwrap();
    c.deprovision_done(&id, MEDIUM).await.unwrap();
    let admin = dir.path().join("kpaas-shared");
    assert!(
        !admin.join(format!("op_{}", id.replace('-', "_"))).exists(),
        "the directory outlived its instance"
    );
}

/// A volume Gluster does not have: `/ready` and every call that needs it answer 503 naming
/// it, nothing is recorded, and what the store holds is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_volume_is_a_503_naming_it_and_nothing_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, admin) = start(dir.path()).await;
    let c = Osb::new(target(&broker));
    let id = fresh_id();
    c.provision_ready(&id, SMALL).await.unwrap();
    drop((broker, admin));

    let (broker, _admin) = start_on(dir.path(), "kpaas-missing", "/health").await;
    // The backend has no secret of its own; the broker's password must not show either.
    let secret = osb_testkit::PASSWORD;
    check_backend_down(&target(&broker), &id, &fresh_id(), "kpaas-missing", secret)
        .await
        .unwrap();
    drop(broker);

    let (broker, _admin) = start(dir.path()).await;
    Osb::new(target(&broker))
        .deprovision_done(&id, SMALL)
        .await
        .unwrap();
}

/// Ids that are no GUIDs get plain directory names of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_ids_get_plain_directories_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _admin) = start(dir.path()).await;
    let c = Osb::new(target(&broker));
    for bad in ["a%2Fb", "..%2F..", "a%20b"] {
        let reply = c
            .provision(bad, &c.provision_body(SMALL), false)
            .await
            .unwrap();
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
    }
    let mut seen = std::collections::HashSet::new();
    for id in ["Default", "default", "a.b", &"x".repeat(120)] {
        c.provision_ready(id, SMALL).await.unwrap();
        let creds = c.bind_ready(id, id, SMALL).await.unwrap()["credentials"].clone();
        let path = creds["path"].as_str().unwrap().to_owned();
        let name = path.trim_start_matches('/');
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{id:?} got {path:?}"
        );
        assert!(seen.insert(path.clone()), "{id:?} reused {path:?}");
        c.unbind_done(id, id, SMALL).await.unwrap();
        c.deprovision_done(id, SMALL).await.unwrap();
    }
}
