#!/usr/bin/env bash
# Soak: ringlb (release build, perf/setup.sh's bench) in front of two MariaDB servers under mixed
# load for SOAK_SECONDS, while the servers are restarted one at a time; then checks what must
# hold and prints a summary. Exit status 0 when every requirement holds, 1 otherwise.
#
# The load, all through ringlb:
#   - churn: SOAK_CHURNERS loops, each running `mariadb -e 'SELECT 1'` again and again: connect,
#     greeting, login, one query, COM_QUIT. Every attempt is one line (start and end in µs,
#     outcome, the client's error) in $WORK/churn.N.
#   - sysbench oltp_point_select as background load: SOAK_SYSBENCH_CLIENTS single-thread runs,
#     each started again as soon as it ends before the soak does. sysbench's own connections are
#     long-lived, and a restart breaks those on the restarted server: their query in flight
#     legitimately fails. sysbench 1.0.20 cannot go on after that here: with
#     --mysql-ignore-errors (all, or 2013,2006) its reconnect crashes it with libmariadb (SIGSEGV,
#     akopytov/sysbench#527), and without it the thread ends. So each client is one thread, and
#     a run that ends early is followed at once by a new one, whose connection is a new one
#     through ringlb, like an application's reconnect. Every run is one line (start, end, exit
#     status, queries, its first FATAL line) in $WORK/sysbench.N.
#   - restarts: every SOAK_RESTART_SECONDS one server, db1 and db2 in turn, is stopped and started
#     again on the same port and data directory; the stop signal cycles through
#     SOAK_STOP_SIGNALS per pair of restarts (TERM: a clean shutdown, KILL: a crash). One server
#     is always up.
#
# Requirements:
#   1. No churn attempt and no sysbench run failed while a server was up, except those broken in
#      flight by a restart: they had passed the greeting (the error is not a failure to connect,
#      a connection lost before the greeting, or "Too many connections") and failed while a
#      server was being stopped (between its signal and one second after its exit; two for
#      sysbench, which takes longer to exit). Before the greeting ringlb can still send a client
#      to the other server, so every such failure counts; after it, the session belongs to the
#      server that went away. Failures that began while both servers were down would not count
#      (never, with one restart at a time).
#   2. ringlb's RSS and descriptor count stay flat: sampled every SOAK_SAMPLE_SECONDS, the
#      largest sample of the last third is at most the largest of the first third plus a slack
#      (SOAK_RSS_SLACK_KIB, SOAK_FD_SLACK). The samples are printed.
#   3. Churn and sysbench completed work; ringlb is still running; every planned restart happened.
#
# Settings (environment), defaults in brackets:
#   SOAK_SECONDS [600]           the run's length
#   SOAK_RESTART_SECONDS         time between restarts [60; 15 when SOAK_SECONDS < 300]
#   SOAK_STOP_SIGNALS ["TERM KILL"]
#   SOAK_SAMPLE_SECONDS          ringlb RSS and descriptor sampling interval [5; 2 when short]
#   SOAK_CHURNERS [4], SOAK_SYSBENCH_CLIENTS [4]
#   SOAK_RSS_SLACK_KIB [4096], SOAK_FD_SLACK [16]
#   SOAK_RESULTS [target/soak]   where the raw records are copied at the end
#   RINGLB_WORKERS [1], RINGLB_CONFIG, SYSBENCH_ROWS: as in perf/setup.sh
#
# scripts/test runs `SOAK_SECONDS=60 perf/soak.sh`.
set -euo pipefail

LIB_TAG=soak
# shellcheck source=perf/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

# A setting that must be a whole number (at least 1 with `positive`), else one line and exit 1.
whole() { [[ ${!1} =~ ^[0-9]+$ ]] || die "$1 must be a whole number of ${2}, not '${!1}'"; }
positive() { [[ ${!1} =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive number of ${2}, not '${!1}'"; }
SOAK_SECONDS=${SOAK_SECONDS:-600}
positive SOAK_SECONDS seconds
if [ "$SOAK_SECONDS" -lt 300 ]; then short=1; else short=0; fi
SOAK_RESTART_SECONDS=${SOAK_RESTART_SECONDS:-$([ "$short" = 1 ] && echo 15 || echo 60)}
SOAK_SAMPLE_SECONDS=${SOAK_SAMPLE_SECONDS:-$([ "$short" = 1 ] && echo 2 || echo 5)}
SOAK_STOP_SIGNALS=${SOAK_STOP_SIGNALS:-TERM KILL}
SOAK_CHURNERS=${SOAK_CHURNERS:-4}
SOAK_SYSBENCH_CLIENTS=${SOAK_SYSBENCH_CLIENTS:-4}
SOAK_RSS_SLACK_KIB=${SOAK_RSS_SLACK_KIB:-4096}
SOAK_FD_SLACK=${SOAK_FD_SLACK:-16}
SOAK_RESULTS=${SOAK_RESULTS:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/soak}
positive SOAK_RESTART_SECONDS seconds
positive SOAK_SAMPLE_SECONDS seconds
positive SOAK_CHURNERS loops
positive SOAK_SYSBENCH_CLIENTS clients
whole SOAK_RSS_SLACK_KIB KiB
whole SOAK_FD_SLACK descriptors
read -r -a stop_signals <<<"$SOAK_STOP_SIGNALS"
[ "${#stop_signals[@]}" -gt 0 ] || die "SOAK_STOP_SIGNALS is empty"
for signal in "${stop_signals[@]}"; do
    [[ $signal =~ ^(TERM|KILL|INT|QUIT)$ ]] || die "SOAK_STOP_SIGNALS: '$signal' is not one of TERM KILL INT QUIT"
done

# Sleeps until the wall clock reaches $1 (µs since the epoch), at once if it has.
sleep_until() {
    local left=$(($1 - ${EPOCHREALTIME/./}))
    [ "$left" -le 0 ] || sleep "$((left / 1000000)).$(printf '%06d' $((left % 1000000)))"
}

# One churn loop: attempts until $WORK/stop exists, one line each to stdout.
churn() {
    local start out
    while [ ! -e "$WORK/stop" ]; do
        start=${EPOCHREALTIME/./}
        if out=$(timeout 30 "$MARIADB" -h127.0.0.1 -P"$PROXY_PORT" -uapp -papp --connect-timeout=5 \
            -N -B -e 'SELECT 1' 2>&1) && [ "$out" = 1 ]; then
            echo "$start ${EPOCHREALTIME/./} ok"
        else
            echo "$start ${EPOCHREALTIME/./} fail ${out//$'\n'/ }"
        fi
    done
}

# One sysbench client: single-thread runs until the soak's end, one line each to stdout: start,
# end, exit status, queries (the summary's count, or the per-second reports' sum when a run ends
# early without a summary), first FATAL line.
sysbench_client() {
    local log=$1 start status left queries
    while [ ! -e "$WORK/stop" ]; do
        left=$(((end_us - ${EPOCHREALTIME/./}) / 1000000))
        [ "$left" -ge 1 ] || break
        start=${EPOCHREALTIME/./}
        status=0
        # shellcheck disable=SC2046 # word splitting of the fixed argument list is intended
        timeout $((left + 30)) "$SYSBENCH" oltp_point_select $(sysbench_args "$PROXY_PORT") \
            --threads=1 --time="$left" --report-interval=1 run >"$log" 2>&1 || status=$?
        queries=$(awk '
            /^\[/ { for (i = 1; i < NF; i++) if ($i == "qps:") reported += $(i + 1) }
            /^ +queries:/ { total = $2 }
            END { printf "%d", total != "" ? total : reported }' "$log")
        echo "$start ${EPOCHREALTIME/./} $status $queries $(grep -m1 FATAL "$log" || true)"
    done
}

# ringlb's resident memory (KiB) and open descriptors, every SOAK_SAMPLE_SECONDS until stopped.
sample() {
    local rss fds
    while [ ! -e "$WORK/stop" ] && kill -0 "$PROXY_PID" 2>/dev/null; do
        rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$PROXY_PID/status" 2>/dev/null) || break
        fds=$(find "/proc/$PROXY_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        echo "$(((${EPOCHREALTIME/./} - t0) / 1000000)) $rss $fds"
        sleep "$SOAK_SAMPLE_SECONDS"
    done
}

# A metric's sum over all its series from ringlb's /metrics (0 when absent).
ringlb_metric() {
    local response
    # shellcheck disable=SC2016 # expanded by the inner shell
    response=$(timeout 5 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" &&
        printf "GET /metrics HTTP/1.0\r\nHost: soak\r\nConnection: close\r\n\r\n" >&3 && cat <&3' _ "$RINGLB_ADMIN_PORT") || true
    awk -v name="$1" '$1 == name || index($1, name "{") == 1 { sum += $NF } END { printf "%d", sum }' <<<"$response"
}

perf_start_backends
perf_start_proxy ringlb
echo "soak: $(perf_machine | head -1)"
echo "soak: ${SOAK_SECONDS} s; a restart every ${SOAK_RESTART_SECONDS} s (signals: ${SOAK_STOP_SIGNALS});" \
    "$SOAK_CHURNERS churn loops; $SOAK_SYSBENCH_CLIENTS sysbench clients; samples every ${SOAK_SAMPLE_SECONDS} s"

t0=${EPOCHREALTIME/./}
end_us=$((t0 + SOAK_SECONDS * 1000000))
loads=()
for ((i = 1; i <= SOAK_CHURNERS; i++)); do
    churn >"$WORK/churn.$i" &
    loads+=($!)
done
for ((i = 1; i <= SOAK_SYSBENCH_CLIENTS; i++)); do
    sysbench_client "$WORK/sysbench-run.$i.log" >"$WORK/sysbench.$i" &
    loads+=($!)
done
sample >"$WORK/samples" &
loads+=($!)
STARTED_PIDS+=("${loads[@]}")

# The restarts, from this shell (the servers are its children): stop, wait for the exit, start
# again and wait for a login. One line each in $WORK/restarts: server, signal, and the times
# (µs) of the signal, of the exit and of the first login after it.
restarts=0
: >"$WORK/restarts"
while true; do
    next_us=$((t0 + (restarts + 1) * SOAK_RESTART_SECONDS * 1000000))
    [ "$next_us" -lt "$end_us" ] || break
    sleep_until "$next_us"
    n=$((restarts % 2 + 1))
    signal=${stop_signals[$((restarts / 2 % ${#stop_signals[@]}))]}
    stop_us=${EPOCHREALTIME/./}
    stop_mariadb "$n" "$signal"
    down_us=${EPOCHREALTIME/./}
    launch_mariadb "$n" "${DB_PORTS[n - 1]}" >/dev/null
    up_us=${EPOCHREALTIME/./}
    echo "$n $signal $stop_us $down_us $up_us" >>"$WORK/restarts"
    restarts=$((restarts + 1))
    echo "soak: restart $restarts at $(((stop_us - t0) / 1000000)) s: db$n (SIG$signal) down" \
        "$(((up_us - stop_us) / 1000)) ms"
done
sleep_until "$end_us"
touch "$WORK/stop"
for pid in "${loads[@]}"; do
    wait "$pid" || true
    forget_started "$pid"
done
ringlb_alive=1
kill -0 "$PROXY_PID" 2>/dev/null || ringlb_alive=0
ringlb_connections=$(ringlb_metric ringlb_backend_connections_total)
ringlb_connect_errors=$(ringlb_metric ringlb_backend_connect_errors_total)

# ---- the verdict ----
failed=()
cat "$WORK"/churn.[0-9]* >"$WORK/churn"
cat "$WORK"/sysbench.[0-9]* >"$WORK/sysbench"
# Every failed churn attempt and sysbench run, judged against the restarts: "broken" (in flight
# on a server being stopped, after the greeting), "both-down" or "FAILED".
judge() {
    awk -v kind="$1" -v slack_us="$2" -v t0="$t0" '
        FILENAME == ARGV[1] { restarts++; server[restarts] = $1; stop[restarts] = $3; down[restarts] = $4; up[restarts] = $5; next }
        kind == "churn" && $3 == "ok" { next }
        kind == "sysbench" && $3 == 0 { next }
        {
            start = $1; finish = $2
            message = $0
            sub(kind == "churn" ? "^[0-9]+ [0-9]+ fail ?" : "^[0-9]+ [0-9]+ [0-9]+ [0-9]+ ?", "", message)
            if (kind == "sysbench") message = "exit status " $3 ": " message
            both_down = 0
            for (i = 1; i <= restarts; i++)
                for (j = 1; j <= restarts; j++)
                    if (server[i] != server[j] && start >= stop[i] && start <= up[i] && start >= stop[j] && start <= up[j])
                        both_down = 1
            before_greeting = (message ~ /initial communication packet|[Cc]an.t connect|unable to connect|ERROR 2002|ERROR 2003|ERROR 1040|error 1040|exit status 124|^$/)
            stopping = 0
            for (i = 1; i <= restarts; i++)
                if (finish >= stop[i] && finish <= down[i] + slack_us) stopping = 1
            verdict = both_down ? "both-down" : (!before_greeting && stopping ? "broken" : "FAILED")
            printf "%s %s %.3f %.3f %s\n", verdict, kind, (start - t0) / 1e6, (finish - t0) / 1e6, message
        }' "$WORK/restarts" "$WORK/$1"
}
{
    judge churn 1000000
    judge sysbench 2000000
} >"$WORK/failures"
count() { awk -v verdict="$1" -v kind="$2" '$1 == verdict && $2 == kind' "$WORK/failures" | wc -l; }

churn_attempted=$(wc -l <"$WORK/churn")
churn_ok=$(awk '$3 == "ok"' "$WORK/churn" | wc -l)
churn_failed=$(count FAILED churn)
churn_broken=$(count broken churn)
churn_both_down=$(count both-down churn)
sysbench_runs=$(wc -l <"$WORK/sysbench")
sysbench_queries=$(awk '{ sum += $4 } END { printf "%d", sum }' "$WORK/sysbench")
sysbench_failed=$(count FAILED sysbench)
sysbench_broken=$(count broken sysbench)
sysbench_both_down=$(count both-down sysbench)
[ "$churn_ok" -gt 0 ] || failed+=("the churn clients completed no connection")
[ "$churn_failed" -eq 0 ] || failed+=("$churn_failed churn connections failed while a server was up")
[ "$sysbench_queries" -gt 0 ] || failed+=("sysbench completed no query")
[ "$sysbench_failed" -eq 0 ] || failed+=("$sysbench_failed sysbench runs failed while a server was up")
[ "$ringlb_alive" = 1 ] || failed+=("ringlb is not running any more")
planned=$(((SOAK_SECONDS * 1000000 - 1) / (SOAK_RESTART_SECONDS * 1000000)))
[ "$restarts" -eq "$planned" ] || failed+=("$restarts restarts done, $planned planned")

# Flatness: the samples in thirds.
read -r samples rss_min rss_max fd_min fd_max rss_first rss_last fd_first fd_last < <(awk '
    { rss[NR] = $2; fd[NR] = $3 }
    END {
        n = NR
        if (n == 0) { print "0 0 0 0 0 0 0 0 0"; exit }
        third = int(n / 3); if (third < 1) third = 1
        rmin = rmax = rss[1]; fmin = fmax = fd[1]
        for (i = 1; i <= n; i++) {
            if (rss[i] < rmin) rmin = rss[i]; if (rss[i] > rmax) rmax = rss[i]
            if (fd[i] < fmin) fmin = fd[i]; if (fd[i] > fmax) fmax = fd[i]
        }
        for (i = 1; i <= third; i++) { if (rss[i] > rf) rf = rss[i]; if (fd[i] > ff) ff = fd[i] }
        for (i = n - third + 1; i <= n; i++) { if (rss[i] > rl) rl = rss[i]; if (fd[i] > fl) fl = fd[i] }
        print n, rmin, rmax, fmin, fmax, rf, rl, ff, fl
    }' "$WORK/samples")
[ "$samples" -ge 6 ] || failed+=("only $samples samples of ringlb's memory and descriptors")
[ "$rss_last" -le $((rss_first + SOAK_RSS_SLACK_KIB)) ] ||
    failed+=("RSS grew: last third up to $rss_last KiB, first third up to $rss_first KiB (slack $SOAK_RSS_SLACK_KIB KiB)")
[ "$fd_last" -le $((fd_first + SOAK_FD_SLACK)) ] ||
    failed+=("descriptors grew: last third up to $fd_last, first third up to $fd_first (slack $SOAK_FD_SLACK)")

echo
echo "soak: ringlb samples (seconds, RSS KiB, descriptors):"
awk '{ printf "  %5d s %7d KiB %4d fds%s", $1, $2, $3, (NR % 4 == 0 ? "\n" : "") } END { if (NR % 4) print "" }' "$WORK/samples"
if [ -s "$WORK/failures" ]; then
    # Every FAILED one, and the first few of the others (all of them are in the details).
    echo "soak: failures (verdict, client, start and end in seconds of the soak, error):"
    awk '$1 != "broken" || ++broken <= 8 { print "  " $0 } END { if (broken > 8) print "  ... and " broken - 8 " more broken in flight" }' "$WORK/failures"
fi
# Everything the verdict was drawn from, kept for a look afterwards.
mkdir -p "$SOAK_RESULTS"
cp "$WORK"/{churn,sysbench,failures,restarts,samples,ringlb.log} "$SOAK_RESULTS"/
cat <<SUMMARY

==== soak summary ($SOAK_SECONDS s) ====
restarts:   $restarts done of $planned planned$(awk '{ printf "%s db%s SIG%s %d ms", (NR > 1 ? "," : ":"), $1, $2, ($5 - $3) / 1000 }' "$WORK/restarts")
churn:      $churn_attempted connections attempted, $churn_ok ok, $churn_failed FAILED, $churn_broken broken in flight by a restart, $churn_both_down while both servers were down
sysbench:   $sysbench_queries queries in $sysbench_runs runs of $SOAK_SYSBENCH_CLIENTS clients ($((sysbench_runs - SOAK_SYSBENCH_CLIENTS)) reconnects), $sysbench_failed FAILED, $sysbench_broken broken in flight by a restart, $sysbench_both_down while both servers were down
ringlb:     $ringlb_connections backend connections, $ringlb_connect_errors connect errors (each redispatched), $(grep -c . "$WORK/ringlb.log" || true) log lines at warn or above, running: $([ "$ringlb_alive" = 1 ] && echo yes || echo NO)
ringlb RSS: min $rss_min KiB, max $rss_max KiB; first third max $rss_first KiB, last third max $rss_last KiB (slack $SOAK_RSS_SLACK_KIB)
ringlb fds: min $fd_min, max $fd_max; first third max $fd_first, last third max $fd_last (slack $SOAK_FD_SLACK)
samples:    $samples, every $SOAK_SAMPLE_SECONDS s
details:    $SOAK_RESULTS/ (churn, sysbench, failures, restarts, samples, ringlb.log)
SUMMARY
if [ "${#failed[@]}" -gt 0 ]; then
    printf 'result:     FAIL: %s\n' "${failed[@]}"
    echo "soak: ringlb log tail:" && tail -n 20 "$WORK/ringlb.log" | sed 's/^/  /'
    exit 1
fi
echo "result:     PASS"
