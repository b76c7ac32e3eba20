//! glusterfs-broker, black box: the real binary against the local glusterd and its volume
//! `kpaas-shared` (`scripts/backends.sh`), driven over HTTP; what it made is mounted over FUSE
//! with the bound credentials, and unmounted whatever happens.

mod support;

use std::path::Path;
use std::process::Command;

use osb_testkit::{
    BrokerProcess, Client as Osb, PLAIN_CATALOG_SKIPS, Target, broker_command, check_all,
    check_backend_down, check_restart, fresh_id, orphan_rows, start_broker,
};
use support::{
    Mounted, TestVolume, deploy_config, fill, host, mount_as_client, refused_as_client, write,
};

const SERVICE: &str = "642e1a24-21c8-450d-b658-88089f34fa0c";
const SMALL: &str = "b777040f-0d08-4ad4-a50a-614cf1d4b985";
const MEDIUM: &str = "da5d9ba3-b63f-4311-b0eb-82cfc56ffa82";

/// The deploy config with this host's name as the server and an admin mount under `dir`.
async fn start(dir: &Path) -> (BrokerProcess, Mounted) {
    start_with(dir, "kpaas-shared", |c| c, "/ready").await
}

/// [`start`] on `volume`, the config changed by `edit`, waiting until `path` answers.
async fn start_with(
    dir: &Path,
    volume: &str,
    edit: impl FnOnce(String) -> String,
    path: &str,
) -> (BrokerProcess, Mounted) {
    let text = deploy_config(volume, &dir.join(volume));
    let config = dir.join("glusterfs-broker.toml");
    std::fs::write(&config, edit(text)).unwrap();
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

/// Mounts `source` (`host:/volume/dir`) at a new directory under `dir`, if the servers let
/// this host in.
fn try_mount(source: &str, dir: &Path) -> Option<Mounted> {
    let at = dir.join(format!("m{}", fresh_id()));
    std::fs::create_dir_all(&at).unwrap();
    let status = Command::new("mount")
        .args(["-t", "glusterfs", source])
        .arg(&at)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    // mount.glusterfs can say yes and leave nothing mounted when the server refused.
    let mounted = status.success()
        && std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(at.to_str().unwrap()));
    let guard = Mounted(at);
    mounted.then_some(guard)
}

fn mount(source: &str, dir: &Path) -> Mounted {
    try_mount(source, dir).unwrap_or_else(|| panic!("mount {source}"))
}

/// The name of the directory of instance `id` on the shared volume.
fn dir_of(id: &str) -> String {
    format!("op_{}", id.replace('-', "_"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testkit_rules_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _admin) = start(dir.path()).await;
    check_all(&target(&broker)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_between_provision_and_bind_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, admin) = start(dir.path()).await;
    let t = target(&broker);
    let restarted = std::sync::Mutex::new(None);
    check_restart(&t, || async {
        drop((broker, admin));
        let again = start(dir.path()).await;
        let t = target(&again.0);
        *restarted.lock().unwrap() = Some(again);
        Ok(t)
    })
    .await
    .unwrap();
}

/// Starts a second replica of the broker whose config and state store are in `dir`.
async fn second_replica(dir: &Path) -> BrokerProcess {
    let binary = Path::new(env!("CARGO_BIN_EXE_glusterfs-broker"));
    let config = dir.join("glusterfs-broker.toml");
    let id = [("KPAAS_BROKER__REPLICA_ID", "replica-2")];
    start_broker(binary, &config, dir, &id, "/ready")
        .await
        .unwrap()
}

/// With `open_to` (the app networks) set, every directory gets an entry for them and the
/// volume root none: a client that is no Gluster server mounts a directory, never the root
/// that reaches every directory; through a directory's mount it sees that directory's files
/// only; two replicas restricting one directory at once lose no write; when the instances go,
/// so do the entries. On a volume of the test's own: the option is volume-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reaches_its_directory_and_never_the_volume_root_or_another_directory() {
    let dir = tempfile::tempdir().unwrap();
    let volume = TestVolume::create(dir.path());
    let vol = volume.name.as_str();
    let (broker, _admin) = start_with(
        dir.path(),
        vol,
        |c| {
            c.replace(
                "upkeep_secs = 60",
                "upkeep_secs = 60\nopen_to = [\"127.0.0.0/8\"]",
            )
        },
        "/ready",
    )
    .await;
    let c = Osb::new(target(&broker));
    let (a, b) = (fresh_id(), fresh_id());
    for id in [&a, &b] {
        c.provision_ready(id, SMALL).await.unwrap();
        c.bind_ready(id, id, SMALL).await.unwrap();
    }
    assert_eq!(
        entries(vol),
        set_of(&[
            format!("/{}(127.0.0.0/8)", dir_of(&a)),
            format!("/{}(127.0.0.0/8)", dir_of(&b))
        ])
    );
    assert!(
        refused_as_client(vol, "", dir.path()),
        "a client mounted the volume root"
    );
    let app_a = mount_as_client(vol, &dir_of(&a), dir.path()).expect("a's directory");
    let app_b = mount_as_client(vol, &dir_of(&b), dir.path()).expect("b's directory");
    std::fs::write(app_b.0.join("secret"), b"b's").unwrap();
    std::fs::write(app_a.0.join("mine"), b"a's").unwrap();
    let names: Vec<String> = std::fs::read_dir(&app_a.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["mine"], "a's mount shows only a's files");
    let admin = dir.path().join(vol);
    assert_eq!(
        std::fs::read(admin.join(dir_of(&a)).join("mine")).unwrap(),
        b"a's"
    );
    assert!(
        !admin.join("mine").exists(),
        "a's write escaped its directory"
    );
    drop((app_a, app_b));

    // Two replicas on one store restrict a's directory at once (upkeep far off, so nothing
    // repairs a lost write before the check): none of the writes is lost, and when the
    // restrictions go, the open entry comes back.
    let replica = second_replica(dir.path()).await;
    let c2 = Osb::new(target(&replica));
    let many: Vec<(String, String)> = (1..=6)
        .map(|i| (fresh_id(), format!("10.253.0.{i}")))
        .collect();
    let granted = futures::future::join_all(many.iter().enumerate().map(|(i, (bid, addr))| {
        let c = if i % 2 == 0 { &c } else { &c2 };
        let mut body = c.bind_body(SMALL);
        body["parameters"] = serde_json::json!({ "allow": addr });
        let a = &a;
        async move { c.bind(a, bid, &body, false).await }
    }))
    .await;
    for reply in granted {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    let all: Vec<&str> = many.iter().map(|(_, addr)| addr.as_str()).collect();
    assert!(
        entries(vol).contains(&format!("/{}({})", dir_of(&a), all.join("|"))),
        "a write was lost: {}",
        auth_allow(vol)
    );
    futures::future::join_all(many.iter().enumerate().map(|(i, (bid, _))| {
        let c = if i % 2 == 0 { &c } else { &c2 };
        let a = &a;
        async move { c.unbind_done(a, bid, SMALL).await.unwrap() }
    }))
    .await;
    assert_eq!(
        entries(vol),
        set_of(&[
            format!("/{}(127.0.0.0/8)", dir_of(&a)),
            format!("/{}(127.0.0.0/8)", dir_of(&b))
        ])
    );
    drop(replica);

    for id in [&a, &b] {
        c.unbind_done(id, id, SMALL).await.unwrap();
        c.deprovision_done(id, SMALL).await.unwrap();
    }
    assert_eq!(auth_allow(vol), "*", "entries outlived their instances");
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
    assert_eq!(source, format!("{}:/kpaas-shared/{}", host(), dir_of(&id)));
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
        !admin.join(dir_of(&id)).exists(),
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

    let (broker, _admin) = start_with(dir.path(), "kpaas-missing", |c| c, "/health").await;
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
    // Apart from every other run's (the volume outlives a run that failed half-way): ids that
    // differ only in case, hold a dot, and one too long for a plain name.
    let run = &fresh_id()[..8];
    let ids = [
        format!("Odd{run}"),
        format!("odd{run}"),
        format!("a.{run}"),
        format!("{run}{}", "x".repeat(120)),
    ];
    for id in ids.iter().map(String::as_str) {
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

/// `auth.allow` of `volume`, as Gluster reports it ("" when unset).
fn auth_allow(volume: &str) -> String {
    let out = Command::new("gluster")
        .args(["--mode=script", "volume", "get", volume, "auth.allow"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("auth.allow"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// The entries of `volume`'s `auth.allow`, in any order.
fn entries(volume: &str) -> std::collections::BTreeSet<String> {
    auth_allow(volume).split(',').map(str::to_owned).collect()
}

fn set_of(entries: &[String]) -> std::collections::BTreeSet<String> {
    entries.iter().cloned().collect()
}

/// Sets `volume`'s `auth.allow` behind the broker's back (a write lost to a crash).
fn set_auth_allow(volume: &str, value: &str) {
    let status = Command::new("gluster")
        .args([
            "--mode=script",
            "volume",
            "set",
            volume,
            "auth.allow",
            value,
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// `allow` lets only the named clients mount the directory, as a client that is no Gluster
/// server sees it: bindings add their clients to the volume's `auth.allow`, the volume's other
/// directories stay mountable and its root does not while one is restricted, unbind takes back
/// what no other binding holds and cuts the client's mount off, upkeep puts back an entry lost
/// behind the broker's back, and a client list that is not one is refused with nothing made.
/// On a volume of the test's own: the option is volume-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_lets_only_the_named_clients_mount_until_unbind() {
    let dir = tempfile::tempdir().unwrap();
    let volume = TestVolume::create(dir.path());
    let vol = volume.name.as_str();
    let (broker, _admin) = start_with(
        dir.path(),
        vol,
        |c| c.replace("upkeep_secs = 60", "upkeep_secs = 1"),
        "/ready",
    )
    .await;
    let c = Osb::new(target(&broker));
    let (id, other) = (fresh_id(), fresh_id());
    let (name, open) = (dir_of(&id), dir_of(&other));
    for i in [&id, &other] {
        c.provision_ready(i, SMALL).await.unwrap();
    }
    let client = |sub: &str| mount_as_client(vol, sub, dir.path());
    let refused = |sub: &str| refused_as_client(vol, sub, dir.path());
    assert!(client(&name).is_some(), "nothing restricted, yet refused");
    let bind = |allow: serde_json::Value| {
        let mut body = c.bind_body(SMALL);
        body["parameters"] = serde_json::json!({ "allow": allow });
        body
    };

    for bad in [
        serde_json::json!("10.0.0.*"),
        serde_json::json!(["127.0.0.1", "x),/(*"]),
        serde_json::json!([]),
        serde_json::json!(7),
    ] {
        let bid = fresh_id();
        let reply = c.bind(&id, &bid, &bind(bad.clone()), false).await.unwrap();
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert_eq!(c.fetch_binding(&id, &bid).await.unwrap().status, 404);
    }
    assert_eq!(auth_allow(vol), "*", "a refused bind changed auth.allow");

    let (far, near) = (fresh_id(), fresh_id());
    let reply = c
        .bind(
            &id,
            &far,
            &bind(serde_json::json!(["10.254.0.0/16"])),
            false,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(
        entries(vol),
        set_of(&[format!("/{name}(10.254.0.0/16)"), format!("/{open}(*)")])
    );
    assert!(refused(&name), "a client off the list mounted");
    assert!(client(&open).is_some(), "another directory was shut");
    assert!(
        refused(""),
        "the volume root is open while a directory is restricted"
    );

    let reply = c
        .bind(&id, &near, &bind(serde_json::json!("127.0.0.1")), false)
        .await
        .unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);
    let app = client(&name).expect("a listed client could not mount");
    std::fs::write(app.0.join("f"), b"x").unwrap();

    // A write lost behind the broker's back: upkeep puts the entry back.
    set_auth_allow(vol, &format!("/{open}(*)"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !auth_allow(vol).contains(&format!("/{name}(")) {
        assert!(
            std::time::Instant::now() < deadline,
            "upkeep never put the entry back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        entries(vol),
        set_of(&[
            format!("/{name}(10.254.0.0/16|127.0.0.1)"),
            format!("/{open}(*)")
        ])
    );

    c.unbind_done(&id, &near, SMALL).await.unwrap();
    assert_eq!(
        entries(vol),
        set_of(&[format!("/{name}(10.254.0.0/16)"), format!("/{open}(*)")])
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read(app.0.join("f")).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the unbound client still reads the directory"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    drop(app);
    assert!(refused(&name), "unbind left the client in");

    // The open instance goes while a restriction stands: its entry goes with it.
    c.deprovision_done(&other, SMALL).await.unwrap();
    assert_eq!(entries(vol), set_of(&[format!("/{name}(10.254.0.0/16)")]));
    c.unbind_done(&id, &far, SMALL).await.unwrap();
    assert_eq!(auth_allow(vol), "*", "entries outlived their bindings");
    assert!(client(&name).is_some(), "no restriction left, yet refused");
    c.deprovision_done(&id, SMALL).await.unwrap();
}

const DEDICATED: &str = "3f0c1c9e-7a4e-4b9a-9d3e-2f1b6c8a5d47";
const DEDICATED_LARGE: &str = "9a1e5f3c-2b7d-4c8e-a6f0-1d2e3f4a5b6c";

/// The deploy config with dedicated volumes on two brick roots under `dir`, two copies of
/// each file, an 8 MiB plan and a 64 MiB one, and quotas enforced at once.
fn dedicated_config(dir: &Path) -> impl FnOnce(String) -> String {
    let roots = format!(
        "bricks = [\"{h}:{d}/bricks-a\", \"{h}:{d}/bricks-b\"]",
        h = host(),
        d = dir.display()
    );
    move |c: String| {
        let mut c = c
            .replace(
                &format!("bricks = [\"{}:/var/lib/kpaas-gluster/dedicated\"]", host()),
                &roots,
            )
            .replace("force = false", "force = true")
            .replace("# options = {", "options = {")
            .replace(
                "quota_mb = 10240\nkind = \"dedicated\"\nreplica = 1",
                "quota_mb = 8\nkind = \"dedicated\"\nreplica = 2",
            );
        c.push_str(&format!(
            "\n[[broker.catalog.services.plans]]\nid = \"{DEDICATED_LARGE}\"\nname = \"dedicated-large\"\n\
             description = \"A larger volume\"\nfree = true\n\n\
             [glusterfs.plans.{DEDICATED_LARGE}]\nquota_mb = 64\nkind = \"dedicated\"\nreplica = 2\n"
        ));
        c
    }
}

/// What `gluster volume info <name>` says, or `None` when there is no such volume.
fn volume_info(name: &str) -> Option<String> {
    let out = Command::new("gluster")
        .args(["--mode=script", "volume", "info", name])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A dedicated plan's instance is a volume of its own, made asynchronously: two copies on the
/// configured brick roots, started, its quota on the root (EDQUOT past it, a larger plan lets
/// the write through), mounted with the bound credentials; a change to a shared plan is
/// refused; deprovision stops and deletes it and removes its bricks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_volume_is_made_held_to_its_quota_and_removed_with_its_bricks() {
    let dir = tempfile::tempdir().unwrap();
    // Brick roots are the operator's (file systems mounted there): they exist.
    for root in ["bricks-a", "bricks-b"] {
        std::fs::create_dir(dir.path().join(root)).unwrap();
    }
    let (broker, _admin) = start_with(
        dir.path(),
        "kpaas-shared",
        dedicated_config(dir.path()),
        "/ready",
    )
    .await;
    let c = Osb::new(target(&broker));
    let id = fresh_id();
    let name = dir_of(&id);

    let reply = c
        .provision(&id, &c.provision_body(DEDICATED), true)
        .await
        .unwrap();
    assert_eq!(
        reply.status, 202,
        "a volume is made asynchronously: {}",
        reply.body
    );
    let last = c
        .poll(&id, None, reply.operation().as_deref())
        .await
        .unwrap();
    assert_eq!(last.body["state"], "succeeded", "{}", last.body);
    let info = volume_info(&name).expect("no volume made");
    assert!(info.contains("Status: Started"), "{info}");
    assert!(info.contains("Number of Bricks: 1 x 2 = 2"), "{info}");
    for brick in ["bricks-a", "bricks-b"] {
        let path = format!("{}:{}/{brick}/{name}", host(), dir.path().display());
        assert!(info.contains(&path), "{path} missing from {info}");
    }
    assert!(info.contains("features.quota: on"), "{info}");

    let creds = c.bind_ready(&id, &id, DEDICATED).await.unwrap()["credentials"].clone();
    assert_eq!(creds["volume"], name.as_str());
    assert_eq!(creds["path"], "/");
    assert_eq!(creds["quota_bytes"], 8 << 20);
    let source = creds["mount_source"].as_str().unwrap().to_owned();
    assert_eq!(source, format!("{}:/{name}", host()));

    let app = mount(&source, dir.path());
    write(&app.0.join("fits"), 1 << 20).unwrap();
    let (went, err) = fill(&app.0.join("too-much"), 80 << 20);
    let err = err.unwrap_or_else(|| panic!("{went} bytes went into an 8 MiB quota"));
    assert_eq!(err.raw_os_error(), Some(122), "EDQUOT, got {err}");
    std::fs::remove_file(app.0.join("too-much")).unwrap();

    let to_shared = serde_json::json!({"service_id": SERVICE, "plan_id": SMALL});
    let refused = c.update(&id, &to_shared, true).await.unwrap();
    assert_eq!(refused.status, 422, "{}", refused.body);
    let larger = serde_json::json!({"service_id": SERVICE, "plan_id": DEDICATED_LARGE});
    let reply = c.update(&id, &larger, true).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    write(&app.0.join("now-fits"), 12 << 20).unwrap();
    drop(app);

    // `allow` on a volume of its own restricts its root.
    let restricted = fresh_id();
    let mut body = c.bind_body(DEDICATED_LARGE);
    body["parameters"] = serde_json::json!({"allow": ["10.254.0.0/16"]});
    let reply = c.bind(&id, &restricted, &body, false).await.unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(auth_allow(&name), "/(10.254.0.0/16)");
    assert!(
        refused_as_client(&name, "", dir.path()),
        "a client off the list mounted"
    );
    c.unbind_done(&id, &restricted, DEDICATED_LARGE)
        .await
        .unwrap();
    assert_eq!(auth_allow(&name), "*");
    assert!(
        mount_as_client(&name, "", dir.path()).is_some(),
        "no restriction left, yet refused"
    );

    c.unbind_done(&id, &id, DEDICATED_LARGE).await.unwrap();
    let reply = c.deprovision(&id, DEDICATED_LARGE, true).await.unwrap();
    assert_eq!(reply.status, 202, "{}", reply.body);
    let last = c
        .poll(&id, None, reply.operation().as_deref())
        .await
        .unwrap();
    assert_eq!(last.status, 410, "{}", last.body);
    assert!(
        volume_info(&name).is_none(),
        "the volume outlived its instance"
    );
    for brick in ["bricks-a", "bricks-b"] {
        let path = dir.path().join(brick).join(&name);
        assert!(!path.exists(), "{} outlived its volume", path.display());
    }
}

/// `orphans` lists a directory whose instance the store lost (claimed, made) as removable and
/// an `op_` directory nobody claims as not; `--delete` removes only the first, and never a
/// directory an instance holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_listed_and_only_claimed_ones_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, admin) = start(dir.path()).await;
    let c = Osb::new(target(&broker));
    let id = fresh_id();
    c.provision_ready(&id, SMALL).await.unwrap();
    let store = osb_testkit::sqlite_store(dir.path());
    let suffix = fresh_id().replace('-', "");
    let (lost, stray) = (
        format!("op_lost{}", &suffix[..12]),
        format!("op_stray{}", &suffix[..12]),
    );
    let claims = osb_core::claims::Claims::new();
    claims.attach(&osb_core::store::Store::connect(&store, 1).await.unwrap());
    let gone = fresh_id();
    let owner = osb_core::orphans::Owner {
        platform: "default",
        id: &gone,
        parent: "",
    };
    assert!(claims.claim("glusterfs-dirs", &lost, owner).await.unwrap());
    for name in [&lost, &stray] {
        std::fs::create_dir(admin.0.join(name)).unwrap();
        std::fs::write(admin.0.join(name).join("f"), b"x").unwrap();
    }
    drop(broker);

    let config = dir.path().join("glusterfs-broker.toml");
    let binary = Path::new(env!("CARGO_BIN_EXE_glusterfs-broker"));
    let orphans = |args: &[&str]| {
        broker_command(binary, &config, &store)
            .args(["orphans", "--older-than", "0s"])
            .args(args)
            .output()
            .unwrap()
    };
    let rows = orphan_rows(&orphans(&["--json"]));
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).cloned();
    assert_eq!(
        row(&lost).unwrap_or_else(|| panic!("the lost directory is not listed: {rows:?}"))["removable"],
        true
    );
    assert_eq!(
        row(&stray).expect("the stray directory is listed")["removable"],
        false
    );
    assert!(row(&dir_of(&id)).is_none(), "a claimed directory is listed");

    let deleted = orphans(&["--delete", "--force"]);
    assert!(
        deleted.status.success(),
        "{} {}",
        String::from_utf8_lossy(&deleted.stdout),
        String::from_utf8_lossy(&deleted.stderr)
    );
    assert!(
        !admin.0.join(&lost).exists(),
        "the lost directory is still there"
    );
    assert!(
        admin.0.join(&stray).join("f").exists(),
        "an unclaimed directory was removed"
    );
    assert!(
        admin.0.join(dir_of(&id)).exists(),
        "an instance's directory was removed"
    );
    std::fs::remove_dir_all(admin.0.join(&stray)).unwrap();

    let (broker, _admin) = start(dir.path()).await;
    Osb::new(target(&broker))
        .deprovision_done(&id, SMALL)
        .await
        .unwrap();
}

/// Twenty provisions at once on two replicas contend for glusterd's cluster lock: each gets
/// its directory and its quota, each binding mounts its own, and twenty deprovisions at once
/// leave nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_provisions_each_get_a_directory_with_its_quota() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, admin) = start(dir.path()).await;
    // Two replicas on one store: their `gluster` calls meet at glusterd's cluster lock.
    let replica = second_replica(dir.path()).await;
    let clients = [Osb::new(target(&broker)), Osb::new(target(&replica))];
    let ids: Vec<String> = (0..20).map(|_| fresh_id()).collect();
    let made = futures::future::join_all(ids.iter().enumerate().map(|(i, id)| {
        let c = &clients[i % 2];
        async move {
            c.provision_ready(id, SMALL).await?;
            c.bind_ready(id, id, SMALL).await
        }
    }))
    .await;
    let mut sources = Vec::new();
    for (id, bound) in ids.iter().zip(made) {
        let bound = bound.unwrap_or_else(|e| panic!("{id}: {e}"));
        sources.push(
            bound["credentials"]["mount_source"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let out = Command::new("gluster")
        .args(["--mode=script", "volume", "quota", "kpaas-shared", "list"])
        .output()
        .unwrap();
    let quotas = String::from_utf8_lossy(&out.stdout);
    for id in &ids {
        let line = quotas
            .lines()
            .find(|l| l.starts_with(&format!("/{} ", dir_of(id))))
            .unwrap_or_else(|| panic!("no quota for {id}"));
        assert!(line.contains("5.0MB"), "{line}");
        assert!(admin.0.join(dir_of(id)).is_dir());
    }
    // Each binding mounts its own directory (a few, to keep the test short).
    for (id, source) in ids.iter().zip(&sources).take(3) {
        let app = mount(source, dir.path());
        std::fs::write(app.0.join("who"), id).unwrap();
        assert_eq!(
            std::fs::read_to_string(admin.0.join(dir_of(id)).join("who")).unwrap(),
            *id
        );
    }
    let gone = futures::future::join_all(ids.iter().enumerate().map(|(i, id)| {
        let c = &clients[i % 2];
        async move {
            c.unbind_done(id, id, SMALL).await?;
            c.deprovision_done(id, SMALL).await
        }
    }))
    .await;
    for (id, result) in ids.iter().zip(gone) {
        result.unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(
            !admin.0.join(dir_of(id)).exists(),
            "{id}'s directory outlived it"
        );
    }
}
