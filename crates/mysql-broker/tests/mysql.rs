//! mysql-broker as a platform sees it: the real binary over HTTP, against the real MariaDB.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use futures::future::join_all;
use mysql_async::prelude::Queryable;
use osb_testkit::{Client, check_all, check_restart, fresh_id};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testkit_rules_hold_for_mysql_broker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 0).await;
    check_all(&target(&broker)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_credentials_work_only_on_their_own_database() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 0).await;
    let c = Client::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN1).await.unwrap();
    let body = c.bind_ready(&id, &bid, PLAN1).await.unwrap();
    let creds = &body["credentials"];
    for field in [
        "name", "hostname", "port", "username", "password", "uri", "jdbcUrl",
    ] {
        assert!(!creds[field].is_null(), "credentials lack {field}: {creds}");
    }
    assert!(creds["password"].as_str().unwrap().len() >= 32);
    let uri = creds["uri"].as_str().unwrap().to_owned();
    let db = creds["name"].as_str().unwrap().to_owned();
    assert_eq!(db, format!("op_{}", id.replace('-', "_")));

    let mut app = mysql_async::Conn::from_url(&uri)
        .await
        .expect("bound credentials log in");
    app.query_drop("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))")
        .await
        .unwrap();
    app.query_drop("INSERT INTO t VALUES (1, 'one'), (2, 'two')")
        .await
        .unwrap();
    let rows: Vec<(i32, String)> = app.query("SELECT id, v FROM t ORDER BY id").await.unwrap();
    assert_eq!(rows, vec![(1, "one".to_owned()), (2, "two".to_owned())]);
    let other = app
        .query_drop("CREATE DATABASE kpaas_should_not_exist")
        .await
        .unwrap_err();
    assert_eq!(server_code(&other), Some(1044), "{other}");
    let seen: Vec<String> = app.query("SHOW DATABASES").await.unwrap();
    assert!(
        seen.iter().all(|d| d == &db || d == "information_schema"),
        "{seen:?}"
    );

    // Plan 1: 10 connections for the one binding; the 11th is refused with 1226. Over TCP
    // only: the driver would otherwise log in a second time over the server's Unix socket and
    // close the first connection in the background, over the limit for a moment.
    let tcp = format!("{uri}?prefer_socket=false");
    let mut open = vec![app];
    for _ in 0..9 {
        open.push(
            mysql_async::Conn::from_url(&tcp)
                .await
                .expect("within the limit"),
        );
    }
    let refused = mysql_async::Conn::from_url(&tcp)
        .await
        .expect_err("11th connection refused");
    assert_eq!(server_code(&refused), Some(1226), "{refused}");
    drop(open);

    c.unbind_done(&id, &bid, PLAN1).await.unwrap();
    let gone = mysql_async::Conn::from_url(&uri)
        .await
        .expect_err("login fails after unbind");
    // 1045, or 1698 where the server checks the socket plugin first: access denied either way.
    assert!(matches!(server_code(&gone), Some(1045 | 1698)), "{gone}");

    let bid2 = fresh_id();
    let user2 = c.bind_ready(&id, &bid2, PLAN1).await.unwrap()["credentials"]["username"]
        .as_str()
        .unwrap()
        .to_owned();
    c.deprovision_done(&id, PLAN1).await.unwrap();
    assert!(!databases().await.contains(&db), "database left behind");
    // Asked of both servers: placement may have chosen either.
    assert!(
        !account_exists(0, &user2).await && !account_exists(1, &user2).await,
        "binding user left behind after deprovision"
    );
    // Nor does the broker's bookkeeping keep anything of them (an unbind, a deprovision with a
    // binding, the database).
    let user1 = creds["username"].as_str().unwrap();
    for i in 0..2 {
        let kept: Vec<(String, String)> = admin_of(i)
            .await
            .exec(
                "SELECT kind, name FROM kpaas_broker.made WHERE name IN (?, ?, ?) \
                 UNION ALL SELECT kind, name FROM kpaas_broker.owners WHERE name IN (?, ?, ?)",
                (&db, user1, &user2, &db, user1, &user2),
            )
            .await
            .unwrap();
        assert!(kept.is_empty(), "server {i} keeps {kept:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_instance_ids_are_refused_before_sql() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 0).await;
    let c = Client::new(target(&broker));
    // Other tests create op_ databases (and the first use of a server its kpaas_broker)
    // meanwhile: compare everything else.
    let others = |dbs: Vec<String>| {
        dbs.into_iter()
            .filter(|d| !d.starts_with("op_") && d != "kpaas_broker")
            .collect::<Vec<_>>()
    };
    let before = others(databases().await);
    for id in [
        "x%27%3B%20DROP%20DATABASE%20mysql%3B--",
        "a%60b",
        "a;b",
        "%00",
        &"b".repeat(300),
        "%C3%BC",
    ] {
        let reply = c
            .provision(id, &c.provision_body(PLAN1), false)
            .await
            .unwrap();
        assert_eq!(reply.status, 400, "{id}: {}", reply.body);
        assert!(reply.body["description"].is_string());
    }
    let after = databases().await;
    assert!(
        !after
            .iter()
            .any(|d| d.starts_with("op_aaaa") || d.starts_with("op_bbbb")),
        "{after:?}"
    );
    assert_eq!(others(after), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_between_provision_and_bind_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 0).await;
    let t = target(&broker);
    // Holds the restarted broker so that it is killed when the test ends.
    let restarted = std::sync::Mutex::new(None);
    check_restart(&t, || async {
        drop(broker);
        let again = start(dir.path(), 0).await;
        let t = target(&again);
        *restarted.lock().unwrap() = Some(again);
        Ok(t)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 0).await;
    let c = Client::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN1).await.unwrap();
    let creds = c.bind_ready(&id, &bid, PLAN1).await.unwrap()["credentials"].clone();
    c.unbind_done(&id, &bid, PLAN1).await.unwrap();
    c.deprovision_done(&id, PLAN1).await.unwrap();
    drop(broker);
    let log = std::fs::read_to_string(dir.path().join("broker.log")).unwrap();
    let password = creds["password"].as_str().unwrap();
    assert!(!log.contains(password), "a binding password was logged");
    assert!(
        !log.contains("broker-secret"),
        "the broker password was logged"
    );
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["message"] == "originating identity"
            && l["identity"]
                .as_str()
                .unwrap_or("")
                .contains("kpaas-testkit-user")),
        "the originating identity was not logged"
    );
    assert!(
        lines.iter().any(|l| l["span"]["instance_id"] == id.as_str() && l["span"]["request_id"].is_string()),
        "no log line carries the request's span"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_broker_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start(dir.path(), 0).await;
    let killed = Command::new("kill")
        .args(["-TERM", &broker.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = broker.child().try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "broker still running 40s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit after SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_change_shares_the_new_connection_count_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 0).await;
    let c = Client::new(target(&broker));
    let id = fresh_id();
    c.provision_ready(&id, PLAN1).await.unwrap();
    let mut users = Vec::new();
    for _ in 0..2 {
        let body = c.bind_ready(&id, &fresh_id(), PLAN1).await.unwrap();
        users.push(body["credentials"]["username"].as_str().unwrap().to_owned());
    }
    for user in &users {
        assert_eq!(
            max_connections(user).await,
            Some(5),
            "10 connections over 2 bindings"
        );
    }
    let up =
        json!({"service_id": SERVICE, "plan_id": PLAN2, "previous_values": {"plan_id": PLAN1}});
    assert_eq!(c.update(&id, &up, false).await.unwrap().status, 200);
    for user in &users {
        assert_eq!(
            max_connections(user).await,
            Some(50),
            "100 connections over 2 bindings"
        );
    }
    c.deprovision_done(&id, PLAN2).await.unwrap();
    for user in &users {
        assert_eq!(max_connections(user).await, None, "account left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downgrade_that_the_bindings_do_not_fit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 0).await;
    let c = Client::new(target(&broker));
    let id = fresh_id();
    c.provision_ready(&id, PLAN2).await.unwrap();
    for _ in 0..11 {
        c.bind_ready(&id, &fresh_id(), PLAN2).await.unwrap();
    }
    let down =
        json!({"service_id": SERVICE, "plan_id": PLAN1, "previous_values": {"plan_id": PLAN2}});
    let refused = c.update(&id, &down, false).await.unwrap();
    assert_eq!(refused.status, 422, "{}", refused.body);
    let why = refused.body["description"].as_str().unwrap();
    assert!(why.contains("11 bindings"), "{why}");
    assert_eq!(refused.body["update_repeatable"], false);
    assert_eq!(c.fetch_instance(&id).await.unwrap().body["plan_id"], PLAN2);
    // Deprovision drops every binding's account along with the database.
    c.deprovision_done(&id, PLAN2).await.unwrap();
    assert!(
        !databases()
            .await
            .contains(&format!("op_{}", id.replace('-', "_")))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_provision_and_bind_pairs_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 0).await;
    let c = Client::new(target(&broker));
    let pairs: Vec<(String, String)> = (0..50).map(|_| (fresh_id(), fresh_id())).collect();
    let made = join_all(pairs.iter().map(|(id, bid)| {
        let c = c.clone();
        async move {
            c.provision_ready(id, PLAN1).await?;
            let body = c.bind_ready(id, bid, PLAN1).await?;
            anyhow::Ok(
                body["credentials"]["username"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        }
    }))
    .await;
    let users: Vec<String> = made.into_iter().collect::<Result<_, _>>().unwrap();
    let gone = join_all(pairs.iter().map(|(id, bid)| {
        let c = c.clone();
        async move {
            c.unbind_done(id, bid, PLAN1).await?;
            c.deprovision_done(id, PLAN1).await
        }
    }))
    .await;
    gone.into_iter().collect::<Result<Vec<_>, _>>().unwrap();
    let all = databases().await;
    for (id, _) in &pairs {
        assert!(
            !all.contains(&format!("op_{}", id.replace('-', "_"))),
            "database left behind"
        );
    }
    for user in &users {
        assert_eq!(
            max_connections(user).await,
            None,
            "account {user} left behind"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_stops_the_binary_with_the_key_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_mysql-broker"))
        .arg("--config")
        .arg(deploy_config())
        .env("KPAAS_BROKER__STORE__POOL_SIZE", "many")
        .env("MYSQL_BROKER_PASSWORD", "broker-secret")
        .env(
            "MYSQL_BROKER_ENCRYPTION_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.to_lowercase().contains("broker.store.pool_size"),
        "{stderr}"
    );
    let missing = Command::new(env!("CARGO_BIN_EXE_mysql-broker"))
        .arg("--config")
        .arg(deploy_config())
        .env_remove("MYSQL_BROKER_ENCRYPTION_KEY")
        .env("MYSQL_BROKER_PASSWORD", "broker-secret")
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("MYSQL_BROKER_ENCRYPTION_KEY"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cf_push_port_variable_sets_the_listen_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_mysql-broker"));
    command
        .arg("--config")
        .arg(deploy_config())
        // 0: the system picks the port, which the broker then logs; the default listen
        // address (127.0.0.1:8081) is not 0, so an answer proves PORT was read.
        .env("PORT", "0")
        .env(
            "KPAAS_BROKER__STORE__URL",
            osb_testkit::sqlite_store(dir.path()),
        )
        .env("MYSQL_BROKER_PASSWORD", "broker-secret")
        .env(
            "MYSQL_BROKER_ENCRYPTION_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        );
    let mut broker = Broker::spawn(command, 0, &dir.path().join("broker.log")).unwrap();
    broker
        .wait_for("/ready", Duration::from_secs(30))
        .await
        .unwrap();
}

/// The local ports of process `pid`'s TCP connections to port `remote` (from `/proc`).
fn local_ports_to(pid: u32, remote: u16) -> Vec<u16> {
    let sockets: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = |addr: &str| u16::from_str_radix(addr.rsplit_once(':')?.1, 16).ok();
            let (local, peer, inode) = (fields.get(1)?, fields.get(2)?, fields.get(9)?);
            (port(peer)? == remote && sockets.contains(*inode)).then(|| port(local))?
        })
        .collect()
}

/// MariaDB ends the broker's idle admin connections (as a restart or a `KILL` does): the next
/// operation finds them dead, makes new ones and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_the_server_ended_are_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), 0).await;
    let c = Client::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN1).await.unwrap();
    let ports = local_ports_to(broker.pid(), 3306);
    assert!(!ports.is_empty(), "the broker keeps no admin connection");
    let mut admin = admin().await;
    let mut ended = Vec::new();
    for port in ports {
        let ids: Vec<u64> = admin
            .exec(
                // HOST is `address:port`, or `localhost:port` where names are resolved.
                "SELECT ID FROM information_schema.PROCESSLIST \
                 WHERE SUBSTRING_INDEX(HOST, ':', -1) = ?",
                (port.to_string(),),
            )
            .await
            .unwrap();
        for id in ids {
            admin.query_drop(format!("KILL {id}")).await.unwrap();
            ended.push(id.to_string());
        }
    }
    assert!(
        !ended.is_empty(),
        "none of the broker's connections was found on the server"
    );
    // Ended means gone from the server. Right after KILL the broker may not have seen the close
    // yet (the pool's check only reads a socket its I/O driver has marked readable): once, on a
    // busy machine, the bind below took such a connection and failed at its first statement,
    // which the broker reports and does not retry (errors.rs).
    let gone = format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID IN ({})",
        ended.join(",")
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while admin.query_first::<u64, _>(&gone).await.unwrap() != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "killed connections still on the server after 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    c.bind_ready(&id, &bid, PLAN1).await.unwrap();
    c.unbind_done(&id, &bid, PLAN1).await.unwrap();
    c.deprovision_done(&id, PLAN1).await.unwrap();
}
