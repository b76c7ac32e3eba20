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

# Prints throughput and memory figures (docs/benchmarks.md); asserts nothing about speed.
bench: backends
	bash scripts/bench-tools.sh
	cargo bench -p mysql-broker --bench reads
	cargo bench -p mysql-broker --bench cycles
	cargo bench -p mysql-broker --bench upkeep
	cargo bench -p mongodb-broker --bench cycles
	cargo bench -p rabbitmq-broker --bench cycles
	cargo bench -p redis-broker --bench provision
	cargo bench -p glusterfs-broker --bench provision
