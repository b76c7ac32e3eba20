//! redis-broker, black box: the real binary against real `redis-server` processes each test
//! starts for itself (a shared server and a pool, on free ports, stopped when the test ends),
//! driven over HTTP; what it made is checked with the `redis` client.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use osb_testkit::{Client as Osb, check_all, check_backend_down, check_restart, fresh_id};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testkit_rules_hold_on_a_dedicated_plan() {
    let dir = tempfile::tempdir().unwrap();
    let servers = servers(4).await;
    let broker = start(dir.path(), &config(dir.path(), &servers, 30)).await;
    check_all(&target(&broker, DEDICATED)).await.unwrap();
}

/// The shared plan too: sync, and no other shared plan to change into.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testkit_rules_hold_on_the_shared_plan() {
    let dir = tempfile::tempdir().unwrap();
    let servers = servers(1).await;
    let broker = start(dir.path(), &config(dir.path(), &servers, 30)).await;
    let mut t = target(&broker, SHARED);
    t.update_plan_id = None;
    check_all(&t).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_between_provision_and_bind_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let servers = servers(2).await;
    let config = config(dir.path(), &servers, 30);
    let broker = start(dir.path(), &config).await;
    let t = target(&broker, DEDICATED);
    let restarted = std::sync::Mutex::new(None);
    check_restart(&t, || async {
        drop(broker);
        let again = start(dir.path(), &config).await;
        let t = target(&again, DEDICATED);
        *restarted.lock().unwrap() = Some(again);
        Ok(t)
    })
    .await
    .unwrap();
}

/// A dedicated server's binding reads and writes, and nothing more: no `CONFIG`, `FLUSHALL`,
/// `ACL`, `DEBUG`; another instance's server refuses its login; unbind ends its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_bindings_get_data_commands_only_on_their_own_server() {
    let dir = tempfile::tempdir().unwrap();
    let servers = servers(2).await;
    let broker = start(dir.path(), &config(dir.path(), &servers, 30)).await;
    let c = Osb::new(target(&broker, DEDICATED));
    let (a, b, bid) = (fresh_id(), fresh_id(), fresh_id());
    c.provision_ready(&a, DEDICATED).await.unwrap();
    c.provision_ready(&b, DEDICATED).await.unwrap();
    let creds = c.bind_ready(&a, &bid, DEDICATED).await.unwrap()["credentials"].clone();
    for field in ["host", "port", "password", "username", "uri"] {
        assert!(
            creds.get(field).is_some(),
            "credentials lack {field}: {creds}"
        );
    }
    assert!(creds.get("key_prefix").is_none(), "{creds}");
    assert_eq!(creds["tls_port"], creds["port"].as_u64().unwrap() + 1);
    let server = home(&servers, &creds).await;
    let mut admin = server.admin().await;
    assert_eq!(
        run(&mut admin, &["CONFIG", "GET", "maxmemory"])
            .await
            .unwrap(),
        redis::Value::Array(vec![
            redis::Value::BulkString(b"maxmemory".to_vec()),
            redis::Value::BulkString(b"268435456".to_vec())
        ]),
        "the plan's 256 MB"
    );

    let mut conn = app(&creds).await.unwrap();
    run(&mut conn, &["SET", "greeting", "hello"]).await.unwrap();
    assert_eq!(
        run(&mut conn, &["GET", "greeting"]).await.unwrap(),
        redis::Value::BulkString(b"hello".to_vec())
    );
    for refused in [
        &["CONFIG", "SET", "maxmemory", "0"][..],
        &["FLUSHALL"],
        &["ACL", "SETUSER", "x", "on"],
        &["ACL", "LIST"],
        &["DEBUG", "SLEEP", "0"],
        &["SHUTDOWN", "NOSAVE"],
        &["REPLICAOF", "127.0.0.1", "1"],
        &["MONITOR"],
    ] {
        assert_eq!(
            run(&mut conn, refused).await.err().as_deref(),
            Some("NOPERM"),
            "{refused:?}"
        );
    }
    // The whole server is the tenant's: the commands health checks and job queues use work.
    for allowed in [
        &["INFO", "memory"][..],
        &["KEYS", "*"],
        &["SORT", "nothing"],
    ] {
        assert!(run(&mut conn, allowed).await.is_ok(), "{allowed:?}");
    }
    let other = servers.pool.iter().find(|s| s.port != server.port).unwrap();
    let password = creds["password"].as_str().unwrap();
    let user = creds["username"].as_str().unwrap();
    assert!(
        connect(other.port, user, password).await.is_err(),
        "the other instance's server took this binding's login"
    );

    c.unbind_done(&a, &bid, DEDICATED).await.unwrap();
    assert!(
        run(&mut conn, &["PING"]).await.is_err(),
        "the connection outlived unbind"
    );
    assert!(app(&creds).await.is_err(), "the login outlived unbind");
    c.deprovision_done(&a, DEDICATED).await.unwrap();
    c.deprovision_done(&b, DEDICATED).await.unwrap();
}

/// Three servers: three instances, the fourth refused saying why, with nothing claimed; a
/// deprovisioned instance's server comes back wiped and serves the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_hands_out_each_server_once_and_takes_it_back_wiped() {
    let dir = tempfile::tempdir().unwrap();
    let servers = servers(3).await;
    let broker = start(dir.path(), &config(dir.path(), &servers, 30)).await;
    let c = Osb::new(target(&broker, DEDICATED));
    let ids: Vec<String> = (0..3).map(|_| fresh_id()).collect();
    let made =
        futures::future::join_all(ids.iter().map(|id| c.provision_ready(id, DEDICATED))).await;
    assert!(made.iter().all(Result::is_ok), "{made:?}");
    let mut ports = Vec::new();
    for id in &ids {
        let creds = c.bind_ready(id, &fresh_id(), DEDICATED).await.unwrap()["credentials"].clone();
        ports.push(creds["port"].as_u64().unwrap());
        let mut conn = app(&creds).await.unwrap();
        run(&mut conn, &["SET", "left", "behind"]).await.unwrap();
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3, "a server was handed out twice");

    let fourth = fresh_id();
    let reply = c
        .provision(&fourth, &c.provision_body(DEDICATED), true)
        .await
        .unwrap();
    assert_eq!(reply.status, 202, "{}", reply.body);
    let last = c
        .poll(&fourth, None, reply.operation().as_deref())
        .await
        .unwrap();
    assert_eq!(last.body["state"], "failed", "{}", last.body);
    assert!(
        last.body["description"]
            .as_str()
            .unwrap()
            .contains("no free Redis server"),
        "{}",
        last.body
    );
    c.deprovision_done(&fourth, DEDICATED).await.unwrap();

    // The first instance goes: its server is wiped (keys and users) and serves the fourth.
    let creds = c.bind_ready(&ids[0], &fresh_id(), DEDICATED).await.unwrap()["credentials"].clone();
    let server = home(&servers, &creds).await;
    c.deprovision_done(&ids[0], DEDICATED).await.unwrap();
    let mut admin = server.admin().await;
    assert_eq!(
        run(&mut admin, &["DBSIZE"]).await.unwrap(),
        redis::Value::Int(0)
    );
    assert_eq!(
        run(&mut admin, &["ACL", "USERS"]).await.unwrap(),
        redis::Value::Array(vec![redis::Value::BulkString(b"default".to_vec())]),
        "binding users outlived the instance"
    );
    c.provision_ready(&fourth, DEDICATED).await.unwrap();
    let creds = c.bind_ready(&fourth, &fresh_id(), DEDICATED).await.unwrap()["credentials"].clone();
    assert_eq!(creds["port"].as_u64().unwrap() as u16, server.port);
    for id in ids.iter().skip(1).chain([&fourth]) {
        c.deprovision_done(id, DEDICATED).await.unwrap();
    }
}

/// A shared instance's binding works under its prefix only; after the shared server restarts
/// without its ACL users, one upkeep pass gives them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_users_stay_under_their_prefix_and_come_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = servers(1).await;
    let config = config(dir.path(), &servers, 1);
    // The broker is restarted below; the upkeep lease its killed process held lapses in
    // seconds (three upkeep intervals and one instance's timeout).
    let quick = [("KPAAS_BROKER__OPERATIONS__UPKEEP_TIMEOUT_SECS", "3")];
    let broker = start_with(dir.path(), &config, &quick).await;
    let c = Osb::new(target(&broker, SHARED));
    let (id, other, bid, other_bid) = (fresh_id(), fresh_id(), fresh_id(), fresh_id());
    c.provision_ready(&id, SHARED).await.unwrap();
    c.provision_ready(&other, SHARED).await.unwrap();
    let creds = c.bind_ready(&id, &bid, SHARED).await.unwrap()["credentials"].clone();
    let theirs = c.bind_ready(&other, &other_bid, SHARED).await.unwrap()["credentials"].clone();
    let prefix = creds["key_prefix"].as_str().unwrap().to_owned();
    assert!(
        creds.get("tls_port").is_none(),
        "the shared server has no TLS port: {creds}"
    );
    assert_eq!(prefix, format!("op_{}:", id.replace('-', "_")));

    let mut conn = app(&creds).await.unwrap();
    let mine = format!("{prefix}k");
    run(&mut conn, &["SET", &mine, "v"]).await.unwrap();
    let their_key = format!("{}k", theirs["key_prefix"].as_str().unwrap());
    for refused in [
        &["SET", "unprefixed", "v"][..],
        &["GET", &their_key],
        &["SET", "kpaas-broker:owners", "v"],
        &["HGETALL", "kpaas-broker:owners"],
        &["SCAN", "0"],
        &["RANDOMKEY"],
        &["KEYS", "*"],
        &["FLUSHDB"],
        &["SCRIPT", "FLUSH"],
        &["PUBLISH", "elsewhere", "x"],
        &["EVAL", "while true do end", "1", &mine],
        &["FUNCTION", "LIST"],
        &["SELECT", "1"],
        &["COPY", &mine, &format!("{prefix}copy"), "DB", "1"],
        &["MOVE", &mine, "1"],
        &["CLIENT", "TRACKING", "ON", "BCAST"],
        &["INFO"],
    ] {
        assert_eq!(
            run(&mut conn, refused).await.err().as_deref(),
            Some("NOPERM"),
            "{refused:?}"
        );
    }
    // Clients that always begin with `SELECT 0` keep working.
    run(&mut conn, &["SELECT", "0"]).await.unwrap();
    let channel = format!("{prefix}news");
    run(&mut conn, &["PUBLISH", &channel, "x"]).await.unwrap();

    // The broker is away meanwhile: an upkeep pass of its own could put the user back
    // before the check below.
    drop(broker);
    servers.shared.crash_and_restart().await;
    assert!(
        app(&creds).await.is_err(),
        "a restarted server kept its ACL users"
    );
    let broker = start_with(dir.path(), &config, &quick).await;
    let c = Osb::new(target(&broker, SHARED));
    let deadline = Instant::now() + Duration::from_secs(30);
    while app(&creds).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the upkeep never put the user back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut conn = app(&creds).await.unwrap();
    run(&mut conn, &["SET", &mine, "again"]).await.unwrap();
    assert!(run(&mut conn, &["SET", "unprefixed", "v"]).await.is_err());

    c.unbind_done(&id, &bid, SHARED).await.unwrap();
    assert!(app(&creds).await.is_err(), "the login outlived unbind");
    c.deprovision_done(&id, SHARED).await.unwrap();
    let mut admin = servers.shared.admin().await;
    assert_eq!(
        run(&mut admin, &["EXISTS", &mine]).await.unwrap(),
        redis::Value::Int(0),
        "the instance's keys outlived it"
    );
    c.unbind_done(&other, &other_bid, SHARED).await.unwrap();
    c.deprovision_done(&other, SHARED).await.unwrap();
    assert_eq!(
        run(&mut admin, &["HLEN", "kpaas-broker:owners"])
            .await
            .unwrap(),
        redis::Value::Int(0),
        "markers outlived their instances"
    );
}

/// Ids that are no GUIDs get plain names of their own; an ACL user the broker did not make
/// under a binding's name is never adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_ids_get_plain_names_and_foreign_users_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let servers = servers(1).await;
    let broker = start(dir.path(), &config(dir.path(), &servers, 30)).await;
    let c = Osb::new(target(&broker, SHARED));
    for bad in ["a%2Fb", "a%20b", "a*b", "%2A"] {
        let reply = c
            .provision(bad, &c.provision_body(SHARED), false)
            .await
            .unwrap();
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
    }
    let mut prefixes = std::collections::HashSet::new();
    for id in ["default", "Default", "a.b", &"x".repeat(120)] {
        c.provision_ready(id, SHARED).await.unwrap();
        let creds = c.bind_ready(id, id, SHARED).await.unwrap()["credentials"].clone();
        for name in [
            creds["key_prefix"].as_str().unwrap(),
            creds["username"].as_str().unwrap(),
        ] {
            let name = name.trim_end_matches(':');
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    && name != "default",
                "{id:?} made {name:?}"
            );
            assert!(prefixes.insert(name.to_owned()), "{id:?} reused {name:?}");
        }
        c.unbind_done(id, id, SHARED).await.unwrap();
        c.deprovision_done(id, SHARED).await.unwrap();
    }

    // A user someone else made under the name a binding would get.
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, SHARED).await.unwrap();
    let squatter = format!("b_{}", bid.replace('-', "_"));
    let mut admin = servers.shared.admin().await;
    run(
        &mut admin,
        &[
            "ACL",
            "SETUSER",
            &squatter,
            "on",
            ">Squatter-pass-1",
            "~*",
            "+get",
        ],
    )
    .await
    .unwrap();
    let reply = c
        .bind(&id, &bid, &c.bind_body(SHARED), false)
        .await
        .unwrap();
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(
        connect(servers.shared.port, &squatter, "Squatter-pass-1")
            .await
            .is_ok(),
        "the foreign user was changed"
    );
    c.deprovision_done(&id, SHARED).await.unwrap();
    assert!(
        connect(servers.shared.port, &squatter, "Squatter-pass-1")
            .await
            .is_ok(),
        "the foreign user was removed"
    );
}

/// `check-config` names a server whose `default` user takes clients without a password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_names_a_server_open_to_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let servers = servers(1).await;
    let config = config(dir.path(), &servers, 30);
    let check = || {
        let store = osb_testkit::sqlite_store(dir.path());
        command(&config, &store)
            .arg("check-config")
            .output()
            .unwrap()
    };
    let fine = check();
    assert!(
        fine.status.success(),
        "{}",
        String::from_utf8_lossy(&fine.stdout)
    );
    let mut admin = servers.pool[0].admin().await;
    run(&mut admin, &["ACL", "SETUSER", "default", "nopass"])
        .await
        .unwrap();
    let open = check();
    let said = String::from_utf8_lossy(&open.stdout);
    assert!(!open.status.success(), "{said}");
    assert!(
        said.contains("pool-0") && said.contains("needs no password"),
        "{said}"
    );
}

/// Whether process `pid` runs (a killed one nobody has reaped yet does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// `kill -9` of a local instance's server: upkeep starts it again on its append-only file;
/// a broker restart leaves running processes alone and serves them on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_local_server_comes_back_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = LocalData::new();
    let servers = servers(1).await;
    let config = local_config(dir.path(), &servers, data.path(), port_range(4));
    let broker = start(dir.path(), &config).await;
    let c = Osb::new(target(&broker, LOCAL));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, LOCAL).await.unwrap();
    let creds = c.bind_ready(&id, &bid, LOCAL).await.unwrap()["credentials"].clone();
    let mut conn = app(&creds).await.unwrap();
    run(&mut conn, &["SET", "kept", "through a crash"])
        .await
        .unwrap();
    // appendfsync everysec: past the next fsync, the write is on disk.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let pid = local_pid(data.path(), &id);
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut conn = loop {
        if let Ok(conn) = app(&creds).await {
            break conn;
        }
        assert!(
            Instant::now() < deadline,
            "the killed server never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(local_pid(data.path(), &id), pid, "the same process?");
    assert_eq!(
        run(&mut conn, &["GET", "kept"]).await.unwrap(),
        redis::Value::BulkString(b"through a crash".to_vec())
    );

    drop(broker);
    let running = local_pid(data.path(), &id);
    let broker = start(dir.path(), &config).await;
    let c = Osb::new(target(&broker, LOCAL));
    let other = c.bind_ready(&id, &fresh_id(), LOCAL).await.unwrap()["credentials"].clone();
    assert_eq!(other["port"], creds["port"]);
    assert_eq!(
        local_pid(data.path(), &id),
        running,
        "a broker restart restarted the server"
    );
    c.deprovision_done(&id, LOCAL).await.unwrap();
    assert!(!alive(running), "the process outlived its instance");
    assert!(
        std::fs::read_dir(data.path()).unwrap().next().is_none(),
        "the instance's directory outlived it"
    );
}

/// Thirty local instances at once, each its own process and port; past the range, a refusal
/// that says so; all gone after deprovision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_concurrent_local_provisions_each_get_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = LocalData::new();
    let servers = servers(1).await;
    let ports = port_range(30);
    let config = local_config(dir.path(), &servers, data.path(), ports);
    let broker = start(dir.path(), &config).await;
    let c = Osb::new(target(&broker, LOCAL));
    // A port of the range another program holds is skipped: that many fewer can be made.
    let free = (ports[0]..=ports[1]).filter(|p| port_free(*p)).count();
    let ids: Vec<String> = (0..30).map(|_| fresh_id()).collect();
    let made = futures::future::join_all(ids.iter().map(|id| c.provision_ready(id, LOCAL))).await;
    let failed: Vec<String> = made
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
        .collect();
    let made: Vec<&String> = ids
        .iter()
        .zip(&made)
        .filter_map(|(id, r)| r.is_ok().then_some(id))
        .collect();
    assert_eq!(
        made.len(),
        free.min(30),
        "{} of 30 local provisions worked; the others: {failed:?}",
        made.len()
    );
    let mut seen = std::collections::HashSet::new();
    for id in &made {
        let body = c.bind_ready(id, &fresh_id(), LOCAL).await.unwrap();
        let creds = &body["credentials"];
        assert!(
            seen.insert(creds["port"].as_u64().unwrap()),
            "a port served twice"
        );
        let mut conn = app(creds).await.unwrap();
        run(&mut conn, &["SET", "mine", id]).await.unwrap();
    }
    let more = fresh_id();
    let reply = c
        .provision(&more, &c.provision_body(LOCAL), false)
        .await
        .unwrap();
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(
        reply.body["description"]
            .as_str()
            .unwrap()
            .contains("no free port"),
        "{}",
        reply.body
    );
    let done = futures::future::join_all(made.iter().map(|id| c.deprovision_done(id, LOCAL))).await;
    assert!(done.iter().all(Result::is_ok), "{done:?}");
    assert!(std::fs::read_dir(data.path()).unwrap().next().is_none());
}

/// A port taken after it was found free and before the server listens on it (by an outgoing
/// connection, another program): the new instance moves to the next free port and gives the
/// taken one back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_port_is_taken_before_its_server_listens_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = LocalData::new();
    let servers = servers(1).await;
    let ports = port_range(2);
    let config = local_config(dir.path(), &servers, data.path(), ports);
    // Its first start lets another redis-server take the port, then fails as redis-server
    // does on a taken port; every later start is redis-server's own.
    let holder = data.path().join("holder");
    let stub = dir.path().join("redis-server-stub");
    std::fs::write(
        &stub,
        format!(
            r#"#!/bin/sh
holder="{holder}"
if [ ! -d "$holder" ]; then
    port=$(/usr/bin/awk '$1 == "port" {{ print $2 }}' "$1")
    /bin/mkdir "$holder"
    /usr/bin/redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --daemonize yes --dir "$holder" --pidfile "$holder/redis.pid" --logfile "$holder/redis.log"
    until /usr/bin/redis-cli -p "$port" ping >/dev/null 2>&1; do /bin/sleep 0.05; done
    exit 1
fi
exec /usr/bin/redis-server "$@"
"#,
            holder = holder.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[redis.local]\n",
        &format!("[redis.local]\nredis_server = \"{}\"\n", stub.display()),
    );
    std::fs::write(&config, text).unwrap();
    let broker = start(dir.path(), &config).await;
    let c = Osb::new(target(&broker, LOCAL));
    let id = fresh_id();
    c.provision_ready(&id, LOCAL).await.unwrap();
    let squatter =
        std::fs::read_to_string(holder.join("redis.pid")).expect("the stub took no port");
    let creds = c.bind_ready(&id, &fresh_id(), LOCAL).await.unwrap()["credentials"].clone();
    assert_eq!(creds["port"], ports[1]);
    let mut conn = app(&creds).await.unwrap();
    run(&mut conn, &["SET", "mine", &id]).await.unwrap();

    // With the other program gone, the next instance gets the port the first one gave back.
    Command::new("kill")
        .args(["-9", squatter.trim()])
        .status()
        .unwrap();
    std::fs::remove_file(holder.join("redis.pid")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !port_free(ports[0]) {
        assert!(Instant::now() < deadline, "port {} stayed taken", ports[0]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let other = fresh_id();
    c.provision_ready(&other, LOCAL).await.unwrap();
    let creds = c.bind_ready(&other, &fresh_id(), LOCAL).await.unwrap()["credentials"].clone();
    assert_eq!(creds["port"], ports[0]);
    for id in [&id, &other] {
        c.deprovision_done(id, LOCAL).await.unwrap();
    }
}

/// Local mode on a state store other replicas share is refused, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_refuses_a_shared_state_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = LocalData::new();
    let servers = servers(1).await;
    let config = local_config(dir.path(), &servers, data.path(), port_range(2));
    let store = "mysql://root@127.0.0.1:3306/kpaas_unused";
    let out = command(&config, store).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("SQLite state store of its own"), "{said}");
}

/// A plan change sets the process's memory limit live; one below what the server holds is a
/// 422 that says so, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgrade_below_the_memory_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = LocalData::new();
    let servers = servers(1).await;
    let config = local_config(dir.path(), &servers, data.path(), port_range(2));
    let broker = start(dir.path(), &config).await;
    let c = Osb::new(target(&broker, LOCAL));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, LOCAL).await.unwrap();
    let creds = c.bind_ready(&id, &bid, LOCAL).await.unwrap()["credentials"].clone();
    let mut conn = app(&creds).await.unwrap();
    let big = "x".repeat(1024 * 1024);
    for i in 0..8 {
        run(&mut conn, &["SET", &format!("big{i}"), &big])
            .await
            .unwrap();
    }
    let down = serde_json::json!({"service_id": SERVICE, "plan_id": TINY});
    let refused = c.update(&id, &down, true).await.unwrap();
    assert_eq!(refused.status, 422, "{}", refused.body);
    let said = refused.body["description"].as_str().unwrap();
    assert!(
        said.contains("MiB") && said.contains("local-tiny"),
        "{said}"
    );
    let home = creds["port"].as_u64().unwrap() as u16;
    let password = std::fs::read_to_string(
        data.path()
            .join(format!("op_{}", id.replace('-', "_")))
            .join("redis.conf"),
    )
    .unwrap()
    .lines()
    .find_map(|l| l.strip_prefix("requirepass "))
    .unwrap()
    .trim_matches('"')
    .to_owned();
    let mut admin = connect(home, "default", &password).await.unwrap();
    let limit = |v: redis::Value| match v {
        redis::Value::Array(items) => items[1].clone(),
        other => other,
    };
    assert_eq!(
        limit(
            run(&mut admin, &["CONFIG", "GET", "maxmemory"])
                .await
                .unwrap()
        ),
        redis::Value::BulkString(b"67108864".to_vec()),
        "the refused change changed the limit"
    );
    for i in 0..8 {
        run(&mut conn, &["DEL", &format!("big{i}")]).await.unwrap();
    }
    let done = c.update(&id, &down, true).await.unwrap();
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(
        limit(
            run(&mut admin, &["CONFIG", "GET", "maxmemory"])
                .await
                .unwrap()
        ),
        redis::Value::BulkString(b"4194304".to_vec())
    );
    c.deprovision_done(&id, TINY).await.unwrap();
}

/// The shared server stops: 503s naming it and never quoting its password, nothing recorded;
/// back, the broker carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_a_503_naming_it_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = servers(1).await;
    let broker = start(dir.path(), &config(dir.path(), &servers, 30)).await;
    let c = Osb::new(target(&broker, SHARED));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, SHARED).await.unwrap();
    servers.shared.crash();
    let named = format!("127.0.0.1:{}", servers.shared.port);
    check_backend_down(
        &target(&broker, SHARED),
        &id,
        &fresh_id(),
        &named,
        SHARED_PASSWORD,
    )
    .await
    .unwrap();
    servers.shared.restart().await;
    let creds = c.bind_ready(&id, &bid, SHARED).await.unwrap()["credentials"].clone();
    let mut conn = app(&creds).await.unwrap();
    let key = format!("{}k", creds["key_prefix"].as_str().unwrap());
    run(&mut conn, &["SET", &key, "v"]).await.unwrap();
    c.unbind_done(&id, &bid, SHARED).await.unwrap();
    c.deprovision_done(&id, SHARED).await.unwrap();
}

/// The shared server loses the broker's marker hash (evicted, flushed): unbind still removes
/// the binding's user and deprovision still removes the instance's keys, as their records in
/// the store name them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_marker_hash_leaves_no_user_or_key_behind() {
    let dir = tempfile::tempdir().unwrap();
    let servers = servers(1).await;
    let broker = start(dir.path(), &config(dir.path(), &servers, 30)).await;
    let c = Osb::new(target(&broker, SHARED));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, SHARED).await.unwrap();
    let creds = c.bind_ready(&id, &bid, SHARED).await.unwrap()["credentials"].clone();
    let key = format!("{}k", creds["key_prefix"].as_str().unwrap());
    run(&mut app(&creds).await.unwrap(), &["SET", &key, "v"])
        .await
        .unwrap();
    let mut admin = servers.shared.admin().await;
    run(&mut admin, &["DEL", "kpaas-broker:owners"])
        .await
        .unwrap();
    c.unbind_done(&id, &bid, SHARED).await.unwrap();
    assert!(app(&creds).await.is_err(), "the user outlived unbind");
    c.deprovision_done(&id, SHARED).await.unwrap();
    assert_eq!(
        run(&mut admin, &["EXISTS", &key]).await.unwrap(),
        redis::Value::Int(0),
        "the keys outlived the instance"
    );
}

/// `orphans` lists a shared prefix whose instance the store lost and an ACL user named like the
/// broker's without a marker; `--delete` removes the prefix's keys and marker and leaves the
/// unmarked user and claimed instances alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_listed_and_only_marked_ones_removed() {
    let dir = tempfile::tempdir().unwrap();
    let servers = servers(1).await;
    let config = config(dir.path(), &servers, 30);
    let broker = start(dir.path(), &config).await;
    let c = Osb::new(target(&broker, SHARED));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, SHARED).await.unwrap();
    let creds = c.bind_ready(&id, &bid, SHARED).await.unwrap()["credentials"].clone();
    drop(broker);

    // Leftovers of a lost instance (a marker that says it was made, and its keys) and a user
    // named like a binding's that nobody marked.
    let suffix = fresh_id().replace('-', "");
    let (lost, stray) = (
        format!("op_lost{}", &suffix[..12]),
        format!("b_stray{}", &suffix[..12]),
    );
    let marker = serde_json::json!({"platform": "default", "owner_id": fresh_id(),
        "parent": "", "created_at_ms": 0, "made": true})
    .to_string();
    let mut admin = servers.shared.admin().await;
    let field = format!("prefix:{lost}");
    let key = format!("{lost}:k");
    run(
        &mut admin,
        &["HSET", "kpaas-broker:owners", &field, &marker],
    )
    .await
    .unwrap();
    run(&mut admin, &["SET", &key, "v"]).await.unwrap();
    run(
        &mut admin,
        &["ACL", "SETUSER", &stray, "on", ">Stray-pass-1"],
    )
    .await
    .unwrap();

    let orphans = |args: &[&str]| {
        let store = osb_testkit::sqlite_store(dir.path());
        command(&config, &store)
            .arg("orphans")
            .args(args)
            .output()
            .unwrap()
    };
    let rows = osb_testkit::orphan_rows(&orphans(&["--json"]));
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).cloned();
    assert_eq!(
        row(&lost).expect("the lost prefix is listed")["removable"],
        true
    );
    assert_eq!(
        row(&stray).expect("the stray user is listed")["removable"],
        false
    );
    let own_prefix = creds["key_prefix"].as_str().unwrap().trim_end_matches(':');
    assert!(
        row(own_prefix).is_none() && row(creds["username"].as_str().unwrap()).is_none(),
        "a claimed object is listed"
    );

    let deleted = orphans(&["--delete", "--force"]);
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    assert_eq!(
        run(&mut admin, &["EXISTS", &key]).await.unwrap(),
        redis::Value::Int(0)
    );
    assert_eq!(
        run(&mut admin, &["HEXISTS", "kpaas-broker:owners", &field])
            .await
            .unwrap(),
        redis::Value::Int(0)
    );
    assert!(
        connect(servers.shared.port, &stray, "Stray-pass-1")
            .await
            .is_ok(),
        "an unmarked user was removed"
    );
    assert!(
        app(&creds).await.is_ok(),
        "a claimed binding's user was removed"
    );
}

/// The broker binary with `config`, the test passwords and the state store at `store`, for
/// its commands (`check-config`, `orphans`) or a start that must fail.
fn command(config: &std::path::Path, store: &str) -> Command {
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_redis-broker"));
    let mut command = osb_testkit::broker_command(binary, config, store);
    command
        .env("REDIS_BROKER_POOL_PASSWORD", POOL_PASSWORD)
        .env("REDIS_BROKER_SHARED_PASSWORD", SHARED_PASSWORD);
    command
}
