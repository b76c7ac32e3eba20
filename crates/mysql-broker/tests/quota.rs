//! Storage quota enforcement against the real MariaDB.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mysql_async::prelude::Queryable;
use osb_testkit::{Client, fresh_id};

/// Retries `insert` on fresh connections (enforcement ends open sessions) until its outcome
/// is `want_ok`; fails after 60 s, saying what the broker's upkeep and the servers were doing.
async fn wait_for_insert(dir: &std::path::Path, broker: &Broker, uri: &str, want_ok: bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let insert = async {
            let mut conn = mysql_async::Conn::from_url(uri).await?;
            conn.query_drop("INSERT INTO probe VALUES (1)").await
        };
        let result = tokio::time::timeout(Duration::from_secs(10), insert).await;
        match (&result, want_ok) {
            (Ok(Ok(())), true) => return,
            (Ok(Err(e)), false) if server_code(e) == Some(1142) => return,
            _ => {}
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("broker.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let upkeep = match broker
                .metric("osb_upkeep_last_pass_timestamp_seconds")
                .await
            {
                Ok((_, text)) => text
                    .lines()
                    .filter(|l| l.starts_with("osb_upkeep") || l.starts_with("mysql_broker"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                Err(e) => format!("no /metrics: {e}"),
            };
            let mut processes = String::new();
            for i in 0..SERVERS.len() {
                let list = tokio::time::timeout(Duration::from_secs(5), async {
                    type Process = (u64, String, Option<String>, String, i64, String, String);
                    let rows: Vec<Process> = admin_of(i)
                        .await
                        .query(
                            "SELECT ID, USER, DB, COMMAND, TIME, STATE, COALESCE(LEFT(INFO, 200), '') \
                             FROM information_schema.PROCESSLIST",
                        )
                        .await?;
                    Ok::<_, mysql_async::Error>(rows)
                })
                .await;
                processes.push_str(&format!("server {i}: {list:?}\n"));
            }
            panic!(
                "insert still {result:?} after 60s (now {}); broker metrics:\n{upkeep}\nbroker log (newest first):\n{}\nprocesses:\n{processes}",
                osb_core::store::now_ms() / 1000,
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The shipped config with plan 1's quota at 1 MiB, checked every second.
fn one_mib_quota(dir: &std::path::Path) -> std::path::PathBuf {
    config_edited(
        dir,
        &[
            ("quota_mb = 100", "quota_mb = 1"),
            ("quota_check_secs = 30", "quota_check_secs = 1"),
        ],
    )
}

/// Polls GET on the instance until its last measurement says `over`; fails after 30 s.
async fn wait_for_facts(c: &Client, id: &str, over: bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let fetched = c.fetch_instance(id).await.unwrap();
        if fetched.body["metadata"]["attributes"]["storage_over_quota"] == over {
            return fetched.body;
        }
        assert!(
            Instant::now() < deadline,
            "GET still shows {}",
            fetched.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_stop_over_quota_and_resume_once_data_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let config = one_mib_quota(dir.path());
    let broker = start_with(dir.path(), 0, &config, true).await;
    let c = Client::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN1).await.unwrap();
    let credentials = c.bind_ready(&id, &bid, PLAN1).await.unwrap()["credentials"].clone();
    let uri = credentials["uri"].as_str().unwrap().to_owned();
    // An operator's own account with a grant on the database, under a name the broker never
    // makes: none of the broker's business, and no obstacle to it.
    let mut server = admin_of(usize::from(credentials["port"] == 3307)).await;
    let foreign = format!("Reporting_{}", &fresh_id()[..8]);
    let pattern = credentials["name"].as_str().unwrap().replace('_', "\\_");
    server
        .query_drop(format!(
            "CREATE USER '{foreign}'@'%' IDENTIFIED BY 'Report-1234-x'; \
             GRANT SELECT ON `{pattern}`.* TO '{foreign}'@'%'"
        ))
        .await
        .unwrap();

    let mut app = mysql_async::Conn::from_url(&uri).await.unwrap();
    app.query_drop("CREATE TABLE probe (id INT)").await.unwrap();
    app.query_drop("CREATE TABLE blobs (id INT AUTO_INCREMENT PRIMARY KEY, b LONGBLOB)")
        .await
        .unwrap();
    fill(&mut app, 30).await;
    drop(app);

    wait_for_insert(dir.path(), &broker, &uri, false).await;
    let mut app = mysql_async::Conn::from_url(&uri).await.unwrap();
    let rows: Vec<u64> = app.query("SELECT COUNT(*) FROM blobs").await.unwrap();
    assert_eq!(rows, vec![30], "SELECT keeps working over quota");
    let fetched = wait_for_facts(&c, &id, true).await;
    assert!(
        fetched["metadata"]["attributes"]["measured_at"].is_string(),
        "{fetched}"
    );
    let (frozen, metrics) = broker
        .metric("mysql_broker_instances_over_quota")
        .await
        .unwrap();
    assert_eq!(frozen, Some(1.0), "{metrics}");

    // DELETE is kept to clean up with.
    app.query_drop("DELETE FROM blobs").await.unwrap();
    drop(app);
    wait_for_insert(dir.path(), &broker, &uri, true).await;
    wait_for_facts(&c, &id, false).await;
    // Under quota, a pass reads sizes for all databases of a server at once: GET shows the
    // server's own figure for this one.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Read each time: InnoDB's statistics may still move after the DELETE.
        let size: Option<u64> = server
            .exec_first(
                "SELECT CAST(SUM(data_length + index_length) AS UNSIGNED) FROM information_schema.TABLES WHERE table_schema = ?",
                (credentials["name"].as_str().unwrap(),),
            )
            .await
            .unwrap();
        let fetched = c.fetch_instance(&id).await.unwrap().body;
        let shown = &fetched["metadata"]["attributes"]["storage_used_bytes"];
        if shown.as_u64() == size {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "GET shows {shown}, the server {size:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    c.unbind_done(&id, &bid, PLAN1).await.unwrap();
    c.deprovision_done(&id, PLAN1).await.unwrap();
    server
        .query_drop(format!("DROP USER '{foreign}'@'%'"))
        .await
        .unwrap();
}

/// Puts `rows` blobs of 100 kB into table `blobs` behind `app`, in one statement: a check
/// that finds the database over quota ends the app's sessions, which would cut a fill of
/// several statements short. Then asks for fresh statistics, so that the size is seen at the
/// next check rather than eventually; a check may have seen it first and ended the session.
async fn fill(app: &mut mysql_async::Conn, rows: usize) {
    let values = vec!["(REPEAT('x', 100000))"; rows].join(", ");
    app.query_drop(format!("INSERT INTO blobs (b) VALUES {values}"))
        .await
        .unwrap();
    if let Err(e) = app.query_drop("ANALYZE TABLE blobs").await {
        // 1927: the server's "connection was killed", when it gets to say so.
        assert!(
            matches!(e, mysql_async::Error::Io(_)) || server_code(&e) == Some(1927),
            "ANALYZE TABLE: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_lock_neither_stalls_enforcement_nor_escapes_it_and_frozen_rights_stay_frozen() {
    let dir = tempfile::tempdir().unwrap();
    let config = one_mib_quota(dir.path());
    let broker = start_with(dir.path(), 0, &config, true).await;
    let c = Client::new(target(&broker));
    let mut uris = Vec::new();
    let mut ids = Vec::new();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let (id, bid) = (fresh_id(), fresh_id());
        c.provision_ready(&id, PLAN1).await.unwrap();
        let uri = c.bind_ready(&id, &bid, PLAN1).await.unwrap()["credentials"]["uri"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut app = mysql_async::Conn::from_url(&uri).await.unwrap();
        for table in [
            "probe (id INT)",
            "blobs (id INT AUTO_INCREMENT PRIMARY KEY, b LONGBLOB)",
            "blobs2 (id INT AUTO_INCREMENT PRIMARY KEY, b LONGBLOB)",
        ] {
            app.query_drop(format!("CREATE TABLE {table}"))
                .await
                .unwrap();
        }
        sessions.push(app);
        uris.push(uri);
        ids.push((id, bid));
    }
    // One app write-locks two tables while it is still under quota, then goes over from that
    // session, and keeps it open: the locks would hold off fresh statistics for as long as it
    // likes.
    sessions[0]
        .query_drop("LOCK TABLES blobs WRITE, blobs2 WRITE")
        .await
        .unwrap();
    for app in &mut sessions {
        fill(app, 15).await;
    }
    let mut locker = sessions.remove(0);
    drop(sessions);

    // Every instance is still checked and frozen: the lock stalls no one.
    for uri in &uris {
        wait_for_insert(dir.path(), &broker, uri, false).await;
    }
    assert!(
        locker.query_drop("SELECT 1").await.is_err(),
        "the locking session outlived the freeze"
    );

    // Nothing that stores bytes works while frozen; reading and deleting do.
    let mut app = mysql_async::Conn::from_url(&uris[0]).await.unwrap();
    for escape in [
        "CREATE INDEX more_bytes ON blobs2 (id, b(100))",
        "ALTER TABLE blobs ADD COLUMN extra INT",
        "CREATE TEMPORARY TABLE elsewhere (b LONGBLOB)",
        "LOCK TABLES blobs WRITE",
        "CREATE VIEW v AS SELECT 1",
        "CREATE PROCEDURE stash() SELECT 'bytes in mysql.proc'",
        "CREATE TABLE more (id INT)",
        "UPDATE blobs SET b = REPEAT('y', 200000)",
    ] {
        let err = app
            .query_drop(escape)
            .await
            .expect_err(&format!("{escape} worked over quota"));
        assert!(
            matches!(server_code(&err), Some(1044 | 1142)),
            "{escape}: {err}"
        );
    }
    let rows: Vec<u64> = app.query("SELECT COUNT(*) FROM blobs").await.unwrap();
    assert_eq!(rows, [15]);
    drop(app);

    // The quota leaves the plan: upkeep gives every right back without anything else touching
    // the instances.
    drop(broker);
    let unlimited = config_edited(
        dir.path(),
        &[
            ("quota_mb = 100\n", ""),
            ("quota_check_secs = 30", "quota_check_secs = 1"),
        ],
    );
    let broker = start_with(dir.path(), 0, &unlimited, true).await;
    for uri in &uris {
        wait_for_insert(dir.path(), &broker, uri, true).await;
    }
    let c = Client::new(target(&broker));
    for (id, bid) in &ids {
        c.unbind_done(id, bid, PLAN1).await.unwrap();
        c.deprovision_done(id, PLAN1).await.unwrap();
    }
}

/// Puts a ready instance of plan 1 straight into the store at `url`, its database recorded as
/// `database` on server `mysql-1`: how instances made before the naming rule look.
async fn recorded_instance(url: &str, database: &str) -> String {
    use osb_core::store::{InstanceRow, InstanceState, OperationRow, OperationState, Start, Store};
    let store = Store::connect(url, 1).await.unwrap();
    let (id, op) = (fresh_id(), fresh_id());
    let operation = OperationRow {
        id: op.clone(),
        platform: "default".into(),
        instance_id: id.clone(),
        binding_id: None,
        kind: "provision".into(),
        state: OperationState::Succeeded.as_str().into(),
        fingerprint: "f".into(),
        description: None,
        instance_usable: None,
        update_repeatable: None,
        owner: "test".into(),
        heartbeat_at: 1,
        created_at: 1,
        updated_at: 1,
        runner: "test/1".into(),
        request: None,
    };
    let row = InstanceRow {
        id: id.clone(),
        platform: "default".into(),
        service_id: SERVICE.into(),
        plan_id: PLAN1.into(),
        fingerprint: "f".into(),
        state: InstanceState::Ready.as_str().into(),
        operation_id: op,
        parameters: "{}".into(),
        context: "{}".into(),
        maintenance_version: None,
        dashboard_url: None,
        metadata: None,
        broker_state: serde_json::json!({"database": database, "server": "mysql-1"}).to_string(),
        created_at: 1,
        updated_at: 1,
    };
    assert!(
        store
            .start(&operation, Start::NewInstance(&row))
            .await
            .unwrap()
    );
    id
}

/// Two databases whose names differ only in case (one made before the naming rule), one under
/// its quota and one over: each is measured as itself. The server compares names in a list
/// without regard to case: counted together, or one for the other, one of them shows another
/// size, or looks empty and escapes its quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_whose_names_differ_in_case_are_measured_apart() {
    let dir = tempfile::tempdir().unwrap();
    let tag = &fresh_id().replace('-', "")[..12];
    let (upper, lower) = (format!("op_Case_{tag}"), format!("op_case_{tag}"));
    let mut admin = admin().await;
    // 20 kB, far under 1 MiB; 3 MB, far over.
    for (db, rows, bytes) in [(&upper, 20, 1000), (&lower, 30, 100000)] {
        admin
            .query_drop(format!(
                "CREATE DATABASE `{db}`; \
                 CREATE TABLE `{db}`.blobs (id INT AUTO_INCREMENT PRIMARY KEY, b LONGBLOB); \
                 INSERT INTO `{db}`.blobs (b) VALUES {}; ANALYZE TABLE `{db}`.blobs",
                vec![format!("(REPEAT('x', {bytes}))"); rows].join(", ")
            ))
            .await
            .unwrap();
    }
    let url = osb_testkit::sqlite_store(dir.path());
    let ids = [
        recorded_instance(&url, &upper).await,
        recorded_instance(&url, &lower).await,
    ];

    let config = one_mib_quota(dir.path());
    let broker = start_with(dir.path(), 0, &config, true).await;
    let c = Client::new(target(&broker));
    wait_for_facts(&c, &ids[1], true).await;
    // Under quota, the figure is the pass's survey's: the server's own for that name alone.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let size: Option<u64> = admin
            .exec_first(
                "SELECT CAST(SUM(data_length + index_length) AS UNSIGNED) FROM information_schema.TABLES WHERE table_schema = ?",
                (&upper,),
            )
            .await
            .unwrap();
        let facts = wait_for_facts(&c, &ids[0], false).await;
        let shown = facts["metadata"]["attributes"]["storage_used_bytes"].as_u64();
        if shown == size && size > Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "GET shows {shown:?}, the server {size:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(broker);
    for db in [&upper, &lower] {
        admin
            .query_drop(format!("DROP DATABASE `{db}`"))
            .await
            .unwrap();
    }
}
