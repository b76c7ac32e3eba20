#!/usr/bin/env bash
# `make run`: starts every broker on the local backends, prints how to reach each, and keeps
# them running until Ctrl-C. Credentials and the encryption key are generated once into .run/.
set -euo pipefail
cd "$(dirname "$0")/.."
state="$PWD/.run"
mkdir -p "$state"
[ -s "$state/encryption.key" ] || head -c 32 /dev/urandom | base64 > "$state/encryption.key"
[ -s "$state/broker.password" ] || printf 'kp%s' "$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 30)" > "$state/broker.password"
chmod 600 "$state/encryption.key" "$state/broker.password"

pids=()
cleanup() {
    [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
    wait || true
    # glusterfs-broker's own mount of its volume outlives it.
    umount -l "$state/glusterfs-admin" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# start NAME PORT: runs target/debug/NAME with deploy/NAME.toml, a SQLite store in .run/.
start() {
    local name=$1 port=$2
    KPAAS_BROKER__LISTEN="127.0.0.1:$port" \
    KPAAS_BROKER__USERNAME=broker \
    KPAAS_BROKER__PASSWORD="$(cat "$state/broker.password")" \
    KPAAS_BROKER__ENCRYPTION_KEY="$(cat "$state/encryption.key")" \
    KPAAS_BROKER__STORE__URL="sqlite://$state/$name.db" \
    KPAAS_BROKER__LOG__FORMAT=pretty \
        "target/debug/$name" --config "deploy/$name.toml" >"$state/$name.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 150); do
        if curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1; then
            printf '%-16s http://127.0.0.1:%s  user: broker  password: %s  (log: .run/%s.log)\n' \
                "$name" "$port" "$(cat "$state/broker.password")" "$name"
            return 0
        fi
        sleep 0.2
    done
    echo "run: $name did not become ready; see .run/$name.log" >&2
    tail -n 20 "$state/$name.log" >&2
    return 1
}

start mysql-broker 8081
# The local MongoDB's admin account (scripts/backends.sh makes it).
export MONGODB_BROKER_ADMIN_URI='mongodb://kpaas_admin:Kpaas-mongo-admin-1@127.0.0.1:27017/?authSource=admin&directConnection=true'
start mongodb-broker 8082
# The local RabbitMQ's administrator (Debian's default guest, loopback only).
export RABBITMQ_BROKER_ADMIN_PASSWORD=guest
start rabbitmq-broker 8083
# The local Redis servers scripts/backends.sh starts for it (development passwords).
export REDIS_BROKER_SHARED_PASSWORD=Kpaas-redis-shared-1 REDIS_BROKER_POOL_PASSWORD=Kpaas-redis-pool-1
start redis-broker 8084
# glusterfs-broker mounts its volume itself (root only) and hands apps this host's name, which
# scripts/backends.sh made the volume's brick with; dedicated volumes get their bricks under
# .run/ (the root file system, hence forced).
if [ "$(id -u)" = 0 ]; then
    KPAAS_GLUSTERFS__SERVERS="[$(hostname)]" KPAAS_GLUSTERFS__ADMIN_MOUNT="$state/glusterfs-admin" \
        KPAAS_GLUSTERFS__DEDICATED__BRICKS="[\"$(hostname):$state/glusterfs-bricks\"]" \
        KPAAS_GLUSTERFS__DEDICATED__FORCE=true \
        start glusterfs-broker 8085
else
    echo "run: glusterfs-broker not started: it mounts GlusterFS volumes, which needs root" >&2
fi
echo "Try: curl -u broker:\$(cat .run/broker.password) -H 'X-Broker-API-Version: 2.17' http://127.0.0.1:8081/v2/catalog"
echo "Ctrl-C stops the brokers."
wait
