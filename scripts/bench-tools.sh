#!/usr/bin/env bash
# What `make bench` needs beyond scripts/backends.sh: wrk, the HTTP load generator the read
# benchmarks drive the brokers with. Installed from apt when missing; nothing else changes.
set -euo pipefail

if ! command -v wrk >/dev/null 2>&1; then
    echo "bench-tools: installing wrk" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
