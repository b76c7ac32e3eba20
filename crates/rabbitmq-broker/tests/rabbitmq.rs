//! rabbitmq-broker, black box: the real binary against the local RabbitMQ
//! (`scripts/backends.sh`), driven over HTTP; what it made is checked over AMQP (lapin) and the
//! management API.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::future::join_all;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use osb_testkit::proxy::Proxy;
use osb_testkit::{
    BrokerProcess, Client as Osb, PLAIN_CATALOG_SKIPS, Target, check_all, check_backend_down,
    check_restart, fresh_id, start_broker,
};

const SERVICE: &str = "14a9fad1-cf61-45dd-b486-f33609a80561";
const PLAN: &str = "6244693b-e046-4622-9be2-73315a186bfb";
const LARGE: &str = "1e5c8579-a08c-4f81-923c-794fcf747627";

fn deploy_config() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/rabbitmq-broker.toml")
}

async fn start(dir: &Path) -> BrokerProcess {
    start_with(dir, &deploy_config(), "/ready").await
}

/// Starts the broker with `config`, waiting until `path` answers 200.
async fn start_with(dir: &Path, config: &Path, path: &str) -> BrokerProcess {
    let binary = Path::new(env!("CARGO_BIN_EXE_rabbitmq-broker"));
    let env = [("RABBITMQ_BROKER_ADMIN_PASSWORD", "guest")];
    start_broker(binary, config, dir, &env, path).await.unwrap()
}

fn target(broker: &BrokerProcess) -> Target {
    let mut t = broker.target(SERVICE, PLAN);
    t.update_plan_id = Some(LARGE.into());
    t.race_width = 8;
    t.skip = PLAIN_CATALOG_SKIPS.to_vec();
    t
}

/// GET on the management API as the admin; the status and the body.
async fn management(path: &str) -> (u16, serde_json::Value) {
    let reply = reqwest::Client::new()
        .get(format!("http://127.0.0.1:15672/api{path}"))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap();
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or_default())
}

/// Declares `queue`, publishes `body` to it and gets it back, over `conn`.
async fn round_trip(conn: &Connection, queue: &str, body: &[u8]) {
    let channel = conn.create_channel().await.unwrap();
    let options = QueueDeclareOptions::default();
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .unwrap();
    let properties = BasicProperties::default();
    let publish = BasicPublishOptions::default();
    channel
        .basic_publish("".into(), queue.into(), publish, body, properties)
        .await
        .unwrap()
        .await
        .unwrap();
    let got = channel
        .basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the message is there");
    assert_eq!(got.delivery.data, body);
}

fn vhost_of(id: &str) -> String {
    format!("op_{}", id.replace('-', "_"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testkit_rules_hold() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    check_all(&target(&broker)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_between_provision_and_bind_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let t = target(&broker);
    let restarted = std::sync::Mutex::new(None);
    check_restart(&t, || async {
        drop(broker);
        let again = start(dir.path()).await;
        let t = target(&again);
        *restarted.lock().unwrap() = Some(again);
        Ok(t)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_work_in_their_vhost_only_and_nothing_is_left_after_teardown() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let c = Osb::new(target(&broker));
    let (id, bid, other) = (fresh_id(), fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN).await.unwrap();
    c.provision_ready(&other, PLAN).await.unwrap();
    let creds = c.bind_ready(&id, &bid, PLAN).await.unwrap()["credentials"].clone();
    let vhost = vhost_of(&id);
    assert_eq!(creds["vhost"], vhost.as_str());
    assert_eq!(creds["hostname"], "127.0.0.1");
    assert_eq!(creds["hostnames"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(creds["ssl"], false);
    assert_eq!(creds["protocols"]["amqp"]["port"], 5672);
    assert_eq!(creds["protocols"]["management"]["port"], 15672);
    for field in [
        "host", "hosts", "port", "uri", "uris", "vhost", "username", "password", "ssl",
    ] {
        assert!(
            creds["protocols"]["amqp"].get(field).is_some(),
            "amqp lacks {field}"
        );
        assert!(
            creds["protocols"]["management"].get(field).is_some(),
            "management lacks {field}"
        );
    }
    let (status, user) =
        management(&format!("/users/{}", creds["username"].as_str().unwrap())).await;
    assert_eq!(status, 200);
    assert_eq!(
        user["tags"],
        serde_json::json!([]),
        "the standard plan gives no management tag"
    );

    // Publish and consume in its own vhost.
    let uri = creds["uri"].as_str().unwrap();
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .unwrap();
    round_trip(&conn, "work", b"hello").await;

    // Another instance's vhost refuses it.
    let elsewhere = uri.replace(&format!("/{vhost}"), &format!("/{}", vhost_of(&other)));
    assert!(
        Connection::connect(&elsewhere, ConnectionProperties::default())
            .await
            .is_err(),
        "the binding's user opened another instance's vhost"
    );

    // Unbind closes the open connection and the login stops working.
    c.unbind_done(&id, &bid, PLAN).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while conn.status().connected() {
        assert!(Instant::now() < deadline, "the connection outlived unbind");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        Connection::connect(uri, ConnectionProperties::default())
            .await
            .is_err()
    );

    let last = c.bind_ready(&id, &fresh_id(), PLAN).await.unwrap()["credentials"]["username"]
        .as_str()
        .unwrap()
        .to_owned();
    c.deprovision_done(&id, PLAN).await.unwrap();
    c.deprovision_done(&other, PLAN).await.unwrap();
    assert_eq!(
        management(&format!("/vhosts/{vhost}")).await.0,
        404,
        "vhost left"
    );
    let (_, users) = management("/users").await;
    let left: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str())
        .filter(|n| n.starts_with("b_"))
        .collect();
    let (_, markers) = management("/global-parameters").await;
    let ours: Vec<&str> = markers
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["value"]["parent"] == vhost.as_str() || p["value"]["owner_id"] == id.as_str())
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(ours.is_empty(), "markers left: {ours:?}");
    assert!(
        !left.contains(&last.as_str()),
        "a binding still there at deprovision outlived it"
    );
}

/// The plan's `max-connections` holds: the connection past it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plans_connection_limit_holds() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let c = Osb::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN).await.unwrap();
    let creds = c.bind_ready(&id, &bid, PLAN).await.unwrap()["credentials"].clone();
    let uri = creds["uri"].as_str().unwrap();
    let mut open = Vec::new();
    for _ in 0..20 {
        open.push(
            Connection::connect(uri, ConnectionProperties::default())
                .await
                .unwrap(),
        );
    }
    // RabbitMQ counts a new connection a moment after it opened: a 21st right after the 20th
    // may get in before the 20th is counted. Within seconds, one is refused, for the plan's
    // limit of 20 and nothing else.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        match Connection::connect(uri, ConnectionProperties::default()).await {
            Ok(past) => {
                let _ = past.close(200, "past the limit".into()).await;
                assert!(
                    Instant::now() < deadline,
                    "21st connections were still let in on a plan of 20 after 10 s"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => break e.to_string(),
        }
    };
    assert!(
        refused.contains("connection limit (20)"),
        "refused for another reason: {refused}"
    );
    // Unbind closes whatever is still open; these close themselves as well, at the same time.
    for conn in open {
        tokio::spawn(async move { conn.close(200, "done".into()).await });
    }
    c.unbind_done(&id, &bid, PLAN).await.unwrap();
    c.deprovision_done(&id, PLAN).await.unwrap();
}

/// The management API stops answering: 503 naming the node, nothing recorded; back: works,
/// nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_management_api_is_a_503_naming_it_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(15672).await;
    let text = std::fs::read_to_string(deploy_config()).unwrap().replace(
        "management_port = 15672",
        &format!("management_port = {}", proxy.port),
    );
    let config = dir.path().join("rabbitmq-broker.toml");
    std::fs::write(&config, text).unwrap();
    let broker = start_with(dir.path(), &config, "/ready").await;
    let c = Osb::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN).await.unwrap();
    let creds = c.bind_ready(&id, &bid, PLAN).await.unwrap()["credentials"].clone();

    proxy.set_down(true);
    let other_bid = fresh_id();
    let node = format!("127.0.0.1:{}", proxy.port);
    check_backend_down(&target(&broker), &id, &other_bid, &node, "guest")
        .await
        .unwrap();
    // AMQP does not go through the management API: the app keeps working.
    let conn = Connection::connect(
        creds["uri"].as_str().unwrap(),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    drop(conn);

    proxy.set_down(false);
    c.bind_ready(&id, &other_bid, PLAN).await.unwrap();
    c.unbind_done(&id, &bid, PLAN).await.unwrap();
    c.unbind_done(&id, &other_bid, PLAN).await.unwrap();
    c.deprovision_done(&id, PLAN).await.unwrap();
}

/// Ids that are not plain never reach the server; 30 provision+bind pairs at once all work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_are_refused_and_thirty_concurrent_pairs_work() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let c = Osb::new(target(&broker));
    for bad in ["a%2Fb", "%2F", "a%20b", "a%25b", "..%2F"] {
        let reply = c
            .provision(bad, &c.provision_body(PLAN), false)
            .await
            .unwrap();
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
    }
    let (_, markers) = management("/global-parameters").await;
    for refused in ["a/b", "/", "a b", "a%b", "../"] {
        assert!(
            !markers
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["value"]["owner_id"] == refused),
            "{refused:?} reached the server"
        );
    }
    // Ids the URL allows but that are no GUIDs: each gets names of its own, in `[a-z0-9_]`,
    // never an existing account's (`guest`), distinct even where only the case differs.
    // The longest escape their markers' names too, within RabbitMQ's 255 characters.
    let odd = [
        "guest",
        "Guest",
        "a.b",
        "UPPER-lower_1",
        &"x".repeat(120),
        &"A".repeat(120),
    ];
    let mut names = std::collections::HashSet::new();
    for id in odd {
        c.provision_ready(id, PLAN)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        let bound = c.bind_ready(id, id, PLAN).await.unwrap()["credentials"].clone();
        for name in [&bound["vhost"], &bound["username"]] {
            let name = name.as_str().unwrap();
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    && "kpaas-broker.vhost.".len() + name.len() <= 255
                    && name != "guest",
                "{id:?} made {name:?}"
            );
            assert!(names.insert(name.to_owned()), "{id:?} reused {name:?}");
        }
        c.unbind_done(id, id, PLAN).await.unwrap();
        c.deprovision_done(id, PLAN).await.unwrap();
    }
    assert_eq!(
        management("/users/guest").await.0,
        200,
        "the admin account is gone"
    );

    let pairs: Vec<(String, String)> = (0..30).map(|_| (fresh_id(), fresh_id())).collect();
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
        let (vhost, user) = (
            vhost_of(id),
            body["credentials"]["username"].as_str().unwrap().to_owned(),
        );
        assert_eq!(body["credentials"]["vhost"], vhost.as_str());
        let (_, permissions) = management(&format!("/users/{user}/permissions")).await;
        let vhosts: Vec<&str> = permissions
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["vhost"].as_str())
            .collect();
        assert_eq!(vhosts, [vhost.as_str()], "{user}");
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
}

/// The plan's queue policy is in place, and follows a plan change; a downgrade the vhost's
/// connections do not fit is a 422 that says why, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_set_the_queue_policy_and_refuse_a_downgrade_that_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let c = Osb::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, LARGE).await.unwrap();
    let vhost = vhost_of(&id);
    let policy = format!("/policies/{vhost}/kpaas-plan");
    assert_eq!(
        management(&policy).await.1["definition"]["max-length"],
        100000
    );
    let creds = c.bind_ready(&id, &bid, LARGE).await.unwrap()["credentials"].clone();
    let tags = format!("/users/{}", creds["username"].as_str().unwrap());
    assert_eq!(
        management(&tags).await.1["tags"],
        serde_json::json!(["management"]),
        "the large plan's users get the management tag"
    );
    let mut open = Vec::new();
    for _ in 0..21 {
        let uri = creds["uri"].as_str().unwrap();
        open.push(
            Connection::connect(uri, ConnectionProperties::default())
                .await
                .unwrap(),
        );
    }
    // The management API counts connections a moment after they open.
    let deadline = Instant::now() + Duration::from_secs(10);
    while management(&format!("/vhosts/{vhost}/connections"))
        .await
        .1
        .as_array()
        .map_or(0, Vec::len)
        < 21
    {
        assert!(Instant::now() < deadline, "the connections never showed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let down = serde_json::json!({"service_id": SERVICE, "plan_id": PLAN});
    let refused = c.update(&id, &down, false).await.unwrap();
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body["description"]
            .as_str()
            .unwrap()
            .contains("21 connections"),
        "{}",
        refused.body
    );
    assert_eq!(
        management(&policy).await.1["definition"]["max-length"],
        100000,
        "changed anyway"
    );
    for conn in open {
        conn.close(200, "done".into()).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = c.update(&id, &down, false).await.unwrap();
        if reply.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the downgrade never fit: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        management(&policy).await.1["definition"]["max-length"],
        10000
    );
    assert_eq!(
        management(&tags).await.1["tags"],
        serde_json::json!([]),
        "the downgrade left the user its management tag"
    );
    // Its password is the same: the retagged user still logs in.
    drop(
        Connection::connect(
            creds["uri"].as_str().unwrap(),
            ConnectionProperties::default(),
        )
        .await
        .unwrap(),
    );
    c.unbind_done(&id, &bid, PLAN).await.unwrap();
    c.deprovision_done(&id, PLAN).await.unwrap();
}

/// PUT a JSON body on the management API as the admin; the status.
async fn management_put(path: &str, body: serde_json::Value) -> u16 {
    reqwest::Client::new()
        .put(format!("http://127.0.0.1:15672/api{path}"))
        .basic_auth("guest", Some("guest"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Leftovers of a crash (a marked vhost and user no record claims) are listed and removed; a
/// vhost named like the broker's without a marker is listed and kept; what the store claims
/// is neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_listed_and_only_marked_ones_removed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let c = Osb::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN).await.unwrap();
    let creds = c.bind_ready(&id, &bid, PLAN).await.unwrap()["credentials"].clone();
    drop(broker);

    let suffix = fresh_id().replace('-', "");
    let (lost_vhost, lost_user, foreign) = (
        format!("op_lost{}", &suffix[..12]),
        format!("b_lost{}", &suffix[..12]),
        format!("op_foreign{}", &suffix[..12]),
    );
    // A provision that died between claiming a name and checking it: its marker is only a
    // claim, over a vhost someone else made.
    let claimed = format!("op_claimed{}", &suffix[..12]);
    let (lost_instance, lost_binding, claimer) = (fresh_id(), fresh_id(), fresh_id());
    for (kind, name, owner, parent, made) in [
        ("vhost", &lost_vhost, &lost_instance, "", true),
        ("user", &lost_user, &lost_binding, lost_vhost.as_str(), true),
        ("vhost", &claimed, &claimer, "", false),
    ] {
        let value = serde_json::json!({"kind": kind, "name": name, "platform": "default",
            "owner_id": owner, "parent": parent, "created_at_ms": 0, "made": made});
        let key = format!("kpaas-broker.{kind}.{name}");
        let status = management_put(
            &format!("/global-parameters/{key}"),
            serde_json::json!({"name": key, "value": value}),
        )
        .await;
        assert!(status < 300, "{status}");
    }
    for vhost in [&lost_vhost, &foreign, &claimed] {
        assert!(management_put(&format!("/vhosts/{vhost}"), serde_json::json!({})).await < 300);
    }
    let user = serde_json::json!({"password": "Lost-pass-1-Lost-pass-1", "tags": ""});
    assert!(management_put(&format!("/users/{lost_user}"), user).await < 300);

    let binary = Path::new(env!("CARGO_BIN_EXE_rabbitmq-broker"));
    let store = osb_testkit::sqlite_store(dir.path());
    let run = |args: &[&str]| {
        osb_testkit::broker_command(binary, &deploy_config(), &store)
            .args(args)
            .env("RABBITMQ_BROKER_ADMIN_PASSWORD", "guest")
            .output()
            .unwrap()
    };
    let rows = osb_testkit::orphan_rows(&run(&["orphans", "--json"]));
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).cloned();
    let vhost_row = row(&lost_vhost).expect("the lost vhost is listed");
    assert_eq!(vhost_row["for"], "instance");
    assert_eq!(vhost_row["removable"], true);
    assert_eq!(
        row(&lost_user).expect("the lost user is listed")["removable"],
        true
    );
    assert_eq!(
        row(&foreign).expect("the unmarked vhost is listed")["removable"],
        false
    );
    assert!(
        row(creds["vhost"].as_str().unwrap()).is_none()
            && row(creds["username"].as_str().unwrap()).is_none(),
        "a claimed object is listed"
    );

    // Other tests' leftovers on the shared server count too: --force past the share guard.
    let deleted = run(&["orphans", "--delete", "--force", "--json"]);
    assert!(
        deleted.status.success(),
        "{}{}",
        String::from_utf8_lossy(&deleted.stdout),
        String::from_utf8_lossy(&deleted.stderr)
    );
    assert_eq!(management(&format!("/vhosts/{lost_vhost}")).await.0, 404);
    assert_eq!(management(&format!("/users/{lost_user}")).await.0, 404);
    assert_eq!(
        management(&format!("/vhosts/{foreign}")).await.0,
        200,
        "an unmarked vhost was removed"
    );
    assert_eq!(
        management(&format!("/vhosts/{claimed}")).await.0,
        200,
        "a vhost under a mere claim was removed"
    );
    assert_eq!(
        management(&format!("/global-parameters/kpaas-broker.vhost.{claimed}"))
            .await
            .0,
        404,
        "the claim outlived the sweep"
    );
    assert_eq!(
        management(&format!("/users/{}", creds["username"].as_str().unwrap()))
            .await
            .0,
        200
    );
    for vhost in [&foreign, &claimed] {
        let gone = reqwest::Client::new()
            .delete(format!("http://127.0.0.1:15672/api/vhosts/{vhost}"))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .unwrap();
        assert!(gone.status().is_success());
    }

    let broker = start(dir.path()).await;
    let c = Osb::new(target(&broker));
    c.unbind_done(&id, &bid, PLAN).await.unwrap();
    c.deprovision_done(&id, PLAN).await.unwrap();
}

/// The deploy config with its one node replaced by `nodes` (TOML `[[rabbitmq.nodes]]` blocks)
/// and `extra` appended, written into `dir`.
fn config_with(dir: &Path, nodes: &str, extra: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(deploy_config()).unwrap();
    let one =
        "[[rabbitmq.nodes]]\nhost = \"127.0.0.1\"\namqp_port = 5672\nmanagement_port = 15672\n";
    assert!(text.contains(one), "the deploy config's node block changed");
    let config = dir.join("rabbitmq-broker.toml");
    std::fs::write(&config, text.replace(one, nodes) + extra).unwrap();
    config
}

/// Two nodes: management calls and the AMQP check go to whichever answers, apps get both;
/// neither answering is a 503 naming both, with nothing recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_to_the_node_that_answers_and_both_down_is_a_503_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let (a_api, a_amqp) = (Proxy::start(15672).await, Proxy::start(5672).await);
    let (b_api, b_amqp) = (Proxy::start(15672).await, Proxy::start(5672).await);
    let node = |api: &Proxy, amqp: &Proxy| {
        format!(
            "[[rabbitmq.nodes]]\nhost = \"127.0.0.1\"\namqp_port = {}\nmanagement_port = {}\n",
            amqp.port, api.port
        )
    };
    let nodes = node(&a_api, &a_amqp) + &node(&b_api, &b_amqp);
    let config = config_with(dir.path(), &nodes, "");
    let broker = start_with(dir.path(), &config, "/ready").await;
    let c = Osb::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());

    a_api.set_down(true);
    a_amqp.set_down(true);
    c.provision_ready(&id, PLAN).await.unwrap();
    let creds = c.bind_ready(&id, &bid, PLAN).await.unwrap()["credentials"].clone();
    assert_eq!(
        creds["hostnames"],
        serde_json::json!(["127.0.0.1", "127.0.0.1"])
    );
    let uris: Vec<&str> = creds["uris"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(uris.len(), 2);
    assert!(
        uris[0].contains(&format!(":{}/", a_amqp.port)),
        "{:?}",
        uris[0]
    );
    assert!(
        uris[1].contains(&format!(":{}/", b_amqp.port)),
        "{:?}",
        uris[1]
    );
    // The second node's URI works while the first is down.
    let conn = Connection::connect(uris[1], ConnectionProperties::default())
        .await
        .unwrap();
    drop(conn);

    a_api.set_down(false);
    a_amqp.set_down(false);
    b_api.set_down(true);
    b_amqp.set_down(true);
    let other_bid = fresh_id();
    c.bind_ready(&id, &other_bid, PLAN).await.unwrap();
    c.unbind_done(&id, &bid, PLAN).await.unwrap();

    a_api.set_down(true);
    let both = format!("127.0.0.1:{}, 127.0.0.1:{}", a_api.port, b_api.port);
    check_backend_down(&target(&broker), &id, &fresh_id(), &both, "guest")
        .await
        .unwrap();

    b_api.set_down(false);
    b_amqp.set_down(false);
    c.unbind_done(&id, &other_bid, PLAN).await.unwrap();
    c.deprovision_done(&id, PLAN).await.unwrap();
    assert_eq!(
        management(&format!("/vhosts/{}", vhost_of(&id))).await.0,
        404
    );
}

/// Where `scripts/backends.sh` keeps the test CA that signed RabbitMQ's TLS listeners.
const TLS_CA: &str = "/var/lib/kpaas-rabbitmq-tls/ca.pem";

fn tls_node() -> &'static str {
    "[[rabbitmq.nodes]]\nhost = \"127.0.0.1\"\namqps_port = 5671\nmanagement_port = 15671\n"
}

/// With `[rabbitmq.tls]` the broker speaks HTTPS and AMQPS, verified against the CA, and apps
/// get TLS credentials that work; a CA that did not sign the node's certificate makes the
/// broker unready and its calls 503s; a CA file without certificates stops it from starting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_the_broker_and_apps_use_verified_tls_only() {
    let ca = std::fs::read_to_string(TLS_CA)
        .unwrap_or_else(|e| panic!("{TLS_CA} (made by scripts/backends.sh): {e}"));
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(
        dir.path(),
        tls_node(),
        &format!("\n[rabbitmq.tls]\nca = \"{TLS_CA}\"\n"),
    );
    let broker = start_with(dir.path(), &config, "/ready").await;
    let c = Osb::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN).await.unwrap();
    let creds = c.bind_ready(&id, &bid, PLAN).await.unwrap()["credentials"].clone();
    assert_eq!(creds["ssl"], true);
    let uri = creds["uri"].as_str().unwrap();
    assert!(
        uri.starts_with("amqps://") && uri.contains("@127.0.0.1:5671/"),
        "{uri}"
    );
    assert!(
        creds["protocols"].get("amqp").is_none(),
        "a plain AMQP entry with TLS on"
    );
    assert_eq!(creds["protocols"]["amqp+ssl"]["port"], 5671);
    assert_eq!(creds["protocols"]["amqp+ssl"]["ssl"], true);
    let api = creds["http_api_uri"].as_str().unwrap();
    assert!(
        api.starts_with("https://") && api.contains("@127.0.0.1:15671/api/"),
        "{api}"
    );

    let tls = || lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: Some(ca.clone()),
    };
    let conn = Connection::connect_with_config(
        uri,
        ConnectionProperties::default(),
        tls(),
        lapin::runtime::default_runtime().unwrap(),
    )
    .await
    .unwrap();
    round_trip(&conn, "tls", b"over tls").await;
    drop(conn);

    // Trusting another CA (the second MariaDB's), the same broker reaches nothing.
    drop(broker);
    let wrong = tempfile::tempdir().unwrap();
    let other_ca = "/var/lib/kpaas-mariadb2-tls/ca.pem";
    assert!(
        Path::new(other_ca).exists(),
        "{other_ca} (made by scripts/backends.sh)"
    );
    let tls_with = |ca: &str| format!("\n[rabbitmq.tls]\nca = \"{ca}\"\n");
    let distrusting = config_with(wrong.path(), tls_node(), &tls_with(other_ca));
    let broker = start_with(dir.path(), &distrusting, "/health").await;
    check_backend_down(
        &target(&broker),
        &id,
        &fresh_id(),
        "127.0.0.1:15671",
        "guest",
    )
    .await
    .unwrap();
    drop(broker);

    // A CA file that holds no certificate: the broker says which and does not start.
    let empty = wrong.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let unusable = config_with(
        wrong.path(),
        tls_node(),
        &tls_with(&empty.display().to_string()),
    );
    let binary = Path::new(env!("CARGO_BIN_EXE_rabbitmq-broker"));
    let store = format!("sqlite://{}/s.db", wrong.path().display());
    let out = osb_testkit::broker_command(binary, &unusable, &store)
        .arg("check-config")
        .env("RABBITMQ_BROKER_ADMIN_PASSWORD", "guest")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && said.contains("empty.pem"),
        "{said}"
    );

    let broker = start_with(dir.path(), &config, "/ready").await;
    let c = Osb::new(target(&broker));
    c.unbind_done(&id, &bid, PLAN).await.unwrap();
    c.deprovision_done(&id, PLAN).await.unwrap();
}
