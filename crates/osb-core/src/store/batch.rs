//! Lookups by key on a network store, sent together: the reads of one kind that arrive while
//! that kind's statement is on its way go out as the next one, a single `IN (...)` lookup.
//! A round trip costs the server and the broker far more than the rows it brings (about 50 µs
//! of MariaDB's CPU per lookup by primary key, measured, whatever it finds), and a platform's
//! pollers ask at once.
//!
//! A read only joins a statement not yet sent, so it sees every write committed before it
//! arrived, as a statement of its own would. Statements go out from the store's home runtime,
//! where its connections live, so a read may wait from any thread and be dropped at any point
//! (a client hanging up) without cutting a statement half way. SQLite reads run in place with
//! no round trip to save, and are not batched.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::join_all;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Distinct keys in one statement at most. A statement's keys are padded to a power of two
/// (repeating one), so that a kind has at most six texts to keep prepared per connection.
const MOST_KEYS: usize = 32;

/// One kind of lookup by key.
pub(super) trait Lookup: Send + Sync + 'static {
    /// What it runs on: the store, or a test's stand-in.
    type Source: Clone + Send + Sync + 'static;
    type Row: Clone + Send + 'static;
    type Error: std::fmt::Display + Send + 'static;

    fn key(row: &Self::Row) -> &str;

    /// The rows of `keys` (a key may repeat; one without a row is left out).
    fn load(
        source: &Self::Source,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<Self::Row>, Self::Error>> + Send;

    /// A failure that is no statement's own (`why`): the runtime stopping, a statement that
    /// did not answer in time, a panic.
    fn unavailable(why: &str) -> Self::Error;

    /// Whether `error` may be the statement's own, so that its keys alone may fare otherwise.
    fn retry_alone(error: &Self::Error) -> bool;

    /// An error like `error`, for each further read it answers.
    fn copy(error: &Self::Error) -> Self::Error;
}

type Answer<L> = Result<Option<<L as Lookup>::Row>, <L as Lookup>::Error>;

const STOPPING: &str = "the broker is stopping";

const PANICKED: &str = "a state store lookup panicked";

/// Why a task that ran a lookup ended without its answer.
pub(super) fn lost(task: &tokio::task::JoinError) -> &'static str {
    if task.is_panic() { PANICKED } else { STOPPING }
}

/// The reads of one kind waiting for their statement.
pub(super) struct Batcher<L: Lookup> {
    queue: Arc<Mutex<Queue<L>>>,
    home: Handle,
    limit: Duration,
}

struct Queue<L: Lookup> {
    waiting: Vec<Waiter<L>>,
    /// Whether a statement of this kind is on its way (a turn is running).
    sending: bool,
}

struct Waiter<L: Lookup> {
    key: String,
    reply: oneshot::Sender<Answer<L>>,
}

/// The queue; a panic elsewhere never leaves it half changed, so a poisoned lock is used as is
/// (a turn may end in `Drop`, where a second panic would abort).
fn lock<L: Lookup>(queue: &Mutex<Queue<L>>) -> std::sync::MutexGuard<'_, Queue<L>> {
    queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<L: Lookup> Batcher<L> {
    /// Statements go out on `home`, the runtime of the store's connections; one that has not
    /// answered within `limit` has its reads answered as unavailable (and is left to finish).
    pub(super) fn new(home: Handle, limit: Duration) -> Self {
        Self {
            queue: Arc::new(Mutex::new(Queue {
                waiting: Vec::new(),
                sending: false,
            })),
            home,
            limit,
        }
    }

    /// The row of `key`, read with whatever other keys wait beside it.
    pub(super) async fn get(&self, source: &L::Source, key: &str) -> Answer<L> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut queue = lock(&self.queue);
            queue.waiting.push(Waiter {
                key: key.to_owned(),
                reply,
            });
            !std::mem::replace(&mut queue.sending, true)
        };
        if lead {
            let turn = Turn::<L> {
                queue: self.queue.clone(),
                source: source.clone(),
                limit: self.limit,
                ended: false,
            };
            self.home.spawn(turn.send());
        }
        answer
            .await
            .unwrap_or_else(|_| Err(L::unavailable(STOPPING)))
    }
}

/// A turn sends the reads queued in one statement, answers them, and goes on with the reads
/// that queued meanwhile until none waits.
struct Turn<L: Lookup> {
    queue: Arc<Mutex<Queue<L>>>,
    source: L::Source,
    limit: Duration,
    /// Whether it ran to its end (else it was dropped: its runtime is shutting down).
    ended: bool,
}

impl<L: Lookup> Turn<L> {
    async fn send(mut self) {
        loop {
            // The reads queued first, up to the read of one key too many.
            let mut keys: Vec<String> = Vec::new();
            let batch = {
                let mut queue = lock(&self.queue);
                // Reads whose clients hung up take no key's place.
                queue.waiting.retain(|w| !w.reply.is_closed());
                let taken = queue
                    .waiting
                    .iter()
                    .take_while(|w| {
                        keys.contains(&w.key)
                            || (keys.len() < MOST_KEYS && {
                                keys.push(w.key.clone());
                                true
                            })
                    })
                    .count();
                if taken == 0 {
                    queue.sending = false;
                    self.ended = true;
                    return;
                }
                queue.waiting.drain(..taken).collect::<Vec<_>>()
            };
            self.answer(batch, keys).await;
        }
    }

    /// Runs the statement of `keys` (distinct) and answers `batch`. When it fails in a way
    /// that may be its own, each key runs alone, to meet its own error.
    async fn answer(&self, batch: Vec<Waiter<L>>, keys: Vec<String>) {
        let mut groups: Vec<(String, Vec<Waiter<L>>)> =
            keys.iter().map(|k| (k.clone(), Vec::new())).collect();
        for waiter in batch {
            if let Some((_, group)) = groups.iter_mut().find(|(k, _)| *k == waiter.key) {
                group.push(waiter);
            }
        }
        let distinct = keys.len();
        let mut padded = keys;
        padded.resize(distinct.next_power_of_two(), padded[0].clone());
        let error = match self.load(padded).await {
            Ok(rows) => {
                for (key, group) in groups {
                    reply(group, Ok(rows.iter().find(|r| L::key(r) == key).cloned()));
                }
                return;
            }
            Err(e) => e,
        };
        tracing::warn!(error = %error, keys = distinct, "a batched state store lookup failed");
        if distinct == 1 || !L::retry_alone(&error) {
            reply(
                groups.into_iter().flat_map(|(_, g)| g).collect(),
                Err(error),
            );
            return;
        }
        join_all(groups.into_iter().map(|(key, group)| async move {
            if group.iter().all(|w| w.reply.is_closed()) {
                return;
            }
            let alone = self.load(vec![key]).await;
            reply(group, alone.map(|rows| rows.into_iter().next()));
        }))
        .await;
    }

    /// The rows of `keys`. A statement that has not answered within the limit is moved to a
    /// task of its own and left to finish there (its connection then goes back to the pool
    /// whole) while its reads are answered; only then, as a task for every statement cost its
    /// scheduling and a wake-up of the turn.
    async fn load(&self, keys: Vec<String>) -> Result<Vec<L::Row>, L::Error> {
        let source = self.source.clone();
        let mut statement = Box::pin(async move { L::load(&source, &keys).await });
        let answer = std::panic::AssertUnwindSafe(statement.as_mut()).catch_unwind();
        match tokio::time::timeout(self.limit, answer).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(_)) => Err(L::unavailable(PANICKED)),
            Err(_) => {
                tokio::spawn(statement);
                Err(L::unavailable(
                    "a state store lookup did not answer in time",
                ))
            }
        }
    }
}

/// Answers every read of `waiters` (one key's) with `answer`.
fn reply<L: Lookup>(waiters: Vec<Waiter<L>>, answer: Answer<L>) {
    let mut waiters = waiters.into_iter();
    let Some(last) = waiters.next_back() else {
        return;
    };
    for waiter in waiters {
        let _ = waiter.reply.send(match &answer {
            Ok(row) => Ok(row.clone()),
            Err(e) => Err(L::copy(e)),
        });
    }
    let _ = last.reply.send(answer);
}

impl<L: Lookup> Drop for Turn<L> {
    fn drop(&mut self) {
        if !self.ended {
            // Dropped half way: its runtime is shutting down. The reads queued are answered
            // as stopped (their senders dropped), and the next read starts a turn again.
            let mut queue = lock(&self.queue);
            queue.waiting.clear();
            queue.sending = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::sync::Semaphore;

    use super::*;

    /// A stand-in store: rows are their keys, except keys starting with `missing`; the
    /// statements it was sent, in order; each waits for a permit, fails when told to, and
    /// panics on the key `panic`.
    #[derive(Clone, Default)]
    struct Source(Arc<State>);

    struct State {
        sent: Mutex<Vec<Vec<String>>>,
        permits: Semaphore,
        failing: AtomicBool,
    }

    impl Default for State {
        fn default() -> Self {
            Self {
                sent: Mutex::default(),
                permits: Semaphore::new(0),
                failing: AtomicBool::default(),
            }
        }
    }

    struct ByKey;

    impl Lookup for ByKey {
        type Source = Source;
        type Row = String;
        type Error = String;

        fn key(row: &String) -> &str {
            row
        }

        fn unavailable(why: &str) -> String {
            format!("unavailable: {why}")
        }

        fn retry_alone(error: &String) -> bool {
            !error.starts_with("unavailable")
        }

        fn copy(error: &String) -> String {
            error.clone()
        }

        async fn load(source: &Source, keys: &[String]) -> Result<Vec<String>, String> {
            source.0.sent.lock().unwrap().push(keys.to_vec());
            assert!(!keys.iter().any(|k| k == "panic"), "a lookup's bug");
            source.0.permits.acquire().await.unwrap().forget();
            if source.0.failing.load(Ordering::SeqCst) {
                return Err("the server went away".into());
            }
            Ok(keys
                .iter()
                .filter(|k| !k.starts_with("missing"))
                .cloned()
                .collect())
        }
    }

    /// The statements sent, in order, each one's keys sorted (reads spawned together queue in
    /// any order).
    fn sent(source: &Source) -> Vec<Vec<String>> {
        let mut sent = source.0.sent.lock().unwrap().clone();
        sent.iter_mut().for_each(|keys| keys.sort());
        sent
    }

    /// Waits until `done`, for 2 s at most.
    async fn until(done: impl Fn() -> bool, what: &str) {
        for _ in 0..1000 {
            if done() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        panic!("never: {what}");
    }

    /// Waits until `n` statements have been sent.
    async fn until_sent(source: &Source, n: usize) {
        until(|| sent(source).len() >= n, &format!("{n} statements sent")).await;
    }

    fn batcher(home: Handle, limit: Duration) -> (Arc<Batcher<ByKey>>, Source) {
        (Arc::new(Batcher::new(home, limit)), Source::default())
    }

    /// Waits until `n` reads are queued.
    async fn queued(batcher: &Batcher<ByKey>, n: usize) {
        while lock(&batcher.queue).waiting.len() < n {
            tokio::task::yield_now().await;
        }
    }

    /// The tests' limit on a statement: none of theirs takes it, unless stalled on purpose.
    const LIMIT: Duration = Duration::from_secs(5);

    fn read(
        batcher: &Arc<Batcher<ByKey>>,
        source: &Source,
        key: &str,
    ) -> tokio::task::JoinHandle<Result<Option<String>, String>> {
        let (batcher, source, key) = (batcher.clone(), source.clone(), key.to_owned());
        tokio::spawn(async move { batcher.get(&source, &key).await })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_arriving_while_a_statement_is_out_go_together_in_the_next() {
        let (batcher, source) = batcher(Handle::current(), LIMIT);
        let first = read(&batcher, &source, "a");
        until_sent(&source, 1).await;
        let keys = ["b", "c", "b", "missing-d", "e"];
        let later: Vec<_> = keys.iter().map(|k| read(&batcher, &source, k)).collect();
        // Each read is queued before the first statement is answered.
        queued(&batcher, keys.len()).await;
        source.0.permits.add_permits(2);
        assert_eq!(first.await.unwrap().unwrap().as_deref(), Some("a"));
        let mut got = Vec::new();
        for read in later {
            got.push(read.await.unwrap().unwrap());
        }
        let expected: Vec<Option<String>> = keys
            .iter()
            .map(|k| (!k.starts_with("missing")).then(|| k.to_string()))
            .collect();
        assert_eq!(got, expected);
        // The second statement: each key once.
        assert_eq!(sent(&source), [vec!["a"], vec!["b", "c", "e", "missing-d"]]);
        until(|| !batcher.queue.lock().unwrap().sending, "the turn ends").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_statement_holds_at_most_its_share_of_keys_padded_to_a_power_of_two() {
        let (batcher, source) = batcher(Handle::current(), LIMIT);
        let first = read(&batcher, &source, "first");
        until_sent(&source, 1).await;
        let keys: Vec<String> = (0..MOST_KEYS + 3).map(|i| format!("k{i}")).collect();
        let later: Vec<_> = keys.iter().map(|k| read(&batcher, &source, k)).collect();
        queued(&batcher, keys.len()).await;
        source.0.permits.add_permits(3);
        first.await.unwrap().unwrap();
        for (read, key) in later.into_iter().zip(&keys) {
            assert_eq!(read.await.unwrap().unwrap().as_ref(), Some(key));
        }
        let statements = source.0.sent.lock().unwrap().clone();
        let sizes: Vec<usize> = statements.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, MOST_KEYS, 4]);
        // The third: the 3 keys left, padded to 4 with its first.
        assert_eq!(statements[2][3], statements[2][0]);
        let mut all: Vec<&String> = statements[1].iter().chain(&statements[2][..3]).collect();
        all.sort();
        let mut expected: Vec<&String> = keys.iter().collect();
        expected.sort();
        assert_eq!(all, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_statement_sends_each_of_its_keys_alone() {
        let (batcher, source) = batcher(Handle::current(), LIMIT);
        source.0.failing.store(true, Ordering::SeqCst);
        let first = read(&batcher, &source, "a");
        until_sent(&source, 1).await;
        let later = [
            read(&batcher, &source, "b"),
            read(&batcher, &source, "c"),
            read(&batcher, &source, "b"),
        ];
        queued(&batcher, later.len()).await;
        // a fails (a key alone is not sent again); the statement of b and c fails too.
        source.0.permits.add_permits(2);
        assert_eq!(first.await.unwrap(), Err("the server went away".into()));
        // Then b and c run alone, once each, and now succeed.
        until_sent(&source, 4).await;
        source.0.failing.store(false, Ordering::SeqCst);
        source.0.permits.add_permits(2);
        for (read, key) in later.into_iter().zip(["b", "c", "b"]) {
            assert_eq!(read.await.unwrap().unwrap().as_deref(), Some(key));
        }
        let mut statements = sent(&source);
        statements.sort();
        assert_eq!(
            statements,
            [vec!["a"], vec!["b"], vec!["b", "c"], vec!["c"]]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_statement_that_does_not_answer_in_time_holds_up_no_later_read() {
        let limit = Duration::from_millis(500);
        let (batcher, source) = batcher(Handle::current(), limit);
        let stuck = read(&batcher, &source, "a").await.unwrap();
        assert_eq!(
            stuck,
            Err("unavailable: a state store lookup did not answer in time".into())
        );
        // The next read has a statement of its own (the stuck one, let go, finishes too).
        source.0.permits.add_permits(2);
        let later = read(&batcher, &source, "b");
        assert_eq!(later.await.unwrap().unwrap().as_deref(), Some("b"));
        assert_eq!(sent(&source), [vec!["a"], vec!["b"]]);
        until(
            || source.0.permits.available_permits() == 0,
            "the stuck statement to run to its end",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_statement_that_panics_fails_its_reads_alone() {
        let (batcher, source) = batcher(Handle::current(), LIMIT);
        let panicked = read(&batcher, &source, "panic").await.unwrap();
        assert_eq!(
            panicked,
            Err("unavailable: a state store lookup panicked".into())
        );
        source.0.permits.add_permits(1);
        let later = read(&batcher, &source, "b");
        assert_eq!(later.await.unwrap().unwrap().as_deref(), Some("b"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_dropped_while_its_statement_is_out_strands_no_other() {
        let (batcher, source) = batcher(Handle::current(), LIMIT);
        let first = read(&batcher, &source, "a");
        until_sent(&source, 1).await;
        let later = read(&batcher, &source, "b");
        queued(&batcher, 1).await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        source.0.permits.add_permits(3);
        assert_eq!(later.await.unwrap().unwrap().as_deref(), Some("b"));
        let after = read(&batcher, &source, "c");
        assert_eq!(after.await.unwrap().unwrap().as_deref(), Some("c"));
        assert_eq!(sent(&source), [vec!["a"], vec!["b"], vec!["c"]]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_are_answered_as_stopped_when_the_home_runtime_stops() {
        let home = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (batcher, source) = batcher(home.handle().clone(), LIMIT);
        let first = read(&batcher, &source, "a");
        until_sent(&source, 1).await;
        let later = read(&batcher, &source, "b");
        queued(&batcher, 1).await;
        home.shutdown_background();
        assert_eq!(
            first.await.unwrap(),
            Err("unavailable: the broker is stopping".into())
        );
        assert_eq!(
            later.await.unwrap(),
            Err("unavailable: the broker is stopping".into())
        );
        // A read after the stop is answered too, never left waiting.
        let after = read(&batcher, &source, "c");
        assert_eq!(
            after.await.unwrap(),
            Err("unavailable: the broker is stopping".into())
        );
        assert_eq!(sent(&source), [vec!["a"]]);
    }
}
