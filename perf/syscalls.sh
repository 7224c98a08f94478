#!/usr/bin/env bash
# Where a proxy's time goes per query under sysbench oltp_point_select (32 threads): syscalls,
# io_uring enters, submissions and completions, context switches and CPU, each divided by the
# queries the MariaDB servers executed in the same window.
#
#   perf/syscalls.sh [ringlb|haproxy|both]     default both: ringlb and HAProxy alternately,
#                                              PERF_PAIRS pairs (default 2), one set of servers
#
# One sysbench run per proxy, measured in three back-to-back windows of PERF_WINDOW seconds
# (default 10) after PERF_WARMUP seconds (default 3):
#   1. untraced: CPU (utime + stime of every thread, /proc/PID/stat), user/system split,
#      context switches (/proc/PID/task/*/status, voluntary + involuntary, and the involuntary
#      share: preempted rather than blocked), queries per second;
#   2. `perf stat -p PID`: software events and tracepoints, all cheap counters, no sampling:
#      raw_syscalls:sys_enter (every syscall), syscalls:sys_enter_io_uring_enter,
#      io_uring:io_uring_submit_req (SQEs), io_uring:io_uring_complete (CQEs posted),
#      io_uring:io_uring_poll_arm (an op that had to wait for readiness),
#      io_uring:io_uring_queue_async_work (an op punted to an io-wq worker thread),
#      io_uring:io_uring_local_work_run (deferred task work run by the ring's task),
#      context-switches, cpu-migrations, task-clock;
#   3. `strace -c -f -p PID`: the syscalls by name. strace stops the proxy at every syscall, so
#      this window's counts per query are meaningful and its speed is not.
# Queries are the servers' global `Questions` (read directly, not through the proxy).
#
# Results: a row per run appended to perf/results/syscalls.tsv, the raw perf stat and strace
# output under perf/results/raw/, and the medians per proxy of this invocation on stdout.
set -euo pipefail

LIB_TAG=syscalls
# shellcheck source=perf/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

MODE=${1:-both}
PERF_PAIRS=${PERF_PAIRS:-2}
PERF_WINDOW=${PERF_WINDOW:-10}
PERF_WARMUP=${PERF_WARMUP:-3}
RESULTS=${PERF_RESULTS:-$PERF_DIR/results}
mkdir -p "$RESULTS/raw"
TSV=$RESULTS/syscalls.tsv
INVOCATION=$(date +%Y%m%dT%H%M%S)
CLK_TCK=$(getconf CLK_TCK)
command -v strace >/dev/null || die "strace is not installed (apt-get install strace)"
command -v perf >/dev/null || die "perf is not installed (apt-get install linux-perf)"

EVENTS=task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter
EVENTS+=,syscalls:sys_enter_io_uring_enter,io_uring:io_uring_submit_req,io_uring:io_uring_complete
EVENTS+=,io_uring:io_uring_poll_arm,io_uring:io_uring_queue_async_work,io_uring:io_uring_local_work_run

COLUMNS=(qps cpu_us_q user_pct csw_q invol_csw_pct syscalls_q enters_q cqe_per_enter sqe_q cqe_q poll_arm_q
    iowq_q local_work_q perf_csw_q migrations_q strace_syscalls_q)
if [ ! -s "$TSV" ]; then
    printf 'invocation\tproxy\t%s\tstrace_top\n' "$(IFS=$'\t'; echo "${COLUMNS[*]}")" >"$TSV"
fi

# "utime stime voluntary involuntary" of every thread of the proxy now (ticks, ticks, context
# switches, context switches).
proc_sample() {
    local stat rest f f_status vol=0 invol=0 v i
    stat=$(<"/proc/$PROXY_PID/stat")
    rest=${stat##*) } # fields from the 3rd on; the command name may hold spaces
    read -r -a f <<<"$rest"
    for f_status in /proc/"$PROXY_PID"/task/*/status; do
        read -r v i < <(awk '/^voluntary_ctxt_switches/ { v = $2 } /^nonvoluntary_ctxt_switches/ { i = $2 }
            END { print v + 0, i + 0 }' "$f_status" 2>/dev/null || echo 0 0)
        vol=$((vol + v))
        invol=$((invol + i))
    done
    # utime and stime are fields 14 and 15, so 12 and 13 of what follows the name.
    echo "${f[11]} ${f[12]} $vol $invol"
}

# div A B [SCALE]: A * SCALE / B with three decimals.
div() { awk -v a="$1" -v b="$2" -v s="${3:-1}" 'BEGIN { if (b > 0) printf "%.3f", a * s / b; else print "nan" }'; }

# The count of one event in a `perf stat -x,` output file.
perf_count() {
    awk -F, -v e="$2" '$3 == e { v = $1 } END { if (v == "" || v ~ /^</) print 0; else print v }' "$1"
}

measure() {
    local kind=$1 run=$2 tag
    tag=$kind-$INVOCATION-$run
    perf_start_proxy "$kind"
    perf_sysbench $((PERF_WARMUP + 3 * PERF_WINDOW + 3)) >"$WORK/sysbench-$tag.log" 2>&1 &
    local bench=$!
    STARTED_PIDS+=("$bench")
    sleep "$PERF_WARMUP"

    # 1. untraced
    local q0 q1 t0 t1 a b
    q0=$(perf_queries)
    t0=$(date +%s%N)
    read -r -a a <<<"$(proc_sample)"
    sleep "$PERF_WINDOW"
    read -r -a b <<<"$(proc_sample)"
    t1=$(date +%s%N)
    q1=$(perf_queries)
    local queries=$((q1 - q0)) utime=$((b[0] - a[0])) stime=$((b[1] - a[1]))
    local csw=$((b[2] - a[2] + b[3] - a[3])) invol=$((b[3] - a[3]))
    local qps cpu_us_q user_pct csw_q invol_pct
    qps=$(div "$queries" $((t1 - t0)) 1000000000)
    cpu_us_q=$(div $((utime + stime)) "$queries" $((1000000 / CLK_TCK)))
    user_pct=$(div "$utime" $((utime + stime)) 100)
    csw_q=$(div "$csw" "$queries")
    invol_pct=$(div "$invol" "$csw" 100)

    # 2. perf stat; the queries are counted inside the command perf stat runs, so inside the
    # window its counters cover.
    local pstat=$RESULTS/raw/perfstat-$tag.txt
    perf stat -x, -o "$pstat" -e "$EVENTS" -p "$PROXY_PID" -- \
        bash -c "perf_queries >'$WORK/q0'; sleep $PERF_WINDOW; perf_queries >'$WORK/q1'"
    queries=$(($(<"$WORK/q1") - $(<"$WORK/q0")))
    echo "# queries in this window: $queries" >>"$pstat"
    local syscalls enters sqes cqes arms iowq local_work pcsw migrations
    syscalls=$(perf_count "$pstat" raw_syscalls:sys_enter)
    enters=$(perf_count "$pstat" syscalls:sys_enter_io_uring_enter)
    sqes=$(perf_count "$pstat" io_uring:io_uring_submit_req)
    cqes=$(perf_count "$pstat" io_uring:io_uring_complete)
    arms=$(perf_count "$pstat" io_uring:io_uring_poll_arm)
    iowq=$(perf_count "$pstat" io_uring:io_uring_queue_async_work)
    local_work=$(perf_count "$pstat" io_uring:io_uring_local_work_run)
    pcsw=$(perf_count "$pstat" context-switches)
    migrations=$(perf_count "$pstat" cpu-migrations)

    # 3. strace, from when every thread is attached until just before the detach: strace slows
    # the proxy several-fold, so untraced queries at either edge would skew the ratio.
    local strace_out=$RESULTS/raw/strace-$tag.txt
    strace -c -f -p "$PROXY_PID" -o "$strace_out" 2>"$WORK/strace.err" &
    local tracer=$!
    STARTED_PIDS+=("$tracer")
    wait_until 10 "strace attaching to $kind" grep -q attached "$WORK/strace.err"
    sleep 0.2
    q0=$(perf_queries)
    sleep "$PERF_WINDOW"
    q1=$(perf_queries)
    kill -INT "$tracer"
    wait "$tracer" || true
    forget_started "$tracer"
    local squeries=$((q1 - q0)) strace_total strace_top
    echo "# queries in this window: $squeries" >>"$strace_out"
    # Rows of the summary: "% time  seconds  usecs/call  calls  [errors]  syscall".
    strace_total=$(awk '$NF == "total" { print $4 }' "$strace_out")
    strace_top=$(awk -v q="$squeries" '$1 ~ /^[0-9.]+$/ && $NF != "total" && q > 0 {
            printf "%s %s=%.2f\n", $4, $NF, $4 / q }' "$strace_out" |
        sort -rn | head -6 | cut -d' ' -f2 | paste -sd' ')
    wait "$bench" || true
    forget_started "$bench"
    cp "$WORK/sysbench-$tag.log" "$RESULTS/raw/"
    perf_stop_proxy

    local row=("$INVOCATION" "$kind" "$qps" "$cpu_us_q" "$user_pct" "$csw_q" "$invol_pct"
        "$(div "$syscalls" "$queries")" "$(div "$enters" "$queries")" "$(div "$cqes" "$enters")"
        "$(div "$sqes" "$queries")" "$(div "$cqes" "$queries")" "$(div "$arms" "$queries")"
        "$(div "$iowq" "$queries")" "$(div "$local_work" "$queries")" "$(div "$pcsw" "$queries")"
        "$(div "$migrations" "$queries")" "$(div "${strace_total:-0}" "$squeries")" "$strace_top")
    (IFS=$'\t'; echo "${row[*]}") >>"$TSV"
    echo "$LIB_TAG: $kind run $run: $qps q/s untraced, $cpu_us_q CPU us/query, strace: $strace_top"
}

# Medians per proxy of this invocation's rows, one column per line.
summary() {
    awk -F'\t' -v inv="$INVOCATION" '
        NR == 1 { for (i = 3; i < NF; i++) name[i] = $i; last = NF - 1; next }
        $1 == inv {
            p = $2; if (!(p in n)) order[++kinds] = p
            n[p]++
            for (i = 3; i <= last; i++) v[p, i, n[p]] = $i + 0
        }
        function median(p, i,    k, j, t, a, m) {
            m = n[p]
            for (k = 1; k <= m; k++) a[k] = v[p, i, k]
            for (k = 2; k <= m; k++) { t = a[k]; for (j = k - 1; j > 0 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
        }
        END {
            printf "%-18s", "median of runs"
            for (k = 1; k <= kinds; k++) printf "%14s", order[k] " (" n[order[k]] ")"
            print ""
            for (i = 3; i <= last; i++) {
                printf "%-18s", name[i]
                for (k = 1; k <= kinds; k++) printf "%14.3f", median(order[k], i)
                print ""
            }
        }' "$TSV"
}

echo "$LIB_TAG: $(perf_machine | paste -sd' ')"
perf_start_backends
case "$MODE" in
    ringlb | haproxy) measure "$MODE" 1 ;;
    both)
        for ((pair = 1; pair <= PERF_PAIRS; pair++)); do
            measure ringlb "$pair"
            measure haproxy "$pair"
        done
        ;;
    *) die "usage: perf/syscalls.sh [ringlb|haproxy|both]" ;;
esac
echo
summary
