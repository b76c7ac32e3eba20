//! HTTP workers pinned each to a core of its own (`broker.pin_workers`, off by default).
//!
//! With as many workers as cores and something else busy on the same cores (wrk in the
//! benchmarks), the scheduler now and then puts both workers on one core: each then waits a
//! whole time slice for the other, and the catalog's p99 jumps from about 0.3 ms to about 3 ms
//! (p50 0.07-0.12 ms either way). Measured by hand, six runs each on 2 cores: p99 0.25-3.28 ms
//! unpinned (three runs near 3 ms), 0.29-1.42 ms pinned. Off by default: where the process may
//! run on more cores than it has workers (a container under a CPU quota on a large node), the
//! workers would all sit on the first cores, with whatever else runs there. A thread a pinned
//! worker starts (its runtime's blocking threads) inherits the worker's core.

use std::cell::Cell;

thread_local! {
    /// Whether this thread took its turn already.
    static PINNED: Cell<bool> = const { Cell::new(false) };
}

/// The cores this process may run on, in order; empty where that cannot be known.
fn allowed_cores() -> Vec<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity writes at most the
        // size it is given, and CPU_ISSET reads the set it is handed.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&core| libc::CPU_ISSET(core, &set))
                .collect()
        }
    }
    #[cfg(not(target_os = "linux"))]
    Vec::new()
}

/// Pins the calling thread to `core`.
fn pin_current_thread(core: usize) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        if core >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::other(format!(
                "core {core} is out of range"
            )));
        }
        // SAFETY: a zeroed cpu_set_t is an empty set, `core` is within it (checked above), and
        // sched_setaffinity reads at most the size it is given.
        let done = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(core, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if done != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    Err(std::io::Error::other(
        "pinning threads is only supported on Linux",
    ))
}

/// Hands each HTTP worker, as it starts, the next of the allowed cores in turn.
pub struct WorkerCores {
    cores: Vec<usize>,
    next: std::sync::atomic::AtomicUsize,
}

impl WorkerCores {
    /// `None` when the allowed cores cannot be known.
    pub fn new() -> Option<Self> {
        let cores = allowed_cores();
        (!cores.is_empty()).then(|| Self {
            cores,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Pins the calling worker thread to its core, at its first call only: actix calls the
    /// factory on a worker once per listening socket (a `listen` name that resolves to two
    /// addresses) and again for a service it restarts, and a second turn could put two
    /// workers on one core. A failure is logged, the worker runs on.
    pub fn pin_this_worker(&self) {
        if PINNED.with(|pinned| pinned.replace(true)) {
            return;
        }
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let core = self.cores[turn % self.cores.len()];
        match pin_current_thread(core) {
            Ok(()) => tracing::debug!(core, "HTTP worker pinned"),
            Err(e) => tracing::warn!(core, error = %e, "HTTP worker not pinned"),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_pinned_runs_on_that_core_alone() {
        let cores = allowed_cores();
        assert!(!cores.is_empty(), "this process may run on some core");
        let last = *cores.last().unwrap();
        let seen = std::thread::spawn(move || {
            pin_current_thread(last).unwrap();
            allowed_cores()
        })
        .join()
        .unwrap();
        assert_eq!(seen, vec![last]);
        assert_eq!(
            allowed_cores(),
            cores,
            "the other threads are left as they were"
        );
        assert!(pin_current_thread(libc::CPU_SETSIZE as usize).is_err());
    }

    #[test]
    fn workers_take_the_allowed_cores_in_turn() {
        let pins = WorkerCores::new().unwrap();
        let n = pins.cores.len();
        let seen: Vec<Vec<usize>> = (0..n + 1)
            .map(|_| {
                std::thread::scope(|s| {
                    s.spawn(|| {
                        // As actix does for a worker with two listening sockets.
                        pins.pin_this_worker();
                        pins.pin_this_worker();
                        allowed_cores()
                    })
                    .join()
                    .unwrap()
                })
            })
            .collect();
        let expected: Vec<Vec<usize>> = (0..n + 1).map(|i| vec![pins.cores[i % n]]).collect();
        assert_eq!(seen, expected);
    }
}
