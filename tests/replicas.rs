//! Several replicas of one broker behind a load balancer, sharing one state store: the
//! production shape. The OSB rules must hold as if there were one broker, and losing a replica
//! must lose nothing.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kpaas_e2e::{broker_binary, drop_mariadb_store, fresh_mariadb_store, round_robin};
use osb_testkit::{BrokerProcess, Client, Target, check_all, fresh_id};

const SERVICE: &str = "96b9e707-0e2b-47e3-a21a-fd01a8eb0452";
const PLAN1: &str = "411d0c3e-b086-4a24-b041-0aeef1a819d1";
const PLAN2: &str = "4a932d9d-9bc5-4a86-937f-e2c14bb9f497";

async fn replica(name: &str, store: &str, dir: &Path) -> (BrokerProcess, SocketAddr) {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mysql-broker.toml");
    let mut command = Command::new(broker_binary("mysql-broker"));
    command
        .arg("--config")
        .arg(deploy)
        .env("KPAAS_BROKER__LISTEN", "127.0.0.1:0")
        .env("KPAAS_BROKER__STORE__URL", store)
        .env("KPAAS_BROKER__REPLICA_ID", name)
        .env("KPAAS_BROKER__WORKERS", "2")
        .env("MYSQL_BROKER_PASSWORD", "broker-secret")
        .env(
            "MYSQL_BROKER_ENCRYPTION_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        // The listening line tells the port the system chose.
        .env("RUST_LOG", "warn,osb_core::server=info");
    let mut replica = BrokerProcess::spawn(command, 0, &dir.join(format!("{name}.log"))).unwrap();
    replica
        .wait_for("/ready", Duration::from_secs(30))
        .await
        .unwrap();
    let port = replica.port;
    (replica, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn target(balancer: SocketAddr) -> Target {
    let mut t = Target::new(
        format!("http://{balancer}"),
        "broker",
        "broker-secret",
        SERVICE,
        PLAN1,
    );
    t.update_plan_id = Some(PLAN2.into());
    t.race_width = 8;
    // A connection per request: the balancer then sends consecutive requests to different
    // replicas, so a check that needs one replica to see another's work gets it.
    t.fresh_connections = true;
    t.skip = osb_testkit::PLAIN_CATALOG_SKIPS.to_vec();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_store_behave_as_one_broker() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_mariadb_store().await;
    let (a, addr_a) = replica("replica-a", &store, dir.path()).await;
    let (_b, addr_b) = replica("replica-b", &store, dir.path()).await;
    let balancer = round_robin(vec![addr_a, addr_b]).await;

    check_all(&target(balancer.addr)).await.unwrap();
    let served = balancer.served();
    assert!(
        served.iter().all(|n| *n > 0),
        "a replica served nothing: {served:?}"
    );

    // What one replica made, the other serves; and losing a replica loses nothing.
    let c = Client::new(target(balancer.addr));
    let (id, bid) = (fresh_id(), fresh_id());
    let before = balancer.served();
    c.provision_ready(&id, PLAN1).await.unwrap();
    let credentials = c.bind_ready(&id, &bid, PLAN1).await.unwrap()["credentials"].clone();
    let after = balancer.served();
    assert!(
        before.iter().zip(&after).all(|(b, a)| a > b),
        "provision and bind did not reach both replicas: {before:?} -> {after:?}"
    );
    drop(a);
    // New connections go to the survivor, which serves what both made.
    for _ in 0..4 {
        let got = c.fetch_binding(&id, &bid).await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.body["credentials"], credentials);
    }
    c.unbind_done(&id, &bid, PLAN1).await.unwrap();
    c.deprovision_done(&id, PLAN1).await.unwrap();
    drop_mariadb_store(&store).await;
}
