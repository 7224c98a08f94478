# Shell helpers shared by scripts/demo and perf/: find programs, pick free loopback ports, start
# throwaway MariaDB servers and stop everything that was started. Sourced, never run.
#
# The caller sets WORK (a private directory that it removes when done) and calls stop_started
# from its EXIT trap. Every process started here is recorded in STARTED_PIDS so that only those
# processes are ever stopped. Messages are prefixed with $LIB_TAG (default: the script's name).
# shellcheck shell=bash

LIB_TAG=${LIB_TAG:-$(basename "$0")}
STARTED_PIDS=()

die() {
    echo "$LIB_TAG: $*" >&2
    exit 1
}

# The path of a program, looking in /usr/sbin too (mariadbd, haproxy live there on Debian).
find_program() {
    command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || die "$1 not found"
}

# Taken: something listens there, or any socket (a client's ephemeral port, TIME_WAIT) holds it,
# either of which makes a later bind fail.
port_taken() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    command -v ss >/dev/null 2>&1 && [ -n "$(ss -Htan "( sport = :$1 )" 2>/dev/null)" ]
}

# The wanted port when it is free, else a random free one. Random ports come from 20000-32767,
# below Linux's default ephemeral range, so outgoing connections do not take them meanwhile.
pick_port() {
    local port=${1:-$((20000 + RANDOM % 12768))}
    while port_taken "$port"; do port=$((20000 + RANDOM % 12768)); done
    echo "$port"
}

# Stops every process started through these helpers (newest first) and waits for them.
stop_started() {
    local i
    for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do kill "${STARTED_PIDS[i]}" 2>/dev/null || true; done
    for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do wait "${STARTED_PIDS[i]}" 2>/dev/null || true; done
    STARTED_PIDS=()
}

# Forgets a process that has been waited for, so stop_started leaves its (reusable) pid alone.
forget_started() {
    local pid=$1 kept=() p
    for p in "${STARTED_PIDS[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
    STARTED_PIDS=("${kept[@]}")
}

# Stops one process started through these helpers and forgets it.
stop_one() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget_started "$1"
}

MARIADBD=$(find_program mariadbd)
MARIADB_INSTALL_DB=$(find_program mariadb-install-db)
MARIADB=$(find_program mariadb)

# The users every server gets: `app`/`app` owning database ringlb_test, and the health-check user
# `ringlb_check` without a password.
mariadb_init_sql() {
    cat <<'SQL'
CREATE DATABASE IF NOT EXISTS ringlb_test;
CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'app';
GRANT ALL PRIVILEGES ON ringlb_test.* TO 'app'@'%';
CREATE USER IF NOT EXISTS 'ringlb_check'@'%';
SQL
}

# start_mariadb N PORT [EXTRA_MARIADBD_OPTION...]: creates server N's data directory in $WORK/db<N>,
# then launches it (launch_mariadb).
start_mariadb() {
    local n=$1 dir=$WORK/db$1
    local user_opt=()
    [ "$(id -u)" -eq 0 ] && user_opt=(--user=root)
    [ -f "$WORK/init.sql" ] || mariadb_init_sql >"$WORK/init.sql"
    # A tmpdir of its own: servers sharing /tmp can delete each other's internal temporary tables.
    mkdir -p "$dir/tmp"
    "$MARIADB_INSTALL_DB" --no-defaults --datadir="$dir/data" --auth-root-authentication-method=normal \
        --skip-test-db --tmpdir="$dir/tmp" --innodb-log-file-size=4M "${user_opt[@]}" >"$dir/install.log" 2>&1 || {
        cat "$dir/install.log" >&2
        die "mariadb-install-db failed for server $n"
    }
    launch_mariadb "$@"
}

# Server N's process id while it runs (launch_mariadb sets it, stop_mariadb clears it).
MARIADB_PIDS=()

# launch_mariadb N PORT [EXTRA_MARIADBD_OPTION...]: starts server N from its existing data
# directory $WORK/db<N> on 127.0.0.1:PORT and waits (at most 60 s) until `app` can log in. The
# same call starts it again after stop_mariadb.
launch_mariadb() {
    local n=$1 port=$2 dir=$WORK/db$1
    shift 2
    local user_opt=()
    [ "$(id -u)" -eq 0 ] && user_opt=(--user=root)
    "$MARIADBD" --no-defaults --datadir="$dir/data" --socket="$dir/mysqld.sock" --port="$port" \
        --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$dir/mysqld.pid" \
        --log-error="$dir/error.log" --tmpdir="$dir/tmp" --init-file="$WORK/init.sql" --skip-log-bin \
        --innodb-buffer-pool-size=16M --innodb-log-file-size=4M "${user_opt[@]}" "$@" 2>>"$dir/stderr.log" &
    MARIADB_PIDS[n]=$!
    STARTED_PIDS+=($!)
    local deadline=$((SECONDS + 60))
    until "$MARIADB" -h127.0.0.1 -P"$port" -uapp -papp -e 'SELECT 1' >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ] || ! kill -0 "${MARIADB_PIDS[n]}" 2>/dev/null; then
            tail -n 20 "$dir/error.log" >&2
            die "MariaDB $n on port $port did not start; its log is above"
        fi
        sleep 0.1
    done
    echo "$LIB_TAG: MariaDB $n listening on 127.0.0.1:$port"
}

# stop_mariadb N [SIGNAL]: stops server N with SIGNAL (default TERM: a clean shutdown; KILL: a
# crash) and waits for its process to exit.
stop_mariadb() {
    local n=$1 signal=${2:-TERM} pid=${MARIADB_PIDS[$1]:-}
    [ -n "$pid" ] || die "MariaDB $n is not running"
    kill -s "$signal" "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_started "$pid"
    MARIADB_PIDS[n]=
}

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 0.1 s until it succeeds; dies naming
# WHAT after SECONDS.
wait_until() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "$what did not happen within ${limit}s"
        sleep 0.1
    done
}
