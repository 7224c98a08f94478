#!/usr/bin/env bash
# The test bench the perf/ scripts measure: two throwaway MariaDB servers with a sysbench table
# on each, and one proxy in front of them on 127.0.0.1, either ringlb (release build) or HAProxy
# (TCP mode, leastconn, splice-auto, one thread). Everything lives in a temporary directory and
# is stopped and removed on exit.
#
# Sourced by perf/syscalls.sh and perf/flamegraph.sh, which call:
#   perf_start_backends          the two servers, users app/app and ringlb_check, sbtest1 prepared
#   perf_start_proxy KIND        KIND = ringlb | haproxy; sets PROXY_PID and PROXY_PORT (and
#                                RINGLB_ADMIN_PORT for ringlb)
#   perf_stop_proxy              stops the proxy started last
#   perf_sysbench SECONDS [ARG]  sysbench oltp_point_select through the proxy, in the foreground
#   perf_queries                 statements the two servers have executed so far (Questions)
#   perf_cleanup                 the EXIT trap: stops everything, removes the directory
# Run on its own (`perf/setup.sh [ringlb|haproxy]`) it starts the bench, prints how to reach it
# and waits for Ctrl-C.
#
# Settings (environment):
#   RINGLB_WORKERS=1       ringlb's --workers, and HAProxy's nbthread
#   RINGLB_CONFIG=FILE     a ringlb configuration file (e.g. a [tuning] section) passed as --config
#   SYSBENCH_THREADS=32    sysbench client threads
#   SYSBENCH_ROWS=10000    rows in the sysbench table
#   PERF_PIN_PROXY=1       HAProxy's thread is pinned to CPU 0, as ringlb pins worker 0 (0: unpinned)
set -euo pipefail

PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$PERF_DIR/.." && pwd)
LIB_TAG=${LIB_TAG:-perf}
# shellcheck source=scripts/lib/mariadb.sh
source "$REPO_DIR/scripts/lib/mariadb.sh"

RINGLB_WORKERS=${RINGLB_WORKERS:-1}
SYSBENCH_THREADS=${SYSBENCH_THREADS:-32}
SYSBENCH_ROWS=${SYSBENCH_ROWS:-10000}
PERF_PIN_PROXY=${PERF_PIN_PROXY:-1}
HAPROXY=$(find_program haproxy)
SYSBENCH=$(find_program sysbench)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ringlb-perf.XXXXXX")
PROXY_PID=
PROXY_PORT=
PROXY_KIND=
# ringlb's admin endpoint port (perf_start_ringlb sets it).
RINGLB_ADMIN_PORT=
DB_PORTS=()
# The same ports as a string, exported with perf_queries so that a child shell can count queries.
export PERF_DB_PORTS=""
export MARIADB

perf_cleanup() {
    trap - EXIT INT TERM
    stop_started
    rm -rf "$WORK"
}
trap perf_cleanup EXIT
trap 'exit 130' INT TERM

# The release binary, built when missing or stale (cargo decides).
perf_build_ringlb() {
    (cd "$REPO_DIR" && cargo build --release --quiet)
    RINGLB=${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/ringlb
    [ -x "$RINGLB" ] || die "no ringlb binary at $RINGLB"
}

sysbench_args() {
    local port=$1
    echo --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port="$port" --mysql-user=app \
        --mysql-password=app --mysql-db=ringlb_test --tables=1 --table-size="$SYSBENCH_ROWS"
}

perf_start_backends() {
    local n port
    for n in 1 2; do
        port=$(pick_port)
        start_mariadb "$n" "$port"
        DB_PORTS+=("$port")
        PERF_DB_PORTS="${DB_PORTS[*]}"
        # shellcheck disable=SC2046 # word splitting of the fixed argument list is intended
        "$SYSBENCH" oltp_point_select $(sysbench_args "$port") prepare >"$WORK/db$n/prepare.log" 2>&1 || {
            cat "$WORK/db$n/prepare.log" >&2
            die "sysbench prepare failed on server $n"
        }
    done
}

# Statements executed by both servers so far (global status Questions, read directly, not
# through the proxy). Each sysbench point select is one COM_STMT_EXECUTE, which Questions counts;
# this query itself adds one per server.
perf_queries() {
    local total=0 port q
    for port in $PERF_DB_PORTS; do
        q=$("$MARIADB" -h127.0.0.1 -P"$port" -uapp -papp -N -B -e "SHOW GLOBAL STATUS LIKE 'Questions'" | cut -f2)
        total=$((total + q))
    done
    echo "$total"
}
export -f perf_queries

proxy_answers() { "$MARIADB" -h127.0.0.1 -P"$PROXY_PORT" -uapp -papp -N -B -e 'SELECT @@port'; }

perf_start_ringlb() {
    perf_build_ringlb
    local config=()
    RINGLB_ADMIN_PORT=$(pick_port)
    [ -n "${RINGLB_CONFIG:-}" ] && config=(--config "$RINGLB_CONFIG")
    "$RINGLB" run "${config[@]}" --listen "127.0.0.1:$PROXY_PORT" --admin "127.0.0.1:$RINGLB_ADMIN_PORT" \
        --backend "127.0.0.1:${DB_PORTS[0]}" --backend "127.0.0.1:${DB_PORTS[1]}" \
        --workers "$RINGLB_WORKERS" --log-level warn 2>"$WORK/ringlb.log" &
    PROXY_PID=$!
    STARTED_PIDS+=("$PROXY_PID")
}

perf_start_haproxy() {
    local pin=""
    [ "$PERF_PIN_PROXY" = 1 ] && [ "$RINGLB_WORKERS" = 1 ] && pin="    cpu-map 1/all 0"
    cat >"$WORK/haproxy.cfg" <<CFG
global
    nbthread $RINGLB_WORKERS
$pin
    maxconn 6000

defaults
    mode tcp
    option splice-auto
    timeout connect 1s
    timeout client 1h
    timeout server 1h

listen mysql
    bind 127.0.0.1:$PROXY_PORT
    balance leastconn
    option mysql-check user ringlb_check post-41
    server db1 127.0.0.1:${DB_PORTS[0]} check inter 1000 rise 2 fall 3
    server db2 127.0.0.1:${DB_PORTS[1]} check inter 1000 rise 2 fall 3
CFG
    "$HAPROXY" -c -q -f "$WORK/haproxy.cfg" || die "HAProxy rejects $WORK/haproxy.cfg"
    "$HAPROXY" -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
    PROXY_PID=$!
    STARTED_PIDS+=("$PROXY_PID")
}

perf_start_proxy() {
    PROXY_KIND=$1
    PROXY_PORT=$(pick_port)
    case "$PROXY_KIND" in
        ringlb) perf_start_ringlb ;;
        haproxy) perf_start_haproxy ;;
        *) die "unknown proxy '$PROXY_KIND': expected ringlb or haproxy" ;;
    esac
    local deadline=$((SECONDS + 30)) seen=""
    # Ready when queries through it have reached both servers (health checks have let both in).
    while true; do
        if ! kill -0 "$PROXY_PID" 2>/dev/null; then
            local status=0
            wait "$PROXY_PID" || status=$?
            cat "$WORK/$PROXY_KIND.log" >&2
            die "$PROXY_KIND exited with status $status; its log is above"
        fi
        seen="$seen $(proxy_answers 2>/dev/null || true)"
        [[ $seen == *" ${DB_PORTS[0]}"* && $seen == *" ${DB_PORTS[1]}"* ]] && break
        [ "$SECONDS" -lt "$deadline" ] || die "$PROXY_KIND did not reach both servers within 30s"
        sleep 0.2
    done
    local cpus
    cpus=$(for t in /proc/"$PROXY_PID"/task/*; do taskset -pc "${t##*/}" 2>/dev/null | sed 's/.*: //'; done |
        sort | uniq -c | awk '{ printf "%s%d on %s", (NR > 1 ? ", " : ""), $1, $2 }')
    echo "$LIB_TAG: $PROXY_KIND (pid $PROXY_PID) on 127.0.0.1:$PROXY_PORT; threads on CPUs: $cpus"
}

perf_stop_proxy() {
    [ -n "$PROXY_PID" ] && stop_one "$PROXY_PID"
    PROXY_PID=
}

# perf_sysbench SECONDS [EXTRA_ARG...]: point selects through the proxy for SECONDS (the run is
# killed 30 s after that if it hangs). Output goes to stdout.
perf_sysbench() {
    local seconds=$1
    shift
    # shellcheck disable=SC2046 # word splitting of the fixed argument list is intended
    timeout $((seconds + 30)) "$SYSBENCH" oltp_point_select $(sysbench_args "$PROXY_PORT") \
        --threads="$SYSBENCH_THREADS" --time="$seconds" "$@" run
}

# The machine the numbers come from, for the record.
perf_machine() {
    echo "cpus: $(nproc), $(lscpu | sed -n 's/^Model name: *//p' | head -1)," \
        "hypervisor: $(lscpu | sed -n 's/^Hypervisor vendor: *//p' | head -1)"
    echo "kernel: $(uname -r); $(haproxy -v | head -1 | cut -d' ' -f1-3); $(sysbench --version)"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    kind=${1:-ringlb}
    perf_start_backends
    perf_start_proxy "$kind"
    cat <<MSG
$kind listens on 127.0.0.1:$PROXY_PORT in front of MariaDB on ports ${DB_PORTS[*]} (pid $PROXY_PID).
    mariadb -h127.0.0.1 -P$PROXY_PORT -uapp -papp ringlb_test
    sysbench oltp_point_select $(sysbench_args "$PROXY_PORT") --threads=$SYSBENCH_THREADS --time=10 run
Press Ctrl-C to stop everything.
MSG
    wait "$PROXY_PID" || true
fi
