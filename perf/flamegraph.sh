#!/usr/bin/env bash
# A CPU flame graph of the proxy under sysbench oltp_point_select (32 threads), kernel stacks
# included, and a text summary of where the samples fall.
#
#   perf/flamegraph.sh [ringlb|haproxy|both]    default both: alternately, PERF_PAIRS pairs (1)
#
# `perf record -e cpu-clock` (a software clock: this also works in VMs without hardware counters)
# at PERF_FREQ Hz (default 997) for PERF_WINDOW seconds (default 10) after PERF_WARMUP seconds
# (default 3), on every thread of the proxy (io-wq workers included). ringlb is unwound with
# DWARF (the release profile keeps debug info), HAProxy with frame pointers (`-g`; Debian builds
# it without them, so its user-space stacks are shallow, its kernel stacks complete). Kernel
# stacks need root or kernel.perf_event_paranoid <= 1.
#
# Output in perf/results/: flame-<proxy>-<n>.svg (inferno; installed with `cargo install inferno`
# when missing) and flame-<proxy>-<n>.txt: samples per thread, user/kernel split, the share of
# samples under a few kernel paths (inclusive), and the top symbols by self time.
set -euo pipefail

LIB_TAG=flamegraph
# shellcheck source=perf/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

MODE=${1:-both}
PERF_PAIRS=${PERF_PAIRS:-1}
PERF_WINDOW=${PERF_WINDOW:-10}
PERF_WARMUP=${PERF_WARMUP:-3}
PERF_FREQ=${PERF_FREQ:-997}
RESULTS=${PERF_RESULTS:-$PERF_DIR/results}
mkdir -p "$RESULTS"
command -v perf >/dev/null || die "perf is not installed (apt-get install linux-perf)"

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v inferno-flamegraph >/dev/null || ! command -v inferno-collapse-perf >/dev/null; then
    echo "$LIB_TAG: installing inferno (cargo install inferno)"
    cargo install inferno --locked --quiet
fi

# Inclusive share of samples whose stack holds a frame matching each pattern.
# Folded lines are "frame;frame;...;frame count", the thread's command name first.
CATEGORIES=(
    "io_uring_enter (all ring work done in the syscall)|__do_sys_io_uring_enter"
    "  submitting SQEs (io_submit_sqes)|io_submit_sqes"
    "  running deferred task work (io_run_local_work)|io_run_local_work"
    "  waiting for completions (io_cqring_wait)|io_cqring_wait"
    "io-wq worker threads|^iou-wrk"
    "tcp_sendmsg (send + loopback delivery to the receiver)|tcp_sendmsg"
    "tcp_recvmsg|tcp_recvmsg"
    "net softirq (__do_softirq / net_rx_action)|net_rx_action"
    "poll arming and wake-ups (io_arm_poll_handler, io_poll_wake)|io_arm_poll_handler|io_poll_wake|__io_arm_poll_handler"
    "  waking the receiving thread (sock_def_readable; try_to_wake_up runs with irqs off)|sock_def_readable"
    "epoll_wait|do_epoll_wait"
    "scheduler (__schedule)|__schedule"
    "memory allocation (kmalloc/kmem_cache_alloc, __alloc_skb)|kmem_cache_alloc|__kmalloc|__alloc_skb|kmalloc_reserve"
    "copies (copy_user*, _copy_to_iter, _copy_from_iter)|copy_user|_copy_to_iter|_copy_from_iter|rep_movs"
    "splice|splice"
)

# report DATA SORT LINES: the first LINES rows of `perf report --sort SORT`, self time, no call
# graphs. (sed reads to the end, so no writer dies of SIGPIPE under pipefail.)
report() {
    perf report -i "$1" --no-children -g none --percent-limit 0.5 --sort "$2" --stdio 2>/dev/null |
        grep -v -e '^#' -e '^$' | sed -n "1,$3p"
}

summarise() {
    local folded=$1 data=$2
    echo "== samples per thread (the first frame is the thread's name)"
    awk '{ n = $NF; split($0, f, ";"); sub(/-[0-9]+$/, "", f[1]); t[f[1]] += n; all += n }
        END { for (k in t) printf "%6.1f%%  %s\n", 100 * t[k] / all, k }' "$folded" | sort -rn
    echo
    echo "== user space vs kernel (by the sampled instruction's object)"
    report "$data" dso 8
    echo
    echo "== inclusive share of samples under"
    local entry name pattern
    for entry in "${CATEGORIES[@]}"; do
        name=${entry%%|*}
        pattern=${entry#*|}
        awk -v re="$pattern" -v name="$name" '{ n = $NF; all += n; stack = $0; sub(/ [0-9]+$/, "", stack)
                if (stack ~ re) hit += n }
            END { printf "%6.1f%%  %s\n", all ? 100 * hit / all : 0, name }' "$folded"
    done
    echo
    echo "== top symbols by self time"
    report "$data" sym 30
    echo
    echo "== hottest leaf chains: the sampled frame <- its 3 callers (cpu-clock samples taken with"
    echo "   interrupts off land on the frame that turns them back on, e.g. _raw_spin_unlock_irqrestore)"
    awk '{ n = $NF; all += n; stack = $0; sub(/ [0-9]+$/, "", stack); k = split(stack, f, ";")
            chain = f[k]; for (i = k - 1; i > 1 && i >= k - 3; i--) chain = chain " <- " f[i]
            c[chain] += n }
        END { for (x in c) printf "%6.1f%%  %s\n", 100 * c[x] / all, x }' "$folded" | sort -rn | sed -n 1,15p
}

record() {
    local kind=$1 run=$2 base=$RESULTS/flame-$1-$2 data=$WORK/perf-$1-$2.data
    perf_start_proxy "$kind"
    perf_sysbench $((PERF_WARMUP + PERF_WINDOW + 2)) >"$WORK/sysbench-$kind-$run.log" 2>&1 &
    local bench=$!
    STARTED_PIDS+=("$bench")
    sleep "$PERF_WARMUP"
    local graph=(-g)
    [ "$kind" = ringlb ] && graph=(--call-graph dwarf)
    perf record -q -e cpu-clock -F "$PERF_FREQ" "${graph[@]}" -p "$PROXY_PID" -o "$data" -- sleep "$PERF_WINDOW"
    wait "$bench" || true
    forget_started "$bench"
    echo "$LIB_TAG: $kind run $run: $(grep -E 'queries:' "$WORK/sysbench-$kind-$run.log" | xargs)"
    perf script -i "$data" 2>/dev/null | inferno-collapse-perf >"$WORK/$kind-$run.folded"
    inferno-flamegraph --title "$kind under sysbench oltp_point_select, 32 threads (cpu-clock, $PERF_FREQ Hz)" \
        <"$WORK/$kind-$run.folded" >"$base.svg"
    # A stopped proxy's symbols still resolve: perf report reads the binaries, not the process.
    summarise "$WORK/$kind-$run.folded" "$data" >"$base.txt"
    perf_stop_proxy
    echo "$LIB_TAG: wrote $base.svg ($(du -k "$base.svg" | cut -f1) KiB) and $base.txt"
}

echo "$LIB_TAG: $(perf_machine | paste -sd' ')"
perf_start_backends
case "$MODE" in
    ringlb | haproxy) record "$MODE" 1 ;;
    both)
        for ((pair = 1; pair <= PERF_PAIRS; pair++)); do
            record ringlb "$pair"
            record haproxy "$pair"
        done
        ;;
    *) die "usage: perf/flamegraph.sh [ringlb|haproxy|both]" ;;
esac
