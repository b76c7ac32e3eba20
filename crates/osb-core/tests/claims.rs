//! Claims on items a broker hands out whole, on every kind of state store.

mod common;

use osb_core::BrokerError;
use osb_core::claims::Claims;
use osb_core::orphans::Owner;
use osb_core::store::Store;

fn owner(id: &str) -> Owner<'_> {
    Owner {
        platform: "default",
        id,
        parent: "",
    }
}

async fn an_item_has_one_owner_until_it_is_given_back(url: &str) {
    let claims = Claims::new();
    assert!(
        matches!(
            claims.claim("p", "a", owner("x")).await,
            Err(BrokerError::Unavailable(_))
        ),
        "claims without a store"
    );
    claims.attach(&Store::connect(url, 2).await.unwrap());
    assert!(claims.claim("p", "a", owner("x")).await.unwrap());
    assert!(
        claims.claim("p", "a", owner("x")).await.unwrap(),
        "held already"
    );
    assert!(!claims.claim("p", "a", owner("y")).await.unwrap());
    assert!(
        !claims.claim("p", "a", owner("X")).await.unwrap(),
        "owners differ in case"
    );
    assert!(
        claims.claim("q", "a", owner("y")).await.unwrap(),
        "pools are apart"
    );
    assert_eq!(
        claims.held_by("p", owner("x")).await.unwrap().as_deref(),
        Some("a")
    );
    claims.release("p", "a", owner("y")).await.unwrap();
    assert_eq!(
        claims.all("p").await.unwrap().len(),
        1,
        "only its owner gives it back"
    );
    claims.release("p", "a", owner("x")).await.unwrap();
    assert!(claims.claim("p", "a", owner("y")).await.unwrap());
}

// The SQLite store runs its migrations on a blocking section.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_hold_on_every_store() {
    let dir = tempfile::tempdir().unwrap();
    an_item_has_one_owner_until_it_is_given_back(&common::sqlite_url(&dir)).await;
    for url in [common::fresh_mysql().await, common::fresh_postgres().await] {
        an_item_has_one_owner_until_it_is_given_back(&url).await;
        common::drop_database(&url).await;
    }
}
