//! The C allocator's settings for a long-running broker (glibc; other C libraries keep their
//! own defaults).
//!
//! glibc serves a large block from its own mapping, unmapped when freed, but it raises that
//! threshold to the size of each such block freed (up to 32 MiB): after the first, large
//! short-lived buffers (an AMQP connection's frame buffers, an HTTP body) come from the heap
//! instead and stay resident once freed. A fixed threshold gives every one of them back when
//! freed: 4 MiB less peak RSS in rabbitmq-broker's lifecycle bench, no rate lost. glibc also
//! gives each thread that meets contention an arena of its own, up to eight per core, each
//! keeping what was freed in it; two serve a broker's load.
//!
//! An operator's own settings win: with any of [`OPERATOR_SETTINGS`] in the environment,
//! nothing here changes.

/// Blocks from this size up are mapped on their own and unmapped when freed.
pub const MMAP_THRESHOLD: usize = 64 * 1024;
/// Arenas at most.
pub const ARENA_MAX: usize = 2;

/// The environment through which glibc takes an operator's allocator settings.
pub const OPERATOR_SETTINGS: [&str; 4] = [
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "GLIBC_TUNABLES",
];

/// Sets the allocator up, first thing in `main`.
pub fn tune() {
    if operator_tuned(|name| std::env::var_os(name).is_some()) {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets the allocator's parameters, under the allocator's own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX as libc::c_int);
    }
}

fn operator_tuned(set: impl Fn(&str) -> bool) -> bool {
    OPERATOR_SETTINGS.iter().any(|name| set(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_setting_of_the_operators_leaves_the_allocator_alone() {
        assert!(!operator_tuned(|_| false));
        for name in OPERATOR_SETTINGS {
            assert!(operator_tuned(|n| n == name), "{name}");
        }
    }
}
