//! Claims on items a broker hands out whole, on every kind of state store.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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

/// Two replicas (two handles on one store) never run their sections at once; a section that
/// fails still lets the lock go, and a lock held too long is a 503.
async fn one_replica_at_a_time_runs_an_exclusive_section(url: &str) {
    let store = Store::connect(url, 4).await.unwrap();
    let replicas = [Claims::new(), Claims::new()];
    for r in &replicas {
        r.attach(&store);
    }
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let runs = (0..8).map(|i| {
        let (claims, inside, most) = (replicas[i % 2].clone(), inside.clone(), most.clone());
        async move {
            claims
                .exclusive("auth", Duration::from_secs(10), || async {
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    if i == 3 {
                        return Err(BrokerError::Failed("section failed".into()));
                    }
                    Ok(i)
                })
                .await
        }
    });
    let results = futures::future::join_all(runs).await;
    assert_eq!(most.load(Ordering::SeqCst), 1, "sections overlapped");
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        7,
        "{results:?}"
    );

    // A holder that never lets go (a replica that died inside) blocks others only for the
    // lease; within it they get a 503 naming the lock.
    assert!(
        store
            .acquire_lease("stuck", "dead-replica", 60_000)
            .await
            .unwrap()
    );
    let waited = replicas[0]
        .exclusive("stuck", Duration::from_millis(300), || async { Ok(()) })
        .await;
    assert!(
        matches!(&waited, Err(BrokerError::Unavailable(why)) if why.contains("stuck")),
        "{waited:?}"
    );
    // A section that outlives three quarters of its lease is stopped (a 503) and keeps the
    // lease until it expires (what it sent may still land); then another replica takes it.
    // The lease's last quarter (500 ms) is the margin for a loaded machine's late timers.
    let slow = replicas[0]
        .exclusive("slow", Duration::from_millis(2000), || async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        })
        .await;
    assert!(matches!(slow, Err(BrokerError::Unavailable(_))), "{slow:?}");
    assert!(
        replicas[1]
            .exclusive("slow", Duration::from_millis(20), || async { Ok(()) })
            .await
            .is_err(),
        "a stopped section's lease was taken before it expired"
    );
    // Past the lease's end (2 s after it was taken): a takeover, not a wait for a holder.
    tokio::time::sleep(Duration::from_millis(600)).await;
    replicas[1]
        .exclusive("slow", Duration::from_secs(2), || async { Ok(()) })
        .await
        .expect("an expired lease is taken over");
    assert!(
        store
            .acquire_lease("gone", "dead-replica", 1)
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    replicas[1]
        .exclusive("gone", Duration::from_secs(5), || async { Ok(()) })
        .await
        .expect("an expired lease is taken over");
}

// The SQLite store runs its migrations on a blocking section.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_hold_on_every_store() {
    common::on_every_store(|url| async move {
        an_item_has_one_owner_until_it_is_given_back(&url).await;
        one_replica_at_a_time_runs_an_exclusive_section(&url).await;
    })
    .await;
}
