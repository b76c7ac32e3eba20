//! Release builds put the functions the broker runs (its start, then a lifecycle) first and
//! together, from the list scripts/symbol-order.sh writes: most of an idle broker's memory is
//! the pages of code it ran, and scattered over all of its code those were three times as
//! many (docs/benchmarks.md). Only with lld, the linker Rust uses for x86-64 Linux.

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    let release = std::env::var("PROFILE").as_deref() == Ok("release");
    let lld_target = std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu");
    let order = std::path::Path::new("symbol-order.txt");
    if release && lld_target && order.exists() {
        let order = order.canonicalize().expect("symbol-order.txt has a path");
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        // Names a later build no longer has (a dependency or the compiler changed) are
        // skipped: run scripts/symbol-order.sh again.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
