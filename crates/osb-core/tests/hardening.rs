//! The security review's findings on osb-core (issue #7): metrics labels, fencing of late
//! operations, update against binds in flight, pruning of operation records, platform routing;
//! and a network store's pool outliving the server's end of its connections.

mod common;

use std::time::{Duration, Instant};

use common::*;
use osb_core::store::{InstanceState, OperationState, Outcome, Release, Start, Store};
use osb_testkit::{Client, fresh_id};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_do_not_grow_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = spawn(&single_platform(&sqlite_url(&dir))).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", running.addr);
    let send = |i: usize, path: &'static str| {
        let method = reqwest::Method::from_bytes(format!("FOO{i}").as_bytes()).unwrap();
        http.request(method, format!("{base}{path}")).send()
    };
    let lines = || async {
        reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    for (i, path) in [(0, "/health"), (1, "/v2/catalog"), (2, "/nowhere")] {
        send(i, path).await.unwrap();
    }
    lines().await; // counts itself from then on
    let before = lines().await;
    for i in 3..53 {
        send(i, "/health").await.unwrap();
        send(i, "/v2/catalog").await.unwrap();
        send(i, "/nowhere/else").await.unwrap();
    }
    let after = lines().await;
    assert_eq!(
        before.lines().count(),
        after.lines().count(),
        "150 made-up requests added metric lines:\n{before}\n----\n{after}"
    );
    running.stop().await;
}

/// A replica stalls past its lease; its operation is reaped and the platform's retry takes the
/// row over. When the stalled task wakes up, its outcome must not be written.
async fn late_operations_are_fenced_out(url: &str) {
    let store = Store::connect(url, 2).await.unwrap();
    let counts = || {
        let c = store.counters();
        (c.statements.get(), c.commits.get())
    };
    let id = fresh_id();
    let (op1, op2) = (fresh_id(), fresh_id());
    let before = counts();
    let row = instance_row(&id, &op1);
    let first = operation_row(&op1, &id);
    assert!(store.start(&first, Start::NewInstance(&row)).await.unwrap());
    // The record and its row in one transaction: one commit (and at least two statements).
    let after = counts();
    assert_eq!(after.1, before.1 + 1, "{url}");
    assert!(after.0 >= before.0 + 2, "{url}: {before:?} -> {after:?}");
    // A second start on the same row writes nothing: not even its record.
    let again = operation_row(&fresh_id(), &id);
    assert!(!store.start(&again, Start::NewInstance(&row)).await.unwrap());
    assert!(store.operation(&again.id).await.unwrap().is_none(), "{url}");
    assert_eq!(
        counts().1,
        after.1,
        "{url}: a rolled-back start commits nothing"
    );
    let after = counts();
    assert!(store.instance(&id).await.unwrap().is_some());
    let read = counts();
    assert_eq!(read.1, after.1, "{url}: a read commits nothing");
    assert!(read.0 > after.0, "{url}");
    // The reaper fails op1 and frees the row; the retry claims it for op2.
    let release = Release::Instance(&id, InstanceState::Failed);
    let before = counts();
    assert!(
        store
            .fail(&op1, "replica-a/1", release, "died", None, None)
            .await
            .unwrap()
    );
    let after = counts();
    assert_eq!(after.1, before.1 + 1, "{url}: one transaction, one commit");
    assert!(after.0 > before.0 + 2, "{url}: {before:?} -> {after:?}");
    let claim = Start::Instance {
        id: &id,
        from: &[InstanceState::Failed],
        to: InstanceState::Provisioning,
        previous: &op1,
    };
    assert!(store.start(&operation_row(&op2, &id), claim).await.unwrap());

    let mut late = instance_row(&id, &op1);
    late.state = InstanceState::Ready.as_str().into();
    assert!(
        !store
            .succeed(&op1, "replica-a/1", Outcome::SaveInstance(&late))
            .await
            .unwrap()
    );
    assert!(
        !store
            .discard(&op1, "replica-a/1", Outcome::DeleteInstance(&id))
            .await
            .unwrap()
    );
    let late_failure = Release::Instance(&id, InstanceState::Ready);
    assert!(
        !store
            .fail(&op1, "replica-a/1", late_failure, "late", None, None)
            .await
            .unwrap()
    );
    let row = store.instance(&id).await.unwrap().expect("row kept");
    assert_eq!(row.operation_id, op2);
    assert_eq!(row.state(), Some(InstanceState::Provisioning));
    assert_eq!(
        store.operation(&op1).await.unwrap().unwrap().state(),
        Some(OperationState::Failed)
    );

    // op2's process stops too; replica b takes it over. The old process cannot end it any more.
    let took = store
        .take_over(&op2, "replica-a/1", 1, "replica-b", "replica-b/2")
        .await
        .unwrap();
    assert!(took);
    let again = store
        .take_over(&op2, "replica-a/1", 1, "replica-c", "replica-c/3")
        .await
        .unwrap();
    assert!(!again, "two replicas took over one operation");
    let mut done = instance_row(&id, &op2);
    done.state = InstanceState::Ready.as_str().into();
    let zombie = store
        .succeed(&op2, "replica-a/1", Outcome::SaveInstance(&done))
        .await
        .unwrap();
    assert!(!zombie, "the replaced process recorded an end");
    assert!(
        store
            .succeed(&op2, "replica-b/2", Outcome::SaveInstance(&done))
            .await
            .unwrap()
    );
    assert_eq!(
        store.instance(&id).await.unwrap().unwrap().state(),
        Some(InstanceState::Ready)
    );
    assert_eq!(
        store.operation(&op2).await.unwrap().unwrap().state(),
        Some(OperationState::Succeeded)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_operations_are_fenced_out_on_every_store() {
    on_every_store(|url| async move { late_operations_are_fenced_out(&url).await }).await;
}

/// Another process on the SQLite store's file: holds its write lock for 1.5 s, having run
/// `sql` in that transaction. Returns once the lock is taken; the flag says it was let go.
fn hold_write_lock(
    path: &std::path::Path,
    sql: String,
) -> (
    std::thread::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;
    let path = path.to_owned();
    let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (locked, held) = std::sync::mpsc::channel();
    let holder = {
        let released = released.clone();
        std::thread::spawn(move || {
            let mut other = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
            other.batch_execute("BEGIN IMMEDIATE").unwrap();
            other.batch_execute(&sql).unwrap();
            locked.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            other.batch_execute("COMMIT").unwrap();
            released.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    held.recv().unwrap();
    (holder, released)
}

/// A new instance written to `store`: its id.
async fn new_instance(store: &Store) -> String {
    let (id, op) = (fresh_id(), fresh_id());
    let made = store
        .start(
            &operation_row(&op, &id),
            Start::NewInstance(&instance_row(&id, &op)),
        )
        .await
        .unwrap();
    assert!(made);
    id
}

/// Another process's full checkpoint of the SQLite file at `path`: whether a read transaction
/// left open held it back.
fn full_checkpoint_blocked(path: &std::path::Path) -> bool {
    use diesel::{Connection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Checkpoint {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        busy: i32,
    }
    let mut other = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    let done: Checkpoint = diesel::sql_query("PRAGMA wal_checkpoint(TRUNCATE)")
        .get_result(&mut other)
        .unwrap();
    done.busy != 0
}

/// SQLite writes run in place and give up at once on a locked file; another process holding
/// the write lock (a second broker on the same file, a migration, an operator's `sqlite3`)
/// must make them wait for it, not fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_write_waits_for_another_process_lock() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&sqlite_url(&dir), 2).await.unwrap();
    let (holder, _) = hold_write_lock(&dir.path().join("state.db"), String::new());
    let started = Instant::now();
    let id = new_instance(&store).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "written while another process held the lock"
    );
    assert!(store.instance(&id).await.unwrap().is_some());
    holder.join().unwrap();
}

/// A write given up while the waiting writer waits for another process's lock (a caller's
/// timeout) leaves its statement running on a blocking thread; the next write must still get a
/// connection of its own (diesel-async panics on one still shared), and what the abandoned write
/// began must not be committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_given_up_on_the_waiting_writer_leaves_the_store_usable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&sqlite_url(&dir), 2).await.unwrap();
    let (holder, released) = hold_write_lock(&dir.path().join("state.db"), String::new());
    let (abandoned, op) = (fresh_id(), fresh_id());
    let given_up = tokio::time::timeout(
        Duration::from_millis(300),
        store.start(
            &operation_row(&op, &abandoned),
            Start::NewInstance(&instance_row(&abandoned, &op)),
        ),
    )
    .await;
    assert!(given_up.is_err(), "the write did not wait for the lock");
    assert!(!released.load(std::sync::atomic::Ordering::SeqCst));
    let id = new_instance(&store).await;
    holder.join().unwrap();
    assert!(store.instance(&id).await.unwrap().is_some());
    assert!(
        store.instance(&abandoned).await.unwrap().is_none(),
        "the abandoned write was committed"
    );
}

/// SQLite reads run on the request's thread: one must neither wait for a write lock another
/// process holds (nor see what that process has not committed), nor keep a read transaction
/// open after it, which would stop checkpoints and grow the WAL without end (the store's one
/// pinned read mark lets go before each of its writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reads_neither_wait_for_a_writer_nor_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&sqlite_url(&dir), 2).await.unwrap();
    let path = dir.path().join("state.db");
    let (id, op) = (fresh_id(), fresh_id());
    let row = instance_row(&id, &op);
    assert!(
        store
            .start(&operation_row(&op, &id), Start::NewInstance(&row))
            .await
            .unwrap()
    );
    let (holder, released) = hold_write_lock(
        &path,
        format!("UPDATE osb_instances SET plan_id = 'changed' WHERE id = '{id}'"),
    );
    let read = store
        .instance(&id)
        .await
        .unwrap()
        .expect("the committed row");
    assert!(
        !released.load(std::sync::atomic::Ordering::SeqCst),
        "the read waited for the other process's write lock"
    );
    assert_eq!(read.plan_id, row.plan_id, "an uncommitted change was read");
    holder.join().unwrap();
    let read = store.instance(&id).await.unwrap().unwrap();
    assert_eq!(read.plan_id, "changed", "a committed change was not read");
    // Every kind of read, then a checkpoint that no open read may hold back.
    assert!(store.instance_with_facts(&id).await.unwrap().is_some());
    assert!(store.instance_with_operation(&id).await.unwrap().is_some());
    assert!(store.operation(&op).await.unwrap().is_some());
    assert!(store.latest_operation(&id, None).await.unwrap().is_some());
    assert!(store.binding(&fresh_id()).await.unwrap().is_none());
    // The store's own read mark, held between its writes, lets go for the next one.
    new_instance(&store).await;
    assert!(
        !full_checkpoint_blocked(&path),
        "a read transaction was left open"
    );
}

/// A serving SQLite store's reads leave one read transaction open between its writes (its
/// pinned read mark, which spares each read two system calls), and its next write lets it go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_read_pins_its_read_mark_until_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&sqlite_url(&dir), 2).await.unwrap();
    let path = dir.path().join("state.db");
    // The pin's timer looks at the file once as it starts; a read that meets that look goes
    // without the pin.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = new_instance(&store).await;
    assert!(!full_checkpoint_blocked(&path), "held before any read");
    new_instance(&store).await;
    assert!(store.instance(&id).await.unwrap().is_some());
    assert!(full_checkpoint_blocked(&path), "a read left no pin");
    new_instance(&store).await;
    assert!(
        !full_checkpoint_blocked(&path),
        "a write did not let the pin go"
    );
}

/// A pass's upkeep figures: kept, replaced and forgotten in one commit, never for an instance
/// that is gone.
async fn upkeep_facts_are_kept_in_one_commit(url: &str) {
    let store = Store::connect(url, 2).await.unwrap();
    let (id, gone) = (fresh_id(), fresh_id());
    let op = fresh_id();
    let row = instance_row(&id, &op);
    assert!(
        store
            .start(&operation_row(&op, &id), Start::NewInstance(&row))
            .await
            .unwrap()
    );
    let facts = |text: &str, at: i64| Some((text.to_owned(), at));
    let commits = || store.counters().commits.get();
    let before = commits();
    store
        .keep_facts(&[
            (id.clone(), facts("{\"a\":1}", 5)),
            (gone.clone(), facts("{}", 5)),
        ])
        .await
        .unwrap();
    assert_eq!(commits(), before + 1, "{url}");
    let kept = |id: String| {
        let store = &store;
        async move {
            store
                .instance_with_facts(&id)
                .await
                .unwrap()
                .and_then(|(_, f)| f)
        }
    };
    assert_eq!(kept(id.clone()).await, facts("{\"a\":1}", 5), "{url}");
    // An instance made later under the id that was gone shows no figures.
    let op = fresh_id();
    let row = instance_row(&gone, &op);
    assert!(
        store
            .start(&operation_row(&op, &gone), Start::NewInstance(&row))
            .await
            .unwrap()
    );
    assert_eq!(kept(gone.clone()).await, None, "{url}");
    store
        .keep_facts(&[(id.clone(), facts("{\"a\":2}", 6))])
        .await
        .unwrap();
    assert_eq!(kept(id.clone()).await, facts("{\"a\":2}", 6), "{url}");
    store.keep_facts(&[(id.clone(), None)]).await.unwrap();
    assert_eq!(kept(id.clone()).await, None, "{url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upkeep_facts_are_kept_in_one_commit_on_every_store() {
    on_every_store(|url| async move { upkeep_facts_are_kept_in_one_commit(&url).await }).await;
}

/// Ends every connection to the database of `url` but the caller's, from the server's side.
async fn server_drops_connections(url: &str) {
    use diesel_async::{AsyncConnection, AsyncMysqlConnection, AsyncPgConnection, RunQueryDsl};
    let (admin, name) = url.rsplit_once('/').unwrap();
    if url.starts_with("mysql://") {
        #[derive(diesel::QueryableByName)]
        struct Id {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            id: i64,
        }
        let mut c = AsyncMysqlConnection::establish(&format!("{admin}/mysql"))
            .await
            .unwrap();
        let ids: Vec<Id> = diesel::sql_query(format!(
            "SELECT CAST(id AS SIGNED) AS id FROM information_schema.processlist WHERE db = '{name}'"
        ))
        .load(&mut c)
        .await
        .unwrap();
        assert!(!ids.is_empty(), "the store holds no connection to {name}");
        for Id { id } in ids {
            diesel::sql_query(format!("KILL {id}"))
                .execute(&mut c)
                .await
                .unwrap();
        }
    } else {
        let mut c = AsyncPgConnection::establish(&format!("{admin}/postgres"))
            .await
            .unwrap();
        let ended = diesel::sql_query(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .execute(&mut c)
        .await
        .unwrap();
        assert!(ended > 0, "the store holds no connection to {name}");
    }
}

/// A pooled connection is not checked with a round trip at every use (that doubled a read's
/// cost); one idle for a while is, so a server that dropped it (a restart, a timeout) fails
/// no request. One in steady use that the server dropped fails the request that finds it
/// dead, and is replaced before the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_server_dropped_are_replaced() {
    for url in [fresh_mysql().await, fresh_postgres().await] {
        let store = Store::connect(&url, 1).await.unwrap();
        assert!(store.instance("no-such-instance").await.unwrap().is_none());
        server_drops_connections(&url).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after_idle = store.instance("no-such-instance").await;
        server_drops_connections(&url).await;
        // At once: the connection was just used, and is handed out unchecked.
        let _found_dead = store.instance("no-such-instance").await;
        let mut reads = Vec::new();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            reads.push(store.instance("no-such-instance").await);
        }
        drop(store);
        drop_database(&url).await;
        assert!(after_idle.unwrap().is_none(), "{url}");
        for read in reads {
            assert!(
                read.unwrap().is_none(),
                "{url}: a dead connection was handed out again"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_as_slow_as_the_lease_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = single_platform(&sqlite_url(&dir));
    config.operations.heartbeat_secs = config.operations.lease_secs;
    let refused = osb_core::server::start(
        &config,
        FakeBroker {
            calls: Default::default(),
            upkeep_every: None,
        },
        osb_core::metrics::Metrics::new(),
    )
    .await;
    let err = refused.err().expect("started anyway").to_string();
    assert!(err.contains("heartbeat_secs"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_change_waits_for_binds_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = spawn(&single_platform(&sqlite_url(&dir))).await;
    let c = Client::new(target(running.addr, ""));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN_ASYNC).await.unwrap();
    let bind = c
        .bind(&id, &bid, &c.bind_body(PLAN_ASYNC), true)
        .await
        .unwrap();
    assert_eq!(bind.status, 202, "{}", bind.body);
    let change = json!({"service_id": SERVICE, "plan_id": PLAN_LARGE});
    let refused = c.update(&id, &change, true).await.unwrap();
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(
        refused.body["error"], "ConcurrencyError",
        "{}",
        refused.body
    );
    // The refusal left the instance's last real operation in place.
    let last = c.instance_last_operation(&id, None).await.unwrap();
    assert_eq!(last.status, 200, "{}", last.body);
    assert_eq!(last.body["state"], "succeeded", "{}", last.body);
    let bound = c
        .poll(&id, Some(&bid), bind.operation().as_deref())
        .await
        .unwrap();
    assert_eq!(bound.body["state"], "succeeded", "{}", bound.body);
    let changed = c.update(&id, &change, true).await.unwrap();
    assert_eq!(changed.status, 200, "{}", changed.body);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_operations_are_pruned_and_refusals_leave_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let mut config = single_platform(&url);
    config.operations.retention_secs = 1;
    let (running, _) = spawn(&config).await;
    let c = Client::new(target(running.addr, ""));
    let id = fresh_id();
    let provisioned = c
        .provision(&id, &c.provision_body(PLAN_ASYNC), true)
        .await
        .unwrap();
    let op1 = provisioned.operation().expect("202 with an operation");
    c.provision_ready(&id, PLAN_ASYNC).await.unwrap();
    let updated = c
        .update(
            &id,
            &json!({"service_id": SERVICE, "parameters": {"x": 1}}),
            true,
        )
        .await
        .unwrap();
    assert_eq!(updated.status, 202, "{}", updated.body);
    let op2 = updated.operation().unwrap();
    let last = c.poll(&id, None, Some(&op2)).await.unwrap();
    assert_eq!(last.body["state"], "succeeded", "{}", last.body);
    // A backend that is down changes nothing: nothing of these requests stays in the store.
    let refused: Vec<String> = (0..10).map(|_| fresh_id()).collect();
    for rid in &refused {
        let reply = c
            .provision(rid, &c.provision_body(PLAN_DOWN), false)
            .await
            .unwrap();
        assert_eq!(reply.status, 503, "{}", reply.body);
    }

    let store = Store::connect(&url, 1).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.operation(&op1).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "operation {op1} never pruned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        store.operation(&op2).await.unwrap().is_some(),
        "the instance's current operation was pruned"
    );
    for rid in &refused {
        assert!(store.instance(rid).await.unwrap().is_none());
        assert!(store.latest_operation(rid, None).await.unwrap().is_none());
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_platform_listed_first_does_not_take_another_platforms_requests() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        &sqlite_url(&dir),
        r#"
        [[platforms]]
        name = "root"
        prefix = ""
        username = "broker"
        password = "broker-secret"
        [[platforms]]
        name = "cf"
        prefix = "/cf"
        username = "cf"
        password = "cf-secret"
        "#,
    );
    let (running, _) = spawn(&config).await;
    let root = Client::new(target(running.addr, ""));
    let mut cf_target = target(running.addr, "/cf");
    cf_target.username = "cf".into();
    cf_target.password = "cf-secret".into();
    let cf = Client::new(cf_target);
    for c in [&cf, &root] {
        let catalog = c.send(reqwest::Method::GET, "/v2/catalog", None).await;
        assert_eq!(catalog.unwrap().status, 200);
    }
    // The root platform's credentials do not open the cf platform's routes.
    let root_on_cf = root
        .send(reqwest::Method::GET, "/cf/v2/catalog", None)
        .await
        .unwrap();
    assert_eq!(root_on_cf.status, 401, "{}", root_on_cf.body);
    let id = fresh_id();
    cf.provision_ready(&id, PLAN).await.unwrap();
    assert_eq!(root.fetch_instance(&id).await.unwrap().status, 404);
    assert_eq!(cf.fetch_instance(&id).await.unwrap().status, 200);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_store_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new-dir").join("state.db");
    let url = format!("sqlite://{}", path.display());
    let (running, _) = spawn(&single_platform(&url)).await;
    let c = Client::new(target(running.addr, ""));
    c.provision_ready(&fresh_id(), PLAN).await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    for file in ["state.db", "state.db-wal", "state.db-shm"] {
        assert_eq!(mode(&path.with_file_name(file)), 0o600, "{file}");
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_shows_the_last_upkeep_measurement_with_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = single_platform(&sqlite_url(&dir));
    let (running, calls) = spawn_with_upkeep(&config, Some(Duration::from_millis(200))).await;
    let c = Client::new(target(running.addr, ""));
    let id = fresh_id();
    c.provision_ready(&id, PLAN).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let attributes = loop {
        let fetched = c.fetch_instance(&id).await.unwrap();
        let attributes = fetched.body["metadata"]["attributes"].clone();
        if attributes["upkeep_pass"].is_number() {
            break attributes;
        }
        assert!(
            Instant::now() < deadline,
            "no measurement shown: {}",
            fetched.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The pass showed the broker its instances before their upkeep.
    assert_eq!(attributes["announced"], true, "{attributes}");
    let measured = attributes["measured_at"].as_str().unwrap();
    assert!(
        measured.ends_with('Z') && measured.contains('T'),
        "{measured}"
    );
    // The measurement is kept in the store: a replica that never measured shows it too.
    let before = calls.upkeep.load(std::sync::atomic::Ordering::SeqCst);
    running.stop().await;
    let (again, _) = spawn(&config).await;
    let c = Client::new(target(again.addr, ""));
    for _ in 0..20 {
        let fetched = c.fetch_instance(&id).await.unwrap();
        assert!(fetched.body["metadata"]["attributes"]["upkeep_pass"].is_number());
    }
    assert!(before > 0);
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_url_is_in_the_first_answer_even_a_202() {
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = spawn(&single_platform(&sqlite_url(&dir))).await;
    let c = Client::new(target(running.addr, ""));
    for (plan, status) in [(PLAN, 201), (PLAN_ASYNC, 202)] {
        let id = fresh_id();
        let reply = c
            .provision(&id, &c.provision_body(plan), true)
            .await
            .unwrap();
        assert_eq!(reply.status, status, "{}", reply.body);
        assert_eq!(
            reply.body["dashboard_url"],
            format!("https://dash.example/{id}"),
            "{plan}: {}",
            reply.body
        );
        if status == 202 {
            let again = c
                .provision(&id, &c.provision_body(plan), true)
                .await
                .unwrap();
            assert_eq!(
                again.body["dashboard_url"], reply.body["dashboard_url"],
                "{}",
                again.body
            );
        }
        c.provision_ready(&id, plan).await.unwrap();
        let change = json!({"service_id": SERVICE, "parameters": {"x": 1}});
        let updated = c.update(&id, &change, true).await.unwrap();
        if updated.status == 202 {
            assert_eq!(updated.body["dashboard_url"], reply.body["dashboard_url"]);
        }
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_past_the_maximum_polling_duration_ends_failed_and_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = spawn(&single_platform(&sqlite_url(&dir))).await;
    let c = Client::new(target(running.addr, ""));
    let id = fresh_id();
    let started = c
        .provision(&id, &c.provision_body(PLAN_HANG), true)
        .await
        .unwrap();
    assert_eq!(started.status, 202, "{}", started.body);
    let deadline = Instant::now() + Duration::from_secs(15);
    let last = loop {
        let last = c
            .instance_last_operation(&id, started.operation().as_deref())
            .await
            .unwrap();
        if last.body["state"] != "in progress" {
            break last;
        }
        assert!(
            Instant::now() < deadline,
            "still in progress past the maximum"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(last.body["state"], "failed", "{}", last.body);
    let why = last.body["description"].as_str().unwrap_or("");
    assert!(why.contains("maximum_polling_duration"), "{why}");
    // The platform's orphan mitigation runs instead of meeting ConcurrencyError for ever.
    c.deprovision_done(&id, PLAN_HANG).await.unwrap();
    running.stop().await;
}

/// A binding is answered from its stored texts as they are: keys the stored response must not
/// carry never come out twice or in place of the real ones, and a stored text that is not a
/// JSON object is a clean 500, never a malformed body. (The client refuses any body with a key
/// twice or not sent as `application/json`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_is_answered_from_its_stored_texts_and_a_corrupt_one_is_refused() {
    use diesel::{Connection, RunQueryDsl};
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = spawn(&single_platform(&sqlite_url(&dir))).await;
    let c = Client::new(target(running.addr, ""));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN).await.unwrap();
    let bound = c.bind_ready(&id, &bid, PLAN).await.unwrap();
    let password = bound["credentials"]["password"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut db =
        diesel::SqliteConnection::establish(dir.path().join("state.db").to_str().unwrap()).unwrap();
    let mut set = |column: &str, text: &str| {
        diesel::sql_query(format!("UPDATE osb_bindings SET {column} = ? WHERE id = ?"))
            .bind::<diesel::sql_types::Text, _>(text)
            .bind::<diesel::sql_types::Text, _>(&bid)
            .execute(&mut db)
            .unwrap();
    };
    set(
        "response",
        r#"{"credentials":{"planted":1},"parameters":{"planted":2},"syslog_drain_url":"syslog://kept"}"#,
    );
    set("parameters", r#"{"from":"the column"}"#);
    let fetched = c.fetch_binding(&id, &bid).await.unwrap();
    assert_eq!(fetched.status, 200, "{}", fetched.body);
    assert_eq!(fetched.body["credentials"]["password"], password.as_str());
    assert!(fetched.body["credentials"].get("planted").is_none());
    assert_eq!(fetched.body["parameters"], json!({"from": "the column"}));
    assert_eq!(fetched.body["syslog_drain_url"], "syslog://kept");
    // The repeated bind answers the same credentials, without parameters.
    let again = c.bind(&id, &bid, &c.bind_body(PLAN), true).await.unwrap();
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["credentials"]["password"], password.as_str());
    assert!(again.body.get("parameters").is_none(), "{}", again.body);
    for (column, text) in [
        ("parameters", "[1]"),
        ("response", "null"),
        ("response", "{"),
    ] {
        set(column, text);
        let refused = c.fetch_binding(&id, &bid).await.unwrap();
        assert_eq!(refused.status, 500, "{column} = {text}: {}", refused.body);
        assert!(
            !refused.body.to_string().contains(&password),
            "a secret in an error body"
        );
        set(column, "{}");
    }
    running.stop().await;
}
