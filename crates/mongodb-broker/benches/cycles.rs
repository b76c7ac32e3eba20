//! Provision + bind + unbind + deprovision cycles per second through mongodb-broker, against
//! the same commands sent straight to the MongoDB server (the limit), and the broker's peak RSS.
//!
//! `cargo bench -p mongodb-broker` (or `make bench`); needs the local MongoDB
//! (scripts/backends.sh). `BENCH_STORE_URL=mysql://...` runs the broker on that state store.
//! Prints figures; asserts nothing about speed.

use std::path::Path;

use mongodb::Client as Mongo;
use mongodb::bson::{DateTime, Document, doc};
use osb_testkit::bench::compare;
use osb_testkit::fresh_id;

const SERVICE: &str = "Mongo-DB";
const PLAN: &str = "default-plan";
const ADMIN_URI: &str = "mongodb://kpaas_admin:Kpaas-mongo-admin-1@127.0.0.1:27017/?authSource=admin&directConnection=true";

/// The commands mongodb-broker sends for one cycle on an instance with one binding.
async fn direct_cycle(client: &Mongo) -> anyhow::Result<()> {
    let id = fresh_id().replace('-', "_");
    let (db, user) = (format!("op_{id}"), format!("b_{id}"));
    let admin = client.database("admin");
    let owners = client
        .database("kpaas_broker")
        .collection::<Document>("owners");
    let database = client.database(&db);
    let ping = || admin.run_command(doc! {"ping": 1});
    let marker = |kind: &str, name: &str, parent: &str| {
        doc! {"_id": format!("{kind}:{name}"), "kind": kind, "name": name, "platform": "default",
        "owner_id": &id, "parent": parent, "created_at": DateTime::now()}
    };
    // provision
    ping().await?;
    owners.insert_one(marker("database", &db, "")).await?;
    client
        .list_database_names()
        .filter(doc! {"name": &db})
        .await?;
    // bind
    ping().await?;
    owners.insert_one(marker("user", &user, &db)).await?;
    database.run_command(doc! {"usersInfo": 1}).await?;
    owners
        .find_one(doc! {"kind": "user", "parent": &db})
        .await?;
    database.run_command(doc! {"usersInfo": 1}).await?;
    database
        .run_command(
            doc! {"createUser": &user, "pwd": "Abcdefghijklmnopqrstuvwxyz0123456789ABCD",
            "roles": [{"role": "readWrite", "db": &db}], "mechanisms": ["SCRAM-SHA-256"]},
        )
        .await?;
    // unbind
    ping().await?;
    owners
        .find_one(doc! {"_id": format!("user:{user}")})
        .await?;
    database.run_command(doc! {"dropUser": &user}).await?;
    owners
        .delete_one(doc! {"_id": format!("user:{user}")})
        .await?;
    // deprovision
    ping().await?;
    owners
        .find_one(doc! {"_id": format!("database:{db}")})
        .await?;
    owners
        .find_one(doc! {"kind": "user", "parent": &db})
        .await?;
    database.drop().await?;
    owners
        .delete_one(doc! {"_id": format!("database:{db}")})
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mongodb-broker.toml");
    let binary = Path::new(env!("CARGO_BIN_EXE_mongodb-broker"));
    let mongo = Mongo::with_uri_str(ADMIN_URI).await?;
    let direct = || {
        let mongo = mongo.clone();
        async move { direct_cycle(&mongo).await }
    };
    compare(
        "mongodb-broker",
        "MongoDB",
        binary,
        &deploy,
        &[("MONGODB_BROKER_ADMIN_URI", ADMIN_URI)],
        SERVICE,
        PLAN,
        direct,
    )
    .await?;
    Ok(())
}
