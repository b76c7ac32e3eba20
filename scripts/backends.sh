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
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- \
            --user=mysql --bind-address=127.0.0.1 --port=3306
        wait_for MariaDB 60 mariadb_up
    fi
    if ! mariadb_root_tcp >/dev/null 2>&1; then
        log "allowing root@localhost an empty-password login over TCP"
        mariadb -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD(''); FLUSH PRIVILEGES;"
        wait_for "MariaDB root login" 10 mariadb_root_tcp
    fi
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

ensure_mariadb
ensure_postgres
log "ready: MariaDB 127.0.0.1:3306, PostgreSQL 127.0.0.1:5432"
