//! Items a broker hands out whole (a pool's servers, a range's ports), claimed in the state
//! store: one owner per item, so that replicas sharing the store never hand out one twice and
//! a restarted broker knows what is taken.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::broker::BrokerError;
use crate::orphans::Owner;
use crate::store::{Store, StoreError};

/// A broker's handle on the claims. Made with the broker, before the store is open; the
/// server (or a command of the binary) attaches the store once it is.
#[derive(Clone, Default)]
pub struct Claims {
    store: Arc<OnceLock<Store>>,
}

/// One claimed item.
#[derive(Debug, Clone)]
pub struct ItemClaim {
    pub item: String,
    pub platform: String,
    pub owner_id: String,
    pub claimed_at_ms: i64,
}

fn store_error(e: StoreError) -> BrokerError {
    match e {
        StoreError::Unavailable(why) => BrokerError::Unavailable(format!("state store: {why}")),
        e => BrokerError::Failed(e.to_string()),
    }
}

impl Claims {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ties the handle to the store the broker serves from; the first store stays.
    pub fn attach(&self, store: &Store) {
        let _ = self.store.set(store.clone());
    }

    fn store(&self) -> Result<&Store, BrokerError> {
        self.store
            .get()
            .ok_or_else(|| BrokerError::Unavailable("the state store is not open".into()))
    }

    /// Claims `item` of `pool` for `owner` (its platform and id) unless another owner holds
    /// it; `true` when `owner` holds it now.
    pub async fn claim(
        &self,
        pool: &str,
        item: &str,
        owner: Owner<'_>,
    ) -> Result<bool, BrokerError> {
        self.store()?
            .claim_item(pool, item, owner.platform, owner.id)
            .await
            .map_err(store_error)
    }

    /// The item of `pool` that `owner` holds, if any.
    pub async fn held_by(
        &self,
        pool: &str,
        owner: Owner<'_>,
    ) -> Result<Option<String>, BrokerError> {
        self.store()?
            .item_held_by(pool, owner.platform, owner.id)
            .await
            .map_err(store_error)
    }

    /// Every claim of `pool`.
    pub async fn all(&self, pool: &str) -> Result<Vec<ItemClaim>, BrokerError> {
        let rows = self.store()?.claims_in(pool).await.map_err(store_error)?;
        Ok(rows
            .into_iter()
            .map(|(item, platform, owner_id, claimed_at_ms)| ItemClaim {
                item,
                platform,
                owner_id,
                claimed_at_ms,
            })
            .collect())
    }

    /// Gives `item` of `pool` back if `owner` holds it.
    pub async fn release(
        &self,
        pool: &str,
        item: &str,
        owner: Owner<'_>,
    ) -> Result<(), BrokerError> {
        self.store()?
            .release_item(pool, item, owner.platform, owner.id)
            .await
            .map_err(store_error)
    }

    /// Runs `work` as the only holder of lock `name` among every replica sharing the store:
    /// for a read-modify-write of one backend setting. The lock is a lease of `hold`, so a
    /// replica that dies holding it blocks the others no longer than that. `work` gets three
    /// quarters of `hold` and is stopped past them (a 503). A section that did not end (stopped,
    /// or dropped by its caller) keeps the lease until it expires: a change it sent may still
    /// land, and the next holder must read the setting after it. Waits a little longer than
    /// `hold` for the lock, then answers 503.
    pub async fn exclusive<T, F, Fut>(
        &self,
        name: &str,
        hold: Duration,
        work: F,
    ) -> Result<T, BrokerError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, BrokerError>>,
    {
        let store = self.store()?;
        let holder = uuid::Uuid::new_v4().to_string();
        let ttl = i64::try_from(hold.as_millis()).unwrap_or(i64::MAX);
        // Past `hold`: a lease left by a section that did not end is taken over, not missed.
        let deadline = Instant::now() + hold + hold / 10;
        let mut pause = Duration::from_millis(10);
        while !store
            .acquire_lease(name, &holder, ttl)
            .await
            .map_err(store_error)?
        {
            if Instant::now() >= deadline {
                return Err(BrokerError::Unavailable(format!(
                    "lock {name} stayed held by another replica for {} s",
                    hold.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
        let result = tokio::time::timeout(hold * 3 / 4, work())
            .await
            .map_err(|_| {
                BrokerError::Unavailable(format!(
                    "the work under lock {name} took longer than its lease allows"
                ))
            })?;
        // A lease left behind only delays the next holder until it expires.
        if let Err(e) = store.release_lease(name, &holder).await {
            tracing::warn!(lock = name, error = %e, "lock not released; it expires on its own");
        }
        result
    }
}
