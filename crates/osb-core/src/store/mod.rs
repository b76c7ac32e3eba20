//! The broker's own state: instances, bindings and operations, on SQLite, MySQL/MariaDB or
//! PostgreSQL through one set of diesel queries and one set of migrations.

mod batch;
mod cached;
mod counting;
mod read_pin;
mod rows;
mod schema;
mod sqlite_library;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, PoolableConnection, RecyclingMethod,
};
use diesel_async::scoped_futures::ScopedFutureExt;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{
    AsyncConnection, AsyncMigrationHarness, AsyncMysqlConnection, AsyncPgConnection, RunQueryDsl,
    SimpleAsyncConnection,
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures::FutureExt;

use cached::CacheByText;
pub use counting::StoreCounters;
pub use rows::{
    BindingOwner, BindingRow, BindingState, InstanceOwner, InstanceRow, InstanceState,
    OperationRow, OperationState, OperationStatus, ShownBinding, ShownInstance,
};
use schema::{
    osb_bindings, osb_catalogs, osb_claims, osb_instance_facts, osb_instances, osb_leases,
    osb_operations,
};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");
/// Run after [`MIGRATIONS`] on MySQL/MariaDB only, for what portable SQL cannot say.
const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations_mysql");

/// What a succeeded operation changed, for [`Store::succeed`].
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    SaveInstance(&'a InstanceRow),
    DeleteInstance(&'a str),
    SaveBinding(&'a BindingRow),
    DeleteBinding(&'a str),
}

/// What a new operation starts on, for [`Store::start`].
#[derive(Clone, Copy)]
pub enum Start<'a> {
    /// Makes the instance row (the operation provisions it).
    NewInstance(&'a InstanceRow),
    /// Makes the binding row.
    NewBinding(&'a BindingRow),
    /// Moves instance `id` from one of `from` to `to`, if it is still on operation `previous`.
    Instance {
        id: &'a str,
        from: &'a [InstanceState],
        to: InstanceState,
        previous: &'a str,
    },
    /// Moves binding `id` from one of `from` to `to`, if it is still on operation `previous`.
    Binding {
        id: &'a str,
        from: &'a [BindingState],
        to: BindingState,
        previous: &'a str,
    },
}

impl Start<'_> {
    /// Whether `op`'s record names the row this start makes or claims (a binding's claim
    /// knows its binding only): a row points only to operations of its own, which is what
    /// [`Store::prune_operations`] relies on.
    fn is_named_by(&self, op: &OperationRow) -> bool {
        match self {
            Start::NewInstance(row) => op.instance_id == row.id && op.binding_id.is_none(),
            Start::NewBinding(row) => {
                op.instance_id == row.instance_id && op.binding_id.as_deref() == Some(&row.id)
            }
            Start::Instance { id, .. } => op.instance_id == *id && op.binding_id.is_none(),
            Start::Binding { id, .. } => op.binding_id.as_deref() == Some(*id),
        }
    }
}

/// Where a failed operation puts its row, for [`Store::fail`].
#[derive(Debug, Clone, Copy)]
pub enum Release<'a> {
    Instance(&'a str, InstanceState),
    Binding(&'a str, BindingState),
}

/// How a fenced final write ends the operation.
#[derive(Clone, Copy)]
enum End {
    Succeeded,
    /// Failed having changed nothing: the operation record goes with the row.
    Discarded,
}

type SqliteConn = SyncConnectionWrapper<diesel::SqliteConnection>;
type SqliteInPlace = SyncConnectionWrapper<diesel::SqliteConnection, InPlace>;

/// Runs a SQLite statement on the calling thread: the two thread hops of a blocking task cost
/// more than the statement (most of a write's time, measured). Only for what never waits for a
/// lock: writes that give up at once when another connection holds the file's write lock (see
/// [`SqliteWriters`]). Readers do not use it (see [`SqliteReaders`]). What such a write still
/// does on the calling thread: now and then the WAL checkpoint after a commit, with its fsyncs.
struct InPlace;

impl diesel_async::sync_connection_wrapper::SpawnBlocking for InPlace {
    fn spawn_blocking<'a, R>(
        &mut self,
        task: impl FnOnce() -> R + Send + 'static,
    ) -> futures::future::BoxFuture<'a, Result<R, Box<dyn std::error::Error + Send + Sync + 'static>>>
    where
        R: Send + 'static,
    {
        Box::pin(std::future::ready(Ok(task())))
    }

    fn get_runtime() -> Self {
        InPlace
    }
}

/// A SQLite store's writers, one connection each, so that this replica's writes queue in a
/// pool rather than meet at SQLite's lock and sleep in its busy handler. A write runs in place
/// and fails at once if the file's write lock is taken (another process on the same file, or
/// the other writer here); then it runs again on the waiting writer, on a blocking thread,
/// which waits up to 10 s for the lock (sleeping in the busy handler, and overtaken by
/// in-place writes while another process comes and goes: the rare case). Running a write
/// again is safe: in WAL mode only a write that has changed nothing yet meets the lock (the
/// first write of a transaction, whose rollback undoes nothing, or a single statement), and
/// the bodies that write twice without a transaction (the lease, a pooled item's claim, the
/// catalog's date) only write again after a write that changed nothing.
struct SqliteWriters {
    in_place: Pool<SqliteInPlace>,
    waiting: Pool<SqliteConn>,
}

/// A SQLite store's readers: diesel's own connections, each statement run on the calling thread
/// (in WAL mode a reader never waits for a writer). Not diesel-async's wrapper, which renders
/// every statement's SQL to find it in the statement cache and copies every row it reads, to
/// hand both across threads: together a third of a read's CPU time, measured. Here a statement
/// is found by its type and its rows are decoded where they lie.
struct SqliteReaders {
    path: String,
    counters: StoreCounters,
}

impl deadpool::managed::Manager for SqliteReaders {
    type Type = diesel::SqliteConnection;
    type Error = diesel::ConnectionError;

    async fn create(&self) -> Result<diesel::SqliteConnection, diesel::ConnectionError> {
        // The writers' connections set WAL mode (kept in the file); these only read. A reader
        // waits only if the file is not in WAL mode after all; then briefly, as it waits on the
        // caller's thread.
        let mut conn = open_read_only(&self.path, 250).await?;
        conn.set_instrumentation(counting::Counting::new(self.counters.clone(), false));
        Ok(conn)
    }

    async fn recycle(
        &self,
        _: &mut diesel::SqliteConnection,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<diesel::ConnectionError> {
        // A statement runs to its end before the connection goes back: none is left open, and
        // a file drops no connection.
        Ok(())
    }
}

/// A SQLite connection that only reads (`query_only`) and waits at most `busy_timeout_ms` for a
/// lock, opened on a blocking thread: opening reads the file, not on the caller's thread.
async fn open_read_only(
    path: &str,
    busy_timeout_ms: u32,
) -> Result<diesel::SqliteConnection, diesel::ConnectionError> {
    use diesel::connection::SimpleConnection;
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = diesel::SqliteConnection::establish(&path)?;
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {busy_timeout_ms}; PRAGMA query_only = 1;"
        ))
        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
        Ok(conn)
    })
    .await
    .unwrap_or_else(|e| Err(diesel::ConnectionError::BadConnection(e.to_string())))
}

enum Pools {
    Sqlite(SqliteWriters),
    Mysql(Pool<AsyncMysqlConnection>),
    Postgres(Pool<AsyncPgConnection>),
}

/// The state store. Cheap to clone; every clone shares one connection pool.
#[derive(Clone)]
pub struct Store {
    pools: std::sync::Arc<Pools>,
    /// SQLite only: connections that read on the calling thread (see [`SqliteReaders`]).
    readers: Option<std::sync::Arc<deadpool::managed::Pool<SqliteReaders>>>,
    /// Network stores only: lookups by key sent together (see [`batch`]).
    batches: Option<std::sync::Arc<Batches>>,
    /// A serving SQLite store's read mark, held between its writes (see [`read_pin`]).
    pin: Option<std::sync::Arc<read_pin::ReadPin>>,
    counters: StoreCounters,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Holds the URL's scheme only: the rest may carry a password.
    #[error("state store url must be sqlite://PATH, mysql://… or postgres://… (got {0})")]
    BadUrl(String),
    #[error("state store unreachable: {0}")]
    Unavailable(String),
    #[error("state store query failed: {0}")]
    Query(#[from] DieselError),
    #[error("state store migration failed: {0}")]
    Migration(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// No broker has started on this store yet (it makes its tables then).
    #[error("{0}")]
    NotSetUp(String),
}

impl StoreError {
    /// SQLite's "database is locked" (another connection holds the write lock, or recovers
    /// the WAL) or "database table is locked": nothing was changed by the statement.
    fn is_busy(&self) -> bool {
        matches!(
            self,
            Self::Query(DieselError::DatabaseError(diesel::result::DatabaseErrorKind::Unknown, info))
                if info.message().contains("is locked")
        )
    }

    /// A deadlock's victim on MariaDB (1213) or PostgreSQL (40P01, or a serialization
    /// failure, 40001): the server rolled its transaction back. diesel-async gives both
    /// deadlocks as their message alone: MariaDB sessions ask for English ones; a PostgreSQL
    /// server whose `lc_messages` is not English is not known to have rolled back, and its
    /// request fails (only a superuser may set the session's).
    fn is_deadlock_victim(&self) -> bool {
        match self {
            Self::Query(DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _)) => {
                true
            }
            Self::Query(DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)) => {
                let message = info.message();
                message.starts_with("Deadlock found when trying to get lock")
                    || message == "deadlock detected"
            }
            _ => false,
        }
    }

    /// An error like this one (the same answer to the platform, the same text in the log), for
    /// each further read a failed batched statement answers.
    fn copy(&self) -> Self {
        match self {
            Self::Unavailable(why) => Self::Unavailable(why.clone()),
            Self::Query(e) => Self::Query(DieselError::QueryBuilderError(e.to_string().into())),
            other => Self::Corrupt(other.to_string()),
        }
    }
}

impl<E: std::fmt::Display> From<deadpool::managed::PoolError<E>> for StoreError {
    fn from(err: deadpool::managed::PoolError<E>) -> Self {
        Self::Unavailable(err.to_string())
    }
}

/// A connection taken from its pool until the body that uses it has finished. A body dropped
/// half-way (a timeout, a task cancelled, a panic) may leave its statement unfinished, and the
/// connection unfit for the next: on SQLite's waiting writer the statement runs on in its
/// blocking thread, which shares the connection until it ends (diesel-async panics when the
/// next one takes it); on MariaDB its reply may still be on the way, for the next statement to
/// read as its own (within [`FRESH`] the pool hands the connection out unchecked, and a check
/// would be fooled the same way); on PostgreSQL the next statement would wait behind it. So it
/// leaves the pool instead, to close (on SQLite, when the statement ends), and the pool opens
/// a new one. Closing rolls back a transaction the body began; a single statement (or a
/// `COMMIT`) already sent still runs to its end, as it would have had the caller waited: until
/// then the server keeps that session beside the pool's new one. Only the broker's own limits
/// (an upkeep pass's or a claim's timeout) and panics give a statement up: a client that hangs
/// up cancels none (writes run on the broker runtime, a network store's reads in their batch's
/// turn), so such sessions stay few. Meanwhile the store's read pin may be taken again (see
/// [`read_pin`]): that only holds back this statement's checkpoint.
struct Unfinished<M: deadpool::managed::Manager>(Option<deadpool::managed::Object<M>>);

impl<M: deadpool::managed::Manager> Unfinished<M> {
    fn conn(&mut self) -> &mut M::Type {
        self.0.as_mut().expect("taken only when finished")
    }

    fn finished(mut self) {
        self.0.take();
    }
}

impl<M: deadpool::managed::Manager> Drop for Unfinished<M> {
    fn drop(&mut self) {
        if let Some(pooled) = self.0.take() {
            drop(deadpool::managed::Object::take(pooled));
        }
    }
}

/// Runs `$body` on a connection of `$pool`, taken out of the pool if the body does not finish
/// (see [`Unfinished`]).
macro_rules! until_finished {
    ($pool:expr, |$conn:ident| $body:expr) => {{
        let mut pooled = Unfinished(Some($pool.get().await?));
        let done: Result<_, StoreError> = async {
            let $conn = pooled.conn();
            $body
        }
        .await;
        pooled.finished();
        done
    }};
}

/// Runs `$body` with `$conn` bound to a pooled connection of whichever database is configured;
/// the body is compiled once per backend, so every query is checked against all three. On
/// SQLite, first in place, and again on the waiting writer if the file was locked.
macro_rules! with_conn {
    ($store:expr, |$conn:ident| $body:expr) => {
        match &*$store.pools {
            Pools::Sqlite(writers) => {
                // Reads that go through the writers (a few) let the pin go too: rarely enough.
                let _writing = $store.pin.as_ref().map(|pin| pin.writing());
                let first: Result<_, StoreError> = async {
                    let mut pooled = writers.in_place.get().await?;
                    let $conn = &mut *pooled;
                    $body
                }
                .await;
                match first {
                    Err(e) if e.is_busy() => until_finished!(writers.waiting, |$conn| $body),
                    done => done,
                }
            }
            Pools::Mysql(pool) => {
                again_if_victim!($store, until_finished!(pool, |$conn| $body))
            }
            Pools::Postgres(pool) => {
                again_if_victim!($store, until_finished!(pool, |$conn| $body))
            }
        }
    };
}

/// Runs `$attempt` again while the server picks it as a deadlock's victim: the whole
/// transaction was rolled back then, so it may run again as the SQLite writers' do (see
/// [`SqliteWriters`]). Deadlocks are rare here (a transaction takes a few rows, by key), but
/// two replicas' writes can still meet in one, and failing a platform's request for it would
/// leave to the platform a retry the broker can make.
macro_rules! again_if_victim {
    ($store:expr, $attempt:expr) => {{
        let mut lost = 0;
        loop {
            match $attempt {
                Err(e) if e.is_deadlock_victim() && lost < DEADLOCK_RETRIES => {
                    lost += 1;
                    $store.counters.deadlock_retries.inc();
                    tracing::warn!(
                        attempt = lost,
                        "the state store rolled a write back to end a deadlock; running it again"
                    );
                    // Apart, should the other side be a retry too.
                    tokio::time::sleep(Duration::from_millis(rand::random_range(1..20 << lost)))
                        .await;
                }
                done => break done,
            }
        }
    }};
}

/// How many times [`again_if_victim!`] runs a body again.
const DEADLOCK_RETRIES: u32 = 3;

/// Runs a statement that only reads, `$load($query)` (diesel's `get_result`, `first`...): on
/// SQLite, on a reader connection on the calling thread (see [`SqliteReaders`]); elsewhere as
/// [`with_conn!`] does. The query is built in each arm, for that arm's backend. A lookup by key
/// reads with `get_result`, not `first`: SQLite plans with a bound `LIMIT`'s value and so
/// prepares such a statement again at every execution (a read's largest cost, measured), and
/// a key finds one row at most.
macro_rules! read {
    ($store:expr, $load:ident($query:expr)) => {{
        let read: Result<diesel::QueryResult<_>, StoreError> = match &$store.readers {
            Some(pool) => {
                if let Some(pin) = &$store.pin {
                    pin.keep();
                }
                Ok(diesel::RunQueryDsl::$load($query, &mut *pool.get().await?))
            }
            None => with_conn!($store, |conn| Ok(diesel_async::RunQueryDsl::$load(
                $query, conn
            )
            .await)),
        };
        read?
    }};
}

/// The platform of each row of `$table` among `$ids`, keyed by id: a sweep asks for thousands
/// at once, so they go a few hundred to a statement, not one round trip each.
macro_rules! platforms_of {
    ($store:expr, $table:ident, $ids:expr) => {{
        let mut found = HashMap::with_capacity($ids.len());
        for keys in $ids.chunks(KEYS_PER_SWEEP_STATEMENT) {
            let rows: Vec<(String, String)> = read!(
                $store,
                load(
                    $table::table
                        .filter($table::id.eq_any(keys))
                        .select(($table::id, $table::platform))
                )
            )?;
            found.extend(rows);
        }
        Ok(found)
    }};
}

/// Keys in one statement of [`platforms_of!`]: far under every store's limit on bound
/// parameters (SQLite's is the lowest, 32,766).
const KEYS_PER_SWEEP_STATEMENT: usize = 500;

/// An instance and its facts, where `$filter` (on `osb_instances::id`) says.
macro_rules! instance_with_facts {
    ($filter:expr) => {
        osb_instances::table
            .left_join(
                osb_instance_facts::table.on(osb_instance_facts::instance_id.eq(osb_instances::id)),
            )
            .filter($filter)
            .select((
                ShownInstance::as_select(),
                (osb_instance_facts::facts, osb_instance_facts::measured_at).nullable(),
            ))
    };
}

/// An instance and its current operation, where `$filter` (on `osb_instances::id`) says.
macro_rules! instance_with_operation {
    ($filter:expr) => {
        osb_instances::table
            .left_join(osb_operations::table.on(osb_operations::id.eq(osb_instances::operation_id)))
            .filter($filter)
            .select((
                InstanceOwner::as_select(),
                Option::<OperationStatus>::as_select(),
            ))
    };
}

/// A binding and its current operation, where `$filter` (on `osb_bindings::id`) says.
macro_rules! binding_with_operation {
    ($filter:expr) => {
        osb_bindings::table
            .left_join(osb_operations::table.on(osb_operations::id.eq(osb_bindings::operation_id)))
            .filter($filter)
            .select((
                BindingOwner::as_select(),
                Option::<OperationStatus>::as_select(),
            ))
    };
}

/// A lookup by key that a network store runs for many keys at once (see [`batch`]): `$query`
/// selects the rows whose key is among `$keys`, and `$key` is a row's key.
macro_rules! batched {
    ($name:ident, $row:ty, |$r:ident| $key:expr, |$keys:ident| $query:expr) => {
        struct $name;

        impl batch::Lookup for $name {
            type Source = Store;
            type Row = $row;
            type Error = StoreError;

            fn key($r: &$row) -> &str {
                $key
            }

            async fn load(store: &Store, $keys: &[String]) -> Result<Vec<$row>, StoreError> {
                with_conn!(store, |conn| Ok(diesel_async::RunQueryDsl::load(
                    $query.cached(),
                    conn
                )
                .await?))
            }

            fn unavailable(why: &str) -> StoreError {
                StoreError::Unavailable(why.into())
            }

            fn retry_alone(error: &StoreError) -> bool {
                matches!(error, StoreError::Query(_))
            }

            fn copy(error: &StoreError) -> StoreError {
                error.copy()
            }
        }
    };
}

batched!(
    InstanceWithFacts,
    (ShownInstance, Option<(String, i64)>),
    |row| &row.0.id,
    |keys| instance_with_facts!(osb_instances::id.eq_any(keys))
);
batched!(
    InstanceWithOperation,
    (InstanceOwner, Option<OperationStatus>),
    |row| &row.0.id,
    |keys| instance_with_operation!(osb_instances::id.eq_any(keys))
);
batched!(
    BindingWithOperation,
    (BindingOwner, Option<OperationStatus>),
    |row| &row.0.id,
    |keys| binding_with_operation!(osb_bindings::id.eq_any(keys))
);
batched!(BindingById, BindingRow, |row| &row.id, |keys| {
    osb_bindings::table.filter(osb_bindings::id.eq_any(keys))
});
batched!(ShownBindingById, ShownBinding, |row| &row.id, |keys| {
    osb_bindings::table
        .filter(osb_bindings::id.eq_any(keys))
        .select(ShownBinding::as_select())
});
batched!(OperationById, OperationRow, |row| &row.id, |keys| {
    osb_operations::table.filter(osb_operations::id.eq_any(keys))
});

/// A network store's batched lookups, one queue per kind, and the runtime its connections
/// live on, where every statement goes out (see [`batch`]).
struct Batches {
    home: tokio::runtime::Handle,
    instance_with_facts: batch::Batcher<InstanceWithFacts>,
    instance_with_operation: batch::Batcher<InstanceWithOperation>,
    binding_with_operation: batch::Batcher<BindingWithOperation>,
    binding: batch::Batcher<BindingById>,
    shown_binding: batch::Batcher<ShownBindingById>,
    operation: batch::Batcher<OperationById>,
}

impl Batches {
    fn new(home: tokio::runtime::Handle) -> Self {
        Self {
            instance_with_facts: batch::Batcher::new(home.clone(), POOL_WAIT),
            instance_with_operation: batch::Batcher::new(home.clone(), POOL_WAIT),
            binding_with_operation: batch::Batcher::new(home.clone(), POOL_WAIT),
            binding: batch::Batcher::new(home.clone(), POOL_WAIT),
            shown_binding: batch::Batcher::new(home.clone(), POOL_WAIT),
            operation: batch::Batcher::new(home.clone(), POOL_WAIT),
            home,
        }
    }
}

/// Milliseconds since the Unix epoch, the store's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The outcome of a fenced write: `false` when its fence rolled the transaction back.
fn landed(result: Result<(), StoreError>) -> Result<bool, StoreError> {
    match result {
        Ok(()) => Ok(true),
        Err(StoreError::Query(DieselError::RollbackTransaction)) => Ok(false),
        Err(e) => Err(e),
    }
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
        let mut store = Self::pools(url, pool_size, true)?;
        store.migrate().await?;
        store.check_wal().await?;
        if let Some(path) = url.strip_prefix("sqlite://") {
            // Only a store that serves: a command's reads are too few to gain by it.
            store.pin = read_pin::ReadPin::open(path)
                .await
                .inspect_err(
                    |e| tracing::warn!(error = %e, "SQLite reads go without a pinned read mark"),
                )
                .ok();
        }
        Ok(store)
    }

    /// A SQLite store must be in WAL mode: its readers run in place and must never wait for
    /// the writer. A file system without shared memory leaves the file in another mode,
    /// silently; the broker refuses to start on it instead.
    async fn check_wal(&self) -> Result<(), StoreError> {
        #[derive(QueryableByName)]
        struct JournalMode {
            #[diesel(sql_type = diesel::sql_types::Text)]
            journal_mode: String,
        }
        let Pools::Sqlite(writers) = &*self.pools else {
            return Ok(());
        };
        let mut conn = writers.in_place.get().await?;
        let mode: JournalMode = diesel::sql_query("PRAGMA journal_mode")
            .get_result(&mut *conn)
            .await?;
        if !mode.journal_mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "the SQLite state store is in journal mode {:?}, not WAL (its file system has no shared memory?): put it on a local file system",
                mode.journal_mode
            )));
        }
        Ok(())
    }

    /// Opens a store that a broker has already set up, changing nothing: no file is made, no
    /// migration runs, and a store without the broker's tables is refused. For commands that
    /// judge the backend by the store (a wrong path must not look like an empty store).
    pub async fn open_existing(url: &str) -> Result<Self, StoreError> {
        let store = Self::pools(url, 2, false)?;
        store.count_instances().await.map_err(|e| match e {
            // Reached, but the query failed: the tables are not there.
            StoreError::Query(e) => StoreError::NotSetUp(format!(
                "the state store has no broker tables (is the store url right?): {e}"
            )),
            other => other,
        })?;
        Ok(store)
    }

    /// How many instances the store holds.
    pub async fn count_instances(&self) -> Result<i64, StoreError> {
        with_conn!(self, |conn| Ok(osb_instances::table
            .count()
            .get_result::<i64>(conn)
            .await?))
    }

    fn pools(url: &str, pool_size: usize, create: bool) -> Result<Self, StoreError> {
        let counters = StoreCounters::new();
        let pools = if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() || path.contains(":memory:") {
                return Err(StoreError::BadUrl(
                    "sqlite:// without a file path; an in-memory store would not survive a restart"
                        .into(),
                ));
            }
            sqlite_library::configure();
            if create {
                private_file(std::path::Path::new(path))?;
            } else if !std::path::Path::new(path).exists() {
                return Err(StoreError::NotSetUp(format!(
                    "the SQLite state store {path} does not exist"
                )));
            }
            // A file does not drop connections: no `SELECT 1` before every use (the default
            // check doubled the statements of a read). WAL lets readers run beside the writers.
            // Its setup waits for the file like the waiting writer's (once, when connecting);
            // its writes then give up at once.
            let in_place = manager(
                path,
                &counters,
                true,
                RecyclingMethod::Fast,
                "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 0;",
            );
            let waiting = manager(
                path,
                &counters,
                true,
                RecyclingMethod::Fast,
                "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;",
            );
            // Writes queued for the waiting writer may wait out the lock (10 s) in turn.
            let wait = Duration::from_secs(30);
            Pools::Sqlite(SqliteWriters {
                in_place: build_pool(in_place, 1, wait, false)?,
                waiting: build_pool(waiting, 1, wait, false)?,
            })
        } else if url.starts_with("mysql://") {
            // Errors in English whatever the server's `lc_messages`: a deadlock is known by
            // its message alone (see `StoreError::is_deadlock_victim`).
            let manager = manager(
                url,
                &counters,
                true,
                RecyclingMethod::Verified,
                "SET SESSION lc_messages = 'en_US'",
            );
            Pools::Mysql(build_pool(manager, pool_size, POOL_WAIT, true)?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let manager = manager(url, &counters, true, RecyclingMethod::Verified, "");
            Pools::Postgres(build_pool(manager, pool_size, POOL_WAIT, false)?)
        } else {
            return Err(StoreError::BadUrl(match url.split_once("://") {
                Some((scheme, _)) if scheme.chars().all(|c| c.is_ascii_alphanumeric()) => {
                    format!("a url of scheme {scheme:?}")
                }
                _ => "a value that is not a url".into(),
            }));
        };
        let readers = match (&pools, url.strip_prefix("sqlite://")) {
            (Pools::Sqlite(_), Some(path)) => {
                let manager = SqliteReaders {
                    path: path.to_owned(),
                    counters: counters.clone(),
                };
                Some(std::sync::Arc::new(pool(manager, pool_size, POOL_WAIT)?))
            }
            _ => None,
        };
        let batches = match readers {
            Some(_) => None,
            None => Some(std::sync::Arc::new(Batches::new(
                tokio::runtime::Handle::try_current().map_err(|e| {
                    StoreError::Unavailable(format!("a network store needs a Tokio runtime: {e}"))
                })?,
            ))),
        };
        Ok(Self {
            pools: std::sync::Arc::new(pools),
            readers,
            batches,
            pin: None,
            counters,
        })
    }

    /// What this store's connections have sent.
    pub fn counters(&self) -> &StoreCounters {
        &self.counters
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
                Pools::Sqlite(w) => run_migrations(w.waiting.get().await?),
                Pools::Mysql(p) => match run_migrations(p.get().await?) {
                    Ok(()) => run_migrations_from(p.get().await?, MYSQL_MIGRATIONS),
                    failed => failed,
                },
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

    pub async fn instance(&self, id: &str) -> Result<Option<InstanceRow>, StoreError> {
        Ok(read!(self, get_result(osb_instances::table.find(id))).optional()?)
    }

    /// What `GET` shows of an instance, and what upkeep last measured of it (its facts and
    /// when), in one read.
    pub async fn instance_with_facts(
        &self,
        id: &str,
    ) -> Result<Option<(ShownInstance, Option<(String, i64)>)>, StoreError> {
        match &self.batches {
            Some(batches) => batches.instance_with_facts.get(self, id).await,
            None => Ok(read!(
                self,
                get_result(instance_with_facts!(osb_instances::id.eq(id)))
            )
            .optional()?),
        }
    }

    /// Whose an instance is, and the operation it is on, in one read.
    pub async fn instance_with_operation(
        &self,
        id: &str,
    ) -> Result<Option<(InstanceOwner, Option<OperationStatus>)>, StoreError> {
        match &self.batches {
            Some(batches) => batches.instance_with_operation.get(self, id).await,
            None => Ok(read!(
                self,
                get_result(instance_with_operation!(osb_instances::id.eq(id)))
            )
            .optional()?),
        }
    }

    /// Whose a binding is, and the operation it is on, in one read.
    pub async fn binding_with_operation(
        &self,
        id: &str,
    ) -> Result<Option<(BindingOwner, Option<OperationStatus>)>, StoreError> {
        match &self.batches {
            Some(batches) => batches.binding_with_operation.get(self, id).await,
            None => Ok(read!(
                self,
                get_result(binding_with_operation!(osb_bindings::id.eq(id)))
            )
            .optional()?),
        }
    }

    pub async fn binding(&self, id: &str) -> Result<Option<BindingRow>, StoreError> {
        match &self.batches {
            Some(batches) => batches.binding.get(self, id).await,
            None => Ok(read!(self, get_result(osb_bindings::table.find(id))).optional()?),
        }
    }

    /// What `GET` shows of a binding.
    pub async fn shown_binding(&self, id: &str) -> Result<Option<ShownBinding>, StoreError> {
        match &self.batches {
            Some(batches) => batches.shown_binding.get(self, id).await,
            None => Ok(read!(
                self,
                get_result(
                    osb_bindings::table
                        .find(id)
                        .select(ShownBinding::as_select())
                )
            )
            .optional()?),
        }
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
        let busy = BindingState::BUSY.map(BindingState::as_str);
        with_conn!(self, |conn| Ok(dsl::osb_bindings
            .filter(dsl::instance_id.eq(instance_id))
            .filter(dsl::state.eq_any(busy))
            .count()
            .cached()
            .get_result::<i64>(conn)
            .await?
            > 0))
    }

    pub async fn operation(&self, id: &str) -> Result<Option<OperationRow>, StoreError> {
        match &self.batches {
            Some(batches) => batches.operation.get(self, id).await,
            None => Ok(read!(self, get_result(osb_operations::table.find(id))).optional()?),
        }
    }

    /// The newest operation on an instance (`binding_id: None`) or on one of its bindings.
    /// Like every read `GET` and `last_operation` make, it may be asked from any thread and
    /// dropped half way: on a network store it runs on the store's home runtime.
    pub async fn latest_operation(
        &self,
        instance_id: &str,
        binding_id: Option<&str>,
    ) -> Result<Option<OperationRow>, StoreError> {
        let Some(batches) = &self.batches else {
            return self.latest_operation_here(instance_id, binding_id).await;
        };
        let (store, instance_id) = (self.clone(), instance_id.to_owned());
        let binding_id = binding_id.map(str::to_owned);
        batches
            .home
            .spawn(async move {
                store
                    .latest_operation_here(&instance_id, binding_id.as_deref())
                    .await
            })
            .await
            .map_err(|e| StoreError::Unavailable(batch::lost(&e).into()))?
    }

    async fn latest_operation_here(
        &self,
        instance_id: &str,
        binding_id: Option<&str>,
    ) -> Result<Option<OperationRow>, StoreError> {
        use osb_operations::dsl;
        Ok(read!(
            self,
            first({
                let query = dsl::osb_operations
                    .filter(dsl::instance_id.eq(instance_id))
                    .order((dsl::created_at.desc(), dsl::id.desc()))
                    .into_boxed();
                match binding_id {
                    Some(b) => query.filter(dsl::binding_id.eq(b)),
                    None => query.filter(dsl::binding_id.is_null()),
                }
            })
        )
        .optional()?)
    }

    /// Records operation `op` and makes or claims its instance or binding as `start` says, in
    /// one transaction (one commit, and never a record without its row); `false`, with nothing
    /// written, when the row exists already or is not in a state it may be claimed from.
    pub async fn start(&self, op: &OperationRow, start: Start<'_>) -> Result<bool, StoreError> {
        if !start.is_named_by(op) {
            return Err(StoreError::Corrupt(format!(
                "operation {} names another row than the one it starts",
                op.id
            )));
        }
        let result = with_conn!(self, |conn| {
            conn.transaction::<_, DieselError, _>(|conn| {
                async move {
                    diesel::insert_into(osb_operations::table)
                        .values(op)
                        .cached().execute(conn)
                        .await?;
                    let now = now_ms();
                    let made = match start {
                        Start::NewInstance(row) => diesel::insert_into(osb_instances::table)
                            .values(row)
                            .cached().execute(conn)
                            .await,
                        Start::NewBinding(row) => diesel::insert_into(osb_bindings::table)
                            .values(row)
                            .cached().execute(conn)
                            .await,
                        Start::Instance {
                            id,
                            from,
                            to,
                            previous,
                        } => {
                            use osb_instances::dsl;
                            let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
                            diesel::update(
                                dsl::osb_instances
                                    .filter(dsl::id.eq(id))
                                    .filter(dsl::state.eq_any(&from))
                                    .filter(dsl::operation_id.eq(previous)),
                            )
                            .set((
                                dsl::state.eq(to.as_str()),
                                dsl::operation_id.eq(&op.id),
                                dsl::updated_at.eq(now),
                            ))
                            .cached().execute(conn)
                            .await
                        }
                        Start::Binding {
                            id,
                            from,
                            to,
                            previous,
                        } => {
                            use osb_bindings::dsl;
                            let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
                            diesel::update(
                                dsl::osb_bindings
                                    .filter(dsl::id.eq(id))
                                    .filter(dsl::state.eq_any(&from))
                                    .filter(dsl::operation_id.eq(previous)),
                            )
                            .set((
                                dsl::state.eq(to.as_str()),
                                dsl::operation_id.eq(&op.id),
                                dsl::updated_at.eq(now),
                            ))
                            .cached().execute(conn)
                            .await
                        }
                    };
                    match made {
                        Ok(1) => Ok(()),
                        Ok(_)
                        | Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
                            Err(DieselError::RollbackTransaction)
                        }
                        Err(e) => Err(e),
                    }
                }
                .scope_boxed()
            })
            .await
            .map_err(StoreError::from)
        });
        landed(result)
    }

    /// Ends operation `op` as failed and puts its row back as `release` says, in one
    /// transaction. Fenced like [`Store::succeed`]: `false`, with nothing written, once `op` is no
    /// longer in progress or no longer the row's operation.
    pub async fn fail(
        &self,
        op: &str,
        runner: &str,
        release: Release<'_>,
        description: &str,
        instance_usable: Option<bool>,
        update_repeatable: Option<bool>,
    ) -> Result<bool, StoreError> {
        use osb_operations::dsl;
        let result = with_conn!(self, |conn| {
            conn.transaction::<_, DieselError, _>(|conn| {
                async move {
                    let ended = diesel::update(
                        dsl::osb_operations
                            .filter(dsl::id.eq(op))
                            .filter(dsl::runner.eq(runner))
                            .filter(dsl::state.eq(OperationState::InProgress.as_str())),
                    )
                    .set((
                        dsl::state.eq(OperationState::Failed.as_str()),
                        dsl::description.eq(description),
                        dsl::instance_usable.eq(instance_usable),
                        dsl::update_repeatable.eq(update_repeatable),
                        dsl::updated_at.eq(now_ms()),
                    ))
                    .cached()
                    .execute(conn)
                    .await?;
                    let released = match release {
                        Release::Instance(id, to) => {
                            diesel::update(
                                osb_instances::table
                                    .find(id)
                                    .filter(osb_instances::operation_id.eq(op)),
                            )
                            .set((
                                osb_instances::state.eq(to.as_str()),
                                osb_instances::updated_at.eq(now_ms()),
                            ))
                            .cached()
                            .execute(conn)
                            .await?
                        }
                        Release::Binding(id, to) => {
                            diesel::update(
                                osb_bindings::table
                                    .find(id)
                                    .filter(osb_bindings::operation_id.eq(op)),
                            )
                            .set((
                                osb_bindings::state.eq(to.as_str()),
                                osb_bindings::updated_at.eq(now_ms()),
                            ))
                            .cached()
                            .execute(conn)
                            .await?
                        }
                    };
                    if ended != 1 || released != 1 {
                        return Err(DieselError::RollbackTransaction);
                    }
                    Ok(())
                }
                .scope_boxed()
            })
            .await
            .map_err(StoreError::from)
        });
        landed(result)
    }

    /// Ends operation `op` as succeeded and writes what it changed, in one transaction, so that
    /// `last_operation` and the rows never disagree. Fenced: `false`, with nothing written, when
    /// `op` is no longer the row's operation or no longer in progress (it was reaped and another
    /// operation took the row over).
    pub async fn succeed(
        &self,
        op: &str,
        runner: &str,
        outcome: Outcome<'_>,
    ) -> Result<bool, StoreError> {
        self.fenced(op, runner, End::Succeeded, outcome).await
    }

    /// Ends operation `op` as failed and removes the row it made (a failure that left nothing
    /// behind), together with the operation record itself: a request that changed nothing
    /// leaves nothing in the store. Fenced like [`Store::succeed`].
    pub async fn discard(
        &self,
        op: &str,
        runner: &str,
        outcome: Outcome<'_>,
    ) -> Result<bool, StoreError> {
        self.fenced(op, runner, End::Discarded, outcome).await
    }

    async fn fenced(
        &self,
        op: &str,
        runner: &str,
        end: End,
        outcome: Outcome<'_>,
    ) -> Result<bool, StoreError> {
        use osb_operations::dsl;
        let saved = match outcome {
            Outcome::SaveInstance(row) => Some(&row.operation_id),
            Outcome::SaveBinding(row) => Some(&row.operation_id),
            Outcome::DeleteInstance(_) | Outcome::DeleteBinding(_) => None,
        };
        // As in `start`: a row points only to operations of its own.
        if saved.is_some_and(|saved| saved != op) {
            return Err(StoreError::Corrupt(format!(
                "operation {op} ends saving its row on another operation"
            )));
        }
        let result = with_conn!(self, |conn| {
            conn.transaction::<_, DieselError, _>(|conn| {
                async move {
                    let rows = match outcome {
                        Outcome::SaveInstance(row) => {
                            diesel::update(
                                osb_instances::table
                                    .find(&row.id)
                                    .filter(osb_instances::operation_id.eq(op)),
                            )
                            .set(row)
                            .cached()
                            .execute(conn)
                            .await?
                        }
                        Outcome::DeleteInstance(id) => {
                            let n = diesel::delete(
                                osb_instances::table
                                    .find(id)
                                    .filter(osb_instances::operation_id.eq(op)),
                            )
                            .execute(conn)
                            .await?;
                            if n == 1 {
                                diesel::delete(
                                    osb_bindings::table.filter(osb_bindings::instance_id.eq(id)),
                                )
                                .execute(conn)
                                .await?;
                                diesel::delete(osb_instance_facts::table.find(id))
                                    .execute(conn)
                                    .await?;
                            }
                            n
                        }
                        Outcome::SaveBinding(row) => {
                            diesel::update(
                                osb_bindings::table
                                    .find(&row.id)
                                    .filter(osb_bindings::operation_id.eq(op)),
                            )
                            .set(row)
                            .cached()
                            .execute(conn)
                            .await?
                        }
                        Outcome::DeleteBinding(id) => {
                            diesel::delete(
                                osb_bindings::table
                                    .find(id)
                                    .filter(osb_bindings::operation_id.eq(op)),
                            )
                            .execute(conn)
                            .await?
                        }
                    };
                    let ended = match end {
                        End::Succeeded => {
                            diesel::update(
                                dsl::osb_operations
                                    .filter(dsl::id.eq(op))
                                    .filter(dsl::runner.eq(runner))
                                    .filter(dsl::state.eq(OperationState::InProgress.as_str())),
                            )
                            .set((
                                dsl::state.eq(OperationState::Succeeded.as_str()),
                                dsl::updated_at.eq(now_ms()),
                            ))
                            .cached()
                            .execute(conn)
                            .await?
                        }
                        End::Discarded => {
                            diesel::delete(
                                dsl::osb_operations
                                    .filter(dsl::id.eq(op))
                                    .filter(dsl::runner.eq(runner))
                                    .filter(dsl::state.eq(OperationState::InProgress.as_str())),
                            )
                            .execute(conn)
                            .await?
                        }
                    };
                    if rows != 1 || ended != 1 {
                        return Err(DieselError::RollbackTransaction);
                    }
                    Ok(())
                }
                .scope_boxed()
            })
            .await
            .map_err(StoreError::from)
        });
        landed(result)
    }

    /// Deletes finished operations last changed before `before_ms` that no instance or binding
    /// points to (the newest operation of every existing row stays, for `last_operation`), and
    /// none of a row that an operation holds (a claim given back points the row to its previous
    /// operation again, which must still be there).
    pub async fn prune_operations(&self, before_ms: i64) -> Result<usize, StoreError> {
        // One statement, so that no row can come to point at an operation between choosing it
        // and deleting it. `before_ms` is a number this process computed, and the states are
        // the code's own words: nothing here is input. Only the row an operation names can
        // point to it ([`Store::start`] and the final writes refuse anything else), so each
        // check is a lookup by primary key: matched on `operation_id` alone, which has no
        // index, MariaDB read both tables whole for every record (106 s for 10,000 instances
        // and 10,000 bindings, measured, every pass holding the records' locks). A row is held
        // exactly while it is in a busy state, which says so without reading the operations
        // table again (MySQL refuses a `DELETE` whose subquery reads its own table).
        let listed = |states: &[&str]| {
            states
                .iter()
                .map(|s| format!("'{s}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let busy_instance = listed(&InstanceState::BUSY.map(InstanceState::as_str));
        let busy_binding = listed(&BindingState::BUSY.map(BindingState::as_str));
        let sql = format!(
            "DELETE FROM osb_operations WHERE state <> '{}' AND updated_at < {before_ms} \
             AND NOT EXISTS (SELECT 1 FROM osb_instances i \
                 WHERE i.id = osb_operations.instance_id \
                 AND (i.operation_id = osb_operations.id OR i.state IN ({busy_instance}))) \
             AND NOT EXISTS (SELECT 1 FROM osb_bindings b \
                 WHERE b.id = osb_operations.binding_id \
                 AND (b.operation_id = osb_operations.id OR b.state IN ({busy_binding})))",
            OperationState::InProgress.as_str()
        );
        with_conn!(self, |conn| Ok(diesel::sql_query(sql.as_str())
            .execute(conn)
            .await?))
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
        with_conn!(self, |conn| {
            // Read on each attempt: one may run again after waiting (see `with_conn!`).
            let now = now_ms();
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
            .cached()
            .execute(conn)
            .await?
                == 1)
        })
    }

    /// Gives lease `name` up if `owner` still holds it.
    pub async fn release_lease(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        use osb_leases::dsl;
        with_conn!(self, |conn| {
            diesel::delete(
                dsl::osb_leases
                    .filter(dsl::name.eq(name))
                    .filter(dsl::owner.eq(owner)),
            )
            .execute(conn)
            .await?;
            Ok(())
        })
    }

    /// Claims `item` of `pool` for (`platform`, `owner_id`) unless another owner holds it;
    /// `true` when this owner holds it now (already held included).
    pub async fn claim_item(
        &self,
        pool: &str,
        item: &str,
        platform: &str,
        owner_id: &str,
    ) -> Result<bool, StoreError> {
        use osb_claims::dsl;
        with_conn!(self, |conn| {
            // Read on each attempt: one may run again after waiting (see `with_conn!`).
            let now = now_ms();
            let taken = inserted(
                diesel::insert_into(dsl::osb_claims)
                    .values((
                        dsl::pool.eq(pool),
                        dsl::item.eq(item),
                        dsl::platform.eq(platform),
                        dsl::owner_id.eq(owner_id),
                        dsl::claimed_at.eq(now),
                    ))
                    .execute(conn)
                    .await,
            )?;
            if taken {
                return Ok(true);
            }
            Ok(dsl::osb_claims
                .filter(dsl::pool.eq(pool))
                .filter(dsl::item.eq(item))
                .filter(dsl::platform.eq(platform))
                .filter(dsl::owner_id.eq(owner_id))
                .count()
                .get_result::<i64>(conn)
                .await?
                > 0)
        })
    }

    /// Every claim in `pool`: item, platform, owner id and when it was claimed (Unix ms), by
    /// item.
    pub async fn claims_in(
        &self,
        pool: &str,
    ) -> Result<Vec<(String, String, String, i64)>, StoreError> {
        use osb_claims::dsl;
        with_conn!(self, |conn| Ok(dsl::osb_claims
            .filter(dsl::pool.eq(pool))
            .select((dsl::item, dsl::platform, dsl::owner_id, dsl::claimed_at))
            .order(dsl::item)
            .load(conn)
            .await?))
    }

    /// The item of `pool` (`platform`, `owner_id`) holds, if any.
    pub async fn item_held_by(
        &self,
        pool: &str,
        platform: &str,
        owner_id: &str,
    ) -> Result<Option<String>, StoreError> {
        use osb_claims::dsl;
        with_conn!(self, |conn| Ok(dsl::osb_claims
            .filter(dsl::pool.eq(pool))
            .filter(dsl::platform.eq(platform))
            .filter(dsl::owner_id.eq(owner_id))
            .select(dsl::item)
            .first::<String>(conn)
            .await
            .optional()?))
    }

    /// Gives `item` of `pool` back if (`platform`, `owner_id`) holds it.
    pub async fn release_item(
        &self,
        pool: &str,
        item: &str,
        platform: &str,
        owner_id: &str,
    ) -> Result<(), StoreError> {
        use osb_claims::dsl;
        with_conn!(self, |conn| {
            diesel::delete(
                dsl::osb_claims
                    .filter(dsl::pool.eq(pool))
                    .filter(dsl::item.eq(item))
                    .filter(dsl::platform.eq(platform))
                    .filter(dsl::owner_id.eq(owner_id)),
            )
            .execute(conn)
            .await?;
            Ok(())
        })
    }

    /// Keeps what upkeep measured of each instance (JSON, and when, in Unix ms), or forgets it
    /// (`None`: it measures nothing any more), all in one transaction: a pass writes a few
    /// commits, not one per instance. Never for an instance deleted meanwhile: a reused id
    /// would show its figures. Should two passes race (a lease that moved), the later insert
    /// fails the whole batch; the next pass writes it again.
    pub async fn keep_facts(
        &self,
        facts: &[(String, Option<(String, i64)>)],
    ) -> Result<(), StoreError> {
        use osb_instance_facts::dsl;
        with_conn!(self, |conn| {
            conn.transaction::<_, DieselError, _>(|conn| {
                async move {
                    for (instance_id, kept) in facts {
                        let Some((facts, measured_at)) = kept else {
                            diesel::delete(dsl::osb_instance_facts.find(instance_id))
                                .execute(conn)
                                .await?;
                            continue;
                        };
                        let updated = diesel::update(dsl::osb_instance_facts.find(instance_id))
                            .set((dsl::facts.eq(facts), dsl::measured_at.eq(measured_at)))
                            .cached()
                            .execute(conn)
                            .await?;
                        if updated == 0
                            && osb_instances::table
                                .find(instance_id)
                                .count()
                                .get_result::<i64>(conn)
                                .await?
                                > 0
                        {
                            diesel::insert_into(dsl::osb_instance_facts)
                                .values((
                                    dsl::instance_id.eq(instance_id),
                                    dsl::facts.eq(facts),
                                    dsl::measured_at.eq(measured_at),
                                ))
                                .execute(conn)
                                .await?;
                        }
                    }
                    Ok(())
                }
                .scope_boxed()
            })
            .await?;
            Ok(())
        })
    }

    /// Since when the catalog with entity tag `etag` has been served (Unix ms): its
    /// `Last-Modified`, agreed on by every replica of this store. It only moves forward: a
    /// catalog served again after another one counts from now.
    pub async fn catalog_first_served(&self, etag: &str) -> Result<i64, StoreError> {
        use osb_catalogs::dsl;
        with_conn!(self, |conn| {
            let latest: Option<(String, i64)> = dsl::osb_catalogs
                .select((dsl::etag, dsl::first_served))
                .order(dsl::first_served.desc())
                .first(conn)
                .await
                .optional()?;
            if let Some((current, since)) = latest
                && current == etag
            {
                return Ok(since);
            }
            let now = now_ms();
            let updated = diesel::update(dsl::osb_catalogs.find(etag))
                .set(dsl::first_served.eq(now))
                .cached()
                .execute(conn)
                .await?;
            if updated == 0 {
                inserted(
                    diesel::insert_into(dsl::osb_catalogs)
                        .values((dsl::etag.eq(etag), dsl::first_served.eq(now)))
                        .execute(conn)
                        .await,
                )?;
            }
            Ok(now)
        })
    }

    /// Marks operations this process (`runner`) is still running as alive.
    pub async fn heartbeat(&self, ids: &[String], runner: &str) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        use osb_operations::dsl;
        with_conn!(self, |conn| {
            diesel::update(
                dsl::osb_operations
                    .filter(dsl::id.eq_any(ids))
                    .filter(dsl::runner.eq(runner)),
            )
            .set(dsl::heartbeat_at.eq(now_ms()))
            .execute(conn)
            .await?;
            Ok(())
        })
    }

    /// Operations still "in progress" whose runner has not sent a heartbeat since `before_ms`,
    /// the longest silent first, leaving out `except`'s (a runner's own).
    pub async fn stale_operations(
        &self,
        before_ms: i64,
        except: &str,
    ) -> Result<Vec<OperationRow>, StoreError> {
        use osb_operations::dsl;
        with_conn!(self, |conn| Ok(dsl::osb_operations
            .filter(dsl::state.eq(OperationState::InProgress.as_str()))
            .filter(dsl::heartbeat_at.lt(before_ms))
            .filter(dsl::runner.ne(except))
            .order(dsl::heartbeat_at.asc())
            .limit(100)
            .load::<OperationRow>(conn)
            .await?))
    }

    /// Ends operation `op` as failed without touching any row: for an operation whose rows
    /// are gone. Fenced on its runner.
    pub async fn fail_record(
        &self,
        op: &str,
        runner: &str,
        description: &str,
    ) -> Result<bool, StoreError> {
        use osb_operations::dsl;
        with_conn!(self, |conn| Ok(diesel::update(
            dsl::osb_operations
                .filter(dsl::id.eq(op))
                .filter(dsl::runner.eq(runner))
                .filter(dsl::state.eq(OperationState::InProgress.as_str()))
        )
        .set((
            dsl::state.eq(OperationState::Failed.as_str()),
            dsl::description.eq(description),
            dsl::updated_at.eq(now_ms()),
        ))
        .cached()
        .execute(conn)
        .await?
            == 1))
    }

    /// Operations still "in progress" that replica `owner` started: after a restart, its own
    /// unfinished work.
    pub async fn unfinished_of(&self, owner: &str) -> Result<Vec<OperationRow>, StoreError> {
        use osb_operations::dsl;
        with_conn!(self, |conn| Ok(dsl::osb_operations
            .filter(dsl::state.eq(OperationState::InProgress.as_str()))
            .filter(dsl::owner.eq(owner))
            .load::<OperationRow>(conn)
            .await?))
    }

    /// Makes process `runner` of replica `owner` the runner of `op` if it is still in progress
    /// under `previous` (the runner that stopped) with the heartbeat `seen` when it was judged
    /// stopped (a heartbeat since means it lives): one taker wins, and the previous runner can
    /// no longer write its end.
    pub async fn take_over(
        &self,
        op: &str,
        previous: &str,
        seen: i64,
        owner: &str,
        runner: &str,
    ) -> Result<bool, StoreError> {
        use osb_operations::dsl;
        with_conn!(self, |conn| Ok(diesel::update(
            dsl::osb_operations
                .filter(dsl::id.eq(op))
                .filter(dsl::runner.eq(previous))
                .filter(dsl::heartbeat_at.eq(seen))
                .filter(dsl::state.eq(OperationState::InProgress.as_str()))
        )
        .set((
            dsl::owner.eq(owner),
            dsl::runner.eq(runner),
            dsl::heartbeat_at.eq(now_ms()),
        ))
        .cached()
        .execute(conn)
        .await?
            == 1))
    }
}

/// Makes the SQLite file readable by its owner only (sealed credentials or not, the store
/// says what exists for whom), and its directory too when the broker creates it. SQLite gives
/// the `-wal` and `-shm` files the database file's mode.
fn private_file(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let failed = |what: &str, e: std::io::Error| {
        StoreError::Unavailable(format!("{what} {}: {e}", path.display()))
    };
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| failed("cannot create the directory of", e))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| failed("cannot open", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| failed("cannot restrict the permissions of", e))
}

type Pool<C> = deadpool::managed::Pool<Checked<C>>;

/// Connections to `url` that run `setup` when made and count into `counters` (commits too
/// when `writer`).
fn manager<C>(
    url: &str,
    counters: &StoreCounters,
    writer: bool,
    recycling: RecyclingMethod<C>,
    setup: &'static str,
) -> AsyncDieselConnectionManager<C>
where
    C: AsyncConnection + SimpleAsyncConnection + Send + 'static,
{
    let mut config = ManagerConfig::<C>::default();
    config.recycling_method = recycling;
    let counters = counters.clone();
    config.custom_setup = Box::new(move |url| {
        let counters = counters.clone();
        async move {
            let mut conn = C::establish(url).await?;
            if !setup.is_empty() {
                conn.batch_execute(setup)
                    .await
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            }
            conn.set_instrumentation(counting::Counting::new(counters, writer));
            Ok(conn)
        }
        .boxed()
    });
    AsyncDieselConnectionManager::new_with_config(url, config)
}

/// A connection used this recently goes out as it is (unless it knows itself broken).
const FRESH: Duration = Duration::from_secs(1);

/// The pool's manager: a connection idle past [`FRESH`], or one whose last statements failed,
/// is checked as its [`RecyclingMethod`] says (a round trip on a network store, so a server
/// restarted under the pool fails no request); a busy pool's connections are not, as that
/// check on every checkout doubled a read's round trips. A server restarted within a second
/// of a connection's use fails the one request that finds the connection dead.
struct Checked<C: 'static> {
    manager: AsyncDieselConnectionManager<C>,
    /// MySQL's: a connection whose server ended it does not say it is broken, only its
    /// statements fail (PostgreSQL's does; a SQLite file drops none, and asking a SQLite or
    /// PostgreSQL connection for its instrumentation panics while a statement is in flight).
    watch_failures: bool,
}

/// How long a request waits for a pooled connection.
const POOL_WAIT: Duration = Duration::from_secs(10);

impl<C> deadpool::managed::Manager for Checked<C>
where
    C: PoolableConnection + Send + 'static,
    diesel::dsl::select<diesel::dsl::AsExprOf<i32, diesel::sql_types::Integer>>:
        diesel_async::methods::ExecuteDsl<C>,
    diesel::query_builder::SqlQuery: diesel::query_builder::QueryFragment<C::Backend>,
{
    type Type = C;
    type Error = diesel_async::pooled_connection::PoolError;

    async fn create(&self) -> Result<C, Self::Error> {
        self.manager.create().await
    }

    async fn recycle(
        &self,
        conn: &mut C,
        metrics: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Self::Error> {
        let failed = self.watch_failures
            && conn
                .instrumentation()
                .downcast_mut::<counting::Counting>()
                .is_none_or(counting::Counting::take_failed);
        if metrics.last_used() < FRESH && !failed && !conn.is_broken() && !std::thread::panicking()
        {
            return Ok(());
        }
        self.manager.recycle(conn, metrics).await
    }
}

fn build_pool<C>(
    manager: AsyncDieselConnectionManager<C>,
    size: usize,
    wait: Duration,
    watch_failures: bool,
) -> Result<Pool<C>, StoreError>
where
    C: PoolableConnection + 'static,
    diesel::dsl::select<diesel::dsl::AsExprOf<i32, diesel::sql_types::Integer>>:
        diesel_async::methods::ExecuteDsl<C>,
    diesel::query_builder::SqlQuery: diesel::query_builder::QueryFragment<C::Backend>,
{
    pool(
        Checked {
            manager,
            watch_failures,
        },
        size,
        wait,
    )
}

/// A pool of at most `size` connections, a request waiting `wait` for one.
fn pool<M: deadpool::managed::Manager>(
    manager: M,
    size: usize,
    wait: Duration,
) -> Result<deadpool::managed::Pool<M>, StoreError> {
    deadpool::managed::Pool::builder(manager)
        .max_size(size.max(1))
        .wait_timeout(Some(wait))
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
    run_migrations_from(conn, MIGRATIONS)
}

fn run_migrations_from<C>(conn: C, migrations: EmbeddedMigrations) -> Result<(), StoreError>
where
    C: AsyncConnection + 'static,
    AsyncMigrationHarness<C>: MigrationHarness<C::Backend>,
{
    let mut harness = AsyncMigrationHarness::new(conn);
    harness
        .run_pending_migrations(migrations)
        .map(|_| ())
        .map_err(|e| StoreError::Migration(e.to_string()))
}

impl Store {
    /// Undoes a claim that turned out not to be allowed: the row goes back to the state
    /// `release` names and to its `previous` operation (which `last_operation` keeps reporting),
    /// and `op`'s record goes. Fenced like [`Store::succeed`]: `false`, with nothing written,
    /// once `op` is no longer in progress under `runner` (a request that stalled past the lease:
    /// recovery took the operation over or ended it, and the row is recovery's).
    pub async fn unclaim(
        &self,
        op: &str,
        runner: &str,
        release: Release<'_>,
        previous: &str,
    ) -> Result<bool, StoreError> {
        let result = with_conn!(self, |conn| {
            conn.transaction::<_, DieselError, _>(|conn| {
                async move {
                    use osb_operations::dsl;
                    let ended = diesel::delete(
                        dsl::osb_operations
                            .find(op)
                            .filter(dsl::state.eq(OperationState::InProgress.as_str()))
                            .filter(dsl::runner.eq(runner)),
                    )
                    .execute(conn)
                    .await?;
                    if ended == 0 {
                        return Err(DieselError::RollbackTransaction);
                    }
                    match release {
                        Release::Instance(id, to) => {
                            use osb_instances::dsl;
                            diesel::update(
                                dsl::osb_instances
                                    .filter(dsl::id.eq(id))
                                    .filter(dsl::operation_id.eq(op)),
                            )
                            .set((
                                dsl::state.eq(to.as_str()),
                                dsl::operation_id.eq(previous),
                                dsl::updated_at.eq(now_ms()),
                            ))
                            .cached()
                            .execute(conn)
                            .await?
                        }
                        Release::Binding(id, to) => {
                            use osb_bindings::dsl;
                            diesel::update(
                                dsl::osb_bindings
                                    .filter(dsl::id.eq(id))
                                    .filter(dsl::operation_id.eq(op)),
                            )
                            .set((
                                dsl::state.eq(to.as_str()),
                                dsl::operation_id.eq(previous),
                                dsl::updated_at.eq(now_ms()),
                            ))
                            .cached()
                            .execute(conn)
                            .await?
                        }
                    };
                    Ok(())
                }
                .scope_boxed()
            })
            .await
            .map_err(StoreError::from)
        });
        landed(result)
    }

    /// The platform of each instance among `ids` that has a row.
    pub async fn instance_platforms(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<String, String>, StoreError> {
        platforms_of!(self, osb_instances, ids)
    }

    /// The platform of each binding among `ids` that has a row.
    pub async fn binding_platforms(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<String, String>, StoreError> {
        platforms_of!(self, osb_bindings, ids)
    }

    /// Every instance in `state`, for periodic upkeep.
    pub async fn instances_in(&self, state: InstanceState) -> Result<Vec<InstanceRow>, StoreError> {
        with_conn!(self, |conn| Ok(osb_instances::table
            .filter(osb_instances::state.eq(state.as_str()))
            .order(osb_instances::created_at.asc())
            .load::<InstanceRow>(conn)
            .await?))
    }
}

#[cfg(test)]
mod tests {
    use diesel::sql_types::BigInt;

    use super::*;

    #[derive(QueryableByName)]
    struct Session {
        #[diesel(sql_type = BigInt)]
        id: i64,
        #[diesel(sql_type = BigInt)]
        prepared: i64,
    }

    /// This connection's id and how many statements its session has had the server prepare
    /// (`Com_stmt_prepare`), this query included.
    async fn session(store: &Store) -> Result<Session, StoreError> {
        with_conn!(store, |conn| Ok(diesel::sql_query(
            "SELECT CONNECTION_ID() AS id, CAST(VARIABLE_VALUE AS SIGNED) AS prepared \
             FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'COM_STMT_PREPARE'"
        )
        .get_result(conn)
        .await?))
    }

    fn operation(id: &str, instance: &str, binding: Option<&str>) -> OperationRow {
        OperationRow {
            id: id.into(),
            platform: "default".into(),
            instance_id: instance.into(),
            binding_id: binding.map(Into::into),
            kind: "k".into(),
            state: OperationState::InProgress.as_str().into(),
            fingerprint: "f".into(),
            description: None,
            instance_usable: None,
            update_repeatable: None,
            owner: "me".into(),
            heartbeat_at: 1,
            created_at: 1,
            updated_at: 1,
            runner: "me/1".into(),
            request: None,
        }
    }

    /// A provisioning instance `id` on operation `op`.
    fn instance_row(id: &str, op: &str) -> InstanceRow {
        InstanceRow {
            id: id.into(),
            platform: "default".into(),
            service_id: "s".into(),
            plan_id: "p".into(),
            fingerprint: "f".into(),
            state: InstanceState::Provisioning.as_str().into(),
            operation_id: op.into(),
            parameters: "{}".into(),
            context: "{}".into(),
            maintenance_version: None,
            dashboard_url: None,
            metadata: None,
            broker_state: "null".into(),
            created_at: 1,
            updated_at: 1,
        }
    }

    /// Binding `id` of `instance`, being made by operation `op`.
    fn binding_row(id: &str, instance: &str, op: &str) -> BindingRow {
        BindingRow {
            id: id.into(),
            instance_id: instance.into(),
            platform: "default".into(),
            service_id: "s".into(),
            plan_id: "p".into(),
            fingerprint: "f".into(),
            state: BindingState::Binding.as_str().into(),
            operation_id: op.into(),
            parameters: "{}".into(),
            response: None,
            credentials: None,
            broker_state: "null".into(),
            created_at: 1,
            updated_at: 1,
        }
    }

    /// Every write a lifecycle makes, and the reads with an `IN` list (the batched lookups'
    /// too): provision, bind, a claim given back, a failed unbind, unbind, a failed update,
    /// deprovision; the lease's, upkeep's and recovery's writes.
    async fn lifecycle(store: &Store) -> Result<(), StoreError> {
        let fresh = || uuid::Uuid::new_v4().to_string();
        let (id, bid) = (fresh(), fresh());
        let ops: Vec<String> = (0..8).map(|_| fresh()).collect();
        let mut instance = instance_row(&id, &ops[0]);
        let mut binding = binding_row(&bid, &id, &ops[1]);
        let landed = |done: bool, what: &str| assert!(done, "{what} did not land");
        let op = |i: usize, b: Option<&str>| operation(&ops[i], &id, b);
        landed(
            store
                .start(&op(0, None), Start::NewInstance(&instance))
                .await?,
            "provision",
        );
        instance.state = InstanceState::Ready.as_str().into();
        landed(
            store
                .succeed(&ops[0], "me/1", Outcome::SaveInstance(&instance))
                .await?,
            "ready",
        );
        landed(
            store
                .start(&op(1, Some(&bid)), Start::NewBinding(&binding))
                .await?,
            "bind",
        );
        binding.state = BindingState::Bound.as_str().into();
        landed(
            store
                .succeed(&ops[1], "me/1", Outcome::SaveBinding(&binding))
                .await?,
            "bound",
        );
        // The lookups a platform's reads make (batched on a network store).
        assert!(store.instance_with_facts(&id).await?.is_some());
        assert!(store.instance_with_operation(&id).await?.is_some());
        assert!(store.binding_with_operation(&bid).await?.is_some());
        assert!(store.binding(&bid).await?.is_some());
        assert!(store.shown_binding(&bid).await?.is_some());
        let unbind = |previous| Start::Binding {
            id: &bid,
            from: &[BindingState::Bound],
            to: BindingState::Unbinding,
            previous,
        };
        landed(
            store.start(&op(7, Some(&bid)), unbind(&ops[1])).await?,
            "binding claim",
        );
        let bound = Release::Binding(&bid, BindingState::Bound);
        // Only while the claim is still in progress under its runner.
        assert!(!store.unclaim(&ops[7], "other/1", bound, &ops[1]).await?);
        landed(
            store.unclaim(&ops[7], "me/1", bound, &ops[1]).await?,
            "binding claim given back",
        );
        landed(
            store.start(&op(2, Some(&bid)), unbind(&ops[1])).await?,
            "unbind",
        );
        assert!(store.has_busy_bindings(&id).await?);
        let kept = Release::Binding(&bid, BindingState::Bound);
        landed(
            store.fail(&ops[2], "me/1", kept, "no", None, None).await?,
            "kept",
        );
        landed(
            store.start(&op(6, Some(&bid)), unbind(&ops[2])).await?,
            "unbind again",
        );
        landed(
            store
                .succeed(&ops[6], "me/1", Outcome::DeleteBinding(&bid))
                .await?,
            "unbound",
        );
        let update = Start::Instance {
            id: &id,
            from: &[InstanceState::Ready],
            to: InstanceState::Updating,
            previous: &ops[0],
        };
        landed(store.start(&op(3, None), update).await?, "update");
        let release = Release::Instance(&id, InstanceState::Ready);
        landed(
            store
                .fail(&ops[3], "me/1", release, "no", None, Some(true))
                .await?,
            "failed",
        );
        // Upkeep's facts: made, then measured again.
        let facts = [(id.clone(), Some(("{}".to_owned(), 1)))];
        store.keep_facts(&facts).await?;
        store.keep_facts(&facts).await?;
        // A start whose work turned out to be needless gives the row back.
        let claim = Start::Instance {
            id: &id,
            from: &[InstanceState::Ready],
            to: InstanceState::Updating,
            previous: &ops[3],
        };
        landed(store.start(&op(5, None), claim).await?, "claim");
        let back = Release::Instance(&id, InstanceState::Ready);
        landed(
            store.unclaim(&ops[5], "me/1", back, &ops[3]).await?,
            "claim given back",
        );
        let deprovision = Start::Instance {
            id: &id,
            from: &[InstanceState::Ready],
            to: InstanceState::Deprovisioning,
            previous: &ops[3],
        };
        landed(store.start(&op(4, None), deprovision).await?, "deprovision");
        assert!(!store.take_over(&ops[4], "other/1", 0, "me", "me/2").await?);
        assert!(!store.fail_record(&fresh(), "me/1", "gone").await?);
        landed(
            store
                .succeed(&ops[4], "me/1", Outcome::DeleteInstance(&id))
                .await?,
            "gone",
        );
        assert!(store.acquire_lease("l", "me", 60_000).await?);
        assert!(store.acquire_lease("l", "me", 60_000).await?);
        store.keep_facts(&[(id.clone(), None)]).await?;
        store.catalog_first_served(&fresh()).await?;
        Ok(())
    }

    /// The local MariaDB (scripts/backends.sh); fails, never skips, without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lifecycle_prepares_its_statements_once_per_mysql_connection() {
        let admin = mysql_admin();
        let name = format!("osb_test_{}", uuid::Uuid::new_v4().simple());
        as_admin(&admin, &format!("CREATE DATABASE `{name}`")).await;
        // One connection, so the session's count is every statement's.
        let measured = async {
            let store = Store::connect(&format!("{admin}/{name}"), 1).await?;
            lifecycle(&store).await?;
            let before = session(&store).await?;
            lifecycle(&store).await?;
            let after = session(&store).await?;
            Ok::<_, StoreError>((before, after))
        }
        .await;
        as_admin(&admin, &format!("DROP DATABASE `{name}`")).await;
        let (before, after) = measured.unwrap();
        assert_eq!(before.id, after.id, "one connection throughout");
        assert_eq!(
            after.prepared - before.prepared,
            1,
            "only the status query is prepared again"
        );
    }

    /// The local MariaDB's admin URL, without a database (scripts/backends.sh).
    fn mysql_admin() -> String {
        std::env::var("KPAAS_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
    }

    /// Runs `sql` as the admin of the server at `admin` (a MariaDB or PostgreSQL URL without a
    /// database); fails, never skips, without the server.
    async fn as_admin(admin: &str, sql: &str) {
        use diesel_async::SimpleAsyncConnection;
        if admin.starts_with("mysql://") {
            let mut conn = AsyncMysqlConnection::establish(&format!("{admin}/mysql"))
                .await
                .unwrap_or_else(|e| panic!("MariaDB at {admin} is required: {e}"));
            conn.batch_execute(sql).await.unwrap();
        } else {
            let mut conn = AsyncPgConnection::establish(&format!("{admin}/postgres"))
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required: {e}"));
            conn.batch_execute(sql).await.unwrap();
        }
    }

    /// The server's id of the connection a statement runs on.
    async fn connection_id(store: &Store, sql: &'static str) -> Result<i64, StoreError> {
        #[derive(QueryableByName)]
        struct Id {
            #[diesel(sql_type = BigInt)]
            id: i64,
        }
        with_conn!(store, |conn| Ok(diesel::sql_query(sql)
            .get_result::<Id>(conn)
            .await?
            .id))
    }

    /// A caller that gives up on its statement half-way (a timeout, a panic) takes the
    /// connection out of the pool: the statement's reply is still to come, and the next
    /// statement on that connection would read it as its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_statement_given_up_half_way_takes_its_connection_out_of_the_pool() {
        let servers = [
            (
                mysql_admin(),
                "SELECT SLEEP(5)",
                "SELECT CAST(CONNECTION_ID() AS SIGNED) AS id",
                "",
            ),
            (
                std::env::var("KPAAS_TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into()),
                "SELECT pg_sleep(5)",
                "SELECT pg_backend_pid()::bigint AS id",
                // The given-up session sleeps on until it finds its client gone.
                " WITH (FORCE)",
            ),
        ];
        for (admin, sleep, id, force) in servers {
            let name = format!("osb_test_{}", uuid::Uuid::new_v4().simple());
            as_admin(&admin, &format!("CREATE DATABASE {name}")).await;
            let measured = async {
                // One connection, so the pool hands out the same one unless it was dropped.
                let store = Store::connect(&format!("{admin}/{name}"), 1).await?;
                let before = connection_id(&store, id).await?;
                let given_up = tokio::time::timeout(Duration::from_millis(200), async {
                    with_conn!(store, |conn| Ok(diesel::sql_query(sleep)
                        .execute(conn)
                        .await?))
                })
                .await;
                let after = connection_id(&store, id).await?;
                let again = connection_id(&store, id).await?;
                Ok::<_, StoreError>((given_up.is_err(), before, after, again))
            }
            .await;
            as_admin(&admin, &format!("DROP DATABASE {name}{force}")).await;
            let (given_up, before, after, again) = measured.unwrap();
            assert!(given_up, "{sleep} outlives the timeout");
            assert_ne!(
                before, after,
                "{admin}: a new connection after {sleep} was given up"
            );
            assert_eq!(
                after, again,
                "{admin}: the new connection stays in the pool"
            );
        }
    }

    /// Adds one to row `first`, then to row `second`, in one transaction; the first time, with
    /// `met` between the two, so that each of two such transactions holds its first row when it
    /// asks for the other's.
    async fn add_twice(
        store: &Store,
        met: &tokio::sync::Barrier,
        (first, second): (&str, &str),
        attempts: &std::sync::atomic::AtomicUsize,
    ) -> Result<(), StoreError> {
        with_conn!(store, |conn| {
            let attempt = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            conn.transaction::<_, DieselError, _>(|conn| {
                async move {
                    let add = |k| format!("UPDATE probe SET v = v + 1 WHERE k = '{k}'");
                    diesel::sql_query(add(first)).execute(conn).await?;
                    if attempt == 0 {
                        met.wait().await;
                    }
                    diesel::sql_query(add(second)).execute(conn).await?;
                    Ok(())
                }
                .scope_boxed()
            })
            .await?;
            Ok(())
        })
    }

    /// Two transactions that each take a row the other then wants: the server rolls one back,
    /// which runs again and lands; each one's writes are there once.
    async fn deadlock(url: &str) -> Result<(), StoreError> {
        use diesel_async::SimpleAsyncConnection;
        use std::sync::atomic::AtomicUsize;
        let store = Store::connect(url, 2).await?;
        with_conn!(store, |conn| {
            conn.batch_execute(
                "CREATE TABLE probe (k VARCHAR(8) PRIMARY KEY, v INTEGER NOT NULL); \
                 INSERT INTO probe VALUES ('a', 0), ('b', 0)",
            )
            .await?;
            Ok(())
        })?;
        let met = tokio::sync::Barrier::new(2);
        let (ab, ba) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let both = async {
            tokio::join!(
                add_twice(&store, &met, ("a", "b"), &ab),
                add_twice(&store, &met, ("b", "a"), &ba)
            )
        };
        let ended = tokio::time::timeout(Duration::from_secs(30), both)
            .await
            .expect("a deadlock is ended within seconds");
        ended.0?;
        ended.1?;
        let attempts = (ab.into_inner(), ba.into_inner());
        assert!(
            attempts == (1, 2) || attempts == (2, 1),
            "{url}: one side ran again: {attempts:?}"
        );
        assert_eq!(store.counters().deadlock_retries.get(), 1, "{url}: counted");
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let twice = with_conn!(store, |conn| Ok(diesel::sql_query(
            "SELECT COUNT(*) AS n FROM probe WHERE v = 2"
        )
        .get_result::<Count>(conn)
        .await?))?;
        assert_eq!(twice.n, 2, "{url}: each side's two writes, once");
        let tries = AtomicUsize::new(0);
        let duplicate = with_conn!(store, |conn| {
            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            diesel::sql_query("INSERT INTO probe VALUES ('a', 0)")
                .execute(conn)
                .await?;
            Ok(())
        });
        assert!(duplicate.is_err(), "{url}: 'a' is taken");
        assert_eq!(
            tries.into_inner(),
            1,
            "{url}: only a deadlock's victim runs again"
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deadlock_victim_runs_again() {
        on_network_stores(|url| async move { deadlock(&url).await }).await;
    }

    /// Runs `check` on a fresh database of the local MariaDB, then of the local PostgreSQL,
    /// each dropped after its run whatever came of it (a failed assertion too).
    async fn on_network_stores<F, Fut>(check: F)
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        let postgres = std::env::var("KPAAS_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        for (admin, force) in [(mysql_admin(), ""), (postgres, " WITH (FORCE)")] {
            let name = format!("osb_test_{}", uuid::Uuid::new_v4().simple());
            as_admin(&admin, &format!("CREATE DATABASE {name}")).await;
            let done = std::panic::AssertUnwindSafe(check(format!("{admin}/{name}")))
                .catch_unwind()
                .await;
            as_admin(&admin, &format!("DROP DATABASE {name}{force}")).await;
            match done {
                Ok(done) => done.unwrap_or_else(|e| panic!("{admin}: {e}")),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    }

    /// Pruning on `store`: the finished operations a row has moved on from go, each row's
    /// current one stays; a start whose record names another row, and an end that would save
    /// its row on another operation, are refused with nothing written.
    async fn pruning(store: &Store) -> Result<(), StoreError> {
        let fresh = || uuid::Uuid::new_v4().to_string();
        let (id, bid) = (fresh(), fresh());
        let ops: Vec<String> = (0..6).map(|_| fresh()).collect();
        let op = |i: usize, b: Option<&str>| operation(&ops[i], &id, b);
        let mut instance = instance_row(&id, &ops[0]);
        assert!(
            store
                .start(&op(0, None), Start::NewInstance(&instance))
                .await?
        );
        instance.state = InstanceState::Ready.as_str().into();
        let saved = Outcome::SaveInstance(&instance);
        assert!(store.succeed(&ops[0], "me/1", saved).await?);
        let mut binding = binding_row(&bid, &id, &ops[1]);
        assert!(
            store
                .start(&op(1, Some(&bid)), Start::NewBinding(&binding))
                .await?
        );
        binding.state = BindingState::Bound.as_str().into();
        let saved = Outcome::SaveBinding(&binding);
        assert!(store.succeed(&ops[1], "me/1", saved).await?);
        // The binding moves on to a failed unbind, the instance to a failed update and then an
        // update still running.
        let unbind = |previous| Start::Binding {
            id: &bid,
            from: &[BindingState::Bound],
            to: BindingState::Unbinding,
            previous,
        };
        // A claim from an operation the binding is no longer on is refused.
        assert!(!store.start(&op(2, Some(&bid)), unbind(&ops[0])).await?);
        assert!(store.start(&op(2, Some(&bid)), unbind(&ops[1])).await?);
        // While the unbind holds the binding, the bind it replaced stays.
        assert_eq!(store.prune_operations(now_ms() + 60_000).await?, 0);
        let kept = Release::Binding(&bid, BindingState::Bound);
        assert!(store.fail(&ops[2], "me/1", kept, "no", None, None).await?);
        let update = |previous| Start::Instance {
            id: &id,
            from: &[InstanceState::Ready],
            to: InstanceState::Updating,
            previous,
        };
        assert!(store.start(&op(3, None), update(&ops[0])).await?);
        let ready = Release::Instance(&id, InstanceState::Ready);
        assert!(store.fail(&ops[3], "me/1", ready, "no", None, None).await?);
        assert!(store.start(&op(4, None), update(&ops[3])).await?);
        // While an operation holds the instance, none of its records goes (giving the claim
        // back would point the row to the previous one again).
        assert_eq!(store.prune_operations(now_ms() + 60_000).await?, 0);
        // Its end may not save the row on another operation (here the provision's).
        let elsewhere = Outcome::SaveInstance(&instance);
        let refused = store.succeed(&ops[4], "me/1", elsewhere).await;
        assert!(
            matches!(refused, Err(StoreError::Corrupt(_))),
            "{refused:?}"
        );
        let ready = Release::Instance(&id, InstanceState::Ready);
        assert!(store.fail(&ops[4], "me/1", ready, "no", None, None).await?);
        // A record naming another instance, or a binding's naming none, is refused.
        let stranger = operation(&ops[5], &fresh(), None);
        let other = instance_row(&fresh(), &ops[5]);
        for (record, start) in [
            (&stranger, Start::NewInstance(&other)),
            (
                &op(5, None),
                Start::NewBinding(&binding_row(&fresh(), &id, &ops[5])),
            ),
            (&stranger, update(&ops[4])),
        ] {
            assert!(matches!(
                store.start(record, start).await,
                Err(StoreError::Corrupt(_))
            ));
        }
        assert!(
            store.operation(&ops[5]).await?.is_none(),
            "a refused start wrote"
        );

        let pruned = store.prune_operations(now_ms() + 60_000).await?;
        let left = |i: usize| store.operation(&ops[i]);
        let mut kept = Vec::new();
        for i in 0..5 {
            kept.push(left(i).await?.is_some());
        }
        assert_eq!(
            (pruned, kept),
            (3, vec![false, false, true, false, true]),
            "the provision and the bind go, and the failed update the next one replaced; \
             the binding's failed unbind and the instance's last update stay"
        );
        Ok(())
    }

    /// [`pruning`] on each kind of store: the local MariaDB and PostgreSQL
    /// (scripts/backends.sh) and a SQLite file; fails, never skips, without a server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pruning_takes_only_the_operations_no_row_points_to() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = format!("sqlite://{}", dir.path().join("state.db").display());
        pruning(&Store::connect(&sqlite, 2).await.unwrap())
            .await
            .unwrap();
        on_network_stores(|url| async move { pruning(&Store::connect(&url, 2).await?).await })
            .await;
    }
}
