//! Runs backend operations as tasks that outlive the request, keeps their heartbeats, and fails
//! operations whose runner died (a crashed or killed replica) so none stays "in progress".

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::store::{Store, now_ms};

/// Lease and heartbeat timing of operations.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// An operation whose heartbeat is older than this is taken as dead.
    pub lease: Duration,
    /// How often running operations are marked alive and dead ones looked for.
    pub heartbeat: Duration,
    /// How long a repeated synchronous request waits for the identical one already running.
    pub sync_wait: Duration,
    /// How long one instance's upkeep may take before it is given up for this pass.
    pub upkeep_timeout: Duration,
    /// How long finished operations no row points to any more are kept (for `last_operation`
    /// after a delete).
    pub retention: Duration,
}

#[derive(Clone)]
pub struct Runner {
    handle: Handle,
    replica: Arc<str>,
    /// This process: the replica id and a nonce of this start. Only the process that runs an
    /// operation may write its end, so a replica that stalled and was taken over cannot.
    token: Arc<str>,
    running: Arc<Mutex<HashSet<String>>>,
    metrics: Metrics,
    /// Set once the broker stops: periodic loops end.
    stopped: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Runner {
    /// Captures the current Tokio runtime: every operation runs there, not on an HTTP worker.
    pub fn new(replica: String, metrics: Metrics) -> Self {
        Self {
            handle: Handle::current(),
            token: format!(
                "{replica}/{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )
            .into(),
            replica: replica.into(),
            running: Arc::default(),
            metrics,
            stopped: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// Ends the periodic loops (operations already running are not touched).
    pub fn shutdown(&self) {
        self.stopped.send_replace(true);
    }

    /// Runs `pass` every `every` until [`Runner::shutdown`].
    pub fn every<F, Fut>(&self, every: Duration, mut pass: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let mut stopped = self.stopped.subscribe();
        self.handle.spawn(async move {
            let mut tick = tokio::time::interval(every);
            while !*stopped.borrow_and_update() {
                tokio::select! {
                    _ = tick.tick() => pass().await,
                    // Either a change (to stopped) or the sender gone: both end the loop.
                    _ = stopped.changed() => return,
                }
            }
        });
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether this process runs operation `op` right now.
    pub fn is_running(&self, op: &str) -> bool {
        self.running.lock().unwrap().contains(op)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs `work` on the broker's runtime (not the request's), so that a client that hangs up
    /// does not cancel a half-done backend operation.
    pub fn spawn<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> JoinHandle<T> {
        self.handle.spawn(work)
    }

    /// Runs an operation's task, tracked for heartbeats until it ends.
    pub fn spawn_operation<T: Send + 'static>(
        &self,
        op_id: &str,
        work: impl Future<Output = T> + Send + 'static,
    ) -> JoinHandle<T> {
        let guard = RunningGuard::new(self.clone(), op_id.to_owned());
        self.spawn(async move {
            let _guard = guard;
            work.await
        })
    }

    /// Waits until no operation runs, or `limit` has passed (then the rest is left to the
    /// reaper of another replica or the next start).
    pub async fn drain(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = self.running.lock().unwrap().len();
            if left == 0 {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(operations = left, "stopping with operations still running");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Heartbeats and pruning of old operation records, until the broker stops.
    pub fn start_maintenance(&self, store: Store, timing: Timing) {
        let pruned = store.clone();
        let every = timing.retention.min(Duration::from_secs(300));
        self.every(every, move || {
            let store = pruned.clone();
            async move {
                let before = now_ms() - timing.retention.as_millis() as i64;
                match store.prune_operations(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(operations = n, "pruned finished operations"),
                    Err(e) => tracing::warn!(error = %e, "pruning operations failed"),
                }
            }
        });
        let running = self.running.clone();
        let token = self.token.clone();
        self.every(timing.heartbeat, move || {
            let ids: Vec<String> = running.lock().unwrap().iter().cloned().collect();
            let (store, token) = (store.clone(), token.clone());
            async move {
                if let Err(e) = store.heartbeat(&ids, &token).await {
                    tracing::warn!(error = %e, "operation heartbeat failed");
                }
            }
        });
    }
}

/// Keeps an operation in the heartbeat set while its task lives, even if the task panics.
struct RunningGuard {
    runner: Runner,
    op_id: String,
}

impl RunningGuard {
    fn new(runner: Runner, op_id: String) -> Self {
        runner.running.lock().unwrap().insert(op_id.clone());
        runner.metrics.operation_started();
        Self { runner, op_id }
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.runner.running.lock().unwrap().remove(&self.op_id);
        self.runner.metrics.operation_ended();
    }
}
