# The two commands of the README: `make run` and `make test`.
.PHONY: run test lint backends build bench

backends:
	bash scripts/backends.sh

build:
	cargo build --workspace --bins

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# The end-to-end tests in tests/ run the broker binaries, so those are built first.
test: backends lint
	cargo build --workspace --bins
	cargo test --workspace

run: backends build
	bash scripts/run.sh

# Prints throughput and memory figures (docs/benchmarks.md), then issue #14's goals as a
# table; asserts nothing about speed.
bench: backends
	bash scripts/bench.sh
