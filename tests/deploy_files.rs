//! One platform registers every broker of `deploy/`: their service ids, plan ids and service
//! names must not collide (a platform refuses duplicates), and each broker ships the same set
//! of deployment artifacts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every `deploy/*-broker.toml`, by broker name.
fn broker_configs() -> Vec<(String, toml::Table)> {
    let mut configs: Vec<_> = std::fs::read_dir(deploy())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.strip_suffix(".toml")?.to_owned();
            name.ends_with("-broker").then_some((name, p))
        })
        .map(|(name, path)| {
            let text = std::fs::read_to_string(&path).unwrap();
            let table: toml::Table = text
                .parse()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (name, table)
        })
        .collect();
    configs.sort_by(|a, b| a.0.cmp(&b.0));
    configs
}

#[test]
fn service_and_plan_ids_and_service_names_are_unique_across_brokers() {
    let configs = broker_configs();
    assert!(
        configs.len() >= 2,
        "expected mysql-broker and mongodb-broker at least: {:?}",
        configs.iter().map(|c| &c.0).collect::<Vec<_>>()
    );
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut claim = |kind: &str, value: &str, broker: &str| {
        let key = format!("{kind} {value}");
        if let Some(other) = seen.insert(key.clone(), broker.to_owned()) {
            panic!("{key} is in both {other} and {broker}");
        }
    };
    for (broker, config) in &configs {
        let services = config["broker"]["catalog"]["services"]
            .as_array()
            .unwrap_or_else(|| panic!("{broker}: no [[broker.catalog.services]]"));
        for service in services {
            claim("service id", service["id"].as_str().unwrap(), broker);
            claim("service name", service["name"].as_str().unwrap(), broker);
            for plan in service["plans"].as_array().unwrap() {
                claim("plan id", plan["id"].as_str().unwrap(), broker);
            }
        }
    }
}

#[test]
fn every_broker_ships_a_unit_a_manifest_and_kubernetes_objects() {
    for (broker, _) in broker_configs() {
        for artifact in [
            format!("systemd/{broker}.service"),
            format!("kubernetes/{broker}.yaml"),
        ] {
            assert!(
                deploy().join(&artifact).is_file(),
                "deploy/{artifact} is missing"
            );
        }
        // It mounts GlusterFS volumes itself (root, FUSE), which no Cloud Foundry app may.
        if broker == "glusterfs-broker" {
            continue;
        }
        let cf = deploy().join("cf");
        let manifests: Vec<String> = std::fs::read_dir(&cf)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        assert!(
            manifests
                .iter()
                .any(|m| m.contains(&format!("- name: {broker}"))),
            "no Cloud Foundry manifest in deploy/cf pushes {broker}"
        );
    }
}
