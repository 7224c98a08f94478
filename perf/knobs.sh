#!/bin/bash
# Quick (b), (c), (d) and (e) runs of cargo bench with one [tuning] knob changed at a time: the
# figures behind tuning.md. About 8 minutes on a 2-core machine.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
run() { name=$1; only=$2; tuning=$3; echo "=== $name ($only) tuning='$tuning'"; RINGLB_BENCH_TUNING="$tuning" RINGLB_BENCH_ONLY=$only RINGLB_BENCH_PAIRS=3 RINGLB_BENCH_QUICK=1 cargo bench --bench proxy 2>&1 | grep -v "^(.) pair" | grep -A12 "median of runs"; }
run default-b b ""
run sqpoll-b b "sqpoll_idle_ms = 50"
run ring256-b b "ring_entries = 256"
run buf4k-b b "buffer_bytes = 4096"
run default-d d ""
run pipe64k-d d "pipe_bytes = 65536"
run pipe1m-d d "pipe_bytes = 1048576"
run iowq1-d d "iowq_max_workers = 1"
run buf64k-d d "buffer_bytes = 65536"
run default-e e ""
run buffers512-e e "buffers = 512"
run default-c c ""
