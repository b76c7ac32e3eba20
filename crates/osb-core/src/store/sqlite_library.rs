//! The SQLite library's process-wide settings, made before this process opens its first
//! SQLite connection.
//!
//! - **Multi-thread mode.** In its default (serialized) mode SQLite locks a connection's own
//!   mutexes around every call on it, for programs that share one connection between threads.
//!   Here none does: diesel's `SqliteConnection` is `Send` but not `Sync`; a reader runs its
//!   statement to the end on the thread that took it from its pool; and the waiting writer's
//!   statements go through diesel-async's wrapper, which holds its connection under a mutex of
//!   its own (a statement left running by a cancelled caller still holds it).
//! - **No memory statistics.** With them, every allocation and free SQLite makes takes one
//!   mutex of the whole library, which the HTTP workers' readers meet at every read. The
//!   broker reads none of those figures.

use std::ffi::c_int;
use std::sync::Once;

use libsqlite3_sys as ffi;

/// Applies the settings once. SQLite takes them only before it initialises itself (its first
/// connection); a later call is refused by SQLite and changes nothing, which is logged.
pub(super) fn configure() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: `sqlite3_config` must not run beside another SQLite call. Every SQLite
        // connection of the broker is opened by the store, after this (a concurrent `call_once`
        // waits for it). Each call passes the argument its option takes (none; one int).
        let (mode, stats) = unsafe {
            (
                ffi::sqlite3_config(ffi::SQLITE_CONFIG_MULTITHREAD),
                ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int),
            )
        };
        if mode != ffi::SQLITE_OK || stats != ffi::SQLITE_OK {
            tracing::warn!(
                mode,
                stats,
                "SQLite was set up before the state store: it runs in its default mode"
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_have_no_mutex_of_their_own_and_no_memory_is_counted() {
        configure();
        let mut db = std::ptr::null_mut();
        // SAFETY: opens an in-memory database into `db`, reads the connection's mutex and
        // closes `db`; nothing else uses it.
        unsafe {
            let flags = ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE;
            let rc = ffi::sqlite3_open_v2(c":memory:".as_ptr(), &mut db, flags, std::ptr::null());
            assert_eq!(rc, ffi::SQLITE_OK);
            assert!(
                ffi::sqlite3_db_mutex(db).is_null(),
                "the connection has a mutex: serialized mode"
            );
            assert_eq!(ffi::sqlite3_close(db), ffi::SQLITE_OK);
        }
        // A diesel connection, opened as the store opens its own (diesel passes no
        // SQLITE_OPEN_FULLMUTEX, which would bring a connection's mutex back). None of the
        // memory either connection took was counted: neither now nor at its highest.
        use diesel::Connection as _;
        use diesel::connection::SimpleConnection as _;
        let mut conn = diesel::SqliteConnection::establish(":memory:").unwrap();
        conn.batch_execute("CREATE TABLE t (a TEXT); INSERT INTO t VALUES ('x');")
            .unwrap();
        let (mut used, mut peak) = (0, 0);
        // SAFETY: reads the library's memory counter; any thread may.
        let rc = unsafe {
            ffi::sqlite3_status64(ffi::SQLITE_STATUS_MEMORY_USED, &mut used, &mut peak, 0)
        };
        assert_eq!(
            (rc, used, peak),
            (ffi::SQLITE_OK, 0, 0),
            "memory statistics are kept"
        );
    }

    /// `.cargo/config.toml` builds the bundled library without its shared page cache (see
    /// there); cargo reads that file only when it runs inside the workspace, and a
    /// `LIBSQLITE3_FLAGS` already set would win over it.
    #[test]
    fn the_library_is_built_without_a_shared_page_cache() {
        use diesel::{Connection as _, RunQueryDsl as _};
        #[derive(diesel::QueryableByName)]
        struct CompileOption {
            #[diesel(sql_type = diesel::sql_types::Text)]
            compile_options: String,
        }
        configure();
        let mut conn = diesel::SqliteConnection::establish(":memory:").unwrap();
        let options: Vec<CompileOption> = diesel::sql_query("PRAGMA compile_options")
            .load(&mut conn)
            .unwrap();
        assert!(
            options
                .iter()
                .any(|o| o.compile_options.starts_with("THREADSAFE"))
        );
        assert!(
            !options
                .iter()
                .any(|o| o.compile_options == "ENABLE_MEMORY_MANAGEMENT"),
            "built with SQLITE_ENABLE_MEMORY_MANAGEMENT"
        );
    }
}
