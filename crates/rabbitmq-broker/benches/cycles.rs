//! Provision + bind + unbind + deprovision cycles per second through rabbitmq-broker, against
//! the same management API calls (and the AMQP check) sent straight to RabbitMQ, and the
//! broker's peak RSS.
//!
//! `cargo bench -p rabbitmq-broker` (or `make bench`); needs the local RabbitMQ with its
//! management plugin (scripts/backends.sh). Prints figures; asserts nothing about speed.

use std::path::Path;

use osb_testkit::bench::compare;
use osb_testkit::fresh_id;
use rabbitmq_http_client::api::{Client, ClientBuilder};
use rabbitmq_http_client::commons::{PolicyTarget, VirtualHostLimitTarget};
use rabbitmq_http_client::password_hashing;
use rabbitmq_http_client::requests::{
    EnforcedLimitParams, GlobalRuntimeParameterDefinition, Permissions, PolicyParams, UserParams,
    VirtualHostParams,
};
use serde_json::{Map, Value, json};

const SERVICE: &str = "14a9fad1-cf61-45dd-b486-f33609a80561";
const PLAN: &str = "6244693b-e046-4622-9be2-73315a186bfb";

type Api = Client<String, String, String>;

fn marker(kind: &str, name: &str, owner: &str, parent: &str) -> Map<String, Value> {
    let Value::Object(map) = json!({"kind": kind, "name": name, "platform": "default",
        "owner_id": owner, "parent": parent, "created_at_ms": 0, "made": true})
    else {
        unreachable!("a JSON object literal")
    };
    map
}

/// The calls rabbitmq-broker makes for one cycle on an instance with one binding.
async fn direct_cycle(api: &Api) -> anyhow::Result<()> {
    let id = fresh_id().replace('-', "_");
    let (vhost, user) = (format!("op_{id}"), format!("b_{id}"));
    let (vkey, ukey) = (
        format!("kpaas-broker.vhost.{vhost}"),
        format!("kpaas-broker.user.{user}"),
    );
    let put = |key: &str, value: Map<String, Value>| {
        let key = key.to_owned();
        async move {
            api.upsert_global_runtime_parameter(&GlobalRuntimeParameterDefinition {
                name: &key,
                value,
            })
            .await
        }
    };
    // provision
    api.current_user().await?;
    let _ = api.get_global_runtime_parameter(&vkey).await;
    put(&vkey, marker("vhost", &vhost, &id, "")).await?;
    let _ = api.get_vhost(&vhost).await;
    put(&vkey, marker("vhost", &vhost, &id, "")).await?;
    let params = VirtualHostParams {
        name: &vhost,
        description: Some("bench"),
        tags: None,
        default_queue_type: None,
        tracing: false,
    };
    api.create_vhost(&params).await?;
    for (target, value) in [
        (VirtualHostLimitTarget::MaxConnections, 20),
        (VirtualHostLimitTarget::MaxQueues, 100),
    ] {
        api.set_vhost_limit(&vhost, EnforcedLimitParams::new(target, value))
            .await?;
    }
    let Value::Object(definition) = json!({"max-length": 10000}) else {
        unreachable!("a JSON object literal")
    };
    let policy = PolicyParams {
        vhost: &vhost,
        name: "kpaas-plan",
        pattern: ".*",
        apply_to: PolicyTarget::Queues,
        priority: 0,
        definition,
    };
    api.declare_policy(&policy).await?;
    let amqp = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
    let conn = lapin::Connection::connect(&amqp, lapin::ConnectionProperties::default()).await?;
    conn.close(200, "bench".into()).await?;
    // bind
    api.current_user().await?;
    let _ = api.get_global_runtime_parameter(&ukey).await;
    put(&ukey, marker("user", &user, &id, &vhost)).await?;
    let _ = api.get_user(&user).await;
    put(&ukey, marker("user", &user, &id, &vhost)).await?;
    let hash = password_hashing::base64_encoded_salted_password_hash_sha256(
        &password_hashing::salt(),
        "Abcdefghijklmnopqrstuvwxyz0123456789ABCD",
    );
    api.create_user(&UserParams {
        name: &user,
        password_hash: &hash,
        tags: "",
    })
    .await?;
    let everything = Permissions {
        user: &user,
        vhost: &vhost,
        configure: ".*",
        read: ".*",
        write: ".*",
    };
    api.declare_permissions(&everything).await?;
    // unbind
    api.current_user().await?;
    api.get_global_runtime_parameter(&ukey).await?;
    api.close_user_connections(&user, None, true).await?;
    api.delete_user(&user, true).await?;
    api.get_global_runtime_parameter(&ukey).await?;
    api.clear_global_runtime_parameter(&ukey).await?;
    // deprovision
    api.current_user().await?;
    api.get_global_runtime_parameter(&vkey).await?;
    api.list_global_runtime_parameters().await?;
    api.delete_vhost(&vhost, true).await?;
    api.get_global_runtime_parameter(&vkey).await?;
    api.clear_global_runtime_parameter(&vkey).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The management client's HTTP stack is built without a crypto provider of its own.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/rabbitmq-broker.toml");
    let binary = Path::new(env!("CARGO_BIN_EXE_rabbitmq-broker"));
    let api: std::sync::Arc<Api> = std::sync::Arc::new(
        ClientBuilder::new()
            .with_endpoint("http://127.0.0.1:15672/api".to_owned())
            .with_basic_auth_credentials("guest".to_owned(), "guest".to_owned())
            .build()?,
    );
    let direct = || {
        let api = api.clone();
        async move { direct_cycle(&api).await }
    };
    let env = [("RABBITMQ_BROKER_ADMIN_PASSWORD", "guest")];
    compare(
        "rabbitmq-broker",
        "RabbitMQ",
        binary,
        &deploy,
        &env,
        SERVICE,
        PLAN,
        direct,
    )
    .await?;
    Ok(())
}
