//! A SQLite store's pinned read mark: one connection of the serving process that holds a read
//! transaction open between the process's writes, so that the readers find their WAL read mark
//! already locked by this process and take it without a system call.
//!
//! In WAL mode a read transaction takes a shared lock on one of the WAL's read marks and gives
//! it back at its end. SQLite counts the holders of each lock within the process and asks the
//! kernel (`fcntl` on the shared-memory file) only for the first and the last; both calls run
//! under a mutex that every connection of the process shares. Measured on `GET` instance: two
//! `fcntl` per read, and the two HTTP workers' readers waiting on each other's (0.34 futex calls
//! per read, 11% of the CPU idle where the catalog left none).
//!
//! An open read transaction holds checkpoints back to its snapshot, keeps the WAL from starting
//! over, and (on read mark 0, taken when the WAL was fully checkpointed) keeps any frame from
//! being copied into the database. So the pin lets go:
//! - before each write of this process, for as long as writes run: a write's checkpoint, and
//!   the next write's restart of the WAL, meet no pin, as without one; the first read after
//!   takes it again;
//! - once it has been held a period (the store's timer looks every period), and the next read
//!   takes it again: an idle broker holds nothing;
//! - for a period and more when another process has committed (an operator's `sqlite3`, a
//!   backup tool's own table, a restart's overlap): that process's checkpoints and restarts of
//!   the WAL then meet only the readers' own short transactions, as without a pin. The timer
//!   tells such a commit by SQLite's `data_version` having moved while this process did not
//!   write.
//!
//! What the pin holds is only ever a lock: readers and writers are correct without it, and a
//! pin that cannot be taken (the file being recovered) is simply not held.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::time::{Duration, Instant};

use diesel::RunQueryDsl;
use diesel::connection::SimpleConnection;

/// How long a pin is held before the timer lets it go, and how long it stays away after
/// another process's commit.
const PERIOD: Duration = Duration::from_secs(1);

pub(super) struct ReadPin {
    period: Duration,
    /// Set while the pin is held: all a read checks, most of the time.
    held: AtomicBool,
    /// No pin before this, in milliseconds since `epoch` (another process writes).
    quiet_until: AtomicU64,
    epoch: Instant,
    state: Mutex<State>,
}

struct State {
    /// Gone if its transaction would not end: no more pin then.
    conn: Option<diesel::SqliteConnection>,
    /// When the pin was last taken, in milliseconds since `epoch`.
    pinned_at: u64,
    /// Writes running now: no pin until the last ends.
    writes: usize,
    /// Writes begun by this process, and how many the timer saw at its last look.
    own_writes: u64,
    own_writes_seen: u64,
    /// SQLite's `data_version` at the timer's last look.
    version: Option<i64>,
}

#[derive(diesel::QueryableByName)]
struct DataVersion {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    data_version: i64,
}

impl ReadPin {
    /// A pin on the SQLite file at `path`, its connection opened on a blocking thread, its
    /// timer on the current Tokio runtime.
    pub(super) async fn open(path: &str) -> Result<Arc<Self>, diesel::ConnectionError> {
        Self::every(path, PERIOD).await
    }

    async fn every(path: &str, period: Duration) -> Result<Arc<Self>, diesel::ConnectionError> {
        // It never waits for a lock: a pin that cannot be taken at once is not held.
        let conn = super::open_read_only(path, 0).await?;
        let pin = Arc::new(Self {
            period,
            held: AtomicBool::new(false),
            quiet_until: AtomicU64::new(0),
            epoch: Instant::now(),
            state: Mutex::new(State {
                conn: Some(conn),
                pinned_at: 0,
                writes: 0,
                own_writes: 0,
                own_writes_seen: 0,
                version: None,
            }),
        });
        tokio::spawn(look_every_period(Arc::downgrade(&pin)));
        Ok(pin)
    }

    /// Before a read: takes the pin unless it is held, a write runs or another process wrote
    /// lately.
    pub(super) fn keep(&self) {
        if self.held.load(Ordering::Acquire)
            || self.now() < self.quiet_until.load(Ordering::Relaxed)
        {
            return;
        }
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            // Another thread taking it, or a write starting: this read goes without.
            Err(TryLockError::WouldBlock) => return,
        };
        if state.writes > 0 || self.held.load(Ordering::Acquire) {
            return;
        }
        let Some(conn) = &mut state.conn else {
            return;
        };
        // A deferred transaction reads nothing until its first statement: the schema's first
        // row takes the read mark.
        let taken = match conn.batch_execute("BEGIN; SELECT 1 FROM sqlite_schema LIMIT 1;") {
            Ok(()) => true,
            Err(_) => {
                if conn.batch_execute("ROLLBACK").is_err() {
                    state.conn = None;
                }
                false
            }
        };
        state.pinned_at = self.now();
        self.held.store(taken, Ordering::Release);
    }

    /// For as long as the guard lives, no pin: a write of this process runs.
    pub(super) fn writing(self: &Arc<Self>) -> Writing {
        let mut state = self.lock();
        state.writes += 1;
        state.own_writes += 1;
        self.let_go(&mut state);
        Writing(self.clone())
    }

    fn let_go(&self, state: &mut State) {
        if self.held.swap(false, Ordering::AcqRel)
            && let Some(conn) = &mut state.conn
            && conn.batch_execute("COMMIT").is_err()
        {
            state.conn = None;
        }
    }

    /// The timer's look: lets a pin held a period go, then, unless this process writes now,
    /// keeps the pin away for a period if another process has committed since the last look.
    fn look(&self) {
        let mut state = self.lock();
        if state.writes > 0 {
            return;
        }
        if self.held.load(Ordering::Acquire) {
            if self.now().saturating_sub(state.pinned_at) < self.period.as_millis() as u64 {
                return;
            }
            self.let_go(&mut state);
        }
        let Some(conn) = &mut state.conn else {
            return;
        };
        let Ok(now) = diesel::sql_query("PRAGMA data_version").get_result::<DataVersion>(conn)
        else {
            return;
        };
        let moved = state.version.is_some_and(|v| v != now.data_version);
        // When this process wrote too, the move may be its own: no telling, so no quiet (its
        // own writes let the pin go anyway).
        if moved && state.own_writes == state.own_writes_seen {
            self.quiet_until.store(
                self.now() + self.period.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
        state.version = Some(now.data_version);
        state.own_writes_seen = state.own_writes;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// A write of this process running; see [`ReadPin::writing`].
pub(super) struct Writing(Arc<ReadPin>);

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.lock().writes -= 1;
    }
}

/// Looks at the pin every period; ends with the store.
async fn look_every_period(pin: Weak<ReadPin>) {
    let Some(period) = pin.upgrade().map(|p| p.period) else {
        return;
    };
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        match pin.upgrade() {
            Some(pin) => pin.look(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use diesel::Connection;

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
        // Before this binary's first SQLite connection, as in the broker (its own test checks
        // the library's mode).
        super::super::sqlite_library::configure();
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
        // The timer does not run: nothing here awaits after this.
        let pin = ReadPin::open(&path).await.unwrap();
        write(&mut other);
        assert!(!blocked(&mut other), "held before any read");
        write(&mut other);
        pin.keep();
        assert!(blocked(&mut other), "a read did not take the pin");
        let writing = pin.writing();
        assert!(!blocked(&mut other), "held while a write runs");
        write(&mut other);
        pin.keep();
        assert!(
            !blocked(&mut other),
            "a read took the pin while a write ran"
        );
        drop(writing);
        write(&mut other);
        pin.keep();
        assert!(
            blocked(&mut other),
            "the first read after the write did not take it again"
        );
    }

    /// The timer's period in the tests that await it.
    const TEST_PERIOD: Duration = Duration::from_millis(100);

    /// A pin whose timer looks every [`TEST_PERIOD`], half a period after its first look (which
    /// sees the file as it is).
    async fn timed(dir: &tempfile::TempDir) -> (Arc<ReadPin>, diesel::SqliteConnection) {
        let (path, other) = file(dir);
        let pin = ReadPin::every(&path, TEST_PERIOD).await.unwrap();
        tokio::time::sleep(TEST_PERIOD / 2).await;
        (pin, other)
    }

    #[tokio::test]
    async fn the_timer_lets_the_pin_go_and_keeps_it_away_while_another_process_writes() {
        let period = TEST_PERIOD;
        let dir = tempfile::tempdir().unwrap();
        let (pin, mut other) = timed(&dir).await;
        write(&mut other);
        pin.keep();
        assert!(blocked(&mut other));
        // Its looks a period apart: one lets the pin go (held a period), having seen the write
        // and this process write nothing since, so no read takes it for a period.
        tokio::time::sleep(period * 2).await;
        write(&mut other);
        pin.keep();
        assert!(
            !blocked(&mut other),
            "held after its time, or taken again too soon"
        );
        // Another process quiet for some looks (the checkpoint above counts as a change):
        // the next read takes the pin.
        tokio::time::sleep(period * 5).await;
        write(&mut other);
        pin.keep();
        assert!(blocked(&mut other), "a read did not take it again");
    }

    #[tokio::test]
    async fn this_process_writing_keeps_no_pin_away() {
        let dir = tempfile::tempdir().unwrap();
        let (pin, mut other) = timed(&dir).await;
        // A commit the timer sees, begun as this process's: it lets the pin go (held a
        // period) and keeps it away no longer.
        write(&mut other);
        pin.keep();
        drop(pin.writing());
        pin.keep();
        tokio::time::sleep(TEST_PERIOD * 2).await;
        write(&mut other);
        pin.keep();
        assert!(
            blocked(&mut other),
            "a write of this process kept the pin away"
        );
    }
}
