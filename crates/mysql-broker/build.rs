//! Release builds put the functions the broker runs (its start, then a lifecycle) first and
//! together, from the list scripts/symbol-order.sh writes: most of an idle broker's memory is
//! the pages of code it ran, and scattered over all of its code those were three times as
//! many (docs/benchmarks.md). Only where the linker is surely lld, which alone reads such a
//! list: x86-64 Linux (glibc) with rustc 1.90 or later and no linker chosen by the operator.
//! `KPAAS_SYMBOL_ORDER=0` turns it off.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    for var in ["KPAAS_SYMBOL_ORDER", "RUSTC_LINKER"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let order = std::path::Path::new("symbol-order.txt");
    let wanted = env("PROFILE") == "release" && env("KPAAS_SYMBOL_ORDER") != "0";
    if wanted && order.exists() && linker_is_lld(&env) {
        let order = order.canonicalize().expect("symbol-order.txt has a path");
        // Through -Xlinker, not -Wl: a comma in the path would split it.
        println!("cargo:rustc-link-arg-bins=-Xlinker");
        println!(
            "cargo:rustc-link-arg-bins=--symbol-ordering-file={}",
            order.display()
        );
        // Names a later build no longer has (a dependency or the compiler changed) are
        // skipped: run scripts/symbol-order.sh again.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether this build links with rustc's own lld: its default for x86_64-unknown-linux-gnu
/// from 1.90 on, unless a linker, a linker flavour or `-fuse-ld` was chosen (GNU ld, gold and
/// mold refuse the list's option).
fn linker_is_lld(env: &dyn Fn(&str) -> String) -> bool {
    let flags = env("CARGO_ENCODED_RUSTFLAGS");
    let chosen = ["linker", "fuse-ld"]
        .iter()
        .any(|word| flags.contains(word));
    env("TARGET") == "x86_64-unknown-linux-gnu"
        && env("RUSTC_LINKER").is_empty()
        && !chosen
        && rustc_minor(&env("RUSTC")).is_some_and(|minor| minor >= 90)
}

/// The minor version of `rustc` (`rustc 1.95.0 (...)` → 95).
fn rustc_minor(rustc: &str) -> Option<u32> {
    let out = Command::new(rustc).arg("-V").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.split_whitespace()
        .nth(1)?
        .split('.')
        .nth(1)?
        .parse()
        .ok()
}
