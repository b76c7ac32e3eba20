# The two commands of the README: `make run` and `make test`.
.PHONY: run test lint backends build

backends:
	bash scripts/backends.sh

build:
	cargo build --workspace --bins

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

test: backends lint
	cargo test --workspace

run: backends build
	bash scripts/run.sh
