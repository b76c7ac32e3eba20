#!/usr/bin/env bash
# Writes crates/<broker>/symbol-order.txt: the functions a release build of the broker runs,
# those of its start first, then those of a lifecycle (catalog, provision, bind, the reads,
# unbind, deprovision). The broker's build.rs hands the file to the linker (lld's
# --symbol-ordering-file), which puts these functions first and together: the code a broker
# runs then takes a few MiB of contiguous pages instead of pages all over its 12 MiB of code,
# and that is most of its resident memory (docs/benchmarks.md).
#
# Run it after a dependency or toolchain update (names it lists that a build no longer has
# are skipped: the layout degrades, the build does not break). It runs the broker under
# valgrind's callgrind, on its deploy/<broker>.toml and a SQLite state store, against the
# backends scripts/backends.sh starts.
#
# Usage: scripts/symbol-order.sh mysql-broker
set -euo pipefail
cd "$(dirname "$0")/.."
broker=${1:?usage: scripts/symbol-order.sh <broker crate>}
config=deploy/$broker.toml
out=crates/$broker/symbol-order.txt
[ -f "$config" ] || { echo "no $config" >&2; exit 1; }
if ! command -v valgrind >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >/dev/null
fi
# Without the old file, so the builds whose names are listed are the ones measured.
rm -f "$out"
work=$(mktemp -d)
trap 'pkill -INT -f "callgrind-out-file=$work" 2>/dev/null || true; rm -rf "$work"' EXIT
# Two builds of the binary: `cargo build --release` (what is deployed) and the one `cargo bench`
# makes for the benchmarks, whose dependencies have the dev-dependencies' features too. Their
# crates differ, so do the hashes in their functions' names: the list holds both builds'
# names, and each build's linker skips the other's.
cargo build --release -p "$broker"
cp "target/release/$broker" "$work/release"
cargo bench -p "$broker" --no-run
cp "target/release/$broker" "$work/bench"
port=18557
base=http://127.0.0.1:$port

# One run of $binary under callgrind: until it is ready, then `$2` (a command), then a clean
# stop. Its profile goes to $work/$1.out.
profile() {
    KPAAS_BROKER__USERNAME=broker KPAAS_BROKER__PASSWORD=broker-secret \
    KPAAS_BROKER__ENCRYPTION_KEY=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY= \
    KPAAS_BROKER__STORE__URL="sqlite://$work/$1.db" KPAAS_BROKER__LISTEN=127.0.0.1:$port \
    RUST_LOG=warn valgrind --tool=callgrind --demangle=no --compress-strings=no \
        --compress-pos=no --callgrind-out-file="$work/$1.out" \
        "$binary" --config "$config" >"$work/$1.log" 2>&1 &
    local pid=$!
    local tries=0
    until [ "$(curl -s -o /dev/null -w '%{http_code}' -u broker:broker-secret \
        -H 'X-Broker-API-Version: 2.17' "$base/ready")" = 200 ]; do
        tries=$((tries + 1))
        if [ $tries -gt 600 ] || ! kill -0 $pid 2>/dev/null; then
            echo "$broker did not get ready under valgrind; its output:" >&2
            cat "$work/$1.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    "$2"
    kill -INT $pid
    wait $pid || true
}

osb() {
    curl -sS -u broker:broker-secret -H 'X-Broker-API-Version: 2.17' \
        -H 'Content-Type: application/json' "$@"
}

# Polls last_operation (of an instance, or `$2` binding) until it is no longer in progress.
settle() {
    local url="$base/v2/service_instances/$1"
    [ -n "${2:-}" ] && url="$url/service_bindings/$2"
    for _ in $(seq 1 300); do
        osb "$url/last_operation" | grep -q '"in progress"' || return 0
        sleep 0.2
    done
    echo "operation on $url still in progress after 60 s" >&2
    exit 1
}

nothing() { :; }

lifecycle() {
    local catalog service plan instance binding
    catalog=$(osb "$base/v2/catalog")
    service=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["services"][0]["id"])' <<<"$catalog")
    plan=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["services"][0]["plans"][0]["id"])' <<<"$catalog")
    instance=$(cat /proc/sys/kernel/random/uuid)
    binding=$(cat /proc/sys/kernel/random/uuid)
    local ids="service_id=$service&plan_id=$plan&accepts_incomplete=true"
    osb -X PUT "$base/v2/service_instances/$instance?accepts_incomplete=true" \
        -d "{\"service_id\":\"$service\",\"plan_id\":\"$plan\",\"organization_guid\":\"o\",\"space_guid\":\"s\"}" >/dev/null
    settle "$instance"
    osb -X PUT "$base/v2/service_instances/$instance/service_bindings/$binding?accepts_incomplete=true" \
        -d "{\"service_id\":\"$service\",\"plan_id\":\"$plan\"}" >/dev/null
    settle "$instance" "$binding"
    osb "$base/v2/service_instances/$instance" >/dev/null
    osb "$base/v2/service_instances/$instance/service_bindings/$binding" >/dev/null
    osb "$base/v2/service_instances/$instance/last_operation" >/dev/null
    osb -X DELETE "$base/v2/service_instances/$instance/service_bindings/$binding?$ids" >/dev/null
    settle "$instance" "$binding"
    osb -X DELETE "$base/v2/service_instances/$instance?$ids" >/dev/null
    settle "$instance"
    osb "$base/metrics" >/dev/null
}

for build in release bench; do
    binary=$work/$build
    profile "$build-start" nothing
    profile "$build-lifecycle" lifecycle
done

# The functions of the broker's own binary each profile ran, in the binary's address order
# (which keeps a crate's functions near each other): the start's first, then the rest.
python3 - "$work" "$out" <<'PY'
import subprocess, sys
work, out = sys.argv[1:]

def addresses(binary):
    found = {}
    for line in subprocess.run(["nm", "--defined-only", binary], capture_output=True,
                               text=True, check=True).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tT":
            found[parts[2]] = int(parts[0], 16)
    return found

def ran(binary, profile, address):
    names, in_binary = set(), False
    for line in open(profile, errors="replace"):
        if line.startswith("ob="):
            in_binary = line[3:].strip() == binary
        elif line.startswith("fn=") and in_binary:
            # callgrind marks recursion levels as name'2, name'3, ...
            names.add(line[3:].strip().split("'")[0])
    return sorted((n for n in names if n in address), key=address.get)

firsts, rests = [], []
for build in ("release", "bench"):
    binary = f"{work}/{build}"
    address = addresses(binary)
    first = ran(binary, f"{work}/{build}-start.out", address)
    started = set(first)
    rest = [n for n in ran(binary, f"{work}/{build}-lifecycle.out", address) if n not in started]
    print(f"{build} build: {len(first)} functions of the start, then {len(rest)} more of a lifecycle")
    firsts.append(first)
    rests.append(rest)
listed = list(dict.fromkeys(name for names in firsts + rests for name in names))
with open(out, "w") as f:
    f.writelines(name + "\n" for name in listed)
print(f"{out}: {len(listed)} names")
PY
