//! What the store's connections send: statements, and the commits among them (and the writes
//! run again after a deadlock). Shown on
//! `/metrics`; the lifecycle benchmarks print them per cycle (each commit is a write the store
//! makes durable, the cost a platform's request pays).

use std::fmt::Write as _;

use diesel::connection::{Instrumentation, InstrumentationEvent};
use prometheus::IntCounter;

/// One store's counts, shared by all of its connections.
#[derive(Clone)]
pub struct StoreCounters {
    pub statements: IntCounter,
    pub commits: IntCounter,
    /// Bodies run again because the server rolled them back to end a deadlock: rare, so one
    /// that climbs says two writes keep meeting.
    pub deadlock_retries: IntCounter,
}

impl StoreCounters {
    pub fn new() -> Self {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        Self {
            statements: counter(
                "osb_store_statements_total",
                "Statements sent to the state store, transaction control included",
            ),
            commits: counter(
                "osb_store_commits_total",
                "Commits of the state store: transactions, and writes outside one",
            ),
            deadlock_retries: counter(
                "osb_store_deadlock_retries_total",
                "State store writes run again after the server rolled them back to end a deadlock",
            ),
        }
    }
}

impl Default for StoreCounters {
    fn default() -> Self {
        Self::new()
    }
}

/// A connection's instrumentation: counts into its store's [`StoreCounters`], and remembers
/// whether a statement failed since it was last asked (the connection may be dead).
pub(super) struct Counting {
    counters: StoreCounters,
    /// Whether the connection can write at all (SQLite's readers cannot): telling a write
    /// apart renders the statement, a cost the read path need not pay.
    writer: bool,
    in_transaction: bool,
    failed: bool,
}

impl Counting {
    pub(super) fn new(counters: StoreCounters, writer: bool) -> Self {
        Self {
            counters,
            writer,
            in_transaction: false,
            failed: false,
        }
    }

    /// Whether a statement failed since the last call.
    pub(super) fn take_failed(&mut self) -> bool {
        std::mem::take(&mut self.failed)
    }
}

impl Instrumentation for Counting {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            InstrumentationEvent::StartQuery { .. } => self.counters.statements.inc(),
            InstrumentationEvent::FinishQuery { query, error, .. } => {
                if error.is_some() {
                    self.failed = true;
                } else if self.writer && !self.in_transaction && writes(&query) {
                    self.counters.commits.inc();
                }
            }
            InstrumentationEvent::BeginTransaction { depth, .. } if depth.get() == 1 => {
                self.in_transaction = true;
            }
            InstrumentationEvent::CommitTransaction { depth, .. } if depth.get() == 1 => {
                self.in_transaction = false;
                self.counters.commits.inc();
            }
            InstrumentationEvent::RollbackTransaction { depth, .. } if depth.get() == 1 => {
                self.in_transaction = false;
            }
            _ => {}
        }
    }
}

/// Whether a statement changes rows, from its first word (the sink refuses more; diesel still
/// renders the statement's SQL first).
fn writes(query: &dyn std::fmt::Display) -> bool {
    struct FirstWord(String);
    impl std::fmt::Write for FirstWord {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            for c in s.chars() {
                if c.is_ascii_alphabetic() {
                    self.0.push(c.to_ascii_uppercase());
                } else if !self.0.is_empty() || !c.is_whitespace() {
                    return Err(std::fmt::Error);
                }
            }
            Ok(())
        }
    }
    let mut word = FirstWord(String::with_capacity(8));
    let _ = write!(word, "{query}");
    matches!(word.0.as_str(), "INSERT" | "UPDATE" | "DELETE" | "REPLACE")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_told_from_their_first_word() {
        assert!(writes(&"INSERT INTO `osb_operations` (`id`) VALUES (?)"));
        assert!(writes(&"  update osb_instances SET state = ?"));
        assert!(writes(&"DELETE FROM osb_leases"));
        assert!(!writes(&"SELECT `osb_instances`.`id` FROM `osb_instances`"));
        assert!(!writes(&"BEGIN"));
        assert!(!writes(&"INSERTED"));
        assert!(!writes(&""));
    }
}
