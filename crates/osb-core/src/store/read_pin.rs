//! A SQLite store's pinned read mark: one connection of the serving process that holds a read
//! transaction open between the process's writes, so that the readers find their WAL read mark
//! already locked by this process and take it without a system call.
//!
//! In WAL mode a read transaction takes a shared lock on one of the WAL's read marks and gives
//! it back at its end. SQLite counts the holders of each lock within the process and asks the
//! kernel (`fcntl` on the shared-memory file) only for the first and the last; both calls run
//! under a mutex that every connection of the process shares. Measured on `GET` instance: two
//! `fcntl` per read, and the two HTTP workers' readers waiting on each other's (0.55 futex calls
//! per read, 11-24% of the CPU idle where the catalog left none).
//!
//! An open read transaction keeps checkpoints from copying later frames of the WAL into the
//! database and the WAL from starting over, so the pin lets go:
//! - before each write of this process, for as long as writes run: a write's checkpoint, and
//!   the next write's restart of the WAL, meet no pin, as without one; the first read after
//!   takes it again;
//! - a second after it was taken (the store's timer), and the next read takes it again: an idle
//!   broker holds nothing that another process (an operator's `sqlite3`, a restart's overlap)
//!   could wait for, and a busy one moves its mark past that process's writes once a second.
//!
//! What the pin holds is only ever a lock: readers and writers are correct without it, and a
//! pin that cannot be taken (the file being recovered) is simply not held.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use diesel::Connection;
use diesel::connection::SimpleConnection;

/// How long a pin is held before the store's timer lets it go.
const HELD: Duration = Duration::from_secs(1);

pub(super) struct ReadPin {
    path: String,
    /// Set while the pin is held: a read checks only this.
    held: AtomicBool,
    /// When the pin was taken, in milliseconds since `epoch`.
    pinned_at: AtomicU64,
    epoch: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Opened by the first pin.
    conn: Option<diesel::SqliteConnection>,
    /// Writes running now: no pin until the last ends.
    writes: usize,
}

impl ReadPin {
    /// A pin on the SQLite file at `path`, with its timer on the current Tokio runtime.
    pub(super) fn new(path: &str) -> Arc<Self> {
        let pin = Arc::new(Self {
            path: path.to_owned(),
            held: AtomicBool::new(false),
            pinned_at: AtomicU64::new(0),
            epoch: Instant::now(),
            state: Mutex::default(),
        });
        tokio::spawn(let_go_when_idle(Arc::downgrade(&pin)));
        pin
    }

    /// Before a read: takes the pin unless it is held or a write runs.
    pub(super) fn keep(&self) {
        if self.held.load(Ordering::Acquire) {
            return;
        }
        // Another thread taking it, or a write starting: this read goes without.
        let Ok(mut state) = self.state.try_lock() else {
            return;
        };
        if state.writes > 0 {
            return;
        }
        let taken = match &mut state.conn {
            Some(conn) => pin(conn),
            None => match open(&self.path) {
                Ok(mut conn) => {
                    let taken = pin(&mut conn);
                    state.conn = Some(conn);
                    taken
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the SQLite read pin could not be opened");
                    false
                }
            },
        };
        self.pinned_at.store(self.now(), Ordering::Relaxed);
        self.held.store(taken, Ordering::Release);
    }

    /// For as long as the guard lives, no pin: a write of this process runs.
    pub(super) fn writing(self: &Arc<Self>) -> Writing {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.writes += 1;
        self.let_go(&mut state);
        Writing(self.clone())
    }

    fn let_go(&self, state: &mut State) {
        if self.held.swap(false, Ordering::AcqRel)
            && let Some(conn) = &mut state.conn
            && conn.batch_execute("COMMIT").is_err()
        {
            // A connection whose read transaction would not end is of no more use.
            state.conn = None;
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// A write of this process running; see [`ReadPin::writing`].
pub(super) struct Writing(Arc<ReadPin>);

impl Drop for Writing {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        state.writes -= 1;
    }
}

/// The pin's connection: it only reads, and never waits for a lock.
fn open(path: &str) -> Result<diesel::SqliteConnection, diesel::ConnectionError> {
    let mut conn = diesel::SqliteConnection::establish(path)?;
    conn.batch_execute("PRAGMA busy_timeout = 0; PRAGMA query_only = 1;")
        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// Begins a read transaction and keeps it open; false if SQLite would not.
fn pin(conn: &mut diesel::SqliteConnection) -> bool {
    // A deferred transaction reads nothing until its first statement: the schema's first
    // row takes the read mark.
    match conn.batch_execute("BEGIN; SELECT 1 FROM sqlite_schema LIMIT 1;") {
        Ok(()) => true,
        Err(_) => {
            let _ = conn.batch_execute("ROLLBACK");
            false
        }
    }
}

/// Lets the pin go once it has been held for [`HELD`]; ends with the store.
async fn let_go_when_idle(pin: Weak<ReadPin>) {
    let mut every = tokio::time::interval(HELD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(pin) = pin.upgrade() else {
            return;
        };
        if pin.held.load(Ordering::Acquire)
            && pin.now().saturating_sub(pin.pinned_at.load(Ordering::Relaxed))
                >= HELD.as_millis() as u64
        {
            let mut state = pin.state.lock().unwrap_or_else(|e| e.into_inner());
            pin.let_go(&mut state);
        }
    }
}

#[cfg(test)]
mod tests {
    use diesel::RunQueryDsl;

    use super::*;

    #[derive(diesel::QueryableByName)]
    struct Checkpoint {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        busy: i32,
    }

    /// Another process's full checkpoint (which empties the WAL): busy while a read transaction
    /// that reads from the WAL is open.
    fn blocked(other: &mut diesel::SqliteConnection) -> bool {
        let done: Checkpoint = diesel::sql_query("PRAGMA wal_checkpoint(TRUNCATE)")
            .get_result(other)
            .unwrap();
        done.busy != 0
    }

    /// Another process's write: the WAL holds a frame a read transaction begun now reads from.
    fn write(other: &mut diesel::SqliteConnection) {
        other.batch_execute("INSERT INTO t VALUES (1)").unwrap();
    }

    /// A WAL file with a table, and a connection of "another process".
    fn file(dir: &tempfile::TempDir) -> (String, diesel::SqliteConnection) {
        let path = dir.path().join("pin.db").to_str().unwrap().to_owned();
        let mut other = diesel::SqliteConnection::establish(&path).unwrap();
        other
            .batch_execute("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER);")
            .unwrap();
        (path, other)
    }

    #[tokio::test]
    async fn the_pin_is_held_between_writes_and_let_go_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut other) = file(&dir);
        let pin = ReadPin::new(&path);
        write(&mut other);
        assert!(!blocked(&mut other), "held before any read");
        write(&mut other);
        pin.keep();
        assert!(blocked(&mut other), "a read did not take the pin");
        let writing = pin.writing();
        assert!(!blocked(&mut other), "held while a write runs");
        write(&mut other);
        pin.keep();
        assert!(!blocked(&mut other), "a read took the pin while a write ran");
        drop(writing);
        write(&mut other);
        pin.keep();
        assert!(blocked(&mut other), "the first read after the write did not take it again");
    }

    #[tokio::test]
    async fn the_timer_lets_the_pin_go() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut other) = file(&dir);
        let pin = ReadPin::new(&path);
        write(&mut other);
        pin.keep();
        assert!(blocked(&mut other));
        // The timer looks every HELD: the pin is HELD old at its second look at the latest.
        tokio::time::sleep(HELD * 5 / 2).await;
        assert!(!blocked(&mut other), "held after its time");
        write(&mut other);
        pin.keep();
        assert!(blocked(&mut other), "a read did not take it again");
    }
}
