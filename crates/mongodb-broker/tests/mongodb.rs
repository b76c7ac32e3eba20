//! mongodb-broker, black box: the real binary against the MongoDB server of
//! `scripts/backends.sh`, driven over HTTP; what it made is checked with the official driver.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::future::join_all;
use mongodb::Client;
use mongodb::bson::{Document, doc};
use osb_testkit::proxy::Proxy;
use osb_testkit::{
    BrokerProcess, Client as Osb, PLAIN_CATALOG_SKIPS, Target, check_all, check_backend_down,
    check_restart, fresh_id, start_broker,
};

const SERVICE: &str = "Mongo-DB";
const PLAN: &str = "default-plan";
const LARGE: &str = "3b177f18-eed0-484b-968d-4bd106d558cc";
const ADMIN_URI: &str = "mongodb://kpaas_admin:Kpaas-mongo-admin-1@127.0.0.1:27017/?authSource=admin&directConnection=true";

fn deploy_config() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mongodb-broker.toml")
}

/// The shipped config with each `(from, to)` replaced, in `dir`.
fn config_edited(dir: &Path, edits: &[(&str, &str)]) -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(deploy_config()).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "deploy config lacks {from:?}");
        text = text.replace(from, to);
    }
    let path = dir.join("mongodb-broker.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn start(dir: &Path, config: &Path) -> BrokerProcess {
    start_with(dir, config, ADMIN_URI, "/ready").await
}

/// Starts the broker with `admin_uri`, waiting until `path` answers 200.
async fn start_with(dir: &Path, config: &Path, admin_uri: &str, path: &str) -> BrokerProcess {
    let binary = Path::new(env!("CARGO_BIN_EXE_mongodb-broker"));
    let env = [("MONGODB_BROKER_ADMIN_URI", admin_uri)];
    start_broker(binary, config, dir, &env, path).await.unwrap()
}

fn target(broker: &BrokerProcess) -> Target {
    let mut t = broker.target(SERVICE, PLAN);
    t.update_plan_id = Some(LARGE.into());
    t.race_width = 8;
    t.skip = PLAIN_CATALOG_SKIPS.to_vec();
    t
}

async fn admin() -> Client {
    Client::with_uri_str(ADMIN_URI).await.unwrap()
}

fn database_of(id: &str) -> String {
    format!("op_{}", id.replace('-', "_"))
}

/// The users the server holds in `db`.
async fn users_in(db: &str) -> Vec<String> {
    let info = admin()
        .await
        .database(db)
        .run_command(doc! {"usersInfo": 1})
        .await
        .unwrap();
    info.get_array("users")
        .unwrap()
        .iter()
        .map(|u| u.as_document().unwrap().get_str("user").unwrap().to_owned())
        .collect()
}

fn code(err: &mongodb::error::Error) -> Option<i32> {
    use mongodb::error::{ErrorKind, WriteFailure};
    match err.kind.as_ref() {
        ErrorKind::Command(e) => Some(e.code),
        ErrorKind::Write(WriteFailure::WriteError(e)) => Some(e.code),
        // A refused login: the server's own code is on the error the driver wraps.
        ErrorKind::Authentication { .. } => {
            let source = std::error::Error::source(err)?;
            source
                .downcast_ref::<mongodb::error::Error>()
                .or_else(|| {
                    source
                        .downcast_ref::<Box<mongodb::error::Error>>()
                        .map(|b| &**b)
                })
                .and_then(code)
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testkit_rules_hold() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &deploy_config()).await;
    check_all(&target(&broker)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_between_provision_and_bind_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &deploy_config()).await;
    let t = target(&broker);
    let restarted = std::sync::Mutex::new(None);
    check_restart(&t, || async {
        drop(broker);
        let again = start(dir.path(), &deploy_config()).await;
        let t = target(&again);
        *restarted.lock().unwrap() = Some(again);
        Ok(t)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_work_on_their_database_only_and_nothing_is_left_after_teardown() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &deploy_config()).await;
    let c = Osb::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN).await.unwrap();
    let creds = c.bind_ready(&id, &bid, PLAN).await.unwrap()["credentials"].clone();
    let db = database_of(&id);
    assert_eq!(creds["database"], db.as_str());
    assert_eq!(creds["name"], db.as_str());
    assert_eq!(creds["hosts"], serde_json::json!(["127.0.0.1:27017"]));
    assert_eq!(
        (creds["host"].as_str(), creds["port"].as_u64()),
        (Some("127.0.0.1"), Some(27017))
    );
    let uri = creds["uri"].as_str().unwrap();
    assert!(uri.contains(&format!("/{db}?authSource={db}")), "{uri}");
    assert!(uri.contains("directConnection=true"), "{uri}");

    let app = Client::with_uri_str(uri).await.unwrap();
    let docs = app.database(&db).collection::<Document>("things");
    docs.insert_one(doc! {"n": 1}).await.unwrap();
    assert_eq!(
        docs.find_one(doc! {"n": 1})
            .await
            .unwrap()
            .unwrap()
            .get_i32("n"),
        Ok(1)
    );
    let elsewhere = app
        .database("someone_else")
        .collection::<Document>("x")
        .insert_one(doc! {"n": 1})
        .await
        .unwrap_err();
    assert_eq!(code(&elsewhere), Some(13), "{elsewhere}");
    // Another instance's database and the broker's own markers are out of reach too.
    let other = fresh_id();
    c.provision_ready(&other, PLAN).await.unwrap();
    let (other_db, other_bid) = (database_of(&other), fresh_id());
    let other_creds = c.bind_ready(&other, &other_bid, PLAN).await.unwrap()["credentials"].clone();
    let neighbour = Client::with_uri_str(other_creds["uri"].as_str().unwrap())
        .await
        .unwrap();
    neighbour
        .database(&other_db)
        .collection::<Document>("theirs")
        .insert_one(doc! {"secret": 1})
        .await
        .unwrap();
    for (database, collection) in [(other_db.as_str(), "theirs"), ("kpaas_broker", "owners")] {
        let refused = app
            .database(database)
            .collection::<Document>(collection)
            .find_one(doc! {})
            .await
            .unwrap_err();
        assert_eq!(code(&refused), Some(13), "{database}: {refused}");
    }
    let visible = app
        .database("admin")
        .run_command(doc! {"listDatabases": 1, "nameOnly": true, "authorizedDatabases": true})
        .await
        .unwrap();
    let names: Vec<&str> = visible
        .get_array("databases")
        .unwrap()
        .iter()
        .filter_map(|d| d.as_document()?.get_str("name").ok())
        .collect();
    assert!(
        !names.contains(&other_db.as_str()) && !names.contains(&"kpaas_broker"),
        "{names:?}"
    );
    c.unbind_done(&other, &other_bid, PLAN).await.unwrap();
    c.deprovision_done(&other, PLAN).await.unwrap();
    assert_eq!(users_in(&db).await.len(), 1);

    c.unbind_done(&id, &bid, PLAN).await.unwrap();
    let fresh = Client::with_uri_str(uri).await.unwrap();
    let refused = fresh
        .database(&db)
        .collection::<Document>("things")
        .find_one(doc! {})
        .await
        .unwrap_err();
    assert_eq!(code(&refused), Some(18), "{refused}");
    assert!(users_in(&db).await.is_empty());

    c.bind_ready(&id, &fresh_id(), PLAN).await.unwrap();
    c.deprovision_done(&id, PLAN).await.unwrap();
    let names = admin().await.list_database_names().await.unwrap();
    assert!(!names.contains(&db), "{names:?}");
    assert!(
        users_in(&db).await.is_empty(),
        "a binding's user outlived deprovision"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_over_quota_reads_and_deletes_until_under_the_thaw_mark() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_edited(
        dir.path(),
        &[
            ("quota_mb = 100", "quota_mb = 1"),
            ("quota_check_secs = 30", "quota_check_secs = 1"),
        ],
    );
    let broker = start(dir.path(), &config).await;
    let c = Osb::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN).await.unwrap();
    let uri = c.bind_ready(&id, &bid, PLAN).await.unwrap()["credentials"]["uri"]
        .as_str()
        .unwrap()
        .to_owned();
    let app = Client::with_uri_str(&uri).await.unwrap();
    let docs = app
        .database(&database_of(&id))
        .collection::<Document>("blobs");
    let blob = "x".repeat(64 * 1024);
    for i in 0..24 {
        docs.insert_one(doc! {"i": i, "blob": &blob}).await.unwrap();
    }
    let writes = |ok: bool| {
        let docs = docs.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let result = docs.insert_one(doc! {"probe": 1}).await;
                if result.is_ok() == ok {
                    return result.err();
                }
                assert!(Instant::now() < deadline, "writes never became {ok}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let refused = writes(false).await.unwrap();
    assert_eq!(code(&refused), Some(13), "{refused}");
    assert!(
        docs.find_one(doc! {"i": 3}).await.unwrap().is_some(),
        "reads still work"
    );
    let shown = c.fetch_instance(&id).await.unwrap();
    assert_eq!(
        shown.body["metadata"]["attributes"]["storage_over_quota"], true,
        "{}",
        shown.body
    );
    let (frozen, metrics) = broker
        .metric("mongodb_broker_instances_over_quota")
        .await
        .unwrap();
    let frozen = frozen.unwrap_or_else(|| panic!("no over-quota gauge: {metrics}"));
    assert!(frozen >= 1.0, "{metrics}");
    // All bindings gone and a new one made: the instance is still frozen for it at once
    // (the state is the instance's, kept on its marker, not its users').
    c.unbind_done(&id, &bid, PLAN).await.unwrap();
    let bid = fresh_id();
    let uri = c.bind_ready(&id, &bid, PLAN).await.unwrap()["credentials"]["uri"]
        .as_str()
        .unwrap()
        .to_owned();
    let app = Client::with_uri_str(&uri).await.unwrap();
    let docs = app
        .database(&database_of(&id))
        .collection::<Document>("blobs");
    let refused = docs.insert_one(doc! {"probe": 1}).await.unwrap_err();
    assert_eq!(
        code(&refused),
        Some(13),
        "a new binding of a frozen instance wrote: {refused}"
    );
    // The app removes data itself. Down to 15 of 24 blobs (about 94% of the quota): between the
    // marks, it stays frozen over several checks (one a second).
    docs.delete_many(doc! {"i": {"$gte": 15}}).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let still = docs.insert_one(doc! {"probe": 1}).await.unwrap_err();
    assert_eq!(
        code(&still),
        Some(13),
        "thawed above the thaw mark: {still}"
    );
    // 14 blobs (about 88%): under the thaw mark, writes come back.
    docs.delete_many(doc! {"i": 14}).await.unwrap();
    let writes = |ok: bool| {
        let docs = docs.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while docs.insert_one(doc! {"probe": 1}).await.is_ok() != ok {
                assert!(Instant::now() < deadline, "writes never became {ok}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    writes(true).await;
    c.unbind_done(&id, &bid, PLAN).await.unwrap();
    c.deprovision_done(&id, PLAN).await.unwrap();
}

/// The server stops: the broker says which one and records nothing; it starts again: all
/// that was made is there and the broker works on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_a_503_naming_it_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(27017).await;
    let uri = format!(
        "mongodb://kpaas_admin:Kpaas-mongo-admin-1@127.0.0.1:{}/?authSource=admin&directConnection=true&serverSelectionTimeoutMS=1500",
        proxy.port
    );
    let broker = start_with(dir.path(), &deploy_config(), &uri, "/ready").await;
    let c = Osb::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN).await.unwrap();
    let creds = c.bind_ready(&id, &bid, PLAN).await.unwrap()["credentials"].clone();
    let app_uri = creds["uri"].as_str().unwrap().to_owned();
    let app = Client::with_uri_str(&app_uri).await.unwrap();
    let db = database_of(&id);
    let docs = app.database(&db).collection::<Document>("kept");
    docs.insert_one(doc! {"n": 7}).await.unwrap();

    proxy.set_down(true);
    let other_bid = fresh_id();
    check_backend_down(
        &target(&broker),
        &id,
        &other_bid,
        "mongodb-1",
        "Kpaas-mongo-admin-1",
    )
    .await
    .unwrap();

    proxy.set_down(false);
    c.bind_ready(&id, &other_bid, PLAN).await.unwrap();
    let app = Client::with_uri_str(&app_uri).await.unwrap();
    let kept = app.database(&db).collection::<Document>("kept");
    assert!(
        kept.find_one(doc! {"n": 7}).await.unwrap().is_some(),
        "data lost"
    );
    c.unbind_done(&id, &bid, PLAN).await.unwrap();
    c.unbind_done(&id, &other_bid, PLAN).await.unwrap();
    c.deprovision_done(&id, PLAN).await.unwrap();
}

/// Ids that are not plain are refused before anything reaches the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_never_reach_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &deploy_config()).await;
    let c = Osb::new(target(&broker));
    for bad in [
        "a%2Fb",
        "a%24b",
        "a.%22b",
        "%00",
        "a%20b",
        "admin%3Fx",
        "a%2Ab",
    ] {
        let reply = c
            .provision(bad, &c.provision_body(PLAN), false)
            .await
            .unwrap();
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
    }
    let id = fresh_id();
    c.provision_ready(&id, PLAN).await.unwrap();
    for bad in ["u%2Fv", "u%24v", "%00"] {
        let reply = c.bind(&id, bad, &c.bind_body(PLAN), false).await.unwrap();
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
    }
    assert!(users_in(&database_of(&id)).await.is_empty());
    c.deprovision_done(&id, PLAN).await.unwrap();
    // Nothing was marked for the refused ids (a name is marked before anything is made).
    let owners = admin()
        .await
        .database("kpaas_broker")
        .collection::<Document>("owners");
    for refused in ["a/b", "a$b", "a.\"b", "a b", "admin?x", "a*b", "u/v", "u$v"] {
        let marked = owners.find_one(doc! {"owner_id": refused}).await.unwrap();
        assert!(
            marked.is_none(),
            "{refused:?} reached the server: {marked:?}"
        );
    }
}

/// 50 provision+bind pairs at once: every one works, each user holding `readWrite` on its own
/// database and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_provision_and_bind_pairs_all_work() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &deploy_config()).await;
    let c = Osb::new(target(&broker));
    let pairs: Vec<(String, String)> = (0..50).map(|_| (fresh_id(), fresh_id())).collect();
    let made = join_all(pairs.iter().map(|(id, bid)| {
        let c = c.clone();
        async move {
            c.provision_ready(id, PLAN).await?;
            c.bind_ready(id, bid, PLAN).await
        }
    }))
    .await;
    for ((id, _), body) in pairs.iter().zip(made) {
        let body = body.unwrap();
        let db = database_of(id);
        assert_eq!(body["credentials"]["database"], db.as_str());
        let info = admin()
            .await
            .database(&db)
            .run_command(doc! {"usersInfo": body["credentials"]["username"].as_str().unwrap()})
            .await
            .unwrap();
        let user = info.get_array("users").unwrap()[0]
            .as_document()
            .unwrap()
            .clone();
        assert_eq!(
            user.get_array("roles").unwrap(),
            &vec![mongodb::bson::Bson::Document(
                doc! {"role": "readWrite", "db": &db}
            )],
            "{db}"
        );
    }
    let done = join_all(pairs.iter().map(|(id, bid)| {
        let c = c.clone();
        async move {
            c.unbind_done(id, bid, PLAN).await?;
            c.deprovision_done(id, PLAN).await
        }
    }))
    .await;
    assert!(done.iter().all(Result::is_ok), "{done:?}");
    for (id, _) in &pairs {
        assert!(users_in(&database_of(id)).await.is_empty());
    }
}

/// Runs the broker's command line against the state store in `dir`.
fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    let binary = Path::new(env!("CARGO_BIN_EXE_mongodb-broker"));
    let store = osb_testkit::sqlite_store(dir);
    osb_testkit::broker_command(binary, &deploy_config(), &store)
        .args(args)
        .env("MONGODB_BROKER_ADMIN_URI", ADMIN_URI)
        .output()
        .unwrap()
}

/// Leftovers of a crash (a marked database and user no record claims) are listed and removed;
/// a database named like the broker's without a marker is listed and kept; what the store
/// claims is neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_listed_and_only_marked_ones_removed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &deploy_config()).await;
    let c = Osb::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN).await.unwrap();
    let creds = c.bind_ready(&id, &bid, PLAN).await.unwrap()["credentials"].clone();
    drop(broker);

    let suffix = fresh_id().replace('-', "");
    let (lost_db, lost_user, foreign_db) = (
        format!("op_lost{}", &suffix[..12]),
        format!("b_lost{}", &suffix[..12]),
        format!("op_foreign{}", &suffix[..12]),
    );
    let (lost_instance, lost_binding) = (fresh_id(), fresh_id());
    let admin = admin().await;
    let two_hours_ago = mongodb::bson::DateTime::from_millis(
        mongodb::bson::DateTime::now().timestamp_millis() - 7_200_000,
    );
    let owners = admin
        .database("kpaas_broker")
        .collection::<Document>("owners");
    owners
        .insert_many([
            doc! {"_id": format!("database:{lost_db}"), "kind": "database", "name": &lost_db,
                "platform": "default", "owner_id": &lost_instance, "parent": "", "created_at": two_hours_ago,
                "made": true},
            doc! {"_id": format!("user:{lost_user}"), "kind": "user", "name": &lost_user,
                "platform": "default", "owner_id": &lost_binding, "parent": &lost_db, "created_at": two_hours_ago,
                "made": true},
        ])
        .await
        .unwrap();
    for db in [&lost_db, &foreign_db] {
        admin
            .database(db)
            .collection::<Document>("x")
            .insert_one(doc! {"n": 1})
            .await
            .unwrap();
    }
    admin
        .database(&lost_db)
        .run_command(
            doc! {"createUser": &lost_user, "pwd": "Lost-pass-1-Lost-pass-1",
            "roles": [{"role": "readWrite", "db": &lost_db}], "mechanisms": ["SCRAM-SHA-256"]},
        )
        .await
        .unwrap();

    let rows = osb_testkit::orphan_rows(&run(dir.path(), &["orphans", "--json"]));
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).cloned();
    let db_row = row(&lost_db).expect("the lost database is listed");
    assert_eq!(
        (db_row["for"].as_str(), db_row["id"].as_str()),
        (Some("instance"), Some(lost_instance.as_str()))
    );
    assert_eq!(db_row["removable"], true);
    assert_eq!(
        row(&lost_user).expect("the lost user is listed")["removable"],
        true
    );
    assert_eq!(
        row(&foreign_db).expect("the unmarked database is listed")["removable"],
        false
    );
    assert!(
        row(creds["name"].as_str().unwrap()).is_none()
            && row(creds["username"].as_str().unwrap()).is_none(),
        "a claimed object is listed"
    );

    // Other tests' leftovers on the shared server count too: --force past the share guard.
    let deleted = run(dir.path(), &["orphans", "--delete", "--force", "--json"]);
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    let names = admin.list_database_names().await.unwrap();
    assert!(
        !names.contains(&lost_db),
        "the lost database survived --delete"
    );
    assert!(
        names.contains(&foreign_db),
        "an unmarked database was removed"
    );
    assert!(
        users_in(&lost_db).await.is_empty(),
        "the lost user survived --delete"
    );
    assert!(
        owners
            .find_one(doc! {"owner_id": &lost_instance})
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        users_in(&database_of(&id)).await.len(),
        1,
        "a claimed user was removed"
    );
    admin.database(&foreign_db).drop().await.unwrap();

    let broker = start(dir.path(), &deploy_config()).await;
    let c = Osb::new(target(&broker));
    c.unbind_done(&id, &bid, PLAN).await.unwrap();
    c.deprovision_done(&id, PLAN).await.unwrap();
}

/// An attempt that marked a name and died before checking it leaves a marker without `made`:
/// the retry still finds the same-named database someone else made, refuses it (409) and
/// leaves it as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_never_adopts_a_database_its_first_attempt_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), &deploy_config()).await;
    let c = Osb::new(target(&broker));
    let id = fresh_id();
    let db = database_of(&id);
    let admin = admin().await;
    admin
        .database("kpaas_broker")
        .collection::<Document>("owners")
        .insert_one(
            doc! {"_id": format!("database:{db}"), "kind": "database", "name": &db,
            "platform": "default", "owner_id": &id, "parent": "",
            "created_at": mongodb::bson::DateTime::now()},
        )
        .await
        .unwrap();
    let theirs = admin.database(&db).collection::<Document>("theirs");
    theirs.insert_one(doc! {"precious": true}).await.unwrap();
    let reply = c
        .provision(&id, &c.provision_body(PLAN), false)
        .await
        .unwrap();
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(
        theirs
            .find_one(doc! {"precious": true})
            .await
            .unwrap()
            .is_some()
    );
    // The refused name's marker is gone; the foreign database stays.
    let gone = admin
        .database("kpaas_broker")
        .collection::<Document>("owners")
        .find_one(doc! {"_id": format!("database:{db}")})
        .await
        .unwrap();
    assert!(gone.is_none(), "{gone:?}");
    admin.database(&db).drop().await.unwrap();
}
