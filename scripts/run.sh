#!/usr/bin/env bash
# Starts every broker binary of the workspace on the local backends and prints how to reach it.
set -euo pipefail
cd "$(dirname "$0")/.."
brokers=$(ls -d crates/*-broker 2>/dev/null || true)
if [ -z "$brokers" ]; then
    echo "run: no broker binary exists yet (only osb-core and osb-testkit); nothing to start." >&2
    echo "run: backends are up; see README.md for the status of each broker." >&2
    exit 1
fi
