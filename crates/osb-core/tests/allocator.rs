//! The allocator's settings are the whole process's: this test has a process of its own.

/// Blocks under glibc's initial threshold (128 KiB) but over the broker's are mapped on their
/// own once the allocator is tuned, and given back to the system when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn large_blocks_are_given_back_when_freed() {
    for name in ["MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"] {
        assert!(
            std::env::var_os(name).is_none(),
            "{name} is set: the test measures the broker's own threshold"
        );
    }
    osb_core::allocator::tune();
    let size = 96 * 1024;
    assert!((osb_core::allocator::MMAP_THRESHOLD..128 * 1024).contains(&size));
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let mapped = || unsafe { libc::mallinfo2() }.hblkhd;
    let before = mapped();
    // The heap's free room serves a block before a mapping would: a few may come from there.
    let blocks: Vec<Vec<u8>> = (0..8).map(|i| vec![i as u8; size]).collect();
    let during = mapped();
    assert!(
        during >= before + 4 * size,
        "mapped {before} -> {during} bytes for 8 blocks of {size}"
    );
    drop(blocks);
    let after = mapped();
    assert!(
        after <= before,
        "mapped {before} -> {during} -> {after} bytes after freeing them"
    );
}
