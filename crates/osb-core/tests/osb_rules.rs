//! The testkit's rules against the real osb-core server, on each state store.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use futures::future::join_all;
use osb_testkit::{Client, check_all, check_isolation, check_restart};

async fn rules_hold_on(store_url: &str) {
    let (running, _) = spawn(&single_platform(store_url)).await;
    let result = check_all(&target(running.addr, "")).await;
    running.stop().await;
    result.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testkit_rules_hold_with_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    rules_hold_on(&sqlite_url(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testkit_rules_hold_with_mariadb_store() {
    let url = fresh_mysql().await;
    rules_hold_on(&url).await;
    drop_database(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testkit_rules_hold_with_postgres_store() {
    let url = fresh_postgres().await;
    rules_hold_on(&url).await;
    drop_database(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_provisions_call_the_backend_once() {
    let dir = tempfile::tempdir().unwrap();
    let (running, calls) = spawn(&single_platform(&sqlite_url(&dir))).await;
    let client = Client::new(target(running.addr, ""));
    let id = osb_testkit::fresh_id();
    let body = client.provision_body(PLAN);
    let replies = join_all((0..24).map(|_| client.provision(&id, &body, false))).await;
    assert!(
        replies
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.status == 200 || r.status == 201))
    );
    assert_eq!(calls.provision.load(Ordering::SeqCst), 1);
    let bid = osb_testkit::fresh_id();
    let bind = client.bind_body(PLAN);
    let replies = join_all((0..24).map(|_| client.bind(&id, &bid, &bind, false))).await;
    let replies: Vec<_> = replies.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(replies.iter().filter(|r| r.status == 201).count(), 1);
    assert!(replies.iter().all(|r| r.status == 200 || r.status == 201));
    let credentials = &replies[0].body["credentials"];
    assert!(credentials.is_object(), "{}", replies[0].body);
    assert!(
        replies
            .iter()
            .all(|r| &r.body["credentials"] == credentials),
        "identical binds answered different credentials"
    );
    assert_eq!(calls.bind.load(Ordering::SeqCst), 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = single_platform(&sqlite_url(&dir));
    let (running, _) = spawn(&config).await;
    let before = target(running.addr, "");
    let restarted = tokio::sync::Mutex::new(None);
    let result = check_restart(&before, || async {
        running.stop().await;
        let (again, _) = spawn(&config).await;
        let t = target(again.addr, "");
        *restarted.lock().await = Some(again);
        Ok(t)
    })
    .await;
    if let Some(again) = restarted.into_inner() {
        again.stop().await;
    }
    result.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platforms_see_only_their_own_resources() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        &sqlite_url(&dir),
        r#"
        [[platforms]]
        name = "cf"
        prefix = "/cf"
        username = "broker"
        password = "broker-secret"
        [[platforms]]
        name = "k8s"
        prefix = "/k8s"
        username = "kube"
        password = "kube-secret"
        "#,
    );
    let (running, _) = spawn(&config).await;
    let a = target(running.addr, "/cf");
    let mut b = target(running.addr, "/k8s");
    b.username = "kube".into();
    b.password = "kube-secret".into();
    let result = check_isolation(&a, &b).await;
    running.stop().await;
    result.unwrap();
}

/// Replica A starts an operation and dies before it ends; replica B, on the same store, takes
/// it over once A's lease runs out and runs it to the end.
async fn dead_replicas_operation_is_finished_by_another(url: String) {
    // Replica A runs on a runtime of its own thread, torn down mid-operation: as if killed.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let url_a = url.clone();
    let replica_a = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // Killed, not stopped: no waiting for the operation.
        let mut config = single_platform(&url_a);
        config.operations.drain_secs = 0;
        let (running, _) = rt.block_on(spawn(&config));
        addr_tx.send(running.addr).unwrap();
        kill_rx.recv().unwrap();
        rt.block_on(running.stop());
        rt.shutdown_background();
    });
    let client = Client::new(target(addr_rx.recv().unwrap(), ""));
    let id = osb_testkit::fresh_id();
    let started = client
        .provision(&id, &client.provision_body(PLAN_ASYNC), true)
        .await
        .unwrap();
    assert_eq!(started.status, 202, "{}", started.body);
    let op = started.operation().unwrap();
    kill_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || replica_a.join().unwrap())
        .await
        .unwrap();

    let (b, b_calls) = spawn(&single_platform(&url)).await;
    let client = Client::new(target(b.addr, ""));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let last = loop {
        let last = client
            .instance_last_operation(&id, Some(&op))
            .await
            .unwrap();
        if last.body["state"] != "in progress" || std::time::Instant::now() > deadline {
            break last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(last.body["state"], "succeeded", "{}", last.body);
    assert_eq!(client.fetch_instance(&id).await.unwrap().status, 200);
    assert!(
        b_calls.provision.load(Ordering::SeqCst) >= 1,
        "replica b never ran the provision: a finished before it was killed"
    );
    client.deprovision_done(&id, PLAN_ASYNC).await.unwrap();
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_replicas_operation_is_finished_with_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    dead_replicas_operation_is_finished_by_another(sqlite_url(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_replicas_operation_is_finished_with_mariadb_store() {
    let url = fresh_mysql().await;
    dead_replicas_operation_is_finished_by_another(url.clone()).await;
    drop_database(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_replicas_operation_is_finished_with_postgres_store() {
    let url = fresh_postgres().await;
    dead_replicas_operation_is_finished_by_another(url.clone()).await;
    drop_database(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_https() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is needed to make a test certificate");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let extra = format!(
        "username = \"broker\"\npassword = \"broker-secret\"\n[tls]\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let (running, _) = spawn(&config(&sqlite_url(&dir), &extra)).await;
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(&cert)
        .args([
            "-u",
            "broker:broker-secret",
            "-H",
            "X-Broker-API-Version: 2.17",
        ])
        .arg(format!(
            "https://127.0.0.1:{}/v2/catalog",
            running.addr.port()
        ))
        .output()
        .await
        .expect("curl runs");
    running.stop().await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["services"][0]["id"], SERVICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_credentials_are_encrypted_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let (running, _) = spawn(&single_platform(&url)).await;
    let client = Client::new(target(running.addr, ""));
    let (id, bid) = (osb_testkit::fresh_id(), osb_testkit::fresh_id());
    client.provision_ready(&id, PLAN).await.unwrap();
    let body = client.bind_ready(&id, &bid, PLAN).await.unwrap();
    let password = body["credentials"]["password"].as_str().unwrap().to_owned();
    running.stop().await;
    let raw = std::fs::read(dir.path().join("state.db")).unwrap();
    let wal = std::fs::read(dir.path().join("state.db-wal")).unwrap_or_default();
    let needle = password.as_bytes();
    for bytes in [&raw, &wal] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "password found in the store file"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_encryption_key_keeps_existing_bindings_readable() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = single_platform(&sqlite_url(&dir));
    let (running, _) = spawn(&config).await;
    let client = Client::new(target(running.addr, ""));
    let (id, bid) = (osb_testkit::fresh_id(), osb_testkit::fresh_id());
    client.provision_ready(&id, PLAN).await.unwrap();
    let credentials = client.bind_ready(&id, &bid, PLAN).await.unwrap()["credentials"].clone();
    running.stop().await;

    let old = config.encryption_key.clone();
    config.encryption_key = osb_core::config::Secret(
        "bmV3LWtleS1uZXcta2V5LW5ldy1rZXktbmV3LWtleSE="
            .to_owned()
            .into(),
    );
    config.previous_encryption_keys = vec![old];
    let (rotated, _) = spawn(&config).await;
    let client = Client::new(target(rotated.addr, ""));
    let got = client.fetch_binding(&id, &bid).await.unwrap();
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.body["credentials"], credentials);
    client.unbind_done(&id, &bid, PLAN).await.unwrap();
    client.deprovision_done(&id, PLAN).await.unwrap();
    rotated.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_endpoints_answer_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = spawn(&single_platform(&sqlite_url(&dir))).await;
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{base}/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let client = Client::new(target(running.addr, ""));
    client
        .send(reqwest::Method::GET, "/v2/catalog", None)
        .await
        .unwrap();
    let (id, bid) = (osb_testkit::fresh_id(), osb_testkit::fresh_id());
    assert_eq!(client.fetch_binding(&id, &bid).await.unwrap().status, 404);
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "osb_http_requests_total{method=\"GET\",route=\"/v2/catalog\",status=\"200\"}"
        ),
        "{metrics}"
    );
    // A route of the instance scope is labelled with its whole pattern.
    assert!(
        metrics.contains(
            "osb_http_requests_total{method=\"GET\",route=\"/v2/service_instances/{instance_id}/service_bindings/{binding_id}\",status=\"404\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("osb_http_request_duration_seconds_bucket"));
    assert!(metrics.contains("osb_operations_in_flight"));
    let unknown = client
        .send(reqwest::Method::GET, "/nope", None)
        .await
        .unwrap();
    assert_eq!(unknown.status, 404);
    assert!(unknown.body["description"].is_string());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failures_reach_the_platform_with_their_description() {
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = spawn(&single_platform(&sqlite_url(&dir))).await;
    let client = Client::new(target(running.addr, ""));

    // Synchronous: a 500 carrying the backend's words; the platform's orphan mitigation
    // (deprovision) then succeeds.
    let id = osb_testkit::fresh_id();
    let reply = client
        .provision(&id, &client.provision_body(PLAN_BROKEN), false)
        .await
        .unwrap();
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert_eq!(reply.body["description"], BROKEN);
    client.deprovision_done(&id, PLAN_BROKEN).await.unwrap();

    // Asynchronous: last_operation says failed, with the same words.
    let id = osb_testkit::fresh_id();
    let reply = client
        .provision(&id, &client.provision_body(PLAN_BROKEN_ASYNC), true)
        .await
        .unwrap();
    assert_eq!(reply.status, 202, "{}", reply.body);
    let last = client
        .poll(&id, None, reply.operation().as_deref())
        .await
        .unwrap();
    assert_eq!(last.body["state"], "failed", "{}", last.body);
    assert_eq!(last.body["description"], BROKEN);
    assert!(
        last.body.get("instance_usable").is_none(),
        "only for update and deprovision"
    );
    assert_eq!(client.fetch_instance(&id).await.unwrap().status, 404);
    client
        .deprovision_done(&id, PLAN_BROKEN_ASYNC)
        .await
        .unwrap();
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_whose_task_panics_ends_failed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = spawn(&single_platform(&sqlite_url(&dir))).await;
    let client = Client::new(target(running.addr, ""));
    let id = osb_testkit::fresh_id();
    client.provision_ready(&id, PLAN).await.unwrap();
    let body = |parameters: serde_json::Value| serde_json::json!({"service_id": SERVICE, "plan_id": PLAN, "parameters": parameters});

    // Synchronous: a 500, and the instance as it was, free for the next request at once
    // (not held `updating` until recovery runs the update again after the lease).
    let reply = client
        .update(&id, &body(serde_json::json!({"panic": true})), false)
        .await
        .unwrap();
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(
        reply.body["description"]
            .as_str()
            .is_some_and(|d| d.contains("internal error")),
        "{}",
        reply.body
    );
    assert_eq!(reply.body["instance_usable"], true, "{}", reply.body);
    assert_eq!(reply.body["update_repeatable"], true, "{}", reply.body);
    let fetched = client.fetch_instance(&id).await.unwrap();
    assert_eq!(fetched.status, 200, "{}", fetched.body);
    assert!(
        fetched.body["parameters"].get("panic").is_none(),
        "{}",
        fetched.body
    );
    let again = client
        .update(&id, &body(serde_json::json!({"size": 2})), false)
        .await
        .unwrap();
    assert_eq!(again.status, 200, "{}", again.body);
    client.deprovision_done(&id, PLAN).await.unwrap();

    // Asynchronous: last_operation says failed, the instance usable, at once (not run again
    // by recovery, into the same panic, at every lease).
    let id = osb_testkit::fresh_id();
    client.provision_ready(&id, PLAN_ASYNC).await.unwrap();
    let panicking = serde_json::json!({
        "service_id": SERVICE, "plan_id": PLAN_ASYNC, "parameters": {"panic": true}
    });
    let reply = client.update(&id, &panicking, true).await.unwrap();
    assert_eq!(reply.status, 202, "{}", reply.body);
    let last = client
        .poll(&id, None, reply.operation().as_deref())
        .await
        .unwrap();
    assert_eq!(last.body["state"], "failed", "{}", last.body);
    assert_eq!(last.body["instance_usable"], true, "{}", last.body);
    client.deprovision_done(&id, PLAN_ASYNC).await.unwrap();

    // A provision and a bind: a 500 without usability (the spec keeps it to updates and
    // deprovisions), their rows failed, so the delete that cleans up after them succeeds.
    let id = osb_testkit::fresh_id();
    let mut provision = client.provision_body(PLAN_LARGE);
    provision["parameters"] = serde_json::json!({"panic": true});
    let reply = client.provision(&id, &provision, false).await.unwrap();
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(
        reply.body.get("instance_usable").is_none(),
        "{}",
        reply.body
    );
    assert_eq!(client.fetch_instance(&id).await.unwrap().status, 404);
    client.deprovision_done(&id, PLAN_LARGE).await.unwrap();

    let id = osb_testkit::fresh_id();
    client.provision_ready(&id, PLAN_LARGE).await.unwrap();
    let bid = osb_testkit::fresh_id();
    let mut bind = client.bind_body(PLAN_LARGE);
    bind["parameters"] = serde_json::json!({"panic": true});
    let reply = client.bind(&id, &bid, &bind, false).await.unwrap();
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(
        reply.body["description"]
            .as_str()
            .is_some_and(|d| d.contains("internal error") && !d.contains("fake broker")),
        "{}",
        reply.body
    );
    assert_eq!(client.fetch_binding(&id, &bid).await.unwrap().status, 404);
    client.unbind_done(&id, &bid, PLAN_LARGE).await.unwrap();
    let bound = client
        .bind(&id, &bid, &client.bind_body(PLAN_LARGE), false)
        .await
        .unwrap();
    assert_eq!(bound.status, 201, "{}", bound.body);
    client.unbind_done(&id, &bid, PLAN_LARGE).await.unwrap();
    client.deprovision_done(&id, PLAN_LARGE).await.unwrap();
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_lets_running_operations_finish() {
    let dir = tempfile::tempdir().unwrap();
    let config = single_platform(&sqlite_url(&dir));
    let (running, _) = spawn(&config).await;
    let client = Client::new(target(running.addr, ""));
    let id = osb_testkit::fresh_id();
    let started = client
        .provision(&id, &client.provision_body(PLAN_ASYNC), true)
        .await
        .unwrap();
    assert_eq!(started.status, 202);
    // Stop at once: the 2 s provision must still complete before the broker is gone.
    running.stop().await;
    let (again, _) = spawn(&config).await;
    let client = Client::new(target(again.addr, ""));
    let last = client
        .instance_last_operation(&id, started.operation().as_deref())
        .await
        .unwrap();
    assert_eq!(last.body["state"], "succeeded", "{}", last.body);
    client.deprovision_done(&id, PLAN_ASYNC).await.unwrap();
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_at_a_time_does_the_upkeep() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = single_platform(&sqlite_url(&dir));
    // The lease outlasts a pass: two intervals plus one instance's timeout (long enough
    // that a holder stalled on a busy machine keeps it).
    config.operations.upkeep_timeout_secs = 3;
    let every = Some(Duration::from_millis(200));
    let (a, calls_a) = spawn_with_upkeep(&config, every).await;
    let (b, calls_b) = spawn_with_upkeep(&config, every).await;
    // Upkeep visits ready instances: one is enough to count the passes.
    let client = Client::new(target(a.addr, ""));
    client
        .provision_ready(&osb_testkit::fresh_id(), PLAN)
        .await
        .unwrap();
    let ran = || {
        (
            calls_a.upkeep.load(Ordering::SeqCst),
            calls_b.upkeep.load(Ordering::SeqCst),
        )
    };
    let passes = || {
        let (a, b) = ran();
        a + b
    };
    // Watched for longer than the lease (4.2 s): a holder that failed to renew it would let
    // the other replica in meanwhile.
    let watched = std::time::Instant::now();
    let deadline = watched + Duration::from_secs(20);
    while passes() < 5 || watched.elapsed() < Duration::from_secs(6) {
        assert!(
            std::time::Instant::now() < deadline,
            "upkeep ran {:?} times in 20 s",
            ran()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ran_a, ran_b) = ran();
    assert!(
        ran_a == 0 || ran_b == 0,
        "both replicas ran upkeep: {ran_a} and {ran_b}"
    );
    // The holder stops; the other takes over once the lease lapses.
    let (holder, other, other_calls) = if ran_a > 0 {
        (a, b, calls_b)
    } else {
        (b, a, calls_a)
    };
    // Only the holder's finished passes show, as the time of the last one.
    let last_pass = |addr: std::net::SocketAddr| async move {
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("osb_upkeep_last_pass_timestamp_seconds "))
            .map(|v| v.trim().parse::<i64>().unwrap())
            .unwrap_or_else(|| panic!("no upkeep pass time in {text}"))
    };
    let held = last_pass(holder.addr).await;
    let now = osb_core::store::now_ms() / 1000;
    assert!(
        (now - 3..=now).contains(&held),
        "last pass at {held}, now {now}"
    );
    assert_eq!(last_pass(other.addr).await, 0);
    holder.stop().await;
    let before = other_calls.upkeep.load(Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while other_calls.upkeep.load(Ordering::SeqCst) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no takeover within 15 s after the holder stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    other.stop().await;
}

/// A broker whose first look at a pass and whose object listing never answer still has its
/// instances visited, pass after pass: both are bounded by the upkeep timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_sweep_stops_no_upkeep_pass() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = single_platform(&sqlite_url(&dir));
    config.operations.upkeep_timeout_secs = 1;
    let (running, calls) = spawn_with_upkeep(&config, Some(Duration::from_millis(200))).await;
    calls.hang_sweeps.store(true, Ordering::SeqCst);
    let client = Client::new(target(running.addr, ""));
    client
        .provision_ready(&osb_testkit::fresh_id(), PLAN)
        .await
        .unwrap();
    // A pass now takes about two timeouts: the first look, then the orphan count.
    let before = calls.upkeep.load(Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while calls.upkeep.load(Ordering::SeqCst) < before + 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "upkeep visited {} times in 20 s",
            calls.upkeep.load(Ordering::SeqCst) - before
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = reqwest::get(format!("http://{}/metrics", running.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let timeouts = metrics
        .lines()
        .find_map(|l| l.strip_prefix("osb_upkeep_failures_total{reason=\"timeout\"} "))
        .map(|v| v.trim().parse::<f64>().unwrap());
    assert!(timeouts >= Some(4.0), "{metrics}");
    running.stop().await;
}

/// Spec: the predecessor "MUST be the ID of non-expired Service Binding of the same Service
/// Instance"; a rotation that leaves out its parameters keeps the predecessor's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_need_an_unexpired_predecessor_and_keep_its_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = spawn(&single_platform(&sqlite_url(&dir))).await;
    let client = Client::new(target(running.addr, ""));
    let id = osb_testkit::fresh_id();
    client.provision_ready(&id, PLAN_ROTATE).await.unwrap();
    let bind_with = |expires: &str| {
        let mut body = client.bind_body(PLAN_ROTATE);
        body["parameters"] = serde_json::json!({"expires_at": expires});
        body
    };
    let (old, live) = (osb_testkit::fresh_id(), osb_testkit::fresh_id());
    for (bid, expires) in [
        (&old, "2001-01-01T00:00:00.0Z"),
        (&live, "2999-01-01T00:00:00.0Z"),
    ] {
        let reply = client
            .bind(&id, bid, &bind_with(expires), false)
            .await
            .unwrap();
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    let rotated = osb_testkit::fresh_id();
    let from_old = serde_json::json!({"predecessor_binding_id": old});
    let reply = client.bind(&id, &rotated, &from_old, false).await.unwrap();
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.body["description"]
            .as_str()
            .unwrap()
            .contains("expired at 2001-01-01"),
        "{}",
        reply.body
    );
    let from_live = serde_json::json!({"predecessor_binding_id": live});
    let reply = client.bind(&id, &rotated, &from_live, false).await.unwrap();
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(
        reply.body["metadata"]["expires_at"],
        "2999-01-01T00:00:00.0Z"
    );
    let fetched = client.fetch_binding(&id, &rotated).await.unwrap();
    assert_eq!(
        fetched.body["parameters"],
        serde_json::json!({"expires_at": "2999-01-01T00:00:00.0Z"})
    );
    let mut no_ids = client.bind_body(PLAN_ROTATE);
    no_ids.as_object_mut().unwrap().remove("plan_id");
    let reply = client
        .bind(&id, &osb_testkit::fresh_id(), &no_ids, false)
        .await
        .unwrap();
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.body["description"]
            .as_str()
            .unwrap()
            .contains("plan_id")
    );
    running.stop().await;
}
