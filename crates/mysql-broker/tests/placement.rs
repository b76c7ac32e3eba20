//! Placement over several servers, and a server that is down. In a test binary of its own, so
//! that no other test changes the servers' instance counts meanwhile.

mod common;

use common::*;
use mysql_async::prelude::Queryable;
use osb_testkit::{Client, fresh_id};

/// The tests of this file change instance counts: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn instance_counts() -> [usize; 2] {
    let mut counts = [0; 2];
    for (i, count) in counts.iter_mut().enumerate() {
        *count = databases_of(i)
            .await
            .iter()
            .filter(|d| d.starts_with("op_"))
            .count();
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_new_instance_goes_to_the_least_loaded_server() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 0).await;
    let c = Client::new(target(&broker));
    let mut placed = Vec::new();
    for _ in 0..6 {
        let before = instance_counts().await;
        let expected = if before[1] < before[0] { 1 } else { 0 };
        let id = fresh_id();
        c.provision_ready(&id, PLAN1).await.unwrap();
        let db = format!("op_{}", id.replace('-', "_"));
        assert!(
            databases_of(expected).await.contains(&db),
            "instance not on server {expected} with counts {before:?}"
        );
        assert!(!databases_of(1 - expected).await.contains(&db));
        placed.push((id, expected));
    }
    // Every later call goes to the instance's own server: credentials point there and work.
    for (id, server) in &placed {
        let bid = fresh_id();
        let creds = c.bind_ready(id, &bid, PLAN1).await.unwrap()["credentials"].clone();
        assert_eq!(creds["port"], [3306, 3307][*server]);
        let mut app = mysql_async::Conn::from_url(creds["uri"].as_str().unwrap())
            .await
            .unwrap();
        app.query_drop("CREATE TABLE t (id INT)").await.unwrap();
        drop(app);
        c.unbind_done(id, &bid, PLAN1).await.unwrap();
        c.deprovision_done(id, PLAN1).await.unwrap();
    }
    let all = databases().await;
    assert!(
        placed
            .iter()
            .all(|(id, _)| !all.contains(&format!("op_{}", id.replace('-', "_"))))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_answers_503_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = |port: u16| {
        format!(
            "[[mysql.servers]]\nname = \"mysql-1\"\nhost = \"127.0.0.1\"\nport = {port}\nadmin_user = \"root\"\nadmin_password = \"\"\n"
        )
    };
    let up = config_with_servers(dir.path(), &server(3306));
    let down = config_with_servers(dir.path(), &server(free_port()));
    let broker = start_with(dir.path(), 0, &up, true).await;
    let c = Client::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN1).await.unwrap();
    drop(broker);

    let broker = start_with(dir.path(), 0, &down, false).await;
    let c = Client::new(target(&broker));
    let ready = reqwest::get(format!("http://127.0.0.1:{}/ready", broker.port))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let bound = c.bind(&id, &bid, &c.bind_body(PLAN1), false).await.unwrap();
    assert_eq!(bound.status, 503, "{}", bound.body);
    assert!(
        bound.body["description"]
            .as_str()
            .unwrap()
            .contains("mysql-1"),
        "{}",
        bound.body
    );
    let fresh = fresh_id();
    let refused = c
        .provision(&fresh, &c.provision_body(PLAN1), false)
        .await
        .unwrap();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused.body["description"]
            .as_str()
            .unwrap_or("")
            .contains("mysql-1"),
        "{}",
        refused.body
    );
    assert_eq!(c.fetch_instance(&fresh).await.unwrap().status, 404);
    assert_eq!(c.fetch_instance(&id).await.unwrap().status, 200);
    drop(broker);

    let broker = start_with(dir.path(), 0, &up, true).await;
    let c = Client::new(target(&broker));
    c.bind_ready(&id, &bid, PLAN1).await.unwrap();
    c.unbind_done(&id, &bid, PLAN1).await.unwrap();
    c.deprovision_done(&id, PLAN1).await.unwrap();
}
