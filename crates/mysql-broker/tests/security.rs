//! The security review's findings (issue #7), each reproduced against the real binary and the
//! real MariaDB servers.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mysql_async::prelude::Queryable;
use osb_core::naming::NameRule;
use osb_testkit::proxy::{Action, Proxy};
use osb_testkit::{Client, fresh_id};
use serde_json::Value;

/// The account name mysql-broker derives for a binding of the default platform.
fn account_of(binding_id: &str) -> String {
    NameRule::new("b_", 32).name("default", binding_id)
}

fn short() -> String {
    fresh_id()[..8].to_owned()
}

/// Polls the instance's last operation until it is no longer "in progress" (60 s at most).
async fn settled(c: &Client, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = c.instance_last_operation(id, None).await.unwrap();
        if last.body["state"] != "in progress" {
            return last.body;
        }
        assert!(
            Instant::now() < deadline,
            "still in progress: {}",
            last.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_differ_only_in_separators_never_share_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 0).await;
    let c = Client::new(target(&broker));
    let base = format!("tenantA{}", short());
    let (a, b) = (format!("{base}-20518"), format!("{base}_20518"));
    c.provision_ready(&a, PLAN1).await.unwrap();
    // Before the fix this was a 201 "retried provision" of a's database.
    c.provision_ready(&b, PLAN1).await.unwrap();
    let creds_a = c.bind_ready(&a, &fresh_id(), PLAN1).await.unwrap()["credentials"].clone();
    let creds_b = c.bind_ready(&b, &fresh_id(), PLAN1).await.unwrap()["credentials"].clone();
    let (db_a, db_b) = (
        creds_a["name"].as_str().unwrap(),
        creds_b["name"].as_str().unwrap(),
    );
    assert_ne!(db_a, db_b);

    let mut app_a = mysql_async::Conn::from_url(creds_a["uri"].as_str().unwrap())
        .await
        .unwrap();
    app_a
        .query_drop("CREATE TABLE secret (v VARCHAR(20)); INSERT INTO secret VALUES ('a-data')")
        .await
        .unwrap();
    let mut app_b = mysql_async::Conn::from_url(creds_b["uri"].as_str().unwrap())
        .await
        .unwrap();
    let seen: Vec<String> = app_b.query("SHOW DATABASES").await.unwrap();
    assert!(!seen.iter().any(|d| d == db_a), "{seen:?}");
    let denied = app_b
        .query_drop(format!("SELECT * FROM `{db_a}`.secret"))
        .await
        .unwrap_err();
    assert!(
        matches!(server_code(&denied), Some(1044 | 1142)),
        "{denied}"
    );
    drop(app_b);

    c.deprovision_done(&b, PLAN1).await.unwrap();
    let kept: Vec<String> = app_a.query("SELECT v FROM secret").await.unwrap();
    assert_eq!(kept, ["a-data"], "deprovisioning b touched a's data");
    drop(app_a);
    c.deprovision_done(&a, PLAN1).await.unwrap();
    assert!(!databases().await.iter().any(|d| d == db_a || d == db_b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_differ_in_case_are_two_instances_on_a_mariadb_store() {
    let dir = tempfile::tempdir().unwrap();
    let store_db = format!("kpaas_store_{}", fresh_id().replace('-', ""));
    admin()
        .await
        .query_drop(format!("CREATE DATABASE `{store_db}`"))
        .await
        .unwrap();
    let store = format!("mysql://root@127.0.0.1:3306/{store_db}");
    let broker = start_env(
        dir.path(),
        0,
        &deploy_config(),
        true,
        &[("KPAAS_BROKER__STORE__URL", &store)],
    )
    .await;
    let c = Client::new(target(&broker));
    let base = short();
    let (upper, lower) = (format!("CASE{base}"), format!("case{base}"));
    c.provision_ready(&upper, PLAN1).await.unwrap();
    // A case-folding collation took this for the same instance (a 200).
    let second = c
        .provision(&lower, &c.provision_body(PLAN1), false)
        .await
        .unwrap();
    assert_eq!(second.status, 201, "{}", second.body);
    let bid_upper = fresh_id();
    let creds = c.bind_ready(&upper, &bid_upper, PLAN1).await.unwrap()["credentials"].clone();
    let creds_lower =
        c.bind_ready(&lower, &fresh_id(), PLAN1).await.unwrap()["credentials"].clone();
    assert_ne!(creds["name"], creds_lower["name"]);
    c.deprovision_done(&lower, PLAN1).await.unwrap();
    assert_eq!(
        c.fetch_binding(&upper, &bid_upper).await.unwrap().status,
        200
    );
    c.deprovision_done(&upper, PLAN1).await.unwrap();
    drop(broker);
    admin()
        .await
        .query_drop(format!("DROP DATABASE `{store_db}`"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_the_broker_did_not_make_is_never_adopted_or_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 0).await;
    let c = Client::new(target(&broker));
    let id = fresh_id();
    let name = format!("op_{}", id.replace('-', "_"));
    // Someone else's database under the name the instance would get, on both servers (either
    // may be chosen).
    for i in 0..2 {
        admin_of(i)
            .await
            .query_drop(format!(
                "CREATE DATABASE `{name}`; CREATE TABLE `{name}`.keep (v INT); INSERT INTO `{name}`.keep VALUES (7)"
            ))
            .await
            .unwrap();
    }
    let refused = c
        .provision(&id, &c.provision_body(PLAN1), false)
        .await
        .unwrap();
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(
        refused.body["description"]
            .as_str()
            .unwrap()
            .contains("not made by this broker"),
        "{}",
        refused.body
    );
    // A platform's orphan mitigation deletes what it thinks it made.
    let delete = c.deprovision(&id, PLAN1, false).await.unwrap();
    assert_eq!(delete.status, 410, "{}", delete.body);
    for i in 0..2 {
        let mut admin = admin_of(i).await;
        let kept: Vec<i32> = admin
            .query(format!("SELECT v FROM `{name}`.keep"))
            .await
            .unwrap();
        assert_eq!(kept, [7], "server {i}: the foreign database was touched");
        admin
            .query_drop(format!("DROP DATABASE `{name}`"))
            .await
            .unwrap();
        assert!(
            markers_of(i, &id).await.is_empty(),
            "marker left on server {i}"
        );
    }
}

/// A broker whose only server, "mysql-1", is 3306 behind `proxy`.
async fn behind_proxy(dir: &std::path::Path, proxy: &Proxy, env: &[(&str, &str)]) -> Broker {
    let config = config_with_servers(dir, &server_entry("mysql-1", proxy.port));
    start_env(dir, 0, &config, true, env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_whose_connection_drops_after_create_user_leaves_no_account_and_can_be_unbound() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(3306).await;
    let broker = behind_proxy(dir.path(), &proxy, &[]).await;
    let c = Client::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN1).await.unwrap();

    proxy.arm("CREATE USER", Action::Cut);
    let failed = c.bind(&id, &bid, &c.bind_body(PLAN1), false).await.unwrap();
    assert_eq!(
        proxy.fired(),
        1,
        "the bind never sent CREATE USER: {}",
        failed.body
    );
    assert_eq!(failed.status, 500, "{}", failed.body);
    // The server made the account, but the broker cleaned it up on a fresh connection.
    assert!(
        !account_exists(0, &account_of(&bid)).await,
        "account left behind"
    );
    assert_eq!(c.fetch_binding(&id, &bid).await.unwrap().status, 404);
    // The platform's orphan mitigation: before the fix a 500 for ever.
    let unbound = c.unbind(&id, &bid, PLAN1, false).await.unwrap();
    assert_eq!(unbound.status, 200, "{}", unbound.body);

    // The same binding id binds cleanly afterwards, and its credentials work.
    let creds = c.bind_ready(&id, &bid, PLAN1).await.unwrap()["credentials"].clone();
    assert_eq!(creds["username"], account_of(&bid).as_str());
    let mut app = mysql_async::Conn::from_url(
        creds["uri"]
            .as_str()
            .unwrap()
            .replace(&format!(":{}/", proxy.port), ":3306/"),
    )
    .await
    .expect("credentials of the retried bind log in");
    app.query_drop("SELECT 1").await.unwrap();
    drop(app);
    c.unbind_done(&id, &bid, PLAN1).await.unwrap();
    assert!(!account_exists(0, &account_of(&bid)).await);
    c.deprovision_done(&id, PLAN1).await.unwrap();
    assert!(markers_of(0, &id).await.is_empty());
    assert!(markers_of(0, &bid).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_whose_cleanup_fails_too_is_unbound_by_the_accounts_name() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(3306).await;
    let broker = behind_proxy(dir.path(), &proxy, &[]).await;
    let c = Client::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN1).await.unwrap();

    // CREATE USER runs but its answer is lost; the cleanup's DROP USER never arrives.
    proxy.arm("CREATE USER", Action::Cut);
    proxy.arm("DROP USER", Action::Drop);
    let failed = c.bind(&id, &bid, &c.bind_body(PLAN1), false).await.unwrap();
    assert_eq!(failed.status, 500, "{}", failed.body);
    assert_eq!(proxy.fired(), 2, "the bind's cleanup never sent DROP USER");
    assert!(
        account_exists(0, &account_of(&bid)).await,
        "nothing was left for unbind to find"
    );
    // The binding recorded nothing, yet unbind finds the account by its derived name and marker.
    let unbound = c.unbind(&id, &bid, PLAN1, false).await.unwrap();
    assert_eq!(unbound.status, 200, "{}", unbound.body);
    assert!(
        !account_exists(0, &account_of(&bid)).await,
        "account left behind"
    );
    assert!(markers_of(0, &bid).await.is_empty());
    c.deprovision_done(&id, PLAN1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deprovision_whose_connection_drops_half_way_leaves_the_instance_unusable_until_retried()
{
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(3306).await;
    let broker = behind_proxy(dir.path(), &proxy, &[]).await;
    let c = Client::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN1).await.unwrap();
    c.bind_ready(&id, &bid, PLAN1).await.unwrap();

    proxy.arm("DROP USER", Action::Cut);
    let failed = c.deprovision(&id, PLAN1, false).await.unwrap();
    assert_eq!(proxy.fired(), 1, "the deprovision never sent DROP USER");
    // Part-way: a 5xx (a 4xx would say nothing changed), saying the instance is not usable.
    assert_eq!(failed.status, 500, "{}", failed.body);
    assert_eq!(failed.body["instance_usable"], false, "{}", failed.body);
    // It still exists, half-deleted: GET shows it (a 404 would say it is gone).
    assert_eq!(c.fetch_instance(&id).await.unwrap().status, 200);
    // Its accounts are gone: it must not be taken for a ready instance.
    let bind = c
        .bind(&id, &fresh_id(), &c.bind_body(PLAN1), false)
        .await
        .unwrap();
    assert_eq!(bind.status, 422, "{}", bind.body);
    assert!(!account_exists(0, &account_of(&bid)).await);

    let again = c.deprovision(&id, PLAN1, false).await.unwrap();
    assert_eq!(again.status, 200, "{}", again.body);
    let name = format!("op_{}", id.replace('-', "_"));
    assert!(
        !databases_of(0).await.contains(&name),
        "database left behind"
    );
    assert!(markers_of(0, &id).await.is_empty());
    assert!(markers_of(0, &bid).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provision_killed_mid_flight_whose_rerun_fails_can_still_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(3306).await;
    // A fixed replica id: the restarted process is the same replica, on another port.
    let lease = [
        ("KPAAS_BROKER__OPERATIONS__LEASE_SECS", "2"),
        ("KPAAS_BROKER__OPERATIONS__HEARTBEAT_SECS", "1"),
        ("KPAAS_BROKER__REPLICA_ID", "replica-1"),
    ];
    let broker = behind_proxy(dir.path(), &proxy, &lease).await;
    let c = Client::new(target(&broker));
    let id = fresh_id();
    proxy.arm("CREATE DATABASE IF NOT EXISTS `op_", Action::Hold);
    let hung = tokio::spawn({
        let (c, id) = (c.clone(), id.clone());
        async move { c.provision(&id, &c.provision_body(PLAN1), false).await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.fired() == 0 {
        assert!(
            Instant::now() < deadline,
            "the provision never sent CREATE DATABASE"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(broker); // SIGKILL, mid-provision
    assert!(
        hung.await.unwrap().is_err(),
        "the killed broker still answered"
    );
    assert_eq!(
        markers_of(0, &id).await.len(),
        1,
        "the provision had claimed its name"
    );

    // The same replica comes back and runs the provision again, which fails this time (its
    // connection drops): the instance is failed and recorded nothing of the backend.
    proxy.arm("CREATE DATABASE IF NOT EXISTS `op_", Action::Drop);
    let config = config_with_servers(dir.path(), &server_entry("mysql-1", proxy.port));
    let broker = start_env(dir.path(), 0, &config, true, &lease).await;
    let c = Client::new(target(&broker));
    let last = settled(&c, &id).await;
    assert_eq!(last["state"], "failed", "{last}");
    assert_eq!(proxy.fired(), 2, "the provision was not run again");
    // Before the fix: 422 "lives on server None" for ever.
    let deleted = c.deprovision(&id, PLAN1, false).await.unwrap();
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert!(markers_of(0, &id).await.is_empty(), "marker left behind");
    let name = format!("op_{}", id.replace('-', "_"));
    assert!(!databases_of(0).await.contains(&name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_passwords_pass_a_server_password_policy_and_stay_valid_in_urls() {
    let dir = tempfile::tempdir().unwrap();
    // 3307 runs MariaDB's simple_password_check (scripts/backends.sh).
    let policy: Vec<(String, String)> = admin_of(1)
        .await
        .query("SELECT PLUGIN_NAME, PLUGIN_STATUS FROM information_schema.PLUGINS WHERE PLUGIN_NAME = 'simple_password_check'")
        .await
        .unwrap();
    assert_eq!(policy, [("simple_password_check".into(), "ACTIVE".into())]);
    let config = config_with_servers(dir.path(), &server_entry("mysql-2", 3307));
    let broker = start_with(dir.path(), 0, &config, true).await;
    let c = Client::new(target(&broker));
    let id = fresh_id();
    c.provision_ready(&id, PLAN1).await.unwrap();
    for _ in 0..5 {
        let bid = fresh_id();
        let creds = c.bind_ready(&id, &bid, PLAN1).await.unwrap()["credentials"].clone();
        let password = creds["password"].as_str().unwrap();
        assert_eq!(password.len(), 40);
        assert!(password.chars().any(|ch| ch.is_ascii_uppercase()));
        assert!(password.chars().any(|ch| ch.is_ascii_lowercase()));
        assert!(password.chars().any(|ch| ch.is_ascii_digit()));
        assert!(password.chars().any(|ch| "-._~".contains(ch)));
        let jdbc = creds["jdbcUrl"].as_str().unwrap();
        assert!(jdbc.ends_with(&format!("&password={password}")), "{jdbc}");
        let uri = creds["uri"].as_str().unwrap();
        assert!(uri.contains(&format!(":{password}@")), "{uri}");
        let mut app = mysql_async::Conn::from_url(uri)
            .await
            .expect("the uri logs in as is");
        app.query_drop("SELECT 1").await.unwrap();
        drop(app);
        c.unbind_done(&id, &bid, PLAN1).await.unwrap();
    }
    c.deprovision_done(&id, PLAN1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_startup_errors_reveal_no_server_names_or_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let dead = free_port();
    let config = config_with_servers(dir.path(), &server_entry("secret-db-7", dead));
    let broker = start_with(dir.path(), 0, &config, false).await;
    let ready = reqwest::get(format!("http://127.0.0.1:{}/ready", broker.port))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert_eq!(body, r#"{"status":"unavailable"}"#);
    drop(broker);
    let log = std::fs::read_to_string(dir.path().join("broker.log")).unwrap();
    assert!(log.contains("secret-db-7"), "the reason is not logged");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mysql-broker"))
        .arg("--config")
        .arg(deploy_config())
        .env(
            "KPAAS_BROKER__STORE__URL",
            "mysqll://root:hunter2@127.0.0.1/x",
        )
        .env("MYSQL_BROKER_PASSWORD", "broker-secret")
        .env(
            "MYSQL_BROKER_ENCRYPTION_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("mysqll"), "{said}");
    assert!(!said.contains("hunter2"), "{said}");
}
