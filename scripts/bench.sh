#!/usr/bin/env bash
# `make bench`: every benchmark in one run, then the goals they record (issue #14's) as one
# table: each goal, this run's figure, met or not (`osb_testkit::bench::goal`). Prints figures;
# fails only when a benchmark cannot run, never on a goal missed, and prints the goals recorded
# so far even then.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bench-tools.sh

BENCH_GOALS="$(mktemp)"
export BENCH_GOALS
# The lifecycle on a MariaDB state store, in a database of its own on the backend's server.
store_db="kpaas_bench_store_$$"
admin() { mariadb --protocol=tcp -h127.0.0.1 -P3306 -uroot -e "$1"; }

# The table, after a line saying how many goals were met; `$1` is the run's exit status.
goals() {
    local met
    met=$(grep -c $'\tmet$' "$BENCH_GOALS" || true)
    echo
    echo "goals, this run ($(nproc) cores, $(date -u +%F)): $met of $(wc -l < "$BENCH_GOALS") met"
    if [ "$1" != 0 ]; then
        echo "  (stopped early: a benchmark failed; these are the goals recorded before it)"
    fi
    # Padded by awk's own count of each cell: the goals keep to ASCII, so it lines up under
    # mawk too, which counts bytes.
    { printf 'goal\tthis run\twanted\tmet?\n'; cat "$BENCH_GOALS"; } | awk -F'\t' '
        { for (i = 1; i <= 4; i++) { cell[NR, i] = $i; if (length($i) > width[i]) width[i] = length($i) } }
        END {
            for (r = 1; r <= NR; r++)
                printf("  %-" width[1] "s  %-" width[2] "s  %-" width[3] "s  %s\n", cell[r, 1], cell[r, 2], cell[r, 3], cell[r, 4])
        }'
}

# The drop first: printing the table may fail (a closed pipe after ^C). The script's exit
# status stays the one it exited with.
finish() {
    local status=$?
    admin "DROP DATABASE IF EXISTS $store_db" || true
    goals "$status" || true
    rm -f "$BENCH_GOALS"
}
trap finish EXIT

# Before any benchmark: a machine without the client (scripts/backends.sh installs it) stops
# here, not half an hour in.
admin "DROP DATABASE IF EXISTS $store_db; CREATE DATABASE $store_db"

cargo bench -p mysql-broker --bench reads
cargo bench -p mysql-broker --bench cycles
BENCH_STORE_URL="mysql://root@127.0.0.1:3306/$store_db" cargo bench -p mysql-broker --bench cycles
cargo bench -p mysql-broker --bench upkeep
cargo bench -p mongodb-broker --bench cycles
cargo bench -p rabbitmq-broker --bench cycles
cargo bench -p redis-broker --bench provision
cargo bench -p glusterfs-broker --bench provision
