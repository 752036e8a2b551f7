#!/usr/bin/env bash
# Runs `spindle convert` and `qemu-img convert` side by side reading from the
# same NBD export (qemu-nbd 7.2 over a Unix socket, persistent) and prints
# wall times and Spindle's time as a ratio of QEMU's (goal: at most 1.0).
#
# Rows:
#   dense:  a raw image of SIZE MiB of random data -> raw file
#   sparse: a qcow2 of 4 x SIZE MiB with SIZE/8 MiB of data spread in 1 MiB
#           runs -> raw file (block status and holes matter)
# Each command's best of ROUNDS runs counts; the runs alternate.
#
# Usage: Benchmarks/bench-nbd-client.sh [-r ROUNDS] [-d DIRECTORY]
# Environment: BENCH_SIZE_MIB (default 1024), SPINDLE (default
#              .build/release/spindle, built if missing), QEMU_IMG, QEMU_NBD,
#              QEMU_IO (default: found on PATH).
set -euo pipefail

rounds=3
directory=${TMPDIR:-/tmp}
while getopts "r:d:h" option; do
  case $option in
  r) rounds=$OPTARG ;;
  d) directory=$OPTARG ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
  esac
done
size_mib=${BENCH_SIZE_MIB:-1024}
qemu_img=${QEMU_IMG:-$(command -v qemu-img)}
qemu_nbd=${QEMU_NBD:-$(command -v qemu-nbd)}
qemu_io=${QEMU_IO:-$(command -v qemu-io)}
# shellcheck source=lib/nbd-common.sh
source "$(dirname "$0")/lib/nbd-common.sh"
socket=$work/s.sock

# Serves $1 (format $2) with qemu-nbd on $socket.
serve() {
  rm -f "$socket"
  serve_on_socket "$qemu_nbd" -t -k "$socket" -f "$2" "$1"
}

# Best wall time in seconds of "$@" over $rounds runs (output file removed
# before each run).
best_time() {
  local best=
  for _ in $(seq 1 "$rounds"); do
    rm -f "$work/out.raw"
    local elapsed
    elapsed=$(elapsed_seconds "$@")
    if [ -z "$best" ] || [ "$(echo "$elapsed < $best" | bc -l)" = 1 ]; then best=$elapsed; fi
  done
  printf '%.3f' "$best"
}

row() {
  local name=$1
  local url="nbd+unix:///?socket=$work/s.sock"
  local qemu spindle_time
  qemu=$(best_time "$qemu_img" convert -O raw "$url" "$work/out.raw")
  spindle_time=$(best_time "$spindle" convert -O raw "$url" "$work/out.raw")
  printf '%-8s %10s %10s %8.2f\n' "$name" "$qemu" "$spindle_time" \
    "$(echo "$spindle_time / $qemu" | bc -l)"
}

printf '%-8s %10s %10s %8s\n' "row" "qemu-img" "spindle" "ratio"

head -c $((size_mib << 20)) /dev/urandom >"$work/dense.raw"
serve "$work/dense.raw" raw
row dense
stop_server

make_sparse_qcow2 "$work/sparse.qcow2" "$size_mib"
serve "$work/sparse.qcow2" qcow2
row sparse
stop_server
