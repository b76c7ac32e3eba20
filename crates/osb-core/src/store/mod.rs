//! The broker's own state: instances, bindings and operations, on SQLite, MySQL/MariaDB or
//! PostgreSQL through one set of diesel queries and one set of migrations.

mod rows;
mod schema;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::{Pool, PoolError};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::scoped_futures::ScopedFutureExt;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{
    AsyncConnection, AsyncMigrationHarness, AsyncMysqlConnection, AsyncPgConnection, RunQueryDsl,
    SimpleAsyncConnection,
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures::FutureExt;

pub use rows::{
    BindingRow, BindingState, InstanceRow, InstanceState, OperationRow, OperationState,
};
use schema::{osb_bindings, osb_instances, osb_leases, osb_operations};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// What a succeeded operation changed, for [`Store::succeed`].
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    SaveInstance(&'a InstanceRow),
    DeleteInstance(&'a str),
    SaveBinding(&'a BindingRow),
    DeleteBinding(&'a str),
}

type SqliteConn = SyncConnectionWrapper<diesel::SqliteConnection>;

enum Pools {
    Sqlite(Pool<SqliteConn>),
    Mysql(Pool<AsyncMysqlConnection>),
    Postgres(Pool<AsyncPgConnection>),
}

/// The state store. Cheap to clone; every clone shares one connection pool.
#[derive(Clone)]
pub struct Store {
    pools: std::sync::Arc<Pools>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store url must start with sqlite://, mysql:// or postgres:// (got {0:?})")]
    BadUrl(String),
    #[error("state store unreachable: {0}")]
    Unavailable(String),
    #[error("state store query failed: {0}")]
    Query(#[from] DieselError),
    #[error("state store migration failed: {0}")]
    Migration(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

impl From<PoolError> for StoreError {
    fn from(err: PoolError) -> Self {
        Self::Unavailable(err.to_string())
    }
}

/// Runs `$body` with `$conn` bound to a pooled connection of whichever database is configured;
/// the body is compiled once per backend, so every query is checked against all three.
macro_rules! with_conn {
    ($store:expr, |$conn:ident| $body:expr) => {
        match &*$store.pools {
            Pools::Sqlite(pool) => {
                let mut pooled = pool.get().await?;
                let $conn = &mut *pooled;
                $body
            }
            Pools::Mysql(pool) => {
                let mut pooled = pool.get().await?;
                let $conn = &mut *pooled;
                $body
            }
            Pools::Postgres(pool) => {
                let mut pooled = pool.get().await?;
                let $conn = &mut *pooled;
                $body
            }
        }
    };
}

/// Milliseconds since the Unix epoch, the store's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn inserted(result: Result<usize, DieselError>) -> Result<bool, StoreError> {
    match result {
        Ok(_) => Ok(true),
        Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

impl Store {
    /// Connects (`sqlite://PATH`, `mysql://…`, `postgres://…`) and applies pending migrations.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let pools = if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() || path.contains(":memory:") {
                return Err(StoreError::BadUrl(url.to_owned()));
            }
            let mut config = ManagerConfig::<SqliteConn>::default();
            config.custom_setup = Box::new(|url| {
                async move {
                    let mut conn = SqliteConn::establish(url).await?;
                    // WAL lets readers run beside the writer; the busy timeout makes concurrent
                    // writers queue instead of failing with SQLITE_BUSY.
                    conn.batch_execute(
                        "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;",
                    )
                    .await
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                    Ok(conn)
                }
                .boxed()
            });
            let manager = AsyncDieselConnectionManager::new_with_config(path, config);
            Pools::Sqlite(build_pool(manager, pool_size)?)
        } else if url.starts_with("mysql://") {
            Pools::Mysql(build_pool(
                AsyncDieselConnectionManager::new(url),
                pool_size,
            )?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Pools::Postgres(build_pool(
                AsyncDieselConnectionManager::new(url),
                pool_size,
            )?)
        } else {
            return Err(StoreError::BadUrl(url.to_owned()));
        };
        let store = Self {
            pools: std::sync::Arc::new(pools),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Which database this store runs on, for logs.
    pub fn kind(&self) -> &'static str {
        match &*self.pools {
            Pools::Sqlite(_) => "sqlite",
            Pools::Mysql(_) => "mysql",
            Pools::Postgres(_) => "postgres",
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // Replicas starting together race to create the tables; the loser retries and then
        // finds the migrations applied.
        let mut attempt = 0;
        loop {
            let result: Result<(), StoreError> = match &*self.pools {
                Pools::Sqlite(p) => run_migrations(p.get().await?),
                Pools::Mysql(p) => run_migrations(p.get().await?),
                Pools::Postgres(p) => run_migrations(p.get().await?),
            };
            match result {
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "migration failed, retrying");
                    tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_conn!(self, |conn| {
            conn.batch_execute("SELECT 1").await?;
            Ok(())
        })
    }

    /// Inserts a new instance; `false` when one with this id exists already.
    pub async fn insert_instance(&self, row: &InstanceRow) -> Result<bool, StoreError> {
        with_conn!(self, |conn| inserted(
            diesel::insert_into(osb_instances::table)
                .values(row)
                .execute(conn)
                .await
        ))
    }

    pub async fn instance(&self, id: &str) -> Result<Option<InstanceRow>, StoreError> {
        with_conn!(self, |conn| Ok(osb_instances::table
            .find(id)
            .first::<InstanceRow>(conn)
            .await
            .optional()?))
    }

    /// Moves an instance from one of `from` to `to` for operation `op`; `false` if it was not in
    /// one of those states (another request got there first).
    pub async fn claim_instance(
        &self,
        id: &str,
        from: &[InstanceState],
        to: InstanceState,
        op: &str,
    ) -> Result<bool, StoreError> {
        use osb_instances::dsl;
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        with_conn!(self, |conn| Ok(diesel::update(
            dsl::osb_instances
                .filter(dsl::id.eq(id))
                .filter(dsl::state.eq_any(&from))
        )
        .set((
            dsl::state.eq(to.as_str()),
            dsl::operation_id.eq(op),
            dsl::updated_at.eq(now_ms()),
        ))
        .execute(conn)
        .await?
            == 1))
    }

    /// Writes every column of an instance back.
    pub async fn save_instance(&self, row: &InstanceRow) -> Result<(), StoreError> {
        with_conn!(self, |conn| {
            diesel::update(osb_instances::table.find(&row.id))
                .set(row)
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    /// Deletes an instance and its bindings.
    pub async fn delete_instance(&self, id: &str) -> Result<(), StoreError> {
        with_conn!(self, |conn| {
            diesel::delete(osb_bindings::table.filter(osb_bindings::instance_id.eq(id)))
                .execute(conn)
                .await?;
            diesel::delete(osb_instances::table.find(id))
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    pub async fn insert_binding(&self, row: &BindingRow) -> Result<bool, StoreError> {
        with_conn!(self, |conn| inserted(
            diesel::insert_into(osb_bindings::table)
                .values(row)
                .execute(conn)
                .await
        ))
    }

    pub async fn binding(&self, id: &str) -> Result<Option<BindingRow>, StoreError> {
        with_conn!(self, |conn| Ok(osb_bindings::table
            .find(id)
            .first::<BindingRow>(conn)
            .await
            .optional()?))
    }

    pub async fn bindings_of(&self, instance_id: &str) -> Result<Vec<BindingRow>, StoreError> {
        with_conn!(self, |conn| Ok(osb_bindings::table
            .filter(osb_bindings::instance_id.eq(instance_id))
            .order(osb_bindings::created_at.asc())
            .load::<BindingRow>(conn)
            .await?))
    }

    /// Whether any binding of the instance is being created or deleted right now.
    pub async fn has_busy_bindings(&self, instance_id: &str) -> Result<bool, StoreError> {
        use osb_bindings::dsl;
        let busy = [
            BindingState::Binding.as_str(),
            BindingState::Unbinding.as_str(),
        ];
        with_conn!(self, |conn| Ok(dsl::osb_bindings
            .filter(dsl::instance_id.eq(instance_id))
            .filter(dsl::state.eq_any(busy))
            .count()
            .get_result::<i64>(conn)
            .await?
            > 0))
    }

    pub async fn claim_binding(
        &self,
        id: &str,
        from: &[BindingState],
        to: BindingState,
        op: &str,
    ) -> Result<bool, StoreError> {
        use osb_bindings::dsl;
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        with_conn!(self, |conn| Ok(diesel::update(
            dsl::osb_bindings
                .filter(dsl::id.eq(id))
                .filter(dsl::state.eq_any(&from))
        )
        .set((
            dsl::state.eq(to.as_str()),
            dsl::operation_id.eq(op),
            dsl::updated_at.eq(now_ms()),
        ))
        .execute(conn)
        .await?
            == 1))
    }

    pub async fn delete_binding(&self, id: &str) -> Result<(), StoreError> {
        with_conn!(self, |conn| {
            diesel::delete(osb_bindings::table.find(id))
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    pub async fn insert_operation(&self, row: &OperationRow) -> Result<(), StoreError> {
        with_conn!(self, |conn| {
            diesel::insert_into(osb_operations::table)
                .values(row)
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    pub async fn operation(&self, id: &str) -> Result<Option<OperationRow>, StoreError> {
        with_conn!(self, |conn| Ok(osb_operations::table
            .find(id)
            .first::<OperationRow>(conn)
            .await
            .optional()?))
    }

    /// The newest operation on an instance (`binding_id: None`) or on one of its bindings.
    pub async fn latest_operation(
        &self,
        instance_id: &str,
        binding_id: Option<&str>,
    ) -> Result<Option<OperationRow>, StoreError> {
        use osb_operations::dsl;
        with_conn!(self, |conn| {
            let query = dsl::osb_operations
                .filter(dsl::instance_id.eq(instance_id))
                .order((dsl::created_at.desc(), dsl::id.desc()))
                .into_boxed();
            let query = match binding_id {
                Some(b) => query.filter(dsl::binding_id.eq(b)),
                None => query.filter(dsl::binding_id.is_null()),
            };
            Ok(query.first::<OperationRow>(conn).await.optional()?)
        })
    }

    /// Records the end of an operation, unless it already ended (a reaper may have failed it).
    pub async fn finish_operation(
        &self,
        id: &str,
        state: OperationState,
        description: Option<&str>,
        instance_usable: Option<bool>,
        update_repeatable: Option<bool>,
    ) -> Result<bool, StoreError> {
        use osb_operations::dsl;
        with_conn!(self, |conn| Ok(diesel::update(
            dsl::osb_operations
                .filter(dsl::id.eq(id))
                .filter(dsl::state.eq(OperationState::InProgress.as_str()))
        )
        .set((
            dsl::state.eq(state.as_str()),
            dsl::description.eq(description),
            dsl::instance_usable.eq(instance_usable),
            dsl::update_repeatable.eq(update_repeatable),
            dsl::updated_at.eq(now_ms()),
        ))
        .execute(conn)
        .await?
            == 1))
    }

    /// Ends operation `op` as succeeded and writes what it changed, in one transaction, so that
    /// `last_operation` and the rows never disagree.
    pub async fn succeed(&self, op: &str, outcome: Outcome<'_>) -> Result<(), StoreError> {
        use osb_operations::dsl;
        with_conn!(self, |conn| {
            conn.transaction::<_, DieselError, _>(|conn| {
                async move {
                    match outcome {
                        Outcome::SaveInstance(row) => {
                            diesel::update(osb_instances::table.find(&row.id))
                                .set(row)
                                .execute(conn)
                                .await?;
                        }
                        Outcome::DeleteInstance(id) => {
                            diesel::delete(
                                osb_bindings::table.filter(osb_bindings::instance_id.eq(id)),
                            )
                            .execute(conn)
                            .await?;
                            diesel::delete(osb_instances::table.find(id))
                                .execute(conn)
                                .await?;
                        }
                        Outcome::SaveBinding(row) => {
                            diesel::update(osb_bindings::table.find(&row.id))
                                .set(row)
                                .execute(conn)
                                .await?;
                        }
                        Outcome::DeleteBinding(id) => {
                            diesel::delete(osb_bindings::table.find(id))
                                .execute(conn)
                                .await?;
                        }
                    }
                    diesel::update(
                        dsl::osb_operations
                            .filter(dsl::id.eq(op))
                            .filter(dsl::state.eq(OperationState::InProgress.as_str())),
                    )
                    .set((
                        dsl::state.eq(OperationState::Succeeded.as_str()),
                        dsl::updated_at.eq(now_ms()),
                    ))
                    .execute(conn)
                    .await?;
                    Ok(())
                }
                .scope_boxed()
            })
            .await?;
            Ok(())
        })
    }

    /// Takes or renews lease `name` for `owner` until `ttl_ms` from now; `false` while another
    /// owner holds an unexpired one.
    pub async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        use osb_leases::dsl;
        let now = now_ms();
        with_conn!(self, |conn| {
            let taken = inserted(
                diesel::insert_into(dsl::osb_leases)
                    .values((
                        dsl::name.eq(name),
                        dsl::owner.eq(owner),
                        dsl::expires_at.eq(now + ttl_ms),
                    ))
                    .execute(conn)
                    .await,
            )?;
            if taken {
                return Ok(true);
            }
            Ok(diesel::update(
                dsl::osb_leases
                    .filter(dsl::name.eq(name))
                    .filter(dsl::owner.eq(owner).or(dsl::expires_at.lt(now))),
            )
            .set((dsl::owner.eq(owner), dsl::expires_at.eq(now + ttl_ms)))
            .execute(conn)
            .await?
                == 1)
        })
    }

    /// Marks operations this replica is still running as alive.
    pub async fn heartbeat(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        use osb_operations::dsl;
        with_conn!(self, |conn| {
            diesel::update(dsl::osb_operations.filter(dsl::id.eq_any(ids)))
                .set(dsl::heartbeat_at.eq(now_ms()))
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    /// Operations still "in progress" whose runner has not sent a heartbeat since `before_ms`.
    pub async fn stale_operations(&self, before_ms: i64) -> Result<Vec<OperationRow>, StoreError> {
        use osb_operations::dsl;
        with_conn!(self, |conn| Ok(dsl::osb_operations
            .filter(dsl::state.eq(OperationState::InProgress.as_str()))
            .filter(dsl::heartbeat_at.lt(before_ms))
            .limit(100)
            .load::<OperationRow>(conn)
            .await?))
    }
}

fn build_pool<C>(
    manager: AsyncDieselConnectionManager<C>,
    size: usize,
) -> Result<Pool<C>, StoreError>
where
    C: diesel_async::pooled_connection::PoolableConnection + 'static,
    diesel::dsl::select<diesel::dsl::AsExprOf<i32, diesel::sql_types::Integer>>:
        diesel_async::methods::ExecuteDsl<C>,
    diesel::query_builder::SqlQuery: diesel::query_builder::QueryFragment<C::Backend>,
{
    Pool::builder(manager)
        .max_size(size.max(1))
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

fn run_migrations<C>(conn: C) -> Result<(), StoreError>
where
    C: AsyncConnection + 'static,
    AsyncMigrationHarness<C>: MigrationHarness<C::Backend>,
{
    let mut harness = AsyncMigrationHarness::new(conn);
    harness
        .run_pending_migrations(MIGRATIONS)
        .map(|_| ())
        .map_err(|e| StoreError::Migration(e.to_string()))
}

impl Store {
    /// Sets an instance's state if `op` is still its operation.
    pub async fn release_instance(
        &self,
        id: &str,
        op: &str,
        to: InstanceState,
    ) -> Result<(), StoreError> {
        use osb_instances::dsl;
        with_conn!(self, |conn| {
            diesel::update(
                dsl::osb_instances
                    .filter(dsl::id.eq(id))
                    .filter(dsl::operation_id.eq(op)),
            )
            .set((dsl::state.eq(to.as_str()), dsl::updated_at.eq(now_ms())))
            .execute(conn)
            .await?;
            Ok(())
        })
    }

    /// Sets a binding's state if `op` is still its operation.
    pub async fn release_binding(
        &self,
        id: &str,
        op: &str,
        to: BindingState,
    ) -> Result<(), StoreError> {
        use osb_bindings::dsl;
        with_conn!(self, |conn| {
            diesel::update(
                dsl::osb_bindings
                    .filter(dsl::id.eq(id))
                    .filter(dsl::operation_id.eq(op)),
            )
            .set((dsl::state.eq(to.as_str()), dsl::updated_at.eq(now_ms())))
            .execute(conn)
            .await?;
            Ok(())
        })
    }

    /// Every instance in `state`, for periodic upkeep.
    pub async fn instances_in(&self, state: InstanceState) -> Result<Vec<InstanceRow>, StoreError> {
        with_conn!(self, |conn| Ok(osb_instances::table
            .filter(osb_instances::state.eq(state.as_str()))
            .order(osb_instances::created_at.asc())
            .load::<InstanceRow>(conn)
            .await?))
    }

    /// Removes an operation that never started (its claim lost a race).
    pub async fn delete_operation(&self, id: &str) -> Result<(), StoreError> {
        with_conn!(self, |conn| {
            diesel::delete(osb_operations::table.find(id))
                .execute(conn)
                .await?;
            Ok(())
        })
    }
}
