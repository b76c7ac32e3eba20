//! TLS from the broker to its servers, against the second local MariaDB, whose admin account
//! `kpaas_tls_admin` may only log in over TLS (scripts/backends.sh sets both up).

mod common;

use common::*;
use osb_testkit::{Client, fresh_id};

const CA: &str = "/var/lib/kpaas-mariadb2-tls/ca.pem";

fn tls_server(tls: &str) -> String {
    format!(
        "[[mysql.servers]]\nname = \"mysql-2\"\nhost = \"127.0.0.1\"\nport = 3307\n\
         admin_user = \"kpaas_tls_admin\"\nadmin_password = \"Kpaas-tls-admin-1\"\n{tls}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_administers_a_server_over_verified_tls() {
    assert!(
        std::path::Path::new(CA).exists(),
        "{CA} is missing: run scripts/backends.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_servers(
        dir.path(),
        &tls_server(&format!("[mysql.servers.tls]\nca = {CA:?}\n")),
    );
    let broker = start_with(dir.path(), 0, &config, true).await;
    let c = Client::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN1).await.unwrap();
    let creds = c.bind_ready(&id, &bid, PLAN1).await.unwrap()["credentials"].clone();
    assert_eq!(creds["port"], 3307);
    c.unbind_done(&id, &bid, PLAN1).await.unwrap();
    c.deprovision_done(&id, PLAN1).await.unwrap();
    assert!(
        !databases_of(1)
            .await
            .contains(&format!("op_{}", id.replace('-', "_")))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_or_with_an_untrusted_certificate_the_server_is_not_used() {
    // Plain TCP: the account refuses. TLS without our CA: the certificate is not trusted.
    for (tls, why) in [
        ("", "Access denied"),
        ("[mysql.servers.tls]\n", "certificate"),
    ] {
        let run = tempfile::tempdir().unwrap();
        let config = config_with_servers(run.path(), &tls_server(tls));
        let broker = start_with(run.path(), 0, &config, false).await;
        let ready = reqwest::get(format!("http://127.0.0.1:{}/ready", broker.port))
            .await
            .unwrap();
        assert_eq!(ready.status(), 503, "config {tls:?}");
        drop(broker);
        // /ready says only "unavailable"; the reason is in the log.
        let log = std::fs::read_to_string(run.path().join("broker.log")).unwrap();
        assert!(
            log.lines()
                .any(|l| l.contains("not ready") && l.contains(why)),
            "config {tls:?}: no 'not ready' line saying {why:?}:\n{log}"
        );
    }
}
