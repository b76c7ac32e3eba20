//! Crash recovery on the real binary and MariaDB: a killed replica's operations are run to the
//! end (by itself at once when it restarts, by another replica after the lease), and nothing
//! is left on the servers that no succeeded instance or binding claims.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use futures::future::join_all;
use mysql_async::prelude::Queryable;
use osb_testkit::{Client, fresh_id};

/// Provision+bind pairs sent at once before the kill.
const PAIRS: usize = 120;

/// Starts `PAIRS` provision-then-bind sequences against `c` without waiting for them.
fn start_pairs(c: &Client) -> (Vec<(String, String)>, Vec<tokio::task::JoinHandle<()>>) {
    let pairs: Vec<(String, String)> = (0..PAIRS).map(|_| (fresh_id(), fresh_id())).collect();
    let tasks = pairs
        .iter()
        .map(|(id, bid)| {
            let (c, id, bid) = (c.clone(), id.clone(), bid.clone());
            tokio::spawn(async move {
                if c.provision(&id, &c.provision_body(PLAN1), false)
                    .await
                    .is_ok()
                {
                    let _ = c.bind(&id, &bid, &c.bind_body(PLAN1), false).await;
                }
            })
        })
        .collect();
    (pairs, tasks)
}

fn as_pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// How many times the broker log in `dir` says an operation was taken over and run again.
fn rerun_count(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("running a stopped operation again"))
        .count()
}

/// Polls every pair's operations until none is in progress; fails past `limit` or on any
/// operation that ended failed. Returns how long it took.
async fn all_settled(c: &Client, pairs: &[(String, String)], limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut busy = Vec::new();
        for (id, bid) in pairs {
            for last in [
                c.instance_last_operation(id, None).await.unwrap(),
                c.binding_last_operation(id, bid, None).await.unwrap(),
            ] {
                match (last.status, last.body["state"].as_str()) {
                    (404, _) | (200, Some("succeeded")) => {}
                    (200, Some("in progress")) => busy.push(id.clone()),
                    other => panic!("pair {id}/{bid}: {other:?} {}", last.body),
                }
            }
        }
        if busy.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{} operations still in progress after {limit:?}",
            busy.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The operations (up to 100) that the store shows in progress: what the kill left.
async fn left_in_progress(store_url: &str) -> Vec<(String, String, Option<String>)> {
    let store = osb_core::store::Store::open_existing(store_url)
        .await
        .unwrap();
    store
        .stale_operations(i64::MAX, "")
        .await
        .unwrap()
        .into_iter()
        .map(|op| (op.id, op.instance_id, op.binding_id))
        .collect()
}

/// Each of `ops` ended `succeeded`, asked by its operation id; or it had made nothing yet
/// (killed between its record and its row), and its instance or binding does not exist.
async fn each_succeeded(c: &Client, ops: &[(String, String, Option<String>)]) {
    for (op, id, bid) in ops {
        let last = match bid {
            Some(bid) => c.binding_last_operation(id, bid, Some(op)).await.unwrap(),
            None => c.instance_last_operation(id, Some(op)).await.unwrap(),
        };
        if last.status == 404 {
            let exists = match bid {
                Some(bid) => c.fetch_binding(id, bid).await.unwrap().status,
                None => c.fetch_instance(id).await.unwrap().status,
            };
            assert_eq!(
                exists, 404,
                "operation {op} is gone but its resource is there"
            );
            continue;
        }
        assert_eq!(
            last.body["state"], "succeeded",
            "operation {op}: {}",
            last.body
        );
    }
}

/// Every marker (so every database and account the broker made) on either server for these
/// pairs belongs to an instance or binding that exists and succeeded.
async fn nothing_unclaimed(c: &Client, pairs: &[(String, String)]) {
    for (id, bid) in pairs {
        for server in 0..2 {
            if !markers_of(server, id).await.is_empty() {
                let last = c.instance_last_operation(id, None).await.unwrap();
                assert_eq!(
                    last.body["state"], "succeeded",
                    "database of {id}: {}",
                    last.body
                );
            }
            if !markers_of(server, bid).await.is_empty() {
                let last = c.binding_last_operation(id, bid, None).await.unwrap();
                assert_eq!(
                    last.body["state"], "succeeded",
                    "account of {bid}: {}",
                    last.body
                );
            }
        }
    }
}

/// Finishes every pair as a platform would (retrying), then deletes them all; afterwards
/// neither server holds anything of theirs.
async fn retry_then_clean_up(c: &Client, pairs: &[(String, String)]) {
    let done = join_all(pairs.iter().map(|(id, bid)| async move {
        c.provision_ready(id, PLAN1).await?;
        c.bind_ready(id, bid, PLAN1).await?;
        c.unbind_done(id, bid, PLAN1).await?;
        c.deprovision_done(id, PLAN1).await
    }))
    .await;
    done.into_iter().collect::<Result<Vec<_>, _>>().unwrap();
    let all = databases().await;
    for (id, bid) in pairs {
        assert!(
            !all.contains(&format!("op_{}", id.replace('-', "_"))),
            "database of {id} left"
        );
        for server in 0..2 {
            assert!(
                markers_of(server, id).await.is_empty(),
                "marker of {id} left"
            );
            assert!(
                markers_of(server, bid).await.is_empty(),
                "marker of {bid} left"
            );
        }
    }
    let accounts: Vec<String> = admin()
        .await
        .query("SELECT User FROM mysql.user WHERE User LIKE 'b\\_%'")
        .await
        .unwrap();
    for (_, bid) in pairs {
        let name = osb_core::naming::NameRule::new("b_", 32).name("default", bid);
        assert!(!accounts.contains(&name), "account of {bid} left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_broker_finishes_its_operations_as_soon_as_it_restarts() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed replica id: the restarted process is the same replica on another port. A lease
    // far longer than the wait below: a replica that waited for its own lease would fail.
    let same = [
        ("KPAAS_BROKER__REPLICA_ID", "replica-1"),
        ("KPAAS_BROKER__OPERATIONS__LEASE_SECS", "600"),
    ];
    let broker = start_env(dir.path(), 0, &deploy_config(), true, &same).await;
    let c = Client::new(target(&broker));
    let (pairs, tasks) = start_pairs(&c);
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(broker); // SIGKILL with operations in flight
    join_all(tasks).await;
    let store = osb_testkit::sqlite_store(dir.path());
    let left = left_in_progress(&store).await;
    assert!(
        !left.is_empty(),
        "the kill left no operation in flight; nothing was tested"
    );

    // The same replica comes back; settling within 45 s (seconds, unloaded), with the lease
    // at 600 s, shows it took its own operations back at once.
    let broker = start_env(dir.path(), 0, &deploy_config(), true, &same).await;
    let c = Client::new(target(&broker));
    let took = all_settled(&c, &pairs, Duration::from_secs(45)).await;
    each_succeeded(&c, &left).await;
    let rerun = rerun_count(&dir.path().join("broker.log"));
    assert!(
        rerun > 0,
        "the kill left no operation in flight; nothing was tested"
    );
    eprintln!("{rerun} operations run again; all settled {took:?} after the restart");
    nothing_unclaimed(&c, &pairs).await;
    retry_then_clean_up(&c, &pairs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_comes_back_has_its_operations_finished_by_another() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store_db = format!("kpaas_store_{}", fresh_id().replace('-', ""));
    admin()
        .await
        .query_drop(format!("CREATE DATABASE `{store_db}`"))
        .await
        .unwrap();
    let store = format!("mysql://root@127.0.0.1:3306/{store_db}");
    let env_of = |replica: &str| -> Vec<(&'static str, String)> {
        vec![
            ("KPAAS_BROKER__STORE__URL", store.clone()),
            ("KPAAS_BROKER__REPLICA_ID", replica.to_owned()),
            ("KPAAS_BROKER__OPERATIONS__LEASE_SECS", "3".to_owned()),
            ("KPAAS_BROKER__OPERATIONS__HEARTBEAT_SECS", "1".to_owned()),
        ]
    };
    let (env_a, env_b) = (env_of("replica-a"), env_of("replica-b"));
    let a = start_env(dir_a.path(), 0, &deploy_config(), true, &as_pairs(&env_a)).await;
    let b = start_env(dir_b.path(), 0, &deploy_config(), true, &as_pairs(&env_b)).await;
    let (pairs, tasks) = start_pairs(&Client::new(target(&a)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(a); // for good
    join_all(tasks).await;
    let left = left_in_progress(&store).await;
    assert!(
        !left.is_empty(),
        "the kill left no operation in flight; nothing was tested"
    );

    let c = Client::new(target(&b));
    let took = all_settled(&c, &pairs, Duration::from_secs(60)).await;
    each_succeeded(&c, &left).await;
    let rerun = rerun_count(&dir_b.path().join("broker.log"));
    assert!(
        rerun > 0,
        "replica b ran nothing of replica a's; nothing was tested"
    );
    eprintln!(
        "replica b ran {rerun} of replica a's operations; all settled {took:?} after the kill"
    );
    nothing_unclaimed(&c, &pairs).await;
    retry_then_clean_up(&c, &pairs).await;
    drop(b);
    admin()
        .await
        .query_drop(format!("DROP DATABASE `{store_db}`"))
        .await
        .unwrap();
}
