#!/usr/bin/env bash
# Writes crates/<broker>/symbol-order.txt: the functions a release build of the broker runs,
# those of its start first, then those of a lifecycle (catalog, provision, bind, the reads,
# unbind, deprovision). The broker's build.rs hands the file to the linker (lld's
# --symbol-ordering-file), which puts these functions first and together: the code a broker
# runs then takes a few MiB of contiguous pages instead of pages all over its 12 MiB of code,
# and that is most of its resident memory (docs/benchmarks.md).
#
# Run it after any change to the broker's code, a dependency or the toolchain: LTO numbers
# local functions anew at every change (names it lists that a build no longer has
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
# The list goes into place only once it is whole (a function's name does not depend on where
# the linker puts it, so the builds below may use the old one).
work=$(realpath "$(mktemp -d)")
running=""
cleanup() {
    stop_broker
    rm -rf "$work"
}
trap cleanup EXIT
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

# Stops the broker under valgrind, if one runs: SIGTERM (a clean exit writes the profile),
# then SIGKILL after 60 s.
stop_broker() {
    [ -n "$running" ] || return 0
    kill -TERM "$running" 2>/dev/null || true
    for _ in $(seq 1 600); do
        kill -0 "$running" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$running" 2>/dev/null || true
    wait "$running" 2>/dev/null || true
    running=""
}

# One run of $binary under callgrind: until it is ready, then `$2` (a command), then a clean
# stop. Its profile goes to $work/$1.out.
profile() {
    if curl -s -o /dev/null --max-time 2 "$base/"; then
        echo "something already listens on 127.0.0.1:$port" >&2
        exit 1
    fi
    KPAAS_BROKER__USERNAME=broker KPAAS_BROKER__PASSWORD=broker-secret \
    KPAAS_BROKER__ENCRYPTION_KEY=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY= \
    KPAAS_BROKER__STORE__URL="sqlite://$work/$1.db" KPAAS_BROKER__LISTEN=127.0.0.1:$port \
    RUST_LOG=warn valgrind --tool=callgrind --demangle=no --compress-strings=no \
        --compress-pos=no --callgrind-out-file="$work/$1.out" \
        "$binary" --config "$config" >"$work/$1.log" 2>&1 &
    running=$!
    local tries=0
    until [ "$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' -u broker:broker-secret \
        -H 'X-Broker-API-Version: 2.17' "$base/ready")" = 200 ]; do
        tries=$((tries + 1))
        if [ $tries -gt 600 ] || ! kill -0 "$running" 2>/dev/null; then
            echo "$broker did not get ready under valgrind; its output:" >&2
            cat "$work/$1.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    "$2"
    stop_broker
}

osb() {
    curl -sSf --max-time 60 -u broker:broker-secret -H 'X-Broker-API-Version: 2.17' \
        -H 'Content-Type: application/json' "$@"
}

# Polls last_operation (of an instance, or `$2` binding) until it succeeded; a sync operation
# has none (410 or 404 after a removal, 200 "succeeded" after a creation).
settle() {
    local url="$base/v2/service_instances/$1" state
    [ -n "${2:-}" ] && url="$url/service_bindings/$2"
    for _ in $(seq 1 300); do
        state=$(curl -s --max-time 60 -u broker:broker-secret -H 'X-Broker-API-Version: 2.17' \
            "$url/last_operation")
        case "$state" in
            *'"in progress"'*) sleep 0.2 ;;
            *'"failed"'*) echo "operation on $url failed: $state" >&2; exit 1 ;;
            *) return 0 ;;
        esac
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
python3 - "$work" "$work/symbol-order.txt" <<'PY'
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
    if not first or not rest:
        sys.exit(f"{build} build: a profile named none of the binary's functions")
    firsts.append(first)
    rests.append(rest)
listed = list(dict.fromkeys(name for names in firsts + rests for name in names))
with open(out, "w") as f:
    f.writelines(name + "\n" for name in listed)
print(f"{len(listed)} names")
PY
mv "$work/symbol-order.txt" "$out"
echo "$out written with $(rustc -V)"
