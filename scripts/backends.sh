#!/usr/bin/env bash
# Makes sure every backend the workspace needs is installed, running and ready on 127.0.0.1.
# Idempotent, and quick when everything is already up. Used by `make run` and `make test`.
set -euo pipefail

log() { printf 'backends: %s\n' "$*" >&2; }

apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# wait_for NAME SECONDS COMMAND...: polls COMMAND until it succeeds.
wait_for() {
    local name=$1 secs=$2
    shift 2
    for _ in $(seq 1 "$((secs * 5))"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    log "$name did not become ready within ${secs}s"
    return 1
}

mariadb_up() { mariadb-admin --protocol=tcp -h127.0.0.1 -P3306 -uroot ping; }
mariadb_root_tcp() { mariadb --protocol=tcp -h127.0.0.1 -P3306 -uroot -e 'SELECT 1'; }

ensure_mariadb() {
    if mariadb_up >/dev/null 2>&1 && mariadb_root_tcp >/dev/null 2>&1; then return 0; fi
    command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || apt_install mariadb-server mariadb-client
    if ! mariadb_up >/dev/null 2>&1; then
        log "starting MariaDB"
        install -d -o mysql -g mysql /run/mysqld
        # A fresh install refuses to run as root: run it as the mysql user, on loopback only.
        # A pidfile of its own: matched by executable alone, the second MariaDB (same binary)
        # would pass for this one.
        start-stop-daemon --start --oknodo --background --pidfile /run/mysqld/kpaas1.pid \
            --exec /usr/sbin/mariadbd -- \
            --user=mysql --bind-address=127.0.0.1 --port=3306 --pid-file=/run/mysqld/kpaas1.pid
        wait_for MariaDB 60 mariadb_up
    fi
    if ! mariadb_root_tcp >/dev/null 2>&1; then
        log "allowing root@localhost an empty-password login over TCP"
        mariadb -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD(''); FLUSH PRIVILEGES;"
        wait_for "MariaDB root login" 10 mariadb_root_tcp
    fi
}

# A second, independent MariaDB on 127.0.0.1:3307: mysql-broker places instances across
# several servers, and its tests need two real ones.
second_up() { mariadb --protocol=tcp -h127.0.0.1 -P3307 -uroot -e 'SELECT 1'; }

ensure_second_mariadb() {
    make_second_tls
    if second_up >/dev/null 2>&1 && [ "$(mariadb --protocol=tcp -h127.0.0.1 -P3307 -uroot -Nse 'SELECT @@have_ssl')" != YES ]; then
        log "restarting the second MariaDB with TLS"
        start-stop-daemon --stop --pidfile /run/mysqld/kpaas2.pid --exec /usr/sbin/mariadbd --retry 60 >/dev/null
    fi
    second_up >/dev/null 2>&1 || start_second_mariadb
    # What mysql_secure_installation does: a fresh data directory has anonymous accounts,
    # which would shadow the broker's 'user'@'%' accounts for logins from localhost, and grants
    # every account the `test` database.
    local anon
    anon=$(mariadb --protocol=tcp -h127.0.0.1 -P3307 -uroot -Nse \
        "SELECT GROUP_CONCAT(CONCAT(QUOTE(User),'@',QUOTE(Host))) FROM mysql.user WHERE User=''")
    if [ -n "$anon" ] && [ "$anon" != "NULL" ]; then
        log "dropping anonymous accounts of the second MariaDB"
        mariadb --protocol=tcp -h127.0.0.1 -P3307 -uroot -e "DROP USER $anon"
    fi
    mariadb --protocol=tcp -h127.0.0.1 -P3307 -uroot -e \
        "DELETE FROM mysql.db WHERE Db IN ('test', 'test\\\\_%'); FLUSH PRIVILEGES; DROP DATABASE IF EXISTS test;"
    # An admin account that can only log in over TLS (test-only password).
    mariadb --protocol=tcp -h127.0.0.1 -P3307 -uroot -e \
        "CREATE USER IF NOT EXISTS 'kpaas_tls_admin'@'%' IDENTIFIED BY 'Kpaas-tls-admin-1' REQUIRE SSL;
         ALTER USER 'kpaas_tls_admin'@'%' IDENTIFIED BY 'Kpaas-tls-admin-1' REQUIRE SSL;
         GRANT ALL PRIVILEGES ON *.* TO 'kpaas_tls_admin'@'%' WITH GRANT OPTION;"
    # A password policy, as production servers have: every password the broker sets on this
    # server must pass MariaDB's simple_password_check (length, cases, digit, special).
    if [ "$(mariadb --protocol=tcp -h127.0.0.1 -P3307 -uroot -Nse \
        "SELECT COUNT(*) FROM information_schema.PLUGINS WHERE PLUGIN_NAME = 'simple_password_check' AND PLUGIN_STATUS = 'ACTIVE'")" != 1 ]; then
        log "installing the simple_password_check policy on the second MariaDB"
        mariadb --protocol=tcp -h127.0.0.1 -P3307 -uroot -e "INSTALL SONAME 'simple_password_check'"
    fi
}

# A test CA and a server certificate for 127.0.0.1 in $1, the key readable by user $2 only.
# Tests verify the server against $1/ca.pem.
make_test_tls() {
    local dir=$1 owner=$2
    [ -s "$dir/server.pem" ] && return 0
    log "making TLS certificates in $dir"
    install -d -m 755 "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kpaas test CA" \
        -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$dir/san.ext"
    openssl x509 -req -days 3650 -in "$dir/server.csr" -CA "$dir/ca.pem" \
        -CAkey "$dir/ca.key" -CAcreateserial -extfile "$dir/san.ext" \
        -out "$dir/server.pem" 2>/dev/null
    chown "$owner:$owner" "$dir/server.key"
    chmod 600 "$dir/server.key" "$dir/ca.key"
}

# The second MariaDB's: mysql-broker's tests connect to it with TLS.
second_tls=/var/lib/kpaas-mariadb2-tls
make_second_tls() { make_test_tls "$second_tls" mysql; }

start_second_mariadb() {
    local datadir=/var/lib/kpaas-mariadb2
    install -d -o mysql -g mysql "$datadir" /run/mysqld
    if [ ! -d "$datadir/mysql" ]; then
        log "initialising the second MariaDB in $datadir"
        mariadb-install-db --no-defaults --user=mysql --datadir="$datadir" \
            --auth-root-authentication-method=normal >/dev/null
    fi
    log "starting the second MariaDB on 127.0.0.1:3307"
    start-stop-daemon --start --oknodo --background --pidfile /run/mysqld/kpaas2.pid \
        --exec /usr/sbin/mariadbd -- --no-defaults --user=mysql --datadir="$datadir" \
        --port=3307 --bind-address=127.0.0.1 --socket=/run/mysqld/kpaas2.sock \
        --pid-file=/run/mysqld/kpaas2.pid --ssl-ca="$second_tls/ca.pem" \
        --ssl-cert="$second_tls/server.pem" --ssl-key="$second_tls/server.key"
    wait_for "second MariaDB" 60 second_up
}

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
pg_login() { psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atc 'SELECT 1'; }

ensure_postgres() {
    if pg_up >/dev/null 2>&1 && pg_login >/dev/null 2>&1; then return 0; fi
    ls /etc/postgresql/*/main >/dev/null 2>&1 || apt_install postgresql postgresql-client
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    if ! pg_up 2>/dev/null; then
        log "starting PostgreSQL $version"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
        wait_for PostgreSQL 60 pg_up
    fi
    if ! pg_login >/dev/null 2>&1; then
        # Test machines only: trust loopback connections, as the test suite logs in without a
        # password. Production stores are configured with a password in the store URL.
        log "trusting loopback logins to PostgreSQL"
        sed -ri 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "/etc/postgresql/$version/main/pg_hba.conf"
        pg_ctlcluster --skip-systemctl-redirect "$version" main reload
        wait_for "PostgreSQL login" 10 pg_login
    fi
}

# MongoDB for mongodb-broker: no mongod comes from the registries this machine reaches, so
# SecantusDB (a MongoDB-wire-protocol server, crates.io `secantus-mdb`) stands in, built once
# into a cache that outlives checkouts, with auth on and the admin user of the tests.
KPAAS_CACHE=${KPAAS_CACHE:-/var/cache/kpaas-brokers}
SECANTUS_VERSION=0.5.3-beta.196
SECANTUS=$KPAAS_CACHE/secantus-$SECANTUS_VERSION/bin/secantusd-rs
MONGO_DIR=/var/lib/kpaas-mongodb
MONGO_ADMIN_URI='mongodb://kpaas_admin:Kpaas-mongo-admin-1@127.0.0.1:27017/?authSource=admin&directConnection=true'
PYMONGO=$KPAAS_CACHE/pyenv/bin/python

mongo_port_open() { (exec 3<>/dev/tcp/127.0.0.1/27017) 2>/dev/null; }

# mongo_py SCRIPT: runs Python with pymongo (in a venv of the cache) against the server.
mongo_py() {
    if ! [ -x "$PYMONGO" ] || ! "$PYMONGO" -c 'import pymongo' 2>/dev/null; then
        python3 -m venv "$KPAAS_CACHE/pyenv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$KPAAS_CACHE/pyenv"; }
        "$KPAAS_CACHE/pyenv/bin/pip" install -q 'pymongo>=4.6,<5'
    fi
    "$PYMONGO" -c "$1"
}

mongo_admin_login() {
    mongo_py "import pymongo; pymongo.MongoClient('$MONGO_ADMIN_URI', serverSelectionTimeoutMS=3000).admin.command('listDatabases', nameOnly=True)" >/dev/null 2>&1
}

ensure_mongodb() {
    mkdir -p "$KPAAS_CACHE"
    if ! [ -x "$SECANTUS" ]; then
        command -v cmake >/dev/null 2>&1 || apt_install cmake
        log "building SecantusDB $SECANTUS_VERSION once (a few minutes)"
        cargo install secantus-mdb --version "$SECANTUS_VERSION" --locked --ignore-rust-version \
            --root "$KPAAS_CACHE/secantus-$SECANTUS_VERSION" --quiet
    fi
    if ! mongo_port_open; then
        log "starting SecantusDB on 127.0.0.1:27017"
        mkdir -p "$MONGO_DIR"
        start-stop-daemon --start --oknodo --background --make-pidfile --pidfile "$MONGO_DIR/server.pid" \
            --chdir "$MONGO_DIR" --exec "$SECANTUS" -- \
            --host 127.0.0.1 --port 27017 --storage-path "$MONGO_DIR/data" --auth \
            --cache-size 256M --log-file-max 16MB
        wait_for SecantusDB 60 mongo_port_open
    fi
    if ! mongo_admin_login; then
        # The localhost exception lets the first admin user be created without logging in.
        log "creating the MongoDB admin user"
        mongo_py "import pymongo; pymongo.MongoClient('mongodb://127.0.0.1:27017/?directConnection=true').admin.command('createUser', 'kpaas_admin', pwd='Kpaas-mongo-admin-1', roles=['root'], mechanisms=['SCRAM-SHA-256'])"
        wait_for "MongoDB admin login" 10 mongo_admin_login
    fi
}

# RabbitMQ for rabbitmq-broker: the server (Debian's) with its management plugin, every
# listener on loopback.
rabbit_up() { rabbitmqctl -q ping >/dev/null 2>&1; }
rabbit_api() { curl -fsS -o /dev/null -u guest:guest http://127.0.0.1:15672/api/overview; }

rabbit_tls=/var/lib/kpaas-rabbitmq-tls
ensure_rabbitmq() {
    local conf=/etc/rabbitmq/rabbitmq.conf env=/etc/rabbitmq/rabbitmq-env.conf restart=""
    mkdir -p /etc/rabbitmq
    # Before the package: where its postinst starts the server (a host with systemd), it
    # starts it as this node, on loopback.
    grep -qs '^NODENAME=' "$env" || { echo 'NODENAME=rabbit@localhost' >> "$env"; restart=1; }
    grep -qs '^ERL_EPMD_ADDRESS=' "$env" || { echo 'ERL_EPMD_ADDRESS=127.0.0.1' >> "$env"; restart=1; }
    # The distribution listener (25672) on loopback too.
    grep -qs 'inet_dist_use_interface' "$env" || { echo 'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"' >> "$env"; restart=1; }
    command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
    grep -qs '^listeners\.tcp\.' "$conf" || { echo 'listeners.tcp.local = 127.0.0.1:5672' >> "$conf"; restart=1; }
    # The management plugin listens on every address unless told otherwise.
    grep -qs '^management\.tcp\.ip' "$conf" || { echo 'management.tcp.ip = 127.0.0.1' >> "$conf"; restart=1; }
    if ! grep -qs rabbitmq_management /etc/rabbitmq/enabled_plugins; then
        rabbitmq-plugins enable --offline rabbitmq_management >/dev/null
        restart=1
    fi
    # AMQP (5671) and the management API (15671) over TLS as well, for rabbitmq-broker's TLS
    # test; the plain listeners stay for the other tests.
    make_test_tls "$rabbit_tls" rabbitmq
    if ! grep -qs '^listeners\.ssl\.' "$conf"; then
        cat >> "$conf" <<EOF
listeners.ssl.local = 127.0.0.1:5671
ssl_options.cacertfile = $rabbit_tls/ca.pem
ssl_options.certfile = $rabbit_tls/server.pem
ssl_options.keyfile = $rabbit_tls/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
management.ssl.port = 15671
management.ssl.ip = 127.0.0.1
management.ssl.cacertfile = $rabbit_tls/ca.pem
management.ssl.certfile = $rabbit_tls/server.pem
management.ssl.keyfile = $rabbit_tls/server.key
EOF
        restart=1
    fi
    # A node the package started before this node name was set answers under the host's name.
    if [ -n "$restart" ] && ! rabbit_up >/dev/null 2>&1 \
        && rabbitmqctl -q -n "rabbit@$(hostname -s)" ping >/dev/null 2>&1; then
        log "stopping the RabbitMQ node the package started as rabbit@$(hostname -s)"
        rabbitmqctl -q -n "rabbit@$(hostname -s)" stop
    fi
    if [ -n "$restart" ] && rabbit_up; then
        log "restarting RabbitMQ (management API on 127.0.0.1:15672)"
        rabbitmqctl -q stop
    fi
    if ! rabbit_up; then
        # The first boot after an install takes about 30 s.
        log "starting RabbitMQ"
        rabbitmq-server -detached
        wait_for RabbitMQ 120 rabbit_up
    fi
    wait_for "RabbitMQ management API" 60 rabbit_api
}

# Redis: the package (redis-broker's tests start their own servers from it), and for `make run`
# a shared server (6383) and a pool of three (6380-6382), each with its own data directory and
# a development password, on loopback.
redis_up() { redis-cli -p "$1" -a "$2" --no-auth-warning ping 2>/dev/null | grep -q PONG; }

ensure_redis() {
    command -v redis-server >/dev/null 2>&1 || apt_install redis-server
    local port password
    for port in 6380 6381 6382 6383; do
        password=Kpaas-redis-pool-1
        [ "$port" = 6383 ] && password=Kpaas-redis-shared-1
        redis_up "$port" "$password" && continue
        log "starting redis-server on 127.0.0.1:$port"
        install -d -m 700 "/var/lib/kpaas-redis/$port"
        redis-server --port "$port" --bind 127.0.0.1 --daemonize yes \
            --dir "/var/lib/kpaas-redis/$port" --pidfile "/run/kpaas-redis-$port.pid" \
            --logfile "/var/lib/kpaas-redis/$port/redis.log" --requirepass "$password"
        wait_for "redis-server :$port" 20 redis_up "$port" "$password"
    done
}

# GlusterFS: glusterd on 127.0.0.1 (bound there before it first starts), and the volume
# glusterfs-broker's shared plans keep their directories on, with enforced quotas. Brick hosts
# must be names that resolve to 127.0.0.1 here, never the literal address.
gluster_volume=kpaas-shared
gluster_up() { gluster --mode=script volume list >/dev/null 2>&1; }

ensure_glusterfs() {
    command -v glusterd >/dev/null 2>&1 || apt_install glusterfs-server glusterfs-client
    local vol=/etc/glusterfs/glusterd.vol host
    host=$(hostname)
    if ! grep -qs 'transport.socket.bind-address' "$vol"; then
        sed -i 's/^\(\s*\)option transport-type socket.*/&\n\1option transport.socket.bind-address 127.0.0.1/' "$vol"
        grep -qs 'transport.socket.bind-address 127.0.0.1' "$vol" || {
            log "could not bind glusterd to 127.0.0.1 in $vol"
            return 1
        }
        if gluster_up; then
            log "restarting glusterd on 127.0.0.1"
            pkill -x glusterd || true
            sleep 1
        fi
    fi
    if ! gluster_up; then
        log "starting glusterd"
        glusterd -p /run/glusterd.pid
        wait_for glusterd 30 gluster_up
    fi
    if ! gluster --mode=script volume info "$gluster_volume" >/dev/null 2>&1; then
        log "creating the GlusterFS volume $gluster_volume on $host"
        install -d -m 755 "/var/lib/kpaas-gluster/bricks/$gluster_volume"
        # `force`: the brick lives on the root file system here.
        gluster --mode=script volume create "$gluster_volume" \
            "$host:/var/lib/kpaas-gluster/bricks/$gluster_volume" force >/dev/null
    fi
    if ! gluster --mode=script volume info "$gluster_volume" | grep -q '^Status: Started'; then
        gluster --mode=script volume start "$gluster_volume" force >/dev/null
    fi
    if ! gluster --mode=script volume get "$gluster_volume" features.quota | grep -q 'features.quota *on'; then
        gluster --mode=script volume quota "$gluster_volume" enable >/dev/null
    fi
    # Quota enforced at once, not after the default caching timeouts.
    gluster --mode=script volume quota "$gluster_volume" hard-timeout 0 >/dev/null
    gluster --mode=script volume quota "$gluster_volume" soft-timeout 0 >/dev/null
}

# Tools the scripts, .ci/run and the tests call (command, then the package that has it).
for pair in curl:curl openssl:openssl python3:python3 pkill:procps cc:gcc; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || apt_install "${pair#*:}"
done

ensure_mariadb
ensure_second_mariadb
ensure_postgres
ensure_mongodb
ensure_rabbitmq
ensure_redis
ensure_glusterfs
log "ready: MariaDB 127.0.0.1:3306 and 127.0.0.1:3307, PostgreSQL 127.0.0.1:5432, MongoDB 127.0.0.1:27017, RabbitMQ 127.0.0.1:5672 and TLS :5671 (management :15672, HTTPS :15671), Redis 127.0.0.1:6380-6383, GlusterFS volume $gluster_volume on $(hostname)"
