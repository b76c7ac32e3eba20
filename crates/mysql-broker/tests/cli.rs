//! The binary's command line: `--help`, `--version`, `check-config`, and `orphans` against
//! leftovers made by hand on the real MariaDB.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use mysql_async::prelude::Queryable;
use osb_testkit::{Client, fresh_id};
use serde_json::Value;

/// Runs the binary with `args`, the test environment and the state store in `dir`.
fn run(dir: &Path, config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mysql-broker"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("KPAAS_BROKER__STORE__URL", osb_testkit::sqlite_store(dir))
        .env("MYSQL_BROKER_PASSWORD", "broker-secret")
        .env(
            "MYSQL_BROKER_ENCRYPTION_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn help_and_version_answer_without_a_config() {
    let help = Command::new(env!("CARGO_BIN_EXE_mysql-broker"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = stdout(&help);
    for word in ["serve", "check-config", "orphans", "--config", "--version"] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
    let version = Command::new(env!("CARGO_BIN_EXE_mysql-broker"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(version.status.success());
    let text = stdout(&version);
    assert!(
        text.starts_with("mysql-broker ")
            && text.contains(env!("CARGO_PKG_VERSION"))
            && text.contains('('),
        "{text}"
    );
}

#[test]
fn check_config_names_each_problem_and_sets_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let good = run(dir.path(), &deploy_config(), &["check-config"]);
    assert!(
        good.status.success(),
        "{}{}",
        stdout(&good),
        String::from_utf8_lossy(&good.stderr)
    );
    assert_eq!(stdout(&good).trim(), "ok");

    let dead = free_port();
    let bad_servers = format!(
        "{}{}",
        server_entry("mysql-1", 3306),
        server_entry("gone-db", dead)
    );
    let config = config_with_servers(dir.path(), &bad_servers);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[broker.log]",
        "[broker.operations]\nlease_secs = 10\nheartbeat_secs = 10\n\n[broker.log]",
    );
    std::fs::write(&config, text).unwrap();
    let bad = run(dir.path(), &config, &["check-config"]);
    assert!(!bad.status.success());
    let lines = stdout(&bad);
    assert!(lines.lines().any(|l| l.contains("gone-db")), "{lines}");
    assert!(lines.lines().any(|l| l.contains("lease_secs")), "{lines}");
    assert!(!lines.lines().any(|l| l.contains("mysql-1")), "{lines}");

    // Instances record their server by name: two servers of one name are refused.
    let twice = format!(
        "{}{}",
        server_entry("mysql-1", 3306),
        server_entry("mysql-1", 3307)
    );
    let refused = run(
        dir.path(),
        &config_with_servers(dir.path(), &twice),
        &["check-config"],
    );
    assert!(!refused.status.success());
    let lines = stdout(&refused);
    assert!(lines.contains("\"mysql-1\" is named twice"), "{lines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_lists_and_removes_what_nothing_claims() {
    let dir = tempfile::tempdir().unwrap();
    // One server, quotas checked every second (the orphan gauge follows each upkeep pass).
    let config = config_with_servers(dir.path(), &server_entry("mysql-1", 3306));
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("quota_check_secs = 30", "quota_check_secs = 1");
    std::fs::write(&config, text).unwrap();
    let broker = start_with(dir.path(), 0, &config, true).await;
    let c = Client::new(target(&broker));
    let (id, bid) = (fresh_id(), fresh_id());
    c.provision_ready(&id, PLAN1).await.unwrap();
    let creds = c.bind_ready(&id, &bid, PLAN1).await.unwrap()["credentials"].clone();

    // Leftovers of a crash, made by hand two hours ago: a marked database whose instance the
    // store lost, a marked account whose binding it lost, and a database named like the
    // broker's that carries no marker.
    let suffix = fresh_id().replace('-', "");
    let (lost_db, lost_user, foreign_db) = (
        format!("op_lost{}", &suffix[..12]),
        format!("b_lost{}", &suffix[..12]),
        format!("op_foreign{}", &suffix[..12]),
    );
    let (lost_instance, lost_binding) = (fresh_id(), fresh_id());
    let mut admin = admin().await;
    admin
        .exec_drop(
            "INSERT INTO kpaas_broker.owners (kind, name, platform, owner_id, parent, created_at) \
             VALUES ('database', ?, 'default', ?, '', NOW() - INTERVAL 2 HOUR), \
                    ('user', ?, 'default', ?, ?, NOW() - INTERVAL 2 HOUR)",
            (
                &lost_db,
                &lost_instance,
                &lost_user,
                &lost_binding,
                &lost_db,
            ),
        )
        .await
        .unwrap();
    // The broker records "made" before it makes an object: a crash leaves both.
    admin
        .exec_drop(
            "INSERT INTO kpaas_broker.made (kind, name) VALUES ('database', ?), ('user', ?)",
            (&lost_db, &lost_user),
        )
        .await
        .unwrap();
    admin
        .query_drop(format!(
            "CREATE DATABASE `{lost_db}`; CREATE DATABASE `{foreign_db}`; \
             CREATE USER '{lost_user}'@'%' IDENTIFIED BY 'Lost-pass-1'"
        ))
        .await
        .unwrap();

    let listed = run(dir.path(), &config, &["orphans", "--json"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let rows: Vec<Value> = serde_json::from_str(&stdout(&listed)).unwrap();
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).cloned();
    let db_row = row(&lost_db).expect("the lost database is listed");
    assert_eq!(db_row["for"], "instance");
    assert_eq!(db_row["id"], lost_instance.as_str());
    assert_eq!(db_row["removable"], true);
    assert_eq!(
        row(&lost_user).expect("the lost account is listed")["removable"],
        true
    );
    assert_eq!(
        row(&foreign_db).expect("the unmarked database is listed")["removable"],
        false
    );
    let own_db = creds["name"].as_str().unwrap();
    let own_user = creds["username"].as_str().unwrap();
    assert!(
        row(own_db).is_none() && row(own_user).is_none(),
        "a claimed object is listed"
    );

    let table = run(dir.path(), &config, &["orphans"]);
    assert!(
        stdout(&table)
            .lines()
            .any(|l| l.starts_with("database\t") && l.contains(&lost_db))
    );

    // The gauge counts them after an upkeep pass.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (count, metrics) = broker.metric("osb_orphaned_backend_objects").await.unwrap();
        let count = count.unwrap_or(0.0);
        if count >= 3.0 {
            break;
        }
        assert!(Instant::now() < deadline, "gauge still {count}: {metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A mistyped store is no empty store: nothing is judged, nothing removed.
    let elsewhere = tempfile::tempdir().unwrap();
    let wrong = run(elsewhere.path(), &config, &["orphans", "--delete"]);
    assert!(!wrong.status.success());
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(said.contains("does not exist"), "{said}");
    assert!(databases_of(0).await.contains(&lost_db));

    // The servers are shared with other tests' brokers, whose leftovers count here too: the
    // share-of-orphans guard may trip, so --force.
    let deleted = run(
        dir.path(),
        &config,
        &["orphans", "--delete", "--force", "--json"],
    );
    assert!(
        deleted.status.success(),
        "{}{}",
        stdout(&deleted),
        String::from_utf8_lossy(&deleted.stderr)
    );
    let rows: Vec<Value> = serde_json::from_str(&stdout(&deleted)).unwrap();
    for name in [&lost_db, &lost_user] {
        let outcome = rows
            .iter()
            .find(|r| r["name"] == name.as_str())
            .map(|r| r["outcome"].clone());
        assert_eq!(outcome, Some(Value::from("removed")), "{name}: {rows:?}");
    }
    let all = databases_of(0).await;
    assert!(
        !all.contains(&lost_db),
        "the lost database survived --delete"
    );
    assert!(
        all.contains(&foreign_db),
        "an unmarked database was removed"
    );
    assert!(!account_exists(0, &lost_user).await);
    assert!(markers_of(0, &lost_instance).await.is_empty());
    assert!(markers_of(0, &lost_binding).await.is_empty());
    let mut app = mysql_async::Conn::from_url(creds["uri"].as_str().unwrap())
        .await
        .expect("the claimed binding still logs in");
    app.query_drop("SELECT 1").await.unwrap();
    drop(app);
    admin
        .query_drop(format!("DROP DATABASE `{foreign_db}`"))
        .await
        .unwrap();
    c.unbind_done(&id, &bid, PLAN1).await.unwrap();
    c.deprovision_done(&id, PLAN1).await.unwrap();
}
